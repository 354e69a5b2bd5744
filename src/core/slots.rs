//! Start-up slots (`startup.maxConcurrent` of a policy): which features may be starting at once.
//!
//! A slot belongs to a feature only while it really starts: its Deployment asks for replicas
//! and it is not Ready yet. Everything else (held back by the budget, its dependencies, a
//! suspension or an invalid spec, Ready, given up) gives the slot back at once. A feature that
//! kept its slot while waiting for something else would make the features waiting for that
//! slot wait for it in turn: if what it waits for is one of them (the budget they took), no one
//! ever moves.

use std::collections::{BTreeMap, BTreeSet};

use super::graph::FeatureKey;

/// Namespace and name of the policy whose `startup.maxConcurrent` a slot counts against.
pub type PolicyKey = FeatureKey;

/// A policy's start-up limit as it applies to one feature: the policy and its `maxConcurrent`.
pub type Limit = (PolicyKey, u32);

/// Where a feature stands, as far as start-up slots go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Held back for a reason of its own (budget, dependencies, suspension, invalid spec): it
    /// does not start and needs no slot.
    Held,
    /// Free to start but not scaled up yet: it needs a slot of every limiting policy first.
    Admitted,
    /// Scaled up and not Ready yet (also a feature found starting after an operator restart,
    /// or one rolling out a new template): it counts against the limit if there is room, and
    /// is never stopped for the lack of a slot.
    Starting,
    /// Ready, or given up: done starting.
    Settled,
}

/// What one update decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    /// The limits that are full, when an admitted feature must wait; empty when it may go.
    pub full: Vec<Limit>,
    /// Features that waited for a slot this update freed: they should look again.
    pub wake: BTreeSet<FeatureKey>,
}

impl Update {
    /// The feature may go on (start, or keep starting).
    pub fn granted(&self) -> bool {
        self.full.is_empty()
    }
}

/// Who holds and who waits for the start-up slots of each policy.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StartSlots {
    holders: BTreeMap<PolicyKey, BTreeSet<FeatureKey>>,
    waiting: BTreeMap<PolicyKey, BTreeSet<FeatureKey>>,
}

impl StartSlots {
    /// Tells the slots where `feature` stands and which limits apply to it now; returns whether
    /// it may go on and whom a freed slot should wake.
    pub fn update(&mut self, feature: &FeatureKey, stage: Stage, limits: &[Limit]) -> Update {
        let limited = |policy: &PolicyKey| limits.iter().any(|(p, _)| p == policy);
        match stage {
            Stage::Held | Stage::Settled => Update {
                full: Vec::new(),
                wake: self.release(feature),
            },
            Stage::Starting => {
                // Slots of policies that no longer limit it go back.
                let mut wake = self.release_where(feature, |p| !limited(p));
                self.forget_waiting(feature);
                for (policy, max) in limits {
                    let set = self.holders.entry(policy.clone()).or_default();
                    if set.len() < capacity(*max) {
                        set.insert(feature.clone());
                    }
                }
                wake.remove(feature);
                Update {
                    full: Vec::new(),
                    wake,
                }
            }
            Stage::Admitted => {
                let mut wake = self.release_where(feature, |p| !limited(p));
                let full: Vec<Limit> = limits
                    .iter()
                    .filter(|(policy, max)| {
                        let set = self.holders.get(policy);
                        !set.is_some_and(|s| s.contains(feature))
                            && set.map_or(0, BTreeSet::len) >= capacity(*max)
                    })
                    .cloned()
                    .collect();
                if full.is_empty() {
                    for (policy, _) in limits {
                        self.holders
                            .entry(policy.clone())
                            .or_default()
                            .insert(feature.clone());
                    }
                    self.forget_waiting(feature);
                } else {
                    // All or nothing: a feature that cannot start holds no slot anywhere.
                    wake.extend(self.release(feature));
                    for (policy, _) in &full {
                        self.waiting
                            .entry(policy.clone())
                            .or_default()
                            .insert(feature.clone());
                    }
                }
                wake.remove(feature);
                Update { full, wake }
            }
        }
    }

    /// Gives back every slot `feature` holds and forgets that it waits; returns the features
    /// that waited for a slot it freed.
    pub fn release(&mut self, feature: &FeatureKey) -> BTreeSet<FeatureKey> {
        let wake = self.release_where(feature, |_| true);
        self.forget_waiting(feature);
        wake
    }

