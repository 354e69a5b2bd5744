//! The status calculator: phase and conditions of a feature from what was observed.
//!
//! Pure: the same observation and previous status always give the same new status, and a
//! condition's `lastTransitionTime` moves only when its status changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::api::conditions::{self as cond, reason};
use crate::api::{BlockedBy, Phase, PremiumFeatureStatus};
use crate::core::bounded_message;

/// What the Deployment says about the rollout, taken from its status only.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeploymentHealth {
    /// `status.observedGeneration` has caught up with `metadata.generation`.
    pub observed_current: bool,
    /// `spec.replicas`.
    pub desired: i32,
    pub updated: i32,
    pub ready: i32,
    pub available: i32,
    /// The `Available` condition is True.
    pub available_condition: bool,
    /// The `Progressing` condition says `ProgressDeadlineExceeded`.
    pub progress_deadline_exceeded: bool,
}

impl DeploymentHealth {
    /// A Deployment of `n` replicas that has rolled out: every one updated, ready and available.
    pub fn rolled_out(n: i32) -> Self {
        Self {
            observed_current: true,
            desired: n,
            updated: n,
            ready: n,
            available: n,
            available_condition: true,
            progress_deadline_exceeded: false,
        }
    }

    /// Every desired replica is updated, ready and available, as the Deployment itself reports.
    pub fn is_ready(&self) -> bool {
        self.observed_current
            && self.desired > 0
            && self.updated == self.desired
            && self.ready == self.desired
            && self.available >= self.desired
            && self.available_condition
    }

    /// The Deployment itself says it lacks minimum availability (`Available=False`): a loss,
    /// not a rolling update, which keeps `Available=True` within `maxUnavailable`.
    pub fn lost_availability(&self) -> bool {
        // Not gated on `observed_current`: a restart's new rollout must not hide the loss.
        self.desired > 0 && !self.available_condition
    }
}

/// Why a feature cannot run at all until something changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    pub reason: &'static str,
    pub message: String,
}

/// Everything the calculator needs, gathered by the controller from its caches.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observation {
    pub generation: Option<i64>,
    pub suspended: bool,
    /// A problem in the feature itself or its objects (name conflict, invalid setting).
    pub stall: Option<Stall>,
    /// The path of the dependency cycle this feature is on.
    pub cycle: Option<String>,
    /// Required dependencies that hold it back.
    pub blocked_by: Vec<BlockedBy>,
    /// Optional dependencies it started without.
    pub optional_unavailable: Vec<String>,
    /// Dependencies that are running but unhealthy.
    pub unhealthy_dependencies: Vec<String>,
    /// Waiting for a start-up slot of a policy's `startup.maxConcurrent`.
    pub waiting_for_slot: Option<String>,
    /// Held back because a policy's budget cannot hold its minimum replicas.
    pub budget_waiting: Option<String>,
    /// The start-up timeout passed without the feature becoming Ready.
    pub startup_timed_out: Option<String>,
    /// The owned Deployment's health, if the Deployment exists.
    pub deployment: Option<DeploymentHealth>,
    pub startup_level: Option<u32>,
    pub policies: Vec<String>,
    pub sidecar_config_hash: Option<String>,
    pub recent_restarts: Vec<Time>,
    pub started_at: Option<Time>,
}

