//! Small user commands beside the operator: request a rotation, check a key's format offline; and the `keyward run`
//! flags of the tenant-safety settings (floors, metrics protection), grouped so `main` only passes them on.

use kube::api::{Api, Patch, PatchParams};

use crate::api::ApiKey;
use crate::api::apikey::ROTATE_ANNOTATION;

/// Sets `keyward.dev/rotate` on an ApiKey to a new value (the current time), which rotates it once.
pub async fn rotate(client: kube::Client, namespace: &str, name: &str) -> Result<String, kube::Error> {
    let value = jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({"metadata": {"annotations": {ROTATE_ANNOTATION: value}}});
    Api::<ApiKey>::namespaced(client, namespace).patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(value)
}

/// Checks a key's checksum (and prefix, if given). The error says why, without echoing the key.
pub fn verify_format(key: &str, prefix: Option<&str>) -> Result<(), String> {
    if let Some(p) = prefix
        && !key.starts_with(p)
    {
        return Err(format!("the key does not start with the prefix {p:?}"));
    }
    if crate::keys::verify_checksum(key) { Ok(()) } else { Err("the checksum does not match".to_string()) }
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

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    crate::api::duration::parse(s).map_err(|e| e.to_string())
}
