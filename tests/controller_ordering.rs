//! Dependency-ordered start-up on the real control plane: ordering, missing dependencies that
//! appear later, cycles and optional dependencies that time out.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use premium_operator::api::{Phase, PremiumFeature};
use support::operator::{Operator, apply_yaml, ensure_crds, feature_yaml, finish, wait_phase};
use support::{DEFAULT_TIMEOUT, TestNamespace, client, wait_for};

fn condition<'a>(
    f: &'a PremiumFeature,
    ty: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    f.status.as_ref()?.conditions.iter().find(|c| c.type_ == ty)
}

fn is(f: &PremiumFeature, ty: &str, status: &str) -> bool {
    condition(f, ty).is_some_and(|c| c.status == status)
}

const POLICY: &str = "apiVersion: premium.dev/v1alpha1
kind: PremiumPolicy
metadata: {name: premium-defaults}
spec:
  selector: {matchLabels: {tier: premium}}
  startup: {maxConcurrent: 2}
---
";

#[tokio::test]
async fn features_start_in_dependency_order() -> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "order").await?;
    let features: Api<PremiumFeature> = ns.api();
    let deployments: Api<Deployment> = ns.api();

    // Every feature and Deployment event, with its resourceVersion: one etcd orders them all,
    // so "A became Ready before B was scaled" can be checked across the two kinds.
    let log: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let watch_features = {
        let log = log.clone();
        let api = features.clone();
        tokio::spawn(async move {
            let mut s = std::pin::pin!(watcher(api, Default::default()).applied_objects());
            while let Some(Ok(f)) = s.next().await {
                if is(&f, "Ready", "True") {
                    let rv = f
                        .resource_version()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    log.lock()
                        .unwrap()
                        .push((rv, format!("ready:{}", f.name_any())));
                }
            }
        })
    };
    let watch_deployments = {
        let log = log.clone();
        let api = deployments.clone();
        tokio::spawn(async move {
            let mut s = std::pin::pin!(watcher(api, Default::default()).applied_objects());
            while let Some(Ok(d)) = s.next().await {
                if d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) > 0 {
                    let rv = d
                        .resource_version()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    log.lock()
                        .unwrap()
                        .push((rv, format!("scaled:{}", d.name_any())));
                }
            }
        })
    };

    let operator = Operator::start(Some(ns.name()), &[])?;
    // Dependents first, so the API server sees them before what they need.
    let manifests = [
        POLICY.to_string(),
        feature_yaml("aika", &["catalog", "soundcheck", "skill-exchange?"], ""),
        feature_yaml("soundcheck", &["catalog"], ""),
        feature_yaml("skill-exchange", &["catalog"], ""),
        feature_yaml("catalog", &[], ""),
    ]
    .concat();
    apply_yaml(&client, ns.name(), &manifests).await?;

    let mut ready = BTreeMap::new();
    for name in ["catalog", "soundcheck", "skill-exchange", "aika"] {
        ready.insert(name, wait_phase(&features, name, Phase::Ready).await?);
    }
    watch_features.abort();
    watch_deployments.abort();

    let levels: Vec<(&str, i32)> = ready
        .iter()
        .map(|(n, f)| {
            (
                *n,
                f.status
                    .as_ref()
                    .and_then(|s| s.startup_level)
                    .unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(
        levels,
        vec![
            ("aika", 2),
            ("catalog", 0),
            ("skill-exchange", 1),
            ("soundcheck", 1)
        ]
    );

    let mut events = log.lock().unwrap().clone();
    events.sort();
    let first = |what: &str| events.iter().find(|(_, e)| e == what).map(|(rv, _)| *rv);
    let deps = [
        ("soundcheck", vec!["catalog"]),
        ("skill-exchange", vec!["catalog"]),
        ("aika", vec!["catalog", "soundcheck", "skill-exchange"]),
    ];
    for (dependent, needs) in deps {
        let scaled = first(&format!("scaled:{dependent}")).expect("dependent was scaled up");
        for dep in needs {
            let dep_ready = first(&format!("ready:{dep}")).expect("dependency became Ready");
            assert!(
                dep_ready < scaled,
                "{dependent} was scaled up (rv {scaled}) before {dep} was Ready (rv {dep_ready}); events: {events:?}"
            );
        }
    }
    // And from the conditions themselves: a dependent's DependenciesReady never predates its
    // dependencies' Ready.
    for (dependent, needs) in [("aika", ["catalog", "soundcheck"])] {
        let deps_ready = &condition(&ready[dependent], "DependenciesReady")
            .unwrap()
            .last_transition_time;
        for dep in needs {
            let dep_ready = &condition(&ready[dep], "Ready")
                .unwrap()
                .last_transition_time;
            assert!(
                dep_ready <= deps_ready,
                "{dependent} saw its dependencies Ready before {dep} was"
            );
        }
    }
    finish(ns, operator).await
}

#[tokio::test]
async fn a_missing_dependency_blocks_until_it_is_created() -> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "missing").await?;
    let features: Api<PremiumFeature> = ns.api();
    let deployments: Api<Deployment> = ns.api();
    let operator = Operator::start(Some(ns.name()), &[])?;

    apply_yaml(&client, ns.name(), &feature_yaml("aika", &["catalog"], "")).await?;
    let waiting = wait_phase(&features, "aika", Phase::WaitingForDependencies).await?;
    let st = waiting.status.clone().unwrap();
    assert_eq!(st.blocked_by.len(), 1);
    assert_eq!(st.blocked_by[0].name, "catalog");
    assert_eq!(st.blocked_by[0].reason, "DependencyNotFound");
    let deps = condition(&waiting, "DependenciesReady").unwrap();
    assert_eq!(
        (deps.status.as_str(), deps.reason.as_str()),
        ("False", "DependencyNotFound")
    );
    // Gated: the Deployment exists with zero replicas.
    let d = wait_for(
        &deployments,
        "aika",
        |d: Option<&Deployment>| d.is_some(),
        DEFAULT_TIMEOUT,
    )
    .await?;
    assert_eq!(d.spec.unwrap().replicas, Some(0));

    apply_yaml(&client, ns.name(), &feature_yaml("catalog", &[], "")).await?;
    let ready = wait_phase(&features, "aika", Phase::Ready).await?;
    assert!(ready.status.unwrap().blocked_by.is_empty());
    finish(ns, operator).await
}

