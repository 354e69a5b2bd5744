//! Behaviour that unit tests of the core cover, checked on the real control plane with the
//! operator running (issue 16, item 6): the start-up timeout, start-up slots, a stalled optional
//! dependency, no HPA while gated, suspension, a dependency that loses its pods, and Events on
//! transitions only.
//!
//! Pods that must not be Ready carry the test mark of hack/kwok/stages.yaml
//! (tests/support/kwok.rs): KWOK otherwise makes every pod Ready at once.
//!
//! Each test prints a `RESULT` line (support::cluster::report) with what it saw.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use premium_operator::api::conditions::{self as cond, reason};
use premium_operator::api::{FEATURE_LABEL, Phase, PremiumFeature, PremiumPolicy};
use serde::de::DeserializeOwned;
use support::cluster::report;
use support::kwok::{mark_feature_pods, never_ready_spec, pod_ready, pod_running};
use support::operator::{Operator, apply_yaml, ensure_crds, feature_yaml, finish, phase};
use support::{DEFAULT_TIMEOUT, TestNamespace, client, eventually, wait_for, wait_for_deleted};

const AREA: &str = "behaviour";

fn condition<'a>(f: &'a PremiumFeature, ty: &str) -> Option<&'a Condition> {
    f.status.as_ref()?.conditions.iter().find(|c| c.type_ == ty)
}

/// `(status, reason)` of a condition, for assertions that show both.
fn cond_of<'a>(f: &'a PremiumFeature, ty: &str) -> (&'a str, &'a str) {
    condition(f, ty).map_or(("absent", ""), |c| (c.status.as_str(), c.reason.as_str()))
}

