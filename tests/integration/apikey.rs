//! The ApiKey lifecycle against the real control plane, driven the way a user would (kubectl apply, annotate,
//! delete), with the real `keyward run` binary as the operator. Keys are compared by fingerprint, so that a
//! failing assertion never prints key material.

use std::time::Duration;

use crate::common::kube::{apikey, apply, decode, eventually, get_json, key_id as sha_prefix, ready_reason};
use crate::common::operator::{self, Operator};
use crate::common::{control_plane_with_crds, http, keyward_rotate, kubectl_ok, namespace};

/// A namespace for `test`, and an operator that watches it (it stops when the test drops it).
async fn setup(test: &str) -> (String, Operator) {
    control_plane_with_crds().await;
    let ns = namespace(test);
    let op = operator::scoped(&ns);
    (ns, op)
}

#[tokio::test]
async fn issues_a_key_into_an_owned_secret() {
    let (ns, _op) = setup("issues_a_key").await;
    apply(
        &ns,
        &apikey(
            "svc",
            "  secretName: svc-key\n  format: {prefix: kw_test_, encoding: base62}\n  secretTemplate:\n    labels: {gw: \"yes\"}\n    annotations: {owner: team}",
        ),
    );
    kubectl_ok(&["wait", "--for=condition=Ready", "apikey/svc", "-n", &ns, "--timeout=60s"]);
    let s = get_json(&ns, "secret/svc-key").expect("secret exists");
    let key = decode(&s, "api-key").expect("api-key");
    assert!(key.starts_with("kw_test_"));
    assert!(keyward::keys::verify_checksum(&key), "checksum of the issued key");
    let key_id = sha_prefix(&key);
    assert_eq!(decode(&s, "key-id").as_deref(), Some(key_id.as_str()));
    assert!(decode(&s, "previous-api-key").is_none());
    assert_eq!(s["type"], "Opaque");
    assert_eq!(s["metadata"]["labels"]["app.kubernetes.io/managed-by"], "keyward");
    assert_eq!(s["metadata"]["labels"]["keyward.dev/apikey"], "svc");
    assert_eq!(s["metadata"]["labels"]["gw"], "yes");
    assert_eq!(s["metadata"]["annotations"]["owner"], "team");
    assert_eq!(s["metadata"]["annotations"]["keyward.dev/key-id"], key_id.as_str());
    assert!(s["metadata"]["annotations"]["keyward.dev/rotated-at"].is_string());
    let owner = &s["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "ApiKey");
    assert_eq!(owner["controller"], true);
    let ak = get_json(&ns, "apikey/svc").expect("apikey");
    assert_eq!(ak["status"]["keyId"], key_id.as_str());
    assert_eq!(ready_reason(&ak), Some(("True".into(), "KeyIssued".into())));
    assert_eq!(ak["status"]["observedGeneration"], ak["metadata"]["generation"]);
    // Printer columns show the key id.
    let table = kubectl_ok(&["get", "apikey", "svc", "-n", &ns]);
    assert!(table.contains(&key_id), "{table}");
}

#[tokio::test]
async fn rotates_on_interval_with_grace_then_drops_previous() {
    let (ns, _op) = setup("interval_rotation").await;
    // A wide window between the end of the grace period (2 s) and the next rotation (8 s), so a busy machine
    // still sees it.
    apply(&ns, &apikey("fast", "  rotation: {interval: 8s, gracePeriod: 2s}"));
    kubectl_ok(&["wait", "--for=condition=Ready", "apikey/fast", "-n", &ns, "--timeout=60s"]);
    let first = decode(&get_json(&ns, "secret/fast").expect("secret"), "api-key").expect("key");
    // After the first rotation the old key is the previous one, valid for the grace period.
    let (cur, prev) = eventually(30, "a rotation with a previous key", || {
        let s = get_json(&ns, "secret/fast")?;
        let cur = decode(&s, "api-key")?;
        let prev = decode(&s, "previous-api-key")?;
        (cur != first).then_some((cur, prev))
    })
    .await;
    assert_eq!(sha_prefix(&prev), sha_prefix(&first), "the previous key is the old current key");
    let ak = get_json(&ns, "apikey/fast").expect("apikey");
    assert!(ak["status"]["rotationCount"].as_i64().unwrap_or(0) >= 1);
    assert_eq!(ak["status"]["previousKeyId"].as_str(), Some(sha_prefix(&first).as_str()));
    assert!(ak["status"]["nextRotationTime"].is_string());
    // The printer column shows when, not kubectl's "<invalid>" for a future date.
    let table = kubectl_ok(&["get", "apikey", "fast", "-n", &ns]);
    let next = ak["status"]["nextRotationTime"].as_str().expect("nextRotationTime");
    assert!(!table.contains("<invalid>") && table.contains(&next[..10]), "{table}");
    // The grace period ends before the next rotation: the previous key disappears on its own.
    eventually(20, "the previous key to be removed", || {
        let s = get_json(&ns, "secret/fast")?;
        (decode(&s, "previous-api-key").is_none() && decode(&s, "api-key")? == cur).then_some(())
    })
    .await;
}

#[tokio::test]
async fn manual_rotation_once_per_request() {
    let (ns, _op) = setup("manual_rotation").await;
    apply(&ns, &apikey("m", "  rotation: {gracePeriod: 0s}"));
    kubectl_ok(&["wait", "--for=condition=Ready", "apikey/m", "-n", &ns, "--timeout=60s"]);
    let first = decode(&get_json(&ns, "secret/m").expect("secret"), "api-key").expect("key");
    kubectl_ok(&["annotate", "apikey/m", "-n", &ns, "keyward.dev/rotate=one"]);
    let second = eventually(30, "rotation on request", || {
        let s = get_json(&ns, "secret/m")?;
        decode(&s, "api-key").filter(|k| *k != first)
    })
    .await;
    let ak = eventually(10, "status to record the request", || {
        get_json(&ns, "apikey/m").filter(|a| a["status"]["lastRotateRequest"] == "one")
    })
    .await;
    assert_eq!(ak["status"]["rotationCount"], 1);
    // gracePeriod 0s: the previous key is dropped at once.
    assert!(decode(&get_json(&ns, "secret/m").expect("secret"), "previous-api-key").is_none());
    // The same request value again does nothing; `keyward rotate` makes a new one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now_key = decode(&get_json(&ns, "secret/m").expect("secret"), "api-key").map(|k| sha_prefix(&k));
    assert_eq!(now_key, Some(sha_prefix(&second)), "the same request rotated again");
    keyward_rotate(&ns, "m");
    eventually(30, "rotation by keyward rotate", || {
        get_json(&ns, "apikey/m").filter(|a| a["status"]["rotationCount"] == 2)
    })
    .await;
}

#[tokio::test]
async fn suspend_revokes_and_resume_issues_a_fresh_key() {
    let (ns, _op) = setup("suspend").await;
    apply(&ns, &apikey("s", "  suspended: false"));
    kubectl_ok(&["wait", "--for=condition=Ready", "apikey/s", "-n", &ns, "--timeout=60s"]);
    let first = decode(&get_json(&ns, "secret/s").expect("secret"), "api-key").expect("key");
    kubectl_ok(&["patch", "apikey/s", "-n", &ns, "--type=merge", "-p", r#"{"spec":{"suspended":true}}"#]);
    eventually(30, "suspension to remove the key", || {
        let s = get_json(&ns, "secret/s")?;
        let ak = get_json(&ns, "apikey/s")?;
        (decode(&s, "api-key").is_none() && ready_reason(&ak) == Some(("False".into(), "Suspended".into())))
            .then_some(())
    })
    .await;
    kubectl_ok(&["patch", "apikey/s", "-n", &ns, "--type=merge", "-p", r#"{"spec":{"suspended":false}}"#]);
    let fresh = eventually(30, "a fresh key after resuming", || decode(&get_json(&ns, "secret/s")?, "api-key")).await;
    assert_ne!(sha_prefix(&fresh), sha_prefix(&first), "resuming must not bring back the revoked key");
}

#[tokio::test]
async fn expired_key_has_no_material() {
    let (ns, _op) = setup("expired").await;
    apply(&ns, &apikey("e", "  expiresAt: \"2020-01-01T00:00:00Z\""));
    eventually(30, "Expired", || {
        let ak = get_json(&ns, "apikey/e")?;
        (ready_reason(&ak) == Some(("False".into(), "Expired".into()))).then_some(())
    })
    .await;
    if let Some(s) = get_json(&ns, "secret/e") {
        assert!(decode(&s, "api-key").is_none(), "an expired key holds no material");
    }
}

#[tokio::test]
async fn foreign_secret_is_left_untouched() {
    let (ns, _op) = setup("foreign_secret").await;
    kubectl_ok(&["create", "secret", "generic", "taken", "-n", &ns, "--from-literal=api-key=not-ours"]);
    let before = get_json(&ns, "secret/taken").expect("secret");
    apply(&ns, &apikey("taken", ""));
    eventually(30, "SecretConflict", || {
        let ak = get_json(&ns, "apikey/taken")?;
        (ready_reason(&ak) == Some(("False".into(), "SecretConflict".into()))).then_some(())
    })
    .await;
    // `kubectl get` says why without `describe`: the Reason column is the Ready condition's reason.
    let table = kubectl_ok(&["get", "apikey", "taken", "-n", &ns]);
    let row: Vec<&str> = table.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    assert_eq!(row.get(..3), Some(&["taken", "False", "SecretConflict"][..]), "{table}");
    let after = get_json(&ns, "secret/taken").expect("secret");
    assert_eq!(before["metadata"]["resourceVersion"], after["metadata"]["resourceVersion"]);
    assert_eq!(decode(&after, "api-key").as_deref(), Some("not-ours"));
}

#[tokio::test]
async fn deleted_secret_is_recreated_with_a_new_key() {
    let (ns, _op) = setup("deleted_secret").await;
    apply(&ns, &apikey("d", ""));
    kubectl_ok(&["wait", "--for=condition=Ready", "apikey/d", "-n", &ns, "--timeout=60s"]);
    let first = decode(&get_json(&ns, "secret/d").expect("secret"), "api-key").expect("key");
    kubectl_ok(&["delete", "secret", "d", "-n", &ns]);
    let second = eventually(30, "the Secret to come back", || decode(&get_json(&ns, "secret/d")?, "api-key")).await;
    assert_ne!(sha_prefix(&first), sha_prefix(&second), "a deleted Secret gets a NEW key");
    eventually(30, "a KeyRegenerated event", || {
        let ev = kubectl_ok(&["get", "events", "-n", &ns, "-o", "json"]);
        ev.contains("KeyRegenerated").then_some(())
    })
    .await;
}

#[tokio::test]
async fn edited_key_material_is_replaced() {
    let (ns, _op) = setup("tampered").await;
    apply(&ns, &apikey("t", ""));
    kubectl_ok(&["wait", "--for=condition=Ready", "apikey/t", "-n", &ns, "--timeout=60s"]);
    kubectl_ok(&[
        "patch",
        "secret/t",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"stringData":{"api-key":"planted-by-someone"}}"#,
    ]);
    let key = eventually(30, "the planted key to be replaced", || {
        decode(&get_json(&ns, "secret/t")?, "api-key").filter(|k| k != "planted-by-someone")
    })
    .await;
    assert!(keyward::keys::verify_checksum(&key));
    let s = get_json(&ns, "secret/t").expect("secret");
    assert!(decode(&s, "previous-api-key").is_none(), "a tampered key is not kept as previous");
    eventually(30, "a KeyTampered event", || {
        kubectl_ok(&["get", "events", "-n", &ns, "-o", "json"]).contains("KeyTampered").then_some(())
    })
    .await;
}

#[tokio::test]
async fn secret_is_garbage_collected_with_its_apikey() {
    let (ns, _op) = setup("garbage_collected").await;
    apply(&ns, &apikey("g", ""));
    kubectl_ok(&["wait", "--for=condition=Ready", "apikey/g", "-n", &ns, "--timeout=60s"]);
    kubectl_ok(&["delete", "apikey", "g", "-n", &ns]);
    // NB: the garbage collector re-reads discovery every 30 s, so a CRD's dependents can take that long.
    eventually(90, "the Secret to be garbage-collected", || get_json(&ns, "secret/g").is_none().then_some(())).await;
}

#[tokio::test]
async fn rollout_restart_after_rotation() {
    let (ns, _op) = setup("rollout_restart").await;
    apply(
        &ns,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: c, image: example.invalid/web:1}]}\n",
    );
    apply(
        &ns,
        &apikey(
            "r",
            "  rotation: {gracePeriod: 3s}\n  rolloutRestart:\n  - {kind: Deployment, name: web}\n  - {kind: StatefulSet, name: missing}",
        ),
    );
    kubectl_ok(&["wait", "--for=condition=Ready", "apikey/r", "-n", &ns, "--timeout=60s"]);
    // The first key needs no restart.
    let tpl = |ns: &str| {
        get_json(ns, "deployment/web").and_then(|d| {
            d["spec"]["template"]["metadata"]["annotations"]["keyward.dev/restartedAt"].as_str().map(str::to_string)
        })
    };
    assert_eq!(tpl(&ns), None);
    // Two quick rotations collapse into one restart for the latest key.
    kubectl_ok(&["annotate", "apikey/r", "-n", &ns, "keyward.dev/rotate=a"]);
    eventually(20, "first rotation", || get_json(&ns, "apikey/r").filter(|a| a["status"]["rotationCount"] == 1)).await;
    kubectl_ok(&["annotate", "--overwrite", "apikey/r", "-n", &ns, "keyward.dev/rotate=b"]);
    let ak =
        eventually(20, "second rotation", || get_json(&ns, "apikey/r").filter(|a| a["status"]["rotationCount"] == 2))
            .await;
    let rotated_at = ak["status"]["lastRotationTime"].as_str().expect("lastRotationTime").to_string();
    let stamped = eventually(30, "the Deployment to be restarted", || tpl(&ns)).await;
    let parse = |s: &str| s.parse::<jiff::Timestamp>().expect("timestamp");
    assert_eq!(parse(&stamped), parse(&rotated_at), "restarted for the latest key");
    let d = get_json(&ns, "deployment/web").expect("deployment");
    assert_eq!(d["metadata"]["generation"], 2, "exactly one restart (one template change)");
    eventually(20, "a RolloutTargetMissing event", || {
        kubectl_ok(&["get", "events", "-n", &ns, "-o", "json"]).contains("RolloutTargetMissing").then_some(())
    })
    .await;
}

/// The operator's count of finished ApiKey reconciles (successful or not), from its /metrics.
async fn apikey_reconciles(op: &Operator) -> f64 {
    http::sum(&op.metrics().await, "keyward_reconciles_total", &["controller=\"apikey\""])
}

#[tokio::test]
async fn idle_means_no_writes() {
    let (ns, op) = setup("idle").await;
    // A missing restart target must not make idle reconciles publish events either.
    apply(&ns, &apikey("i", "  rotation: {interval: 720h}\n  rolloutRestart: [{kind: Deployment, name: absent}]"));
    kubectl_ok(&["wait", "--for=condition=Ready", "apikey/i", "-n", &ns, "--timeout=60s"]);
    // Settled: the reconcile count stops moving (the operator watches this namespace only, so every reconcile it
    // counts is of this key).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = apikey_reconciles(&op).await;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = apikey_reconciles(&op).await;
        if now == last && now >= 1.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the operator never settled ({now} reconciles)");
        last = now;
    }
    let rv = |what: &str| {
        get_json(&ns, what).expect("object")["metadata"]["resourceVersion"].as_str().expect("rv").to_string()
    };
    let (ak, s) = (rv("apikey/i"), rv("secret/i"));
    // Names and resourceVersions: a new Event or a changed one shows.
    let events = || {
        kubectl_ok(&[
            "get",
            "events",
            "-n",
            &ns,
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}@{.metadata.resourceVersion} {end}",
        ])
    };
    let events_before = events();
    // Touch the ApiKey (an annotation, not the spec: annotations trigger a reconcile, labels and status do not) to
    // force a reconcile: it must write nothing.
    let before_poke = apikey_reconciles(&op).await;
    kubectl_ok(&["annotate", "apikey/i", "-n", &ns, "poke=1"]);
    let ak_after_poke = rv("apikey/i");
    assert_ne!(ak, ak_after_poke, "the annotation changed the ApiKey");
    // The poke caused a reconcile: without one, "no writes" would prove nothing.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while apikey_reconciles(&op).await <= before_poke {
        assert!(std::time::Instant::now() < deadline, "the poke caused no reconcile within 30s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let logged = op.log_lines(&["reconciled", &ns, "name=i"]);
    assert!(!logged.is_empty(), "the operator's log shows no reconcile of the key");
    // Time for a write to land, had the reconcile made one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rv("secret/i"), s, "the Secret was rewritten while nothing was due");
    assert_eq!(rv("apikey/i"), ak_after_poke, "the status was rewritten while nothing was due");
    assert_eq!(events(), events_before, "events were published or updated while nothing was due");
}

#[tokio::test]
async fn bad_spec_the_schema_cannot_catch_reports_invalid_spec() {
    let (ns, _op) = setup("invalid_spec").await;
    // Five fields pass the schema, but 61 is not a minute.
    apply(&ns, &apikey("bad", "  rotation: {schedule: \"61 * * * *\"}"));
    let ak = eventually(30, "InvalidSpec", || {
        let ak = get_json(&ns, "apikey/bad")?;
        (ready_reason(&ak) == Some(("False".into(), "InvalidSpec".into()))).then_some(ak)
    })
    .await;
    let message = ak["status"]["conditions"].to_string();
    assert!(message.contains("rotation.schedule"), "{message}");
    // Others keep working meanwhile.
    apply(&ns, &apikey("good", ""));
    kubectl_ok(&["wait", "--for=condition=Ready", "apikey/good", "-n", &ns, "--timeout=60s"]);
}
