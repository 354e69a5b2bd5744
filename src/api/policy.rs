//! The `PremiumPolicy` custom resource: traffic, pool, start-up and recovery settings shared by
//! the features it selects.

// The derive's repeated `printcolumn(type_ = …)` keys look like duplicates to clippy.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{DURATION_PATTERN, RETRY_ON_PATTERN};

/// Settings for the PremiumFeatures it selects in its namespace: circuit breakers, outlier
/// detection, timeouts and retries for their Envoy sidecars, pool defaults and a shared replica
/// budget, start-up throttling and automatic recovery.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "premium.dev",
    version = "v1alpha1",
    kind = "PremiumPolicy",
    plural = "premiumpolicies",
    singular = "premiumpolicy",
    shortname = "ppol",
    category = "premium",
    namespaced,
    status = "PremiumPolicyStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "Settings for the PremiumFeatures a policy selects in its namespace: Envoy circuit breakers, outlier detection, timeouts and retries, pool defaults and a shared replica budget, start-up throttling and automatic recovery.",
    printcolumn(
        name = "Priority",
        type_ = "integer",
        json_path = ".spec.priority",
        description = "Higher wins field by field"
    ),
    printcolumn(
        name = "Features",
        type_ = "integer",
        json_path = ".status.matchedFeatures",
        description = "Features selected"
    ),
    printcolumn(
        name = "Budget",
        type_ = "string",
        json_path = ".status.budget.allocated",
        description = "Replica maxima granted under the budget"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "The Ready condition: True once the policy is applied within its budget"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        description = "The Ready condition's message"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = super::describe::paragraphs)]
pub struct PremiumPolicySpec {
    /// Which PremiumFeatures in this namespace the policy applies to. An empty selector (`{}`)
    /// selects every feature in the namespace.
    #[schemars(transform = super::limits::bound)]
    pub selector: LabelSelector,

    /// When several policies select a feature, each setting comes from the policy with the highest
    /// priority that sets it (ties: the name that sorts first). Default 0.
    #[serde(default)]
    #[schemars(range(min = -1000000, max = 1000000))]
    pub priority: i32,

    /// Envoy circuit-breaker thresholds for every upstream of the selected features' sidecars,
    /// including the local application (load shedding). Unset fields keep Envoy's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,

    /// Eject a dependency's endpoints that keep failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,

    /// Connect and request timeouts towards dependencies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,

    /// Retries of failed requests towards dependencies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,

    /// Replica pool defaults and a replica budget shared by the selected features.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PolicyPool>,

    /// Start-up throttling and timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<Startup>,

    /// Automatic rollout restarts of features that stay unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<Recovery>,

    /// Lets features in other namespaces depend on the features this policy selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose_to: Option<ExposeTo>,

    /// What deleting a selected feature does while other features still depend on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion: Option<Deletion>,
}

/// Envoy `circuit_breakers` thresholds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Most connections Envoy opens to one upstream (Envoy default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_connections: Option<i64>,
    /// Most requests queued while waiting for a connection (Envoy default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_pending_requests: Option<i64>,
    /// Most requests in flight to one upstream (Envoy default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_requests: Option<i64>,
    /// Most retries in flight to one upstream (Envoy default 3). Ignored when `retryBudget` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub max_retries: Option<i64>,
    /// Limit retries to a share of the requests in flight instead of a fixed number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

/// Envoy retry budget.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    /// Retries allowed, in percent of the active requests (1-100).
    #[schemars(range(min = 1, max = 100))]
    pub budget_percent: i32,
    /// Retries always allowed, whatever the active requests (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub min_retry_concurrency: Option<i64>,
}

/// Envoy outlier detection.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive 5xx answers after which an endpoint is ejected (Envoy default 5).
    #[serde(
        default,
        rename = "consecutive5xx",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 10000))]
    pub consecutive_5xx: Option<i64>,
    /// Time between ejection sweeps, such as `10s` (Envoy default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    pub interval: Option<String>,
    /// Base time an endpoint stays ejected, such as `30s` (Envoy default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    pub base_ejection_time: Option<String>,
    /// Most endpoints of an upstream ejected at once, in percent (1-100; Envoy default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_ejection_percent: Option<i32>,
}

/// Timeouts towards dependencies.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// Time to open a connection, such as `1s` (Envoy default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    pub connect: Option<String>,
    /// Time for a whole request, retries included, such as `15s` (Envoy default 15s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    pub request: Option<String>,
}

