//! What every reconcile is handed: the client, the caches, the index and the telemetry.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use kube::core::DeserializeGuard;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc::UnboundedSender;

use super::echoes::Echoes;
use super::index::{Index, Wake};
use super::memory::Memory;
use super::owned::OwnedStore;
/// Re-exported so the reconcilers keep one import for the context and its lock.
pub use super::sync::lock;
use crate::api::{PremiumFeature, PremiumFeatureStatus, PremiumPolicy};
use crate::core::budget::BudgetAllocation;
use crate::core::build::EventSource;
use crate::core::fair::FairQueue;
use crate::core::graph::{DependencyEdge, FeatureKey, FeatureNode, GraphAnalysis, analyze};
use crate::core::plan::dependency_key;
use crate::core::policy;
use crate::core::slots::StartSlots;
use crate::runtime::metrics::Metrics;

/// Operator settings from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    pub sidecar_image: String,
    pub field_manager: String,
    /// Longest wait of a feature being deleted for its dependents (see `core::teardown`).
    pub teardown_wait: std::time::Duration,
}

/// Caches of everything the reconcilers read.
#[derive(Clone)]
pub struct Stores {
    pub features: Store<DeserializeGuard<PremiumFeature>>,
    pub policies: Store<DeserializeGuard<PremiumPolicy>>,
    pub deployments: OwnedStore,
    pub services: OwnedStore,
    pub configmaps: OwnedStore,
    pub hpas: OwnedStore,
}

