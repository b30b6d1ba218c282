//! Keyward's benchmark: the figures of issue 6, measured side by side in one run on the local control plane.
//!
//! ```text
//! cargo run --release --example bench -- --keys 1000 --idle-secs 30     # quick: a few minutes
//! cargo run --release --example bench -- --keys 10000                   # the issue's configuration
//! ```
//!
//! Progress goes to standard error; the last line on standard output is one JSON object with every figure. Phases:
//!
//! - **ceiling**: a plain kube client, no controller logic, does for N ApiKeys (created beforehand, untimed, in a
//!   namespace no operator watches) exactly the writes Keyward does per new key: one Secret create and one
//!   server-side-apply status write, the same objects built by the same pure functions, `--concurrency` at a time.
//!   Objects per second is the API server's write ceiling on this machine.
//! - **cold start, preapplied**: N ApiKeys exist, then `keyward run` starts: process start → all Ready.
//! - **cold start**: the operator runs; N more ApiKeys are applied (server-side apply, `--apply-concurrency` at a
//!   time): first apply → all Ready. `ratio` is its keys/s over the ceiling.
//! - **memory**: the operator's peak RSS (`VmHWM`) once N ApiKeys and their Secrets exist (`rss_mib`), and at the end.
//! - **herd**: `--herd-keys` ApiKeys with the same daily cron schedule (no jitter), due at one whole minute chosen
//!   so they are all issued first; per key the lag from the due time to the moment this program's watch sees the
//!   rotated Secret (so the watch delivery is included: an upper bound), p50/p99.
//! - **idle**: `keyward_api_writes_total` from the operator's /metrics, before and after `--idle-secs` with nothing due.
//! - **scale reaction**: a RateLimitPolicy scraping an in-process `TrafficSim` every 1 s scales a Deployment. The
//!   traffic is changed right after a poll, so the next poll crosses the threshold. Poll → write is the time between
//!   the operator's own log lines: the debug line `usage polled` (written the moment a poll's answer is in) and the
//!   info line `scaled` (written once the scale write has returned), both from the same reconcile.
//!
//! The operator is the real binary (`target/<profile>/keyward`, built first with cargo when run through cargo),
//! started as `keyward run --namespace bench --concurrency 16 --http-addr 127.0.0.1:0 --log-format json`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use futures::{StreamExt, TryStreamExt, stream};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, watch};

use keyward::api::{ApiKey, ApiKeySpec};
use keyward::apikey::book::{self, Book};
use keyward::apikey::{plan, secret, status};
use keyward::devenv::ControlPlane;
use keyward::devenv::traffic::TrafficSim;
use keyward::keys::{self, OsRandom};

/// The namespace the operator watches.
const NS: &str = "bench";
/// The ceiling's namespace: no operator watches it.
const CEILING_NS: &str = "bench-ceiling";
/// Label on every ApiKey (and, through `secretTemplate`, Secret) naming the phase that created it.
const PHASE: &str = "bench.keyward.dev/phase";
const MANAGER: &str = "keyward-bench";
const METRIC: &str = "gateway_requests_total";
const SCALE_KEY: &str = "scale-key";
/// Traffic that needs 1 replica (10 ÷ (100 × 80%)) and 7 replicas (500 ÷ 80 = 6.25).
const LOW_RPS: f64 = 10.0;
const HIGH_RPS: f64 = 500.0;

