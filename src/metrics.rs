//! The operator's Prometheus metrics, exposed in the OpenMetrics text format at `/metrics`.
//!
//! This module owns every metric name (all prefixed `keyward_`). Labels are controller names, reasons, states,
//! namespaces and object names only: key material never reaches a metric.
//!
//! Two kinds of metric live here:
//! - **events** (reconciles, rotations, API writes, leadership) are prometheus-client families of atomics, cheap to
//!   bump from any reconcile;
//! - **per-object state** (each API key's state and next rotation, each rate-limit policy's gauges) lives in small
//!   maps that a collector turns into series at scrape time. A forgotten object's series vanish with it, and the
//!   seconds until a key's next rotation are computed against the scrape's clock rather than going stale between
//!   reconciles.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use jiff::Timestamp;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet, text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The key states always exported by `keyward_apikeys`, at 0 when no key is in them, so that a state emptying out
/// shows as 0 instead of its series disappearing. Other states passed to [`Metrics::set_key`] are exported too.
pub const KEY_STATES: [&str; 5] = ["Ready", "Suspended", "Expired", "InvalidSpec", "SecretConflict"];

/// Upper bounds of the reconcile-duration buckets, in seconds: 1 ms to 30 s, about ×2.5 apart.
const RECONCILE_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// Per-object maps keyed by namespace, then name. Nested (rather than keyed by a pair) so that lookups by `&str`
/// allocate nothing, and ordered so that `/metrics` lists objects in a stable order.
type Namespaced<T> = BTreeMap<Box<str>, BTreeMap<Box<str>, T>>;

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
            "keyward_leader",
            "1 when this replica holds the leader Lease (or leader election is off), else 0",
            leader.clone(),
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

    /// Records a key's state for `keyward_apikeys{state}` and its next rotation for
    /// `keyward_apikey_next_rotation_seconds{namespace,name}` (seconds from the scrape until then, negative when
    /// overdue; no series when `None`). Replaces what was recorded for that key before.
    pub fn set_key(&self, namespace: &str, name: &str, state: &'static str, next_rotation: Option<Timestamp>) {
        let entry = KeyEntry { state, next_rotation };
        upsert(&mut write(&self.objects.keys), namespace, name, |e| *e = entry);
    }

    /// Drops every series of a key (it was deleted).
    pub fn forget_key(&self, namespace: &str, name: &str) {
        remove(&mut write(&self.objects.keys), namespace, name);
    }

    /// Records a rate-limit policy's `keyward_ratelimitpolicy_utilization{namespace,name}`,
    /// `keyward_ratelimitpolicy_observed_usage_rps{namespace,name}` and
    /// `keyward_ratelimitpolicy_replicas{namespace,name,kind="desired"|"current"}`; `None` removes that series.
    /// The policy's usage-source error counts are kept.
    pub fn set_policy(
        &self,
        namespace: &str,
        name: &str,
        utilization: Option<f64>,
        usage_rps: Option<f64>,
        desired: Option<i32>,
        current: Option<i32>,
    ) {
        upsert(&mut write(&self.objects.policies), namespace, name, |e| {
            e.utilization = utilization;
            e.usage_rps = usage_rps;
            e.desired = desired;
            e.current = current;
        });
    }

    /// Drops every series of a policy (it was deleted), its usage-source error counts included.
    pub fn forget_policy(&self, namespace: &str, name: &str) {
        remove(&mut write(&self.objects.policies), namespace, name);
    }

    /// `keyward_usage_source_errors_total{namespace,name,reason}`: a policy's usage source could not be read.
    pub fn usage_source_error(&self, namespace: &str, name: &str, reason: &'static str) {
        upsert(&mut write(&self.objects.policies), namespace, name, |e| {
            match e.source_errors.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, count)) => *count += 1,
                None => e.source_errors.push((reason, 1)),
            }
        });
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

/// What is recorded of one API key.
#[derive(Clone, Copy, Debug, Default)]
struct KeyEntry {
    state: &'static str,
    next_rotation: Option<Timestamp>,
}

