//! Tests of the rotation plan, with the clock injected as fixed timestamps.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::*;
use crate::minimums::Minimums;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap_or_else(|e| panic!("bad test timestamp {s}: {e}"))
}

fn interval(d: &str) -> Rotation {
    Rotation { interval: Some(d.into()), ..Rotation::default() }
}

fn schedule(expr: &str, tz: Option<&str>) -> Rotation {
    Rotation { schedule: Some(expr.to_string()), time_zone: tz.map(str::to_string), ..Rotation::default() }
}

fn plan(rotation: Rotation) -> RotationPlan {
    RotationPlan::from_spec(Some(&rotation)).unwrap_or_else(|e| panic!("{rotation:?} refused: {e}"))
}

/// The next rotation after `last` (RFC 3339) for a plan without jitter.
fn next(plan: &RotationPlan, last: &str) -> Timestamp {
    plan.next_rotation(ts(last), "ns/name/uid").unwrap_or_else(|| panic!("no rotation after {last}"))
}

fn err(rotation: Rotation) -> ScheduleError {
    match RotationPlan::from_spec(Some(&rotation)) {
        Ok(p) => panic!("{rotation:?} accepted as {p:?}"),
        Err(e) => e,
    }
}

/// The error is reported as a bad spec and its message starts with `field`, and contains every one of `words`.
fn assert_names(e: &ScheduleError, field: &str, words: &[&str]) {
    let msg = e.to_string();
    assert_eq!(e.reason(), "InvalidSpec");
    assert!(msg.starts_with(&format!("{field}:")), "{msg:?} does not start with {field}:");
    for w in words {
        assert!(msg.contains(w), "{msg:?} does not mention {w:?}");
    }
}

// --- no rotation -------------------------------------------------------------------------------------------------

#[test]
fn no_rotation_spec_never_rotates_and_has_default_grace() {
    let p = RotationPlan::from_spec(None).unwrap();
    assert!(!p.rotates_on_its_own());
    assert_eq!(p.next_rotation(ts("2026-01-01T00:00:00Z"), "k"), None);
    assert_eq!(p.grace_period(), Duration::from_secs(24 * 3600));
    assert_eq!(p.jitter(), Duration::ZERO);
}

#[test]
fn rotation_without_interval_or_schedule_never_rotates() {
    let p = plan(Rotation { grace_period: Some("0s".into()), jitter: Some("1h".into()), ..Rotation::default() });
    assert!(!p.rotates_on_its_own());
    assert_eq!(p.next_rotation(ts("2026-01-01T00:00:00Z"), "k"), None);
    assert_eq!(p.grace_period(), Duration::ZERO);
}

#[test]
fn grace_period_default_and_explicit() {
    assert_eq!(plan(interval("1h")).grace_period(), DEFAULT_GRACE_PERIOD);
    assert_eq!(DEFAULT_GRACE_PERIOD, Duration::from_secs(86_400));
    let p = plan(Rotation { grace_period: Some("1h30m".into()), ..interval("1h") });
    assert_eq!(p.grace_period(), Duration::from_secs(5400));
    let p = plan(Rotation { grace_period: Some("0s".into()), ..interval("1h") });
    assert_eq!(p.grace_period(), Duration::ZERO);
}

#[test]
fn a_default_grace_fits_between_two_rotations() {
    let now = ts("2026-01-01T00:00:00Z");
    let at = |p: &RotationPlan| p.grace_period_at(now, "ns/name/uid");
    // Default 24h, shortened to half the time until the next rotation when that comes sooner than in two days.
    assert_eq!(at(&plan(interval("720h"))), DEFAULT_GRACE_PERIOD);
    assert_eq!(at(&plan(interval("48h"))), DEFAULT_GRACE_PERIOD);
    assert_eq!(at(&plan(interval("1h"))), Duration::from_secs(1800));
    assert_eq!(at(&plan(schedule("*/10 * * * *", None))), Duration::from_secs(300));
    assert_eq!(at(&RotationPlan::from_spec(None).unwrap()), DEFAULT_GRACE_PERIOD, "no schedule: the whole default");
    // An explicit grace period is kept as written.
    assert_eq!(at(&plan(Rotation { grace_period: Some("50m".into()), ..interval("1h") })), Duration::from_secs(3000));
    // Never below the operator's minimum grace period.
    let strict = Minimums { grace_period: Duration::from_secs(2400), ..Minimums::DEFAULT };
    let p = RotationPlan::from_spec_with(Some(&interval("1h")), &strict).unwrap();
    assert_eq!(at(&p), Duration::from_secs(2400));
}

