//! The RateLimitPolicy status: written only when something a reader cares about changed. Pure.

use crate::api::ratelimit::RateLimitPolicyStatus;

/// Relative change of `observedUsage` below which the old figure is kept (no write for noise).
pub const USAGE_TOLERANCE: f64 = 0.05;
/// Absolute change of `utilization` below which the old figure is kept.
pub const UTILIZATION_TOLERANCE: f64 = 0.05;

/// `new`, with the figures and condition messages of `old` kept where they changed only by noise: usage within
/// [`USAGE_TOLERANCE`], utilization within [`UTILIZATION_TOLERANCE`], and a condition whose status and reason are
/// the same keeps its message. Comparing the result with `old` tells whether a write is needed.
pub fn settle(old: Option<&RateLimitPolicyStatus>, mut new: RateLimitPolicyStatus) -> RateLimitPolicyStatus {
    let Some(old) = old else { return new };
    if let (Some(o), Some(n)) = (old.observed_usage, new.observed_usage)
        && close_relative(o, n, USAGE_TOLERANCE)
    {
        new.observed_usage = Some(o);
    }
    if let (Some(o), Some(n)) = (old.utilization, new.utilization)
        && (o - n).abs() < UTILIZATION_TOLERANCE
    {
        new.utilization = Some(o);
    }
    for c in &mut new.conditions {
        if let Some(o) =
            old.conditions.iter().find(|o| o.type_ == c.type_ && o.status == c.status && o.reason == c.reason)
        {
            c.message = o.message.clone();
        }
    }
    new
}

fn close_relative(a: f64, b: f64, tolerance: f64) -> bool {
    if a == b {
        return true;
    }
    // Zero versus non-zero is always a change: traffic started or stopped.
    if a == 0.0 || b == 0.0 {
        return false;
    }
    (a - b).abs() <= tolerance * a.abs().max(b.abs())
}

/// Rounds a figure for the status: two decimals.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::conditions::{Desired, merge};

    fn status(usage: f64, utilization: f64, reason: &'static str, message: &str) -> RateLimitPolicyStatus {
        RateLimitPolicyStatus {
            observed_usage: Some(usage),
            utilization: Some(utilization),
            conditions: merge(
                &[],
                &[Desired::new("Ready", true, reason, message)],
                Some(1),
                jiff::Timestamp::UNIX_EPOCH,
            ),
            current_replicas: Some(2),
            ..Default::default()
        }
    }

    #[test]
    fn noise_is_not_a_change() {
        let old = status(100.0, 0.5, "Active", "100 req/s");
        let settled = settle(Some(&old), status(103.0, 0.52, "Active", "103 req/s"));
        assert_eq!(settled, old);
    }

    #[test]
    fn real_changes_are() {
        let old = status(100.0, 0.5, "Active", "100 req/s");
        assert_ne!(settle(Some(&old), status(120.0, 0.5, "Active", "")), old, "usage +20%");
        assert_ne!(settle(Some(&old), status(100.0, 0.6, "Active", "")), old, "utilization +10 points");
        assert_ne!(settle(Some(&old), status(100.0, 0.5, "UsageUnavailable", "")), old, "reason");
        assert_ne!(settle(Some(&old), status(0.0, 0.5, "Active", "")), old, "traffic stopped");
        let mut replicas = status(100.0, 0.5, "Active", "");
        replicas.current_replicas = Some(3);
        assert_ne!(settle(Some(&old), replicas), old, "replicas");
    }

    #[test]
    fn the_first_status_is_written_as_is() {
        let s = status(1.0, 0.1, "Active", "x");
        assert_eq!(settle(None, s.clone()), s);
    }
}
