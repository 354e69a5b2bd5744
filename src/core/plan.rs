//! Decisions about one feature that depend on time and on other features: gating on
//! dependencies, replicas, the start-up timeout and automatic recovery.
//!
//! The controller gathers plain views from its caches and the clock; everything here is pure.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::conditions::{self as cond, reason};
use crate::api::{BlockedBy, Dependency, Phase, PremiumFeatureStatus};
use crate::core::graph::{DependencyFacts, FeatureKey, path_string};
use crate::core::settings::RecoverySettings;
use crate::core::status::condition;

/// What a dependent needs to know about one of its dependencies.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DependencyView {
    pub phase: Option<Phase>,
    /// Serving: Ready, or rolling out a new generation while its previous pods serve
    /// (`status::is_serving`).
    pub ready: bool,
    /// It cannot make progress by itself (Stalled=True) or is suspended: no point waiting.
    pub given_up: bool,
}

/// How a feature stands towards its dependencies.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Gate {
    /// The dependency cycle the feature is on, spelled out.
    pub cycle: Option<String>,
    /// Dependencies that keep it at zero replicas (empty once started).
    pub blocked_by: Vec<BlockedBy>,
    /// Optional dependencies it runs (or will run) without.
    pub optional_unavailable: Vec<String>,
    /// Dependencies that are not Ready while the feature runs.
    pub unhealthy_dependencies: Vec<String>,
    /// When waiting on an optional dependency ends by timeout.
    pub recheck_after: Option<Duration>,
}

impl Gate {
    /// The feature must stay at zero replicas.
    pub fn holds(&self) -> bool {
        self.cycle.is_some() || !self.blocked_by.is_empty()
    }
}

/// The key a `dependsOn` entry points at.
pub fn dependency_key(own_namespace: &str, dep: &Dependency) -> FeatureKey {
    FeatureKey::new(dep.namespace_or(own_namespace), dep.name.clone())
}

/// What a feature's decision reads of the dependency analysis, copied out of it so the
/// decision does not depend on how the analysis is kept (it is a few short lists).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GraphView {
    /// The cycle the feature is on, as a path starting and ending at it.
    pub cycle: Option<Vec<FeatureKey>>,
    pub level: Option<u32>,
    /// Dependencies that name no existing feature.
    pub missing: Vec<FeatureKey>,
    /// Cross-namespace dependencies no policy grants.
    pub not_permitted: Vec<FeatureKey>,
    /// Dependencies that are themselves on a cycle.
    pub dependencies_on_cycle: Vec<FeatureKey>,
}

impl GraphView {
    /// The view of `key`, whose dependencies are `targets`.
    pub fn of<'a>(
        graph: &impl DependencyFacts,
        key: &FeatureKey,
        targets: impl IntoIterator<Item = &'a FeatureKey>,
    ) -> Self {
        Self {
            cycle: graph.cycle(key).map(<[FeatureKey]>::to_vec),
            level: graph.level(key),
            missing: graph.missing(key).to_vec(),
            not_permitted: graph.not_permitted(key).to_vec(),
            dependencies_on_cycle: targets
                .into_iter()
                .filter(|t| graph.on_cycle(t))
                .cloned()
                .collect(),
        }
    }
}

