//! The controller shells against the real control plane and the real `keyward run`: what the structure work made
//! visible (a reconcile that cannot complete shows on `Ready` with a Warning event), a second policy on an already
//! scaled target, and polls that do not queue behind hanging sources. Each test runs its own operator scoped to its
//! namespace, with the flags it needs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::kube::{apikey, apply, condition, eventually, get_json, has_event, is, ready_reason};
use crate::common::ratelimit::{policy, replicas, workload};
use crate::common::{control_plane_with_crds, namespace, operator};

/// A metrics endpoint on 127.0.0.1 that counts the polls it answers; key `a`'s counter grows by 10 per poll.
async fn counting_exporter() -> (String, Arc<AtomicU64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/metrics", listener.local_addr().expect("addr"));
    let polls = Arc::new(AtomicU64::new(0));
    let counted = polls.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let body = format!("requests_total{{api_key=\"a\"}} {}\n", n * 10);
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(format!("{head}{body}").as_bytes()).await;
            });
        }
    });
    (url, polls)
}

fn scrape(url: &str, interval: &str) -> String {
    format!(
        "  limit: {{requests: 100, period: 1s}}\n  usage:\n    interval: {interval}\n    scrape: {{urls: [\"{url}\"], metric: requests_total}}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_sources_beyond_the_poll_concurrency_do_not_starve_a_healthy_policy() {
    control_plane_with_crds().await;
    let ns = namespace("shell_fair_polls");
    let _op = operator::start_with_args(
        "shell-fair-polls",
        "info",
        &["--namespace", &ns, "--concurrency", "2", "--poll-concurrency", "2"],
    );
    // Six sources that accept connections (the kernel's backlog) and never answer: three times the poll
    // concurrency, and each would hold a slot for its whole 10 s timeout.
    let holes: Vec<std::net::TcpListener> =
        (0..6).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    for (i, hole) in holes.iter().enumerate() {
        let url = format!("http://{}/metrics", hole.local_addr().expect("addr"));
        apply(&ns, &policy(&format!("stuck-{i}"), &scrape(&url, "10s")));
    }
    let (url, polls) = counting_exporter().await;
    apply(&ns, &policy("healthy", &scrape(&url, "2s")));
    for i in 0..6 {
        eventually(120, "every hanging source timed out once", || {
            get_json(&ns, &format!("rlp/stuck-{i}"))
                .filter(|p| condition(p, "UsageAvailable").is_some_and(|c| c.1 == "SourceTimeout"))
        })
        .await;
    }
    // From now on the hanging sources keep hanging; the healthy policy must still be polled every 2 s or so.
    let (start, from) = (Instant::now(), polls.load(Ordering::SeqCst));
    tokio::time::sleep(Duration::from_secs(30)).await;
    let n = polls.load(Ordering::SeqCst) - from;
    let secs = start.elapsed().as_secs_f64();
    // 15 polls are due in 30 s; queued behind 6 sources hanging 10 s each on 2 slots it would get about 5.
    assert!(n >= 10, "the healthy policy was polled {n} times in {secs:.0}s with an interval of 2s");
    let p = get_json(&ns, "rlp/healthy").expect("healthy");
    assert!(is(&p, "UsageAvailable", "True"), "{:?}", p["status"]);
    drop(holes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_policy_on_a_scaled_target_holds_and_says_which_policy_scales_it() {
    control_plane_with_crds().await;
    let ns = namespace("shell_two_policies");
    let _op = operator::start_with_args("shell-two-policies", "info", &["--namespace", &ns]);
    apply(&ns, &workload("Deployment", "gw", Some(1)));
    let scaling = |max: i32| {
        format!(
            "  limit: {{requests: 100, period: 1s}}\n  scaling:\n    targetRef: {{apiVersion: apps/v1, kind: Deployment, name: gw}}\n    minReplicas: {max}\n    maxReplicas: {max}\n    capacityPerReplica: {{requests: 100, period: 1s}}"
        )
    };
    // Without usage the first policy holds the replicas; it owns the target by being first.
    apply(&ns, &policy("first", &scaling(2)));
    eventually(60, "first has no conflict", || {
        get_json(&ns, "rlp/first").filter(|p| is(p, "ScalingConflict", "False"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    apply(&ns, &policy("second", &scaling(5)));
    let p = eventually(60, "second reports the conflict", || {
        get_json(&ns, "rlp/second").filter(|p| is(p, "ScalingConflict", "True"))
    })
    .await;
    let (_, reason, message) = condition(&p, "ScalingConflict").expect("condition");
    assert_eq!(reason, "RateLimitPolicy");
    assert!(message.contains("first"), "{message}");
    assert!(is(&p, "Ready", "False"));
    assert!(has_event(&ns, "RateLimitPolicy", "second", "ScalingConflict"));
    let first = get_json(&ns, "rlp/first").expect("first");
    assert!(is(&first, "ScalingConflict", "False"), "the first policy keeps its target: {:?}", first["status"]);
    assert_eq!(replicas(&ns, "deployment/gw"), Some(1), "no policy wrote replicas without usage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_that_cannot_complete_shows_on_ready_with_a_warning() {
    control_plane_with_crds().await;
    let ns = namespace("shell_failures");
    let _op = operator::start_with_args("shell-failures", "info", &["--namespace", &ns]);
    // A label value the Secret refuses (it must start with a letter or digit).
    apply(&ns, &apikey("badlabel", "  secretTemplate:\n    labels: {team: \"-payments\"}"));
    let ak = eventually(60, "Ready=False with the refused write's reason", || {
        get_json(&ns, "apikey/badlabel").filter(|a| ready_reason(a).is_some_and(|(s, _)| s == "False"))
    })
    .await;
    let (_, reason, message) = condition(&ak, "Ready").expect("Ready");
    assert_eq!(reason, "SecretWriteFailed", "{message}");
    assert!(message.contains("metadata.labels") && message.contains("-payments"), "names the refused label: {message}");
    assert!(!message.contains("StatusDetails"), "the server's message, not a debug dump: {message}");
    assert!(has_event(&ns, "ApiKey", "badlabel", "SecretWriteFailed"));
    // Fixing the spec heals it.
    apply(&ns, &apikey("badlabel", "  secretTemplate:\n    labels: {team: payments}"));
    eventually(60, "Ready after the fix", || {
        get_json(&ns, "apikey/badlabel")
            .filter(|a| ready_reason(a).is_some_and(|(s, r)| s == "True" && r == "KeyIssued"))
    })
    .await;

    // A policy reference to nothing: the key is issued but not Ready, until the policy exists.
    apply(&ns, &apikey("metered", "  rateLimitPolicyRef: {name: later}"));
    let ak = eventually(60, "RateLimitPolicyNotFound", || {
        get_json(&ns, "apikey/metered")
            .filter(|a| ready_reason(a).is_some_and(|(s, r)| s == "False" && r == "RateLimitPolicyNotFound"))
    })
    .await;
    assert!(ak["status"]["keyId"].as_str().is_some(), "the key is issued all the same: {:?}", ak["status"]);
    apply(&ns, &policy("later", "  limit: {requests: 10, period: 1s}"));
    eventually(60, "Ready once the policy exists", || {
        get_json(&ns, "apikey/metered")
            .filter(|a| ready_reason(a).is_some_and(|(s, r)| s == "True" && r == "KeyIssued"))
    })
    .await;
}
