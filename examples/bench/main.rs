//! Keyward's benchmark: the figures of issues 6 and 17, measured side by side in one run on the local control plane,
//! with external-secrets as the peer.
//!
//! ```text
//! cargo run --release --example bench -- --keys 1000 --idle-secs 30     # quick: a few minutes
//! cargo run --release --example bench -- --keys 10000 --out docs/bench/bench-10000.json
//! cargo run --release --example bench -- --render-readme docs/bench     # the README's tables from the records
//! ```
//!
//! Progress goes to standard error; the last line on standard output is one JSON object with every figure. Phases:
//!
//! - **ceiling**: a plain kube client, no controller logic, does for N ApiKeys (created beforehand, untimed, in a
//!   namespace no operator watches) exactly the writes Keyward does per new key: one Secret create and one
//!   server-side-apply status write, the same objects built by the same pure functions, `--concurrency` at a time.
//!   Objects per second is the API server's write ceiling on this machine.
//! - **herd floor**: then `--herd-keys` of those Secrets updated with a new key each, nothing else, `--concurrency`
//!   at a time: `herd_secret_floor_s`, the soonest a herd's last Secret can be live on this API server.
//! - **cold start, preapplied**: N ApiKeys exist, then `keyward run` starts: process start → all Ready.
//! - **cold start**: the operator runs; N more ApiKeys are applied (server-side apply, `--apply-concurrency` at a
//!   time): first apply → all Ready. `ratio` is its keys/s over the ceiling.
//! - **memory**: the operator's peak RSS (`VmHWM`) once N ApiKeys and their Secrets exist (`rss_mib`), and at the end.
//! - **cost per key**: over the cold start, the operator's CPU (`/proc/<pid>/stat`), API writes
//!   (`keyward_api_writes_total`) and API requests (`keyward_api_requests_total`, watches aside) per key.
//! - **herd**: `--herd-keys` ApiKeys with the same daily cron schedule (no jitter), due at one whole minute chosen
//!   so they are all issued first; per key the lag from the due time to the moment this program's watch sees the
//!   rotated Secret (so the watch delivery is included: an upper bound), p50/p99, against the herd floor; and the
//!   operator's API requests and writes per rotation.
//! - **idle**: `keyward_api_writes_total` from the operator's /metrics, before and after `--idle-secs` with nothing due.
//! - **scale reaction**: a RateLimitPolicy scraping an in-process `TrafficSim` every 1 s scales a Deployment. The
//!   traffic is changed right after a poll, so the next poll crosses the threshold. Poll → write is the time between
//!   the operator's own log lines: the debug line `usage polled` (written the moment a poll's answer is in) and the
//!   info line `scaled` (written once the scale write has returned), both from the same reconcile.
//! - **peer**: once Keyward has stopped, external-secrets on the same control plane, the same N and concurrency:
//!   cold start, peak RSS, CPU, writes and requests per key, and a herd (see `peer`).
//!
//! `--out FILE` writes the JSON, with the machine, the commit and the load average at start and end, to a file;
//! `docs/bench/` holds the runs the README's tables are rendered from (`table`).
//!
//! The operator is the real binary (`target/<profile>/keyward`, built first with cargo when run through cargo),
//! started as `keyward run --namespace bench --concurrency 16 --http-addr 127.0.0.1:0 --log-format json`.
//!
//! This file runs the phases in order and assembles the JSON object. One module per phase (`ceiling`, `cold_start`,
//! `herd`, `idle`, `scale`, `peer`); `operator` runs `keyward run` and reads its log and /metrics; `watch` times ApiKeys and
//! Secrets from outside; `writes` holds this program's own API writes; `report` the machine, memory and targets;
//! `cli` the flags.

/// A progress line on standard error, stamped with the seconds since this program started. Defined before the
/// modules, so that they can use it too.
macro_rules! say {
    ($($t:tt)*) => {{
        let message = format!($($t)*);
        eprintln!(
            "[bench {:>7.1}s] {message}",
            $crate::START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64()
        )
    }};
}

mod ceiling;
mod cli;
mod cold_start;
mod herd;
mod idle;
mod operator;
mod peer;
mod report;
mod scale;
mod table;
mod watch;
mod writes;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use clap::Parser;
use kube::api::Api;
use serde_json::{Map, Value, json};

use keyward::api::ApiKey;
use keyward::devenv::ControlPlane;

