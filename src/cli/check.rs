//! `premium-operator check`: offline validation of manifests for GitOps CI.
//!
//! Each PremiumFeature and PremiumPolicy is checked as the API server would at admission
//! (structural schema, CEL rules, metadata), then the whole set is checked as the operator would
//! judge it (dependency cycles, missing and not-permitted dependencies, infeasible budgets,
//! duplicates). Findings are printed one per line, in input order, to stdout:
//!
//! ```text
//! FILE: Kind/namespace/name: message
//! FILE: Kind/namespace/name: warning: message
//! FILE: document N: message          (the document has no usable name, or is not YAML)
//! FILE: message                      (the file cannot be read)
//! ```
//!
//! followed by the start-up plan of each namespace and a summary line
//! (`2 errors, 1 warning (8 files, 9 objects)`). The exit code is 1 when there is an error.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::LazyLock;

use kube::CustomResourceExt;
use kube::core::cel::{CompiledSchema, ErrorKind, Validator, compile_schema};
use regex::Regex;
use serde_json::Value;

use super::manifest::{self, Diagnostic, DocKind, Input, Object, Severity, type_name};
use super::schema::{MAX_ERRORS_PER_OBJECT, SchemaValidator};
use super::suggest::Suggester;
use crate::api::duration::parse_duration;
use crate::api::{PremiumFeature, PremiumPolicy};
use crate::core::budget::{BudgetAllocation, PoolRequest, allocate};
use crate::core::graph::{FeatureKey, FeatureNode, GraphAnalysis, analyze, path_string};
use crate::core::policy::{self, decide, selector_matches};
use crate::core::settings;

/// Runs `check` on files and folders and prints the report.
pub fn main(paths: &[PathBuf]) -> ExitCode {
    let inputs = manifest::read_inputs(paths);
    let report = check_inputs(&inputs);
    let code = if report.errors() > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    };
    super::output::emit_report(&report.render(), code)
}

/// The outcome of a check: findings in input order and the start-up plan per namespace.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub diagnostics: Vec<Diagnostic>,
    /// Namespace → batches of feature names by start-up level.
    pub plans: BTreeMap<String, Plan>,
    pub files: usize,
    pub objects: usize,
}

/// The start-up plan of one namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// (level, names sorted).
    pub levels: Vec<(u32, Vec<String>)>,
    /// Features that cannot start, each as `name (why)`: on or behind a dependency cycle, a
    /// required dependency missing or not permitted, or requiring such a feature.
    pub blocked: Vec<String>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.count(Severity::Error)
    }

    pub fn warnings(&self) -> usize {
        self.count(Severity::Warning)
    }

    fn count(&self, severity: Severity) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == severity)
            .count()
    }

    /// The report as printed: findings, plans, summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for d in &self.diagnostics {
            out.push_str(&d.to_string());
            out.push('\n');
        }
        if !self.diagnostics.is_empty() {
            out.push('\n');
        }
        for (namespace, plan) in &self.plans {
            out.push_str(&format!("Start-up plan (namespace {namespace}):\n"));
            for (level, names) in &plan.levels {
                out.push_str(&format!("  level {level}: {}\n", names.join(", ")));
            }
            if !plan.blocked.is_empty() {
                out.push_str(&format!("  cannot start: {}\n", plan.blocked.join(", ")));
            }
        }
        if self.plans.is_empty() {
            out.push_str("No PremiumFeature found; there is no start-up plan.\n");
        }
        out.push('\n');
        out.push_str(&format!(
            "{}, {} ({}, {})\n",
            plural(self.errors(), "error"),
            plural(self.warnings(), "warning"),
            plural(self.files, "file"),
            plural(self.objects, "object"),
        ));
        out
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// The validators of one kind: its CRD schema, structurally and as CEL rules.
struct KindValidator {
    schema: SchemaValidator,
    cel: CompiledSchema,
}

impl KindValidator {
    fn new(
        crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    ) -> Self {
        let schema = crd
            .spec
            .versions
            .first()
            .and_then(|v| v.schema.as_ref())
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or(Value::Null);
        let cel = compile_schema(&schema);
        Self {
            schema: SchemaValidator::new(schema),
            cel,
        }
    }
}

/// A validated (or at least identified) feature, for the checks across objects.
struct FeatureEntry<'a> {
    object: &'a Object,
    key: FeatureKey,
    labels: BTreeMap<String, String>,
    typed: Option<PremiumFeature>,
    /// Whether the object itself already has errors (schema, CEL, metadata).
    invalid: bool,
}

struct PolicyEntry<'a> {
    object: &'a Object,
    typed: PremiumPolicy,
}

/// Checks already-read inputs. Pure apart from CPU: no I/O, never panics.
pub fn check_inputs(inputs: &[Input]) -> Report {
    let loaded = manifest::load(inputs);
    let mut diagnostics = loaded.diagnostics;
    let features_validator = KindValidator::new(PremiumFeature::crd());
    let policies_validator = KindValidator::new(PremiumPolicy::crd());
    let cel = Validator::new();

    let mut features: Vec<FeatureEntry<'_>> = Vec::new();
    let mut policies: Vec<PolicyEntry<'_>> = Vec::new();

    for object in &loaded.objects {
        let validator = match object.kind {
            DocKind::Feature => &features_validator,
            DocKind::Policy => &policies_validator,
            _ => continue,
        };
        let mut report = |severity: Severity, message: String| {
            diagnostics.push(Diagnostic {
                location: object.location.clone(),
                subject: Some(object.subject()),
                severity,
                message: if object.name().is_none() {
                    format!("{}: {message}", object.kind_name())
                } else {
                    message
                },
            })
        };
        let findings = validate_object(object, validator, &cel);
        let valid = findings.iter().all(|(s, _)| *s != Severity::Error);
        for (severity, message) in findings {
            report(severity, message);
        }
        match object.kind {
            DocKind::Feature => {
                let Some(name) = object.name() else { continue };
                let typed = if valid {
                    typed::<PremiumFeature>(object, &mut report)
                } else {
                    None
                };
                features.push(FeatureEntry {
                    object,
                    key: FeatureKey::new(object.namespace(), name),
                    labels: object.labels(),
                    typed,
                    invalid: !valid,
                });
            }
            DocKind::Policy => {
                if valid
                    && object.name().is_some()
                    && let Some(typed) = typed::<PremiumPolicy>(object, &mut report)
                {
                    policies.push(PolicyEntry { object, typed });
                }
            }
            _ => {}
        }
    }

    diagnostics.extend(duplicates(&loaded.objects));
    let (analysis, nodes, found) = semantic_checks(&features, &policies);
    diagnostics.extend(found);

    // Stable sort: input order, and within one document the order the checks ran.
    diagnostics.sort_by(|a, b| a.location.cmp(&b.location));

    Report {
        diagnostics,
        plans: plans(&analysis, &nodes),
        files: loaded.files,
        objects: loaded.objects.len(),
    }
}

