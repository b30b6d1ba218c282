//! egctl, Envoy Gateway's CLI, for the gateway tests: `egctl x translate` runs Envoy Gateway's own translator
//! (Gateway API + SecurityPolicy → xDS) on the Secret Keyward wrote. Built from its Go module
//! (`github.com/envoyproxy/gateway`, pinned in `tests/egctl/go.mod`) and cached like the control plane and helm;
//! the same module's Gateway API and Envoy Gateway CRDs (its `charts/gateway-crds-helm`) are read from the Go
//! module cache. Never shipped: the operator image holds only `keyward`.

use std::path::PathBuf;

use super::build::{BuildError, GoTool};

pub(crate) const EGCTL: GoTool = GoTool {
    dir: "tests/egctl",
    sources: &["go.mod", "go.sum", "build.sh"],
    cache_prefix: "egctl",
    bin_name: "egctl",
    override_var: "KEYWARD_EGCTL",
    short: "egctl",
    what: "egctl (Envoy Gateway's CLI, from its Go module github.com/envoyproxy/gateway) for the gateway tests",
    cost: "about 20 minutes on 2 shared cores (measured cold: 22.5 min wall, 10.5 min CPU)",
};

/// The egctl binary: `$KEYWARD_EGCTL` if set, else the cached build for the current `tests/egctl` sources,
/// building it first if needed (with progress on standard error). Safe to call from several processes at once.
pub fn binary() -> Result<PathBuf, BuildError> {
    EGCTL.binary()
}

/// Where the pinned `github.com/envoyproxy/gateway` module sits in the Go module cache (downloaded by the build).
pub fn module_dir() -> Result<PathBuf, BuildError> {
    EGCTL.module_dir("github.com/envoyproxy/gateway")
}

/// The CRD manifests of Gateway API (standard channel) and Envoy Gateway that the module's CRD chart installs,
/// with the chart's `{{ if }}` guards removed.
pub fn crd_files() -> Result<Vec<PathBuf>, BuildError> {
    let templates = module_dir()?.join("charts/gateway-crds-helm/templates");
    let mut files = vec![templates.join("standard-gatewayapi-crds.yaml")];
    let generated = templates.join("generated");
    let entries = std::fs::read_dir(&generated).map_err(|source| BuildError::Sources { path: generated, source })?;
    let mut envoy: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
    envoy.sort();
    files.extend(envoy);
    Ok(files)
}
