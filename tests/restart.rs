//! Fault: the API server restarts mid-run. It is stopped (killed, in practice: see `ControlPlane::stop_apiserver`)
//! for longer than a watch survives, then started again on the same etcd, port and certificates. The operator must
//! ride it out in the same process, with no restart of its own, and converge afterwards: a key created after the
//! outage is issued, a rotation requested after it happens exactly once, an interval key keeps rotating, and
//! `/readyz` answers 200.
//!
//! This binary stops its control plane's API server, so it owns its control plane and holds a single test.

mod common;

use std::time::{Duration, Instant};

use common::kube::{apikey, apply, eventually, get_json, issued, rotation_count};
use common::{control_plane_with_crds, http, kubectl, kubectl_ok, namespace, operator};
use serde_json::Value;

/// How long the API server stays down: longer than a watch request lives, so every watch of the operator fails and
/// its watchers back off.
const OUTAGE: Duration = Duration::from_secs(15);

/// Convergence bound after the restart: kube-rs watchers back off up to ~30 s, and reconciles that failed during
/// the outage back off per object.
const CONVERGE_SECS: u64 = 120;

fn apikey_json(ns: &str, name: &str) -> Value {
    get_json(ns, &format!("apikey/{name}")).unwrap_or_else(|| panic!("apikey/{name} exists"))
}

fn assert_alive(op: &mut operator::Operator, when: &str) {
    let exited = op.child.try_wait().expect("try_wait");
    assert!(exited.is_none(), "the operator exited {when} ({exited:?}); its log: {}", op.log.display());
}

#[tokio::test]
async fn operator_recovers_from_an_api_server_restart() {
    let cp = control_plane_with_crds().await;
    let ns = namespace("restart");
    let mut op = operator::start("restart");
    let addr = op.wait_http_addr().await;
    http::wait_status(&format!("http://{addr}/readyz"), 200, 60, "at start").await;

    // Before: an interval key, a key rotated only on request, a plain key.
    apply(&ns, &apikey("ticking", "  rotation: {interval: 5s, gracePeriod: 2s}"));
    apply(&ns, &apikey("manual", "  rotation: {gracePeriod: 0s}"));
    apply(&ns, &apikey("plain", ""));
    for name in ["ticking", "manual", "plain"] {
        eventually(60, &format!("apikey/{name} issued before the outage"), || issued(&ns, name)).await;
    }
    let manual_before = apikey_json(&ns, "manual");
    let plain_before = apikey_json(&ns, "plain");

    // The outage.
    tokio::task::spawn_blocking(move || cp.stop_apiserver(Duration::from_secs(60)))
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("stop the API server: {e}"));
    let down = kubectl(&["get", "namespace", &ns, "--request-timeout=5s"]);
    assert!(!down.status.success(), "the API server still answers after it was stopped");
    let stopped_at = Instant::now();
    while stopped_at.elapsed() < OUTAGE {
        assert_alive(&mut op, "while the API server was down");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_alive(&mut op, "while the API server was down");
    tokio::task::spawn_blocking(move || cp.start_apiserver(Duration::from_secs(180)))
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("start the API server again: {e}"));

    let restarted = Instant::now();
    eprintln!("the API server is back, {:.1?} after it was stopped", stopped_at.elapsed());

    // After: a new key, a rotation request, and the interval key keeps going.
    let ticking_at_restart = rotation_count(&apikey_json(&ns, "ticking"));
    apply(&ns, &apikey("fresh", ""));
    kubectl_ok(&["annotate", "apikey/manual", "-n", &ns, "keyward.dev/rotate=after-restart"]);

    let log = op.log.display().to_string();
    let what = |w: &str| format!("{w} (operator log: {log})");
    let fresh =
        eventually(CONVERGE_SECS, &what("the ApiKey created after the restart to be issued"), || issued(&ns, "fresh"))
            .await;
    assert!(fresh["status"]["keyId"].is_string());
    eprintln!("the new key was issued {:.1?} after the restart", restarted.elapsed());

    let manual = eventually(CONVERGE_SECS, &what("the rotation requested after the restart"), || {
        issued(&ns, "manual").filter(|a| a["status"]["lastRotateRequest"] == "after-restart")
    })
    .await;
    eprintln!("the requested rotation happened {:.1?} after the restart", restarted.elapsed());
    assert_eq!(rotation_count(&manual), rotation_count(&manual_before) + 1, "one request, one rotation: {manual}");
    assert_ne!(manual["status"]["keyId"], manual_before["status"]["keyId"], "the requested rotation changed no key");

    // The interval key rotates twice more (at least 10 s): enough time for a doubled request to show.
    eventually(CONVERGE_SECS, &what("the interval key to rotate twice after the restart"), || {
        issued(&ns, "ticking").filter(|a| rotation_count(a) >= ticking_at_restart + 2)
    })
    .await;
    let manual_after = apikey_json(&ns, "manual");
    assert_eq!(rotation_count(&manual_after), rotation_count(&manual), "the request rotated more than once");
    assert_eq!(manual_after["status"]["keyId"], manual["status"]["keyId"], "the manual key changed again");

    // The untouched key was left alone through all of it.
    let plain_after = issued(&ns, "plain").expect("the plain key is still issued");
    assert_eq!(plain_after["status"]["keyId"], plain_before["status"]["keyId"], "the plain key changed");
    assert_eq!(rotation_count(&plain_after), 0);

    // The same process throughout, ready, and nothing panicked.
    // /readyz: exactly 200 "ok", from a request made now on a new connection (not an answer from before the
    // outage); and with the operator stopped the same request gets no answer, so the check can fail.
    assert_alive(&mut op, "after the restart");
    http::assert_ready_after(&addr, restarted, "after the API server restart").await;
    op.assert_no_panic();
    op.stop();
    assert!(http::get(&format!("http://{addr}/readyz")).await.is_none(), "/readyz answers with no operator");
}
