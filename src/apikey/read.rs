//! What a reconcile reads of the Secret: which read to make, the whole Secret at a known version, its current key.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;

use super::Error;
use super::book;
use super::plan::SecretState;
use crate::api::ApiKey;
use crate::api::apikey::ROTATE_ANNOTATION;
use crate::keys::KeyMaterial;

/// The last rotation request the Secret records as answered, for logs.
pub(super) fn state_request(state: &SecretState) -> Option<&str> {
    match state {
        SecretState::Managed { book, .. } => book.rotate_request.as_deref(),
        _ => None,
    }
}

/// Whether the status says a write that needs the Secret's data is due now: a rotation (scheduled or requested and
/// not yet answered) or the end of a grace period. Only a hint for which read to make: the decision is taken on
/// what the read returns.
pub(super) fn data_due(apikey: &ApiKey, now: Timestamp) -> bool {
    let Some(status) = apikey.status.as_ref() else { return false };
    let past = |t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| t.is_some_and(|t| t.0 <= now);
    let requested = apikey
        .annotations()
        .get(ROTATE_ANNOTATION)
        .is_some_and(|r| status.key_id.is_some() && status.last_rotate_request.as_ref() != Some(r));
    past(status.next_rotation_time.as_ref()) || past(status.previous_key_expires_at.as_ref()) || requested
}

/// The whole Secret (with data), provided it is still at `version`; otherwise it changed since it was looked at
/// (e.g. another instance rotated) and the reconcile must decide again.
pub(super) async fn read_at_version(
    secrets: &Api<Secret>,
    ns: &str,
    name: &str,
    version: Option<&str>,
) -> Result<Secret, Error> {
    let full = secrets.get(name).await.map_err(|source| Error::Secret {
        op: "read",
        ns: ns.to_string(),
        name: name.to_string(),
        source,
    })?;
    if full.metadata.resource_version.as_deref() != version {
        return Err(Error::Stale { ns: ns.to_string(), name: name.to_string() });
    }
    Ok(full)
}

/// The current key in a Secret's data, if it is readable.
pub(super) fn current_key(s: &Secret) -> Option<KeyMaterial> {
    let bytes = s.data.as_ref()?.get(book::DATA_KEY)?;
    KeyMaterial::from_secret_bytes(bytes.0.clone()).ok()
}