// --- interval ----------------------------------------------------------------------------------------------------

#[test]
fn interval_adds_exactly() {
    let p = plan(interval("1h30m"));
    assert!(p.rotates_on_its_own());
    assert_eq!(next(&p, "2026-01-01T00:00:00Z"), ts("2026-01-01T01:30:00Z"));
    // Sub-second parts of the last rotation are kept, not rounded.
    assert_eq!(next(&p, "2026-01-01T00:00:00.123456789Z"), ts("2026-01-01T01:30:00.123456789Z"));

    let p = plan(interval("720h"));
    assert_eq!(next(&p, "2026-02-20T10:11:12Z"), ts("2026-03-22T10:11:12Z"));

    // An interval is elapsed time, not wall-clock time: no time zone is involved even across DST.
    let p = plan(interval("24h"));
    assert_eq!(next(&p, "2026-03-28T23:00:00Z"), ts("2026-03-29T23:00:00Z"));

    let p = plan(interval("1.5s"));
    assert_eq!(next(&p, "2026-01-01T00:00:00Z"), ts("2026-01-01T00:00:01.5Z"));
}

#[test]
fn interval_past_the_end_of_time_is_never() {
    let p = plan(interval("720h"));
    assert_eq!(p.next_rotation(ts("9999-12-20T00:00:00Z"), "k"), None);
}

// --- schedule in UTC ---------------------------------------------------------------------------------------------

#[test]
fn weekly_schedule_in_utc() {
    // 2026-01-01 is a Thursday; the next Monday is 2026-01-05.
    let p = plan(schedule("0 3 * * 1", None));
    assert_eq!(next(&p, "2026-01-01T00:00:00Z"), ts("2026-01-05T03:00:00Z"));
    assert_eq!(next(&p, "2026-01-05T03:00:00Z"), ts("2026-01-12T03:00:00Z"));
    // An explicit UTC is the same as the default.
    let p = plan(schedule("0 3 * * MON", Some("UTC")));
    assert_eq!(next(&p, "2026-01-01T00:00:00Z"), ts("2026-01-05T03:00:00Z"));
}

#[test]
fn schedule_is_strictly_after_last_rotation() {
    let p = plan(schedule("0 3 * * 1", None));
    // Exactly on a schedule point: the next one.
    assert_eq!(next(&p, "2026-01-05T03:00:00Z"), ts("2026-01-12T03:00:00Z"));
    // Just after it (sub-second): the next one.
    assert_eq!(next(&p, "2026-01-05T03:00:00.001Z"), ts("2026-01-12T03:00:00Z"));
    // Just before it: that one.
    assert_eq!(next(&p, "2026-01-05T02:59:59.999Z"), ts("2026-01-05T03:00:00Z"));
    assert_eq!(next(&p, "2026-01-05T02:59:59Z"), ts("2026-01-05T03:00:00Z"));
}

#[test]
fn cron_ranges_steps_lists_and_names() {
    // Every 15 minutes in working hours on weekdays. 2026-01-02 is a Friday.
    let p = plan(schedule("*/15 9-17 * * MON-FRI", None));
    assert_eq!(next(&p, "2026-01-02T09:00:00Z"), ts("2026-01-02T09:15:00Z"));
    assert_eq!(next(&p, "2026-01-02T17:45:00Z"), ts("2026-01-05T09:00:00Z"));
    // Lists, and month names.
    let p = plan(schedule("0 0 1,15 jan,Jul *", None));
    assert_eq!(next(&p, "2026-01-01T00:00:00Z"), ts("2026-01-15T00:00:00Z"));
    assert_eq!(next(&p, "2026-01-15T00:00:00Z"), ts("2026-07-01T00:00:00Z"));
    // A stepped range.
    let p = plan(schedule("10-50/20 * * * *", None));
    assert_eq!(next(&p, "2026-01-01T00:30:00Z"), ts("2026-01-01T00:50:00Z"));
    assert_eq!(next(&p, "2026-01-01T00:50:00Z"), ts("2026-01-01T01:10:00Z"));
    // 7 is Sunday as well as 0. 2026-01-04 is a Sunday.
    let p = plan(schedule("0 12 * * 7", None));
    assert_eq!(next(&p, "2026-01-01T00:00:00Z"), ts("2026-01-04T12:00:00Z"));
}

