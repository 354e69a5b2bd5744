//! The PremiumPolicy reconciler (matched features, budget, conflicts) and the policy lookups
//! the feature reconciler shares with it.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::api::{Api, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{field, instrument};

use super::Error;
use super::context::{Cached, Context, lock};
use super::index::Wake;
use crate::api::{PremiumFeature, PremiumPolicy, PremiumPolicyStatus};
use crate::core::budget::BudgetAllocation;
use crate::core::graph::{DependencyFacts, FeatureKey};
use crate::core::policy::decide::{self, PolicyView};
use crate::core::policy::selects;
use crate::core::status::now_time;
use crate::runtime::metrics::KindLabels;

const CONTROLLER: &str = "policy";

pub use decide::FeatureBudget;

/// Whether a feature runs: the Deployment it controls asks for replicas. A running feature
/// keeps its place in a budget ahead of every feature that does not run yet.
pub fn is_running(ctx: &Context, feature: &PremiumFeature) -> bool {
    let (Some(namespace), Some(uid)) = (feature.namespace(), feature.uid()) else {
        return false;
    };
    ctx.stores
        .deployments
        .get(&namespace, &feature.name_any())
        .is_some_and(|d| d.controlled_by(&uid) && d.written.replicas.unwrap_or(0) > 0)
}

/// The budget of one policy shared among the features it selects (see
/// [`decide::allocation`]), with the levels of the graph and what runs in the cluster.
///
/// Cached per budget version (see `Context::allocation`), which a Deployment scaled up or down
/// does not bump: the admitted set does not depend on whether an admitted feature has started
/// yet, or a waiting one has stopped yet, so only a real change needs a new allocation.
pub fn allocation(
    ctx: &Context,
    policy: &PremiumPolicy,
    policies: &[PremiumPolicy],
    graph: &impl DependencyFacts,
    features: impl FnOnce() -> Vec<Cached<PremiumFeature>>,
) -> Arc<BudgetAllocation> {
    ctx.allocation(policy, || {
        let features = features();
        decide::allocation(
            policy,
            features.iter().map(AsRef::as_ref),
            policies,
            |key| graph.level(key),
            |f| is_running(ctx, f),
        )
    })
}

/// What the budgets of the policies selecting `feature` allow it (see
/// [`decide::feature_budget`]).
pub fn budget_for_feature(
    ctx: &Context,
    feature: &PremiumFeature,
    graph: &impl DependencyFacts,
) -> FeatureBudget {
    let namespace = feature.namespace().unwrap_or_default();
    let policies = ctx.policies_in(&namespace);
    let budgeted: Vec<&PremiumPolicy> = policies
        .iter()
        .filter(|p| selects(p, feature) && decide::budget(p).is_some())
        .collect();
    if budgeted.is_empty() {
        return FeatureBudget::default();
    }
    // Read only when an allocation is not cached.
    let features = std::cell::OnceCell::new();
    let allocations: Vec<(&PremiumPolicy, Arc<BudgetAllocation>)> = budgeted
        .into_iter()
        .map(|p| {
            let all = || features.get_or_init(|| ctx.features_in(&namespace)).clone();
            (p, allocation(ctx, p, &policies, graph, all))
        })
        .collect();
    decide::feature_budget(
        &feature.name_any(),
        allocations.iter().map(|(p, a)| (*p, a.as_ref())),
    )
}

/// The start-up limits (`startup.maxConcurrent`) of the policies selecting a feature.
pub fn startup_limits(ctx: &Context, feature: &PremiumFeature) -> Vec<(FeatureKey, u32)> {
    let namespace = feature.namespace().unwrap_or_default();
    ctx.policies_in(&namespace)
        .iter()
        .filter(|p| selects(p, feature))
        .filter_map(|p| {
            let max = p.spec.startup.as_ref()?.max_concurrent?;
            Some((
                FeatureKey::new(namespace.clone(), p.name_any()),
                max.max(1) as u32,
            ))
        })
        .collect()
}

#[instrument(skip_all, fields(policy = field::Empty, namespace = field::Empty))]
pub async fn reconcile(
    guard: Arc<DeserializeGuard<PremiumPolicy>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let Some(policy) = super::valid_or_report(&guard, &ctx, CONTROLLER) else {
        return Ok(Action::await_change());
    };
    let span = tracing::Span::current();
    span.record("policy", policy.name_any());
    span.record("namespace", policy.namespace().unwrap_or_default());
    super::measured(&ctx, CONTROLLER, reconcile_policy(policy, &ctx)).await
}

/// Gathers what the policy's decision needs, lets the core decide, and applies the outcome:
/// wakes the features whose budget share moved, writes the status if it changed.
async fn reconcile_policy(policy: &PremiumPolicy, ctx: &Context) -> Result<Action, Error> {
    if policy.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = policy
        .namespace()
        .ok_or_else(|| Error::Invalid("PremiumPolicy without a namespace".into()))?;
    let features = ctx.features_in(&namespace);
    let policies = ctx.policies_in(&namespace);
    let graph = ctx.graph();
    // Make sure the index knows this exact version (the watch may be a step behind a trigger).
    let wake = lock(&ctx.index).apply_policy(policy, features.iter().map(|f| f.as_ref()));
    ctx.wake(Wake {
        policies: Default::default(),
        ..wake
    });

    let allocation = allocation(ctx, policy, &policies, &graph, || features.clone());
    let refs: Vec<&PremiumFeature> = features.iter().map(AsRef::as_ref).collect();
    let now = now_time();
    let decision = decide::decide(&PolicyView {
        policy,
        features: &refs,
        policies: &policies,
        allocation: &allocation,
        now: &now,
    });
    if let Some(shares) = decision.shares {
        let key = FeatureKey::new(namespace.clone(), policy.name_any());
        wake_moved_shares(ctx, key, shares, &decision.selected);
    }
    if decision.write_status {
        write_status(ctx, policy, &decision.status).await?;
    }
    Ok(Action::await_change())
}

/// Remembers the budget shares of policy `key` and wakes the features whose share moved.
fn wake_moved_shares(
    ctx: &Context,
    key: FeatureKey,
    shares: BTreeMap<String, u32>,
    selected: &[&PremiumFeature],
) {
    let namespace = key.namespace.clone();
    let before = lock(&ctx.budget_shares)
        .insert(key, shares.clone())
        .unwrap_or_default();
    let mut wake = Wake::default();
    for f in decide::moved_shares(&before, &shares, selected) {
        wake.feature(
            FeatureKey::new(namespace.clone(), f.name_any()),
            f.status.is_some(),
        );
    }
    ctx.wake(wake);
}

async fn write_status(
    ctx: &Context,
    policy: &PremiumPolicy,
    status: &PremiumPolicyStatus,
) -> Result<(), Error> {
    let (namespace, name) = (policy.namespace().unwrap_or_default(), policy.name_any());
    let api: Api<PremiumPolicy> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = json!({
        "apiVersion": "premium.dev/v1alpha1",
        "kind": "PremiumPolicy",
        "status": status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(&ctx.settings.field_manager).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|e| {
        Error::kube(
            format!("writing the status of policy {namespace}/{name}"),
            e,
        )
    })?;
    ctx.metrics
        .status_writes
        .get_or_create(&KindLabels {
            kind: "PremiumPolicy",
        })
        .inc();
    Ok(())
}
