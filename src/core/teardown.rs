//! Deletion order: which dependents may hold a feature's teardown, and for how long; and the
//! deletion guard a policy may ask for (`deletion.whileDependents`).
//!
//! Dependents go before their dependencies so that no running pod loses a dependency it
//! calls. That courtesy must not become a lever: a feature in another namespace that was
//! never granted the dependency, or one kept by someone else's finalizer, could otherwise hold
//! the deletion (and with it `kubectl delete namespace`) forever.
//!
//! The guard is the policy owner's explicit choice, so it may hold a deletion for as long as
//! live dependents remain (`Block`), or take them along (`Cascade`). Only dependents permitted
//! to depend on the feature count: a namespace never granted it cannot keep it, nor be deleted
//! by it. A dependent that is itself being deleted no longer blocks: it is going, and the
//! ordinary (bounded) teardown order above takes over.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use crate::api::conditions::{self as cond, reason};
use crate::api::{Phase, PremiumFeatureStatus, WhileDependents};
use crate::core::graph::FeatureKey;
use crate::core::status::{Stamp, condition, set_condition};

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

/// The first few of `keys` as read from `namespace`, then how many more: a list that keeps a
/// message short whatever the number.
fn shown(keys: &[FeatureKey], namespace: &str) -> String {
    let mut names: Vec<String> = keys
        .iter()
        .take(HOLDERS_SHOWN)
        .map(|k| k.relative_to(namespace))
        .collect();
    if keys.len() > HOLDERS_SHOWN {
        names.push(format!("and {} more", keys.len() - HOLDERS_SHOWN));
    }
    names.join(", ")
}

/// The note of the Warning Event of an overdue teardown, naming who held it (the first few,
/// then how many more) as read from the feature's namespace.
pub fn overdue_note(holders: &[FeatureKey], namespace: &str, bound: Duration) -> String {
    format!(
        "torn down without waiting longer for dependents still being deleted after {}s: {}; their pods may still call this feature",
        bound.as_secs(),
        shown(holders, namespace)
    )
}

/// A feature that lists another in `dependsOn`, as the deletion guard reads the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub dependent: FeatureKey,
    /// The grant rule (`core::policy::permitted`) lets it depend on the feature.
    pub permitted: bool,
}

/// The part of the dependency graph above a feature being deleted: who depends on whom, and
/// who is being deleted already.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Above {
    /// For each feature, the features that list it in `dependsOn`.
    pub dependents: BTreeMap<FeatureKey, Vec<Link>>,
    /// Features with a deletionTimestamp.
    pub deleting: BTreeSet<FeatureKey>,
}

impl Above {
    /// The permitted dependents of `key`.
    fn permitted(&self, key: &FeatureKey) -> impl Iterator<Item = &FeatureKey> {
        self.dependents
            .get(key)
            .into_iter()
            .flatten()
            .filter(|l| l.permitted)
            .map(|l| &l.dependent)
    }

    /// Every feature that depends on `key` through permitted links, directly or not (`key`
    /// itself only when it is on a cycle).
    pub fn closure(&self, key: &FeatureKey) -> BTreeSet<FeatureKey> {
        let mut seen = BTreeSet::new();
        let mut queue: VecDeque<&FeatureKey> = VecDeque::from([key]);
        while let Some(k) = queue.pop_front() {
            for d in self.permitted(k) {
                if seen.insert(d.clone()) {
                    queue.push_back(d);
                }
            }
        }
        seen
    }
}

/// What the deletion guard lets a feature being deleted do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// Nothing the guard keeps: the ordinary teardown order ([`teardown_gate`]) applies.
    Proceed,
    /// `Block`: these permitted dependents, not being deleted, keep the feature.
    Blocked { dependents: Vec<FeatureKey> },
    /// `Cascade`: delete these dependents now; `later` more come after them, then the feature.
    Cascade {
        delete_now: Vec<FeatureKey>,
        later: usize,
    },
}