#[test]
fn cron_day_of_month_or_day_of_week() {
    // Both restricted: the 13th OR any Friday. 2026-01-02 is the first Friday, 2026-01-13 a Tuesday.
    let p = plan(schedule("0 0 13 * FRI", None));
    assert_eq!(next(&p, "2026-01-01T00:00:00Z"), ts("2026-01-02T00:00:00Z"));
    assert_eq!(next(&p, "2026-01-09T00:00:00Z"), ts("2026-01-13T00:00:00Z"));
    // Day of week `*`: only the 13th.
    let p = plan(schedule("0 0 13 * *", None));
    assert_eq!(next(&p, "2026-01-01T00:00:00Z"), ts("2026-01-13T00:00:00Z"));
    // Day of month `*`: only Fridays.
    let p = plan(schedule("0 0 * * FRI", None));
    assert_eq!(next(&p, "2026-01-02T00:00:00Z"), ts("2026-01-09T00:00:00Z"));
}

#[test]
fn leap_day_schedule_waits_for_a_leap_year() {
    let p = plan(schedule("0 0 29 2 *", None));
    assert_eq!(next(&p, "2026-01-01T00:00:00Z"), ts("2028-02-29T00:00:00Z"));
}

// --- schedule in other time zones, across DST --------------------------------------------------------------------

#[test]
fn berlin_daily_across_spring_forward() {
    // 2026-03-29: 02:00 CET (01:00 UTC) jumps to 03:00 CEST, so 02:30 does not exist that day.
    let p = plan(schedule("30 2 * * *", Some("Europe/Berlin")));
    // 02:30 CET on the 28th is 01:30 UTC.
    assert_eq!(next(&p, "2026-03-27T12:00:00Z"), ts("2026-03-28T01:30:00Z"));
    // The missing 02:30 fires at the first instant after the gap, 03:00 CEST = 01:00 UTC.
    assert_eq!(next(&p, "2026-03-28T01:30:00Z"), ts("2026-03-29T01:00:00Z"));
    // ... once: the next is 02:30 CEST on the 30th = 00:30 UTC.
    assert_eq!(next(&p, "2026-03-29T01:00:00Z"), ts("2026-03-30T00:30:00Z"));
    assert_eq!(next(&p, "2026-03-29T00:59:59Z"), ts("2026-03-29T01:00:00Z"));
}

#[test]
fn berlin_daily_across_fall_back_fires_once() {
    // 2026-10-25: 03:00 CEST (01:00 UTC) goes back to 02:00 CET, so 02:30 happens at 00:30 and at 01:30 UTC.
    let p = plan(schedule("30 2 * * *", Some("Europe/Berlin")));
    assert_eq!(next(&p, "2026-10-24T00:30:00Z"), ts("2026-10-25T00:30:00Z"));
    // Not again at the second 02:30 (01:30 UTC): the next is 02:30 CET on the 26th = 01:30 UTC.
    assert_eq!(next(&p, "2026-10-25T00:30:00Z"), ts("2026-10-26T01:30:00Z"));
    // From inside the repeated hour, on either side of the second 02:30.
    assert_eq!(next(&p, "2026-10-25T00:45:00Z"), ts("2026-10-26T01:30:00Z"));
    assert_eq!(next(&p, "2026-10-25T01:00:00Z"), ts("2026-10-26T01:30:00Z"));
    assert_eq!(next(&p, "2026-10-25T01:29:59Z"), ts("2026-10-26T01:30:00Z"));
}

#[test]
fn berlin_hourly_follows_real_time_across_both_transitions() {
    let p = plan(schedule("30 * * * *", Some("Europe/Berlin")));
    // Spring: 01:30 CET (00:30 UTC), then 03:30 CEST (01:30 UTC); no made-up run in the gap.
    assert_eq!(next(&p, "2026-03-29T00:00:00Z"), ts("2026-03-29T00:30:00Z"));
    assert_eq!(next(&p, "2026-03-29T00:30:00Z"), ts("2026-03-29T01:30:00Z"));
    // Fall: 02:30 CEST (00:30 UTC), 02:30 CET (01:30 UTC), 03:30 CET (02:30 UTC): still hourly.
    assert_eq!(next(&p, "2026-10-25T00:00:00Z"), ts("2026-10-25T00:30:00Z"));
    assert_eq!(next(&p, "2026-10-25T00:30:00Z"), ts("2026-10-25T01:30:00Z"));
    assert_eq!(next(&p, "2026-10-25T01:30:00Z"), ts("2026-10-25T02:30:00Z"));
}

