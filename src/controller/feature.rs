//! The PremiumFeature reconciler: gather what the caches say, let [`core::decide`] decide,
//! apply the objects, write the status. Every rule lives in the core; this file only reads,
//! writes and remembers.
//!
//! [`core::decide`]: crate::core::decide

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{field, info, instrument, warn};

use super::apply::{Applied, apply_over, apply_owned, delete_owned, observe_owned};
use super::capacity;
use super::context::{Context, lock};
use super::index::Wake;
use super::policy::{budget_for_feature, startup_limits};
use super::{Error, ErrorKind, FINALIZER};
use crate::api::conditions::{self as cond, reason};
use crate::api::{Phase, PremiumFeature, PremiumFeatureStatus};
use crate::core::build;
use crate::core::capacity::CapacityInputs;
use crate::core::decide::{
    self, ApplyOutcome, BudgetShare, Decision, DependencyInfo, Inputs, Note, Recalled, Settled,
    decide, earliest, phase_event, seconds_since, settle, turned_true,
};
use crate::core::graph::FeatureKey;
use crate::core::plan::{self, DependencyView, GraphView, dependency_key};
use crate::core::policy::{EffectivePolicy, effective_policy};
use crate::core::signal::OwnedView;
use crate::core::slots::Stage;
use crate::core::status::{self, Stall, condition, now_time};
use crate::core::teardown::{Dependent, TeardownGate, overdue_note, teardown_gate};
use crate::runtime::metrics::KindLabels;

const CONTROLLER: &str = "feature";

#[instrument(skip_all, fields(feature = field::Empty, namespace = field::Empty))]
pub async fn reconcile(
    guard: Arc<DeserializeGuard<PremiumFeature>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let Some(feature) = super::valid_or_report(&guard, &ctx, CONTROLLER) else {
        release_unreadable(&guard, &ctx).await?;
        return Ok(Action::await_change());
    };
    let span = tracing::Span::current();
    span.record("feature", feature.name_any());
    span.record("namespace", feature.namespace().unwrap_or_default());
    let key = FeatureKey::new(feature.namespace().unwrap_or_default(), feature.name_any());
    let queued = ctx.memory.take_queued(&key);
    ctx.metrics
        .set_queue_depth(CONTROLLER, ctx.memory.queue_depth());
    if let Some(queued) = queued {
        ctx.metrics
            .reconcile_queue
            .observe(queued.elapsed().as_secs_f64());
    }
    super::measured(&ctx, CONTROLLER, reconcile_feature(feature, &ctx)).await
}

/// How a pass that wrote its status ended.
struct Pass {
    action: Action,
    /// A request the API server refused, already reported in the status (Stalled): it still
    /// goes to `error_policy`, which logs it, counts it and retries, so lifting the refusal
    /// (restoring a permission, raising a quota) heals the feature without any other change.
    refused: Option<Error>,
}

impl From<Action> for Pass {
    fn from(action: Action) -> Self {
        Self {
            action,
            refused: None,
        }
    }
}

/// Runs the reconcile. A failure before the status was written is also written into the
/// status before it goes to `error_policy`, so a feature never retries silently with a status
/// that says nothing of it.
async fn reconcile_feature(feature: &PremiumFeature, ctx: &Context) -> Result<Action, Error> {
    // On the heap: the pass holds the desired objects across its awaits, more than a worker
    // thread's stack holds in a debug build.
    match Box::pin(reconcile_steps(feature, ctx)).await {
        Ok(Pass {
            action,
            refused: None,
        }) => Ok(action),
        Ok(Pass {
            refused: Some(error),
            ..
        }) => Err(error),
        Err(error) => {
            report_failure(feature, ctx, &error).await;
            Err(error)
        }
    }
}

