//! The plumbing both controllers share: per-object backoff, watch caches, drain on shutdown, events, conditions,
//! and the reconcile wrapper that times every reconcile, counts it, backs off on failure and shows a failure on the
//! object (a Warning event and `Ready=False` with the error's reason) so `kubectl describe` says why.

pub mod backoff;
pub mod cache;
pub mod conditions;
pub mod drain;
pub mod events;
pub mod fence;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use self::backoff::Backoff;
use self::conditions::Desired;
use self::events::{Event, EventType, Publisher};
use crate::metrics::Metrics;

/// The clock; injected so tests and benchmarks can move time.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// How long one write to the API server may take before the reconcile gives up and retries later.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(15);

/// How a controller is started: its scope, its concurrency, whom to tell once its caches are in, and when to stop.
pub struct Launch<F> {
    /// One namespace, or `None` for all.
    pub scope: Option<String>,
    /// Reconciles running at once.
    pub concurrency: u16,
    /// Told once the controller's caches are in.
    pub synced: tokio::sync::oneshot::Sender<()>,
    /// Completes when the controller should stop (in-flight reconciles drain, bounded).
    pub shutdown: F,
}

/// Runs `controller` with `reconcile` and `error_policy` until `shutdown`: `concurrency` reconciles at once, each
/// watch backing off on its own, in-flight reconciles drained (bounded) on shutdown.
pub async fn drive<K, C, R, E>(
    controller: kube::runtime::Controller<K>,
    reconcile: impl FnMut(Arc<K>, Arc<C>) -> R,
    error_policy: impl Fn(Arc<K>, &E, Arc<C>) -> Action,
    ctx: Arc<C>,
    (concurrency, shutdown): (u16, drain::Shutdown),
    what: &'static str,
) where
    K: Kind,
    C: Send + Sync + 'static,
    R: Future<Output = Result<Action, E>> + Send + 'static,
    E: ReconcileError,
{
    use futures::StreamExt;
    let graceful = shutdown.graceful;
    let run = controller
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .trigger_backoff(backoff::TriggersBackOffAlone)
        .graceful_shutdown_on(async move {
            let _ = graceful.await;
        })
        .run(drain::watched(what, reconcile), error_policy, ctx)
        .for_each(drain::log_result);
    drain::run_bounded(run, shutdown.started, what).await;
}

/// A Kubernetes kind a controller reconciles: namespaced, typed, with a status.
pub trait Kind:
    Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// The label of a status write in `keyward_api_writes` (e.g. `ApiKeyStatus`).
    const STATUS_WRITE: &'static str;

    /// The status body this controller applies, with `ready` as its Ready condition and everything else it owns
    /// unchanged (under server-side apply, a field the manager applied before and leaves out is removed).
    fn status_with_ready(&self, ready: &Desired, now: Timestamp) -> serde_json::Value;
}

/// An error of one reconcile.
pub trait ReconcileError: std::error::Error + Send + Sync + 'static {
    /// PascalCase category: the event reason, the condition reason and the metric label.
    fn reason(&self) -> &'static str;
    /// A race the next reconcile resolves by itself (a write conflict): retried without showing on the object.
    fn is_transient(&self) -> bool;
}

/// What every reconcile of one controller shares.
pub struct Plumbing<K: Kind> {
    pub client: kube::Client,
    pub events: Publisher,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    /// Consecutive failures per object, for exponential backoff.
    pub failures: Backoff<K>,
    /// Name of the controller in metrics.
    pub controller: &'static str,
    /// Field manager of the controller's server-side applies.
    pub manager: &'static str,
}

impl<K: Kind> Plumbing<K> {
    /// Plumbing with the system clock.
    pub fn new(client: kube::Client, metrics: Arc<Metrics>, controller: &'static str, manager: &'static str) -> Self {
        Plumbing {
            events: Publisher::keyward(client.clone()),
            client,
            metrics,
            clock: Arc::new(Timestamp::now),
            failures: Backoff::default(),
            controller,
            manager,
        }
    }

    /// The time now, by the injected clock.
    pub fn now(&self) -> Timestamp {
        (self.clock)()
    }

    /// Applies `status` to the object's status subresource with this controller's field manager, within
    /// [`WRITE_TIMEOUT`].
    pub async fn apply_status(&self, ns: &str, name: &str, status: &impl Serialize) -> Result<(), kube::Error> {
        self.apply_status_of::<K>(ns, name, status).await
    }

