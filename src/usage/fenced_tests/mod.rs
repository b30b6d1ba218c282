//! The fence and the caps through real HTTP exchanges with servers on 127.0.0.1.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::test_server::serve;
use super::{Limits, Settings, Source, SourceError, Sources, prometheus::Prometheus, scrape::Scrape};

const NOW: jiff::Timestamp = jiff::Timestamp::UNIX_EPOCH;
const TIMEOUT: Duration = Duration::from_secs(5);
const MARKER: &str = "BODY-MARKER-5d1c";

/// A server whose every answer counts a hit.
async fn counted(router: Router) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let router = router.layer(axum::middleware::from_fn(move |req, next: axum::middleware::Next| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move { next.run(req).await }
    }));
    (serve(router).await, hits)
}

fn metrics() -> String {
    "req_total{api_key=\"a\"} 1\n".to_owned()
}

async fn scrape_once(sources: Sources, url: String) -> SourceError {
    Scrape::new(vec![url], "req_total", "api_key", sources).poll(NOW, TIMEOUT).await.unwrap_err()
}

#[tokio::test]
async fn redirects_are_errors_and_never_followed() {
    let (target, target_hits) = counted(Router::new().route("/metrics", get(|| async { metrics() }))).await;
    let location = format!("http://{target}/metrics");
    let redirect = Router::new().route(
        "/metrics",
        get(move || {
            let location = location.clone();
            async move { (StatusCode::FOUND, [(header::LOCATION, location)], MARKER).into_response() }
        }),
    );
    let (from, _) = counted(redirect).await;
    let err = scrape_once(Sources::new(Settings::loopback()), format!("http://{from}/metrics")).await;
    assert_eq!(err, SourceError::Redirect { url: format!("http://{from}/metrics"), status: 302 });
    assert_eq!(err.reason(), "SourceRedirected");
    assert!(!err.to_string().contains(MARKER), "{err}");
    assert_eq!(target_hits.load(Ordering::SeqCst), 0, "the redirect was followed");
}

#[tokio::test]
async fn loopback_is_refused_by_default_before_any_connection() {
    let (addr, hits) = counted(Router::new().route("/metrics", get(|| async { metrics() }))).await;
    let fenced = Sources::new(Settings::default());
    // An IP literal: checked before sending.
    let err = scrape_once(fenced.clone(), format!("http://{addr}/metrics")).await;
    assert_eq!(err, SourceError::Forbidden { url: format!("http://{addr}/metrics"), host: "127.0.0.1".into() });
    assert_eq!(err.reason(), "SourceForbidden");
    // A name that resolves to loopback: refused by the resolver.
    let url = format!("http://localhost:{}/metrics", addr.port());
    let err = scrape_once(fenced.clone(), url.clone()).await;
    assert_eq!(err, SourceError::Forbidden { url, host: "localhost".into() });
    // The same for Prometheus, and for IPv4-mapped and IPv6 forms.
    let err = Prometheus::new(&format!("http://{addr}"), "up", "api_key", fenced.clone()).poll(NOW, TIMEOUT).await;
    assert_eq!(err.unwrap_err().reason(), "SourceForbidden");
    // Other spellings of loopback, which the URL parser turns into 127.0.0.1 or an IPv6 literal.
    for host in ["127.1", "2130706433", "0x7f.0.0.1", "017700000001", "[0:0:0:0:0:ffff:7f00:1]", "[::1]"] {
        let url = format!("http://{host}:{}/metrics", addr.port());
        assert_eq!(scrape_once(fenced.clone(), url.clone()).await.reason(), "SourceForbidden", "{url}");
    }
    // (No link-local address here: tests send traffic to loopback only, and a broken fence would connect.)
    for url in [format!("http://[::ffff:127.0.0.1]:{}/m", addr.port()), "http://[::1]:1/m".to_owned()] {
        assert_eq!(scrape_once(fenced.clone(), url).await.reason(), "SourceForbidden");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "a forbidden source was contacted");

    // With loopback allowed the same source is read.
    let mut open = Scrape::new(vec![format!("http://{addr}/metrics")], "req_total", "api_key", super::test_sources());
    assert_eq!(open.poll(NOW, TIMEOUT).await.unwrap_err().reason(), "WarmingUp");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_deny_list_closes_what_loopback_opened() {
    let (addr, hits) = counted(Router::new().route("/metrics", get(|| async { metrics() }))).await;
    let mut settings = Settings::loopback();
    settings.policy.deny = vec![super::fence::Rule::parse("127.0.0.0/8").unwrap()];
    let err = scrape_once(Sources::new(settings.clone()), format!("http://localhost:{}/metrics", addr.port())).await;
    assert_eq!(err.reason(), "SourceForbidden");
    settings.policy.deny.clear();
    settings.policy.allow = vec![super::fence::Rule::parse("10.0.0.0/8").unwrap()];
    assert_eq!(scrape_once(Sources::new(settings), format!("http://{addr}/metrics")).await.reason(), "SourceForbidden");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn no_byte_of_an_error_answer_reaches_the_error() {
    let router = Router::new()
        .route("/fail", get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, MARKER) }))
        .route("/text", get(|| async { format!("req_total{{api_key=\"a\"}} 1\nreq_total{{api_key=\"{MARKER}\" 2\n") }))
        .route(
            "/api/v1/query",
            get(|| async {
                let body = format!(r#"{{"status":"error","errorType":"bad_data","error":"{MARKER}"}}"#);
                (StatusCode::BAD_REQUEST, body)
            }),
        );
    let (addr, _) = counted(router).await;
    let sources = super::test_sources();
    let errors = [
        scrape_once(sources.clone(), format!("http://{addr}/fail")).await,
        scrape_once(sources.clone(), format!("http://{addr}/text")).await,
        Prometheus::new(&format!("http://{addr}"), "up", "api_key", sources).poll(NOW, TIMEOUT).await.unwrap_err(),
    ];
    assert_eq!(errors[0].to_string(), format!("http://{addr}/fail answered HTTP 500"));
    assert_eq!(
        errors[1].to_string(),
        format!(
            "invalid response from http://{addr}/text: not the Prometheus text format at line 2 (expected ',' or '}}' \
             after label value)"
        )
    );
    assert_eq!(errors[2].to_string(), format!("Prometheus at http://{addr} rejected the query (HTTP 400, bad_data)"));
    for err in errors {
        assert!(!format!("{err} {err:?}").contains(MARKER), "{err:?}");
    }
}

