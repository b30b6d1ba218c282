//! The RateLimitPolicy plan, pure: from the checked spec, what one cycle observed (rates, members, the scale
//! target), the scaling history and the time, everything the cycle writes: the policy's conditions and events, each
//! member key's usage, the replica count, and the status figures.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};

use super::check::{Checked, CheckedScaling};
use super::observe::{Conflict, Observed, Target};
use super::{condition, key_usage, quota, scale, status};
use crate::api::ApiKey;
use crate::api::common::Time;
use crate::api::ratelimit::{RateLimitPolicy, RateLimitPolicyStatus};
use crate::runtime::conditions::{self, Desired};
use crate::runtime::events::EventType;
use crate::scaling::{self, Stabilizer};
use crate::usage::SourceError;

/// An event the cycle publishes.
#[derive(Clone, Debug, PartialEq)]
pub struct Note {
    pub type_: EventType,
    pub reason: &'static str,
    pub note: String,
}

impl Note {
    fn new(type_: EventType, reason: &'static str, note: String) -> Self {
        Note { type_, reason, note }
    }
}

/// A member key's usage to write, and the event to publish once it is written.
pub struct KeyWrite {
    pub key: Arc<ApiKey>,
    pub status: key_usage::KeyStatus,
    pub note: Option<Note>,
}

/// A member key's usage as the metrics report it: the figures of its status (as written, or as read when there is
/// no usage data).
#[derive(Clone, Debug, PartialEq)]
pub struct MemberUsage {
    pub name: String,
    pub utilization: Option<f64>,
    pub near_limit: bool,
    pub exhausted: bool,
}

/// A replica count to write through the target's scale subresource.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleWrite {
    pub from: i32,
    pub to: i32,
    /// `<Kind> <name>`, for messages.
    pub what: String,
    /// The arithmetic behind the recommendation, for messages.
    pub why: String,
}

/// The status figures of one cycle.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Figures {
    pub observed_usage: Option<f64>,
    pub utilization: Option<f64>,
    pub current_replicas: Option<i32>,
    pub desired_replicas: Option<i32>,
    pub last_scale_time: Option<Time>,
    pub keys_near_limit: Option<i32>,
    pub keys_exhausted: Option<i32>,
}

/// Everything one cycle writes.
#[derive(Default)]
pub struct Plan {
    pub conditions: Vec<Desired>,
    pub events: Vec<Note>,
    pub keys: Vec<KeyWrite>,
    /// Every member key's usage for the metrics, written or not.
    pub member_usage: Vec<MemberUsage>,
    pub scale: Option<ScaleWrite>,
    pub figures: Figures,
    /// The scaling history after this cycle's recommendation (`None`: no recommendation was made).
    pub stabilizer: Option<Stabilizer>,
    /// Under a calendar limit, each member's running count of the window after this cycle (kept for the next).
    pub tallies: quota::Tallies,
}

/// What a plan depends on.
pub struct Inputs<'a> {
    pub checked: &'a Checked,
    pub observed: &'a Observed,
    /// The status as it is now.
    pub current: &'a RateLimitPolicyStatus,
    /// Whether the active override changed since the last cycle.
    pub override_changed: bool,
    pub stabilizer: &'a Stabilizer,
    /// Whether the history was seeded with the target's replicas (a fresh process waits a whole down window).
    pub seeded: bool,
    /// Under a calendar limit, each member's running count of the window as the last cycle left it.
    pub tallies: &'a quota::Tallies,
    pub now: Timestamp,
}

/// Plans one cycle.
pub fn plan(i: &Inputs<'_>) -> Plan {
    let mut p = Plan::default();
    limit(i, &mut p);
    usage(i, &mut p);
    members(i, &mut p);
    if let (Some(s), Some(t)) = (i.checked.scaling.as_ref(), i.observed.target.as_ref()) {
        scaling(i, s, t, &mut p);
    }
    p
}

