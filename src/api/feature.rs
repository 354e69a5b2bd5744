//! The `PremiumFeature` custom resource: one premium feature run as a replica pool.

// The derive's repeated `printcolumn(type_ = …)` keys look like duplicates to clippy.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::DURATION_PATTERN;

/// A premium feature: an application run as a replica pool behind an Envoy sidecar,
/// started only once the features it depends on are Ready.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "premium.dev",
    version = "v1alpha1",
    kind = "PremiumFeature",
    plural = "premiumfeatures",
    singular = "premiumfeature",
    shortname = "pf",
    category = "premium",
    namespaced,
    status = "PremiumFeatureStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "A premium feature: an application run as a replica pool behind an Envoy sidecar, started only once the features it depends on are Ready.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", description = "Where the feature is in its lifecycle"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status", description = "The Ready condition: True once every desired replica serves"),
    printcolumn(name = "Ready-Replicas", type_ = "integer", json_path = ".status.readyReplicas", description = "Replicas that are Ready"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas", description = "Replicas the Deployment asks for", priority = "1"),
    printcolumn(name = "Blocked-By", type_ = "string", json_path = ".status.blockedBy[*].name", description = "Dependencies that hold the feature back"),
    printcolumn(name = "Level", type_ = "integer", json_path = ".status.startupLevel", description = "Depth in the dependency graph (0 = no dependencies)"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].message", description = "The Ready condition's message: what the feature is doing or waiting for"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 63").message("metadata.name must start with a letter and be a DNS label of at most 63 characters: it also names the feature's Service").reason(Reason::FieldValueInvalid),
    validation = Rule::new("!has(self.spec.dependsOn) || self.spec.dependsOn.all(d, has(d.__namespace__) || d.name != self.metadata.name)").message("a feature cannot depend on itself").field_path(".spec.dependsOn").reason(Reason::FieldValueInvalid),
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = super::describe::paragraphs)]
pub struct PremiumFeatureSpec {
    /// Container image of the feature's application, for example `ghcr.io/stefanprodan/podinfo:6.7.1`.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,

    /// TCP port the application serves HTTP on inside the pod. The feature's Service exposes the
    /// same port, answered by the Envoy sidecar in front of the application. Ports 15000-15199 are
    /// reserved for the sidecar.
    #[schemars(range(min = 1, max = 65535))]
    #[x_kube(validation = Rule::new("self < 15000 || self > 15199").message("ports 15000-15199 are reserved for the Envoy sidecar; choose another port"))]
    pub port: i32,