/// Writes Reconciling=True with the error (reason ReconcileError) over the last known status,
/// unless the status already says exactly that. Best effort: the error itself goes on to
/// `error_policy` whatever happens here.
async fn report_failure(feature: &PremiumFeature, ctx: &Context, error: &Error) {
    let Some(namespace) = feature.namespace() else {
        return;
    };
    let key = FeatureKey::new(namespace.clone(), feature.name_any());
    let newer = ctx.memory.newer_status(&key, feature.status.as_ref());
    let previous = newer.as_ref().or(feature.status.as_ref());
    let now = now_time();
    let new = status::reconcile_failed(
        previous,
        feature.metadata.generation,
        &error.to_string(),
        &now,
    );
    if previous == Some(&new) {
        return;
    }
    if let Err(e) = write_status(ctx, feature, &namespace, previous, &new, &now).await {
        warn!(error = %e, "could not write the reconcile error into the status");
    }
}

/// The reconcile proper: gather → decide → apply → settle → write the status.
async fn reconcile_steps(feature: &PremiumFeature, ctx: &Context) -> Result<Pass, Error> {
    let namespace = feature
        .namespace()
        .ok_or_else(|| Error::Invalid("PremiumFeature without a namespace".into()))?;
    let uid = feature
        .uid()
        .ok_or_else(|| Error::Invalid("PremiumFeature without a uid".into()))?;
    let key = FeatureKey::new(namespace.clone(), feature.name_any());
    if feature.meta().deletion_timestamp.is_some() {
        return teardown(feature, ctx, &key, &uid).await.map(Pass::from);
    }
    if !feature.finalizers().iter().any(|f| f == FINALIZER) {
        add_finalizer(feature, ctx, &namespace).await?;
    }

    let now = now_time();
    let (gathered, observed) = gather(ctx, feature, &key, &uid).await;
    let inputs = gathered.inputs(ctx, feature, &key, &now);
    let limits = startup_limits(ctx, feature);
    let decision = Box::new(decide(&inputs, |stage| {
        update_slot(ctx, &key, stage, &limits)
    }));
    if let Some(restarts) = decision.restarts_to_remember() {
        ctx.memory.update(&key, |m| m.restarts = restarts.to_vec());
    }
    let (applied, refused) = apply(ctx, feature, &key, &decision, &uid, observed).await?;
    if applied.stall.is_none() {
        capacity::wake_on_change(ctx, feature, &key, &gathered.capacities, &decision);
    }
    let settled = settle(&inputs, &decision, &applied);
    if let Some(note) = &settled.restart_event {
        ctx.metrics.recoveries.inc();
        publish_note(ctx, feature, note).await;
    }
    if settled.release_slot {
        release_slot(ctx, &key);
    }
    let timeout = decision.settings.startup_timeout;
    let previous = inputs.previous;
    let held_for = write_or_hold(ctx, feature, &key, previous, &settled, timeout, &now).await?;
    let action = match earliest([settled.requeue, held_for]) {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    };
    Ok(Pass { action, refused })
}

/// What the decision reads, copied out of the caches (the inputs borrow from it).
struct Gathered {
    policy: EffectivePolicy,
    graph: GraphView,
    dependencies: BTreeMap<FeatureKey, DependencyInfo>,
    deployment: Option<Arc<OwnedView>>,
    budget: BudgetShare,
    capacities: BTreeMap<FeatureKey, CapacityInputs>,
    /// A status this instance wrote that the cache does not show yet.
    newer: Option<PremiumFeatureStatus>,
    recalled: Recalled,
}

impl Gathered {
    fn inputs<'a>(
        &'a self,
        ctx: &'a Context,
        feature: &'a PremiumFeature,
        key: &'a FeatureKey,
        now: &'a Time,
    ) -> Inputs<'a> {
        Inputs {
            key,
            feature,
            policy: &self.policy,
            graph: &self.graph,
            dependencies: &self.dependencies,
            deployment: self.deployment.as_deref(),
            budget: &self.budget,
            capacities: &self.capacities,
            previous: self.newer.as_ref().or(feature.status.as_ref()),
            recalled: &self.recalled,
            sidecar_image: &ctx.settings.sidecar_image,
            now,
        }
    }
}

