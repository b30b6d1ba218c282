//! Liveness of the controllers: `/healthz` fails when a controller has stopped making progress, not only when the
//! HTTP server is down.
//!
//! Two signals, both fed from `crate::drain`, the one place both controllers' drive loops go through:
//! - a **heartbeat** per running controller (one per controller and scope), beaten every [`BEAT_EVERY`] by the
//!   loop that polls the controller's stream; if the loop is blocked or gone, the beat goes stale after
//!   [`STALE_AFTER`];
//! - every **reconcile in flight** with its start; one running longer than [`STUCK_AFTER`] is stuck (each
//!   reconcile is bounded far below that: polls by the poll timeout, API calls by the client's timeouts).
//!
//! A controller that ends for any reason also ends the process (see `crate::operator`), so Kubernetes restarts it;
//! these signals catch the cases where nothing ends but nothing moves either. A standby replica runs no
//! controller and is always live.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How often a running controller's loop beats.
pub const BEAT_EVERY: Duration = Duration::from_secs(5);
/// A heartbeat older than this means the controller's loop no longer runs.
pub const STALE_AFTER: Duration = Duration::from_secs(60);
/// By default, a reconcile running longer than this is stuck (`keyward run --stuck-reconcile-after`).
pub const STUCK_AFTER: Duration = Duration::from_secs(600);

/// Heartbeats and reconciles in flight.
pub struct Registry {
    inner: Mutex<Inner>,
    /// How long a reconcile may run before it counts as stuck, in milliseconds.
    stuck_after_ms: AtomicU64,
}

impl Default for Registry {
    fn default() -> Self {
        Registry { inner: Mutex::default(), stuck_after_ms: AtomicU64::new(STUCK_AFTER.as_millis() as u64) }
    }
}

