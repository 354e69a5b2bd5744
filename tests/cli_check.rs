//! `premium-operator check` as users run it: the examples pass with their start-up plan, every
//! file of `examples/invalid/` fails with the message its `# expect:` line names, and bad input
//! never panics but gives a one-line error naming the file.

use std::path::{Path, PathBuf};
use std::process::Command;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn check<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_premium-operator"))
        .arg("check")
        .args(args)
        .current_dir(repo())
        .output()
        .expect("the binary runs");
    let run = Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert!(
        !run.stderr.contains("panicked"),
        "check panicked:\n{}",
        run.stderr
    );
    run
}

/// Lines of the report about `file` (those starting with `file: `).
fn lines_about<'a>(run: &'a Run, file: &str) -> Vec<&'a str> {
    let prefix = format!("{file}: ");
    run.stdout
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .collect()
}

#[test]
fn examples_pass_with_the_portal_plan() {
    let run = check(&["examples/"]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(
            "Start-up plan (namespace portal):\n  level 0: catalog\n  level 1: skill-exchange, soundcheck\n  level 2: aika\n"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .ends_with("0 errors, 0 warnings (7 files, 7 objects)\n"),
        "{}",
        run.stdout
    );
    // The deliberately invalid examples are kept out by their folder's marker file.
    assert!(!run.stdout.contains("invalid-examples"));
}

#[test]
fn examples_and_crds_pass_together() {
    let run = check(&["crds/", "examples/"]);
    assert_eq!(run.code, Some(0), "{}", run.stdout);
}

#[test]
fn one_feature_alone_reports_its_missing_dependencies() {
    let run = check(&["examples/30-aika.yaml"]);
    assert_eq!(run.code, Some(1));
    let lines = lines_about(&run, "examples/30-aika.yaml");
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    assert!(has(
        "PremiumFeature/portal/aika: depends on catalog, which is not among"
    ));
    assert!(has(
        "PremiumFeature/portal/aika: depends on soundcheck, which is not among"
    ));
    assert!(has(
        "PremiumFeature/portal/aika: warning: optional dependency skill-exchange"
    ));
    assert!(
        run.stdout
            .contains("  cannot start: aika (missing catalog, soundcheck)\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .ends_with("2 errors, 1 warning (1 file, 1 object)\n")
    );
}

/// The `# expect:` and `# admission:` lines of an invalid example.
fn header(path: &Path) -> (Vec<String>, String) {
    let text = std::fs::read_to_string(path).expect("readable");
    let mut expect = Vec::new();
    let mut admission = String::new();
    for line in text.lines() {
        if let Some(e) = line.strip_prefix("# expect: ") {
            expect.push(e.trim().to_string());
        } else if let Some(a) = line.strip_prefix("# admission: ") {
            admission = a.trim().to_string();
        }
    }
    (expect, admission)
}

#[test]
fn every_invalid_example_fails_with_its_message() {
    let dir = repo().join("examples/invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/invalid exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "only {} invalid examples", files.len());
    for path in files {
        let relative = path.strip_prefix(repo()).expect("inside the repo");
        let shown = relative.display().to_string();
        let (expect, admission) = header(&path);
        assert!(!expect.is_empty(), "{shown} has no `# expect:` line");
        assert!(
            ["refused", "status", "accepted"].contains(&admission.as_str()),
            "{shown}: `# admission:` must be refused, status or accepted, got {admission:?}"
        );
        let run = check(&[relative]);
        assert_eq!(run.code, Some(1), "{shown} should fail:\n{}", run.stdout);
        for e in &expect {
            assert!(
                lines_about(&run, &shown)
                    .iter()
                    .any(|l| l.contains(e.as_str())),
                "{shown}: expected a line containing {e:?}, got:\n{}",
                run.stdout
            );
        }
    }
}

#[test]
fn an_invalid_folder_named_itself_is_checked() {
    let run = check(&["examples/invalid/"]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stdout
            .contains("examples/invalid/01-pool-min-above-max.yaml: ")
    );
}

/// Asserts that the report has exactly one line about `file` and it contains `needle`.
fn assert_one_line_error(run: &Run, file: &str, needle: &str) {
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    let lines = lines_about(run, file);
    assert_eq!(
        lines.len(),
        1,
        "one line about {file} expected:\n{}",
        run.stdout
    );
    assert!(
        lines[0].contains(needle),
        "{needle:?} not in {:?}",
        lines[0]
    );
}

#[test]
fn a_missing_path_is_named() {
    let run = check(&["does/not/exist.yaml"]);
    assert_one_line_error(
        &run,
        "does/not/exist.yaml",
        "cannot read: no such file or folder",
    );
}

#[test]
fn bad_input_gives_one_line_per_file_and_no_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let cases: &[(&str, &[u8], &str)] = &[
        ("binary.yaml", &[0x7f, b'E', b'L', b'F', 0, 0, 1, 2, 0xff], "binary data"),
        ("latin1.yaml", b"name: caf\xe9\n", "not UTF-8 text"),
        ("prose.yaml", b"This is a README, not a manifest.\n", "expected a Kubernetes object"),
        ("broken.yaml", b"kind: PremiumFeature\nmetadata: {name: a\n", "not valid YAML"),
        ("tabs.yaml", b"a:\n\tb: 1\n", "not valid YAML"),
        (
            "unknown-kind.yaml",
            b"apiVersion: premium.dev/v1alpha1\nkind: PremiumWidget\nmetadata: {name: a}\n",
            "unknown kind PremiumWidget",
        ),
        (
            "port-type.yaml",
            b"apiVersion: premium.dev/v1alpha1\nkind: PremiumFeature\nmetadata: {name: b}\nspec: {image: x, port: \"abc\"}\n",
            "spec.port: must be an integer, got a string \"abc\"",
        ),
        (
            "deps-type.yaml",
            b"apiVersion: premium.dev/v1alpha1\nkind: PremiumFeature\nmetadata: {name: c}\nspec: {image: x, port: 80, dependsOn: 5}\n",
            "spec.dependsOn: must be a list, got an integer 5",
        ),
        (
            "metadata-type.yaml",
            b"apiVersion: premium.dev/v1alpha1\nkind: PremiumPolicy\nmetadata: [a]\nspec: {selector: {}}\n",
            "metadata must be a mapping",
        ),
        (
            "spec-type.yaml",
            b"apiVersion: premium.dev/v1alpha1\nkind: PremiumPolicy\nmetadata: {name: p}\nspec: 7\n",
            "spec: must be a mapping, got an integer 7",
        ),
        ("no-kind.yaml", b"apiVersion: v1\nmetadata: {name: a}\n", "kind is missing"),
        ("tag.yaml", b"apiVersion: v1\nkind: ConfigMap\ndata: !vault secret\n", "tags"),
    ];
    for (name, bytes, _) in cases {
        std::fs::write(root.join(name), bytes).expect("write");
    }
    for (name, _, needle) in cases {
        let file = root.join(name).display().to_string();
        let run = check(&[&file]);
        assert_one_line_error(&run, &file, needle);
    }
    // All at once, through the folder: one line per file, in name order.
    let folder = root.display().to_string();
    let run = check(&[&folder]);
    assert_eq!(run.code, Some(1));
    let mut named: Vec<&str> = cases.iter().map(|(n, _, _)| *n).collect();
    named.sort();
    let reported: Vec<String> = run
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{folder}/")))
        .map(|l| l.split(':').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(reported, named, "{}", run.stdout);
}

#[test]
fn a_folder_without_yaml_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("notes.txt"), "hello").expect("write");
    std::fs::write(dir.path().join("image.png"), [0x89, b'P', b'N', b'G', 0]).expect("write");
    let folder = dir.path().display().to_string();
    let run = check(&[&folder]);
    assert_one_line_error(&run, &folder, "no .yaml or .yml files");
}

#[cfg(unix)]
#[test]
fn an_endless_device_is_refused() {
    let run = check(&["/dev/zero"]);
    assert_one_line_error(&run, "/dev/zero", "larger than 32 MiB");
}

#[test]
fn an_empty_file_has_nothing_to_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("empty.yaml");
    std::fs::write(&file, "# nothing yet\n---\n").expect("write");
    let run = check(&[&file]);
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    assert!(run.stdout.contains("No PremiumFeature found"));
}

