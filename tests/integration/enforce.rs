//! `RateLimitPolicy.spec.enforce` (issue #14) against the real control plane with Envoy Gateway's and Gateway API's
//! CRDs installed from the pinned Envoy Gateway module, so the real schema and CEL rules judge every
//! BackendTrafficPolicy Keyward applies: the render for two keys, keys joining and leaving, an unchanged render
//! written no more, a hand edit reverted, an object Keyward does not own left alone, `enforce` removed. Then Envoy
//! Gateway's own translator (`egctl x translate`) reads the docs' recipe, the Secrets as Keyward wrote them and the
//! BackendTrafficPolicy as the API server stored it: each key's client ids carry the limit in force, boosted while
//! an override runs and back to the base after its `until`, for Global and Local. No assertion message or output
//! holds key material (the translator's input and output do: they are never printed).

use serde_json::Value;

use crate::common::http::sum;
use crate::common::kube::{apikey, apply, condition, eventually, get_json, has_event};
use crate::common::ratelimit::policy;
use crate::common::{control_plane_with_crds, kubectl, kubectl_ok, kubectl_stdin, namespace, operator};

/// A key of policy `gold` in Envoy Gateway's format.
fn key(name: &str) -> String {
    apikey(name, "  gateway: EnvoyGateway\n  rateLimitPolicyRef: {name: gold}")
}

/// Policy `name` with `enforce` on HTTPRoute checkout by `x-client-id`, and more spec lines.
fn enforced_policy(name: &str, type_: &str, more: &str) -> String {
    policy(
        name,
        &format!(
            "  limit: {{requests: 600, period: 1m}}\n{more}  enforce:\n    targetRef: {{kind: HTTPRoute, name: checkout}}\n    clientIdHeader: x-client-id\n    type: {type_}"
        ),
    )
}