    /// Takes the slots of `limits`' policies from every holder that `starting` says no longer
    /// starts (a feature deleted, suspended or settled before its own reconcile said so);
    /// returns the features that waited for a slot this freed.
    pub fn retain(
        &mut self,
        limits: &[Limit],
        starting: impl Fn(&FeatureKey) -> bool,
    ) -> BTreeSet<FeatureKey> {
        let mut freed = Vec::new();
        for (policy, set) in &mut self.holders {
            if !limits.iter().any(|(p, _)| p == policy) {
                continue;
            }
            let before = set.len();
            set.retain(|f| starting(f));
            if set.len() < before {
                freed.push(policy.clone());
            }
        }
        self.holders.retain(|_, set| !set.is_empty());
        self.waiters_of(&freed)
    }

    /// The features holding a slot of `policy`.
    pub fn holders(&self, policy: &PolicyKey) -> impl Iterator<Item = &FeatureKey> {
        self.holders.get(policy).into_iter().flatten()
    }

    /// Whether `feature` holds a slot of any policy.
    pub fn holds(&self, feature: &FeatureKey) -> bool {
        self.holders.values().any(|set| set.contains(feature))
    }

    fn release_where(
        &mut self,
        feature: &FeatureKey,
        drop: impl Fn(&PolicyKey) -> bool,
    ) -> BTreeSet<FeatureKey> {
        let mut freed = Vec::new();
        for (policy, set) in &mut self.holders {
            if drop(policy) && set.remove(feature) {
                freed.push(policy.clone());
            }
        }
        self.holders.retain(|_, set| !set.is_empty());
        self.waiters_of(&freed)
    }

    fn forget_waiting(&mut self, feature: &FeatureKey) {
        for set in self.waiting.values_mut() {
            set.remove(feature);
        }
        self.waiting.retain(|_, set| !set.is_empty());
    }

    fn waiters_of(&self, policies: &[PolicyKey]) -> BTreeSet<FeatureKey> {
        policies
            .iter()
            .filter_map(|p| self.waiting.get(p))
            .flatten()
            .cloned()
            .collect()
    }
}