/// The limit in force: `OverrideActive`, and an event when an override starts or ends.
fn limit(i: &Inputs<'_>, p: &mut Plan) {
    let effective = &i.checked.limit;
    let was_active = key_usage::is_true(&i.current.conditions, condition::OVERRIDE_ACTIVE);
    match &effective.active {
        Some(a) => {
            let message = format!(
                "temporaryOverrides[{}] ({}) raises the limit to {} until {}",
                a.index,
                a.reason,
                effective.display(),
                a.until
            );
            p.conditions.push(Desired::new(condition::OVERRIDE_ACTIVE, true, "OverrideActive", message));
            if i.override_changed && !was_active {
                let note = format!("limit is {} until {}: {}", effective.display(), a.until, a.reason);
                p.events.push(Note::new(EventType::Normal, "OverrideStarted", note));
            }
        }
        None => {
            let message = format!("the limit is {}", effective.display());
            p.conditions.push(Desired::new(condition::OVERRIDE_ACTIVE, false, "NoOverride", message));
            if was_active {
                let note = format!("the override ended; the limit is back to {}", effective.display());
                p.events.push(Note::new(EventType::Normal, "OverrideExpired", note));
            }
        }
    }
}

/// `UsageAvailable` and the total usage (kept from the status while usage is unknown); `SourceVerified=False`, with
/// a Warning event when it appears, while the source's certificate is not verified.
fn usage(i: &Inputs<'_>, p: &mut Plan) {
    if i.checked.insecure_source {
        let message = "usage.prometheus.tls.insecureSkipVerify is set: the source's certificate is not verified, so \
                       anyone on the path can read its credentials and forge the usage";
        p.conditions.push(Desired::new(condition::SOURCE_VERIFIED, false, "InsecureSkipVerify", message));
        if !i.current.conditions.iter().any(|c| c.type_ == condition::SOURCE_VERIFIED) {
            p.events.push(Note::new(EventType::Warning, "InsecureSource", message.to_owned()));
        }
    }
    match &i.observed.rates {
        Ok(rates) => {
            p.figures.observed_usage = Some(status::round2(rates.values().sum()));
            // NB: no figures in the message: it is kept while the reason stays, and figures would go stale.
            let message = format!("usage is read from {}", i.observed.source);
            p.conditions.push(Desired::new(condition::USAGE_AVAILABLE, true, "UsageRead", message));
        }
        Err(e) => {
            p.figures.observed_usage = i.current.observed_usage;
            p.conditions.push(Desired::new(condition::USAGE_AVAILABLE, false, e.reason(), e.to_string()));
        }
    }
}

/// Each member's usage, `NearLimit` and `Exhausted`, written where the change is meaningful, with an event when a
/// key crosses into one of them. Without usage data nothing is written and the counts come from the keys' statuses.
fn members(i: &Inputs<'_>, p: &mut Plan) {
    let (mut near, mut exhausted) = (0, 0);
    for key in &i.observed.members {
        let current = key.status.clone().unwrap_or_default();
        let name = kube::ResourceExt::name_any(key.as_ref());
        let Ok(rates) = &i.observed.rates else {
            let stale = stale_since(i).and_then(|why| {
                key_usage::stale(&current.conditions, current.usage.as_ref(), key.metadata.generation, &why, i.now)
            });
            let conditions = stale.as_ref().map_or(&current.conditions, |s| &s.conditions);
            let (n, e) = (
                key_usage::is_true(conditions, key_usage::NEAR_LIMIT),
                key_usage::is_true(conditions, key_usage::EXHAUSTED),
            );
            (near, exhausted) = (near + i32::from(n), exhausted + i32::from(e));
            let utilization = current.usage.as_ref().map(|u| u.utilization);
            p.member_usage.push(MemberUsage { name, utilization, near_limit: n, exhausted: e });
            p.keys.extend(stale.map(|status| KeyWrite { key: key.clone(), status, note: None }));
            continue;
        };
        let rps = key_usage::key_rps(rates, &name, current.key_id.as_deref(), current.previous_key_id.as_deref());
        let mut want = measured(i, key, &name, &current, rps, p);
        want.usage.previous_key = key_usage::previous_usage(rates, &current, i.now);
        let abused = key_usage::judge_abuse(key, &mut want, i.checked.suspend_after, i.now);
        near += i32::from(want.near_limit());
        exhausted += i32::from(want.exhausted());
        p.member_usage.push(MemberUsage {
            name: name.clone(),
            utilization: Some(want.usage.utilization),
            near_limit: want.near_limit(),
            exhausted: want.exhausted(),
        });
        if !key_usage::worth_writing(current.usage.as_ref(), &current.conditions, &want) {
            continue;
        }
        let note = note(i.checked, &current.conditions, &want, abused, rps);
        p.keys.push(KeyWrite { key: key.clone(), status: want, note });
    }
    p.figures.keys_near_limit = Some(near);
    p.figures.keys_exhausted = Some(exhausted);
}

