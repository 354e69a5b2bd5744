//! Prometheus metrics. Labels are bounded sets (controller, verb, status code, phase, error
//! kind), never object names, so cardinality does not grow with the cluster. The operator's own
//! metrics are prefixed `premium_`; the `process_*` ones keep the names every client library
//! uses, so dashboards and alerts written for any process work unchanged.

pub mod process;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

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

/// One API request: its Kubernetes verb and the HTTP status it got, or `<error>` when no
/// response came back (as controller-runtime's `rest_client_requests_total` labels it).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: &'static str,
    pub code: String,
}

/// The version of the running binary, and the git commit it was built from when the build
/// said so (`PREMIUM_GIT_COMMIT` at compile time), for `premium_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
    pub git_commit: &'static str,
}

impl BuildLabels {
    pub fn current() -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION"),
            git_commit: option_env!("PREMIUM_GIT_COMMIT").unwrap_or("unknown"),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: &'static str,
}

/// One API request's Kubernetes verb, for its latency (the status code would multiply the
/// histogram's series for little: the counter above has it).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    pub verb: &'static str,
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
    pub api_requests: Family<RequestLabels, Counter>,
    pub api_request_duration: Family<VerbLabels, Histogram>,
    pub object_writes: Family<KindLabels, Counter>,
    pub status_writes: Family<KindLabels, Counter>,
    pub leader: Gauge,
    /// Reconcile requests queued and not yet started, by controller.
    pub queue_depth: Family<ControllerLabels, Gauge>,
    pub build_info: Family<BuildLabels, Gauge>,
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
        let mut metrics = Self {
            registry: Registry::default(),
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(|| Histogram::new(duration_buckets())),
            features_by_phase: Family::default(),
            dependency_wait: Histogram::new(wait_buckets()),
            dependency_hop: Histogram::new(hop_buckets()),
            reconcile_queue: Histogram::new(hop_buckets()),
            startup_duration: Histogram::new(wait_buckets()),
            recoveries: Counter::default(),
            api_requests: Family::default(),
            api_request_duration: Family::new_with_constructor(|| Histogram::new(hop_buckets())),
            object_writes: Family::default(),
            status_writes: Family::default(),
            leader: Gauge::default(),
            queue_depth: Family::default(),
            build_info: Family::default(),
        };
        metrics
            .build_info
            .get_or_create(&BuildLabels::current())
            .set(1);
        // The process metrics at the root, unprefixed; the operator's own under `premium_`.
        let mut root = Registry::default();
        root.register_collector(Box::new(process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("premium");
        metrics.register_reconcile_metrics(registry);
        metrics.register_io_metrics(registry);
        metrics.registry = root;
        metrics
    }
}

impl Metrics {
    fn register_reconcile_metrics(&self, registry: &mut Registry) {
        registry.register(
            "reconciles",
            "Reconciles run, by controller",
            self.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by controller and error kind",
            self.reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile, by controller",
            self.reconcile_duration.clone(),
        );
        registry.register(
            "features",
            "PremiumFeatures by phase",
            self.features_by_phase.clone(),
        );
        registry.register(
            "dependency_wait_seconds",
            "Time from a feature's creation until its dependencies were Ready",
            self.dependency_wait.clone(),
        );
        registry.register(
            "dependency_hop_seconds",
            "Time from writing the last required dependency's Ready status until the dependent's Deployment was scaled up",
            self.dependency_hop.clone(),
        );
        registry.register(
            "reconcile_queue_seconds",
            "Time from an event queueing a feature's reconcile until the reconcile started",
            self.reconcile_queue.clone(),
        );
        registry.register(
            "startup_duration_seconds",
            "Time from scaling a feature up until it was Ready",
            self.startup_duration.clone(),
        );
        registry.register(
            "recoveries",
            "Automatic rollout restarts of unhealthy features",
            self.recoveries.clone(),
        );
    }

