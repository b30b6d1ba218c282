//! Property-based fuzzing of what Keyward parses from users or from the network (issue "Bad input"): Go-style
//! durations, cron schedules in time zones, the Prometheus text format, Prometheus JSON answers and key checksums.
//! A parser must refuse bad input with an error, never a panic, and read well-formed input as a small model says.
//! No cluster is needed.
//!
//! Each `proptest!` block runs a fixed number of cases (its `config(N)`), chosen so that the binary stays well under a
//! minute in a debug build on two cores. `KEYWARD_FUZZ_CASES=N` replaces every block's count for a longer run, e.g.
//! `KEYWARD_FUZZ_CASES=100000 cargo test --release --test fuzz`; `PROPTEST_RNG_SEED=S` replays a run. Failures are
//! not persisted to files: the shrunk input is printed, and belongs in a regression unit test next to the parser.
//!
//! Its own binary: it needs no cluster, is CPU-bound, and is run alone for long runs (above).

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use keyward::api::apikey::{KeyEncoding, KeyFormat, Rotation};
use keyward::api::common::GoDuration;
use keyward::api::duration::{self, DurationError};
use keyward::keys::{self, KeyError, KeyMaterial, RandomSource};
use keyward::schedule::RotationPlan;
use keyward::usage::SourceError;
use keyward::usage::prometheus::parse_query_response;
use keyward::usage::textformat::{ParseError, RateTracker, counters_by_key};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use serde_json::{Value, json};

/// `cases` for one block, or `KEYWARD_FUZZ_CASES` when set.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("KEYWARD_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// Any text, or a soup of `tokens` (which gets past a parser's first check more often).
fn text_over(tokens: &'static [&'static str], max_tokens: usize) -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), prop::collection::vec(select(tokens), 0..=max_tokens).prop_map(|t| t.concat())]
}

/// `text` with one to four tokens inserted or characters removed or replaced, and maybe cut short.
fn mutated(text: String, tokens: &'static [&'static str]) -> impl Strategy<Value = String> {
    let edit = (any::<Index>(), 0..3u8, select(tokens));
    (prop::collection::vec(edit, 1..5), any::<Index>()).prop_map(move |(edits, cut)| {
        let mut chars: Vec<char> = text.chars().collect();
        for (at, kind, token) in edits {
            let i = at.index(chars.len() + 1);
            match kind {
                0 if i < chars.len() => {
                    chars.remove(i);
                }
                1 if i < chars.len() => chars[i] = token.chars().next().unwrap_or(' '),
                _ => token.chars().rev().for_each(|c| chars.insert(i, c)),
            }
        }
        chars.truncate(cut.index(chars.len() + 1).max(chars.len() * 3 / 4));
        chars.into_iter().collect()
    })
}

/// 4000-01-01T00:00:00Z.
const YEAR_4000: Timestamp = Timestamp::constant(64_060_588_800, 0);

/// Any instant jiff can represent (years -9999 to 9999), the present day more often.
fn instant() -> impl Strategy<Value = Timestamp> {
    let (min, max) = (Timestamp::MIN.as_second(), Timestamp::MAX.as_second());
    let seconds = prop_oneof![1_600_000_000..2_000_000_000i64, min..=max, Just(max)];
    (seconds, 0..1_000_000_000i32).prop_map(|(s, n)| Timestamp::new(s, n).unwrap_or(Timestamp::MAX))
}

// ---------------------------------------------------------------------------------------------------------------------
// Durations

const DURATION_TOKENS: &[&str] =
    &["0", "1", "5", "9", "00", "123", ".", "ms", "s", "m", "h", "us", "ns", "d", "H", "+", "-", " ", "\t", "é"];
static UNITS: [(&str, u128); 4] =
    [("ms", 1_000_000), ("s", 1_000_000_000), ("m", 60_000_000_000), ("h", 3_600_000_000_000)];