#[derive(Parser, Debug)]
#[command(about = "Benchmark Keyward against the local control plane; prints one JSON object last on stdout")]
struct Args {
    /// N: ApiKeys for the ceiling, each cold start and the memory figure.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// ApiKeys due at the same second in the herd phase (default: min(N, 1000)).
    #[arg(long)]
    herd_keys: Option<usize>,
    /// How long the operator is watched for writes with nothing due.
    #[arg(long, default_value_t = 300)]
    idle_secs: u64,
    /// Reconciles at once (`keyward run --concurrency`) and the ceiling client's writes in flight.
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
    /// ApiKey applies in flight when creating keys.
    #[arg(long, default_value_t = 16)]
    apply_concurrency: usize,
    /// Scale-up + scale-down rounds in the scale-reaction phase.
    #[arg(long, default_value_t = 3)]
    scale_trials: usize,
    #[arg(long)]
    skip_ceiling: bool,
    /// Skip the cold start with the ApiKeys applied before the operator starts.
    #[arg(long)]
    skip_preapplied: bool,
    #[arg(long)]
    skip_herd: bool,
    #[arg(long)]
    skip_idle: bool,
    #[arg(long)]
    skip_scale: bool,
    /// The `keyward` binary to run (default: next to this example's directory, built first when run by cargo).
    #[arg(long)]
    keyward_bin: Option<PathBuf>,
    /// Keep the temporary directory (control plane state, operator log) and print its path.
    #[arg(long)]
    keep_dir: bool,
    /// Longest wait for one phase (default 120 s + N/10 s).
    #[arg(long)]
    phase_timeout_secs: Option<u64>,
}

static START: OnceLock<Instant> = OnceLock::new();

