//! The dependency graph of premium features: start-up levels, cycles,
//! missing and not-permitted dependencies, the reverse index and the
//! start-up and teardown plans.
//!
//! Pure and deterministic: the result depends only on the set of nodes and
//! edges, never on input order, so reconciles of the same cluster state agree
//! and status is not rewritten for nothing. Every traversal is iterative so a
//! 10,000-feature cycle or chain cannot overflow the stack.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};

/// Identity of a feature: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FeatureKey {
    pub namespace: String,
    pub name: String,
}

impl FeatureKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The name as a person in `namespace` reads it: bare within the
    /// namespace, `ns/name` across namespaces.
    pub fn relative_to(&self, namespace: &str) -> String {
        if self.namespace == namespace {
            self.name.clone()
        } else {
            self.to_string()
        }
    }
}

/// Fully qualified `namespace/name`, unambiguous in logs and events.
impl fmt::Display for FeatureKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One `dependsOn` entry of a feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencyEdge {
    pub target: FeatureKey,
    /// Optional edges still order start-up and still close cycles; they only
    /// change how long a dependent waits, which is decided elsewhere.
    pub optional: bool,
}

/// A feature as the graph sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureNode {
    pub key: FeatureKey,
    pub depends_on: Vec<DependencyEdge>,
}

/// SCCs up to this size get a shortest cycle per member (one BFS each, so
/// `members × edges` work); larger ones get cheaper paths, see [`analyze`].
const EXACT_CYCLE_SCC_LIMIT: usize = 256;

/// Cap on stored path entries beyond one representative cycle per SCC, as a
/// multiple of the graph size plus a floor, so pathological graphs cannot
/// make paths quadratic in memory.
const PATH_BUDGET_PER_ELEMENT: usize = 8;
const PATH_BUDGET_FLOOR: usize = 1 << 16;

const UNVISITED: u32 = u32::MAX;

/// Where a member's cycle path lives: a window into a stored path. Cycles are
/// stored doubled (`c0..cn-1, c0..cn-1, c0`) so every rotation is a window
/// and all members of one cycle share one allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PathRef {
    store: u32,
    start: u32,
    /// Number of keys in the path (edges + 1).
    len: u32,
}

/// Everything decided about a set of features at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphAnalysis {
    /// Node keys, sorted; a key's position is its dense index.
    keys: Vec<FeatureKey>,
    startup_level: Vec<Option<u32>>,
    /// Whether a required dependency, direct or through required dependencies, is missing
    /// or not permitted.
    needs_unreachable: Vec<bool>,
    cycle: Vec<Option<PathRef>>,
    missing: Vec<Vec<FeatureKey>>,
    not_permitted: Vec<Vec<FeatureKey>>,
    path_store: Vec<Vec<FeatureKey>>,
    /// One cycle per non-trivial SCC, starting at its smallest member.
    representative_cycles: Vec<PathRef>,
    /// Per node, the indices of the dependencies it lists that exist and are permitted
    /// (required and optional).
    edges: Vec<Vec<u32>>,
}

/// See [`GraphAnalysis::facts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphFacts<'a> {
    pub level: Option<u32>,
    pub missing: &'a [FeatureKey],
    pub not_permitted: &'a [FeatureKey],
    pub cycle_len: usize,
    pub cycle_head: &'a [FeatureKey],
    pub cycle_tail: &'a [FeatureKey],
}

impl GraphAnalysis {
    fn index_of(&self, key: &FeatureKey) -> Option<usize> {
        self.keys.binary_search(key).ok()
    }

    /// The analysed features, sorted.
    pub fn keys(&self) -> &[FeatureKey] {
        &self.keys
    }

    /// Whether `key` was among the analysed features.
    pub fn contains(&self, key: &FeatureKey) -> bool {
        self.index_of(key).is_some()
    }

    /// Start-up level: 0 without dependencies, else one more than the
    /// deepest dependency. `None` for features on or behind a cycle, with or
    /// behind a missing or not-permitted required dependency, and for unknown
    /// keys.
    pub fn level(&self, key: &FeatureKey) -> Option<u32> {
        self.index_of(key).and_then(|i| self.startup_level[i])
    }

    /// Whether `key` needs, directly or through its required dependencies, a required
    /// dependency that is missing or not permitted (it then has no level).
    pub fn needs_unreachable(&self, key: &FeatureKey) -> bool {
        self.index_of(key)
            .is_some_and(|i| self.needs_unreachable[i])
    }

    /// Whether `key` is a member of a dependency cycle.
    pub fn on_cycle(&self, key: &FeatureKey) -> bool {
        self.index_of(key).is_some_and(|i| self.cycle[i].is_some())
    }

    /// A cycle path through `key`, starting and ending at it
    /// (`[aika, soundcheck, aika]`); `None` when `key` is not on a cycle.
    ///
    /// In SCCs up to 256 members this is a shortest cycle through `key`. In
    /// larger SCCs it is a simple cycle through `key`, not necessarily the
    /// shortest. Only when a pathological graph would need more stored
    /// path entries than a budget proportional to its size does a member get
    /// its SCC's representative cycle, which then may not pass through it.
    pub fn cycle(&self, key: &FeatureKey) -> Option<&[FeatureKey]> {
        let path = self.cycle[self.index_of(key)?]?;
        Some(self.resolve(path))
    }

    /// Dependencies of `key` that name no existing feature.
    pub fn missing(&self, key: &FeatureKey) -> &[FeatureKey] {
        self.index_of(key)
            .map_or(&[], |i| self.missing[i].as_slice())
    }

    /// Cross-namespace dependencies of `key` that no policy grants.
    pub fn not_permitted(&self, key: &FeatureKey) -> &[FeatureKey] {
        self.index_of(key)
            .map_or(&[], |i| self.not_permitted[i].as_slice())
    }

    /// Features that list `key` in `dependsOn`, sorted, whether or not `key` exists or may be
    /// depended on. A scan of every feature: for tools and tests. The operator's own reverse
    /// index lives in `controller::index` (an analysis kept a map of cloned keys for this,
    /// about 3 KB per feature and half of the analysis).
    pub fn dependents_of(&self, key: &FeatureKey) -> Vec<FeatureKey> {
        let target = self.index_of(key).map(|t| t as u32);
        (0..self.keys.len())
            .filter(|&i| match target {
                Some(t) => self.edges[i].contains(&t) || self.not_permitted[i].contains(key),
                None => self.missing[i].contains(key),
            })
            .map(|i| self.keys[i].clone())
            .collect()
    }

    /// One representative cycle per SCC, each starting (and ending) at its
    /// smallest key, sorted.
    pub fn cycles(&self) -> Vec<Vec<FeatureKey>> {
        let mut cycles: Vec<Vec<FeatureKey>> = self
            .representative_cycles
            .iter()
            .map(|path| self.resolve(*path).to_vec())
            .collect();
        cycles.sort();
        cycles
    }

    /// Start-up batches by level (0, 1, 2, …), sorted within a batch.
    /// Features without a level are blocked by a cycle and not planned.
    pub fn plan(&self) -> Vec<Vec<FeatureKey>> {
        let mut batches: Vec<Vec<FeatureKey>> = Vec::new();
        // Keys are sorted, so each batch comes out sorted.
        for (key, level) in self.keys.iter().zip(&self.startup_level) {
            if let Some(level) = *level {
                let level = level as usize;
                if batches.len() <= level {
                    batches.resize_with(level + 1, Vec::new);
                }
                batches[level].push(key.clone());
            }
        }
        batches.retain(|batch| !batch.is_empty());
        batches
    }

