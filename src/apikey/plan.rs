//! The ApiKey plan, pure: from the spec, what the Secret's bookkeeping says, and the time, [`decide`] the one
//! action (if any) this reconcile takes; [`write`] says exactly which Secret that writes with which bookkeeping;
//! [`outcome`] derives the status and when to look again. Nothing here talks to the API server or reads a clock.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;

use super::book::Book;
use super::layout::Layout;
use super::observe::Observed;
pub use super::observe::{PreviousState, SecretState};
use super::overlap;
use super::seal::{Sealed, Sealer};
use super::{secret, status};
use crate::api::{ApiKey, ApiKeySpec, ApiKeyStatus};
use crate::keys::{self, KeyMaterial};
use crate::runtime::conditions::Desired;
use crate::schedule::RotationPlan;

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
    /// Suspended by its RateLimitPolicy's `onExhausted` until a person clears it.
    Abused,
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
    /// No traffic on the previous key since `idle_since`, for `retirePreviousWhenIdle`: remove it before its grace
    /// period ends.
    RetirePrevious {
        idle_since: Timestamp,
    },
    /// Nothing changes but the seal: the Secret was sealed by a previous seal key, or before seals existed.
    Reseal,
    /// The same keys, rewritten in the shape the spec now asks for (`secretTemplate`, `gateway` changed).
    Reshape,
    Remove(Revocation),
}

/// What a reconcile decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub action: Action,
    pub ready: Desired,
    /// The earliest future moment something is due (rotation, grace end, expiry).
    pub requeue_at: Option<Timestamp>,
    /// A rotation is due but waits until then, when the previous key's grace period ends.
    pub deferred_until: Option<Timestamp>,
    /// The previous key is kept past its grace period because it is still in use (`PreviousKeyInUse`).
    pub in_use: Option<overlap::End>,
}

impl Action {
    /// Whether the write keeps the current key: a rotation (it becomes the previous key) or the end of a grace
    /// period (it stays).
    pub fn keeps_material(&self) -> bool {
        matches!(
            self,
            Action::Rotate { .. }
                | Action::DropPrevious
                | Action::RetirePrevious { .. }
                | Action::Reseal
                | Action::Reshape
        )
    }
}

impl Decision {
    /// Whether the key is revoked (suspended or expired): no copy of its material may stay anywhere.
    pub fn revokes(&self) -> bool {
        matches!(self.ready.reason, reason::SUSPENDED | reason::EXPIRED | reason::SUSPENDED_FOR_ABUSE)
    }

    /// Whether the decision is to issue this ApiKey's first key.
    pub fn is_first_issue(&self) -> bool {
        matches!(self.action, Action::Issue(IssueKind::First))
    }
}

/// Everything a decision depends on.
pub struct Inputs<'a> {
    pub spec: &'a ApiKeySpec,
    /// Value of the `keyward.dev/rotate` annotation.
    pub rotate_request: Option<&'a str>,
    pub secret: &'a SecretState,
    /// Whether this ApiKey ever had a key (its status names one): a missing Secret then means it was deleted.
    pub had_key: bool,
    /// Why its RateLimitPolicy suspended it for abuse (`SuspendedForAbuse`, not cleared by a person).
    pub abuse: Option<&'a str>,
    /// Traffic on the previous key, as its RateLimitPolicy reports it (`status.usage.previousKey`).
    pub previous_usage: Option<&'a crate::api::apikey::PreviousKeyUsage>,
    /// `<namespace>/<name>/<uid>`: spreads jitter across keys.
    pub jitter_key: &'a str,
    pub now: Timestamp,
    /// The Secret was written in another shape than the spec's.
    pub reshape: bool,
    /// The previous key's own Secret, and whether the written and the wanted shape keep the previous key there.
    pub previous: &'a PreviousState,
    pub own_written: bool,
    pub own_wanted: bool,
}

