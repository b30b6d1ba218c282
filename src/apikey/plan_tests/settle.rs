//! next_book, next_due, idempotence of applied decisions, and jitter.

use super::*;
use crate::apikey::secret::secret_name;

// --- next_book ---------------------------------------------------------------------------------------------------

const GRACE: Duration = Duration::from_secs(3600);

#[test]
fn next_book_issue_resets_the_previous_key_and_keeps_the_count() {
    let now = t0() + secs(42);
    let old = with_previous(t0(), t0() + secs(100));
    for kind in [IssueKind::First, IssueKind::Regenerated, IssueKind::Resumed, IssueKind::Tampered] {
        let b = next_book(&old, &Action::Issue(kind), Some(NEW.into()), None, GRACE, now);
        assert_eq!(
            b,
            Book {
                key_id: Some(NEW.into()),
                rotated_at: Some(now),
                previous_key_id: None,
                previous_expires_at: None,
                rotation_count: 3,
                rotate_request: Some("r1".into()),
            },
            "{kind:?}"
        );
        let b = next_book(&old, &Action::Issue(kind), Some(NEW.into()), Some("r5"), GRACE, now);
        assert_eq!(b.rotate_request.as_deref(), Some("r5"), "{kind:?}: the request is recorded");
    }
    let fresh = next_book(&Book::default(), &Action::Issue(IssueKind::First), Some(NEW.into()), Some("r0"), GRACE, now);
    assert_eq!(fresh.rotation_count, 0);
    assert_eq!(fresh.rotate_request.as_deref(), Some("r0"));
    assert_eq!(fresh.key_id.as_deref(), Some(NEW));
}

#[test]
fn next_book_rotate_keeps_the_old_key_for_the_grace_period() {
    let now = t0() + secs(3600);
    for manual in [false, true] {
        let old = with_previous(t0(), t0() + secs(10));
        let b = next_book(&old, &Action::Rotate { manual }, Some(NEW.into()), Some("r2"), GRACE, now);
        assert_eq!(
            b,
            Book {
                key_id: Some(NEW.into()),
                rotated_at: Some(now),
                previous_key_id: Some(KEY.into()),
                previous_expires_at: Some(now + secs(3600)),
                rotation_count: 4,
                rotate_request: Some("r2".into()),
            },
            "manual: {manual}"
        );
        let b = next_book(&old, &Action::Rotate { manual }, Some(NEW.into()), None, GRACE, now);
        assert_eq!(b.rotate_request.as_deref(), Some("r1"), "without a request the last one is kept");
    }
}

#[test]
fn next_book_rotate_with_zero_grace_drops_the_old_key() {
    let now = t0() + secs(3600);
    let old = with_previous(t0(), now + secs(10));
    let b = next_book(&old, &Action::Rotate { manual: false }, Some(NEW.into()), None, Duration::ZERO, now);
    assert_eq!(b.key_id.as_deref(), Some(NEW));
    assert_eq!(b.previous_key_id, None);
    assert_eq!(b.previous_expires_at, None);
    assert_eq!(b.rotation_count, 4);
    assert_eq!(b.rotated_at, Some(now));
}

#[test]
fn next_book_drop_previous_clears_only_the_previous_key() {
    let now = t0() + secs(3600);
    let old = with_previous(t0(), now);
    // A request that was not acted on is not recorded: it must still rotate.
    let b = next_book(&old, &Action::DropPrevious, None, Some("r9"), GRACE, now);
    assert_eq!(b, Book { previous_key_id: None, previous_expires_at: None, ..old });
}

#[test]
fn next_book_remove_clears_material_but_keeps_history() {
    let now = t0() + secs(3600);
    let old = with_previous(t0(), now + secs(10));
    for why in [Revocation::Suspended, Revocation::Expired] {
        let b = next_book(&old, &Action::Remove(why), None, Some("r9"), GRACE, now);
        assert_eq!(b, emptied(), "{why:?}");
    }
}

#[test]
fn next_book_nothing_changes_nothing() {
    let old = with_previous(t0(), t0() + secs(10));
    let b = next_book(&old, &Action::Nothing, Some(NEW.into()), Some("r1"), GRACE, t0() + secs(5));
    assert_eq!(b, old);
}

// --- next_due ----------------------------------------------------------------------------------------------------

