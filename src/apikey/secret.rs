//! Building the Secret Keyward writes for an ApiKey: pure, from the ApiKey, the bookkeeping and the key material.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

use super::book::{self, Book};
use super::layout::{Entries, Layout};
use crate::api::{ApiKey, ApiKeySpec};
use crate::keys::KeyMaterial;

/// The Secret's name: `spec.secretName`, defaulting to the ApiKey's name.
pub fn secret_name<'a>(spec: &'a ApiKeySpec, apikey_name: &'a str) -> &'a str {
    spec.secret_name.as_deref().unwrap_or(apikey_name)
}

/// Whether `owners` names `apikey` as controller.
pub fn controlled_by(owners: Option<&Vec<OwnerReference>>, apikey: &ApiKey) -> bool {
    let uid = apikey.meta().uid.as_deref();
    owners.is_some_and(|os| os.iter().any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid))
}

/// The key material a Secret holds after a write.
pub struct Material<'a> {
    pub current: Option<&'a KeyMaterial>,
    pub previous: Option<&'a KeyMaterial>,
}

/// The data of the ApiKey's Secret in the shape `entries`: the current key, the previous key when it lives in the
/// same Secret, and the fingerprint if the shape has an entry for it. Nothing else.
pub fn main_data(entries: &Entries, book: &Book, material: &Material<'_>) -> BTreeMap<String, ByteString> {
    let mut data = BTreeMap::new();
    if let Some(k) = material.current {
        data.insert(entries.current.clone(), ByteString(k.as_bytes().to_vec()));
        if let (Some(entry), Some(id)) = (&entries.key_id, &book.key_id) {
            data.insert(entry.clone(), ByteString(id.as_bytes().to_vec()));
        }
    }
    if let Some(p) = material.previous.filter(|_| !entries.own) {
        data.insert(entries.previous.clone(), ByteString(p.as_bytes().to_vec()));
    }
    data
}

/// The data of the previous key's own Secret: that key alone, under the current key's entry name (a gateway that
/// reads one key per Secret reads it the same way).
pub fn previous_data(entries: &Entries, previous: &KeyMaterial) -> BTreeMap<String, ByteString> {
    [(entries.current.clone(), ByteString(previous.as_bytes().to_vec()))].into()
}

