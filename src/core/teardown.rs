//! Deletion order: which dependents may hold a feature's teardown, and for how long.
//!
//! Dependents go before their dependencies so that no running pod loses a dependency it
//! calls. That courtesy must not become a lever: a feature in another namespace that was
//! never granted the dependency, or one kept by someone else's finalizer, could otherwise hold
//! the deletion (and with it `kubectl delete namespace`) forever.

use std::time::Duration;

use crate::core::graph::FeatureKey;

/// How long a feature being deleted waits for its dependents at most, counted from its
/// deletionTimestamp, unless the operator is told otherwise (`run --teardown-wait-seconds`).
pub const DEFAULT_TEARDOWN_WAIT: Duration = Duration::from_secs(60);

/// Holders named in a message before the rest is only counted (the message stays short
/// whatever the number of dependents).
const HOLDERS_SHOWN: usize = 5;

/// A feature that lists the one being deleted in `dependsOn`, as the teardown sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependent {
    pub key: FeatureKey,
    /// It has a deletionTimestamp: it is going too, and should go first.
    pub deleting: bool,
    /// It still carries the operator's finalizer, so its own teardown (its pods) is still to
    /// come. Once that finalizer is off its pods are gone, and whatever else keeps the object
    /// (another controller's finalizer) no longer concerns its dependencies.
    pub teardown_pending: bool,
    /// It may depend on the feature at all: same namespace, or a policy of the feature's
    /// namespace grants the dependent's namespace (`exposeTo`). One that may not never
    /// received traffic routes to it, so it has nothing to lose by the order.
    pub permitted: bool,
    /// It is on one dependency cycle with the feature: members of a cycle cannot go in order,
    /// so they go together.
    pub same_cycle: bool,
}

impl Dependent {
    /// Whether this dependent holds the teardown of its dependency (until the bound).
    pub fn holds(&self) -> bool {
        self.deleting && self.teardown_pending && self.permitted && !self.same_cycle
    }
}

/// What the teardown of a feature does now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TeardownGate {
    /// Nothing holds it: delete the owned objects and remove the finalizer.
    Proceed,
    /// Dependents go first. Their deletion wakes the feature; `recheck_after` is when the wait
    /// runs out in any case.
    Wait {
        holders: Vec<FeatureKey>,
        recheck_after: Duration,
    },
    /// The wait ran out while these still held it: go on, and say so (a Warning Event).
    Overdue { holders: Vec<FeatureKey> },
}

/// Decides whether a feature being deleted for `deleting_for` may be torn down, given its
/// dependents and the longest wait `bound`.
pub fn teardown_gate(
    dependents: &[Dependent],
    deleting_for: Duration,
    bound: Duration,
) -> TeardownGate {
    let mut holders: Vec<FeatureKey> = dependents
        .iter()
        .filter(|d| d.holds())
        .map(|d| d.key.clone())
        .collect();
    if holders.is_empty() {
        return TeardownGate::Proceed;
    }
    holders.sort();
    holders.dedup();
    match bound.checked_sub(deleting_for) {
        Some(left) if !left.is_zero() => TeardownGate::Wait {
            holders,
            recheck_after: left,
        },
        _ => TeardownGate::Overdue { holders },
    }
}

