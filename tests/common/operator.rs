//! The real `keyward run` binary as a child process against the test control plane, its logs in a file that the
//! leak scan reads. It stops when its `Operator` is dropped or the test process exits (its standard input closes).
//!
//! In a control plane shared by many tests, every operator is scoped to its test's namespace ([`scoped`]): two
//! unscoped operators without leader election on one API server would both act on every object. An operator that
//! must watch every namespace belongs in a test binary that owns its control plane.

use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Operator {
    pub child: Child,
    _stdin: ChildStdin,
    pub log: PathBuf,
}

/// The log filter of the tests' operators: debug for Keyward, info for the HTTP, TLS, client and Lease stacks.
pub const LOG: &str = "debug,hyper=info,tower=info,rustls=info,kube_client=info,kube_lease_manager=info";

/// Starts an operator with debug logging for Keyward that watches every namespace; `tag` names its log file. Only
/// for a binary that owns its control plane (see the module docs).
pub fn start(tag: &str) -> Operator {
    start_with_log(tag, LOG)
}

/// Starts an operator with debug logging that watches only `ns` (its log file is named after `ns`): what a test
/// in the shared control plane runs.
pub fn scoped(ns: &str) -> Operator {
    start_with_args(ns, LOG, &["--namespace", ns])
}

/// Like [`scoped`], with more `keyward run` arguments and another log file tag (for a test with several operators).
pub fn scoped_with(tag: &str, ns: &str, filter: &str, extra: &[&str]) -> Operator {
    let mut args = vec!["--namespace", ns];
    args.extend_from_slice(extra);
    start_with_args(tag, filter, &args)
}

/// Starts an operator with the given log filter.
pub fn start_with_log(tag: &str, filter: &str) -> Operator {
    start_with_args(tag, filter, &[])
}

/// Starts an operator with the given log filter and extra `keyward run` arguments.
pub fn start_with_args(tag: &str, filter: &str, extra: &[&str]) -> Operator {
    start_with_env(tag, filter, extra, &[])
}

/// Like [`start_with_args`], with more environment variables for the process, set last: e.g. `KUBECONFIG` to run
/// as another identity than the admin (see `identity::install`), or the `POD_NAME`/`POD_NAMESPACE` a pod would get.
pub fn start_with_env(tag: &str, filter: &str, extra: &[&str], env: &[(&str, &str)]) -> Operator {
    let cp = super::control_plane();
    // The shared control plane only gets scoped operators (see the module docs): refuse an unscoped one there.
    let shared = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().starts_with("integration")))
        .unwrap_or(false);
    assert!(
        !shared || extra.contains(&"--namespace"),
        "operator {tag}: an operator in the shared integration control plane must watch only its test's namespace"
    );
    let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("operator-{tag}.log"));
    let file = std::fs::File::create(&log).expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["run", "--exit-on-stdin-close", "--http-addr", "127.0.0.1:0", "--log", filter])
        .args(extra)
        .env("KUBECONFIG", cp.kubeconfig())
        .env("NO_COLOR", "1")
        // The tests' sources (simulated gateways, Prometheus) listen on 127.0.0.1; a test that needs the default
        // fence passes `KEYWARD_ALLOW_LOOPBACK_SOURCES=false` in `env`.
        .env("KEYWARD_ALLOW_LOOPBACK_SOURCES", "true")
        // The suites rotate keys every few seconds to see the mechanics; production's 10 s floor is tested in
        // tests/tenant.rs. Set before `env`, so a test can put it back.
        .env("KEYWARD_MIN_ROTATION_INTERVAL", "1s")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(file.try_clone().expect("clone"))
        .stderr(file)
        .spawn()
        .expect("spawn keyward run");
    let stdin = child.stdin.take().expect("stdin");
    Operator { child, _stdin: stdin, log }
}

impl Operator {
    /// The operator's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The address of its /healthz, /readyz and /metrics, from its log (it binds port 0), once it is serving.
    pub fn http_addr(&self) -> Option<String> {
        let text = self.log_text();
        let line = text.lines().find(|l| l.contains("serving /healthz"))?;
        let at = line.find("addr=")? + "addr=".len();
        Some(line[at..].split_whitespace().next()?.trim_matches('"').to_string())
    }

    /// SIGTERM: a clean shutdown.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it cleanly (SIGTERM, then SIGKILL after 15 s) and waits for it to exit.
    pub fn stop(mut self) {
        self.terminate();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
    }

    /// Waits (up to 60 s) until it serves HTTP; its address.
    pub async fn wait_http_addr(&self) -> String {
        super::kube::eventually(60, "the operator serves HTTP", || self.http_addr()).await
    }

    /// Its `/metrics` text now; panics if it does not answer.
    pub async fn metrics(&self) -> String {
        let addr = self.wait_http_addr().await;
        super::http::get_text(&format!("http://{addr}/metrics")).await.expect("the operator's /metrics").1
    }

    /// Whether its log says its caches synced (it then acts on what it watches).
    pub fn synced(&self) -> bool {
        self.log_text().contains("caches synced: ready")
    }

    /// Its log lines that contain every one of `needles`.
    pub fn log_lines(&self, needles: &[&str]) -> Vec<String> {
        self.log_text().lines().filter(|l| needles.iter().all(|n| l.contains(n))).map(str::to_string).collect()
    }

    /// Panics with the matching lines if its log shows a panic.
    pub fn assert_no_panic(&self) {
        let panics = self.log_lines(&["panicked"]);
        assert!(panics.is_empty(), "the operator panicked:\n{}", panics.join("\n"));
    }
}

/// `keyward run` arguments of a replica with leader election on Lease `lease` in `ns` (6 s Lease, renewed 2 s before
/// it ends), watching `ns` only.
pub fn leader_args<'a>(ns: &'a str, lease: &'a str) -> Vec<&'a str> {
    vec![
        "--leader-elect",
        "--lease-namespace",
        ns,
        "--lease-name",
        lease,
        "--lease-duration",
        "6s",
        "--lease-grace",
        "2s",
        "--namespace",
        ns,
    ]
}
