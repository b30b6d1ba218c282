//! Usage sources: per-key request rates from Prometheus or from a gateway's metrics endpoint, behind one trait.
//!
//! A RateLimitPolicy names one source in `spec.usage`. [`AnySource::from_spec`] builds it, and the controller calls
//! [`Source::poll`] every `usage.interval`. A poll yields [`Rates`], requests per second by the value of the key label,
//! or a [`SourceError`] whose [`reason`](SourceError::reason) becomes the reason of `UsageAvailable=False`.
//!
//! Errors name the endpoint (with any `user:password@` redacted) and what went wrong. They never quote a response
//! body, except the short error string a Prometheus server returns for a failed query (cut to 200 characters).

mod http;
pub mod prometheus;
pub mod scrape;
pub mod textformat;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use crate::api::ratelimit::UsageSource;

pub use http::redact_url;

/// Requests per second by the value of the key label, from one poll. Only series that carry the label are included;
/// values are finite and >= 0.
pub type Rates = BTreeMap<String, f64>;

/// The key label when `usage.keyLabel` is not set.
pub const DEFAULT_KEY_LABEL: &str = "api_key";

/// The largest response body a source reads (16 MiB); a larger one fails the poll instead of exhausting memory.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Why a poll yielded no rates.
///
/// Every `url` is already redacted (see [`redact_url`]); for Prometheus it is the server's address, not the query URL.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SourceError {
    /// The endpoint could not be reached: name resolution, connection refused or reset, TLS.
    #[error("cannot reach {url}: {detail}")]
    Unreachable { url: String, detail: String },

    /// The endpoint did not answer, body included, within the poll's timeout.
    #[error("{url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },

    /// The endpoint answered with a status other than 2xx (and, for Prometheus, without an API error body).
    #[error("{url} answered HTTP {status}")]
    HttpStatus { url: String, status: u16 },

    /// Prometheus answered with an API error, e.g. `bad_data` for a PromQL syntax error.
    #[error("Prometheus at {url} rejected the query (HTTP {status}, {error_type}): {message}")]
    Query { url: String, status: u16, error_type: String, message: String },

    /// The query ran but does not return an instant vector (e.g. a scalar, or a range vector `x[1m]`).
    #[error(
        "the query to Prometheus at {url} returned a {result_type}; it must return an instant vector by the key \
         label, e.g. `sum by (api_key) (rate(gateway_requests_total[1m]))`"
    )]
    NotAVector { url: String, result_type: String },

    /// The response could not be understood: not JSON of the Prometheus API, not the text format, not UTF-8.
    #[error("invalid response from {url}: {detail}")]
    InvalidResponse { url: String, detail: String },

    /// The response body is larger than [`MAX_BODY_BYTES`].
    #[error("the response from {url} is larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },

    /// The configured URL cannot be used.
    #[error("invalid URL {url}: {detail}")]
    InvalidUrl { url: String, detail: String },

    /// A scrape source has only a baseline: counters become rates from the next successful poll on.
    #[error("read the counters of {endpoints} endpoint(s) once; rates are known from the next poll on")]
    WarmingUp { endpoints: usize },

    /// The source answered but no series carries the key label. Sources return an empty [`Rates`] for that; this
    /// variant is for the caller, which decides that empty means missing data rather than zero traffic.
    #[error(
        "the source answered, but no series carries the key label: check the query or metric name and usage.keyLabel"
    )]
    NoData,

    /// The policy names no usage source (for the caller; sources never return it).
    #[error("no usage source is configured: set usage.prometheus or usage.scrape to measure usage")]
    NotConfigured,
}

impl SourceError {
    /// PascalCase reason for the condition `UsageAvailable=False`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } => "SourceUnreachable",
            Self::Timeout { .. } => "SourceTimeout",
            Self::HttpStatus { .. } => "SourceHttpError",
            Self::Query { .. } | Self::NotAVector { .. } => "QueryFailed",
            Self::InvalidResponse { .. } => "InvalidResponse",
            Self::TooLarge { .. } => "ResponseTooLarge",
            Self::InvalidUrl { .. } => "InvalidSource",
            Self::WarmingUp { .. } => "WarmingUp",
            Self::NoData => "NoData",
            Self::NotConfigured => "NotConfigured",
        }
    }

    /// Whether the error is a problem of the spec (URL, query) that will not go away by polling again.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::InvalidUrl { .. } | Self::NotAVector { .. })
    }
}

/// A source of per-key usage.
pub trait Source: Send {
    /// One poll at `now`. Must finish within `timeout` (enforce it inside).
    fn poll(
        &mut self,
        now: jiff::Timestamp,
        timeout: Duration,
    ) -> impl Future<Output = Result<Rates, SourceError>> + Send;
}

/// Either source, built from the spec; implements [`Source`] by delegating.
pub enum AnySource {
    /// `usage.prometheus`.
    Prometheus(prometheus::Prometheus),
    /// `usage.scrape`.
    Scrape(scrape::Scrape),
}

