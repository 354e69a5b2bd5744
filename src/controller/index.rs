//! An in-memory index fed by watch events: who depends on whom, which policies select whom.
//!
//! It answers "which features must be reconciled because this object changed" without listing
//! anything, and records what the dependency graph must hear (an edge, a feature or a grant
//! changed, not a status update) for `controller::graph` to apply in the same order.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kube::ResourceExt;

use crate::api::conditions as cond;
use crate::api::{PremiumFeature, PremiumPolicy};
use crate::core::graph::{DependencyEdge, FeatureKey, GraphChange, normalize_edges};
use crate::core::plan::dependency_key;
use crate::core::policy::selects;
use crate::core::status::{condition, is_serving};

/// Namespace and name of a policy.
pub type PolicyKey = FeatureKey;

#[derive(Debug, Clone, PartialEq)]
struct FeatureEntry {
    /// `dependsOn` as the graph reads it (see `normalize_edges`).
    edges: Vec<DependencyEdge>,
    /// Everything of the feature that policies and budgets read: labels and pool.
    selection: String,
    /// What a dependent's reconcile reads of this feature: ready, given up, port, deleting.
    /// Dependents are woken only when it changes, not on every status write.
    view: (bool, bool, i32, bool),
    /// Its `spec.capacity` and the split its status shows: callers compute their share from
    /// both, so they are woken when either moves (`controller::capacity`).
    capacity: Option<String>,
    /// What its own reconcile acts on besides status: generation, labels, annotations,
    /// deletion. Its own status writes (and their echoes) wake nobody.
    meta: String,
}

/// What an event means for other objects.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Wake {
    pub features: BTreeSet<FeatureKey>,
    pub policies: BTreeSet<PolicyKey>,
    /// Reconciles that may wait behind everything else (the back lane, see `Context::wake`):
    /// features seen for the first time (just created, or listed at start-up), whose first
    /// reconcile creates their objects and says what they wait for, and features whose level,
    /// cycle or missing dependencies moved. A burst of either never delays a running start-up.
    pub background: BTreeSet<FeatureKey>,
}

impl Wake {
    /// Wakes a feature whose inputs moved: up front once it has been reconciled, through the
    /// back lane while it has no status yet (its first reconcile is queued there already and
    /// reads everything itself, so a burst of new features never overtakes running start-ups).
    pub fn feature(&mut self, key: FeatureKey, reconciled: bool) {
        if reconciled {
            self.features.insert(key);
        } else {
            self.background.insert(key);
        }
    }
}

#[derive(Debug, Default)]
pub struct Index {
    features: HashMap<FeatureKey, FeatureEntry>,
    dependents: HashMap<FeatureKey, BTreeSet<FeatureKey>>,
    policies: BTreeMap<PolicyKey, PremiumPolicy>,
    selected: HashMap<PolicyKey, BTreeSet<FeatureKey>>,
    graph_version: u64,
    budget_version: u64,
    /// What the dependency graph has not heard yet, oldest first.
    graph_changes: Vec<GraphChange>,
}

fn key_of_feature(f: &PremiumFeature) -> FeatureKey {
    FeatureKey::new(f.namespace().unwrap_or_default(), f.name_any())
}

/// A feature as its dependents see it (see `feature::dependency_view`).
fn dependency_view(f: &PremiumFeature) -> (bool, bool, i32, bool) {
    let st = f.status.as_ref();
    let stalled = st
        .and_then(|s| condition(&s.conditions, cond::STALLED))
        .is_some_and(|c| c.status == "True");
    (
        is_serving(st),
        stalled || f.spec.suspend,
        f.spec.port,
        f.metadata.deletion_timestamp.is_some(),
    )
}

fn key_of_policy(p: &PremiumPolicy) -> PolicyKey {
    FeatureKey::new(p.namespace().unwrap_or_default(), p.name_any())
}

impl Index {
    /// Bumped whenever the dependency graph or a cross-namespace grant changed, that is with
    /// every change recorded for the graph.
    pub fn graph_version(&self) -> u64 {
        self.graph_version
    }

    /// The changes the dependency graph has not heard yet, oldest first, and the graph version
    /// they bring it to.
    pub fn take_graph_changes(&mut self) -> (Vec<GraphChange>, u64) {
        (std::mem::take(&mut self.graph_changes), self.graph_version)
    }

    fn graph_changed(&mut self, change: GraphChange) {
        self.graph_version += 1;
        self.graph_changes.push(change);
    }

