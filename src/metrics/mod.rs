//! The operator's Prometheus metrics, exposed in the OpenMetrics text format at `/metrics`.
//!
//! This module owns every metric name (all prefixed `keyward_`). Labels are controller names, reasons, states,
//! namespaces and object names only: key material never reaches a metric.
//!
//! Two kinds of metric live here:
//! - **events** (reconciles, rotations, API writes, leadership) are prometheus-client families of atomics, cheap to
//!   bump from any reconcile;
//! - **per-object state** (each API key's state, readiness, rotation and expiry times and usage against its limit,
//!   each rate-limit policy's gauges) lives in small maps that a collector turns into series at scrape time. A
//!   forgotten object's series vanish with it. Times are absolute (`*_timestamp_seconds`); the deprecated
//!   `keyward_apikey_next_rotation_seconds` is computed against the scrape's clock.
//!
//! `objects` holds the per-object state and its collector.

mod objects;
pub mod requests;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use prometheus_client::encoding::text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

pub use self::objects::{KeyFigures, KeyUsageFigures, PolicyFigures};
use self::objects::{Objects, ObjectsAt};

/// The key states always exported by `keyward_apikeys`, at 0 when no key is in them, so that a state emptying out
/// shows as 0 instead of its series disappearing. Other states passed to [`Metrics::set_key`] are exported too.
pub const KEY_STATES: [&str; 5] = ["Ready", "Suspended", "Expired", "InvalidSpec", "SecretConflict"];

/// The reasons of `keyward_rotations_total`, created at 0 so that `increase()` sees the first rotation of each
/// (a counter series that appears at 1 has no increase to show).
pub const ROTATION_REASONS: [&str; 4] = ["scheduled", "manual", "regenerated", "tampered"];

/// Upper bounds of the reconcile-duration buckets, in seconds: 1 ms to 30 s, about ×2.5 apart.
const RECONCILE_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// All of the operator's metrics. `Send + Sync`; share it as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    /// The event metrics below, registered once; the per-object ones are encoded from `objects` on each scrape.
    registry: Registry,
    reconciles: Family<Labels2, Counter>,
    reconcile_errors: Family<Labels2, Counter>,
    reconcile_duration: Family<Labels1, Histogram, fn() -> Histogram>,
    rotations: Family<Labels1, Counter>,
    api_writes: Family<Labels2, Counter>,
    leader: Gauge,
    objects: Arc<Objects>,
    /// Length of the previous encoding, to size the next one's buffer in one allocation.
    last_len: AtomicUsize,
}

