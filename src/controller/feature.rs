//! The PremiumFeature reconciler: read caches, call the core, apply, patch status.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
use super::context::{Context, HeldStatus, lock};
use super::index::Wake;
use super::policy::{budget_for_feature, startup_limits};
use super::{Error, ErrorKind, FINALIZER};
use crate::api::conditions::{self as cond, reason};
use crate::api::{Phase, PremiumFeature, PremiumFeatureStatus};
use crate::core::build::{self, FeaturePlan};
use crate::core::graph::FeatureKey;
use crate::core::plan::{self, DependencyView, dependency_key};
use crate::core::policy::effective_policy;
use crate::core::settings;
use crate::core::sidecar::{SidecarSpec, Upstream, render};
use crate::core::signal::OwnedView;
use crate::core::slots::Stage;
use crate::core::status::{
    self, DeploymentHealth, Observation, Stall, condition, feature_status, now_time,
};
use crate::core::teardown::{Dependent, TeardownGate, overdue_note, teardown_gate};
use crate::runtime::metrics::KindLabels;

const CONTROLLER: &str = "feature";

/// What the reconciler knows about a dependency, from its status in the cache.
fn dependency_view(ctx: &Context, key: &FeatureKey) -> Option<DependencyView> {
    let f = ctx.feature(key)?;
    let st = f.status.as_ref();
    let stalled = st
        .and_then(|s| condition(&s.conditions, cond::STALLED))
        .is_some_and(|c| c.status == "True");
    Some(DependencyView {
        phase: st.and_then(|s| s.phase),
        ready: status::is_serving(st),
        given_up: stalled || f.spec.suspend,
    })
}

fn seconds_since(t: Option<&Time>, now: &Time) -> Duration {
    t.map(|t| Duration::from_secs((now.0.as_second() - t.0.as_second()).max(0) as u64))
        .unwrap_or_default()
}

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
    let queued = {
        let mut queued = lock(&ctx.queued_since);
        let since = queued.remove(&key);
        ctx.metrics.set_queue_depth(CONTROLLER, queued.len());
        since
    };
    if let Some(queued) = queued {
        ctx.metrics
            .reconcile_queue
            .observe(queued.elapsed().as_secs_f64());
    }
    super::measured(&ctx, CONTROLLER, reconcile_feature(feature, &ctx)).await
}

/// Runs the reconcile; a failure is also written into the status before it goes to
/// `error_policy`, so a feature never retries silently with a status that says nothing of it.
async fn reconcile_feature(feature: &PremiumFeature, ctx: &Context) -> Result<Action, Error> {
    let reported = AtomicBool::new(false);
    let result = reconcile_steps(feature, ctx, &reported).await;
    if let Err(error) = &result
        && !reported.load(Ordering::Relaxed)
    {
        report_failure(feature, ctx, error).await;
    }
    result
}

