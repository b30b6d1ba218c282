//! The RateLimitPolicy controller: every `usage.interval` it polls the policy's usage source, writes each
//! referencing ApiKey's `status.usage` with `NearLimit`/`Exhausted`, and scales the gateway through its scale
//! subresource with HPA-style stabilization. Read what exists → decide (pure: `limits`, `keys`, `crate::scaling`)
//! → apply → status.
//!
//! Safety rules: no usage data never scales anything (replicas hold, `UsageAvailable=False`); a
//! HorizontalPodAutoscaler on the same target means no writes (`ScalingConflict=True`); a slow source holds only its
//! own policy's reconcile, for at most the poll timeout.

mod access;
mod apply;
pub mod calendar;
pub mod check;
pub mod endpoints;
pub mod enforce;
pub mod key_usage;
pub mod limits;
mod observe;
mod plan;
pub mod poller;
pub mod quota;
mod release;
pub mod scale;
pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use jiff::Timestamp;
use kube::api::{Api, ApiResource};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};

use self::check::Checked;
use crate::api::ApiKey;
use crate::api::ratelimit::{RateLimitPolicy, UsageSource};
use crate::metrics::Metrics;
use crate::runtime::conditions::Desired;
use crate::runtime::{Launch, Plumbing, ReconcileError, cache};
use crate::scaling::Stabilizer;
use crate::usage::{AnySource, SourceError};

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
    /// Present (and `False`) only while the usage source's TLS certificate is not verified.
    pub const SOURCE_VERIFIED: &str = "SourceVerified";
    /// With `enforce`: whether the gateway's rendered limits are current.
    pub const ENFORCED: &str = "Enforced";
    /// With `enforce`: `True` while an object Keyward does not own holds the BackendTrafficPolicy's name.
    pub const ENFORCEMENT_CONFLICT: &str = "EnforcementConflict";
}

/// Errors that stop a reconcile (and are retried with backoff). Usage and scaling problems are not errors: they
/// are reported in conditions, and the next poll tries again.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("write status of RateLimitPolicy {ns}/{name}: {}", crate::runtime::describe(source))]
    Status { ns: String, name: String, source: kube::Error },
    #[error("RateLimitPolicy has no namespace")]
    MissingMetadata,
}

impl ReconcileError for Error {
    fn reason(&self) -> &'static str {
        match self {
            Error::Status { .. } => "StatusWriteFailed",
            Error::MissingMetadata => "InvalidObject",
        }
    }

    fn is_transient(&self) -> bool {
        matches!(self, Error::Status { source: kube::Error::Api(s), .. } if s.code == 409)
    }
}

/// What a policy remembers between reconciles: its usage source (a scrape source keeps the previous counters),
/// the scaling history, and when it last polled.
#[derive(Default)]
struct PolicyState {
    /// The usage source between polls (a poll in flight owns it).
    source: Option<(UsageSource, AnySource)>,
    /// The poll in flight, or finished and not yet used.
    poll: poller::Slot,
    /// The source's last poll timed out or failed to connect: its next poll takes the slow lane.
    slow: bool,
    /// Whether the active override changed at the start of the cycle whose poll is pending.
    override_changed: bool,
    stabilizer: Stabilizer,
    /// The stabilizer was seeded with the replicas the target had when this process first saw it, so a fresh
    /// operator waits a whole scale-down window before it scales down.
    seeded: bool,
    last_poll: Option<Timestamp>,
    generation: Option<i64>,
    /// The active override's index at the last cycle (the effective limit changing forces a cycle).
    override_index: Option<usize>,
    /// When the source's credentials and CA were read (see [`access::REFRESH`]); `None`: read them again.
    access_read_at: Option<Timestamp>,
    /// When the source last read counters (a poll that answered or warmed up): a scrape source's next rates hold
    /// from then, which is the span a calendar tally adds them over.
    baseline_at: Option<Timestamp>,
    /// Under a calendar limit, each member's running count of the window (see [`quota::Tally`]).
    tallies: quota::Tallies,
    /// Under a calendar limit, the start of the window of the last cycle (a new window forces a cycle).
    window_start: Option<Timestamp>,
}

