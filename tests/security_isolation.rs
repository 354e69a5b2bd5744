//! Security and isolation, with the operator running under the chart's least-privilege RBAC
//! (a ServiceAccount token, Role-only mode): nothing secret leaks, a removed permission is
//! reported and heals, a user's same-named objects are left alone, and namespaces stay apart
//! (on a cluster of the test's own, since that needs a cluster-wide operator).
//!
//! Needs the local cluster (`make cluster-up`, or `make test`) and the built tools (helm,
//! `make tools`). Runs in `make test`; `make reliability` prints its rows in the table.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::Role;
use kube::api::ListParams;
use kube::{Api, Resource, ResourceExt};
use premium_operator::api::{Phase, PremiumFeature};
use support::cluster::{
    CHART_NAME, OwnCluster, chart_rbac_kubeconfig, client_for, report, time_until,
};
use support::operator::{
    Operator, apply_yaml, ensure_crds, feature_yaml, finish, phase, wait_phase,
};
use support::{DEFAULT_TIMEOUT, TestNamespace, client, kubeconfig_path, wait_for};

fn condition<'a>(
    f: &'a PremiumFeature,
    ty: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    f.status.as_ref()?.conditions.iter().find(|c| c.type_ == ty)
}

/// An operator in `ns` authenticated as the chart's ServiceAccount with the chart's Role.
async fn chart_operator(client: &kube::Client, ns: &TestNamespace) -> anyhow::Result<Operator> {
    let kubeconfigs = chart_rbac_kubeconfig(client, &kubeconfig_path(), ns.name(), &[]).await?;
    let lease_flags = [
        "--leader-elect",
        "--leader-election-namespace",
        ns.name(),
        "--leader-election-lease",
        CHART_NAME,
    ];
    let operator = Operator::start_with(&kubeconfigs[0], Some(ns.name()), &lease_flags)?;
    operator.wait_serving(Duration::from_secs(30)).await?;
    Ok(operator)
}

