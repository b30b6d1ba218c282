//! The rotation bookkeeping Keyward keeps in the Secret's annotations. The Secret is the source of truth: every
//! fact a decision needs (which key is current, when it was issued, which manual request it answered, when the
//! previous key expires) is written in the same atomic Secret write as the key itself, so a crash between writes
//! can neither lose a key nor rotate twice. These annotations are read through metadata-only watches: Secret data
//! never has to sit in the operator's memory to decide.

use std::collections::BTreeMap;

use jiff::Timestamp;

/// Label on every Secret Keyward manages (also the watch filter).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "keyward";
/// Label naming the ApiKey a Secret belongs to.
pub const APIKEY_LABEL: &str = "keyward.dev/apikey";

/// Fingerprint of the current key.
pub const KEY_ID: &str = "keyward.dev/key-id";
/// When the current key was issued (RFC 3339).
pub const ROTATED_AT: &str = "keyward.dev/rotated-at";
/// When the previous key stops being valid (RFC 3339); only during a grace period.
pub const PREVIOUS_EXPIRES_AT: &str = "keyward.dev/previous-expires-at";
/// Fingerprint of the previous key; only during a grace period.
pub const PREVIOUS_KEY_ID: &str = "keyward.dev/previous-key-id";
/// How many rotations this key has had.
pub const ROTATION_COUNT: &str = "keyward.dev/rotation-count";
/// The last `keyward.dev/rotate` value acted on.
pub const ROTATE_REQUEST: &str = "keyward.dev/rotate-request";

/// Data key of the current key.
pub const DATA_KEY: &str = "api-key";
/// Data key of the previous key during its grace period.
pub const DATA_PREVIOUS_KEY: &str = "previous-api-key";
/// Data key of the current key's fingerprint.
pub const DATA_KEY_ID: &str = "key-id";

/// What the Secret's annotations say. Parsing is forgiving: an unreadable timestamp counts as absent, which leads
/// to the safe choice (re-issue or keep) rather than an error loop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Book {
    pub key_id: Option<String>,
    pub rotated_at: Option<Timestamp>,
    pub previous_key_id: Option<String>,
    pub previous_expires_at: Option<Timestamp>,
    pub rotation_count: i64,
    pub rotate_request: Option<String>,
}

impl Book {
    /// Reads the bookkeeping from a Secret's annotations.
    pub fn from_annotations(a: &BTreeMap<String, String>) -> Self {
        let ts = |k: &str| a.get(k).and_then(|v| v.parse::<Timestamp>().ok());
        Book {
            key_id: a.get(KEY_ID).filter(|v| !v.is_empty()).cloned(),
            rotated_at: ts(ROTATED_AT),
            previous_key_id: a.get(PREVIOUS_KEY_ID).filter(|v| !v.is_empty()).cloned(),
            previous_expires_at: ts(PREVIOUS_EXPIRES_AT),
            rotation_count: a.get(ROTATION_COUNT).and_then(|v| v.parse().ok()).unwrap_or(0),
            rotate_request: a.get(ROTATE_REQUEST).cloned(),
        }
    }

    /// The annotations that carry this bookkeeping (absent facts are absent annotations).
    pub fn to_annotations(&self) -> BTreeMap<String, String> {
        let mut a = BTreeMap::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                a.insert(k.to_string(), v);
            }
        };
        put(KEY_ID, self.key_id.clone());
        put(ROTATED_AT, self.rotated_at.map(|t| t.to_string()));
        put(PREVIOUS_KEY_ID, self.previous_key_id.clone());
        put(PREVIOUS_EXPIRES_AT, self.previous_expires_at.map(|t| t.to_string()));
        put(ROTATION_COUNT, Some(self.rotation_count.to_string()));
        put(ROTATE_REQUEST, self.rotate_request.clone());
        a
    }

    /// Whether the Secret holds a current key.
    pub fn has_key(&self) -> bool {
        self.key_id.is_some()
    }

    /// Whether a previous key is held.
    pub fn has_previous(&self) -> bool {
        self.previous_key_id.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_annotations() {
        let b = Book {
            key_id: Some("0123456789ab".into()),
            rotated_at: Some("2026-01-01T00:00:00Z".parse().expect("ts")),
            previous_key_id: Some("ba9876543210".into()),
            previous_expires_at: Some("2026-01-02T00:00:00Z".parse().expect("ts")),
            rotation_count: 3,
            rotate_request: Some("now-1".into()),
        };
        assert_eq!(Book::from_annotations(&b.to_annotations()), b);
    }

    #[test]
    fn unreadable_values_count_as_absent() {
        let mut a = BTreeMap::new();
        a.insert(ROTATED_AT.to_string(), "yesterday".to_string());
        a.insert(ROTATION_COUNT.to_string(), "many".to_string());
        a.insert(KEY_ID.to_string(), String::new());
        let b = Book::from_annotations(&a);
        assert_eq!(b.rotated_at, None);
        assert_eq!(b.rotation_count, 0);
        assert!(!b.has_key());
    }
}