/// Decides what the guard of `mode` lets `feature`, being deleted, do given the graph above it.
///
/// `Cascade` deletes a dependent once every feature that depends on it (permitted, in the
/// closure) is being deleted, or is on one cycle with it (a cycle cannot go in order, so its
/// members go together): the deepest first, the reverse of start-up order. It marks the
/// deletion only; the teardown gate still takes each one's pods down before its dependencies'.
pub fn deletion_guard(mode: WhileDependents, feature: &FeatureKey, above: &Above) -> Guard {
    match mode {
        WhileDependents::Proceed => Guard::Proceed,
        WhileDependents::Block => {
            let live: BTreeSet<FeatureKey> = above
                .permitted(feature)
                .filter(|d| *d != feature && !above.deleting.contains(*d))
                .cloned()
                .collect();
            if live.is_empty() {
                Guard::Proceed
            } else {
                Guard::Blocked {
                    dependents: live.into_iter().collect(),
                }
            }
        }
        WhileDependents::Cascade => cascade(feature, above),
    }
}

fn cascade(feature: &FeatureKey, above: &Above) -> Guard {
    let mut closure = above.closure(feature);
    closure.remove(feature);
    let live: Vec<&FeatureKey> = closure
        .iter()
        .filter(|k| !above.deleting.contains(*k))
        .collect();
    if live.is_empty() {
        return Guard::Proceed;
    }
    // Each member's own closure, once: whom it reaches tells its cycle.
    let reach: BTreeMap<&FeatureKey, BTreeSet<FeatureKey>> =
        closure.iter().map(|m| (m, above.closure(m))).collect();
    let delete_now: Vec<FeatureKey> = live
        .iter()
        .filter(|m| {
            // `m` with the members of its cycle, if any: they go as one.
            let group: BTreeSet<&FeatureKey> = std::iter::once(**m)
                .chain(
                    reach
                        .get(*m)
                        .into_iter()
                        .flatten()
                        .filter(|d| reach.get(d).is_some_and(|r| r.contains(**m))),
                )
                .collect();
            group.iter().all(|s| {
                above.permitted(s).all(|d| {
                    !closure.contains(d) || above.deleting.contains(d) || group.contains(d)
                })
            })
        })
        .map(|m| (*m).clone())
        .collect();
    Guard::Cascade {
        later: live.len() - delete_now.len(),
        delete_now,
    }
}

/// The message of `Stalled`/`DependentsRemain`, naming the dependents that keep the feature.
pub fn blocked_message(dependents: &[FeatureKey], namespace: &str) -> String {
    format!(
        "deletion blocked by policy (deletion.whileDependents: Block) while dependents remain: {}; delete them, or change the policy",
        shown(dependents, namespace)
    )
}

/// The note of the Event of one cascade step.
pub fn cascade_note(delete_now: &[FeatureKey], later: usize, namespace: &str) -> String {
    let after = if later > 0 {
        format!("; {later} more after them")
    } else {
        String::new()
    };
    format!(
        "deleting dependents first (deletion.whileDependents: Cascade): {}{after}",
        shown(delete_now, namespace)
    )
}

