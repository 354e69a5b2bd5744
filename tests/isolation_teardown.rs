//! Isolation of deletion and of grants across namespaces (issue 17, items 3 and 4), on a
//! cluster of the test's own with a cluster-wide operator under the chart's ClusterRole:
//!
//! * a feature being deleted waits only for dependents that may depend on it, only while their
//!   own teardown is still to come, and only up to `--teardown-wait-seconds`; then it goes on
//!   and a Warning Event names who held it;
//! * a stored feature that no longer deserializes is still released once deleted;
//! * a relabel that moves a feature into or out of a granting policy re-checks its dependents
//!   in other namespaces at once.
//!
//! Needs the local control plane tools (`make tools`) and helm. Runs in `make test`.

mod support;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::core::DynamicObject;
use kube::discovery::ApiResource;
use kube::{Api, CustomResourceExt, Resource, ResourceExt};
use premium_operator::api::{Phase, PremiumFeature, PremiumPolicy};
use support::cluster::{OwnCluster, report};
use support::operator::{apply_yaml, ensure_crds, feature_yaml, wait_phase};
use support::{
    DEFAULT_TIMEOUT, TestNamespace, eventually, install_crd, unchecked_feature_crd, wait_for,
    wait_for_deleted,
};

/// The operator's finalizer.
const OURS: &str = "premium.dev/teardown";
/// A finalizer of some other controller, which nobody will ever remove in these tests until
/// they clean up.
const FOREIGN: &str = "example.com/hold";
/// The teardown wait the operator runs with here: short, so the bounded case stays quick.
const BOUND_SECS: u64 = 10;

/// A feature of namespace `ns` that depends on `target` in namespace `target_ns`.
fn cross_dependent(name: &str, target_ns: &str, target: &str) -> String {
    format!(
        "apiVersion: premium.dev/v1alpha1\nkind: PremiumFeature\nmetadata: {{name: {name}, labels: {{tier: premium}}}}\nspec:\n  image: ghcr.io/stefanprodan/podinfo:6.7.1\n  port: 9898\n  healthCheck: {{path: /readyz}}\n  dependsOn: [{{name: {target}, namespace: {target_ns}}}]\n---\n"
    )
}

/// A policy of the target's namespace granting `to` the features labelled `tier=<tier>`.
fn grant(name: &str, tier: &str, to: &str) -> String {
    format!(
        "apiVersion: premium.dev/v1alpha1\nkind: PremiumPolicy\nmetadata: {{name: {name}}}\nspec:\n  selector: {{matchLabels: {{tier: {tier}}}}}\n  exposeTo: {{namespaces: [{to}]}}\n---\n"
    )
}

/// Sets the finalizers of an object (a merge patch replaces the list).
async fn set_finalizers<K>(api: &Api<K>, name: &str, finalizers: &[&str]) -> anyhow::Result<()>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let patch = serde_json::json!({"metadata": {"finalizers": finalizers}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("setting the finalizers of {name} to {finalizers:?}"))?;
    Ok(())
}

/// Adds `finalizer` to an object next to whatever it carries.
async fn add_finalizer<K>(api: &Api<K>, name: &str, finalizer: &str) -> anyhow::Result<()>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let current = api.get(name).await?;
    let mut all: Vec<&str> = current.finalizers().iter().map(String::as_str).collect();
    all.push(finalizer);
    set_finalizers(api, name, &all).await
}

/// Drops `finalizer` from an object if it is still there.
async fn drop_finalizer<K>(api: &Api<K>, name: &str, finalizer: &str) -> anyhow::Result<()>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let Some(current) = api.get_opt(name).await? else {
        return Ok(());
    };
    let rest: Vec<&str> = current
        .finalizers()
        .iter()
        .map(String::as_str)
        .filter(|f| *f != finalizer)
        .collect();
    set_finalizers(api, name, &rest).await
}

/// Deletes a feature the way `kubectl delete` does (background propagation).
async fn delete_feature(api: &Api<PremiumFeature>, name: &str) -> anyhow::Result<()> {
    api.delete(name, &DeleteParams::background())
        .await
        .with_context(|| format!("deleting PremiumFeature {name}"))?;
    Ok(())
}

/// Deletes `name` (a dependent) and waits until its own teardown is stuck behind the foreign
/// finalizer on its Deployment: the Deployment is being deleted and the feature still carries
/// the operator's finalizer.
async fn delete_and_hold(
    features: &Api<PremiumFeature>,
    deployments: &Api<Deployment>,
    name: &str,
) -> anyhow::Result<()> {
    delete_feature(features, name).await?;
    wait_for(
        deployments,
        name,
        |d: Option<&Deployment>| d.is_some_and(|d| d.metadata.deletion_timestamp.is_some()),
        DEFAULT_TIMEOUT,
    )
    .await?;
    let held = features.get(name).await?;
    anyhow::ensure!(
        held.finalizers().iter().any(|f| f == OURS),
        "{name} lost the operator's finalizer although its Deployment cannot go"
    );
    Ok(())
}

