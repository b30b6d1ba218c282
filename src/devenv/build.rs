//! Finding or building the control plane binary. The build takes minutes cold, so the binary is cached outside the
//! work tree (`$KEYWARD_CACHE_DIR`, else `$XDG_CACHE_HOME/keyward`, else `~/.cache/keyward`) under a name derived
//! from the hash of the Go sources: a fresh clone finds it, and a change to the Go module builds a new one.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Files whose content decides the binary.
const SOURCES: [&str; 4] = ["go.mod", "go.sum", "main.go", "build.sh"];

/// Why the control plane binary is not available.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(
        "Go is needed to build the local control plane (kube-apiserver, etcd, kubectl from Kubernetes' Go modules) \
         but `go` was not found on PATH. Install Go 1.26 or newer (https://go.dev/doc/install) and run again."
    )]
    GoMissing,
    #[error(
        "the local control plane needs Go 1.26 or newer, found `{0}`. Install a newer Go \
         (https://go.dev/doc/install) and run again."
    )]
    GoTooOld(String),
    #[error("cannot read the control plane sources in {path}: {source}")]
    Sources { path: PathBuf, source: std::io::Error },
    #[error("cannot use the cache directory {path}: {source}")]
    Cache { path: PathBuf, source: std::io::Error },
    #[error("building the control plane failed ({status}); output in {log}")]
    Failed { status: String, log: PathBuf },
    #[error("KEYWARD_CONTROLPLANE points at {0}, which does not exist")]
    OverrideMissing(PathBuf),
}

/// Where the Go module lives in this source tree.
pub fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("controlplane")
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
    if let Some(p) = std::env::var_os("KEYWARD_CONTROLPLANE") {
        let p = PathBuf::from(p);
        return if p.exists() { Ok(p) } else { Err(BuildError::OverrideMissing(p)) };
    }
    let src = source_dir();
    let hash = sources_hash(&src)?;
    let dir = cache_dir().join(format!("controlplane-{}", &hash[..16]));
    let bin = dir.join("keyward-controlplane");
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
    check_go()?;
    build(&src, &dir, &bin)?;
    Ok(bin)
}

fn sources_hash(src: &Path) -> Result<String, BuildError> {
    let mut h = Sha256::new();
    for name in SOURCES {
        let path = src.join(name);
        let bytes = std::fs::read(&path).map_err(|source| BuildError::Sources { path, source })?;
        h.update(name.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn check_go() -> Result<(), BuildError> {
    let out = Command::new("go").arg("version").output().map_err(|_| BuildError::GoMissing)?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        return Err(BuildError::GoMissing);
    }
    if go_version_ok(&text) { Ok(()) } else { Err(BuildError::GoTooOld(text)) }
}

/// Whether `go version` output names Go 1.26 or newer.
fn go_version_ok(text: &str) -> bool {
    let Some(v) = text.split_whitespace().find_map(|w| w.strip_prefix("go1.")) else {
        return false;
    };
    let minor: String = v.chars().take_while(char::is_ascii_digit).collect();
    minor.parse::<u32>().is_ok_and(|m| m >= 26)
}

fn build(src: &Path, dir: &Path, bin: &Path) -> Result<(), BuildError> {
    let tmp = dir.join("keyward-controlplane.tmp");
    let log = dir.join("build.log");
    let log_file = File::create(&log).map_err(|source| BuildError::Cache { path: log.clone(), source })?;
    let err_file = log_file.try_clone().map_err(|source| BuildError::Cache { path: log.clone(), source })?;
    eprintln!(
        "keyward: building the local control plane (kube-apiserver, etcd, kube-controller-manager, kubectl) from \
         Go modules into {}.\nkeyward: the first build downloads the modules and takes about 8 minutes on 2 cores; \
         later runs reuse it.",
        bin.display()
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
            eprintln!("keyward: still building the control plane ({secs}s)…");
            next_report += 30;
        }
    };
    if !status.success() {
        if let Ok(text) = std::fs::read_to_string(&log) {
            eprintln!("{text}");
        }
        return Err(BuildError::Failed { status: status.to_string(), log });
    }
    std::fs::rename(&tmp, bin).map_err(|source| BuildError::Cache { path: bin.to_path_buf(), source })?;
    eprintln!("keyward: control plane built in {}s", started.elapsed().as_secs());
    Ok(())
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
    fn hash_covers_every_source() {
        let h = sources_hash(&source_dir()).expect("sources readable");
        assert_eq!(h.len(), 64);
    }
}
