//! The `keyward` command: parses the command line and dispatches.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use keyward::operator::args::{LogFormat, RunArgs};

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
        /// Rewrite the generated API reference (the part between its BEGIN and END markers) in this Markdown file.
        #[arg(long, conflicts_with = "write_dir")]
        reference: Option<PathBuf>,
    },
    /// Run the operator against the current kubeconfig or the in-cluster configuration.
    Run(Box<keyward::operator::args::RunArgs>),
    /// Rotate an ApiKey now (sets the keyward.dev/rotate annotation to a new value, like `cmctl renew`).
    Rotate {
        /// Name of the ApiKey.
        name: String,
        /// Namespace of the ApiKey (default: the kubeconfig's namespace).
        #[arg(long, short = 'n')]
        namespace: Option<String>,
    },
    /// Check a key's format and checksum offline (reads the key from standard input, so it stays out of shell
    /// history and process lists). Exits 0 when the checksum is valid.
    VerifyFormat {
        /// Also require this prefix.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Start a local control plane under ./.keyward-dev/, install the CRDs, apply examples/ and run the operator.
    Dev {
        /// Only build (or find) the control plane binary and print its path.
        #[arg(long)]
        build_only: bool,
        /// State directory of the local control plane.
        #[arg(long, default_value = ".keyward-dev")]
        dir: PathBuf,
        /// Directory of manifests applied once the CRDs are installed.
        #[arg(long, default_value = "examples")]
        examples: PathBuf,
        /// Log filter for the operator.
        #[arg(long, env = "KEYWARD_LOG", default_value = "info")]
        log: String,
        /// Address for the operator's /healthz, /readyz and /metrics.
        #[arg(long, default_value = "127.0.0.1:8080")]
        http_addr: String,
    },
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

/// The client, with every request counted in `keyward_api_requests_total`.
async fn client() -> anyhow::Result<kube::Client> {
    let config = kube::Config::infer().await.context("no Kubernetes configuration found (kubeconfig or in-cluster)")?;
    let builder = kube::client::ClientBuilder::try_from(config).context("building the Kubernetes client")?;
    Ok(builder.with_layer(&keyward::metrics::requests::layer()).build())
}

/// `keyward run`: logging, signals, the client, then the operator until a signal (or, for the test harness, until
/// standard input closes).
async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(args.log_format, &args.log)?;
    // Signals are caught from here on, so a SIGTERM during start-up is a clean stop, not a kill.
    let signal = keyward::operator::shutdown_signal();
    let client = client().await?;
    let options = args.options(&client).map_err(anyhow::Error::msg)?;
    if !args.exit_on_stdin_close {
        return Ok(keyward::operator::run(client, options, signal).await?);
    }
    let stdin_closed = async {
        let mut sink = tokio::io::sink();
        let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut sink).await;
    };
    let shutdown = async move {
        tokio::select! {
            () = signal => {},
            () = stdin_closed => {},
        }
    };
    let result = keyward::operator::run(client, options, shutdown).await;
    // NB: exit here: the stdin reader is a blocking thread that the runtime would wait for forever when the
    // shutdown came from a signal.
    if let Err(e) = result {
        eprintln!("Error: {e}");
        std::process::exit(1);
    }
    std::process::exit(0);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Crd { reference: Some(page), .. } => {
            let text = std::fs::read_to_string(&page).with_context(|| format!("reading {}", page.display()))?;
            let spliced = keyward::api::reference::splice(&text).with_context(|| {
                format!(
                    "{} has no generated part: add the lines\n{}\n{}",
                    page.display(),
                    keyward::api::reference::BEGIN,
                    keyward::api::reference::END
                )
            })?;
            std::fs::write(&page, spliced).with_context(|| format!("writing {}", page.display()))?;
        }
        Cmd::Crd { write_dir: None, .. } => {
            print!("{}", keyward::api::all_crds_yaml()?);
        }
        Cmd::Crd { write_dir: Some(dir), .. } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (file, crd) in keyward::api::crds() {
                let path = dir.join(file);
                std::fs::write(&path, keyward::api::crd_yaml(&crd)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        Cmd::Run(args) => run(*args).await?,
        Cmd::Rotate { name, namespace } => {
            let client = client().await?;
            let ns = namespace.unwrap_or_else(|| client.default_namespace().to_string());
            let value = keyward::cli::rotate(client, &ns, &name).await?;
            println!("apikey.keyward.dev/{name} rotation requested ({value})");
        }
        Cmd::VerifyFormat { prefix } => {
            let mut key = String::new();
            std::io::stdin().read_line(&mut key).context("reading the key from standard input")?;
            match keyward::cli::verify_format(key.trim(), prefix.as_deref()) {
                Ok(()) => println!("valid: checksum matches"),
                Err(reason) => {
                    println!("invalid: {reason}");
                    std::process::exit(1);
                }
            }
        }
        Cmd::Dev { build_only: true, .. } => {
            println!("{}", keyward::devenv::binary()?.display());
        }
        Cmd::Dev { build_only: false, dir, examples, log, http_addr } => {
            init_logging(LogFormat::Text, &log)?;
            keyward::devenv::dev(&dir, &examples, &http_addr).await?;
        }
    }
    Ok(())
}