/// Ready condition reasons.
pub mod reason {
    pub const KEY_ISSUED: &str = "KeyIssued";
    /// Issued, and a due rotation waits for the previous key's grace period to end.
    pub const ROTATION_DEFERRED: &str = "RotationDeferred";
    pub const SUSPENDED: &str = "Suspended";
    pub const SUSPENDED_FOR_ABUSE: &str = "SuspendedForAbuse";
    pub const EXPIRED: &str = "Expired";
    pub const SECRET_CONFLICT: &str = "SecretConflict";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const POLICY_NOT_FOUND: &str = "RateLimitPolicyNotFound";
}

/// The decision's inputs from what a reconcile observed, at `now`.
pub fn inputs<'a>(o: &'a Observed, spec: &'a ApiKeySpec, now: Timestamp) -> Inputs<'a> {
    Inputs {
        spec,
        rotate_request: o.rotate_request.as_deref(),
        secret: &o.secret,
        had_key: o.had_key,
        abuse: o.abuse.as_deref(),
        previous_usage: o.previous_usage.as_ref(),
        jitter_key: &o.jitter_key,
        now,
        reshape: o.reshape,
        previous: &o.previous,
        own_written: o.entries.own,
        own_wanted: o.wants_own(),
    }
}

/// Decides this reconcile's action. `plan` is the parsed rotation spec, or the reason it does not parse.
pub fn decide(i: &Inputs<'_>, plan: Result<&RotationPlan, String>) -> Decision {
    let book = match i.secret {
        SecretState::Foreign => {
            let why = "a Secret of this name exists and is not owned by this ApiKey; Keyward leaves it untouched. \
                       Delete it or choose another spec.secretName";
            return Decision::only(Action::Nothing, Desired::new("Ready", false, reason::SECRET_CONFLICT, why), None);
        }
        SecretState::Missing => None,
        SecretState::Managed { book, .. } => Some(book),
    };
    // Revocation first: it wins over everything else, including a spec that does not parse.
    if let Some(revoked) = revocation(i, book.is_some_and(|b| b.has_key() || b.has_previous())) {
        return revoked;
    }
    let plan = match plan {
        Ok(p) => p,
        Err(message) => {
            // The existing key is left as it is: a bad spec loses nothing.
            let expiry = i.spec.expires_at.as_ref().map(|t| t.0).filter(|e| *e > i.now);
            let ready = Desired::new("Ready", false, reason::INVALID_SPEC, message);
            return Decision::only(Action::Nothing, ready, expiry);
        }
    };
    if i.own_wanted && matches!(i.previous, PreviousState::Foreign) {
        let why = "the Secret <secretName>-previous, where the previous key goes, exists and is not owned by this \
                   ApiKey; Keyward leaves it untouched. Delete it or choose another spec.secretName";
        return Decision::only(Action::Nothing, Desired::new("Ready", false, reason::SECRET_CONFLICT, why), None);
    }
    let previous_edited = matches!(i.previous, PreviousState::Ours { sound: false, .. });
    let action = match (i.secret, book) {
        (SecretState::Missing, _) => Action::Issue(if i.had_key { IssueKind::Regenerated } else { IssueKind::First }),
        (SecretState::Managed { tampered: true, .. }, _) => Action::Issue(IssueKind::Tampered),
        // NB: an edited or planted previous-key Secret is an edit of the pair, as a planted previous key is.
        (_, Some(_)) if previous_edited => Action::Issue(IssueKind::Tampered),
        (_, Some(b)) if !b.has_key() => Action::Issue(if i.had_key { IssueKind::Resumed } else { IssueKind::First }),
        (_, Some(b)) => return decide_issued(i, plan, b),
        (_, None) => Action::Issue(IssueKind::First),
    };
    Decision::only(action, issued_condition(None), None)
}

impl Decision {
    /// A decision to take `action` with Ready as `ready`, looked at again at `requeue_at`; nothing waits or is kept.
    fn only(action: Action, ready: Desired, requeue_at: Option<Timestamp>) -> Decision {
        Decision { action, ready, requeue_at, deferred_until: None, in_use: None }
    }
}