pub struct Context {
    pub client: Client,
    pub stores: Stores,
    pub index: Mutex<Index>,
    graph: tokio::sync::Mutex<GraphCache>,
    /// Budget allocations per policy, valid for one index budget version: computed once per
    /// change, not once per feature reconcile (each is O(features) policy merges).
    allocations: Mutex<(u64, BTreeMap<FeatureKey, Arc<BudgetAllocation>>)>,
    /// Who holds and who waits for the start-up slots of each policy.
    pub slots: Mutex<StartSlots>,
    /// Last budget shares per policy, to wake only the features whose share moved.
    pub budget_shares: Mutex<BTreeMap<FeatureKey, BTreeMap<String, u32>>>,
    /// What this instance remembers of each feature between its reconciles.
    pub memory: Memory,
    pub echoes: Arc<Echoes>,
    /// The back lane: first reconciles of new features and refreshes after graph changes, fed
    /// to the controller only while few reconciles run (see [`Context::next_in_back_lane`]).
    back_lane: Mutex<FairQueue>,
    back_lane_queued: tokio::sync::Notify,
    /// Feature reconciles running now.
    pub in_flight: AtomicUsize,
    pub feature_triggers: UnboundedSender<ObjectRef<DeserializeGuard<PremiumFeature>>>,
    pub policy_triggers: UnboundedSender<ObjectRef<DeserializeGuard<PremiumPolicy>>>,
    pub metrics: Arc<Metrics>,
    pub events: EventSource,
    pub settings: Settings,
    /// Failures in a row per object, for the retry backoff.
    pub retries: super::retry::Retries,
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        stores: Stores,
        echoes: Arc<Echoes>,
        feature_triggers: UnboundedSender<ObjectRef<DeserializeGuard<PremiumFeature>>>,
        policy_triggers: UnboundedSender<ObjectRef<DeserializeGuard<PremiumPolicy>>>,
        metrics: Arc<Metrics>,
        events: EventSource,
        settings: Settings,
    ) -> Self {
        Self {
            client,
            stores,
            index: Mutex::default(),
            graph: tokio::sync::Mutex::default(),
            allocations: Mutex::default(),
            slots: Mutex::default(),
            budget_shares: Mutex::default(),
            memory: Memory::default(),
            back_lane: Mutex::default(),
            back_lane_queued: tokio::sync::Notify::new(),
            in_flight: AtomicUsize::new(0),
            echoes,
            feature_triggers,
            policy_triggers,
            metrics,
            events,
            settings,
            retries: Default::default(),
        }
    }

    /// Waits until every cache has its first full list, so no decision is made from a partial
    /// picture (a missing Deployment or policy would otherwise look like a change to write).
    pub async fn wait_synced(&self) {
        let s = &self.stores;
        let _ = futures::join!(
            s.features.wait_until_ready(),
            s.policies.wait_until_ready(),
            s.deployments.wait_until_ready(),
            s.services.wait_until_ready(),
            s.configmaps.wait_until_ready(),
            s.hpas.wait_until_ready(),
        );
    }

    /// Valid features of one namespace.
    pub fn features_in(&self, namespace: &str) -> Vec<Cached<PremiumFeature>> {
        valid(&self.stores.features)
            .filter(|f| f.metadata.namespace.as_deref() == Some(namespace))
            .collect()
    }

    /// Valid policies of one namespace.
    pub fn policies_in(&self, namespace: &str) -> Vec<PremiumPolicy> {
        valid(&self.stores.policies)
            .filter(|p| p.namespace().as_deref() == Some(namespace))
            .map(|p| (*p).clone())
            .collect()
    }

    pub fn feature(&self, key: &FeatureKey) -> Option<Cached<PremiumFeature>> {
        let r = ObjectRef::new(&key.name).within(&key.namespace);
        self.stores.features.get(&r).and_then(Cached::new)
    }

    /// Whether `dependent` may list `target` in `dependsOn` across namespaces: the grant rule
    /// ([`policy::permitted`]) over the policies of the target's namespace.
    pub fn permitted(&self, dependent: &FeatureKey, target: &FeatureKey) -> bool {
        self.feature(target).is_some_and(|f| {
            policy::permitted(
                &self.policies_in(&target.namespace),
                target,
                f.labels(),
                &dependent.namespace,
            )
        })
    }

    /// The dependency graph of every feature in the cache, recomputed only when the index says
    /// an edge, a feature or a grant changed (see also [`Context::refresh_graph`]), and paced (see [`next_analysis`]): while features
    /// arrive one by one, reconciles wait for the next analysis instead of each paying for one.
    pub async fn graph(&self) -> Arc<GraphAnalysis> {
        let mut cache = self.graph.lock().await;
        loop {
            let version = lock(&self.index).graph_version();
            if let Some(g) = cache.graph.as_ref()
                && cache.version == version
            {
                return g.clone();
            }
            if let Some(at) = cache.next
                && tokio::time::Instant::now() < at
            {
                // Holding the lock: every waiter wants the same next analysis.
                tokio::time::sleep_until(at).await;
                continue;
            }
            let started = tokio::time::Instant::now();
            let graph = Arc::new(self.analyze_store());
            // Every analysis is compared with the one it replaces, so whoever's level, cycle
            // or missing dependencies moved is reconciled again, and no one else.
            if let Some(older) = cache.graph.as_ref() {
                let changed = graph.changed_since(older);
                if !changed.is_empty() {
                    // Through the back lane: what moved is mostly what status says (a level, a
                    // cycle found in a burst of thousands), and it must not hold up features
                    // whose dependencies just turned Ready.
                    self.wake(Wake {
                        background: changed.into_iter().collect(),
                        ..Default::default()
                    });
                }
            }
            let finished = tokio::time::Instant::now();
            cache.version = version;
            cache.graph = Some(graph.clone());
            cache.next = Some(finished + next_analysis(finished - started));
            return graph;
        }
    }

    /// Brings the analysis up to date if the graph changed since the last one (which then
    /// wakes whoever it concerns): called every tenth of a second, so a change that no
    /// reconcile asks about (a feature deleted) still reaches the features it concerns.
    pub async fn refresh_graph(&self) {
        let version = lock(&self.index).graph_version();
        let stale = self.graph.lock().await.version != version;
        if stale {
            self.graph().await;
        }
    }

    /// Analyses the features straight from the store: the analysis needs names and edges, not
    /// copies of whole features.
    fn analyze_store(&self) -> GraphAnalysis {
        let state = self.stores.features.state();
        let nodes: Vec<FeatureNode> = state
            .iter()
            .filter_map(|g| g.0.as_ref().ok())
            .map(|f| {
                let ns = f.namespace().unwrap_or_default();
                FeatureNode {
                    key: FeatureKey::new(ns.clone(), f.name_any()),
                    depends_on: f
                        .spec
                        .depends_on
                        .iter()
                        .map(|d| DependencyEdge {
                            target: dependency_key(&ns, d),
                            optional: d.optional,
                        })
                        .collect(),
                }
            })
            .collect();
        analyze(&nodes, |a, b| self.permitted(a, b))
    }

    /// The budget allocation of `policy`, from the cache while nothing it depends on changed.
    pub fn allocation(
        &self,
        policy: &PremiumPolicy,
        compute: impl FnOnce() -> BudgetAllocation,
    ) -> Arc<BudgetAllocation> {
        // The version is read before the caches: a change landing meanwhile bumps it again.
        let version = lock(&self.index).budget_version();
        let key = FeatureKey::new(policy.namespace().unwrap_or_default(), policy.name_any());
        {
            let cached = lock(&self.allocations);
            if cached.0 == version
                && let Some(a) = cached.1.get(&key)
            {
                return a.clone();
            }
        }
        let a = Arc::new(compute());
        let mut cached = lock(&self.allocations);
        if cached.0 != version {
            *cached = (version, BTreeMap::new());
        }
        cached.1.insert(key, a.clone());
        a
    }

    /// See [`Memory::status_seen`].
    pub fn status_seen(&self, key: &FeatureKey, cached: Option<&PremiumFeatureStatus>) {
        self.memory.status_seen(key, cached);
    }

    /// Waits for the next feature of the back lane (a new feature's first reconcile, or a
    /// refresh after a graph change) that may start: there is one queued and fewer than
    /// `max_in_flight` feature reconciles run. Everything else (a dependency
    /// turning Ready, a Deployment's rollout, a spec change) goes to the controller at once,
    /// so those never wait behind the first reconciles of a thousand features just applied;
    /// the new ones fill the capacity left over, in the order they came within a namespace
    /// and namespaces taking turns.
    ///
    /// The back lane never starves: while the controller stays busy, one of its features still
    /// goes every [`BACK_LANE_MIN_INTERVAL`], so a feature applied to a busy operator is told
    /// what it waits for within seconds, not once a long burst elsewhere has finished.
    pub async fn next_in_back_lane(&self, max_in_flight: usize) -> FeatureKey {
        let mut busy_since: Option<tokio::time::Instant> = None;
        loop {
            if lock(&self.back_lane).is_empty() {
                // Idle until something is queued (a permit is kept if it came just now).
                self.back_lane_queued.notified().await;
                continue;
            }
            let starved = busy_since.is_some_and(|t| t.elapsed() >= BACK_LANE_MIN_INTERVAL);
            if starved || self.in_flight.load(Ordering::Relaxed) < max_in_flight {
                if let Some(f) = lock(&self.back_lane).pop() {
                    return f;
                }
                continue;
            }
            // Busy: look again shortly, when some reconciles have finished.
            busy_since.get_or_insert_with(tokio::time::Instant::now);
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Queues reconciles for what an event woke.
    pub fn wake(&self, wake: Wake) {
        if !wake.background.is_empty() {
            let mut queue = lock(&self.back_lane);
            for f in wake.background {
                queue.push(f);
            }
            drop(queue);
            self.back_lane_queued.notify_one();
        }
        for f in wake.features {
            let _ = self
                .feature_triggers
                .send(ObjectRef::new(&f.name).within(&f.namespace));
        }
        for p in wake.policies {
            let _ = self
                .policy_triggers
                .send(ObjectRef::new(&p.name).within(&p.namespace));
        }
    }
}

/// Longest a new feature's first reconcile waits for a free slot while the controller is busy.
pub const BACK_LANE_MIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// The last dependency analysis and when the next may start.
#[derive(Default)]
struct GraphCache {
    version: u64,
    graph: Option<Arc<GraphAnalysis>>,
    next: Option<tokio::time::Instant>,
}

/// How long after an analysis that took `took` the next may start: analysis gets at most a
/// quarter of the time while the graph keeps changing (a 10,000-feature cycle created one
/// feature at a time), and costs no wait at all while it is quick.
pub fn next_analysis(took: std::time::Duration) -> std::time::Duration {
    (took * 3).min(std::time::Duration::from_secs(2))
}

/// A cached feature or policy that deserialized, shared with the cache rather than copied
/// (at 10,000 features a copy of every feature per policy reconcile was tens of megabytes).
pub struct Cached<K>(Arc<DeserializeGuard<K>>);

impl<K> Cached<K> {
    pub fn new(guard: Arc<DeserializeGuard<K>>) -> Option<Self> {
        guard.0.is_ok().then_some(Self(guard))
    }
}

impl<K> Clone for Cached<K> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<K> std::ops::Deref for Cached<K> {
    type Target = K;

    fn deref(&self) -> &K {
        match &self.0.0 {
            Ok(k) => k,
            Err(_) => unreachable!("Cached::new admits only objects that deserialized"),
        }
    }
}

impl<K> AsRef<K> for Cached<K> {
    fn as_ref(&self) -> &K {
        self
    }
}

/// The store's objects that deserialized.
fn valid<K>(store: &Store<DeserializeGuard<K>>) -> impl Iterator<Item = Cached<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone,
{
    store.state().into_iter().filter_map(Cached::new)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::next_analysis;

    #[test]
    fn analysis_is_paced_by_its_own_cost() {
        assert_eq!(next_analysis(Duration::ZERO), Duration::ZERO);
        assert_eq!(
            next_analysis(Duration::from_millis(2)),
            Duration::from_millis(6)
        );
        // A pathological graph never stalls reconciles for long.
        assert_eq!(
            next_analysis(Duration::from_secs(10)),
            Duration::from_secs(2)
        );
    }
}
