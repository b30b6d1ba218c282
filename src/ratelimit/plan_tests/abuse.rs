//! `onExhausted: Suspend`: a key Exhausted without a break for `after` gets `SuspendedForAbuse`, which sticks
//! until a person clears it with the `keyward.dev/abuse-cleared` annotation.

use super::*;

fn suspending() -> crate::api::ratelimit::RateLimitPolicySpec {
    spec(json!({"onExhausted": {"action": "Suspend", "after": "5m"}}))
}

/// A key Exhausted since `since`, with `extra` conditions and annotations.
fn exhausted_since(since: &str, extra: Vec<Value>, annotations: Value) -> Arc<ApiKey> {
    let mut conditions = vec![json!({"type": "Exhausted", "status": "True", "reason": "LimitReached", "message": "",
                                     "lastTransitionTime": since})];
    conditions.extend(extra);
    let k = key(
        "a",
        json!({"usage": {"requestsPerSecond": 2.0, "limit": 1.0, "utilization": 2.0}, "conditions": conditions}),
    );
    let mut k = (*k).clone();
    k.metadata.annotations = serde_json::from_value(annotations).expect("annotations");
    Arc::new(k)
}

fn abuse_condition(p: &Plan) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    p.keys.first()?.status.conditions.iter().find(|c| c.type_ == key_usage::SUSPENDED_FOR_ABUSE)
}

#[test]
fn exhausted_for_longer_than_after_is_suspended_once() {
    let now = ts("2026-06-01T01:00:00Z");
    let checked = check(&suspending(), now).expect("valid");
    assert_eq!(checked.suspend_after, Some(std::time::Duration::from_secs(300)));
    // Exhausted for 4 minutes: not yet (the usage write happens for the first usage, without the condition).
    let o = observed(rates(&[("a", 30.0)]), None, vec![exhausted_since("2026-06-01T00:56:00Z", vec![], json!(null))]);
    let p = run(&checked, &o, &RateLimitPolicyStatus::default(), now);
    assert!(abuse_condition(&p).is_none());
    // For 5 minutes: suspended, with a Warning event that says how to clear it.
    let o = observed(rates(&[("a", 30.0)]), None, vec![exhausted_since("2026-06-01T00:55:00Z", vec![], json!(null))]);
    let p = run(&checked, &o, &RateLimitPolicyStatus::default(), now);
    let c = abuse_condition(&p).expect("SuspendedForAbuse");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "ExhaustedTooLong"));
    let note = p.keys[0].note.as_ref().expect("event");
    assert_eq!((note.type_, note.reason), (EventType::Warning, "SuspendedForAbuse"));
    assert!(note.note.contains("keyward.dev/abuse-cleared"), "{}", note.note);
    // The policy without the action: nothing.
    let checked = check(&spec(json!({})), now).expect("valid");
    assert!(abuse_condition(&run(&checked, &o, &RateLimitPolicyStatus::default(), now)).is_none());
}

#[test]
fn the_suspension_sticks_when_traffic_stops_and_goes_when_a_person_clears_it() {
    let now = ts("2026-06-01T02:00:00Z");
    let checked = check(&suspending(), now).expect("valid");
    let held = json!({"type": "SuspendedForAbuse", "status": "True", "reason": "ExhaustedTooLong", "message": "m",
                      "lastTransitionTime": "2026-06-01T01:00:00Z"});
    // No traffic any more (the key has no material): Exhausted clears, the suspension stays.
    let o = observed(
        rates(&[("b", 1.0)]),
        None,
        vec![exhausted_since("2026-06-01T00:55:00Z", vec![held.clone()], json!(null))],
    );
    let p = run(&checked, &o, &RateLimitPolicyStatus::default(), now);
    let c = abuse_condition(&p).expect("kept");
    assert_eq!(c.status, "True");
    assert!(p.keys[0].note.is_none(), "no second SuspendedForAbuse event");
    // Cleared before it turned on: still held.
    let early = json!({"keyward.dev/abuse-cleared": "2026-06-01T00:59:59Z"});
    let o =
        observed(rates(&[("b", 1.0)]), None, vec![exhausted_since("2026-06-01T00:55:00Z", vec![held.clone()], early)]);
    assert!(abuse_condition(&run(&checked, &o, &RateLimitPolicyStatus::default(), now)).is_some());
    // Cleared after: the condition goes (a write that removes it).
    let cleared = json!({"keyward.dev/abuse-cleared": "2026-06-01T01:30:00Z"});
    let o = observed(rates(&[("b", 1.0)]), None, vec![exhausted_since("2026-06-01T00:55:00Z", vec![held], cleared)]);
    let p = run(&checked, &o, &RateLimitPolicyStatus::default(), now);
    assert_eq!(p.keys.len(), 1, "written");
    assert!(abuse_condition(&p).is_none());
}
