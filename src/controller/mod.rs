//! The thin I/O shell: watches, caches, reconcilers that call the core and apply its result.

pub mod apply;
pub mod context;
pub mod feature;
pub mod index;
pub mod owned;
pub mod policy;
pub mod retry;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::core::build::EventSource;
use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::core::DeserializeGuard;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, Event as WatchEvent, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use prometheus_client::encoding::EncodeLabelValue;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tracing::{error, info, warn};

use crate::api::{
    FEATURE_LABEL, FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL, Phase, PremiumFeature,
    PremiumPolicy,
};
use crate::core::build::DEFAULT_SIDECAR_IMAGE;
use crate::core::graph::FeatureKey;
use crate::runtime::http::{HttpState, serve};
use crate::runtime::leader::{Election, GatedExecutor, LeaderConfig, NotLeader, WriteGate};
use crate::runtime::metrics::{
    ControllerLabels, ErrorLabels, Metrics, PhaseLabels, request_counter,
};
use crate::runtime::telemetry;
use context::{Context, Settings, Stores, lock};

/// Longest wait for any answer from the API server (counted from each request write and each
/// read, so a slow but flowing response is never cut).
const API_READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Server-side timeout of every watch request, in seconds. It must stay below
/// [`API_READ_TIMEOUT`]: a quiet watch (no bookmarks: an API server with its watch cache off
/// sends none) then ends cleanly at the server and is resumed from its resourceVersion, instead
/// of being cut by the read timeout every two minutes as a failed watch (a warning and a
/// backoff each time). kube's own client-side idle timeout (this plus 5 s) also stays below it.
const WATCH_TIMEOUT_SECS: u32 = 100;
/// Objects per page of a watch's list (kube's default is 500). Pages of full objects with their
/// managed fields, parsed while six watches list at once, were most of a restarted operator's
/// peak heap at 500 (README "Performance").
const LIST_PAGE_SIZE: u32 = 100;
const _: () = assert!(WATCH_TIMEOUT_SECS as u64 + 5 < API_READ_TIMEOUT.as_secs());
/// How long a shutdown waits for in-flight reconciles.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Finalizer that lets dependents be torn down before their dependencies.
pub const FINALIZER: &str = "premium.dev/teardown";

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

/// The object inside a guard; a malformed one is logged and counted instead, so it never
/// stalls the others.
fn valid_or_report<'a, K>(
    guard: &'a DeserializeGuard<K>,
    ctx: &Context,
    controller: &'static str,
) -> Option<&'a K>
where
    K: Resource<DynamicType = ()>,
{
    match &guard.0 {
        Ok(k) => Some(k),
        Err(invalid) => {
            warn!(
                kind = %K::kind(&()),
                name = invalid.metadata.name.as_deref().unwrap_or(""),
                namespace = invalid.metadata.namespace.as_deref().unwrap_or(""),
                error = %invalid.error,
                "skipping an object that does not match the schema"
            );
            ctx.metrics
                .reconcile_errors
                .get_or_create(&ErrorLabels::new(controller, ErrorKind::InvalidObject))
                .inc();
            None
        }
    }
}

/// Counts a running feature reconcile until dropped (also when the reconcile is cancelled).
struct InFlight<'a>(&'a Context);

