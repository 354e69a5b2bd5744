//! Structural validation of an object against a CRD's `openAPIV3Schema`, as the API server does
//! it before the CEL rules: types, required fields, unknown fields, ranges, lengths, list sizes,
//! patterns, enums and `nullable`.
//!
//! The schema is the CRD's own (taken from the Rust types), so this can never drift from what
//! the cluster enforces; only the wording of the messages is ours. A few patterns get a message
//! that explains the expected format instead of quoting the regex.

use std::collections::HashMap;

use regex::Regex;
use serde_json::{Map, Value};

use super::manifest::{join, type_name};
use crate::api::{DNS_LABEL_PATTERN, DURATION_PATTERN, RETRY_ON_PATTERN};

/// Most errors reported for one object; past it a summary line says how many were left out.
pub const MAX_ERRORS_PER_OBJECT: usize = 20;

/// The health check path pattern of the CRD, explained in messages.
const ABSOLUTE_PATH_PATTERN: &str = r"^/[^\s]*$";

/// One violation: the field path (`spec.dependsOn[1].name`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for SchemaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A compiled schema: the JSON schema plus its patterns, compiled once.
pub struct SchemaValidator {
    schema: Value,
    patterns: HashMap<String, Result<Regex, String>>,
}

/// Fields every object has at the top, validated elsewhere (`metadata`) or by classification.
const ROOT_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];

impl SchemaValidator {
    pub fn new(schema: Value) -> Self {
        let mut patterns = HashMap::new();
        collect_patterns(&schema, &mut patterns);
        Self { schema, patterns }
    }

    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// Validates a whole object. `apiVersion`, `kind` and `metadata` are accepted at the top
    /// whatever the schema says (the API server checks them itself).
    pub fn validate_object(&self, object: &Value) -> Vec<SchemaError> {
        let mut errors = Vec::new();
        match object {
            Value::Object(map) => {
                let rest: Map<String, Value> = map
                    .iter()
                    .filter(|(k, _)| !ROOT_FIELDS.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                self.check(&self.schema, &Value::Object(rest), "", &mut errors);
            }
            other => self.check(&self.schema, other, "", &mut errors),
        }
        errors
    }

    /// Validates `value` against `schema` (a node of this validator's schema) at `path`.
    pub fn validate_at(&self, schema: &Value, value: &Value, path: &str) -> Vec<SchemaError> {
        let mut errors = Vec::new();
        self.check(schema, value, path, &mut errors);
        errors
    }

    fn check(&self, schema: &Value, value: &Value, path: &str, errors: &mut Vec<SchemaError>) {
        if value.is_null() {
            if !flag(schema, "nullable") {
                at(
                    errors,
                    path,
                    "must not be null; give a value or remove the field".into(),
                );
            }
            return;
        }
        self.check_combinators(schema, value, path, errors);
        match has_type(schema, value) {
            Ok(true) => {}
            // Int-or-string and untyped nodes have nothing more to check.
            Ok(false) => return,
            Err(message) => return at(errors, path, message),
        }
        match value {
            Value::Object(map) => self.check_object(schema, map, path, errors),
            Value::Array(items) => self.check_array(schema, items, path, errors),
            Value::String(s) => self.check_string(schema, s, path, errors),
            Value::Number(_) => check_number(schema, value, path, errors),
            Value::Bool(_) | Value::Null => {}
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            let list: Vec<String> = allowed.iter().map(short).collect();
            let message = format!("must be one of {}, got {}", list.join(", "), short(value));
            at(errors, path, message);
        }
    }

    /// `allOf`, `anyOf` and `oneOf`: every branch, at least one, exactly one.
    fn check_combinators(
        &self,
        schema: &Value,
        value: &Value,
        path: &str,
        errors: &mut Vec<SchemaError>,
    ) {
        for keyword in ["allOf", "anyOf", "oneOf"] {
            let Some(branches) = schema.get(keyword).and_then(Value::as_array) else {
                continue;
            };
            let results: Vec<Vec<SchemaError>> = branches
                .iter()
                .map(|b| self.validate_at(b, value, path))
                .collect();
            let passing = results.iter().filter(|r| r.is_empty()).count();
            match keyword {
                "allOf" => results.into_iter().for_each(|r| errors.extend(r)),
                "anyOf" if passing == 0 => {
                    at(errors, path, "matches none of the allowed forms".into());
                }
                "oneOf" if passing != 1 => at(
                    errors,
                    path,
                    format!("must match exactly one of the allowed forms, matches {passing}"),
                ),
                _ => {}
            }
        }
    }

    fn check_array(
        &self,
        schema: &Value,
        items: &[Value],
        path: &str,
        errors: &mut Vec<SchemaError>,
    ) {
        let count = items.len() as u64;
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
            && count > max
        {
            let message = format!("has {count} entries; at most {max} are allowed");
            at(errors, path, message);
        }
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
            && count < min
        {
            let message = format!("has {count} entries; at least {min} are needed");
            at(errors, path, message);
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                self.check(item_schema, item, &format!("{path}[{i}]"), errors);
            }
        }
    }

