//! What the controllers do after a reconcile: a failure is counted, logged as what it asks of
//! whom, and retried on its object's own backoff (see [`retry`]); a success resets that backoff.

use std::sync::Arc;

use kube::Resource;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use tracing::{error, warn};

use super::context::Context;
use super::retry;
use super::{Error, ErrorKind};
use crate::api::{PremiumFeature, PremiumPolicy};
use crate::runtime::metrics::ErrorLabels;

/// The retry key of a watched object, readable or not: one that does not match the schema is
/// retried (and reset) under its own name like any other.
pub fn retry_key<K>(controller: &'static str, g: &DeserializeGuard<K>) -> retry::RetryKey
where
    K: Resource<DynamicType = ()>,
{
    let meta = match &g.0 {
        Ok(k) => k.meta(),
        Err(invalid) => &invalid.metadata,
    };
    (
        controller,
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// A reconcile that, when it succeeds, resets its object's retry backoff.
pub async fn reset_backoff_on_success<K>(
    controller: &'static str,
    obj: &DeserializeGuard<K>,
    ctx: &Context,
    reconcile: impl std::future::Future<Output = Result<Action, Error>>,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()>,
{
    let result = reconcile.await;
    if result.is_ok() {
        ctx.retries.succeeded(&retry_key(controller, obj));
    }
    result
}

/// How loudly a failed feature reconcile is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The operator itself is set up wrong (its Role): whoever runs it must act.
    Error,
    Warning,
}

/// The log line of a failed feature reconcile: a refusal names who can lift it and what the
/// feature reports meanwhile; anything else is retried without asking anyone.
pub fn feature_failure_note(kind: ErrorKind) -> (Severity, &'static str) {
    match kind {
        ErrorKind::Forbidden => (
            Severity::Error,
            "permission denied: the operator's RBAC role lacks a permission this feature needs; the feature reports Stalled (reason Forbidden) and is retried with backoff until the permission is granted",
        ),
        ErrorKind::QuotaExceeded => (
            Severity::Warning,
            "a ResourceQuota of the namespace has no room for this feature's objects; the feature reports Stalled (reason QuotaExceeded) and is retried with backoff",
        ),
        ErrorKind::AdmissionDenied => (
            Severity::Warning,
            "an admission webhook or ValidatingAdmissionPolicy denied this feature's objects; the feature reports Stalled (reason AdmissionDenied) and is retried with backoff",
        ),
        _ => (Severity::Warning, "reconcile failed; retrying"),
    }
}

/// Counts the failure and picks the wait before the next try: this object's own exponential
/// backoff for the kind of failure (see [`retry`]).
fn backoff_for(
    controller: &'static str,
    key: retry::RetryKey,
    error: &Error,
    ctx: &Context,
) -> Action {
    let kind = error.kind();
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels::new(controller, kind))
        .inc();
    Action::requeue(ctx.retries.failed(key, kind.schedule()))
}

pub fn error_policy_feature(
    obj: Arc<DeserializeGuard<PremiumFeature>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let key = retry_key("feature", &obj);
    let (_, namespace, name) = &key;
    let kind = error.kind();
    match feature_failure_note(kind) {
        (Severity::Error, note) => {
            error!(feature = %name, %namespace, error = %error, ?kind, "{note}")
        }
        (Severity::Warning, note) => {
            warn!(feature = %name, %namespace, error = %error, ?kind, "{note}")
        }
    }
    backoff_for("feature", key, error, &ctx)
}

pub fn error_policy_policy(
    obj: Arc<DeserializeGuard<PremiumPolicy>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let key = retry_key("policy", &obj);
    warn!(policy = %key.2, namespace = %key.1, error = %error, kind = ?error.kind(), "reconcile failed; retrying");
    backoff_for("policy", key, error, &ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_object_is_retried_under_its_own_name() {
        let broken: DeserializeGuard<PremiumPolicy> = serde_json::from_value(serde_json::json!({
            "apiVersion": "premium.dev/v1alpha1",
            "kind": "PremiumPolicy",
            "metadata": {"name": "p", "namespace": "team-a"},
            "spec": {"priority": "high"},
        }))
        .expect("a guard takes any object with metadata");
        assert!(broken.0.is_err(), "the spec must not deserialize");
        assert_eq!(
            retry_key("policy", &broken),
            ("policy", "team-a".to_string(), "p".to_string())
        );
    }

    #[test]
    fn only_a_missing_permission_is_logged_as_an_error() {
        let all = [
            ErrorKind::Forbidden,
            ErrorKind::QuotaExceeded,
            ErrorKind::AdmissionDenied,
            ErrorKind::NamespaceTerminating,
            ErrorKind::NotFound,
            ErrorKind::Conflict,
            ErrorKind::Invalid,
            ErrorKind::TooManyRequests,
            ErrorKind::ServerError,
            ErrorKind::ApiError,
            ErrorKind::Transport,
            ErrorKind::NotLeader,
            ErrorKind::InvalidObject,
            ErrorKind::NotSynced,
        ];
        for kind in all {
            let (severity, note) = feature_failure_note(kind);
            assert_eq!(
                severity == Severity::Error,
                kind == ErrorKind::Forbidden,
                "{kind:?}"
            );
            // A refusal names the Stalled reason the feature reports, so the log and the
            // status can be matched up; other failures promise only a retry.
            if kind.is_refusal() {
                assert!(
                    note.contains(&format!("reason {kind:?}")),
                    "{kind:?}: {note}"
                );
            } else {
                assert_eq!(note, "reconcile failed; retrying", "{kind:?}");
            }
        }
    }
}