    /// Deletion batches, dependents before dependencies: features without a
    /// level (on or behind a cycle) first, then the highest level down to 0.
    pub fn teardown_order(&self) -> Vec<Vec<FeatureKey>> {
        let unordered: Vec<FeatureKey> = self
            .keys
            .iter()
            .zip(&self.startup_level)
            .filter(|(_, level)| level.is_none())
            .map(|(key, _)| key.clone())
            .collect();
        let mut batches = Vec::new();
        if !unordered.is_empty() {
            batches.push(unordered);
        }
        batches.extend(self.plan().into_iter().rev());
        batches
    }

    /// What a feature's reconcile reads of the analysis: its level, its missing and
    /// not-permitted dependencies and its cycle as the status spells it (length and the
    /// [`PATH_ENDS`] steps shown at each end).
    pub fn facts(&self, key: &FeatureKey) -> Option<GraphFacts<'_>> {
        let i = self.index_of(key)?;
        let cycle = self.cycle[i].map(|p| self.resolve(p)).unwrap_or(&[]);
        let ends = PATH_ENDS.min(cycle.len());
        Some(GraphFacts {
            level: self.startup_level[i],
            missing: &self.missing[i],
            not_permitted: &self.not_permitted[i],
            cycle_len: cycle.len(),
            cycle_head: &cycle[..ends],
            cycle_tail: &cycle[cycle.len() - ends..],
        })
    }

    /// Features analysed both here and in `older` whose [`facts`](Self::facts) differ: the
    /// ones to reconcile again after a change to the graph. A feature new here is left out
    /// (its first reconcile is queued anyway); one gone is reported through its dependents,
    /// whose missing dependencies changed. Each feature is compared once, so a chain growing
    /// by one feature wakes the few whose facts moved, not everything downstream.
    pub fn changed_since(&self, older: &GraphAnalysis) -> Vec<FeatureKey> {
        self.keys
            .iter()
            .filter(|key| match older.facts(key) {
                Some(before) => self.facts(key) != Some(before),
                None => false,
            })
            .cloned()
            .collect()
    }

    fn resolve(&self, path: PathRef) -> &[FeatureKey] {
        let start = path.start as usize;
        let end = start + path.len as usize;
        self.path_store
            .get(path.store as usize)
            .and_then(|stored| stored.get(start..end))
            .unwrap_or(&[])
    }
}

/// Renders a path for a message: `aika -> soundcheck -> aika`, with keys
/// outside `from_namespace` shown as `ns/name`.
///
/// A long path keeps its first and last [`PATH_ENDS`] steps and says how many it left out, so a
/// message stays readable and a 10,000-feature cycle does not make every member's message (and
/// so the whole report) grow with the square of its length.
pub fn path_string(path: &[FeatureKey], from_namespace: &str) -> String {
    let show = |keys: &[FeatureKey]| {
        keys.iter()
            .map(|key| key.relative_to(from_namespace))
            .collect::<Vec<_>>()
            .join(" -> ")
    };
    if path.len() <= 2 * PATH_ENDS + 1 {
        return show(path);
    }
    let hidden = path.len() - 2 * PATH_ENDS;
    format!(
        "{} -> … {hidden} more … -> {}",
        show(&path[..PATH_ENDS]),
        show(&path[path.len() - PATH_ENDS..])
    )
}

/// Steps shown at each end of a long path.
pub const PATH_ENDS: usize = 8;

mod live;
pub use live::{GraphChange, GraphSnapshot, LiveGraph, normalize_edges};

/// What a reconcile reads of the graph, whether a whole analysis ([`GraphAnalysis`], for tools
/// and tests) or the operator's incrementally kept [`GraphSnapshot`]: decisions take either.
pub trait DependencyFacts {
    /// See [`GraphAnalysis::level`].
    fn level(&self, key: &FeatureKey) -> Option<u32>;
    /// See [`GraphAnalysis::cycle`].
    fn cycle(&self, key: &FeatureKey) -> Option<&[FeatureKey]>;
    /// See [`GraphAnalysis::missing`].
    fn missing(&self, key: &FeatureKey) -> &[FeatureKey];
    /// See [`GraphAnalysis::not_permitted`].
    fn not_permitted(&self, key: &FeatureKey) -> &[FeatureKey];
    /// Whether `key` is a member of a dependency cycle.
    fn on_cycle(&self, key: &FeatureKey) -> bool {
        self.cycle(key).is_some()
    }
}

impl<T: DependencyFacts + ?Sized> DependencyFacts for std::sync::Arc<T> {
    fn level(&self, key: &FeatureKey) -> Option<u32> {
        (**self).level(key)
    }

    fn cycle(&self, key: &FeatureKey) -> Option<&[FeatureKey]> {
        (**self).cycle(key)
    }

    fn missing(&self, key: &FeatureKey) -> &[FeatureKey] {
        (**self).missing(key)
    }

    fn not_permitted(&self, key: &FeatureKey) -> &[FeatureKey] {
        (**self).not_permitted(key)
    }

    fn on_cycle(&self, key: &FeatureKey) -> bool {
        (**self).on_cycle(key)
    }
}

impl DependencyFacts for GraphAnalysis {
    fn level(&self, key: &FeatureKey) -> Option<u32> {
        GraphAnalysis::level(self, key)
    }

    fn cycle(&self, key: &FeatureKey) -> Option<&[FeatureKey]> {
        GraphAnalysis::cycle(self, key)
    }

    fn missing(&self, key: &FeatureKey) -> &[FeatureKey] {
        GraphAnalysis::missing(self, key)
    }

    fn not_permitted(&self, key: &FeatureKey) -> &[FeatureKey] {
        GraphAnalysis::not_permitted(self, key)
    }

    fn on_cycle(&self, key: &FeatureKey) -> bool {
        GraphAnalysis::on_cycle(self, key)
    }
}

#[cfg(test)]
mod path_string_tests {
    use super::*;

    #[test]
    fn short_paths_are_spelled_out_and_long_ones_shortened() {
        let keys = |n: usize| {
            (0..n)
                .map(|i| FeatureKey::new("ns", format!("f{i}")))
                .collect::<Vec<_>>()
        };
        assert_eq!(path_string(&keys(3), "ns"), "f0 -> f1 -> f2");
        assert_eq!(path_string(&keys(17), "ns").matches(" -> ").count(), 16);
        let long = path_string(&keys(10_001), "ns");
        assert!(long.starts_with("f0 -> f1 -> "), "{long}");
        assert!(long.contains("… 9985 more …"), "{long}");
        assert!(long.ends_with("f9999 -> f10000"), "{long}");
        assert!(long.len() < 300);
    }
}

