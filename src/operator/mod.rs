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

/// How the operator runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Watch one namespace only; `None` watches all.
    pub namespace: Option<String>,
    /// Reconciles running at once per controller.
    pub concurrency: u16,
}

impl Default for Options {
    fn default() -> Self {
        Options { namespace: None, concurrency: 16 }
    }
}

/// Runs the operator until `shutdown` completes: checks the CRDs are installed (failing with a message that says
/// how to install them), then runs the controllers; in-flight reconciles finish before it returns.
pub async fn run(
    client: kube::Client,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let version = client.apiserver_version().await.map_err(RunError::Connect)?;
    tracing::info!(server = %version.git_version, "connected to Kubernetes");
    crds::check(client.clone()).await?;
    tracing::info!("Keyward CRDs are installed and established");
    // One shutdown, seen by both controllers.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let ctx = std::sync::Arc::new(crate::apikey::Context::new(client.clone()));
    tracing::info!(
        namespace = options.namespace.as_deref().unwrap_or("<all>"),
        "starting the ApiKey and RateLimitPolicy controllers"
    );
    tokio::join!(
        crate::apikey::run(ctx, options.namespace.clone(), options.concurrency, stopped()),
        crate::ratelimit::run(client, options.namespace, options.concurrency, stopped()),
    );
    tracing::info!("shut down");
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
