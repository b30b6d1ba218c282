//! The enforcement step's part of the policy status, pure. It is written by the RateLimitPolicy controller with
//! the rest of the status (one field manager): on a full cycle its conditions join the plan's; between cycles (no
//! poll due) the status is written only when the enforcement part changed, with `Ready` following it.

use jiff::Timestamp;
use kube::Resource;

use super::Outcome;
use crate::api::ratelimit::{RateLimitPolicy, RateLimitPolicyStatus};
use crate::ratelimit::condition::{ENFORCED, ENFORCEMENT_CONFLICT, READY};
use crate::ratelimit::plan;
use crate::runtime::conditions::{self, Desired};

fn is_enforcement(type_: &str) -> bool {
    type_ == ENFORCED || type_ == ENFORCEMENT_CONFLICT
}

/// A full cycle's status `new` with the outcome's limit, and its conditions' messages as rendered now (the plan's
/// status keeps an old message while status and reason stay; the enforcement messages name keys, which must not
/// go stale).
pub fn complete(new: &mut RateLimitPolicyStatus, o: &Outcome) {
    new.enforced_limit = o.enforced_limit.clone();
    for c in new.conditions.iter_mut() {
        if let Some(d) = o.conditions.iter().find(|d| d.type_ == c.type_) {
            c.message = d.message.clone();
        }
    }
}

/// The status between two cycles: the current one with the enforcement conditions and limit of `o`, and `Ready`
/// recomputed when they decide it; `None` when the enforcement part did not change (nothing to write). `limit` is
/// the effective limit as shown (for the `Ready=True` message).
pub fn between_cycles(
    policy: &RateLimitPolicy,
    o: &Outcome,
    limit: &str,
    now: Timestamp,
) -> Option<RateLimitPolicyStatus> {
    let current = policy.status.clone().unwrap_or_default();
    let generation = policy.meta().generation;
    let mut merged = conditions::merge(&current.conditions, &o.conditions, generation, now);
    merged.retain(|c| !is_enforcement(&c.type_) || o.conditions.iter().any(|d| d.type_ == c.type_));
    let part = |cs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]| {
        cs.iter()
            .filter(|c| is_enforcement(&c.type_))
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone(), c.message.clone()))
            .collect::<Vec<_>>()
    };
    if part(&merged) == part(&current.conditions) && o.enforced_limit == current.enforced_limit {
        return None;
    }
    if let Some(ready) = ready(&current, &merged, o, policy.spec.usage.is_some(), limit) {
        merged = conditions::merge(&merged, &[ready], generation, now);
    }
    Some(RateLimitPolicyStatus { conditions: merged, enforced_limit: o.enforced_limit.clone(), ..current })
}

