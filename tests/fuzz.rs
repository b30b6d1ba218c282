//! Property-based fuzzing of everything Keyward parses from users or from the network (issue "Bad input"): Go-style
//! durations, cron schedules with time zones, the Prometheus text format, Prometheus JSON answers and key checksums.
//! Every parser must refuse bad input with an error, never a panic, and read well-formed input as a simple model of
//! it says. No cluster is needed.
//!
//! Each `proptest!` block runs a fixed number of cases (its `config(N)`), chosen so that the whole binary stays well
//! under a minute in a debug build on two cores. `KEYWARD_FUZZ_CASES=N` replaces every block's count for a longer run,
//! e.g. `KEYWARD_FUZZ_CASES=100000 cargo test --release --test fuzz`; `PROPTEST_RNG_SEED=S` replays a run. Failures
//! are not persisted to files: the shrunk input is printed, and belongs in a regression unit test next to the parser.

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
use keyward::usage::textformat::{RateTracker, counters_by_key};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Value, json};

/// `cases` for one block, or `KEYWARD_FUZZ_CASES` when set.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("KEYWARD_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// Any text, half the time confined to `alphabet` (so the parser gets past its first check more often).
fn text_over(alphabet: &'static [&'static str], max_tokens: usize) -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), prop::collection::vec(select(alphabet), 0..=max_tokens).prop_map(|t| t.concat())]
}

// ------------------------------------------------------------------------------------------------------------------
// Durations

const DURATION_TOKENS: &[&str] =
    &["0", "1", "5", "9", "00", "123", ".", "ms", "s", "m", "h", "us", "ns", "d", "H", "+", "-", " ", "\t", "é"];
const UNITS: [(&str, u128); 4] =
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

/// One `<whole>[.<fraction>]<unit>` part: the whole number, the fraction's digits and the unit's index in [`UNITS`].
fn duration_part() -> impl Strategy<Value = (u64, String, usize)> {
    (prop_oneof![0..100u64, 0..1_000_000_000u64], "([0-9]{1,24})?", 0..UNITS.len())
}

/// Nanoseconds of `parts`, each truncated to whole nanoseconds (as the parser does), exactly; `None` past u128.
fn model_nanos(parts: &[(u64, String, usize)]) -> Option<u128> {
    parts.iter().try_fold(0u128, |total, (whole, frac, unit)| {
        let unit = UNITS[*unit].1;
        let frac_nanos =
            if frac.is_empty() { 0 } else { frac.parse::<u128>().ok()? * unit / 10u128.pow(frac.len() as u32) };
        total.checked_add(u128::from(*whole).checked_mul(unit)?.checked_add(frac_nanos)?)
    })
}

