//! Installing and checking Keyward's CRDs on a cluster.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};

use crate::api;

/// Field manager for CRD installs done by `keyward dev` and the tests (the Helm chart installs them in production).
const MANAGER: &str = "keyward/crds";

/// Why the CRDs are not usable.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error(
        "the Keyward CRDs are not installed or not established: {missing}. Install them with \
         `keyward crd | kubectl apply --server-side -f -` (or the files in crds/, or the Helm chart) and start again"
    )]
    Missing { missing: String },
    #[error("cannot {op} CRD {name}: {source}")]
    Api { op: &'static str, name: String, source: kube::Error },
    #[error("CRD {0} did not become Established within 60s")]
    NotEstablished(String),
}

fn crd_name(crd: &CustomResourceDefinition) -> String {
    crd.metadata.name.clone().unwrap_or_default()
}

fn is_established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"))
}

/// Applies every CRD with server-side apply and waits until each is Established.
pub async fn install(client: kube::Client) -> Result<(), CrdError> {
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    for (_, crd) in api::crds() {
        let name = crd_name(&crd);
        crds.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&crd))
            .await
            .map_err(|source| CrdError::Api { op: "apply", name: name.clone(), source })?;
    }
    for (_, crd) in api::crds() {
        let name = crd_name(&crd);
        let established = await_condition(crds.clone(), &name, conditions::is_crd_established());
        match tokio::time::timeout(Duration::from_secs(60), established).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(CrdError::Api { op: "watch", name, source: kube::Error::Service(Box::new(e)) });
            }
            Err(_) => return Err(CrdError::NotEstablished(name)),
        }
    }
    Ok(())
}

/// Checks that every CRD Keyward needs is installed and Established.
pub async fn check(client: kube::Client) -> Result<(), CrdError> {
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    let mut missing = Vec::new();
    for (_, crd) in api::crds() {
        let name = crd_name(&crd);
        let found =
            crds.get_opt(&name).await.map_err(|source| CrdError::Api { op: "read", name: name.clone(), source })?;
        if !found.as_ref().is_some_and(is_established) {
            missing.push(name);
        }
    }
    if missing.is_empty() { Ok(()) } else { Err(CrdError::Missing { missing: missing.join(", ") }) }
}
