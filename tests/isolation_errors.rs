//! Error handling a user sees: a refusal says who refused (RBAC, a ResourceQuota, admission
//! control), and a feature that keeps failing is retried with a growing, per-object backoff
//! instead of a fixed wait.
//!
//! Needs the local cluster (`make cluster-up`, or `make test`). Runs in `make test`.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ResourceQuota;
use kube::Api;
use premium_operator::api::{Phase, PremiumFeature};
use support::cluster::{chart_rbac_kubeconfig, report};
use support::operator::{Operator, apply_yaml, ensure_crds, feature_yaml, finish, wait_phase};
use support::{TestNamespace, client, kubeconfig_path};

const QUOTA_ERRORS: &str =
    "premium_reconcile_errors_total{controller=\"feature\",kind=\"QuotaExceeded\"}";
const ALL_ERRORS: &str = "premium_reconcile_errors_total{controller=\"feature\"";
const RBAC_ERRORS: &str =
    "premium_reconcile_errors_total{controller=\"feature\",kind=\"Forbidden\"}";

fn stalled(f: &PremiumFeature) -> Option<(String, String)> {
    let c = f
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled" && c.status == "True")?;
    Some((c.reason.clone(), c.message.clone()))
}

/// A namespace whose ResourceQuota allows no Deployment: the feature says the quota is full
/// (not that the operator lacks a permission), failures are counted as QuotaExceeded, and the
/// retries back off (few, at growing intervals); raising the quota heals it.
#[tokio::test]
async fn a_full_resource_quota_is_reported_as_a_quota_and_retried_with_backoff()
-> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "quota").await?;
    let quota: ResourceQuota = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "no-deployments"},
        "spec": {"hard": {"count/deployments.apps": "0"}},
    }))?;
    support::apply(&ns.api::<ResourceQuota>(), &quota).await?;
    // The chart's least-privilege Role, so a real RBAC refusal would be possible too.
    let kubeconfig = chart_rbac_kubeconfig(&client, &kubeconfig_path(), ns.name(), &[]).await?;
    let mut operator = Operator::start_with(&kubeconfig[0], Some(ns.name()), &[])?;
    operator.wait_serving(Duration::from_secs(30)).await?;
    apply_yaml(&client, ns.name(), &feature_yaml("catalog", &[], "")).await?;

    // Every failed reconcile of the feature, timed from the first one for 20 s.
    let window = Duration::from_secs(20);
    let applied = Instant::now();
    let mut first: Option<Instant> = None;
    let mut count = 0.0;
    let mut at: Vec<f64> = Vec::new();
    while first.is_none_or(|f| f.elapsed() < window) {
        anyhow::ensure!(
            applied.elapsed() < Duration::from_secs(60),
            "no failed reconcile counted within 60 s:\n{}",
            operator.log_tail()
        );
        let now = operator.metric(ALL_ERRORS)?;
        if now > count {
            let t = *first.get_or_insert_with(Instant::now);
            for _ in 0..(now - count) as usize {
                at.push(t.elapsed().as_secs_f64());
            }
            count = now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let features: Api<PremiumFeature> = ns.api();
    let seen = features.get("catalog").await?;
    let (reason, message) = stalled(&seen).unwrap_or_default();
    assert_eq!(
        reason, "QuotaExceeded",
        "a full quota must not be reported as {reason:?}: {message}"
    );
    assert!(
        message.contains("ResourceQuota") && message.contains("exceeded quota"),
        "the message should name the quota: {message}"
    );
    assert!(
        !message.contains("role"),
        "a full quota is no missing permission: {message}"
    );
    assert_eq!(
        operator.metric(QUOTA_ERRORS)?,
        count,
        "every failure should be counted as QuotaExceeded"
    );
    assert_eq!(
        operator.metric(RBAC_ERRORS)?,
        0.0,
        "counted as a missing permission"
    );

    // Few retries, at growing intervals.
    let errors = at.len();
    let intervals: Vec<f64> = at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        errors <= 6,
        "{errors} failures in {window:?}: retries are not backing off (at {at:?})"
    );
    assert!(
        intervals.len() >= 2,
        "too few retries in {window:?} to see them back off (at {at:?}): the wait should start short"
    );
    // Each wait at least as long as the one before (less the 0.1 s sampling), the last clearly
    // longer than the first.
    for w in intervals.windows(2) {
        assert!(w[1] + 0.2 >= w[0], "retry intervals shrank: {intervals:?}");
    }
    let (first_gap, last_gap) = (intervals[0], intervals[intervals.len() - 1]);
    assert!(
        last_gap >= 1.5 * first_gap,
        "retry intervals do not grow: {intervals:?}"
    );
    assert!(operator.running(), "the operator exited");

    // Room in the quota: the feature comes up without any other change.
    let healed_from = Instant::now();
    ns.api::<ResourceQuota>()
        .delete("no-deployments", &Default::default())
        .await?;
    wait_phase(&features, "catalog", Phase::Ready).await?;
    let healed = healed_from.elapsed().as_secs_f64();
    let gaps: Vec<String> = intervals.iter().map(|g| format!("{g:.1}")).collect();
    report(
        "isolation",
        "a ResourceQuota with no room (403): reported as a quota, not RBAC; retries back off",
        "pass",
        &format!(
            "Stalled/QuotaExceeded; {errors:.0} failures in 20 s at intervals {} s; Forbidden errors 0; Ready {healed:.1}s after the quota was removed",
            gaps.join(", ")
        ),
    );
    finish(ns, operator).await
}