/// A member's usage and verdicts at `rps`: against the rate of a rolling limit, or against the quota of the current
/// window of a calendar limit (whose running count is kept in `p.tallies`).
fn measured(
    i: &Inputs<'_>,
    key: &ApiKey,
    name: &str,
    current: &crate::api::ApiKeyStatus,
    rps: f64,
    p: &mut Plan,
) -> key_usage::KeyStatus {
    let c = i.checked;
    let generation = key.metadata.generation;
    let Some(calendar) = c.calendar.as_ref() else {
        let display = c.limit.display();
        return key_usage::desired(
            &current.conditions,
            generation,
            rps,
            c.limit_rps,
            c.near_limit_ratio,
            &display,
            i.now,
        );
    };
    let window = calendar.window_at(i.now);
    let counted = match &i.observed.used {
        quota::Used::Counted(by_key) => {
            key_usage::key_rps(by_key, name, current.key_id.as_deref(), current.previous_key_id.as_deref())
        }
        _ => 0.0,
    };
    let memory = i.tallies.get(name).copied();
    let used = quota::used(&i.observed.used, counted, rps, memory, current.usage.as_ref(), window);
    p.tallies.insert(name.to_owned(), quota::Tally { window_start: window.start, used });
    let q = quota::Quota { used, requests: c.limit.requests, window };
    quota::desired(&current.conditions, generation, (rps, c.limit_rps), &q, c.near_limit_ratio, i.now)
}

/// The event of a key write: suspended for abuse, or crossed into `Exhausted` or `NearLimit`.
fn note(
    c: &Checked,
    current: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    want: &key_usage::KeyStatus,
    abused: Option<String>,
    rps: f64,
) -> Option<Note> {
    let display = c.limit.display();
    let at = match (&c.calendar, want.usage.used) {
        (Some(_), Some(used)) => format!("{used} of {} requests used in the window", c.limit.requests),
        _ => format!("{rps:.2} req/s"),
    };
    if let Some(message) = abused {
        Some(Note::new(EventType::Warning, "SuspendedForAbuse", message))
    } else if want.exhausted() && !key_usage::is_true(current, key_usage::EXHAUSTED) {
        Some(Note::new(EventType::Warning, "Exhausted", format!("{at} reached the limit {display}")))
    } else if want.near_limit() && !key_usage::is_true(current, key_usage::NEAR_LIMIT) {
        let pct = want.usage.utilization * 100.0;
        Some(Note::new(EventType::Normal, "NearLimit", format!("{at} is {pct:.0}% of the limit {display}")))
    } else {
        None
    }
}

/// Why the keys' verdicts are stale, when usage has been unavailable for [`key_usage::STALE_AFTER_POLLS`] polls or
/// more (counted from the time `UsageAvailable` turned `False`, which the status keeps across restarts).
fn stale_since(i: &Inputs<'_>) -> Option<String> {
    let Err(e) = &i.observed.rates else { return None };
    let down = i.current.conditions.iter().find(|c| c.type_ == condition::USAGE_AVAILABLE && c.status == "False")?;
    let since = down.last_transition_time.0;
    let window = i.checked.interval.saturating_mul(key_usage::STALE_AFTER_POLLS);
    let window = SignedDuration::try_from(window).unwrap_or(SignedDuration::MAX);
    (i.now.duration_since(since) >= window).then(|| {
        format!("usage has been unavailable since {since} ({}: {e}); the last verdict may no longer hold", e.reason())
    })
}

