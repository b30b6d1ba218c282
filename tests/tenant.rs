//! Tenant safety (issue #11) with the real `keyward run` against the real control plane: an object no schema
//! would accept today (stored under an older, looser schema) cannot stop the controller for other namespaces,
//! and the administrator's floors (`--min-…`) refuse objects below them with a condition that names the flag.
//! Its own control plane: it loosens the CRDs, which every namespace sees.

mod common;

use std::time::Duration;

use common::kube::{apikey, apply, condition, eventually, get_json};
use common::ratelimit::{METRIC, gateway_sim, policy};
use common::{control_plane_with_crds, kubectl_ok, kubectl_stdin, namespace};

/// Replaces the RateLimitPolicy CRD with one whose `usage.interval` has the schema of older Keyward versions (a
/// pattern, no upper bound), stores `yaml` in `ns`, and puts the current CRD back.
async fn store_under_old_schema(ns: &str, yaml: &str) {
    let crd = "ratelimitpolicies.keyward.dev";
    let mut current: serde_json::Value =
        serde_json::from_str(&kubectl_ok(&["get", "crd", crd, "-o", "json"])).expect("crd json");
    let interval = &mut current["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["usage"]["properties"]["interval"];
    assert!(interval.is_object(), "usage.interval in the CRD schema");
    *interval = serde_json::json!({"type": "string", "nullable": true, "maxLength": 64, "pattern": "^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$"});
    if let Some(o) = current.as_object_mut() {
        o.remove("status");
    }
    let out = kubectl_stdin(&["replace", "-f", "-"], &current.to_string());
    assert!(out.status.success(), "loosen the CRD: {}", String::from_utf8_lossy(&out.stderr));
    // The API server serves the new schema a moment after the update.
    let mut stored = false;
    for _ in 0..100 {
        let out = kubectl_stdin(&["apply", "--server-side", "-n", ns, "-f", "-"], yaml);
        if out.status.success() {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let client = common::control_plane().client().await.expect("client");
    keyward::operator::crds::install(client).await.expect("reinstall the current CRDs");
    assert!(stored, "the out-of-range object could not be stored under the old schema");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_range_policy_does_not_stop_metering_in_other_namespaces() {
    control_plane_with_crds().await;
    let (healthy, hostile) = (namespace("tenant_healthy"), namespace("tenant_hostile"));
    let mut op = common::operator::start_with_args(
        "tenant-panic",
        "info,keyward=debug",
        &["--namespace", &format!("{healthy},{hostile}")],
    );
    let gw = gateway_sim().await;
    apply(
        &healthy,
        &policy(
            "metered",
            &format!(
                "  limit: {{requests: 600, period: 1m}}\n  usage:\n    interval: 1s\n    scrape: {{urls: [\"{}\"], metric: {METRIC}}}",
                gw.url()
            ),
        ),
    );
    apply(&healthy, &apikey("checkout", "  rateLimitPolicyRef: {name: metered}"));
    gw.set_rate("checkout", 2.0);
    let rps = |ns: &str| get_json(ns, "apikey/checkout")?["status"]["usage"]["requestsPerSecond"].as_f64();
    eventually(90, "the healthy policy meters its key", || rps(&healthy).filter(|r| *r > 1.0)).await;

    // The case: 100000000h panicked in time arithmetic and killed the controller for every namespace.
    store_under_old_schema(
        &hostile,
        &policy(
            "forever",
            &format!(
                "  limit: {{requests: 10, period: 1m}}\n  usage:\n    interval: 100000000h\n    scrape: {{urls: [\"{}\"], metric: {METRIC}}}",
                gw.url()
            ),
        ),
    )
    .await;
    let bad = eventually(60, "the out-of-range policy reports Ready=False", || {
        get_json(&hostile, "rlp/forever").and_then(|p| condition(&p, "Ready")).filter(|(s, ..)| s == "False")
    })
    .await;
    assert_eq!(bad.1, "InvalidSpec", "{bad:?}");
    assert!(bad.2.contains("usage.interval") && bad.2.contains("at most 24h"), "{bad:?}");

    // The healthy policy is still metered after the bad one was reconciled: a new rate shows up.
    gw.set_rate("checkout", 7.0);
    eventually(60, "the healthy policy still meters its key", || rps(&healthy).filter(|r| *r > 5.0)).await;
    assert!(op.child.try_wait().expect("wait").is_none(), "the operator exited:\n{}", op.log_text());
    let addr = op.http_addr().expect("http addr");
    let health = reqwest::get(format!("http://{addr}/healthz")).await.expect("healthz");
    assert_eq!(health.status(), 200, "{}", health.text().await.unwrap_or_default());
    assert!(!op.log_text().contains("panicked"), "{}", op.log_text());
    op.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_below_the_operator_minimums_are_refused_with_a_condition() {
    control_plane_with_crds().await;
    let ns = namespace("tenant_floors");
    let mut op = common::operator::start_with_args(
        "tenant-floors",
        "info,keyward=debug",
        &[
            "--namespace",
            &ns,
            "--min-usage-interval",
            "5s",
            "--min-rotation-interval",
            "2m",
            "--min-grace-period",
            "1m",
        ],
    );
    apply(&ns, &apikey("hasty", "  rotation: {interval: 30s}"));
    apply(&ns, &apikey("every-minute", "  rotation: {schedule: '* * * * *'}"));
    apply(&ns, &apikey("no-overlap", "  rotation: {interval: 1h, gracePeriod: 0s}"));
    apply(&ns, &apikey("every-five", "  rotation: {schedule: '*/5 * * * *'}"));
    apply(&ns, &apikey("defaults", "  rotation: {interval: 2m}"));
    apply(
        &ns,
        &policy(
            "eager",
            "  limit: {requests: 10, period: 1s}\n  usage:\n    interval: 2s\n    prometheus: {address: 'http://127.0.0.1:1', query: up}",
        ),
    );
    let ready = |kind: &str, name: &str| get_json(&ns, &format!("{kind}/{name}")).and_then(|o| condition(&o, "Ready"));
    for (kind, name, flag) in [
        ("apikey", "hasty", "--min-rotation-interval"),
        ("apikey", "every-minute", "--min-rotation-interval"),
        ("apikey", "no-overlap", "--min-grace-period"),
        ("rlp", "eager", "--min-usage-interval"),
    ] {
        let (status, reason, message) = eventually(60, &format!("{kind}/{name} refused"), || ready(kind, name)).await;
        assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidSpec"), "{kind}/{name}: {message}");
        assert!(message.contains(flag) && message.contains("below the minimum"), "{kind}/{name}: {message}");
    }
    // At or above the floors: keys are issued (a default grace of 24h is above the 1m floor).
    for name in ["every-five", "defaults"] {
        let (status, reason, message) =
            eventually(60, &format!("apikey/{name} ready"), || ready("apikey", name).filter(|(s, ..)| s == "True"))
                .await;
        assert_eq!(reason, "KeyIssued", "{name}: {status} {message}");
    }
    // No key material for the refused ones.
    for name in ["hasty", "every-minute", "no-overlap"] {
        assert!(get_json(&ns, &format!("secret/{name}")).is_none(), "{name} got a Secret");
    }
    op.terminate();
}

/// A controller that dies (here: the test suite's injected panic in every RateLimitPolicy reconcile, the way the
/// issue's overflow did) ends the process with a non-zero status, so Kubernetes restarts it; before issue #11 the
/// process kept running with the controller dead and its probes green.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_that_panics_ends_the_process_non_zero() {
    control_plane_with_crds().await;
    let ns = namespace("tenant_panic_exit");
    let mut op = common::operator::start_with_env(
        "tenant-panic-exit",
        "info",
        &["--namespace", &ns],
        &[(keyward::liveness::FAULT_VAR, "panic-in-reconcile:RateLimitPolicy")],
    );
    apply(&ns, &policy("any", "  limit: {requests: 10, period: 1m}"));
    let status = eventually(60, "the operator to exit", || op.child.try_wait().expect("wait")).await;
    assert!(!status.success(), "exited with {status:?}");
    let log = op.log_text();
    assert!(log.contains("injected panic in a RateLimitPolicy reconcile"), "{log}");
    assert!(log.contains("a controller stopped: exiting so that Kubernetes restarts the operator"), "{log}");
}

/// A reconcile that never finishes fails `/healthz` (here: the injected hang in every ApiKey reconcile, with
/// `--stuck-reconcile-after 3s`); before issue #11 liveness answered 200 while the process ran. `/readyz` is not
/// liveness and is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_reconcile_fails_liveness() {
    control_plane_with_crds().await;
    let ns = namespace("tenant_stuck");
    let mut op = common::operator::start_with_env(
        "tenant-stuck",
        "info",
        &["--namespace", &ns, "--stuck-reconcile-after", "3s"],
        &[(keyward::liveness::FAULT_VAR, "hang-in-reconcile:ApiKey")],
    );
    let addr = eventually(60, "the operator serves HTTP", || op.http_addr()).await;
    let healthz = || async {
        let r = reqwest::get(format!("http://{addr}/healthz")).await.expect("healthz");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    };
    assert_eq!(healthz().await.0, 200, "live before anything is stuck");
    apply(&ns, &apikey("stuck", ""));
    let mut last = (0, String::new());
    for _ in 0..150 {
        last = healthz().await;
        if last.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(last.0, 503, "liveness still passes with a stuck reconcile: {}", last.1);
    assert!(last.1.contains("ApiKey reconcile has been running"), "{}", last.1);
    op.terminate();
}