macro_rules! say {
    ($($t:tt)*) => {{
        let message = format!($($t)*);
        eprintln!("[bench {:>7.1}s] {message}", START.get_or_init(Instant::now).elapsed().as_secs_f64())
    }};
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    START.get_or_init(Instant::now);
    let args = Args::parse();
    ensure!(args.keys > 0, "--keys must be at least 1");
    ensure!(args.concurrency > 0 && args.apply_concurrency > 0, "concurrency must be at least 1");
    let n = args.keys;
    let herd_n = args.herd_keys.unwrap_or(n.min(1000));
    let timeout = Duration::from_secs(args.phase_timeout_secs.unwrap_or(120 + n as u64 / 10));
    let conc = usize::from(args.concurrency);

    let mut out = Map::new();
    let mut errors: Vec<String> = Vec::new();
    let mut durations = Map::new();
    out.insert("keys".into(), json!(n));
    out.insert("herd_keys".into(), json!(if args.skip_herd { 0 } else { herd_n }));
    out.insert("concurrency".into(), json!(args.concurrency));
    out.insert("apply_concurrency".into(), json!(args.apply_concurrency));
    let machine = machine();
    say!("machine: {machine}");
    out.insert("machine".into(), machine);

    let bin = keyward_bin(&args)?;
    say!("operator binary: {}", bin.display());
    let tmp = tempfile::Builder::new().prefix("keyward-bench-").tempdir().context("temporary directory")?;
    let dir = tmp.path().to_path_buf();
    say!("starting the local control plane in {}", dir.display());
    let t = Instant::now();
    let cp = tokio::task::spawn_blocking({
        let dir = dir.join("cp");
        move || ControlPlane::start(&dir)
    })
    .await??;
    say!("control plane ready in {:.1}s", t.elapsed().as_secs_f64());
    let client = cp.client().await?;
    keyward::operator::crds::install(client.clone()).await?;
    for ns in [NS, CEILING_NS] {
        create_namespace(&client, ns).await?;
    }
    say!("CRDs installed; namespaces {NS} and {CEILING_NS} created");

    // --- ceiling -------------------------------------------------------------------------------------------------
    let mut ceiling_per_s = None;
    if !args.skip_ceiling {
        match ceiling(&client, n, conc).await {
            Ok((per_s, secs, setup)) => {
                say!("ceiling: {n} × (Secret create + status apply) in {secs:.2}s = {per_s:.1} objects/s");
                ceiling_per_s = Some(per_s);
                out.insert("ceiling_per_s".into(), json!(r3(per_s)));
                durations.insert("ceiling_s".into(), json!(r3(secs)));
                durations.insert("ceiling_setup_untimed_s".into(), json!(r3(setup)));
            }
            Err(e) => errors.push(format!("ceiling: {e:#}")),
        }
    }

    let keys_api: Api<ApiKey> = Api::namespaced(client.clone(), NS);

    // --- cold start, preapplied ----------------------------------------------------------------------------------
    let mut pre_tracker = None;
    if !args.skip_preapplied {
        let t = Instant::now();
        let tracker = Tracker::start(keys_api.clone(), "pre").await?;
        apply_keys(&keys_api, (0..n).map(|i| format!("pre-{i:05}")), "pre", json!({}), args.apply_concurrency).await?;
        say!("preapplied: {n} ApiKeys applied (no operator yet) in {:.1}s", t.elapsed().as_secs_f64());
        durations.insert("preapplied_apply_s".into(), json!(r3(t.elapsed().as_secs_f64())));
        pre_tracker = Some(tracker);
    }

    let mut op = Operator::start(&bin, cp.kubeconfig(), &dir.join("operator.log"), args.concurrency).await?;
    say!("operator pid {} serving on {} (log {})", op.pid, op.addr, op.log.display());

    if let Some(tracker) = pre_tracker.as_mut() {
        match tracker.wait_ready(n, op.spawned, timeout, "preapplied").await {
            Ok(last) => {
                let secs = last.duration_since(op.spawned).as_secs_f64();
                let per_s = n as f64 / secs;
                say!("preapplied cold start: {n} keys Ready {secs:.2}s after the operator started = {per_s:.1} keys/s");
                out.insert("cold_start_preapplied_per_s".into(), json!(r3(per_s)));
                out.insert("ratio_preapplied".into(), json!(ceiling_per_s.map(|c| r3(per_s / c))));
                durations.insert("cold_start_preapplied_s".into(), json!(r3(secs)));
            }
            Err(e) => errors.push(format!("preapplied cold start: {e:#}")),
        }
    }
    let synced = op.wait_synced(timeout).await;
    match synced {
        Ok(at) => {
            durations.insert("operator_caches_synced_s".into(), json!(r3(at.duration_since(op.spawned).as_secs_f64())));
        }
        Err(e) => errors.push(format!("operator sync: {e:#}")),
    }
    if !args.skip_preapplied {
        record_rss(&mut out, "rss", op.pid);
        say!("memory with {n} ApiKeys and Secrets: peak {} MiB", out["rss_mib"]);
    }

    // --- cold start with the operator running --------------------------------------------------------------------
    let mut cold_rate = None;
    match cold_start(&keys_api, n, args.apply_concurrency, timeout).await {
        Ok((secs, apply_secs)) => {
            let per_s = n as f64 / secs;
            say!(
                "cold start: {n} keys applied and Ready in {secs:.2}s = {per_s:.1} keys/s (apply took {apply_secs:.2}s)"
            );
            cold_rate = Some(per_s);
            out.insert("cold_start_per_s".into(), json!(r3(per_s)));
            out.insert("ratio".into(), json!(ceiling_per_s.map(|c| r3(per_s / c))));
            durations.insert("cold_start_s".into(), json!(r3(secs)));
            durations.insert("cold_start_apply_s".into(), json!(r3(apply_secs)));
        }
        Err(e) => errors.push(format!("cold start: {e:#}")),
    }
    if args.skip_preapplied {
        record_rss(&mut out, "rss", op.pid);
        say!("memory with {n} ApiKeys and Secrets: peak {} MiB", out["rss_mib"]);
    }

    // --- herd ----------------------------------------------------------------------------------------------------
    if !args.skip_herd && herd_n > 0 {
        match herd(&client, herd_n, cold_rate, args.apply_concurrency, timeout).await {
            Ok(h) => {
                say!("herd: {}", Value::Object(h.clone()));
                for (k, v) in h {
                    if ["herd_lead_s", "herd_issue_s", "herd_statuses_settled_s"].contains(&k.as_str()) {
                        durations.insert(k, v);
                    } else {
                        out.insert(k, v);
                    }
                }
            }
            Err(e) => errors.push(format!("herd: {e:#}")),
        }
    }

    // --- idle ----------------------------------------------------------------------------------------------------
    if !args.skip_idle {
        match idle(&op, Duration::from_secs(args.idle_secs)).await {
            Ok((total, by_kind)) => {
                say!("idle: {total} API writes in {}s ({by_kind:?})", args.idle_secs);
                out.insert("idle_writes".into(), json!(total));
                out.insert("idle_writes_by_kind".into(), json!(by_kind));
                durations.insert("idle_s".into(), json!(args.idle_secs));
            }
            Err(e) => errors.push(format!("idle: {e:#}")),
        }
    }

    // --- scale reaction ------------------------------------------------------------------------------------------
    if !args.skip_scale {
        match scale(&client, &mut op, args.scale_trials).await {
            Ok(s) => {
                say!("scale: {}", Value::Object(s.clone()));
                durations.insert("scale_poll_interval_s".into(), json!(1));
                out.extend(s);
            }
            Err(e) => errors.push(format!("scale reaction: {e:#}")),
        }
    }

    record_rss(&mut out, "rss_end", op.pid);
    out.insert("operator_warnings".into(), json!(op.state().warnings));
    out.insert("operator_warning_samples".into(), json!(op.state().warning_samples.iter().collect::<Vec<_>>()));
    op.stop().await;
    durations.insert("phase_timeout_s".into(), json!(timeout.as_secs()));
    durations.insert("total_s".into(), json!(r3(START.get_or_init(Instant::now).elapsed().as_secs_f64())));
    out.insert("durations".into(), Value::Object(durations));
    out.insert("targets_met".into(), targets(&out));
    for e in &errors {
        say!("ERROR {e}");
    }
    out.insert("errors".into(), json!(errors));

    drop(pre_tracker);
    say!("stopping the control plane");
    drop(cp);
    if args.keep_dir {
        let kept = tmp.keep();
        say!("kept {}", kept.display());
    }
    println!("{}", Value::Object(out));
    Ok(())
}