fn rv<K: Resource>(o: &K) -> u64 {
    o.resource_version()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Everything a watch delivers, in order, with the time since the recorder started. Every kind
/// is stored in the one etcd, so resourceVersions order events across kinds too.
struct Recorder<T> {
    log: Arc<Mutex<Vec<(Duration, T)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl<T: Clone + Send + 'static> Recorder<T> {
    fn start<K>(api: Api<K>, seen: impl Fn(&K) -> T + Send + 'static) -> Self
    where
        K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + DeserializeOwned + Send + 'static,
    {
        let log: Arc<Mutex<Vec<(Duration, T)>>> = Arc::default();
        let start = Instant::now();
        let task = {
            let log = log.clone();
            tokio::spawn(async move {
                let stream = watcher(api, watcher::Config::default()).default_backoff();
                let mut stream = std::pin::pin!(stream.applied_objects());
                while let Some(next) = stream.next().await {
                    if let Ok(object) = next {
                        log.lock().unwrap().push((start.elapsed(), seen(&object)));
                    }
                }
            })
        };
        Self { log, task }
    }

    fn entries(&self) -> Vec<(Duration, T)> {
        self.log.lock().unwrap().clone()
    }
}

impl<T> Drop for Recorder<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One observed version of a feature.
#[derive(Clone, Debug)]
struct FeatureSeen {
    rv: u64,
    name: String,
    phase: Option<Phase>,
}

fn record_features(api: &Api<PremiumFeature>) -> Recorder<FeatureSeen> {
    Recorder::start(api.clone(), |f: &PremiumFeature| FeatureSeen {
        rv: rv(f),
        name: f.name_any(),
        phase: phase(Some(f)),
    })
}

/// The phases a feature went through, as the watch saw them, without repeats.
fn phase_changes(log: &[(Duration, FeatureSeen)], name: &str) -> Vec<Phase> {
    let mut changes: Vec<Phase> = Vec::new();
    for (_, seen) in log.iter().filter(|(_, s)| s.name == name) {
        if let Some(p) = seen.phase
            && changes.last() != Some(&p)
        {
            changes.push(p);
        }
    }
    changes
}

fn policy_yaml(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: premium.dev/v1alpha1\nkind: PremiumPolicy\nmetadata: {{name: {name}}}\nspec:\n  selector: {{matchLabels: {{tier: premium}}}}\n{spec}\n---\n"
    )
}

/// Applies a policy and waits until the operator has reconciled it, so features applied next
/// are judged with it.
async fn apply_policy(ns: &TestNamespace, name: &str, spec: &str) -> anyhow::Result<()> {
    apply_yaml(ns.client(), ns.name(), &policy_yaml(name, spec)).await?;
    let policies: Api<PremiumPolicy> = ns.api();
    wait_for(
        &policies,
        name,
        |p: Option<&PremiumPolicy>| {
            p.and_then(|p| p.status.as_ref())
                .is_some_and(|s| s.observed_generation.is_some())
        },
        DEFAULT_TIMEOUT,
    )
    .await?;
    Ok(())
}

/// Waits until `name` reports `want`, or fails at once with the status when it settles in
/// `instead` (a phase the test rules out).
async fn wait_phase_not(
    api: &Api<PremiumFeature>,
    name: &str,
    want: Phase,
    instead: &[Phase],
) -> anyhow::Result<PremiumFeature> {
    let instead = instead.to_vec();
    let f = wait_for(
        api,
        name,
        move |f: Option<&PremiumFeature>| {
            phase(f).is_some_and(|p| p == want || instead.contains(&p))
        },
        DEFAULT_TIMEOUT,
    )
    .await?;
    ensure!(
        phase(Some(&f)) == Some(want),
        "{name} reached {:?} instead of {want}; status: {}",
        phase(Some(&f)),
        serde_json::to_string(&f.status)?
    );
    Ok(f)
}

/// Waits for the feature Deployment's `spec.replicas` to satisfy `want`.
async fn wait_replicas(
    deployments: &Api<Deployment>,
    name: &str,
    want: impl Fn(i32) -> bool + Send + 'static,
) -> anyhow::Result<Deployment> {
    wait_for(
        deployments,
        name,
        move |d: Option<&Deployment>| d.and_then(|d| d.spec.as_ref()?.replicas).is_some_and(&want),
        DEFAULT_TIMEOUT,
    )
    .await
}

async fn feature_pods(pods: &Api<Pod>, feature: &str) -> anyhow::Result<Vec<Pod>> {
    Ok(pods
        .list(&ListParams::default().labels(&format!("{FEATURE_LABEL}={feature}")))
        .await?
        .items)
}

/// A feature whose pods never become Ready reaches `Stalled=True`, reason `StartupTimeout`, once
/// its `spec.startupTimeout` has passed, and not before.
///
/// Fails if the pod turns Ready after all (the KWOK stage does not hold it: the wait sees
/// `Ready` and says so), if the operator never gives up (the wait times out showing the last
/// status), or if it gives up before the timeout.
#[tokio::test]
async fn a_feature_that_never_becomes_ready_stalls_with_startup_timeout() -> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "never-ready").await?;
    let features: Api<PremiumFeature> = ns.api();
    let pods: Api<Pod> = ns.api();
    let operator = Operator::start(Some(ns.name()), &[])?;
    let spec = format!("{}  startupTimeout: 10s", never_ready_spec());
    apply_yaml(&client, ns.name(), &feature_yaml("stuck", &[], &spec)).await?;

    // The mark works: the feature's pod runs, and is not Ready.
    eventually("a running pod of stuck", DEFAULT_TIMEOUT, || {
        let pods = pods.clone();
        async move {
            let list = feature_pods(&pods, "stuck").await?;
            Ok(list.iter().any(pod_running).then_some(()))
        }
    })
    .await?;

    let stalled = wait_phase_not(&features, "stuck", Phase::Failed, &[Phase::Ready]).await?;
    assert_eq!(
        cond_of(&stalled, cond::STALLED),
        ("True", reason::STARTUP_TIMEOUT)
    );
    assert_eq!(
        cond_of(&stalled, cond::READY),
        ("False", reason::STARTUP_TIMEOUT)
    );
    let status = stalled.status.clone().context("status")?;
    let started = status
        .started_at
        .context("startedAt of a started feature")?;
    let gave_up = &condition(&stalled, cond::STALLED)
        .context("Stalled")?
        .last_transition_time;
    // Whole seconds on both sides: one second of rounding.
    let waited = gave_up.0.as_second() - started.0.as_second();
    assert!(
        waited >= 9,
        "stalled {waited} s after it started, before its 10 s startupTimeout"
    );
    let unready = feature_pods(&pods, "stuck").await?;
    assert!(
        !unready.is_empty() && !unready.iter().any(pod_ready),
        "the pod stays unready throughout: {unready:?}"
    );
    report(
        AREA,
        "start-up timeout",
        "ok",
        &format!("Stalled/StartupTimeout {waited} s after the start (startupTimeout 10s)"),
    );
    finish(ns, operator).await
}

