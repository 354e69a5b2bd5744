//! A dependency's capacity shared by its callers (issue 20, part 1), on a cluster of the test's
//! own that runs without the HPA controller, so the scale steps the test makes through the
//! Deployments' scale subresource stand.
//!
//! After each step, once the split has settled: every caller's rendered `cds.yaml` decodes as
//! Envoy's v3 DiscoveryResponse (unknown fields refused, canonical proto3 JSON), its cluster
//! for catalog carries the per-instance limits catalog's status shows, the sum of per-instance
//! limit × replicas stays within the capacity (but for the floor of 1 per instance), no pod
//! template changed (the split reloads, it never rolls pods), and the ConfigMap writes the step
//! cost are bounded; they are printed.
//!
//! A second case, on the shared cluster: many callers created at once are all counted in the
//! split at the replicas they start with (a dependency woken by a caller's first pass must not
//! count it from a cache the caller's new Deployment has not reached yet).
//!
//! Needs the local control plane tools (`make tools`). Runs in `make test`.

mod support;

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams};
use premium_operator::api::{Phase, PremiumFeature};
use prost_reflect::{DescriptorPool, DynamicMessage};
use support::cluster::{OwnCluster, report};
use support::operator::{Operator, apply_yaml, ensure_crds, feature_yaml, finish, wait_phase};
use support::{TestNamespace, client, eventually};

const CALLERS: [(&str, u32); 3] = [("alpha", 1), ("beta", 1), ("gamma", 2)];
const MAX_CONNECTIONS: u64 = 20;
const MAX_REQUESTS: u64 = 300;

static POOL: LazyLock<DescriptorPool> =
    LazyLock::new(|| DescriptorPool::decode(xds_api::FILE_DESCRIPTOR_SET).unwrap());

/// Decodes a rendered `cds.yaml` as Envoy's DiscoveryResponse, refusing unknown fields, and
/// checks it is canonical proto3 JSON; returns it as JSON.
fn envoy_valid(cds: &str) -> anyhow::Result<serde_json::Value> {
    let json: serde_json::Value = serde_yaml::from_str(cds).context("cds.yaml is YAML")?;
    let desc = POOL
        .get_message_by_name("envoy.service.discovery.v3.DiscoveryResponse")
        .context("descriptor")?;
    let decoded = DynamicMessage::deserialize(desc, json.clone())
        .map_err(|e| anyhow::anyhow!("not an Envoy DiscoveryResponse: {e}"))?;
    if serde_json::to_value(&decoded)? != json {
        bail!("cds.yaml is not canonical proto3 JSON");
    }
    Ok(json)
}

/// The per-instance limits in a caller's cluster for catalog: (connections, requests).
fn catalog_thresholds(cds: &serde_json::Value, ns: &str) -> Option<(u64, u64)> {
    let name = format!("dep_{ns}_catalog");
    let cluster = cds["resources"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name.as_str())?;
    let t = &cluster["circuitBreakers"]["thresholds"][0];
    Some((t["maxConnections"].as_u64()?, t["maxRequests"].as_u64()?))
}

struct World {
    ns: String,
    features: Api<PremiumFeature>,
    deployments: Api<Deployment>,
    configmaps: Api<ConfigMap>,
}

/// One caller in a settled split: its replicas, and per limit (connections, requests) its
/// per-instance value and its weighted share.
#[derive(Debug)]
struct Part {
    replicas: u64,
    per_instance: [u64; 2],
    share: [u64; 2],
}

type Settled = BTreeMap<String, Part>;

impl World {
    /// Waits until catalog's status counts every caller at its `want` replicas and every
    /// caller's sidecar carries the per-instance limits the status shows.
    async fn settled(&self, want: &BTreeMap<&str, u64>) -> anyhow::Result<Settled> {
        eventually(
            "the capacity split to settle",
            Duration::from_secs(90),
            || async {
                let catalog = self.features.get("catalog").await?;
                let Some(split) = catalog.status.and_then(|s| s.capacity) else {
                    return Ok(None);
                };
                let mut seen = Settled::new();
                for c in &split.callers {
                    let replicas = u64::try_from(c.replicas)?;
                    if want.get(c.name.as_str()) != Some(&replicas) {
                        return Ok(None);
                    }
                    let per = &c.per_instance;
                    let expected = (
                        u64::try_from(per.max_connections.unwrap_or(0))?,
                        u64::try_from(per.max_requests.unwrap_or(0))?,
                    );
                    let cm = self.configmaps.get(&format!("{}-sidecar", c.name)).await?;
                    let cds = envoy_valid(&cm.data.unwrap_or_default()["cds.yaml"])?;
                    if catalog_thresholds(&cds, &self.ns) != Some(expected) {
                        return Ok(None);
                    }
                    let share = [
                        u64::try_from(c.share.max_connections.unwrap_or(0))?,
                        u64::try_from(c.share.max_requests.unwrap_or(0))?,
                    ];
                    let part = Part {
                        replicas,
                        per_instance: [expected.0, expected.1],
                        share,
                    };
                    seen.insert(c.name.clone(), part);
                }
                Ok((seen.len() == want.len()).then_some(seen))
            },
        )
        .await
    }

    async fn templates(&self) -> anyhow::Result<BTreeMap<String, serde_json::Value>> {
        let mut out = BTreeMap::new();
        for (name, _) in CALLERS {
            let d = self.deployments.get(name).await?;
            let template = serde_json::to_value(d.spec.context("spec")?.template)?;
            out.insert(name.to_string(), template);
        }
        Ok(out)
    }

    async fn scale(&self, name: &str, replicas: u64) -> anyhow::Result<()> {
        let patch = serde_json::json!({"spec": {"replicas": replicas}});
        self.deployments
            .patch_scale(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("scaling {name}"))?;
        Ok(())
    }
}

