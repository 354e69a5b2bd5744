//! The operator as a process on the real control plane: leader election with two instances,
//! quiet once converged, nothing written by a restart, and cross-namespace grants.

mod support;

use std::time::{Duration, Instant};

use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt};
use premium_operator::api::{Phase, PremiumFeature, PremiumPolicy};
use support::operator::{Operator, apply_yaml, ensure_crds, feature_yaml, finish, wait_phase};
use support::{DEFAULT_TIMEOUT, TestNamespace, client, eventually, wait_for};

fn portal() -> String {
    [
        feature_yaml("catalog", &[], ""),
        feature_yaml("soundcheck", &["catalog"], ""),
        feature_yaml("aika", &["catalog", "soundcheck"], ""),
    ]
    .concat()
}

async fn wait_leader(op: &Operator, timeout: Duration) -> anyhow::Result<()> {
    eventually("the instance to hold the lease", timeout, || async {
        Ok(op
            .metric("premium_leader")
            .ok()
            .filter(|v| *v == 1.0)
            .map(|_| ()))
    })
    .await
}

#[tokio::test]
async fn only_the_leader_writes_and_a_standby_takes_over() -> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "leader").await?;
    let features: Api<PremiumFeature> = ns.api();
    let args = [
        "--leader-elect",
        "--leader-election-namespace",
        ns.name(),
        "--lease-duration-seconds",
        "4",
    ];
    let mut first = Operator::start(Some(ns.name()), &args)?;
    wait_leader(&first, DEFAULT_TIMEOUT).await?;
    let second = Operator::start(Some(ns.name()), &args)?;
    second.wait_serving(DEFAULT_TIMEOUT).await?;

    apply_yaml(&client, ns.name(), &portal()).await?;
    for f in ["catalog", "soundcheck", "aika"] {
        wait_phase(&features, f, Phase::Ready).await?;
    }
    assert_eq!(
        second.metric("premium_leader")?,
        0.0,
        "the standby must not lead"
    );
    assert_eq!(second.writes()?, 0.0, "the standby wrote something");
    assert!(first.writes()? > 0.0);

    // The leader dies without releasing the lease; the standby takes over once it expires.
    first.kill();
    let killed = Instant::now();
    wait_leader(&second, Duration::from_secs(30)).await?;
    let takeover = killed.elapsed();
    assert!(
        takeover < Duration::from_secs(4 + 8),
        "takeover took {takeover:?}"
    );
    apply_yaml(
        &client,
        ns.name(),
        &feature_yaml("skill-exchange", &["catalog"], ""),
    )
    .await?;
    wait_phase(&features, "skill-exchange", Phase::Ready).await?;
    assert!(second.writes()? > 0.0, "the new leader reconciles");
    finish(ns, second).await
}

#[tokio::test]
async fn converged_features_stay_quiet_and_a_restart_writes_nothing() -> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "quiet").await?;
    let features: Api<PremiumFeature> = ns.api();
    let mut operator = Operator::start(Some(ns.name()), &[])?;
    apply_yaml(&client, ns.name(), &portal()).await?;
    for f in ["catalog", "soundcheck", "aika"] {
        wait_phase(&features, f, Phase::Ready).await?;
    }
    // Let the last events settle, then watch for 30 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let versions = |list: Vec<PremiumFeature>| -> Vec<(String, Option<String>)> {
        list.into_iter()
            .map(|f| (f.name_any(), f.resource_version()))
            .collect()
    };
    let before_writes = operator.writes()?;
    let before = versions(features.list(&ListParams::default()).await?.items);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        operator.writes()?,
        before_writes,
        "writes after convergence"
    );
    assert_eq!(
        versions(features.list(&ListParams::default()).await?.items),
        before,
        "features changed while quiet"
    );

    // A graceful stop, then a fresh instance: it reads everything and writes nothing.
    let status = operator.terminate(Duration::from_secs(30)).await?;
    assert!(
        status.success(),
        "SIGTERM should end the operator cleanly: {status:?}"
    );
    let restarted = Operator::start(Some(ns.name()), &[])?;
    restarted.wait_serving(DEFAULT_TIMEOUT).await?;
    eventually(
        "the restarted instance to reconcile every feature",
        DEFAULT_TIMEOUT,
        || async {
            Ok(restarted
                .metric("premium_reconciles_total{controller=\"feature\"}")
                .ok()
                .filter(|n| *n >= 3.0)
                .map(|_| ()))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        restarted.writes()?,
        0.0,
        "a restart must not write; log:\n{}",
        restarted.log_tail()
    );
    assert_eq!(
        versions(features.list(&ListParams::default()).await?.items),
        before
    );
    finish(ns, restarted).await
}

