//! Length limits on the free strings, lists and maps of the Kubernetes types the CRDs embed
//! (`EnvVar`, `ResourceRequirements`, `LabelSelector`), whose generated schemas have none.
//!
//! Without them a single feature may carry a value of hundreds of kilobytes that ends up quoted
//! in a status or in an owned object; with them the API server refuses it at admission, with a
//! message that names the field and the limit.

use schemars::Schema;
use serde_json::{Map, Value, json};

/// Longest value of one environment variable (32 KiB).
pub const MAX_ENV_VALUE_LENGTH: u64 = 32 * 1024;
/// Longest name, key, path or other word inside env, resources and selectors: a qualified key
/// (a 253-character prefix, a slash and a 63-character name) fits.
pub const MAX_NAME_LENGTH: u64 = 317;
/// Longest resource quantity, such as `500m` or `1.5Gi`.
pub const MAX_QUANTITY_LENGTH: u64 = 64;
/// Most entries of a list or map inside these types that has no limit of its own.
pub const MAX_ENTRIES: u64 = 64;

/// `spec.env`: values up to [`MAX_ENV_VALUE_LENGTH`], every other string bounded.
pub fn bound_env(schema: &mut Schema) {
    if let Some(value) = schema
        .get_mut("items")
        .and_then(|items| items.get_mut("properties"))
        .and_then(|p| p.get_mut("value"))
        .and_then(Value::as_object_mut)
    {
        value.insert("maxLength".into(), json!(MAX_ENV_VALUE_LENGTH));
    }
    bound(schema);
}

/// Every string, quantity, list and map of an embedded type, unless it already has a limit.
pub fn bound(schema: &mut Schema) {
    if let Some(node) = schema.as_object_mut() {
        bound_node(node);
    }
}

fn has_type(node: &Map<String, Value>, wanted: &str) -> bool {
    match node.get("type") {
        Some(Value::String(t)) => t == wanted,
        Some(Value::Array(types)) => types.iter().any(|t| t == wanted),
        _ => false,
    }
}

fn bound_node(node: &mut Map<String, Value>) {
    let int_or_string = node
        .get("x-kubernetes-int-or-string")
        .is_some_and(|v| v == &Value::Bool(true));
    if int_or_string {
        node.entry("maxLength")
            .or_insert(json!(MAX_QUANTITY_LENGTH));
    } else if has_type(node, "string") {
        node.entry("maxLength").or_insert(json!(MAX_NAME_LENGTH));
    }
    if has_type(node, "array") {
        node.entry("maxItems").or_insert(json!(MAX_ENTRIES));
    }
    if node
        .get("additionalProperties")
        .is_some_and(Value::is_object)
    {
        node.entry("maxProperties").or_insert(json!(MAX_ENTRIES));
        // Keys cannot carry a maxLength; a rule bounds them.
        let rule = json!({
            "rule": format!("self.all(k, size(k) <= {MAX_NAME_LENGTH})"),
            "message": format!("keys may be at most {MAX_NAME_LENGTH} characters long"),
        });
        match node
            .entry("x-kubernetes-validations")
            .or_insert_with(|| json!([]))
        {
            Value::Array(rules) => rules.push(rule),
            other => *other = json!([rule]),
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(Value::Object(child)) = node.get_mut(key) {
            bound_node(child);
        }
    }
    if let Some(Value::Object(properties)) = node.get_mut("properties") {
        for child in properties.values_mut() {
            if let Value::Object(child) = child {
                bound_node(child);
            }
        }
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(options)) = node.get_mut(key) {
            for option in options {
                if let Value::Object(option) = option {
                    bound_node(option);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unbounded_strings_lists_and_maps_get_a_limit_and_bounded_ones_keep_theirs() {
        let mut schema: Schema = serde_json::from_value(json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "image": {"type": "string", "maxLength": 512},
                "tags": {"type": ["array", "null"], "items": {"type": "string"}},
                "requests": {
                    "type": "object",
                    "additionalProperties": {"x-kubernetes-int-or-string": true},
                },
            },
        }))
        .unwrap();
        bound(&mut schema);
        let v = schema.as_value();
        assert_eq!(v["properties"]["name"]["maxLength"], json!(MAX_NAME_LENGTH));
        assert_eq!(v["properties"]["image"]["maxLength"], json!(512));
        assert_eq!(v["properties"]["tags"]["maxItems"], json!(MAX_ENTRIES));
        assert_eq!(
            v["properties"]["tags"]["items"]["maxLength"],
            json!(MAX_NAME_LENGTH)
        );
        let requests = &v["properties"]["requests"];
        assert_eq!(requests["maxProperties"], json!(MAX_ENTRIES));
        assert_eq!(
            requests["additionalProperties"]["maxLength"],
            json!(MAX_QUANTITY_LENGTH)
        );
        assert_eq!(
            requests["x-kubernetes-validations"][0]["rule"],
            json!("self.all(k, size(k) <= 317)")
        );
    }
}
