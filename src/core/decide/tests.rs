//! Every behaviour of a feature reconcile as a row: the situation, and what must happen.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;

use super::*;
use crate::api::conditions::{self as cond, reason};
use crate::api::{FeaturePool, Phase, PremiumPolicy, PremiumPolicySpec, Recovery, Startup};
use crate::core::build::testing;
use crate::core::graph::FeatureKey;
use crate::core::plan::{DependencyView, GraphView};
use crate::core::policy::{EffectivePolicy, effective_policy};
use crate::core::signal::{OwnedView, Written};
use crate::core::slots::Stage;
use crate::core::status::{DeploymentHealth, Stall, condition, feature_status};
use crate::core::teardown::{Dependent, TeardownGate, teardown_gate};

fn t(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).unwrap())
}

fn key(name: &str) -> FeatureKey {
    FeatureKey::new("portal", name)
}

const TIMEOUT: Duration = Duration::from_secs(300);

/// Everything a decision reads, owned; every row starts from [`World::new`] and changes it.
#[derive(Debug, Clone)]
struct World {
    feature: PremiumFeature,
    policy: EffectivePolicy,
    graph: GraphView,
    dependencies: BTreeMap<FeatureKey, DependencyInfo>,
    deployment: Option<OwnedView>,
    budget: BudgetShare,
    capacities: BTreeMap<FeatureKey, CapacityInputs>,
    previous: Option<PremiumFeatureStatus>,
    recalled: Recalled,
    now: Time,
    /// What the slot port answers a feature asking to start.
    slot_full: bool,
    applied: ApplyOutcome,
}

/// What a row's decision came to.
struct Outcome {
    decision: Decision,
    settled: Settled,
    /// The stage the slots were told.
    stage: Stage,
}

impl Outcome {
    fn ready_reason(&self) -> &str {
        &condition(&self.settled.status.conditions, cond::READY)
            .expect("a Ready condition")
            .reason
    }
}

/// A situation's Deployment: `replicas` asked, `ready` of them ready.
fn deployment(replicas: i32, ready: i32) -> OwnedView {
    let mut health = DeploymentHealth::rolled_out(replicas);
    health.ready = ready;
    health.available = ready;
    health.updated = replicas;
    health.available_condition = ready >= replicas;
    OwnedView {
        owner: Some("aika".into()),
        written: Written {
            replicas: Some(replicas),
            controller_uid: Some("1234".into()),
            ..Default::default()
        },
        health: Some(health),
        restarted_at: None,
    }
}

fn ready_dependency() -> DependencyInfo {
    DependencyInfo {
        view: DependencyView {
            phase: Some(Phase::Ready),
            ready: true,
            given_up: false,
        },
        port: Some(9898),
    }
}

fn starting_dependency() -> DependencyInfo {
    DependencyInfo {
        view: DependencyView {
            phase: Some(Phase::Starting),
            ready: false,
            given_up: false,
        },
        port: Some(9898),
    }
}

impl World {
    /// `aika` (needs `catalog`, may use `skill-exchange`), created at 0 s, both dependencies
    /// Ready, a pool of 1 to 3 replicas, no Deployment yet; the clock at 10 s.
    fn new() -> Self {
        let mut feature = testing::feature();
        feature.metadata.generation = Some(1);
        feature.metadata.creation_timestamp = Some(t(0));
        feature.spec.pool = Some(FeaturePool {
            min_replicas: Some(1),
            max_replicas: Some(3),
            ..Default::default()
        });
        Self {
            feature,
            policy: EffectivePolicy::default(),
            graph: GraphView {
                level: Some(1),
                ..Default::default()
            },
            dependencies: BTreeMap::from([
                (key("catalog"), ready_dependency()),
                (key("skill-exchange"), ready_dependency()),
            ]),
            deployment: None,
            budget: BudgetShare::default(),
            capacities: BTreeMap::new(),
            previous: None,
            recalled: Recalled::default(),
            now: t(10),
            slot_full: false,
            applied: ApplyOutcome::default(),
        }
    }

    fn policy(mut self, spec: PremiumPolicySpec) -> Self {
        self.policy = EffectivePolicy {
            spec,
            policies: vec!["defaults".into()],
            conflicts: Vec::new(),
        };
        self
    }

