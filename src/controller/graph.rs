//! The dependency graph as reconciles read it: a snapshot published after every change the
//! index records, so a reconcile never waits for an analysis. It takes the current snapshot
//! (a read lock held for one `Arc` clone) and works from it.
//!
//! The index records graph changes under its own lock; whoever takes them out applies them
//! to the [`LiveGraph`], whose lock is taken before the index's is let go, so changes reach
//! the graph in the order the index saw them even when two writers (a watch and a policy
//! reconcile) race. Only writers ever wait for that lock, and only for the part of the graph
//! a change reaches (see `core::graph::live`).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, RwLock};

use super::context::lock;
use super::index::Index;
use crate::core::graph::{FeatureKey, GraphSnapshot, LiveGraph};

#[derive(Default)]
pub struct SharedGraph {
    live: Mutex<LiveGraph>,
    published: RwLock<Published>,
}

#[derive(Default)]
struct Published {
    /// The index's graph version the snapshot includes.
    version: u64,
    snapshot: Arc<GraphSnapshot>,
}

impl SharedGraph {
    /// The latest published snapshot: it includes every change the index recorded before the
    /// last [`SharedGraph::catch_up`] returned.
    pub fn current(&self) -> Arc<GraphSnapshot> {
        self.published
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .snapshot
            .clone()
    }

    /// Applies what the index recorded since the last call and publishes the result; returns
    /// the features whose facts moved (new and deleted ones aside). When another caller took
    /// the changes out first, waits until it has published them, so that whoever triggers a
    /// reconcile after this returns hands it a snapshot at least as new as its event.
    pub fn catch_up(&self, index: &Mutex<Index>) -> BTreeSet<FeatureKey> {
        let mut recorded = lock(index);
        let (changes, version) = recorded.take_graph_changes();
        if changes.is_empty() && self.published_version() >= version {
            return BTreeSet::new();
        }
        let mut live = lock(&self.live);
        drop(recorded);
        if changes.is_empty() {
            // Whoever took them held this lock until it had published them.
            return BTreeSet::new();
        }
        for change in changes {
            live.apply(change);
        }
        let moved = live.flush();
        let snapshot = Arc::new(live.snapshot());
        *self.published.write().unwrap_or_else(|e| e.into_inner()) =
            Published { version, snapshot };
        moved
    }

    fn published_version(&self) -> u64 {
        self.published
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .version
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Dependency, PremiumFeature, PremiumFeatureSpec};

    fn feature(name: &str, deps: &[&str]) -> PremiumFeature {
        let mut f = PremiumFeature::new(
            name,
            PremiumFeatureSpec {
                depends_on: deps
                    .iter()
                    .map(|d| Dependency {
                        name: d.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
        );
        f.metadata.namespace = Some("portal".into());
        f
    }

    fn k(name: &str) -> FeatureKey {
        FeatureKey::new("portal", name)
    }

    #[test]
    fn what_the_index_saw_is_published_and_moves_wake_the_features_they_concern() {
        let index = Mutex::new(Index::default());
        let graph = SharedGraph::default();
        lock(&index).apply_feature(&feature("aika", &["catalog"]));
        assert!(
            graph.catch_up(&index).is_empty(),
            "a new feature is not a move"
        );
        let before = graph.current();
        assert_eq!(before.missing(&k("aika")), [k("catalog")]);
        lock(&index).apply_feature(&feature("catalog", &[]));
        // Not published until caught up: a held snapshot never changes.
        assert_eq!(graph.current().level(&k("catalog")), None);
        assert_eq!(graph.catch_up(&index), BTreeSet::from([k("aika")]));
        let after = graph.current();
        assert_eq!(after.level(&k("aika")), Some(1));
        assert_eq!(before.level(&k("aika")), None);
        // Nothing new: nothing moves, and the snapshot stays the same one.
        assert!(graph.catch_up(&index).is_empty());
        assert!(Arc::ptr_eq(&after, &graph.current()));
        // A status-only update records nothing for the graph.
        let mut ready = feature("catalog", &[]);
        ready.status = Some(Default::default());
        lock(&index).apply_feature(&ready);
        assert!(graph.catch_up(&index).is_empty());
        assert!(Arc::ptr_eq(&after, &graph.current()));
    }

    #[test]
    fn racing_writers_publish_in_the_order_the_index_saw() {
        let index = Arc::new(Mutex::new(Index::default()));
        let graph = Arc::new(SharedGraph::default());
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (index, graph) = (index.clone(), graph.clone());
                std::thread::spawn(move || {
                    for i in 0..50 {
                        // Everyone rewrites the same feature: the last one the index saw wins.
                        let deps = format!("dep-{w}-{i}");
                        lock(&index).apply_feature(&feature("shared", &[deps.as_str()]));
                        graph.catch_up(&index);
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().expect("writer");
        }
        graph.catch_up(&index);
        let last = lock(&index).dependencies(&k("shared"));
        assert_eq!(graph.current().missing(&k("shared")), last.as_slice());
    }
}
