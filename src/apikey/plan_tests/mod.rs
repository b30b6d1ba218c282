//! Tests of the ApiKey decision, with the clock injected as fixed timestamps.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::*;
use crate::api::apikey::Rotation;
use crate::api::common::Time;

const JK: &str = "ns/name/uid";
const KEY: &str = "aaaaaaaaaaaa";
const PREV: &str = "bbbbbbbbbbbb";
const NEW: &str = "cccccccccccc";

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap_or_else(|e| panic!("bad test timestamp {s}: {e}"))
}

fn secs(n: i64) -> SignedDuration {
    SignedDuration::from_secs(n)
}

fn t0() -> Timestamp {
    ts("2026-01-01T00:00:00Z")
}

fn interval(d: &str) -> Option<Rotation> {
    Some(Rotation { interval: Some(d.into()), ..Rotation::default() })
}

fn spec(rotation: Option<Rotation>) -> ApiKeySpec {
    ApiKeySpec { rotation, ..ApiKeySpec::default() }
}

fn expiring(mut s: ApiKeySpec, at: Timestamp) -> ApiKeySpec {
    s.expires_at = Some(Time(at));
    s
}

fn suspended(mut s: ApiKeySpec) -> ApiKeySpec {
    s.suspended = Some(true);
    s
}

fn plan_of(s: &ApiKeySpec) -> RotationPlan {
    RotationPlan::from_spec(s.rotation.as_ref()).unwrap_or_else(|e| panic!("{:?} refused: {e}", s.rotation))
}

/// A book holding the current key `KEY`, issued at `rotated_at`, that answered request `r1`.
fn keyed(rotated_at: Timestamp) -> Book {
    Book {
        key_id: Some(KEY.into()),
        rotated_at: Some(rotated_at),
        previous_key_id: None,
        previous_expires_at: None,
        rotation_count: 3,
        rotate_request: Some("r1".into()),
    }
}

/// `keyed` plus the previous key `PREV`, valid until `until`.
fn with_previous(rotated_at: Timestamp, until: Timestamp) -> Book {
    Book { previous_key_id: Some(PREV.into()), previous_expires_at: Some(until), ..keyed(rotated_at) }
}

/// A book without key material (revoked earlier).
fn emptied() -> Book {
    Book { rotation_count: 3, rotate_request: Some("r1".into()), ..Book::default() }
}

fn managed(book: Book) -> SecretState {
    SecretState::Managed { book, tampered: false, reseal: false }
}

fn tampered(book: Book) -> SecretState {
    SecretState::Managed { book, tampered: true, reseal: false }
}

/// Decides with the rotation plan parsed from the spec, as the reconciler does.
fn decide_at(
    spec: &ApiKeySpec,
    secret: &SecretState,
    rotate_request: Option<&str>,
    had_key: bool,
    now: Timestamp,
) -> Decision {
    let plan = RotationPlan::from_spec(spec.rotation.as_ref());
    let inputs = Inputs { spec, rotate_request, secret, had_key, jitter_key: JK, now, ..plain() };
    decide(&inputs, plan.as_ref().map_err(ToString::to_string))
}

/// Decides with an explicit plan result (e.g. an `Err` for a spec that does not parse).
fn decide_with(
    spec: &ApiKeySpec,
    secret: &SecretState,
    rotate_request: Option<&str>,
    had_key: bool,
    now: Timestamp,
    plan: Result<&RotationPlan, String>,
) -> Decision {
    decide(&Inputs { spec, rotate_request, secret, had_key, jitter_key: JK, now, ..plain() }, plan)
}

/// Inputs of a key in one Secret, in the shape its spec asks for (fields a test sets are overridden).
fn plain() -> Inputs<'static> {
    static SPEC: std::sync::LazyLock<ApiKeySpec> = std::sync::LazyLock::new(ApiKeySpec::default);
    Inputs {
        spec: &SPEC,
        rotate_request: None,
        secret: &SecretState::Missing,
        had_key: false,
        abuse: None,
        previous_usage: None,
        jitter_key: JK,
        now: Timestamp::UNIX_EPOCH,
        reshape: false,
        previous: &PreviousState::Absent,
        own_written: false,
        own_wanted: false,
    }
}

fn assert_issued(d: &Decision, case: &str) {
    assert!(d.ready.status, "{case}: {d:?}");
    assert_eq!(d.ready.type_, "Ready", "{case}");
    assert_eq!(d.ready.reason, reason::KEY_ISSUED, "{case}");
}

