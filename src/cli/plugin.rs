//! Reading the live cluster: `graph --cluster` and `why NAME`, also as the kubectl plugin
//! `kubectl premium …` (the same binary installed as `kubectl-premium`).
//!
//! The I/O is two list calls; what is shown is decided by pure functions of the features read
//! ([`cluster_nodes`], [`graph_report`], [`why`]), tested below without a cluster. Both
//! commands print text for people and, with `-o json|yaml`, the same facts for scripts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use serde::Serialize;

use super::graph::{self, Format, GraphNode};
use crate::api::conditions::{DEGRADED, DEPENDENCIES_READY, READY, RECONCILING, STALLED};
use crate::api::{BlockedBy, CapacityAmounts, CapacityStatus, PremiumFeature};
use crate::core::graph::{DependencyEdge, FeatureKey, FeatureNode, analyze};

/// Where to read from: the kubeconfig file, context and namespace scope, as kubectl takes them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClusterArgs {
    /// Namespace (default: the kubeconfig context's, else "default").
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The kubeconfig context to use (default: the current one).
    #[arg(long)]
    pub context: Option<String>,
    /// The kubeconfig file to use (default: $KUBECONFIG, else ~/.kube/config, else the
    /// in-cluster service account).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

/// How `why` (and, beside the drawings, `graph`) prints its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    /// For people.
    #[default]
    Text,
    /// For scripts: one JSON document.
    Json,
    /// For scripts: one YAML document.
    Yaml,
}

/// What `graph --cluster` prints: a drawing, or the graph as data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphOutput {
    Drawing(Format),
    Data(Output),
}

/// A client for the kubeconfig (`--kubeconfig`, else `KUBECONFIG`, `~/.kube/config`, or
/// in-cluster) and the namespace to read: `-n`, else the context's namespace.
async fn connect(args: &ClusterArgs) -> Result<(Client, String), String> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let config = match (&args.kubeconfig, &args.context) {
        (Some(path), _) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| e.to_string())
        }
        (None, Some(_)) => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| e.to_string()),
        (None, None) => Config::infer().await.map_err(|e| e.to_string()),
    }
    .map_err(|e| format!("no usable kubeconfig: {e}"))?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|e| format!("cannot build a client: {e}"))?;
    Ok((client, namespace))
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

fn finish(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(out) => super::output::emit_report(&out, ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `value` as a JSON or YAML document (text output is each command's own).
pub fn as_data<T: Serialize>(value: &T, output: Output) -> Result<String, String> {
    match output {
        Output::Json => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string()),
        Output::Yaml | Output::Text => serde_yaml::to_string(value).map_err(|e| e.to_string()),
    }
}

async fn list(client: &Client, namespace: Option<&str>) -> Result<Vec<PremiumFeature>, String> {
    let api: Api<PremiumFeature> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let where_ = namespace.map_or("all namespaces".to_string(), |ns| format!("namespace {ns}"));
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|e| match &e {
            kube::Error::Api(s) if s.code == 404 => format!(
                "the PremiumFeature API is not served here; install the CRDs (kubectl apply -f crds/): {e}"
            ),
            _ => format!("cannot list PremiumFeatures in {where_}: {e}"),
        })
}

/// `graph --cluster`: the live graph of a namespace (or all), each node with its phase.
pub fn graph_main(args: &ClusterArgs, all_namespaces: bool, output: GraphOutput) -> ExitCode {
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let (client, namespace) = connect(args).await?;
            let scope = (!all_namespaces).then_some(namespace.as_str());
            let features = list(&client, scope).await?;
            match output {
                GraphOutput::Drawing(format) => {
                    Ok(graph::render(&cluster_nodes(&features), format))
                }
                GraphOutput::Data(data) => as_data(&graph_report(&features), data),
            }
        })
    });
    finish(result)
}

/// `why NAME`: what holds a feature back, following blockers down to the root cause.
pub fn why_main(args: &ClusterArgs, name: &str, output: Output) -> ExitCode {
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let (client, namespace) = connect(args).await?;
            let features = read_for_why(&client, &namespace).await?;
            let target = FeatureKey::new(namespace, name);
            match output {
                Output::Text => explain(&target, &features),
                data => as_data(&why(&target, &features)?, data),
            }
        })
    });
    finish(result)
}