    /// Running at `replicas`, `ready` of them ready, its status written as that outcome.
    fn running(mut self, replicas: i32, ready: i32) -> Self {
        self.deployment = Some(deployment(replicas, ready));
        self
    }

    fn run(&self) -> Outcome {
        let key = key("aika");
        let inputs = Inputs {
            key: &key,
            feature: &self.feature,
            policy: &self.policy,
            graph: &self.graph,
            dependencies: &self.dependencies,
            deployment: self.deployment.as_ref(),
            budget: &self.budget,
            capacities: &self.capacities,
            previous: self.previous.as_ref(),
            recalled: &self.recalled,
            sidecar_image: "envoy",
            now: &self.now,
        };
        let asked = Cell::new(None);
        let decision = decide(&inputs, |stage| {
            asked.set(Some(stage));
            (self.slot_full && stage == Stage::Admitted).then(|| "no slot".to_string())
        });
        let settled = settle(&inputs, &decision, &self.applied);
        Outcome {
            decision,
            settled,
            stage: asked.get().expect("the slots are always told"),
        }
    }

    /// The world one step later: the status of this step is the previous one.
    fn after(mut self, secs: i64) -> Self {
        let outcome = self.run();
        self.previous = Some(outcome.settled.status);
        self.now = t(self.now.0.as_second() + secs);
        self
    }
}

/// What must happen in a row.
struct Expect {
    replicas: i32,
    hpa: bool,
    phase: Phase,
    ready_reason: &'static str,
    stage: Stage,
    requeue: Option<u64>,
}

fn degraded_since(at: i64) -> PremiumFeatureStatus {
    let ready = feature_status(
        None,
        &Observation {
            generation: Some(1),
            deployment: Some(DeploymentHealth::rolled_out(1)),
            ..Default::default()
        },
        &t(0),
    );
    let mut lost = DeploymentHealth::rolled_out(1);
    lost.ready = 0;
    lost.available = 0;
    lost.available_condition = false;
    feature_status(
        Some(&ready),
        &Observation {
            generation: Some(1),
            deployment: Some(lost),
            ..Default::default()
        },
        &t(at),
    )
}

fn recovery(restart_after: &str, per_hour: i32) -> PremiumPolicySpec {
    PremiumPolicySpec {
        recovery: Some(Recovery {
            restart_after: restart_after.into(),
            max_restarts_per_hour: Some(per_hour),
        }),
        ..Default::default()
    }
}

