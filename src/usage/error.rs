//! Why a poll yielded no rates: [`SourceError`], whose reason and message become `UsageAvailable=False`.
//!
//! Messages are fixed texts with numbers (status codes, line numbers, limits) and the endpoint as configured (with
//! any `user:password@` redacted). Not one byte of a source's answer is in them: the answer belongs to whoever runs
//! the source, and status is readable by every tenant of the namespace. Details go to the debug log only.

use std::time::Duration;

/// Why a poll yielded no rates.
///
/// Every `url` is already redacted (see [`super::redact_url`]); for Prometheus it is the server's address, not the
/// query URL.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SourceError {
    /// The endpoint could not be reached: name resolution, connection refused or reset, TLS. `detail` is the HTTP
    /// or TLS library's description, never bytes of an answer.
    #[error("cannot reach {url}: {detail}")]
    Unreachable { url: String, detail: String },

    /// The operator's source policy forbids the address `host` resolves to (or is).
    #[error(
        "{url}: the address of {host} is forbidden for usage sources by the operator's policy (link-local, \
         loopback and unspecified addresses, and the admin's --source-allow/--source-deny lists)"
    )]
    Forbidden { url: String, host: String },

    /// The endpoint, the body included, did not answer in time.
    #[error("{url} timed out after {timeout:?}")]
    Timeout { url: String, timeout: Duration },

    /// The endpoint answered with a redirect, which is never followed.
    #[error("{url} answered HTTP {status}, a redirect; redirects are not followed: use the final address")]
    Redirect { url: String, status: u16 },

    /// The endpoint answered with a status other than 2xx (and, for Prometheus, without an API error body).
    #[error("{url} answered HTTP {status}")]
    HttpStatus { url: String, status: u16 },

    /// Prometheus answered with an API error, e.g. `bad_data` for a PromQL syntax error. Its message is not kept
    /// (it may quote anything); the operator logs it at debug level.
    #[error("Prometheus at {url} rejected the query (HTTP {status}, {error_type})")]
    Query { url: String, status: u16, error_type: &'static str },

    /// The query ran but does not return an instant vector (e.g. a scalar, or a range vector `x[1m]`).
    #[error(
        "the query to Prometheus at {url} returned a {result_type}; it must return an instant vector by the key \
         label, e.g. `sum by (api_key) (rate(gateway_requests_total[1m]))`"
    )]
    NotAVector { url: String, result_type: &'static str },

    /// The response could not be understood: not JSON of the Prometheus API, not the text format, not UTF-8.
    /// `detail` is a fixed text with at most a line number.
    #[error("invalid response from {url}: {detail}")]
    InvalidResponse { url: String, detail: String },

    /// The response body is larger than the cap (`--source-max-body-bytes`).
    #[error("the response from {url} is larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },

    /// The poll read more series than the cap (`--source-max-series`).
    #[error("{url} sent more than {limit} series")]
    TooManySeries { url: String, limit: usize },

    /// The usage has more distinct keys than the cap (`--source-max-keys`).
    #[error("the usage read from {url} has more than {limit} distinct keys")]
    TooManyKeys { url: String, limit: usize },

    /// The configured URL cannot be used.
    #[error("invalid URL {url}: {detail}")]
    InvalidUrl { url: String, detail: String },

    /// A scrape source has only a baseline: counters become rates from the next successful poll on.
    #[error("read the counters of {endpoints} endpoint(s) once; rates are known from the next poll on")]
    WarmingUp { endpoints: usize },

    /// The source answered but no series carries the key label. Sources return an empty rates map for that; this
    /// variant is for the caller, which decides that empty means missing data rather than zero traffic.
    #[error(
        "the source answered, but no series carries the key label: check the query or metric name and usage.keyLabel"
    )]
    NoData,

    /// A credential or CA the source needs cannot be read: `what` names the object and key (never its value).
    #[error("cannot read {what}: {detail}")]
    CredentialsUnavailable { what: String, detail: String },

    /// The server refused the credentials (HTTP 401 or 403).
    #[error("{url} refused the credentials (HTTP {status}): check usage.prometheus.auth and the Secret it names")]
    Unauthorized { url: String, status: u16 },

    /// The TLS settings cannot be used (e.g. a CA bundle with no certificate).
    #[error("usage.prometheus.tls: {detail}")]
    InvalidTls { detail: String },

    /// A `usage.scrape.service` has no ready endpoint with that port (for the caller; sources never return it).
    #[error("Service {service} has no ready endpoint with port {port}: nothing to scrape")]
    NoEndpoints { service: String, port: String },

    /// The policy names no usage source (for the caller; sources never return it).
    #[error("no usage source is configured: set usage.prometheus or usage.scrape to measure usage")]
    NotConfigured,
}