/// The revocation that applies, if any: suspended, suspended for abuse, or expired. The material goes (when some is
/// `held`), whatever else is due.
fn revocation(i: &Inputs<'_>, held: bool) -> Option<Decision> {
    let remove = |why| if held { Action::Remove(why) } else { Action::Nothing };
    if i.spec.suspended == Some(true) {
        let ready = Desired::new("Ready", false, reason::SUSPENDED, "the key is suspended: no key material is held");
        return Some(Decision::only(remove(Revocation::Suspended), ready, None));
    }
    if let Some(why) = i.abuse {
        let ready =
            Desired::new("Ready", false, reason::SUSPENDED_FOR_ABUSE, format!("no key material is held: {why}"));
        return Some(Decision::only(remove(Revocation::Abused), ready, None));
    }
    let expired = i.spec.expires_at.as_ref().map(|t| t.0).filter(|e| *e <= i.now)?;
    let ready = Desired::new("Ready", false, reason::EXPIRED, format!("the key expired at {expired}"));
    Some(Decision::only(remove(Revocation::Expired), ready, None))
}

/// The decision for a key that is issued and intact: rotate when due or asked, unless that would cut the previous
/// key's overlap short (the rotation then waits for its end); else drop a previous key whose time is up, reshape,
/// reseal, or nothing.
fn decide_issued(i: &Inputs<'_>, plan: &RotationPlan, b: &Book) -> Decision {
    let manual = i.rotate_request.is_some_and(|r| b.rotate_request.as_deref() != Some(r));
    let due = match b.rotated_at {
        // Bookkeeping lost: rotating keeps the current key valid for the grace period, so nothing is lost.
        None => true,
        Some(at) => plan.next_rotation(at, i.jitter_key).is_some_and(|next| next <= i.now),
    };
    // The previous key's own Secret holds the previous key the bookkeeping names (else it was deleted, or a crash
    // came between its write and the main Secret's: the previous key is gone either way, and nothing waits for it).
    let own_in_step = matches!(i.previous, PreviousState::Ours { book: own, .. }
        if own.previous_key_id == b.previous_key_id && own.previous_expires_at == b.previous_expires_at);
    let previous_gone = i.own_written && !own_in_step;
    let overlap = (plan.overlap(), plan.grace_period());
    let end = overlap::previous_end(b, overlap, i.previous_usage, i.now).filter(|_| !previous_gone);
    let end_at = end.as_ref().map(overlap::End::at);
    let waits_until = end_at.filter(|at| (manual || due) && *at > i.now);
    let rotate = (manual || due) && waits_until.is_none();
    let action = keep_or_rotate(i, b, (rotate, manual), previous_gone, end.as_ref());
    let in_use = end.filter(|e| matches!(e, overlap::End::InUse { .. }) && !rotate);
    match waits_until {
        Some(at) => Decision { in_use, ..deferred(manual, at, action) },
        None => Decision {
            requeue_at: end_at.filter(|at| *at > i.now),
            ready: issued_condition(None),
            action,
            deferred_until: None,
            in_use,
        },
    }
}

/// The action on a Secret that holds a sound current key: rotate (when `rotate`, asked for when `manual`), or drop
/// a previous key whose time is up (`end`) or that is gone, or rewrite the Secret(s) in a changed shape, or reseal.
fn keep_or_rotate(
    i: &Inputs<'_>,
    b: &Book,
    (rotate, manual): (bool, bool),
    previous_gone: bool,
    end: Option<&overlap::End>,
) -> Action {
    let over = end.filter(|e| e.at() <= i.now);
    if rotate {
        Action::Rotate { manual }
    } else if let Some(overlap::End::Idle { idle_since, .. }) = over {
        Action::RetirePrevious { idle_since: *idle_since }
    } else if b.has_previous() && (over.is_some() || previous_gone) {
        Action::DropPrevious
    } else if i.reshape {
        Action::Reshape
    } else if matches!(i.secret, SecretState::Managed { reseal: true, .. }) {
        Action::Reseal
    } else {
        Action::Nothing
    }
}

