//! A simulated API gateway's metrics endpoint: per-key request counters that grow at rates the caller sets.
//!
//! Integration tests drive it to give a RateLimitPolicy's `usage.scrape` something to read, and
//! `cargo run --example traffic` lets a newcomer watch Keyward react to traffic. Counters are integrated over real
//! time (value = accumulated + rate × time since the last change), so every scrape sees a smooth, monotonic counter
//! until [`TrafficSim::reset_counter`] simulates a gateway restart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::channel::oneshot;

/// A running simulated metrics endpoint. Clones share it; it stops on [`stop`](TrafficSim::stop) or when the last
/// clone is dropped.
#[derive(Clone)]
pub struct TrafficSim {
    state: Arc<Mutex<Traffic>>,
    addr: SocketAddr,
    shutdown: Arc<Shutdown>,
}

/// Closes the listener when dropped or triggered: the server task waits on the receiving end.
struct Shutdown(Mutex<Option<oneshot::Sender<()>>>);

impl Shutdown {
    fn trigger(&self) {
        // Dropping the sender completes the server's shutdown future.
        lock(&self.0).take();
    }
}

/// The counters and what the endpoint answers.
struct Traffic {
    metric: String,
    key_label: String,
    available: bool,
    keys: BTreeMap<String, Counter>,
}

/// One key's counter: `accumulated` at `since`, growing at `rps` from then on.
#[derive(Clone, Copy)]
struct Counter {
    accumulated: f64,
    rps: f64,
    since: Instant,
}

impl Counter {
    fn value_at(&self, now: Instant) -> f64 {
        self.accumulated + self.rps * now.saturating_duration_since(self.since).as_secs_f64()
    }
}

impl TrafficSim {
    /// Serves `GET /metrics` on `addr` (e.g. `127.0.0.1:0`) with one counter `metric{<key_label>="<key>"}` per key in
    /// the Prometheus text format. No key has traffic until [`set_rate`](TrafficSim::set_rate).
    pub async fn start(addr: &str, metric: &str, key_label: &str) -> std::io::Result<TrafficSim> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        Self::serve(listener, metric, key_label)
    }

    /// [`TrafficSim::start`] on a socket bound already (e.g. inside another network namespace).
    pub fn serve_std(listener: std::net::TcpListener, metric: &str, key_label: &str) -> std::io::Result<TrafficSim> {
        listener.set_nonblocking(true)?;
        Self::serve(tokio::net::TcpListener::from_std(listener)?, metric, key_label)
    }

    fn serve(listener: tokio::net::TcpListener, metric: &str, key_label: &str) -> std::io::Result<TrafficSim> {
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(Traffic {
            metric: metric.to_owned(),
            key_label: key_label.to_owned(),
            available: true,
            keys: BTreeMap::new(),
        }));
        let (tx, rx) = oneshot::channel::<()>();
        let router = Router::new().route("/metrics", get(metrics)).with_state(Arc::clone(&state));
        tokio::spawn(async move {
            // Graceful shutdown closes the listener at once and idle keep-alive connections right after.
            let served = axum::serve(listener, router).with_graceful_shutdown(async move {
                let _ = rx.await;
            });
            if let Err(err) = served.await {
                tracing::warn!(error = %err, "traffic simulator stopped");
            }
        });
        Ok(TrafficSim { state, addr, shutdown: Arc::new(Shutdown(Mutex::new(Some(tx)))) })
    }

    /// The URL to scrape, e.g. `http://127.0.0.1:9100/metrics`.
    pub fn url(&self) -> String {
        format!("http://{}/metrics", self.addr)
    }

    /// The address the endpoint listens on (with the port chosen when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on `key`'s counter grows by `rps` requests a second (a key first named here starts at 0). A
    /// negative or non-finite `rps` counts as 0.
    pub fn set_rate(&self, key: &str, rps: f64) {
        let rps = if rps.is_finite() && rps > 0.0 { rps } else { 0.0 };
        let now = Instant::now();
        let mut traffic = lock(&self.state);
        let counter = traffic.keys.entry(key.to_owned()).or_insert(Counter { accumulated: 0.0, rps: 0.0, since: now });
        *counter = Counter { accumulated: counter.value_at(now), rps, since: now };
    }

    /// Sets `key`'s counter back to 0, as a gateway restart does; its rate goes on.
    pub fn reset_counter(&self, key: &str) {
        let now = Instant::now();
        if let Some(counter) = lock(&self.state).keys.get_mut(key) {
            *counter = Counter { accumulated: 0.0, rps: counter.rps, since: now };
        }
    }

    /// `false` makes `/metrics` answer 503 Service Unavailable (counters keep growing); `true` serves them again.
    pub fn set_available(&self, up: bool) {
        lock(&self.state).available = up;
    }

    /// The requests per second of every key.
    pub fn rates(&self) -> BTreeMap<String, f64> {
        lock(&self.state).keys.iter().map(|(key, counter)| (key.clone(), counter.rps)).collect()
    }

    /// `key`'s counter now, as a scrape would see it before rounding down; 0 for a key never named.
    pub fn counter(&self, key: &str) -> f64 {
        lock(&self.state).keys.get(key).map_or(0.0, |counter| counter.value_at(Instant::now()))
    }

    /// Stops serving for every clone: the listener closes, so new connections are refused.
    pub fn stop(self) {
        self.shutdown.trigger();
    }
}