/// Why one dependency holds a feature back: reason, message, and whether it gave up.
type Problem = (&'static str, String, bool);

/// Distinct dependency keys of a feature, in `dependsOn` order.
pub fn dependency_keys(key: &FeatureKey, depends_on: &[Dependency]) -> Vec<FeatureKey> {
    let mut seen: Vec<FeatureKey> = Vec::with_capacity(depends_on.len());
    for dep in depends_on {
        let target = dependency_key(&key.namespace, dep);
        if !seen.contains(&target) {
            seen.push(target);
        }
    }
    seen
}

fn not_found(target: &FeatureKey) -> Problem {
    (
        reason::DEPENDENCY_NOT_FOUND,
        format!(
            "no PremiumFeature {} in namespace {}; create it or remove it from dependsOn",
            target.name, target.namespace
        ),
        false,
    )
}

/// What, if anything, is wrong with one dependency as the graph and its view show it.
fn dependency_problem(
    key: &FeatureKey,
    target: &FeatureKey,
    graph: &GraphView,
    view: Option<DependencyView>,
) -> Option<Problem> {
    let shown = target.relative_to(&key.namespace);
    if graph.missing.contains(target) {
        return Some(not_found(target));
    }
    if graph.not_permitted.contains(target) {
        return Some((
            reason::DEPENDENCY_NOT_PERMITTED,
            format!(
                "namespace {} does not expose {} to {}: a PremiumPolicy there that selects it must list {} in spec.exposeTo.namespaces",
                target.namespace, target.name, key.namespace, key.namespace
            ),
            false,
        ));
    }
    if graph.cycle.is_some() && graph.dependencies_on_cycle.contains(target) {
        return Some((
            reason::DEPENDENCY_CYCLE,
            format!("{shown} is on the same dependency cycle"),
            true,
        ));
    }
    match view {
        Some(v) if v.ready => None,
        // The message names no phase: it would change with every step of the
        // dependency's start-up and cost a status write of each dependent per step.
        Some(v) => Some((
            reason::DEPENDENCY_NOT_READY,
            if v.given_up {
                format!("{shown} stopped trying (Stalled or suspended); see its conditions")
            } else {
                format!("{shown} is not Ready yet")
            },
            v.given_up,
        )),
        None => Some(not_found(target)),
    }
}

/// Decides which dependencies hold a feature back.
///
/// * `started`: the feature already runs (its Deployment asks for replicas). A running feature
///   is never stopped because a dependency went away; it reports it as unhealthy instead.
/// * `waited`: how long the feature has existed; an optional dependency is waited for at most
///   `startup_timeout`, or not at all once it has given up.
pub fn gate(
    key: &FeatureKey,
    depends_on: &[Dependency],
    graph: &GraphView,
    view: impl Fn(&FeatureKey) -> Option<DependencyView>,
    started: bool,
    waited: Duration,
    startup_timeout: Duration,
) -> Gate {
    let mut gate = Gate {
        cycle: graph
            .cycle
            .as_deref()
            .map(|path| path_string(path, &key.namespace)),
        ..Default::default()
    };
    let mut seen = Vec::new();
    for dep in depends_on {
        let target = dependency_key(&key.namespace, dep);
        if seen.contains(&target) {
            continue;
        }
        seen.push(target.clone());
        let Some((why, message, given_up)) = dependency_problem(key, &target, graph, view(&target))
        else {
            continue;
        };
        let shown = target.relative_to(&key.namespace);
        if started {
            if dep.optional {
                gate.optional_unavailable.push(shown);
            } else {
                gate.unhealthy_dependencies.push(format!("{shown} ({why})"));
            }
        } else if dep.optional && (given_up || waited >= startup_timeout) {
            gate.optional_unavailable.push(shown);
        } else {
            if dep.optional {
                let left = startup_timeout.saturating_sub(waited);
                gate.recheck_after = Some(gate.recheck_after.map_or(left, |r| r.min(left)));
            }
            gate.blocked_by.push(BlockedBy {
                name: shown,
                reason: why.to_string(),
                message,
            });
        }
    }
    gate
}

/// Replicas for the Deployment: zero while held, else the current count kept inside the
/// pool's bounds (so the operator and the HPA agree and never fight over the field).
pub fn desired_replicas(held: bool, current: Option<i32>, min: u32, max: u32) -> i32 {
    if held {
        return 0;
    }
    let min = i32::try_from(min.max(1)).unwrap_or(i32::MAX);
    let max = i32::try_from(max).unwrap_or(i32::MAX).max(min);
    match current {
        Some(c) if c > 0 => c.clamp(min, max),
        _ => min,
    }
}

fn secs_between(from: &Time, to: &Time) -> Duration {
    let d = to.0.as_second() - from.0.as_second();
    Duration::from_secs(d.max(0) as u64)
}

fn plus(t: &Time, d: Duration) -> String {
    let secs = t.0.as_second().saturating_add(d.as_secs() as i64);
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .map(|ts| ts.to_string())
        .unwrap_or_default()
}

/// When the current start or rollout began: kept while it goes on, moved to `now` when the
/// feature is scaled up or its spec changes while it runs, cleared while held at zero.
pub fn started_at(
    previous: Option<&PremiumFeatureStatus>,
    generation: Option<i64>,
    running: bool,
    now: &Time,
) -> Option<Time> {
    if !running {
        return None;
    }
    match previous {
        Some(p) if p.started_at.is_some() && p.observed_generation == generation => {
            p.started_at.clone()
        }
        _ => Some(now.clone()),
    }
}

/// Whether the start-up timeout has passed without the feature becoming Ready, and if not, how
/// long until it does.
pub fn startup_deadline(
    started_at: Option<&Time>,
    timeout: Duration,
    now: &Time,
) -> (Option<String>, Option<Duration>) {
    let Some(start) = started_at else {
        return (None, None);
    };
    let elapsed = secs_between(start, now);
    if elapsed >= timeout {
        (
            Some(format!(
                "not Ready {}s after it was started at {} (startup timeout {}s); check its pods, or raise spec.startupTimeout",
                elapsed.as_secs(),
                start.0,
                timeout.as_secs()
            )),
            None,
        )
    } else {
        (None, Some(timeout - elapsed))
    }
}

/// What automatic recovery decides.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecoveryDecision {
    /// Restart the pods now.
    pub restart_now: bool,
    /// Restarts within the last hour (after this decision).
    pub recent_restarts: Vec<Time>,
    /// Look again after this long.
    pub recheck_after: Option<Duration>,
    /// Why a due restart was skipped (the hourly limit).
    pub limited: Option<String>,
}

