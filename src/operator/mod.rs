//! Wiring of the operator process: the client, the CRD check, probes and metrics, leader election and the
//! controllers.

pub mod args;
pub mod crds;
pub mod http;
pub mod leader;
pub mod metrics_auth;
pub mod seal;

use std::future::Future;
use std::sync::Arc;

use crate::runtime::Launch;

/// Why the operator stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot connect to Kubernetes: {0}")]
    Connect(#[source] kube::Error),
    #[error(transparent)]
    Crds(#[from] crds::CrdError),
    #[error(transparent)]
    Leader(#[from] leader::LeaderError),
    #[error(transparent)]
    Seal(#[from] seal::SealError),
    #[error("cannot serve probes and metrics on {addr}: {source}")]
    Http { addr: String, source: std::io::Error },
    #[error("lost the leader Lease; stopped writing at once (the process exits so a fresh one can stand by)")]
    LostLease,
    #[error("the {0}; the process exits so that Kubernetes restarts it")]
    ControllerStopped(String),
}

/// How the operator runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Namespaces to watch; empty watches all.
    pub namespaces: Vec<String>,
    /// Reconciles running at once per controller.
    pub concurrency: u16,
    /// Usage polls in flight at once (see [`crate::ratelimit::poller`]).
    pub poll_concurrency: usize,
    /// Every key's Secret is looked at at least this often (see [`crate::apikey::Context::with_recheck`]).
    pub recheck_interval: std::time::Duration,
    /// Where the seal key lives (see [`seal`]); `None` seals with a key of this process alone (benchmarks).
    pub seal: Option<seal::SealConfig>,
    /// Where to serve `/healthz`, `/readyz` and `/metrics`; `None` serves nothing.
    pub http_addr: Option<String>,
    /// Leader election; `None` reconciles without it.
    pub leader_election: Option<leader::LeaderConfig>,
    /// Fence, caps and budget of the usage sources (`--source-*`, `--allow-loopback-sources`).
    pub sources: crate::usage::Settings,
    /// The floors tenants' objects must respect (`--min-usage-interval`, `--min-rotation-interval`,
    /// `--min-grace-period`).
    pub minimums: crate::minimums::Minimums,
    /// Require a bearer token allowed to get `/metrics` (TokenReview + SubjectAccessReview).
    pub metrics_auth: bool,
    /// A reconcile running longer than this fails `/healthz` ([`crate::liveness`]).
    pub stuck_reconcile_after: std::time::Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            namespaces: Vec::new(),
            concurrency: 16,
            poll_concurrency: crate::ratelimit::poller::DEFAULT_POLL_CONCURRENCY,
            recheck_interval: crate::apikey::DEFAULT_RECHECK,
            seal: None,
            http_addr: None,
            leader_election: None,
            sources: crate::usage::Settings::default(),
            minimums: crate::minimums::Minimums::default(),
            metrics_auth: false,
            stuck_reconcile_after: crate::liveness::STUCK_AFTER,
        }
    }
}

/// Runs the operator until `shutdown` completes: checks the CRDs are installed (failing with a message that says
/// how to install them), serves probes and metrics, waits for the Lease when leader election is on, then runs both
/// controllers for each watched namespace. On shutdown in-flight reconciles finish (bounded) and the Lease is
/// released; if the Lease is lost, the controllers are dropped at once and [`RunError::LostLease`] is returned.
pub async fn run(
    client: kube::Client,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let version = client.apiserver_version().await.map_err(RunError::Connect)?;
    tracing::info!(server = %version.git_version, "connected to Kubernetes");
    crds::check(client.clone()).await?;
    tracing::info!("Keyward CRDs are installed and established");
    let sealer = match &options.seal {
        Some(cfg) => seal::load_or_create(&client, cfg).await?,
        None => crate::apikey::seal::Sealer::ephemeral(),
    };
    let sources = crate::usage::Sources::new(options.sources.clone());
    let setup = Setup { options: options.clone(), sealer, sources };
    crate::liveness::global().set_stuck_after(options.stuck_reconcile_after);
    // One shutdown, seen by every part.
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

    let metrics = crate::metrics::Metrics::new();
    metrics.init_controller(crate::apikey::CONTROLLER);
    metrics.init_controller(crate::ratelimit::CONTROLLER);
    let health = http::Health::new();
    let server = match &options.http_addr {
        Some(addr) => {
            let listener = http::bind(addr).await.map_err(|source| RunError::Http { addr: addr.clone(), source })?;
            tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving /healthz, /readyz and /metrics");
            let auth =
                options.metrics_auth.then(|| std::sync::Arc::new(metrics_auth::MetricsAuth::new(client.clone())));
            Some(tokio::spawn(http::serve(listener, metrics.clone(), health.clone(), auth, stopped())))
        }
        None => None,
    };

    let result = match options.leader_election.clone() {
        None => {
            health.set_role(http::Role::Disabled);
            metrics.set_leader(true);
            controllers(&client, &setup, &metrics, &health, &stopped).await
        }
        Some(cfg) => lead(&client, &setup, cfg, &metrics, &health, &stopped).await,
    };
    if let Some(server) = server {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), server).await;
    }
    if result.is_ok() {
        tracing::info!("shut down");
    }
    result
}