/// Deserializes a validated object into its Rust type. After validation this should not fail;
/// if it does, the reason is reported rather than hidden.
fn typed<T: serde::de::DeserializeOwned>(
    object: &Object,
    report: &mut impl FnMut(Severity, String),
) -> Option<T> {
    let mut value = object.value.clone();
    if let Value::Object(map) = &mut value {
        map.remove("status");
        // As applied: without a namespace, a manifest lands in `default`. The shared rules
        // (selection, grants) compare the namespaces of typed objects.
        if let Some(Value::Object(metadata)) = map.get_mut("metadata") {
            metadata.insert("namespace".into(), Value::from(object.namespace()));
        }
    }
    match serde_json::from_value(value) {
        Ok(typed) => Some(typed),
        Err(e) => {
            report(
                Severity::Error,
                format!("cannot be read as a {}: {e}", object.kind_name()),
            );
            None
        }
    }
}

/// Admission-equivalent checks of one object: metadata, schema, then CEL rules, then what the
/// operator needs beyond the schema. Returns the findings in that order.
fn validate_object(
    object: &Object,
    validator: &KindValidator,
    cel: &Validator,
) -> Vec<(Severity, String)> {
    let mut findings: Vec<(Severity, String)> = Vec::new();
    let error = |m: String| (Severity::Error, m);

    findings.extend(check_metadata(object).into_iter().map(error));

    let mut value = object.value.clone();
    if let Value::Object(map) = &mut value
        && map.remove("status").is_some()
    {
        findings.push((
            Severity::Warning,
            "status is ignored when applied; the operator writes it. Remove it from the manifest"
                .to_string(),
        ));
    }

    let schema_errors = validator.schema.validate_object(&value);
    let structural_ok = schema_errors.is_empty();
    let total = schema_errors.len();
    for e in schema_errors.into_iter().take(MAX_ERRORS_PER_OBJECT) {
        findings.push(error(e.to_string()));
    }
    if total > MAX_ERRORS_PER_OBJECT {
        findings.push(error(format!(
            "{} more schema errors not shown; fix the ones above first",
            total - MAX_ERRORS_PER_OBJECT
        )));
    }

    // CEL rules assume the types the schema promises; the API server only gets to them on a
    // structurally valid object, and so do we.
    if structural_ok && findings.iter().all(|(s, _)| *s != Severity::Error) {
        if let Err(errors) = cel.validate_compiled(&validator.cel, &value, None) {
            for e in errors.iter() {
                let path = e.field_path.trim_start_matches('.');
                let located = |m: &str| {
                    if path.is_empty() {
                        m.to_string()
                    } else {
                        format!("{path}: {m}")
                    }
                };
                match e.kind {
                    ErrorKind::ValidationFailure => findings.push(error(located(&e.message))),
                    _ => findings.push((
                        Severity::Warning,
                        located(&format!(
                            "the CRD rule `{}` could not be evaluated offline ({}); the API server will still evaluate it",
                            e.rule, e.message
                        )),
                    )),
                }
            }
        }
        findings.extend(operator_checks(object, &value).into_iter().map(error));
    }
    findings
}

static LABEL_NAME: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$").ok());
static DNS_SUBDOMAIN: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$").ok()
});
static DNS_LABEL: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(crate::api::DNS_LABEL_PATTERN).ok());

fn matches(re: &LazyLock<Option<Regex>>, s: &str) -> bool {
    re.as_ref().is_some_and(|re| re.is_match(s))
}

/// Fields of ObjectMeta; anything else under `metadata` is refused by the API server.
const OBJECT_META_FIELDS: [&str; 15] = [
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// A DNS label close to `name`, to suggest.
fn suggest_label(name: &str) -> String {
    let mut s: String = name
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    s.truncate(63);
    s.trim_matches('-').to_string()
}

/// Metadata as the API server and the operator need it: a name that is a DNS label (it also
/// names the feature's Deployment, Service and HPA, and a Service name must start with a
/// letter), a namespace that is one, and string labels and annotations with valid keys.
fn check_metadata(object: &Object) -> Vec<String> {
    let kind = object.kind_name();
    let metadata = match object.value.get("metadata") {
        None => {
            return vec![format!(
                "metadata is missing; give the {kind} a metadata.name (and usually a metadata.namespace)"
            )];
        }
        Some(Value::Object(metadata)) => metadata,
        Some(other) => {
            return vec![format!(
                "metadata must be a mapping, got {}",
                type_name(other)
            )];
        }
    };
    let mut errors: Vec<String> = metadata
        .keys()
        .filter(|key| !OBJECT_META_FIELDS.contains(&key.as_str()))
        .map(|key| format!(
            "unknown field metadata.{key}: the API server refuses it; the usual metadata fields are name, namespace, labels and annotations"
        ))
        .collect();
    errors.extend(name_problem(object, metadata.get("name")));
    errors.extend(namespace_problem(metadata.get("namespace")));
    for field in ["labels", "annotations"] {
        errors.extend(string_map_problems(field, metadata.get(field)));
    }
    errors
}

/// A name that is a DNS label (and, for a feature, starts with a letter).
fn name_problem(object: &Object, name: Option<&Value>) -> Option<String> {
    let kind = object.kind_name();
    let name = match name {
        None | Some(Value::Null) => {
            return Some(format!(
                "metadata.name is missing; every {kind} needs a name"
            ));
        }
        Some(Value::String(name)) => name,
        Some(other) => {
            return Some(format!(
                "metadata.name must be a string, got {}",
                type_name(other)
            ));
        }
    };
    if name.is_empty() {
        Some(format!("metadata.name is empty; every {kind} needs a name"))
    } else if name.len() > 63 || !matches(&DNS_LABEL, name) {
        Some(format!(
            "metadata.name {name:?} is not a valid name: use at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit (a DNS label), such as {:?}",
            suggest_label(name)
        ))
    } else if object.kind == DocKind::Feature && !name.starts_with(|c: char| c.is_ascii_lowercase())
    {
        Some(format!(
            "metadata.name {name:?} must start with a letter: it also names the feature's Service, and Service names start with a letter"
        ))
    } else {
        None
    }
}

fn namespace_problem(namespace: Option<&Value>) -> Option<String> {
    match namespace {
        None | Some(Value::Null) => None,
        Some(Value::String(ns)) if ns.is_empty() || ns.len() > 63 || !matches(&DNS_LABEL, ns) => {
            Some(format!(
                "metadata.namespace {ns:?} is not a valid namespace name: use at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit"
            ))
        }
        Some(Value::String(_)) => None,
        Some(other) => Some(format!(
            "metadata.namespace must be a string, got {}",
            type_name(other)
        )),
    }
}

/// Labels or annotations: a mapping of valid keys to strings (label values valid too).
fn string_map_problems(field: &str, map: Option<&Value>) -> Vec<String> {
    let map = match map {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return vec![format!(
                "metadata.{field} must be a mapping of names to strings, got {}",
                type_name(other)
            )];
        }
    };
    let mut errors = Vec::new();
    for (key, value) in map {
        if let Some(problem) = label_key_problem(key) {
            errors.push(format!("metadata.{field}: key {key:?} {problem}"));
        }
        match value {
            Value::String(v)
                if field == "labels"
                    && (v.len() > 63 || !(v.is_empty() || matches(&LABEL_NAME, v))) =>
            {
                errors.push(format!(
                    "metadata.labels.{key}: value {v:?} is not a valid label value: use at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
                ));
            }
            Value::String(_) => {}
            other => errors.push(format!(
                "metadata.{field}.{key}: must be a string, got {}; put the value in quotes",
                type_name(other)
            )),
        }
    }
    errors
}

