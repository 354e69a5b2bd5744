//! Policy selection and the field-by-field merge of every policy that selects a feature.
//!
//! The merge works on the JSON form of the policy spec: each leaf (a scalar or a list) is taken
//! from the highest-priority policy that sets it (ties: name order). That keeps the rule the
//! same for every field, present and future, without per-field code.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use serde_json::{Map, Value};

use crate::api::{PremiumFeature, PremiumPolicy, PremiumPolicySpec};
use crate::core::graph::FeatureKey;

pub mod decide;

/// Fields that belong to one policy and are never merged across policies: what it selects, how
/// it ranks, the budget it shares among its own features, its start-up slots and its grants.
const NOT_MERGED: &[&str] = &[
    "selector",
    "priority",
    "exposeTo",
    "pool.budget",
    "startup.maxConcurrent",
];

/// Whether a label selector matches a set of labels, with Kubernetes semantics (an empty
/// selector matches everything; an unknown operator matches nothing).
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    if let Some(match_labels) = &selector.match_labels {
        for (k, v) in match_labels {
            if labels.get(k) != Some(v) {
                return false;
            }
        }
    }
    for expr in selector.match_expressions.iter().flatten() {
        let value = labels.get(&expr.key);
        let values = expr.values.as_deref().unwrap_or_default();
        let ok = match expr.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Whether `policy` selects `feature` (same namespace, selector matches its labels).
pub fn selects(policy: &PremiumPolicy, feature: &PremiumFeature) -> bool {
    policy.namespace() == feature.namespace()
        && selector_matches(&policy.spec.selector, feature.labels())
}

/// Whether `policy` lets features of `dependent_namespace` depend on `target` (whose labels
/// are `labels`) across namespaces: it lives in the target's namespace, selects the target, and
/// lists the dependent's namespace in `exposeTo.namespaces`. Labels rather than a typed
/// feature, so that `check` can judge a target whose spec has errors.
pub fn grants(
    policy: &PremiumPolicy,
    target: &FeatureKey,
    labels: &BTreeMap<String, String>,
    dependent_namespace: &str,
) -> bool {
    policy.metadata.namespace.as_deref() == Some(target.namespace.as_str())
        && selector_matches(&policy.spec.selector, labels)
        && policy
            .spec
            .expose_to
            .as_ref()
            .is_some_and(|e| e.namespaces.iter().any(|n| n == dependent_namespace))
}

/// The grant rule, for the operator's graph and `check` alike: a feature of
/// `dependent_namespace` may depend on `target` when a policy of the target's namespace grants
/// it (see [`grants`]).
pub fn permitted<'a>(
    policies: impl IntoIterator<Item = &'a PremiumPolicy>,
    target: &FeatureKey,
    labels: &BTreeMap<String, String>,
    dependent_namespace: &str,
) -> bool {
    policies
        .into_iter()
        .any(|p| grants(p, target, labels, dependent_namespace))
}

/// Policies ordered the way the merge ranks them: priority descending, then name.
pub fn rank(mut policies: Vec<&PremiumPolicy>) -> Vec<&PremiumPolicy> {
    policies.sort_by(|a, b| {
        b.spec
            .priority
            .cmp(&a.spec.priority)
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
    policies
}

/// A setting of a lower-ranked policy that lost to a higher-ranked one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The policy whose value was not used.
    pub loser: String,
    /// The policy whose value won.
    pub winner: String,
    /// Dotted field path, such as `circuitBreaker.maxConnections`.
    pub field: String,
}

/// The settings that apply to one feature, merged from every policy that selects it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EffectivePolicy {
    /// The merged settings (`selector`, `priority`, `exposeTo`, `pool.budget` and
    /// `startup.maxConcurrent` are left empty: they belong to each policy alone).
    pub spec: PremiumPolicySpec,
    /// The selecting policies, highest rank first.
    pub policies: Vec<String>,
    /// Settings that lost to a higher-ranked policy with a different value.
    pub conflicts: Vec<Conflict>,
}

