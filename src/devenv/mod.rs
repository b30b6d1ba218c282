//! The local control plane for tests and `keyward dev`: finds or builds the `tests/controlplane` binary (real
//! etcd, kube-apiserver, kube-controller-manager and kubectl from Kubernetes' Go modules), caches it where the
//! next run finds it, starts it and stops it, and, for fault tests, stops and restarts its API server.

mod build;
mod dev;
pub mod egctl;
pub mod external_secrets;
pub mod helm;
pub mod prometheus;
pub mod traffic;

pub use build::{BuildError, binary};
pub use dev::{DevError, dev};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Why the control plane could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("cannot prepare {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the control plane stopped before it was ready; its logs are in {dir}:\n{logs}")]
    NotReady { dir: PathBuf, logs: String },
}

/// Why a client for the control plane could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("client: {0}")]
    Client(#[from] kube::Error),
}

/// Why the API server could not be stopped or started on request.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error(
        "cannot read the API server's state in {path}: {source} (a control plane binary without the restart hook, \
         e.g. an old $KEYWARD_CONTROLPLANE?)"
    )]
    State { path: PathBuf, source: std::io::Error },
    #[error("cannot send {signal} to the control plane (pid {pid}): {detail}")]
    Signal { signal: &'static str, pid: u32, detail: String },
    #[error("the API server did not become ready again ({path} says `{state}`); its logs are in {dir}:\n{logs}")]
    Failed { path: PathBuf, state: String, dir: PathBuf, logs: String },
    #[error(
        "timed out after {timeout:?} waiting for the API server to be `{want}` ({dir}/apiserver.state says \
         `{last}`); its logs are in {dir}:\n{logs}"
    )]
    Timeout { timeout: Duration, want: String, last: String, dir: PathBuf, logs: String },
}

/// The API server's state as `up` reports it in `DIR/apiserver.state`: a word and the number of stops so far.
struct ApiServerState {
    word: String,
    stops: u64,
}

impl std::fmt::Display for ApiServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.word, self.stops)
    }
}

/// A running control plane. Dropping it stops it: `up` shuts everything down when its standard input closes,
/// which also happens if this process dies.
pub struct ControlPlane {
    child: Child,
    stdin: Option<ChildStdin>,
    bin: PathBuf,
    dir: PathBuf,
    kubeconfig: PathBuf,
}