/// A directory of `n` features in one file, each depending on `missing` names that do not exist.
fn many_features(dir: &Path, n: usize, missing: usize, name_len: usize) {
    let mut text = String::new();
    for i in 0..n {
        let deps: String = (0..missing)
            .map(|m| {
                format!(
                    "\n    - name: {}",
                    format!("gone-{m}-").repeat(name_len / 8)
                )
            })
            .collect();
        text.push_str(&format!(
            "---\napiVersion: premium.dev/v1alpha1\nkind: PremiumFeature\nmetadata:\n  name: feature-{i}\n  namespace: big\nspec:\n  image: ghcr.io/example/app:1\n  port: 8080\n  dependsOn:{deps}\n"
        ));
    }
    std::fs::write(dir.join("features.yaml"), text).expect("writes the manifest");
}

#[test]
fn a_reader_that_stops_early_gets_no_panic() {
    use std::io::Read;
    use std::process::Stdio;
    let dir = tempfile::tempdir().expect("a temporary directory");
    // Far more report than a pipe holds (64 KiB), so the writer meets the closed pipe.
    many_features(dir.path(), 3000, 1, 8);
    let mut child = Command::new(env!("CARGO_BIN_EXE_premium-operator"))
        .arg("check")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    // Read a little, as `| head` does, then hang up.
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut first = [0u8; 512];
    let read = stdout.read(&mut first).expect("reads the first bytes");
    assert!(read > 0, "check printed nothing");
    drop(stdout);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr is piped")
        .read_to_string(&mut stderr)
        .expect("reads stderr");
    let status = child.wait().expect("check ends");
    assert!(!stderr.contains("panicked"), "check panicked:\n{stderr}");
    // Every feature misses a dependency: the report's verdict stands even unread.
    assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");
}

#[test]
fn many_missing_long_names_get_their_suggestions_once_each() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    // 100 features, each missing the same 32 names of 60 characters: 3,200 missing edges.
    many_features(dir.path(), 100, 32, 60);
    let run = check(&[dir.path()]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let missing = run
        .stdout
        .lines()
        .filter(|l| l.contains("which is not among the checked manifests"))
        .count();
    assert_eq!(
        missing,
        3200,
        "{}",
        &run.stdout[..run.stdout.len().min(2000)]
    );
}