/// Merges the policies that select a feature, field by field.
pub fn effective_policy(feature: &PremiumFeature, policies: &[PremiumPolicy]) -> EffectivePolicy {
    let selecting = rank(policies.iter().filter(|p| selects(p, feature)).collect());
    merge(&selecting)
}

/// Merges already-ranked policies (highest first).
pub fn merge(ranked: &[&PremiumPolicy]) -> EffectivePolicy {
    let mut winners: BTreeMap<String, (String, Value)> = BTreeMap::new();
    let mut conflicts = Vec::new();
    for policy in ranked {
        let name = policy.name_any();
        let Ok(json) = serde_json::to_value(&policy.spec) else {
            continue;
        };
        let mut leaves = Vec::new();
        flatten("", &json, &mut leaves);
        for (path, value) in leaves {
            if NOT_MERGED
                .iter()
                .any(|skip| path == *skip || path.starts_with(&format!("{skip}.")))
            {
                continue;
            }
            match winners.get(&path) {
                None => {
                    winners.insert(path, (name.clone(), value));
                }
                Some((winner, won)) if *won != value => conflicts.push(Conflict {
                    loser: name.clone(),
                    winner: winner.clone(),
                    field: path,
                }),
                Some(_) => {}
            }
        }
    }
    let mut merged = Value::Object(Map::new());
    for (path, (_, value)) in winners {
        insert(&mut merged, &path, value);
    }
    // Every leaf came from a valid spec, so the merge of them is valid too; fall back to the
    // empty spec rather than fail if a future field breaks that.
    if let Value::Object(map) = &mut merged {
        map.entry("selector")
            .or_insert_with(|| Value::Object(Map::new()));
    }
    let spec = serde_json::from_value(merged).unwrap_or_default();
    EffectivePolicy {
        spec,
        policies: ranked.iter().map(|p| p.name_any()).collect(),
        conflicts,
    }
}

fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&path, v, out);
            }
        }
        Value::Null => {}
        other if !prefix.is_empty() => out.push((prefix.to_string(), other.clone())),
        _ => {}
    }
}

