//! What a feature reconcile does, decided in one place from what the shell gathered: the
//! feature, its effective policy, its dependencies as the cache shows them, its Deployment, its
//! budget share, what this instance remembers of it, and the clock.
//!
//! Two steps, because what applying the objects meets (a name conflict, a refusal, a written
//! Deployment whose cached status is now stale) goes into the status: [`decide`] runs before
//! anything is written (the plan, the desired objects, a restart), [`settle`] after (the
//! status, the Events, when to look again). Start-up slots are shared by every feature of a
//! policy and live in the shell, so [`decide`] asks for one through the port it is handed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use crate::api::conditions::{self as cond, reason};
use crate::api::{Phase, PremiumFeature, PremiumFeatureStatus, PremiumPolicySpec};
use crate::core::build::{self, FeaturePlan};
use crate::core::capacity::{self, CapacityInputs, Limits};
use crate::core::graph::FeatureKey;
use crate::core::plan::{self, DependencyView, Gate, GraphView, RecoveryDecision};
use crate::core::policy::EffectivePolicy;
use crate::core::settings::{self, PoolSettings, RecoverySettings};
use crate::core::sidecar::{SidecarSpec, TrafficPolicy, Upstream, render};
use crate::core::signal::OwnedView;
use crate::core::slots::Stage;
use crate::core::status::{self, DeploymentHealth, Observation, Stall, condition, feature_status};

#[cfg(test)]
mod tests;

/// The settings a feature runs with, each parsed and checked once.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    pub startup_timeout: Duration,
    pub traffic: TrafficPolicy,
    pub recovery: Option<RecoverySettings>,
    pub pool: PoolSettings,
}

/// A feature whose settings cannot run: why, and the settings its status is computed with
/// meanwhile (each invalid one at its default, so the status still says what it can).
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub stall: Stall,
    pub fallback: Validated,
}

/// Turns the feature's spec over its effective policy into settings, or says why it cannot
/// run: an unparsable duration, an env var that clashes with one the operator sets, or a
/// resource quantity the API server would refuse (decided before anything is applied).
pub fn validate(
    feature: &PremiumFeature,
    policy: &PremiumPolicySpec,
) -> Result<Validated, Box<Invalid>> {
    let namespace = feature.namespace().unwrap_or_default();
    let mut first: Option<String> = None;
    let mut note = |message: String| {
        first.get_or_insert(message);
    };
    let startup_timeout = settings::startup_timeout(feature, policy).unwrap_or_else(|e| {
        note(e.to_string());
        settings::DEFAULT_STARTUP_TIMEOUT
    });
    let traffic = settings::traffic_policy(policy).unwrap_or_else(|e| {
        note(e.to_string());
        TrafficPolicy::default()
    });
    let recovery = settings::recovery_settings(policy).unwrap_or_else(|e| {
        note(e.to_string());
        None
    });
    if let Err(message) = build::env_clashes(&namespace, &feature.spec) {
        note(message);
    }
    if let Err(message) = settings::check_resources(feature) {
        note(message);
    }
    let validated = Validated {
        startup_timeout,
        traffic,
        recovery,
        pool: settings::pool_settings(feature, policy),
    };
    match first {
        None => Ok(validated),
        Some(message) => Err(Box::new(Invalid {
            stall: Stall {
                reason: reason::INVALID_SPEC,
                message,
            },
            fallback: validated,
        })),
    }
}

/// A dependency as the cache shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DependencyInfo {
    pub view: DependencyView,
    /// Its Service port, for the sidecar's upstream cluster.
    pub port: Option<u16>,
}

/// The feature's share of its policies' replica budgets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BudgetShare {
    /// The smallest HPA maximum any budget grants; `None` without budgets.
    pub max_replicas: Option<u32>,
    /// Why the feature waits, when a budget cannot hold its minimum.
    pub waiting: Option<String>,
}

/// A transitional status not written yet: for which generation, and since when. For a
/// start-up step, also when the start began (the start-up clock of that generation runs from
/// there, since no status has recorded it); `None` for a waiting feature's shrinking
/// `blockedBy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldStatus {
    pub generation: Option<i64>,
    pub since: Instant,
    pub started_at: Option<Time>,
}