/// A Secret's value must never be copied into anything the operator writes. A feature takes
/// the Secret through `valueFrom.secretKeyRef`: its Deployment must reference the Secret by name
/// and key, and the value must appear in no object the operator writes (Deployments, Services,
/// ConfigMaps, HPAs, their annotations), no feature status or annotation, no Event and no log
/// line. The operator's identity cannot read Secrets at all. A negative control proves the
/// search finds the value where it is: another feature carries it on purpose as a plain env
/// value, and the search must find it in that feature's Deployment, and only there.
#[tokio::test]
async fn a_secret_value_is_never_copied_into_anything_the_operator_writes() -> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "secrets").await?;
    let secret_value = format!("s3cr3t-{:016x}", rand::random::<u64>());
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "api-key"},
        "stringData": {"token": secret_value},
    }))?;
    support::apply(&ns.api::<Secret>(), &secret).await?;
    let kubeconfigs = chart_rbac_kubeconfig(&client, &kubeconfig_path(), ns.name(), &[]).await?;
    // The chart gives the operator no access to Secrets: it could not resolve one if it tried.
    let as_operator = client_for(&kubeconfigs[0]).await?;
    match Api::<Secret>::namespaced(as_operator, ns.name())
        .get("api-key")
        .await
    {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => anyhow::bail!(
            "the operator's identity should be refused Secrets, got {:?}",
            other.map(|s| s.name_any())
        ),
    }
    let operator = chart_operator(&client, &ns).await?;
    let from_secret = "  env:\n  - name: API_TOKEN\n    valueFrom: {secretKeyRef: {name: api-key, key: token}}\n  - name: LOG_LEVEL\n    value: info\n";
    let on_purpose = format!("  env:\n  - name: LEAKED_ON_PURPOSE\n    value: {secret_value}\n");
    apply_yaml(
        &client,
        ns.name(),
        &[
            feature_yaml("catalog", &[], from_secret),
            feature_yaml("aika", &["catalog"], from_secret),
            feature_yaml("control", &[], &on_purpose),
        ]
        .concat(),
    )
    .await?;
    let features: Api<PremiumFeature> = ns.api();
    for name in ["catalog", "aika", "control"] {
        wait_phase(&features, name, Phase::Ready).await?;
    }
    // Let the last status writes and Events land.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Everything the operator writes or says, whole (metadata and annotations included).
    let lp = ListParams::default();
    let mut haystacks: Vec<(String, String)> = Vec::new();
    for d in ns.api::<Deployment>().list(&lp).await? {
        haystacks.push((
            format!("Deployment {}", d.name_any()),
            serde_json::to_string(&d)?,
        ));
    }
    for svc in ns.api::<Service>().list(&lp).await? {
        haystacks.push((
            format!("Service {}", svc.name_any()),
            serde_json::to_string(&svc)?,
        ));
    }
    for cm in ns.api::<ConfigMap>().list(&lp).await? {
        haystacks.push((
            format!("ConfigMap {}", cm.name_any()),
            serde_json::to_string(&cm)?,
        ));
    }
    for hpa in ns.api::<HorizontalPodAutoscaler>().list(&lp).await? {
        haystacks.push((
            format!("HPA {}", hpa.name_any()),
            serde_json::to_string(&hpa)?,
        ));
    }
    for f in features.list(&lp).await? {
        // The spec is the user's; the status, labels and annotations are the operator's.
        haystacks.push((
            format!("status and metadata of {}", f.name_any()),
            serde_json::to_string(&(&f.status, &f.metadata.annotations, &f.metadata.labels))?,
        ));
    }
    for e in ns.api::<Event>().list(&lp).await? {
        haystacks.push((
            format!("Event {}", e.name_any()),
            serde_json::to_string(&e)?,
        ));
    }
    haystacks.push((
        "operator log".into(),
        std::fs::read_to_string(&operator.log)?,
    ));
    let found: Vec<&str> = haystacks
        .iter()
        .filter(|(_, text)| text.contains(&secret_value))
        .map(|(what, _)| what.as_str())
        .collect();
    // The negative control: the search sees the value where it was put on purpose...
    assert!(
        found.contains(&"Deployment control"),
        "the search did not find the value in the control's Deployment: it could not find a leak either"
    );
    // ...and nowhere else.
    assert_eq!(
        found,
        ["Deployment control"],
        "the value was copied into more than the one Deployment that carries it on purpose"
    );
    // The features that take it from the Secret reference it by name and key only.
    for name in ["catalog", "aika"] {
        let d = ns.api::<Deployment>().get(name).await?;
        let refs: Vec<(String, String)> = d
            .spec
            .iter()
            .flat_map(|s| s.template.spec.iter())
            .flat_map(|p| p.containers.iter())
            .flat_map(|c| c.env.iter().flatten())
            .filter(|e| e.name == "API_TOKEN")
            .filter_map(|e| {
                let r = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
                Some((r.name.clone(), r.key.clone()))
            })
            .collect();
        assert_eq!(
            refs,
            [("api-key".to_string(), "token".to_string())],
            "{name}'s Deployment should take API_TOKEN from the Secret by reference"
        );
    }
    report(
        "isolation",
        "a Secret's value (env valueFrom secretKeyRef) is never copied into anything the operator writes",
        "pass",
        &format!(
            "{} places searched (owned objects with annotations, statuses, Events, log); the value found only in the control feature's Deployment, where it was put on purpose; secretKeyRef kept by name; operator refused Secrets (403)",
            haystacks.len()
        ),
    );
    finish(ns, operator).await
}