/// What the controllers are started with: the options, and the seal keys loaded at start-up.
struct Setup {
    options: Options,
    sealer: crate::apikey::seal::Sealer,
    /// One fenced client and byte budget for every usage poll of the process.
    sources: crate::usage::Sources,
}

/// Waits for the Lease (or shutdown), then runs the controllers while leading.
async fn lead<F: Future<Output = ()> + Send + 'static>(
    client: &kube::Client,
    setup: &Setup,
    cfg: leader::LeaderConfig,
    metrics: &std::sync::Arc<crate::metrics::Metrics>,
    health: &std::sync::Arc<http::Health>,
    stopped: &(impl Fn() -> F + Clone + Send + 'static),
) -> Result<(), RunError> {
    health.set_role(http::Role::Standby);
    metrics.set_leader(false);
    crate::runtime::fence::close();
    tracing::info!(lease = %cfg.lease_name, namespace = %cfg.lease_namespace, identity = %cfg.identity, "standing by for the leader Lease");
    let election = leader::Election::start(client.clone(), cfg).await?;
    let mut leading = election.leadership();
    tokio::select! {
        _ = leading.wait_for(|l| *l) => {}
        () = stopped() => {
            election.release().await;
            return Ok(());
        }
    }
    health.set_role(http::Role::Leader);
    metrics.set_leader(true);
    let lost = async move {
        let _ = leading.wait_for(|l| !*l).await;
    };
    tokio::select! {
        result = controllers(client, setup, metrics, health, stopped) => {
            // Drained (or a controller stopped): hand the Lease over at once.
            election.release().await;
            result
        }
        () = lost => {
            // NB: dropping the controllers' future cancels every reconcile at its next await: no new writes.
            metrics.set_leader(false);
            tracing::error!("lost the leader Lease: stopped reconciling");
            Err(RunError::LostLease)
        }
    }
}

/// Both controllers for each watched namespace (or all), until `stopped`; marks the health synced when every
/// controller's cache is. A controller task that ends before shutdown (a panic, or its stream ending) stops the
/// others and returns [`RunError::ControllerStopped`]: the process then exits non-zero and is restarted, instead
/// of running on with one controller silently dead.
async fn controllers<F: Future<Output = ()> + Send + 'static>(
    client: &kube::Client,
    setup: &Setup,
    metrics: &std::sync::Arc<crate::metrics::Metrics>,
    health: &std::sync::Arc<http::Health>,
    stopped: &(impl Fn() -> F + Clone + Send + 'static),
) -> Result<(), RunError> {
    let options = &setup.options;
    let scopes: Vec<Option<String>> =
        if options.namespaces.is_empty() { vec![None] } else { options.namespaces.iter().cloned().map(Some).collect() };
    tracing::info!(
        namespaces = %if options.namespaces.is_empty() { "<all>".to_string() } else { options.namespaces.join(",") },
        "starting the ApiKey and RateLimitPolicy controllers"
    );
    let mut runs = Vec::new();
    let mut synced = Vec::new();
    for scope in scopes {
        // One ApiKey cache per scope, for both controllers.
        let api: kube::Api<crate::api::ApiKey> = crate::runtime::cache::scoped(client, scope.as_deref());
        let (store, ready, events) =
            crate::runtime::cache::reflected(api, kube::runtime::watcher::Config::default().any_semantic());
        let mut launch = || {
            let (tx, rx) = tokio::sync::oneshot::channel();
            synced.push(rx);
            Launch { scope: scope.clone(), concurrency: options.concurrency, synced: tx, shutdown: stopped() }
        };
        let apikeys = Arc::new(
            crate::apikey::Context::new(client.clone(), metrics.clone())
                .with_recheck(options.recheck_interval)
                .with_sealer(setup.sealer.clone())
                .with_minimums(options.minimums),
        );
        let policies = Arc::new(
            crate::ratelimit::Context::new(
                client.clone(),
                metrics.clone(),
                (store.clone(), ready.clone()),
                (setup.sources.clone(), options.poll_concurrency),
            )
            .with_minimums(options.minimums),
        );
        // NB: keys joining or leaving a policy (or changing their client ids) wake it, so `enforce` follows at once.
        let events = crate::ratelimit::enforce::wake_on_membership(events, policies.waker());
        let cache = crate::apikey::KeyCache { store, ready, events };
        runs.push(tokio::spawn(crate::apikey::run(apikeys, cache, launch())));
        runs.push(tokio::spawn(crate::ratelimit::run(policies, launch())));
    }
    let ready = tokio::spawn(ready_when_synced(health.clone(), synced));
    let mut guard = AbortOnDrop(runs);
    let _ready = AbortOnDrop(vec![ready]);
    supervise(&mut guard.0, stopped).await
}

