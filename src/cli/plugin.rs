//! Reading the live cluster: `graph --cluster` and `why NAME`, also as the kubectl plugin
//! `kubectl premium …` (the same binary installed as `kubectl-premium`).
//!
//! The I/O is two list calls; what is shown is decided by pure functions of the features read
//! ([`cluster_nodes`], [`explain`]), tested below without a cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::process::ExitCode;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams};
use kube::config::KubeConfigOptions;
use kube::{Client, Config, ResourceExt};

use super::graph::{self, Format, GraphNode};
use crate::api::PremiumFeature;
use crate::api::conditions::{DEGRADED, DEPENDENCIES_READY, READY, RECONCILING, STALLED};
use crate::core::graph::{DependencyEdge, FeatureKey};

/// Where to read from: the kubeconfig context and namespace scope, as kubectl takes them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClusterArgs {
    /// Namespace (default: the kubeconfig context's, else "default").
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The kubeconfig context to use (default: the current one).
    #[arg(long)]
    pub context: Option<String>,
}

/// A client for the kubeconfig (`KUBECONFIG`, `~/.kube/config`, or in-cluster) and the
/// namespace to read: `-n`, else the context's namespace.
async fn connect(args: &ClusterArgs) -> Result<(Client, String), String> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let config = match &args.context {
        Some(_) => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| e.to_string()),
        None => Config::infer().await.map_err(|e| e.to_string()),
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
pub fn graph_main(args: &ClusterArgs, all_namespaces: bool, format: Format) -> ExitCode {
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let (client, namespace) = connect(args).await?;
            let scope = (!all_namespaces).then_some(namespace.as_str());
            let features = list(&client, scope).await?;
            Ok(graph::render(&cluster_nodes(&features), format))
        })
    });
    finish(result)
}

/// `why NAME`: what holds a feature back, following blockers down to the root cause.
pub fn why_main(args: &ClusterArgs, name: &str) -> ExitCode {
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let (client, namespace) = connect(args).await?;
            let mut features = list(&client, Some(&namespace)).await?;
            // Dependencies in other namespaces, read one namespace at a time as needed.
            let mut read: BTreeSet<String> = [namespace.clone()].into();
            loop {
                let wanted: BTreeSet<String> = features
                    .iter()
                    .flat_map(|f| dependency_keys(f).into_iter().map(|e| e.target.namespace))
                    .filter(|ns| !read.contains(ns))
                    .collect();
                if wanted.is_empty() {
                    break;
                }
                for ns in wanted {
                    // Not being allowed to read another namespace is not fatal: the
                    // explanation says what it could not see.
                    if let Ok(more) = list(&client, Some(&ns)).await {
                        features.extend(more);
                    }
                    read.insert(ns);
                }
            }
            explain(&FeatureKey::new(namespace, name), &features)
        })
    });
    finish(result)
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
            let phase = if blocked.is_empty() {
                phase
            } else {
                format!("{phase}, blocked by {}", blocked.join(", "))
            };
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

fn describe_condition(c: &Condition) -> String {
    let mut s = format!("{}={} ({})", c.type_, c.status, c.reason);
    if !c.message.is_empty() {
        let _ = write!(s, ": {}", c.message);
    }
    s
}

/// Why the feature `target` is (or is not) Ready, from the features read: its phase, the
/// conditions that matter, and for each blocking dependency the same, down to the root cause.
/// Pure. `Err` when the feature is not among them.
pub fn explain(target: &FeatureKey, features: &[PremiumFeature]) -> Result<String, String> {
    let by_key: BTreeMap<FeatureKey, &PremiumFeature> =
        features.iter().map(|f| (key_of(f), f)).collect();
    let Some(feature) = by_key.get(target) else {
        return Err(format!(
            "PremiumFeature {} not found in namespace {}",
            target.name, target.namespace
        ));
    };
    let mut out = String::new();
    let mut seen = BTreeSet::new();
    explain_one(feature, &by_key, &target.namespace, 0, &mut seen, &mut out);
    Ok(out)
}

fn explain_one(
    feature: &PremiumFeature,
    by_key: &BTreeMap<FeatureKey, &PremiumFeature>,
    home: &str,
    depth: usize,
    seen: &mut BTreeSet<FeatureKey>,
    out: &mut String,
) {
    let indent = "  ".repeat(depth);
    let key = key_of(feature);
    let name = key.relative_to(home);
    seen.insert(key.clone());
    let Some(status) = &feature.status else {
        let _ = writeln!(
            out,
            "{indent}{name}: no status yet: the operator has not reconciled it (is it running, and watching namespace {}?)",
            key.namespace
        );
        return;
    };
    let phase = phase_of(feature).unwrap_or_else(|| "Pending".into());
    let ready = condition(feature, READY).is_some_and(|c| c.status == "True");
    let replicas = match (status.ready_replicas, status.replicas) {
        (Some(r), Some(d)) => format!(", {r}/{d} replicas ready"),
        (None, Some(d)) => format!(", 0/{d} replicas ready"),
        _ => String::new(),
    };
    let _ = writeln!(out, "{indent}{name}: {phase}{replicas}");
    let generation = feature.metadata.generation;
    if generation.is_some() && status.observed_generation < generation {
        let _ = writeln!(
            out,
            "{indent}  the operator has not acted on the latest spec yet (generation {}, observed {})",
            generation.unwrap_or_default(),
            status.observed_generation.unwrap_or_default()
        );
    }
    if feature.spec.suspend {
        let _ = writeln!(out, "{indent}  suspended by spec.suspend");
    }
    // The conditions that say something is wrong, in the order a person reads them.
    let wrong = [
        (STALLED, "True"),
        (DEPENDENCIES_READY, "False"),
        (DEGRADED, "True"),
        (RECONCILING, "True"),
    ];
    for (type_, bad) in wrong {
        if let Some(c) = condition(feature, type_).filter(|c| c.status == bad) {
            let _ = writeln!(out, "{indent}  {}", describe_condition(c));
        }
    }
    if depth == 0
        && !ready
        && let Some(c) = condition(feature, READY)
    {
        let _ = writeln!(out, "{indent}  {}", describe_condition(c));
    }
    if depth == 0 && ready && status.blocked_by.is_empty() {
        let _ = writeln!(out, "{indent}  nothing blocks it: Ready");
    }
    for blocker in &status.blocked_by {
        let mut line = format!("{indent}  blocked by {} ({})", blocker.name, blocker.reason);
        if !blocker.message.is_empty() {
            let _ = write!(line, ": {}", blocker.message);
        }
        let _ = writeln!(out, "{line}");
        let target = match blocker.name.split_once('/') {
            Some((ns, n)) => FeatureKey::new(ns, n),
            None => FeatureKey::new(key.namespace.clone(), &blocker.name),
        };
        match by_key.get(&target) {
            _ if seen.contains(&target) => {
                let _ = writeln!(
                    out,
                    "{indent}    {} (already explained above)",
                    target.relative_to(home)
                );
            }
            Some(dependency) => explain_one(dependency, by_key, home, depth + 2, seen, out),
            None => {
                let _ = writeln!(
                    out,
                    "{indent}    {}: not found (create it, or fix the name in spec.dependsOn)",
                    target.relative_to(home)
                );
            }
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
}
