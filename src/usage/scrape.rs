//! Usage read straight from the gateway's metrics endpoints, for gateways without a Prometheus server.
//!
//! Each poll reads the Prometheus text format from every URL at once, sums one counter by the key label per endpoint
//! ([`counters_by_key`]), turns each endpoint's counters into rates since the previous poll ([`RateTracker`]) and adds
//! the endpoints' rates together. Rates are computed per endpoint and summed afterwards, like `sum(rate(...))`: a
//! restart of one replica resets only its own counters, whereas a rate of the summed counters would count the other
//! replicas' whole totals as new requests. Each endpoint's counters are timed by when that endpoint answered, not
//! by the `now` of the poll (see the NB in `poll`).
//!
//! A poll succeeds only if every endpoint answers: the sum of the replicas that answered would look like a drop in
//! usage. A failed poll leaves every baseline as it was, so the next successful poll measures the rate over the longer
//! span. The first poll only records baselines and reports [`SourceError::WarmingUp`].

use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use futures::future::join_all;
use jiff::SignedDuration;

use super::http::{self, BodySink, redact_url};
use super::textformat::{CounterReader, RateTracker, StreamError, merge};
use super::{Rates, Source, SourceError, Sources};

/// What we ask the endpoint for: the text format, not OpenMetrics or protobuf.
const ACCEPT: &str = "text/plain;version=0.0.4;q=1.0,*/*;q=0.1";

/// The metrics endpoints of a gateway and the request counter to read from them.
#[derive(Clone)]
pub struct Scrape {
    urls: Vec<String>,
    metric: String,
    key_label: String,
    sources: Sources,
    /// One tracker per entry of `urls`, at the same index.
    trackers: Vec<RateTracker>,
}

impl Scrape {
    /// A source that reads counter `metric` (e.g. `gateway_requests_total`) from every URL in `urls`.
    /// Every request goes through `sources` (fence, caps, budget).
    pub fn new(urls: Vec<String>, metric: &str, key_label: &str, sources: Sources) -> Self {
        let trackers = vec![RateTracker::new(); urls.len()];
        Self { urls, metric: metric.to_owned(), key_label: key_label.to_owned(), sources, trackers }
    }

    /// The label whose value identifies a key.
    pub fn key_label(&self) -> &str {
        &self.key_label
    }

    /// Follows the endpoints as they come and go (a Service's ready endpoints): an endpoint kept keeps its counters;
    /// one that went away is forgotten (its end is not a counter reset); a new one starts without a baseline, so its
    /// first poll reads its counters and its rates count from the second.
    pub fn set_urls(&mut self, urls: Vec<String>) {
        if urls == self.urls {
            return;
        }
        let mut old: BTreeMap<String, RateTracker> =
            std::mem::take(&mut self.urls).into_iter().zip(std::mem::take(&mut self.trackers)).collect();
        self.trackers = urls.iter().map(|u| old.remove(u).unwrap_or_default()).collect();
        self.urls = urls;
    }
}

/// Shows the URLs redacted: they may carry credentials.
impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|url| redact_url(url)).collect();
        f.debug_struct("Scrape")
            .field("urls", &urls)
            .field("metric", &self.metric)
            .field("key_label", &self.key_label)
            .finish_non_exhaustive()
    }
}

