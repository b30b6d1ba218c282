//! Kubernetes Events, each published as a new `events.k8s.io/v1` object.
//!
//! NB: not kube-runtime's `Recorder`, for two reasons found under load:
//! - it folds every later event with the same type, reason, action and regarding object into a *series* of the
//!   first one, patched with the first one's note: a second `Rotated` event within its 6-minute cache still said
//!   "rotated to key (the first new key)", and a second `ScaledUp` named the first scale's replica counts;
//! - it keeps every event it published in memory for 6 minutes, scanned under a global write lock on each publish:
//!   10,000 new keys meant 10,000 cached events.
//!
//! Keyward's notes carry facts (key ids, replica counts), and its events are rare by construction (issue, rotation,
//! grace end, restart, scaling, override and conflict transitions; never once per reconcile), so each is its own
//! Event and nothing needs folding. RBAC: `create` on `events.k8s.io` `events`, nothing else.

use std::sync::atomic::{AtomicU64, Ordering};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
pub use kube::runtime::events::{Event, EventType, Reporter};

/// Publishes events as one controller.
pub struct Publisher {
    client: kube::Client,
    reporter: Reporter,
    /// Makes names unique among events published in the same nanosecond.
    seq: AtomicU64,
}

impl Publisher {
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        Publisher { client, reporter, seq: AtomicU64::new(0) }
    }

    /// Keyward's publisher: controller `keyward`, instance `$POD_NAME` (set by the chart) when there is one.
    pub fn keyward(client: kube::Client) -> Self {
        Publisher::new(client, Reporter { controller: "keyward".into(), instance: std::env::var("POD_NAME").ok() })
    }

    /// Creates the event about `regarding` in its namespace.
    pub async fn publish(&self, ev: &Event, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let event = build(&self.reporter, ev, regarding, Timestamp::now(), seq);
        let ns = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), ns);
        api.create(&PostParams::default(), &event).await.map(|_| ())
    }
}

/// The Event object (pure). Its name is `<regarding name>.<hex nanoseconds><hex sequence>`, the regarding name cut
/// so the whole stays within the 253 characters of a name.
fn build(reporter: &Reporter, ev: &Event, regarding: &ObjectReference, now: Timestamp, seq: u64) -> K8sEvent {
    let suffix = format!(".{:x}{:x}", now.as_nanosecond(), seq);
    let base = regarding.name.as_deref().unwrap_or(&reporter.controller);
    let cut = base.char_indices().nth(253 - suffix.len()).map_or(base.len(), |(i, _)| i);
    K8sEvent {
        action: Some(ev.action.clone()),
        reason: Some(ev.reason.clone()),
        note: ev.note.clone(),
        event_time: Some(MicroTime(now)),
        regarding: Some(regarding.clone()),
        related: ev.secondary.clone(),
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(reporter.instance.clone().unwrap_or_else(|| reporter.controller.clone())),
        type_: Some(match ev.type_ {
            EventType::Normal => "Normal".into(),
            EventType::Warning => "Warning".into(),
        }),
        metadata: ObjectMeta {
            name: Some(format!("{}{suffix}", &base[..cut])),
            namespace: regarding.namespace.clone(),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reporter() -> Reporter {
        Reporter { controller: "keyward".into(), instance: None }
    }

    fn ev(note: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: "Rotated".into(),
            note: Some(note.into()),
            action: "Reconcile".into(),
            secondary: None,
        }
    }

    fn regarding(name: &str) -> ObjectReference {
        ObjectReference { name: Some(name.into()), namespace: Some("ns".into()), ..Default::default() }
    }

    #[test]
    fn each_event_is_new_and_keeps_its_own_note() {
        let now = Timestamp::from_second(1_800_000_000).expect("time");
        let a = build(&reporter(), &ev("rotated to key aaa"), &regarding("k"), now, 0);
        let b = build(&reporter(), &ev("rotated to key bbb"), &regarding("k"), now, 1);
        assert_ne!(a.metadata.name, b.metadata.name, "same nanosecond, different names");
        assert_eq!(a.note.as_deref(), Some("rotated to key aaa"));
        assert_eq!(b.note.as_deref(), Some("rotated to key bbb"));
        assert!(a.series.is_none() && a.deprecated_count.is_none());
        assert_eq!(a.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(a.reporting_instance.as_deref(), Some("keyward"));
        assert_eq!(a.type_.as_deref(), Some("Normal"));
    }

    #[test]
    fn a_long_name_is_cut_to_fit() {
        let now = Timestamp::from_second(1_800_000_000).expect("time");
        let e = build(&reporter(), &ev("x"), &regarding(&"a".repeat(253)), now, 7);
        let name = e.metadata.name.expect("name");
        assert!(name.len() <= 253, "{}", name.len());
        assert!(name.starts_with("aaaa") && name.ends_with(&format!("{:x}7", now.as_nanosecond())));
    }
}
