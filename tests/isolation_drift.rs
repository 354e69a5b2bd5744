//! Drift of owned objects on the real control plane: a hand edit of anything the operator sets
//! on a feature's Deployment, Service, ConfigMap or HPA is put back within seconds, a
//! Deployment whose labels were removed (which takes it out of the operator's label-filtered
//! watch) is found again, and none of that costs a write while nobody meddles, also after a
//! restart.

mod support;

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::Api;
use kube::api::{Patch, PatchParams};
use premium_operator::api::{Phase, PremiumFeature};
use serde_json::{Value, json};
use support::cluster::{heavy, report, time_until};
use support::operator::{Operator, apply_yaml, ensure_crds, feature_yaml, finish, wait_phase};
use support::{DEFAULT_TIMEOUT, TestNamespace, client, eventually};

const FEATURE: &str = "drifty";
/// Someone else: a person with kubectl, or another controller.
const MEDDLER: &str = "drift-meddler";
/// How long a hand edit may stay before the test calls it kept.
const REVERT_TIMEOUT: Duration = Duration::from_secs(20);

/// Quiet windows: light by default, the full length under `PREMIUM_RELIABILITY=1`.
fn quiet_window() -> Duration {
    Duration::from_secs(if heavy() { 30 } else { 8 })
}

async fn patch<K>(api: &Api<K>, name: &str, patch: Patch<Value>) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = PatchParams {
        field_manager: Some(MEDDLER.into()),
        ..Default::default()
    };
    api.patch(name, &params, &patch).await?;
    Ok(())
}

/// The JSON form of an object, for reading a field by path.
async fn live<K>(api: &Api<K>, name: &str) -> Option<Value>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    let obj = api.get_opt(name).await.ok()??;
    serde_json::to_value(obj).ok()
}

/// Index of the app container in the Deployment's pod template.
fn app_index(deployment: &Value) -> Option<usize> {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()?
        .iter()
        .position(|c| c["name"] == "app")
}

/// Seconds from an edit until `restored` holds again.
async fn revert_time<F, Fut>(what: &str, restored: F) -> anyhow::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    time_until(&format!("{what} to be put back"), REVERT_TIMEOUT, restored).await
}

