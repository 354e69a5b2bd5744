//! `premium-operator graph`: the dependency graph as text, DOT or Mermaid.
//!
//! Rendering is a pure function of [`GraphNode`]s, so the same renderers serve manifests read
//! from files and, later, features read from a cluster (each node then carries its phase).
//! Edges point from a feature to what it depends on; optional dependencies are dashed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use super::manifest::{self, DocKind, Input};
use crate::core::graph::{
    DependencyEdge, FeatureKey, FeatureNode, GraphAnalysis, analyze, path_string,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Dot,
    Mermaid,
}

/// A feature to draw: its dependencies and, when read from a cluster, its phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphNode {
    pub key: FeatureKey,
    pub depends_on: Vec<DependencyEdge>,
    /// The feature's `status.phase` (or a longer note such as why it is blocked), if known.
    pub phase: Option<String>,
}

/// Prints the dependency graph of the manifests under `paths`. Files or documents that cannot
/// be read are reported on stderr (one line each, naming the file) and make the exit code 1;
/// the graph of everything else is still printed.
pub fn main(paths: &[PathBuf], format: Format) -> ExitCode {
    let inputs = manifest::read_inputs(paths);
    let (nodes, problems) = nodes_from_inputs(&inputs);
    let code = if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    let code = super::output::emit_report(&render(&nodes, format), code);
    for problem in &problems {
        eprintln!("{problem}");
    }
    code
}

/// The PremiumFeatures among the inputs as graph nodes (the first of duplicates wins), and the
/// problems that kept documents from being read. Features are read leniently: `graph` draws,
/// `check` validates.
pub fn nodes_from_inputs(inputs: &[Input]) -> (Vec<GraphNode>, Vec<String>) {
    let loaded = manifest::load(inputs);
    let mut seen = BTreeSet::new();
    let mut nodes = Vec::new();
    for object in &loaded.objects {
        if object.kind != DocKind::Feature {
            continue;
        }
        let Some(name) = object.name() else { continue };
        let key = FeatureKey::new(object.namespace(), name);
        if seen.insert(key.clone()) {
            nodes.push(GraphNode {
                key,
                depends_on: object.dependencies(),
                phase: None,
            });
        }
    }
    let problems = loaded.diagnostics.iter().map(ToString::to_string).collect();
    (nodes, problems)
}

/// Renders the graph of `nodes` in `format`. Pure and deterministic.
pub fn render(nodes: &[GraphNode], format: Format) -> String {
    let graph = Graph::new(nodes);
    match format {
        Format::Text => graph.text(),
        Format::Dot => graph.dot(),
        Format::Mermaid => graph.mermaid(),
    }
}

/// What every renderer needs: nodes in display order, their analysis, and the missing targets.
struct Graph<'a> {
    /// By namespace, then level (features without one last), then name.
    ordered: Vec<&'a GraphNode>,
    analysis: GraphAnalysis,
    /// Dependencies that name no feature of the graph.
    missing: BTreeSet<FeatureKey>,
}

impl<'a> Graph<'a> {
    fn new(nodes: &'a [GraphNode]) -> Self {
        // First of duplicate keys wins, as everywhere else.
        let mut unique: BTreeMap<&FeatureKey, &GraphNode> = BTreeMap::new();
        for node in nodes {
            unique.entry(&node.key).or_insert(node);
        }
        let feature_nodes: Vec<FeatureNode> = unique
            .values()
            .map(|n| FeatureNode {
                key: n.key.clone(),
                depends_on: n.depends_on.clone(),
            })
            .collect();
        // Drawing shows every declared edge; whether a cross-namespace one is granted is
        // `check`'s (and the operator's) business.
        let analysis = analyze(&feature_nodes, |_, _| true);
        let mut ordered: Vec<&GraphNode> = unique.into_values().collect();
        ordered.sort_by_key(|n| {
            (
                n.key.namespace.clone(),
                analysis.level(&n.key).unwrap_or(u32::MAX),
                n.key.name.clone(),
            )
        });
        let missing = ordered
            .iter()
            .flat_map(|n| analysis.missing(&n.key).iter().cloned())
            .collect();
        Self {
            ordered,
            analysis,
            missing,
        }
    }

    /// Dependencies of a node, sorted by target, one per target (required wins over optional).
    fn edges(node: &GraphNode) -> Vec<DependencyEdge> {
        let mut by_target: BTreeMap<&FeatureKey, bool> = BTreeMap::new();
        for edge in &node.depends_on {
            let optional = by_target.entry(&edge.target).or_insert(edge.optional);
            *optional &= edge.optional;
        }
        by_target
            .into_iter()
            .map(|(target, optional)| DependencyEdge {
                target: target.clone(),
                optional,
            })
            .collect()
    }

