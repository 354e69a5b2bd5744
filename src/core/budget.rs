//! The shared replica budget of a policy: which features may run and how
//! far each may scale.
//!
//! Deterministic weighted water-filling: the same requests in any order give
//! the same allocation, so reconciles agree and HPAs are not rewritten for
//! nothing. Arithmetic is widened (u64/u128) so `u32::MAX` inputs cannot
//! overflow.

use std::cmp::Reverse;
use std::collections::BTreeMap;

/// One feature's claim on the budget.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PoolRequest {
    pub name: String,
    pub min: u32,
    pub max: u32,
    /// Share of the spare replicas relative to the others; 0 counts as 1.
    pub weight: u32,
    /// Start-up level: features lower in the graph are admitted first, since
    /// their dependents cannot run without them.
    pub level: u32,
    /// The feature already runs (its Deployment asks for replicas): it keeps its
    /// place ahead of every feature that does not run yet.
    pub running: bool,
}

/// The outcome for one policy's budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetAllocation {
    /// Admitted features and their allowed HPA maximum.
    pub max_replicas: BTreeMap<String, u32>,
    /// Features that wait because their minimum does not fit in what the
    /// features admitted before them left, in admission order.
    pub waiting: Vec<String>,
    /// Sum of the requested maxima (saturating).
    pub requested: u32,
    /// Sum of the granted maxima (saturating).
    pub allocated: u32,
    /// The minimums alone exceed the budget.
    pub exceeded: bool,
    /// The waiting features whose minimum alone is larger than the whole
    /// budget: they cannot start until their minimum or the budget changes.
    pub oversized: Vec<String>,
}

/// Splits `budget` replicas among `requests`.
///
/// Without a budget everyone gets their max. With one:
/// 1. Admission: if all minimums fit, everyone is admitted; otherwise
///    features are taken in admission order (running ones first, then level
///    ascending, weight descending, name) and each is admitted if its minimum
///    fits in what the ones admitted before it left. One that does not fit is
///    skipped and waits, and the rest go on: a feature whose minimum can never
///    fit (larger than the whole budget) stops no one. Running first means a
///    feature that does not run yet never takes a running one below its
///    minimum; among running features (a budget that shrank, a minimum that
///    grew) rank decides. A dependent admitted while its dependency waits is
///    still held back by its dependency, so admission needs no graph.
/// 2. Every admitted feature starts at its min; the rest of the budget goes
///    to features with headroom in proportion to weight, capped at their
///    max (water-filling). Rounding: floor shares, then one unit each by
///    largest fractional remainder, ties by weight descending, then name.
///
/// Inputs are sanitized first: `max < min` is raised to `min`, weight 0
/// counts as 1, and of requests sharing a name the one that sorts first
/// (by min, max, weight, level, running) is kept.
pub fn allocate(budget: Option<u32>, requests: &[PoolRequest]) -> BudgetAllocation {
    let pools = sanitize(requests);
    let requested = saturate(pools.iter().map(|p| u64::from(p.max)).sum());

    let Some(budget) = budget else {
        return BudgetAllocation {
            max_replicas: pools.iter().map(|p| (p.name.clone(), p.max)).collect(),
            waiting: Vec::new(),
            requested,
            allocated: requested,
            exceeded: false,
            oversized: Vec::new(),
        };
    };
    let budget = u64::from(budget);

    let (admitted, waiting, admitted_mins) = admit(budget, pools);
    let granted = water_fill(&admitted, budget - admitted_mins);
    let allocated = saturate(granted.iter().sum());

    BudgetAllocation {
        max_replicas: admitted
            .iter()
            .zip(granted)
            .map(|(p, g)| (p.name.clone(), u32::try_from(g).unwrap_or(u32::MAX)))
            .collect(),
        exceeded: !waiting.is_empty(),
        oversized: waiting
            .iter()
            .filter(|p| u64::from(p.min) > budget)
            .map(|p| p.name.clone())
            .collect(),
        waiting: waiting.into_iter().map(|p| p.name).collect(),
        requested,
        allocated,
    }
}

fn saturate(sum: u64) -> u32 {
    u32::try_from(sum).unwrap_or(u32::MAX)
}