/// Analyses `nodes`.
///
/// `permitted(dependent, target)` answers whether a cross-namespace edge is
/// granted; it is called once per distinct cross-namespace edge whose target
/// exists (a missing target is reported as missing: permission is granted by
/// policies selecting the target, which cannot be judged without it).
/// Missing and not-permitted edges are reported and left out of the graph;
/// every other edge, required or optional, orders start-up and can close a
/// cycle. Duplicate keys are merged (union of their dependencies) so the
/// result does not depend on which copy came first.
pub fn analyze(
    nodes: &[FeatureNode],
    permitted: impl Fn(&FeatureKey, &FeatureKey) -> bool,
) -> GraphAnalysis {
    let mut keys: Vec<FeatureKey> = nodes.iter().map(|node| node.key.clone()).collect();
    keys.sort();
    keys.dedup();
    let n = keys.len();
    let index_of = |key: &FeatureKey| keys.binary_search(key).ok();

    // (target, optional) per node; sorted so a required edge comes before an optional one
    // to the same target and wins the dedup.
    let mut targets: Vec<Vec<(&FeatureKey, bool)>> = vec![Vec::new(); n];
    for node in nodes {
        if let Some(i) = index_of(&node.key) {
            targets[i].extend(
                node.depends_on
                    .iter()
                    .map(|edge| (&edge.target, edge.optional)),
            );
        }
    }

    let mut adjacency: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut missing: Vec<Vec<FeatureKey>> = vec![Vec::new(); n];
    let mut not_permitted: Vec<Vec<FeatureKey>> = vec![Vec::new(); n];
    // Required dependencies that are missing or not permitted: the node gets no level.
    let mut unreachable = vec![0usize; n];
    // Reverse of the kept required edges.
    let mut required_by: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (i, node_targets) in targets.iter_mut().enumerate() {
        node_targets.sort();
        node_targets.dedup_by(|b, a| a.0 == b.0);
        let dependent = &keys[i];
        for &(target, optional) in node_targets.iter() {
            match index_of(target) {
                None => {
                    missing[i].push(target.clone());
                    unreachable[i] += usize::from(!optional);
                }
                Some(_)
                    if target.namespace != dependent.namespace && !permitted(dependent, target) =>
                {
                    not_permitted[i].push(target.clone());
                    unreachable[i] += usize::from(!optional);
                }
                Some(t) => {
                    adjacency[i].push(t as u32);
                    if !optional {
                        required_by[t].push(i as u32);
                    }
                }
            }
        }
    }
    let reverse_adjacency = reverse(&adjacency);
    let mut startup_level = startup_levels(&adjacency, &reverse_adjacency);
    // No level either for a feature whose required dependencies are not all there (missing,
    // not permitted, or themselves in that state): its depth is not known until they exist,
    // and a level that shifted with every feature added to a growing chain would rewrite the
    // status of the whole chain each time. Optional dependents keep theirs.
    let mut blocked: Vec<usize> = (0..n).filter(|&i| unreachable[i] > 0).collect();
    let mut seen = vec![false; n];
    let mut needs_unreachable = vec![false; n];
    for &i in &blocked {
        seen[i] = true;
    }
    while let Some(i) = blocked.pop() {
        startup_level[i] = None;
        needs_unreachable[i] = true;
        for &d in &required_by[i] {
            if !seen[d as usize] {
                seen[d as usize] = true;
                blocked.push(d as usize);
            }
        }
    }
    let paths = cycle_paths(&keys, &adjacency, &reverse_adjacency);

    GraphAnalysis {
        keys,
        startup_level,
        needs_unreachable,
        cycle: paths.member_path,
        missing,
        not_permitted,
        path_store: paths.store,
        representative_cycles: paths.representatives,
        edges: adjacency,
    }
}

/// Reverse adjacency: for each node, the kept edges' dependents of it.
fn reverse(adjacency: &[Vec<u32>]) -> Vec<Vec<u32>> {
    let mut reverse: Vec<Vec<u32>> = vec![Vec::new(); adjacency.len()];
    for (from, tos) in adjacency.iter().enumerate() {
        for &to in tos {
            reverse[to as usize].push(from as u32);
        }
    }
    reverse
}

/// Kahn's algorithm from the leaves: a node gets a level once all its
/// dependencies have one, so nodes on or behind a cycle never do.
fn startup_levels(adjacency: &[Vec<u32>], dependents: &[Vec<u32>]) -> Vec<Option<u32>> {
    let mut unresolved: Vec<usize> = adjacency.iter().map(Vec::len).collect();
    let mut level: Vec<Option<u32>> = vec![None; adjacency.len()];
    let mut ready: VecDeque<usize> = VecDeque::new();
    for (i, count) in unresolved.iter().enumerate() {
        if *count == 0 {
            level[i] = Some(0);
            ready.push_back(i);
        }
    }
    while let Some(node) = ready.pop_front() {
        let next = level[node].unwrap_or(0).saturating_add(1);
        for &dependent in &dependents[node] {
            let dependent = dependent as usize;
            level[dependent] = Some(level[dependent].map_or(next, |l| l.max(next)));
            unresolved[dependent] -= 1;
            if unresolved[dependent] == 0 {
                ready.push_back(dependent);
            }
        }
    }
    // A node with unresolved dependencies may have a partial level from the
    // loop above; it has no real level.
    for (i, count) in unresolved.iter().enumerate() {
        if *count != 0 {
            level[i] = None;
        }
    }
    level
}

/// Strongly connected components by an iterative Tarjan; returns each
/// node's component id and the components' members (sorted by index).
fn strongly_connected(adjacency: &[Vec<u32>]) -> (Vec<u32>, Vec<Vec<u32>>) {
    let n = adjacency.len();
    let mut index = vec![UNVISITED; n];
    let mut low = vec![0u32; n];
    let mut on_stack = vec![false; n];
    let mut stack: Vec<u32> = Vec::new();
    let mut component = vec![UNVISITED; n];
    let mut components: Vec<Vec<u32>> = Vec::new();
    let mut next_index = 0u32;
    // Explicit call stack: (node, position of the next edge to follow).
    let mut frames: Vec<(u32, usize)> = Vec::new();

    for root in 0..n as u32 {
        if index[root as usize] != UNVISITED {
            continue;
        }
        index[root as usize] = next_index;
        low[root as usize] = next_index;
        next_index += 1;
        stack.push(root);
        on_stack[root as usize] = true;
        frames.push((root, 0));

        while let Some(frame) = frames.last_mut() {
            let v = frame.0 as usize;
            if let Some(&w) = adjacency[v].get(frame.1) {
                frame.1 += 1;
                let wi = w as usize;
                if index[wi] == UNVISITED {
                    index[wi] = next_index;
                    low[wi] = next_index;
                    next_index += 1;
                    stack.push(w);
                    on_stack[wi] = true;
                    frames.push((w, 0));
                } else if on_stack[wi] {
                    low[v] = low[v].min(index[wi]);
                }
                continue;
            }
            frames.pop();
            if low[v] == index[v] {
                let id = components.len() as u32;
                let mut members = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w as usize] = false;
                    component[w as usize] = id;
                    members.push(w);
                    if w as usize == v {
                        break;
                    }
                }
                members.sort_unstable();
                components.push(members);
            }
            if let Some(parent) = frames.last() {
                let p = parent.0 as usize;
                low[p] = low[p].min(low[v]);
            }
        }
    }
    (component, components)
}

struct CyclePaths {
    member_path: Vec<Option<PathRef>>,
    store: Vec<Vec<FeatureKey>>,
    representatives: Vec<PathRef>,
}

/// Scratch space for BFS restricted to one SCC, reused across searches: a
/// generation stamp replaces clearing per search so small SCCs cost only
/// their own size.
struct Bfs {
    stamp: Vec<u32>,
    generation: u32,
    parent: Vec<u32>,
    queue: VecDeque<u32>,
}

