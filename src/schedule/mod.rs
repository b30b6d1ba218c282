//! When the next rotation of an API key is due.
//!
//! This module owns the reading of `spec.rotation` into a [`RotationPlan`] (interval or 5-field cron schedule in an
//! IANA time zone, grace period, jitter) and the arithmetic that turns the time of the last rotation into the time of
//! the next one. It is pure: the clock is never read here, every instant comes in as an argument, so the same inputs
//! always give the same answer and a repeated reconcile is idempotent.
//!
//! Every value in the spec is checked again here, because objects stored before a schema change may hold values the
//! schema now refuses; a bad value is a [`ScheduleError`] naming the field, with [`ScheduleError::reason`]
//! `InvalidSpec`.

use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use sha2::{Digest as _, Sha256};

use crate::api::apikey::Rotation;
use crate::api::bounds;
use crate::api::common::GoDuration;
use crate::api::duration::DurationError;
use crate::minimums::{self, Minimums};

#[cfg(test)]
mod tests;

/// How long the previous key stays valid after a rotation when `rotation.gracePeriod` is not set.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(24 * 3600);

/// The time zone a schedule is read in when `rotation.timeZone` is not set.
pub const DEFAULT_TIME_ZONE: &str = "UTC";

/// Why `spec.rotation` cannot be turned into a [`RotationPlan`]. Every message starts with the field at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    /// A duration field does not parse.
    #[error("{field}: {source}")]
    InvalidDuration {
        /// The field, e.g. `rotation.interval`.
        field: &'static str,
        /// What the duration parser refused.
        source: DurationError,
    },
    /// A duration parses but is too large to add to a time.
    #[error("{field}: duration {value:?} is too large")]
    DurationTooLarge {
        /// The field, e.g. `rotation.jitter`.
        field: &'static str,
        /// The value as written.
        value: String,
    },
    /// A duration is above the maximum the schema allows (an object stored before the schema had the bound).
    #[error("{0}")]
    AboveMaximum(String),
    /// A duration is below the minimum the operator allows (`keyward run --min-…`).
    #[error("{0}")]
    BelowMinimum(String),
    /// `rotation.schedule` runs twice closer together than the operator's minimum rotation interval.
    #[error(
        "rotation.schedule: cron expression {value:?} runs twice within {gap}, below the minimum of {min} this \
         operator allows between rotations (keyward run --min-rotation-interval)"
    )]
    CronTooFrequent {
        /// The value as written.
        value: String,
        /// The shortest gap found between two runs.
        gap: String,
        /// The operator's minimum.
        min: String,
    },
    /// `rotation.interval` is zero, which would rotate the key in a hot loop.
    #[error("rotation.interval: must be greater than 0s, got {0:?}")]
    ZeroInterval(String),
    /// Both `rotation.interval` and `rotation.schedule` are set.
    #[error("rotation: set at most one of rotation.interval and rotation.schedule")]
    IntervalAndSchedule,
    /// `rotation.timeZone` is set without `rotation.schedule`.
    #[error("rotation.timeZone: only allowed together with rotation.schedule")]
    TimeZoneWithoutSchedule,
    /// `rotation.timeZone` is not a known IANA time zone.
    #[error("rotation.timeZone: unknown IANA time zone {value:?}: {detail}")]
    InvalidTimeZone {
        /// The value as written.
        value: String,
        /// Why the time zone database refused it.
        detail: String,
    },
    /// `rotation.schedule` does not have exactly five fields.
    #[error(
        "rotation.schedule: cron expression {value:?} has {fields} field(s); expected exactly 5: \
         minute hour day-of-month month day-of-week"
    )]
    CronFieldCount {
        /// The value as written.
        value: String,
        /// How many whitespace-separated fields it has.
        fields: usize,
    },
    /// `rotation.schedule` has five fields but does not parse.
    #[error("rotation.schedule: invalid cron expression {value:?}: {detail}")]
    InvalidCron {
        /// The value as written.
        value: String,
        /// What the cron parser refused.
        detail: String,
    },
    /// `rotation.schedule` parses but names no time that ever occurs, e.g. `0 0 30 2 *`.
    #[error("rotation.schedule: cron expression {0:?} never matches any date")]
    CronNeverMatches(String),
}

