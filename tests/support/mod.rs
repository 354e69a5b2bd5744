//! Shared support for integration tests that run against the local cluster
//! started by `make cluster-up` (hack/cluster-up.sh).
//!
//! Use it from a test crate with `mod support;`. Every test gets its own
//! [`TestNamespace`]; waits go through [`wait_for`] and friends so a timeout
//! says what was awaited and what was last seen.
//!
//! There is no silent skip: without a reachable cluster, [`client`] panics
//! and says how to start one.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{Condition, conditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Config, CustomResourceExt, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// How long the helpers wait unless told otherwise. Generous: a cold cluster
/// on a 2-core machine can be slow to schedule the first pods.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(90);

/// Field manager for objects the tests apply.
pub const FIELD_MANAGER: &str = "premium-operator-tests";

/// Set to `1` to keep test namespaces after the test, for debugging.
pub const KEEP_NAMESPACES_ENV: &str = "PREMIUM_KEEP_TEST_NAMESPACES";

const HOW_TO_START: &str = "start the local cluster with `make cluster-up` (hack/cluster-up.sh), \
     or run everything with `make test`";

/// The kubeconfig the tests use: `$KUBECONFIG` when set, otherwise the one
/// `make cluster-up` writes to `<repo>/target/cluster/kubeconfig`.
pub fn kubeconfig_path() -> PathBuf {
    match std::env::var_os("KUBECONFIG") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/cluster/kubeconfig"),
    }
}

async fn load_config() -> Result<Config, kube::config::KubeconfigError> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig_path())?;
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await
}

/// A client for the test cluster, checked to answer.
///
/// # Panics
/// When there is no kubeconfig or the API server does not answer: the test
/// cannot mean anything without a cluster, and skipping would hide that.
pub async fn client() -> Client {
    let path = kubeconfig_path();
    let config = match load_config().await {
        Ok(config) => config,
        Err(err) => panic!(
            "no usable kubeconfig at {}: {err}; {HOW_TO_START}",
            path.display()
        ),
    };
    let server = config.cluster_url.clone();
    let client = match Client::try_from(config) {
        Ok(client) => client,
        Err(err) => panic!("cannot build a client from {}: {err}", path.display()),
    };
    match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
        Ok(Ok(_)) => client,
        Ok(Err(err)) => panic!(
            "test cluster at {server} (kubeconfig {}) is not reachable: {err}; {HOW_TO_START}",
            path.display()
        ),
        Err(_) => panic!(
            "test cluster at {server} (kubeconfig {}) did not answer within 10s; {HOW_TO_START}",
            path.display()
        ),
    }
}

/// A fresh namespace with a server-generated unique name, deleted when the
/// value goes out of scope (also when the test panics).
///
/// Prefer `ns.delete().await` at the end of a test; `Drop` is the fallback
/// and runs the delete on its own thread and runtime, so it works inside or
/// outside a tokio runtime. Set `PREMIUM_KEEP_TEST_NAMESPACES=1` to keep
/// the namespaces for a post-mortem.
pub struct TestNamespace {
    name: String,
    client: Client,
    deleted: bool,
}

impl TestNamespace {
    /// Creates `<prefix>-xxxxx` and waits for its `default` ServiceAccount
    /// (pods are refused until it exists).
    pub async fn new(client: &Client, prefix: &str) -> anyhow::Result<Self> {
        Self::with_labels(client, prefix, &[]).await
    }

    /// Like [`TestNamespace::new`], with labels on the namespace (for
    /// example `pod-security.kubernetes.io/enforce`).
    pub async fn with_labels(
        client: &Client,
        prefix: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut all_labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        all_labels.insert("premium.dev/test".into(), "true".into());
        let namespace = Namespace {
            metadata: kube::api::ObjectMeta {
                generate_name: Some(format!("{}-", prefix.trim_end_matches('-'))),
                labels: Some(all_labels),
                ..Default::default()
            },
            ..Default::default()
        };
        let created = Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("creating a test namespace {prefix}-*"))?;
        let ns = Self {
            name: created.name_any(),
            client: client.clone(),
            deleted: false,
        };
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
        wait_for(
            &accounts,
            "default",
            conditions::is_created(),
            DEFAULT_TIMEOUT,
        )
        .await
        .context("the serviceaccount controller (kube-controller-manager) did not create it")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client the namespace was created with.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// An `Api` for a namespaced kind in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Deletes the namespace now (without waiting for it to be gone).
    pub async fn delete(mut self) -> anyhow::Result<()> {
        self.deleted = true;
        if keep_namespaces() {
            return Ok(());
        }
        delete_namespace(&self.client, &self.name).await
    }
}