impl Source for Scrape {
    async fn poll(&mut self, now: jiff::Timestamp, timeout: Duration) -> Result<Rates, SourceError> {
        if self.urls.is_empty() {
            return Err(SourceError::InvalidUrl {
                url: "usage.scrape.urls".to_owned(),
                detail: "no URL to scrape".to_owned(),
            });
        }
        // NB: each endpoint's counters are timed by when they were read, not by `now` (when the reconcile started).
        // Endpoints answer at different moments (queueing, slow replicas), and a rate over `now`-to-`now` would
        // divide by the wrong span whenever that delay differs between polls. The server reads its counters at some
        // point between our request and its answer; the midpoint of that exchange is the best estimate we have. It
        // is placed on `now`'s clock by its monotonic offset from `base`, so the injected `now` stays the reference.
        let base = Instant::now();
        // Every endpoint is fetched at once, each under the same timeout, so the poll takes about `timeout` at most.
        // They share one count of series read.
        let series = AtomicUsize::new(0);
        let fetch = Fetch { sources: &self.sources, metric: &self.metric, key_label: &self.key_label, series: &series };
        let fetches = self.urls.iter().map(|url| fetch.counters(url, timeout));
        let mut counters = Vec::with_capacity(self.urls.len());
        for result in join_all(fetches).await {
            // The first failure in the order of `urls` is reported, and no baseline moves.
            counters.push(result?);
        }

        let mut rates = Rates::new();
        let mut measured = 0;
        for (tracker, (read_at, counters)) in self.trackers.iter_mut().zip(counters) {
            let offset = SignedDuration::try_from(read_at.duration_since(base)).unwrap_or(SignedDuration::ZERO);
            let sampled = now.checked_add(offset).unwrap_or(now);
            // `None` on the first poll; also when the sample time did not advance, and then there is no rate either.
            if let Some(endpoint_rates) = tracker.observe(sampled, counters) {
                merge(&mut rates, &endpoint_rates);
                measured += 1;
            }
        }
        // NB: an endpoint new to a running source (the gateway scaled out) counts from its second poll; only a
        // source none of whose endpoints has a baseline yet has no rates at all.
        if measured == 0 {
            return Err(SourceError::WarmingUp { endpoints: self.urls.len() });
        }
        rates.retain(|_, rate| rate.is_finite() && *rate >= 0.0);
        let max_keys = self.sources.limits().max_keys;
        if rates.len() > max_keys {
            let url = format!("{} metrics endpoint(s)", self.urls.len());
            return Err(SourceError::TooManyKeys { url, limit: max_keys });
        }
        Ok(rates)
    }
}

/// What every endpoint's fetch of one poll shares.
struct Fetch<'a> {
    sources: &'a Sources,
    metric: &'a str,
    key_label: &'a str,
    series: &'a AtomicUsize,
}

impl Fetch<'_> {
    /// The counters by key of one endpoint, with when they were read: the midpoint between sending the request and
    /// receiving the whole answer (the answer is parsed as it arrives, so that is also when parsing ended).
    async fn counters(&self, url: &str, timeout: Duration) -> Result<(Instant, BTreeMap<String, f64>), SourceError> {
        let shown = redact_url(url);
        let parsed = parse_url(url).map_err(|detail| SourceError::InvalidUrl { url: shown.clone(), detail })?;
        let limits = self.sources.limits();
        let reader = CounterReader::new(self.metric, self.key_label, self.series, limits.max_series, limits.max_keys);
        let mut sink = Sink { reader, shown: &shown, limits };
        let sent = Instant::now();
        let answer = http::get(self.sources, parsed, &shown, ACCEPT, timeout, &mut sink, 0).await?;
        let arrived = Instant::now();
        let read_at = sent + (arrived - sent) / 2;
        if let http::Answer::Status { status, .. } = answer {
            return Err(SourceError::HttpStatus { url: shown, status });
        }
        let counters = sink.reader.finish().map_err(|err| stream_error(err, &shown, limits))?;
        Ok((read_at, counters))
    }
}

/// Feeds an answer to a [`CounterReader`].
struct Sink<'a> {
    reader: CounterReader<'a>,
    shown: &'a str,
    limits: super::Limits,
}

impl BodySink for Sink<'_> {
    fn feed(&mut self, chunk: &[u8]) -> Result<(), SourceError> {
        self.reader.feed(chunk).map_err(|err| stream_error(err, self.shown, self.limits))
    }

    fn retained(&self) -> usize {
        self.reader.retained()
    }

    fn retained_after(&self, chunk: &[u8]) -> usize {
        self.reader.retained_after(chunk)
    }
}