/// Warning Events `TeardownWaitExpired` about `name` in `events`' namespace: their notes.
async fn overdue_events(events: &Api<Event>, name: &str) -> anyhow::Result<Vec<String>> {
    Ok(events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some("TeardownWaitExpired")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        })
        .map(|e| e.note.unwrap_or_default())
        .collect())
}

/// Waits for a Deployment of `name` the operator created (its feature has our finalizer then).
async fn wait_deployment(deployments: &Api<Deployment>, name: &str) -> anyhow::Result<()> {
    wait_for(
        deployments,
        name,
        |d: Option<&Deployment>| d.is_some(),
        DEFAULT_TIMEOUT,
    )
    .await?;
    Ok(())
}

/// The two namespaces of the teardown cases and what the cases read.
struct World {
    client: kube::Client,
    b: String,
    fa: Api<PremiumFeature>,
    fb: Api<PremiumFeature>,
    db: Api<Deployment>,
    events_a: Api<Event>,
    raw_a: Api<DynamicObject>,
    log: String,
}

impl World {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The operator's log lines that mention any of `names`.
    fn log_about(&self, names: &[&str]) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| names.iter().any(|n| l.contains(n)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// (a) A dependent without a grant, whose own teardown cannot finish (someone else's
/// finalizer on it and on its Deployment), has no say in catalog's deletion.
async fn ungranted_dependent(w: &World) -> anyhow::Result<String> {
    add_finalizer(&w.fb, "intruder", FOREIGN).await?;
    add_finalizer(&w.db, "intruder", FOREIGN).await?;
    delete_and_hold(&w.fb, &w.db, "intruder").await?;
    let started = Instant::now();
    delete_feature(&w.fa, "catalog").await?;
    wait_for_deleted(&w.fa, "catalog", Duration::from_secs(60))
        .await
        .with_context(|| {
            format!(
                "catalog's deletion was held; operator log:\n{}",
                w.log_tail()
            )
        })?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        overdue_events(&w.events_a, "catalog").await?.is_empty(),
        "catalog went by the wait running out, not because the ungranted dependent did not count"
    );
    Ok(format!(
        "dependency deleted in {secs:.1} s, no wait for the bound ({BOUND_SECS} s)"
    ))
}

/// (b') A permitted dependent kept only by someone else's finalizer on itself: its own
/// teardown (its pods) is done, so ratings goes at once.
async fn dependent_kept_by_a_foreign_finalizer(w: &World) -> anyhow::Result<String> {
    add_finalizer(&w.fb, "reviews", FOREIGN).await?;
    delete_feature(&w.fb, "reviews").await?;
    wait_for(
        &w.fb,
        "reviews",
        |f: Option<&PremiumFeature>| f.is_some_and(|f| !f.finalizers().iter().any(|x| x == OURS)),
        DEFAULT_TIMEOUT,
    )
    .await?;
    let started = Instant::now();
    delete_feature(&w.fa, "ratings").await?;
    wait_for_deleted(&w.fa, "ratings", Duration::from_secs(60))
        .await
        .with_context(|| {
            format!(
                "ratings' deletion was held; operator log:\n{}",
                w.log_tail()
            )
        })?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        overdue_events(&w.events_a, "ratings").await?.is_empty(),
        "ratings went by the wait running out, not because the torn-down dependent did not count"
    );
    Ok(format!(
        "dependency deleted in {secs:.1} s once the dependent's pods were gone, no wait for the bound ({BOUND_SECS} s)"
    ))
}

/// (b) A permitted dependent whose own teardown cannot finish: search waits for it, but only
/// up to the bound, then goes and says who held it.
async fn dependent_that_cannot_finish(w: &World) -> anyhow::Result<String> {
    add_finalizer(&w.db, "portal", FOREIGN).await?;
    delete_and_hold(&w.fb, &w.db, "portal").await?;
    let started = Instant::now();
    delete_feature(&w.fa, "search").await?;
    // Still there well inside the bound: the order is kept while it may be.
    tokio::time::sleep(Duration::from_secs(BOUND_SECS / 2)).await;
    anyhow::ensure!(
        w.fa.get_opt("search").await?.is_some(),
        "search went before its permitted dependent, inside the bound; operator log about them:\n{}",
        w.log_about(&["search", "portal"])
    );
    wait_for_deleted(&w.fa, "search", Duration::from_secs(BOUND_SECS + 60))
        .await
        .with_context(|| {
            format!(
                "search's deletion was held past the bound; operator log:\n{}",
                w.log_tail()
            )
        })?;
    let secs = started.elapsed().as_secs_f64();
    let notes = overdue_events(&w.events_a, "search").await?;
    let holder = format!("{}/portal", w.b);
    anyhow::ensure!(
        notes.len() == 1 && notes[0].contains(&holder),
        "want one Warning Event TeardownWaitExpired naming {holder}, got {notes:?}"
    );
    Ok(format!(
        "dependency deleted {secs:.1} s after its delete (bound {BOUND_SECS} s); 1 Warning Event naming the holder"
    ))
}

