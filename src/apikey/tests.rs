//! Unit tests of the controller's own helpers (the decision table is tested in `plan`).

use super::book::{self, Book};
use super::observe::data_due;
use super::*;
use crate::api::apikey::ROTATE_ANNOTATION;
use crate::keys::KeyMaterial;
use k8s_openapi::api::core::v1::Secret;

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

mod inspection {
    use super::super::observe::{Inspection, inspect};
    use super::super::seal::{SEAL, Sealed, Sealer};
    use super::*;
    use crate::keys::{OsRandom, generate, key_id};
    use k8s_openapi::ByteString;

    const UID: &str = "u";
    const NAME: &str = "s";

    fn sealer() -> Sealer {
        Sealer::new(vec![3; 32], None).expect("key")
    }

    fn now() -> Timestamp {
        "2026-06-01T00:00:00Z".parse().expect("now")
    }

    /// A Secret as Keyward writes it (sealed by `by`, unless `None`).
    fn secret(b: &Book, current: Option<&KeyMaterial>, previous: Option<&KeyMaterial>, by: Option<&Sealer>) -> Secret {
        let mut annotations = b.to_annotations();
        if let Some(s) = by {
            annotations.insert(SEAL.into(), s.seal(&Sealed { uid: UID, secret: NAME, book: b, current, previous }));
        }
        let mut data = std::collections::BTreeMap::new();
        if let Some(k) = current {
            data.insert(book::DATA_KEY.to_string(), ByteString(k.as_bytes().to_vec()));
        }
        if let Some(k) = previous {
            data.insert(book::DATA_PREVIOUS_KEY.to_string(), ByteString(k.as_bytes().to_vec()));
        }
        let mut s = Secret { data: Some(data), ..Secret::default() };
        s.metadata.annotations = Some(annotations);
        s
    }

    fn look(s: &Secret, status: Option<&Book>) -> Inspection {
        inspect(&sealer(), (UID, NAME), s, status, Some(Duration::from_secs(3600)), now())
    }

    fn issued(key: &KeyMaterial) -> Book {
        Book {
            key_id: Some(key_id(key)),
            rotated_at: Some(now() - jiff::SignedDuration::from_hours(1)),
            ..Book::default()
        }
    }

    #[test]
    fn a_sealed_secret_as_written_is_trusted() {
        let key = generate(&Default::default(), &mut OsRandom).expect("key");
        let b = issued(&key);
        assert_eq!(
            look(&secret(&b, Some(&key), None, Some(&sealer())), None),
            Inspection { tampered: false, reseal: false }
        );
    }

    #[test]
    fn edits_that_keep_the_fingerprints_consistent_are_caught_by_the_seal() {
        let key = generate(&Default::default(), &mut OsRandom).expect("key");
        let other = generate(&Default::default(), &mut OsRandom).expect("key");
        let b = issued(&key);
        let good = secret(&b, Some(&key), None, Some(&sealer()));
        let seal = good.metadata.annotations.as_ref().and_then(|a| a.get(SEAL)).cloned().expect("seal");
        let with_seal = |mut s: Secret| {
            s.metadata.annotations.get_or_insert_default().insert(SEAL.into(), seal.clone());
            s
        };
        // Key and key-id replaced together.
        let forged = Book { key_id: Some(key_id(&other)), ..b.clone() };
        assert!(look(&with_seal(secret(&forged, Some(&other), None, None)), None).tampered);
        // A planted previous key with a far grace end.
        let planted = Book {
            previous_key_id: Some(key_id(&other)),
            previous_expires_at: Some(now() + jiff::SignedDuration::from_hours(24 * 365)),
            ..b.clone()
        };
        assert!(look(&with_seal(secret(&planted, Some(&key), Some(&other), None)), None).tampered);
        // A rotation time moved into the future, so that the key never rotates.
        let frozen = Book { rotated_at: Some(now() + jiff::SignedDuration::from_hours(24 * 365)), ..b.clone() };
        assert!(look(&with_seal(secret(&frozen, Some(&key), None, None)), None).tampered);
    }

    #[test]
    fn impossible_bookkeeping_is_tampering_even_under_a_valid_seal() {
        let key = generate(&Default::default(), &mut OsRandom).expect("key");
        let prev = generate(&Default::default(), &mut OsRandom).expect("key");
        let b = issued(&key);
        let future = Book { rotated_at: Some(now() + jiff::SignedDuration::from_hours(1)), ..b.clone() };
        assert!(look(&secret(&future, Some(&key), None, Some(&sealer())), None).tampered, "rotated in the future");
        let long = Book {
            previous_key_id: Some(key_id(&prev)),
            previous_expires_at: Some(now() + jiff::SignedDuration::from_hours(2)),
            ..b.clone()
        };
        assert!(look(&secret(&long, Some(&key), Some(&prev), Some(&sealer())), None).tampered, "grace beyond the spec");
        // The same end, reported by the status (which only Keyward writes): the spec's grace period was shortened
        // since the rotation, a spec change and not an edit.
        let shortened = look(&secret(&long, Some(&key), Some(&prev), Some(&sealer())), Some(&long));
        assert!(!shortened.tampered, "a grace period shortened after the rotation");
        let other_end = Book { previous_expires_at: Some(now() + jiff::SignedDuration::from_hours(3)), ..long.clone() };
        assert!(look(&secret(&long, Some(&key), Some(&prev), Some(&sealer())), Some(&other_end)).tampered);
        let missing = Book { previous_key_id: Some(key_id(&prev)), ..b.clone() };
        assert!(look(&secret(&missing, Some(&key), None, Some(&sealer())), None).tampered, "previous key id, no key");
    }

