//! Which events of owned objects are worth a reconcile.
//!
//! A feature's reconcile reads two things of an object it owns: what the operator itself wrote
//! (the applied-hash annotation, the Deployment's replicas, the controller reference) and what
//! other controllers report (the Deployment's rollout health). Every other change — a
//! Deployment status field that moves no verdict, an HPA's metrics, the echo of the operator's
//! own write — wakes nobody. Pure: the watch shell keeps each object's [`OwnedView`] (which is
//! also its cache) and asks [`owner_to_wake`].

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::{Resource, ResourceExt};
use serde::Serialize;

use crate::api::FIELD_MANAGER;
use crate::core::build::RESTARTED_AT_ANNOTATION;
use crate::core::drift::{self, FieldPath, Rules};
use crate::core::status::DeploymentHealth;

/// Annotation holding the hash of what the operator last applied to an object.
pub const APPLIED_HASH_ANNOTATION: &str = "premium.dev/applied-hash";

/// The part of an owned object the operator writes and later compares against.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Written {
    pub applied_hash: Option<String>,
    /// `spec.replicas` of a Deployment (the HPA moves it too); `None` for other kinds.
    pub replicas: Option<i32>,
    pub controller_uid: Option<String>,
    pub deleting: bool,
    /// Hash of the live values of the fields the operator's apply owns
    /// ([`drift::live_owned_hash`]); `None` when it owns none (an object it never applied).
    pub owned: Option<u64>,
    /// Fields others set where only the operator writes ([`drift::strays`]); empty unless
    /// someone meddled, so a view stays small.
    pub strays: Box<[FieldPath]>,
}

/// What a reconcile of the owner reads of one owned object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Signal {
    pub written: Written,
    /// What other controllers report that changes a decision; `None` when nothing is read.
    pub observed: Option<Observed>,
}

/// The Deployment's rollout, reduced to what moves the feature's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Observed {
    pub ready: bool,
    pub lost_availability: bool,
    pub progress_deadline_exceeded: bool,
    /// Ready pods, capped at the desired count: the surge pod of a rolling update that is
    /// ready next to the old one changes nothing a person reads.
    pub ready_pods: i32,
}

/// All the operator keeps of an owned object between events: what its reconcile reads and
/// what decides whether an event wakes the owner. The cached copy of a Deployment used to be the
/// object itself minus the pod spec (about 3 KB on the heap per object, most of it the inline
/// size of the types and their label and annotation maps); a view is a few short strings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OwnedView {
    /// Name of the PremiumFeature holding the controller reference, if one does.
    pub owner: Option<String>,
    pub written: Written,
    /// The rollout, for Deployments only.
    pub health: Option<DeploymentHealth>,
    /// The pod template's restart annotation ([`RESTARTED_AT_ANNOTATION`]), Deployments only.
    pub restarted_at: Option<String>,
}

impl OwnedView {
    /// Whether the object has a controller reference to the object with `uid` (the API server
    /// allows one controller reference per object).
    pub fn controlled_by(&self, uid: &str) -> bool {
        self.written.controller_uid.as_deref() == Some(uid)
    }

    pub fn signal(&self) -> Signal {
        Signal {
            written: self.written.clone(),
            observed: self.health.as_ref().map(|h| Observed {
                ready: h.is_ready(),
                lost_availability: h.lost_availability(),
                progress_deadline_exceeded: h.progress_deadline_exceeded,
                ready_pods: h.ready.min(h.desired).max(0),
            }),
        }
    }
}

/// The owner to wake for an event that turned `previous` into `now`, if any (see
/// [`should_wake`]); `echo` says the operator remembers writing exactly `now.written`. An
/// object without a controller reference any longer still wakes the owner it had.
pub fn owner_to_wake<'a>(
    previous: Option<&'a OwnedView>,
    now: &'a OwnedView,
    echo: bool,
) -> Option<&'a str> {
    let owner = now
        .owner
        .as_deref()
        .or_else(|| previous.and_then(|p| p.owner.as_deref()))?;
    let now_signal = now.signal();
    let expected = echo.then_some(&now.written);
    let previous_signal = previous.map(OwnedView::signal);
    should_wake(previous_signal.as_ref(), &now_signal, expected).then_some(owner)
}