/// The note of the Warning Event of an overdue teardown, naming who held it (the first few,
/// then how many more) as read from the feature's namespace.
pub fn overdue_note(holders: &[FeatureKey], namespace: &str, bound: Duration) -> String {
    let mut names: Vec<String> = holders
        .iter()
        .take(HOLDERS_SHOWN)
        .map(|k| k.relative_to(namespace))
        .collect();
    if holders.len() > HOLDERS_SHOWN {
        names.push(format!("and {} more", holders.len() - HOLDERS_SHOWN));
    }
    format!(
        "torn down without waiting longer for dependents still being deleted after {}s: {}; their pods may still call this feature",
        bound.as_secs(),
        names.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn dependent(ns: &str, name: &str) -> Dependent {
        Dependent {
            key: FeatureKey::new(ns, name),
            deleting: true,
            teardown_pending: true,
            permitted: true,
            same_cycle: false,
        }
    }

    const BOUND: Duration = Duration::from_secs(60);

    #[test]
    fn a_permitted_dependent_being_torn_down_holds_until_the_bound() {
        let aika = dependent("portal", "aika");
        assert_eq!(
            teardown_gate(std::slice::from_ref(&aika), Duration::from_secs(15), BOUND),
            TeardownGate::Wait {
                holders: vec![aika.key.clone()],
                recheck_after: Duration::from_secs(45),
            }
        );
        // At the bound and after it, the wait is over and the holder is named.
        for waited in [BOUND, BOUND + Duration::from_secs(3600)] {
            assert_eq!(
                teardown_gate(std::slice::from_ref(&aika), waited, BOUND),
                TeardownGate::Overdue {
                    holders: vec![aika.key.clone()]
                }
            );
        }
    }

    #[test]
    fn only_permitted_dependents_still_to_be_torn_down_count() {
        // One row per reason not to count; each alone lets the teardown go on at once.
        type Change = fn(&mut Dependent);
        let rows: [(&str, Change); 4] = [
            ("not being deleted", |d| d.deleting = false),
            ("torn down already, kept only by another finalizer", |d| {
                d.teardown_pending = false
            }),
            ("in another namespace without a grant", |d| {
                d.permitted = false
            }),
            ("on one cycle with the feature", |d| d.same_cycle = true),
        ];
        for (why, change) in rows {
            let mut d = dependent("team-b", "aika");
            change(&mut d);
            assert!(!d.holds(), "{why}");
            assert_eq!(
                teardown_gate(&[d], Duration::ZERO, BOUND),
                TeardownGate::Proceed,
                "{why}"
            );
        }
    }

    #[test]
    fn holders_are_named_sorted_once_and_the_note_stays_short() {
        let mut many: Vec<Dependent> = (0..40)
            .rev()
            .map(|i| dependent("portal", &format!("f{i:02}")))
            .collect();
        many.push(dependent("portal", "f00"));
        many.push(dependent("other", "x"));
        let TeardownGate::Overdue { holders } = teardown_gate(&many, BOUND, BOUND) else {
            panic!("the bound has run out");
        };
        assert_eq!(holders.len(), 41);
        assert_eq!(holders[0], FeatureKey::new("other", "x"));
        assert_eq!(holders[1], FeatureKey::new("portal", "f00"));
        let note = overdue_note(&holders, "portal", BOUND);
        assert!(
            note.contains("after 60s: other/x, f00, f01, f02, f03, and 36 more"),
            "{note}"
        );
        assert!(note.len() < 200, "{note}");
    }

    proptest! {
        /// Whatever the dependents and however long it has waited, a teardown never waits
        /// past the bound, waits only for holders, and rechecks exactly when the bound runs out.
        #[test]
        fn the_wait_is_bounded(
            flags in proptest::collection::vec(any::<(bool, bool, bool, bool)>(), 0..12),
            waited in 0u64..200,
            bound in 0u64..120,
        ) {
            let dependents: Vec<Dependent> = flags
                .iter()
                .enumerate()
                .map(|(i, &(deleting, teardown_pending, permitted, same_cycle))| Dependent {
                    key: FeatureKey::new("ns", format!("d{i}")),
                    deleting,
                    teardown_pending,
                    permitted,
                    same_cycle,
                })
                .collect();
            let waited = Duration::from_secs(waited);
            let bound = Duration::from_secs(bound);
            let holding = dependents.iter().filter(|d| d.holds()).count();
            match teardown_gate(&dependents, waited, bound) {
                TeardownGate::Proceed => prop_assert_eq!(holding, 0),
                TeardownGate::Wait { holders, recheck_after } => {
                    prop_assert!(waited < bound);
                    prop_assert_eq!(holders.len(), holding);
                    prop_assert_eq!(waited + recheck_after, bound);
                }
                TeardownGate::Overdue { holders } => {
                    prop_assert!(waited >= bound);
                    prop_assert_eq!(holders.len(), holding);
                    prop_assert!(holding > 0);
                }
            }
        }
    }
}