    fn register_io_metrics(&self, registry: &mut Registry) {
        registry.register(
            "api_requests",
            "Requests sent to the Kubernetes API, by verb and HTTP status code (<error>: no response)",
            self.api_requests.clone(),
        );
        registry.register(
            "api_request_duration_seconds",
            "Time from sending a request to the Kubernetes API until its response headers came back, by verb (for a watch: until the stream opened)",
            self.api_request_duration.clone(),
        );
        registry.register(
            "object_writes",
            "Owned objects applied or deleted, by kind",
            self.object_writes.clone(),
        );
        registry.register(
            "status_writes",
            "Status patches, by kind",
            self.status_writes.clone(),
        );
        registry.register(
            "leader",
            "1 while this instance holds the leader lease",
            self.leader.clone(),
        );
        registry.register(
            "queue_depth",
            "Reconcile requests queued and not yet started, by controller",
            self.queue_depth.clone(),
        );
        registry.register(
            "build_info",
            "Always 1; the labels name the running version and the git commit it was built from",
            self.build_info.clone(),
        );
    }
}

impl Metrics {
    /// Reconciles started so far, by every controller.
    pub fn reconciles_started(&self) -> u64 {
        ["feature", "policy"]
            .into_iter()
            .map(|controller| {
                self.reconciles
                    .get_or_create(&ControllerLabels { controller })
                    .get()
            })
            .sum()
    }

    /// Counts one write of an object of `kind` (owned objects, finalizers, cascade deletes).
    pub fn count_write(&self, kind: &'static str) {
        self.object_writes.get_or_create(&KindLabels { kind }).inc();
    }

    /// Sets the number of reconciles `controller` has queued and not yet started.
    pub fn set_queue_depth(&self, controller: &'static str, depth: usize) {
        self.queue_depth
            .get_or_create(&ControllerLabels { controller })
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

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

/// A tower layer counting every request the client sends, by verb and response status.
pub fn request_counter(metrics: Arc<Metrics>) -> RequestCounter {
    RequestCounter { metrics }
}

/// See [`request_counter`].
#[derive(Clone)]
pub struct RequestCounter {
    metrics: Arc<Metrics>,
}

impl<S> tower::Layer<S> for RequestCounter {
    type Service = CountedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountedService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`RequestCounter`] wraps around the client's stack.
#[derive(Clone)]
pub struct CountedService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// The `code` label of a finished request: its status, or `<error>` when none came back.
pub fn code_of<B, E>(result: &Result<http::Response<B>, E>) -> String {
    match result {
        Ok(response) => response.status().as_u16().to_string(),
        Err(_) => "<error>".to_string(),
    }
}

impl<S, B, RB> tower::Service<http::Request<B>> for CountedService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let verb = verb_of(req.method(), req.uri());
        let metrics = self.metrics.clone();
        let sent = std::time::Instant::now();
        let response = self.inner.call(req);
        Box::pin(async move {
            let result = response.await;
            metrics
                .api_request_duration
                .get_or_create(&VerbLabels { verb })
                .observe(sent.elapsed().as_secs_f64());
            let labels = RequestLabels {
                verb,
                code: code_of(&result),
            };
            metrics.api_requests.get_or_create(&labels).inc();
            result
        })
    }
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