/// What is recorded of one rate-limit policy.
#[derive(Clone, Debug, Default)]
struct PolicyEntry {
    utilization: Option<f64>,
    usage_rps: Option<f64>,
    desired: Option<i32>,
    current: Option<i32>,
    /// Usage-source error counts by reason; a handful of reasons at most, so a Vec beats a map.
    source_errors: Vec<(&'static str, u64)>,
}

/// The per-object state, shared between [`Metrics`] and the collector of each scrape.
#[derive(Debug, Default)]
struct Objects {
    keys: RwLock<Namespaced<KeyEntry>>,
    policies: RwLock<Namespaced<PolicyEntry>>,
}

// A panic while holding one of these locks leaves a map that is still consistent (every update is a single
// assignment or push), so a poisoned lock is used as is rather than taking the metrics down with it.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// Applies `update` to the entry of `namespace/name`, creating it (from `Default`) first if needed. Allocates only
/// when the entry is new.
fn upsert<T: Default>(map: &mut Namespaced<T>, namespace: &str, name: &str, update: impl FnOnce(&mut T)) {
    if let Some(names) = map.get_mut(namespace) {
        if let Some(entry) = names.get_mut(name) {
            update(entry);
        } else {
            let mut entry = T::default();
            update(&mut entry);
            names.insert(name.into(), entry);
        }
        return;
    }
    let mut entry = T::default();
    update(&mut entry);
    map.entry(namespace.into()).or_default().insert(name.into(), entry);
}

fn remove<T>(map: &mut Namespaced<T>, namespace: &str, name: &str) {
    if let Some(names) = map.get_mut(namespace) {
        names.remove(name);
        if names.is_empty() {
            map.remove(namespace);
        }
    }
}

fn entries<T>(map: &Namespaced<T>) -> impl Iterator<Item = (&str, &str, &T)> {
    map.iter().flat_map(|(ns, names)| names.iter().map(move |(name, entry)| (&**ns, &**name, entry)))
}

/// The per-object state as seen at one scrape's `now`.
#[derive(Debug)]
struct ObjectsAt {
    objects: Arc<Objects>,
    now: Timestamp,
}

impl Collector for ObjectsAt {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        {
            let keys = read(&self.objects.keys);
            let mut counts: Vec<(&str, u64)> = KEY_STATES.iter().map(|state| (*state, 0)).collect();
            for (_, _, key) in entries(&keys) {
                match counts.iter_mut().find(|(state, _)| *state == key.state) {
                    Some((_, count)) => *count += 1,
                    None => counts.push((key.state, 1)),
                }
            }
            let mut family =
                encoder.encode_descriptor("keyward_apikeys", "API keys by state.", None, MetricType::Gauge)?;
            for (state, count) in &counts {
                family.encode_family(&[("state", *state)])?.encode_gauge(count)?;
            }

            let mut family = encoder.encode_descriptor(
                "keyward_apikey_next_rotation",
                "Seconds until each API key's next rotation (negative when overdue; absent when none is scheduled).",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            for (namespace, name, key) in entries(&keys) {
                if let Some(at) = key.next_rotation {
                    let seconds = at.duration_since(self.now).as_secs_f64();
                    family.encode_family(&[("namespace", namespace), ("name", name)])?.encode_gauge(&seconds)?;
                }
            }
        }

