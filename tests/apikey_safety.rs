//! Safety of the ApiKey lifecycle: an operator SIGKILLed at random moments of a run of rotations converges with
//! one valid key and never rotates twice for one request; and nothing Keyward produced (debug logs, events,
//! statuses) contains any key or any 12-character piece of one.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::kube::{apikey, apply, decode, eventually, get_json, key_id};
use common::{control_plane_with_crds, kubectl_ok, namespace, operator};

/// Every key currently in the namespace's managed Secrets.
fn keys_in(ns: &str, seen: &mut BTreeSet<String>) {
    let list = get_json(ns, "secrets").expect("secrets");
    for s in list["items"].as_array().into_iter().flatten() {
        for k in ["api-key", "previous-api-key"] {
            if let Some(v) = decode(s, k) {
                seen.insert(v);
            }
        }
    }
}

/// Every 12-character window of every key that occurs in `haystack`, described without the key itself.
fn leaks(seen: &BTreeSet<String>, haystack: &str, source: &str) -> Vec<String> {
    let mut found = Vec::new();
    for key in seen {
        let chars: Vec<char> = key.chars().collect();
        for w in chars.windows(12) {
            let piece: String = w.iter().collect();
            if haystack.contains(&piece) {
                found.push(format!("{source}: a 12-character piece of key {} appears", key_id(key)));
                break;
            }
        }
    }
    found
}

#[tokio::test]
async fn sigkill_during_rotations_converges_without_double_rotation_and_leaks_nothing() {
    control_plane_with_crds().await;
    let ns = namespace("sigkill");
    // No schedule: only requests rotate, so the count of rotations is exactly known. A long grace period keeps
    // the previous key, so losing it would show.
    apply(&ns, &apikey("crash", "  format: {prefix: kw_crash_}\n  rotation: {gracePeriod: 1h}"));
    apply(&ns, &apikey("steady", "  rotation: {interval: 2s, gracePeriod: 1s}"));
    let mut seen = BTreeSet::new();
    let mut logs = Vec::new();
    let requests = 12;
    for i in 0..requests {
        kubectl_ok(&["annotate", "--overwrite", "apikey/crash", "-n", &ns, &format!("keyward.dev/rotate=r{i}")]);
        let mut op = operator::start_with_log(&format!("sigkill-{i}"), "debug");
        // Kill at a different moment of the reconcile each time: from during start-up to after the writes.
        tokio::time::sleep(Duration::from_millis(150 + 173 * (i as u64 % 9))).await;
        op.kill();
        logs.push(op.log.clone());
        keys_in(&ns, &mut seen);
        // Whatever the kill interrupted, the Secret never holds a key that does not match its bookkeeping.
        if let Some(s) = get_json(&ns, "secret/crash")
            && let Some(cur) = decode(&s, "api-key")
        {
            assert_eq!(s["metadata"]["annotations"]["keyward.dev/key-id"], key_id(&cur).as_str(), "torn write");
        }
    }
    // A last operator finishes the job.
    let op = operator::start_with_log("sigkill-final", "debug");
    logs.push(op.log.clone());
    let last = format!("r{}", requests - 1);
    let ak = eventually(60, "convergence on the last request", || {
        get_json(&ns, "apikey/crash").filter(|a| a["status"]["lastRotateRequest"] == last.as_str())
    })
    .await;
    let s = get_json(&ns, "secret/crash").expect("secret");
    let cur = decode(&s, "api-key").expect("one current key");
    assert!(keyward::keys::verify_checksum(&cur), "the current key is valid");
    assert_eq!(ak["status"]["keyId"], key_id(&cur).as_str(), "status agrees with the Secret");
    let count = ak["status"]["rotationCount"].as_i64().expect("rotationCount");
    assert_eq!(s["metadata"]["annotations"]["keyward.dev/rotation-count"], count.to_string().as_str());
    assert!(count >= 1 && count <= requests as i64, "{count} rotations for {requests} requests: rotated twice");
    let prev = decode(&s, "previous-api-key").expect("previous key kept for the grace period");
    assert_eq!(ak["status"]["previousKeyId"], key_id(&prev).as_str());
    assert!(seen.contains(&prev) || count == 1, "the previous key was a key that had been current");

    // Let the steady key rotate a few times under the final operator too, then scan for leaks.
    tokio::time::sleep(Duration::from_secs(5)).await;
    keys_in(&ns, &mut seen);
    assert!(seen.len() >= 4, "only {} keys seen", seen.len());
    let mut found = Vec::new();
    for log in &logs {
        let text = std::fs::read_to_string(log).expect("operator log");
        found.extend(leaks(&seen, &text, &log.display().to_string()));
    }
    let events = kubectl_ok(&["get", "events", "-n", &ns, "-o", "json"]);
    found.extend(leaks(&seen, &events, "events"));
    let apikeys = kubectl_ok(&["get", "apikeys", "-n", &ns, "-o", "json"]);
    found.extend(leaks(&seen, &apikeys, "ApiKey objects and statuses"));
    // The Secrets' metadata (labels, annotations) is not a place for keys either.
    let metas = kubectl_ok(&["get", "secrets", "-n", &ns, "-o", "jsonpath={.items[*].metadata}"]);
    found.extend(leaks(&seen, &metas, "Secret metadata"));
    assert!(found.is_empty(), "key material leaked:\n{}", found.join("\n"));
    // The scan can find a leak: the Secret data itself must be a hit.
    let data = kubectl_ok(&["get", "secrets", "-n", &ns, "-o", "json"]);
    let decoded: String = seen.iter().filter(|k| data.contains(&base64_of(k))).cloned().collect();
    assert!(!leaks(&seen, &decoded, "self-check").is_empty(), "the leak scan cannot see keys");
    drop(op);
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn two_racing_operators_never_rotate_twice() {
    control_plane_with_crds().await;
    let ns = namespace("two_operators");
    apply(&ns, &apikey("race", "  rotation: {gracePeriod: 1h}"));
    // Two instances without leader election reconcile the same ApiKey at once; the Secret write is conditional on
    // its resourceVersion, so for each request only one of them can rotate.
    let a = operator::start("race-a");
    let b = operator::start("race-b");
    eventually(60, "the first key", || get_json(&ns, "secret/race").and_then(|s| decode(&s, "api-key"))).await;
    let requests = 5;
    let mut before = decode(&get_json(&ns, "secret/race").expect("secret"), "api-key").expect("key");
    for i in 0..requests {
        kubectl_ok(&["annotate", "--overwrite", "apikey/race", "-n", &ns, &format!("keyward.dev/rotate=q{i}")]);
        let want = format!("q{i}");
        let ak = eventually(30, "the request to be answered", || {
            get_json(&ns, "apikey/race").filter(|a| a["status"]["lastRotateRequest"] == want.as_str())
        })
        .await;
        assert_eq!(ak["status"]["rotationCount"], i + 1, "request {want} rotated more than once");
        let s = get_json(&ns, "secret/race").expect("secret");
        // Compared by fingerprint: a failing assertion must not print key material.
        let previous = decode(&s, "previous-api-key").map(|k| key_id(&k));
        assert_eq!(previous, Some(key_id(&before)), "the previous key is the last current one");
        before = decode(&s, "api-key").expect("key");
    }
    // Settle, then check once more that no late duplicate rotation happened.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ak = get_json(&ns, "apikey/race").expect("apikey");
    assert_eq!(ak["status"]["rotationCount"], requests);
    let s = get_json(&ns, "secret/race").expect("secret");
    assert_eq!(s["metadata"]["annotations"]["keyward.dev/rotation-count"], requests.to_string().as_str());
    drop((a, b));
}
