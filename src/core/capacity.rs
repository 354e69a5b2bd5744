//! A feature's capacity (`spec.capacity`) shared by its callers: pure, no kube, no I/O.
//!
//! Envoy applies circuit-breaker thresholds per Envoy instance, so a limit in a caller's
//! policy is multiplied by the caller's replicas, and again by the number of callers. Only the
//! operator sees every caller and its replica count, so it turns "what the dependency can
//! take" into "what each caller's sidecar may send":
//!
//! * the capacity is split between the callers in proportion to their weight (the caller's
//!   `pool.weight`, default 1: the same number that ranks it under a replica budget), by
//!   largest remainder, so the shares add up to the capacity exactly;
//! * a caller with no replicas takes no share (its weight goes to the others);
//! * a caller's share is divided by its replicas, rounded down, but never below 1 per
//!   instance: a sidecar with a limit of 0 would refuse every call. This is the one case where
//!   the total can exceed the capacity, and only by what the floor adds ([`bound`]);
//! * hysteresis: a caller keeps its previous per-instance limit while that is within
//!   [`HYSTERESIS_PERCENT`] of the fresh one and the total stays within [`bound`], so a small
//!   replica change rewrites the one caller whose limit had to move, not every caller.
//!
//! Each limit (connections, pending requests, requests) is split on its own; an unset one is
//! not split. The caller's own policy values stay a ceiling: see [`Limits::ceiling`].

use crate::api::{Capacity, CapacityAmounts, CapacityCaller, CapacityStatus};
use crate::core::graph::FeatureKey;

/// How far (in percent of the fresh value) a previous per-instance limit may be from the fresh
/// one and still be kept.
pub const HYSTERESIS_PERCENT: u64 = 10;

/// The three limits, each `None` when not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub max_requests: Option<u32>,
}

impl Limits {
    fn get(&self) -> [Option<u32>; 3] {
        [
            self.max_connections,
            self.max_pending_requests,
            self.max_requests,
        ]
    }

    fn from_array([c, p, r]: [Option<u32>; 3]) -> Self {
        Self {
            max_connections: c,
            max_pending_requests: p,
            max_requests: r,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.get().iter().all(Option::is_none)
    }

    /// Each limit is the smaller of the two where both are set, else whichever is set: a
    /// policy's breaker value stays a ceiling over the split, and the split over the policy.
    pub fn ceiling(&self, other: &Limits) -> Limits {
        let (a, b) = (self.get(), other.get());
        Limits::from_array(std::array::from_fn(|i| match (a[i], b[i]) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        }))
    }
}

/// A feature that depends on the one whose capacity is split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub key: FeatureKey,
    /// Its `pool.weight`; 0 counts as 1.
    pub weight: u32,
    /// Replicas that may be running: the larger of desired and ready.
    pub replicas: u32,
}

/// One caller's part of the capacity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub key: FeatureKey,
    pub weight: u32,
    pub replicas: u32,
    /// Its weighted part of the capacity, over all its replicas (0 without replicas).
    pub share: Limits,
    /// What each of its sidecars may send (at least 1 for every set limit).
    pub per_instance: Limits,
}

/// Everything a split reads, as the shell gathered it for one dependency.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CapacityInputs {
    pub capacity: Limits,
    pub callers: Vec<Caller>,
    /// The split as the dependency's status last showed it (for the hysteresis).
    pub previous: Vec<Share>,
}

impl CapacityInputs {
    /// The split, with `own`'s replicas taken as at least `replicas` (a caller deciding its own
    /// scale-up counts the replicas it is about to ask for).
    pub fn split_for(&self, own: &FeatureKey, replicas: u32) -> Vec<Share> {
        let mut callers = self.callers.clone();
        match callers.iter_mut().find(|c| &c.key == own) {
            Some(c) => c.replicas = c.replicas.max(replicas),
            None => callers.push(Caller {
                key: own.clone(),
                weight: 1,
                replicas,
            }),
        }
        split(&self.capacity, &callers, &self.previous)
    }
}

/// Splits `capacity` between `callers` (see the module docs). Callers are taken once each by
/// key (the first wins) and returned sorted by key. Same input, same output.
pub fn split(capacity: &Limits, callers: &[Caller], previous: &[Share]) -> Vec<Share> {
    let mut callers: Vec<Caller> = callers.to_vec();
    callers.sort_by(|a, b| a.key.cmp(&b.key));
    callers.dedup_by(|a, b| a.key == b.key);
    let weights: Vec<u64> = callers
        .iter()
        .map(|c| {
            if c.replicas == 0 {
                0
            } else {
                u64::from(c.weight.max(1))
            }
        })
        .collect();
    let replicas: Vec<u64> = callers.iter().map(|c| u64::from(c.replicas)).collect();
    let kept: Vec<Option<Limits>> = callers
        .iter()
        .map(|c| {
            previous
                .iter()
                .find(|p| p.key == c.key)
                .map(|p| p.per_instance)
        })
        .collect();
    let mut shares = vec![[None; 3]; callers.len()];
    let mut per_instance = vec![[None; 3]; callers.len()];
    for (dim, cap) in capacity.get().into_iter().enumerate() {
        let Some(cap) = cap else { continue };
        let previous: Vec<Option<u64>> = kept
            .iter()
            .map(|k| k.and_then(|l| l.get()[dim]).map(u64::from))
            .collect();
        let parts = weighted_parts(u64::from(cap), &weights);
        let limits = per_instance_limits(&parts, &replicas, &previous);
        for i in 0..callers.len() {
            shares[i][dim] = Some(clamp_u32(parts[i]));
            per_instance[i][dim] = Some(clamp_u32(limits[i]));
        }
    }
    callers
        .into_iter()
        .enumerate()
        .map(|(i, c)| Share {
            weight: c.weight.max(1),
            replicas: c.replicas,
            share: Limits::from_array(shares[i]),
            per_instance: Limits::from_array(per_instance[i]),
            key: c.key,
        })
        .collect()
}