/// What this instance remembers of the feature that the decision reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recalled {
    /// Recovery restarts done here that the cached status may not show yet: deciding from the
    /// cache alone would restart twice.
    pub restarts: Vec<Time>,
    pub held: Option<HeldStatus>,
}

/// Everything a decision reads, gathered by the shell from its caches.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub key: &'a FeatureKey,
    pub feature: &'a PremiumFeature,
    pub policy: &'a EffectivePolicy,
    pub graph: &'a GraphView,
    /// Each distinct dependency the cache holds; one it lacks is absent.
    pub dependencies: &'a BTreeMap<FeatureKey, DependencyInfo>,
    /// The feature's own Deployment (one controlled by another object is no concern of it).
    pub deployment: Option<&'a OwnedView>,
    pub budget: &'a BudgetShare,
    /// The capacity splits this feature takes part in, by the feature whose capacity is split:
    /// each dependency that sets `spec.capacity`, and the feature itself when it sets one.
    pub capacities: &'a BTreeMap<FeatureKey, CapacityInputs>,
    /// The status as last written: the cache's, or a newer one this instance wrote.
    pub previous: Option<&'a PremiumFeatureStatus>,
    pub recalled: &'a Recalled,
    pub sidecar_image: &'a str,
    pub now: &'a Time,
}

/// The objects the feature should have. No HPA while held: it would scale the Deployment up.
#[derive(Debug, Clone, PartialEq)]
pub struct Objects {
    pub configmap: ConfigMap,
    pub service: Service,
    pub deployment: Deployment,
    pub hpa: Option<HorizontalPodAutoscaler>,
}

/// What to do before the status: decided before anything is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub settings: Validated,
    pub gate: Gate,
    /// Kept at zero replicas (suspended, gated, out of budget, invalid, or without a slot).
    pub held: bool,
    /// Why the feature cannot run, known before applying: nothing is applied then.
    pub stall: Option<Stall>,
    pub waiting_for_slot: Option<String>,
    /// The Deployment already asked for replicas.
    pub running: bool,
    pub plan: FeaturePlan,
    pub objects: Objects,
    pub recovery: RecoveryDecision,
}

impl Decision {
    /// Whether the objects are applied at all.
    pub fn applies(&self) -> bool {
        self.stall.is_none()
    }

    /// Whether this pass restarts the pods (the plan carries the new restart stamp).
    pub fn restarts(&self) -> bool {
        self.recovery.restart_now && !self.held
    }

    /// Whether this pass scales a stopped feature up (a dependency hop, once written).
    pub fn scales_up(&self) -> bool {
        !self.running && self.plan.replicas > 0
    }

    /// Restarts to remember until the cached status shows them.
    pub fn restarts_to_remember(&self) -> Option<&[Time]> {
        self.recovery
            .restart_now
            .then_some(self.recovery.recent_restarts.as_slice())
    }
}

/// Decides the plan and the desired objects. `slot` is the start-up slots' port: told where
/// the feature stands, it answers what the feature waits for when it may not start yet (a slot
/// is held only while really starting: a feature held back for any other reason gives its slot
/// back, or whoever waits for it could wait forever).
pub fn decide(inputs: &Inputs<'_>, slot: impl FnOnce(Stage) -> Option<String>) -> Decision {
    let feature = inputs.feature;
    let (settings, stall) = match validate(feature, &inputs.policy.spec) {
        Ok(v) => (v, None),
        Err(invalid) => {
            let Invalid { stall, fallback } = *invalid;
            (fallback, Some(stall))
        }
    };
    let current_replicas = inputs.deployment.and_then(|d| d.written.replicas);
    let running = current_replicas.unwrap_or(0) > 0;
    let waited = seconds_since(feature.metadata.creation_timestamp.as_ref(), inputs.now);
    let gate = plan::gate(
        inputs.key,
        &feature.spec.depends_on,
        inputs.graph,
        |k| inputs.dependencies.get(k).map(|d| d.view.clone()),
        running,
        waited,
        settings.startup_timeout,
    );
    let held_back =
        feature.spec.suspend || gate.holds() || inputs.budget.waiting.is_some() || stall.is_some();
    let ready = status::is_ready(feature.status.as_ref(), feature.metadata.generation);
    let waiting_for_slot = slot(stage(held_back, ready, running));
    let held = held_back || waiting_for_slot.is_some();
    let recovery = recovery(inputs, settings.recovery);
    let restarted_at = if recovery.restart_now && !held {
        Some(inputs.now.0.to_string())
    } else {
        inputs.deployment.and_then(|d| d.restarted_at.clone())
    };
    let plan = feature_plan(inputs, &settings, held, current_replicas, restarted_at);
    Decision {
        objects: objects(feature, &plan),
        settings,
        gate,
        held,
        stall,
        waiting_for_slot,
        running,
        plan,
        recovery,
    }
}