    /// Environment variables for the application container, one entry per name (at most 128;
    /// values up to 32 KiB). Values may come from ConfigMaps or Secrets (`valueFrom`); the
    /// operator only passes the reference on. The operator also adds `PREMIUM_<DEPENDENCY>_URL`
    /// for each dependency, so names of that form are refused here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128), transform = super::limits::bound_env)]
    #[x_kube(
        merge_strategy = ListMerge::Map(vec!["name".into()]),
        validation = Rule::new(format!("self.all(e, !e.name.matches('{}'))", super::RESERVED_ENV_PATTERN)).message("env names of the form PREMIUM_<DEPENDENCY>_URL are reserved: the operator sets them to the URLs of the feature's dependencies; rename the variable").reason(Reason::FieldValueForbidden)
    )]
    pub env: Vec<EnvVar>,

    /// CPU and memory requests and limits of the application container. A CPU request is needed
    /// for CPU-based autoscaling. Quantities are at most 64 characters long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = super::limits::bound)]
    pub resources: Option<ResourceRequirements>,

    /// HTTP health check; it becomes the application's readiness and liveness probes. Without it
    /// the pod is Ready as soon as it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,

    /// Features that must be Ready before this one starts. A dependency is looked up in this
    /// feature's namespace unless `namespace` is set; another namespace must be granted by a
    /// PremiumPolicy's `exposeTo` there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(d, self.exists_one(e, e.name == d.name && (has(e.__namespace__) ? e.__namespace__ : '') == (has(d.__namespace__) ? d.__namespace__ : '')))").message("each dependency may be listed only once").reason(Reason::FieldValueDuplicate))]
    pub depends_on: Vec<Dependency>,

    /// How long the feature may take to become Ready once its dependencies are Ready, as a duration
    /// such as `90s`, `2m` or `1h30m`. Overrides the policy's `startup.timeout` (default 5m). After it
    /// the feature reports `Stalled`, and dependents that list it as optional start without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    pub startup_timeout: Option<String>,

    /// Replica pool bounds and autoscaling target; unset fields come from the policy's
    /// `pool.defaults`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<FeaturePool>,

    /// Stop the feature: its Deployment is scaled to zero and its HPA removed, without deleting
    /// anything. Dependents see it as not Ready.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,

    /// What the feature as a whole can take from all its callers together. The operator splits
    /// each set limit between the features that depend on this one, by their `pool.weight`,
    /// divides each caller's part by its replicas, and writes the result into the circuit
    /// breakers of that caller's sidecar cluster for this feature (a caller's policy values stay
    /// a ceiling). `status.capacity` shows the split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,

    /// ServiceAccount of this namespace that the application's pods run as, with its API token
    /// mounted. Unset, the pods run as the namespace's `default` ServiceAccount and get no token
    /// at all, so an application that is broken into holds no credentials for the Kubernetes
    /// API. Set it only for an application that calls the API; the ServiceAccount must exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = super::DNS_SUBDOMAIN_PATTERN))]
    pub service_account_name: Option<String>,

    /// Mount the application container's root filesystem read-only; the operator then mounts an
    /// empty, writable directory at `/tmp`. Off by default because many images write elsewhere
    /// at start-up; turn it on once the application is known to cope. The Envoy sidecar always
    /// runs read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only_root_filesystem: bool,
}

/// Limits on what every caller of a feature may send it at once, summed over all their
/// sidecars. Unset fields are not split (the callers' policies alone apply).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.maxConnections) || has(self.maxPendingRequests) || has(self.maxRequests)").message("capacity needs at least one of maxConnections, maxPendingRequests and maxRequests"))]
pub struct Capacity {
    /// Connections all callers together may hold open to the feature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_connections: Option<i64>,
    /// Requests all callers together may queue while waiting for a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_pending_requests: Option<i64>,
    /// Requests all callers together may have in flight to the feature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_requests: Option<i64>,
}

/// An HTTP endpoint that answers 200 when the application is healthy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Absolute HTTP path probed on the application port, for example `/readyz`.
    #[schemars(regex(pattern = r"^/[^\s]*$"), length(max = 256))]
    pub path: String,

    /// Seconds between probes (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 300))]
    pub period_seconds: Option<i32>,

    /// Consecutive failures before the pod is marked not ready (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 30))]
    pub failure_threshold: Option<i32>,
}

/// A feature this one needs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Dependency {
    /// Name of the PremiumFeature depended on.
    #[schemars(length(min = 1, max = 63), regex(pattern = super::DNS_LABEL_PATTERN))]
    pub name: String,

    /// Namespace of the PremiumFeature depended on; defaults to this feature's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = super::DNS_LABEL_PATTERN))]
    pub namespace: Option<String>,

    /// Start without this dependency once it has missed its start-up timeout; the feature then
    /// reports `Degraded` until the dependency is Ready.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// Replica pool bounds of one feature.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas").message("minReplicas must not be greater than maxReplicas"))]
pub struct FeaturePool {
    /// Fewest replicas once started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: Option<i32>,

    /// Most replicas the autoscaler may run; a policy budget can lower it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: Option<i32>,

    /// Average CPU utilization, in percent of the requested CPU, that the autoscaler aims for.
    #[serde(
        default,
        rename = "targetCPUUtilizationPercentage",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: Option<i32>,

    /// Share of a policy's replica budget relative to the other features (default 1). When the
    /// budget cannot hold every feature's minimum, lower weights wait first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub weight: Option<i32>,
}

