use super::*;

const EXPOSITION: &str = "\
# HELP gateway_requests_total Requests served, by API key.
# TYPE gateway_requests_total counter
gateway_requests_total{key=\"team-a\",code=\"200\"} 100
gateway_requests_total{code=\"429\",key=\"team-a\"} 5 1700000000000
gateway_requests_total{key=\"we\\\"ird\\\\name\\n\",code=\"200\"} 7
gateway_requests_total{key=\"team-b\",code=\"200\",} 1.5e3
gateway_requests_total{code=\"500\"} 9
gateway_requests_total{key=\"team-c\",code=\"200\"} NaN
gateway_requests_total{key=\"\",code=\"200\"} 11
# HELP gateway_request_bytes_total Bytes served, by API key.
# TYPE gateway_request_bytes_total counter
gateway_request_bytes_total{key=\"team-a\"} 123456
gateway_up 1
gateway_latency_seconds{key=\"team-a\",quantile=\"0.99\"} +Inf
";

fn map(entries: &[(&str, f64)]) -> BTreeMap<String, f64> {
    entries.iter().map(|&(k, v)| (k.to_owned(), v)).collect()
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + seconds).unwrap()
}

#[test]
fn parses_realistic_exposition() {
    let counters = counters_by_key(EXPOSITION, "gateway_requests_total", "key").unwrap();
    // team-a sums its 200 and 429 samples (one with a timestamp); the escaped key is unescaped; team-c's NaN,
    // the empty key and the sample without a key are ignored; the bytes metric is not mixed in.
    assert_eq!(counters, map(&[("team-a", 105.0), ("team-b", 1500.0), ("we\"ird\\name\n", 7.0)]));
}

#[test]
fn other_metric_with_same_label_is_separate() {
    let bytes = counters_by_key(EXPOSITION, "gateway_request_bytes_total", "key").unwrap();
    assert_eq!(bytes, map(&[("team-a", 123456.0)]));
    // Exact names only: the prefix without `_total` matches nothing.
    assert!(counters_by_key(EXPOSITION, "gateway_requests", "key").unwrap().is_empty());
}

#[test]
fn missing_key_label_is_ignored() {
    assert!(counters_by_key(EXPOSITION, "gateway_requests_total", "tenant").unwrap().is_empty());
    let text = "m{code=\"200\"} 3\nm{tenant=\"x\",code=\"200\"} 4\nm 2\n";
    assert_eq!(counters_by_key(text, "m", "tenant").unwrap(), map(&[("x", 4.0)]));
}

#[test]
fn sums_label_sets_with_the_same_key() {
    let text = "req{key=\"a\",code=\"200\"} 10\nreq{key=\"a\",code=\"404\"} 2\r\n  req{key=\"a\",code=\"500\"}\t1\n\
                    req{key=\"b\",code=\"200\"} 4\n";
    assert_eq!(counters_by_key(text, "req", "key").unwrap(), map(&[("a", 13.0), ("b", 4.0)]));
}

#[test]
fn malformed_lines_are_errors() {
    let cases: &[(&str, ParseErrorKind)] = &[
        ("{key=\"a\"} 1", ParseErrorKind::MetricName),
        ("1req 1", ParseErrorKind::MetricName),
        ("req-total 1", ParseErrorKind::MetricName),
        ("req", ParseErrorKind::MissingValue),
        ("req{key=\"a\"}", ParseErrorKind::MissingValue),
        ("req{key=\"a\"} one", ParseErrorKind::InvalidValue),
        ("req{key=\"a\"} 1 12.5", ParseErrorKind::InvalidTimestamp),
        ("req{key=\"a\"} 1 12 extra", ParseErrorKind::TrailingText),
        ("req{key=\"a} 1", ParseErrorKind::Unterminated),
        ("req{key=\"a\" 1", ParseErrorKind::LabelSeparator),
        ("req{key=\"a\"", ParseErrorKind::Unterminated),
        ("req{key=a} 1", ParseErrorKind::MissingQuote),
        ("req{key} 1", ParseErrorKind::MissingEquals),
        ("req{=\"a\"} 1", ParseErrorKind::LabelName),
        ("req{key=\"a\\t\"} 1", ParseErrorKind::InvalidEscape),
        ("req{key=\"a\",key=\"b\"} 1", ParseErrorKind::DuplicateLabel),
    ];
    for &(line, kind) in cases {
        let text = format!("# TYPE req counter\nok 1\n{line}\n");
        let err = counters_by_key(&text, "req", "key").unwrap_err();
        assert_eq!((err.line, err.kind), (3, kind), "for {line:?}");
    }
}

#[test]
fn error_quotes_only_a_short_excerpt() {
    let secret = "s".repeat(10_000);
    let text = format!("req{{key=\"{secret}\"}} oops\n");
    let err = counters_by_key(&text, "req", "key").unwrap_err();
    assert_eq!(err.kind, ParseErrorKind::InvalidValue);
    assert!(err.excerpt.ends_with("..."));
    assert!(err.to_string().len() < 120, "{err}");
}

#[test]
fn garbage_never_panics_and_errors_stay_short() {
    const ALPHABET: &[char] = &[
        'a', 'z', '_', ':', '0', '9', '.', 'e', '+', '-', '{', '}', '"', '\\', '=', ',', ' ', '\t', '\n', '\r', '#',
        'N', 'I', 'n', 'é', '€', '\u{0}',
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut errors = 0;
    for round in 0..500 {
        let len = (next() % 60) as usize;
        let mut text: String = (0..len).map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize]).collect();
        if round % 2 == 0 {
            // Half the inputs start like a real sample so the label and value paths get exercised.
            text.insert_str(0, "req{key=\"");
        }
        match counters_by_key(&text, "req", "key") {
            Ok(counters) => assert!(counters.values().all(|v| v.is_finite() && *v >= 0.0)),
            Err(err) => {
                errors += 1;
                assert!(err.excerpt.chars().count() <= EXCERPT_CHARS + 3);
                assert!(err.to_string().len() < 300, "{err}");
            }
        }
    }
    assert!(errors > 250, "only {errors} of 500 garbage inputs were rejected");
}

#[test]
fn every_truncation_of_a_labelled_sample_is_handled() {
    let line = "req{key=\"a\\\"é\",code=\"200\"} 12 1700000000000";
    let value_start = line.find("} ").unwrap() + 1;
    for (cut, _) in line.char_indices().skip(1) {
        let result = counters_by_key(&line[..cut], "req", "key");
        if cut <= value_start {
            assert!(result.is_err(), "prefix {:?} accepted", &line[..cut]);
        }
    }
    assert_eq!(counters_by_key(line, "req", "key").unwrap(), map(&[("a\"é", 12.0)]));
}

fn read_in_chunks(
    text: &[u8],
    size: usize,
    max_series: usize,
    max_keys: usize,
) -> Result<BTreeMap<String, f64>, StreamError> {
    let series = std::sync::atomic::AtomicUsize::new(0);
    let mut reader = CounterReader::new("gateway_requests_total", "key", &series, max_series, max_keys);
    for chunk in text.chunks(size) {
        reader.feed(chunk)?;
        // Only the partial line is kept between chunks.
        assert!(reader.partial.len() <= text.len());
    }
    reader.finish()
}

#[test]
fn the_streaming_reader_matches_the_whole_text_for_every_chunk_size() {
    let want = counters_by_key(EXPOSITION, "gateway_requests_total", "key").unwrap();
    for size in [1, 2, 3, 7, 64, 4096] {
        assert_eq!(read_in_chunks(EXPOSITION.as_bytes(), size, 1000, 1000).unwrap(), want, "chunks of {size}");
    }
    // Without a final newline the last line still counts.
    let text = "gateway_requests_total{key=\"a\"} 1\r\ngateway_requests_total{key=\"a\"} 2";
    assert_eq!(read_in_chunks(text.as_bytes(), 5, 10, 10).unwrap(), map(&[("a", 3.0)]));
}

#[test]
fn the_streaming_reader_keeps_only_a_partial_line() {
    let line = "gateway_requests_total{key=\"a\"} 1\n";
    let series = std::sync::atomic::AtomicUsize::new(0);
    let mut reader = CounterReader::new("gateway_requests_total", "key", &series, 1_000_000, 10);
    for _ in 0..10_000 {
        reader.feed(line.as_bytes()).unwrap();
        assert_eq!(reader.partial.len(), 0);
    }
    reader.feed(b"gateway_req").unwrap();
    assert_eq!(reader.partial.len(), 11);
    assert_eq!(
        reader.finish().unwrap_err(),
        StreamError::Parse(ParseError::new(10_001, "gateway_req", ParseErrorKind::MissingValue))
    );
}

#[test]
fn the_streaming_reader_caps_series_and_keys_and_names_lines() {
    let text: String = (0..10).map(|i| format!("gateway_requests_total{{key=\"k{}\"}} 1\nother 2\n", i % 5)).collect();
    assert_eq!(read_in_chunks(text.as_bytes(), 10, 20, 5).unwrap().len(), 5);
    assert_eq!(read_in_chunks(text.as_bytes(), 10, 19, 5).unwrap_err(), StreamError::TooManySeries);
    assert_eq!(read_in_chunks(text.as_bytes(), 10, 20, 4).unwrap_err(), StreamError::TooManyKeys);
    let bad = b"# ok\ngateway_requests_total{key=\"\xff\"} 1\n";
    assert_eq!(read_in_chunks(bad, 3, 10, 10).unwrap_err(), StreamError::NotUtf8 { line: 2 });
    // A multi-byte character split across chunks is fine.
    let split = "gateway_requests_total{key=\"\u{e9}\"} 1\n".as_bytes();
    assert_eq!(read_in_chunks(split, 1, 10, 10).unwrap(), map(&[("\u{e9}", 1.0)]));
}

proptest::proptest! {
    /// Fed in any chunking, the streaming reader gives what the whole-text parser gives: the same sums, or an
    /// error on the same line.
    #[test]
    fn streaming_equals_whole_text(
        lines in proptest::collection::vec(
            proptest::prop_oneof![
                "gateway_requests_total\\{key=\"[a-c\u{e9}]{0,2}\",code=\"[0-9]\"\\} [0-9]{1,3}",
                "# [ -~]{0,10}",
                "[ -~\u{e9}]{0,12}",
                proptest::strategy::Just(String::new()),
            ],
            0..12,
        ),
        crlf in proptest::bool::ANY,
        sizes in proptest::collection::vec(1usize..9, 1..5),
    ) {
        let text = lines.join(if crlf { "\r\n" } else { "\n" });
        let whole = counters_by_key(&text, "gateway_requests_total", "key");
        let series = std::sync::atomic::AtomicUsize::new(0);
        let mut reader = CounterReader::new("gateway_requests_total", "key", &series, usize::MAX, usize::MAX);
        let mut rest = text.as_bytes();
        let mut streamed = Ok(());
        for size in sizes.iter().cycle() {
            if rest.is_empty() || streamed.is_err() {
                break;
            }
            let (chunk, tail) = rest.split_at((*size).min(rest.len()));
            streamed = reader.feed(chunk);
            rest = tail;
        }
        let streamed = streamed.and_then(|()| reader.finish());
        match (whole, streamed) {
            (Ok(want), Ok(got)) => proptest::prop_assert_eq!(want, got),
            (Err(want), Err(StreamError::Parse(got))) => proptest::prop_assert_eq!(want.line, got.line),
            (want, got) => proptest::prop_assert!(false, "{:?} vs {:?}", want, got),
        }
    }
}

#[test]
fn merge_adds_replicas() {
    let mut total = map(&[("a", 1.0), ("b", 2.0)]);
    merge(&mut total, &map(&[("b", 3.0), ("c", 4.0)]));
    assert_eq!(total, map(&[("a", 1.0), ("b", 5.0), ("c", 4.0)]));
}

#[test]
fn first_poll_is_none() {
    let mut tracker = RateTracker::new();
    assert_eq!(tracker.observe(at(0), map(&[("a", 10.0)])), None);
    assert_eq!(tracker.observe(at(10), map(&[("a", 30.0)])), Some(map(&[("a", 2.0)])));
}

#[test]
fn rates_across_polls() {
    let mut tracker = RateTracker::new();
    tracker.observe(at(0), map(&[("a", 100.0), ("b", 0.0)]));
    assert_eq!(tracker.observe(at(20), map(&[("a", 140.0), ("b", 10.0)])), Some(map(&[("a", 2.0), ("b", 0.5)])));
    assert_eq!(tracker.observe(at(30), map(&[("a", 140.0), ("b", 15.0)])), Some(map(&[("a", 0.0), ("b", 0.5)])));
}

#[test]
fn counter_reset_counts_new_value() {
    let mut tracker = RateTracker::new();
    tracker.observe(at(0), map(&[("a", 1000.0)]));
    assert_eq!(tracker.observe(at(10), map(&[("a", 30.0)])), Some(map(&[("a", 3.0)])));
    assert_eq!(tracker.observe(at(20), map(&[("a", 50.0)])), Some(map(&[("a", 2.0)])));
}

#[test]
fn new_key_reported_from_next_poll_and_gone_key_dropped() {
    let mut tracker = RateTracker::new();
    tracker.observe(at(0), map(&[("a", 10.0), ("gone", 5.0)]));
    assert_eq!(tracker.observe(at(10), map(&[("a", 20.0), ("new", 500.0)])), Some(map(&[("a", 1.0)])));
    assert_eq!(tracker.observe(at(20), map(&[("a", 30.0), ("new", 600.0)])), Some(map(&[("a", 1.0), ("new", 10.0)])));
    // A key that comes back after being absent starts over as new.
    assert_eq!(tracker.observe(at(30), map(&[("a", 30.0), ("gone", 9.0)])), Some(map(&[("a", 0.0)])));
}

#[test]
fn non_positive_elapsed_is_none() {
    let mut tracker = RateTracker::new();
    tracker.observe(at(10), map(&[("a", 10.0)]));
    assert_eq!(tracker.observe(at(10), map(&[("a", 20.0)])), None);
    assert_eq!(tracker.observe(at(5), map(&[("a", 25.0)])), None);
    // The latest poll is the baseline: 25 at t=5, 35 at t=10.
    assert_eq!(tracker.observe(at(10), map(&[("a", 35.0)])), Some(map(&[("a", 2.0)])));
}
