//! Each key's usage against the policy's limit: its `status.usage`, the `NearLimit` and `Exhausted` conditions with
//! hysteresis, and whether a change is worth a write. Pure.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::api::apikey::KeyUsage;
use crate::api::common::Time;
use crate::runtime::conditions::{self, Desired};
use crate::usage::Rates;

/// Condition types this controller owns on an ApiKey.
pub const NEAR_LIMIT: &str = "NearLimit";
pub const EXHAUSTED: &str = "Exhausted";
/// The key stayed `Exhausted` longer than its policy's `onExhausted.after` and is suspended until a person clears
/// it (see [`ABUSE_CLEARED`]). Sticky: it outlives the key leaving its policy.
pub const SUSPENDED_FOR_ABUSE: &str = "SuspendedForAbuse";
/// Annotation a person sets to an RFC 3339 time to clear `SuspendedForAbuse` that turned on before that time.
pub const ABUSE_CLEARED: &str = "keyward.dev/abuse-cleared";

/// The types this controller writes on an ApiKey.
fn owned(type_: &str) -> bool {
    type_ == NEAR_LIMIT || type_ == EXHAUSTED || type_ == SUSPENDED_FOR_ABUSE
}

/// The key's `SuspendedForAbuse=True` condition, unless a person cleared it (`keyward.dev/abuse-cleared` holds a
/// time at or after the condition turned on). Read by both controllers: the ApiKey controller revokes the key while
/// it holds.
pub fn abuse(key: &crate::api::ApiKey) -> Option<&Condition> {
    let c = key.status.as_ref()?.conditions.iter().find(|c| c.type_ == SUSPENDED_FOR_ABUSE && c.status == "True")?;
    let cleared = key
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ABUSE_CLEARED))
        .and_then(|v| v.parse::<Timestamp>().ok())
        .is_some_and(|at| at >= c.last_transition_time.0);
    (!cleared).then_some(c)
}

/// Default `nearLimitRatio`.
pub const DEFAULT_NEAR_LIMIT_RATIO: f64 = 0.8;

/// A condition that is on clears only once utilization falls this far below its threshold, so usage hovering at
/// the threshold does not flip it every poll.
pub const HYSTERESIS: f64 = 0.05;

/// A utilization change smaller than this (absolute, 0.05 = 5 points) is not worth a status write.
pub const MEANINGFUL_UTILIZATION_CHANGE: f64 = 0.05;

/// A key's requests per second: the sum of the series labelled with its name, its current keyId and, during the
/// grace period, its previous keyId (traffic on the old key is still this key's traffic). Labels are matched
/// exactly; a label value that is none of these is not this key's.
pub fn key_rps(rates: &Rates, name: &str, key_id: Option<&str>, previous_key_id: Option<&str>) -> f64 {
    let mut ids: Vec<&str> = vec![name];
    ids.extend(key_id);
    ids.extend(previous_key_id);
    ids.sort_unstable();
    ids.dedup();
    ids.iter().filter_map(|id| rates.get(*id)).sum()
}

/// The traffic on the key's previous key (the one its status names) when the usage holds a series for that key id:
/// its rate, and since when it has been idle (kept from the last report while it stays idle). `None` without a
/// previous key or without data for it (usage labelled by name, or the series gone).
pub fn previous_usage(
    rates: &Rates,
    current: &crate::api::ApiKeyStatus,
    now: Timestamp,
) -> Option<crate::api::apikey::PreviousKeyUsage> {
    let id = current.previous_key_id.as_ref()?;
    let rps = *rates.get(id)?;
    let old = current.usage.as_ref().and_then(|u| u.previous_key.as_ref()).filter(|p| &p.key_id == id);
    let idle_since = if rps > 0.0 { None } else { old.and_then(|p| p.idle_since.clone()).or(Some(Time(now))) };
    Some(crate::api::apikey::PreviousKeyUsage { key_id: id.clone(), requests_per_second: round(rps), idle_since })
}

/// Whether a condition should be on: it turns on at `threshold` and, once on, stays on until utilization falls
/// below `threshold - HYSTERESIS`.
pub fn with_hysteresis(utilization: f64, threshold: f64, was_on: bool) -> bool {
    if was_on { utilization >= threshold - HYSTERESIS } else { utilization >= threshold }
}

/// What this controller wants on an ApiKey.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyStatus {
    pub usage: KeyUsage,
    /// `NearLimit` and `Exhausted`, with settled transition times.
    pub conditions: Vec<Condition>,
}

impl KeyStatus {
    pub fn near_limit(&self) -> bool {
        is_true(&self.conditions, NEAR_LIMIT)
    }
    pub fn exhausted(&self) -> bool {
        is_true(&self.conditions, EXHAUSTED)
    }
}