impl Metrics {
    /// A fresh set of metrics, all at zero (`keyward_leader` 0 until [`Metrics::set_leader`]).
    pub fn new() -> Arc<Metrics> {
        let reconciles = Family::<Labels2, Counter>::default();
        let reconcile_errors = Family::<Labels2, Counter>::default();
        let reconcile_duration: Family<Labels1, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(reconcile_histogram);
        let rotations = Family::<Labels1, Counter>::default();
        for reason in ROTATION_REASONS {
            drop(rotations.get_or_create(&[("reason", reason)]));
        }
        let api_writes = Family::<Labels2, Counter>::default();
        let leader = Gauge::default();

        let mut registry = Registry::default();
        // NB: prometheus-client appends `_total` to counter names and the unit to names registered with one.
        registry.register(
            "keyward_reconciles",
            "Finished reconciles by controller and result (success or error)",
            reconciles.clone(),
        );
        registry.register(
            "keyward_reconcile_errors",
            "Failed reconciles by controller and error reason",
            reconcile_errors.clone(),
        );
        registry.register_with_unit(
            "keyward_reconcile_duration",
            "How long reconciles take, by controller",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        registry.register("keyward_rotations", "Key rotations by reason", rotations.clone());
        registry.register(
            "keyward_api_writes",
            "Writes made to the Kubernetes API server, by controller and kind of write",
            api_writes.clone(),
        );
        registry.register(
            "keyward_api_requests",
            "Requests made to the Kubernetes API server, by verb (get, list, watch, create, update, patch, delete)",
            requests::family(),
        );
        registry.register(
            "keyward_leader",
            "1 when this replica holds the leader Lease (or leader election is off), else 0",
            leader.clone(),
        );

        registry.register(
            "keyward_build",
            "The running keyward build: 1, labelled with its version",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );

        Arc::new(Metrics {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            rotations,
            api_writes,
            leader,
            objects: Arc::default(),
            last_len: AtomicUsize::new(0),
        })
    }

    /// Creates a controller's reconcile series at zero, so that `rate()` over them works before its first reconcile
    /// (optional: [`Metrics::reconcile`] creates them too).
    pub fn init_controller(&self, controller: &'static str) {
        // The guards are dropped at once: creating the series is all that is wanted.
        for result in ["success", "error"] {
            drop(self.reconciles.get_or_create(&[("controller", controller), ("result", result)]));
        }
        drop(self.reconcile_duration.get_or_create(&[("controller", controller)]));
    }

    /// One finished reconcile: counts `keyward_reconciles_total{controller,result="success"|"error"}`, errors in
    /// `keyward_reconcile_errors_total{controller,reason}`, and observes
    /// `keyward_reconcile_duration_seconds{controller}`.
    pub fn reconcile(&self, controller: &'static str, elapsed: Duration, error_reason: Option<&'static str>) {
        let result = if error_reason.is_some() { "error" } else { "success" };
        self.reconciles.get_or_create(&[("controller", controller), ("result", result)]).inc();
        if let Some(reason) = error_reason {
            self.reconcile_errors.get_or_create(&[("controller", controller), ("reason", reason)]).inc();
        }
        self.reconcile_duration.get_or_create(&[("controller", controller)]).observe(elapsed.as_secs_f64());
    }

    /// `keyward_rotations_total{reason}`: a key was rotated; `reason` e.g. "scheduled", "manual", "regenerated".
    pub fn rotation(&self, reason: &'static str) {
        self.rotations.get_or_create(&[("reason", reason)]).inc();
    }

    /// `keyward_api_writes_total{controller,kind}`: one write to the API server; `kind` e.g. "Secret",
    /// "ApiKeyStatus", "RateLimitPolicyStatus", "Scale", "RolloutRestart", "Event". Flat while idle.
    pub fn api_write(&self, controller: &'static str, kind: &'static str) {
        self.api_writes.get_or_create(&[("controller", controller), ("kind", kind)]).inc();
    }

    /// `keyward_leader`: 1 while this replica holds the Lease (and when leader election is off), else 0.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The whole registry in the OpenMetrics text format, ending with `# EOF`.
    pub fn encode(&self) -> String {
        self.encode_at(Timestamp::now())
    }

    /// [`Metrics::encode`] with the clock injected: next-rotation gauges are counted from `now`.
    pub fn encode_at(&self, now: Timestamp) -> String {
        let mut out = String::with_capacity(self.last_len.load(Ordering::Relaxed) + 1024);
        // The per-object series are encoded by a collector registered per scrape, so that it can carry `now`.
        let mut objects = Registry::default();
        objects.register_collector(Box::new(ObjectsAt { objects: Arc::clone(&self.objects), now }));
        let encoded = text::encode_registry(&mut out, &self.registry)
            .and_then(|()| text::encode_registry(&mut out, &objects))
            .and_then(|()| text::encode_eof(&mut out));
        // NB: writing to a String cannot fail and the collector only forwards the writer's errors, so this is
        // unreachable; should it happen, the scrape gets what was written and Prometheus reports the missing EOF.
        if encoded.is_err() {
            tracing::error!("encoding the metrics failed");
        }
        self.last_len.store(out.len(), Ordering::Relaxed);
        out
    }
}

fn reconcile_histogram() -> Histogram {
    Histogram::new(RECONCILE_BUCKETS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample written exactly as `series` (name and labels), if present.
    pub(super) fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn fresh_registry_describes_state_metrics_and_ends_with_eof() {
        let text = Metrics::new().encode();
        // NB: prometheus-client leaves a family out until it has a series; the per-object ones are always described.
        for name in [
            "keyward_leader",
            "keyward_apikeys",
            "keyward_apikey_ready",
            "keyward_apikey_next_rotation_timestamp_seconds",
            "keyward_apikey_next_rotation_seconds",
            "keyward_apikey_expiry_timestamp_seconds",
            "keyward_apikey_last_rotation_timestamp_seconds",
            "keyward_apikey_utilization",
            "keyward_apikey_near_limit",
            "keyward_apikey_exhausted",
            "keyward_ratelimitpolicy_usage_available",
            "keyward_ratelimitpolicy_scaling_conflict",
            "keyward_ratelimitpolicy_utilization",
            "keyward_ratelimitpolicy_observed_usage_rps",
            "keyward_ratelimitpolicy_replicas",
            "keyward_usage_source_errors",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing from\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1);
        assert_eq!(sample(&text, "keyward_leader"), Some(0.0));
        let build = format!("keyward_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
        assert_eq!(sample(&text, &build), Some(1.0), "{text}");
        for state in KEY_STATES {
            assert_eq!(sample(&text, &format!("keyward_apikeys{{state=\"{state}\"}}")), Some(0.0), "{state}");
        }
    }

    #[test]
    fn reconciles_count_results_errors_and_durations() {
        let m = Metrics::new();
        m.reconcile("apikey", Duration::from_millis(3), None);
        m.reconcile("apikey", Duration::from_millis(40), None);
        m.reconcile("apikey", Duration::from_secs(2), Some("SecretConflict"));
        m.reconcile("ratelimit", Duration::from_millis(1), Some("UsageSource"));
        let text = m.encode();
        let v = |series: &str| sample(&text, series);
        assert_eq!(v(r#"keyward_reconciles_total{controller="apikey",result="success"}"#), Some(2.0));
        assert_eq!(v(r#"keyward_reconciles_total{controller="apikey",result="error"}"#), Some(1.0));
        assert_eq!(v(r#"keyward_reconciles_total{controller="ratelimit",result="error"}"#), Some(1.0));
        assert_eq!(v(r#"keyward_reconciles_total{controller="ratelimit",result="success"}"#), None);
        assert_eq!(v(r#"keyward_reconcile_errors_total{controller="apikey",reason="SecretConflict"}"#), Some(1.0));
        assert_eq!(v(r#"keyward_reconcile_errors_total{controller="ratelimit",reason="UsageSource"}"#), Some(1.0));
        assert_eq!(v(r#"keyward_reconcile_duration_seconds_count{controller="apikey"}"#), Some(3.0));
        assert_eq!(v(r#"keyward_reconcile_duration_seconds_bucket{le="0.005",controller="apikey"}"#), Some(1.0));
        assert_eq!(v(r#"keyward_reconcile_duration_seconds_bucket{le="0.05",controller="apikey"}"#), Some(2.0));
        assert_eq!(v(r#"keyward_reconcile_duration_seconds_bucket{le="30.0",controller="apikey"}"#), Some(3.0));
        assert_eq!(v(r#"keyward_reconcile_duration_seconds_bucket{le="+Inf",controller="apikey"}"#), Some(3.0));
        let sum = v(r#"keyward_reconcile_duration_seconds_sum{controller="apikey"}"#).unwrap();
        assert!((sum - 2.043).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn init_controller_creates_zeroed_series() {
        let m = Metrics::new();
        m.init_controller("apikey");
        let text = m.encode();
        assert_eq!(sample(&text, r#"keyward_reconciles_total{controller="apikey",result="success"}"#), Some(0.0));
        assert_eq!(sample(&text, r#"keyward_reconciles_total{controller="apikey",result="error"}"#), Some(0.0));
        assert_eq!(sample(&text, r#"keyward_reconcile_duration_seconds_count{controller="apikey"}"#), Some(0.0));
    }

    #[test]
    fn rotations_writes_and_leader() {
        let m = Metrics::new();
        m.rotation("scheduled");
        m.rotation("scheduled");
        m.rotation("manual");
        m.api_write("apikey", "Secret");
        m.api_write("apikey", "ApiKeyStatus");
        m.api_write("apikey", "Secret");
        m.api_write("ratelimit", "Scale");
        m.set_leader(true);
        let text = m.encode();
        let v = |series: &str| sample(&text, series);
        assert_eq!(v(r#"keyward_rotations_total{reason="scheduled"}"#), Some(2.0));
        assert_eq!(v(r#"keyward_rotations_total{reason="manual"}"#), Some(1.0));
        assert_eq!(v(r#"keyward_rotations_total{reason="regenerated"}"#), Some(0.0), "created at 0");
        assert_eq!(v(r#"keyward_api_writes_total{controller="apikey",kind="Secret"}"#), Some(2.0));
        assert_eq!(v(r#"keyward_api_writes_total{controller="apikey",kind="ApiKeyStatus"}"#), Some(1.0));
        assert_eq!(v(r#"keyward_api_writes_total{controller="ratelimit",kind="Scale"}"#), Some(1.0));
        assert_eq!(v("keyward_leader"), Some(1.0));
        m.set_leader(false);
        assert_eq!(sample(&m.encode(), "keyward_leader"), Some(0.0));
    }

    #[test]
    fn metrics_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Metrics>();
    }
}
