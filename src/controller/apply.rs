//! Writing owned objects: server-side apply under one field manager, skipped when the cache
//! already holds what would be written, and never over an object someone else owns.

use std::fmt::Debug;
use std::sync::Arc;

use kube::api::{Api, DeleteParams, Patch, PatchParams, PropagationPolicy};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tracing::warn;

use super::Error;
use super::context::Context;
use super::owned::OwnedStore;

use crate::core::drift::{self, FieldPath};
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

/// The view of an owned object: the cached one; none, without asking the API server, when no
/// object of the kind uses the name (neither of the kind's watches holds it: see
/// [`OwnedStore`]); otherwise the live object's, read: someone else's, or ours with its
/// feature label removed (which took it out of the labelled watch).
pub async fn observe_owned<K>(
    ctx: &Context,
    store: &OwnedStore,
    kind: &'static str,
    namespace: &str,
    name: &str,
) -> Result<Option<Arc<OwnedView>>, Error>
where
    K: OwnedKind,
{
    if let Some(cached) = store.get(namespace, name) {
        return Ok(Some(cached));
    }
    if !store.is_other(namespace, name) {
        return Ok(None);
    }
    read_view::<K>(ctx, kind, namespace, name).await
}

/// The live object's view, read from the API server.
async fn read_view<K>(
    ctx: &Context,
    kind: &'static str,
    namespace: &str,
    name: &str,
) -> Result<Option<Arc<OwnedView>>, Error>
where
    K: OwnedKind,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    Ok(api
        .get_opt(name)
        .await
        .map_err(|e| Error::kube(format!("reading {kind} {namespace}/{name}"), e))?
        .map(|live| Arc::new(live.view())))
}

/// A kind of object a feature owns and the operator applies: namespaced, serializable both
/// ways, and cached as an [`OwnedView`].
pub trait OwnedKind:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Signalled
    + Send
    + Sync
{
}

impl<K> OwnedKind for K where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
        + Signalled
        + Send
        + Sync
{
}

/// [`apply_over`] the object's current view ([`observe_owned`]).
pub async fn apply_owned<K>(
    ctx: &Context,
    store: &OwnedStore,
    kind: &'static str,
    desired: K,
    hash_input: &impl Serialize,
    owner_uid: &str,
    also_equal: impl Fn(&OwnedView) -> bool,
) -> Result<Applied, Error>
where
    K: OwnedKind,
{
    let current = observe_owned::<K>(
        ctx,
        store,
        kind,
        &desired.namespace().unwrap_or_default(),
        &desired.name_any(),
    )
    .await?;
    apply_over(
        ctx, current, kind, desired, hash_input, owner_uid, also_equal,
    )
    .await
}

/// What writing a desired object over its current view takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// A same-named object this feature does not control: left alone.
    Conflict,
    /// The object holds what would be written, and nobody added anything: nothing to send.
    Unchanged,
    /// First remove `removals` (what others added where only the operator writes), then apply,
    /// unless `in_place`: the object already holds everything the apply would set.
    Send {
        removals: Vec<FieldPath>,
        in_place: bool,
    },
}

/// Compares the desired object (as JSON, with its applied `hash` and the `owned` hash of the
/// fields its apply sets) with the `current` view. Strays the apply takes over (it sets them)
/// need no removal.
pub fn what_to_write(
    current: Option<&OwnedView>,
    owner_uid: &str,
    desired_json: &serde_json::Value,
    hash: &str,
    owned: u64,
    also_equal: impl Fn(&OwnedView) -> bool,
) -> Write {
    let Some(current) = current else {
        return Write::Send {
            removals: Vec::new(),
            in_place: false,
        };
    };
    if !current.controlled_by(owner_uid) {
        return Write::Conflict;
    }
    let removals: Vec<FieldPath> = current
        .written
        .strays
        .iter()
        .filter(|p| !drift::sets(desired_json, p))
        .cloned()
        .collect();
    let in_place = current.written.applied_hash.as_deref() == Some(hash)
        && current.written.owned == Some(owned)
        && also_equal(current);
    if in_place && removals.is_empty() {
        return Write::Unchanged;
    }
    Write::Send { removals, in_place }
}