/// With `startup.maxConcurrent: 2`, a watch over the whole start-up of 8 independent features
/// never sees more than 2 of them `Starting` at once. Their pods never become Ready, so each
/// holds its slot until its start-up timeout (10 s) and is `Starting` from the 5 s mark on (a
/// shorter start is not written as a step of its own): a throttle that let more through would
/// show more than 2 Starting features at once.
#[tokio::test]
async fn no_more_than_max_concurrent_features_are_starting_at_once() -> anyhow::Result<()> {
    const SLOTS: usize = 2;
    const FEATURES: usize = 8;
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "slots").await?;
    let features: Api<PremiumFeature> = ns.api();
    let operator = Operator::start(Some(ns.name()), &[])?;
    apply_policy(
        &ns,
        "throttle",
        &format!("  startup: {{maxConcurrent: {SLOTS}}}"),
    )
    .await?;
    let recorder = record_features(&features);
    let spec = format!("{}  startupTimeout: 10s", never_ready_spec());
    let names: Vec<String> = (0..FEATURES).map(|i| format!("f{i}")).collect();
    let manifests: String = names.iter().map(|n| feature_yaml(n, &[], &spec)).collect();
    apply_yaml(&client, ns.name(), &manifests).await?;

    // Each start lasts 10 s and two run at a time: four rounds.
    eventually(
        "every feature to time out",
        Duration::from_secs(180),
        || {
            let features = features.clone();
            async move {
                let list = features.list(&ListParams::default()).await?.items;
                let done = list
                    .iter()
                    .filter(|f| cond_of(f, cond::STALLED) == ("True", reason::STARTUP_TIMEOUT))
                    .count();
                Ok((done == FEATURES).then_some(()))
            }
        },
    )
    .await?;

    let mut phases: BTreeMap<String, Phase> = BTreeMap::new();
    let mut history: Vec<(Duration, BTreeSet<String>)> = Vec::new();
    let mut ever_starting: BTreeSet<String> = BTreeSet::new();
    for (at, seen) in recorder.entries() {
        let Some(p) = seen.phase else { continue };
        phases.insert(seen.name.clone(), p);
        let starting: BTreeSet<String> = phases
            .iter()
            .filter(|(_, p)| **p == Phase::Starting)
            .map(|(n, _)| n.clone())
            .collect();
        ever_starting.extend(starting.iter().cloned());
        if history.last().map(|(_, s)| s) != Some(&starting) {
            history.push((at, starting));
        }
    }
    let (max_at, max_set) = history
        .iter()
        .max_by_key(|(_, s)| s.len())
        .cloned()
        .unwrap_or_default();
    let shown: Vec<String> = history
        .iter()
        .map(|(at, s)| format!("{:.1}s {s:?}", at.as_secs_f64()))
        .collect();
    assert!(
        max_set.len() <= SLOTS,
        "{} features Starting at once at {:.1}s ({max_set:?}), maxConcurrent {SLOTS}; Starting sets seen: {shown:#?}",
        max_set.len(),
        max_at.as_secs_f64()
    );
    // The watch could see a violation: both slots were in use at some moment, and every
    // feature went through a start.
    assert_eq!(
        max_set.len(),
        SLOTS,
        "never two Starting at once; Starting sets seen: {shown:#?}"
    );
    assert_eq!(
        ever_starting.len(),
        FEATURES,
        "features seen Starting: {ever_starting:?}"
    );
    report(
        AREA,
        "startup.maxConcurrent",
        "ok",
        &format!(
            "{FEATURES} features, maxConcurrent {SLOTS}: at most {} Starting at once over {} observed sets",
            max_set.len(),
            history.len()
        ),
    );
    drop(recorder);
    finish(ns, operator).await
}

