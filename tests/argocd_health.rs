//! The Argo CD health checks in docs/argocd/ (Lua), run in a real Lua interpreter against
//! sample objects in every phase, as Argo CD runs them: the object as the global `obj`, the
//! script's returned table read for `status` and `message`. Also checks that the ready-made
//! argocd-cm snippet carries exactly the same scripts.
//!
//! Argo CD runs gopher-lua (Lua 5.1); the scripts use nothing newer than 5.1.
//!
//! `health_of_live_objects` runs the scripts on what the real operator writes, so it needs the
//! local cluster (`make cluster-up`, or `make test`).

mod support;

use std::path::PathBuf;
use std::time::Duration;

use kube::api::Api;
use mlua::{Lua, Table, Value as LuaValue};
use premium_operator::api::{PremiumFeature, PremiumPolicy};
use serde_json::{Value, json};
use support::TestNamespace;
use support::operator::{Operator, apply_yaml, ensure_crds, feature_yaml, finish};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn script(kind: &str) -> String {
    let path = repo().join(format!("docs/argocd/premium.dev_{kind}.lua"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn to_lua(lua: &Lua, value: &Value) -> mlua::Result<LuaValue> {
    Ok(match value {
        Value::Null => LuaValue::Nil,
        Value::Bool(b) => LuaValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => LuaValue::Integer(i),
            None => LuaValue::Number(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => LuaValue::String(lua.create_string(s)?),
        Value::Array(items) => {
            let t = lua.create_table()?;
            for (i, item) in items.iter().enumerate() {
                t.set(i + 1, to_lua(lua, item)?)?;
            }
            LuaValue::Table(t)
        }
        Value::Object(map) => {
            let t = lua.create_table()?;
            for (k, v) in map {
                t.set(k.as_str(), to_lua(lua, v)?)?;
            }
            LuaValue::Table(t)
        }
    })
}

/// Runs the health check of `kind` on `object`: (status, message).
fn health(kind: &str, object: &Value) -> (String, String) {
    let lua = Lua::new();
    let obj = to_lua(&lua, object).expect("object converts");
    lua.globals().set("obj", obj).expect("obj set");
    let result: Table = lua
        .load(script(kind))
        .set_name(kind)
        .eval()
        .unwrap_or_else(|e| panic!("the {kind} health check failed on {object}: {e}"));
    let status: String = result.get("status").expect("hs.status is a string");
    let message: String = result.get("message").unwrap_or_default();
    assert!(
        [
            "Healthy",
            "Progressing",
            "Degraded",
            "Suspended",
            "Missing",
            "Unknown"
        ]
        .contains(&status.as_str()),
        "{status} is not an Argo CD health status"
    );
    (status, message)
}

fn cond(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": "2026-11-25T10:00:00Z", "observedGeneration": 3})
}

fn feature(phase: Option<&str>, conditions: Vec<Value>) -> Value {
    let mut f = json!({
        "apiVersion": "premium.dev/v1alpha1", "kind": "PremiumFeature",
        "metadata": {"name": "aika", "namespace": "portal", "generation": 3},
        "spec": {"image": "ghcr.io/stefanprodan/podinfo:6.7.1", "port": 9898},
    });
    if let Some(phase) = phase {
        f["status"] = json!({"observedGeneration": 3, "phase": phase, "conditions": conditions});
    }
    f
}

fn calm(ready: (&str, &str, &str)) -> Vec<Value> {
    vec![
        cond("Ready", ready.0, ready.1, ready.2),
        cond("Stalled", "False", "NotStalled", ""),
        cond("Degraded", "False", "Healthy", ""),
    ]
}

#[test]
fn feature_health_in_every_phase() {
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "no status yet",
            feature(None, vec![]),
            "Progressing",
            "observe the latest spec",
        ),
        (
            "Pending: waiting for a start-up slot",
            feature(
                Some("Pending"),
                calm((
                    "False",
                    "WaitingForStartupSlot",
                    "2 features of policy p are starting",
                )),
            ),
            "Progressing",
            "WaitingForStartupSlot: 2 features",
        ),
        (
            "WaitingForDependencies",
            feature(
                Some("WaitingForDependencies"),
                calm((
                    "False",
                    "DependencyNotReady",
                    "waiting for soundcheck (DependencyNotReady)",
                )),
            ),
            "Progressing",
            "DependencyNotReady: waiting for soundcheck",
        ),
        (
            "Starting",
            feature(
                Some("Starting"),
                calm(("False", "RollingOut", "rolling out: 0 of 2 replicas ready")),
            ),
            "Progressing",
            "RollingOut",
        ),
        (
            "Ready",
            feature(
                Some("Ready"),
                calm(("True", "Available", "2 of 2 replicas ready")),
            ),
            "Healthy",
            "Available: 2 of 2 replicas ready",
        ),
        (
            "Degraded but serving (optional dependency missing)",
            feature(
                Some("Degraded"),
                vec![
                    cond("Ready", "True", "Available", "1 of 1 replicas ready"),
                    cond("Stalled", "False", "NotStalled", ""),
                    cond(
                        "Degraded",
                        "True",
                        "OptionalDependencyUnavailable",
                        "running without optional dependency: skill-exchange",
                    ),
                ],
            ),
            "Healthy",
            "Ready, degraded: OptionalDependencyUnavailable",
        ),
        (
            "Degraded: lost availability",
            feature(
                Some("Degraded"),
                vec![
                    cond(
                        "Ready",
                        "False",
                        "Unavailable",
                        "0 of 2 replicas ready: the feature lost availability",
                    ),
                    cond("Stalled", "False", "NotStalled", ""),
                    cond(
                        "Degraded",
                        "True",
                        "Unavailable",
                        "0 of 2 replicas ready: the feature lost availability",
                    ),
                ],
            ),
            "Degraded",
            "Unavailable: 0 of 2",
        ),
        (
            "Failed: dependency cycle",
            feature(
                Some("Failed"),
                vec![
                    cond("Ready", "False", "DependencyCycle", "dependency cycle"),
                    cond(
                        "Stalled",
                        "True",
                        "DependencyCycle",
                        "dependency cycle: aika -> soundcheck -> aika; remove one of these dependencies",
                    ),
                ],
            ),
            "Degraded",
            "DependencyCycle: dependency cycle: aika -> soundcheck -> aika",
        ),
        (
            "Failed: start-up timeout",
            feature(
                Some("Failed"),
                vec![
                    cond("Ready", "False", "StartupTimeout", "not Ready within 2m"),
                    cond("Stalled", "True", "StartupTimeout", "not Ready within 2m"),
                ],
            ),
            "Degraded",
            "StartupTimeout",
        ),
        (
            "Suspended",
            feature(
                Some("Suspended"),
                calm((
                    "False",
                    "Suspended",
                    "the feature is suspended (spec.suspend)",
                )),
            ),
            "Suspended",
            "spec.suspend",
        ),
    ];
    for (what, object, want_status, want_message) in cases {
        let (status, message) = health("PremiumFeature", &object);
        assert_eq!(status, want_status, "{what}: {message}");
        assert!(
            message.contains(want_message),
            "{what}: message {message:?} lacks {want_message:?}"
        );
    }
}

#[test]
fn feature_health_waits_for_the_latest_generation() {
    // A Ready status from generation 3 says nothing about generation 4.
    let mut f = feature(Some("Ready"), calm(("True", "Available", "ok")));
    f["metadata"]["generation"] = json!(4);
    assert_eq!(health("PremiumFeature", &f).0, "Progressing");
    // No conditions at all (an operator that has only written the phase) is not Healthy.
    let f = feature(Some("Starting"), vec![]);
    assert_eq!(health("PremiumFeature", &f).0, "Progressing");
}

fn policy(conditions: Option<Vec<Value>>, observed: i64) -> Value {
    let mut p = json!({
        "apiVersion": "premium.dev/v1alpha1", "kind": "PremiumPolicy",
        "metadata": {"name": "premium-defaults", "namespace": "portal", "generation": 2},
        "spec": {"selector": {"matchLabels": {"tier": "premium"}}},
    });
    if let Some(conditions) = conditions {
        p["status"] =
            json!({"observedGeneration": observed, "matchedFeatures": 3, "conditions": conditions});
    }
    p
}

#[test]
fn policy_health() {
    let ok = cond(
        "Ready",
        "True",
        "ReconciliationSucceeded",
        "applies to 3 features",
    );
    let calm_budget = cond("BudgetExceeded", "False", "WithinBudget", "");
    let calm_conflict = cond("Conflicting", "False", "NoConflict", "");
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "no status",
            policy(None, 0),
            "Progressing",
            "observe the latest spec",
        ),
        (
            "stale",
            policy(Some(vec![ok.clone()]), 1),
            "Progressing",
            "",
        ),
        (
            "ready",
            policy(
                Some(vec![ok.clone(), calm_conflict.clone(), calm_budget.clone()]),
                2,
            ),
            "Healthy",
            "applies to 3 features",
        ),
        (
            "overridden",
            policy(
                Some(vec![
                    ok.clone(),
                    cond(
                        "Conflicting",
                        "True",
                        "PolicyOverridden",
                        "overridden by higher-priority policies: aika-strict",
                    ),
                    calm_budget,
                ]),
                2,
            ),
            "Healthy",
            "overridden by higher-priority policies",
        ),
        (
            "budget exceeded",
            policy(
                Some(vec![
                    cond("Ready", "False", "BudgetExceeded", "waiting: aika"),
                    calm_conflict,
                    cond(
                        "BudgetExceeded",
                        "True",
                        "BudgetExceeded",
                        "budget 2 cannot hold the selected features' minReplicas; waiting: aika",
                    ),
                ]),
                2,
            ),
            "Degraded",
            "budget 2 cannot hold",
        ),
    ];
    for (what, object, want_status, want_message) in cases {
        let (status, message) = health("PremiumPolicy", &object);
        assert_eq!(status, want_status, "{what}: {message}");
        assert!(
            message.contains(want_message),
            "{what}: {message:?} lacks {want_message:?}"
        );
    }
}

