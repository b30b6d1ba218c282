//! The RateLimitPolicy controller against the real control plane, a real Prometheus server and a simulated gateway
//! metrics endpoint that the tests drive, with the real `keyward run` binary as the operator. Replicas, statuses and
//! events are read back with kubectl, the way a user would.

use std::time::Duration;

use crate::common::kube::{apikey, apply, condition, eventually, get_json, has_event, is};
use crate::common::operator::{self, Operator};
use crate::common::prometheus::Prometheus;
use crate::common::ratelimit::{METRIC, gateway_sim, hpa, policy, replicas, workload};
use crate::common::{control_plane_with_crds, kubectl, kubectl_ok, namespace};

/// A namespace for `test`, and an operator that watches it (it stops when the test drops it).
async fn setup(test: &str) -> (String, Operator) {
    control_plane_with_crds().await;
    let ns = namespace(test);
    let op = operator::scoped(&ns);
    (ns, op)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_source_marks_keys_near_limit_and_exhausted_and_clears_them() {
    let (ns, _op) = setup("rlp_scrape_keys").await;
    let gw = gateway_sim().await;
    apply(
        &ns,
        &policy(
            "standard",
            &format!(
                "  limit: {{requests: 600, period: 1m}}\n  usage:\n    interval: 1s\n    scrape: {{urls: [\"{}\"], metric: {METRIC}}}",
                gw.url()
            ),
        ),
    );
    apply(&ns, &apikey("checkout", "  rateLimitPolicyRef: {name: standard}"));
    apply(&ns, &apikey("search", "  rateLimitPolicyRef: {name: standard}"));
    kubectl_ok(&["wait", "--for=condition=Ready", "apikey/search", "-n", &ns, "--timeout=60s"]);
    // `checkout` is labelled by name; `search` by its keyId, as a gateway that only sees the key would do.
    let search_id =
        get_json(&ns, "apikey/search").expect("search")["status"]["keyId"].as_str().expect("keyId").to_string();
    gw.set_rate("checkout", 9.0);
    gw.set_rate(&search_id, 2.0);

    let ak = eventually(60, "checkout NearLimit", || {
        get_json(&ns, "apikey/checkout").filter(|a| is(a, "NearLimit", "True"))
    })
    .await;
    assert!(is(&ak, "Exhausted", "False"), "{:?}", ak["status"]);
    let u = &ak["status"]["usage"];
    assert_eq!(u["limit"].as_f64(), Some(10.0), "600/1m is 10 req/s");
    let rps = u["requestsPerSecond"].as_f64().expect("rps");
    assert!((8.0..=10.0).contains(&rps), "about 9 req/s: {rps}");
    let search = eventually(30, "search usage by keyId", || {
        get_json(&ns, "apikey/search")
            .filter(|a| a["status"]["usage"]["requestsPerSecond"].as_f64().is_some_and(|r| r > 1.0))
    })
    .await;
    assert!(is(&search, "NearLimit", "False"));
    assert!(has_event(&ns, "ApiKey", "checkout", "NearLimit"));

    gw.set_rate("checkout", 15.0);
    eventually(60, "checkout Exhausted", || get_json(&ns, "apikey/checkout").filter(|a| is(a, "Exhausted", "True")))
        .await;
    let p = eventually(30, "policy counts the exhausted key", || {
        get_json(&ns, "rlp/standard").filter(|p| p["status"]["keysExhausted"] == 1)
    })
    .await;
    assert_eq!(p["status"]["keysNearLimit"], 1);
    assert_eq!(p["status"]["effectiveLimit"], "600/1m");
    assert!(is(&p, "UsageAvailable", "True") && is(&p, "Ready", "True"), "{:?}", p["status"]);
    assert!(has_event(&ns, "ApiKey", "checkout", "Exhausted"));

    // Usage falls: both conditions clear on their own.
    gw.set_rate("checkout", 1.0);
    eventually(60, "checkout back to normal", || {
        get_json(&ns, "apikey/checkout").filter(|a| is(a, "Exhausted", "False") && is(a, "NearLimit", "False"))
    })
    .await;
    // The Ready condition of the ApiKey controller is untouched by the usage writes.
    let ak = get_json(&ns, "apikey/checkout").expect("checkout");
    assert!(is(&ak, "Ready", "True"), "{:?}", ak["status"]);

    // Unlinking the key clears what the policy wrote.
    kubectl_ok(&[
        "patch",
        "apikey",
        "checkout",
        "-n",
        &ns,
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/rateLimitPolicyRef"}]"#,
    ]);
    eventually(60, "usage cleared", || {
        get_json(&ns, "apikey/checkout")
            .filter(|a| a["status"]["usage"].is_null() && condition(a, "NearLimit").is_none())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_usage_scales_the_gateway_up_then_down_after_the_window_and_holds_without_data() {
    let (ns, _op) = setup("rlp_prometheus_scaling").await;
    let gw = gateway_sim().await;
    let mut prom = Prometheus::start(&[gw.addr().to_string()]);
    apply(&ns, &workload("Deployment", "gateway", Some(1)));
    apply(
        &ns,
        &policy(
            "gw",
            &format!(
                "  limit: {{requests: 1000, period: 1s}}\n  usage:\n    interval: 1s\n    prometheus:\n      address: {}\n      query: sum by (api_key) (rate({METRIC}[5s]))\n  scaling:\n    targetRef: {{apiVersion: apps/v1, kind: Deployment, name: gateway}}\n    minReplicas: 1\n    maxReplicas: 10\n    capacityPerReplica: {{requests: 100, period: 1s}}\n    targetUtilization: 80\n    scaleDown: {{stabilizationWindow: 8s}}",
                prom.address()
            ),
        ),
    );
    apply(&ns, &apikey("checkout", "  rateLimitPolicyRef: {name: gw}"));
    // 400 req/s at 80 per replica: 5 replicas.
    gw.set_rate("checkout", 400.0);
    eventually(90, "5 replicas", || replicas(&ns, "deployment/gateway").filter(|&r| r == 5)).await;
    let p = get_json(&ns, "rlp/gw").expect("policy");
    assert_eq!(p["status"]["currentReplicas"], 5);
    assert!(is(&p, "ScalingActive", "True") && is(&p, "ScalingConflict", "False"), "{:?}", p["status"]);
    assert!(has_event(&ns, "RateLimitPolicy", "gw", "ScaledUp"));
    let up_at: jiff::Timestamp = p["status"]["lastScaleTime"].as_str().expect("lastScaleTime").parse().expect("time");
    let table = kubectl_ok(&["get", "rlp", "gw", "-n", &ns]);
    assert!(table.contains("gateway") && table.contains("1000/1s"), "{table}");

    // 100 req/s needs 2 replicas, but only after the 8 s scale-down window.
    gw.set_rate("checkout", 100.0);
    let p =
        eventually(90, "scaled down to 2", || get_json(&ns, "rlp/gw").filter(|p| p["status"]["currentReplicas"] == 2))
            .await;
    assert_eq!(replicas(&ns, "deployment/gateway"), Some(2));
    let down_at: jiff::Timestamp = p["status"]["lastScaleTime"].as_str().expect("lastScaleTime").parse().expect("time");
    // The stabilizer recorded 5 at `up_at`; a scale-down needs every recommendation in the window below 5.
    assert!(down_at.duration_since(up_at) >= jiff::SignedDuration::from_secs(8), "down {down_at} vs up {up_at}");
    assert!(has_event(&ns, "RateLimitPolicy", "gw", "ScaledDown"));

    // Prometheus goes away while traffic is zero: no data is not zero traffic, replicas hold.
    gw.set_rate("checkout", 0.0);
    prom.stop();
    let p =
        eventually(60, "UsageAvailable=False", || get_json(&ns, "rlp/gw").filter(|p| is(p, "UsageAvailable", "False")))
            .await;
    assert_eq!(condition(&p, "UsageAvailable").map(|c| c.1).as_deref(), Some("SourceUnreachable"), "{:?}", p["status"]);
    assert!(is(&p, "Ready", "False"));
    // Well past the scale-down window, replicas are still 2.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(replicas(&ns, "deployment/gateway"), Some(2));
    let p = get_json(&ns, "rlp/gw").expect("policy");
    assert_eq!(condition(&p, "ScalingActive").map(|c| c.1).as_deref(), Some("UsageUnavailable"), "{:?}", p["status"]);

    // Deleting the policy leaves the replicas as they are.
    kubectl_ok(&["delete", "rlp", "gw", "-n", &ns]);
    // ... and the key's usage, written by the policy, goes with it.
    eventually(60, "usage cleared with the policy", || {
        get_json(&ns, "apikey/checkout")
            .filter(|a| a["status"]["usage"].is_null() && condition(a, "Exhausted").is_none())
    })
    .await;
    assert_eq!(replicas(&ns, "deployment/gateway"), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_raises_the_limit_and_reverts_on_its_own() {
    let (ns, _op) = setup("rlp_override").await;
    let gw = gateway_sim().await;
    let until = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(20);
    let until = jiff::Timestamp::from_second(until.as_second()).expect("until");
    apply(
        &ns,
        &policy(
            "boosted",
            &format!(
                "  limit: {{requests: 600, period: 1m}}\n  temporaryOverrides:\n  - {{requests: 6000, period: 1m, until: \"{until}\", reason: launch day}}\n  usage:\n    interval: 1s\n    scrape: {{urls: [\"{}\"], metric: {METRIC}}}",
                gw.url()
            ),
        ),
    );
    apply(&ns, &apikey("checkout", "  rateLimitPolicyRef: {name: boosted}"));
    gw.set_rate("checkout", 20.0);
    let p = eventually(60, "override active", || {
        get_json(&ns, "rlp/boosted").filter(|p| p["status"]["effectiveLimit"] == "6000/1m")
    })
    .await;
    assert!(is(&p, "OverrideActive", "True"), "{:?}", p["status"]);
    let ak = eventually(30, "key sees the boosted limit", || {
        get_json(&ns, "apikey/checkout").filter(|a| a["status"]["usage"]["limit"].as_f64() == Some(100.0))
    })
    .await;
    assert!(is(&ak, "Exhausted", "False"), "20 req/s is within 100 req/s");
    assert!(has_event(&ns, "RateLimitPolicy", "boosted", "OverrideStarted"));

    let p = eventually(60, "override expired", || {
        get_json(&ns, "rlp/boosted").filter(|p| p["status"]["effectiveLimit"] == "600/1m")
    })
    .await;
    assert!(jiff::Timestamp::now() >= until, "reverted no earlier than `until`");
    assert!(is(&p, "OverrideActive", "False"));
    assert!(has_event(&ns, "RateLimitPolicy", "boosted", "OverrideExpired"));
    eventually(30, "key exhausted at the normal limit", || {
        get_json(&ns, "apikey/checkout")
            .filter(|a| a["status"]["usage"]["limit"].as_f64() == Some(10.0) && is(a, "Exhausted", "True"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hpa_on_the_target_is_a_conflict_and_nothing_is_written() {
    let (ns, _op) = setup("rlp_hpa_conflict").await;
    let gw = gateway_sim().await;
    apply(&ns, &workload("Deployment", "gateway", Some(2)));
    apply(&ns, &hpa("gateway"));
    apply(
        &ns,
        &policy(
            "gw",
            &format!(
                "  limit: {{requests: 100, period: 1s}}\n  usage:\n    interval: 1s\n    scrape: {{urls: [\"{}\"], metric: {METRIC}}}\n  scaling:\n    targetRef: {{apiVersion: apps/v1, kind: Deployment, name: gateway}}\n    maxReplicas: 10\n    capacityPerReplica: {{requests: 10, period: 1s}}",
                gw.url()
            ),
        ),
    );
    gw.set_rate("a", 500.0);
    let p = eventually(60, "ScalingConflict", || get_json(&ns, "rlp/gw").filter(|p| is(p, "ScalingConflict", "True")))
        .await;
    assert!(is(&p, "ScalingActive", "False") && is(&p, "Ready", "False"), "{:?}", p["status"]);
    assert!(has_event(&ns, "RateLimitPolicy", "gw", "ScalingConflict"));
    eventually(30, "usage is read", || {
        get_json(&ns, "rlp/gw").filter(|p| p["status"]["observedUsage"].as_f64().is_some_and(|u| u > 100.0))
    })
    .await;
    assert_eq!(replicas(&ns, "deployment/gateway"), Some(2), "no write while the HPA exists");

    // Remove the HPA: Keyward takes over.
    kubectl_ok(&["delete", "hpa", "gateway", "-n", &ns]);
    eventually(60, "scaled to the maximum", || replicas(&ns, "deployment/gateway").filter(|&r| r == 10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statefulset_target_missing_at_first_is_a_condition_then_scales() {
    let (ns, _op) = setup("rlp_statefulset").await;
    let gw = gateway_sim().await;
    apply(
        &ns,
        &policy(
            "gw",
            &format!(
                "  limit: {{requests: 100, period: 1s}}\n  usage:\n    interval: 1s\n    scrape: {{urls: [\"{}\"], metric: {METRIC}}}\n  scaling:\n    targetRef: {{apiVersion: apps/v1, kind: StatefulSet, name: gateway}}\n    minReplicas: 1\n    maxReplicas: 6\n    capacityPerReplica: {{requests: 60, period: 1m}}\n    targetUtilization: 100\n    scaleDown: {{stabilizationWindow: 5s}}",
                gw.url()
            ),
        ),
    );
    gw.set_rate("a", 3.0);
    let p = eventually(60, "TargetNotFound", || {
        get_json(&ns, "rlp/gw").filter(|p| condition(p, "ScalingActive").is_some_and(|c| c.1 == "TargetNotFound"))
    })
    .await;
    assert!(is(&p, "Ready", "False"));
    apply(&ns, &workload("StatefulSet", "gateway", Some(1)));
    // 3 req/s at 1 req/s per replica: 3 replicas. NB: on a loaded machine one 1 s scrape interval can measure a
    // rate a third too high (the rate is timed at poll start, not at the response), so the short scale-down window
    // lets an overshoot settle back to 3.
    eventually(60, "3 replicas", || replicas(&ns, "statefulset/gateway").filter(|&r| r == 3)).await;
    let p = get_json(&ns, "rlp/gw").expect("policy");
    assert!(is(&p, "Ready", "True"), "{:?}", p["status"]);

    // An unknown kind is a clear condition, and the operator carries on.
    let out = kubectl(&[
        "patch",
        "rlp",
        "gw",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"scaling":{"targetRef":{"apiVersion":"example.com/v1","kind":"Gateway","name":"x"}}}}"#,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually(60, "InvalidTarget", || {
        get_json(&ns, "rlp/gw").filter(|p| condition(p, "ScalingActive").is_some_and(|c| c.1 == "InvalidTarget"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_source_does_not_stall_other_policies_or_keys() {
    let (ns, _op) = setup("rlp_hanging_source").await;
    // Accepts connections (the kernel's backlog) and never answers.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hole = format!("http://{}/metrics", black_hole.local_addr().expect("addr"));
    let gw = gateway_sim().await;
    let scrape = |url: &str| {
        format!(
            "  limit: {{requests: 100, period: 1s}}\n  usage:\n    interval: 2s\n    scrape: {{urls: [\"{url}\"], metric: {METRIC}}}"
        )
    };
    apply(&ns, &policy("stuck", &scrape(&hole)));
    apply(&ns, &policy("fine", &scrape(&gw.url())));
    apply(&ns, &apikey("a", "  rateLimitPolicyRef: {name: fine}"));
    apply(&ns, &apikey("b", "  rateLimitPolicyRef: {name: stuck}"));
    gw.set_rate("a", 50.0);
    eventually(60, "the working policy measures its key", || {
        get_json(&ns, "apikey/a")
            .filter(|a| a["status"]["usage"]["requestsPerSecond"].as_f64().is_some_and(|r| r > 20.0))
    })
    .await;
    // The stuck one times out and says so; its key is still issued.
    let p = eventually(60, "SourceTimeout", || {
        get_json(&ns, "rlp/stuck").filter(|p| condition(p, "UsageAvailable").is_some_and(|c| c.1 == "SourceTimeout"))
    })
    .await;
    assert!(is(&p, "Ready", "False"));
    kubectl_ok(&["wait", "--for=condition=Ready", "apikey/b", "-n", &ns, "--timeout=60s"]);
    let b = get_json(&ns, "apikey/b").expect("b");
    assert!(b["status"]["usage"].is_null(), "no usage is invented without data: {:?}", b["status"]);
    drop(black_hole);
}
