//! The dependency graph kept up to date one change at a time, for the operator: a feature
//! created or deleted, its `dependsOn` edited, a grant given or taken back. [`analyze`] looks
//! at a whole graph at once and costs the size of the cluster; here a change costs what it can
//! reach.
//!
//! Levels, blocked dependencies and cycles all flow from a dependency to its dependents, so a
//! change to one feature's edges can only move the facts of the features that depend on it,
//! directly or not: its downstream closure, the *region*. Every cycle through a changed feature
//! lies inside that region too (each member depends on the others). So the region is worked
//! out again from the values just outside it, which cannot have moved, and nothing else is
//! visited.
//!
//! Readers get a [`GraphSnapshot`]: immutable and shared. It is split into shards, so publishing
//! a change copies the shards it wrote (a 64th of the map each), never the whole map.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use super::{
    DependencyEdge, DependencyFacts, FeatureKey, FeatureNode, GraphFacts, PATH_ENDS, analyze,
    strongly_connected,
};

/// Something the graph depends on changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphChange {
    /// A feature exists with these `dependsOn` edges (it is new, or they changed), or, with
    /// `None`, it is gone.
    Node(FeatureKey, Option<Vec<DependencyEdge>>),
    /// The namespaces now allowed to depend on a feature from outside its own namespace (the
    /// `exposeTo` of the policies selecting it). Forgotten with the feature.
    Grants(FeatureKey, BTreeSet<String>),
}

/// Edges sorted by target, one per target: a required edge wins over an optional one to the
/// same target, as in [`analyze`].
pub fn normalize_edges(mut edges: Vec<DependencyEdge>) -> Vec<DependencyEdge> {
    edges.sort_by(|a, b| (&a.target, a.optional).cmp(&(&b.target, b.optional)));
    edges.dedup_by(|later, first| later.target == first.target);
    edges
}

/// A member's cycle: a window into a stored doubled cycle shared by every member on it (a
/// 10,000-feature ring is one allocation, not 10,000 copies of its path).
#[derive(Debug, Clone)]
struct CyclePath {
    store: Arc<[FeatureKey]>,
    start: u32,
    len: u32,
}

impl CyclePath {
    fn keys(&self) -> &[FeatureKey] {
        let start = self.start as usize;
        self.store
            .get(start..start + self.len as usize)
            .unwrap_or(&[])
    }
}

/// Two paths are the same when they spell the same keys, wherever they are stored.
impl PartialEq for CyclePath {
    fn eq(&self, other: &Self) -> bool {
        self.keys() == other.keys()
    }
}

impl Eq for CyclePath {}

/// Everything decided about one feature.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct NodeFacts {
    level: Option<u32>,
    needs_unreachable: bool,
    cycle: Option<CyclePath>,
    missing: Vec<FeatureKey>,
    not_permitted: Vec<FeatureKey>,
}

impl NodeFacts {
    fn view(&self) -> GraphFacts<'_> {
        let cycle = self.cycle.as_ref().map_or(&[][..], CyclePath::keys);
        let ends = PATH_ENDS.min(cycle.len());
        GraphFacts {
            level: self.level,
            missing: &self.missing,
            not_permitted: &self.not_permitted,
            cycle_len: cycle.len(),
            cycle_head: &cycle[..ends],
            cycle_tail: &cycle[cycle.len() - ends..],
        }
    }
}

const SHARDS: usize = 64;

type Shard = HashMap<FeatureKey, Arc<NodeFacts>>;

fn shard_of(key: &FeatureKey) -> usize {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % SHARDS as u64) as usize
}

/// The facts of every feature at one moment, as a reconcile reads them. Cloning one is cheap
/// (an `Arc` per shard) and it never changes once published.
#[derive(Debug, Clone)]
pub struct GraphSnapshot {
    shards: Vec<Arc<Shard>>,
    len: usize,
}

impl Default for GraphSnapshot {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Arc::default()).collect(),
            len: 0,
        }
    }
}

