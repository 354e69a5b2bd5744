//! The two controllers and what they stand on: the watches and caches (`watches`), the shared
//! context, the back lane and graph upkeep, and the feature and policy controllers themselves.
//! Nothing is reconciled before every cache holds its first full list.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use kube::Client;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tracing::info;

use super::context::{Context, Settings, Stores};
use super::echoes::Echoes;
use super::error_policy::{error_policy_feature, error_policy_policy, reset_backoff_on_success};
use super::watches::{self, OwnedWatches, apis, selected_config};
use super::{RunArgs, feature, policy};
use crate::api::{FIELD_MANAGER, PremiumFeature, PremiumPolicy};
use crate::core::build::EventSource;
use crate::core::graph::FeatureKey;
use crate::runtime::metrics::Metrics;

type FeatureRef = ObjectRef<DeserializeGuard<PremiumFeature>>;
type PolicyRef = ObjectRef<DeserializeGuard<PremiumPolicy>>;

/// Builds the watches, stores and both controllers, and runs them until `stop` resolves.
pub async fn run_controllers(
    args: &RunArgs,
    client: Client,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    features_reader: Store<DeserializeGuard<PremiumFeature>>,
    features_writer: reflector::store::Writer<DeserializeGuard<PremiumFeature>>,
    stop: impl Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    let ns = &args.watched_namespaces();
    let (feature_tx, feature_rx) = mpsc::unbounded_channel();
    let (policy_tx, policy_rx) = mpsc::unbounded_channel();
    let echoes = Arc::new(Echoes::default());
    let owned = watches::watch_owned_kinds(&client, ns, &feature_tx, &echoes);
    // Aborted however this function ends: when leadership is lost it is dropped, not awaited.
    let mut tasks = AbortOnDrop(Vec::new());
    // The context needs the policy store before the policy watch starts, so that watch is
    // wired by hand below.
    let (policy_reader, policy_writer) = reflector::store::<DeserializeGuard<PremiumPolicy>>();
    let stores = owned_and_own_stores(&mut tasks, owned, &features_reader, &policy_reader);
    let ctx = context(
        args,
        client.clone(),
        stores,
        echoes,
        &feature_tx,
        &policy_tx,
        metrics,
    );
    tasks.0.push(watches::spawn_feature_watch(
        ctx.clone(),
        apis(&client, ns),
        selected_config(&args.selector),
        features_writer,
    ));
    tasks.0.push(watches::spawn_policy_watch(
        ctx.clone(),
        apis(&client, ns),
        selected_config(&args.selector),
        policy_writer,
    ));

    // Decide nothing from a partial picture: every cache has its first full list first.
    tokio::select! {
        _ = ctx.wait_synced() => {},
        _ = stop.clone() => {
            return;
        }
    }
    ready.store(true, Ordering::Relaxed);
    info!("caches synced; reconciling");
    tasks
        .0
        .extend(start_graph_and_back_lane(&ctx, &feature_tx, args.concurrency).await);
    for p in watches::valid_policies(&policy_reader) {
        let _ = policy_tx.send(p);
    }

    let config = ControllerConfig::default().concurrency(args.concurrency);
    tokio::join!(
        feature_controller(
            &ctx,
            features_reader,
            feature_rx,
            config.clone(),
            stop.clone()
        ),
        policy_controller(&ctx, policy_reader, policy_rx, config, stop),
    );
    drop(tasks);
    ready.store(false, Ordering::Relaxed);
}

/// The caches the context reads: the owned watches' (whose tasks join `tasks`) and the
/// reflector stores of the operator's own resources.
fn owned_and_own_stores(
    tasks: &mut AbortOnDrop,
    owned: OwnedWatches,
    features: &Store<DeserializeGuard<PremiumFeature>>,
    policies: &Store<DeserializeGuard<PremiumPolicy>>,
) -> Stores {
    tasks.0.extend(owned.tasks);
    Stores {
        features: features.clone(),
        policies: policies.clone(),
        deployments: owned.deployments,
        services: owned.services,
        configmaps: owned.configmaps,
        hpas: owned.hpas,
    }
}

