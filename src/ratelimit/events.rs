//! The controller's events, on a policy or on a key; publishing one is never fatal.

use kube::Resource;

use super::{CONTROLLER, Context};
use crate::api::ratelimit::RateLimitPolicy;
use crate::events::{Event, EventType};

pub(super) async fn publish(ctx: &Context, policy: &RateLimitPolicy, type_: EventType, reason: &str, note: String) {
    publish_for(ctx, policy, type_, reason, note).await;
}

/// Publishes an event on `obj`; a failure to publish is logged, never fatal.
pub(super) async fn publish_for<K: Resource<DynamicType = ()>>(
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
