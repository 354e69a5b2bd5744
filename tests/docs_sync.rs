//! docs/api.md is exactly what `premium-operator api-docs` generates from the CRD schema, and
//! the README links it. Regenerate with `cargo run -- api-docs > docs/api.md`.

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn api_reference_is_generated_from_the_crds() {
    let output = Command::new(env!("CARGO_BIN_EXE_premium-operator"))
        .arg("api-docs")
        .output()
        .expect("the binary runs");
    assert!(
        output.status.success(),
        "premium-operator api-docs failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let generated = String::from_utf8(output.stdout).expect("UTF-8");
    let file = std::fs::read_to_string(repo().join("docs/api.md")).unwrap_or_default();
    if generated != file {
        let line = generated
            .lines()
            .zip(file.lines().chain(std::iter::repeat("<end>")))
            .position(|(g, f)| g != f)
            .map_or(generated.lines().count() + 1, |i| i + 1);
        panic!(
            "docs/api.md is out of date (first difference at line {line}); regenerate it with \
             `cargo run -- api-docs > docs/api.md`"
        );
    }
}

#[test]
fn docs_link_each_other() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    for link in ["docs/api.md", "docs/gitops.md", "charts/premium-operator"] {
        assert!(readme.contains(link), "README.md does not link {link}");
    }
}
