//! The RateLimitPolicy controller: every `usage.interval` it polls the policy's usage source, writes each
//! referencing ApiKey's `status.usage` with `NearLimit`/`Exhausted`, and scales the gateway through its scale
//! subresource with HPA-style stabilization. Read what exists → decide (pure: `limits`, `keys`, `crate::scaling`)
//! → apply → status.
//!
//! Safety rules: no usage data never scales anything (replicas hold, `UsageAvailable=False`); a
//! HorizontalPodAutoscaler on the same target means no writes (`ScalingConflict=True`); a slow source holds only its
//! own policy's reconcile, for at most the poll timeout.

mod apikeys;
mod autoscale;
pub mod check;
mod cycle;
mod events;
pub mod keys;
pub mod limits;
pub mod scale;
pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::events::Publisher;
use futures::StreamExt;
use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ApiResource};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};

use crate::api::ApiKey;
use crate::api::ratelimit::{RateLimitPolicy, UsageSource};
use crate::metrics::Metrics;
use crate::scaling::Stabilizer;
use crate::usage::AnySource;

/// Field manager of this controller's server-side applies: the policy's status and, on ApiKeys, `status.usage`
/// and the `NearLimit`/`Exhausted` conditions.
pub const MANAGER: &str = "keyward/ratelimit";

/// Name of this controller in metrics.
pub const CONTROLLER: &str = "ratelimit";

/// Default `usage.interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);
/// A poll never takes longer than this, nor longer than the interval.
pub const MAX_POLL_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `scaling.targetUtilization` (percent).
pub const DEFAULT_TARGET_UTILIZATION: i32 = 80;

/// Condition types of a RateLimitPolicy.
pub mod condition {
    pub const READY: &str = "Ready";
    pub const USAGE_AVAILABLE: &str = "UsageAvailable";
    pub const SCALING_ACTIVE: &str = "ScalingActive";
    pub const SCALING_CONFLICT: &str = "ScalingConflict";
    pub const OVERRIDE_ACTIVE: &str = "OverrideActive";
}

/// Errors that stop a reconcile (and are retried with backoff). Usage and scaling problems are not errors: they
/// are reported in conditions, and the next poll tries again.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("write status of RateLimitPolicy {ns}/{name}: {source}")]
    Status { ns: String, name: String, source: kube::Error },
    #[error("RateLimitPolicy has no namespace")]
    MissingMetadata,
}

impl Error {
    /// PascalCase category, for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Status { .. } => "StatusWriteFailed",
            Error::MissingMetadata => "InvalidObject",
        }
    }
}

/// What a policy remembers between reconciles: its usage source (a scrape source keeps the previous counters),
/// the scaling history, and when it last polled.
#[derive(Default)]
struct PolicyState {
    source: Option<(UsageSource, AnySource)>,
    stabilizer: Stabilizer,
    /// The stabilizer was seeded with the replicas the target had when this process first saw it, so a fresh
    /// operator waits a whole scale-down window before it scales down.
    seeded: bool,
    last_poll: Option<Timestamp>,
    generation: Option<i64>,
    /// The active override's index at the last cycle (the effective limit changing forces a cycle).
    override_index: Option<usize>,
}

/// Shared by all reconciles.
pub struct Context {
    pub client: kube::Client,
    events: Publisher,
    /// The clock; injected so tests and benchmarks can move time.
    pub now: Arc<dyn Fn() -> Timestamp + Send + Sync>,
    http: reqwest::Client,
    states: Mutex<HashMap<ObjectRef<RateLimitPolicy>, Arc<tokio::sync::Mutex<PolicyState>>>>,
    /// Discovery results per `(apiVersion, kind)`.
    targets: Mutex<HashMap<(String, String), ApiResource>>,
    failures: crate::backoff::Backoff<RateLimitPolicy>,
    apikeys: Store<ApiKey>,
    apikeys_ready: crate::cache::Ready,
    /// The controller's cache of policies, to forget the state of deleted ones; set by [`run`].
    policies: std::sync::OnceLock<Store<RateLimitPolicy>>,
    pub metrics: Arc<Metrics>,
    /// The operator's floors (`keyward run --min-usage-interval`).
    pub minimums: crate::minimums::Minimums,
}