    fn check_object(
        &self,
        schema: &Value,
        map: &Map<String, Value>,
        path: &str,
        errors: &mut Vec<SchemaError>,
    ) {
        let properties = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");

        // Like the API server, a null in a field that is not nullable counts as absent (it is
        // pruned), so a required field set to null is reported as missing.
        let present = |value: &Value, nullable: bool| !value.is_null() || nullable;

        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for name in required.iter().filter_map(Value::as_str) {
                let prop_nullable = properties
                    .and_then(|p| p.get(name))
                    .is_some_and(|s| flag(s, "nullable"));
                let given = map.get(name).is_some_and(|v| present(v, prop_nullable));
                if !given {
                    errors.push(SchemaError {
                        path: join(path, name),
                        message: "required field is missing".to_string(),
                    });
                }
            }
        }

        for (name, value) in map {
            let child = join(path, name);
            if let Some(prop_schema) = properties.and_then(|p| p.get(name)) {
                if present(value, flag(prop_schema, "nullable")) {
                    self.check(prop_schema, value, &child, errors);
                }
                continue;
            }
            match additional {
                Some(Value::Object(_)) => {
                    if let Some(additional) = additional {
                        self.check(additional, value, &child, errors);
                    }
                }
                Some(Value::Bool(true)) => {}
                _ if preserve => {}
                _ => {
                    let known: Vec<&str> = properties
                        .map(|p| p.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    errors.push(SchemaError {
                        path: String::new(),
                        message: unknown_field_message(&child, name, &known),
                    });
                }
            }
        }
    }