/// The rows: a name, the situation, what must happen.
fn rows() -> Vec<(&'static str, World, Expect)> {
    let w = World::new;
    let mut rows = vec![
        (
            "dependencies Ready: it starts, with an HPA, its start-up clock running",
            w(),
            Expect {
                replicas: 1,
                hpa: true,
                phase: Phase::Starting,
                ready_reason: reason::ROLLING_OUT,
                stage: Stage::Admitted,
                requeue: Some(300),
            },
        ),
        (
            "gating: a required dependency not Ready keeps it at zero, without an HPA",
            {
                let mut w = w();
                w.dependencies.insert(key("catalog"), starting_dependency());
                w
            },
            Expect {
                replicas: 0,
                hpa: false,
                phase: Phase::WaitingForDependencies,
                ready_reason: reason::DEPENDENCY_NOT_READY,
                stage: Stage::Held,
                requeue: None,
            },
        ),
        (
            "gating: a missing dependency is named",
            {
                let mut w = w();
                w.dependencies.remove(&key("catalog"));
                w.graph.missing = vec![key("catalog")];
                w
            },
            Expect {
                replicas: 0,
                hpa: false,
                phase: Phase::WaitingForDependencies,
                ready_reason: reason::DEPENDENCY_NOT_FOUND,
                stage: Stage::Held,
                requeue: None,
            },
        ),
        (
            "gating: a cycle stalls it",
            {
                let mut w = w();
                w.graph.cycle = Some(vec![key("aika"), key("catalog"), key("aika")]);
                w.graph.dependencies_on_cycle = vec![key("catalog")];
                w.graph.level = None;
                w
            },
            Expect {
                replicas: 0,
                hpa: false,
                phase: Phase::Failed,
                ready_reason: reason::DEPENDENCY_CYCLE,
                stage: Stage::Held,
                requeue: None,
            },
        ),
        (
            "optional dependency: waited for until the start-up timeout, then looked at again",
            {
                let mut w = w();
                w.dependencies
                    .insert(key("skill-exchange"), starting_dependency());
                w
            },
            Expect {
                replicas: 0,
                hpa: false,
                phase: Phase::WaitingForDependencies,
                ready_reason: reason::DEPENDENCY_NOT_READY,
                stage: Stage::Held,
                requeue: Some(290),
            },
        ),
        (
            "optional dependency: after the start-up timeout it starts without it",
            {
                let mut w = w();
                w.dependencies
                    .insert(key("skill-exchange"), starting_dependency());
                w.now = t(300);
                w
            },
            Expect {
                replicas: 1,
                hpa: true,
                phase: Phase::Starting,
                ready_reason: reason::ROLLING_OUT,
                stage: Stage::Admitted,
                requeue: Some(300),
            },
        ),
        (
            "optional dependency: one that gave up (Stalled) is not waited for",
            {
                let mut w = w();
                let mut stalled = starting_dependency();
                stalled.view.phase = Some(Phase::Failed);
                stalled.view.given_up = true;
                w.dependencies.insert(key("skill-exchange"), stalled);
                w
            },
            Expect {
                replicas: 1,
                hpa: true,
                phase: Phase::Starting,
                ready_reason: reason::ROLLING_OUT,
                stage: Stage::Admitted,
                requeue: Some(300),
            },
        ),
        (
            "optional dependency unavailable while it runs: Degraded, still serving",
            {
                let mut w = w().running(2, 2);
                w.dependencies
                    .insert(key("skill-exchange"), starting_dependency());
                w
            },
            Expect {
                replicas: 2,
                hpa: true,
                phase: Phase::Degraded,
                ready_reason: reason::AVAILABLE,
                stage: Stage::Starting,
                requeue: None,
            },
        ),
        (
            "health: a required dependency lost while running never stops it",
            {
                let mut w = w().running(2, 2);
                w.dependencies.insert(key("catalog"), starting_dependency());
                w
            },
            Expect {
                replicas: 2,
                hpa: true,
                phase: Phase::Degraded,
                ready_reason: reason::AVAILABLE,
                stage: Stage::Starting,
                requeue: None,
            },
        ),
        (
            "health: Ready from the Deployment's own status",
            w().running(1, 1),
            Expect {
                replicas: 1,
                hpa: true,
                phase: Phase::Ready,
                ready_reason: reason::AVAILABLE,
                stage: Stage::Starting,
                requeue: None,
            },
        ),
        (
            "suspend: zero replicas, no HPA, Suspended",
            {
                let mut w = w().running(2, 2);
                w.feature.spec.suspend = true;
                w
            },
            Expect {
                replicas: 0,
                hpa: false,
                phase: Phase::Suspended,
                ready_reason: reason::SUSPENDED,
                stage: Stage::Held,
                requeue: None,
            },
        ),
        (
            "budget: no room for its minimum, it waits",
            {
                let mut w = w();
                w.budget.waiting = Some("the budget is taken".into());
                w
            },
            Expect {
                replicas: 0,
                hpa: false,
                phase: Phase::Pending,
                ready_reason: reason::BUDGET_EXCEEDED,
                stage: Stage::Held,
                requeue: None,
            },
        ),
        (
            "slots: all taken, it waits Pending without an HPA",
            {
                let mut w = w();
                w.slot_full = true;
                w
            },
            Expect {
                replicas: 0,
                hpa: false,
                phase: Phase::Pending,
                ready_reason: reason::WAITING_FOR_STARTUP_SLOT,
                stage: Stage::Admitted,
                requeue: None,
            },
        ),
        (
            "slots: one already starting is never stopped for a slot",
            {
                let mut w = w().running(1, 0);
                w.slot_full = true;
                w
            },
            Expect {
                replicas: 1,
                hpa: true,
                phase: Phase::Starting,
                ready_reason: reason::ROLLING_OUT,
                stage: Stage::Starting,
                requeue: Some(300),
            },
        ),
        (
            "start-up timeout: not Ready in time, Stalled",
            w().running(1, 0).after(100).after(300),
            Expect {
                replicas: 1,
                hpa: true,
                phase: Phase::Failed,
                ready_reason: reason::STARTUP_TIMEOUT,
                stage: Stage::Starting,
                requeue: None,
            },
        ),
        (
            "validation: an unparsable duration stalls it before anything is applied",
            {
                let mut w = w();
                w.feature.spec.startup_timeout = Some("soon".into());
                w
            },
            Expect {
                replicas: 0,
                hpa: false,
                phase: Phase::Failed,
                ready_reason: reason::INVALID_SPEC,
                stage: Stage::Held,
                requeue: None,
            },
        ),
        (
            "apply: a name conflict stalls it",
            {
                let mut w = w();
                w.applied.stall = Some(Stall {
                    reason: reason::NAME_CONFLICT,
                    message: "Service aika belongs to someone else".into(),
                });
                w
            },
            Expect {
                replicas: 1,
                hpa: true,
                phase: Phase::Failed,
                ready_reason: reason::NAME_CONFLICT,
                stage: Stage::Admitted,
                requeue: Some(300),
            },
        ),
        (
            "apply: a Deployment written just now is not Ready on its stale status",
            {
                let mut w = w().running(1, 1);
                w.applied.deployment_written = true;
                w
            },
            Expect {
                replicas: 1,
                hpa: true,
                phase: Phase::Starting,
                ready_reason: reason::ROLLING_OUT,
                stage: Stage::Starting,
                requeue: Some(300),
            },
        ),
    ];
    rows.extend(recovery_rows());
    rows
}

