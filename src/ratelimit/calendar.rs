//! Calendar windows (`limit.window: Calendar`): the clock hour, day or month of `limit.timeZone` that contains a
//! moment, as a span of absolute time. Pure.
//!
//! Days and months follow the zone's civil calendar, so a day is 23 or 25 hours long on the days the clocks change
//! and a month is 28 to 31 days (plus or minus a DST hour). An hour is the hour of the zone's wall clock: in a zone
//! whose offset is not whole hours (`Asia/Kolkata`, +05:30) it starts at half past the UTC hour; across a DST change
//! each hour is one hour of absolute time (the repeated 02:00–03:00 of a fall-back night is two windows).

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, Zoned};

use super::limits::CalendarUnit;

/// The time zone of a calendar limit without `limit.timeZone`.
pub const DEFAULT_TIME_ZONE: &str = "UTC";

/// A calendar window `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// When the window started (inclusive).
    pub start: Timestamp,
    /// When it ends and the next one starts (exclusive): when the quota resets.
    pub end: Timestamp,
}

impl Window {
    /// The window's length (never zero for a window from [`window`]).
    pub fn length(&self) -> SignedDuration {
        self.end.duration_since(self.start)
    }

    /// Seconds from the start to `now`, at least 0 and at most the window's length.
    pub fn elapsed_secs(&self, now: Timestamp) -> f64 {
        now.duration_since(self.start).as_secs_f64().clamp(0.0, self.length().as_secs_f64())
    }
}

/// The time zone named `name` (an IANA name from the bundled tz database), or `UTC` for `None`; an error message
/// naming `limit.timeZone` for a name the database does not know.
pub fn time_zone(name: Option<&str>) -> Result<TimeZone, String> {
    let name = name.unwrap_or(DEFAULT_TIME_ZONE);
    TimeZone::get(name).map_err(|_| {
        format!("limit.timeZone: {name:?} is not a time zone of the IANA database (e.g. UTC, Europe/Berlin)")
    })
}

