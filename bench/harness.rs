//! The convergence benchmark, shared by `make bench` (benches/convergence.rs, release build)
//! and its smoke test in `make test` (tests/bench_smoke.rs, N=20).
//!
//! One size runs, against the local control plane:
//! 1. three baselines, hand-written clients working level by level, waiting for each level's
//!    Deployments to be Available before the next: the objects the operator writes (ConfigMap,
//!    Service, Deployment, HPA per feature, built by the operator's own builders); the same
//!    under the gating rule (every zero-replica Deployment first); and every write the operator
//!    makes, finalizer, statuses and Events included ([`same_writes_baseline`]);
//! 2. the operator, started fresh and scoped to its own namespace, on N PremiumFeatures in a
//!    10-level graph under a policy with a budget: convergence (first apply to all Ready), API
//!    requests and writes from its `/metrics`, dependency hop latency from watch events seen
//!    here, steady-state writes, a spec change to every feature, a restart, and RSS;
//! 3. for every run, the CPU time each process of the machine used ([`CpuTimes`]).
//!
//! The crate that includes this file must also have the test `support` module at its root.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, EnvVar, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::runtime::wait::Condition;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use premium_operator::api::conditions::reason;
use premium_operator::api::{
    BlockedBy, Budget, Dependency, FeaturePool, HealthCheck, Phase, PolicyPool, PremiumFeature,
    PremiumFeatureSpec, PremiumFeatureStatus, PremiumPolicy, PremiumPolicySpec,
};
use premium_operator::cli::check::quantity_value;
use premium_operator::controller::FINALIZER;
use premium_operator::core::build::{self, FeaturePlan};
use premium_operator::core::decide::{
    self, BudgetShare, DependencyInfo, Inputs, Recalled, decide, phase_event,
};
use premium_operator::core::graph::FeatureKey;
use premium_operator::core::plan::{self, DependencyView, GraphView};
use premium_operator::core::policy::effective_policy;
use premium_operator::core::status::{
    DeploymentHealth, Observation, feature_status, is_ready, now_time,
};
use serde::Serialize;

use crate::support::operator::{Operator, ensure_crds};
use crate::support::{FIELD_MANAGER, TestNamespace, deployment_available};

/// Levels of the dependency graph.
pub const LEVELS: usize = 10;
const IMAGE: &str = "ghcr.io/stefanprodan/podinfo:6.7.1";
const TIER: &str = "bench";
/// Requests the bench itself keeps in flight when it creates or changes objects.
const IN_FLIGHT: usize = 16;

/// From this size on, only the gated baseline (the one the convergence bars compare with) runs
/// beside the operator unless asked for all: the plain and the same-writes baselines would add
/// about an hour at 10,000 on the bench machine.
pub const GATED_ONLY_FROM: usize = 5_000;

/// What to run for one size.
#[derive(Debug, Clone)]
pub struct Options {
    pub size: usize,
    pub seed: u64,
    /// How long to watch for writes once everything is Ready.
    pub steady_window: Duration,
    /// Longest wait for any one phase (convergence, change, teardown).
    pub timeout: Duration,
    pub baseline: bool,
    /// With `baseline`: the plain and same-writes baselines too, not only the gated one.
    pub every_baseline: bool,
    /// Install the chart's finalizer policy for the operator's and the same-writes client's
    /// namespaces (see [`FinalizerPolicy`]); off: the operator adds its finalizer itself.
    pub finalizer_at_admission: bool,
    /// Change every feature's spec once converged and measure the rollout; off saves most of
    /// an hour at 10,000.
    pub change: bool,
}

impl Options {
    pub fn new(size: usize) -> Self {
        Self {
            size,
            seed: 42,
            steady_window: Duration::from_secs(60),
            timeout: Duration::from_secs(60 + size as u64 / 2),
            baseline: true,
            every_baseline: size < GATED_ONLY_FROM,
            finalizer_at_admission: true,
            change: true,
        }
    }
}

/// One feature of the workload: its name and the names it depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub deps: Vec<String>,
}

/// `size` features in [`LEVELS`] levels; each feature below the top depends on 1-3 features
/// of the level above, chosen by a seeded generator (same seed, same graph).
pub fn workload(size: usize, seed: u64) -> Vec<Vec<Node>> {
    let mut rng = SplitMix(seed);
    let levels = LEVELS.min(size.max(1));
    let mut out: Vec<Vec<Node>> = Vec::with_capacity(levels);
    for level in 0..levels {
        let count = size / levels + usize::from(level < size % levels);
        let above: Vec<String> = out
            .last()
            .map(|l| l.iter().map(|n| n.name.clone()).collect())
            .unwrap_or_default();
        let nodes = (0..count)
            .map(|i| {
                let mut deps = Vec::new();
                if !above.is_empty() {
                    let want = 1 + (rng.next() % 3) as usize;
                    while deps.len() < want.min(above.len()) {
                        let d = above[(rng.next() % above.len() as u64) as usize].clone();
                        if !deps.contains(&d) {
                            deps.push(d);
                        }
                    }
                }
                Node {
                    name: format!("l{level}-{i:05}"),
                    deps,
                }
            })
            .collect();
        out.push(nodes);
    }
    out
}

