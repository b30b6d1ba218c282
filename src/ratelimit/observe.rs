//! Observe: everything one cycle of a policy reads, into one [`Observed`] value: the usage poll, the ApiKeys that
//! reference the policy, and the scale target (its replicas and anything else that scales it).

use std::sync::Arc;

use kube::api::ApiResource;
use kube::{Resource, ResourceExt};

use super::check::Checked;
use super::{Context, scale};
use crate::api::ApiKey;
use crate::api::ratelimit::{RateLimitPolicy, ScaleTargetRef, UsageSource};
use crate::usage::{Rates, SourceError};

/// What one cycle of a policy found.
pub struct Observed {
    /// Requests per second by key, or why there are none.
    pub rates: Result<Rates, SourceError>,
    /// Under a calendar limit, what the poll says about the requests used in the window.
    pub used: super::quota::Used,
    /// The ApiKeys that reference the policy.
    pub members: Vec<Arc<ApiKey>>,
    /// The scale target, when the policy scales one.
    pub target: Option<Target>,
    /// Where usage is read from, for messages (credentials redacted).
    pub source: String,
    /// `<Kind> <name>` of the scale target, for messages.
    pub target_name: String,
}

/// The scale target as read.
pub enum Target {
    /// It cannot be read (unknown kind, not found, API error).
    Unavailable(scale::ScaleError),
    /// Its replicas, and whether something else scales it.
    Read { replicas: i32, conflict: Conflict },
}

/// Whether another writer scales the same target.
#[derive(Clone, Debug, PartialEq)]
pub enum Conflict {
    None,
    /// A HorizontalPodAutoscaler of this name targets it.
    Hpa(String),
    /// An older RateLimitPolicy of this name scales it.
    Policy(String),
    /// Whether an HPA targets it could not be checked (held as a conflict).
    CheckFailed(String),
}

/// Reads the members and the scale target, beside the usage the policy's poll answered.
pub async fn observe(
    ctx: &Context,
    policy: &RateLimitPolicy,
    ns: &str,
    (rates, used): (Result<Rates, SourceError>, super::quota::Used),
    checked: &Checked,
) -> Observed {
    if let Ok(rates) = &rates {
        // The moment a poll's answer is in: `examples/bench/scale.rs` times poll → scale write from this line.
        tracing::debug!(total_rps = rates.values().sum::<f64>(), keys = rates.len(), "usage polled");
    }
    let target = match policy.spec.scaling.as_ref() {
        Some(s) if checked.scaling.is_some() => Some(target(ctx, policy, ns, &s.target_ref).await),
        _ => None,
    };
    let target_name = policy
        .spec
        .scaling
        .as_ref()
        .map(|s| format!("{} {}", s.target_ref.kind, s.target_ref.name))
        .unwrap_or_default();
    let members = members(ctx, policy, ns).await;
    Observed { rates, used, members, target, source: describe(policy), target_name }
}

/// Where the policy reads usage from, for messages: never credentials.
fn describe(policy: &RateLimitPolicy) -> String {
    match policy.spec.usage.as_ref() {
        Some(UsageSource { prometheus: Some(p), .. }) => {
            format!("Prometheus at {}", crate::usage::redact_url(&p.address))
        }
        Some(UsageSource { scrape: Some(s), .. }) => format!("{} metrics endpoint(s)", s.urls.len()),
        _ => "the usage source".to_string(),
    }
}

/// The ApiKeys of the policy's namespace that reference it and are not being deleted.
pub(super) async fn members(ctx: &Context, policy: &RateLimitPolicy, ns: &str) -> Vec<Arc<ApiKey>> {
    ctx.apikeys_ready.wait().await;
    let name = policy.name_any();
    ctx.apikeys
        .state()
        .into_iter()
        .filter(|k| {
            k.namespace().as_deref() == Some(ns)
                && k.spec.rate_limit_policy_ref.as_ref().is_some_and(|r| r.name == name)
                && k.meta().deletion_timestamp.is_none()
        })
        .collect()
}

/// Resolves and reads the target, then looks for another writer of its replicas.
async fn target(ctx: &Context, policy: &RateLimitPolicy, ns: &str, target: &ScaleTargetRef) -> Target {
    let read = async {
        let ar: ApiResource = ctx.resolve(target).await?;
        scale::read(&ctx.runtime.client, &ar, ns, &target.name).await
    };
    let replicas = match read.await {
        Ok(r) => r,
        Err(e) => {
            if e.invalidates_discovery() {
                ctx.forget(target);
            }
            return Target::Unavailable(e);
        }
    };
    if let Some(other) = ctx.policies.get().and_then(|store| scale::competing_policy(&store.state(), policy)) {
        return Target::Read { replicas, conflict: Conflict::Policy(other) };
    }
    let conflict = match scale::competing_hpa(&ctx.runtime.client, ns, target).await {
        Ok(Some(hpa)) => Conflict::Hpa(hpa),
        Ok(None) => Conflict::None,
        Err(e) => Conflict::CheckFailed(e.to_string()),
    };
    Target::Read { replicas, conflict }
}