// --- phases ----------------------------------------------------------------------------------------------------------

/// The write ceiling: returns (objects/s, timed seconds, untimed setup seconds).
async fn ceiling(client: &kube::Client, n: usize, conc: usize) -> anyhow::Result<(f64, f64, f64)> {
    let apikeys: Api<ApiKey> = Api::namespaced(client.clone(), CEILING_NS);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), CEILING_NS);
    let t = Instant::now();
    say!("ceiling: creating {n} ApiKeys in {CEILING_NS} (untimed; no operator watches it)");
    let created: Vec<ApiKey> = stream::iter(0..n)
        .map(|i| {
            let apikeys = apikeys.clone();
            async move {
                let ak = ApiKey::new(&format!("ceil-{i:05}"), ApiKeySpec::default());
                let pp = PostParams::default();
                retry("create ApiKey", || apikeys.create(&pp, &ak)).await
            }
        })
        .buffer_unordered(conc)
        .try_collect()
        .await?;
    let setup = t.elapsed().as_secs_f64();
    say!("ceiling: {n} ApiKeys created in {setup:.1}s; timing {n} × (Secret create + status apply), {conc} in flight");
    let t0 = Instant::now();
    let pp = PostParams { field_manager: Some(MANAGER.into()), ..Default::default() };
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let progress = tokio::spawn({
        let done = done.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                say!("ceiling: {}/{n}", done.load(std::sync::atomic::Ordering::Relaxed));
            }
        }
    });
    let result: anyhow::Result<()> = stream::iter(created)
        .map(|ak| {
            let (apikeys, secrets, pp, done) = (apikeys.clone(), secrets.clone(), pp.clone(), done.clone());
            async move {
                let name = ak.name_any();
                // What Keyward computes for a new key, with no reads and no decisions.
                let key = keys::generate(&Default::default(), &mut OsRandom)?;
                let id = keys::key_id(&key);
                let now = Timestamp::from_second(Timestamp::now().as_second())?;
                let bk = Book { key_id: Some(id.clone()), rotated_at: Some(now), ..Book::default() };
                let material = secret::Material { current: Some(&key), previous: None };
                let s = secret::build(&ak, &name, &bk, &material, None);
                retry("create Secret", || secrets.create(&pp, &s)).await?;
                let st = status::desired(&ak, Some(&bk), &plan::issued_condition(Some(&id)), None, now);
                let body = json!({"apiVersion": "keyward.dev/v1alpha1", "kind": "ApiKey", "status": st});
                let apply = PatchParams::apply(MANAGER).force();
                let patch = Patch::Apply(&body);
                retry("apply ApiKey status", || apikeys.patch_status(&name, &apply, &patch)).await?;
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                anyhow::Ok(())
            }
        })
        .buffer_unordered(conc)
        .try_collect()
        .await;
    let secs = t0.elapsed().as_secs_f64();
    progress.abort();
    result?;
    Ok((n as f64 / secs, secs, setup))
}

