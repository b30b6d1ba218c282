//! The chart's admission guards (issue #12 item 5) against the real API server: its ValidatingAdmissionPolicies,
//! rendered by helm, judge real requests made as a tenant (impersonated users with and without the right to patch
//! the workload themselves) and as the operator's ServiceAccount.

use serde_json::json;

use crate::common::identity::{template_text, to_stream};
use crate::common::kube::{apikey, eventually, get_json};
use crate::common::ratelimit::{policy, workload};
use crate::common::{control_plane_with_crds, kubectl, kubectl_ok, kubectl_stdin, namespace};

const SA: &str = "kw-keyward";

/// The chart's guards for a release in `ns`, their bindings limited to `ns` (the control plane is shared).
fn install_guards(ns: &str) {
    let text = template_text("kw", ns, &["--show-only", "templates/admission-guards.yaml", "--kube-version", "1.36.0"]);
    let mut docs = crate::common::identity::parse_documents(&text);
    for d in &mut docs {
        let name = format!("{}-{ns}", d["metadata"]["name"].as_str().expect("name"));
        d["metadata"]["name"] = name.clone().into();
        if d["kind"] == "ValidatingAdmissionPolicyBinding" {
            let policy = format!("{}-{ns}", d["spec"]["policyName"].as_str().expect("policy"));
            d["spec"]["policyName"] = policy.into();
            let selector = json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}});
            d["spec"]["matchResources"] = serde_norway::to_value(selector).expect("yaml");
        }
    }
    let refs: Vec<_> = docs.iter().collect();
    let out = kubectl_stdin(&["apply", "--server-side", "-f", "-"], &to_stream(&refs));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A Role in `ns` bound to `subject` (`User` or `ServiceAccount`), with `rules` as YAML.
fn grant(ns: &str, name: &str, subject: (&str, &str), rules: &str) {
    let (kind, who) = subject;
    let ns_line = if kind == "ServiceAccount" { format!("\n  namespace: {ns}") } else { String::new() };
    let yaml = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: {name}, namespace: {ns}}}\nrules:\n{rules}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {name}, namespace: {ns}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {name}}}\nsubjects:\n- kind: {kind}\n  name: {who}{ns_line}\n"
    );
    let out = kubectl_stdin(&["apply", "--server-side", "-f", "-"], &yaml);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `kubectl apply` of `yaml` in `ns` as `user`: (accepted, stderr).