/// splitmix64: small, seeded, and the same on every platform and crate version.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn feature(node: &Node, namespace: &str) -> PremiumFeature {
    let mut f = PremiumFeature::new(
        &node.name,
        PremiumFeatureSpec {
            image: IMAGE.into(),
            port: 9898,
            health_check: Some(HealthCheck {
                path: "/readyz".into(),
                ..Default::default()
            }),
            depends_on: node
                .deps
                .iter()
                .map(|d| Dependency {
                    name: d.clone(),
                    ..Default::default()
                })
                .collect(),
            pool: Some(FeaturePool {
                min_replicas: Some(1),
                max_replicas: Some(2),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    f.metadata.namespace = Some(namespace.into());
    f.metadata.labels = Some([("tier".to_string(), TIER.to_string())].into());
    f
}

/// The policy of the workload: selects every feature, with a shared budget that holds every
/// feature's maximum (so the allocation runs on every decision but never holds one back).
fn policy(size: usize, namespace: &str) -> PremiumPolicy {
    let mut p = PremiumPolicy::new(
        "bench",
        PremiumPolicySpec {
            selector: LabelSelector {
                match_labels: Some([("tier".to_string(), TIER.to_string())].into()),
                ..Default::default()
            },
            priority: 100,
            pool: Some(PolicyPool {
                budget: Some(Budget {
                    max_replicas: i32::try_from(2 * size).unwrap_or(i32::MAX),
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    p.metadata.namespace = Some(namespace.into());
    p
}

/// Everything measured for one size; field names are those of `results.json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Results {
    pub size: usize,
    pub levels: usize,
    pub seed: u64,
    pub baseline_seconds: Option<f64>,
    /// The baseline that also writes every feature's zero-replica Deployment, ConfigMap and
    /// Service first, as the gating rule asks (see [`baseline`]).
    pub gated_baseline_seconds: Option<f64>,
    /// The baseline that makes every write the operator makes, finalizer, statuses and
    /// Events included (see [`same_writes_baseline`]), and its requests per feature.
    pub same_writes_baseline_seconds: Option<f64>,
    pub same_writes_baseline_requests_per_feature: Option<f64>,
    /// Whether the chart's finalizer policy gave new features the finalizer at create (for
    /// the operator's run and the same-writes client), so neither wrote it.
    pub finalizer_at_admission: bool,
    /// The operator's writes of PremiumFeature objects (its finalizer) until convergence.
    pub finalizer_writes: u64,
    pub convergence_seconds: f64,
    pub ratio_to_baseline: Option<f64>,
    pub ratio_to_gated_baseline: Option<f64>,
    pub ratio_to_same_writes_baseline: Option<f64>,
    /// Requests the operator sent from its start until convergence, by verb.
    pub api_requests: BTreeMap<String, u64>,
    /// The same, all verbs but watch, per feature.
    pub requests_per_feature: f64,
    pub object_writes: u64,
    pub status_writes: u64,
    pub writes_per_feature: f64,
    pub status_writes_per_feature: f64,
    pub reconciles_per_feature: f64,
    pub hop_samples: usize,
    pub hop_p50_ms: f64,
    pub hop_p99_ms: f64,
    pub hop_max_ms: f64,
    /// The same hop timed inside the operator (its Ready write → its scale-up write), without
    /// the bench's watch delays: `premium_dependency_hop_seconds`, bucketed.
    pub operator_hop_samples: u64,
    pub operator_hop_p50_ms: Option<f64>,
    pub operator_hop_p99_ms: Option<f64>,
    /// Where the operator's time goes: from an event queueing a feature's reconcile until it
    /// starts (`premium_reconcile_queue_seconds`), and a feature reconcile's own duration.
    pub queue_wait_p50_ms: Option<f64>,
    pub queue_wait_p99_ms: Option<f64>,
    pub reconcile_p50_ms: Option<f64>,
    pub reconcile_p99_ms: Option<f64>,
    /// The operator's PATCH requests, from sending until the response
    /// (`premium_api_request_duration_seconds{verb="patch"}`): a hop contains at least one,
    /// so their p99 is the floor under the hop's on this machine.
    pub api_patch_p50_ms: Option<f64>,
    pub api_patch_p99_ms: Option<f64>,
    /// Where the rest of a level's time goes: the dependent's Deployment scaled up → its
    /// Deployment Available (the cluster's own rollout), and Available → the feature Ready
    /// (the operator noticing and writing status). p50 / p99 over all features.
    pub rollout_p50_ms: f64,
    pub rollout_p99_ms: f64,
    pub report_p50_ms: f64,
    pub report_p99_ms: f64,
    pub steady_window_seconds: f64,
    pub steady_writes: u64,
    /// Requests other than watches during the steady window (polling shows up here).
    pub steady_api_requests: u64,
    /// A spec change to every feature (one env var): what it cost, per feature; `None` when
    /// the run skipped it (`--no-change`).
    pub change_seconds: Option<f64>,
    pub change_reconciles_per_feature: Option<f64>,
    pub change_status_writes_per_feature: Option<f64>,
    pub change_object_writes_per_feature: Option<f64>,
    /// A fresh operator over the converged namespace: what it wrote and how long it took.
    pub restart_writes: u64,
    pub restart_reconciles_per_feature: f64,
    pub restart_settle_seconds: f64,
    /// The fresh operator's API requests by verb from its start until it settled, its peak
    /// RSS, and against them the list-and-watch cost alone: how long one client takes to list
    /// every kind the operator watches in the namespace (PremiumFeatures, PremiumPolicies and
    /// the four owned kinds), once.
    pub restart_api_requests: BTreeMap<String, u64>,
    pub restart_rss_peak_mib: f64,
    pub restart_list_seconds: f64,
    pub rss_peak_mib: f64,
    pub rss_steady_mib: f64,
    /// CPU seconds (user + system) each process used while each run converged, by process:
    /// the local control plane's (kube-apiserver, etcd, kube-controller-manager,
    /// kube-scheduler, kwok, from the cluster's pid files), the operator's and the bench's
    /// own. Empty when the pid files are not found (a cluster not started by
    /// hack/cluster-up.sh). With `cores`, they show whether the machine was the limit.
    pub baseline_cpu_seconds: BTreeMap<String, f64>,
    pub gated_baseline_cpu_seconds: BTreeMap<String, f64>,
    pub same_writes_baseline_cpu_seconds: BTreeMap<String, f64>,
    pub operator_cpu_seconds: BTreeMap<String, f64>,
    pub cores: usize,
}

/// `/metrics` of an operator, as `name{labels}` → value.
#[derive(Debug, Clone, Default)]
pub struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    pub fn take(op: &Operator) -> anyhow::Result<Self> {
        let text = op.metrics()?;
        let body = text.split("\r\n\r\n").nth(1).unwrap_or(&text);
        Ok(Self::parse(body))
    }

    /// Parses Prometheus text exposition (sample lines; comments skipped).
    pub fn parse(body: &str) -> Self {
        Self(
            body.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (k, v) = l.rsplit_once(' ')?;
                    Some((k.to_string(), v.parse().ok()?))
                })
                .collect(),
        )
    }

    /// Sum of the samples of one metric family (`name` or `name{...}`).
    pub fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| {
                k.as_str() == name || k.strip_prefix(name).is_some_and(|r| r.starts_with('{'))
            })
            .map(|(_, v)| v)
            .sum()
    }

    fn get(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(0.0)
    }

    pub fn writes(&self) -> f64 {
        self.sum("premium_object_writes_total") + self.sum("premium_status_writes_total")
    }

    pub fn feature_reconciles(&self) -> f64 {
        self.get("premium_reconciles_total{controller=\"feature\"}")
    }

    /// Writes of the PremiumFeature object itself (the finalizer).
    pub fn feature_object_writes(&self) -> f64 {
        self.get("premium_object_writes_total{kind=\"PremiumFeature\"}")
    }

    pub fn feature_status_writes(&self) -> f64 {
        self.get("premium_status_writes_total{kind=\"PremiumFeature\"}")
    }

    /// The `q` quantile of histogram `name` over the observations made between `before` and
    /// this scrape, interpolated linearly inside its bucket as Prometheus' `histogram_quantile`
    /// does; `None` without observations.
    pub fn quantile_since(&self, before: &Scrape, name: &str, q: f64) -> Option<f64> {
        self.series_quantile_since(before, name, None, q)
    }

    /// [`quantile_since`](Self::quantile_since) for the series of a labelled histogram that
    /// carries `label` (e.g. `controller="feature"`), wherever it sits among the labels.
    pub fn series_quantile_since(
        &self,
        before: &Scrape,
        name: &str,
        label: Option<&str>,
        q: f64,
    ) -> Option<f64> {
        let prefix = format!("{name}_bucket{{");
        let mut buckets: Vec<(f64, f64)> = self
            .0
            .iter()
            .filter_map(|(k, v)| {
                let labels = k.strip_prefix(&prefix)?.strip_suffix('}')?;
                let labels: Vec<&str> = labels.split(',').collect();
                if let Some(label) = label
                    && !labels.contains(&label)
                {
                    return None;
                }
                let le = labels
                    .iter()
                    .find_map(|l| l.strip_prefix("le=\"")?.strip_suffix('"'))?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, v - before.get(k)))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for (le, cumulative) in buckets {
            if cumulative >= rank {
                if le.is_infinite() {
                    return Some(lower);
                }
                let inside = cumulative - below;
                let fraction = if inside > 0.0 {
                    (rank - below) / inside
                } else {
                    1.0
                };
                return Some(lower + (le - lower) * fraction);
            }
            (lower, below) = (le, cumulative);
        }
        Some(lower)
    }

    /// API requests by verb, whatever their status code (`{verb="get",code="200"}`).
    pub fn by_verb(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (k, v) in &self.0 {
            let Some(rest) = k.strip_prefix("premium_api_requests_total{verb=\"") else {
                continue;
            };
            let Some((verb, _)) = rest.split_once('"') else {
                continue;
            };
            *out.entry(verb.to_string()).or_insert(0.0) += *v;
        }
        out
    }
}

/// Current and peak resident memory of a process, in MiB (VmRSS, VmHWM).
pub fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.split_whitespace().next()?.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .unwrap_or(0.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU time used so far (user + system, seconds) by the local control plane's processes, the
/// operator (when given) and this process, by name.
#[derive(Debug, Clone, Default)]
pub struct CpuTimes(BTreeMap<String, f64>);

impl CpuTimes {
    pub fn take(operator: Option<u32>) -> Self {
        let mut pids: Vec<(String, u32)> = Vec::new();
        let dir = crate::support::kubeconfig_path()
            .parent()
            .map(|d| d.join("pids"))
            .unwrap_or_default();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let path = e.path();
                let (Some(name), Some(pid)) = (
                    path.file_name()
                        .and_then(|n| n.to_str()?.strip_suffix(".pid"))
                        .map(str::to_string),
                    std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|s| s.trim().parse::<u32>().ok()),
                ) else {
                    continue;
                };
                pids.push((name, pid));
            }
        }
        if pids.is_empty() {
            // Not a cluster from hack/cluster-up.sh: nothing to compare with.
            return Self::default();
        }
        pids.extend(operator.map(|p| ("operator".to_string(), p)));
        pids.push(("bench".to_string(), std::process::id()));
        let tick = clock_ticks_per_second();
        Self(
            pids.into_iter()
                .filter_map(|(name, pid)| Some((name, cpu_ticks(pid)? as f64 / tick)))
                .collect(),
        )
    }

    /// Seconds used since `earlier`, by process (those seen both times).
    pub fn since(&self, earlier: &Self) -> BTreeMap<String, f64> {
        self.0
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v - earlier.0.get(k)?)))
            .collect()
    }
}

