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

/// The operator's context with empty caches: as if the watches had not yet seen anything.
fn blind_context(client: &kube::Client) -> premium_operator::controller::context::Context {
    use premium_operator::controller::context::{Context, Settings, Stores};
    use premium_operator::core::build::EventSource;
    let (features, _) = kube::runtime::reflector::store();
    let (policies, _) = kube::runtime::reflector::store();
    let (feature_tx, _) = tokio::sync::mpsc::unbounded_channel();
    let (policy_tx, _) = tokio::sync::mpsc::unbounded_channel();
    Context::new(
        client.clone(),
        Stores {
            features,
            policies,
            deployments: Default::default(),
            services: Default::default(),
            configmaps: Default::default(),
            hpas: Default::default(),
        },
        Default::default(),
        feature_tx,
        policy_tx,
        Default::default(),
        EventSource {
            controller: "premium-operator".into(),
            instance: "test".into(),
        },
        Settings {
            sidecar_image: "envoy".into(),
            field_manager: "premium-operator".into(),
            teardown_wait: Duration::from_secs(60),
        },
    )
}

/// A first write goes out unforced and without a read (the watches said the name was free).
/// When an object was created under that name in the meantime, the API server's conflict
/// makes the operator read it and decide again: someone else's is left as it was; its own
/// (written before, not yet seen by its cache) is written again.
#[tokio::test]
async fn a_first_write_that_meets_a_new_object_reads_it_and_decides_again() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::ConfigMap;
    use premium_operator::controller::apply::{Applied, apply_over};
    let client = client().await;
    let ns = TestNamespace::new(&client, "first-write").await?;
    let configmaps: Api<ConfigMap> = ns.api();
    let ctx = blind_context(&client);
    let desired = |name: &str| -> anyhow::Result<ConfigMap> {
        Ok(serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name,
                "namespace": ns.name(),
                "labels": {"app.kubernetes.io/managed-by": "premium-operator"},
            },
            "data": {"envoy.yaml": "ours"},
        }))?)
    };
    let apply = |name: &'static str| {
        let ctx = &ctx;
        let d = desired(name);
        async move {
            let d = d?;
            anyhow::Ok(apply_over(ctx, None, "ConfigMap", d.clone(), &d, "uid", |_| true).await?)
        }
    };

    // Someone else's, created since the watches looked, holding a key the operator writes.
    let theirs: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "theirs"},
        "data": {"envoy.yaml": "theirs"},
    }))?;
    configmaps.create(&PostParams::default(), &theirs).await?;
    let outcome = apply("theirs").await?;
    assert!(
        matches!(outcome, Applied::Conflict(_)),
        "someone else's object: {outcome:?}"
    );
    let after = configmaps.get("theirs").await?;
    assert_eq!(
        after
            .data
            .and_then(|d| d.get("envoy.yaml").cloned())
            .as_deref(),
        Some("theirs")
    );
    assert!(after.metadata.labels.is_none(), "{:?}", after.metadata);

    // A free name is written; written again with the cache still blind, it is the operator's
    // own object, so no conflict stops it.
    assert!(matches!(apply("free").await?, Applied::Written));
    assert!(matches!(apply("free").await?, Applied::Written));
    let ours = configmaps.get("free").await?;
    assert_eq!(
        ours.data
            .and_then(|d| d.get("envoy.yaml").cloned())
            .as_deref(),
        Some("ours")
    );
    ns.delete().await
}