/// `maxConcurrent` as a count of slots: at least one, or nothing could ever start.
fn capacity(max: u32) -> usize {
    usize::try_from(max.max(1)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(name: &str) -> FeatureKey {
        FeatureKey::new("ns", name)
    }

    fn limit(policy: &str, max: u32) -> Limit {
        (key(policy), max)
    }

    fn names(set: &BTreeSet<FeatureKey>) -> Vec<&str> {
        set.iter().map(|k| k.name.as_str()).collect()
    }

    #[test]
    fn a_feature_pushed_back_to_waiting_frees_its_slot_for_the_one_that_waits() {
        let limits = [limit("p", 1)];
        let mut slots = StartSlots::default();
        assert!(slots.update(&key("a"), Stage::Admitted, &limits).granted());
        let b = slots.update(&key("b"), Stage::Admitted, &limits);
        assert_eq!(b.full, limits);
        // a loses its place in the budget (to b, say) before it is Ready: it is held back now,
        // and b, which waits for the slot, is woken and gets it.
        let a = slots.update(&key("a"), Stage::Held, &limits);
        assert_eq!(names(&a.wake), ["b"]);
        assert!(!slots.holds(&key("a")));
        assert!(slots.update(&key("b"), Stage::Admitted, &limits).granted());
        assert_eq!(slots.holders(&key("p")).collect::<Vec<_>>(), [&key("b")]);
    }

    #[test]
    fn a_feature_that_cannot_start_holds_no_slot_anywhere() {
        let mut slots = StartSlots::default();
        assert!(
            slots
                .update(&key("x"), Stage::Admitted, &[limit("q", 1)])
                .granted()
        );
        // x is selected by a second policy now, whose one slot a holds: x gives q's back.
        assert!(
            slots
                .update(&key("a"), Stage::Admitted, &[limit("p", 1)])
                .granted()
        );
        slots.update(&key("y"), Stage::Admitted, &[limit("q", 1)]);
        let x = slots.update(&key("x"), Stage::Admitted, &[limit("p", 1), limit("q", 1)]);
        assert_eq!(x.full, [limit("p", 1)]);
        assert_eq!(names(&x.wake), ["y"]);
        assert!(!slots.holds(&key("x")));
    }

    #[test]
    fn a_starting_feature_takes_a_slot_only_if_there_is_room_and_is_never_stopped() {
        let limits = [limit("p", 1)];
        let mut slots = StartSlots::default();
        assert!(slots.update(&key("a"), Stage::Starting, &limits).granted());
        // Found starting after a restart while a holds the only slot: goes on without one.
        assert!(slots.update(&key("b"), Stage::Starting, &limits).granted());
        assert_eq!(slots.holders(&key("p")).count(), 1);
        slots.update(&key("a"), Stage::Settled, &limits);
        slots.update(&key("b"), Stage::Starting, &limits);
        assert_eq!(slots.holders(&key("p")).collect::<Vec<_>>(), [&key("b")]);
    }

    #[test]
    fn retain_frees_the_slots_of_features_that_stopped_starting() {
        let limits = [limit("p", 1)];
        let mut slots = StartSlots::default();
        slots.update(&key("a"), Stage::Admitted, &limits);
        slots.update(&key("b"), Stage::Admitted, &limits);
        // Only the policies asked about are looked at.
        assert!(slots.retain(&[limit("q", 1)], |_| false).is_empty());
        assert!(slots.holds(&key("a")));
        let wake = slots.retain(&limits, |f| f != &key("a"));
        assert_eq!(names(&wake), ["b"]);
        assert!(slots.update(&key("b"), Stage::Admitted, &limits).granted());
    }

    #[test]
    fn a_policy_that_stops_limiting_gets_its_slot_back() {
        let mut slots = StartSlots::default();
        slots.update(&key("a"), Stage::Admitted, &[limit("p", 1)]);
        slots.update(&key("b"), Stage::Admitted, &[limit("p", 1)]);
        let a = slots.update(&key("a"), Stage::Starting, &[]);
        assert_eq!(names(&a.wake), ["b"]);
        assert!(!slots.holds(&key("a")));
    }

    // ---- property test ----

    const FEATURES: usize = 5;
    /// maxConcurrent of policies p0, p1, p2.
    const MAX: [u32; 3] = [1, 2, 1];

    #[derive(Debug, Clone)]
    enum Op {
        /// A feature's reconcile: its stage and which policies limit it (a bit mask).
        Update(usize, Stage, u8),
        /// Features outside the mask stopped starting without their own reconcile saying so.
        Retain(u8),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        let stage = prop_oneof![
            Just(Stage::Held),
            Just(Stage::Admitted),
            Just(Stage::Starting),
            Just(Stage::Settled),
        ];
        prop_oneof![
            4 => (0..FEATURES, stage, 0..8u8).prop_map(|(f, s, m)| Op::Update(f, s, m)),
            1 => (0..32u8).prop_map(Op::Retain),
        ]
    }

    fn feature(i: usize) -> FeatureKey {
        key(&format!("f{i}"))
    }

    fn limits_of(mask: u8) -> Vec<Limit> {
        (0..MAX.len())
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| limit(&format!("p{i}"), MAX[i]))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn slots_are_held_only_while_starting_and_never_above_the_limit(
            ops in prop::collection::vec(arb_op(), 0..40),
        ) {
            let mut slots = StartSlots::default();
            // What each feature really does: starting (scaled up, not Ready) or not.
            let mut starting: BTreeSet<FeatureKey> = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Update(i, stage, mask) => {
                        let f = feature(i);
                        let limits = limits_of(mask);
                        let update = slots.update(&f, stage, &limits);
                        let starts = match stage {
                            Stage::Held | Stage::Settled => false,
                            Stage::Starting => true,
                            Stage::Admitted => update.granted(),
                        };
                        if starts {
                            starting.insert(f.clone());
                        } else {
                            starting.remove(&f);
                        }
                        // A feature is refused a slot only while the limit is taken by
                        // features that really start: no waiting on one that waits itself.
                        for (policy, max) in &update.full {
                            let holders: Vec<&FeatureKey> = slots.holders(policy).collect();
                            prop_assert!(holders.len() >= capacity(*max));
                            prop_assert!(holders.iter().all(|h| starting.contains(*h)));
                        }
                        prop_assert!(!update.wake.contains(&f));
                    }
                    Op::Retain(mask) => {
                        let still = |f: &FeatureKey| {
                            (0..FEATURES).any(|i| mask & (1 << i) != 0 && &feature(i) == f)
                        };
                        starting.retain(|f| still(f));
                        slots.retain(&limits_of(0b111), still);
                    }
                }
                for (i, max) in MAX.iter().enumerate() {
                    let policy = key(&format!("p{i}"));
                    let holders: Vec<&FeatureKey> = slots.holders(&policy).collect();
                    prop_assert!(holders.len() <= capacity(*max), "{policy}: {holders:?}");
                    for h in holders {
                        prop_assert!(starting.contains(h), "{h} holds a slot of {policy} but is not starting");
                    }
                }
            }
        }
    }
}