#[test]
fn new_york_daily_across_both_transitions() {
    // 2026-03-08: 02:00 EST (07:00 UTC) jumps to 03:00 EDT; 02:30 does not exist.
    let p = plan(schedule("30 2 * * *", Some("America/New_York")));
    assert_eq!(next(&p, "2026-03-07T07:30:00Z"), ts("2026-03-08T07:00:00Z"));
    assert_eq!(next(&p, "2026-03-08T07:00:00Z"), ts("2026-03-09T06:30:00Z"));
    // 2026-11-01: 02:00 EDT (06:00 UTC) goes back to 01:00 EST; 01:30 happens at 05:30 and 06:30 UTC.
    let p = plan(schedule("30 1 * * *", Some("America/New_York")));
    assert_eq!(next(&p, "2026-10-31T05:30:00Z"), ts("2026-11-01T05:30:00Z"));
    assert_eq!(next(&p, "2026-11-01T05:30:00Z"), ts("2026-11-02T06:30:00Z"));
}

#[test]
fn new_york_weekly() {
    // 03:00 on Mondays, EST in January (UTC-5) and EDT in July (UTC-4).
    let p = plan(schedule("0 3 * * 1", Some("America/New_York")));
    assert_eq!(next(&p, "2026-01-01T00:00:00Z"), ts("2026-01-05T08:00:00Z"));
    assert_eq!(next(&p, "2026-07-01T00:00:00Z"), ts("2026-07-06T07:00:00Z"));
}

#[test]
fn daily_chain_through_a_year_fires_once_per_local_day() {
    for tz in ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC"] {
        for expr in ["30 2 * * *", "30 1 * * *", "0 0 * * *"] {
            let p = plan(schedule(expr, Some(tz)));
            let zone = jiff::tz::TimeZone::get(tz).unwrap();
            let mut last = ts("2026-01-01T12:00:00Z");
            let mut days = BTreeSet::new();
            for _ in 0..366 {
                let n = p.next_rotation(last, "k").unwrap();
                assert!(n > last, "{tz} {expr}: {n} is not after {last}");
                assert!(
                    n.duration_since(last) <= SignedDuration::from_hours(25),
                    "{tz} {expr}: gap from {last} to {n}"
                );
                assert!(days.insert(n.to_zoned(zone.clone()).date()), "{tz} {expr}: second run on the day of {n}");
                last = n;
            }
            assert_eq!(days.len(), 366);
        }
    }
}

// --- jitter ------------------------------------------------------------------------------------------------------

#[test]
fn jitter_is_bounded_spread_and_deterministic() {
    let jittered = plan(Rotation { jitter: Some("1h".into()), ..schedule("0 3 * * 1", None) });
    assert_eq!(jittered.jitter(), Duration::from_secs(3600));
    let last = ts("2026-01-01T00:00:00Z");
    let due = ts("2026-01-05T03:00:00Z");
    let mut offsets = BTreeSet::new();
    for i in 0..1000 {
        let key = format!("team-{i}/key-{i}/0b6c7f3e-{i:04}");
        let n = jittered.next_rotation(last, &key).unwrap();
        let offset = n.duration_since(due);
        assert!(offset >= SignedDuration::ZERO && offset < SignedDuration::from_hours(1), "{key}: {offset:?}");
        assert_eq!(offset.subsec_nanos(), 0, "{key}: offset {offset:?} is not whole seconds");
        // Same inputs, same answer.
        assert_eq!(jittered.next_rotation(last, &key), Some(n));
        offsets.insert(offset);
    }
    // 1000 draws from 3600 seconds: far from all equal (about 870 distinct expected).
    assert!(offsets.len() > 500, "only {} distinct offsets", offsets.len());
    // Both halves of the range are used.
    assert!(offsets.iter().any(|o| *o < SignedDuration::from_mins(30)));
    assert!(offsets.iter().any(|o| *o >= SignedDuration::from_mins(30)));
}

#[test]
fn jitter_applies_to_intervals_and_depends_on_the_due_time() {
    let p = plan(Rotation { jitter: Some("10m".into()), ..interval("24h") });
    let mut offsets = BTreeSet::new();
    let mut last = ts("2026-01-01T00:00:00Z");
    for _ in 0..50 {
        let n = p.next_rotation(last, "ns/name/uid").unwrap();
        let offset = n.duration_since(last) - SignedDuration::from_hours(24);
        assert!(offset >= SignedDuration::ZERO && offset < SignedDuration::from_mins(10), "{offset:?}");
        offsets.insert(offset);
        last = n;
    }
    // The same key is spread differently at each due time.
    assert!(offsets.len() > 10, "only {} distinct offsets", offsets.len());
}