/// Applies `n` ApiKeys while the operator runs; returns (first apply → all Ready, apply duration).
async fn cold_start(api: &Api<ApiKey>, n: usize, conc: usize, timeout: Duration) -> anyhow::Result<(f64, f64)> {
    let mut tracker = Tracker::start(api.clone(), "cold").await?;
    say!("cold start: applying {n} ApiKeys, {conc} in flight, with the operator running");
    let t0 = Instant::now();
    apply_keys(api, (0..n).map(|i| format!("cold-{i:05}")), "cold", json!({}), conc).await?;
    let apply_secs = t0.elapsed().as_secs_f64();
    say!("cold start: all {n} applied in {apply_secs:.2}s");
    let last = tracker.wait_ready(n, t0, timeout, "cold start").await?;
    Ok((last.duration_since(t0).as_secs_f64(), apply_secs))
}

/// Keys due at one instant: lag from the due time to the rotated Secret seen by a watch.
async fn herd(
    client: &kube::Client,
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
    h.insert("herd_lead_s".into(), json!(r3(lead)));
    h.insert("herd_issue_s".into(), json!(r3(issued_s)));
    h.insert("herd_statuses_settled_s".into(), json!(r3(status_settled_s)));
    Ok(h)
}

/// API writes the operator counts in its own metrics over `span`: (total, by controller/kind).
async fn idle(op: &Operator, span: Duration) -> anyhow::Result<(u64, BTreeMap<String, f64>)> {
    let before = api_writes(&op.addr).await?;
    say!("idle: watching the operator's API writes for {}s with nothing due", span.as_secs());
    tokio::time::sleep(span).await;
    let after = api_writes(&op.addr).await?;
    let mut by_kind = BTreeMap::new();
    for (labels, v) in &after {
        let d = v - before.get(labels).copied().unwrap_or(0.0);
        if d != 0.0 {
            by_kind.insert(labels.clone(), d);
        }
    }
    // Counters: whole, non-negative differences.
    Ok((by_kind.values().map(|d| d.round().max(0.0) as u64).sum(), by_kind))
}

