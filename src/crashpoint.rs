//! Fault injection for the test suite: named crash points at the write boundaries of a rotation. OFF unless the
//! environment variable [`VAR`] is set; nothing in a deployment sets it.
//!
//! `KEYWARD_CRASH_AT=<point>[:<n>]` makes the process SIGKILL itself the `n`-th time (default: the first) it
//! reaches `<point>`, one of the kebab-case names of [`Point`] (e.g. `after-secret-write:3`). No destructor, drain
//! or flush runs: the crash a node failure or an OOM kill causes, but exactly between two writes. `tests/crash.rs`
//! uses it to prove that a restarted operator heals every such crash.
//!
//! Unset (or empty), [`hit`] costs one load of an initialised `OnceLock` and logs nothing. An unreadable value is
//! ignored with one warning, logged when the first point is reached: a typo must not crash an operator, and the
//! suite would notice, since it asserts that the process died by SIGKILL. A point is only a name and a counter:
//! no key material comes near this module.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::apikey::plan::Action;

/// The environment variable that arms a crash point.
pub const VAR: &str = "KEYWARD_CRASH_AT";

/// A write boundary of a rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Point {
    /// Before the Secret write that stores a new key (issue or rotation).
    BeforeSecretWrite,
    /// After that write, before the status write: the boundary between Secret and status.
    AfterSecretWrite,
    /// Before the Secret write that removes the previous key at the end of its grace period.
    BeforeGraceRemoval,
    /// After that write.
    AfterGraceRemoval,
    /// Before the Secret write that removes the key material (suspension, expiry).
    BeforeRevocation,
    /// After that write.
    AfterRevocation,
    /// Before the write of the previous key's own Secret (`secretTemplate.previous: OwnSecret`), which comes
    /// before the main Secret's write of a rotation.
    BeforePreviousSecretWrite,
    /// After that write, before the main Secret's.
    AfterPreviousSecretWrite,
    /// Before the deletion of the previous key's own Secret (grace over, revocation, new key), which comes after
    /// the main Secret's write.
    BeforePreviousSecretRemoval,
    /// After that deletion.
    AfterPreviousSecretRemoval,
    /// Before the pod-template patch of a rollout restart.
    BeforeRolloutRestart,
    /// After that patch.
    AfterRolloutRestart,
}

impl Point {
    /// Every point.
    pub const ALL: [Point; 12] = [
        Point::BeforeSecretWrite,
        Point::AfterSecretWrite,
        Point::BeforeGraceRemoval,
        Point::AfterGraceRemoval,
        Point::BeforeRevocation,
        Point::AfterRevocation,
        Point::BeforePreviousSecretWrite,
        Point::AfterPreviousSecretWrite,
        Point::BeforePreviousSecretRemoval,
        Point::AfterPreviousSecretRemoval,
        Point::BeforeRolloutRestart,
        Point::AfterRolloutRestart,
    ];

    /// The stable name used in [`VAR`].
    pub fn name(self) -> &'static str {
        match self {
            Point::BeforeSecretWrite => "before-secret-write",
            Point::AfterSecretWrite => "after-secret-write",
            Point::BeforeGraceRemoval => "before-grace-removal",
            Point::AfterGraceRemoval => "after-grace-removal",
            Point::BeforeRevocation => "before-revocation",
            Point::AfterRevocation => "after-revocation",
            Point::BeforePreviousSecretWrite => "before-previous-secret-write",
            Point::AfterPreviousSecretWrite => "after-previous-secret-write",
            Point::BeforePreviousSecretRemoval => "before-previous-secret-removal",
            Point::AfterPreviousSecretRemoval => "after-previous-secret-removal",
            Point::BeforeRolloutRestart => "before-rollout-restart",
            Point::AfterRolloutRestart => "after-rollout-restart",
        }
    }

    /// The points around the Secret write of an ApiKey action: the grace-removal points for `DropPrevious`, the
    /// secret-write points for a new key (issue, rotation), the revocation points for a removal, none for a reseal or
    /// no write.
    fn around_secret_write(action: &Action) -> Option<(Point, Point)> {
        match action {
            Action::Issue(_) | Action::Rotate { .. } => Some((Point::BeforeSecretWrite, Point::AfterSecretWrite)),
            Action::DropPrevious | Action::RetirePrevious { .. } => {
                Some((Point::BeforeGraceRemoval, Point::AfterGraceRemoval))
            }
            Action::Remove(_) => Some((Point::BeforeRevocation, Point::AfterRevocation)),
            Action::Reseal | Action::Reshape | Action::Nothing => None,
        }
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Point {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Point::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Point::ALL.iter().map(|p| p.name()).collect();
            format!("unknown crash point {s:?} (one of {})", names.join(", "))
        })
    }
}

