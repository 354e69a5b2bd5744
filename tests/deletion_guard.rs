//! The deletion guard (`PremiumPolicy.spec.deletion.whileDependents`, issue 20 part 2) on the
//! shared test cluster, one operator per test scoped to the test's namespace:
//!
//! * `Block`: a deleted catalog stays Terminating, `Stalled`/`DependentsRemain` naming its
//!   dependents, with its Deployment; it goes once they are gone, or once the policy changes;
//! * `Cascade`: deleting catalog deletes its dependents deepest first (seen through a watch),
//!   then catalog, and nothing else;
//! * a whole graph deleted at once (`kubectl delete -f dir/`, `helm uninstall`) under either
//!   mode leaves nothing behind;
//! * an operator SIGKILLed in the middle of a cascade, started again, finishes it in order.
//!
//! Needs the local cluster (`make cluster-up`) and its kubectl and helm. Runs in `make test`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams};
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::{Api, ResourceExt};
use premium_operator::api::PremiumFeature;
use support::operator::{Operator, apply_yaml, ensure_crds, finish};
use support::{DEFAULT_TIMEOUT, TestNamespace, eventually, wait_for, wait_for_deleted};

/// The operator's finalizer.
const OURS: &str = "premium.dev/teardown";

/// A feature running podinfo that depends on `deps`; `guarded` ones carry the label the
/// guard policy selects.
fn feature(name: &str, deps: &[&str], guarded: bool) -> String {
    let deps: Vec<String> = deps.iter().map(|d| format!("{{name: {d}}}")).collect();
    let guard = if guarded { ", guard: \"on\"" } else { "" };
    format!(
        "apiVersion: premium.dev/v1alpha1\nkind: PremiumFeature\nmetadata: {{name: {name}, labels: {{tier: premium{guard}}}}}\nspec:\n  image: ghcr.io/stefanprodan/podinfo:6.7.1\n  port: 9898\n  healthCheck: {{path: /readyz}}\n  dependsOn: [{}]\n---\n",
        deps.join(", ")
    )
}

/// The policy that guards the features labelled `guard: on`.
fn policy(mode: &str) -> String {
    format!(
        "apiVersion: premium.dev/v1alpha1\nkind: PremiumPolicy\nmetadata: {{name: guard}}\nspec:\n  selector: {{matchLabels: {{guard: \"on\"}}}}\n  deletion: {{whileDependents: {mode}}}\n---\n"
    )
}

/// catalog (guarded) with portal and search on it, and sale on both: sale is the deepest.
/// `other` depends on nothing and must outlive every deletion of catalog.
fn graph(mode: &str) -> String {
    [
        policy(mode),
        feature("catalog", &[], true),
        feature("portal", &["catalog"], false),
        feature("search", &["catalog"], false),
        feature("sale", &["portal", "search"], false),
        feature("other", &[], false),
    ]
    .concat()
}

/// Waits until every one of `names` carries the operator's finalizer (it has seen them).
async fn wait_finalized(api: &Api<PremiumFeature>, names: &[&str]) -> anyhow::Result<()> {
    for name in names {
        wait_for(
            api,
            name,
            |f: Option<&PremiumFeature>| {
                f.is_some_and(|f| f.finalizers().iter().any(|x| x == OURS))
            },
            DEFAULT_TIMEOUT,
        )
        .await?;
    }
    Ok(())
}