/// The replica recommendation: held while the target cannot be read, something else scales it, or usage is
/// unknown; otherwise stabilized and written when it differs.
fn scaling(i: &Inputs<'_>, s: &CheckedScaling, target: &Target, p: &mut Plan) {
    use condition::SCALING_ACTIVE;
    p.figures.last_scale_time = i.current.last_scale_time.clone();
    p.figures.desired_replicas = i.current.desired_replicas;
    let (replicas, conflict) = match target {
        Target::Unavailable(e) => {
            p.conditions.push(Desired::new(SCALING_ACTIVE, false, e.reason(), e.to_string()));
            p.conditions.push(no_conflict());
            return;
        }
        Target::Read { replicas, conflict } => (*replicas, conflict),
    };
    p.figures.current_replicas = Some(replicas);
    if let Ok(rates) = &i.observed.rates
        && replicas > 0
    {
        let total: f64 = rates.values().sum();
        p.figures.utilization = Some(status::round2(total / (f64::from(replicas) * s.capacity_rps)));
    }
    if held_by_conflict(i, conflict, p) {
        return;
    }
    p.conditions.push(no_conflict());
    let Ok(rates) = &i.observed.rates else {
        let message = format!("replicas held at {replicas}: no usage data, and missing data never scales down");
        p.conditions.push(Desired::new(SCALING_ACTIVE, false, "UsageUnavailable", message));
        return;
    };
    recommend(i, s, replicas, rates.values().sum(), p);
}

fn no_conflict() -> Desired {
    Desired::new(condition::SCALING_CONFLICT, false, "NoConflict", "no other autoscaler targets it")
}

/// `ScalingConflict` for another writer of the target's replicas; `true` when replicas are held because of it.
fn held_by_conflict(i: &Inputs<'_>, conflict: &Conflict, p: &mut Plan) -> bool {
    use condition::{SCALING_ACTIVE, SCALING_CONFLICT};
    let what = i.observed.target_name.as_str();
    let (reason, message) = match conflict {
        Conflict::None => return false,
        Conflict::CheckFailed(e) => {
            // Not knowing is treated as a conflict: no writes until the check succeeds.
            let message = format!("cannot check for a HorizontalPodAutoscaler on {what}, so replicas are held: {e}");
            p.conditions.push(Desired::new(SCALING_CONFLICT, false, "CheckFailed", message.clone()));
            p.conditions.push(Desired::new(SCALING_ACTIVE, false, "CheckFailed", message));
            return true;
        }
        Conflict::Hpa(hpa) => (
            "HorizontalPodAutoscaler",
            format!(
                "HorizontalPodAutoscaler {hpa} also scales {what}; Keyward does not write its replicas while it exists"
            ),
        ),
        Conflict::Policy(other) => (
            "RateLimitPolicy",
            format!("RateLimitPolicy {other} already scales {what}; this policy does not write its replicas"),
        ),
    };
    if !key_usage::is_true(&i.current.conditions, SCALING_CONFLICT) {
        p.events.push(Note::new(EventType::Warning, "ScalingConflict", message.clone()));
    }
    p.conditions.push(Desired::new(SCALING_CONFLICT, true, reason, message.clone()));
    p.conditions.push(Desired::new(SCALING_ACTIVE, false, "ScalingConflict", message));
    true
}

/// The stabilized recommendation for `total` requests per second, and a write when it differs from `replicas`.
fn recommend(i: &Inputs<'_>, s: &CheckedScaling, replicas: i32, total: f64, p: &mut Plan) {
    let raw = match scaling::raw_recommendation(total, s.capacity_rps, s.target_utilization) {
        Ok(r) => r,
        Err(e) => {
            p.conditions.push(Desired::new(condition::SCALING_ACTIVE, false, "InvalidSpec", e.to_string()));
            return;
        }
    };
    let clamped = scaling::clamp_replicas(raw, s.min, s.max);
    let mut history = i.stabilizer.clone();
    if !i.seeded {
        // NB: seeded just before now, so the up window (default 0 s) does not see it.
        let before = i.now.checked_sub(SignedDuration::from_millis(1)).unwrap_or(i.now);
        history.recommend(before, replicas, replicas, s.up_window, s.down_window);
    }
    let desired = history.recommend(i.now, clamped, replicas, s.up_window, s.down_window);
    p.stabilizer = Some(history);
    p.figures.desired_replicas = Some(desired);
    let why = format!(
        "{total:.2} req/s at {}% of {:.2} req/s per replica needs {raw} (bounds {}..={})",
        s.target_utilization, s.capacity_rps, s.min, s.max
    );
    if desired == replicas {
        let held =
            if clamped == replicas { why } else { format!("{why}; held at {replicas} by the stabilization window") };
        p.conditions.push(Desired::new(condition::SCALING_ACTIVE, true, "Stable", held));
        return;
    }
    p.scale = Some(ScaleWrite { from: replicas, to: desired, what: i.observed.target_name.clone(), why });
}

