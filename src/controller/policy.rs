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
use crate::api::conditions::{self as cond, reason};
use crate::api::{BudgetStatus, PremiumFeature, PremiumPolicy, PremiumPolicyStatus};
use crate::core::budget::{BudgetAllocation, PoolRequest, allocate};
use crate::core::graph::{DependencyFacts, FeatureKey};
use crate::core::policy::{conflicts_by_policy, effective_policy, selects};
use crate::core::settings::pool_settings;
use crate::core::shorten;
use crate::core::status::{Stamp, now_time, set_condition};
use crate::runtime::metrics::KindLabels;

const CONTROLLER: &str = "policy";

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

/// The budget of one policy shared among the features it selects; `running` says which of
/// them run already.
///
/// Cached per budget version (see `Context::allocation`), which a Deployment scaled up or down
/// does not bump: the admitted set does not depend on whether an admitted feature has started
/// yet, or a waiting one has stopped yet, so only a real change needs a new allocation.
pub fn allocation(
    policy: &PremiumPolicy,
    features: &[Cached<PremiumFeature>],
    policies: &[PremiumPolicy],
    graph: &impl DependencyFacts,
    running: impl Fn(&PremiumFeature) -> bool,
) -> BudgetAllocation {
    let budget = policy
        .spec
        .pool
        .as_ref()
        .and_then(|p| p.budget.as_ref())
        .map(|b| b.max_replicas.max(0) as u32);
    let requests: Vec<PoolRequest> = features
        .iter()
        .filter(|f| selects(policy, f) && !f.spec.suspend && f.meta().deletion_timestamp.is_none())
        .map(|f| {
            let eff = effective_policy(f, policies);
            let pool = pool_settings(f, &eff.spec);
            let key = FeatureKey::new(f.namespace().unwrap_or_default(), f.name_any());
            PoolRequest {
                name: f.name_any(),
                min: pool.min_replicas,
                max: pool.max_replicas,
                weight: pool.weight,
                // Features on or behind a cycle cannot start anyway: admit them last.
                level: graph.level(&key).unwrap_or(u32::MAX),
                running: running(f),
            }
        })
        .collect();
    allocate(budget, &requests)
}

/// What the budgets of the selecting policies allow one feature.
#[derive(Debug, Default)]
pub struct FeatureBudget {
    /// The smallest HPA maximum any budget grants; `None` without budgets.
    pub max_replicas: Option<u32>,
    /// Why the feature waits, when a budget cannot hold its minimum.
    pub waiting: Option<String>,
}