impl ScheduleError {
    /// The condition reason for every schedule error: the spec is at fault, not the cluster.
    pub fn reason(&self) -> &'static str {
        "InvalidSpec"
    }
}

/// What starts a rotation without a request.
#[derive(Debug, Clone)]
enum Trigger {
    /// Neither an interval nor a schedule: the key rotates only on request.
    Never,
    /// This long after the last rotation; always > 0.
    Interval(SignedDuration),
    /// The first schedule time strictly after the last rotation.
    Schedule(Box<CronSchedule>),
}

/// A parsed 5-field cron expression and the time zone its wall-clock times are read in.
#[derive(Debug, Clone)]
struct CronSchedule {
    cron: Cron,
    time_zone: TimeZone,
}

/// `spec.rotation`, parsed and checked once; answers when the next rotation is due.
#[derive(Debug, Clone)]
pub struct RotationPlan {
    trigger: Trigger,
    grace_period: Duration,
    /// Whether `rotation.gracePeriod` is set; a default grace period is shortened to fit between rotations.
    grace_explicit: bool,
    /// The operator's minimum grace period (`keyward run --min-grace-period`): no grace is shortened below it.
    min_grace: Duration,
    jitter: Duration,
    /// `retirePreviousWhenIdle` and `extendGraceWhileInUse.max`.
    overlap: Overlap,
}

/// How usage may shorten or lengthen a previous key's grace period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overlap {
    /// `rotation.retirePreviousWhenIdle`.
    pub retire_when_idle: Option<Duration>,
    /// `rotation.extendGraceWhileInUse.max`, counted from the rotation.
    pub extend_max: Option<Duration>,
}

impl RotationPlan {
    /// Parses `spec.rotation` with no operator minimums; see [`RotationPlan::from_spec_with`].
    pub fn from_spec(rotation: Option<&Rotation>) -> Result<RotationPlan, ScheduleError> {
        Self::from_spec_with(rotation, &Minimums::NONE)
    }

    /// Parses `spec.rotation`. `None`, or a rotation with neither `interval` nor `schedule`, gives a plan that never
    /// rotates on its own (but still has a grace period for rotations on request). Every duration is checked
    /// against the schema's maximum ([`bounds`]) and the operator's minimum (`min`; an explicit value below it is
    /// refused, the default grace period is raised to it).
    pub fn from_spec_with(rotation: Option<&Rotation>, min: &Minimums) -> Result<RotationPlan, ScheduleError> {
        let default_grace = DEFAULT_GRACE_PERIOD.max(min.grace_period);
        let Some(rotation) = rotation else {
            return Ok(RotationPlan {
                trigger: Trigger::Never,
                grace_period: default_grace,
                grace_explicit: false,
                min_grace: min.grace_period,
                jitter: Duration::ZERO,
                overlap: Overlap::default(),
            });
        };
        let grace_period = match &rotation.grace_period {
            Some(d) => {
                let grace = parse_duration("rotation.gracePeriod", d)?;
                at_most("rotation.gracePeriod", grace, bounds::MAX_GRACE_PERIOD)?;
                minimums::at_least("rotation.gracePeriod", grace, min.grace_period, minimums::flag::GRACE_PERIOD)
                    .map_err(ScheduleError::BelowMinimum)?;
                grace
            }
            None => default_grace,
        };
        let jitter = match &rotation.jitter {
            Some(d) => parse_duration("rotation.jitter", d)?,
            None => Duration::ZERO,
        };
        at_most("rotation.jitter", jitter, bounds::MAX_JITTER)?;
        // The jitter offset is added to a time, so it must fit a signed duration.
        to_signed("rotation.jitter", rotation.jitter.as_ref(), jitter)?;

        let trigger = match (&rotation.interval, &rotation.schedule) {
            (Some(_), Some(_)) => return Err(ScheduleError::IntervalAndSchedule),
            (Some(interval), None) => {
                if rotation.time_zone.is_some() {
                    return Err(ScheduleError::TimeZoneWithoutSchedule);
                }
                let parsed = parse_duration("rotation.interval", interval)?;
                if parsed.is_zero() {
                    return Err(ScheduleError::ZeroInterval(interval.0.clone()));
                }
                at_most("rotation.interval", parsed, bounds::MAX_ROTATION_INTERVAL)?;
                minimums::at_least(
                    "rotation.interval",
                    parsed,
                    min.rotation_interval,
                    minimums::flag::ROTATION_INTERVAL,
                )
                .map_err(ScheduleError::BelowMinimum)?;
                Trigger::Interval(to_signed("rotation.interval", Some(interval), parsed)?)
            }
            (None, Some(schedule)) => {
                let time_zone = parse_time_zone(rotation.time_zone.as_deref())?;
                let cron = CronSchedule::parse(schedule, time_zone)?;
                if let Some(gap) = cron.gap_below(min.rotation_interval) {
                    return Err(ScheduleError::CronTooFrequent {
                        value: schedule.clone(),
                        gap: minimums::show(gap),
                        min: minimums::show(min.rotation_interval),
                    });
                }
                Trigger::Schedule(Box::new(cron))
            }
            (None, None) => {
                if rotation.time_zone.is_some() {
                    return Err(ScheduleError::TimeZoneWithoutSchedule);
                }
                Trigger::Never
            }
        };
        let (grace_explicit, min_grace) = (rotation.grace_period.is_some(), min.grace_period);
        let overlap = overlap(rotation)?;
        Ok(RotationPlan { trigger, grace_period, grace_explicit, min_grace, jitter, overlap })
    }