#[tokio::test]
async fn hand_edits_of_owned_objects_are_put_back_and_quiet_costs_nothing() -> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "drift").await?;
    let features: Api<PremiumFeature> = ns.api();
    let deployments: Api<Deployment> = ns.api();
    let services: Api<Service> = ns.api();
    let configmaps: Api<ConfigMap> = ns.api();
    let hpas: Api<HorizontalPodAutoscaler> = ns.api();
    let mut operator = Operator::start(Some(ns.name()), &[])?;
    // A quantity the API server stores in another spelling ("0.5" becomes "500m") and an env
    // value it drops (""): neither may look like drift.
    let extra = "  env: [{name: EMPTY, value: \"\"}, {name: PLAIN, value: x}]\n  resources: {requests: {cpu: \"0.5\", memory: 64Mi}}";
    apply_yaml(&client, ns.name(), &feature_yaml(FEATURE, &[], extra)).await?;
    wait_phase(&features, FEATURE, Phase::Ready).await?;
    let cm_name = format!("{FEATURE}-sidecar");
    // The HPA follows Ready; wait until every owned object is there.
    eventually("the HPA to exist", DEFAULT_TIMEOUT, || async {
        Ok(hpas.get_opt(FEATURE).await?.map(|_| ()))
    })
    .await?;

    // Converged: nothing to write.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = operator.writes()?;
    tokio::time::sleep(quiet_window()).await;
    let quiet_writes = operator.writes()? - before;
    assert_eq!(
        quiet_writes,
        0.0,
        "writes while nobody meddled; log:\n{}",
        operator.log_tail()
    );

    let deployment = live(&deployments, FEATURE).await.expect("the Deployment");
    let app = app_index(&deployment).expect("the app container");
    let image = deployment["spec"]["template"]["spec"]["containers"][app]["image"].clone();
    let volumes = deployment["spec"]["template"]["spec"]["volumes"].clone();
    let service = live(&services, FEATURE).await.expect("the Service");
    let ports = service["spec"]["ports"].clone();
    let configmap = live(&configmaps, &cm_name).await.expect("the ConfigMap");
    let data = configmap["data"].clone();
    let data_key = data
        .as_object()
        .and_then(|d| d.keys().next().cloned())
        .expect("a sidecar file");
    let hpa = live(&hpas, FEATURE).await.expect("the HPA");
    let max_replicas = hpa["spec"]["maxReplicas"].clone();

    let mut reverts: Vec<(&str, anyhow::Result<f64>)> = Vec::new();
    let before_edits = operator.writes()?;

    // The app's image, as `kubectl set image` changes it.
    patch(
        &deployments,
        FEATURE,
        Patch::Json(serde_json::from_value(json!([{
            "op": "replace",
            "path": format!("/spec/template/spec/containers/{app}/image"),
            "value": "ghcr.io/stefanprodan/podinfo:6.0.0",
        }]))?),
    )
    .await?;
    let took = revert_time("the Deployment's image", || async {
        live(&deployments, FEATURE).await.is_some_and(|d| {
            app_index(&d)
                .is_some_and(|i| d["spec"]["template"]["spec"]["containers"][i]["image"] == image)
        })
    })
    .await;
    reverts.push(("Deployment image", took));

    // A volume added to the pod template.
    patch(
        &deployments,
        FEATURE,
        Patch::Json(serde_json::from_value(json!([{
            "op": "add",
            "path": "/spec/template/spec/volumes/-",
            "value": {"name": "extra", "emptyDir": {}},
        }]))?),
    )
    .await?;
    let took = revert_time("the Deployment's volumes", || async {
        live(&deployments, FEATURE)
            .await
            .is_some_and(|d| d["spec"]["template"]["spec"]["volumes"] == volumes)
    })
    .await;
    reverts.push(("Deployment volume added", took));

    // The Service's port.
    patch(
        &services,
        FEATURE,
        Patch::Json(serde_json::from_value(json!([{
            "op": "replace", "path": "/spec/ports/0/port", "value": 9999,
        }]))?),
    )
    .await?;
    let took = revert_time("the Service's ports", || async {
        live(&services, FEATURE)
            .await
            .is_some_and(|s| s["spec"]["ports"] == ports)
    })
    .await;
    reverts.push(("Service port", took));

    // A file of the sidecar's configuration.
    patch(
        &configmaps,
        &cm_name,
        Patch::Merge(json!({"data": {data_key.clone(): "tampered"}})),
    )
    .await?;
    let took = revert_time("the ConfigMap's data", || async {
        live(&configmaps, &cm_name)
            .await
            .is_some_and(|c| c["data"] == data)
    })
    .await;
    reverts.push(("ConfigMap data", took));

    // The HPA's ceiling.
    patch(
        &hpas,
        FEATURE,
        Patch::Merge(json!({"spec": {"maxReplicas": 50}})),
    )
    .await?;
    let took = revert_time("the HPA's maxReplicas", || async {
        live(&hpas, FEATURE)
            .await
            .is_some_and(|h| h["spec"]["maxReplicas"] == max_replicas)
    })
    .await;
    reverts.push(("HPA maxReplicas", took));

    // The label the operator's watch selects by: the Deployment drops out of its view.
    patch(
        &deployments,
        FEATURE,
        Patch::Json(serde_json::from_value(json!([{
            "op": "remove", "path": "/metadata/labels/premium.dev~1feature",
        }]))?),
    )
    .await?;
    let took = revert_time("the Deployment's feature label", || async {
        live(&deployments, FEATURE)
            .await
            .is_some_and(|d| d["metadata"]["labels"]["premium.dev/feature"] == FEATURE)
    })
    .await;
    reverts.push(("Deployment feature label removed", took));

    let failed: Vec<String> = reverts
        .iter()
        .filter_map(|(case, r)| r.as_ref().err().map(|e| format!("{case}: {e:#}")))
        .collect();
    assert!(
        failed.is_empty(),
        "hand edits kept: {failed:?}; log:\n{}",
        operator.log_tail()
    );
    let times: Vec<(&str, f64)> = reverts
        .into_iter()
        .filter_map(|(case, r)| r.ok().map(|t| (case, t)))
        .collect();
    let slowest = times.iter().map(|(_, t)| *t).fold(0.0, f64::max);
    let spelled: Vec<String> = times
        .iter()
        .map(|(case, t)| format!("{case} {t:.1} s"))
        .collect();
    eprintln!("reverted: {}", spelled.join(", "));
    // Reverts are repairs, not restarts: the feature stayed Ready.
    wait_phase(&features, FEATURE, Phase::Ready).await?;
    let repair_writes = operator.writes()? - before_edits;

    // Repaired: quiet again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = operator.writes()?;
    tokio::time::sleep(quiet_window()).await;
    let after_repair = operator.writes()? - before;
    assert_eq!(
        after_repair,
        0.0,
        "writes after the repairs; log:\n{}",
        operator.log_tail()
    );

    // A repair leaves the operator sole owner of what it sets: no record of its own updates
    // remains, which would keep a field alive after the feature stops setting it.
    for (kind, obj) in [
        ("Deployment", live(&deployments, FEATURE).await),
        ("Service", live(&services, FEATURE).await),
        ("ConfigMap", live(&configmaps, &cm_name).await),
        ("HorizontalPodAutoscaler", live(&hpas, FEATURE).await),
    ] {
        let obj = obj.expect("the owned object");
        let own_updates: Vec<&Value> = obj["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["manager"] == "premium-operator" && e["operation"] == "Update")
            .collect();
        assert!(
            own_updates.is_empty(),
            "{kind} keeps a record of the operator's own update: {own_updates:?}"
        );
    }

    // A fresh instance reads everything and finds nothing to put back.
    let status = operator.terminate(Duration::from_secs(30)).await?;
    assert!(status.success(), "SIGTERM should end the operator cleanly");
    let restarted = Operator::start(Some(ns.name()), &[])?;
    restarted.wait_serving(DEFAULT_TIMEOUT).await?;
    eventually(
        "the restarted instance to reconcile the feature",
        DEFAULT_TIMEOUT,
        || async {
            Ok(restarted
                .metric("premium_reconciles_total{controller=\"feature\"}")
                .ok()
                .filter(|n| *n >= 1.0)
                .map(|_| ()))
        },
    )
    .await?;
    tokio::time::sleep(quiet_window()).await;
    let restart_writes = restarted.writes()?;
    assert_eq!(
        restart_writes,
        0.0,
        "a restart must not write; log:\n{}",
        restarted.log_tail()
    );

    // The repaired Service follows the feature's next port: nothing left from the repair
    // clashes with the apply.
    patch(
        &features,
        FEATURE,
        Patch::Merge(json!({"spec": {"port": 9899}})),
    )
    .await?;
    eventually(
        "the Service to follow the feature's port",
        DEFAULT_TIMEOUT,
        || async {
            let ports = live(&services, FEATURE)
                .await
                .map(|s| s["spec"]["ports"].clone());
            Ok(ports
                .filter(|p| p.as_array().is_some_and(|p| p.len() == 1) && p[0]["port"] == 9899)
                .map(|_| ()))
        },
    )
    .await?;
    wait_phase(&features, FEATURE, Phase::Ready).await?;

    report(
        "isolation",
        "hand edits of owned objects (image, added volume, Service port, ConfigMap data, HPA maxReplicas, feature label removed) are put back",
        "pass",
        &format!(
            "{}; slowest {slowest:.1} s; {} writes for the 6 repairs; writes while quiet {}, after repairs {}, after a restart {}",
            spelled.join(", "),
            repair_writes as u64,
            quiet_writes as u64,
            after_repair as u64,
            restart_writes as u64,
        ),
    );
    finish(ns, restarted).await
}
