//! The operator's own writes to owned objects, remembered until their watch echo arrives: the
//! watch of owned objects (`owned`) reads this and the appliers (`apply`) fill it, and neither
//! needs the reconcile context for it.

use std::collections::HashMap;
use std::sync::Mutex;

use super::sync::lock;
use crate::core::signal::Written;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
