//! The arguments of `keyward run` (flags with environment variables) and the operator [`Options`] they make.

use super::Options;

/// How `keyward run` is configured: every flag also reads an environment variable.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Watch only these namespaces, comma-separated (default: all namespaces). With several, the RBAC can be
    /// one Role per namespace.
    #[arg(long = "namespace", short = 'n', env = "KEYWARD_NAMESPACE", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Reconciles running at once per controller.
    #[arg(long, env = "KEYWARD_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// Usage polls in flight at once (sources whose last poll timed out share a quarter of this, apart).
    #[arg(long, env = "KEYWARD_POLL_CONCURRENCY", default_value_t = crate::ratelimit::poller::DEFAULT_POLL_CONCURRENCY)]
    pub poll_concurrency: usize,
    /// Every key's Secret is looked at at least this often, even when nothing happens, so an edit that escapes
    /// the watch (a removed label) is found; spread per key over the second half of the period.
    #[arg(long, env = "KEYWARD_RECHECK_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub recheck_interval: std::time::Duration,
    /// Name of the Secret holding the seal key (HMAC of each key Secret's bookkeeping), created on first start.
    #[arg(long, env = "KEYWARD_SEAL_SECRET", default_value = "keyward-seal")]
    pub seal_secret: String,
    /// Namespace of the seal key Secret (default: $POD_NAMESPACE, else the kubeconfig's namespace).
    #[arg(long, env = "KEYWARD_SEAL_NAMESPACE")]
    pub seal_namespace: Option<String>,
    /// Address for GET /healthz, /readyz and /metrics (OpenMetrics). Port 0 picks a free port (logged).
    #[arg(long, env = "KEYWARD_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: String,
    /// Elect a leader through a Lease, so that several replicas can run and only one reconciles.
    #[arg(long, env = "KEYWARD_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(long, env = "KEYWARD_LEASE_NAME", default_value = "keyward-leader")]
    pub lease_name: String,
    /// Namespace of the leader Lease (default: $POD_NAMESPACE, else the kubeconfig's namespace).
    #[arg(long, env = "KEYWARD_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// How long the Lease is valid without renewal: a standby takes over at most this long after the leader
    /// dies (at once when it shuts down cleanly). Whole seconds.
    #[arg(long, env = "KEYWARD_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: std::time::Duration,
    /// How long before expiry the leader renews the Lease. Whole seconds, less than --lease-duration.
    #[arg(long, env = "KEYWARD_LEASE_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub lease_grace: std::time::Duration,
    /// Stop when standard input closes (used by the test harness so no operator outlives its tests).
    #[arg(long, hide = true)]
    pub exit_on_stdin_close: bool,
    /// Log format.
    #[arg(long, env = "KEYWARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter, in tracing's EnvFilter syntax (e.g. `info,keyward=debug`).
    #[arg(long, env = "KEYWARD_LOG", default_value = "info")]
    pub log: String,
    #[command(flatten)]
    pub sources: crate::usage::SourceFlags,
    #[command(flatten)]
    pub tenant: TenantArgs,
}

/// `keyward run` flags that bound what tenants can make the operator do (see docs/security.md).
#[derive(clap::Args, Clone, Debug)]
pub struct TenantArgs {
    /// Shortest `usage.interval` a RateLimitPolicy may ask for. An explicit shorter interval is refused
    /// (Ready=False, reason InvalidSpec, naming this flag); the default interval (15s) is raised to it.
    #[arg(long, env = "KEYWARD_MIN_USAGE_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub min_usage_interval: std::time::Duration,
    /// Shortest `rotation.interval` of an ApiKey, and shortest gap between two runs of `rotation.schedule`. A
    /// shorter one is refused (Ready=False, reason InvalidSpec, naming this flag).
    #[arg(long, env = "KEYWARD_MIN_ROTATION_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub min_rotation_interval: std::time::Duration,
    /// Shortest `rotation.gracePeriod` of an ApiKey. An explicit shorter one is refused (Ready=False, reason
    /// InvalidSpec); the default grace period (24h) is raised to it.
    #[arg(long, env = "KEYWARD_MIN_GRACE_PERIOD", default_value = "0s", value_parser = parse_duration)]
    pub min_grace_period: std::time::Duration,
    /// Require on /metrics a bearer token that the API server authenticates (TokenReview) and allows to get the
    /// non-resource URL /metrics (SubjectAccessReview); 401 without or with an invalid token, 403 when not allowed.
    /// Off by default (`keyward dev`); on in the Helm chart. /healthz and /readyz stay open.
    #[arg(long, env = "KEYWARD_METRICS_AUTH")]
    pub metrics_auth: bool,
    /// A reconcile running longer than this fails /healthz (liveness), so Kubernetes restarts a stuck operator.
    /// Every reconcile is bounded far below the default (polls by their timeout, API calls by the client's).
    #[arg(long, env = "KEYWARD_STUCK_RECONCILE_AFTER", default_value = "10m", value_parser = parse_duration)]
    pub stuck_reconcile_after: std::time::Duration,
}

impl TenantArgs {
    /// The floors, for [`crate::operator::Options`]; refused when above the schema's maxima.
    pub fn minimums(&self) -> Result<crate::minimums::Minimums, String> {
        let m = crate::minimums::Minimums {
            usage_interval: self.min_usage_interval,
            rotation_interval: self.min_rotation_interval,
            grace_period: self.min_grace_period,
        };
        m.validate().map(|()| m)
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl RunArgs {
    /// The operator's options; `client` supplies the default namespace (for the Lease and the seal key) when
    /// `$POD_NAMESPACE` is not set.
    pub fn options(&self, client: &kube::Client) -> Result<Options, String> {
        let own = own_namespace(client);
        let leader_election = self.leader_elect.then(|| super::leader::LeaderConfig {
            lease_name: self.lease_name.clone(),
            lease_namespace: self.lease_namespace.clone().unwrap_or_else(|| own.clone()),
            duration: self.lease_duration,
            grace: self.lease_grace,
            identity: super::leader::identity(),
        });
        let namespaces = self.namespaces.iter().map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect();
        Ok(Options {
            namespaces,
            concurrency: self.concurrency,
            poll_concurrency: self.poll_concurrency,
            recheck_interval: self.recheck_interval,
            seal: Some(super::seal::SealConfig {
                namespace: self.seal_namespace.clone().unwrap_or(own),
                name: self.seal_secret.clone(),
            }),
            http_addr: Some(self.http_addr.clone()),
            leader_election,
            sources: self.sources.settings()?,
            minimums: self.tenant.minimums()?,
            metrics_auth: self.tenant.metrics_auth,
            stuck_reconcile_after: self.tenant.stuck_reconcile_after,
        })
    }
}

/// The operator's namespace: `$POD_NAMESPACE`, else the kubeconfig's.
fn own_namespace(client: &kube::Client) -> String {
    std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| client.default_namespace().to_string())
}

/// Parses a duration flag (`90s`, `10m`, `1h30m`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    crate::api::duration::parse(s).map_err(|e| e.to_string())
}
