//! No stale verdicts: once usage has been unavailable for several polls, a key's `NearLimit` and `Exhausted` say
//! `Unknown` with the reason, rather than keeping their last value forever.

use super::*;

fn scrape_spec() -> crate::api::ratelimit::RateLimitPolicySpec {
    spec(
        json!({"usage": {"scrape": {"urls": ["http://gw:9000/metrics"], "metric": "requests_total"}, "interval": "10s"}}),
    )
}

fn timeout() -> SourceError {
    SourceError::Timeout { url: "http://gw:9000/metrics".into(), timeout: std::time::Duration::from_secs(5) }
}

/// A key that was exhausted at its last measurement.
fn exhausted_key() -> Arc<ApiKey> {
    let cond = |t: &str, reason: &str| json!({"type": t, "status": "True", "reason": reason, "message": "", "lastTransitionTime": "2026-06-01T00:00:00Z"});
    key(
        "a",
        json!({"usage": {"requestsPerSecond": 2.0, "limit": 1.0, "utilization": 2.0, "observedAt": "2026-06-01T00:00:00Z"},
               "conditions": [cond("NearLimit", "AboveThreshold"), cond("Exhausted", "LimitReached")]}),
    )
}

/// The policy's status with `UsageAvailable=False` since `since`.
fn down_since(since: &str) -> RateLimitPolicyStatus {
    serde_json::from_value(
        json!({"conditions": [{"type": "UsageAvailable", "status": "False", "reason": "SourceTimeout",
        "message": "", "lastTransitionTime": since}]}),
    )
    .expect("status")
}

#[test]
fn verdicts_turn_unknown_after_three_missed_polls_and_only_once() {
    let now = ts("2026-06-01T00:01:00Z");
    let checked = check(&scrape_spec(), now).expect("valid");
    let o = observed(Err(timeout()), None, vec![exhausted_key()]);
    // Down for two polls (20 s): the last verdict stands.
    let p = run(&checked, &o, &down_since("2026-06-01T00:00:40Z"), now);
    assert!(p.keys.is_empty(), "nothing written yet");
    assert_eq!(p.figures.keys_exhausted, Some(1));
    // Just reached: no usage for a source whose UsageAvailable turned False 30 s ago.
    let p = run(&checked, &o, &down_since("2026-06-01T00:00:30Z"), now);
    assert_eq!(p.keys.len(), 1, "the stale verdicts are written");
    let w = &p.keys[0];
    for type_ in ["NearLimit", "Exhausted"] {
        let c = w.status.conditions.iter().find(|c| c.type_ == type_).expect("condition");
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("Unknown", "UsageUnavailable"), "{type_}");
        assert!(c.message.contains("2026-06-01T00:00:30Z") && c.message.contains("SourceTimeout"), "{}", c.message);
        assert_eq!(c.last_transition_time.0, now, "{type_}: a transition");
    }
    assert_eq!(w.status.usage.requests_per_second, 2.0, "the last usage is kept, with its observedAt");
    assert_eq!(w.status.usage.observed_at.as_ref().map(|t| t.0), Some(ts("2026-06-01T00:00:00Z")));
    assert!(w.note.is_none());
    assert_eq!((p.figures.keys_near_limit, p.figures.keys_exhausted), (Some(0), Some(0)), "unknown is not counted");
    // Written once: with the verdicts Unknown, the next cycles write nothing.
    let mut k = (*exhausted_key()).clone();
    k.status.as_mut().expect("status").conditions = w.status.conditions.clone();
    let o = observed(Err(timeout()), None, vec![Arc::new(k)]);
    assert!(run(&checked, &o, &down_since("2026-06-01T00:00:00Z"), now).keys.is_empty());
}

#[test]
fn a_key_never_measured_and_a_source_that_just_failed_write_nothing() {
    let now = ts("2026-06-01T00:01:00Z");
    let checked = check(&scrape_spec(), now).expect("valid");
    let o = observed(Err(timeout()), None, vec![key("new", json!({}))]);
    assert!(run(&checked, &o, &down_since("2026-01-01T00:00:00Z"), now).keys.is_empty(), "no verdict to go stale");
    // The first failed poll: UsageAvailable is still True in the status.
    let o = observed(Err(timeout()), None, vec![exhausted_key()]);
    assert!(run(&checked, &o, &RateLimitPolicyStatus::default(), now).keys.is_empty());
}

#[test]
fn usage_back_gives_a_fresh_verdict() {
    let now = ts("2026-06-01T00:01:00Z");
    let checked = check(&scrape_spec(), now).expect("valid");
    let o = observed(Err(timeout()), None, vec![exhausted_key()]);
    let stale = run(&checked, &o, &down_since("2026-06-01T00:00:00Z"), now);
    let mut k = (*exhausted_key()).clone();
    k.status.as_mut().expect("status").conditions = stale.keys[0].status.conditions.clone();
    let o = observed(rates(&[("a", 0.5)]), None, vec![Arc::new(k)]);
    let p = run(&checked, &o, &down_since("2026-06-01T00:00:00Z"), now);
    let w = p.keys.first().expect("written");
    let c = w.status.conditions.iter().find(|c| c.type_ == "Exhausted").expect("Exhausted");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "WithinLimit"));
}

#[test]
fn an_unverified_source_is_a_warning_condition_and_one_event() {
    let now = ts("2026-06-01T00:01:00Z");
    let insecure = spec(json!({"usage": {"prometheus": {"address": "https://p", "query": "up",
                                                        "tls": {"insecureSkipVerify": true}}}}));
    let checked = check(&insecure, now).expect("valid");
    let o = observed(rates(&[("a", 0.5)]), None, vec![]);
    let p = run(&checked, &o, &RateLimitPolicyStatus::default(), now);
    let c = condition(&p, condition::SOURCE_VERIFIED);
    assert!(!c.status && c.reason == "InsecureSkipVerify", "{c:?}");
    assert_eq!(p.events.iter().filter(|e| e.reason == "InsecureSource").count(), 1);
    let mut pol = policy();
    pol.spec = insecure;
    let status = super::status(&pol, p.conditions, p.figures, Some("60/1m".into()), now);
    assert!(run(&checked, &o, &status, now).events.iter().all(|e| e.reason != "InsecureSource"), "warned once");
    // A verified source has no such condition at all.
    let p = run(&check(&spec(json!({})), now).expect("valid"), &o, &status, now);
    assert!(p.conditions.iter().all(|c| c.type_ != condition::SOURCE_VERIFIED));
}