fn keep_namespaces() -> bool {
    std::env::var(KEEP_NAMESPACES_ENV).is_ok_and(|v| v == "1")
}

async fn delete_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    match Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::background())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(err) => Err(err).with_context(|| format!("deleting test namespace {name}")),
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.deleted || keep_namespaces() {
            return;
        }
        let name = std::mem::take(&mut self.name);
        // A fresh thread, runtime and client: the test's runtime may be
        // blocked on this very drop (or gone), and a client's pooled
        // connections belong to the runtime that opened them.
        let outcome = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building a runtime to delete the namespace")?;
            runtime.block_on(async {
                let client = Client::try_from(load_config().await?)?;
                tokio::time::timeout(Duration::from_secs(15), delete_namespace(&client, &name))
                    .await
                    .map_err(|_| anyhow!("deleting namespace {name} timed out"))?
            })
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!("warning: test namespace cleanup failed: {err:#}"),
            Err(_) => eprintln!("warning: test namespace cleanup thread panicked"),
        }
    }
}

/// Watches `name` until `condition` holds and returns the object.
///
/// `condition` is any kube [`Condition`] (closures `Fn(Option<&K>) -> bool`
/// included); it must hold for an existing object (use [`wait_for_deleted`]
/// for absence). Watch errors are retried until the timeout. On timeout the
/// error names the object and shows its last observed status.
pub async fn wait_for<K, F>(
    api: &Api<K>,
    name: &str,
    condition: F,
    timeout: Duration,
) -> anyhow::Result<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + 'static,
    F: Condition<K>,
{
    let what = describe::<K>(api, name);
    match watch_until(
        api,
        name,
        |object| condition.matches_object(object),
        timeout,
    )
    .await
    {
        Ok(Some(object)) => Ok(object),
        Ok(None) => bail!(
            "waiting for {what}: the condition holds for a missing object; use wait_for_deleted"
        ),
        Err(last) => bail!("timed out after {timeout:?} waiting for {what}; {last}"),
    }
}

/// Waits until `name` no longer exists.
pub async fn wait_for_deleted<K>(api: &Api<K>, name: &str, timeout: Duration) -> anyhow::Result<()>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + 'static,
{
    let what = describe::<K>(api, name);
    match watch_until(api, name, |object| object.is_none(), timeout).await {
        Ok(_) => Ok(()),
        Err(last) => bail!("timed out after {timeout:?} waiting for {what} to be deleted; {last}"),
    }
}

/// Watches one object until `done` holds for it (or its absence). On timeout,
/// returns what was last seen, for the caller's error message.
async fn watch_until<K>(
    api: &Api<K>,
    name: &str,
    mut done: impl FnMut(Option<&K>) -> bool,
    timeout: Duration,
) -> Result<Option<K>, String>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned + Send + 'static,
{
    let mut last_seen: Option<Option<K>> = None;
    let mut last_error: Option<String> = None;
    let outcome = tokio::time::timeout(timeout, async {
        let mut stream = pin!(watcher::watch_object(api.clone(), name).default_backoff());
        while let Some(event) = stream.next().await {
            match event {
                Ok(object) if done(object.as_ref()) => return Some(object),
                Ok(object) => last_seen = Some(object),
                Err(err) => last_error = Some(err.to_string()),
            }
        }
        None
    })
    .await;
    match outcome {
        Ok(Some(object)) => Ok(object),
        // The watch stream never ends on its own; treat it like a timeout.
        Ok(None) | Err(_) => {
            let mut summary = format!("last seen: {}", last_seen_summary(last_seen.as_ref()));
            if let Some(err) = last_error {
                summary.push_str(&format!("; last watch error: {err}"));
            }
            Err(summary)
        }
    }
}