pub fn budget_for_feature(
    ctx: &Context,
    feature: &PremiumFeature,
    graph: &impl DependencyFacts,
) -> FeatureBudget {
    let namespace = feature.namespace().unwrap_or_default();
    let policies = ctx.policies_in(&namespace);
    let budgeted: Vec<&PremiumPolicy> = policies
        .iter()
        .filter(|p| {
            selects(p, feature)
                && p.spec
                    .pool
                    .as_ref()
                    .and_then(|x| x.budget.as_ref())
                    .is_some()
        })
        .collect();
    if budgeted.is_empty() {
        return FeatureBudget::default();
    }
    let name = feature.name_any();
    let mut out = FeatureBudget::default();
    for p in budgeted {
        let a = ctx.allocation(p, || {
            allocation(p, &ctx.features_in(&namespace), &policies, graph, |f| {
                is_running(ctx, f)
            })
        });
        if let Some(max) = a.max_replicas.get(&name) {
            out.max_replicas = Some(out.max_replicas.map_or(*max, |m| m.min(*max)));
        } else if a.waiting.contains(&name) {
            let budget = p
                .spec
                .pool
                .as_ref()
                .and_then(|x| x.budget.as_ref())
                .map(|b| b.max_replicas)
                .unwrap_or(0);
            out.waiting = Some(if a.oversized.contains(&name) {
                format!(
                    "this feature's minReplicas is more than the whole replica budget of policy {} ({budget}): it is skipped and cannot start until minReplicas is lowered or pool.budget.maxReplicas raised",
                    p.name_any()
                )
            } else {
                format!(
                    "the replica budget of policy {} ({budget}) cannot hold this feature's minReplicas next to the running features and those ranked ahead of it; it starts when enough is free (raise pool.budget.maxReplicas or lower minReplicas)",
                    p.name_any()
                )
            });
        }
    }
    out
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

/// The waiting features for a condition message, those that can never fit marked, cut to a
/// size a condition can carry.
fn waiting_list(alloc: &BudgetAllocation) -> String {
    let names: Vec<String> = alloc
        .waiting
        .iter()
        .map(|n| {
            if alloc.oversized.contains(n) {
                format!("{n} (minReplicas above the whole budget)")
            } else {
                n.clone()
            }
        })
        .collect();
    shorten(&names.join(", "), 2000)
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

async fn reconcile_policy(policy: &PremiumPolicy, ctx: &Context) -> Result<Action, Error> {
    if policy.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = policy
        .namespace()
        .ok_or_else(|| Error::Invalid("PremiumPolicy without a namespace".into()))?;
    let name = policy.name_any();
    let key = FeatureKey::new(namespace.clone(), name.clone());
    let features = ctx.features_in(&namespace);
    let policies = ctx.policies_in(&namespace);
    let graph = ctx.graph();
    // Make sure the index knows this exact version (the watch may be a step behind a trigger).
    let wake = lock(&ctx.index).apply_policy(policy, features.iter().map(|f| f.as_ref()));
    ctx.wake(Wake {
        policies: Default::default(),
        ..wake
    });

    let selected: Vec<&Cached<PremiumFeature>> =
        features.iter().filter(|f| selects(policy, f)).collect();
    let has_budget = policy
        .spec
        .pool
        .as_ref()
        .and_then(|p| p.budget.as_ref())
        .is_some();
    let alloc = ctx.allocation(policy, || {
        allocation(policy, &features, &policies, &graph, |f| is_running(ctx, f))
    });

    // Wake the features whose share of the budget moved.
    if has_budget {
        let shares: BTreeMap<String, u32> = alloc.max_replicas.clone();
        let mut memory = lock(&ctx.budget_shares);
        let before = memory
            .insert(key.clone(), shares.clone())
            .unwrap_or_default();
        let mut wake = Wake::default();
        for f in &selected {
            let n = f.name_any();
            if before.get(&n) == shares.get(&n) {
                continue;
            }
            wake.feature(FeatureKey::new(namespace.clone(), n), f.status.is_some());
        }
        drop(memory);
        ctx.wake(wake);
    }

    let merges: Vec<(String, _)> = selected
        .iter()
        .map(|f| (f.name_any(), effective_policy(f, &policies)))
        .collect();
    let conflicts = conflicts_by_policy(merges.iter().map(|(n, e)| (n.as_str(), e)));
    let mine = conflicts.get(&name).cloned().unwrap_or_default();

    let now = now_time();
    let previous = policy.status.clone().unwrap_or_default();
    let generation = policy.metadata.generation;
    let mut conditions = Vec::new();
    let stamp = Stamp {
        generation,
        now: &now,
    };
    let exceeded = has_budget && alloc.exceeded;
    let waiting = waiting_list(&alloc);
    let (ready_reason, ready_message) = if exceeded {
        (
            reason::BUDGET_EXCEEDED,
            format!(
                "the minimum replicas of the selected features exceed the budget; waiting: {waiting}"
            ),
        )
    } else {
        (
            reason::RECONCILED,
            format!("applies to {} features", selected.len()),
        )
    };
    set_condition(
        &mut conditions,
        &previous.conditions,
        cond::READY,
        !exceeded,
        ready_reason,
        &ready_message,
        stamp,
    );
    let (c_reason, c_message) = if mine.is_empty() {
        (reason::NO_CONFLICT, String::new())
    } else {
        (
            reason::POLICY_OVERRIDDEN,
            shorten(
                &format!(
                    "overridden by higher-priority policies: {}",
                    mine.join("; ")
                ),
                2000,
            ),
        )
    };
    set_condition(
        &mut conditions,
        &previous.conditions,
        cond::CONFLICTING,
        !mine.is_empty(),
        c_reason,
        &c_message,
        stamp,
    );
    let (b_reason, b_message) = match (has_budget, exceeded) {
        (false, _) => (reason::NO_BUDGET, String::new()),
        (true, false) => (reason::WITHIN_BUDGET, String::new()),
        (true, true) => (
            reason::BUDGET_EXCEEDED,
            format!(
                "budget {} cannot hold the selected features' minReplicas; waiting: {}",
                policy
                    .spec
                    .pool
                    .as_ref()
                    .and_then(|p| p.budget.as_ref())
                    .map(|b| b.max_replicas)
                    .unwrap_or(0),
                waiting
            ),
        ),
    };
    set_condition(
        &mut conditions,
        &previous.conditions,
        cond::BUDGET_EXCEEDED,
        exceeded,
        b_reason,
        &b_message,
        stamp,
    );

    let clamp = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    let status = PremiumPolicyStatus {
        observed_generation: generation,
        matched_features: Some(clamp(selected.len() as u32)),
        budget: has_budget.then(|| BudgetStatus {
            requested: clamp(alloc.requested),
            allocated: clamp(alloc.allocated),
            waiting: alloc.waiting.clone(),
        }),
        conditions,
    };
    if policy.status.as_ref() != Some(&status) {
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
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_waiting_list_marks_who_can_never_fit_and_stays_bounded() {
        let mut alloc = allocate(Some(0), &[]);
        alloc.waiting = vec!["big".into(), "later".into()];
        alloc.oversized = vec!["big".into()];
        assert_eq!(
            waiting_list(&alloc),
            "big (minReplicas above the whole budget), later"
        );
        alloc.waiting = (0..1000).map(|i| format!("feature-{i}")).collect();
        assert!(waiting_list(&alloc).len() <= 2000 + '…'.len_utf8());
    }
}