impl GraphSnapshot {
    fn get(&self, key: &FeatureKey) -> Option<&NodeFacts> {
        self.shards[shard_of(key)].get(key).map(|f| &**f)
    }

    fn set(&mut self, key: FeatureKey, facts: NodeFacts) {
        let shard = Arc::make_mut(&mut self.shards[shard_of(&key)]);
        if shard.insert(key, Arc::new(facts)).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, key: &FeatureKey) {
        let at = shard_of(key);
        if self.shards[at].contains_key(key) {
            Arc::make_mut(&mut self.shards[at]).remove(key);
            self.len -= 1;
        }
    }

    /// Number of features known.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, key: &FeatureKey) -> bool {
        self.get(key).is_some()
    }

    /// See [`super::GraphAnalysis::level`].
    pub fn level(&self, key: &FeatureKey) -> Option<u32> {
        self.get(key).and_then(|f| f.level)
    }

    /// See [`super::GraphAnalysis::cycle`].
    pub fn cycle(&self, key: &FeatureKey) -> Option<&[FeatureKey]> {
        self.get(key)?.cycle.as_ref().map(CyclePath::keys)
    }

    pub fn on_cycle(&self, key: &FeatureKey) -> bool {
        self.get(key).is_some_and(|f| f.cycle.is_some())
    }

    /// See [`super::GraphAnalysis::missing`].
    pub fn missing(&self, key: &FeatureKey) -> &[FeatureKey] {
        self.get(key).map_or(&[], |f| f.missing.as_slice())
    }

    /// See [`super::GraphAnalysis::not_permitted`].
    pub fn not_permitted(&self, key: &FeatureKey) -> &[FeatureKey] {
        self.get(key).map_or(&[], |f| f.not_permitted.as_slice())
    }

    /// See [`super::GraphAnalysis::needs_unreachable`].
    pub fn needs_unreachable(&self, key: &FeatureKey) -> bool {
        self.get(key).is_some_and(|f| f.needs_unreachable)
    }

    /// See [`super::GraphAnalysis::facts`].
    pub fn facts(&self, key: &FeatureKey) -> Option<GraphFacts<'_>> {
        self.get(key).map(NodeFacts::view)
    }
}

impl DependencyFacts for GraphSnapshot {
    fn level(&self, key: &FeatureKey) -> Option<u32> {
        GraphSnapshot::level(self, key)
    }

    fn cycle(&self, key: &FeatureKey) -> Option<&[FeatureKey]> {
        GraphSnapshot::cycle(self, key)
    }

    fn missing(&self, key: &FeatureKey) -> &[FeatureKey] {
        GraphSnapshot::missing(self, key)
    }

    fn not_permitted(&self, key: &FeatureKey) -> &[FeatureKey] {
        GraphSnapshot::not_permitted(self, key)
    }

    fn on_cycle(&self, key: &FeatureKey) -> bool {
        GraphSnapshot::on_cycle(self, key)
    }
}

/// One feature as the live graph keeps it between changes.
#[derive(Debug, Default)]
struct Node {
    /// As listed, normalised (see [`normalize_edges`]).
    edges: Vec<DependencyEdge>,
    /// The edges that count: their target exists and may be depended on. Sorted by target.
    kept: Vec<DependencyEdge>,
    missing: Vec<FeatureKey>,
    not_permitted: Vec<FeatureKey>,
    /// A required dependency of its own is missing or not permitted.
    unreachable: bool,
    /// The level its kept edges give it, blocked dependencies aside: `None` on or behind a
    /// cycle. Its optional dependents build on it even when it is blocked itself.
    depth: Option<u32>,
    needs_unreachable: bool,
}