/// Reads what the decision needs from the caches, and the Deployment as observed (for the
/// apply, which writes over it).
async fn gather(
    ctx: &Context,
    feature: &PremiumFeature,
    key: &FeatureKey,
    uid: &str,
) -> (Gathered, Result<Option<Arc<OwnedView>>, Error>) {
    let graph = ctx.graph();
    let policy = effective_policy(feature, &ctx.policies_in(&key.namespace));
    let budget = budget_for_feature(ctx, feature, &graph);
    // Read live when the cache misses it: a Deployment whose labels someone removed has left
    // the watch, and deciding from its absence would scale it to its minimum and report it
    // not ready while it still runs.
    let observed = observe_owned::<Deployment>(
        ctx,
        &ctx.stores.deployments,
        "Deployment",
        &key.namespace,
        &key.name,
    )
    .await;
    let deployment = observed
        .as_ref()
        .ok()
        .and_then(Option::clone)
        .filter(|d| d.controlled_by(uid));
    let targets = plan::dependency_keys(key, &feature.spec.depends_on);
    let dependencies = targets
        .iter()
        .filter_map(|k| Some((k.clone(), dependency_info(ctx, k)?)))
        .collect();
    let gathered = Gathered {
        graph: GraphView::of(&graph, key, &targets),
        policy,
        dependencies,
        deployment,
        budget: BudgetShare {
            max_replicas: budget.max_replicas,
            waiting: budget.waiting,
        },
        capacities: capacity::gather(ctx, feature, key, &targets),
        newer: ctx.memory.newer_status(key, feature.status.as_ref()),
        recalled: ctx.memory.recalled(key),
    };
    (gathered, observed)
}

/// What the reconciler knows about a dependency, from the cache.
fn dependency_info(ctx: &Context, key: &FeatureKey) -> Option<DependencyInfo> {
    let f = ctx.feature(key)?;
    let st = f.status.as_ref();
    let stalled = st
        .and_then(|s| condition(&s.conditions, cond::STALLED))
        .is_some_and(|c| c.status == "True");
    Some(DependencyInfo {
        view: DependencyView {
            phase: st.and_then(|s| s.phase),
            ready: status::is_serving(st),
            given_up: stalled || f.spec.suspend,
        },
        port: u16::try_from(f.spec.port).ok(),
    })
}

/// Applies the decided objects, unless the decision found the feature cannot run. A request
/// the API server refuses becomes a stall (and is handed back, to go to `error_policy` once
/// the status says it); any other failure ends the pass.
async fn apply(
    ctx: &Context,
    feature: &PremiumFeature,
    key: &FeatureKey,
    decision: &Decision,
    uid: &str,
    observed: Result<Option<Arc<OwnedView>>, Error>,
) -> Result<(ApplyOutcome, Option<Error>), Error> {
    if !decision.applies() {
        return Ok((ApplyOutcome::default(), None));
    }
    match Box::pin(apply_objects(ctx, decision, uid, observed)).await {
        Ok(outcome) => {
            if outcome.deployment_written && decision.scales_up() {
                observe_hop(ctx, key, feature);
            }
            Ok((outcome, None))
        }
        Err(e) if e.kind().is_refusal() => {
            let (reason, message) = refusal(&e, &key.namespace);
            let outcome = ApplyOutcome {
                stall: Some(Stall { reason, message }),
                deployment_written: false,
            };
            Ok((outcome, Some(e)))
        }
        Err(e) => Err(e),
    }
}

/// Writes the changed status, unless it is a start-up step held back for now (see
/// [`decide::hold`]); returns how long it is held.
async fn write_or_hold(
    ctx: &Context,
    feature: &PremiumFeature,
    key: &FeatureKey,
    previous: Option<&PremiumFeatureStatus>,
    settled: &Settled,
    startup_timeout: Duration,
    now: &Time,
) -> Result<Option<Duration>, Error> {
    if !settled.changed {
        ctx.memory.update(key, |m| m.held = None);
        return Ok(None);
    }
    let held = ctx
        .memory
        .hold(key, previous, &settled.status, startup_timeout, now);
    if held.is_none() {
        write_status(ctx, feature, &key.namespace, previous, &settled.status, now).await?;
    }
    Ok(held)
}

