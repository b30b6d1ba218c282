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
            usage: Some(KeyUsage { requests_per_second: 1.0, limit: 2.0, utilization: 0.5, observed_at: None }),
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
        let s = desired(&a, Some(&book), &ready, Some(ts("2026-02-01T00:00:00Z")), now);
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.key_id.as_deref(), Some("aaaaaaaaaaaa"));
        assert_eq!(s.previous_key_id.as_deref(), Some("bbbbbbbbbbbb"));
        assert_eq!(s.previous_key_expires_at, Some(Time(ts("2026-01-02T00:00:00Z"))));
        assert_eq!(s.rotation_count, Some(4));
        assert_eq!(s.last_rotate_request.as_deref(), Some("x"));
        assert!(s.usage.is_some(), "usage belongs to the RateLimitPolicy controller and is carried over");
        // Idempotent: with the status written, the same inputs later give the same status (no churn).
        a.status = Some(s.clone());
        assert_eq!(desired(&a, Some(&book), &ready, Some(ts("2026-02-01T00:00:00Z")), ts("2026-01-01T05:00:00Z")), s);
    }
}
