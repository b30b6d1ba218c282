//! Usage from a Prometheus API that wants credentials, against real servers: a Prometheus whose `--web.config.file`
//! requires TLS (a private CA, a certificate for a name other than the address) and basic auth, and a bearer-token
//! proxy in front of a plain Prometheus that also records the tenant header it receives. Usage flows with the right
//! Secret; a missing Secret, a wrong password and a wrong token are `UsageAvailable=False` with their own reasons;
//! no credential appears in the operator's log, the events or the statuses.

use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::common::kube::{apikey, apply, condition, eventually, get_json, is};
use crate::common::prometheus::Prometheus;
use crate::common::ratelimit::{METRIC, gateway_sim, policy};
use crate::common::{control_plane_with_crds, kubectl_ok, namespace, operator};

const PASSWORD: &str = "pw-Zq81-not-in-logs";
const TOKEN: &str = "tok-Jc55-not-in-logs";
const SERVER_NAME: &str = "prometheus.keyward.test";

/// A CA and a certificate for [`SERVER_NAME`] only (not 127.0.0.1) signed by it, as PEM: (ca, cert, key).
fn certificates() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "keyward test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
    let key = rcgen::KeyPair::generate().expect("server key");
    let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()]).expect("server params");
    let cert = params.signed_by(&key, &ca_cert, &ca_key).expect("server cert");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

fn secret(ns: &str, name: &str, key: &str, value: &str) {
    kubectl_ok(&["create", "secret", "generic", name, "-n", ns, &format!("--from-literal={key}={value}")]);
}

/// The query every policy here runs.
fn query() -> String {
    format!("sum by (api_key) (rate({METRIC}[5s]))")
}

