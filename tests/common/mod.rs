//! The one home of the integration tests' helpers: one real control plane per test binary (built and cached on
//! first use), one namespace per test, kubectl and `keyward` as a user runs them, the operator as a child process,
//! HTTP to its probes, the leak scanner, Prometheus, and the chart's identity.
#![allow(dead_code)]

pub mod http;
pub mod identity;
pub mod kube;
pub mod leak;
pub mod netns;
pub mod operator;
pub mod prometheus;
pub mod ratelimit;
pub mod rbac;

use std::path::PathBuf;
use std::process::Output;
use std::sync::OnceLock;

use keyward::devenv::ControlPlane;

/// The control plane of this test binary. It is never dropped: `up` stops when this process exits and its
/// standard input closes.
pub fn control_plane() -> &'static ControlPlane {
    static CP: OnceLock<ControlPlane> = OnceLock::new();
    CP.get_or_init(|| {
        let name = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "tests".into());
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("controlplane-{name}"));
        match ControlPlane::start(&dir) {
            Ok(cp) => cp,
            // A test that cannot get its control plane fails with the reason (e.g. how to install Go); never skips.
            Err(e) => panic!("cannot start the local control plane: {e}"),
        }
    })
}

/// A control plane with Keyward's CRDs installed.
pub async fn control_plane_with_crds() -> &'static ControlPlane {
    let cp = control_plane();
    static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    INSTALLED
        .get_or_init(|| async {
            let client = cp.client().await.expect("client");
            keyward::operator::crds::install(client).await.expect("install CRDs");
        })
        .await;
    cp
}

/// Runs kubectl; returns its output whatever the exit status.
pub fn kubectl(args: &[&str]) -> Output {
    control_plane().run_kubectl(args).expect("run kubectl")
}

/// Runs kubectl and panics with its stderr unless it succeeds; returns stdout.
pub fn kubectl_ok(args: &[&str]) -> String {
    let out = kubectl(args);
    assert!(out.status.success(), "kubectl {} failed:\n{}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs kubectl with `stdin` as standard input.
pub fn kubectl_stdin(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = control_plane()
        .kubectl()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kubectl");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("kubectl output")
}

/// Runs the `keyward` binary against the test control plane with `args`, and `stdin` as its standard input.
pub fn keyward(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(args)
        .env("KUBECONFIG", control_plane().kubeconfig())
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keyward");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("keyward output")
}

/// `keyward rotate NAME -n NS`; panics unless it succeeds. Returns the request value it set (the text between the
/// parentheses of its output), which the ApiKey's `status.lastRotateRequest` shows once answered.
pub fn keyward_rotate(ns: &str, name: &str) -> String {
    let out = keyward(&["rotate", name, "-n", ns], "");
    assert!(out.status.success(), "keyward rotate: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let value = stdout.rsplit_once('(').and_then(|(_, v)| v.split_once(')')).map(|(v, _)| v.to_string());
    value.unwrap_or_else(|| panic!("keyward rotate printed no request value: {stdout}"))
}

/// Creates a fresh namespace for one test.
pub fn namespace(test: &str) -> String {
    let ns = format!("t-{}", test.replace('_', "-"));
    kubectl_ok(&["create", "namespace", &ns]);
    ns
}