/// Where the feature stands as far as start-up slots go.
fn stage(held: bool, ready: bool, running: bool) -> Stage {
    if held {
        Stage::Held
    } else if ready {
        Stage::Settled
    } else if running {
        // Already started (also found so after an operator restart): never stopped for a slot.
        Stage::Starting
    } else {
        Stage::Admitted
    }
}

/// Recovery over the status and the restarts this instance remembers.
fn recovery(inputs: &Inputs<'_>, settings: Option<RecoverySettings>) -> RecoveryDecision {
    let remembered = &inputs.recalled.restarts;
    if remembered.is_empty() {
        return plan::recovery(inputs.previous, settings, inputs.now);
    }
    let mut merged = inputs.previous.cloned().unwrap_or_default();
    merged.recent_restarts.extend(remembered.iter().cloned());
    merged.recent_restarts.sort();
    merged.recent_restarts.dedup();
    plan::recovery(Some(&merged), settings, inputs.now)
}

/// The values of the feature's objects once replicas and the hold are known.
fn feature_plan(
    inputs: &Inputs<'_>,
    settings: &Validated,
    held: bool,
    current_replicas: Option<i32>,
    restarted_at: Option<String>,
) -> FeaturePlan {
    let feature = inputs.feature;
    let pool = settings.pool;
    let hpa_max = inputs
        .budget
        .max_replicas
        .unwrap_or(pool.max_replicas)
        .min(pool.max_replicas);
    let replicas = plan::desired_replicas(held, current_replicas, pool.min_replicas, hpa_max);
    // The split counts the replicas this pass asks for, or those the shell saw if more.
    let own_replicas = u32::try_from(replicas).unwrap_or(0);
    let upstreams: Vec<Upstream> = plan::dependency_keys(inputs.key, &feature.spec.depends_on)
        .into_iter()
        .map(|k| Upstream {
            port: inputs.dependencies.get(&k).and_then(|d| d.port),
            capacity: capacity_share(inputs, &k, own_replicas),
            name: k.name,
            namespace: k.namespace,
        })
        .collect();
    let sidecar = render(&SidecarSpec {
        feature: inputs.key.name.clone(),
        namespace: inputs.key.namespace.clone(),
        app_port: u16::try_from(feature.spec.port).unwrap_or(0),
        upstreams: upstreams.clone(),
        traffic: settings.traffic.clone(),
    });
    FeaturePlan {
        replicas,
        autoscale: !held,
        pool,
        hpa_max_replicas: hpa_max,
        sidecar,
        upstreams,
        sidecar_image: inputs.sidecar_image.to_string(),
        restarted_at,
    }
}

/// This feature's per-instance part of `dependency`'s capacity; empty when it sets none.
fn capacity_share(inputs: &Inputs<'_>, dependency: &FeatureKey, replicas: u32) -> Limits {
    let Some(split) = inputs.capacities.get(dependency) else {
        return Limits::default();
    };
    split
        .split_for(inputs.key, replicas)
        .into_iter()
        .find(|s| &s.key == inputs.key)
        .map(|s| s.per_instance)
        .unwrap_or_default()
}