/// utime + stime from `/proc/<pid>/stat` (fields 14 and 15; the command name before them may
/// hold spaces, so fields are counted after its closing parenthesis).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, index 11.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

fn ready_endpoint(op: &Operator) -> bool {
    let probe = || -> std::io::Result<bool> {
        let mut s = TcpStream::connect(("127.0.0.1", op.metrics_port))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"))
    };
    probe().unwrap_or(false)
}

async fn start_operator(namespace: &str) -> anyhow::Result<Operator> {
    let op = Operator::start(Some(namespace), &[])?;
    op.wait_serving(Duration::from_secs(30)).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready_endpoint(&op) {
        if Instant::now() > deadline {
            bail!(
                "operator not ready (caches synced) within 60s; log:\n{}",
                op.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(op)
}

/// First time (seen here) each object met a predicate, by name.
type Seen = Arc<Mutex<HashMap<String, Instant>>>;

/// Watches a namespace's objects of one kind and records, per name, when `pred` first held.
fn record_first<K, F>(api: Api<K>, pred: F) -> (Seen, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    F: Fn(&K) -> bool + Send + 'static,
{
    let seen: Seen = Arc::default();
    let task = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects();
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                let Ok(obj) = ev else { continue };
                if pred(&obj) {
                    let now = Instant::now();
                    seen.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(obj.name_any())
                        .or_insert(now);
                }
            }
        })
    };
    (seen, task)
}

fn feature_ready(f: &PremiumFeature) -> bool {
    is_ready(f.status.as_ref(), f.metadata.generation)
}

fn scaled_up(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.replicas)
        .is_some_and(|r| r > 0)
}

async fn wait_count(
    what: &str,
    seen: &Seen,
    want: usize,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        {
            let s = seen.lock().unwrap_or_else(|e| e.into_inner());
            if s.len() >= want {
                return Ok(s.values().max().copied().unwrap_or_else(Instant::now));
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what}: {}/{want}",
                    s.len()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The spec of the chart's MutatingAdmissionPolicy that gives a new PremiumFeature the
/// operator's finalizer as it is created (one request of the operator's less per feature).
const FINALIZER_POLICY: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/charts/premium-operator/files/teardown-finalizer-policy.yaml"
));

fn admission_api(client: &Client, kind: &str, plural: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind);
    Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(&gvk, plural),
    )
}

/// The chart's finalizer policy (charts/premium-operator/files/teardown-finalizer-policy.yaml,
/// the same file the chart renders), bound to one namespace while a run lasts, so a run
/// measures what the chart installs. [`FinalizerPolicy::remove`] takes it away again.
pub struct FinalizerPolicy {
    client: Client,
    name: String,
}

impl FinalizerPolicy {
    /// Installs the policy for `namespace` and waits until the API server applies it (a
    /// dry-run create comes back with the finalizer).
    pub async fn install(client: &Client, namespace: &str) -> anyhow::Result<Self> {
        let name = format!("premium-bench-finalizer-{namespace}");
        let spec: serde_json::Value = serde_yaml::from_str(FINALIZER_POLICY)
            .context("charts/premium-operator/files/teardown-finalizer-policy.yaml")?;
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let policy = serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": spec,
        });
        let binding = serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "matchResources": {"namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": namespace},
                }},
            },
        });
        let installed = Self {
            client: client.clone(),
            name: name.clone(),
        };
        installed
            .policies()
            .patch(&name, &params, &Patch::Apply(&policy))
            .await
            .context(
                "installing the finalizer policy (MutatingAdmissionPolicy, Kubernetes 1.36)",
            )?;
        installed
            .bindings()
            .patch(&name, &params, &Patch::Apply(&binding))
            .await?;
        let features: Api<PremiumFeature> = Api::namespaced(client.clone(), namespace);
        let probe = feature(
            &Node {
                name: "finalizer-probe".into(),
                deps: Vec::new(),
            },
            namespace,
        );
        let dry_run = kube::api::PostParams {
            dry_run: true,
            ..Default::default()
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let created = features.create(&dry_run, &probe).await?;
            if created.finalizers().iter().any(|f| f == FINALIZER) {
                return Ok(installed);
            }
            if Instant::now() > deadline {
                bail!("the finalizer policy {name} did not take effect within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn policies(&self) -> Api<DynamicObject> {
        admission_api(
            &self.client,
            "MutatingAdmissionPolicy",
            "mutatingadmissionpolicies",
        )
    }

    fn bindings(&self) -> Api<DynamicObject> {
        admission_api(
            &self.client,
            "MutatingAdmissionPolicyBinding",
            "mutatingadmissionpolicybindings",
        )
    }

    pub async fn remove(self) -> anyhow::Result<()> {
        self.bindings()
            .delete(&self.name, &DeleteParams::default())
            .await?;
        self.policies()
            .delete(&self.name, &DeleteParams::default())
            .await?;
        Ok(())
    }
}

/// The baseline: the same objects, applied level by level by a plain client. Returns the time
/// from its first write until the last level's Deployments are Available, and the CPU time the
/// machine's processes used meanwhile.
///
/// `gated`: the client also honours the operator's gating rule (docs/design.md "Gating": while its
/// dependencies are not Ready a feature's Deployment exists with zero replicas): it first
/// writes every feature's ConfigMap, Service and zero-replica Deployment, then scales level by
/// level. That is the limit for the job as specified, with the writes it costs.
pub async fn baseline(
    client: &Client,
    levels: &[Vec<Node>],
    gated: bool,
) -> anyhow::Result<(Duration, BTreeMap<String, f64>)> {
    let ns = TestNamespace::new(client, "bench-base").await?;
    let namespace = ns.name().to_string();
    let pol = policy(levels.iter().map(Vec::len).sum(), &namespace);
    let deployments: Api<Deployment> = ns.api();
    let (available, watch) = record_first(deployments.clone(), |d: &Deployment| {
        scaled_up(d) && deployment_available().matches_object(Some(d))
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let write = |node: &Node, held: bool| {
        let f = feature(node, &namespace);
        let client = client.clone();
        let namespace = namespace.clone();
        let pol = pol.clone();
        let params = params.clone();
        async move {
            let mut plan = plan_for(&f, &namespace, &pol);
            if held {
                plan.replicas = 0;
                plan.autoscale = false;
            }
            let deploy = build::deployment(&f, &plan);
            let hpa = build::hpa(&f, &plan).filter(|_| !held);
            // Written before: only the Deployment (scaled up) and the HPA are left.
            if held || !gated {
                let cm = build::sidecar_configmap(&f, &plan);
                let svc = build::service(&f);
                Api::<ConfigMap>::namespaced(client.clone(), &namespace)
                    .patch(&cm.name_any(), &params, &Patch::Apply(&cm))
                    .await?;
                Api::<Service>::namespaced(client.clone(), &namespace)
                    .patch(&svc.name_any(), &params, &Patch::Apply(&svc))
                    .await?;
            }
            Api::<Deployment>::namespaced(client.clone(), &namespace)
                .patch(&deploy.name_any(), &params, &Patch::Apply(&deploy))
                .await?;
            if let Some(h) = hpa {
                Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), &namespace)
                    .patch(&h.name_any(), &params, &Patch::Apply(&h))
                    .await?;
            }
            anyhow::Ok(())
        }
    };
    let cpu = CpuTimes::take(None);
    let started = Instant::now();
    let outcome: anyhow::Result<()> = async {
        if gated {
            in_flight(levels.iter().flatten().map(|node| write(node, true))).await?;
        }
        let mut done = 0;
        for level in levels {
            in_flight(level.iter().map(|node| write(node, false))).await?;
            done += level.len();
            // Each level's Deployments are Available before the next level starts.
            wait_count(
                "baseline Deployments to be Available",
                &available,
                done,
                Duration::from_secs(600),
            )
            .await?;
        }
        Ok(())
    }
    .await;
    let elapsed = started.elapsed();
    let cpu = CpuTimes::take(None).since(&cpu);
    watch.abort();
    ns.delete().await?;
    outcome?;
    // The namespace controller deleting thousands of objects and pods would load the API
    // server during the next measurement: it starts once they are gone.
    namespace_gone(client, &namespace, Duration::from_secs(600)).await?;
    Ok((elapsed, cpu))
}

/// Runs `jobs`, [`IN_FLIGHT`] at a time; the first error ends the rest.
async fn in_flight<F>(jobs: impl Iterator<Item = F>) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    futures::stream::iter(jobs)
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await
        .map(|_| ())
}