/// Decides whether an unhealthy feature gets a rollout restart now.
///
/// Unhealthy means it served and lost availability (Degraded with Ready=False) or it is stalled
/// by a start-up timeout or progress deadline; the clock starts at the Ready condition's last
/// transition. Restarts are spaced by `restart_after` and capped per rolling hour.
pub fn recovery(
    previous: Option<&PremiumFeatureStatus>,
    settings: Option<RecoverySettings>,
    now: &Time,
) -> RecoveryDecision {
    let hour = Duration::from_secs(3600);
    let mut recent: Vec<Time> = previous
        .map(|p| p.recent_restarts.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| secs_between(t, now) < hour)
        .collect();
    recent.sort();
    let mut decision = RecoveryDecision {
        recent_restarts: recent.clone(),
        ..Default::default()
    };
    let (Some(settings), Some(prev)) = (settings, previous) else {
        return decision;
    };
    let ready = condition(&prev.conditions, cond::READY);
    let stalled = condition(&prev.conditions, cond::STALLED);
    let unhealthy = match prev.phase {
        Some(Phase::Degraded) => ready.is_some_and(|c| c.status == "False"),
        Some(Phase::Failed) => stalled.is_some_and(|c| {
            c.status == "True"
                && (c.reason == reason::STARTUP_TIMEOUT
                    || c.reason == reason::PROGRESS_DEADLINE_EXCEEDED)
        }),
        _ => false,
    };
    let Some(since) = ready.filter(|_| unhealthy).map(|c| &c.last_transition_time) else {
        return decision;
    };
    let last = recent.last().cloned();
    let clock_from = match &last {
        Some(l) if l > since => l,
        _ => since,
    };
    let waited = secs_between(clock_from, now);
    if waited < settings.restart_after {
        decision.recheck_after = Some(settings.restart_after - waited);
        return decision;
    }
    if recent.len() >= settings.max_restarts_per_hour as usize {
        if let Some(oldest) = recent.first() {
            decision.recheck_after = Some(hour.saturating_sub(secs_between(oldest, now)));
            decision.limited = Some(format!(
                "{} automatic restarts in the last hour (recovery.maxRestartsPerHour); next one possible at {}",
                recent.len(),
                plus(oldest, hour)
            ));
        }
        return decision;
    }
    decision.restart_now = true;
    decision.recent_restarts.push(now.clone());
    decision.recheck_after = Some(settings.restart_after);
    decision
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::graph::{DependencyEdge, FeatureNode, analyze};
    use crate::core::status::{Observation, feature_status};
    use k8s_openapi::jiff::Timestamp;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn key(n: &str) -> FeatureKey {
        FeatureKey::new("portal", n)
    }

    fn deps(list: &[(&str, bool)]) -> Vec<Dependency> {
        list.iter()
            .map(|(n, o)| Dependency {
                name: n.to_string(),
                namespace: None,
                optional: *o,
            })
            .collect()
    }

    /// The graph as `aika` (every test's subject) sees it.
    fn graph(nodes: &[(&str, &[(&str, bool)])]) -> GraphView {
        let nodes: Vec<FeatureNode> = nodes
            .iter()
            .map(|(n, d)| FeatureNode {
                key: key(n),
                depends_on: d
                    .iter()
                    .map(|(t, o)| DependencyEdge {
                        target: key(t),
                        optional: *o,
                    })
                    .collect(),
            })
            .collect();
        let keys: Vec<FeatureKey> = nodes.iter().map(|n| n.key.clone()).collect();
        GraphView::of(&analyze(&nodes, |_, _| false), &key("aika"), &keys)
    }

    fn view<'a>(ready: &'a [&'a str]) -> impl Fn(&FeatureKey) -> Option<DependencyView> + 'a {
        move |k: &FeatureKey| {
            Some(DependencyView {
                phase: Some(if ready.contains(&k.name.as_str()) {
                    Phase::Ready
                } else {
                    Phase::Starting
                }),
                ready: ready.contains(&k.name.as_str()),
                given_up: false,
            })
        }
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn waits_for_required_dependencies() {
        let d = deps(&[("catalog", false), ("soundcheck", false)]);
        let g = graph(&[
            ("aika", &[("catalog", false), ("soundcheck", false)]),
            ("catalog", &[]),
            ("soundcheck", &[]),
        ]);
        let gate = gate(
            &key("aika"),
            &d,
            &g,
            view(&["catalog"]),
            false,
            Duration::ZERO,
            MIN,
        );
        assert!(gate.holds());
        assert_eq!(gate.blocked_by.len(), 1);
        assert_eq!(gate.blocked_by[0].name, "soundcheck");
        assert_eq!(gate.blocked_by[0].reason, reason::DEPENDENCY_NOT_READY);
        // No phase in the message: it would change (and be written) at every step.
        assert_eq!(gate.blocked_by[0].message, "soundcheck is not Ready yet");
        let open = super::gate(
            &key("aika"),
            &d,
            &g,
            view(&["catalog", "soundcheck"]),
            false,
            Duration::ZERO,
            MIN,
        );
        assert!(!open.holds());
    }

    #[test]
    fn missing_dependency_is_named() {
        let d = deps(&[("catalog", false)]);
        let g = graph(&[("aika", &[("catalog", false)])]);
        let gate = gate(&key("aika"), &d, &g, |_| None, false, Duration::ZERO, MIN);
        assert_eq!(gate.blocked_by[0].reason, reason::DEPENDENCY_NOT_FOUND);
        assert!(
            gate.blocked_by[0]
                .message
                .contains("no PremiumFeature catalog in namespace portal")
        );
    }

    #[test]
    fn optional_dependency_waits_until_the_timeout_then_is_skipped() {
        let d = deps(&[("catalog", false), ("skill-exchange", true)]);
        let g = graph(&[
            ("aika", &[("catalog", false), ("skill-exchange", true)]),
            ("catalog", &[]),
            ("skill-exchange", &[]),
        ]);
        let early = gate(
            &key("aika"),
            &d,
            &g,
            view(&["catalog"]),
            false,
            Duration::from_secs(20),
            MIN,
        );
        assert!(early.holds());
        assert_eq!(early.recheck_after, Some(Duration::from_secs(40)));
        let late = gate(&key("aika"), &d, &g, view(&["catalog"]), false, MIN, MIN);
        assert!(!late.holds());
        assert_eq!(late.optional_unavailable, vec!["skill-exchange"]);
        // A dependency that gave up is not waited for at all.
        let gave_up = |k: &FeatureKey| {
            Some(DependencyView {
                phase: Some(if k.name == "catalog" {
                    Phase::Ready
                } else {
                    Phase::Failed
                }),
                ready: k.name == "catalog",
                given_up: k.name != "catalog",
            })
        };
        let now = gate(&key("aika"), &d, &g, gave_up, false, Duration::ZERO, MIN);
        assert!(!now.holds());
        assert_eq!(now.optional_unavailable, vec!["skill-exchange"]);
    }

    #[test]
    fn running_feature_is_never_held_back() {
        let d = deps(&[("catalog", false)]);
        let g = graph(&[("aika", &[("catalog", false)]), ("catalog", &[])]);
        let gate = gate(&key("aika"), &d, &g, view(&[]), true, Duration::ZERO, MIN);
        assert!(!gate.holds());
        assert_eq!(
            gate.unhealthy_dependencies,
            vec!["catalog (DependencyNotReady)"]
        );
    }

    #[test]
    fn cycle_members_are_spelled_out() {
        let d = deps(&[("soundcheck", false)]);
        let g = graph(&[
            ("aika", &[("soundcheck", false)]),
            ("soundcheck", &[("aika", false)]),
        ]);
        let gate = gate(&key("aika"), &d, &g, view(&[]), false, Duration::ZERO, MIN);
        assert_eq!(gate.cycle.as_deref(), Some("aika -> soundcheck -> aika"));
        assert_eq!(gate.blocked_by[0].reason, reason::DEPENDENCY_CYCLE);
    }

    #[test]
    fn replicas_stay_in_bounds_and_follow_the_autoscaler() {
        assert_eq!(desired_replicas(true, Some(3), 1, 4), 0);
        assert_eq!(desired_replicas(false, None, 2, 4), 2);
        assert_eq!(desired_replicas(false, Some(0), 2, 4), 2);
        assert_eq!(desired_replicas(false, Some(3), 2, 4), 3);
        assert_eq!(desired_replicas(false, Some(9), 2, 4), 4);
        assert_eq!(desired_replicas(false, Some(1), 2, 1), 2);
    }

    #[test]
    fn started_at_resets_on_new_generation_only() {
        let now = t(100);
        assert_eq!(started_at(None, Some(1), true, &now), Some(now.clone()));
        let prev = PremiumFeatureStatus {
            observed_generation: Some(1),
            started_at: Some(t(50)),
            ..Default::default()
        };
        assert_eq!(started_at(Some(&prev), Some(1), true, &now), Some(t(50)));
        assert_eq!(
            started_at(Some(&prev), Some(2), true, &now),
            Some(now.clone())
        );
        assert_eq!(started_at(Some(&prev), Some(1), false, &now), None);
    }

    #[test]
    fn startup_deadline_counts_from_the_start() {
        assert_eq!(startup_deadline(None, MIN, &t(1000)), (None, None));
        let (late, _) = startup_deadline(Some(&t(0)), MIN, &t(61));
        assert!(late.unwrap().contains("startup timeout 60s"));
        assert_eq!(
            startup_deadline(Some(&t(0)), MIN, &t(15)),
            (None, Some(Duration::from_secs(45)))
        );
    }

    fn degraded_since(at: i64) -> PremiumFeatureStatus {
        let ready = feature_status(
            None,
            &Observation {
                deployment: Some(crate::core::status::DeploymentHealth {
                    observed_current: true,
                    desired: 1,
                    updated: 1,
                    ready: 1,
                    available: 1,
                    available_condition: true,
                    progress_deadline_exceeded: false,
                }),
                ..Default::default()
            },
            &t(0),
        );
        feature_status(
            Some(&ready),
            &Observation {
                deployment: Some(crate::core::status::DeploymentHealth {
                    observed_current: true,
                    desired: 1,
                    updated: 1,
                    ..Default::default()
                }),
                ..Default::default()
            },
            &t(at),
        )
    }

    #[test]
    fn recovery_restarts_after_the_delay_and_respects_the_hourly_cap() {
        let settings = Some(RecoverySettings {
            restart_after: Duration::from_secs(300),
            max_restarts_per_hour: 2,
        });
        let mut prev = degraded_since(1000);
        assert_eq!(prev.phase, Some(Phase::Degraded));
        let early = recovery(Some(&prev), settings, &t(1100));
        assert!(!early.restart_now);
        assert_eq!(early.recheck_after, Some(Duration::from_secs(200)));
        let due = recovery(Some(&prev), settings, &t(1300));
        assert!(due.restart_now);
        prev.recent_restarts = due.recent_restarts.clone();
        // Spaced by restartAfter from the last restart.
        assert!(!recovery(Some(&prev), settings, &t(1400)).restart_now);
        let second = recovery(Some(&prev), settings, &t(1600));
        assert!(second.restart_now);
        prev.recent_restarts = second.recent_restarts;
        let capped = recovery(Some(&prev), settings, &t(1900));
        assert!(!capped.restart_now);
        assert!(capped.limited.unwrap().contains("maxRestartsPerHour"));
        // An hour after the first restart the cap lets one more through.
        assert!(recovery(Some(&prev), settings, &t(1300 + 3600)).restart_now);
        // No settings, no restarts.
        assert!(!recovery(Some(&prev), None, &t(99999)).restart_now);
    }

    #[test]
    fn healthy_features_are_never_restarted() {
        let settings = Some(RecoverySettings {
            restart_after: Duration::from_secs(1),
            max_restarts_per_hour: 10,
        });
        let ready = PremiumFeatureStatus {
            phase: Some(Phase::Ready),
            ..Default::default()
        };
        assert!(!recovery(Some(&ready), settings, &t(99999)).restart_now);
    }
}
