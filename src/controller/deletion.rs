//! The deletion guard's shell (`deletion.whileDependents`): read the graph above a feature
//! being deleted from the caches, let [`core::teardown::deletion_guard`] decide, and apply it:
//! a `Stalled` status while `Block` holds, DELETEs of the next dependents while `Cascade` runs.
//!
//! Nothing is remembered between passes: every pass reads the graph again, so a pass repeated
//! after a crash or a lost update issues the same DELETEs (harmless on objects already being
//! deleted or gone) and the cascade carries on from where the cluster stands.
//!
//! [`core::teardown::deletion_guard`]: crate::core::teardown::deletion_guard

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use kube::api::{Api, DeleteParams, Preconditions};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::Error;
use super::context::{Context, lock};
use super::feature::{publish, write_status};
use crate::api::{PremiumFeature, WhileDependents};
use crate::core::graph::FeatureKey;
use crate::core::policy::effective_policy;
use crate::core::settings::while_dependents;
use crate::core::status::{Stamp, now_time};
use crate::core::teardown::{
    Above, Guard, Link, blocked_message, blocked_status, cascade_note, deletion_guard,
};

/// Features read above one being deleted at most; past it the cascade works on what it read
/// (a guard on a pathological graph, never reached by a real one).
const MAX_ABOVE: usize = 2000;
/// How soon a cascade looks again after a step: the deletion of a dependent deeper than the
/// direct ones wakes only its own dependencies, not the feature that started the cascade.
const CASCADE_RECHECK: Duration = Duration::from_secs(2);
/// How soon a blocked deletion looks again without being woken: a safety net. A dependent's
/// deletion, a dependent dropping it from `dependsOn` and a policy change wake it at once.
const BLOCK_RECHECK: Duration = Duration::from_secs(60);

/// Applies the deletion guard of the feature's policy. `None`: the guard keeps nothing, the
/// ordinary teardown goes on.
pub async fn guard_deletion(
    feature: &PremiumFeature,
    ctx: &Context,
    key: &FeatureKey,
) -> Result<Option<Action>, Error> {
    let policy = effective_policy(feature, &ctx.policies_in(&key.namespace));
    let mode = while_dependents(&policy.spec);
    if mode == WhileDependents::Proceed {
        return Ok(None);
    }
    let above = above(ctx, key, mode == WhileDependents::Cascade);
    match deletion_guard(mode, key, &above) {
        Guard::Proceed => Ok(None),
        Guard::Blocked { dependents } => hold(feature, ctx, key, &dependents).await.map(Some),
        Guard::Cascade { delete_now, later } => cascade_step(feature, ctx, key, &delete_now, later)
            .await
            .map(Some),
    }
}

/// The graph above `key` as the caches hold it: its dependents, and theirs when `transitive`
/// (following permitted links only: the others are never deleted by it).
fn above(ctx: &Context, key: &FeatureKey, transitive: bool) -> Above {
    let mut above = Above::default();
    above.deleting.insert(key.clone());
    let mut seen = BTreeSet::from([key.clone()]);
    let mut queue = VecDeque::from([key.clone()]);
    while let Some(k) = queue.pop_front() {
        let dependents = lock(&ctx.index).dependents(&k);
        let mut links = Vec::with_capacity(dependents.len());
        for d in dependents {
            let Some(f) = ctx.feature(&d) else { continue };
            if f.meta().deletion_timestamp.is_some() {
                above.deleting.insert(d.clone());
            }
            let permitted = d.namespace == k.namespace || ctx.permitted(&d, &k);
            if transitive && permitted && seen.len() < MAX_ABOVE && seen.insert(d.clone()) {
                queue.push_back(d.clone());
            }
            links.push(Link {
                dependent: d,
                permitted,
            });
        }
        above.dependents.insert(k, links);
    }
    above
}

/// `Block`: the feature stays, with its finalizer and everything it owns, and says why.
async fn hold(
    feature: &PremiumFeature,
    ctx: &Context,
    key: &FeatureKey,
    dependents: &[FeatureKey],
) -> Result<Action, Error> {
    let message = blocked_message(dependents, &key.namespace);
    let now = now_time();
    let newer = ctx.memory.newer_status(key, feature.status.as_ref());
    let previous = newer.as_ref().or(feature.status.as_ref());
    let stamp = Stamp {
        generation: feature.metadata.generation,
        now: &now,
    };
    let (status, entered) = blocked_status(previous, &message, stamp);
    if previous != Some(&status) {
        write_status(ctx, feature, &key.namespace, previous, &status, &now).await?;
    }
    if entered {
        info!("{message}");
        publish(
            ctx,
            feature,
            EventType::Warning,
            "DependentsRemain",
            &message,
        )
        .await;
    }
    Ok(Action::requeue(BLOCK_RECHECK))
}

/// `Cascade`: deletes the dependents whose turn it is, then looks again.
async fn cascade_step(
    feature: &PremiumFeature,
    ctx: &Context,
    key: &FeatureKey,
    delete_now: &[FeatureKey],
    later: usize,
) -> Result<Action, Error> {
    for dependent in delete_now {
        delete_dependent(ctx, dependent).await?;
    }
    let note = cascade_note(delete_now, later, &key.namespace);
    info!("{note}");
    publish(ctx, feature, EventType::Normal, "CascadeDelete", &note).await;
    Ok(Action::requeue(CASCADE_RECHECK))
}

/// Deletes a dependent as the cache knows it (by its uid, so that a feature recreated under
/// the same name since is left alone). One already gone or replaced is fine.
async fn delete_dependent(ctx: &Context, key: &FeatureKey) -> Result<(), Error> {
    let Some(uid) = ctx.feature(key).and_then(|f| f.uid()) else {
        return Ok(());
    };
    let api: Api<DeserializeGuard<PremiumFeature>> =
        Api::namespaced(ctx.client.clone(), &key.namespace);
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&key.name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
            warn!(dependent = %key, code = s.code, "dependent already gone or replaced");
            return Ok(());
        }
        Err(e) => return Err(Error::kube(format!("deleting the dependent {key}"), e)),
    }
    ctx.metrics.count_write("PremiumFeature");
    Ok(())
}
