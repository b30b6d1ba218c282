//! Safety of the ApiKey lifecycle: operators SIGKILLed during the reconciles of a run of rotation requests
//! converge with one valid key and exactly one rotation per request answered; two operators racing on one ApiKey
//! (both alive, both synced, contending with at least one write conflict) never rotate twice for one request; and
//! nothing Keyward produced (debug logs, events, statuses) contains a piece of any key in any encoding.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::common::kube::{apikey, apply, decode, eventually, get_json, issued, key_id, rotation_count};
use crate::common::leak::{Scanner, keys_in, scan};
use crate::common::operator::{self, LOG, Operator};
use crate::common::{control_plane_with_crds, kubectl_ok, namespace};

/// The Secret's `keyward.dev/<name>` annotation.
fn annotation(secret: &serde_json::Value, name: &str) -> Option<String> {
    secret["metadata"]["annotations"][format!("keyward.dev/{name}")].as_str().map(str::to_string)
}

/// Where the log of an operator stands on the ApiKey `name`: the index of its last "decided" line for it (a
/// reconcile that chose to write) and of its last "reconciled" line for it (a reconcile that finished).
fn progress(log: &str, name: &str) -> (Option<usize>, Option<usize>) {
    let field = format!("name={name}");
    let of_key = |l: &&str| l.contains(&field) || l.contains(&format!("name=\"{name}\""));
    let lines: Vec<&str> = log.lines().collect();
    let decided = lines.iter().rposition(|l| of_key(l) && l.contains("decided"));
    let finished = lines.iter().rposition(|l| of_key(l) && l.contains("reconciled"));
    (decided, finished)
}

/// Whether the operator was killed inside a reconcile of `name`: its log shows a decision to write and no end of
/// that reconcile.
fn killed_mid_reconcile(log: &str, name: &str) -> bool {
    match progress(log, name) {
        (Some(d), Some(f)) => d > f,
        (Some(_), None) => true,
        _ => false,
    }
}