/// The window of `unit` in `tz` that contains `now`; `None` only at the ends of jiff's time range (years -9999 and
/// 9999), where the next window cannot be represented.
pub fn window(unit: CalendarUnit, tz: &TimeZone, now: Timestamp) -> Option<Window> {
    let here = now.to_zoned(tz.clone());
    let (start, end) = match unit {
        CalendarUnit::Hour => {
            // NB: truncating the wall clock and converting back would pick the first of a repeated (fall-back)
            // hour; stepping back by the minutes and seconds of the wall clock stays in the current one.
            let into = SignedDuration::from_secs(i64::from(here.minute()) * 60 + i64::from(here.second()))
                + SignedDuration::from_nanos(i64::from(here.subsec_nanosecond()));
            let start = now.checked_sub(into).ok()?;
            (start, start.checked_add(SignedDuration::from_hours(1)).ok()?)
        }
        CalendarUnit::Day => {
            let start = here.start_of_day().ok()?;
            (start.timestamp(), here.tomorrow().ok()?.start_of_day().ok()?.timestamp())
        }
        CalendarUnit::Month => {
            let start: Zoned = here.first_of_month().ok()?.start_of_day().ok()?;
            let end = here.last_of_month().ok()?.tomorrow().ok()?.start_of_day().ok()?;
            (start.timestamp(), end.timestamp())
        }
    };
    (end > start).then_some(Window { start, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn at(unit: CalendarUnit, zone: &str, now: &str) -> Window {
        window(unit, &time_zone(Some(zone)).expect("zone"), ts(now)).expect("window")
    }

    fn hours(w: &Window) -> i64 {
        w.length().as_secs() / 3600
    }

    #[test]
    fn utc_is_the_default_and_unknown_zones_are_refused_by_field() {
        let w = window(CalendarUnit::Day, &time_zone(None).expect("utc"), ts("2026-03-05T13:14:15Z")).expect("w");
        assert_eq!((w.start, w.end), (ts("2026-03-05T00:00:00Z"), ts("2026-03-06T00:00:00Z")));
        let err = time_zone(Some("Mars/Olympus_Mons")).expect_err("unknown");
        assert!(err.starts_with("limit.timeZone:") && err.contains("Mars/Olympus_Mons"), "{err}");
    }

    #[test]
    fn a_window_contains_its_start_but_not_its_end() {
        let w = at(CalendarUnit::Day, "UTC", "2026-03-05T00:00:00Z");
        assert_eq!(w.start, ts("2026-03-05T00:00:00Z"));
        let before = at(CalendarUnit::Day, "UTC", "2026-03-04T23:59:59.999Z");
        assert_eq!(before.end, w.start);
        assert_eq!(w.elapsed_secs(ts("2026-03-05T06:00:00Z")), 6.0 * 3600.0);
        assert_eq!(w.elapsed_secs(ts("2026-03-04T06:00:00Z")), 0.0, "never negative");
    }

    #[test]
    fn days_in_berlin_follow_dst() {
        // 2026-03-29: clocks go 02:00 CET -> 03:00 CEST, a 23-hour day starting 23:00 UTC the evening before.
        let spring = at(CalendarUnit::Day, "Europe/Berlin", "2026-03-29T12:00:00Z");
        assert_eq!((spring.start, spring.end), (ts("2026-03-28T23:00:00Z"), ts("2026-03-29T22:00:00Z")));
        assert_eq!(hours(&spring), 23);
        // 2026-10-25: 03:00 CEST -> 02:00 CET, a 25-hour day.
        let fall = at(CalendarUnit::Day, "Europe/Berlin", "2026-10-25T12:00:00Z");
        assert_eq!((fall.start, fall.end), (ts("2026-10-24T22:00:00Z"), ts("2026-10-25T23:00:00Z")));
        assert_eq!(hours(&fall), 25);
        // Late evening UTC is already the next day in Berlin.
        let next = at(CalendarUnit::Day, "Europe/Berlin", "2026-01-10T23:30:00Z");
        assert_eq!(next.start, ts("2026-01-10T23:00:00Z"));
    }

    #[test]
    fn days_in_new_york_follow_dst() {
        // 2026-03-08: 02:00 EST -> 03:00 EDT.
        let spring = at(CalendarUnit::Day, "America/New_York", "2026-03-08T15:00:00Z");
        assert_eq!((spring.start, spring.end), (ts("2026-03-08T05:00:00Z"), ts("2026-03-09T04:00:00Z")));
        assert_eq!(hours(&spring), 23);
        // 2026-11-01: 02:00 EDT -> 01:00 EST.
        let fall = at(CalendarUnit::Day, "America/New_York", "2026-11-01T15:00:00Z");
        assert_eq!((fall.start, fall.end), (ts("2026-11-01T04:00:00Z"), ts("2026-11-02T05:00:00Z")));
        assert_eq!(hours(&fall), 25);
    }

    #[test]
    fn hours_are_wall_clock_hours_and_one_hour_long_across_dst() {
        let h = at(CalendarUnit::Hour, "UTC", "2026-05-01T10:59:59.5Z");
        assert_eq!((h.start, h.end), (ts("2026-05-01T10:00:00Z"), ts("2026-05-01T11:00:00Z")));
        // Kolkata is +05:30: its hours start at half past the UTC hour.
        let k = at(CalendarUnit::Hour, "Asia/Kolkata", "2026-05-01T10:10:00Z");
        assert_eq!(k.start, ts("2026-05-01T09:30:00Z"));
        // Fall back in New York: 01:00-02:00 local happens twice (05:00-06:00Z EDT, 06:00-07:00Z EST).
        let first = at(CalendarUnit::Hour, "America/New_York", "2026-11-01T05:30:00Z");
        let second = at(CalendarUnit::Hour, "America/New_York", "2026-11-01T06:30:00Z");
        assert_eq!((first.start, first.end), (ts("2026-11-01T05:00:00Z"), ts("2026-11-01T06:00:00Z")));
        assert_eq!((second.start, second.end), (ts("2026-11-01T06:00:00Z"), ts("2026-11-01T07:00:00Z")));
        // Spring forward in Berlin: 01:00 CET is followed by 03:00 CEST, one hour later.
        let before_gap = at(CalendarUnit::Hour, "Europe/Berlin", "2026-03-29T00:30:00Z");
        assert_eq!((before_gap.start, before_gap.end), (ts("2026-03-29T00:00:00Z"), ts("2026-03-29T01:00:00Z")));
        let after_gap = at(CalendarUnit::Hour, "Europe/Berlin", "2026-03-29T01:00:00Z");
        assert_eq!(after_gap.start, before_gap.end);
    }

    #[test]
    fn months_end_on_the_right_day_including_leap_years() {
        let feb_leap = at(CalendarUnit::Month, "UTC", "2028-02-29T23:59:59Z");
        assert_eq!((feb_leap.start, feb_leap.end), (ts("2028-02-01T00:00:00Z"), ts("2028-03-01T00:00:00Z")));
        assert_eq!(hours(&feb_leap), 29 * 24);
        let feb = at(CalendarUnit::Month, "UTC", "2026-02-14T00:00:00Z");
        assert_eq!(hours(&feb), 28 * 24);
        let jan = at(CalendarUnit::Month, "UTC", "2026-01-31T12:00:00Z");
        assert_eq!((jan.start, jan.end), (ts("2026-01-01T00:00:00Z"), ts("2026-02-01T00:00:00Z")));
        let dec = at(CalendarUnit::Month, "UTC", "2026-12-31T23:00:00Z");
        assert_eq!(dec.end, ts("2027-01-01T00:00:00Z"), "December ends in the next year");
        // March in Berlin loses the DST hour; a month starts at local midnight.
        let march = at(CalendarUnit::Month, "Europe/Berlin", "2026-03-15T00:00:00Z");
        assert_eq!((march.start, march.end), (ts("2026-02-28T23:00:00Z"), ts("2026-03-31T22:00:00Z")));
        assert_eq!(hours(&march), 31 * 24 - 1);
        let oct_ny = at(CalendarUnit::Month, "America/New_York", "2026-11-15T00:00:00Z");
        assert_eq!(hours(&oct_ny), 30 * 24 + 1, "November in New York gains the hour");
    }

    #[test]
    fn windows_tile_time_without_gaps() {
        for unit in [CalendarUnit::Hour, CalendarUnit::Day, CalendarUnit::Month] {
            for zone in ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"] {
                let tz = time_zone(Some(zone)).expect("zone");
                let mut w = window(unit, &tz, ts("2026-02-27T00:00:00Z")).expect("w");
                for _ in 0..80 {
                    let next = window(unit, &tz, w.end).expect("next");
                    assert_eq!(next.start, w.end, "{unit:?} {zone}");
                    assert!(next.end > next.start);
                    w = next;
                }
            }
        }
    }
}