#[tokio::test]
async fn a_removed_permission_is_reported_and_restoring_it_heals() -> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "forbidden").await?;
    let mut operator = chart_operator(&client, &ns).await?;
    let features: Api<PremiumFeature> = ns.api();
    apply_yaml(&client, ns.name(), &feature_yaml("catalog", &[], "")).await?;
    wait_phase(&features, "catalog", Phase::Ready).await?;

    // Take create/patch on ConfigMaps away from the chart's Role.
    let roles: Api<Role> = ns.api();
    let original = roles.get(CHART_NAME).await?;
    let mut reduced = original.clone();
    for rule in reduced.rules.iter_mut().flatten() {
        if rule
            .resources
            .as_ref()
            .is_some_and(|r| r.iter().any(|r| r == "configmaps"))
        {
            rule.resources = Some(vec!["services".into()]);
        }
    }
    let mut rules = reduced.rules.clone().unwrap_or_default();
    rules.push(serde_json::from_value(serde_json::json!({
        "apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]
    }))?);
    reduced.rules = Some(rules);
    reduced.metadata.managed_fields = None;
    reduced.metadata.resource_version = None;
    roles
        .replace(CHART_NAME, &Default::default(), &{
            let mut r = reduced;
            r.metadata.resource_version = original.resource_version();
            r
        })
        .await?;

    apply_yaml(&client, ns.name(), &feature_yaml("aika", &["catalog"], "")).await?;
    let removed = Instant::now();
    let stalled = wait_for(
        &features,
        "aika",
        |f: Option<&PremiumFeature>| {
            f.and_then(|f| condition(f, "Stalled"))
                .is_some_and(|c| c.status == "True" && c.reason == "Forbidden")
        },
        DEFAULT_TIMEOUT,
    )
    .await?;
    let reported_after = removed.elapsed().as_secs_f64();
    let message = condition(&stalled, "Stalled")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("configmaps") && message.contains("forbidden"),
        "the status should say what is forbidden: {message}"
    );
    // A clear log line and a metric (written just after the status), and no crash loop.
    let metric = "premium_reconcile_errors_total{controller=\"feature\",kind=\"Forbidden\"}";
    let logged = time_until(
        "the permission-denied log line and metric",
        Duration::from_secs(20),
        || {
            let log = std::fs::read_to_string(&operator.log).unwrap_or_default();
            let counted = operator.metric(metric).unwrap_or(0.0);
            async move { log.contains("permission denied") && counted >= 1.0 }
        },
    )
    .await;
    assert!(
        logged.is_ok(),
        "no permission log line or metric:\n{}",
        operator.log_tail()
    );
    // The Ready feature it could still manage stays Ready.
    assert_eq!(
        phase(Some(&features.get("catalog").await?)),
        Some(Phase::Ready)
    );
    // Retries are spaced out (backoff): no hot loop while forbidden, and no crash.
    let first_errors = operator.metric(metric)?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let errors_before = operator.metric(metric)?;
    assert!(
        errors_before - first_errors <= 3.0,
        "{} forbidden retries in 5 s: the retries are not backing off",
        errors_before - first_errors
    );
    assert!(
        operator.running(),
        "the operator exited:\n{}",
        operator.log_tail()
    );

    // Restore the Role: the feature heals without any other change.
    let current = roles.get(CHART_NAME).await?;
    let mut restored = original.clone();
    restored.metadata.managed_fields = None;
    restored.metadata.resource_version = current.resource_version();
    roles
        .replace(CHART_NAME, &Default::default(), &restored)
        .await?;
    let restored_at = Instant::now();
    wait_phase(&features, "aika", Phase::Ready).await?;
    let healed = restored_at.elapsed().as_secs_f64();
    assert!(operator.running(), "the operator exited");
    report(
        "security",
        "permission removed from the chart's Role, then restored",
        "pass",
        &format!(
            "Stalled/Forbidden in {reported_after:.1}s; forbidden errors={errors_before}; healed {healed:.1}s after restore; restarts=0"
        ),
    );
    finish(ns, operator).await
}

