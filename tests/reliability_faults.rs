//! Faults while a dependency graph converges: the operator SIGKILLed at seeded random moments,
//! the leader paused past its lease, the API server restarted and frozen, etcd restarted, a watch expired
//! (410 Gone). Each ends by comparing the cluster with a clean run of the same manifests: same
//! objects, same specs, no duplicates, no orphans, every feature in its phase.
//!
//! `make test` runs light rounds (small graphs, short freeze); `make reliability` sets
//! `PREMIUM_RELIABILITY=1` for the sizes (200 features, 10 kill rounds, a 60 s freeze).
//! Operator-only faults run in a namespace of the shared cluster; faults that hit the API
//! server or etcd run on a cluster of the test's own (hack/cluster-up.sh with
//! PREMIUM_CLUSTER_DIR), never the shared one. `PREMIUM_FAULT_SEED` picks the kill moments.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::ListParams;
use kube::{Api, Client, Resource, ResourceExt};
use premium_operator::api::{Phase, PremiumFeature};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use support::cluster::{OwnCluster, chart_rbac_kubeconfig, heavy, repo, report, time_until};
use support::operator::{Operator, apply_yaml, ensure_crds, feature_yaml, finish};
use support::{TestNamespace, client};

fn seed() -> u64 {
    std::env::var("PREMIUM_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261125)
}

const POLICY: &str = "apiVersion: premium.dev/v1alpha1\nkind: PremiumPolicy\nmetadata: {name: defaults}\nspec:\n  selector: {matchLabels: {tier: premium}}\n  circuitBreaker: {maxConnections: 64}\n  pool: {defaults: {minReplicas: 1, maxReplicas: 3}}\n---\n";

/// `n` features over `levels` levels; each feature of level L > 0 needs one or two of level
/// L - 1 (seeded). With `round`, every seventh feature carries a changed env value (the spec
/// change made around a fault). Returns (index, manifest) pairs.
fn feature_docs(n: usize, levels: usize, seed: u64, round: Option<usize>) -> Vec<(usize, String)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let per = n.div_ceil(levels);
    let name = |i: usize| format!("f{i:03}");
    (0..n)
        .map(|i| {
            let level = i / per;
            let mut deps = BTreeSet::new();
            if level > 0 {
                let lo = (level - 1) * per;
                for _ in 0..rng.random_range(1..=2) {
                    deps.insert(name(rng.random_range(lo..lo + per)));
                }
            }
            let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
            let extra = match round {
                Some(r) if i % 7 == 0 => format!("  env: [{{name: ROUND, value: \"{r}\"}}]"),
                _ => String::new(),
            };
            (i, feature_yaml(&name(i), &deps, &extra))
        })
        .collect()
}

/// The graph and its policy.
fn graph(n: usize, levels: usize, seed: u64) -> String {
    let docs: Vec<String> = feature_docs(n, levels, seed, None)
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    format!("{POLICY}{}", docs.concat())
}

/// Only the features the spec change touches.
fn change(n: usize, levels: usize, seed: u64, round: usize) -> String {
    feature_docs(n, levels, seed, Some(round))
        .into_iter()
        .filter(|(i, _)| i % 7 == 0)
        .map(|(_, d)| d)
        .collect::<Vec<_>>()
        .concat()
}

/// The graph with the change folded in: what the cluster must end up with.
fn graph_with_change(n: usize, levels: usize, seed: u64, round: usize) -> String {
    let docs: Vec<String> = feature_docs(n, levels, seed, Some(round))
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    format!("{POLICY}{}", docs.concat())
}

/// The normalized state of a namespace: what a clean run must equal.
#[derive(Debug, Default)]
struct Snapshot {
    objects: BTreeMap<String, Value>,
    phases: BTreeMap<String, Option<Phase>>,
    orphans: Vec<String>,
    duplicates: Vec<String>,
}

fn normalize(mut v: Value, ns: &str) -> Value {
    fn walk(v: &mut Value, ns: &str) {
        match v {
            Value::String(s) => {
                // Rendered config carries content hashes (versionInfo) that cover the namespace.
                *s = s
                    .replace(ns, "NS")
                    .lines()
                    .filter(|l| !l.starts_with("versionInfo: "))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, ns)),
            Value::Object(o) => {
                // Hashes cover the namespace; the content they hash is compared instead.
                if let Some(Value::Object(ann)) = o.get_mut("annotations") {
                    ann.retain(|k, _| !k.contains("hash"));
                }
                o.remove("clusterIP");
                o.remove("clusterIPs");
                let entries = std::mem::take(o);
                for (k, mut x) in entries {
                    walk(&mut x, ns);
                    o.insert(k.replace(ns, "NS"), x);
                }
            }
            _ => {}
        }
    }
    walk(&mut v, ns);
    v
}

