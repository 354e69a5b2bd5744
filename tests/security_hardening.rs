//! Hardening on the real control plane: the examples run in a namespace that enforces and warns
//! Pod Security `restricted`, with no warning for any object the operator writes; the chart's
//! admission fence keeps the operator's own token off every Deployment and ConfigMap it does not
//! own, and lets it run its features; the chart's tenant roles aggregate into `edit` and `view`.
//!
//! Needs the local cluster and the built tools (`make cluster-up`, or `make test`).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use premium_operator::api::PremiumFeature;
use serde_json::{Value, json};
use support::cluster::{
    CHART_NAME, chart_rbac_cluster_kubeconfig, client_for, owned_by_namespace, repo,
};
use support::operator::{Operator, apply_yaml, ensure_crds, feature_yaml, finish, portal_examples};
use support::{DEFAULT_TIMEOUT, TestNamespace, client, eventually, kubeconfig_path, wait_for};

const RESTRICTED: [(&str, &str); 2] = [
    ("pod-security.kubernetes.io/enforce", "restricted"),
    ("pod-security.kubernetes.io/warn", "restricted"),
];
const MANAGED: &str = "app.kubernetes.io/managed-by=premium-operator";

/// A binary built by hack/build-tools.sh (`kubectl`, `helm`).
fn tool(name: &str) -> anyhow::Result<PathBuf> {
    let out = Command::new("bash")
        .arg(repo().join("hack/build-tools.sh"))
        .arg("--print-paths")
        .output()
        .context("running hack/build-tools.sh --print-paths")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .with_context(|| format!("{name} is not built; run `make tools`"))
}

