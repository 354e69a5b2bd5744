//! What every reconcile is handed: the client, the caches, the index and the telemetry.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use kube::core::DeserializeGuard;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event as WatchEvent;
use kube::{Client, ResourceExt};
use tokio::sync::mpsc::UnboundedSender;

use super::echoes::Echoes;
use super::graph::SharedGraph;
use super::index::{Index, Wake};
use super::lane::{BackLane, route};
use super::memory::Memory;
use super::owned::OwnedStore;
/// Re-exported so the reconcilers keep one import for the context and its lock.
pub use super::sync::lock;
use crate::api::{PremiumFeature, PremiumFeatureStatus, PremiumPolicy};
use crate::core::budget::BudgetAllocation;
use crate::core::build::EventSource;
use crate::core::graph::{FeatureKey, GraphSnapshot};
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
    /// The dependency graph, kept up to date from the index as events arrive.
    graph: SharedGraph,
    /// Whether the first list of features has been read: until then the graph only collects
    /// changes, and works them all out at once when the list is done.
    features_listed: AtomicBool,
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
    /// First reconciles of new features and refreshes after graph changes (`super::lane`).
    back_lane: BackLane,
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
            graph: SharedGraph::default(),
            features_listed: AtomicBool::new(false),
            allocations: Mutex::default(),
            slots: Mutex::default(),
            budget_shares: Mutex::default(),
            memory: Memory::default(),
            back_lane: BackLane::default(),
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

    /// The dependency graph as of the last event the watches handed on: levels, cycles,
    /// missing and not-permitted dependencies of every feature. Never waits for an analysis:
    /// the graph is brought up to date as events arrive (see `super::graph`), and a reconcile
    /// woken by an event sees that event's effect on it.
    pub fn graph(&self) -> Arc<GraphSnapshot> {
        self.graph.current()
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

    /// Waits for the next feature of the back lane that may start while fewer than
    /// `max_in_flight` feature reconciles run (see `super::lane`).
    pub async fn next_in_back_lane(&self, max_in_flight: usize) -> FeatureKey {
        self.back_lane.next(&self.in_flight, max_in_flight).await
    }

    /// Queues reconciles for what an event woke, once the graph has heard what the index
    /// recorded (so they read a graph at least as new as the event), together with the
    /// features whose level, cycle or missing dependencies that moved. Those go through the
    /// back lane: what moved is mostly what status says (a level, a cycle found in a burst of
    /// thousands), and it must not hold up features whose dependencies just turned Ready.
    pub fn wake(&self, mut wake: Wake) {
        let moved = self.graph.catch_up(&self.index);
        wake.background.extend(moved);
        self.route(wake);
    }

    /// Queues what a feature watch event woke. While the first list is read, the graph only
    /// collects changes (nothing reconciles yet) and hears them all when the list is done: one
    /// pass over the graph instead of one per feature.
    pub fn wake_after_feature_event<K>(&self, ev: &WatchEvent<K>, wake: Wake) {
        match ev {
            WatchEvent::InitApply(_) if !self.features_listed.load(Ordering::Relaxed) => {
                self.route(wake)
            }
            WatchEvent::InitDone => {
                self.features_listed.store(true, Ordering::Relaxed);
                self.wake(wake)
            }
            _ => self.wake(wake),
        }
    }

    fn route(&self, wake: Wake) {
        route(
            wake,
            &self.back_lane,
            |f| {
                let _ = self
                    .feature_triggers
                    .send(ObjectRef::new(&f.name).within(&f.namespace));
            },
            |p| {
                let _ = self
                    .policy_triggers
                    .send(ObjectRef::new(&p.name).within(&p.namespace));
            },
        );
    }
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
