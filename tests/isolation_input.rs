//! One feature's input must not cost anyone anything: what one object can decide is refused at
//! admission (duplicate env names, the reserved `PREMIUM_<DEPENDENCY>_URL` names, strings of
//! unreasonable size), what needs more (two dependencies passed as one variable) stalls the
//! feature with a status that names both sides, without a retry loop, and every message the
//! operator writes stays small however large the user's string.
//!
//! Needs the local cluster (`make cluster-up`, or `make test` which starts it).

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{Patch, PatchParams};
use premium_operator::api::PremiumFeature;
use premium_operator::controller::apply::refused_for_its_content;
use serde_json::{Value, json};
use support::cluster::report;
use support::operator::{Operator, apply_yaml, ensure_crds, finish};
use support::{TestNamespace, client, eventually};

/// Per-message bound the status must keep (the operator's own is 1 KiB).
const MESSAGE_LIMIT: usize = 4 * 1024;

fn feature(name: &str, spec: Value) -> Value {
    let mut full = json!({
        "image": "ghcr.io/stefanprodan/podinfo:6.7.1",
        "port": 9898,
    });
    if let (Some(full), Value::Object(extra)) = (full.as_object_mut(), spec) {
        full.extend(extra);
    }
    json!({
        "apiVersion": "premium.dev/v1alpha1",
        "kind": "PremiumFeature",
        "metadata": {"name": name},
        "spec": full,
    })
}

/// Server-side dry-run apply with strict field validation, as `kubectl apply` does; `Err` is
/// the API server's refusal.
async fn admit(api: &Api<PremiumFeature>, object: &Value) -> Result<(), String> {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let mut params = PatchParams::apply("premium-operator-tests").validation_strict();
    params.dry_run = true;
    api.patch(name, &params, &Patch::Apply(object))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn condition<'a>(
    f: &'a PremiumFeature,
    ty: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    f.status.as_ref()?.conditions.iter().find(|c| c.type_ == ty)
}

/// What the operator has written and failed so far.
fn counters(operator: &Operator) -> anyhow::Result<(f64, f64)> {
    Ok((
        operator.writes()?,
        operator.metric("premium_reconcile_errors_total")?,
    ))
}

#[tokio::test]
async fn what_one_object_decides_is_refused_at_admission() -> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "input-admission").await?;
    let api: Api<PremiumFeature> = ns.api();
    let env = |entries: Value| json!({"env": entries});
    // (case, spec, what the refusal must say)
    let refused = [
        (
            "two env entries of one name",
            env(json!([{"name": "LOG", "value": "a"}, {"name": "LOG", "value": "b"}])),
            // Server-side apply says "duplicate entries for key [name=\"LOG\"]", a create
            // "Duplicate value".
            "duplicate",
        ),
        (
            "an env named like a dependency's URL",
            env(json!([{"name": "PREMIUM_CATALOG_URL", "value": "http://evil"}])),
            "PREMIUM_<DEPENDENCY>_URL are reserved",
        ),
        (
            "a 600 KB resource quantity",
            json!({"resources": {"requests": {"cpu": "9".repeat(600 * 1024)}}}),
            "spec.resources.requests.cpu: Too long",
        ),
        (
            // Longer keys never reach the schema: an apply's YAML parser refuses keys over
            // 1,024 characters on its own.
            "a 1,000-character resource name",
            json!({"resources": {"requests": {"c".repeat(1000): "1"}}}),
            "keys may be at most 317 characters long",
        ),
        (
            "an env value over 32 KiB",
            env(json!([{"name": "BIG", "value": "x".repeat(32 * 1024 + 1)}])),
            "spec.env[0].value: Too long",
        ),
        (
            "a 600 KB env name",
            env(json!([{"name": "N".repeat(600 * 1024), "value": "x"}])),
            "spec.env[0].name: Too long",
        ),
    ];
    let mut wrong = Vec::new();
    let mut passed = Vec::new();
    for (case, spec, says) in &refused {
        match admit(&api, &feature("aika", spec.clone())).await {
            Ok(()) => wrong.push(format!("{case}: accepted, expected a refusal")),
            Err(message) if !message.to_lowercase().contains(&says.to_lowercase()) => {
                wrong.push(format!(
                    "{case}: refused, but the message does not say {says:?}: {:.600}",
                    message
                ))
            }
            Err(_) => passed.push(*case),
        }
    }
    // What stays allowed: a value of exactly 32 KiB, lower-case or other PREMIUM_ names.
    let allowed = feature(
        "aika",
        env(json!([
            {"name": "BIG", "value": "x".repeat(32 * 1024)},
            {"name": "PREMIUM_MODE", "value": "on"},
            {"name": "premium_catalog_url", "value": "x"},
        ])),
    );
    if let Err(e) = admit(&api, &allowed).await {
        wrong.push(format!("a reasonable env was refused: {e:.600}"));
    }
    ns.delete().await?;
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    report(
        "isolation",
        "one object's env clash or oversized string",
        "pass",
        &format!(
            "refused at admission with the field and the reason: {}; a 32 KiB value and other PREMIUM_ names still admitted",
            passed.join(", ")
        ),
    );
    Ok(())
}

