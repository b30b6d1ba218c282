//! The ApiKey status, derived from the Secret's bookkeeping (the source of truth) and the decision. Pure.

use jiff::Timestamp;

use super::book::Book;
use crate::api::common::Time;
use crate::api::{ApiKey, ApiKeyStatus};
use crate::conditions::{self, Desired};

/// The status the ApiKey should have. Fields owned by the RateLimitPolicy controller (`usage`, other conditions)
/// are carried over unchanged.
pub fn desired(
    apikey: &ApiKey,
    book: Option<&Book>,
    ready: &Desired,
    next_rotation: Option<Timestamp>,
    now: Timestamp,
) -> ApiKeyStatus {
    let current = apikey.status.clone().unwrap_or_default();
    let generation = apikey.metadata.generation;
    let conditions = conditions::merge(&current.conditions, std::slice::from_ref(ready), generation, now);
    let b = book.cloned().unwrap_or_default();
    ApiKeyStatus {
        observed_generation: generation,
        conditions,
        key_id: b.key_id.clone(),
        previous_key_id: b.previous_key_id.clone(),
        last_rotation_time: b.rotated_at.map(Time),
        next_rotation_time: next_rotation.map(Time),
        previous_key_expires_at: b.previous_expires_at.filter(|_| b.has_previous()).map(Time),
        rotation_count: book.map(|b| b.rotation_count).or(current.rotation_count),
        last_rotate_request: b.rotate_request.clone().or(current.last_rotate_request),
        usage: current.usage,
    }
}
