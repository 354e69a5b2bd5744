//! The shell of capacity sharing ([`crate::core::capacity`]): what a reconcile gathers for the
//! split, and whom a caller's replica change wakes. The split itself is decided in the core.
//!
//! A caller's replica change reaches its own reconcile (the Deployment watch), but not the
//! other callers of the same dependency, whose per-instance limits may have to move, nor the
//! dependency, whose `status.capacity` shows the split: this caller's reconcile wakes them
//! when the weight or replicas it counts for differ from what it counted last. The dependency's
//! new status then wakes every caller again (the index compares its capacity), so all of them
//! settle on the split computed from that status.

use std::collections::BTreeMap;

use kube::ResourceExt;

use super::context::{Context, lock};
use super::index::Wake;
use super::memory::Counted;
use crate::api::PremiumFeature;
use crate::core::capacity::{self, Caller, CapacityInputs};
use crate::core::decide::Decision;
use crate::core::graph::FeatureKey;

/// The splits `key` takes part in: each of `dependencies` with a `spec.capacity`, and the
/// feature itself when it has one (for its status).
pub fn gather(
    ctx: &Context,
    feature: &PremiumFeature,
    key: &FeatureKey,
    dependencies: &[FeatureKey],
) -> BTreeMap<FeatureKey, CapacityInputs> {
    let mut out = BTreeMap::new();
    if let Some(inputs) = inputs_of(ctx, feature, key) {
        out.insert(key.clone(), inputs);
    }
    for dependency in dependencies {
        if let Some(f) = ctx.feature(dependency)
            && let Some(inputs) = inputs_of(ctx, &f, dependency)
        {
            out.insert(dependency.clone(), inputs);
        }
    }
    out
}

fn inputs_of(ctx: &Context, f: &PremiumFeature, key: &FeatureKey) -> Option<CapacityInputs> {
    let capacity = capacity::from_spec(f.spec.capacity.as_ref()?);
    let callers = lock(&ctx.index).dependents(key);
    let previous = f
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .map(|s| capacity::from_status(s, &key.namespace))
        .unwrap_or_default();
    Some(CapacityInputs {
        capacity,
        callers: callers.iter().filter_map(|c| caller(ctx, c)).collect(),
        previous,
    })
}

/// A caller as the cache shows it: its weight, and the replicas that may be running (the
/// larger of desired and ready, so a scale-down counts the pods until they are gone), but no
/// fewer than its last pass asked for: that pass wakes the dependency right after its write,
/// whose watch echo may not be in the cache yet (and wakes nobody when it comes).
fn caller(ctx: &Context, key: &FeatureKey) -> Option<Caller> {
    let f = ctx.feature(key)?;
    let uid = f.uid()?;
    let replicas = ctx
        .stores
        .deployments
        .get(&key.namespace, &key.name)
        .filter(|d| d.controlled_by(&uid))
        .map(|d| {
            let ready = d.health.as_ref().map_or(0, |h| h.ready);
            d.written.replicas.unwrap_or(0).max(ready)
        })
        .unwrap_or(0);
    let planned = ctx
        .memory
        .read(key, |m| m.capacity_counted.map(|c| c.planned))
        .flatten()
        .unwrap_or(0);
    Some(Caller {
        key: key.clone(),
        weight: weight(&f),
        replicas: u32::try_from(replicas).unwrap_or(0).max(planned),
    })
}

fn weight(f: &PremiumFeature) -> u32 {
    f.spec
        .pool
        .as_ref()
        .and_then(|p| p.weight)
        .map_or(1, |w| u32::try_from(w.max(1)).unwrap_or(1))
}

/// After a caller's pass: when the weight and replicas it counts for in its dependencies'
/// splits moved since its last pass, wakes those dependencies and their other callers.
pub fn wake_on_change(
    ctx: &Context,
    feature: &PremiumFeature,
    key: &FeatureKey,
    capacities: &BTreeMap<FeatureKey, CapacityInputs>,
    decision: &Decision,
) {
    let split: Vec<&FeatureKey> = capacities.keys().filter(|k| *k != key).collect();
    let counted = (!split.is_empty()).then(|| {
        let seen = split
            .iter()
            .filter_map(|d| capacities[*d].callers.iter().find(|c| &c.key == key))
            .map(|c| c.replicas)
            .max()
            .unwrap_or(0);
        let planned = u32::try_from(decision.plan.replicas).unwrap_or(0);
        Counted {
            weight: weight(feature),
            replicas: seen.max(planned),
            planned,
        }
    });
    let before = ctx
        .memory
        .update(key, |m| std::mem::replace(&mut m.capacity_counted, counted));
    let split_input = |c: Option<Counted>| c.map(|c| (c.weight, c.replicas));
    if split_input(before) == split_input(counted) || counted.is_none() {
        return;
    }
    let mut wake = Wake::default();
    let index = lock(&ctx.index);
    for dependency in split {
        wake.features.insert(dependency.clone());
        wake.features.extend(index.dependents(dependency));
    }
    drop(index);
    wake.features.remove(key);
    ctx.wake(wake);
}
