//! A real Prometheus server as a child process, for the tests of usage read from Prometheus: it scrapes the given
//! targets every second as job "gateway" and answers instant queries over its HTTP API.
//!
//! The process is killed (and reaped) when the `Prometheus` is dropped, also when the test panics. A test binary that
//! is itself killed cannot run `Drop`, so each server has a watchdog `sh` whose standard input is a pipe from the
//! test process: when the test process exits, however it exits, the pipe closes and the watchdog kills the server.
//!
//! Blocking by design (std `TcpStream`, HTTP/1.0): a query takes milliseconds and Prometheus never waits on the test.
//! In a `#[tokio::test]` whose runtime also serves the scraped target, use `wait_for_async`, which sleeps without
//! blocking the runtime between polls, so that the scrapes are answered meanwhile.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// One element of an instant vector: its labels (with `__name__` when the series has one) and its value.
pub type Sample = (BTreeMap<String, String>, f64);

/// The bound on becoming ready; a cold start on a busy 2-core machine takes a second or two.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The bound on one HTTP exchange with Prometheus.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `wait_for` queries; the scrape and evaluation intervals are 1 s.
const POLL: Duration = Duration::from_millis(250);

/// A running Prometheus with its own TSDB, config and log in a temporary directory under CARGO_TARGET_TMPDIR.
pub struct Prometheus {
    port: u16,
    proc: Option<Proc>,
    log: PathBuf,
    // Dropped after `Drop::drop` has killed the process, so the directory is removed once nothing writes to it.
    _dir: TempDir,
}

/// The server and its watchdog.
struct Proc {
    child: Child,
    watchdog: Child,
    _watchdog_stdin: ChildStdin,
}