fn assert_not_ready(d: &Decision, why: &str, case: &str) {
    assert!(!d.ready.status, "{case}: {d:?}");
    assert_eq!(d.ready.type_, "Ready", "{case}");
    assert_eq!(d.ready.reason, why, "{case}: {d:?}");
}

// --- foreign Secret ----------------------------------------------------------------------------------------------

#[test]
fn foreign_secret_is_a_conflict_and_never_touched() {
    let now = t0() + secs(3600);
    let cases = [
        ("plain", spec(None), None, false, Ok(())),
        ("had a key", spec(interval("1h")), None, true, Ok(())),
        ("manual request", spec(None), Some("r9"), true, Ok(())),
        ("suspended", suspended(spec(None)), None, true, Ok(())),
        ("expired", expiring(spec(None), t0()), None, true, Ok(())),
        ("invalid rotation", spec(None), None, true, Err("rotation.interval: bad".into())),
    ];
    for (case, s, request, had_key, plan_result) in cases {
        let p = plan_of(&spec(None));
        let plan = plan_result.map(|()| &p);
        let d = decide_with(&s, &SecretState::Foreign, request, had_key, now, plan);
        assert_eq!(d.action, Action::Nothing, "{case}");
        assert_not_ready(&d, reason::SECRET_CONFLICT, case);
        assert!(d.ready.message.contains("not owned"), "{case}: {}", d.ready.message);
        assert_eq!(d.requeue_at, None, "{case}");
    }
}

// --- suspension --------------------------------------------------------------------------------------------------

#[test]
fn suspension_wins_over_everything() {
    let now = t0() + secs(7 * 24 * 3600);
    let bad: Result<(), String> = Err("rotation.schedule: invalid cron expression".into());
    let cases = [
        ("current key", managed(keyed(t0())), None, true, None, Ok(()), Action::Remove(Revocation::Suspended)),
        (
            "current and previous key",
            managed(with_previous(t0(), now + secs(60))),
            None,
            true,
            None,
            Ok(()),
            Action::Remove(Revocation::Suspended),
        ),
        (
            "only a previous key",
            managed(Book { previous_key_id: Some(PREV.into()), ..emptied() }),
            None,
            true,
            None,
            Ok(()),
            Action::Remove(Revocation::Suspended),
        ),
        (
            "rotation overdue and manual request",
            managed(keyed(t0())),
            Some("r2"),
            true,
            None,
            Ok(()),
            Action::Remove(Revocation::Suspended),
        ),
        ("tampered", tampered(keyed(t0())), None, true, None, Ok(()), Action::Remove(Revocation::Suspended)),
        (
            "unparseable rotation",
            managed(keyed(t0())),
            None,
            true,
            None,
            bad.clone(),
            Action::Remove(Revocation::Suspended),
        ),
        ("expired too", managed(keyed(t0())), None, true, Some(t0()), Ok(()), Action::Remove(Revocation::Suspended)),
        ("no material", managed(emptied()), Some("r2"), true, None, Ok(()), Action::Nothing),
        ("missing, never had a key", SecretState::Missing, None, false, None, bad, Action::Nothing),
        ("missing, had a key", SecretState::Missing, None, true, None, Ok(()), Action::Nothing),
    ];
    for (case, secret, request, had_key, expires, plan_result, want) in cases {
        let mut s = suspended(spec(interval("1h")));
        s.expires_at = expires.map(Time);
        let p = plan_of(&s);
        let d = decide_with(&s, &secret, request, had_key, now, plan_result.map(|()| &p));
        assert_eq!(d.action, want, "{case}");
        assert_not_ready(&d, reason::SUSPENDED, case);
        assert_eq!(d.requeue_at, None, "{case}");
    }
}

#[test]
fn suspended_false_is_not_suspended() {
    let mut s = spec(None);
    s.suspended = Some(false);
    let d = decide_at(&s, &managed(keyed(t0())), None, true, t0() + secs(60));
    assert_eq!(d.action, Action::Nothing);
    assert_issued(&d, "suspended: false");
}

// --- expiry ------------------------------------------------------------------------------------------------------

