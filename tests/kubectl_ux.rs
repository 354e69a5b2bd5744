//! What a person sees with kubectl, on the local control plane with the real operator:
//! `kubectl get pf` and `kubectl get premium` columns, `kubectl explain pf.spec.dependsOn`,
//! `kubectl wait --for=condition=Ready`, and the binary as the kubectl plugin
//! (`kubectl premium graph`, `kubectl premium why`, also with `-o json|yaml` and
//! `--kubeconfig`), plus `premium-operator graph --cluster`.
//!
//! Needs the local cluster and the built kubectl (`make cluster-up`, or `make test`).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use support::TestNamespace;
use support::operator::{Operator, apply_yaml, ensure_crds, feature_yaml, finish};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kubectl_path() -> PathBuf {
    let out = Command::new("bash")
        .arg("-c")
        .arg("source hack/lib.sh && tool_path kubectl")
        .current_dir(repo())
        .output()
        .expect("bash runs");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        path.is_file(),
        "kubectl is not built (looked for {}); run hack/build-tools.sh (or make cluster-up / make test)",
        path.display()
    );
    path
}

/// A folder holding `kubectl-premium`, a link to the binary under test: kubectl finds plugins
/// on the PATH by that name.
fn plugin_dir() -> PathBuf {
    let dir = repo().join("target/test-logs/plugin-bin");
    std::fs::create_dir_all(&dir).expect("plugin dir");
    let link = dir.join("kubectl-premium");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_premium-operator"), &link).expect("symlink");
    dir
}

fn run(program: &Path, args: &[&str], plugin_dir: Option<&Path>) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args).env("KUBECONFIG", support::kubeconfig_path());
    if let Some(dir) = plugin_dir {
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{path}", dir.display()));
    }
    cmd.output().expect("runs")
}

fn stdout_ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn examples() -> String {
    support::operator::portal_examples()
}

