//! The custom resources: types only, with the schema users see in `kubectl explain`.

pub mod conditions;
pub mod describe;
pub mod duration;
pub mod feature;
pub mod limits;
pub mod policy;
pub mod quantity;

pub use feature::*;
pub use policy::*;

/// API group of both kinds.
pub const GROUP: &str = "premium.dev";
/// API version of both kinds.
pub const VERSION: &str = "v1alpha1";

/// Go-style durations as users write them (`500ms`, `90s`, `2m`, `1h30m`).
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";
/// A Kubernetes name that is also a DNS label (RFC 1123).
pub const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A Kubernetes name that is a DNS subdomain (RFC 1123), as ServiceAccount names are.
pub const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// Envoy `retry_on` conditions, comma-separated.
pub const RETRY_ON_PATTERN: &str = r"^(5xx|gateway-error|reset|reset-before-request|connect-failure|envoy-ratelimited|retriable-4xx|refused-stream|retriable-status-codes|retriable-headers|http3-post-connect-failure)(,(5xx|gateway-error|reset|reset-before-request|connect-failure|envoy-ratelimited|retriable-4xx|refused-stream|retriable-status-codes|retriable-headers|http3-post-connect-failure))*$";

/// Names of the environment variables the operator sets itself, one per dependency
/// (`PREMIUM_<DEPENDENCY>_URL`); the CRD refuses them in `spec.env`.
pub const RESERVED_ENV_PATTERN: &str = "^PREMIUM_[A-Z0-9_]+_URL$";

/// Label on every object the operator creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "premium-operator";
/// Label naming the feature an object belongs to.
pub const FEATURE_LABEL: &str = "premium.dev/feature";
/// Field manager for server-side apply.
pub const FIELD_MANAGER: &str = "premium-operator";