/// Whether condition `type_` is `True` in `conditions`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions.iter().any(|c| c.type_ == type_ && c.status == "True")
}

/// The usage and conditions of a key measured at `rps` against `limit_rps`, given what its status holds now.
pub fn desired(
    current: &[Condition],
    generation: Option<i64>,
    rps: f64,
    limit_rps: f64,
    near_limit_ratio: f64,
    limit_display: &str,
    now: Timestamp,
) -> KeyStatus {
    let utilization = if limit_rps > 0.0 { rps / limit_rps } else { 0.0 };
    let at = format!("{:.2} req/s is {} of its limit {limit_display}", rps, percent(utilization));
    KeyStatus {
        usage: KeyUsage {
            requests_per_second: round(rps),
            limit: round(limit_rps),
            utilization: round(utilization),
            observed_at: Some(Time(now)),
            ..KeyUsage::default()
        },
        conditions: verdict(current, generation, utilization, near_limit_ratio, at, now),
    }
}

/// `NearLimit` at `near_limit_ratio` and `Exhausted` at 1.0 of `utilization`, with hysteresis against what
/// `current` holds; `at` describes the measurement in both messages.
pub fn verdict(
    current: &[Condition],
    generation: Option<i64>,
    utilization: f64,
    near_limit_ratio: f64,
    at: String,
    now: Timestamp,
) -> Vec<Condition> {
    let near = with_hysteresis(utilization, near_limit_ratio, is_true(current, NEAR_LIMIT));
    let exhausted = with_hysteresis(utilization, 1.0, is_true(current, EXHAUSTED));
    let threshold = format!("{at} (threshold {})", percent(near_limit_ratio));
    let near_c = if near {
        Desired::new(NEAR_LIMIT, true, "AboveThreshold", threshold)
    } else {
        Desired::new(NEAR_LIMIT, false, "BelowThreshold", threshold)
    };
    let exhausted_c = if exhausted {
        Desired::new(EXHAUSTED, true, "LimitReached", at)
    } else {
        Desired::new(EXHAUSTED, false, "WithinLimit", at)
    };
    let mut conditions = conditions::merge(current, &[near_c, exhausted_c], generation, now);
    conditions.retain(|c| owned(&c.type_));
    conditions
}

