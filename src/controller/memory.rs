//! What this instance remembers of each feature between its reconciles, in one map: a
//! feature's entry goes in one call when it is torn down, and an entry that holds nothing is
//! not kept (a feature that settled costs no memory here).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::context::lock;
use crate::api::PremiumFeatureStatus;
use crate::core::decide::{self, HeldStatus, Recalled};
use crate::core::graph::FeatureKey;

/// After this long a status write the cache has not shown is taken as overtaken (someone else
/// wrote status since).
pub const WRITTEN_STATUS_MEMORY: Duration = Duration::from_secs(30);

/// What is remembered of one feature.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeatureMemory {
    /// A transitional status held back unwritten (see [`decide::hold`]).
    pub held: Option<HeldStatus>,
    /// The status last written, until the cache shows it: a reconcile that runs before the
    /// echo arrives compares against it, not against the older cached status (which would
    /// write, and announce, the same step twice).
    pub written: Option<(PremiumFeatureStatus, Instant)>,
    /// When this instance wrote the feature's Ready status (for the dependency hop metric).
    pub ready_since: Option<Instant>,
    /// The dependency Ready the feature's last observed hop was timed from.
    pub hop_from: Option<Instant>,
    /// Since when a reconcile is queued by an event (for the queue-wait metric).
    pub queued_since: Option<Instant>,
    /// Recovery restarts done by this instance, until the cached status shows them.
    pub restarts: Vec<Time>,
    /// What this caller last counted for in its dependencies' capacity splits (see
    /// `controller::capacity`); `None` when none of them sets a capacity.
    pub capacity_counted: Option<Counted>,
}

/// A caller's part in its dependencies' capacity splits, as its last pass saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counted {
    /// Its `pool.weight`.
    pub weight: u32,
    /// The replicas it counts for: the most it may run (the cache's, or the planned ones).
    pub replicas: u32,
    /// The replicas that pass asked its Deployment for. The dependency counts the caller at no
    /// fewer: the write may not have reached the dependency's cache when it wakes it.
    pub planned: u32,
}