/// Applies the owned objects, the Deployment over its `observed` view; says what it met: a
/// name conflict or a refused object, and whether the Deployment was written (its cached
/// status then predates the new spec).
async fn apply_objects(
    ctx: &Context,
    decision: &Decision,
    uid: &str,
    observed: Result<Option<Arc<OwnedView>>, Error>,
) -> Result<ApplyOutcome, Error> {
    // The four objects are independent (a pod waits for its ConfigMap volume, an HPA for its
    // target), so they are written at once: a reconcile costs one round trip, not four.
    let objects = &decision.objects;
    let (cm, svc) = (&objects.configmap, &objects.service);
    let deploy = objects.deployment.clone();
    let mut without_replicas = deploy.clone();
    if let Some(spec) = without_replicas.spec.as_mut() {
        spec.replicas = None;
    }
    let want = decision.plan.replicas;
    let configmap = apply_owned::<ConfigMap>(
        ctx,
        &ctx.stores.configmaps,
        "ConfigMap",
        cm.clone(),
        cm,
        uid,
        |_| true,
    );
    let service = apply_owned::<Service>(
        ctx,
        &ctx.stores.services,
        "Service",
        svc.clone(),
        svc,
        uid,
        |_| true,
    );
    let deployment = async {
        apply_over::<Deployment>(
            ctx,
            observed?,
            "Deployment",
            deploy,
            &without_replicas,
            uid,
            |current| current.written.replicas == Some(want),
        )
        .await
    };
    let autoscaler = apply_autoscaler(ctx, decision, uid);
    let (configmap, service, deployment, autoscaler) =
        futures::try_join!(configmap, service, deployment, autoscaler)?;
    let deployment_written = deployment == Applied::Written;
    Ok(ApplyOutcome {
        stall: outcome_stall([configmap, service, deployment, autoscaler]),
        deployment_written,
    })
}

/// The HPA while the feature may scale; none while it is held (it would scale it up).
async fn apply_autoscaler(ctx: &Context, decision: &Decision, uid: &str) -> Result<Applied, Error> {
    let deployment = &decision.objects.deployment;
    match &decision.objects.hpa {
        Some(h) => {
            apply_owned::<HorizontalPodAutoscaler>(
                ctx,
                &ctx.stores.hpas,
                "HorizontalPodAutoscaler",
                h.clone(),
                h,
                uid,
                |_| true,
            )
            .await
        }
        None => delete_owned::<HorizontalPodAutoscaler>(
            ctx,
            &ctx.stores.hpas,
            "HorizontalPodAutoscaler",
            &deployment.namespace().unwrap_or_default(),
            &deployment.name_any(),
            uid,
            false,
        )
        .await
        .map(|_| Applied::Unchanged),
    }
}

/// The stall the objects' apply outcomes amount to: a name conflict first, then a refusal.
fn outcome_stall(outcomes: [Applied; 4]) -> Option<Stall> {
    let mut conflicts = Vec::new();
    let mut refused = Vec::new();
    for o in outcomes {
        match o {
            Applied::Conflict(m) => conflicts.push(m),
            Applied::Refused(m) => refused.push(m),
            Applied::Unchanged | Applied::Written => {}
        }
    }
    if !conflicts.is_empty() {
        Some(Stall {
            reason: reason::NAME_CONFLICT,
            message: conflicts.join("; "),
        })
    } else if !refused.is_empty() {
        Some(Stall {
            reason: reason::INVALID_SPEC,
            message: refused.join("; "),
        })
    } else {
        None
    }
}

/// Dependency hop as the operator sees it: from its write of the last required dependency's
/// Ready status to this feature's Deployment scaled up. Not observed when a dependency turned
/// Ready before this instance started (or for a feature without required dependencies).
fn observe_hop(ctx: &Context, key: &FeatureKey, feature: &PremiumFeature) {
    let last = feature
        .spec
        .depends_on
        .iter()
        .filter(|d| !d.optional)
        .map(|d| {
            let dependency = dependency_key(&key.namespace, d);
            ctx.memory.read(&dependency, |m| m.ready_since).flatten()
        })
        .collect::<Option<Vec<_>>>()
        .and_then(|times| times.into_iter().max());
    let Some(last) = last else { return };
    // Once per start: a second scale-up write for the same Ready (a reconcile that ran on a
    // Deployment cache still showing zero replicas) is not a second hop.
    if ctx.memory.update(key, |m| m.hop_from.replace(last)) != Some(last) {
        ctx.metrics
            .dependency_hop
            .observe(last.elapsed().as_secs_f64());
    }
}