fn apply_as(user: &str, ns: &str, yaml: &str) -> (bool, String) {
    let out = kubectl_stdin(&["apply", "--server-side", "-n", ns, "--as", user, "-f", "-"], yaml);
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

const TENANT_RULES: &str = "- apiGroups: [keyward.dev]\n  resources: [apikeys, ratelimitpolicies]\n  verbs: [get, list, create, update, patch]";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_may_restart_and_scale_through_keyward_only_what_they_may_patch_themselves() {
    control_plane_with_crds().await;
    let ns = namespace("admission_tenant");
    install_guards(&ns);
    crate::common::kube::apply(&ns, &workload("Deployment", "web", Some(1)));
    grant(&ns, "alice", ("User", "alice"), TENANT_RULES);
    let bob_rules = format!(
        "{TENANT_RULES}\n- apiGroups: [apps]\n  resources: [deployments, deployments/scale]\n  verbs: [get, patch]"
    );
    grant(&ns, "bob", ("User", "bob"), &bob_rules);
    let restarts = apikey("k", "  rolloutRestart: [{kind: Deployment, name: web}]");
    // The policies take a moment to load: wait until alice is refused.
    let (_, err) = eventually(60, "the tenant guard refuses alice", || {
        let (ok, err) = apply_as("alice", &ns, &restarts);
        (!ok).then_some(((), err))
    })
    .await;
    assert!(err.contains("spec.rolloutRestart") && err.contains("may not patch"), "{err}");
    assert!(apply_as("bob", &ns, &restarts).0, "bob may patch web, so he may have Keyward restart it");
    assert!(apply_as("alice", &ns, &apikey("plain", "  {}")).0, "no restart target, nothing to check");
    let scaling = policy(
        "p",
        "  limit: {requests: 10, period: 1s}\n  scaling:\n    targetRef: {apiVersion: apps/v1, kind: Deployment, name: web}\n    maxReplicas: 3\n    capacityPerReplica: {requests: 10, period: 1s}",
    );
    let (ok, err) = apply_as("alice", &ns, &scaling);
    assert!(!ok && err.contains("spec.scaling.targetRef"), "{err}");
    assert!(apply_as("bob", &ns, &scaling).0, "bob may patch web's scale");
}

/// A Prometheus source's credentials and CA are sent to the policy's address: a tenant may name only Secrets and
/// ConfigMaps they may read themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_may_have_keyward_send_only_secrets_they_may_read_themselves() {
    control_plane_with_crds().await;
    let ns = namespace("admission_secrets");
    install_guards(&ns);
    grant(&ns, "alice", ("User", "alice"), TENANT_RULES);
    let carol_rules = format!(
        "{TENANT_RULES}\n- apiGroups: [\"\"]\n  resources: [secrets]\n  resourceNames: [prom-token]\n  verbs: [get]\n- apiGroups: [\"\"]\n  resources: [configmaps]\n  resourceNames: [prom-ca]\n  verbs: [get]"
    );
    grant(&ns, "carol", ("User", "carol"), &carol_rules);
    let source = |auth: &str| {
        policy(
            "p",
            &format!(
                "  limit: {{requests: 10, period: 1s}}\n  usage:\n    prometheus:\n      address: https://prometheus.example\n      query: up\n{auth}"
            ),
        )
    };
    let bearer = |secret: &str| source(&format!("      auth: {{bearerToken: {{name: {secret}, key: token}}}}"));
    let (_, err) = eventually(60, "the tenant guard refuses alice", || {
        let (ok, err) = apply_as("alice", &ns, &bearer("prom-token"));
        (!ok).then_some(((), err))
    })
    .await;
    assert!(err.contains("spec.usage.prometheus") && err.contains("may not read"), "{err}");
    assert!(apply_as("carol", &ns, &bearer("prom-token")).0, "carol may read prom-token");
    let (ok, err) = apply_as("carol", &ns, &bearer("admin-token"));
    assert!(!ok && err.contains("may not read"), "carol may not read admin-token: {err}");
    let basic = source(
        "      auth:\n        basic:\n          username: {name: prom-token, key: u}\n          password: {name: db-password, key: p}",
    );
    assert!(!apply_as("carol", &ns, &basic).0, "one of the two Secrets is not carol's to read");
    let ca = |cm: &str| source(&format!("      tls: {{ca: {{configMapKeyRef: {{name: {cm}, key: ca.crt}}}}}}"));
    assert!(apply_as("carol", &ns, &ca("prom-ca")).0, "carol may read prom-ca");
    let (ok, err) = apply_as("carol", &ns, &ca("cluster-ca"));
    assert!(!ok && err.contains("ConfigMap you may not read"), "{err}");
    assert!(apply_as("alice", &ns, &source("")).0, "no credentials, nothing to check");
}

