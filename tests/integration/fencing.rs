//! Fenced writes (issue #12 item 4): a leader paused past its Lease (SIGSTOP) while a standby takes over and acts
//! writes nothing once it resumes, and steps down by exiting. Two real `keyward run` replicas with leader election
//! on the shared control plane, scoped to the test's namespace, with a Lease of their own.

use std::time::{Duration, Instant};

use jiff::Timestamp;

use crate::common::kube::{apikey, apply, eventually, get_json, rotation_count};
use crate::common::operator::{LOG, Operator, leader_args, start_with_env};
use crate::common::{control_plane_with_crds, keyward_rotate, kubectl, kubectl_ok, namespace};

fn leader(tag: &str, ns: &str, pod: &str) -> Operator {
    start_with_env(tag, LOG, &leader_args(ns, "keyward-test-paused"), &[("POD_NAME", pod)])
}

fn holder(ns: &str) -> Option<String> {
    get_json(ns, "lease/keyward-test-paused")?["spec"]["holderIdentity"].as_str().map(str::to_string)
}

fn signal(op: &Operator, sig: &str) {
    let out = std::process::Command::new("kill").args([sig, &op.child.id().to_string()]).output().expect("kill");
    assert!(out.status.success(), "kill {sig}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Events in `ns` reported by the replica `pod` at or after `since`: (reason, note).
fn events_by(ns: &str, pod: &str, since: Timestamp) -> Vec<(String, String)> {
    let out = kubectl(&["get", "events.events.k8s.io", "-n", ns, "-o", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("events");
    let items = list["items"].as_array().cloned().unwrap_or_default();
    items
        .iter()
        .filter(|e| e["reportingInstance"] == pod)
        .filter(|e| e["eventTime"].as_str().and_then(|t| t.parse::<Timestamp>().ok()).is_some_and(|t| t >= since))
        .map(|e| (e["reason"].as_str().unwrap_or("").into(), e["note"].as_str().unwrap_or("").into()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_writes_nothing_when_it_resumes_and_steps_down() {
    control_plane_with_crds().await;
    let ns = namespace("fence_paused_leader");
    let mut a = leader("fence-a", &ns, "replica-a");
    eventually(60, "a leads", || holder(&ns).filter(|h| h.starts_with("replica-a"))).await;
    let b = leader("fence-b", &ns, "replica-b");
    apply(&ns, &apikey("k", "  {}"));
    kubectl_ok(&["wait", "--for=condition=Ready", "apikey/k", "-n", &ns, "--timeout=60s"]);

    signal(&a, "-STOP");
    // While a is frozen, b takes over, and a rotation is requested: a's watch holds the request for when it wakes.
    eventually(60, "b leads", || holder(&ns).filter(|h| h.starts_with("replica-b"))).await;
    let request = keyward_rotate(&ns, "k");
    eventually(60, "b answered the request", || {
        get_json(&ns, "apikey/k").filter(|k| k["status"]["lastRotateRequest"] == request.as_str())
    })
    .await;
    let resumed = Timestamp::now();
    signal(&a, "-CONT");

    // a steps down: it exits, with the lost Lease as the reason.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = a.child.try_wait().expect("a's status") {
            break status;
        }
        assert!(Instant::now() < deadline, "a kept running after it resumed (log {})", a.log.display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!status.success(), "a exits non-zero when it loses the Lease: {status}");
    // Nothing of a's reached the API server after it resumed: no event, and one rotation for one request.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(events_by(&ns, "replica-a", resumed), Vec::<(String, String)>::new());
    let k = get_json(&ns, "apikey/k").expect("k");
    assert_eq!(rotation_count(&k), 1, "{:?}", k["status"]);
    let secret = get_json(&ns, "secret/k").expect("secret");
    assert_eq!(secret["metadata"]["annotations"]["keyward.dev/rotation-count"], "1");
    assert!(!events_by(&ns, "replica-b", resumed - jiff::SignedDuration::from_secs(60)).is_empty(), "b acted");
    drop(b);
}