impl PolicyState {
    /// Whether a cycle is due at `now`: the interval has passed, the spec changed, or the limit in force changed
    /// on its own. A due cycle is recorded as started; returns whether the active override changed.
    fn start_cycle(&mut self, generation: Option<i64>, checked: &Checked, now: Timestamp) -> Option<bool> {
        let override_index = checked.limit.active.as_ref().map(|a| a.index);
        let window_start = checked.calendar.as_ref().map(|c| c.window.start);
        let due = self.last_poll.is_none_or(|t| now >= checked.next_poll(t))
            || self.generation != generation
            || self.override_index != override_index
            || self.window_start != window_start;
        if !due {
            return None;
        }
        let changed = self.override_index != override_index;
        (self.last_poll, self.generation, self.override_index) = (Some(now), generation, override_index);
        self.window_start = window_start;
        Some(changed)
    }

    /// How long until the next cycle, looked at `at`: the next poll or the limit changing on its own, whichever
    /// is first (see [`Checked::requeue_after`], bounded by [`check::MAX_REQUEUE`]).
    fn next_cycle(&self, checked: &Checked, now: Timestamp, at: Timestamp) -> Duration {
        checked.requeue_after(self.last_poll.unwrap_or(now), at)
    }
}

/// Shared by all reconciles.
pub struct Context {
    /// Client, clock, events, metrics and backoff of the policies.
    pub runtime: Plumbing<RateLimitPolicy>,
    /// Usage sources: fenced client, caps and byte budget (see [`crate::usage`]).
    sources: crate::usage::Sources,
    poller: poller::Poller,
    /// Policies whose poll finished, for [`run`] to reconcile; taken once.
    woken: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<ObjectRef<RateLimitPolicy>>>>,
    states: Mutex<HashMap<ObjectRef<RateLimitPolicy>, Arc<tokio::sync::Mutex<PolicyState>>>>,
    /// Discovery results per `(apiVersion, kind)`.
    targets: Mutex<HashMap<(String, String), ApiResource>>,
    apikeys: Store<ApiKey>,
    apikeys_ready: cache::Ready,
    /// The controller's cache of policies, to forget the state of deleted ones; set by [`run`].
    policies: OnceLock<Store<RateLimitPolicy>>,
    /// The EndpointSlices of the scope (those of a Service), for `usage.scrape.service`; set by [`run`].
    endpoints: OnceLock<Store<k8s_openapi::api::discovery::v1::EndpointSlice>>,
    /// The operator's floors (`keyward run --min-usage-interval`).
    pub minimums: crate::minimums::Minimums,
    /// Envoy Gateway's API for `spec.enforce`; set by [`run`].
    gateway: OnceLock<enforce::Gateway>,
}

impl Context {
    /// A context with the system clock; the ApiKeys that reference a policy come from `keys`, the ApiKey
    /// controller's cache of the same scope (filled by that controller); keys changing never triggers a poll. At
    /// most `poll_concurrency` usage polls run at once (see [`poller`]), through `sources`.
    pub fn new(
        client: kube::Client,
        metrics: Arc<Metrics>,
        keys: (Store<ApiKey>, cache::Ready),
        (sources, poll_concurrency): (crate::usage::Sources, usize),
    ) -> Self {
        let (apikeys, apikeys_ready) = keys;
        let (poller, woken) = poller::Poller::new(poll_concurrency);
        Context {
            poller,
            woken: Mutex::new(Some(woken)),
            runtime: Plumbing::new(client, metrics, CONTROLLER, MANAGER),
            sources,
            states: Mutex::default(),
            targets: Mutex::default(),
            apikeys,
            apikeys_ready,
            policies: OnceLock::new(),
            endpoints: OnceLock::new(),
            minimums: crate::minimums::Minimums::default(),
            gateway: OnceLock::new(),
        }
    }

    /// A sender that wakes a policy (see [`enforce::wake_on_membership`]).
    pub fn waker(&self) -> tokio::sync::mpsc::UnboundedSender<ObjectRef<RateLimitPolicy>> {
        self.poller.waker()
    }

    /// Refuses specs below the operator's floors.
    pub fn with_minimums(mut self, minimums: crate::minimums::Minimums) -> Self {
        self.minimums = minimums;
        self
    }
}

