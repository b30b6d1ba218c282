//! The peer phase: external-secrets, what a platform team would run instead of Keyward for a generated key, on the
//! same control plane with the same N and concurrency, after Keyward has stopped (one controller at a time).
//!
//! Each key is an `ExternalSecret` whose data comes from a `Password` generator (`generatorRef`) with a
//! `refreshInterval` of one hour: the controller writes the generated value into a Secret it owns and regenerates it
//! once the interval has passed since `status.refreshTime`.
//!
//! - **cold start**: N ExternalSecrets applied (`--apply-concurrency` at a time) while the controller runs: first
//!   apply → all `Ready=True` (the Secret written).
//! - **memory, CPU**: the controller's peak RSS (`VmHWM`) and user+system CPU seconds over the cold start.
//! - **requests per key**: `rest_client_requests_total` (client-go's, by HTTP method) from its /metrics, before and
//!   after; writes are POST, PUT, PATCH and DELETE.
//! - **herd**: `--herd-keys` more ExternalSecrets, synced; then each one's `status.refreshTime` is set to one
//!   instant an hour before a chosen whole second, so every key is due for regeneration at that second. Per key the
//!   lag from the due time to the moment this program's watch sees its Secret with new data (the controller's
//!   `reconcile.external-secrets.io/data-hash` annotation changed), as in Keyward's herd.
//!
//! The controller runs with `--concurrent` = `--concurrency`, scoped to its namespace, its cluster-wide and push
//! reconcilers off, and its client's own rate limit (`--client-qps 50` by default) lifted, as Keyward has none:
//! otherwise the figure would be its default limiter's, not the controller's.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use futures::{StreamExt, TryStreamExt, stream};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use keyward::devenv::{ControlPlane, external_secrets};

use crate::report::{cpu_seconds, percentile, r3, record_rss};
use crate::writes::{apply_each, create_namespace, retry};
use crate::{MANAGER, PHASE};

/// The namespace the peer controller watches.
pub(crate) const PEER_NS: &str = "bench-peer";
/// The annotation external-secrets sets on each Secret it writes: a hash of the data.
const DATA_HASH: &str = "reconcile.external-secrets.io/data-hash";
const GENERATOR: &str = "pw";

/// Runs the peer phase; returns its figures (`peer_*`).
pub(crate) async fn peer(
    cp: &ControlPlane,
    client: &kube::Client,
    dir: &Path,
    (n, herd_n): (usize, usize),
    (conc, apply_conc): (u16, usize),
    timeout: Duration,
) -> anyhow::Result<Map<String, Value>> {
    let mut out = Map::new();
    let bin = tokio::task::spawn_blocking(external_secrets::binary).await??;
    let version = external_secrets::version().unwrap_or_default();
    say!("peer: external-secrets {version} ({})", bin.display());
    out.insert("peer".into(), json!(format!("external-secrets {version}")));
    install(cp, client).await?;
    let mut eso = Eso::start(&bin, cp.kubeconfig(), &dir.join("external-secrets.log"), conc).await?;
    say!("peer: controller pid {} serving metrics on {}", eso.pid, eso.addr);
    let result = phases(client, &eso, (n, herd_n), apply_conc, timeout, &mut out).await;
    record_rss(&mut out, "peer_rss_end", eso.pid);
    eso.stop().await;
    result?;
    Ok(out)
}

async fn phases(
    client: &kube::Client,
    eso: &Eso,
    (n, herd_n): (usize, usize),
    apply_conc: usize,
    timeout: Duration,
    out: &mut Map<String, Value>,
) -> anyhow::Result<()> {
    let es = es_api(client);
    let before = eso.requests().await?;
    let cpu_before = cpu_seconds(eso.pid);
    let mut tracker = ReadyCount::start(es.clone(), "peer-cold").await?;
    say!("peer cold start: applying {n} ExternalSecrets, {apply_conc} in flight");
    let t0 = Instant::now();
    apply_es(&es, (0..n).map(|i| format!("cold-{i:05}")), "peer-cold", apply_conc).await?;
    say!("peer cold start: all {n} applied in {:.1}s", t0.elapsed().as_secs_f64());
    let last = tracker.wait(n, t0, timeout, "peer cold start").await?;
    let secs = last.duration_since(t0).as_secs_f64();
    let per_s = n as f64 / secs;
    say!("peer cold start: {n} ExternalSecrets Ready in {secs:.2}s = {per_s:.1} keys/s");
    out.insert("peer_cold_start_per_s".into(), json!(r3(per_s)));
    out.insert("peer_cold_start_s".into(), json!(r3(secs)));
    let cpu = cpu_seconds(eso.pid).zip(cpu_before).map(|(a, b)| a - b);
    out.insert("peer_cpu_ms_per_key".into(), json!(cpu.map(|c| r3(c * 1000.0 / n as f64))));
    record_rss(out, "peer_rss", eso.pid);
    // NB: a moment for the event broadcaster (client-go records events asynchronously) to finish its writes.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = eso.requests().await?;
    let (writes, requests, by_method) = per_key(&before, &after, n);
    say!("peer cold start: {writes:.2} writes and {requests:.2} requests per key ({by_method:?})");
    out.insert("peer_writes_per_key".into(), json!(r3(writes)));
    out.insert("peer_requests_per_key".into(), json!(r3(requests)));
    out.insert("peer_requests_per_key_by_method".into(), json!(by_method));
    drop(tracker);
    if herd_n > 0 {
        herd(client, eso, herd_n, apply_conc, timeout, out).await?;
    }
    Ok(())
}

