//! Decisions for the previous key's own Secret (`secretTemplate.previous: OwnSecret`) and for shape changes.

use super::*;

fn own(book: Book, sound: bool) -> PreviousState {
    PreviousState::Ours { book, sound, version: Some("1".into()) }
}

/// Decides for a key in one Secret with the previous key in its own Secret, written and wanted that way.
fn decide_own(secret: &SecretState, previous: &PreviousState, reshape: bool, now: Timestamp) -> Action {
    let s = spec(interval("24h"));
    let plan = plan_of(&s);
    let inputs = Inputs {
        spec: &s,
        secret,
        had_key: true,
        now,
        reshape,
        previous,
        own_written: true,
        own_wanted: true,
        ..plain()
    };
    decide(&inputs, Ok(&plan)).action
}

#[test]
fn a_previous_key_secret_in_step_is_kept_until_the_grace_ends() {
    let b = with_previous(t0(), t0() + secs(3600));
    let in_step = own(b.clone(), true);
    assert_eq!(decide_own(&managed(b.clone()), &in_step, false, t0() + secs(60)), Action::Nothing);
    assert_eq!(decide_own(&managed(b), &in_step, false, t0() + secs(3600)), Action::DropPrevious);
}

#[test]
fn a_missing_or_out_of_step_previous_key_secret_drops_the_previous_key() {
    let b = with_previous(t0(), t0() + secs(3600));
    let now = t0() + secs(60);
    assert_eq!(decide_own(&managed(b.clone()), &PreviousState::Absent, false, now), Action::DropPrevious, "deleted");
    // A crash between the two writes of a rotation no longer asked for: the previous Secret holds another key.
    let other = own(Book { previous_key_id: Some(NEW.into()), ..b.clone() }, true);
    assert_eq!(decide_own(&managed(b), &other, false, now), Action::DropPrevious);
}

#[test]
fn an_edited_or_planted_previous_key_secret_replaces_the_key() {
    let now = t0() + secs(60);
    let b = with_previous(t0(), t0() + secs(3600));
    let edited = own(b.clone(), false);
    assert_eq!(decide_own(&managed(b), &edited, false, now), Action::Issue(IssueKind::Tampered));
    // Planted while no previous key is held: the same.
    let planted = own(with_previous(t0(), t0() + secs(3600)), false);
    assert_eq!(decide_own(&managed(keyed(t0())), &planted, false, now), Action::Issue(IssueKind::Tampered));
    // A leftover Keyward wrote (sound) while no previous key is held is only removed (by the tidy step).
    let leftover = own(with_previous(t0(), t0() + secs(3600)), true);
    assert_eq!(decide_own(&managed(keyed(t0())), &leftover, false, now), Action::Nothing);
}

#[test]
fn revocation_wins_over_a_previous_key_secret_and_a_foreign_one_is_a_conflict() {
    let s = suspended(spec(None));
    let inputs = Inputs {
        spec: &s,
        secret: &managed(keyed(t0())),
        previous: &PreviousState::Foreign,
        own_wanted: true,
        now: t0(),
        ..plain()
    };
    assert_eq!(decide(&inputs, Ok(&plan_of(&s))).action, Action::Remove(Revocation::Suspended));
    let s = spec(None);
    let inputs = Inputs { spec: &s, ..inputs };
    let d = decide(&inputs, Ok(&plan_of(&s)));
    assert_eq!((d.action, d.ready.reason), (Action::Nothing, reason::SECRET_CONFLICT));
}

#[test]
fn a_shape_change_rewrites_without_rotating_but_a_due_rotation_goes_first() {
    let b = keyed(t0());
    assert_eq!(decide_own(&managed(b.clone()), &PreviousState::Absent, true, t0() + secs(60)), Action::Reshape);
    assert_eq!(
        decide_own(&managed(b.clone()), &PreviousState::Absent, true, t0() + secs(86_400)),
        Action::Rotate { manual: false }
    );
    let next = next_book(&b, &Action::Reshape, None, None, Duration::from_secs(60), t0() + secs(60));
    assert_eq!(next, b, "a reshape keeps the bookkeeping: same key, same rotation time, same count");
    assert!(Action::Reshape.keeps_material());
}
