//! Caches of owned objects (Deployments, Services, ConfigMaps, HPAs), each object reduced to
//! its [`OwnedView`] as it arrives, and the watch that fills them and wakes owners.
//!
//! A reconcile reads a handful of fields of what a feature owns, so the cache holds those and
//! nothing else: at 10,000 features, four owned objects each, a view is a few short strings
//! where a trimmed typed copy was kilobytes (see README "Performance").

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::warn;

use super::echoes::Echoes;
use super::sync::lock;
use super::union::union;
use crate::api::PremiumFeature;
use crate::core::signal::{OwnedView, Signalled, owner_to_wake};
use kube::core::DeserializeGuard;

/// Namespace → name → view.
type Views = HashMap<String, HashMap<String, Arc<OwnedView>>>;
/// Namespace and name of objects of one kind that no feature's watch holds.
type Names = HashSet<(String, String)>;

/// The views of one owned kind, as last listed and watched, and the names of the objects of
/// that kind the views leave out (not labelled as a feature's).
///
/// The two watches split the kind between them, so a name in neither is a name nobody uses
/// (as of the watches' last events): the first write of a new feature's object needs no read
/// to make sure it takes nothing from anyone.
#[derive(Clone)]
pub struct OwnedStore {
    views: Arc<Mutex<Views>>,
    synced: tokio::sync::watch::Sender<bool>,
    others: Arc<Mutex<Names>>,
    others_synced: tokio::sync::watch::Sender<bool>,
}

