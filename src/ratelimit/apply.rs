//! Apply: the only writes of the RateLimitPolicy controller. Member keys' usage (as this controller's field
//! manager, which owns those fields), the replica count through the scale subresource, the policy's events, and
//! its status when it changed.

use jiff::Timestamp;
use kube::{Resource, ResourceExt};

use super::plan::{self, Plan};
use super::{CONTROLLER, Context, Error, scale};
use crate::api::ApiKey;
use crate::api::ratelimit::{RateLimitPolicy, RateLimitPolicyStatus};
use crate::metrics::{KeyUsageFigures, PolicyFigures};
use crate::runtime::Kind;
use crate::runtime::conditions::Desired;

/// Carries out the plan: key usage, then the scale write (its result goes into the plan), then the events.
pub async fn plan(ctx: &Context, policy: &RateLimitPolicy, ns: &str, p: &mut Plan, now: Timestamp) {
    for w in std::mem::take(&mut p.keys) {
        let body = serde_json::json!({ "usage": w.status.usage, "conditions": w.status.conditions });
        let key_name = w.key.name_any();
        if let Err(e) = ctx.runtime.apply_status_of::<ApiKey>(ns, &key_name, &body).await {
            tracing::warn!(apikey = %key_name, error = %e, "could not write the key's usage; the next poll retries");
            continue;
        }
        if let Some(n) = w.note {
            ctx.runtime.publish_note(w.key.as_ref(), n.type_, n.reason, n.note).await;
        }
    }
    if let Some(w) = p.scale.clone() {
        let result = scale_to(ctx, policy, ns, w.to).await;
        if result.is_ok() {
            tracing::info!(target = %w.what, from = w.from, to = w.to, "scaled");
        }
        plan::scaled(p, result, now);
    }
    for n in std::mem::take(&mut p.events) {
        ctx.runtime.publish_note(policy, n.type_, n.reason, n.note).await;
    }
}

/// Writes `replicas` to the policy's scale target.
async fn scale_to(ctx: &Context, policy: &RateLimitPolicy, ns: &str, replicas: i32) -> Result<(), scale::ScaleError> {
    let Some(target) = policy.spec.scaling.as_ref().map(|s| &s.target_ref) else { return Ok(()) };
    let ar = ctx.resolve(target).await?;
    ctx.runtime.metrics.api_write(CONTROLLER, "Scale");
    scale::write(&ctx.runtime.client, &ar, ns, &target.name, replicas).await
}

/// Reports each member key's usage in the metrics.
pub fn member_usage(ctx: &Context, policy: &RateLimitPolicy, ns: &str, p: &Plan) {
    let name = policy.name_any();
    for m in &p.member_usage {
        let usage = KeyUsageFigures {
            policy: name.clone(),
            utilization: m.utilization,
            near_limit: m.near_limit,
            exhausted: m.exhausted,
        };
        ctx.runtime.metrics.set_key_usage(ns, &m.name, usage);
    }
}

/// Reports the policy's figures in the metrics and writes its status when it changed.
pub async fn status(ctx: &Context, policy: &RateLimitPolicy, new: RateLimitPolicyStatus) -> Result<(), Error> {
    let (ns, name) = (policy.namespace().unwrap_or_default(), policy.name_any());
    ctx.runtime.metrics.set_policy(&ns, &name, figures(policy, &new));
    if policy.status.as_ref() == Some(&new) {
        return Ok(());
    }
    ctx.runtime.apply_status(&ns, &name, &new).await.map_err(|source| Error::Status { ns, name, source })
}

/// What the metrics report of the policy: its status figures, and its usage and scaling conditions where they apply.
fn figures(policy: &RateLimitPolicy, new: &RateLimitPolicyStatus) -> PolicyFigures {
    let condition = |type_: &str| new.conditions.iter().find(|c| c.type_ == type_).map(|c| c.status == "True");
    let usage_source = policy.spec.usage.is_some();
    PolicyFigures {
        utilization: new.utilization,
        usage_rps: new.observed_usage,
        desired: new.desired_replicas,
        current: new.current_replicas,
        usage_available: condition(super::condition::USAGE_AVAILABLE).filter(|_| usage_source),
        scaling_conflict: condition(super::condition::SCALING_CONFLICT).filter(|_| policy.spec.scaling.is_some()),
    }
}

impl Kind for RateLimitPolicy {
    const STATUS_WRITE: &'static str = "RateLimitPolicyStatus";

    fn status_with_ready(&self, ready: &Desired, now: Timestamp) -> serde_json::Value {
        let mut status = self.status.clone().unwrap_or_default();
        status.conditions = crate::runtime::conditions::merge(
            &status.conditions,
            std::slice::from_ref(ready),
            self.meta().generation,
            now,
        );
        serde_json::to_value(status).unwrap_or_default()
    }
}

/// Whether a key's status holds anything this controller wrote: usage, `NearLimit` or `Exhausted`.
pub fn holds_usage(key: &ApiKey) -> bool {
    key.status.as_ref().is_some_and(|s| {
        s.usage.is_some()
            || s.conditions
                .iter()
                .any(|c| c.type_ == super::key_usage::NEAR_LIMIT || c.type_ == super::key_usage::EXHAUSTED)
    })
}
