//! The watches that fill the caches: PremiumFeatures and PremiumPolicies into reflector stores
//! and the index, owned objects into their views (`owned`). Every event reaches the index
//! before the reconcile it asks for is queued.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::core::DeserializeGuard;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, Event as WatchEvent, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tracing::warn;

use super::context::{Context, lock};
use super::echoes::Echoes;
use super::owned::{self, OwnedStore};
use super::union::{WatchStream, union};
use crate::api::{FEATURE_LABEL, PremiumFeature, PremiumPolicy};
use crate::core::graph::FeatureKey;

/// Longest wait for any answer from the API server (counted from each request write and each
/// read, so a slow but flowing response is never cut).
pub const API_READ_TIMEOUT: Duration = Duration::from_secs(120);
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

type FeatureRef = ObjectRef<DeserializeGuard<PremiumFeature>>;

/// The objects of kind `K` in each watched namespace, or in every namespace when none is named:
/// one `Api` per watch.
pub fn apis<K>(client: &Client, namespaces: &[String]) -> Vec<Api<K>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    if namespaces.is_empty() {
        return vec![Api::all(client.clone())];
    }
    namespaces
        .iter()
        .map(|ns| Api::namespaced(client.clone(), ns))
        .collect()
}

/// The watch of `apis` with `config` as one stream (see [`union`]).
fn watch_apis<K>(apis: Vec<Api<K>>, config: &watcher::Config) -> WatchStream<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let streams = apis
        .into_iter()
        .map(|api| watcher(api, config.clone()).default_backoff().boxed())
        .collect();
    union(streams, |o: &K| o.name_any())
}

/// Every watch's base configuration: see [`WATCH_TIMEOUT_SECS`].
fn watch_config() -> watcher::Config {
    watcher::Config::default()
        .timeout(WATCH_TIMEOUT_SECS)
        .page_size(LIST_PAGE_SIZE)
}

/// The watch of the operator's own resources: only those `--selector` picks.
pub fn selected_config(selector: &Option<String>) -> watcher::Config {
    match selector {
        Some(sel) => watch_config().labels(sel),
        None => watch_config(),
    }
}

/// The watches of one owned kind: the objects labelled as a feature's (whoever set the label:
/// one that is not the feature's is told apart by its controller reference), and the names of
/// all the others. Between them they see every object of the kind, so a name neither has is
/// free (see `owned::OwnedStore`).
fn owned_configs() -> (watcher::Config, watcher::Config) {
    (
        watch_config().labels(FEATURE_LABEL),
        watch_config().labels(&format!("!{FEATURE_LABEL}")),
    )
}

/// The caches of the four owned kinds and the tasks that fill them.
pub struct OwnedWatches {
    pub deployments: OwnedStore,
    pub services: OwnedStore,
    pub configmaps: OwnedStore,
    pub hpas: OwnedStore,
    pub tasks: Vec<JoinHandle<()>>,
}

/// Starts the watches of owned objects: label-filtered caches of what a reconcile reads of
/// each; an event that changes that asks for a reconcile of the controlling feature.
pub fn watch_owned_kinds(
    client: &Client,
    namespaces: &[String],
    feature_tx: &UnboundedSender<FeatureRef>,
    echoes: &Arc<Echoes>,
) -> OwnedWatches {
    let (deployments, deploy_task) = owned::watch_owned(
        apis::<Deployment>(client, namespaces),
        owned_configs(),
        feature_tx.clone(),
        echoes.clone(),
    );
    let (services, svc_task) = owned::watch_owned(
        apis::<Service>(client, namespaces),
        owned_configs(),
        feature_tx.clone(),
        echoes.clone(),
    );
    let (configmaps, cm_task) = owned::watch_owned(
        apis::<ConfigMap>(client, namespaces),
        owned_configs(),
        feature_tx.clone(),
        echoes.clone(),
    );
    let (hpas, hpa_task) = owned::watch_owned(
        apis::<HorizontalPodAutoscaler>(client, namespaces),
        owned_configs(),
        feature_tx.clone(),
        echoes.clone(),
    );
    OwnedWatches {
        deployments,
        services,
        configmaps,
        hpas,
        tasks: [deploy_task, svc_task, cm_task, hpa_task]
            .into_iter()
            .flatten()
            .collect(),
    }
}

/// Watches PremiumFeatures into `writer`: the index learns every change before the
/// reconcilers run, then the feature itself, its dependents (reverse index) and affected
/// policies are queued.
pub fn spawn_feature_watch(
    ctx: Arc<Context>,
    apis: Vec<Api<DeserializeGuard<PremiumFeature>>>,
    config: watcher::Config,
    writer: reflector::store::Writer<DeserializeGuard<PremiumFeature>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let stream = watch_apis(apis, &config)
            .map_ok(|ev| ev.modify(strip_guard))
            .reflect(writer);
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
}

/// Watches PremiumPolicies into `writer`, indexing each change and queueing its reconcile.
pub fn spawn_policy_watch(
    ctx: Arc<Context>,
    apis: Vec<Api<DeserializeGuard<PremiumPolicy>>>,
    config: watcher::Config,
    writer: reflector::store::Writer<DeserializeGuard<PremiumPolicy>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let stream = watch_apis(apis, &config).reflect(writer);
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
}

/// The reconcile requests of every policy in the cache that deserialized.
pub fn valid_policies(
    store: &reflector::Store<DeserializeGuard<PremiumPolicy>>,
) -> Vec<ObjectRef<DeserializeGuard<PremiumPolicy>>> {
    store
        .state()
        .iter()
        .filter_map(|g| g.0.as_ref().ok())
        .map(|p| ObjectRef::new(&p.name_any()).within(&p.namespace().unwrap_or_default()))
        .collect()
}

/// Drops what no reconcile reads and every copy would carry: a feature's managed fields.
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
    ctx.wake_after_feature_event(ev, wake);
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
