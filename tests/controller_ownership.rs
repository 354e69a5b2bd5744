//! What the operator owns and how it lets go: it never takes over a same-named object,
//! restarts features that stay unhealthy, and tears dependents down before dependencies.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, ResourceQuota};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use premium_operator::api::{Phase, PremiumFeature};
use support::operator::{Operator, apply_yaml, ensure_crds, feature_yaml, finish, wait_phase};
use support::{DEFAULT_TIMEOUT, TestNamespace, client, eventually, wait_for};

#[tokio::test]
async fn a_same_named_object_of_someone_else_is_never_touched() -> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "conflict").await?;
    let features: Api<PremiumFeature> = ns.api();
    let deployments: Api<Deployment> = ns.api();
    let theirs: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "aika", "labels": {"team": "someone-else"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "theirs"}},
            "template": {
                "metadata": {"labels": {"app": "theirs"}},
                "spec": {"containers": [{"name": "c", "image": "example.org/theirs:1"}]}
            }
        }
    }))?;
    let created = deployments.create(&PostParams::default(), &theirs).await?;
    let operator = Operator::start(Some(ns.name()), &[])?;
    apply_yaml(&client, ns.name(), &feature_yaml("aika", &[], "")).await?;

    let f = wait_phase(&features, "aika", Phase::Failed).await?;
    let stalled = f
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Stalled")
        .unwrap();
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "NameConflict")
    );
    assert!(
        stalled.message.contains("Deployment") && stalled.message.contains("not owned"),
        "{}",
        stalled.message
    );
    // Give the operator time to misbehave, then check nothing moved.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now = deployments.get("aika").await?;
    // Their own controllers update its status; its spec and metadata must be as they left them.
    assert_eq!(
        now.metadata.generation, created.metadata.generation,
        "their Deployment's spec was modified"
    );
    assert_eq!(now.labels(), created.labels());
    assert!(now.owner_references().is_empty());
    let managers: Vec<String> = now
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        !managers.iter().any(|m| m.contains("premium-operator")),
        "managers: {managers:?}"
    );
    deployments.delete("aika", &DeleteParams::default()).await?;
    finish(ns, operator).await
}

#[tokio::test]
async fn a_feature_that_stays_unavailable_is_restarted_within_its_hourly_limit()
-> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "recovery").await?;
    let features: Api<PremiumFeature> = ns.api();
    let deployments: Api<Deployment> = ns.api();
    let pods: Api<Pod> = ns.api();
    let quotas: Api<ResourceQuota> = ns.api();
    let events: Api<Event> = ns.api();
    let operator = Operator::start(Some(ns.name()), &[])?;
    let policy = "apiVersion: premium.dev/v1alpha1\nkind: PremiumPolicy\nmetadata: {name: heal}\nspec:\n  selector: {}\n  recovery: {restartAfter: 2s, maxRestartsPerHour: 2}\n---\n";
    apply_yaml(
        &client,
        ns.name(),
        &(policy.to_string() + &feature_yaml("catalog", &[], "")),
    )
    .await?;
    wait_phase(&features, "catalog", Phase::Ready).await?;

    // No new pod may be created in the namespace, and the running one goes: the feature loses
    // availability and nothing the operator does can bring it back.
    let quota: ResourceQuota = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "no-pods"},
        "spec": {"hard": {"pods": "0"}}
    }))?;
    quotas.create(&PostParams::default(), &quota).await?;
    eventually("the quota to be counted", DEFAULT_TIMEOUT, || {
        let quotas = quotas.clone();
        async move {
            Ok(quotas
                .get("no-pods")
                .await?
                .status
                .and_then(|s| s.used)
                .map(|_| ()))
        }
    })
    .await?;
    pods.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;

    let degraded = wait_phase(&features, "catalog", Phase::Degraded).await?;
    let cond = degraded
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(cond.reason, "Unavailable");

    let restarted = wait_for(
        &features,
        "catalog",
        |f: Option<&PremiumFeature>| {
            f.and_then(|f| f.status.as_ref())
                .is_some_and(|s| s.recent_restarts.len() == 2)
        },
        DEFAULT_TIMEOUT,
    )
    .await?;
    let d = deployments.get("catalog").await?;
    let annotations = d
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap_or_default();
    assert!(
        annotations.contains_key("premium.dev/restartedAt"),
        "rollout restart annotation"
    );
    // The hourly limit holds: wait longer than two more restart periods.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let later = features.get("catalog").await?;
    assert_eq!(
        later.status.unwrap().recent_restarts.len(),
        2,
        "maxRestartsPerHour is 2"
    );
    assert_eq!(restarted.status.unwrap().recent_restarts.len(), 2);
    let recorded = events.list(&ListParams::default()).await?;
    // One new Event object per restart (the operator records no series).
    let restarts = recorded
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("RecoveryRestart"))
        .inspect(|e| assert!(e.series.is_none(), "{e:?}"))
        .count();
    assert_eq!(restarts, 2, "one Event per restart");

    // Lift the quota: the feature heals.
    quotas.delete("no-pods", &DeleteParams::default()).await?;
    wait_phase(&features, "catalog", Phase::Ready).await?;
    finish(ns, operator).await
}

#[tokio::test]
async fn dependents_are_torn_down_before_their_dependencies() -> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "teardown").await?;
    let features: Api<PremiumFeature> = ns.api();
    let deployments: Api<Deployment> = ns.api();
    let operator = Operator::start(Some(ns.name()), &[])?;
    let manifests = [
        feature_yaml("catalog", &[], ""),
        feature_yaml("soundcheck", &["catalog"], ""),
        feature_yaml("aika", &["soundcheck", "catalog"], ""),
    ]
    .concat();
    apply_yaml(&client, ns.name(), &manifests).await?;
    for f in ["catalog", "soundcheck", "aika"] {
        wait_phase(&features, f, Phase::Ready).await?;
    }

    let gone: Arc<Mutex<Vec<String>>> = Arc::default();
    let watch = {
        let gone = gone.clone();
        let api = deployments.clone();
        tokio::spawn(async move {
            let mut s = std::pin::pin!(watcher(api, Default::default()));
            while let Some(Ok(ev)) = s.next().await {
                if let watcher::Event::Delete(d) = ev {
                    gone.lock().unwrap().push(d.name_any());
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // All at once, as `kubectl delete -f dir/` or a GitOps prune does.
    features
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    eventually("every Deployment to be deleted", DEFAULT_TIMEOUT, || {
        let gone = gone.clone();
        async move { Ok((gone.lock().unwrap().len() == 3).then_some(())) }
    })
    .await?;
    watch.abort();
    let order = gone.lock().unwrap().clone();
    assert_eq!(
        order,
        vec!["aika", "soundcheck", "catalog"],
        "dependents first"
    );
    finish(ns, operator).await
}