/// `DURATION_PATTERN` (`^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$`) by hand.
fn matches_pattern(mut rest: &str) -> bool {
    let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
    while !rest.is_empty() {
        let whole = digits(rest);
        if whole == 0 {
            return false;
        }
        rest = &rest[whole..];
        if let Some(after) = rest.strip_prefix('.') {
            let frac = digits(after);
            if frac == 0 {
                return false;
            }
            rest = &after[frac..];
        }
        match rest.strip_prefix("ms").or_else(|| rest.strip_prefix(['s', 'm', 'h'])) {
            Some(after) => rest = after,
            None => return false,
        }
    }
    true
}

/// A well-formed duration of up to five parts (fractions of up to 24 digits) and its exact value in nanoseconds, each
/// part truncated to whole nanoseconds.
fn valid_duration() -> impl Strategy<Value = (String, u128)> {
    let part = (prop_oneof![0..100u64, any::<u32>().prop_map(u64::from)], "([0-9]{1,24})?", select(&UNITS[..]));
    prop::collection::vec(part, 1..6).prop_map(|parts| {
        let (mut text, mut nanos) = (String::new(), 0u128);
        for (whole, frac, (unit, unit_nanos)) in parts {
            let dot = if frac.is_empty() { "" } else { "." };
            text.push_str(&format!("{whole}{dot}{frac}{unit}"));
            let scale = 10u128.pow(frac.len() as u32);
            nanos += u128::from(whole) * unit_nanos + frac.parse::<u128>().unwrap_or(0) * unit_nanos / scale;
        }
        (text, nanos)
    })
}