/// Polls `probe` every 200 ms until it returns `Some`, for waits that are
/// not about one object (for example "no ReplicaSet left in the
/// namespace"). `what` is the error message's subject.
pub async fn eventually<T, P, Fut>(what: &str, timeout: Duration, mut probe: P) -> anyhow::Result<T>
where
    P: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let mut last_error = None;
    let outcome = tokio::time::timeout(timeout, async {
        loop {
            match probe().await {
                Ok(Some(value)) => return value,
                Ok(None) => last_error = None,
                Err(err) => last_error = Some(format!("{err:#}")),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    match outcome {
        Ok(value) => Ok(value),
        Err(_) => match last_error {
            Some(err) => bail!("timed out after {timeout:?} waiting for {what}; last error: {err}"),
            None => bail!("timed out after {timeout:?} waiting for {what}"),
        },
    }
}

/// Holds once the Deployment controller has seen the latest spec and every
/// desired replica is updated, ready and available (`Available=True`).
pub fn deployment_available() -> impl Condition<Deployment> {
    |deployment: Option<&Deployment>| {
        let Some(deployment) = deployment else {
            return false;
        };
        let Some(status) = &deployment.status else {
            return false;
        };
        let desired = deployment
            .spec
            .as_ref()
            .and_then(|spec| spec.replicas)
            .unwrap_or(1);
        let observed_latest = match (status.observed_generation, deployment.metadata.generation) {
            (Some(observed), Some(generation)) => observed >= generation,
            _ => false,
        };
        let available = status.conditions.as_ref().is_some_and(|conds| {
            conds
                .iter()
                .any(|c| c.type_ == "Available" && c.status == "True")
        });
        observed_latest
            && available
            && status.replicas.unwrap_or(0) == desired
            && status.updated_replicas.unwrap_or(0) == desired
            && status.ready_replicas.unwrap_or(0) == desired
            && status.available_replicas.unwrap_or(0) == desired
    }
}

/// Waits for [`deployment_available`].
pub async fn wait_for_deployment_available(
    api: &Api<Deployment>,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<Deployment> {
    wait_for(api, name, deployment_available(), timeout).await
}

/// Server-side applies `object` (named by its `metadata.name`) with
/// [`FIELD_MANAGER`], forcing ownership: create-or-update in one call.
pub async fn apply<K>(api: &Api<K>, object: &K) -> anyhow::Result<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = object
        .meta()
        .name
        .clone()
        .context("object to apply has no metadata.name")?;
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .with_context(|| format!("applying {}", describe::<K>(api, &name)))
}

/// Server-side applies a CustomResourceDefinition (idempotent) and waits
/// until it is Established, i.e. its resource can be served.
pub async fn install_crd(
    client: &Client,
    crd: &CustomResourceDefinition,
) -> anyhow::Result<CustomResourceDefinition> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let applied = apply(&api, crd).await?;
    wait_for(
        &api,
        &applied.name_any(),
        conditions::is_crd_established(),
        DEFAULT_TIMEOUT,
    )
    .await
}

fn describe<K>(api: &Api<K>, name: &str) -> String
where
    K: Resource<DynamicType = ()>,
{
    let kind = K::kind(&());
    match api.namespace() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

fn last_seen_summary<K: Serialize>(last_seen: Option<&Option<K>>) -> String {
    const LIMIT: usize = 2000;
    let Some(object) = last_seen else {
        return "nothing (no watch event arrived)".into();
    };
    let Some(object) = object else {
        return "the object does not exist".into();
    };
    let value = serde_json::to_value(object).unwrap_or_default();
    // The status says why a condition does not hold; the whole object is noise.
    let shown = value.get("status").unwrap_or(&value);
    let mut text = shown.to_string();
    if text.len() > LIMIT {
        let cut = (0..=LIMIT)
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text.truncate(cut);
        text.push_str("...");
    }
    format!("status {text}")
}

pub mod cluster;
pub mod kwok;
pub mod operator;

/// The real PremiumFeature CRD with every version's schema replaced by "any object", so a
/// feature the Rust type cannot read can be stored behind the schema's back. Well-formed
/// features are served as before.
pub fn unchecked_feature_crd() -> anyhow::Result<CustomResourceDefinition> {
    let mut crd = serde_json::to_value(premium_operator::api::PremiumFeature::crd())?;
    for version in crd["spec"]["versions"].as_array_mut().into_iter().flatten() {
        version["schema"] = serde_json::json!({"openAPIV3Schema": {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true,
        }});
    }
    Ok(serde_json::from_value(crd)?)
}