        let policies = read(&self.objects.policies);
        let mut family = encoder.encode_descriptor(
            "keyward_ratelimitpolicy_utilization",
            "Total usage of each policy divided by the gateway capacity at its current replicas (1.0 is full).",
            None,
            MetricType::Gauge,
        )?;
        for (namespace, name, policy) in entries(&policies) {
            if let Some(utilization) = policy.utilization {
                family.encode_family(&[("namespace", namespace), ("name", name)])?.encode_gauge(&utilization)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "keyward_ratelimitpolicy_observed_usage_rps",
            "Observed requests per second of each rate-limit policy's keys.",
            None,
            MetricType::Gauge,
        )?;
        for (namespace, name, policy) in entries(&policies) {
            if let Some(rps) = policy.usage_rps {
                family.encode_family(&[("namespace", namespace), ("name", name)])?.encode_gauge(&rps)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "keyward_ratelimitpolicy_replicas",
            "Replicas of each rate-limit policy's gateway: desired by Keyward, and current.",
            None,
            MetricType::Gauge,
        )?;
        for (namespace, name, policy) in entries(&policies) {
            for (kind, replicas) in [("desired", policy.desired), ("current", policy.current)] {
                if let Some(replicas) = replicas {
                    family
                        .encode_family(&[("namespace", namespace), ("name", name), ("kind", kind)])?
                        .encode_gauge(&replicas)?;
                }
            }
        }

        let mut family = encoder.encode_descriptor(
            "keyward_usage_source_errors",
            "Failed reads of each rate-limit policy's usage source, by reason.",
            None,
            MetricType::Counter,
        )?;
        for (namespace, name, policy) in entries(&policies) {
            for (reason, count) in &policy.source_errors {
                family
                    .encode_family(&[("namespace", namespace), ("name", name), ("reason", *reason)])?
                    .encode_counter::<NoLabelSet, _, u64>(count, None)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample written exactly as `series` (name and labels), if present.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn fresh_registry_describes_state_metrics_and_ends_with_eof() {
        let text = Metrics::new().encode();
        // NB: prometheus-client leaves a family out until it has a series; the per-object ones are always described.
        for name in [
            "keyward_leader",
            "keyward_apikeys",
            "keyward_apikey_next_rotation_seconds",
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
        assert_eq!(v(r#"keyward_api_writes_total{controller="apikey",kind="Secret"}"#), Some(2.0));
        assert_eq!(v(r#"keyward_api_writes_total{controller="apikey",kind="ApiKeyStatus"}"#), Some(1.0));
        assert_eq!(v(r#"keyward_api_writes_total{controller="ratelimit",kind="Scale"}"#), Some(1.0));
        assert_eq!(v("keyward_leader"), Some(1.0));
        m.set_leader(false);
        assert_eq!(sample(&m.encode(), "keyward_leader"), Some(0.0));
    }

    #[test]
    fn key_states_are_counted_and_forgotten() {
        let m = Metrics::new();
        m.set_key("a", "one", "Ready", None);
        m.set_key("b", "two", "Ready", None);
        m.set_key("b", "three", "Suspended", None);
        let text = m.encode();
        assert_eq!(sample(&text, r#"keyward_apikeys{state="Ready"}"#), Some(2.0));
        assert_eq!(sample(&text, r#"keyward_apikeys{state="Suspended"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"keyward_apikeys{state="Expired"}"#), Some(0.0));

        m.forget_key("a", "one");
        // Setting a key again replaces its state instead of counting it twice.
        m.set_key("b", "three", "Expired", None);
        m.set_key("b", "three", "Expired", None);
        m.forget_key("a", "never-set");
        let text = m.encode();
        assert_eq!(sample(&text, r#"keyward_apikeys{state="Ready"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"keyward_apikeys{state="Suspended"}"#), Some(0.0));
        assert_eq!(sample(&text, r#"keyward_apikeys{state="Expired"}"#), Some(1.0));

        m.set_key("b", "two", "Pending", None);
        assert_eq!(sample(&m.encode(), r#"keyward_apikeys{state="Pending"}"#), Some(1.0));
    }

    #[test]
    fn next_rotation_is_counted_from_the_scrape_and_vanishes() {
        let m = Metrics::new();
        let now = at("2030-01-01T00:00:00Z");
        m.set_key("ns", "due-soon", "Ready", Some(at("2030-01-01T01:00:00Z")));
        m.set_key("ns", "overdue", "Ready", Some(at("2029-12-31T23:59:30Z")));
        m.set_key("ns", "never", "Ready", None);
        let series = |name: &str| format!(r#"keyward_apikey_next_rotation_seconds{{namespace="ns",name="{name}"}}"#);

        let text = m.encode_at(now);
        assert_eq!(sample(&text, &series("due-soon")), Some(3600.0));
        assert_eq!(sample(&text, &series("overdue")), Some(-30.0));
        assert!(!text.contains(&series("never")), "{text}");
        // Computed at scrape time: a later scrape sees less time left without any new set_key.
        assert_eq!(sample(&m.encode_at(at("2030-01-01T00:10:00Z")), &series("due-soon")), Some(3000.0));

        // A key whose rotation is no longer scheduled loses its series; a forgotten key loses all of them.
        m.set_key("ns", "overdue", "Suspended", None);
        m.forget_key("ns", "due-soon");
        let text = m.encode_at(now);
        assert!(!text.contains(&series("overdue")), "{text}");
        assert!(!text.contains("due-soon"), "{text}");
        assert!(text.contains("# TYPE keyward_apikey_next_rotation_seconds gauge"), "{text}");
    }

    #[test]
    fn policy_gauges_are_replaced_and_forgotten() {
        let m = Metrics::new();
        m.set_policy("ns", "gw", Some(0.75), Some(150.5), Some(4), Some(3));
        let text = m.encode();
        let v = |text: &str, series: &str| sample(text, series);
        assert_eq!(v(&text, r#"keyward_ratelimitpolicy_utilization{namespace="ns",name="gw"}"#), Some(0.75));
        assert_eq!(v(&text, r#"keyward_ratelimitpolicy_observed_usage_rps{namespace="ns",name="gw"}"#), Some(150.5));
        assert_eq!(v(&text, r#"keyward_ratelimitpolicy_replicas{namespace="ns",name="gw",kind="desired"}"#), Some(4.0));
        assert_eq!(v(&text, r#"keyward_ratelimitpolicy_replicas{namespace="ns",name="gw",kind="current"}"#), Some(3.0));

        m.set_policy("ns", "gw", None, None, Some(5), None);
        let text = m.encode();
        assert!(!text.contains(r#"keyward_ratelimitpolicy_utilization{"#), "{text}");
        assert!(!text.contains(r#"keyward_ratelimitpolicy_observed_usage_rps{"#), "{text}");
        assert_eq!(v(&text, r#"keyward_ratelimitpolicy_replicas{namespace="ns",name="gw",kind="desired"}"#), Some(5.0));
        assert!(!text.contains(r#"kind="current""#), "{text}");

        m.forget_policy("ns", "gw");
        assert!(!m.encode().contains(r#"name="gw""#));
    }

    #[test]
    fn usage_source_errors_count_per_reason_and_survive_set_policy() {
        let m = Metrics::new();
        m.usage_source_error("ns", "gw", "Unreachable");
        m.set_policy("ns", "gw", Some(0.5), None, None, None);
        m.usage_source_error("ns", "gw", "Unreachable");
        m.usage_source_error("ns", "gw", "BadResponse");
        m.usage_source_error("other", "gw", "Unreachable");
        let text = m.encode();
        let series = |ns: &str, reason: &str| {
            format!(r#"keyward_usage_source_errors_total{{namespace="{ns}",name="gw",reason="{reason}"}}"#)
        };
        assert_eq!(sample(&text, &series("ns", "Unreachable")), Some(2.0));
        assert_eq!(sample(&text, &series("ns", "BadResponse")), Some(1.0));
        assert_eq!(sample(&text, &series("other", "Unreachable")), Some(1.0));

        m.forget_policy("ns", "gw");
        let text = m.encode();
        assert_eq!(sample(&text, &series("ns", "Unreachable")), None);
        assert_eq!(sample(&text, &series("other", "Unreachable")), Some(1.0));
    }

    #[test]
    fn ten_thousand_keys_encode_one_series_each() {
        let m = Metrics::new();
        let now = at("2030-01-01T00:00:00Z");
        for i in 0..10_000 {
            let state = if i % 10 == 0 { "Suspended" } else { "Ready" };
            m.set_key(
                &format!("ns-{}", i % 50),
                &format!("key-{i}"),
                state,
                Some(now + jiff::SignedDuration::from_secs(i)),
            );
        }
        let text = m.encode_at(now);
        assert_eq!(sample(&text, r#"keyward_apikeys{state="Ready"}"#), Some(9000.0));
        assert_eq!(sample(&text, r#"keyward_apikeys{state="Suspended"}"#), Some(1000.0));
        assert_eq!(text.matches("keyward_apikey_next_rotation_seconds{").count(), 10_000);
        assert_eq!(
            sample(&text, r#"keyward_apikey_next_rotation_seconds{namespace="ns-7",name="key-9957"}"#),
            Some(9957.0)
        );
        // The next scrape's buffer is sized from this one.
        assert!(m.encode_at(now).capacity() >= text.len());
    }

    #[test]
    fn metrics_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Metrics>();
    }
}