/// The herd: `n` ExternalSecrets due for regeneration at the same second.
async fn herd(
    client: &kube::Client,
    eso: &Eso,
    n: usize,
    conc: usize,
    timeout: Duration,
    out: &mut Map<String, Value>,
) -> anyhow::Result<()> {
    let es = es_api(client);
    let mut tracker = ReadyCount::start(es.clone(), "peer-herd").await?;
    let t0 = Instant::now();
    apply_es(&es, (0..n).map(|i| format!("herd-{i:05}")), "peer-herd", conc).await?;
    tracker.wait(n, t0, timeout, "peer herd issue").await?;
    drop(tracker);
    let hashes = Hashes::start(Api::namespaced(client.clone(), PEER_NS)).await?;
    // Due at a whole second far enough ahead to set every refreshTime first.
    let lead = (n as f64 / 50.0 + 10.0).ceil() as i64;
    let due = Timestamp::from_second(Timestamp::now().as_second() + lead)?;
    let refreshed_at = Timestamp::from_second(due.as_second() - 3600)?;
    say!(
        "peer herd: {n} keys synced in {:.1}s; all due at {due} (refreshTime {refreshed_at})",
        t0.elapsed().as_secs_f64()
    );
    let before = eso.requests().await?;
    set_refresh_time(&es, n, refreshed_at, conc).await?;
    ensure!(Timestamp::now() < due, "setting refreshTime took past the due time; raise the lead");
    let deadline = Instant::now() + Duration::try_from(due.duration_since(Timestamp::now()))? + timeout;
    loop {
        let changed = hashes.changed();
        if changed >= n {
            break;
        }
        if Instant::now() > deadline {
            say!("peer herd: timed out with {changed}/{n} regenerated");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lags: Vec<f64> = hashes.seen().into_iter().map(|at| at.duration_since(due).as_secs_f64()).collect();
    lags.sort_by(f64::total_cmp);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = eso.requests().await?;
    let (writes, requests, _) = per_key(&before, &after, lags.len().max(1));
    out.insert("peer_herd_p50_s".into(), json!(percentile(&lags, 0.50).map(r3)));
    out.insert("peer_herd_p99_s".into(), json!(percentile(&lags, 0.99).map(r3)));
    out.insert("peer_herd_max_s".into(), json!(lags.last().copied().map(r3)));
    out.insert("peer_herd_rotated".into(), json!(lags.len()));
    // The controller's own requests only (its client's metrics): not this program's refreshTime patches.
    out.insert("peer_herd_writes_per_rotation".into(), json!(r3(writes)));
    out.insert("peer_herd_requests_per_rotation".into(), json!(r3(requests)));
    Ok(())
}

fn es_api(client: &kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("external-secrets.io", "v1", "ExternalSecret");
    Api::namespaced_with(client.clone(), PEER_NS, &ApiResource::from_gvk(&gvk))
}

/// The CRDs from the module, the namespace, and the `Password` generator every ExternalSecret refers to.
async fn install(cp: &ControlPlane, client: &kube::Client) -> anyhow::Result<()> {
    let files = tokio::task::spawn_blocking(external_secrets::crd_files).await??;
    ensure!(!files.is_empty(), "no CRDs in the external-secrets module");
    for f in &files {
        let args = [OsStr::new("apply"), OsStr::new("--server-side"), OsStr::new("-f"), f.as_os_str()];
        let out = cp.run_kubectl(args)?;
        ensure!(out.status.success(), "kubectl apply {}: {}", f.display(), String::from_utf8_lossy(&out.stderr));
    }
    let out = cp.run_kubectl(["wait", "--for=condition=Established", "--timeout=60s", "crd", "--all"])?;
    ensure!(out.status.success(), "CRDs not established: {}", String::from_utf8_lossy(&out.stderr));
    create_namespace(client, PEER_NS).await?;
    let gvk = GroupVersionKind::gvk("generators.external-secrets.io", "v1alpha1", "Password");
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), PEER_NS, &ApiResource::from_gvk(&gvk));
    // 32 characters, letters and digits: about the entropy of Keyward's default key.
    let body = json!({
        "apiVersion": "generators.external-secrets.io/v1alpha1", "kind": "Password",
        "metadata": {"name": GENERATOR},
        "spec": {"length": 32, "digits": 8, "symbols": 0, "noUpper": false, "allowRepeat": true},
    });
    api.patch(GENERATOR, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body)).await?;
    say!("peer: {} CRDs installed; namespace {PEER_NS} and Password generator {GENERATOR} ready", files.len());
    Ok(())
}

