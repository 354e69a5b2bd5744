//! Caches of owned objects (Deployments, Services, ConfigMaps, HPAs), each object reduced to
//! its [`OwnedView`] as it arrives, and the watch that fills them and wakes owners.
//!
//! A reconcile reads a handful of fields of what a feature owns, so the cache holds those and
//! nothing else: at 10,000 features, four owned objects each, a view is a few short strings
//! where a trimmed typed copy was kilobytes (see README "Performance").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::warn;

use super::context::{Echoes, lock};
use crate::api::PremiumFeature;
use crate::core::signal::{OwnedView, Signalled, owner_to_wake};
use kube::core::DeserializeGuard;

/// Namespace → name → view.
type Views = HashMap<String, HashMap<String, Arc<OwnedView>>>;

/// The views of one owned kind, as last listed and watched.
#[derive(Clone)]
pub struct OwnedStore {
    views: Arc<Mutex<Views>>,
    synced: tokio::sync::watch::Sender<bool>,
}

impl Default for OwnedStore {
    fn default() -> Self {
        Self {
            views: Arc::default(),
            synced: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl OwnedStore {
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<OwnedView>> {
        lock(&self.views).get(namespace)?.get(name).cloned()
    }

    /// Objects held.
    pub fn len(&self) -> usize {
        lock(&self.views).values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves once the first full list is in.
    pub async fn wait_until_ready(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|synced| *synced).await;
    }

    fn insert(&self, namespace: &str, name: &str, view: OwnedView) -> Option<Arc<OwnedView>> {
        let mut views = lock(&self.views);
        let names = match views.get_mut(namespace) {
            Some(names) => names,
            None => views.entry(namespace.to_string()).or_default(),
        };
        names.insert(name.to_string(), Arc::new(view))
    }

    fn remove(&self, namespace: &str, name: &str) -> Option<Arc<OwnedView>> {
        let mut views = lock(&self.views);
        let names = views.get_mut(namespace)?;
        let gone = names.remove(name);
        if names.is_empty() {
            views.remove(namespace);
        }
        gone
    }

    /// Replaces everything with a fresh list; returns what the list no longer holds.
    fn replace(&self, listed: Views) -> Vec<(String, String, Arc<OwnedView>)> {
        let mut views = lock(&self.views);
        let old = std::mem::replace(&mut *views, listed);
        let mut vanished = Vec::new();
        for (namespace, names) in old {
            for (name, view) in names {
                if !views.get(&namespace).is_some_and(|n| n.contains_key(&name)) {
                    vanished.push((namespace.clone(), name, view));
                }
            }
        }
        drop(views);
        self.synced.send_replace(true);
        vanished
    }
}

type FeatureRef = ObjectRef<DeserializeGuard<PremiumFeature>>;

/// Watches one owned kind into a new store on a task of its own, and asks for a reconcile of
/// the controlling feature on every event that changes what its reconcile reads
/// ([`owner_to_wake`]): not for status fields that move no verdict, and not for the echo of
/// the operator's own write. Objects that vanished while the watch was down (absent from the
/// relist) wake their owners too.
///
/// Objects are reduced to views as they arrive, so no full copy outlives its event. A trigger
/// goes through an unbounded channel, so a busy controller never holds the watch back.
pub fn watch_owned<K>(
    api: Api<K>,
    config: watcher::Config,
    tx: mpsc::UnboundedSender<FeatureRef>,
    echoes: Arc<Echoes>,
) -> (OwnedStore, tokio::task::JoinHandle<()>)
where
    K: Resource<DynamicType = ()>
        + k8s_openapi::Resource
        + Signalled
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let store = OwnedStore::default();
    let kind = <K as k8s_openapi::Resource>::KIND;
    let task = {
        let store = store.clone();
        tokio::spawn(async move {
            let wake = |namespace: &str, owner: &str| {
                let _ = tx.send(ObjectRef::new(owner).within(namespace));
            };
            // Between a relist's start and its end: what it has listed so far.
            let mut listed: Option<Views> = None;
            let stream = watcher(api, config).default_backoff();
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(e) => {
                        warn!(error = %e, %kind, "watch failed; retrying with backoff");
                        continue;
                    }
                };
                match event {
                    Event::Init => listed = Some(Views::new()),
                    Event::InitApply(o) | Event::Apply(o) => {
                        let namespace = o.namespace().unwrap_or_default();
                        let name = o.name_any();
                        let view = o.view();
                        drop(o);
                        let echo = echoes.is_echo(kind, &namespace, &name, &view.written);
                        let previous = store.get(&namespace, &name);
                        if let Some(owner) = owner_to_wake(previous.as_deref(), &view, echo) {
                            wake(&namespace, owner);
                        }
                        match listed.as_mut() {
                            Some(listed) => {
                                listed
                                    .entry(namespace)
                                    .or_default()
                                    .insert(name, Arc::new(view));
                            }
                            None => {
                                store.insert(&namespace, &name, view);
                            }
                        }
                    }
                    Event::InitDone => {
                        let Some(listed) = listed.take() else {
                            continue;
                        };
                        for (namespace, name, view) in store.replace(listed) {
                            echoes.forget(kind, &namespace, &name);
                            if let Some(owner) = &view.owner {
                                wake(&namespace, owner);
                            }
                        }
                    }
                    Event::Delete(o) => {
                        let namespace = o.namespace().unwrap_or_default();
                        let name = o.name_any();
                        echoes.forget(kind, &namespace, &name);
                        let previous = store.remove(&namespace, &name);
                        if let Some(owner) = o
                            .view()
                            .owner
                            .or_else(|| previous.and_then(|p| p.owner.clone()))
                        {
                            wake(&namespace, &owner);
                        }
                    }
                }
            }
        })
    };
    (store, task)
}