impl AnySource {
    /// The source `spec` names, or `None` when neither `prometheus` nor `scrape` is set.
    ///
    /// The API forbids setting both; should both be set anyway, Prometheus wins. A new scrape source starts without
    /// a baseline, so its first poll is [`SourceError::WarmingUp`]: keep the source across polls and rebuild it only
    /// when the spec changes.
    pub fn from_spec(spec: &UsageSource, client: reqwest::Client) -> Option<AnySource> {
        let key_label = spec.key_label.as_deref().filter(|label| !label.is_empty()).unwrap_or(DEFAULT_KEY_LABEL);
        if let Some(p) = &spec.prometheus {
            return Some(AnySource::Prometheus(prometheus::Prometheus::new(&p.address, &p.query, key_label, client)));
        }
        let s = spec.scrape.as_ref()?;
        Some(AnySource::Scrape(scrape::Scrape::new(s.urls.clone(), &s.metric, key_label, client)))
    }
}

impl Source for AnySource {
    async fn poll(&mut self, now: jiff::Timestamp, timeout: Duration) -> Result<Rates, SourceError> {
        match self {
            AnySource::Prometheus(source) => source.poll(now, timeout).await,
            AnySource::Scrape(source) => source.poll(now, timeout).await,
        }
    }
}

/// The HTTP client every source shares (connection pools are per client), with user agent `keyward/<version>`.
///
/// It has no timeout of its own: [`Source::poll`] bounds each poll. Cloning a `reqwest::Client` is cheap.
pub fn http_client() -> reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(build_client).clone()
}

const USER_AGENT: &str = concat!("keyward/", env!("CARGO_PKG_VERSION"));

fn build_client() -> reqwest::Client {
    match reqwest::Client::builder().user_agent(USER_AGENT).build() {
        Ok(client) => client,
        Err(err) => {
            // NB: the only failure of this configuration is a native root store with no usable certificate; plain
            // http:// endpoints still work without it, and https:// ones then fail with a TLS error per poll.
            tracing::warn!(error = %err, "no usable system root certificates; https usage sources will fail");
            // Without native roots nothing fallible is left (a valid constant user agent, the built-in ring
            // provider), so the panicking `Default` fallback is never reached.
            reqwest::Client::builder()
                .user_agent(USER_AGENT)
                .tls_built_in_native_certs(false)
                .build()
                .unwrap_or_default()
        }
    }
}

/// A throwaway HTTP server on 127.0.0.1 for the sources' tests.
#[cfg(test)]
pub(crate) mod test_server {
    use std::net::SocketAddr;

    /// Serves `router` on an ephemeral port of 127.0.0.1 until the test's runtime ends.
    pub(crate) async fn serve(router: axum::Router) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        addr
    }

    /// A local address where nothing listens (bound once, then closed).
    pub(crate) async fn closed_port() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ratelimit::{PrometheusSource, ScrapeSource};

    #[test]
    fn from_spec_picks_the_configured_source() {
        let client = http_client();
        assert!(AnySource::from_spec(&UsageSource::default(), client.clone()).is_none());

        let prometheus = UsageSource {
            prometheus: Some(PrometheusSource { address: "http://p:9090".into(), query: "up".into() }),
            ..Default::default()
        };
        match AnySource::from_spec(&prometheus, client.clone()) {
            Some(AnySource::Prometheus(p)) => assert_eq!(p.key_label(), DEFAULT_KEY_LABEL),
            _ => panic!("expected a Prometheus source"),
        }

        let scrape = UsageSource {
            scrape: Some(ScrapeSource { urls: vec!["http://gw/metrics".into()], metric: "req_total".into() }),
            key_label: Some("key_id".into()),
            ..Default::default()
        };
        match AnySource::from_spec(&scrape, client) {
            Some(AnySource::Scrape(s)) => assert_eq!(s.key_label(), "key_id"),
            _ => panic!("expected a scrape source"),
        }
    }

    #[test]
    fn reasons_are_pascal_case() {
        let errors = [
            SourceError::Unreachable { url: "u".into(), detail: "d".into() },
            SourceError::Timeout { url: "u".into(), timeout: Duration::from_secs(1) },
            SourceError::HttpStatus { url: "u".into(), status: 500 },
            SourceError::Query { url: "u".into(), status: 400, error_type: "bad_data".into(), message: "m".into() },
            SourceError::NotAVector { url: "u".into(), result_type: "scalar".into() },
            SourceError::InvalidResponse { url: "u".into(), detail: "d".into() },
            SourceError::TooLarge { url: "u".into(), limit: 1 },
            SourceError::InvalidUrl { url: "u".into(), detail: "d".into() },
            SourceError::WarmingUp { endpoints: 1 },
            SourceError::NoData,
            SourceError::NotConfigured,
        ];
        for err in errors {
            let reason = err.reason();
            assert!(reason.starts_with(|c: char| c.is_ascii_uppercase()), "{reason}");
            assert!(reason.chars().all(|c| c.is_ascii_alphanumeric()), "{reason}");
        }
    }

    #[test]
    fn the_client_is_shared() {
        // Building twice must not fail, and both handles are usable (a smoke test of the TLS setup).
        let _a = http_client();
        let _b = http_client();
    }
}
