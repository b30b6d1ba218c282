//! Graceful shutdown of a controller, shared by both: stop taking work when asked, let in-flight reconciles
//! finish, but never wait longer than [`DRAIN_TIMEOUT`].

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

/// Runs `controller` until it ends or, once shutdown has started, until [`DRAIN_TIMEOUT`] has passed.
///
/// NB: a shutdown that arrives before the controller's watches have started can leave the graceful drain waiting
/// forever; hence the bound. Stopping mid-reconcile is safe: every write is conditional and the next reconcile
/// finishes the job.
pub async fn run_bounded(
    controller: impl Future<Output = ()>,
    started: tokio::sync::oneshot::Receiver<()>,
    what: &str,
) {
    let deadline = async {
        if started.await.is_ok() {
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = controller => {}
        () = deadline => tracing::warn!(timeout = ?DRAIN_TIMEOUT, "in-flight {what} reconciles did not finish in time; stopping anyway"),
    }
}

/// Logs one item of a controller's result stream at debug level.
pub async fn log_result<K: Resource, E: Display, Q: Display>(res: Result<(ObjectRef<K>, Action), Error<E, Q>>) {
    match res {
        Ok((obj, _)) => tracing::debug!(namespace = obj.namespace.as_deref(), name = %obj.name, "reconciled"),
        Err(e) => tracing::debug!(error = %e, "reconcile failed"),
    }
}
