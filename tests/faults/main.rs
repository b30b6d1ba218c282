//! Faults and secrecy: malformed objects stored in the API server (before a schema tightening, or with a value the
//! schema cannot judge) do not stall the reconciliation of the others; and over a full lifecycle (issue, interval
//! and manual rotation, grace, suspension, expiry, tampering, usage, scaling) nothing Keyward produced holds any
//! 12-character piece of any key.
//!
//! Both tests start their own operator and run one at a time: the first swaps the CRDs, which every namespace sees.

#[path = "../common/mod.rs"]
mod common;
mod leak;
mod malformed;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::kube::{apikey, apply, condition, decode, eventually, get_json, has_event, key_id};
use common::ratelimit::{METRIC, gateway_sim, policy, workload};
use common::{control_plane, control_plane_with_crds, kubectl, kubectl_ok, kubectl_stdin, namespace, operator};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

use leak::{PIECE, Scanner, Seen, announced_key_ids, poll_keys, record, settle};
use malformed::{BAD, create, loosen_crds, manifest, restore_crds, short, warned_about};

/// The tests of this file run one at a time: the CRD swap changes what every namespace accepts.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------------------------
// Helpers of both tests

/// Stops an operator this test started (SIGTERM, then SIGKILL after 15 s), so the next test has the cluster alone.
fn stop(mut op: operator::Operator) {
    op.terminate();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if matches!(op.child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    op.kill();
}

async fn http_get(url: &str) -> Option<(u16, String)> {
    let resp = reqwest::get(url).await.ok()?;
    let code = resp.status().as_u16();
    Some((code, resp.text().await.ok()?))
}

fn ready_key(ns: &str, name: &str) -> Option<Value> {
    get_json(ns, &format!("apikey/{name}")).filter(|a| {
        condition(a, "Ready").is_some_and(|(s, r, _)| s == "True" && r == "KeyIssued")
            && get_json(ns, &format!("secret/{name}")).and_then(|s| decode(&s, "api-key")).is_some()
    })
}

// ---------------------------------------------------------------------------------------------------------------
// 1. Malformed objects

#[tokio::test]
async fn malformed_objects_do_not_stall_the_others() {
    let _serial = SERIAL.lock().await;
    control_plane_with_crds().await;
    let ns = namespace("faults_malformed");
    // A key issued by nobody yet, created while the schema is real.
    apply(&ns, &apikey("good-early", "  rotation: {interval: 1h}"));
    apply(&ns, &apikey("good-turned-bad", ""));

    // Phase 1: the objects are stored while the schema is loose, the schema is tightened again, and only then does
    // the operator start: its first list holds them.
    loosen_crds(&ns).await;
    for b in BAD {
        create(&ns, &manifest(b.kind, b.name, b.spec));
    }
    create(&ns, &apikey("good-during", "  format: {prefix: kw_during_}"));
    restore_crds(&ns).await;
    // The stored objects stay as they were: the tightened schema does not touch them.
    let stored = get_json(&ns, "apikey/bad-type").expect("bad-type is stored");
    assert_eq!(stored["spec"]["rotation"], "weekly", "the malformed value is still stored");
    let stored = get_json(&ns, "rlp/bad-limit").expect("bad-limit is stored");
    assert_eq!(stored["spec"]["limit"], "lots", "the malformed value is still stored");
    // ... and the real schema refuses new ones of the same kind.
    assert!(
        !kubectl_stdin(&["create", "-n", &ns, "-f", "-"], &apikey("late-bad", "  rotation: weekly")).status.success()
    );

    let op = operator::start("faults-malformed");
    let pid = op.child.id();
    apply(
        &ns,
        &policy(
            "good-tier",
            "  limit: {requests: 600, period: 1m}\n  usage:\n    interval: 2s\n    prometheus: {address: \"http://127.0.0.1:1\", query: up}",
        ),
    );
    apply(&ns, &apikey("good-late", "  rateLimitPolicyRef: {name: good-tier}\n  rotation: {interval: 24h}"));

    // The good ones are issued and Ready, in the same namespace as the bad ones.
    for name in ["good-early", "good-turned-bad", "good-during", "good-late"] {
        let ak = eventually(90, &format!("{name} Ready"), || ready_key(&ns, name)).await;
        assert!(ak["status"]["keyId"].is_string(), "{name}: {:?}", ak["status"]);
    }
    let p = eventually(60, "good-tier reconciled", || {
        get_json(&ns, "rlp/good-tier").filter(|p| p["status"]["effectiveLimit"] == "600/1m")
    })
    .await;
    assert!(condition(&p, "Ready").is_some_and(|c| c.1 != "InvalidSpec"), "{:?}", p["status"]);

    // The bad ones that deserialize say what is wrong with them, naming the field; no key is issued for them.
    for b in BAD {
        let what = format!("{}/{}", short(b.kind), b.name);
        match b.field {
            Some(field) => {
                let obj = eventually(60, &format!("{what} InvalidSpec"), || {
                    get_json(&ns, &what)
                        .filter(|o| condition(o, "Ready").is_some_and(|(s, r, _)| s == "False" && r == "InvalidSpec"))
                })
                .await;
                let (_, _, message) = condition(&obj, "Ready").expect("Ready");
                assert!(message.contains(field), "{what}: the message {message:?} does not name {field}");
                if b.kind == "ApiKey" {
                    assert!(get_json(&ns, &format!("secret/{}", b.name)).is_none(), "{what}: a key was issued");
                }
            }
            None => {
                // Undeserializable: a clear warning naming it, and no status written for it.
                eventually(30, &format!("a warning about {what}"), || warned_about(&op, b.name).then_some(())).await;
                let obj = get_json(&ns, &what).expect("still stored");
                assert!(obj["status"]["conditions"].is_null(), "{what}: {:?}", obj["status"]);
            }
        }
    }

    // Phase 2, the same operator still running: an object becomes unreadable and a new one is stored unreadable
    // through a loose schema again (the CRD changes under the operator's watches); the others carry on.
    let before = decode(&get_json(&ns, "secret/good-turned-bad").expect("secret"), "api-key").map(|k| key_id(&k));
    loosen_crds(&ns).await;
    let out = kubectl(&[
        "patch",
        "apikey",
        "good-turned-bad",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"rotation":"daily","suspended":true}}"#,
    ]);
    assert!(out.status.success(), "patch: {}", String::from_utf8_lossy(&out.stderr));
    create(&ns, &apikey("bad-later", "  rotation: 7"));
    restore_crds(&ns).await;
    apply(&ns, &apikey("good-after", "  format: {encoding: hex}"));
    kubectl_ok(&["annotate", "--overwrite", "apikey/good-early", "-n", &ns, "keyward.dev/rotate=after-the-swap"]);
    eventually(90, "good-after Ready", || ready_key(&ns, "good-after")).await;
    let early = eventually(60, "good-early rotated on request", || {
        get_json(&ns, "apikey/good-early").filter(|a| a["status"]["lastRotateRequest"] == "after-the-swap")
    })
    .await;
    assert_eq!(early["status"]["rotationCount"], 1, "{:?}", early["status"]);
    eventually(30, "a warning about bad-later", || warned_about(&op, "bad-later").then_some(())).await;
    eventually(30, "a warning about good-turned-bad", || warned_about(&op, "good-turned-bad").then_some(())).await;
    // An object the operator cannot read is left as it was: its key is neither suspended nor replaced.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = decode(&get_json(&ns, "secret/good-turned-bad").expect("secret"), "api-key").map(|k| key_id(&k));
    assert!(before.is_some() && before == after, "the unreadable key's Secret was changed");

    // Alive, the same process, healthy and ready: nothing crashed or restarted, and nothing panicked.
    let mut op = op;
    assert!(matches!(op.child.try_wait(), Ok(None)), "the operator exited");
    assert_eq!(op.child.id(), pid);
    let addr = eventually(30, "the operator's HTTP address", || op.http_addr()).await;
    assert_eq!(http_get(&format!("http://{addr}/healthz")).await.map(|r| r.0), Some(200));
    assert_eq!(http_get(&format!("http://{addr}/readyz")).await.map(|r| r.0), Some(200));
    let log = op.log_text();
    let panics: Vec<&str> = log.lines().filter(|l| l.contains("panicked")).collect();
    assert!(panics.is_empty(), "the operator panicked:\n{}", panics.join("\n"));
    // Clean up what no later test should see: the unreadable objects (kubectl can delete what it cannot read).
    for b in BAD.iter().filter(|b| b.field.is_none()) {
        kubectl_ok(&["delete", short(b.kind), b.name, "-n", &ns, "--wait=false"]);
    }
    kubectl_ok(&["delete", "apikey", "bad-later", "good-turned-bad", "-n", &ns, "--wait=false"]);
    stop(op);
}

