//! `premium-operator graph` on the portal examples, in each format.

use std::path::PathBuf;
use std::process::Command;

fn graph(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_premium-operator"))
        .arg("graph")
        .args(args)
        .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "graph panicked:\n{stderr}");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr,
    )
}

#[test]
fn text_shows_levels_and_dependencies() {
    let (code, out, _) = graph(&["examples/"]);
    assert_eq!(code, Some(0));
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
    let (_, explicit, _) = graph(&["examples/", "--format", "text"]);
    assert_eq!(explicit, out);
}

/// Every line of the DOT output is one of the statements the renderer writes, so a change that
/// breaks the syntax fails here even without Graphviz installed.
fn assert_dot_syntax(dot: &str) {
    let id = r#""(?:[^"\\]|\\.)*""#;
    let attrs = format!(r#"\[(?:[a-z]+=(?:{id}|[a-z,]+))(?:, [a-z]+=(?:{id}|[a-z,]+))*\]"#);
    let statements = [
        r"^digraph premium \{$".to_string(),
        r"^  rankdir=BT;$".to_string(),
        format!(r"^  node {attrs};$"),
        format!(r"^  subgraph {id} \{{$"),
        format!(r"^    label={id};$"),
        format!(r"^    {id} {attrs};$"),
        format!(r"^  {id} -> {id}(?: {attrs})?;$"),
        r"^  \}$".to_string(),
        r"^\}$".to_string(),
    ];
    let statements: Vec<regex::Regex> = statements
        .iter()
        .map(|s| regex::Regex::new(s).expect("valid regex"))
        .collect();
    for line in dot.lines() {
        assert!(
            statements.iter().any(|re| re.is_match(line)),
            "not a DOT statement the renderer writes: {line:?}\n{dot}"
        );
    }
    assert_eq!(dot.matches('{').count(), dot.matches('}').count(), "{dot}");
}

#[test]
fn dot_is_a_digraph_with_dashed_optional_edges() {
    let (code, out, _) = graph(&["examples/", "--format", "dot"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("digraph premium {\n"), "{out}");
    assert!(out.ends_with("}\n"), "{out}");
    assert_dot_syntax(&out);
    let edges: Vec<&str> = out.lines().filter(|l| l.contains(" -> ")).collect();
    assert_eq!(
        edges,
        [
            r#"  "portal/skill-exchange" -> "portal/catalog";"#,
            r#"  "portal/soundcheck" -> "portal/catalog";"#,
            r#"  "portal/aika" -> "portal/catalog";"#,
            r#"  "portal/aika" -> "portal/skill-exchange" [style=dashed, label="optional"];"#,
            r#"  "portal/aika" -> "portal/soundcheck";"#,
        ]
    );
    for (name, level) in [
        ("catalog", 0),
        ("skill-exchange", 1),
        ("soundcheck", 1),
        ("aika", 2),
    ] {
        let node = format!(r#"    "portal/{name}" [label="{name}\nlevel {level}"];"#);
        assert!(out.contains(&node), "{node} not in\n{out}");
    }
}

#[test]
fn mermaid_uses_dotted_arrows_for_optional_edges() {
    let (code, out, _) = graph(&["examples/", "--format", "mermaid"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("graph TD\n"), "{out}");
    // Nodes are numbered in display order: by level, then name.
    for (id, name, level) in [
        ("f0", "catalog", 0),
        ("f1", "skill-exchange", 1),
        ("f2", "soundcheck", 1),
        ("f3", "aika", 2),
    ] {
        let node = format!("    {id}[\"{name}<br/>level {level}\"]");
        assert!(out.contains(&node), "{node} not in\n{out}");
    }
    let edges: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("-->") || l.contains("-.->"))
        .collect();
    assert_eq!(
        edges,
        [
            "  f1 --> f0",
            "  f2 --> f0",
            "  f3 --> f0",
            "  f3 -.->|optional| f1",
            "  f3 --> f2",
        ]
    );
    assert_eq!(out.matches("subgraph").count(), 1);
    assert_eq!(out.matches("\n  end\n").count(), 1);
}

#[test]
fn cycles_are_flagged_in_every_format() {
    let file = "examples/invalid/14-dependency-cycle.yaml";
    let (code, text, _) = graph(&[file]);
    assert_eq!(code, Some(0), "drawing a cycle is not an error");
    assert!(
        text.contains(
            "  aika (on a cycle: aika -> soundcheck -> aika)\n    -> soundcheck (cycle)\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("dependency cycle in namespace invalid-examples: aika -> soundcheck -> aika"),
        "{text}"
    );
    let (_, dot, _) = graph(&[file, "--format", "dot"]);
    assert_dot_syntax(&dot);
    assert!(
        dot.contains(r#""invalid-examples/aika" -> "invalid-examples/soundcheck" [color=red];"#),
        "{dot}"
    );
    let (_, mermaid, _) = graph(&[file, "--format", "mermaid"]);
    assert!(mermaid.contains("class f0 cycle"), "{mermaid}");
    assert!(mermaid.contains("linkStyle 0,1 stroke:#d00"), "{mermaid}");
}

#[test]
fn missing_dependencies_are_drawn_as_missing() {
    let (code, dot, _) = graph(&["examples/30-aika.yaml", "--format", "dot"]);
    assert_eq!(code, Some(0));
    assert_dot_syntax(&dot);
    assert!(
        dot.contains(
            r#""portal/catalog" [label="catalog\nmissing", style="rounded,dashed", color=red];"#
        ),
        "{dot}"
    );
}

#[test]
fn unreadable_input_is_reported_on_stderr_naming_the_file() {
    let (code, out, err) = graph(&["examples/", "no-such-file.yaml"]);
    assert_eq!(code, Some(1));
    assert!(
        out.contains("aika (level 2)"),
        "the readable part is still drawn"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("no-such-file.yaml: cannot read"), "{err}");
}