    /// How usage may shorten or lengthen the previous key's grace period.
    pub fn overlap(&self) -> Overlap {
        self.overlap
    }

    /// Whether the key rotates on its own (an interval or a schedule is set).
    pub fn rotates_on_its_own(&self) -> bool {
        !matches!(self.trigger, Trigger::Never)
    }

    /// How long the previous key stays valid after a rotation: `rotation.gracePeriod`, default 24h; may be zero.
    /// The longest grace a rotation can give (see [`RotationPlan::grace_period_at`]).
    pub fn grace_period(&self) -> Duration {
        self.grace_period
    }

    /// The grace period a rotation at `now` gives the key it replaces. An explicit `rotation.gracePeriod` as
    /// written. The default (24h) is shortened to half the time until the next scheduled rotation, so that with an
    /// interval or a schedule shorter than two days every key still gets its whole grace before the next rotation
    /// comes (a rotation never cuts a grace short: it waits, see `apikey::plan::decide`); never below the
    /// operator's minimum grace period.
    pub fn grace_period_at(&self, now: Timestamp, jitter_key: &str) -> Duration {
        if self.grace_explicit {
            return self.grace_period;
        }
        let until_next = self
            .next_rotation(now, jitter_key)
            .and_then(|next| Duration::try_from(next.duration_since(now)).ok())
            .unwrap_or(Duration::MAX);
        self.grace_period.min(until_next / 2).max(self.min_grace)
    }

    /// The upper bound (exclusive) of the delay added to each due time: `rotation.jitter`, default zero.
    pub fn jitter(&self) -> Duration {
        self.jitter
    }

    /// When the rotation after the one at `last_rotation` is due, or `None` if the key never rotates on its own.
    ///
    /// The un-jittered due time is `last_rotation + interval`, or the first schedule time strictly after
    /// `last_rotation`. To it is added a deterministic offset in `[0, jitter)` derived from SHA-256 of `jitter_key`
    /// and the un-jittered due time, so a repeated call gives the same answer while keys with different
    /// `jitter_key`s (use the ApiKey's namespace/name/uid) sharing a schedule spread out. The offset is a whole
    /// number of seconds when the jitter is at least 1s, else a number of nanoseconds.
    ///
    /// The result is always strictly after `last_rotation`. `None` is also returned when the due time lies beyond
    /// the range of times this module can represent (the year 5000 for schedules, 9999 for intervals), which for a
    /// key is the same as never.
    pub fn next_rotation(&self, last_rotation: Timestamp, jitter_key: &str) -> Option<Timestamp> {
        let due = match &self.trigger {
            Trigger::Never => return None,
            Trigger::Interval(interval) => last_rotation.checked_add(*interval).ok()?,
            Trigger::Schedule(schedule) => schedule.next_after(last_rotation)?,
        };
        due.checked_add(jitter_offset(self.jitter, jitter_key, due)).ok()
    }
}