    #[test]
    fn an_entry_the_shape_does_not_name_is_tampering() {
        let key = generate(&Default::default(), &mut OsRandom).expect("key");
        let b = issued(&key);
        let mut extra = secret(&b, Some(&key), None, Some(&sealer()));
        extra.data.get_or_insert_default().insert("client-x".into(), ByteString(b"chosen".to_vec()));
        assert!(look(&extra, None).tampered, "a planted credential for a gateway that reads every entry");
        let mut wrong_id = secret(&b, Some(&key), None, Some(&sealer()));
        wrong_id.data.get_or_insert_default().insert(book::DATA_KEY_ID.into(), ByteString(b"chosen".to_vec()));
        assert!(look(&wrong_id, None).tampered, "a key-id entry that is not the fingerprint");
        let mut right_id = secret(&b, Some(&key), None, Some(&sealer()));
        let id = key_id(&key).into_bytes();
        right_id.data.get_or_insert_default().insert(book::DATA_KEY_ID.into(), ByteString(id));
        assert!(!look(&right_id, None).tampered);
    }

    /// The previous key's own Secret as Keyward writes it: Kong's shape, sealed under its own name.
    fn own_previous(b: &Book, key: &KeyMaterial, name: &str) -> Secret {
        use super::super::layout::{Entries, Layout, SHAPE};
        let entries = Entries { current: "key".into(), previous: "previous-key".into(), key_id: None, own: true };
        let layout = Layout::written(entries);
        let mut annotations = b.to_annotations();
        let sealed = Sealed { uid: UID, secret: name, book: b, current: None, previous: Some(key) };
        annotations.insert(SEAL.into(), sealer().seal(&sealed));
        annotations.insert(SHAPE.into(), layout.shape());
        let mut s =
            Secret { data: Some(super::super::secret::previous_data(&layout.entries, key)), ..Secret::default() };
        s.metadata.annotations = Some(annotations);
        s
    }

    #[test]
    fn the_previous_key_secret_is_trusted_only_as_written() {
        use super::super::observe::inspect_previous;
        let key = generate(&Default::default(), &mut OsRandom).expect("key");
        let prev = generate(&Default::default(), &mut OsRandom).expect("key");
        let other = generate(&Default::default(), &mut OsRandom).expect("key");
        let b = Book {
            previous_key_id: Some(key_id(&prev)),
            previous_expires_at: Some(now() + jiff::SignedDuration::from_mins(30)),
            ..issued(&key)
        };
        let name = "s-previous";
        assert!(inspect_previous(&sealer(), (UID, name), &own_previous(&b, &prev, name)));
        // Another key, its fingerprint annotation updated to match: the seal does not verify.
        let forged = Book { previous_key_id: Some(key_id(&other)), ..b.clone() };
        let mut edited = own_previous(&forged, &other, name);
        let good_seal = own_previous(&b, &prev, name).metadata.annotations.and_then(|mut a| a.remove(SEAL));
        edited.metadata.annotations.get_or_insert_default().insert(SEAL.into(), good_seal.expect("seal"));
        assert!(!inspect_previous(&sealer(), (UID, name), &edited), "a key of someone's choosing");
        // A second entry; a Secret sealed for another name (copied from elsewhere); another ApiKey's.
        let mut extra = own_previous(&b, &prev, name);
        extra.data.get_or_insert_default().insert("more".into(), ByteString(b"x".to_vec()));
        assert!(!inspect_previous(&sealer(), (UID, name), &extra), "an extra entry");
        assert!(!inspect_previous(&sealer(), (UID, name), &own_previous(&b, &prev, "s")), "sealed for another name");
        assert!(!inspect_previous(&sealer(), ("v", name), &own_previous(&b, &prev, name)), "another ApiKey's");
        // Without a previous key in its bookkeeping it is no previous-key Secret at all.
        assert!(!inspect_previous(&sealer(), (UID, name), &own_previous(&issued(&key), &prev, name)));
    }

    #[test]
    fn an_unsealed_secret_is_trusted_only_as_the_status_reports_it_and_then_sealed() {
        let key = generate(&Default::default(), &mut OsRandom).expect("key");
        let b = issued(&key);
        let legacy = secret(&b, Some(&key), None, None);
        assert_eq!(look(&legacy, Some(&b)), Inspection { tampered: false, reseal: true });
        assert!(look(&legacy, None).tampered, "no status to vouch for it");
        let moved = Book { rotation_count: 9, ..b.clone() };
        assert!(look(&legacy, Some(&moved)).tampered, "the status says otherwise");
        let rotated_seal = Sealer::new(vec![4; 32], Some(vec![3; 32])).expect("keys");
        let old = secret(&b, Some(&key), None, Some(&sealer()));
        let found = inspect(&rotated_seal, (UID, NAME), &old, None, None, now());
        assert_eq!(found, Inspection { tampered: false, reseal: true }, "sealed by the previous seal key");
    }
}