#[test]
fn expiry_in_the_past_removes_the_key() {
    let now = t0() + secs(3600);
    let bad: Result<(), String> = Err("rotation.interval: must be greater than 0s".into());
    let cases = [
        ("long past", t0(), managed(keyed(t0())), true, Ok(()), Action::Remove(Revocation::Expired)),
        ("exactly now", now, managed(keyed(t0())), true, Ok(()), Action::Remove(Revocation::Expired)),
        (
            "only a previous key",
            now - secs(1),
            managed(Book { previous_key_id: Some(PREV.into()), ..emptied() }),
            true,
            Ok(()),
            Action::Remove(Revocation::Expired),
        ),
        ("tampered", t0(), tampered(keyed(t0())), true, Ok(()), Action::Remove(Revocation::Expired)),
        ("unparseable rotation", t0(), managed(keyed(t0())), true, bad.clone(), Action::Remove(Revocation::Expired)),
        ("already removed", t0(), managed(emptied()), true, Ok(()), Action::Nothing),
        ("missing: nothing issued", t0(), SecretState::Missing, false, bad, Action::Nothing),
    ];
    for (case, exp, secret, had_key, plan_result, want) in cases {
        let s = expiring(spec(interval("1h")), exp);
        let p = plan_of(&s);
        let d = decide_with(&s, &secret, Some("r2"), had_key, now, plan_result.map(|()| &p));
        assert_eq!(d.action, want, "{case}");
        assert_not_ready(&d, reason::EXPIRED, case);
        assert!(d.ready.message.contains(&exp.to_string()), "{case}: {}", d.ready.message);
        assert_eq!(d.requeue_at, None, "{case}");
    }
}

#[test]
fn expiry_in_the_future_is_not_expired_and_is_requeued_for() {
    let now = t0() + secs(600);
    let cases: [(&str, SecretState, bool, Action); 3] = [
        ("missing", SecretState::Missing, false, Action::Issue(IssueKind::First)),
        ("current key", managed(keyed(t0())), true, Action::Nothing),
        ("removed before", managed(emptied()), true, Action::Issue(IssueKind::Resumed)),
    ];
    for (case, secret, had_key, want) in cases {
        let exp = now + secs(1);
        let s = expiring(spec(interval("1h")), exp);
        let d = decide_at(&s, &secret, None, had_key, now);
        assert_eq!(d.action, want, "{case}");
        assert_issued(&d, case);

        let old = match &secret {
            SecretState::Managed { book, .. } => book.clone(),
            _ => Book::default(),
        };
        let p = plan_of(&s);
        let after = next_book(&old, &d.action, Some(NEW.into()), None, p.grace_period(), now);
        let (next_rotation, requeue) = next_due(&after, Some(&p), &s, JK, now);
        assert!(next_rotation.is_some_and(|n| n > exp), "{case}: {next_rotation:?}");
        assert_eq!(requeue, Some(exp), "{case}: the expiry is the earliest thing due");

        // One second later it is expired.
        let later = decide_at(&s, &managed(after), None, true, exp);
        assert_eq!(later.action, Action::Remove(Revocation::Expired), "{case}");
    }
}

// --- invalid rotation spec ---------------------------------------------------------------------------------------

#[test]
fn invalid_rotation_keeps_the_existing_key() {
    let now = t0() + secs(30 * 24 * 3600);
    let message = "rotation.interval: must be greater than 0s, got \"0s\"";
    let cases = [
        ("overdue key", managed(keyed(t0())), None, true, None, None),
        ("manual request", managed(keyed(t0())), Some("r2"), true, None, None),
        ("grace ended", managed(with_previous(t0(), now - secs(1))), None, true, None, None),
        (
            "rotated-at lost",
            managed(Book { rotated_at: None, ..keyed(t0()) }),
            None,
            true,
            Some(now + secs(60)),
            Some(now + secs(60)),
        ),
        ("tampered", tampered(keyed(t0())), None, true, Some(now + secs(1)), Some(now + secs(1))),
        ("missing", SecretState::Missing, None, true, None, None),
        ("no key yet", managed(emptied()), None, false, Some(now + secs(5)), Some(now + secs(5))),
    ];
    for (case, secret, request, had_key, expires, want_requeue) in cases {
        // The spec really is invalid: the reconciler would pass this very error.
        let mut s = spec(interval("0s"));
        s.expires_at = expires.map(Time);
        let parsed = RotationPlan::from_spec(s.rotation.as_ref());
        assert_eq!(parsed.as_ref().map_err(ToString::to_string).err().as_deref(), Some(message), "{case}");

        let d = decide_with(&s, &secret, request, had_key, now, Err(message.to_string()));
        assert_eq!(d.action, Action::Nothing, "{case}");
        assert_not_ready(&d, reason::INVALID_SPEC, case);
        assert_eq!(d.ready.message, message, "{case}");
        assert_eq!(d.requeue_at, want_requeue, "{case}");
    }
}