/// The feature's objects as the plan builds them.
pub fn objects(feature: &PremiumFeature, plan: &FeaturePlan) -> Objects {
    Objects {
        configmap: build::sidecar_configmap(feature, plan),
        service: build::service(feature),
        deployment: build::deployment(feature, plan),
        hpa: build::hpa(feature, plan),
    }
}

/// What applying the objects met.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApplyOutcome {
    /// A name conflict, a refused object or a refused request: the feature cannot run.
    pub stall: Option<Stall>,
    /// The Deployment was written: its cached status predates the new spec.
    pub deployment_written: bool,
}

/// An Event to record on the feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// What to do after applying.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    pub status: PremiumFeatureStatus,
    /// The status differs from the previous one (it is written, or held back for a while).
    pub changed: bool,
    /// Recorded whatever becomes of the status: the restart happened.
    pub restart_event: Option<Note>,
    /// No longer starting: any start-up slot goes back.
    pub release_slot: bool,
    /// When to look again (before any hold of the status write).
    pub requeue: Option<Duration>,
}

/// Decides the status, the Events and the requeue from the decision and what applying met.
pub fn settle(inputs: &Inputs<'_>, decision: &Decision, applied: &ApplyOutcome) -> Settled {
    let feature = inputs.feature;
    let generation = feature.metadata.generation;
    let stall = decision.stall.clone().or_else(|| applied.stall.clone());
    let restart_event = (decision.restarts() && stall.is_none()).then(|| Note {
        warning: true,
        reason: "RecoveryRestart",
        message: "unhealthy for longer than recovery.restartAfter: restarting its pods".into(),
    });
    // The cached Deployment predates a write made just now: its status says nothing about the
    // new spec yet, so it must not make the new generation Ready (kstatus readers such as
    // `kubectl wait` would see Ready while the rollout has not begun). Its own event follows.
    let health = inputs
        .deployment
        .and_then(|d| d.health.clone())
        .map(|mut h| {
            h.observed_current &= !applied.deployment_written;
            h
        });
    let scaled = decision.plan.replicas > 0;
    // While a rolling update's status is held back, its start is remembered instead.
    let held_start = (inputs.recalled.held.as_ref())
        .filter(|h| scaled && h.generation == generation)
        .and_then(|h| h.started_at.clone());
    let started_at =
        held_start.or_else(|| plan::started_at(inputs.previous, generation, scaled, inputs.now));
    let (timed_out, deadline_in) = if health.as_ref().is_some_and(DeploymentHealth::is_ready) {
        (None, None)
    } else {
        plan::startup_deadline(
            started_at.as_ref(),
            decision.settings.startup_timeout,
            inputs.now,
        )
    };
    let gate = &decision.gate;
    let observation = Observation {
        generation,
        suspended: feature.spec.suspend,
        stall,
        cycle: gate.cycle.clone(),
        blocked_by: gate.blocked_by.clone(),
        optional_unavailable: gate.optional_unavailable.clone(),
        unhealthy_dependencies: gate.unhealthy_dependencies.clone(),
        waiting_for_slot: decision.waiting_for_slot.clone(),
        budget_waiting: inputs.budget.waiting.clone(),
        startup_timed_out: timed_out,
        deployment: health,
        startup_level: inputs.graph.level,
        policies: inputs.policy.policies.clone(),
        sidecar_config_hash: Some(decision.plan.sidecar.config_hash.clone()),
        recent_restarts: decision.recovery.recent_restarts.clone(),
        started_at,
    };
    let mut status = feature_status(inputs.previous, &observation, inputs.now);
    status.capacity = inputs.capacities.get(inputs.key).map(|c| {
        capacity::to_status(
            &capacity::split(&c.capacity, &c.callers, &c.previous),
            &inputs.key.namespace,
        )
    });
    let changed = inputs.previous != Some(&status);
    // A status that starts the recovery clock (it just turned unhealthy) must bring this
    // feature back when the clock runs out: no other event may come.
    let recovery_due = (changed && !decision.recovery.restart_now)
        .then(|| plan::recovery(Some(&status), decision.settings.recovery, inputs.now))
        .and_then(|r| r.recheck_after);
    Settled {
        release_slot: !matches!(status.phase, Some(Phase::Starting | Phase::Pending)),
        requeue: earliest([
            gate.recheck_after,
            deadline_in,
            decision.recovery.recheck_after,
            recovery_due,
        ]),
        status,
        changed,
        restart_event,
    }
}