/// What the same-writes baseline measured.
pub struct SameWrites {
    pub elapsed: Duration,
    pub cpu: BTreeMap<String, f64>,
    /// Requests it sent per feature, besides applying the PremiumFeature itself.
    pub requests_per_feature: f64,
}

/// The client behind the same-writes baseline: one namespace, and what it wrote so far.
struct SameWritesClient<'a> {
    client: &'a Client,
    namespace: String,
    features: Api<PremiumFeature>,
    policy: PremiumPolicy,
    params: PatchParams,
    source: build::EventSource,
    /// Per feature: its reference for Events, and the last status written.
    written: Mutex<
        HashMap<
            String,
            (
                k8s_openapi::api::core::v1::ObjectReference,
                Option<PremiumFeatureStatus>,
            ),
        >,
    >,
    requests: AtomicU64,
    /// Per feature: the feature and what the operator decides for it once its dependencies are
    /// Ready, built before the clock starts (the Envoy config is rendered once, not per step).
    plans: HashMap<String, (PremiumFeature, FeaturePlan)>,
}

impl SameWritesClient<'_> {
    fn sent(&self, n: u64) {
        self.requests.fetch_add(n, Ordering::Relaxed);
    }

    fn plan(&self, node: &Node) -> anyhow::Result<&(PremiumFeature, FeaturePlan)> {
        self.plans
            .get(&node.name)
            .with_context(|| format!("no plan for {}", node.name))
    }

    /// A status from the operator's own calculator, after the last one written, and its Event
    /// when the phase changed, by the operator's rule.
    async fn status(&self, name: &str, o: Observation) -> anyhow::Result<()> {
        let (reference, previous) = self
            .written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .context("status before the feature")?;
        let new = feature_status(previous.as_ref(), &o, &now_time());
        let patch = serde_json::json!({
            "apiVersion": "premium.dev/v1alpha1",
            "kind": "PremiumFeature",
            "status": &new,
        });
        self.features
            .patch_status(name, &self.params, &Patch::Apply(&patch))
            .await?;
        self.sent(1);
        // The operator's own rule: which phase change has an Event, and what it says.
        if let Some(note) = phase_event(previous.as_ref(), &new) {
            let event = build::event(
                reference.clone(),
                note.warning,
                note.reason,
                &note.message,
                &self.source,
                k8s_openapi::jiff::Timestamp::now(),
            );
            Api::<k8s_openapi::api::events::v1::Event>::namespaced(
                self.client.clone(),
                &self.namespace,
            )
            .create(&Default::default(), &event)
            .await?;
            self.sent(1);
        }
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), (reference, Some(new)));
        Ok(())
    }

    fn observation(&self, level: usize, plan: &FeaturePlan) -> Observation {
        Observation {
            generation: Some(1),
            startup_level: u32::try_from(level).ok(),
            policies: vec![self.policy.name_any()],
            sidecar_config_hash: Some(plan.sidecar.config_hash.clone()),
            ..Default::default()
        }
    }

    /// Everything before the gate opens: the feature, the finalizer, the held objects and,
    /// below the top level, a status naming what it waits for.
    async fn first(&self, level: usize, node: &Node) -> anyhow::Result<()> {
        let (f, plan) = self.plan(node)?;
        let created = self
            .features
            .patch(&node.name, &self.params, &Patch::Apply(f))
            .await?;
        // As the operator does: only when the finalizer policy did not add it at create.
        if !created.finalizers().iter().any(|f| f == FINALIZER) {
            let finalizer = serde_json::json!({
                "metadata": {
                    "finalizers": [FINALIZER],
                    "resourceVersion": created.resource_version(),
                }
            });
            self.features
                .patch(
                    &node.name,
                    &PatchParams::default(),
                    &Patch::Merge(&finalizer),
                )
                .await?;
            self.sent(1);
        }
        let mut plan = plan.clone();
        plan.replicas = 0;
        plan.autoscale = false;
        let objects = decide::objects(f, &plan);
        let (cm, svc, deploy) = (objects.configmap, objects.service, objects.deployment);
        Api::<ConfigMap>::namespaced(self.client.clone(), &self.namespace)
            .patch(&cm.name_any(), &self.params, &Patch::Apply(&cm))
            .await?;
        Api::<Service>::namespaced(self.client.clone(), &self.namespace)
            .patch(&svc.name_any(), &self.params, &Patch::Apply(&svc))
            .await?;
        Api::<Deployment>::namespaced(self.client.clone(), &self.namespace)
            .patch(&deploy.name_any(), &self.params, &Patch::Apply(&deploy))
            .await?;
        self.sent(3);
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node.name.clone(), (created.object_ref(&()), None));
        if !node.deps.is_empty() {
            let mut o = self.observation(level, &plan);
            o.deployment = Some(DeploymentHealth::default());
            o.blocked_by = node
                .deps
                .iter()
                .map(|d| BlockedBy {
                    name: d.clone(),
                    reason: reason::DEPENDENCY_NOT_READY.into(),
                    message: format!("{d} is not Ready yet"),
                })
                .collect();
            self.status(&node.name, o).await?;
        }
        Ok(())
    }

    /// The gate opens: the Deployment scaled up, the HPA, and the Starting status.
    async fn scale(&self, level: usize, node: &Node) -> anyhow::Result<()> {
        let (f, plan) = self.plan(node)?;
        let objects = decide::objects(f, plan);
        let deploy = objects.deployment;
        Api::<Deployment>::namespaced(self.client.clone(), &self.namespace)
            .patch(&deploy.name_any(), &self.params, &Patch::Apply(&deploy))
            .await?;
        if let Some(h) = objects.hpa {
            Api::<HorizontalPodAutoscaler>::namespaced(self.client.clone(), &self.namespace)
                .patch(&h.name_any(), &self.params, &Patch::Apply(&h))
                .await?;
            self.sent(1);
        }
        self.sent(1);
        let mut o = self.observation(level, plan);
        o.deployment = Some(DeploymentHealth {
            observed_current: true,
            desired: plan.replicas,
            ..Default::default()
        });
        o.started_at = Some(now_time());
        self.status(&node.name, o).await
    }

    /// The Deployment is Available: the Ready status.
    async fn ready(&self, level: usize, node: &Node) -> anyhow::Result<()> {
        let (_, plan) = self.plan(node)?;
        let mut o = self.observation(level, plan);
        o.deployment = Some(DeploymentHealth::rolled_out(plan.replicas));
        o.started_at = self
            .written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&node.name)
            .and_then(|(_, s)| s.as_ref()?.started_at.clone());
        self.status(&node.name, o).await
    }
}