/// Observed state of a PremiumFeature, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = super::describe::paragraphs)]
pub struct PremiumFeatureStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// One-word summary: Pending, WaitingForDependencies, Starting, Ready, Degraded, Failed or
    /// Suspended. Conditions carry the detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// Depth in the dependency graph: 0 for a feature without dependencies. Absent while the
    /// feature is on or behind a dependency cycle, or needs a dependency that is missing or not
    /// permitted (its depth is not known yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_level: Option<i32>,

    /// The dependencies that hold this feature back, each with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked_by: Vec<BlockedBy>,

    /// Replicas the Deployment asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,

    /// Replicas that are Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,

    /// PremiumPolicies that select this feature, highest priority first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,

    /// Hash of the rendered Envoy sidecar configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar_config_hash: Option<String>,

    /// When the current start or rollout began: the moment the operator scaled the feature up
    /// after its dependencies turned Ready, or the spec changed while it ran. The start-up
    /// timeout counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,

    /// Automatic restarts done for this feature, to honour `recovery.maxRestartsPerHour`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_restarts: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,

    /// Standard conditions: Ready, DependenciesReady, Reconciling, Stalled, Degraded. At most one
    /// of each type (a list map keyed by `type`, so server-side apply merges them by type).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// How `spec.capacity` is split between the callers, when it is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacityStatus>,
}

/// The split of a feature's capacity between its callers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CapacityStatus {
    /// Every feature that depends on this one, by name (`namespace/name` when in another
    /// namespace). A caller with no replicas takes no share.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub callers: Vec<CapacityCaller>,
}

/// One caller's part of a feature's capacity.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CapacityCaller {
    /// The caller (`namespace/name` when in another namespace).
    pub name: String,
    /// Its `pool.weight` (default 1): shares are in proportion to it.
    pub weight: i32,
    /// The replicas the split counted: the caller's desired replicas, or its ready ones
    /// when more are still running.
    pub replicas: i32,
    /// The caller's part of the capacity, over all its replicas.
    pub share: CapacityAmounts,
    /// What each of its sidecars may send (at least 1, even when the share is smaller than
    /// the replicas).
    pub per_instance: CapacityAmounts,
}

/// Amounts of the three limits of `spec.capacity`; an unset one is not split.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CapacityAmounts {
    /// Connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<i64>,
    /// Requests queued while waiting for a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<i64>,
    /// Requests in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<i64>,
}

/// One dependency that holds a feature back.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BlockedBy {
    /// Name of the dependency (`namespace/name` when in another namespace).
    pub name: String,
    /// CamelCase reason, such as DependencyNotReady or DependencyNotFound.
    pub reason: String,
    /// What is wrong, for a person.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// One-word summary of the feature's lifecycle: Pending, WaitingForDependencies, Starting,
/// Ready, Degraded, Failed or Suspended. Conditions carry the detail.
#[derive(
    schemars::JsonSchema,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
)]
pub enum Phase {
    /// Seen but not yet reconciled.
    Pending,
    /// Held at zero replicas until required dependencies are Ready.
    WaitingForDependencies,
    /// Dependencies are Ready; the Deployment is rolling out.
    Starting,
    /// Every desired replica is up to date, ready and available.
    Ready,
    /// Running, but unhealthy or running without an optional dependency or with an unhealthy one.
    Degraded,
    /// Cannot make progress without a change: a cycle, a start-up timeout, a name conflict.
    Failed,
    /// Stopped by `spec.suspend`.
    Suspended,
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Phase::Pending,
        Phase::WaitingForDependencies,
        Phase::Starting,
        Phase::Ready,
        Phase::Degraded,
        Phase::Failed,
        Phase::Suspended,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::WaitingForDependencies => "WaitingForDependencies",
            Phase::Starting => "Starting",
            Phase::Ready => "Ready",
            Phase::Degraded => "Degraded",
            Phase::Failed => "Failed",
            Phase::Suspended => "Suspended",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Dependency {
    /// The namespace the dependency lives in, given the dependent's namespace.
    pub fn namespace_or<'a>(&'a self, own: &'a str) -> &'a str {
        self.namespace.as_deref().unwrap_or(own)
    }
}