/// The first line where two values' pretty forms differ, for a readable failure.
fn first_difference(a: &Value, b: &Value) -> String {
    let (a, b) = (
        serde_json::to_string_pretty(a).unwrap_or_default(),
        serde_json::to_string_pretty(b).unwrap_or_default(),
    );
    a.lines()
        .zip(b.lines())
        .find(|(x, y)| x != y)
        .map(|(x, y)| format!("clean `{}` vs `{}`", x.trim(), y.trim()))
        .unwrap_or_else(|| "lengths differ".into())
}

async fn snapshot(client: &Client, ns: &str) -> anyhow::Result<Snapshot> {
    let lp = ListParams::default();
    let features: Vec<PremiumFeature> = Api::namespaced(client.clone(), ns).list(&lp).await?.items;
    let uids: BTreeSet<String> = features.iter().filter_map(|f| f.uid()).collect();
    let mut s = Snapshot::default();
    for f in &features {
        s.phases
            .insert(f.name_any(), f.status.as_ref().and_then(|st| st.phase));
    }
    let owned = |kind: &str, meta: &kube::api::ObjectMeta, s: &mut Snapshot| -> bool {
        let managed = meta
            .labels
            .as_ref()
            .and_then(|l| l.get("app.kubernetes.io/managed-by"))
            .is_some_and(|v| v == "premium-operator");
        if !managed {
            return false;
        }
        let live = meta
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.controller == Some(true) && uids.contains(&r.uid));
        if !live || meta.deletion_timestamp.is_some() {
            s.orphans
                .push(format!("{kind}/{}", meta.name.clone().unwrap_or_default()));
        }
        true
    };
    for d in Api::<Deployment>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
    {
        if owned("Deployment", d.meta(), &mut s) {
            s.objects.insert(
                format!("Deployment/{}", d.name_any()),
                normalize(serde_json::to_value(&d.spec)?, ns),
            );
        }
    }
    for o in Api::<Service>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
    {
        if owned("Service", o.meta(), &mut s) {
            s.objects.insert(
                format!("Service/{}", o.name_any()),
                normalize(serde_json::to_value(&o.spec)?, ns),
            );
        }
    }
    for o in Api::<ConfigMap>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
    {
        if owned("ConfigMap", o.meta(), &mut s) {
            s.objects.insert(
                format!("ConfigMap/{}", o.name_any()),
                normalize(serde_json::to_value(&o.data)?, ns),
            );
        }
    }
    for o in Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
    {
        if owned("HorizontalPodAutoscaler", o.meta(), &mut s) {
            s.objects.insert(
                format!("HorizontalPodAutoscaler/{}", o.name_any()),
                normalize(serde_json::to_value(&o.spec)?, ns),
            );
        }
    }
    // Duplicates: more than one scaled ReplicaSet per Deployment, or more pods than desired.
    let mut scaled: BTreeMap<String, i32> = BTreeMap::new();
    for rs in Api::<ReplicaSet>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
    {
        let owner = rs
            .owner_references()
            .iter()
            .find(|r| r.controller == Some(true))
            .map(|r| r.name.clone())
            .unwrap_or_default();
        if rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) > 0 {
            *scaled.entry(owner).or_default() += 1;
        }
    }
    for (d, count) in scaled {
        if count > 1 {
            s.duplicates
                .push(format!("{count} scaled ReplicaSets for {d}"));
        }
    }
    let mut pods: BTreeMap<String, i32> = BTreeMap::new();
    for p in Api::<Pod>::namespaced(client.clone(), ns).list(&lp).await? {
        if p.meta().deletion_timestamp.is_none()
            && let Some(f) = p.labels().get("premium.dev/feature")
        {
            *pods.entry(f.clone()).or_default() += 1;
        }
    }
    for d in Api::<Deployment>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
    {
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let have = pods.get(&d.name_any()).copied().unwrap_or(0);
        if have > want {
            s.duplicates
                .push(format!("{have} pods for {} (wants {want})", d.name_any()));
        }
    }
    Ok(s)
}

