//! Quota accounting under a calendar limit (`limit.window: Calendar`): how many requests each key used in the
//! current window, what remains, when it resets, and the `NearLimit`/`Exhausted` verdicts on that quota. Pure.
//!
//! `used` comes from the same source as the rates:
//! - Prometheus counts it: the poll also runs `usage.prometheus.usedQuery` (or a subquery integral of the rate
//!   query) over the time since the window started ([`Used::Counted`]).
//! - A scrape source's rates are counter deltas over the span since the previous poll, so the requests added by a
//!   poll are rate × span ([`Used::Rates`]); they are added to the key's [`Tally`], which lives in the controller's
//!   memory and, across restarts, in the key's status (`usage.used` with `usage.windowStart`).

use std::collections::HashMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::calendar::Window;
use super::key_usage::{self, KeyStatus};
use crate::api::apikey::KeyUsage;
use crate::api::common::Time;
use crate::usage::Rates;

/// What a poll says about the requests used in the current window.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Used {
    /// Not a calendar limit (nothing is counted).
    #[default]
    None,
    /// Requests used since the window started, by key label (Prometheus: `increase` over the window).
    Counted(Rates),
    /// The poll's rates held over `[from, to]` (a scrape source's counter deltas): each key used rate × that span.
    /// `from` is `None` when no earlier poll read the counters (the rates are then the first ones).
    Rates { from: Option<Timestamp>, to: Timestamp },
}

/// A key's running count of the current window (scrape sources), kept between polls.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tally {
    /// The window it counts in.
    pub window_start: Timestamp,
    /// Requests used in it so far (not rounded, so small increments are not lost between status writes).
    pub used: f64,
}

/// Tallies by ApiKey name.
pub type Tallies = HashMap<String, Tally>;

/// The requests a key used in `window` after a poll whose rates it had at `rps`.
///
/// `Counted`: what Prometheus counted for the key's ids (`counted` is already summed over them). `Rates`: the
/// key's tally (the one in memory, else the one in its status, if it is of this window; else 0) plus rate × the
/// part of the poll's span inside the window (after a boundary only what came after the start counts: the reset).
pub fn used(
    source: &Used,
    counted: f64,
    rps: f64,
    memory: Option<Tally>,
    status: Option<&KeyUsage>,
    window: Window,
) -> f64 {
    match source {
        Used::None => 0.0,
        Used::Counted(_) => counted,
        Used::Rates { from, to } => {
            let base = match memory {
                Some(t) if t.window_start == window.start => t.used,
                Some(_) => 0.0,
                None => status
                    .filter(|u| u.window_start.as_ref().map(|t| t.0) == Some(window.start))
                    .and_then(|u| u.used)
                    .map_or(0.0, |u| u.max(0) as f64),
            };
            let span = from.map_or(0.0, |from| to.duration_since(from.max(window.start)).as_secs_f64().max(0.0));
            base + rps * span
        }
    }
}

/// A calendar key's quota: `used` of `requests` (the limit in force, a boost included) in `window`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quota {
    pub used: f64,
    pub requests: i64,
    pub window: Window,
}

impl Quota {
    /// `used` over the window's requests; 0 for a limit of 0 requests (never a division by zero).
    pub fn utilization(&self) -> f64 {
        if self.requests > 0 { self.used / self.requests as f64 } else { 0.0 }
    }

    /// Requests used, rounded to a whole request.
    pub fn used_requests(&self) -> i64 {
        // NB: `as` saturates; a non-finite `used` (not reachable from finite rates) would become 0.
        self.used.round() as i64
    }

    /// Requests left in the window, at least 0.
    pub fn remaining(&self) -> i64 {
        self.requests.saturating_sub(self.used_requests()).max(0)
    }

    /// The measurement, for messages.
    pub fn describe(&self) -> String {
        format!(
            "{} of {} requests used ({}) in the window since {} (resets at {})",
            self.used_requests(),
            self.requests,
            key_usage::percent(self.utilization()),
            self.window.start,
            self.window.end
        )
    }
}