    /// Whether the edge lies on a dependency cycle (both ends in one cycle).
    fn on_cycle(&self, from: &FeatureKey, to: &FeatureKey) -> bool {
        self.analysis
            .cycle(from)
            .is_some_and(|path| path.contains(to) && self.analysis.on_cycle(to))
    }

    /// `level 2`, `on a cycle: a -> b -> a`, `no level: a dependency is missing` or `behind a
    /// cycle`; then the phase if known.
    fn status(&self, node: &GraphNode) -> String {
        let ns = node.key.namespace.as_str();
        let mut s = match (
            self.analysis.level(&node.key),
            self.analysis.cycle(&node.key),
        ) {
            (Some(level), _) => format!("level {level}"),
            (None, Some(path)) => format!("on a cycle: {}", path_string(path, ns)),
            (None, None) if self.analysis.needs_unreachable(&node.key) => {
                "no level: a dependency is missing".to_string()
            }
            (None, None) => "behind a cycle".to_string(),
        };
        if let Some(phase) = &node.phase {
            let _ = write!(s, ", {phase}");
        }
        s
    }

    fn text(&self) -> String {
        let mut out = String::new();
        if self.ordered.is_empty() {
            out.push_str("No PremiumFeature found.\n");
            return out;
        }
        let mut namespace: Option<&str> = None;
        for node in &self.ordered {
            let ns = node.key.namespace.as_str();
            if namespace != Some(ns) {
                if namespace.is_some() {
                    out.push('\n');
                }
                let _ = writeln!(out, "namespace {ns}:");
                namespace = Some(ns);
            }
            let _ = writeln!(out, "  {} ({})", node.key.name, self.status(node));
            for edge in Self::edges(node) {
                let mut notes = Vec::new();
                if edge.optional {
                    notes.push("optional");
                }
                if self.missing.contains(&edge.target) {
                    notes.push("missing");
                }
                if self.on_cycle(&node.key, &edge.target) {
                    notes.push("cycle");
                }
                let notes = if notes.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", notes.join(", "))
                };
                let _ = writeln!(out, "    -> {}{notes}", edge.target.relative_to(ns));
            }
        }
        let cycles = self.analysis.cycles();
        if !cycles.is_empty() {
            out.push('\n');
            for cycle in cycles {
                let ns = cycle.first().map_or("", |k| k.namespace.as_str());
                let _ = writeln!(
                    out,
                    "dependency cycle in namespace {ns}: {}",
                    path_string(&cycle, ns)
                );
            }
        }
        out
    }

    fn dot(&self) -> String {
        let mut out =
            String::from("digraph premium {\n  rankdir=BT;\n  node [shape=box, style=rounded];\n");
        let mut by_ns: BTreeMap<&str, Vec<&GraphNode>> = BTreeMap::new();
        for node in &self.ordered {
            by_ns
                .entry(node.key.namespace.as_str())
                .or_default()
                .push(node);
        }
        let mut missing_by_ns: BTreeMap<&str, Vec<&FeatureKey>> = BTreeMap::new();
        for key in &self.missing {
            missing_by_ns
                .entry(key.namespace.as_str())
                .or_default()
                .push(key);
        }
        let namespaces: BTreeSet<&str> =
            by_ns.keys().chain(missing_by_ns.keys()).copied().collect();
        for ns in namespaces {
            let _ = writeln!(out, "  subgraph {} {{", dot_id(&format!("cluster_{ns}")));
            let _ = writeln!(out, "    label={};", dot_id(&format!("namespace {ns}")));
            for node in by_ns.get(ns).into_iter().flatten() {
                let color = if self.analysis.on_cycle(&node.key) {
                    ", color=red"
                } else {
                    ""
                };
                let _ = writeln!(
                    out,
                    "    {} [label={}{color}];",
                    dot_id(&node.key.to_string()),
                    dot_id(&format!("{}\n{}", node.key.name, self.status(node)))
                );
            }
            for key in missing_by_ns.get(ns).into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "    {} [label={}, style=\"rounded,dashed\", color=red];",
                    dot_id(&key.to_string()),
                    dot_id(&format!("{}\nmissing", key.name))
                );
            }
            out.push_str("  }\n");
        }
        for node in &self.ordered {
            for edge in Self::edges(node) {
                let mut attrs = Vec::new();
                if edge.optional {
                    attrs.push("style=dashed".to_string());
                    attrs.push("label=\"optional\"".to_string());
                }
                if self.on_cycle(&node.key, &edge.target) {
                    attrs.push("color=red".to_string());
                }
                let attrs = if attrs.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", attrs.join(", "))
                };
                let _ = writeln!(
                    out,
                    "  {} -> {}{attrs};",
                    dot_id(&node.key.to_string()),
                    dot_id(&edge.target.to_string())
                );
            }
        }
        out.push_str("}\n");
        out
    }

    fn mermaid(&self) -> String {
        let mut out = String::from("graph TD\n");
        // Mermaid ids must be plain words; names go into labels.
        let mut ids: BTreeMap<&FeatureKey, String> = BTreeMap::new();
        for (i, node) in self.ordered.iter().enumerate() {
            ids.insert(&node.key, format!("f{i}"));
        }
        for (i, key) in self.missing.iter().enumerate() {
            ids.insert(key, format!("m{i}"));
        }
        let mut by_ns: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for node in &self.ordered {
            let id = ids.get(&node.key).cloned().unwrap_or_default();
            by_ns
                .entry(node.key.namespace.as_str())
                .or_default()
                .push(format!(
                    "{id}[\"{}<br/>{}\"]",
                    mermaid_text(&node.key.name),
                    mermaid_text(&self.status(node))
                ));
        }
        for key in &self.missing {
            let id = ids.get(key).cloned().unwrap_or_default();
            by_ns
                .entry(key.namespace.as_str())
                .or_default()
                .push(format!("{id}[\"{}<br/>missing\"]", mermaid_text(&key.name)));
        }
        for (i, (ns, lines)) in by_ns.iter().enumerate() {
            let _ = writeln!(out, "  subgraph ns{i}[\"namespace {}\"]", mermaid_text(ns));
            for line in lines {
                let _ = writeln!(out, "    {line}");
            }
            out.push_str("  end\n");
        }
        let mut cycle_edges = Vec::new();
        let mut edge_index = 0usize;
        for node in &self.ordered {
            let from = ids.get(&node.key).cloned().unwrap_or_default();
            for edge in Self::edges(node) {
                let to = ids.get(&edge.target).cloned().unwrap_or_default();
                let arrow = if edge.optional {
                    "-.->|optional|"
                } else {
                    "-->"
                };
                let _ = writeln!(out, "  {from} {arrow} {to}");
                if self.on_cycle(&node.key, &edge.target) {
                    cycle_edges.push(edge_index.to_string());
                }
                edge_index += 1;
            }
        }
        let cyclic: Vec<&String> = self
            .ordered
            .iter()
            .filter(|n| self.analysis.on_cycle(&n.key))
            .filter_map(|n| ids.get(&n.key))
            .collect();
        if !cyclic.is_empty() {
            out.push_str("  classDef cycle stroke:#d00,stroke-width:2px\n");
            for id in cyclic {
                let _ = writeln!(out, "  class {id} cycle");
            }
            let _ = writeln!(out, "  linkStyle {} stroke:#d00", cycle_edges.join(","));
        }
        if !self.missing.is_empty() {
            out.push_str("  classDef missing stroke:#d00,stroke-dasharray:4\n");
            for key in &self.missing {
                if let Some(id) = ids.get(key) {
                    let _ = writeln!(out, "  class {id} missing");
                }
            }
        }
        out
    }
}

