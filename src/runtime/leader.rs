//! Leader election on a Lease: only the holder reconciles and writes.
//!
//! A standby may take the Lease over once it has seen no renewal for the lease duration. The
//! leader therefore stops on its own clock, sooner: once its last successful renewal is older
//! than the renew deadline (two thirds of the lease), it is no longer the leader, whatever the
//! API server says later. A paused process (SIGSTOP, a frozen VM, a long CPU throttle) that
//! wakes up after a standby took over finds its tenure over before it sends anything: every
//! write goes through [`WriteGate`], which checks the clock each time the request is polled,
//! and [`Election::ended`] resolves so in-flight reconciles are cancelled.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

/// Field manager of the operator's writes to its Lease.
const LEASE_FIELD_MANAGER: &str = "premium-operator-lease";
/// Longest wait for the Lease to be handed back at shutdown.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Lease settings.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub lease_name: String,
    pub namespace: String,
    pub identity: String,
    /// A holder that a standby has not seen renew for this long loses the lease.
    pub duration: Duration,
}

impl LeaderConfig {
    /// How long after sending its last successful renewal the leader still acts. A standby
    /// counts the lease duration from when it *saw* that renewal, which is later, so the third
    /// left over is the margin for a slow answer and for scheduling delays.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    /// How often the leader renews and a standby looks at the Lease: several tries fit in the
    /// renew deadline, so one slow or failed request does not end a tenure.
    pub fn retry_period(&self) -> Duration {
        (self.duration / 6).max(Duration::from_millis(500))
    }
}

/// This instance's leadership, as its own monotonic clock sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tenure {
    /// Not the leader (yet).
    Standby,
    /// The leader until `until`: the renew deadline after the last successful renewal was sent.
    Leading { until: Instant },
    /// Was the leader and is no more. Never leads again in this process: its work was cancelled
    /// and it stops, so a supervisor restarts it as a fresh standby.
    Over,
}

impl Tenure {
    /// After a renewal (or the first acquisition) sent at `sent_at` was confirmed at `now`.
    /// The deadline counts from the send, the last moment the Lease can show as renewed. A
    /// confirmation that arrives after the previous deadline is too late: this instance has
    /// already stopped acting, and must not start again on a Lease a standby may have taken.
    pub fn renewed(self, sent_at: Instant, now: Instant, renew_deadline: Duration) -> Self {
        let until = sent_at + renew_deadline;
        match self {
            Tenure::Over => Tenure::Over,
            Tenure::Leading { until: previous } if now >= previous => Tenure::Over,
            Tenure::Leading { until: previous } => Tenure::Leading {
                until: until.max(previous),
            },
            Tenure::Standby if now < until => Tenure::Leading { until },
            // Acquired, but so slowly that the renew deadline has already passed: the next
            // renewal makes it the leader.
            Tenure::Standby => Tenure::Standby,
        }
    }

    /// After reading the Lease held by another instance.
    pub fn lost(self) -> Self {
        match self {
            Tenure::Standby => Tenure::Standby,
            Tenure::Leading { .. } | Tenure::Over => Tenure::Over,
        }
    }

    /// Whether this instance may act (reconcile, write) at `now`.
    pub fn leads_at(&self, now: Instant) -> bool {
        matches!(self, Tenure::Leading { until } if now < *until)
    }

    /// Whether this instance led and, at `now`, no longer does.
    pub fn over_at(&self, now: Instant) -> bool {
        match self {
            Tenure::Standby => false,
            Tenure::Leading { until } => now >= *until,
            Tenure::Over => true,
        }
    }
}

/// A request the leader gate refused to send.
#[derive(Debug, thiserror::Error)]
#[error("not sent: this instance is not (or no longer surely) the leader")]
pub struct NotLeader;

/// Lets writes to the API server through only while this instance leads (always, without
/// leader election). Reads always pass: a standby keeps its caches warm.
#[derive(Debug, Clone)]
pub struct WriteGate(Option<watch::Receiver<Tenure>>);

