//! A queue of features fair between namespaces: each namespace keeps its own first-in,
//! first-out order, and namespaces take turns. One team applying 10,000 features at once
//! does not delay another team's first reconcile behind all of them.

use std::collections::{HashMap, HashSet, VecDeque};

use super::graph::FeatureKey;

#[derive(Debug, Default)]
pub struct FairQueue {
    /// Namespaces with something queued, in turn order.
    turns: VecDeque<String>,
    queues: HashMap<String, VecDeque<String>>,
    /// Everything queued, so a key is never queued twice.
    queued: HashSet<FeatureKey>,
}

impl FairQueue {
    /// Queues `key` at the back of its namespace's queue; `false` if it was already queued.
    pub fn push(&mut self, key: FeatureKey) -> bool {
        if self.queued.contains(&key) {
            return false;
        }
        let queue = self.queues.entry(key.namespace.clone()).or_default();
        if queue.is_empty() {
            self.turns.push_back(key.namespace.clone());
        }
        queue.push_back(key.name.clone());
        self.queued.insert(key);
        true
    }

    /// The front of the namespace whose turn it is; that namespace then goes to the back.
    pub fn pop(&mut self) -> Option<FeatureKey> {
        let namespace = self.turns.pop_front()?;
        let queue = self.queues.get_mut(&namespace)?;
        let name = queue.pop_front()?;
        if queue.is_empty() {
            self.queues.remove(&namespace);
        } else {
            self.turns.push_back(namespace.clone());
        }
        let key = FeatureKey::new(namespace, name);
        self.queued.remove(&key);
        Some(key)
    }

    pub fn len(&self) -> usize {
        self.queued.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn k(ns: &str, name: &str) -> FeatureKey {
        FeatureKey::new(ns, name)
    }

    fn drain(q: &mut FairQueue) -> Vec<FeatureKey> {
        std::iter::from_fn(|| q.pop()).collect()
    }

    #[test]
    fn a_burst_in_one_namespace_does_not_starve_another() {
        let mut q = FairQueue::default();
        for i in 0..1000 {
            q.push(k("big", &format!("f{i}")));
        }
        q.push(k("small", "late"));
        assert_eq!(q.pop(), Some(k("big", "f0")));
        assert_eq!(q.pop(), Some(k("small", "late")));
        assert_eq!(q.pop(), Some(k("big", "f1")));
        assert_eq!(q.len(), 998);
    }

    #[test]
    fn duplicates_are_queued_once() {
        let mut q = FairQueue::default();
        assert!(q.push(k("a", "x")));
        assert!(!q.push(k("a", "x")));
        assert_eq!(drain(&mut q), vec![k("a", "x")]);
        // Once taken, it may be queued again.
        assert!(q.push(k("a", "x")));
        assert!(!q.is_empty());
    }

    proptest! {
        /// Every distinct key comes out exactly once, each namespace in its own push order,
        /// and while two namespaces both have work neither gets two turns in a row.
        #[test]
        fn fifo_per_namespace_and_every_key_once(
            pushes in proptest::collection::vec((0u8..4, 0u8..20), 0..200),
        ) {
            let mut q = FairQueue::default();
            let mut expected: Vec<FeatureKey> = Vec::new();
            for (ns, name) in &pushes {
                let key = k(&format!("ns{ns}"), &format!("f{name}"));
                let fresh = !expected.contains(&key);
                prop_assert_eq!(q.push(key.clone()), fresh);
                if fresh {
                    expected.push(key);
                }
            }
            prop_assert_eq!(q.len(), expected.len());
            let out = drain(&mut q);
            prop_assert!(q.is_empty());
            prop_assert_eq!(out.len(), expected.len());
            for ns in 0..4 {
                let ns = format!("ns{ns}");
                let order = |v: &[FeatureKey]| {
                    v.iter().filter(|key| key.namespace == ns).cloned().collect::<Vec<_>>()
                };
                prop_assert_eq!(order(&out), order(&expected));
            }
            // Round robin: a namespace takes a second turn only when it is the last with work.
            for (i, pair) in out.windows(2).enumerate() {
                if pair[0].namespace == pair[1].namespace {
                    let rest = &out[i + 1..];
                    prop_assert!(rest.iter().all(|key| key.namespace == pair[0].namespace));
                }
            }
        }
    }
}
