//! external-secrets, the controller a platform team would run instead of Keyward for generated keys (an
//! `ExternalSecret` with a `Password` generator and a `refreshInterval`), for the benchmark's `peer` phase. Built
//! from its Go module (`github.com/external-secrets/external-secrets`, pinned in `tests/external-secrets/go.mod`)
//! and cached like the control plane; the same module's CRDs (`config/crds/bases`) are read from the Go module
//! cache. Never shipped: the operator image holds only `keyward`.

use std::path::PathBuf;

use super::build::{BuildError, GoTool};

/// The Go module whose controller and CRDs the peer phase runs.
pub const MODULE: &str = "github.com/external-secrets/external-secrets";

pub(crate) const EXTERNAL_SECRETS: GoTool = GoTool {
    dir: "tests/external-secrets",
    sources: &["go.mod", "go.sum", "build.sh"],
    cache_prefix: "external-secrets",
    bin_name: "external-secrets",
    override_var: "KEYWARD_EXTERNAL_SECRETS",
    short: "external-secrets",
    what: "the external-secrets controller (from its Go module github.com/external-secrets/external-secrets) for the \
           peer benchmark",
    cost: "about 25 minutes on 2 shared cores (measured cold: 1.1 min download, then 27.6 min wall and 9.3 min CPU \
           with other builds running)",
};

/// The controller binary: `$KEYWARD_EXTERNAL_SECRETS` if set, else the cached build for the current
/// `tests/external-secrets` sources, building it first if needed. Safe to call from several processes at once.
pub fn binary() -> Result<PathBuf, BuildError> {
    EXTERNAL_SECRETS.binary()
}

/// The pinned module's version, as `go list -m` reports it.
pub fn version() -> Result<String, BuildError> {
    EXTERNAL_SECRETS.go_list(MODULE, "{{.Version}}")
}

/// Where the pinned module sits in the Go module cache (downloaded by the build).
pub fn module_dir() -> Result<PathBuf, BuildError> {
    EXTERNAL_SECRETS.module_dir(MODULE)
}

/// The module's CRD manifests (`config/crds/bases/*.yaml`, without the kustomization), sorted.
pub fn crd_files() -> Result<Vec<PathBuf>, BuildError> {
    let bases = module_dir()?.join("config/crds/bases");
    let entries = std::fs::read_dir(&bases).map_err(|source| BuildError::Sources { path: bases.clone(), source })?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect();
    files.sort();
    Ok(files)
}