/// An optional dependency that gave up (Stalled, here by its start-up timeout) lets its
/// dependents start at once: the dependent's own timeout is 10 minutes, so had it waited for
/// that, the wait for `Degraded` would time out. It runs `Degraded` with reason
/// `OptionalDependencyUnavailable` while the dependency stays Stalled.
#[tokio::test]
async fn a_stalled_optional_dependency_lets_its_dependents_start_at_once() -> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "optional-stalled").await?;
    let features: Api<PremiumFeature> = ns.api();
    let deployments: Api<Deployment> = ns.api();
    let operator = Operator::start(Some(ns.name()), &[])?;
    let recorder = record_features(&features);
    let manifests = [
        feature_yaml(
            "skill-exchange",
            &[],
            &format!("{}  startupTimeout: 5s", never_ready_spec()),
        ),
        feature_yaml("aika", &["skill-exchange?"], "  startupTimeout: 10m"),
    ]
    .concat();
    apply_yaml(&client, ns.name(), &manifests).await?;

    let aika = wait_phase_not(&features, "aika", Phase::Degraded, &[Phase::Ready]).await?;
    assert_eq!(
        cond_of(&aika, cond::DEGRADED),
        ("True", reason::OPTIONAL_DEPENDENCY_UNAVAILABLE)
    );
    let message = &condition(&aika, cond::DEGRADED)
        .context("Degraded")?
        .message;
    assert!(message.contains("skill-exchange"), "{message}");
    assert_eq!(cond_of(&aika, cond::READY).0, "True", "it serves");
    let d = deployments.get("aika").await?;
    assert_eq!(d.spec.and_then(|s| s.replicas), Some(1));

    let dependency = features.get("skill-exchange").await?;
    assert_eq!(
        (
            phase(Some(&dependency)),
            cond_of(&dependency, cond::STALLED)
        ),
        (Some(Phase::Failed), ("True", reason::STARTUP_TIMEOUT)),
        "the dependency stays Stalled"
    );
    // The dependent waited for it first, and started only once it had stalled.
    let log = recorder.entries();
    let first = |name: &str, p: Phase| {
        log.iter()
            .find(|(_, s)| s.name == name && s.phase == Some(p))
            .map(|(at, s)| (*at, s.rv))
    };
    let waited = first("aika", Phase::WaitingForDependencies);
    let stalled = first("skill-exchange", Phase::Failed).context("skill-exchange Failed")?;
    let started = first("aika", Phase::Degraded).context("aika Degraded")?;
    assert!(
        waited.is_some(),
        "aika was never held for its optional dependency: {:?}",
        phase_changes(&log, "aika")
    );
    assert!(
        stalled.1 < started.1,
        "aika started (rv {}) before skill-exchange stalled (rv {})",
        started.1,
        stalled.1
    );
    report(
        AREA,
        "stalled optional dependency",
        "ok",
        &format!(
            "dependent Degraded/OptionalDependencyUnavailable {:.1} s after the dependency stalled (own timeout 10m)",
            started.0.saturating_sub(stalled.0).as_secs_f64()
        ),
    );
    drop(recorder);
    finish(ns, operator).await
}