/// The same-writes baseline: a client that makes the writes the operator makes for this job,
/// in the order it makes them, with none of its watching and deciding. First, 16 in flight in
/// level order, per feature: the PremiumFeature, the operator's finalizer, the ConfigMap,
/// Service and zero-replica Deployment and, below the top level, a status naming the
/// dependencies it waits for. Then level by level: the Deployment scaled up, the HPA, a
/// Starting status; once the level's Deployments are Available, a Ready status. Statuses come
/// from the operator's status calculator, and an Event is sent wherever the operator's rule
/// gives one (none on the way up to Ready) from its builder, so each request is the size the
/// operator's is. This is the limit the convergence
/// bar of docs/design.md names (a hand-written client that makes the same writes in the same
/// order).
pub async fn same_writes_baseline(
    client: &Client,
    levels: &[Vec<Node>],
    finalizer_at_admission: bool,
) -> anyhow::Result<SameWrites> {
    let ns = TestNamespace::new(client, "bench-same").await?;
    let namespace = ns.name().to_string();
    let policy_installed = if finalizer_at_admission {
        Some(FinalizerPolicy::install(client, &namespace).await?)
    } else {
        None
    };
    let n: usize = levels.iter().map(Vec::len).sum();
    let deployments: Api<Deployment> = ns.api();
    let (available, watch) = record_first(deployments, |d: &Deployment| {
        scaled_up(d) && deployment_available().matches_object(Some(d))
    });
    let pol = policy(n, &namespace);
    let plans = levels
        .iter()
        .flatten()
        .map(|node| {
            let f = feature(node, &namespace);
            let plan = plan_for(&f, &namespace, &pol);
            (node.name.clone(), (f, plan))
        })
        .collect();
    let c = SameWritesClient {
        client,
        namespace: namespace.clone(),
        features: ns.api(),
        policy: pol,
        params: PatchParams::apply(FIELD_MANAGER).force(),
        source: build::EventSource {
            controller: "premium-operator".into(),
            instance: "bench-same-writes".into(),
        },
        written: Mutex::new(HashMap::new()),
        requests: AtomicU64::new(0),
        plans,
    };
    let cpu = CpuTimes::take(None);
    let started = Instant::now();
    let outcome: anyhow::Result<()> = async {
        Api::<PremiumPolicy>::namespaced(client.clone(), &namespace)
            .patch("bench", &c.params, &Patch::Apply(&c.policy))
            .await?;
        let all = levels
            .iter()
            .enumerate()
            .flat_map(|(l, level)| level.iter().map(move |node| (l, node)));
        in_flight(all.map(|(l, node)| c.first(l, node))).await?;
        let mut done = 0;
        for (l, level) in levels.iter().enumerate() {
            in_flight(level.iter().map(|node| c.scale(l, node))).await?;
            done += level.len();
            wait_count(
                "same-writes baseline Deployments to be Available",
                &available,
                done,
                Duration::from_secs(600),
            )
            .await?;
            in_flight(level.iter().map(|node| c.ready(l, node))).await?;
        }
        Ok(())
    }
    .await;
    let elapsed = started.elapsed();
    let cpu = CpuTimes::take(None).since(&cpu);
    watch.abort();
    // No operator removes its finalizer here: the bench does, before the namespace goes.
    let unfinalize = Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}}));
    let merge = PatchParams::default();
    let cleared = futures::stream::iter(
        levels
            .iter()
            .flatten()
            .map(|node| c.features.patch(&node.name, &merge, &unfinalize)),
    )
    .buffer_unordered(IN_FLIGHT)
    .try_collect::<Vec<_>>()
    .await;
    if let Some(policy) = policy_installed {
        policy.remove().await?;
    }
    ns.delete().await?;
    outcome?;
    cleared.context("removing the finalizers of the same-writes baseline")?;
    namespace_gone(client, &namespace, Duration::from_secs(600)).await?;
    Ok(SameWrites {
        elapsed,
        cpu,
        requests_per_feature: c.requests.load(Ordering::Relaxed) as f64 / n.max(1) as f64,
    })
}

async fn namespace_gone(client: &Client, name: &str, timeout: Duration) -> anyhow::Result<()> {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let deadline = Instant::now() + timeout;
    while namespaces.get_opt(name).await?.is_some() {
        if Instant::now() > deadline {
            bail!("namespace {name} still there {timeout:?} after deleting it");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

/// What the operator decides for a feature whose dependencies are Ready, without the cluster:
/// its own decision, handed what its caches would hold then.
fn plan_for(f: &PremiumFeature, namespace: &str, pol: &PremiumPolicy) -> FeaturePlan {
    let key = FeatureKey::new(namespace, f.name_any());
    let policy = effective_policy(f, std::slice::from_ref(pol));
    let ready = DependencyInfo {
        view: DependencyView {
            phase: Some(Phase::Ready),
            ready: true,
            given_up: false,
        },
        port: Some(9898),
    };
    let dependencies = plan::dependency_keys(&key, &f.spec.depends_on)
        .into_iter()
        .map(|k| (k, ready.clone()))
        .collect();
    let now = now_time();
    let inputs = Inputs {
        key: &key,
        feature: f,
        policy: &policy,
        graph: &GraphView::default(),
        dependencies: &dependencies,
        deployment: None,
        budget: &BudgetShare::default(),
        capacities: &Default::default(),
        previous: None,
        recalled: &Recalled::default(),
        sidecar_image: build::DEFAULT_SIDECAR_IMAGE,
        now: &now,
    };
    decide(&inputs, |_| None).plan
}

/// What the pods of `levels` request at their minimum replicas, by resource (`pods`, `cpu`,
/// `memory`, in units and bytes), counted as the scheduler counts a pod: its containers and
/// its native sidecars (restartable init containers, Envoy here) together, or the largest other
/// init container if that is more; a resource with a limit and no request requests its limit.
pub fn room_needed(levels: &[Vec<Node>]) -> BTreeMap<&'static str, f64> {
    let n: usize = levels.iter().map(Vec::len).sum();
    let namespace = "room-check";
    let pol = policy(n, namespace);
    let mut need: BTreeMap<&str, f64> = BTreeMap::new();
    for node in levels.iter().flatten() {
        let f = feature(node, namespace);
        let plan = plan_for(&f, namespace, &pol);
        let pods = f64::from(plan.replicas.max(0));
        *need.entry("pods").or_default() += pods;
        let Some(spec) = build::deployment(&f, &plan)
            .spec
            .and_then(|s| s.template.spec)
        else {
            continue;
        };
        let (sidecars, init): (Vec<_>, Vec<_>) = spec
            .init_containers
            .unwrap_or_default()
            .into_iter()
            .partition(|c| c.restart_policy.as_deref() == Some("Always"));
        for resource in ["cpu", "memory"] {
            let running: f64 = spec
                .containers
                .iter()
                .chain(&sidecars)
                .map(|c| requested(c, resource))
                .sum();
            let first = init
                .iter()
                .map(|c| requested(c, resource))
                .fold(0.0, f64::max);
            *need.entry(resource).or_default() += pods * running.max(first);
        }
    }
    need
}

/// What one container requests of `resource` (its limit when it sets no request).
fn requested(c: &k8s_openapi::api::core::v1::Container, resource: &str) -> f64 {
    let Some(r) = &c.resources else {
        return 0.0;
    };
    [&r.requests, &r.limits]
        .into_iter()
        .find_map(|m| m.as_ref()?.get(resource))
        .and_then(|q| quantity_value(&q.0))
        .unwrap_or(0.0)
}

/// What the cluster's nodes can hold, by resource.
async fn room_allocatable(client: &Client) -> anyhow::Result<BTreeMap<&'static str, f64>> {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let mut room: BTreeMap<&str, f64> = BTreeMap::new();
    for node in nodes.list(&ListParams::default()).await?.items {
        let allocatable = node.status.and_then(|s| s.allocatable).unwrap_or_default();
        for resource in ["pods", "cpu", "memory"] {
            *room.entry(resource).or_default() += allocatable
                .get(resource)
                .and_then(|q| quantity_value(&q.0))
                .unwrap_or(0.0);
        }
    }
    Ok(room)
}

/// The fake node the bench adds when the cluster's nodes are too small for a size.
const ROOM_NODE: &str = "kwok-bench-room";

/// Makes sure the cluster's nodes can hold the pods of every feature at its minimum replicas
/// (the policy's budget lets them scale no further): pods left Pending would stall the run
/// until its timeout. When they cannot, the bench adds (or grows) one more KWOK node that can
/// hold every one of them by itself, plus a tenth (room summed over nodes can hide a node full
/// by CPU while another has pods to spare), and waits for KWOK to mark it Ready. The node
/// stays for later runs; `hack/cluster-down.sh` removes it with the cluster.
async fn make_room(client: &Client, levels: &[Vec<Node>]) -> anyhow::Result<()> {
    let need = room_needed(levels);
    let room = room_allocatable(client).await?;
    let short: BTreeMap<&str, f64> = need
        .iter()
        .map(|(r, want)| (*r, want - room.get(r).copied().unwrap_or(0.0)))
        .filter(|(_, missing)| *missing > 0.0)
        .collect();
    if short.is_empty() {
        return Ok(());
    }
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    // Growing an existing room node: its own allocatable is part of `room`.
    let current = match nodes.get_opt(ROOM_NODE).await? {
        Some(n) => n.status.and_then(|s| s.allocatable).unwrap_or_default(),
        None => Default::default(),
    };
    let size = |resource: &str, unit: f64| {
        let have = current
            .get(resource)
            .and_then(|q| quantity_value(&q.0))
            .unwrap_or(0.0);
        let all = need.get(resource).copied().unwrap_or(0.0) * 1.1;
        (have.max(all) / unit).ceil().max(1.0)
    };
    let (pods, cpu, memory) = (
        size("pods", 1.0),
        size("cpu", 1.0),
        size("memory", 1024f64.powi(3)),
    );
    let allocatable = serde_json::json!({
        "pods": format!("{pods}"), "cpu": format!("{cpu}"), "memory": format!("{memory}Gi"),
    });
    eprintln!(
        "[bench] the nodes are short of {short:?}: node {ROOM_NODE} gets pods={pods} cpu={cpu} \
         memory={memory}Gi (kept after the run)"
    );
    let node = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": ROOM_NODE,
            // As hack/cluster-up.sh makes its nodes: KWOK manages nodes with this annotation.
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": ROOM_NODE,
                "kubernetes.io/os": "linux",
                "node-role.kubernetes.io/agent": "",
                "type": "kwok",
            },
        },
        "status": {"allocatable": allocatable, "capacity": allocatable},
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    nodes
        .patch(ROOM_NODE, &params, &Patch::Apply(&node))
        .await
        .with_context(|| format!("creating node {ROOM_NODE}"))?;
    // The status of an existing node is only written through its subresource.
    nodes
        .patch_status(ROOM_NODE, &params, &Patch::Apply(&node))
        .await
        .with_context(|| format!("sizing node {ROOM_NODE}"))?;
    crate::support::eventually(
        &format!("node {ROOM_NODE} to be Ready and untainted"),
        Duration::from_secs(120),
        || async {
            let n = nodes.get(ROOM_NODE).await?;
            let ready = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let tainted = n
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| !t.is_empty());
            Ok((ready && !tainted).then_some(()))
        },
    )
    .await
    .with_context(|| {
        format!(
            "is KWOK running? see target/cluster/logs/kwok.log; or start a cluster with room: \
             `hack/cluster-down.sh && PREMIUM_NODE_PODS={pods} PREMIUM_NODE_CPU={cpu} \
             PREMIUM_NODE_MEMORY={memory}Gi hack/cluster-up.sh`"
        )
    })?;
    let room = room_allocatable(client).await?;
    let still: Vec<String> = need
        .iter()
        .filter(|(r, want)| room.get(*r).copied().unwrap_or(0.0) < **want)
        .map(|(r, want)| {
            format!(
                "{r}: {want:.0} needed, {:.0} allocatable",
                room.get(*r).copied().unwrap_or(0.0)
            )
        })
        .collect();
    if !still.is_empty() {
        bail!("node {ROOM_NODE} did not make room: {}", still.join("; "));
    }
    Ok(())
}

