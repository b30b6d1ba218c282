//! The user commands beside the operator: `keyward rotate` (request a rotation) and `keyward verify-format` (check a
//! key offline).

use kube::api::{Api, Patch, PatchParams};

use crate::api::ApiKey;
use crate::api::apikey::ROTATE_ANNOTATION;

/// Sets `keyward.dev/rotate` on an ApiKey to a new value (the current time), which rotates it once.
pub async fn rotate(client: kube::Client, namespace: &str, name: &str) -> Result<String, kube::Error> {
    let value = jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({"metadata": {"annotations": {ROTATE_ANNOTATION: value}}});
    Api::<ApiKey>::namespaced(client, namespace).patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(value)
}

/// Checks a key's checksum (and prefix, if given). The error says why, without echoing the key.
pub fn verify_format(key: &str, prefix: Option<&str>) -> Result<(), String> {
    if let Some(p) = prefix
        && !key.starts_with(p)
    {
        return Err(format!("the key does not start with the prefix {p:?}"));
    }
    if crate::keys::verify_checksum(key) { Ok(()) } else { Err("the checksum does not match".to_string()) }
}
