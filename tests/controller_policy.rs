//! Policies on the real control plane: a change reaches exactly the selected features' sidecar
//! ConfigMaps and HPAs without rolling pods, a listener change rolls them, and a shared budget
//! caps the HPAs.

mod support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use premium_operator::api::{Phase, PremiumFeature, PremiumPolicy};
use support::operator::{Operator, apply_yaml, ensure_crds, feature_yaml, finish};
use support::{DEFAULT_TIMEOUT, TestNamespace, client, eventually, wait_for};

fn phase(f: Option<&PremiumFeature>) -> Option<Phase> {
    f.and_then(|f| f.status.as_ref()?.phase)
}

async fn wait_ready(api: &Api<PremiumFeature>, name: &str) -> anyhow::Result<PremiumFeature> {
    wait_for(
        api,
        name,
        |f: Option<&PremiumFeature>| phase(f) == Some(Phase::Ready),
        DEFAULT_TIMEOUT,
    )
    .await
}

fn policy(name: &str, selector: &str, body: &str) -> String {
    format!(
        "apiVersion: premium.dev/v1alpha1\nkind: PremiumPolicy\nmetadata: {{name: {name}}}\nspec:\n  selector: {{matchLabels: {{{selector}}}}}\n{body}\n---\n"
    )
}

fn template_of(d: &Deployment) -> String {
    serde_json::to_string(&d.spec.as_ref().unwrap().template).unwrap()
}

#[tokio::test]
async fn policy_changes_reach_configmaps_and_hpas_without_rolling_pods() -> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "policy").await?;
    let features: Api<PremiumFeature> = ns.api();
    let configmaps: Api<ConfigMap> = ns.api();
    let hpas: Api<HorizontalPodAutoscaler> = ns.api();
    let deployments: Api<Deployment> = ns.api();
    let operator = Operator::start(Some(ns.name()), &[])?;

    let base = "  priority: 100\n  circuitBreaker: {maxConnections: 100}\n  pool: {defaults: {minReplicas: 1, maxReplicas: 3}}";
    let manifests = [
        policy("defaults", "tier: premium", base),
        feature_yaml("catalog", &[], ""),
        feature_yaml("aika", &["catalog"], ""),
    ]
    .concat();
    // A feature no policy selects, to prove a change reaches exactly the selected ones.
    let outsider = feature_yaml("outsider", &[], "").replace("tier: premium", "tier: free");
    apply_yaml(&client, ns.name(), &(manifests.clone() + &outsider)).await?;
    for f in ["catalog", "aika", "outsider"] {
        wait_ready(&features, f).await?;
    }
    let before = deployments.get("aika").await?;
    let outsider_cm = configmaps.get("outsider-sidecar").await?;
    assert!(
        configmaps.get("aika-sidecar").await?.data.unwrap()["cds.yaml"]
            .contains("maxConnections: 100")
    );
    assert_eq!(hpas.get("aika").await?.spec.unwrap().max_replicas, 3);

    // Breaker and pool change: clusters file and HPA follow, the pod template does not move.
    let changed = "  priority: 100\n  circuitBreaker: {maxConnections: 7}\n  pool: {defaults: {minReplicas: 1, maxReplicas: 5}}";
    apply_yaml(
        &client,
        ns.name(),
        &policy("defaults", "tier: premium", changed),
    )
    .await?;
    wait_for(
        &configmaps,
        "aika-sidecar",
        |cm: Option<&ConfigMap>| {
            cm.and_then(|c| c.data.as_ref())
                .is_some_and(|d| d["cds.yaml"].contains("maxConnections: 7"))
        },
        DEFAULT_TIMEOUT,
    )
    .await?;
    wait_for(
        &hpas,
        "aika",
        |h: Option<&HorizontalPodAutoscaler>| {
            h.and_then(|h| h.spec.as_ref())
                .is_some_and(|s| s.max_replicas == 5)
        },
        DEFAULT_TIMEOUT,
    )
    .await?;
    let after = deployments.get("aika").await?;
    assert_eq!(
        template_of(&before),
        template_of(&after),
        "a breaker change must not roll the pods"
    );
    assert_eq!(before.metadata.generation, after.metadata.generation);
    assert_eq!(
        configmaps
            .get("outsider-sidecar")
            .await?
            .metadata
            .resource_version,
        outsider_cm.metadata.resource_version,
        "a feature the policy does not select is not touched"
    );

    // A listener change (a new dependency) rolls the pods.
    apply_yaml(
        &client,
        ns.name(),
        &feature_yaml("aika", &["catalog", "outsider"], ""),
    )
    .await?;
    let rolled = eventually("aika's pod template to change", DEFAULT_TIMEOUT, || {
        let deployments = deployments.clone();
        let before = template_of(&before);
        async move {
            let d = deployments.get("aika").await?;
            Ok((template_of(&d) != before).then_some(d))
        }
    })
    .await?;
    assert!(template_of(&rolled).contains("PREMIUM_OUTSIDER_URL"));
    finish(ns, operator).await
}

