//! The local control plane for tests and `keyward dev`: finds or builds the `tests/controlplane` binary (real
//! etcd, kube-apiserver, kube-controller-manager and kubectl from Kubernetes' Go modules), caches it where the
//! next run finds it, starts it and stops it.

mod build;
mod dev;
pub mod helm;
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
