//! Drift of owned objects: whether anyone changed what the operator set, read from the live
//! object alone.
//!
//! The API server records, per field manager, which fields each writer set
//! (`metadata.managedFields[].fieldsV1`). Two things are read from it:
//!
//! - the live values of exactly the fields the operator's own apply owns, hashed
//!   ([`live_owned_hash`]). Another writer that changes one of those fields takes it over (an
//!   update, or a forced apply), so the field leaves the operator's set and the hash no longer
//!   equals the hash of the desired object ([`desired_owned_hash`]); a field the API server
//!   defaults is owned by nobody and never counts. Comparing with the desired object also
//!   catches a writer that kept the field manager's name.
//! - fields another writer added where only the operator writes ([`strays`]): inside a pod
//!   template, a Service's or an HPA's spec, a ConfigMap's data. Server-side apply never removes
//!   a field someone else owns, so these are removed with a patch of their own
//!   ([`removal_patch`]). Labels and annotations stay open to everyone (other tools annotate
//!   objects, `kubectl rollout restart` annotates the pod template).
//!
//! Pure: the watch shell keeps only the hash and the (normally empty) stray list per object.

use std::fmt::Write as _;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// A path in a managed-fields set, element by element as the API server writes them
/// (`f:spec`, `k:{"name":"app"}`, `v:"x"`, `i:0`).
pub type FieldPath = Box<[String]>;

/// Where, in one kind, only the operator writes, and which of its fields others may move.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Subtrees where a field set by another writer is drift (and removed).
    pub closed: &'static [&'static [&'static str]],
    /// Fields the operator sets that another controller may legitimately change, compared
    /// elsewhere: left out of the hash and never strays (a Deployment's replicas, moved by its
    /// HPA).
    pub shared: &'static [&'static [&'static str]],
}

pub const DEPLOYMENT: Rules = Rules {
    closed: &[&["f:spec"]],
    shared: &[&["f:spec", "f:replicas"]],
};
pub const SERVICE: Rules = Rules {
    closed: &[&["f:spec"]],
    shared: &[],
};
pub const CONFIGMAP: Rules = Rules {
    closed: &[&["f:data"], &["f:binaryData"]],
    shared: &[],
};
pub const HPA: Rules = Rules {
    closed: &[&["f:spec"]],
    shared: &[],
};

/// Maps every writer may add keys to, wherever they are.
const OPEN: [&str; 2] = ["f:labels", "f:annotations"];

fn is_apply_of(entry: &ManagedFieldsEntry, manager: &str) -> bool {
    entry.manager.as_deref() == Some(manager) && entry.operation.as_deref() == Some("Apply")
}

/// Entries for the object itself: writes through a subresource (status, scale) are other
/// controllers' business.
fn on_main_resource(entry: &ManagedFieldsEntry) -> bool {
    entry.subresource.as_deref().unwrap_or("").is_empty()
}

/// Where `manager`'s own updates (not applies) to the object itself are recorded, if anywhere:
/// a repair by [`removal_patch`] that had to put items back leaves one, and a field it keeps
/// owning there would outlive the operator's apply (which could then neither drop nor rename
/// it), so the entry is removed after the apply took those fields over.
pub fn update_entry(managed: &[ManagedFieldsEntry], manager: &str) -> Option<usize> {
    managed.iter().position(|e| {
        e.manager.as_deref() == Some(manager)
            && e.operation.as_deref() == Some("Update")
            && on_main_resource(e)
    })
}

/// The fields `manager`'s server-side apply owns, if it applied any.
pub fn owned_fields<'a>(managed: &'a [ManagedFieldsEntry], manager: &str) -> Option<&'a Value> {
    managed
        .iter()
        .find(|e| is_apply_of(e, manager) && on_main_resource(e))
        .and_then(|e| e.fields_v1.as_ref())
        .map(|f| &f.0)
}

/// Hash of the live values of the fields in `fields` (an apply's managed-fields set), in the
/// form [`desired_owned_hash`] gives the desired object.
pub fn live_owned_hash(live: &Value, fields: &Value, rules: &Rules) -> u64 {
    let mut projected = project(live, fields);
    for path in rules.shared {
        remove_field(&mut projected, path);
    }
    hash64(&normalize(projected, None, None).unwrap_or(Value::Null))
}

