//! `crds/` and the chart's copy (charts/premium-operator/files/) hold exactly what
//! `premium-operator crd` prints.

use std::path::PathBuf;
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

/// The chart renders its CRDs from files/premium.dev_crds.yaml (templates/crds.yaml), and
/// has no crds/ folder: Helm would install that one first and then fail on the templated
/// copies, and never upgrade it.
#[test]
fn chart_crds_match_the_crd_command() {
    let chart = repo().join("charts/premium-operator");
    assert!(
        !chart.join("crds").exists(),
        "charts/premium-operator/crds/ must not exist: the chart templates its CRDs (crds.enabled)"
    );
    let path = chart.join("files/premium.dev_crds.yaml");
    let in_chart = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}; run `make crds`", path.display()));
    let printed = printed_crds();
    assert!(
        in_chart == printed,
        "charts/premium-operator/files/premium.dev_crds.yaml differs from `premium-operator crd`; run `make crds` (it refreshes the chart's copy too) and commit the result ({})",
        first_difference(&printed, &in_chart)
    );
}