/// Runs the controller until `launch.shutdown` completes.
pub async fn run<F: std::future::Future<Output = ()> + Send + 'static>(ctx: Arc<Context>, launch: Launch<F>) {
    let Launch { scope: namespace, concurrency, synced, shutdown } = launch;
    let client = ctx.runtime.client.clone();
    let keys_ready = ctx.apikeys_ready.clone();
    let policies: Api<RateLimitPolicy> = cache::scoped(&client, namespace.as_deref());
    let shutdown = crate::runtime::drain::Shutdown::new(shutdown);
    let (policy_store, policies_ready, policy_events) =
        cache::reflected(policies, watcher::Config::default().any_semantic());
    let mut controller = Controller::for_stream(policy_events.applied_objects(), policy_store.clone());
    if let Some(woken) = ctx.woken.lock().ok().and_then(|mut w| w.take()) {
        controller = controller.reconcile_on(tokio_stream_from(woken));
    }
    let _ = ctx.policies.set(policy_store.clone());
    let _ = ctx.gateway.set(enforce::Gateway::new(client.clone(), namespace.clone(), ctx.waker()));
    let ready = tokio::spawn({
        let policies_ready = policies_ready.clone();
        async move {
            if policies_ready.wait().await {
                keys_ready.wait().await;
            }
            tracing::debug!("RateLimitPolicy controller caches synced");
            let _ = synced.send(());
        }
    });
    let release = tokio::spawn(release::run(ctx.clone(), policy_store, policies_ready));
    let follow = tokio::spawn(follow_endpoints(ctx.clone(), namespace.clone()));
    crate::runtime::drive(controller, reconcile, error_policy, ctx, (concurrency, shutdown), "RateLimitPolicy").await;
    ready.abort();
    release.abort();
    follow.abort();
}

/// Follows the scope's EndpointSlices that belong to a Service (a watch; the cache is read by each poll of a
/// `usage.scrape.service` source) until aborted.
async fn follow_endpoints(ctx: Arc<Context>, namespace: Option<String>) {
    use futures::StreamExt;
    let api: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        cache::scoped(&ctx.runtime.client, namespace.as_deref());
    let config = watcher::Config::default().labels(endpoints::SERVICE_NAME_LABEL).any_semantic();
    let (store, _ready, events) = cache::reflected(api, config);
    let _ = ctx.endpoints.set(store);
    events
        .for_each(|event| {
            if let Err(e) = event {
                tracing::debug!(error = %e, "watching EndpointSlices failed; retrying");
            }
            futures::future::ready(())
        })
        .await;
}

fn error_policy(obj: Arc<RateLimitPolicy>, err: &Error, ctx: Arc<Context>) -> Requeue {
    crate::runtime::error_policy(obj.as_ref(), err, &ctx.runtime)
}

#[tracing::instrument(skip_all, fields(namespace = obj.namespace().as_deref(), name = %obj.name_any()))]
async fn reconcile(obj: Arc<RateLimitPolicy>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let result = crate::runtime::wrap(obj.as_ref(), &ctx.runtime, reconcile_policy(&obj, &ctx)).await;
    ctx.forget_deleted();
    result
}