/// The features of `namespace` and of every namespace their dependencies live in, read one
/// namespace at a time as needed.
async fn read_for_why(client: &Client, namespace: &str) -> Result<Vec<PremiumFeature>, String> {
    let mut features = list(client, Some(namespace)).await?;
    let mut read: BTreeSet<String> = [namespace.to_string()].into();
    loop {
        let wanted: BTreeSet<String> = features
            .iter()
            .flat_map(|f| dependency_keys(f).into_iter().map(|e| e.target.namespace))
            .filter(|ns| !read.contains(ns))
            .collect();
        if wanted.is_empty() {
            return Ok(features);
        }
        for ns in wanted {
            // Not being allowed to read another namespace is not fatal: the explanation says
            // what it could not see.
            if let Ok(more) = list(client, Some(&ns)).await {
                features.extend(more);
            }
            read.insert(ns);
        }
    }
}

/// The live graph as data: one entry per feature with its level, phase, blockers and edges.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GraphReport {
    pub features: Vec<GraphEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphEntry {
    pub namespace: String,
    pub name: String,
    /// Depth in the graph; absent on or behind a cycle or a missing dependency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<u32>,
    /// `status.phase`; absent until the operator has written a status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    pub blocked_by: Vec<BlockedBy>,
    pub depends_on: Vec<GraphEdge>,
    /// How its `spec.capacity` is split between its callers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacityStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GraphEdge {
    pub namespace: String,
    pub name: String,
    pub optional: bool,
    /// No such feature among those read.
    pub missing: bool,
}

/// [`GraphReport`] of the features read, sorted by namespace and name. Pure.
pub fn graph_report(features: &[PremiumFeature]) -> GraphReport {
    let nodes: Vec<FeatureNode> = features
        .iter()
        .map(|f| FeatureNode {
            key: key_of(f),
            depends_on: dependency_keys(f),
        })
        .collect();
    let analysis = analyze(&nodes, |_, _| true);
    let mut entries: Vec<GraphEntry> = features
        .iter()
        .map(|f| {
            let key = key_of(f);
            let missing = analysis.missing(&key);
            GraphEntry {
                level: analysis.level(&key),
                phase: phase_of(f),
                blocked_by: f.status.iter().flat_map(|s| s.blocked_by.clone()).collect(),
                capacity: f.status.as_ref().and_then(|s| s.capacity.clone()),
                depends_on: dependency_keys(f)
                    .into_iter()
                    .map(|e| GraphEdge {
                        missing: missing.contains(&e.target),
                        namespace: e.target.namespace,
                        name: e.target.name,
                        optional: e.optional,
                    })
                    .collect(),
                namespace: key.namespace,
                name: key.name,
            }
        })
        .collect();
    entries.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    GraphReport { features: entries }
}

/// The dependency edges of a feature (a dependency's namespace defaults to the feature's).
fn dependency_keys(feature: &PremiumFeature) -> Vec<DependencyEdge> {
    let ns = feature.namespace().unwrap_or_default();
    feature
        .spec
        .depends_on
        .iter()
        .map(|d| DependencyEdge {
            target: FeatureKey::new(d.namespace.clone().unwrap_or_else(|| ns.clone()), &d.name),
            optional: d.optional,
        })
        .collect()
}

fn key_of(feature: &PremiumFeature) -> FeatureKey {
    FeatureKey::new(feature.namespace().unwrap_or_default(), feature.name_any())
}

fn phase_of(feature: &PremiumFeature) -> Option<String> {
    feature
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .map(|p| p.as_str().to_string())
}

