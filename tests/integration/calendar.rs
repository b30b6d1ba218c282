//! Quota windows (`limit.window: Calendar`) end to end, with the real operator: each key's `usage.used`,
//! `remaining`, `windowStart` and `resetsAt` from a scrape source (accumulated, surviving an operator restart) and
//! from a real Prometheus (`usedQuery` with `increase`, and the integral of the rate query), `Exhausted` once the
//! window's requests are used, and the specs that are refused: an unknown time zone by the operator, a period that
//! is no clock unit by the API server.

use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use crate::common::kube::{apikey, apply, condition, eventually, get_json, has_event, is};
use crate::common::operator;
use crate::common::prometheus::Prometheus;
use crate::common::ratelimit::{METRIC, gateway_sim, policy};
use crate::common::{control_plane_with_crds, kubectl_stdin, namespace};

/// A key's `status.usage`, once it reports `used`.
fn usage(ns: &str, key: &str) -> Option<Value> {
    let u = get_json(ns, &format!("apikey/{key}"))?["status"]["usage"].clone();
    u["used"].is_i64().then_some(u)
}

fn time(u: &Value, field: &str) -> Timestamp {
    u[field].as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{field} in {u}"))
}

/// The window of a `24h` calendar limit in UTC: from the last midnight to the next.
fn assert_utc_day(u: &Value) {
    let (start, end) = (time(u, "windowStart"), time(u, "resetsAt"));
    assert_eq!(end.duration_since(start), SignedDuration::from_hours(24), "{u}");
    assert_eq!(start.as_second() % 86_400, 0, "the window starts at midnight UTC: {u}");
    let observed = time(u, "observedAt");
    assert!(start <= observed && observed < end, "measured inside its window: {u}");
}