/// Runs one size end to end and cleans up after itself (features deleted while the operator
/// still runs, then the namespaces).
pub async fn run(opts: &Options) -> anyhow::Result<Results> {
    let client = crate::support::client().await;
    ensure_crds(&client).await?;
    let levels = workload(opts.size, opts.seed);
    make_room(&client, &levels).await?;
    let n = levels.iter().map(Vec::len).sum::<usize>();
    let mut r = Results {
        size: n,
        levels: levels.len(),
        seed: opts.seed,
        steady_window_seconds: opts.steady_window.as_secs_f64(),
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        ..Default::default()
    };

    if opts.baseline && opts.every_baseline {
        let (b, cpu) = baseline(&client, &levels, false)
            .await
            .context("baseline")?;
        r.baseline_seconds = Some(b.as_secs_f64());
        r.baseline_cpu_seconds = cpu;
        eprintln!("[bench N={n}] baseline: {:.2}s", b.as_secs_f64());
    }
    if opts.baseline {
        let (g, cpu) = baseline(&client, &levels, true)
            .await
            .context("gated baseline")?;
        r.gated_baseline_seconds = Some(g.as_secs_f64());
        r.gated_baseline_cpu_seconds = cpu;
        eprintln!("[bench N={n}] gated baseline: {:.2}s", g.as_secs_f64());
    }
    if opts.baseline && opts.every_baseline {
        let same = same_writes_baseline(&client, &levels, opts.finalizer_at_admission)
            .await
            .context("same-writes baseline")?;
        r.same_writes_baseline_seconds = Some(same.elapsed.as_secs_f64());
        r.same_writes_baseline_requests_per_feature = Some(same.requests_per_feature);
        r.same_writes_baseline_cpu_seconds = same.cpu;
        eprintln!(
            "[bench N={n}] same-writes baseline: {:.2}s",
            same.elapsed.as_secs_f64()
        );
    }

    let ns = TestNamespace::new(&client, "bench").await?;
    let namespace = ns.name().to_string();
    let features: Api<PremiumFeature> = ns.api();
    let policy = if opts.finalizer_at_admission {
        Some(FinalizerPolicy::install(&client, &namespace).await?)
    } else {
        None
    };
    r.finalizer_at_admission = opts.finalizer_at_admission;
    let mut op = start_operator(&namespace).await?;
    let outcome = measure(&client, &ns, &levels, opts, &mut op, &mut r).await;
    if outcome.is_ok() {
        // Deleting a large namespace takes a while: the figures are out before it starts.
        eprintln!("{}", table(std::slice::from_ref(&r)));
    }
    // Teardown runs whatever happened, with the operator (maybe the restarted one) still up.
    let teardown = teardown(&features, &op, opts.timeout).await;
    drop(op);
    if let Some(policy) = policy {
        policy.remove().await?;
    }
    ns.delete().await?;
    outcome?;
    // The figures stand even if the clean-up failed (the namespace is deleted either way).
    if let Err(e) = teardown {
        eprintln!("[bench N={}] warning: teardown: {e:#}", r.size);
    }
    Ok(r)
}