impl<'a> InFlight<'a> {
    fn enter(ctx: &'a Context) -> Self {
        ctx.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(ctx)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs one reconcile, counting it and timing it.
async fn measured(
    ctx: &Context,
    controller: &'static str,
    reconcile: impl std::future::Future<Output = Result<Action, Error>>,
) -> Result<Action, Error> {
    let labels = ControllerLabels { controller };
    ctx.metrics.reconciles.get_or_create(&labels).inc();
    let started = std::time::Instant::now();
    let counted = (controller == "feature").then(|| InFlight::enter(ctx));
    let result = reconcile.await;
    drop(counted);
    ctx.metrics
        .reconcile_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    result
}

/// Flags of `premium-operator run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Watch and manage only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:8080", env = "METRICS_ADDRESS")]
    pub metrics_address: SocketAddr,
    /// Hold a Lease so only one of several replicas reconciles.
    #[arg(long, default_value_t = false, env = "LEADER_ELECT")]
    pub leader_elect: bool,
    /// Namespace of the leader Lease (default: POD_NAMESPACE, else "default").
    #[arg(long, env = "LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(
        long,
        default_value = "premium-operator",
        env = "LEADER_ELECTION_LEASE"
    )]
    pub leader_election_lease: String,
    /// How long a leader that stopped renewing keeps the lease, in seconds. The leader itself
    /// stops acting (and exits) once it has not renewed for two thirds of this, so a standby
    /// that takes over never overlaps with it.
    #[arg(long, default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// This instance's identity in the Lease (default: POD_NAME or hostname, plus a random suffix).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Envoy image of the sidecar.
    #[arg(long, default_value = DEFAULT_SIDECAR_IMAGE, env = "SIDECAR_IMAGE")]
    pub sidecar_image: String,
    /// Most reconciles running at once, per controller. Reconciles mostly wait on the API
    /// server, and a narrow window queues a dependency's "Ready" behind a burst of new features.
    #[arg(long, default_value_t = 64)]
    pub concurrency: u16,
    /// Log format: json (default) or text.
    #[arg(long, default_value = "json")]
    pub log_format: String,
    /// Manage only the PremiumFeatures and PremiumPolicies whose labels match this selector
    /// (for example `shard=a`), to split a cluster between several operator instances. Objects
    /// outside it are neither read nor written; a dependency outside it counts as missing.
    #[arg(long, env = "LABEL_SELECTOR")]
    pub selector: Option<String>,
    /// Longest time, in seconds from its deletion, that a PremiumFeature being deleted waits for
    /// its dependents (also being deleted) to be torn down first. After it the feature is torn
    /// down anyway and a Warning Event names the dependents that held it: a dependent kept by
    /// someone else's finalizer must not keep a namespace from being deleted.
    #[arg(long, default_value_t = crate::core::teardown::DEFAULT_TEARDOWN_WAIT.as_secs(), env = "TEARDOWN_WAIT_SECONDS")]
    pub teardown_wait_seconds: u64,
}

/// Entry point of `premium-operator run`.
pub fn main(args: RunArgs) -> ExitCode {
    telemetry::init(args.log_format != "text");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "operator stopped");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c().map(|_| ());
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => ctrl_c.await,
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}

