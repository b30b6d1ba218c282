//! Secrecy over a full lifecycle (issue, interval and manual rotation, grace, suspension, expiry, tampering, usage,
//! scaling): nothing Keyward produced (its debug log, events, statuses, condition messages, workloads, Secret
//! metadata, metrics, probes, `keyward rotate` output) holds any 12-character piece of any key, in any encoding.
//! (The malformed-objects fault test has its own binary, `tests/malformed/`: it swaps the CRDs.)

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

use crate::common::kube::{apikey, apply, condition, eventually, get_json, has_event, issued, key_id};
use crate::common::leak::{Scanner, Seen, announced_key_ids, poll_keys, record, scan, settle};
use crate::common::ratelimit::{METRIC, gateway_sim, policy, workload};
use crate::common::{control_plane_with_crds, http, keyward, kubectl_ok, namespace, operator};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_lifecycle_leaks_no_key_material() {
    let cp = control_plane_with_crds().await;
    let ns = namespace("faults_leak");
    let client = cp.client().await.expect("client");
    let seen: Seen = Arc::default();
    let stop_polling = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = poll_keys(client.clone(), &ns, seen.clone(), stop_polling.clone());

    // Everything at debug level, including the Kubernetes client and HTTP stacks.
    let op = operator::scoped_with(&ns, &ns, "debug", &[]);
    let gw = gateway_sim().await;
    apply(&ns, &workload("Deployment", "gateway", Some(1)));
    apply(&ns, &workload("Deployment", "consumer", Some(1)));
    apply(
        &ns,
        &policy(
            "tier",
            &format!(
                "  limit: {{requests: 600, period: 1m}}\n  usage:\n    interval: 1s\n    scrape: {{urls: [\"{}\"], metric: {METRIC}}}\n  scaling:\n    targetRef: {{apiVersion: apps/v1, kind: Deployment, name: gateway}}\n    minReplicas: 1\n    maxReplicas: 5\n    capacityPerReplica: {{requests: 10, period: 1s}}\n    targetUtilization: 100\n    scaleDown: {{stabilizationWindow: 2s}}",
                gw.url()
            ),
        ),
    );
    // A policy whose source is down: its error messages are in its conditions.
    apply(
        &ns,
        &policy(
            "down",
            "  limit: {requests: 60, period: 1m}\n  usage:\n    interval: 1s\n    scrape: {urls: [\"http://127.0.0.1:1/metrics\"], metric: x}",
        ),
    );
    let soon = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(40);
    let soon = jiff::Timestamp::from_second(soon.as_second()).expect("time");
    apply(
        &ns,
        &apikey(
            "spin",
            "  format: {prefix: kw_spin_}\n  rotation: {interval: 3s, gracePeriod: 2s}\n  rateLimitPolicyRef: {name: tier}",
        ),
    );
    // Restarts wait for 10 s without a rotation: they go on the key that rotates only on request.
    apply(
        &ns,
        &apikey(
            "manual",
            "  format: {prefix: kw_leak_, encoding: hex}\n  rotation: {gracePeriod: 3s}\n  rolloutRestart:\n  - {kind: Deployment, name: consumer}\n  - {kind: StatefulSet, name: missing}",
        ),
    );
    apply(&ns, &apikey("steady", "  format: {entropyBytes: 16}\n  rateLimitPolicyRef: {name: tier}"));
    apply(&ns, &apikey("suspendme", "  format: {encoding: base64url}"));
    apply(&ns, &apikey("expiring", &format!("  expiresAt: \"{soon}\"")));
    apply(&ns, &apikey("tampered", "  format: {prefix: kw_t_}"));
    apply(&ns, &apikey("orphan", "  rateLimitPolicyRef: {name: down}"));
    for name in ["spin", "manual", "steady", "suspendme", "expiring", "tampered", "orphan"] {
        eventually(90, &format!("{name} Ready"), || issued(&ns, name)).await;
    }

    // Manual rotations: by annotation, then with `keyward rotate` (its output is scanned too).
    kubectl_ok(&["annotate", "--overwrite", "apikey/manual", "-n", &ns, "keyward.dev/rotate=one"]);
    eventually(60, "manual rotated by annotation", || {
        get_json(&ns, "apikey/manual").filter(|a| a["status"]["rotationCount"] == 1)
    })
    .await;
    let cli = keyward(&["rotate", "manual", "-n", &ns], "");
    assert!(cli.status.success(), "keyward rotate: {}", String::from_utf8_lossy(&cli.stderr));
    let cli_output = [cli.stdout, cli.stderr].concat();
    eventually(60, "manual rotated by keyward rotate", || {
        get_json(&ns, "apikey/manual").filter(|a| a["status"]["rotationCount"] == 2)
    })
    .await;

    // Suspend (material removed), then resume (a fresh key).
    settle(&seen, &ns, "suspendme").await;
    kubectl_ok(&["patch", "apikey", "suspendme", "-n", &ns, "--type=merge", "-p", r#"{"spec":{"suspended":true}}"#]);
    eventually(60, "suspendme Suspended", || {
        get_json(&ns, "apikey/suspendme").filter(|a| condition(a, "Ready").is_some_and(|c| c.1 == "Suspended"))
    })
    .await;
    kubectl_ok(&["patch", "apikey", "suspendme", "-n", &ns, "--type=merge", "-p", r#"{"spec":{"suspended":false}}"#]);
    eventually(60, "suspendme issued again", || issued(&ns, "suspendme")).await;

    // Tampering: someone writes a key of their own into the Secret; it is replaced (and it counts as a key).
    settle(&seen, &ns, "tampered").await;
    let first_id =
        get_json(&ns, "apikey/tampered").expect("tampered")["status"]["keyId"].as_str().expect("keyId").to_string();
    let planted = format!("kw_t_{}", key_id(&format!("{ns}-tamper-1")).repeat(4));
    seen.lock().expect("seen").insert(planted.clone());
    let encoded = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&planted)
    };
    let patch = json!({"data": {"api-key": encoded}});
    kubectl_ok(&["patch", "secret", "tampered", "-n", &ns, "--type=merge", "-p", &patch.to_string()]);
    eventually(60, "KeyTampered", || has_event(&ns, "ApiKey", "tampered", "KeyTampered").then_some(())).await;
    // Deletion: a new key is regenerated.
    eventually(30, "the replacement key in status", || {
        get_json(&ns, "apikey/tampered").filter(|a| a["status"]["keyId"].as_str().is_some_and(|id| id != first_id))
    })
    .await;
    settle(&seen, &ns, "tampered").await;
    kubectl_ok(&["delete", "secret", "tampered", "-n", &ns]);
    eventually(60, "KeyRegenerated", || has_event(&ns, "ApiKey", "tampered", "KeyRegenerated").then_some(())).await;

    // Usage: `spin` by name, `steady` by its keyId, as a gateway that only sees the key would label it.
    let steady_id =
        get_json(&ns, "apikey/steady").expect("steady")["status"]["keyId"].as_str().expect("keyId").to_string();
    gw.set_rate("spin", 30.0);
    gw.set_rate(&steady_id, 5.0);
    eventually(60, "spin Exhausted", || {
        get_json(&ns, "apikey/spin").filter(|a| condition(a, "Exhausted").is_some_and(|c| c.0 == "True"))
    })
    .await;
    eventually(60, "steady measured by keyId", || {
        get_json(&ns, "apikey/steady")
            .filter(|a| a["status"]["usage"]["requestsPerSecond"].as_f64().is_some_and(|r| r > 1.0))
    })
    .await;
    eventually(60, "gateway scaled up", || {
        get_json(&ns, "deployment/gateway").filter(|d| d["spec"]["replicas"].as_i64().is_some_and(|r| r >= 3))
    })
    .await;
    gw.set_rate("spin", 0.0);
    gw.set_rate(&steady_id, 0.0);
    eventually(60, "gateway scaled down", || {
        get_json(&ns, "deployment/gateway").filter(|d| d["spec"]["replicas"] == 1)
    })
    .await;

    // Expiry, and the interval rotations with their grace ends and restarts.
    eventually(60, "expiring Expired", || {
        get_json(&ns, "apikey/expiring").filter(|a| condition(a, "Ready").is_some_and(|c| c.1 == "Expired"))
    })
    .await;
    let spin = eventually(60, "spin rotated several times", || {
        get_json(&ns, "apikey/spin").filter(|a| a["status"]["rotationCount"].as_i64().is_some_and(|n| n >= 4))
    })
    .await;
    assert!(spin["status"]["rotationCount"].as_i64().is_some());
    eventually(30, "PreviousKeyRemoved", || has_event(&ns, "ApiKey", "spin", "PreviousKeyRemoved").then_some(())).await;
    eventually(30, "RolloutRestarted", || has_event(&ns, "ApiKey", "manual", "RolloutRestarted").then_some(())).await;
    eventually(30, "RolloutTargetMissing", || has_event(&ns, "ApiKey", "manual", "RolloutTargetMissing").then_some(()))
        .await;
    let down = eventually(30, "the down policy's error", || {
        get_json(&ns, "rlp/down").filter(|p| condition(p, "UsageAvailable").is_some_and(|c| c.0 == "False"))
    })
    .await;
    assert!(condition(&down, "UsageAvailable").is_some_and(|c| !c.2.is_empty()), "{:?}", down["status"]);

    // Stop the key collection (one last read), then everything the operator produced. The status is written after
    // the Secret, so the last read has every spin key up to this count.
    let spin_count = get_json(&ns, "apikey/spin").expect("spin")["status"]["rotationCount"].as_u64().expect("count");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_polling.store(true, std::sync::atomic::Ordering::SeqCst);
    let polls = tokio::time::timeout(Duration::from_secs(30), poller).await.expect("poller stops").expect("poller");
    let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    record(&seen, &api.list(&ListParams::default()).await.expect("secrets").items);
    let seen = seen.lock().expect("seen").clone();
    let ids: BTreeSet<String> = seen.iter().map(|k| key_id(k)).collect();
    let events_json = kubectl_ok(&["get", "events", "-n", &ns, "-o", "json"]);
    // The collection is complete: every key the operator announced was seen in a Secret.
    let announced = announced_key_ids(&events_json);
    let missed: Vec<&String> = announced.difference(&ids).collect();
    // Repeats of one event reason on one object are a series of one event, so events name a subset of the keys.
    assert!(announced.len() >= 10, "only {} keys announced", announced.len());
    // The interval rotations, all of them: one key per rotation plus the first.
    let spin_keys = seen.iter().filter(|k| k.starts_with("kw_spin_")).count() as u64;
    assert!(spin_keys > spin_count, "{spin_keys} spin keys seen for {spin_count} rotations");
    assert!(
        missed.is_empty(),
        "{} announced keys were never seen in a Secret ({polls} polls): {missed:?}",
        missed.len()
    );
    eprintln!("leak scan: {} keys seen over {polls} polls, {} announced by events", seen.len(), announced.len());

    let addr = eventually(30, "the operator's HTTP address", || op.http_addr()).await;
    let metrics = http::get_text(&format!("http://{addr}/metrics")).await.expect("metrics").1;
    assert!(metrics.contains("keyward_"), "metrics were served");
    let healthz = http::get_text(&format!("http://{addr}/healthz")).await.expect("healthz").1;
    let readyz = http::get_text(&format!("http://{addr}/readyz")).await.expect("readyz").1;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = std::fs::read(&op.log).expect("operator log");
    assert!(log.len() > 10_000, "a debug log was written ({} bytes)", log.len());
    let messages: Vec<String> = {
        let all = kubectl_ok(&["get", "apikeys,ratelimitpolicies", "-n", &ns, "-o", "json"]);
        let v: Value = serde_json::from_str(&all).expect("json");
        v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|o| o["status"]["conditions"].as_array().cloned().unwrap_or_default())
            .map(|c| c["message"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let sources: Vec<(&str, Vec<u8>)> = vec![
        ("operator debug log", log),
        ("events (core/v1)", events_json.into_bytes()),
        (
            "events (events.k8s.io/v1)",
            kubectl_ok(&["get", "events.events.k8s.io", "-n", &ns, "-o", "json"]).into_bytes(),
        ),
        ("ApiKeys", kubectl_ok(&["get", "apikeys", "-n", &ns, "-o", "json"]).into_bytes()),
        ("RateLimitPolicies", kubectl_ok(&["get", "ratelimitpolicies", "-n", &ns, "-o", "json"]).into_bytes()),
        ("condition messages", messages.join("\n").into_bytes()),
        ("workloads", kubectl_ok(&["get", "deployments", "-n", &ns, "-o", "json"]).into_bytes()),
        (
            "Secret metadata",
            kubectl_ok(&["get", "secrets", "-n", &ns, "-o", "jsonpath={.items[*].metadata}"]).into_bytes(),
        ),
        ("/metrics", metrics.into_bytes()),
        ("/healthz and /readyz", format!("{healthz}\n{readyz}").into_bytes()),
        ("keyward rotate output", cli_output),
    ];
    let scanner = Scanner::new(&seen);
    assert!(seen.len() >= 15, "only {} keys seen", seen.len());

    // Self-check first: every encoding of a planted piece is found, 11 characters and clean text are not, and the
    // Secrets' own data (base64 in JSON) is a hit.
    scanner.self_check(seen.iter().find(|k| k.len() > 40).expect("a key"));
    let secret_json = kubectl_ok(&["get", "secrets", "-n", &ns, "-o", "json"]);
    assert!(!scanner.hits(secret_json.as_bytes()).is_empty(), "the scanner misses base64 key data");

    let report = scan(&scanner, &sources);
    assert!(report.is_empty(), "key material leaked:\n{}", report.join("\n"));
    op.stop();
    gw.stop();
}

/// The scanner on its own (no cluster): every encoding of a whole key in a larger text is found, as are the forms
/// its self-check plants; a different key of the same shape is not.
#[test]
fn the_leak_scanner_finds_every_encoding_of_a_key() {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let key = "kw_live_3fQ9xZ0aLmN7pR2sT5uV8wY1bC4dE6gH0jK2mN4pQ6rS8tU9kJ2mQ1";
    let other = "kw_live_Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2Rr1Qq0Pp9Oo8Nn7Mm6Ll5Kk4Jj3ZzYy";
    let scanner = Scanner::new(&[key.to_string()].into());
    scanner.self_check(key);
    let bytes: Vec<String> = key.bytes().map(|b| b.to_string()).collect();
    let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
    let forms = [
        format!("{{\"data\":{{\"api-key\":\"{}\"}}}}", STANDARD.encode(key)),
        format!("token={}&x=1", URL_SAFE_NO_PAD.encode(format!("Bearer {key}"))),
        format!("bytes: {}", hex.to_uppercase()),
        format!("{{\"key\":[{}]}}", bytes.join(",")),
        format!("Some([{}])", bytes.join(", ")),
    ];
    for form in &forms {
        assert_eq!(scanner.hits(form.as_bytes()).len(), 1, "missed a whole-key form");
    }
    assert!(scanner.hits(other.as_bytes()).is_empty(), "another key is not a hit");
    assert!(scanner.hits(STANDARD.encode(other).as_bytes()).is_empty(), "another key's base64 is not a hit");
}