pub(super) async fn write_status(
    ctx: &Context,
    feature: &PremiumFeature,
    namespace: &str,
    previous: Option<&PremiumFeatureStatus>,
    new: &PremiumFeatureStatus,
    now: &Time,
) -> Result<(), Error> {
    let api: Api<PremiumFeature> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = json!({
        "apiVersion": "premium.dev/v1alpha1",
        "kind": "PremiumFeature",
        "status": new,
    });
    let params = PatchParams::apply(&ctx.settings.field_manager).force();
    api.patch_status(&feature.name_any(), &params, &Patch::Apply(&patch))
        .await
        .map_err(|e| {
            Error::kube(
                format!("writing the status of {namespace}/{}", feature.name_any()),
                e,
            )
        })?;
    ctx.metrics
        .status_writes
        .get_or_create(&KindLabels {
            kind: "PremiumFeature",
        })
        .inc();
    status_written(ctx, feature, namespace, previous, new, now).await;
    Ok(())
}

/// What follows a status write: remember it, time what it completed, announce a new phase.
async fn status_written(
    ctx: &Context,
    feature: &PremiumFeature,
    namespace: &str,
    previous: Option<&PremiumFeatureStatus>,
    new: &PremiumFeatureStatus,
    now: &Time,
) {
    let key = FeatureKey::new(namespace, feature.name_any());
    let written_at = std::time::Instant::now();
    let ready = turned_true(previous, new, cond::READY);
    ctx.memory.update(&key, |m| {
        m.written = Some((new.clone(), written_at));
        if ready {
            m.ready_since = Some(written_at);
        }
    });
    if turned_true(previous, new, cond::DEPENDENCIES_READY) {
        ctx.metrics
            .dependency_wait
            .observe(seconds_since(feature.creation_timestamp().as_ref(), now).as_secs_f64());
    }
    if ready && let Some(start) = &new.started_at {
        ctx.metrics
            .startup_duration
            .observe(seconds_since(Some(start), now).as_secs_f64());
    }
    let old_phase = previous.and_then(|p| p.phase);
    if old_phase != new.phase
        && let Some(phase) = new.phase
    {
        info!(from = ?old_phase, to = %phase, "phase changed");
    }
    if let Some(note) = phase_event(previous, new) {
        publish_note(ctx, feature, &note).await;
    }
}

/// Records a decided Event on the feature.
async fn publish_note(ctx: &Context, feature: &PremiumFeature, note: &Note) {
    let kind = if note.warning {
        EventType::Warning
    } else {
        EventType::Normal
    };
    publish(ctx, feature, kind, note.reason, &note.message).await;
}

/// Records an Event on the feature; a failure to record is logged, never fatal.
pub async fn publish(
    ctx: &Context,
    feature: &PremiumFeature,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = build::event(
        feature.object_ref(&()),
        matches!(type_, EventType::Warning),
        reason,
        note,
        &ctx.events,
        Timestamp::now(),
    );
    let api: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(ctx.client.clone(), &feature.namespace().unwrap_or_default());
    if let Err(e) = api.create(&PostParams::default(), &event).await {
        warn!(error = %e, reason, "could not record an event");
    }
}

async fn add_finalizer(
    feature: &PremiumFeature,
    ctx: &Context,
    namespace: &str,
) -> Result<(), Error> {
    let api: Api<PremiumFeature> = Api::namespaced(ctx.client.clone(), namespace);
    let mut finalizers = feature.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    let patch = json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": feature.resource_version(),
        }
    });
    api.patch(
        &feature.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|e| {
        Error::kube(
            format!("adding the finalizer to {namespace}/{}", feature.name_any()),
            e,
        )
    })?;
    ctx.metrics.count_write("PremiumFeature");
    Ok(())
}