async fn measure(
    client: &Client,
    ns: &TestNamespace,
    levels: &[Vec<Node>],
    opts: &Options,
    op: &mut Operator,
    r: &mut Results,
) -> anyhow::Result<()> {
    let namespace = ns.name().to_string();
    let n = r.size;
    let features: Api<PremiumFeature> = ns.api();
    let deployments: Api<Deployment> = ns.api();
    let policies: Api<PremiumPolicy> = ns.api();
    let (ready, ready_watch) = record_first(features.clone(), feature_ready);
    let (scaled, scaled_watch) = record_first(deployments.clone(), scaled_up);
    // Available with pods: a Deployment held at zero replicas is Available too.
    let (available, available_watch) = record_first(deployments, |d: &Deployment| {
        scaled_up(d) && deployment_available().matches_object(Some(d))
    });
    let m0 = Scrape::take(op)?;

    // Convergence: from the first apply until every feature is Ready.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let cpu = CpuTimes::take(Some(op.pid()));
    let started = Instant::now();
    let pol = policy(n, &namespace);
    policies
        .patch("bench", &params, &Patch::Apply(&pol))
        .await
        .context("applying the policy")?;
    apply_features(&features, levels, |node| feature(node, &namespace))
        .await
        .context("creating the features")?;
    let last = wait_count("features to be Ready", &ready, n, opts.timeout)
        .await
        .with_context(|| format!("operator log tail:\n{}", op.log_tail()))?;
    r.operator_cpu_seconds = CpuTimes::take(Some(op.pid())).since(&cpu);
    r.convergence_seconds = last.duration_since(started).as_secs_f64();
    r.ratio_to_baseline = r.baseline_seconds.map(|b| r.convergence_seconds / b);
    r.ratio_to_gated_baseline = r.gated_baseline_seconds.map(|b| r.convergence_seconds / b);
    r.ratio_to_same_writes_baseline = r
        .same_writes_baseline_seconds
        .map(|b| r.convergence_seconds / b);
    eprintln!("[bench N={n}] operator: {:.2}s", r.convergence_seconds);
    // Let the last status writes and their echoes land before reading the counters.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m1 = Scrape::take(op)?;
    let (_, peak) = rss_mib(op.pid());
    r.rss_peak_mib = peak;
    let before = m0.by_verb();
    r.api_requests = m1
        .by_verb()
        .into_iter()
        .map(|(verb, v)| {
            let d = v - before.get(&verb).copied().unwrap_or(0.0);
            (verb, d.max(0.0) as u64)
        })
        .collect();
    r.requests_per_feature = r
        .api_requests
        .iter()
        .filter(|(verb, _)| verb.as_str() != "watch")
        .map(|(_, c)| *c as f64)
        .sum::<f64>()
        / n as f64;
    r.object_writes =
        (m1.sum("premium_object_writes_total") - m0.sum("premium_object_writes_total")) as u64;
    r.status_writes =
        (m1.sum("premium_status_writes_total") - m0.sum("premium_status_writes_total")) as u64;
    r.writes_per_feature = (r.object_writes + r.status_writes) as f64 / n as f64;
    r.status_writes_per_feature =
        (m1.feature_status_writes() - m0.feature_status_writes()) / n as f64;
    r.finalizer_writes = (m1.feature_object_writes() - m0.feature_object_writes()) as u64;
    r.reconciles_per_feature = (m1.feature_reconciles() - m0.feature_reconciles()) / n as f64;

    // Dependency hop: the last dependency Ready → the dependent's Deployment scaled up.
    {
        let ready = ready.lock().unwrap_or_else(|e| e.into_inner());
        let scaled = scaled.lock().unwrap_or_else(|e| e.into_inner());
        let mut hops: Vec<f64> = levels
            .iter()
            .flatten()
            .filter(|node| !node.deps.is_empty())
            .filter_map(|node| {
                let deps_ready = node
                    .deps
                    .iter()
                    .map(|d| ready.get(d).copied())
                    .collect::<Option<Vec<_>>>()?;
                let last_dep = deps_ready.into_iter().max()?;
                let up = scaled.get(&node.name)?;
                Some(up.saturating_duration_since(last_dep).as_secs_f64() * 1000.0)
            })
            .collect();
        hops.sort_by(f64::total_cmp);
        r.hop_samples = hops.len();
        r.hop_p50_ms = percentile(&hops, 50.0);
        r.hop_p99_ms = percentile(&hops, 99.0);
        r.hop_max_ms = hops.last().copied().unwrap_or(0.0);
        let hop = "premium_dependency_hop_seconds";
        r.operator_hop_samples =
            (m1.get(&format!("{hop}_count")) - m0.get(&format!("{hop}_count"))) as u64;
        r.operator_hop_p50_ms = m1.quantile_since(&m0, hop, 0.50).map(|s| s * 1000.0);
        r.operator_hop_p99_ms = m1.quantile_since(&m0, hop, 0.99).map(|s| s * 1000.0);
        let ms = |v: Option<f64>| v.map(|s| s * 1000.0);
        let queue = "premium_reconcile_queue_seconds";
        r.queue_wait_p50_ms = ms(m1.quantile_since(&m0, queue, 0.50));
        r.queue_wait_p99_ms = ms(m1.quantile_since(&m0, queue, 0.99));
        let (run, feature) = (
            "premium_reconcile_duration_seconds",
            Some("controller=\"feature\""),
        );
        r.reconcile_p50_ms = ms(m1.series_quantile_since(&m0, run, feature, 0.50));
        r.reconcile_p99_ms = ms(m1.series_quantile_since(&m0, run, feature, 0.99));
        let (api, patch) = (
            "premium_api_request_duration_seconds",
            Some("verb=\"patch\""),
        );
        r.api_patch_p50_ms = ms(m1.series_quantile_since(&m0, api, patch, 0.50));
        r.api_patch_p99_ms = ms(m1.series_quantile_since(&m0, api, patch, 0.99));
        let available = available.lock().unwrap_or_else(|e| e.into_inner());
        let between = |from: &HashMap<String, Instant>, to: &HashMap<String, Instant>| {
            let mut v: Vec<f64> = levels
                .iter()
                .flatten()
                .filter_map(|node| {
                    let (a, b) = (from.get(&node.name)?, to.get(&node.name)?);
                    Some(b.saturating_duration_since(*a).as_secs_f64() * 1000.0)
                })
                .collect();
            v.sort_by(f64::total_cmp);
            (percentile(&v, 50.0), percentile(&v, 99.0))
        };
        (r.rollout_p50_ms, r.rollout_p99_ms) = between(&scaled, &available);
        (r.report_p50_ms, r.report_p99_ms) = between(&available, &ready);
    }
    ready_watch.abort();
    scaled_watch.abort();
    available_watch.abort();

    // Steady state: nothing changes, so nothing should be written.
    let s0 = Scrape::take(op)?;
    tokio::time::sleep(opts.steady_window).await;
    let s1 = Scrape::take(op)?;
    r.steady_writes = (s1.writes() - s0.writes()).max(0.0) as u64;
    let non_watch = |s: &Scrape| {
        s.by_verb()
            .into_iter()
            .filter(|(v, _)| v != "watch")
            .map(|(_, c)| c)
            .sum::<f64>()
    };
    r.steady_api_requests = (non_watch(&s1) - non_watch(&s0)).max(0.0) as u64;
    let (steady, peak) = rss_mib(op.pid());
    r.rss_steady_mib = steady;
    r.rss_peak_mib = r.rss_peak_mib.max(peak);
    eprintln!(
        "[bench N={n}] steady: {} writes in {:?}",
        r.steady_writes, opts.steady_window
    );

    if opts.change {
        change_every_feature(ns, levels, opts, op, r).await?;
    }

    // Restart: a fresh operator over a converged namespace should find nothing to write.
    op.terminate(Duration::from_secs(30)).await?;
    let started = Instant::now();
    *op = start_operator(&namespace).await?;
    let settled = settle(op, Duration::from_secs(3), opts.timeout).await?;
    r.restart_settle_seconds = settled.duration_since(started).as_secs_f64();
    let m = Scrape::take(op)?;
    r.restart_writes = m.writes() as u64;
    r.restart_reconciles_per_feature = m.feature_reconciles() / n as f64;
    r.restart_api_requests = m
        .by_verb()
        .into_iter()
        .map(|(verb, v)| (verb, v as u64))
        .collect();
    r.restart_rss_peak_mib = rss_mib(op.pid()).1;
    r.restart_list_seconds = list_everything(client, &namespace).await?.as_secs_f64();
    Ok(())
}

/// One change to every converged feature (an env var: a new generation and a rollout each),
/// until every feature is Ready at it: how long, and what it cost per feature.
async fn change_every_feature(
    ns: &TestNamespace,
    levels: &[Vec<Node>],
    opts: &Options,
    op: &Operator,
    r: &mut Results,
) -> anyhow::Result<()> {
    let namespace = ns.name().to_string();
    let n = r.size;
    let features: Api<PremiumFeature> = ns.api();
    let (changed, changed_watch) = record_first(features.clone(), |f: &PremiumFeature| {
        f.metadata.generation.unwrap_or(0) >= 2 && feature_ready(f)
    });
    let c0 = Scrape::take(op)?;
    let started = Instant::now();
    apply_features(&features, levels, |node| {
        let mut f = feature(node, &namespace);
        f.spec.env = vec![EnvVar {
            name: "BENCH_CHANGE".into(),
            value: Some("1".into()),
            ..Default::default()
        }];
        f
    })
    .await
    .context("changing the features")?;
    let last = wait_count("changed features to be Ready", &changed, n, opts.timeout).await?;
    r.change_seconds = Some(last.duration_since(started).as_secs_f64());
    changed_watch.abort();
    settle(op, Duration::from_secs(2), opts.timeout).await?;
    let c1 = Scrape::take(op)?;
    r.change_reconciles_per_feature =
        Some((c1.feature_reconciles() - c0.feature_reconciles()) / n as f64);
    r.change_status_writes_per_feature =
        Some((c1.feature_status_writes() - c0.feature_status_writes()) / n as f64);
    r.change_object_writes_per_feature = Some(
        (c1.sum("premium_object_writes_total") - c0.sum("premium_object_writes_total")) / n as f64,
    );
    let (_, peak) = rss_mib(op.pid());
    r.rss_peak_mib = r.rss_peak_mib.max(peak);
    Ok(())
}

/// How long one list of every kind the operator watches in `namespace` takes.
async fn list_everything(client: &Client, namespace: &str) -> anyhow::Result<Duration> {
    let lp = ListParams::default();
    let started = Instant::now();
    Api::<PremiumFeature>::namespaced(client.clone(), namespace)
        .list(&lp)
        .await?;
    Api::<PremiumPolicy>::namespaced(client.clone(), namespace)
        .list(&lp)
        .await?;
    Api::<Deployment>::namespaced(client.clone(), namespace)
        .list(&lp)
        .await?;
    Api::<Service>::namespaced(client.clone(), namespace)
        .list(&lp)
        .await?;
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .list(&lp)
        .await?;
    Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), namespace)
        .list(&lp)
        .await?;
    Ok(started.elapsed())
}

