use std::time::Duration;

use jiff::Timestamp;

use super::*;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + seconds).unwrap()
}

const UP0: Duration = DEFAULT_UP_WINDOW;
const DOWN: Duration = DEFAULT_DOWN_WINDOW;

#[test]
fn raw_formula_and_exact_boundaries() {
    // 400 / (500 × 0.8) = 1 exactly: one replica, not two.
    assert_eq!(raw_recommendation(400.0, 500.0, 80), Ok(1));
    assert_eq!(raw_recommendation(400.1, 500.0, 80), Ok(2));
    assert_eq!(raw_recommendation(800.0, 500.0, 80), Ok(2));
    assert_eq!(raw_recommendation(801.0, 500.0, 80), Ok(3));
    assert_eq!(raw_recommendation(1000.0, 100.0, 100), Ok(10));
    assert_eq!(raw_recommendation(1.0, 100.0, 50), Ok(1));
    assert_eq!(raw_recommendation(0.0, 100.0, 50), Ok(0));
    // Above 100% target: 300 / (100 × 1.5) = 2.
    assert_eq!(raw_recommendation(300.0, 100.0, 150), Ok(2));
}

#[test]
fn tolerance_absorbs_floating_error() {
    // 0.07 / (1.0 × 1 / 100) evaluates to 7.000000000000001 in f64.
    let (total, capacity, target) = (0.07, 1.0, 1);
    assert!(total / (capacity * f64::from(target) / 100.0) > 7.0);
    assert_eq!(raw_recommendation(total, capacity, target), Ok(7));
    // A real excess well above the tolerance still rounds up.
    assert_eq!(raw_recommendation(0.0701, 1.0, 1), Ok(8));
}

#[test]
fn huge_traffic_saturates() {
    assert_eq!(raw_recommendation(1e300, 1.0, 1), Ok(i32::MAX));
    // A subnormal capacity makes the quotient infinite.
    assert_eq!(raw_recommendation(1e300, 1e-310, 1), Ok(i32::MAX));
    assert_eq!(raw_recommendation(f64::from(i32::MAX) * 2.0 - 1.0, 1.0, 200), Ok(i32::MAX));
}

#[test]
fn invalid_capacity_error_names_the_field() {
    for capacity in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let err = raw_recommendation(100.0, capacity, 80).unwrap_err();
        assert!(matches!(err, ScalingError::CapacityPerReplica(_)), "{capacity}: {err:?}");
        assert!(err.to_string().contains("scaling.capacityPerReplica"), "{err}");
    }
}

#[test]
fn invalid_target_and_traffic_are_refused() {
    let err = raw_recommendation(100.0, 500.0, 0).unwrap_err();
    assert_eq!(err, ScalingError::TargetUtilizationPercent(0));
    assert!(err.to_string().contains("scaling.targetUtilizationPercent"));
    assert_eq!(raw_recommendation(100.0, 500.0, -5), Err(ScalingError::TargetUtilizationPercent(-5)));
    assert!(matches!(raw_recommendation(f64::NAN, 500.0, 80), Err(ScalingError::TotalRps(_))));
    assert!(matches!(raw_recommendation(-1.0, 500.0, 80), Err(ScalingError::TotalRps(_))));
    assert!(matches!(raw_recommendation(f64::INFINITY, 500.0, 80), Err(ScalingError::TotalRps(_))));
}

#[test]
fn clamping() {
    assert_eq!(clamp_replicas(5, 2, 10), 5);
    assert_eq!(clamp_replicas(1, 2, 10), 2);
    assert_eq!(clamp_replicas(11, 2, 10), 10);
    // min = 0 allows scaling to zero.
    assert_eq!(clamp_replicas(0, 0, 10), 0);
    assert_eq!(clamp_replicas(3, 0, 10), 3);
    // max = 0 forces zero.
    assert_eq!(clamp_replicas(7, 0, 0), 0);
    // min > max: the ceiling wins.
    assert_eq!(clamp_replicas(1, 5, 3), 3);
    // Never negative.
    assert_eq!(clamp_replicas(-4, -2, 10), 0);
}

#[test]
fn hold_keeps_current_and_records_nothing() {
    let mut s = Stabilizer::new();
    assert_eq!(s.recommend(at(0), 5, 5, UP0, DOWN), 5);
    // Data missing for ten minutes: the caller holds and records nothing.
    assert_eq!(hold(5), 5);
    assert_eq!(s.len(), 1);
    // When data returns low, the lone old entry is outside the window: only the new one counts.
    assert_eq!(s.recommend(at(600), 1, 5, UP0, DOWN), 1);
}