fn api<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the operator until SIGTERM (graceful) or until leadership is lost (exit, so a
/// supervisor restarts it as a standby).
pub async fn run(args: RunArgs) -> Result<(), String> {
    let metrics = Arc::new(Metrics::default());
    let mut config = kube::Config::infer().await.map_err(|e| {
        format!("no Kubernetes configuration found (in-cluster or KUBECONFIG): {e}")
    })?;
    // No request may hang forever on a connection an API server outage left dead: a frozen
    // server would otherwise leave reconciles (and with them the whole queue) waiting after it
    // came back. Counted from when the request is sent; watches end at the server before it
    // (WATCH_TIMEOUT_SECS), so a quiet watch is never cut by it.
    config.read_timeout = Some(API_READ_TIMEOUT);
    config.reset_reader_on_write = true;
    let builder = |executor: GatedExecutor| {
        kube::client::ClientBuilder::try_from((config.clone(), executor))
            .map(|b| b.with_layer(&request_counter(metrics.clone())))
            .map_err(|e| format!("cannot build a Kubernetes client: {e}"))
    };
    // With leader election, every write goes through the election's gate, which lets it out
    // only while this instance leads on its own clock; the Lease has a client of its own.
    let mut election = match args.leader_elect {
        true => Some(Election::new(
            builder(GatedExecutor::new(WriteGate::open()))?.build(),
            leader_config(&args),
        )),
        false => None,
    };
    let gate = election
        .as_ref()
        .map_or_else(WriteGate::open, Election::gate);
    // The gate also runs the client's connection tasks: a request let out just before a pause
    // is not written to the socket after it.
    let client = builder(GatedExecutor::new(gate.clone()))?
        .with_layer(&gate)
        .build();

    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shutdown = {
        let stop_tx = stop_tx.clone();
        async move {
            shutdown_signal().await;
            info!("shutdown requested");
            let _ = stop_tx.send(true);
        }
    };
    tokio::spawn(shutdown);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                break;
            }
        }
    };

    // Stores are created up front so /metrics can count phases from the cache.
    let (features_reader, features_writer) = reflector::store::<DeserializeGuard<PremiumFeature>>();
    let refresh: Arc<dyn Fn() + Send + Sync> = {
        let reader = features_reader.clone();
        let metrics = metrics.clone();
        Arc::new(move || {
            let mut counts = std::collections::BTreeMap::new();
            for f in reader.state() {
                if let Ok(f) = &f.0 {
                    let phase = f
                        .status
                        .as_ref()
                        .and_then(|s| s.phase)
                        .unwrap_or(Phase::Pending);
                    *counts.entry(phase).or_insert(0i64) += 1;
                }
            }
            for p in Phase::ALL {
                metrics
                    .features_by_phase
                    .get_or_create(&PhaseLabels { phase: p.as_str() })
                    .set(*counts.get(&p).unwrap_or(&0));
            }
        })
    };
    let http_state = HttpState {
        metrics: metrics.clone(),
        ready: ready.clone(),
        refresh,
    };
    let http = tokio::spawn(serve(
        args.metrics_address,
        http_state,
        stopped(stop_rx.clone()),
    ));

    let election = if let Some(mut election) = election.take() {
        election.start();
        // A standby is healthy and ready: it can take over.
        ready.store(true, Ordering::Relaxed);
        info!(identity = election.identity(), lease = %args.leader_election_lease, "waiting to become the leader");
        tokio::select! {
            won = election.acquired() => {
                if !won {
                    return Err("the leader election ended before this instance became the leader".into());
                }
            }
            _ = stopped(stop_rx.clone()) => {
                election.release().await;
                let _ = http.await;
                return Ok(());
            }
        }
        info!(identity = election.identity(), "became the leader");
        metrics.leader.set(1);
        Some(election)
    } else {
        metrics.leader.set(1);
        None
    };

    // Leadership ends on this instance's own clock (see `runtime::leader`): then in-flight
    // reconciles are cancelled at once, not drained, since the Lease may already be someone
    // else's. A shutdown request drains them instead.
    let lost = match &election {
        Some(e) => e.ended().boxed(),
        None => std::future::pending().boxed(),
    }
    .shared();
    let controllers_stop = {
        let lost = lost.clone();
        let stop_rx = stop_rx.clone();
        async move {
            tokio::select! {
                _ = stopped(stop_rx) => {},
                _ = lost => {},
            }
        }
    }
    .shared();

    let controllers = run_controllers(
        &args,
        client.clone(),
        metrics.clone(),
        ready.clone(),
        features_reader,
        features_writer,
        controllers_stop.clone(),
    );
    // Graceful shutdown drains in-flight reconciles, but never waits forever (an API server
    // that stopped answering must not keep the process, and so the lease, alive).
    let deadline = controllers_stop.then(|_| tokio::time::sleep(SHUTDOWN_GRACE));
    let lost_leadership = tokio::select! {
        biased;
        // Dropping the controllers drops every reconcile in flight with them.
        _ = lost.clone() => true,
        _ = controllers => false,
        _ = deadline => {
            warn!(grace = ?SHUTDOWN_GRACE, "in-flight reconciles did not finish in time; stopping anyway");
            false
        }
    };
    // A drain that ended while leadership ran out counts as a loss too: no release then.
    let lost_leadership = lost_leadership || lost.clone().now_or_never().is_some();

    if lost_leadership {
        metrics.leader.set(0);
        ready.store(false, Ordering::Relaxed);
        error!(
            "lost the leader lease (no renewal within the renew deadline, or another holder); in-flight work cancelled; stopping so that only the leader writes"
        );
        let _ = stop_tx.send(true);
        let _ = http.await;
        return Err("lost the leader lease".into());
    }
    if let Some(e) = election {
        e.release().await;
    }
    let _ = stop_tx.send(true);
    let _ = http.await;
    info!("stopped");
    Ok(())
}

/// The Lease settings of `premium-operator run --leader-elect`.
fn leader_config(args: &RunArgs) -> LeaderConfig {
    let namespace = args
        .leader_election_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "default".into());
    let base = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "premium-operator".into());
    LeaderConfig {
        lease_name: args.leader_election_lease.clone(),
        namespace,
        identity: format!("{base}-{:08x}", rand::random::<u32>()),
        duration: Duration::from_secs(args.lease_duration_seconds.max(2)),
    }
}

/// Every watch's base configuration: see [`WATCH_TIMEOUT_SECS`].
fn watch_config() -> watcher::Config {
    watcher::Config::default()
        .timeout(WATCH_TIMEOUT_SECS)
        .page_size(LIST_PAGE_SIZE)
}

fn owned_config() -> watcher::Config {
    watch_config().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY},{FEATURE_LABEL}"))
}