/// The invariant for one limit (0: connections, 1: requests): Σ per-instance × replicas
/// within the capacity, but for what the floor of 1 per instance adds where a caller's share
/// is below its replicas.
fn check_invariant(seen: &Settled, limit: usize, capacity: u64) {
    let shares: u64 = seen.values().map(|p| p.share[limit]).sum();
    assert_eq!(
        shares, capacity,
        "the shares add up to the capacity: {seen:?}"
    );
    let used: u64 = seen
        .values()
        .map(|p| p.per_instance[limit] * p.replicas)
        .sum();
    let floor: u64 = seen
        .values()
        .map(|p| p.replicas.saturating_sub(p.share[limit]))
        .sum();
    assert!(
        used <= capacity + floor,
        "{used} over the capacity {capacity} (+{floor} for the floor): {seen:?}"
    );
}

#[tokio::test]
async fn scaling_callers_resplits_the_capacity_without_rolling_pods() -> anyhow::Result<()> {
    let cluster = OwnCluster::up_with("capacity", &[], "*,-horizontal-pod-autoscaler-controller")?;
    let client = cluster.client().await?;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "capacity").await?;
    let operator = Operator::start_with(&cluster.kubeconfig, Some(ns.name()), &[])?;
    operator.wait_serving(Duration::from_secs(60)).await?;
    let w = World {
        ns: ns.name().to_string(),
        features: ns.api(),
        deployments: ns.api(),
        configmaps: ns.api(),
    };
    let capacity =
        format!("  capacity: {{maxConnections: {MAX_CONNECTIONS}, maxRequests: {MAX_REQUESTS}}}");
    let mut yaml = feature_yaml("catalog", &[], &capacity);
    for (name, weight) in CALLERS {
        let pool = format!("  pool: {{minReplicas: 1, maxReplicas: 10, weight: {weight}}}");
        yaml.push_str(&feature_yaml(name, &["catalog"], &pool));
    }
    apply_yaml(&client, ns.name(), &yaml).await?;
    for name in ["catalog", "alpha", "beta", "gamma"] {
        wait_phase(&w.features, name, Phase::Ready).await?;
    }
    let mut want: BTreeMap<&str, u64> = CALLERS.iter().map(|(n, _)| (*n, 1)).collect();
    let first = w.settled(&want).await?;
    check_invariant(&first, 0, MAX_CONNECTIONS);
    let templates = w.templates().await?;
    let cm_writes = r#"premium_object_writes_total{kind="ConfigMap"}"#;
    let steps: [(&str, u64); 6] = [
        ("alpha", 4),
        ("beta", 7),
        ("gamma", 3),
        ("alpha", 5),
        ("beta", 2),
        ("gamma", 10),
    ];
    let mut figures = Vec::new();
    for (name, replicas) in steps {
        let before = operator.metric(cm_writes)?;
        w.scale(name, replicas).await?;
        want.insert(name, replicas);
        let seen = w.settled(&want).await?;
        // Let any write still on its way land before counting.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let writes = operator.metric(cm_writes)? - before;
        check_invariant(&seen, 0, MAX_CONNECTIONS);
        check_invariant(&seen, 1, MAX_REQUESTS);
        assert_eq!(w.templates().await?, templates, "a pod template changed");
        assert!(
            writes <= CALLERS.len() as f64,
            "{writes} ConfigMap writes for one scale step"
        );
        println!("{name} -> {replicas}: {writes} ConfigMap write(s); split {seen:?}");
        figures.push(format!("{name}->{replicas}: {writes}"));
    }
    report(
        "capacity",
        "configmap writes per scale step",
        "ok",
        &figures.join(", "),
    );
    drop(operator);
    ns.delete().await?;
    drop(cluster);
    Ok(())
}

/// Callers created together with their dependency: each one's first pass creates its
/// Deployment and wakes the dependency, whose pass may run before that Deployment is in its
/// cache. Every caller must still be counted at the replica it starts with, without any
/// further change to wake the dependency.
#[tokio::test]
async fn callers_created_at_once_are_all_counted_at_their_first_replicas() -> anyhow::Result<()> {
    const MANY: usize = 24;
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "capacity-many").await?;
    let operator = Operator::start(Some(ns.name()), &[])?;
    operator.wait_serving(Duration::from_secs(60)).await?;
    let features: Api<PremiumFeature> = ns.api();
    let mut yaml = feature_yaml(
        "catalog",
        &[],
        "  capacity: {maxConnections: 240, maxRequests: 2400}",
    );
    let pool = "  pool: {minReplicas: 1, maxReplicas: 3}";
    for i in 0..MANY {
        yaml.push_str(&feature_yaml(&format!("caller-{i:02}"), &["catalog"], pool));
    }
    apply_yaml(&client, ns.name(), &yaml).await?;
    let counted = eventually(
        "catalog's split to count every caller at 1 replica",
        Duration::from_secs(90),
        || async {
            let catalog = features.get("catalog").await?;
            let callers = catalog
                .status
                .and_then(|s| s.capacity)
                .map(|c| c.callers)
                .unwrap_or_default();
            let at_one = callers.iter().filter(|c| c.replicas == 1).count();
            Ok((at_one == MANY).then_some(callers.len()))
        },
    )
    .await;
    let catalog = features.get("catalog").await?;
    let counted = counted.with_context(|| {
        format!(
            "catalog's status.capacity: {:?}",
            catalog.status.and_then(|s| s.capacity)
        )
    })?;
    assert_eq!(counted, MANY, "callers in catalog's split");
    finish(ns, operator).await
}