/// `0.85` as `85%`.
pub fn percent(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

/// How many polls usage may be missing before a key's `NearLimit` and `Exhausted` turn `Unknown` instead of keeping
/// a verdict that may no longer hold.
pub const STALE_AFTER_POLLS: u32 = 3;

/// Reason of `NearLimit`/`Exhausted` when usage has been unavailable for [`STALE_AFTER_POLLS`] polls.
pub const STALE_REASON: &str = "UsageUnavailable";

/// A key whose verdicts are stale: `NearLimit` and `Exhausted` become `Unknown` with `why`, its last usage is kept
/// as it was (its `observedAt` says how old it is). `None` when there is nothing to change: no verdict was ever
/// given (no usage), or the verdicts say `Unknown` already.
pub fn stale(
    current: &[Condition],
    usage: Option<&KeyUsage>,
    generation: Option<i64>,
    why: &str,
    now: Timestamp,
) -> Option<KeyStatus> {
    let mut usage = usage?.clone();
    // No data: the previous key's traffic is unknown too, so it is neither retired early nor kept longer.
    usage.previous_key = None;
    let known = current.iter().any(|c| (c.type_ == NEAR_LIMIT || c.type_ == EXHAUSTED) && c.status != "Unknown");
    if !known {
        return None;
    }
    let unknown = [Desired::unknown(NEAR_LIMIT, STALE_REASON, why), Desired::unknown(EXHAUSTED, STALE_REASON, why)];
    let mut conditions = conditions::merge(current, &unknown, generation, now);
    conditions.retain(|c| owned(&c.type_));
    Some(KeyStatus { usage, conditions })
}

/// Four decimals are plenty for a status and keep tiny float noise out of it.
pub fn round(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// Applies `onExhausted: Suspend` to `new`, the key's next status: a key whose `Exhausted` has been `True` without
/// a break for `after` gets `SuspendedForAbuse=True` (returns the message for its Warning event); one that has it
/// keeps it until a person clears it (then it goes). `key` is the ApiKey as it is now.
pub fn judge_abuse(
    key: &crate::api::ApiKey,
    new: &mut KeyStatus,
    after: Option<std::time::Duration>,
    now: Timestamp,
) -> Option<String> {
    let held = abuse(key).is_some();
    if !held {
        new.conditions.retain(|c| c.type_ != SUSPENDED_FOR_ABUSE);
    }
    let after = after?;
    let exhausted = new.conditions.iter().find(|c| c.type_ == EXHAUSTED && c.status == "True")?;
    let since = exhausted.last_transition_time.0;
    let window = jiff::SignedDuration::try_from(after).unwrap_or(jiff::SignedDuration::MAX);
    if held || now.duration_since(since) < window {
        return None;
    }
    let message = format!(
        "Exhausted without a break since {since} (onExhausted.after {}): key material removed until a person \
         clears it with `kubectl annotate apikey {} {ABUSE_CLEARED}=<now, RFC 3339> --overwrite`",
        crate::api::bounds::display(after),
        kube::ResourceExt::name_any(key)
    );
    let suspended = Desired::new(SUSPENDED_FOR_ABUSE, true, "ExhaustedTooLong", message.clone());
    new.conditions = conditions::merge(&new.conditions, &[suspended], key.metadata.generation, now);
    Some(message)
}

/// What of the previous key's traffic the ApiKey controller acts on: which key, whether idle and since when, whether
/// it has traffic. A change of it is worth a write here and triggers a reconcile there.
pub fn previous_state(u: &KeyUsage) -> Option<(&str, Option<Timestamp>, bool)> {
    u.previous_key
        .as_ref()
        .map(|p| (p.key_id.as_str(), p.idle_since.as_ref().map(|t| t.0), p.requests_per_second > 0.0))
}

/// Whether `new` differs enough from what the key's status holds to be written: a condition's status or reason
/// changed, the limit changed, utilization moved by at least [`MEANINGFUL_UTILIZATION_CHANGE`], or traffic started
/// or stopped. Under a calendar limit also: the window changed, the quota ran out or came back, or `used` moved by
/// at least [`MEANINGFUL_USED_CHANGE`] of the window's requests. Messages and `observedAt` alone never cause a write.
pub fn worth_writing(current_usage: Option<&KeyUsage>, current_conditions: &[Condition], new: &KeyStatus) -> bool {
    let Some(old) = current_usage else { return true };
    let flipped =
        new.conditions.iter().any(|n| {
            !current_conditions.iter().any(|c| c.type_ == n.type_ && c.status == n.status && c.reason == n.reason)
        }) || current_conditions.iter().any(|c| owned(&c.type_) && !new.conditions.iter().any(|n| n.type_ == c.type_));
    flipped
        || (old.limit - new.usage.limit).abs() > 1e-9 * old.limit.abs().max(1.0)
        || (old.utilization - new.usage.utilization).abs() >= MEANINGFUL_UTILIZATION_CHANGE
        || (old.requests_per_second == 0.0) != (new.usage.requests_per_second == 0.0)
        || previous_state(old) != previous_state(&new.usage)
        || quota_moved(old, &new.usage)
}

/// A change of the used share of the window's requests smaller than this (0.01 = 1% of the limit) is not worth a
/// status write: `used` grows with every poll that sees traffic.
pub const MEANINGFUL_USED_CHANGE: f64 = 0.01;

/// Whether the quota figures of a calendar limit moved enough to be written (see [`worth_writing`]). Under a
/// calendar limit `utilization` is `used` over the window's requests, so 1% of the limit is 0.01 of it.
fn quota_moved(old: &KeyUsage, new: &KeyUsage) -> bool {
    let exhausted = |u: &KeyUsage| u.remaining.map(|r| r == 0);
    old.used.is_some() != new.used.is_some()
        || old.window_start != new.window_start
        || exhausted(old) != exhausted(new)
        // NB: both are rounded to 4 decimals; the epsilon keeps 0.11 - 0.10 from falling just short of 0.01.
        || (new.used.is_some() && (old.utilization - new.utilization).abs() >= MEANINGFUL_USED_CHANGE - 1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn rates(pairs: &[(&str, f64)]) -> Rates {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn a_key_is_matched_by_name_key_id_and_previous_key_id() {
        let r = rates(&[("checkout", 1.0), ("aaaaaaaaaaaa", 2.0), ("bbbbbbbbbbbb", 4.0), ("other", 8.0)]);
        assert_eq!(key_rps(&r, "checkout", Some("aaaaaaaaaaaa"), Some("bbbbbbbbbbbb")), 7.0);
        assert_eq!(key_rps(&r, "checkout", None, None), 1.0);
        assert_eq!(key_rps(&r, "search", None, None), 0.0, "a key without series has no traffic");
        // A name equal to a key id is counted once.
        assert_eq!(key_rps(&r, "aaaaaaaaaaaa", Some("aaaaaaaaaaaa"), None), 2.0);
    }

    #[test]
    fn hysteresis_turns_on_at_the_threshold_and_off_below_it_minus_the_band() {
        assert!(!with_hysteresis(0.79, 0.8, false));
        assert!(with_hysteresis(0.8, 0.8, false));
        assert!(with_hysteresis(0.76, 0.8, true), "stays on inside the band");
        assert!(!with_hysteresis(0.74, 0.8, true), "clears below the band");
        assert!(!with_hysteresis(0.76, 0.8, false), "does not turn on inside the band");
    }

    #[test]
    fn near_limit_and_exhausted_follow_usage_and_clear_on_their_own() {
        let t0 = ts("2026-01-01T00:00:00Z");
        let calm = desired(&[], Some(1), 5.0, 10.0, 0.8, "600/1m", t0);
        assert!(!calm.near_limit() && !calm.exhausted());
        assert_eq!(calm.usage.utilization, 0.5);

        let t1 = ts("2026-01-01T00:01:00Z");
        let near = desired(&calm.conditions, Some(1), 8.5, 10.0, 0.8, "600/1m", t1);
        assert!(near.near_limit() && !near.exhausted());
        let c = near.conditions.iter().find(|c| c.type_ == NEAR_LIMIT).expect("NearLimit");
        assert_eq!(c.last_transition_time, Time(t1));
        assert!(c.message.contains("85%"), "{}", c.message);

        let t2 = ts("2026-01-01T00:02:00Z");
        let over = desired(&near.conditions, Some(1), 12.0, 10.0, 0.8, "600/1m", t2);
        assert!(over.near_limit() && over.exhausted());
        // NearLimit did not flip, so its transition time stays.
        let c = over.conditions.iter().find(|c| c.type_ == NEAR_LIMIT).expect("NearLimit");
        assert_eq!(c.last_transition_time, Time(t1));

        // Hovering just under 1.0 keeps Exhausted (inside the band), then it clears.
        let hover = desired(&over.conditions, Some(1), 9.8, 10.0, 0.8, "600/1m", t2);
        assert!(hover.exhausted());
        let down = desired(&hover.conditions, Some(1), 9.0, 10.0, 0.8, "600/1m", t2);
        assert!(!down.exhausted() && down.near_limit());
        let quiet = desired(&down.conditions, Some(1), 0.0, 10.0, 0.8, "600/1m", t2);
        assert!(!quiet.exhausted() && !quiet.near_limit());
    }

    #[test]
    fn other_conditions_are_not_this_controllers() {
        let ready =
            conditions::merge(&[], &[Desired::new("Ready", true, "KeyIssued", "")], None, ts("2026-01-01T00:00:00Z"));
        let s = desired(&ready, None, 1.0, 10.0, 0.8, "600/1m", ts("2026-01-01T00:00:00Z"));
        assert!(s.conditions.iter().all(|c| c.type_ == NEAR_LIMIT || c.type_ == EXHAUSTED));
        assert_eq!(s.conditions.len(), 2);
    }

    #[test]
    fn only_meaningful_changes_are_written() {
        let t0 = ts("2026-01-01T00:00:00Z");
        let first = desired(&[], None, 5.0, 10.0, 0.8, "600/1m", t0);
        assert!(worth_writing(None, &[], &first), "the first measurement is written");
        let same = |rps: f64, limit: f64| {
            desired(&first.conditions, None, rps, limit, 0.8, "600/1m", ts("2026-01-01T00:00:15Z"))
        };
        assert!(!worth_writing(Some(&first.usage), &first.conditions, &same(5.2, 10.0)), "2 points: not meaningful");
        assert!(worth_writing(Some(&first.usage), &first.conditions, &same(5.5, 10.0)), "5 points: meaningful");
        assert!(worth_writing(Some(&first.usage), &first.conditions, &same(5.0, 20.0)), "the limit changed");
        assert!(worth_writing(Some(&first.usage), &first.conditions, &same(8.0, 10.0)), "NearLimit flipped");
        let idle = desired(&[], None, 0.0, 1000.0, 0.8, "600/1m", t0);
        let trickle = desired(&idle.conditions, None, 0.01, 1000.0, 0.8, "600/1m", t0);
        assert!(worth_writing(Some(&idle.usage), &idle.conditions, &trickle), "traffic started");
    }

    #[test]
    fn a_zero_limit_never_divides_by_zero() {
        let s = desired(&[], None, 3.0, 0.0, 0.8, "0/1m", ts("2026-01-01T00:00:00Z"));
        assert!(s.usage.utilization.is_finite());
    }
}
