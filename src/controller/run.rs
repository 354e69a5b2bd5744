//! `premium-operator run`: the process around the controllers. It connects to the API server
//! (writes behind the leader gate), serves `/metrics` and the probes, waits to lead, runs the
//! controllers and stops: drained on SIGTERM, cut at once when the lease is lost.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use kube::Client;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, Store};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::controllers::{AbortOnDrop, run_controllers};
use super::watches::API_READ_TIMEOUT;
use crate::api::{Phase, PremiumFeature};
use crate::core::build::DEFAULT_SIDECAR_IMAGE;
use crate::runtime::heap::{Trim, spawn_trim};
use crate::runtime::http::{HttpState, serve};
use crate::runtime::leader::{Election, GatedExecutor, LeaderConfig, WriteGate};
use crate::runtime::metrics::{Metrics, PhaseLabels, request_counter};
use crate::runtime::shutdown::Stop;
use crate::runtime::telemetry;

/// How long a shutdown waits for in-flight reconciles.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Flags of `premium-operator run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Watch and manage only these namespaces, comma-separated (default: all namespaces). With
    /// namespaces named, the operator needs no cluster-wide permission: a Role in each will do.
    #[arg(long, env = "WATCH_NAMESPACE", value_delimiter = ',')]
    pub namespace: Vec<String>,
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

impl RunArgs {
    /// The namespaces to watch, each once and in order, without empty names; empty means all.
    pub fn watched_namespaces(&self) -> Vec<String> {
        let mut seen = std::collections::BTreeSet::new();
        self.namespace
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty() && seen.insert(n.clone()))
            .collect()
    }
}

/// Entry point of `premium-operator run`.
///
/// `trim` hands freed heap back to the operating system (see [`crate::runtime::heap`]); the
/// binary passes glibc's, other callers may pass none.
pub fn main(args: RunArgs, trim: Option<Trim>) -> ExitCode {
    telemetry::init(args.log_format != "text");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Debug builds poll the large reconcile futures on worker threads; tokio's 2 MiB
        // default overflowed in cluster tests.
        .thread_stack_size(8 << 20)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, trim)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "operator stopped");
            ExitCode::FAILURE
        }
    }
}

/// Runs the operator until SIGTERM (graceful) or until leadership is lost (exit, so a
/// supervisor restarts it as a standby).
pub async fn run(args: RunArgs, trim: Option<Trim>) -> Result<(), String> {
    let metrics = Arc::new(Metrics::default());
    let _trim = trim.map(|trim| {
        let metrics = metrics.clone();
        AbortOnDrop(vec![spawn_trim(trim, move || metrics.reconciles_started())])
    });
    let (client, election) = connect(&args, &metrics).await?;
    let ready = Arc::new(AtomicBool::new(false));
    let stop = Stop::default();
    stop.on_signal();
    // Stores are created up front so /metrics can count phases from the cache.
    let (features_reader, features_writer) = reflector::store::<DeserializeGuard<PremiumFeature>>();
    let http = serve_endpoints(
        args.metrics_address,
        &metrics,
        &ready,
        features_reader.clone(),
        &stop,
    );
    let election = match take_the_lead(election, &args, &ready, &metrics, &stop).await? {
        Leadership::Won(election) => election.map(|e| *e),
        Leadership::StoppedFirst => {
            let _ = http.await;
            return Ok(());
        }
    };
    let lost = lease_lost(&election);
    let controllers_stop = {
        let lost = lost.clone();
        let stopped = stop.requested();
        async move {
            tokio::select! {
                _ = stopped => {},
                _ = lost => {},
            }
        }
    }
    .shared();
    let controllers = run_controllers(
        &args,
        client,
        metrics.clone(),
        ready.clone(),
        features_reader,
        features_writer,
        controllers_stop.clone(),
    );
    let lost_leadership = drain(controllers, controllers_stop, lost).await;
    stop_serving(lost_leadership, election, &metrics, &ready, &stop, http).await
}

