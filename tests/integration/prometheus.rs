//! The Prometheus harness against the real server: it becomes ready, scrapes an in-test exporter as job "gateway",
//! computes a rate per API key, marks a vanished target down and its series stale, and its address is dead once
//! stopped. Each test prints how long the steps took (`--nocapture` shows them).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::prometheus::{Prometheus, Sample, binary, promtool};

/// A tiny exporter: GET /metrics answers `gateway_requests_total{api_key="a"}`, one more at each scrape.
struct Exporter {
    target: String,
    scrapes: Arc<AtomicU64>,
    serving: Arc<AtomicBool>,
}

impl Exporter {
    fn start() -> Exporter {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind exporter");
        let target = listener.local_addr().expect("exporter addr").to_string();
        let scrapes = Arc::new(AtomicU64::new(0));
        let serving = Arc::new(AtomicBool::new(true));
        let (n, on) = (scrapes.clone(), serving.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if !on.load(Ordering::SeqCst) {
                    break; // drops the listener: the port now refuses connections
                }
                if let Ok(stream) = stream {
                    answer(stream, &n);
                }
            }
        });
        Exporter { target, scrapes, serving }
    }

    /// Closes the port: Prometheus's next scrape fails.
    fn stop(&self) {
        self.serving.store(false, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.target); // wakes the accept loop so that it sees the flag
    }
}

fn answer(mut stream: TcpStream, scrapes: &AtomicU64) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    // Read the whole request head first: closing with unread input would reset the connection under the answer.
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let response = if head.starts_with(b"GET /metrics ") {
        let n = scrapes.fetch_add(1, Ordering::SeqCst) + 1;
        let body = format!(
            "# HELP gateway_requests_total Requests.\n# TYPE gateway_requests_total counter\n\
             gateway_requests_total{{api_key=\"a\"}} {n}\n"
        );
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\
             \r\n{body}",
            body.len()
        )
    } else {
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
    };
    let _ = stream.write_all(response.as_bytes());
}

fn value_for(result: &[Sample], label: &str, value: &str) -> Option<f64> {
    result.iter().find(|(labels, _)| labels.get(label).map(String::as_str) == Some(value)).map(|(_, v)| *v)
}

/// Prometheus and promtool build from `tests/prometheus` (or are found in the cache) and are the pinned module
/// version, built without service discovery. `.ci/run` runs this one first so that the build shows as its own step.
#[test]
fn prometheus_is_built_from_its_go_module() {
    let go_mod =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/prometheus/go.mod"))
            .expect("tests/prometheus/go.mod");
    let pinned = go_mod
        .lines()
        .find_map(|l| l.trim().strip_prefix("github.com/prometheus/prometheus "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("go.mod requires github.com/prometheus/prometheus");
    for bin in [binary(), promtool()] {
        let out = std::process::Command::new(&bin).arg("--version").output().expect("run --version");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{} --version:\n{text}", bin.display());
        // v0.316.0 is Prometheus 3.16.0; build.sh records the module version as the revision.
        assert!(text.contains(&format!("revision: {pinned})")), "{} is not {pinned}:\n{text}", bin.display());
        let tags = text.lines().find(|l| l.trim_start().starts_with("tags:")).unwrap_or_default();
        assert!(tags.contains("remove_all_sd"), "built without the remove_all_sd tag:\n{text}");
        eprintln!("{}", text.lines().next().unwrap_or_default());
        eprintln!("  at {}", bin.display());
    }
}

#[test]
fn up_becomes_1_for_a_served_target() {
    let exporter = Exporter::start();
    let t0 = Instant::now();
    let prom = Prometheus::start(std::slice::from_ref(&exporter.target));
    let ready = t0.elapsed();
    let up = prom.wait_for("up{job=\"gateway\"}", Duration::from_secs(30), |r| {
        value_for(r, "instance", &exporter.target) == Some(1.0)
    });
    eprintln!("ready after {ready:?}, up == 1 after {:?}", t0.elapsed());
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0].0.get("job").map(String::as_str), Some("gateway"));
    assert_eq!(up[0].0.get("__name__").map(String::as_str), Some("up"));
    assert!(exporter.scrapes.load(Ordering::SeqCst) >= 1);
}

#[test]
fn rate_by_api_key_becomes_positive() {
    let exporter = Exporter::start();
    let t0 = Instant::now();
    let prom = Prometheus::start(std::slice::from_ref(&exporter.target));
    let ready = t0.elapsed();
    let query = "sum by (api_key) (rate(gateway_requests_total[5s]))";
    let rate = prom.wait_for(query, Duration::from_secs(30), |r| value_for(r, "api_key", "a").is_some_and(|v| v > 0.0));
    let first = t0.elapsed();
    // `sum by` keeps only the grouping label.
    assert_eq!(rate[0].0.keys().collect::<Vec<_>>(), ["api_key"]);
    // One more per scrape, one scrape a second: 1/s once the 5 s window is full of samples. The first rates are lower
    // (two samples 1 s apart extrapolate to about 1.5-2 of the 5 s), so a test that reads a value waits for it.
    let steady = prom.wait_for(query, Duration::from_secs(30), |r| {
        value_for(r, "api_key", "a").is_some_and(|v| (0.9..1.1).contains(&v))
    });
    eprintln!(
        "ready after {ready:?}, first rate > 0 after {first:?}: {rate:?}, about 1/s after {:?}: {steady:?}",
        t0.elapsed()
    );
}

#[test]
fn a_vanished_target_is_down_and_its_series_stale() {
    let exporter = Exporter::start();
    let prom = Prometheus::start(std::slice::from_ref(&exporter.target));
    prom.wait_for("rate(gateway_requests_total[5s])", Duration::from_secs(30), |r| !r.is_empty());
    exporter.stop();
    let t0 = Instant::now();
    prom.wait_for("up{job=\"gateway\"}", Duration::from_secs(30), |r| r.len() == 1 && r[0].1 == 0.0);
    let down = t0.elapsed();
    // The failed scrape writes staleness markers: the instant selector is empty at once, not after 5 minutes.
    prom.wait_for("gateway_requests_total", Duration::from_secs(30), |r| r.is_empty());
    let stale = t0.elapsed();
    // A range function still sees the samples inside its window until they age out of it.
    prom.wait_for("rate(gateway_requests_total[5s])", Duration::from_secs(30), |r| r.is_empty());
    eprintln!(
        "after the target stopped: up == 0 at {down:?}, series stale at {stale:?}, rate gone at {:?}",
        t0.elapsed()
    );
}

#[test]
fn stopped_server_refuses_connections() {
    let mut prom = Prometheus::start(&[]);
    let address = prom.address();
    assert!(address.starts_with("http://127.0.0.1:"), "{address}");
    // A scalar answers without any scrape.
    assert_eq!(prom.query("1 + 1"), vec![(Default::default(), 2.0)]);
    let err = prom.try_query("sum(").expect_err("bad PromQL must be an error");
    assert!(err.contains("HTTP 400"), "{err}");
    let t0 = Instant::now();
    prom.stop();
    eprintln!("stopped in {:?}", t0.elapsed());
    let err = prom.try_query("up").expect_err("a stopped server must not answer");
    assert!(err.contains("refused"), "{err}");
    assert!(TcpStream::connect(address.trim_start_matches("http://")).is_err(), "{address} still accepts");
    prom.stop(); // idempotent
}