/// A DOT quoted identifier.
fn dot_id(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Text safe inside a quoted Mermaid label.
fn mermaid_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("#quot;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ns: &str, name: &str, deps: &[(&str, &str, bool)]) -> GraphNode {
        GraphNode {
            key: FeatureKey::new(ns, name),
            depends_on: deps
                .iter()
                .map(|(n, d, optional)| DependencyEdge {
                    target: FeatureKey::new(*n, *d),
                    optional: *optional,
                })
                .collect(),
            phase: None,
        }
    }

    fn portal() -> Vec<GraphNode> {
        vec![
            node(
                "portal",
                "aika",
                &[
                    ("portal", "catalog", false),
                    ("portal", "soundcheck", false),
                    ("portal", "skill-exchange", true),
                ],
            ),
            node("portal", "soundcheck", &[("portal", "catalog", false)]),
            node("portal", "skill-exchange", &[("portal", "catalog", false)]),
            node("portal", "catalog", &[]),
        ]
    }

    #[test]
    fn text_lists_levels_and_marks_optional() {
        let out = render(&portal(), Format::Text);
        assert_eq!(
            out,
            "namespace portal:
  catalog (level 0)
  skill-exchange (level 1)
    -> catalog
  soundcheck (level 1)
    -> catalog
  aika (level 2)
    -> catalog
    -> skill-exchange (optional)
    -> soundcheck
"
        );
    }

    #[test]
    fn text_flags_cycles_missing_and_phases() {
        let mut nodes = vec![
            node("a", "x", &[("a", "y", false)]),
            node("a", "y", &[("a", "x", true)]),
            node("a", "z", &[("a", "x", false), ("a", "gone", false)]),
            node("a", "w", &[("a", "x", false)]),
        ];
        nodes[0].phase = Some("Failed".into());
        let out = render(&nodes, Format::Text);
        assert!(
            out.contains("  x (on a cycle: x -> y -> x, Failed)\n    -> y (cycle)\n"),
            "{out}"
        );
        assert!(out.contains("    -> x (optional, cycle)\n"), "{out}");
        assert!(out.contains("  w (behind a cycle)\n"), "{out}");
        assert!(
            out.contains("  z (no level: a dependency is missing)\n"),
            "{out}"
        );
        assert!(out.contains("    -> gone (missing)\n"), "{out}");
        assert!(
            out.contains("dependency cycle in namespace a: x -> y -> x\n"),
            "{out}"
        );
    }

    #[test]
    fn dot_is_a_digraph_with_dashed_optional_edges() {
        let out = render(&portal(), Format::Dot);
        assert!(out.starts_with("digraph premium {\n"));
        assert!(out.ends_with("}\n"));
        assert!(
            out.contains(
                "\"portal/aika\" -> \"portal/skill-exchange\" [style=dashed, label=\"optional\"];"
            ),
            "{out}"
        );
        assert!(out.contains("\"portal/aika\" -> \"portal/catalog\";"));
        assert!(
            out.contains("\"portal/catalog\" [label=\"catalog\\nlevel 0\"];"),
            "{out}"
        );
        assert_eq!(out.matches('{').count(), out.matches('}').count());
    }

    #[test]
    fn dot_quotes_odd_text() {
        assert_eq!(dot_id("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
    }

    #[test]
    fn mermaid_uses_dotted_arrows_for_optional_edges() {
        let out = render(&portal(), Format::Mermaid);
        assert!(out.starts_with("graph TD\n"));
        // Display order: catalog f0, skill-exchange f1, soundcheck f2, aika f3.
        assert!(out.contains("    f3[\"aika<br/>level 2\"]"), "{out}");
        assert!(out.contains("  f3 -.->|optional| f1\n"), "{out}");
        assert!(out.contains("  f3 --> f0\n"), "{out}");
        assert!(out.contains("  subgraph ns0[\"namespace portal\"]"));
    }

    #[test]
    fn mermaid_marks_cycles_and_missing() {
        let nodes = vec![
            node("a", "x", &[("a", "y", false), ("b", "q", false)]),
            node("a", "y", &[("a", "x", false)]),
        ];
        let out = render(&nodes, Format::Mermaid);
        assert!(out.contains("class f0 cycle"), "{out}");
        assert!(out.contains("linkStyle 0,2 stroke:#d00"), "{out}");
        assert!(out.contains("m0[\"q<br/>missing\"]"), "{out}");
        assert!(out.contains("class m0 missing"), "{out}");
        assert!(mermaid_text("a\"<b>").contains("#quot;#lt;b#gt;"));
    }

    #[test]
    fn renders_nothing_gracefully() {
        assert_eq!(render(&[], Format::Text), "No PremiumFeature found.\n");
        assert_eq!(
            render(&[], Format::Dot),
            "digraph premium {\n  rankdir=BT;\n  node [shape=box, style=rounded];\n}\n"
        );
        assert_eq!(render(&[], Format::Mermaid), "graph TD\n");
    }

    #[test]
    fn reads_nodes_leniently() {
        let inputs = vec![Input::new(
            "f.yaml",
            "apiVersion: premium.dev/v1alpha1\nkind: PremiumFeature\nmetadata: {name: a}\nspec: {port: nope, dependsOn: [{name: b, optional: true}, 5]}\n---\nbad: [\n",
        )];
        let (nodes, problems) = nodes_from_inputs(&inputs);
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].key, FeatureKey::new("default", "a"));
        assert_eq!(nodes[0].depends_on.len(), 1);
        assert!(nodes[0].depends_on[0].optional);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("f.yaml: document 2: not valid YAML"));
    }
}