/// Builds the watches, stores and both controllers, and runs them until `stop` resolves.
#[allow(clippy::too_many_arguments)]
async fn run_controllers(
    args: &RunArgs,
    client: Client,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    features_reader: reflector::Store<DeserializeGuard<PremiumFeature>>,
    features_writer: reflector::store::Writer<DeserializeGuard<PremiumFeature>>,
    stop: futures::future::Shared<impl std::future::Future<Output = ()> + Send + 'static>,
) {
    let ns = &args.namespace;
    let selected = || match &args.selector {
        Some(sel) => watch_config().labels(sel),
        None => watch_config(),
    };
    let (feature_tx, feature_rx) = mpsc::unbounded_channel();
    let (policy_tx, policy_rx) = mpsc::unbounded_channel();

    // Owned objects: label-filtered caches of what a reconcile reads of each (`owned`); an
    // event that changes that asks for a reconcile of the controlling feature.
    let echoes = Arc::new(context::Echoes::default());
    let (deploy_reader, deploy_task) = owned::watch_owned(
        api::<Deployment>(&client, ns),
        owned_config(),
        feature_tx.clone(),
        echoes.clone(),
    );
    let (svc_reader, svc_task) = owned::watch_owned(
        api::<Service>(&client, ns),
        owned_config(),
        feature_tx.clone(),
        echoes.clone(),
    );
    let (cm_reader, cm_task) = owned::watch_owned(
        api::<ConfigMap>(&client, ns),
        owned_config(),
        feature_tx.clone(),
        echoes.clone(),
    );
    let (hpa_reader, hpa_task) = owned::watch_owned(
        api::<HorizontalPodAutoscaler>(&client, ns),
        owned_config(),
        feature_tx.clone(),
        echoes.clone(),
    );

    // The context needs the policy store before the policy watch starts, so that watch is
    // wired by hand below.
    let (policy_reader, policy_writer) = reflector::store::<DeserializeGuard<PremiumPolicy>>();

    let events = EventSource {
        controller: FIELD_MANAGER.into(),
        instance: args
            .identity
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| FIELD_MANAGER.into()),
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        Stores {
            features: features_reader.clone(),
            policies: policy_reader.clone(),
            deployments: deploy_reader,
            services: svc_reader,
            configmaps: cm_reader,
            hpas: hpa_reader,
        },
        echoes,
        feature_tx.clone(),
        policy_tx.clone(),
        metrics.clone(),
        events,
        Settings {
            sidecar_image: args.sidecar_image.clone(),
            field_manager: FIELD_MANAGER.into(),
            teardown_wait: Duration::from_secs(args.teardown_wait_seconds),
        },
    ));

    // Features: the index learns every change before the reconcilers run, then the feature
    // itself, its dependents (reverse index) and affected policies are queued.
    let feature_task = {
        let ctx = ctx.clone();
        let api = api::<DeserializeGuard<PremiumFeature>>(&client, ns);
        let config = selected();
        tokio::spawn(async move {
            let stream = watcher(api, config)
                .default_backoff()
                .map_ok(|ev| ev.modify(strip_guard))
                .reflect(features_writer);
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(ev) => index_feature_event(&ctx, &ev),
                    Err(e) => {
                        warn!(error = %e, "PremiumFeature watch failed; retrying with backoff")
                    }
                }
            }
        })
    };
    let policy_task = {
        let ctx = ctx.clone();
        let api = api::<DeserializeGuard<PremiumPolicy>>(&client, ns);
        let config = selected();
        tokio::spawn(async move {
            let stream = watcher(api, config)
                .default_backoff()
                .reflect(policy_writer);
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(ev) => index_policy_event(&ctx, &ev),
                    Err(e) => {
                        warn!(error = %e, "PremiumPolicy watch failed; retrying with backoff")
                    }
                }
            }
        })
    };
    // Aborted however this function ends: when leadership is lost it is dropped, not awaited.
    let mut tasks = AbortOnDrop(vec![
        deploy_task,
        svc_task,
        cm_task,
        hpa_task,
        feature_task,
        policy_task,
    ]);

    // Decide nothing from a partial picture: every cache has its first full list first.
    tokio::select! {
        _ = ctx.wait_synced() => {},
        _ = stop.clone() => {
            return;
        }
    }
    ready.store(true, Ordering::Relaxed);
    info!("caches synced; reconciling");
    // Everything that existed before the first list is already queued in the back lane (the
    // index saw each for the first time), so it gets one reconcile and events that arrive
    // meanwhile go first. The first analysis is the baseline later ones are compared with.
    ctx.graph().await;
    // The back lane: first reconciles of new features and refreshes after graph changes, fed
    // while at most an eighth of the reconcile slots are busy (and at least one every 250 ms).
    let back_lane = {
        let ctx = ctx.clone();
        let tx = feature_tx.clone();
        let max = (usize::from(args.concurrency) / 8).max(1);
        tokio::spawn(async move {
            loop {
                let f = ctx.next_in_back_lane(max).await;
                if tx
                    .send(ObjectRef::new(&f.name).within(&f.namespace))
                    .is_err()
                {
                    break;
                }
                // Give the controller a moment to start it, so the count above sees it.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    tasks.0.push(back_lane);
    for p in valid_policies(&policy_reader) {
        let _ = policy_tx.send(p);
    }

    // Features whose level, cycle or missing dependencies moved after a change to the graph
    // (see `Context::graph`), looked for every tenth of a second.
    let downstream = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                ctx.refresh_graph().await;
            }
        })
    };

    tasks.0.push(downstream);

    let controller_config = ControllerConfig::default().concurrency(args.concurrency);
    let feature_controller = Controller::for_stream(
        futures::stream::pending::<Result<DeserializeGuard<PremiumFeature>, watcher::Error>>(),
        features_reader.clone(),
    )
    .with_config(controller_config.clone())
    .reconcile_on(UnboundedReceiverStream::new(feature_rx).inspect({
        // When each feature was first queued since its last reconcile began.
        let ctx = ctx.clone();
        move |r| {
            let key = FeatureKey::new(r.namespace.clone().unwrap_or_default(), r.name.clone());
            let mut queued = lock(&ctx.queued_since);
            queued.entry(key).or_insert_with(std::time::Instant::now);
            ctx.metrics.set_queue_depth("feature", queued.len());
        }
    }))
    .graceful_shutdown_on(stop.clone())
    .run(
        |obj, ctx| async move {
            let reconcile = feature::reconcile(obj.clone(), ctx.clone());
            reset_backoff_on_success("feature", &obj, &ctx, reconcile).await
        },
        error_policy_feature,
        ctx.clone(),
    )
    .for_each(|_| futures::future::ready(()));
    let policy_controller = Controller::for_stream(
        futures::stream::pending::<Result<DeserializeGuard<PremiumPolicy>, watcher::Error>>(),
        policy_reader.clone(),
    )
    .with_config(controller_config)
    .reconcile_on(UnboundedReceiverStream::new(policy_rx))
    .graceful_shutdown_on(stop.clone())
    .run(
        |obj, ctx| async move {
            let reconcile = policy::reconcile(obj.clone(), ctx.clone());
            reset_backoff_on_success("policy", &obj, &ctx, reconcile).await
        },
        error_policy_policy,
        ctx.clone(),
    )
    .for_each(|_| futures::future::ready(()));
    tokio::join!(feature_controller, policy_controller);
    drop(tasks);
    ready.store(false, Ordering::Relaxed);
}

