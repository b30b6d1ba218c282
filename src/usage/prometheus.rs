//! Usage from a PromQL instant query through the Prometheus HTTP API (`GET /api/v1/query`).
//!
//! The query must return an instant vector whose series carry the key label, e.g.
//! `sum by (api_key) (rate(gateway_requests_total[1m]))`. Series of the same key are added together; series without
//! the key label, and samples that are not a finite number >= 0, are left out. Any Prometheus-compatible API works
//! (Thanos, Mimir, VictoriaMetrics), with a path prefix in the address where one is needed.

use std::time::Duration;

use serde::Deserialize;

use super::http::{self, truncate};
use super::{MAX_BODY_BYTES, Rates, Source, SourceError};

/// Longest Prometheus error message quoted in a [`SourceError::Query`].
const MESSAGE_CHARS: usize = 200;

/// Largest error body read to find Prometheus' error message; a larger one is reported by its status alone.
const ERROR_BODY_BYTES: usize = 64 * 1024;

/// A Prometheus server and the query whose result is requests per second by key.
#[derive(Clone)]
pub struct Prometheus {
    address: String,
    query: String,
    key_label: String,
    client: reqwest::Client,
    shown: String,
}

impl Prometheus {
    /// A source that runs `query` against the server at `address` (e.g. `http://prometheus.monitoring:9090`, or
    /// `https://thanos.example/prefix`).
    pub fn new(address: &str, query: &str, key_label: &str, client: reqwest::Client) -> Self {
        Self {
            address: address.to_owned(),
            query: query.to_owned(),
            key_label: key_label.to_owned(),
            client,
            shown: http::redact_url(address.trim_end_matches('/')),
        }
    }

    /// The label whose value identifies a key.
    pub fn key_label(&self) -> &str {
        &self.key_label
    }
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
        let url = query_url(&self.address, &self.query)
            .map_err(|detail| SourceError::InvalidUrl { url: self.shown.clone(), detail })?;
        let accept = "application/json";
        let answer =
            http::get(&self.client, url, &self.shown, accept, timeout, MAX_BODY_BYTES, ERROR_BODY_BYTES).await?;
        if !answer.status.is_success() {
            let status = answer.status.as_u16();
            // Prometheus explains 400 (bad_data), 422 (execution) and 503 (unavailable) in an API error body.
            return Err(match api_error(&answer.body) {
                Some((error_type, message)) => {
                    SourceError::Query { url: self.shown.clone(), status, error_type, message }
                }
                None => SourceError::HttpStatus { url: self.shown.clone(), status },
            });
        }
        parse_query_response(&answer.body, &self.key_label).map_err(|err| with_url(err, &self.shown))
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

/// The envelope of every Prometheus API answer.
#[derive(Deserialize)]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    #[serde(default)]
    result: serde_json::Value,
}

/// One series of an instant vector. Native histogram samples carry `histogram` instead of `value` and are skipped.
#[derive(Deserialize)]
struct VectorSample {
    #[serde(default)]
    metric: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    value: Option<(serde_json::Value, String)>,
}