/// An armed point: crash on its `at`-th hit.
#[derive(Debug)]
struct Armed {
    point: Point,
    at: u64,
    hits: AtomicU64,
}

/// Parses `<point>[:<n>]` (`n` ≥ 1, default 1); `Ok(None)` for an empty value.
fn parse(value: &str) -> Result<Option<(Point, u64)>, String> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    let (point, at) = match value.split_once(':') {
        Some((p, n)) => {
            let at = n.trim().parse::<u64>().ok().filter(|n| *n >= 1);
            (p.trim(), at.ok_or_else(|| format!("the hit count {n:?} is not a whole number of at least 1"))?)
        }
        None => (value, 1),
    };
    Ok(Some((point.parse()?, at)))
}

fn from_env() -> Option<Armed> {
    let value = std::env::var_os(VAR)?;
    let parsed = value.to_str().ok_or_else(|| "it is not UTF-8".to_string()).and_then(parse);
    match parsed {
        Ok(armed) => armed.map(|(point, at)| Armed { point, at, hits: AtomicU64::new(0) }),
        Err(reason) => {
            tracing::warn!(variable = VAR, value = ?value, %reason, "ignoring an unreadable crash point: none is armed");
            None
        }
    }
}

/// Marks that `point` is reached: the process SIGKILLs itself if this is the armed point's n-th hit.
pub fn hit(point: Point) {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    let Some(armed) = ARMED.get_or_init(from_env) else { return };
    if armed.point == point && armed.hits.fetch_add(1, Ordering::SeqCst) + 1 == armed.at {
        crash(point, armed.at);
    }
}

/// Just before the Secret write of `action` (see `Point::around_secret_write`).
pub fn before_secret_write(action: &Action) {
    if let Some((before, _)) = Point::around_secret_write(action) {
        hit(before);
    }
}

/// Just after the Secret write of `action` succeeded.
pub fn after_secret_write(action: &Action) {
    if let Some((_, after)) = Point::around_secret_write(action) {
        hit(after);
    }
}

fn crash(point: Point, n: u64) -> ! {
    // NB: the log goes to stderr, unbuffered: this line is in the log before the process is gone.
    tracing::warn!(variable = VAR, %point, hit = n, "crash point reached: SIGKILL");
    #[cfg(unix)]
    {
        // SIGKILL cannot be caught or ignored; it does not return once delivered to the calling process.
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_kebab_case() {
        for p in Point::ALL {
            assert_eq!(p.name().parse::<Point>(), Ok(p));
            assert_eq!(p.to_string(), p.name());
            assert!(p.name().chars().all(|c| c.is_ascii_lowercase() || c == '-'), "{p}");
        }
    }

    #[test]
    fn parses_point_and_hit_count() {
        assert_eq!(parse("before-secret-write"), Ok(Some((Point::BeforeSecretWrite, 1))));
        assert_eq!(parse("after-grace-removal:7"), Ok(Some((Point::AfterGraceRemoval, 7))));
        assert_eq!(parse(" after-rollout-restart : 2 "), Ok(Some((Point::AfterRolloutRestart, 2))));
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("  "), Ok(None));
    }

    #[test]
    fn refuses_unknown_points_and_bad_counts() {
        for bad in ["before-status-write", "BeforeSecretWrite", "after-secret-write:0", "after-secret-write:-1"] {
            assert!(parse(bad).is_err(), "{bad} was accepted");
        }
        for bad in ["after-secret-write:", "after-secret-write:x", ":2", "after-secret-write:1:2"] {
            assert!(parse(bad).is_err(), "{bad} was accepted");
        }
        assert!(parse("nope").unwrap_err().contains("before-secret-write"), "the error lists the points");
    }

    #[test]
    fn actions_map_to_their_boundary() {
        use crate::apikey::plan::{IssueKind, Revocation};
        let around = Point::around_secret_write;
        assert_eq!(around(&Action::Rotate { manual: true }), Some((Point::BeforeSecretWrite, Point::AfterSecretWrite)));
        assert_eq!(around(&Action::Issue(IssueKind::First)).map(|p| p.0), Some(Point::BeforeSecretWrite));
        assert_eq!(around(&Action::DropPrevious), Some((Point::BeforeGraceRemoval, Point::AfterGraceRemoval)));
        assert_eq!(
            around(&Action::Remove(Revocation::Suspended)),
            Some((Point::BeforeRevocation, Point::AfterRevocation))
        );
        assert_eq!(around(&Action::Remove(Revocation::Expired)).map(|p| p.1), Some(Point::AfterRevocation));
        assert_eq!(around(&Action::Reseal), None);
        assert_eq!(around(&Action::Nothing), None);
    }
}