/// Owned kinds, reduced to their [`OwnedView`].
pub trait Signalled: Resource + Serialize {
    /// Where in this kind only the operator writes ([`drift::Rules`]).
    const DRIFT: Rules;

    fn view(&self) -> OwnedView;

    fn signal(&self) -> Signal {
        self.view().signal()
    }
}

fn view_of<K: Signalled>(obj: &K, replicas: Option<i32>) -> OwnedView {
    let controller = obj
        .owner_references()
        .iter()
        .find(|r| r.controller == Some(true));
    let managed = obj.meta().managed_fields.as_deref().unwrap_or(&[]);
    // The object is turned into JSON only for the hash, and dropped with this event.
    let owned = drift::owned_fields(managed, FIELD_MANAGER).and_then(|fields| {
        let live = serde_json::to_value(obj).ok()?;
        Some(drift::live_owned_hash(&live, fields, &K::DRIFT))
    });
    OwnedView {
        owner: controller
            .filter(|r| r.kind == "PremiumFeature")
            .map(|r| r.name.clone()),
        written: Written {
            applied_hash: obj.annotations().get(APPLIED_HASH_ANNOTATION).cloned(),
            replicas,
            controller_uid: controller.map(|r| r.uid.clone()),
            deleting: obj.meta().deletion_timestamp.is_some(),
            owned,
            strays: drift::strays(managed, FIELD_MANAGER, &K::DRIFT).into_boxed_slice(),
        },
        health: None,
        restarted_at: None,
    }
}

/// The Deployment's health, from its status only.
pub fn deployment_health(d: &Deployment) -> DeploymentHealth {
    let st = d.status.as_ref();
    let conds = st.and_then(|s| s.conditions.as_deref()).unwrap_or(&[]);
    DeploymentHealth {
        observed_current: st.and_then(|s| s.observed_generation).is_some()
            && st.and_then(|s| s.observed_generation) == d.metadata.generation,
        desired: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        updated: st.and_then(|s| s.updated_replicas).unwrap_or(0),
        ready: st.and_then(|s| s.ready_replicas).unwrap_or(0),
        available: st.and_then(|s| s.available_replicas).unwrap_or(0),
        available_condition: conds
            .iter()
            .any(|c| c.type_ == "Available" && c.status == "True"),
        progress_deadline_exceeded: conds.iter().any(|c| {
            c.type_ == "Progressing"
                && c.status == "False"
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        }),
    }
}

impl Signalled for Deployment {
    const DRIFT: Rules = drift::DEPLOYMENT;

    fn view(&self) -> OwnedView {
        let spec = self.spec.as_ref();
        let mut view = view_of(self, spec.and_then(|s| s.replicas));
        view.health = Some(deployment_health(self));
        view.restarted_at = spec
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(RESTARTED_AT_ANNOTATION))
            .cloned();
        view
    }
}

impl Signalled for Service {
    const DRIFT: Rules = drift::SERVICE;

    fn view(&self) -> OwnedView {
        view_of(self, None)
    }
}

impl Signalled for ConfigMap {
    const DRIFT: Rules = drift::CONFIGMAP;

    fn view(&self) -> OwnedView {
        view_of(self, None)
    }
}

impl Signalled for HorizontalPodAutoscaler {
    const DRIFT: Rules = drift::HPA;

    fn view(&self) -> OwnedView {
        view_of(self, None)
    }
}

