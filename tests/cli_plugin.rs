//! The kubectl plugin's packaging, without a cluster: shell completions from both names of the
//! binary, the krew manifest in plugins/, and the flags `-o json|yaml` and `--kubeconfig`.
//! The output formats against a live cluster are in tests/kubectl_ux.rs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_premium-operator"))
}

/// The binary under test linked as `kubectl-premium` (the name selects the plugin's commands).
fn plugin() -> PathBuf {
    let dir = repo().join("target/test-logs/cli-plugin-bin");
    std::fs::create_dir_all(&dir).expect("plugin dir");
    let link = dir.join("kubectl-premium");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(binary(), &link).expect("symlink");
    link
}

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .output()
        .expect("runs")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[test]
fn completion_scripts_for_every_shell_under_both_names() {
    let plugin = plugin();
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        for (program, name) in [
            (binary(), "premium-operator"),
            (plugin.as_path(), "kubectl-premium"),
        ] {
            let out = run(program, &["completion", shell]);
            assert!(
                out.status.success(),
                "{name} completion {shell}: {}",
                text(&out.stderr)
            );
            let script = text(&out.stdout);
            assert!(
                script.contains(name),
                "{name} completion {shell} does not name {name}"
            );
            // Each script knows the subcommands of its own command line.
            let subcommand = if name == "premium-operator" {
                "check"
            } else {
                "why"
            };
            assert!(
                script.contains(subcommand),
                "{name} completion {shell} lacks {subcommand}"
            );
        }
    }
    let bash = text(&run(&plugin, &["completion", "bash"]).stdout);
    assert!(
        !bash.contains("api-docs"),
        "the plugin's completion offers only its own commands"
    );
    let unknown = run(binary(), &["completion", "tcsh"]);
    assert!(!unknown.status.success());
}

#[test]
fn output_and_kubeconfig_flags_are_accepted_and_checked() {
    let plugin = plugin();
    for args in [
        vec!["why", "aika", "-o", "json"],
        vec!["why", "aika", "--output", "yaml"],
        vec!["graph", "-o", "json"],
        vec!["graph", "--output", "yaml"],
        vec!["graph", "--format", "mermaid"],
    ] {
        // The flags parse; the command then fails on the kubeconfig it was given.
        let mut with_file = args.clone();
        with_file.extend(["--kubeconfig", "/nonexistent/other-kubeconfig"]);
        let out = run(&plugin, &with_file);
        assert!(!out.status.success(), "{with_file:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains("/nonexistent/other-kubeconfig"),
            "{with_file:?}: the error names the --kubeconfig file: {err}"
        );
    }
    let bad = run(&plugin, &["why", "aika", "-o", "table"]);
    assert!(!bad.status.success());
    assert!(text(&bad.stderr).contains("json"), "{}", text(&bad.stderr));
    // Offline graphs are drawings; data needs the cluster.
    let out = run(binary(), &["graph", "examples/", "-o", "json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--cluster"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn krew_manifest_installs_this_binary_as_kubectl_premium() {
    let path = repo().join("plugins/premium.yaml");
    let manifest: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .expect("plugins/premium.yaml is YAML");
    assert_eq!(
        manifest["apiVersion"].as_str(),
        Some("krew.googlecontainertools.github.com/v1alpha2")
    );
    assert_eq!(manifest["kind"].as_str(), Some("Plugin"));
    // krew installs `kubectl-<name>`; the binary switches to the plugin's commands by that name.
    assert_eq!(manifest["metadata"]["name"].as_str(), Some("premium"));
    let spec = &manifest["spec"];
    assert_eq!(
        spec["version"].as_str(),
        Some(format!("v{}", env!("CARGO_PKG_VERSION")).as_str()),
        "the manifest's version follows Cargo.toml"
    );
    let short = spec["shortDescription"].as_str().unwrap_or_default();
    assert!(!short.is_empty() && short.len() <= 80, "{short:?}");
    let platforms = spec["platforms"].as_sequence().expect("platforms");
    let mut seen = Vec::new();
    for p in platforms {
        let labels = &p["selector"]["matchLabels"];
        let os = labels["os"].as_str().unwrap_or_default();
        let arch = labels["arch"].as_str().unwrap_or_default();
        seen.push(format!("{os}/{arch}"));
        assert_eq!(p["bin"].as_str(), Some("kubectl-premium"), "{os}/{arch}");
        let files = p["files"].as_sequence().expect("files");
        assert!(
            files
                .iter()
                .any(|f| f["from"].as_str() == Some("premium-operator")
                    && f["to"].as_str() == Some("kubectl-premium")),
            "{os}/{arch}: the archive's premium-operator is installed as kubectl-premium"
        );
        let uri = p["uri"].as_str().unwrap_or_default();
        assert!(
            uri.starts_with("https://") && uri.contains(spec["version"].as_str().unwrap_or("?")),
            "{uri}"
        );
        let sha = p["sha256"].as_str().unwrap_or_default();
        assert!(
            sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
            "{os}/{arch}: sha256 {sha:?}"
        );
    }
    assert!(seen.contains(&"linux/amd64".to_string()), "{seen:?}");
}