    /// Like [`Self::apply_status`], on an object of another kind `R` whose status fields this controller owns (the
    /// RateLimitPolicy controller's usage on ApiKeys).
    pub async fn apply_status_of<R: Kind>(
        &self,
        ns: &str,
        name: &str,
        status: &impl Serialize,
    ) -> Result<(), kube::Error> {
        let body = serde_json::json!({ "apiVersion": R::api_version(&()), "kind": R::kind(&()), "status": status });
        let api: Api<R> = Api::namespaced(self.client.clone(), ns);
        self.metrics.api_write(self.controller, R::STATUS_WRITE);
        let pp = PatchParams::apply(self.manager).force();
        within_timeout(api.patch_status(name, &pp, &Patch::Apply(&body))).await.map(|_| ())
    }

    /// Publishes an event on `obj`; a failure to publish is logged, never fatal.
    pub async fn publish<R: Resource<DynamicType = ()>>(&self, obj: &R, ev: Event) {
        self.publish_to(&obj.object_ref(&()), ev).await;
    }

    /// Publishes an event about the object `regarding` refers to; a failure to publish is logged, never fatal.
    pub async fn publish_to(&self, regarding: &k8s_openapi::api::core::v1::ObjectReference, ev: Event) {
        self.metrics.api_write(self.controller, "Event");
        if let Err(e) = within_timeout(self.events.publish(&ev, regarding)).await {
            tracing::warn!(error = %e, reason = %ev.reason, "could not publish event");
        }
    }

    /// Publishes an event with the usual action on `obj`.
    pub async fn publish_note<R: Resource<DynamicType = ()>>(
        &self,
        obj: &R,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let ev = Event { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary: None };
        self.publish(obj, ev).await;
    }
}

/// Runs `reconcile` for `obj`: times and counts it, resets the backoff on success, and shows a failure that is not
/// a transient race on the object (see [`show_failure`]).
pub async fn wrap<K: Kind, E: ReconcileError>(
    obj: &K,
    p: &Plumbing<K>,
    reconcile: impl Future<Output = Result<Action, E>>,
) -> Result<Action, E> {
    let started = Instant::now();
    let result = reconcile.await;
    p.metrics.reconcile(p.controller, started.elapsed(), result.as_ref().err().map(E::reason));
    match &result {
        Ok(_) => p.failures.succeeded(obj),
        Err(e) if !e.is_transient() && obj.meta().deletion_timestamp.is_none() => show_failure(obj, e, p).await,
        Err(_) => {}
    }
    result
}

/// A Warning event carrying the error's reason and `Ready=False` with the same reason and message, once per run of
/// failures with the same reason (a retry that fails the same way writes nothing more).
async fn show_failure<K: Kind, E: ReconcileError>(obj: &K, e: &E, p: &Plumbing<K>) {
    if !p.failures.note_reason(obj, e.reason()) {
        return;
    }
    let message = e.to_string();
    p.publish_note(obj, EventType::Warning, e.reason(), message.clone()).await;
    let ready = Desired::new("Ready", false, e.reason(), message);
    let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
    if let Err(err) = p.apply_status(&ns, &name, &obj.status_with_ready(&ready, p.now())).await {
        tracing::debug!(error = %err, "could not show the failure on Ready");
    }
}

/// Exponential backoff per object (1 s doubling to 5 minutes, reset by a success); a transient race is logged at
/// debug, anything else as a warning.
pub fn error_policy<K: Kind, E: ReconcileError>(obj: &K, err: &E, p: &Plumbing<K>) -> Action {
    let delay = p.failures.failed(obj);
    let (ns, name) = (obj.namespace(), obj.name_any());
    if err.is_transient() {
        tracing::debug!(namespace = ns.as_deref(), %name, reason = err.reason(), error = %err, retry_in = ?delay, "reconcile raced; retrying");
    } else {
        tracing::warn!(namespace = ns.as_deref(), %name, reason = err.reason(), error = %err, retry_in = ?delay, "reconcile failed");
    }
    Action::requeue(delay)
}

/// What went wrong with a request, for messages on objects: the API server's own message and code (not the debug
/// dump of its Status), or the client error.
pub fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} (HTTP {})", s.message, s.code),
        e => e.to_string(),
    }
}

/// `write`, unless the leader fence is closed (see [`fence`]); failed with a timeout error after [`WRITE_TIMEOUT`].
pub async fn within_timeout<T>(write: impl Future<Output = Result<T, kube::Error>>) -> Result<T, kube::Error> {
    fence::check()?;
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(result) => result,
        Err(_) => Err(kube::Error::Service(Box::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the API server did not answer within {WRITE_TIMEOUT:?}"),
        )))),
    }
}

/// Requeue at `at` (at least 50 ms from now), or wait for a change when nothing is due.
pub fn requeue_at(at: Option<Timestamp>, now: Timestamp) -> Action {
    match at {
        Some(t) => {
            let d = Duration::try_from(t.duration_since(now)).unwrap_or_default();
            Action::requeue(d.max(Duration::from_millis(50)))
        }
        None => Action::await_change(),
    }
}
