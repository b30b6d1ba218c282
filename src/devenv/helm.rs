//! The helm CLI for the chart tests (`helm lint`, `helm template`), built from its own Go module
//! (`helm.sh/helm/v3`, pinned in `tests/helm/go.mod`) and cached like the control plane. Never shipped: the
//! operator image holds only `keyward`.

use std::path::PathBuf;

use super::build::{BuildError, GoTool};

pub(crate) const HELM: GoTool = GoTool {
    dir: "tests/helm",
    sources: &["go.mod", "go.sum", "build.sh"],
    cache_prefix: "helm",
    bin_name: "helm",
    override_var: "KEYWARD_HELM",
    short: "helm",
    what: "helm (the Helm v3 CLI, from its Go module helm.sh/helm/v3) for the chart tests",
    cost: "about 5 minutes on 2 cores",
};

/// The helm binary: `$KEYWARD_HELM` if set, else the cached build for the current `tests/helm` sources, building it
/// first if needed (with progress on standard error). Safe to call from several processes at once.
pub fn binary() -> Result<PathBuf, BuildError> {
    HELM.binary()
}