impl WriteGate {
    /// A gate for a single instance (no leader election): every write passes.
    pub fn open() -> Self {
        Self(None)
    }

    /// Whether a write may be sent at `now`.
    pub fn allows(&self, now: Instant) -> bool {
        self.0.as_ref().is_none_or(|t| t.borrow().leads_at(now))
    }
}

impl<S> tower::Layer<S> for WriteGate {
    type Service = GatedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GatedService {
            inner,
            gate: self.clone(),
        }
    }
}

/// The client service stack behind a [`WriteGate`].
#[derive(Debug, Clone)]
pub struct GatedService<S> {
    inner: S,
    gate: WriteGate,
}

fn is_write(method: &http::Method) -> bool {
    !matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    )
}

impl<S, B> tower::Service<http::Request<B>> for GatedService<S>
where
    S: tower::Service<http::Request<B>>,
    S::Error: Into<tower::BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = tower::BoxError;
    type Future = Gated<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let gate = is_write(req.method()).then(|| self.gate.clone());
        Gated {
            gate,
            inner: Box::pin(self.inner.call(req)),
        }
    }
}

/// A request in flight. A write checks the gate each time it is polled, before it progresses:
/// a process paused between building a request and sending it finds, once resumed, that its
/// tenure is over, and the request is dropped unsent.
pub struct Gated<F> {
    gate: Option<WriteGate>,
    inner: Pin<Box<F>>,
}

impl<F, T, E> Future for Gated<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<tower::BoxError>,
{
    type Output = Result<T, tower::BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(gate) = &self.gate
            && !gate.allows(Instant::now())
        {
            return Poll::Ready(Err(Box::new(NotLeader)));
        }
        self.inner.as_mut().poll(cx).map_err(Into::into)
    }
}

/// The executor of the gated client's connection tasks. A request the gate let out is handed
/// to a connection task, which writes it to the socket later; a process paused in between (a
/// SIGSTOP, a frozen VM) would send it on waking, after a standby took over. Each connection
/// task therefore checks the tenure every time it is polled, before it moves a byte, and once
/// the tenure is over it ends: the connection closes with whatever it still held unsent. In
/// standby the connections run (the caches stay warm; writes are refused by [`WriteGate`]).
#[derive(Debug, Clone)]
pub struct GatedExecutor(WriteGate);

impl GatedExecutor {
    pub fn new(gate: WriteGate) -> Self {
        Self(gate)
    }

    fn connections_may_run(&self, now: Instant) -> bool {
        self.0.0.as_ref().is_none_or(|t| !t.borrow().over_at(now))
    }
}

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

impl hyper::rt::Executor<Task> for GatedExecutor {
    fn execute(&self, task: Task) {
        tokio::spawn(GatedConnection {
            executor: self.clone(),
            task,
        });
    }
}

/// A connection task that stops, unpolled, once the tenure is over.
struct GatedConnection {
    executor: GatedExecutor,
    task: Task,
}

impl Future for GatedConnection {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if !self.executor.connections_may_run(Instant::now()) {
            return Poll::Ready(());
        }
        self.task.as_mut().poll(cx)
    }
}

/// An election: a background campaign that acquires and renews the Lease and publishes the
/// [`Tenure`].
pub struct Election {
    api: Api<Lease>,
    cfg: LeaderConfig,
    tenure_tx: watch::Sender<Tenure>,
    tenure: watch::Receiver<Tenure>,
    campaign: Option<JoinHandle<()>>,
}