impl SourceError {
    /// PascalCase reason for the condition `UsageAvailable=False`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } => "SourceUnreachable",
            Self::Forbidden { .. } => "SourceForbidden",
            Self::Timeout { .. } => "SourceTimeout",
            Self::Redirect { .. } => "SourceRedirected",
            Self::HttpStatus { .. } => "SourceHttpError",
            Self::Query { .. } | Self::NotAVector { .. } => "QueryFailed",
            Self::InvalidResponse { .. } => "InvalidResponse",
            Self::TooLarge { .. } => "ResponseTooLarge",
            Self::TooManySeries { .. } => "TooManySeries",
            Self::TooManyKeys { .. } => "TooManyKeys",
            Self::InvalidUrl { .. } => "InvalidSource",
            Self::WarmingUp { .. } => "WarmingUp",
            Self::NoData => "NoData",
            Self::NotConfigured => "NotConfigured",
            Self::CredentialsUnavailable { .. } => "CredentialsUnavailable",
            Self::Unauthorized { .. } => "SourceUnauthorized",
            Self::InvalidTls { .. } => "InvalidTLSConfig",
            Self::NoEndpoints { .. } => "NoReadyEndpoints",
        }
    }

    /// Whether the error is a problem of the spec (URL, query) that will not go away by polling again.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::InvalidUrl { .. } | Self::NotAVector { .. } | Self::InvalidTls { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_pascal_case() {
        let u = || "u".to_owned();
        let errors = [
            SourceError::Unreachable { url: u(), detail: "d".into() },
            SourceError::Forbidden { url: u(), host: "h".into() },
            SourceError::Timeout { url: u(), timeout: Duration::from_secs(1) },
            SourceError::Redirect { url: u(), status: 302 },
            SourceError::HttpStatus { url: u(), status: 500 },
            SourceError::Query { url: u(), status: 400, error_type: "bad_data" },
            SourceError::NotAVector { url: u(), result_type: "scalar" },
            SourceError::InvalidResponse { url: u(), detail: "d".into() },
            SourceError::TooLarge { url: u(), limit: 1 },
            SourceError::TooManySeries { url: u(), limit: 1 },
            SourceError::TooManyKeys { url: u(), limit: 1 },
            SourceError::InvalidUrl { url: u(), detail: "d".into() },
            SourceError::WarmingUp { endpoints: 1 },
            SourceError::NoData,
            SourceError::NotConfigured,
            SourceError::CredentialsUnavailable { what: "Secret s key k".into(), detail: "not found".into() },
            SourceError::Unauthorized { url: u(), status: 401 },
            SourceError::InvalidTls { detail: "d".into() },
            SourceError::NoEndpoints { service: "ns/gw".into(), port: "metrics".into() },
        ];
        for err in errors {
            let reason = err.reason();
            assert!(reason.starts_with(|c: char| c.is_ascii_uppercase()), "{reason}");
            assert!(reason.chars().all(|c| c.is_ascii_alphanumeric()), "{reason}");
        }
    }

    #[test]
    fn timeouts_read_in_seconds() {
        let err = SourceError::Timeout { url: "http://gw".into(), timeout: Duration::from_secs(5) };
        assert_eq!(err.to_string(), "http://gw timed out after 5s");
    }
}