/// Runs kubectl with `args` (and `stdin`); returns (success, stdout, stderr).
fn kubectl(
    kubeconfig: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<(bool, String, String)> {
    let mut child = Command::new(tool("kubectl")?)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(input) = stdin {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn is_ready(f: Option<&PremiumFeature>) -> bool {
    f.and_then(|f| f.status.as_ref()).is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// Every object of `ns` the operator wrote, as a List to apply again: live state without the
/// fields the server owns, each renamed `<name>-again` so that the dry run is a creation (what
/// Pod Security checks in full).
fn owned_objects_again(ns: &str) -> anyhow::Result<Value> {
    let (ok, out, err) = kubectl(
        &kubeconfig_path(),
        &[
            "get",
            "deployments,services,configmaps,horizontalpodautoscalers",
            "-n",
            ns,
            "-l",
            MANAGED,
            "-o",
            "json",
        ],
        None,
    )?;
    ensure!(ok, "kubectl get failed: {err}");
    let mut list: Value = serde_json::from_str(&out)?;
    let items = list["items"].as_array_mut().context("items")?;
    for item in items.iter_mut() {
        let meta = item["metadata"].as_object_mut().context("metadata")?;
        for field in [
            "managedFields",
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "generation",
        ] {
            meta.remove(field);
        }
        let name = meta["name"].as_str().unwrap_or_default().to_string();
        meta.insert("name".into(), json!(format!("{name}-again")));
        item.as_object_mut().context("object")?.remove("status");
        // A Service's cluster IP is the server's to give.
        if let Some(spec) = item.get_mut("spec").and_then(Value::as_object_mut) {
            for field in ["clusterIP", "clusterIPs"] {
                spec.remove(field);
            }
        }
    }
    Ok(list)
}

/// The Pod Security warnings a server-side dry run of `objects` gets, as kubectl prints them.
fn dry_run_warnings(ns: &str, objects: &Value) -> anyhow::Result<Vec<String>> {
    let (ok, out, err) = kubectl(
        &kubeconfig_path(),
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager=security-hardening-test",
            "-n",
            ns,
            "-f",
            "-",
        ],
        Some(&objects.to_string()),
    )?;
    ensure!(ok, "the dry run failed: {out}{err}");
    Ok(err
        .lines()
        .filter(|l| l.contains("Warning"))
        .map(str::to_owned)
        .collect())
}

/// The examples, plus a feature that opts into a token and a read-only app root, reach Ready in
/// a namespace that enforces `restricted`; a dry run of everything the operator wrote there gets
/// no Pod Security warning, while a copy of its Deployment with one field weakened does (the
/// negative control: the warnings are seen when there are some). Only the feature that names a
/// ServiceAccount gets a token in its pods.
#[tokio::test]
async fn examples_run_under_restricted_pod_security_without_a_warning() -> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::with_labels(&client, "hardened", &RESTRICTED).await?;
    let operator = Operator::start(Some(ns.name()), &[])?;
    let mut yaml = portal_examples();
    yaml.push_str("---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: api-reader}\n---\n");
    yaml.push_str(&feature_yaml(
        "api-reader",
        &[],
        "  serviceAccountName: api-reader\n  readOnlyRootFilesystem: true",
    ));
    apply_yaml(&client, ns.name(), &yaml).await?;

    let features: Api<PremiumFeature> = ns.api();
    let names: Vec<String> = features
        .list(&ListParams::default())
        .await?
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    ensure!(names.len() >= 5, "the examples and api-reader: {names:?}");
    for name in &names {
        if let Err(e) = wait_for(&features, name, is_ready, Duration::from_secs(180)).await {
            bail!(
                "{name} is not Ready under restricted: {e:#}\noperator log:\n{}",
                operator.log_tail()
            );
        }
    }

    let objects = owned_objects_again(ns.name())?;
    let count = objects["items"].as_array().map_or(0, Vec::len);
    ensure!(
        count >= 4 * names.len() - names.len(),
        "owned objects found: {count}"
    );
    let warnings = dry_run_warnings(ns.name(), &objects)?;
    ensure!(
        warnings.is_empty(),
        "Pod Security warnings for the operator's objects: {warnings:?}"
    );

    // Negative control: the same Deployment with a privilege escalation allowed is warned about.
    let mut weakened = objects["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["kind"] == "Deployment"))
        .cloned()
        .context("a Deployment")?;
    weakened["spec"]["template"]["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] =
        json!(true);
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [weakened]});
    let warnings = dry_run_warnings(ns.name(), &list)?;
    ensure!(
        warnings
            .iter()
            .any(|w| w.contains("PodSecurity") && w.contains("allowPrivilegeEscalation")),
        "a weakened Deployment should be warned about: {warnings:?}"
    );

    // The token: mounted only where a ServiceAccount was named.
    let pods: Api<Pod> = ns.api();
    for pod in pods
        .list(&ListParams::default().labels("premium.dev/feature"))
        .await?
    {
        let spec = pod.spec.as_ref().context("pod spec")?;
        let feature = pod
            .labels()
            .get("premium.dev/feature")
            .cloned()
            .unwrap_or_default();
        let token = spec
            .volumes
            .iter()
            .flatten()
            .any(|v| v.name.starts_with("kube-api-access"));
        let opted_in = feature == "api-reader";
        ensure!(
            token == opted_in,
            "pod {} of {feature}: token mounted = {token}",
            pod.name_any()
        );
        ensure!(
            spec.service_account_name.as_deref()
                == Some(if opted_in { "api-reader" } else { "default" }),
            "pod {} runs as {:?}",
            pod.name_any(),
            spec.service_account_name
        );
    }
    finish(ns, operator).await
}

/// A minimal Deployment (or other object) that nobody labelled for the operator.
fn bystander_yaml() -> String {
    "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: bystander, labels: {app: bystander}}\nspec:\n  replicas: 0\n  selector: {matchLabels: {app: bystander}}\n  template:\n    metadata: {labels: {app: bystander}}\n    spec: {containers: [{name: app, image: registry.k8s.io/pause:3.10}]}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: bystander}\ndata: {setting: kept}\n".into()
}

/// The refusal of one write by the fence: a 403 that names the policy.
fn refused_by_fence<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, kube::Error>,
) -> anyhow::Result<()> {
    match result {
        Err(kube::Error::Api(e))
            if e.code == 403 && e.message.contains("ValidatingAdmissionPolicy") =>
        {
            Ok(())
        }
        other => bail!("{what}: expected the admission fence to refuse it, got {other:?}"),
    }
}

/// With the chart's RBAC (cluster-wide) and its admission fence, the operator's own token may,
/// by RBAC, patch and delete any Deployment and ConfigMap; the fence refuses every write to an
/// unlabelled one in another namespace (a patch, adopting it by adding the label, a deletion, a
/// new unlabelled object), leaves them untouched, and lets the same token, and the operator
/// running as it, manage labelled objects: a feature reaches Ready and, suspended, loses its HPA.
#[tokio::test]
async fn the_admission_fence_keeps_the_operator_off_what_it_does_not_own() -> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let home = TestNamespace::new(&client, "fence-home").await?;
    let other = TestNamespace::new(&client, "fence-other").await?;
    apply_yaml(&client, other.name(), &bystander_yaml()).await?;
    let kubeconfig =
        chart_rbac_cluster_kubeconfig(&client, &kubeconfig_path(), home.name()).await?;
    let token = client_for(&kubeconfig).await?;

    // RBAC alone would allow every write below: any refusal is the fence's.
    for verb in ["patch", "delete"] {
        for kind in ["deployments", "configmaps"] {
            let (_, answer, _) = kubectl(
                &kubeconfig,
                &["auth", "can-i", verb, kind, "-n", other.name()],
                None,
            )?;
            ensure!(
                answer.trim() == "yes",
                "RBAC should allow {verb} {kind}: {answer}"
            );
        }
    }
    let configmaps: Api<ConfigMap> = Api::namespaced(token.clone(), other.name());
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(token.clone(), other.name());
    let unlabelled: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "intruder"}}))?;
    // The policy takes effect once the API server has loaded it.
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    eventually(
        "the fence to refuse an unlabelled ConfigMap",
        DEFAULT_TIMEOUT,
        || {
            let (configmaps, dry, unlabelled) =
                (configmaps.clone(), dry.clone(), unlabelled.clone());
            async move { Ok(refused_by_fence("", configmaps.create(&dry, &unlabelled).await).ok()) }
        },
    )
    .await?;

    let merge = |v: Value| Patch::Merge(v);
    let params = PatchParams::default();
    refused_by_fence(
        "create an unlabelled ConfigMap",
        configmaps.create(&PostParams::default(), &unlabelled).await,
    )?;
    refused_by_fence(
        "patch a Deployment",
        deployments
            .patch(
                "bystander",
                &params,
                &merge(json!({"spec": {"replicas": 3}})),
            )
            .await,
    )?;
    refused_by_fence(
        "adopt a Deployment by labelling it",
        deployments
            .patch("bystander", &params, &merge(json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "premium-operator"}}})))
            .await,
    )?;
    refused_by_fence(
        "delete a Deployment",
        deployments
            .delete("bystander", &DeleteParams::default())
            .await,
    )?;
    refused_by_fence(
        "patch a ConfigMap",
        configmaps
            .patch(
                "bystander",
                &params,
                &merge(json!({"data": {"setting": "changed"}})),
            )
            .await,
    )?;
    refused_by_fence(
        "delete a ConfigMap",
        configmaps
            .delete("bystander", &DeleteParams::default())
            .await,
    )?;

    let admin_cms: Api<ConfigMap> = other.api();
    let kept = admin_cms.get("bystander").await?;
    ensure!(
        kept.data
            .unwrap_or_default()
            .get("setting")
            .map(String::as_str)
            == Some("kept"),
        "the ConfigMap was changed"
    );
    let admin_deploys: Api<k8s_openapi::api::apps::v1::Deployment> = other.api();
    let kept = admin_deploys.get("bystander").await?;
    ensure!(
        !kept.labels().contains_key("app.kubernetes.io/managed-by"),
        "the Deployment was adopted"
    );
    ensure!(
        kept.spec.and_then(|s| s.replicas) == Some(0),
        "the Deployment was scaled"
    );

    // What carries the label stays the token's to manage.
    let own: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "own", "labels": {"app.kubernetes.io/managed-by": "premium-operator"}}}),
    )?;
    configmaps
        .create(&PostParams::default(), &own)
        .await
        .context("create a labelled ConfigMap")?;
    configmaps
        .patch("own", &params, &merge(json!({"data": {"a": "b"}})))
        .await
        .context("patch it")?;
    refused_by_fence(
        "strip the label off its own ConfigMap",
        configmaps
            .patch(
                "own",
                &params,
                &merge(json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": null}}})),
            )
            .await,
    )?;
    configmaps
        .delete("own", &DeleteParams::default())
        .await
        .context("delete it")?;

    // The operator itself, as that token: Lease, Events and every owned object pass the fence.
    let lease_flags = [
        "--leader-elect",
        "--leader-election-namespace",
        home.name(),
        "--leader-election-lease",
        CHART_NAME,
    ];
    let operator = Operator::start_with(&kubeconfig, Some(other.name()), &lease_flags)?;
    apply_yaml(&client, other.name(), &feature_yaml("fenced", &[], "")).await?;
    let features: Api<PremiumFeature> = other.api();
    if let Err(e) = wait_for(&features, "fenced", is_ready, Duration::from_secs(120)).await {
        bail!(
            "the fenced operator did not make its feature Ready: {e:#}\n{}",
            operator.log_tail()
        );
    }
    let hpas: Api<HorizontalPodAutoscaler> = other.api();
    ensure!(
        hpas.get_opt("fenced").await?.is_some(),
        "the running feature has an HPA"
    );
    features
        .patch(
            "fenced",
            &PatchParams::default(),
            &merge(json!({"spec": {"suspend": true}})),
        )
        .await?;
    eventually(
        "the suspended feature's HPA to be deleted",
        DEFAULT_TIMEOUT,
        || {
            let hpas = hpas.clone();
            async move { Ok(hpas.get_opt("fenced").await?.is_none().then_some(())) }
        },
    )
    .await
    .with_context(|| operator.log_tail())?;
    let log = std::fs::read_to_string(&operator.log).unwrap_or_default();
    ensure!(
        !log.contains("ValidatingAdmissionPolicy"),
        "the fence refused one of the operator's own writes:\n{}",
        operator.log_tail()
    );
    finish(other, operator).await?;
    home.delete().await
}