proptest! {
    #![proptest_config(config(2_000))]

    /// Anything: never a panic; accepted exactly when the schema pattern matches (or refused as too large).
    #[test]
    fn duration_agrees_with_the_schema_pattern(input in text_over(DURATION_TOKENS, 12)) {
        match duration::parse(&input) {
            Ok(_) => prop_assert!(matches_pattern(&input)),
            Err(DurationError::Overflow(_)) => prop_assert!(matches_pattern(&input)),
            Err(DurationError::Empty) => prop_assert!(input.is_empty()),
            Err(DurationError::Syntax(_)) => prop_assert!(!input.is_empty() && !matches_pattern(&input)),
        }
    }

    /// Well-formed sequences of parts parse to their exact value, truncated to the nanosecond per part.
    #[test]
    fn duration_parts_parse_to_their_value(parts in prop::collection::vec(duration_part(), 1..6)) {
        let text: String = parts
            .iter()
            .map(|(whole, frac, unit)| {
                let dot = if frac.is_empty() { "" } else { "." };
                format!("{whole}{dot}{frac}{}", UNITS[*unit].0)
            })
            .collect();
        let nanos = model_nanos(&parts).expect("small parts fit");
        prop_assert_eq!(duration::parse(&text).map(|d| d.as_nanos()), Ok(nanos), "{}", text);
    }

    /// Any `Duration` written as seconds with nine decimals, or as hours, minutes, seconds and milliseconds, comes
    /// back unchanged.
    #[test]
    fn duration_round_trips(secs in any::<u64>(), nanos in 0..1_000_000_000u32) {
        let d = Duration::new(secs, nanos);
        prop_assert_eq!(duration::parse(&format!("{secs}.{nanos:09}s")), Ok(d));
        let millis = Duration::new(secs, nanos - nanos % 1_000_000);
        let hms = format!("{}h{}m{}s{}ms", secs / 3600, secs % 3600 / 60, secs % 60, nanos / 1_000_000);
        prop_assert_eq!(duration::parse(&hms), Ok(millis));
    }

    /// Huge numbers are `Overflow`, never a panic or a wrapped value: the limit is `u64::MAX` seconds.
    #[test]
    fn duration_overflow_is_an_error(digits in "[1-9][0-9]{0,45}", units in prop::collection::vec(0..UNITS.len(), 1..4)) {
        let text: String = units.iter().map(|&u| format!("{digits}{}", UNITS[u].0)).collect();
        let whole = digits.parse::<u128>().ok();
        let limit = (u128::from(u64::MAX) + 1) * 1_000_000_000;
        let expected = whole
            .and_then(|w| units.iter().try_fold(0u128, |t, &u| t.checked_add(w.checked_mul(UNITS[u].1)?)))
            .filter(|&n| n < limit);
        match (duration::parse(&text), expected) {
            (Ok(d), Some(n)) => prop_assert_eq!(d.as_nanos(), n),
            (Err(DurationError::Overflow(_)), None) => {}
            (got, want) => prop_assert!(false, "{text}: got {got:?}, want {want:?} ns"),
        }
    }
}

// ------------------------------------------------------------------------------------------------------------------
// Cron schedules

fn cron_field() -> impl Strategy<Value = String> {
    let number = prop_oneof![0..62u32, Just(99), Just(7), Just(31), Just(12), Just(24), Just(60)];
    let name =
        select(&["MON", "sun", "Fri", "JAN", "dec", "Feb", "L", "W", "?", "5L", "15W", "MON#2", "1#5", "LW", "X"]);
    let atom = prop_oneof![
        Just("*".to_string()),
        number.clone().prop_map(|n| n.to_string()),
        name.prop_map(str::to_string),
        (number.clone(), number.clone()).prop_map(|(a, b)| format!("{a}-{b}")),
        (0..70u32).prop_map(|n| format!("*/{n}")),
        (number.clone(), number.clone(), 0..70u32).prop_map(|(a, b, n)| format!("{a}-{b}/{n}")),
        (number, 0..70u32).prop_map(|(a, n)| format!("{a}/{n}")),
        select(&["-", ",", "/", "*/", "-1", "1-", "", "**", "1,,2", "MON-FRI", "JAN-MAR/2"]).prop_map(str::to_string),
    ];
    prop::collection::vec(atom, 1..4).prop_map(|atoms| atoms.join(","))
}

fn cron_expression() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(cron_field(), 5..=5).prop_map(|f| f.join(" ")),
        1 => prop::collection::vec(cron_field(), 0..8).prop_map(|f| f.join("  ")),
        1 => any::<String>(),
    ]
}

fn time_zone() -> impl Strategy<Value = Option<String>> {
    let known = select(&[
        "UTC",
        "Europe/Berlin",
        "America/New_York",
        "Australia/Lord_Howe",
        "Asia/Kathmandu",
        "Pacific/Chatham",
        "America/St_Johns",
        "Etc/GMT+12",
        "Etc/GMT-14",
        "Pacific/Kiritimati",
        "Antarctica/Troll",
        "America/Santiago",
    ]);
    prop_oneof![
        Just(None),
        known.prop_map(|z| Some(z.to_string())),
        "[A-Za-z0-9_+-]{1,12}(/[A-Za-z0-9_+-]{1,12}){0,2}".prop_map(Some),
        any::<String>().prop_map(Some),
    ]
}

