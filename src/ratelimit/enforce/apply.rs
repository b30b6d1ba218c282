//! The only requests of the enforcement step: read, apply (server-side, forced, with Keyward's field manager, so
//! hand edits of the rendered fields are reverted) and delete a BackendTrafficPolicy.

use std::time::Duration;

use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::Value;

use super::{Btp, MANAGER, plan::reason};

/// How long a read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The object of that name, if any.
pub async fn get(client: &kube::Client, ns: &str, name: &str) -> Result<Option<Btp>, kube::Error> {
    let api: Api<Btp> = Api::namespaced(client.clone(), ns);
    match tokio::time::timeout(READ_TIMEOUT, api.get_opt(name)).await {
        Ok(result) => result,
        Err(_) => Err(kube::Error::Service(Box::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the API server did not answer within {READ_TIMEOUT:?}"),
        )))),
    }
}

/// Applies `body` as Keyward's field manager, forced: fields Keyward renders are Keyward's.
pub async fn apply(client: &kube::Client, ns: &str, name: &str, body: &Value) -> Result<(), kube::Error> {
    let api: Api<Btp> = Api::namespaced(client.clone(), ns);
    let pp = PatchParams::apply(MANAGER).force();
    crate::runtime::within_timeout(api.patch(name, &pp, &Patch::Apply(body))).await.map(|_| ())
}

/// Deletes the object of that name if it still has `uid` (so an object someone created since is never deleted).
pub async fn delete(client: &kube::Client, ns: &str, name: &str, uid: &str) -> Result<(), kube::Error> {
    let api: Api<Btp> = Api::namespaced(client.clone(), ns);
    let dp = DeleteParams {
        preconditions: Some(Preconditions { uid: Some(uid.to_string()), resource_version: None }),
        ..DeleteParams::default()
    };
    match crate::runtime::within_timeout(api.delete(name, &dp)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// The `Enforced` reason of a failed apply.
pub fn reason(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(s) if s.code == 422 || s.code == 400 => reason::REJECTED,
        kube::Error::Api(s) if s.code == 404 => reason::GATEWAY_CRD_MISSING,
        _ => reason::APPLY_FAILED,
    }
}
