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

impl Metrics {
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

/// One gauge family with a series per object (`namespace`, `name`) for which `value` has a figure.
fn gauge_per_object<T, V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    (name, help, unit): (&str, &str, Option<&Unit>),
    objects: &Namespaced<T>,
    value: impl Fn(&T) -> Option<V>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (namespace, object, entry) in entries(objects) {
        if let Some(v) = value(entry) {
            family.encode_family(&[("namespace", namespace), ("name", object)])?.encode_gauge(&v)?;
        }
    }
    Ok(())
}

impl ObjectsAt {
    fn encode_keys(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let keys = read(&self.objects.keys);
        let mut counts: Vec<(&str, u64)> = KEY_STATES.iter().map(|state| (*state, 0)).collect();
        for (_, _, key) in entries(&keys) {
            match counts.iter_mut().find(|(state, _)| *state == key.state) {
                Some((_, count)) => *count += 1,
                None => counts.push((key.state, 1)),
            }
        }
        let mut family = encoder.encode_descriptor("keyward_apikeys", "API keys by state.", None, MetricType::Gauge)?;
        for (state, count) in &counts {
            family.encode_family(&[("state", *state)])?.encode_gauge(count)?;
        }
        let help = "Seconds until each API key's next rotation (negative when overdue; absent when none is scheduled).";
        gauge_per_object(encoder, ("keyward_apikey_next_rotation", help, Some(&Unit::Seconds)), &keys, |key| {
            key.next_rotation.map(|at| at.duration_since(self.now).as_secs_f64())
        })
    }

    fn encode_policies(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let policies = read(&self.objects.policies);
        let help = "Total usage of each policy divided by the gateway capacity at its current replicas (1.0 is full).";
        gauge_per_object(encoder, ("keyward_ratelimitpolicy_utilization", help, None), &policies, |p| p.utilization)?;
        let help = "Observed requests per second of each rate-limit policy's keys.";
        gauge_per_object(encoder, ("keyward_ratelimitpolicy_observed_usage_rps", help, None), &policies, |p| {
            p.usage_rps
        })?;
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
    use crate::metrics::tests::sample;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
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
}