    /// Requests answered 200 and 404, and one that got no answer, are counted under their code.
    #[tokio::test]
    async fn requests_are_counted_by_verb_and_status_code() {
        use tower::{Layer as _, ServiceExt as _};
        let metrics = Arc::new(Metrics::default());
        let inner = tower::service_fn(|req: http::Request<()>| async move {
            match req.uri().path() {
                "/api/v1/namespaces/n/configmaps/gone" => Ok(http::Response::builder()
                    .status(404)
                    .body(())
                    .expect("response")),
                "/api/v1/namespaces/n/configmaps/down" => Err("connection refused"),
                _ => Ok(http::Response::new(())),
            }
        });
        let service = request_counter(metrics.clone()).layer(inner);
        for (method, path) in [
            (http::Method::GET, "/api/v1/namespaces/n/configmaps/a"),
            (http::Method::GET, "/api/v1/namespaces/n/configmaps/gone"),
            (http::Method::PATCH, "/api/v1/namespaces/n/configmaps/down"),
            (http::Method::GET, "/api/v1/namespaces/n/configmaps/b"),
        ] {
            let req = http::Request::builder()
                .method(method)
                .uri(path)
                .body(())
                .expect("request");
            let _ = service.clone().oneshot(req).await;
        }
        let text = metrics.encode();
        for line in [
            "premium_api_requests_total{verb=\"get\",code=\"200\"} 2",
            "premium_api_requests_total{verb=\"get\",code=\"404\"} 1",
            "premium_api_requests_total{verb=\"patch\",code=\"<error>\"} 1",
            "premium_api_request_duration_seconds_count{verb=\"get\"} 3",
            "premium_api_request_duration_seconds_count{verb=\"patch\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
    }

    #[test]
    fn build_info_queue_depth_and_process_metrics_are_exported() {
        let m = Metrics::default();
        m.queue_depth
            .get_or_create(&ControllerLabels {
                controller: "feature",
            })
            .set(3);
        let text = m.encode();
        let build = format!(
            "premium_build_info{{version=\"{}\",git_commit=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            option_env!("PREMIUM_GIT_COMMIT").unwrap_or("unknown")
        );
        for line in [
            build.as_str(),
            "# TYPE premium_build_info gauge",
            "premium_queue_depth{controller=\"feature\"} 3",
            "# TYPE process_cpu_seconds counter",
            "# TYPE process_resident_memory_bytes gauge",
            "# TYPE process_start_time_seconds gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        // The process metrics keep their standard names: no operator prefix.
        assert!(!text.contains("premium_process_"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    /// docs/metrics.md has a row for every metric family the operator exports, and no row for
    /// one it does not.
    #[test]
    fn docs_table_lists_every_metric() {
        let m = Metrics::default();
        // A family shows in the exposition once it has a series: give each one.
        let feature = ControllerLabels {
            controller: "feature",
        };
        m.reconciles.get_or_create(&feature).inc();
        m.reconcile_duration.get_or_create(&feature).observe(0.1);
        m.queue_depth.get_or_create(&feature).set(0);
        m.reconcile_errors
            .get_or_create(&ErrorLabels {
                controller: "feature",
                kind: crate::controller::ErrorKind::Conflict,
            })
            .inc();
        m.features_by_phase
            .get_or_create(&PhaseLabels { phase: "Ready" })
            .set(1);
        m.api_requests
            .get_or_create(&RequestLabels {
                verb: "get",
                code: "200".into(),
            })
            .inc();
        m.api_request_duration
            .get_or_create(&VerbLabels { verb: "get" })
            .observe(0.01);
        m.object_writes
            .get_or_create(&KindLabels { kind: "Deployment" })
            .inc();
        m.status_writes
            .get_or_create(&KindLabels {
                kind: "PremiumFeature",
            })
            .inc();
        let exported: std::collections::BTreeSet<String> = m
            .encode()
            .lines()
            .filter_map(|l| {
                let mut words = l.strip_prefix("# TYPE ")?.split(' ');
                let name = words.next()?;
                Some(match words.next()? {
                    "counter" => format!("{name}_total"),
                    _ => name.to_string(),
                })
            })
            .collect();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md");
        let docs = std::fs::read_to_string(path).expect("docs/metrics.md");
        let table = docs
            .split("## Every metric")
            .nth(1)
            .and_then(|t| t.split("\n## ").next())
            .expect("docs/metrics.md has the metrics table");
        let documented: std::collections::BTreeSet<String> = table
            .lines()
            .filter(|l| l.starts_with("| `"))
            .filter_map(|l| l.split('|').nth(1))
            .flat_map(|cell| {
                cell.split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(documented, exported, "docs/metrics.md vs /metrics");
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
