//! The plan of one cycle, from observed inputs to the exact writes: pure, no API server.

use std::sync::Arc;

use super::*;
use crate::ratelimit::check;
use crate::ratelimit::quota::{Tallies, Used};

/// The spec checked with the default floors.
fn check(spec: &crate::api::ratelimit::RateLimitPolicySpec, now: Timestamp) -> Result<Checked, String> {
    check::check(spec, now, &crate::minimums::Minimums::default())
}
use crate::usage::Rates;

fn ts(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

fn spec(extra: Value) -> crate::api::ratelimit::RateLimitPolicySpec {
    let mut base = json!({
        "limit": {"requests": 60, "period": "1m"},
        "scaling": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gw"},
                    "minReplicas": 1, "maxReplicas": 10, "capacityPerReplica": {"requests": 10, "period": "1s"},
                    "targetUtilization": 100},
    });
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    serde_json::from_value(base).expect("spec")
}

use serde_json::{Value, json};

fn key(name: &str, status: Value) -> Arc<ApiKey> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "keyward.dev/v1alpha1", "kind": "ApiKey",
            "metadata": {"name": name, "namespace": "ns", "generation": 1},
            "spec": {"rateLimitPolicyRef": {"name": "p"}}, "status": status,
        }))
        .expect("key"),
    )
}

fn observed(rates: Result<Rates, SourceError>, target: Option<Target>, members: Vec<Arc<ApiKey>>) -> Observed {
    Observed { rates, used: Used::None, members, target, source: "test".into(), target_name: "Deployment gw".into() }
}

fn rates(pairs: &[(&str, f64)]) -> Result<Rates, SourceError> {
    Ok(pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect())
}

fn run(checked: &Checked, o: &Observed, current: &RateLimitPolicyStatus, now: Timestamp) -> Plan {
    let stabilizer = Stabilizer::default();
    let tallies = Tallies::new();
    let (override_changed, seeded) = (false, true);
    plan(&Inputs {
        checked,
        observed: o,
        current,
        override_changed,
        stabilizer: &stabilizer,
        seeded,
        tallies: &tallies,
        now,
    })
}

fn condition<'a>(p: &'a Plan, type_: &str) -> &'a Desired {
    p.conditions.iter().find(|c| c.type_ == type_).expect("condition")
}

#[test]
fn usage_above_capacity_scales_up_and_marks_exhausted_keys() {
    let now = ts("2026-06-01T00:00:00Z");
    let checked = check(&spec(json!({})), now).expect("valid");
    let o = observed(
        rates(&[("a", 0.5), ("b", 25.0)]),
        Some(Target::Read { replicas: 2, conflict: Conflict::None }),
        vec![key("a", json!({})), key("b", json!({}))],
    );
    let mut p = run(&checked, &o, &RateLimitPolicyStatus::default(), now);
    assert_eq!(
        p.scale,
        Some(ScaleWrite { from: 2, to: 3, what: "Deployment gw".into(), why: p.scale.clone().expect("scale").why })
    );
    assert_eq!(p.keys.len(), 2, "both keys get their first usage");
    let b = p.keys.iter().find(|w| w.key.metadata.name.as_deref() == Some("b")).expect("b");
    assert!(b.status.exhausted() && b.note.as_ref().is_some_and(|n| n.reason == "Exhausted"));
    assert_eq!((p.figures.keys_near_limit, p.figures.keys_exhausted), (Some(1), Some(1)));
    scaled(&mut p, Ok(()), now);
    assert_eq!(p.figures.current_replicas, Some(3));
    assert!(p.events.iter().any(|e| e.reason == "ScaledUp"));
    assert_eq!(condition(&p, condition::SCALING_ACTIVE).reason, "ScaledUp");
}

#[test]
fn another_writer_of_the_replicas_holds_them_and_warns_once() {
    let now = ts("2026-06-01T00:00:00Z");
    let checked = check(&spec(json!({})), now).expect("valid");
    for (conflict, reason) in
        [(Conflict::Hpa("h".into()), "HorizontalPodAutoscaler"), (Conflict::Policy("older".into()), "RateLimitPolicy")]
    {
        let o = observed(rates(&[("a", 100.0)]), Some(Target::Read { replicas: 1, conflict }), vec![]);
        let p = run(&checked, &o, &RateLimitPolicyStatus::default(), now);
        assert!(p.scale.is_none(), "{reason}: nothing is written");
        let c = condition(&p, condition::SCALING_CONFLICT);
        assert!(c.status && c.reason == reason);
        assert_eq!(p.events.iter().filter(|e| e.reason == "ScalingConflict").count(), 1);
        let status = super::status(&policy(), p.conditions, p.figures, Some("60/1m".into()), now);
        let again = run(&checked, &o, &status, now);
        assert!(again.events.is_empty(), "{reason}: the warning is not repeated while the conflict lasts");
    }
}