/// Runs the controller until `shutdown` completes. `namespace` limits it to one namespace. The ApiKeys that
/// reference a policy come from `keys`, the ApiKey controller's cache of the same scope (filled by that
/// controller); keys changing never triggers a poll.
pub async fn run(
    client: kube::Client,
    metrics: Arc<Metrics>,
    namespace: Option<String>,
    keys: (Store<ApiKey>, crate::cache::Ready),
    settings: crate::operator::ControllerSettings,
    synced: tokio::sync::oneshot::Sender<()>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let policies: Api<RateLimitPolicy> = crate::cache::scoped(&client, namespace.as_deref());
    let (reader, keys_ready) = keys;
    let ctx = Arc::new(Context {
        client: client.clone(),
        events: Publisher::keyward(client.clone()),
        now: Arc::new(Timestamp::now),
        http: crate::usage::http_client(),
        states: Mutex::default(),
        targets: Mutex::default(),
        failures: Default::default(),
        apikeys: reader,
        apikeys_ready: keys_ready.clone(),
        policies: std::sync::OnceLock::new(),
        metrics,
        minimums: settings.minimums,
    });
    let shutdown = crate::drain::Shutdown::new(shutdown);
    let (policy_store, policies_ready, policy_events) =
        crate::cache::reflected(policies, watcher::Config::default().any_semantic());
    let controller = Controller::for_stream(policy_events.applied_objects(), policy_store.clone());
    let _ = ctx.policies.set(policy_store);
    let ready = tokio::spawn({
        async move {
            if policies_ready.wait().await {
                keys_ready.wait().await;
            }
            tracing::debug!("RateLimitPolicy controller caches synced");
            let _ = synced.send(());
        }
    });
    let controller = controller
        .with_config(kube::runtime::controller::Config::default().concurrency(settings.concurrency))
        .trigger_backoff(crate::backoff::TriggersBackOffAlone)
        .graceful_shutdown_on(async move {
            let _ = shutdown.graceful.await;
        })
        .run(crate::drain::watched("RateLimitPolicy", reconcile), error_policy, ctx)
        .for_each(crate::drain::log_result);
    crate::drain::run_bounded(controller, shutdown.started, "RateLimitPolicy").await;
    ready.abort();
}

/// Exponential backoff per object: 1 s doubling to 5 minutes, reset by a success.
fn error_policy(obj: Arc<RateLimitPolicy>, err: &Error, ctx: Arc<Context>) -> Requeue {
    let delay = ctx.failures.failed(obj.as_ref());
    tracing::warn!(namespace = obj.namespace().as_deref(), name = %obj.name_any(), reason = err.reason(), error = %err, retry_in = ?delay, "reconcile failed");
    Requeue::requeue(delay)
}

#[tracing::instrument(skip_all, fields(namespace = obj.namespace().as_deref(), name = %obj.name_any()))]
async fn reconcile(obj: Arc<RateLimitPolicy>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let started = std::time::Instant::now();
    let result = cycle::reconcile_inner(&obj, &ctx).await;
    ctx.metrics.reconcile(CONTROLLER, started.elapsed(), result.as_ref().err().map(Error::reason));
    ctx.forget_deleted();
    if result.is_ok() {
        ctx.failures.succeeded(obj.as_ref());
    }
    result
}

impl Context {
    fn state(&self, policy: &RateLimitPolicy) -> Arc<tokio::sync::Mutex<PolicyState>> {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states.entry(ObjectRef::from_obj(policy)).or_default().clone()
    }

    async fn resolve(&self, target: &crate::api::ratelimit::ScaleTargetRef) -> Result<ApiResource, scale::ScaleError> {
        let key = (target.api_version.clone(), target.kind.clone());
        if let Some(ar) = self.targets.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(ar);
        }
        let ar = scale::resolve(&self.client, target).await?;
        if let Ok(mut m) = self.targets.lock() {
            m.insert(key, ar.clone());
        }
        Ok(ar)
    }

    /// Drops the state (usage source, scaling history) of policies that no longer exist.
    fn forget_deleted(&self) {
        let Some(store) = self.policies.get() else { return };
        if let Ok(mut states) = self.states.lock() {
            states.retain(|r, _| {
                let keep = store.get(r).is_some();
                if !keep {
                    self.metrics.forget_policy(r.namespace.as_deref().unwrap_or_default(), &r.name);
                }
                keep
            });
        }
    }

    fn forget(&self, target: &crate::api::ratelimit::ScaleTargetRef) {
        if let Ok(mut m) = self.targets.lock() {
            m.remove(&(target.api_version.clone(), target.kind.clone()));
        }
    }
}
