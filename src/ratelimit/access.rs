//! Reads what a Prometheus source needs from the policy's namespace: the credentials its `auth` names (Secrets),
//! its CA bundle (a ConfigMap or Secret) and its headers, into a [`usage::access::Access`]. A missing or unreadable
//! object is a [`SourceError::CredentialsUnavailable`] that names the object and key, never the value; the cycle
//! reports it in `UsageAvailable=False` and tries again at the next poll (no faster).
//!
//! Credentials are read again at most every [`REFRESH`], and at once after the server refused them, so a rotated
//! Secret is picked up without a watch on every Secret of every tenant.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use zeroize::{Zeroize, Zeroizing};

use crate::api::ratelimit::{PrometheusSource, SecretKeyRef, UsageSource};
use crate::usage::SourceError;
use crate::usage::access::{Access, Credential, Tls};

/// How long credentials read from Secrets are used before they are read again.
pub const REFRESH: Duration = Duration::from_secs(60);

/// Whether the source reads anything from the namespace (so it must be refreshed now and then).
pub fn reads_objects(spec: &UsageSource) -> bool {
    spec.prometheus.as_ref().is_some_and(|p| p.auth.is_some() || p.tls.as_ref().is_some_and(|t| t.ca.is_some()))
}

/// Everything `p` sends besides its query, read from namespace `ns`.
pub async fn resolve(client: &kube::Client, ns: &str, p: &PrometheusSource) -> Result<Access, SourceError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let credential = match &p.auth {
        None => None,
        Some(auth) => match (&auth.bearer_token, &auth.basic) {
            (Some(token), _) => Some(Credential::Bearer(secret_text(&secrets, token).await?)),
            (None, Some(basic)) => Some(Credential::Basic {
                username: secret_text(&secrets, &basic.username).await?,
                password: secret_text(&secrets, &basic.password).await?,
            }),
            (None, None) => None,
        },
    };
    let tls = match &p.tls {
        None => Tls::default(),
        Some(t) => Tls {
            ca_pem: match &t.ca {
                None => None,
                Some(ca) => Some(ca_bundle(client, ns, &secrets, ca).await?),
            },
            server_name: t.server_name.clone(),
            insecure_skip_verify: t.insecure_skip_verify == Some(true),
        },
    };
    let headers = p.headers.iter().map(|h| (h.name.clone(), h.value.clone())).collect();
    Ok(Access { credential, tls, headers })
}

/// The CA bundle a `tls.ca` names.
async fn ca_bundle(
    client: &kube::Client,
    ns: &str,
    secrets: &Api<Secret>,
    ca: &crate::api::ratelimit::CaSource,
) -> Result<Vec<u8>, SourceError> {
    if let Some(r) = &ca.secret_key_ref {
        return Ok(secret_text(secrets, r).await?.as_bytes().to_vec());
    }
    let Some(r) = &ca.config_map_key_ref else {
        return Err(SourceError::InvalidTls { detail: "ca names neither a ConfigMap nor a Secret".to_owned() });
    };
    let what = format!("ConfigMap {} key {}", r.name, r.key);
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns).get(&r.name).await.map_err(|e| unavailable(&what, &e))?;
    let text = cm.data.as_ref().and_then(|d| d.get(&r.key)).map(|v| v.as_bytes().to_vec());
    let binary = || cm.binary_data.as_ref().and_then(|d| d.get(&r.key)).map(|v| v.0.clone());
    text.or_else(binary).ok_or_else(|| SourceError::CredentialsUnavailable { what, detail: "no such key".to_owned() })
}

/// The UTF-8 text at a Secret key, trimmed of a trailing newline; the Secret's bytes are wiped once read.
async fn secret_text(secrets: &Api<Secret>, r: &SecretKeyRef) -> Result<Zeroizing<String>, SourceError> {
    let what = format!("Secret {} key {}", r.name, r.key);
    let mut secret = secrets.get(&r.name).await.map_err(|e| unavailable(&what, &e))?;
    let value = secret.data.as_ref().and_then(|d| d.get(&r.key)).map(|v| String::from_utf8(v.0.clone()));
    for bytes in secret.data.iter_mut().flat_map(|d| d.values_mut()) {
        bytes.0.zeroize();
    }
    match value {
        Some(Ok(text)) => {
            let text = Zeroizing::new(text);
            Ok(Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_owned()))
        }
        Some(Err(e)) => {
            let mut bytes = e.into_bytes();
            bytes.zeroize();
            Err(SourceError::CredentialsUnavailable { what, detail: "the value is not UTF-8 text".to_owned() })
        }
        None => Err(SourceError::CredentialsUnavailable { what, detail: "no such key".to_owned() }),
    }
}

/// Why an object could not be read, in words a tenant can act on.
fn unavailable(what: &str, err: &kube::Error) -> SourceError {
    let detail = match err {
        kube::Error::Api(s) if s.code == 404 => "not found in the policy's namespace".to_owned(),
        kube::Error::Api(s) if s.code == 403 => "Keyward is not allowed to read it (RBAC)".to_owned(),
        other => crate::runtime::describe(other),
    };
    SourceError::CredentialsUnavailable { what: what.to_owned(), detail }
}