/// A whole Secret of `apikey` in `layout`: owner reference, labels, annotations (the bookkeeping, its seal and the
/// shape) and `data`. `resource_version` makes the write conditional on the Secret not having changed since it was
/// read.
pub fn build(
    apikey: &ApiKey,
    (layout, name): (&Layout, &str),
    (book, seal): (&Book, &str),
    data: BTreeMap<String, ByteString>,
    resource_version: Option<String>,
) -> Secret {
    let mut labels = layout.labels.clone();
    let mut annotations = layout.annotations.clone();
    // Keyward's own labels and annotations win over the template.
    labels.insert(book::MANAGED_BY_LABEL.to_string(), book::MANAGED_BY.to_string());
    labels.insert(book::APIKEY_LABEL.to_string(), apikey.meta().name.clone().unwrap_or_default());
    annotations.extend(book.to_annotations());
    annotations.insert(super::seal::SEAL.to_string(), seal.to_string());
    annotations.insert(super::layout::SHAPE.to_string(), layout.shape());
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: apikey.meta().namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: apikey.controller_owner_ref(&()).map(|o| vec![o]),
            resource_version,
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_string()),
        data: Some(data),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ApiKeySpec;
    use crate::api::apikey::SecretTemplate;
    use crate::keys::{OsRandom, generate, key_id};

    fn apikey() -> ApiKey {
        let mut a = ApiKey::new(
            "svc",
            ApiKeySpec {
                secret_template: Some(SecretTemplate {
                    labels: [
                        ("gw".to_string(), "yes".to_string()),
                        (book::MANAGED_BY_LABEL.to_string(), "someone".to_string()),
                    ]
                    .into(),
                    annotations: [(book::KEY_ID.to_string(), "forged".to_string())].into(),
                    ..SecretTemplate::default()
                }),
                ..ApiKeySpec::default()
            },
        );
        a.metadata.namespace = Some("ns".into());
        a.metadata.uid = Some("uid-1".into());
        a
    }

    fn layout_of(a: &ApiKey) -> Layout {
        Layout::resolve(&a.spec, "svc", "svc-key").expect("valid")
    }

    #[test]
    fn secret_holds_exactly_what_the_design_says() {
        let a = apikey();
        let key = generate(&Default::default(), &mut OsRandom).expect("key");
        let prev = generate(&Default::default(), &mut OsRandom).expect("key");
        let book = Book { key_id: Some(key_id(&key)), rotation_count: 2, ..Book::default() };
        let layout = layout_of(&a);
        let data = main_data(&layout.entries, &book, &Material { current: Some(&key), previous: Some(&prev) });
        let s = build(&a, (&layout, "svc-key"), (&book, "seal"), data, Some("7".into()));
        let labels = s.metadata.labels.as_ref().expect("labels");
        assert_eq!(labels.get("gw").map(String::as_str), Some("yes"), "template labels are copied");
        assert_eq!(labels.get(book::MANAGED_BY_LABEL).map(String::as_str), Some("keyward"), "ours win");
        assert_eq!(labels.get(book::APIKEY_LABEL).map(String::as_str), Some("svc"));
        let ann = s.metadata.annotations.as_ref().expect("annotations");
        assert_eq!(ann.get(book::KEY_ID), book.key_id.as_ref(), "the template cannot forge the fingerprint");
        let data = s.data.as_ref().expect("data");
        assert_eq!(data.get(book::DATA_KEY).map(|b| b.0.as_slice()), Some(key.as_bytes()));
        assert_eq!(data.get(book::DATA_PREVIOUS_KEY).map(|b| b.0.as_slice()), Some(prev.as_bytes()));
        assert_eq!(data.get(book::DATA_KEY_ID).map(|b| b.0.clone()), book.key_id.map(String::into_bytes));
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
        assert_eq!(ann.get(super::super::layout::SHAPE), Some(&layout.shape()));
        assert_eq!(s.metadata.resource_version.as_deref(), Some("7"));
        let owner = &s.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("ApiKey", "uid-1", Some(true)));
        assert!(controlled_by(s.metadata.owner_references.as_ref(), &a));
    }

    #[test]
    fn removed_material_leaves_no_data() {
        let a = apikey();
        let layout = layout_of(&a);
        let data = main_data(&layout.entries, &Book::default(), &Material { current: None, previous: None });
        let s = build(&a, (&layout, "svc"), (&Book::default(), "seal"), data, None);
        assert!(s.data.as_ref().is_some_and(BTreeMap::is_empty));
    }

    #[test]
    fn own_secret_keeps_the_previous_key_out_of_the_main_secret() {
        let key = generate(&Default::default(), &mut OsRandom).expect("key");
        let prev = generate(&Default::default(), &mut OsRandom).expect("key");
        let entries =
            super::super::layout::Entries { current: "key".into(), previous: "old".into(), key_id: None, own: true };
        let book = Book { key_id: Some(key_id(&key)), ..Book::default() };
        let data = main_data(&entries, &book, &Material { current: Some(&key), previous: Some(&prev) });
        assert_eq!(data.keys().collect::<Vec<_>>(), ["key"], "only the current key");
        let own = previous_data(&entries, &prev);
        assert_eq!(own.get("key").map(|b| b.0.as_slice()), Some(prev.as_bytes()), "under the current entry name");
        assert_eq!(own.len(), 1);
    }

    #[test]
    fn another_owner_is_not_us() {
        let a = apikey();
        let other = OwnerReference { controller: Some(true), uid: "uid-2".into(), ..OwnerReference::default() };
        assert!(!controlled_by(Some(&vec![other]), &a));
        let not_controller = OwnerReference { controller: None, uid: "uid-1".into(), ..OwnerReference::default() };
        assert!(!controlled_by(Some(&vec![not_controller]), &a));
        assert!(!controlled_by(None, &a));
    }
}