/// Shortest wait before a reconcile looks again by itself: anything sooner is a clock that
/// has (almost) run out, and a few hundred milliseconds keep a tight loop from forming.
pub const MIN_REQUEUE: Duration = Duration::from_millis(500);

/// The earliest of some waits, no sooner than [`MIN_REQUEUE`].
pub fn earliest(waits: impl IntoIterator<Item = Option<Duration>>) -> Option<Duration> {
    waits
        .into_iter()
        .flatten()
        .min()
        .map(|d| d.max(MIN_REQUEUE))
}

/// Whether to hold back the write of a changed status, and what to remember of the hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// Write nothing now; look again after this long.
    pub wait: Option<Duration>,
    /// The hold to remember (`None`: forget any).
    pub held: Option<HeldStatus>,
}

/// Holds back a status that only says a start-up or rollout is under way, or that a waiting
/// feature waits for fewer dependencies ([`status::status_hold`]), counted from when this
/// generation's hold of that kind began.
pub fn hold(
    previous: Option<&PremiumFeatureStatus>,
    new: &PremiumFeatureStatus,
    startup_timeout: Duration,
    held: Option<&HeldStatus>,
    now: Instant,
    clock: &Time,
) -> Hold {
    let Some(hold) = status::status_hold(previous, new, startup_timeout) else {
        return Hold {
            wait: None,
            held: None,
        };
    };
    let starting = new.phase == Some(Phase::Starting);
    let entry = match held {
        Some(h)
            if h.generation == new.observed_generation && h.started_at.is_some() == starting =>
        {
            h.clone()
        }
        _ => HeldStatus {
            generation: new.observed_generation,
            since: now,
            started_at: starting.then(|| new.started_at.clone().unwrap_or_else(|| clock.clone())),
        },
    };
    let waited = now.saturating_duration_since(entry.since);
    if waited < hold {
        Hold {
            wait: Some(hold - waited),
            held: Some(entry),
        }
    } else {
        Hold {
            wait: None,
            held: None,
        }
    }
}

/// The Event of a phase change someone may act on: a Warning when the feature fails or
/// degrades, and a Normal one when it leaves that state (the trouble is over). The way to Ready
/// (waiting, starting, ready) and suspension have none: the status tells them, and a start-up
/// then costs no Event writes.
pub fn phase_event(
    previous: Option<&PremiumFeatureStatus>,
    new: &PremiumFeatureStatus,
) -> Option<Note> {
    let old_phase = previous.and_then(|p| p.phase);
    let phase = new.phase?;
    let trouble = |p: Phase| matches!(p, Phase::Failed | Phase::Degraded);
    if old_phase == Some(phase) || !(trouble(phase) || old_phase.is_some_and(trouble)) {
        return None;
    }
    let ready = condition(&new.conditions, cond::READY);
    let stalled = condition(&new.conditions, cond::STALLED).filter(|c| c.status == "True");
    Some(Note {
        warning: trouble(phase),
        reason: phase.as_str(),
        message: stalled
            .or(ready)
            .map(|c| c.message.clone())
            .unwrap_or_default(),
    })
}

/// Whether a condition turned True between two statuses.
pub fn turned_true(
    previous: Option<&PremiumFeatureStatus>,
    new: &PremiumFeatureStatus,
    type_: &str,
) -> bool {
    let before = previous
        .and_then(|p| condition(&p.conditions, type_))
        .is_some_and(|c| c.status == "True");
    let after = condition(&new.conditions, type_).is_some_and(|c| c.status == "True");
    !before && after
}

/// Whole seconds from `t` to `now` (zero without `t`, or for `t` in the future).
pub fn seconds_since(t: Option<&Time>, now: &Time) -> Duration {
    t.map(|t| Duration::from_secs((now.0.as_second() - t.0.as_second()).max(0) as u64))
        .unwrap_or_default()
}