// --- issuing -----------------------------------------------------------------------------------------------------

#[test]
fn missing_secret_issues_first_or_regenerated() {
    let now = t0();
    let cases = [
        ("never had a key", false, None, None, IssueKind::First),
        ("never had a key, request", false, Some("r1"), interval("1h"), IssueKind::First),
        ("deleted by someone", true, None, None, IssueKind::Regenerated),
        ("deleted, request", true, Some("r7"), interval("1h"), IssueKind::Regenerated),
    ];
    for (case, had_key, request, rotation, want) in cases {
        let d = decide_at(&spec(rotation), &SecretState::Missing, request, had_key, now);
        assert_eq!(d.action, Action::Issue(want), "{case}");
        assert_issued(&d, case);
    }
}

#[test]
fn managed_secret_without_key_issues_first_or_resumed() {
    let now = t0() + secs(60);
    let only_previous = Book { previous_key_id: Some(PREV.into()), previous_expires_at: Some(now), ..emptied() };
    let cases: [(&str, Book, bool, Option<&str>, IssueKind); 5] = [
        ("empty book, never had a key", Book::default(), false, None, IssueKind::First),
        ("removed, had a key", emptied(), true, None, IssueKind::Resumed),
        ("removed, new request", emptied(), true, Some("r2"), IssueKind::Resumed),
        ("removed, never had a key", emptied(), false, None, IssueKind::First),
        ("only a previous key", only_previous, true, None, IssueKind::Resumed),
    ];
    for (case, book, had_key, request, want) in cases {
        let d = decide_at(&spec(interval("1h")), &managed(book), request, had_key, now);
        assert_eq!(d.action, Action::Issue(want), "{case}");
        assert_issued(&d, case);
    }
}

#[test]
fn tampered_key_is_replaced() {
    let now = t0() + secs(60);
    let cases: [(&str, Book, Option<&str>); 4] = [
        ("fresh key", keyed(t0()), None),
        ("rotation overdue", keyed(t0() - secs(7200)), None),
        ("manual request pending", keyed(t0()), Some("r2")),
        ("grace ended", with_previous(t0(), t0()), None),
    ];
    for (case, book, request) in cases {
        let d = decide_at(&spec(interval("1h")), &tampered(book), request, true, now);
        assert_eq!(d.action, Action::Issue(IssueKind::Tampered), "{case}");
        assert_issued(&d, case);
    }
}

// --- rotation ----------------------------------------------------------------------------------------------------

#[test]
fn manual_rotation_request() {
    let now = t0() + secs(60);
    let cases: [(&str, Option<&str>, Option<&str>, Action); 6] = [
        ("no annotation", None, Some("r1"), Action::Nothing),
        ("same as acted on", Some("r1"), Some("r1"), Action::Nothing),
        ("new value", Some("r2"), Some("r1"), Action::Rotate { manual: true }),
        ("first request ever", Some("r1"), None, Action::Rotate { manual: true }),
        ("empty value is a value", Some(""), None, Action::Rotate { manual: true }),
        ("no annotation, none acted on", None, None, Action::Nothing),
    ];
    for (case, request, acted_on, want) in cases {
        let book = Book { rotate_request: acted_on.map(str::to_string), ..keyed(t0()) };
        // A key that would only rotate on request, and one with an interval that is not due yet.
        for s in [spec(None), spec(interval("1h"))] {
            let d = decide_at(&s, &managed(book.clone()), request, true, now);
            assert_eq!(d.action, want, "{case} with {:?}", s.rotation);
            assert_issued(&d, case);
        }
    }
}

#[test]
fn manual_request_on_a_due_key_is_one_manual_rotation() {
    let d = decide_at(&spec(interval("1h")), &managed(keyed(t0())), Some("r2"), true, t0() + secs(7200));
    assert_eq!(d.action, Action::Rotate { manual: true });
}

