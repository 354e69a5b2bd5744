//! The chart's alerts and dashboard against a real Prometheus (Debian's `prometheus` package:
//! `promtool` and `prometheus`, installed by hack/install-promtool.sh, which `make test` runs):
//! - `promtool check rules` on the rendered PrometheusRule, and on every dashboard query
//!   written as a recording rule (each one parses as PromQL);
//! - `promtool test rules` with input series for every alert (tests/prometheus/alerts_test.yaml);
//! - Prometheus scraping the operator binary on the local control plane while the examples
//!   converge: every dashboard query returns data and every series selector of every alert
//!   matches scraped series, so nothing names a metric the operator does not export.
//!
//! The first two need only Helm and promtool; the last one the local cluster too.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::core::v1::ResourceQuota;
use kube::Api;
use premium_operator::api::PremiumFeature;
use support::TestNamespace;
use support::operator::{Operator, apply_yaml, ensure_crds, feature_yaml, portal_examples};

const CHART: &str = "charts/premium-operator";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A Prometheus program on PATH. Fails, never skips, when it is missing.
fn prometheus_tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "{name} is not installed; run `bash hack/install-promtool.sh` (Debian's prometheus package; `make test` runs it)"
        )
    })
}

/// A fresh scratch folder under target/prometheus.
fn scratch(name: &str) -> PathBuf {
    let dir = repo().join(format!("target/prometheus/{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(program: &Path, args: &[&str], dir: &Path) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("HELM_CACHE_HOME", repo().join("target/helm/cache"))
        .env("HELM_CONFIG_HOME", repo().join("target/helm/config"))
        .env("HELM_DATA_HOME", repo().join("target/helm/data"))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{} runs: {e}", program.display()))
}

fn run_ok(program: &Path, args: &[&str], dir: &Path) -> String {
    let out = run(program, args, dir);
    assert!(
        out.status.success(),
        "{} {} failed:\n{}{}",
        program.display(),
        args.join(" "),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The rule groups of the chart's PrometheusRule for release `po` in namespace `ops`, with
/// extra values from `values` (a values file's text), as a Prometheus rule file.
fn rendered_rules(dir: &Path, values: &str) -> String {
    let helm = support::cluster::helm().expect("helm is built");
    let values_file = dir.join("values.yaml");
    std::fs::write(&values_file, values).expect("values written");
    let out = run_ok(
        &helm,
        &[
            "template",
            "po",
            CHART,
            "--namespace",
            "ops",
            "--set",
            "metrics.prometheusRule.enabled=true",
            "--values",
            &values_file.to_string_lossy(),
            "--show-only",
            "templates/prometheusrule.yaml",
        ],
        &repo(),
    );
    let rule: serde_yaml::Value = serde_yaml::from_str(&out).expect("the PrometheusRule is YAML");
    assert_eq!(rule["kind"].as_str(), Some("PrometheusRule"));
    serde_yaml::to_string(&serde_yaml::Value::Mapping(
        [("groups".into(), rule["spec"]["groups"].clone())]
            .into_iter()
            .collect(),
    ))
    .expect("rules serialize")
}

/// Each alert's expression, by name.
fn alert_expressions(rules: &str) -> Vec<(String, String)> {
    let rules: serde_yaml::Value = serde_yaml::from_str(rules).expect("rules are YAML");
    rules["groups"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .map(|r| {
            (
                r["alert"].as_str().unwrap_or_default().to_string(),
                r["expr"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Every query of every panel of the dashboard, with Grafana's variables replaced: all
/// namespaces and jobs unless given, and a rate window of one minute.
fn dashboard_queries(namespace: &str, job: &str) -> Vec<(String, String)> {
    let path = repo().join(CHART).join("files/dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard.json"))
            .expect("dashboard.json is JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or_default();
        let targets = panel["targets"]
            .as_array()
            .expect("every panel has targets");
        assert!(!targets.is_empty(), "panel {title} has no query");
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .expect("a PromQL target")
                .to_string();
            let expr = expr
                .replace("$namespace", namespace)
                .replace("$job", job)
                .replace("$__rate_interval", "1m");
            assert!(!expr.contains('$'), "{title}: unknown variable in {expr}");
            queries.push((title.to_string(), expr));
        }
    }
    queries
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let promtool = prometheus_tool("promtool");
    let dir = scratch("alerts");
    let rules = rendered_rules(&dir, "{}\n");
    std::fs::write(dir.join("rules.yaml"), &rules).expect("rules written");
    let names: Vec<String> = alert_expressions(&rules)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        names,
        [
            "PremiumOperatorDown",
            "PremiumOperatorNoLeader",
            "PremiumOperatorReconcileErrors",
            "PremiumFeaturesFailed",
            "PremiumSlowStartups"
        ]
    );
    run_ok(&promtool, &["check", "rules", "rules.yaml"], &dir);
    let cases = std::fs::read_to_string(repo().join("tests/prometheus/alerts_test.yaml"))
        .expect("tests/prometheus/alerts_test.yaml");
    // Every alert has a case.
    for name in &names {
        assert!(
            cases.contains(&format!("alertname: {name}")),
            "alerts_test.yaml has no case for {name}"
        );
    }
    std::fs::write(dir.join("alerts_test.yaml"), cases).expect("test written");
    run_ok(&promtool, &["test", "rules", "alerts_test.yaml"], &dir);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Values change what the rules say: thresholds, extra labels and the series selector.
#[test]
fn alert_values_reach_the_rules() {
    let dir = scratch("alert-values");
    let rules = rendered_rules(
        &dir,
        "metrics:\n  prometheusRule:\n    failedFor: 42m\n    errorRatio: 0.25\n    startupSeconds: 600\n    alertLabels: {team: platform, severity: page}\n    seriesSelector: 'job=\"x\"'\n",
    );
    assert!(rules.contains("for: 42m"), "{rules}");
    assert!(rules.contains("> 0.25"), "{rules}");
    assert!(rules.contains("> 600"), "{rules}");
    assert!(rules.contains("team: platform"), "{rules}");
    assert!(
        !rules.contains("severity: warning"),
        "alertLabels override severity: {rules}"
    );
    for (name, expr) in alert_expressions(&rules) {
        assert!(!expr.contains("namespace="), "{name}: {expr}");
        assert!(expr.contains("job=\"x\""), "{name}: {expr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every dashboard query is valid PromQL (promtool checks them as recording rules), and the
/// chart ships the dashboard file unchanged in a ConfigMap Grafana's sidecar picks up.
#[test]
fn dashboard_queries_parse_and_the_configmap_carries_the_dashboard() {
    let promtool = prometheus_tool("promtool");
    let dir = scratch("dashboard");
    let rules: Vec<serde_yaml::Value> = dashboard_queries(".*", ".*")
        .into_iter()
        .enumerate()
        .map(|(i, (_, expr))| {
            serde_yaml::to_value(
                serde_json::json!({"record": format!("dashboard:panel_{i}"), "expr": expr}),
            )
            .expect("rule")
        })
        .collect();
    let file = serde_yaml::to_string(&serde_json::json!({
        "groups": [{"name": "dashboard", "rules": rules}]
    }))
    .expect("rules serialize");
    std::fs::write(dir.join("dashboard-rules.yaml"), file).expect("written");
    run_ok(&promtool, &["check", "rules", "dashboard-rules.yaml"], &dir);

    let helm = support::cluster::helm().expect("helm is built");
    let out = run_ok(
        &helm,
        &[
            "template",
            "po",
            CHART,
            "--namespace",
            "ops",
            "--set",
            "metrics.grafanaDashboard.enabled=true",
            "--show-only",
            "templates/grafana-dashboard.yaml",
        ],
        &repo(),
    );
    let map: serde_yaml::Value = serde_yaml::from_str(&out).expect("ConfigMap YAML");
    assert_eq!(map["kind"].as_str(), Some("ConfigMap"));
    assert_eq!(
        map["metadata"]["labels"]["grafana_dashboard"].as_str(),
        Some("1")
    );
    let shipped: serde_json::Value = serde_json::from_str(
        map["data"]["premium-operator.json"]
            .as_str()
            .expect("the dashboard key"),
    )
    .expect("the ConfigMap holds JSON");
    let file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join(CHART).join("files/dashboard.json")).expect("file"),
    )
    .expect("JSON");
    assert_eq!(shipped, file);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A Prometheus server of the test's own, on a free port, stopped when dropped.
struct Prometheus {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, config: &str) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        std::fs::write(dir.join("prometheus.yml"), config)?;
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(prometheus_tool("prometheus"))
            .arg("--config.file=prometheus.yml")
            .arg("--storage.tsdb.path=data")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting prometheus")?;
        Ok(Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        })
    }

    /// The samples an instant query returns (an error for a query Prometheus refuses).
    fn query(&self, expr: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let out = run(
            &prometheus_tool("promtool"),
            &["query", "instant", "-o", "json", &self.url, expr],
            &repo(),
        );
        ensure!(
            out.status.success(),
            "query {expr} failed: {}",
            text(&out.stderr)
        );
        let value: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("query {expr}: {}", text(&out.stdout)))?;
        Ok(value.as_array().cloned().unwrap_or_default())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The vector selectors of a PromQL expression (`name{matchers}`), found by their braces.
fn selectors(expr: &str) -> Vec<String> {
    let re = regex::Regex::new(r"[a-zA-Z_:][a-zA-Z0-9_:]*\{[^}]*\}").expect("regex");
    re.find_iter(expr).map(|m| m.as_str().to_string()).collect()
}

/// Prometheus scrapes the operator while it runs the examples (and fails on one feature a
/// ResourceQuota refuses): every dashboard query returns data, and every series selector in
/// every alert matches scraped series (the alerts themselves are quiet, as all is well).
#[tokio::test]
async fn prometheus_scraping_the_operator_finds_every_dashboard_and_alert_series()
-> anyhow::Result<()> {
    prometheus_tool("promtool");
    let client = support::client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "prom").await?;
    let operator = Operator::start(Some(ns.name()), &[])?;
    operator.wait_serving(Duration::from_secs(30)).await?;

    let dir = scratch("live");
    let job = "premium-operator-live";
    let selector = format!("job=\"{job}\",namespace=\"{}\"", ns.name());
    let rules = rendered_rules(
        &dir,
        &format!("metrics:\n  prometheusRule:\n    seriesSelector: '{selector}'\n"),
    );
    std::fs::write(dir.join("rules.yaml"), &rules)?;
    let prometheus = Prometheus::start(
        &dir,
        &format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [rules.yaml]\nscrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n        labels: {{namespace: {}}}\n",
            operator.metrics_port,
            ns.name()
        ),
    )?;

    // The examples converge (start-ups, dependency hops, writes), then a ResourceQuota that
    // allows no new Deployment makes one more feature fail (reconcile errors).
    apply_yaml(&client, ns.name(), &portal_examples()).await?;
    let features: Api<PremiumFeature> = ns.api();
    for name in ["catalog", "soundcheck", "skill-exchange", "aika"] {
        support::wait_for(
            &features,
            name,
            |f: Option<&PremiumFeature>| {
                f.and_then(|f| f.status.as_ref()).is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            },
            Duration::from_secs(120),
        )
        .await
        .with_context(|| format!("operator log:\n{}", operator.log_tail()))?;
    }
    let quota: ResourceQuota = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "no-new-deployments"},
        "spec": {"hard": {"count/deployments.apps": "0"}},
    }))?;
    support::apply(&ns.api::<ResourceQuota>(), &quota).await?;
    apply_yaml(&client, ns.name(), &feature_yaml("refused", &[], "")).await?;

    // Wait until every dashboard query has data (Prometheus needs a few scrapes for rates).
    let queries = dashboard_queries(ns.name(), job);
    let empty = support::eventually(
        "every dashboard query to return data",
        Duration::from_secs(90),
        || {
            let missing: Vec<String> = queries
                .iter()
                .filter(|(_, expr)| prometheus.query(expr).map_or(true, |r| r.is_empty()))
                .map(|(title, expr)| format!("{title}: {expr}"))
                .collect();
            async move { Ok(missing.is_empty().then_some(())) }
        },
    )
    .await;
    if empty.is_err() {
        let missing: Vec<String> = queries
            .iter()
            .filter(|(_, expr)| prometheus.query(expr).map_or(true, |r| r.is_empty()))
            .map(|(title, expr)| format!("{title}: {expr}"))
            .collect();
        bail!(
            "dashboard queries without data:\n{}\nprometheus log:\n{}",
            missing.join("\n"),
            prometheus.log_text()
        );
    }

    // Every alert: its expression evaluates, and each series it selects was scraped.
    let alerts = alert_expressions(&rules);
    assert_eq!(alerts.len(), 5);
    for (name, expr) in &alerts {
        prometheus.query(expr).with_context(|| name.clone())?;
        let found = selectors(expr);
        ensure!(!found.is_empty(), "{name}: no series selector in {expr}");
        for sel in found {
            ensure!(
                sel.contains(&selector),
                "{name}: {sel} does not use the release's selector"
            );
            ensure!(
                !prometheus.query(&sel)?.is_empty(),
                "{name}: {sel} matches no scraped series"
            );
        }
    }
    // All is well: the operator is up and leads, so the two critical alerts are quiet.
    for quiet in ["PremiumOperatorDown", "PremiumOperatorNoLeader"] {
        let expr = &alerts.iter().find(|(n, _)| n == quiet).expect("alert").1;
        ensure!(
            prometheus.query(expr)?.is_empty(),
            "{quiet} would fire against a healthy operator"
        );
    }
    drop(prometheus);
    let _ = std::fs::remove_dir_all(&dir);
    support::operator::finish(ns, operator).await
}