/// A due rotation that waits until `end`, when the previous key's grace period ends: rotating now would drop that
/// key before the time its consumers were promised. Ready stays True (the current key works), with a reason and
/// message that say why the rotation has not happened and when it will; `action` (a reshape, a reseal) goes on.
fn deferred(manual: bool, end: Timestamp, action: Action) -> Decision {
    let what = if manual { "the requested rotation (keyward.dev/rotate)" } else { "the scheduled rotation" };
    let message = format!(
        "{what} waits until {end}, when the previous key's overlap ends: rotating earlier would revoke the \
         previous key before its grace period is over"
    );
    Decision {
        action,
        ready: Desired::new("Ready", true, reason::ROTATION_DEFERRED, message),
        requeue_at: Some(end),
        deferred_until: Some(end),
        in_use: None,
    }
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
        Action::DropPrevious | Action::RetirePrevious { .. } => {
            Book { previous_key_id: None, previous_expires_at: None, ..book.clone() }
        }
        Action::Reseal | Action::Reshape => book.clone(),
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

/// The one Secret write a decision makes: the whole Secret and the bookkeeping it persists.
pub struct SecretWrite {
    /// The Secret to write, conditional on the resourceVersion the decision was based on.
    pub secret: Secret,
    /// Create (the Secret was missing) or replace.
    pub create: bool,
    /// The bookkeeping in the written Secret's annotations.
    pub book: Book,
    /// The `keyward_rotations_total` label, for a write that replaced the key.
    pub rotation: Option<&'static str>,
    /// The action the write carries out (crash points are placed by it).
    pub action: Action,
    /// The previous key's own Secret, written BEFORE the main Secret (so that no crash between the two loses the
    /// previous key); after the main Secret's write, a previous-key Secret the bookkeeping does not name is deleted.
    pub previous: Option<PreviousWrite>,
}

/// The write of the previous key's own Secret.
pub struct PreviousWrite {
    pub secret: Secret,
    pub create: bool,
}

/// The key material a write puts in the Secret: a freshly generated key (for Issue and Rotate) and the current
/// key as read (kept by a rotation as the previous key, or by the end of a grace period as the current one).
pub struct Material {
    pub new_key: Option<KeyMaterial>,
    pub kept: Option<KeyMaterial>,
    /// The previous key as read (kept only by a reseal).
    pub kept_previous: Option<KeyMaterial>,
}

/// Which Secret to write, with which bookkeeping and material, for `action`; `None` for [`Action::Nothing`].
pub fn write(
    apikey: &ApiKey,
    o: &Observed,
    action: &Action,
    material: &Material,
    (grace, sealer): (std::time::Duration, &Sealer),
    now: Timestamp,
) -> Option<SecretWrite> {
    if matches!(action, Action::Nothing) {
        return None;
    }
    let old = o.book().cloned().unwrap_or_default();
    let new_id = material.new_key.as_ref().map(keys::key_id);
    let book = next_book(&old, action, new_id, o.rotate_request.as_deref(), grace, now);
    let (current, previous) = match action {
        Action::Rotate { .. } => (material.new_key.as_ref(), material.kept.as_ref().filter(|_| book.has_previous())),
        Action::DropPrevious | Action::RetirePrevious { .. } => (material.kept.as_ref(), None),
        Action::Reseal | Action::Reshape => (material.kept.as_ref(), material.kept_previous.as_ref()),
        Action::Issue(_) => (material.new_key.as_ref(), None),
        Action::Remove(_) | Action::Nothing => (None, None),
    };
    // NB: a revocation whose spec no longer resolves still empties the Secret, in the shape it was written in.
    let layout = o.layout.clone().unwrap_or_else(|| Layout::written(o.entries.clone()));
    let own = layout.entries.own;
    let main_previous = previous.filter(|_| !own);
    let seal =
        sealer.seal(&Sealed { uid: &o.uid, secret: &o.secret_name, book: &book, current, previous: main_previous });
    let data = secret::main_data(&layout.entries, &book, &secret::Material { current, previous: main_previous });
    let secret = secret::build(apikey, (&layout, &o.secret_name), (&book, &seal), data, o.secret_version.clone());
    let previous =
        previous.filter(|_| own && book.has_previous()).map(|p| previous_write(apikey, o, (&layout, &book), p, sealer));
    Some(SecretWrite {
        secret,
        create: matches!(o.secret, SecretState::Missing),
        rotation: rotation_label(action),
        action: action.clone(),
        book,
        previous,
    })
}

/// The previous key's own Secret: the same metadata and bookkeeping as the main Secret, the previous key alone in
/// its data, sealed under its own name.
fn previous_write(
    apikey: &ApiKey,
    o: &Observed,
    (layout, book): (&Layout, &Book),
    key: &KeyMaterial,
    sealer: &Sealer,
) -> PreviousWrite {
    let name = o.previous_name();
    let seal = sealer.seal(&Sealed { uid: &o.uid, secret: &name, book, current: None, previous: Some(key) });
    let data = secret::previous_data(&layout.entries, key);
    let version = match &o.previous {
        PreviousState::Ours { version, .. } => version.clone(),
        _ => None,
    };
    let create = version.is_none();
    PreviousWrite { secret: secret::build(apikey, (layout, &name), (book, &seal), data, version), create }
}

/// The `keyward_rotations_total` label of an action that replaced the key.
fn rotation_label(action: &Action) -> Option<&'static str> {
    match action {
        Action::Rotate { manual: true } => Some("manual"),
        Action::Rotate { manual: false } => Some("scheduled"),
        Action::Issue(IssueKind::Regenerated) => Some("regenerated"),
        Action::Issue(IssueKind::Tampered) => Some("tampered"),
        _ => None,
    }
}