#[tokio::test]
async fn a_users_same_named_configmap_and_service_are_left_untouched() -> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "theirs").await?;
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "aika-sidecar", "labels": {"team": "someone-else"}},
        "data": {"envoy.yaml": "theirs"},
    }))?;
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "aika", "labels": {"team": "someone-else"}},
        "spec": {"ports": [{"port": 80}], "selector": {"app": "theirs"}},
    }))?;
    let cm = support::apply(&ns.api::<ConfigMap>(), &cm).await?;
    let svc = support::apply(&ns.api::<Service>(), &svc).await?;
    let mut operator = chart_operator(&client, &ns).await?;
    apply_yaml(
        &client,
        ns.name(),
        &[
            feature_yaml("aika", &[], ""),
            feature_yaml("catalog", &[], ""),
        ]
        .concat(),
    )
    .await?;
    let features: Api<PremiumFeature> = ns.api();
    let stalled = wait_for(
        &features,
        "aika",
        |f: Option<&PremiumFeature>| {
            f.and_then(|f| condition(f, "Stalled"))
                .is_some_and(|c| c.status == "True" && c.reason == "NameConflict")
        },
        DEFAULT_TIMEOUT,
    )
    .await?;
    wait_phase(&features, "catalog", Phase::Ready).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cm_now = ns.api::<ConfigMap>().get("aika-sidecar").await?;
    let svc_now = ns.api::<Service>().get("aika").await?;
    assert_eq!(
        cm_now.resource_version(),
        cm.resource_version(),
        "their ConfigMap was written"
    );
    assert_eq!(
        svc_now.resource_version(),
        svc.resource_version(),
        "their Service was written"
    );
    assert!(cm_now.owner_references().is_empty() && svc_now.owner_references().is_empty());
    let message = condition(&stalled, "Stalled")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains("not owned"), "{message}");

    // Everything the operator did write carries its labels and a controller reference.
    let uids: std::collections::BTreeMap<String, String> = features
        .list(&ListParams::default())
        .await?
        .into_iter()
        .map(|f| (f.uid().unwrap_or_default(), f.name_any()))
        .collect();
    let mut owned = 0;
    let mut check =
        |kind: &str, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            let labels = meta.labels.clone().unwrap_or_default();
            if labels
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str)
                != Some("premium-operator")
            {
                return;
            }
            owned += 1;
            let controller = meta
                .owner_references
                .iter()
                .flatten()
                .find(|r| r.controller == Some(true))
                .unwrap_or_else(|| panic!("{kind} {:?} has no controller reference", meta.name));
            assert!(
                uids.contains_key(&controller.uid),
                "{kind} {:?} is owned by no live feature",
                meta.name
            );
            assert!(labels.contains_key("premium.dev/feature"));
        };
    for o in ns.api::<Deployment>().list(&ListParams::default()).await? {
        check("Deployment", o.meta());
    }
    for o in ns.api::<Service>().list(&ListParams::default()).await? {
        check("Service", o.meta());
    }
    for o in ns.api::<ConfigMap>().list(&ListParams::default()).await? {
        check("ConfigMap", o.meta());
    }
    for o in ns
        .api::<HorizontalPodAutoscaler>()
        .list(&ListParams::default())
        .await?
    {
        check("HorizontalPodAutoscaler", o.meta());
    }
    assert!(owned >= 4, "expected catalog's objects, found {owned}");
    assert!(operator.running());
    report(
        "security",
        "user's same-named ConfigMap and Service untouched",
        "pass",
        &format!(
            "their writes=0; feature Stalled/NameConflict; {owned} owned objects all labelled + controller ref"
        ),
    );
    finish(ns, operator).await
}

const POLICY_A: &str = "apiVersion: premium.dev/v1alpha1
kind: PremiumPolicy
metadata: {name: team-a-strict}
spec:
  selector: {matchLabels: {tier: premium}}
  priority: 900
  circuitBreaker: {maxConnections: 7}
  pool: {defaults: {minReplicas: 2, maxReplicas: 2}}
---
";

const GRANT_B: &str = "apiVersion: premium.dev/v1alpha1
kind: PremiumPolicy
metadata: {name: expose-catalog}
spec:
  selector: {matchLabels: {tier: premium}}
  exposeTo: {namespaces: [NS_A]}
---
";