impl FeatureMemory {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Whether a remembered status write can be forgotten: the cache shows it, or it is too old.
fn written_status_done(
    (status, at): &(PremiumFeatureStatus, Instant),
    cached: Option<&PremiumFeatureStatus>,
) -> bool {
    cached == Some(status) || at.elapsed() > WRITTEN_STATUS_MEMORY
}

/// Per-feature memory of this instance.
#[derive(Debug, Default)]
pub struct Memory {
    features: Mutex<HashMap<FeatureKey, FeatureMemory>>,
    /// Features with a reconcile queued by an event (`queued_since` set): the queue depth.
    queued: AtomicUsize,
}

impl Memory {
    /// Runs `f` on the feature's memory; an entry left holding nothing is dropped.
    pub fn update<R>(&self, key: &FeatureKey, f: impl FnOnce(&mut FeatureMemory) -> R) -> R {
        let mut map = lock(&self.features);
        let entry = map.entry(key.clone()).or_default();
        let was_queued = entry.queued_since.is_some();
        let result = f(entry);
        match (was_queued, entry.queued_since.is_some()) {
            (false, true) => {
                self.queued.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        if entry.is_empty() {
            map.remove(key);
        }
        result
    }

    /// Reads the feature's memory, if any.
    pub fn read<R>(&self, key: &FeatureKey, f: impl FnOnce(&FeatureMemory) -> R) -> Option<R> {
        lock(&self.features).get(key).map(f)
    }

    /// Forgets everything about the feature (it is gone).
    pub fn forget(&self, key: &FeatureKey) {
        let gone = lock(&self.features).remove(key);
        if gone.is_some_and(|m| m.queued_since.is_some()) {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Features something is remembered of.
    pub fn len(&self) -> usize {
        lock(&self.features).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the decision reads.
    pub fn recalled(&self, key: &FeatureKey) -> Recalled {
        self.read(key, |m| Recalled {
            restarts: m.restarts.clone(),
            held: m.held.clone(),
        })
        .unwrap_or_default()
    }

    /// Notes that an event queued a reconcile, unless one was queued already.
    pub fn queued(&self, key: &FeatureKey) {
        self.update(key, |m| {
            m.queued_since.get_or_insert_with(Instant::now);
        });
    }

    /// Since when the reconcile starting now was queued; forgets it.
    pub fn take_queued(&self, key: &FeatureKey) -> Option<Instant> {
        self.update(key, |m| m.queued_since.take())
    }

    /// Features with a reconcile queued by an event and not started yet.
    pub fn queue_depth(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// The last status written for `key` if the cache does not show it yet.
    pub fn newer_status(
        &self,
        key: &FeatureKey,
        cached: Option<&PremiumFeatureStatus>,
    ) -> Option<PremiumFeatureStatus> {
        self.update(key, |m| {
            if m.written
                .as_ref()
                .is_some_and(|w| written_status_done(w, cached))
            {
                m.written = None;
            }
            m.written.as_ref().map(|w| w.0.clone())
        })
    }

    /// Forgets the status written for `key` once the cache shows it (or it is too old to
    /// matter). Called on every watch event of the feature: the last status written before a
    /// feature settles would otherwise stay here, a second copy of every status (10,000 of
    /// them at 10,000 features), until the feature is next reconciled.
    pub fn status_seen(&self, key: &FeatureKey, cached: Option<&PremiumFeatureStatus>) {
        let mut map = lock(&self.features);
        let Some(m) = map.get_mut(key) else { return };
        if m.written
            .as_ref()
            .is_some_and(|w| written_status_done(w, cached))
        {
            m.written = None;
            if m.is_empty() {
                map.remove(key);
            }
        }
    }

    /// Whether to hold back the write of the changed status `new` for now, and for how long at
    /// most (see [`decide::hold`]); the hold is counted on the runtime's clock.
    pub fn hold(
        &self,
        key: &FeatureKey,
        previous: Option<&PremiumFeatureStatus>,
        new: &PremiumFeatureStatus,
        startup_timeout: Duration,
        clock: &Time,
    ) -> Option<Duration> {
        let now = tokio::time::Instant::now().into_std();
        self.update(key, |m| {
            let hold = decide::hold(previous, new, startup_timeout, m.held.as_ref(), now, clock);
            m.held = hold.held;
            hold.wait
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::api::Phase;
    use crate::api::conditions::{self as cond, reason};
    use crate::core::status::{Stamp, set_condition};
    use k8s_openapi::jiff::Timestamp;

    fn key() -> FeatureKey {
        FeatureKey::new("portal", "aika")
    }

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn phase(phase: Phase, ready_reason: &str) -> PremiumFeatureStatus {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            &[],
            cond::READY,
            phase == Phase::Ready,
            ready_reason,
            "",
            Stamp {
                generation: Some(1),
                now: &t(0),
            },
        );
        PremiumFeatureStatus {
            phase: Some(phase),
            observed_generation: Some(1),
            conditions,
            ..Default::default()
        }
    }

    #[test]
    fn a_written_status_is_forgotten_once_seen_or_old() {
        let ready = phase(Phase::Ready, reason::AVAILABLE);
        let starting = phase(Phase::Starting, reason::ROLLING_OUT);
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

    /// Teardown forgets everything in one call, the restarts too (a map of its own once, which
    /// nothing ever cleared).
    #[test]
    fn forgetting_a_feature_clears_all_it_left() {
        let memory = Memory::default();
        memory.update(&key(), |m| {
            *m = FeatureMemory {
                held: Some(HeldStatus {
                    generation: Some(1),
                    since: Instant::now(),
                    started_at: Some(t(1)),
                }),
                written: Some((phase(Phase::Ready, reason::AVAILABLE), Instant::now())),
                ready_since: Some(Instant::now()),
                hop_from: Some(Instant::now()),
                queued_since: Some(Instant::now()),
                restarts: vec![t(5)],
                capacity_counted: Some(Counted {
                    weight: 1,
                    replicas: 3,
                    planned: 3,
                }),
            }
        });
        assert_eq!(memory.recalled(&key()).restarts, vec![t(5)]);
        assert_eq!(memory.queue_depth(), 1);
        memory.forget(&key());
        assert!(memory.is_empty());
        assert_eq!(memory.queue_depth(), 0);
        assert_eq!(memory.recalled(&key()), Recalled::default());
    }

    #[test]
    fn an_entry_holding_nothing_is_dropped() {
        let memory = Memory::default();
        memory.queued(&key());
        memory.queued(&key());
        assert_eq!(memory.len(), 1);
        assert_eq!(memory.queue_depth(), 1, "queued twice, counted once");
        assert!(memory.take_queued(&key()).is_some());
        assert!(memory.is_empty());
        assert_eq!(memory.queue_depth(), 0);
        // A status seen in the cache goes, and its entry with it.
        let ready = phase(Phase::Ready, reason::AVAILABLE);
        memory.update(&key(), |m| {
            m.written = Some((ready.clone(), Instant::now()))
        });
        assert_eq!(memory.newer_status(&key(), None), Some(ready.clone()));
        memory.status_seen(&key(), Some(&ready));
        assert!(memory.is_empty());
    }

    /// A first start is shown after 5 s if it lasts; its hold is counted from the first pass
    /// that held it, on the runtime's clock.
    #[tokio::test(start_paused = true)]
    async fn a_starting_status_is_held_five_seconds() {
        let memory = Memory::default();
        let pending = phase(Phase::Pending, reason::DEPENDENCY_NOT_READY);
        let starting = phase(Phase::Starting, reason::ROLLING_OUT);
        let timeout = Duration::from_secs(300);
        let hold = |memory: &Memory| memory.hold(&key(), Some(&pending), &starting, timeout, &t(0));
        assert_eq!(hold(&memory), Some(Duration::from_secs(5)));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(hold(&memory), Some(Duration::from_secs(2)));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(hold(&memory), None, "written once the 5 s are up");
        assert!(memory.is_empty(), "the hold is forgotten once written");
        // A status that is no start-up step is never held.
        let ready = phase(Phase::Ready, reason::AVAILABLE);
        assert_eq!(
            memory.hold(&key(), Some(&starting), &ready, timeout, &t(0)),
            None
        );
    }

    /// A rolling update is held up to the start-up timeout, and a new generation starts the
    /// count again.
    #[tokio::test(start_paused = true)]
    async fn a_rolling_update_is_held_up_to_the_startup_timeout() {
        let memory = Memory::default();
        let ready = phase(Phase::Ready, reason::AVAILABLE);
        let mut update = phase(Phase::Starting, reason::ROLLING_UPDATE);
        let timeout = Duration::from_secs(60);
        assert_eq!(
            memory.hold(&key(), Some(&ready), &update, timeout, &t(0)),
            Some(timeout)
        );
        tokio::time::advance(Duration::from_secs(40)).await;
        update.observed_generation = Some(2);
        assert_eq!(
            memory.hold(&key(), Some(&ready), &update, timeout, &t(0)),
            Some(timeout),
            "a new generation's hold starts again"
        );
        tokio::time::advance(timeout).await;
        assert_eq!(
            memory.hold(&key(), Some(&ready), &update, timeout, &t(0)),
            None
        );
    }
}