/// Reason and message of the policy's `UsageAvailable`, once it is `status`.
async fn usage_available(ns: &str, name: &str, status: &str) -> (String, String) {
    let p = eventually(90, &format!("{name}: UsageAvailable={status}"), || {
        get_json(ns, &format!("ratelimitpolicy/{name}")).filter(|p| is(p, "UsageAvailable", status))
    })
    .await;
    let (_, reason, message) = condition(&p, "UsageAvailable").expect("UsageAvailable");
    (reason, message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_over_tls_with_a_private_ca_and_a_server_name() {
    control_plane_with_crds().await;
    let ns = namespace("prom_tls_basic");
    let op = operator::scoped(&ns);
    let gw = gateway_sim().await;
    let (ca, cert, key) = certificates();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    std::fs::write(dir.path().join("cert.pem"), &cert).expect("cert");
    std::fs::write(dir.path().join("key.pem"), &key).expect("key");
    let hash = bcrypt::hash(PASSWORD, 4).expect("bcrypt");
    let web = format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  reader: {hash}\n",
        dir.path().join("cert.pem").display(),
        dir.path().join("key.pem").display()
    );
    let prom = Prometheus::start_with(&[gw.addr().to_string()], Some(&web));
    let address = format!("https://127.0.0.1:{}", prom.port());
    kubectl_ok(&["create", "configmap", "prom-ca", "-n", &ns, &format!("--from-literal=ca.crt={ca}")]);
    secret(&ns, "prom-user", "username", "reader");
    secret(&ns, "prom-pass", "password", PASSWORD);
    secret(&ns, "prom-wrong", "password", "not-the-password");
    let source = |password: &str| {
        format!(
            "  limit: {{requests: 600, period: 1m}}\n  usage:\n    interval: 1s\n    prometheus:\n      address: {address}\n      query: '{}'\n      auth:\n        basic:\n          username: {{name: prom-user, key: username}}\n          password: {{name: {password}, key: password}}\n      tls:\n        ca: {{configMapKeyRef: {{name: prom-ca, key: ca.crt}}}}\n        serverName: {SERVER_NAME}",
            query()
        )
    };
    apply(&ns, &policy("good", &source("prom-pass")));
    apply(&ns, &policy("wrong", &source("prom-wrong")));
    apply(&ns, &policy("missing", &source("prom-absent")));
    apply(&ns, &apikey("k", "  rateLimitPolicyRef: {name: good}"));
    gw.set_rate("k", 4.0);
    let ak = eventually(90, "k's usage through TLS and basic auth", || {
        get_json(&ns, "apikey/k")
            .filter(|a| a["status"]["usage"]["requestsPerSecond"].as_f64().is_some_and(|r| r > 1.0))
    })
    .await;
    assert!(ak["status"]["usage"]["requestsPerSecond"].as_f64().is_some_and(|r| r < 8.0), "{:?}", ak["status"]);
    let (reason, _) = usage_available(&ns, "good", "True").await;
    assert_eq!(reason, "UsageRead");
    let (reason, message) = usage_available(&ns, "wrong", "False").await;
    assert_eq!(reason, "SourceUnauthorized", "{message}");
    let (reason, message) = usage_available(&ns, "missing", "False").await;
    assert_eq!(reason, "CredentialsUnavailable");
    assert!(message.contains("Secret prom-absent key password") && message.contains("not found"), "{message}");
    // Without the server name, the certificate (issued for the name, not the IP) does not verify.
    let mut no_name = source("prom-pass");
    no_name = no_name.replace(&format!("\n        serverName: {SERVER_NAME}"), "");
    apply(&ns, &policy("unnamed", &no_name));
    let (reason, _) = usage_available(&ns, "unnamed", "False").await;
    assert_eq!(reason, "SourceUnreachable");
    no_leak(&ns, &op.log_text());
}

/// What the bearer proxy saw: the tenant header of each request it let through.
#[derive(Clone, Default)]
struct Seen {
    tenants: Arc<Mutex<Vec<String>>>,
    upstream: String,
}

/// Forwards to Prometheus only with `Authorization: Bearer TOKEN`; records `X-Scope-OrgID`.
async fn proxy(State(seen): State<Seen>, request: Request) -> Response {
    let auth = request.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if auth != format!("Bearer {TOKEN}") {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let tenant = request.headers().get("x-scope-orgid").and_then(|v| v.to_str().ok()).unwrap_or("(none)");
    seen.tenants.lock().expect("lock").push(tenant.to_string());
    let path = request.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    match reqwest::get(format!("{}{path}", seen.upstream)).await {
        Ok(r) => (
            StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
            r.bytes().await.unwrap_or_default(),
        )
            .into_response(),
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_and_a_tenant_header_reach_the_server() {
    control_plane_with_crds().await;
    let ns = namespace("prom_bearer");
    let op = operator::scoped(&ns);
    let gw = gateway_sim().await;
    let prom = Prometheus::start(&[gw.addr().to_string()]);
    let seen = Seen { upstream: prom.address(), ..Seen::default() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr");
    let app = axum::Router::new().fallback(proxy).with_state(seen.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    secret(&ns, "prom-token", "token", TOKEN);
    secret(&ns, "prom-bad-token", "token", "tok-wrong");
    let source = |secret: &str| {
        format!(
            "  limit: {{requests: 600, period: 1m}}\n  usage:\n    interval: 1s\n    prometheus:\n      address: http://{addr}\n      query: '{}'\n      auth: {{bearerToken: {{name: {secret}, key: token}}}}\n      headers: [{{name: X-Scope-OrgID, value: team-a}}]",
            query()
        )
    };
    apply(&ns, &policy("good", &source("prom-token")));
    apply(&ns, &policy("bad", &source("prom-bad-token")));
    apply(&ns, &apikey("k", "  rateLimitPolicyRef: {name: good}"));
    gw.set_rate("k", 4.0);
    eventually(90, "k's usage through the bearer proxy", || {
        get_json(&ns, "apikey/k")
            .filter(|a| a["status"]["usage"]["requestsPerSecond"].as_f64().is_some_and(|r| r > 1.0))
    })
    .await;
    let (reason, message) = usage_available(&ns, "bad", "False").await;
    assert_eq!(reason, "SourceUnauthorized", "{message}");
    let tenants = seen.tenants.lock().expect("lock").clone();
    assert!(!tenants.is_empty() && tenants.iter().all(|t| t == "team-a"), "tenant headers seen: {tenants:?}");
    no_leak(&ns, &op.log_text());
}

/// Neither credential is in the operator's log, the events, or the statuses.
fn no_leak(ns: &str, log: &str) {
    let events = kubectl_ok(&["get", "events", "-n", ns, "-o", "json"]);
    let objects = kubectl_ok(&["get", "ratelimitpolicies,apikeys", "-n", ns, "-o", "json"]);
    for (what, text) in [("the operator log", log), ("the events", events.as_str()), ("the objects", objects.as_str())]
    {
        for secret in [PASSWORD, TOKEN] {
            assert!(!text.contains(secret), "a credential is in {what}");
        }
    }
}
