//! What each action of the ApiKey controller says in its event. Pure; key ids only, never key material.

use super::book::Book;
use super::plan::{Action, IssueKind, Revocation};
use crate::runtime::events::{Event, EventType};

/// The event for an action that wrote the Secret.
pub(super) fn event_for(action: &Action, b: &Book, secret: &str) -> Event {
    let id = b.key_id.as_deref().unwrap_or("-");
    let (type_, reason, note) = match action {
        Action::Issue(IssueKind::First) => {
            (EventType::Normal, "Issued", format!("issued key {id} into Secret {secret}"))
        }
        Action::Issue(IssueKind::Resumed) => {
            (EventType::Normal, "Issued", format!("issued a fresh key {id} into Secret {secret}"))
        }
        Action::Issue(IssueKind::Regenerated) => (
            EventType::Warning,
            "KeyRegenerated",
            format!("Secret {secret} was deleted; issued a NEW key {id} (the old key is gone)"),
        ),
        Action::Issue(IssueKind::Tampered) => (
            EventType::Warning,
            "KeyTampered",
            format!(
                "the key material in Secret {secret} no longer matched its key-id; treated as compromised and replaced by key {id}"
            ),
        ),
        Action::Rotate { manual } => (
            EventType::Normal,
            "Rotated",
            format!(
                "rotated to key {id}{}{}",
                if *manual { " on request" } else { "" },
                b.previous_key_id
                    .as_deref()
                    .map(|p| format!(
                        "; previous key {p} stays valid until {}",
                        b.previous_expires_at.map(|t| t.to_string()).unwrap_or_default()
                    ))
                    .unwrap_or_default()
            ),
        ),
        Action::RetirePrevious { idle_since } => (
            EventType::Normal,
            "PreviousKeyRetired",
            format!(
                "no traffic on the previous key since {idle_since} (rotation.retirePreviousWhenIdle): removed before \
                 its grace period ended"
            ),
        ),
        Action::DropPrevious => (
            EventType::Normal,
            "PreviousKeyRemoved",
            "the grace period ended; the previous key was removed".to_string(),
        ),
        Action::Remove(Revocation::Suspended) => {
            (EventType::Normal, "Suspended", "the key is suspended; key material removed".to_string())
        }
        Action::Remove(Revocation::Abused) => (
            EventType::Warning,
            "Suspended",
            "the key is suspended for abuse by its RateLimitPolicy (SuspendedForAbuse); key material removed"
                .to_string(),
        ),
        Action::Remove(Revocation::Expired) => {
            (EventType::Normal, "Expired", "the key expired; key material removed".to_string())
        }
        Action::Reseal => (EventType::Normal, "Sealed", format!("Secret {secret} sealed with the current seal key")),
        Action::Reshape => (
            EventType::Normal,
            "Reshaped",
            format!("Secret {secret} rewritten in the shape the spec asks for, with the same keys"),
        ),
        Action::Nothing => (EventType::Normal, "Reconciled", String::new()),
    };
    Event { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary: None }
}