/// Why `key` is not a valid label or annotation key (`[prefix/]name`), if it is not.
fn label_key_problem(key: &str) -> Option<&'static str> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && (prefix.is_empty() || prefix.len() > 253 || !matches(&DNS_SUBDOMAIN, prefix))
    {
        return Some("has an invalid prefix: it must be a DNS subdomain such as premium.dev");
    }
    if name.is_empty() || name.len() > 63 || !matches(&LABEL_NAME, name) {
        return Some(
            "is not a valid key: use at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit, with an optional prefix/",
        );
    }
    None
}

/// The bench reads quantities with this name; their one grammar is [`crate::api::quantity`].
pub use crate::api::quantity::value as quantity_value;

/// What the schema cannot say but the operator needs: durations it can use, resource
/// quantities the Deployment will accept.
fn operator_checks(object: &Object, value: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let durations: &[&str] = match object.kind {
        DocKind::Feature => &["spec.startupTimeout"],
        DocKind::Policy => &[
            "spec.outlierDetection.interval",
            "spec.outlierDetection.baseEjectionTime",
            "spec.timeouts.connect",
            "spec.timeouts.request",
            "spec.retries.perTryTimeout",
            "spec.startup.timeout",
            "spec.recovery.restartAfter",
        ],
        _ => &[],
    };
    for path in durations {
        let field = path
            .split('.')
            .try_fold(value, |v, key| v.get(key))
            .and_then(Value::as_str);
        if let Some(s) = field
            && parse_duration(s).is_err()
        {
            errors.push(format!(
                "{path}: {s:?} is longer than the operator supports (10 years); use a shorter duration"
            ));
        }
    }
    if object.kind == DocKind::Policy {
        errors.extend(selector_problems(value));
    }
    if object.kind == DocKind::Feature {
        errors.extend(resource_problems(value));
    }
    errors
}