/// A cluster-wide operator with the chart's ClusterRole, on a cluster of the test's own.
#[tokio::test]
async fn namespaces_stay_apart_unless_granted() -> anyhow::Result<()> {
    let cluster = OwnCluster::up("isolation", &[])?;
    let client = cluster.client().await?;
    ensure_crds(&client).await?;
    let a = TestNamespace::new(&client, "team-a").await?;
    let b = TestNamespace::new(&client, "team-b").await?;
    let (_home, operator) = cluster.chart_operator(&client).await?;
    let fa: Api<PremiumFeature> = a.api();
    let fb: Api<PremiumFeature> = b.api();
    apply_yaml(&client, b.name(), &feature_yaml("catalog", &[], "")).await?;
    let catalog = wait_phase(&fb, "catalog", Phase::Ready).await?;
    let cm_b = b.api::<ConfigMap>().get("catalog-sidecar").await?;
    let deploy_b = b.api::<Deployment>().get("catalog").await?;

    // Team A: a strict policy, and a feature that depends on B's catalog without a grant.
    let cross = format!(
        "apiVersion: premium.dev/v1alpha1\nkind: PremiumFeature\nmetadata: {{name: aika, labels: {{tier: premium}}}}\nspec:\n  image: ghcr.io/stefanprodan/podinfo:6.7.1\n  port: 9898\n  healthCheck: {{path: /readyz}}\n  dependsOn: [{{name: catalog, namespace: {}}}]\n---\n",
        b.name()
    );
    apply_yaml(&client, a.name(), &format!("{POLICY_A}{cross}")).await?;
    let refused = wait_for(
        &fa,
        "aika",
        |f: Option<&PremiumFeature>| {
            f.and_then(|f| condition(f, "DependenciesReady"))
                .is_some_and(|c| c.status == "False" && c.reason == "DependencyNotPermitted")
        },
        DEFAULT_TIMEOUT,
    )
    .await?;
    let deployment_a = a.api::<Deployment>().get("aika").await?;
    assert_eq!(
        deployment_a.spec.and_then(|s| s.replicas),
        Some(0),
        "a refused cross-namespace dependent must stay scaled to 0"
    );
    let message = condition(&refused, "DependenciesReady")
        .map(|c| c.message.clone())
        .unwrap_or_default();

    // A's policy changed nothing in B.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let catalog_now = fb.get("catalog").await?;
    let policies_b = catalog_now
        .status
        .as_ref()
        .map(|s| s.policies.clone())
        .unwrap_or_default();
    assert!(
        policies_b.is_empty(),
        "B's feature is governed by {policies_b:?}"
    );
    assert_eq!(
        b.api::<ConfigMap>()
            .get("catalog-sidecar")
            .await?
            .resource_version(),
        cm_b.resource_version(),
        "A's policy rewrote B's sidecar config"
    );
    assert_eq!(
        b.api::<Deployment>()
            .get("catalog")
            .await?
            .spec
            .and_then(|s| s.replicas),
        deploy_b.spec.and_then(|s| s.replicas),
    );
    assert_eq!(
        catalog_now
            .status
            .as_ref()
            .map(|s| s.sidecar_config_hash.clone()),
        catalog
            .status
            .as_ref()
            .map(|s| s.sidecar_config_hash.clone())
    );

    // B grants A: the dependent starts.
    let granted_at = Instant::now();
    apply_yaml(&client, b.name(), &GRANT_B.replace("NS_A", a.name())).await?;
    wait_phase(&fa, "aika", Phase::Ready).await?;
    let started = granted_at.elapsed().as_secs_f64();
    report(
        "isolation",
        "policy in namespace A never changes a feature in B",
        "pass",
        "B's ConfigMap/Deployment writes=0, B status.policies=[]",
    );
    report(
        "isolation",
        "cross-namespace dependsOn refused without grant, allowed with it",
        "pass",
        &format!(
            "refused: DependencyNotPermitted (\"{}\"); granted -> Ready in {started:.1}s",
            message.chars().take(60).collect::<String>()
        ),
    );
    finish(a, operator).await?;
    b.delete().await?;
    drop(cluster);
    Ok(())
}
