use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;

use crate::core::shorten;

/// Longest note kept; the API server refuses notes over 1 KiB.
pub const MAX_NOTE_BYTES: usize = 1000;

/// Who records events: the controller name and this instance (pod name or identity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSource {
    pub controller: String,
    pub instance: String,
}

/// An `events.k8s.io/v1` Event about `regarding`, created once per transition. Named
/// `<object>.<nanoseconds, hex>` as kubectl and client-go do, so names do not collide.
///
/// Each is a new object with no `series`: the operator records transitions, which do not
/// repeat in bursts (recovery restarts are capped per hour), so it keeps no cache of past
/// events to aggregate them (a cache that held every event for minutes, one per feature and
/// transition, and was swept on every publish).
pub fn event(
    regarding: ObjectReference,
    warning: bool,
    reason: &str,
    note: &str,
    source: &EventSource,
    now: Timestamp,
) -> Event {
    let name = format!(
        "{}.{:x}",
        regarding.name.as_deref().unwrap_or(&source.controller),
        now.as_nanosecond()
    );
    Event {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: regarding.namespace.clone(),
            ..Default::default()
        },
        action: Some("Reconcile".into()),
        reason: Some(reason.to_string()),
        note: (!note.is_empty()).then(|| shorten(note, MAX_NOTE_BYTES)),
        type_: Some(if warning { "Warning" } else { "Normal" }.into()),
        event_time: Some(MicroTime(now)),
        reporting_controller: Some(source.controller.clone()),
        reporting_instance: Some(source.instance.clone()),
        regarding: Some(regarding),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn source() -> EventSource {
        EventSource {
            controller: "premium-operator".into(),
            instance: "pod-0".into(),
        }
    }

    fn reference() -> ObjectReference {
        ObjectReference {
            api_version: Some("premium.dev/v1alpha1".into()),
            kind: Some("PremiumFeature".into()),
            name: Some("catalog".into()),
            namespace: Some("shop".into()),
            uid: Some("u-1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn describes_the_object_and_who_recorded_it() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let e = event(reference(), true, "Degraded", "lost pods", &source(), now);
        assert_eq!(e.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(
            e.metadata.name.as_deref(),
            Some(format!("catalog.{:x}", now.as_nanosecond()).as_str())
        );
        assert_eq!(e.regarding, Some(reference()));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reason.as_deref(), Some("Degraded"));
        assert_eq!(e.note.as_deref(), Some("lost pods"));
        assert_eq!(e.reporting_controller.as_deref(), Some("premium-operator"));
        assert_eq!(e.reporting_instance.as_deref(), Some("pod-0"));
        assert_eq!(e.event_time, Some(MicroTime(now)));
        assert!(e.series.is_none());
        let normal = event(reference(), false, "Ready", "", &source(), now);
        assert_eq!(normal.type_.as_deref(), Some("Normal"));
        assert_eq!(normal.note, None);
    }

    proptest! {
        #[test]
        fn notes_fit_the_api_limit_and_keep_their_start(note in "\\PC{0,1500}") {
            let now = Timestamp::from_second(1_700_000_000).unwrap();
            let e = event(reference(), false, "Ready", &note, &source(), now);
            let kept = e.note.unwrap_or_default();
            prop_assert!(kept.len() <= MAX_NOTE_BYTES + '…'.len_utf8());
            prop_assert!(note.starts_with(kept.trim_end_matches('…')));
            if note.len() <= MAX_NOTE_BYTES {
                prop_assert_eq!(kept, note);
            }
        }
    }
}