#[tokio::test]
async fn cycle_members_stall_and_others_carry_on() -> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "cycle").await?;
    let features: Api<PremiumFeature> = ns.api();
    let deployments: Api<Deployment> = ns.api();
    let operator = Operator::start(Some(ns.name()), &[])?;
    let manifests = [
        feature_yaml("aika", &["soundcheck"], ""),
        feature_yaml("soundcheck", &["aika"], ""),
        feature_yaml("catalog", &[], ""),
    ]
    .concat();
    apply_yaml(&client, ns.name(), &manifests).await?;

    for (name, path) in [
        ("aika", "aika -> soundcheck -> aika"),
        ("soundcheck", "soundcheck -> aika -> soundcheck"),
    ] {
        let f = wait_phase(&features, name, Phase::Failed).await?;
        let stalled = condition(&f, "Stalled").unwrap();
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", "DependencyCycle")
        );
        assert!(
            stalled.message.contains(path),
            "{name}: {}",
            stalled.message
        );
        let d = deployments.get(name).await?;
        assert_eq!(d.spec.unwrap().replicas, Some(0), "{name} must not run");
    }
    wait_phase(&features, "catalog", Phase::Ready).await?;
    finish(ns, operator).await
}

#[tokio::test]
async fn optional_dependency_is_skipped_after_the_startup_timeout() -> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "optional").await?;
    let features: Api<PremiumFeature> = ns.api();
    let operator = Operator::start(Some(ns.name()), &[])?;
    // skill-exchange waits forever for a dependency nobody creates; aika only wants it.
    let manifests = [
        feature_yaml("skill-exchange", &["never-created"], ""),
        feature_yaml("catalog", &[], ""),
        feature_yaml(
            "aika",
            &["catalog", "skill-exchange?"],
            // Longer than the 5 s a shorter blockedBy may wait to be written, so the wait for
            // skill-exchange alone shows before the timeout ends it.
            "  startupTimeout: 12s",
        ),
    ]
    .concat();
    apply_yaml(&client, ns.name(), &manifests).await?;

    // Once catalog is Ready, aika still waits, for skill-exchange alone, until its timeout.
    let only_optional = |f: Option<&PremiumFeature>| {
        f.and_then(|f| f.status.as_ref()).is_some_and(|s| {
            s.phase == Some(Phase::WaitingForDependencies)
                && s.blocked_by
                    .iter()
                    .map(|b| b.name.as_str())
                    .collect::<Vec<_>>()
                    == ["skill-exchange"]
        })
    };
    wait_for(&features, "aika", only_optional, DEFAULT_TIMEOUT).await?;
    let degraded = wait_phase(&features, "aika", Phase::Degraded).await?;
    let d = condition(&degraded, "Degraded").unwrap();
    assert_eq!(
        (d.status.as_str(), d.reason.as_str()),
        ("True", "OptionalDependencyUnavailable")
    );
    assert!(d.message.contains("skill-exchange"));
    assert!(
        is(&degraded, "Ready", "True"),
        "running without an optional dependency still serves"
    );
    assert_eq!(degraded.status.unwrap().ready_replicas, Some(1));
    finish(ns, operator).await
}
