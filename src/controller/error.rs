//! What can fail in a reconcile, and what kind of failure each is: the kind decides the
//! metric label, the log line, the status reason and how soon the object is tried again.

use prometheus_client::encoding::EncodeLabelValue;

use super::retry;
use crate::runtime::leader::NotLeader;
use crate::runtime::metrics::ErrorLabels;

/// Everything that can fail in a reconcile, with what a person needs to act.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("the caches have not finished their first list yet")]
    NotSynced,
}

impl Error {
    pub fn kube(context: impl Into<String>, source: kube::Error) -> Self {
        Error::Kube {
            context: context.into(),
            source,
        }
    }

    /// What kind of failure this is: its metric label, log line, status reason and retry
    /// schedule.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Kube {
                source: kube::Error::Api(s),
                ..
            } => api_error_kind(s),
            Error::Kube {
                source: kube::Error::Service(e),
                ..
            } if e.is::<NotLeader>() => ErrorKind::NotLeader,
            Error::Kube { .. } => ErrorKind::Transport,
            Error::Invalid(_) => ErrorKind::InvalidObject,
            Error::NotSynced => ErrorKind::NotSynced,
        }
    }
}

/// A bounded set of failure kinds (the `kind` label of `premium_reconcile_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum ErrorKind {
    /// RBAC: the operator's role lacks a permission (403 from the authorizer).
    Forbidden,
    /// A ResourceQuota in the namespace has no room for the object (403 from quota admission).
    QuotaExceeded,
    /// An admission webhook or a ValidatingAdmissionPolicy denied the request.
    AdmissionDenied,
    /// The namespace is being deleted (403 from NamespaceLifecycle admission).
    NamespaceTerminating,
    NotFound,
    Conflict,
    Invalid,
    TooManyRequests,
    ServerError,
    ApiError,
    /// No answer: connection, TLS or timeout.
    Transport,
    /// This instance is not (or no longer surely) the leader: the write was not sent.
    NotLeader,
    /// An object that does not match the schema.
    InvalidObject,
    NotSynced,
}

impl ErrorKind {
    /// A refusal that only a person can lift (a Role, a quota, an admission policy): reported
    /// in the object's status, not just logged.
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            ErrorKind::Forbidden | ErrorKind::QuotaExceeded | ErrorKind::AdmissionDenied
        )
    }

    /// How soon a failure of this kind is tried again.
    pub fn schedule(self) -> retry::Schedule {
        match self {
            ErrorKind::Conflict | ErrorKind::NotSynced => retry::Schedule::SOON,
            ErrorKind::Forbidden
            | ErrorKind::QuotaExceeded
            | ErrorKind::AdmissionDenied
            | ErrorKind::NamespaceTerminating
            | ErrorKind::Invalid
            | ErrorKind::InvalidObject
            | ErrorKind::NotLeader => retry::Schedule::REFUSED,
            ErrorKind::NotFound
            | ErrorKind::TooManyRequests
            | ErrorKind::ServerError
            | ErrorKind::ApiError
            | ErrorKind::Transport => retry::Schedule::TRANSIENT,
        }
    }
}

/// The kind of an API server refusal. A 403 comes from RBAC, from a ResourceQuota, from
/// admission control or from a namespace being deleted, and each asks someone else to act; the
/// Status's message is the only place that says which (the reason is "Forbidden" for all).
fn api_error_kind(s: &kube::core::Status) -> ErrorKind {
    match s.code {
        403 if namespace_terminating(s) => ErrorKind::NamespaceTerminating,
        403 if quota_exceeded(s) => ErrorKind::QuotaExceeded,
        // Webhooks choose their own code (400, 403, 422...), so the message decides.
        400..=499 if admission_denied(s) => ErrorKind::AdmissionDenied,
        403 => ErrorKind::Forbidden,
        404 => ErrorKind::NotFound,
        409 => ErrorKind::Conflict,
        422 => ErrorKind::Invalid,
        429 => ErrorKind::TooManyRequests,
        500..=599 => ErrorKind::ServerError,
        _ => ErrorKind::ApiError,
    }
}

/// ResourceQuota admission: "exceeded quota: q, requested: ...", or "failed quota: q: must
/// specify limits.cpu" for a quota that demands limits.
fn quota_exceeded(s: &kube::core::Status) -> bool {
    s.message.contains("exceeded quota") || s.message.contains("failed quota")
}

/// A webhook ("admission webhook \"w\" denied the request: ...") or a ValidatingAdmissionPolicy
/// ("ValidatingAdmissionPolicy 'p' with binding 'b' denied request: ...").
fn admission_denied(s: &kube::core::Status) -> bool {
    let m = &s.message;
    (m.contains("admission webhook") && m.contains("denied the request"))
        || m.contains("ValidatingAdmissionPolicy")
        || m.contains("denied request")
}

/// Whether a refusal comes from the namespace being deleted (the API server's
/// NamespaceLifecycle admission), not from RBAC.
fn namespace_terminating(s: &kube::core::Status) -> bool {
    s.details
        .as_ref()
        .is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"))
        || s.message.contains("because it is being terminated")
}

