//! A rotation never cuts the previous key's grace period short: one that comes due (asked for or scheduled) while
//! the previous key is still in its grace period waits for its end, saying so in the Ready condition.

use super::*;

fn grace(d: &str) -> Option<Rotation> {
    Some(Rotation { grace_period: Some(d.into()), ..Rotation::default() })
}

fn assert_deferred(d: &Decision, until: Timestamp, case: &str) {
    assert_eq!(d.action, Action::Nothing, "{case}: no write while the previous key is in grace");
    assert!(d.ready.status, "{case}: the current key works, so the key stays Ready: {d:?}");
    assert_eq!(d.ready.reason, reason::ROTATION_DEFERRED, "{case}");
    assert!(d.ready.message.contains(&until.to_string()), "{case}: the message says until when: {}", d.ready.message);
    assert_eq!(d.requeue_at, Some(until), "{case}: looked at again when the grace ends");
    assert_eq!(d.deferred_until, Some(until), "{case}");
}

#[test]
fn a_request_inside_the_grace_period_waits_for_its_end_then_rotates() {
    let s = spec(grace("1h"));
    let end = t0() + secs(3600);
    let book = with_previous(t0(), end);
    for (case, now) in [("just after the rotation", t0() + secs(1)), ("a second before the end", end - secs(1))] {
        let d = decide_at(&s, &managed(book.clone()), Some("r2"), true, now);
        assert_deferred(&d, end, case);
        assert!(d.ready.message.contains("requested rotation"), "{case}: {}", d.ready.message);
    }
    // At the grace end the request is answered: the current key becomes the previous one, the old previous goes.
    for now in [end, end + secs(5)] {
        let d = decide_at(&s, &managed(book.clone()), Some("r2"), true, now);
        assert_eq!(d.action, Action::Rotate { manual: true }, "at {now}");
        assert_issued(&d, "the deferred request");
        assert_eq!(d.deferred_until, None);
    }
    // A request already answered does not wait for anything; the grace ends as usual.
    let d = decide_at(&s, &managed(book.clone()), Some("r1"), true, t0() + secs(1));
    assert_eq!((d.action, d.ready.reason), (Action::Nothing, reason::KEY_ISSUED));
}

#[test]
fn a_scheduled_rotation_inside_the_grace_period_waits_too() {
    // An object stored before the CRD refused gracePeriod >= interval: 10m interval, 1h grace.
    let s =
        spec(Some(Rotation { interval: Some("10m".into()), grace_period: Some("1h".into()), ..Rotation::default() }));
    let end = t0() + secs(3600);
    let now = t0() + secs(700);
    let d = decide_at(&s, &managed(with_previous(t0(), end)), None, true, now);
    assert_deferred(&d, end, "scheduled");
    assert!(d.ready.message.contains("scheduled rotation"), "{}", d.ready.message);
    let d = decide_at(&s, &managed(with_previous(t0(), end)), None, true, end);
    assert_eq!(d.action, Action::Rotate { manual: false });
}

#[test]
fn no_grace_to_protect_means_no_wait() {
    let now = t0() + secs(60);
    let cases: [(&str, Book); 3] = [
        ("no previous key", keyed(t0())),
        ("grace already over", with_previous(t0(), now - secs(1))),
        ("grace ends right now", with_previous(t0(), now)),
    ];
    for (case, book) in cases {
        let d = decide_at(&spec(grace("1h")), &managed(book), Some("r2"), true, now);
        assert_eq!(d.action, Action::Rotate { manual: true }, "{case}");
        assert_eq!(d.deferred_until, None, "{case}");
    }
}

#[test]
fn revocation_and_tampering_never_wait() {
    let end = t0() + secs(3600);
    let now = t0() + secs(1);
    let book = with_previous(t0(), end);
    let d = decide_at(&suspended(spec(grace("1h"))), &managed(book.clone()), Some("r2"), true, now);
    assert_eq!(d.action, Action::Remove(Revocation::Suspended));
    let d = decide_at(&expiring(spec(grace("1h")), now), &managed(book.clone()), Some("r2"), true, now);
    assert_eq!(d.action, Action::Remove(Revocation::Expired));
    let d = decide_at(&spec(grace("1h")), &tampered(book), Some("r2"), true, now);
    assert_eq!(d.action, Action::Issue(IssueKind::Tampered));
}

#[test]
fn a_deferred_rotation_still_reseals() {
    let end = t0() + secs(3600);
    let secret = SecretState::Managed { book: with_previous(t0(), end), tampered: false, reseal: true };
    let d = decide_at(&spec(grace("1h")), &secret, Some("r2"), true, t0() + secs(1));
    assert_eq!(d.action, Action::Reseal);
    assert_eq!(d.deferred_until, Some(end));
}

#[test]
fn a_key_suspended_for_abuse_is_revoked_like_a_suspended_one() {
    let now = t0() + secs(1);
    let book = with_previous(t0(), t0() + secs(3600));
    let s = spec(grace("1h"));
    let inputs = Inputs {
        spec: &s,
        rotate_request: None,
        secret: &managed(book),
        had_key: true,
        abuse: Some("Exhausted since …"),
        jitter_key: JK,
        now,
        ..plain()
    };
    let d = decide(&inputs, Ok(&plan_of(&s)));
    assert_eq!(d.action, Action::Remove(Revocation::Abused));
    assert_not_ready(&d, reason::SUSPENDED_FOR_ABUSE, "abuse");
    assert!(d.revokes(), "every other Secret of the key goes too");
    let emptied_secret = managed(emptied());
    let d = decide(&Inputs { secret: &emptied_secret, ..inputs }, Ok(&plan_of(&s)));
    assert_eq!(d.action, Action::Nothing, "nothing left to remove");
}
