//! The per-object state behind the `keyward_apikey*`, `keyward_ratelimitpolicy_*` and `keyward_usage_source_errors`
//! series: what [`Metrics`] records of each API key and rate-limit policy, and the collector that encodes it at
//! each scrape.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use jiff::Timestamp;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use super::{KEY_STATES, Metrics};

/// Per-object maps keyed by namespace, then name. Nested (rather than keyed by a pair) so that lookups by `&str`
/// allocate nothing, and ordered so that `/metrics` lists objects in a stable order.
type Namespaced<T> = BTreeMap<Box<str>, BTreeMap<Box<str>, T>>;

/// What the ApiKey controller reports of one key at the end of a reconcile (never key material).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KeyFigures {
    /// "Ready", else the Ready condition's reason: the `state` of `keyward_apikeys`.
    pub state: &'static str,
    /// The Ready condition: its status and reason.
    pub ready: bool,
    pub reason: &'static str,
    /// When the key rotates next, if it rotates on its own.
    pub next_rotation: Option<Timestamp>,
    /// `spec.expiresAt`.
    pub expires_at: Option<Timestamp>,
    /// `status.lastRotationTime`: when the current key was issued.
    pub last_rotation: Option<Timestamp>,
}

/// What the RateLimitPolicy controller reports of one member key: its utilization and limit conditions.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyUsageFigures {
    /// The policy the usage was measured by.
    pub policy: String,
    /// Requests per second ÷ the key's limit; `None` when unknown.
    pub utilization: Option<f64>,
    pub near_limit: bool,
    pub exhausted: bool,
}

impl Metrics {
    /// Records a key for `keyward_apikeys{state}` and its per-key gauges (`keyward_apikey_ready`,
    /// `keyward_apikey_next_rotation_timestamp_seconds`, `keyward_apikey_expiry_timestamp_seconds`,
    /// `keyward_apikey_last_rotation_timestamp_seconds`; no series for a time that is `None`). Replaces what the
    /// ApiKey controller recorded for that key before; the usage recorded by [`Metrics::set_key_usage`] is kept.
    pub fn set_key(&self, namespace: &str, name: &str, figures: KeyFigures) {
        upsert(&mut write(&self.objects.keys), namespace, name, |e| e.figures = Some(figures));
    }

    /// Records a key's usage against its rate-limit policy: `keyward_apikey_utilization`,
    /// `keyward_apikey_near_limit` and `keyward_apikey_exhausted` (labels namespace, name, policy).
    pub fn set_key_usage(&self, namespace: &str, name: &str, usage: KeyUsageFigures) {
        upsert(&mut write(&self.objects.keys), namespace, name, |e| e.usage = Some(usage));
    }

    /// Drops a key's usage series (it left its policy, or the policy was deleted).
    pub fn clear_key_usage(&self, namespace: &str, name: &str) {
        let mut keys = write(&self.objects.keys);
        let emptied = keys.get_mut(namespace).and_then(|names| names.get_mut(name)).is_some_and(|e| {
            e.usage = None;
            e.figures.is_none()
        });
        if emptied {
            remove(&mut keys, namespace, name);
        }
    }

    /// Drops every series of a key (it was deleted).
    pub fn forget_key(&self, namespace: &str, name: &str) {
        remove(&mut write(&self.objects.keys), namespace, name);
    }

    /// Records a rate-limit policy's `keyward_ratelimitpolicy_utilization{namespace,name}`,
    /// `keyward_ratelimitpolicy_observed_usage_rps{namespace,name}`,
    /// `keyward_ratelimitpolicy_replicas{namespace,name,kind="desired"|"current"}`,
    /// `keyward_ratelimitpolicy_usage_available` and `keyward_ratelimitpolicy_scaling_conflict`; `None` removes
    /// that series. The policy's usage-source error counts are kept.
    pub fn set_policy(&self, namespace: &str, name: &str, figures: PolicyFigures) {
        upsert(&mut write(&self.objects.policies), namespace, name, |e| e.figures = figures);
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
}

/// What is recorded of one API key: by the ApiKey controller, and by its rate-limit policy's controller. Either
/// may come first.
#[derive(Clone, Debug, Default)]
struct KeyEntry {
    figures: Option<KeyFigures>,
    usage: Option<KeyUsageFigures>,
}

/// What the RateLimitPolicy controller reports of one policy at the end of a reconcile.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PolicyFigures {
    pub utilization: Option<f64>,
    pub usage_rps: Option<f64>,
    pub desired: Option<i32>,
    pub current: Option<i32>,
    /// The `UsageAvailable` condition; `None` when the policy has no usage source.
    pub usage_available: Option<bool>,
    /// The `ScalingConflict` condition; `None` when the policy does not scale anything.
    pub scaling_conflict: Option<bool>,
}