use ceiling::{ceiling, secret_floor};
use cli::{Args, keyward_bin};
use cold_start::cold_start;
use herd::herd;
use idle::idle;
use operator::{Operator, api_requests, api_writes, requests_per_key};
use report::{cpu_seconds, loadavg, machine, r3, record_rss, targets};
use scale::scale;
use watch::Tracker;
use writes::{apply_keys, create_namespace};

/// The namespace the operator watches.
const NS: &str = "bench";
/// The ceiling's namespace: no operator watches it.
const CEILING_NS: &str = "bench-ceiling";
/// Label on every ApiKey (and, through `secretTemplate`, Secret) naming the phase that created it.
const PHASE: &str = "bench.keyward.dev/phase";
const MANAGER: &str = "keyward-bench";
/// Where the operator keeps its seal key (`keyward run --seal-namespace`, `--seal-secret`).
const SEAL_NS: &str = "default";
const SEAL_SECRET: &str = "keyward-seal";

/// When this program started: the time base of its progress lines.
static START: OnceLock<Instant> = OnceLock::new();

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    START.get_or_init(Instant::now);
    let args = Args::parse();
    if let Some(dir) = &args.render_readme {
        return render_readme(dir);
    }
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
    let mut machine = machine();
    machine["loadavg_start"] = loadavg();
    say!("machine: {machine}");
    out.insert("commit".into(), json!(report::commit()));
    out.insert("started_at".into(), json!(jiff::Timestamp::now().to_string()));
    out.insert("argv".into(), json!(std::env::args().skip(1).collect::<Vec<_>>()));

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
    // NB: the operator's seal key, made here before the ceiling writes sealed Secrets: an operator that finds sealed
    // Secrets but no seal key refuses to start (the key would have been lost).
    let seal = keyward::operator::seal::SealConfig { namespace: SEAL_NS.into(), name: SEAL_SECRET.into() };
    let sealer = std::sync::Arc::new(keyward::operator::seal::load_or_create(&client, &seal).await?);
    say!("CRDs installed; namespaces {NS} and {CEILING_NS} created; seal key {SEAL_NS}/{SEAL_SECRET} ready");

    // --- ceiling -------------------------------------------------------------------------------------------------
    let mut ceiling_per_s = None;
    if !args.skip_ceiling {
        match ceiling(&client, sealer.clone(), n, conc).await {
            Ok((per_s, secs, setup)) => {
                say!("ceiling: {n} × (Secret create + status apply) in {secs:.2}s = {per_s:.1} objects/s");
                ceiling_per_s = Some(per_s);
                out.insert("ceiling_per_s".into(), json!(r3(per_s)));
                durations.insert("ceiling_s".into(), json!(r3(secs)));
                durations.insert("ceiling_setup_untimed_s".into(), json!(r3(setup)));
            }
            Err(e) => errors.push(format!("ceiling: {e:#}")),
        }
        // The herd's floor: its Secret updates alone, by a plain client, at the same concurrency.
        if !args.skip_herd && herd_n > 0 {
            match secret_floor(&client, herd_n.min(n), conc).await {
                Ok((secs, per_s)) => {
                    say!("herd floor: {} Secret updates alone in {secs:.2}s = {per_s:.1}/s", herd_n.min(n));
                    out.insert("herd_secret_floor_s".into(), json!(r3(secs * herd_n as f64 / herd_n.min(n) as f64)));
                    out.insert("secret_updates_per_s".into(), json!(r3(per_s)));
                }
                Err(e) => errors.push(format!("herd floor: {e:#}")),
            }
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
                // From process start: the initial lists and watches, then every key's issue.
                let cpu = cpu_seconds(op.pid);
                out.insert("preapplied_cpu_ms_per_key".into(), json!(cpu.map(|c| r3(c * 1000.0 / n as f64))));
                if let Ok(after) = api_requests(&op.addr).await {
                    let (total, by_verb) = requests_per_key(&Default::default(), &after, n);
                    out.insert("preapplied_requests_per_key".into(), json!(total));
                    out.insert("preapplied_requests_per_key_by_verb".into(), json!(by_verb));
                }
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
    let writes_before = api_writes(&op.addr).await.ok();
    let requests_before = api_requests(&op.addr).await.ok();
    let cpu_before = cpu_seconds(op.pid);
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
            // The operator's API writes per new key (the ceiling does 2: Secret + status), by kind.
            if let (Some(before), Ok(after)) = (writes_before.as_ref(), api_writes(&op.addr).await) {
                let per_key: Map<String, Value> = idle::writes_between(before, &after)
                    .into_iter()
                    .map(|(k, v)| (k, json!(r3(v / n as f64))))
                    .collect();
                say!("cold start: API writes per key {per_key:?}");
                let total: f64 = per_key.values().filter_map(Value::as_f64).sum();
                out.insert("writes_per_key".into(), json!(r3(total)));
                out.insert("cold_start_writes_per_key".into(), Value::Object(per_key));
            }
            if let (Some(before), Ok(after)) = (requests_before.as_ref(), api_requests(&op.addr).await) {
                let (total, by_verb) = requests_per_key(before, &after, n);
                say!("cold start: {total} API requests per key {by_verb:?}");
                out.insert("requests_per_key".into(), json!(total));
                out.insert("cold_start_requests_per_key_by_verb".into(), json!(by_verb));
            }
            let cpu = cpu_seconds(op.pid).zip(cpu_before).map(|(a, b)| a - b);
            out.insert("cpu_ms_per_key".into(), json!(cpu.map(|c| r3(c * 1000.0 / n as f64))));
        }
        Err(e) => errors.push(format!("cold start: {e:#}")),
    }
    if args.skip_preapplied {
        record_rss(&mut out, "rss", op.pid);
        say!("memory with {n} ApiKeys and Secrets: peak {} MiB", out["rss_mib"]);
    }

    // --- herd ----------------------------------------------------------------------------------------------------
    if !args.skip_herd && herd_n > 0 {
        match herd(&client, &op.addr, herd_n, cold_rate, args.apply_concurrency, timeout).await {
            Ok(h) => {
                say!("herd: {}", Value::Object(h.clone()));
                // What the API server allows at best: the herd's writes at the ceiling's rate (its last rotation
                // cannot land sooner), so herd_p99_s reads against this rather than against a fixed 2 s alone.
                if let Some(c) = ceiling_per_s {
                    out.insert("herd_floor_s".into(), json!(r3(herd_n as f64 / c)));
                }
                let floor = out.get("herd_secret_floor_s").and_then(Value::as_f64);
                let p99 = h.get("herd_p99_s").and_then(Value::as_f64);
                out.insert("herd_p99_vs_secret_floor".into(), json!(p99.zip(floor).map(|(p, f)| r3(p / f))));
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
    out.insert("operator_cpu_s".into(), json!(cpu_seconds(op.pid).map(r3)));
    out.insert("operator_warnings".into(), json!(op.state().warnings));
    out.insert("operator_warning_samples".into(), json!(op.state().warning_samples.iter().collect::<Vec<_>>()));
    op.stop().await;

    // --- peer: external-secrets, once Keyward has stopped ---------------------------------------------------------
    if !args.skip_peer {
        let peer_herd = if args.skip_herd { 0 } else { herd_n };
        let t = Instant::now();
        match peer::peer(&cp, &client, &dir, (n, peer_herd), (args.concurrency, args.apply_concurrency), timeout).await
        {
            Ok(p) => {
                say!("peer: {}", Value::Object(p.clone()));
                let ours = out.get("cold_start_per_s").and_then(Value::as_f64);
                let theirs = p.get("peer_cold_start_per_s").and_then(Value::as_f64);
                out.insert("vs_peer_cold_start".into(), json!(ours.zip(theirs).map(|(a, b)| r3(a / b))));
                out.extend(p);
            }
            Err(e) => errors.push(format!("peer: {e:#}")),
        }
        durations.insert("peer_s".into(), json!(r3(t.elapsed().as_secs_f64())));
    }
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
    machine["loadavg_end"] = loadavg();
    out.insert("machine".into(), machine);
    let out = Value::Object(out);
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_string_pretty(&out)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        say!("wrote {}", path.display());
    }
    println!("{out}");
    Ok(())
}

/// `--render-readme DIR`: the README's benchmark tables from the runs recorded in `DIR`.
fn render_readme(dir: &std::path::Path) -> anyhow::Result<()> {
    let runs = table::load_runs(dir).with_context(|| format!("reading {}", dir.display()))?;
    ensure!(!runs.is_empty(), "no bench-*.json in {}", dir.display());
    let readme = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let text = std::fs::read_to_string(&readme)?;
    let section = table::section(&runs, table::PEER_N);
    let new = table::replace_section(&text, &section).context("the README has no bench-table markers")?;
    std::fs::write(&readme, new)?;
    say!("wrote the benchmark tables of {} runs into {}", runs.len(), readme.display());
    Ok(())
}