impl ErrorLabels {
    pub fn new(controller: &'static str, kind: ErrorKind) -> Self {
        Self { controller, kind }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::metrics::Metrics;

    fn api_error(code: u16, message: &str, cause: Option<&str>) -> Error {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure",
            "code": code,
            "reason": "Forbidden",
            "message": message,
            "details": {"causes": cause.map(|c| vec![serde_json::json!({"reason": c, "message": message})]).unwrap_or_default()},
        }))
        .expect("a Status");
        Error::kube(
            "applying Deployment ns/a",
            kube::Error::Api(Box::new(status)),
        )
    }

    #[test]
    fn a_namespace_being_deleted_is_not_a_missing_permission() {
        let terminating = api_error(
            403,
            "deployments.apps \"a\" is forbidden: unable to create new content in namespace ns because it is being terminated",
            Some("NamespaceTerminating"),
        );
        assert_eq!(terminating.kind(), ErrorKind::NamespaceTerminating);
        let rbac = api_error(
            403,
            "deployments.apps \"a\" is forbidden: User \"system:serviceaccount:ns:po\" cannot patch resource \"deployments\"",
            None,
        );
        assert_eq!(rbac.kind(), ErrorKind::Forbidden);
        assert!(rbac.kind().is_refusal());
    }

    #[test]
    fn a_403_says_whether_rbac_a_quota_or_admission_refused() {
        // Messages as the API server words them.
        let cases = [
            (
                403,
                "deployments.apps \"a\" is forbidden: exceeded quota: no-deployments, requested: count/deployments.apps=1, used: count/deployments.apps=0, limited: count/deployments.apps=0",
                ErrorKind::QuotaExceeded,
            ),
            (
                403,
                "deployments.apps \"a\" is forbidden: failed quota: compute: must specify limits.cpu for: podinfo",
                ErrorKind::QuotaExceeded,
            ),
            (
                403,
                "deployments.apps \"a\" is forbidden: ValidatingAdmissionPolicy 'no-latest' with binding 'no-latest' denied request: failed expression: object.spec.replicas <= 5",
                ErrorKind::AdmissionDenied,
            ),
            (
                422,
                "deployments.apps \"a\" is invalid: ValidatingAdmissionPolicy 'p' with binding 'b' denied request: nope",
                ErrorKind::AdmissionDenied,
            ),
            (
                403,
                "admission webhook \"deny.example.com\" denied the request: images from this registry are not allowed",
                ErrorKind::AdmissionDenied,
            ),
            (
                400,
                "admission webhook \"validate.example.com\" denied the request: missing team label",
                ErrorKind::AdmissionDenied,
            ),
            (
                403,
                "services \"a\" is forbidden: User \"system:serviceaccount:ns:po\" cannot create resource \"services\" in API group \"\" in the namespace \"ns\"",
                ErrorKind::Forbidden,
            ),
            (
                422,
                "Deployment.apps \"a\" is invalid: spec.replicas: Invalid value: -1",
                ErrorKind::Invalid,
            ),
            (409, "Operation cannot be fulfilled", ErrorKind::Conflict),
            (
                503,
                "the server is currently unable to handle the request",
                ErrorKind::ServerError,
            ),
        ];
        for (code, message, want) in cases {
            assert_eq!(
                api_error(code, message, None).kind(),
                want,
                "{code} {message}"
            );
        }
        assert!(ErrorKind::QuotaExceeded.is_refusal() && ErrorKind::AdmissionDenied.is_refusal());
        assert!(!ErrorKind::NamespaceTerminating.is_refusal());
    }

    #[test]
    fn refusals_are_retried_slowly_and_races_soon() {
        for kind in [
            ErrorKind::Forbidden,
            ErrorKind::QuotaExceeded,
            ErrorKind::AdmissionDenied,
        ] {
            assert_eq!(kind.schedule(), retry::Schedule::REFUSED, "{kind:?}");
        }
        assert_eq!(ErrorKind::Conflict.schedule(), retry::Schedule::SOON);
        assert_eq!(
            ErrorKind::ServerError.schedule(),
            retry::Schedule::TRANSIENT
        );
    }

    #[test]
    fn a_write_the_leader_gate_withheld_is_no_transport_failure() {
        let e = Error::kube("applying", kube::Error::Service(Box::new(NotLeader)));
        assert_eq!(e.kind(), ErrorKind::NotLeader);
    }

    #[test]
    fn error_kinds_are_metric_labels() {
        let metrics = Metrics::default();
        metrics
            .reconcile_errors
            .get_or_create(&ErrorLabels::new("feature", ErrorKind::QuotaExceeded))
            .inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry).expect("encodes");
        assert!(
            text.contains(
                "reconcile_errors_total{controller=\"feature\",kind=\"QuotaExceeded\"} 1"
            ),
            "{text}"
        );
    }
}