#[test]
fn no_usage_holds_replicas_writes_no_key_and_says_why_on_ready() {
    let now = ts("2026-06-01T00:00:00Z");
    let checked = check(
        &spec(json!({"usage": {"scrape": {"urls": ["http://gw:9000/metrics"], "metric": "requests_total"}}})),
        now,
    )
    .expect("ok");
    let err = SourceError::Timeout { url: "http://gw:9000/metrics".into(), timeout: std::time::Duration::from_secs(5) };
    let near = json!({"conditions": [{"type": "NearLimit", "status": "True", "reason": "AboveThreshold", "message": "",
                                      "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
    let o = observed(Err(err), Some(Target::Read { replicas: 4, conflict: Conflict::None }), vec![key("a", near)]);
    let p = run(&checked, &o, &RateLimitPolicyStatus::default(), now);
    assert!(p.scale.is_none() && p.keys.is_empty());
    assert_eq!(p.figures.keys_near_limit, Some(1), "counted from the key's status");
    assert_eq!(condition(&p, condition::SCALING_ACTIVE).reason, "UsageUnavailable");
    let mut pol = policy();
    pol.spec = spec(json!({"usage": {"scrape": {"urls": ["http://gw:9000/metrics"], "metric": "requests_total"}}}));
    let status = super::status(&pol, p.conditions, p.figures, Some("60/1m".into()), now);
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").expect("ready");
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "SourceTimeout"));
}

#[test]
fn a_failed_scale_write_is_a_condition_not_an_error() {
    let now = ts("2026-06-01T00:00:00Z");
    let checked = check(&spec(json!({})), now).expect("valid");
    let o = observed(rates(&[("a", 50.0)]), Some(Target::Read { replicas: 1, conflict: Conflict::None }), vec![]);
    let mut p = run(&checked, &o, &RateLimitPolicyStatus::default(), now);
    let err = scale::ScaleError::NotFound { kind: "Deployment".into(), ns: "ns".into(), name: "gw".into() };
    scaled(&mut p, Err(err), now);
    assert_eq!(p.figures.current_replicas, Some(1), "unchanged");
    let c = condition(&p, condition::SCALING_ACTIVE);
    assert!(!c.status && c.reason == "TargetNotFound");
}

#[test]
fn an_override_starting_and_ending_is_an_event_each() {
    let start = ts("2026-06-01T00:00:00Z");
    let boosted =
        spec(json!({"temporaryOverrides": [{"requests": 600, "period": "1m", "until": "2026-06-01T01:00:00Z",
                                                       "reason": "launch"}]}));
    let checked = check(&boosted, start).expect("valid");
    let o = observed(rates(&[("a", 1.0)]), None, vec![]);
    let stabilizer = Stabilizer::default();
    let current = RateLimitPolicyStatus::default();
    let inputs = Inputs {
        checked: &checked,
        observed: &o,
        current: &current,
        override_changed: true,
        stabilizer: &stabilizer,
        seeded: true,
        tallies: &Tallies::new(),
        now: start,
    };
    let p = plan(&inputs);
    assert!(p.events.iter().any(|e| e.reason == "OverrideStarted"));
    let mut pol = policy();
    pol.spec = boosted.clone();
    let status = super::status(&pol, p.conditions, p.figures, Some("600/1m".into()), start);
    let later = ts("2026-06-01T01:00:00Z");
    let checked = check(&boosted, later).expect("valid");
    let p = run(&checked, &o, &status, later);
    assert!(p.events.iter().any(|e| e.reason == "OverrideExpired"), "{:?}", p.events);
    assert!(!condition(&p, condition::OVERRIDE_ACTIVE).status);
}

fn policy() -> RateLimitPolicy {
    serde_json::from_value(json!({
        "apiVersion": "keyward.dev/v1alpha1", "kind": "RateLimitPolicy",
        "metadata": {"name": "p", "namespace": "ns", "generation": 1}, "spec": spec(json!({})),
    }))
    .expect("policy")
}

mod abuse;
mod calendar;
mod stale;