proptest! {
    #![proptest_config(config(2_000))]

    /// Anything: never a panic; accepted exactly when the schema's pattern matches (or refused as too large).
    #[test]
    fn duration_agrees_with_the_schema_pattern(
        input in prop_oneof![
            text_over(DURATION_TOKENS, 12),
            valid_duration().prop_flat_map(|(text, _)| mutated(text, DURATION_TOKENS)),
        ],
    ) {
        match duration::parse(&input) {
            Ok(_) | Err(DurationError::Overflow(_)) => prop_assert!(matches_pattern(&input)),
            Err(DurationError::Empty) => prop_assert!(input.is_empty()),
            Err(DurationError::Syntax(_)) => prop_assert!(!input.is_empty() && !matches_pattern(&input)),
        }
    }

    #[test]
    fn duration_parses_to_its_exact_value((text, nanos) in valid_duration()) {
        prop_assert_eq!(duration::parse(&text).map(|d| d.as_nanos()), Ok(nanos), "{}", text);
    }

    /// Any `Duration`, written as seconds with nine decimals or as `<h>h<m>m<s>s<ms>ms`, comes back unchanged.
    #[test]
    fn duration_round_trips(secs in any::<u64>(), nanos in 0..1_000_000_000u32) {
        prop_assert_eq!(duration::parse(&format!("{secs}.{nanos:09}s")), Ok(Duration::new(secs, nanos)));
        let hms = format!("{}h{}m{}s{}ms", secs / 3600, secs % 3600 / 60, secs % 60, nanos / 1_000_000);
        prop_assert_eq!(duration::parse(&hms), Ok(Duration::new(secs, nanos - nanos % 1_000_000)));
    }

    /// Huge numbers are `Overflow`, never a panic or a wrapped value: the limit is `u64::MAX` seconds.
    #[test]
    fn duration_overflow_is_an_error(
        digits in "[1-9][0-9]{0,45}",
        units in prop::collection::vec(select(&UNITS[..]), 1..4),
    ) {
        let text: String = units.iter().map(|(unit, _)| format!("{digits}{unit}")).collect();
        let limit = (u128::from(u64::MAX) + 1) * 1_000_000_000;
        let want = digits.parse::<u128>().ok()
            .and_then(|w| units.iter().try_fold(0u128, |t, (_, n)| t.checked_add(w.checked_mul(*n)?)))
            .filter(|&n| n < limit);
        match (duration::parse(&text), want) {
            (Ok(d), Some(n)) => prop_assert_eq!(d.as_nanos(), n),
            (Err(DurationError::Overflow(_)), None) => {}
            (got, want) => prop_assert!(false, "{text}: got {got:?}, want {want:?} ns"),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------------
// Cron schedules

/// A cron field with values in `lo..=hi` or `names`, now and then out of range or malformed.
fn cron_field(lo: u32, hi: u32, names: &'static [&'static str]) -> impl Strategy<Value = String> {
    let n = prop_oneof![20 => lo..=hi, 1 => 0..100u32];
    let atom = prop_oneof![
        6 => n.clone().prop_map(|n| n.to_string()),
        2 => select(names).prop_map(str::to_string),
        2 => (n.clone(), n.clone()).prop_map(|(a, b)| format!("{a}-{b}")),
        2 => (0..=hi + 2).prop_map(|s| format!("*/{s}")),
        1 => (n.clone(), n.clone(), 0..=hi).prop_map(|(a, b, s)| format!("{a}-{b}/{s}")),
        1 => (n, 0..=hi).prop_map(|(a, s)| format!("{a}/{s}")),
        1 => select(&["?", "L", "W", "-", ",", "/", "*/", "-1", "", "**", "1,,2", "0x1"]).prop_map(str::to_string),
    ];
    prop_oneof![Just("*".to_string()), prop::collection::vec(atom, 1..3).prop_map(|atoms| atoms.join(","))]
}

fn cron_expression() -> impl Strategy<Value = String> {
    let fields = (
        cron_field(0, 59, &["0", "59"]),
        cron_field(0, 23, &["0", "23"]),
        cron_field(1, 31, &["L", "15W", "LW", "31", "29"]),
        cron_field(1, 12, &["JAN", "feb", "Dec", "JAN-MAR", "JUN-AUG/2", "XYZ"]),
        cron_field(0, 7, &["MON", "sun", "Fri", "MON-FRI", "SAT,SUN", "5L", "MON#2", "1#5", "7#1", "FRI-MON"]),
    );
    prop_oneof![
        8 => fields.prop_map(|(a, b, c, d, e)| format!("{a} {b} {c} {d} {e}")),
        1 => prop::collection::vec(cron_field(0, 59, &["MON", "JAN"]), 0..8).prop_map(|f| f.join(" \t")),
        1 => any::<String>(),
    ]
}

fn time_zone() -> impl Strategy<Value = Option<String>> {
    let known = "UTC Europe/Berlin America/New_York Australia/Lord_Howe Asia/Kathmandu Pacific/Chatham \
        America/St_Johns Etc/GMT+12 Etc/GMT-14 Pacific/Kiritimati Antarctica/Troll America/Santiago";
    let known = select(known.split_whitespace().collect::<Vec<_>>());
    prop_oneof![
        3 => Just(None),
        6 => known.prop_map(|z| Some(z.to_string())),
        1 => "[A-Za-z0-9_+-]{1,12}(/[A-Za-z0-9_+-]{1,12}){0,2}".prop_map(Some),
        1 => any::<String>().prop_map(Some),
    ]
}

proptest! {
    #![proptest_config(config(400))]

    /// Any schedule in any time zone: never a panic. One that parses rotates strictly after the last rotation, the
    /// same way every time, and (repeating every 400 years, and known to match after 1970) always again after any
    /// instant before the year 4000 when the jitter is at most 1000 years.
    #[test]
    fn cron_next_is_later(
        schedule in cron_expression(),
        time_zone in time_zone(),
        jitter in prop::option::of(select(&["0s", "1ms", "999ms", "90s", "1h", "8760h", "8760000h", "300000000000h"])),
        last in instant(),
    ) {
        let jitter = jitter.map(GoDuration::from);
        let rotation = Rotation { schedule: Some(schedule), time_zone, jitter, ..Rotation::default() };
        if let Ok(plan) = RotationPlan::from_spec(Some(&rotation)) {
            let next = plan.next_rotation(last, "ns/name/uid");
            prop_assert_eq!(next, plan.next_rotation(last, "ns/name/uid"));
            match next {
                Some(next) => prop_assert!(next > last, "{next} is not after {last}"),
                None => prop_assert!(last > YEAR_4000 || plan.jitter() > Duration::from_secs(1000 * 366 * 86_400)),
            }
        }
    }

    /// Any interval: never a panic; the next rotation is the interval plus less than the jitter after the last one.
    #[test]
    fn interval_next_is_later(
        interval in prop_oneof![text_over(DURATION_TOKENS, 6), valid_duration().prop_map(|(t, _)| t)],
        jitter in "[0-9]{1,3}(ms|s|m|h)",
        last in instant(),
    ) {
        let (interval, jitter) = (Some(GoDuration(interval.clone())), Some(GoDuration(jitter)));
        let rotation = Rotation { interval, jitter, ..Rotation::default() };
        if let Ok(plan) = RotationPlan::from_spec(Some(&rotation)) {
            let step = SignedDuration::try_from(rotation.interval.as_ref().unwrap().parse().unwrap()).unwrap();
            if let Some(next) = plan.next_rotation(last, "key") {
                let earliest = last.checked_add(step).expect("next exists, so last + interval does");
                let jitter = SignedDuration::try_from(plan.jitter().max(Duration::from_nanos(1))).unwrap();
                prop_assert!(next > last && next >= earliest && next.duration_since(earliest) < jitter);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------------
// Prometheus text format

const TEXT_TOKENS: &[&str] = &[
    "req", "key", "_", ":", "0", "9", ".", "e", "+", "-", "{", "}", "\"", "\\", "=", ",", " ", "\t", "\n", "\r\n", "#",
    "NaN", "Inf", "é", "\u{0}", "\\n", "\\\"",
];

/// A sample value as a gateway or Prometheus might write it, and the number it stands for.
fn sample_value() -> impl Strategy<Value = (String, f64)> {
    let integral = prop_oneof![0..1_000_000u64, any::<u64>()].prop_map(|n| n as f64);
    prop_oneof![
        integral.clone().prop_map(|v| (v.to_string(), v)),
        integral.prop_map(|v| (format!("-{v}"), -v)),
        any::<f64>().prop_map(|v| (format!("{v}"), v)),
        any::<f64>().prop_map(|v| (format!("{v:e}"), v)),
        any::<f64>().prop_map(|v| (format!("{v:E}"), v)),
        (0..10_000u32, -330..330i32).prop_map(|(m, e)| {
            let text = format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs()); // Go's style: 1e+06
            let value = text.parse().unwrap();
            (text, value)
        }),
        select(&["NaN", "+Inf", "-Inf", "Inf", "inf", "-0", "+0.5", ".5", "1."])
            .prop_map(|t| (t.to_string(), t.parse().unwrap())),
    ]
}

/// One sample line of a valid exposition: metric, `key` label (if any), value, and the line.
type Sample = (String, Option<String>, f64, String);

fn sample() -> impl Strategy<Value = Sample> {
    let metric = prop_oneof![Just("req_total".to_string()), Just("req".to_string()), "[a-zA-Z_:][a-zA-Z0-9_:]{0,10}"];
    let key = prop::option::of(prop_oneof![select(&["a", "b", ""]).prop_map(str::to_string), any::<String>()]);
    let others = prop::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,6}", any::<String>(), 0..4);
    let blank = select(&["", " ", "\t", " \t "]);
    let layout = (blank.clone(), blank, any::<bool>(), any::<Index>(), prop::option::of(any::<i64>()));
    (metric, key, others, sample_value(), layout).prop_map(|(metric, key, mut others, (text, value), layout)| {
        let (lead, gap, trailing_comma, key_at, timestamp) = layout;
        let escape = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        others.remove("key");
        let mut labels: Vec<String> = others.iter().map(|(n, v)| format!("{n}{gap}={gap}\"{}\"", escape(v))).collect();
        if let Some(key) = &key {
            labels.insert(key_at.index(labels.len() + 1), format!("key=\"{}\"", escape(key)));
        }
        let mut line = format!("{lead}{metric}");
        if !labels.is_empty() || trailing_comma {
            let comma = if trailing_comma && !labels.is_empty() { "," } else { "" };
            line.push_str(&format!("{{{gap}{}{comma}{gap}}}", labels.join(&format!("{gap},{gap}"))));
        }
        line.push_str(&format!(" {gap}{text}"));
        if let Some(ts) = timestamp {
            line.push_str(&format!("\t{ts}"));
        }
        line.push_str(lead);
        (metric, key, value, line)
    })
}

/// A valid exposition: samples among comments and blank lines, with `\n` or `\r\n` line ends.
fn exposition() -> impl Strategy<Value = (String, Vec<Sample>)> {
    let filler = select(&["", "  ", "# HELP req_total Requests.", "# TYPE req_total counter", "#", "# {\"\\ é"]);
    let line = prop_oneof![3 => sample().prop_map(Ok), 1 => filler.prop_map(Err)];
    (prop::collection::vec(line, 0..20), any::<bool>()).prop_map(|(lines, crlf)| {
        let end = if crlf { "\r\n" } else { "\n" };
        let text = lines.iter().map(|l| l.as_ref().map_or_else(|f| f.to_string(), |s| s.3.clone()) + end).collect();
        (text, lines.into_iter().filter_map(Result::ok).collect())
    })
}

/// What `counters_by_key(_, "req_total", "key")` must return: the finite, non-negative values of `req_total` with a
/// non-empty key, added up per key in order.
fn model_counters(samples: &[Sample]) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    for (metric, key, value, _) in samples {
        if let Some(key) = key.as_ref().filter(|k| !k.is_empty())
            && metric == "req_total"
            && value.is_finite()
            && *value >= 0.0
        {
            *sums.entry(key.clone()).or_insert(0.0) += value;
        }
    }
    sums
}

/// Counters are never negative or NaN; an error names a real line and quotes at most 40 characters of it.
fn check_counters(text: &str, result: Result<BTreeMap<String, f64>, ParseError>) -> Result<(), TestCaseError> {
    match result {
        Ok(sums) => prop_assert!(sums.values().all(|v| *v >= 0.0), "{:?}", sums),
        Err(err) => {
            prop_assert!(err.line <= text.split('\n').count() && err.excerpt.chars().count() <= 43, "{:?}", err);
        }
    }
    Ok(())
}

/// Counters as `counters_by_key` gives them: non-negative, infinite when a sum overflowed (and NaN, for good measure).
fn counter() -> impl Strategy<Value = f64> {
    prop_oneof![4 => 0.0..1e15f64, 1 => 0.0..=f64::MAX, 1 => Just(f64::INFINITY), 1 => Just(f64::NAN)]
}

proptest! {
    #![proptest_config(config(1_000))]

    #[test]
    fn text_format_never_panics(
        text in text_over(TEXT_TOKENS, 40),
        bytes in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        check_counters(&text, counters_by_key(&text, "req", "key"))?;
        let lossy = String::from_utf8_lossy(&bytes);
        check_counters(&lossy, counters_by_key(&lossy, "req", "key"))?;
    }

    #[test]
    fn text_format_mutations_never_panic(text in exposition().prop_flat_map(|(text, _)| mutated(text, TEXT_TOKENS))) {
        check_counters(&text, counters_by_key(&text, "req_total", "key"))?;
    }

    /// Generated expositions give the model's per-key sums, bit for bit.
    #[test]
    fn text_format_sums_match_the_model((text, samples) in exposition()) {
        prop_assert_eq!(counters_by_key(&text, "req_total", "key"), Ok(model_counters(&samples)), "{}", text);
    }

    /// Polls at any instants: no rate before a second poll or when the clock did not advance; else a rate for each
    /// key with finite counters in both polls, never negative or NaN, and finite unless a counter is near `f64::MAX`
    /// (an increase of 1e300 in 1 ns is infinite; `Scrape::poll` drops such rates).
    #[test]
    fn rate_tracker_rates_are_sane(
        start in instant(),
        polls in prop::collection::vec((
            prop_oneof![-5..3_600i64, Just(0), any::<i64>()],
            0..1_000_000_000i32,
            prop::collection::btree_map(select(&["a", "b", "c"]), counter(), 0..3),
        ), 1..8),
    ) {
        let (mut tracker, mut now) = (RateTracker::new(), start);
        let mut previous: Option<(Timestamp, BTreeMap<&str, f64>)> = None;
        for (secs, nanos, counters) in polls {
            let Ok(next) = now.checked_add(SignedDuration::new(secs % 1_000_000_000_000, nanos)) else { continue };
            now = next;
            let rates = tracker.observe(now, counters.iter().map(|(k, v)| (k.to_string(), *v)).collect());
            match &previous {
                Some((then, old)) if now > *then => {
                    let rates = rates.expect("a later poll gives rates");
                    let both: Vec<&str> = counters.iter()
                        .filter(|(k, v)| v.is_finite() && old.get(*k).is_some_and(|o| o.is_finite()))
                        .map(|(k, _)| *k)
                        .collect();
                    prop_assert_eq!(rates.keys().map(String::as_str).collect::<Vec<_>>(), both);
                    for (key, rate) in &rates {
                        let (a, b) = (old[key.as_str()], counters[key.as_str()]);
                        prop_assert!(*rate >= 0.0 && (rate.is_finite() || a.max(b) > 1e290), "{key}: {a} -> {b}");
                    }
                }
                _ => prop_assert!(rates.is_none()),
            }
            previous = Some((now, counters));
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------------
// Prometheus JSON (`/api/v1/query`)

/// One series of an instant vector: labels, and the value as written (`None`: a native histogram, no `value`).
type Series = (BTreeMap<String, String>, Option<String>);

fn series() -> impl Strategy<Value = Series> {
    let key = prop::option::of(prop_oneof![select(&["a", "b", ""]).prop_map(str::to_string), any::<String>()]);
    let labels = prop::collection::btree_map(any::<String>(), any::<String>(), 0..3);
    let value = prop_oneof![
        8 => sample_value().prop_map(|(text, _)| Some(text)),
        1 => Just(None),
        1 => select(&["", "one", "0x10", "1e", "--1"]).prop_map(|t| Some(t.to_string())),
    ];
    (key, labels, value).prop_map(|(key, mut labels, value)| {
        labels.remove("api_key");
        labels.extend(key.map(|k| ("api_key".to_string(), k)));
        (labels, value)
    })
}

fn vector_document(series: &[Series]) -> Vec<u8> {
    let result: Vec<Value> = series
        .iter()
        .map(|(labels, value)| match value {
            Some(v) => json!({"metric": labels, "value": [1_700_000_000.5, v]}),
            None => json!({"metric": labels, "histogram": [1_700_000_000, {"count": "1", "sum": "2"}]}),
        })
        .collect();
    serde_json::to_vec(&json!({"status": "success", "data": {"resultType": "vector", "result": result}})).unwrap()
}

/// What `parse_query_response(_, "api_key")` must return: `None` (an error) when a keyed series' value is no number,
/// else the finite, non-negative values added up per key in order, less the sums that overflowed.
fn model_rates(series: &[Series]) -> Option<BTreeMap<String, f64>> {
    let mut rates = BTreeMap::new();
    for (labels, value) in series {
        let (Some(key), Some(text)) = (labels.get("api_key").filter(|k| !k.is_empty()), value) else { continue };
        let value: f64 = text.parse().ok()?;
        if value.is_finite() && value >= 0.0 {
            *rates.entry(key.clone()).or_insert(0.0) += value;
        }
    }
    rates.retain(|_, r: &mut f64| r.is_finite());
    Some(rates)
}

/// Rates are finite and non-negative; an error stays short whatever the input (it quotes at most 40 characters of a
/// value or type, or 200 of a Prometheus message, debug-escaped).
fn check_rates(result: Result<BTreeMap<String, f64>, SourceError>) -> Result<(), TestCaseError> {
    match result {
        Ok(rates) => prop_assert!(rates.values().all(|r| r.is_finite() && *r >= 0.0), "{:?}", rates),
        Err(err) => prop_assert!(err.to_string().chars().count() < 700, "{}", err),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(600))]

    #[test]
    fn prometheus_json_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300), text in any::<String>()) {
        check_rates(parse_query_response(&bytes, "api_key"))?;
        check_rates(parse_query_response(text.as_bytes(), "api_key"))?;
        let envelope = format!(r#"{{"status":"success","data":{{"resultType":"vector","result":{text}}}}}"#);
        check_rates(parse_query_response(envelope.as_bytes(), "api_key"))?;
    }

    /// Generated answers cut short or with bytes changed, error answers and deep nesting: never a panic.
    #[test]
    fn prometheus_json_mutations_never_panic(
        series in prop::collection::vec(series(), 0..6),
        flips in prop::collection::vec((any::<Index>(), any::<u8>()), 0..4),
        cut in any::<Index>(),
        message in any::<String>(),
        depth in 0..5_000usize,
    ) {
        let mut body = vector_document(&series);
        for (at, byte) in flips {
            let i = at.index(body.len());
            body[i] = byte;
        }
        body.truncate(cut.index(body.len() + 1).max(body.len() / 2));
        check_rates(parse_query_response(&body, "api_key"))?;
        let error = json!({"status": "error", "errorType": message, "error": message.repeat(3)});
        check_rates(parse_query_response(&serde_json::to_vec(&error).unwrap(), "api_key"))?;
        let (open, close) = ("[".repeat(depth), "]".repeat(depth));
        let deep = format!(r#"{{"status":"success","data":{{"resultType":"vector","result":{open}{close}}}}}"#);
        check_rates(parse_query_response(deep.as_bytes(), "api_key"))?;
    }

    /// Generated answers give the model's per-key sums, bit for bit, or an error exactly when a keyed value is no
    /// number.
    #[test]
    fn prometheus_json_sums_match_the_model(series in prop::collection::vec(series(), 0..12)) {
        let got = parse_query_response(&vector_document(&series), "api_key");
        match model_rates(&series) {
            Some(want) => prop_assert_eq!(got.expect("a valid answer"), want),
            None => prop_assert!(matches!(got, Err(SourceError::InvalidResponse { .. })), "{:?}", got),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------------
// Key checksums

/// Random bytes chosen by the test case.
struct Fixed(Vec<u8>);

impl RandomSource for Fixed {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), KeyError> {
        buf.copy_from_slice(&self.0[..buf.len()]);
        Ok(())
    }
}

/// A format the schema allows (any prefix, encoding and entropy), and a key generated for it from random bytes
/// (sometimes all zero or all one bits, the extremes of base62).
fn generated_key() -> impl Strategy<Value = (KeyFormat, String)> {
    let encoding = select(&[KeyEncoding::Base62, KeyEncoding::Base64Url, KeyEncoding::Hex]);
    let bytes =
        prop_oneof![4 => prop::collection::vec(any::<u8>(), 128), 1 => Just(vec![0; 128]), 1 => Just(vec![0xff; 128])];
    ("[A-Za-z0-9_]{0,16}", 16..=128i32, encoding, bytes).prop_map(|(prefix, n, encoding, bytes)| {
        let format = KeyFormat { prefix: Some(prefix), entropy_bytes: Some(n), encoding: Some(encoding) };
        let key = keys::generate(&format, &mut Fixed(bytes)).expect("a valid format").expose().to_string();
        (format, key)
    })
}

proptest! {
    #![proptest_config(config(1_000))]

    #[test]
    fn generated_keys_verify((format, key) in generated_key()) {
        prop_assert!(keys::verify_checksum(&key));
        prop_assert_eq!(keys::verify_format(&key, &format), Ok(()));
        let id = keys::key_id(&KeyMaterial::from_secret_bytes(key.into_bytes()).unwrap());
        prop_assert!(id.len() == keys::KEY_ID_LEN && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    }

    /// Any one character changed to another ASCII character breaks the checksum: in the checksum trivially (it is
    /// the one encoding of one CRC), elsewhere because CRC-32 detects every error burst of up to 32 bits (one byte is
    /// 8). Any other character (several bytes) always fails `verify_format`, and `verify_checksum` when it lands in
    /// the checksum; in the prefix or body it is caught with probability 1 - 2^-32 only, which is not asserted.
    #[test]
    fn one_changed_character_is_detected(
        (format, key) in generated_key(),
        at in any::<Index>(),
        ascii in 0..128u8,
        other in any::<char>(),
    ) {
        let chars: Vec<char> = key.chars().collect();
        let i = at.index(chars.len());
        for replacement in [char::from(ascii), other] {
            if replacement == chars[i] {
                continue;
            }
            let mut changed = chars.clone();
            changed[i] = replacement;
            let changed: String = changed.into_iter().collect();
            prop_assert!(keys::verify_format(&changed, &format).is_err(), "{}", changed);
            if replacement.is_ascii() || i >= chars.len() - keys::CHECKSUM_LEN {
                prop_assert!(!keys::verify_checksum(&changed), "{} -> {}", key, changed);
            }
        }
    }

    /// Two different neighbours swapped on the same side of the checksum are detected too (a burst of 16 bits).
    #[test]
    fn swapped_neighbours_are_detected((_, key) in generated_key(), at in any::<Index>()) {
        let mut bytes = key.into_bytes();
        let split = bytes.len() - keys::CHECKSUM_LEN;
        // The first pair at or after a random place (keys of all-zero bytes are mostly one character).
        let start = at.index(bytes.len() - 1);
        let mut pairs = (start..bytes.len() - 1).chain(0..start);
        let Some(i) = pairs.find(|&i| bytes[i] != bytes[i + 1] && i + 1 != split) else { return Ok(()) };
        bytes.swap(i, i + 1);
        prop_assert!(!keys::verify_checksum(&String::from_utf8(bytes).unwrap()));
    }

    /// Anything against any format: never a panic, and a key `verify_format` accepts has a valid checksum.
    #[test]
    fn any_text_never_panics(
        text in prop_oneof![any::<String>(), "[A-Za-z0-9_-]{0,200}", generated_key().prop_map(|(_, k)| k + "x")],
        prefix in prop::option::of(prop_oneof!["[A-Za-z0-9_]{0,17}", any::<String>()]),
        entropy_bytes in prop::option::of(prop_oneof![16..=128i32, any::<i32>()]),
        encoding in prop::option::of(select(&[KeyEncoding::Base62, KeyEncoding::Base64Url, KeyEncoding::Hex])),
        secret in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let valid = keys::verify_checksum(&text);
        if keys::verify_format(&text, &KeyFormat { prefix, entropy_bytes, encoding }).is_ok() {
            prop_assert!(valid);
        }
        if let Ok(material) = KeyMaterial::from_secret_bytes(secret) {
            prop_assert_eq!(keys::key_id(&material).len(), keys::KEY_ID_LEN);
        }
    }
}
