//! Prometheus metrics. Labels are bounded sets (controller, verb, phase, error kind), never
//! object names, so cardinality does not grow with the cluster.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub kind: crate::controller::ErrorKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    pub verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// Every metric the operator exports.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<ControllerLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    pub features_by_phase: Family<PhaseLabels, Gauge>,
    pub dependency_wait: Histogram,
    pub dependency_hop: Histogram,
    pub reconcile_queue: Histogram,
    pub startup_duration: Histogram,
    pub recoveries: Counter,
    pub api_requests: Family<VerbLabels, Counter>,
    pub object_writes: Family<KindLabels, Counter>,
    pub status_writes: Family<KindLabels, Counter>,
    pub leader: Gauge,
}

fn duration_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 16)
}

/// 5 ms to about 40 s in steps of 1.5: fine enough to read a p99 against a 250 ms target.
fn hop_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.005, 1.5, 23)
}

fn wait_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.05, 2.0, 16)
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("premium");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration =
            Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(duration_buckets())
            });
        let features_by_phase = Family::<PhaseLabels, Gauge>::default();
        let dependency_wait = Histogram::new(wait_buckets());
        let dependency_hop = Histogram::new(hop_buckets());
        let reconcile_queue = Histogram::new(hop_buckets());
        let startup_duration = Histogram::new(wait_buckets());
        let recoveries = Counter::default();
        let api_requests = Family::<VerbLabels, Counter>::default();
        let object_writes = Family::<KindLabels, Counter>::default();
        let status_writes = Family::<KindLabels, Counter>::default();
        let leader = Gauge::default();
        registry.register(
            "reconciles",
            "Reconciles run, by controller",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by controller and error kind",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile, by controller",
            reconcile_duration.clone(),
        );
        registry.register(
            "features",
            "PremiumFeatures by phase",
            features_by_phase.clone(),
        );
        registry.register(
            "dependency_wait_seconds",
            "Time from a feature's creation until its dependencies were Ready",
            dependency_wait.clone(),
        );
        registry.register(
            "dependency_hop_seconds",
            "Time from writing the last required dependency's Ready status until the dependent's Deployment was scaled up",
            dependency_hop.clone(),
        );
        registry.register(
            "reconcile_queue_seconds",
            "Time from an event queueing a feature's reconcile until the reconcile started",
            reconcile_queue.clone(),
        );
        registry.register(
            "startup_duration_seconds",
            "Time from scaling a feature up until it was Ready",
            startup_duration.clone(),
        );
        registry.register(
            "recoveries",
            "Automatic rollout restarts of unhealthy features",
            recoveries.clone(),
        );
        registry.register(
            "api_requests",
            "Requests sent to the Kubernetes API, by verb",
            api_requests.clone(),
        );
        registry.register(
            "object_writes",
            "Owned objects applied or deleted, by kind",
            object_writes.clone(),
        );
        registry.register(
            "status_writes",
            "Status patches, by kind",
            status_writes.clone(),
        );
        registry.register(
            "leader",
            "1 while this instance holds the leader lease",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            features_by_phase,
            dependency_wait,
            dependency_hop,
            reconcile_queue,
            startup_duration,
            recoveries,
            api_requests,
            object_writes,
            status_writes,
            leader,
        }
    }
}

impl Metrics {
    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Maps an HTTP request to the Kubernetes verb it performs.
pub fn verb_of(method: &http::Method, uri: &http::Uri) -> &'static str {
    let query = uri.query().unwrap_or("");
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    match *method {
        http::Method::GET if watch => "watch",
        http::Method::GET if is_collection(uri.path()) => "list",
        http::Method::GET => "get",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "other",
    }
}

/// Whether a path names a collection (`…/namespaces/n/pods`) rather than one object.
fn is_collection(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let rest = match parts.first() {
        Some(&"api") => parts.get(2..),
        Some(&"apis") => parts.get(3..),
        _ => None,
    }
    .unwrap_or(&[]);
    let rest = if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        &rest[2..]
    } else {
        rest
    };
    rest.len() == 1
}

/// A tower layer counting every request the client sends, by verb.
pub fn request_counter(
    metrics: Arc<Metrics>,
) -> tower::util::MapRequestLayer<
    impl Fn(http::Request<kube::client::Body>) -> http::Request<kube::client::Body> + Clone,
> {
    tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        let verb = verb_of(req.method(), req.uri());
        metrics
            .api_requests
            .get_or_create(&VerbLabels {
                verb: verb.to_string(),
            })
            .inc();
        req
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs() {
        let uri = |s: &str| s.parse::<http::Uri>().unwrap();
        assert_eq!(
            verb_of(
                &http::Method::GET,
                &uri("/apis/x/v1/foos?watch=true&resourceVersion=1")
            ),
            "watch"
        );
        assert_eq!(
            verb_of(
                &http::Method::GET,
                &uri("/apis/x/v1/foos?labelSelector=a%3Db")
            ),
            "list"
        );
        assert_eq!(
            verb_of(&http::Method::GET, &uri("/apis/x/v1/namespaces/n/foos/a")),
            "get"
        );
        assert_eq!(
            verb_of(&http::Method::GET, &uri("/apis/x/v1/namespaces/n/foos")),
            "list"
        );
        assert_eq!(
            verb_of(&http::Method::GET, &uri("/api/v1/namespaces/n")),
            "get"
        );
        assert_eq!(
            verb_of(&http::Method::GET, &uri("/api/v1/namespaces")),
            "list"
        );
        assert_eq!(
            verb_of(&http::Method::PATCH, &uri("/apis/x/v1/namespaces/n/foos/a")),
            "patch"
        );
    }

    #[test]
    fn exposition_has_no_object_labels() {
        let m = Metrics::default();
        m.reconciles
            .get_or_create(&ControllerLabels {
                controller: "feature",
            })
            .inc();
        let text = m.encode();
        assert!(text.contains("premium_reconciles_total{controller=\"feature\"} 1"));
    }
}