/// `enforce` makes Keyward write a BackendTrafficPolicy in the namespace: only for a tenant who may do so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_may_have_keyward_enforce_only_where_they_may_write_backendtrafficpolicies() {
    control_plane_with_crds().await;
    let ns = namespace("admission_enforce");
    install_guards(&ns);
    grant(&ns, "alice", ("User", "alice"), TENANT_RULES);
    let dave_rules = format!(
        "{TENANT_RULES}\n- apiGroups: [gateway.envoyproxy.io]\n  resources: [backendtrafficpolicies]\n  verbs: [create, patch]"
    );
    grant(&ns, "dave", ("User", "dave"), &dave_rules);
    let enforced = policy(
        "p",
        "  limit: {requests: 10, period: 1s}\n  enforce:\n    targetRef: {kind: HTTPRoute, name: web}\n    clientIdHeader: x-client-id",
    );
    let (_, err) = eventually(60, "the tenant guard refuses alice", || {
        let (ok, err) = apply_as("alice", &ns, &enforced);
        (!ok).then_some(((), err))
    })
    .await;
    assert!(err.contains("spec.enforce") && err.contains("BackendTrafficPolicies"), "{err}");
    assert!(apply_as("dave", &ns, &enforced).0, "dave may write BackendTrafficPolicies, so he may have Keyward do it");
    assert!(apply_as("alice", &ns, &policy("q", "  limit: {requests: 10, period: 1s}")).0, "no enforce, no check");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_identity_may_write_only_keywards_secrets_and_the_restart_annotation() {
    control_plane_with_crds().await;
    let ns = namespace("admission_operator");
    install_guards(&ns);
    kubectl_ok(&["create", "serviceaccount", SA, "-n", &ns]);
    let rules = "- apiGroups: [\"\"]\n  resources: [secrets]\n  verbs: [get, create, update, patch, delete]\n- apiGroups: [apps]\n  resources: [deployments]\n  verbs: [get, patch, update]";
    grant(&ns, "operator", ("ServiceAccount", SA), rules);
    crate::common::kube::apply(&ns, &workload("Deployment", "web", Some(1)));
    crate::common::kube::apply(&ns, &apikey("owner", "  suspended: true"));
    let uid = get_json(&ns, "apikey/owner").expect("owner")["metadata"]["uid"].as_str().expect("uid").to_string();
    let me = format!("system:serviceaccount:{ns}:{SA}");
    let secret = |name: &str, labelled: bool, owned: bool| {
        let labels = if labelled { "\n  labels: {app.kubernetes.io/managed-by: keyward}" } else { "" };
        let owner = if owned {
            format!(
                "\n  ownerReferences: [{{apiVersion: keyward.dev/v1alpha1, kind: ApiKey, name: owner, uid: {uid}, controller: true}}]"
            )
        } else {
            String::new()
        };
        format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}{labels}{owner}\nstringData: {{k: v}}\n")
    };
    let (_, err) = eventually(60, "the operator guard refuses a plain Secret", || {
        let (ok, err) = apply_as(&me, &ns, &secret("plain", false, false));
        (!ok).then_some(((), err))
    })
    .await;
    assert!(err.contains("only the Secrets of ApiKeys"), "{err}");
    assert!(!apply_as(&me, &ns, &secret("labelled-only", true, false)).0, "a label alone is not enough");
    assert!(!apply_as(&me, &ns, &secret("owned-only", false, true)).0, "an owner alone is not enough");
    let (ok, err) = apply_as(&me, &ns, &secret("ours", true, true));
    assert!(ok, "Keyward's own Secret: {err}");
    assert!(apply_as(&me, &ns, &secret("keyward-seal", false, false)).0, "the seal key Secret is the exception");
    // Anyone else (the admin here) is not judged by the operator guard.
    crate::common::kube::apply(&ns, &secret("admins", false, false));
    let out = kubectl(&["delete", "secret", "admins", "-n", &ns, "--as", &me]);
    assert!(!out.status.success(), "the operator may not delete another Secret");

    let patch = |p: &str| kubectl(&["patch", "deployment", "web", "-n", &ns, "--as", &me, "--type", "merge", "-p", p]);
    let restart =
        r#"{"spec":{"template":{"metadata":{"annotations":{"keyward.dev/restartedAt":"2026-01-01T00:00:00Z"}}}}}"#;
    let out = patch(restart);
    assert!(out.status.success(), "the restart annotation: {}", String::from_utf8_lossy(&out.stderr));
    for other in [
        r#"{"spec":{"replicas":5}}"#,
        r#"{"spec":{"template":{"metadata":{"annotations":{"other":"x"}}}}}"#,
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"c","image":"evil:1"}]}}}}"#,
        r#"{"metadata":{"labels":{"x":"y"}}}"#,
    ] {
        let out = patch(other);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("restartedAt"), "{other}: {err}");
    }
}
