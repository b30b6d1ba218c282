//! The herd phase: many keys due at the same instant, and how late each rotation is seen.

use std::time::{Duration, Instant};

use anyhow::ensure;
use jiff::{SignedDuration, Timestamp};
use kube::api::Api;
use serde_json::{Map, Value, json};

use keyward::api::ApiKey;

use crate::idle::writes_between;
use crate::operator::{api_requests, api_writes, requests_per_key};
use crate::report::{percentile, r3};
use crate::watch::{Rotations, Tracker};
use crate::writes::apply_keys;
use crate::{NS, PHASE};

/// Keys due at one instant: lag from the due time to the rotated Secret seen by a watch.
pub(crate) async fn herd(
    client: &kube::Client,
    addr: &str,
    n: usize,
    cold_rate: Option<f64>,
    conc: usize,
    timeout: Duration,
) -> anyhow::Result<Map<String, Value>> {
    let api: Api<ApiKey> = Api::namespaced(client.clone(), NS);
    // Long enough to apply and issue every key first, rounded up to a whole minute (cron's resolution).
    let issue_estimate = n as f64 / cold_rate.unwrap_or(50.0).max(1.0);
    let lead = (2.0 * issue_estimate + 15.0).max(30.0);
    let earliest = Timestamp::now().as_second() + lead.ceil() as i64;
    let due = Timestamp::from_second((earliest + 59).div_euclid(60) * 60)?;
    let zoned = due.to_zoned(jiff::tz::TimeZone::UTC);
    let schedule = format!("{} {} * * *", zoned.minute(), zoned.hour());
    say!(
        "herd: {n} keys on schedule {schedule:?} UTC, no jitter: due at {due} ({:.0}s from now)",
        due.duration_since(Timestamp::now()).as_secs_f64()
    );

    let mut tracker = Tracker::start(api.clone(), "herd").await?;
    let rotations = Rotations::start(Api::namespaced(client.clone(), NS)).await?;
    let spec = json!({
        "rotation": {"schedule": schedule, "timeZone": "UTC"},
        "secretTemplate": {"labels": {PHASE: "herd"}},
    });
    let t0 = Instant::now();
    apply_keys(&api, (0..n).map(|i| format!("herd-{i:05}")), "herd", spec, conc).await?;
    let until_due = Duration::try_from(due.duration_since(Timestamp::now()) - SignedDuration::from_secs(1))
        .unwrap_or(Duration::ZERO);
    let ready_in_time = tracker.wait_ready(n, t0, until_due, "herd issue").await;
    let ready_before_due = tracker.state().ready;
    let issued_s = t0.elapsed().as_secs_f64();
    match &ready_in_time {
        Ok(_) => say!("herd: all {n} keys issued in {issued_s:.1}s; waiting for {due}"),
        Err(_) => say!("herd: only {ready_before_due}/{n} keys were issued before the due time"),
    }
    ensure!(ready_before_due > 0, "no herd key was issued before its due time");
    ensure!(rotations.count() == 0, "keys rotated before the due time");
    // The operator's requests from a second before the due time (the issue's writes are done) until every status
    // is written: what the rotations cost.
    let until_due = Duration::try_from(due.duration_since(Timestamp::now()) - SignedDuration::from_secs(1))
        .unwrap_or(Duration::ZERO);
    tokio::time::sleep(until_due).await;
    let requests_before = api_requests(addr).await?;
    let writes_before = api_writes(addr).await?;

    let deadline = Instant::now()
        + Duration::try_from(due.duration_since(Timestamp::now())).unwrap_or(Duration::ZERO)
        + timeout.min(Duration::from_secs(300));
    let mut next_report = Instant::now() + Duration::from_secs(5);
    loop {
        let rotated = rotations.count();
        if rotated >= ready_before_due {
            break;
        }
        if Instant::now() > deadline {
            say!("herd: timed out with {rotated}/{ready_before_due} rotated");
            break;
        }
        if Instant::now() > next_report && Timestamp::now() > due {
            say!("herd: {rotated}/{ready_before_due} rotated");
            next_report = Instant::now() + Duration::from_secs(5);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = rotations.seen();
    let mut lags: Vec<f64> = seen.values().map(|(at, _)| at.duration_since(due).as_secs_f64()).collect();
    let mut stamped: Vec<f64> =
        seen.values().filter_map(|(_, r)| r.map(|r| r.duration_since(due).as_secs_f64())).collect();
    lags.sort_by(f64::total_cmp);
    stamped.sort_by(f64::total_cmp);
    // Settle: every rotated key's status written, so that the idle phase starts with nothing in flight.
    let rotated = seen.len();
    let settle_deadline = Instant::now() + Duration::from_secs(60);
    while tracker.state().rotated < rotated && Instant::now() < settle_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status_settled_s = Instant::now().duration_since(t0).as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (requests, by_verb) = requests_per_key(&requests_before, &api_requests(addr).await?, rotated);
    let writes: Map<String, Value> = writes_between(&writes_before, &api_writes(addr).await?)
        .into_iter()
        .map(|(k, v)| (k, json!(r3(v / rotated.max(1) as f64))))
        .collect();

    let mut h = Map::new();
    h.insert("herd_p50_s".into(), json!(percentile(&lags, 0.50).map(r3)));
    h.insert("herd_p99_s".into(), json!(percentile(&lags, 0.99).map(r3)));
    h.insert("herd_max_s".into(), json!(lags.last().copied().map(r3)));
    h.insert("herd_min_s".into(), json!(lags.first().copied().map(r3)));
    h.insert("herd_rotated".into(), json!(rotated));
    h.insert("herd_issued_before_due".into(), json!(ready_before_due));
    h.insert("herd_due".into(), json!(due.to_string()));
    h.insert("herd_schedule".into(), json!(schedule));
    // Whole seconds (the annotation's precision): when the rotating reconcile began, relative to the due time.
    h.insert("herd_rotated_at_annotation_p50_s".into(), json!(percentile(&stamped, 0.50).map(r3)));
    h.insert("herd_rotated_at_annotation_p99_s".into(), json!(percentile(&stamped, 0.99).map(r3)));
    h.insert("herd_requests_per_rotation".into(), json!(requests));
    h.insert("herd_requests_per_rotation_by_verb".into(), json!(by_verb));
    h.insert("herd_writes_per_rotation".into(), Value::Object(writes));
    h.insert("herd_lead_s".into(), json!(r3(lead)));
    h.insert("herd_issue_s".into(), json!(r3(issued_s)));
    h.insert("herd_statuses_settled_s".into(), json!(r3(status_settled_s)));
    Ok(h)
}
