//! Replica count decisions for a gateway, in the manner of the Kubernetes HorizontalPodAutoscaler.
//!
//! Everything here is pure: the clock is injected as [`jiff::Timestamp`] values, so the same inputs always give the
//! same answer. The pipeline is:
//!
//! 1. [`raw_recommendation`]: `ceil(total_rps / (capacity_per_replica * target_utilization / 100))`, with a small
//!    tolerance so that floating-point error never adds a replica.
//! 2. [`clamp_replicas`]: bound the raw value to `[min, max]`.
//! 3. [`Stabilizer::recommend`]: the HPA stabilization windows. A scale-up goes to the *lowest* recommendation seen
//!    within the up window (default `0s`, i.e. immediate); a scale-down goes to the *highest* recommendation seen
//!    within the down window (default `300s`), so flapping input does not flap the replica count.
//!
//! Missing data never scales anything: when there is no usable traffic figure the caller must not call
//! [`Stabilizer::recommend`] (which would record a recommendation) and keeps the current count, which is what
//! [`hold`] returns.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

#[cfg(test)]
mod tests;

/// The HPA's default scale-up stabilization window: none, scale up at once.
pub const DEFAULT_UP_WINDOW: Duration = Duration::from_secs(0);

/// The HPA's default scale-down stabilization window: five minutes.
pub const DEFAULT_DOWN_WINDOW: Duration = Duration::from_secs(300);

/// Relative tolerance applied before rounding up, so that `11.000000000000002` counts as `11`.
const TOLERANCE: f64 = 1e-9;

/// Why a raw recommendation could not be computed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScalingError {
    /// The per-replica capacity is zero, negative, NaN or infinite.
    #[error("scaling.capacityPerReplica must be a finite number greater than 0, got {0}")]
    CapacityPerReplica(f64),
    /// The target utilization is not a positive percentage.
    #[error("scaling.targetUtilizationPercent must be greater than 0, got {0}")]
    TargetUtilizationPercent(i32),
    /// The observed traffic is negative, NaN or infinite.
    #[error("total requests per second must be a finite number of at least 0, got {0}")]
    TotalRps(f64),
}

/// The number of replicas needed to serve `total_rps` when each replica should run at
/// `target_utilization_percent` of `capacity_rps_per_replica`: `ceil(total / (capacity × target / 100))`.
///
/// A quotient within a relative `1e-9` of an integer is taken as that integer, so floating-point error does not add
/// a replica. Zero traffic gives `0` (the caller's minimum applies afterwards); a result beyond `i32::MAX`
/// saturates. Invalid inputs are refused with an error naming the offending field.
pub fn raw_recommendation(
    total_rps: f64,
    capacity_rps_per_replica: f64,
    target_utilization_percent: i32,
) -> Result<i32, ScalingError> {
    if !capacity_rps_per_replica.is_finite() || capacity_rps_per_replica <= 0.0 {
        return Err(ScalingError::CapacityPerReplica(capacity_rps_per_replica));
    }
    if target_utilization_percent <= 0 {
        return Err(ScalingError::TargetUtilizationPercent(target_utilization_percent));
    }
    if !total_rps.is_finite() || total_rps < 0.0 {
        return Err(ScalingError::TotalRps(total_rps));
    }
    let per_replica = capacity_rps_per_replica * f64::from(target_utilization_percent) / 100.0;
    let quotient = total_rps / per_replica;
    let nearest = quotient.round();
    let replicas = if (quotient - nearest).abs() <= TOLERANCE * nearest.max(1.0) { nearest } else { quotient.ceil() };
    // `replicas` is integral and at least 0; `as` saturates (an infinite quotient from a subnormal capacity becomes
    // `i32::MAX`), so the cast is exact in range and clamps beyond it.
    Ok(replicas as i32)
}

/// Bounds `raw` to `[min, max]`, never below `0`. When `min > max` (which validation should refuse) `max` wins, so a
/// misconfiguration never yields more replicas than the ceiling.
pub fn clamp_replicas(raw: i32, min: i32, max: i32) -> i32 {
    raw.max(min).min(max).max(0)
}

/// What to do when there is no usable traffic data: keep `current`. Nothing is recorded, so a gap in the data can
/// never lead to a scale-down.
pub fn hold(current: i32) -> i32 {
    current
}

/// The HPA stabilization windows: a time-ordered history of `(time, clamped recommendation)`.
#[derive(Debug, Clone, Default)]
pub struct Stabilizer {
    history: Vec<(Timestamp, i32)>,
}

impl Stabilizer {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of recommendations kept; bounded by the calls made within the longer window.
    pub fn len(&self) -> usize {
        self.history.len()
    }

    /// Whether no recommendation is kept.
    pub fn is_empty(&self) -> bool {
        self.history.is_empty()
    }

    /// Records `raw_clamped` at `now` and returns the stabilized replica count.
    ///
    /// As in the HPA: the up-candidate is the lowest recommendation within `up_window`, the down-candidate the
    /// highest within `down_window` (the recommendation just recorded always counts; older ones count while younger
    /// than the window). If the up-candidate exceeds `current` the result is the up-candidate; else if the
    /// down-candidate is below `current` the result is the down-candidate; else `current` is held. Entries older
    /// than the longer window are pruned. Call this only with real data; see [`hold`].
    pub fn recommend(
        &mut self,
        now: Timestamp,
        raw_clamped: i32,
        current_replicas: i32,
        up_window: Duration,
        down_window: Duration,
    ) -> i32 {
        let up = to_signed(up_window);
        let down = to_signed(down_window);
        let longest = up.max(down);
        // Prune what no window can see any more (the current entry is added afterwards).
        self.history.retain(|(at, _)| now.duration_since(*at) < longest);
        // Keep the history time-ordered even if the clock steps backwards.
        let index = self.history.partition_point(|(at, _)| *at <= now);
        self.history.insert(index, (now, raw_clamped));

        let within = |window: SignedDuration| {
            self.history
                .iter()
                .filter(move |(at, _)| *at == now || now.duration_since(*at) < window)
                .map(|(_, replicas)| *replicas)
        };
        let up_candidate = within(up).min().unwrap_or(raw_clamped);
        let down_candidate = within(down).max().unwrap_or(raw_clamped);

        if up_candidate > current_replicas {
            up_candidate
        } else if down_candidate < current_replicas {
            down_candidate
        } else {
            current_replicas
        }
    }
}

/// A window as a signed duration; one too long to represent is as good as forever.
fn to_signed(window: Duration) -> SignedDuration {
    SignedDuration::try_from(window).unwrap_or(SignedDuration::MAX)
}