/// (c) A stored feature that no longer deserializes, carrying the operator's finalizer, is
/// released once deleted.
async fn unreadable_feature(w: &World, namespace: &str) -> anyhow::Result<String> {
    apply_yaml(
        &w.client,
        namespace,
        &format!(
            "apiVersion: premium.dev/v1alpha1\nkind: PremiumFeature\nmetadata: {{name: broken, finalizers: [{OURS}]}}\nspec:\n  image: [not, a, string]\n  port: eighty\n---\n"
        ),
    )
    .await?;
    let started = Instant::now();
    w.raw_a
        .delete("broken", &DeleteParams::background())
        .await?;
    eventually(
        "the unreadable feature to be deleted",
        Duration::from_secs(60),
        || async { Ok(w.raw_a.get_opt("broken").await?.is_none().then_some(())) },
    )
    .await
    .with_context(|| {
        format!(
            "the unreadable feature kept its finalizer; operator log:\n{}",
            w.log_tail()
        )
    })?;
    Ok(format!(
        "finalizer released, deleted in {:.1} s",
        started.elapsed().as_secs_f64()
    ))
}

#[tokio::test]
async fn no_other_namespace_or_finalizer_can_hold_a_teardown_for_long() -> anyhow::Result<()> {
    let cluster = OwnCluster::up("teardown", &[])?;
    let client = cluster.client().await?;
    install_crd(&client, &unchecked_feature_crd()?).await?;
    install_crd(&client, &PremiumPolicy::crd()).await?;
    let a = TestNamespace::new(&client, "owner-a").await?;
    let b = TestNamespace::new(&client, "user-b").await?;
    let bound = BOUND_SECS.to_string();
    let (_home, mut operator) = cluster
        .chart_operator_with(&client, &["--teardown-wait-seconds", &bound])
        .await?;
    let w = World {
        client: client.clone(),
        b: b.name().to_string(),
        fa: a.api(),
        fb: b.api(),
        db: b.api(),
        events_a: a.api(),
        raw_a: Api::namespaced_with(
            client.clone(),
            a.name(),
            &ApiResource::erase::<PremiumFeature>(&()),
        ),
        log: operator.log.to_string_lossy().to_string(),
    };

    // Namespace A owns three targets and grants B only `tier=shared`; B depends on all three.
    apply_yaml(
        &client,
        a.name(),
        &[
            feature_yaml("catalog", &[], ""),
            feature_yaml("ratings", &[], "").replace("tier: premium", "tier: shared"),
            feature_yaml("search", &[], "").replace("tier: premium", "tier: shared"),
            grant("share", "shared", b.name()),
        ]
        .concat(),
    )
    .await?;
    apply_yaml(
        &client,
        b.name(),
        &[
            cross_dependent("intruder", a.name(), "catalog"),
            cross_dependent("reviews", a.name(), "ratings"),
            cross_dependent("portal", a.name(), "search"),
        ]
        .concat(),
    )
    .await?;
    let da: Api<Deployment> = a.api();
    for name in ["intruder", "reviews", "portal"] {
        wait_deployment(&w.db, name).await?;
    }
    for name in ["catalog", "ratings", "search"] {
        wait_deployment(&da, name).await?;
    }

    // The cases are independent (their own features), so they run at once, and every one
    // is reported, passed or failed.
    let (ungranted, foreign, bounded, unreadable) = tokio::join!(
        ungranted_dependent(&w),
        dependent_kept_by_a_foreign_finalizer(&w),
        dependent_that_cannot_finish(&w),
        unreadable_feature(&w, a.name()),
    );
    let cases = [
        (
            "teardown held by an ungranted dependent in another namespace (foreign finalizers)",
            ungranted,
        ),
        (
            "teardown held by a granted dependent kept only by a foreign finalizer",
            foreign,
        ),
        (
            "teardown held by a granted dependent that cannot finish its own",
            bounded,
        ),
        (
            "deleting a stored feature that no longer deserializes",
            unreadable,
        ),
    ];
    let mut failed = Vec::new();
    for (case, outcome) in cases {
        match outcome {
            Ok(figures) => report("isolation", case, "pass", &figures),
            Err(e) => failed.push(format!("{case}: {e:#}")),
        }
    }
    anyhow::ensure!(
        operator.running(),
        "the operator exited:\n{}",
        operator.log_tail()
    );

    // Clean up: let the held objects go, then the namespaces.
    for name in ["intruder", "portal"] {
        drop_finalizer(&w.db, name, FOREIGN).await?;
    }
    for name in ["intruder", "reviews", "portal"] {
        drop_finalizer(&w.fb, name, FOREIGN).await?;
    }
    anyhow::ensure!(failed.is_empty(), "{}", failed.join("\n\n"));
    for name in ["intruder", "reviews", "portal"] {
        wait_for_deleted(&w.fb, name, DEFAULT_TIMEOUT).await?;
    }
    drop(operator);
    a.delete().await?;
    b.delete().await?;
    drop(cluster);
    Ok(())
}

