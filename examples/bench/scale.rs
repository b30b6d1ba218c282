//! The scale-reaction phase: a RateLimitPolicy scaling a Deployment as simulated traffic changes, timed from the
//! operator's own log lines (poll → scale write).

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Map, Value, json};

use keyward::api::ApiKey;
use keyward::devenv::traffic::TrafficSim;

use crate::operator::{Operator, RlEvent};
use crate::report::{percentile, r3};
use crate::writes::apply_keys;
use crate::{MANAGER, NS};

const METRIC: &str = "gateway_requests_total";
const SCALE_KEY: &str = "scale-key";
/// Traffic that needs 1 replica (10 ÷ (100 × 80%)) and 7 replicas (500 ÷ 80 = 6.25).
const LOW_RPS: f64 = 10.0;
const HIGH_RPS: f64 = 500.0;

/// Poll → scale write, from the operator's log lines of the same reconcile.
pub(crate) async fn scale(
    client: &kube::Client,
    op: &mut Operator,
    trials: usize,
) -> anyhow::Result<Map<String, Value>> {
    let sim = TrafficSim::start("127.0.0.1:0", METRIC, "api_key").await.context("traffic simulator")?;
    sim.set_rate(SCALE_KEY, LOW_RPS);
    let apply = PatchParams::apply(MANAGER).force();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "gateway"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "gateway"}},
            "template": {
                "metadata": {"labels": {"app": "gateway"}},
                "spec": {"containers": [{"name": "gw", "image": "registry.invalid/gateway:1"}]},
            },
        },
    });
    deployments.patch("gateway", &apply, &Patch::Apply(&deployment)).await.context("create the Deployment")?;
    let keys_api: Api<ApiKey> = Api::namespaced(client.clone(), NS);
    apply_keys(
        &keys_api,
        [SCALE_KEY.to_string()].into_iter(),
        "scale",
        json!({"rateLimitPolicyRef": {"name": "gateway-tier"}}),
        1,
    )
    .await?;
    let policies: Api<keyward::api::RateLimitPolicy> = Api::namespaced(client.clone(), NS);
    let policy = json!({
        "apiVersion": "keyward.dev/v1alpha1", "kind": "RateLimitPolicy", "metadata": {"name": "gateway-tier"},
        "spec": {
            "limit": {"requests": 1000, "period": "1s"},
            "usage": {"interval": "1s", "scrape": {"urls": [sim.url()], "metric": METRIC}},
            "scaling": {
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"},
                "minReplicas": 1, "maxReplicas": 10,
                "capacityPerReplica": {"requests": 100, "period": "1s"},
                "targetUtilization": 80,
                "scaleDown": {"stabilizationWindow": "0s"},
            },
        },
    });
    policies.patch("gateway-tier", &apply, &Patch::Apply(&policy)).await.context("create the RateLimitPolicy")?;
    say!("scale: RateLimitPolicy polls {} every 1s; waiting for steady polls at {LOW_RPS} req/s", sim.url());
    // Steady: three polls in a row without a scale write.
    let mut samples: Vec<Value> = Vec::new();
    let mut reactions: Vec<f64> = Vec::new();
    let mut last_poll: Option<Timestamp> = None;
    settle(op, &mut last_poll, &mut samples, &mut reactions, None).await?;
    for trial in 0..trials {
        for (rate, dir) in [(HIGH_RPS, "up"), (LOW_RPS, "down")] {
            // Change the traffic right after a poll: the next poll sees a whole interval of it.
            loop {
                if let RlEvent::Polled { ts, .. } = op.next_event(Duration::from_secs(15)).await? {
                    last_poll = Some(ts);
                    break;
                }
            }
            sim.set_rate(SCALE_KEY, rate);
            let changed = Instant::now();
            say!("scale: trial {}: traffic → {rate} req/s (expect a scale {dir})", trial + 1);
            settle(op, &mut last_poll, &mut samples, &mut reactions, Some(changed)).await?;
        }
    }
    sim.stop();
    let mut sorted = reactions.clone();
    sorted.sort_by(f64::total_cmp);
    ensure!(!sorted.is_empty(), "no scale write was seen");
    let mut s = Map::new();
    s.insert("scale_reaction_s".into(), json!(sorted.last().copied().map(r3)));
    s.insert("scale_reaction_p50_s".into(), json!(percentile(&sorted, 0.5).map(r3)));
    s.insert("scale_samples".into(), json!(samples));
    Ok(s)
}

/// Reads the operator's ratelimit log events until three polls in a row pass without a scale write, recording each
/// scale write with the poll before it. With `changed`, at least one scale write must come first.
async fn settle(
    op: &mut Operator,
    last_poll: &mut Option<Timestamp>,
    samples: &mut Vec<Value>,
    reactions: &mut Vec<f64>,
    changed: Option<Instant>,
) -> anyhow::Result<()> {
    let mut quiet = 0;
    let mut scaled = changed.is_none();
    let deadline = Instant::now() + Duration::from_secs(60);
    while quiet < 3 || !scaled {
        ensure!(Instant::now() < deadline, "no steady state within 60s (scaled: {scaled})");
        match op.next_event(Duration::from_secs(15)).await? {
            RlEvent::Polled { ts, .. } => {
                *last_poll = Some(ts);
                quiet += 1;
            }
            RlEvent::Scaled { ts, at, from, to } => {
                quiet = 0;
                scaled = true;
                let poll_to_write = last_poll.map(|p| ts.duration_since(p).as_secs_f64());
                let since_change = changed.map(|c| at.duration_since(c).as_secs_f64());
                say!(
                    "scale: {from} → {to} replicas; poll → write {:.3}s; traffic change → write seen {:.3}s",
                    poll_to_write.unwrap_or(f64::NAN),
                    since_change.unwrap_or(f64::NAN)
                );
                if let Some(p) = poll_to_write {
                    reactions.push(p);
                }
                samples.push(json!({
                    "from": from, "to": to,
                    "poll_to_write_s": poll_to_write.map(r3),
                    "traffic_change_to_write_seen_s": since_change.map(r3),
                }));
            }
        }
    }
    Ok(())
}