/// Hash of what the operator sets in `desired` (the object it applies, as JSON): what
/// [`live_owned_hash`] gives for the live object while nobody changed it.
pub fn desired_owned_hash(desired: &Value, rules: &Rules) -> u64 {
    let mut set = desired.clone();
    if let Some(obj) = set.as_object_mut() {
        // The API server tracks no ownership of these.
        for untracked in ["apiVersion", "kind", "status"] {
            obj.remove(untracked);
        }
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.retain(|k, _| {
                ["labels", "annotations", "ownerReferences", "finalizers"].contains(&k.as_str())
            });
        }
    }
    for path in rules.shared {
        remove_field(&mut set, path);
    }
    hash64(&normalize(set, None, None).unwrap_or(Value::Null))
}

/// The part of `live` that `set` (a managed-fields set) covers.
fn project(live: &Value, set: &Value) -> Value {
    let members: Vec<(&String, &Value)> = set
        .as_object()
        .map(|m| m.iter().filter(|(k, _)| k.as_str() != ".").collect())
        .unwrap_or_default();
    // A leaf, or a whole value owned as one: the value as it is.
    if members.is_empty() {
        return live.clone();
    }
    match live {
        Value::Object(obj) => Value::Object(
            members
                .iter()
                .filter_map(|(k, sub)| {
                    let name = k.strip_prefix("f:")?;
                    Some((name.to_string(), project(obj.get(name)?, sub)))
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    let (_, sub) = members.iter().find(|(k, _)| element_is(k, i, item))?;
                    Some(project(item, sub))
                })
                .collect(),
        ),
        // The set expects members where the object has a plain value: the type changed under
        // it, which the hash then shows.
        other => other.clone(),
    }
}

/// Whether the list element `item` at `index` is the one a set's `k:`, `v:` or `i:` names.
fn element_is(key: &str, index: usize, item: &Value) -> bool {
    if let Some(json) = key.strip_prefix("k:") {
        let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(json) else {
            return false;
        };
        fields.iter().all(|(k, v)| item.get(k) == Some(v))
    } else if let Some(json) = key.strip_prefix("v:") {
        serde_json::from_str::<Value>(json).is_ok_and(|v| &v == item)
    } else if let Some(i) = key.strip_prefix("i:") {
        i.parse::<usize>() == Ok(index)
    } else {
        false
    }
}

fn remove_field(value: &mut Value, path: &[&str]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = value;
    for p in parents {
        let Some(next) = p.strip_prefix("f:").and_then(|name| at.get_mut(name)) else {
            return;
        };
        at = next;
    }
    if let (Some(obj), Some(name)) = (at.as_object_mut(), last.strip_prefix("f:")) {
        obj.remove(name);
    }
}

/// One spelling per meaning, so the desired object and its stored form hash alike: the API
/// server drops empty values and rewrites quantities ("0.5" is stored as "500m"). Lists of
/// objects are sorted, as the order the server merges keyed items in is its own.
fn normalize(value: Value, key: Option<&str>, parent: Option<&str>) -> Option<Value> {
    match value {
        Value::Null => None,
        Value::String(s) => {
            let quantity = key == Some("divisor") || matches!(parent, Some("requests" | "limits"));
            match quantity.then(|| canonical_quantity(&s)).flatten() {
                Some(q) => Some(Value::String(q)),
                None => Some(Value::String(s)),
            }
        }
        Value::Array(items) => {
            let mut items: Vec<Value> = items
                .into_iter()
                .map(|i| normalize(i, None, None).unwrap_or(Value::Null))
                .collect();
            if items.is_empty() {
                return None;
            }
            if items.iter().all(Value::is_object) {
                items.sort_by_cached_key(canonical);
            }
            Some(Value::Array(items))
        }
        Value::Object(map) => {
            let map: Map<String, Value> = map
                .into_iter()
                .filter(|(_, v)| v.as_str() != Some(""))
                .filter_map(|(k, v)| {
                    let v = normalize(v, Some(&k), key)?;
                    Some((k, v))
                })
                .collect();
            (!map.is_empty()).then_some(Value::Object(map))
        }
        other => Some(other),
    }
}

