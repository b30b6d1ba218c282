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
        /// Watch only these namespaces, comma-separated (default: all namespaces). With several, the RBAC can be
        /// one Role per namespace.
        #[arg(long = "namespace", short = 'n', env = "KEYWARD_NAMESPACE", value_delimiter = ',')]
        namespaces: Vec<String>,
        /// Reconciles running at once per controller.
        #[arg(long, env = "KEYWARD_CONCURRENCY", default_value_t = 16)]
        concurrency: u16,
        /// Address for GET /healthz, /readyz and /metrics (OpenMetrics). Port 0 picks a free port (logged).
        #[arg(long, env = "KEYWARD_HTTP_ADDR", default_value = "0.0.0.0:8080")]
        http_addr: String,
        /// Elect a leader through a Lease, so that several replicas can run and only one reconciles.
        #[arg(long, env = "KEYWARD_LEADER_ELECT")]
        leader_elect: bool,
        /// Name of the leader Lease.
        #[arg(long, env = "KEYWARD_LEASE_NAME", default_value = "keyward-leader")]
        lease_name: String,
        /// Namespace of the leader Lease (default: $POD_NAMESPACE, else the kubeconfig's namespace).
        #[arg(long, env = "KEYWARD_LEASE_NAMESPACE")]
        lease_namespace: Option<String>,
        /// How long the Lease is valid without renewal: a standby takes over at most this long after the leader
        /// dies (at once when it shuts down cleanly). Whole seconds.
        #[arg(long, env = "KEYWARD_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
        lease_duration: std::time::Duration,
        /// How long before expiry the leader renews the Lease. Whole seconds, less than --lease-duration.
        #[arg(long, env = "KEYWARD_LEASE_GRACE", default_value = "5s", value_parser = parse_duration)]
        lease_grace: std::time::Duration,
        /// Stop when standard input closes (used by the test harness so no operator outlives its tests).
        #[arg(long, hide = true)]
        exit_on_stdin_close: bool,
        /// Log format.
        #[arg(long, env = "KEYWARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Log filter, in tracing's EnvFilter syntax (e.g. `info,keyward=debug`).
        #[arg(long, env = "KEYWARD_LOG", default_value = "info")]
        log: String,
        #[command(flatten)]
        tenant: keyward::cli::TenantArgs,
    },
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

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    keyward::api::duration::parse(s).map_err(|e| e.to_string())
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

async fn client() -> anyhow::Result<kube::Client> {
    kube::Client::try_default().await.context("no Kubernetes configuration found (kubeconfig or in-cluster)")
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
        Cmd::Run {
            namespaces,
            concurrency,
            http_addr,
            leader_elect,
            lease_name,
            lease_namespace,
            lease_duration,
            lease_grace,
            exit_on_stdin_close,
            log_format,
            log,
            tenant,
        } => {
            init_logging(log_format, &log)?;
            // Signals are caught from here on, so a SIGTERM during start-up is a clean stop, not a kill.
            let signal = keyward::operator::shutdown_signal();
            let client = client().await?;
            let leader_election = leader_elect.then(|| keyward::operator::leader::LeaderConfig {
                lease_name,
                lease_namespace: lease_namespace
                    .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|s| !s.is_empty()))
                    .unwrap_or_else(|| client.default_namespace().to_string()),
                duration: lease_duration,
                grace: lease_grace,
                identity: keyward::operator::leader::identity(),
            });
            let namespaces = namespaces.into_iter().map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect();
            let options = keyward::operator::Options {
                namespaces,
                concurrency,
                http_addr: Some(http_addr),
                leader_election,
                minimums: tenant.minimums().map_err(anyhow::Error::msg)?,
                metrics_auth: tenant.metrics_auth,
                stuck_reconcile_after: tenant.stuck_reconcile_after,
            };
            if exit_on_stdin_close {
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
                // NB: exit here: the stdin reader is a blocking thread that the runtime would wait for forever
                // when the shutdown came from a signal.
                if let Err(e) = result {
                    eprintln!("Error: {e}");
                    std::process::exit(1);
                }
                std::process::exit(0);
            } else {
                keyward::operator::run(client, options, signal).await?;
            }
        }
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