/// The client every controller uses and, with `--leader-elect`, the election whose gate its
/// writes pass.
async fn connect(
    args: &RunArgs,
    metrics: &Arc<Metrics>,
) -> Result<(Client, Option<Election>), String> {
    let mut config = kube::Config::infer().await.map_err(|e| {
        format!("no Kubernetes configuration found (in-cluster or KUBECONFIG): {e}")
    })?;
    // No request may hang forever on a connection an API server outage left dead: a frozen
    // server would otherwise leave reconciles (and with them the whole queue) waiting after it
    // came back. Counted from when the request is sent; watches end at the server before it
    // (see `watches`), so a quiet watch is never cut by it.
    config.read_timeout = Some(API_READ_TIMEOUT);
    config.reset_reader_on_write = true;
    let builder = |executor: GatedExecutor| {
        kube::client::ClientBuilder::try_from((config.clone(), executor))
            .map(|b| b.with_layer(&request_counter(metrics.clone())))
            .map_err(|e| format!("cannot build a Kubernetes client: {e}"))
    };
    // With leader election, every write goes through the election's gate, which lets it out
    // only while this instance leads on its own clock; the Lease has a client of its own.
    let election = match args.leader_elect {
        true => Some(Election::new(
            builder(GatedExecutor::new(WriteGate::open()))?.build(),
            leader_config(args),
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
    Ok((client, election))
}

/// Serves /metrics, /healthz and /readyz until a stop is requested; the phase gauges are
/// counted from the feature cache at each scrape.
fn serve_endpoints(
    address: SocketAddr,
    metrics: &Arc<Metrics>,
    ready: &Arc<AtomicBool>,
    features: Store<DeserializeGuard<PremiumFeature>>,
    stop: &Stop,
) -> JoinHandle<std::io::Result<()>> {
    let refresh: Arc<dyn Fn() + Send + Sync> = {
        let metrics = metrics.clone();
        Arc::new(move || {
            let state = features.state();
            let counts = phase_counts(state.iter().filter_map(|g| g.0.as_ref().ok()));
            for (phase, count) in counts {
                metrics
                    .features_by_phase
                    .get_or_create(&PhaseLabels {
                        phase: phase.as_str(),
                    })
                    .set(count);
            }
        })
    };
    let state = HttpState {
        metrics: metrics.clone(),
        ready: ready.clone(),
        refresh,
    };
    tokio::spawn(serve(address, state, stop.requested()))
}

/// Features per phase, every phase listed (a phase no feature is in any more reads 0, not its
/// last count); a feature without a status yet is Pending.
fn phase_counts<'a>(features: impl IntoIterator<Item = &'a PremiumFeature>) -> Vec<(Phase, i64)> {
    let mut counts = std::collections::BTreeMap::new();
    for f in features {
        let phase = f
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or(Phase::Pending);
        *counts.entry(phase).or_insert(0i64) += 1;
    }
    Phase::ALL
        .into_iter()
        .map(|p| (p, counts.get(&p).copied().unwrap_or(0)))
        .collect()
}

/// How waiting to lead ended.
enum Leadership {
    /// This instance leads (`None`: no election, it always does).
    Won(Option<Box<Election>>),
    /// A stop was requested first; the Lease was handed back.
    StoppedFirst,
}

/// Campaigns for the Lease and waits until this instance leads (at once without election).
async fn take_the_lead(
    election: Option<Election>,
    args: &RunArgs,
    ready: &AtomicBool,
    metrics: &Metrics,
    stop: &Stop,
) -> Result<Leadership, String> {
    let Some(mut election) = election else {
        metrics.leader.set(1);
        return Ok(Leadership::Won(None));
    };
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
        _ = stop.requested() => {
            election.release().await;
            return Ok(Leadership::StoppedFirst);
        }
    }
    info!(identity = election.identity(), "became the leader");
    metrics.leader.set(1);
    Ok(Leadership::Won(Some(Box::new(election))))
}

/// Resolves when leadership ends on this instance's own clock (see `runtime::leader`); never
/// without election.
fn lease_lost(election: &Option<Election>) -> Shared<BoxFuture<'static, ()>> {
    match election {
        Some(e) => e.ended().boxed(),
        None => std::future::pending().boxed(),
    }
    .shared()
}