/// Requests with `max >= min` and `weight >= 1`, one per name, sorted by
/// name.
fn sanitize(requests: &[PoolRequest]) -> Vec<PoolRequest> {
    let mut pools: Vec<PoolRequest> = requests.to_vec();
    // Full-field order makes the survivor among duplicate names independent
    // of input order.
    pools.sort();
    pools.dedup_by(|later, first| later.name == first.name);
    for pool in &mut pools {
        pool.max = pool.max.max(pool.min);
        pool.weight = pool.weight.max(1);
    }
    pools
}

/// Splits sanitized pools into admitted (sorted by name) and waiting (in
/// admission order), with the sum of admitted minimums.
fn admit(budget: u64, pools: Vec<PoolRequest>) -> (Vec<PoolRequest>, Vec<PoolRequest>, u64) {
    let total_min: u64 = pools.iter().map(|p| u64::from(p.min)).sum();
    if total_min <= budget {
        return (pools, Vec::new(), total_min);
    }
    let mut in_order = pools;
    in_order.sort_by(|a, b| admission_rank(a).cmp(&admission_rank(b)));
    let mut admitted_mins = 0u64;
    let (mut admitted, waiting): (Vec<PoolRequest>, Vec<PoolRequest>) =
        in_order.into_iter().partition(|p| {
            let fits = admitted_mins + u64::from(p.min) <= budget;
            if fits {
                admitted_mins += u64::from(p.min);
            }
            fits
        });
    admitted.sort_by(|a, b| a.name.cmp(&b.name));
    (admitted, waiting, admitted_mins)
}

/// The order admission goes through: running features first (a feature that
/// does not run yet never stops one that does), then level, weight (heaviest
/// first) and name.
fn admission_rank(p: &PoolRequest) -> (bool, u32, Reverse<u32>, &str) {
    (!p.running, p.level, Reverse(p.weight), &p.name)
}

