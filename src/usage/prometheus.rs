//! Usage from a PromQL instant query through the Prometheus HTTP API (`GET /api/v1/query`).
//!
//! The query must return an instant vector whose series carry the key label, e.g.
//! `sum by (api_key) (rate(gateway_requests_total[1m]))`. Series of the same key are added together; series without
//! the key label, and samples that are not a finite number >= 0, are left out. Any Prometheus-compatible API works
//! (Thanos, Mimir, VictoriaMetrics), with a path prefix in the address where one is needed.

use std::time::Duration;

use reqwest::header::HeaderMap;

use super::access::Access;
use super::http::{self, Buffer};
pub use super::promjson::{parse_query_response, parse_query_response_limited};
use super::{Rates, Source, SourceError, Sources};

/// Largest error body read to find Prometheus' error type; a larger one is reported by its status alone.
const ERROR_BODY_BYTES: usize = 64 * 1024;

/// A Prometheus server and the query whose result is requests per second by key.
#[derive(Clone)]
pub struct Prometheus {
    address: String,
    query: String,
    /// `usage.prometheus.usedQuery`, with its `$window` placeholder.
    used_query: Option<String>,
    key_label: String,
    sources: Sources,
    shown: String,
    /// The shared client, or the source's own for its TLS settings.
    client: reqwest::Client,
    /// Extra headers and credentials (sensitive).
    headers: HeaderMap,
}

impl Prometheus {
    /// A source that runs `query` against the server at `address` (e.g. `http://prometheus.monitoring:9090`, or
    /// `https://thanos.example/prefix`), through `sources` (fence, caps, budget).
    pub fn new(address: &str, query: &str, key_label: &str, sources: Sources) -> Self {
        Self {
            address: address.to_owned(),
            query: query.to_owned(),
            used_query: None,
            key_label: key_label.to_owned(),
            client: sources.client().clone(),
            sources,
            shown: http::redact_url(address.trim_end_matches('/')),
            headers: HeaderMap::new(),
        }
    }

    /// The same source, sending `access`'s credentials and headers, through a client built for its TLS settings.
    pub fn with_access(mut self, access: &Access) -> Result<Self, SourceError> {
        self.headers = access.header_map()?;
        self.client = self.sources.client_for(&access.tls)?;
        Ok(self)
    }

    /// The same source, counting a calendar window's requests with `used_query` (its `$window` replaced by the
    /// time since the window started) instead of an integral of the rate query.
    pub fn with_used_query(mut self, used_query: Option<&str>) -> Self {
        self.used_query = used_query.map(str::to_owned);
        self
    }

    /// The label whose value identifies a key.
    pub fn key_label(&self) -> &str {
        &self.key_label
    }

    /// The requests each key used in the last `since` (a calendar window so far), by key: the `usedQuery`, or the
    /// rate query integrated with a subquery of `step` (see [`used_query`]). Same client, caps and timeout as a poll.
    pub async fn poll_used(&self, since: Duration, step: Duration, timeout: Duration) -> Result<Rates, SourceError> {
        let query = used_query(&self.query, self.used_query.as_deref(), since, step);
        self.run(&query, timeout).await
    }
}

/// The placeholder of `usage.prometheus.usedQuery` that becomes the time since the window started, e.g. `3600s`.
pub const WINDOW_PLACEHOLDER: &str = "$window";

/// The most evaluations a derived subquery integral makes per series over a whole window: about Prometheus' own
/// limit of points per series of a range query (11,000), so a month stays within its sample budget.
pub const MAX_USED_STEPS: u32 = 10_000;

/// The query that counts the requests each key used in the last `since` (rounded down to whole seconds, at least
/// 1s): `used_query` with [`WINDOW_PLACEHOLDER`] replaced, or, without one, the integral of the rate query
/// `sum_over_time((<query>)[<since>s:<step>s]) * <step>`: the rate sampled every `step` and multiplied by it. The
/// integral is exact for a steady rate and approximates a changing one; it misses traffic only when the rate
/// query's own range (the `[1m]` of its `rate`) is shorter than `step`.
pub fn used_query(query: &str, used_query: Option<&str>, since: Duration, step: Duration) -> String {
    let window = format!("{}s", since.as_secs().max(1));
    match used_query {
        Some(q) => q.replace(WINDOW_PLACEHOLDER, &window),
        None => {
            let step = step.as_secs().max(1);
            format!("sum_over_time(({query})[{window}:{step}s]) * {step}")
        }
    }
}