/// Deletion: dependents that are also being deleted go first (only those permitted to depend
/// on this feature, and only for a bounded time: see `core::teardown`); then this feature's
/// Deployment (foreground, so its pods are gone), then the finalizer.
async fn teardown(
    feature: &PremiumFeature,
    ctx: &Context,
    key: &FeatureKey,
    uid: &str,
) -> Result<Action, Error> {
    if !feature.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    // The policy's deletion guard (Block, Cascade) first; then the ordinary order.
    if let Some(action) = super::deletion::guard_deletion(feature, ctx, key).await? {
        return Ok(action);
    }
    let dependents = dependents(ctx, key).await;
    let deleting_for = seconds_since(feature.meta().deletion_timestamp.as_ref(), &now_time());
    let bound = ctx.settings.teardown_wait;
    let overdue = match teardown_gate(&dependents, deleting_for, bound) {
        TeardownGate::Proceed => None,
        TeardownGate::Wait {
            holders,
            recheck_after,
        } => {
            let waiting_for: Vec<String> = holders
                .iter()
                .map(|d| d.relative_to(&key.namespace))
                .collect();
            info!(
                ?waiting_for,
                "deletion waits for dependents to be torn down first"
            );
            // Their teardown wakes this feature; the requeue is the bound running out.
            return Ok(Action::requeue(recheck_after.max(decide::MIN_REQUEUE)));
        }
        TeardownGate::Overdue { holders } => Some(holders),
    };
    let still_there = delete_owned::<Deployment>(
        ctx,
        &ctx.stores.deployments,
        "Deployment",
        &key.namespace,
        &key.name,
        uid,
        true,
    )
    .await?;
    if still_there {
        // The Deployment's own deletion event wakes this feature again.
        return Ok(Action::requeue(Duration::from_secs(10)));
    }
    if let Some(holders) = overdue {
        // Said in the pass that removes the finalizer, so once, however many passes the
        // Deployment's deletion takes.
        let note = overdue_note(&holders, &key.namespace, bound);
        warn!("{note}");
        publish(
            ctx,
            feature,
            EventType::Warning,
            "TeardownWaitExpired",
            &note,
        )
        .await;
    }
    remove_finalizer(ctx, key, feature.finalizers(), feature.resource_version()).await?;
    // Dependencies waiting for this feature to go first may go now, also while someone else's
    // finalizer keeps this object (its deletion, which wakes them too, may never come).
    let dependencies = Wake {
        features: plan::dependency_keys(key, &feature.spec.depends_on)
            .into_iter()
            .collect(),
        ..Default::default()
    };
    ctx.wake(dependencies);
    info!("torn down");
    Ok(Action::await_change())
}

/// The features that list `key` in `dependsOn`, as its teardown gate reads them.
async fn dependents(ctx: &Context, key: &FeatureKey) -> Vec<Dependent> {
    let graph = ctx.graph();
    let cycle = graph.cycle(key);
    let dependents = lock(&ctx.index).dependents(key);
    dependents
        .into_iter()
        .filter_map(|d| {
            let f = ctx.feature(&d)?;
            Some(Dependent {
                deleting: f.meta().deletion_timestamp.is_some(),
                teardown_pending: f.finalizers().iter().any(|x| x == FINALIZER),
                permitted: d.namespace == key.namespace || ctx.permitted(&d, key),
                same_cycle: cycle.is_some_and(|path| path.contains(&d)),
                key: d,
            })
        })
        .collect()
}

/// A feature that no longer deserializes (stored before a schema change, or behind the
/// schema's back) cannot be reconciled, but once deleted it must not stay for good: its
/// finalizer is removed, and the garbage collector takes what it owned.
async fn release_unreadable(
    guard: &DeserializeGuard<PremiumFeature>,
    ctx: &Context,
) -> Result<(), Error> {
    let Err(invalid) = &guard.0 else {
        return Ok(());
    };
    let meta = &invalid.metadata;
    let ours = meta.finalizers.iter().flatten().any(|f| f == FINALIZER);
    let (Some(name), Some(namespace)) = (&meta.name, &meta.namespace) else {
        return Ok(());
    };
    if meta.deletion_timestamp.is_none() || !ours {
        return Ok(());
    }
    let key = FeatureKey::new(namespace.clone(), name.clone());
    let finalizers = meta.finalizers.clone().unwrap_or_default();
    remove_finalizer(ctx, &key, &finalizers, meta.resource_version.clone()).await?;
    info!(feature = %key, "an unreadable feature was deleted: finalizer removed, owned objects left to garbage collection");
    Ok(())
}