    fn check_string(&self, schema: &Value, s: &str, path: &str, errors: &mut Vec<SchemaError>) {
        // The API server counts characters, not bytes.
        let length = s.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && length < min
        {
            if length == 0 {
                at(errors, path, "must not be empty".to_string());
            } else {
                at(
                    errors,
                    path,
                    format!("must be at least {min} characters long, got {length}"),
                );
            }
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && length > max
        {
            at(
                errors,
                path,
                format!("must be at most {max} characters long, got {length}"),
            );
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
            match self.patterns.get(pattern) {
                Some(Ok(re)) if !re.is_match(s) => at(errors, path, pattern_message(pattern, s)),
                Some(Err(e)) => at(
                    errors,
                    path,
                    format!(
                        "cannot be checked: the schema's pattern {pattern} does not compile ({e})"
                    ),
                ),
                Some(Ok(_)) | None => {}
            }
        }
    }
}

fn at(errors: &mut Vec<SchemaError>, path: &str, message: String) {
    errors.push(SchemaError {
        path: path.to_string(),
        message,
    });
}

/// Whether `value` has the type the schema asks for: `Ok(true)` when it does and more checks
/// apply, `Ok(false)` for an int-or-string or untyped node (nothing more to check), else why
/// not.
fn has_type(schema: &Value, value: &Value) -> Result<bool, String> {
    if flag(schema, "x-kubernetes-int-or-string") {
        if value.is_string() || is_integer(value) {
            return Ok(false);
        }
        return Err(format!(
            "must be an integer or a string, got {}",
            describe(value)
        ));
    }
    let Some(expected) = schema.get("type").and_then(Value::as_str) else {
        return Ok(false);
    };
    let type_ok = match expected {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => is_integer(value),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        _ => true,
    };
    if type_ok {
        return Ok(true);
    }
    Err(format!(
        "must be {}, got {}{}",
        expected_name(expected),
        describe(value),
        type_hint(expected, value)
    ))
}

fn collect_patterns(schema: &Value, out: &mut HashMap<String, Result<Regex, String>>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::String(p)) = map.get("pattern") {
                out.entry(p.clone())
                    .or_insert_with(|| Regex::new(p).map_err(|e| e.to_string()));
            }
            for (key, child) in map {
                // `pattern` under `properties` would be a field named "pattern", not a keyword,
                // and is handled by recursing into its schema.
                if key != "enum" && key != "default" {
                    collect_patterns(child, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_patterns(i, out)),
        _ => {}
    }
}

fn flag(schema: &Value, name: &str) -> bool {
    schema.get(name).and_then(Value::as_bool) == Some(true)
}

fn is_integer(value: &Value) -> bool {
    matches!(value, Value::Number(n) if n.is_i64() || n.is_u64())
}

fn expected_name(type_: &str) -> &'static str {
    match type_ {
        "object" => "a mapping",
        "array" => "a list",
        "string" => "a string",
        "integer" => "an integer",
        "number" => "a number",
        "boolean" => "true or false",
        _ => "of another type",
    }
}

/// The value's type and, for scalars, the value itself: `a string "abc"`, `an integer 5`.
fn describe(value: &Value) -> String {
    match value {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => {
            format!("{} {}", type_name(value), short(value))
        }
        other => type_name(other).to_string(),
    }
}

/// A hint for the type mistakes YAML makes easy.
fn type_hint(expected: &str, value: &Value) -> &'static str {
    match (expected, value) {
        ("integer" | "number", Value::String(s)) if s.trim().parse::<f64>().is_ok() => {
            "; remove the quotes"
        }
        ("string", Value::Number(_) | Value::Bool(_)) => "; put the value in quotes",
        ("boolean", Value::String(s)) if matches!(s.as_str(), "true" | "false") => {
            "; remove the quotes"
        }
        ("array", Value::Object(_) | Value::String(_) | Value::Number(_)) => {
            "; write each entry on its own line starting with '- '"
        }
        _ => "",
    }
}

/// A value as JSON, shortened for a one-line message.
fn short(value: &Value) -> String {
    let s = value.to_string();
    if s.chars().count() > 60 {
        let cut: String = s.chars().take(57).collect();
        format!("{cut}...")
    } else {
        s
    }
}

fn check_number(schema: &Value, value: &Value, path: &str, errors: &mut Vec<SchemaError>) {
    let Some(n) = value.as_f64() else { return };
    let err = |errors: &mut Vec<SchemaError>, message: String| {
        errors.push(SchemaError {
            path: path.to_string(),
            message,
        })
    };
    let exclusive = |name: &str| flag(schema, name);
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
        let below = if exclusive("exclusiveMinimum") {
            n <= min
        } else {
            n < min
        };
        if below {
            err(
                errors,
                format!("{} is below the minimum {}", short(value), num(min)),
            );
        }
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
        let above = if exclusive("exclusiveMaximum") {
            n >= max
        } else {
            n > max
        };
        if above {
            err(
                errors,
                format!("{} is above the maximum {}", short(value), num(max)),
            );
        }
    }
    let format = schema.get("format").and_then(Value::as_str);
    let in_range = match format {
        Some("int32") => value.as_i64().is_some_and(|i| i32::try_from(i).is_ok()),
        Some("int64") => value.as_i64().is_some(),
        _ => true,
    };
    if !in_range {
        err(
            errors,
            format!(
                "{} does not fit in {}",
                short(value),
                format.unwrap_or_default()
            ),
        );
    }
}

