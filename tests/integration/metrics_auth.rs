//! `/metrics` behind `keyward run --metrics-auth` against the real API server (TokenReview and
//! SubjectAccessReview): a ServiceAccount bound to the metrics-reader ClusterRole gets 200, another gets 403, no
//! token or a bad one gets 401; `/healthz` and `/readyz` stay open.

use std::time::Duration;

use crate::common::kube::eventually;
use crate::common::{control_plane_with_crds, kubectl, kubectl_ok, kubectl_stdin, namespace};

/// The reader ClusterRole as the chart ships it (`keyward-metrics-reader`), under a test name.
const READER_ROLE: &str = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: keyward-metrics-reader-test\nrules:\n  - nonResourceURLs: [\"/metrics\"]\n    verbs: [\"get\"]\n";

async fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request");
    (response.status().as_u16(), response.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_a_token_allowed_to_get_them() {
    control_plane_with_crds().await;
    let ns = namespace("metrics_auth");
    let mut op =
        crate::common::operator::start_with_args("metrics-auth", "info", &["--namespace", &ns, "--metrics-auth"]);
    for sa in ["reader", "stranger"] {
        kubectl_ok(&["create", "serviceaccount", sa, "-n", &ns]);
    }
    let out = kubectl_stdin(&["apply", "-f", "-"], READER_ROLE);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reader = format!("{ns}:reader");
    let _ = kubectl(&["delete", "clusterrolebinding", "keyward-metrics-reader-test", "--ignore-not-found"]);
    kubectl_ok(&[
        "create",
        "clusterrolebinding",
        "keyward-metrics-reader-test",
        "--clusterrole=keyward-metrics-reader-test",
        &format!("--serviceaccount={reader}"),
    ]);
    // The binding is in the authorizer's cache before the operator is asked (its verdicts are cached a minute).
    let as_reader = format!("system:serviceaccount:{reader}");
    eventually(30, "RBAC sees the binding", || {
        let out = kubectl(&["auth", "can-i", "get", "/metrics", "--as", &as_reader]);
        (String::from_utf8_lossy(&out.stdout).trim() == "yes").then_some(())
    })
    .await;
    let no = kubectl(&["auth", "can-i", "get", "/metrics", "--as", &format!("system:serviceaccount:{ns}:stranger")]);
    assert_eq!(String::from_utf8_lossy(&no.stdout).trim(), "no", "the stranger must not be allowed by RBAC");
    let token = |sa: &str| kubectl_ok(&["create", "token", sa, "-n", &ns]).trim().to_string();
    let (reader_token, stranger_token) = (token("reader"), token("stranger"));

    let addr = eventually(60, "the operator serves HTTP", || op.http_addr()).await;
    let base = format!("http://{addr}");
    let (status, body) = get(&format!("{base}/metrics"), None).await;
    assert_eq!(status, 401, "no token: {body}");
    let (status, _) = get(&format!("{base}/metrics"), Some("not-a-token")).await;
    assert_eq!(status, 401, "a token the API server does not accept");
    let (status, body) = get(&format!("{base}/metrics"), Some(&stranger_token)).await;
    assert_eq!(status, 403, "a valid token without the permission: {body}");
    let (status, body) = get(&format!("{base}/metrics"), Some(&reader_token)).await;
    assert_eq!(status, 200, "the reader: {body}");
    assert!(body.contains("keyward_reconciles_total") && body.ends_with("# EOF\n"), "{body}");
    // Cached verdicts answer the same.
    assert_eq!(get(&format!("{base}/metrics"), Some(&stranger_token)).await.0, 403);
    assert_eq!(get(&format!("{base}/metrics"), Some(&reader_token)).await.0, 200);
    // Probes need no token.
    assert_eq!(get(&format!("{base}/healthz"), None).await.0, 200);
    let mut readyz = 0;
    for _ in 0..150 {
        readyz = get(&format!("{base}/readyz"), None).await.0;
        if readyz == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(readyz, 200, "readyz stays open");
    // No token reached the log.
    let log = op.log_text();
    assert!(!log.contains(&reader_token) && !log.contains(&stranger_token), "a token is in the operator's log");
    op.terminate();
    let _ = kubectl(&["delete", "clusterrolebinding,clusterrole", "keyward-metrics-reader-test", "--ignore-not-found"]);
}
