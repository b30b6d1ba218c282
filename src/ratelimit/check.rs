//! The spec, checked for what the schema cannot catch: durations that do not parse or exceed the schema's maxima
//! (objects stored before the schema had them), bounds out of order, and the operator's minimums. Pure: whatever
//! the spec holds, this returns a message for `Ready=False` or values that the cycle's time arithmetic can use.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::calendar::{self, Window};
use super::limits::CalendarUnit;
use super::{DEFAULT_INTERVAL, DEFAULT_TARGET_UTILIZATION, key_usage, limits};
use crate::api::bounds::{self, MAX_RATE_PERIOD, MAX_STABILIZATION_WINDOW, MAX_USAGE_INTERVAL};
use crate::api::common::RequestRate;
use crate::api::ratelimit::{ExhaustedAction, RateLimitPolicySpec, Scaling};
use crate::minimums::{self, Minimums};
use crate::scaling;

/// The longest a policy's reconcile is requeued for: the effective limit or the poll may change on their own
/// sooner, but nothing is ever scheduled further out than this (kube's scheduler has its own cap; this one is ours).
pub const MAX_REQUEUE: Duration = Duration::from_secs(24 * 3600);

/// The spec, checked for what the schema cannot catch (objects stored before a schema change).
pub struct Checked {
    /// `usage.interval` (or its default raised to the operator's minimum): > 0, at most a day.
    pub interval: Duration,
    /// The limit in force at the time of the check.
    pub limit: limits::Effective,
    /// That limit in requests per second; under a calendar limit, its requests over the length of the current
    /// window (a 23-hour day has a higher rate than a 25-hour one).
    pub limit_rps: f64,
    /// `limit.window: Calendar`: the unit, the time zone and the window at the time of the check.
    pub calendar: Option<Calendar>,
    /// `nearLimitRatio` or its default, in (0, 1].
    pub near_limit_ratio: f64,
    /// `scaling`, checked.
    pub scaling: Option<CheckedScaling>,
    /// `usage.prometheus.tls.insecureSkipVerify` is set: reported as `SourceVerified=False`.
    pub insecure_source: bool,
    /// `onExhausted: {action: Suspend}`: a key Exhausted without a break this long is suspended.
    pub suspend_after: Option<Duration>,
}

/// A calendar limit, checked: the window unit, its time zone, and the window the check fell in.
#[derive(Clone, Debug)]
pub struct Calendar {
    pub unit: CalendarUnit,
    pub tz: jiff::tz::TimeZone,
    /// The window that contained the time of the check.
    pub window: Window,
}

impl Calendar {
    /// The window that contains `now` (after the check, a window may have ended); the checked one if `now` is at
    /// the end of representable time.
    pub fn window_at(&self, now: Timestamp) -> Window {
        calendar::window(self.unit, &self.tz, now).unwrap_or(self.window)
    }
}

/// `spec.scaling`, checked.
pub struct CheckedScaling {
    /// What one replica serves, in requests per second.
    pub capacity_rps: f64,
    /// Percent of capacity to aim for.
    pub target_utilization: i32,
    /// Fewest replicas.
    pub min: i32,
    /// Most replicas.
    pub max: i32,
    /// Scale-up stabilization window, at most an hour.
    pub up_window: Duration,
    /// Scale-down stabilization window, at most an hour.
    pub down_window: Duration,
}

impl Checked {
    /// When the poll after one at `last` is due: `last + interval`, saturating at the end of time (never a panic,
    /// whatever `last` is).
    pub fn next_poll(&self, last: Timestamp) -> Timestamp {
        let step = SignedDuration::try_from(self.interval).unwrap_or(SignedDuration::MAX);
        last.saturating_add(step).unwrap_or(Timestamp::MAX)
    }

    /// How long to wait at `now` before the next reconcile, after a poll at `from`: until the next poll, the next
    /// change of the effective limit or the end of the calendar window (the reset is reported promptly), whichever
    /// is first; at least 50 ms, at most [`MAX_REQUEUE`].
    pub fn requeue_after(&self, from: Timestamp, now: Timestamp) -> Duration {
        let window_end = self.calendar.as_ref().map(|c| c.window.end);
        let next = [Some(self.next_poll(from)), self.limit.changes_at, window_end].into_iter().flatten().min();
        let wait = next.map(|t| t.duration_since(now)).unwrap_or_default();
        Duration::try_from(wait).unwrap_or_default().clamp(Duration::from_millis(50), MAX_REQUEUE)
    }
}

