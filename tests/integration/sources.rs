//! Usage sources are fenced and bounded (issue #11, items 3 and 4), with the real `keyward run` on the real control
//! plane. The sources are HTTP servers in this test process on 127.0.0.1: redirecting, erroring with a marker in the
//! body, sending hundreds of MiB or a million series. Each test runs its own operator scoped with `--namespace` to
//! its namespaces, with or without `--allow-loopback-sources`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::common::kube::{apikey, apply, condition, eventually, get_json};
use crate::common::operator::Operator;
use crate::common::ratelimit::{METRIC, gateway_sim, policy};
use crate::common::{control_plane_with_crds, kubectl_ok, namespace};

/// Serves `router` on a free port of 127.0.0.1, counting the requests of each path.
async fn serve(router: Router) -> (SocketAddr, Hits) {
    let hits = Hits::default();
    let counter = hits.clone();
    let router =
        router.layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
            counter.add(req.uri().path());
            async move { next.run(req).await }
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await.expect("serve") });
    (addr, hits)
}

/// Requests per path.
#[derive(Clone, Default)]
struct Hits(Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<AtomicUsize>>>>);

impl Hits {
    fn add(&self, path: &str) {
        let counter = self.0.lock().unwrap().entry(path.to_owned()).or_default().clone();
        counter.fetch_add(1, Ordering::SeqCst);
    }

    fn of(&self, path: &str) -> usize {
        self.0.lock().unwrap().get(path).map_or(0, |c| c.load(Ordering::SeqCst))
    }
}

/// An operator for `namespaces` only, logging at `info`; `loopback` passes `--allow-loopback-sources`.
fn operator(tag: &str, namespaces: &[&str], loopback: bool) -> Operator {
    let scope = namespaces.join(",");
    let allow = if loopback { "true" } else { "false" };
    crate::common::operator::start_with_env(
        tag,
        "info",
        &["--namespace", &scope],
        &[("KEYWARD_ALLOW_LOOPBACK_SOURCES", allow)],
    )
}

fn scrape(name: &str, url: &str, interval: &str) -> String {
    policy(
        name,
        &format!(
            "  limit: {{requests: 600, period: 1m}}\n  usage:\n    interval: {interval}\n    scrape: {{urls: [\"{url}\"], metric: {METRIC}}}"
        ),
    )
}

fn prometheus(name: &str, address: &str, interval: &str) -> String {
    policy(
        name,
        &format!(
            "  limit: {{requests: 600, period: 1m}}\n  usage:\n    interval: {interval}\n    prometheus:\n      address: {address}\n      query: sum by (api_key) (rate({METRIC}[1m]))"
        ),
    )
}

/// `UsageAvailable` of a policy: (status, reason, message).
fn usage(ns: &str, name: &str) -> Option<(String, String, String)> {
    condition(&get_json(ns, &format!("rlp/{name}"))?, "UsageAvailable")
}

/// Waits until the policy's `UsageAvailable` has `reason`; returns its message.
async fn reason(ns: &str, name: &str, reason: &str, secs: u64) -> String {
    let what = format!("{ns}/{name} UsageAvailable reason {reason}");
    eventually(secs, &what, || usage(ns, name).filter(|(_, r, _)| r == reason)).await.2
}