/// One condition as the verdict sets it: status, reason, message.
type Check = (bool, &'static str, String);

struct Verdict {
    phase: Phase,
    ready: Check,
    reconciling: Check,
    stalled: Check,
    degraded: Check,
}

fn no(r: &'static str, m: &str) -> Check {
    (false, r, m.to_string())
}

fn yes(r: &'static str, m: &str) -> Check {
    (true, r, m.to_string())
}

/// Still on its way (waiting or starting): Reconciling says why.
fn waiting(phase: Phase, r: &'static str, m: String) -> Verdict {
    Verdict {
        phase,
        ready: (false, r, m.clone()),
        reconciling: (true, r, m),
        stalled: no(reason::NOT_STALLED, ""),
        degraded: no(reason::HEALTHY, ""),
    }
}

/// Cannot make progress by itself: Stalled says why.
fn failed(r: &'static str, m: String) -> Verdict {
    Verdict {
        phase: Phase::Failed,
        ready: (false, r, m.clone()),
        reconciling: no(r, ""),
        stalled: (true, r, m),
        degraded: no(reason::HEALTHY, ""),
    }
}

/// The verdict in the order a person reads it: suspended, stalled, waiting for dependencies
/// or budget, then what the Deployment says.
fn verdict(o: &Observation, previous: Option<&PremiumFeatureStatus>) -> Verdict {
    if o.suspended {
        return Verdict {
            phase: Phase::Suspended,
            ready: no(reason::SUSPENDED, "the feature is suspended (spec.suspend)"),
            reconciling: no(reason::SUSPENDED, ""),
            stalled: no(reason::NOT_STALLED, ""),
            degraded: no(reason::HEALTHY, ""),
        };
    }
    if let Some(s) = &o.stall {
        return failed(s.reason, s.message.clone());
    }
    if let Some(path) = &o.cycle {
        return failed(
            reason::DEPENDENCY_CYCLE,
            format!("dependency cycle: {path}; remove one of these dependencies"),
        );
    }
    if !o.blocked_by.is_empty() {
        let first = &o.blocked_by[0];
        return waiting(
            Phase::WaitingForDependencies,
            leading_reason(&o.blocked_by),
            blocked_message(&o.blocked_by, &first.reason),
        );
    }
    if let Some(m) = &o.budget_waiting {
        return waiting(Phase::Pending, reason::BUDGET_EXCEEDED, m.clone());
    }
    let health = o.deployment.clone().unwrap_or_default();
    if health.progress_deadline_exceeded && !health.is_ready() {
        return failed(
            reason::PROGRESS_DEADLINE_EXCEEDED,
            "the Deployment exceeded its progress deadline; check its pods' events".into(),
        );
    }
    if health.is_ready() {
        return ready_verdict(o, &health);
    }
    rollout_verdict(o, &health, previous)
}

/// The Deployment has rolled out: Ready, or Degraded by its dependencies.
fn ready_verdict(o: &Observation, health: &DeploymentHealth) -> Verdict {
    let degraded = if !o.optional_unavailable.is_empty() {
        yes(
            reason::OPTIONAL_DEPENDENCY_UNAVAILABLE,
            &format!(
                "running without optional {}: {}",
                plural(o.optional_unavailable.len(), "dependency", "dependencies"),
                o.optional_unavailable.join(", ")
            ),
        )
    } else if !o.unhealthy_dependencies.is_empty() {
        yes(
            reason::DEPENDENCY_UNHEALTHY,
            &format!(
                "{} unhealthy: {}",
                plural(o.unhealthy_dependencies.len(), "dependency", "dependencies"),
                o.unhealthy_dependencies.join(", ")
            ),
        )
    } else {
        no(reason::HEALTHY, "")
    };
    Verdict {
        phase: if degraded.0 {
            Phase::Degraded
        } else {
            Phase::Ready
        },
        ready: yes(
            reason::AVAILABLE,
            &format!("{} of {} replicas ready", health.ready, health.desired),
        ),
        reconciling: no(reason::RECONCILED, ""),
        stalled: no(reason::NOT_STALLED, ""),
        degraded,
    }
}

/// The Deployment has not rolled out: lost availability, timed out, waiting for a slot,
/// rolling out.
fn rollout_verdict(
    o: &Observation,
    health: &DeploymentHealth,
    previous: Option<&PremiumFeatureStatus>,
) -> Verdict {
    let previous_phase = previous.and_then(|p| p.phase);
    // Serving before this step: Ready (or Degraded), or already in a rolling update.
    let was_serving = matches!(previous_phase, Some(Phase::Ready | Phase::Degraded))
        || previous
            .and_then(|p| condition(&p.conditions, cond::READY))
            .is_some_and(|c| c.reason == reason::ROLLING_UPDATE);
    if was_serving && health.lost_availability() {
        let m = format!(
            "{} of {} replicas ready: the feature lost availability",
            health.ready, health.desired
        );
        return Verdict {
            phase: Phase::Degraded,
            ready: (false, reason::UNAVAILABLE, m.clone()),
            reconciling: no(reason::UNAVAILABLE, ""),
            stalled: no(reason::NOT_STALLED, ""),
            degraded: (true, reason::UNAVAILABLE, m),
        };
    }
    if let Some(m) = &o.startup_timed_out {
        return failed(reason::STARTUP_TIMEOUT, m.clone());
    }
    if let Some(m) = &o.waiting_for_slot {
        return waiting(Phase::Pending, reason::WAITING_FOR_STARTUP_SLOT, m.clone());
    }
    if was_serving && health.available_condition {
        // A new pod template: the Deployment keeps the old pods until new ones are ready, so
        // dependents keep being served (see `is_serving`).
        return waiting(
            Phase::Starting,
            reason::ROLLING_UPDATE,
            "rolling out a new pod template; the previous pods keep serving until it is ready"
                .into(),
        );
    }
    // No counts of updated pods in the message: each step of a rollout would cost a write.
    let m = match &o.deployment {
        None => "creating the Deployment".to_string(),
        Some(h) => format!("rolling out: {} of {} replicas ready", h.ready, h.desired),
    };
    waiting(Phase::Starting, reason::ROLLING_OUT, m)
}

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

/// The reason that best explains a block: the one a person must act on first.
fn leading_reason(blocked: &[BlockedBy]) -> &'static str {
    for r in [
        reason::DEPENDENCY_CYCLE,
        reason::DEPENDENCY_NOT_FOUND,
        reason::DEPENDENCY_NOT_PERMITTED,
        reason::DEPENDENCY_NOT_READY,
    ] {
        if blocked.iter().any(|b| b.reason == r) {
            return r;
        }
    }
    reason::DEPENDENCY_NOT_READY
}

