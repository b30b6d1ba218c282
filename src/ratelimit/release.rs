//! Usage released: this controller alone owns `status.usage`, `NearLimit` and `Exhausted` on ApiKeys, so it also
//! removes them when a key stops referencing a policy, or its policy is deleted (a `SuspendedForAbuse` that no
//! person cleared stays: leaving the policy is no way out of it). A sweep over the ApiKey cache every
//! few seconds finds such keys (no reconcile of a deleted policy ever runs); it writes only for those.

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use super::Context;
use super::apply::holds_usage;
use crate::api::ApiKey;
use crate::api::ratelimit::RateLimitPolicy;

/// How often the ApiKey cache is swept for released keys.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Sweeps until the task is dropped; starts once both caches are in.
pub async fn run(ctx: Arc<Context>, policies: Store<RateLimitPolicy>, policies_ready: crate::runtime::cache::Ready) {
    if !(ctx.apikeys_ready.wait().await && policies_ready.wait().await) {
        return;
    }
    loop {
        for key in ctx.apikeys.state().into_iter().filter(|k| unlinked(k, &policies)) {
            let (ns, name) = (key.namespace().unwrap_or_default(), key.name_any());
            ctx.runtime.metrics.clear_key_usage(&ns, &name);
            if !released(&key, &policies) {
                continue;
            }
            // NB: an apply that owns nothing removes every field this manager applied before; a suspension for
            // abuse is kept (leaving the policy must not lift it).
            let kept: Vec<_> = super::key_usage::abuse(&key).into_iter().collect();
            let body = if kept.is_empty() { serde_json::json!({}) } else { serde_json::json!({ "conditions": kept }) };
            match ctx.runtime.apply_status_of::<ApiKey>(&ns, &name, &body).await {
                Ok(()) => tracing::debug!(namespace = %ns, apikey = %name, "usage released"),
                Err(e) => tracing::warn!(namespace = %ns, apikey = %name, error = %e, "could not release usage"),
            }
        }
        tokio::time::sleep(SWEEP_EVERY).await;
    }
}

/// Whether `key` holds usage but references no policy, or one that does not exist. Pure.
pub fn released(key: &ApiKey, policies: &Store<RateLimitPolicy>) -> bool {
    holds_usage(key) && key.metadata.deletion_timestamp.is_none() && unlinked(key, policies)
}

/// Whether `key` references no policy, or one that does not exist: its usage metrics go. Pure.
fn unlinked(key: &ApiKey, policies: &Store<RateLimitPolicy>) -> bool {
    match (key.spec.rate_limit_policy_ref.as_ref(), key.namespace()) {
        (Some(r), Some(ns)) => policies.get(&ObjectRef::new(&r.name).within(&ns)).is_none(),
        _ => true,
    }
}