/// The operator's own rule on `spec.resources` (see [`settings::resource_problems`]), on the
/// amounts as written (a number counts as its decimal text, as the API server reads it).
fn resource_problems(value: &Value) -> Vec<String> {
    let resources = value.pointer("/spec/resources");
    let amounts: Vec<(&str, &str, String)> = ["requests", "limits"]
        .into_iter()
        .flat_map(|section| {
            let map = resources
                .and_then(|r| r.get(section))
                .and_then(Value::as_object);
            map.into_iter().flatten().map(move |(name, q)| {
                let text = match q {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (section, name.as_str(), text)
            })
        })
        .collect();
    settings::resource_problems(amounts.iter().map(|(s, n, t)| (*s, *n, t.as_str())))
}

/// Label selector expressions the API server accepts (the schema has no enum) but that select
/// nothing: an unknown operator, `In`/`NotIn` without values, `Exists`/`DoesNotExist` with some.
fn selector_problems(value: &Value) -> Vec<String> {
    let expressions = value
        .pointer("/spec/selector/matchExpressions")
        .and_then(Value::as_array);
    let mut errors = Vec::new();
    for (i, expr) in expressions.into_iter().flatten().enumerate() {
        let path = format!("spec.selector.matchExpressions[{i}]");
        let operator = expr
            .get("operator")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let values = expr
            .get("values")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        match operator {
            "In" | "NotIn" if values == 0 => errors.push(format!(
                "{path}: operator {operator} needs at least one entry in values; as written it selects nothing"
            )),
            "Exists" | "DoesNotExist" if values > 0 => errors.push(format!(
                "{path}: operator {operator} takes no values; remove them"
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                let hint = ["In", "NotIn", "Exists", "DoesNotExist"]
                    .iter()
                    .find(|o| o.eq_ignore_ascii_case(other))
                    .map(|o| format!(" (did you mean {o}?)"))
                    .unwrap_or_default();
                errors.push(format!(
                    "{path}.operator: {other:?} is not an operator{hint}; use In, NotIn, Exists or DoesNotExist (the policy would select nothing)"
                ));
            }
        }
    }
    errors
}

/// The same kind, namespace and name twice: the later one would overwrite the earlier.
fn duplicates(objects: &[Object]) -> Vec<Diagnostic> {
    let mut seen: BTreeMap<(String, String, String, String), &Object> = BTreeMap::new();
    let mut found = Vec::new();
    for object in objects {
        let Some(name) = object.name() else { continue };
        let (group, namespace) = match &object.kind {
            DocKind::Feature | DocKind::Policy => (
                crate::api::GROUP.to_string(),
                object.namespace().to_string(),
            ),
            DocKind::Other { api_version, .. } => (
                api_version
                    .rsplit_once('/')
                    .map_or("", |(g, _)| g)
                    .to_string(),
                object
                    .namespace_as_written()
                    .unwrap_or_default()
                    .to_string(),
            ),
            DocKind::List => continue,
        };
        let key = (
            group,
            object.kind_name().to_string(),
            namespace,
            name.to_string(),
        );
        match seen.get(&key) {
            Some(first) => found.push(Diagnostic {
                location: object.location.clone(),
                subject: Some(match &object.kind {
                    DocKind::Other { .. } if key.2.is_empty() => {
                        format!("{}/{name}", object.kind_name())
                    }
                    DocKind::Other { .. } => format!("{}/{}/{name}", object.kind_name(), key.2),
                    _ => object.subject(),
                }),
                severity: Severity::Error,
                message: format!(
                    "defined twice (also in {} {}); the one applied last would silently win. Keep one",
                    first.location.file,
                    first.location.document_label()
                ),
            }),
            None => {
                seen.insert(key, object);
            }
        }
    }
    found
}

/// Checks across objects: the dependency graph (cycles, missing, not permitted) and budgets.
fn semantic_checks(
    features: &[FeatureEntry<'_>],
    policies: &[PolicyEntry<'_>],
) -> (GraphAnalysis, Vec<FeatureNode>, Vec<Diagnostic>) {
    let mut found = Vec::new();
    // The first of duplicate features counts; the others are reported as duplicates.
    let mut by_key: BTreeMap<&FeatureKey, &FeatureEntry<'_>> = BTreeMap::new();
    for f in features {
        by_key.entry(&f.key).or_insert(f);
    }
    let nodes: Vec<FeatureNode> = by_key
        .values()
        .map(|f| FeatureNode {
            key: f.key.clone(),
            depends_on: f.object.dependencies(),
        })
        .collect();
    let typed_policies: Vec<PremiumPolicy> = policies.iter().map(|p| p.typed.clone()).collect();
    let permitted = |dependent: &FeatureKey, target: &FeatureKey| {
        by_key.get(target).is_some_and(|t| {
            policy::permitted(&typed_policies, target, &t.labels, &dependent.namespace)
        })
    };
    let analysis = analyze(&nodes, permitted);
    let mut suggestions = FeatureSuggestions::new(by_key.keys().copied());
    for f in by_key.values() {
        let mut report = |severity: Severity, message: String| {
            found.push(Diagnostic {
                location: f.object.location.clone(),
                subject: Some(f.object.subject()),
                severity,
                message,
            })
        };
        for (severity, message) in feature_findings(f, &analysis, &mut suggestions) {
            report(severity, message);
        }
    }
    found.extend(budget_checks(&by_key, policies, &analysis));
    (analysis, nodes, found)
}

/// What the operator would report on one feature as the whole set stands: a cycle, a spec it
/// refuses, missing and not-permitted dependencies.
fn feature_findings(
    f: &FeatureEntry<'_>,
    analysis: &GraphAnalysis,
    suggestions: &mut FeatureSuggestions<'_>,
) -> Vec<(Severity, String)> {
    let ns = f.key.namespace.as_str();
    let mut found = Vec::new();
    // A feature naming itself is already refused by the CRD rule; a one-step cycle on an
    // invalid feature would only repeat that.
    if let Some(path) = analysis.cycle(&f.key)
        && !(f.invalid && path.len() == 2)
    {
        found.push((Severity::Error, format!(
            "dependency cycle {}: no feature on it can start (the operator reports Stalled, reason DependencyCycle); remove one dependsOn entry on the cycle (optional ones count too)",
            path_string(path, ns)
        )));
    }
    // The operator's own rule (it stalls such a feature, reason InvalidSpec).
    if let Some(typed) = &f.typed
        && let Err(message) = crate::core::build::env_clashes(ns, &typed.spec)
    {
        found.push((
            Severity::Error,
            format!("{message} (the operator reports Stalled, reason InvalidSpec)"),
        ));
    }
    let edges = f.object.dependencies();
    for target in analysis.missing(&f.key) {
        let required = edges.iter().any(|e| &e.target == target && !e.optional);
        let hint = suggestions
            .closest(target)
            .map(|k| format!(" Did you mean {}?", k.relative_to(ns)))
            .unwrap_or_default();
        found.push(missing(&target.relative_to(ns), required, &hint));
    }
    for target in analysis.not_permitted(&f.key) {
        found.push((Severity::Error, format!(
            "depends on {target} in another namespace, but no PremiumPolicy in namespace {} that selects {} lists {ns} in exposeTo.namespaces (the operator reports DependencyNotPermitted); add {ns} to such a policy's exposeTo.namespaces or remove the dependency",
            target.namespace, target.name
        )));
    }
    found
}

fn missing(shown: &str, required: bool, hint: &str) -> (Severity, String) {
    if required {
        (
            Severity::Error,
            format!(
                "depends on {shown}, which is not among the checked manifests: the operator would hold this feature at 0 replicas (DependencyNotFound). Add the {shown} PremiumFeature, fix the name, or mark the dependency optional.{hint}"
            ),
        )
    } else {
        (
            Severity::Warning,
            format!(
                "optional dependency {shown} is not among the checked manifests: the feature would start without it after its start-up timeout and report Degraded.{hint}"
            ),
        )
    }
}

/// "Did you mean" for missing dependencies: a feature of the same name in another namespace,
/// else the closest name in the missing one's namespace. Each missing key is answered once.
struct FeatureSuggestions<'a> {
    by_name: BTreeMap<&'a str, &'a FeatureKey>,
    by_namespace: BTreeMap<&'a str, Vec<&'a FeatureKey>>,
    suggesters: BTreeMap<&'a str, Suggester<'a>>,
}

impl<'a> FeatureSuggestions<'a> {
    fn new(keys: impl Iterator<Item = &'a FeatureKey>) -> Self {
        let mut by_name = BTreeMap::new();
        let mut by_namespace: BTreeMap<&str, Vec<&FeatureKey>> = BTreeMap::new();
        for key in keys {
            by_name.entry(key.name.as_str()).or_insert(key);
            by_namespace
                .entry(key.namespace.as_str())
                .or_default()
                .push(key);
        }
        Self {
            by_name,
            by_namespace,
            suggesters: BTreeMap::new(),
        }
    }

    fn closest(&mut self, missing: &FeatureKey) -> Option<&'a FeatureKey> {
        if let Some(other_namespace) = self.by_name.get(missing.name.as_str()) {
            return Some(other_namespace);
        }
        let (&namespace, keys) = self
            .by_namespace
            .get_key_value(missing.namespace.as_str())?;
        let suggester = self
            .suggesters
            .entry(namespace)
            .or_insert_with(|| Suggester::new(keys.iter().map(|k| k.name.as_str())));
        let name = suggester.suggest(&missing.name)?;
        keys.iter().copied().find(|k| k.name == name)
    }
}

/// A policy whose budget cannot hold the minimums of the features it selects, and policies
/// that select nothing.
fn budget_checks(
    features: &BTreeMap<&FeatureKey, &FeatureEntry<'_>>,
    policies: &[PolicyEntry<'_>],
    analysis: &GraphAnalysis,
) -> Vec<Diagnostic> {
    let all: Vec<PremiumPolicy> = policies.iter().map(|p| p.typed.clone()).collect();
    let typed: Vec<&PremiumFeature> = features.values().filter_map(|f| f.typed.as_ref()).collect();
    let mut found = Vec::new();
    for policy in policies {
        let ns = policy.object.namespace();
        let mut report = |severity: Severity, message: String| {
            found.push(Diagnostic {
                location: policy.object.location.clone(),
                subject: Some(policy.object.subject()),
                severity,
                message,
            })
        };
        let selects_any = features.values().any(|f| {
            f.key.namespace == ns && selector_matches(&policy.typed.spec.selector, &f.labels)
        });
        if !selects_any {
            report(
                Severity::Warning,
                format!(
                    "selects no PremiumFeature of namespace {ns} among the checked manifests; check spec.selector against the features' labels"
                ),
            );
            continue;
        }
        let Some(budget) = decide::budget(&policy.typed) else {
            continue;
        };
        // The operator's own requests; manifests on disk run nowhere, so rank alone orders
        // admission.
        let requests = decide::budget_requests(
            &policy.typed,
            typed.iter().copied(),
            &all,
            |key| analysis.level(key),
            |_| false,
        );
        let allocation = allocate(Some(budget), &requests);
        if allocation.exceeded {
            report(Severity::Error, infeasible(budget, &requests, &allocation));
        }
    }
    found
}

fn infeasible(budget: u32, requests: &[PoolRequest], allocation: &BudgetAllocation) -> String {
    let min_sum: u64 = requests.iter().map(|r| u64::from(r.min)).sum();
    let mins: Vec<String> = requests
        .iter()
        .map(|r| format!("{} {}", r.name, r.min))
        .collect();
    format!(
        "infeasible budget: pool.budget.maxReplicas is {budget}, but the {} selected features need at least {min_sum} replicas together (minReplicas: {}); {} would wait (BudgetExceeded). Raise pool.budget.maxReplicas to at least {min_sum}, lower minReplicas, or narrow spec.selector",
        requests.len(),
        mins.join(", "),
        allocation.waiting.join(", ")
    )
}

/// Start-up batches per namespace, and the features that cannot start with why: on or behind a
/// cycle, a required dependency missing or not permitted, or waiting for such a feature.
/// The features that cannot start, each with why.
fn blocked<'a>(
    analysis: &GraphAnalysis,
    nodes: &'a [FeatureNode],
) -> BTreeMap<&'a FeatureKey, String> {
    let mut reasons: BTreeMap<&FeatureKey, String> = BTreeMap::new();
    for node in nodes {
        if let Some(reason) = own_block(analysis, node) {
            reasons.insert(&node.key, reason);
        }
    }
    // Whoever requires a feature that cannot start cannot start either.
    let mut required_by: BTreeMap<&FeatureKey, Vec<&FeatureKey>> = BTreeMap::new();
    for node in nodes {
        for edge in node.depends_on.iter().filter(|e| !e.optional) {
            required_by.entry(&edge.target).or_default().push(&node.key);
        }
    }
    let mut queue: Vec<&FeatureKey> = reasons.keys().copied().collect();
    while let Some(key) = queue.pop() {
        for dependent in required_by.get(key).into_iter().flatten() {
            if !reasons.contains_key(dependent) {
                reasons.insert(
                    dependent,
                    format!("waits for {}", key.relative_to(&dependent.namespace)),
                );
                queue.push(dependent);
            }
        }
    }
    // What is left without a level is behind a cycle through an optional dependency.
    for node in nodes {
        if analysis.level(&node.key).is_none() && !reasons.contains_key(&node.key) {
            reasons.insert(&node.key, "behind a dependency cycle".to_string());
        }
    }
    reasons
}

/// Why a feature cannot start on its own account: on a cycle, or a required dependency missing
/// or not permitted.
fn own_block(analysis: &GraphAnalysis, node: &FeatureNode) -> Option<String> {
    let key = &node.key;
    let required = |targets: &[FeatureKey]| -> Vec<String> {
        let mut names: Vec<String> = targets
            .iter()
            .filter(|t| {
                node.depends_on
                    .iter()
                    .any(|e| &e.target == *t && !e.optional)
            })
            .map(|t| t.relative_to(&key.namespace))
            .collect();
        names.dedup();
        names
    };
    let missing = required(analysis.missing(key));
    let not_permitted = required(analysis.not_permitted(key));
    if analysis.on_cycle(key) {
        Some("on a dependency cycle".to_string())
    } else if !missing.is_empty() {
        Some(format!("missing {}", missing.join(", ")))
    } else if !not_permitted.is_empty() {
        Some(format!("not permitted to use {}", not_permitted.join(", ")))
    } else {
        None
    }
}

fn plans(analysis: &GraphAnalysis, nodes: &[FeatureNode]) -> BTreeMap<String, Plan> {
    let reasons = blocked(analysis, nodes);
    let mut plans: BTreeMap<String, Plan> = BTreeMap::new();
    for batch in analysis.plan() {
        let mut by_ns: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for key in batch.iter().filter(|k| !reasons.contains_key(k)) {
            by_ns
                .entry(key.namespace.as_str())
                .or_default()
                .push(key.name.clone());
        }
        let level = batch.first().and_then(|k| analysis.level(k)).unwrap_or(0);
        for (ns, names) in by_ns {
            plans
                .entry(ns.to_string())
                .or_default()
                .levels
                .push((level, names));
        }
    }
    for (key, reason) in reasons {
        plans
            .entry(key.namespace.clone())
            .or_default()
            .blocked
            .push(format!("{} ({reason})", key.name));
    }
    plans
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FEATURE: &str = "apiVersion: premium.dev/v1alpha1
kind: PremiumFeature
metadata: {name: NAME, namespace: portal, labels: {tier: premium}}
spec:
  image: ghcr.io/stefanprodan/podinfo:6.7.1
  port: 9898
";

    fn feature(name: &str, deps: &str) -> String {
        let mut s = FEATURE.replace("NAME", name);
        if !deps.is_empty() {
            s.push_str("  dependsOn:\n");
            for dep in deps.split(',') {
                match dep.strip_suffix('?') {
                    Some(d) => s.push_str(&format!("  - {{name: {d}, optional: true}}\n")),
                    None => s.push_str(&format!("  - name: {dep}\n")),
                }
            }
        }
        s
    }

    fn run(files: &[(&str, &str)]) -> Report {
        let inputs: Vec<Input> = files.iter().map(|(p, t)| Input::new(*p, *t)).collect();
        check_inputs(&inputs)
    }

    fn lines(report: &Report) -> Vec<String> {
        report.diagnostics.iter().map(ToString::to_string).collect()
    }

    fn assert_one_error(report: &Report, needle: &str) {
        let l = lines(report);
        assert_eq!(report.errors(), 1, "{l:#?}");
        assert!(
            l.iter().any(|x| x.contains(needle)),
            "{needle:?} not in {l:#?}"
        );
    }

    #[test]
    fn a_valid_set_plans_by_level() {
        let text = [
            feature("catalog", ""),
            feature("soundcheck", "catalog"),
            feature("skill-exchange", "catalog"),
            feature("aika", "catalog,soundcheck,skill-exchange?"),
        ]
        .join("---\n");
        let report = run(&[("a.yaml", &text)]);
        assert_eq!(report.errors(), 0, "{:#?}", lines(&report));
        let plan = &report.plans["portal"];
        assert_eq!(
            plan.levels,
            vec![
                (0, vec!["catalog".to_string()]),
                (1, vec!["skill-exchange".into(), "soundcheck".into()]),
                (2, vec!["aika".into()]),
            ]
        );
        let out = report.render();
        assert!(out.contains("Start-up plan (namespace portal):\n  level 0: catalog\n  level 1: skill-exchange, soundcheck\n  level 2: aika\n"), "{out}");
        assert!(
            out.ends_with("0 errors, 0 warnings (1 file, 4 objects)\n"),
            "{out}"
        );
    }

    #[test]
    fn cycles_are_errors_with_their_path() {
        let text = [feature("a", "b"), feature("b", "a"), feature("c", "a")].join("---\n");
        let report = run(&[("c.yaml", &text)]);
        let l = lines(&report);
        assert_eq!(report.errors(), 2, "{l:#?}");
        assert!(
            l[0].starts_with("c.yaml: PremiumFeature/portal/a: dependency cycle a -> b -> a"),
            "{l:#?}"
        );
        assert!(l[1].contains("PremiumFeature/portal/b: dependency cycle b -> a -> b"));
        assert_eq!(
            report.plans["portal"].blocked,
            [
                "a (on a dependency cycle)",
                "b (on a dependency cycle)",
                "c (waits for a)"
            ]
        );
        // Behind the cycle through an optional dependency only.
        let text = [feature("a", "b"), feature("b", "a"), feature("e", "a?")].join("---\n");
        let report = run(&[("e.yaml", &text)]);
        assert!(
            report.plans["portal"]
                .blocked
                .contains(&"e (behind a dependency cycle)".to_string()),
            "{:?}",
            report.plans["portal"].blocked
        );
    }

    #[test]
    fn self_dependency_through_an_explicit_namespace_is_a_cycle() {
        let text = FEATURE.replace("NAME", "a") + "  dependsOn: [{name: a, namespace: portal}]\n";
        assert_one_error(&run(&[("s.yaml", &text)]), "dependency cycle a -> a");
    }

    #[test]
    fn missing_required_is_an_error_and_optional_a_warning() {
        let report = run(&[("m.yaml", &feature("a", "catalg,extra?"))]);
        assert_one_error(
            &report,
            "depends on catalg, which is not among the checked manifests",
        );
        assert_eq!(report.warnings(), 1);
        let report = run(&[(
            "m.yaml",
            &[feature("catalog", ""), feature("a", "catalg")].join("---\n"),
        )]);
        assert_one_error(&report, "Did you mean catalog?");
    }

    #[test]
    fn features_that_cannot_start_are_named_with_why() {
        let text = [
            feature("a", "gone"),
            feature("b", "a"),
            feature("c", "a?"),
            feature("d", ""),
        ]
        .join("---\n");
        let report = run(&[("p.yaml", &text)]);
        let plan = &report.plans["portal"];
        assert_eq!(
            plan.levels,
            vec![(0, vec!["d".to_string()]), (1, vec!["c".to_string()])]
        );
        assert_eq!(plan.blocked, ["a (missing gone)", "b (waits for a)"]);
        assert!(
            report
                .render()
                .contains("  cannot start: a (missing gone), b (waits for a)\n")
        );
    }

    #[test]
    fn cross_namespace_needs_a_grant() {
        let dep = FEATURE.replace("NAME", "a").replace("portal", "team-a")
            + "  dependsOn: [{name: catalog, namespace: portal}]\n";
        let target = feature("catalog", "");
        let report = run(&[("x.yaml", &[dep.clone(), target.clone()].join("---\n"))]);
        assert_one_error(
            &report,
            "no PremiumPolicy in namespace portal that selects catalog lists team-a",
        );
        let grant = "apiVersion: premium.dev/v1alpha1
kind: PremiumPolicy
metadata: {name: share, namespace: portal}
spec:
  selector: {matchLabels: {tier: premium}}
  exposeTo: {namespaces: [team-a]}
";
        let report = run(&[("x.yaml", &[dep, target, grant.to_string()].join("---\n"))]);
        assert_eq!(report.errors(), 0, "{:#?}", lines(&report));
        assert_eq!(
            report.plans["team-a"].levels,
            vec![(1, vec!["a".to_string()])]
        );
    }

    #[test]
    fn infeasible_budget_names_policy_budget_and_sum() {
        let f = |name: &str, min: u32| {
            FEATURE.replace("NAME", name)
                + &format!("  pool: {{minReplicas: {min}, maxReplicas: 10}}\n")
        };
        let policy = "apiVersion: premium.dev/v1alpha1
kind: PremiumPolicy
metadata: {name: tight, namespace: portal}
spec:
  selector: {matchLabels: {tier: premium}}
  pool: {budget: {maxReplicas: 5}}
";
        let text = [f("a", 3), f("b", 4), policy.to_string()].join("---\n");
        let report = run(&[("b.yaml", &text)]);
        assert_one_error(
            &report,
            "PremiumPolicy/portal/tight: infeasible budget: pool.budget.maxReplicas is 5, but the 2 selected features need at least 7 replicas",
        );
    }

    /// As the operator shares a budget: a suspended feature claims no share of it, so only the
    /// minimums of the others count. (Before, `check` counted it and reported a budget the
    /// operator holds as infeasible.)
    #[test]
    fn suspended_features_claim_no_budget() {
        let f = |name: &str, min: u32| {
            FEATURE.replace("NAME", name)
                + &format!("  pool: {{minReplicas: {min}, maxReplicas: 10}}\n")
        };
        let policy = "apiVersion: premium.dev/v1alpha1
kind: PremiumPolicy
metadata: {name: tight, namespace: portal}
spec:
  selector: {matchLabels: {tier: premium}}
  pool: {budget: {maxReplicas: 5}}
";
        let suspended = f("b", 4) + "  suspend: true\n";
        let text = [f("a", 3), suspended, policy.to_string()].join("---\n");
        let report = run(&[("b.yaml", &text)]);
        assert_eq!(report.errors(), 0, "{:#?}", lines(&report));
    }

    #[test]
    fn selector_expressions_must_make_sense() {
        let policy = |expr: &str| {
            format!(
                "apiVersion: premium.dev/v1alpha1\nkind: PremiumPolicy\nmetadata: {{name: p, namespace: portal}}\nspec: {{selector: {{matchExpressions: [{expr}]}}}}\n"
            )
        };
        let f = feature("a", "");
        for (expr, needle) in [
            (
                "{key: tier, operator: in, values: [premium]}",
                "is not an operator (did you mean In?)",
            ),
            (
                "{key: tier, operator: In}",
                "needs at least one entry in values",
            ),
            (
                "{key: tier, operator: Exists, values: [x]}",
                "takes no values",
            ),
        ] {
            let text = [f.clone(), policy(expr)].join("---\n");
            assert_one_error(&run(&[("s.yaml", &text)]), needle);
        }
        let text = [f, policy("{key: tier, operator: In, values: [premium]}")].join("---\n");
        assert_eq!(run(&[("s.yaml", &text)]).errors(), 0);
    }

    #[test]
    fn policy_selecting_nothing_is_a_warning() {
        let policy = "apiVersion: premium.dev/v1alpha1
kind: PremiumPolicy
metadata: {name: p, namespace: portal}
spec: {selector: {matchLabels: {tier: nope}}}
";
        let report = run(&[("p.yaml", policy)]);
        assert_eq!((report.errors(), report.warnings()), (0, 1));
    }

    #[test]
    fn duplicates_are_errors() {
        let text = [feature("a", ""), feature("a", "")].join("---\n");
        let report = run(&[("d.yaml", &text)]);
        assert_one_error(
            &report,
            "PremiumFeature/portal/a: defined twice (also in d.yaml document 1)",
        );
        let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n";
        let report = run(&[("a.yaml", cm), ("b.yaml", cm)]);
        assert_one_error(&report, "b.yaml: ConfigMap/x: defined twice");
    }

    #[test]
    fn default_namespace_when_missing() {
        let text = FEATURE
            .replace("NAME", "a")
            .replace(", namespace: portal", "");
        let report = run(&[("n.yaml", &text)]);
        assert_eq!(report.errors(), 0, "{:#?}", lines(&report));
        assert!(report.plans.contains_key("default"));
    }

    #[test]
    fn schema_and_cel_errors() {
        let cases = [
            (
                "  pool: {minReplicas: 5, maxReplicas: 2}\n",
                "spec.pool: minReplicas must not be greater than maxReplicas",
            ),
            (
                "  dependsOn: [{name: a}]\n",
                "a feature cannot depend on itself",
            ),
            (
                "  dependsOn: [{name: b}, {name: b}]\n",
                "each dependency may be listed only once",
            ),
            (
                "  startupTimeout: 5 minutes\n",
                "invalid duration \"5 minutes\"",
            ),
            ("  foo: 1\n", "unknown field spec.foo"),
            (
                "  dependsOn: 5\n",
                "spec.dependsOn: must be a list, got an integer 5",
            ),
        ];
        for (extra, needle) in cases {
            let text = FEATURE.replace("NAME", "a") + extra;
            let text = if extra.contains("name: b") {
                text + "---\n" + &feature("b", "")
            } else {
                text
            };
            assert_one_error(&run(&[("f.yaml", &text)]), needle);
        }
        let text = FEATURE.replace("NAME", "a").replace("9898", "15001");
        assert_one_error(
            &run(&[("f.yaml", &text)]),
            "spec.port: ports 15000-15199 are reserved",
        );
        let text = FEATURE.replace("NAME", "a").replace("9898", "\"abc\"");
        assert_one_error(
            &run(&[("f.yaml", &text)]),
            "spec.port: must be an integer, got a string \"abc\"",
        );
    }

    #[test]
    fn metadata_checks() {
        let report = run(&[("f.yaml", &FEATURE.replace("NAME", "Aika"))]);
        assert_one_error(&report, "metadata.name \"Aika\" is not a valid name");
        assert!(lines(&report)[0].contains("such as \"aika\""));
        assert_one_error(
            &run(&[("f.yaml", &FEATURE.replace("NAME", "9lives"))]),
            "must start with a letter",
        );
        assert_one_error(
            &run(&[("f.yaml", &FEATURE.replace("name: NAME, ", ""))]),
            "f.yaml: document 1: PremiumFeature: metadata.name is missing",
        );
        assert_one_error(
            &run(&[(
                "f.yaml",
                &FEATURE
                    .replace("NAME", "a")
                    .replace("tier: premium", "tier: 1"),
            )]),
            "metadata.labels.tier: must be a string",
        );
        assert_one_error(
            &run(&[(
                "f.yaml",
                &FEATURE
                    .replace("NAME", "a")
                    .replace("tier: premium", "\"bad key!\": x"),
            )]),
            "is not a valid key",
        );
        assert_one_error(
            &run(&[(
                "f.yaml",
                &FEATURE
                    .replace("NAME", "a")
                    .replace("namespace: portal", "namespace: Portal"),
            )]),
            "metadata.namespace \"Portal\" is not a valid namespace name",
        );
    }

    #[test]
    fn resources_must_be_quantities() {
        let text = FEATURE.replace("NAME", "a")
            + "  resources: {requests: {cpu: lots, memory: 64Mi}, limits: {memory: 32Mi}}\n";
        let report = run(&[("q.yaml", &text)]);
        let l = lines(&report);
        assert_eq!(report.errors(), 2, "{l:#?}");
        assert!(l.iter().any(|x| x.contains("\"lots\" is not a quantity")));
        assert!(
            l.iter()
                .any(|x| x.contains("requests.memory is greater than"))
        );
    }

    /// `check` and the operator read a manifest's quantities with one rule: on each amount
    /// they give the same verdict, in the same words. (Before, `check` refused 250u, which the
    /// API server takes, and the operator took 1kM, which it refuses.)
    #[test]
    fn check_and_the_operator_agree_on_quantities() {
        for (resources, refused) in [
            ("{requests: {cpu: lots}}", true),
            ("{requests: {cpu: 1kM}}", true),
            ("{requests: {cpu: \"-1\"}}", true),
            ("{requests: {memory: 1Gi}, limits: {memory: 1000Mi}}", true),
            ("{requests: {cpu: 100m}, limits: {cpu: \"0.1\"}}", false),
            ("{requests: {cpu: 250u, memory: \"1e9\"}}", false),
        ] {
            let text = FEATURE.replace("NAME", "a") + "  resources: " + resources + "\n";
            let report = run(&[("q.yaml", &text)]);
            let from_check: Vec<String> = report
                .diagnostics
                .iter()
                .map(|d| d.message.clone())
                .collect();
            let typed: PremiumFeature = serde_yaml::from_str(&text).unwrap();
            let from_operator: Vec<String> = settings::check_resources(&typed)
                .err()
                .into_iter()
                .collect();
            assert_eq!(from_check, from_operator, "{resources}");
            assert_eq!(!from_check.is_empty(), refused, "{resources}");
        }
    }

    #[test]
    fn dependencies_passed_as_one_variable_are_an_error() {
        let text = FEATURE.replace("NAME", "a")
            + "  dependsOn: [{name: catalog}, {name: catalog, namespace: other}]\n---\n"
            + &feature("catalog", "")
            + "---\n"
            + &feature("catalog", "").replace("namespace: portal", "namespace: other");
        let report = run(&[("env.yaml", &text)]);
        let l = lines(&report);
        assert!(
            l.iter().any(|x| x.contains(
                "dependencies catalog and other/catalog would both be passed as PREMIUM_CATALOG_URL"
            ) && x.contains("InvalidSpec")),
            "{l:#?}"
        );
        // What one object decides is found as the API server finds it.
        let env = |entries: &str| FEATURE.replace("NAME", "a") + "  env: " + entries + "\n";
        assert_one_error(
            &run(&[(
                "e.yaml",
                &env("[{name: LOG, value: a}, {name: LOG, value: b}]"),
            )]),
            "spec.env lists \"LOG\" more than once",
        );
        assert_one_error(
            &run(&[("e.yaml", &env("[{name: PREMIUM_CATALOG_URL, value: x}]"))]),
            "PREMIUM_<DEPENDENCY>_URL are reserved",
        );
    }

    #[test]
    fn huge_durations_are_refused() {
        let text = FEATURE.replace("NAME", "a") + "  startupTimeout: 99999999h\n";
        assert_one_error(
            &run(&[("d.yaml", &text)]),
            "longer than the operator supports",
        );
    }

    #[test]
    fn other_kinds_are_skipped_and_unknown_ones_reported() {
        let report = run(&[(
            "o.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: portal}\n",
        )]);
        assert_eq!(report.errors(), 0);
        assert_one_error(
            &run(&[(
                "o.yaml",
                "apiVersion: premium.dev/v1alpha1\nkind: PremiumThing\nmetadata: {name: a}\n",
            )]),
            "o.yaml: document 1: unknown kind PremiumThing",
        );
        assert_one_error(
            &run(&[("o.yaml", "name: a\n")]),
            "o.yaml: document 1: not a Kubernetes object",
        );
        assert_one_error(
            &run(&[("o.yaml", "a: [\n")]),
            "o.yaml: document 1: not valid YAML",
        );
        assert_one_error(&run(&[("o.yaml", "just some words\n")]), "got a string");
    }

    #[test]
    fn status_is_ignored_with_a_warning() {
        let text = FEATURE.replace("NAME", "a") + "status: {phase: Ready}\n";
        let report = run(&[("s.yaml", &text)]);
        assert_eq!((report.errors(), report.warnings()), (0, 1));
    }

    #[test]
    fn lists_are_expanded() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: premium.dev/v1alpha1\n  kind: PremiumFeature\n  metadata: {name: a, namespace: portal}\n  spec: {image: x, port: 80}\n- {kind: Oops}\n";
        let report = run(&[("l.yaml", text)]);
        assert_one_error(
            &report,
            "l.yaml: document 1 item 2: not a Kubernetes object",
        );
        assert_eq!(report.plans["portal"].levels.len(), 1);
    }

    #[test]
    fn one_line_per_finding() {
        let report = run(&[("x.yaml", "a: \"multi\nline\": [\n")]);
        for line in lines(&report) {
            assert!(!line.contains('\n'));
        }
    }

    #[test]
    fn unreadable_files_are_reported_by_name() {
        let inputs = vec![Input {
            path: "gone.yaml".into(),
            text: Err("cannot read: no such file or folder".into()),
        }];
        let report = check_inputs(&inputs);
        assert_eq!(
            lines(&report),
            ["gone.yaml: cannot read: no such file or folder"]
        );
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-z0-9/._ -]{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            let key = prop_oneof![
                Just("name".to_string()),
                Just("namespace".to_string()),
                Just("optional".to_string()),
                Just("minReplicas".to_string()),
                Just("maxReplicas".to_string()),
                Just("path".to_string()),
                Just("requests".to_string()),
                Just("matchLabels".to_string()),
                Just("budget".to_string()),
                "[a-zA-Z]{1,8}",
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(key, inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn spec_field() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "image",
            "port",
            "env",
            "resources",
            "healthCheck",
            "dependsOn",
            "startupTimeout",
            "pool",
            "suspend",
            "selector",
            "priority",
            "circuitBreaker",
            "outlierDetection",
            "timeouts",
            "retries",
            "startup",
            "recovery",
            "exposeTo",
        ])
    }

    proptest! {
        // 64 cases keep `make test` quick; set PROPTEST_CASES for a longer hunt.
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
        ))]

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let report = run(&[("p.yaml", &text)]);
            let _ = report.render();
        }

        #[test]
        fn arbitrary_yaml_like_text_never_panics(
            text in "(---\n|[a-z]{1,6}: |- |  |\\{|\\}|\\[|\\]|, |\"|'|&a |\\*a |!t |#|\n|[0-9]{1,3}|\\.inf|~){0,60}"
        ) {
            let _ = run(&[("p.yaml", &text)]).render();
        }

        #[test]
        fn arbitrary_specs_never_panic(
            kind in prop::sample::select(vec!["PremiumFeature", "PremiumPolicy"]),
            fields in prop::collection::btree_map(spec_field(), json_value(), 0..6),
            metadata in json_value(),
            with_metadata in any::<bool>(),
        ) {
            let mut object = serde_json::json!({
                "apiVersion": "premium.dev/v1alpha1",
                "kind": kind,
                "spec": Value::Object(fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
            });
            object["metadata"] = if with_metadata {
                serde_json::json!({"name": "a", "namespace": "portal"})
            } else {
                metadata
            };
            let text = serde_yaml::to_string(&object).unwrap_or_default();
            let _ = run(&[("p.yaml", &text), ("q.yaml", &feature("b", "a,c?"))]).render();
        }

        #[test]
        fn well_typed_sets_never_panic(
            features in prop::collection::vec(
                (
                    prop::sample::select(vec!["a", "b", "c", "d"]),
                    prop::sample::select(vec!["portal", "team-a"]),
                    any::<i32>(),
                    prop::option::of((any::<i32>(), any::<i32>(), any::<i32>())),
                    prop::collection::vec(
                        (
                            prop::sample::select(vec!["a", "b", "c", "x"]),
                            prop::option::of(prop::sample::select(vec!["portal", "team-a"])),
                            any::<bool>(),
                        ),
                        0..4,
                    ),
                    "(0|1|[0-9]{1,9})(ms|s|m|h)",
                ),
                0..6,
            ),
            budget in any::<i32>(),
            priority in any::<i32>(),
            expose in prop::collection::vec(prop::sample::select(vec!["portal", "team-a", "Bad_Ns"]), 0..3),
        ) {
            let mut docs: Vec<Value> = Vec::new();
            for (name, ns, port, pool, deps, timeout) in features {
                let mut spec = serde_json::json!({
                    "image": "x", "port": port, "startupTimeout": timeout,
                    "dependsOn": deps.iter().map(|(n, dns, optional)| {
                        let mut d = serde_json::json!({"name": n, "optional": optional});
                        if let Some(dns) = dns { d["namespace"] = Value::from(*dns); }
                        d
                    }).collect::<Vec<_>>(),
                });
                if let Some((min, max, weight)) = pool {
                    spec["pool"] = serde_json::json!({"minReplicas": min, "maxReplicas": max, "weight": weight});
                }
                docs.push(serde_json::json!({
                    "apiVersion": "premium.dev/v1alpha1", "kind": "PremiumFeature",
                    "metadata": {"name": name, "namespace": ns, "labels": {"tier": "premium"}},
                    "spec": spec,
                }));
            }
            docs.push(serde_json::json!({
                "apiVersion": "premium.dev/v1alpha1", "kind": "PremiumPolicy",
                "metadata": {"name": "p", "namespace": "portal"},
                "spec": {
                    "selector": {"matchLabels": {"tier": "premium"}},
                    "priority": priority,
                    "pool": {"budget": {"maxReplicas": budget}},
                    "exposeTo": {"namespaces": expose},
                },
            }));
            let text = docs
                .iter()
                .map(|d| serde_yaml::to_string(d).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("---\n");
            let report = run(&[("w.yaml", &text)]);
            let _ = report.render();
            for d in &report.diagnostics {
                prop_assert!(!d.to_string().contains('\n'));
            }
        }

        #[test]
        fn mutated_valid_manifests_never_panic(
            cut in 0usize..400,
            insert in "\\PC{0,8}",
        ) {
            let base = [feature("a", "b"), feature("b", "")].join("---\n");
            let mut at = cut.min(base.len());
            while !base.is_char_boundary(at) { at -= 1; }
            let text = format!("{}{insert}{}", &base[..at], &base[at..]);
            let _ = run(&[("p.yaml", &text)]).render();
        }
    }
}
