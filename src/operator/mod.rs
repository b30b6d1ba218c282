//! Wiring of the operator process: the client, the CRD check and, as they land, the controllers.

pub mod crds;

use std::future::Future;

/// Why the operator stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot connect to Kubernetes: {0}")]
    Connect(#[source] kube::Error),
    #[error(transparent)]
    Crds(#[from] crds::CrdError),
}

/// Runs the operator until `shutdown` completes: checks the CRDs are installed (failing with a message that says
/// how to install them), then runs the controllers.
pub async fn run(client: kube::Client, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let version = client.apiserver_version().await.map_err(RunError::Connect)?;
    tracing::info!(server = %version.git_version, "connected to Kubernetes");
    crds::check(client.clone()).await?;
    tracing::info!("Keyward CRDs are installed and established");
    // NB: the ApiKey and RateLimitPolicy controllers are added by their own issues; until then the operator only
    // proves it can reach the cluster and find its API, and waits for shutdown.
    tracing::warn!("this build has no controllers yet: ApiKeys and RateLimitPolicies are not reconciled");
    shutdown.await;
    tracing::info!("shutting down");
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