/// The `Stalled` condition of a feature as (status, reason, message).
fn stalled(f: &PremiumFeature) -> Option<(String, String, String)> {
    let c = f
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until `name` is Terminating and blocked with a message naming exactly `named` of
/// `candidates` (and none of the others).
async fn wait_blocked(
    api: &Api<PremiumFeature>,
    name: &str,
    named: &[&str],
    candidates: &[&str],
) -> anyhow::Result<PremiumFeature> {
    let (named, candidates): (Vec<String>, Vec<String>) = (
        named.iter().map(|s| s.to_string()).collect(),
        candidates.iter().map(|s| s.to_string()).collect(),
    );
    wait_for(
        api,
        name,
        move |f: Option<&PremiumFeature>| {
            let Some(f) = f else { return false };
            let Some((status, reason, message)) = stalled(f) else {
                return false;
            };
            f.metadata.deletion_timestamp.is_some()
                && status == "True"
                && reason == "DependentsRemain"
                && candidates
                    .iter()
                    .all(|c| message.contains(c.as_str()) == named.contains(c))
        },
        DEFAULT_TIMEOUT,
    )
    .await
}

/// Events of `reason` recorded on the feature `name`.
async fn events(
    client: &kube::Client,
    ns: &str,
    name: &str,
    reason: &str,
) -> anyhow::Result<usize> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        })
        .count())
}

/// Sets the guard policy's mode.
async fn set_mode(ns: &TestNamespace, mode: &str) -> anyhow::Result<()> {
    apply_yaml(ns.client(), ns.name(), &policy(mode)).await
}

/// A namespace with the graph applied under `mode` and an operator that has seen it all.
async fn world(prefix: &str, mode: &str) -> anyhow::Result<(TestNamespace, Operator)> {
    let client = support::client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, prefix).await?;
    apply_yaml(&client, ns.name(), &graph(mode)).await?;
    let operator = Operator::start(Some(ns.name()), &[])?;
    wait_finalized(&ns.api(), &["catalog", "portal", "search", "sale", "other"]).await?;
    Ok((ns, operator))
}

async fn delete(api: &Api<PremiumFeature>, name: &str) -> anyhow::Result<()> {
    api.delete(name, &DeleteParams::default())
        .await
        .with_context(|| format!("deleting {name}"))?;
    Ok(())
}

/// Block: catalog stays, with its Deployment and finalizer, naming its live dependents, and
/// says so in one Event; it goes once they are gone (portal, then search, each deleted).
#[tokio::test]
async fn block_holds_until_the_dependents_are_gone() -> anyhow::Result<()> {
    let (ns, operator) = world("guard-block", "Block").await?;
    let features: Api<PremiumFeature> = ns.api();
    let deployments: Api<Deployment> = ns.api();
    let all = ["portal", "search", "sale", "other"];
    delete(&features, "catalog").await?;
    let held = wait_blocked(&features, "catalog", &["portal", "search"], &all).await?;
    ensure!(
        held.finalizers().iter().any(|f| f == OURS),
        "a blocked feature keeps its finalizer"
    );
    ensure!(
        deployments.get_opt("catalog").await?.is_some(),
        "nothing of a blocked feature is torn down"
    );
    // One dependent goes: catalog is still held, now by the other alone.
    delete(&features, "portal").await?;
    wait_for_deleted(&features, "portal", DEFAULT_TIMEOUT).await?;
    wait_blocked(&features, "catalog", &["search"], &all).await?;
    let entered = events(ns.client(), ns.name(), "catalog", "DependentsRemain").await?;
    ensure!(
        entered == 1,
        "one Event on entering the block, got {entered}"
    );
    delete(&features, "search").await?;
    wait_for_deleted(&features, "catalog", DEFAULT_TIMEOUT)
        .await
        .with_context(|| operator.log_tail())?;
    ensure!(
        features.get_opt("sale").await?.is_some() && features.get_opt("other").await?.is_some(),
        "Block deletes nothing else"
    );
    finish(ns, operator).await
}

/// Block, lifted by the policy: switching it to Proceed lets the held catalog go at once while
/// its dependents stay.
#[tokio::test]
async fn block_holds_until_the_policy_changes() -> anyhow::Result<()> {
    let (ns, operator) = world("guard-lift", "Block").await?;
    let features: Api<PremiumFeature> = ns.api();
    delete(&features, "catalog").await?;
    let all = ["portal", "search", "sale", "other"];
    wait_blocked(&features, "catalog", &["portal", "search"], &all).await?;
    set_mode(&ns, "Proceed").await?;
    wait_for_deleted(&features, "catalog", DEFAULT_TIMEOUT)
        .await
        .with_context(|| operator.log_tail())?;
    for name in all {
        ensure!(
            features.get_opt(name).await?.is_some(),
            "{name} stays when the policy lets catalog go"
        );
    }
    finish(ns, operator).await
}