/// JSON with object keys in order, whatever map type serde_json was built with.
fn canonical(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(k) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => {
            let _ = write!(out, "{scalar}");
        }
    }
}

fn hash64(value: &Value) -> u64 {
    let digest = Sha256::digest(canonical(value).as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// A resource quantity written one way per value ("0.5", "500m" and "5e-1" all give "5e-1";
/// "1Gi" and "1024Mi" give "1073741824e0"), or `None` when `s` is no quantity (or too large to
/// compare exactly, which then compares as written).
pub fn canonical_quantity(s: &str) -> Option<String> {
    crate::api::quantity::parse(s).ok()?.canonical()
}

/// Fields that writers other than `manager`'s apply own, inside the subtrees only the operator
/// writes (`rules.closed`), that the operator does not own too: each as the path of the
/// outermost such field. Empty while nobody meddled.
pub fn strays(managed: &[ManagedFieldsEntry], manager: &str, rules: &Rules) -> Vec<FieldPath> {
    let ours = owned_fields(managed, manager);
    let mut found = Vec::new();
    for entry in managed {
        if is_apply_of(entry, manager) || !on_main_resource(entry) {
            continue;
        }
        let Some(theirs) = entry.fields_v1.as_ref().map(|f| &f.0) else {
            continue;
        };
        for root in rules.closed {
            let mut path: Vec<String> = Vec::new();
            let mut node = Some(theirs);
            for element in root.iter() {
                node = node.and_then(|n| n.get(*element));
                path.push((*element).to_string());
            }
            if let Some(node) = node {
                collect_strays(node, &mut path, ours, rules, &mut found);
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

fn owns(set: &Value) -> bool {
    set.as_object()
        .is_some_and(|m| m.is_empty() || m.contains_key("."))
}

fn node_at<'a>(set: Option<&'a Value>, path: &[String]) -> Option<&'a Value> {
    path.iter()
        .try_fold(set?, |node, element| node.get(element))
}

fn collect_strays(
    theirs: &Value,
    path: &mut Vec<String>,
    ours: Option<&Value>,
    rules: &Rules,
    found: &mut Vec<FieldPath>,
) {
    if path.iter().any(|e| OPEN.contains(&e.as_str())) {
        return;
    }
    let shared = rules
        .shared
        .iter()
        .any(|s| s.len() <= path.len() && s.iter().zip(path.iter()).all(|(a, b)| a == b));
    if shared {
        return;
    }
    if owns(theirs) {
        if !node_at(ours, path).is_some_and(owns) {
            found.push(path.clone().into_boxed_slice());
        }
        return;
    }
    let Some(members) = theirs.as_object() else {
        return;
    };
    for (element, sub) in members {
        path.push(element.clone());
        collect_strays(sub, path, ours, rules, found);
        path.pop();
    }
}

/// Whether `desired` (the object the operator applies, as JSON) sets the field at `path`.
pub fn sets(desired: &Value, path: &[String]) -> bool {
    value_at(desired, path).is_some()
}

fn value_at<'a>(desired: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut at = desired;
    for element in path {
        let next = if let Some(name) = element.strip_prefix("f:") {
            at.get(name)
        } else {
            at.as_array().and_then(|items| {
                items
                    .iter()
                    .enumerate()
                    .find(|(i, item)| element_is(element, *i, item))
                    .map(|(_, item)| item)
            })
        };
        match next {
            Some(v) if !v.is_null() => at = v,
            _ => return None,
        }
    }
    Some(at)
}

/// A strategic merge patch that removes the fields at `paths` (from [`strays`]): a field
/// becomes `null`, a keyed list item `{<key>, "$patch": "delete"}`, a set member a
/// `$deleteFromPrimitiveList` entry. A list it removes items from also gets the items
/// `desired` puts there, so the patch never leaves it empty or with a clash (a Service port
/// renumbered by hand is the Service's only port, and shares its name with the one the
/// operator sets). `None` when no path can be written so (an item known only by its
/// position).
pub fn removal_patch(paths: &[FieldPath], desired: &Value) -> Option<Value> {
    let mut patch = Map::new();
    let mut any = false;
    for path in paths {
        any |= remove_in(&mut patch, path);
    }
    let mut lists: Vec<&[String]> = paths
        .iter()
        .filter(|p| p.last().is_some_and(|e| e.starts_with("k:")))
        .map(|p| &p[..p.len() - 1])
        .collect();
    lists.sort();
    lists.dedup();
    for list in lists {
        let Some(Value::Array(items)) = value_at(desired, list) else {
            continue;
        };
        if let Some(target) = list_in(&mut patch, list) {
            target.extend(items.iter().cloned());
        }
    }
    any.then_some(Value::Object(patch))
}

/// The list at `path` in a patch built by [`remove_in`] (which created it).
fn list_in<'a>(obj: &'a mut Map<String, Value>, path: &[String]) -> Option<&'a mut Vec<Value>> {
    let name = path.first()?.strip_prefix("f:")?;
    let child = obj.get_mut(name)?;
    match path.get(1) {
        None => child.as_array_mut(),
        Some(next) if next.starts_with("f:") => list_in(child.as_object_mut()?, &path[1..]),
        Some(next) => {
            let json = next.strip_prefix("k:")?;
            let Ok(Value::Object(key)) = serde_json::from_str::<Value>(json) else {
                return None;
            };
            let item = child
                .as_array_mut()?
                .iter_mut()
                .find(|i| key.iter().all(|(k, v)| i.get(k) == Some(v)))?;
            list_in(item.as_object_mut()?, &path[2..])
        }
    }
}

fn remove_in(obj: &mut Map<String, Value>, path: &[String]) -> bool {
    let Some(name) = path.first().and_then(|e| e.strip_prefix("f:")) else {
        return false;
    };
    let Some(next) = path.get(1) else {
        obj.insert(name.to_string(), Value::Null);
        return true;
    };
    if let Some(json) = next.strip_prefix("k:") {
        let Ok(Value::Object(key)) = serde_json::from_str::<Value>(json) else {
            return false;
        };
        let list = obj
            .entry(name.to_string())
            .or_insert_with(|| Value::Array(Vec::new()));
        let Some(items) = list.as_array_mut() else {
            return false;
        };
        let at = match items
            .iter()
            .position(|i| key.iter().all(|(k, v)| i.get(k) == Some(v)))
        {
            Some(at) => at,
            None => {
                items.push(Value::Object(key));
                items.len() - 1
            }
        };
        let Some(item) = items.get_mut(at).and_then(Value::as_object_mut) else {
            return false;
        };
        if path.len() == 2 {
            item.insert("$patch".into(), "delete".into());
            true
        } else {
            remove_in(item, &path[2..])
        }
    } else if let Some(json) = next.strip_prefix("v:") {
        let Ok(value) = serde_json::from_str::<Value>(json) else {
            return false;
        };
        if path.len() != 2 {
            return false;
        }
        let list = obj
            .entry(format!("$deleteFromPrimitiveList/{name}"))
            .or_insert_with(|| Value::Array(Vec::new()));
        match list.as_array_mut() {
            Some(items) => {
                items.push(value);
                true
            }
            None => false,
        }
    } else if next.starts_with("f:") {
        let child = obj
            .entry(name.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        match child.as_object_mut() {
            Some(child) => remove_in(child, &path[1..]),
            None => false,
        }
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1;
    use serde_json::json;

    const US: &str = "premium-operator";

    fn entry(manager: &str, operation: &str, fields: Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(operation.into()),
            fields_v1: Some(FieldsV1(fields)),
            ..Default::default()
        }
    }

    fn path(elements: &[&str]) -> FieldPath {
        elements.iter().map(|e| e.to_string()).collect()
    }

    /// What the operator applies: a trimmed Deployment.
    fn desired() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "aika", "namespace": "portal",
                "labels": {"premium.dev/feature": "aika"},
                "annotations": {"premium.dev/applied-hash": "h1"},
            },
            "spec": {
                "replicas": 1,
                "template": {"spec": {
                    "containers": [{
                        "name": "app", "image": "podinfo:1",
                        "ports": [{"containerPort": 9898, "protocol": "TCP"}],
                        "env": [{"name": "A", "value": ""}],
                        "resources": {"requests": {"cpu": "0.5", "memory": "1024Mi"}},
                    }],
                    "volumes": [{"name": "envoy-config", "configMap": {"name": "aika-sidecar"}}],
                }},
            },
        })
    }

    /// The same object as the API server stores it: defaults filled in, empty values dropped,
    /// quantities rewritten, and a controller's annotation and status added.
    fn stored() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "aika", "namespace": "portal", "uid": "u", "generation": 3,
                "labels": {"premium.dev/feature": "aika"},
                "annotations": {
                    "premium.dev/applied-hash": "h1",
                    "deployment.kubernetes.io/revision": "2",
                },
            },
            "spec": {
                "replicas": 4,
                "progressDeadlineSeconds": 600,
                "template": {"metadata": {"creationTimestamp": null}, "spec": {
                    "containers": [{
                        "name": "app", "image": "podinfo:1",
                        "imagePullPolicy": "IfNotPresent",
                        "terminationMessagePath": "/dev/termination-log",
                        "ports": [{"containerPort": 9898, "protocol": "TCP"}],
                        "env": [{"name": "A"}],
                        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
                    }],
                    "dnsPolicy": "ClusterFirst",
                    "volumes": [{"name": "envoy-config",
                                 "configMap": {"name": "aika-sidecar", "defaultMode": 420}}],
                }},
            },
            "status": {"replicas": 4},
        })
    }

    /// The operator's apply, as the API server records it.
    fn our_fields() -> Value {
        json!({
            "f:metadata": {
                "f:labels": {"f:premium.dev/feature": {}},
                "f:annotations": {"f:premium.dev/applied-hash": {}},
            },
            "f:spec": {
                "f:replicas": {},
                "f:template": {"f:spec": {
                    "f:containers": {"k:{\"name\":\"app\"}": {
                        ".": {}, "f:name": {}, "f:image": {},
                        "f:ports": {"k:{\"containerPort\":9898,\"protocol\":\"TCP\"}": {
                            ".": {}, "f:containerPort": {}, "f:protocol": {},
                        }},
                        "f:env": {"k:{\"name\":\"A\"}": {".": {}, "f:name": {}, "f:value": {}}},
                        "f:resources": {"f:requests": {"f:cpu": {}, "f:memory": {}}},
                    }},
                    "f:volumes": {"k:{\"name\":\"envoy-config\"}": {
                        ".": {}, "f:name": {}, "f:configMap": {"f:name": {}},
                    }},
                }},
            },
        })
    }

    fn live_hash(live: &Value, fields: &Value) -> u64 {
        live_owned_hash(live, fields, &DEPLOYMENT)
    }

    #[test]
    fn a_freshly_applied_object_is_no_drift() {
        assert_eq!(
            live_hash(&stored(), &our_fields()),
            desired_owned_hash(&desired(), &DEPLOYMENT),
            "defaults, a foreign annotation, status, the stored spelling of quantities and the HPA's replicas are no drift"
        );
    }

    #[test]
    fn a_changed_or_missing_owned_field_is_drift() {
        let want = desired_owned_hash(&desired(), &DEPLOYMENT);
        // `kubectl set image`: the new value, and the field is no longer ours.
        let mut live = stored();
        live["spec"]["template"]["spec"]["containers"][0]["image"] = json!("evil:1");
        assert_ne!(live_hash(&live, &our_fields()), want);
        let mut fields = our_fields();
        fields["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"app\"}"]
            .as_object_mut()
            .unwrap()
            .remove("f:image");
        assert_ne!(live_hash(&live, &fields), want);
        // A label removed: gone from the object and from the set.
        let mut live = stored();
        live["metadata"]["labels"] = json!({});
        let mut fields = our_fields();
        fields["f:metadata"]["f:labels"] = json!({});
        assert_ne!(live_hash(&live, &fields), want);
        // A value changed by someone who borrowed the operator's field manager name.
        let mut live = stored();
        live["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"] = json!("other");
        assert_ne!(live_hash(&live, &our_fields()), want);
    }

    #[test]
    fn strays_are_foreign_fields_where_only_the_operator_writes() {
        let managed = vec![
            entry(US, "Apply", our_fields()),
            // `kubectl patch` added a volume and a command, and set an annotation.
            entry(
                "kubectl-patch",
                "Update",
                json!({
                    "f:metadata": {"f:annotations": {"f:note": {}}},
                    "f:spec": {"f:template": {
                        "f:metadata": {"f:annotations": {"f:kubectl.kubernetes.io/restartedAt": {}}},
                        "f:spec": {
                            "f:containers": {"k:{\"name\":\"app\"}": {"f:command": {}}},
                            "f:volumes": {"k:{\"name\":\"extra\"}": {
                                ".": {}, "f:name": {}, "f:emptyDir": {},
                            }},
                        },
                    }},
                }),
            ),
            // The HPA's replicas, through the scale subresource and as an update.
            ManagedFieldsEntry {
                subresource: Some("scale".into()),
                ..entry(
                    "kube-controller-manager",
                    "Update",
                    json!({"f:spec": {"f:replicas": {}}}),
                )
            },
            entry(
                "kube-controller-manager",
                "Update",
                json!({"f:spec": {"f:replicas": {}}}),
            ),
        ];
        let found = strays(&managed, US, &DEPLOYMENT);
        let containers = ["f:spec", "f:template", "f:spec", "f:containers"];
        let command: Vec<&str> = containers
            .iter()
            .copied()
            .chain(["k:{\"name\":\"app\"}", "f:command"])
            .collect();
        let volume = [
            "f:spec",
            "f:template",
            "f:spec",
            "f:volumes",
            "k:{\"name\":\"extra\"}",
        ];
        assert_eq!(found, vec![path(&command), path(&volume)]);
        // Nothing foreign, nothing found; a field both own is no stray.
        assert!(strays(&managed[..1], US, &DEPLOYMENT).is_empty());
        let shared = entry(
            "other",
            "Apply",
            json!({"f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {"f:image": {}}}}}}}),
        );
        assert!(strays(&[managed[0].clone(), shared], US, &DEPLOYMENT).is_empty());
    }

    #[test]
    fn only_strays_the_desired_object_lacks_are_removed() {
        let image = path(&[
            "f:spec",
            "f:template",
            "f:spec",
            "f:containers",
            "k:{\"name\":\"app\"}",
            "f:image",
        ]);
        let volume = path(&[
            "f:spec",
            "f:template",
            "f:spec",
            "f:volumes",
            "k:{\"name\":\"extra\"}",
        ]);
        assert!(
            sets(&desired(), &image),
            "a taken-over field is applied back"
        );
        assert!(!sets(&desired(), &volume));
        let port = path(&["f:spec", "f:ports", "k:{\"port\":81,\"protocol\":\"TCP\"}"]);
        let selector = path(&["f:spec", "f:selector", "f:extra"]);
        let finalizer = path(&["f:spec", "f:list", "v:\"x\""]);
        let none = json!({});
        assert_eq!(
            removal_patch(&[volume.clone(), port, selector, finalizer], &none),
            Some(json!({
                "spec": {
                    "template": {"spec": {"volumes": [{"name": "extra", "$patch": "delete"}]}},
                    "ports": [{"port": 81, "protocol": "TCP", "$patch": "delete"}],
                    "selector": {"extra": null},
                    "$deleteFromPrimitiveList/list": ["x"],
                },
            }))
        );
        let command = path(&[
            "f:spec",
            "f:template",
            "f:spec",
            "f:containers",
            "k:{\"name\":\"app\"}",
            "f:command",
        ]);
        // A list that loses items gets the desired ones with it.
        let volumes = &desired()["spec"]["template"]["spec"]["volumes"][0];
        assert_eq!(
            removal_patch(&[command, volume], &desired()),
            Some(json!({"spec": {"template": {"spec": {
                "containers": [{"name": "app", "command": null}],
                "volumes": [{"name": "extra", "$patch": "delete"}, volumes],
            }}}}))
        );
        let port = path(&["f:spec", "f:ports", "k:{\"port\":81,\"protocol\":\"TCP\"}"]);
        let service = json!({"spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}});
        assert_eq!(
            removal_patch(&[port], &service),
            Some(json!({"spec": {"ports": [
                {"port": 81, "protocol": "TCP", "$patch": "delete"},
                {"name": "http", "port": 80, "protocol": "TCP"},
            ]}}))
        );
        assert_eq!(
            removal_patch(&[path(&["f:spec", "f:list", "i:0"])], &none),
            None
        );
    }
}
