//! The operator under test as a child process (`keyward run`), and what its JSON log and its /metrics say.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use jiff::Timestamp;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::NS;

/// What the operator's log has said so far.
#[derive(Default)]
pub(crate) struct OpState {
    pub(crate) addr: Option<String>,
    pub(crate) synced: Option<Instant>,
    pub(crate) warnings: u64,
    pub(crate) warning_samples: VecDeque<String>,
    pub(crate) exited: bool,
}

/// RateLimitPolicy log events, timestamped by the operator.
pub(crate) enum RlEvent {
    Polled { ts: Timestamp },
    Scaled { ts: Timestamp, at: Instant, from: i64, to: i64 },
}

pub(crate) struct Operator {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    pub(crate) pid: u32,
    pub(crate) addr: String,
    pub(crate) spawned: Instant,
    pub(crate) log: PathBuf,
    state: Arc<Mutex<OpState>>,
    events: mpsc::UnboundedReceiver<RlEvent>,
}

impl Operator {
    pub(crate) async fn start(bin: &Path, kubeconfig: &Path, log: &Path, concurrency: u16) -> anyhow::Result<Operator> {
        let spawned = Instant::now();
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(["run", "--exit-on-stdin-close", "--http-addr", "127.0.0.1:0", "--namespace", NS])
            .args(["--concurrency", &concurrency.to_string(), "--log-format", "json"])
            .args(["--log", "info,keyward::ratelimit=debug"])
            .args(["--seal-namespace", crate::SEAL_NS, "--seal-secret", crate::SEAL_SECRET])
            .env("KUBECONFIG", kubeconfig)
            .env("NO_COLOR", "1")
            // The benchmark's simulated gateways listen on 127.0.0.1.
            .env("KEYWARD_ALLOW_LOOPBACK_SOURCES", "true")
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

    pub(crate) fn state(&self) -> std::sync::MutexGuard<'_, OpState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) async fn wait_synced(&self, timeout: Duration) -> anyhow::Result<Instant> {
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

    pub(crate) async fn next_event(&mut self, timeout: Duration) -> anyhow::Result<RlEvent> {
        match tokio::time::timeout(timeout, self.events.recv()).await {
            Ok(Some(e)) => Ok(e),
            Ok(None) => bail!("the operator's log ended; its log:\n{}", tail(&self.log, 30)),
            Err(_) => bail!("no RateLimitPolicy poll within {timeout:?}; log tail:\n{}", tail(&self.log, 20)),
        }
    }

    /// Closes its standard input (its signal to stop), then kills it if it has not stopped after 15 s.
    pub(crate) async fn stop(&mut self) {
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
pub(crate) async fn api_writes(addr: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = reqwest::get(format!("http://{addr}/metrics")).await?.error_for_status()?.text().await?;
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("keyward_api_writes_total") else { continue };
        let (labels, value) = rest.rsplit_once(' ').context("metrics line")?;
        m.insert(labels.trim().to_owned(), value.trim().parse::<f64>().context("metrics value")?);
    }
    Ok(m)
}

/// `keyward_api_requests_total` by verb, from the operator's /metrics.
pub(crate) async fn api_requests(addr: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = reqwest::get(format!("http://{addr}/metrics")).await?.error_for_status()?.text().await?;
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("keyward_api_requests_total{verb=\"") else { continue };
        let (verb, value) = rest.split_once("\"}").context("metrics line")?;
        m.insert(verb.to_owned(), value.trim().parse::<f64>().context("metrics value")?);
    }
    Ok(m)
}

/// Requests per key between two readings of [`api_requests`]: (total without watches, by verb).
pub(crate) fn requests_per_key(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    n: usize,
) -> (f64, BTreeMap<String, f64>) {
    let mut by_verb = BTreeMap::new();
    for (verb, v) in after {
        let d = v - before.get(verb).copied().unwrap_or(0.0);
        if d > 0.0 {
            by_verb.insert(verb.clone(), crate::report::r3(d / n.max(1) as f64));
        }
    }
    let total = by_verb.iter().filter(|(v, _)| v.as_str() != "watch").map(|(_, x)| x).sum();
    (crate::report::r3(total), by_verb)
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