/// Writes Reconciling=True with the error (reason ReconcileError) over the last known status,
/// unless the status already says exactly that. Best effort: the error itself goes on to
/// `error_policy` whatever happens here.
async fn report_failure(feature: &PremiumFeature, ctx: &Context, error: &Error) {
    let Some(namespace) = feature.namespace() else {
        return;
    };
    let key = FeatureKey::new(namespace.clone(), feature.name_any());
    let newer = ctx.newer_status(&key, feature.status.as_ref());
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

/// The reconcile proper. `reported` is set once the status computed for this pass is written
/// (or already current): an error returned after that point is already in the status.
async fn reconcile_steps(
    feature: &PremiumFeature,
    ctx: &Context,
    reported: &AtomicBool,
) -> Result<Action, Error> {
    let name = feature.name_any();
    let namespace = feature
        .namespace()
        .ok_or_else(|| Error::Invalid("PremiumFeature without a namespace".into()))?;
    let uid = feature
        .uid()
        .ok_or_else(|| Error::Invalid("PremiumFeature without a uid".into()))?;
    let key = FeatureKey::new(namespace.clone(), name.clone());

    if feature.meta().deletion_timestamp.is_some() {
        return teardown(feature, ctx, &key, &uid).await;
    }
    if !feature.finalizers().iter().any(|f| f == FINALIZER) {
        add_finalizer(feature, ctx, &namespace).await?;
    }

    let now = now_time();
    let graph = ctx.graph().await;
    let policies = ctx.policies_in(&namespace);
    let effective = effective_policy(feature, &policies);
    let mut stall: Option<Stall> = None;
    let invalid = |e: crate::api::duration::DurationError| {
        Some(Stall {
            reason: reason::INVALID_SPEC,
            message: e.to_string(),
        })
    };
    let startup_timeout = settings::startup_timeout(feature, &effective.spec).unwrap_or_else(|e| {
        stall = invalid(e);
        settings::DEFAULT_STARTUP_TIMEOUT
    });
    let traffic = settings::traffic_policy(&effective.spec).unwrap_or_else(|e| {
        stall = stall.clone().or(invalid(e));
        Default::default()
    });
    let recovery_settings = settings::recovery_settings(&effective.spec).unwrap_or_else(|e| {
        stall = stall.clone().or(invalid(e));
        None
    });
    // Decided before anything is applied: the API server would refuse the Deployment.
    if let Err(message) = build::env_clashes(&namespace, &feature.spec) {
        stall = stall.clone().or(Some(Stall {
            reason: reason::INVALID_SPEC,
            message,
        }));
    }
    if let Err(message) = settings::check_resources(feature) {
        stall = stall.clone().or(Some(Stall {
            reason: reason::INVALID_SPEC,
            message,
        }));
    }
    let pool = settings::pool_settings(feature, &effective.spec);
    let budget = budget_for_feature(ctx, feature, &graph);

    // Read live when the cache misses it: a Deployment whose labels someone removed has left
    // the watch, and deciding from its absence would scale it to its minimum and report it
    // not ready while it still runs.
    let observed_deployment = observe_owned::<Deployment>(
        ctx,
        &ctx.stores.deployments,
        "Deployment",
        &namespace,
        &name,
    )
    .await;
    let deployment = observed_deployment
        .as_ref()
        .ok()
        .and_then(Option::clone)
        .filter(|d| d.controlled_by(&uid));
    let current_replicas = deployment.as_ref().and_then(|d| d.written.replicas);
    let running = current_replicas.unwrap_or(0) > 0;
    let waited = seconds_since(feature.creation_timestamp().as_ref(), &now);
    let gate = plan::gate(
        &key,
        &feature.spec.depends_on,
        &graph,
        |k| dependency_view(ctx, k),
        running,
        waited,
        startup_timeout,
    );
    let mut held =
        feature.spec.suspend || gate.holds() || budget.waiting.is_some() || stall.is_some();

    // Start-up slots (startup.maxConcurrent) are held only while really starting: a feature
    // held back for any other reason (budget, dependencies, suspension) gives its slot back, or
    // the feature waiting for that slot could wait for it forever.
    let limits = startup_limits(ctx, feature);
    let ready_now = status::is_ready(feature.status.as_ref(), feature.metadata.generation);
    let stage = if held {
        Stage::Held
    } else if ready_now {
        Stage::Settled
    } else if running {
        // Already started (also found so after an operator restart): never stopped for a slot.
        Stage::Starting
    } else {
        Stage::Admitted
    };
    let waiting_for_slot = update_slot(ctx, &key, stage, &limits);
    held |= waiting_for_slot.is_some();

    let replicas = plan::desired_replicas(
        held,
        current_replicas,
        pool.min_replicas,
        budget
            .max_replicas
            .unwrap_or(pool.max_replicas)
            .min(pool.max_replicas),
    );
    let hpa_max = budget
        .max_replicas
        .unwrap_or(pool.max_replicas)
        .min(pool.max_replicas);

    let newer = ctx.newer_status(&key, feature.status.as_ref());
    let previous = newer.as_ref().or(feature.status.as_ref());
    // Restarts are remembered in memory too: the cached status may not show the last one yet,
    // and deciding from it would restart twice.
    let remembered = lock(&ctx.restarts).get(&key).cloned().unwrap_or_default();
    let recovery = if remembered.is_empty() {
        plan::recovery(previous, recovery_settings, &now)
    } else {
        let mut merged = previous.cloned().unwrap_or_default();
        merged.recent_restarts.extend(remembered);
        merged.recent_restarts.sort();
        merged.recent_restarts.dedup();
        plan::recovery(Some(&merged), recovery_settings, &now)
    };
    if recovery.restart_now {
        lock(&ctx.restarts).insert(key.clone(), recovery.recent_restarts.clone());
    }
    let existing_restart = deployment.as_ref().and_then(|d| d.restarted_at.clone());
    let restarted_at = if recovery.restart_now && !held {
        Some(now.0.to_string())
    } else {
        existing_restart
    };

    let upstreams: Vec<Upstream> = {
        let mut seen = Vec::new();
        feature
            .spec
            .depends_on
            .iter()
            .filter_map(|d| {
                let k = dependency_key(&namespace, d);
                if seen.contains(&k) {
                    return None;
                }
                seen.push(k.clone());
                let port = ctx
                    .feature(&k)
                    .and_then(|f| u16::try_from(f.spec.port).ok());
                Some(Upstream {
                    name: k.name,
                    namespace: k.namespace,
                    port,
                })
            })
            .collect()
    };
    let sidecar = render(&SidecarSpec {
        feature: name.clone(),
        namespace: namespace.clone(),
        app_port: u16::try_from(feature.spec.port).unwrap_or(0),
        upstreams: upstreams.clone(),
        traffic,
    });
    let config_hash = sidecar.config_hash.clone();
    let plan = FeaturePlan {
        replicas,
        autoscale: !held,
        pool,
        hpa_max_replicas: hpa_max,
        sidecar,
        upstreams,
        sidecar_image: ctx.settings.sidecar_image.clone(),
        restarted_at,
    };

    // A permission missing from the operator's role is reported in status (Stalled, reason
    // Forbidden) before the error goes to error_policy, which logs it, counts it and retries, so
    // restoring the permission heals the feature without any other change.
    let mut forbidden = None;
    let mut deployment_written = false;
    if stall.is_none() {
        stall = match apply_objects(ctx, feature, &plan, &uid, held, observed_deployment).await {
            Ok((conflict, written)) => {
                deployment_written = written;
                if written && !running && replicas > 0 {
                    observe_hop(ctx, &namespace, feature);
                }
                conflict
            }
            Err(e) if e.kind().is_refusal() => {
                let (reason, message) = refusal(&e, &namespace);
                forbidden = Some(e);
                Some(Stall { reason, message })
            }
            Err(e) => return Err(e),
        };
    }
    if recovery.restart_now && !held && stall.is_none() {
        ctx.metrics.recoveries.inc();
        publish(
            ctx,
            feature,
            EventType::Warning,
            "RecoveryRestart",
            "unhealthy for longer than recovery.restartAfter: restarting its pods",
        )
        .await;
    }

    // The cached Deployment predates a write made just now: its status says nothing about the
    // new spec yet, so it must not make the new generation Ready (kstatus readers such as
    // `kubectl wait` would see Ready while the rollout has not begun). Its own event follows.
    let health = deployment
        .as_ref()
        .and_then(|d| d.health.clone())
        .map(|mut h| {
            h.observed_current &= !deployment_written;
            h
        });
    // While a rolling update's status is held back, its start is remembered here instead.
    let held_start = lock(&ctx.held_status)
        .get(&key)
        .filter(|h| replicas > 0 && h.generation == feature.metadata.generation)
        .map(|h| h.started_at.clone());
    let started_at = held_start
        .or_else(|| plan::started_at(previous, feature.metadata.generation, replicas > 0, &now));
    let ready_now = health.as_ref().is_some_and(DeploymentHealth::is_ready);
    let (timed_out, deadline_in) = if ready_now {
        (None, None)
    } else {
        plan::startup_deadline(started_at.as_ref(), startup_timeout, &now)
    };
    let budget_waiting = budget.waiting.clone();
    let observation = Observation {
        generation: feature.metadata.generation,
        suspended: feature.spec.suspend,
        stall,
        cycle: gate.cycle.clone(),
        blocked_by: gate.blocked_by.clone(),
        optional_unavailable: gate.optional_unavailable.clone(),
        unhealthy_dependencies: gate.unhealthy_dependencies.clone(),
        waiting_for_slot,
        budget_waiting,
        startup_timed_out: timed_out,
        deployment: health,
        startup_level: graph.level(&key),
        policies: effective.policies.clone(),
        sidecar_config_hash: Some(config_hash),
        recent_restarts: recovery.recent_restarts.clone(),
        started_at,
    };
    let new_status = feature_status(previous, &observation, &now);
    if new_status.phase != Some(Phase::Starting) && new_status.phase != Some(Phase::Pending) {
        release_slot(ctx, &key);
    }
    // A status that starts the recovery clock (it just turned unhealthy) must bring this
    // feature back when the clock runs out: no other event may come.
    let recovery_due = if previous != Some(&new_status) && !recovery.restart_now {
        plan::recovery(Some(&new_status), recovery_settings, &now).recheck_after
    } else {
        None
    };
    let held_for = if previous != Some(&new_status) {
        let held = hold_transitional(ctx, &key, previous, &new_status, startup_timeout);
        if held.is_none() {
            write_status(ctx, feature, &namespace, previous, &new_status, &now).await?;
        }
        held
    } else {
        lock(&ctx.held_status).remove(&key);
        None
    };

    reported.store(true, Ordering::Relaxed);
    if let Some(e) = forbidden {
        return Err(e);
    }

    let next = [
        gate.recheck_after,
        deadline_in,
        recovery.recheck_after,
        recovery_due,
        held_for,
    ]
    .into_iter()
    .flatten()
    .min();
    Ok(match next {
        Some(d) => Action::requeue(d.max(Duration::from_millis(500))),
        None => Action::await_change(),
    })
}

/// Whether to hold back the write of `new` for now, and for how long at most.
fn hold_transitional(
    ctx: &Context,
    key: &FeatureKey,
    previous: Option<&PremiumFeatureStatus>,
    new: &PremiumFeatureStatus,
    startup_timeout: Duration,
) -> Option<Duration> {
    let mut held = lock(&ctx.held_status);
    let Some(hold) = status::status_hold(previous, new, startup_timeout) else {
        held.remove(key);
        return None;
    };
    let now = std::time::Instant::now();
    let fresh = || HeldStatus {
        generation: new.observed_generation,
        since: now,
        started_at: new.started_at.clone().unwrap_or_else(now_time),
    };
    let entry = held.entry(key.clone()).or_insert_with(fresh);
    if entry.generation != new.observed_generation {
        *entry = fresh();
    }
    let waited = now.duration_since(entry.since);
    if waited < hold {
        Some(hold - waited)
    } else {
        held.remove(key);
        None
    }
}

/// Applies the owned objects, the Deployment over its `observed` view; returns a name
/// conflict, if any, and whether the Deployment was written (its cached status then predates
/// the new spec).
async fn apply_objects(
    ctx: &Context,
    feature: &PremiumFeature,
    plan: &FeaturePlan,
    uid: &str,
    held: bool,
    observed: Result<Option<Arc<OwnedView>>, Error>,
) -> Result<(Option<Stall>, bool), Error> {
    // The four objects are independent (a pod waits for its ConfigMap volume, an HPA for its
    // target), so they are written at once: a reconcile costs one round trip, not four.
    let cm = build::sidecar_configmap(feature, plan);
    let svc = build::service(feature);
    let deploy = build::deployment(feature, plan);
    let mut without_replicas = deploy.clone();
    if let Some(spec) = without_replicas.spec.as_mut() {
        spec.replicas = None;
    }
    let want = plan.replicas;
    let configmap = apply_owned::<ConfigMap>(
        ctx,
        &ctx.stores.configmaps,
        "ConfigMap",
        cm.clone(),
        &cm,
        uid,
        |_| true,
    );
    let service = apply_owned::<Service>(
        ctx,
        &ctx.stores.services,
        "Service",
        svc.clone(),
        &svc,
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
    let autoscaler = async {
        match build::hpa(feature, plan) {
            Some(h) if !held => {
                apply_owned::<HorizontalPodAutoscaler>(
                    ctx,
                    &ctx.stores.hpas,
                    "HorizontalPodAutoscaler",
                    h.clone(),
                    &h,
                    uid,
                    |_| true,
                )
                .await
            }
            _ => {
                let ns = feature.namespace().unwrap_or_default();
                delete_owned::<HorizontalPodAutoscaler>(
                    ctx,
                    &ctx.stores.hpas,
                    "HorizontalPodAutoscaler",
                    &ns,
                    &feature.name_any(),
                    uid,
                    false,
                )
                .await
                .map(|_| Applied::Unchanged)
            }
        }
    };
    let (configmap, service, deployment, autoscaler) =
        futures::try_join!(configmap, service, deployment, autoscaler)?;
    let deployment_written = deployment == Applied::Written;
    let outcomes = [configmap, service, deployment, autoscaler];
    let mut conflicts = Vec::new();
    let mut refused = Vec::new();
    for o in outcomes {
        match o {
            Applied::Conflict(m) => conflicts.push(m),
            Applied::Refused(m) => refused.push(m),
            Applied::Unchanged | Applied::Written => {}
        }
    }
    let stall = if !conflicts.is_empty() {
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
    };
    Ok((stall, deployment_written))
}

/// Dependency hop as the operator sees it: from its write of the last required dependency's
/// Ready status to this feature's Deployment scaled up. Not observed when a dependency turned
/// Ready before this instance started (or for a feature without required dependencies).
fn observe_hop(ctx: &Context, namespace: &str, feature: &PremiumFeature) {
    let ready = lock(&ctx.ready_since);
    let last = feature
        .spec
        .depends_on
        .iter()
        .filter(|d| !d.optional)
        .map(|d| ready.get(&dependency_key(namespace, d)).copied())
        .collect::<Option<Vec<_>>>()
        .and_then(|times| times.into_iter().max());
    let Some(last) = last else { return };
    drop(ready);
    // Once per start: a second scale-up write for the same Ready (a reconcile that ran on a
    // Deployment cache still showing zero replicas) is not a second hop.
    let key = FeatureKey::new(namespace, feature.name_any());
    if lock(&ctx.hops_seen).insert(key, last) != Some(last) {
        ctx.metrics
            .dependency_hop
            .observe(last.elapsed().as_secs_f64());
    }
}

async fn write_status(
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
    lock(&ctx.written_status).insert(
        FeatureKey::new(namespace, feature.name_any()),
        (new.clone(), std::time::Instant::now()),
    );

    let flipped_true = |ty: &str| {
        let before = previous
            .and_then(|p| condition(&p.conditions, ty))
            .is_some_and(|c| c.status == "True");
        let after = condition(&new.conditions, ty).is_some_and(|c| c.status == "True");
        !before && after
    };
    if flipped_true(cond::DEPENDENCIES_READY) {
        ctx.metrics
            .dependency_wait
            .observe(seconds_since(feature.creation_timestamp().as_ref(), now).as_secs_f64());
    }
    if flipped_true(cond::READY) {
        lock(&ctx.ready_since).insert(
            FeatureKey::new(namespace, feature.name_any()),
            std::time::Instant::now(),
        );
    }
    if flipped_true(cond::READY)
        && let Some(start) = &new.started_at
    {
        ctx.metrics
            .startup_duration
            .observe(seconds_since(Some(start), now).as_secs_f64());
    }
    let old_phase = previous.and_then(|p| p.phase);
    if old_phase != new.phase
        && let Some(phase) = new.phase
    {
        let ready = condition(&new.conditions, cond::READY);
        let stalled = condition(&new.conditions, cond::STALLED).filter(|c| c.status == "True");
        let note = stalled
            .or(ready)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        let kind = match phase {
            Phase::Failed | Phase::Degraded => EventType::Warning,
            _ => EventType::Normal,
        };
        info!(from = ?old_phase, to = %phase, "phase changed");
        // A new feature that waits is no event (its status says why); every later change is.
        let first_wait =
            old_phase.is_none() && matches!(phase, Phase::WaitingForDependencies | Phase::Pending);
        if !first_wait {
            publish(ctx, feature, kind, phase.as_str(), &note).await;
        }
    }
    Ok(())
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
    ctx.metrics
        .object_writes
        .get_or_create(&KindLabels {
            kind: "PremiumFeature",
        })
        .inc();
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
    let graph = ctx.graph().await;
    let cycle = graph.cycle(key);
    let dependents: Vec<Dependent> = lock(&ctx.index)
        .dependents(key)
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
        .collect();
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
            return Ok(Action::requeue(
                recheck_after.max(Duration::from_millis(500)),
            ));
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
        features: feature
            .spec
            .depends_on
            .iter()
            .map(|d| dependency_key(&key.namespace, d))
            .collect(),
        ..Default::default()
    };
    ctx.wake(dependencies);
    info!("torn down");
    Ok(Action::await_change())
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
    release_slot(ctx, key);
    lock(&ctx.held_status).remove(key);
    lock(&ctx.written_status).remove(key);
    lock(&ctx.ready_since).remove(key);
    lock(&ctx.queued_since).remove(key);
    lock(&ctx.hops_seen).remove(key);
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