/// Background tasks that end with their owner.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

fn valid_policies(
    store: &reflector::Store<DeserializeGuard<PremiumPolicy>>,
) -> Vec<ObjectRef<DeserializeGuard<PremiumPolicy>>> {
    store
        .state()
        .iter()
        .filter_map(|g| g.0.as_ref().ok())
        .map(|p| ObjectRef::new(&p.name_any()).within(&p.namespace().unwrap_or_default()))
        .collect()
}

fn strip_guard(g: &mut DeserializeGuard<PremiumFeature>) {
    if let Ok(f) = &mut g.0 {
        f.managed_fields_mut().clear();
    }
}

/// The reconcile request of a watched object, readable or not.
fn guard_ref<K>(g: &DeserializeGuard<K>) -> Option<ObjectRef<DeserializeGuard<K>>>
where
    K: Resource<DynamicType = ()>,
{
    let meta = match &g.0 {
        Ok(k) => k.meta(),
        Err(invalid) => &invalid.metadata,
    };
    Some(ObjectRef::new(meta.name.as_deref()?).within(meta.namespace.as_deref()?))
}

fn feature_key(f: &PremiumFeature) -> FeatureKey {
    FeatureKey::new(f.namespace().unwrap_or_default(), f.name_any())
}

fn index_feature_event(ctx: &Context, ev: &WatchEvent<DeserializeGuard<PremiumFeature>>) {
    // The index wakes the feature itself unless only its status moved (its own write); one
    // that does not match the schema is handed to the reconciler, which reports it, also when
    // it was stored before start-up (the queue holds it until the controller runs).
    if let WatchEvent::Apply(g) | WatchEvent::InitApply(g) = ev
        && g.0.is_err()
        && let Some(r) = guard_ref(g)
    {
        let _ = ctx.feature_triggers.send(r);
    }
    if let WatchEvent::Apply(g) | WatchEvent::InitApply(g) = ev
        && let Ok(f) = &g.0
    {
        ctx.status_seen(&feature_key(f), f.status.as_ref());
    }
    let wake = {
        let mut index = lock(&ctx.index);
        match ev {
            WatchEvent::Apply(g) | WatchEvent::InitApply(g) => match &g.0 {
                Ok(f) => index.apply_feature(f),
                Err(_) => Default::default(),
            },
            // One that no longer deserializes is forgotten too (by its metadata): the
            // dependencies its teardown held are woken like for any other.
            WatchEvent::Delete(g) => match &g.0 {
                Ok(f) => index.delete_feature(&feature_key(f)),
                Err(invalid) => match (&invalid.metadata.namespace, &invalid.metadata.name) {
                    (Some(ns), Some(name)) => index.delete_feature(&FeatureKey::new(ns, name)),
                    _ => Default::default(),
                },
            },
            WatchEvent::Init | WatchEvent::InitDone => Default::default(),
        }
    };
    ctx.wake(wake);
}

