//! Building the Secret Keyward writes for an ApiKey: pure, from the ApiKey, the bookkeeping and the key material.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

use super::book::{self, Book};
use crate::api::ApiKey;
use crate::keys::KeyMaterial;

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

/// The whole Secret for `apikey`: owner reference, labels, annotations and data. `resource_version` makes the
/// write conditional on the Secret not having changed since it was read.
pub fn build(
    apikey: &ApiKey,
    name: &str,
    book: &Book,
    material: &Material<'_>,
    resource_version: Option<String>,
) -> Secret {
    let mut labels = BTreeMap::new();
    let mut annotations = BTreeMap::new();
    if let Some(t) = &apikey.spec.secret_template {
        labels.extend(t.labels.clone());
        annotations.extend(t.annotations.clone());
    }
    // Keyward's own labels and annotations win over the template.
    labels.insert(book::MANAGED_BY_LABEL.to_string(), book::MANAGED_BY.to_string());
    labels.insert(book::APIKEY_LABEL.to_string(), apikey.meta().name.clone().unwrap_or_default());
    annotations.extend(book.to_annotations());

    let mut data = BTreeMap::new();
    if let Some(k) = material.current {
        data.insert(book::DATA_KEY.to_string(), ByteString(k.as_bytes().to_vec()));
        if let Some(id) = &book.key_id {
            data.insert(book::DATA_KEY_ID.to_string(), ByteString(id.as_bytes().to_vec()));
        }
    }
    if let Some(p) = material.previous {
        data.insert(book::DATA_PREVIOUS_KEY.to_string(), ByteString(p.as_bytes().to_vec()));
    }
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