/// The status of a key under a calendar limit: its rate as under a rolling limit (`limit` is the window's requests
/// per second of its length), `utilization` and the verdicts on the quota (`used` over the window's requests:
/// `Exhausted` once it is all used), and `used`, `remaining`, `windowStart` and `resetsAt`.
pub fn desired(
    current: &[Condition],
    generation: Option<i64>,
    (rps, limit_rps): (f64, f64),
    quota: &Quota,
    near_limit_ratio: f64,
    now: Timestamp,
) -> KeyStatus {
    let utilization = quota.utilization();
    let conditions = key_usage::verdict(current, generation, utilization, near_limit_ratio, quota.describe(), now);
    KeyStatus {
        usage: KeyUsage {
            requests_per_second: key_usage::round(rps),
            limit: key_usage::round(limit_rps),
            utilization: key_usage::round(utilization),
            observed_at: Some(Time(now)),
            previous_key: None,
            used: Some(quota.used_requests()),
            remaining: Some(quota.remaining()),
            window_start: Some(Time(quota.window.start)),
            resets_at: Some(Time(quota.window.end)),
        },
        conditions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn day(start: &str) -> Window {
        let start = ts(start);
        Window { start, end: start + jiff::SignedDuration::from_hours(24) }
    }

    fn status(used: i64, window_start: &str) -> KeyUsage {
        KeyUsage { used: Some(used), window_start: Some(Time(ts(window_start))), ..KeyUsage::default() }
    }

    #[test]
    fn prometheus_counts_are_taken_as_they_are() {
        let w = day("2026-01-02T00:00:00Z");
        let counted = Used::Counted(Rates::new());
        assert_eq!(used(&counted, 1234.0, 5.0, None, Some(&status(99, "2026-01-02T00:00:00Z")), w), 1234.0);
    }

    #[test]
    fn scrape_rates_accumulate_over_the_span_since_the_previous_poll() {
        let w = day("2026-01-02T00:00:00Z");
        let poll = Used::Rates { from: Some(ts("2026-01-02T10:00:00Z")), to: ts("2026-01-02T10:00:15Z") };
        let memory = Tally { window_start: w.start, used: 100.5 };
        assert_eq!(used(&poll, 0.0, 2.0, Some(memory), None, w), 130.5, "100.5 + 2 req/s × 15 s");
        // Without a tally in memory (a restart), the status's count of the same window is the base.
        assert_eq!(used(&poll, 0.0, 2.0, None, Some(&status(500, "2026-01-02T00:00:00Z")), w), 530.0);
        // A status of another window is not.
        assert_eq!(used(&poll, 0.0, 2.0, None, Some(&status(500, "2026-01-01T00:00:00Z")), w), 30.0);
        // The first rates of a source have no span: nothing is added (the counters' history is unknown).
        let first = Used::Rates { from: None, to: ts("2026-01-02T10:00:15Z") };
        assert_eq!(used(&first, 0.0, 2.0, Some(memory), None, w), 100.5);
    }

    #[test]
    fn a_new_window_starts_from_what_came_after_its_start() {
        let w = day("2026-01-03T00:00:00Z");
        let across = Used::Rates { from: Some(ts("2026-01-02T23:59:50Z")), to: ts("2026-01-03T00:00:05Z") };
        let yesterday = Tally { window_start: ts("2026-01-02T00:00:00Z"), used: 9000.0 };
        assert_eq!(used(&across, 0.0, 10.0, Some(yesterday), None, w), 50.0, "only the 5 s after midnight");
        // The memory tally of the old window wins over the status: both are of the old window.
        assert_eq!(used(&across, 0.0, 10.0, Some(yesterday), Some(&status(9000, "2026-01-02T00:00:00Z")), w), 50.0);
    }

    #[test]
    fn the_quota_runs_out_and_reports_what_remains() {
        let w = day("2026-01-02T00:00:00Z");
        let now = ts("2026-01-02T12:00:00Z");
        let q = |used: f64| Quota { used, requests: 1000, window: w };
        let calm = desired(&[], Some(1), (0.5, 1000.0 / 86400.0), &q(400.0), 0.8, now);
        assert!(!calm.near_limit() && !calm.exhausted());
        assert_eq!((calm.usage.used, calm.usage.remaining), (Some(400), Some(600)));
        assert_eq!(calm.usage.utilization, 0.4);
        assert_eq!(calm.usage.window_start, Some(Time(w.start)));
        assert_eq!(calm.usage.resets_at, Some(Time(w.end)));
        let near = desired(&calm.conditions, Some(1), (0.5, 0.01), &q(850.0), 0.8, now);
        assert!(near.near_limit() && !near.exhausted());
        let out = desired(&near.conditions, Some(1), (0.5, 0.01), &q(1000.0), 0.8, now);
        assert!(out.exhausted(), "exhausted once used reaches the requests");
        assert_eq!(out.usage.remaining, Some(0));
        let over = desired(&out.conditions, Some(1), (0.5, 0.01), &q(1500.4), 0.8, now);
        assert_eq!((over.usage.used, over.usage.remaining), (Some(1500), Some(0)), "remaining never below 0");
        let c = over.conditions.iter().find(|c| c.type_ == key_usage::EXHAUSTED).expect("Exhausted");
        assert!(c.message.contains("1500 of 1000 requests") && c.message.contains("resets at"), "{}", c.message);
        // The next window: the verdicts clear.
        let next = Quota { used: 3.0, requests: 1000, window: day("2026-01-03T00:00:00Z") };
        let reset = desired(&over.conditions, Some(1), (0.5, 0.01), &next, 0.8, ts("2026-01-03T00:00:10Z"));
        assert!(!reset.exhausted() && !reset.near_limit());
        let zero = Quota { used: 3.0, requests: 0, window: w };
        assert!(zero.utilization().is_finite());
    }

    #[test]
    fn quota_writes_happen_when_they_matter_and_not_on_every_poll() {
        let w = day("2026-01-02T00:00:00Z");
        let now = ts("2026-01-02T12:00:00Z");
        let at = |used: f64, current: &KeyStatus, window: Window| {
            desired(&current.conditions, None, (1.0, 0.01), &Quota { used, requests: 1000, window }, 0.8, now)
        };
        let empty = KeyStatus { usage: KeyUsage::default(), conditions: Vec::new() };
        let first = at(100.0, &empty, w);
        assert!(key_usage::worth_writing(None, &[], &first));
        let write = |old: &KeyStatus, new: &KeyStatus| key_usage::worth_writing(Some(&old.usage), &old.conditions, new);
        assert!(!write(&first, &at(100.0, &first, w)), "nothing changed: no write");
        assert!(!write(&first, &at(109.0, &first, w)), "0.9% of the limit: not yet");
        assert!(write(&first, &at(110.0, &first, w)), "1% of the limit");
        assert!(write(&first, &at(100.0, &first, day("2026-01-03T00:00:00Z"))), "a new window");
        let almost = at(995.0, &first, w);
        assert!(write(&almost, &at(1000.0, &almost, w)), "the quota ran out");
        let rolling = key_usage::desired(&first.conditions, None, 1.0, 0.01, 0.8, "1000/24h", now);
        assert!(write(&rolling, &first), "a key that switched to a calendar limit");
    }
}