/// The fixed error for a refused exposition; what the line held goes to the debug log only.
fn stream_error(err: StreamError, shown: &str, limits: super::Limits) -> SourceError {
    let url = shown.to_owned();
    match err {
        StreamError::Parse(parse) => {
            tracing::debug!(%url, line = parse.line, excerpt = %parse.excerpt, "not the Prometheus text format");
            let detail = format!("not the Prometheus text format at line {} ({})", parse.line, parse.kind);
            SourceError::InvalidResponse { url, detail }
        }
        StreamError::NotUtf8 { line } => {
            SourceError::InvalidResponse { url, detail: format!("not UTF-8 text at line {line}") }
        }
        StreamError::TooManySeries => SourceError::TooManySeries { url, limit: limits.max_series },
        StreamError::TooManyKeys => SourceError::TooManyKeys { url, limit: limits.max_keys },
    }
}

/// `url` parsed, if it is an http or https URL.
fn parse_url(url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|err| err.to_string())?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("the scheme must be http or https, not {}", parsed.scheme()));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::Body;
    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use jiff::Timestamp;

    use super::*;
    use crate::usage::MAX_BODY_BYTES;
    use crate::usage::test_server::{closed_port, serve};

    /// What a stub endpoint answers.
    #[derive(Clone)]
    enum Reply {
        Text(String),
        Status(StatusCode),
        Bytes(Vec<u8>),
        /// A body of this many bytes, streamed without a Content-Length.
        Chunked(usize),
        Hang,
        /// The reply, sent after a delay.
        Delayed(Duration, Box<Reply>),
    }

    /// Endpoints `/{name}` whose answers the test changes between polls.
    #[derive(Clone, Default)]
    struct Stub(Arc<Mutex<HashMap<String, Reply>>>);

    impl Stub {
        fn set(&self, name: &str, reply: Reply) {
            self.0.lock().unwrap().insert(name.to_owned(), reply);
        }

        /// Sends the current reply of `name` only after `delay`.
        fn delay(&self, name: &str, delay: Duration) {
            let mut replies = self.0.lock().unwrap();
            let reply = replies.remove(name).expect("a reply to delay");
            replies.insert(name.to_owned(), Reply::Delayed(delay, Box::new(reply)));
        }

        fn counters(&self, name: &str, counters: &[(&str, u64)]) {
            let mut text = "# HELP req_total Requests.\n# TYPE req_total counter\n".to_owned();
            for (key, value) in counters {
                text.push_str(&format!("req_total{{api_key=\"{key}\",code=\"200\"}} {value}\n"));
            }
            text.push_str("other_total{api_key=\"a\"} 999999\n");
            self.set(name, Reply::Text(text));
        }

        async fn start(&self) -> String {
            async fn answer(State(stub): State<Stub>, Path(name): Path<String>) -> Response {
                let mut reply = stub.0.lock().unwrap().get(&name).cloned();
                while let Some(Reply::Delayed(delay, inner)) = reply {
                    tokio::time::sleep(delay).await;
                    reply = Some(*inner);
                }
                match reply {
                    Some(Reply::Text(text)) => text.into_response(),
                    Some(Reply::Status(status)) => (status, "SECRET-BODY").into_response(),
                    Some(Reply::Bytes(bytes)) => bytes.into_response(),
                    Some(Reply::Chunked(len)) => {
                        let chunks = (0..len.div_ceil(1024))
                            .map(move |i| Ok::<_, std::io::Error>(vec![b'#'; 1024.min(len - i * 1024)]));
                        Body::from_stream(futures::stream::iter(chunks)).into_response()
                    }
                    Some(Reply::Hang) => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        "late".into_response()
                    }
                    Some(Reply::Delayed(..)) => unreachable!("unwrapped above"),
                    None => StatusCode::NOT_FOUND.into_response(),
                }
            }
            let addr = serve(Router::new().route("/{name}", get(answer)).with_state(self.clone())).await;
            format!("http://{addr}")
        }
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    fn rates(entries: &[(&str, f64)]) -> Rates {
        entries.iter().map(|&(k, v)| (k.to_owned(), v)).collect()
    }

    /// Asserts the same keys as `expected` and each rate within `tolerance` of it, relative (so 0 must be exactly 0).
    #[track_caller]
    fn assert_rates_within(actual: &Rates, expected: &[(&str, f64)], tolerance: f64) {
        let expected = rates(expected);
        assert!(actual.keys().eq(expected.keys()), "keys differ: {actual:?}, expected {expected:?}");
        for (key, want) in &expected {
            let got = actual[key];
            assert!((got - want).abs() <= tolerance * want.abs(), "{key}: {got}, expected {want}: {actual:?}");
        }
    }

    /// [`assert_rates_within`] 1%: samples are timed when the stub answered, a few milliseconds after the injected
    /// `now`, so the spans between polls differ from the injected ones by about that much.
    #[track_caller]
    fn assert_rates(actual: &Rates, expected: &[(&str, f64)]) {
        assert_rates_within(actual, expected, 0.01);
    }

    fn source(urls: &[String]) -> Scrape {
        Scrape::new(urls.to_vec(), "req_total", "api_key", crate::usage::test_sources())
    }

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn sums_the_rates_of_every_endpoint() {
        let stub = Stub::default();
        let base = stub.start().await;
        let urls = [format!("{base}/one"), format!("{base}/two")];
        let mut scrape = source(&urls);

        stub.counters("one", &[("a", 100), ("b", 50)]);
        stub.counters("two", &[("a", 200)]);
        let err = scrape.poll(at(0), TIMEOUT).await.unwrap_err();
        assert_eq!(err, SourceError::WarmingUp { endpoints: 2 });
        assert_eq!(err.reason(), "WarmingUp");

        stub.counters("one", &[("a", 200), ("b", 100)]);
        stub.counters("two", &[("a", 400), ("c", 5)]);
        // a: (100 + 200) / 10 s; b: 50 / 10 s; c is new and has no rate yet.
        assert_rates(&scrape.poll(at(10), TIMEOUT).await.unwrap(), &[("a", 30.0), ("b", 5.0)]);
    }

    #[tokio::test]
    async fn endpoints_that_come_and_go_keep_their_own_baselines() {
        let stub = Stub::default();
        let base = stub.start().await;
        let (one, two) = (format!("{base}/one"), format!("{base}/two"));
        let mut scrape = source(std::slice::from_ref(&one));
        stub.counters("one", &[("a", 100)]);
        assert_eq!(scrape.poll(at(0), TIMEOUT).await.unwrap_err().reason(), "WarmingUp");
        // Scale-out: `two` joins with a large total; it counts from its second poll, never as a spike.
        scrape.set_urls(vec![one.clone(), two.clone()]);
        stub.counters("one", &[("a", 200)]);
        stub.counters("two", &[("a", 5000)]);
        assert_rates(&scrape.poll(at(10), TIMEOUT).await.unwrap(), &[("a", 10.0)]);
        stub.counters("one", &[("a", 300)]);
        stub.counters("two", &[("a", 5100)]);
        assert_rates(&scrape.poll(at(20), TIMEOUT).await.unwrap(), &[("a", 20.0)]);
        // Scale-in: `one` goes away; that is not a reset of anything, and `two` keeps its baseline.
        scrape.set_urls(vec![two.clone()]);
        stub.counters("two", &[("a", 5200)]);
        assert_rates(&scrape.poll(at(30), TIMEOUT).await.unwrap(), &[("a", 10.0)]);
    }

    #[tokio::test]
    async fn a_replica_restart_resets_only_its_own_counters() {
        let stub = Stub::default();
        let base = stub.start().await;
        let mut scrape = source(&[format!("{base}/one"), format!("{base}/two")]);

        stub.counters("one", &[("a", 1_000_000)]);
        stub.counters("two", &[("a", 1_000_000)]);
        assert!(scrape.poll(at(0), TIMEOUT).await.is_err());

        stub.counters("one", &[("a", 1_000_100)]);
        stub.counters("two", &[("a", 10)]);
        // 100 from the first replica plus 10 since the second restarted, over 10 s; not 1,000,010 / 10.
        assert_rates(&scrape.poll(at(10), TIMEOUT).await.unwrap(), &[("a", 11.0)]);
    }

    #[tokio::test]
    async fn one_failing_endpoint_fails_the_poll_and_keeps_the_baseline() {
        let stub = Stub::default();
        let base = stub.start().await;
        let mut scrape = source(&[format!("{base}/one"), format!("{base}/two")]);

        stub.counters("one", &[("a", 0)]);
        stub.counters("two", &[("a", 0)]);
        assert!(scrape.poll(at(0), TIMEOUT).await.is_err());

        stub.counters("one", &[("a", 100)]);
        stub.set("two", Reply::Status(StatusCode::INTERNAL_SERVER_ERROR));
        let err = scrape.poll(at(10), TIMEOUT).await.unwrap_err();
        assert_eq!(err, SourceError::HttpStatus { url: format!("{base}/two"), status: 500 });
        assert!(!err.to_string().contains("SECRET"), "{err}");

        stub.counters("one", &[("a", 300)]);
        stub.counters("two", &[("a", 100)]);
        // Measured from the baseline at 0 s: (300 + 100) / 20 s.
        assert_rates(&scrape.poll(at(20), TIMEOUT).await.unwrap(), &[("a", 20.0)]);
    }

    #[tokio::test]
    async fn unreachable_endpoint_is_named_without_credentials() {
        let stub = Stub::default();
        let base = stub.start().await;
        stub.counters("one", &[("a", 1)]);
        let down = closed_port().await;
        let mut scrape = source(&[format!("{base}/one"), format!("http://scraper:s3cret@{down}/metrics")]);
        let err = scrape.poll(at(0), TIMEOUT).await.unwrap_err();
        assert_eq!(err.reason(), "SourceUnreachable", "{err}");
        let text = err.to_string();
        assert!(text.contains(&format!("http://***@{down}/metrics")), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        let debug = format!("{scrape:?}");
        assert!(debug.contains(&format!("http://***@{down}/metrics")) && !debug.contains("s3cret"), "{debug}");
    }

    #[tokio::test]
    async fn oversize_bodies_are_refused() {
        let stub = Stub::default();
        let base = stub.start().await;
        let url = format!("{base}/big");

        // With a Content-Length: refused before reading.
        stub.set("big", Reply::Text("#".repeat(MAX_BODY_BYTES + 1)));
        let err = source(std::slice::from_ref(&url)).poll(at(0), TIMEOUT).await.unwrap_err();
        assert_eq!(err, SourceError::TooLarge { url: url.clone(), limit: MAX_BODY_BYTES });

        // Streamed without one: refused once the limit is passed.
        stub.set("big", Reply::Chunked(10 * 1024));
        let limits = crate::usage::Limits { max_body_bytes: 4096, ..Default::default() };
        let small_sources = Sources::new(crate::usage::Settings { limits, ..crate::usage::Settings::loopback() });
        let mut small = Scrape::new(vec![url.clone()], "req_total", "api_key", small_sources);
        let err = small.poll(at(0), TIMEOUT).await.unwrap_err();
        assert_eq!(err, SourceError::TooLarge { url: url.clone(), limit: 4096 });
        assert_eq!(err.reason(), "ResponseTooLarge");

        // Just under the limit is fine.
        stub.set("big", Reply::Chunked(4096));
        assert_eq!(small.poll(at(1), TIMEOUT).await.unwrap_err().reason(), "WarmingUp");
    }

    #[tokio::test]
    async fn invalid_text_is_reported_with_its_line() {
        let stub = Stub::default();
        let base = stub.start().await;
        let url = format!("{base}/bad");

        stub.set("bad", Reply::Text("req_total{api_key=\"a\"} 1\nreq_total{api_key=\"b\" 2\n".into()));
        let err = source(std::slice::from_ref(&url)).poll(at(0), TIMEOUT).await.unwrap_err();
        assert_eq!(err.reason(), "InvalidResponse");
        let text = err.to_string();
        assert!(text.contains(&url) && text.contains("line 2"), "{text}");

        stub.set("bad", Reply::Bytes(b"req_total{api_key=\"\xff\"} 1\n".to_vec()));
        let err = source(std::slice::from_ref(&url)).poll(at(0), TIMEOUT).await.unwrap_err();
        assert!(err.to_string().contains("UTF-8"), "{err}");
    }

    #[tokio::test]
    async fn enforces_the_timeout_and_checks_urls() {
        let stub = Stub::default();
        let base = stub.start().await;
        stub.set("slow", Reply::Hang);
        stub.counters("fast", &[("a", 1)]);
        let slow = format!("{base}/slow");
        let started = std::time::Instant::now();
        let timeout = Duration::from_millis(200);
        let err = source(&[format!("{base}/fast"), slow.clone()]).poll(at(0), timeout).await.unwrap_err();
        assert_eq!(err, SourceError::Timeout { url: slow, timeout });
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());

        let err = source(&["ftp://user:pw@host/metrics".to_owned()]).poll(at(0), TIMEOUT).await.unwrap_err();
        assert_eq!(err.reason(), "InvalidSource");
        assert!(err.to_string().contains("ftp://***@host/metrics"), "{err}");
        assert_eq!(source(&[]).poll(at(0), TIMEOUT).await.unwrap_err().reason(), "InvalidSource");
    }

    #[tokio::test]
    async fn keys_without_traffic_are_zero_and_missing_metric_is_empty() {
        let stub = Stub::default();
        let base = stub.start().await;
        let mut scrape = source(&[format!("{base}/one")]);
        stub.counters("one", &[("a", 5)]);
        assert!(scrape.poll(at(0), TIMEOUT).await.is_err());
        assert_rates(&scrape.poll(at(15), TIMEOUT).await.unwrap(), &[("a", 0.0)]);

        let mut other = Scrape::new(vec![format!("{base}/one")], "nope_total", "api_key", crate::usage::test_sources());
        assert!(other.poll(at(0), TIMEOUT).await.is_err());
        assert_eq!(other.poll(at(15), TIMEOUT).await.unwrap(), Rates::new());
    }

    #[tokio::test]
    async fn each_endpoint_is_timed_when_it_answered() {
        let stub = Stub::default();
        let base = stub.start().await;
        let mut scrape = source(&[format!("{base}/slow"), format!("{base}/fast")]);

        // The first poll waits 2 s for `slow`: its counters were read about 1 s after `now` (the middle of the
        // exchange), those of `fast` right at `now`.
        let delay = Duration::from_secs(2);
        stub.counters("slow", &[("a", 0)]);
        stub.delay("slow", delay);
        stub.counters("fast", &[("b", 0)]);
        assert_eq!(scrape.poll(at(0), TIMEOUT).await.unwrap_err().reason(), "WarmingUp");

        // Ten injected seconds later both answer at once.
        stub.counters("slow", &[("a", 90)]);
        stub.counters("fast", &[("b", 100)]);
        let rates = scrape.poll(at(10), TIMEOUT).await.unwrap();
        // a: 90 over about 9 s, not 90 / 10 s = 9/s; b: 100 over 10 s, not over the 8 s after the slow answer.
        // 3% separates 10 from 9 and from 12.5, and leaves room for a loaded machine.
        assert_rates_within(&rates, &[("a", 10.0), ("b", 10.0)], 0.03);
    }
}
