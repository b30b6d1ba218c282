//! Finding or building the Go tools the tests and `keyward dev` use: the control plane (`tests/controlplane`),
//! for the chart tests helm (`tests/helm`, see [`super::helm`]), for the usage and monitoring tests Prometheus
//! with promtool (`tests/prometheus`, see [`super::prometheus`]), and for the peer benchmark external-secrets
//! (`tests/external-secrets`, see [`super::external_secrets`]). A cold build takes minutes, so each binary is
//! cached outside the work tree (`$KEYWARD_CACHE_DIR`, else `$XDG_CACHE_HOME/keyward`, else `~/.cache/keyward`)
//! under a name derived from the hash of its Go sources: a fresh clone finds it, and a change to the Go module
//! builds a new one. A file lock makes parallel test binaries wait for one build instead of racing.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// A binary built by `build.sh OUT` from a Go module in this source tree, cached by the hash of its sources.
pub(crate) struct GoTool {
    /// The module's directory, relative to the repository root.
    pub dir: &'static str,
    /// Files whose content decides the binary.
    pub sources: &'static [&'static str],
    /// Cache subdirectory prefix (`<prefix>-<hash>`) and the binary's file name.
    pub cache_prefix: &'static str,
    pub bin_name: &'static str,
    /// Environment variable naming a binary to use instead.
    pub override_var: &'static str,
    /// Short name for progress lines ("the control plane").
    pub short: &'static str,
    /// What it is, for the messages ("the local control plane (…)").
    pub what: &'static str,
    /// What a cold build costs, for the first progress line.
    pub cost: &'static str,
}

/// The local control plane: real etcd, kube-apiserver, kube-controller-manager and kubectl in one binary.
pub(crate) const CONTROL_PLANE: GoTool = GoTool {
    dir: "tests/controlplane",
    sources: &["go.mod", "go.sum", "main.go", "build.sh"],
    cache_prefix: "controlplane",
    bin_name: "keyward-controlplane",
    override_var: "KEYWARD_CONTROLPLANE",
    short: "the control plane",
    what: "the local control plane (kube-apiserver, etcd, kube-controller-manager, kubectl from Kubernetes' Go modules)",
    cost: "about 8 minutes on 2 cores",
};

/// Why a Go tool's binary is not available.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(
        "Go is needed to build {what} but `go` was not found on PATH. Install Go 1.26 or newer \
         (https://go.dev/doc/install) and run again."
    )]
    GoMissing { what: &'static str },
    #[error(
        "{what} needs Go 1.26 or newer to build, found `{found}`. Install a newer Go \
         (https://go.dev/doc/install) and run again."
    )]
    GoTooOld { what: &'static str, found: String },
    #[error("cannot read the Go sources in {path}: {source}")]
    Sources { path: PathBuf, source: std::io::Error },
    #[error("cannot use the cache directory {path}: {source}")]
    Cache { path: PathBuf, source: std::io::Error },
    #[error("building {what} failed ({status}); output in {log}")]
    Failed { what: &'static str, status: String, log: PathBuf },
    #[error("{var} points at {path}, which does not exist")]
    OverrideMissing { var: &'static str, path: PathBuf },
    #[error("there is no promtool beside {server} (KEYWARD_PROMETHEUS); set KEYWARD_PROMTOOL to a promtool binary")]
    PromtoolMissing { server: PathBuf },
}

/// The cache directory for built binaries.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KEYWARD_CACHE_DIR") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("keyward")
}

/// The control plane binary: `$KEYWARD_CONTROLPLANE` if set, else the cached build for the current sources,
/// building it first if needed (with progress on standard error). Safe to call from several processes at once.
pub fn binary() -> Result<PathBuf, BuildError> {
    CONTROL_PLANE.binary()
}

impl GoTool {
    /// Where the Go module lives in this source tree.
    pub fn source_dir(&self) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(self.dir)
    }

    /// `go list -m -f FORMAT MODULE` in this tool's module: what Go knows of a pinned dependency (its version, or
    /// where it sits in the module cache).
    pub fn go_list(&self, module: &str, format: &str) -> Result<String, BuildError> {
        let src = self.source_dir();
        let out = Command::new("go")
            .args(["list", "-m", "-f", format, module])
            .current_dir(&src)
            .output()
            .map_err(|_| BuildError::GoMissing { what: self.what })?;
        if !out.status.success() {
            let source = std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned());
            return Err(BuildError::Sources { path: src, source });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Where the pinned `module` sits in the Go module cache, once this tool is built (the build downloads it).
    pub fn module_dir(&self, module: &str) -> Result<PathBuf, BuildError> {
        self.binary()?;
        let dir = PathBuf::from(self.go_list(module, "{{.Dir}}")?);
        if !dir.is_dir() {
            let source = std::io::Error::other(format!("{} is not a directory", dir.display()));
            return Err(BuildError::Sources { path: self.source_dir(), source });
        }
        Ok(dir)
    }

    /// The override if set, else the cached build for the current sources, building it first if needed.
    pub fn binary(&self) -> Result<PathBuf, BuildError> {
        if let Some(p) = std::env::var_os(self.override_var) {
            let path = PathBuf::from(p);
            return if path.exists() {
                Ok(path)
            } else {
                Err(BuildError::OverrideMissing { var: self.override_var, path })
            };
        }
        let src = self.source_dir();
        let hash = sources_hash(&src, self.sources)?;
        let dir = cache_dir().join(format!("{}-{}", self.cache_prefix, &hash[..16]));
        let bin = dir.join(self.bin_name);
        if bin.exists() {
            return Ok(bin);
        }
        let cache_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BuildError::Cache { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(cache_err(&dir))?;
        let lock_path = dir.join("build.lock");
        let lock = File::create(&lock_path).map_err(cache_err(&lock_path))?;
        // Another test binary or `keyward dev` may be building the same thing: wait for it.
        lock.lock().map_err(cache_err(&lock_path))?;
        if bin.exists() {
            return Ok(bin);
        }
        check_go(self.what)?;
        self.build(&src, &dir, &bin)?;
        Ok(bin)
    }

    fn build(&self, src: &Path, dir: &Path, bin: &Path) -> Result<(), BuildError> {
        let tmp = dir.join(format!("{}.tmp", self.bin_name));
        let log = dir.join("build.log");
        let log_file = File::create(&log).map_err(|source| BuildError::Cache { path: log.clone(), source })?;
        let err_file = log_file.try_clone().map_err(|source| BuildError::Cache { path: log.clone(), source })?;
        eprintln!(
            "keyward: building {} into {}.\nkeyward: the first build downloads the Go modules and takes {}; \
             later runs reuse it.",
            self.what,
            bin.display(),
            self.cost
        );
        let started = Instant::now();
        let mut next_report = 30;
        let mut child = Command::new("bash")
            .arg(src.join("build.sh"))
            .arg(&tmp)
            .current_dir(src)
            .stdout(log_file)
            .stderr(err_file)
            .spawn()
            .map_err(|source| BuildError::Cache { path: src.to_path_buf(), source })?;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(source) => {
                    return Err(BuildError::Cache { path: src.to_path_buf(), source });
                }
            }
            std::thread::sleep(Duration::from_millis(500));
            let secs = started.elapsed().as_secs();
            if secs >= next_report {
                eprintln!("keyward: still building {} ({secs}s)…", self.short);
                next_report += 30;
            }
        };
        if !status.success() {
            if let Ok(text) = std::fs::read_to_string(&log) {
                eprintln!("{text}");
            }
            return Err(BuildError::Failed { what: self.what, status: status.to_string(), log });
        }
        std::fs::rename(&tmp, bin).map_err(|source| BuildError::Cache { path: bin.to_path_buf(), source })?;
        eprintln!("keyward: {} built in {}s", self.short, started.elapsed().as_secs());
        Ok(())
    }
}

