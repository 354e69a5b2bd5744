//! What the reliability and security suites need beyond the shared cluster: a cluster of their
//! own (for faults that hit the API server or etcd, and for cluster-wide operators that must not
//! touch other engineers' namespaces), the chart's least-privilege RBAC for an operator, and the
//! results table `make reliability` prints.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use super::operator::apply_yaml;

/// Set to `1` (by `make reliability`) for the long fault rounds; `make test` runs the light ones.
pub const RELIABILITY_ENV: &str = "PREMIUM_RELIABILITY";

pub fn heavy() -> bool {
    std::env::var(RELIABILITY_ENV).is_ok_and(|v| v == "1")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Appends one row to the results table (`$PREMIUM_RESULTS_FILE`, which `make reliability` sets
/// per run; else `target/reliability/results.tsv`): area, case, result, figures.
pub fn report(area: &str, case: &str, result: &str, figures: &str) {
    let file = std::env::var_os("PREMIUM_RESULTS_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/reliability/results.tsv"));
    if let Some(dir) = file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let line = format!("{area}\t{case}\t{result}\t{figures}\n");
    eprintln!("RESULT {}", line.trim_end());
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
    {
        let _ = f.write_all(line.as_bytes());
    }
}

/// A local control plane of this test's own (hack/cluster-up.sh with `PREMIUM_CLUSTER_DIR`),
/// brought down when dropped. Never the shared one: faults may be injected into it.
pub struct OwnCluster {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
}

impl OwnCluster {
    /// Starts `target/cluster-<name>-<pid>` with extra kube-apiserver flags; `{dir}` in a flag is
    /// replaced by the state directory.
    pub fn up(name: &str, apiserver_args: &[&str]) -> anyhow::Result<Self> {
        Self::up_with(name, apiserver_args, "*")
    }

    /// [`OwnCluster::up`] with the kube-controller-manager's `--controllers` (for example
    /// `*,-horizontal-pod-autoscaler-controller`, so a test's own scaling stands).
    pub fn up_with(name: &str, apiserver_args: &[&str], controllers: &str) -> anyhow::Result<Self> {
        // The test process's pid in the name: the same test run twice at once from one checkout
        // (two engineers' `make test`) must not share, and so tear down, one cluster.
        let dir = repo().join(format!("target/cluster-{name}-{}", std::process::id()));
        let args: Vec<String> = apiserver_args
            .iter()
            .map(|a| a.replace("{dir}", &dir.to_string_lossy()))
            .collect();
        let out = Command::new("bash")
            .arg(repo().join("hack/cluster-up.sh"))
            .env("PREMIUM_CLUSTER_DIR", &dir)
            .env("PREMIUM_APISERVER_ARGS", args.join(" "))
            .env("PREMIUM_CONTROLLERS", controllers)
            .output()
            .context("running hack/cluster-up.sh (needs bash)")?;
        if !out.status.success() {
            bail!(
                "could not start an own cluster in {} with hack/cluster-up.sh; the local control plane tools are needed (make tools):\n{}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Self {
            kubeconfig: dir.join("kubeconfig"),
            dir,
        })
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        client_for(&self.kubeconfig).await
    }

    /// Runs `hack/cluster-faults.sh ARGS` against this cluster; returns the seconds it took.
    pub fn fault(&self, args: &[&str]) -> anyhow::Result<f64> {
        let out = Command::new("bash")
            .arg(repo().join("hack/cluster-faults.sh"))
            .args(args)
            .env("PREMIUM_CLUSTER_DIR", &self.dir)
            .output()?;
        if !out.status.success() {
            bail!(
                "hack/cluster-faults.sh {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0.0))
    }

    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("logs/audit.log")
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        // Thaw first: a frozen process would ignore TERM until KILL.
        for c in ["etcd", "kube-apiserver"] {
            let _ = self.fault(&["thaw", c]);
        }
        // Keep the control plane's logs for a post-mortem.
        let name = self
            .dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let keep = repo().join("target/reliability/logs").join(name);
        let _ = std::fs::remove_dir_all(&keep);
        let _ = std::fs::create_dir_all(&keep);
        let _ = Command::new("cp")
            .arg("-r")
            .arg(self.dir.join("logs"))
            .arg(&keep)
            .output();
        let _ = Command::new("bash")
            .arg(repo().join("hack/cluster-down.sh"))
            .env("PREMIUM_CLUSTER_DIR", &self.dir)
            .output();
    }
}

pub async fn client_for(kubeconfig: &Path) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Polls `probe` until it returns true; the time it took, or an error naming `what`.
pub async fn time_until<F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if probe().await {
            return Ok(start.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// The helm binary built by hack/build-tools.sh.
pub fn helm() -> anyhow::Result<PathBuf> {
    let out = Command::new("bash")
        .arg(repo().join("hack/build-tools.sh"))
        .arg("--print-paths")
        .output()
        .context("running hack/build-tools.sh --print-paths")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("helm="))
        .map(PathBuf::from)
        .filter(|p| p.exists());
    path.context("helm is not built; run `make tools` (hack/build-tools.sh)")
}

/// Release name used for the chart's RBAC in tests; the ServiceAccount, Roles and the leader
/// Lease are all called `<RELEASE>-premium-operator`.
pub const RELEASE: &str = "po";
pub const CHART_NAME: &str = "po-premium-operator";

/// Applies the chart's own least-privilege RBAC (Role-only mode for `namespace`, leader
/// election on) and its ServiceAccount into `namespace`, and returns a kubeconfig file that
/// authenticates as that ServiceAccount. `extra_accounts` are bound to the same Roles (for a
/// second operator instance with its own identity in the audit log).
pub async fn chart_rbac_kubeconfig(
    admin: &Client,
    admin_kubeconfig: &Path,
    namespace: &str,
    extra_accounts: &[&str],
) -> anyhow::Result<Vec<PathBuf>> {
    chart_rbac(admin, admin_kubeconfig, namespace, true, extra_accounts).await
}

/// [`chart_rbac_kubeconfig`] in the chart's default, cluster-wide mode: its ClusterRole (named
/// after `namespace`) and binding, its ServiceAccount in `namespace` and its admission fence. The
/// cluster-scoped objects are owned by the Namespace, so they go with it, also on the shared
/// cluster. Returns a kubeconfig that authenticates as the ServiceAccount.
pub async fn chart_rbac_cluster_kubeconfig(
    admin: &Client,
    admin_kubeconfig: &Path,
    namespace: &str,
) -> anyhow::Result<PathBuf> {
    let mut files = chart_rbac(admin, admin_kubeconfig, namespace, false, &[]).await?;
    files.pop().context("no kubeconfig written")
}

impl OwnCluster {
    /// A cluster-wide operator on this cluster as a default chart install runs it: as the
    /// chart's ServiceAccount, with its ClusterRole (named after the namespace, so tests running
    /// at once do not share one), in a namespace of its own that is returned with it. The
    /// ClusterRole and its binding outlive that namespace, which is why this is for clusters of
    /// a test's own.
    pub async fn chart_operator(
        &self,
        client: &Client,
    ) -> anyhow::Result<(super::TestNamespace, super::operator::Operator)> {
        self.chart_operator_with(client, &[]).await
    }

    /// [`OwnCluster::chart_operator`] with extra `run` flags.
    pub async fn chart_operator_with(
        &self,
        client: &Client,
        extra: &[&str],
    ) -> anyhow::Result<(super::TestNamespace, super::operator::Operator)> {
        let home = super::TestNamespace::new(client, "operator").await?;
        let mut files = chart_rbac(client, &self.kubeconfig, home.name(), false, &[]).await?;
        let kubeconfig = files.pop().context("no kubeconfig written")?;
        let operator = super::operator::Operator::start_with(&kubeconfig, None, extra)?;
        Ok((home, operator))
    }
}

async fn chart_rbac(
    admin: &Client,
    admin_kubeconfig: &Path,
    namespace: &str,
    namespaced: bool,
    extra_accounts: &[&str],
) -> anyhow::Result<Vec<PathBuf>> {
    let mut helm = Command::new(helm()?);
    helm.args(["template", RELEASE])
        .arg(repo().join("charts/premium-operator"))
        .args(["--namespace", namespace]);
    if namespaced {
        helm.args(["--set", &format!("watchNamespace={namespace}")]);
    }
    // The admission fence comes with the RBAC, as in a default install: every suite that runs
    // the operator with the chart's identity also shows the fence lets it do its job.
    let out = helm
        .args(["--show-only", "templates/rbac.yaml"])
        .args(["--show-only", "templates/serviceaccount.yaml"])
        .args(["--show-only", "templates/admissionpolicy.yaml"])
        .output()
        .context("running helm template")?;
    if !out.status.success() {
        bail!(
            "helm template failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut yaml = owned_by_namespace(admin, namespace, &String::from_utf8(out.stdout)?).await?;
    for account in extra_accounts {
        yaml.push_str(&format!(
            "\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {account}}}\n"
        ));
        for role in [
            CHART_NAME.to_string(),
            format!("{CHART_NAME}-leader-election"),
        ] {
            yaml.push_str(&format!(
                "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {role}-{account}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {role}}}\nsubjects: [{{kind: ServiceAccount, name: {account}, namespace: {namespace}}}]\n"
            ));
        }
    }
    apply_yaml(admin, namespace, &yaml).await?;
    let mut files = Vec::new();
    for account in std::iter::once(CHART_NAME).chain(extra_accounts.iter().copied()) {
        files.push(token_kubeconfig(admin, admin_kubeconfig, namespace, account).await?);
    }
    Ok(files)
}

/// `yaml` with an owner reference to Namespace `namespace` on every cluster-scoped document,
/// so the garbage collector deletes them once the test's namespace is gone.
pub async fn owned_by_namespace(
    admin: &Client,
    namespace: &str,
    yaml: &str,
) -> anyhow::Result<String> {
    use k8s_openapi::api::core::v1::Namespace;
    use serde::Deserialize as _;
    let uid = Api::<Namespace>::all(admin.clone())
        .get(namespace)
        .await?
        .metadata
        .uid
        .context("namespace without uid")?;
    let owner = serde_yaml::to_value(serde_json::json!([{
        "apiVersion": "v1", "kind": "Namespace", "name": namespace, "uid": uid,
    }]))?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let mut value = serde_yaml::Value::deserialize(doc)?;
        if value.is_null() {
            continue;
        }
        let kind = value["kind"].as_str().unwrap_or_default();
        if super::operator::CLUSTER_SCOPED_KINDS.contains(&kind)
            && let Some(meta) = value["metadata"].as_mapping_mut()
        {
            meta.insert("ownerReferences".into(), owner.clone());
        }
        docs.push(serde_yaml::to_string(&value)?);
    }
    Ok(docs.join("---\n"))
}

async fn token_kubeconfig(
    admin: &Client,
    admin_kubeconfig: &Path,
    namespace: &str,
    account: &str,
) -> anyhow::Result<PathBuf> {
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    let request: TokenRequest = serde_json::from_value(serde_json::json!({
        "spec": {"audiences": [], "expirationSeconds": 7200}
    }))?;
    let token = accounts
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token for ServiceAccount {namespace}/{account}"))?
        .status
        .context("token request without status")?
        .token;
    let admin_kc = Kubeconfig::read_from(admin_kubeconfig)?;
    let cluster = admin_kc
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .context("admin kubeconfig without a cluster")?;
    let server = cluster.server.context("cluster without a server")?;
    let ca = cluster
        .certificate_authority_data
        .context("cluster without certificate-authority-data")?;
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: '{server}', certificate-authority-data: {ca}}}\nusers:\n- name: {account}\n  user: {{token: {token}}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: {account}, namespace: {namespace}}}\ncurrent-context: c\n"
    );
    let dir = repo().join("target/test-logs");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("kubeconfig-{namespace}-{account}"));
    std::fs::write(&path, text)?;
    Ok(path)
}
