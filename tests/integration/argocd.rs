//! The Argo CD health checks in `deploy/argocd/health/` run in Lua 5.1 (gopher-lua's language, which Argo CD
//! embeds) against ApiKeys and RateLimitPolicies whose status the real operator wrote: each reaches Healthy,
//! Progressing and Degraded (and an ApiKey Suspended). The `argocd-cm` in docs/gitops.md holds the same files.

use std::path::{Path, PathBuf};

use mlua::serde::SerializeOptions;
use mlua::{Lua, LuaSerdeExt, Table};
use serde_json::Value;

use crate::common::kube::{apikey, apply, eventually, get_json, ready_reason};
use crate::common::ratelimit::{METRIC, gateway_sim, policy};
use crate::common::{control_plane_with_crds, kubectl_ok, namespace, operator};

fn script(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/argocd/health/keyward.dev").join(kind).join("health.lua")
}

/// Runs `kind`'s health check as Argo CD does: the object as the global `obj` (JSON null as nil), the returned
/// table's `status` and `message`.
fn health(kind: &str, obj: &Value) -> (String, String) {
    let lua = Lua::new();
    let code = std::fs::read_to_string(script(kind)).expect("health.lua");
    let options =
        SerializeOptions::new().serialize_none_to_null(false).serialize_unit_to_null(false).set_array_metatable(false);
    let value = lua.to_value_with(obj, options).expect("object to Lua");
    lua.globals().set("obj", value).expect("set obj");
    let hs: Table = lua.load(&code).set_name(kind).eval().expect("the health check runs");
    (hs.get("status").expect("hs.status"), hs.get("message").expect("hs.message"))
}

/// Waits until `what` has a Ready condition with `reason`, then returns its health.
async fn health_at(ns: &str, kind: &str, what: &str, reason: &str) -> (String, String) {
    let obj = eventually(60, &format!("{what} Ready reason {reason}"), || {
        let o = get_json(ns, what)?;
        (ready_reason(&o)?.1 == reason).then_some(o)
    })
    .await;
    health(kind, &obj)
}

fn assert_health(got: (String, String), status: &str, message: &str) {
    assert_eq!(got.0, status, "health {got:?}");
    assert!(got.1.contains(message), "message {:?} should say {message:?}", got.1);
}

/// Stops the operator, bumps `what`'s generation and returns its health: the status is the operator's, the spec is
/// newer than what it saw.
fn health_of_unseen_spec(ns: &str, kind: &str, what: &str, patch: &str, op: operator::Operator) -> (String, String) {
    op.stop();
    kubectl_ok(&["patch", what, "-n", ns, "--type=merge", "-p", patch]);
    let obj = get_json(ns, what).expect("object");
    assert!(obj["status"]["observedGeneration"].as_i64() < obj["metadata"]["generation"].as_i64(), "{obj}");
    health(kind, &obj)
}

#[tokio::test]
async fn apikey_health_follows_the_ready_condition() {
    control_plane_with_crds().await;
    let ns = namespace("argocd_apikey");
    let op = operator::scoped(&ns);
    apply(&ns, &apikey("good", "  rotation: {interval: 720h}"));
    assert_health(health_at(&ns, "ApiKey", "apikey/good", "KeyIssued").await, "Healthy", "KeyIssued");
    kubectl_ok(&["create", "secret", "generic", "taken", "-n", &ns, "--from-literal=token=not-from-keyward"]);
    apply(&ns, &apikey("clash", "  secretName: taken"));
    assert_health(health_at(&ns, "ApiKey", "apikey/clash", "SecretConflict").await, "Degraded", "SecretConflict");
    apply(&ns, &apikey("paused", "  suspended: true"));
    assert_health(health_at(&ns, "ApiKey", "apikey/paused", "Suspended").await, "Suspended", "Suspended");
    let unseen =
        health_of_unseen_spec(&ns, "ApiKey", "apikey/good", r#"{"spec":{"rotation":{"interval":"360h"}}}"#, op);
    assert_health(unseen, "Progressing", "latest spec");
    // Created while no operator runs: no status at all.
    apply(&ns, &apikey("new", ""));
    assert_health(health("ApiKey", &get_json(&ns, "apikey/new").expect("new")), "Progressing", "issue the key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratelimitpolicy_health_follows_the_ready_condition() {
    control_plane_with_crds().await;
    let ns = namespace("argocd_policy");
    let op = operator::scoped(&ns);
    let gw = gateway_sim().await;
    apply(&ns, &policy("limits", "  limit: {requests: 100, period: 1m}"));
    assert_health(
        health_at(&ns, "RateLimitPolicy", "ratelimitpolicy/limits", "LimitOnly").await,
        "Healthy",
        "LimitOnly",
    );
    // A scrape source's first poll only records the counters: with an hour between polls it stays there.
    let scrape = format!(
        "  limit: {{requests: 100, period: 1m}}\n  usage:\n    interval: 1h\n    scrape: {{urls: [\"{}\"], metric: {METRIC}}}",
        gw.url()
    );
    apply(&ns, &policy("warming", &scrape));
    let warming = health_at(&ns, "RateLimitPolicy", "ratelimitpolicy/warming", "WarmingUp").await;
    assert_health(warming, "Progressing", "WarmingUp");
    let nowhere = "  limit: {requests: 100, period: 1m}\n  usage:\n    prometheus: {address: \"http://prometheus.invalid:9090\", query: \"sum by (api_key) (rate(x[1m]))\"}";
    apply(&ns, &policy("nowhere", nowhere));
    let degraded = eventually(60, "a Degraded policy", || {
        let h = health("RateLimitPolicy", &get_json(&ns, "ratelimitpolicy/nowhere")?);
        (h.0 == "Degraded").then_some(h)
    })
    .await;
    assert!(degraded.1.starts_with("Source"), "the message names the usage reason: {degraded:?}");
    let patch = r#"{"spec":{"limit":{"requests":200}}}"#;
    let unseen = health_of_unseen_spec(&ns, "RateLimitPolicy", "ratelimitpolicy/limits", patch, op);
    assert_health(unseen, "Progressing", "latest spec");
}

/// The `argocd-cm` in docs/gitops.md carries each file exactly (indented under its key).
#[test]
fn the_documented_argocd_cm_holds_the_files() {
    let page = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/gitops.md")).expect("page");
    for kind in ["ApiKey", "RateLimitPolicy"] {
        let code = std::fs::read_to_string(script(kind)).expect("health.lua");
        let indented: String =
            code.lines().map(|l| if l.is_empty() { "\n".to_string() } else { format!("    {l}\n") }).collect();
        let key = format!("  resource.customizations.health.keyward.dev_{kind}: |\n");
        assert!(
            page.contains(&format!("{key}{indented}")),
            "docs/gitops.md's argocd-cm differs from {kind}/health.lua"
        );
    }
}
