//! The ApiKey status, derived from the Secret's bookkeeping (the source of truth) and the decision. Pure.

use jiff::Timestamp;

use super::book::Book;
use crate::api::common::Time;
use crate::api::{ApiKey, ApiKeyStatus};
use crate::runtime::conditions::{self, Desired};

/// The part of the status this controller owns: everything but `usage` and the conditions other than `Ready`,
/// which belong to the RateLimitPolicy controller. Under server-side apply each controller applies only its own
/// fields (conditions are a map keyed by `type`), so neither can overwrite the other's with a stale copy.
pub fn owned(status: Option<&ApiKeyStatus>) -> ApiKeyStatus {
    let mut s = status.cloned().unwrap_or_default();
    s.usage = None;
    s.conditions.retain(|c| c.type_ == READY || c.type_ == PREVIOUS_KEY_IN_USE);
    s
}

/// The condition types this controller owns.
pub const READY: &str = "Ready";
/// Present (`True`) only while the previous key is kept past its grace period because clients still use it.
pub const PREVIOUS_KEY_IN_USE: &str = "PreviousKeyInUse";

impl crate::runtime::Kind for ApiKey {
    const STATUS_WRITE: &'static str = "ApiKeyStatus";

    fn status_with_ready(&self, ready: &Desired, now: Timestamp) -> serde_json::Value {
        let mut status = owned(self.status.as_ref());
        status.conditions =
            conditions::merge(&status.conditions, std::slice::from_ref(ready), self.metadata.generation, now);
        serde_json::to_value(status).unwrap_or_default()
    }
}

/// The status the ApiKey should have, as this controller owns it (see [`owned`]).
pub fn desired(
    apikey: &ApiKey,
    book: Option<&Book>,
    (ready, in_use): (&Desired, Option<&Desired>),
    next_rotation: Option<Timestamp>,
    now: Timestamp,
) -> ApiKeyStatus {
    let current = owned(apikey.status.as_ref());
    let generation = apikey.metadata.generation;
    let wanted: Vec<Desired> = std::iter::once(ready.clone()).chain(in_use.cloned()).collect();
    let mut conditions = conditions::merge(&current.conditions, &wanted, generation, now);
    conditions.retain(|c| c.type_ != PREVIOUS_KEY_IN_USE || in_use.is_some());
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
        usage: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ApiKeySpec;
    use crate::api::apikey::KeyUsage;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("ts")
    }

    #[test]
    fn derived_from_the_book_and_stable() {
        let mut a = ApiKey::new("k", ApiKeySpec::default());
        a.metadata.generation = Some(3);
        a.status = Some(ApiKeyStatus {
            usage: Some(KeyUsage { requests_per_second: 1.0, limit: 2.0, utilization: 0.5, ..KeyUsage::default() }),
            ..ApiKeyStatus::default()
        });
        let book = Book {
            key_id: Some("aaaaaaaaaaaa".into()),
            rotated_at: Some(ts("2026-01-01T00:00:00Z")),
            previous_key_id: Some("bbbbbbbbbbbb".into()),
            previous_expires_at: Some(ts("2026-01-02T00:00:00Z")),
            rotation_count: 4,
            rotate_request: Some("x".into()),
        };
        let ready = Desired::new("Ready", true, "KeyIssued", "ok");
        let now = ts("2026-01-01T00:00:01Z");
        let s = desired(&a, Some(&book), (&ready, None), Some(ts("2026-02-01T00:00:00Z")), now);
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.key_id.as_deref(), Some("aaaaaaaaaaaa"));
        assert_eq!(s.previous_key_id.as_deref(), Some("bbbbbbbbbbbb"));
        assert_eq!(s.previous_key_expires_at, Some(Time(ts("2026-01-02T00:00:00Z"))));
        assert_eq!(s.rotation_count, Some(4));
        assert_eq!(s.last_rotate_request.as_deref(), Some("x"));
        assert!(s.usage.is_none(), "usage belongs to the RateLimitPolicy controller; this one never applies it");
        // Idempotent: with the status written, the same inputs later give the same status (no churn).
        let mut written = s.clone();
        written.usage = Some(KeyUsage::default());
        a.status = Some(written);
        assert_eq!(owned(a.status.as_ref()), s);
        assert_eq!(
            desired(&a, Some(&book), (&ready, None), Some(ts("2026-02-01T00:00:00Z")), ts("2026-01-01T05:00:00Z")),
            s
        );
    }
}