#[tokio::test]
async fn kubectl_get_explain_wait_and_the_plugin() -> anyhow::Result<()> {
    let kubectl = kubectl_path();
    let client = support::client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "kubectl-ux").await?;
    let n = ns.name().to_string();
    let operator = Operator::start(Some(&n), &[])?;
    apply_yaml(&client, &n, &examples()).await?;
    // A feature held back by a dependency that does not exist, for `why`.
    apply_yaml(&client, &n, &feature_yaml("lonely", &["ghost"], "")).await?;

    // kubectl wait understands the Ready condition (kstatus): no extra tooling.
    let started = Instant::now();
    let out = run(
        &kubectl,
        &[
            "wait",
            "--for=condition=Ready",
            "pf/aika",
            "pf/catalog",
            "-n",
            &n,
            "--timeout=120s",
        ],
        None,
    );
    if !out.status.success() {
        anyhow::bail!(
            "kubectl wait failed: {}\noperator log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            operator.log_tail()
        );
    }
    eprintln!("kubectl wait returned after {:?}", started.elapsed());
    // kubectl wait on a generation the operator has not seen yet must not return early:
    // observedGeneration is in every condition and in status.
    let out = run(
        &kubectl,
        &[
            "wait",
            "--for=jsonpath={.status.observedGeneration}=1",
            "pf/aika",
            "-n",
            &n,
            "--timeout=30s",
        ],
        None,
    );
    stdout_ok(&out, "kubectl wait for observedGeneration");

    let get = stdout_ok(
        &run(&kubectl, &["get", "pf", "-n", &n], None),
        "kubectl get pf",
    );
    let header: Vec<&str> = get
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "PHASE",
            "READY",
            "READY-REPLICAS",
            "BLOCKED-BY",
            "LEVEL",
            "AGE",
            "STATUS"
        ],
        "{get}"
    );
    let line = |name: &str| -> String {
        get.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name} in:\n{get}"))
            .to_string()
    };
    let row =
        |name: &str| -> Vec<String> { line(name).split_whitespace().map(str::to_owned).collect() };
    // STATUS, the Ready condition's message, is the last column: it starts where its header does.
    let status_at = get
        .lines()
        .next()
        .unwrap_or("")
        .find("STATUS")
        .expect("STATUS");
    let status =
        |name: &str| -> String { line(name).get(status_at..).unwrap_or("").trim().to_string() };
    assert_eq!(row("aika")[1..5], ["Ready", "True", "1", "2"], "{get}");
    assert_eq!(row("catalog")[1..5], ["Ready", "True", "1", "0"], "{get}");
    assert!(
        !status("aika").is_empty(),
        "aika's STATUS shows its Ready message: {get}"
    );
    let lonely = row("lonely");
    assert_eq!(lonely[1..3], ["WaitingForDependencies", "False"], "{get}");
    assert!(
        lonely.iter().any(|c| c == "ghost"),
        "BLOCKED-BY names the missing dependency: {get}"
    );
    assert!(
        status("lonely").contains("ghost"),
        "STATUS says what lonely waits for: {get}"
    );
    let policies = stdout_ok(
        &run(&kubectl, &["get", "ppol", "-n", &n], None),
        "kubectl get ppol",
    );
    let header: Vec<&str> = policies
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME", "PRIORITY", "FEATURES", "BUDGET", "READY", "AGE", "STATUS"
        ],
        "{policies}"
    );

    let all = stdout_ok(
        &run(&kubectl, &["get", "premium", "-n", &n, "-o", "name"], None),
        "kubectl get premium",
    );
    assert!(
        all.contains("premiumfeature.premium.dev/aika")
            && all.contains("premiumpolicy.premium.dev/premium-defaults"),
        "kubectl get premium lists both kinds: {all}"
    );

    let explain = stdout_ok(
        &run(&kubectl, &["explain", "pf.spec.dependsOn"], None),
        "kubectl explain",
    );
    for needle in [
        "KIND:       PremiumFeature",
        "FIELD: dependsOn <[]Object>",
        "Features that must be Ready before this one starts",
        "name\t<string> -required-",
        "optional\t<boolean>",
    ] {
        assert!(explain.contains(needle), "{needle:?} not in:\n{explain}");
    }
    // The list's description only, as paragraphs: not the item type's after it.
    assert!(!explain.contains("A feature this one needs"), "{explain}");

    // The plugin: kubectl finds kubectl-premium on the PATH.
    let plugins = plugin_dir();
    let graph = stdout_ok(
        &run(&kubectl, &["premium", "graph", "-n", &n], Some(&plugins)),
        "kubectl premium graph",
    );
    assert!(graph.contains(&format!("namespace {n}:")), "{graph}");
    assert!(graph.contains("  aika (level 2, Ready)"), "{graph}");
    assert!(
        graph.contains(
            "  lonely (no level: a dependency is missing, WaitingForDependencies, blocked by ghost)"
        ),
        "{graph}"
    );
    assert!(graph.contains("    -> ghost (missing)"), "{graph}");
    let why = stdout_ok(
        &run(
            &kubectl,
            &["premium", "why", "lonely", "-n", &n],
            Some(&plugins),
        ),
        "kubectl premium why lonely",
    );
    assert!(why.starts_with("lonely: WaitingForDependencies"), "{why}");
    assert!(
        why.contains("blocked by ghost (DependencyNotFound)"),
        "{why}"
    );
    assert!(why.contains("ghost: not found"), "{why}");
    let why = stdout_ok(
        &run(
            &kubectl,
            &["premium", "why", "aika", "-n", &n],
            Some(&plugins),
        ),
        "kubectl premium why aika",
    );
    assert!(why.contains("nothing blocks it: Ready"), "{why}");
    let missing = run(
        &kubectl,
        &["premium", "why", "nope", "-n", &n],
        Some(&plugins),
    );
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("PremiumFeature nope not found"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    // -o json|yaml: the same facts for scripts, parsed back.
    let why_json = stdout_ok(
        &run(
            &kubectl,
            &["premium", "why", "lonely", "-n", &n, "-o", "json"],
            Some(&plugins),
        ),
        "kubectl premium why lonely -o json",
    );
    let why_json: serde_json::Value = serde_json::from_str(&why_json)?;
    assert_eq!(why_json["name"], "lonely", "{why_json}");
    assert_eq!(
        why_json["observed"]["phase"], "WaitingForDependencies",
        "{why_json}"
    );
    let blocker = &why_json["observed"]["blockedBy"][0];
    assert_eq!(blocker["name"], "ghost", "{why_json}");
    assert_eq!(blocker["reason"], "DependencyNotFound", "{why_json}");
    assert_eq!(blocker["dependency"]["state"], "notFound", "{why_json}");
    let graph_yaml = stdout_ok(
        &run(
            &kubectl,
            &["premium", "graph", "-n", &n, "-o", "yaml"],
            Some(&plugins),
        ),
        "kubectl premium graph -o yaml",
    );
    let graph_yaml: serde_json::Value = serde_yaml::from_str(&graph_yaml)?;
    let entry = |name: &str| -> serde_json::Value {
        graph_yaml["features"]
            .as_array()
            .and_then(|fs| fs.iter().find(|f| f["name"] == name).cloned())
            .unwrap_or_else(|| panic!("{name} not in {graph_yaml}"))
    };
    assert_eq!(entry("aika")["level"], 2, "{graph_yaml}");
    assert_eq!(entry("aika")["phase"], "Ready", "{graph_yaml}");
    assert_eq!(
        entry("lonely")["dependsOn"][0]["name"],
        "ghost",
        "{graph_yaml}"
    );
    assert_eq!(
        entry("lonely")["dependsOn"][0]["missing"],
        true,
        "{graph_yaml}"
    );
    // --kubeconfig instead of $KUBECONFIG.
    let kubeconfig = support::kubeconfig_path();
    let out = Command::new(&kubectl)
        .args(["premium", "why", "aika", "-n", &n, "--kubeconfig"])
        .arg(&kubeconfig)
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env(
            "PATH",
            format!(
                "{}:{}",
                plugins.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()?;
    let why = stdout_ok(&out, "kubectl premium why --kubeconfig");
    assert!(why.contains("nothing blocks it: Ready"), "{why}");

    // The same from the binary under its own name.
    let mermaid = stdout_ok(
        &run(
            Path::new(env!("CARGO_BIN_EXE_premium-operator")),
            &["graph", "--cluster", "-n", &n, "--format", "mermaid"],
            None,
        ),
        "premium-operator graph --cluster",
    );
    assert!(mermaid.starts_with("graph TD\n"), "{mermaid}");
    assert!(mermaid.contains("aika<br/>level 2, Ready"), "{mermaid}");

    finish(ns, operator).await
}
