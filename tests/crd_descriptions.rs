//! What `kubectl explain` and `kubectl get` show comes from the CRDs in crds/: every
//! description reads as paragraphs, and the printer columns and condition lists follow the
//! kstatus conventions Flux users know.
//!
//! kubectl explain keeps every line break of a description and wraps the text again at its own
//! width, so a doc comment's source line breaks would print as lines broken after a few words;
//! and it prints a list field's item description right after the field's own, so the two must
//! not both be there.

use std::path::PathBuf;

use serde_json::Value;

fn crds() -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crds/premium.dev_crds.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("crds/ is YAML"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn crd(kind: &str) -> Value {
    crds()
        .into_iter()
        .find(|c| c["spec"]["names"]["kind"] == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind} in crds/"))
}

/// Every (path, node) of a JSON tree that has a string `description`.
fn described<'a>(node: &'a Value, path: String, out: &mut Vec<(String, &'a Value)>) {
    match node {
        Value::Object(map) => {
            if map.get("description").is_some_and(Value::is_string) {
                out.push((path.clone(), node));
            }
            for (key, child) in map {
                described(child, format!("{path}.{key}"), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                described(child, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// What is wrong with one description as kubectl explain would print it, if anything.
fn layout_problem(text: &str) -> Option<&'static str> {
    if text.trim() != text {
        return Some("leading or trailing whitespace");
    }
    if text.contains("\n\n\n") {
        return Some("more than one blank line between paragraphs");
    }
    if text.contains("  ") {
        return Some("a run of spaces (a joined line kept its indentation)");
    }
    // A single line break is allowed only before a list item.
    let lines: Vec<&str> = text.split('\n').collect();
    for pair in lines.windows(2) {
        let (before, after) = (pair[0], pair[1]);
        let new_item = after.starts_with("- ")
            || after.starts_with("* ")
            || after
                .split_once(". ")
                .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !before.is_empty() && !after.is_empty() && !new_item {
            return Some("a line break inside a paragraph");
        }
    }
    None
}

#[test]
fn every_description_in_crds_reads_as_paragraphs() {
    let mut wrong = Vec::new();
    let mut count = 0;
    for crd in crds() {
        let kind = crd["spec"]["names"]["kind"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        let mut nodes = Vec::new();
        described(&crd, kind, &mut nodes);
        for (path, node) in nodes {
            count += 1;
            let text = node["description"].as_str().unwrap_or_default();
            if let Some(problem) = layout_problem(text) {
                wrong.push(format!("{path}: {problem}: {text:?}"));
            }
            let item_text = node.pointer("/items/description");
            if node["type"] == "array" && item_text.is_some() {
                wrong.push(format!(
                    "{path}: the list and its items both have a description; kubectl explain runs them together ({item_text:?})"
                ));
            }
        }
    }
    assert!(count > 100, "only {count} descriptions found in crds/");
    assert!(
        wrong.is_empty(),
        "{} descriptions in crds/ would print badly in kubectl explain (doc comments are joined into paragraphs by src/api/describe.rs; run `make crds`):\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn the_layout_check_catches_what_kubectl_would_print_badly() {
    assert_eq!(layout_problem("One line. Two sentences."), None);
    assert_eq!(layout_problem("First.\n\nSecond."), None);
    assert_eq!(layout_problem("Steps:\n- one\n- two\n10. ten"), None);
    assert!(layout_problem("Features that must be Ready before\nthis one starts.").is_some());
    assert!(layout_problem("Text \n").is_some());
    assert!(layout_problem("joined  twice").is_some());
}

fn columns(kind: &str) -> Vec<(String, String)> {
    crd(kind)["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .expect("printer columns")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_string(),
                c["jsonPath"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

const READY_STATUS: &str = r#".status.conditions[?(@.type=="Ready")].status"#;
const READY_MESSAGE: &str = r#".status.conditions[?(@.type=="Ready")].message"#;

#[test]
fn kubectl_get_shows_the_ready_condition_and_its_message() {
    for kind in ["PremiumFeature", "PremiumPolicy"] {
        let cols = columns(kind);
        let find = |name: &str| {
            cols.iter()
                .find(|(n, _)| n == name)
                .map(|(_, p)| p.as_str())
        };
        assert_eq!(find("Ready"), Some(READY_STATUS), "{kind}: {cols:?}");
        assert_eq!(find("Status"), Some(READY_MESSAGE), "{kind}: {cols:?}");
        // The message is the widest column: last, so the others stay aligned.
        assert_eq!(
            cols.last().map(|(n, _)| n.as_str()),
            Some("Status"),
            "{kind}"
        );
    }
    let feature = columns("PremiumFeature");
    let names: Vec<&str> = feature.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "Phase",
            "Ready",
            "Ready-Replicas",
            "Replicas",
            "Blocked-By",
            "Level",
            "Age",
            "Status"
        ]
    );
    assert!(feature.contains(&("Ready-Replicas".into(), ".status.readyReplicas".into())));
}

#[test]
fn conditions_are_a_list_map_keyed_by_type() {
    for kind in ["PremiumFeature", "PremiumPolicy"] {
        let conditions = crd(kind)
            .pointer(
                "/spec/versions/0/schema/openAPIV3Schema/properties/status/properties/conditions",
            )
            .cloned()
            .unwrap_or_else(|| panic!("{kind} has no status.conditions"));
        assert_eq!(conditions["x-kubernetes-list-type"], "map", "{kind}");
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"]),
            "{kind}"
        );
        let required = conditions["items"]["required"].as_array().cloned();
        assert!(
            required.is_some_and(|r| r.contains(&Value::from("type"))),
            "{kind}: a list-map key must be required in the items"
        );
    }
}
