//! Prometheus and promtool for the tests (the usage tests read a real Prometheus server; the chart's alert rules
//! are checked and unit-tested with promtool), built from their own Go module (`github.com/prometheus/prometheus`,
//! pinned in `tests/prometheus/go.mod`, with the `remove_all_sd` tag) and cached like the control plane and helm.
//! Never shipped: the operator image holds only `keyward`.

use std::path::PathBuf;

use super::build::{BuildError, GoTool};

pub(crate) const PROMETHEUS: GoTool = GoTool {
    dir: "tests/prometheus",
    sources: &["go.mod", "go.sum", "build.sh"],
    cache_prefix: "prometheus",
    bin_name: "prometheus",
    override_var: "KEYWARD_PROMETHEUS",
    short: "prometheus",
    what: "Prometheus and promtool (from their Go module github.com/prometheus/prometheus) for the usage and \
           monitoring tests",
    cost: "5 to 13 minutes on 2 cores, depending on the load",
};

/// Names a promtool binary to use instead of the one built next to the server.
const PROMTOOL_VAR: &str = "KEYWARD_PROMTOOL";

/// The Prometheus server: `$KEYWARD_PROMETHEUS` if set, else the cached build for the current `tests/prometheus`
/// sources, building it (and promtool) first if needed, with progress on standard error. Safe to call from several
/// processes at once.
pub fn binary() -> Result<PathBuf, BuildError> {
    PROMETHEUS.binary()
}

/// promtool: `$KEYWARD_PROMTOOL` if set, else the `promtool` next to [`binary`] (the cached build makes both).
pub fn promtool() -> Result<PathBuf, BuildError> {
    if let Some(p) = std::env::var_os(PROMTOOL_VAR).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(p);
        return if path.exists() { Ok(path) } else { Err(BuildError::OverrideMissing { var: PROMTOOL_VAR, path }) };
    }
    let server = binary()?;
    let path = server.with_file_name("promtool");
    if path.exists() {
        Ok(path)
    } else {
        // Only when KEYWARD_PROMETHEUS names a server with no promtool beside it.
        Err(BuildError::PromtoolMissing { server })
    }
}
