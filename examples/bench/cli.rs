//! The command line, and where the operator binary comes from.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Benchmark Keyward against the local control plane; prints one JSON object last on stdout")]
pub(crate) struct Args {
    /// N: ApiKeys for the ceiling, each cold start and the memory figure.
    #[arg(long, default_value_t = 1000)]
    pub(crate) keys: usize,
    /// ApiKeys due at the same second in the herd phase (default: min(N, 1000)).
    #[arg(long)]
    pub(crate) herd_keys: Option<usize>,
    /// How long the operator is watched for writes with nothing due.
    #[arg(long, default_value_t = 300)]
    pub(crate) idle_secs: u64,
    /// Reconciles at once (`keyward run --concurrency`) and the ceiling client's writes in flight.
    #[arg(long, default_value_t = 16)]
    pub(crate) concurrency: u16,
    /// ApiKey applies in flight when creating keys.
    #[arg(long, default_value_t = 16)]
    pub(crate) apply_concurrency: usize,
    /// Scale-up + scale-down rounds in the scale-reaction phase.
    #[arg(long, default_value_t = 3)]
    pub(crate) scale_trials: usize,
    #[arg(long)]
    pub(crate) skip_ceiling: bool,
    /// Skip the cold start with the ApiKeys applied before the operator starts.
    #[arg(long)]
    pub(crate) skip_preapplied: bool,
    #[arg(long)]
    pub(crate) skip_herd: bool,
    #[arg(long)]
    pub(crate) skip_idle: bool,
    #[arg(long)]
    pub(crate) skip_scale: bool,
    /// Skip the peer phase (external-secrets on the same control plane, after Keyward has stopped).
    #[arg(long)]
    pub(crate) skip_peer: bool,
    /// Do not benchmark: render the README's benchmark tables from the `bench-*.json` files in this directory
    /// (written by `--out`) and write them between the README's markers.
    #[arg(long)]
    pub(crate) render_readme: Option<PathBuf>,
    /// Also write the JSON object, with the machine, the commit and the load, to this file (pretty-printed).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// The `keyward` binary to run (default: next to this example's directory, built first when run by cargo).
    #[arg(long)]
    pub(crate) keyward_bin: Option<PathBuf>,
    /// Keep the temporary directory (control plane state, operator log) and print its path.
    #[arg(long)]
    pub(crate) keep_dir: bool,
    /// Longest wait for one phase (default 120 s + N/10 s).
    #[arg(long)]
    pub(crate) phase_timeout_secs: Option<u64>,
}

/// The operator binary: `--keyward-bin`, or `keyward` in this example's profile directory, built first when this
/// runs under cargo so that the figures are for the current source.
pub(crate) fn keyward_bin(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(p) = &args.keyward_bin {
        return Ok(p.clone());
    }
    let exe = std::env::current_exe()?;
    let profile_dir = exe.parent().and_then(Path::parent).context("cannot locate the target directory")?;
    let bin = profile_dir.join("keyward");
    if let Ok(cargo) = std::env::var("CARGO") {
        let mut cmd = std::process::Command::new(cargo);
        // NB: with the example, as `cargo run --example bench` builds: the same feature set, so no rebuild.
        cmd.args(["build", "--bin", "keyward", "--example", "bench"]).current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        say!("building the operator: {cmd:?}");
        match cmd.status() {
            Ok(s) if s.success() => {}
            other => say!("building the operator failed ({other:?}); using what is there"),
        }
    }
    ensure!(bin.is_file(), "{} not found: build it with `cargo build --release --bin keyward`", bin.display());
    Ok(bin)
}