/// Graph nodes for features read from a cluster, each with its phase and what blocks it.
pub fn cluster_nodes(features: &[PremiumFeature]) -> Vec<GraphNode> {
    features
        .iter()
        .map(|f| {
            let blocked: Vec<&str> = f
                .status
                .iter()
                .flat_map(|s| s.blocked_by.iter().map(|b| b.name.as_str()))
                .collect();
            let phase = phase_of(f).unwrap_or_else(|| "no status yet".to_string());
            let mut phase = if blocked.is_empty() {
                phase
            } else {
                format!("{phase}, blocked by {}", blocked.join(", "))
            };
            if let Some(split) = f.status.as_ref().and_then(|s| s.capacity.as_ref()) {
                let parts: Vec<String> = split
                    .callers
                    .iter()
                    .map(|c| {
                        format!(
                            "{} {}x{{{}}}",
                            c.name,
                            c.replicas,
                            amounts_text(&c.per_instance)
                        )
                    })
                    .collect();
                let _ = write!(phase, ", capacity split: {}", parts.join("; "));
            }
            GraphNode {
                key: key_of(f),
                depends_on: dependency_keys(f),
                phase: Some(phase),
            }
        })
        .collect()
}

fn condition<'a>(feature: &'a PremiumFeature, type_: &str) -> Option<&'a Condition> {
    feature
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// Why a feature is (or is not) Ready: what `why` prints, as text or as JSON/YAML.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub namespace: String,
    pub name: String,
    /// `None` while the operator has not written a status yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed: Option<Observed>,
}

/// What the operator last wrote about a feature, cut down to what explains it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Observed {
    pub phase: String,
    pub ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    pub suspended: bool,
    /// The conditions that say something is wrong, in the order a person reads them, then the
    /// Ready condition.
    pub conditions: Vec<ConditionSummary>,
    pub blocked_by: Vec<Blocker>,
    /// How its `spec.capacity` is split between its callers (`status.capacity`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacityStatus>,
    /// Its part of each dependency's capacity, as the dependency's status shows it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub capacity_shares: Vec<CapacityShare>,
}

/// A caller's part of one dependency's capacity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CapacityShare {
    /// The dependency (`namespace/name` when in another namespace).
    pub dependency: String,
    pub replicas: i32,
    pub share: CapacityAmounts,
    pub per_instance: CapacityAmounts,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConditionSummary {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// One dependency that holds the feature back, followed down to its own explanation.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Blocker {
    pub namespace: String,
    pub name: String,
    pub reason: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    pub dependency: DependencyState,
}

/// What is known of a blocking dependency.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum DependencyState {
    /// Read from the cluster; explained in turn.
    Found { explanation: Box<Explanation> },
    /// Already explained higher up (a cycle, or a dependency shared by two blockers).
    ExplainedAbove,
    /// No such feature (or its namespace could not be read).
    NotFound,
}

impl ConditionSummary {
    fn of(c: &Condition) -> Self {
        Self {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
        }
    }

    fn line(&self) -> String {
        let mut s = format!("{}={} ({})", self.type_, self.status, self.reason);
        if !self.message.is_empty() {
            let _ = write!(s, ": {}", self.message);
        }
        s
    }
}

/// Why the feature `target` is (or is not) Ready, from the features read: its phase, the
/// conditions that matter, and for each blocking dependency the same, down to the root cause.
/// Pure. `Err` when the feature is not among them.
pub fn why(target: &FeatureKey, features: &[PremiumFeature]) -> Result<Explanation, String> {
    let by_key: BTreeMap<FeatureKey, &PremiumFeature> =
        features.iter().map(|f| (key_of(f), f)).collect();
    let Some(feature) = by_key.get(target) else {
        return Err(format!(
            "PremiumFeature {} not found in namespace {}",
            target.name, target.namespace
        ));
    };
    let mut seen = BTreeSet::new();
    Ok(explain_feature(feature, &by_key, &mut seen))
}

/// [`why`] as the text `why` prints.
pub fn explain(target: &FeatureKey, features: &[PremiumFeature]) -> Result<String, String> {
    let explanation = why(target, features)?;
    let mut out = String::new();
    render_explanation(&explanation, &target.namespace, 0, &mut out);
    Ok(out)
}

