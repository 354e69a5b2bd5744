//! The shared replica budget of a policy: which features may run and how
//! far each may scale.
//!
//! Deterministic weighted water-filling: the same requests in any order give
//! the same allocation, so reconciles agree and HPAs are not rewritten for
//! nothing. Arithmetic is widened (u64/u128) so `u32::MAX` inputs cannot
//! overflow.

use std::cmp::{Ordering, Reverse};
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
}

/// The outcome for one policy's budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetAllocation {
    /// Admitted features and their allowed HPA maximum.
    pub max_replicas: BTreeMap<String, u32>,
    /// Features that wait because the minimums do not fit, in the order they
    /// would be admitted.
    pub waiting: Vec<String>,
    /// Sum of the requested maxima (saturating).
    pub requested: u32,
    /// Sum of the granted maxima (saturating).
    pub allocated: u32,
    /// The minimums alone exceed the budget.
    pub exceeded: bool,
}

/// Splits `budget` replicas among `requests`.
///
/// Without a budget everyone gets their max. With one:
/// 1. Admission: if all minimums fit, everyone is admitted; otherwise
///    features are admitted in priority order (level ascending, weight
///    descending, name) while the running sum of minimums fits, and the
///    first that does not fit stops admission. Stopping rather than skipping
///    keeps a lower-priority feature from running ahead of a higher one, and
///    a dependent from running while its dependency waits.
/// 2. Every admitted feature starts at its min; the rest of the budget goes
///    to features with headroom in proportion to weight, capped at their
///    max (water-filling). Rounding: floor shares, then one unit each by
///    largest fractional remainder, ties by weight descending, then name.
///
/// Inputs are sanitized first: `max < min` is raised to `min`, weight 0
/// counts as 1, and of requests sharing a name the one that sorts first
/// (by min, max, weight, level) is kept.
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
/// priority order), with the sum of admitted minimums.
fn admit(budget: u64, pools: Vec<PoolRequest>) -> (Vec<PoolRequest>, Vec<PoolRequest>, u64) {
    let total_min: u64 = pools.iter().map(|p| u64::from(p.min)).sum();
    if total_min <= budget {
        return (pools, Vec::new(), total_min);
    }
    let mut by_priority = pools;
    by_priority.sort_by(|a, b| {
        (a.level, Reverse(a.weight), &a.name).cmp(&(b.level, Reverse(b.weight), &b.name))
    });
    let mut admitted_mins = 0u64;
    let fits = by_priority
        .iter()
        .take_while(|p| {
            let fits = admitted_mins + u64::from(p.min) <= budget;
            if fits {
                admitted_mins += u64::from(p.min);
            }
            fits
        })
        .count();
    let waiting = by_priority.split_off(fits);
    let mut admitted = by_priority;
    admitted.sort_by(|a, b| a.name.cmp(&b.name));
    (admitted, waiting, admitted_mins)
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
        granted[i] += pools[i].max as u64 - pools[i].min as u64;
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

/// Keeps the unused import of `Ordering` honest for readers of `sort_by`.
#[allow(dead_code)]
fn _ordering(_: Ordering) {}
