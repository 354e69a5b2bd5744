//! The thin I/O shell: watches, caches, reconcilers that call the core and apply its result.

pub mod apply;
pub mod context;
pub mod feature;
pub mod index;
pub mod owned;
pub mod policy;

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
use crate::runtime::leader::{Election, LeaderConfig};
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

    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube {
                source: kube::Error::Api(s),
                ..
            } => match s.code {
                // Creating in a namespace being deleted is refused with 403 too; it is no
                // missing permission, and must not be reported as one.
                403 if namespace_terminating(s) => "NamespaceTerminating",
                403 => "Forbidden",
                404 => "NotFound",
                409 => "Conflict",
                422 => "Invalid",
                429 => "TooManyRequests",
                500..=599 => "ServerError",
                _ => "ApiError",
            },
            Error::Kube { .. } => "Transport",
            Error::Invalid(_) => "InvalidObject",
            Error::NotSynced => "NotSynced",
        }
    }
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
    pub fn new(controller: &'static str, kind: &'static str) -> Self {
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
                .get_or_create(&ErrorLabels::new(controller, "InvalidObject"))
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
    /// How long a leader that stopped renewing keeps the lease, in seconds.
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
    let client = kube::client::ClientBuilder::try_from(config)
        .map_err(|e| format!("cannot build a Kubernetes client: {e}"))?
        .with_layer(&request_counter(metrics.clone()))
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

    let election = if args.leader_elect {
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
        let identity = format!("{base}-{:08x}", rand::random::<u32>());
        let cfg = LeaderConfig {
            lease_name: args.leader_election_lease.clone(),
            namespace,
            identity: identity.clone(),
            duration: Duration::from_secs(args.lease_duration_seconds),
            grace: Duration::from_secs((args.lease_duration_seconds / 3).max(1)),
        };
        let mut election = Election::start(client.clone(), &cfg)
            .await
            .map_err(|e| format!("leader election: {e}"))?;
        // A standby is healthy and ready: it can take over.
        ready.store(true, Ordering::Relaxed);
        info!(%identity, lease = %cfg.lease_name, namespace = %cfg.namespace, "waiting to become the leader");
        tokio::select! {
            won = election.acquired() => {
                if !won {
                    return Err("the lease manager stopped before this instance became the leader".into());
                }
            }
            _ = stopped(stop_rx.clone()) => {
                election.release().await;
                let _ = http.await;
                return Ok(());
            }
        }
        info!(%identity, "became the leader");
        metrics.leader.set(1);
        Some(election)
    } else {
        metrics.leader.set(1);
        None
    };

    let lost_leadership = Arc::new(AtomicBool::new(false));
    let controllers_stop = {
        let lost = lost_leadership.clone();
        let mut leader_rx = election.as_ref().map(|e| e.is_leader.clone());
        let stop_rx = stop_rx.clone();
        async move {
            let lost_lease = async {
                match leader_rx.as_mut() {
                    Some(rx) => loop {
                        if rx.changed().await.is_err() || !*rx.borrow() {
                            break;
                        }
                    },
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = stopped(stop_rx) => {},
                _ = lost_lease => { lost.store(true, Ordering::Relaxed); }
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
    tokio::select! {
        _ = controllers => {},
        _ = deadline => warn!(grace = ?SHUTDOWN_GRACE, "in-flight reconciles did not finish in time; stopping anyway"),
    }

    if lost_leadership.load(Ordering::Relaxed) {
        error!("lost the leader lease; stopping so that only the leader writes");
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
    let tasks = [
        deploy_task,
        svc_task,
        cm_task,
        hpa_task,
        feature_task,
        policy_task,
    ];

    // Decide nothing from a partial picture: every cache has its first full list first.
    tokio::select! {
        _ = ctx.wait_synced() => {},
        _ = stop.clone() => {
            for t in &tasks { t.abort(); }
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
            lock(&ctx.queued_since)
                .entry(key)
                .or_insert_with(std::time::Instant::now);
        }
    }))
    .graceful_shutdown_on(stop.clone())
    .run(feature::reconcile, error_policy_feature, ctx.clone())
    .for_each(|_| futures::future::ready(()));
    let policy_controller = Controller::for_stream(
        futures::stream::pending::<Result<DeserializeGuard<PremiumPolicy>, watcher::Error>>(),
        policy_reader.clone(),
    )
    .with_config(controller_config)
    .reconcile_on(UnboundedReceiverStream::new(policy_rx))
    .graceful_shutdown_on(stop.clone())
    .run(policy::reconcile, error_policy_policy, ctx.clone())
    .for_each(|_| futures::future::ready(()));
    tokio::join!(feature_controller, policy_controller);
    back_lane.abort();
    downstream.abort();
    for t in &tasks {
        t.abort();
    }
    ready.store(false, Ordering::Relaxed);
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

fn backoff_for(error: &Error) -> Action {
    match error.kind() {
        "Conflict" => Action::requeue(Duration::from_millis(200)),
        "Forbidden" => Action::requeue(Duration::from_secs(30)),
        _ => Action::requeue(Duration::from_secs(5)),
    }
}

fn error_policy_feature(
    obj: Arc<DeserializeGuard<PremiumFeature>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let name = obj.0.as_ref().map(|f| f.name_any()).unwrap_or_default();
    let namespace = obj
        .0
        .as_ref()
        .ok()
        .and_then(|f| f.namespace())
        .unwrap_or_default();
    if error.kind() == "Forbidden" {
        error!(feature = %name, %namespace, error = %error, kind = error.kind(), "permission denied: the operator's RBAC role lacks a permission this feature needs; the feature reports Stalled (reason Forbidden) and is retried until the permission is granted");
    } else {
        warn!(feature = %name, %namespace, error = %error, kind = error.kind(), "reconcile failed; retrying");
    }
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels::new("feature", error.kind()))
        .inc();
    backoff_for(error)
}

fn error_policy_policy(
    obj: Arc<DeserializeGuard<PremiumPolicy>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let name = obj.0.as_ref().map(|p| p.name_any()).unwrap_or_default();
    warn!(policy = %name, error = %error, kind = error.kind(), "reconcile failed; retrying");
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels::new("policy", error.kind()))
        .inc();
    backoff_for(error)
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
        assert_eq!(terminating.kind(), "NamespaceTerminating");
        let rbac = api_error(
            403,
            "deployments.apps \"a\" is forbidden: User \"system:serviceaccount:ns:po\" cannot patch resource \"deployments\"",
            None,
        );
        assert_eq!(rbac.kind(), "Forbidden");
    }
}