/// Differences between a namespace after faults and a clean run, as readable lines.
fn differences(clean: &Snapshot, faulty: &Snapshot) -> Vec<String> {
    let mut diffs = Vec::new();
    for (k, v) in &clean.objects {
        match faulty.objects.get(k) {
            None => diffs.push(format!("missing {k}")),
            Some(w) if w != v => diffs.push(format!("{k} differs: {}", first_difference(v, w))),
            _ => {}
        }
    }
    for k in faulty.objects.keys() {
        if !clean.objects.contains_key(k) {
            diffs.push(format!("extra {k}"));
        }
    }
    if clean.phases != faulty.phases {
        for (k, v) in &clean.phases {
            if faulty.phases.get(k) != Some(v) {
                diffs.push(format!(
                    "{k}: phase {:?}, clean run {v:?}",
                    faulty.phases.get(k)
                ));
            }
        }
    }
    diffs.extend(faulty.orphans.iter().map(|o| format!("orphan {o}")));
    diffs.extend(faulty.duplicates.iter().map(|d| format!("duplicate: {d}")));
    diffs.truncate(20);
    diffs
}

async fn all_ready(client: &Client, ns: &str, n: usize) -> bool {
    let api: Api<PremiumFeature> = Api::namespaced(client.clone(), ns);
    match api.list(&ListParams::default()).await {
        Ok(list) => {
            list.items.len() == n
                && list.items.iter().all(|f| {
                    f.status.as_ref().and_then(|s| s.phase) == Some(Phase::Ready)
                        && f.status.as_ref().and_then(|s| s.observed_generation)
                            == f.metadata.generation
                })
        }
        Err(_) => false,
    }
}

/// How long every feature must stay Ready before the cluster counts as converged. While the
/// last rollouts finish, a Ready feature whose dependency is rolling out reports Degraded for a
/// moment (seen for 0.2-2 s after a control-plane fault): a comparison must see the end state,
/// not one of those moments.
const SETTLE: Duration = Duration::from_secs(5);