/// One owned object being written, and where its requests go.
struct Target<'a, K> {
    ctx: &'a Context,
    api: Api<K>,
    kind: &'static str,
    namespace: &'a str,
    name: &'a str,
}

impl<K> Target<'_, K> {
    /// The write failed or was refused: its echo will not come.
    fn forget_echo(&self) {
        self.ctx.echoes.forget(self.kind, self.namespace, self.name);
    }
}

/// Makes the object `desired`, given its `current` view: applies it unless the object carries
/// the same applied hash, the fields the operator owns still hold what it would write (nobody
/// changed them: see [`drift`]) and `also_equal` holds for the view; then removes whatever
/// others added where only the operator writes, which an apply leaves in place.
///
/// `hash_input` is what the applied hash covers: the desired object minus fields another
/// controller may legitimately change (the Deployment's replicas, moved by the HPA).
pub async fn apply_over<K>(
    ctx: &Context,
    current: Option<Arc<OwnedView>>,
    kind: &'static str,
    mut desired: K,
    hash_input: &impl Serialize,
    owner_uid: &str,
    also_equal: impl Fn(&OwnedView) -> bool,
) -> Result<Applied, Error>
where
    K: OwnedKind,
{
    let conflict = match apply_once(
        ctx,
        current.as_deref(),
        kind,
        &mut desired,
        hash_input,
        owner_uid,
        &also_equal,
    )
    .await?
    {
        Ok(applied) => return Ok(applied),
        Err(conflict) => conflict,
    };
    // A first write met an object created under this name since the watches last looked:
    // decided again over what is there (someone else's is left alone).
    let (name, namespace) = (desired.name_any(), desired.namespace().unwrap_or_default());
    let gone_again = |conflict| {
        Error::kube(
            format!("applying {kind} {namespace}/{name}"),
            kube::Error::Api(conflict),
        )
    };
    let Some(live) = read_view::<K>(ctx, kind, &namespace, &name).await? else {
        // Gone again: the retry starts over.
        return Err(gone_again(conflict));
    };
    apply_once(
        ctx,
        Some(&live),
        kind,
        &mut desired,
        hash_input,
        owner_uid,
        &also_equal,
    )
    .await?
    .map_err(gone_again)
}

/// One pass of [`apply_over`]. A first write (no object seen) is not forced, so it takes no
/// field from anyone: an object created since makes it conflict, and the API server's answer
/// comes back as `Err` for the caller to read the object and decide again.
async fn apply_once<K>(
    ctx: &Context,
    current: Option<&OwnedView>,
    kind: &'static str,
    desired: &mut K,
    hash_input: &impl Serialize,
    owner_uid: &str,
    also_equal: &impl Fn(&OwnedView) -> bool,
) -> Result<Result<Applied, Box<kube::core::Status>>, Error>
where
    K: OwnedKind,
{
    let name = desired.name_any();
    let namespace = desired.namespace().unwrap_or_default();
    let hash = hash_of(hash_input);
    desired
        .annotations_mut()
        .insert(APPLIED_HASH_ANNOTATION.to_string(), hash.clone());
    let desired_json = serde_json::to_value(&*desired)
        .map_err(|e| Error::Invalid(format!("{kind} {namespace}/{name} as JSON: {e}")))?;
    let owned = drift::desired_owned_hash(&desired_json, &K::DRIFT);
    let write = what_to_write(current, owner_uid, &desired_json, &hash, owned, also_equal);
    let (removals, in_place) = match write {
        Write::Conflict => {
            return Ok(Ok(Applied::Conflict(format!(
                "{kind} {namespace}/{name} already exists and is not owned by this PremiumFeature; rename the feature or remove that {kind}"
            ))));
        }
        Write::Unchanged => return Ok(Ok(Applied::Unchanged)),
        Write::Send { removals, in_place } => (removals, in_place),
    };
    let target = Target {
        ctx,
        api: Api::namespaced(ctx.client.clone(), &namespace),
        kind,
        namespace: &namespace,
        name: &name,
    };
    // What the watch will show once the writes below land: the echo wakes nobody.
    let mut expected = desired.view().written;
    expected.owned = Some(owned);
    // Remembered before the requests: the watch may deliver the echo before the answer.
    ctx.echoes.remember(kind, &namespace, &name, expected);
    let removed = remove_strays(&target, &removals, &desired_json).await?;
    if !in_place {
        return apply_desired(&target, &*desired, current.is_some()).await;
    }
    // The removal put back nothing the operator owns (it holds the desired values).
    if !removed {
        target.forget_echo();
        return Ok(Ok(Applied::Unchanged));
    }
    Ok(Ok(Applied::Written))
}