#[test]
fn interval_rotation_is_due_at_the_boundary() {
    let s = spec(interval("1h"));
    let cases: [(&str, Timestamp, Action); 5] = [
        ("just issued", t0(), Action::Nothing),
        ("one second before", t0() + secs(3599), Action::Nothing),
        ("exactly at the boundary", t0() + secs(3600), Action::Rotate { manual: false }),
        ("one second after", t0() + secs(3601), Action::Rotate { manual: false }),
        ("long overdue", t0() + secs(10 * 3600), Action::Rotate { manual: false }),
    ];
    for (case, now, want) in cases {
        let d = decide_at(&s, &managed(keyed(t0())), Some("r1"), true, now);
        assert_eq!(d.action, want, "{case}");
        assert_issued(&d, case);
    }
}

#[test]
fn no_rotation_spec_never_rotates_on_its_own() {
    let d = decide_at(&spec(None), &managed(keyed(t0())), None, true, t0() + secs(100 * 365 * 24 * 3600));
    assert_eq!(d.action, Action::Nothing);
}

#[test]
fn cron_schedule_in_a_time_zone() {
    let s = spec(Some(Rotation {
        schedule: Some("0 3 * * 1".into()),
        time_zone: Some("Europe/Berlin".into()),
        ..Rotation::default()
    }));
    let p = plan_of(&s);
    // Mondays 03:00 in Berlin: 02:00 UTC in winter (CET), 01:00 UTC in summer (CEST).
    let cases: [(&str, &str, &str, Action); 7] = [
        ("winter, not yet", "2026-01-01T00:00:00Z", "2026-01-05T01:59:59Z", Action::Nothing),
        ("winter, due", "2026-01-01T00:00:00Z", "2026-01-05T02:00:00Z", Action::Rotate { manual: false }),
        // Read in UTC this would not be due before 03:00Z.
        ("winter, between", "2026-01-01T00:00:00Z", "2026-01-05T02:30:00Z", Action::Rotate { manual: false }),
        ("summer, not yet", "2026-07-01T00:00:00Z", "2026-07-06T00:59:59Z", Action::Nothing),
        ("summer, due", "2026-07-01T00:00:00Z", "2026-07-06T01:00:00Z", Action::Rotate { manual: false }),
        ("rotated at the slot, next week", "2026-01-05T02:00:00Z", "2026-01-12T01:59:59Z", Action::Nothing),
        ("rotated at the slot, due", "2026-01-05T02:00:00Z", "2026-01-12T02:00:00Z", Action::Rotate { manual: false }),
    ];
    for (case, rotated, now, want) in cases {
        let book = keyed(ts(rotated));
        let d = decide_at(&s, &managed(book.clone()), None, true, ts(now));
        assert_eq!(d.action, want, "{case}");
        assert_issued(&d, case);
    }
    let (next, _) = next_due(&keyed(ts("2026-01-01T00:00:00Z")), Some(&p), &s, JK, ts("2026-01-02T00:00:00Z"));
    assert_eq!(next, Some(ts("2026-01-05T02:00:00Z")));
}

#[test]
fn grace_end_drops_the_previous_key() {
    let s = spec(interval("24h"));
    let now = t0() + secs(3600);
    let cases: [(&str, Book, Action); 6] = [
        ("grace ends exactly now", with_previous(t0(), now), Action::DropPrevious),
        ("grace ended earlier", with_previous(t0(), now - secs(600)), Action::DropPrevious),
        ("grace ends in a second", with_previous(t0(), now + secs(1)), Action::Nothing),
        (
            "expiry without a previous key",
            Book { previous_expires_at: Some(now - secs(1)), ..keyed(t0()) },
            Action::Nothing,
        ),
        // Unreadable expiry: keep (the safe choice).
        ("previous key without expiry", Book { previous_key_id: Some(PREV.into()), ..keyed(t0()) }, Action::Nothing),
        // A rotation replaces the previous key anyway.
        (
            "rotation due as well",
            with_previous(t0() - secs(24 * 3600), now - secs(1)),
            Action::Rotate { manual: false },
        ),
    ];
    for (case, book, want) in cases {
        let d = decide_at(&s, &managed(book), None, true, now);
        assert_eq!(d.action, want, "{case}");
        assert_issued(&d, case);
    }
}

#[test]
fn lost_rotated_at_rotates_a_held_key() {
    let now = t0();
    let book = Book { rotated_at: None, ..keyed(t0()) };
    for s in [spec(None), spec(interval("720h"))] {
        let d = decide_at(&s, &managed(book.clone()), Some("r1"), true, now);
        assert_eq!(d.action, Action::Rotate { manual: false }, "{:?}", s.rotation);
        assert_issued(&d, "rotated-at lost");
    }
}

mod deferral;
mod pair;
mod settle;
