//! `crds/` (and the chart's `crds/`, when there is a chart) hold exactly what
//! `premium-operator crd` prints.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn printed_crds() -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_premium-operator"))
        .arg("crd")
        .output()
        .expect("the binary runs");
    assert!(
        output.status.success(),
        "premium-operator crd failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// The first line where two texts differ, for the failure message.
fn first_difference(expected: &str, actual: &str) -> String {
    let mut expected_lines = expected.lines();
    let mut actual_lines = actual.lines();
    let mut n = 1;
    loop {
        match (expected_lines.next(), actual_lines.next()) {
            (None, None) => return "they differ only in line endings".to_string(),
            (e, a) if e != a => {
                return format!(
                    "line {n}: `premium-operator crd` prints {:?}, the file has {:?}",
                    e.unwrap_or("<end>"),
                    a.unwrap_or("<end>")
                );
            }
            _ => n += 1,
        }
    }
}

#[test]
fn crds_folder_matches_the_crd_command() {
    let path = repo().join("crds/premium.dev_crds.yaml");
    let on_disk = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}; run `make crds`", path.display()));
    let printed = printed_crds();
    assert!(
        on_disk == printed,
        "crds/premium.dev_crds.yaml is out of date with the Rust types; run `make crds` and commit the result ({})",
        first_difference(&printed, &on_disk)
    );
}

/// The YAML documents of every file in `dir`, parsed, so the chart may split the CRDs into one
/// file each or keep them together.
fn documents_in(dir: &Path) -> Vec<serde_yaml::Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("readable folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable file");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", file.display()));
            if value != serde_yaml::Value::Null {
                docs.push(value);
            }
        }
    }
    docs
}

fn by_name(mut docs: Vec<serde_yaml::Value>) -> Vec<serde_yaml::Value> {
    docs.sort_by_key(|d| {
        d.get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_string()
    });
    docs
}

#[test]
fn chart_crds_match_the_crd_command() {
    let chart_crds = repo().join("charts/premium-operator/crds");
    if !chart_crds.is_dir() {
        // No chart yet; the test above covers crds/.
        return;
    }
    let printed: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&printed_crds())
        .map(|doc| serde::Deserialize::deserialize(doc).expect("the CRD command prints YAML"))
        .filter(|v: &serde_yaml::Value| *v != serde_yaml::Value::Null)
        .collect();
    let in_chart = documents_in(&chart_crds);
    assert!(
        by_name(in_chart) == by_name(printed),
        "charts/premium-operator/crds/ differs from `premium-operator crd`; run `make crds` (it must refresh the chart's copy too) and commit the result"
    );
}