fn explain_feature(
    feature: &PremiumFeature,
    by_key: &BTreeMap<FeatureKey, &PremiumFeature>,
    seen: &mut BTreeSet<FeatureKey>,
) -> Explanation {
    let key = key_of(feature);
    seen.insert(key.clone());
    let observed = feature.status.as_ref().map(|status| {
        let wrong = [
            (STALLED, "True"),
            (DEPENDENCIES_READY, "False"),
            (DEGRADED, "True"),
            (RECONCILING, "True"),
        ];
        let mut conditions: Vec<ConditionSummary> = wrong
            .iter()
            .filter_map(|(type_, bad)| condition(feature, type_).filter(|c| c.status == *bad))
            .map(ConditionSummary::of)
            .collect();
        conditions.extend(condition(feature, READY).map(ConditionSummary::of));
        let blocked_by = status
            .blocked_by
            .iter()
            .map(|b| follow_blocker(b, &key.namespace, by_key, seen))
            .collect();
        Observed {
            phase: phase_of(feature).unwrap_or_else(|| "Pending".into()),
            ready: condition(feature, READY).is_some_and(|c| c.status == "True"),
            replicas: status.replicas,
            ready_replicas: status.ready_replicas,
            generation: feature.metadata.generation,
            observed_generation: status.observed_generation,
            suspended: feature.spec.suspend,
            conditions,
            blocked_by,
            capacity: status.capacity.clone(),
            capacity_shares: capacity_shares(feature, by_key),
        }
    });
    Explanation {
        namespace: key.namespace,
        name: key.name,
        observed,
    }
}

/// The feature's part of each of its dependencies' capacity that the features read show.
fn capacity_shares(
    feature: &PremiumFeature,
    by_key: &BTreeMap<FeatureKey, &PremiumFeature>,
) -> Vec<CapacityShare> {
    let key = key_of(feature);
    dependency_keys(feature)
        .into_iter()
        .filter_map(|e| {
            let split = by_key.get(&e.target)?.status.as_ref()?.capacity.as_ref()?;
            let me = key.relative_to(&e.target.namespace);
            let caller = split.callers.iter().find(|c| c.name == me)?;
            Some(CapacityShare {
                dependency: e.target.relative_to(&key.namespace),
                replicas: caller.replicas,
                share: caller.share.clone(),
                per_instance: caller.per_instance.clone(),
            })
        })
        .collect()
}

/// `maxConnections 10, maxRequests 40`: the set amounts.
fn amounts_text(a: &CapacityAmounts) -> String {
    [
        ("maxConnections", a.max_connections),
        ("maxPendingRequests", a.max_pending_requests),
        ("maxRequests", a.max_requests),
    ]
    .iter()
    .filter_map(|(name, v)| v.map(|v| format!("{name} {v}")))
    .collect::<Vec<_>>()
    .join(", ")
}

/// The capacity lines of the feature asked about: its own split, then its shares.
fn render_capacity(o: &Observed, out: &mut String) {
    if let Some(split) = &o.capacity {
        let _ = writeln!(
            out,
            "  capacity split between {} caller(s) (spec.capacity):",
            split.callers.len()
        );
        for c in &split.callers {
            let _ = writeln!(
                out,
                "    {}: weight {}, {} replicas, share {{{}}}, per instance {{{}}}",
                c.name,
                c.weight,
                c.replicas,
                amounts_text(&c.share),
                amounts_text(&c.per_instance)
            );
        }
    }
    for s in &o.capacity_shares {
        let _ = writeln!(
            out,
            "  sends {} at most {{{}}} per instance ({} replicas; its share of {}'s capacity: {{{}}})",
            s.dependency,
            amounts_text(&s.per_instance),
            s.replicas,
            s.dependency,
            amounts_text(&s.share)
        );
    }
}

fn follow_blocker(
    blocker: &BlockedBy,
    home: &str,
    by_key: &BTreeMap<FeatureKey, &PremiumFeature>,
    seen: &mut BTreeSet<FeatureKey>,
) -> Blocker {
    let target = match blocker.name.split_once('/') {
        Some((ns, n)) => FeatureKey::new(ns, n),
        None => FeatureKey::new(home, &blocker.name),
    };
    let dependency = match by_key.get(&target) {
        _ if seen.contains(&target) => DependencyState::ExplainedAbove,
        Some(dependency) => DependencyState::Found {
            explanation: Box::new(explain_feature(dependency, by_key, seen)),
        },
        None => DependencyState::NotFound,
    };
    Blocker {
        namespace: target.namespace,
        name: target.name,
        reason: blocker.reason.clone(),
        message: blocker.message.clone(),
        dependency,
    }
}

