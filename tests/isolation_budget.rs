//! One feature must not hurt the others through a shared budget or the start-up slots, on the
//! real control plane: a feature whose minimum can never fit is skipped (it waits, and says
//! so) instead of stopping every feature ranked after it, and a start-up slot goes back when its
//! holder loses its place in the budget, so the feature that took that place can start.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use premium_operator::api::{Phase, PremiumFeature, PremiumPolicy};
use support::cluster::report;
use support::operator::{Operator, apply_yaml, ensure_crds, feature_yaml, finish, phase};
use support::{DEFAULT_TIMEOUT, TestNamespace, client, wait_for};

fn policy(name: &str, body: &str) -> String {
    format!(
        "apiVersion: premium.dev/v1alpha1\nkind: PremiumPolicy\nmetadata: {{name: {name}}}\nspec:\n  selector: {{matchLabels: {{tier: premium}}}}\n{body}\n---\n"
    )
}

fn condition<'a>(f: &'a PremiumFeature, ty: &str) -> Option<&'a Condition> {
    f.status.as_ref()?.conditions.iter().find(|c| c.type_ == ty)
}

fn ready_reason(f: Option<&PremiumFeature>) -> Option<String> {
    condition(f?, "Ready").map(|c| c.reason.clone())
}

async fn wait_phase_for(
    api: &Api<PremiumFeature>,
    name: &str,
    want: Phase,
    timeout: Duration,
) -> anyhow::Result<PremiumFeature> {
    wait_for(
        api,
        name,
        move |f: Option<&PremiumFeature>| phase(f) == Some(want),
        timeout,
    )
    .await
}

/// Waits until the feature waits for the budget (phase Pending, Ready reason BudgetExceeded).
async fn wait_budget_exceeded(
    api: &Api<PremiumFeature>,
    name: &str,
) -> anyhow::Result<PremiumFeature> {
    wait_for(
        api,
        name,
        |f: Option<&PremiumFeature>| {
            phase(f) == Some(Phase::Pending) && ready_reason(f).as_deref() == Some("BudgetExceeded")
        },
        DEFAULT_TIMEOUT,
    )
    .await
}

/// `spec.replicas` of every Deployment of the namespace as the watch reported it, in order.
type ReplicaLog = Arc<Mutex<Vec<(String, i32)>>>;

/// Records the replicas of every Deployment event, so a scale-down that was put back before the
/// end of the test is still seen.
fn record_replicas(api: Api<Deployment>) -> (ReplicaLog, tokio::task::JoinHandle<()>) {
    let seen: ReplicaLog = Arc::default();
    let log = seen.clone();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher(api, Default::default()).applied_objects());
        while let Some(Ok(d)) = stream.next().await {
            let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
            log.lock()
                .expect("the replica log")
                .push((d.name_any(), replicas));
        }
    });
    (seen, task)
}

async fn replicas(api: &Api<Deployment>, name: &str) -> anyhow::Result<i32> {
    let d = api.get(name).await?;
    Ok(d.spec.and_then(|s| s.replicas).unwrap_or(0))
}

#[tokio::test]
async fn a_minimum_larger_than_the_budget_stops_no_one() -> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "iso-budget").await?;
    let features: Api<PremiumFeature> = ns.api();
    let policies: Api<PremiumPolicy> = ns.api();
    let deployments: Api<Deployment> = ns.api();
    let operator = Operator::start(Some(ns.name()), &[])?;

    let manifests = [
        policy(
            "shared",
            "  pool:\n    defaults: {minReplicas: 1, maxReplicas: 2}\n    budget: {maxReplicas: 4}",
        ),
        feature_yaml("a", &[], ""),
        feature_yaml("b", &[], ""),
    ]
    .concat();
    apply_yaml(&client, ns.name(), &manifests).await?;
    for name in ["a", "b"] {
        wait_phase_for(&features, name, Phase::Ready, DEFAULT_TIMEOUT).await?;
    }
    let before: BTreeMap<&str, i32> = BTreeMap::from([
        ("a", replicas(&deployments, "a").await?),
        ("b", replicas(&deployments, "b").await?),
    ]);
    let (seen, recorder) = record_replicas(deployments.clone());

    // Level 0 like the others and the heaviest weight, so it ranks first; its minimum alone is
    // more than the whole budget.
    let applied = Instant::now();
    apply_yaml(
        &client,
        ns.name(),
        &feature_yaml(
            "big",
            &[],
            "  pool: {minReplicas: 5, maxReplicas: 6, weight: 10}",
        ),
    )
    .await?;
    let p = wait_for(
        &policies,
        "shared",
        |p: Option<&PremiumPolicy>| {
            p.and_then(|p| p.status.as_ref()?.budget.as_ref())
                .is_some_and(|b| b.waiting.iter().any(|w| w == "big"))
        },
        DEFAULT_TIMEOUT,
    )
    .await?;
    let named_after = applied.elapsed().as_secs_f64();
    let status = p.status.expect("the policy has a status");
    assert_eq!(
        status.budget.as_ref().map(|b| b.waiting.clone()),
        Some(vec!["big".to_string()]),
        "only the feature whose minimum cannot fit waits"
    );
    let exceeded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "BudgetExceeded")
        .expect("a BudgetExceeded condition");
    assert_eq!(exceeded.status, "True");
    assert!(
        exceeded
            .message
            .contains("big (minReplicas above the whole budget)"),
        "the policy names the feature: {exceeded:?}"
    );

    let big = wait_budget_exceeded(&features, "big").await?;
    let message = condition(&big, "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("policy shared") && message.contains("whole replica budget"),
        "the feature says which budget and that it can never fit: {message}"
    );
    assert_eq!(replicas(&deployments, "big").await?, 0, "big does not run");

    // A feature that fits in what is left is admitted, behind the one that cannot fit.
    let small_applied = Instant::now();
    apply_yaml(
        &client,
        ns.name(),
        &feature_yaml("small", &[], "  pool: {minReplicas: 1, maxReplicas: 1}"),
    )
    .await?;
    wait_phase_for(&features, "small", Phase::Ready, DEFAULT_TIMEOUT).await?;
    let small_ready = small_applied.elapsed().as_secs_f64();

    for name in ["a", "b"] {
        let f = features.get(name).await?;
        assert_eq!(phase(Some(&f)), Some(Phase::Ready), "{name} stays Ready");
        assert_eq!(
            replicas(&deployments, name).await?,
            before[name],
            "{name} keeps its replicas"
        );
    }
    recorder.abort();
    let scale_downs: Vec<(String, i32)> = seen
        .lock()
        .expect("the replica log")
        .iter()
        .filter(|(name, r)| before.contains_key(name.as_str()) && *r < before[name.as_str()])
        .cloned()
        .collect();
    assert!(
        scale_downs.is_empty(),
        "running features were scaled down: {scale_downs:?}"
    );
    let p = policies.get("shared").await?;
    let waiting = p
        .status
        .and_then(|s| s.budget)
        .map(|b| b.waiting)
        .unwrap_or_default();
    assert_eq!(waiting, ["big"], "small was admitted past big");

    report(
        "isolation",
        "a feature whose minReplicas exceeds the whole budget stops no one",
        "pass",
        &format!(
            "skipped and named in the policy {named_after:.2}s after apply; running features scaled down=0; later feature Ready in {small_ready:.2}s"
        ),
    );
    finish(ns, operator).await
}