#[test]
fn scale_up_is_immediate_with_zero_window() {
    let mut s = Stabilizer::new();
    assert_eq!(s.recommend(at(0), 2, 2, UP0, DOWN), 2);
    assert_eq!(s.recommend(at(15), 2, 2, UP0, DOWN), 2);
    assert_eq!(s.recommend(at(30), 7, 2, UP0, DOWN), 7);
}

#[test]
fn scale_up_window_picks_the_lowest() {
    let up = Duration::from_secs(60);
    let mut s = Stabilizer::new();
    assert_eq!(s.recommend(at(0), 2, 2, up, DOWN), 2);
    // Rising load: each step only goes up to the lowest seen within the last minute.
    assert_eq!(s.recommend(at(20), 6, 2, up, DOWN), 2);
    assert_eq!(s.recommend(at(40), 8, 2, up, DOWN), 2);
    // t=0 (2) has aged out; the lowest within the window is 6.
    assert_eq!(s.recommend(at(60), 9, 2, up, DOWN), 6);
    assert_eq!(s.recommend(at(80), 9, 6, up, DOWN), 8);
    assert_eq!(s.recommend(at(100), 9, 8, up, DOWN), 9);
}

#[test]
fn scale_down_waits_for_the_window_then_goes_to_highest_in_window() {
    let mut s = Stabilizer::new();
    assert_eq!(s.recommend(at(0), 10, 10, UP0, DOWN), 10);
    // Load drops in steps; nothing happens while the 10 is inside the 300 s window.
    assert_eq!(s.recommend(at(60), 6, 10, UP0, DOWN), 10);
    assert_eq!(s.recommend(at(120), 3, 10, UP0, DOWN), 10);
    assert_eq!(s.recommend(at(299), 2, 10, UP0, DOWN), 10);
    // At 300 s the 10 leaves the window; the highest left is the 6 from t=60.
    assert_eq!(s.recommend(at(300), 2, 10, UP0, DOWN), 6);
    assert_eq!(s.recommend(at(360), 2, 6, UP0, DOWN), 3);
    // The 3 from t=120 holds until it is 300 s old.
    assert_eq!(s.recommend(at(419), 2, 3, UP0, DOWN), 3);
    assert_eq!(s.recommend(at(420), 2, 3, UP0, DOWN), 2);
}

#[test]
fn flapping_input_does_not_flap_output() {
    let mut s = Stabilizer::new();
    let mut current = 2;
    let mut outputs = Vec::new();
    // Ten minutes at 15 s intervals, alternating high (8) and low (2), starting high.
    for step in 0..40 {
        let raw = if step % 2 == 0 { 8 } else { 2 };
        current = s.recommend(at(step * 15), raw, current, UP0, DOWN);
        outputs.push(current);
    }
    // Up immediately on the first high, then held for the whole ten minutes: no scale-down, no oscillation.
    assert!(outputs.iter().all(|&r| r == 8), "{outputs:?}");

    // When the load stays low, the output drops once, exactly when the last high leaves the window.
    let last_high = 38 * 15;
    let mut t = 40 * 15;
    while t < last_high + 300 {
        current = s.recommend(at(t), 2, current, UP0, DOWN);
        assert_eq!(current, 8, "at {t}");
        t += 15;
    }
    assert_eq!(t, last_high + 300);
    assert_eq!(s.recommend(at(t), 2, current, UP0, DOWN), 2);
}

#[test]
fn history_is_pruned_to_the_longer_window() {
    let mut s = Stabilizer::new();
    for step in 0..1000 {
        s.recommend(at(step * 10), 3, 3, UP0, DOWN);
    }
    // 300 s window at 10 s intervals: the entries younger than 300 s, i.e. 30.
    assert_eq!(s.len(), 30);
    // A long up window is the longer one and keeps more.
    let mut s = Stabilizer::new();
    for step in 0..1000 {
        s.recommend(at(step * 10), 3, 3, Duration::from_secs(600), DOWN);
    }
    assert_eq!(s.len(), 60);
    // After a long pause only the new entry remains.
    s.recommend(at(100_000), 3, 3, UP0, DOWN);
    assert_eq!(s.len(), 1);
}

#[test]
fn history_stays_ordered_when_the_clock_steps_back() {
    let mut s = Stabilizer::new();
    s.recommend(at(100), 4, 4, UP0, DOWN);
    s.recommend(at(50), 5, 4, UP0, DOWN);
    s.recommend(at(200), 6, 4, UP0, DOWN);
    let times: Vec<_> = s.history.iter().map(|(t, _)| *t).collect();
    assert_eq!(times, vec![at(50), at(100), at(200)]);
}
