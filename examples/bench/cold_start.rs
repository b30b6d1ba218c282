//! The cold start with the operator running: ApiKeys applied, then all Ready.

use std::time::{Duration, Instant};

use kube::api::Api;
use serde_json::json;

use keyward::api::ApiKey;

use crate::watch::Tracker;
use crate::writes::apply_keys;

/// Applies `n` ApiKeys while the operator runs; returns (first apply → all Ready, apply duration).
pub(crate) async fn cold_start(
    api: &Api<ApiKey>,
    n: usize,
    conc: usize,
    timeout: Duration,
) -> anyhow::Result<(f64, f64)> {
    let mut tracker = Tracker::start(api.clone(), "cold").await?;
    say!("cold start: applying {n} ApiKeys, {conc} in flight, with the operator running");
    let t0 = Instant::now();
    apply_keys(api, (0..n).map(|i| format!("cold-{i:05}")), "cold", json!({}), conc).await?;
    let apply_secs = t0.elapsed().as_secs_f64();
    say!("cold start: all {n} applied in {apply_secs:.2}s");
    let last = tracker.wait_ready(n, t0, timeout, "cold start").await?;
    Ok((last.duration_since(t0).as_secs_f64(), apply_secs))
}