/// Each pool's granted max: its min plus a weighted share of `spare`,
/// capped at its max.
fn water_fill(pools: &[PoolRequest], spare: u64) -> Vec<u64> {
    let mut granted: Vec<u64> = pools.iter().map(|p| u64::from(p.min)).collect();
    let headroom = |i: usize| u128::from(pools[i].max - pools[i].min);
    let weight = |i: usize| u128::from(pools[i].weight);

    // Pools that fill up first have the least headroom per unit of weight;
    // in that order, a pool fills up iff its headroom is at most its share
    // at the current level. Capping it only raises the level for the rest,
    // so once one pool does not fill up, none after it does.
    let mut order: Vec<usize> = (0..pools.len()).collect();
    order.sort_by(|&a, &b| {
        (headroom(a) * weight(b))
            .cmp(&(headroom(b) * weight(a)))
            .then_with(|| pools[a].name.cmp(&pools[b].name))
    });
    let mut spare = u128::from(spare);
    let mut total_weight: u128 = order.iter().map(|&i| weight(i)).sum();
    let mut filling = order.len();
    for (position, &i) in order.iter().enumerate() {
        if headroom(i) * total_weight > spare * weight(i) {
            filling = position;
            break;
        }
        // headroom <= share <= spare, and headroom fits u64.
        granted[i] += u64::from(pools[i].max - pools[i].min);
        spare -= headroom(i);
        total_weight -= weight(i);
    }
    let sharing = &order[filling..];
    if sharing.is_empty() || spare == 0 {
        return granted;
    }

    // Nobody left fills up: floor shares, then the leftover units by largest
    // remainder. Each share is below its headroom, so share + 1 still fits
    // when the remainder is non-zero, and only non-zero remainders get one.
    let mut remainders: Vec<(u128, usize)> = Vec::with_capacity(sharing.len());
    let mut handed_out = 0u128;
    for &i in sharing {
        let exact = spare * weight(i);
        let share = exact / total_weight;
        granted[i] += u64::try_from(share).unwrap_or(u64::MAX);
        handed_out += share;
        remainders.push((exact % total_weight, i));
    }
    remainders.sort_by(|(ra, a), (rb, b)| {
        rb.cmp(ra)
            .then_with(|| pools[*b].weight.cmp(&pools[*a].weight))
            .then_with(|| pools[*a].name.cmp(&pools[*b].name))
    });
    let leftover = usize::try_from(spare - handed_out).unwrap_or(usize::MAX);
    for &(remainder, i) in remainders.iter().take(leftover) {
        if remainder == 0 {
            break;
        }
        granted[i] += 1;
    }
    granted
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pool(name: &str, min: u32, max: u32, weight: u32, level: u32) -> PoolRequest {
        PoolRequest {
            name: name.to_owned(),
            min,
            max,
            weight,
            level,
            running: false,
        }
    }

    fn running(mut request: PoolRequest) -> PoolRequest {
        request.running = true;
        request
    }

    fn grants(allocation: &BudgetAllocation) -> Vec<(&str, u32)> {
        allocation
            .max_replicas
            .iter()
            .map(|(name, max)| (name.as_str(), *max))
            .collect()
    }

    fn portal() -> Vec<PoolRequest> {
        vec![
            pool("aika", 1, 6, 2, 2),
            pool("catalog", 1, 4, 1, 0),
            pool("skill-exchange", 1, 4, 1, 1),
            pool("soundcheck", 2, 10, 1, 1),
        ]
    }

    #[test]
    fn no_budget_grants_every_max() {
        let allocation = allocate(None, &portal());
        assert_eq!(
            grants(&allocation),
            [
                ("aika", 6),
                ("catalog", 4),
                ("skill-exchange", 4),
                ("soundcheck", 10)
            ]
        );
        assert_eq!((allocation.requested, allocation.allocated), (24, 24));
        assert!(!allocation.exceeded && allocation.waiting.is_empty());
    }

    #[test]
    fn budget_of_twenty_is_water_filled() {
        // Mins 5, spare 15 over weights 2+1+1+1: aika's share 6 exceeds its
        // headroom 5, so it fills up; 10 left for weights 1+1+1 (3.33 each)
        // fill catalog and skill-exchange (headroom 3); soundcheck takes the
        // last 4.
        let allocation = allocate(Some(20), &portal());
        assert_eq!(
            grants(&allocation),
            [
                ("aika", 6),
                ("catalog", 4),
                ("skill-exchange", 4),
                ("soundcheck", 6)
            ]
        );
        assert_eq!((allocation.requested, allocation.allocated), (24, 20));
        assert!(!allocation.exceeded);
    }

    #[test]
    fn weights_split_the_spare() {
        // Mins 5, spare 7 over weights 2+1+1+1: 2.8, 1.4, 1.4, 1.4.
        // Floors 2, 1, 1, 1 leave 2 units: aika (remainder .8), then of the
        // .4 ties (all weight 1) catalog by name.
        let allocation = allocate(Some(12), &portal());
        assert_eq!(
            grants(&allocation),
            [
                ("aika", 4),
                ("catalog", 3),
                ("skill-exchange", 2),
                ("soundcheck", 3)
            ]
        );
        assert_eq!(allocation.allocated, 12);
    }

    #[test]
    fn remainder_ties_go_to_the_heavier_weight() {
        // Spare 2 over weights 1+4+1: 0.33, 1.33, 0.33, equal remainders;
        // the leftover unit goes to the heavier b.
        let requests = [
            pool("a", 0, 10, 1, 0),
            pool("b", 0, 10, 4, 0),
            pool("c", 0, 10, 1, 0),
        ];
        let allocation = allocate(Some(2), &requests);
        assert_eq!(grants(&allocation), [("a", 0), ("b", 2), ("c", 0)]);
    }

    #[test]
    fn budget_exactly_the_mins_grants_the_mins() {
        let allocation = allocate(Some(5), &portal());
        assert_eq!(
            grants(&allocation),
            [
                ("aika", 1),
                ("catalog", 1),
                ("skill-exchange", 1),
                ("soundcheck", 2)
            ]
        );
        assert!(!allocation.exceeded);
    }

    #[test]
    fn mins_over_budget_admit_by_level_then_weight_then_name() {
        // Priority: catalog (0), skill-exchange and soundcheck (1, weight 1,
        // by name), aika (2). Budget 3: catalog 1 + skill-exchange 1 fit,
        // soundcheck's 2 does not and is skipped; aika's 1 still fits after
        // it. (Admission used to stop at soundcheck, so aika waited behind a
        // feature that could not start anyway.)
        let allocation = allocate(Some(3), &portal());
        assert!(allocation.exceeded);
        assert_eq!(allocation.waiting, ["soundcheck"]);
        assert!(
            allocation.oversized.is_empty(),
            "soundcheck fits an empty budget"
        );
        // The mins use the whole budget: nothing spare to share.
        assert_eq!(
            grants(&allocation),
            [("aika", 1), ("catalog", 1), ("skill-exchange", 1)]
        );
        assert_eq!((allocation.requested, allocation.allocated), (24, 3));
    }

    #[test]
    fn a_minimum_larger_than_the_budget_blocks_nobody() {
        // big ranks first (level 0, heaviest) but its 5 can never fit in 4:
        // it is skipped and the others share the budget as if it were not
        // there.
        let requests = [
            pool("big", 5, 8, 10, 0),
            running(pool("a", 1, 2, 1, 0)),
            running(pool("b", 1, 2, 1, 0)),
            pool("c", 1, 1, 1, 0),
        ];
        let allocation = allocate(Some(4), &requests);
        assert_eq!(allocation.waiting, ["big"]);
        assert_eq!(allocation.oversized, ["big"]);
        assert_eq!(grants(&allocation), [("a", 2), ("b", 1), ("c", 1)]);
        assert!(allocation.exceeded);
    }

    #[test]
    fn running_features_keep_their_place_ahead_of_new_ones() {
        // x ranks ahead of a (lower level, heavier) but a already runs: x
        // waits for room instead of a being stopped for it.
        let requests = [running(pool("a", 2, 3, 1, 1)), pool("x", 2, 3, 9, 0)];
        let allocation = allocate(Some(3), &requests);
        assert_eq!(grants(&allocation), [("a", 3)]);
        assert_eq!(allocation.waiting, ["x"]);
        // Before a started, x would have gone first.
        let allocation = allocate(Some(3), &[pool("a", 2, 3, 1, 1), pool("x", 2, 3, 9, 0)]);
        assert_eq!(grants(&allocation), [("x", 3)]);
        assert_eq!(allocation.waiting, ["a"]);
    }

    #[test]
    fn running_features_that_no_longer_fit_go_by_rank() {
        // The budget shrank under two running features: rank decides which
        // one keeps running, and the new feature that fits in what is left
        // is admitted.
        let requests = [
            running(pool("a", 2, 2, 1, 0)),
            running(pool("b", 2, 2, 5, 0)),
            pool("c", 1, 1, 1, 0),
        ];
        let allocation = allocate(Some(3), &requests);
        assert_eq!(grants(&allocation), [("b", 2), ("c", 1)]);
        assert_eq!(allocation.waiting, ["a"]);
    }

    #[test]
    fn heavier_weight_is_admitted_first_within_a_level() {
        let allocation = allocate(Some(2), &[pool("a", 2, 4, 1, 0), pool("b", 2, 4, 5, 0)]);
        assert_eq!(grants(&allocation), [("b", 2)]);
        assert_eq!(allocation.waiting, ["a"]);
    }

    #[test]
    fn inputs_are_sanitized() {
        let allocation = allocate(
            Some(100),
            &[
                pool("a", 5, 2, 0, 0), // max raised to 5, weight 0 -> 1
                pool("b", 1, 3, 1, 0),
                pool("b", 0, 50, 9, 0), // duplicate name: smaller min sorts first
            ],
        );
        assert_eq!(grants(&allocation), [("a", 5), ("b", 50)]);
        assert_eq!(allocation.requested, 55);
    }

    #[test]
    fn zero_budget_with_zero_mins_admits_everyone_at_zero() {
        let allocation = allocate(Some(0), &[pool("a", 0, 3, 1, 0)]);
        assert_eq!(grants(&allocation), [("a", 0)]);
        assert!(!allocation.exceeded);
    }

    #[test]
    fn huge_values_saturate() {
        let requests = [
            pool("a", u32::MAX, u32::MAX, u32::MAX, u32::MAX),
            pool("b", 0, u32::MAX, u32::MAX, 0),
            pool("c", 1, u32::MAX, 1, 0),
        ];
        let unbounded = allocate(None, &requests);
        assert_eq!(
            (unbounded.requested, unbounded.allocated),
            (u32::MAX, u32::MAX)
        );
        let bounded = allocate(Some(u32::MAX), &requests);
        // b and c (level 0) fit; a's min does not fit after c's 1. The spare
        // M - 1 splits M : 1, so b's floor is M - 2 (remainder 2/(M+1)) and
        // the leftover unit goes to c (remainder (M-1)/(M+1)).
        assert_eq!(bounded.waiting, ["a"]);
        assert_eq!(bounded.allocated, u32::MAX);
        assert_eq!(grants(&bounded), [("b", u32::MAX - 2), ("c", 2)]);
    }

    #[test]
    fn empty_requests() {
        let allocation = allocate(Some(10), &[]);
        assert!(allocation.max_replicas.is_empty());
        assert_eq!((allocation.requested, allocation.allocated), (0, 0));
    }

    // ---- property tests ----

    fn arb_requests(limit: u32) -> impl Strategy<Value = Vec<PoolRequest>> {
        prop::collection::vec(
            (
                0..12u8,
                0..=limit,
                0..=limit,
                0..=limit.min(8),
                0..4u32,
                any::<bool>(),
            )
                .prop_map(|(n, min, max, weight, level, runs)| PoolRequest {
                    running: runs,
                    ..pool(&format!("f{n}"), min, max, weight, level)
                }),
            0..10,
        )
    }

    fn arb_any_requests() -> impl Strategy<Value = Vec<PoolRequest>> {
        prop::collection::vec(
            (
                0..6u8,
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<bool>(),
            )
                .prop_map(|(n, min, max, weight, level, runs)| PoolRequest {
                    running: runs,
                    ..pool(&format!("f{n}"), min, max, weight, level)
                }),
            0..8,
        )
    }

    /// The sanitized pool each admitted name came from.
    fn sanitized(requests: &[PoolRequest], name: &str) -> Option<PoolRequest> {
        sanitize(requests).into_iter().find(|p| p.name == name)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn stays_within_budget_and_bounds(budget in 0..60u32, requests in arb_requests(20)) {
            let allocation = allocate(Some(budget), &requests);
            let granted: u64 = allocation.max_replicas.values().map(|&m| u64::from(m)).sum();
            prop_assert!(granted <= u64::from(budget));
            prop_assert_eq!(u64::from(allocation.allocated), granted);
            let mut admitted_mins = 0u64;
            for (name, &max) in &allocation.max_replicas {
                let pool = sanitized(&requests, name).expect("admitted names come from the requests");
                prop_assert!(pool.min <= max && max <= pool.max);
                admitted_mins += u64::from(pool.min);
            }
            prop_assert!(admitted_mins <= u64::from(budget));
            prop_assert_eq!(allocation.exceeded, !allocation.waiting.is_empty());
            // Oversized: exactly the waiting features whose minimum alone is over the budget.
            let oversized: Vec<String> = allocation
                .waiting
                .iter()
                .filter(|n| sanitized(&requests, n).is_some_and(|p| p.min > budget))
                .cloned()
                .collect();
            prop_assert_eq!(&allocation.oversized, &oversized);
            // Every sanitized pool is either admitted or waiting.
            let names = sanitize(&requests).len();
            prop_assert_eq!(allocation.max_replicas.len() + allocation.waiting.len(), names);
            // Water-filling wastes nothing: the spare is used up unless
            // every admitted pool is at its max.
            let all_capped = allocation
                .max_replicas
                .iter()
                .all(|(name, &max)| sanitized(&requests, name).is_some_and(|p| p.max == max));
            prop_assert!(all_capped || granted == u64::from(budget));
        }

        #[test]
        fn no_feature_waits_behind_one_that_does_not_fit(
            budget in 0..60u32,
            requests in arb_requests(20),
        ) {
            // Every waiting feature's minimum is more than what the admitted
            // features ranked ahead of it leave: none waits while its
            // minimum would fit.
            let allocation = allocate(Some(budget), &requests);
            for name in &allocation.waiting {
                let waiting = sanitized(&requests, name).expect("waiting names come from the requests");
                let ahead: u64 = allocation
                    .max_replicas
                    .keys()
                    .filter_map(|n| sanitized(&requests, n))
                    .filter(|p| admission_rank(p) < admission_rank(&waiting))
                    .map(|p| u64::from(p.min))
                    .sum();
                prop_assert!(
                    ahead + u64::from(waiting.min) > u64::from(budget),
                    "{} (min {}) waits though {} of {} are left after the admitted features ranked ahead: {:?}",
                    name, waiting.min, u64::from(budget) - ahead, budget, allocation
                );
            }
        }

        #[test]
        fn running_features_that_fit_together_all_keep_running(
            budget in 0..60u32,
            requests in arb_requests(20),
        ) {
            let running_mins: u64 = sanitize(&requests)
                .iter()
                .filter(|p| p.running)
                .map(|p| u64::from(p.min))
                .sum();
            prop_assume!(running_mins <= u64::from(budget));
            let allocation = allocate(Some(budget), &requests);
            for p in sanitize(&requests).iter().filter(|p| p.running) {
                prop_assert!(
                    allocation.max_replicas.contains_key(&p.name),
                    "running {} was moved to waiting: {:?}", p.name, allocation
                );
            }
        }

        #[test]
        fn a_new_feature_never_stops_a_running_one(
            budget in 0..60u32,
            requests in arb_requests(20),
            newcomer in (0..=40u32, 0..=40u32, 0..=8u32, 0..4u32),
        ) {
            // The steady state: what the budget admitted has started, the
            // rest waits. Then a feature that does not run yet arrives.
            let settled: Vec<PoolRequest> = {
                let first = allocate(Some(budget), &requests);
                sanitize(&requests)
                    .into_iter()
                    .map(|p| PoolRequest {
                        running: first.max_replicas.contains_key(&p.name),
                        ..p
                    })
                    .collect()
            };
            let before = allocate(Some(budget), &settled);
            let (min, max, weight, level) = newcomer;
            let mut with_newcomer = settled.clone();
            with_newcomer.push(pool("newcomer", min, max, weight, level));
            let after = allocate(Some(budget), &with_newcomer);
            for name in before.max_replicas.keys() {
                prop_assert!(
                    after.max_replicas.contains_key(name),
                    "running {} was stopped for the newcomer: before {:?}, after {:?}", name, before, after
                );
            }
        }

        #[test]
        fn order_does_not_matter(
            budget in prop::option::of(0..60u32),
            requests in arb_requests(20),
            seed in any::<u64>(),
        ) {
            let mut shuffled = requests.clone();
            let mut state = seed | 1;
            for i in (1..shuffled.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                shuffled.swap(i, (state % (i as u64 + 1)) as usize);
            }
            prop_assert_eq!(allocate(budget, &requests), allocate(budget, &shuffled));
        }

        #[test]
        fn ample_budget_grants_every_max(requests in arb_requests(20), extra in 0..10u32) {
            let unbounded = allocate(None, &requests);
            let budget = unbounded.requested + extra;
            let allocation = allocate(Some(budget), &requests);
            prop_assert!(allocation.waiting.is_empty() && !allocation.exceeded);
            prop_assert_eq!(allocation.max_replicas, unbounded.max_replicas);
            prop_assert_eq!(allocation.allocated, unbounded.requested);
        }

        #[test]
        fn weights_two_to_one(spare in 0..10_000u32, min in 0..100u32) {
            let allocation = allocate(
                Some(2 * min + spare),
                &[pool("heavy", min, u32::MAX, 2, 0), pool("light", min, u32::MAX, 1, 0)],
            );
            let heavy = i64::from(allocation.max_replicas["heavy"] - min);
            let light = i64::from(allocation.max_replicas["light"] - min);
            prop_assert_eq!(heavy + light, i64::from(spare));
            prop_assert!((heavy - 2 * light).abs() <= 2, "{} vs {}", heavy, light);
        }

        #[test]
        fn never_panics(budget in prop::option::of(any::<u32>()), requests in arb_any_requests()) {
            let allocation = allocate(budget, &requests);
            if let Some(budget) = budget {
                let granted: u64 = allocation.max_replicas.values().map(|&m| u64::from(m)).sum();
                prop_assert!(granted <= u64::from(budget));
            }
        }
    }
}