/// `retirePreviousWhenIdle` and `extendGraceWhileInUse.max`, each above zero and at most a year.
fn overlap(rotation: &Rotation) -> Result<Overlap, ScheduleError> {
    let field = |name: &'static str, d: Option<&GoDuration>| -> Result<Option<Duration>, ScheduleError> {
        let Some(d) = d else { return Ok(None) };
        let parsed = parse_duration(name, d)?;
        if parsed.is_zero() {
            return Err(ScheduleError::AboveMaximum(format!("{name} must be greater than 0s")));
        }
        at_most(name, parsed, bounds::MAX_GRACE_PERIOD)?;
        Ok(Some(parsed))
    };
    Ok(Overlap {
        retire_when_idle: field("rotation.retirePreviousWhenIdle", rotation.retire_previous_when_idle.as_ref())?,
        extend_max: field(
            "rotation.extendGraceWhileInUse.max",
            rotation.extend_grace_while_in_use.as_ref().map(|e| &e.max),
        )?,
    })
}

impl CronSchedule {
    /// Parses a standard 5-field cron expression, read in `time_zone`.
    ///
    /// Fields: minute (0-59), hour (0-23), day of month (1-31), month (1-12 or JAN-DEC), day of week (0-7 or
    /// SUN-SAT, 0 and 7 are Sunday), each `*`, a number, a range `a-b`, a step `*/n` or `a-b/n`, or a list of those.
    /// When both day of month and day of week are restricted (neither is `*`), a day matches if either matches, as
    /// in Vixie cron. Croner's extensions (`?`, `L`, `W`, `#`) are accepted too; `@daily`-style nicknames, seconds
    /// and years are not (they do not have five fields).
    fn parse(expression: &str, time_zone: TimeZone) -> Result<CronSchedule, ScheduleError> {
        let fields = expression.split_whitespace().count();
        if fields != 5 {
            return Err(ScheduleError::CronFieldCount { value: expression.to_string(), fields });
        }
        let parser = CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).build();
        let cron = parser
            .parse(expression)
            .map_err(|e| ScheduleError::InvalidCron { value: expression.to_string(), detail: e.to_string() })?;
        let schedule = CronSchedule { cron, time_zone };
        // A 5-field expression repeats with the 400-year Gregorian cycle (weekdays included), so one that matches
        // some time after 1970 matches after any time; one that does not (`0 0 30 2 *`) would otherwise make every
        // reconcile search up to croner's limit and then report "never", silently.
        if schedule.next_after(Timestamp::UNIX_EPOCH).is_none() {
            return Err(ScheduleError::CronNeverMatches(expression.to_string()));
        }
        Ok(schedule)
    }

    /// A gap between two consecutive runs shorter than `min`, if there is one.
    ///
    /// A 5-field schedule never runs twice within a minute, so a `min` of 60 s or less always passes without a
    /// search. Otherwise the runs from a fixed instant (2001-01-01, so the answer never depends on the clock) are
    /// walked for up to [`GAP_SEARCH_DAYS`] days or [`GAP_SEARCH_RUNS`] runs, which covers every daily, weekly and
    /// monthly pattern; the search stops at the first gap that is too short.
    fn gap_below(&self, min: Duration) -> Option<Duration> {
        if min <= Duration::from_secs(60) {
            return None;
        }
        let start = Timestamp::from_second(978_307_200).ok()?;
        let horizon = start.checked_add(SignedDuration::from_hours(24 * GAP_SEARCH_DAYS)).ok()?;
        let mut previous = self.next_after(start)?;
        for _ in 0..GAP_SEARCH_RUNS {
            let next = self.next_after(previous)?;
            let gap = Duration::try_from(next.duration_since(previous)).unwrap_or_default();
            if gap < min {
                return Some(gap);
            }
            if next > horizon {
                return None;
            }
            previous = next;
        }
        None
    }

    /// The first schedule time strictly after `after`.
    ///
    /// NB: daylight saving time. Croner (4.x, OCPS rules) walks the wall clock of the zone and treats two kinds of
    /// expression differently:
    /// - fixed-time (a single minute and a single hour, e.g. `30 2 * * *`): a time the clock skips (spring forward,
    ///   Europe/Berlin 2026-03-29 02:30) fires at the first instant after the gap (03:00 CEST = 01:00 UTC), once; a
    ///   time the clock repeats (fall back, 2026-10-25 02:30) fires once, at the earlier instant (02:30 CEST =
    ///   00:30 UTC), and not again an hour later.
    /// - everything else (a wildcard, range, list or step in the minute or hour, e.g. `30 * * * *` or
    ///   `30 1-3 * * *`): skipped wall-clock times do not fire and repeated ones fire at both instants, so an hourly
    ///   schedule stays hourly in real time.
    ///
    /// Croner compares instants, not wall-clock times, and searches from `after` exclusively; the loop below still
    /// re-checks that the answer is strictly after `after` so that a time <= the last rotation can never come out.
    fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let mut from = after.to_zoned(self.time_zone.clone());
        // Croner's own search is bounded (it gives up past the year 5000), and each turn of this loop starts
        // strictly later than the one before, so the loop ends; in practice the first turn returns.
        for _ in 0..4 {
            let next = self.cron.find_next_occurrence(&from, false).ok()?;
            if next.timestamp() > after {
                return Some(next.timestamp());
            }
            from = from.checked_add(SignedDuration::from_secs(1)).ok()?;
        }
        None
    }
}