/// Whether an event that turned `previous` into `now` must wake the owner.
///
/// `expected` is what the operator itself last wrote to this object, if it remembers a write:
/// the echo of that write carries nothing the writer does not know already.
///
/// An echo wakes nobody even when its observed part moved: a write carries the status the
/// object had before it, so the only "change" there is the rollout not being observed yet for
/// the new generation, which the writer already assumes.
pub fn should_wake(previous: Option<&Signal>, now: &Signal, expected: Option<&Written>) -> bool {
    if expected == Some(&now.written) {
        return false;
    }
    match previous {
        None => true,
        Some(p) => p.written != now.written || p.observed != now.observed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentSpec, DeploymentStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use proptest::prelude::*;

    fn deployment(replicas: i32, hash: &str, status: Option<DeploymentStatus>) -> Deployment {
        let mut d = Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                ..Default::default()
            }),
            status,
            ..Default::default()
        };
        d.metadata.generation = Some(2);
        d.metadata.annotations = Some([(APPLIED_HASH_ANNOTATION.into(), hash.into())].into());
        d.metadata.owner_references = Some(vec![OwnerReference {
            uid: "u1".into(),
            controller: Some(true),
            ..Default::default()
        }]);
        d
    }

    fn status(observed: i64, updated: i32, ready: i32, available: bool) -> DeploymentStatus {
        DeploymentStatus {
            observed_generation: Some(observed),
            replicas: Some(ready.max(updated)),
            updated_replicas: Some(updated),
            ready_replicas: Some(ready),
            available_replicas: Some(ready),
            conditions: Some(vec![DeploymentCondition {
                type_: "Available".into(),
                status: if available { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn echo_of_own_write_wakes_nobody_but_a_foreign_change_does() {
        let before = deployment(0, "h1", Some(status(2, 0, 0, true))).signal();
        let after = deployment(1, "h2", Some(status(2, 0, 0, true))).signal();
        assert!(!should_wake(Some(&before), &after, Some(&after.written)));
        // The HPA moved replicas: not what the operator wrote.
        let hpa_moved = deployment(2, "h2", Some(status(2, 0, 0, true))).signal();
        assert!(should_wake(Some(&after), &hpa_moved, Some(&after.written)));
        // Nothing remembered: any change of the written part is news.
        assert!(should_wake(Some(&before), &after, None));
    }

    #[test]
    fn the_echo_of_a_spec_write_is_quiet_though_its_generation_is_not_observed_yet() {
        let ready = deployment(1, "h1", Some(status(2, 1, 1, true)));
        let mut written = deployment(1, "h2", Some(status(2, 1, 1, true)));
        written.metadata.generation = Some(3);
        let (before, after) = (ready.signal(), written.signal());
        assert_ne!(
            before.observed, after.observed,
            "generation 3 is not observed yet"
        );
        assert!(!should_wake(Some(&before), &after, Some(&after.written)));
        assert!(should_wake(Some(&before), &after, None));
    }

    #[test]
    fn rollout_steps_wake_only_when_a_verdict_moves() {
        let rolling = deployment(1, "h", Some(status(2, 0, 1, true))).signal();
        let surge_ready = deployment(1, "h", Some(status(2, 1, 2, true))).signal();
        let done = deployment(1, "h", Some(status(2, 1, 1, true))).signal();
        // The surge pod became ready next to the old one: nothing to tell.
        assert!(!should_wake(Some(&rolling), &surge_ready, None));
        // The old pod is gone and the Deployment reports itself complete: Ready.
        assert!(should_wake(Some(&surge_ready), &done, None));
        let lost = deployment(1, "h", Some(status(2, 1, 0, false))).signal();
        assert!(should_wake(Some(&done), &lost, None));
    }

    #[test]
    fn new_objects_wake_unless_just_created_here() {
        let created = deployment(0, "h", None).signal();
        assert!(!should_wake(None, &created, Some(&created.written)));
        assert!(should_wake(None, &created, None));
        let cm = ConfigMap::default().signal();
        assert!(!should_wake(None, &cm, Some(&cm.written)));
    }

    #[test]
    fn deletion_and_ownership_are_written_parts() {
        let a = deployment(1, "h", None);
        let mut b = a.clone();
        b.metadata.deletion_timestamp = Some(crate::core::status::now_time());
        assert!(should_wake(
            Some(&a.signal()),
            &b.signal(),
            Some(&a.signal().written)
        ));
        let mut c = a.clone();
        c.metadata.owner_references = None;
        assert!(should_wake(
            Some(&a.signal()),
            &c.signal(),
            Some(&a.signal().written)
        ));
    }

    #[test]
    fn a_view_keeps_everything_a_reconcile_reads() {
        let mut d = deployment(2, "h", Some(status(2, 1, 1, true)));
        d.metadata.owner_references.as_mut().unwrap()[0].kind = "PremiumFeature".into();
        d.metadata.owner_references.as_mut().unwrap()[0].name = "checkout".into();
        if let Some(spec) = d.spec.as_mut() {
            spec.template.spec = Some(Default::default());
            spec.template.metadata = Some(kube::api::ObjectMeta {
                annotations: Some([(RESTARTED_AT_ANNOTATION.into(), "t".into())].into()),
                ..Default::default()
            });
        }
        let view = d.view();
        assert_eq!(view.owner.as_deref(), Some("checkout"));
        assert_eq!(view.written.applied_hash.as_deref(), Some("h"));
        assert_eq!(view.written.replicas, Some(2));
        assert!(view.controlled_by("u1") && !view.controlled_by("u2"));
        assert_eq!(view.health, Some(deployment_health(&d)));
        assert_eq!(view.restarted_at.as_deref(), Some("t"));
        // Another kind's controller is not an owner to wake, though it still controls it.
        let mut cm = ConfigMap::default();
        cm.metadata.owner_references = Some(vec![OwnerReference {
            kind: "ReplicaSet".into(),
            name: "rs".into(),
            uid: "u9".into(),
            controller: Some(true),
            ..Default::default()
        }]);
        let view = cm.view();
        assert_eq!(view.owner, None);
        assert!(view.controlled_by("u9"));
        assert_eq!((view.health, view.restarted_at), (None, None));
    }

    #[test]
    fn the_owner_to_wake_is_the_one_it_had_when_the_reference_is_gone() {
        let owned = |owner: Option<&str>, hash: &str| OwnedView {
            owner: owner.map(str::to_string),
            written: Written {
                applied_hash: Some(hash.into()),
                controller_uid: owner.map(|_| "u1".to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        let a = owned(Some("checkout"), "h1");
        assert_eq!(owner_to_wake(None, &a, false), Some("checkout"));
        assert_eq!(owner_to_wake(None, &a, true), None, "its own create");
        assert_eq!(owner_to_wake(Some(&a), &a, false), None, "nothing moved");
        let orphaned = owned(None, "h1");
        assert_eq!(owner_to_wake(Some(&a), &orphaned, false), Some("checkout"));
        assert_eq!(
            owner_to_wake(None, &orphaned, false),
            None,
            "nobody to wake"
        );
        let rewritten = owned(Some("checkout"), "h2");
        assert_eq!(owner_to_wake(Some(&a), &rewritten, true), None);
        assert_eq!(owner_to_wake(Some(&a), &rewritten, false), Some("checkout"));
    }

    proptest! {
        // An unchanged signal never wakes; outside echoes, a changed observed part always does.
        #[test]
        fn unchanged_is_quiet_and_health_always_speaks(
            replicas in 0..5i32, updated in 0..5i32, ready in 0..5i32, available: bool,
            ready2 in 0..5i32, available2: bool, remembered: bool,
        ) {
            let s = deployment(replicas, "h", Some(status(2, updated, ready, available))).signal();
            let expected = remembered.then(|| s.written.clone());
            prop_assert!(!should_wake(Some(&s), &s, expected.as_ref()));
            let t = deployment(replicas, "h", Some(status(2, updated, ready2, available2))).signal();
            prop_assert_eq!(should_wake(Some(&s), &t, None), s.observed != t.observed);
        }
    }
}
