//! The RateLimitPolicy controller: every `usage.interval` it polls the policy's usage source, writes each
//! referencing ApiKey's `status.usage` with `NearLimit`/`Exhausted`, and scales the gateway through its scale
//! subresource with HPA-style stabilization. Read what exists → decide (pure: `limits`, `keys`, `crate::scaling`)
//! → apply → status.
//!
//! Safety rules: no usage data never scales anything (replicas hold, `UsageAvailable=False`); a
//! HorizontalPodAutoscaler on the same target means no writes (`ScalingConflict=True`); a slow source holds only its
//! own policy's reconcile, for at most the poll timeout.

pub mod keys;
pub mod limits;
pub mod scale;
pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::events::{Event, EventType, Publisher, Reporter};
use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ApiResource, Patch, PatchParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};

use crate::api::ApiKey;
use crate::api::common::Time;
use crate::api::ratelimit::{RateLimitPolicy, RateLimitPolicySpec, RateLimitPolicyStatus, Scaling, UsageSource};
use crate::conditions::{self, Desired};
use crate::metrics::Metrics;
use crate::scaling::{self, Stabilizer};
use crate::usage::{AnySource, Rates, Source, SourceError};

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
    pub reporter: Reporter,
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
}

/// Runs the controller until `shutdown` completes. `namespace` limits it to one namespace. The ApiKeys that
/// reference a policy come from `keys`, the ApiKey controller's cache of the same scope (filled by that
/// controller); keys changing never triggers a poll.
pub async fn run(
    client: kube::Client,
    metrics: Arc<Metrics>,
    namespace: Option<String>,
    keys: (Store<ApiKey>, crate::cache::Ready),
    concurrency: u16,
    synced: tokio::sync::oneshot::Sender<()>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let policies: Api<RateLimitPolicy> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (reader, keys_ready) = keys;
    let reporter = Reporter { controller: "keyward".into(), instance: std::env::var("POD_NAME").ok() };
    let ctx = Arc::new(Context {
        client: client.clone(),
        reporter: reporter.clone(),
        events: Publisher::new(client.clone(), reporter),
        now: Arc::new(Timestamp::now),
        http: crate::usage::http_client(),
        states: Mutex::default(),
        targets: Mutex::default(),
        failures: Default::default(),
        apikeys: reader,
        apikeys_ready: keys_ready.clone(),
        policies: std::sync::OnceLock::new(),
        metrics,
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
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .trigger_backoff(crate::backoff::TriggersBackOffAlone)
        .graceful_shutdown_on(async move {
            let _ = shutdown.graceful.await;
        })
        .run(reconcile, error_policy, ctx)
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
    let result = reconcile_inner(&obj, &ctx).await;
    ctx.metrics.reconcile(CONTROLLER, started.elapsed(), result.as_ref().err().map(Error::reason));
    ctx.forget_deleted();
    if result.is_ok() {
        ctx.failures.succeeded(obj.as_ref());
    }
    result
}

/// The spec, checked for what the schema cannot catch (objects stored before a schema change).
struct Checked {
    interval: Duration,
    limit: limits::Effective,
    limit_rps: f64,
    near_limit_ratio: f64,
    scaling: Option<CheckedScaling>,
}

struct CheckedScaling {
    capacity_rps: f64,
    target_utilization: i32,
    min: i32,
    max: i32,
    up_window: Duration,
    down_window: Duration,
}

fn check(spec: &RateLimitPolicySpec, now: Timestamp) -> Result<Checked, String> {
    let usage = spec.usage.clone().unwrap_or_default();
    let interval = match &usage.interval {
        Some(d) => d.parse().map_err(|e| format!("usage.interval: {e}"))?,
        None => DEFAULT_INTERVAL,
    };
    if interval.is_zero() {
        return Err("usage.interval must be greater than 0".into());
    }
    let limit = limits::effective(spec, now);
    let field = if limit.active.is_some() { "temporaryOverrides[].period" } else { "limit.period" };
    let limit_rps = limit.per_second.ok_or_else(|| format!("{field}: {:?} is not a duration above 0", limit.period))?;
    let near_limit_ratio = spec.near_limit_ratio.unwrap_or(keys::DEFAULT_NEAR_LIMIT_RATIO);
    if !(near_limit_ratio > 0.0 && near_limit_ratio <= 1.0) {
        return Err(format!("nearLimitRatio must be in (0, 1], got {near_limit_ratio}"));
    }
    let scaling = spec.scaling.as_ref().map(check_scaling).transpose()?;
    Ok(Checked { interval, limit, limit_rps, near_limit_ratio, scaling })
}

fn check_scaling(s: &Scaling) -> Result<CheckedScaling, String> {
    let window = |rules: &Option<crate::api::ratelimit::ScalingRules>, field: &str, default: Duration| match rules
        .as_ref()
        .and_then(|r| r.stabilization_window.as_ref())
    {
        Some(d) => d.parse().map_err(|e| format!("scaling.{field}.stabilizationWindow: {e}")),
        None => Ok(default),
    };
    let capacity_rps = s
        .capacity_per_replica
        .per_second()
        .ok_or_else(|| "scaling.capacityPerReplica.period is not a duration above 0".to_string())?;
    let min = s.min_replicas.unwrap_or(1);
    if min > s.max_replicas {
        return Err(format!("scaling.minReplicas ({min}) is greater than scaling.maxReplicas ({})", s.max_replicas));
    }
    Ok(CheckedScaling {
        capacity_rps,
        target_utilization: s.target_utilization.unwrap_or(DEFAULT_TARGET_UTILIZATION),
        min,
        max: s.max_replicas,
        up_window: window(&s.scale_up, "scaleUp", scaling::DEFAULT_UP_WINDOW)?,
        down_window: window(&s.scale_down, "scaleDown", scaling::DEFAULT_DOWN_WINDOW)?,
    })
}

/// What one cycle found, turned into the status at the end.
#[derive(Default)]
struct Cycle {
    conditions: Vec<Desired>,
    observed_usage: Option<f64>,
    utilization: Option<f64>,
    current_replicas: Option<i32>,
    desired_replicas: Option<i32>,
    last_scale_time: Option<Time>,
    keys_near_limit: Option<i32>,
    keys_exhausted: Option<i32>,
}

async fn reconcile_inner(policy: &RateLimitPolicy, ctx: &Context) -> Result<Requeue, Error> {
    let now = (ctx.now)();
    let ns = policy.namespace().ok_or(Error::MissingMetadata)?;
    let name = policy.name_any();
    if policy.meta().deletion_timestamp.is_some() {
        // The target's replicas stay as they are; nothing to undo.
        return Ok(Requeue::await_change());
    }
    let state = ctx.state(policy);
    let mut state = state.lock().await;
    let generation = policy.metadata.generation;
    let current = policy.status.clone().unwrap_or_default();

    let checked = match check(&policy.spec, now) {
        Ok(c) => c,
        Err(message) => {
            let cycle = Cycle {
                conditions: vec![Desired::new(condition::READY, false, "InvalidSpec", message)],
                ..Cycle::default()
            };
            state.generation = generation;
            write_status(ctx, policy, &ns, &name, cycle, None, now).await?;
            return Ok(Requeue::await_change());
        }
    };

    // Poll when the interval has passed, the spec changed, or the limit in force changed on its own.
    let next_poll = state.last_poll.map(|t| t + as_signed(checked.interval));
    let override_index = checked.limit.active.as_ref().map(|a| a.index);
    let due =
        next_poll.is_none_or(|t| now >= t) || state.generation != generation || state.override_index != override_index;
    let requeue = |from: Timestamp| {
        let next = [Some(from + as_signed(checked.interval)), checked.limit.changes_at].into_iter().flatten().min();
        let wait = next.map(|t| t.duration_since((ctx.now)())).unwrap_or_default();
        Requeue::requeue(Duration::try_from(wait).unwrap_or_default().max(Duration::from_millis(50)))
    };
    if !due {
        return Ok(requeue(state.last_poll.unwrap_or(now)));
    }
    state.last_poll = Some(now);
    state.generation = generation;
    let override_changed = state.override_index != override_index;
    state.override_index = override_index;

    let mut cycle = Cycle::default();

    // Limit and overrides.
    let effective = &checked.limit;
    match &effective.active {
        Some(a) => {
            cycle.conditions.push(Desired::new(
                condition::OVERRIDE_ACTIVE,
                true,
                "OverrideActive",
                format!(
                    "temporaryOverrides[{}] ({}) raises the limit to {} until {}",
                    a.index,
                    a.reason,
                    effective.display(),
                    a.until
                ),
            ));
            if override_changed && !keys::is_true(&current.conditions, condition::OVERRIDE_ACTIVE) {
                let note = format!("limit is {} until {}: {}", effective.display(), a.until, a.reason);
                publish(ctx, policy, EventType::Normal, "OverrideStarted", note).await;
            }
        }
        None => {
            cycle.conditions.push(Desired::new(
                condition::OVERRIDE_ACTIVE,
                false,
                "NoOverride",
                format!("the limit is {}", effective.display()),
            ));
            if keys::is_true(&current.conditions, condition::OVERRIDE_ACTIVE) {
                let note = format!("the override ended; the limit is back to {}", effective.display());
                publish(ctx, policy, EventType::Normal, "OverrideExpired", note).await;
            }
        }
    }

    // Usage.
    let usage = poll(&mut state, policy.spec.usage.as_ref(), ctx, now, checked.interval).await;
    if let Ok(rates) = &usage {
        // The moment a poll's answer is in: `examples/bench/scale.rs` times poll → scale write from this line.
        tracing::debug!(total_rps = rates.values().sum::<f64>(), keys = rates.len(), "usage polled");
    }
    match &usage {
        Ok(rates) => {
            let total: f64 = rates.values().sum();
            cycle.observed_usage = Some(status::round2(total));
            let from = match policy.spec.usage.as_ref() {
                Some(UsageSource { prometheus: Some(p), .. }) => {
                    format!("Prometheus at {}", crate::usage::redact_url(&p.address))
                }
                Some(UsageSource { scrape: Some(s), .. }) => format!("{} metrics endpoint(s)", s.urls.len()),
                _ => "the usage source".to_string(),
            };
            // NB: no figures in the message: it is kept while the reason stays, and figures would go stale.
            cycle.conditions.push(Desired::new(
                condition::USAGE_AVAILABLE,
                true,
                "UsageRead",
                format!("usage is read from {from}"),
            ));
        }
        Err(e) => {
            if !matches!(e, SourceError::NotConfigured) {
                ctx.metrics.usage_source_error(&ns, &name, e.reason());
            }
            cycle.observed_usage = current.observed_usage;
            cycle.conditions.push(Desired::new(condition::USAGE_AVAILABLE, false, e.reason(), e.to_string()));
        }
    }

    // Keys.
    let (near, exhausted) = update_keys(ctx, policy, &ns, &checked, usage.as_ref().ok(), now).await;
    cycle.keys_near_limit = Some(near);
    cycle.keys_exhausted = Some(exhausted);

    // Scaling.
    if let (Some(spec), Some(s)) = (policy.spec.scaling.as_ref(), checked.scaling.as_ref()) {
        scale_target(ctx, policy, &ns, spec, s, &mut state, usage.as_ref().ok(), &current, now, &mut cycle).await;
    }

    // Ready sums it up: the first problem, if any.
    let problem = cycle
        .conditions
        .iter()
        .find(|c| {
            (c.type_ == condition::USAGE_AVAILABLE && !c.status && c.reason != SourceError::NotConfigured.reason())
                || (c.type_ == condition::SCALING_CONFLICT && c.status)
                || (c.type_ == condition::SCALING_ACTIVE && !c.status)
        })
        .map(|c| (c.reason, c.message.clone()));
    let ready = match (problem, policy.spec.usage.is_some()) {
        (Some((reason, message)), _) => Desired::new(condition::READY, false, reason, message),
        (None, true) => {
            Desired::new(condition::READY, true, "Active", format!("limit {} per key", effective.display()))
        }
        (None, false) => Desired::new(
            condition::READY,
            true,
            "LimitOnly",
            format!("limit {} per key; no usage source, so usage is not measured", effective.display()),
        ),
    };
    cycle.conditions.push(ready);
    write_status(ctx, policy, &ns, &name, cycle, Some(effective.display()), now).await?;
    Ok(requeue(now))
}

/// Polls the policy's source (rebuilt when `usage` changed), bounded by the poll timeout. An empty answer is
/// "no data", never zero traffic.
async fn poll(
    state: &mut PolicyState,
    spec: Option<&UsageSource>,
    ctx: &Context,
    now: Timestamp,
    interval: Duration,
) -> Result<Rates, SourceError> {
    let Some(spec) = spec else {
        state.source = None;
        return Err(SourceError::NotConfigured);
    };
    if state.source.as_ref().is_none_or(|(s, _)| s != spec) {
        state.source = AnySource::from_spec(spec, ctx.http.clone()).map(|src| (spec.clone(), src));
    }
    let Some((_, source)) = state.source.as_mut() else { return Err(SourceError::NotConfigured) };
    let timeout = interval.min(MAX_POLL_TIMEOUT).max(Duration::from_secs(1));
    let rates = source.poll(now, timeout).await?;
    if rates.is_empty() {
        return Err(SourceError::NoData);
    }
    Ok(rates)
}

/// Writes `status.usage` and `NearLimit`/`Exhausted` of every ApiKey that references the policy, where the change is
/// meaningful. Returns how many keys are NearLimit and Exhausted. Without usage data nothing is written and the
/// counts come from the keys' statuses.
async fn update_keys(
    ctx: &Context,
    policy: &RateLimitPolicy,
    ns: &str,
    checked: &Checked,
    rates: Option<&Rates>,
    now: Timestamp,
) -> (i32, i32) {
    ctx.apikeys_ready.wait().await;
    let name = policy.name_any();
    let members: Vec<Arc<ApiKey>> = ctx
        .apikeys
        .state()
        .into_iter()
        .filter(|k| {
            k.namespace().as_deref() == Some(ns)
                && k.spec.rate_limit_policy_ref.as_ref().is_some_and(|r| r.name == name)
                && k.meta().deletion_timestamp.is_none()
        })
        .collect();
    let (mut near, mut exhausted) = (0, 0);
    let api: Api<ApiKey> = Api::namespaced(ctx.client.clone(), ns);
    let display = checked.limit.display();
    for key in members {
        let status = key.status.clone().unwrap_or_default();
        let Some(rates) = rates else {
            near += i32::from(keys::is_true(&status.conditions, keys::NEAR_LIMIT));
            exhausted += i32::from(keys::is_true(&status.conditions, keys::EXHAUSTED));
            continue;
        };
        let rps = keys::key_rps(rates, &key.name_any(), status.key_id.as_deref(), status.previous_key_id.as_deref());
        let want = keys::desired(
            &status.conditions,
            key.metadata.generation,
            rps,
            checked.limit_rps,
            checked.near_limit_ratio,
            &display,
            now,
        );
        near += i32::from(want.near_limit());
        exhausted += i32::from(want.exhausted());
        if !keys::worth_writing(status.usage.as_ref(), &status.conditions, &want) {
            continue;
        }
        let body = serde_json::json!({
            "apiVersion": "keyward.dev/v1alpha1",
            "kind": "ApiKey",
            "status": { "usage": want.usage, "conditions": want.conditions },
        });
        let key_name = key.name_any();
        ctx.metrics.api_write(CONTROLLER, "ApiKeyStatus");
        if let Err(e) = api.patch_status(&key_name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body)).await {
            tracing::warn!(apikey = %key_name, error = %e, "could not write the key's usage; the next poll retries");
            continue;
        }
        if want.exhausted() && !keys::is_true(&status.conditions, keys::EXHAUSTED) {
            let note = format!("{rps:.2} req/s reached the limit {display}");
            publish_for(ctx, key.as_ref(), EventType::Warning, "Exhausted", note).await;
        } else if want.near_limit() && !keys::is_true(&status.conditions, keys::NEAR_LIMIT) {
            let note = format!("{rps:.2} req/s is {:.0}% of the limit {display}", want.usage.utilization * 100.0);
            publish_for(ctx, key.as_ref(), EventType::Normal, "NearLimit", note).await;
        }
    }
    (near, exhausted)
}

/// Reads the target's replicas, looks for a competing HPA, and writes a new replica count when the stabilized
/// recommendation differs. Every outcome is recorded in `cycle`.
#[allow(clippy::too_many_arguments)]
async fn scale_target(
    ctx: &Context,
    policy: &RateLimitPolicy,
    ns: &str,
    spec: &Scaling,
    s: &CheckedScaling,
    state: &mut PolicyState,
    rates: Option<&Rates>,
    current: &RateLimitPolicyStatus,
    now: Timestamp,
    cycle: &mut Cycle,
) {
    use condition::{SCALING_ACTIVE, SCALING_CONFLICT};
    let target = &spec.target_ref;
    let what = format!("{} {}", target.kind, target.name);
    cycle.last_scale_time = current.last_scale_time.clone();
    cycle.desired_replicas = current.desired_replicas;
    let fail = |cycle: &mut Cycle, e: scale::ScaleError| {
        cycle.conditions.push(Desired::new(SCALING_ACTIVE, false, e.reason(), e.to_string()));
        cycle.conditions.push(Desired::new(
            SCALING_CONFLICT,
            false,
            "NoConflict",
            "no HorizontalPodAutoscaler targets it",
        ));
    };
    let ar = match ctx.resolve(target).await {
        Ok(ar) => ar,
        Err(e) => return fail(cycle, e),
    };
    let replicas = match scale::read(&ctx.client, &ar, ns, &target.name).await {
        Ok(r) => r,
        Err(e) => {
            if e.invalidates_discovery() {
                ctx.forget(target);
            }
            return fail(cycle, e);
        }
    };
    cycle.current_replicas = Some(replicas);
    if let Some(total) = rates.map(|r| r.values().sum::<f64>())
        && replicas > 0
    {
        cycle.utilization = Some(status::round2(total / (f64::from(replicas) * s.capacity_rps)));
    }

    match scale::competing_hpa(&ctx.client, ns, target).await {
        Ok(Some(hpa)) => {
            let message = format!(
                "HorizontalPodAutoscaler {hpa} also scales {what}; Keyward does not write its replicas while it exists"
            );
            if !keys::is_true(&current.conditions, SCALING_CONFLICT) {
                publish(ctx, policy, EventType::Warning, "ScalingConflict", message.clone()).await;
            }
            cycle.conditions.push(Desired::new(SCALING_CONFLICT, true, "HorizontalPodAutoscaler", message.clone()));
            cycle.conditions.push(Desired::new(SCALING_ACTIVE, false, "ScalingConflict", message));
            return;
        }
        Ok(None) => {
            cycle.conditions.push(Desired::new(
                SCALING_CONFLICT,
                false,
                "NoConflict",
                "no HorizontalPodAutoscaler targets it",
            ));
        }
        Err(e) => {
            // Not knowing is treated as a conflict: no writes until the check succeeds.
            let message = format!("cannot check for a HorizontalPodAutoscaler on {what}, so replicas are held: {e}");
            cycle.conditions.push(Desired::new(SCALING_CONFLICT, false, "CheckFailed", message.clone()));
            cycle.conditions.push(Desired::new(SCALING_ACTIVE, false, "CheckFailed", message));
            return;
        }
    }

    let Some(rates) = rates else {
        cycle.conditions.push(Desired::new(
            SCALING_ACTIVE,
            false,
            "UsageUnavailable",
            format!("replicas held at {replicas}: no usage data, and missing data never scales down"),
        ));
        return;
    };
    let total: f64 = rates.values().sum();
    let raw = match scaling::raw_recommendation(total, s.capacity_rps, s.target_utilization) {
        Ok(r) => r,
        Err(e) => {
            cycle.conditions.push(Desired::new(SCALING_ACTIVE, false, "InvalidSpec", e.to_string()));
            return;
        }
    };
    let clamped = scaling::clamp_replicas(raw, s.min, s.max);
    if !state.seeded {
        // NB: seeded just before now, so the up window (default 0 s) does not see it.
        state.stabilizer.recommend(
            now - SignedDuration::from_millis(1),
            replicas,
            replicas,
            s.up_window,
            s.down_window,
        );
        state.seeded = true;
    }
    let desired = state.stabilizer.recommend(now, clamped, replicas, s.up_window, s.down_window);
    cycle.desired_replicas = Some(desired);
    let why = format!(
        "{total:.2} req/s at {}% of {:.2} req/s per replica needs {raw} (bounds {}..={})",
        s.target_utilization, s.capacity_rps, s.min, s.max
    );
    if desired == replicas {
        let held =
            if clamped == replicas { why } else { format!("{why}; held at {replicas} by the stabilization window") };
        cycle.conditions.push(Desired::new(SCALING_ACTIVE, true, "Stable", held));
        return;
    }
    ctx.metrics.api_write(CONTROLLER, "Scale");
    match scale::write(&ctx.client, &ar, ns, &target.name, desired).await {
        Ok(()) => {
            let (reason, verb) = if desired > replicas { ("ScaledUp", "up") } else { ("ScaledDown", "down") };
            let note = format!("scaled {what} {verb} from {replicas} to {desired}: {why}");
            tracing::info!(target = %what, from = replicas, to = desired, total_rps = total, "scaled");
            publish(ctx, policy, EventType::Normal, reason, note.clone()).await;
            cycle.current_replicas = Some(desired);
            cycle.last_scale_time = Some(Time(now));
            cycle.conditions.push(Desired::new(SCALING_ACTIVE, true, reason, note));
        }
        Err(e) => {
            cycle.conditions.push(Desired::new(SCALING_ACTIVE, false, e.reason(), e.to_string()));
        }
    }
}

async fn write_status(
    ctx: &Context,
    policy: &RateLimitPolicy,
    ns: &str,
    name: &str,
    cycle: Cycle,
    effective_limit: Option<String>,
    now: Timestamp,
) -> Result<(), Error> {
    let current = policy.status.as_ref();
    let generation = policy.metadata.generation;
    let existing = current.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let mut conditions = conditions::merge(existing, &cycle.conditions, generation, now);
    // Conditions no longer reported (e.g. scaling removed from the spec) go.
    conditions.retain(|c| cycle.conditions.iter().any(|d| d.type_ == c.type_));
    let new = RateLimitPolicyStatus {
        observed_generation: generation,
        conditions,
        observed_usage: cycle.observed_usage,
        utilization: cycle.utilization,
        effective_limit,
        current_replicas: cycle.current_replicas,
        desired_replicas: cycle.desired_replicas,
        last_scale_time: cycle.last_scale_time,
        keys_near_limit: cycle.keys_near_limit,
        keys_exhausted: cycle.keys_exhausted,
    };
    let new = status::settle(current, new);
    ctx.metrics.set_policy(ns, name, new.utilization, new.observed_usage, new.desired_replicas, new.current_replicas);
    if current == Some(&new) {
        return Ok(());
    }
    ctx.metrics.api_write(CONTROLLER, "RateLimitPolicyStatus");
    let api: Api<RateLimitPolicy> = Api::namespaced(ctx.client.clone(), ns);
    let body = serde_json::json!({
        "apiVersion": "keyward.dev/v1alpha1",
        "kind": "RateLimitPolicy",
        "status": new,
    });
    api.patch_status(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body))
        .await
        .map(|_| ())
        .map_err(|source| Error::Status { ns: ns.to_string(), name: name.to_string(), source })
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

fn as_signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

async fn publish(ctx: &Context, policy: &RateLimitPolicy, type_: EventType, reason: &str, note: String) {
    publish_for(ctx, policy, type_, reason, note).await;
}

/// Publishes an event on `obj`; a failure to publish is logged, never fatal.
async fn publish_for<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    obj: &K,
    type_: EventType,
    reason: &str,
    note: String,
) {
    ctx.metrics.api_write(CONTROLLER, "Event");
    let ev = Event { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary: None };
    if let Err(e) = ctx.events.publish(&ev, &obj.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "could not publish event");
    }
}
