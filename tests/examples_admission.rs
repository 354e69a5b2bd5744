//! The examples meet a real API server as they say: every working example is accepted, and
//! every file of `examples/invalid/` is refused exactly when its `# admission:` line says
//! `refused` (the rest, `status` and `accepted`, pass admission: the operator reports them, or
//! nothing does). Server-side dry-run apply with strict field validation, as `kubectl apply`
//! validates, so nothing is persisted.
//!
//! Needs the local cluster (`make cluster-up`, or `make test` which starts it).

mod support;

use std::path::{Path, PathBuf};

use kube::CustomResourceExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::pinned_kind;
use premium_operator::api::{PremiumFeature, PremiumPolicy};
use premium_operator::cli::manifest::{parse_document, split_documents};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("readable folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn admission_label(path: &Path) -> String {
    std::fs::read_to_string(path)
        .expect("readable")
        .lines()
        .find_map(|l| l.strip_prefix("# admission: "))
        .map(|l| l.trim().to_string())
        .unwrap_or_default()
}

/// Dry-run applies every document of `text`, with the example namespaces mapped to test
/// namespaces. `Err` says why the API server (or, for a manifest without apiVersion/kind,
/// kubectl) refused.
async fn admit(
    client: &kube::Client,
    text: &str,
    namespaces: &[(&str, &str)],
) -> Result<(), String> {
    for raw in split_documents(text) {
        let mut value = parse_document(&raw).map_err(|e| format!("not YAML: {e}"))?;
        let api_version = value.get("apiVersion").and_then(Value::as_str);
        let kind = value.get("kind").and_then(Value::as_str);
        let (Some(api_version), Some(kind)) = (api_version, kind) else {
            return Err("kubectl refuses a manifest without apiVersion and kind".into());
        };
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, _) = pinned_kind(client, &gvk)
            .await
            .map_err(|e| format!("{api_version} {kind} is not served: {e}"))?;
        if kind == "Namespace" {
            // The examples' own namespaces are replaced by test namespaces.
            continue;
        }
        let written = value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let namespace = namespaces
            .iter()
            .find(|(from, _)| *from == written)
            .map_or(written.clone(), |(_, to)| (*to).to_string());
        if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("namespace".into(), Value::from(namespace.clone()));
        }
        let name = value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .ok_or("no metadata.name")?
            .to_string();
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &resource);
        let mut params = PatchParams::apply("premium-operator-tests").validation_strict();
        params.dry_run = true;
        api.patch(&name, &params, &Patch::Apply(&value))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[tokio::test]
async fn examples_meet_the_api_server_as_labelled() {
    let client = support::client().await;
    for crd in [PremiumFeature::crd(), PremiumPolicy::crd()] {
        support::install_crd(&client, &crd)
            .await
            .expect("the CRDs install");
    }
    let main = support::TestNamespace::new(&client, "examples")
        .await
        .expect("a test namespace");
    let shared = support::TestNamespace::new(&client, "examples-shared")
        .await
        .expect("a test namespace");
    // Longest first, so invalid-examples-shared is not taken for invalid-examples.
    let namespaces = [
        ("invalid-examples-shared", shared.name()),
        ("invalid-examples", main.name()),
        ("portal", main.name()),
    ];

    let mut wrong = Vec::new();
    for file in yaml_files(&repo().join("examples")) {
        let text = std::fs::read_to_string(&file).expect("readable");
        if let Err(e) = admit(&client, &text, &namespaces).await {
            wrong.push(format!(
                "{}: refused, but it is a working example: {e}",
                file.display()
            ));
        }
    }
    for file in yaml_files(&repo().join("examples/invalid")) {
        let label = admission_label(&file);
        let text = std::fs::read_to_string(&file).expect("readable");
        let outcome = admit(&client, &text, &namespaces).await;
        match (label.as_str(), outcome) {
            ("refused", Ok(())) => wrong.push(format!(
                "{}: says `admission: refused` but the API server accepted it",
                file.display()
            )),
            ("status" | "accepted", Err(e)) => wrong.push(format!(
                "{}: says `admission: {label}` but the API server refused it: {e}",
                file.display()
            )),
            ("refused" | "status" | "accepted", _) => {}
            (other, _) => wrong.push(format!(
                "{}: `# admission:` must be refused, status or accepted, got {other:?}",
                file.display()
            )),
        }
    }
    main.delete().await.expect("namespace deleted");
    shared.delete().await.expect("namespace deleted");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