/// While a feature is gated (a required dependency missing) there is no HPA for it, also after
/// a policy change that reconciles it again during the gate; once the gate opens its HPA is
/// created, after the dependency turned Ready. A watch over every HPA of the namespace sees any
/// HPA that existed even briefly.
#[tokio::test]
async fn no_hpa_exists_while_a_feature_is_gated() -> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "hpa-gate").await?;
    let features: Api<PremiumFeature> = ns.api();
    let deployments: Api<Deployment> = ns.api();
    let hpas: Api<HorizontalPodAutoscaler> = ns.api();
    let operator = Operator::start(Some(ns.name()), &[])?;
    let hpa_log = Recorder::start(hpas.clone(), |h: &HorizontalPodAutoscaler| {
        (rv(h), h.name_any())
    });
    let recorder = record_features(&features);

    apply_yaml(&client, ns.name(), &feature_yaml("aika", &["catalog"], "")).await?;
    wait_phase_not(&features, "aika", Phase::WaitingForDependencies, &[]).await?;
    wait_replicas(&deployments, "aika", |r| r == 0).await?;
    // A policy with pool defaults reconciles the gated feature again.
    apply_policy(
        &ns,
        "pool",
        "  pool: {defaults: {minReplicas: 1, maxReplicas: 3}}",
    )
    .await?;
    wait_for(
        &features,
        "aika",
        |f: Option<&PremiumFeature>| {
            f.and_then(|f| f.status.as_ref())
                .is_some_and(|s| s.policies.iter().any(|p| p == "pool"))
        },
        DEFAULT_TIMEOUT,
    )
    .await?;
    let gated = features.get("aika").await?;
    assert_eq!(phase(Some(&gated)), Some(Phase::WaitingForDependencies));
    let during_gate = hpa_log.entries();
    assert!(
        during_gate.is_empty(),
        "HPAs seen while aika was gated: {during_gate:?}"
    );
    assert!(hpas.get_opt("aika").await?.is_none());

    apply_yaml(&client, ns.name(), &feature_yaml("catalog", &[], "")).await?;
    let hpa = wait_for(
        &hpas,
        "aika",
        |h: Option<&HorizontalPodAutoscaler>| h.is_some(),
        DEFAULT_TIMEOUT,
    )
    .await?;
    assert_eq!(hpa.spec.map(|s| s.max_replicas), Some(3));
    wait_phase_not(&features, "aika", Phase::Ready, &[]).await?;

    let features_log = recorder.entries();
    let last_gated = features_log
        .iter()
        .filter(|(_, s)| s.name == "aika" && s.phase == Some(Phase::WaitingForDependencies))
        .map(|(_, s)| s.rv)
        .max()
        .context("aika seen gated")?;
    let catalog_ready = features_log
        .iter()
        .find(|(_, s)| s.name == "catalog" && s.phase == Some(Phase::Ready))
        .map(|(_, s)| s.rv)
        .context("catalog seen Ready")?;
    let first_hpa = hpa_log
        .entries()
        .iter()
        .find(|(_, (_, n))| n == "aika")
        .map(|(at, (rv, _))| (*at, *rv))
        .context("aika's HPA seen")?;
    assert!(
        first_hpa.1 > catalog_ready,
        "aika's HPA (rv {}) came before its dependency was Ready (rv {catalog_ready})",
        first_hpa.1
    );
    assert!(
        first_hpa.1 > last_gated,
        "aika's HPA (rv {}) existed while aika was still reported gated (rv {last_gated})",
        first_hpa.1
    );
    report(
        AREA,
        "no HPA while gated",
        "ok",
        "0 HPAs during the gate (and a policy change in it); HPA created after the dependency's Ready",
    );
    drop((hpa_log, recorder));
    finish(ns, operator).await
}