/// Server-side applies one ExternalSecret per name, `conc` at a time, labelled with `phase`.
async fn apply_es(
    api: &Api<DynamicObject>,
    names: impl Iterator<Item = String>,
    phase: &str,
    conc: usize,
) -> anyhow::Result<()> {
    let body = |name: &str| {
        json!({
            "apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
            "metadata": {"name": name, "labels": {PHASE: phase}},
            "spec": {
                "refreshInterval": "1h",
                "target": {"name": name, "creationPolicy": "Owner"},
                "dataFrom": [{"sourceRef": {"generatorRef": {
                    "apiVersion": "generators.external-secrets.io/v1alpha1", "kind": "Password", "name": GENERATOR,
                }}}],
            },
        })
    };
    apply_each(api, names, body, conc).await
}

/// Sets `status.refreshTime` of the herd's ExternalSecrets to `at` (a merge patch of the status subresource).
async fn set_refresh_time(api: &Api<DynamicObject>, n: usize, at: Timestamp, conc: usize) -> anyhow::Result<()> {
    let body = json!({"status": {"refreshTime": at.to_string()}});
    stream::iter((0..n).map(|i| format!("herd-{i:05}")))
        .map(|name| {
            let (api, body) = (api.clone(), body.clone());
            async move {
                let (patch, pp) = (Patch::Merge(&body), PatchParams::default());
                retry("set refreshTime", || api.patch_status(&name, &pp, &patch)).await.map(|_| ())
            }
        })
        .buffer_unordered(conc)
        .try_collect()
        .await
}

/// (writes per key, requests per key, requests per key by method) between two readings.
fn per_key(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    n: usize,
) -> (f64, f64, BTreeMap<String, f64>) {
    let mut by_method = BTreeMap::new();
    for (method, v) in after {
        let d = v - before.get(method).copied().unwrap_or(0.0);
        if d > 0.0 {
            by_method.insert(method.clone(), r3(d / n as f64));
        }
    }
    let writes = ["POST", "PUT", "PATCH", "DELETE"].iter().filter_map(|m| by_method.get(*m)).sum();
    let requests = by_method.values().sum();
    (writes, requests, by_method)
}