impl Proc {
    /// Kills the watchdog first, while the server's PID is still ours (unreaped), so that it can never kill a reused
    /// PID; then kills and reaps the server.
    fn kill(&mut self) {
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts `prometheus` on 127.0.0.1 with a free port, a fresh TSDB, scrape and evaluation intervals of 1 s, scraping
    /// each of `targets` ("127.0.0.1:PORT") at /metrics as job "gateway"; returns once GET /-/ready answers 200.
    /// Panics with the end of its log if it exits or is not ready within 60 s.
    pub fn start(targets: &[String]) -> Prometheus {
        Prometheus::start_jobs(&[("gateway", targets)], None)
    }

    /// [`Prometheus::start`] with `--web.config.file` holding `web_config` (TLS, basic auth): readiness is then read
    /// from its log (its HTTP API wants what the config asks for), and `address()` still says http.
    pub fn start_with(targets: &[String], web_config: Option<&str>) -> Prometheus {
        Prometheus::start_jobs(&[("gateway", targets)], web_config)
    }

    /// [`Prometheus::start_with`] with several scrape jobs: each (job name, its "127.0.0.1:PORT" targets).
    pub fn start_jobs(jobs: &[(&str, &[String])], web_config: Option<&str>) -> Prometheus {
        let bin = binary();
        let dir = tempfile::Builder::new()
            .prefix("prometheus-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("temp dir for prometheus");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, config_yaml(jobs)).expect("write prometheus.yml");
        let log = dir.path().join("prometheus.log");
        let web = web_config.map(|yaml| {
            let path = dir.path().join("web.yml");
            std::fs::write(&path, yaml).expect("write web.yml");
            path
        });
        let started = Instant::now();
        // The free port is only free when we look: another process may bind it before Prometheus does. That shows as
        // Prometheus exiting with "address already in use", and is retried with another port.
        for attempt in 1..=3 {
            let port = free_port();
            let data = dir.path().join(format!("data-{attempt}"));
            let mut proc = spawn(&bin, (&config, web.as_deref()), &data, port, &log);
            let ready = if web.is_some() { wait_ready_in_log(&mut proc, &log) } else { wait_ready(&mut proc, port) };
            match ready {
                Ok(()) => {
                    let p = Prometheus { port, proc: Some(proc), log, _dir: dir };
                    eprintln!("prometheus ready at {} after {:?}", p.address(), started.elapsed());
                    return p;
                }
                Err(e) => {
                    proc.kill();
                    let tail = tail(&log, 40);
                    if attempt < 3 && tail.contains("address already in use") {
                        continue;
                    }
                    panic!("prometheus ({}) did not become ready: {e}\n--- end of its log ---\n{tail}", bin.display());
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// "http://127.0.0.1:PORT".
    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The file that holds Prometheus's standard output and error.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Runs an instant query (/api/v1/query at the current time); a vector result as (labels, value) pairs, a scalar
    /// as one pair with no labels. Panics if Prometheus does not answer or rejects the query.
    pub fn query(&self, promql: &str) -> Vec<Sample> {
        self.try_query(promql).unwrap_or_else(|e| panic!("query {promql:?} failed: {e}"))
    }

    /// `query`, with the failure (connection refused, bad PromQL, ...) as an error instead of a panic.
    pub fn try_query(&self, promql: &str) -> Result<Vec<Sample>, String> {
        let (status, body) = http_get(self.port, &format!("/api/v1/query?query={}", urlencode(promql)))?;
        let json: Value = serde_json::from_str(&body).map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
        if status != 200 || json["status"] != "success" {
            return Err(format!("HTTP {status}: {body}"));
        }
        parse_result(&json["data"]).ok_or_else(|| format!("unexpected result: {body}"))
    }

    /// Polls `query` until `pred` holds on its result, which it returns; panics after `timeout` with the last result
    /// and the scrape targets' health.
    pub fn wait_for(&self, promql: &str, timeout: Duration, pred: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.check(promql, &pred) {
                Ok(result) => return result,
                Err(last) if Instant::now() >= deadline => self.timed_out(promql, timeout, &last),
                Err(_) => std::thread::sleep(POLL),
            }
        }
    }

    /// `wait_for` for async tests: it sleeps with tokio between polls instead of blocking the runtime's thread.
    pub async fn wait_for_async(
        &self,
        promql: &str,
        timeout: Duration,
        pred: impl Fn(&[Sample]) -> bool,
    ) -> Vec<Sample> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.check(promql, &pred) {
                Ok(result) => return result,
                Err(last) if Instant::now() >= deadline => self.timed_out(promql, timeout, &last),
                Err(_) => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// Kills the server now (SIGKILL) and reaps it; its address then refuses connections. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill();
        }
    }

    /// The result if `pred` holds on it, else a description of the last result.
    fn check(&self, promql: &str, pred: &impl Fn(&[Sample]) -> bool) -> Result<Vec<Sample>, String> {
        match self.try_query(promql) {
            Ok(result) if pred(&result) => Ok(result),
            Ok(result) => Err(format!("{result:?}")),
            Err(e) => Err(format!("error: {e}")),
        }
    }

    fn timed_out(&self, promql: &str, timeout: Duration, last: &str) -> ! {
        panic!(
            "timed out after {timeout:?} waiting on {promql:?}; last result: {last}\ntargets: {}\n--- end of the \
             prometheus log ---\n{}",
            self.targets(),
            tail(&self.log, 20)
        )
    }

    /// Each scrape target's URL, health and last error, for failure messages.
    fn targets(&self) -> String {
        let Ok((_, body)) = http_get(self.port, "/api/v1/targets") else { return "(unavailable)".into() };
        let Ok(json) = serde_json::from_str::<Value>(&body) else { return body };
        let targets = json["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
        let lines: Vec<String> =
            targets.iter().map(|t| format!("{} {} {}", t["scrapeUrl"], t["health"], t["lastError"])).collect();
        if lines.is_empty() { "(none)".into() } else { lines.join("; ") }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The Prometheus server built from its Go module (`tests/prometheus`) and cached on first use; KEYWARD_PROMETHEUS
/// overrides. Panics with the reason (e.g. how to install Go) when it can be neither found nor built.
pub fn binary() -> PathBuf {
    keyward::devenv::prometheus::binary().unwrap_or_else(|e| panic!("cannot build or find prometheus: {e}"))
}

/// promtool, from the same build as [`binary`]; KEYWARD_PROMTOOL overrides.
pub fn promtool() -> PathBuf {
    keyward::devenv::prometheus::promtool().unwrap_or_else(|e| panic!("cannot build or find promtool: {e}"))
}

fn config_yaml(jobs: &[(&str, &[String])]) -> String {
    let mut yaml = "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"
        .to_string();
    for (job, targets) in jobs {
        // JSON strings are YAML strings: the names and targets need no escaping of their own.
        let (job, targets) =
            (serde_json::to_string(job).expect("job"), serde_json::to_string(targets).expect("targets"));
        yaml += &format!(
            "  - job_name: {job}\n    metrics_path: /metrics\n    static_configs:\n      - targets: {targets}\n"
        );
    }
    yaml
}

/// A port that was free a moment ago: bound on 127.0.0.1:0, read, released. Another process may take it before
/// Prometheus binds it; `start` retries when that happens.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

fn spawn(bin: &Path, (config, web): (&Path, Option<&Path>), data: &Path, port: u16, log: &Path) -> Proc {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("prometheus log file");
    let mut command = Command::new(bin);
    if let Some(web) = web {
        command.arg(format!("--web.config.file={}", web.display()));
    }
    let child = command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--storage.tsdb.retention.time=1h")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("clone log file"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    // The watchdog waits for end-of-file on its stdin, which comes when the test process exits (the pipe's write end
    // is close-on-exec, so no other child holds it).
    let mut watchdog = Command::new("sh")
        .arg("-c")
        .arg(format!("read -r _; kill -KILL {} 2>/dev/null", child.id()))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the watchdog sh");
    let stdin = watchdog.stdin.take().expect("watchdog stdin");
    Proc { child, watchdog, _watchdog_stdin: stdin }
}

/// Waits until the log says the web server is ready (for a server behind TLS and auth).
fn wait_ready_in_log(proc: &mut Proc, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = proc.child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("it exited ({status})"));
        }
        if std::fs::read_to_string(log).unwrap_or_default().contains("Server is ready to receive web requests") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("its log did not say it was ready within {READY_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls /-/ready until 200; an error if the process exits or READY_TIMEOUT passes.
fn wait_ready(proc: &mut Proc, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = proc.child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("it exited ({status})"));
        }
        let last = match http_get(port, "/-/ready") {
            Ok((200, _)) => return Ok(()),
            Ok((status, body)) => format!("HTTP {status}: {}", body.trim()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!("not ready after {READY_TIMEOUT:?}; last answer to /-/ready: {last}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GET `path` from 127.0.0.1:`port` over HTTP/1.0 (Connection: close, so the body ends with the connection).
fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let addr = ("127.0.0.1", port).to_socket_addrs().map_err(|e| e.to_string())?.next().ok_or("no address")?;
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT)).map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| format!("read from {addr}: {e}"))?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").ok_or_else(|| format!("no HTTP header end in {raw:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// Percent-encodes everything but the unreserved characters of RFC 3986.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `data` of a query answer: a vector as its samples, a scalar as one unlabelled sample.
fn parse_result(data: &Value) -> Option<Vec<Sample>> {
    // Values are strings: "1.5", "NaN", "+Inf", "-Inf"; Rust's f64 parser accepts all of them.
    let value = |v: &Value| v.get(1)?.as_str()?.parse::<f64>().ok();
    match data["resultType"].as_str()? {
        "vector" => data["result"]
            .as_array()?
            .iter()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()?
                    .iter()
                    .map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect::<Option<BTreeMap<_, _>>>()?;
                Some((labels, value(&s["value"])?))
            })
            .collect(),
        "scalar" => Some(vec![(BTreeMap::new(), value(&data["result"])?)]),
        _ => None,
    }
}

/// The last `n` lines of a log file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