/// What is recorded of one rate-limit policy.
#[derive(Clone, Debug, Default)]
struct PolicyEntry {
    figures: PolicyFigures,
    /// Usage-source error counts by reason; a handful of reasons at most, so a Vec beats a map.
    source_errors: Vec<(&'static str, u64)>,
}

/// The per-object state, shared between [`Metrics`] and the collector of each scrape.
#[derive(Debug, Default)]
pub(super) struct Objects {
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
pub(super) struct ObjectsAt {
    pub(super) objects: Arc<Objects>,
    pub(super) now: Timestamp,
}

impl Collector for ObjectsAt {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.encode_keys(&mut encoder)?;
        self.encode_policies(&mut encoder)
    }
}

/// A label added to `namespace` and `name`, borrowed from the entry.
type Extra<'a> = Option<(&'static str, &'a str)>;

/// One gauge family with a series per object (`namespace`, `name`, and the extra label if any) for which `value`
/// has a figure.
fn gauge_per_object<T, V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    (name, help, unit): (&str, &str, Option<&Unit>),
    objects: &Namespaced<T>,
    value: impl Fn(&T) -> Option<(V, Extra<'_>)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (namespace, object, entry) in entries(objects) {
        // NB: arrays rather than a Vec: a scrape of 10,000 keys encodes tens of thousands of these series.
        match value(entry) {
            Some((v, None)) => family.encode_family(&[("namespace", namespace), ("name", object)])?.encode_gauge(&v)?,
            Some((v, Some(extra))) => {
                family.encode_family(&[("namespace", namespace), ("name", object), extra])?.encode_gauge(&v)?
            }
            None => {}
        }
    }
    Ok(())
}

/// Seconds since the Unix epoch, as Prometheus timestamps are.
fn epoch_seconds(at: Timestamp) -> f64 {
    at.as_millisecond() as f64 / 1000.0
}

/// A key's time `f`, as the seconds since the epoch, for [`gauge_per_object`].
fn key_time(f: fn(&KeyFigures) -> Option<Timestamp>) -> impl for<'a> Fn(&'a KeyEntry) -> Option<(f64, Extra<'a>)> {
    move |k| Some((epoch_seconds(f(k.figures.as_ref()?)?), None))
}

/// A policy's figure `f`, for [`gauge_per_object`].
fn policy_figure(f: fn(&PolicyFigures) -> Option<f64>) -> impl for<'a> Fn(&'a PolicyEntry) -> Option<(f64, Extra<'a>)> {
    move |p| Some((f(&p.figures)?, None))
}

impl ObjectsAt {
    fn encode_keys(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let keys = read(&self.objects.keys);
        let mut counts: Vec<(&str, u64)> = KEY_STATES.iter().map(|state| (*state, 0)).collect();
        for state in entries(&keys).filter_map(|(_, _, key)| key.figures.map(|f| f.state)) {
            match counts.iter_mut().find(|(s, _)| *s == state) {
                Some((_, count)) => *count += 1,
                None => counts.push((state, 1)),
            }
        }
        let mut family = encoder.encode_descriptor("keyward_apikeys", "API keys by state.", None, MetricType::Gauge)?;
        for (state, count) in &counts {
            family.encode_family(&[("state", *state)])?.encode_gauge(count)?;
        }
        let help = "1 when the API key is Ready, else 0; `reason` is the Ready condition's reason.";
        gauge_per_object(encoder, ("keyward_apikey_ready", help, None), &keys, |k| {
            k.figures.map(|f| (i64::from(f.ready), Some(("reason", f.reason))))
        })?;
        let help = "When each API key rotates next, as a Unix timestamp (absent when no rotation is scheduled).";
        gauge_per_object(
            encoder,
            ("keyward_apikey_next_rotation_timestamp", help, Some(&Unit::Seconds)),
            &keys,
            key_time(|f| f.next_rotation),
        )?;
        let help = "DEPRECATED (use keyward_apikey_next_rotation_timestamp_seconds - time()): seconds until each API \
                    key's next rotation, negative when overdue.";
        gauge_per_object(encoder, ("keyward_apikey_next_rotation", help, Some(&Unit::Seconds)), &keys, |k| {
            Some((k.figures?.next_rotation?.duration_since(self.now).as_secs_f64(), None))
        })?;
        let help = "When each API key expires (spec.expiresAt), as a Unix timestamp (absent when it does not).";
        gauge_per_object(
            encoder,
            ("keyward_apikey_expiry_timestamp", help, Some(&Unit::Seconds)),
            &keys,
            key_time(|f| f.expires_at),
        )?;
        let help = "When each API key's current key was issued (status.lastRotationTime), as a Unix timestamp.";
        gauge_per_object(
            encoder,
            ("keyward_apikey_last_rotation_timestamp", help, Some(&Unit::Seconds)),
            &keys,
            key_time(|f| f.last_rotation),
        )?;
        encode_key_usage(encoder, &keys)
    }