impl Election {
    /// An election not started yet: its [`WriteGate`] can be wired into the client first.
    /// `client` is used for the Lease only, and must not go through that gate.
    pub fn new(client: Client, cfg: LeaderConfig) -> Self {
        let (tenure_tx, tenure) = watch::channel(Tenure::Standby);
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            tenure_tx,
            tenure,
            campaign: None,
        }
    }

    /// This instance's identity in the Lease.
    pub fn identity(&self) -> &str {
        &self.cfg.identity
    }

    /// The gate that lets writes through while this instance leads.
    pub fn gate(&self) -> WriteGate {
        WriteGate(Some(self.tenure.clone()))
    }

    /// Starts acquiring and renewing the Lease in the background.
    pub fn start(&mut self) {
        if self.campaign.is_none() {
            let campaign = campaign(self.api.clone(), self.cfg.clone(), self.tenure_tx.clone());
            self.campaign = Some(tokio::spawn(campaign));
        }
    }

    /// Waits until this instance leads; false if its tenure ended first.
    pub async fn acquired(&mut self) -> bool {
        loop {
            let tenure = *self.tenure.borrow_and_update();
            if tenure.leads_at(Instant::now()) {
                return true;
            }
            if tenure == Tenure::Over || self.tenure.changed().await.is_err() {
                return false;
            }
        }
    }

    /// Resolves once this instance has led and no longer does, on its own clock: when the renew
    /// deadline passes without a renewal, even while a renewal request is still hanging.
    pub fn ended(&self) -> impl Future<Output = ()> + Send + 'static {
        tenure_ended(self.tenure.clone())
    }

    /// Stops renewing and hands the Lease back so a standby takes over at once.
    pub async fn release(mut self) {
        if let Some(campaign) = self.campaign.take() {
            campaign.abort();
        }
        // Nothing may be written once the Lease can be someone else's.
        self.tenure_tx.send_replace(Tenure::Over);
        match tokio::time::timeout(RELEASE_TIMEOUT, release(&self.api, &self.cfg)).await {
            Ok(Ok(true)) => info!("released the leader lease"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "could not release the leader lease; it expires by itself")
            }
            Err(_) => warn!("releasing the leader lease timed out; it expires by itself"),
        }
    }
}

impl Drop for Election {
    fn drop(&mut self) {
        if let Some(campaign) = self.campaign.take() {
            campaign.abort();
        }
    }
}

