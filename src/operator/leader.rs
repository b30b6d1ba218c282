//! Leader election through a `coordination.k8s.io/v1` Lease, with kube-lease-manager doing the locking.
//!
//! On top of the crate, this module watches the Lease itself, for two reasons:
//! - **a leader that cannot renew stops at once**: leadership is believed only until the Lease's own
//!   `renewTime + leaseDurationSeconds` as last seen; if no renewal is seen by then (the API server unreachable, the
//!   process stalled), or the Lease names another holder, leadership is over;
//! - **a released Lease is taken over in about a second**: any change of the Lease wakes a standby, instead of it
//!   sleeping until the old holder's expiry.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::runtime::fence;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

type LeaseResult<T> = kube_lease_manager::Result<T>;

/// How the Lease is held.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub lease_name: String,
    pub lease_namespace: String,
    /// How long a Lease is valid without renewal; a standby takes over at most this long after the leader died.
    pub duration: Duration,
    /// How long before expiry the leader renews.
    pub grace: Duration,
    /// This replica's name in `holderIdentity` (the pod name plus a random suffix).
    pub identity: String,
}

impl LeaderConfig {
    /// How long after a renewal the leader keeps writing: the Lease less half the renew grace. The manager renews
    /// `grace` before expiry, so a renewal lands before the deadline; a standby can take over only at expiry, so
    /// a leader that could not renew stops writing `grace / 2` before anyone else may start.
    pub fn renew_deadline(&self) -> Duration {
        self.duration.saturating_sub(self.grace / 2)
    }
}

/// Why leader election could not start.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error(
        "leader election: --lease-grace ({grace:?}) must be at least 1s and shorter than --lease-duration ({duration:?}), in whole seconds"
    )]
    Durations { duration: Duration, grace: Duration },
    #[error("leader election: cannot use Lease {namespace}/{name}: {source}")]
    Lease { namespace: String, name: String, source: kube_lease_manager::LeaseManagerError },
}

/// A running election: [`Election::leadership`] says whether this replica leads.
pub struct Election {
    rx: watch::Receiver<bool>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Election {
    /// Creates the Lease if needed and starts competing for it.
    pub async fn start(client: kube::Client, cfg: LeaderConfig) -> Result<Election, LeaderError> {
        let (duration, grace) = (cfg.duration.as_secs(), cfg.grace.as_secs());
        if grace == 0 || grace >= duration {
            return Err(LeaderError::Durations { duration: cfg.duration, grace: cfg.grace });
        }
        let params = kube_lease_manager::LeaseParams::new(cfg.identity.clone(), duration, grace)
            .with_field_manager(format!("keyward-leader-{}", cfg.identity));
        let builder = {
            let (client, name, namespace) = (client.clone(), cfg.lease_name.clone(), cfg.lease_namespace.clone());
            move || {
                LeaseManagerBuilder::new(client.clone(), name.clone())
                    .with_namespace(namespace.clone())
                    .with_parameters(params.clone())
            }
        };
        let manager = builder().build().await.map_err(|source| LeaderError::Lease {
            namespace: cfg.lease_namespace.clone(),
            name: cfg.lease_name.clone(),
            source,
        })?;
        let leases: Api<Lease> = Api::namespaced(client, &cfg.lease_namespace);
        let (tx, rx) = watch::channel(false);
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(compete(manager, builder, leases, cfg, tx, stop_rx));
        Ok(Election { rx, stop: Some(stop), task })
    }

    /// `true` while this replica leads.
    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.rx.clone()
    }

    /// Stops competing and releases the Lease if held, so a standby takes over at once; bounded by 5 s.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(Duration::from_secs(5), &mut self.task).await.is_err() {
            tracing::warn!("releasing the Lease took longer than 5s; it will expire on its own");
            self.task.abort();
        }
    }
}

