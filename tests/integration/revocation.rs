//! "Revoked" means gone (issue #12), against the real control plane and the real `keyward run`: the Secret's name
//! cannot change under a live key, an `immutable` Secret is still revoked, a refused revocation says so on the
//! object and keeps trying, an edit that escapes the watch (label removed first) is still found, and forged
//! bookkeeping (a planted previous key, a future rotation time, a key swapped with its fingerprint) is tampering.

use crate::common::kube::{apikey, apply, condition, decode, eventually, get_json, has_event, key_id, ready_reason};
use crate::common::{control_plane_with_crds, kubectl, kubectl_ok, kubectl_stdin, namespace, operator};

fn ready_is(ns: &str, name: &str, status: &str, reason: &str) -> Option<serde_json::Value> {
    get_json(ns, &format!("apikey/{name}")).filter(|a| ready_reason(a).is_some_and(|(s, r)| s == status && r == reason))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_name_cannot_change_under_a_live_key() {
    control_plane_with_crds().await;
    let ns = namespace("revoke_rename");
    apply(&ns, &apikey("a", "  secretName: first"));
    apply(&ns, &apikey("b", "  {}"));
    for (name, patch) in [
        ("a", r#"{"spec":{"secretName":"second"}}"#),
        ("a", r#"[{"op":"remove","path":"/spec/secretName"}]"#),
        ("b", r#"{"spec":{"secretName":"b-elsewhere"}}"#),
    ] {
        let kind = if patch.starts_with('[') { "json" } else { "merge" };
        let out = kubectl(&["patch", "apikey", name, "-n", &ns, "--type", kind, "-p", patch]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} {patch}: accepted");
        assert!(err.contains("spec.secretName") && err.contains("immutable"), "{name} {patch}: {err}");
    }
    // Setting it to the name it already has (explicitly) is no change.
    kubectl_ok(&["patch", "apikey", "b", "-n", &ns, "--type", "merge", "-p", r#"{"spec":{"secretName":"b"}}"#]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immutable_secret_is_still_revoked() {
    control_plane_with_crds().await;
    let ns = namespace("revoke_immutable");
    let _op = operator::start_with_args("revoke-immutable", "info", &["--namespace", &ns]);
    apply(&ns, &apikey("frozen", "  {}"));
    kubectl_ok(&["wait", "--for=condition=Ready", "apikey/frozen", "-n", &ns, "--timeout=60s"]);
    kubectl_ok(&["patch", "secret", "frozen", "-n", &ns, "--type", "merge", "-p", r#"{"immutable":true}"#]);
    kubectl_ok(&["patch", "apikey", "frozen", "-n", &ns, "--type", "merge", "-p", r#"{"spec":{"suspended":true}}"#]);
    eventually(60, "Suspended", || ready_is(&ns, "frozen", "False", "Suspended")).await;
    // The Secret refused the update, so it was deleted: no copy of the key is left.
    eventually(30, "the immutable Secret is gone", || get_json(&ns, "secret/frozen").is_none().then_some(())).await;
    assert!(has_event(&ns, "ApiKey", "frozen", "Suspended"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_revocation_is_reported_and_retried_until_it_lands() {
    control_plane_with_crds().await;
    let ns = namespace("revoke_blocked");
    let _op = operator::start_with_args("revoke-blocked", "info", &["--namespace", &ns]);
    apply(&ns, &apikey("held", "  {}"));
    kubectl_ok(&["wait", "--for=condition=Ready", "apikey/held", "-n", &ns, "--timeout=60s"]);
    // An admission policy (built into the API server) that refuses every update of that Secret.
    let policy = format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicy\nmetadata:\n  name: freeze-{ns}\nspec:\n  failurePolicy: Fail\n  matchConstraints:\n    resourceRules:\n    - apiGroups: [\"\"]\n      apiVersions: [v1]\n      operations: [UPDATE]\n      resources: [secrets]\n  matchConditions:\n  - name: that-secret\n    expression: \"object.metadata.namespace == '{ns}' && object.metadata.name == 'held'\"\n  validations:\n  - expression: \"false\"\n    message: frozen by a test policy\n---\napiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicyBinding\nmetadata:\n  name: freeze-{ns}\nspec:\n  policyName: freeze-{ns}\n  validationActions: [Deny]\n"
    );
    let out = kubectl_stdin(&["apply", "--server-side", "-f", "-"], &policy);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The policy takes a moment to load: wait until a plain update is refused.
    eventually(60, "the admission policy refuses updates", || {
        let out = kubectl(&["annotate", "secret", "held", "-n", &ns, "probe=1", "--overwrite"]);
        (!out.status.success()).then_some(())
    })
    .await;
    kubectl_ok(&["patch", "apikey", "held", "-n", &ns, "--type", "merge", "-p", r#"{"spec":{"suspended":true}}"#]);
    let ak = eventually(60, "RevocationBlocked", || ready_is(&ns, "held", "False", "RevocationBlocked")).await;
    let (_, _, message) = condition(&ak, "Ready").expect("Ready");
    assert!(message.contains("frozen by a test policy"), "{message}");
    assert!(has_event(&ns, "ApiKey", "held", "RevocationBlocked"));
    let secret = get_json(&ns, "secret/held").expect("secret");
    assert!(decode(&secret, "api-key").is_some(), "the key is still there while the update is refused");
    // Lifting the policy lets the retry land.
    kubectl_ok(&["delete", "validatingadmissionpolicybinding", &format!("freeze-{ns}")]);
    kubectl_ok(&["delete", "validatingadmissionpolicy", &format!("freeze-{ns}")]);
    eventually(120, "Suspended once the policy is gone", || ready_is(&ns, "held", "False", "Suspended")).await;
    let secret = get_json(&ns, "secret/held").expect("secret");
    assert!(decode(&secret, "api-key").is_none(), "revoked: {:?}", secret["data"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_that_escapes_the_watch_is_found_by_the_periodic_recheck() {
    control_plane_with_crds().await;
    let ns = namespace("revoke_recheck");
    let _op = operator::start_with_args("revoke-recheck", "info", &["--namespace", &ns, "--recheck-interval", "6s"]);
    apply(&ns, &apikey("quiet", "  {}"));
    kubectl_ok(&["wait", "--for=condition=Ready", "apikey/quiet", "-n", &ns, "--timeout=60s"]);
    let before = get_json(&ns, "apikey/quiet").expect("ak")["status"]["keyId"].as_str().expect("keyId").to_string();
    // Out of the watch first (the watch selects Keyward's label), then a planted key: only a fresh read of the
    // Secret by name can see it.
    kubectl_ok(&["label", "secret", "quiet", "-n", &ns, "app.kubernetes.io/managed-by-"]);
    let planted = "kw_planted_0123456789abcdefghijklmnopqrstuvwxyz";
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(planted)
    };
    let patch = format!(r#"{{"data":{{"api-key":"{b64}"}}}}"#);
    kubectl_ok(&["patch", "secret", "quiet", "-n", &ns, "--type", "merge", "-p", &patch]);
    let ak = eventually(60, "the planted key is replaced", || {
        get_json(&ns, "apikey/quiet")
            .filter(|a| a["status"]["keyId"].as_str().is_some_and(|k| k != before && k != key_id(planted)))
    })
    .await;
    let secret = get_json(&ns, "secret/quiet").expect("secret");
    assert_ne!(decode(&secret, "api-key").as_deref(), Some(planted));
    assert_eq!(secret["metadata"]["labels"]["app.kubernetes.io/managed-by"], "keyward", "relabelled back");
    assert!(ak["status"]["keyId"].as_str().is_some());
}

/// Bookkeeping that cannot be forged: three edits a Secret editor could make, each consistent enough to pass a
/// plain fingerprint check, are each caught (the seal, impossible bookkeeping): the key is replaced, no previous key
/// is kept, and a Warning `KeyTampered` is published.
/// - a planted previous key, with its fingerprint and a grace end a year away;
/// - `rotated-at` moved into the future, so that the key would never rotate again;
/// - the key and its `key-id` annotation replaced together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_bookkeeping_is_tampering() {
    control_plane_with_crds().await;
    let ns = namespace("revoke_forged");
    let _op = operator::scoped(&ns);
    let planted = "kw_planted_abcdefghijklmnopqrstuvwxyz0123456789AB";
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(planted)
    };
    let id = key_id(planted);
    let far = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 365)).to_string();
    let edits = [
        (
            "previous",
            format!(
                r#"{{"data":{{"previous-api-key":"{b64}"}},"metadata":{{"annotations":{{"keyward.dev/previous-key-id":"{id}","keyward.dev/previous-expires-at":"{far}"}}}}}}"#
            ),
        ),
        ("frozen", format!(r#"{{"metadata":{{"annotations":{{"keyward.dev/rotated-at":"{far}"}}}}}}"#)),
        (
            "swapped",
            format!(r#"{{"data":{{"api-key":"{b64}"}},"metadata":{{"annotations":{{"keyward.dev/key-id":"{id}"}}}}}}"#),
        ),
    ];
    for (name, _) in &edits {
        apply(&ns, &apikey(name, "  rotation: {gracePeriod: 1h}"));
    }
    let mut before = Vec::new();
    for (name, _) in &edits {
        let ak = eventually(60, "issued", || ready_is(&ns, name, "True", "KeyIssued")).await;
        before.push(ak["status"]["keyId"].as_str().expect("keyId").to_string());
    }
    for ((name, patch), old) in edits.iter().zip(&before) {
        kubectl_ok(&["patch", "secret", name, "-n", &ns, "--type", "merge", "-p", patch]);
        let ak = eventually(60, &format!("{name}: the forged key replaced"), || {
            get_json(&ns, &format!("apikey/{name}"))
                .filter(|a| a["status"]["keyId"].as_str().is_some_and(|k| k != old && k != id))
        })
        .await;
        assert!(ak["status"]["previousKeyId"].is_null(), "{name}: no previous key kept after tampering");
        let s = get_json(&ns, &format!("secret/{name}")).expect("secret");
        assert_ne!(decode(&s, "api-key").as_deref(), Some(planted), "{name}");
        assert!(decode(&s, "previous-api-key").is_none(), "{name}: the planted or old key is not kept");
        eventually(30, &format!("{name}: KeyTampered"), || has_event(&ns, "ApiKey", name, "KeyTampered").then_some(()))
            .await;
    }
}
