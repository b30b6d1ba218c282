//! Running Keyward like a production operator: probes and metrics over HTTP, and leader election between replicas
//! of the real `keyward run` binary against the real control plane.

mod common;

use std::time::Duration;

use common::kube::{apikey, apply, eventually, get_json};
use common::operator::{Operator, start_with_args};
use common::{control_plane_with_crds, kubectl_ok, namespace};

const LOG: &str = "debug,hyper=info,tower=info,rustls=info,kube_client=info,kube_lease_manager=info";

async fn get(url: &str) -> Option<(u16, String)> {
    let resp = reqwest::get(url).await.ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.ok()?))
}

async fn wait_addr(op: &Operator) -> String {
    eventually(60, "the operator serves HTTP", || op.http_addr()).await
}

/// Sum of a counter's samples whose labels contain every one of `labels`.
fn sum(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn leader_args<'a>(ns: &'a str, lease: &'a str) -> Vec<&'a str> {
    vec![
        "--leader-elect",
        "--lease-namespace",
        ns,
        "--lease-name",
        lease,
        "--lease-duration",
        "6s",
        "--lease-grace",
        "2s",
        "--namespace",
        ns,
    ]
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
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while get(&format!("http://{addr}/readyz")).await.map(|r| r.0) != Some(200) {
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
    assert!(sum(&m, "keyward_apikeys", &["state=\"Ready\""]) >= 1.0, "{m}");
    assert_eq!(sum(&m, "keyward_leader", &[]), 1.0, "leader election off: this replica leads");
    // No key material: the Secret's key appears nowhere in the metrics.
    let secret = get_json(&ns, "secret/metered").expect("secret");
    let key = common::kube::decode(&secret, "api-key").expect("key");
    for i in 0..key.len().saturating_sub(12) {
        assert!(!m.contains(&key[i..i + 12]), "a piece of the key is in the metrics");
    }
    let (code, _) = get(&format!("http://{addr}/nope")).await.expect("404");
    assert_eq!(code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_writes_and_a_clean_shutdown_hands_over_at_once() {
    control_plane_with_crds().await;
    let ns = namespace("ops_leader_handover");
    let lease = "keyward-test";
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

    // The leader renews about once per (duration - grace) = 4 s, not in a loop: count distinct renewals in 6 s.
    let mut renewals = std::collections::BTreeSet::new();
    let until = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < until {
        if let Some(l) = get_json(&ns, &format!("lease/{lease}")) {
            renewals.insert(l["spec"]["renewTime"].as_str().unwrap_or_default().to_string());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(renewals.len() <= 4, "the Lease was renewed {} times in 6 s", renewals.len());

    // b reconciles: a manual rotation is done exactly once.
    let _ = keyward_rotate(&ns, "k");
    let ak = eventually(60, "rotated by b", || get_json(&ns, "apikey/k").filter(|a| a["status"]["rotationCount"] == 1))
        .await;
    assert_eq!(ak["status"]["rotationCount"], 1);
    let m = get(&format!("http://{b_addr}/metrics")).await.expect("metrics").1;
    assert!(sum(&m, "keyward_api_writes_total", &["kind=\"Secret\""]) >= 1.0, "b wrote the rotation:\n{m}");
    assert_eq!(sum(&m, "keyward_leader", &[]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_once_its_lease_expires() {
    control_plane_with_crds().await;
    let ns = namespace("ops_leader_killed");
    let lease = "keyward-test";
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
    let _ = keyward_rotate(&ns, "k");
    let ak = eventually(60, "rotated by b", || get_json(&ns, "apikey/k").filter(|a| a["status"]["rotationCount"] == 1))
        .await;
    assert_eq!(ak["status"]["previousKeyId"], first, "b rotated from a's key, keeping it for grace");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(get_json(&ns, "apikey/k").expect("k")["status"]["rotationCount"], 1, "rotated exactly once");
    drop(b);
}

fn keyward_rotate(ns: &str, name: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["rotate", name, "-n", ns])
        .env("KUBECONFIG", common::control_plane().kubeconfig())
        .output()
        .expect("keyward rotate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