#[test]
fn sub_second_jitter_stays_below_it() {
    let p = plan(Rotation { jitter: Some("500ms".into()), ..interval("1h") });
    let last = ts("2026-01-01T00:00:00Z");
    let due = ts("2026-01-01T01:00:00Z");
    let offsets: BTreeSet<_> =
        (0..200).map(|i| p.next_rotation(last, &format!("k{i}")).unwrap().duration_since(due)).collect();
    assert!(offsets.iter().all(|o| *o >= SignedDuration::ZERO && *o < SignedDuration::from_millis(500)));
    assert!(offsets.len() > 100);
}

#[test]
fn no_jitter_or_zero_jitter_is_exact() {
    let last = ts("2026-01-01T00:00:00Z");
    for p in
        [plan(schedule("0 3 * * 1", None)), plan(Rotation { jitter: Some("0s".into()), ..schedule("0 3 * * 1", None) })]
    {
        for key in ["a", "b", "ns/name/uid"] {
            assert_eq!(p.next_rotation(last, key), Some(ts("2026-01-05T03:00:00Z")));
        }
    }
}

// --- errors ------------------------------------------------------------------------------------------------------

#[test]
fn unknown_time_zone_is_refused() {
    for tz in ["Mars/Olympus_Mons", "", "Europe/Berlin/Mitte"] {
        let e = err(schedule("0 3 * * 1", Some(tz)));
        assert_names(&e, "rotation.timeZone", &["unknown IANA time zone", &format!("{tz:?}")]);
    }
}

#[test]
fn wrong_field_counts_are_refused() {
    for (expr, n) in [("0 3 * *", "4"), ("0 0 3 * * 1", "6"), ("", "0"), ("@daily", "1"), ("0 0 3 * * 1 2026", "7")] {
        let e = err(schedule(expr, None));
        assert_names(&e, "rotation.schedule", &[&format!("has {n} field"), "exactly 5", &format!("{expr:?}")]);
    }
}

#[test]
fn unparseable_cron_is_refused() {
    for expr in ["a b c d e", "61 * * * *", "0 24 * * *", "0 0 0 * *", "0 0 * 13 *", "0 0 * * 8", "0/10 * * * *"] {
        let e = err(schedule(expr, None));
        assert_names(&e, "rotation.schedule", &["invalid cron expression", &format!("{expr:?}")]);
    }
}

#[test]
fn cron_that_never_matches_is_refused() {
    let e = err(schedule("0 0 30 2 *", None));
    assert_names(&e, "rotation.schedule", &["never matches", "\"0 0 30 2 *\""]);
}

#[test]
fn zero_interval_is_refused() {
    for d in ["0s", "0ms", "0h0m"] {
        let e = err(interval(d));
        assert_names(&e, "rotation.interval", &["greater than 0s", &format!("{d:?}")]);
    }
}

#[test]
fn bad_durations_name_their_field() {
    assert_names(&err(interval("1d")), "rotation.interval", &["\"1d\""]);
    assert_names(&err(interval("")), "rotation.interval", &["empty"]);
    assert_names(
        &err(Rotation { grace_period: Some("soon".into()), ..interval("1h") }),
        "rotation.gracePeriod",
        &["\"soon\""],
    );
    assert_names(
        &err(Rotation { jitter: Some("-5m".into()), ..schedule("0 3 * * 1", None) }),
        "rotation.jitter",
        &["\"-5m\""],
    );
    // Parses as a u64 of seconds but is far above the schema's maximum.
    assert_names(
        &err(Rotation { jitter: Some("9223372036854775808s".into()), ..interval("1h") }),
        "rotation.jitter",
        &["at most 24h"],
    );
}

#[test]
fn durations_above_the_schema_maximum_are_refused() {
    // Objects stored before the schema bounded them (issue #11: `100000000h` killed a controller).
    assert_names(&err(interval("100000000h")), "rotation.interval", &["at most 8760h"]);
    assert_names(&err(interval("8760h1s")), "rotation.interval", &["at most 8760h"]);
    assert_names(
        &err(Rotation { grace_period: Some("8761h".into()), ..interval("1h") }),
        "rotation.gracePeriod",
        &["at most 8760h"],
    );
    assert_names(
        &err(Rotation { jitter: Some("24h1s".into()), ..schedule("0 3 * * 1", None) }),
        "rotation.jitter",
        &["at most 24h"],
    );
    // The maxima themselves pass.
    plan(Rotation { grace_period: Some("8760h".into()), jitter: Some("24h".into()), ..interval("8760h") });
}

