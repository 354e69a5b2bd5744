//! Condition types and reasons, as named constants (the kstatus vocabulary Flux and Argo CD read).

/// The feature serves traffic: every desired replica is updated, ready and available.
pub const READY: &str = "Ready";
/// Every required dependency is Ready.
pub const DEPENDENCIES_READY: &str = "DependenciesReady";
/// The operator is moving the feature towards its desired state (kstatus).
pub const RECONCILING: &str = "Reconciling";
/// The feature cannot make progress without a change (kstatus).
pub const STALLED: &str = "Stalled";
/// Running, but not as well as it should.
pub const DEGRADED: &str = "Degraded";
/// A lower-priority policy's setting lost to a higher-priority policy.
pub const CONFLICTING: &str = "Conflicting";
/// The minimum replicas of the selected features exceed the policy's budget.
pub const BUDGET_EXCEEDED: &str = "BudgetExceeded";

pub mod reason {
    pub const DEPENDENCY_NOT_READY: &str = "DependencyNotReady";
    pub const DEPENDENCY_NOT_FOUND: &str = "DependencyNotFound";
    pub const DEPENDENCY_CYCLE: &str = "DependencyCycle";
    pub const DEPENDENCY_NOT_PERMITTED: &str = "DependencyNotPermitted";
    pub const DEPENDENCIES_READY: &str = "DependenciesReady";
    pub const NO_DEPENDENCIES: &str = "NoDependencies";
    pub const STARTUP_TIMEOUT: &str = "StartupTimeout";
    pub const OPTIONAL_DEPENDENCY_UNAVAILABLE: &str = "OptionalDependencyUnavailable";
    pub const DEPENDENCY_UNHEALTHY: &str = "DependencyUnhealthy";
    pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
    pub const NAME_CONFLICT: &str = "NameConflict";
    /// The operator's RBAC role lacks a permission it needs for this feature.
    pub const FORBIDDEN: &str = "Forbidden";
    /// A ResourceQuota of the namespace has no room for the feature's objects.
    pub const QUOTA_EXCEEDED: &str = "QuotaExceeded";
    /// An admission webhook or ValidatingAdmissionPolicy denied the feature's objects.
    pub const ADMISSION_DENIED: &str = "AdmissionDenied";
    pub const SUSPENDED: &str = "Suspended";
    pub const BUDGET_EXCEEDED: &str = "BudgetExceeded";
    pub const WAITING_FOR_STARTUP_SLOT: &str = "WaitingForStartupSlot";
    pub const ROLLING_OUT: &str = "RollingOut";
    /// A new pod template rolls out while the previous pods keep serving.
    pub const ROLLING_UPDATE: &str = "RollingUpdate";
    pub const AVAILABLE: &str = "Available";
    pub const UNAVAILABLE: &str = "Unavailable";
    pub const HEALTHY: &str = "Healthy";
    pub const RECONCILED: &str = "ReconciliationSucceeded";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The last reconcile failed (the message says how); it is retried.
    pub const RECONCILE_ERROR: &str = "ReconcileError";
    pub const NOT_STALLED: &str = "NotStalled";
    pub const POLICY_OVERRIDDEN: &str = "PolicyOverridden";
    pub const NO_CONFLICT: &str = "NoConflict";
    pub const WITHIN_BUDGET: &str = "WithinBudget";
    pub const NO_BUDGET: &str = "NoBudget";
    /// A feature being deleted stays: its policy blocks deletion while dependents remain.
    pub const DEPENDENTS_REMAIN: &str = "DependentsRemain";
}