fn sources_hash(src: &Path, sources: &[&str]) -> Result<String, BuildError> {
    let mut h = Sha256::new();
    for name in sources {
        let path = src.join(name);
        let bytes = std::fs::read(&path).map_err(|source| BuildError::Sources { path, source })?;
        h.update(name.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn check_go(what: &'static str) -> Result<(), BuildError> {
    let out = Command::new("go").arg("version").output().map_err(|_| BuildError::GoMissing { what })?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        return Err(BuildError::GoMissing { what });
    }
    if go_version_ok(&text) { Ok(()) } else { Err(BuildError::GoTooOld { what, found: text }) }
}

/// Whether `go version` output names Go 1.26 or newer.
fn go_version_ok(text: &str) -> bool {
    let Some(v) = text.split_whitespace().find_map(|w| w.strip_prefix("go1.")) else {
        return false;
    };
    let minor: String = v.chars().take_while(char::is_ascii_digit).collect();
    minor.parse::<u32>().is_ok_and(|m| m >= 26)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_version_check() {
        assert!(go_version_ok("go version go1.26.8 linux/amd64"));
        assert!(go_version_ok("go version go1.27rc1 linux/amd64"));
        assert!(!go_version_ok("go version go1.19.8 linux/amd64"));
        assert!(!go_version_ok("garbage"));
    }

    #[test]
    fn a_missing_go_names_the_tool_and_how_to_install_go() {
        let e = BuildError::GoMissing { what: crate::devenv::prometheus::PROMETHEUS.what }.to_string();
        assert!(e.starts_with("Go is needed to build Prometheus and promtool (from their Go module"), "{e}");
        assert!(e.contains("Install Go 1.26 or newer (https://go.dev/doc/install)"), "{e}");
    }

    #[test]
    fn hash_covers_every_source() {
        for tool in [
            &CONTROL_PLANE,
            &crate::devenv::helm::HELM,
            &crate::devenv::egctl::EGCTL,
            &crate::devenv::prometheus::PROMETHEUS,
            &crate::devenv::external_secrets::EXTERNAL_SECRETS,
        ] {
            let h = sources_hash(&tool.source_dir(), tool.sources).expect("sources readable");
            assert_eq!(h.len(), 64);
        }
    }
}