fn err_with(rotation: Rotation, min: &Minimums) -> ScheduleError {
    match RotationPlan::from_spec_with(Some(&rotation), min) {
        Ok(p) => panic!("{rotation:?} accepted as {p:?}"),
        Err(e) => e,
    }
}

#[test]
fn explicit_values_below_the_operator_minimums_are_refused() {
    let min = Minimums::DEFAULT;
    assert_names(
        &err_with(interval("9s"), &min),
        "rotation.interval",
        &["below the minimum of 10s", "--min-rotation-interval"],
    );
    assert!(RotationPlan::from_spec_with(Some(&interval("10s")), &min).is_ok(), "the minimum itself");
    let strict = Minimums { grace_period: Duration::from_secs(3600), ..Minimums::DEFAULT };
    assert_names(
        &err_with(Rotation { grace_period: Some("0s".into()), ..interval("1h") }, &strict),
        "rotation.gracePeriod",
        &["below the minimum of 3600s", "--min-grace-period"],
    );
}

#[test]
fn defaults_are_raised_to_the_minimums_not_refused() {
    let min = Minimums { grace_period: Duration::from_secs(48 * 3600), ..Minimums::DEFAULT };
    let p = RotationPlan::from_spec_with(Some(&interval("1h")), &min).expect("default grace raised, not refused");
    assert_eq!(p.grace_period(), Duration::from_secs(48 * 3600));
    let none = RotationPlan::from_spec_with(None, &min).expect("no rotation spec");
    assert_eq!(none.grace_period(), Duration::from_secs(48 * 3600));
    assert_eq!(
        RotationPlan::from_spec_with(None, &Minimums::DEFAULT).expect("ok").grace_period(),
        DEFAULT_GRACE_PERIOD
    );
}

#[test]
fn the_rotation_minimum_applies_to_the_gap_between_cron_runs() {
    // Every minute is fine under the default 10 s minimum (cron cannot run more often than once a minute).
    assert!(RotationPlan::from_spec_with(Some(&schedule("* * * * *", None)), &Minimums::DEFAULT).is_ok());
    let hour = Minimums { rotation_interval: Duration::from_secs(3600), ..Minimums::DEFAULT };
    assert!(RotationPlan::from_spec_with(Some(&schedule("0 * * * *", None)), &hour).is_ok(), "hourly: gap 1h");
    assert!(RotationPlan::from_spec_with(Some(&schedule("0 3 * * 1", Some("Europe/Berlin"))), &hour).is_ok());
    assert_names(
        &err_with(schedule("*/30 * * * *", None), &hour),
        "rotation.schedule",
        &["runs twice within 1800s", "--min-rotation-interval"],
    );
    // An irregular schedule: daily at 03:00 and 03:10 (gap 10 minutes, once a day).
    assert_names(&err_with(schedule("0,10 3 * * *", None), &hour), "rotation.schedule", &["within 600s"]);
    // Two days in a month one day apart: found within the first month.
    let two_days = Minimums { rotation_interval: Duration::from_secs(2 * 86_400), ..Minimums::DEFAULT };
    assert_names(&err_with(schedule("0 0 1,2 * *", None), &two_days), "rotation.schedule", &["within 86400s"]);
    assert!(RotationPlan::from_spec_with(Some(&schedule("0 0 1,15 * *", None)), &two_days).is_ok());
}

#[test]
fn conflicting_fields_are_refused() {
    let both = Rotation { interval: Some("1h".into()), ..schedule("0 3 * * 1", None) };
    assert_names(&err(both), "rotation", &["at most one of rotation.interval and rotation.schedule"]);
    let tz_with_interval = Rotation { time_zone: Some("UTC".into()), ..interval("1h") };
    assert_names(&err(tz_with_interval), "rotation.timeZone", &["only allowed together with rotation.schedule"]);
    let tz_alone = Rotation { time_zone: Some("UTC".into()), ..Rotation::default() };
    assert_names(&err(tz_alone), "rotation.timeZone", &["only allowed together with rotation.schedule"]);
}
