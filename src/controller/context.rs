//! What every reconcile is handed: the client, the caches, the index and the telemetry.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use kube::core::DeserializeGuard;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event as WatchEvent;
use kube::{Client, ResourceExt};
use tokio::sync::mpsc::UnboundedSender;

use super::graph::SharedGraph;
use super::index::{Index, Wake};
use super::lane::{BackLane, route};
use super::owned::OwnedStore;
use crate::api::{PremiumFeature, PremiumFeatureStatus, PremiumPolicy};
use crate::core::budget::BudgetAllocation;
use crate::core::build::EventSource;
use crate::core::graph::{FeatureKey, GraphSnapshot};
use crate::core::policy::selects;
use crate::core::signal::Written;
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

/// What this instance wrote to each owned object (kind, namespace, name), oldest first, until
/// the watch echoes it back: that echo tells the writer nothing and wakes nobody. A drift
/// repair writes twice in a row (an apply, then a removal), so more than one can be in flight.
#[derive(Debug, Default)]
pub struct Echoes(Mutex<HashMap<ObjectKey, Vec<Written>>>);

/// Kind, namespace and name of an owned object.
type ObjectKey = (&'static str, String, String);

/// Writes remembered per object at most; older ones are dropped (their echo then wakes the
/// owner once, which costs a reconcile, never a wrong decision).
const ECHOES_PER_OBJECT: usize = 4;

impl Echoes {
    pub fn remember(&self, kind: &'static str, namespace: &str, name: &str, written: Written) {
        let mut map = lock(&self.0);
        let pending = map
            .entry((kind, namespace.to_string(), name.to_string()))
            .or_default();
        if pending.last() != Some(&written) {
            pending.push(written);
        }
        if pending.len() > ECHOES_PER_OBJECT {
            pending.remove(0);
        }
    }

    /// Whether `seen` is the echo of a write remembered for the object; that write and the
    /// ones before it are forgotten, so the map only holds writes still in flight.
    pub fn is_echo(&self, kind: &'static str, namespace: &str, name: &str, seen: &Written) -> bool {
        let key = (kind, namespace.to_string(), name.to_string());
        let mut map = lock(&self.0);
        let Some(pending) = map.get_mut(&key) else {
            return false;
        };
        let Some(at) = pending.iter().position(|w| w == seen) else {
            return false;
        };
        pending.drain(..=at);
        if pending.is_empty() {
            map.remove(&key);
        }
        true
    }

    pub fn forget(&self, kind: &'static str, namespace: &str, name: &str) {
        lock(&self.0).remove(&(kind, namespace.to_string(), name.to_string()));
    }
}

/// After this long a status write the cache has not shown is taken as overtaken (someone else
/// wrote status since).
const WRITTEN_STATUS_MEMORY: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether a remembered status write can be forgotten: the cache shows it, or it is too old.
fn written_status_done(
    (status, at): &(PremiumFeatureStatus, std::time::Instant),
    cached: Option<&PremiumFeatureStatus>,
) -> bool {
    cached == Some(status) || at.elapsed() > WRITTEN_STATUS_MEMORY
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
    /// Recovery restarts done by this instance, until the cached status shows them.
    pub restarts:
        Mutex<BTreeMap<FeatureKey, Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>>>,
    /// Since when (and for which generation) a transitional status is held back unwritten.
    pub held_status: Mutex<HashMap<FeatureKey, HeldStatus>>,
    pub echoes: Arc<Echoes>,
    /// The status this instance last wrote per feature, until the cache shows it: a reconcile
    /// that runs before the echo arrives compares against it, not against the older cached
    /// status (which would write, and announce, the same step twice).
    pub written_status: Mutex<HashMap<FeatureKey, (PremiumFeatureStatus, std::time::Instant)>>,
    /// When this instance wrote each feature's Ready status (for the dependency hop metric).
    pub ready_since: Mutex<HashMap<FeatureKey, std::time::Instant>>,
    /// Per feature, the dependency Ready its last observed hop was timed from.
    pub hops_seen: Mutex<HashMap<FeatureKey, std::time::Instant>>,
    /// Since when each feature has a reconcile queued by an event (for the queue-wait metric).
    pub queued_since: Mutex<HashMap<FeatureKey, std::time::Instant>>,
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
            restarts: Mutex::default(),
            held_status: Mutex::default(),
            written_status: Mutex::default(),
            ready_since: Mutex::default(),
            hops_seen: Mutex::default(),
            queued_since: Mutex::default(),
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

    /// Whether `dependent` may list `target` in `dependsOn` across namespaces: a policy in the
    /// target's namespace that selects it lists the dependent's namespace in `exposeTo`.
    pub fn permitted(&self, dependent: &FeatureKey, target: &FeatureKey) -> bool {
        let Some(feature) = self.feature(target) else {
            return false;
        };
        self.policies_in(&target.namespace).iter().any(|p| {
            selects(p, &feature)
                && p.spec
                    .expose_to
                    .as_ref()
                    .is_some_and(|e| e.namespaces.iter().any(|n| n == &dependent.namespace))
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

    /// The last status written for `key` if the cache does not show it yet.
    pub fn newer_status(
        &self,
        key: &FeatureKey,
        cached: Option<&PremiumFeatureStatus>,
    ) -> Option<PremiumFeatureStatus> {
        let mut map = lock(&self.written_status);
        let written = map.get(key)?;
        if written_status_done(written, cached) {
            map.remove(key);
            return None;
        }
        Some(written.0.clone())
    }

    /// Forgets the status written for `key` once the cache shows it (or it is too old to
    /// matter). Called on every watch event of the feature: the last status written before a
    /// feature settles would otherwise stay here, a second copy of every status (10,000 of
    /// them at 10,000 features), until the feature is next reconciled.
    pub fn status_seen(&self, key: &FeatureKey, cached: Option<&PremiumFeatureStatus>) {
        let mut map = lock(&self.written_status);
        if map.get(key).is_some_and(|w| written_status_done(w, cached)) {
            map.remove(key);
        }
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

/// A transitional status not written yet: for which generation, and since when (the start-up
/// clock of that generation runs from there, since no status has recorded its start).
#[derive(Debug, Clone)]
pub struct HeldStatus {
    pub generation: Option<i64>,
    pub since: std::time::Instant,
    pub started_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it: every critical
/// section here leaves the data consistent.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
    use std::time::{Duration, Instant};

    use super::{Echoes, WRITTEN_STATUS_MEMORY, written_status_done};
    use crate::api::{Phase, PremiumFeatureStatus};
    use crate::core::signal::Written;

    #[test]
    fn two_writes_in_flight_are_both_echoes() {
        let echoes = Echoes::default();
        let written = |hash: &str| Written {
            applied_hash: Some(hash.into()),
            ..Default::default()
        };
        // A repair: a removal, then an apply, both sent before either echo arrives.
        echoes.remember("Service", "ns", "a", written("removed"));
        echoes.remember("Service", "ns", "a", written("applied"));
        assert!(echoes.is_echo("Service", "ns", "a", &written("removed")));
        assert!(echoes.is_echo("Service", "ns", "a", &written("applied")));
        // Used up: the same state from someone else is news.
        assert!(!echoes.is_echo("Service", "ns", "a", &written("applied")));
        // A later echo covers the writes before it (their own echoes were merged away).
        echoes.remember("Service", "ns", "a", written("1"));
        echoes.remember("Service", "ns", "a", written("2"));
        assert!(echoes.is_echo("Service", "ns", "a", &written("2")));
        assert!(!echoes.is_echo("Service", "ns", "a", &written("1")));
    }

    #[test]
    fn a_written_status_is_forgotten_once_seen_or_old() {
        let ready = PremiumFeatureStatus {
            phase: Some(Phase::Ready),
            ..Default::default()
        };
        let starting = PremiumFeatureStatus {
            phase: Some(Phase::Starting),
            ..Default::default()
        };
        let now = (ready.clone(), Instant::now());
        // The cache shows the write: forgotten.
        assert!(written_status_done(&now, Some(&ready)));
        // The cache still shows an older status, or none: kept.
        assert!(!written_status_done(&now, Some(&starting)));
        assert!(!written_status_done(&now, None));
        // Never seen for longer than the memory: taken as overtaken.
        let long_ago = Instant::now()
            .checked_sub(WRITTEN_STATUS_MEMORY + Duration::from_secs(1))
            .expect("the monotonic clock reaches back 31 s");
        assert!(written_status_done(&(ready, long_ago), Some(&starting)));
    }
}