async fn setup(test: &str) -> String {
    control_plane_with_crds().await;
    namespace(test)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_sources_are_refused_without_the_flag_by_address_and_by_name() {
    let fenced_ns = setup("src_fenced").await;
    let open_ns = setup("src_open").await;
    let (addr, hits) =
        serve(Router::new().route("/metrics", get(|| async { format!("{METRIC}{{api_key=\"a\"}} 1\n") }))).await;
    let mut fenced = operator("sources-fenced", &[&fenced_ns], false);
    let mut open = operator("sources-open", &[&open_ns], true);

    apply(&fenced_ns, &scrape("by-address", &format!("http://{addr}/metrics"), "1s"));
    apply(&fenced_ns, &scrape("by-name", &format!("http://localhost:{}/metrics", addr.port()), "1s"));
    apply(&fenced_ns, &prometheus("prom-by-name", &format!("http://localhost:{}", addr.port()), "1s"));
    let message = reason(&fenced_ns, "by-address", "SourceForbidden", 60).await;
    assert!(message.contains("the address of 127.0.0.1 is forbidden"), "{message}");
    // `localhost` is a name: it is refused on the address it resolves to, at connect time.
    let message = reason(&fenced_ns, "by-name", "SourceForbidden", 60).await;
    assert!(message.contains("the address of localhost is forbidden"), "{message}");
    reason(&fenced_ns, "prom-by-name", "SourceForbidden", 60).await;
    let ready = condition(&get_json(&fenced_ns, "rlp/by-name").expect("policy"), "Ready").expect("Ready");
    assert_eq!((ready.0.as_str(), ready.1.as_str()), ("False", "SourceForbidden"));
    assert_eq!(hits.of("/metrics"), 0, "a forbidden source was contacted");

    // The same source, with the flag: read.
    apply(&open_ns, &scrape("by-address", &format!("http://{addr}/metrics"), "1s"));
    reason(&open_ns, "by-address", "UsageRead", 60).await;
    assert!(hits.of("/metrics") >= 2, "the allowed source was not read");
    fenced.kill();
    open.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_errors_and_are_not_followed() {
    let ns = setup("src_redirect").await;
    let (target, target_hits) = serve(
        Router::new()
            .route("/metrics", get(|| async { format!("{METRIC}{{api_key=\"a\"}} 1\n") }))
            .route("/api/v1/query", get(|| async { "{}" })),
    )
    .await;
    let redirect = |to: String| {
        get(move || {
            let to = to.clone();
            async move { (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, to)]).into_response() }
        })
    };
    let (from, from_hits) = serve(
        Router::new()
            .route("/metrics", redirect(format!("http://{target}/metrics")))
            .route("/api/v1/query", redirect(format!("http://{target}/api/v1/query?query=up"))),
    )
    .await;
    let mut op = operator("sources-redirect", &[&ns], true);
    apply(&ns, &scrape("scrape", &format!("http://{from}/metrics"), "1s"));
    apply(&ns, &prometheus("prom", &format!("http://{from}"), "1s"));
    let message = reason(&ns, "scrape", "SourceRedirected", 60).await;
    assert_eq!(
        message,
        format!(
            "http://{from}/metrics answered HTTP 307, a redirect; redirects are not followed: use the final address"
        )
    );
    reason(&ns, "prom", "SourceRedirected", 60).await;
    assert!(from_hits.of("/metrics") > 0 && from_hits.of("/api/v1/query") > 0);
    assert_eq!((target_hits.of("/metrics"), target_hits.of("/api/v1/query")), (0, 0), "a redirect was followed");
    op.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_byte_of_an_answer_reaches_status_events_or_the_info_log() {
    let ns = setup("src_marker").await;
    let marker = format!("BODY-MARKER-{}-{}", std::process::id(), jiff::Timestamp::now().as_millisecond());
    let m = marker.clone();
    let router = Router::new()
        .route(
            "/fail",
            get({
                let m = m.clone();
                move || std::future::ready((StatusCode::INTERNAL_SERVER_ERROR, m.clone()))
            }),
        )
        .route(
            "/garbage",
            get({
                let m = m.clone();
                move || std::future::ready(format!("{METRIC}{{api_key=\"a\"}} 1\n{METRIC}{{api_key=\"{m}\" 2\n"))
            }),
        )
        .route(
            "/rejects/api/v1/query",
            get({
                let m = m.clone();
                move || {
                    let body = format!(r#"{{"status":"error","errorType":"bad_data","error":"{m}"}}"#);
                    std::future::ready((StatusCode::BAD_REQUEST, body))
                }
            }),
        )
        .route(
            "/odd/api/v1/query",
            get({
                let m = m.clone();
                move || {
                    let body = format!(r#"{{"status":"success","data":{{"resultType":"{m}","result":[]}}}}"#);
                    std::future::ready(body)
                }
            }),
        );
    let (addr, hits) = serve(router).await;
    let mut op = operator("sources-marker", &[&ns], true);
    apply(&ns, &scrape("fail", &format!("http://{addr}/fail"), "1s"));
    apply(&ns, &scrape("garbage", &format!("http://{addr}/garbage"), "1s"));
    apply(&ns, &prometheus("rejects", &format!("http://{addr}/rejects"), "1s"));
    apply(&ns, &prometheus("odd", &format!("http://{addr}/odd"), "1s"));
    apply(&ns, &apikey("checkout", "  rateLimitPolicyRef: {name: garbage}"));

    let message = reason(&ns, "fail", "SourceHttpError", 60).await;
    assert_eq!(message, format!("http://{addr}/fail answered HTTP 500"));
    let message = reason(&ns, "garbage", "InvalidResponse", 60).await;
    assert_eq!(
        message,
        format!(
            "invalid response from http://{addr}/garbage: not the Prometheus text format at line 2 (expected ',' or \
             '}}' after label value)"
        )
    );
    let message = reason(&ns, "rejects", "QueryFailed", 60).await;
    assert_eq!(message, format!("Prometheus at http://{addr}/rejects rejected the query (HTTP 400, bad_data)"));
    let message = reason(&ns, "odd", "QueryFailed", 60).await;
    assert!(message.contains("returned a result of an unknown type"), "{message}");
    kubectl_ok(&["wait", "--for=condition=Ready", "apikey/checkout", "-n", &ns, "--timeout=60s"]);
    // A few more polls of every source, each answering the marker.
    let served = ["/fail", "/garbage", "/rejects/api/v1/query", "/odd/api/v1/query"].map(|p| hits.of(p));
    eventually(60, "three more polls of each source", || {
        ["/fail", "/garbage", "/rejects/api/v1/query", "/odd/api/v1/query"]
            .iter()
            .zip(served)
            .all(|(p, before)| hits.of(p) >= before + 3)
            .then_some(())
    })
    .await;

    let objects = kubectl_ok(&["get", "ratelimitpolicies,apikeys,events", "-n", &ns, "-o", "json"]);
    assert!(objects.contains("SourceHttpError") && objects.contains("rejected the query"), "the check reads nothing");
    assert!(!objects.contains(&marker), "an answer's bytes reached an object:\n{objects}");
    let log = op.log_text();
    assert!(log.contains("connected to Kubernetes"), "the log check reads nothing:\n{log}");
    assert!(!log.contains(&marker), "an answer's bytes reached the info log:\n{log}");
    op.kill();
}

/// `len` bytes of `unit` repeated after `head`, streamed without a Content-Length in chunks of about 64 KiB, one
/// every 4 ms (16 MiB/s): slow enough that the answers of many sources are in flight at once.
fn endless(head: &'static str, unit: &str, len: usize) -> Body {
    let chunk = Bytes::from(unit.repeat((64 * 1024 / unit.len()).max(1)));
    let count = len.div_ceil(chunk.len());
    let head = futures::stream::once(std::future::ready(Ok::<_, std::io::Error>(Bytes::from_static(head.as_bytes()))));
    let chunks = futures::stream::unfold(0, move |sent| {
        let chunk = chunk.clone();
        async move {
            if sent == count {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(4)).await;
            Some((Ok(chunk), sent + 1))
        }
    });
    Body::from_stream(futures::StreamExt::chain(head, chunks))
}

/// The operator's peak resident memory (`VmHWM`), in bytes.
fn peak_rss(op: &Operator) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", op.child.id())).expect("/proc status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    let kib: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmHWM value");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_stays_bounded_while_sources_send_hundreds_of_mib_and_a_million_series() {
    const MIB: usize = 1024 * 1024;
    const LIMIT: u64 = 256 * 1024 * 1024;
    const JSON_SOURCES: usize = 20;
    let big = setup("src_big").await;
    let normal = setup("src_normal").await;

    // 512 MiB of comment lines (no series, so only the byte cap stops it), 512 MiB of an endless Prometheus
    // answer, a page of a million series (under the byte cap), and a page of 50,000 keys.
    let million: Bytes = (0..1_000_000u32).map(|i| format!("m{{k=\"{i:x}\"}} 1\n")).collect::<String>().into();
    assert!(million.len() < 16 * MIB);
    let keys: Bytes = (0..50_000u32).map(|i| format!("{METRIC}{{api_key=\"k{i}\"}} 1\n")).collect::<String>().into();
    let padding = format!("# {}\n", "x".repeat(1000));
    let router = Router::new()
        .route("/huge", get(move || std::future::ready(endless("", &padding, 512 * MIB))))
        .route(
            "/json/api/v1/query",
            get(|| {
                let head = r#"{"status":"success","data":{"resultType":"vector","result":["#;
                std::future::ready(endless(head, r#"{"metric":{"api_key":"a"},"value":[1,"1"]},"#, 512 * MIB))
            }),
        )
        .route("/million", get(move || std::future::ready(million.clone())))
        .route("/keys", get(move || std::future::ready(keys.clone())));
    let (addr, hits) = serve(router).await;

    let mut op = crate::common::operator::start_with_env(
        "sources-memory",
        "info",
        &["--namespace", &format!("{big},{normal}"), "--concurrency", "32"],
        &[],
    );
    let gw = gateway_sim().await;
    apply(&normal, &scrape("normal", &gw.url(), "1s"));
    apply(&normal, &apikey("checkout", "  rateLimitPolicyRef: {name: normal}"));
    gw.set_rate("checkout", 2.0);
    // Twenty buffered (JSON) answers at 16 MiB each, all in flight at once (concurrency 32), would need 320 MiB:
    // the budget (64 MiB) makes them take turns, about a second each. A 10 s interval gives each poll 8 s.
    for i in 0..3 {
        apply(&big, &scrape(&format!("huge-{i}"), &format!("http://{addr}/huge"), "10s"));
    }
    for i in 0..JSON_SOURCES {
        apply(&big, &prometheus(&format!("json-{i}"), &format!("http://{addr}/json"), "10s"));
    }
    apply(&big, &scrape("million", &format!("http://{addr}/million"), "10s"));
    apply(&big, &scrape("keys", &format!("http://{addr}/keys"), "10s"));

    for i in 0..3 {
        let message = reason(&big, &format!("huge-{i}"), "ResponseTooLarge", 120).await;
        assert_eq!(message, format!("the response from http://{addr}/huge is larger than 16777216 bytes"));
    }
    for i in 0..JSON_SOURCES {
        reason(&big, &format!("json-{i}"), "ResponseTooLarge", 120).await;
    }
    let message = reason(&big, "million", "TooManySeries", 120).await;
    assert_eq!(message, format!("http://{addr}/million sent more than 100000 series"));
    reason(&big, "keys", "TooManyKeys", 120).await;

    // While the big sources keep being polled, the normal policy keeps metering its key: the key's usage follows
    // each change of its traffic. At least three changes, and until the big sources have answered 30 more times
    // (each large answer is cut at 16 MiB).
    let big_polls = || hits.of("/huge") + hits.of("/json/api/v1/query") + hits.of("/million") + hits.of("/keys");
    let polls_before = big_polls();
    for (changes, rate) in [8.0, 3.0, 9.0, 5.0, 2.0, 7.0].into_iter().cycle().enumerate() {
        if changes >= 3 && big_polls() - polls_before >= 30 {
            break;
        }
        assert!(changes < 30, "the big sources were polled only {} times", big_polls() - polls_before);
        gw.set_rate("checkout", rate);
        let what = format!("checkout's usage near {rate} req/s");
        eventually(90, &what, || {
            let rps = get_json(&normal, "apikey/checkout")?["status"]["usage"]["requestsPerSecond"].as_f64()?;
            ((rps - rate).abs() < 0.25 * rate).then_some(())
        })
        .await;
    }
    let polls = big_polls() - polls_before;
    for i in 0..3 {
        assert_eq!(usage(&big, &format!("huge-{i}")).expect("huge").1, "ResponseTooLarge");
    }

    let peak = peak_rss(&op);
    eprintln!("operator peak RSS: {} MiB after {polls} large answers", peak / MIB as u64);
    assert!(peak < LIMIT, "the operator's peak RSS is {} MiB, over the chart's 256 MiB limit", peak / MIB as u64);
    assert!(op.log_text().contains("connected to Kubernetes"));
    op.kill();
}