/// Removes what others added where only the operator writes; whether anything was sent. Done
/// before the apply: a stray may clash with what the apply sets (a Service port renumbered by
/// hand keeps the port's name), and the patch carries the desired items of every list it
/// removes from, so it never leaves one empty.
async fn remove_strays<K: OwnedKind>(
    target: &Target<'_, K>,
    removals: &[FieldPath],
    desired_json: &serde_json::Value,
) -> Result<bool, Error> {
    let Some(patch) = drift::removal_patch(removals, desired_json) else {
        return Ok(false);
    };
    let Target {
        ctx,
        kind,
        namespace,
        name,
        ..
    } = *target;
    let params = PatchParams {
        field_manager: Some(ctx.settings.field_manager.clone()),
        ..Default::default()
    };
    match target
        .api
        .patch(name, &params, &Patch::Strategic(&patch))
        .await
    {
        Ok(_) => {
            count_write(ctx, kind);
            Ok(true)
        }
        // Nothing the feature can change; the apply still puts back what it sets.
        Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
            warn!(%kind, %namespace, %name, error = %s.message, "could not remove fields others added");
            Ok(false)
        }
        Err(e) => {
            target.forget_echo();
            Err(Error::kube(
                format!("removing what others added to {kind} {namespace}/{name}"),
                e,
            ))
        }
    }
}

/// Server-side applies `desired` under the operator's field manager, then drops the record of
/// its own update. Unless `force`, a field another writer holds with another value makes the
/// apply conflict and nothing is written: the API server's answer comes back as `Err`.
async fn apply_desired<K: OwnedKind>(
    target: &Target<'_, K>,
    desired: &K,
    force: bool,
) -> Result<Result<Applied, Box<kube::core::Status>>, Error> {
    let Target {
        ctx,
        kind,
        namespace,
        name,
        ..
    } = *target;
    let mut params = PatchParams::apply(&ctx.settings.field_manager);
    if force {
        params = params.force();
    }
    let applied = match target
        .api
        .patch(name, &params, &Patch::Apply(desired))
        .await
    {
        Ok(applied) => applied,
        Err(kube::Error::Api(s)) if s.code == 409 && !force => {
            target.forget_echo();
            return Ok(Err(s));
        }
        Err(kube::Error::Api(s)) if refused_for_its_content(&s) => {
            target.forget_echo();
            return Ok(Ok(Applied::Refused(format!(
                "the API server refused the {kind} built from this feature: {}",
                s.message
            ))));
        }
        Err(e) => {
            target.forget_echo();
            return Err(Error::kube(
                format!("applying {kind} {namespace}/{name}"),
                e,
            ));
        }
    };
    count_write(ctx, kind);
    forget_own_update(ctx, &target.api, kind, &applied).await;
    Ok(Ok(Applied::Written))
}