    fn encode_policies(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let policies = read(&self.objects.policies);
        let flag = |b: Option<bool>| b.map(|b| (i64::from(b), None));
        let help = "Total usage of each policy divided by the gateway capacity at its current replicas (1.0 is full).";
        gauge_per_object(
            encoder,
            ("keyward_ratelimitpolicy_utilization", help, None),
            &policies,
            policy_figure(|f| f.utilization),
        )?;
        let help = "Observed requests per second of each rate-limit policy's keys.";
        gauge_per_object(
            encoder,
            ("keyward_ratelimitpolicy_observed_usage_rps", help, None),
            &policies,
            policy_figure(|f| f.usage_rps),
        )?;
        let help = "1 when the policy's last usage read succeeded (UsageAvailable=True), else 0.";
        gauge_per_object(encoder, ("keyward_ratelimitpolicy_usage_available", help, None), &policies, |p| {
            flag(p.figures.usage_available)
        })?;
        let help = "1 when something else scales the policy's target (ScalingConflict=True), else 0.";
        gauge_per_object(encoder, ("keyward_ratelimitpolicy_scaling_conflict", help, None), &policies, |p| {
            flag(p.figures.scaling_conflict)
        })?;
        encode_replicas(encoder, &policies)?;
        encode_source_errors(encoder, &policies)
    }
}

fn encode_key_usage(encoder: &mut DescriptorEncoder, keys: &Namespaced<KeyEntry>) -> fmt::Result {
    let help = "Each API key's requests per second divided by its limit (1.0 is the limit), by rate-limit policy.";
    gauge_per_object(encoder, ("keyward_apikey_utilization", help, None), keys, |k| {
        let u = k.usage.as_ref()?;
        Some((u.utilization?, Some(("policy", u.policy.as_str()))))
    })?;
    let help = "1 when the API key is NearLimit (its policy's nearLimitRatio reached), else 0.";
    gauge_per_object(encoder, ("keyward_apikey_near_limit", help, None), keys, |k| {
        let u = k.usage.as_ref()?;
        Some((i64::from(u.near_limit), Some(("policy", u.policy.as_str()))))
    })?;
    let help = "1 when the API key is Exhausted (its limit reached), else 0.";
    gauge_per_object(encoder, ("keyward_apikey_exhausted", help, None), keys, |k| {
        let u = k.usage.as_ref()?;
        Some((i64::from(u.exhausted), Some(("policy", u.policy.as_str()))))
    })
}

fn encode_replicas(encoder: &mut DescriptorEncoder, policies: &Namespaced<PolicyEntry>) -> fmt::Result {
    let mut family = encoder.encode_descriptor(
        "keyward_ratelimitpolicy_replicas",
        "Replicas of each rate-limit policy's gateway: desired by Keyward, and current.",
        None,
        MetricType::Gauge,
    )?;
    for (namespace, name, policy) in entries(policies) {
        for (kind, replicas) in [("desired", policy.figures.desired), ("current", policy.figures.current)] {
            if let Some(replicas) = replicas {
                family
                    .encode_family(&[("namespace", namespace), ("name", name), ("kind", kind)])?
                    .encode_gauge(&replicas)?;
            }
        }
    }
    Ok(())
}