/// Waits until every feature is Ready and stays so for [`SETTLE`]; the seconds until that
/// stretch began.
async fn converge(client: &Client, ns: &str, n: usize, timeout: Duration) -> anyhow::Result<f64> {
    let start = std::time::Instant::now();
    let mut since: Option<f64> = None;
    while start.elapsed() < timeout {
        if all_ready(client, ns, n).await {
            let now = start.elapsed().as_secs_f64();
            let began = *since.get_or_insert(now);
            if now - began >= SETTLE.as_secs_f64() {
                return Ok(began);
            }
        } else {
            since = None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!(
        "timed out after {timeout:?} waiting for {n} features in {ns} to be Ready for {SETTLE:?}"
    )
}

/// Converges, then takes the snapshot; one that still catches a feature off Ready (a moment
/// between two polls) waits for the next settled stretch. The seconds until convergence.
async fn settled(
    client: &Client,
    ns: &str,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<(f64, Snapshot)> {
    let start = std::time::Instant::now();
    loop {
        let offset = start.elapsed().as_secs_f64();
        let began = converge(client, ns, n, timeout.saturating_sub(start.elapsed())).await?;
        let snap = snapshot(client, ns).await?;
        if snap.phases.values().all(|p| *p == Some(Phase::Ready)) {
            return Ok((offset + began, snap));
        }
    }
}

/// Writes the operator sends over `window` once converged (steady state: should be 0).
async fn idle_writes(operator: &Operator, window: Duration) -> anyhow::Result<f64> {
    let before = operator.writes()?;
    tokio::time::sleep(window).await;
    Ok(operator.writes()? - before)
}

/// Sum of every sample of a metric in a `/metrics` text whose line starts with `prefix`.
fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()?
        .success();
    anyhow::ensure!(ok, "kill -{sig} {pid} failed");
    Ok(())
}

/// A clean run of `manifests` in its own namespace, as the reference, by an operator with the
/// chart's Role (`admin_kubeconfig` only requests its token).
async fn clean_run(
    client: &Client,
    admin_kubeconfig: &std::path::Path,
    manifests: &str,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<(TestNamespace, Operator, Snapshot, f64)> {
    let ns = TestNamespace::new(client, "clean").await?;
    let kubeconfig = chart_rbac_kubeconfig(client, admin_kubeconfig, ns.name(), &[]).await?;
    let operator = Operator::start_with(&kubeconfig[0], Some(ns.name()), &[])?;
    apply_yaml(client, ns.name(), manifests).await?;
    let (took, snap) = settled(client, ns.name(), n, timeout).await?;
    Ok((ns, operator, snap, took))
}

#[tokio::test]
async fn operator_sigkilled_at_random_moments_converges_like_a_clean_run() -> anyhow::Result<()> {
    let (n, levels, rounds) = if heavy() { (200, 10, 10) } else { (30, 5, 3) };
    let timeout = Duration::from_secs(if heavy() { 600 } else { 180 });
    let seed = seed();
    let client = client().await;
    ensure_crds(&client).await?;
    let kubeconfig = support::kubeconfig_path();
    let final_manifests = graph_with_change(n, levels, seed, rounds / 2);
    let (clean_ns, clean_op, clean, clean_secs) =
        clean_run(&client, &kubeconfig, &final_manifests, n, timeout).await?;
    let clean_writes = clean_op.writes()?;

    let ns = TestNamespace::new(&client, "sigkill").await?;
    let chart = chart_rbac_kubeconfig(&client, &kubeconfig, ns.name(), &[]).await?;
    apply_yaml(&client, ns.name(), &graph(n, levels, seed)).await?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kills = Vec::new();
    for round in 0..rounds {
        let mut operator = Operator::start_with(&chart[0], Some(ns.name()), &[])?;
        if round == rounds / 2 {
            // A spec change made while the operator crashes and restarts.
            apply_yaml(&client, ns.name(), &change(n, levels, seed, round)).await?;
        }
        let after = Duration::from_millis(rng.random_range(200..if heavy() { 6000 } else { 2500 }));
        tokio::time::sleep(after).await;
        operator.kill();
        kills.push(after.as_millis());
    }
    let operator = Operator::start_with(&chart[0], Some(ns.name()), &[])?;
    let (recover, faulty) = settled(&client, ns.name(), n, timeout).await?;
    let idle = idle_writes(&operator, Duration::from_secs(5)).await?;
    let diffs = differences(&clean, &faulty);
    assert!(
        diffs.is_empty(),
        "after {rounds} SIGKILLs (seed {seed}, at {kills:?} ms) the cluster differs from a clean run:\n{}",
        diffs.join("\n")
    );
    assert_eq!(idle, 0.0, "writes after convergence");
    report(
        "fault",
        &format!(
            "operator SIGKILL x{rounds} (seed {seed}), {n} features/{levels} levels, chart RBAC"
        ),
        "pass",
        &format!(
            "recover {recover:.1}s after last restart (clean run {clean_secs:.1}s); writes final instance {:.0} (clean {clean_writes:.0}), idle 0; objects {} = clean; duplicates 0; orphans 0",
            operator.writes()?,
            faulty.objects.len()
        ),
    );
    finish(ns, operator).await?;
    finish(clean_ns, clean_op).await
}

/// An audit-log write: who, when, what.
#[derive(Debug)]
struct Write {
    user: String,
    at: String,
    resource: String,
    what: String,
}

/// Every write the API server accepted in `namespace`, in the order logged.
fn audit_writes(path: &std::path::Path, namespace: &str) -> anyhow::Result<Vec<Write>> {
    let text = std::fs::read_to_string(path)?;
    let mut out = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let s = |p: &str| {
            v.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        if s("/objectRef/namespace") != namespace {
            continue;
        }
        if v.pointer("/responseStatus/code")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            >= 300
        {
            continue;
        }
        out.push(Write {
            user: s("/user/username"),
            at: s("/stageTimestamp"),
            resource: s("/objectRef/resource"),
            what: format!(
                "{} {}/{}",
                s("/verb"),
                s("/objectRef/resource"),
                s("/objectRef/name")
            ),
        });
    }
    Ok(out)
}

/// The leader is paused (SIGSTOP) in the middle of a burst of work for longer than its lease,
/// a standby takes over and finishes the work, then the old leader resumes (SIGCONT) with
/// reconciles still in flight and watch events queued. From the API server's audit log: the old
/// leader wrote nothing after the standby took the Lease (it stopped on its own clock at the
/// renew deadline), and it exits instead of acting on a lease it no longer holds.
#[tokio::test]
async fn a_paused_leader_writes_nothing_after_a_standby_took_over() -> anyhow::Result<()> {
    let n = if heavy() { 60 } else { 15 };
    // Long enough that the leader keeps its Lease through convergence on a loaded 2-core
    // machine (it steps down after two thirds of it without a renewal; 6 s was lost once).
    let lease = 10u64;
    let cluster = OwnCluster::up(
        "leader",
        &[
            &format!(
                "--audit-policy-file={}",
                repo().join("hack/reliability/audit-policy.yaml").display()
            ),
            "--audit-log-path={dir}/logs/audit.log",
        ],
    )?;
    let client = cluster.client().await?;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "leader").await?;
    let kubeconfigs =
        chart_rbac_kubeconfig(&client, &cluster.kubeconfig, ns.name(), &["standby"]).await?;
    let lease_s = lease.to_string();
    let flags = [
        "--leader-elect",
        "--leader-election-namespace",
        ns.name(),
        "--leader-election-lease",
        support::cluster::CHART_NAME,
        "--lease-duration-seconds",
        &lease_s,
    ];
    let mut first = Operator::start_with(&kubeconfigs[0], Some(ns.name()), &flags)?;
    first.wait_serving(Duration::from_secs(30)).await?;
    time_until(
        "the first instance to lead",
        Duration::from_secs(30),
        || {
            let v = first.metric("premium_leader").unwrap_or(0.0);
            async move { v == 1.0 }
        },
    )
    .await?;
    let second = Operator::start_with(&kubeconfigs[1], Some(ns.name()), &flags)?;
    second.wait_serving(Duration::from_secs(30)).await?;
    apply_yaml(&client, ns.name(), &graph(n, 4, seed())).await?;
    converge(&client, ns.name(), n, Duration::from_secs(180)).await?;
    anyhow::ensure!(
        first.running() && first.metric("premium_leader")? == 1.0,
        "the first instance lost its lease during convergence (a renewal later than {}s): {}",
        lease * 2 / 3,
        first.log_tail()
    );
    assert_eq!(second.metric("premium_leader")?, 0.0, "two leaders");
    assert_eq!(second.writes()?, 0.0, "the standby wrote");

    // A burst of new features, and the leader frozen in the middle of it: while reconciles
    // are in flight (started, not finished, some writes done), with more events queued.
    let burst = if heavy() { 40 } else { 20 };
    let burst_docs: String = (0..burst)
        .map(|i| feature_yaml(&format!("b{i:03}"), &[], ""))
        .collect();
    let before = first.writes()?;
    apply_yaml(&client, ns.name(), &burst_docs).await?;
    let started = std::time::Instant::now();
    let in_flight = |m: &str| {
        metric_sum(m, "premium_reconciles_total{controller=\"feature\"}")
            - metric_sum(
                m,
                "premium_reconcile_duration_seconds_count{controller=\"feature\"}",
            )
    };
    let caught = loop {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the leader was never caught in the middle of a reconcile"
        );
        let m = first.metrics()?;
        let writes = metric_sum(&m, "premium_object_writes_total")
            + metric_sum(&m, "premium_status_writes_total");
        if writes > before && in_flight(&m) >= 1.0 {
            signal(first.pid(), "STOP")?;
            break in_flight(&m);
        }
    };
    let takeover = time_until(
        "the standby to take over",
        Duration::from_secs(lease + 30),
        || {
            let v = second.metric("premium_leader").unwrap_or(0.0);
            async move { v == 1.0 }
        },
    )
    .await?;
    // More work while the old leader is still frozen: its watches will hand it these events
    // when it wakes, with a stale view of what was written since.
    apply_yaml(&client, ns.name(), &change(n, 4, seed(), 2)).await?;
    apply_yaml(&client, ns.name(), &feature_yaml("late", &["f000"], "")).await?;
    let total = n + burst + 1;
    converge(&client, ns.name(), total, Duration::from_secs(180)).await?;
    let paused = started.elapsed().as_secs_f64();

    signal(first.pid(), "CONT")?;
    let exited = time_until("the old leader to stop", Duration::from_secs(15), || {
        let running = first.running();
        async move { !running }
    })
    .await;
    // Anything it would still send has had time to reach the audit log.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let first_user = format!(
        "system:serviceaccount:{}:{}",
        ns.name(),
        support::cluster::CHART_NAME
    );
    let second_user = format!("system:serviceaccount:{}:standby", ns.name());
    let writes = audit_writes(&cluster.audit_log(), ns.name())?;
    // The takeover: the standby's first write to the Lease.
    let took_lease = writes
        .iter()
        .find(|w| w.user == second_user && w.resource == "leases")
        .map(|w| w.at.clone())
        .ok_or_else(|| anyhow::anyhow!("the audit log shows no Lease write by the standby"))?;
    let is_work = |w: &&Write| w.resource != "leases";
    let old: Vec<&Write> = writes
        .iter()
        .filter(|w| w.user == first_user)
        .filter(is_work)
        .collect();
    let new: Vec<&Write> = writes
        .iter()
        .filter(|w| w.user == second_user)
        .filter(is_work)
        .collect();
    let stale: Vec<String> = old
        .iter()
        .filter(|w| w.at >= took_lease)
        .map(|w| format!("{} {}", w.at, w.what))
        .collect();
    assert!(
        !old.is_empty() && !new.is_empty(),
        "audit log: {} writes by the first, {} by the second",
        old.len(),
        new.len()
    );
    assert!(
        stale.is_empty(),
        "the old leader wrote {} time(s) after the standby took the Lease at {took_lease}:\n{}\nits log:\n{}",
        stale.len(),
        stale.join("\n"),
        first.log_tail()
    );
    // And the cluster is still what the new leader made it (a stale write would undo it).
    converge(&client, ns.name(), total, Duration::from_secs(60)).await?;
    let new_first = new.iter().map(|w| w.at.as_str()).min().unwrap_or_default();
    assert!(
        new_first >= took_lease.as_str(),
        "the standby wrote at {new_first}, before it took the Lease at {took_lease}"
    );
    let exited = exited.map_err(|e| {
        anyhow::anyhow!(
            "{e}: the old leader kept running after it woke up\n{}",
            first.log_tail()
        )
    })?;
    let log = std::fs::read_to_string(&first.log)?;
    assert!(
        log.contains("lost the leader lease"),
        "the old leader stopped without saying why:\n{}",
        first.log_tail()
    );
    report(
        "isolation",
        &format!(
            "leader paused (SIGSTOP) past its lease mid-burst, then resumed (2 instances, lease {lease}s, chart RBAC)"
        ),
        "pass",
        &format!(
            "paused {paused:.0}s with {caught:.0} reconcile(s) in flight; takeover {takeover:.1}s after the pause; audit: 0 writes by the old leader after the takeover ({} before, {} by the new); old leader exited {exited:.1}s after SIGCONT",
            old.len(),
            new.len(),
        ),
    );
    finish(ns, second).await?;
    drop(first);
    drop(cluster);
    Ok(())
}