/// The chart's tenant roles aggregate into the cluster's built-in roles: a user bound to `edit`
/// in a namespace may create and delete PremiumFeatures and PremiumPolicies there and not write
/// their status; a user bound to `view` may read them and nothing more; a user bound to nothing
/// may do neither; nobody gets them in another namespace.
#[tokio::test]
async fn tenant_roles_aggregate_into_edit_and_view() -> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "tenants").await?;
    let elsewhere = TestNamespace::new(&client, "tenants-elsewhere").await?;
    let out = Command::new(tool("helm")?)
        .args(["template", "t"])
        .arg(repo().join("charts/premium-operator"))
        .args([
            "--namespace",
            ns.name(),
            "--show-only",
            "templates/tenant-roles.yaml",
        ])
        .output()?;
    ensure!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Owned by the test's namespace, so that they go with it even if the test fails: a later
    // `helm install` on this cluster must not find them (its server-side dry run would conflict).
    let roles = owned_by_namespace(&client, ns.name(), &String::from_utf8(out.stdout)?).await?;
    apply_yaml(&client, ns.name(), &roles).await?;
    let bindings = "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: alice-edits}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}\nsubjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: bob-views}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\nsubjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: bob}]\n";
    apply_yaml(&client, ns.name(), bindings).await?;

    let admin = kubeconfig_path();
    let can = |user: &str, verb: &str, resource: &str, namespace: &str| -> anyhow::Result<bool> {
        let mut args = vec!["auth", "can-i", verb, "-n", namespace, "--as", user];
        match resource.split_once('/') {
            Some((kind, sub)) => args.extend([kind, "--subresource", sub]),
            None => args.push(resource),
        }
        let (_, answer, _) = kubectl(&admin, &args, None)?;
        Ok(answer.trim() == "yes")
    };
    // The aggregation controller fills `edit` and `view` in shortly after the roles appear.
    eventually(
        "edit and view to aggregate the tenant roles",
        DEFAULT_TIMEOUT,
        || {
            let ready = can("alice", "create", "premiumfeatures.premium.dev", ns.name())
                .unwrap_or(false)
                && can("bob", "list", "premiumpolicies.premium.dev", ns.name()).unwrap_or(false);
            async move { Ok(ready.then_some(())) }
        },
    )
    .await?;

    let here = ns.name().to_string();
    let there = elsewhere.name().to_string();
    let expected: &[(&str, &str, &str, &str, bool)] = &[
        (
            "alice",
            "create",
            "premiumfeatures.premium.dev",
            &here,
            true,
        ),
        (
            "alice",
            "delete",
            "premiumpolicies.premium.dev",
            &here,
            true,
        ),
        (
            "alice",
            "patch",
            "premiumfeatures.premium.dev/status",
            &here,
            false,
        ),
        (
            "alice",
            "create",
            "premiumfeatures.premium.dev",
            &there,
            false,
        ),
        ("bob", "get", "premiumfeatures.premium.dev", &here, true),
        ("bob", "watch", "premiumpolicies.premium.dev", &here, true),
        ("bob", "create", "premiumfeatures.premium.dev", &here, false),
        ("bob", "delete", "premiumpolicies.premium.dev", &here, false),
        ("carol", "get", "premiumfeatures.premium.dev", &here, false),
    ];
    let mut wrong = Vec::new();
    for (user, verb, resource, namespace, want) in expected {
        if can(user, verb, resource, namespace)? != *want {
            wrong.push(format!(
                "{user} {verb} {resource} -n {namespace}: want {want}"
            ));
        }
    }
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    for name in ["premium-edit", "premium-view"] {
        cluster_roles.delete(name, &DeleteParams::default()).await?;
    }
    ensure!(
        wrong.is_empty(),
        "tenant RBAC is not as documented:\n{}",
        wrong.join("\n")
    );
    elsewhere.delete().await?;
    ns.delete().await
}