/// Any instant jiff can represent (years -9999 to 9999), with the present day more likely.
fn instant() -> impl Strategy<Value = Timestamp> {
    let seconds = prop_oneof![
        1_600_000_000..2_000_000_000i64,
        Timestamp::MIN.as_second()..=Timestamp::MAX.as_second(),
        Just(Timestamp::MAX.as_second()),
    ];
    (seconds, 0..1_000_000_000i32).prop_map(|(s, n)| Timestamp::new(s, n).unwrap_or(Timestamp::MAX))
}

proptest! {
    #![proptest_config(config(300))]

    /// Any schedule in any time zone: never a panic; a schedule that parses rotates strictly after the last rotation,
    /// the same way every time.
    #[test]
    fn cron_never_panics_and_next_is_later(
        schedule in cron_expression(),
        time_zone in time_zone(),
        jitter in prop::option::of(select(&["0s", "1ms", "999ms", "90s", "1h", "8760h", "300000000000h"])),
        last in instant(),
    ) {
        let rotation = Rotation {
            schedule: Some(schedule),
            time_zone,
            jitter: jitter.map(GoDuration::from),
            ..Rotation::default()
        };
        if let Ok(plan) = RotationPlan::from_spec(Some(&rotation)) {
            prop_assert!(plan.rotates_on_its_own());
            let next = plan.next_rotation(last, "ns/name/uid");
            if let Some(next) = next {
                prop_assert!(next > last, "{next} is not after {last}");
            }
            prop_assert_eq!(next, plan.next_rotation(last, "ns/name/uid"));
        }
    }

    /// Any interval: never a panic; the next rotation is the interval (plus jitter) after the last one.
    #[test]
    fn interval_next_is_later(interval in text_over(DURATION_TOKENS, 6), jitter in "[0-9]{1,3}(ms|s|m|h)", last in instant()) {
        let rotation = Rotation {
            interval: Some(GoDuration(interval.clone())),
            jitter: Some(GoDuration(jitter)),
            ..Rotation::default()
        };
        if let Ok(plan) = RotationPlan::from_spec(Some(&rotation)) {
            let step = SignedDuration::try_from(duration::parse(&interval).expect("plan accepted it")).unwrap();
            if let Some(next) = plan.next_rotation(last, "key") {
                let earliest = last.checked_add(step).expect("next exists, so last + interval does");
                prop_assert!(next >= earliest && next > last);
                prop_assert!(next.duration_since(earliest) < SignedDuration::try_from(plan.jitter().max(Duration::from_nanos(1))).unwrap());
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------------------------
// Prometheus text format

const TEXT_TOKENS: &[&str] = &[
    "req", "key", "_", ":", "0", "9", ".", "e", "+", "-", "{", "}", "\"", "\\", "=", ",", " ", "\t", "\n", "\r\n", "#",
    "NaN", "Inf", "é", "\u{0}", "\\n", "\\\"",
];

/// A sample value as a gateway might write it, and the number it stands for.
fn sample_value() -> impl Strategy<Value = (String, f64)> {
    let finite = prop_oneof![0..1_000_000u64, any::<u64>()].prop_map(|n| n as f64);
    prop_oneof![
        finite.clone().prop_map(|v| (v.to_string(), v)),
        any::<f64>().prop_map(|v| (format!("{v:e}"), v)),
        any::<f64>().prop_map(|v| (format!("{v:E}"), v)),
        finite.prop_map(|v| (format!("-{v}"), -v)),
        (0..10_000u32, -320..320i32).prop_map(|(m, e)| {
            let text = format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
            let value = text.parse().unwrap();
            (text, value)
        }),
        select(&["NaN", "+Inf", "-Inf", "Inf", "inf", "-0", "+0.5", ".5", "1."])
            .prop_map(|t| (t.to_string(), t.parse().unwrap())),
    ]
}

/// Escapes a label value as the text format requires.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[derive(Debug, Clone)]
struct Sample {
    metric: String,
    /// The `key` label's value, if the sample has one.
    key: Option<String>,
    value: f64,
    line: String,
}

fn sample() -> impl Strategy<Value = Sample> {
    let metric = prop_oneof![Just("req_total".to_string()), Just("req".to_string()), "[a-zA-Z_:][a-zA-Z0-9_:]{0,10}"];
    let key = prop::option::of(prop_oneof![select(&["a", "b", ""]).prop_map(str::to_string), any::<String>()]);
    let others = prop::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,6}", any::<String>(), 0..4);
    let blank = select(&["", " ", "\t", " \t "]);
    let layout = (blank.clone(), blank.clone(), blank, any::<bool>(), 0..3usize, prop::option::of(any::<i64>()));
    (metric, key, others, sample_value(), layout).prop_map(|(metric, key, mut others, (text, value), layout)| {
        let (lead, gap, trail, trailing_comma, key_at, timestamp) = layout;
        others.remove("key");
        let mut labels: Vec<String> = others.iter().map(|(n, v)| format!("{n}{gap}={gap}\"{}\"", escape(v))).collect();
        if let Some(key) = &key {
            labels.insert(key_at.min(labels.len()), format!("key=\"{}\"", escape(key)));
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
        line.push_str(trail);
        Sample { metric, key, value, line }
    })
}

/// A valid exposition: samples among comments and blank lines, with `\n` or `\r\n` line ends.
fn exposition() -> impl Strategy<Value = (String, Vec<Sample>)> {
    let filler = select(&["", "  ", "# HELP req_total Requests.", "# TYPE req_total counter", "#", "# {\"\\ é"]);
    let line = prop_oneof![3 => sample().prop_map(Ok), 1 => filler.prop_map(Err)];
    (prop::collection::vec(line, 0..20), any::<bool>()).prop_map(|(lines, crlf)| {
        let end = if crlf { "\r\n" } else { "\n" };
        let text = lines.iter().map(|l| l.as_ref().map_or_else(|f| f.to_string(), |s| s.line.clone()) + end).collect();
        (text, lines.into_iter().filter_map(Result::ok).collect())
    })
}

/// What `counters_by_key(_, "req_total", "key")` must return for `samples`: the finite, non-negative values of
/// `req_total` with a non-empty key, added up per key in order.
fn model_counters(samples: &[Sample]) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    for s in samples {
        if let Some(key) = s.key.as_ref().filter(|k| !k.is_empty())
            && s.metric == "req_total"
            && s.value.is_finite()
            && s.value >= 0.0
        {
            *sums.entry(key.clone()).or_insert(0.0) += s.value;
        }
    }
    sums
}

/// `text` with up to four characters replaced, removed or inserted (and maybe cut short).
fn mutated(text: String) -> impl Strategy<Value = String> {
    let edit = (any::<prop::sample::Index>(), 0..3u8, select(TEXT_TOKENS));
    (prop::collection::vec(edit, 1..5), any::<prop::sample::Index>()).prop_map(move |(edits, cut)| {
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

/// A parse result is sane: counters are never negative or NaN; errors quote at most 40 characters of a real line.
fn check_counters(text: &str, result: Result<BTreeMap<String, f64>, keyward::usage::textformat::ParseError>) {
    match result {
        Ok(sums) => assert!(sums.values().all(|v| *v >= 0.0), "{sums:?}"),
        Err(err) => {
            assert!(err.line >= 1 && err.line <= text.split('\n').count(), "{err:?}");
            assert!(err.excerpt.chars().count() <= 43, "{err:?}");
        }
    }
}

proptest! {
    #![proptest_config(config(1_000))]

    #[test]
    fn text_format_never_panics(text in text_over(TEXT_TOKENS, 40), bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        check_counters(&text, counters_by_key(&text, "req", "key"));
        let lossy = String::from_utf8_lossy(&bytes);
        check_counters(&lossy, counters_by_key(&lossy, "req", "key"));
    }

    /// Generated expositions parse to the model's per-key sums, bit for bit.
    #[test]
    fn text_format_sums_match_the_model((text, samples) in exposition()) {
        let sums = counters_by_key(&text, "req_total", "key");
        prop_assert_eq!(sums, Ok(model_counters(&samples)), "{}", text);
    }

    #[test]
    fn text_format_mutations_never_panic(text in exposition().prop_flat_map(|(text, _)| mutated(text))) {
        check_counters(&text, counters_by_key(&text, "req_total", "key"));
    }

    /// Counters as `counters_by_key` gives them (non-negative, maybe infinite after a sum overflowed) at any
    /// instants: rates are never negative or NaN, and finite unless the counters are near `f64::MAX`.
    #[test]
    fn rate_tracker_rates_are_sane(
        start in instant(),
        polls in prop::collection::vec((prop_oneof![-5..3_600i64, Just(0), any::<i64>()], 0..1_000_000_000i64, prop::collection::btree_map(select(&["a", "b", "c"]), prop_oneof![
            4 => 0.0..1e15f64, 1 => 0.0..=f64::MAX, 1 => Just(f64::INFINITY), 1 => Just(f64::NAN)], 0..3)), 1..8),
    ) {
        let mut tracker = RateTracker::new();
        let mut now = start;
        let mut previous: Option<(Timestamp, BTreeMap<&str, f64>)> = None;
        for (secs, nanos, counters) in polls {
            let Ok(next) = now.checked_add(SignedDuration::new(secs % 1_000_000_000_000, nanos as i32)) else { continue };
            now = next;
            let owned = counters.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            let rates = tracker.observe(now, owned);
            match &previous {
                Some((then, old)) if now > *then => {
                    let rates = rates.expect("a later poll gives rates");
                    for (key, rate) in &rates {
                        prop_assert!(*rate >= 0.0, "{key}: {rate}");
                        let (a, b) = (old[key.as_str()], counters[key.as_str()]);
                        if a <= 1e290 && b <= 1e290 {
                            prop_assert!(rate.is_finite(), "{key}: {a} -> {b} gives {rate}");
                        }
                    }
                    let both: Vec<&str> = counters.iter().filter(|(k, v)| v.is_finite() && old.get(*k).is_some_and(|o| o.is_finite())).map(|(k, _)| *k).collect();
                    prop_assert_eq!(rates.keys().map(String::as_str).collect::<Vec<_>>(), both);
                }
                _ => prop_assert!(rates.is_none()),
            }
            previous = Some((now, counters));
        }
    }
}

// ------------------------------------------------------------------------------------------------------------------
// Prometheus JSON (`/api/v1/query`)

#[derive(Debug, Clone)]
struct Series {
    labels: BTreeMap<String, String>,
    /// The sample value as written, or `None` for a series without `value` (a native histogram).
    value: Option<String>,
}

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
        if let Some(key) = key {
            labels.insert("api_key".to_string(), key);
        }
        Series { labels, value }
    })
}

fn vector_document(series: &[Series]) -> Vec<u8> {
    let result: Vec<Value> = series
        .iter()
        .map(|s| match &s.value {
            Some(v) => json!({"metric": s.labels, "value": [1_700_000_000.5, v]}),
            None => json!({"metric": s.labels, "histogram": [1_700_000_000, {"count": "1", "sum": "2"}]}),
        })
        .collect();
    serde_json::to_vec(&json!({"status": "success", "data": {"resultType": "vector", "result": result}})).unwrap()
}

/// What `parse_query_response(_, "api_key")` must return: an error for the first unreadable value of a keyed series,
/// else the finite, non-negative values added up per key, without sums that overflowed.
fn model_rates(series: &[Series]) -> Option<BTreeMap<String, f64>> {
    let mut rates = BTreeMap::new();
    for s in series {
        let (Some(key), Some(text)) = (s.labels.get("api_key").filter(|k| !k.is_empty()), &s.value) else { continue };
        let value: f64 = text.parse().ok()?;
        if value.is_finite() && value >= 0.0 {
            *rates.entry(key.clone()).or_insert(0.0) += value;
        }
    }
    rates.retain(|_, r: &mut f64| r.is_finite());
    Some(rates)
}

/// Rates are finite and non-negative; errors stay short whatever the input (they quote at most 40 characters of a
/// value or type, 200 of a Prometheus message, debug-escaped).
fn check_rates(result: Result<BTreeMap<String, f64>, SourceError>) {
    match result {
        Ok(rates) => assert!(rates.values().all(|r| r.is_finite() && *r >= 0.0), "{rates:?}"),
        Err(err) => assert!(err.to_string().chars().count() < 700, "{err}"),
    }
}

proptest! {
    #![proptest_config(config(1_000))]

    #[test]
    fn prometheus_json_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300), text in any::<String>()) {
        check_rates(parse_query_response(&bytes, "api_key"));
        check_rates(parse_query_response(text.as_bytes(), "api_key"));
        let envelope = format!(r#"{{"status":"success","data":{{"resultType":"vector","result":{text}}}}}"#);
        check_rates(parse_query_response(envelope.as_bytes(), "api_key"));
    }

    /// Generated answers give the model's per-key sums, bit for bit, or an error exactly when a keyed value is no
    /// number.
    #[test]
    fn prometheus_json_sums_match_the_model(series in prop::collection::vec(series(), 0..12)) {
        let got = parse_query_response(&vector_document(&series), "api_key");
        match model_rates(&series) {
            Some(want) => prop_assert_eq!(got.expect("valid answer"), want),
            None => prop_assert!(matches!(got, Err(SourceError::InvalidResponse { .. })), "{got:?}"),
        }
    }

    /// Generated answers cut short or with bytes changed, error answers and deep nesting: never a panic.
    #[test]
    fn prometheus_json_mutations_never_panic(
        series in prop::collection::vec(series(), 0..6),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
        message in any::<String>(),
        depth in 0..5_000usize,
    ) {
        let mut body = vector_document(&series);
        for (at, byte) in flips {
            let i = at.index(body.len());
            body[i] = byte;
        }
        body.truncate(cut.index(body.len() + 1).max(body.len() / 2));
        check_rates(parse_query_response(&body, "api_key"));
        let error = serde_json::to_vec(&json!({"status": "error", "errorType": message, "error": message.repeat(3)})).unwrap();
        check_rates(parse_query_response(&error, "api_key"));
        let deep = format!(r#"{{"status":"success","data":{{"resultType":"vector","result":{}{}}}}}"#, "[".repeat(depth), "]".repeat(depth));
        check_rates(parse_query_response(deep.as_bytes(), "api_key"));
    }
}

// ------------------------------------------------------------------------------------------------------------------
// Key checksums

/// Random bytes from the test case.
struct Fixed(Vec<u8>);

impl RandomSource for Fixed {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), KeyError> {
        buf.copy_from_slice(&self.0[..buf.len()]);
        Ok(())
    }
}

/// A format the schema allows and random bytes for it (sometimes all zero or all one bits, the base62 extremes).
fn key_format() -> impl Strategy<Value = (KeyFormat, Vec<u8>)> {
    let encoding = select(&[KeyEncoding::Base62, KeyEncoding::Base64Url, KeyEncoding::Hex]);
    let bytes = prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 128),
        1 => Just(vec![0; 128]),
        1 => Just(vec![0xff; 128]),
    ];
    ("[A-Za-z0-9_]{0,16}", 16..=128i32, encoding, bytes).prop_map(|(prefix, n, encoding, bytes)| {
        let format = KeyFormat { prefix: Some(prefix), entropy_bytes: Some(n), encoding: Some(encoding) };
        (format, bytes)
    })
}