async fn tenure_ended(mut tenure: watch::Receiver<Tenure>) {
    loop {
        let current = *tenure.borrow_and_update();
        if current.over_at(Instant::now()) {
            return;
        }
        let deadline = match current {
            Tenure::Leading { until } => until,
            // Far enough to mean "until the tenure changes".
            Tenure::Standby | Tenure::Over => Instant::now() + Duration::from_secs(3600),
        };
        tokio::select! {
            changed = tenure.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// What a standby last saw of the Lease, and when (on its own clock): a holder counts as gone
/// once its record has not changed for its lease duration. Comparing its own clock with the
/// holder's renewTime would trust two clocks to agree.
#[derive(Debug, Clone, PartialEq)]
struct Observed {
    record: (Option<String>, Option<MicroTime>),
    at: Instant,
}

/// How one look at the Lease went.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// This instance holds the Lease (acquired or renewed).
    Holding,
    /// Another instance holds it and its lease is current.
    HeldByOther,
}

async fn campaign(api: Api<Lease>, cfg: LeaderConfig, tenure: watch::Sender<Tenure>) {
    let renew_deadline = cfg.renew_deadline();
    let mut observed: Option<Observed> = None;
    loop {
        if tenure.borrow().over_at(Instant::now()) {
            // Sticky: a late renewal must not revive a tenure whose work was cancelled.
            tenure.send_replace(Tenure::Over);
            return;
        }
        let sent_at = Instant::now();
        // An attempt answered after the renew deadline is useless; the clock has decided.
        let attempt =
            tokio::time::timeout(renew_deadline, try_hold(&api, &cfg, &mut observed)).await;
        let now = Instant::now();
        match attempt {
            Ok(Ok(Attempt::Holding)) => {
                tenure.send_if_modified(|t| {
                    let next = t.renewed(sent_at, now, renew_deadline);
                    let changed = next != *t;
                    *t = next;
                    changed
                });
            }
            Ok(Ok(Attempt::HeldByOther)) => {
                tenure.send_if_modified(|t| {
                    let next = t.lost();
                    let changed = next != *t;
                    *t = next;
                    changed
                });
            }
            Ok(Err(e)) => {
                warn!(error = %e, lease = %cfg.lease_name, "leader lease request failed; retrying")
            }
            Err(_) => warn!(lease = %cfg.lease_name, "leader lease request timed out; retrying"),
        }
        tokio::time::sleep(cfg.retry_period()).await;
    }
}

/// What one look at the Lease allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// Another instance holds it and a standby has seen it renewed within its lease duration.
    HeldByOther,
    /// This instance holds it: renew.
    Renew,
    /// Free, or its holder stopped renewing: take it over.
    TakeOver,
}

/// Decides from the Lease's spec as read at `seen_at` (this instance's clock), remembering in
/// `observed` when its record last changed: a holder counts as gone once its record has not
/// changed for the holder's own lease duration, as this instance's clock measures it.
fn claim(
    spec: &LeaseSpec,
    cfg: &LeaderConfig,
    observed: &mut Option<Observed>,
    seen_at: Instant,
) -> Claim {
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let record = (holder.clone(), spec.renew_time.clone());
    if observed.as_ref().is_none_or(|o| o.record != record) {
        *observed = Some(Observed {
            record,
            at: seen_at,
        });
    }
    if holder.as_deref() == Some(cfg.identity.as_str()) {
        return Claim::Renew;
    }
    let their_duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(cfg.duration, Duration::from_secs);
    let expired = observed
        .as_ref()
        .is_some_and(|o| seen_at >= o.at + their_duration);
    if holder.is_some() && !expired {
        return Claim::HeldByOther;
    }
    Claim::TakeOver
}

/// The spec fields a renewal or takeover at `now` writes; a takeover also restarts the
/// acquire time and counts a transition.
fn claim_patch(
    claim: Claim,
    spec: &LeaseSpec,
    cfg: &LeaderConfig,
    now: Timestamp,
) -> serde_json::Value {
    let mut patch = serde_json::json!({
        "holderIdentity": cfg.identity,
        "leaseDurationSeconds": lease_seconds(cfg),
        "renewTime": MicroTime(now),
    });
    if claim == Claim::TakeOver {
        patch["acquireTime"] = serde_json::json!(MicroTime(now));
        patch["leaseTransitions"] =
            serde_json::json!(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    patch
}

fn lease_seconds(cfg: &LeaderConfig) -> i32 {
    i32::try_from(cfg.duration.as_secs()).unwrap_or(i32::MAX)
}

/// One look at the Lease: takes it when it is free, expired or ours, with the resourceVersion
/// read as a precondition so two instances never both succeed.
async fn try_hold(
    api: &Api<Lease>,
    cfg: &LeaderConfig,
    observed: &mut Option<Observed>,
) -> Result<Attempt, kube::Error> {
    let now = Timestamp::now();
    let Some(lease) = api.get_opt(&cfg.lease_name).await? else {
        return create_lease(api, cfg, now).await;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let claim = claim(&spec, cfg, observed, Instant::now());
    if claim == Claim::HeldByOther {
        return Ok(Attempt::HeldByOther);
    }
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": lease.resource_version()},
        "spec": claim_patch(claim, &spec, cfg, now),
    });
    match api
        .patch(
            &cfg.lease_name,
            &PatchParams {
                field_manager: Some(LEASE_FIELD_MANAGER.into()),
                ..Default::default()
            },
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(Attempt::Holding),
        // Someone wrote the Lease since it was read: read it again next time.
        Err(kube::Error::Api(s)) if s.code == 409 && claim == Claim::TakeOver => {
            Ok(Attempt::HeldByOther)
        }
        Err(e) => Err(e),
    }
}

/// Creates the Lease held by this instance; another instance creating it first wins.
async fn create_lease(
    api: &Api<Lease>,
    cfg: &LeaderConfig,
    now: Timestamp,
) -> Result<Attempt, kube::Error> {
    let lease: Lease = serde_json::from_value(serde_json::json!({
        "metadata": {"name": cfg.lease_name, "namespace": cfg.namespace},
        "spec": {
            "holderIdentity": cfg.identity,
            "leaseDurationSeconds": lease_seconds(cfg),
            "acquireTime": MicroTime(now),
            "renewTime": MicroTime(now),
            "leaseTransitions": 0,
        },
    }))
    .map_err(kube::Error::SerdeError)?;
    let created = api
        .create(
            &PostParams {
                field_manager: Some(LEASE_FIELD_MANAGER.into()),
                ..Default::default()
            },
            &lease,
        )
        .await;
    match created {
        Ok(_) => Ok(Attempt::Holding),
        // Another instance created it first: look again next time.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::HeldByOther),
        Err(e) => Err(e),
    }
}

/// Clears the holder if it is still this instance; whether it was.
async fn release(api: &Api<Lease>, cfg: &LeaderConfig) -> Result<bool, kube::Error> {
    let Some(lease) = api.get_opt(&cfg.lease_name).await? else {
        return Ok(false);
    };
    let holder = lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref());
    if holder != Some(cfg.identity.as_str()) {
        return Ok(false);
    }
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": lease.resource_version()},
        "spec": {"holderIdentity": null, "renewTime": MicroTime(Timestamp::now())},
    });
    api.patch(
        &cfg.lease_name,
        &PatchParams {
            field_manager: Some(LEASE_FIELD_MANAGER.into()),
            ..Default::default()
        },
        &Patch::Merge(patch),
    )
    .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINE: Duration = Duration::from_secs(10);

    fn cfg(seconds: u64) -> LeaderConfig {
        LeaderConfig {
            lease_name: "l".into(),
            namespace: "ns".into(),
            identity: "me".into(),
            duration: Duration::from_secs(seconds),
        }
    }

    fn held_by(holder: &str, renewed_secs: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(
                Timestamp::from_second(renewed_secs).expect("a time"),
            )),
            lease_transitions: Some(3),
            ..Default::default()
        }
    }

    #[test]
    fn another_holder_is_gone_once_its_record_stood_still_for_its_lease_duration() {
        let cfg = cfg(30);
        let mut observed = None;
        let t0 = Instant::now();
        let other = held_by("other", 100);
        assert_eq!(claim(&other, &cfg, &mut observed, t0), Claim::HeldByOther);
        // Its duration (15 s), not ours (30 s), counted on this instance's clock.
        let t14 = t0 + Duration::from_secs(14);
        assert_eq!(claim(&other, &cfg, &mut observed, t14), Claim::HeldByOther);
        // A renewal restarts the count from when it was seen.
        let renewed = held_by("other", 110);
        assert_eq!(
            claim(&renewed, &cfg, &mut observed, t14),
            Claim::HeldByOther
        );
        let t20 = t0 + Duration::from_secs(20);
        assert_eq!(
            claim(&renewed, &cfg, &mut observed, t20),
            Claim::HeldByOther
        );
        let t29 = t0 + Duration::from_secs(29);
        assert_eq!(claim(&renewed, &cfg, &mut observed, t29), Claim::TakeOver);
    }

    #[test]
    fn a_free_lease_is_taken_and_an_own_one_renewed() {
        let cfg = cfg(15);
        let now = Instant::now();
        let free = LeaseSpec {
            holder_identity: Some(String::new()),
            ..held_by("", 100)
        };
        assert_eq!(claim(&free, &cfg, &mut None, now), Claim::TakeOver);
        assert_eq!(
            claim(&LeaseSpec::default(), &cfg, &mut None, now),
            Claim::TakeOver
        );
        assert_eq!(
            claim(&held_by("me", 100), &cfg, &mut None, now),
            Claim::Renew
        );
    }

    #[test]
    fn only_a_takeover_counts_a_transition() {
        let cfg = cfg(15);
        let now = Timestamp::from_second(200).expect("a time");
        let spec = held_by("other", 100);
        let renew = claim_patch(Claim::Renew, &spec, &cfg, now);
        assert_eq!(renew["holderIdentity"], "me");
        assert_eq!(renew["leaseDurationSeconds"], 15);
        assert!(renew.get("acquireTime").is_none() && renew.get("leaseTransitions").is_none());
        let take = claim_patch(Claim::TakeOver, &spec, &cfg, now);
        assert_eq!(take["leaseTransitions"], 4);
        assert_eq!(take["acquireTime"], take["renewTime"]);
    }

    #[test]
    fn the_leader_stops_well_before_a_standby_may_take_over() {
        for seconds in [2, 4, 6, 15, 60] {
            let c = cfg(seconds);
            assert!(c.renew_deadline() < c.duration, "{seconds}s");
            // At least two renewals fit before the deadline.
            assert!(c.retry_period() * 2 < c.renew_deadline(), "{seconds}s");
        }
    }

    /// A connection task counting how often it was polled; it never finishes by itself.
    struct Counted(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl Future for Counted {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_task_moves_nothing_once_the_tenure_is_over() {
        use std::sync::atomic::Ordering;
        let t0 = Instant::now();
        let (tx, rx) = watch::channel(Tenure::Standby.renewed(t0, t0, DEADLINE));
        let executor = GatedExecutor::new(WriteGate(Some(rx)));
        let polls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut connection = Box::pin(GatedConnection {
            executor,
            task: Box::pin(Counted(polls.clone())),
        });
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(connection.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1, "runs while leading");
        // Paused past the renew deadline: nothing renewed the tenure meanwhile.
        tokio::time::advance(DEADLINE).await;
        assert!(
            connection.as_mut().poll(&mut cx).is_ready(),
            "ends once over"
        );
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "the task was not polled again"
        );
        drop(tx);
    }

    #[test]
    fn connections_run_in_standby_and_without_election() {
        let (_tx, rx) = watch::channel(Tenure::Standby);
        assert!(GatedExecutor::new(WriteGate(Some(rx))).connections_may_run(Instant::now()));
        assert!(GatedExecutor::new(WriteGate::open()).connections_may_run(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn leadership_ends_on_the_own_clock_at_the_renew_deadline() {
        let t0 = Instant::now();
        let tenure = Tenure::Standby.renewed(t0, t0 + Duration::from_millis(50), DEADLINE);
        assert!(tenure.leads_at(Instant::now()));
        tokio::time::advance(DEADLINE - Duration::from_millis(1)).await;
        assert!(tenure.leads_at(Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!tenure.leads_at(Instant::now()));
        assert!(tenure.over_at(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_counts_from_when_it_was_sent_not_answered() {
        let t0 = Instant::now();
        let slow_answer = t0 + Duration::from_secs(3);
        let tenure = Tenure::Standby.renewed(t0, slow_answer, DEADLINE);
        assert_eq!(
            tenure,
            Tenure::Leading {
                until: t0 + DEADLINE
            }
        );
        // Each renewal moves the deadline on; an older one never moves it back.
        let later = tenure.renewed(
            t0 + Duration::from_secs(5),
            t0 + Duration::from_secs(6),
            DEADLINE,
        );
        assert_eq!(
            later,
            Tenure::Leading {
                until: t0 + Duration::from_secs(15)
            }
        );
        let stale = later.renewed(
            t0 + Duration::from_secs(1),
            t0 + Duration::from_secs(7),
            DEADLINE,
        );
        assert_eq!(stale, later);
    }

    #[tokio::test(start_paused = true)]
    async fn a_confirmation_after_the_deadline_does_not_revive_the_tenure() {
        let t0 = Instant::now();
        let leading = Tenure::Standby.renewed(t0, t0, DEADLINE);
        // Paused for 30 s in the middle of a renewal: its answer arrives after the deadline.
        let woke = t0 + Duration::from_secs(30);
        let after = leading.renewed(t0 + Duration::from_secs(9), woke, DEADLINE);
        assert_eq!(after, Tenure::Over);
        assert!(!after.leads_at(woke));
        // And nothing brings it back.
        assert_eq!(after.renewed(woke, woke, DEADLINE), Tenure::Over);
        assert_eq!(after.lost(), Tenure::Over);
    }

    #[tokio::test(start_paused = true)]
    async fn seeing_another_holder_ends_a_tenure_and_leaves_a_standby_waiting() {
        let t0 = Instant::now();
        assert_eq!(Tenure::Standby.lost(), Tenure::Standby);
        assert!(!Tenure::Standby.over_at(t0));
        let leading = Tenure::Standby.renewed(t0, t0, DEADLINE);
        assert_eq!(leading.lost(), Tenure::Over);
        // An acquisition confirmed after its own deadline does not make a leader yet.
        assert_eq!(
            Tenure::Standby.renewed(t0, t0 + DEADLINE, DEADLINE),
            Tenure::Standby
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_gate_closes_writes_at_the_deadline_and_never_closes_reads() {
        let (tx, rx) = watch::channel(Tenure::Standby);
        let gate = WriteGate(Some(rx));
        assert!(!gate.allows(Instant::now()), "a standby writes nothing");
        let t0 = Instant::now();
        tx.send_replace(Tenure::Standby.renewed(t0, t0, DEADLINE));
        assert!(gate.allows(Instant::now()));
        tokio::time::advance(DEADLINE).await;
        assert!(!gate.allows(Instant::now()));
        assert!(WriteGate::open().allows(Instant::now()));
        assert!(is_write(&http::Method::PATCH) && is_write(&http::Method::DELETE));
        assert!(!is_write(&http::Method::GET));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_built_before_a_pause_is_not_sent_after_it() {
        use tower::{Service, ServiceExt};
        let (tx, rx) = watch::channel(Tenure::Standby);
        let t0 = Instant::now();
        tx.send_replace(Tenure::Standby.renewed(t0, t0, DEADLINE));
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let inner = {
            let sent = sent.clone();
            tower::service_fn(move |req: http::Request<()>| {
                let sent = sent.clone();
                async move {
                    // Stands for the connection checkout before the bytes go out.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Ok::<_, std::convert::Infallible>(req.method().clone())
                }
            })
        };
        let mut svc = tower::Layer::layer(&WriteGate(Some(rx)), inner);
        let patch = http::Request::patch("/x").body(()).expect("a request");
        let read = http::Request::get("/x").body(()).expect("a request");
        let mut write = svc.ready().await.expect("ready").call(patch);
        let read = svc.ready().await.expect("ready").call(read);
        // The write is on its way (polled once) when the process is paused past the deadline.
        assert!(futures::poll!(&mut write).is_pending());
        tokio::time::advance(DEADLINE + Duration::from_secs(5)).await;
        let refused = write.await.expect_err("the write must not be sent");
        assert!(refused.is::<NotLeader>(), "{refused}");
        assert_eq!(read.await.expect("reads pass"), http::Method::GET);
        assert_eq!(
            sent.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "only the read went out"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ended_resolves_at_the_deadline_without_any_news() {
        let (tx, rx) = watch::channel(Tenure::Standby);
        let t0 = Instant::now();
        tx.send_replace(Tenure::Standby.renewed(t0, t0, DEADLINE));
        let ended = tokio::spawn(tenure_ended(rx));
        tokio::time::advance(DEADLINE - Duration::from_millis(100)).await;
        tokio::task::yield_now().await;
        assert!(!ended.is_finished());
        tokio::time::advance(Duration::from_millis(200)).await;
        tokio::time::timeout(Duration::from_millis(1), ended)
            .await
            .expect("ended at the deadline")
            .expect("no panic");
        drop(tx);
    }
}
