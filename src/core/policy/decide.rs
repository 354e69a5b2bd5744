//! A policy's reconcile decided from what the caches hold: which features it selects, how its
//! replica budget is shared and who waits, which of its settings lose to other policies, and
//! the status that says so. The controller gathers the inputs and writes the outcome; every
//! rule is here, where a table of cases can check it without a cluster.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use super::{conflicts_by_policy, effective_policy, selects};
use crate::api::conditions::{self as cond, reason};
use crate::api::{BudgetStatus, PremiumFeature, PremiumPolicy, PremiumPolicyStatus};
use crate::core::budget::{BudgetAllocation, PoolRequest, allocate};
use crate::core::graph::FeatureKey;
use crate::core::settings::pool_settings;
use crate::core::shorten;
use crate::core::status::{Stamp, set_condition};

/// Longest list of names a condition message carries.
const MAX_LIST_BYTES: usize = 2000;

/// The replica budget a policy shares among its features, if it has one.
pub fn budget(policy: &PremiumPolicy) -> Option<u32> {
    let budget = policy.spec.pool.as_ref()?.budget.as_ref()?;
    Some(u32::try_from(budget.max_replicas).unwrap_or(0))
}

/// Whether a feature claims a share of the budgets of the policies selecting it: a suspended
/// feature, or one being deleted, will run nothing.
pub fn claims_budget(feature: &PremiumFeature) -> bool {
    !feature.spec.suspend && feature.metadata.deletion_timestamp.is_none()
}

/// The claims on `policy`'s budget: one per feature it selects that claims a share, with the
/// pool settings the feature's own spec and its effective policy give it. `level` is the
/// feature's start-up level (none on or behind a cycle: such features are admitted last, they
/// cannot start anyway); `running` says whether it runs already (it keeps its place then).
/// One function for the operator and `check`, so both share a budget out the same way.
pub fn budget_requests<'a>(
    policy: &PremiumPolicy,
    features: impl IntoIterator<Item = &'a PremiumFeature>,
    policies: &[PremiumPolicy],
    level: impl Fn(&FeatureKey) -> Option<u32>,
    running: impl Fn(&PremiumFeature) -> bool,
) -> Vec<PoolRequest> {
    features
        .into_iter()
        .filter(|f| selects(policy, f) && claims_budget(f))
        .map(|f| {
            let pool = pool_settings(f, &effective_policy(f, policies).spec);
            let key = FeatureKey::new(f.namespace().unwrap_or_default(), f.name_any());
            PoolRequest {
                name: f.name_any(),
                min: pool.min_replicas,
                max: pool.max_replicas,
                weight: pool.weight,
                level: level(&key).unwrap_or(u32::MAX),
                running: running(f),
            }
        })
        .collect()
}

/// How `policy`'s budget is shared among the features it selects (see [`budget_requests`]).
pub fn allocation<'a>(
    policy: &PremiumPolicy,
    features: impl IntoIterator<Item = &'a PremiumFeature>,
    policies: &[PremiumPolicy],
    level: impl Fn(&FeatureKey) -> Option<u32>,
    running: impl Fn(&PremiumFeature) -> bool,
) -> BudgetAllocation {
    allocate(
        budget(policy),
        &budget_requests(policy, features, policies, level, running),
    )
}

/// What the budgets of the selecting policies allow one feature.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FeatureBudget {
    /// The smallest HPA maximum any budget grants; `None` without budgets.
    pub max_replicas: Option<u32>,
    /// Why the feature waits, when a budget cannot hold its minimum.
    pub waiting: Option<String>,
}