#[tokio::test]
async fn a_start_slot_goes_back_when_its_holder_loses_its_budget() -> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "iso-slots").await?;
    let features: Api<PremiumFeature> = ns.api();
    let deployments: Api<Deployment> = ns.api();
    let operator = Operator::start(Some(ns.name()), &[])?;

    // One feature starts at a time; three replicas in all.
    apply_yaml(
        &client,
        ns.name(),
        &[
            policy(
                "shared",
                "  startup: {maxConcurrent: 1}\n  pool:\n    budget: {maxReplicas: 3}",
            ),
            feature_yaml(
                "first",
                &[],
                "  pool: {minReplicas: 1, maxReplicas: 2, weight: 10}",
            ),
        ]
        .concat(),
    )
    .await?;
    wait_phase_for(&features, "first", Phase::Ready, DEFAULT_TIMEOUT).await?;

    // The slot holder: its pods ask for more CPU than the node has, so it stays Starting.
    let holder = |extra: &str| {
        feature_yaml(
            "holder",
            &[],
            &format!(
                "  startupTimeout: 10m\n  resources: {{requests: {{cpu: 5k}}}}\n  pool: {{minReplicas: 2, maxReplicas: 2{extra}}}"
            ),
        )
    };
    apply_yaml(&client, ns.name(), &holder("")).await?;
    wait_phase_for(&features, "holder", Phase::Starting, DEFAULT_TIMEOUT).await?;

    // first, ranked ahead, now needs 2: the holder no longer fits and is pushed out.
    apply_yaml(
        &client,
        ns.name(),
        &feature_yaml(
            "first",
            &[],
            "  pool: {minReplicas: 2, maxReplicas: 2, weight: 10}",
        ),
    )
    .await?;
    wait_budget_exceeded(&features, "holder").await?;

    // The newcomer fits in what is left and needs the slot the holder had while starting.
    let applied = Instant::now();
    apply_yaml(
        &client,
        ns.name(),
        &feature_yaml(
            "newcomer",
            &[],
            "  pool: {minReplicas: 1, maxReplicas: 1, weight: 5}",
        ),
    )
    .await?;
    let newcomer =
        wait_phase_for(&features, "newcomer", Phase::Ready, Duration::from_secs(60)).await;
    if let Err(e) = newcomer {
        let stuck = features.get("newcomer").await?;
        anyhow::bail!(
            "{e:#}\nnewcomer's Ready condition: {:?}",
            condition(&stuck, "Ready")
        );
    }
    let started_in = applied.elapsed().as_secs_f64();

    // Everyone ends where the budget puts them: first and newcomer Ready, the holder waiting
    // for the budget with nothing running and no slot wait.
    let held = features.get("holder").await?;
    assert_eq!(phase(Some(&held)), Some(Phase::Pending));
    assert_eq!(ready_reason(Some(&held)).as_deref(), Some("BudgetExceeded"));
    assert_eq!(replicas(&deployments, "holder").await?, 0);
    wait_phase_for(&features, "first", Phase::Ready, DEFAULT_TIMEOUT).await?;
    assert_eq!(replicas(&deployments, "first").await?, 2);

    report(
        "isolation",
        "start slot given back when its holder is pushed out of the budget (maxConcurrent 1)",
        "pass",
        &format!(
            "newcomer that took the budget Ready in {started_in:.2}s; holder Pending/BudgetExceeded with 0 replicas; deadlocks=0"
        ),
    );
    finish(ns, operator).await
}
