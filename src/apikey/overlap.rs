//! When the previous key goes: at the end of its grace period, earlier once its traffic has stopped
//! (`rotation.retirePreviousWhenIdle`), or later while clients still use it (`rotation.extendGraceWhileInUse`), from
//! the traffic on the previous key id that its RateLimitPolicy reports in `status.usage.previousKey`. Without usage
//! data for the previous key id, neither applies. Pure.

use jiff::{SignedDuration, Timestamp};

use super::book::Book;
use crate::api::apikey::PreviousKeyUsage;
use crate::schedule::Overlap;

/// When the previous key held in `book` goes, and why.
#[derive(Clone, Debug, PartialEq)]
pub enum End {
    /// At the end of its grace period.
    Grace(Timestamp),
    /// Earlier: no traffic on it since `idle_since`, for the configured time.
    Idle { at: Timestamp, idle_since: Timestamp },
    /// Later: it still has `rps` requests per second; kept until `until` (or until its traffic stops).
    InUse { until: Timestamp, rps: f64 },
}

impl End {
    /// The moment the previous key goes.
    pub fn at(&self) -> Timestamp {
        match self {
            End::Grace(t) => *t,
            End::Idle { at, .. } => *at,
            End::InUse { until, .. } => *until,
        }
    }
}

/// When the previous key of `book` goes at `now`; `None` without a previous key (or its grace end). `grace` is the
/// spec's grace period now: one shortened since the rotation ends the previous key earlier.
pub fn previous_end(
    book: &Book,
    (overlap, grace): (Overlap, std::time::Duration),
    usage: Option<&PreviousKeyUsage>,
    now: Timestamp,
) -> Option<End> {
    let written = book.previous_expires_at.filter(|_| book.has_previous())?;
    let span = |d: std::time::Duration| SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX);
    let shortened = book.rotated_at.and_then(|at| at.checked_add(span(grace)).ok());
    let grace_end = shortened.map_or(written, |s| s.min(written));
    // Only figures about this very previous key count.
    let usage = usage.filter(|u| book.previous_key_id.as_deref() == Some(u.key_id.as_str()));
    if let (Some(retire), Some(idle_since)) = (overlap.retire_when_idle, usage.and_then(|u| u.idle_since.as_ref())) {
        let at = idle_since.0.saturating_add(span(retire)).unwrap_or(Timestamp::MAX);
        if at < grace_end {
            return Some(End::Idle { at, idle_since: idle_since.0 });
        }
    }
    let in_use = usage.filter(|u| u.idle_since.is_none() && u.requests_per_second > 0.0);
    if let (Some(max), Some(u), Some(rotated_at)) = (overlap.extend_max, in_use, book.rotated_at)
        && now >= grace_end
    {
        let until = rotated_at.saturating_add(span(max)).unwrap_or(Timestamp::MAX);
        if until > grace_end {
            return Some(End::InUse { until, rps: u.requests_per_second });
        }
    }
    Some(End::Grace(grace_end))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::api::common::Time;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("ts")
    }

    fn book() -> Book {
        Book {
            key_id: Some("aaaaaaaaaaaa".into()),
            rotated_at: Some(ts("2026-01-01T00:00:00Z")),
            previous_key_id: Some("bbbbbbbbbbbb".into()),
            previous_expires_at: Some(ts("2026-01-02T00:00:00Z")),
            rotation_count: 1,
            rotate_request: None,
        }
    }

    fn usage(id: &str, rps: f64, idle_since: Option<&str>) -> PreviousKeyUsage {
        PreviousKeyUsage { key_id: id.into(), requests_per_second: rps, idle_since: idle_since.map(|t| Time(ts(t))) }
    }

    const BOTH: Overlap =
        Overlap { retire_when_idle: Some(Duration::from_secs(3600)), extend_max: Some(Duration::from_secs(72 * 3600)) };

    #[test]
    fn idle_retires_early_and_in_use_extends_up_to_max() {
        let grace = ts("2026-01-02T00:00:00Z");
        let day = Duration::from_secs(86_400);
        let at = |u: Option<&PreviousKeyUsage>, now: &str| previous_end(&book(), (BOTH, day), u, ts(now));
        assert_eq!(at(None, "2026-01-01T01:00:00Z"), Some(End::Grace(grace)), "no data: the grace period");
        let idle = usage("bbbbbbbbbbbb", 0.0, Some("2026-01-01T02:00:00Z"));
        let want = End::Idle { at: ts("2026-01-01T03:00:00Z"), idle_since: ts("2026-01-01T02:00:00Z") };
        assert_eq!(at(Some(&idle), "2026-01-01T02:30:00Z"), Some(want));
        let late_idle = usage("bbbbbbbbbbbb", 0.0, Some("2026-01-01T23:30:00Z"));
        assert_eq!(at(Some(&late_idle), "2026-01-01T23:45:00Z"), Some(End::Grace(grace)), "never later than grace");
        let busy = usage("bbbbbbbbbbbb", 2.5, None);
        assert_eq!(at(Some(&busy), "2026-01-01T12:00:00Z"), Some(End::Grace(grace)), "before the end: nothing yet");
        let extended = End::InUse { until: ts("2026-01-04T00:00:00Z"), rps: 2.5 };
        assert_eq!(at(Some(&busy), "2026-01-02T00:00:00Z"), Some(extended));
        let other = usage("cccccccccccc", 2.5, None);
        assert_eq!(at(Some(&other), "2026-01-02T00:00:00Z"), Some(End::Grace(grace)), "figures of another key");
        let none = Overlap::default();
        assert_eq!(
            previous_end(&book(), (none, day), Some(&busy), ts("2026-01-02T00:00:00Z")),
            Some(End::Grace(grace))
        );
        let no_previous = Book { previous_key_id: None, ..book() };
        assert_eq!(previous_end(&no_previous, (BOTH, day), Some(&busy), ts("2026-01-02T00:00:00Z")), None);
        // A grace period shortened since the rotation ends it earlier.
        let hour = Duration::from_secs(3600);
        let short = previous_end(&book(), (none, hour), None, ts("2026-01-01T00:30:00Z"));
        assert_eq!(short, Some(End::Grace(ts("2026-01-01T01:00:00Z"))));
    }
}