/// What a reconcile leaves behind once its writes are done: the status and when to look again.
pub struct Outcome {
    pub status: ApiKeyStatus,
    pub ready: Desired,
    pub next_rotation: Option<Timestamp>,
    pub requeue_at: Option<Timestamp>,
    /// `PreviousKeyInUse`, while the previous key is kept for its traffic.
    pub in_use: Option<Desired>,
}

/// The status derived from the persisted bookkeeping (`book`: after the write, or as read), and the next moment
/// something is due. An issued key's condition names its fingerprint, known only after the write; a key whose
/// `rateLimitPolicyRef` names no policy is issued but not Ready.
pub fn outcome(apikey: &ApiKey, o: &Observed, decision: &Decision, book: Option<&Book>, now: Timestamp) -> Outcome {
    let (next_rotation, requeue_at) =
        next_due(book.unwrap_or(&Book::default()), o.rotation.as_ref().ok(), &apikey.spec, &o.jitter_key, now);
    let next_rotation = decision.deferred_until.or(next_rotation);
    let ready = match decision.ready.reason {
        reason::KEY_ISSUED | reason::ROTATION_DEFERRED if o.policy_missing => policy_missing_condition(apikey),
        reason::KEY_ISSUED => issued_condition(book.and_then(|b| b.key_id.as_deref())),
        _ => decision.ready.clone(),
    };
    let in_use = decision.in_use.as_ref().and_then(|e| in_use_condition(e, book));
    Outcome {
        status: status::desired(apikey, book, (&ready, in_use.as_ref()), next_rotation, now),
        requeue_at: [requeue_at, decision.requeue_at].into_iter().flatten().min(),
        ready,
        next_rotation,
        in_use,
    }
}

/// `PreviousKeyInUse=True` while the previous key is kept past its grace period for the traffic it still has.
fn in_use_condition(end: &overlap::End, book: Option<&Book>) -> Option<Desired> {
    let overlap::End::InUse { until, rps } = end else { return None };
    let id = book.and_then(|b| b.previous_key_id.as_deref()).unwrap_or("-");
    let message = format!(
        "the previous key {id} still serves {rps:.2} req/s: kept past its grace period until its traffic stops, at \
         the latest {until} (rotation.extendGraceWhileInUse); find and update the clients that still use it"
    );
    Some(Desired::new(status::PREVIOUS_KEY_IN_USE, true, "StillInUse", message))
}

/// Ready=False for a key whose policy is missing: issued, but not metered.
fn policy_missing_condition(apikey: &ApiKey) -> Desired {
    let policy = apikey.spec.rate_limit_policy_ref.as_ref().map(|r| r.name.as_str()).unwrap_or_default();
    Desired::new(
        "Ready",
        false,
        reason::POLICY_NOT_FOUND,
        format!(
            "rateLimitPolicyRef names RateLimitPolicy {policy}, which does not exist in this namespace; the key is \
             issued but not metered"
        ),
    )
}

#[cfg(test)]
#[path = "plan_tests/mod.rs"]
mod tests;