#[test]
fn argocd_cm_snippet_carries_the_same_scripts() {
    let text = std::fs::read_to_string(repo().join("docs/argocd/argocd-cm.yaml"))
        .expect("docs/argocd/argocd-cm.yaml");
    let cm: serde_yaml::Value = serde_yaml::from_str(&text).expect("valid YAML");
    assert_eq!(cm["kind"].as_str(), Some("ConfigMap"));
    assert_eq!(cm["metadata"]["name"].as_str(), Some("argocd-cm"));
    for kind in ["PremiumFeature", "PremiumPolicy"] {
        let key = format!("resource.customizations.health.premium.dev_{kind}");
        let embedded = cm["data"][key.as_str()]
            .as_str()
            .unwrap_or_else(|| panic!("argocd-cm has no {key}"));
        assert!(
            embedded == script(kind),
            "{key} in docs/argocd/argocd-cm.yaml differs from docs/argocd/premium.dev_{kind}.lua"
        );
    }
}

/// The same scripts on the objects the real operator writes, read back from the local
/// cluster: Ready features are Healthy, a feature behind a missing dependency Progressing, a
/// feature on a cycle Degraded, a suspended one Suspended, the policy Healthy.
#[tokio::test]
async fn health_of_live_objects() -> anyhow::Result<()> {
    let client = support::client().await;
    ensure_crds(&client).await?;
    let ns = TestNamespace::new(&client, "argocd-health").await?;
    let n = ns.name().to_string();
    let operator = Operator::start(Some(&n), &[])?;
    let manifests = [
        feature_yaml("base", &[], ""),
        feature_yaml("app", &["base"], ""),
        feature_yaml("lonely", &["ghost"], ""),
        feature_yaml("ping", &["pong"], ""),
        feature_yaml("pong", &["ping"], ""),
        feature_yaml("paused", &[], "  suspend: true"),
        "apiVersion: premium.dev/v1alpha1\nkind: PremiumPolicy\nmetadata: {name: defaults}\nspec: {selector: {matchLabels: {tier: premium}}}\n".to_string(),
    ]
    .concat();
    apply_yaml(&client, &n, &manifests).await?;
    let features: Api<PremiumFeature> = ns.api();
    let want = [
        ("base", "Healthy"),
        ("app", "Healthy"),
        ("lonely", "Progressing"),
        ("ping", "Degraded"),
        ("pong", "Degraded"),
        ("paused", "Suspended"),
    ];
    let outcome = support::eventually(
        "every feature to reach its expected Argo CD health",
        Duration::from_secs(90),
        || {
            let features = features.clone();
            async move {
                let mut wrong = Vec::new();
                for (name, expected) in want {
                    let object = serde_json::to_value(features.get(name).await?)?;
                    let (status, message) = health("PremiumFeature", &object);
                    if status != expected {
                        wrong.push(format!("{name}: {status} ({message}), want {expected}"));
                    }
                }
                if wrong.is_empty() {
                    Ok(Some(()))
                } else {
                    anyhow::bail!("{}", wrong.join("; "))
                }
            }
        },
    )
    .await;
    if let Err(e) = outcome {
        anyhow::bail!("{e:#}\noperator log:\n{}", operator.log_tail());
    }
    let policies: Api<PremiumPolicy> = ns.api();
    let outcome = support::eventually(
        "the policy to be Healthy for Argo CD",
        Duration::from_secs(30),
        || {
            let policies = policies.clone();
            async move {
                let policy = serde_json::to_value(policies.get("defaults").await?)?;
                let (status, message) = health("PremiumPolicy", &policy);
                anyhow::ensure!(status == "Healthy", "{status}: {message}");
                Ok(Some(()))
            }
        },
    )
    .await;
    if let Err(e) = outcome {
        let policy = policies.get("defaults").await?;
        anyhow::bail!(
            "{e:#}\npolicy: generation {:?}, status {:?}\noperator log:\n{}",
            policy.metadata.generation,
            policy.status,
            operator.log_tail()
        );
    }
    finish(ns, operator).await
}