/// The step of the derived integral for a window of `length` polled every `interval`: the interval, raised so the
/// window holds at most [`MAX_USED_STEPS`] steps, in whole seconds (at least 1s).
pub fn used_step(interval: Duration, length: Duration) -> Duration {
    let floor = length.as_secs().div_ceil(u64::from(MAX_USED_STEPS));
    Duration::from_secs(interval.as_secs().max(floor).max(1))
}

/// Shows the address redacted: it may carry credentials.
impl std::fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prometheus")
            .field("address", &self.shown)
            .field("query", &self.query)
            .field("key_label", &self.key_label)
            .finish_non_exhaustive()
    }
}

impl Source for Prometheus {
    /// Runs the query at the server's current time (`now` is not sent: Prometheus evaluates at its own clock, so the
    /// operator's clock skew cannot shift the window).
    async fn poll(&mut self, _now: jiff::Timestamp, timeout: Duration) -> Result<Rates, SourceError> {
        self.run(&self.query, timeout).await
    }
}

impl Prometheus {
    /// Runs `query` as an instant query: by key, each value finite and >= 0, within the caps and `timeout`.
    async fn run(&self, query: &str, timeout: Duration) -> Result<Rates, SourceError> {
        let url = query_url(&self.address, query)
            .map_err(|detail| SourceError::InvalidUrl { url: self.shown.clone(), detail })?;
        let accept = "application/json";
        let sources = &self.sources;
        let mut body = Buffer::new(sources.limits().max_body_bytes);
        let via = http::Via { client: &self.client, headers: &self.headers };
        let target = (url, self.shown.as_str(), accept);
        let answer = http::get_via(sources, via, target, timeout, &mut body, ERROR_BODY_BYTES).await?;
        match answer {
            // The budget reserved for the body is held until it is parsed.
            http::Answer::Fed(_reserved) => {
                parse_query_response_limited(&body.bytes, &self.key_label, sources.limits())
                    .map_err(|err| with_url(err, &self.shown))
            }
            // Prometheus explains 400 (bad_data), 422 (execution) and 503 (unavailable) in an API error body; only
            // its error type is kept.
            http::Answer::Status { status: status @ (401 | 403), .. } => {
                Err(SourceError::Unauthorized { url: self.shown.clone(), status })
            }
            http::Answer::Status { status, body } => Err(match parse_query_response(&body, "") {
                Err(SourceError::Query { error_type, .. }) => {
                    SourceError::Query { url: self.shown.clone(), status, error_type }
                }
                _ => SourceError::HttpStatus { url: self.shown.clone(), status },
            }),
        }
    }
}