fn generated((format, bytes): &(KeyFormat, Vec<u8>)) -> String {
    keys::generate(format, &mut Fixed(bytes.clone())).expect("a valid format").expose().to_string()
}

proptest! {
    #![proptest_config(config(1_000))]

    #[test]
    fn generated_keys_verify(case in key_format()) {
        let key = generated(&case);
        prop_assert!(keys::verify_checksum(&key));
        prop_assert_eq!(keys::verify_format(&key, &case.0), Ok(()));
        let id = keys::key_id(&KeyMaterial::from_secret_bytes(key.clone().into_bytes()).unwrap());
        prop_assert!(id.len() == keys::KEY_ID_LEN && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    }

    /// Changing one character anywhere to another ASCII character always breaks the checksum: in the checksum itself
    /// trivially, elsewhere because CRC-32 detects every error burst of up to 32 bits (one byte is 8). Any other
    /// character (non-ASCII, so the length changes) always fails `verify_format`, and `verify_checksum` too when it
    /// lands in the checksum; in the body it is caught with probability 1 - 2^-32, which is not asserted.
    #[test]
    fn one_changed_character_is_detected(case in key_format(), at in any::<prop::sample::Index>(), ascii in 0..128u8, other in any::<char>()) {
        let key = generated(&case);
        let chars: Vec<char> = key.chars().collect();
        let i = at.index(chars.len());
        let in_checksum = i >= chars.len() - keys::CHECKSUM_LEN;
        for replacement in [char::from(ascii), other] {
            if replacement == chars[i] {
                continue;
            }
            let mut changed = chars.clone();
            changed[i] = replacement;
            let changed: String = changed.into_iter().collect();
            prop_assert!(keys::verify_format(&changed, &case.0).is_err(), "{changed}");
            if replacement.is_ascii() || in_checksum {
                prop_assert!(!keys::verify_checksum(&changed), "{key} -> {changed}");
            }
        }
    }

    /// Swapping two different adjacent characters on the same side of the checksum is detected too (a burst of at
    /// most 16 bits).
    #[test]
    fn swapped_neighbours_are_detected(case in key_format(), at in any::<prop::sample::Index>()) {
        let key = generated(&case);
        let split = key.len() - keys::CHECKSUM_LEN;
        let mut bytes = key.clone().into_bytes();
        let i = at.index(bytes.len() - 1);
        prop_assume!(bytes[i] != bytes[i + 1] && i + 1 != split);
        bytes.swap(i, i + 1);
        prop_assert!(!keys::verify_checksum(&String::from_utf8(bytes).unwrap()));
    }

    /// Anything against any format: never a panic, and a key `verify_format` accepts has a valid checksum.
    #[test]
    fn any_text_never_panics(
        text in prop_oneof![any::<String>(), "[A-Za-z0-9_-]{0,200}", key_format().prop_map(|c| generated(&c) + "x")],
        prefix in prop::option::of(prop_oneof!["[A-Za-z0-9_]{0,17}", any::<String>()]),
        entropy_bytes in prop::option::of(prop_oneof![16..=128i32, any::<i32>()]),
        encoding in prop::option::of(select(&[KeyEncoding::Base62, KeyEncoding::Base64Url, KeyEncoding::Hex])),
        bytes in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let valid = keys::verify_checksum(&text);
        let format = KeyFormat { prefix, entropy_bytes, encoding };
        if keys::verify_format(&text, &format).is_ok() {
            prop_assert!(valid);
        }
        if let Ok(material) = KeyMaterial::from_secret_bytes(bytes) {
            prop_assert_eq!(keys::key_id(&material).len(), keys::KEY_ID_LEN);
        }
    }
}
