//! Keys that real gateways accept (issue #13), against the real control plane and the real `keyward run`: each
//! preset's Secret shape; the previous key's own Secret (created at a rotation, removed at the grace end and on
//! suspension); template edits that rewrite without rotating and leave nothing behind; an edited previous-key
//! Secret treated like an edited key. Envoy Gateway's own translator (`egctl x translate`, built from its Go
//! module) reads the Secret Keyward wrote: its API-key filter holds exactly the current key (and, in grace, the
//! previous key) and never the key id; the Envoy Gateway recipe of docs/gateways.md is accepted by the API server
//! with Envoy Gateway's and Gateway API's CRDs installed from the same module. Kong and Authorino are not
//! available here: their tests check the documented contracts (label, entry names, one key per Secret, the
//! `-previous` Secret's lifetime). Keys are compared by fingerprint; no assertion message holds key material.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::common::kube::{apikey, apply, decode, eventually, get_json, has_event, key_id, ready_reason};
use crate::common::{control_plane_with_crds, kubectl, kubectl_ok, kubectl_stdin, namespace, operator};

/// The ApiKey once Ready with the given rotation count.
fn ready_at(ns: &str, name: &str, count: i64) -> Option<Value> {
    let ak = get_json(ns, &format!("apikey/{name}"))?;
    let ok = ready_reason(&ak) == Some(("True".into(), "KeyIssued".into()))
        && ak["status"]["rotationCount"].as_i64().unwrap_or(0) == count;
    ok.then_some(ak)
}

