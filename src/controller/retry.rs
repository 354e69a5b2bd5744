//! When a failed reconcile is tried again: per object, exponential with jitter, and back to the
//! first wait after a success. A fixed wait either hammers the API server with an object that
//! keeps failing (every one of them, in step) or leaves a passing hiccup waiting too long.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::sync::lock;

/// How fast one class of failure is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// The wait after the first failure.
    pub first: Duration,
    /// The longest wait, however many failures in a row.
    pub cap: Duration,
}

impl Schedule {
    /// Another writer won a race, or the caches are not ready: it passes by itself, soon.
    pub const SOON: Self = Self {
        first: Duration::from_millis(200),
        cap: Duration::from_secs(5),
    };
    /// A server or network error: it usually passes, but must not be hammered while it lasts.
    pub const TRANSIENT: Self = Self {
        first: Duration::from_millis(500),
        cap: Duration::from_secs(10),
    };
    /// Refused until a person changes something the operator does not watch (a Role, a quota,
    /// an admission policy): slow retries, and the cap bounds how long healing waits after.
    pub const REFUSED: Self = Self {
        first: Duration::from_secs(2),
        cap: Duration::from_secs(60),
    };
}

/// The wait before the next try after `failures` failures in a row (1 for the first). It
/// doubles with each failure up to the cap; `jitter` (in [0, 1)) takes off up to half, so that
/// objects that failed together do not retry together. Each wait is at least the full wait of
/// the step before, so the waits never shrink while failures go on.
pub fn delay(schedule: Schedule, failures: u32, jitter: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(30);
    let full = schedule
        .first
        .saturating_mul(1u32 << doublings)
        .min(schedule.cap);
    full.mul_f64(1.0 - jitter.clamp(0.0, 1.0) / 2.0)
}

/// A reconciled object: controller, namespace and name.
pub type RetryKey = (&'static str, String, String);

/// Failures in a row per object, forgotten on its next success.
#[derive(Debug, Default)]
pub struct Retries(Mutex<HashMap<RetryKey, u32>>);

impl Retries {
    /// Counts a failure of `key`; the wait before its next try.
    pub fn failed(&self, key: RetryKey, schedule: Schedule) -> Duration {
        let failures = {
            let mut counts = lock(&self.0);
            let n = counts.entry(key).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        delay(schedule, failures, rand::random::<f64>())
    }

    /// `key` reconciled: its next failure waits the first wait again.
    pub fn succeeded(&self, key: &RetryKey) {
        lock(&self.0).remove(key);
    }

    /// Failures in a row of `key` so far.
    pub fn failures(&self, key: &RetryKey) -> u32 {
        lock(&self.0).get(key).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> RetryKey {
        ("feature", "ns".into(), "a".into())
    }

    #[test]
    fn waits_double_up_to_the_cap() {
        let s = Schedule::REFUSED;
        let full: Vec<u64> = (1..=8).map(|n| delay(s, n, 0.0).as_secs()).collect();
        assert_eq!(full, [2, 4, 8, 16, 32, 60, 60, 60]);
        // Jitter takes off at most half.
        let jittered = delay(s, 1, 0.999_999);
        assert!(jittered > Duration::from_millis(999) && jittered < Duration::from_millis(1001));
        // No overflow however long it fails.
        assert_eq!(delay(s, u32::MAX, 0.0), s.cap);
    }

    proptest! {
        #[test]
        fn waits_never_shrink_and_stay_within_bounds(
            failures in 1u32..64,
            a in 0.0f64..1.0,
            b in 0.0f64..1.0,
            which in 0usize..3,
        ) {
            let s = [Schedule::SOON, Schedule::TRANSIENT, Schedule::REFUSED][which];
            let now = delay(s, failures, a);
            let next = delay(s, failures + 1, b);
            prop_assert!(now >= s.first / 2 && now <= s.cap);
            prop_assert!(next >= s.cap / 2 || next >= now, "{now:?} then {next:?}");
            if delay(s, failures + 1, 0.0) < s.cap {
                prop_assert!(next >= now, "{now:?} then {next:?}");
            }
        }
    }

    #[test]
    fn a_success_resets_the_count_of_that_object_only() {
        let retries = Retries::default();
        let other: RetryKey = ("feature", "ns".into(), "b".into());
        for _ in 0..5 {
            retries.failed(key(), Schedule::REFUSED);
        }
        retries.failed(other.clone(), Schedule::REFUSED);
        assert_eq!(retries.failures(&key()), 5);
        let wait = retries.failed(key(), Schedule::REFUSED);
        assert!(wait >= Duration::from_secs(30), "{wait:?}");
        retries.succeeded(&key());
        assert_eq!(retries.failures(&key()), 0);
        assert_eq!(retries.failures(&other), 1);
        let wait = retries.failed(key(), Schedule::REFUSED);
        assert!(wait <= Duration::from_secs(2), "{wait:?}");
    }
}