/// A schema bound without a needless `.0`.
fn num(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

/// Explains a pattern mismatch in words where the pattern is one of the API's formats.
fn pattern_message(pattern: &str, s: &str) -> String {
    if pattern == DURATION_PATTERN {
        return format!(
            "invalid duration {s:?}: use a number with a unit of ms, s, m or h, such as 500ms, 90s, 2m or 1h30m"
        );
    }
    if pattern == DNS_LABEL_PATTERN {
        return format!(
            "{s:?} is not a valid name: use lower-case letters, digits and '-', starting and ending with a letter or digit (a DNS label)"
        );
    }
    if pattern == ABSOLUTE_PATH_PATTERN {
        return format!(
            "{s:?} is not an absolute HTTP path: it must start with '/' and contain no spaces, such as /readyz"
        );
    }
    if pattern == RETRY_ON_PATTERN {
        let allowed = retry_on_conditions(pattern);
        let bad: Vec<&str> = s
            .split(',')
            .filter(|c| !allowed.iter().any(|a| a == c))
            .collect();
        let what = if bad.iter().all(|b| b.is_empty()) {
            "has an empty condition (a stray comma)".to_string()
        } else {
            format!(
                "has unknown retry condition {}",
                bad.iter()
                    .filter(|b| !b.is_empty())
                    .map(|b| format!("{b:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return format!(
            "{s:?} {what}; use a comma-separated list (no spaces) of: {}",
            allowed.join(", ")
        );
    }
    format!("{s:?} does not match the required pattern {pattern}")
}

/// The alternatives of the first group of the retry-on pattern: `^(5xx|reset|…)(,(…))*$`.
fn retry_on_conditions(pattern: &str) -> Vec<String> {
    pattern
        .strip_prefix("^(")
        .and_then(|rest| rest.split_once(')'))
        .map(|(group, _)| group.split('|').map(str::to_string).collect())
        .unwrap_or_default()
}

fn unknown_field_message(path: &str, name: &str, known: &[&str]) -> String {
    let suggestion = super::suggest::closest(name, known.iter().copied(), str::to_lowercase)
        .map(|k| format!("did you mean {k}? "))
        .unwrap_or_default();
    let listing = if known.is_empty() {
        "this field takes no sub-fields".to_string()
    } else {
        format!("the fields here are {}", known.join(", "))
    };
    format!("unknown field {path}: the API server refuses it; {suggestion}{listing}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(schema: Value, value: Value) -> Vec<String> {
        SchemaValidator::new(schema)
            .validate_object(&value)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn one(schema: Value, value: Value) -> String {
        let e = errors(schema, value);
        assert_eq!(e.len(), 1, "{e:?}");
        e[0].clone()
    }

    fn obj(props: Value) -> Value {
        json!({"type": "object", "properties": props})
    }

    #[test]
    fn type_mismatches_name_the_type_and_value() {
        let s = obj(json!({"port": {"type": "integer"}}));
        assert_eq!(
            one(s.clone(), json!({"port": "abc"})),
            "port: must be an integer, got a string \"abc\""
        );
        assert!(one(s, json!({"port": "80"})).ends_with("remove the quotes"));
        let s = obj(json!({"deps": {"type": "array"}}));
        assert!(one(s, json!({"deps": 5})).starts_with("deps: must be a list, got an integer 5"));
        let s = obj(
            json!({"on": {"type": "boolean"}, "name": {"type": "string"}, "m": {"type": "object"}}),
        );
        assert!(one(s.clone(), json!({"on": "yes"})).contains("must be true or false"));
        assert!(one(s.clone(), json!({"name": 5})).ends_with("put the value in quotes"));
        assert!(one(s, json!({"m": [1]})).contains("must be a mapping, got a list"));
        let s = obj(json!({"n": {"type": "number"}, "i": {"type": "integer"}}));
        assert!(errors(s.clone(), json!({"n": 1.5, "i": 2})).is_empty());
        assert!(one(s, json!({"i": 2.5})).contains("must be an integer, got a number 2.5"));
    }

    #[test]
    fn required_fields_and_null_pruning() {
        let s = json!({"type": "object", "required": ["image"], "properties": {
            "image": {"type": "string"},
            "pool": {"type": "object", "nullable": true},
        }});
        assert_eq!(
            one(s.clone(), json!({})),
            "image: required field is missing"
        );
        // A null in a non-nullable field is pruned, as the API server does.
        assert_eq!(
            one(s.clone(), json!({"image": null})),
            "image: required field is missing"
        );
        assert!(errors(s, json!({"image": "x", "pool": null})).is_empty());
        let s = json!({"type": "array", "items": {"type": "string"}});
        assert!(one(s, json!(["a", null])).contains("[1]: must not be null"));
    }

    #[test]
    fn unknown_fields_are_errors_with_a_suggestion() {
        let s = obj(
            json!({"spec": obj(json!({"dependsOn": {"type": "array"}, "image": {"type": "string"}}))}),
        );
        let e = one(s, json!({"spec": {"dependOn": []}}));
        assert!(e.starts_with("unknown field spec.dependOn: "), "{e}");
        assert!(e.contains("did you mean dependsOn?"), "{e}");
        assert!(e.contains("the fields here are dependsOn, image"), "{e}");
    }

    #[test]
    fn root_fields_are_always_known() {
        let s = obj(json!({"spec": {"type": "object"}}));
        assert!(
            errors(
                s.clone(),
                json!({"apiVersion": "v1", "kind": "X", "metadata": {}, "spec": {}})
            )
            .is_empty()
        );
        assert!(one(s, json!({"spek": {}})).contains("unknown field spek"));
    }

    #[test]
    fn additional_properties_and_preserve_unknown_fields() {
        let s = obj(json!({
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        }));
        assert!(errors(s.clone(), json!({"labels": {"a": "b"}, "free": {"x": 1}})).is_empty());
        assert_eq!(
            one(s, json!({"labels": {"a": 1}})),
            "labels.a: must be a string, got an integer 1; put the value in quotes"
        );
    }

    #[test]
    fn int_or_string() {
        let s = obj(json!({"q": {"x-kubernetes-int-or-string": true}}));
        assert!(errors(s.clone(), json!({"q": 1})).is_empty());
        assert!(errors(s.clone(), json!({"q": "100m"})).is_empty());
        assert!(one(s, json!({"q": true})).contains("must be an integer or a string"));
    }

    #[test]
    fn minimum_and_maximum() {
        let s = obj(json!({"p": {"type": "integer", "minimum": 1.0, "maximum": 100.0}}));
        assert_eq!(
            one(s.clone(), json!({"p": 0})),
            "p: 0 is below the minimum 1"
        );
        assert_eq!(
            one(s.clone(), json!({"p": 101})),
            "p: 101 is above the maximum 100"
        );
        assert!(errors(s.clone(), json!({"p": 1})).is_empty());
        assert!(errors(s, json!({"p": 100})).is_empty());
        let s = obj(json!({"p": {"type": "number", "minimum": 1.0, "exclusiveMinimum": true}}));
        assert!(one(s, json!({"p": 1})).contains("below the minimum"));
    }

    #[test]
    fn integer_formats() {
        let s = obj(
            json!({"a": {"type": "integer", "format": "int32"}, "b": {"type": "integer", "format": "int64"}}),
        );
        assert!(one(s.clone(), json!({"a": 3_000_000_000_i64})).contains("does not fit in int32"));
        assert!(one(s, json!({"b": u64::MAX})).contains("does not fit in int64"));
    }

    #[test]
    fn string_lengths_count_characters() {
        let s = obj(json!({"s": {"type": "string", "minLength": 1, "maxLength": 3}}));
        assert_eq!(one(s.clone(), json!({"s": ""})), "s: must not be empty");
        assert!(one(s.clone(), json!({"s": "abcd"})).contains("at most 3 characters long, got 4"));
        assert!(errors(s.clone(), json!({"s": "äöü"})).is_empty());
        let s = obj(json!({"s": {"type": "string", "minLength": 2}}));
        assert!(one(s, json!({"s": "a"})).contains("at least 2 characters"));
    }

    #[test]
    fn list_sizes() {
        let s = obj(
            json!({"l": {"type": "array", "maxItems": 2, "minItems": 1, "items": {"type": "integer"}}}),
        );
        assert!(one(s.clone(), json!({"l": [1, 2, 3]})).contains("has 3 entries; at most 2"));
        assert!(one(s.clone(), json!({"l": []})).contains("at least 1"));
        assert_eq!(
            one(s, json!({"l": [1, "x"]})),
            "l[1]: must be an integer, got a string \"x\""
        );
    }

    #[test]
    fn patterns_with_explained_formats() {
        let s = obj(json!({
            "d": {"type": "string", "pattern": DURATION_PATTERN},
            "n": {"type": "string", "pattern": DNS_LABEL_PATTERN},
            "p": {"type": "string", "pattern": ABSOLUTE_PATH_PATTERN},
            "r": {"type": "string", "pattern": RETRY_ON_PATTERN},
            "x": {"type": "string", "pattern": "^a+$"},
        }));
        assert!(
            one(s.clone(), json!({"d": "5 minutes"})).contains("invalid duration \"5 minutes\"")
        );
        assert!(errors(s.clone(), json!({"d": "1h30m"})).is_empty());
        assert!(one(s.clone(), json!({"n": "Team-A"})).contains("DNS label"));
        assert!(one(s.clone(), json!({"p": "readyz"})).contains("must start with '/'"));
        let e = one(s.clone(), json!({"r": "5xx,gateway_error"}));
        assert!(
            e.contains("unknown retry condition \"gateway_error\""),
            "{e}"
        );
        assert!(e.contains("gateway-error"), "{e}");
        assert!(one(s.clone(), json!({"r": "5xx,"})).contains("stray comma"));
        assert!(one(s, json!({"x": "b"})).contains("does not match the required pattern ^a+$"));
    }

    #[test]
    fn enums() {
        let s = obj(json!({"e": {"type": "string", "enum": ["A", "B"]}}));
        assert_eq!(
            one(s.clone(), json!({"e": "C"})),
            "e: must be one of \"A\", \"B\", got \"C\""
        );
        assert!(errors(s, json!({"e": "A"})).is_empty());
    }

    #[test]
    fn nullable() {
        let s = json!({"type": "array", "items": {"type": "string", "nullable": true}});
        assert!(errors(s, json!(["a", null])).is_empty());
    }

    #[test]
    fn combinators() {
        let s = obj(json!({"v": {"anyOf": [{"type": "integer"}, {"type": "string"}]}}));
        assert!(errors(s.clone(), json!({"v": 1})).is_empty());
        assert!(one(s, json!({"v": true})).contains("none of the allowed forms"));
        let s = obj(
            json!({"v": {"allOf": [{"type": "integer", "minimum": 1.0}, {"type": "integer", "maximum": 3.0}]}}),
        );
        assert!(one(s, json!({"v": 5})).contains("above the maximum 3"));
    }
}
