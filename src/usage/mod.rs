//! Usage sources: per-key request rates from Prometheus or from a gateway's metrics endpoint, behind one trait.
//!
//! A RateLimitPolicy names one source in `spec.usage`. [`AnySource::from_spec`] builds it, and the controller calls
//! [`Source::poll`] every `usage.interval`. A poll yields [`Rates`], requests per second by the value of the key label,
//! or a [`SourceError`] whose [`reason`](SourceError::reason) becomes the reason of `UsageAvailable=False`.
//!
//! Sources are fenced ([`fence`]): no redirects, an admin allow/deny list checked on the resolved address, connect,
//! read and total timeouts shorter than the interval. Memory is bounded whatever a source sends ([`config`]): a cap
//! on each response's bytes, on the series a poll reads and on a policy's keys, and a budget of bytes in flight shared
//! by every poll. The text format is parsed line by line as it arrives; a Prometheus answer (JSON) is buffered up to
//! the cap, under the budget, and read without building a document tree.
//!
//! Errors name the endpoint (with any `user:password@` redacted) and what went wrong, in fixed words: not one byte of
//! a response body reaches them (see [`SourceError`]).

pub mod access;
pub mod config;
mod error;
pub mod fence;
mod http;
pub mod prometheus;
mod promjson;
pub mod scrape;
pub mod textformat;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use crate::api::ratelimit::UsageSource;

pub use config::{Limits, MAX_BODY_BYTES, Settings, SourceFlags, Sources};
pub use error::SourceError;
pub use http::redact_url;

/// Requests per second by the value of the key label, from one poll. Only series that carry the label are included;
/// values are finite and >= 0.
pub type Rates = BTreeMap<String, f64>;

/// The key label when `usage.keyLabel` is not set.
pub const DEFAULT_KEY_LABEL: &str = "api_key";

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
    ///
    /// Every source polls through `sources`: its fence, caps and budget.
    pub fn from_spec(spec: &UsageSource, sources: &Sources) -> Option<AnySource> {
        let key_label = spec.key_label.as_deref().filter(|label| !label.is_empty()).unwrap_or(DEFAULT_KEY_LABEL);
        if let Some(p) = &spec.prometheus {
            let source = prometheus::Prometheus::new(&p.address, &p.query, key_label, sources.clone())
                .with_used_query(p.used_query.as_deref());
            return Some(AnySource::Prometheus(source));
        }
        let s = spec.scrape.as_ref()?;
        Some(AnySource::Scrape(scrape::Scrape::new(s.urls.clone(), &s.metric, key_label, sources.clone())))
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

/// How long a poll of a policy polling every `interval` may take: connect, read and the whole exchange end before
/// the next poll is due (four fifths of the interval, at most `max`, at least 200 ms).
pub fn poll_timeout(interval: Duration, max: Duration) -> Duration {
    (interval.mul_f64(0.8)).min(max).max(Duration::from_millis(200))
}

/// The handle the sources' unit tests poll through: loopback allowed (their servers are on 127.0.0.1).
#[cfg(test)]
pub(crate) fn test_sources() -> Sources {
    static SOURCES: std::sync::OnceLock<Sources> = std::sync::OnceLock::new();
    SOURCES.get_or_init(|| Sources::new(Settings::loopback())).clone()
}

#[cfg(test)]
mod fenced_tests;

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
        let client = test_sources();
        assert!(AnySource::from_spec(&UsageSource::default(), &client).is_none());

        let prometheus = UsageSource {
            prometheus: Some(PrometheusSource {
                address: "http://p:9090".into(),
                query: "up".into(),
                used_query: None,
                auth: None,
                tls: None,
                headers: Vec::new(),
            }),
            ..Default::default()
        };
        match AnySource::from_spec(&prometheus, &client) {
            Some(AnySource::Prometheus(p)) => assert_eq!(p.key_label(), DEFAULT_KEY_LABEL),
            _ => panic!("expected a Prometheus source"),
        }

        let scrape = UsageSource {
            scrape: Some(ScrapeSource {
                urls: vec!["http://gw/metrics".into()],
                metric: "req_total".into(),
                service: None,
            }),
            key_label: Some("key_id".into()),
            ..Default::default()
        };
        match AnySource::from_spec(&scrape, &client) {
            Some(AnySource::Scrape(s)) => assert_eq!(s.key_label(), "key_id"),
            _ => panic!("expected a scrape source"),
        }
    }

    #[test]
    fn a_handle_with_the_defaults_denies_loopback() {
        assert!(!Sources::new(Settings::default()).settings().policy.allow_loopback);
    }

    #[test]
    fn poll_timeouts_end_before_the_next_poll() {
        let max = Duration::from_secs(10);
        assert_eq!(poll_timeout(Duration::from_secs(1), max), Duration::from_millis(800));
        assert_eq!(poll_timeout(Duration::from_secs(15), max), Duration::from_secs(10));
        assert_eq!(poll_timeout(Duration::from_millis(100), max), Duration::from_millis(200));
        for secs in 1..100 {
            assert!(poll_timeout(Duration::from_secs(secs), max) < Duration::from_secs(secs));
        }
    }
}
