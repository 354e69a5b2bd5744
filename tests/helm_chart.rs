//! The Helm chart, for real: `helm lint --strict`; `helm install` into a namespace that
//! enforces (and warns on) Pod Security `restricted`, with no warning; every rendered object
//! accepted by a server-side dry run; the operator binary run with a kubeconfig for the chart's
//! ServiceAccount (token from the TokenRequest API) makes the examples converge, in both RBAC
//! modes, which proves the chart's RBAC is enough; `kubectl auth can-i` proves that identity
//! can do nothing else; `helm upgrade` and `helm uninstall` behave (CRDs kept).
//!
//! Needs the local cluster and the built Helm (`make cluster-up`, or `make test`).

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::Api;
use kube::config::{AuthInfo, Kubeconfig};
use kube::runtime::conditions;
use premium_operator::api::PremiumFeature;
use premium_operator::controller::FINALIZER;
use support::operator::{apply_yaml, delete_features, ensure_crds};
use support::{DEFAULT_TIMEOUT, TestNamespace, kubeconfig_path, wait_for};

const CHART: &str = "charts/premium-operator";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A tool built by hack/build-tools.sh (helm, kubectl), found the way the scripts find it.
/// Panics, never skips, when it is missing.
fn tool(name: &str) -> PathBuf {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("source hack/lib.sh && tool_path {name}"))
        .current_dir(repo())
        .output()
        .expect("bash runs");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        out.status.success() && path.is_file(),
        "{name} is not built (looked for {}); run hack/build-tools.sh (or make cluster-up / make test, which build it)",
        path.display()
    );
    path
}

/// Runs a tool against the test cluster (or the given kubeconfig) and returns its output.
fn run(tool_path: &Path, args: &[&str], kubeconfig: Option<&Path>, stdin: Option<&str>) -> Output {
    let kubeconfig = kubeconfig.map_or_else(kubeconfig_path, Path::to_path_buf);
    let mut cmd = Command::new(tool_path);
    cmd.args(args)
        .current_dir(repo())
        .env("KUBECONFIG", &kubeconfig)
        // Helm keeps its caches and repositories out of $HOME.
        .env("HELM_CACHE_HOME", repo().join("target/helm/cache"))
        .env("HELM_CONFIG_HOME", repo().join("target/helm/config"))
        .env("HELM_DATA_HOME", repo().join("target/helm/data"))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("tool starts");
    if let Some(input) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin piped");
        pipe.write_all(input.as_bytes()).expect("stdin written");
    }
    child.wait_with_output().expect("tool finishes")
}