impl Drop for Election {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `manager.changed()` as an owned future, so it survives the turns of the select loop.
fn changed(manager: &Arc<LeaseManager>) -> Pin<Box<dyn Future<Output = LeaseResult<bool>> + Send>> {
    let m = manager.clone();
    Box::pin(async move { m.changed().await })
}

/// Keeps competing for the Lease until `stop`: follows the manager's view, the Lease as watched (renewals, another
/// holder, a release), and its expiry; publishes leadership on `tx`.
async fn compete(
    manager: LeaseManager,
    builder: impl Fn() -> LeaseManagerBuilder + Send + 'static,
    leases: Api<Lease>,
    cfg: LeaderConfig,
    tx: watch::Sender<bool>,
    mut stop: oneshot::Receiver<()>,
) {
    let config = watcher::Config::default().fields(&format!("metadata.name={}", cfg.lease_name));
    let mut events = watcher(leases, config).default_backoff().applied_objects().boxed();
    let manager = Arc::new(manager);
    // NB: one `changed()` future lives across turns: cancelling it mid-renewal would make the manager renew again
    // at once (a renew storm). It is replaced only when it completes, or when a standby sees the Lease released.
    let mut pending = changed(&manager);
    let mut c = Contender { manager, cfg, tx, leader: false, valid_until: None };
    loop {
        let expiry = c.expiry();
        tokio::select! {
            _ = &mut stop => return c.release().await,
            result = &mut pending => {
                c.on_change(result).await;
                pending = changed(&c.manager);
            }
            event = events.next() => {
                let Some(Ok(lease)) = event else { continue };
                if c.on_lease(lease, &builder).await {
                    pending = changed(&c.manager);
                }
            }
            () = expiry => c.lose("the Lease was not renewed before it expired"),
        }
    }
}

/// One replica's side of the election.
struct Contender {
    manager: Arc<LeaseManager>,
    cfg: LeaderConfig,
    tx: watch::Sender<bool>,
    leader: bool,
    /// Until when the Lease, as last seen, keeps this replica the leader.
    valid_until: Option<Instant>,
}

impl Contender {
    /// Completes when the Lease, as last seen, expires while this replica leads; never otherwise.
    fn expiry(&self) -> impl Future<Output = ()> + use<> {
        let until = self.valid_until.filter(|_| self.leader);
        async move {
            match until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending::<()>().await,
            }
        }
    }

    async fn release(self) {
        fence::close();
        if self.leader {
            self.tx.send_replace(false);
        }
        match self.manager.release().await {
            Ok(_) => tracing::info!(lease = %self.cfg.lease_name, "released the Lease"),
            Err(e) => tracing::warn!(error = %e, "could not release the Lease; it will expire on its own"),
        }
    }

    async fn on_change(&mut self, result: LeaseResult<bool>) {
        match result {
            Ok(is_leader) => {
                if is_leader && !self.leader {
                    tracing::info!(identity = %self.cfg.identity, lease = %self.cfg.lease_name, "acquired the Lease: leading");
                    self.valid_until = Some(Instant::now() + self.cfg.duration);
                    fence::hold_until((Instant::now() + self.cfg.renew_deadline()).into_std());
                }
                if !is_leader {
                    fence::close();
                }
                if !is_leader && self.leader {
                    tracing::error!(identity = %self.cfg.identity, "the Lease was taken over");
                }
                self.leader = is_leader;
                self.tx.send_replace(is_leader);
            }
            Err(e) => {
                tracing::warn!(error = %e, "leader election: Lease update failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// Follows the Lease as watched; returns whether the manager was replaced (its `changed()` must be renewed).
    async fn on_lease(&mut self, lease: Lease, builder: &impl Fn() -> LeaseManagerBuilder) -> bool {
        let spec = lease.spec.unwrap_or_default();
        let holder = spec.holder_identity.as_deref();
        if holder == Some(self.cfg.identity.as_str()) {
            if let (Some(renew), Some(secs)) = (spec.renew_time, spec.lease_duration_seconds) {
                let until = renew.0.checked_add(jiff::SignedDuration::from_secs(i64::from(secs))).unwrap_or(renew.0);
                let left = Duration::try_from(until.duration_since(jiff::Timestamp::now())).unwrap_or_default();
                self.valid_until = Instant::now().checked_add(left);
                if self.leader {
                    // NB: writes stop a safety margin before the Lease as renewed could pass to another replica.
                    let margin = self.cfg.duration.saturating_sub(self.cfg.renew_deadline());
                    fence::hold_until((Instant::now() + left.saturating_sub(margin)).into_std());
                }
            }
        } else if self.leader {
            fence::close();
            tracing::error!(identity = %self.cfg.identity, holder = ?holder, "the Lease names another holder");
            self.leader = false;
            self.tx.send_replace(false);
        } else if holder.is_none() {
            // NB: released. The manager trusts its cached expiry until it passes; a fresh one reads the Lease, so
            // the standby takes over now rather than at the old expiry.
            match builder().build().await {
                Ok(fresh) => {
                    self.manager = Arc::new(fresh);
                    return true;
                }
                Err(e) => tracing::warn!(error = %e, "leader election: cannot re-read the released Lease"),
            }
        }
        false
    }

    fn lose(&mut self, why: &str) {
        fence::close();
        tracing::error!(identity = %self.cfg.identity, "{why}");
        self.leader = false;
        self.tx.send_replace(false);
    }
}

/// `POD_NAME` (or the host name) plus a random suffix, so two processes on one host never share an identity.
pub fn identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "keyward".to_string());
    let mut bytes = [0u8; 4];
    let _ = getrandom::fill(&mut bytes);
    format!("{base}-{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}
