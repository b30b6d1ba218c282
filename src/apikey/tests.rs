//! Unit tests of the controller's own helpers (the decision table is tested in `plan`).

use super::observe::data_due;
use super::*;
use crate::api::apikey::ROTATE_ANNOTATION;

fn key(generation: i64, rotate: Option<&str>, key_id: Option<&str>) -> ApiKey {
    let mut k: ApiKey = serde_json::from_value(serde_json::json!({
        "apiVersion": "keyward.dev/v1alpha1",
        "kind": "ApiKey",
        "metadata": {"name": "a", "namespace": "n", "uid": "u", "generation": generation},
        "spec": {}
    }))
    .expect("ApiKey");
    if let Some(r) = rotate {
        k.metadata.annotations = Some([(ROTATE_ANNOTATION.to_string(), r.to_string())].into());
    }
    k.status = Some(crate::api::ApiKeyStatus { key_id: key_id.map(Into::into), ..Default::default() });
    k
}

#[test]
fn the_whole_secret_is_read_at_once_only_when_a_write_needing_its_data_is_due() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let now = Timestamp::from_second(1_800_000_000).expect("now");
    let at = |s: i64| Some(Time(Timestamp::from_second(1_800_000_000 + s).expect("t")));
    assert!(!data_due(&key(1, None, None), now), "no status yet: the first issue needs no data");
    let mut k = key(1, None, Some("abc"));
    k.status.as_mut().expect("status").next_rotation_time = at(60);
    assert!(!data_due(&k, now), "rotation not due yet");
    k.status.as_mut().expect("status").next_rotation_time = at(0);
    assert!(data_due(&k, now), "rotation due");
    let mut k = key(1, None, Some("abc"));
    k.status.as_mut().expect("status").previous_key_expires_at = at(-1);
    assert!(data_due(&k, now), "grace over");
    let mut k = key(1, Some("r1"), Some("abc"));
    assert!(data_due(&k, now), "a request not yet answered");
    k.status.as_mut().expect("status").last_rotate_request = Some("r1".into());
    assert!(!data_due(&k, now), "the request was answered");
}

#[test]
fn only_spec_annotations_and_deletion_trigger_a_reconcile() {
    let base = trigger_hash(&key(1, None, None));
    // A status write (ours, or the RateLimitPolicy controller's) is not a trigger.
    assert_eq!(trigger_hash(&key(1, None, Some("abc"))), base);
    assert_ne!(trigger_hash(&key(2, None, None)), base, "spec change");
    assert_ne!(trigger_hash(&key(1, Some("r1"), None)), base, "rotation request");
    assert_ne!(trigger_hash(&key(1, Some("r2"), None)), trigger_hash(&key(1, Some("r1"), None)));
    let mut deleting = key(1, None, None);
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    assert_ne!(trigger_hash(&deleting), base, "deletion");
}