/// The context every reconcile is handed, from the command line and the caches.
fn context(
    args: &RunArgs,
    client: Client,
    stores: Stores,
    echoes: Arc<Echoes>,
    feature_tx: &UnboundedSender<FeatureRef>,
    policy_tx: &UnboundedSender<PolicyRef>,
    metrics: Arc<Metrics>,
) -> Arc<Context> {
    let events = EventSource {
        controller: FIELD_MANAGER.into(),
        instance: args
            .identity
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| FIELD_MANAGER.into()),
    };
    Arc::new(Context::new(
        client,
        stores,
        echoes,
        feature_tx.clone(),
        policy_tx.clone(),
        metrics,
        events,
        Settings {
            sidecar_image: args.sidecar_image.clone(),
            field_manager: FIELD_MANAGER.into(),
            teardown_wait: Duration::from_secs(args.teardown_wait_seconds),
        },
    ))
}

/// The task that feeds the back lane to the controller.
async fn start_graph_and_back_lane(
    ctx: &Arc<Context>,
    feature_tx: &UnboundedSender<FeatureRef>,
    concurrency: u16,
) -> Vec<JoinHandle<()>> {
    // Everything that existed before the first list is already queued in the back lane (the
    // index saw each for the first time), so it gets one reconcile and events that arrive
    // meanwhile go first. The graph heard the whole list at its end (`wake_after_feature_event`).
    // The back lane: first reconciles of new features and refreshes after graph changes, fed
    // while at most an eighth of the reconcile slots are busy (and at least one every 250 ms).
    let back_lane = {
        let ctx = ctx.clone();
        let tx = feature_tx.clone();
        let max = (usize::from(concurrency) / 8).max(1);
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
    vec![back_lane]
}

/// The feature controller, fed only by `triggers` (the watches and the back lane queue each
/// request; the store is read, never watched again).
fn feature_controller(
    ctx: &Arc<Context>,
    features: Store<DeserializeGuard<PremiumFeature>>,
    triggers: UnboundedReceiver<FeatureRef>,
    config: ControllerConfig,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) -> impl Future<Output = ()> {
    // When each feature was first queued since its last reconcile began.
    let queued = {
        let ctx = ctx.clone();
        move |r: &FeatureRef| {
            let key = FeatureKey::new(r.namespace.clone().unwrap_or_default(), r.name.clone());
            ctx.memory.queued(&key);
            ctx.metrics
                .set_queue_depth("feature", ctx.memory.queue_depth());
        }
    };
    Controller::for_stream(
        futures::stream::pending::<Result<DeserializeGuard<PremiumFeature>, watcher::Error>>(),
        features,
    )
    .with_config(config)
    .reconcile_on(UnboundedReceiverStream::new(triggers).inspect(queued))
    .graceful_shutdown_on(stop)
    .run(
        |obj, ctx| async move {
            let reconcile = feature::reconcile(obj.clone(), ctx.clone());
            reset_backoff_on_success("feature", &obj, &ctx, reconcile).await
        },
        error_policy_feature,
        ctx.clone(),
    )
    .for_each(|_| futures::future::ready(()))
}

/// The policy controller, fed only by `triggers`.
fn policy_controller(
    ctx: &Arc<Context>,
    policies: Store<DeserializeGuard<PremiumPolicy>>,
    triggers: UnboundedReceiver<PolicyRef>,
    config: ControllerConfig,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) -> impl Future<Output = ()> {
    Controller::for_stream(
        futures::stream::pending::<Result<DeserializeGuard<PremiumPolicy>, watcher::Error>>(),
        policies,
    )
    .with_config(config)
    .reconcile_on(UnboundedReceiverStream::new(triggers))
    .graceful_shutdown_on(stop)
    .run(
        |obj, ctx| async move {
            let reconcile = policy::reconcile(obj.clone(), ctx.clone());
            reset_backoff_on_success("policy", &obj, &ctx, reconcile).await
        },
        error_policy_policy,
        ctx.clone(),
    )
    .for_each(|_| futures::future::ready(()))
}

/// Background tasks that end with their owner.
pub(super) struct AbortOnDrop(pub(super) Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}
