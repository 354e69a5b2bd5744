use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::core::graph::GraphAnalysis;

fn key(ns: &str, name: &str) -> FeatureKey {
    FeatureKey::new(ns, name)
}

fn edge(target: FeatureKey, optional: bool) -> DependencyEdge {
    DependencyEdge { target, optional }
}

/// The same graph kept the simple way: every feature's edges and every grant, analysed from
/// scratch when asked.
#[derive(Debug, Default, Clone)]
struct Model {
    nodes: BTreeMap<FeatureKey, Vec<DependencyEdge>>,
    grants: BTreeMap<FeatureKey, BTreeSet<String>>,
}

impl Model {
    fn apply(&mut self, change: &GraphChange) {
        match change {
            GraphChange::Node(k, Some(edges)) => {
                self.nodes.insert(k.clone(), edges.clone());
            }
            GraphChange::Node(k, None) => {
                self.nodes.remove(k);
                self.grants.remove(k);
            }
            GraphChange::Grants(k, g) => {
                self.grants.insert(k.clone(), g.clone());
            }
        }
    }

    fn analyze(&self) -> GraphAnalysis {
        let nodes: Vec<FeatureNode> = self
            .nodes
            .iter()
            .map(|(k, edges)| FeatureNode {
                key: k.clone(),
                depends_on: edges.clone(),
            })
            .collect();
        analyze(&nodes, |dependent, target| {
            self.grants
                .get(target)
                .is_some_and(|g| g.contains(&dependent.namespace))
        })
    }
}

fn same_facts(live: &GraphSnapshot, full: &GraphAnalysis) -> Result<(), TestCaseError> {
    prop_assert_eq!(live.len(), full.keys().len());
    for k in full.keys() {
        prop_assert!(live.contains(k), "{} unknown", k);
        prop_assert_eq!(live.level(k), full.level(k), "level of {}", k);
        prop_assert_eq!(live.cycle(k), full.cycle(k), "cycle of {}", k);
        prop_assert_eq!(live.missing(k), full.missing(k), "missing of {}", k);
        prop_assert_eq!(
            live.not_permitted(k),
            full.not_permitted(k),
            "refused of {}",
            k
        );
        prop_assert_eq!(
            live.needs_unreachable(k),
            full.needs_unreachable(k),
            "blocked of {}",
            k
        );
    }
    Ok(())
}

/// Keys n0..n5 in two namespaces.
fn arb_key() -> impl Strategy<Value = FeatureKey> {
    (0..2u8, 0..6u8).prop_map(|(ns, i)| key(&format!("ns{ns}"), &format!("n{i}")))
}