impl Default for OwnedStore {
    fn default() -> Self {
        Self {
            views: Arc::default(),
            synced: tokio::sync::watch::Sender::new(false),
            others: Arc::default(),
            others_synced: tokio::sync::watch::Sender::new(false),
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

    /// Whether an object of this kind with this name exists without a feature's label: someone
    /// else's, or a feature's with its label removed by hand.
    pub fn is_other(&self, namespace: &str, name: &str) -> bool {
        lock(&self.others).contains(&(namespace.to_string(), name.to_string()))
    }

    /// Resolves once the first full lists of both watches are in.
    pub async fn wait_until_ready(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|synced| *synced).await;
        let mut rx = self.others_synced.subscribe();
        let _ = rx.wait_for(|synced| *synced).await;
    }

    fn insert(&self, namespace: &str, name: &str, view: Arc<OwnedView>) -> Option<Arc<OwnedView>> {
        let mut views = lock(&self.views);
        let names = match views.get_mut(namespace) {
            Some(names) => names,
            None => views.entry(namespace.to_string()).or_default(),
        };
        names.insert(name.to_string(), view)
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

/// An owned object as one watch event carries it: namespace, name and view.
pub type Seen = (String, String, OwnedView);

/// Applies one kind's watch events to its store and says which owners to wake (namespace,
/// feature name). Every wake is returned after the store holds what caused it, and a relist's
/// only once the whole list has replaced the store, so a woken reconcile never reads the state
/// from before the event.
pub struct Feed {
    store: OwnedStore,
    kind: &'static str,
    echoes: Arc<Echoes>,
    /// Between a relist's start and its end: what it has listed so far, and whom it wakes.
    listed: Option<Views>,
    relist_wakes: Vec<(String, String)>,
}

impl Feed {
    pub fn new(store: OwnedStore, kind: &'static str, echoes: Arc<Echoes>) -> Self {
        Self {
            store,
            kind,
            echoes,
            listed: None,
            relist_wakes: Vec::new(),
        }
    }

    pub fn handle(&mut self, event: Event<Seen>) -> Vec<(String, String)> {
        let mut wakes = Vec::new();
        match event {
            Event::Init => {
                self.listed = Some(Views::new());
                self.relist_wakes.clear();
            }
            Event::InitApply((namespace, name, view)) | Event::Apply((namespace, name, view)) => {
                let echo = self
                    .echoes
                    .is_echo(self.kind, &namespace, &name, &view.written);
                match self.listed.as_mut() {
                    Some(listed) => {
                        let previous = self.store.get(&namespace, &name);
                        if let Some(owner) = owner_to_wake(previous.as_deref(), &view, echo) {
                            self.relist_wakes
                                .push((namespace.clone(), owner.to_string()));
                        }
                        listed
                            .entry(namespace)
                            .or_default()
                            .insert(name, Arc::new(view));
                    }
                    None => {
                        let view = Arc::new(view);
                        let previous = self.store.insert(&namespace, &name, view.clone());
                        if let Some(owner) = owner_to_wake(previous.as_deref(), &view, echo) {
                            wakes.push((namespace, owner.to_string()));
                        }
                    }
                }
            }
            Event::InitDone => {
                if let Some(listed) = self.listed.take() {
                    for (namespace, name, view) in self.store.replace(listed) {
                        self.echoes.forget(self.kind, &namespace, &name);
                        if let Some(owner) = &view.owner {
                            wakes.push((namespace, owner.clone()));
                        }
                    }
                    wakes.append(&mut self.relist_wakes);
                }
            }
            Event::Delete((namespace, name, view)) => {
                self.echoes.forget(self.kind, &namespace, &name);
                let previous = self.store.remove(&namespace, &name);
                if let Some(owner) = view
                    .owner
                    .or_else(|| previous.and_then(|p| p.owner.clone()))
                {
                    wakes.push((namespace, owner));
                }
            }
        }
        wakes
    }
}

/// An event of a typed object as the event of its view; the object itself is dropped here.
fn seen_of<K: Signalled>(event: Event<K>) -> Event<Seen> {
    map_event(event, |o| {
        (o.namespace().unwrap_or_default(), o.name_any(), o.view())
    })
}

/// `event` with its object turned into `f` of it.
fn map_event<A, B>(event: Event<A>, f: impl FnOnce(A) -> B) -> Event<B> {
    match event {
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(f(o)),
        Event::InitDone => Event::InitDone,
        Event::Apply(o) => Event::Apply(f(o)),
        Event::Delete(o) => Event::Delete(f(o)),
    }
}

/// Keeps the names of one kind's objects that carry no feature label (see [`OwnedStore`]):
/// a relist replaces the set once it is whole, so the old set serves until then.
pub struct OthersFeed {
    store: OwnedStore,
    listed: Option<Names>,
}

impl OthersFeed {
    pub fn new(store: OwnedStore) -> Self {
        Self {
            store,
            listed: None,
        }
    }

    pub fn handle(&mut self, event: Event<(String, String)>) {
        match event {
            Event::Init => self.listed = Some(Names::new()),
            Event::InitApply(key) => match self.listed.as_mut() {
                Some(listed) => {
                    listed.insert(key);
                }
                None => {
                    lock(&self.store.others).insert(key);
                }
            },
            Event::InitDone => {
                if let Some(listed) = self.listed.take() {
                    *lock(&self.store.others) = listed;
                    self.store.others_synced.send_replace(true);
                }
            }
            Event::Apply(key) => {
                lock(&self.store.others).insert(key);
            }
            Event::Delete(key) => {
                lock(&self.store.others).remove(&key);
            }
        }
    }
}

/// The namespace and name an object's metadata event is about.
fn names_of<K: Resource>(event: Event<K>) -> Event<(String, String)> {
    map_event(event, |o| (o.namespace().unwrap_or_default(), o.name_any()))
}

/// Watches the metadata of the objects of one kind that the owned watch leaves out
/// (`config` selects them) in each of `apis`' namespaces, keeping their names in `store`
/// ([`OthersFeed`]). Metadata only: nothing of these objects but their names is read.
fn watch_others<K>(
    apis: &[Api<K>],
    config: watcher::Config,
    store: OwnedStore,
) -> tokio::task::JoinHandle<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + k8s_openapi::Resource
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let kind = <K as k8s_openapi::Resource>::KIND;
    let mut feed = OthersFeed::new(store);
    let metadata: Vec<Api<PartialObjectMeta<K>>> = apis
        .iter()
        .map(|api| {
            let client = api.clone().into_client();
            match api.namespace() {
                Some(namespace) => Api::namespaced(client, namespace),
                None => Api::all(client),
            }
        })
        .collect();
    tokio::spawn(async move {
        let streams = metadata
            .into_iter()
            .map(|api| {
                watcher(api, config.clone())
                    .default_backoff()
                    .map_ok(names_of)
                    .boxed()
            })
            .collect();
        let mut stream = union(streams, |key: &(String, String)| key.1.clone());
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => feed.handle(event),
                Err(e) => {
                    warn!(error = %e, %kind, "watch of unlabelled objects failed; retrying with backoff")
                }
            }
        }
    })
}

