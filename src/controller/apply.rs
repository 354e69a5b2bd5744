//! Writing owned objects: server-side apply under one field manager, skipped when the cache
//! already holds what would be written, and never over an object someone else owns.

use std::fmt::Debug;

use kube::api::{Api, DeleteParams, Patch, PatchParams, PropagationPolicy};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::Error;
use super::context::Context;
use super::owned::OwnedStore;
use crate::runtime::metrics::KindLabels;

pub use crate::core::signal::APPLIED_HASH_ANNOTATION;
use crate::core::signal::{OwnedView, Signalled};

/// What happened to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The cache already held exactly this; nothing was sent.
    Unchanged,
    /// Applied.
    Written,
    /// A same-named object exists that this feature does not control; left untouched.
    Conflict(String),
    /// The API server refused the object as invalid: something in the feature's spec that the
    /// CRD schema cannot catch (a malformed resource quantity, say). Retrying cannot help.
    Refused(String),
}

/// A short hash of an object's JSON form.
pub fn hash_of<T: Serialize>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Applies `desired` unless the cached (or, when the cache has none, the live) object already
/// carries the same applied hash and `also_equal` holds for its view.
///
/// `hash_input` is what the hash covers: the desired object minus fields another controller
/// may legitimately change (the Deployment's replicas, moved by the HPA).
pub async fn apply_owned<K>(
    ctx: &Context,
    store: &OwnedStore,
    kind: &'static str,
    mut desired: K,
    hash_input: &impl Serialize,
    owner_uid: &str,
    also_equal: impl Fn(&OwnedView) -> bool,
) -> Result<Applied, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
        + Signalled
        + Send
        + Sync,
{
    let name = desired.name_any();
    let namespace = desired.namespace().unwrap_or_default();
    let hash = hash_of(hash_input);
    desired
        .annotations_mut()
        .insert(APPLIED_HASH_ANNOTATION.to_string(), hash.clone());
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    let current = match store.get(&namespace, &name) {
        Some(cached) => Some(cached),
        // Not in our (label-filtered) cache: it may be someone else's, or ours not yet seen.
        None => api
            .get_opt(&name)
            .await
            .map_err(|e| Error::kube(format!("reading {kind} {namespace}/{name}"), e))?
            .map(|live| std::sync::Arc::new(live.view())),
    };
    if let Some(current) = &current {
        if !current.controlled_by(owner_uid) {
            return Ok(Applied::Conflict(format!(
                "{kind} {namespace}/{name} already exists and is not owned by this PremiumFeature; rename the feature or remove that {kind}"
            )));
        }
        if current.written.applied_hash.as_ref() == Some(&hash) && also_equal(current) {
            return Ok(Applied::Unchanged);
        }
    }
    let params = PatchParams::apply(&ctx.settings.field_manager).force();
    // Remembered before the request: the watch may deliver the echo before the answer.
    ctx.echoes
        .remember(kind, &namespace, &name, desired.view().written);
    match api.patch(&name, &params, &Patch::Apply(&desired)).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if refused_for_its_content(&s) => {
            ctx.echoes.forget(kind, &namespace, &name);
            return Ok(Applied::Refused(format!(
                "the API server refused the {kind} built from this feature: {}",
                s.message
            )));
        }
        Err(e) => {
            ctx.echoes.forget(kind, &namespace, &name);
            return Err(Error::kube(
                format!("applying {kind} {namespace}/{name}"),
                e,
            ));
        }
    }
    ctx.metrics
        .object_writes
        .get_or_create(&KindLabels { kind })
        .inc();
    Ok(Applied::Written)
}

/// Whether the API server refused an object for what it contains, so that sending it again
/// cannot help: 400 and 422, and the 500 that server-side apply answers when it cannot even
/// merge the object (duplicate list keys, such as two env entries of one name) or when it is
/// too large to store.
pub fn refused_for_its_content(s: &kube::core::Status) -> bool {
    match s.code {
        400 | 422 => true,
        500 => {
            let m = s.message.to_lowercase();
            ["duplicate", "invalid", "typed patch object", "too large"]
                .iter()
                .any(|w| m.contains(w))
        }
        _ => false,
    }
}

/// Deletes an owned object if the cache holds it and this feature controls it.
pub async fn delete_owned<K>(
    ctx: &Context,
    store: &OwnedStore,
    kind: &'static str,
    namespace: &str,
    name: &str,
    owner_uid: &str,
    foreground: bool,
) -> Result<bool, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
        + Send
        + Sync,
{
    let Some(cached) = store.get(namespace, name) else {
        return Ok(false);
    };
    if !cached.controlled_by(owner_uid) {
        return Ok(false);
    }
    if cached.written.deleting {
        return Ok(true);
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let params = DeleteParams {
        propagation_policy: Some(if foreground {
            PropagationPolicy::Foreground
        } else {
            PropagationPolicy::Background
        }),
        ..Default::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(false),
        Err(e) => {
            return Err(Error::kube(
                format!("deleting {kind} {namespace}/{name}"),
                e,
            ));
        }
    }
    ctx.metrics
        .object_writes
        .get_or_create(&KindLabels { kind })
        .inc();
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn status(code: u16, message: &str) -> kube::core::Status {
        serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": code, "message": message, "reason": "InternalError",
        }))
        .unwrap()
    }

    #[test]
    fn an_object_the_server_cannot_merge_is_refused_not_retried() {
        // What server-side apply answers for a Deployment whose env lists one name twice.
        let dup = status(
            500,
            "failed to create typed patch object (/; apps/v1, Kind=Deployment): .spec.template.spec.containers[name=\"app\"].env: duplicate entries for key [name=\"A\"]",
        );
        assert!(refused_for_its_content(&dup));
        assert!(refused_for_its_content(&status(
            422,
            "Deployment.apps is invalid"
        )));
        assert!(refused_for_its_content(&status(400, "bad request")));
        // A server in trouble is retried.
        assert!(!refused_for_its_content(&status(
            500,
            "etcdserver: leader changed"
        )));
        assert!(!refused_for_its_content(&status(
            503,
            "the server is currently unable to handle the request"
        )));
        assert!(!refused_for_its_content(&status(409, "conflict")));
    }

    #[test]
    fn hash_is_stable_and_sensitive() {
        let a = serde_json::json!({"a": 1, "b": [1, 2]});
        let b = serde_json::json!({"a": 1, "b": [2, 1]});
        assert_eq!(hash_of(&a), hash_of(&a.clone()));
        assert_ne!(hash_of(&a), hash_of(&b));
        assert_eq!(hash_of(&a).len(), 16);
    }

    #[test]
    fn only_a_controller_reference_counts() {
        let mut cm = ConfigMap {
            metadata: ObjectMeta {
                owner_references: Some(vec![OwnerReference {
                    uid: "u1".into(),
                    controller: Some(false),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(!cm.view().controlled_by("u1"));
        cm.metadata.owner_references.as_mut().unwrap()[0].controller = Some(true);
        assert!(cm.view().controlled_by("u1"));
        assert!(!cm.view().controlled_by("u2"));
    }
}
