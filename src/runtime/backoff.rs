//! Per-object exponential backoff for failed reconciles, shared by the controllers: 1 s doubling to 5 minutes,
//! reset by a success.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::Resource;
use kube::runtime::reflector::ObjectRef;

/// The longest wait between retries.
pub const MAX_DELAY: Duration = Duration::from_secs(300);

/// One object's run of failures: how many, and the reason last shown on the object.
#[derive(Default)]
struct Streak {
    count: u32,
    shown: Option<&'static str>,
}

/// Consecutive failures per object.
pub struct Backoff<K: Resource<DynamicType = ()>> {
    failures: Mutex<HashMap<ObjectRef<K>, Streak>>,
}

impl<K: Resource<DynamicType = ()>> Default for Backoff<K> {
    fn default() -> Self {
        Backoff { failures: Mutex::default() }
    }
}

impl<K: Resource<DynamicType = ()>> Backoff<K> {
    /// Records a failure of `obj` and returns how long to wait before retrying it.
    pub fn failed(&self, obj: &K) -> Duration {
        let n = self
            .failures
            .lock()
            .map(|mut m| {
                let s = m.entry(ObjectRef::from_obj(obj)).or_default();
                s.count = s.count.saturating_add(1);
                s.count
            })
            .unwrap_or(1);
        delay(n)
    }

    /// Forgets the failures of `obj`.
    pub fn succeeded(&self, obj: &K) {
        if let Ok(mut m) = self.failures.lock() {
            m.remove(&ObjectRef::from_obj(obj));
        }
    }

    /// Records that a failure with `reason` is shown on `obj`; `false` when this run of failures already showed
    /// the same reason (so a retry that fails the same way publishes nothing more).
    pub fn note_reason(&self, obj: &K, reason: &'static str) -> bool {
        let Ok(mut m) = self.failures.lock() else { return true };
        let s = m.entry(ObjectRef::from_obj(obj)).or_default();
        let new = s.shown != Some(reason);
        s.shown = Some(reason);
        new
    }
}

/// The wait after `n` consecutive failures.
pub fn delay(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.saturating_sub(1).min(9)).min(MAX_DELAY)
}

/// The Controller's backoff over its trigger streams: none.
///
/// NB: kube-runtime wraps ALL of a Controller's trigger streams in ONE backoff (0.8 s doubling to 30 s, with jitter),
/// on top of the per-watch `default_backoff()` each of Keyward's streams already has. After an API server restart
/// every watch fails a few times in a row (connection refused, then 410 Gone from the new watch cache), each error
/// paused every trigger of the controller, and the pauses grew to about a minute with nothing succeeding in between:
/// a key created after the restart waited 75 to over 120 s (found by `tests/restart.rs`). Each stream backing off on
/// its own is enough.
#[derive(Clone, Copy, Debug, Default)]
pub struct TriggersBackOffAlone;

impl Iterator for TriggersBackOffAlone {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl kube::runtime::utils::Backoff for TriggersBackOffAlone {
    fn reset(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_one_second_to_five_minutes() {
        let waits: Vec<u64> = (1..=11).map(|n| delay(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(delay(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn a_success_resets() {
        let b: Backoff<k8s_openapi::api::core::v1::Secret> = Backoff::default();
        let mut s = k8s_openapi::api::core::v1::Secret::default();
        s.metadata.name = Some("x".into());
        s.metadata.namespace = Some("ns".into());
        assert_eq!(b.failed(&s), Duration::from_secs(1));
        assert_eq!(b.failed(&s), Duration::from_secs(2));
        assert!(b.note_reason(&s, "A"), "first failure of the run is shown");
        assert!(!b.note_reason(&s, "A"), "the same reason again is not");
        assert!(b.note_reason(&s, "B"), "a new reason is");
        b.succeeded(&s);
        assert_eq!(b.failed(&s), Duration::from_secs(1));
        assert!(b.note_reason(&s, "B"), "a new run after a success shows again");
    }
}