// ---------------------------------------------------------------------------------------------------------------
// 2. Leak scan

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_lifecycle_leaks_no_key_material() {
    let _serial = SERIAL.lock().await;
    let cp = control_plane_with_crds().await;
    let ns = namespace("faults_leak");
    let client = cp.client().await.expect("client");
    let seen: Seen = Arc::default();
    let stop_polling = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = poll_keys(client.clone(), &ns, seen.clone(), stop_polling.clone());

    // Everything at debug level, including the Kubernetes client and HTTP stacks.
    let op = operator::start_with_args("faults-leak", "debug", &["--namespace", &ns]);
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
            "  format: {prefix: kw_leak_, encoding: hex}\n  rotation: {gracePeriod: 1h}\n  rolloutRestart:\n  - {kind: Deployment, name: consumer}\n  - {kind: StatefulSet, name: missing}",
        ),
    );
    apply(&ns, &apikey("steady", "  format: {entropyBytes: 16}\n  rateLimitPolicyRef: {name: tier}"));
    apply(&ns, &apikey("suspendme", "  format: {encoding: base64url}"));
    apply(&ns, &apikey("expiring", &format!("  expiresAt: \"{soon}\"")));
    apply(&ns, &apikey("tampered", "  format: {prefix: kw_t_}"));
    apply(&ns, &apikey("orphan", "  rateLimitPolicyRef: {name: down}"));
    for name in ["spin", "manual", "steady", "suspendme", "expiring", "tampered", "orphan"] {
        eventually(90, &format!("{name} Ready"), || ready_key(&ns, name)).await;
    }

    // Manual rotations: by annotation, then with `keyward rotate` (its output is scanned too).
    kubectl_ok(&["annotate", "--overwrite", "apikey/manual", "-n", &ns, "keyward.dev/rotate=one"]);
    eventually(60, "manual rotated by annotation", || {
        get_json(&ns, "apikey/manual").filter(|a| a["status"]["rotationCount"] == 1)
    })
    .await;
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["rotate", "manual", "-n", &ns])
        .env("KUBECONFIG", control_plane().kubeconfig())
        .env("NO_COLOR", "1")
        .output()
        .expect("keyward rotate");
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
    eventually(60, "suspendme issued again", || ready_key(&ns, "suspendme")).await;

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
    let metrics = http_get(&format!("http://{addr}/metrics")).await.expect("metrics").1;
    assert!(metrics.contains("keyward_"), "metrics were served");
    let healthz = http_get(&format!("http://{addr}/healthz")).await.expect("healthz").1;
    let readyz = http_get(&format!("http://{addr}/readyz")).await.expect("readyz").1;
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

    // Self-check first: the scanner finds a planted 12-character piece, a base64 form, and nothing in clean text.
    let some_key = seen.iter().find(|k| k.len() > 40).expect("a key");
    let planted_piece = format!("level=debug msg=\"{}\" done", &some_key[20..20 + PIECE]);
    assert_eq!(scanner.hits(planted_piece.as_bytes()).len(), 1, "the scanner misses a planted 12-character piece");
    let secret_json = kubectl_ok(&["get", "secrets", "-n", &ns, "-o", "json"]);
    assert!(!scanner.hits(secret_json.as_bytes()).is_empty(), "the scanner misses base64 key data");
    let near_miss = format!("{}#{}", &some_key[..PIECE - 1], &some_key[PIECE..2 * PIECE - 1]);
    assert!(scanner.hits(near_miss.as_bytes()).is_empty(), "11 characters are not a hit");

    let mut report = Vec::new();
    for (source, text) in &sources {
        let hits = scanner.hits(text);
        eprintln!("leak scan: {source}: {} bytes, {} keys hit", text.len(), hits.len());
        if !hits.is_empty() {
            // Fingerprints only: the report never shows key material.
            report.push(format!("{source}: pieces of {} key(s) found (key ids {:?})", hits.len(), hits));
        }
    }
    assert!(report.is_empty(), "key material leaked:\n{}", report.join("\n"));
    stop(op);
    gw.stop();
}