/// Block, lifted by the dependents: once portal and search no longer list catalog in
/// `dependsOn`, catalog goes, woken by their change (well before the guard's 60 s recheck).
#[tokio::test]
async fn block_lets_go_when_the_dependents_drop_it() -> anyhow::Result<()> {
    let (ns, operator) = world("guard-drop", "Block").await?;
    let features: Api<PremiumFeature> = ns.api();
    delete(&features, "catalog").await?;
    let all = ["portal", "search", "sale", "other"];
    wait_blocked(&features, "catalog", &["portal", "search"], &all).await?;
    apply_yaml(
        ns.client(),
        ns.name(),
        &[feature("portal", &[], false), feature("search", &[], false)].concat(),
    )
    .await?;
    wait_for_deleted(&features, "catalog", Duration::from_secs(30))
        .await
        .with_context(|| operator.log_tail())?;
    for name in all {
        ensure!(
            features.get_opt(name).await?.is_some(),
            "{name} stays when its dependency goes"
        );
    }
    finish(ns, operator).await
}

/// What a watch of the namespace's features saw, in order: ("terminating" | "gone", name).
type Seen = Arc<Mutex<Vec<(&'static str, String)>>>;

/// Watches the features of `api` and records, in order, when each is first seen Terminating
/// and when it is gone. Returns once the watch has listed what exists.
async fn record_deletions(api: Api<PremiumFeature>) -> anyhow::Result<Seen> {
    let seen: Seen = Arc::default();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let out = seen.clone();
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let mut stream = std::pin::pin!(watcher::watcher(api, watcher::Config::default()));
        while let Some(event) = stream.next().await {
            let mut seen = out.lock().expect("not poisoned");
            match event {
                Ok(WatchEvent::Apply(f) | WatchEvent::InitApply(f))
                    if f.metadata.deletion_timestamp.is_some() =>
                {
                    let entry = ("terminating", f.name_any());
                    if !seen.contains(&entry) {
                        seen.push(entry);
                    }
                }
                Ok(WatchEvent::Delete(f)) => seen.push(("gone", f.name_any())),
                Ok(WatchEvent::InitDone) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(DEFAULT_TIMEOUT, ready_rx)
        .await
        .context("the watch did not list the features")??;
    Ok(seen)
}

/// Waits until the recording watch has seen every one of `names` gone.
async fn wait_seen_gone(seen: &Seen, names: &[&str], operator: &Operator) -> anyhow::Result<()> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    eventually(
        "the watch to see the features gone",
        DEFAULT_TIMEOUT,
        || {
            let (seen, names) = (seen.clone(), names.clone());
            async move {
                let seen = seen.lock().expect("not poisoned");
                Ok(names
                    .iter()
                    .all(|n| seen.iter().any(|(w, m)| *w == "gone" && m == n))
                    .then_some(()))
            }
        },
    )
    .await
    .with_context(|| operator.log_tail())
}

/// Position of `(what, name)` in what the watch saw.
fn at(seen: &[(&'static str, String)], what: &str, name: &str) -> anyhow::Result<usize> {
    seen.iter()
        .position(|(w, n)| *w == what && n == name)
        .with_context(|| format!("the watch never saw {name} {what}: {seen:?}"))
}

/// Every dependent (of `pairs`: (dependent, dependency)) is marked for deletion before its
/// dependency, unless that is `last`, the root deleted by hand, and is gone before it; `last`
/// goes last.
fn check_order(
    seen: &[(&'static str, String)],
    pairs: &[(&str, &str)],
    last: &str,
) -> anyhow::Result<()> {
    for (dependent, dependency) in pairs {
        // The root was deleted by hand first; the others are marked in the cascade's order.
        ensure!(
            *dependency == last
                || at(seen, "terminating", dependent)? < at(seen, "terminating", dependency)?,
            "{dependent} should be deleted before its dependency {dependency}: {seen:?}"
        );
        ensure!(
            at(seen, "gone", dependent)? < at(seen, "gone", dependency)?,
            "{dependent} should be gone before its dependency {dependency}: {seen:?}"
        );
    }
    let gone_last = seen.iter().rev().find(|(w, _)| *w == "gone");
    ensure!(
        gone_last.is_some_and(|(_, n)| n == last),
        "{last} should go last: {seen:?}"
    );
    Ok(())
}

/// Cascade: deleting catalog deletes sale, then portal and search, then catalog; `other`
/// stays. At most one Event per cascade step (two steps here).
#[tokio::test]
async fn cascade_deletes_the_dependents_deepest_first() -> anyhow::Result<()> {
    let (ns, operator) = world("guard-cascade", "Cascade").await?;
    let features: Api<PremiumFeature> = ns.api();
    let seen = record_deletions(features.clone()).await?;
    delete(&features, "catalog").await?;
    wait_seen_gone(&seen, &["sale", "portal", "search", "catalog"], &operator).await?;
    let seen = seen.lock().expect("not poisoned").clone();
    check_order(
        &seen,
        &[
            ("sale", "portal"),
            ("sale", "search"),
            ("portal", "catalog"),
            ("search", "catalog"),
        ],
        "catalog",
    )?;
    ensure!(
        features.get_opt("other").await?.is_some(),
        "a feature that does not depend on catalog stays"
    );
    let steps = events(ns.client(), ns.name(), "catalog", "CascadeDelete").await?;
    ensure!(
        (1..=2).contains(&steps),
        "one Event per cascade step at most (2 steps), got {steps}"
    );
    finish(ns, operator).await
}

/// A chain catalog ← a ← b ← c ← d under Cascade: the operator is SIGKILLed once the cascade
/// has begun and before it ends, started again, and the cascade finishes in the same order.
#[tokio::test]
async fn cascade_survives_an_operator_killed_midway() -> anyhow::Result<()> {
    let client = support::client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "guard-kill").await?;
    let chain = [
        policy("Cascade"),
        feature("catalog", &[], true),
        feature("a", &["catalog"], false),
        feature("b", &["a"], false),
        feature("c", &["b"], false),
        feature("d", &["c"], false),
    ]
    .concat();
    apply_yaml(&client, ns.name(), &chain).await?;
    let mut operator = Operator::start(Some(ns.name()), &[])?;
    let features: Api<PremiumFeature> = ns.api();
    wait_finalized(&features, &["catalog", "a", "b", "c", "d"]).await?;
    let seen = record_deletions(features.clone()).await?;
    delete(&features, "catalog").await?;
    eventually("the cascade to begin", DEFAULT_TIMEOUT, || {
        let seen = seen.clone();
        async move {
            let seen = seen.lock().expect("not poisoned");
            Ok(seen.iter().any(|(_, n)| n == "d").then_some(()))
        }
    })
    .await?;
    operator.kill();
    ensure!(
        features.get_opt("a").await?.is_some(),
        "the operator was to be killed before the cascade ended"
    );
    let operator = Operator::start(Some(ns.name()), &[])?;
    wait_seen_gone(&seen, &["d", "c", "b", "a", "catalog"], &operator).await?;
    let seen = seen.lock().expect("not poisoned").clone();
    check_order(
        &seen,
        &[("d", "c"), ("c", "b"), ("b", "a"), ("a", "catalog")],
        "catalog",
    )?;
    finish(ns, operator).await
}

/// A tool of the local cluster (kubectl, helm), found the way the scripts find it. Fails,
/// never skips, when it is missing.
fn tool(name: &str) -> anyhow::Result<PathBuf> {
    let repo = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("source hack/lib.sh && tool_path {name}"))
        .current_dir(repo)
        .output()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    ensure!(
        out.status.success() && path.is_file(),
        "{name} is not built (looked for {}); run make cluster-up",
        path.display()
    );
    Ok(path)
}

/// Runs a tool against the test cluster; fails with its output when it fails.
fn run(tool_name: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(tool(tool_name)?)
        .args(args)
        .env("KUBECONFIG", support::kubeconfig_path())
        .output()?;
    if !out.status.success() {
        bail!(
            "{tool_name} {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Writes the graph into `dir` as one file per object, as a GitOps repository holds it.
fn write_graph(dir: &Path, mode: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (i, doc) in graph(mode)
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .enumerate()
    {
        std::fs::write(dir.join(format!("{i:02}.yaml")), doc)?;
    }
    Ok(())
}

/// Deletes the whole graph at once with `how` ("kubectl" or "helm") under `mode`, and waits
/// until no feature is left.
async fn delete_whole_graph(how: &str, mode: &str) -> anyhow::Result<()> {
    let client = support::client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, &format!("guard-all-{how}")).await?;
    let tmp = tempfile::tempdir()?;
    let n = ns.name();
    let release = format!("graph-{}", mode.to_lowercase());
    if how == "helm" {
        let chart = tmp.path().join("chart");
        std::fs::create_dir_all(&chart)?;
        std::fs::write(
            chart.join("Chart.yaml"),
            format!("apiVersion: v2\nname: {release}\nversion: 0.1.0\n"),
        )?;
        write_graph(&chart.join("templates"), mode)?;
        run(
            "helm",
            &[
                "install",
                &release,
                chart.to_str().unwrap_or_default(),
                "-n",
                n,
            ],
        )?;
    } else {
        write_graph(&tmp.path().join("graph"), mode)?;
        let dir = tmp.path().join("graph");
        run(
            "kubectl",
            &["apply", "-n", n, "-f", dir.to_str().unwrap_or_default()],
        )?;
    }
    let operator = Operator::start(Some(n), &[])?;
    let features: Api<PremiumFeature> = ns.api();
    wait_finalized(&features, &["catalog", "portal", "search", "sale", "other"]).await?;
    if how == "helm" {
        run("helm", &["uninstall", &release, "-n", n])?;
    } else {
        let dir = tmp.path().join("graph");
        let dir = dir.to_str().unwrap_or_default();
        run("kubectl", &["delete", "-n", n, "-f", dir, "--wait=false"])?;
    }
    eventually(
        &format!("every feature gone after {how} deleted the graph under {mode}"),
        DEFAULT_TIMEOUT,
        || {
            let features = features.clone();
            async move {
                Ok(features
                    .list(&ListParams::default())
                    .await?
                    .items
                    .is_empty()
                    .then_some(()))
            }
        },
    )
    .await
    .with_context(|| operator.log_tail())?;
    finish(ns, operator).await
}

#[tokio::test]
async fn kubectl_delete_of_the_whole_graph_leaves_nothing_under_block() -> anyhow::Result<()> {
    delete_whole_graph("kubectl", "Block").await
}

#[tokio::test]
async fn kubectl_delete_of_the_whole_graph_leaves_nothing_under_cascade() -> anyhow::Result<()> {
    delete_whole_graph("kubectl", "Cascade").await
}

#[tokio::test]
async fn helm_uninstall_of_the_whole_graph_leaves_nothing_under_block() -> anyhow::Result<()> {
    delete_whole_graph("helm", "Block").await
}

#[tokio::test]
async fn helm_uninstall_of_the_whole_graph_leaves_nothing_under_cascade() -> anyhow::Result<()> {
    delete_whole_graph("helm", "Cascade").await
}