fn blocked_message(blocked: &[BlockedBy], _first: &str) -> String {
    let parts: Vec<String> = blocked
        .iter()
        .map(|b| {
            if b.message.is_empty() {
                format!("{} ({})", b.name, b.reason)
            } else {
                format!("{}: {}", b.name, b.message)
            }
        })
        .collect();
    format!("waiting for {}", parts.join("; "))
}

/// When and for which generation conditions are computed.
#[derive(Debug, Clone, Copy)]
pub struct Stamp<'a> {
    pub generation: Option<i64>,
    pub now: &'a Time,
}

/// Sets a condition in `conditions`, keeping `lastTransitionTime` when the status is unchanged.
/// The message is bounded ([`bounded_message`]): every condition the operator writes, of
/// features and of policies, goes through here.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    stamp: Stamp<'_>,
) {
    let (generation, now) = (stamp.generation, stamp.now);
    let status = if status { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    conditions.retain(|c| c.type_ != type_);
    conditions.push(Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: bounded_message(message),
        observed_generation: generation,
        last_transition_time,
    });
}

/// Whole seconds, as the API server stores them: avoids a status write that only moves
/// sub-second digits.
pub fn now_time() -> Time {
    let secs = Timestamp::now().as_second();
    Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// The DependenciesReady condition: status, reason and message.
fn dependencies_condition(o: &Observation) -> Check {
    if let Some(path) = &o.cycle {
        (
            false,
            reason::DEPENDENCY_CYCLE,
            format!("dependency cycle: {path}"),
        )
    } else if !o.blocked_by.is_empty() {
        let r = leading_reason(&o.blocked_by);
        (false, r, blocked_message(&o.blocked_by, r))
    } else if o.blocked_by.is_empty() && o.optional_unavailable.is_empty() {
        (true, reason::DEPENDENCIES_READY, String::new())
    } else {
        (
            true,
            reason::OPTIONAL_DEPENDENCY_UNAVAILABLE,
            format!(
                "required dependencies are Ready; optional not Ready: {}",
                o.optional_unavailable.join(", ")
            ),
        )
    }
}

/// Computes a feature's status. `previous` is the status as last written.
pub fn feature_status(
    previous: Option<&PremiumFeatureStatus>,
    o: &Observation,
    now: &Time,
) -> PremiumFeatureStatus {
    let prev_conditions = previous.map(|p| p.conditions.as_slice()).unwrap_or(&[]);
    let v = verdict(o, previous);
    let mut conditions = Vec::with_capacity(5);

    let deps = dependencies_condition(o);
    let stamp = Stamp {
        generation: o.generation,
        now,
    };
    for (type_, (status, reason, message)) in [
        (cond::READY, v.ready),
        (cond::DEPENDENCIES_READY, deps),
        (cond::RECONCILING, v.reconciling),
        (cond::STALLED, v.stalled),
        (cond::DEGRADED, v.degraded),
    ] {
        set_condition(
            &mut conditions,
            prev_conditions,
            type_,
            status,
            reason,
            &message,
            stamp,
        );
    }

    let health = o.deployment.as_ref();
    PremiumFeatureStatus {
        observed_generation: o.generation,
        phase: Some(v.phase),
        startup_level: o.startup_level.map(|l| l.min(i32::MAX as u32) as i32),
        blocked_by: o
            .blocked_by
            .iter()
            .map(|b| BlockedBy {
                name: b.name.clone(),
                reason: b.reason.clone(),
                message: bounded_message(&b.message),
            })
            .collect(),
        replicas: health.map(|h| h.desired),
        ready_replicas: health.map(|h| h.ready),
        policies: o.policies.clone(),
        sidecar_config_hash: o.sidecar_config_hash.clone(),
        started_at: o.started_at.clone(),
        recent_restarts: o.recent_restarts.clone(),
        conditions,
        // Decided with the split of the callers' replicas (`core::capacity`), by `settle`.
        capacity: None,
    }
}

/// The status after a reconcile failed with `error`: the previous status is kept (what was last
/// observed still holds) and Reconciling=True says what failed and that it is retried.
pub fn reconcile_failed(
    previous: Option<&PremiumFeatureStatus>,
    generation: Option<i64>,
    error: &str,
    now: &Time,
) -> PremiumFeatureStatus {
    let mut status = previous.cloned().unwrap_or_default();
    status.phase.get_or_insert(Phase::Pending);
    let mut updated = Vec::with_capacity(1);
    set_condition(
        &mut updated,
        &status.conditions,
        cond::RECONCILING,
        true,
        reason::RECONCILE_ERROR,
        &format!("{error}; retrying"),
        Stamp { generation, now },
    );
    // In place, so an unchanged error leaves the status equal (and unwritten).
    match status
        .conditions
        .iter_mut()
        .find(|c| c.type_ == cond::RECONCILING)
    {
        Some(c) => *c = updated.remove(0),
        None => status.conditions.append(&mut updated),
    }
    status
}

/// The condition of a type in a status, if present.
pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether a feature serves its dependents: Ready for some generation, or in a rolling update
/// whose previous pods still serve. A spec change alone does not stop a dependency from
/// serving, so it wakes and degrades none of its dependents.
pub fn is_serving(status: Option<&PremiumFeatureStatus>) -> bool {
    status
        .and_then(|s| condition(&s.conditions, cond::READY))
        .is_some_and(|c| c.status == "True" || c.reason == reason::ROLLING_UPDATE)
}

/// How long the write of `new` may be held back, if it only says that a start-up or rollout
/// is under way, after a status that did not. Such a step is usually followed within seconds
/// by its outcome, so the controller writes only the outcome (one status write per change):
/// a first start shows itself after 5 s if it lasts; a rolling update after a spec change is
/// not written before its outcome (Ready, or the start-up timeout): the previous pods keep
/// serving, and the stale `observedGeneration` already tells kstatus readers such as kubectl
/// wait, Flux and Argo CD that the change is in progress. At 1,000 features changed at once
/// the cluster's rollouts take a minute and more, and a fixed hold wrote every step twice.
///
/// A feature still waiting whose list of culprits only shrank (a dependency turned Ready, the
/// others not yet) is held back [`SHRINK_HOLD`] as well: on a wide graph the dependencies of
/// one feature turn Ready within seconds of one another, and each would cost a write that the
/// next one makes stale. The verdict (phase and the conditions' type, status and reason) is
/// the same, and no name is added, so what the written status says stays true, only longer.
pub fn status_hold(
    previous: Option<&PremiumFeatureStatus>,
    new: &PremiumFeatureStatus,
    startup_timeout: std::time::Duration,
) -> Option<std::time::Duration> {
    if previous.is_some_and(|p| only_fewer_culprits(p, new)) {
        return Some(SHRINK_HOLD);
    }
    if new.phase != Some(Phase::Starting) || previous.and_then(|p| p.phase) == Some(Phase::Starting)
    {
        return None;
    }
    match condition(&new.conditions, cond::READY).map(|c| c.reason.as_str()) {
        Some(reason::ROLLING_OUT) => Some(std::time::Duration::from_secs(5)),
        Some(reason::ROLLING_UPDATE) => Some(startup_timeout),
        _ => None,
    }
}

/// Longest a shrinking `blockedBy` waits before it is written (see [`status_hold`]).
pub const SHRINK_HOLD: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether `new` says what `previous` said (same generation, phase, and conditions by type,
/// status and reason) with culprits only taken out of `blockedBy`, some still left.
fn only_fewer_culprits(previous: &PremiumFeatureStatus, new: &PremiumFeatureStatus) -> bool {
    let verdict = |s: &PremiumFeatureStatus| {
        let mut v: Vec<(String, String, String)> = s
            .conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect();
        v.sort();
        (s.observed_generation, s.phase, v)
    };
    let culprit = |b: &BlockedBy| (b.name.clone(), b.reason.clone());
    let before: Vec<_> = previous.blocked_by.iter().map(culprit).collect();
    new.phase == Some(Phase::WaitingForDependencies)
        && !new.blocked_by.is_empty()
        && new.blocked_by.len() < previous.blocked_by.len()
        && new.blocked_by.iter().all(|b| before.contains(&culprit(b)))
        && verdict(previous) == verdict(new)
}

/// Whether a status says the feature is Ready for its current generation.
pub fn is_ready(status: Option<&PremiumFeatureStatus>, generation: Option<i64>) -> bool {
    status.is_some_and(|s| {
        s.observed_generation == generation
            && condition(&s.conditions, cond::READY).is_some_and(|c| c.status == "True")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn ready_health(n: i32) -> DeploymentHealth {
        DeploymentHealth::rolled_out(n)
    }

    fn cond_of<'a>(s: &'a PremiumFeatureStatus, ty: &str) -> &'a Condition {
        condition(&s.conditions, ty).unwrap()
    }

    /// A user's 600 KB string that reaches a stall and a dependency's message: every message of
    /// the status stays within the bound, so the status stays far below what etcd stores.
    #[test]
    fn every_message_is_bounded() {
        let huge = "q".repeat(600 * 1024);
        let limit = crate::core::MAX_MESSAGE_BYTES + '…'.len_utf8();
        for o in [
            Observation {
                stall: Some(Stall {
                    reason: reason::INVALID_SPEC,
                    message: huge.clone(),
                }),
                ..Default::default()
            },
            Observation {
                blocked_by: vec![BlockedBy {
                    name: "catalog".into(),
                    reason: reason::DEPENDENCY_NOT_READY.into(),
                    message: huge.clone(),
                }],
                ..Default::default()
            },
            Observation {
                deployment: Some(ready_health(1)),
                optional_unavailable: vec![huge.clone()],
                ..Default::default()
            },
        ] {
            let s = feature_status(None, &o, &t(100));
            for c in &s.conditions {
                assert!(
                    c.message.len() <= limit,
                    "{}: {} bytes",
                    c.type_,
                    c.message.len()
                );
            }
            for b in &s.blocked_by {
                assert!(
                    b.message.len() <= limit,
                    "blockedBy {}: {} bytes",
                    b.name,
                    b.message.len()
                );
            }
            let size = serde_json::to_vec(&s).unwrap().len();
            assert!(size < 16 * 1024, "status of {size} bytes");
        }
    }

    #[test]
    fn a_failed_reconcile_is_reported_once() {
        let ready = feature_status(
            None,
            &Observation {
                generation: Some(2),
                deployment: Some(ready_health(1)),
                ..Default::default()
            },
            &t(100),
        );
        let failed = reconcile_failed(Some(&ready), Some(2), "applying Deployment: boom", &t(200));
        assert_eq!(
            failed.phase,
            Some(Phase::Ready),
            "what was observed still holds"
        );
        let c = cond_of(&failed, cond::RECONCILING);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", reason::RECONCILE_ERROR)
        );
        assert_eq!(c.message, "applying Deployment: boom; retrying");
        assert_eq!(c.last_transition_time, t(200));
        assert_eq!(cond_of(&failed, cond::READY), cond_of(&ready, cond::READY));
        // The same error again changes nothing, so nothing is written again.
        assert_eq!(
            reconcile_failed(Some(&failed), Some(2), "applying Deployment: boom", &t(300)),
            failed
        );
        // A feature that never had a status gets one.
        let first = reconcile_failed(None, Some(1), "adding the finalizer: boom", &t(10));
        assert_eq!(first.phase, Some(Phase::Pending));
        assert_eq!(
            cond_of(&first, cond::RECONCILING).reason,
            reason::RECONCILE_ERROR
        );
    }

    #[test]
    fn ready_deployment_means_ready() {
        let o = Observation {
            generation: Some(3),
            deployment: Some(ready_health(2)),
            startup_level: Some(1),
            ..Default::default()
        };
        let s = feature_status(None, &o, &t(100));
        assert_eq!(s.phase, Some(Phase::Ready));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(cond_of(&s, cond::READY).status, "True");
        assert_eq!(cond_of(&s, cond::RECONCILING).status, "False");
        assert_eq!(cond_of(&s, cond::STALLED).status, "False");
        assert_eq!(cond_of(&s, cond::DEPENDENCIES_READY).status, "True");
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(3))
        );
        assert!(is_ready(Some(&s), Some(3)));
        assert!(
            !is_ready(Some(&s), Some(4)),
            "a newer generation is not Ready yet"
        );
    }

    #[test]
    fn blocked_feature_waits_and_names_culprits() {
        let o = Observation {
            blocked_by: vec![
                BlockedBy {
                    name: "catalog".into(),
                    reason: reason::DEPENDENCY_NOT_READY.into(),
                    message: "catalog is Starting".into(),
                },
                BlockedBy {
                    name: "soundcheck".into(),
                    reason: reason::DEPENDENCY_NOT_FOUND.into(),
                    message: "no PremiumFeature soundcheck in portal".into(),
                },
            ],
            deployment: Some(DeploymentHealth::default()),
            ..Default::default()
        };
        let s = feature_status(None, &o, &t(1));
        assert_eq!(s.phase, Some(Phase::WaitingForDependencies));
        let d = cond_of(&s, cond::DEPENDENCIES_READY);
        assert_eq!(d.status, "False");
        assert_eq!(d.reason, reason::DEPENDENCY_NOT_FOUND);
        assert!(d.message.contains("catalog") && d.message.contains("soundcheck"));
        assert_eq!(cond_of(&s, cond::RECONCILING).status, "True");
        assert_eq!(s.blocked_by.len(), 2);
    }

    #[test]
    fn cycle_is_stalled_with_path() {
        let o = Observation {
            cycle: Some("aika -> soundcheck -> aika".into()),
            ..Default::default()
        };
        let s = feature_status(None, &o, &t(1));
        assert_eq!(s.phase, Some(Phase::Failed));
        let st = cond_of(&s, cond::STALLED);
        assert_eq!(
            (st.status.as_str(), st.reason.as_str()),
            ("True", reason::DEPENDENCY_CYCLE)
        );
        assert!(st.message.contains("aika -> soundcheck -> aika"));
        assert_eq!(
            cond_of(&s, cond::DEPENDENCIES_READY).reason,
            reason::DEPENDENCY_CYCLE
        );
    }

    #[test]
    fn losing_availability_after_ready_is_degraded() {
        let prev = feature_status(
            None,
            &Observation {
                deployment: Some(ready_health(2)),
                ..Default::default()
            },
            &t(1),
        );
        let mut lost = ready_health(2);
        lost.ready = 1;
        lost.available = 1;
        lost.available_condition = false;
        let s = feature_status(
            Some(&prev),
            &Observation {
                deployment: Some(lost.clone()),
                ..Default::default()
            },
            &t(50),
        );
        assert_eq!(s.phase, Some(Phase::Degraded));
        assert_eq!(cond_of(&s, cond::DEGRADED).status, "True");
        assert_eq!(cond_of(&s, cond::READY).status, "False");
        assert_eq!(cond_of(&s, cond::READY).last_transition_time, t(50));
        // Never Ready before: the same Deployment state is still starting up.
        let fresh = feature_status(
            None,
            &Observation {
                deployment: Some(lost),
                ..Default::default()
            },
            &t(50),
        );
        assert_eq!(fresh.phase, Some(Phase::Starting));
    }

    #[test]
    fn a_rolling_update_keeps_serving_and_its_steps_are_transitional() {
        let ready = feature_status(
            None,
            &Observation {
                generation: Some(1),
                deployment: Some(ready_health(1)),
                ..Default::default()
            },
            &t(1),
        );
        assert!(is_serving(Some(&ready)));
        // Generation 2 rolls out: the old pod is still available, the new one is not ready.
        let mut rolling = ready_health(1);
        rolling.updated = 0;
        let update = feature_status(
            Some(&ready),
            &Observation {
                generation: Some(2),
                deployment: Some(rolling.clone()),
                ..Default::default()
            },
            &t(5),
        );
        assert_eq!(update.phase, Some(Phase::Starting));
        assert_eq!(cond_of(&update, cond::READY).reason, reason::ROLLING_UPDATE);
        assert!(is_serving(Some(&update)));
        assert!(!is_ready(Some(&update), Some(2)));
        assert_eq!(
            status_hold(Some(&ready), &update, std::time::Duration::from_secs(300)),
            Some(std::time::Duration::from_secs(300))
        );
        // Written once, the rolling update stays one (and stays quiet) until it ends.
        let again = feature_status(
            Some(&update),
            &Observation {
                generation: Some(2),
                deployment: Some(rolling),
                ..Default::default()
            },
            &t(9),
        );
        assert_eq!(again, update);
        assert_eq!(
            status_hold(Some(&update), &again, std::time::Duration::from_secs(60)),
            None
        );
        // A first start is not serving, though it is a transitional step too.
        let mut first = ready_health(1);
        first.ready = 0;
        first.available_condition = false;
        let starting = feature_status(
            None,
            &Observation {
                generation: Some(1),
                deployment: Some(first),
                ..Default::default()
            },
            &t(1),
        );
        assert_eq!(cond_of(&starting, cond::READY).reason, reason::ROLLING_OUT);
        assert!(!is_serving(Some(&starting)));
        assert_eq!(
            status_hold(None, &starting, std::time::Duration::from_secs(60)),
            Some(std::time::Duration::from_secs(5))
        );
        // Failures are never held back.
        let failed = feature_status(
            Some(&ready),
            &Observation {
                generation: Some(2),
                stall: Some(Stall {
                    reason: reason::INVALID_SPEC,
                    message: "bad".into(),
                }),
                ..Default::default()
            },
            &t(5),
        );
        assert_eq!(
            status_hold(Some(&ready), &failed, std::time::Duration::from_secs(60)),
            None
        );
    }

    fn blocked(names: &[(&str, &str)]) -> Vec<BlockedBy> {
        names
            .iter()
            .map(|(name, r)| BlockedBy {
                name: (*name).into(),
                reason: (*r).into(),
                message: format!("{name} is not Ready"),
            })
            .collect()
    }

    fn waiting_on(
        previous: Option<&PremiumFeatureStatus>,
        b: Vec<BlockedBy>,
    ) -> PremiumFeatureStatus {
        feature_status(
            previous,
            &Observation {
                generation: Some(1),
                blocked_by: b,
                ..Default::default()
            },
            &t(1),
        )
    }

    #[test]
    fn a_waiting_feature_holds_a_shorter_blocked_by_but_nothing_else() {
        let timeout = std::time::Duration::from_secs(60);
        let not_ready = reason::DEPENDENCY_NOT_READY;
        let three = waiting_on(
            None,
            blocked(&[("a", not_ready), ("b", not_ready), ("c", not_ready)]),
        );
        assert_eq!(three.phase, Some(Phase::WaitingForDependencies));
        // A dependency turned Ready, two still wait: held.
        let two = waiting_on(Some(&three), blocked(&[("a", not_ready), ("c", not_ready)]));
        assert_eq!(status_hold(Some(&three), &two, timeout), Some(SHRINK_HOLD));
        // No status yet: the first wait is written at once.
        assert_eq!(status_hold(None, &two, timeout), None);
        // A culprit added, or one whose reason changed, is news.
        let more = waiting_on(
            Some(&two),
            blocked(&[("a", not_ready), ("c", not_ready), ("d", not_ready)]),
        );
        assert_eq!(status_hold(Some(&two), &more, timeout), None);
        let other = waiting_on(Some(&two), blocked(&[("a", reason::DEPENDENCY_NOT_FOUND)]));
        assert_eq!(status_hold(Some(&two), &other, timeout), None);
        // The same list is no change at all; none left is a new phase.
        assert_eq!(status_hold(Some(&two), &two, timeout), None);
        let none = waiting_on(Some(&two), Vec::new());
        assert_ne!(none.phase, Some(Phase::WaitingForDependencies));
        assert!(!only_fewer_culprits(&two, &none));
        // Another verdict riding along (a new generation) is written at once.
        let mut newer = two.clone();
        newer.observed_generation = Some(2);
        assert_eq!(status_hold(Some(&three), &newer, timeout), None);
    }

    #[test]
    fn optional_dependency_missing_is_degraded_but_ready() {
        let o = Observation {
            optional_unavailable: vec!["skill-exchange".into()],
            deployment: Some(ready_health(1)),
            ..Default::default()
        };
        let s = feature_status(None, &o, &t(1));
        assert_eq!(s.phase, Some(Phase::Degraded));
        assert_eq!(cond_of(&s, cond::READY).status, "True");
        assert_eq!(
            cond_of(&s, cond::DEGRADED).reason,
            reason::OPTIONAL_DEPENDENCY_UNAVAILABLE
        );
    }

    #[test]
    fn timeouts_and_deadlines_stall() {
        let o = Observation {
            startup_timed_out: Some("not Ready within 2m".into()),
            deployment: Some(DeploymentHealth {
                desired: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = feature_status(None, &o, &t(1));
        assert_eq!(cond_of(&s, cond::STALLED).reason, reason::STARTUP_TIMEOUT);
        let o = Observation {
            deployment: Some(DeploymentHealth {
                desired: 1,
                progress_deadline_exceeded: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = feature_status(None, &o, &t(1));
        assert_eq!(
            cond_of(&s, cond::STALLED).reason,
            reason::PROGRESS_DEADLINE_EXCEEDED
        );
    }

    #[test]
    fn suspended_wins() {
        let o = Observation {
            suspended: true,
            cycle: Some("a -> a".into()),
            ..Default::default()
        };
        assert_eq!(
            feature_status(None, &o, &t(1)).phase,
            Some(Phase::Suspended)
        );
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let waiting = Observation {
            blocked_by: vec![BlockedBy {
                name: "catalog".into(),
                reason: reason::DEPENDENCY_NOT_READY.into(),
                message: String::new(),
            }],
            ..Default::default()
        };
        let s1 = feature_status(None, &waiting, &t(10));
        // Same status, new message: time stays.
        let mut waiting2 = waiting.clone();
        waiting2.blocked_by[0].message = "catalog is Starting".into();
        let s2 = feature_status(Some(&s1), &waiting2, &t(20));
        assert_eq!(cond_of(&s2, cond::READY).last_transition_time, t(10));
        // Status flips: time moves.
        let s3 = feature_status(
            Some(&s2),
            &Observation {
                deployment: Some(ready_health(1)),
                ..Default::default()
            },
            &t(30),
        );
        assert_eq!(cond_of(&s3, cond::READY).last_transition_time, t(30));
        assert_eq!(cond_of(&s3, cond::STALLED).last_transition_time, t(10));
    }

    fn arb_observation() -> impl Strategy<Value = Observation> {
        let health = (
            any::<bool>(),
            0..4i32,
            0..4i32,
            0..4i32,
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(oc, d, u, r, a, p)| DeploymentHealth {
                observed_current: oc,
                desired: d,
                updated: u,
                ready: r,
                available: r,
                available_condition: a,
                progress_deadline_exceeded: p,
            });
        (
            any::<bool>(),
            proptest::option::of("[a-z]{1,5}"),
            proptest::collection::vec("[a-z]{1,5}", 0..3),
            proptest::collection::vec("[a-z]{1,5}", 0..2),
            proptest::option::of(health),
            proptest::option::of("[a-z ]{1,10}"),
            proptest::option::of(0..5u32),
        )
            .prop_map(
                |(suspended, cycle, blocked, optional, deployment, timed_out, level)| Observation {
                    generation: Some(1),
                    suspended,
                    cycle,
                    blocked_by: blocked
                        .into_iter()
                        .map(|n| BlockedBy {
                            name: n,
                            reason: reason::DEPENDENCY_NOT_READY.into(),
                            message: String::new(),
                        })
                        .collect(),
                    optional_unavailable: optional,
                    deployment,
                    startup_timed_out: timed_out,
                    startup_level: level,
                    ..Default::default()
                },
            )
    }

    proptest! {
        #[test]
        fn idempotent(o in arb_observation(), later in 0..1000i64) {
            let first = feature_status(None, &o, &t(1000));
            // Computing again from the same inputs, at any later time, gives the same status.
            let again = feature_status(Some(&first), &o, &t(1000 + later));
            prop_assert_eq!(&first, &again);
            // Always exactly the five condition types, once each.
            let mut types: Vec<_> = first.conditions.iter().map(|c| c.type_.clone()).collect();
            types.sort();
            prop_assert_eq!(types, vec!["Degraded", "DependenciesReady", "Ready", "Reconciling", "Stalled"]);
            // Ready and Stalled are never both True.
            let ready = condition(&first.conditions, cond::READY).unwrap().status == "True";
            let stalled = condition(&first.conditions, cond::STALLED).unwrap().status == "True";
            prop_assert!(!(ready && stalled));
        }
    }
}