/// Removes the operator's finalizer (and forgets what this instance kept about the feature);
/// a feature already gone is fine. Sent as a merge patch on the finalizers alone, guarded by
/// the resourceVersion they were read at, through a reader that takes any stored form.
async fn remove_finalizer(
    ctx: &Context,
    key: &FeatureKey,
    finalizers: &[String],
    resource_version: Option<String>,
) -> Result<(), Error> {
    forget(ctx, key);
    let api: Api<DeserializeGuard<PremiumFeature>> =
        Api::namespaced(ctx.client.clone(), &key.namespace);
    let rest: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
    let patch = json!({
        "metadata": {
            "finalizers": rest,
            "resourceVersion": resource_version,
        }
    });
    match api
        .patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(format!("removing the finalizer from {key}"), e)),
    }
}

/// Forgets everything this instance kept about the feature: its start-up slot (waking whoever
/// waits for it) and its memory.
fn forget(ctx: &Context, key: &FeatureKey) {
    release_slot(ctx, key);
    ctx.memory.forget(key);
}

/// Tells the start-up slots where the feature stands; returns what it waits for when it may not
/// start yet. Features waiting for a slot this frees are woken.
fn update_slot(
    ctx: &Context,
    key: &FeatureKey,
    stage: Stage,
    limits: &[(FeatureKey, u32)],
) -> Option<String> {
    let mut slots = lock(&ctx.slots);
    let mut wake = BTreeSet::new();
    if stage == Stage::Admitted && !limits.is_empty() {
        // Holders that stopped starting before their own reconcile could say so.
        wake.extend(slots.retain(limits, |f| still_starting(ctx, f)));
    }
    let update = slots.update(key, stage, limits);
    drop(slots);
    wake.extend(update.wake.iter().cloned());
    wake.remove(key);
    if !wake.is_empty() {
        ctx.wake(Wake {
            features: wake,
            ..Default::default()
        });
    }
    if update.granted() {
        return None;
    }
    let full: Vec<String> = update
        .full
        .iter()
        .map(|(policy, max)| format!("{} (startup.maxConcurrent {max})", policy.name))
        .collect();
    Some(format!(
        "waiting for a start-up slot of policy {}",
        full.join(", ")
    ))
}

/// Whether a slot holder may still be starting, from what the cache shows of it.
fn still_starting(ctx: &Context, key: &FeatureKey) -> bool {
    ctx.feature(key).is_some_and(|f| {
        f.meta().deletion_timestamp.is_none()
            && !f.spec.suspend
            && !matches!(
                f.status.as_ref().and_then(|s| s.phase),
                Some(Phase::Ready | Phase::Degraded | Phase::Failed | Phase::Suspended)
            )
    })
}

/// Gives back any slot the feature holds and wakes the features waiting for one.
fn release_slot(ctx: &Context, key: &FeatureKey) {
    let wake = lock(&ctx.slots).release(key);
    if !wake.is_empty() {
        ctx.wake(Wake {
            features: wake,
            ..Default::default()
        });
    }
}

/// The Stalled reason and message of a request the API server refused: each says who can lift
/// it (whoever owns the operator's Role, the namespace's quota, or the admission policy).
fn refusal(e: &Error, namespace: &str) -> (&'static str, String) {
    match e.kind() {
        ErrorKind::QuotaExceeded => (
            reason::QUOTA_EXCEEDED,
            format!(
                "a ResourceQuota in namespace {namespace} has no room for this feature's objects: {e}; raise the quota or free room in it (retried with backoff)"
            ),
        ),
        ErrorKind::AdmissionDenied => (
            reason::ADMISSION_DENIED,
            format!(
                "an admission webhook or ValidatingAdmissionPolicy denied this feature's objects: {e}; change the feature or the policy (retried with backoff)"
            ),
        ),
        _ => (
            reason::FORBIDDEN,
            format!(
                "the operator's role does not allow this: {e}; grant the permission (the chart's RBAC lists what the operator needs)"
            ),
        ),
    }
}