/// Automatic recovery and its hourly limit.
fn recovery_rows() -> Vec<(&'static str, World, Expect)> {
    let degraded = |now: i64| {
        let mut w = World::new().running(1, 0).policy(recovery("60s", 2));
        w.previous = Some(degraded_since(0));
        w.now = t(now);
        w
    };
    let lost = |requeue| Expect {
        replicas: 1,
        hpa: true,
        phase: Phase::Degraded,
        ready_reason: reason::UNAVAILABLE,
        stage: Stage::Starting,
        requeue,
    };
    vec![
        (
            "recovery: unhealthy for less than restartAfter, looked at again when it runs out",
            degraded(20),
            lost(Some(40)),
        ),
        (
            "recovery: unhealthy for restartAfter, restarted",
            degraded(60),
            lost(Some(60)),
        ),
        (
            "recovery: a restart remembered here (not in the cached status yet) is not repeated",
            {
                let mut w = degraded(60);
                w.recalled.restarts = vec![t(50)];
                w
            },
            lost(Some(50)),
        ),
        (
            "recovery: the hourly limit holds the next restart until the oldest is an hour old",
            {
                let mut w = degraded(1000);
                w.recalled.restarts = vec![t(100), t(200)];
                w
            },
            // Its start-up clock (restarted with the rollout) comes first.
            lost(Some(300)),
        ),
    ]
}

#[test]
fn every_behaviour_as_a_row() {
    for (name, world, expect) in rows() {
        let o = world.run();
        let plan = &o.decision.plan;
        assert_eq!(plan.replicas, expect.replicas, "{name}: replicas");
        assert_eq!(o.decision.objects.hpa.is_some(), expect.hpa, "{name}: HPA");
        assert_eq!(o.settled.status.phase, Some(expect.phase), "{name}: phase");
        assert_eq!(
            o.ready_reason(),
            expect.ready_reason,
            "{name}: Ready reason"
        );
        assert_eq!(o.stage, expect.stage, "{name}: slot stage");
        assert_eq!(
            o.settled.requeue,
            expect.requeue.map(Duration::from_secs),
            "{name}: requeue"
        );
    }
}

