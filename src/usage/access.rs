//! What a usage source needs beyond its address: credentials, TLS settings and extra headers. The controller reads
//! them from the policy's spec and the Secrets and ConfigMaps it names; this module turns them into request headers
//! and, when the TLS settings differ from the defaults, an HTTP client of the source's own (fenced like the shared
//! one). Credentials live in zeroized buffers, go out as sensitive headers, and are never shown: `Debug` redacts them,
//! and no error quotes them.

use std::sync::Arc;

use base64::Engine as _;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use zeroize::Zeroizing;

use super::SourceError;

/// A credential sent in the `Authorization` header.
pub enum Credential {
    /// `Authorization: Bearer <token>`.
    Bearer(Zeroizing<String>),
    /// `Authorization: Basic <base64(username:password)>`.
    Basic { username: Zeroizing<String>, password: Zeroizing<String> },
}

/// TLS settings that differ from the defaults (the system's roots, the address's host name).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tls {
    /// PEM CA bundle that replaces the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// The name the server's certificate must carry instead of the address's host.
    pub server_name: Option<String>,
    /// Skip verification entirely (reported as a warning condition by the controller).
    pub insecure_skip_verify: bool,
}

impl Tls {
    /// Whether these are the defaults, served by the shared client.
    pub fn is_default(&self) -> bool {
        *self == Tls::default()
    }
}

/// Everything a source sends besides its query.
#[derive(Default)]
pub struct Access {
    pub credential: Option<Credential>,
    pub tls: Tls,
    /// Extra headers as the spec names them.
    pub headers: Vec<(String, String)>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let credential = match &self.credential {
            None => "none",
            Some(Credential::Bearer(_)) => "bearer (redacted)",
            Some(Credential::Basic { .. }) => "basic (redacted)",
        };
        f.debug_struct("Access")
            .field("credential", &credential)
            .field("custom_ca", &self.tls.ca_pem.is_some())
            .field("server_name", &self.tls.server_name)
            .field("insecure_skip_verify", &self.tls.insecure_skip_verify)
            .field("headers", &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>())
            .finish()
    }
}

impl Access {
    /// The headers of every request: the extra ones, then `Authorization` (marked sensitive, so the HTTP stack never
    /// logs it). A value a header cannot carry is refused without quoting it.
    pub fn header_map(&self) -> Result<HeaderMap, SourceError> {
        let invalid = |what: &str| SourceError::CredentialsUnavailable {
            what: what.to_owned(),
            detail: "the value cannot be sent in an HTTP header (control characters or non-ASCII)".to_owned(),
        };
        let mut map = HeaderMap::new();
        for (name, value) in &self.headers {
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid(&format!("header {name}")))?;
            let value = HeaderValue::from_str(value).map_err(|_| invalid(&format!("header {name}")))?;
            map.append(header, value);
        }
        if let Some(credential) = &self.credential {
            let text = Zeroizing::new(match credential {
                Credential::Bearer(token) => format!("Bearer {}", token.trim()),
                Credential::Basic { username, password } => {
                    let pair = Zeroizing::new(format!("{}:{}", username.as_str(), password.as_str()));
                    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair.as_bytes()))
                }
            });
            let mut value = HeaderValue::from_str(&text).map_err(|_| invalid("the credential"))?;
            value.set_sensitive(true);
            map.insert(AUTHORIZATION, value);
        }
        Ok(map)
    }
}

/// The certificates of a PEM bundle; an error when it holds none.
pub fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, SourceError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(SourceError::InvalidTls { detail: "the CA bundle holds no PEM certificate".to_owned() });
    }
    Ok(certs)
}

/// A rustls configuration that verifies the server's certificate against `roots` (the CA bundle, else the system's
/// roots) for the name `server_name`, whatever host the address names.
pub fn named_config(ca_pem: Option<&[u8]>, server_name: &str) -> Result<rustls::ClientConfig, SourceError> {
    let invalid = |detail: String| SourceError::InvalidTls { detail };
    let mut roots = rustls::RootCertStore::empty();
    let certs = match ca_pem {
        Some(pem) => certificates(pem)?,
        None => rustls_native_certs::load_native_certs().certs,
    };
    for cert in certs {
        roots.add(cert).map_err(|e| invalid(format!("a CA certificate cannot be used: {e}")))?;
    }
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|_| invalid(format!("serverName {server_name:?} is not a DNS name")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| invalid(format!("no usable CA certificate: {e}")))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NamedVerifier { inner, name }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Verifies as WebPKI does, for a fixed name instead of the one the connection was opened for.
#[derive(Debug)]
struct NamedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for NamedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_become_a_sensitive_authorization_header_and_debug_hides_them() {
        let access = Access {
            credential: Some(Credential::Basic {
                username: Zeroizing::new("reader".into()),
                password: Zeroizing::new("s3cret-pass".into()),
            }),
            headers: vec![("X-Scope-OrgID".into(), "team-a".into())],
            ..Access::default()
        };
        let map = access.header_map().expect("headers");
        let auth = map.get(AUTHORIZATION).expect("authorization");
        assert!(auth.is_sensitive());
        assert_eq!(auth, "Basic cmVhZGVyOnMzY3JldC1wYXNz");
        assert_eq!(map.get("x-scope-orgid").expect("tenant header"), "team-a");
        let shown = format!("{access:?}");
        assert!(!shown.contains("s3cret") && !shown.contains("reader"), "{shown}");
        let bearer =
            Access { credential: Some(Credential::Bearer(Zeroizing::new("tok-123\n".into()))), ..Access::default() };
        assert_eq!(bearer.header_map().expect("headers").get(AUTHORIZATION).expect("auth"), "Bearer tok-123");
    }

    #[test]
    fn a_value_no_header_can_carry_is_refused_without_quoting_it() {
        let access =
            Access { credential: Some(Credential::Bearer(Zeroizing::new("a\u{1}secret".into()))), ..Access::default() };
        let err = access.header_map().expect_err("refused").to_string();
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn a_bundle_without_certificates_is_refused() {
        assert!(matches!(certificates(b"not a pem"), Err(SourceError::InvalidTls { .. })));
        assert!(matches!(named_config(Some(b"x"), "p.example"), Err(SourceError::InvalidTls { .. })));
    }
}