/// A body of `len` bytes of sample lines, streamed in 64 KiB chunks without a Content-Length.
fn streamed(len: usize) -> Response {
    let line = b"req_total{api_key=\"a\"} 1\n";
    let chunk: Vec<u8> = line.iter().copied().cycle().take(64 * 1024 / line.len() * line.len()).collect();
    let chunks = (0..len.div_ceil(chunk.len())).map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
    Body::from_stream(futures::stream::iter(chunks)).into_response()
}

#[tokio::test]
async fn big_answers_fail_at_the_cap_and_give_the_budget_back() {
    let router = Router::new()
        .route("/huge", get(|| async { streamed(64 << 20) }))
        .route("/api/v1/query", get(|| async { streamed(64 << 20) }));
    let (addr, _) = counted(router).await;
    let limits = Limits { max_body_bytes: 1 << 20, max_series: 1_000_000_000, max_keys: 10 };
    let sources = Sources::new(Settings { limits, budget_bytes: 2 << 20, ..Settings::loopback() });
    let full = sources.budget_available();
    let err = scrape_once(sources.clone(), format!("http://{addr}/huge")).await;
    assert_eq!(err, SourceError::TooLarge { url: format!("http://{addr}/huge"), limit: 1 << 20 });
    let err = Prometheus::new(&format!("http://{addr}"), "up", "api_key", sources.clone()).poll(NOW, TIMEOUT).await;
    assert_eq!(err.unwrap_err().reason(), "ResponseTooLarge");
    assert_eq!(sources.budget_available(), full, "the budget leaked");

    // Many at once share the budget (2 MiB for eight 1 MiB answers): each still ends with its fixed reason.
    let polls = (0..8).map(|_| scrape_once(sources.clone(), format!("http://{addr}/huge")));
    for err in futures::future::join_all(polls).await {
        assert_eq!(err.reason(), "ResponseTooLarge", "{err}");
    }
    assert_eq!(sources.budget_available(), full, "the budget leaked");
}

#[tokio::test]
async fn series_and_keys_are_capped_per_poll() {
    let router = Router::new().route(
        "/many",
        get(|| async { (0..50).map(|i| format!("req_total{{api_key=\"k{i}\"}} 1\n")).collect::<String>() }),
    );
    let (addr, _) = counted(router).await;
    let capped = |max_series, max_keys| {
        let limits = Limits { max_series, max_keys, ..Limits::default() };
        Sources::new(Settings { limits, ..Settings::loopback() })
    };
    let url = format!("http://{addr}/many");
    assert_eq!(scrape_once(capped(100, 100), url.clone()).await.reason(), "WarmingUp");
    // Two endpoints of one source share the series cap.
    let mut two = Scrape::new(vec![url.clone(), url.clone()], "req_total", "api_key", capped(99, 100));
    assert_eq!(two.poll(NOW, TIMEOUT).await.unwrap_err(), SourceError::TooManySeries { url: url.clone(), limit: 99 });
    assert_eq!(scrape_once(capped(100, 49), url.clone()).await, SourceError::TooManyKeys { url, limit: 49 });
}

#[tokio::test]
async fn small_answers_never_wait_for_the_budget_and_large_ones_do() {
    let series: Vec<String> =
        (0..5000).map(|i| format!(r#"{{"metric":{{"api_key":"k{}"}},"value":[1,"1"]}}"#, i % 10)).collect();
    let large = format!(r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#, series.join(","));
    assert!(large.len() > 2 * super::http::FREE_BYTES);
    let router = Router::new()
        .route("/small", get(|| async { metrics() }))
        .route("/api/v1/query", get(move || std::future::ready(large.clone())));
    let (addr, _) = counted(router).await;
    let sources = Sources::new(Settings { budget_bytes: 16 << 20, ..Settings::loopback() });
    // Another poll holds the whole budget.
    let all = sources.reserve(usize::MAX).await.unwrap();
    assert_eq!(sources.budget_available(), 0);
    let mut small = Scrape::new(vec![format!("http://{addr}/small")], "req_total", "api_key", sources.clone());
    assert_eq!(small.poll(NOW, TIMEOUT).await.unwrap_err().reason(), "WarmingUp");
    // A buffered answer larger than the free allowance waits for the budget, within its timeout.
    let mut large = Prometheus::new(&format!("http://{addr}"), "up", "api_key", sources.clone());
    let timeout = Duration::from_millis(500);
    assert_eq!(
        large.poll(NOW, timeout).await.unwrap_err(),
        SourceError::Timeout { url: format!("http://{addr}"), timeout }
    );
    drop(all);
    assert_eq!(large.poll(NOW, TIMEOUT).await.unwrap().len(), 10);
    assert_eq!(sources.budget_available(), 16 << 20);
}