#[test]
fn next_due_is_the_earliest_future_deadline() {
    let rotated = t0();
    let rotation = t0() + secs(3600);
    let grace_end = t0() + secs(1800);
    let expiry = t0() + secs(7200);
    let s = expiring(spec(interval("1h")), expiry);
    let p = plan_of(&s);
    let full = with_previous(rotated, grace_end);
    let cases = [
        ("grace end first", full.clone(), t0() + secs(60), Some(rotation), Some(grace_end)),
        ("grace ended: rotation next", full.clone(), grace_end, Some(rotation), Some(rotation)),
        ("rotation passed: expiry next", full.clone(), rotation, Some(rotation), Some(expiry)),
        ("everything passed", full, expiry, Some(rotation), None),
        (
            "grace time without a previous key",
            Book { previous_expires_at: Some(grace_end), ..keyed(rotated) },
            t0() + secs(60),
            Some(rotation),
            Some(rotation),
        ),
        ("no key: no rotation", emptied(), t0() + secs(60), None, Some(expiry)),
        (
            "rotated-at without a key",
            Book { rotated_at: Some(rotated), ..emptied() },
            t0() + secs(60),
            None,
            Some(expiry),
        ),
        (
            "previous key only",
            Book { previous_key_id: Some(PREV.into()), previous_expires_at: Some(grace_end), ..emptied() },
            t0(),
            None,
            Some(grace_end),
        ),
    ];
    for (case, book, now, want_next, want_requeue) in cases {
        assert_eq!(next_due(&book, Some(&p), &s, JK, now), (want_next, want_requeue), "{case}");
    }
}

#[test]
fn next_due_without_deadlines_is_none() {
    let now = t0() + secs(60);
    let never = plan_of(&spec(None));
    let hourly = plan_of(&spec(interval("1h")));
    let cases: [(&str, Book, Option<&RotationPlan>, ApiKeySpec); 5] = [
        ("rotation only on request", keyed(t0()), Some(&never), spec(None)),
        ("no plan (invalid spec)", keyed(t0()), None, spec(interval("0s"))),
        ("no key", emptied(), Some(&hourly), spec(interval("1h"))),
        ("rotated-at lost", Book { rotated_at: None, ..keyed(t0()) }, Some(&hourly), spec(interval("1h"))),
        ("expiry passed", keyed(t0()), Some(&never), expiring(spec(None), now)),
    ];
    for (case, book, plan, s) in cases {
        assert_eq!(next_due(&book, plan, &s, JK, now), (None, None), "{case}");
    }
}

// --- idempotence -------------------------------------------------------------------------------------------------

/// Decides, applies the action to the book, and decides again at the same instant: the second decision must be to
/// do nothing, and what is left due must lie in the future.
fn assert_settles(
    case: &str,
    s: &ApiKeySpec,
    secret: SecretState,
    request: Option<&str>,
    now: Timestamp,
    want: Action,
) {
    let p = plan_of(s);
    let had_key = want != Action::Issue(IssueKind::First);
    let first = decide_at(s, &secret, request, had_key, now);
    assert_eq!(first.action, want, "{case}: first decision");
    let old = match &secret {
        SecretState::Managed { book, .. } => book.clone(),
        _ => Book::default(),
    };
    let new_id = matches!(first.action, Action::Issue(_) | Action::Rotate { .. }).then(|| NEW.to_string());
    let after = next_book(&old, &first.action, new_id, request, p.grace_period(), now);
    let again = decide_at(s, &managed(after.clone()), request, true, now);
    assert_eq!(again.action, Action::Nothing, "{case}: second decision on {after:?}");
    assert_issued(&again, case);
    let (_, requeue) = next_due(&after, Some(&p), s, JK, now);
    assert!(requeue.is_none_or(|t| t > now), "{case}: requeue {requeue:?} is not in the future");
}