/// The graph the operator keeps as events arrive: [`LiveGraph::apply`] each change, then
/// [`LiveGraph::flush`] to work out what they moved and [`LiveGraph::snapshot`] to publish.
#[derive(Debug, Default)]
pub struct LiveGraph {
    nodes: HashMap<FeatureKey, Node>,
    /// Who lists each key in `dependsOn`, whether it exists or may be depended on or not.
    listed_by: HashMap<FeatureKey, BTreeSet<FeatureKey>>,
    grants: HashMap<FeatureKey, BTreeSet<String>>,
    /// Features whose own edges must be looked at again at the next flush.
    dirty: BTreeSet<FeatureKey>,
    snapshot: GraphSnapshot,
    /// Features the last flush worked on (for tests of its cost).
    touched: usize,
}

impl LiveGraph {
    pub fn apply(&mut self, change: GraphChange) {
        match change {
            GraphChange::Node(key, Some(edges)) => self.set_node(key, normalize_edges(edges)),
            GraphChange::Node(key, None) => self.remove_node(&key),
            GraphChange::Grants(key, namespaces) => self.set_grants(key, namespaces),
        }
    }

    /// The facts as of the last flush.
    pub fn snapshot(&self) -> GraphSnapshot {
        self.snapshot.clone()
    }

    /// Features the last flush worked on: the changed ones and everything downstream of them.
    pub fn touched(&self) -> usize {
        self.touched
    }

    /// Works out the facts the changes applied since the last flush moved, and returns the
    /// features whose facts as a reconcile reads them ([`GraphSnapshot::facts`]) differ: new
    /// features and deleted ones are left out, as in [`super::GraphAnalysis::changed_since`].
    pub fn flush(&mut self) -> BTreeSet<FeatureKey> {
        let seeds = std::mem::take(&mut self.dirty);
        for key in &seeds {
            if self.nodes.contains_key(key) {
                self.classify(key);
            } else {
                self.snapshot.remove(key);
            }
        }
        let region = self.region(seeds.iter().filter(|k| self.nodes.contains_key(*k)));
        self.touched = region.len();
        let at: HashMap<&FeatureKey, u32> = region
            .iter()
            .enumerate()
            .map(|(i, k)| (k, i as u32))
            .collect();
        let adjacency: Vec<Vec<u32>> = region
            .iter()
            .map(|k| {
                let mut targets: Vec<u32> = self.nodes[k]
                    .kept
                    .iter()
                    .filter_map(|e| at.get(&e.target).copied())
                    .collect();
                targets.sort_unstable();
                targets
            })
            .collect();
        let (_, components) = strongly_connected(&adjacency);
        self.settle_depths(&region, &adjacency, &components);
        self.settle_blocked(&region);
        let cycles = cycle_paths(&region, &adjacency, &components);
        self.publish(&region, cycles)
    }

    fn permitted(&self, dependent: &FeatureKey, target: &FeatureKey) -> bool {
        dependent.namespace == target.namespace
            || self
                .grants
                .get(target)
                .is_some_and(|g| g.contains(&dependent.namespace))
    }

    fn set_node(&mut self, key: FeatureKey, edges: Vec<DependencyEdge>) {
        let existed = match self.nodes.get(&key) {
            Some(node) if node.edges == edges => return,
            Some(_) => true,
            None => false,
        };
        if let Some(old) = self.nodes.remove(&key) {
            self.unlist(&key, &old.edges);
        }
        for e in &edges {
            self.listed_by
                .entry(e.target.clone())
                .or_default()
                .insert(key.clone());
        }
        self.nodes.insert(
            key.clone(),
            Node {
                edges,
                ..Default::default()
            },
        );
        if !existed {
            // Whoever listed it missing may have it now.
            self.touch_listers(&key, false);
        }
        self.dirty.insert(key);
    }

    fn remove_node(&mut self, key: &FeatureKey) {
        // Its grants go with it, even those heard before the feature itself.
        self.grants.remove(key);
        let Some(old) = self.nodes.remove(key) else {
            return;
        };
        self.unlist(key, &old.edges);
        self.touch_listers(key, false);
        self.dirty.insert(key.clone());
    }