impl Bfs {
    fn new(n: usize) -> Self {
        Self {
            stamp: vec![0; n],
            generation: 0,
            parent: vec![UNVISITED; n],
            queue: VecDeque::new(),
        }
    }

    fn start(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.stamp.fill(0);
            self.generation = 1;
        }
        self.queue.clear();
    }

    fn seen(&self, v: usize) -> bool {
        self.stamp[v] == self.generation
    }

    fn visit(&mut self, v: usize, parent: u32) {
        self.stamp[v] = self.generation;
        self.parent[v] = parent;
        self.queue.push_back(v as u32);
    }

    /// Shortest cycle through `root` inside component `id`, as node indices
    /// `[root, …, root]`. Adjacency is sorted, so the answer is canonical.
    fn shortest_cycle(
        &mut self,
        root: u32,
        adjacency: &[Vec<u32>],
        component: &[u32],
        id: u32,
    ) -> Option<Vec<u32>> {
        self.start();
        self.visit(root as usize, UNVISITED);
        while let Some(u) = self.queue.pop_front() {
            for &w in &adjacency[u as usize] {
                if w == root {
                    let mut path = vec![root];
                    let mut at = u;
                    while at != root {
                        path.push(at);
                        at = self.parent[at as usize];
                    }
                    path.push(root);
                    path.reverse();
                    return Some(path);
                }
                let wi = w as usize;
                if component[wi] == id && !self.seen(wi) {
                    self.visit(wi, u);
                }
            }
        }
        None
    }

    /// BFS tree from `root` inside component `id` along `adjacency`;
    /// returns each reached node's parent (root's parent is `UNVISITED`).
    fn tree(
        &mut self,
        root: u32,
        adjacency: &[Vec<u32>],
        component: &[u32],
        id: u32,
    ) -> BTreeMap<u32, u32> {
        self.start();
        self.visit(root as usize, UNVISITED);
        let mut parents = BTreeMap::new();
        parents.insert(root, UNVISITED);
        while let Some(u) = self.queue.pop_front() {
            for &w in &adjacency[u as usize] {
                let wi = w as usize;
                if component[wi] == id && !self.seen(wi) {
                    self.visit(wi, u);
                    parents.insert(w, u);
                }
            }
        }
        parents
    }
}

/// Builds cycle paths for every member of every non-trivial SCC.
///
/// Small SCCs (≤ [`EXACT_CYCLE_SCC_LIMIT`] members): a shortest cycle per
/// member, one BFS each, so at most 256 × E work in all. Large SCCs: a
/// shortest cycle through the smallest member (the representative); other
/// members, in key order, take the first stored cycle through them or else
/// a new one, `member -> … -> root -> … -> member` along the root's two BFS
/// trees with loops erased: O(V + E) for the trees plus path lengths, never
/// a search per member.
///
/// Every cycle is stored once, doubled, and reused by each member on it
/// (in small SCCs only when it is as short as the member's own), so a
/// 10,000-member ring is one allocation. Paths beyond the representatives
/// draw on a budget proportional to the graph size; past it a member gets
/// a stored cycle through it if there is one, else its SCC's representative.
fn cycle_paths(
    keys: &[FeatureKey],
    adjacency: &[Vec<u32>],
    reverse_adjacency: &[Vec<u32>],
) -> CyclePaths {
    let n = adjacency.len();
    let (component, components) = strongly_connected(adjacency);
    let edges: usize = adjacency.iter().map(Vec::len).sum();
    let mut budget = (n + edges)
        .saturating_mul(PATH_BUDGET_PER_ELEMENT)
        .saturating_add(PATH_BUDGET_FLOOR);

    let mut out = CyclePaths {
        member_path: vec![None; n],
        store: Vec::new(),
        representatives: Vec::new(),
    };
    // For each node, the shortest stored simple cycle through it.
    let mut shared: Vec<Option<PathRef>> = vec![None; n];
    let mut bfs = Bfs::new(n);

    for (id, members) in components.iter().enumerate() {
        let id = id as u32;
        let Some(&root) = members.first() else {
            continue;
        };
        let nontrivial = members.len() > 1 || adjacency[root as usize].contains(&root);
        if !nontrivial {
            continue;
        }
        // A non-trivial SCC always has a cycle through each member.
        let Some(root_cycle) = bfs.shortest_cycle(root, adjacency, &component, id) else {
            continue;
        };
        let representative = store_cycle(&mut out.store, &mut shared, keys, &root_cycle);
        out.representatives.push(representative);
        out.member_path[root as usize] = Some(representative);

        let large = members.len() > EXACT_CYCLE_SCC_LIMIT;
        let (to_root, from_root) = if large {
            (
                bfs.tree(root, reverse_adjacency, &component, id),
                bfs.tree(root, adjacency, &component, id),
            )
        } else {
            (BTreeMap::new(), BTreeMap::new())
        };

        for &member in &members[1..] {
            let m = member as usize;
            let path = if large {
                shared[m]
                    .map(Ok)
                    .unwrap_or_else(|| Err(cycle_via_root(member, root, &to_root, &from_root)))
            } else {
                match bfs.shortest_cycle(member, adjacency, &component, id) {
                    Some(path) => match shared[m] {
                        Some(known) if known.len as usize == path.len() => Ok(known),
                        _ => Err(path),
                    },
                    None => Ok(representative),
                }
            };
            out.member_path[m] = Some(match path {
                Ok(known) => known,
                Err(path) => {
                    let cost = 2 * path.len();
                    if cost <= budget {
                        budget -= cost;
                        // Starts at `member`, so the stored window fits as is.
                        store_cycle(&mut out.store, &mut shared, keys, &path)
                    } else {
                        shared[m].unwrap_or(representative)
                    }
                }
            });
        }
    }
    out
}

/// Stores a simple cycle `[c0, …, c0]` doubled, records it for every node on
/// it that knows no shorter one, and returns the window starting at `c0`.
fn store_cycle(
    store: &mut Vec<Vec<FeatureKey>>,
    shared: &mut [Option<PathRef>],
    keys: &[FeatureKey],
    cycle: &[u32],
) -> PathRef {
    let body = &cycle[..cycle.len().saturating_sub(1)];
    let mut doubled: Vec<FeatureKey> = Vec::with_capacity(2 * body.len() + 1);
    for _ in 0..2 {
        doubled.extend(body.iter().map(|&i| keys[i as usize].clone()));
    }
    if let Some(&first) = body.first() {
        doubled.push(keys[first as usize].clone());
    }
    store.push(doubled);
    let id = (store.len() - 1) as u32;
    let len = cycle.len() as u32;
    for (position, &v) in body.iter().enumerate() {
        let window = PathRef {
            store: id,
            start: position as u32,
            len,
        };
        let slot = &mut shared[v as usize];
        if slot.is_none_or(|known| known.len > len) {
            *slot = Some(window);
        }
    }
    PathRef {
        store: id,
        start: 0,
        len,
    }
}