#[test]
fn applying_a_decision_settles() {
    let hourly = spec(interval("1h"));
    let jittered =
        spec(Some(Rotation { interval: Some("1h".into()), jitter: Some("10m".into()), ..Rotation::default() }));
    let no_grace =
        spec(Some(Rotation { interval: Some("1h".into()), grace_period: Some("0s".into()), ..Rotation::default() }));
    let cron = spec(Some(Rotation {
        schedule: Some("0 3 * * 1".into()),
        time_zone: Some("Europe/Berlin".into()),
        ..Rotation::default()
    }));
    let due = t0() + secs(3600);
    let rotate = Action::Rotate { manual: false };
    let manual = Action::Rotate { manual: true };
    assert_settles("issue first", &hourly, SecretState::Missing, None, due, Action::Issue(IssueKind::First));
    assert_settles(
        "issue with request",
        &hourly,
        SecretState::Missing,
        Some("r9"),
        due,
        Action::Issue(IssueKind::Regenerated),
    );
    assert_settles("issue resumed", &hourly, managed(emptied()), Some("r9"), due, Action::Issue(IssueKind::Resumed));
    assert_settles(
        "issue tampered",
        &hourly,
        tampered(keyed(t0())),
        Some("r9"),
        due,
        Action::Issue(IssueKind::Tampered),
    );
    assert_settles("scheduled rotation", &hourly, managed(keyed(t0())), Some("r1"), due, rotate.clone());
    assert_settles("scheduled, no grace", &no_grace, managed(keyed(t0())), None, due, rotate.clone());
    assert_settles("scheduled, overdue", &hourly, managed(keyed(t0())), None, due + secs(86_400), rotate.clone());
    assert_settles("cron rotation", &cron, managed(keyed(t0())), None, ts("2026-01-05T02:00:00Z"), rotate.clone());
    assert_settles("rotated-at lost", &hourly, managed(Book { rotated_at: None, ..keyed(t0()) }), None, t0(), rotate);
    assert_settles("manual rotation", &hourly, managed(keyed(t0())), Some("r2"), t0() + secs(60), manual.clone());
    assert_settles("manual, on request only", &spec(None), managed(keyed(t0())), Some("r2"), t0(), manual.clone());
    assert_settles("manual and due", &hourly, managed(keyed(t0())), Some("r2"), due, manual);
    let grace_over = managed(with_previous(t0(), t0() + secs(60)));
    assert_settles("drop previous", &hourly, grace_over, Some("r1"), t0() + secs(60), Action::DropPrevious);

    // With jitter the rotation is due somewhere in [1h, 1h10m): settle exactly at that moment.
    let p = plan_of(&jittered);
    let at = p.next_rotation(t0(), JK).expect("jittered rotation");
    assert_settles("jittered rotation", &jittered, managed(keyed(t0())), None, at, Action::Rotate { manual: false });
}

#[test]
fn revocation_settles() {
    let now = t0() + secs(60);
    let cases: [(&str, ApiKeySpec, Action); 2] = [
        ("suspended", suspended(spec(None)), Action::Remove(Revocation::Suspended)),
        ("expired", expiring(spec(None), now), Action::Remove(Revocation::Expired)),
    ];
    for (case, s, want) in cases {
        let old = with_previous(t0(), now + secs(60));
        let d = decide_at(&s, &managed(old.clone()), None, true, now);
        assert_eq!(d.action, want, "{case}");
        let after = next_book(&old, &d.action, None, None, GRACE, now);
        let again = decide_at(&s, &managed(after), None, true, now);
        assert_eq!(again.action, Action::Nothing, "{case}");
    }
}

// --- jitter ------------------------------------------------------------------------------------------------------

#[test]
fn jittered_due_time_is_stable_for_a_jitter_key() {
    let s = spec(Some(Rotation { interval: Some("1h".into()), jitter: Some("30m".into()), ..Rotation::default() }));
    let p = plan_of(&s);
    let book = keyed(t0());
    let mut seen = BTreeSet::new();
    for n in 0..8 {
        let key = format!("ns/key-{n}/uid-{n}");
        let (a, _) = next_due(&book, Some(&p), &s, &key, t0());
        let (b, _) = next_due(&book, Some(&p), &s, &key, t0() + secs(1234));
        let a = a.expect("a rotation is due");
        assert_eq!(Some(a), b, "{key}: the due time does not depend on when it is asked");
        assert!(a >= t0() + secs(3600) && a < t0() + secs(3600 + 1800), "{key}: {a} outside [1h, 1h30m)");
        seen.insert(a);

        // The decision uses the same jittered time.
        let before = Inputs {
            spec: &s,
            rotate_request: None,
            secret: &managed(book.clone()),
            had_key: true,
            abuse: None,
            previous_usage: None,
            jitter_key: &key,
            now: a - secs(1),
            ..super::plain()
        };
        assert_eq!(decide(&before, Ok(&p)).action, Action::Nothing, "{key}: one second before {a}");
        let at = Inputs { now: a, ..before };
        assert_eq!(decide(&at, Ok(&p)).action, Action::Rotate { manual: false }, "{key}: at {a}");
    }
    assert!(seen.len() > 1, "jitter spreads keys: {seen:?}");
}

// --- helpers -----------------------------------------------------------------------------------------------------

#[test]
fn secret_name_defaults_to_the_apikey_name() {
    assert_eq!(secret_name(&spec(None), "payments"), "payments");
    let named = ApiKeySpec { secret_name: Some("payments-key".into()), ..ApiKeySpec::default() };
    assert_eq!(secret_name(&named, "payments"), "payments-key");
}

#[test]
fn issued_condition_names_the_fingerprint() {
    let with = issued_condition(Some(KEY));
    assert!(with.status);
    assert_eq!(with.reason, reason::KEY_ISSUED);
    assert!(with.message.contains(KEY), "{}", with.message);
    let without = issued_condition(None);
    assert!(without.status);
    assert_eq!(without.reason, reason::KEY_ISSUED);
    assert!(!without.message.is_empty());
}
