//! One cycle of a policy: decide whether a poll is due, report the limit in force, poll the usage source, update
//! the keys, scale the target, sum it all up in `Ready` and write the status.

use std::time::Duration;

use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::{Resource, ResourceExt};

use super::apikeys::update_keys;
use super::autoscale::scale_target;
use super::check::check;
use super::events::publish;
use super::{CONTROLLER, Context, Error, MANAGER, MAX_POLL_TIMEOUT, PolicyState, condition, keys, status};
use crate::api::common::Time;
use crate::api::ratelimit::{RateLimitPolicy, RateLimitPolicyStatus, UsageSource};
use crate::conditions::{self, Desired};
use crate::events::EventType;
use crate::usage::{AnySource, Rates, Source, SourceError};

/// What one cycle found, turned into the status at the end.
#[derive(Default)]
pub(super) struct Cycle {
    pub(super) conditions: Vec<Desired>,
    pub(super) observed_usage: Option<f64>,
    pub(super) utilization: Option<f64>,
    pub(super) current_replicas: Option<i32>,
    pub(super) desired_replicas: Option<i32>,
    pub(super) last_scale_time: Option<Time>,
    pub(super) keys_near_limit: Option<i32>,
    pub(super) keys_exhausted: Option<i32>,
}

pub(super) async fn reconcile_inner(policy: &RateLimitPolicy, ctx: &Context) -> Result<Requeue, Error> {
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

    let checked = match check(&policy.spec, now, &ctx.minimums) {
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
    let next_poll = state.last_poll.map(|t| checked.next_poll(t));
    let override_index = checked.limit.active.as_ref().map(|a| a.index);
    let due =
        next_poll.is_none_or(|t| now >= t) || state.generation != generation || state.override_index != override_index;
    let requeue = |from: Timestamp| Requeue::requeue(checked.requeue_after(from, (ctx.now)()));
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