/// The rules of a stored BackendTrafficPolicy as (header match type, value, requests, unit).
fn rules(btp: &Value) -> Vec<(String, String, i64, String)> {
    let rl = &btp["spec"]["rateLimit"];
    let rules = rl["global"]["rules"].as_array().or(rl["local"]["rules"].as_array()).cloned().unwrap_or_default();
    rules
        .iter()
        .map(|r| {
            let h = &r["clientSelectors"][0]["headers"][0];
            (
                h["type"].as_str().unwrap_or_default().to_string(),
                h["value"].as_str().unwrap_or_default().to_string(),
                r["limit"]["requests"].as_i64().unwrap_or_default(),
                r["limit"]["unit"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn rule(name: &str, requests: i64) -> (String, String, i64, String) {
    ("RegularExpression".into(), format!("^(?:{name}|{name}-previous)$"), requests, "Minute".into())
}

/// BackendTrafficPolicy `name` once its rules are `want`.
fn btp_with(ns: &str, name: &str, want: &[(String, String, i64, String)]) -> Option<Value> {
    get_json(ns, &format!("backendtrafficpolicy/{name}")).filter(|b| rules(b) == want)
}

/// `keyward_api_writes_total` of BackendTrafficPolicies by the RateLimitPolicy controller.
async fn btp_writes(op: &operator::Operator) -> f64 {
    sum(&op.metrics().await, "keyward_api_writes_total", &["controller=\"ratelimit\"", "kind=\"BackendTrafficPolicy\""])
}

/// The control plane with Keyward's, Gateway API's and Envoy Gateway's CRDs, and a scoped operator in a new
/// namespace.
async fn setup(test: &str) -> (String, operator::Operator) {
    control_plane_with_crds().await;
    crate::gateways::envoy_gateway_crds().await;
    let ns = namespace(test);
    let op = operator::scoped(&ns);
    (ns, op)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_renders_a_backendtrafficpolicy_for_the_members_and_follows_them() {
    let (ns, op) = setup("enforce_members").await;
    apply(&ns, &key("a"));
    apply(&ns, &key("b"));
    apply(&ns, &enforced_policy("gold", "Global", ""));
    let btp = eventually(60, "BackendTrafficPolicy gold with both keys", || {
        btp_with(&ns, "gold", &[rule("a", 600), rule("b", 600)])
    })
    .await;
    // Created server-side through the real CRD, owned by the policy, labelled.
    let rlp = get_json(&ns, "ratelimitpolicy/gold").expect("policy");
    let owner = &btp["metadata"]["ownerReferences"][0];
    assert_eq!(
        (owner["kind"].as_str(), owner["uid"].as_str()),
        (Some("RateLimitPolicy"), rlp["metadata"]["uid"].as_str())
    );
    assert_eq!(owner["controller"], true);
    assert_eq!(btp["metadata"]["labels"]["app.kubernetes.io/managed-by"], "keyward");
    assert_eq!(
        btp["spec"]["targetRefs"][0],
        serde_json::json!({"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "checkout"})
    );
    assert_eq!(
        btp["spec"]["rateLimit"]["global"]["rules"][0]["clientSelectors"][0]["headers"][0]["name"],
        "x-client-id"
    );
    let rlp = eventually(30, "Enforced=True and the limit in status", || {
        get_json(&ns, "ratelimitpolicy/gold").filter(|p| {
            condition(p, "Enforced").is_some_and(|(s, r, _)| s == "True" && r == "Enforced")
                && p["status"]["enforcedLimit"] == "600/Minute"
        })
    })
    .await;
    assert_eq!(condition(&rlp, "EnforcementConflict").map(|c| c.0).as_deref(), Some("False"));
    assert!(has_event(&ns, "RateLimitPolicy", "gold", "Enforced"));

    // A third key joins; a key leaves by dropping its reference; a key is deleted.
    apply(&ns, &key("c"));
    eventually(30, "c rendered", || btp_with(&ns, "gold", &[rule("a", 600), rule("b", 600), rule("c", 600)])).await;
    kubectl_ok(&["patch", "apikey/b", "-n", &ns, "--type", "merge", "-p", r#"{"spec":{"rateLimitPolicyRef":null}}"#]);
    eventually(30, "b removed", || btp_with(&ns, "gold", &[rule("a", 600), rule("c", 600)])).await;
    kubectl_ok(&["delete", "apikey/c", "-n", &ns]);
    let btp = eventually(30, "c removed", || btp_with(&ns, "gold", &[rule("a", 600)])).await;

    // An unchanged render is not written: reconciles triggered by an unrelated annotation write nothing.
    let (version, writes) = (btp["metadata"]["resourceVersion"].clone(), btp_writes(&op).await);
    for i in 0..3 {
        kubectl_ok(&["annotate", "--overwrite", "ratelimitpolicy/gold", "-n", &ns, &format!("example.com/touch={i}")]);
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let btp = get_json(&ns, "backendtrafficpolicy/gold").expect("btp");
    assert_eq!(btp["metadata"]["resourceVersion"], version, "an unchanged render changed the object");
    assert_eq!(btp_writes(&op).await, writes, "an unchanged render was written");

    // enforce removed: the object goes.
    kubectl_ok(&[
        "patch",
        "ratelimitpolicy/gold",
        "-n",
        &ns,
        "--type",
        "json",
        "-p",
        r#"[{"op":"remove","path":"/spec/enforce"}]"#,
    ]);
    eventually(30, "the BackendTrafficPolicy deleted", || {
        get_json(&ns, "backendtrafficpolicy/gold").is_none().then_some(())
    })
    .await;
    eventually(30, "no Enforced condition", || {
        get_json(&ns, "ratelimitpolicy/gold")
            .filter(|p| condition(p, "Enforced").is_none() && p["status"]["enforcedLimit"].is_null())
    })
    .await;
    op.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_edits_are_reverted_and_foreign_objects_left_alone() {
    let (ns, op) = setup("enforce_edits").await;
    apply(&ns, &key("a"));
    apply(&ns, &enforced_policy("gold", "Local", ""));
    eventually(60, "rendered", || btp_with(&ns, "gold", &[rule("a", 600)])).await;
    let edit = r#"[{"op":"replace","path":"/spec/rateLimit/local/rules/0/limit/requests","value":1000000}]"#;
    kubectl_ok(&["patch", "backendtrafficpolicy/gold", "-n", &ns, "--type", "json", "-p", edit]);
    eventually(30, "the hand edit reverted", || btp_with(&ns, "gold", &[rule("a", 600)])).await;

    // Someone else's BackendTrafficPolicy named like a policy: never written.
    let foreign = format!(
        r#"{{"apiVersion":"gateway.envoyproxy.io/v1alpha1","kind":"BackendTrafficPolicy","metadata":{{"name":"silver","namespace":"{ns}"}},"spec":{{"targetRefs":[{{"group":"gateway.networking.k8s.io","kind":"HTTPRoute","name":"other"}}],"rateLimit":{{"local":{{"rules":[{{"limit":{{"requests":5,"unit":"Second"}}}}]}}}}}}}}"#
    );
    let out = kubectl_stdin(&["apply", "--server-side", "--field-manager", "someone", "-f", "-"], &foreign);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let before = get_json(&ns, "backendtrafficpolicy/silver").expect("foreign");
    apply(&ns, &enforced_policy("silver", "Local", ""));
    apply(&ns, &apikey("s", "  gateway: EnvoyGateway\n  rateLimitPolicyRef: {name: silver}"));
    let p = eventually(60, "the conflict reported", || {
        get_json(&ns, "ratelimitpolicy/silver").filter(|p| {
            condition(p, "EnforcementConflict").is_some_and(|c| c.0 == "True")
                && condition(p, "Enforced").is_some_and(|(s, r, _)| s == "False" && r == "EnforcementConflict")
        })
    })
    .await;
    assert!(p["status"]["enforcedLimit"].is_null());
    assert_eq!(condition(&p, "Ready").map(|c| c.0).as_deref(), Some("False"), "Ready counts the conflict");
    eventually(30, "a Warning event", || {
        has_event(&ns, "RateLimitPolicy", "silver", "EnforcementConflict").then_some(())
    })
    .await;
    // A few reconciles later the foreign object is exactly as it was.
    kubectl_ok(&["annotate", "ratelimitpolicy/silver", "-n", &ns, "example.com/touch=1"]);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let after = get_json(&ns, "backendtrafficpolicy/silver").expect("foreign");
    assert_eq!(after["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"]);
    assert!(after["metadata"]["ownerReferences"].is_null());
    // Once it is gone, the policy renders its own.
    kubectl_ok(&["delete", "backendtrafficpolicy/silver", "-n", &ns]);
    eventually(60, "silver rendered once free", || btp_with(&ns, "silver", &[rule("s", 600)])).await;
    eventually(30, "no conflict", || {
        get_json(&ns, "ratelimitpolicy/silver")
            .filter(|p| condition(p, "EnforcementConflict").is_some_and(|c| c.0 == "False"))
    })
    .await;
    op.assert_no_panic();
}

/// Keys the gateway cannot tell apart are left out and named; more keys than a BackendTrafficPolicy holds render
/// nothing, and the most it holds is accepted by the real CRD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collisions_are_named_and_too_many_keys_render_nothing() {
    let (ns, op) = setup("enforce_limits").await;
    // Generic keys: every Secret's entry is `api-key`.
    apply(&ns, &apikey("g1", "  rateLimitPolicyRef: {name: gold}"));
    apply(&ns, &apikey("g2", "  rateLimitPolicyRef: {name: gold}"));
    apply(&ns, &key("a"));
    apply(&ns, &enforced_policy("gold", "Local", ""));
    let p = eventually(60, "the collision reported", || {
        get_json(&ns, "ratelimitpolicy/gold")
            .filter(|p| condition(p, "Enforced").is_some_and(|(s, r, _)| s == "False" && r == "ClientIdCollision"))
    })
    .await;
    let (_, _, message) = condition(&p, "Enforced").expect("Enforced");
    assert!(message.contains("g1, g2"), "{message}");
    assert_eq!(condition(&p, "Ready").map(|c| c.1).as_deref(), Some("ClientIdCollision"));
    eventually(30, "the other key still limited", || btp_with(&ns, "gold", &[rule("a", 600)])).await;

    // 17 keys under Local (at most 16 rules): nothing written, the object left as it was.
    kubectl_ok(&["delete", "apikey/g1", "apikey/g2", "-n", &ns]);
    let many: Vec<String> = (1..=16).map(|i| key(&format!("k{i:02}"))).collect();
    let out = kubectl_stdin(&["apply", "--server-side", "-n", &ns, "-f", "-"], &many.join("---\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually(60, "too many keys reported", || {
        get_json(&ns, "ratelimitpolicy/gold")
            .filter(|p| condition(p, "Enforced").is_some_and(|(s, r, _)| s == "False" && r == "TooManyKeys"))
    })
    .await;
    // NB: the keys arrive one by one, so the object holds the last render that fit; it is no longer written.
    let before = get_json(&ns, "backendtrafficpolicy/gold").expect("btp");
    assert!(rules(&before).len() <= 16, "more rules than the CRD holds");
    kubectl_ok(&["annotate", "ratelimitpolicy/gold", "-n", &ns, "example.com/touch=1"]);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let after = get_json(&ns, "backendtrafficpolicy/gold").expect("btp");
    assert_eq!(after["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"], "left as it was");
    // 16 keys: the most a local rate limit holds, accepted by the CRD.
    kubectl_ok(&["delete", "apikey/a", "-n", &ns]);
    let want: Vec<_> = (1..=16).map(|i| rule(&format!("k{i:02}"), 600)).collect();
    eventually(60, "16 rules rendered", || btp_with(&ns, "gold", &want)).await;
    eventually(30, "Enforced again", || {
        get_json(&ns, "ratelimitpolicy/gold").filter(|p| condition(p, "Enforced").is_some_and(|c| c.0 == "True"))
    })
    .await;
    op.assert_no_panic();
}

// ---------------------------------------------------------------------------------------------------------------
// Envoy Gateway's translator

/// The YAML documents of the enforce recipe in docs/gateways.md (the block that starts `# recipe:
/// envoy-gateway-enforce`), as JSON values.
fn recipe() -> Vec<Value> {
    crate::gateways::recipe("envoy-gateway-enforce")
}

/// A header matcher of the translator's output: exact value or regular expression.
#[derive(Debug, PartialEq)]
enum Matcher {
    Exact(String),
    Regex(String),
}

impl Matcher {
    fn of(string_match: &Value) -> Option<Matcher> {
        if let Some(e) = string_match["exact"].as_str() {
            return Some(Matcher::Exact(e.into()));
        }
        string_match["safeRegex"]["regex"].as_str().map(|r| Matcher::Regex(r.into()))
    }

    /// Whether a client id matches (the expressions Keyward renders: `^(?:a|b)$`, dots escaped).
    fn matches(&self, id: &str) -> bool {
        match self {
            Matcher::Exact(e) => e == id,
            Matcher::Regex(r) => r
                .strip_prefix("^(?:")
                .and_then(|r| r.strip_suffix(")$"))
                .is_some_and(|alts| alts.split('|').any(|a| a.replace("\\.", ".") == id)),
        }
    }
}

/// Runs `egctl x translate --to ir,xds` on the recipe's gateway objects in `ns`, the Secrets and the stored
/// BackendTrafficPolicy; returns the output (holds keys: never printed).
fn translate(ns: &str, secrets: &[Value], btp: &Value) -> Value {
    let gateway: Vec<Value> = recipe()
        .into_iter()
        .filter(|d| d["apiVersion"].as_str().is_some_and(|v| !v.starts_with("keyward.dev")))
        .collect();
    let mut docs = crate::gateways::translator_input(ns, gateway, secrets);
    docs.push(serde_json::json!({
        "apiVersion": btp["apiVersion"], "kind": btp["kind"],
        "metadata": {"name": btp["metadata"]["name"], "namespace": ns},
        "spec": btp["spec"],
    }));
    crate::gateways::egctl_translate(&docs, "ir,xds")
}

/// Every object under `v` (depth first) for which `f` is true.
fn find_all<'a>(v: &'a Value, f: &dyn Fn(&Value) -> bool, out: &mut Vec<&'a Value>) {
    if f(v) {
        out.push(v);
    }
    match v {
        Value::Object(m) => m.values().for_each(|x| find_all(x, f, out)),
        Value::Array(a) => a.iter().for_each(|x| find_all(x, f, out)),
        _ => {}
    }
}

/// Local: the route's local rate limit in the xDS (protobuf JSON names), as (matcher on `x-client-id`, tokens per
/// fill, fill interval).
fn local_limits(xds: &Value) -> Vec<(Matcher, i64, String)> {
    let mut filters = Vec::new();
    find_all(xds, &|v| v.get("descriptors").is_some() && v.get("rateLimits").is_some(), &mut filters);
    let mut found = Vec::new();
    for f in filters {
        let limits = f["rateLimits"].as_array().expect("rateLimits");
        let descriptors = f["descriptors"].as_array().expect("descriptors");
        assert_eq!(limits.len(), descriptors.len(), "one descriptor per rate limit");
        for (rl, d) in limits.iter().zip(descriptors) {
            let h = &rl["actions"][0]["headerValueMatch"]["headers"][0];
            if h["name"] != "x-client-id" {
                continue;
            }
            let m = Matcher::of(&h["stringMatch"]).expect("a string matcher");
            let bucket = &d["tokenBucket"];
            let tokens = bucket["tokensPerFill"].as_i64().or(bucket["maxTokens"].as_i64()).unwrap_or(-1);
            found.push((m, tokens, bucket["fillInterval"].as_str().unwrap_or_default().to_string()));
        }
    }
    found
}

/// Global: the IR's global rules as (matcher on `x-client-id`, requests, unit), and the header matchers of the
/// route's rate-limit actions in the xDS.
fn global_limits(out: &Value) -> (Vec<(Matcher, i64, String)>, Vec<Matcher>) {
    let mut globals = Vec::new();
    find_all(&out["xdsIR"], &|v| v.get("global").is_some_and(|g| g.get("rules").is_some()), &mut globals);
    let mut rules = Vec::new();
    for g in globals {
        for r in g["global"]["rules"].as_array().into_iter().flatten() {
            for h in r["headerMatches"].as_array().into_iter().flatten().filter(|h| h["name"] == "x-client-id") {
                let m = h["exact"]
                    .as_str()
                    .map(|e| Matcher::Exact(e.into()))
                    .or(h["safeRegex"].as_str().map(|r| Matcher::Regex(r.into())))
                    .expect("a matcher");
                rules.push((
                    m,
                    r["limit"]["requests"].as_i64().unwrap_or(-1),
                    r["limit"]["unit"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
    }
    let mut actions = Vec::new();
    find_all(&out["xds"], &|v| v.get("headerValueMatch").is_some(), &mut actions);
    let matchers = actions
        .iter()
        .map(|a| &a["headerValueMatch"]["headers"][0])
        .filter(|h| h["name"] == "x-client-id")
        .filter_map(|h| Matcher::of(&h["stringMatch"]))
        .collect();
    (rules, matchers)
}

/// For each client id: the limits of the rules that match it, as "requests/unit" (Local: unit as fill interval).
fn limits_by_client(limits: &[(Matcher, i64, String)], ids: &[&str]) -> Vec<(String, Vec<String>)> {
    ids.iter()
        .map(|id| {
            let got = limits.iter().filter(|(m, ..)| m.matches(id)).map(|(_, r, u)| format!("{r}/{u}")).collect();
            (id.to_string(), got)
        })
        .collect()
}

/// The translator's view of the limits per client id, for the Secrets and BackendTrafficPolicy now stored.
fn translated(ns: &str, type_: &str, ids: &[&str]) -> Vec<(String, Vec<String>)> {
    let secrets: Vec<Value> =
        ["shop-a", "shop-b"].iter().map(|s| get_json(ns, &format!("secret/{s}")).expect("secret")).collect();
    let btp = get_json(ns, "backendtrafficpolicy/gold").expect("btp");
    let out = translate(ns, &secrets, &btp);
    if type_ == "Local" {
        limits_by_client(&local_limits(&out["xds"]), ids)
    } else {
        let (rules, matchers) = global_limits(&out);
        for id in ids {
            assert!(matchers.iter().any(|m| m.matches(id)), "no xDS rate-limit action matches client id {id}");
        }
        limits_by_client(&rules, ids)
    }
}

fn expect(ids: &[&str], limit: &str) -> Vec<(String, Vec<String>)> {
    ids.iter().map(|id| (id.to_string(), vec![limit.to_string()])).collect()
}

/// The recipe with two keys through the translator: base limit, an override, its end.
async fn translator_sees_the_limit_in_force(type_: &str) {
    let (ns, op) = setup(&format!("enforce_egctl_{}", type_.to_lowercase())).await;
    let mut objects: Vec<Value> = recipe()
        .into_iter()
        .filter(|d| d["apiVersion"].as_str().is_some_and(|v| v.starts_with("keyward.dev")))
        .collect();
    for o in objects.iter_mut().filter(|o| o["kind"] == "RateLimitPolicy") {
        o["spec"]["enforce"]["type"] = type_.into();
    }
    for o in &objects {
        apply(&ns, &serde_json::to_string(o).expect("json"));
    }
    // NB: the recipe's gateway objects are applied too, so the API server (with Envoy Gateway's CRDs) judges them.
    let gateway_docs: Vec<String> = recipe()
        .iter()
        .filter(|d| {
            d["apiVersion"].as_str().is_some_and(|v| !v.starts_with("keyward.dev")) && d["kind"] != "GatewayClass"
        })
        .map(|d| serde_json::to_string(d).expect("json"))
        .collect();
    let out = kubectl_stdin(&["apply", "--server-side", "-n", &ns, "-f", "-"], &gateway_docs.join("\n---\n"));
    assert!(out.status.success(), "the recipe was refused: {}", String::from_utf8_lossy(&out.stderr));
    let ids = ["shop-a", "shop-a-previous", "shop-b", "shop-b-previous"];
    let unit = if type_ == "Local" { "60s" } else { "Minute" };
    eventually(60, "rendered", || btp_with(&ns, "gold", &[rule("shop-a", 600), rule("shop-b", 600)])).await;
    for k in ["shop-a", "shop-b"] {
        eventually(60, "keys issued", || get_json(&ns, &format!("secret/{k}")).filter(|s| s["data"][k].is_string()))
            .await;
    }
    let base = translated(&ns, type_, &ids);
    println!("egctl x translate ({type_}), base: {base:?}");
    assert_eq!(base, expect(&ids, &format!("600/{unit}")), "each client id gets the base limit");

    // An override with an end a few seconds ahead: boosted, then back to the base after `until`.
    let until = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(20)).to_string();
    let boost = format!(
        r#"{{"spec":{{"temporaryOverrides":[{{"requests":6000,"period":"1m","until":"{until}","reason":"launch"}}]}}}}"#
    );
    kubectl_ok(&["patch", "ratelimitpolicy/gold", "-n", &ns, "--type", "merge", "-p", &boost]);
    eventually(30, "boosted", || btp_with(&ns, "gold", &[rule("shop-a", 6000), rule("shop-b", 6000)])).await;
    let boosted = translated(&ns, type_, &ids);
    println!("egctl x translate ({type_}), override: {boosted:?}");
    assert_eq!(boosted, expect(&ids, &format!("6000/{unit}")), "each client id gets the boosted limit");
    let p = get_json(&ns, "ratelimitpolicy/gold").expect("policy");
    assert_eq!(p["status"]["enforcedLimit"], "6000/Minute");
    eventually(60, "back to the base after until", || {
        btp_with(&ns, "gold", &[rule("shop-a", 600), rule("shop-b", 600)])
    })
    .await;
    let after = translated(&ns, type_, &ids);
    println!("egctl x translate ({type_}), after until: {after:?}");
    assert_eq!(after, expect(&ids, &format!("600/{unit}")), "the base limit again");
    eventually(30, "Enforced event for the boost", || {
        crate::common::kube::events(&ns, "RateLimitPolicy", "gold")
            .iter()
            .any(|(r, m)| r == "Enforced" && m.contains("6000/Minute") && m.contains("launch"))
            .then_some(())
    })
    .await;
    // The gateway config never names a key: only client ids.
    let btp = kubectl(&["get", "backendtrafficpolicy/gold", "-n", &ns, "-o", "json"]);
    for k in ["shop-a", "shop-b"] {
        let s = get_json(&ns, &format!("secret/{k}")).expect("secret");
        let key = crate::common::kube::decode(&s, k).expect("key");
        assert!(!String::from_utf8_lossy(&btp.stdout).contains(&key), "the BackendTrafficPolicy holds a key");
    }
    op.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gateways_translator_sees_the_global_limit_in_force_per_client_id() {
    translator_sees_the_limit_in_force("Global").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gateways_translator_sees_the_local_limit_in_force_per_client_id() {
    translator_sees_the_limit_in_force("Local").await;
}

/// A calendar quota (#14 item 4) is enforced in Envoy Gateway's clock units: a monthly quota renders `Month`, a
/// daily one `Day`, with the requests as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calendar_quotas_are_enforced_in_day_and_month_units() {
    let (ns, _op) = setup("enforce_calendar").await;
    apply(&ns, &key("a"));
    let enforce = "  enforce:\n    targetRef: {kind: HTTPRoute, name: checkout}\n    clientIdHeader: x-client-id\n";
    let calendar = |period: &str| {
        policy("gold", &format!("  limit: {{requests: 100000, period: {period}, window: Calendar}}\n{enforce}"))
    };
    let with_unit = |unit: &'static str| {
        let ns = ns.clone();
        move || {
            get_json(&ns, "backendtrafficpolicy/gold").filter(|b| {
                rules(b) == [("RegularExpression".into(), "^(?:a|a-previous)$".into(), 100000, unit.to_string())]
            })
        }
    };
    apply(&ns, &calendar("1mo"));
    eventually(60, "a monthly quota rendered as 100000/Month", with_unit("Month")).await;
    eventually(30, "enforcedLimit 100000/Month", || {
        get_json(&ns, "ratelimitpolicy/gold").filter(|p| p["status"]["enforcedLimit"] == "100000/Month")
    })
    .await;
    apply(&ns, &calendar("24h"));
    eventually(60, "a daily quota rendered as 100000/Day", with_unit("Day")).await;
}