#[derive(Default)]
struct Inner {
    next: u64,
    beats: HashMap<u64, (&'static str, Instant)>,
    running: HashMap<u64, (&'static str, Instant)>,
}

/// The process's registry, read by `/healthz`.
pub fn global() -> &'static Arc<Registry> {
    static GLOBAL: LazyLock<Arc<Registry>> = LazyLock::new(Arc::default);
    &GLOBAL
}

impl Registry {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        // A poisoned lock only means a panic elsewhere while holding it; the maps stay usable.
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Sets how long a reconcile may run before it counts as stuck (default [`STUCK_AFTER`]).
    pub fn set_stuck_after(&self, after: Duration) {
        self.stuck_after_ms.store(u64::try_from(after.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Registers a running controller `what`; it beats now, and is forgotten when the handle drops.
    pub fn controller(self: &Arc<Self>, what: &'static str) -> Heartbeat {
        let id = self.with(|i| {
            i.next += 1;
            i.beats.insert(i.next, (what, Instant::now()));
            i.next
        });
        Heartbeat { registry: self.clone(), id }
    }

    /// Records a reconcile of `what` starting now; it ends when the handle drops.
    pub fn reconcile(self: &Arc<Self>, what: &'static str) -> InFlight {
        let id = self.with(|i| {
            i.next += 1;
            i.running.insert(i.next, (what, Instant::now()));
            i.next
        });
        InFlight { registry: self.clone(), id }
    }

    /// `Ok` when every controller beat within [`STALE_AFTER`] of `now` and no reconcile has run for longer than
    /// the stuck threshold ([`STUCK_AFTER`] unless set); else the one-line reason `/healthz` answers 503 with.
    pub fn check(&self, now: Instant) -> Result<(), String> {
        let stuck_after = Duration::from_millis(self.stuck_after_ms.load(Ordering::Relaxed));
        self.with(|i| {
            if let Some((what, at)) = i.beats.values().find(|(_, at)| now.saturating_duration_since(*at) > STALE_AFTER)
            {
                return Err(format!(
                    "the {what} controller has not made progress for {}s",
                    now.saturating_duration_since(*at).as_secs()
                ));
            }
            if let Some((what, at)) =
                i.running.values().find(|(_, at)| now.saturating_duration_since(*at) > stuck_after)
            {
                return Err(format!(
                    "a {what} reconcile has been running for {}s",
                    now.saturating_duration_since(*at).as_secs()
                ));
            }
            Ok(())
        })
    }
}

/// A running controller's heartbeat; see [`Registry::controller`].
pub struct Heartbeat {
    registry: Arc<Registry>,
    id: u64,
}

impl Heartbeat {
    /// The controller's loop ran just now.
    pub fn beat(&self) {
        self.beat_at(Instant::now());
    }

    fn beat_at(&self, at: Instant) {
        self.registry.with(|i| {
            if let Some(b) = i.beats.get_mut(&self.id) {
                b.1 = at;
            }
        });
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.registry.with(|i| i.beats.remove(&self.id));
    }
}

/// A reconcile in flight; see [`Registry::reconcile`].
pub struct InFlight {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.registry.with(|i| i.running.remove(&self.id));
    }
}

/// The environment variable of the test suite's injected faults: `panic-in-reconcile:<controller>` (e.g.
/// `panic-in-reconcile:RateLimitPolicy`) panics in every reconcile of that controller, the way a bug in time
/// arithmetic did (issue #11), to prove that the process then exits non-zero; `hang-in-reconcile:<controller>`
/// never finishes one, to prove that `/healthz` then fails. OFF unless set; nothing in a deployment sets it (like
/// `crate::crashpoint`).
pub const FAULT_VAR: &str = "KEYWARD_FAULT";

/// The fault injected into reconciles of `what`, if any.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    Panic,
    Hang,
}

fn injected(what: &str) -> Option<Fault> {
    static FAULT: std::sync::OnceLock<Option<(Fault, String)>> = std::sync::OnceLock::new();
    let fault = FAULT.get_or_init(|| {
        let v = std::env::var(FAULT_VAR).ok()?;
        if let Some(c) = v.strip_prefix("panic-in-reconcile:") {
            Some((Fault::Panic, c.to_string()))
        } else {
            v.strip_prefix("hang-in-reconcile:").map(|c| (Fault::Hang, c.to_string()))
        }
    });
    fault.as_ref().filter(|(_, c)| c == what).map(|(f, _)| *f)
}

/// A reconcile future that is recorded in [`global`] from its first poll until it completes or is dropped.
pub struct Watched<F> {
    what: &'static str,
    fut: Pin<Box<F>>,
    in_flight: Option<InFlight>,
}

impl<F> Watched<F> {
    /// Wraps one reconcile of controller `what`.
    pub fn new(what: &'static str, fut: F) -> Self {
        Watched { what, fut: Box::pin(fut), in_flight: None }
    }
}

impl<F: Future> Future for Watched<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if self.in_flight.is_none() {
            let what = self.what;
            if injected(what) == Some(Fault::Panic) {
                panic!("{FAULT_VAR}: injected panic in a {what} reconcile");
            }
            self.in_flight = Some(global().reconcile(what));
        }
        if injected(self.what) == Some(Fault::Hang) {
            // Never woken: the reconcile stays in flight until the controller is dropped.
            return Poll::Pending;
        }
        let out = self.fut.as_mut().poll(cx);
        if out.is_ready() {
            self.in_flight = None;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_beating_controller_is_live_and_a_silent_one_is_not() {
        let r = Arc::new(Registry::default());
        let start = Instant::now();
        assert!(r.check(start).is_ok(), "no controller: live (a standby)");
        let hb = r.controller("RateLimitPolicy");
        assert!(r.check(start + STALE_AFTER - Duration::from_secs(1)).is_ok());
        let e = r.check(start + STALE_AFTER + Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("RateLimitPolicy controller has not made progress"), "{e}");
        hb.beat_at(start + STALE_AFTER);
        assert!(r.check(start + STALE_AFTER + Duration::from_secs(5)).is_ok(), "beat again: live again");
        drop(hb);
        assert!(r.check(start + STALE_AFTER * 10).is_ok(), "a controller that stopped cleanly is forgotten");
    }

    #[test]
    fn the_stuck_threshold_can_be_set() {
        let r = Arc::new(Registry::default());
        r.set_stuck_after(Duration::from_secs(3));
        let start = Instant::now();
        let _running = r.reconcile("ApiKey");
        assert!(r.check(start + Duration::from_secs(2)).is_ok());
        assert!(r.check(start + Duration::from_secs(5)).is_err());
    }

    #[test]
    fn a_reconcile_stuck_past_its_bound_fails_liveness_until_it_ends() {
        let r = Arc::new(Registry::default());
        let start = Instant::now();
        let running = r.reconcile("ApiKey");
        assert!(r.check(start + STUCK_AFTER - Duration::from_secs(1)).is_ok());
        let e = r.check(start + STUCK_AFTER + Duration::from_secs(2)).unwrap_err();
        assert!(e.contains("ApiKey reconcile has been running"), "{e}");
        drop(running);
        assert!(r.check(start + STUCK_AFTER * 2).is_ok());
    }

    #[tokio::test]
    async fn a_watched_reconcile_is_in_flight_only_while_it_runs() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(Watched::new("test-watched", async move { rx.await.is_ok() }));
        let count = || global().with(|i| i.running.values().filter(|(w, _)| *w == "test-watched").count());
        for _ in 0..100 {
            if count() == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(count(), 1, "in flight once polled");
        let _ = tx.send(());
        assert!(task.await.expect("joined"));
        assert_eq!(count(), 0, "done: no longer in flight");
    }
}