fn render_explanation(e: &Explanation, home: &str, depth: usize, out: &mut String) {
    let indent = "  ".repeat(depth);
    let name = FeatureKey::new(e.namespace.clone(), &e.name).relative_to(home);
    let Some(o) = &e.observed else {
        let _ = writeln!(
            out,
            "{indent}{name}: no status yet: the operator has not reconciled it (is it running, and watching namespace {}?)",
            e.namespace
        );
        return;
    };
    let replicas = match (o.ready_replicas, o.replicas) {
        (Some(r), Some(d)) => format!(", {r}/{d} replicas ready"),
        (None, Some(d)) => format!(", 0/{d} replicas ready"),
        _ => String::new(),
    };
    let _ = writeln!(out, "{indent}{name}: {}{replicas}", o.phase);
    if let Some(generation) = o.generation
        && o.observed_generation < Some(generation)
    {
        let _ = writeln!(
            out,
            "{indent}  the operator has not acted on the latest spec yet (generation {generation}, observed {})",
            o.observed_generation.unwrap_or_default()
        );
    }
    if o.suspended {
        let _ = writeln!(out, "{indent}  suspended by spec.suspend");
    }
    for c in &o.conditions {
        // The Ready condition only for the feature asked about, when it is not Ready.
        if c.type_ != READY || (depth == 0 && !o.ready) {
            let _ = writeln!(out, "{indent}  {}", c.line());
        }
    }
    if depth == 0 && o.ready && o.blocked_by.is_empty() {
        let _ = writeln!(out, "{indent}  nothing blocks it: Ready");
    }
    if depth == 0 {
        render_capacity(o, out);
    }
    for b in &o.blocked_by {
        render_blocker(b, home, depth, out);
    }
}