/// The plan after the scale write: the new replicas and an event, or why the write failed.
pub fn scaled(p: &mut Plan, result: Result<(), scale::ScaleError>, now: Timestamp) {
    let Some(w) = p.scale.clone() else { return };
    match result {
        Ok(()) => {
            let (reason, verb) = if w.to > w.from { ("ScaledUp", "up") } else { ("ScaledDown", "down") };
            let note = format!("scaled {} {verb} from {} to {}: {}", w.what, w.from, w.to, w.why);
            p.events.push(Note::new(EventType::Normal, reason, note.clone()));
            p.figures.current_replicas = Some(w.to);
            p.figures.last_scale_time = Some(Time(now));
            p.conditions.push(Desired::new(condition::SCALING_ACTIVE, true, reason, note));
        }
        Err(e) => p.conditions.push(Desired::new(condition::SCALING_ACTIVE, false, e.reason(), e.to_string())),
    }
}

/// The status after the cycle: `Ready` sums up the first problem, if any; figures within noise keep their old
/// values (see [`status::settle`]). `effective_limit` is `None` for an invalid spec.
pub fn status(
    policy: &RateLimitPolicy,
    mut desired: Vec<Desired>,
    figures: Figures,
    effective_limit: Option<String>,
    now: Timestamp,
) -> RateLimitPolicyStatus {
    if !desired.iter().any(|c| c.type_ == condition::READY) {
        desired.push(ready(&desired, policy.spec.usage.is_some(), effective_limit.as_deref().unwrap_or_default()));
    }
    let current = policy.status.as_ref();
    let generation = policy.metadata.generation;
    let existing = current.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let mut merged = conditions::merge(existing, &desired, generation, now);
    // Conditions no longer reported (e.g. scaling removed from the spec) go.
    merged.retain(|c| desired.iter().any(|d| d.type_ == c.type_));
    let new = RateLimitPolicyStatus {
        observed_generation: generation,
        conditions: merged,
        observed_usage: figures.observed_usage,
        utilization: figures.utilization,
        effective_limit,
        current_replicas: figures.current_replicas,
        desired_replicas: figures.desired_replicas,
        last_scale_time: figures.last_scale_time,
        keys_near_limit: figures.keys_near_limit,
        keys_exhausted: figures.keys_exhausted,
        // NB: kept until the enforcement step reports it (see `crate::ratelimit::enforce`).
        enforced_limit: current.and_then(|s| s.enforced_limit.clone()),
    };
    status::settle(current, new)
}

/// Whether a condition of `type_` with `status` (`True`) and `reason` makes the policy not Ready: no usage data
/// from a configured source, a scaling conflict, scaling not active, or the gateway's limits not enforced.
pub fn is_problem(type_: &str, status: bool, reason: &str) -> bool {
    (type_ == condition::USAGE_AVAILABLE && !status && reason != SourceError::NotConfigured.reason())
        || (type_ == condition::SCALING_CONFLICT && status)
        || (type_ == condition::SCALING_ACTIVE && !status)
        || (type_ == condition::ENFORCED && !status)
}

/// `Ready`: the first problem among the conditions, else Active (or LimitOnly without a usage source).
pub fn ready(desired: &[Desired], has_usage: bool, limit: &str) -> Desired {
    let problem = desired.iter().find(|c| is_problem(c.type_, c.status, c.reason));
    match (problem, has_usage) {
        (Some(c), _) => Desired::new(condition::READY, false, c.reason, c.message.clone()),
        (None, true) => Desired::new(condition::READY, true, "Active", format!("limit {limit} per key")),
        (None, false) => Desired::new(
            condition::READY,
            true,
            "LimitOnly",
            format!("limit {limit} per key; no usage source, so usage is not measured"),
        ),
    }
}

#[cfg(test)]
#[path = "plan_tests/mod.rs"]
mod tests;