#[tokio::test]
async fn a_relabel_grants_and_revokes_a_cross_namespace_dependency() -> anyhow::Result<()> {
    let cluster = OwnCluster::up("regrant", &[])?;
    let client = cluster.client().await?;
    ensure_crds(&client).await?;
    let a = TestNamespace::new(&client, "owner-a").await?;
    let b = TestNamespace::new(&client, "user-b").await?;
    let (_home, mut operator) = cluster.chart_operator(&client).await?;
    let fa: Api<PremiumFeature> = a.api();
    let fb: Api<PremiumFeature> = b.api();
    apply_yaml(
        &client,
        a.name(),
        &[
            feature_yaml("catalog", &[], ""),
            grant("share", "x", b.name()),
        ]
        .concat(),
    )
    .await?;
    apply_yaml(
        &client,
        b.name(),
        &cross_dependent("aika", a.name(), "catalog"),
    )
    .await?;
    wait_phase(&fa, "catalog", Phase::Ready).await?;
    let dependencies_ready = |f: &PremiumFeature| {
        f.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "DependenciesReady")
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    wait_for(
        &fb,
        "aika",
        |f: Option<&PremiumFeature>| {
            f.and_then(dependencies_ready)
                == Some(("False".into(), "DependencyNotPermitted".into()))
        },
        DEFAULT_TIMEOUT,
    )
    .await?;

    // Labelled into the granting policy: nothing else changes, yet the dependent starts.
    let relabel = |tier: &str| serde_json::json!({"metadata": {"labels": {"tier": tier}}});
    let granted_at = Instant::now();
    fa.patch(
        "catalog",
        &PatchParams::default(),
        &Patch::Merge(relabel("x")),
    )
    .await?;
    wait_for(
        &fb,
        "aika",
        |f: Option<&PremiumFeature>| {
            f.and_then(dependencies_ready) == Some(("True".into(), "DependenciesReady".into()))
        },
        Duration::from_secs(30),
    )
    .await
    .with_context(|| {
        format!(
            "the grant by relabel was not noticed; operator log:\n{}",
            operator.log_tail()
        )
    })?;
    let noticed_grant = granted_at.elapsed().as_secs_f64();
    wait_phase(&fb, "aika", Phase::Ready).await?;
    let ready_after = granted_at.elapsed().as_secs_f64();

    // Labelled out again: the dependent is told at once that it may no longer depend on it (a
    // running feature is not stopped for a dependency it lost; it reports it).
    let revoked_at = Instant::now();
    fa.patch(
        "catalog",
        &PatchParams::default(),
        &Patch::Merge(relabel("premium")),
    )
    .await?;
    let revoked = wait_for(
        &fb,
        "aika",
        |f: Option<&PremiumFeature>| {
            f.and_then(|f| f.status.as_ref()).is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.status == "True" && c.message.contains("DependencyNotPermitted"))
            })
        },
        Duration::from_secs(30),
    )
    .await
    .with_context(|| {
        format!(
            "the revoke by relabel was not noticed; operator log:\n{}",
            operator.log_tail()
        )
    })?;
    let noticed_revoke = revoked_at.elapsed().as_secs_f64();
    let phase = revoked.status.as_ref().and_then(|s| s.phase);
    anyhow::ensure!(
        phase == Some(Phase::Degraded),
        "a running dependent that lost its grant should be Degraded, is {phase:?}"
    );
    anyhow::ensure!(
        operator.running(),
        "the operator exited:\n{}",
        operator.log_tail()
    );
    report(
        "isolation",
        "grant moved by relabelling the target (policy exposeTo), both ways",
        "pass",
        &format!(
            "granted: DependencyNotPermitted -> DependenciesReady {noticed_grant:.1} s, Ready {ready_after:.1} s; revoked: reported {noticed_revoke:.1} s"
        ),
    );
    for api in [&fb, &fa] {
        api.delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
    }
    drop(operator);
    a.delete().await?;
    b.delete().await?;
    drop(cluster);
    Ok(())
}
