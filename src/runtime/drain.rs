//! Graceful shutdown of a controller, shared by both: stop taking work when asked, let in-flight reconciles
//! finish, but never wait longer than [`DRAIN_TIMEOUT`]. Also the one place both controllers' drive loops and
//! reconciles report their liveness ([`crate::liveness`]): [`run_bounded`] beats the controller's heartbeat while
//! it polls the controller, and [`watched`] records each reconcile in flight.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use kube::Resource;
use kube::runtime::controller::{Action, Error};
use kube::runtime::reflector::ObjectRef;

/// How long a shutdown waits for in-flight reconciles.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A shutdown signal split in two: `graceful` (for `Controller::graceful_shutdown_on`, which wants a `Sync`
/// future) and `started`, which starts the drain deadline of [`run_bounded`].
pub struct Shutdown {
    pub graceful: tokio::sync::oneshot::Receiver<()>,
    pub started: tokio::sync::oneshot::Receiver<()>,
}

impl Shutdown {
    /// Fires both halves when `shutdown` completes.
    pub fn new(shutdown: impl Future<Output = ()> + Send + 'static) -> Self {
        let (tx, graceful) = tokio::sync::oneshot::channel::<()>();
        let (drain_tx, started) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            shutdown.await;
            let _ = tx.send(());
            let _ = drain_tx.send(());
        });
        Shutdown { graceful, started }
    }
}

/// Runs `controller` until it ends or, once shutdown has started, until [`DRAIN_TIMEOUT`] has passed; meanwhile
/// beats the controller's heartbeat (`what`) every [`crate::liveness::BEAT_EVERY`].
///
/// NB: a shutdown that arrives before the controller's watches have started can leave the graceful drain waiting
/// forever; hence the bound. Stopping mid-reconcile is safe: every write is conditional and the next reconcile
/// finishes the job.
pub async fn run_bounded(
    controller: impl Future<Output = ()>,
    started: tokio::sync::oneshot::Receiver<()>,
    what: &'static str,
) {
    let deadline = async {
        if started.await.is_ok() {
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let heartbeat = crate::liveness::global().controller(what);
    let mut beat = tokio::time::interval(crate::liveness::BEAT_EVERY);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(controller, deadline);
    loop {
        tokio::select! {
            () = &mut controller => break,
            () = &mut deadline => {
                tracing::warn!(timeout = ?DRAIN_TIMEOUT, "in-flight {what} reconciles did not finish in time; stopping anyway");
                break;
            }
            _ = beat.tick() => heartbeat.beat(),
        }
    }
}

/// Wraps a controller's reconcile function so that each reconcile is recorded as in flight while it runs (a
/// reconcile stuck far past its bounds fails `/healthz`; see [`crate::liveness`]).
pub fn watched<K, C, Fut>(
    what: &'static str,
    mut reconcile: impl FnMut(std::sync::Arc<K>, std::sync::Arc<C>) -> Fut,
) -> impl FnMut(std::sync::Arc<K>, std::sync::Arc<C>) -> crate::liveness::Watched<Fut> {
    move |obj, ctx| crate::liveness::Watched::new(what, reconcile(obj, ctx))
}

/// Logs one item of a controller's result stream at debug level.
pub async fn log_result<K: Resource, E: Display, Q: Display>(res: Result<(ObjectRef<K>, Action), Error<E, Q>>) {
    match res {
        Ok((obj, _)) => tracing::debug!(namespace = obj.namespace.as_deref(), name = %obj.name, "reconciled"),
        Err(e) => tracing::debug!(error = %e, "reconcile failed"),
    }
}
