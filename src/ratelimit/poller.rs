//! Polls run beside the reconciles, never inside them: a slow or hanging source holds neither a reconcile slot nor
//! the policies behind it. Each policy has at most one poll in flight, run as its own task; the reconcile waits
//! briefly for a quick answer and otherwise returns, and the finished poll wakes it. Polls take a permit from one of
//! two lanes: sources that answered last time share the fast lane, sources that timed out or failed share the slow
//! one, so a crowd of hanging sources only delays each other.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::api::ratelimit::{RateLimitPolicy, UsageSource};
use crate::usage::{AnySource, Rates, Source, SourceError};

/// How long a reconcile waits for its poll before it lets the poll wake it later.
pub const QUICK_ANSWER: Duration = Duration::from_secs(1);

/// Default number of polls in flight at once in the fast lane.
pub const DEFAULT_POLL_CONCURRENCY: usize = 32;

/// The finished poll: the source (its counters updated) and what it answered.
pub struct Polled {
    pub source: (UsageSource, AnySource),
    pub rates: Result<Rates, SourceError>,
    /// Under a calendar limit, a Prometheus source's count of the requests used in the window, by key (`None` for
    /// other sources and rolling limits).
    pub used: Option<Result<Rates, SourceError>>,
    /// When the answer was in.
    pub at: Timestamp,
}

/// What a Prometheus source counts a calendar window's requests over.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UsedWindow {
    /// The time since the window started.
    pub since: Duration,
    /// The step of the subquery integral when the rate query is integrated.
    pub step: Duration,
}

/// A policy's poll: none, one in flight, or one finished and not yet used.
#[derive(Default)]
pub enum Slot {
    #[default]
    Idle,
    Running(oneshot::Receiver<Polled>),
    Done(Box<Polled>),
}

impl Slot {
    /// Whether a poll is in flight; a finished one moves to [`Slot::Done`].
    pub fn running(&mut self) -> bool {
        if let Slot::Running(rx) = self {
            match rx.try_recv() {
                Ok(polled) => *self = Slot::Done(Box::new(polled)),
                Err(oneshot::error::TryRecvError::Empty) => return true,
                // The task ended without an answer (cancelled at shutdown): poll again.
                Err(oneshot::error::TryRecvError::Closed) => *self = Slot::Idle,
            }
        }
        false
    }

    /// The finished poll, if any; the slot is idle afterwards.
    pub fn take_done(&mut self) -> Option<Polled> {
        match std::mem::take(self) {
            Slot::Done(p) => Some(*p),
            other => {
                *self = other;
                None
            }
        }
    }

    /// Waits up to [`QUICK_ANSWER`] for a running poll to finish.
    pub async fn wait_briefly(&mut self) {
        if let Slot::Running(rx) = self
            && let Ok(Ok(polled)) = tokio::time::timeout(QUICK_ANSWER, rx).await
        {
            *self = Slot::Done(Box::new(polled));
        }
    }
}

/// The two lanes and the channel through which a finished poll wakes its policy.
pub struct Poller {
    fast: Arc<Semaphore>,
    slow: Arc<Semaphore>,
    wake: mpsc::UnboundedSender<ObjectRef<RateLimitPolicy>>,
}

impl Poller {
    /// Lanes of `concurrency` (fast) and a quarter of it, at least one (slow); the receiver yields the policies
    /// whose poll finished.
    pub fn new(concurrency: usize) -> (Self, mpsc::UnboundedReceiver<ObjectRef<RateLimitPolicy>>) {
        let (wake, woken) = mpsc::unbounded_channel();
        let fast = Arc::new(Semaphore::new(concurrency.max(1)));
        let slow = Arc::new(Semaphore::new((concurrency / 4).max(1)));
        (Poller { fast, slow, wake }, woken)
    }

    /// A sender that wakes a policy, for anything else that must (its members or its gateway object changed).
    pub fn waker(&self) -> mpsc::UnboundedSender<ObjectRef<RateLimitPolicy>> {
        self.wake.clone()
    }

    /// Starts a poll of `source` as its own task, in the lane its last outcome earned (`slow`). With `used` (a
    /// calendar limit), a Prometheus source also counts the requests used in the window, at the same time and under
    /// the same timeout.
    pub fn start(
        &self,
        policy: ObjectRef<RateLimitPolicy>,
        source: (UsageSource, AnySource),
        (slow, used): (bool, Option<UsedWindow>),
        timeout: Duration,
        clock: crate::runtime::Clock,
    ) -> Slot {
        let (tx, rx) = oneshot::channel();
        let lane = if slow { self.slow.clone() } else { self.fast.clone() };
        let wake = self.wake.clone();
        tokio::spawn(async move {
            let Ok(_permit) = lane.acquire_owned().await else { return };
            let (spec, mut src) = source;
            let counter = match (&src, used) {
                (AnySource::Prometheus(p), Some(w)) => Some((p.clone(), w)),
                _ => None,
            };
            let count = async move {
                let (p, w) = counter?;
                Some(p.poll_used(w.since, w.step, timeout).await)
            };
            let (rates, used) = tokio::join!(src.poll(clock(), timeout), count);
            let _ = tx.send(Polled { source: (spec, src), rates, used, at: clock() });
            let _ = wake.send(policy);
        });
        Slot::Running(rx)
    }
}

/// Whether an outcome sends the next poll of the source to the slow lane.
pub fn earns_slow_lane(rates: &Result<Rates, SourceError>) -> bool {
    matches!(rates, Err(SourceError::Timeout { .. } | SourceError::Unreachable { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hanging_lane_does_not_hold_the_other() {
        let (poller, _woken) = Poller::new(4);
        assert_eq!((poller.fast.available_permits(), poller.slow.available_permits()), (4, 1));
        // The slow lane is taken by a poll that never ends; the fast lane still has all its permits.
        let _held = poller.slow.clone().try_acquire_owned().expect("slow permit");
        assert_eq!(poller.fast.available_permits(), 4);
        assert!(poller.slow.clone().try_acquire_owned().is_err());
    }

    #[test]
    fn only_timeouts_and_unreachable_sources_go_slow() {
        let timeout = SourceError::Timeout { url: "u".into(), timeout: Duration::from_secs(1) };
        assert!(earns_slow_lane(&Err(timeout)));
        assert!(earns_slow_lane(&Err(SourceError::Unreachable { url: "u".into(), detail: "x".into() })));
        assert!(!earns_slow_lane(&Err(SourceError::NoData)));
        assert!(!earns_slow_lane(&Ok(Rates::new())));
    }

    #[tokio::test]
    async fn a_slot_reports_a_finished_poll_once() {
        let (tx, rx) = oneshot::channel();
        let mut slot = Slot::Running(rx);
        assert!(slot.running());
        let spec = UsageSource::default();
        let source = AnySource::from_spec(
            &serde_json::from_value(serde_json::json!({"scrape": {"urls": ["http://127.0.0.1:1/m"], "metric": "m"}}))
                .expect("spec"),
            &crate::usage::Sources::new(crate::usage::Settings::default()),
        )
        .expect("source");
        let _ = tx.send(Polled {
            source: (spec, source),
            rates: Err(SourceError::NoData),
            used: None,
            at: Timestamp::UNIX_EPOCH,
        });
        assert!(!slot.running());
        assert!(slot.take_done().is_some());
        assert!(slot.take_done().is_none());
        assert!(matches!(slot, Slot::Idle));
    }
}