/// Counts the ExternalSecrets of one phase with `Ready=True`, and when the last one turned Ready.
struct ReadyCount {
    rx: watch::Receiver<(usize, Option<Instant>)>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadyCount {
    async fn start(api: Api<DynamicObject>, phase: &str) -> anyhow::Result<ReadyCount> {
        let (tx, rx) = watch::channel((0, None));
        let mut ready: HashMap<String, bool> = HashMap::new();
        let task = crate::watch::watch_phase(api, phase, "ExternalSecret", move |o: DynamicObject, _| {
            let is_ready = o.data["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
            let name = o.metadata.name.clone().unwrap_or_default();
            let was = ready.insert(name, is_ready).unwrap_or(false);
            if is_ready != was {
                tx.send_modify(|(count, last)| {
                    if is_ready {
                        *count += 1;
                        *last = Some(Instant::now());
                    } else {
                        *count -= 1;
                    }
                });
            }
        })
        .await?;
        Ok(ReadyCount { rx, task })
    }

    async fn wait(&mut self, n: usize, t0: Instant, timeout: Duration, what: &str) -> anyhow::Result<Instant> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut report = tokio::time::interval(Duration::from_secs(5));
        report.tick().await;
        loop {
            let (count, last) = *self.rx.borrow_and_update();
            if count >= n {
                return last.context("no ExternalSecret turned Ready");
            }
            tokio::select! {
                changed = self.rx.changed() => changed.context("the ExternalSecret watch stopped")?,
                _ = report.tick() => say!("{what}: {count}/{n} Ready after {:.1}s", t0.elapsed().as_secs_f64()),
                () = tokio::time::sleep_until(deadline) => bail!("{what}: only {count}/{n} Ready after {timeout:?}"),
            }
        }
    }
}

impl Drop for ReadyCount {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The herd Secrets' data hashes as first listed, and when each was first seen with another one.
struct Hashes {
    changed_at: Arc<Mutex<HashMap<String, Timestamp>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Hashes {
    async fn start(api: Api<PartialObjectMeta<Secret>>) -> anyhow::Result<Hashes> {
        let changed_at: Arc<Mutex<HashMap<String, Timestamp>>> = Arc::default();
        let mut first: HashMap<String, String> = HashMap::new();
        let cfg = watcher::Config::default().labels("reconcile.external-secrets.io/managed=true");
        let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
        let seen = changed_at.clone();
        let task = tokio::spawn(async move {
            let mut synced_tx = Some(synced_tx);
            let mut events = std::pin::pin!(watcher(api, cfg));
            while let Some(ev) = events.next().await {
                let at = Timestamp::now();
                let o = match ev {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => o,
                    Ok(watcher::Event::InitDone) => {
                        if let Some(s) = synced_tx.take() {
                            let _ = s.send(());
                        }
                        continue;
                    }
                    _ => continue,
                };
                let name = o.metadata.name.clone().unwrap_or_default();
                let Some(hash) = o.metadata.annotations.as_ref().and_then(|a| a.get(DATA_HASH)).cloned() else {
                    continue;
                };
                if !name.starts_with("herd-") {
                    continue;
                }
                match first.get(&name) {
                    None => {
                        first.insert(name, hash);
                    }
                    Some(h) if *h != hash => {
                        if let Ok(mut s) = seen.lock() {
                            s.entry(name).or_insert(at);
                        }
                    }
                    Some(_) => {}
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(60), synced_rx).await.context("the Secret watch did not list")??;
        Ok(Hashes { changed_at, task })
    }

    fn changed(&self) -> usize {
        self.changed_at.lock().map(|s| s.len()).unwrap_or(0)
    }

    fn seen(&self) -> Vec<Timestamp> {
        self.changed_at.lock().map(|s| s.values().copied().collect()).unwrap_or_default()
    }
}

impl Drop for Hashes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The external-secrets controller as a child process.
struct Eso {
    child: tokio::process::Child,
    pid: u32,
    addr: String,
}

impl Eso {
    async fn start(bin: &Path, kubeconfig: &Path, log: &Path, conc: u16) -> anyhow::Result<Eso> {
        let addr = free_addr()?;
        let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(["--metrics-addr", &addr, "--concurrent", &conc.to_string(), "--namespace", PEER_NS])
            .args(["--enable-leader-election=false", "--enable-cluster-store-reconciler=false"])
            .args(["--enable-cluster-external-secret-reconciler=false", "--enable-push-secret-reconciler=false"])
            .args([
                "--enable-cluster-push-secret-reconciler=false",
                "--client-qps",
                "100000",
                "--client-burst",
                "100000",
            ])
            .env("KUBECONFIG", kubeconfig)
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true);
        let child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("external-secrets pid")?;
        let mut eso = Eso { child, pid, addr };
        let deadline = Instant::now() + Duration::from_secs(60);
        while eso.requests().await.is_err() {
            if let Ok(Some(status)) = eso.child.try_wait() {
                bail!("external-secrets exited ({status}); its log is {}", log.display());
            }
            ensure!(Instant::now() < deadline, "external-secrets did not serve metrics; its log is {}", log.display());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(eso)
    }

    /// `rest_client_requests_total` summed by method.
    async fn requests(&self) -> anyhow::Result<BTreeMap<String, f64>> {
        let text = reqwest::get(format!("http://{}/metrics", self.addr)).await?.error_for_status()?.text().await?;
        let mut m = BTreeMap::new();
        for line in text.lines().filter(|l| l.starts_with("rest_client_requests_total{")) {
            let (labels, value) = line.rsplit_once(' ').context("metrics line")?;
            let method = labels.split("method=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("?");
            *m.entry(method.to_owned()).or_default() += value.trim().parse::<f64>().context("metrics value")?;
        }
        Ok(m)
    }

    async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// A loopback address with a port free right now.
fn free_addr() -> anyhow::Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.to_string())
}