fn arb_change() -> impl Strategy<Value = GraphChange> {
    let edges = prop::collection::vec((arb_key(), any::<bool>()), 0..4)
        .prop_map(|e| e.into_iter().map(|(t, o)| edge(t, o)).collect());
    let grants = prop::collection::btree_set(prop_oneof![Just("ns0"), Just("ns1")], 0..=2)
        .prop_map(|g| g.into_iter().map(String::from).collect());
    prop_oneof![
        4 => (arb_key(), edges).prop_map(|(k, e)| GraphChange::Node(k, Some(e))),
        1 => arb_key().prop_map(|k| GraphChange::Node(k, None)),
        2 => (arb_key(), grants).prop_map(|(k, g)| GraphChange::Grants(k, g)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// After any sequence of changes, flushed after every step or in batches, the kept facts
    /// are those of a whole analysis of the same graph, and each flush reports exactly the
    /// features whose facts differ between the analyses before and after it.
    #[test]
    fn incremental_facts_equal_a_whole_analysis(
        steps in prop::collection::vec((arb_change(), any::<bool>()), 1..40)
    ) {
        let mut live = LiveGraph::default();
        let mut model = Model::default();
        let mut before = model.analyze();
        for (i, (change, flush)) in steps.iter().enumerate() {
            live.apply(change.clone());
            model.apply(change);
            if !flush && i + 1 < steps.len() {
                continue;
            }
            let woken = live.flush();
            let after = model.analyze();
            same_facts(&live.snapshot(), &after)?;
            let moved: BTreeSet<FeatureKey> = after.changed_since(&before).into_iter().collect();
            prop_assert_eq!(woken, moved, "woken after {:?}", change);
            before = after;
        }
    }

    /// A published snapshot never changes, whatever is applied and flushed after it.
    #[test]
    fn a_snapshot_is_immutable(
        first in prop::collection::vec(arb_change(), 1..20),
        then in prop::collection::vec(arb_change(), 1..20),
    ) {
        let mut live = LiveGraph::default();
        let mut model = Model::default();
        for c in &first {
            live.apply(c.clone());
            model.apply(c);
        }
        live.flush();
        let held = live.snapshot();
        for c in then {
            live.apply(c);
            live.flush();
        }
        same_facts(&held, &model.analyze())?;
    }
}

fn chain(n: usize) -> LiveGraph {
    let mut live = LiveGraph::default();
    for i in 0..n {
        let deps = (i > 0)
            .then(|| edge(key("ns", &format!("f{:04}", i - 1)), false))
            .into_iter()
            .collect();
        live.apply(GraphChange::Node(
            key("ns", &format!("f{i:04}")),
            Some(deps),
        ));
    }
    live.flush();
    live
}

#[test]
fn an_edge_change_costs_its_downstream_closure_only() {
    let mut live = chain(1_000);
    assert_eq!(live.snapshot().level(&key("ns", "f0999")), Some(999));
    // The top of the chain gains an optional dependency on the bottom: nobody depends on the
    // top, so it alone is looked at.
    let top = key("ns", "f0999");
    live.apply(GraphChange::Node(
        top.clone(),
        Some(vec![
            edge(key("ns", "f0998"), false),
            edge(key("ns", "f0000"), true),
        ]),
    ));
    assert!(live.flush().is_empty(), "its level stays 999");
    assert_eq!(live.touched(), 1);
    // A new feature nobody lists costs itself.
    live.apply(GraphChange::Node(key("ns", "lone"), Some(vec![])));
    live.flush();
    assert_eq!(live.touched(), 1);
    // Halfway up: the upper half moves, the lower half is not visited.
    live.apply(GraphChange::Node(key("ns", "f0500"), Some(vec![])));
    let woken = live.flush();
    assert_eq!(live.touched(), 500);
    assert_eq!(woken.len(), 500);
    assert_eq!(live.snapshot().level(&top), Some(499));
}

#[test]
fn closing_and_opening_a_cycle_wakes_its_members_and_whoever_is_behind() {
    let mut live = chain(4);
    let snapshot_before = live.snapshot();
    // f0000 -> f0003 closes f0000 <- f0001 <- f0002 <- f0003 into a ring.
    live.apply(GraphChange::Node(
        key("ns", "f0000"),
        Some(vec![edge(key("ns", "f0003"), false)]),
    ));
    let woken = live.flush();
    let all: BTreeSet<FeatureKey> = (0..4).map(|i| key("ns", &format!("f{i:04}"))).collect();
    assert_eq!(woken, all);
    let snapshot = live.snapshot();
    assert_eq!(
        snapshot.cycle(&key("ns", "f0000")).map(<[_]>::len),
        Some(5),
        "f0000 -> f0003 -> f0002 -> f0001 -> f0000"
    );
    assert_eq!(snapshot.level(&key("ns", "f0003")), None);
    // The snapshot taken before still says what it said.
    assert_eq!(snapshot_before.level(&key("ns", "f0003")), Some(3));
    assert!(!snapshot_before.on_cycle(&key("ns", "f0003")));
    live.apply(GraphChange::Node(key("ns", "f0000"), Some(vec![])));
    assert_eq!(live.flush(), all);
    assert_eq!(live.snapshot().level(&key("ns", "f0003")), Some(3));
}

#[test]
fn a_grant_moves_only_the_dependents_in_the_namespaces_it_names() {
    let mut live = LiveGraph::default();
    let catalog = key("portal", "catalog");
    let needs = || Some(vec![edge(catalog.clone(), false)]);
    live.apply(GraphChange::Node(catalog.clone(), Some(vec![])));
    live.apply(GraphChange::Node(key("team-b", "aika"), needs()));
    live.apply(GraphChange::Node(key("team-c", "intruder"), needs()));
    live.apply(GraphChange::Node(key("portal", "home"), needs()));
    live.flush();
    let snapshot = live.snapshot();
    assert_eq!(
        snapshot.not_permitted(&key("team-b", "aika")),
        std::slice::from_ref(&catalog)
    );
    assert_eq!(snapshot.level(&key("portal", "home")), Some(1));
    live.apply(GraphChange::Grants(
        catalog.clone(),
        BTreeSet::from(["team-b".to_string()]),
    ));
    assert_eq!(live.flush(), BTreeSet::from([key("team-b", "aika")]));
    assert_eq!(
        live.touched(),
        2,
        "the dependents elsewhere; home needs no grant"
    );
    assert_eq!(live.snapshot().level(&key("team-b", "aika")), Some(1));
    // Deleted, the feature takes its grants along: recreated, it is not exposed.
    live.apply(GraphChange::Node(catalog.clone(), None));
    live.apply(GraphChange::Node(catalog.clone(), Some(vec![])));
    live.flush();
    assert_eq!(
        live.snapshot().not_permitted(&key("team-b", "aika")),
        [catalog]
    );
}
