//! The `keyward` command: parses the command line and dispatches.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

/// Keyward: a Kubernetes operator for the lifecycle of API keys.
#[derive(Parser)]
#[command(name = "keyward", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print every CRD as YAML (a multi-document stream), or write one file per CRD into a directory.
    Crd {
        /// Write `keyward.dev_<plural>.yaml` files into this directory instead of printing.
        #[arg(long)]
        write_dir: Option<PathBuf>,
    },
    /// Run the operator against the current kubeconfig or the in-cluster configuration.
    Run {
        /// Log format.
        #[arg(long, env = "KEYWARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Log filter, in tracing's EnvFilter syntax (e.g. `info,keyward=debug`).
        #[arg(long, env = "KEYWARD_LOG", default_value = "info")]
        log: String,
    },
    /// Start a local control plane under ./.keyward-dev/, install the CRDs, apply examples/ and run the operator.
    Dev {
        /// State directory of the local control plane.
        #[arg(long, default_value = ".keyward-dev")]
        dir: PathBuf,
        /// Directory of manifests applied once the CRDs are installed.
        #[arg(long, default_value = "examples")]
        examples: PathBuf,
        /// Log filter for the operator.
        #[arg(long, env = "KEYWARD_LOG", default_value = "info")]
        log: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).context("invalid log filter")?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Crd { write_dir: None } => {
            print!("{}", keyward::api::all_crds_yaml()?);
        }
        Cmd::Crd { write_dir: Some(dir) } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (file, crd) in keyward::api::crds() {
                let path = dir.join(file);
                std::fs::write(&path, keyward::api::crd_yaml(&crd)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        Cmd::Run { log_format, log } => {
            init_logging(log_format, &log)?;
            let client = kube::Client::try_default()
                .await
                .context("no Kubernetes configuration found (kubeconfig or in-cluster)")?;
            keyward::operator::run(client, keyward::operator::shutdown_signal()).await?;
        }
        Cmd::Dev { dir, examples, log } => {
            init_logging(LogFormat::Text, &log)?;
            keyward::devenv::dev(&dir, &examples).await?;
        }
    }
    Ok(())
}