/// One feature's share of the budgets of the policies that select it, each given with its
/// allocation: the smallest maximum any of them grants, and why it waits if one cannot hold
/// its minimum.
pub fn feature_budget<'a>(
    name: &str,
    budgets: impl IntoIterator<Item = (&'a PremiumPolicy, &'a BudgetAllocation)>,
) -> FeatureBudget {
    let mut out = FeatureBudget::default();
    for (policy, allocation) in budgets {
        if let Some(max) = allocation.max_replicas.get(name) {
            out.max_replicas = Some(out.max_replicas.map_or(*max, |m| m.min(*max)));
        } else if allocation.waiting.iter().any(|w| w == name) {
            let oversized = allocation.oversized.iter().any(|w| w == name);
            out.waiting = Some(why_waiting(policy, oversized));
        }
    }
    out
}

fn why_waiting(policy: &PremiumPolicy, oversized: bool) -> String {
    let (name, budget) = (policy.name_any(), budget(policy).unwrap_or(0));
    if oversized {
        format!(
            "this feature's minReplicas is more than the whole replica budget of policy {name} ({budget}): it is skipped and cannot start until minReplicas is lowered or pool.budget.maxReplicas raised"
        )
    } else {
        format!(
            "the replica budget of policy {name} ({budget}) cannot hold this feature's minReplicas next to the running features and those ranked ahead of it; it starts when enough is free (raise pool.budget.maxReplicas or lower minReplicas)"
        )
    }
}

/// What a policy's reconcile is decided from.
#[derive(Debug, Clone, Copy)]
pub struct PolicyView<'a> {
    pub policy: &'a PremiumPolicy,
    /// The valid features of the policy's namespace.
    pub features: &'a [&'a PremiumFeature],
    /// The valid policies of the policy's namespace (this one among them).
    pub policies: &'a [PremiumPolicy],
    /// The policy's budget as shared (see [`allocation`]); ignored without a budget.
    pub allocation: &'a BudgetAllocation,
    pub now: &'a Time,
}

/// What a policy's reconcile does.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDecision<'a> {
    /// The features the policy selects.
    pub selected: Vec<&'a PremiumFeature>,
    /// The HPA maximum its budget grants each admitted feature; `None` without a budget.
    pub shares: Option<BTreeMap<String, u32>>,
    pub status: PremiumPolicyStatus,
    /// The status differs from the one stored: write it.
    pub write_status: bool,
}

/// Decides a policy's reconcile: its selection, its budget, its conflicts and its status.
pub fn decide<'a>(view: &PolicyView<'a>) -> PolicyDecision<'a> {
    let policy = view.policy;
    let selected: Vec<&PremiumFeature> = view
        .features
        .iter()
        .copied()
        .filter(|f| selects(policy, f))
        .collect();
    let allocation = budget(policy).map(|b| (b, view.allocation));
    let conflicts = lost_settings(policy, &selected, view.policies);
    let previous = policy.status.as_ref().map_or(&[][..], |s| &s.conditions);
    let stamp = Stamp {
        generation: policy.metadata.generation,
        now: view.now,
    };
    let status = PremiumPolicyStatus {
        observed_generation: policy.metadata.generation,
        matched_features: Some(clamp(selected.len())),
        budget: allocation.map(|(_, a)| BudgetStatus {
            requested: clamp(a.requested as usize),
            allocated: clamp(a.allocated as usize),
            waiting: a.waiting.clone(),
        }),
        conditions: conditions(previous, stamp, selected.len(), allocation, &conflicts),
    };
    PolicyDecision {
        shares: allocation.map(|(_, a)| a.max_replicas.clone()),
        write_status: policy.status.as_ref() != Some(&status),
        selected,
        status,
    }
}