fn index_policy_event(ctx: &Context, ev: &WatchEvent<DeserializeGuard<PremiumPolicy>>) {
    // A changed policy is reconciled; valid ones that existed before start-up are queued once
    // the caches are synced, a malformed one is handed to the reconciler here (it reports it).
    let trigger = match ev {
        WatchEvent::Apply(g) => guard_ref(g),
        WatchEvent::InitApply(g) if g.0.is_err() => guard_ref(g),
        _ => None,
    };
    if let Some(r) = trigger {
        let _ = ctx.policy_triggers.send(r);
    }
    let wake = match ev {
        WatchEvent::Apply(g) | WatchEvent::InitApply(g) => match &g.0 {
            Ok(p) => {
                let features = ctx.features_in(&p.namespace().unwrap_or_default());
                lock(&ctx.index).apply_policy(p, features.iter().map(|f| f.as_ref()))
            }
            Err(_) => Default::default(),
        },
        WatchEvent::Delete(g) => match &g.0 {
            Ok(p) => {
                let key = FeatureKey::new(p.namespace().unwrap_or_default(), p.name_any());
                lock(&ctx.index).delete_policy(&key)
            }
            Err(_) => Default::default(),
        },
        WatchEvent::Init | WatchEvent::InitDone => Default::default(),
    };
    ctx.wake(wake);
}

/// The retry key of a watched object, readable or not.
fn retry_key<K>(controller: &'static str, g: &DeserializeGuard<K>) -> retry::RetryKey
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
async fn reset_backoff_on_success<K>(
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

fn error_policy_feature(
    obj: Arc<DeserializeGuard<PremiumFeature>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let (_, namespace, name) = retry_key("feature", &obj);
    let kind = error.kind();
    match kind {
        ErrorKind::Forbidden => {
            error!(feature = %name, %namespace, error = %error, ?kind, "permission denied: the operator's RBAC role lacks a permission this feature needs; the feature reports Stalled (reason Forbidden) and is retried with backoff until the permission is granted")
        }
        ErrorKind::QuotaExceeded => {
            warn!(feature = %name, %namespace, error = %error, ?kind, "a ResourceQuota of the namespace has no room for this feature's objects; the feature reports Stalled (reason QuotaExceeded) and is retried with backoff")
        }
        ErrorKind::AdmissionDenied => {
            warn!(feature = %name, %namespace, error = %error, ?kind, "an admission webhook or ValidatingAdmissionPolicy denied this feature's objects; the feature reports Stalled (reason AdmissionDenied) and is retried with backoff")
        }
        _ => {
            warn!(feature = %name, %namespace, error = %error, ?kind, "reconcile failed; retrying")
        }
    }
    backoff_for("feature", retry_key("feature", &obj), error, &ctx)
}

fn error_policy_policy(
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