fn used(u: &Value) -> i64 {
    u["used"].as_i64().expect("used")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_source_counts_the_day_and_the_count_survives_a_restart() {
    control_plane_with_crds().await;
    let ns = namespace("calendar_scrape");
    let op = operator::scoped(&ns);
    let gw = gateway_sim().await;
    let spec = format!(
        "  limit: {{requests: 3000, period: 24h, window: Calendar}}\n  usage:\n    interval: 1s\n    scrape: {{urls: [\"{}\"], metric: {METRIC}}}",
        gw.url()
    );
    apply(&ns, &policy("daily", &spec));
    apply(&ns, &apikey("checkout", "  rateLimitPolicyRef: {name: daily}"));
    // The series exists before the traffic starts, so the count starts from a measured 0.
    gw.set_rate("checkout", 0.0);
    let u = eventually(60, "checkout measured with used", || usage(&ns, "checkout")).await;
    assert_eq!((used(&u), u["remaining"].as_i64()), (0, Some(3000)), "{u}");
    assert_utc_day(&u);
    gw.set_rate("checkout", 100.0);
    let u = eventually(60, "checkout used some", || usage(&ns, "checkout").filter(|u| used(u) >= 500)).await;
    let served = gw.counter("checkout");
    eprintln!("checkout: used {} with {served:.0} served", used(&u));
    // What the status says trails the counter by what was served since the last write (a poll, at most 1% of the
    // limit and the time the write took).
    assert!((used(&u) as f64) <= served + 1.0, "used {} > served {served}", used(&u));
    assert!((used(&u) as f64) >= served - 400.0, "used {} far below served {served}", used(&u));
    assert_eq!(u["remaining"].as_i64(), Some(3000 - used(&u)), "{u}");
    assert_utc_day(&u);

    // A restart: the new process reads the count back from the status, so it goes on from there, not from 0.
    op.stop();
    let before = used(&usage(&ns, "checkout").expect("usage"));
    let restarted_at = Timestamp::now();
    let _op = operator::scoped_with(&format!("{ns}-restarted"), &ns, operator::LOG, &[]);
    let u = eventually(60, "a write by the restarted operator", || {
        usage(&ns, "checkout").filter(|u| time(u, "observedAt") > restarted_at)
    })
    .await;
    assert!(used(&u) >= before, "used fell back from {before} to {} after the restart: {u}", used(&u));

    let ak = eventually(120, "checkout Exhausted", || {
        get_json(&ns, "apikey/checkout").filter(|a| is(a, "Exhausted", "True"))
    })
    .await;
    let u = &ak["status"]["usage"];
    assert!(used(u) >= 3000 && u["remaining"].as_i64() == Some(0), "{u}");
    let (_, reason, message) = condition(&ak, "Exhausted").expect("Exhausted");
    assert_eq!(reason, "LimitReached");
    assert!(message.contains("of 3000 requests used") && message.contains("resets at"), "{message}");
    assert!(has_event(&ns, "ApiKey", "checkout", "Exhausted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_counts_the_day_with_increase_or_the_rate_integral() {
    control_plane_with_crds().await;
    let ns = namespace("calendar_prometheus");
    let _op = operator::scoped(&ns);
    let gw = gateway_sim().await;
    let mut prom = Prometheus::start(&[gw.addr().to_string()]);
    // 20000 a day: `used` is written each time it moves by 1% of that (200 requests, 4 s of this traffic).
    let source = |used_query: &str| {
        format!(
            "  limit: {{requests: 20000, period: 24h, window: Calendar, timeZone: UTC}}\n  usage:\n    interval: 1s\n    prometheus:\n      address: {}\n      query: sum by (api_key) (rate({METRIC}[5s])){used_query}",
            prom.address()
        )
    };
    let increase = format!("\n      usedQuery: sum by (api_key) (increase({METRIC}[$window]))");
    apply(&ns, &policy("counted", &source(&increase)));
    apply(&ns, &policy("integrated", &source("")));
    apply(&ns, &apikey("checkout", "  rateLimitPolicyRef: {name: counted}"));
    apply(&ns, &apikey("search", "  rateLimitPolicyRef: {name: integrated}"));
    gw.set_rate("checkout", 50.0);
    gw.set_rate("search", 50.0);
    for key in ["checkout", "search"] {
        let u = eventually(120, &format!("{key} used 2000"), || usage(&ns, key).filter(|u| used(u) >= 2000)).await;
        let served = gw.counter(key);
        // Prometheus extrapolates (`increase`) or samples the rate every step (the integral: 9 s for a day polled
        // every second, so up to a step of traffic either way): close to the requests served, not exact.
        let error = (used(&u) as f64 - served).abs();
        eprintln!("{key}: used {} with {served:.0} served", used(&u));
        assert!(error <= 0.25 * served + 500.0, "{key}: used {} against {served} served: {u}", used(&u));
        assert_eq!(u["remaining"].as_i64(), Some(20_000 - used(&u)), "{u}");
        assert_utc_day(&u);
    }
    prom.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_time_zone_and_a_period_that_is_no_clock_unit_are_refused() {
    control_plane_with_crds().await;
    let ns = namespace("calendar_refused");
    let _op = operator::scoped(&ns);
    // The schema checks only the shape of a time zone: the operator refuses one the tz database does not know.
    apply(
        &ns,
        &policy("atlantis", "  limit: {requests: 10, period: 24h, window: Calendar, timeZone: Europe/Atlantis}"),
    );
    let p = eventually(60, "Ready=False", || get_json(&ns, "rlp/atlantis").filter(|p| is(p, "Ready", "False"))).await;
    let (_, reason, message) = condition(&p, "Ready").expect("Ready");
    assert_eq!(reason, "InvalidSpec");
    assert!(message.contains("limit.timeZone") && message.contains("Europe/Atlantis"), "{message}");
    // A period that is no clock hour, day or month is refused by the API server, naming the field.
    let bad = policy("twohourly", "  limit: {requests: 10, period: 2h, window: Calendar}");
    let out = kubectl_stdin(&["apply", "-n", &ns, "-f", "-"], &bad);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "2h under Calendar was accepted");
    assert!(stderr.contains("limit.period must be 1h, 24h or 1mo"), "{stderr}");
    // A usedQuery without its placeholder would count a fixed range, not the window.
    let fixed = policy(
        "fixed",
        "  limit: {requests: 10, period: 24h, window: Calendar}\n  usage:\n    prometheus: {address: 'http://p:9090', query: up, usedQuery: 'increase(x[1d])'}",
    );
    let out = kubectl_stdin(&["apply", "-n", &ns, "-f", "-"], &fixed);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("usedQuery must contain $window"), "{stderr}");
}