/// How far [`CronSchedule::gap_below`] looks: a leap year and a day (a monthly or yearly pattern repeats within).
const GAP_SEARCH_DAYS: i64 = 367;
/// At most this many runs are walked by [`CronSchedule::gap_below`] (bounds the cost of a frequent schedule).
const GAP_SEARCH_RUNS: usize = 1_000;

/// Refuses a duration above the schema's maximum, for objects stored before the schema had it.
fn at_most(field: &str, value: Duration, max: Duration) -> Result<(), ScheduleError> {
    bounds::check_at_most(field, value, max).map_err(ScheduleError::AboveMaximum)
}

/// Parses one duration field, naming the field in the error.
fn parse_duration(field: &'static str, value: &GoDuration) -> Result<Duration, ScheduleError> {
    value.parse().map_err(|source| ScheduleError::InvalidDuration { field, source })
}

/// Converts a parsed duration to a signed one, which times can be shifted by.
fn to_signed(field: &'static str, written: Option<&GoDuration>, d: Duration) -> Result<SignedDuration, ScheduleError> {
    SignedDuration::try_from(d)
        .map_err(|_| ScheduleError::DurationTooLarge { field, value: written.map(|w| w.0.clone()).unwrap_or_default() })
}

/// Looks up `rotation.timeZone` in the bundled IANA database; `None` is UTC.
fn parse_time_zone(name: Option<&str>) -> Result<TimeZone, ScheduleError> {
    match name {
        None => Ok(TimeZone::UTC),
        Some(name) => TimeZone::get(name)
            .map_err(|e| ScheduleError::InvalidTimeZone { value: name.to_string(), detail: e.to_string() }),
    }
}

/// The deterministic delay in `[0, jitter)` added to the un-jittered due time `due` for the key `jitter_key`:
/// SHA-256 of `jitter_key`, a 0 byte and the due time in nanoseconds since the Unix epoch (16 bytes, big-endian),
/// first 8 bytes read as a big-endian integer, modulo the jitter in whole seconds (or in nanoseconds when the jitter
/// is under 1s). The modulo bias is below 2^-30 for any jitter under 100 years.
fn jitter_offset(jitter: Duration, jitter_key: &str, due: Timestamp) -> SignedDuration {
    let (units, unit_nanos) = if jitter.as_secs() >= 1 {
        (jitter.as_secs(), 1_000_000_000)
    } else {
        // Under a second, so the nanoseconds fit in u64.
        (u64::from(jitter.subsec_nanos()), 1)
    };
    if units == 0 {
        return SignedDuration::ZERO;
    }
    let mut hasher = Sha256::new();
    hasher.update(jitter_key.as_bytes());
    hasher.update([0u8]);
    hasher.update(due.as_nanosecond().to_be_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let offset_units = u64::from_be_bytes(first) % units;
    // `offset_units < units`, and `units` is either the whole seconds of a jitter that fits a SignedDuration
    // (checked in from_spec) or under 1e9 nanoseconds, so the product fits an i128 and the result a SignedDuration.
    let nanos = i128::from(offset_units) * unit_nanos;
    SignedDuration::try_from_nanos_i128(nanos).unwrap_or(SignedDuration::ZERO)
}
