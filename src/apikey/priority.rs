//! Revocation first. A herd of due rotations can fill every reconcile slot; a suspension, an expiry or an edited
//! Secret must not wait behind it. The controller runs `concurrency + REVOCATION_SLOTS` reconciles at once, and every
//! reconcile that does not revoke needs one of `concurrency` permits: when none is free it gives its slot back and
//! comes again shortly, so the extra slots are always there for revocations.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::ApiKey;

/// Reconcile slots kept for revocations.
pub const REVOCATION_SLOTS: u16 = 4;

/// The permits of ordinary reconciles, and the keys whose Secret changed behind Keyward's back (a possible tamper).
pub struct Lanes {
    ordinary: Arc<Semaphore>,
    suspicious: Mutex<HashSet<ObjectRef<ApiKey>>>,
}

/// What a reconcile may do now.
pub enum Admission {
    /// Go on (holding the permit, if any, until the reconcile ends).
    Go(Option<OwnedSemaphorePermit>),
    /// Every ordinary permit is taken: come again after this long.
    Later(Duration),
}

impl Lanes {
    /// `concurrency` ordinary permits (at least one).
    pub fn new(concurrency: u16) -> Self {
        Lanes { ordinary: Arc::new(Semaphore::new(usize::from(concurrency.max(1)))), suspicious: Mutex::default() }
    }

    /// Marks `key`: its Secret changed in a version Keyward did not write, so its next reconcile may revoke.
    pub fn suspect(&self, key: ObjectRef<ApiKey>) {
        if let Ok(mut s) = self.suspicious.lock() {
            s.insert(key);
        }
    }

    /// Admits a reconcile of `key`: a revocation (suspended, expired, or suspected) always, anything else with an
    /// ordinary permit. `spread` (0..1, from the key) spreads the retries of keys turned away together.
    pub fn admit(&self, key: &ApiKey, now: Timestamp, spread: f64) -> Admission {
        let suspected = self.suspicious.lock().map(|mut s| s.remove(&ObjectRef::from_obj(key))).unwrap_or(false);
        if suspected || revokes(key, now) {
            return Admission::Go(None);
        }
        match self.ordinary.clone().try_acquire_owned() {
            Ok(permit) => Admission::Go(Some(permit)),
            Err(_) => Admission::Later(Duration::from_millis(200 + (spread.clamp(0.0, 1.0) * 800.0) as u64)),
        }
    }
}

/// Whether the spec alone says the key's material must go: suspended, or past `expiresAt`.
pub fn revokes(key: &ApiKey, now: Timestamp) -> bool {
    key.spec.suspended == Some(true) || key.spec.expires_at.as_ref().is_some_and(|t| t.0 <= now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, spec: serde_json::Value) -> ApiKey {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "keyward.dev/v1alpha1", "kind": "ApiKey",
            "metadata": {"name": name, "namespace": "ns"}, "spec": spec,
        }))
        .expect("ApiKey")
    }

    #[test]
    fn revocations_pass_when_every_ordinary_permit_is_taken() {
        let now: Timestamp = "2026-06-01T00:00:00Z".parse().expect("now");
        let lanes = Lanes::new(2);
        let ordinary = key("a", serde_json::json!({}));
        let held: Vec<_> = (0..2)
            .map(|_| match lanes.admit(&ordinary, now, 0.0) {
                Admission::Go(Some(p)) => p,
                _ => panic!("a free permit admits"),
            })
            .collect();
        assert!(matches!(lanes.admit(&ordinary, now, 0.5), Admission::Later(d) if d == Duration::from_millis(600)));
        let suspended = key("s", serde_json::json!({"suspended": true}));
        assert!(matches!(lanes.admit(&suspended, now, 0.0), Admission::Go(None)));
        let expired = key("e", serde_json::json!({"expiresAt": "2026-05-31T00:00:00Z"}));
        assert!(matches!(lanes.admit(&expired, now, 0.0), Admission::Go(None)));
        let later = key("l", serde_json::json!({"expiresAt": "2026-06-02T00:00:00Z"}));
        assert!(matches!(lanes.admit(&later, now, 0.0), Admission::Later(_)), "not expired yet: ordinary");
        let edited = key("t", serde_json::json!({}));
        lanes.suspect(ObjectRef::from_obj(&edited));
        assert!(matches!(lanes.admit(&edited, now, 0.0), Admission::Go(None)), "a suspected tamper passes once");
        assert!(matches!(lanes.admit(&edited, now, 0.0), Admission::Later(_)), "and only once");
        drop(held);
        assert!(matches!(lanes.admit(&ordinary, now, 0.0), Admission::Go(Some(_))), "permits come back");
    }
}