/// `spec.suspend: true` turns the feature `Suspended` (phase and condition reasons), scales its
/// Deployment to zero and removes its HPA; taking the flag away brings all of it back.
#[tokio::test]
async fn suspend_scales_a_feature_to_zero_and_back() -> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "suspend").await?;
    let features: Api<PremiumFeature> = ns.api();
    let deployments: Api<Deployment> = ns.api();
    let hpas: Api<HorizontalPodAutoscaler> = ns.api();
    let pods: Api<Pod> = ns.api();
    let operator = Operator::start(Some(ns.name()), &[])?;
    apply_yaml(&client, ns.name(), &feature_yaml("catalog", &[], "")).await?;
    wait_phase_not(&features, "catalog", Phase::Ready, &[]).await?;
    wait_for(
        &hpas,
        "catalog",
        |h: Option<&HorizontalPodAutoscaler>| h.is_some(),
        DEFAULT_TIMEOUT,
    )
    .await?;

    apply_yaml(
        &client,
        ns.name(),
        &feature_yaml("catalog", &[], "  suspend: true"),
    )
    .await?;
    let suspended = wait_phase_not(&features, "catalog", Phase::Suspended, &[]).await?;
    assert_eq!(
        cond_of(&suspended, cond::READY),
        ("False", reason::SUSPENDED)
    );
    assert_eq!(
        cond_of(&suspended, cond::RECONCILING),
        ("False", reason::SUSPENDED)
    );
    assert_eq!(cond_of(&suspended, cond::STALLED).0, "False");
    wait_replicas(&deployments, "catalog", |r| r == 0).await?;
    wait_for_deleted(&hpas, "catalog", DEFAULT_TIMEOUT).await?;
    eventually("catalog's pods to go", DEFAULT_TIMEOUT, || {
        let pods = pods.clone();
        async move {
            Ok(feature_pods(&pods, "catalog")
                .await?
                .is_empty()
                .then_some(()))
        }
    })
    .await?;

    apply_yaml(&client, ns.name(), &feature_yaml("catalog", &[], "")).await?;
    let back = wait_phase_not(&features, "catalog", Phase::Ready, &[]).await?;
    assert_eq!(cond_of(&back, cond::READY), ("True", reason::AVAILABLE));
    let d = wait_replicas(&deployments, "catalog", |r| r >= 1).await?;
    assert_ne!(
        d.spec.and_then(|s| s.paused),
        Some(true),
        "running, not paused"
    );
    wait_for(
        &hpas,
        "catalog",
        |h: Option<&HorizontalPodAutoscaler>| h.is_some(),
        DEFAULT_TIMEOUT,
    )
    .await?;
    report(
        AREA,
        "spec.suspend",
        "ok",
        "Suspended, 0 replicas, HPA removed; unsuspended: Ready, replicas and HPA back",
    );
    finish(ns, operator).await
}