/// One cycle: check the spec → is a cycle due? → observe (poll, members, target) → plan (pure) → apply → status.
async fn reconcile_policy(policy: &RateLimitPolicy, ctx: &Context) -> Result<Requeue, Error> {
    if policy.meta().deletion_timestamp.is_some() {
        // The target's replicas stay as they are; nothing to undo.
        return Ok(Requeue::await_change());
    }
    let now = ctx.runtime.now();
    let ns = policy.namespace().ok_or(Error::MissingMetadata)?;
    let state = ctx.state(policy);
    let mut state = state.lock().await;
    let checked = match check::check(&policy.spec, now, &ctx.minimums) {
        Ok(c) => c,
        Err(message) => {
            state.generation = policy.metadata.generation;
            let invalid = vec![Desired::new(condition::READY, false, "InvalidSpec", message)];
            apply::status(ctx, policy, plan::status(policy, invalid, plan::Figures::default(), None, now)).await?;
            return Ok(Requeue::await_change());
        }
    };
    // NB: before the usage step, which returns early while no poll is due: membership, override and hand-edit
    // changes reach the gateway at once.
    let enforcement = enforce::step(ctx, policy, &ns, &checked.limit).await;
    let answer = match usage(ctx, policy, &mut state, &checked, now).await {
        Step::Answer(answer) => answer,
        Step::Wait(wait) => {
            if let Some(new) = enforce::status::between_cycles(policy, &enforcement, &checked.limit.display(), now) {
                apply::status(ctx, policy, new).await?;
            }
            return Ok(Requeue::requeue(wait));
        }
    };
    let now = ctx.runtime.now();
    let observed = observe::observe(ctx, policy, &ns, answer, &checked).await;
    if let Err(e) = &observed.rates
        && !matches!(e, SourceError::NotConfigured)
    {
        ctx.runtime.metrics.usage_source_error(&ns, &policy.name_any(), e.reason());
    }
    let current = policy.status.clone().unwrap_or_default();
    let override_changed = std::mem::take(&mut state.override_changed);
    let (stabilizer, seeded, tallies) = (&state.stabilizer, state.seeded, &state.tallies);
    let inputs = plan::Inputs {
        checked: &checked,
        observed: &observed,
        current: &current,
        override_changed,
        stabilizer,
        seeded,
        tallies,
        now,
    };
    let mut p = plan::plan(&inputs);
    if let Some(history) = p.stabilizer.take() {
        (state.stabilizer, state.seeded) = (history, true);
    }
    if observed.rates.is_ok() {
        // NB: only a cycle with usage counted; without it the tallies wait for the next answer.
        state.tallies = std::mem::take(&mut p.tallies);
    }
    apply::plan(ctx, policy, &ns, &mut p, now).await;
    apply::member_usage(ctx, policy, &ns, &p);
    p.conditions.extend(enforcement.conditions.iter().cloned());
    let mut new = plan::status(policy, p.conditions, p.figures, Some(checked.limit.display()), now);
    enforce::status::complete(&mut new, &enforcement);
    apply::status(ctx, policy, new).await?;
    Ok(Requeue::requeue(state.next_cycle(&checked, now, ctx.runtime.now())))
}

/// Where a cycle stands on its usage.
enum Step {
    /// The usage a poll answered (or why there is none), and what it says about the requests used in a calendar
    /// window: the cycle goes on.
    Answer((Result<crate::usage::Rates, SourceError>, quota::Used)),
    /// Nothing to do for this long (or until the running poll wakes the policy, sooner).
    Wait(Duration),
}

/// The usage for this cycle: a finished poll's answer, or a new poll when one is due (answered at once when it is
/// quick, else it wakes the policy when done), or when to look again.
async fn usage(
    ctx: &Context,
    policy: &RateLimitPolicy,
    state: &mut PolicyState,
    checked: &Checked,
    now: Timestamp,
) -> Step {
    if state.poll.running() {
        // NB: the finished poll wakes the policy; the requeue is only a safety net.
        return Step::Wait(poll_safety_net(checked));
    }
    if let Some(done) = state.poll.take_done() {
        return Step::Answer(state.finish(done, checked));
    }
    let Some(override_changed) = state.start_cycle(policy.metadata.generation, checked, now) else {
        return Step::Wait(state.next_cycle(checked, now, now));
    };
    state.override_changed = override_changed;
    let Some(spec) = policy.spec.usage.as_ref() else {
        state.source = None;
        return Step::Answer((Err(SourceError::NotConfigured), quota::Used::None));
    };
    let fresh = !access::reads_objects(spec) || state.access_read_at.is_some_and(|t| t + access::REFRESH > now);
    let mut source = match state.source.take() {
        Some((s, src)) if &s == spec && fresh => (s, src),
        _ => match build_source(ctx, policy, spec).await {
            Ok(src) => {
                state.access_read_at = Some(now);
                (spec.clone(), src)
            }
            Err(e) => return Step::Answer((Err(e), quota::Used::None)),
        },
    };
    if let Err(e) = follow_service(ctx, policy, spec, &mut source.1) {
        state.source = Some(source);
        return Step::Answer((Err(e), quota::Used::None));
    }
    let timeout = crate::usage::poll_timeout(checked.interval, MAX_POLL_TIMEOUT);
    let me = ObjectRef::from_obj(policy);
    let used = used_window(checked, now);
    state.poll = ctx.poller.start(me, source, (state.slow, used), timeout, ctx.runtime.clock.clone());
    state.poll.wait_briefly().await;
    match state.poll.take_done() {
        Some(done) => Step::Answer(state.finish(done, checked)),
        None => Step::Wait(poll_safety_net(checked)),
    }
}

