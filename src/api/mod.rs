//! The Keyward API: the `ApiKey` and `RateLimitPolicy` custom resources (group `keyward.dev`, version
//! `v1alpha1`), their defaults, the duration syntax they share, and the CRDs generated from them.
//!
//! Validation that the API server can enforce lives in the schema (bounds, enums, patterns, CEL rules), so a bad
//! manifest is rejected at `kubectl apply` with the field named; the operator re-checks what the schema cannot.

pub mod apikey;
pub mod bounds;
pub mod common;
pub mod duration;
pub mod ratelimit;
pub mod reference;

pub use apikey::{ApiKey, ApiKeySpec, ApiKeyStatus};
pub use ratelimit::{RateLimitPolicy, RateLimitPolicySpec, RateLimitPolicyStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every Keyward resource.
pub const GROUP: &str = "keyward.dev";

/// Every CRD Keyward serves, with the file name it has under `crds/`.
pub fn crds() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![("keyward.dev_apikeys.yaml", ApiKey::crd()), ("keyward.dev_ratelimitpolicies.yaml", RateLimitPolicy::crd())]
}

/// One CRD as the YAML document written to `crds/` and printed by `keyward crd`.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_norway::Error> {
    serde_norway::to_string(crd)
}

/// Every CRD as one multi-document YAML stream.
pub fn all_crds_yaml() -> Result<String, serde_norway::Error> {
    let mut out = String::new();
    for (_, crd) in crds() {
        out.push_str("---\n");
        out.push_str(&crd_yaml(&crd)?);
    }
    Ok(out)
}