fn encode_source_errors(encoder: &mut DescriptorEncoder, policies: &Namespaced<PolicyEntry>) -> fmt::Result {
    let mut family = encoder.encode_descriptor(
        "keyward_usage_source_errors",
        "Failed reads of each rate-limit policy's usage source, by reason.",
        None,
        MetricType::Counter,
    )?;
    for (namespace, name, policy) in entries(policies) {
        for (reason, count) in &policy.source_errors {
            family
                .encode_family(&[("namespace", namespace), ("name", name), ("reason", *reason)])?
                .encode_counter::<NoLabelSet, _, u64>(count, None)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::sample;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// A key in `state` (Ready or not, with that reason) that rotates next at `next`.
    fn key(state: &'static str, next: Option<Timestamp>) -> KeyFigures {
        KeyFigures { state, ready: state == "Ready", reason: state, next_rotation: next, ..KeyFigures::default() }
    }

    fn policy(
        utilization: Option<f64>,
        usage_rps: Option<f64>,
        desired: Option<i32>,
        current: Option<i32>,
    ) -> PolicyFigures {
        PolicyFigures { utilization, usage_rps, desired, current, ..PolicyFigures::default() }
    }

    #[test]
    fn key_states_are_counted_and_forgotten() {
        let m = Metrics::new();
        m.set_key("a", "one", key("Ready", None));
        m.set_key("b", "two", key("Ready", None));
        m.set_key("b", "three", key("Suspended", None));
        let text = m.encode();
        assert_eq!(sample(&text, r#"keyward_apikeys{state="Ready"}"#), Some(2.0));
        assert_eq!(sample(&text, r#"keyward_apikeys{state="Suspended"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"keyward_apikeys{state="Expired"}"#), Some(0.0));

        m.forget_key("a", "one");
        // Setting a key again replaces its state instead of counting it twice.
        m.set_key("b", "three", key("Expired", None));
        m.set_key("b", "three", key("Expired", None));
        m.forget_key("a", "never-set");
        let text = m.encode();
        assert_eq!(sample(&text, r#"keyward_apikeys{state="Ready"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"keyward_apikeys{state="Suspended"}"#), Some(0.0));
        assert_eq!(sample(&text, r#"keyward_apikeys{state="Expired"}"#), Some(1.0));

        m.set_key("b", "two", key("Pending", None));
        assert_eq!(sample(&m.encode(), r#"keyward_apikeys{state="Pending"}"#), Some(1.0));
    }

    #[test]
    fn next_rotation_is_counted_from_the_scrape_and_vanishes() {
        let m = Metrics::new();
        let now = at("2030-01-01T00:00:00Z");
        m.set_key("ns", "due-soon", key("Ready", Some(at("2030-01-01T01:00:00Z"))));
        m.set_key("ns", "overdue", key("Ready", Some(at("2029-12-31T23:59:30Z"))));
        m.set_key("ns", "never", key("Ready", None));
        let series = |name: &str| format!(r#"keyward_apikey_next_rotation_seconds{{namespace="ns",name="{name}"}}"#);

        let text = m.encode_at(now);
        assert_eq!(sample(&text, &series("due-soon")), Some(3600.0));
        assert_eq!(sample(&text, &series("overdue")), Some(-30.0));
        assert!(!text.contains(&series("never")), "{text}");
        // Computed at scrape time: a later scrape sees less time left without any new set_key.
        assert_eq!(sample(&m.encode_at(at("2030-01-01T00:10:00Z")), &series("due-soon")), Some(3000.0));

        // A key whose rotation is no longer scheduled loses its series; a forgotten key loses all of them.
        m.set_key("ns", "overdue", key("Suspended", None));
        m.forget_key("ns", "due-soon");
        let text = m.encode_at(now);
        assert!(!text.contains(&series("overdue")), "{text}");
        assert!(!text.contains("due-soon"), "{text}");
        assert!(text.contains("# TYPE keyward_apikey_next_rotation_seconds gauge"), "{text}");
    }

    #[test]
    fn policy_gauges_are_replaced_and_forgotten() {
        let m = Metrics::new();
        m.set_policy("ns", "gw", policy(Some(0.75), Some(150.5), Some(4), Some(3)));
        let text = m.encode();
        let v = |text: &str, series: &str| sample(text, series);
        assert_eq!(v(&text, r#"keyward_ratelimitpolicy_utilization{namespace="ns",name="gw"}"#), Some(0.75));
        assert_eq!(v(&text, r#"keyward_ratelimitpolicy_observed_usage_rps{namespace="ns",name="gw"}"#), Some(150.5));
        assert_eq!(v(&text, r#"keyward_ratelimitpolicy_replicas{namespace="ns",name="gw",kind="desired"}"#), Some(4.0));
        assert_eq!(v(&text, r#"keyward_ratelimitpolicy_replicas{namespace="ns",name="gw",kind="current"}"#), Some(3.0));

        m.set_policy("ns", "gw", policy(None, None, Some(5), None));
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
        m.set_policy("ns", "gw", policy(Some(0.5), None, None, None));
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
                key(state, Some(now + jiff::SignedDuration::from_secs(i))),
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
        assert_eq!(text.matches("keyward_apikey_next_rotation_timestamp_seconds{").count(), 10_000);
        // The next scrape's buffer is sized from this one.
        assert!(m.encode_at(now).capacity() >= text.len());
    }

    #[test]
    fn per_key_gauges_name_the_key_and_hold_absolute_times() {
        let m = Metrics::new();
        let figures = KeyFigures {
            state: "Ready",
            ready: true,
            reason: "KeyIssued",
            next_rotation: Some(at("2030-01-01T01:00:00Z")),
            expires_at: Some(at("2030-02-01T00:00:00Z")),
            last_rotation: Some(at("2029-12-01T00:00:00.5Z")),
        };
        m.set_key("ns", "k", figures);
        m.set_key("ns", "broken", KeyFigures { state: "InvalidSpec", reason: "InvalidSpec", ..KeyFigures::default() });
        let text = m.encode_at(at("2030-01-01T00:00:00Z"));
        let v = |series: &str| sample(&text, series);
        assert_eq!(v(r#"keyward_apikey_ready{namespace="ns",name="k",reason="KeyIssued"}"#), Some(1.0));
        assert_eq!(v(r#"keyward_apikey_ready{namespace="ns",name="broken",reason="InvalidSpec"}"#), Some(0.0));
        let ts = |name: &str| v(&format!(r#"keyward_apikey_{name}_timestamp_seconds{{namespace="ns",name="k"}}"#));
        assert_eq!(ts("next_rotation"), Some(1_893_459_600.0));
        assert_eq!(ts("expiry"), Some(1_896_134_400.0));
        assert_eq!(ts("last_rotation"), Some(1_890_777_600.5));
        // The absolute time does not move with the scrape's clock.
        let later = m.encode_at(at("2030-01-01T00:30:00Z"));
        let next = r#"keyward_apikey_next_rotation_timestamp_seconds{namespace="ns",name="k"}"#;
        assert_eq!(sample(&later, next), Some(1_893_459_600.0));
        // A key with none of these times has no time series.
        assert!(!text.contains(r#"timestamp_seconds{namespace="ns",name="broken"}"#), "{text}");
    }

    #[test]
    fn key_usage_is_kept_apart_from_the_key_state_and_cleared() {
        let m = Metrics::new();
        let usage = KeyUsageFigures { policy: "gw".into(), utilization: Some(0.9), near_limit: true, exhausted: false };
        // The policy's controller may report a key before the key's own controller does: it is not counted by state.
        m.set_key_usage("ns", "k", usage);
        let text = m.encode();
        assert_eq!(sample(&text, r#"keyward_apikeys{state="Ready"}"#), Some(0.0));
        assert_eq!(sample(&text, r#"keyward_apikey_utilization{namespace="ns",name="k",policy="gw"}"#), Some(0.9));
        assert_eq!(sample(&text, r#"keyward_apikey_near_limit{namespace="ns",name="k",policy="gw"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"keyward_apikey_exhausted{namespace="ns",name="k",policy="gw"}"#), Some(0.0));
        assert!(!text.contains(r#"keyward_apikey_ready{"#), "{text}");

        m.set_key("ns", "k", key("Ready", None));
        m.set_key("ns", "k", key("Ready", None));
        let text = m.encode();
        assert_eq!(sample(&text, r#"keyward_apikeys{state="Ready"}"#), Some(1.0));
        assert!(text.contains(r#"keyward_apikey_utilization{namespace="ns",name="k",policy="gw"}"#), "{text}");

        m.clear_key_usage("ns", "k");
        let text = m.encode();
        assert!(!text.contains("policy=\"gw\""), "{text}");
        assert_eq!(sample(&text, r#"keyward_apikeys{state="Ready"}"#), Some(1.0));
        // Clearing the usage of a key only the policy knew forgets it.
        m.set_key_usage(
            "ns",
            "other",
            KeyUsageFigures { policy: "gw".into(), utilization: None, near_limit: false, exhausted: false },
        );
        m.clear_key_usage("ns", "other");
        assert!(!m.encode().contains("other"));
    }

    #[test]
    fn policy_conditions_are_flags() {
        let m = Metrics::new();
        let figures =
            PolicyFigures { usage_available: Some(false), scaling_conflict: Some(true), ..PolicyFigures::default() };
        m.set_policy("ns", "gw", figures);
        m.set_policy("ns", "plain", PolicyFigures::default());
        let text = m.encode();
        assert_eq!(sample(&text, r#"keyward_ratelimitpolicy_usage_available{namespace="ns",name="gw"}"#), Some(0.0));
        assert_eq!(sample(&text, r#"keyward_ratelimitpolicy_scaling_conflict{namespace="ns",name="gw"}"#), Some(1.0));
        assert!(!text.contains(r#"name="plain""#), "{text}");
    }
}