fn insert(root: &mut Value, path: &str, value: Value) {
    let mut node = root;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let Value::Object(map) = node else { return };
        if parts.peek().is_none() {
            map.insert(part.to_string(), value);
            return;
        }
        node = map
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

/// Conflicts grouped by the losing policy, across every feature: what each policy's
/// `Conflicting` condition reports.
pub fn conflicts_by_policy<'a>(
    merges: impl IntoIterator<Item = (&'a str, &'a EffectivePolicy)>,
) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (feature, eff) in merges {
        for c in &eff.conflicts {
            out.entry(c.loser.clone()).or_default().push(format!(
                "{} on {feature} (overridden by {})",
                c.field, c.winner
            ));
        }
    }
    for v in out.values_mut() {
        v.sort();
        v.dedup();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CircuitBreaker, PremiumFeatureSpec, Timeouts};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn feature(labels: &[(&str, &str)]) -> PremiumFeature {
        let mut f = PremiumFeature::new("aika", PremiumFeatureSpec::default());
        f.metadata.namespace = Some("portal".into());
        f.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        f
    }

    fn policy(name: &str, priority: i32, spec: PremiumPolicySpec) -> PremiumPolicy {
        let mut p = PremiumPolicy::new(
            name,
            PremiumPolicySpec {
                priority,
                selector: LabelSelector {
                    match_labels: Some([("tier".to_string(), "premium".to_string())].into()),
                    ..Default::default()
                },
                ..spec
            },
        );
        p.metadata.namespace = Some("portal".into());
        p
    }

    fn breaker(max_connections: i64) -> Option<CircuitBreaker> {
        Some(CircuitBreaker {
            max_connections: Some(max_connections),
            ..Default::default()
        })
    }

    #[test]
    fn selector_semantics() {
        let labels: BTreeMap<String, String> = [("tier".to_string(), "premium".to_string())].into();
        assert!(selector_matches(&LabelSelector::default(), &labels));
        let expr = |op: &str, values: Option<Vec<&str>>| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: op.into(),
                values: values.map(|v| v.into_iter().map(String::from).collect()),
            }]),
            ..Default::default()
        };
        assert!(selector_matches(
            &expr("In", Some(vec!["premium"])),
            &labels
        ));
        assert!(!selector_matches(
            &expr("NotIn", Some(vec!["premium"])),
            &labels
        ));
        assert!(selector_matches(&expr("Exists", None), &labels));
        assert!(!selector_matches(&expr("DoesNotExist", None), &labels));
        assert!(!selector_matches(&expr("Bogus", None), &labels));
    }

    #[test]
    fn other_namespace_is_never_selected() {
        let p = policy("p", 0, PremiumPolicySpec::default());
        let mut f = feature(&[("tier", "premium")]);
        assert!(selects(&p, &f));
        f.metadata.namespace = Some("elsewhere".into());
        assert!(!selects(&p, &f));
    }

    /// The grant rule, case by case: namespace of the policy, its selector, its exposeTo.
    #[test]
    fn grants_need_the_targets_namespace_a_matching_selector_and_the_dependents_namespace() {
        let exposing = |namespaces: &[&str]| {
            let mut p = policy("p", 0, PremiumPolicySpec::default());
            p.spec.expose_to = Some(crate::api::ExposeTo {
                namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
            });
            p
        };
        let target = FeatureKey::new("portal", "catalog");
        let premium: BTreeMap<String, String> = [("tier".into(), "premium".into())].into();
        let free: BTreeMap<String, String> = [("tier".into(), "free".into())].into();
        let elsewhere = FeatureKey::new("other", "catalog");
        let cases = [
            (exposing(&["team-a"]), &target, &premium, "team-a", true),
            (
                exposing(&["team-a", "team-b"]),
                &target,
                &premium,
                "team-b",
                true,
            ),
            (exposing(&["team-a"]), &target, &premium, "team-b", false),
            (exposing(&["team-a"]), &target, &free, "team-a", false),
            (exposing(&["team-a"]), &elsewhere, &premium, "team-a", false),
            (exposing(&[]), &target, &premium, "team-a", false),
            (
                policy("p", 0, PremiumPolicySpec::default()),
                &target,
                &premium,
                "team-a",
                false,
            ),
        ];
        for (i, (p, target, labels, dependent, want)) in cases.iter().enumerate() {
            assert_eq!(grants(p, target, labels, dependent), *want, "case {i}");
            assert_eq!(
                permitted(
                    [&policy("q", 0, PremiumPolicySpec::default()), p],
                    target,
                    labels,
                    dependent
                ),
                *want,
                "case {i}"
            );
        }
        assert!(!permitted([], &target, &premium, "team-a"));
    }

    #[test]
    fn higher_priority_wins_field_by_field_and_losers_are_named() {
        let defaults = policy(
            "premium-defaults",
            100,
            PremiumPolicySpec {
                circuit_breaker: Some(CircuitBreaker {
                    max_connections: Some(1024),
                    max_requests: Some(1024),
                    ..Default::default()
                }),
                timeouts: Some(Timeouts {
                    connect: Some("1s".into()),
                    request: Some("15s".into()),
                }),
                ..Default::default()
            },
        );
        let strict = policy(
            "aika-strict",
            200,
            PremiumPolicySpec {
                circuit_breaker: breaker(64),
                ..Default::default()
            },
        );
        let eff = effective_policy(&feature(&[("tier", "premium")]), &[defaults, strict]);
        assert_eq!(eff.policies, vec!["aika-strict", "premium-defaults"]);
        let cb = eff.spec.circuit_breaker.unwrap();
        assert_eq!(cb.max_connections, Some(64));
        assert_eq!(cb.max_requests, Some(1024));
        assert_eq!(eff.spec.timeouts.unwrap().request.as_deref(), Some("15s"));
        assert_eq!(
            eff.conflicts,
            vec![Conflict {
                loser: "premium-defaults".into(),
                winner: "aika-strict".into(),
                field: "circuitBreaker.maxConnections".into()
            }]
        );
    }

    #[test]
    fn ties_go_to_the_name_that_sorts_first() {
        let a = policy(
            "a",
            5,
            PremiumPolicySpec {
                circuit_breaker: breaker(1),
                ..Default::default()
            },
        );
        let b = policy(
            "b",
            5,
            PremiumPolicySpec {
                circuit_breaker: breaker(2),
                ..Default::default()
            },
        );
        let f = feature(&[("tier", "premium")]);
        let one = effective_policy(&f, &[b.clone(), a.clone()]);
        let two = effective_policy(&f, &[a, b]);
        assert_eq!(one, two);
        assert_eq!(one.spec.circuit_breaker.unwrap().max_connections, Some(1));
    }

    #[test]
    fn equal_values_are_not_conflicts_and_unselected_policies_do_nothing() {
        let a = policy(
            "a",
            1,
            PremiumPolicySpec {
                circuit_breaker: breaker(7),
                ..Default::default()
            },
        );
        let b = policy(
            "b",
            2,
            PremiumPolicySpec {
                circuit_breaker: breaker(7),
                ..Default::default()
            },
        );
        let eff = effective_policy(&feature(&[("tier", "premium")]), &[a, b]);
        assert!(eff.conflicts.is_empty());
        let none = effective_policy(
            &feature(&[("tier", "free")]),
            &[policy("a", 1, PremiumPolicySpec::default())],
        );
        assert!(none.policies.is_empty());
        assert_eq!(none.spec, PremiumPolicySpec::default());
    }

    #[test]
    fn per_policy_fields_are_not_merged() {
        let a = policy(
            "a",
            1,
            PremiumPolicySpec {
                pool: Some(crate::api::PolicyPool {
                    budget: Some(crate::api::Budget { max_replicas: 10 }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        let eff = effective_policy(&feature(&[("tier", "premium")]), &[a]);
        assert!(eff.spec.pool.and_then(|p| p.budget).is_none());
    }

    /// The deletion guard merges like any other field: the higher-ranked policy's mode wins,
    /// the loser is reported, and a policy that does not set it leaves the other's.
    #[test]
    fn deletion_mode_is_merged_and_its_conflicts_reported() {
        use crate::api::{Deletion, WhileDependents};
        use crate::core::settings::while_dependents;
        let mode = |m: WhileDependents| PremiumPolicySpec {
            deletion: Some(Deletion {
                while_dependents: Some(m),
            }),
            ..Default::default()
        };
        let f = feature(&[("tier", "premium")]);
        let block = policy("block", 10, mode(WhileDependents::Block));
        let cascade = policy("cascade", 1, mode(WhileDependents::Cascade));
        let other = policy("other", 50, PremiumPolicySpec::default());
        let eff = effective_policy(&f, &[cascade.clone(), block, other.clone()]);
        assert_eq!(while_dependents(&eff.spec), WhileDependents::Block);
        assert_eq!(
            eff.conflicts,
            vec![Conflict {
                loser: "cascade".into(),
                winner: "block".into(),
                field: "deletion.whileDependents".into(),
            }]
        );
        let eff = effective_policy(&f, &[cascade, other.clone()]);
        assert_eq!(while_dependents(&eff.spec), WhileDependents::Cascade);
        assert!(eff.conflicts.is_empty());
        // Unset everywhere: deletion proceeds, as before the field existed.
        let eff = effective_policy(&f, &[other]);
        assert_eq!(while_dependents(&eff.spec), WhileDependents::Proceed);
    }

    #[test]
    fn conflicts_grouped_by_loser() {
        let eff = EffectivePolicy {
            conflicts: vec![Conflict {
                loser: "l".into(),
                winner: "w".into(),
                field: "timeouts.connect".into(),
            }],
            ..Default::default()
        };
        let by = conflicts_by_policy([("aika", &eff), ("aika", &eff)]);
        assert_eq!(by["l"], vec!["timeouts.connect on aika (overridden by w)"]);
    }
}