/// Waits (up to 30 s) until the operator's log shows the decision on request `request` for `name`.
async fn wait_decided(op: &Operator, name: &str, request: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    let quoted = format!("\"{request}\"");
    while Instant::now() < deadline {
        let log = op.log_text();
        if log.lines().any(|l| l.contains("decided") && l.contains(&format!("name={name}")) && l.contains(&quoted)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    false
}

#[tokio::test]
async fn sigkill_during_rotations_converges_without_double_rotation_and_leaks_nothing() {
    control_plane_with_crds().await;
    let ns = namespace("sigkill");
    // No schedule: only requests rotate, so the count of rotations is exactly known. The grace period keeps the
    // previous key, so losing it would show; a request inside it waits for its end (a few seconds).
    apply(&ns, &apikey("crash", "  format: {prefix: kw_crash_}\n  rotation: {gracePeriod: 4s}"));
    apply(&ns, &apikey("steady", "  rotation: {interval: 2s, gracePeriod: 1s}"));
    // The first key is issued before the kills: from then on, every write of a new key answers a request.
    let first = operator::scoped_with("sigkill-first", &ns, "debug", &[]);
    eventually(60, "the first key", || issued(&ns, "crash")).await;
    let mut logs = vec![first.log.clone()];
    first.stop();
    let mut seen = BTreeSet::new();
    let mut answered = BTreeSet::new();
    let mut mid_reconcile = Vec::new();
    let requests = 12;
    for i in 0..requests {
        let request = format!("r{i}");
        kubectl_ok(&["annotate", "--overwrite", "apikey/crash", "-n", &ns, &format!("keyward.dev/rotate={request}")]);
        let mut op = operator::scoped_with(&format!("sigkill-{i}"), &ns, "debug", &[]);
        if i % 2 == 0 {
            // Even rounds aim at the writes: the kill comes 0 to 30 ms after the reconcile decided to rotate.
            let decided = wait_decided(&op, "crash", &request).await;
            assert!(decided, "round {i}: the operator never decided on {request}; its log: {}", op.log.display());
            tokio::time::sleep(Duration::from_millis(10 * (i as u64 / 2 % 4))).await;
        } else {
            // Odd rounds move through start-up and the reconcile.
            tokio::time::sleep(Duration::from_millis(150 + 173 * (i as u64 % 9))).await;
        }
        op.kill();
        logs.push(op.log.clone());
        if killed_mid_reconcile(&op.log_text(), "crash") {
            mid_reconcile.push(i);
        }
        keys_in(&ns, &mut seen);
        let Some(s) = get_json(&ns, "secret/crash") else { panic!("round {i}: the Secret is gone") };
        // Whatever the kill interrupted, the Secret never holds a key that does not match its bookkeeping.
        let cur = decode(&s, "api-key").expect("a current key");
        assert_eq!(annotation(&s, "key-id"), Some(key_id(&cur)), "round {i}: torn write");
        // This round's operator started after the request was made and confirms a request on a fresh read, so
        // the only request it can have answered is this one.
        if annotation(&s, "rotate-request").as_deref() == Some(request.as_str()) {
            answered.insert(request.clone());
        }
        let count: usize = annotation(&s, "rotation-count").and_then(|c| c.parse().ok()).unwrap_or(0);
        assert_eq!(count, answered.len(), "round {i}: {count} rotations for the requests answered: {answered:?}");
    }
    // A last operator finishes the job.
    let op = operator::scoped_with("sigkill-final", &ns, "debug", &[]);
    logs.push(op.log.clone());
    let last = format!("r{}", requests - 1);
    let ak = eventually(60, "convergence on the last request", || {
        get_json(&ns, "apikey/crash").filter(|a| a["status"]["lastRotateRequest"] == last.as_str())
    })
    .await;
    answered.insert(last);
    let s = get_json(&ns, "secret/crash").expect("secret");
    let cur = decode(&s, "api-key").expect("one current key");
    assert!(keyward::keys::verify_checksum(&cur), "the current key is valid");
    assert_eq!(ak["status"]["keyId"], key_id(&cur).as_str(), "status agrees with the Secret");
    // Exactly one rotation per request answered: none twice, none lost.
    let count = rotation_count(&ak);
    assert_eq!(annotation(&s, "rotation-count"), Some(count.to_string()));
    assert_eq!(
        count,
        answered.len() as i64,
        "{count} rotations for {} requests answered: {answered:?}",
        answered.len()
    );
    let prev = decode(&s, "previous-api-key").expect("previous key kept for the grace period");
    assert_eq!(ak["status"]["previousKeyId"], key_id(&prev).as_str());
    assert!(seen.contains(&prev), "the previous key was a key that had been current");
    // The kills landed where they matter: inside reconciles of the key, between its decision and its end.
    eprintln!("kills inside a reconcile of crash: rounds {mid_reconcile:?}; requests answered: {answered:?}");
    assert!(!mid_reconcile.is_empty(), "no kill landed inside a reconcile; logs: {logs:?}");

    // Let the steady key rotate a few times under the final operator too, then scan for leaks.
    tokio::time::sleep(Duration::from_secs(5)).await;
    keys_in(&ns, &mut seen);
    assert!(seen.len() >= 4, "only {} keys seen", seen.len());
    let scanner = Scanner::new(&seen);
    scanner.self_check(&cur);
    let mut sources: Vec<(String, Vec<u8>)> = Vec::new();
    for log in &logs {
        sources.push((log.display().to_string(), std::fs::read(log).expect("operator log")));
    }
    for (what, args) in [
        ("events", vec!["get", "events", "-n", &ns, "-o", "json"]),
        ("ApiKey objects and statuses", vec!["get", "apikeys", "-n", &ns, "-o", "json"]),
        // The Secrets' metadata (labels, annotations) is not a place for keys either.
        ("Secret metadata", vec!["get", "secrets", "-n", &ns, "-o", "jsonpath={.items[*].metadata}"]),
    ] {
        sources.push((what.to_string(), kubectl_ok(&args).into_bytes()));
    }
    let sources: Vec<(&str, Vec<u8>)> = sources.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let found = scan(&scanner, &sources);
    assert!(found.is_empty(), "key material leaked:\n{}", found.join("\n"));
    // The scan can find a leak: the Secret data itself must be a hit.
    let data = kubectl_ok(&["get", "secrets", "-n", &ns, "-o", "json"]);
    assert!(!scanner.hits(data.as_bytes()).is_empty(), "the leak scan cannot see keys");
    drop(op);
}

#[tokio::test]
async fn two_racing_operators_never_rotate_twice() {
    control_plane_with_crds().await;
    let ns = namespace("two_operators");
    apply(&ns, &apikey("race", "  rotation: {gracePeriod: 4s}"));
    // Two instances without leader election reconcile the same ApiKey at once; the Secret write is conditional on
    // its resourceVersion, so for each request only one of them can rotate.
    let mut a = operator::scoped_with("race-a", &ns, LOG, &[]);
    let mut b = operator::scoped_with("race-b", &ns, LOG, &[]);
    eventually(60, "both operators synced", || (a.synced() && b.synced()).then_some(())).await;
    eventually(60, "the first key", || issued(&ns, "race")).await;
    let conflicts = |a: &Operator, b: &Operator| {
        a.log_lines(&["SecretWriteConflict"]).len() + b.log_lines(&["SecretWriteConflict"]).len()
    };
    // At least 5 requests, and more (up to 30) until a write conflict shows the two contending.
    let mut before = decode(&get_json(&ns, "secret/race").expect("secret"), "api-key").expect("key");
    let mut requests = 0;
    while requests < 5 || (conflicts(&a, &b) == 0 && requests < 30) {
        let want = format!("q{requests}");
        kubectl_ok(&["annotate", "--overwrite", "apikey/race", "-n", &ns, &format!("keyward.dev/rotate={want}")]);
        let ak = eventually(30, "the request to be answered", || {
            get_json(&ns, "apikey/race").filter(|a| a["status"]["lastRotateRequest"] == want.as_str())
        })
        .await;
        requests += 1;
        assert_eq!(rotation_count(&ak), requests, "request {want} rotated more than once");
        let s = get_json(&ns, "secret/race").expect("secret");
        // Compared by fingerprint: a failing assertion must not print key material.
        let previous = decode(&s, "previous-api-key").map(|k| key_id(&k));
        assert_eq!(previous, Some(key_id(&before)), "the previous key is the last current one");
        before = decode(&s, "api-key").expect("key");
    }
    // Both were alive and contending: both acted on the requests, and one lost a conditional write at least once.
    assert!(matches!(a.child.try_wait(), Ok(None)) && matches!(b.child.try_wait(), Ok(None)), "an operator exited");
    let (a_decided, b_decided) =
        (a.log_lines(&["decided", "name=race"]).len(), b.log_lines(&["decided", "name=race"]).len());
    eprintln!("{requests} requests; decisions: a {a_decided}, b {b_decided}; conflicts: {}", conflicts(&a, &b));
    assert!(a_decided >= 1 && b_decided >= 1, "one operator never decided to write (a {a_decided}, b {b_decided})");
    assert!(conflicts(&a, &b) >= 1, "no write conflict in {requests} requests: the operators did not contend");
    // Settle, then check once more that no late duplicate rotation happened.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ak = get_json(&ns, "apikey/race").expect("apikey");
    assert_eq!(rotation_count(&ak), requests);
    let s = get_json(&ns, "secret/race").expect("secret");
    assert_eq!(annotation(&s, "rotation-count"), Some(requests.to_string()));
    drop((a, b));
}