/// Poll → scale write, from the operator's log lines of the same reconcile.
async fn scale(client: &kube::Client, op: &mut Operator, trials: usize) -> anyhow::Result<Map<String, Value>> {
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

// --- the operator process ------------------------------------------------------------------------------------------

/// What the operator's log has said so far.
#[derive(Default)]
struct OpState {
    addr: Option<String>,
    synced: Option<Instant>,
    warnings: u64,
    warning_samples: VecDeque<String>,
    exited: bool,
}

/// RateLimitPolicy log events, timestamped by the operator.
enum RlEvent {
    Polled { ts: Timestamp },
    Scaled { ts: Timestamp, at: Instant, from: i64, to: i64 },
}

struct Operator {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    pid: u32,
    addr: String,
    spawned: Instant,
    log: PathBuf,
    state: Arc<Mutex<OpState>>,
    events: mpsc::UnboundedReceiver<RlEvent>,
}

impl Operator {
    async fn start(bin: &Path, kubeconfig: &Path, log: &Path, concurrency: u16) -> anyhow::Result<Operator> {
        let spawned = Instant::now();
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(["run", "--exit-on-stdin-close", "--http-addr", "127.0.0.1:0", "--namespace", NS])
            .args(["--concurrency", &concurrency.to_string(), "--log-format", "json"])
            .args(["--log", "info,keyward::ratelimit=debug"])
            .env("KUBECONFIG", kubeconfig)
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        for var in
            ["KEYWARD_LEADER_ELECT", "KEYWARD_NAMESPACE", "KEYWARD_CONCURRENCY", "KEYWARD_LOG", "KEYWARD_HTTP_ADDR"]
        {
            cmd.env_remove(var);
        }
        let mut child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("operator pid")?;
        let stdin = child.stdin.take();
        let stderr = child.stderr.take().context("operator stderr")?;
        let state = Arc::new(Mutex::new(OpState::default()));
        let (tx, events) = mpsc::unbounded_channel();
        let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        tokio::spawn(read_log(stderr, std::io::LineWriter::new(file), state.clone(), tx));
        let mut op =
            Operator { child, stdin, pid, addr: String::new(), spawned, log: log.to_path_buf(), state, events };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let addr = op.state().addr.clone();
            if let Some(addr) = addr {
                op.addr = addr;
                return Ok(op);
            }
            if op.state().exited || Instant::now() > deadline {
                bail!("the operator did not start serving; its log:\n{}", tail(&op.log, 30));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, OpState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn wait_synced(&self, timeout: Duration) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = self.state().synced {
                return Ok(at);
            }
            ensure!(!self.state().exited, "the operator exited; its log:\n{}", tail(&self.log, 30));
            ensure!(Instant::now() < deadline, "the operator's caches did not sync");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn next_event(&mut self, timeout: Duration) -> anyhow::Result<RlEvent> {
        match tokio::time::timeout(timeout, self.events.recv()).await {
            Ok(Some(e)) => Ok(e),
            Ok(None) => bail!("the operator's log ended; its log:\n{}", tail(&self.log, 30)),
            Err(_) => bail!("no RateLimitPolicy poll within {timeout:?}; log tail:\n{}", tail(&self.log, 20)),
        }
    }

    /// Closes its standard input (its signal to stop), then kills it if it has not stopped after 15 s.
    async fn stop(&mut self) {
        self.stdin.take();
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

async fn read_log(
    stderr: tokio::process::ChildStderr,
    mut file: std::io::LineWriter<std::fs::File>,
    state: Arc<Mutex<OpState>>,
    tx: mpsc::UnboundedSender<RlEvent>,
) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let at = Instant::now();
        let _ = writeln!(file, "{line}");
        let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
        let ts = v["timestamp"].as_str().and_then(|s| s.parse::<Timestamp>().ok());
        let message = v["fields"]["message"].as_str().unwrap_or_default();
        let level = v["level"].as_str().unwrap_or_default();
        let mut st = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if level == "WARN" || level == "ERROR" {
            st.warnings += 1;
            if st.warning_samples.len() < 5 {
                let detail = v["fields"]["error"].as_str().or(v["fields"]["reason"].as_str()).unwrap_or_default();
                st.warning_samples.push_back(format!("{level} {message}: {detail}"));
            }
        }
        match (message, ts) {
            ("serving /healthz, /readyz and /metrics", _) => st.addr = v["fields"]["addr"].as_str().map(str::to_owned),
            ("caches synced: ready", _) => st.synced = Some(at),
            ("usage polled", Some(ts)) => {
                let _ = tx.send(RlEvent::Polled { ts });
            }
            ("scaled", Some(ts)) => {
                let from = v["fields"]["from"].as_i64().unwrap_or(-1);
                let to = v["fields"]["to"].as_i64().unwrap_or(-1);
                let _ = tx.send(RlEvent::Scaled { ts, at, from, to });
            }
            _ => {}
        }
    }
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).exited = true;
}

/// `keyward_api_writes_total` by label set, from the operator's /metrics.
async fn api_writes(addr: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = reqwest::get(format!("http://{addr}/metrics")).await?.error_for_status()?.text().await?;
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("keyward_api_writes_total") else { continue };
        let (labels, value) = rest.rsplit_once(' ').context("metrics line")?;
        m.insert(labels.trim().to_owned(), value.trim().parse::<f64>().context("metrics value")?);
    }
    Ok(m)
}

fn record_rss(out: &mut Map<String, Value>, prefix: &str, pid: u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
    };
    out.insert(format!("{prefix}_mib"), json!(field("VmHWM:").map(|kb| r3(kb / 1024.0))));
    out.insert(format!("{prefix}_now_mib"), json!(field("VmRSS:").map(|kb| r3(kb / 1024.0))));
}