impl Drop for Shutdown {
    fn drop(&mut self) {
        self.trigger();
    }
}

/// The guarded value even if a thread panicked while holding the lock: every update leaves the state consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn metrics(State(state): State<Arc<Mutex<Traffic>>>) -> Response {
    let traffic = lock(&state);
    if !traffic.available {
        return (StatusCode::SERVICE_UNAVAILABLE, "simulated gateway unavailable\n").into_response();
    }
    let body = render(&traffic, Instant::now());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// The exposition: HELP, TYPE and one sample per key, counted in whole requests as a real gateway does.
fn render(traffic: &Traffic, now: Instant) -> String {
    let metric = &traffic.metric;
    let mut out = format!(
        "# HELP {metric} Requests served, by API key (simulated by Keyward's traffic simulator).\n\
         # TYPE {metric} counter\n"
    );
    for (key, counter) in &traffic.keys {
        let value = counter.value_at(now).floor();
        let _ = writeln!(out, "{metric}{{{}=\"{}\"}} {value}", traffic.key_label, escape_label_value(key));
    }
    out
}

/// A label value with `\`, `"` and newlines escaped as the text format requires.
fn escape_label_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::usage::textformat::counters_by_key;

    async fn scrape(sim: &TrafficSim) -> (u16, String) {
        let response = reqwest::get(sim.url()).await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    async fn scraped_counter(sim: &TrafficSim, key: &str) -> f64 {
        let (status, text) = scrape(sim).await;
        assert_eq!(status, 200, "{text}");
        counters_by_key(&text, "gateway_requests_total", "api_key").unwrap().get(key).copied().unwrap_or(0.0)
    }

    #[tokio::test]
    async fn counters_grow_with_the_rate_and_parse() {
        let sim = TrafficSim::start("127.0.0.1:0", "gateway_requests_total", "api_key").await.unwrap();
        assert_eq!(sim.url(), format!("http://127.0.0.1:{}/metrics", sim.addr().port()));
        let (status, text) = scrape(&sim).await;
        assert_eq!(status, 200);
        assert!(text.contains("# TYPE gateway_requests_total counter"), "{text}");

        // NB: the clock starts before the rate is set, so the upper bound holds however long a busy machine takes
        // between the two.
        let started = Instant::now();
        sim.set_rate("checkout", 1000.0);
        sim.set_rate("idle", 0.0);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let first = scraped_counter(&sim, "checkout").await;
        // At least 200 ms at 1000 rps; at most what the elapsed time allows (no upper wall-clock guess needed).
        assert!(first >= 150.0, "{first}");
        assert!(first <= 1000.0 * started.elapsed().as_secs_f64() + 1.0, "{first}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = scraped_counter(&sim, "checkout").await;
        assert!(second > first, "{first} then {second}");
        assert_eq!(scraped_counter(&sim, "idle").await, 0.0);
        assert_eq!(sim.rates(), BTreeMap::from([("checkout".to_owned(), 1000.0), ("idle".to_owned(), 0.0)]));

        // A new rate continues from the counter reached so far.
        sim.set_rate("checkout", 0.0);
        let frozen = sim.counter("checkout");
        assert!(frozen >= second);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(sim.counter("checkout"), frozen);
    }

    #[tokio::test]
    async fn reset_and_unavailability() {
        let sim = TrafficSim::start("127.0.0.1:0", "gateway_requests_total", "api_key").await.unwrap();
        sim.set_rate("checkout", 1000.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = sim.counter("checkout");
        assert!(before >= 50.0, "{before}");
        sim.reset_counter("checkout");
        let after = sim.counter("checkout");
        assert!(after < before, "{before} then {after}");
        sim.reset_counter("never-named");
        assert_eq!(sim.counter("never-named"), 0.0);

        sim.set_available(false);
        let (status, text) = scrape(&sim).await;
        assert_eq!(status, 503);
        assert!(!text.contains("gateway_requests_total"), "{text}");
        sim.set_available(true);
        assert_eq!(scrape(&sim).await.0, 200);
    }

    #[tokio::test]
    async fn stop_closes_the_listener() {
        let sim = TrafficSim::start("127.0.0.1:0", "m_total", "key").await.unwrap();
        let clone = sim.clone();
        let addr = sim.addr();
        assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
        clone.stop();
        // The server task closes the listener when it next runs; allow it a moment, without a fixed sleep.
        let deadline = Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(Instant::now() < deadline, "{addr} still accepts connections");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(sim);
    }

    #[tokio::test]
    async fn dropping_the_last_clone_stops_it() {
        let sim = TrafficSim::start("127.0.0.1:0", "m_total", "key").await.unwrap();
        let addr = sim.addr();
        drop(sim);
        let deadline = Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(Instant::now() < deadline, "{addr} still accepts connections");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn the_scrape_source_reads_it() {
        use crate::usage::{Source, SourceError, scrape::Scrape};

        let sim = TrafficSim::start("127.0.0.1:0", "gateway_requests_total", "key_id").await.unwrap();
        sim.set_rate("checkout", 1000.0);
        let mut source = Scrape::new(
            vec![sim.url()],
            "gateway_requests_total",
            "key_id",
            crate::usage::Sources::new(crate::usage::Settings::loopback()),
        );
        let timeout = Duration::from_secs(5);
        let err = source.poll(jiff::Timestamp::now(), timeout).await.unwrap_err();
        assert_eq!(err.reason(), "WarmingUp");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rates = source.poll(jiff::Timestamp::now(), timeout).await.unwrap();
        // Roughly 1000/s; only the sign is asserted, so a slow machine cannot make this flaky.
        assert!(rates.get("checkout").is_some_and(|&rps| rps > 0.0), "{rates:?}");

        sim.set_available(false);
        let err = source.poll(jiff::Timestamp::now(), timeout).await.unwrap_err();
        assert_eq!(err, SourceError::HttpStatus { url: sim.url(), status: 503 });
    }

    #[test]
    fn renders_valid_text_format_with_escaped_keys() {
        let now = Instant::now();
        let counter = |accumulated| Counter { accumulated, rps: 0.0, since: now };
        let traffic = Traffic {
            metric: "req_total".into(),
            key_label: "key_id".into(),
            available: true,
            keys: BTreeMap::from([
                ("plain".to_owned(), counter(12.7)),
                ("we\"ird\\key\n".to_owned(), counter(3.0)),
                ("big".to_owned(), counter(1e15)),
            ]),
        };
        let text = render(&traffic, now);
        let parsed = counters_by_key(&text, "req_total", "key_id").unwrap();
        assert_eq!(
            parsed,
            BTreeMap::from([("big".to_owned(), 1e15), ("plain".to_owned(), 12.0), ("we\"ird\\key\n".to_owned(), 3.0)])
        );
        assert!(text.starts_with("# HELP req_total "), "{text}");
    }
}