/// A simple cycle `member -> … -> root -> … -> member` along the reverse
/// and forward BFS trees of `root`. The two legs may cross, so loops are
/// erased: a simple cycle is shared by all its members, a closed walk would
/// be stored per member.
fn cycle_via_root(
    member: u32,
    root: u32,
    to_root: &BTreeMap<u32, u32>,
    from_root: &BTreeMap<u32, u32>,
) -> Vec<u32> {
    // In the reverse tree a node's parent is its next hop towards the root.
    let mut walk = vec![member];
    let mut at = member;
    while at != root {
        match to_root.get(&at) {
            Some(&next) if next != UNVISITED => {
                walk.push(next);
                at = next;
            }
            _ => break,
        }
    }
    // In the forward tree parents lead back to the root; reverse that leg.
    // Shortest paths visit `member` only at their ends, so it appears only
    // first and last in the walk.
    let mut back = Vec::new();
    let mut at = member;
    while at != root {
        match from_root.get(&at) {
            Some(&previous) if previous != UNVISITED => {
                back.push(at);
                at = previous;
            }
            _ => break,
        }
    }
    walk.extend(back.iter().rev());
    walk.pop();

    // Loop erasure: on revisiting a node, cut back to its first visit. Every
    // step kept is still an edge, and the last kept node precedes `member`.
    let mut cycle: Vec<u32> = Vec::with_capacity(walk.len() + 1);
    let mut position: BTreeMap<u32, usize> = BTreeMap::new();
    for v in walk {
        if let Some(&p) = position.get(&v) {
            for dropped in cycle.drain(p + 1..) {
                position.remove(&dropped);
            }
        } else {
            position.insert(v, cycle.len());
            cycle.push(v);
        }
    }
    cycle.push(member);
    cycle
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(name: &str) -> FeatureKey {
        FeatureKey::new("portal", name)
    }

    fn node(name: &str, deps: &[&str]) -> FeatureNode {
        FeatureNode {
            key: key(name),
            depends_on: deps
                .iter()
                .map(|dep| DependencyEdge {
                    target: match dep.split_once('/') {
                        Some((ns, name)) => FeatureKey::new(ns, name),
                        None => key(dep),
                    },
                    optional: false,
                })
                .collect(),
        }
    }

    fn keys(names: &[&str]) -> Vec<FeatureKey> {
        names.iter().map(|name| key(name)).collect()
    }

    fn allow_all(_: &FeatureKey, _: &FeatureKey) -> bool {
        true
    }

    #[test]
    fn levels_follow_the_portal_example() {
        let graph = analyze(
            &[
                node("aika", &["catalog", "soundcheck", "skill-exchange"]),
                node("soundcheck", &["catalog"]),
                node("catalog", &[]),
                node("skill-exchange", &["catalog"]),
            ],
            allow_all,
        );
        assert_eq!(graph.level(&key("catalog")), Some(0));
        assert_eq!(graph.level(&key("soundcheck")), Some(1));
        assert_eq!(graph.level(&key("aika")), Some(2));
        assert_eq!(
            graph.plan(),
            vec![
                keys(&["catalog"]),
                keys(&["skill-exchange", "soundcheck"]),
                keys(&["aika"]),
            ]
        );
        assert_eq!(
            graph.teardown_order(),
            vec![
                keys(&["aika"]),
                keys(&["skill-exchange", "soundcheck"]),
                keys(&["catalog"]),
            ]
        );
        assert!(graph.cycles().is_empty());
        assert_eq!(
            graph.dependents_of(&key("catalog")),
            keys(&["aika", "skill-exchange", "soundcheck"]).as_slice()
        );
    }

    #[test]
    fn optional_edges_count_for_levels() {
        let mut aika = node("aika", &["catalog"]);
        aika.depends_on[0].optional = true;
        let graph = analyze(&[aika, node("catalog", &[])], allow_all);
        assert_eq!(graph.level(&key("aika")), Some(1));
    }

    #[test]
    fn cycle_is_spelled_from_each_member_and_spares_the_rest() {
        let graph = analyze(
            &[
                node("aika", &["soundcheck", "catalog"]),
                node("soundcheck", &["aika"]),
                node("catalog", &[]),
                node("portal-ui", &["aika"]),
            ],
            allow_all,
        );
        let aika = graph.cycle(&key("aika")).map(|p| path_string(p, "portal"));
        assert_eq!(aika.as_deref(), Some("aika -> soundcheck -> aika"));
        let soundcheck = graph.cycle(&key("soundcheck")).map(<[_]>::to_vec);
        assert_eq!(
            soundcheck,
            Some(keys(&["soundcheck", "aika", "soundcheck"]))
        );
        assert_eq!(graph.cycles(), vec![keys(&["aika", "soundcheck", "aika"])]);
        // Behind the cycle: no level, but not on it.
        assert_eq!(graph.level(&key("portal-ui")), None);
        assert!(!graph.on_cycle(&key("portal-ui")));
        assert_eq!(graph.cycle(&key("portal-ui")), None);
        assert_eq!(graph.level(&key("catalog")), Some(0));
        assert_eq!(
            graph.teardown_order(),
            vec![
                keys(&["aika", "portal-ui", "soundcheck"]),
                keys(&["catalog"])
            ]
        );
        assert_eq!(graph.plan(), vec![keys(&["catalog"])]);
    }

    #[test]
    fn self_loop_is_a_cycle() {
        let graph = analyze(&[node("aika", &["aika"])], allow_all);
        assert_eq!(
            graph.cycle(&key("aika")),
            Some(keys(&["aika", "aika"]).as_slice())
        );
        assert_eq!(graph.cycles(), vec![keys(&["aika", "aika"])]);
        assert_eq!(
            graph.dependents_of(&key("aika")),
            keys(&["aika"]).as_slice()
        );
    }

    #[test]
    fn each_member_gets_its_shortest_cycle() {
        // a -> b -> a and a -> c -> d -> a share a; c's shortest is the long one.
        let graph = analyze(
            &[
                node("a", &["b", "c"]),
                node("b", &["a"]),
                node("c", &["d"]),
                node("d", &["a"]),
            ],
            allow_all,
        );
        assert_eq!(
            graph.cycle(&key("a")),
            Some(keys(&["a", "b", "a"]).as_slice())
        );
        assert_eq!(
            graph.cycle(&key("c")),
            Some(keys(&["c", "d", "a", "c"]).as_slice())
        );
        assert_eq!(
            graph.cycle(&key("d")),
            Some(keys(&["d", "a", "c", "d"]).as_slice())
        );
        assert_eq!(graph.cycles(), vec![keys(&["a", "b", "a"])]);
    }

    #[test]
    fn a_growing_chain_changes_the_facts_of_its_end_only() {
        // d0 -> d1 -> … -> d(n-1) -> d(n) (missing), then d(n) appears needing d(n+1).
        let chain = |n: usize| -> Vec<FeatureNode> {
            (0..n)
                .map(|i| FeatureNode {
                    key: key(&format!("d{i}")),
                    depends_on: vec![DependencyEdge {
                        target: key(&format!("d{}", i + 1)),
                        optional: false,
                    }],
                })
                .collect()
        };
        let before = analyze(&chain(50), allow_all);
        let after = analyze(&chain(51), allow_all);
        assert_eq!(after.changed_since(&before), keys(&["d49"]));
        assert_eq!(before.changed_since(&before), Vec::<FeatureKey>::new());
        // Closing it into a cycle changes every member.
        let mut ring = chain(50);
        ring[49].depends_on[0].target = key("d0");
        let closed = analyze(&ring, allow_all);
        assert_eq!(closed.changed_since(&before).len(), 50);
        // A root appearing gives every member a level.
        let mut rooted = chain(50);
        rooted.push(node("d50", &[]));
        let rooted = analyze(&rooted, allow_all);
        assert_eq!(rooted.changed_since(&before).len(), 50);
        assert_eq!(rooted.level(&key("d0")), Some(50));
        assert!(before.needs_unreachable(&key("d0")));
        assert!(!rooted.needs_unreachable(&key("d0")));
    }

    #[test]
    fn a_missing_optional_dependency_leaves_the_level() {
        let graph = analyze(
            &[
                node("catalog", &[]),
                FeatureNode {
                    key: key("aika"),
                    depends_on: vec![
                        DependencyEdge {
                            target: key("catalog"),
                            optional: false,
                        },
                        DependencyEdge {
                            target: key("ghost"),
                            optional: true,
                        },
                    ],
                },
                node("portal-ui", &["aika"]),
            ],
            allow_all,
        );
        assert_eq!(graph.missing(&key("aika")), keys(&["ghost"]).as_slice());
        assert_eq!(graph.level(&key("aika")), Some(1));
        assert_eq!(graph.level(&key("portal-ui")), Some(2));
        // Listed twice, once required: required wins.
        let twice = analyze(
            &[FeatureNode {
                key: key("aika"),
                depends_on: vec![
                    DependencyEdge {
                        target: key("ghost"),
                        optional: true,
                    },
                    DependencyEdge {
                        target: key("ghost"),
                        optional: false,
                    },
                ],
            }],
            allow_all,
        );
        assert_eq!(twice.level(&key("aika")), None);
    }

    #[test]
    fn missing_dependencies_are_reported_and_indexed() {
        let graph = analyze(&[node("aika", &["catalog", "ghost"])], allow_all);
        assert_eq!(
            graph.missing(&key("aika")),
            keys(&["catalog", "ghost"]).as_slice()
        );
        // Its depth is not known until they exist.
        assert_eq!(graph.level(&key("aika")), None);
        // The reverse index names the dependent before the target exists.
        assert_eq!(
            graph.dependents_of(&key("ghost")),
            keys(&["aika"]).as_slice()
        );
        assert!(graph.dependents_of(&key("nobody")).is_empty());
        assert!(graph.missing(&key("nobody")).is_empty());
    }

    #[test]
    fn cross_namespace_edges_need_permission() {
        let nodes = [
            node(
                "aika",
                &["team-a/search", "team-b/search", "team-c/ghost", "catalog"],
            ),
            node("catalog", &[]),
            FeatureNode {
                key: FeatureKey::new("team-a", "search"),
                depends_on: vec![],
            },
            FeatureNode {
                key: FeatureKey::new("team-b", "search"),
                depends_on: vec![],
            },
        ];
        let asked = std::cell::RefCell::new(Vec::new());
        let graph = analyze(&nodes, |dependent, target| {
            asked.borrow_mut().push((dependent.clone(), target.clone()));
            target.namespace == "team-a"
        });
        // Asked once per existing cross-namespace target, never same-namespace.
        assert_eq!(
            asked.into_inner(),
            vec![
                (key("aika"), FeatureKey::new("team-a", "search")),
                (key("aika"), FeatureKey::new("team-b", "search")),
            ]
        );
        assert_eq!(
            graph.not_permitted(&key("aika")),
            [FeatureKey::new("team-b", "search")].as_slice()
        );
        assert_eq!(
            graph.missing(&key("aika")),
            [FeatureKey::new("team-c", "ghost")].as_slice()
        );
        assert_eq!(graph.level(&key("aika")), None);
        assert_eq!(
            graph.dependents_of(&FeatureKey::new("team-b", "search")),
            keys(&["aika"]).as_slice()
        );
    }

    #[test]
    fn not_permitted_edges_cannot_close_a_cycle() {
        let nodes = [
            node("aika", &["team-b/search"]),
            FeatureNode {
                key: FeatureKey::new("team-b", "search"),
                depends_on: vec![DependencyEdge {
                    target: key("aika"),
                    optional: false,
                }],
            },
        ];
        let graph = analyze(&nodes, |_, target| target.namespace == "portal");
        assert!(graph.cycles().is_empty());
        // aika cannot use search, and search waits for aika: neither has a level.
        assert_eq!(graph.level(&key("aika")), None);
        assert_eq!(graph.level(&FeatureKey::new("team-b", "search")), None);
        let granted = analyze(&nodes, allow_all);
        let path = granted
            .cycle(&key("aika"))
            .map(|p| path_string(p, "portal"));
        assert_eq!(path.as_deref(), Some("aika -> team-b/search -> aika"));
    }

    #[test]
    fn display_is_qualified() {
        assert_eq!(key("aika").to_string(), "portal/aika");
        assert_eq!(key("aika").relative_to("portal"), "aika");
        assert_eq!(key("aika").relative_to("team-a"), "portal/aika");
        assert_eq!(path_string(&[], "portal"), "");
    }

    #[test]
    fn duplicate_keys_merge_their_dependencies() {
        let graph = analyze(
            &[
                node("a", &["b"]),
                node("b", &[]),
                node("a", &["c", "b"]),
                node("c", &["b"]),
            ],
            allow_all,
        );
        assert_eq!(graph.keys(), keys(&["a", "b", "c"]).as_slice());
        assert_eq!(graph.level(&key("a")), Some(2));
        assert_eq!(graph.dependents_of(&key("b")), keys(&["a", "c"]).as_slice());
    }

    fn ring(n: usize) -> Vec<FeatureNode> {
        (0..n)
            .map(|i| FeatureNode {
                key: key(&format!("f{i:05}")),
                depends_on: vec![DependencyEdge {
                    target: key(&format!("f{:05}", (i + 1) % n)),
                    optional: false,
                }],
            })
            .collect()
    }

    #[test]
    fn ten_thousand_node_cycle_does_not_overflow() {
        let n = 10_000;
        let graph = analyze(&ring(n), allow_all);
        assert_eq!(graph.cycles().len(), 1);
        assert_eq!(graph.cycles()[0].len(), n + 1);
        for i in [0, 1, 4_999, n - 1] {
            let member = key(&format!("f{i:05}"));
            let path = graph.cycle(&member).unwrap_or(&[]);
            assert_eq!(path.len(), n + 1);
            assert_eq!(path.first(), Some(&member));
            assert_eq!(path.last(), Some(&member));
            assert_eq!(path[1], key(&format!("f{:05}", (i + 1) % n)));
        }
        assert!(graph.plan().is_empty());
        assert_eq!(graph.teardown_order().len(), 1);
        // One stored ring serves every member.
        assert_eq!(graph.path_store.len(), 1);
    }

    #[test]
    fn large_scc_members_off_the_representative_get_a_path_through_them() {
        // f00000 <-> f00001 is the shortest cycle through the root; the
        // long ring through f00000 is the only way round for everyone else.
        let n = 2_000;
        let mut nodes = ring(n);
        nodes[1].depends_on.push(DependencyEdge {
            target: key("f00000"),
            optional: false,
        });
        let graph = analyze(&nodes, allow_all);
        assert_eq!(graph.cycles(), vec![keys(&["f00000", "f00001", "f00000"])]);
        for i in [2, 500, n - 1] {
            let member = key(&format!("f{i:05}"));
            let path = graph.cycle(&member).unwrap_or(&[]);
            assert_eq!(path.first(), Some(&member));
            assert_eq!(path.last(), Some(&member));
            assert!(is_path(&nodes, path));
        }
    }

    #[test]
    fn crossing_legs_through_the_root_are_loop_erased() {
        // Found by proptest: with closed walks instead of simple cycles the
        // paths could not be shared and the budget ran out.
        let size = 343;
        let mut nodes = ring(size);
        for (from, to) in [(257, 39), (0, 221), (38, 142)] {
            nodes[from].depends_on.push(DependencyEdge {
                target: key(&format!("f{to:05}")),
                optional: false,
            });
        }
        let graph = analyze(&nodes, allow_all);
        for k in graph.keys() {
            let path = graph.cycle(k).unwrap_or(&[]);
            assert_eq!((path.first(), path.last()), (Some(k), Some(k)));
            assert!(is_path(&nodes, path));
            let mut body = path[..path.len() - 1].to_vec();
            body.sort();
            body.dedup();
            assert_eq!(body.len(), path.len() - 1, "{k} has no simple cycle");
        }
    }

    #[test]
    fn pathological_scc_paths_stay_within_the_memory_budget() {
        // root -> each of 300 spokes -> one shared 2,000-node chain -> root:
        // every spoke's only cycle is its own 2,000-long one, 600k keys in
        // all, so the budget runs out and late spokes fall back to the
        // representative cycle.
        let spokes = 300;
        let chain = 2_000;
        let spoke = |i: usize| key(&format!("s{i:03}"));
        let link = |i: usize| key(&format!("c{i:04}"));
        let edge = |target| DependencyEdge {
            target,
            optional: false,
        };
        let mut nodes = vec![FeatureNode {
            key: key("a-root"),
            depends_on: (0..spokes).map(|i| edge(spoke(i))).collect(),
        }];
        nodes.extend((0..spokes).map(|i| FeatureNode {
            key: spoke(i),
            depends_on: vec![edge(link(0))],
        }));
        nodes.extend((0..chain).map(|i| FeatureNode {
            key: link(i),
            depends_on: vec![edge(if i + 1 == chain {
                key("a-root")
            } else {
                link(i + 1)
            })],
        }));
        let graph = analyze(&nodes, allow_all);

        let stored: usize = graph.path_store.iter().map(Vec::len).sum();
        let size = nodes.len() + 2 * spokes + chain;
        let representative = 2 * (chain + 2) + 1;
        assert!(stored <= size * PATH_BUDGET_PER_ELEMENT + PATH_BUDGET_FLOOR + representative);
        assert!(graph.keys().iter().all(|k| graph.on_cycle(k)));
        let first = graph.cycle(&spoke(1)).unwrap_or(&[]);
        assert_eq!(first.first(), Some(&spoke(1)));
        let last = graph.cycle(&spoke(spokes - 1)).map(<[_]>::to_vec);
        assert_eq!(last, graph.cycles().first().cloned());
    }

    #[test]
    fn ten_thousand_node_chain_and_layered_dag() {
        let n = 10_000;
        let chain: Vec<FeatureNode> = (0..n)
            .map(|i| FeatureNode {
                key: key(&format!("f{i:05}")),
                depends_on: (i > 0)
                    .then(|| DependencyEdge {
                        target: key(&format!("f{:05}", i - 1)),
                        optional: false,
                    })
                    .into_iter()
                    .collect(),
            })
            .collect();
        let graph = analyze(&chain, allow_all);
        assert_eq!(graph.level(&key("f09999")), Some(9_999));
        assert_eq!(graph.plan().len(), n);
        assert_eq!(graph.teardown_order()[0], keys(&["f09999"]));

        // 10 levels of 1,000, each depending on 1-3 features one level down.
        let layered: Vec<FeatureNode> = (0..n)
            .map(|i| {
                let level = i / 1_000;
                let deps = if level == 0 { 0 } else { 1 + i % 3 };
                FeatureNode {
                    key: key(&format!("f{i:05}")),
                    depends_on: (0..deps)
                        .map(|d| DependencyEdge {
                            target: key(&format!(
                                "f{:05}",
                                (level - 1) * 1_000 + (i * 7 + d * 13) % 1_000
                            )),
                            optional: d == 2,
                        })
                        .collect(),
                }
            })
            .collect();
        let graph = analyze(&layered, allow_all);
        let plan = graph.plan();
        assert_eq!(plan.len(), 10);
        assert!(plan.iter().all(|batch| batch.len() == 1_000));
    }

    // ---- property tests ----

    /// Whether consecutive keys in `path` are edges among `nodes`.
    fn is_path(nodes: &[FeatureNode], path: &[FeatureKey]) -> bool {
        let edges: std::collections::HashSet<(&FeatureKey, &FeatureKey)> = nodes
            .iter()
            .flat_map(|n| n.depends_on.iter().map(move |e| (&n.key, &e.target)))
            .collect();
        path.windows(2)
            .all(|pair| edges.contains(&(&pair[0], &pair[1])))
    }

    /// Small graphs over names n0..n7 in two namespaces (n8 only as a missing
    /// target), with duplicate keys and edges and self-edges.
    fn arb_nodes() -> impl Strategy<Value = Vec<FeatureNode>> {
        let arb_key = (0..2u8, 0..9u8)
            .prop_map(|(ns, i)| FeatureKey::new(format!("ns{ns}"), format!("n{i}")));
        let arb_node = (
            arb_key.clone(),
            prop::collection::vec((arb_key, any::<bool>()), 0..4),
        )
            .prop_map(|(key, deps)| FeatureNode {
                key,
                depends_on: deps
                    .into_iter()
                    .map(|(target, optional)| DependencyEdge { target, optional })
                    .collect(),
            });
        // n8 is never a node key below, so edges to it stay missing.
        prop::collection::vec(arb_node, 0..14)
            .prop_map(|nodes| nodes.into_iter().filter(|n| n.key.name != "n8").collect())
    }

    /// Permission by a fixed rule so runs are reproducible.
    fn rule(dependent: &FeatureKey, target: &FeatureKey) -> bool {
        dependent.name <= target.name
    }

    /// The edges analyze should keep, by brute force.
    fn kept_edges(nodes: &[FeatureNode]) -> Vec<(FeatureKey, FeatureKey)> {
        let exists = |k: &FeatureKey| nodes.iter().any(|n| &n.key == k);
        let mut edges: Vec<_> = nodes
            .iter()
            .flat_map(|n| {
                n.depends_on
                    .iter()
                    .map(move |e| (n.key.clone(), e.target.clone()))
            })
            .filter(|(a, b)| exists(b) && (a.namespace == b.namespace || rule(a, b)))
            .collect();
        edges.sort();
        edges.dedup();
        edges
    }

    fn required_edges(nodes: &[FeatureNode]) -> Vec<(FeatureKey, FeatureKey)> {
        nodes
            .iter()
            .flat_map(|n| {
                n.depends_on
                    .iter()
                    .filter(|e| !e.optional)
                    .map(move |e| (n.key.clone(), e.target.clone()))
            })
            .collect()
    }

    /// Whether `k` is on or behind a cycle of kept edges.
    fn reaches_cycle(nodes: &[FeatureNode], k: &FeatureKey) -> bool {
        let edges = kept_edges(nodes);
        nodes
            .iter()
            .any(|c| reaches(&edges, &c.key, &c.key) && (&c.key == k || reaches(&edges, k, &c.key)))
    }

    fn reaches(edges: &[(FeatureKey, FeatureKey)], from: &FeatureKey, to: &FeatureKey) -> bool {
        let mut seen = vec![from.clone()];
        let mut frontier = vec![from.clone()];
        while let Some(at) = frontier.pop() {
            for (a, b) in edges {
                if a == &at {
                    if b == to {
                        return true;
                    }
                    if !seen.contains(b) {
                        seen.push(b.clone());
                        frontier.push(b.clone());
                    }
                }
            }
        }
        false
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn levels_respect_every_kept_edge(nodes in arb_nodes()) {
            let graph = analyze(&nodes, rule);
            for (a, b) in kept_edges(&nodes) {
                if let (Some(la), Some(lb)) = (graph.level(&a), graph.level(&b)) {
                    prop_assert!(la > lb, "{a} at {la} depends on {b} at {lb}");
                }
                let required = nodes.iter().any(|n| {
                    n.key == a && n.depends_on.iter().any(|e| e.target == b && !e.optional)
                });
                let b_cycle = graph.on_cycle(&b) || reaches_cycle(&nodes, &b);
                if graph.level(&b).is_none() && (required || b_cycle) {
                    prop_assert_eq!(graph.level(&a), None);
                }
            }
        }

        #[test]
        fn cycles_match_a_reachability_oracle(nodes in arb_nodes()) {
            let graph = analyze(&nodes, rule);
            let edges = kept_edges(&nodes);
            for k in graph.keys() {
                let on_cycle = reaches(&edges, k, k);
                prop_assert_eq!(graph.on_cycle(k), on_cycle);
                let behind_cycle = graph.keys().iter().any(|c| reaches(&edges, c, c) && reaches(&edges, k, c));
                // At, or behind by required edges, a required dependency that is missing or
                // not permitted.
                let required: Vec<_> = required_edges(&nodes)
                    .into_iter()
                    .filter(|e| edges.contains(e))
                    .collect();
                let behind_unreachable = nodes.iter().any(|n| {
                    let unreachable = n.depends_on.iter().any(|e| {
                        !e.optional && !edges.contains(&(n.key.clone(), e.target.clone()))
                    });
                    unreachable && (&n.key == k || reaches(&required, k, &n.key))
                });
                prop_assert_eq!(graph.level(k).is_none(), on_cycle || behind_cycle || behind_unreachable);
                if let Some(path) = graph.cycle(k) {
                    prop_assert!(path.len() >= 2);
                    prop_assert_eq!(path.first(), Some(k));
                    prop_assert_eq!(path.last(), Some(k));
                    prop_assert!(path.windows(2).all(|p| edges.contains(&(p[0].clone(), p[1].clone()))));
                }
            }
            prop_assert_eq!(graph.cycles().is_empty(), !graph.keys().iter().any(|k| reaches(&edges, k, k)));
            for cycle in graph.cycles() {
                prop_assert_eq!(cycle.first(), cycle.last());
                prop_assert!(cycle.iter().all(|k| cycle[0] <= *k));
                prop_assert!(cycle.windows(2).all(|p| edges.contains(&(p[0].clone(), p[1].clone()))));
            }
        }

        #[test]
        fn reported_edges_and_index_match_the_input(nodes in arb_nodes()) {
            let graph = analyze(&nodes, rule);
            let exists = |k: &FeatureKey| nodes.iter().any(|n| &n.key == k);
            for n in &nodes {
                for e in &n.depends_on {
                    prop_assert!(graph.dependents_of(&e.target).contains(&n.key));
                    let missing = graph.missing(&n.key).contains(&e.target);
                    let refused = graph.not_permitted(&n.key).contains(&e.target);
                    prop_assert_eq!(missing, !exists(&e.target));
                    prop_assert_eq!(
                        refused,
                        exists(&e.target) && n.key.namespace != e.target.namespace && !rule(&n.key, &e.target)
                    );
                }
            }
            let planned: Vec<FeatureKey> = graph.plan().concat();
            let torn: usize = graph.teardown_order().iter().map(Vec::len).sum();
            prop_assert_eq!(torn, graph.keys().len());
            prop_assert!(planned.iter().all(|k| graph.level(k).is_some()));
        }

        #[test]
        fn input_order_does_not_matter(
            nodes in arb_nodes(),
            seed in any::<u64>(),
        ) {
            let mut shuffled = nodes.clone();
            // Deterministic Fisher-Yates from the seed; edges shuffled too.
            let mut state = seed | 1;
            let mut next = |bound: usize| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % bound as u64) as usize
            };
            for i in (1..shuffled.len()).rev() {
                shuffled.swap(i, next(i + 1));
            }
            for n in &mut shuffled {
                for i in (1..n.depends_on.len()).rev() {
                    n.depends_on.swap(i, next(i + 1));
                }
            }
            let a = analyze(&nodes, rule);
            let b = analyze(&shuffled, rule);
            prop_assert_eq!(a.plan(), b.plan());
            prop_assert_eq!(a.cycles(), b.cycles());
            prop_assert_eq!(a.teardown_order(), b.teardown_order());
            for k in a.keys() {
                prop_assert_eq!(a.level(k), b.level(k));
                prop_assert_eq!(a.cycle(k), b.cycle(k));
                prop_assert_eq!(a.missing(k), b.missing(k));
                prop_assert_eq!(a.not_permitted(k), b.not_permitted(k));
                prop_assert_eq!(a.dependents_of(k), b.dependents_of(k));
            }
        }

        #[test]
        fn never_panics_on_arbitrary_strings(
            raw in prop::collection::vec(
                ((".{0,3}", ".{0,3}"), prop::collection::vec((".{0,3}", ".{0,3}", any::<bool>()), 0..5)),
                0..20,
            )
        ) {
            let nodes: Vec<FeatureNode> = raw
                .into_iter()
                .map(|((ns, name), deps)| FeatureNode {
                    key: FeatureKey::new(ns, name),
                    depends_on: deps
                        .into_iter()
                        .map(|(ns, name, optional)| DependencyEdge { target: FeatureKey::new(ns, name), optional })
                        .collect(),
                })
                .collect();
            let graph = analyze(&nodes, |a, b| a.name < b.name);
            let _ = (graph.plan(), graph.teardown_order(), graph.cycles());
            for k in graph.keys() {
                let _ = (graph.level(k), graph.cycle(k).map(|p| path_string(p, &k.namespace)));
            }
        }
    }

    proptest! {
        // Each case analyses a few hundred nodes: fewer cases.
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn large_scc_members_get_simple_cycles_through_them(
            size in 257usize..400,
            chords in prop::collection::vec((0usize..400, 0usize..400), 0..60),
        ) {
            let mut nodes = ring(size);
            for (from, to) in chords {
                nodes[from % size].depends_on.push(DependencyEdge {
                    target: key(&format!("f{:05}", to % size)),
                    optional: false,
                });
            }
            let graph = analyze(&nodes, allow_all);
            prop_assert_eq!(graph.cycles().len(), 1);
            let edges: std::collections::HashSet<(&FeatureKey, &FeatureKey)> = nodes
                .iter()
                .flat_map(|n| n.depends_on.iter().map(move |e| (&n.key, &e.target)))
                .collect();
            for k in graph.keys() {
                let path = graph.cycle(k).unwrap_or(&[]);
                prop_assert_eq!(path.first(), Some(k));
                prop_assert_eq!(path.last(), Some(k));
                prop_assert!(path.windows(2).all(|p| edges.contains(&(&p[0], &p[1]))));
                let mut body = path[..path.len() - 1].to_vec();
                body.sort();
                body.dedup();
                prop_assert_eq!(body.len(), path.len() - 1, "not a simple cycle");
            }
        }
    }
}
