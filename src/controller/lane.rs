//! The back lane: reconciles that may wait behind everything else. A new feature's first
//! reconcile (thousands arrive at once when a team applies its manifests, or at start-up) and
//! a refresh after the graph moved (a level, a cycle found) go here; a dependency turning
//! Ready, a rollout or a spec change go to the controller at once (see [`route`]), so those
//! never wait behind a burst.
//!
//! The lane feeds the controller only while few reconciles run, in the order features came
//! within a namespace and namespaces taking turns (`core::fair`), and it never starves: while
//! the controller stays busy, one feature still goes every [`BACK_LANE_MIN_INTERVAL`].

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use super::context::lock;
use super::index::{PolicyKey, Wake};
use crate::core::fair::FairQueue;
use crate::core::graph::FeatureKey;

/// Longest a new feature's first reconcile waits for a free slot while the controller is busy.
pub const BACK_LANE_MIN_INTERVAL: Duration = Duration::from_millis(250);

/// How often a busy controller is looked at again for a free slot.
const BUSY_POLL: Duration = Duration::from_millis(5);

#[derive(Default)]
pub struct BackLane {
    queue: Mutex<FairQueue>,
    queued: Notify,
}

impl BackLane {
    /// Queues features (each at most once; one already queued keeps its place).
    pub fn push(&self, keys: impl IntoIterator<Item = FeatureKey>) {
        let mut queue = lock(&self.queue);
        let before = queue.len();
        for key in keys {
            queue.push(key);
        }
        let added = queue.len() > before;
        drop(queue);
        if added {
            self.queued.notify_one();
        }
    }

    pub fn len(&self) -> usize {
        lock(&self.queue).len()
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.queue).is_empty()
    }

    /// Waits for the next feature that may start: one is queued and fewer than `max_in_flight`
    /// reconciles run (`in_flight`), or the controller has been busy for
    /// [`BACK_LANE_MIN_INTERVAL`] since this call began.
    pub async fn next(&self, in_flight: &AtomicUsize, max_in_flight: usize) -> FeatureKey {
        let mut busy_since: Option<tokio::time::Instant> = None;
        loop {
            if self.is_empty() {
                // Idle until something is queued (a permit is kept if it came just now).
                self.queued.notified().await;
                continue;
            }
            let starved = busy_since.is_some_and(|t| t.elapsed() >= BACK_LANE_MIN_INTERVAL);
            if starved || in_flight.load(Ordering::Relaxed) < max_in_flight {
                if let Some(f) = lock(&self.queue).pop() {
                    return f;
                }
                continue;
            }
            // Busy: look again shortly, when some reconciles have finished.
            busy_since.get_or_insert_with(tokio::time::Instant::now);
            tokio::time::sleep(BUSY_POLL).await;
        }
    }
}

/// Hands what an event woke on: `background` to the back lane, the rest at once to the
/// controllers (`feature`, `policy`).
pub fn route(
    wake: Wake,
    lane: &BackLane,
    feature: impl Fn(FeatureKey),
    policy: impl Fn(PolicyKey),
) {
    if !wake.background.is_empty() {
        lane.push(wake.background);
    }
    wake.features.into_iter().for_each(feature);
    wake.policies.into_iter().for_each(policy);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use tokio::sync::mpsc;
    use tokio::time::Instant;

    use super::*;

    fn k(name: &str) -> FeatureKey {
        FeatureKey::new("portal", name)
    }

    fn burst(n: usize) -> BTreeSet<FeatureKey> {
        (0..n).map(|i| k(&format!("new-{i:04}"))).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_controller_takes_the_lane_at_once_in_fifo_order() {
        let lane = BackLane::default();
        lane.push([k("b"), k("a"), k("b")]);
        assert_eq!(lane.len(), 2, "queued once");
        let idle = AtomicUsize::new(0);
        let started = Instant::now();
        assert_eq!(lane.next(&idle, 1).await, k("b"));
        assert_eq!(lane.next(&idle, 1).await, k("a"));
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(lane.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_lane_waits_for_a_push() {
        let lane = Arc::new(BackLane::default());
        let waiter = {
            let lane = lane.clone();
            tokio::spawn(async move { lane.next(&AtomicUsize::new(0), 1).await })
        };
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiter.is_finished());
        lane.push([k("late")]);
        assert_eq!(waiter.await.expect("the lane's task"), k("late"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_controller_still_gets_one_every_interval() {
        let lane = BackLane::default();
        lane.push(burst(5));
        // Every slot stays taken for good.
        let busy = AtomicUsize::new(8);
        for _ in 0..5 {
            let started = Instant::now();
            lane.next(&busy, 1).await;
            let waited = started.elapsed();
            assert!(waited >= BACK_LANE_MIN_INTERVAL, "{waited:?}");
            assert!(waited <= BACK_LANE_MIN_INTERVAL + BUSY_POLL, "{waited:?}");
        }
        assert!(lane.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lane_waiting_for_a_busy_controller_goes_as_soon_as_a_slot_frees() {
        let lane = Arc::new(BackLane::default());
        lane.push([k("new")]);
        let in_flight = Arc::new(AtomicUsize::new(3));
        let waiter = {
            let (lane, in_flight) = (lane.clone(), in_flight.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let key = lane.next(&in_flight, 2).await;
                (key, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished());
        in_flight.store(1, Ordering::Relaxed);
        let (key, waited) = waiter.await.expect("the lane's task");
        assert_eq!(key, k("new"));
        assert!(waited < BACK_LANE_MIN_INTERVAL, "{waited:?}");
    }

    /// A thousand new features queued, the controller busy: a feature woken because its
    /// dependency turned Ready reaches the controller before any of them.
    #[tokio::test(start_paused = true)]
    async fn a_burst_of_new_features_does_not_delay_woken_ones() {
        let lane = Arc::new(BackLane::default());
        let (tx, mut controller) = mpsc::unbounded_channel::<FeatureKey>();
        let in_flight = Arc::new(AtomicUsize::new(8));
        let feeder = {
            let (lane, in_flight, tx) = (lane.clone(), in_flight.clone(), tx.clone());
            tokio::spawn(async move {
                loop {
                    let key = lane.next(&in_flight, 1).await;
                    if tx.send(key).is_err() {
                        break;
                    }
                }
            })
        };
        route(
            Wake {
                background: burst(1000),
                ..Default::default()
            },
            &lane,
            |f| drop(tx.send(f)),
            |_| {},
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        let woken = Wake {
            features: BTreeSet::from([k("dependent")]),
            ..Default::default()
        };
        route(woken, &lane, |f| drop(tx.send(f)), |_| {});
        assert_eq!(controller.recv().await, Some(k("dependent")));
        // The burst trickles in meanwhile, one per interval while the controller is busy.
        tokio::time::sleep(BACK_LANE_MIN_INTERVAL * 4).await;
        let mut trickled = 0;
        while let Ok(key) = controller.try_recv() {
            assert!(key.name.starts_with("new-"), "{key}");
            trickled += 1;
        }
        assert!((3..=5).contains(&trickled), "{trickled}");
        feeder.abort();
    }
}