impl ControlPlane {
    /// Builds or finds the binary and starts a fresh control plane with its state in `dir`.
    pub fn start(dir: &Path) -> Result<Self, StartError> {
        let bin = binary()?;
        let io = |source| StartError::Io { path: dir.to_path_buf(), source };
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(io)?;
        }
        std::fs::create_dir_all(dir).map_err(io)?;
        let log = std::fs::File::create(dir.join("up.log")).map_err(io)?;
        let mut child = Command::new(&bin)
            .arg("up")
            .arg("--dir")
            .arg(dir)
            .arg("--exit-on-stdin-close")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(io)?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or_else(|| io(std::io::Error::other("no stdout pipe")))?;
        let mut kubeconfig = None;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(path) = line.strip_prefix("READY ") {
                kubeconfig = Some(PathBuf::from(path.trim()));
                break;
            }
        }
        let mut cp = ControlPlane { child, stdin, bin, dir: dir.to_path_buf(), kubeconfig: PathBuf::new() };
        match kubeconfig {
            Some(k) => {
                cp.kubeconfig = k;
                Ok(cp)
            }
            None => Err(StartError::NotReady { dir: dir.to_path_buf(), logs: log_tails(dir) }),
        }
    }

    /// Path of the admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The state directory (etcd data, certificates, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The control plane binary; `BIN kubectl ...` is upstream kubectl of the same version.
    pub fn binary(&self) -> &Path {
        &self.bin
    }

    /// A `kubectl` command against this control plane.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("kubectl").arg("--kubeconfig").arg(&self.kubeconfig);
        c
    }

    /// Runs kubectl with `args` and returns its output.
    pub fn run_kubectl<I, S>(&self, args: I) -> std::io::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.kubectl().args(args).output()
    }

    /// A kube client for the admin identity.
    pub async fn client(&self) -> Result<kube::Client, ClientError> {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        Ok(kube::Client::try_from(cfg)?)
    }

    /// Stops the API server (etcd and the controller manager keep running) and waits, at most `timeout`, until it
    /// is down; clients then get "connection refused". Expect about 10 s: with watches open, kube-apiserver does
    /// not finish a graceful shutdown in the 10 s `up` gives it, and is killed. Stopping a stopped API server does
    /// nothing. See the restart hook in `tests/controlplane/main.go`.
    pub fn stop_apiserver(&self, timeout: Duration) -> Result<(), ApiServerError> {
        let now = self.apiserver_state()?;
        let want = match now.word.as_str() {
            "stopped" => return Ok(()),
            // `up` counts the stop when it makes one; after a failed start there is nothing to stop.
            "failed" => now.stops,
            _ => now.stops + 1,
        };
        self.signal_up("USR1")?;
        self.wait_for_apiserver("stopped", want, false, timeout)
    }

    /// Starts the API server again on the same port, etcd and certificates, and waits, at most `timeout`, until it
    /// is ready (its `/readyz` answers and the `default` namespace exists). Starting a running API server does
    /// nothing. Clients made before keep working: the address and the certificates are the same.
    pub fn start_apiserver(&self, timeout: Duration) -> Result<(), ApiServerError> {
        let now = self.apiserver_state()?;
        if now.word == "ready" {
            return Ok(());
        }
        self.signal_up("USR2")?;
        // A failure recorded before this request is not this request's answer.
        self.wait_for_apiserver("ready", now.stops, now.word == "failed", timeout)
    }

    fn apiserver_state_path(&self) -> PathBuf {
        self.dir.join("apiserver.state")
    }

    /// `DIR/apiserver.state`, which `up` replaces atomically: never a partial line.
    fn apiserver_state(&self) -> Result<ApiServerState, ApiServerError> {
        let path = self.apiserver_state_path();
        let text =
            std::fs::read_to_string(&path).map_err(|source| ApiServerError::State { path: path.clone(), source })?;
        let mut words = text.split_whitespace();
        match (words.next(), words.next().and_then(|n| n.parse().ok())) {
            (Some(word), Some(stops)) => Ok(ApiServerState { word: word.to_string(), stops }),
            _ => Err(ApiServerError::State {
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("unexpected content {text:?}")),
            }),
        }
    }

    /// Sends a signal to `up` (not to its process group: the API server child is `up`'s to stop and start).
    fn signal_up(&self, signal: &'static str) -> Result<(), ApiServerError> {
        let pid = self.child.id();
        let err = |detail: String| ApiServerError::Signal { signal, pid, detail };
        let out = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).output();
        match out {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(err(format!("kill: {}", String::from_utf8_lossy(&o.stderr).trim()))),
            Err(e) => Err(err(format!("cannot run kill: {e}"))),
        }
    }

    /// Polls the state file until it says `want stops`, `up` reports a failed start, or `timeout` passes.
    fn wait_for_apiserver(
        &self,
        want: &str,
        stops: u64,
        mut stale_failure: bool,
        timeout: Duration,
    ) -> Result<(), ApiServerError> {
        let path = self.apiserver_state_path();
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.apiserver_state()?;
            if state.word == want && state.stops == stops {
                return Ok(());
            }
            if state.word == "failed" && !stale_failure {
                return Err(ApiServerError::Failed {
                    path,
                    state: state.to_string(),
                    dir: self.dir.clone(),
                    logs: log_tails(&self.dir),
                });
            }
            stale_failure &= state.word == "failed";
            if Instant::now() >= deadline {
                return Err(ApiServerError::Timeout {
                    timeout,
                    want: format!("{want} {stops}"),
                    last: state.to_string(),
                    dir: self.dir.clone(),
                    logs: log_tails(&self.dir),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the control plane and waits for it (at most 30 seconds, then kills it).
    pub fn stop(&mut self) {
        // Closing standard input is `up`'s signal to stop its children and etcd cleanly.
        self.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last lines of every log in the state directory, for an error message.
fn log_tails(dir: &Path) -> String {
    let mut out = String::new();
    for name in ["up.log", "apiserver.log", "controller-manager.log", "etcd.log"] {
        if let Ok(text) = std::fs::read_to_string(dir.join(name)) {
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            out.push_str(&format!("--- {name} (last {} lines)\n{}\n", tail.len(), tail.join("\n")));
        }
    }
    out
}
