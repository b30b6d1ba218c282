//! The ApiKey decision, pure: from the spec, what the Secret's bookkeeping says, and the time, decide the one
//! write (if any) this reconcile makes, the Ready condition, and when to look again. Nothing here talks to the API
//! server or reads a clock.

use jiff::{SignedDuration, Timestamp};

use super::book::Book;
use crate::api::ApiKeySpec;
use crate::conditions::Desired;
use crate::schedule::RotationPlan;

/// The Secret as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretState {
    /// No Secret of that name.
    Missing,
    /// A Secret of that name that this ApiKey does not control: never touched.
    Foreign,
    /// Our Secret, with its bookkeeping; `tampered` when its key material no longer matches its `key-id`.
    Managed { book: Book, tampered: bool },
}

/// Why a fresh key is issued without keeping the old one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssueKind {
    /// The first key of this ApiKey.
    First,
    /// The Secret was deleted by someone; the old key is gone.
    Regenerated,
    /// The key had been removed (suspension lifted, expiry moved).
    Resumed,
    /// The key material was edited by someone: treated as compromised and replaced, previous key dropped.
    Tampered,
}

/// Why key material is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revocation {
    Suspended,
    Expired,
}

/// The single write a reconcile makes to the Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Nothing,
    Issue(IssueKind),
    /// A new current key; the current one becomes the previous one for the grace period.
    Rotate {
        manual: bool,
    },
    /// The grace period ended: remove the previous key.
    DropPrevious,
    Remove(Revocation),
}

/// What a reconcile decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub action: Action,
    pub ready: Desired,
    /// The earliest future moment something is due (rotation, grace end, expiry).
    pub requeue_at: Option<Timestamp>,
}

/// Everything a decision depends on.
pub struct Inputs<'a> {
    pub spec: &'a ApiKeySpec,
    /// Value of the `keyward.dev/rotate` annotation.
    pub rotate_request: Option<&'a str>,
    pub secret: &'a SecretState,
    /// Whether this ApiKey ever had a key (its status names one): a missing Secret then means it was deleted.
    pub had_key: bool,
    /// `<namespace>/<name>/<uid>`: spreads jitter across keys.
    pub jitter_key: &'a str,
    pub now: Timestamp,
}

/// Ready condition reasons.
pub mod reason {
    pub const KEY_ISSUED: &str = "KeyIssued";
    pub const SUSPENDED: &str = "Suspended";
    pub const EXPIRED: &str = "Expired";
    pub const SECRET_CONFLICT: &str = "SecretConflict";
    pub const INVALID_SPEC: &str = "InvalidSpec";
}

/// The Secret's name: `spec.secretName`, defaulting to the ApiKey's name.
pub fn secret_name<'a>(spec: &'a ApiKeySpec, apikey_name: &'a str) -> &'a str {
    spec.secret_name.as_deref().unwrap_or(apikey_name)
}