fn render_blocker(b: &Blocker, home: &str, depth: usize, out: &mut String) {
    let indent = "  ".repeat(depth);
    let name = FeatureKey::new(b.namespace.clone(), &b.name).relative_to(home);
    let mut line = format!("{indent}  blocked by {name} ({})", b.reason);
    if !b.message.is_empty() {
        let _ = write!(line, ": {}", b.message);
    }
    let _ = writeln!(out, "{line}");
    match &b.dependency {
        DependencyState::ExplainedAbove => {
            let _ = writeln!(out, "{indent}    {name} (already explained above)");
        }
        DependencyState::Found { explanation } => {
            render_explanation(explanation, home, depth + 2, out);
        }
        DependencyState::NotFound => {
            let _ = writeln!(
                out,
                "{indent}    {name}: not found (create it, or fix the name in spec.dependsOn)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BlockedBy, Phase, PremiumFeatureStatus};

    fn feature(name: &str, deps: &[&str], phase: Option<Phase>) -> PremiumFeature {
        let deps: Vec<String> = deps.iter().map(|d| format!("{{name: {d}}}")).collect();
        let yaml = format!(
            "apiVersion: premium.dev/v1alpha1\nkind: PremiumFeature\nmetadata: {{name: {name}, namespace: portal, generation: 1}}\nspec: {{image: x, port: 9898, dependsOn: [{}]}}\n",
            deps.join(", ")
        );
        let mut f: PremiumFeature = serde_yaml::from_str(&yaml).expect("valid feature");
        f.status = phase.map(|p| PremiumFeatureStatus {
            observed_generation: Some(1),
            phase: Some(p),
            ..Default::default()
        });
        f
    }

    fn cond(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Default::default(),
            ),
            observed_generation: Some(1),
        }
    }

    fn blocked(f: &mut PremiumFeature, by: &str, reason: &str) {
        let status = f.status.get_or_insert_with(Default::default);
        status.blocked_by.push(BlockedBy {
            name: by.into(),
            reason: reason.into(),
            message: String::new(),
        });
    }

    #[test]
    fn why_follows_blockers_to_the_root_cause() {
        let mut aika = feature(
            "aika",
            &["soundcheck", "catalog"],
            Some(Phase::WaitingForDependencies),
        );
        blocked(&mut aika, "soundcheck", "DependencyNotReady");
        aika.status.as_mut().unwrap().conditions = vec![
            cond(
                "Ready",
                "False",
                "DependencyNotReady",
                "waiting for soundcheck",
            ),
            cond(
                "DependenciesReady",
                "False",
                "DependencyNotReady",
                "soundcheck is not Ready",
            ),
        ];
        let mut soundcheck = feature("soundcheck", &["catalog"], Some(Phase::Starting));
        soundcheck.status.as_mut().unwrap().replicas = Some(2);
        soundcheck.status.as_mut().unwrap().conditions = vec![cond(
            "Stalled",
            "True",
            "StartupTimeout",
            "not Ready within 2m",
        )];
        let catalog = feature("catalog", &[], Some(Phase::Ready));
        let out = explain(
            &FeatureKey::new("portal", "aika"),
            &[aika, soundcheck, catalog],
        )
        .expect("found");
        assert_eq!(
            out,
            "aika: WaitingForDependencies
  DependenciesReady=False (DependencyNotReady): soundcheck is not Ready
  Ready=False (DependencyNotReady): waiting for soundcheck
  blocked by soundcheck (DependencyNotReady)
    soundcheck: Starting, 0/2 replicas ready
      Stalled=True (StartupTimeout): not Ready within 2m
"
        );
    }

    #[test]
    fn why_names_missing_dependencies_cycles_and_unreconciled_features() {
        let mut a = feature("a", &["b", "gone"], Some(Phase::WaitingForDependencies));
        blocked(&mut a, "gone", "DependencyNotFound");
        blocked(&mut a, "b", "DependencyCycle");
        let mut b = feature("b", &["a"], Some(Phase::Failed));
        blocked(&mut b, "a", "DependencyCycle");
        let out = explain(&FeatureKey::new("portal", "a"), &[a.clone(), b]).expect("found");
        assert!(out.contains("    gone: not found (create it"), "{out}");
        assert!(out.contains("        a (already explained above)"), "{out}");
        let fresh = feature("fresh", &[], None);
        let out = explain(&FeatureKey::new("portal", "fresh"), &[fresh]).expect("found");
        assert!(out.starts_with("fresh: no status yet"), "{out}");
        assert!(
            explain(&FeatureKey::new("portal", "nope"), &[a])
                .unwrap_err()
                .contains("not found in namespace portal")
        );
    }

    #[test]
    fn why_and_graph_show_the_capacity_split() {
        use crate::api::{CapacityCaller, CapacityStatus};
        let amounts = |r: i64| CapacityAmounts {
            max_requests: Some(r),
            ..Default::default()
        };
        let mut catalog = feature("catalog", &[], Some(Phase::Ready));
        catalog.status.as_mut().unwrap().capacity = Some(CapacityStatus {
            callers: vec![CapacityCaller {
                name: "aika".into(),
                weight: 1,
                replicas: 2,
                share: amounts(120),
                per_instance: amounts(60),
            }],
        });
        let aika = feature("aika", &["catalog"], Some(Phase::Ready));
        let features = [catalog.clone(), aika];
        let out = explain(&FeatureKey::new("portal", "catalog"), &features).expect("found");
        assert!(
            out.contains("capacity split between 1 caller(s)")
                && out.contains(
                    "    aika: weight 1, 2 replicas, share {maxRequests 120}, per instance {maxRequests 60}"
                ),
            "{out}"
        );
        let out = explain(&FeatureKey::new("portal", "aika"), &features).expect("found");
        assert!(
            out.contains("  sends catalog at most {maxRequests 60} per instance (2 replicas"),
            "{out}"
        );
        let drawing = graph::render(&cluster_nodes(&features), Format::Text);
        assert!(
            drawing.contains("capacity split: aika 2x{maxRequests 60}"),
            "{drawing}"
        );
        let report = graph_report(&features);
        assert_eq!(
            report.features[1].capacity,
            catalog.status.unwrap().capacity
        );
    }

    #[test]
    fn why_says_ready_when_nothing_blocks() {
        let mut f = feature("catalog", &[], Some(Phase::Ready));
        f.status.as_mut().unwrap().conditions = vec![cond("Ready", "True", "Available", "")];
        let out = explain(&FeatureKey::new("portal", "catalog"), &[f]).expect("found");
        assert_eq!(out, "catalog: Ready\n  nothing blocks it: Ready\n");
    }

    #[test]
    fn cluster_nodes_carry_phase_and_blockers() {
        let mut aika = feature("aika", &["catalog"], Some(Phase::WaitingForDependencies));
        blocked(&mut aika, "catalog", "DependencyNotReady");
        let catalog = feature("catalog", &[], None);
        let out = graph::render(&cluster_nodes(&[aika, catalog]), Format::Text);
        assert_eq!(
            out,
            "namespace portal:
  catalog (level 0, no status yet)
  aika (level 1, WaitingForDependencies, blocked by catalog)
    -> catalog
"
        );
    }

    #[test]
    fn why_as_data_carries_the_same_facts_as_the_text() {
        let mut a = feature("a", &["b", "gone"], Some(Phase::WaitingForDependencies));
        blocked(&mut a, "gone", "DependencyNotFound");
        blocked(&mut a, "b", "DependencyCycle");
        let mut b = feature("b", &["a"], Some(Phase::Failed));
        blocked(&mut b, "a", "DependencyCycle");
        b.status.as_mut().unwrap().conditions =
            vec![cond("Stalled", "True", "DependencyCycle", "a -> b -> a")];
        let report = why(&FeatureKey::new("portal", "a"), &[a, b]).expect("found");
        let json: serde_json::Value =
            serde_json::from_str(&as_data(&report, Output::Json).expect("json")).expect("parses");
        let yaml: serde_json::Value =
            serde_yaml::from_str(&as_data(&report, Output::Yaml).expect("yaml")).expect("parses");
        assert_eq!(json, yaml);
        assert_eq!(json["name"], "a");
        assert_eq!(json["observed"]["phase"], "WaitingForDependencies");
        let blockers = &json["observed"]["blockedBy"];
        assert_eq!(blockers[0]["name"], "gone");
        assert_eq!(blockers[0]["dependency"]["state"], "notFound");
        let b = &blockers[1]["dependency"];
        assert_eq!(b["state"], "found");
        assert_eq!(
            b["explanation"]["observed"]["conditions"][0]["reason"],
            "DependencyCycle"
        );
        assert_eq!(
            b["explanation"]["observed"]["blockedBy"][0]["dependency"]["state"],
            "explainedAbove"
        );
    }

    #[test]
    fn graph_report_has_levels_phases_blockers_and_missing_edges() {
        let mut aika = feature(
            "aika",
            &["catalog", "ghost"],
            Some(Phase::WaitingForDependencies),
        );
        blocked(&mut aika, "ghost", "DependencyNotFound");
        let catalog = feature("catalog", &[], Some(Phase::Ready));
        let report = graph_report(&[aika, catalog]);
        let names: Vec<&str> = report.features.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["aika", "catalog"]);
        let aika = &report.features[0];
        assert_eq!(aika.level, None, "behind a missing dependency: no level");
        assert_eq!(aika.phase.as_deref(), Some("WaitingForDependencies"));
        assert_eq!(aika.blocked_by[0].name, "ghost");
        assert_eq!(
            aika.depends_on,
            [
                GraphEdge {
                    namespace: "portal".into(),
                    name: "catalog".into(),
                    optional: false,
                    missing: false
                },
                GraphEdge {
                    namespace: "portal".into(),
                    name: "ghost".into(),
                    optional: false,
                    missing: true
                }
            ]
        );
        assert_eq!(report.features[1].level, Some(0));
        let json: serde_json::Value =
            serde_json::from_str(&as_data(&report, Output::Json).expect("json")).expect("parses");
        assert_eq!(json["features"][1]["phase"], "Ready");
        assert!(json["features"][0].get("level").is_none());
    }
}
