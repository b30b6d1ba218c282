//! Lower bounds an administrator sets on what tenants may ask for (`keyward run --min-usage-interval`,
//! `--min-rotation-interval`, `--min-grace-period`): one policy polls its source at most once per
//! `usage_interval`, one key rotates at most once per `rotation_interval` (for a cron schedule, the shortest gap
//! between two runs), and the previous key stays valid at least `grace_period` after a rotation.
//!
//! The choice: an explicit value below a minimum is **refused** (`Ready=False`, reason `InvalidSpec`, the message
//! names the field, the minimum and the flag); nothing is silently changed behind the tenant's back. A default the
//! tenant did not write (`usage.interval` 15s, `rotation.gracePeriod` 24h) is raised to the minimum instead, so
//! objects that rely on defaults keep working when an administrator raises a floor. Pure.

use std::time::Duration;

/// The administrator's floors; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Minimums {
    /// Shortest `usage.interval` a RateLimitPolicy may ask for.
    pub usage_interval: Duration,
    /// Shortest `rotation.interval`, or gap between two runs of `rotation.schedule`.
    pub rotation_interval: Duration,
    /// Shortest `rotation.gracePeriod`.
    pub grace_period: Duration,
}

/// The flag (and, upper-cased with `KEYWARD_`, the environment variable) of each floor, named in messages.
pub mod flag {
    /// `--min-usage-interval`.
    pub const USAGE_INTERVAL: &str = "--min-usage-interval";
    /// `--min-rotation-interval`.
    pub const ROTATION_INTERVAL: &str = "--min-rotation-interval";
    /// `--min-grace-period`.
    pub const GRACE_PERIOD: &str = "--min-grace-period";
}

impl Minimums {
    /// The defaults of `keyward run`: at most about one poll per second per policy and one rotation per 10 s per
    /// key; any grace period.
    pub const DEFAULT: Minimums = Minimums {
        usage_interval: Duration::from_secs(1),
        rotation_interval: Duration::from_secs(10),
        grace_period: Duration::ZERO,
    };

    /// No floors at all (pure tests of the arithmetic).
    pub const NONE: Minimums =
        Minimums { usage_interval: Duration::ZERO, rotation_interval: Duration::ZERO, grace_period: Duration::ZERO };
}

impl Minimums {
    /// Refuses floors above the schema's own maxima (a floor no object could meet).
    pub fn validate(&self) -> Result<(), String> {
        use crate::api::bounds::{MAX_GRACE_PERIOD, MAX_ROTATION_INTERVAL, MAX_USAGE_INTERVAL, check_at_most};
        check_at_most(flag::USAGE_INTERVAL, self.usage_interval, MAX_USAGE_INTERVAL)?;
        check_at_most(flag::ROTATION_INTERVAL, self.rotation_interval, MAX_ROTATION_INTERVAL)?;
        check_at_most(flag::GRACE_PERIOD, self.grace_period, MAX_GRACE_PERIOD)
    }
}

impl Default for Minimums {
    fn default() -> Self {
        Minimums::DEFAULT
    }
}

/// `Err` with the message for a tenant when an explicit `value` of `field` is below `min`.
pub fn at_least(field: &str, value: Duration, min: Duration, flag: &str) -> Result<(), String> {
    if value < min {
        Err(format!(
            "{field}: {} is below the minimum of {} this operator allows (keyward run {flag}); choose a longer value \
             or ask the cluster administrator",
            show(value),
            show(min)
        ))
    } else {
        Ok(())
    }
}

/// A duration as a person reads it: `10s`, `1.5s`, `250ms`.
pub fn show(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) && d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.subsec_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_issue() {
        let m = Minimums::default();
        assert_eq!(m.usage_interval, Duration::from_secs(1));
        assert_eq!(m.rotation_interval, Duration::from_secs(10));
        assert_eq!(m.grace_period, Duration::ZERO);
    }

    #[test]
    fn below_the_minimum_is_refused_naming_field_minimum_and_flag() {
        let e = at_least("usage.interval", Duration::from_millis(500), Duration::from_secs(1), flag::USAGE_INTERVAL)
            .unwrap_err();
        assert!(e.starts_with("usage.interval: 500ms is below the minimum of 1s"), "{e}");
        assert!(e.contains("--min-usage-interval"), "{e}");
        assert!(at_least("x", Duration::from_secs(1), Duration::from_secs(1), "--f").is_ok(), "the minimum itself");
        assert!(at_least("x", Duration::ZERO, Duration::ZERO, "--f").is_ok());
    }

    #[test]
    fn floors_above_the_schema_maxima_are_refused() {
        assert!(Minimums::DEFAULT.validate().is_ok());
        let e = Minimums { usage_interval: Duration::from_secs(86_401), ..Minimums::DEFAULT }.validate().unwrap_err();
        assert!(e.starts_with("--min-usage-interval: must be at most 24h"), "{e}");
        let rotation = Minimums { rotation_interval: Duration::from_secs(8761 * 3600), ..Minimums::DEFAULT };
        assert!(rotation.validate().is_err());
    }

    #[test]
    fn durations_show_as_written() {
        assert_eq!(show(Duration::from_secs(10)), "10s");
        assert_eq!(show(Duration::from_millis(250)), "250ms");
        assert_eq!(show(Duration::from_millis(1500)), "1.5s");
    }
}