/// Removes the record of the operator's own update from `applied` (see
/// [`drift::update_entry`]), only if nothing changed the object since.
async fn forget_own_update<K>(ctx: &Context, api: &Api<K>, kind: &'static str, applied: &K)
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned,
{
    let managed = applied.meta().managed_fields.as_deref().unwrap_or(&[]);
    let Some(at) = drift::update_entry(managed, &ctx.settings.field_manager) else {
        return;
    };
    let ops = serde_json::json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": applied.resource_version()},
        {"op": "remove", "path": format!("/metadata/managedFields/{at}")},
    ]);
    let Ok(ops) = serde_json::from_value(ops) else {
        return;
    };
    let patch: Patch<()> = Patch::Json(ops);
    let name = applied.name_any();
    match api.patch(&name, &PatchParams::default(), &patch).await {
        Ok(_) => count_write(ctx, kind),
        // Changed meanwhile: the next repair tries again.
        Err(e) => warn!(%kind, %name, error = %e, "could not drop the record of a repair"),
    }
}

fn count_write(ctx: &Context, kind: &'static str) {
    ctx.metrics.count_write(kind);
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
    count_write(ctx, kind);
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

    fn path(p: &[&str]) -> FieldPath {
        p.iter().map(|s| s.to_string()).collect()
    }

    /// A view of an object this feature controls, last applied with hash "h" and owned hash 7.
    fn ours(strays: Vec<FieldPath>) -> OwnedView {
        OwnedView {
            written: crate::core::signal::Written {
                applied_hash: Some("h".into()),
                controller_uid: Some("u1".into()),
                owned: Some(7),
                strays: strays.into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn what_is_sent_follows_from_the_view() {
        let desired = serde_json::json!({"metadata": {"labels": {"app": "a"}}, "data": {"k": "v"}});
        let always = |_: &OwnedView| true;
        let send = |removals: Vec<FieldPath>, in_place| Write::Send { removals, in_place };
        // Not seen yet: applied, nothing to remove.
        assert_eq!(
            what_to_write(None, "u1", &desired, "h", 7, always),
            send(vec![], false)
        );
        // Someone else's object of that name.
        assert_eq!(
            what_to_write(Some(&ours(vec![])), "u2", &desired, "h", 7, always),
            Write::Conflict
        );
        // Holds what would be written.
        assert_eq!(
            what_to_write(Some(&ours(vec![])), "u1", &desired, "h", 7, always),
            Write::Unchanged
        );
        // A new hash, a changed owned field, or the caller's own check: applied again.
        for (hash, owned, also) in [("h2", 7, true), ("h", 8, true), ("h", 7, false)] {
            assert_eq!(
                what_to_write(Some(&ours(vec![])), "u1", &desired, hash, owned, |_| also),
                send(vec![], false),
                "{hash} {owned} {also}"
            );
        }
    }

    #[test]
    fn only_strays_the_apply_does_not_set_are_removed() {
        let desired = serde_json::json!({"metadata": {"labels": {"app": "a"}}, "data": {"k": "v"}});
        let added = path(&["f:metadata", "f:labels", "f:extra"]);
        let taken_over = path(&["f:data", "f:k"]);
        // The apply sets one of them: only the other needs a removal, and nothing else moved.
        let view = ours(vec![added.clone(), taken_over.clone()]);
        assert_eq!(
            what_to_write(Some(&view), "u1", &desired, "h", 7, |_| true),
            Write::Send {
                removals: vec![added.clone()],
                in_place: true
            }
        );
        // Changed as well: removed, then applied.
        assert_eq!(
            what_to_write(Some(&view), "u1", &desired, "h2", 7, |_| true),
            Write::Send {
                removals: vec![added],
                in_place: false
            }
        );
        // A stray the apply takes over needs nothing.
        assert_eq!(
            what_to_write(
                Some(&ours(vec![taken_over])),
                "u1",
                &desired,
                "h",
                7,
                |_| true
            ),
            Write::Unchanged
        );
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