/// Watches one owned kind into a new store on a task of its own (see [`Feed`]), and asks for
/// a reconcile of the controlling feature on every event that changes what its reconcile reads
/// ([`owner_to_wake`]): not for status fields that move no verdict, and not for the echo of
/// the operator's own write. Objects that vanished while the watch was down (absent from the
/// relist) wake their owners too.
///
/// Objects are reduced to views as they arrive, so no full copy outlives its event. A trigger
/// goes through an unbounded channel, so a busy controller never holds the watch back.
pub fn watch_owned<K>(
    apis: Vec<Api<K>>,
    configs: (watcher::Config, watcher::Config),
    tx: mpsc::UnboundedSender<FeatureRef>,
    echoes: Arc<Echoes>,
) -> (OwnedStore, Vec<tokio::task::JoinHandle<()>>)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + k8s_openapi::Resource
        + Signalled
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (config, others_config) = configs;
    let store = OwnedStore::default();
    let kind = <K as k8s_openapi::Resource>::KIND;
    let others = watch_others(&apis, others_config, store.clone());
    let mut feed = Feed::new(store.clone(), kind, echoes);
    let task = tokio::spawn(async move {
        let streams = apis
            .into_iter()
            .map(|api| {
                watcher(api, config.clone())
                    .default_backoff()
                    .map_ok(seen_of)
                    .boxed()
            })
            .collect();
        let mut stream = union(streams, |seen: &Seen| seen.1.clone());
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    warn!(error = %e, %kind, "watch failed; retrying with backoff");
                    continue;
                }
            };
            for (namespace, owner) in feed.handle(event) {
                let _ = tx.send(ObjectRef::new(&owner).within(&namespace));
            }
        }
    });
    (store, vec![task, others])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::signal::Written;

    fn view(owner: &str, hash: &str) -> OwnedView {
        OwnedView {
            owner: Some(owner.into()),
            written: Written {
                applied_hash: Some(hash.into()),
                controller_uid: Some(format!("uid-{owner}")),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn seen(name: &str, hash: &str) -> Seen {
        ("ns".into(), name.into(), view(name, hash))
    }

    fn hash_in(store: &OwnedStore, name: &str) -> Option<String> {
        store.get("ns", name)?.written.applied_hash.clone()
    }

    fn woken(names: &[&str]) -> Vec<(String, String)> {
        names
            .iter()
            .map(|n| ("ns".to_string(), n.to_string()))
            .collect()
    }

    #[test]
    fn a_wake_comes_after_the_store_holds_its_cause() {
        let store = OwnedStore::default();
        let mut feed = Feed::new(store.clone(), "Deployment", Arc::default());
        assert_eq!(feed.handle(Event::Init), woken(&[]));
        assert_eq!(feed.handle(Event::InitApply(seen("a", "h1"))), woken(&[]));
        assert!(store.get("ns", "a").is_none(), "a relist lands at its end");
        assert_eq!(feed.handle(Event::InitDone), woken(&["a"]));
        assert_eq!(hash_in(&store, "a").as_deref(), Some("h1"));

        let wakes = feed.handle(Event::Apply(seen("a", "h2")));
        assert_eq!(wakes, woken(&["a"]));
        assert_eq!(hash_in(&store, "a").as_deref(), Some("h2"));
        assert_eq!(
            feed.handle(Event::Apply(seen("a", "h2"))),
            woken(&[]),
            "nothing moved"
        );

        assert_eq!(feed.handle(Event::Delete(seen("a", "h2"))), woken(&["a"]));
        assert!(store.get("ns", "a").is_none() && store.is_empty());
    }

    #[test]
    fn an_echo_of_the_operators_own_write_wakes_nobody() {
        let store = OwnedStore::default();
        let echoes = Arc::new(Echoes::default());
        let mut feed = Feed::new(store.clone(), "ConfigMap", echoes.clone());
        feed.handle(Event::Init);
        feed.handle(Event::InitDone);
        echoes.remember("ConfigMap", "ns", "a", view("a", "h1").written);
        assert_eq!(feed.handle(Event::Apply(seen("a", "h1"))), woken(&[]));
        assert!(store.get("ns", "a").is_some());
        // The echo was used up: the same change from someone else is news.
        assert_eq!(feed.handle(Event::Apply(seen("a", "h2"))), woken(&["a"]));
    }

    fn key(name: &str) -> (String, String) {
        ("ns".to_string(), name.to_string())
    }

    #[tokio::test]
    async fn the_names_of_others_follow_their_watch_and_a_relist_lands_whole() {
        let store = OwnedStore::default();
        let mut feed = OthersFeed::new(store.clone());
        feed.handle(Event::Init);
        feed.handle(Event::InitApply(key("theirs")));
        assert!(!store.is_other("ns", "theirs"), "a list lands at its end");
        feed.handle(Event::InitDone);
        assert!(store.is_other("ns", "theirs"));
        assert!(!store.is_other("other-ns", "theirs"));
        feed.handle(Event::Apply(key("new")));
        feed.handle(Event::Delete(key("theirs")));
        assert!(store.is_other("ns", "new") && !store.is_other("ns", "theirs"));

        // The watch broke; the relist no longer has "new": the old set serves until the end.
        feed.handle(Event::Init);
        feed.handle(Event::InitApply(key("later")));
        assert!(store.is_other("ns", "new") && !store.is_other("ns", "later"));
        feed.handle(Event::InitDone);
        assert!(!store.is_other("ns", "new") && store.is_other("ns", "later"));
    }

    #[tokio::test]
    async fn a_store_is_ready_once_both_of_its_watches_listed() {
        let store = OwnedStore::default();
        let mut views = Feed::new(store.clone(), "Service", Arc::default());
        views.handle(Event::Init);
        views.handle(Event::InitDone);
        let waiting = store.clone();
        let ready = tokio::spawn(async move { waiting.wait_until_ready().await });
        tokio::task::yield_now().await;
        assert!(
            !ready.is_finished(),
            "the names of others are not listed yet"
        );
        let mut others = OthersFeed::new(store.clone());
        others.handle(Event::Init);
        others.handle(Event::InitDone);
        tokio::time::timeout(std::time::Duration::from_secs(5), ready)
            .await
            .expect("ready once both listed")
            .expect("no panic");
    }

    #[test]
    fn a_relist_wakes_owners_of_what_changed_or_vanished_once_it_is_whole() {
        let store = OwnedStore::default();
        let mut feed = Feed::new(store.clone(), "Service", Arc::default());
        feed.handle(Event::Init);
        for name in ["kept", "moved", "gone"] {
            feed.handle(Event::InitApply(seen(name, "h1")));
        }
        feed.handle(Event::InitDone);
        assert_eq!(store.len(), 3);

        // The watch broke; the relist misses "gone" and shows "moved" changed.
        feed.handle(Event::Init);
        assert_eq!(
            feed.handle(Event::InitApply(seen("kept", "h1"))),
            woken(&[])
        );
        assert_eq!(
            feed.handle(Event::InitApply(seen("moved", "h2"))),
            woken(&[])
        );
        assert_eq!(
            store.len(),
            3,
            "the old list serves until the new one is whole"
        );
        let mut wakes = feed.handle(Event::InitDone);
        wakes.sort();
        assert_eq!(wakes, woken(&["gone", "moved"]));
        assert_eq!(store.len(), 2);
        assert!(store.get("ns", "gone").is_none());
        assert_eq!(hash_in(&store, "moved").as_deref(), Some("h2"));
    }
}