/// A Secret's data entry names.
fn entries(s: &Value) -> BTreeSet<String> {
    s["data"].as_object().map(|d| d.keys().cloned().collect()).unwrap_or_default()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The fingerprint of a data entry (never the key).
fn fp(s: &Value, entry: &str) -> Option<String> {
    decode(s, entry).map(|k| key_id(&k))
}

fn status_str(ak: &Value, field: &str) -> Option<String> {
    ak["status"][field].as_str().map(str::to_string)
}

fn label(s: &Value, l: &str) -> Option<String> {
    s["metadata"]["labels"][l].as_str().map(str::to_string)
}

fn patch(ns: &str, what: &str, p: &str) {
    kubectl_ok(&["patch", what, "-n", ns, "--type", "merge", "-p", p]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presets_write_their_gateways_format_and_only_keys() {
    control_plane_with_crds().await;
    let ns = namespace("gw_presets");
    let _op = operator::scoped(&ns);
    apply(&ns, &apikey("envoy", "  gateway: EnvoyGateway"));
    apply(&ns, &apikey("kong", "  gateway: Kong"));
    apply(&ns, &apikey("authz", "  gateway: Authorino\n  secretTemplate:\n    labels: {gw.example.com/keys: \"on\"}"));
    apply(&ns, &apikey("plain", "  {}"));
    // (ApiKey, the entries its Secret must hold exactly, the entry of the current key)
    for (name, want, current) in [
        ("envoy", vec!["envoy"], "envoy"),
        ("kong", vec!["key"], "key"),
        ("authz", vec!["api_key"], "api_key"),
        ("plain", vec!["api-key", "key-id"], "api-key"),
    ] {
        let ak = eventually(60, &format!("{name} issued"), || ready_at(&ns, name, 0)).await;
        let s = get_json(&ns, &format!("secret/{name}")).expect("secret");
        assert_eq!(entries(&s), names(&want), "{name}: the data entries");
        assert_eq!(fp(&s, current), status_str(&ak, "keyId"), "{name}: the current key's entry");
        assert_eq!(s["type"], "Opaque", "{name}");
    }
    let kong = get_json(&ns, "secret/kong").expect("secret");
    assert_eq!(label(&kong, "konghq.com/credential").as_deref(), Some("key-auth"), "Kong's credential label");
    let authz = get_json(&ns, "secret/authz").expect("secret");
    assert_eq!(label(&authz, "gw.example.com/keys").as_deref(), Some("on"), "the AuthConfig's selector label");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_refuses_presets_that_would_expose_the_key_id_or_select_nothing() {
    control_plane_with_crds().await;
    let ns = namespace("gw_schema");
    for (spec, field) in [
        ("  gateway: Authorino", "spec.secretTemplate.labels"),
        ("  gateway: Kong\n  secretTemplate:\n    keys: {keyId: key-id}", "spec.secretTemplate.keys.keyId"),
        ("  secretTemplate:\n    keys: {current: a, previous: a}", "secretTemplate.keys.current"),
        ("  secretTemplate:\n    keys: {current: \"a/b\"}", "secretTemplate.keys.current"),
        ("  gateway: Nginx", "spec.gateway"),
    ] {
        let out = kubectl_stdin(&["apply", "--server-side", "-n", &ns, "-f", "-"], &apikey("bad", spec));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted: {spec}");
        assert!(err.contains(field), "{spec}: the error names {field}: {err}");
    }
}

/// Kong's contract (KIC 3.x key-auth): one credential per Secret, labelled, in `key`; during the grace period the
/// previous key is a second credential Secret `<name>-previous` of the same format, listed in the KongConsumer
/// too; it is gone at the grace end and on suspension.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kong_previous_key_lives_in_its_own_secret_for_the_grace_period() {
    control_plane_with_crds().await;
    let ns = namespace("gw_kong_previous");
    let _op = operator::scoped(&ns);
    apply(&ns, &apikey("k", "  gateway: Kong\n  rotation: {gracePeriod: 8s}"));
    let first = eventually(60, "issued", || ready_at(&ns, "k", 0)).await;
    assert!(get_json(&ns, "secret/k-previous").is_none(), "no previous Secret before a rotation");
    kubectl_ok(&["annotate", "apikey/k", "-n", &ns, "keyward.dev/rotate=one"]);
    let ak = eventually(60, "rotated", || ready_at(&ns, "k", 1)).await;
    let prev = get_json(&ns, "secret/k-previous").expect("the previous key's Secret exists during the grace period");
    let main = get_json(&ns, "secret/k").expect("secret");
    assert_eq!(entries(&prev), names(&["key"]), "one credential, under Kong's entry name");
    assert_eq!(entries(&main), names(&["key"]), "the main Secret holds the current key only");
    assert_eq!(fp(&prev, "key"), status_str(&first, "keyId"), "the previous Secret holds the key that was current");
    assert_eq!(status_str(&ak, "previousKeyId"), status_str(&first, "keyId"));
    assert_eq!(fp(&main, "key"), status_str(&ak, "keyId"));
    for l in ["konghq.com/credential", "keyward.dev/apikey", "app.kubernetes.io/managed-by"] {
        assert_eq!(label(&prev, l), label(&main, l), "same label {l}");
    }
    assert_eq!(prev["type"], main["type"]);
    let owner = &prev["metadata"]["ownerReferences"][0];
    assert_eq!((owner["kind"].as_str(), owner["uid"].as_str()), (Some("ApiKey"), ak["metadata"]["uid"].as_str()));
    // The grace period ends: the previous key's Secret is deleted.
    eventually(60, "the previous Secret removed at the grace end", || {
        get_json(&ns, "secret/k-previous").is_none().then_some(())
    })
    .await;
    let ak = eventually(30, "no previous key in status", || {
        get_json(&ns, "apikey/k").filter(|a| a["status"]["previousKeyId"].is_null())
    })
    .await;
    assert_eq!(fp(&get_json(&ns, "secret/k").expect("secret"), "key"), status_str(&ak, "keyId"), "current kept");
    // Rotate again, then suspend inside the grace period: both Secrets lose their keys.
    patch(&ns, "apikey/k", r#"{"spec":{"rotation":{"gracePeriod":"1h"}}}"#);
    kubectl_ok(&["annotate", "--overwrite", "apikey/k", "-n", &ns, "keyward.dev/rotate=two"]);
    eventually(60, "rotated again", || ready_at(&ns, "k", 2)).await;
    assert!(get_json(&ns, "secret/k-previous").is_some(), "a previous Secret for the second rotation");
    patch(&ns, "apikey/k", r#"{"spec":{"suspended":true}}"#);
    eventually(60, "suspended, the previous Secret deleted and the main one empty", || {
        let main = get_json(&ns, "secret/k")?;
        (get_json(&ns, "secret/k-previous").is_none() && entries(&main).is_empty()).then_some(())
    })
    .await;
}

/// Authorino's contract (released Authorino reads one `api_key` per Secret, selected by label): both Secrets
/// carry the selector label, each holds one `api_key`, and the previous one lasts for the grace period only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorino_selects_both_keys_by_label_during_the_grace_period() {
    control_plane_with_crds().await;
    let ns = namespace("gw_authorino");
    let _op = operator::scoped(&ns);
    let spec = "  gateway: Authorino\n  rotation: {gracePeriod: 1h}\n  secretTemplate:\n    labels: {authorino.kuadrant.io/managed-by: authorino, gw.example.com/keys: \"on\"}";
    apply(&ns, &apikey("a", spec));
    let first = eventually(60, "issued", || ready_at(&ns, "a", 0)).await;
    kubectl_ok(&["annotate", "apikey/a", "-n", &ns, "keyward.dev/rotate=one"]);
    let ak = eventually(60, "rotated", || ready_at(&ns, "a", 1)).await;
    let selected = kubectl_ok(&["get", "secrets", "-n", &ns, "-l", "gw.example.com/keys=on", "-o", "json"]);
    let selected: Value = serde_json::from_str(&selected).expect("json");
    let mut ids = BTreeSet::new();
    for s in selected["items"].as_array().expect("items") {
        assert_eq!(entries(s), names(&["api_key"]), "one api_key per selected Secret");
        ids.insert(fp(s, "api_key").expect("key"));
    }
    let want: BTreeSet<String> =
        [status_str(&ak, "keyId"), status_str(&first, "keyId")].into_iter().flatten().collect();
    assert_eq!(ids, want, "the selector finds exactly the current and the previous key");
    // Suspension removes the previous key's Secret at once.
    patch(&ns, "apikey/a", r#"{"spec":{"suspended":true}}"#);
    eventually(60, "the previous Secret deleted on suspension", || {
        get_json(&ns, "secret/a-previous").is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_edits_rewrite_the_secret_without_rotating_and_leave_nothing_behind() {
    control_plane_with_crds().await;
    let ns = namespace("gw_reshape");
    let _op = operator::scoped(&ns);
    apply(&ns, &apikey("t", "  rotation: {gracePeriod: 1h}\n  secretTemplate:\n    labels: {team: a}"));
    let first = eventually(60, "issued", || ready_at(&ns, "t", 0)).await;
    kubectl_ok(&["annotate", "apikey/t", "-n", &ns, "keyward.dev/rotate=one"]);
    let ak = eventually(60, "rotated", || ready_at(&ns, "t", 1)).await;
    let (current, previous) = (status_str(&ak, "keyId"), status_str(&first, "keyId"));
    let s = get_json(&ns, "secret/t").expect("secret");
    assert_eq!(entries(&s), names(&["api-key", "previous-api-key", "key-id"]));

    // Envoy Gateway's format: the same two keys under the client ids, nothing else; the old label gone.
    patch(
        &ns,
        "apikey/t",
        r#"{"spec":{"gateway":"EnvoyGateway","secretTemplate":{"labels":{"team":null,"tier":"b"}}}}"#,
    );
    let s = eventually(60, "rewritten for Envoy Gateway", || {
        get_json(&ns, "secret/t").filter(|s| entries(s) == names(&["t", "t-previous"]))
    })
    .await;
    assert_eq!((fp(&s, "t"), fp(&s, "t-previous")), (current.clone(), previous.clone()), "same keys");
    assert_eq!((label(&s, "team"), label(&s, "tier").as_deref()), (None, Some("b")), "labels follow the template");

    // The previous key moves to its own Secret, and back.
    patch(&ns, "apikey/t", r#"{"spec":{"secretTemplate":{"previous":"OwnSecret"}}}"#);
    let own = eventually(60, "the previous key in its own Secret", || get_json(&ns, "secret/t-previous")).await;
    assert_eq!((entries(&own), fp(&own, "t")), (names(&["t"]), previous.clone()));
    let s = eventually(60, "the main Secret without it", || {
        get_json(&ns, "secret/t").filter(|s| entries(s) == names(&["t"]))
    })
    .await;
    assert_eq!(fp(&s, "t"), current);
    patch(&ns, "apikey/t", r#"{"spec":{"gateway":null,"secretTemplate":{"previous":null}}}"#);
    let s = eventually(60, "back to one Secret", || {
        let s = get_json(&ns, "secret/t")?;
        (entries(&s) == names(&["api-key", "previous-api-key", "key-id"])).then_some(s)
    })
    .await;
    assert_eq!((fp(&s, "api-key"), fp(&s, "previous-api-key")), (current, previous), "same keys again");
    eventually(60, "the previous key's Secret removed", || get_json(&ns, "secret/t-previous").is_none().then_some(()))
        .await;
    let ak = get_json(&ns, "apikey/t").expect("apikey");
    assert_eq!(ak["status"]["rotationCount"].as_i64(), Some(1), "no rotation for a template edit");
    assert!(has_event(&ns, "ApiKey", "t", "Reshaped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_previous_key_secret_is_treated_like_an_edited_key() {
    control_plane_with_crds().await;
    let ns = namespace("gw_previous_tamper");
    let _op = operator::scoped(&ns);
    apply(&ns, &apikey("p", "  gateway: Kong\n  rotation: {gracePeriod: 1h}"));
    eventually(60, "issued", || ready_at(&ns, "p", 0)).await;
    kubectl_ok(&["annotate", "apikey/p", "-n", &ns, "keyward.dev/rotate=one"]);
    let ak = eventually(60, "rotated", || ready_at(&ns, "p", 1)).await;
    // A key of the attacker's choosing in the previous key's Secret, fingerprint annotation updated to match.
    let planted = "kw_attacker_chosen_key_000000000000";
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(planted)
    };
    let p = format!(
        r#"{{"data":{{"key":"{b64}"}},"metadata":{{"annotations":{{"keyward.dev/previous-key-id":"{}"}}}}}}"#,
        key_id(planted)
    );
    patch(&ns, "secret/p-previous", &p);
    eventually(60, "the key replaced as compromised", || {
        let a = get_json(&ns, "apikey/p")?;
        (has_event(&ns, "ApiKey", "p", "KeyTampered") && status_str(&a, "keyId") != status_str(&ak, "keyId"))
            .then_some(())
    })
    .await;
    eventually(60, "the edited Secret removed", || get_json(&ns, "secret/p-previous").is_none().then_some(())).await;
    // The main Secret deleted during a grace period: a fresh key, and the previous key's Secret goes with the old one.
    let ak = eventually(60, "settled", || ready_at(&ns, "p", 1)).await;
    kubectl_ok(&["annotate", "--overwrite", "apikey/p", "-n", &ns, "keyward.dev/rotate=two"]);
    eventually(60, "rotated again", || ready_at(&ns, "p", 2).filter(|a| a["status"]["previousKeyId"].is_string()))
        .await;
    assert!(get_json(&ns, "secret/p-previous").is_some());
    kubectl_ok(&["delete", "secret", "p", "-n", &ns]);
    eventually(60, "a fresh key and no previous Secret", || {
        let a = get_json(&ns, "apikey/p")?;
        let fresh = status_str(&a, "keyId") != status_str(&ak, "keyId") && get_json(&ns, "secret/p").is_some();
        (fresh && get_json(&ns, "secret/p-previous").is_none() && has_event(&ns, "ApiKey", "p", "KeyRegenerated"))
            .then_some(())
    })
    .await;
    let out = kubectl(&["get", "secrets", "-n", &ns, "-o", "json"]);
    let all: Value = serde_json::from_slice(&out.stdout).expect("json");
    for s in all["items"].as_array().expect("items") {
        for e in entries(s) {
            assert_ne!(fp(s, &e), Some(key_id(planted)), "the planted key is in no Secret");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Envoy Gateway's own code: egctl's translator and the module's CRDs

/// The YAML documents of the Envoy Gateway recipe in docs/gateways.md (the block that starts `# recipe:
/// envoy-gateway`), as JSON values.
fn envoy_recipe() -> Vec<Value> {
    recipe("envoy-gateway")
}

/// The YAML documents of the docs/gateways.md block that starts `# recipe: <tag>`, as JSON values.
pub(crate) fn recipe(tag: &str) -> Vec<Value> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/gateways.md")).expect("docs");
    let start = doc.find(&format!("```yaml\n# recipe: {tag}\n")).expect("the recipe block") + 8;
    let block = &doc[start..start + doc[start..].find("```").expect("end of block")];
    block.split("\n---\n").map(|d| serde_norway::from_str::<serde_json::Value>(d).expect("recipe YAML")).collect()
}

/// Installs the Gateway API (standard channel) and Envoy Gateway CRDs from the pinned Envoy Gateway module, once.
pub(crate) async fn envoy_gateway_crds() {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_init(|| async {
        let files = keyward::devenv::egctl::crd_files().unwrap_or_else(|e| panic!("Envoy Gateway's CRDs: {e}"));
        for f in files {
            let text = std::fs::read_to_string(&f).expect("CRD file");
            let text: String = text.lines().filter(|l| !l.starts_with("{{")).map(|l| format!("{l}\n")).collect();
            let crds: Vec<&str> =
                text.split("\n---\n").filter(|d| d.contains("\nkind: CustomResourceDefinition\n")).collect();
            let out = kubectl_stdin(&["apply", "--server-side", "-f", "-"], &crds.join("\n---\n"));
            assert!(out.status.success(), "{}: {}", f.display(), String::from_utf8_lossy(&out.stderr));
        }
        // NB: not `kubectl wait`: it fails instead of waiting on a CRD whose status has no conditions yet.
        for crd in [
            "securitypolicies.gateway.envoyproxy.io",
            "backendtrafficpolicies.gateway.envoyproxy.io",
            "httproutes.gateway.networking.k8s.io",
        ] {
            eventually(60, &format!("CRD {crd} Established"), || {
                let out = kubectl(&["get", "crd", crd, "-o", "json"]);
                let v: Value = serde_json::from_slice(&out.stdout).ok()?;
                let conditions = v["status"]["conditions"].as_array()?;
                conditions.iter().any(|c| c["type"] == "Established" && c["status"] == "True").then_some(())
            })
            .await;
        }
    })
    .await;
}

/// Runs `egctl x translate --from gateway-api --to xds` on the recipe's gateway objects in `ns`, the Secret as
/// Keyward wrote it and a backend Service; returns every API-key credential of the xDS output as
/// (client id, fingerprint of the key).
fn translate(ns: &str, secret: &Value) -> BTreeSet<(String, String)> {
    let gateway: Vec<Value> = envoy_recipe().into_iter().filter(|d| d["kind"] != "ApiKey").collect();
    let xds = egctl_translate(&translator_input(ns, gateway, std::slice::from_ref(secret)), "xds");
    let mut found = BTreeSet::new();
    collect_credentials(&xds, &mut found);
    found
}

/// The translator's input: `gateway` objects moved to `ns` (a GatewayClass stays cluster-scoped), the backend
/// Service the recipes route to, and each Secret's name and data as Keyward wrote them.
pub(crate) fn translator_input(ns: &str, mut gateway: Vec<Value>, secrets: &[Value]) -> Vec<Value> {
    for d in gateway.iter_mut().filter(|d| d["kind"] != "GatewayClass") {
        d["metadata"]["namespace"] = ns.into();
    }
    gateway.push(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "checkout-backend", "namespace": ns},
        "spec": {"clusterIP": "127.0.0.1", "ports": [{"port": 8080}]},
    }));
    for s in secrets {
        gateway.push(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": s["metadata"]["name"], "namespace": ns},
            "data": s["data"],
        }));
    }
    gateway
}

/// `egctl x translate --from gateway-api --to <to> -t all -o json` of `docs`: its JSON output. The input holds
/// key material, and so may the output and a failing translator's error: neither is ever printed.
pub(crate) fn egctl_translate(docs: &[Value], to: &str) -> Value {
    let input: Vec<String> = docs.iter().map(|d| serde_json::to_string(d).expect("json")).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("in.yaml");
    std::fs::write(&file, input.join("\n---\n")).expect("write input");
    let egctl = keyward::devenv::egctl::binary().unwrap_or_else(|e| panic!("egctl: {e}"));
    let out = std::process::Command::new(egctl)
        .args(["x", "translate", "--from", "gateway-api", "--to", to, "-t", "all", "-o", "json", "-f"])
        .arg(&file)
        .output()
        .expect("run egctl");
    assert!(out.status.success(), "egctl x translate failed (exit {:?}; output withheld: it holds keys)", out.status);
    serde_json::from_slice(&out.stdout).expect("egctl json")
}

/// Every `credentials: [{client, key}]` list anywhere in the xDS (the listener's api_key_auth filter and the
/// route's per-filter config), keys replaced by their fingerprints.
fn collect_credentials(v: &Value, found: &mut BTreeSet<(String, String)>) {
    match v {
        Value::Object(m) => {
            for c in m.get("credentials").and_then(Value::as_array).into_iter().flatten() {
                let (client, key) = (c["client"].as_str(), c["key"].as_str());
                found.insert((client.unwrap_or("?").to_string(), key.map(key_id).unwrap_or_default()));
            }
            m.values().for_each(|x| collect_credentials(x, found));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_credentials(x, found)),
        _ => {}
    }
}

/// egctl builds from `tests/egctl` (or is found in the cache). `.ci/run` runs this one first with `--nocapture`,
/// so a one-time build shows its progress and its duration.
#[test]
fn egctl_is_built_from_its_go_module() {
    let egctl = keyward::devenv::egctl::binary().unwrap_or_else(|e| panic!("egctl: {e}"));
    let out = std::process::Command::new(&egctl).args(["x", "translate", "--help"]).output().expect("run egctl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--from"));
    eprintln!("egctl at {}", egctl.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gateways_translator_accepts_exactly_the_current_and_previous_key() {
    control_plane_with_crds().await;
    let ns = namespace("gw_egctl");
    let _op = operator::scoped(&ns);
    let mut ak = envoy_recipe().into_iter().find(|d| d["kind"] == "ApiKey").expect("the recipe's ApiKey");
    // NB: a grace period short enough to see it end; the translator reads a snapshot, so its length does not race.
    ak["spec"]["rotation"]["gracePeriod"] = "20s".into();
    apply(&ns, &serde_json::to_string(&ak).expect("json"));
    let first = eventually(60, "issued", || ready_at(&ns, "checkout", 0)).await;
    let current = status_str(&first, "keyId").expect("keyId");
    let secret = get_json(&ns, "secret/checkout").expect("secret");
    let creds = translate(&ns, &secret);
    println!("egctl x translate, issued (key ids, not keys): {creds:?}");
    assert_eq!(creds, [("checkout".to_string(), current.clone())].into(), "exactly the current key, by its client id");

    kubectl_ok(&["annotate", "apikey/checkout", "-n", &ns, "keyward.dev/rotate=one"]);
    let rotated = eventually(60, "rotated", || ready_at(&ns, "checkout", 1)).await;
    let new = status_str(&rotated, "keyId").expect("keyId");
    let secret = get_json(&ns, "secret/checkout").expect("secret");
    let creds = translate(&ns, &secret);
    println!("egctl x translate, in the grace period (key ids, not keys): {creds:?}");
    let want: BTreeSet<(String, String)> =
        [("checkout".to_string(), new.clone()), ("checkout-previous".to_string(), current.clone())].into();
    assert_eq!(creds, want, "the current key and, in grace, the previous key; nothing else");
    // The key id is public: it must never be a credential.
    for (_, key) in &creds {
        assert_ne!(key, &key_id(&new), "the current key id is not a credential");
        assert_ne!(key, &key_id(&current), "the previous key id is not a credential");
    }

    // The grace period ends: only the current key is left.
    let secret = eventually(60, "the previous key removed", || {
        get_json(&ns, "secret/checkout").filter(|s| entries(s) == names(&["checkout"]))
    })
    .await;
    let creds = translate(&ns, &secret);
    println!("egctl x translate, after the grace period (key ids, not keys): {creds:?}");
    assert_eq!(creds, [("checkout".to_string(), new)].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_envoy_gateway_recipe_is_accepted_by_the_api_server() {
    control_plane_with_crds().await;
    envoy_gateway_crds().await;
    let ns = namespace("gw_recipe");
    let docs: Vec<String> = envoy_recipe().iter().map(|d| serde_json::to_string(d).expect("json")).collect();
    let out = kubectl_stdin(&["apply", "--server-side", "-n", &ns, "-f", "-"], &docs.join("\n---\n"));
    assert!(out.status.success(), "the recipe was refused: {}", String::from_utf8_lossy(&out.stderr));
    let policy = get_json(&ns, "securitypolicy/checkout-keys").expect("the SecurityPolicy is stored");
    assert_eq!(policy["spec"]["apiKeyAuth"]["credentialRefs"][0]["name"], "checkout");
    // The schema is really in force: a SecurityPolicy the CRD refuses is refused.
    let bad = r#"{"apiVersion":"gateway.envoyproxy.io/v1alpha1","kind":"SecurityPolicy","metadata":{"name":"bad"},"spec":{"apiKeyAuth":{"credentialRefs":[]}}}"#;
    let out = kubectl_stdin(&["apply", "--server-side", "-n", &ns, "-f", "-"], bad);
    assert!(!out.status.success(), "an invalid SecurityPolicy was accepted");
}