#[test]
fn a_restart_stamps_the_pod_template_and_is_announced_once() {
    let mut w = World::new().running(1, 0).policy(recovery("60s", 2));
    w.previous = Some(degraded_since(0));
    w.now = t(60);
    let o = w.run();
    assert!(o.decision.restarts());
    assert_eq!(
        o.decision.plan.restarted_at.as_deref(),
        Some("1970-01-01T00:01:00Z")
    );
    assert_eq!(o.decision.restarts_to_remember(), Some(&[t(60)][..]));
    let event = o.settled.restart_event.expect("a restart has its Event");
    assert!(event.warning);
    assert_eq!(event.reason, "RecoveryRestart");
    // Its status records it: the next pass (the restart not over yet) does not restart again.
    w.previous = Some(o.settled.status);
    w.now = t(90);
    assert!(!w.run().decision.restarts());
    // The hourly limit: two restarts in the last hour, the next waits for the oldest to age.
    let mut limited = World::new().running(1, 0).policy(recovery("60s", 2));
    limited.previous = Some(degraded_since(0));
    limited.recalled.restarts = vec![t(100), t(200)];
    limited.now = t(1000);
    let o = limited.run();
    assert!(!o.decision.restarts());
    assert!(o.decision.recovery.limited.is_some());
    assert_eq!(
        o.decision.recovery.recheck_after,
        Some(Duration::from_secs(3600 - 900))
    );
    // A restart that would land on a stall is not announced.
    let mut stalled = World::new().running(1, 0).policy(recovery("60s", 2));
    stalled.previous = Some(degraded_since(0));
    stalled.now = t(60);
    stalled.applied.stall = Some(Stall {
        reason: reason::NAME_CONFLICT,
        message: "taken".into(),
    });
    assert_eq!(stalled.run().settled.restart_event, None);
}

#[test]
fn budget_share_caps_the_hpa_and_the_replicas() {
    let mut w = World::new().running(3, 3);
    w.budget.max_replicas = Some(2);
    let o = w.run();
    assert_eq!(o.decision.plan.hpa_max_replicas, 2);
    assert_eq!(o.decision.plan.replicas, 2);
    let hpa = o.decision.objects.hpa.expect("an HPA");
    assert_eq!(hpa.spec.map(|s| s.max_replicas), Some(2));
}