fn clamp_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// `total` in proportion to `weights`, by largest remainder: the parts add up to `total`
/// exactly (unless every weight is 0), ties go to the earlier index.
fn weighted_parts(total: u64, weights: &[u64]) -> Vec<u64> {
    let sum: u64 = weights.iter().sum();
    if sum == 0 {
        return vec![0; weights.len()];
    }
    let mut parts: Vec<u64> = weights.iter().map(|w| total * w / sum).collect();
    let mut left = total - parts.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..weights.len()).filter(|&i| weights[i] > 0).collect();
    // Largest remainder first; the sort is stable, so ties keep key order.
    order.sort_by_key(|&i| std::cmp::Reverse(total * weights[i] % sum));
    for i in order {
        if left == 0 {
            break;
        }
        parts[i] += 1;
        left -= 1;
    }
    parts
}

/// What the floor of 1 per instance may add over the capacity: for each caller whose share
/// is smaller than its replicas, the difference.
fn floor_excess(shares: &[u64], replicas: &[u64]) -> u64 {
    shares
        .iter()
        .zip(replicas)
        .map(|(s, r)| r.saturating_sub(*s))
        .sum()
}

/// The most `Σ per-instance × replicas` may reach for one limit: the capacity, plus what the
/// floor of 1 per instance adds. With shares as [`split`] reports them.
pub fn bound(capacity: u64, shares: &[u64], replicas: &[u64]) -> u64 {
    capacity + floor_excess(shares, replicas)
}

/// Per-instance limits from the shares, keeping a previous value where the hysteresis allows.
fn per_instance_limits(shares: &[u64], replicas: &[u64], previous: &[Option<u64>]) -> Vec<u64> {
    let fresh: Vec<u64> = shares
        .iter()
        .zip(replicas)
        .map(|(s, r)| if *r == 0 { 1 } else { (s / r).max(1) })
        .collect();
    let limit = shares.iter().sum::<u64>() + floor_excess(shares, replicas);
    let mut chosen = fresh.clone();
    let close =
        |i: usize, p: u64| p >= 1 && p.abs_diff(fresh[i]) * 100 <= fresh[i] * HYSTERESIS_PERCENT;
    // Lower values first (they only free room), then higher ones in key order while they fit:
    // so the result does not depend on the order, and splitting again with it as the previous
    // split gives it back.
    for i in 0..fresh.len() {
        if let Some(p) = previous[i].filter(|&p| p <= fresh[i] && close(i, p)) {
            chosen[i] = p;
        }
    }
    for i in 0..fresh.len() {
        let Some(p) = previous[i].filter(|&p| p > fresh[i] && close(i, p)) else {
            continue;
        };
        let total: u64 = chosen.iter().zip(replicas).map(|(l, r)| l * r).sum();
        if total - chosen[i] * replicas[i] + p * replicas[i] <= limit {
            chosen[i] = p;
        }
    }
    chosen
}

/// `spec.capacity` as limits (values outside `u32` cannot pass the schema; they saturate).
pub fn from_spec(capacity: &Capacity) -> Limits {
    let to = |v: Option<i64>| v.map(|v| u32::try_from(v.max(1)).unwrap_or(u32::MAX));
    Limits {
        max_connections: to(capacity.max_connections),
        max_pending_requests: to(capacity.max_pending_requests),
        max_requests: to(capacity.max_requests),
    }
}

fn amounts(l: &Limits) -> CapacityAmounts {
    CapacityAmounts {
        max_connections: l.max_connections.map(i64::from),
        max_pending_requests: l.max_pending_requests.map(i64::from),
        max_requests: l.max_requests.map(i64::from),
    }
}

fn limits(a: &CapacityAmounts) -> Limits {
    let to = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok());
    Limits {
        max_connections: to(a.max_connections),
        max_pending_requests: to(a.max_pending_requests),
        max_requests: to(a.max_requests),
    }
}

/// The split as `status.capacity` of the dependency in `namespace` shows it.
pub fn to_status(split: &[Share], namespace: &str) -> CapacityStatus {
    CapacityStatus {
        callers: split
            .iter()
            .map(|s| CapacityCaller {
                name: s.key.relative_to(namespace),
                weight: i32::try_from(s.weight).unwrap_or(i32::MAX),
                replicas: i32::try_from(s.replicas).unwrap_or(i32::MAX),
                share: amounts(&s.share),
                per_instance: amounts(&s.per_instance),
            })
            .collect(),
    }
}

/// The split a status shows, read back as the previous split of the next one.
pub fn from_status(status: &CapacityStatus, namespace: &str) -> Vec<Share> {
    status
        .callers
        .iter()
        .map(|c| Share {
            key: match c.name.split_once('/') {
                Some((ns, name)) => FeatureKey::new(ns, name),
                None => FeatureKey::new(namespace, c.name.as_str()),
            },
            weight: u32::try_from(c.weight).unwrap_or(1),
            replicas: u32::try_from(c.replicas).unwrap_or(0),
            share: limits(&c.share),
            per_instance: limits(&c.per_instance),
        })
        .collect()
}

#[cfg(test)]
mod tests;