/// A Ready dependency whose pods stop being Ready (the KWOK test label on its running pods)
/// turns its dependent `Degraded` with reason `DependencyUnhealthy`; the dependent keeps
/// running. Once the pods are Ready again both return to Ready.
#[tokio::test]
async fn a_dependency_that_loses_its_pods_degrades_its_dependents_until_it_recovers()
-> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "unhealthy-dep").await?;
    let features: Api<PremiumFeature> = ns.api();
    let deployments: Api<Deployment> = ns.api();
    let pods: Api<Pod> = ns.api();
    let operator = Operator::start(Some(ns.name()), &[])?;
    let manifests = [
        feature_yaml("catalog", &[], ""),
        feature_yaml("aika", &["catalog"], ""),
    ]
    .concat();
    apply_yaml(&client, ns.name(), &manifests).await?;
    wait_phase_not(&features, "catalog", Phase::Ready, &[]).await?;
    wait_phase_not(&features, "aika", Phase::Ready, &[]).await?;

    let marked = mark_feature_pods(&pods, "catalog", true).await?;
    ensure!(marked > 0, "catalog has no pods to take away");
    let lost = wait_phase_not(&features, "catalog", Phase::Degraded, &[]).await?;
    assert_eq!(
        cond_of(&lost, cond::DEGRADED),
        ("True", reason::UNAVAILABLE)
    );
    let aika = wait_phase_not(&features, "aika", Phase::Degraded, &[]).await?;
    assert_eq!(
        cond_of(&aika, cond::DEGRADED),
        ("True", reason::DEPENDENCY_UNHEALTHY)
    );
    let message = &condition(&aika, cond::DEGRADED)
        .context("Degraded")?
        .message;
    assert!(message.contains("catalog"), "{message}");
    assert_eq!(
        cond_of(&aika, cond::READY).0,
        "True",
        "the dependent itself still serves"
    );
    let d = deployments.get("aika").await?;
    assert_eq!(
        d.spec.and_then(|s| s.replicas),
        Some(1),
        "the dependent is not stopped"
    );

    mark_feature_pods(&pods, "catalog", false).await?;
    wait_phase_not(&features, "catalog", Phase::Ready, &[]).await?;
    let healed = wait_phase_not(&features, "aika", Phase::Ready, &[]).await?;
    assert_eq!(cond_of(&healed, cond::DEGRADED), ("False", reason::HEALTHY));
    report(
        AREA,
        "dependency loses its pods",
        "ok",
        "dependent Degraded/DependencyUnhealthy while the dependency was unavailable, Ready after",
    );
    finish(ns, operator).await
}

