//! The operator's identity as the Helm chart defines it: render the chart with helm (built from its Go module by
//! `keyward::devenv::helm`), install its ServiceAccount and RBAC into the test control plane, and write a kubeconfig
//! that authenticates as that ServiceAccount with a short-lived token. Code run with that kubeconfig can do exactly
//! what the chart grants: proof that the RBAC is sufficient and that it is minimal.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_norway::Value;

/// The chart in this source tree.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts").join("keyward")
}

/// The helm binary (built and cached on first use; `KEYWARD_HELM` overrides).
pub fn helm() -> PathBuf {
    match keyward::devenv::helm::binary() {
        Ok(p) => p,
        // Like the control plane: a missing helm fails the test with the reason (e.g. how to install Go).
        Err(e) => panic!("cannot build or find helm: {e}"),
    }
}

/// Runs helm with `args`; returns (success, stdout, stderr).
pub fn run_helm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(helm()).args(args).output().expect("run helm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `helm template RELEASE charts/keyward --namespace NS ARGS…` as YAML text; panics with helm's error on failure.
pub fn template_text(release: &str, namespace: &str, args: &[&str]) -> String {
    let chart = chart_dir();
    let chart = chart.to_str().expect("utf-8 path");
    let mut all = vec!["template", release, chart, "--namespace", namespace];
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = run_helm(&all);
    assert!(ok, "helm {} failed:\n{stderr}", all.join(" "));
    stdout
}

/// The rendered objects of `helm template`, in order.
pub fn template(release: &str, namespace: &str, args: &[&str]) -> Vec<Value> {
    parse_documents(&template_text(release, namespace, args))
}

/// Every non-empty document of a YAML stream.
pub fn parse_documents(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("helm rendered invalid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Objects back to one YAML stream (for kubectl).
pub fn to_stream(objects: &[&Value]) -> String {
    objects.iter().map(|o| format!("---\n{}", serde_norway::to_string(o).expect("serialize"))).collect()
}

/// The `kind` of a rendered object.
pub fn kind(o: &Value) -> &str {
    o["kind"].as_str().unwrap_or_default()
}

/// The kinds that make up the operator's identity.
pub const IDENTITY_KINDS: [&str; 5] = ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"];

/// The chart's identity, installed.
pub struct Identity {
    /// Namespace of the ServiceAccount (the release namespace).
    pub namespace: String,
    pub service_account: String,
    /// A kubeconfig that authenticates as the ServiceAccount (token valid for an hour).
    pub kubeconfig: PathBuf,
}

impl Identity {
    /// `system:serviceaccount:NS:NAME`, for `kubectl auth can-i --as`.
    pub fn user(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.service_account)
    }

    /// kubectl against the test control plane as this identity.
    pub fn kubectl(&self, args: &[&str]) -> std::process::Output {
        Command::new(super::control_plane().binary())
            .arg("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .expect("run kubectl")
    }
}

/// Renders the chart as release `release` in `namespace` with `helm_args` (e.g. `--set rbac.scope=namespaced`),
/// applies its ServiceAccount, ClusterRoles, Roles and bindings (for real; every namespace they name, and the
/// release namespace, must exist), and writes a kubeconfig for the ServiceAccount. Returns the identity; its
/// kubeconfig path is what `KUBECONFIG` should be for an operator that runs as the chart would run it.
pub fn install(release: &str, namespace: &str, helm_args: &[&str]) -> Identity {
    let objects = template(release, namespace, helm_args);
    let identity: Vec<&Value> = objects.iter().filter(|o| IDENTITY_KINDS.contains(&kind(o))).collect();
    let sa = identity
        .iter()
        .find(|o| kind(o) == "ServiceAccount")
        .and_then(|o| o["metadata"]["name"].as_str())
        .expect("the chart renders a ServiceAccount")
        .to_string();
    let applied = super::kubectl_stdin(&["apply", "--server-side", "-f", "-"], &to_stream(&identity));
    assert!(applied.status.success(), "applying the chart's RBAC failed: {}", String::from_utf8_lossy(&applied.stderr));
    let kubeconfig = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("identity-{release}.kubeconfig"));
    write_kubeconfig(namespace, &sa, &kubeconfig);
    Identity { namespace: namespace.to_string(), service_account: sa, kubeconfig }
}

/// Writes a kubeconfig for ServiceAccount `sa` in `namespace`: the server and CA of the admin kubeconfig, and a
/// token from the TokenRequest API (`kubectl create token`), valid for an hour.
pub fn write_kubeconfig(namespace: &str, sa: &str, path: &Path) {
    let token = super::kubectl_ok(&["create", "token", sa, "-n", namespace, "--duration=1h"]);
    let admin = std::fs::read_to_string(super::control_plane().kubeconfig()).expect("read the admin kubeconfig");
    let admin: Value = serde_norway::from_str(&admin).expect("admin kubeconfig is YAML");
    let cluster = &admin["clusters"][0]["cluster"];
    let server = cluster["server"].as_str().expect("cluster.server");
    let ca = cluster["certificate-authority-data"].as_str().expect("cluster.certificate-authority-data");
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "keyward", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": sa, "user": {"token": token.trim()}}],
        "contexts": [{"name": sa, "context": {"cluster": "keyward", "user": sa, "namespace": namespace}}],
        "current-context": sa,
    });
    std::fs::write(path, serde_norway::to_string(&config).expect("serialize kubeconfig")).expect("write kubeconfig");
}

/// The values file `charts/keyward/ci/FILE`, as a path for `helm -f`.
pub fn ci_values(file: &str) -> String {
    chart_dir().join("ci").join(file).to_string_lossy().into_owned()
}

/// The chart's `appVersion` (the operator image's default tag).
pub fn app_version() -> String {
    let chart: Value =
        serde_norway::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).expect("Chart.yaml"))
            .expect("Chart.yaml is YAML");
    chart["appVersion"].as_str().expect("appVersion").to_string()
}

/// The `metadata.name` of a rendered object.
pub fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or_default()
}

/// The `metadata.namespace` of a rendered object ("" when it has none).
pub fn ns_of(o: &Value) -> &str {
    o["metadata"]["namespace"].as_str().unwrap_or_default()
}

/// The one rendered object of kind `k`; panics unless there is exactly one.
pub fn only<'a>(objects: &'a [Value], k: &str) -> &'a Value {
    let found: Vec<&Value> = objects.iter().filter(|o| kind(o) == k).collect();
    assert_eq!(found.len(), 1, "expected one {k}, found {}", found.len());
    found[0]
}

/// Every rendered object of kind `k`.
pub fn all_of<'a>(objects: &'a [Value], k: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| kind(o) == k).collect()
}

/// A YAML sequence of strings (e.g. a container's args); empty when absent.
pub fn strings(v: &Value) -> Vec<String> {
    v.as_sequence().map(|s| s.iter().map(|x| x.as_str().expect("string").to_string()).collect()).unwrap_or_default()
}