/// `Ready` between cycles: a usage or scaling problem the last cycle found keeps its `Ready`; otherwise `Ready`
/// follows `Enforced` (a problem), or turns `True` again when it was `False` because of enforcement.
fn ready(
    current: &RateLimitPolicyStatus,
    merged: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    o: &Outcome,
    has_usage: bool,
    limit: &str,
) -> Option<Desired> {
    let other_problem =
        merged.iter().any(|c| !is_enforcement(&c.type_) && plan::is_problem(&c.type_, c.status == "True", &c.reason));
    if other_problem {
        return None;
    }
    let find = |cs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition], t: &str| {
        cs.iter().find(|c| c.type_ == t).cloned()
    };
    let was_from_enforcement = match (find(&current.conditions, READY), find(&current.conditions, ENFORCED)) {
        (Some(r), Some(e)) => r.status == "False" && e.status == "False" && r.reason == e.reason,
        _ => false,
    };
    let problem = o.conditions.iter().any(|d| plan::is_problem(d.type_, d.status, d.reason));
    (problem || was_from_enforcement).then(|| plan::ready(&o.conditions, has_usage, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(conditions: Vec<Desired>, enforced_limit: Option<&str>) -> RateLimitPolicy {
        let mut p = RateLimitPolicy::new(
            "p",
            serde_json::from_value(serde_json::json!({"limit": {"requests": 600, "period": "1m"}})).expect("spec"),
        );
        p.metadata.generation = Some(1);
        p.status = Some(RateLimitPolicyStatus {
            conditions: conditions::merge(&[], &conditions, Some(1), Timestamp::UNIX_EPOCH),
            enforced_limit: enforced_limit.map(str::to_string),
            ..Default::default()
        });
        p
    }

    fn enforced(status: bool, reason: &'static str) -> Vec<Desired> {
        vec![Desired::new(ENFORCED, status, reason, "m"), Desired::new(ENFORCEMENT_CONFLICT, false, "NoConflict", "n")]
    }

    fn ready_of(s: &RateLimitPolicyStatus) -> (String, String) {
        let r = s.conditions.iter().find(|c| c.type_ == READY).expect("Ready");
        (r.status.clone(), r.reason.clone())
    }

    #[test]
    fn nothing_changed_writes_nothing() {
        let mut current = enforced(true, "Enforced");
        current.push(Desired::new(READY, true, "LimitOnly", "x"));
        let p = policy(current, Some("600/Minute"));
        let o = Outcome { conditions: enforced(true, "Enforced"), enforced_limit: Some("600/Minute".into()) };
        assert!(between_cycles(&p, &o, "600/1m", Timestamp::UNIX_EPOCH).is_none());
    }

    #[test]
    fn a_new_limit_is_written_and_ready_stays() {
        let mut current = enforced(true, "Enforced");
        current.push(Desired::new(READY, true, "LimitOnly", "x"));
        let p = policy(current, Some("600/Minute"));
        let o = Outcome { conditions: enforced(true, "Enforced"), enforced_limit: Some("6000/Minute".into()) };
        let s = between_cycles(&p, &o, "6000/1m", Timestamp::UNIX_EPOCH).expect("a write");
        assert_eq!(s.enforced_limit.as_deref(), Some("6000/Minute"));
        assert_eq!(ready_of(&s), ("True".into(), "LimitOnly".into()));
    }

    #[test]
    fn ready_follows_enforced_both_ways() {
        let mut current = enforced(true, "Enforced");
        current.push(Desired::new(READY, true, "LimitOnly", "x"));
        let p = policy(current, Some("600/Minute"));
        let conflict = Outcome { conditions: enforced(false, "EnforcementConflict"), enforced_limit: None };
        let s = between_cycles(&p, &conflict, "600/1m", Timestamp::UNIX_EPOCH).expect("a write");
        assert_eq!(ready_of(&s), ("False".into(), "EnforcementConflict".into()));
        assert_eq!(s.enforced_limit, None);
        let mut p = p;
        p.status = Some(s);
        let back = Outcome { conditions: enforced(true, "Enforced"), enforced_limit: Some("600/Minute".into()) };
        let s = between_cycles(&p, &back, "600/1m", Timestamp::UNIX_EPOCH).expect("a write");
        assert_eq!(ready_of(&s), ("True".into(), "LimitOnly".into()));
    }

    #[test]
    fn a_usage_problem_keeps_its_ready_and_removing_enforce_drops_the_conditions() {
        let mut current = enforced(true, "Enforced");
        current.push(Desired::new(crate::ratelimit::condition::USAGE_AVAILABLE, false, "Timeout", "t"));
        current.push(Desired::new(READY, false, "Timeout", "t"));
        let p = policy(current, Some("600/Minute"));
        let conflict = Outcome { conditions: enforced(false, "EnforcementConflict"), enforced_limit: None };
        let s = between_cycles(&p, &conflict, "600/1m", Timestamp::UNIX_EPOCH).expect("a write");
        assert_eq!(ready_of(&s), ("False".into(), "Timeout".into()));
        let s = between_cycles(&p, &Outcome::default(), "600/1m", Timestamp::UNIX_EPOCH).expect("a write");
        assert!(!s.conditions.iter().any(|c| is_enforcement(&c.type_)));
        assert_eq!(s.enforced_limit, None);
    }
}