/// API server restart and freeze, etcd restart and an expired watch, on a cluster of the
/// test's own (watch cache off, so a resumed watch from a compacted revision gets 410 Gone).
/// One cluster-wide operator process lives through all of them.
#[tokio::test]
async fn control_plane_faults_are_survived_without_a_restart() -> anyhow::Result<()> {
    let n = if heavy() { 60 } else { 20 };
    let levels = 4;
    let freeze = Duration::from_secs(if heavy() { 60 } else { 15 });
    let timeout = Duration::from_secs(if heavy() { 300 } else { 180 });
    let cluster = OwnCluster::up("faults", &["--watch-cache=false"])?;
    let client = cluster.client().await?;
    ensure_crds(&client).await?;
    let (clean_ns, clean_op, clean, _) = clean_run(
        &client,
        &cluster.kubeconfig,
        &graph_with_change(n, levels, seed(), 1),
        n,
        timeout,
    )
    .await?;
    let clean_writes = clean_op.writes()?;
    finish(clean_ns, clean_op).await?;
    // Cluster-wide, as the chart installs it by default: its ClusterRole, its ServiceAccount.
    let (home, mut operator) = cluster.chart_operator(&client).await?;
    operator.wait_serving(Duration::from_secs(30)).await?;
    let pid = operator.pid();
    let mut kept = Vec::new();

    // Each fault: a fresh namespace converging while the fault hits, a spec change made just
    // before it and another just after (the clean run holds the second), then the comparison
    // with the clean run.
    for fault in [
        "apiserver-restart",
        "apiserver-freeze",
        "etcd-restart",
        "watch-expired",
    ] {
        let ns = TestNamespace::new(&client, fault).await?;
        let writes_before = operator.writes()?;
        apply_yaml(&client, ns.name(), &graph(n, levels, seed())).await?;
        let mut note: String;
        match fault {
            "apiserver-restart" => {
                tokio::time::sleep(Duration::from_millis(800)).await;
                apply_yaml(&client, ns.name(), &change(n, levels, seed(), 2)).await?;
                let took = cluster.fault(&["restart", "kube-apiserver"])?;
                apply_yaml(&client, ns.name(), &change(n, levels, seed(), 1)).await?;
                note = format!("apiserver down {took:.1}s");
            }
            "apiserver-freeze" => {
                tokio::time::sleep(Duration::from_millis(800)).await;
                apply_yaml(&client, ns.name(), &change(n, levels, seed(), 2)).await?;
                cluster.fault(&["freeze", "kube-apiserver"])?;
                tokio::time::sleep(freeze).await;
                cluster.fault(&["thaw", "kube-apiserver"])?;
                cluster.fault(&["wait-ready"])?;
                apply_yaml(&client, ns.name(), &change(n, levels, seed(), 1)).await?;
                note = format!("frozen {}s (SIGSTOP)", freeze.as_secs());
            }
            "etcd-restart" => {
                tokio::time::sleep(Duration::from_millis(800)).await;
                apply_yaml(&client, ns.name(), &change(n, levels, seed(), 2)).await?;
                let took = cluster.fault(&["restart", "etcd"])?;
                apply_yaml(&client, ns.name(), &change(n, levels, seed(), 1)).await?;
                note = format!("etcd restart + apiserver ready {took:.1}s");
            }
            _ => {
                // Converge, freeze the operator, change things, compact etcd and drop every
                // watch: the operator resumes from a compacted revision.
                converge(&client, ns.name(), n, timeout).await?;
                signal(pid, "STOP")?;
                apply_yaml(&client, ns.name(), &change(n, levels, seed(), 1)).await?;
                cluster.fault(&["compact"])?;
                cluster.fault(&["restart", "kube-apiserver"])?;
                cluster.fault(&["compact"])?;
                signal(pid, "CONT")?;
                note = "etcd compacted, watches dropped while the operator was stopped".into();
            }
        }
        let (recover, faulty) = settled(&client, ns.name(), n, timeout).await?;
        let diffs = differences(&clean, &faulty);
        assert!(
            diffs.is_empty(),
            "after {fault} the cluster differs from a clean run:\n{}\noperator log:\n{}",
            diffs.join("\n"),
            operator.log_tail()
        );
        assert!(
            operator.running(),
            "the operator exited after {fault}:\n{}",
            operator.log_tail()
        );
        assert_eq!(operator.pid(), pid);
        if fault == "watch-expired" {
            // The point of the case: a watch resumed from a compacted revision must be refused
            // (410 Gone, "too old resource version") and the operator relist.
            let log = std::fs::read_to_string(&operator.log)?;
            let expired = log
                .lines()
                .filter(|l| {
                    l.contains("watch failed")
                        && (l.contains("410") || l.contains("too old") || l.contains("Expired"))
                })
                .count();
            assert!(
                expired > 0,
                "no watch reported 410 Gone after the compaction, so the case tested nothing; operator log:\n{}",
                operator.log_tail()
            );
            note.push_str(&format!("; {expired} watches got 410 Gone and relisted"));
        }
        let writes = operator.writes()? - writes_before;
        let changes = if fault == "watch-expired" {
            "the change made while it was stopped"
        } else {
            "changes made before and after"
        };
        let idle = idle_writes(&operator, Duration::from_secs(3)).await?;
        assert_eq!(idle, 0.0, "writes after convergence ({fault})");
        report(
            "fault",
            &format!("{fault} (cluster-wide operator, chart ClusterRole)"),
            "pass",
            &format!(
                "{note}; converged {recover:.1}s after; {changes} applied; operator writes {writes:.0} (clean run {clean_writes:.0}), idle 0; same {} objects as clean; duplicates 0; orphans 0; operator restarts 0",
                faulty.objects.len()
            ),
        );
        // Kept until the cluster goes: a teardown now would be writes during the next fault.
        kept.push(ns);
    }
    for ns in kept {
        ns.delete().await.ok();
    }
    drop(operator);
    drop(home);
    drop(cluster);
    Ok(())
}
