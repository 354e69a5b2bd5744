//! Health as the GitOps tools compute it, with their own code: kstatus from
//! `sigs.k8s.io/cli-utils` v0.37.2 (what Flux's health checks and `wait: true` run), through the
//! small Go helper in hack/tools/kstatus, on the objects the real operator writes on the local
//! control plane.
//!
//! Expected: a Ready feature is Current, one waiting for a dependency InProgress, one on a
//! dependency cycle Failed, one behind a missing dependency InProgress (creating the
//! dependency lets it start, so it is not stuck), and every example in examples/ (features and
//! policies) Current.
//!
//! Needs the local cluster and the helper: `make cluster-up` builds both (`make tools` builds
//! only the tools), `make test` runs everything.

mod support;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use kube::api::{Api, ListParams};
use premium_operator::api::{PremiumFeature, PremiumPolicy};
use serde_json::{Value, json};
use support::TestNamespace;
use support::operator::{Operator, apply_yaml, ensure_crds, feature_yaml, finish};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The helper built by hack/build-tools.sh; a clear failure when it is not there.
fn kstatus_path() -> PathBuf {
    let out = Command::new("bash")
        .arg("-c")
        .arg("source hack/lib.sh && tool_path kstatus")
        .current_dir(repo())
        .output()
        .expect("bash runs");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        path.is_file(),
        "the kstatus helper is not built (looked for {}): run `make tools` (hack/build-tools.sh builds it from hack/tools/kstatus with Go; `make cluster-up` and `make test` do it too)",
        path.display()
    );
    path
}

/// kstatus's verdict on each object: name -> (status, message).
fn kstatus(objects: &[Value]) -> anyhow::Result<BTreeMap<String, (String, String)>> {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
    let mut child = Command::new(kstatus_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(list.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "kstatus failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut verdicts = BTreeMap::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        let v: Value = serde_json::from_str(line)?;
        let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        verdicts.insert(
            format!("{}/{}", text("kind"), text("name")),
            (text("status"), text("message")),
        );
    }
    anyhow::ensure!(
        verdicts.len() == objects.len(),
        "kstatus answered for {} of {} objects",
        verdicts.len(),
        objects.len()
    );
    Ok(verdicts)
}

#[test]
fn the_helper_reads_lists_and_yaml_and_applies_kstatus_rules() -> anyhow::Result<()> {
    // Not a test of kstatus: a check that the helper hands it whole objects (a generation read
    // as a float, or a list left folded, would change these answers).
    let behind = json!({"apiVersion": "premium.dev/v1alpha1", "kind": "PremiumFeature",
        "metadata": {"name": "behind", "namespace": "p", "generation": 2},
        "status": {"observedGeneration": 1, "conditions": [
            {"type": "Ready", "status": "True", "reason": "Available", "message": "",
             "lastTransitionTime": "2026-11-25T10:00:00Z"}]}});
    let current = json!({"apiVersion": "premium.dev/v1alpha1", "kind": "PremiumFeature",
        "metadata": {"name": "current", "namespace": "p", "generation": 2},
        "status": {"observedGeneration": 2, "conditions": [
            {"type": "Ready", "status": "True", "reason": "Available", "message": "",
             "lastTransitionTime": "2026-11-25T10:00:00Z"}]}});
    let verdicts = kstatus(&[behind, current])?;
    assert_eq!(verdicts["PremiumFeature/behind"].0, "InProgress");
    assert_eq!(verdicts["PremiumFeature/current"].0, "Current");
    Ok(())
}

async fn objects(ns: &TestNamespace) -> anyhow::Result<Vec<Value>> {
    let features: Api<PremiumFeature> = ns.api();
    let policies: Api<PremiumPolicy> = ns.api();
    let mut out = Vec::new();
    for f in features.list(&ListParams::default()).await? {
        out.push(serde_json::to_value(f)?);
    }
    for p in policies.list(&ListParams::default()).await? {
        out.push(serde_json::to_value(p)?);
    }
    Ok(out)
}

#[tokio::test]
async fn kstatus_health_of_what_the_operator_writes() -> anyhow::Result<()> {
    kstatus_path();
    let client = support::client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "kstatus-health").await?;
    let n = ns.name().to_string();
    let operator = Operator::start(Some(&n), &[])?;
    let manifests = [
        feature_yaml("base", &[], ""),
        // `waiter` waits for `gate`, which is suspended: it stays waiting for as long as the
        // test looks.
        feature_yaml("gate", &[], "  suspend: true"),
        feature_yaml("waiter", &["gate"], ""),
        feature_yaml("lonely", &["ghost"], ""),
        feature_yaml("ping", &["pong"], ""),
        feature_yaml("pong", &["ping"], ""),
        support::operator::portal_examples(),
    ]
    .concat();
    apply_yaml(&client, &n, &manifests).await?;
    let mut want: BTreeMap<String, &str> = [
        ("base", "Current"),
        ("waiter", "InProgress"),
        ("lonely", "InProgress"),
        ("ping", "Failed"),
        ("pong", "Failed"),
    ]
    .into_iter()
    .map(|(name, s)| (format!("PremiumFeature/{name}"), s))
    .collect();
    for example in ["catalog", "soundcheck", "skill-exchange", "aika"] {
        want.insert(format!("PremiumFeature/{example}"), "Current");
    }
    for policy in ["premium-defaults", "aika-strict"] {
        want.insert(format!("PremiumPolicy/{policy}"), "Current");
    }
    let outcome = support::eventually(
        "kstatus to give every object its expected status",
        Duration::from_secs(150),
        || {
            let want = want.clone();
            let ns = &ns;
            async move {
                let verdicts = kstatus(&objects(ns).await?)?;
                let wrong: Vec<String> = want
                    .iter()
                    .filter_map(|(name, expected)| {
                        let (status, message) = verdicts.get(name)?;
                        (status != expected)
                            .then(|| format!("{name}: {status} ({message}), want {expected}"))
                    })
                    .chain(
                        want.keys()
                            .filter(|name| !verdicts.contains_key(*name))
                            .map(|name| format!("{name}: not found")),
                    )
                    .collect();
                if wrong.is_empty() {
                    Ok(Some(verdicts))
                } else {
                    anyhow::bail!("{}", wrong.join("; "))
                }
            }
        },
    )
    .await;
    let verdicts = match outcome {
        Ok(v) => v,
        Err(e) => anyhow::bail!("{e:#}\noperator log:\n{}", operator.log_tail()),
    };
    // The messages kstatus passes on say why, as Flux shows them.
    let (_, cycle) = &verdicts["PremiumFeature/ping"];
    assert!(cycle.contains("ping") && cycle.contains("pong"), "{cycle}");
    for (name, (status, message)) in &verdicts {
        eprintln!("{name}: {status} ({message})");
    }
    finish(ns, operator).await
}