/// Marks the health synced once every controller's caches are in.
async fn ready_when_synced(health: std::sync::Arc<http::Health>, synced: Vec<tokio::sync::oneshot::Receiver<()>>) {
    for rx in synced {
        let _ = rx.await;
    }
    tracing::info!("caches synced: ready");
    health.set_synced(true);
}

/// Aborts the tasks when dropped.
///
/// NB: dropping the controllers' future (a lost Lease) must stop the spawned controllers too.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// Waits for every controller task; the first that ends before `stopped` has fired (or panics at any time) is an
/// error. The caller aborts the rest.
async fn supervise<F: Future<Output = ()>>(
    runs: &mut Vec<tokio::task::JoinHandle<()>>,
    stopped: &impl Fn() -> F,
) -> Result<(), RunError> {
    use futures::FutureExt as _;
    while !runs.is_empty() {
        let (result, index, _) = futures::future::select_all(runs.iter_mut()).await;
        runs.remove(index);
        let stopping = stopped().now_or_never().is_some();
        let why = match result {
            Err(e) if e.is_panic() => "controller task panicked",
            Err(_) if stopping => continue,
            Err(_) => "controller task was cancelled",
            Ok(()) if stopping => continue,
            Ok(()) => "controller task ended before shutdown",
        };
        tracing::error!(reason = why, "a controller stopped: exiting so that Kubernetes restarts the operator");
        return Err(RunError::ControllerStopped(why.to_string()));
    }
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C (SIGINT).
///
/// NB: the handlers are registered when this function is called, not when the future is first polled: a signal
/// that arrives between the two would otherwise take the default action and kill the process (seen in CI, where
/// SIGTERM came right after the "CRDs are installed" line and before the shutdown task had run).
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
                match s {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(term) => {},
                () = wait(int) => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never() -> impl Fn() -> std::future::Pending<()> {
        std::future::pending::<()>
    }

    #[tokio::test]
    async fn a_panicking_controller_task_stops_the_operator() {
        let mut runs = vec![
            tokio::spawn(std::future::pending::<()>()),
            tokio::spawn(async { panic!("time arithmetic overflowed") }),
        ];
        let result = supervise(&mut runs, &never()).await;
        assert!(matches!(&result, Err(RunError::ControllerStopped(why)) if why.contains("panicked")), "{result:?}");
        for h in runs {
            h.abort();
        }
    }

    #[tokio::test]
    async fn a_controller_that_ends_before_shutdown_stops_the_operator() {
        let mut runs = vec![tokio::spawn(std::future::pending::<()>()), tokio::spawn(async {})];
        let result = supervise(&mut runs, &never()).await;
        assert!(matches!(&result, Err(RunError::ControllerStopped(why)) if why.contains("ended before shutdown")));
        for h in runs {
            h.abort();
        }
    }

    #[tokio::test]
    async fn controllers_that_end_on_shutdown_are_a_clean_stop() {
        let mut runs = vec![tokio::spawn(async {}), tokio::spawn(async {})];
        let stopped = || std::future::ready(());
        assert!(supervise(&mut runs, &stopped).await.is_ok());
    }
}