/// Under a calendar limit, what a Prometheus source counts the requests used over: the time since the window
/// started, and the step of a subquery integral (see [`crate::usage::prometheus::used_query`]).
fn used_window(checked: &Checked, now: Timestamp) -> Option<poller::UsedWindow> {
    let window = checked.calendar.as_ref()?.window_at(now);
    let since = Duration::try_from(now.duration_since(window.start)).unwrap_or_default();
    let length = Duration::try_from(window.length()).unwrap_or_default();
    Some(poller::UsedWindow { since, step: crate::usage::prometheus::used_step(checked.interval, length) })
}

/// Points a `usage.scrape.service` source at the Service's ready endpoints as the cache knows them now.
fn follow_service(
    ctx: &Context,
    policy: &RateLimitPolicy,
    spec: &UsageSource,
    source: &mut AnySource,
) -> Result<(), SourceError> {
    let (Some(svc), AnySource::Scrape(scrape)) = (spec.scrape.as_ref().and_then(|s| s.service.as_ref()), source) else {
        return Ok(());
    };
    let ns = policy.metadata.namespace.as_deref().unwrap_or_default();
    let slices = ctx.endpoints.get().map(Store::state).unwrap_or_default();
    let urls = endpoints::urls(slices.iter().map(AsRef::as_ref), ns, svc);
    if urls.is_empty() {
        return Err(SourceError::NoEndpoints { service: format!("{ns}/{}", svc.name), port: svc.port.clone() });
    }
    scrape.set_urls(urls);
    Ok(())
}

/// The source `spec` names, with the credentials, CA and headers of a Prometheus source read from the policy's
/// namespace.
async fn build_source(ctx: &Context, policy: &RateLimitPolicy, spec: &UsageSource) -> Result<AnySource, SourceError> {
    let source = AnySource::from_spec(spec, &ctx.sources).ok_or(SourceError::NotConfigured)?;
    match (source, &spec.prometheus) {
        (AnySource::Prometheus(p), Some(ps)) if ps.auth.is_some() || ps.tls.is_some() || !ps.headers.is_empty() => {
            let ns = policy.metadata.namespace.as_deref().unwrap_or_default();
            let access = access::resolve(&ctx.runtime.client, ns, ps).await?;
            Ok(AnySource::Prometheus(p.with_access(&access)?))
        }
        (source, _) => Ok(source),
    }
}

impl PolicyState {
    /// Takes back the source of a finished poll and remembers its lane; an empty answer is "no data", never zero
    /// traffic. Credentials the server refused are read again for the next poll. Under a calendar limit, also what
    /// the poll says about the requests used: Prometheus' count (its failure fails the poll), or the span a scrape
    /// source's rates hold over.
    fn finish(
        &mut self,
        done: poller::Polled,
        checked: &Checked,
    ) -> (Result<crate::usage::Rates, SourceError>, quota::Used) {
        if matches!(done.rates, Err(SourceError::Unauthorized { .. })) {
            self.access_read_at = None;
        }
        self.slow = poller::earns_slow_lane(&done.rates);
        let from = self.baseline_at;
        if matches!(done.rates, Ok(_) | Err(SourceError::WarmingUp { .. })) {
            self.baseline_at = Some(done.at);
        }
        let prometheus = matches!(done.source.1, AnySource::Prometheus(_));
        self.source = Some(done.source);
        let rates = match done.rates {
            Ok(rates) if rates.is_empty() => Err(SourceError::NoData),
            other => other,
        };
        match (rates, done.used) {
            (Ok(_), Some(Err(e))) => (Err(e), quota::Used::None),
            (Ok(rates), Some(Ok(used))) => (Ok(rates), quota::Used::Counted(used)),
            (Ok(rates), None) if checked.calendar.is_some() && !prometheus => {
                (Ok(rates), quota::Used::Rates { from, to: done.at })
            }
            (rates, _) => (rates, quota::Used::None),
        }
    }
}

/// The policies a finished poll wakes, as a stream for `Controller::reconcile_on`.
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<ObjectRef<RateLimitPolicy>>,
) -> impl futures::Stream<Item = ObjectRef<RateLimitPolicy>> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// How long a policy with a poll in flight waits before it looks again if the poll never wakes it.
fn poll_safety_net(checked: &Checked) -> Duration {
    checked.interval.saturating_add(MAX_POLL_TIMEOUT).min(check::MAX_REQUEUE)
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
        let ar = scale::resolve(&self.runtime.client, target).await?;
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
                    self.runtime.metrics.forget_policy(r.namespace.as_deref().unwrap_or_default(), &r.name);
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