/// Rates by key from the body of a successful `/api/v1/query` answer.
///
/// Pure: errors carry no URL yet (the caller fills it in), and quote neither the body nor more than 200 characters of
/// a Prometheus error message. An empty vector is an empty map: whether that means "no traffic" or "wrong query" is
/// the caller's decision.
pub fn parse_query_response(body: &[u8], key_label: &str) -> Result<Rates, SourceError> {
    let invalid = |detail: String| SourceError::InvalidResponse { url: String::new(), detail };
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|err| invalid(describe_json_error("answer", &err)))?;
    match envelope.status.as_str() {
        "success" => {}
        "error" => {
            return Err(SourceError::Query {
                url: String::new(),
                status: 200,
                error_type: truncate(envelope.error_type.as_deref().unwrap_or("unknown"), 40),
                message: truncate(envelope.error.as_deref().unwrap_or("no message"), MESSAGE_CHARS),
            });
        }
        other => return Err(invalid(format!("unknown status {:?}", truncate(other, 40)))),
    }
    let data = envelope.data.ok_or_else(|| invalid("a successful answer without data".to_owned()))?;
    if data.result_type != "vector" {
        return Err(SourceError::NotAVector { url: String::new(), result_type: truncate(&data.result_type, 40) });
    }
    let samples: Vec<VectorSample> =
        serde_json::from_value(data.result).map_err(|err| invalid(describe_json_error("vector", &err)))?;

    let mut rates = Rates::new();
    for sample in samples {
        let Some(key) = sample.metric.get(key_label).filter(|key| !key.is_empty()) else {
            continue;
        };
        let Some((_, text)) = sample.value else {
            continue;
        };
        // Prometheus writes values as Go does: "12.5", "1e+06", "NaN", "+Inf"; Rust's parser reads them all.
        let value: f64 =
            text.parse().map_err(|_| invalid(format!("the sample value {:?} is not a number", truncate(&text, 40))))?;
        if value.is_finite() && value >= 0.0 {
            *rates.entry(key.clone()).or_insert(0.0) += value;
        }
    }
    // Summing finite values can still overflow to infinity; such a rate means nothing.
    rates.retain(|_, rate| rate.is_finite());
    Ok(rates)
}

/// What is wrong with the JSON of `what`, without serde's message: that would quote values from the body.
fn describe_json_error(what: &str, err: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let problem = match err.classify() {
        Category::Io | Category::Syntax => "is not JSON",
        Category::Eof => "is cut short",
        Category::Data => "is not shaped like a Prometheus API answer",
    };
    if err.line() == 0 {
        format!("the {what} {problem}")
    } else {
        format!("the {what} {problem} (line {}, column {})", err.line(), err.column())
    }
}

/// The `(errorType, error)` of a Prometheus API error body, if `body` is one.
fn api_error(body: &[u8]) -> Option<(String, String)> {
    match parse_query_response(body, "") {
        Err(SourceError::Query { error_type, message, .. }) => Some((error_type, message)),
        _ => None,
    }
}

