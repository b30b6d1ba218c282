//! Malformed objects stored in the API server (before a schema tightening, or with a value the schema cannot judge)
//! do not stall the reconciliation of the others, and the operator stays alive, healthy and ready.
//!
//! Its own binary, so its own control plane: the test swaps Keyward's CRDs for loose ones and back, which changes
//! what every namespace accepts (a test validating manifests at the same time would see them accepted), and its
//! operator watches every namespace, as an installation does.

#[path = "../common/mod.rs"]
mod common;
mod objects;

use std::time::{Duration, Instant};

use common::kube::{apikey, apply, condition, decode, eventually, get_json, issued, key_id, manifest};
use common::ratelimit::policy;
use common::{control_plane_with_crds, http, kubectl, kubectl_ok, kubectl_stdin, namespace, operator};
use objects::{BAD, create, loosen_crds, restore_crds, short, warned_about};

#[tokio::test]
async fn malformed_objects_do_not_stall_the_others() {
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
        let ak = eventually(90, &format!("{name} Ready"), || issued(&ns, name)).await;
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
    let faults_done = Instant::now();
    apply(&ns, &apikey("good-after", "  format: {encoding: hex}"));
    kubectl_ok(&["annotate", "--overwrite", "apikey/good-early", "-n", &ns, "keyward.dev/rotate=after-the-swap"]);
    eventually(90, "good-after Ready", || issued(&ns, "good-after")).await;
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
    let addr = op.wait_http_addr().await;
    let healthz = http::get(&format!("http://{addr}/healthz")).await.expect("/healthz answers");
    assert_eq!((healthz.status, healthz.body.trim()), (200, "ok"), "/healthz after the faults");
    http::assert_ready_after(&addr, faults_done, "after the malformed objects and the CRD swaps").await;
    op.assert_no_panic();
    // Clean up what no later test should see: the unreadable objects (kubectl can delete what it cannot read).
    for b in BAD.iter().filter(|b| b.field.is_none()) {
        kubectl_ok(&["delete", short(b.kind), b.name, "-n", &ns, "--wait=false"]);
    }
    kubectl_ok(&["delete", "apikey", "bad-later", "good-turned-bad", "-n", &ns, "--wait=false"]);
    op.stop();
    // The probe is the live server's answer, not a cached one: with the operator gone, /readyz does not answer.
    assert!(http::get(&format!("http://{addr}/readyz")).await.is_none(), "/readyz answers with no operator");
}
