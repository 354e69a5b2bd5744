//! The test marks that hack/kwok/stages.yaml understands: KWOK plays the kubelet on the local
//! cluster and makes every pod Ready at once, so a test that needs a pod that is not Ready says
//! so with a mark instead. A marked pod runs but is not Ready (as if its readiness probe
//! failed); an unmarked pod is untouched by the test stages.

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use premium_operator::api::FEATURE_LABEL;

/// Pod label: while it is `"true"`, the pod is not Ready; removing it makes the pod Ready again.
pub const UNREADY_LABEL: &str = "premium.dev/test-unready";

/// App container env var: with the value `"true"` the pod never becomes Ready.
pub const UNREADY_ENV: &str = "PREMIUM_TEST_UNREADY";

/// A `spec` fragment (for `feature_yaml`'s `extra_spec`) whose pods never become Ready.
pub fn never_ready_spec() -> String {
    format!("  env: [{{name: {UNREADY_ENV}, value: \"true\"}}]\n")
}

/// Sets (`unready = true`) or removes the [`UNREADY_LABEL`] on every pod of a feature; returns
/// how many pods were changed.
pub async fn mark_feature_pods(
    pods: &Api<Pod>,
    feature: &str,
    unready: bool,
) -> anyhow::Result<usize> {
    let selector = format!("{FEATURE_LABEL}={feature}");
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .with_context(|| format!("listing the pods of {feature}"))?;
    let value = if unready {
        serde_json::Value::from("true")
    } else {
        serde_json::Value::Null
    };
    let patch = serde_json::json!({"metadata": {"labels": {UNREADY_LABEL: value}}});
    for pod in &list.items {
        pods.patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .with_context(|| format!("marking pod {}", pod.name_any()))?;
    }
    Ok(list.items.len())
}

/// Whether a pod's `Ready` condition is True.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether a pod runs (phase `Running`).
pub fn pod_running(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Running")
}