/// Applies one PremiumFeature per node, [`IN_FLIGHT`] at a time.
async fn apply_features(
    api: &Api<PremiumFeature>,
    levels: &[Vec<Node>],
    build: impl Fn(&Node) -> PremiumFeature,
) -> kube::Result<()> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    futures::stream::iter(levels.iter().flatten().map(|node| {
        let f = build(node);
        let params = params.clone();
        async move { api.patch(&node.name, &params, &Patch::Apply(&f)).await }
    }))
    .buffer_unordered(IN_FLIGHT)
    .try_collect::<Vec<_>>()
    .await
    .map(|_| ())
}

/// Waits until the operator's reconcile and write counters stop moving for `quiet`; returns
/// when they last moved.
async fn settle(op: &Operator, quiet: Duration, timeout: Duration) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    let mut last = (-1.0, -1.0);
    let mut moved = Instant::now();
    loop {
        let s = Scrape::take(op)?;
        let now = (s.sum("premium_reconciles_total"), s.writes());
        if now != last {
            last = now;
            moved = Instant::now();
        } else if moved.elapsed() >= quiet {
            return Ok(moved);
        }
        if Instant::now() > deadline {
            bail!("the operator did not settle within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn teardown(
    features: &Api<PremiumFeature>,
    op: &Operator,
    timeout: Duration,
) -> anyhow::Result<()> {
    // One request for a thousand objects can outlast the API server's request timeout on a
    // busy machine: retried, since what it deleted stays deleted.
    let mut attempt = 0;
    while let Err(e) = features
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
    {
        attempt += 1;
        if attempt >= 3 {
            return Err(anyhow::Error::new(e).context("deleting the bench features"));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let deadline = Instant::now() + timeout;
    loop {
        let left = features
            .list_metadata(&ListParams::default())
            .await?
            .items
            .len();
        if left == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{left} features still there {timeout:?} after deleting them; operator log:\n{}",
                op.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The results as a table, one column per size.
pub fn table(results: &[Results]) -> String {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |label: &str, f: &dyn Fn(&Results) -> String| {
        rows.push((label.to_string(), results.iter().map(f).collect()));
    };
    let opt = |v: Option<f64>, digits: usize| v.map_or("-".into(), |v| format!("{v:.digits$}"));
    row("features", &|r| r.size.to_string());
    row("finalizer added by / operator's writes of it", &|r| {
        let by = if r.finalizer_at_admission {
            "admission policy"
        } else {
            "operator"
        };
        format!("{by} / {}", r.finalizer_writes)
    });
    row("baseline (s)", &|r| opt(r.baseline_seconds, 2));
    row("operator convergence (s)", &|r| {
        format!("{:.2}", r.convergence_seconds)
    });
    row("ratio to baseline", &|r| opt(r.ratio_to_baseline, 2));
    row("gated baseline (s) / ratio", &|r| {
        format!(
            "{} / {}",
            opt(r.gated_baseline_seconds, 2),
            opt(r.ratio_to_gated_baseline, 2)
        )
    });
    row("same-writes baseline (s) / ratio", &|r| {
        format!(
            "{} / {}",
            opt(r.same_writes_baseline_seconds, 2),
            opt(r.ratio_to_same_writes_baseline, 2)
        )
    });
    row("requests per feature: operator / same-writes", &|r| {
        format!(
            "{:.1} / {}",
            r.requests_per_feature,
            opt(r.same_writes_baseline_requests_per_feature, 1)
        )
    });
    row("api requests by verb", &|r| {
        r.api_requests
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    });
    row("writes per feature (obj+status)", &|r| {
        format!(
            "{:.2} ({}+{})",
            r.writes_per_feature, r.object_writes, r.status_writes
        )
    });
    row("status writes per feature", &|r| {
        format!("{:.2}", r.status_writes_per_feature)
    });
    row("reconciles per feature", &|r| {
        format!("{:.2}", r.reconciles_per_feature)
    });
    row("hop p50 / p99 / max (ms)", &|r| {
        format!(
            "{:.0} / {:.0} / {:.0} (n={})",
            r.hop_p50_ms, r.hop_p99_ms, r.hop_max_ms, r.hop_samples
        )
    });
    row("queue wait / reconcile p50, p99 (ms)", &|r| {
        format!(
            "{}, {} / {}, {}",
            opt(r.queue_wait_p50_ms, 0),
            opt(r.queue_wait_p99_ms, 0),
            opt(r.reconcile_p50_ms, 0),
            opt(r.reconcile_p99_ms, 0)
        )
    });
    row("operator-side hop p50 / p99 (ms)", &|r| {
        format!(
            "{} / {} (n={})",
            opt(r.operator_hop_p50_ms, 0),
            opt(r.operator_hop_p99_ms, 0),
            r.operator_hop_samples
        )
    });
    row("API patch p50 / p99 (ms)", &|r| {
        format!(
            "{} / {}",
            opt(r.api_patch_p50_ms, 0),
            opt(r.api_patch_p99_ms, 0)
        )
    });
    row("rollout / report p50, p99 (ms)", &|r| {
        format!(
            "{:.0}, {:.0} / {:.0}, {:.0}",
            r.rollout_p50_ms, r.rollout_p99_ms, r.report_p50_ms, r.report_p99_ms
        )
    });
    row("steady writes / requests", &|r| {
        format!(
            "{} / {} in {:.0}s",
            r.steady_writes, r.steady_api_requests, r.steady_window_seconds
        )
    });
    row("change: s, reconciles/status/obj per f.", &|r| match (
        r.change_seconds,
        r.change_reconciles_per_feature,
        r.change_status_writes_per_feature,
        r.change_object_writes_per_feature,
    ) {
        (Some(s), Some(rec), Some(st), Some(obj)) => {
            format!("{s:.1}s, {rec:.2} / {st:.2} / {obj:.2}")
        }
        _ => "not run".into(),
    });
    row("restart: writes, reconciles/f, settle", &|r| {
        format!(
            "{}, {:.2}, {:.1}s",
            r.restart_writes, r.restart_reconciles_per_feature, r.restart_settle_seconds
        )
    });
    row("restart: requests, RSS peak; one list of all", &|r| {
        let requests: Vec<String> = r
            .restart_api_requests
            .iter()
            .map(|(verb, c)| format!("{verb}={c}"))
            .collect();
        format!(
            "{}, {:.1} MiB; {:.2}s",
            requests.join(" "),
            r.restart_rss_peak_mib,
            r.restart_list_seconds
        )
    });
    row("RSS peak / steady (MiB)", &|r| {
        format!("{:.1} / {:.1}", r.rss_peak_mib, r.rss_steady_mib)
    });
    let cpu = |cpu: &BTreeMap<String, f64>, seconds: Option<f64>, cores: usize| {
        let total: f64 = cpu.values().sum();
        match seconds {
            Some(s) if !cpu.is_empty() && s > 0.0 => format!(
                "{total:.0} ({:.0}% of {cores}), apiserver {:.0}, operator {}",
                100.0 * total / (s * cores.max(1) as f64),
                cpu.get("kube-apiserver").copied().unwrap_or(0.0),
                cpu.get("operator")
                    .map_or("-".into(), |v| format!("{v:.0}"))
            ),
            _ => "-".into(),
        }
    };
    row("CPU s: baseline (% of cores)", &|r| {
        cpu(&r.baseline_cpu_seconds, r.baseline_seconds, r.cores)
    });
    row("CPU s: gated baseline", &|r| {
        cpu(
            &r.gated_baseline_cpu_seconds,
            r.gated_baseline_seconds,
            r.cores,
        )
    });
    row("CPU s: same-writes baseline", &|r| {
        cpu(
            &r.same_writes_baseline_cpu_seconds,
            r.same_writes_baseline_seconds,
            r.cores,
        )
    });
    row("CPU s: operator run", &|r| {
        cpu(
            &r.operator_cpu_seconds,
            Some(r.convergence_seconds),
            r.cores,
        )
    });
    let w0 = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..results.len())
        .map(|i| rows.iter().map(|(_, c)| c[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (label, cells) in &rows {
        out.push_str(&format!("{label:<w0$}"));
        for (c, w) in cells.iter().zip(&widths) {
            out.push_str(&format!(" | {c:>w$}"));
        }
        out.push('\n');
    }
    out
}