    /// Bumped whenever a budget allocation may have changed: a feature's labels, pool,
    /// suspension or deletion, the graph (levels order admission), or a policy.
    pub fn budget_version(&self) -> u64 {
        self.budget_version
    }

    /// Features that list `key` in `dependsOn`.
    pub fn dependents(&self, key: &FeatureKey) -> Vec<FeatureKey> {
        self.dependents
            .get(key)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// What `key` lists in `dependsOn`, sorted, one per target.
    pub fn dependencies(&self, key: &FeatureKey) -> Vec<FeatureKey> {
        self.features
            .get(key)
            .map(|f| f.edges.iter().map(|e| e.target.clone()).collect())
            .unwrap_or_default()
    }

    /// Policies in a namespace.
    pub fn policies_in(&self, namespace: &str) -> Vec<PremiumPolicy> {
        self.policies
            .range(FeatureKey::new(namespace, "")..)
            .take_while(|(k, _)| k.namespace == namespace)
            .map(|(_, p)| p.clone())
            .collect()
    }

    fn all_policies_in(&self, namespace: &str) -> BTreeSet<PolicyKey> {
        self.policies
            .range(FeatureKey::new(namespace, "")..)
            .take_while(|(k, _)| k.namespace == namespace)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Namespaces granted to depend on `key` (`exposeTo`) by the policies of its namespace that
    /// selected it when last seen.
    fn grants(&self, key: &FeatureKey) -> BTreeSet<String> {
        self.policies
            .range(FeatureKey::new(key.namespace.as_str(), "")..)
            .take_while(|(k, _)| k.namespace == key.namespace)
            .filter(|(k, _)| self.selected.get(*k).is_some_and(|s| s.contains(key)))
            .filter_map(|(_, p)| p.spec.expose_to.as_ref())
            .flat_map(|e| e.namespaces.iter().cloned())
            .collect()
    }

    /// The grants of each of `keys`, to compare before and after a change.
    fn grants_of(&self, keys: &BTreeSet<FeatureKey>) -> Vec<BTreeSet<String>> {
        keys.iter().map(|k| self.grants(k)).collect()
    }

    /// Wakes the dependents in other namespaces whose permission to depend on one of `keys`
    /// differs between `before` and `after` (as returned by [`Index::grants_of`]), and tells
    /// the graph (which holds the not-permitted edges) of every grant that moved.
    fn wake_regranted(
        &mut self,
        keys: &BTreeSet<FeatureKey>,
        before: &[BTreeSet<String>],
        after: &[BTreeSet<String>],
        wake: &mut Wake,
    ) {
        for ((key, before), after) in keys.iter().zip(before).zip(after) {
            if before == after {
                continue;
            }
            self.graph_changed(GraphChange::Grants(key.clone(), after.clone()));
            let moved: BTreeSet<&String> = before.symmetric_difference(after).collect();
            wake.features.extend(
                self.dependents
                    .get(key)
                    .into_iter()
                    .flatten()
                    .filter(|d| d.namespace != key.namespace && moved.contains(&d.namespace))
                    .cloned(),
            );
        }
    }

    /// A feature was created or changed.
    pub fn apply_feature(&mut self, f: &PremiumFeature) -> Wake {
        let key = key_of_feature(f);
        let edges = normalize_edges(
            f.spec
                .depends_on
                .iter()
                .map(|d| DependencyEdge {
                    target: dependency_key(&key.namespace, d),
                    optional: d.optional,
                })
                .collect(),
        );
        let entry = FeatureEntry {
            edges: edges.clone(),
            selection: format!(
                "{:?}|{:?}|{:?}|{}|{}",
                f.labels(),
                f.spec.pool,
                f.spec.depends_on,
                f.spec.suspend,
                f.metadata.deletion_timestamp.is_some()
            ),
            view: dependency_view(f),
            capacity: f.spec.capacity.as_ref().map(|c| {
                let split = f.status.as_ref().and_then(|s| s.capacity.as_ref());
                format!("{c:?}|{split:?}")
            }),
            // Not the finalizers: the echo of the operator adding its own would wake the
            // feature again while its status write is still on the way (a reconcile on a
            // stale status). Deletion shows in the deletion timestamp.
            meta: format!(
                "{:?}|{:?}|{:?}|{:?}",
                f.metadata.generation,
                f.labels(),
                f.annotations(),
                f.metadata.deletion_timestamp
            ),
        };
        let previous = self.features.insert(key.clone(), entry.clone());
        let mut wake = Wake::default();
        if previous.is_none() {
            wake.background.insert(key.clone());
        } else if previous.as_ref().map(|p| &p.meta) != Some(&entry.meta) {
            wake.features.insert(key.clone());
        }
        // An optional flag that flips is a change too: it decides whether a missing dependency
        // blocks.
        let graph_changed = previous.as_ref().map(|p| &p.edges) != Some(&edges);
        if graph_changed {
            // A dependency whose capacity is split gained or lost a caller.
            let old = previous.as_ref().map_or(&[][..], |p| p.edges.as_slice());
            wake.features.extend(self.splitting(old, &edges));
            // A dependency being deleted that lost a dependent: its deletion guard may let it
            // go now (`deletion.whileDependents: Block`).
            wake.features
                .extend(self.released_while_deleting(old, &edges));
            self.relink(
                &key,
                previous.as_ref().map_or(&[][..], |p| p.edges.as_slice()),
                edges,
            );
        } else if previous.as_ref().map(|p| p.view) != Some(entry.view)
            || previous.as_ref().map(|p| &p.capacity) != Some(&entry.capacity)
        {
            wake.features.extend(self.dependents(&key));
        }
        if graph_changed || previous.as_ref().map(|p| &p.selection) != Some(&entry.selection) {
            self.budget_version += 1;
        }
        if previous.as_ref().map(|p| &p.selection) != Some(&entry.selection) {
            // Selection, budget shares and start-up order of the policies here may change.
            // (A phase change alone wakes no policy: a policy's status does not read phases,
            // and start-up slots are handed on by the feature reconciler.)
            wake.policies.extend(self.all_policies_in(&key.namespace));
            self.reselect(&key, f, &mut wake);
        }
        wake
    }

    /// The targets of `old` or `new` but not both that split a capacity between callers.
    fn splitting(&self, old: &[DependencyEdge], new: &[DependencyEdge]) -> Vec<FeatureKey> {
        let targets = |edges: &[DependencyEdge]| -> BTreeSet<FeatureKey> {
            edges.iter().map(|e| e.target.clone()).collect()
        };
        targets(old)
            .symmetric_difference(&targets(new))
            .filter(|t| self.features.get(*t).is_some_and(|f| f.capacity.is_some()))
            .cloned()
            .collect()
    }

    /// The targets of `old` that `new` no longer names and that are being deleted.
    fn released_while_deleting(
        &self,
        old: &[DependencyEdge],
        new: &[DependencyEdge],
    ) -> Vec<FeatureKey> {
        old.iter()
            .map(|e| &e.target)
            .filter(|t| !new.iter().any(|e| &e.target == *t))
            .filter(|t| self.features.get(*t).is_some_and(|f| f.view.3))
            .cloned()
            .collect()
    }

    /// Moves `key` from the dependents of `old` to those of `new`, and tells the graph: levels,
    /// cycles and missing dependencies downstream may have moved, and the graph says whose
    /// once it has heard (`controller::graph`).
    fn relink(&mut self, key: &FeatureKey, old: &[DependencyEdge], new: Vec<DependencyEdge>) {
        for d in old {
            if let Some(set) = self.dependents.get_mut(&d.target) {
                set.remove(key);
            }
        }
        for d in &new {
            self.dependents
                .entry(d.target.clone())
                .or_default()
                .insert(key.clone());
        }
        self.graph_changed(GraphChange::Node(key.clone(), Some(new)));
    }

    /// Which policies of its namespace select `f` now. Its labels may have moved it into or
    /// out of a policy that grants other namespaces the right to depend on it: no event of
    /// theirs will tell those dependents, so they are woken here, and the graph hears it.
    fn reselect(&mut self, key: &FeatureKey, f: &PremiumFeature, wake: &mut Wake) {
        let keys = BTreeSet::from([key.clone()]);
        let before = self.grants_of(&keys);
        for (policy_key, policy) in self
            .policies
            .range(FeatureKey::new(key.namespace.as_str(), "")..)
            .take_while(|(k, _)| k.namespace == key.namespace)
        {
            let selected = self.selected.entry(policy_key.clone()).or_default();
            if selects(policy, f) {
                selected.insert(key.clone());
            } else {
                selected.remove(key);
            }
        }
        let after = self.grants_of(&keys);
        self.wake_regranted(&keys, &before, &after, wake);
    }

    /// A feature is gone.
    pub fn delete_feature(&mut self, key: &FeatureKey) -> Wake {
        let mut wake = Wake::default();
        if let Some(old) = self.features.remove(key) {
            self.graph_changed(GraphChange::Node(key.clone(), None));
            self.budget_version += 1;
            for d in &old.edges {
                if let Some(set) = self.dependents.get_mut(&d.target) {
                    set.remove(key);
                }
                // A dependency waiting to be torn down after its dependents can go now.
                wake.features.insert(d.target.clone());
            }
            wake.policies.extend(self.all_policies_in(&key.namespace));
            for policy in self.all_policies_in(&key.namespace) {
                if let Some(selected) = self.selected.get_mut(&policy) {
                    selected.remove(key);
                }
            }
        }
        wake
    }

    /// A policy was created or changed: wake exactly the features it selected before or
    /// selects now. `features` are the features of its namespace.
    pub fn apply_policy<'a>(
        &mut self,
        p: &PremiumPolicy,
        features: impl IntoIterator<Item = &'a PremiumFeature>,
    ) -> Wake {
        let key = key_of_policy(p);
        let mut unreconciled = BTreeSet::new();
        let now: BTreeSet<FeatureKey> = features
            .into_iter()
            .filter(|f| selects(p, f))
            .map(|f| {
                let k = key_of_feature(f);
                if f.status.is_none() {
                    unreconciled.insert(k.clone());
                }
                k
            })
            .collect();
        // Features whose grants this change may move: with `exposeTo` unchanged, those joining
        // or leaving the selection; with `exposeTo` changed, every one selected before or now.
        let old_grant = self
            .policies
            .get(&key)
            .and_then(|o| o.spec.expose_to.as_ref());
        let new_grant = p.spec.expose_to.as_ref();
        let before_selected = self.selected.get(&key).cloned().unwrap_or_default();
        let regrant: BTreeSet<FeatureKey> = if old_grant != new_grant {
            before_selected.union(&now).cloned().collect()
        } else if new_grant.is_some_and(|g| !g.namespaces.is_empty()) {
            before_selected
                .symmetric_difference(&now)
                .cloned()
                .collect()
        } else {
            BTreeSet::new()
        };
        let grants_before = self.grants_of(&regrant);
        let before = self.selected.insert(key.clone(), now.clone());
        let previous = self.policies.insert(key.clone(), p.clone());
        let mut wake = Wake::default();
        let spec_changed = previous.as_ref().map(|o| &o.spec) != Some(&p.spec);
        if spec_changed || before.as_ref() != Some(&now) {
            self.budget_version += 1;
            if spec_changed {
                wake.features.extend(now.iter().cloned());
                wake.features.extend(before.iter().flatten().cloned());
            } else {
                // Only the features that joined or left see another merge; shares of the
                // budget that moved are the policy reconciler's to wake.
                let before = before.clone().unwrap_or_default();
                for f in now.symmetric_difference(&before) {
                    wake.feature(f.clone(), !unreconciled.contains(f));
                }
            }
        }
        // A grant that appeared or went: the features elsewhere that it concerns must look
        // again (both ways: granted, or no longer).
        let grants_after = self.grants_of(&regrant);
        self.wake_regranted(&regrant, &grants_before, &grants_after, &mut wake);
        wake
    }

    /// A policy is gone.
    pub fn delete_policy(&mut self, key: &PolicyKey) -> Wake {
        let mut wake = Wake::default();
        let selected = self.selected.get(key).cloned().unwrap_or_default();
        let grants_before = self.grants_of(&selected);
        self.policies.remove(key);
        self.selected.remove(key);
        self.budget_version += 1;
        let grants_after = self.grants_of(&selected);
        self.wake_regranted(&selected, &grants_before, &grants_after, &mut wake);
        wake.features.extend(selected);
        wake
    }

    /// Features a policy selected when last seen.
    pub fn selected_by(&self, key: &PolicyKey) -> Vec<FeatureKey> {
        self.selected
            .get(key)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Dependency, PremiumFeatureSpec, PremiumPolicySpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn feature(name: &str, deps: &[&str], tier: &str) -> PremiumFeature {
        let mut f = PremiumFeature::new(
            name,
            PremiumFeatureSpec {
                depends_on: deps
                    .iter()
                    .map(|d| Dependency {
                        name: d.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
        );
        f.metadata.namespace = Some("portal".into());
        f.metadata.labels = Some([("tier".to_string(), tier.to_string())].into());
        f
    }

    fn policy(name: &str, tier: &str) -> PremiumPolicy {
        let mut p = PremiumPolicy::new(
            name,
            PremiumPolicySpec {
                selector: LabelSelector {
                    match_labels: Some([("tier".to_string(), tier.to_string())].into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        p.metadata.namespace = Some("portal".into());
        p
    }

    fn k(n: &str) -> FeatureKey {
        FeatureKey::new("portal", n)
    }

    #[test]
    fn a_capacity_split_wakes_its_callers_and_a_new_caller_wakes_the_dependency() {
        let mut idx = Index::default();
        let mut catalog = feature("catalog", &[], "premium");
        catalog.spec.capacity = Some(crate::api::Capacity {
            max_requests: Some(100),
            ..Default::default()
        });
        idx.apply_feature(&catalog);
        idx.apply_feature(&feature("aika", &["catalog"], "premium"));
        // A second caller: catalog's split must count it.
        let wake = idx.apply_feature(&feature("soundcheck", &["catalog"], "premium"));
        assert!(wake.features.contains(&k("catalog")), "{wake:?}");
        // Catalog writes its new split: both callers settle on it.
        catalog.status = Some(crate::api::PremiumFeatureStatus {
            capacity: Some(crate::api::CapacityStatus::default()),
            ..Default::default()
        });
        let wake = idx.apply_feature(&catalog);
        assert_eq!(wake.features, BTreeSet::from([k("aika"), k("soundcheck")]));
        // A dependency without a capacity is not woken by a new caller.
        idx.apply_feature(&feature("search", &[], "premium"));
        let wake = idx.apply_feature(&feature("scorecard", &["search"], "premium"));
        assert!(!wake.features.contains(&k("search")), "{wake:?}");
    }

    #[test]
    fn a_dependency_change_wakes_its_dependents_and_a_later_dependency_finds_them() {
        let mut idx = Index::default();
        // aika waits for catalog, which does not exist yet.
        idx.apply_feature(&feature("aika", &["catalog"], "premium"));
        let v = idx.graph_version();
        let wake = idx.apply_feature(&feature("catalog", &[], "premium"));
        // A brand-new feature goes to the back lane itself.
        assert_eq!(wake.background, BTreeSet::from([k("catalog")]));
        assert!(!wake.features.contains(&k("catalog")));
        assert!(idx.graph_version() > v);
        // A status write that changes nothing aika reads (catalog's own write) wakes nobody.
        let v = idx.graph_version();
        let mut starting = feature("catalog", &[], "premium");
        starting.status = Some(crate::api::PremiumFeatureStatus {
            phase: Some(crate::api::Phase::Starting),
            ..Default::default()
        });
        assert_eq!(idx.apply_feature(&starting).features, BTreeSet::new());
        // Catalog turning Ready wakes aika, not catalog, without a graph change.
        let mut ready = feature("catalog", &[], "premium");
        ready.status = Some(crate::api::PremiumFeatureStatus {
            phase: Some(crate::api::Phase::Ready),
            conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: cond::READY.into(),
                status: "True".into(),
                reason: "Available".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ),
            }],
            ..Default::default()
        });
        let wake = idx.apply_feature(&ready);
        assert_eq!(wake.features, BTreeSet::from([k("aika")]));
        assert_eq!(idx.graph_version(), v);
        // A spec change (new generation) wakes the feature itself.
        ready.metadata.generation = Some(2);
        assert!(idx.apply_feature(&ready).features.contains(&k("catalog")));
    }

    #[test]
    fn the_graph_hears_edges_optional_flips_and_deletions_in_order() {
        let mut idx = Index::default();
        let required = feature("aika", &["catalog"], "premium");
        idx.apply_feature(&required);
        let mut optional = required.clone();
        optional.spec.depends_on[0].optional = true;
        idx.apply_feature(&optional);
        // The same again: nothing the graph reads. Relabelled, and required again: the edge.
        idx.apply_feature(&optional);
        idx.apply_feature(&feature("aika", &["catalog"], "free"));
        idx.delete_feature(&k("aika"));
        let edge = |optional| DependencyEdge {
            target: k("catalog"),
            optional,
        };
        let (changes, version) = idx.take_graph_changes();
        assert_eq!(
            changes,
            vec![
                GraphChange::Node(k("aika"), Some(vec![edge(false)])),
                GraphChange::Node(k("aika"), Some(vec![edge(true)])),
                GraphChange::Node(k("aika"), Some(vec![edge(false)])),
                GraphChange::Node(k("aika"), None),
            ]
        );
        assert_eq!(version, idx.graph_version());
        assert!(idx.take_graph_changes().0.is_empty());
    }

    #[test]
    fn edge_changes_and_only_they_bump_the_graph_version() {
        // Who is woken by a graph change is decided by the graph as it hears the change
        // (`core::graph::LiveGraph::flush`); the index only records what to tell it.
        let mut idx = Index::default();
        idx.apply_feature(&feature("catalog", &[], "premium"));
        idx.apply_feature(&feature("aika", &["catalog"], "premium"));
        let v = idx.graph_version();
        idx.apply_feature(&feature("catalog", &["base"], "premium"));
        assert!(idx.graph_version() > v);
        let v = idx.graph_version();
        idx.apply_feature(&feature("catalog", &["base"], "free"));
        assert_eq!(idx.graph_version(), v, "a label is not an edge");
        idx.delete_feature(&k("aika"));
        assert!(idx.graph_version() > v);
    }

    #[test]
    fn deleting_a_dependent_wakes_its_dependencies() {
        let mut idx = Index::default();
        idx.apply_feature(&feature("catalog", &[], "premium"));
        idx.apply_feature(&feature("aika", &["catalog"], "premium"));
        idx.apply_feature(&feature("top", &["aika"], "premium"));
        let wake = idx.delete_feature(&k("aika"));
        assert!(wake.features.contains(&k("catalog")));
        assert!(idx.dependents(&k("catalog")).is_empty());
    }

    #[test]
    fn a_dependent_that_drops_a_dependency_being_deleted_wakes_it() {
        let mut idx = Index::default();
        let mut catalog = feature("catalog", &[], "premium");
        idx.apply_feature(&catalog);
        idx.apply_feature(&feature("aika", &["catalog"], "premium"));
        idx.apply_feature(&feature("top", &["aika"], "premium"));
        // Dropping a dependency that is not being deleted wakes nobody but the graph.
        let wake = idx.apply_feature(&feature("top", &[], "premium"));
        assert!(!wake.features.contains(&k("aika")), "{wake:?}");
        catalog.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        idx.apply_feature(&catalog);
        let wake = idx.apply_feature(&feature("aika", &[], "premium"));
        assert!(wake.features.contains(&k("catalog")), "{wake:?}");
    }

    #[test]
    fn policy_change_wakes_exactly_what_it_selects_or_selected() {
        let mut idx = Index::default();
        let a = feature("aika", &[], "premium");
        let b = feature("catalog", &[], "free");
        let all = [a.clone(), b.clone()];
        let wake = idx.apply_policy(&policy("p", "premium"), all.iter());
        assert_eq!(wake.features, BTreeSet::from([k("aika")]));
        // Unchanged policy: nobody.
        assert!(
            idx.apply_policy(&policy("p", "premium"), all.iter())
                .features
                .is_empty()
        );
        // Selector moves: the old and the new selection.
        let wake = idx.apply_policy(&policy("p", "free"), all.iter());
        assert_eq!(wake.features, BTreeSet::from([k("aika"), k("catalog")]));
        assert_eq!(idx.selected_by(&k("p")), vec![k("catalog")]);
        let wake = idx.delete_policy(&k("p"));
        assert_eq!(wake.features, BTreeSet::from([k("catalog")]));
    }

    #[test]
    fn a_feature_joining_a_policy_wakes_only_itself() {
        // Waking every selected feature for each newcomer made a burst of N new features cost
        // N x N reconciles, all ahead of the start-ups in progress.
        let mut idx = Index::default();
        let mut old = feature("aika", &[], "premium");
        old.status = Some(Default::default());
        let p = policy("p", "premium");
        idx.apply_policy(&p, [old.clone()].iter());
        let new = feature("catalog", &[], "premium");
        let wake = idx.apply_policy(&p, [old.clone(), new.clone()].iter());
        assert!(wake.features.is_empty(), "{wake:?}");
        assert_eq!(wake.background, BTreeSet::from([k("catalog")]));
        // One that was reconciled before (its labels changed) is woken up front.
        let mut joined = feature("top", &[], "premium");
        joined.status = Some(Default::default());
        let wake = idx.apply_policy(&p, [old.clone(), new.clone(), joined].iter());
        assert_eq!(wake.features, BTreeSet::from([k("top")]));
        assert!(wake.background.is_empty());
        // Leaving wakes those that left, and no one else.
        let wake = idx.apply_policy(&p, [old].iter());
        assert_eq!(wake.features, BTreeSet::from([k("catalog"), k("top")]));
        assert!(wake.background.is_empty());
    }

    #[test]
    fn label_changes_wake_the_namespace_policies() {
        let mut idx = Index::default();
        idx.apply_policy(&policy("p", "premium"), std::iter::empty());
        idx.apply_feature(&feature("aika", &[], "free"));
        let wake = idx.apply_feature(&feature("aika", &[], "premium"));
        assert_eq!(wake.policies, BTreeSet::from([k("p")]));
        assert_eq!(idx.policies_in("portal").len(), 1);
        assert!(idx.policies_in("other").is_empty());
    }

    /// A feature of `ns` with `labels`, depending on `deps` (`ns/name` across namespaces).
    fn feature_in(ns: &str, name: &str, deps: &[&str], labels: &[(&str, &str)]) -> PremiumFeature {
        let mut f = feature(name, &[], "");
        f.metadata.namespace = Some(ns.into());
        f.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        f.spec.depends_on = deps
            .iter()
            .map(|d| match d.split_once('/') {
                Some((ns, name)) => Dependency {
                    name: name.into(),
                    namespace: Some(ns.into()),
                    ..Default::default()
                },
                None => Dependency {
                    name: d.to_string(),
                    ..Default::default()
                },
            })
            .collect();
        f
    }

    /// A policy of `portal` selecting `tier=<tier>` that grants `expose_to`.
    fn granting(name: &str, tier: &str, expose_to: &[&str]) -> PremiumPolicy {
        let mut p = policy(name, tier);
        p.spec.expose_to = Some(crate::api::ExposeTo {
            namespaces: expose_to.iter().map(|n| n.to_string()).collect(),
        });
        p
    }

    /// catalog in portal, depended on from team-b (to be granted), team-c (never granted) and
    /// portal itself (needs no grant).
    fn cross_namespace_world() -> (Index, PremiumFeature) {
        let mut idx = Index::default();
        let catalog = feature_in("portal", "catalog", &[], &[("tier", "premium")]);
        idx.apply_feature(&catalog);
        for f in [
            feature_in("team-b", "aika", &["portal/catalog"], &[]),
            feature_in("team-c", "intruder", &["portal/catalog"], &[]),
            feature_in("portal", "home", &["catalog"], &[]),
        ] {
            idx.apply_feature(&f);
        }
        idx.apply_policy(&granting("share", "x", &["team-b"]), [&catalog]);
        (idx, catalog)
    }

    fn fk(ns: &str, name: &str) -> FeatureKey {
        FeatureKey::new(ns, name)
    }

    #[test]
    fn a_relabel_into_or_out_of_a_grant_wakes_exactly_the_dependents_it_concerns() {
        let (mut idx, catalog) = cross_namespace_world();
        let cross = |w: &Wake| -> BTreeSet<FeatureKey> {
            w.features
                .iter()
                .chain(&w.background)
                .filter(|k| k.namespace != "portal")
                .cloned()
                .collect()
        };
        // Labelled into the granting policy: team-b's dependent may now depend on it.
        let v = idx.graph_version();
        let mut granted = catalog.clone();
        granted
            .labels_mut()
            .insert("tier".to_string(), "x".to_string());
        let wake = idx.apply_feature(&granted);
        assert_eq!(cross(&wake), BTreeSet::from([fk("team-b", "aika")]));
        assert!(!wake.features.contains(&fk("portal", "home")));
        assert!(idx.graph_version() > v, "a grant is part of the graph");
        assert_eq!(idx.selected_by(&k("share")), vec![k("catalog")]);
        // Another label that changes no grant: nobody elsewhere, and no new analysis.
        let v = idx.graph_version();
        let mut relabelled = granted.clone();
        relabelled
            .labels_mut()
            .insert("owner".to_string(), "me".to_string());
        let wake = idx.apply_feature(&relabelled);
        assert_eq!(cross(&wake), BTreeSet::new());
        assert_eq!(idx.graph_version(), v);
        // Labelled out again: the grant is gone, and the same dependent must look again.
        let wake = idx.apply_feature(&catalog);
        assert_eq!(cross(&wake), BTreeSet::from([fk("team-b", "aika")]));
        assert!(idx.graph_version() > v);
        assert!(idx.selected_by(&k("share")).is_empty());
    }

    #[test]
    fn a_grant_moved_by_the_policy_wakes_the_dependents_it_concerns_both_ways() {
        let (mut idx, catalog) = cross_namespace_world();
        let mut granted = catalog.clone();
        granted
            .labels_mut()
            .insert("tier".to_string(), "x".to_string());
        idx.apply_feature(&granted);
        let cross = |w: &Wake| -> BTreeSet<FeatureKey> {
            w.features
                .iter()
                .filter(|k| k.namespace != "portal")
                .cloned()
                .collect()
        };
        // exposeTo grows: team-c's dependent is concerned, team-b's is not.
        let v = idx.graph_version();
        let wider = granting("share", "x", &["team-b", "team-c"]);
        let wake = idx.apply_policy(&wider, [&granted]);
        assert_eq!(cross(&wake), BTreeSet::from([fk("team-c", "intruder")]));
        assert!(idx.graph_version() > v);
        // The selector stops selecting catalog: both grants are revoked.
        let elsewhere = granting("share", "y", &["team-b", "team-c"]);
        let wake = idx.apply_policy(&elsewhere, [&granted]);
        assert_eq!(
            cross(&wake),
            BTreeSet::from([fk("team-b", "aika"), fk("team-c", "intruder")])
        );
        // Selecting it again, then deleting the policy: the grants go with it.
        idx.apply_policy(&wider, [&granted]);
        let v = idx.graph_version();
        let wake = idx.delete_policy(&k("share"));
        assert_eq!(
            cross(&wake),
            BTreeSet::from([fk("team-b", "aika"), fk("team-c", "intruder")])
        );
        assert!(idx.graph_version() > v);
        // A policy that grants nothing moves no grant, whatever it selects.
        let v = idx.graph_version();
        let wake = idx.apply_policy(&policy("plain", "x"), [&granted]);
        assert_eq!(cross(&wake), BTreeSet::new());
        assert_eq!(idx.graph_version(), v);
    }

    /// One step of the grant property test.
    #[derive(Debug, Clone)]
    enum Step {
        /// Relabel catalog to `tier=<t>`.
        Relabel(&'static str),
        /// Apply policy `share` selecting `tier=<t>` and granting these namespaces.
        Policy(&'static str, Vec<&'static str>),
        /// Delete policy `share`.
        DeletePolicy,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        let tier = prop_oneof![Just("premium"), Just("x"), Just("y")];
        let grant = proptest::sample::subsequence(vec!["team-b", "team-c"], 0..=2);
        prop_oneof![
            tier.clone().prop_map(Step::Relabel),
            (tier, grant).prop_map(|(t, g)| Step::Policy(t, g)),
            Just(Step::DeletePolicy),
        ]
    }

    proptest::proptest! {
        /// Whatever the order of relabels and policy changes, each event wakes exactly the
        /// dependents in other namespaces whose permission (worked out from scratch, as the
        /// graph does) it flipped, and bumps the graph version exactly when one flipped.
        #[test]
        fn every_grant_change_wakes_exactly_the_dependents_it_flips(
            steps in proptest::collection::vec(step(), 1..24)
        ) {
            let (mut idx, mut catalog) = cross_namespace_world();
            let mut policy = Some(granting("share", "x", &["team-b"]));
            let elsewhere = [fk("team-b", "aika"), fk("team-c", "intruder")];
            let permitted = |policy: &Option<PremiumPolicy>, catalog: &PremiumFeature| {
                elsewhere
                    .iter()
                    .filter(|d| {
                        policy.as_ref().is_some_and(|p| {
                            selects(p, catalog)
                                && p.spec
                                    .expose_to
                                    .as_ref()
                                    .is_some_and(|e| e.namespaces.contains(&d.namespace))
                        })
                    })
                    .cloned()
                    .collect::<BTreeSet<_>>()
            };
            for step in steps {
                let before = permitted(&policy, &catalog);
                let version = idx.graph_version();
                let wake = match &step {
                    Step::Relabel(t) => {
                        catalog.labels_mut().insert("tier".into(), t.to_string());
                        idx.apply_feature(&catalog)
                    }
                    Step::Policy(t, g) => {
                        let p = granting("share", t, g);
                        policy = Some(p.clone());
                        idx.apply_policy(&p, [&catalog])
                    }
                    Step::DeletePolicy => {
                        policy = None;
                        idx.delete_policy(&k("share"))
                    }
                };
                let after = permitted(&policy, &catalog);
                let flipped: BTreeSet<FeatureKey> =
                    before.symmetric_difference(&after).cloned().collect();
                let woken: BTreeSet<FeatureKey> = wake
                    .features
                    .iter()
                    .chain(&wake.background)
                    .filter(|k| k.namespace != "portal")
                    .cloned()
                    .collect();
                proptest::prop_assert_eq!(&woken, &flipped, "after {:?}", step);
                proptest::prop_assert_eq!(
                    idx.graph_version() != version,
                    !flipped.is_empty(),
                    "graph version after {:?}",
                    step
                );
            }
        }
    }
}
