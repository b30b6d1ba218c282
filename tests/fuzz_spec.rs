//! Property tests of the spec arithmetic (issue #11, "no input can panic or stop a controller"): every duration and
//! time field of both CRDs, at the schema's limits, just past them, at the limits of the time types, and in extreme
//! combinations, goes through the checks, the plan, the next-due and the requeue computations of both controllers
//! without a panic, and what comes out is sane (a requeue within its cap, a next rotation after the last one).
//! No cluster is needed. `KEYWARD_FUZZ_CASES=N` changes the number of cases, as in tests/fuzz.rs.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use keyward::api::apikey::{ApiKeySpec, Rotation};
use keyward::api::common::{GoDuration, RequestRate, Time};
use keyward::api::ratelimit::{
    Limit, RateLimitPolicySpec, ScaleTargetRef, Scaling, ScalingRules, TemporaryOverride, UsageSource,
};
use keyward::apikey::book::Book;
use keyward::apikey::plan::{self, Inputs, PreviousState, SecretState};
use keyward::minimums::Minimums;
use keyward::ratelimit::check::{MAX_REQUEUE, check};
use keyward::ratelimit::limits;
use keyward::scaling::{self, Stabilizer};
use keyward::schedule::RotationPlan;
use proptest::prelude::*;
use proptest::sample::select;

fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("KEYWARD_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// Durations at and around every bound: zero, the smallest, the floors, the schema's maxima (1h, 24h, 8760h) and
/// just past them, the largest the schema's pattern admits, Go's limit, beyond a SignedDuration, and the issue's.
const DURATIONS: &[&str] = &[
    "0s",
    "1ms",
    "999ms",
    "1s",
    "10s",
    "59s",
    "60s",
    "1h",
    "1h1ms",
    "24h",
    "24h1s",
    "8760h",
    "8760h1ms",
    "8761h",
    "999999ms",
    "999999h",
    "999999h999999h99999h",
    "2562047h",
    "2562048h",
    "100000000h",
    "9223372036854775807s",
    "18446744073709551615s",
    "0.000000001s",
    "1.5h",
    "bogus",
];

fn duration() -> impl Strategy<Value = GoDuration> {
    prop_oneof![
        4 => select(DURATIONS).prop_map(GoDuration::from),
        1 => (0u64..u64::MAX).prop_map(|s| GoDuration(format!("{s}s"))),
        1 => (0u64..10_000_000).prop_map(|h| GoDuration(format!("{h}h"))),
    ]
}

/// Any instant jiff can represent, the edges and the schema's range (1970 to 3000) more often.
fn instant() -> impl Strategy<Value = Timestamp> {
    let (min, max) = (Timestamp::MIN.as_second(), Timestamp::MAX.as_second());
    let seconds = prop_oneof![
        1_600_000_000..2_000_000_000i64,
        0..32_503_680_000i64,
        min..=max,
        Just(min),
        Just(max),
        Just(32_503_680_000i64),
    ];
    (seconds, 0..1_000_000_000i32).prop_map(|(s, n)| Timestamp::new(s, n).unwrap_or(Timestamp::MAX))
}

fn minimums() -> impl Strategy<Value = Minimums> {
    prop_oneof![
        Just(Minimums::NONE),
        Just(Minimums::DEFAULT),
        // Any floors `keyward run` accepts (Minimums::validate: at most the schema's maxima).
        (0u64..=86_400, 0u64..=8760 * 3600, 0u64..=8760 * 3600).prop_map(|(u, r, g)| Minimums {
            usage_interval: Duration::from_secs(u),
            rotation_interval: Duration::from_secs(r),
            grace_period: Duration::from_secs(g),
        }),
    ]
}

fn rotation() -> impl Strategy<Value = Rotation> {
    let schedule = prop::option::of(select(&["* * * * *", "0 3 * * 1", "*/5 * * * *", "0 0 29 2 *", "0 0 1 1 *"][..]));
    (prop::option::of(duration()), schedule, prop::option::of(duration()), prop::option::of(duration())).prop_map(
        |(interval, schedule, grace_period, jitter)| {
            // At most one of interval and schedule, as the schema requires (both is a refused spec anyway).
            let interval = if schedule.is_some() { None } else { interval };
            Rotation { interval, schedule: schedule.map(str::to_string), grace_period, jitter, ..Rotation::default() }
        },
    )
}

fn book() -> impl Strategy<Value = Book> {
    (prop::option::of(instant()), prop::option::of(instant()), any::<bool>(), any::<bool>(), any::<i64>()).prop_map(
        |(rotated_at, previous_expires_at, key, previous, rotation_count)| Book {
            key_id: key.then(|| "0123456789ab".to_string()),
            rotated_at,
            previous_key_id: previous.then(|| "ba9876543210".to_string()),
            previous_expires_at,
            rotation_count,
            rotate_request: None,
        },
    )
}

proptest! {
    #![proptest_config(config(600))]

    /// An ApiKey with any rotation at or past every bound, any bookkeeping and any clock: plan, decide, next book
    /// and next due never panic; a next rotation is after the last one.
    #[test]
    fn apikey_spec_arithmetic_never_panics(
        rotation in prop::option::of(rotation()),
        expires_at in prop::option::of(instant()),
        book in book(),
        now in instant(),
        min in minimums(),
        manual in any::<bool>(),
        own in any::<(bool, bool, bool)>(),
    ) {
        let spec = ApiKeySpec { rotation, expires_at: expires_at.map(Time), ..ApiKeySpec::default() };
        let parsed = RotationPlan::from_spec_with(spec.rotation.as_ref(), &min);
        let secret = SecretState::Managed { book: book.clone(), tampered: false, reseal: false };
        // The previous key's own Secret, in step with the bookkeeping or not.
        let previous = if own.2 { PreviousState::Ours { book: book.clone(), sound: own.0, version: None } } else { PreviousState::Absent };
        let inputs = Inputs {
            spec: &spec,
            rotate_request: manual.then_some("now"),
            secret: &secret,
            had_key: true,
            abuse: None,
            previous_usage: None,
            jitter_key: "ns/name/uid",
            now,
            reshape: own.2,
            previous: &previous,
            own_written: own.0,
            own_wanted: own.1,
        };
        let decision = plan::decide(&inputs, parsed.as_ref().map_err(ToString::to_string));
        let grace = parsed.as_ref().map(RotationPlan::grace_period).unwrap_or_default();
        let after = plan::next_book(&book, &decision.action, Some("fedcba987654".into()), None, grace, now);
        let (next, requeue) = plan::next_due(&after, parsed.as_ref().ok(), &spec, "ns/name/uid", now);
        if let (Some(next), Some(last)) = (next, after.rotated_at) {
            prop_assert!(next > last, "{next} is not after {last}");
        }
        if let Some(at) = requeue {
            prop_assert!(at > now);
        }
        if let Ok(p) = &parsed {
            // A plan that was accepted respects the schema's maxima and the floors.
            prop_assert!(p.grace_period() <= Duration::from_secs(8760 * 3600));
            prop_assert!(p.jitter() <= Duration::from_secs(24 * 3600));
            if let Some(last) = book.rotated_at {
                let _ = p.next_rotation(last, "k");
            }
        }
    }

    /// A RateLimitPolicy with any durations and times: check, the effective limit, the next poll, the requeue and
    /// the scaling recommendation never panic; a requeue is within [50 ms, MAX_REQUEUE].
    #[test]
    fn policy_spec_arithmetic_never_panics(
        limit in duration(),
        overrides in prop::collection::vec((duration(), instant(), 1i64..i64::MAX), 0..4),
        interval in prop::option::of(duration()),
        capacity in duration(),
        windows in (prop::option::of(duration()), prop::option::of(duration())),
        now in instant(),
        last in instant(),
        min in minimums(),
        history in prop::collection::vec((instant(), 0i32..1000), 0..6),
        total in prop_oneof![Just(0.0), 0.0f64..1e12, Just(f64::MAX)],
    ) {
        let spec = RateLimitPolicySpec {
            limit: Limit { requests: 600, period: limit, window: None, time_zone: None },
            temporary_overrides: overrides
                .into_iter()
                .map(|(period, until, requests)| TemporaryOverride { requests, period, until: Time(until), reason: "r".into() })
                .collect(),
            near_limit_ratio: None,
            usage: Some(UsageSource { interval, ..UsageSource::default() }),
            scaling: Some(Scaling {
                target_ref: ScaleTargetRef { api_version: "apps/v1".into(), kind: "Deployment".into(), name: "gw".into() },
                min_replicas: Some(1),
                max_replicas: 10,
                capacity_per_replica: RequestRate { requests: 100, period: capacity },
                target_utilization: Some(80),
                scale_up: Some(ScalingRules { stabilization_window: windows.0 }),
                scale_down: Some(ScalingRules { stabilization_window: windows.1 }),
            }),
            on_exhausted: None,
            enforce: None,
        };
        let _ = limits::effective(&spec, now);
        if let Ok(checked) = check(&spec, now, &min) {
            prop_assert!(checked.interval > Duration::ZERO && checked.interval <= Duration::from_secs(86_400));
            prop_assert!(checked.interval >= min.usage_interval);
            let next = checked.next_poll(last);
            prop_assert!(next >= last);
            let wait = checked.requeue_after(last, now);
            prop_assert!(wait >= Duration::from_millis(50) && wait <= MAX_REQUEUE, "{wait:?}");
            if let Some(s) = &checked.scaling {
                let mut stabilizer = Stabilizer::default();
                for (at, replicas) in &history {
                    stabilizer.recommend(*at, *replicas, 3, s.up_window, s.down_window);
                }
                let seeded = now.checked_sub(SignedDuration::from_millis(1)).unwrap_or(now);
                stabilizer.recommend(seeded, 3, 3, s.up_window, s.down_window);
                if let Ok(raw) = scaling::raw_recommendation(total, s.capacity_rps, s.target_utilization) {
                    let clamped = scaling::clamp_replicas(raw, s.min, s.max);
                    let desired = stabilizer.recommend(now, clamped, 3, s.up_window, s.down_window);
                    prop_assert!((0..=10).contains(&desired) || desired == 3);
                }
            }
        }
    }
}

/// The issue's case, pinned: `usage.interval: 100000000h` is refused by the check with the field named, and the
/// arithmetic it used to reach cannot panic at the end of time either.
#[test]
fn the_issue_case_is_refused_not_panicking() {
    let spec = RateLimitPolicySpec {
        limit: Limit { requests: 10, period: "1m".into(), window: None, time_zone: None },
        temporary_overrides: Vec::new(),
        near_limit_ratio: None,
        usage: Some(UsageSource { interval: Some("100000000h".into()), ..UsageSource::default() }),
        scaling: None,
        on_exhausted: None,
        enforce: None,
    };
    let err = check(&spec, Timestamp::now(), &Minimums::DEFAULT).err().expect("refused");
    assert!(err.starts_with("usage.interval: must be at most 24h"), "{err}");
    let ok = RateLimitPolicySpec {
        usage: Some(UsageSource { interval: Some("24h".into()), ..UsageSource::default() }),
        ..spec
    };
    let checked = check(&ok, Timestamp::MAX, &Minimums::DEFAULT).expect("24h is allowed");
    assert_eq!(checked.next_poll(Timestamp::MAX), Timestamp::MAX, "saturates at the end of time");
    assert_eq!(checked.requeue_after(Timestamp::MAX, Timestamp::MIN), MAX_REQUEUE);
}
