//! Gives freed heap back to the operating system once the operator goes quiet.
//!
//! glibc's allocator keeps the pages of freed memory for reuse. After a burst (thousands of
//! features created, a restart's lists) the operator's live heap shrinks back, but the pages
//! stay resident, and the resident size is what a memory limit and `kubectl top` count. Once
//! no reconcile has started for [`QUIET`], and one did since the last time, the operator asks
//! the allocator to hand those pages back (`malloc_trim`). The call itself lives in the
//! binary (this library forbids `unsafe`); it is passed in as a plain function.

use std::time::Duration;

use tokio::task::JoinHandle;

/// How long no reconcile may start before freed memory is handed back.
pub const QUIET: Duration = Duration::from_secs(5);

/// Hands freed heap pages back to the operating system.
pub type Trim = fn();

/// Whether to trim now: the activity count stood still over the last period (`previous` is
/// what it was a period ago) and moved since the last trim (`trimmed_at`; `None` before the
/// first).
pub fn due(trimmed_at: Option<u64>, previous: u64, now: u64) -> bool {
    now == previous && trimmed_at != Some(now)
}

/// Looks at `activity` (a count that grows with every reconcile) every [`QUIET`] and calls
/// `trim` when [`due`]. Runs until the runtime stops.
pub fn spawn_trim(trim: Trim, activity: impl Fn() -> u64 + Send + 'static) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut trimmed_at = Some(activity());
        let mut previous = activity();
        let mut ticks = tokio::time::interval(QUIET);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let now = activity();
            if due(trimmed_at, previous, now) {
                trim();
                trimmed_at = Some(now);
            }
            previous = now;
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[test]
    fn trims_once_per_quiet_spell_after_work() {
        // Quiet before any work: nothing to give back.
        assert!(!due(Some(0), 0, 0));
        // Still working: not yet.
        assert!(!due(Some(0), 3, 7));
        // Work stopped a period ago: trim.
        assert!(due(Some(0), 7, 7));
        // Still quiet, already trimmed at this count: not again.
        assert!(!due(Some(7), 7, 7));
        // Before the first trim, any quiet period counts.
        assert!(due(None, 2, 2));
    }

    static TRIMS: AtomicU64 = AtomicU64::new(0);

    fn count_trim() {
        TRIMS.fetch_add(1, Ordering::SeqCst);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_reconciles_is_followed_by_one_trim() {
        let activity = Arc::new(AtomicU64::new(0));
        let seen = activity.clone();
        let task = spawn_trim(count_trim, move || seen.load(Ordering::SeqCst));
        // Quiet from the start: no trim.
        tokio::time::sleep(QUIET * 3).await;
        assert_eq!(TRIMS.load(Ordering::SeqCst), 0);
        // Busy for a while: the count moves every period, no trim meanwhile.
        for _ in 0..4 {
            activity.fetch_add(10, Ordering::SeqCst);
            tokio::time::sleep(QUIET).await;
            assert_eq!(TRIMS.load(Ordering::SeqCst), 0);
        }
        // Then quiet: one trim, and no more while it stays quiet.
        tokio::time::sleep(QUIET * 4).await;
        assert_eq!(TRIMS.load(Ordering::SeqCst), 1);
        task.abort();
    }
}