// --- watching ApiKeys and Secrets ------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Counts {
    /// Keys with Ready=True.
    ready: usize,
    /// Keys whose status says they rotated at least once.
    rotated: usize,
    /// When the last key turned Ready.
    last_ready: Option<Instant>,
    /// Ready=False reasons, for the progress line.
    not_ready: BTreeMap<String, usize>,
}

/// Watches the ApiKeys of one phase.
struct Tracker {
    rx: watch::Receiver<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl Tracker {
    /// Starts the watch and waits for its first list, so no transition is missed.
    async fn start(api: Api<ApiKey>, phase: &str) -> anyhow::Result<Tracker> {
        let (tx, rx) = watch::channel(Counts::default());
        let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
        let cfg = watcher::Config::default().labels(&format!("{PHASE}={phase}"));
        let task = tokio::spawn(async move {
            let mut synced_tx = Some(synced_tx);
            let mut keys: HashMap<String, (bool, bool, Option<String>)> = HashMap::new();
            let mut events = std::pin::pin!(watcher(api, cfg));
            while let Some(ev) = events.next().await {
                let obj = match ev {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => o,
                    Ok(watcher::Event::InitDone) => {
                        if let Some(s) = synced_tx.take() {
                            let _ = s.send(());
                        }
                        continue;
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        say!("watch error (retrying): {e}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                let st = obj.status.clone().unwrap_or_default();
                let cond = st.conditions.iter().find(|c| c.type_ == "Ready");
                let ready = cond.is_some_and(|c| c.status == "True");
                let reason = cond.filter(|c| c.status != "True").map(|c| c.reason.clone());
                let rotated = st.rotation_count.unwrap_or(0) > 0;
                let now = (ready, rotated, reason);
                let before = keys.insert(obj.name_any(), now.clone());
                if before.as_ref() == Some(&now) {
                    continue;
                }
                tx.send_modify(|c| {
                    if let Some((r, rot, reason)) = &before {
                        c.ready -= usize::from(*r);
                        c.rotated -= usize::from(*rot);
                        if let Some(reason) = reason {
                            *c.not_ready.entry(reason.clone()).or_default() -= 1;
                        }
                    }
                    c.ready += usize::from(now.0);
                    c.rotated += usize::from(now.1);
                    if let Some(reason) = &now.2 {
                        *c.not_ready.entry(reason.clone()).or_default() += 1;
                    }
                    c.not_ready.retain(|_, v| *v > 0);
                    if now.0 && !before.as_ref().is_some_and(|b| b.0) {
                        c.last_ready = Some(Instant::now());
                    }
                });
            }
        });
        tokio::time::timeout(Duration::from_secs(60), synced_rx)
            .await
            .context("the ApiKey watch did not list in 60s")?
            .context("the ApiKey watch stopped")?;
        Ok(Tracker { rx, task })
    }

    fn state(&self) -> Counts {
        self.rx.borrow().clone()
    }

    /// Waits until `n` keys are Ready; returns when the last one turned Ready.
    async fn wait_ready(&mut self, n: usize, t0: Instant, timeout: Duration, what: &str) -> anyhow::Result<Instant> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut report = tokio::time::interval(Duration::from_secs(5));
        report.tick().await;
        loop {
            {
                let c = self.rx.borrow_and_update();
                if c.ready >= n {
                    return c.last_ready.context("no key turned Ready");
                }
            }
            tokio::select! {
                changed = self.rx.changed() => changed.context("the ApiKey watch stopped")?,
                _ = report.tick() => {
                    let c = self.state();
                    say!("{what}: {}/{n} Ready after {:.1}s; not ready: {:?}", c.ready, t0.elapsed().as_secs_f64(), c.not_ready);
                }
                () = tokio::time::sleep_until(deadline) => bail!("{what}: only {}/{n} Ready after {timeout:?}", self.state().ready),
            }
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Per herd Secret: when this program first saw it rotated, and its `rotated-at` annotation.
type Seen = HashMap<String, (Timestamp, Option<Timestamp>)>;

/// When this program first saw each herd Secret with a rotated key, and its `rotated-at` annotation.
struct Rotations {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Rotations {
    async fn start(api: Api<PartialObjectMeta<Secret>>) -> anyhow::Result<Rotations> {
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
        let cfg = watcher::Config::default().labels(&format!("{PHASE}=herd"));
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                let mut synced_tx = Some(synced_tx);
                let mut events = std::pin::pin!(watcher(api, cfg));
                while let Some(ev) = events.next().await {
                    let at = Timestamp::now();
                    let obj = match ev {
                        Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => o,
                        Ok(watcher::Event::InitDone) => {
                            if let Some(s) = synced_tx.take() {
                                let _ = s.send(());
                            }
                            continue;
                        }
                        Ok(_) => continue,
                        Err(e) => {
                            say!("secret watch error (retrying): {e}");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                    };
                    let a = obj.annotations();
                    let count = a.get(book::ROTATION_COUNT).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
                    if count < 1 {
                        continue;
                    }
                    let stamped = a.get(book::ROTATED_AT).and_then(|v| v.parse::<Timestamp>().ok());
                    let mut seen = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    seen.entry(obj.name_any()).or_insert((at, stamped));
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(60), synced_rx)
            .await
            .context("the Secret watch did not list in 60s")?
            .context("the Secret watch stopped")?;
        Ok(Rotations { seen, task })
    }

    fn count(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or(0)
    }

    fn seen(&self) -> Seen {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for Rotations {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// --- helpers -------------------------------------------------------------------------------------------------------

/// Server-side applies one ApiKey per name, `conc` at a time, labelled with `phase`.
async fn apply_keys(
    api: &Api<ApiKey>,
    names: impl Iterator<Item = String>,
    phase: &str,
    spec: Value,
    conc: usize,
) -> anyhow::Result<()> {
    let pp = PatchParams::apply(MANAGER).force();
    stream::iter(names)
        .map(|name| {
            let body = json!({
                "apiVersion": "keyward.dev/v1alpha1", "kind": "ApiKey",
                "metadata": {"name": name, "labels": {PHASE: phase}},
                "spec": spec,
            });
            let (api, pp) = (api.clone(), pp.clone());
            async move {
                let patch = Patch::Apply(&body);
                retry("apply ApiKey", || api.patch(&name, &pp, &patch)).await.map(|_| ())
            }
        })
        .buffer_unordered(conc)
        .try_collect()
        .await
}

/// Retries server errors, 429 and transport errors with backoff (5 attempts).
async fn retry<T, F, Fut>(what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                let retryable = match &e {
                    kube::Error::Api(s) => s.code == 429 || s.code >= 500,
                    _ => true,
                };
                if !retryable || attempt >= 5 {
                    return Err(anyhow::Error::new(e).context(what.to_owned()));
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
        attempt += 1;
    }
}

async fn create_namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&ns))
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(())
}

/// The operator binary: `--keyward-bin`, or `keyward` in this example's profile directory, built first when this
/// runs under cargo so that the figures are for the current source.
fn keyward_bin(args: &Args) -> anyhow::Result<PathBuf> {
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

fn machine() -> Value {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu =
        cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|v| v.trim_start_matches([' ', '\t', ':']));
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_mib": mem_kb.map(|kb| (kb / 1024.0).round()),
        "cpu": cpu,
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
    })
}

/// Which of the issue's targets the figures meet (null when not measured).
fn targets(out: &Map<String, Value>) -> Value {
    let f = |k: &str| out.get(k).and_then(Value::as_f64);
    json!({
        "ratio_ge_0_8": f("ratio").map(|v| v >= 0.8),
        "herd_p99_le_2s": f("herd_p99_s").map(|v| v <= 2.0),
        "rss_le_64mib": f("rss_mib").map(|v| v <= 64.0),
        "idle_writes_0": f("idle_writes").map(|v| v == 0.0),
        "scale_reaction_le_1s": f("scale_reaction_s").map(|v| v <= 1.0),
    })
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
