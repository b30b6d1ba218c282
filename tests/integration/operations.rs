//! Running Keyward like a production operator: probes and metrics over HTTP, and leader election between replicas
//! of the real `keyward run` binary against the real control plane.

use std::time::Duration;

use crate::common::http::{get_text as get, sum, wait_status};
use crate::common::kube::{apikey, apply, eventually, get_json, rotation_count};
use crate::common::leak::Scanner;
use crate::common::operator::{LOG, Operator, leader_args, start_with_args};
use crate::common::{control_plane_with_crds, keyward_rotate, kubectl_ok, namespace};

async fn wait_addr(op: &Operator) -> String {
    op.wait_http_addr().await
}

fn holder(ns: &str, lease: &str) -> Option<String> {
    get_json(ns, &format!("lease/{lease}"))?["spec"]["holderIdentity"].as_str().map(str::to_string)
}

fn identity(op: &Operator) -> Option<String> {
    let text = op.log_text();
    let line = text.lines().find(|l| l.contains("standing by for the leader Lease"))?;
    let at = line.find("identity=")? + "identity=".len();
    Some(line[at..].split_whitespace().next()?.trim_matches('"').to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics() {
    control_plane_with_crds().await;
    let ns = namespace("ops_probes");
    let op = start_with_args("ops-probes", LOG, &["--namespace", &ns]);
    let addr = wait_addr(&op).await;
    let (code, body) = get(&format!("http://{addr}/healthz")).await.expect("healthz");
    assert_eq!((code, body.trim()), (200, "ok"));
    wait_status(&format!("http://{addr}/readyz"), 200, 60, "at start").await;
    apply(&ns, &apikey("metered", "  rotation: {interval: 1h}"));
    kubectl_ok(&["wait", "--for=condition=Ready", "apikey/metered", "-n", &ns, "--timeout=60s"]);
    let resp = reqwest::get(format!("http://{addr}/metrics")).await.expect("metrics");
    let ctype = resp.headers()["content-type"].to_str().expect("content type").to_string();
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    let m = resp.text().await.expect("body");
    assert!(m.trim_end().ends_with("# EOF"), "OpenMetrics ends with # EOF");
    assert!(sum(&m, "keyward_reconciles_total", &["controller=\"apikey\"", "result=\"success\""]) >= 1.0, "{m}");
    assert!(sum(&m, "keyward_api_writes_total", &["controller=\"apikey\"", "kind=\"Secret\""]) >= 1.0, "{m}");
    assert!(m.contains("keyward_reconcile_duration_seconds_bucket"), "{m}");
    let next = m
        .lines()
        .find(|l| l.starts_with("keyward_apikey_next_rotation_seconds") && l.contains("name=\"metered\""))
        .unwrap_or_else(|| panic!("next rotation of the key:\n{m}"));
    let secs: f64 = next.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("value");
    assert!(secs > 3000.0 && secs <= 3600.0, "about an hour: {next}");
    // The same as an absolute time, the key's readiness with its reason, when it was issued, and the build.
    let now = jiff::Timestamp::now().as_second() as f64;
    let series = |name: &str| sum(&m, name, &["namespace=", "name=\"metered\""]);
    let at = series("keyward_apikey_next_rotation_timestamp_seconds");
    assert!(at > now + 3000.0 && at <= now + 3600.0, "about an hour from now: {at} (now {now})");
    let issued = series("keyward_apikey_last_rotation_timestamp_seconds");
    assert!(issued > now - 600.0 && issued <= now, "issued moments ago: {issued} (now {now})");
    assert_eq!(sum(&m, "keyward_apikey_ready", &["name=\"metered\"", "reason=\"KeyIssued\""]), 1.0, "{m}");
    let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
    assert_eq!(sum(&m, "keyward_build_info", &[&version]), 1.0, "{m}");
    assert!(sum(&m, "keyward_apikeys", &["state=\"Ready\""]) >= 1.0, "{m}");
    assert_eq!(sum(&m, "keyward_leader", &[]), 1.0, "leader election off: this replica leads");
    // No key material: no piece of the Secret's key, in any encoding, appears in the metrics (every window of the
    // key, the last one included: the scanner's self-check plants each form).
    let secret = get_json(&ns, "secret/metered").expect("secret");
    let key = crate::common::kube::decode(&secret, "api-key").expect("key");
    let scanner = Scanner::new(&[key.clone()].into());
    scanner.self_check(&key);
    assert_eq!(scanner.hits(&key.as_bytes()[key.len() - 12..]).len(), 1, "the last window of the key is scanned");
    assert!(scanner.hits(m.as_bytes()).is_empty(), "a piece of the key is in the metrics");
    let (code, _) = get(&format!("http://{addr}/nope")).await.expect("404");
    assert_eq!(code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_writes_and_a_clean_shutdown_hands_over_at_once() {
    control_plane_with_crds().await;
    let ns = namespace("ops_leader_handover");
    let lease = "keyward-test-handover";
    let mut a = start_with_args("ops-leader-a", LOG, &leader_args(&ns, lease));
    let a_id = eventually(60, "a's identity", || identity(&a)).await;
    eventually(60, "a leads", || holder(&ns, lease).filter(|h| *h == a_id)).await;
    let b = start_with_args("ops-leader-b", LOG, &leader_args(&ns, lease));
    let b_id = eventually(60, "b's identity", || identity(&b)).await;
    let b_addr = wait_addr(&b).await;

    apply(&ns, &apikey("k", "  rotation: {interval: 1h}"));
    kubectl_ok(&["wait", "--for=condition=Ready", "apikey/k", "-n", &ns, "--timeout=60s"]);
    // The standby is ready (a healthy standby), and it has written nothing.
    let (code, _) = get(&format!("http://{b_addr}/readyz")).await.expect("readyz");
    assert_eq!(code, 200, "a standby is ready");
    let m = get(&format!("http://{b_addr}/metrics")).await.expect("metrics").1;
    assert_eq!(sum(&m, "keyward_api_writes_total", &[]), 0.0, "the standby wrote:\n{m}");
    assert_eq!(sum(&m, "keyward_leader", &[]), 0.0);
    assert_eq!(holder(&ns, lease).as_deref(), Some(a_id.as_str()));

    // SIGTERM: a drains, releases the Lease, exits 0; b takes over without waiting for the Lease to expire.
    a.terminate();
    let a_log = a.log.clone();
    let status = tokio::task::spawn_blocking(move || {
        let mut a = a;
        a.child.wait()
    })
    .await
    .expect("join")
    .expect("wait");
    assert!(status.success(), "a exits cleanly: {status}");
    eventually(60, "b leads", || holder(&ns, lease).filter(|h| *h == b_id)).await;
    let log = std::fs::read_to_string(&a_log).expect("log");
    assert!(log.contains("released the Lease"), "{log}");

    // The leader renews about once per (duration - grace) = 4 s: not in a loop, and not so rarely that the 6 s
    // Lease lapses. Watch 13 s of renewals: at least 2 (so at least one gap is measured), at most 5, and every gap
    // between two renewals between 2 s and the 6 s Lease duration.
    let mut renewals = std::collections::BTreeSet::new();
    let until = std::time::Instant::now() + Duration::from_secs(13);
    while std::time::Instant::now() < until {
        if let Some(t) =
            get_json(&ns, &format!("lease/{lease}")).and_then(|l| l["spec"]["renewTime"].as_str().map(str::to_string))
        {
            renewals.insert(t.parse::<jiff::Timestamp>().expect("renewTime"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!((3..=6).contains(&renewals.len()), "{} distinct renewTimes in 13 s: {renewals:?}", renewals.len());
    let times: Vec<jiff::Timestamp> = renewals.into_iter().collect();
    for w in times.windows(2) {
        let gap = w[1].duration_since(w[0]);
        assert!(gap >= jiff::SignedDuration::from_secs(2), "renewed {gap:#} after the last renewal: a renewal loop");
        assert!(gap <= jiff::SignedDuration::from_secs(6), "renewed {gap:#} after the last: the Lease lapsed");
    }

    // b reconciles: a manual rotation is done exactly once.
    rotated_once(&ns, "k").await;
    let m = get(&format!("http://{b_addr}/metrics")).await.expect("metrics").1;
    assert!(sum(&m, "keyward_api_writes_total", &["kind=\"Secret\""]) >= 1.0, "b wrote the rotation:\n{m}");
    assert_eq!(sum(&m, "keyward_leader", &[]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_once_its_lease_expires() {
    control_plane_with_crds().await;
    let ns = namespace("ops_leader_killed");
    let lease = "keyward-test-killed";
    let mut a = start_with_args("ops-killed-a", LOG, &leader_args(&ns, lease));
    let a_id = eventually(60, "a's identity", || identity(&a)).await;
    eventually(60, "a leads", || holder(&ns, lease).filter(|h| *h == a_id)).await;
    let b = start_with_args("ops-killed-b", LOG, &leader_args(&ns, lease));
    let b_id = eventually(60, "b's identity", || identity(&b)).await;
    apply(&ns, &apikey("k", "  rotation: {interval: 1h}"));
    kubectl_ok(&["wait", "--for=condition=Ready", "apikey/k", "-n", &ns, "--timeout=60s"]);
    let first = get_json(&ns, "apikey/k").expect("k")["status"]["keyId"].clone();

    a.kill();
    eventually(60, "b leads after a's Lease expired", || holder(&ns, lease).filter(|h| *h == b_id)).await;
    let ak = rotated_once(&ns, "k").await;
    assert_eq!(ak["status"]["previousKeyId"], first, "b rotated from a's key, keeping it for grace");
    drop(b);
}

/// Requests a rotation of `name` with `keyward rotate`, waits until it is answered, lets the operator settle
/// (5 s without a change of the key's status or Secret), and asserts it rotated exactly once.
async fn rotated_once(ns: &str, name: &str) -> serde_json::Value {
    let request = keyward_rotate(ns, name);
    eventually(60, "the rotation request answered", || {
        get_json(ns, &format!("apikey/{name}")).filter(|a| a["status"]["lastRotateRequest"] == request.as_str())
    })
    .await;
    let state = || {
        let ak = get_json(ns, &format!("apikey/{name}")).expect("apikey");
        let s = get_json(ns, &format!("secret/{name}")).expect("secret");
        (ak["status"].clone(), s["metadata"]["resourceVersion"].clone())
    };
    // Settled: the status and the Secret stay the same for 5 s in a row (a late duplicate would change both).
    let mut last = state();
    let mut since = std::time::Instant::now();
    let deadline = since + Duration::from_secs(60);
    while since.elapsed() < Duration::from_secs(5) {
        assert!(std::time::Instant::now() < deadline, "the key never settled after the rotation");
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = state();
        if now != last {
            (last, since) = (now, std::time::Instant::now());
        }
    }
    let ak = get_json(ns, &format!("apikey/{name}")).expect("apikey");
    assert_eq!(rotation_count(&ak), 1, "one request, exactly one rotation: {:?}", ak["status"]);
    let s = get_json(ns, &format!("secret/{name}")).expect("secret");
    assert_eq!(s["metadata"]["annotations"]["keyward.dev/rotation-count"], "1");
    ak
}
