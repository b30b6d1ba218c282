//! `keyward run` as a user meets it: a clear message and a non-zero exit when the CRDs are missing, and a clean
//! start (and a clean stop on SIGTERM) once they are installed. This binary installs the CRDs itself, so it owns
//! its control plane.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn keyward_run() -> Command {
    let cp = common::control_plane();
    let mut c = Command::new(env!("CARGO_BIN_EXE_keyward"));
    c.args(["run", "--http-addr", "127.0.0.1:0"]).env("KUBECONFIG", cp.kubeconfig()).env("NO_COLOR", "1");
    c
}

#[tokio::test]
async fn run_without_then_with_crds() {
    let cp = common::control_plane();
    // 1. No CRDs: exits at once, saying what is missing and how to install it.
    let out = tokio::task::spawn_blocking(|| keyward_run().output()).await.expect("join").expect("run keyward");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "keyward run succeeded without CRDs:\n{stderr}");
    for needle in
        ["apikeys.keyward.dev", "ratelimitpolicies.keyward.dev", "keyward crd | kubectl apply --server-side -f -"]
    {
        assert!(stderr.contains(needle), "message lacks {needle:?}:\n{stderr}");
    }

    // 2. With the CRDs installed the way the message says (`keyward crd | kubectl apply`), it starts and stays up.
    let crds = Command::new(env!("CARGO_BIN_EXE_keyward")).arg("crd").output().expect("keyward crd");
    let applied = common::kubectl_stdin(&["apply", "--server-side", "-f", "-"], &String::from_utf8_lossy(&crds.stdout));
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    common::kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "crd/apikeys.keyward.dev",
        "crd/ratelimitpolicies.keyward.dev",
        "--timeout=60s",
    ]);

    let mut child = keyward_run().stderr(Stdio::piped()).spawn().expect("spawn keyward run");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let ready = loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                let done = line.contains("CRDs are installed and established");
                seen.push(line);
                if done {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    assert!(ready, "keyward run did not report the CRDs:\n{}", seen.join("\n"));
    assert!(child.try_wait().expect("try_wait").is_none(), "keyward run exited early");

    // 3. SIGTERM stops it cleanly with exit status 0.
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    // Bounded: a hang here is a failure, not a stuck CI run.
    let status = tokio::time::timeout(Duration::from_secs(60), tokio::task::spawn_blocking(move || child.wait()))
        .await
        .expect("keyward run did not stop within 60s of SIGTERM")
        .expect("join")
        .expect("wait");
    assert!(status.success(), "keyward run exited with {status} on SIGTERM");
    let _ = cp;
}