/// Retries towards dependencies.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Retries {
    /// Retries after the first try (0-10).
    #[schemars(range(min = 0, max = 10))]
    pub attempts: i32,
    /// Time for each try, such as `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    pub per_try_timeout: Option<String>,
    /// Comma-separated Envoy retry conditions, such as `5xx,reset,connect-failure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = RETRY_ON_PATTERN), length(max = 256))]
    pub retry_on: Option<String>,
}

/// Replica pool settings of a policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PolicyPool {
    /// Pool bounds for features that do not set their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<PoolDefaults>,
    /// A cap on the sum of the selected features' maximum replicas. When their minReplicas do
    /// not all fit, running features keep theirs first, then the others are admitted by
    /// start-up level, weight (heaviest first) and name; one whose minReplicas does not fit in
    /// what is left waits at zero replicas (BudgetExceeded) without holding back those after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// How the autoscaler scales down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScaleDown>,
}

/// Pool bounds used when a feature does not set its own.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas").message("minReplicas must not be greater than maxReplicas"))]
pub struct PoolDefaults {
    /// Fewest replicas once started (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: Option<i32>,
    /// Most replicas the autoscaler may run (default: minReplicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: Option<i32>,
    /// Average CPU utilization target in percent (default 80).
    #[serde(
        default,
        rename = "targetCPUUtilizationPercentage",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: Option<i32>,
}

/// A replica budget shared by the selected features.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// Most replicas, summed over the selected features' autoscaler maxima.
    #[schemars(range(min = 1, max = 100000))]
    pub max_replicas: i32,
}

/// Autoscaler scale-down behaviour.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScaleDown {
    /// Seconds of lower recommendations before scaling down (0-3600; HPA default 300).
    #[schemars(range(min = 0, max = 3600))]
    pub stabilization_window_seconds: i32,
}

/// Start-up settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Startup {
    /// How long a feature may take to become Ready once its dependencies are, such as `5m`
    /// (default 5m). A feature's own `startupTimeout` wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    pub timeout: Option<String>,
    /// Most selected features starting at the same time (default: no limit). A feature holds a
    /// start-up slot only while its pods start: one held back (by the budget, its dependencies
    /// or a suspension) gives its slot back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_concurrent: Option<i32>,
}

/// Automatic recovery settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Recovery {
    /// Restart a feature's pods once it has been unhealthy this long, such as `5m`.
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    pub restart_after: String,
    /// Most automatic restarts of one feature in any hour (0 turns restarts off; default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 60))]
    pub max_restarts_per_hour: Option<i32>,
}

/// Namespaces granted access to the selected features.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExposeTo {
    /// Namespaces whose features may list the selected features in `dependsOn`.
    #[schemars(length(max = 256), inner(length(min = 1, max = 63), regex(pattern = super::DNS_LABEL_PATTERN)))]
    pub namespaces: Vec<String>,
}

/// Deletion settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Deletion {
    /// Proceed (default), Block or Cascade: see [`WhileDependents`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub while_dependents: Option<WhileDependents>,
}

/// What deleting a selected feature does while features permitted to depend on it (same
/// namespace, or granted by `exposeTo`) still list it in `dependsOn` and are not being deleted
/// themselves. `Proceed` (default): it goes, after dependents being deleted with it are torn
/// down. `Block`: it stays Terminating, `Stalled` with reason `DependentsRemain` naming them,
/// until they are gone or the policy changes. `Cascade`: they are deleted first, deepest
/// dependents first (the reverse of start-up order), then the feature.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum WhileDependents {
    /// Delete it; dependents that stay lose it.
    #[default]
    Proceed,
    /// Keep it until its dependents are gone.
    Block,
    /// Delete its dependents first, then it.
    Cascade,
}

/// Observed state of a PremiumPolicy, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = super::describe::paragraphs)]
pub struct PremiumPolicyStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// How many features the selector matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_features: Option<i32>,
    /// How the replica budget is shared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetStatus>,
    /// Standard conditions: Ready, Conflicting, BudgetExceeded. At most one of each type (a list
    /// map keyed by `type`, so server-side apply merges them by type).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// The shared replica budget as allocated.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BudgetStatus {
    /// Sum of the maxima the selected features ask for.
    pub requested: i32,
    /// Sum of the maxima granted.
    pub allocated: i32,
    /// Features held at zero replicas because their minimum does not fit in what the running
    /// features and those ranked ahead of them leave, in admission order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<String>,
}