/// Decides this reconcile's action. `plan` is the parsed rotation spec, or the reason it does not parse.
pub fn decide(i: &Inputs<'_>, plan: Result<&RotationPlan, String>) -> Decision {
    let expires_at = i.spec.expires_at.as_ref().map(|t| t.0);
    let book = match i.secret {
        SecretState::Foreign => {
            return Decision {
                action: Action::Nothing,
                ready: Desired::new(
                    "Ready",
                    false,
                    reason::SECRET_CONFLICT,
                    "a Secret of this name exists and is not owned by this ApiKey; Keyward leaves it untouched. \
                     Delete it or choose another spec.secretName",
                ),
                requeue_at: None,
            };
        }
        SecretState::Missing => None,
        SecretState::Managed { book, .. } => Some(book),
    };
    let holds_material = book.is_some_and(|b| b.has_key() || b.has_previous());

    // Revocation first: it wins over everything else, including a spec that does not parse.
    if i.spec.suspended == Some(true) {
        return Decision {
            action: if holds_material { Action::Remove(Revocation::Suspended) } else { Action::Nothing },
            ready: Desired::new("Ready", false, reason::SUSPENDED, "the key is suspended: no key material is held"),
            requeue_at: None,
        };
    }
    if let Some(exp) = expires_at
        && exp <= i.now
    {
        return Decision {
            action: if holds_material { Action::Remove(Revocation::Expired) } else { Action::Nothing },
            ready: Desired::new("Ready", false, reason::EXPIRED, format!("the key expired at {exp}")),
            requeue_at: None,
        };
    }
    let plan = match plan {
        Ok(p) => p,
        Err(message) => {
            // The existing key is left as it is: a bad spec loses nothing.
            return Decision {
                action: Action::Nothing,
                ready: Desired::new("Ready", false, reason::INVALID_SPEC, message),
                requeue_at: expires_at.filter(|e| *e > i.now),
            };
        }
    };

    let action = match (i.secret, book) {
        (SecretState::Missing, _) => Action::Issue(if i.had_key { IssueKind::Regenerated } else { IssueKind::First }),
        (SecretState::Managed { tampered: true, .. }, _) => Action::Issue(IssueKind::Tampered),
        (_, Some(b)) if !b.has_key() => Action::Issue(if i.had_key { IssueKind::Resumed } else { IssueKind::First }),
        (_, Some(b)) => {
            let manual = i.rotate_request.is_some_and(|r| b.rotate_request.as_deref() != Some(r));
            let due = match b.rotated_at {
                // Bookkeeping lost: rotating keeps the current key valid for the grace period, so nothing is lost.
                None => true,
                Some(at) => plan.next_rotation(at, i.jitter_key).is_some_and(|next| next <= i.now),
            };
            if manual || due {
                Action::Rotate { manual }
            } else if b.previous_expires_at.is_some_and(|e| e <= i.now) && b.has_previous() {
                Action::DropPrevious
            } else {
                Action::Nothing
            }
        }
        (_, None) => Action::Issue(IssueKind::First),
    };
    Decision { requeue_at: None, ready: issued_condition(None), action }
}

/// Ready=True for an issued key, naming its fingerprint (never the key).
pub fn issued_condition(key_id: Option<&str>) -> Desired {
    let message = match key_id {
        Some(id) => format!("key {id} is issued and stored in the Secret"),
        None => "the key is issued and stored in the Secret".to_string(),
    };
    Desired::new("Ready", true, reason::KEY_ISSUED, message)
}

/// The bookkeeping after `action`, given the fingerprint of a newly generated key (for Issue and Rotate).
pub fn next_book(
    book: &Book,
    action: &Action,
    new_key_id: Option<String>,
    rotate_request: Option<&str>,
    grace: std::time::Duration,
    now: Timestamp,
) -> Book {
    let request = rotate_request.map(str::to_string).or_else(|| book.rotate_request.clone());
    match action {
        Action::Nothing => book.clone(),
        Action::Issue(_) => Book {
            key_id: new_key_id,
            rotated_at: Some(now),
            previous_key_id: None,
            previous_expires_at: None,
            rotation_count: book.rotation_count,
            rotate_request: request,
        },
        Action::Rotate { .. } => {
            let keep_previous = !grace.is_zero() && book.key_id.is_some();
            Book {
                key_id: new_key_id,
                rotated_at: Some(now),
                previous_key_id: if keep_previous { book.key_id.clone() } else { None },
                previous_expires_at: if keep_previous {
                    SignedDuration::try_from(grace).ok().and_then(|g| now.checked_add(g).ok())
                } else {
                    None
                },
                rotation_count: book.rotation_count.saturating_add(1),
                rotate_request: request,
            }
        }
        Action::DropPrevious => Book { previous_key_id: None, previous_expires_at: None, ..book.clone() },
        Action::Remove(_) => Book {
            key_id: None,
            rotated_at: None,
            previous_key_id: None,
            previous_expires_at: None,
            rotation_count: book.rotation_count,
            rotate_request: book.rotate_request.clone(),
        },
    }
}

/// When this key next needs attention after the write: its next rotation, the end of the grace period, or its
/// expiry, whichever is first.
pub fn next_due(
    book: &Book,
    plan: Option<&RotationPlan>,
    spec: &ApiKeySpec,
    jitter_key: &str,
    now: Timestamp,
) -> (Option<Timestamp>, Option<Timestamp>) {
    let next_rotation = match (plan, book.rotated_at, book.has_key()) {
        (Some(p), Some(at), true) => p.next_rotation(at, jitter_key),
        _ => None,
    };
    let candidates = [
        next_rotation,
        book.previous_expires_at.filter(|_| book.has_previous()),
        spec.expires_at.as_ref().map(|t| t.0),
    ];
    let requeue = candidates.into_iter().flatten().filter(|t| *t > now).min();
    (next_rotation, requeue)
}

#[cfg(test)]
#[path = "plan_tests/mod.rs"]
mod tests;