/// Checks `spec` at `now` against the schema's maxima and the operator's minimums `min`. An explicit
/// `usage.interval` below the minimum is refused; the default (15s) is raised to it.
pub fn check(spec: &RateLimitPolicySpec, now: Timestamp, min: &Minimums) -> Result<Checked, String> {
    let usage = spec.usage.clone().unwrap_or_default();
    let interval = match &usage.interval {
        Some(d) => {
            let interval = d.parse().map_err(|e| format!("usage.interval: {e}"))?;
            if interval.is_zero() {
                return Err("usage.interval must be greater than 0".into());
            }
            bounds::check_at_most("usage.interval", interval, MAX_USAGE_INTERVAL)?;
            minimums::at_least("usage.interval", interval, min.usage_interval, minimums::flag::USAGE_INTERVAL)?;
            interval
        }
        None => DEFAULT_INTERVAL.max(min.usage_interval),
    };
    // Every period, the overrides' included (one may become active later), within the schema's maximum.
    period_at_most("limit.period", &spec.limit.rate())?;
    for (i, o) in spec.temporary_overrides.iter().enumerate() {
        let rate = RequestRate { requests: o.requests, period: o.period.clone() };
        period_at_most(&format!("temporaryOverrides[{i}].period"), &rate)?;
    }
    let limit = limits::effective(spec, now);
    let calendar = check_calendar(spec, now)?;
    let limit_rps = match &calendar {
        // NB: requests / 0 cannot happen: a window from `calendar::window` is never empty.
        Some(c) => limit.requests as f64 / c.window.length().as_secs_f64(),
        None => {
            let field = if limit.active.is_some() { "temporaryOverrides[].period" } else { "limit.period" };
            limit.per_second.ok_or_else(|| format!("{field}: {:?} is not a duration above 0", limit.period))?
        }
    };
    let near_limit_ratio = spec.near_limit_ratio.unwrap_or(key_usage::DEFAULT_NEAR_LIMIT_RATIO);
    if !(near_limit_ratio > 0.0 && near_limit_ratio <= 1.0) {
        return Err(format!("nearLimitRatio must be in (0, 1], got {near_limit_ratio}"));
    }
    let scaling = spec.scaling.as_ref().map(check_scaling).transpose()?;
    let insecure_source = spec
        .usage
        .as_ref()
        .and_then(|u| u.prometheus.as_ref())
        .and_then(|p| p.tls.as_ref())
        .is_some_and(|t| t.insecure_skip_verify == Some(true));
    let suspend_after = check_on_exhausted(spec)?;
    Ok(Checked { interval, limit, limit_rps, calendar, near_limit_ratio, scaling, insecure_source, suspend_after })
}

/// `limit.window: Calendar`: a period that names a clock unit (`1h`, `24h`, `1mo`), overrides counting in the same
/// windows, and a time zone the tz database knows (the schema checks only its shape). `None` for a rolling limit.
fn check_calendar(spec: &RateLimitPolicySpec, now: Timestamp) -> Result<Option<Calendar>, String> {
    let limit = &spec.limit;
    if !limit.is_calendar() {
        return Ok(None);
    }
    let period = &limit.period.0;
    let unit = CalendarUnit::from_period(period).ok_or_else(|| {
        format!("limit.period: limit.window Calendar counts per clock hour, day or month, so the period must be 1h, 24h or 1mo, not {period:?}")
    })?;
    if let Some((i, o)) = spec.temporary_overrides.iter().enumerate().find(|(_, o)| &o.period.0 != period) {
        return Err(format!(
            "temporaryOverrides[{i}].period: under limit.window Calendar an override counts in the limit's windows, so its period must be {period:?}, not {:?}",
            o.period.0
        ));
    }
    let tz = calendar::time_zone(limit.time_zone.as_deref())?;
    let window = calendar::window(unit, &tz, now).ok_or_else(|| format!("limit: no calendar window at {now}"))?;
    Ok(Some(Calendar { unit, tz, window }))
}

/// Default `onExhausted.after`.
pub const DEFAULT_SUSPEND_AFTER: Duration = Duration::from_secs(300);

/// `onExhausted`: how long a key may stay Exhausted before it is suspended, or `None` when nothing is done.
fn check_on_exhausted(spec: &RateLimitPolicySpec) -> Result<Option<Duration>, String> {
    let Some(on) = spec.on_exhausted.as_ref().filter(|o| o.action == ExhaustedAction::Suspend) else {
        return Ok(None);
    };
    let after = match &on.after {
        Some(d) => d.parse().map_err(|e| format!("onExhausted.after: {e}"))?,
        None => DEFAULT_SUSPEND_AFTER,
    };
    if after.is_zero() {
        return Err("onExhausted.after must be greater than 0".into());
    }
    bounds::check_at_most("onExhausted.after", after, MAX_USAGE_INTERVAL)?;
    Ok(Some(after))
}

/// A rate's period parses (or is left to the caller to report) and is at most [`MAX_RATE_PERIOD`].
fn period_at_most(field: &str, rate: &RequestRate) -> Result<(), String> {
    match rate.period.parse() {
        Ok(period) => bounds::check_at_most(field, period, MAX_RATE_PERIOD),
        Err(_) => Ok(()),
    }
}

fn check_scaling(s: &Scaling) -> Result<CheckedScaling, String> {
    let window = |rules: &Option<crate::api::ratelimit::ScalingRules>, field: &str, default: Duration| match rules
        .as_ref()
        .and_then(|r| r.stabilization_window.as_ref())
    {
        Some(d) => {
            let field = format!("scaling.{field}.stabilizationWindow");
            let window = d.parse().map_err(|e| format!("{field}: {e}"))?;
            bounds::check_at_most(&field, window, MAX_STABILIZATION_WINDOW).map(|()| window)
        }
        None => Ok(default),
    };
    period_at_most("scaling.capacityPerReplica.period", &s.capacity_per_replica)?;
    let capacity_rps = s
        .capacity_per_replica
        .per_second()
        .ok_or_else(|| "scaling.capacityPerReplica.period is not a duration above 0".to_string())?;
    let min = s.min_replicas.unwrap_or(1);
    if min > s.max_replicas {
        return Err(format!("scaling.minReplicas ({min}) is greater than scaling.maxReplicas ({})", s.max_replicas));
    }
    Ok(CheckedScaling {
        capacity_rps,
        target_utilization: s.target_utilization.unwrap_or(DEFAULT_TARGET_UTILIZATION),
        min,
        max: s.max_replicas,
        up_window: window(&s.scale_up, "scaleUp", scaling::DEFAULT_UP_WINDOW)?,
        down_window: window(&s.scale_down, "scaleDown", scaling::DEFAULT_DOWN_WINDOW)?,
    })
}
