//! The ApiKeys that reference a policy, updated from `keys`' decisions: `status.usage`, the `NearLimit` and
//! `Exhausted` conditions, and an event when a key crosses into one of them.

use std::sync::Arc;

use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};

use super::check::Checked;
use super::events::publish_for;
use super::{CONTROLLER, Context, MANAGER, keys};
use crate::api::ApiKey;
use crate::api::ratelimit::RateLimitPolicy;
use crate::events::EventType;
use crate::usage::Rates;

/// Writes `status.usage` and `NearLimit`/`Exhausted` of every ApiKey that references the policy, where the change is
/// meaningful. Returns how many keys are NearLimit and Exhausted. Without usage data nothing is written and the
/// counts come from the keys' statuses.
pub(super) async fn update_keys(
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
