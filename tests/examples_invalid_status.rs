//! The mistakes admission cannot catch are reported in status: every file of
//! `examples/invalid/` marked `# admission: status` is applied with the operator running, and the
//! message its `# status:` line names must appear in a feature's or policy's status.

mod support;

use std::path::PathBuf;

use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt};
use premium_operator::api::{PremiumFeature, PremiumPolicy};
use support::operator::{Operator, apply_yaml_labelled, ensure_crds};
use support::{DEFAULT_TIMEOUT, TestNamespace, client, eventually};

fn line<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
}

/// Every message a person would read in the namespace's statuses.
fn messages(features: &[PremiumFeature], policies: &[PremiumPolicy]) -> Vec<String> {
    let mut out = Vec::new();
    for f in features {
        if let Some(s) = &f.status {
            out.extend(s.conditions.iter().map(|c| c.message.clone()));
            out.extend(s.blocked_by.iter().map(|b| b.message.clone()));
        }
    }
    for p in policies {
        if let Some(s) = &p.status {
            out.extend(s.conditions.iter().map(|c| c.message.clone()));
        }
    }
    out
}

#[tokio::test]
async fn mistakes_admission_cannot_see_are_reported_in_status() -> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    let files: Vec<(PathBuf, String)> = files
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(&p).ok().map(|t| (p, t)))
        .filter(|(_, t)| line(t, "# admission:") == Some("status"))
        .collect();
    assert!(
        files.len() >= 5,
        "expected the status-class examples, found {}",
        files.len()
    );

    let main = TestNamespace::new(&client, "invalid").await?;
    let shared = TestNamespace::new(&client, "invalid-shared").await?;
    // One cluster-wide instance, limited by label to this test's objects.
    let run = format!("run-{}", main.name());
    let operator = Operator::start(
        None,
        &["--selector", &format!("premium.dev/test-run={run}")],
    )?;
    let map = |s: &str| {
        s.replace("invalid-examples-shared", shared.name())
            .replace("invalid-examples", main.name())
    };
    for (path, text) in &files {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let expected = map(
            line(text, "# status:").unwrap_or_else(|| panic!("{name} has no `# status:` line"))
        );
        // Label every object so the operator sees it; namespaces mapped to the test's.
        apply_yaml_labelled(
            &client,
            main.name(),
            &map(text),
            &[("premium.dev/test-run", &run)],
        )
        .await?;
        let found = eventually(
            &format!("{name}: status to say {expected:?}"),
            DEFAULT_TIMEOUT,
            || {
                let client = client.clone();
                let (a, b) = (main.name().to_string(), shared.name().to_string());
                let expected = expected.clone();
                async move {
                    let mut features = Vec::new();
                    let mut policies = Vec::new();
                    for ns in [a, b] {
                        features.extend(
                            Api::<PremiumFeature>::namespaced(client.clone(), &ns)
                                .list(&ListParams::default())
                                .await?
                                .items,
                        );
                        policies.extend(
                            Api::<PremiumPolicy>::namespaced(client.clone(), &ns)
                                .list(&ListParams::default())
                                .await?
                                .items,
                        );
                    }
                    Ok(messages(&features, &policies)
                        .into_iter()
                        .find(|m| m.contains(&expected)))
                }
            },
        )
        .await;
        if let Err(e) = found {
            anyhow::bail!("{e:#}\noperator log:\n{}", operator.log_tail());
        }
        // Clean up before the next file, while the operator runs (features carry a finalizer).
        for ns in [main.name(), shared.name()] {
            let features: Api<PremiumFeature> = Api::namespaced(client.clone(), ns);
            let policies: Api<PremiumPolicy> = Api::namespaced(client.clone(), ns);
            features
                .delete_collection(&DeleteParams::default(), &ListParams::default())
                .await?;
            policies
                .delete_collection(&DeleteParams::default(), &ListParams::default())
                .await?;
        }
        eventually("the file's features to be gone", DEFAULT_TIMEOUT, || {
            let client = client.clone();
            let (a, b) = (main.name().to_string(), shared.name().to_string());
            async move {
                let mut left = Vec::new();
                for ns in [a, b] {
                    left.extend(
                        Api::<PremiumFeature>::namespaced(client.clone(), &ns)
                            .list(&ListParams::default())
                            .await?
                            .items
                            .into_iter()
                            .map(|f| f.name_any()),
                    );
                }
                Ok(left.is_empty().then_some(()))
            }
        })
        .await?;
    }
    drop(operator);
    main.delete().await?;
    shared.delete().await
}