#[tokio::test]
async fn a_shared_budget_caps_the_hpas_and_says_when_minimums_do_not_fit() -> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "budget").await?;
    let features: Api<PremiumFeature> = ns.api();
    let policies: Api<PremiumPolicy> = ns.api();
    let hpas: Api<HorizontalPodAutoscaler> = ns.api();
    let deployments: Api<Deployment> = ns.api();
    let operator = Operator::start(Some(ns.name()), &[])?;

    let body = |budget: u32| {
        format!(
            "  pool:\n    defaults: {{minReplicas: 1, maxReplicas: 4}}\n    budget: {{maxReplicas: {budget}}}"
        )
    };
    let manifests = [
        policy("shared", "tier: premium", &body(6)),
        feature_yaml("a", &[], ""),
        feature_yaml("b", &[], ""),
        feature_yaml("c", &[], "  pool: {weight: 4}"),
    ]
    .concat();
    apply_yaml(&client, ns.name(), &manifests).await?;
    for f in ["a", "b", "c"] {
        wait_ready(&features, f).await?;
    }
    let maxima = eventually("HPA maxima to fit the budget of 6", DEFAULT_TIMEOUT, || {
        let hpas = hpas.clone();
        async move {
            let mut v = Vec::new();
            for n in ["a", "b", "c"] {
                match hpas.get_opt(n).await? {
                    Some(h) => v.push(h.spec.unwrap().max_replicas),
                    None => return Ok(None),
                }
            }
            Ok((v.iter().sum::<i32>() <= 6).then_some(v))
        }
    })
    .await?;
    assert!(
        maxima.iter().all(|m| *m >= 1),
        "every feature keeps its minimum: {maxima:?}"
    );
    assert!(
        maxima[2] >= maxima[0],
        "the heavier weight gets at least as much: {maxima:?}"
    );
    let p = wait_for(
        &policies,
        "shared",
        |p: Option<&PremiumPolicy>| {
            p.and_then(|p| p.status.as_ref())
                .and_then(|s| s.budget.as_ref())
                .is_some_and(|b| b.allocated <= 6)
        },
        DEFAULT_TIMEOUT,
    )
    .await?;
    let budget = p.status.unwrap().budget.unwrap();
    assert_eq!(budget.requested, 12);

    // Budget 2 cannot hold three minimums of 1: the policy says so and the last feature waits.
    apply_yaml(
        &client,
        ns.name(),
        &policy("shared", "tier: premium", &body(2)),
    )
    .await?;
    let p = wait_for(
        &policies,
        "shared",
        |p: Option<&PremiumPolicy>| {
            p.and_then(|p| p.status.as_ref()).is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "BudgetExceeded" && c.status == "True")
            })
        },
        DEFAULT_TIMEOUT,
    )
    .await?;
    let waiting = p.status.unwrap().budget.unwrap().waiting;
    assert_eq!(waiting.len(), 1, "one feature waits: {waiting:?}");
    let held = &waiting[0];
    let f = wait_for(
        &features,
        held,
        |f: Option<&PremiumFeature>| phase(f) == Some(Phase::Pending),
        DEFAULT_TIMEOUT,
    )
    .await?;
    let ready = f
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.reason, "BudgetExceeded");
    wait_for(
        &deployments,
        held,
        |d: Option<&Deployment>| {
            d.and_then(|d| d.spec.as_ref())
                .is_some_and(|s| s.replicas == Some(0))
        },
        DEFAULT_TIMEOUT,
    )
    .await?;
    finish(ns, operator).await
}
