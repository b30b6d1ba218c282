//! The limit in force for a policy's keys: `limit`, or the first temporary override still running. Pure.

use jiff::Timestamp;

use crate::api::ratelimit::RateLimitPolicySpec;

/// The limit in force at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Effective {
    /// Requests allowed per period.
    pub requests: i64,
    /// The period as written in the spec, e.g. `1m`.
    pub period: String,
    /// Requests per second; `None` when the period cannot be parsed (a spec stored before the schema refused it).
    pub per_second: Option<f64>,
    /// The active override: its index in `temporaryOverrides`, its end and its reason.
    pub active: Option<ActiveOverride>,
    /// The next moment the effective limit changes on its own (the earliest `until` still ahead), for the requeue.
    pub changes_at: Option<Timestamp>,
    /// `limit.window: Calendar`: the clock unit the requests are counted in (`None`: a rolling period).
    pub calendar: Option<CalendarUnit>,
}

/// The clock-aligned window of a calendar limit (`limit.window: Calendar`), in `limit.timeZone`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CalendarUnit {
    /// `period: 1h`: each clock hour.
    Hour,
    /// `period: 24h`: each calendar day, from midnight.
    Day,
    /// `period: 1mo`: each calendar month, from the first at midnight.
    Month,
}

impl CalendarUnit {
    /// The unit a calendar limit's period names, `None` for a period the schema refuses under `Calendar`.
    pub fn from_period(period: &str) -> Option<Self> {
        match period {
            "1h" => Some(CalendarUnit::Hour),
            "24h" => Some(CalendarUnit::Day),
            crate::api::ratelimit::CALENDAR_MONTH => Some(CalendarUnit::Month),
            _ => None,
        }
    }
}

/// A temporary override in force.
#[derive(Clone, Debug, PartialEq)]
pub struct ActiveOverride {
    pub index: usize,
    pub until: Timestamp,
    pub reason: String,
}

impl Effective {
    /// `<requests>/<period>`, the form shown in `status.effectiveLimit` and the `Limit` printer column.
    pub fn display(&self) -> String {
        format!("{}/{}", self.requests, self.period)
    }
}

/// The limit in force at `now`: the first override (in list order) whose `until` is after `now`, else `limit`.
/// An override ends exactly at `until`.
pub fn effective(spec: &RateLimitPolicySpec, now: Timestamp) -> Effective {
    let running = |until: Timestamp| until > now;
    let changes_at = spec.temporary_overrides.iter().map(|o| o.until.0).filter(|&u| running(u)).min();
    let calendar = spec.limit.is_calendar().then(|| CalendarUnit::from_period(&spec.limit.period.0)).flatten();
    match spec.temporary_overrides.iter().enumerate().find(|(_, o)| running(o.until.0)) {
        Some((index, o)) => Effective {
            requests: o.requests,
            period: o.period.0.clone(),
            per_second: per_second(o.requests, &o.period),
            active: Some(ActiveOverride { index, until: o.until.0, reason: o.reason.clone() }),
            changes_at,
            calendar,
        },
        None => Effective {
            requests: spec.limit.requests,
            period: spec.limit.period.0.clone(),
            per_second: spec.limit.per_second(),
            active: None,
            changes_at,
            calendar,
        },
    }
}

fn per_second(requests: i64, period: &crate::api::common::GoDuration) -> Option<f64> {
    crate::api::common::RequestRate { requests, period: period.clone() }.per_second()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::{GoDuration, Time};
    use crate::api::ratelimit::TemporaryOverride;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn spec(overrides: &[(i64, &str, &str)]) -> RateLimitPolicySpec {
        RateLimitPolicySpec {
            limit: crate::api::ratelimit::Limit {
                requests: 600,
                period: GoDuration::from("1m"),
                window: None,
                time_zone: None,
            },
            temporary_overrides: overrides
                .iter()
                .map(|(requests, period, until)| TemporaryOverride {
                    requests: *requests,
                    period: GoDuration::from(*period),
                    until: Time(ts(until)),
                    reason: format!("boost to {requests}"),
                })
                .collect(),
            near_limit_ratio: None,
            usage: None,
            scaling: None,
            on_exhausted: None,
            enforce: None,
        }
    }

    #[test]
    fn without_overrides_the_limit_applies() {
        let e = effective(&spec(&[]), ts("2026-01-01T00:00:00Z"));
        assert_eq!(e.display(), "600/1m");
        assert_eq!(e.per_second, Some(10.0));
        assert_eq!(e.active, None);
        assert_eq!(e.changes_at, None);
    }

    #[test]
    fn an_override_applies_until_its_end_and_reverts_exactly_then() {
        let s = spec(&[(6000, "1m", "2026-01-01T12:00:00Z")]);
        let before = effective(&s, ts("2026-01-01T11:59:59Z"));
        assert_eq!(before.display(), "6000/1m");
        assert_eq!(before.per_second, Some(100.0));
        assert_eq!(before.active.as_ref().map(|a| a.index), Some(0));
        assert_eq!(before.changes_at, Some(ts("2026-01-01T12:00:00Z")), "requeue at the exact end");
        let at_end = effective(&s, ts("2026-01-01T12:00:00Z"));
        assert_eq!(at_end.display(), "600/1m", "an override ends at `until`");
        assert_eq!(at_end.active, None);
        assert_eq!(at_end.changes_at, None);
    }

    #[test]
    fn the_first_running_override_wins_and_the_earliest_end_is_the_next_change() {
        let s = spec(&[
            (100, "1s", "2026-01-01T00:00:00Z"), // over
            (9000, "1m", "2026-01-03T00:00:00Z"),
            (7000, "1m", "2026-01-02T00:00:00Z"),
        ]);
        let e = effective(&s, ts("2026-01-01T06:00:00Z"));
        assert_eq!(e.display(), "9000/1m");
        assert_eq!(e.active.as_ref().map(|a| a.index), Some(1));
        assert_eq!(e.changes_at, Some(ts("2026-01-02T00:00:00Z")));
        // After the third ends, the second still runs; after both, the limit.
        assert_eq!(effective(&s, ts("2026-01-02T06:00:00Z")).display(), "9000/1m");
        assert_eq!(effective(&s, ts("2026-01-03T06:00:00Z")).display(), "600/1m");
    }

    #[test]
    fn an_unparseable_period_has_no_rate() {
        let mut s = spec(&[]);
        s.limit.period = GoDuration::from("soon");
        assert_eq!(effective(&s, ts("2026-01-01T00:00:00Z")).per_second, None);
    }
}