/// Like [`run`], failing with the tool's stderr unless it succeeds.
fn run_ok(tool_path: &Path, args: &[&str]) -> anyhow::Result<Output> {
    let out = run(tool_path, args, None, None);
    ensure!(
        out.status.success(),
        "{} {} failed: {}{}",
        tool_path.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The chart rendered with `args` (for example `--set`s), as YAML documents.
fn template(
    release: &str,
    namespace: &str,
    args: &[&str],
) -> anyhow::Result<Vec<serde_yaml::Value>> {
    let mut all = vec!["template", release, CHART, "--namespace", namespace];
    all.extend_from_slice(args);
    let out = run_ok(&tool("helm"), &all)?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text(&out.stdout)) {
        let value: serde_yaml::Value = serde::Deserialize::deserialize(doc)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

fn kind_of(doc: &serde_yaml::Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

/// A unique, short release name for a test namespace (cluster-scoped names include it).
/// A ClusterRole the chart aggregates into the cluster's `edit` or `view`, for tenants.
fn is_tenant_role(doc: &serde_yaml::Value) -> bool {
    kind_of(doc) == "ClusterRole"
        && doc["metadata"]["labels"].as_mapping().is_some_and(|l| {
            l.keys()
                .filter_map(|k| k.as_str())
                .any(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-"))
        })
}

fn release_for(ns: &TestNamespace) -> String {
    format!("po-{}", ns.name().rsplit('-').next().unwrap_or("x"))
}

#[test]
fn chart_lints_strict_and_templates_the_crds() {
    let out = run(&tool("helm"), &["lint", "--strict", CHART], None, None);
    assert!(
        out.status.success(),
        "helm lint --strict failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let lint = text(&out.stdout);
    assert!(
        !lint.contains("[WARNING]") && !lint.contains("[ERROR]"),
        "{lint}"
    );
    let chart_crds =
        std::fs::read_to_string(repo().join(CHART).join("files/premium.dev_crds.yaml"))
            .expect("the chart has files/premium.dev_crds.yaml");
    let crds = std::fs::read_to_string(repo().join("crds/premium.dev_crds.yaml")).expect("crds/");
    assert!(
        chart_crds == crds,
        "{CHART}/files/premium.dev_crds.yaml differs from crds/; run `make crds`"
    );
}

#[test]
fn values_schema_refuses_unknown_and_mistyped_values() {
    for bad in [
        "replicas=2",
        "replicaCount=two",
        "logFormat=xml",
        "watchNamespace=Not_A_Namespace",
        "leaderElection.leaseDurationSeconds=1",
        "image.digest=latest",
        "crds.enabled=maybe",
        "extraArgs=--verbose",
        "metrics.prometheusRule.errorRatio=2",
        "teardownWaitSeconds=-1",
    ] {
        let out = run(
            &tool("helm"),
            &["template", "t", CHART, "--set", bad],
            None,
            None,
        );
        assert!(
            !out.status.success(),
            "--set {bad} should be refused by values.schema.json"
        );
        assert!(
            text(&out.stderr).contains("values don't meet the specifications of the schema"),
            "{bad}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn rendered_rbac_is_least_privilege_in_both_modes() -> anyhow::Result<()> {
    let cluster = template("t", "ops", &[])?;
    let kinds: BTreeSet<&str> = cluster.iter().map(kind_of).collect();
    let expected: BTreeSet<&str> = [
        "ClusterRole",
        "CustomResourceDefinition",
        "ClusterRoleBinding",
        "Deployment",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]
    .into();
    assert_eq!(kinds, expected);
    let scoped = template("t", "ops", &["--set", "watchNamespace=apps"])?;
    // The tenant roles (premium-edit, premium-view) are for people, and aggregated: the
    // operator's own identity gets nothing cluster-wide.
    assert!(
        scoped
            .iter()
            .filter(|d| !is_tenant_role(d))
            .all(|d| !kind_of(d).starts_with("Cluster")),
        "watchNamespace renders no cluster-wide RBAC for the operator"
    );
    // A list of namespaces: a Role and a RoleBinding in each, one `--namespace` flag naming
    // them all, still nothing cluster-wide.
    let listed = template("t", "ops", &["--set", "watchNamespace={apps,web}"])?;
    assert!(
        listed
            .iter()
            .filter(|d| !is_tenant_role(d))
            .all(|d| !kind_of(d).starts_with("Cluster")),
        "a watchNamespace list renders no cluster-wide RBAC for the operator"
    );
    let bound: Vec<&str> = listed
        .iter()
        .filter(|d| kind_of(d) == "RoleBinding")
        .filter_map(|d| d["metadata"]["namespace"].as_str())
        .collect();
    assert_eq!(
        bound,
        ["apps", "web", "ops"],
        "one binding per namespace, plus the Lease's"
    );
    let args = listed
        .iter()
        .find(|d| kind_of(d) == "Deployment")
        .map(|d| d["spec"]["template"]["spec"]["containers"][0]["args"].clone())
        .unwrap_or_default();
    let flags: Vec<&str> = args
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .filter(|a| a.starts_with("--namespace"))
        .collect();
    assert_eq!(flags, ["--namespace=apps,web"]);
    let comma = template("t", "ops", &["--set", "watchNamespace=apps\\,web\\,apps"])?;
    assert_eq!(
        comma.iter().filter(|d| kind_of(d) == "Role").count(),
        3,
        "a comma-separated string is a list too, each name once (two Roles and the Lease's)"
    );
    let tenant: BTreeSet<&str> = scoped
        .iter()
        .filter(|d| is_tenant_role(d))
        .filter_map(|d| d["metadata"]["name"].as_str())
        .collect();
    assert_eq!(tenant, ["premium-edit", "premium-view"].into());
    let without = template(
        "t",
        "ops",
        &[
            "--set",
            "rbac.aggregateToDefaultRoles=false",
            "--set",
            "admissionPolicy.enabled=false",
        ],
    )?;
    assert!(
        without
            .iter()
            .all(|d| !is_tenant_role(d) && !kind_of(d).starts_with("ValidatingAdmission")),
        "both can be turned off"
    );
    let role_namespaces: BTreeSet<&str> = scoped
        .iter()
        .filter(|d| kind_of(d) == "Role")
        .filter_map(|d| d["metadata"]["namespace"].as_str())
        .collect();
    assert_eq!(
        role_namespaces,
        ["apps", "ops"].into(),
        "the rules in apps, the Lease in ops"
    );
    for doc in cluster.iter().chain(&scoped) {
        if !kind_of(doc).ends_with("Role") || is_tenant_role(doc) {
            continue;
        }
        for rule in doc["rules"].as_sequence().context("rules")? {
            let words: Vec<String> = ["apiGroups", "resources", "verbs"]
                .iter()
                .flat_map(|k| rule[*k].as_sequence().cloned().unwrap_or_default())
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            for forbidden in [
                "*",
                "secrets",
                "pods",
                "escalate",
                "bind",
                "impersonate",
                "update",
            ] {
                assert!(
                    !words.iter().any(|w| w == forbidden),
                    "{forbidden} in {rule:?}"
                );
            }
        }
    }
    // Every value that changes something renders.
    let all = template(
        "t",
        "ops",
        &[
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "metrics.prometheusRule.enabled=true",
            "--set",
            "metrics.grafanaDashboard.enabled=true",
        ],
    )?;
    let kinds: BTreeSet<&str> = all.iter().map(kind_of).collect();
    for kind in [
        "NetworkPolicy",
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
    ] {
        assert!(kinds.contains(kind), "{kind} is not rendered: {kinds:?}");
    }
    Ok(())
}

/// `helm install` under Pod Security `restricted`, dry runs, `helm upgrade`, `helm uninstall`.
#[tokio::test]
async fn install_upgrade_uninstall_under_restricted_pod_security() -> anyhow::Result<()> {
    let helm = tool("helm");
    let kubectl = tool("kubectl");
    let client = support::client().await;
    let ns = TestNamespace::with_labels(
        &client,
        "helm",
        &[
            ("pod-security.kubernetes.io/enforce", "restricted"),
            ("pod-security.kubernetes.io/warn", "restricted"),
            ("pod-security.kubernetes.io/audit", "restricted"),
        ],
    )
    .await?;
    let release = release_for(&ns);
    let started = Instant::now();

    // Every rendered object, also the optional ones the cluster can take, passes a server-side
    // dry run (the ServiceMonitor needs the Prometheus Operator's CRD, absent here).
    for extra in [
        &[][..],
        &[
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "watchNamespace=default",
        ][..],
    ] {
        let mut args = vec![
            "template",
            release.as_str(),
            CHART,
            "--namespace",
            ns.name(),
        ];
        args.extend_from_slice(extra);
        let rendered = text(&run_ok(&helm, &args)?.stdout);
        let out = run(
            &kubectl,
            &[
                "apply",
                "--dry-run=server",
                "--server-side",
                // A release of an earlier run on this cluster kept the CRDs (crds.keep) with
                // its labels: a dry run may take them over.
                "--force-conflicts",
                "--field-manager=helm-test",
                "-f",
                "-",
            ],
            None,
            Some(&rendered),
        );
        ensure!(
            out.status.success() && !text(&out.stderr).contains("Warning"),
            "server-side dry run of the chart ({extra:?}) failed or warned: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }

    let out = run(
        &helm,
        &[
            "install",
            &release,
            CHART,
            "--namespace",
            ns.name(),
            "--wait",
            "--timeout",
            "120s",
            // The CRDs are templates of the release (crds.enabled, the default). On this shared
            // cluster other tests have applied them already, and an earlier run's release kept
            // them (crds.keep): this release adopts them as a user upgrading would.
            "--take-ownership",
            // The finalizer policy would match every namespace of this shared cluster, and no
            // operator runs here (KWOK pods); the upgrade below scopes it to this namespace.
            "--set",
            "finalizerAtAdmission=false",
        ],
        None,
        None,
    );
    ensure!(
        out.status.success(),
        "helm install failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stderr = text(&out.stderr);
    ensure!(
        !stderr.to_lowercase().contains("warning") && !stderr.contains("PodSecurity"),
        "helm install warned: {stderr}"
    );
    ensure!(
        text(&out.stdout).contains("kubectl wait --for=condition=Ready"),
        "NOTES are shown"
    );
    let deployments: Api<Deployment> = ns.api();
    let fullname = format!("{release}-premium-operator");
    let deployment =
        support::wait_for_deployment_available(&deployments, &fullname, DEFAULT_TIMEOUT).await?;
    assert_eq!(deployment.spec.as_ref().and_then(|s| s.replicas), Some(2));
    let pods = text(
        &run_ok(
            &kubectl,
            &[
                "get",
                "pods",
                "-n",
                ns.name(),
                "-l",
                &format!("app.kubernetes.io/instance={release}"),
                "-o",
                "name",
            ],
        )?
        .stdout,
    );
    assert_eq!(
        pods.lines().count(),
        2,
        "two operator pods admitted under restricted: {pods}"
    );
    let budgets: Api<PodDisruptionBudget> = ns.api();
    ensure!(
        budgets.get_opt(&fullname).await?.is_some(),
        "two replicas have a PodDisruptionBudget"
    );
    // The CRDs belong to the release now, kept on uninstall.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let feature_crd = crds.get("premiumfeatures.premium.dev").await?;
    let annotations = feature_crd.metadata.annotations.unwrap_or_default();
    ensure!(
        annotations.get("meta.helm.sh/release-name") == Some(&release)
            && annotations
                .get("helm.sh/resource-policy")
                .map(String::as_str)
                == Some("keep"),
        "the release owns the CRD and keeps it: {annotations:?}"
    );
    // The Artifact Hub examples are valid objects.
    let examples = artifact_hub_list("artifacthub.io/crdsExamples");
    let examples: String = examples
        .iter()
        .map(|e| format!("---\n{}", serde_yaml::to_string(e).expect("YAML")))
        .collect();
    let out = run(
        &kubectl,
        &["apply", "--dry-run=server", "-n", ns.name(), "-f", "-"],
        None,
        Some(&examples),
    );
    ensure!(
        out.status.success(),
        "artifacthub.io/crdsExamples are refused: {}",
        text(&out.stderr)
    );
    eprintln!("install: {:?}", started.elapsed());

    // Upgrade: one replica, text logs, Role-only for this namespace.
    let out = run(
        &helm,
        &[
            "upgrade",
            &release,
            CHART,
            "--namespace",
            ns.name(),
            "--wait",
            "--timeout",
            "120s",
            "--set",
            "replicaCount=1",
            "--set",
            "logFormat=text",
            "--set",
            &format!("watchNamespace={}", ns.name()),
        ],
        None,
        None,
    );
    ensure!(
        out.status.success(),
        "helm upgrade failed: {}",
        text(&out.stderr)
    );
    ensure!(
        !text(&out.stderr).to_lowercase().contains("warning"),
        "helm upgrade warned: {}",
        text(&out.stderr)
    );
    let deployment = wait_for(
        &deployments,
        &fullname,
        |d: Option<&Deployment>| d.and_then(|d| d.spec.as_ref()?.replicas) == Some(1),
        DEFAULT_TIMEOUT,
    )
    .await?;
    let args = deployment
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.into_iter().next())
        .and_then(|c| c.args)
        .unwrap_or_default();
    assert!(args.contains(&"--log-format=text".to_string()), "{args:?}");
    assert!(
        args.contains(&format!("--namespace={}", ns.name())),
        "{args:?}"
    );
    let cluster_role = format!("{fullname}-{}", ns.name());
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    ensure!(
        cluster_roles.get_opt(&cluster_role).await?.is_none(),
        "the ClusterRole is gone in Role-only mode"
    );
    let roles: Api<Role> = ns.api();
    ensure!(
        roles.get_opt(&fullname).await?.is_some(),
        "the Role exists in Role-only mode"
    );
    // One pod now: its PodDisruptionBudget would block every drain, so the upgrade removed it.
    let budgets: Api<PodDisruptionBudget> = ns.api();
    ensure!(
        budgets.get_opt(&fullname).await?.is_none(),
        "no PodDisruptionBudget with one replica"
    );

    // Uninstall: everything of the release goes, the CRDs stay (as Helm does with crds/).
    run_ok(
        &helm,
        &[
            "uninstall",
            &release,
            "--namespace",
            ns.name(),
            "--wait",
            "--timeout",
            "60s",
        ],
    )?;
    ensure!(
        deployments.get_opt(&fullname).await?.is_none(),
        "the Deployment is gone"
    );
    ensure!(
        roles.get_opt(&fullname).await?.is_none(),
        "the Role is gone"
    );
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in ["premiumfeatures.premium.dev", "premiumpolicies.premium.dev"] {
        ensure!(
            crds.get_opt(crd).await?.is_some(),
            "{crd} is kept after helm uninstall"
        );
    }
    eprintln!("install, upgrade, uninstall: {:?}", started.elapsed());
    ns.delete().await
}

/// A kubeconfig that authenticates as `namespace/account` with a token from the TokenRequest
/// API, next to the test cluster's own.
fn service_account_kubeconfig(namespace: &str, account: &str) -> anyhow::Result<PathBuf> {
    let out = run_ok(
        &tool("kubectl"),
        &["create", "token", account, "-n", namespace, "--duration=1h"],
    )?;
    let token = text(&out.stdout).trim().to_string();
    ensure!(!token.is_empty(), "the TokenRequest API returned no token");
    let mut config = Kubeconfig::read_from(kubeconfig_path())?;
    let current = config
        .current_context
        .clone()
        .context("the test kubeconfig has a current context")?;
    let user = format!("{namespace}-{account}");
    config.contexts.retain(|c| c.name == current);
    config
        .contexts
        .first_mut()
        .and_then(|c| c.context.as_mut())
        .context("the current context exists")?
        .user = Some(user.clone());
    let mut info = config
        .auth_infos
        .first()
        .cloned()
        .context("the test kubeconfig has a user")?;
    info.name = user;
    info.auth_info = Some(AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    });
    config.auth_infos = vec![info];
    let dir = repo().join("target/test-logs");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("kubeconfig-{namespace}-{account}"));
    std::fs::write(&path, serde_yaml::to_string(&config)?)?;
    Ok(path)
}

/// The operator binary started with the container args the chart renders (metrics on a local
/// port instead), as the chart's ServiceAccount.
struct LocalOperator {
    child: Child,
    log: PathBuf,
}

impl LocalOperator {
    fn start(
        deployment: &Deployment,
        kubeconfig: &Path,
        namespace: &str,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let container = deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|s| s.containers.first())
            .context("the chart's Deployment has a container")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let args: Vec<String> = container
            .args
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|a| {
                if a.starts_with("--metrics-address=") {
                    format!("--metrics-address=127.0.0.1:{port}")
                } else {
                    a
                }
            })
            .chain(extra.iter().cloned())
            .collect();
        let dir = repo().join("target/test-logs");
        std::fs::create_dir_all(&dir)?;
        let log = dir.join(format!("helm-operator-{namespace}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_premium-operator"))
            .args(&args)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", format!("local-{namespace}"))
            .env("POD_NAMESPACE", namespace)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting premium-operator")?;
        Ok(Self { child, log })
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LocalOperator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn example_manifests() -> String {
    support::operator::portal_examples()
}

fn is_ready(f: Option<&PremiumFeature>) -> bool {
    f.and_then(|f| f.status.as_ref()).is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// `kubectl auth can-i` as the ServiceAccount's own token: yes for each of `allowed`, no for
/// each of `denied` (each entry: the args after `can-i`).
fn assert_can_i(kubeconfig: &Path, allowed: &[Vec<String>], denied: &[Vec<String>]) {
    let kubectl = tool("kubectl");
    let mut wrong = Vec::new();
    for (args, want) in allowed
        .iter()
        .map(|a| (a, true))
        .chain(denied.iter().map(|a| (a, false)))
    {
        let mut all = vec!["auth", "can-i"];
        all.extend(args.iter().map(String::as_str));
        let out = run(&kubectl, &all, Some(kubeconfig), None);
        let answer = text(&out.stdout).trim().to_string();
        if (answer == "yes") != want {
            wrong.push(format!(
                "can-i {} -> {answer} (want {})",
                args.join(" "),
                if want { "yes" } else { "no" }
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "RBAC is not what the chart declares:\n{}",
        wrong.join("\n")
    );
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

/// Installs the chart with `values`, runs the operator as its ServiceAccount against
/// `watched`, and waits for the examples to converge. Returns the kubeconfig and timings.
async fn converge_as_service_account(
    release_ns: &TestNamespace,
    watched: &TestNamespace,
    values: &[&str],
) -> anyhow::Result<PathBuf> {
    let helm = tool("helm");
    let release = release_for(release_ns);
    let mut args = vec![
        "install",
        release.as_str(),
        CHART,
        "--namespace",
        release_ns.name(),
        // One release on the shared cluster owns the CRDs (the install test); these runs
        // bring their own, as `ensure_crds` applied them.
        "--set",
        "crds.enabled=false",
    ];
    // In ClusterRole mode the finalizer policy would match every namespace of this shared
    // cluster, the other tests' included, while only the test's namespace has an operator.
    if !values.iter().any(|v| v.starts_with("watchNamespace=")) {
        args.extend_from_slice(&["--set", "finalizerAtAdmission=false"]);
    }
    args.extend_from_slice(values);
    run_ok(&helm, &args)?;
    let fullname = format!("{release}-premium-operator");
    let deployments: Api<Deployment> = release_ns.api();
    let deployment = deployments.get(&fullname).await?;
    let kubeconfig = service_account_kubeconfig(release_ns.name(), &fullname)?;

    apply_yaml(release_ns.client(), watched.name(), &example_manifests()).await?;
    let started = Instant::now();
    // In ClusterRole mode the chart's operator would watch every namespace; on this shared
    // cluster the local one is scoped to the test's namespace (same verbs, one namespace).
    let scope = if values.iter().any(|v| v.starts_with("watchNamespace=")) {
        vec![]
    } else {
        vec![format!("--namespace={}", watched.name())]
    };
    let operator = LocalOperator::start(&deployment, &kubeconfig, release_ns.name(), &scope)?;
    let features: Api<PremiumFeature> = watched.api();
    for name in ["catalog", "soundcheck", "skill-exchange", "aika"] {
        if let Err(e) = wait_for(&features, name, is_ready, Duration::from_secs(120)).await {
            bail!("{e:#}\noperator log:\n{}", operator.log_text());
        }
    }
    eprintln!(
        "examples Ready as the chart's ServiceAccount ({}) in {:?}",
        values.join(" "),
        started.elapsed()
    );
    // The Lease in the release namespace is held by the local operator.
    let leases: Api<Lease> = release_ns.api();
    let lease = wait_for(
        &leases,
        &fullname,
        conditions::is_created(),
        DEFAULT_TIMEOUT,
    )
    .await?;
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    ensure!(
        holder.starts_with("local-"),
        "the Lease is held by the local operator, not {holder:?}"
    );
    let log = operator.log_text();
    ensure!(
        !log.contains("Forbidden") && !log.contains("forbidden"),
        "the operator was refused something:\n{log}"
    );
    // Tear the features down while the operator (and its finalizer) still runs.
    delete_features(&features).await?;
    drop(operator);
    Ok(kubeconfig)
}

/// ClusterRole mode: the chart's RBAC makes the examples converge and allows nothing else.
#[tokio::test]
async fn service_account_rbac_is_enough_and_no_more_cluster_mode() -> anyhow::Result<()> {
    let client = support::client().await;
    ensure_crds(&client).await?;
    let release_ns = TestNamespace::new(&client, "helm-rbac").await?;
    let watched = TestNamespace::new(&client, "helm-apps").await?;
    let kubeconfig = converge_as_service_account(&release_ns, &watched, &[]).await?;
    let (r, w) = (release_ns.name(), watched.name());
    let fullname = format!("{}-premium-operator", release_for(&release_ns));
    let allowed: Vec<Vec<String>> = [
        "list premiumfeatures.premium.dev --all-namespaces".to_string(),
        "watch premiumpolicies.premium.dev --all-namespaces".to_string(),
        format!("patch premiumfeatures.premium.dev -n {w}"),
        // A policy's `deletion.whileDependents: Cascade` deletes dependents.
        format!("delete premiumfeatures.premium.dev -n {w}"),
        format!("patch premiumfeatures.premium.dev --subresource=status -n {w}"),
        format!("patch premiumpolicies.premium.dev --subresource=status -n {w}"),
        format!("create deployments.apps -n {w}"),
        format!("delete horizontalpodautoscalers.autoscaling -n {w}"),
        "watch configmaps --all-namespaces".to_string(),
        format!("patch services -n {w}"),
        format!("create events.events.k8s.io -n {w}"),
        format!("create leases.coordination.k8s.io -n {r}"),
        format!("patch leases.coordination.k8s.io/{fullname} -n {r}"),
    ]
    .iter()
    .map(|s| words(s))
    .collect();
    let denied: Vec<Vec<String>> = [
        format!("get secrets -n {w}"),
        "list secrets --all-namespaces".to_string(),
        format!("get secrets -n {r}"),
        format!("create pods -n {w}"),
        format!("create pods/exec -n {w}"),
        format!("create premiumfeatures.premium.dev -n {w}"),
        format!("patch premiumpolicies.premium.dev -n {w}"),
        format!("update deployments.apps -n {w}"),
        format!("create events -n {w}"),
        format!("patch events.events.k8s.io -n {w}"),
        "list nodes".to_string(),
        "list namespaces".to_string(),
        "create clusterroles.rbac.authorization.k8s.io".to_string(),
        format!("create rolebindings.rbac.authorization.k8s.io -n {w}"),
        "create customresourcedefinitions.apiextensions.k8s.io".to_string(),
        format!("create serviceaccounts/token -n {r}"),
        "patch leases.coordination.k8s.io/kube-controller-manager -n kube-system".to_string(),
        format!("patch leases.coordination.k8s.io/someone-else -n {r}"),
        format!("delete leases.coordination.k8s.io/{fullname} -n {r}"),
        format!("create leases.coordination.k8s.io -n {w}"),
        format!("'*' '*' -n {w}"),
    ]
    .iter()
    .map(|s| words(&s.replace('\'', "")))
    .collect();
    assert_can_i(&kubeconfig, &allowed, &denied);
    run_ok(
        &tool("helm"),
        &["uninstall", &release_for(&release_ns), "--namespace", r],
    )?;
    watched.delete().await?;
    release_ns.delete().await
}

/// Role-only mode (`watchNamespace`): enough for that namespace, nothing anywhere else.
#[tokio::test]
async fn service_account_rbac_is_enough_and_no_more_role_mode() -> anyhow::Result<()> {
    let client = support::client().await;
    ensure_crds(&client).await?;
    let release_ns = TestNamespace::new(&client, "helm-rbac").await?;
    let watched = TestNamespace::new(&client, "helm-apps").await?;
    let value = format!("watchNamespace={}", watched.name());
    let kubeconfig = converge_as_service_account(&release_ns, &watched, &["--set", &value]).await?;
    let (r, w) = (release_ns.name(), watched.name());
    let allowed: Vec<Vec<String>> = [
        format!("list premiumfeatures.premium.dev -n {w}"),
        format!("patch deployments.apps -n {w}"),
        format!("create leases.coordination.k8s.io -n {r}"),
    ]
    .iter()
    .map(|s| words(s))
    .collect();
    let denied: Vec<Vec<String>> = [
        "list premiumfeatures.premium.dev --all-namespaces".to_string(),
        format!("list premiumfeatures.premium.dev -n {r}"),
        "list deployments.apps -n default".to_string(),
        format!("create deployments.apps -n {r}"),
        format!("get secrets -n {w}"),
        "list configmaps --all-namespaces".to_string(),
    ]
    .iter()
    .map(|s| words(s))
    .collect();
    assert_can_i(&kubeconfig, &allowed, &denied);
    run_ok(
        &tool("helm"),
        &["uninstall", &release_for(&release_ns), "--namespace", r],
    )?;
    watched.delete().await?;
    release_ns.delete().await
}

/// Several watched namespaces (`watchNamespace={a,b}`): a Role in each and nothing
/// cluster-wide is enough for the operator to run features in both, with a dependency from one
/// to the other through a grant; a third namespace is never touched.
#[tokio::test]
async fn service_account_rbac_is_enough_and_no_more_several_namespaces() -> anyhow::Result<()> {
    let client = support::client().await;
    ensure_crds(&client).await?;
    let release_ns = TestNamespace::new(&client, "helm-multi").await?;
    let a = TestNamespace::new(&client, "multi-a").await?;
    let b = TestNamespace::new(&client, "multi-b").await?;
    let c = TestNamespace::new(&client, "multi-c").await?;
    let (r, na, nb, nc) = (release_ns.name(), a.name(), b.name(), c.name());
    let release = release_for(&release_ns);
    let list = format!("watchNamespace={{{na},{nb}}}");
    run_ok(
        &tool("helm"),
        &[
            "install",
            &release,
            CHART,
            "--namespace",
            r,
            "--set",
            "crds.enabled=false",
            "--set",
            &list,
        ],
    )?;
    let fullname = format!("{release}-premium-operator");
    let deployment = release_ns.api::<Deployment>().get(&fullname).await?;
    let kubeconfig = service_account_kubeconfig(r, &fullname)?;
    let allowed: Vec<Vec<String>> = [
        format!("list premiumfeatures.premium.dev -n {na}"),
        format!("watch configmaps -n {nb}"),
        format!("patch deployments.apps -n {nb}"),
    ]
    .iter()
    .map(|s| words(s))
    .collect();
    let denied: Vec<Vec<String>> = [
        "list premiumfeatures.premium.dev --all-namespaces".to_string(),
        "list deployments.apps --all-namespaces".to_string(),
        format!("list premiumfeatures.premium.dev -n {nc}"),
        format!("patch deployments.apps -n {nc}"),
        format!("get secrets -n {na}"),
    ]
    .iter()
    .map(|s| words(s))
    .collect();
    assert_can_i(&kubeconfig, &allowed, &denied);

    // The chart's finalizer policy gives a new feature the operator's finalizer as it is
    // created, in the watched namespaces only (nobody would remove it elsewhere).
    let finalized_at_create = |ns: &TestNamespace| {
        let features: Api<PremiumFeature> = ns.api();
        async move {
            let yaml = support::operator::feature_yaml("finalizer-probe", &[], "");
            // One document: without the `---` that ends it.
            let probe: PremiumFeature =
                serde_yaml::from_str(yaml.trim_end().trim_end_matches("---"))?;
            let dry_run = kube::api::PostParams {
                dry_run: true,
                ..Default::default()
            };
            let created = features.create(&dry_run, &probe).await?;
            anyhow::Ok(created.finalizers().iter().any(|f| f == FINALIZER))
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !finalized_at_create(&a).await? {
        ensure!(
            Instant::now() < deadline,
            "a new feature in {na} did not get the finalizer at create within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ensure!(
        finalized_at_create(&b).await?,
        "the finalizer policy missed {nb}"
    );
    ensure!(
        !finalized_at_create(&c).await?,
        "the finalizer policy matched {nc}, which no operator watches"
    );

    // catalog in a, granted to b; a caller of it in b; a bystander in c.
    let grant = format!(
        "apiVersion: premium.dev/v1alpha1\nkind: PremiumPolicy\nmetadata: {{name: expose-catalog}}\nspec:\n  selector: {{matchLabels: {{tier: premium}}}}\n  exposeTo: {{namespaces: [{nb}]}}\n---\n"
    );
    let catalog = support::operator::feature_yaml("catalog", &[], "");
    apply_yaml(&client, na, &format!("{grant}{catalog}")).await?;
    let caller = format!(
        "apiVersion: premium.dev/v1alpha1\nkind: PremiumFeature\nmetadata: {{name: caller, labels: {{tier: premium}}}}\nspec:\n  image: ghcr.io/stefanprodan/podinfo:6.7.1\n  port: 9898\n  healthCheck: {{path: /readyz}}\n  dependsOn: [{{name: catalog, namespace: {na}}}]\n---\n"
    );
    apply_yaml(&client, nb, &caller).await?;
    apply_yaml(
        &client,
        nc,
        &support::operator::feature_yaml("bystander", &[], ""),
    )
    .await?;

    let operator = LocalOperator::start(&deployment, &kubeconfig, r, &[])?;
    for (ns, name) in [(&a, "catalog"), (&b, "caller")] {
        let features: Api<PremiumFeature> = ns.api();
        if let Err(e) = wait_for(&features, name, is_ready, Duration::from_secs(120)).await {
            bail!("{e:#}\noperator log:\n{}", operator.log_text());
        }
    }
    let log = operator.log_text();
    ensure!(
        !log.contains("Forbidden") && !log.contains("forbidden"),
        "the operator was refused something:\n{log}"
    );
    // c was never seen: no status, no finalizer, no owned object.
    let bystander = c.api::<PremiumFeature>().get("bystander").await?;
    ensure!(
        bystander.status.is_none() && bystander.metadata.finalizers.is_none(),
        "a feature outside the watched namespaces was touched: {:?}",
        bystander.metadata
    );
    ensure!(
        c.api::<Deployment>().get_opt("bystander").await?.is_none(),
        "a Deployment was created outside the watched namespaces"
    );

    // Tear down while the operator (and its finalizer) still runs.
    for ns in [&b, &a] {
        delete_features(&ns.api()).await?;
    }
    drop(operator);
    run_ok(&tool("helm"), &["uninstall", &release, "--namespace", r])?;
    for ns in [a, b, c, release_ns] {
        ns.delete().await?;
    }
    Ok(())
}

/// The finalizer policy is rendered where the API server serves MutatingAdmissionPolicy v1,
/// matches the watched namespaces (all without `watchNamespace`), adds exactly the operator's
/// finalizer, and is left out with a `selector` (whose features it could not tell apart) or
/// when turned off.
#[test]
fn finalizer_policy_matches_what_the_operator_watches() -> anyhow::Result<()> {
    const SERVED: &str = "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy";
    let policy_docs = |args: &[&str]| -> anyhow::Result<Vec<serde_yaml::Value>> {
        Ok(template("t", "ops", args)?
            .into_iter()
            .filter(|d| kind_of(d).starts_with("MutatingAdmissionPolicy"))
            .collect())
    };
    let all = policy_docs(&["--api-versions", SERVED])?;
    let kinds: Vec<&str> = all.iter().map(kind_of).collect();
    assert_eq!(
        kinds,
        ["MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"]
    );
    let (policy, binding) = (&all[0], &all[1]);
    assert_eq!(binding["spec"]["policyName"], policy["metadata"]["name"]);
    assert!(
        binding["spec"]["matchResources"].is_null(),
        "every namespace: {binding:?}"
    );
    let spec = &policy["spec"];
    assert_eq!(spec["failurePolicy"].as_str(), Some("Ignore"));
    assert_eq!(
        spec["matchConstraints"]["resourceRules"][0]["operations"],
        serde_yaml::Value::Sequence(vec!["CREATE".into()])
    );
    let expression = spec["mutations"][0]["jsonPatch"]["expression"]
        .as_str()
        .unwrap_or_default();
    let quoted = format!("\"{FINALIZER}\"");
    assert_eq!(
        expression.matches(&quoted).count(),
        2,
        "both patches add {FINALIZER}: {expression}"
    );

    let scoped = policy_docs(&[
        "--api-versions",
        SERVED,
        "--set",
        "watchNamespace={apps,web}",
    ])?;
    let selector = &scoped[1]["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"][0];
    assert_eq!(
        selector["key"].as_str(),
        Some("kubernetes.io/metadata.name")
    );
    assert_eq!(selector["operator"].as_str(), Some("In"));
    assert_eq!(
        selector["values"],
        serde_yaml::Value::Sequence(vec!["apps".into(), "web".into()])
    );

    for args in [
        &["--set", "watchNamespace=apps"][..],
        &["--api-versions", SERVED, "--set", "selector=shard=a"],
        &[
            "--api-versions",
            SERVED,
            "--set",
            "finalizerAtAdmission=false",
        ],
    ] {
        assert!(policy_docs(args)?.is_empty(), "rendered with {args:?}");
    }
    Ok(())
}

/// Every key of values.yaml is described by values.schema.json (objects recursively; maps a
/// user fills, such as `podAnnotations`, are described as maps).
#[test]
fn values_schema_describes_every_value() {
    fn walk(
        values: &serde_yaml::Value,
        schema: &serde_json::Value,
        path: &str,
        gaps: &mut Vec<String>,
    ) {
        let Some(map) = values.as_mapping() else {
            return;
        };
        if schema.get("properties").is_none() {
            return; // a free-form object or map: described as such
        }
        for (key, value) in map {
            let key = key.as_str().unwrap_or_default();
            let child = format!("{path}.{key}");
            match schema.pointer(&format!("/properties/{key}")) {
                Some(s) => walk(value, s, &child, gaps),
                None => gaps.push(child),
            }
        }
    }
    let values: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join(CHART).join("values.yaml")).expect("values.yaml"),
    )
    .expect("values.yaml is YAML");
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join(CHART).join("values.schema.json"))
            .expect("values.schema.json"),
    )
    .expect("values.schema.json is JSON");
    assert_eq!(schema["additionalProperties"], serde_json::json!(false));
    let mut gaps = Vec::new();
    walk(&values, &schema, "", &mut gaps);
    assert!(
        gaps.is_empty(),
        "values.schema.json does not describe: {gaps:?}"
    );
}

/// The chart's Chart.yaml.
fn chart_yaml() -> serde_yaml::Value {
    serde_yaml::from_str(
        &std::fs::read_to_string(repo().join(CHART).join("Chart.yaml")).expect("Chart.yaml"),
    )
    .expect("Chart.yaml is YAML")
}

/// An Artifact Hub annotation of Chart.yaml that holds a YAML list.
fn artifact_hub_list(key: &str) -> Vec<serde_yaml::Value> {
    let chart = chart_yaml();
    let raw = chart["annotations"][key]
        .as_str()
        .unwrap_or_else(|| panic!("Chart.yaml has no {key} annotation"));
    serde_yaml::from_str(raw).unwrap_or_else(|e| panic!("{key} is not a YAML list: {e}"))
}

/// The documents rendered from `templates/crds.yaml` with `args`.
fn rendered_crds(args: &[&str]) -> anyhow::Result<Vec<serde_yaml::Value>> {
    Ok(template("t", "ops", args)?
        .into_iter()
        .filter(|d| kind_of(d) == "CustomResourceDefinition")
        .collect())
}

fn deployment_of(docs: &[serde_yaml::Value]) -> &serde_yaml::Value {
    docs.iter()
        .find(|d| kind_of(d) == "Deployment")
        .expect("a Deployment is rendered")
}

/// crds.enabled renders exactly the CRDs of crds/ (plus the chart's labels), crds.keep adds the
/// annotation that keeps them on uninstall; both off render none.
#[test]
fn crds_are_templated_with_a_keep_policy() -> anyhow::Result<()> {
    let text = std::fs::read_to_string(repo().join("crds/premium.dev_crds.yaml"))?;
    let mut expected = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value: serde_yaml::Value = serde::Deserialize::deserialize(doc)?;
        if !value.is_null() {
            expected.push(value);
        }
    }
    let rendered = rendered_crds(&[])?;
    assert_eq!(rendered.len(), expected.len(), "one document per CRD");
    for (got, want) in rendered.iter().zip(&expected) {
        let name = want["metadata"]["name"].as_str().unwrap_or_default();
        assert_eq!(got["metadata"]["name"], want["metadata"]["name"]);
        assert!(
            got["spec"] == want["spec"],
            "{name}: spec differs from crds/"
        );
        assert_eq!(
            got["metadata"]["annotations"]["helm.sh/resource-policy"].as_str(),
            Some("keep"),
            "{name}"
        );
        assert_eq!(
            got["metadata"]["labels"]["app.kubernetes.io/managed-by"].as_str(),
            Some("Helm"),
            "{name}"
        );
    }
    let unkept = rendered_crds(&["--set", "crds.keep=false"])?;
    assert_eq!(unkept.len(), expected.len());
    assert!(
        unkept
            .iter()
            .all(|d| d["metadata"]["annotations"]["helm.sh/resource-policy"].is_null()),
        "crds.keep=false: no keep annotation"
    );
    assert!(rendered_crds(&["--set", "crds.enabled=false"])?.is_empty());
    // No crds/ folder: Helm would install it before the templates and then refuse them.
    assert!(!repo().join(CHART).join("crds").exists());
    Ok(())
}

/// Without leader election one pod runs (two would both write) and no PodDisruptionBudget
/// renders for a single pod (it would block every drain).
#[test]
fn leader_election_off_runs_one_pod_and_one_pod_has_no_budget() -> anyhow::Result<()> {
    let kinds_and_replicas = |args: &[&str]| -> anyhow::Result<(bool, i64, Vec<String>)> {
        let docs = template("t", "ops", args)?;
        let pdb = docs.iter().any(|d| kind_of(d) == "PodDisruptionBudget");
        let deployment = deployment_of(&docs);
        let replicas = deployment["spec"]["replicas"]
            .as_i64()
            .context("replicas")?;
        let container_args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_sequence()
            .context("args")?
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        Ok((pdb, replicas, container_args))
    };
    let (pdb, replicas, args) = kinds_and_replicas(&[])?;
    assert!(pdb && replicas == 2 && args.contains(&"--leader-elect".to_string()));
    let (pdb, replicas, args) = kinds_and_replicas(&["--set", "leaderElection.enabled=false"])?;
    assert_eq!(replicas, 1, "leader election off: one pod");
    assert!(!pdb, "no PodDisruptionBudget for one pod");
    assert!(!args.iter().any(|a| a.starts_with("--leader")), "{args:?}");
    let (pdb, replicas, _) = kinds_and_replicas(&[
        "--set",
        "leaderElection.enabled=false",
        "--set",
        "replicaCount=5",
    ])?;
    assert!(replicas == 1 && !pdb, "replicaCount cannot add writers");
    let (pdb, replicas, _) = kinds_and_replicas(&["--set", "replicaCount=1"])?;
    assert!(replicas == 1 && !pdb);
    let (pdb, replicas, _) = kinds_and_replicas(&["--set", "replicaCount=3"])?;
    assert!(replicas == 3 && pdb);
    // NOTES.txt names no Lease without leader election, and says why there is one pod.
    let notes = |args: &[&str]| -> anyhow::Result<String> {
        let mut all = vec![
            "install",
            "t",
            CHART,
            "--namespace",
            "ops",
            "--dry-run=client",
            // A client dry run still checks the ownership of existing objects: the shared
            // cluster's CRDs belong to another release or to none.
            "--set",
            "crds.enabled=false",
        ];
        all.extend_from_slice(args);
        let out = text(&run_ok(&tool("helm"), &all)?.stdout);
        Ok(out
            .split("NOTES:")
            .nth(1)
            .context("NOTES are shown")?
            .to_string())
    };
    let with = notes(&[])?;
    assert!(with.contains("get lease t-premium-operator"), "{with}");
    let without = notes(&["--set", "leaderElection.enabled=false"])?;
    assert!(
        !without.contains("Lease") && !without.contains("get lease"),
        "{without}"
    );
    assert!(without.contains("not replicaCount=2"), "{without}");
    Ok(())
}

/// The chart as a dependency of an umbrella chart: `global` values and the escape hatches
/// pass the schema, and the parent's values reach the Deployment and Service.
#[test]
fn works_as_a_subchart_with_globals_and_escape_hatches() -> anyhow::Result<()> {
    let dir = repo().join(format!("target/helm/umbrella-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let chart_path = repo().join(CHART);
    std::fs::write(
        dir.join("Chart.yaml"),
        format!(
            "apiVersion: v2\nname: platform\nversion: 1.0.0\ndependencies:\n  - name: premium-operator\n    version: \"{}\"\n    repository: \"file://{}\"\n",
            chart_yaml()["version"].as_str().context("chart version")?,
            chart_path.display()
        ),
    )?;
    let digest = format!("sha256:{}", "ab".repeat(32));
    std::fs::write(
        dir.join("values.yaml"),
        format!(
            r#"global:
  imageRegistry: registry.example.com
  imagePullSecrets: []
premium-operator:
  replicaCount: 3
  image:
    repository: registry.example.com/premium-operator
    digest: "{digest}"
  extraArgs: ["--concurrency=16"]
  extraEnv:
    - name: HTTPS_PROXY
      value: http://proxy:3128
  volumes:
    - name: ca
      configMap: {{name: corporate-ca}}
  volumeMounts:
    - name: ca
      mountPath: /etc/ssl/corporate
      readOnly: true
  deploymentAnnotations:
    reloader.example.com/auto: "true"
  podAnnotations:
    team: platform
  metrics:
    service:
      annotations:
        prometheus.io/scrape: "true"
  teardownWaitSeconds: 120
"#
        ),
    )?;
    let helm = tool("helm");
    let dir_str = dir.to_string_lossy().into_owned();
    run_ok(&helm, &["dependency", "update", &dir_str])?;
    let lint = run(&helm, &["lint", "--strict", &dir_str], None, None);
    assert!(
        lint.status.success(),
        "helm lint --strict of the umbrella chart: {}{}",
        text(&lint.stdout),
        text(&lint.stderr)
    );
    let out = run_ok(
        &helm,
        &["template", "platform", &dir_str, "--namespace", "ops"],
    )?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text(&out.stdout)) {
        let value: serde_yaml::Value = serde::Deserialize::deserialize(doc)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    let deployment = deployment_of(&docs);
    assert_eq!(deployment["spec"]["replicas"].as_i64(), Some(3));
    assert_eq!(
        deployment["metadata"]["annotations"]["reloader.example.com/auto"].as_str(),
        Some("true")
    );
    let pod = &deployment["spec"]["template"];
    assert_eq!(
        pod["metadata"]["annotations"]["team"].as_str(),
        Some("platform")
    );
    let container = &pod["spec"]["containers"][0];
    assert_eq!(
        container["image"].as_str(),
        Some(format!("registry.example.com/premium-operator@{digest}").as_str())
    );
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .context("args")?
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(args.contains(&"--concurrency=16"), "{args:?}");
    assert!(args.contains(&"--teardown-wait-seconds=120"), "{args:?}");
    let env_names: Vec<&str> = container["env"]
        .as_sequence()
        .context("env")?
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(env_names.contains(&"HTTPS_PROXY") && env_names.contains(&"POD_NAME"));
    assert_eq!(
        container["volumeMounts"][0]["mountPath"].as_str(),
        Some("/etc/ssl/corporate")
    );
    assert_eq!(
        pod["spec"]["volumes"][0]["configMap"]["name"].as_str(),
        Some("corporate-ca")
    );
    let service = docs
        .iter()
        .find(|d| kind_of(d) == "Service")
        .context("a Service")?;
    assert_eq!(
        service["metadata"]["annotations"]["prometheus.io/scrape"].as_str(),
        Some("true")
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Chart.yaml's Artifact Hub annotations say what the chart ships: its default images, its
/// CRDs, valid examples of them, a license; and the icon is the chart's icon.svg.
#[test]
fn artifact_hub_annotations_match_the_chart() -> anyhow::Result<()> {
    let chart = chart_yaml();
    let values: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(
        repo().join(CHART).join("values.yaml"),
    )?)?;
    let images: BTreeSet<String> = artifact_hub_list("artifacthub.io/images")
        .iter()
        .filter_map(|i| i["image"].as_str().map(str::to_owned))
        .collect();
    let defaults: BTreeSet<String> = [
        format!(
            "{}:{}",
            values["image"]["repository"]
                .as_str()
                .context("repository")?,
            chart["appVersion"].as_str().context("appVersion")?
        ),
        values["sidecarImage"]
            .as_str()
            .context("sidecarImage")?
            .to_string(),
    ]
    .into();
    assert_eq!(
        images, defaults,
        "artifacthub.io/images names the default images"
    );
    let crds = rendered_crds(&[])?;
    let annotated: BTreeSet<(String, String, String)> = artifact_hub_list("artifacthub.io/crds")
        .iter()
        .map(|c| {
            let field = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            assert!(!field("description").is_empty() && !field("displayName").is_empty());
            (field("name"), field("kind"), field("version"))
        })
        .collect();
    let shipped: BTreeSet<(String, String, String)> = crds
        .iter()
        .flat_map(|c| {
            let name = c["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let kind = c["spec"]["names"]["kind"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            c["spec"]["versions"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(move |v| {
                    let version = v["name"].as_str()?.to_string();
                    Some((name.clone(), kind.clone(), version))
                })
        })
        .collect();
    assert_eq!(
        annotated, shipped,
        "artifacthub.io/crds lists the chart's CRDs"
    );
    let example_kinds: BTreeSet<String> = artifact_hub_list("artifacthub.io/crdsExamples")
        .iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_owned))
        .collect();
    let kinds: BTreeSet<String> = shipped.iter().map(|(_, k, _)| k.clone()).collect();
    assert_eq!(example_kinds, kinds, "one example of each CRD");
    assert_eq!(
        chart["annotations"]["artifacthub.io/license"].as_str(),
        Some("Apache-2.0")
    );
    let icon = chart["icon"].as_str().context("Chart.yaml has an icon")?;
    let encoded = icon
        .strip_prefix("data:image/svg+xml;base64,")
        .context("the icon is an inline SVG")?;
    let svg = std::fs::read(repo().join(CHART).join("icon.svg"))?;
    assert_eq!(encoded, base64_encode(&svg), "the icon is icon.svg");
    Ok(())
}

/// Standard base64 with padding (no dependency for one comparison).
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `make chart`'s packaging: the package holds the CRD source and renders like the folder.
#[test]
fn chart_packages_and_renders_from_the_package() -> anyhow::Result<()> {
    let dir = repo().join(format!("target/helm/package-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let helm = tool("helm");
    let dir_str = dir.to_string_lossy().into_owned();
    run_ok(&helm, &["package", CHART, "--destination", &dir_str])?;
    let version = chart_yaml()["version"]
        .as_str()
        .context("version")?
        .to_string();
    let package = dir.join(format!("premium-operator-{version}.tgz"));
    assert!(package.is_file(), "{} is written", package.display());
    let package_str = package.to_string_lossy().into_owned();
    let from_package = run_ok(
        &helm,
        &["template", "t", &package_str, "--namespace", "ops"],
    )?;
    let from_folder = run_ok(&helm, &["template", "t", CHART, "--namespace", "ops"])?;
    assert!(
        from_package.stdout == from_folder.stdout,
        "the package renders what the folder renders"
    );
    assert!(text(&from_package.stdout).contains("kind: CustomResourceDefinition"));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