    fn set_grants(&mut self, target: FeatureKey, namespaces: BTreeSet<String>) {
        let same = self
            .grants
            .get(&target)
            .map_or(namespaces.is_empty(), |g| *g == namespaces);
        if same {
            return;
        }
        if namespaces.is_empty() {
            self.grants.remove(&target);
        } else {
            self.grants.insert(target.clone(), namespaces);
        }
        self.touch_listers(&target, true);
    }

    fn unlist(&mut self, key: &FeatureKey, edges: &[DependencyEdge]) {
        for e in edges {
            if let Some(set) = self.listed_by.get_mut(&e.target) {
                set.remove(key);
                if set.is_empty() {
                    self.listed_by.remove(&e.target);
                }
            }
        }
    }

    /// Marks the features that list `target` (only those in other namespaces with
    /// `cross_only`, the only ones a grant concerns) for a look at their edges.
    fn touch_listers(&mut self, target: &FeatureKey, cross_only: bool) {
        if let Some(set) = self.listed_by.get(target) {
            self.dirty.extend(
                set.iter()
                    .filter(|d| !cross_only || d.namespace != target.namespace)
                    .cloned(),
            );
        }
    }

    /// Sorts a feature's edges into kept, missing and not permitted.
    fn classify(&mut self, key: &FeatureKey) {
        let Some(node) = self.nodes.get(key) else {
            return;
        };
        let mut sorted = Node::default();
        for e in &node.edges {
            if !self.nodes.contains_key(&e.target) {
                sorted.missing.push(e.target.clone());
            } else if !self.permitted(key, &e.target) {
                sorted.not_permitted.push(e.target.clone());
            } else {
                sorted.kept.push(e.clone());
                continue;
            }
            sorted.unreachable |= !e.optional;
        }
        if let Some(node) = self.nodes.get_mut(key) {
            node.kept = sorted.kept;
            node.missing = sorted.missing;
            node.not_permitted = sorted.not_permitted;
            node.unreachable = sorted.unreachable;
        }
    }