/// Runs the controllers until they end; whether leadership was lost. When it is, in-flight
/// reconciles are cancelled at once, not drained, since the Lease may already be someone
/// else's. A stop request drains them instead, but never waits forever (an API server that
/// stopped answering must not keep the process, and so the lease, alive).
async fn drain(
    controllers: impl Future<Output = ()>,
    stop: impl Future<Output = ()>,
    lost: Shared<BoxFuture<'static, ()>>,
) -> bool {
    let deadline = stop.then(|_| tokio::time::sleep(SHUTDOWN_GRACE));
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
    lost_leadership || lost.now_or_never().is_some()
}

/// Hands the Lease back (unless it was lost) and stops the HTTP server.
async fn stop_serving(
    lost_leadership: bool,
    election: Option<Election>,
    metrics: &Metrics,
    ready: &AtomicBool,
    stop: &Stop,
    http: JoinHandle<std::io::Result<()>>,
) -> Result<(), String> {
    if lost_leadership {
        metrics.leader.set(0);
        ready.store(false, Ordering::Relaxed);
        error!(
            "lost the leader lease (no renewal within the renew deadline, or another holder); in-flight work cancelled; stopping so that only the leader writes"
        );
        stop.request();
        let _ = http.await;
        return Err("lost the leader lease".into());
    }
    if let Some(e) = election {
        e.release().await;
    }
    stop.request();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PremiumFeatureSpec, PremiumFeatureStatus};

    fn feature(phase: Option<Phase>) -> PremiumFeature {
        let mut f = PremiumFeature::new("f", PremiumFeatureSpec::default());
        f.status = phase.map(|p| PremiumFeatureStatus {
            phase: Some(p),
            ..Default::default()
        });
        f
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn namespaces(args: &[&str]) -> Vec<String> {
        use clap::Parser;
        let argv = std::iter::once("premium-operator").chain(args.iter().copied());
        Cli::try_parse_from(argv)
            .expect("flags parse")
            .run
            .watched_namespaces()
    }

    #[test]
    fn watched_namespaces_are_a_comma_list_without_repeats_or_blanks() {
        assert!(namespaces(&[]).is_empty());
        assert_eq!(namespaces(&["--namespace", "team-a"]), ["team-a"]);
        assert_eq!(
            namespaces(&[
                "--namespace",
                "team-a, team-b,,team-a",
                "--namespace=team-c"
            ]),
            ["team-a", "team-b", "team-c"]
        );
    }

    #[test]
    fn every_phase_is_counted_and_no_status_is_pending() {
        let features = [
            feature(None),
            feature(Some(Phase::Pending)),
            feature(Some(Phase::Ready)),
            feature(Some(Phase::Ready)),
            feature(Some(Phase::Failed)),
        ];
        let counts = phase_counts(&features);
        assert_eq!(counts.len(), Phase::ALL.len(), "{counts:?}");
        let count = |p: Phase| counts.iter().find(|(q, _)| *q == p).map(|(_, n)| *n);
        assert_eq!(count(Phase::Pending), Some(2));
        assert_eq!(count(Phase::Ready), Some(2));
        assert_eq!(count(Phase::Failed), Some(1));
        // A phase nobody is in reads 0, so a gauge never keeps its last count.
        assert_eq!(count(Phase::Degraded), Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_lease_cancels_reconciles_at_once() {
        let lost = futures::future::ready(()).boxed().shared();
        let controllers = std::future::pending::<()>();
        assert!(drain(controllers, std::future::pending(), lost).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_drains_for_the_grace_period_at_most() {
        let never = std::future::pending::<()>().boxed().shared();
        let started = tokio::time::Instant::now();
        assert!(
            !drain(
                std::future::pending(),
                futures::future::ready(()),
                never.clone()
            )
            .await
        );
        assert_eq!(started.elapsed(), SHUTDOWN_GRACE);
        // Controllers that finish are not waited on further.
        assert!(
            !drain(
                futures::future::ready(()),
                futures::future::ready(()),
                never
            )
            .await
        );
    }
}
