//! Runs the real `premium-operator` binary against the test cluster, one instance per test,
//! scoped to the test's namespace so tests running side by side never share an operator.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, CustomResourceExt};
use premium_operator::api::{PremiumFeature, PremiumPolicy};

use super::{FIELD_MANAGER, install_crd, kubeconfig_path};

/// Installs (or updates) both CRDs from the Rust types and waits until they are served.
pub async fn ensure_crds(client: &Client) -> anyhow::Result<()> {
    install_crd(client, &PremiumFeature::crd()).await?;
    install_crd(client, &PremiumPolicy::crd()).await?;
    Ok(())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// heaptrack's allocation recorder (Debian's heaptrack package).
const HEAPTRACK_PRELOAD: &str = "/usr/lib/heaptrack/libheaptrack_preload.so";

/// A running operator process, killed when dropped.
pub struct Operator {
    child: Child,
    pub metrics_port: u16,
    pub log: PathBuf,
}

impl Operator {
    /// Starts the operator scoped to `namespace` (or the whole cluster with `None`).
    pub fn start(namespace: Option<&str>, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(&kubeconfig_path(), namespace, extra)
    }

    /// Like [`Operator::start`], against the cluster and identity of another kubeconfig (an
    /// own cluster, or a ServiceAccount token with the chart's RBAC).
    pub fn start_with(
        kubeconfig: &std::path::Path,
        namespace: Option<&str>,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let port = free_port();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-logs");
        std::fs::create_dir_all(&dir)?;
        let log = dir.join(format!(
            "operator-{}-{port}.log",
            namespace.unwrap_or("cluster")
        ));
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_premium-operator"));
        cmd.arg("run")
            .arg("--metrics-address")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        if let Some(ns) = namespace {
            cmd.arg("--namespace").arg(ns);
        }
        // Heap profiling of the operator (README "Performance"): with PREMIUM_HEAPTRACK_DIR set,
        // every operator started here records heaptrack's raw trace into that folder.
        if let Some(trace_dir) = std::env::var_os("PREMIUM_HEAPTRACK_DIR") {
            if !std::path::Path::new(HEAPTRACK_PRELOAD).exists() {
                anyhow::bail!(
                    "PREMIUM_HEAPTRACK_DIR is set but {HEAPTRACK_PRELOAD} is missing: install heaptrack (apt-get install heaptrack) or unset it"
                );
            }
            let trace = PathBuf::from(trace_dir).join(format!("operator-{port}.raw"));
            cmd.env("LD_PRELOAD", HEAPTRACK_PRELOAD)
                .env("DUMP_HEAPTRACK_OUTPUT", trace);
        }
        let child = cmd.spawn().context("starting premium-operator")?;
        Ok(Self {
            child,
            metrics_port: port,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The `/metrics` text, or an error while the endpoint is not up.
    pub fn metrics(&self) -> anyhow::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.metrics_port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut body = String::new();
        stream.read_to_string(&mut body)?;
        Ok(body)
    }

    /// Sum of every sample of a metric whose line starts with `prefix` (name plus any labels).
    pub fn metric(&self, prefix: &str) -> anyhow::Result<f64> {
        Ok(sum_metric(&self.metrics()?, prefix))
    }

    /// Writes this instance has sent: owned objects applied or deleted, and status patches.
    pub fn writes(&self) -> anyhow::Result<f64> {
        let m = self.metrics()?;
        Ok(sum_metric(&m, "premium_object_writes_total")
            + sum_metric(&m, "premium_status_writes_total"))
    }

    /// Waits until `/metrics` answers.
    pub async fn wait_serving(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.metrics().is_ok() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "operator did not serve /metrics within {timeout:?}; log: {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then wait for the process to exit (graceful shutdown).
    pub async fn terminate(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("operator did not exit within {timeout:?} after SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the process is still alive (false after an exit or a crash).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The log so far, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

fn sum_metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
        .filter(|l| {
            prefix.contains('{') || matches!(l.as_bytes().get(prefix.len()), Some(b'{' | b' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A PremiumFeature manifest running podinfo, with `deps` as `name` or `name?` (optional).
pub fn feature_yaml(name: &str, deps: &[&str], extra_spec: &str) -> String {
    let deps: Vec<String> = deps
        .iter()
        .map(|d| match d.strip_suffix('?') {
            Some(n) => format!("{{name: {n}, optional: true}}"),
            None => format!("{{name: {d}}}"),
        })
        .collect();
    format!(
        "apiVersion: premium.dev/v1alpha1\nkind: PremiumFeature\nmetadata: {{name: {name}, labels: {{tier: premium}}}}\nspec:\n  image: ghcr.io/stefanprodan/podinfo:6.7.1\n  port: 9898\n  healthCheck: {{path: /readyz}}\n  dependsOn: [{}]\n{extra_spec}\n---\n",
        deps.join(", ")
    )
}

/// The kinds without a namespace that tests apply: the chart's cluster-wide RBAC and its
/// admission fence.
pub const CLUSTER_SCOPED_KINDS: [&str; 4] = [
    "ClusterRole",
    "ClusterRoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
];

/// Server-side applies YAML documents (a test's manifests) into `namespace` (documents that
/// name their own namespace keep it).
pub async fn apply_yaml(client: &Client, namespace: &str, yaml: &str) -> anyhow::Result<()> {
    apply_yaml_labelled(client, namespace, yaml, &[]).await
}

/// [`apply_yaml`], adding `labels` to every object.
pub async fn apply_yaml_labelled(
    client: &Client,
    namespace: &str,
    yaml: &str,
    labels: &[(&str, &str)],
) -> anyhow::Result<()> {
    use serde::Deserialize;
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_yaml::Value::deserialize(doc)?;
        if value.is_null() {
            continue;
        }
        let mut obj: kube::api::DynamicObject = serde_yaml::from_value(value)?;
        let types = obj
            .types
            .clone()
            .context("document without apiVersion/kind")?;
        let cluster_scoped = CLUSTER_SCOPED_KINDS.contains(&types.kind.as_str());
        let namespace = if cluster_scoped {
            String::new()
        } else {
            obj.metadata
                .namespace
                .get_or_insert_with(|| namespace.to_string())
                .clone()
        };
        let namespace = namespace.as_str();
        let all = obj.metadata.labels.get_or_insert_with(Default::default);
        for (k, v) in labels {
            all.insert(k.to_string(), v.to_string());
        }
        let (group, version) = match types.api_version.split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), types.api_version.clone()),
        };
        let plural = format!("{}s", types.kind.to_lowercase()).replace("policys", "policies");
        let ar = kube::discovery::ApiResource {
            group: group.clone(),
            version: version.clone(),
            api_version: types.api_version.clone(),
            kind: types.kind.clone(),
            plural,
        };
        let api: Api<kube::api::DynamicObject> = if cluster_scoped {
            Api::all_with(client.clone(), &ar)
        } else {
            Api::namespaced_with(client.clone(), namespace, &ar)
        };
        let name = obj
            .metadata
            .name
            .clone()
            .context("document without metadata.name")?;
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&obj),
        )
        .await
        .with_context(|| format!("applying {} {namespace}/{name}", types.kind))?;
    }
    Ok(())
}

/// Deletes every PremiumFeature of `api`'s namespace and waits up to 60 s until they are gone
/// (the operator's finalizer must tear them down, so it has to be running).
pub async fn delete_features(api: &Api<PremiumFeature>) -> anyhow::Result<()> {
    api.delete_collection(&Default::default(), &Default::default())
        .await
        .context("deleting the test's features")?;
    super::eventually(
        "the test's features to be torn down",
        Duration::from_secs(60),
        || {
            let api = api.clone();
            async move {
                Ok(api
                    .list(&Default::default())
                    .await?
                    .items
                    .is_empty()
                    .then_some(()))
            }
        },
    )
    .await
}

/// Deletes every PremiumFeature of a namespace while the operator still runs (its finalizer
/// tears them down), waits until they are gone, then deletes the namespace.
pub async fn finish(ns: super::TestNamespace, operator: Operator) -> anyhow::Result<()> {
    if let Err(e) = delete_features(&ns.api()).await {
        bail!("{e:#}; operator log:\n{}", operator.log_tail());
    }
    drop(operator);
    ns.delete().await
}

/// A feature's phase, if it has a status.
pub fn phase(f: Option<&PremiumFeature>) -> Option<premium_operator::api::Phase> {
    f.and_then(|f| f.status.as_ref()?.phase)
}

/// Waits until a feature reports `want` as its phase.
pub async fn wait_phase(
    api: &Api<PremiumFeature>,
    name: &str,
    want: premium_operator::api::Phase,
) -> anyhow::Result<PremiumFeature> {
    super::wait_for(
        api,
        name,
        move |f: Option<&PremiumFeature>| phase(f) == Some(want),
        super::DEFAULT_TIMEOUT,
    )
    .await
}

/// The portal examples (features and policies, not the Namespace), with their namespace
/// removed so they apply into a test's own.
pub fn portal_examples() -> String {
    let mut files: Vec<std::path::PathBuf> =
        std::fs::read_dir(std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples"))
            .expect("examples/")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
    files.sort();
    let mut docs = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let mut value: serde_yaml::Value =
                serde::Deserialize::deserialize(doc).expect("examples are YAML");
            if value.is_null() || value["kind"].as_str() == Some("Namespace") {
                continue;
            }
            // The examples name namespace portal; the test's own namespace replaces it.
            if let Some(meta) = value
                .get_mut("metadata")
                .and_then(serde_yaml::Value::as_mapping_mut)
            {
                meta.remove("namespace");
            }
            docs.push(serde_yaml::to_string(&value).expect("serializable"));
        }
    }
    docs.join("---\n")
}
