//! The spec, checked for what the schema cannot catch: durations that do not parse, bounds out of order. Pure.

use std::time::Duration;

use jiff::Timestamp;

use super::{DEFAULT_INTERVAL, DEFAULT_TARGET_UTILIZATION, key_usage, limits};
use crate::api::ratelimit::{RateLimitPolicySpec, Scaling};
use crate::scaling;

/// The spec, checked for what the schema cannot catch (objects stored before a schema change).
pub(super) struct Checked {
    pub(super) interval: Duration,
    pub(super) limit: limits::Effective,
    pub(super) limit_rps: f64,
    pub(super) near_limit_ratio: f64,
    pub(super) scaling: Option<CheckedScaling>,
}

pub(super) struct CheckedScaling {
    pub(super) capacity_rps: f64,
    pub(super) target_utilization: i32,
    pub(super) min: i32,
    pub(super) max: i32,
    pub(super) up_window: Duration,
    pub(super) down_window: Duration,
}

pub(super) fn check(spec: &RateLimitPolicySpec, now: Timestamp) -> Result<Checked, String> {
    let usage = spec.usage.clone().unwrap_or_default();
    let interval = match &usage.interval {
        Some(d) => d.parse().map_err(|e| format!("usage.interval: {e}"))?,
        None => DEFAULT_INTERVAL,
    };
    if interval.is_zero() {
        return Err("usage.interval must be greater than 0".into());
    }
    let limit = limits::effective(spec, now);
    let field = if limit.active.is_some() { "temporaryOverrides[].period" } else { "limit.period" };
    let limit_rps = limit.per_second.ok_or_else(|| format!("{field}: {:?} is not a duration above 0", limit.period))?;
    let near_limit_ratio = spec.near_limit_ratio.unwrap_or(key_usage::DEFAULT_NEAR_LIMIT_RATIO);
    if !(near_limit_ratio > 0.0 && near_limit_ratio <= 1.0) {
        return Err(format!("nearLimitRatio must be in (0, 1], got {near_limit_ratio}"));
    }
    let scaling = spec.scaling.as_ref().map(check_scaling).transpose()?;
    Ok(Checked { interval, limit, limit_rps, near_limit_ratio, scaling })
}

fn check_scaling(s: &Scaling) -> Result<CheckedScaling, String> {
    let window = |rules: &Option<crate::api::ratelimit::ScalingRules>, field: &str, default: Duration| match rules
        .as_ref()
        .and_then(|r| r.stabilization_window.as_ref())
    {
        Some(d) => d.parse().map_err(|e| format!("scaling.{field}.stabilizationWindow: {e}")),
        None => Ok(default),
    };
    let capacity_rps = s
        .capacity_per_replica
        .per_second()
        .ok_or_else(|| "scaling.capacityPerReplica.period is not a duration above 0".to_string())?;
    let min = s.min_replicas.unwrap_or(1);
    if min > s.max_replicas {
        return Err(format!("scaling.minReplicas ({min}) is greater than scaling.maxReplicas ({})", s.max_replicas));
    }
    Ok(CheckedScaling {
        capacity_rps,
        target_utilization: s.target_utilization.unwrap_or(DEFAULT_TARGET_UTILIZATION),
        min,
        max: s.max_replicas,
        up_window: window(&s.scale_up, "scaleUp", scaling::DEFAULT_UP_WINDOW)?,
        down_window: window(&s.scale_down, "scaleDown", scaling::DEFAULT_DOWN_WINDOW)?,
    })
}
