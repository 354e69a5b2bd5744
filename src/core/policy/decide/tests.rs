//! The policy's decision, case by case: selection, budget sharing and its waiting list,
//! conflicts between policies, and when the status is written.

use super::*;
use crate::api::{
    Budget, CircuitBreaker, FeaturePool, PolicyPool, PremiumFeatureSpec, PremiumPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::jiff::Timestamp;

const NS: &str = "portal";

fn at(second: i64) -> Time {
    Time(Timestamp::from_second(second).unwrap())
}

/// A feature of `portal` with the given tier label and pool.
fn feature(name: &str, tier: &str, min: i32, max: i32) -> PremiumFeature {
    let mut f = PremiumFeature::new(
        name,
        PremiumFeatureSpec {
            pool: Some(FeaturePool {
                min_replicas: Some(min),
                max_replicas: Some(max),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    f.metadata.namespace = Some(NS.into());
    f.metadata.labels = Some([("tier".to_string(), tier.to_string())].into());
    f
}

fn suspended(mut f: PremiumFeature) -> PremiumFeature {
    f.spec.suspend = true;
    f
}

fn deleted(mut f: PremiumFeature) -> PremiumFeature {
    f.metadata.deletion_timestamp = Some(at(5));
    f
}

fn elsewhere(mut f: PremiumFeature) -> PremiumFeature {
    f.metadata.namespace = Some("other".into());
    f
}

/// A policy of `portal` selecting the premium tier.
fn policy(name: &str, priority: i32, budget: Option<i32>) -> PremiumPolicy {
    let mut p = PremiumPolicy::new(
        name,
        PremiumPolicySpec {
            priority,
            selector: LabelSelector {
                match_labels: Some([("tier".to_string(), "premium".to_string())].into()),
                ..Default::default()
            },
            pool: budget.map(|max_replicas| PolicyPool {
                budget: Some(Budget { max_replicas }),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    p.metadata.namespace = Some(NS.into());
    p.metadata.generation = Some(1);
    p
}

fn breaker(mut p: PremiumPolicy, max_connections: i64) -> PremiumPolicy {
    p.spec.circuit_breaker = Some(CircuitBreaker {
        max_connections: Some(max_connections),
        ..Default::default()
    });
    p
}

/// A condition as (status, reason), and a piece of its message.
type Expected = (&'static str, &'static str, &'static str);

struct Case {
    name: &'static str,
    /// The first one is decided.
    policies: Vec<PremiumPolicy>,
    features: Vec<PremiumFeature>,
    running: &'static [&'static str],
    matched: i32,
    ready: Expected,
    conflicting: Expected,
    budget_exceeded: Expected,
    /// (requested, allocated, waiting) of `status.budget`.
    budget: Option<(i32, i32, &'static [&'static str])>,
}

/// A decision, owned: the selection as names.
struct Outcome {
    selected: Vec<String>,
    shares: Option<BTreeMap<String, u32>>,
    status: PremiumPolicyStatus,
    write_status: bool,
}

fn run(case: &Case) -> Outcome {
    let features: Vec<&PremiumFeature> = case.features.iter().collect();
    let policy = &case.policies[0];
    let running = |f: &PremiumFeature| case.running.contains(&f.name_any().as_str());
    let allocation = allocation(
        policy,
        features.iter().copied(),
        &case.policies,
        |_| Some(0),
        running,
    );
    let now = at(100);
    let d = decide(&PolicyView {
        policy,
        features: &features,
        policies: &case.policies,
        allocation: &allocation,
        now: &now,
    });
    Outcome {
        selected: d.selected.iter().map(|f| f.name_any()).collect(),
        shares: d.shares,
        status: d.status,
        write_status: d.write_status,
    }
}

fn condition<'a>(status: &'a PremiumPolicyStatus, type_: &str) -> &'a Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status:?}"))
}

fn cases() -> Vec<Case> {
    let ok_ready = ("True", reason::RECONCILED, "applies to 2 features");
    let no_conflict = ("False", reason::NO_CONFLICT, "");
    vec![
        Case {
            name: "no budget: everyone selected, nothing to share",
            policies: vec![policy("p", 0, None)],
            features: vec![
                feature("a", "premium", 1, 3),
                feature("b", "premium", 2, 2),
                feature("c", "free", 1, 1),
                elsewhere(feature("d", "premium", 1, 1)),
            ],
            running: &[],
            matched: 2,
            ready: ok_ready,
            conflicting: no_conflict,
            budget_exceeded: ("False", reason::NO_BUDGET, ""),
            budget: None,
        },
        Case {
            name: "a budget that holds every minimum",
            policies: vec![policy("p", 0, Some(10))],
            features: vec![feature("a", "premium", 1, 3), feature("b", "premium", 1, 3)],
            running: &[],
            matched: 2,
            ready: ok_ready,
            conflicting: no_conflict,
            budget_exceeded: ("False", reason::WITHIN_BUDGET, ""),
            budget: Some((6, 6, &[])),
        },
        Case {
            name: "a budget too small: the later feature waits and is named",
            policies: vec![policy("p", 0, Some(3))],
            features: vec![feature("a", "premium", 2, 2), feature("b", "premium", 2, 2)],
            running: &[],
            matched: 2,
            ready: ("False", reason::BUDGET_EXCEEDED, "waiting: b"),
            conflicting: no_conflict,
            budget_exceeded: ("True", reason::BUDGET_EXCEEDED, "budget 3 cannot hold"),
            budget: Some((4, 2, &["b"])),
        },
        Case {
            name: "a running feature keeps its place ahead of one that does not run yet",
            policies: vec![policy("p", 0, Some(3))],
            features: vec![feature("a", "premium", 2, 2), feature("b", "premium", 2, 2)],
            running: &["b"],
            matched: 2,
            ready: ("False", reason::BUDGET_EXCEEDED, "waiting: a"),
            conflicting: no_conflict,
            budget_exceeded: ("True", reason::BUDGET_EXCEEDED, "waiting: a"),
            budget: Some((4, 2, &["a"])),
        },
        Case {
            name: "a minimum above the whole budget is marked and stops no one",
            policies: vec![policy("p", 0, Some(3))],
            features: vec![feature("a", "premium", 5, 5), feature("b", "premium", 1, 1)],
            running: &[],
            matched: 2,
            ready: (
                "False",
                reason::BUDGET_EXCEEDED,
                "waiting: a (minReplicas above the whole budget)",
            ),
            conflicting: no_conflict,
            budget_exceeded: ("True", reason::BUDGET_EXCEEDED, "a (minReplicas above"),
            budget: Some((6, 1, &["a"])),
        },
        Case {
            name: "suspended features and features being deleted claim no share",
            policies: vec![policy("p", 0, Some(2))],
            features: vec![
                feature("a", "premium", 2, 2),
                suspended(feature("b", "premium", 2, 2)),
                deleted(feature("c", "premium", 2, 2)),
            ],
            running: &[],
            matched: 3,
            ready: ("True", reason::RECONCILED, "applies to 3 features"),
            conflicting: no_conflict,
            budget_exceeded: ("False", reason::WITHIN_BUDGET, ""),
            budget: Some((2, 2, &[])),
        },
        Case {
            name: "a setting that loses to a higher-priority policy is reported on the loser",
            policies: vec![
                breaker(policy("p", 1, None), 10),
                breaker(policy("q", 2, None), 20),
            ],
            features: vec![feature("a", "premium", 1, 1), feature("b", "premium", 1, 1)],
            running: &[],
            matched: 2,
            ready: ok_ready,
            conflicting: (
                "True",
                reason::POLICY_OVERRIDDEN,
                "circuitBreaker.maxConnections on a (overridden by q); circuitBreaker.maxConnections on b (overridden by q)",
            ),
            budget_exceeded: ("False", reason::NO_BUDGET, ""),
            budget: None,
        },
        Case {
            name: "the winner of a conflict reports none",
            policies: vec![
                breaker(policy("q", 2, None), 20),
                breaker(policy("p", 1, None), 10),
            ],
            features: vec![feature("a", "premium", 1, 1), feature("b", "premium", 1, 1)],
            running: &[],
            matched: 2,
            ready: ok_ready,
            conflicting: no_conflict,
            budget_exceeded: ("False", reason::NO_BUDGET, ""),
            budget: None,
        },
    ]
}

#[test]
fn decisions_case_by_case() {
    for case in cases() {
        let d = run(&case);
        let name = case.name;
        assert_eq!(d.status.matched_features, Some(case.matched), "{name}");
        assert_eq!(d.selected.len() as i32, case.matched, "{name}");
        for (type_, (status, reason, message)) in [
            (cond::READY, case.ready),
            (cond::CONFLICTING, case.conflicting),
            (cond::BUDGET_EXCEEDED, case.budget_exceeded),
        ] {
            let c = condition(&d.status, type_);
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                (status, reason),
                "{name}: {type_}"
            );
            assert!(
                c.message.contains(message),
                "{name}: {type_}: {:?}",
                c.message
            );
            assert_eq!(c.observed_generation, Some(1), "{name}");
        }
        let budget = d.status.budget.as_ref().map(|b| {
            let waiting: Vec<&str> = b.waiting.iter().map(String::as_str).collect();
            (b.requested, b.allocated, waiting)
        });
        let want = case.budget.map(|(r, a, w)| (r, a, w.to_vec()));
        assert_eq!(budget, want, "{name}");
        assert_eq!(d.shares.is_some(), case.budget.is_some(), "{name}");
        assert!(d.write_status, "{name}: a policy without status gets one");
    }
}

/// What was written is not written again; a new generation is, and a condition that keeps its
/// status keeps its transition time.
#[test]
fn the_status_is_written_only_when_it_changes() {
    let mut p = policy("p", 0, Some(3));
    let features = [feature("a", "premium", 2, 2)];
    let refs: Vec<&PremiumFeature> = features.iter().collect();
    let allocation = allocation(&p, refs.iter().copied(), &[], |_| Some(0), |_| false);
    let decide_at = |p: &PremiumPolicy, second: i64| {
        let policies = [p.clone()];
        decide(&PolicyView {
            policy: p,
            features: &refs,
            policies: &policies,
            allocation: &allocation,
            now: &at(second),
        })
        .status
    };
    let first = decide_at(&p, 100);
    p.status = Some(first.clone());
    let later = at(200);
    let again = decide(&PolicyView {
        policy: &p,
        features: &refs,
        policies: std::slice::from_ref(&p),
        allocation: &allocation,
        now: &later,
    });
    assert!(!again.write_status, "{:?}", again.status);
    p.metadata.generation = Some(2);
    let bumped = decide_at(&p, 300);
    assert_ne!(Some(&bumped), p.status.as_ref());
    let ready = condition(&bumped, cond::READY);
    assert_eq!(ready.last_transition_time, at(100));
    assert_eq!(ready.observed_generation, Some(2));
}

#[test]
fn features_whose_share_moved_are_named() {
    let features = [
        feature("a", "premium", 1, 1),
        feature("b", "premium", 1, 1),
        feature("c", "premium", 1, 1),
        feature("d", "premium", 1, 1),
    ];
    let refs: Vec<&PremiumFeature> = features.iter().collect();
    let before: BTreeMap<String, u32> = [("a".into(), 2), ("b".into(), 3), ("c".into(), 1)].into();
    let after: BTreeMap<String, u32> = [("a".into(), 2), ("b".into(), 1), ("d".into(), 1)].into();
    let moved: Vec<String> = moved_shares(&before, &after, &refs)
        .iter()
        .map(|f| f.name_any())
        .collect();
    assert_eq!(moved, ["b", "c", "d"]);
    assert!(moved_shares(&after, &after, &refs).is_empty());
}

/// What the feature reconcile reads: the tightest grant among its budgets, or why it waits.
#[test]
fn a_features_share_across_its_budgets() {
    let (p, q) = (policy("p", 0, Some(3)), policy("q", 0, Some(8)));
    let mut grants = allocate(Some(3), &[]);
    grants.max_replicas = [("a".to_string(), 3)].into();
    let mut tighter = grants.clone();
    tighter.max_replicas = [("a".to_string(), 2)].into();
    let mut waits = grants.clone();
    waits.max_replicas.clear();
    waits.waiting = vec!["a".into()];
    let mut never = waits.clone();
    never.oversized = vec!["a".into()];
    assert_eq!(feature_budget("a", []), FeatureBudget::default());
    assert_eq!(
        feature_budget("a", [(&p, &grants), (&q, &tighter)]).max_replicas,
        Some(2)
    );
    assert_eq!(
        feature_budget("b", [(&p, &grants)]),
        FeatureBudget::default()
    );
    let waiting = feature_budget("a", [(&p, &grants), (&q, &waits)]);
    assert_eq!(waiting.max_replicas, Some(3));
    let why = waiting.waiting.unwrap();
    assert!(
        why.contains("replica budget of policy q (8) cannot hold"),
        "{why}"
    );
    let why = feature_budget("a", [(&q, &never)]).waiting.unwrap();
    assert!(
        why.contains("more than the whole replica budget of policy q (8)"),
        "{why}"
    );
}

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
    assert!(waiting_list(&alloc).len() <= MAX_LIST_BYTES + '…'.len_utf8());
}