/// The status of a feature whose deletion is blocked: the previous one with `Stalled=True`,
/// reason `DependentsRemain`. Also whether it just entered the block (the one Event to send).
pub fn blocked_status(
    previous: Option<&PremiumFeatureStatus>,
    message: &str,
    stamp: Stamp<'_>,
) -> (PremiumFeatureStatus, bool) {
    let mut status = previous.cloned().unwrap_or_default();
    status.phase.get_or_insert(Phase::Pending);
    let entered = condition(&status.conditions, cond::STALLED)
        .is_none_or(|c| c.status != "True" || c.reason != reason::DEPENDENTS_REMAIN);
    let mut updated = Vec::with_capacity(1);
    set_condition(
        &mut updated,
        &status.conditions,
        cond::STALLED,
        true,
        reason::DEPENDENTS_REMAIN,
        message,
        stamp,
    );
    // In place, so an unchanged block leaves the status equal (and unwritten).
    match status
        .conditions
        .iter_mut()
        .find(|c| c.type_ == cond::STALLED)
    {
        Some(c) => *c = updated.remove(0),
        None => status.conditions.append(&mut updated),
    }
    (status, entered)
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

    fn k(name: &str) -> FeatureKey {
        FeatureKey::new("portal", name)
    }

    /// `links`: (dependency, dependent, permitted).
    fn above(links: &[(&str, &str, bool)], deleting: &[&str]) -> Above {
        let mut a = Above::default();
        for (dep, dependent, permitted) in links {
            a.dependents.entry(k(dep)).or_default().push(Link {
                dependent: k(dependent),
                permitted: *permitted,
            });
        }
        a.deleting = deleting.iter().map(|n| k(n)).collect();
        a
    }

    #[test]
    fn block_keeps_the_feature_while_live_permitted_dependents_remain() {
        let catalog = k("catalog");
        // portal and search depend on catalog; cart (not permitted) too; sale on portal.
        let links = [
            ("catalog", "portal", true),
            ("catalog", "search", true),
            ("catalog", "cart", false),
            ("portal", "sale", true),
        ];
        let g = above(&links, &["catalog"]);
        assert_eq!(
            deletion_guard(WhileDependents::Block, &catalog, &g),
            Guard::Blocked {
                dependents: vec![k("portal"), k("search")]
            }
        );
        // A dependent being deleted no longer blocks: the teardown gate orders it.
        let g = above(&links, &["catalog", "portal"]);
        assert_eq!(
            deletion_guard(WhileDependents::Block, &catalog, &g),
            Guard::Blocked {
                dependents: vec![k("search")]
            }
        );
        let g = above(&links, &["catalog", "portal", "search"]);
        assert_eq!(
            deletion_guard(WhileDependents::Block, &catalog, &g),
            Guard::Proceed
        );
        // Proceed (the default) ignores them all.
        let g = above(&links, &["catalog"]);
        assert_eq!(
            deletion_guard(WhileDependents::Proceed, &catalog, &g),
            Guard::Proceed
        );
    }

    #[test]
    fn cascade_deletes_the_deepest_first_and_only_permitted_dependents() {
        let catalog = k("catalog");
        // sale → portal → catalog, search → catalog, sale → search; cart not permitted.
        let links = [
            ("catalog", "portal", true),
            ("catalog", "search", true),
            ("catalog", "cart", false),
            ("portal", "sale", true),
            ("search", "sale", true),
        ];
        let mut deleting = vec!["catalog"];
        let mut steps = Vec::new();
        loop {
            match deletion_guard(
                WhileDependents::Cascade,
                &catalog,
                &above(&links, &deleting),
            ) {
                Guard::Cascade { delete_now, later } => {
                    steps.push((delete_now.clone(), later));
                    for d in delete_now {
                        deleting.push(if d.name == "sale" {
                            "sale"
                        } else if d.name == "portal" {
                            "portal"
                        } else {
                            "search"
                        });
                    }
                }
                Guard::Proceed => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            steps,
            vec![(vec![k("sale")], 2), (vec![k("portal"), k("search")], 0)]
        );
        let note = cascade_note(&steps[0].0, steps[0].1, "portal");
        assert!(note.ends_with("sale; 2 more after them"), "{note}");
    }

    #[test]
    fn a_cycle_above_the_feature_is_deleted_together() {
        let catalog = k("catalog");
        let links = [
            ("catalog", "a", true),
            ("a", "b", true),
            ("b", "a", true),
            ("b", "c", true),
        ];
        let g = above(&links, &["catalog"]);
        assert_eq!(
            deletion_guard(WhileDependents::Cascade, &catalog, &g),
            Guard::Cascade {
                delete_now: vec![k("c")],
                later: 2
            }
        );
        let g = above(&links, &["catalog", "c"]);
        assert_eq!(
            deletion_guard(WhileDependents::Cascade, &catalog, &g),
            Guard::Cascade {
                delete_now: vec![k("a"), k("b")],
                later: 0
            }
        );
    }

    #[test]
    fn the_blocked_status_names_the_dependents_and_entering_is_said_once() {
        let now = crate::core::status::now_time();
        let stamp = Stamp {
            generation: Some(3),
            now: &now,
        };
        let many: Vec<FeatureKey> = (0..30).map(|i| k(&format!("f{i:02}"))).collect();
        let message = blocked_message(&many, "portal");
        assert!(
            message.contains("f00, f01, f02, f03, f04, and 25 more"),
            "{message}"
        );
        assert!(message.len() < 200, "{message}");
        let (first, entered) = blocked_status(None, &message, stamp);
        assert!(entered);
        let stalled = condition(&first.conditions, cond::STALLED).unwrap();
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", reason::DEPENDENTS_REMAIN)
        );
        let (again, entered) = blocked_status(Some(&first), &message, stamp);
        assert!(!entered);
        assert_eq!(again, first, "an unchanged block writes nothing new");
    }

    /// A random graph of up to 8 features above `n0`, the one being deleted: links with their
    /// permission, and who is being deleted already.
    fn graph_strategy() -> impl Strategy<Value = Above> {
        (
            proptest::collection::vec((0u8..8, 0u8..8, any::<bool>()), 0..20),
            proptest::collection::vec(any::<bool>(), 8),
        )
            .prop_map(|(links, deleting)| {
                let key = |i: u8| FeatureKey::new("ns", format!("n{i}"));
                let mut a = Above::default();
                for (dep, dependent, permitted) in links {
                    if dep == dependent {
                        continue;
                    }
                    let list = a.dependents.entry(key(dep)).or_default();
                    if list.iter().all(|l| l.dependent != key(dependent)) {
                        list.push(Link {
                            dependent: key(dependent),
                            permitted,
                        });
                    }
                }
                a.deleting = (0..8u8)
                    .filter(|&i| i == 0 || deleting[i as usize])
                    .map(key)
                    .collect();
                a
            })
    }

    fn without_unpermitted(a: &Above) -> Above {
        let mut b = a.clone();
        for links in b.dependents.values_mut() {
            links.retain(|l| l.permitted);
        }
        b
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

        /// Block never lets a feature go while a permitted dependent not being deleted
        /// remains, and names exactly those.
        #[test]
        fn block_never_lets_a_feature_with_a_live_permitted_dependent_go(a in graph_strategy()) {
            let root = FeatureKey::new("ns", "n0");
            let live: Vec<FeatureKey> = a.dependents.get(&root).into_iter().flatten()
                .filter(|l| l.permitted && !a.deleting.contains(&l.dependent))
                .map(|l| l.dependent.clone())
                .collect();
            match deletion_guard(WhileDependents::Block, &root, &a) {
                Guard::Proceed => prop_assert!(live.is_empty()),
                Guard::Blocked { dependents } => {
                    let mut live = live;
                    live.sort();
                    prop_assert_eq!(dependents, live);
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }

        /// Only permitted dependents count: dropping the links that are not permitted changes
        /// nothing, in either mode.
        #[test]
        fn only_permitted_dependents_count(a in graph_strategy()) {
            let root = FeatureKey::new("ns", "n0");
            let b = without_unpermitted(&a);
            for mode in [WhileDependents::Block, WhileDependents::Cascade] {
                prop_assert_eq!(deletion_guard(mode, &root, &a), deletion_guard(mode, &root, &b));
            }
        }

        /// Cascade always makes progress, deletes exactly the permitted closure and nothing
        /// else, and in a reverse topological order: a dependent is marked for deletion before
        /// whatever it depends on, unless the two are on one cycle.
        #[test]
        fn cascade_deletes_in_reverse_topological_order(a in graph_strategy()) {
            let root = FeatureKey::new("ns", "n0");
            let mut closure = a.closure(&root);
            closure.remove(&root);
            let mut world = a.clone();
            let mut step_of: BTreeMap<FeatureKey, usize> = BTreeMap::new();
            for step in 0.. {
                prop_assert!(step <= 8, "a cascade of at most 8 features takes at most 8 steps");
                match deletion_guard(WhileDependents::Cascade, &root, &world) {
                    Guard::Proceed => break,
                    Guard::Cascade { delete_now, .. } => {
                        prop_assert!(!delete_now.is_empty(), "every step deletes something");
                        for d in delete_now {
                            prop_assert!(closure.contains(&d), "{} is not a permitted dependent", d);
                            prop_assert!(world.deleting.insert(d.clone()), "{} deleted twice", d);
                            step_of.insert(d, step);
                        }
                    }
                    other => prop_assert!(false, "{:?}", other),
                }
            }
            for m in &closure {
                prop_assert!(world.deleting.contains(m), "{} left behind", m);
            }
            for (m, links) in &a.dependents {
                for l in links.iter().filter(|l| l.permitted) {
                    let (Some(sm), Some(sd)) = (step_of.get(m), step_of.get(&l.dependent)) else {
                        continue;
                    };
                    let same_cycle = a.closure(&l.dependent).contains(m);
                    prop_assert!(same_cycle || sd < sm, "{} (step {}) before its dependent {} (step {})", m, sm, l.dependent, sd);
                    // Members of one cycle go together.
                    prop_assert!(!same_cycle || sd == sm, "{} and {} on one cycle, steps {} and {}", m, l.dependent, sm, sd);
                }
            }
        }
    }
}