/// Touches a feature's metadata (no spec change): a watch event that makes the operator
/// reconcile it with nothing new to say.
async fn touch(features: &Api<PremiumFeature>, name: &str, round: usize) -> anyhow::Result<()> {
    let patch = serde_json::json!({"metadata": {"annotations": {"premium.dev/test-touch": round.to_string()}}});
    features
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Waits until the operator has run `more` feature reconciles beyond `since`.
async fn reconciles_after(operator: &Operator, since: f64, more: f64) -> anyhow::Result<f64> {
    const METRIC: &str = "premium_reconciles_total{controller=\"feature\"}";
    eventually(
        "the operator to reconcile",
        DEFAULT_TIMEOUT,
        || async move {
            let n = operator.metric(METRIC)?;
            Ok((n >= since + more).then_some(n))
        },
    )
    .await
}

/// Over two features' lives (created, one gated on the other, both Ready; a spec change that
/// rolls one out and keeps it Ready; the dependency's pods turned unready and back, which
/// degrades both; touches that reconcile both with nothing new; an operator restart), each
/// feature's Events are exactly its transitions into or out of trouble (Degraded, Failed): no
/// Event on the way up to Ready, and no reason repeats without a transition between. An
/// operator that recorded an Event per reconcile would show `Ready` several times; one that
/// recorded every phase change would show `Starting`.
#[tokio::test]
async fn events_are_recorded_on_transitions_only() -> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "events").await?;
    let features: Api<PremiumFeature> = ns.api();
    let events: Api<Event> = ns.api();
    let mut operator = Operator::start(Some(ns.name()), &[])?;
    operator.wait_serving(DEFAULT_TIMEOUT).await?;
    let recorder = record_features(&features);
    let manifests = [
        feature_yaml("aika", &["catalog"], ""),
        feature_yaml("catalog", &[], ""),
    ]
    .concat();
    apply_yaml(&client, ns.name(), &manifests).await?;
    wait_phase_not(&features, "catalog", Phase::Ready, &[]).await?;
    wait_phase_not(&features, "aika", Phase::Ready, &[]).await?;

    // A spec change that keeps catalog Ready: a new env var rolls its pods.
    apply_yaml(
        &client,
        ns.name(),
        &feature_yaml("catalog", &[], "  env: [{name: MODE, value: changed}]"),
    )
    .await?;
    wait_for(
        &features,
        "catalog",
        |f: Option<&PremiumFeature>| {
            f.is_some_and(|f| {
                phase(Some(f)) == Some(Phase::Ready)
                    && f.status.as_ref().and_then(|s| s.observed_generation)
                        == f.metadata.generation
                    && f.metadata.generation == Some(2)
            })
        },
        DEFAULT_TIMEOUT,
    )
    .await?;

    // Trouble and its end: catalog's pods unready degrade catalog and aika, then heal.
    let pods: Api<Pod> = ns.api();
    ensure!(
        mark_feature_pods(&pods, "catalog", true).await? > 0,
        "catalog has no pods to take away"
    );
    wait_phase_not(&features, "catalog", Phase::Degraded, &[]).await?;
    wait_phase_not(&features, "aika", Phase::Degraded, &[]).await?;
    mark_feature_pods(&pods, "catalog", false).await?;
    wait_phase_not(&features, "catalog", Phase::Ready, &[]).await?;
    wait_phase_not(&features, "aika", Phase::Ready, &[]).await?;

    // Resyncs with nothing new: three touches of each feature, then an operator restart.
    let mut count = reconciles_after(&operator, 0.0, 0.0).await?;
    for round in 0..3 {
        touch(&features, "catalog", round).await?;
        touch(&features, "aika", round).await?;
        count = reconciles_after(&operator, count, 2.0).await?;
    }
    operator.kill();
    let operator = Operator::start(Some(ns.name()), &[])?;
    operator.wait_serving(DEFAULT_TIMEOUT).await?;
    reconciles_after(&operator, 0.0, 2.0).await?;
    for name in ["catalog", "aika"] {
        let f = features.get(name).await?;
        ensure!(
            phase(Some(&f)) == Some(Phase::Ready),
            "{name} left Ready: {:?}",
            f.status
        );
    }

    let log = recorder.entries();
    let recorded = events.list(&ListParams::default()).await?.items;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for name in ["catalog", "aika"] {
        let mut mine: Vec<&Event> = recorded
            .iter()
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some("PremiumFeature") && r.name.as_deref() == Some(name)
                })
            })
            .collect();
        mine.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        let reasons: Vec<String> = mine
            .iter()
            .map(|e| e.reason.clone().unwrap_or_default())
            .collect();
        for r in &reasons {
            *counts.entry(r.clone()).or_default() += 1;
        }
        for pair in reasons.windows(2) {
            if pair[0] == pair[1] {
                bail!(
                    "{name}: Event {} twice in a row without a transition; Events {reasons:?}, phases {:?}",
                    pair[0],
                    phase_changes(&log, name)
                );
            }
        }
        // Every transition into or out of trouble has its Event, and nothing else has one.
        let trouble = |p: &Phase| matches!(p, Phase::Degraded | Phase::Failed);
        let phases = phase_changes(&log, name);
        let transitions: Vec<String> = phases
            .windows(2)
            .filter(|pair| trouble(&pair[0]) || trouble(&pair[1]))
            .map(|pair| pair[1].to_string())
            .collect();
        assert_eq!(
            reasons, transitions,
            "{name}: Events (left) against the transitions into or out of trouble a watch saw (right); phases {phases:?}"
        );
    }
    // Both features degraded and healed: an operator that recorded no Events at all would pass
    // the comparison above only if the watch saw no such transition either.
    ensure!(
        counts.get("Degraded") == Some(&2) && counts.get("Ready") == Some(&2) && counts.len() == 2,
        "want one Degraded and one Ready Event per feature and nothing else, got {counts:?}"
    );
    report(
        AREA,
        "Events on transitions only",
        "ok",
        &format!(
            "Events by reason over create, spec change, unready pods and back, 6 touches and a restart: {counts:?}"
        ),
    );
    drop(recorder);
    finish(ns, operator).await
}