fn clamp(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The settings of `policy` that lose to higher-ranked policies on the features it selects.
fn lost_settings(
    policy: &PremiumPolicy,
    selected: &[&PremiumFeature],
    policies: &[PremiumPolicy],
) -> Vec<String> {
    let merges: Vec<(String, _)> = selected
        .iter()
        .map(|f| (f.name_any(), effective_policy(f, policies)))
        .collect();
    let mut by_policy = conflicts_by_policy(merges.iter().map(|(n, e)| (n.as_str(), e)));
    by_policy.remove(&policy.name_any()).unwrap_or_default()
}

/// One condition as decided: its type, status, reason and message.
type Verdict = (&'static str, bool, &'static str, String);

/// The policy's conditions: Ready, Conflicting and BudgetExceeded, in that order.
fn conditions(
    previous: &[Condition],
    stamp: Stamp<'_>,
    selected: usize,
    allocation: Option<(u32, &BudgetAllocation)>,
    conflicts: &[String],
) -> Vec<Condition> {
    let mut out = Vec::new();
    for (type_, status, reason, message) in [
        ready(selected, allocation),
        conflicting(conflicts),
        budget_exceeded(allocation),
    ] {
        set_condition(&mut out, previous, type_, status, reason, &message, stamp);
    }
    out
}

/// The budget and the waiting list, when the budget cannot hold every minimum.
fn exceeded(allocation: Option<(u32, &BudgetAllocation)>) -> Option<(u32, String)> {
    let (budget, a) = allocation.filter(|(_, a)| a.exceeded)?;
    Some((budget, waiting_list(a)))
}

fn ready(selected: usize, allocation: Option<(u32, &BudgetAllocation)>) -> Verdict {
    match exceeded(allocation) {
        Some((_, waiting)) => (
            cond::READY,
            false,
            reason::BUDGET_EXCEEDED,
            format!(
                "the minimum replicas of the selected features exceed the budget; waiting: {waiting}"
            ),
        ),
        None => (
            cond::READY,
            true,
            reason::RECONCILED,
            format!("applies to {selected} features"),
        ),
    }
}

fn conflicting(conflicts: &[String]) -> Verdict {
    if conflicts.is_empty() {
        return (cond::CONFLICTING, false, reason::NO_CONFLICT, String::new());
    }
    let message = format!(
        "overridden by higher-priority policies: {}",
        conflicts.join("; ")
    );
    (
        cond::CONFLICTING,
        true,
        reason::POLICY_OVERRIDDEN,
        shorten(&message, MAX_LIST_BYTES),
    )
}

fn budget_exceeded(allocation: Option<(u32, &BudgetAllocation)>) -> Verdict {
    match (allocation, exceeded(allocation)) {
        (None, _) => (
            cond::BUDGET_EXCEEDED,
            false,
            reason::NO_BUDGET,
            String::new(),
        ),
        (Some(_), None) => (
            cond::BUDGET_EXCEEDED,
            false,
            reason::WITHIN_BUDGET,
            String::new(),
        ),
        (Some(_), Some((budget, waiting))) => (
            cond::BUDGET_EXCEEDED,
            true,
            reason::BUDGET_EXCEEDED,
            format!(
                "budget {budget} cannot hold the selected features' minReplicas; waiting: {waiting}"
            ),
        ),
    }
}

/// The waiting features for a condition message, those that can never fit marked, cut to a
/// size a condition can carry.
fn waiting_list(allocation: &BudgetAllocation) -> String {
    let names: Vec<String> = allocation
        .waiting
        .iter()
        .map(|n| {
            if allocation.oversized.contains(n) {
                format!("{n} (minReplicas above the whole budget)")
            } else {
                n.clone()
            }
        })
        .collect();
    shorten(&names.join(", "), MAX_LIST_BYTES)
}

/// The selected features whose share of the budget moved from `before` to `after`: they are
/// reconciled again to resize their autoscaler or to start.
pub fn moved_shares<'a>(
    before: &BTreeMap<String, u32>,
    after: &BTreeMap<String, u32>,
    selected: &[&'a PremiumFeature],
) -> Vec<&'a PremiumFeature> {
    selected
        .iter()
        .copied()
        .filter(|f| {
            let name = f.name_any();
            before.get(&name) != after.get(&name)
        })
        .collect()
}

#[cfg(test)]
mod tests;