    /// The features that keep an edge to `target`, and whether that edge is optional.
    fn kept_by<'a>(
        &'a self,
        target: &'a FeatureKey,
    ) -> impl Iterator<Item = (&'a FeatureKey, bool)> + 'a {
        self.listed_by
            .get(target)
            .into_iter()
            .flatten()
            .filter_map(move |d| {
                let node = self.nodes.get(d)?;
                let i = node.kept.binary_search_by(|e| e.target.cmp(target)).ok()?;
                Some((d, node.kept[i].optional))
            })
    }

    /// `seeds` and everything that depends on them through kept edges.
    fn region<'a>(&self, seeds: impl Iterator<Item = &'a FeatureKey>) -> Vec<FeatureKey> {
        let mut stack: Vec<FeatureKey> = seeds.cloned().collect();
        let mut seen: HashSet<FeatureKey> = stack.iter().cloned().collect();
        let mut region = Vec::new();
        while let Some(key) = stack.pop() {
            for (dependent, _) in self.kept_by(&key) {
                if seen.insert(dependent.clone()) {
                    stack.push(dependent.clone());
                }
            }
            region.push(key);
        }
        region
    }

    /// Depths of the region, dependencies first: components come out of Tarjan's algorithm
    /// after every component they depend on.
    fn settle_depths(
        &mut self,
        region: &[FeatureKey],
        adjacency: &[Vec<u32>],
        components: &[Vec<u32>],
    ) {
        for members in components {
            let first = members[0];
            let cyclic = members.len() > 1 || adjacency[first as usize].contains(&first);
            for &m in members {
                let key = &region[m as usize];
                let depth = if cyclic { None } else { self.depth_of(key) };
                if let Some(node) = self.nodes.get_mut(key) {
                    node.depth = depth;
                }
            }
        }
    }

    fn depth_of(&self, key: &FeatureKey) -> Option<u32> {
        let mut depth = 0u32;
        for e in &self.nodes.get(key)?.kept {
            let below = self.nodes.get(&e.target)?.depth?;
            depth = depth.max(below.saturating_add(1));
        }
        Some(depth)
    }

    /// Which features of the region need, through required edges, one that is missing or not
    /// permitted. Outside the region nothing moved, and nothing there depends on the region.
    fn settle_blocked(&mut self, region: &[FeatureKey]) {
        let inside: HashSet<&FeatureKey> = region.iter().collect();
        let mut blocked: HashSet<FeatureKey> = HashSet::new();
        let mut stack: Vec<FeatureKey> = Vec::new();
        for key in region {
            let node = &self.nodes[key];
            let behind = node.unreachable
                || node.kept.iter().any(|e| {
                    !e.optional
                        && !inside.contains(&e.target)
                        && self
                            .nodes
                            .get(&e.target)
                            .is_some_and(|t| t.needs_unreachable)
                });
            if behind && blocked.insert(key.clone()) {
                stack.push(key.clone());
            }
        }
        while let Some(key) = stack.pop() {
            for (dependent, optional) in self.kept_by(&key) {
                if !optional && inside.contains(dependent) && blocked.insert(dependent.clone()) {
                    stack.push(dependent.clone());
                }
            }
        }
        for key in region {
            if let Some(node) = self.nodes.get_mut(key) {
                node.needs_unreachable = blocked.contains(key);
            }
        }
    }

    /// Writes the region's new facts into the snapshot and returns whose moved.
    fn publish(
        &mut self,
        region: &[FeatureKey],
        mut cycles: HashMap<FeatureKey, CyclePath>,
    ) -> BTreeSet<FeatureKey> {
        let mut changed = BTreeSet::new();
        for key in region {
            let Some(node) = self.nodes.get(key) else {
                continue;
            };
            let facts = NodeFacts {
                level: node.depth.filter(|_| !node.needs_unreachable),
                needs_unreachable: node.needs_unreachable,
                cycle: cycles.remove(key),
                missing: node.missing.clone(),
                not_permitted: node.not_permitted.clone(),
            };
            match self.snapshot.get(key) {
                Some(old) if *old == facts => continue,
                Some(old) if old.view() != facts.view() => {
                    changed.insert(key.clone());
                }
                _ => {}
            }
            self.snapshot.set(key.clone(), facts);
        }
        changed
    }
}

/// Cycle paths of the region's cyclic components, each analysed on its own: paths stay inside
/// their component, so they come out as a whole-graph [`analyze`] spells them (unless a
/// pathological graph runs out of the path budget, which is counted per analysis).
fn cycle_paths(
    region: &[FeatureKey],
    adjacency: &[Vec<u32>],
    components: &[Vec<u32>],
) -> HashMap<FeatureKey, CyclePath> {
    let mut paths = HashMap::new();
    for members in components {
        let first = members[0];
        if members.len() == 1 && !adjacency[first as usize].contains(&first) {
            continue;
        }
        let nodes: Vec<FeatureNode> = members
            .iter()
            .map(|&m| FeatureNode {
                key: region[m as usize].clone(),
                depends_on: adjacency[m as usize]
                    .iter()
                    .filter(|t| members.binary_search(t).is_ok())
                    .map(|&t| DependencyEdge {
                        target: region[t as usize].clone(),
                        optional: false,
                    })
                    .collect(),
            })
            .collect();
        let analysis = analyze(&nodes, |_, _| true);
        let stores: Vec<Arc<[FeatureKey]>> =
            analysis.path_store.into_iter().map(Arc::from).collect();
        for (key, path) in analysis.keys.into_iter().zip(analysis.cycle) {
            if let Some(p) = path {
                let store = stores[p.store as usize].clone();
                paths.insert(
                    key,
                    CyclePath {
                        store,
                        start: p.start,
                        len: p.len,
                    },
                );
            }
        }
    }
    paths
}

#[cfg(test)]
mod tests;