#[tokio::test]
async fn cross_namespace_dependencies_need_a_grant() -> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let team = TestNamespace::new(&client, "team").await?;
    let shared = TestNamespace::new(&client, "shared").await?;
    // A cluster-wide instance, limited by label to this test's objects so it never touches
    // what other tests run side by side.
    let run = format!("run-{}", team.name());
    let label = |yaml: String| {
        yaml.replace(
            "tier: premium",
            &format!("tier: premium, premium.dev/test-run: {run}"),
        )
    };
    let operator = Operator::start(
        None,
        &["--selector", &format!("premium.dev/test-run={run}")],
    )?;
    let team_features: Api<PremiumFeature> = team.api();

    apply_yaml(
        &client,
        shared.name(),
        &label(feature_yaml("catalog", &[], "")),
    )
    .await?;
    let dependent = feature_yaml("aika", &[], "").replace(
        "dependsOn: []",
        &format!(
            "dependsOn: [{{name: catalog, namespace: {}}}]",
            shared.name()
        ),
    );
    apply_yaml(&client, team.name(), &label(dependent)).await?;

    let denied = wait_for(
        &team_features,
        "aika",
        |f: Option<&PremiumFeature>| {
            f.and_then(|f| f.status.as_ref()).is_some_and(|s| {
                s.blocked_by
                    .iter()
                    .any(|b| b.reason == "DependencyNotPermitted")
            })
        },
        DEFAULT_TIMEOUT,
    )
    .await?;
    let blocked = &denied.status.unwrap().blocked_by[0];
    assert_eq!(blocked.name, format!("{}/catalog", shared.name()));
    assert!(blocked.message.contains("exposeTo"), "{}", blocked.message);

    let grant = format!(
        "apiVersion: premium.dev/v1alpha1\nkind: PremiumPolicy\nmetadata: {{name: expose, labels: {{premium.dev/test-run: {run}}}}}\nspec:\n  selector: {{matchLabels: {{tier: premium}}}}\n  exposeTo: {{namespaces: [{}]}}\n",
        team.name()
    );
    apply_yaml(&client, shared.name(), &grant).await?;
    wait_phase(&team_features, "aika", Phase::Ready).await?;

    // Revoking the grant does not stop a running feature, but it is reported.
    let policies: Api<PremiumPolicy> = shared.api();
    policies.delete("expose", &DeleteParams::default()).await?;
    let degraded = wait_phase(&team_features, "aika", Phase::Degraded).await?;
    let cond = degraded
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(cond.reason, "DependencyUnhealthy");
    assert!(
        cond.message.contains("DependencyNotPermitted"),
        "{}",
        cond.message
    );

    let shared_features: Api<PremiumFeature> = shared.api();
    team_features
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    shared_features
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    eventually(
        "both namespaces' features to be torn down",
        DEFAULT_TIMEOUT,
        || {
            let (a, b) = (team_features.clone(), shared_features.clone());
            async move {
                let left = a.list(&ListParams::default()).await?.items.len()
                    + b.list(&ListParams::default()).await?.items.len();
                Ok((left == 0).then_some(()))
            }
        },
    )
    .await?;
    drop(operator);
    team.delete().await?;
    shared.delete().await
}
