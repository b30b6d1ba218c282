//! The real `keyward run` binary as a child process against the test control plane, its logs in a file that the
//! leak scan reads. It stops when the test process exits (its standard input closes).

use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

pub struct Operator {
    pub child: Child,
    _stdin: ChildStdin,
    pub log: PathBuf,
}

/// Starts an operator with debug logging for Keyward; `tag` names its log file.
pub fn start(tag: &str) -> Operator {
    start_with_log(tag, "debug,hyper=info,tower=info,rustls=info,kube_client=info")
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
    let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("operator-{tag}.log"));
    let file = std::fs::File::create(&log).expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["run", "--exit-on-stdin-close", "--http-addr", "127.0.0.1:0", "--log", filter])
        .args(extra)
        .env("KUBECONFIG", cp.kubeconfig())
        .env("NO_COLOR", "1")
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
}

/// The operator shared by the tests of one binary.
pub fn shared() -> &'static Mutex<Operator> {
    static OP: OnceLock<Mutex<Operator>> = OnceLock::new();
    OP.get_or_init(|| Mutex::new(start("shared")))
}