/// `{address}/api/v1/query?query=<query, URL-encoded>`; a trailing `/` of `address` is dropped, a path prefix kept.
pub fn query_url(address: &str, query: &str) -> Result<reqwest::Url, String> {
    // NB: the address is parsed before the path is appended: `http://` + `/api/v1/query` would parse as host `api`.
    let mut url = reqwest::Url::parse(address).map_err(|err| err.to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("the scheme must be http or https, not {}", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the address has no host".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("the address must not have a query (?...) or fragment (#...)".to_owned());
    }
    let path = format!("{}/api/v1/query", url.path().trim_end_matches('/'));
    url.set_path(&path);
    url.query_pairs_mut().append_pair("query", query);
    Ok(url)
}

/// Fills in the endpoint of an error from [`parse_query_response`].
fn with_url(err: SourceError, shown: &str) -> SourceError {
    let url = shown.to_owned();
    match err {
        SourceError::Query { status, error_type, .. } => SourceError::Query { url, status, error_type },
        SourceError::NotAVector { result_type, .. } => SourceError::NotAVector { url, result_type },
        SourceError::InvalidResponse { detail, .. } => SourceError::InvalidResponse { url, detail },
        SourceError::TooManySeries { limit, .. } => SourceError::TooManySeries { url, limit },
        SourceError::TooManyKeys { limit, .. } => SourceError::TooManyKeys { url, limit },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use axum::Router;
    use axum::extract::Query;
    use axum::http::StatusCode;
    use axum::routing::get;

    use super::*;
    use crate::usage::test_server::{closed_port, serve};

    const NOW: jiff::Timestamp = jiff::Timestamp::UNIX_EPOCH;

    fn rates(entries: &[(&str, f64)]) -> Rates {
        entries.iter().map(|&(k, v)| (k.to_owned(), v)).collect()
    }

    #[test]
    fn the_used_query_fills_in_the_window_or_integrates_the_rate() {
        let rate = "sum by (api_key) (rate(req_total[1m]))";
        let given = "sum by (api_key) (increase(req_total[$window]))";
        let hour = Duration::from_secs(3600);
        assert_eq!(
            used_query(rate, Some(given), Duration::from_millis(3_600_900), hour),
            "sum by (api_key) (increase(req_total[3600s]))"
        );
        assert_eq!(
            used_query(rate, None, Duration::from_secs(600), Duration::from_secs(15)),
            "sum_over_time((sum by (api_key) (rate(req_total[1m])))[600s:15s]) * 15"
        );
        assert_eq!(used_query(rate, Some(given), Duration::ZERO, hour), "sum by (api_key) (increase(req_total[1s]))");
        // The step is the interval, raised so that a month has at most MAX_USED_STEPS of them.
        let day = Duration::from_secs(86_400);
        assert_eq!(used_step(Duration::from_secs(15), day), Duration::from_secs(15));
        assert_eq!(used_step(Duration::from_secs(1), day), Duration::from_secs(9));
        assert_eq!(used_step(Duration::from_secs(15), 31 * day), Duration::from_secs(268));
        assert_eq!(used_step(Duration::from_millis(100), hour), Duration::from_secs(1));
    }

    #[test]
    fn builds_the_query_url() {
        let q = "sum by (api_key) (rate(gateway_requests_total{code!~\"5..\"}[1m]))";
        let url = query_url("http://prometheus.monitoring:9090/", q).unwrap();
        assert_eq!(url.path(), "/api/v1/query");
        assert_eq!(url.host_str(), Some("prometheus.monitoring"));
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(pairs, vec![("query".to_owned(), q.to_owned())]);
        assert!(!url.as_str().contains(' ') && !url.as_str().contains('"'), "{url}");

        let url = query_url("https://thanos.example/tenant-a/prom//", "up").unwrap();
        assert_eq!(url.as_str(), "https://thanos.example/tenant-a/prom/api/v1/query?query=up");

        assert!(query_url("ftp://host", "up").is_err());
        assert!(query_url("not a url", "up").is_err());
        assert!(query_url("http://", "up").is_err());
        assert!(query_url("http://p:9090/?x=1", "up").is_err());
        let url = query_url("http://user:pw@p:9090", "up").unwrap();
        assert_eq!(url.as_str(), "http://user:pw@p:9090/api/v1/query?query=up");
    }

    /// A Prometheus look-alike under the path prefix `/prom`, answering one query.
    fn fake_prometheus() -> Router {
        Router::new().route(
            "/prom/api/v1/query",
            get(|Query(params): Query<HashMap<String, String>>| async move {
                match params.get("query").map(String::as_str) {
                    Some("sum by (api_key) (rate(req_total[1m]))") => (
                        StatusCode::OK,
                        r#"{"status":"success","data":{"resultType":"vector","result":[
                            {"metric":{"api_key":"checkout"},"value":[1700000000,"42.5"]},
                            {"metric":{"api_key":"search"},"value":[1700000000,"7"]}]}}"#,
                    ),
                    Some("scalar(1)") => {
                        (StatusCode::OK, r#"{"status":"success","data":{"resultType":"scalar","result":[1,"1"]}}"#)
                    }
                    _ => (
                        StatusCode::BAD_REQUEST,
                        r#"{"status":"error","errorType":"bad_data","error":"1:1: parse error: unexpected end of input"}"#,
                    ),
                }
            }),
        )
    }

    #[tokio::test]
    async fn polls_a_prometheus_api() {
        let addr = serve(fake_prometheus()).await;
        let address = format!("http://{addr}/prom/");
        let timeout = Duration::from_secs(5);

        let mut source = Prometheus::new(&address, "sum by (api_key) (rate(req_total[1m]))", "api_key", client());
        let got = source.poll(NOW, timeout).await.unwrap();
        assert_eq!(got, rates(&[("checkout", 42.5), ("search", 7.0)]));

        let mut bad = Prometheus::new(&address, "sum by (", "api_key", client());
        let err = bad.poll(NOW, timeout).await.unwrap_err();
        assert_eq!(err.reason(), "QueryFailed");
        let text = err.to_string();
        assert!(text.contains(&format!("http://{addr}/prom")) && text.contains("HTTP 400"), "{text}");
        assert!(text.contains("bad_data") && !text.contains("parse error"), "{text}");

        let mut scalar = Prometheus::new(&address, "scalar(1)", "api_key", client());
        let err = scalar.poll(NOW, timeout).await.unwrap_err();
        assert!(matches!(&err, SourceError::NotAVector { url, .. } if url.contains(&addr.to_string())), "{err}");
    }

    #[tokio::test]
    async fn reports_http_errors_with_and_without_an_api_body() {
        let router = Router::new()
            .route(
                "/a/api/v1/query",
                get(|| async {
                    let body = r#"{"status":"error","errorType":"unavailable","error":"Service Unavailable"}"#;
                    (StatusCode::SERVICE_UNAVAILABLE, body)
                }),
            )
            .route("/b/api/v1/query", get(|| async { (StatusCode::BAD_GATEWAY, "upstream SECRET-BODY exploded") }));
        let addr = serve(router).await;
        let timeout = Duration::from_secs(5);

        let err = Prometheus::new(&format!("http://{addr}/a"), "up", "api_key", client())
            .poll(NOW, timeout)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, SourceError::Query { status: 503, error_type, .. } if *error_type == "unavailable"),
            "{err:?}"
        );

        let err = Prometheus::new(&format!("http://{addr}/b"), "up", "api_key", client())
            .poll(NOW, timeout)
            .await
            .unwrap_err();
        assert_eq!(err, SourceError::HttpStatus { url: format!("http://{addr}/b"), status: 502 });
        assert!(!err.to_string().contains("SECRET"), "{err}");
        assert_eq!(err.reason(), "SourceHttpError");
    }

    #[tokio::test]
    async fn enforces_the_timeout() {
        let router = Router::new().route(
            "/api/v1/query",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
        let addr = serve(router).await;
        let started = std::time::Instant::now();
        let err = Prometheus::new(&format!("http://{addr}"), "up", "api_key", client())
            .poll(NOW, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(err, SourceError::Timeout { url: format!("http://{addr}"), timeout: Duration::from_millis(200) });
        assert_eq!(err.reason(), "SourceTimeout");
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    }

    #[test]
    fn debug_hides_credentials() {
        let source = Prometheus::new("http://admin:hunter2@p:9090", "up", "api_key", client());
        let text = format!("{source:?}");
        assert!(text.contains("http://***@p:9090") && !text.contains("hunter2"), "{text}");
    }

    #[tokio::test]
    async fn unreachable_server_is_named_without_credentials() {
        let addr = closed_port().await;
        let err = Prometheus::new(&format!("http://admin:hunter2@{addr}/"), "up", "api_key", client())
            .poll(NOW, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "SourceUnreachable", "{err}");
        let text = err.to_string();
        assert!(text.contains(&format!("http://***@{addr}")), "{text}");
        assert!(!text.contains("hunter2") && !text.contains("admin"), "{text}");
    }

    fn client() -> Sources {
        crate::usage::test_sources()
    }
}
