//! One malformed stored object never stalls a watch. The CRD's schema keeps such objects out,
//! so this test installs, on a cluster of its own, a PremiumFeature CRD whose spec is not
//! checked at all, stores a feature the Rust type cannot read (`port: "eighty"`) next to a good
//! one, and runs the operator: the good one becomes Ready, the bad one is logged and counted
//! (kube's DeserializeGuard), and nothing panics. Runs in `make test` and `make reliability`.

mod support;

use std::time::Duration;

use kube::CustomResourceExt;
use kube::api::Api;
use premium_operator::api::{Phase, PremiumFeature, PremiumPolicy};
use support::cluster::{OwnCluster, chart_rbac_kubeconfig, report, time_until};
use support::operator::{Operator, apply_yaml, feature_yaml};
use support::{DEFAULT_TIMEOUT, TestNamespace, install_crd, unchecked_feature_crd, wait_for};

#[tokio::test]
async fn a_malformed_stored_feature_never_stalls_the_others() -> anyhow::Result<()> {
    let cluster = OwnCluster::up("malformed", &[])?;
    let client = cluster.client().await?;
    install_crd(&client, &unchecked_feature_crd()?).await?;
    install_crd(&client, &PremiumPolicy::crd()).await?;
    let ns = TestNamespace::new(&client, "malformed").await?;
    let bad = "apiVersion: premium.dev/v1alpha1\nkind: PremiumFeature\nmetadata: {name: broken}\nspec:\n  image: [not, a, string]\n  port: eighty\n---\n";
    apply_yaml(&client, ns.name(), bad).await?;
    let chart = chart_rbac_kubeconfig(&client, &cluster.kubeconfig, ns.name(), &[]).await?;
    let mut operator = Operator::start_with(&chart[0], Some(ns.name()), &[])?;
    operator.wait_serving(Duration::from_secs(30)).await?;
    apply_yaml(
        &client,
        ns.name(),
        &[
            feature_yaml("catalog", &[], ""),
            feature_yaml("aika", &["catalog"], ""),
        ]
        .concat(),
    )
    .await?;
    // Another malformed object while the watch runs.
    apply_yaml(
        &client,
        ns.name(),
        &bad.replace("name: broken", "name: broken-later"),
    )
    .await?;
    let features: Api<PremiumFeature> = ns.api();
    let ready =
        |f: Option<&PremiumFeature>| f.and_then(|f| f.status.as_ref()?.phase) == Some(Phase::Ready);
    wait_for(&features, "catalog", ready, DEFAULT_TIMEOUT).await?;
    wait_for(&features, "aika", ready, DEFAULT_TIMEOUT).await?;
    let metric = "premium_reconcile_errors_total{controller=\"feature\",kind=\"InvalidObject\"}";
    let logged = time_until(
        "both malformed features (stored before and after start-up) to be logged and counted",
        Duration::from_secs(30),
        || {
            let log = std::fs::read_to_string(&operator.log).unwrap_or_default();
            let counted = operator.metric(metric).unwrap_or(0.0);
            async move {
                log.contains("does not match the schema")
                    && log.contains(r#""name":"broken""#)
                    && log.contains(r#""name":"broken-later""#)
                    && counted >= 2.0
            }
        },
    )
    .await;
    assert!(
        logged.is_ok(),
        "no log line or metric for the malformed features:\n{}",
        operator.log_tail()
    );
    let log = std::fs::read_to_string(&operator.log)?;
    assert!(!log.contains("panicked"), "{}", operator.log_tail());
    assert!(operator.running());
    report(
        "bad input",
        "malformed stored feature (CRD without schema checks)",
        "pass",
        &format!(
            "unreadable features stored before start-up and while running both logged + counted ({} InvalidObject); 2 good features Ready; watch never stalled",
            operator.metric(metric)?
        ),
    );
    drop(operator);
    ns.delete().await.ok();
    drop(cluster);
    Ok(())
}