#[test]
fn policies_merge_by_rank_and_are_named_in_the_status() {
    let policy = |name: &str, priority: i32, min: i32| {
        let mut p = PremiumPolicy::new(
            name,
            PremiumPolicySpec {
                priority,
                pool: Some(crate::api::PolicyPool {
                    defaults: Some(crate::api::PoolDefaults {
                        min_replicas: Some(min),
                        max_replicas: Some(5),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        p.metadata.namespace = Some("portal".into());
        p
    };
    let mut w = World::new();
    w.feature.spec.pool = None;
    let policies = [policy("low", 1, 1), policy("high", 10, 2)];
    w.policy = effective_policy(&w.feature, &policies);
    let o = w.run();
    // The higher-ranked policy's minimum wins; both are listed, highest first.
    assert_eq!(o.decision.plan.replicas, 2);
    assert_eq!(o.settled.status.policies, vec!["high", "low"]);
}

#[test]
fn validation_names_the_first_problem_and_keeps_the_valid_settings() {
    let mut f = testing::feature();
    f.spec.startup_timeout = Some("90s".into());
    let spec = PremiumPolicySpec {
        startup: Some(Startup {
            timeout: Some("10m".into()),
            ..Default::default()
        }),
        ..recovery("whenever", 2)
    };
    let invalid = validate(&f, &spec).expect_err("an unparsable restartAfter");
    assert_eq!(invalid.stall.reason, reason::INVALID_SPEC);
    assert!(invalid.stall.message.contains("whenever"), "{invalid:?}");
    // The feature's own timeout still counts; the invalid recovery is off meanwhile.
    assert_eq!(invalid.fallback.startup_timeout, Duration::from_secs(90));
    assert_eq!(invalid.fallback.recovery, None);
    let valid = validate(&f, &recovery("5m", 2)).expect("valid");
    assert_eq!(valid.startup_timeout, Duration::from_secs(90));
}

#[test]
fn upstreams_follow_depends_on_once_each_with_the_ports_known() {
    let mut w = World::new();
    let again = w.feature.spec.depends_on[0].clone();
    w.feature.spec.depends_on.push(again);
    w.dependencies.remove(&key("skill-exchange"));
    w.now = t(400);
    let o = w.run();
    let upstreams: Vec<(String, Option<u16>)> = o
        .decision
        .plan
        .upstreams
        .iter()
        .map(|u| (u.name.clone(), u.port))
        .collect();
    assert_eq!(
        upstreams,
        vec![
            ("catalog".to_string(), Some(9898)),
            ("skill-exchange".to_string(), None)
        ]
    );
}

#[test]
fn only_trouble_and_its_end_have_events() {
    let mut w = World::new();
    w.dependencies.insert(key("catalog"), starting_dependency());
    let waiting = w.run().settled.status;
    assert_eq!(phase_event(None, &waiting), None);
    assert_eq!(phase_event(Some(&waiting), &waiting), None);
    w.dependencies.insert(key("catalog"), ready_dependency());
    w.previous = Some(waiting.clone());
    let starting = w.run().settled.status;
    assert_eq!(starting.phase, Some(Phase::Starting));
    assert_eq!(
        phase_event(Some(&waiting), &starting),
        None,
        "the way up is the status's"
    );
    let degraded = degraded_since(5);
    let event = phase_event(Some(&starting), &degraded).expect("Degraded is announced");
    assert!(event.warning);
    assert!(event.message.contains("lost availability"), "{event:?}");
    assert_eq!(phase_event(Some(&degraded), &degraded), None);
    let mut ready = starting.clone();
    ready.phase = Some(Phase::Ready);
    assert_eq!(phase_event(Some(&starting), &ready), None);
    let event = phase_event(Some(&degraded), &ready).expect("the end of trouble is announced");
    assert_eq!((event.warning, event.reason), (false, "Ready"));
    let mut failed = degraded.clone();
    failed.phase = Some(Phase::Failed);
    let event = phase_event(Some(&degraded), &failed).expect("worse trouble is announced");
    assert_eq!((event.warning, event.reason), (true, "Failed"));
    let mut suspended = ready.clone();
    suspended.phase = Some(Phase::Suspended);
    assert_eq!(phase_event(Some(&ready), &suspended), None);
    let event = phase_event(None, &failed).expect("a feature that fails at once is announced");
    assert!(event.warning);
}

#[test]
fn the_hold_of_a_start_counts_from_its_first_pass() {
    let w = World::new();
    let starting = w.run().settled.status;
    let at = std::time::Instant::now();
    let first = hold(None, &starting, TIMEOUT, None, at, &t(10));
    assert_eq!(first.wait, Some(Duration::from_secs(5)));
    let later = hold(
        None,
        &starting,
        TIMEOUT,
        first.held.as_ref(),
        at + Duration::from_secs(5),
        &t(15),
    );
    assert_eq!(
        later,
        Hold {
            wait: None,
            held: None
        }
    );
}

/// A waiting feature's shrinking `blockedBy` is held too, but its hold is no start: the start
/// that follows is held on a clock of its own and keeps its own start time.
#[test]
fn a_held_shrink_lends_no_start_time_to_the_start_that_follows() {
    let mut w = World::new();
    w.feature.spec.depends_on.push(crate::api::Dependency {
        name: "search".into(),
        ..Default::default()
    });
    w.dependencies.insert(key("catalog"), starting_dependency());
    w.dependencies.insert(key("search"), starting_dependency());
    let mut both = w.run().settled.status;
    both.blocked_by.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(both.phase, Some(Phase::WaitingForDependencies));
    assert_eq!(both.blocked_by.len(), 2, "{both:?}");
    w.dependencies.insert(key("catalog"), ready_dependency());
    w.previous = Some(both.clone());
    let one = w.run().settled.status;
    assert_eq!(one.blocked_by.len(), 1, "{one:?}");
    let at = std::time::Instant::now();
    let shrink = hold(Some(&both), &one, TIMEOUT, None, at, &t(10));
    assert_eq!(shrink.wait, Some(crate::core::status::SHRINK_HOLD));
    let held = shrink.held.expect("the shrink is remembered");
    assert_eq!(held.started_at, None);

    w.dependencies.insert(key("search"), ready_dependency());
    let starting = w.run().settled.status;
    assert_eq!(starting.phase, Some(Phase::Starting));
    let later = at + Duration::from_secs(3);
    let start = hold(Some(&both), &starting, TIMEOUT, Some(&held), later, &t(13));
    assert_eq!(
        start.wait,
        Some(Duration::from_secs(5)),
        "a hold of its own"
    );
    let entry = start.held.expect("the start is remembered");
    assert_eq!(entry.since, later);
    assert!(entry.started_at.is_some());
}

/// Teardown order: dependents being deleted go first, only those permitted to depend on the
/// feature, only outside its cycle, and only for a bounded time.
#[test]
fn teardown_order_as_rows() {
    let bound = Duration::from_secs(60);
    let dependent = |deleting, pending, permitted, same_cycle| Dependent {
        key: key("aika"),
        deleting,
        teardown_pending: pending,
        permitted,
        same_cycle,
    };
    let wait = |left| TeardownGate::Wait {
        holders: vec![key("aika")],
        recheck_after: Duration::from_secs(left),
    };
    let rows = [
        (
            "a dependent being deleted goes first",
            dependent(true, true, true, false),
            10,
            wait(50),
        ),
        (
            "a dependent staying holds nothing",
            dependent(false, true, true, false),
            10,
            TeardownGate::Proceed,
        ),
        (
            "a dependent already torn down holds nothing",
            dependent(true, false, true, false),
            10,
            TeardownGate::Proceed,
        ),
        (
            "a dependent never granted holds nothing",
            dependent(true, true, false, false),
            10,
            TeardownGate::Proceed,
        ),
        (
            "cycle members go together",
            dependent(true, true, true, true),
            10,
            TeardownGate::Proceed,
        ),
        (
            "the wait is bounded",
            dependent(true, true, true, false),
            60,
            TeardownGate::Overdue {
                holders: vec![key("aika")],
            },
        ),
    ];
    for (name, d, deleting_for, expect) in rows {
        assert_eq!(
            teardown_gate(&[d], Duration::from_secs(deleting_for), bound),
            expect,
            "{name}"
        );
    }
}

fn world_strategy() -> impl Strategy<Value = World> {
    (
        any::<[bool; 2]>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(0..5i32),
        0..700i64,
    )
        .prop_map(|(ready, suspend, budget, slot_full, running, now)| {
            let mut w = World::new();
            for (name, ready) in ["catalog", "skill-exchange"].into_iter().zip(ready) {
                let info = if ready {
                    ready_dependency()
                } else {
                    starting_dependency()
                };
                w.dependencies.insert(key(name), info);
            }
            w.feature.spec.suspend = suspend;
            w.budget.waiting = budget.then(|| "no room".to_string());
            w.slot_full = slot_full;
            w.deployment = running.map(|r| deployment(r, 0));
            w.now = t(now);
            w
        })
}

proptest! {
    /// A held feature's Deployment asks for no replicas and it has no HPA; a feature that is
    /// not held always asks for some.
    #[test]
    fn held_means_zero_replicas_and_no_hpa(w in world_strategy()) {
        let o = w.run();
        let replicas = o.decision.objects.deployment.spec.as_ref().and_then(|s| s.replicas);
        if o.decision.held {
            prop_assert_eq!(replicas, Some(0));
            prop_assert!(o.decision.objects.hpa.is_none());
        } else {
            prop_assert!(replicas.unwrap_or(0) > 0);
            prop_assert!(o.decision.objects.hpa.is_some());
        }
    }

    /// A running feature is stopped only by its own choices (suspension, budget, an invalid
    /// spec), never by its dependencies or a slot.
    #[test]
    fn a_running_feature_is_never_stopped_by_others(w in world_strategy()) {
        let running = w.deployment.as_ref().and_then(|d| d.written.replicas).unwrap_or(0) > 0;
        let own_reason = w.feature.spec.suspend || w.budget.waiting.is_some();
        let o = w.run();
        if running && !own_reason {
            prop_assert!(!o.decision.held);
        }
    }

    /// The slots are told Admitted only by a feature free to start and not running yet, so a
    /// slot is never held by a feature that is not starting.
    #[test]
    fn only_a_feature_about_to_start_asks_for_a_slot(w in world_strategy()) {
        let running = w.deployment.as_ref().and_then(|d| d.written.replicas).unwrap_or(0) > 0;
        let o = w.run();
        if o.stage == Stage::Admitted {
            prop_assert!(!running);
            prop_assert!(!o.decision.gate.holds());
        }
        prop_assert_eq!(
            o.settled.release_slot,
            !matches!(o.settled.status.phase, Some(Phase::Starting | Phase::Pending))
        );
    }
}

/// `catalog` can take 120 requests; aika (this feature, weight 1) and soundcheck (weight 2,
/// 4 replicas) call it.
fn catalog_capacity(aika_replicas: u32) -> CapacityInputs {
    use crate::core::capacity::{Caller, Limits};
    CapacityInputs {
        capacity: Limits {
            max_requests: Some(120),
            ..Limits::default()
        },
        callers: vec![
            Caller {
                key: key("aika"),
                weight: 1,
                replicas: aika_replicas,
            },
            Caller {
                key: key("soundcheck"),
                weight: 2,
                replicas: 4,
            },
        ],
        previous: Vec::new(),
    }
}

fn catalog_requests(decision: &Decision) -> serde_json::Value {
    let cds = &decision.objects.configmap.data.as_ref().unwrap()["cds.yaml"];
    let cds: serde_json::Value = serde_yaml::from_str(cds).unwrap();
    let catalog = cds["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "dep_portal_catalog")
        .expect("a cluster for catalog")
        .clone();
    catalog["circuitBreakers"]["thresholds"][0]["maxRequests"].clone()
}

#[test]
fn a_caller_sends_its_share_per_instance_and_a_new_split_does_not_roll_its_pods() {
    let mut world = World::new().running(2, 2);
    world.capacities = BTreeMap::from([(key("catalog"), catalog_capacity(2))]);
    let two = world.run().decision;
    // A third of 120 is 40, over 2 replicas.
    assert_eq!(catalog_requests(&two), serde_json::json!(20));
    world.deployment = Some(deployment(3, 3));
    world.capacities = BTreeMap::from([(key("catalog"), catalog_capacity(3))]);
    let three = world.run().decision;
    assert_eq!(catalog_requests(&three), serde_json::json!(13));
    let template = |d: &Decision| d.objects.deployment.spec.as_ref().unwrap().template.clone();
    assert_eq!(
        template(&two),
        template(&three),
        "the pods reload, not restart"
    );
    assert_ne!(two.objects.configmap, three.objects.configmap);
}

#[test]
fn a_caller_scaling_up_from_zero_counts_the_replicas_it_asks_for() {
    let mut world = World::new();
    world.capacities = BTreeMap::from([(key("catalog"), catalog_capacity(0))]);
    let decision = world.run().decision;
    assert_eq!(decision.plan.replicas, 1);
    assert_eq!(catalog_requests(&decision), serde_json::json!(40));
}

#[test]
fn the_policy_stays_a_ceiling_over_the_share() {
    let mut world = World::new().running(1, 1).policy(PremiumPolicySpec {
        circuit_breaker: Some(crate::api::CircuitBreaker {
            max_requests: Some(25),
            ..Default::default()
        }),
        ..Default::default()
    });
    world.capacities = BTreeMap::from([(key("catalog"), catalog_capacity(1))]);
    assert_eq!(
        catalog_requests(&world.run().decision),
        serde_json::json!(25)
    );
}

#[test]
fn a_feature_with_a_capacity_shows_its_split_in_its_status() {
    let mut world = World::new().running(1, 1);
    let mut own = catalog_capacity(1);
    own.callers
        .iter_mut()
        .for_each(|c| c.key.name.push_str("-caller"));
    world.capacities = BTreeMap::from([(key("aika"), own)]);
    let status = world.run().settled.status;
    let split = status.capacity.expect("status.capacity");
    let names: Vec<&str> = split.callers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["aika-caller", "soundcheck-caller"]);
    assert_eq!(split.callers[1].share.max_requests, Some(80));
    assert_eq!(split.callers[1].per_instance.max_requests, Some(20));
    assert_eq!(
        World::new().running(1, 1).run().settled.status.capacity,
        None
    );
}