/// The API server answers the apply of a Deployment whose env lists one name twice with a 500
/// (server-side apply cannot merge it): that answer counts as a refusal of the object, never as
/// a server problem to retry.
#[tokio::test]
async fn the_servers_answer_to_duplicate_env_counts_as_a_refusal() -> anyhow::Result<()> {
    let client = client().await;
    let ns = TestNamespace::new(&client, "input-dup").await?;
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "dup"},
        "spec": {
            "selector": {"matchLabels": {"app": "dup"}},
            "template": {
                "metadata": {"labels": {"app": "dup"}},
                "spec": {"containers": [{
                    "name": "app",
                    "image": "ghcr.io/stefanprodan/podinfo:6.7.1",
                    "env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}],
                }]},
            },
        },
    });
    let api: Api<Deployment> = ns.api();
    let mut params = PatchParams::apply("premium-operator").force();
    params.dry_run = true;
    let answer = api.patch("dup", &params, &Patch::Apply(&deployment)).await;
    ns.delete().await?;
    match answer {
        Err(kube::Error::Api(status)) => {
            assert!(
                refused_for_its_content(&status),
                "the answer {} {:?} would be retried forever",
                status.code,
                status.message
            );
            report(
                "isolation",
                "Deployment with a duplicate env name: the API server's answer is a refusal",
                "pass",
                &format!("HTTP {}: {:.120}", status.code, status.message),
            );
        }
        other => panic!("expected the API server to refuse the Deployment, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn dependencies_passed_as_one_variable_stall_without_a_retry_loop() -> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "input-clash").await?;
    let operator = Operator::start(Some(ns.name()), &[])?;
    operator.wait_serving(Duration::from_secs(30)).await?;
    let other = format!("{}-other", ns.name());
    let aika = feature(
        "aika",
        json!({"dependsOn": [{"name": "catalog"}, {"name": "catalog", "namespace": other}]}),
    );
    let applied = Instant::now();
    apply_yaml(&client, ns.name(), &serde_yaml::to_string(&aika)?).await?;
    let features: Api<PremiumFeature> = ns.api();
    let stalled = eventually(
        "aika to report Stalled/InvalidSpec",
        Duration::from_secs(30),
        || {
            let features = features.clone();
            async move {
                let f = features.get("aika").await?;
                Ok(condition(&f, "Stalled")
                    .filter(|c| c.status == "True" && c.reason == "InvalidSpec")
                    .map(|c| c.message.clone()))
            }
        },
    )
    .await;
    let message = match stalled {
        Ok(m) => m,
        Err(e) => anyhow::bail!("{e:#}; operator log:\n{}", operator.log_tail()),
    };
    let took = applied.elapsed().as_secs_f64();
    assert!(
        message.contains(&format!("catalog and {other}/catalog"))
            && message.contains("PREMIUM_CATALOG_URL"),
        "the message names both sides: {message}"
    );
    // Nothing was applied for it, and nothing is retried: longer than the 5 s error requeue.
    let deployments: Api<Deployment> = ns.api();
    assert!(deployments.get_opt("aika").await?.is_none());
    let (writes_before, errors_before) = counters(&operator)?;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let (writes_after, errors_after) = counters(&operator)?;
    assert_eq!(
        (errors_before, errors_after),
        (0.0, 0.0),
        "reconcile errors; log:\n{}",
        operator.log_tail()
    );
    assert_eq!(
        writes_after, writes_before,
        "writes went on after the stall was reported"
    );
    report(
        "isolation",
        "two dependencies passed as one env var (catalog + other/catalog)",
        "pass",
        &format!(
            "Stalled/InvalidSpec naming both {took:.1} s after apply; nothing applied; reconcile errors 0, writes in the next 7 s 0"
        ),
    );
    finish(ns, operator).await
}

#[tokio::test]
async fn a_huge_user_string_gives_a_bounded_status_written_once() -> anyhow::Result<()> {
    let client = client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "input-huge").await?;
    let operator = Operator::start(Some(ns.name()), &[])?;
    operator.wait_serving(Duration::from_secs(30)).await?;
    // As much malformed text as the CRD admits: 64 requests and 64 limits, each a long
    // resource name with a quantity of the longest admitted length that is no quantity.
    let entries = |tag: &str| -> serde_json::Map<String, Value> {
        (0..64)
            .map(|i| {
                let name = format!("example.com/{tag}{i:02}-{}", "r".repeat(290));
                (name, Value::from(format!("{i:02}{}", "z".repeat(62))))
            })
            .collect()
    };
    let huge = feature(
        "aika",
        json!({"resources": {"requests": entries("req"), "limits": entries("lim")}}),
    );
    let user_bytes = serde_json::to_vec(&huge["spec"]["resources"])?.len();
    let applied = Instant::now();
    apply_yaml(&client, ns.name(), &serde_yaml::to_string(&huge)?).await?;
    let features: Api<PremiumFeature> = ns.api();
    let flagged = eventually("aika to report Stalled", Duration::from_secs(30), || {
        let features = features.clone();
        async move {
            let f = features.get("aika").await?;
            Ok(condition(&f, "Stalled")
                .is_some_and(|c| c.status == "True")
                .then_some(f))
        }
    })
    .await;
    let f = match flagged {
        Ok(f) => f,
        Err(e) => anyhow::bail!("{e:#}; operator log:\n{}", operator.log_tail()),
    };
    let took = applied.elapsed().as_secs_f64();
    let status = f.status.clone().unwrap_or_default();
    let longest = status
        .conditions
        .iter()
        .map(|c| c.message.len())
        .chain(status.blocked_by.iter().map(|b| b.message.len()))
        .max()
        .unwrap_or(0);
    let status_bytes = serde_json::to_vec(&status)?.len();
    assert!(
        longest < MESSAGE_LIMIT,
        "a message of {longest} bytes (status {status_bytes} bytes) from {user_bytes} bytes of input"
    );
    let stalled = condition(&f, "Stalled").map(|c| c.message.clone());
    assert!(
        stalled
            .as_deref()
            .is_some_and(|m| m.contains("is not a quantity")),
        "the message still says what is wrong: {stalled:?}"
    );
    let (writes_before, errors_before) = counters(&operator)?;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let (writes_after, errors_after) = counters(&operator)?;
    assert_eq!(
        (writes_after - writes_before, errors_after - errors_before),
        (0.0, 0.0),
        "the status is resent or the reconcile fails; log:\n{}",
        operator.log_tail()
    );
    report(
        "isolation",
        "a user's huge string reaching a status message",
        "pass",
        &format!(
            "{user_bytes} bytes of malformed quantities: longest message {longest} bytes, whole status {status_bytes} bytes, Stalled {took:.1} s after apply; writes in the next 7 s 0"
        ),
    );
    finish(ns, operator).await
}