/// Fills in the endpoint of an error from [`parse_query_response`].
fn with_url(err: SourceError, shown: &str) -> SourceError {
    let url = shown.to_owned();
    match err {
        SourceError::Query { status, error_type, message, .. } => {
            SourceError::Query { url, status, error_type, message }
        }
        SourceError::NotAVector { result_type, .. } => SourceError::NotAVector { url, result_type },
        SourceError::InvalidResponse { detail, .. } => SourceError::InvalidResponse { url, detail },
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

    fn rates(entries: &[(&str, f64)]) -> Rates {
        entries.iter().map(|&(k, v)| (k.to_owned(), v)).collect()
    }

    fn vector(series: &str) -> Vec<u8> {
        format!(r#"{{"status":"success","data":{{"resultType":"vector","result":[{series}]}}}}"#).into_bytes()
    }

    const NOW: jiff::Timestamp = jiff::Timestamp::UNIX_EPOCH;

    #[test]
    fn sums_series_by_key_and_skips_the_rest() {
        let body = vector(
            r#"{"metric":{"api_key":"checkout","code":"200"},"value":[1700000000.123,"12.5"]},
               {"metric":{"api_key":"checkout","code":"429"},"value":[1700000000.123,"0.5"]},
               {"metric":{"api_key":"search"},"value":[1700000000,"1e+03"]},
               {"metric":{"code":"200"},"value":[1700000000,"99"]},
               {"metric":{"api_key":""},"value":[1700000000,"7"]},
               {"metric":{"api_key":"nan"},"value":[1700000000,"NaN"]},
               {"metric":{"api_key":"inf"},"value":[1700000000,"+Inf"]},
               {"metric":{"api_key":"neg"},"value":[1700000000,"-Inf"]},
               {"metric":{"api_key":"neg2"},"value":[1700000000,"-3"]},
               {"metric":{"api_key":"hist"},"histogram":[1700000000,{"count":"3","sum":"1"}]},
               {"value":[1700000000,"5"]}"#,
        );
        let got = parse_query_response(&body, "api_key").unwrap();
        assert_eq!(got, rates(&[("checkout", 13.0), ("search", 1000.0)]));
        // Another label picks other series.
        assert_eq!(parse_query_response(&body, "code").unwrap(), rates(&[("200", 111.5), ("429", 0.5)]));
    }

    #[test]
    fn empty_vector_is_an_empty_map() {
        assert_eq!(parse_query_response(&vector(""), "api_key").unwrap(), Rates::new());
        // Warnings and unknown fields are ignored.
        let body = br#"{"status":"success","warnings":["w"],"data":{"resultType":"vector","result":[]},"x":1}"#;
        assert_eq!(parse_query_response(body, "api_key").unwrap(), Rates::new());
    }

    #[test]
    fn api_error_is_query_failed_with_a_short_message() {
        let body = br#"{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected identifier"}"#;
        let err = parse_query_response(body, "api_key").unwrap_err();
        assert_eq!(err.reason(), "QueryFailed");
        match &err {
            SourceError::Query { error_type, message, .. } => {
                assert_eq!(error_type, "bad_data");
                assert_eq!(message, "1:5: parse error: unexpected identifier");
            }
            other => panic!("unexpected {other:?}"),
        }

        let long = format!(r#"{{"status":"error","errorType":"execution","error":"{}"}}"#, "x".repeat(5000));
        let err = parse_query_response(long.as_bytes(), "api_key").unwrap_err();
        assert!(err.to_string().len() < 400, "{err}");
    }

    #[test]
    fn results_other_than_an_instant_vector_are_rejected() {
        for (result_type, result) in [
            ("scalar", r#"[1700000000,"1"]"#),
            ("string", r#"[1700000000,"hello"]"#),
            ("matrix", r#"[{"metric":{"api_key":"a"},"values":[[1700000000,"1"]]}]"#),
        ] {
            let body = format!(r#"{{"status":"success","data":{{"resultType":"{result_type}","result":{result}}}}}"#);
            let err = parse_query_response(body.as_bytes(), "api_key").unwrap_err();
            assert_eq!(err.reason(), "QueryFailed", "{result_type}");
            assert!(err.is_permanent());
            let text = err.to_string();
            assert!(text.contains(result_type) && text.contains("instant vector"), "{text}");
        }
    }

    #[test]
    fn garbage_is_an_error_never_a_panic_nor_an_echo() {
        let secret = "S".repeat(1000);
        let bodies: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"\xff\xfe\x00garbage".to_vec(),
            b"<html>502 Bad Gateway</html>".to_vec(),
            br#"{"status":"success""#.to_vec(),
            br#"{"status":"success"}"#.to_vec(),
            br#"{"status":"maybe","data":null}"#.to_vec(),
            br#"[1,2,3]"#.to_vec(),
            vector(r#"{"metric":{"api_key":"a"},"value":[1700000000,5]}"#),
            vector(r#"{"metric":{"api_key":"a"},"value":[1700000000,"five"]}"#),
            vector(r#"{"metric":{"api_key":"a"},"value":[1700000000]}"#),
            vector(r#"{"metric":{"api_key":5},"value":[1700000000,"1"]}"#),
            format!(r#"{{"status":"success","data":{{"resultType":"vector","result":"{secret}"}}}}"#).into_bytes(),
            format!(r#"{{"status":"{secret}"}}"#).into_bytes(),
        ];
        for body in bodies {
            let err = parse_query_response(&body, "api_key").unwrap_err();
            assert_eq!(err.reason(), "InvalidResponse", "{err}");
            let text = err.to_string();
            assert!(text.len() < 300 && !text.contains(&secret[..100]), "{text}");
        }
        // Every truncation of a valid answer is handled too.
        let body = vector(r#"{"metric":{"api_key":"a"},"value":[1700000000,"1"]}"#);
        for cut in 0..body.len() {
            assert!(parse_query_response(&body[..cut], "api_key").is_err());
        }
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
        assert!(text.contains("parse error"), "{text}");

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
            matches!(&err, SourceError::Query { status: 503, error_type, .. } if error_type == "unavailable"),
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

    fn client() -> reqwest::Client {
        crate::usage::http_client()
    }
}
