//! Per-key request counters from the Prometheus text exposition format, and rates between polls.
//!
//! A gateway exposes a counter such as `gateway_requests_total{key="team-a",code="200"} 42`. [`counters_by_key`]
//! sums the samples of one counter grouped by the value of one label, [`merge`] adds the maps of several gateway
//! replicas together, and [`RateTracker`] turns successive polls into requests per second per key, handling counter
//! resets like Prometheus `rate()`.
//!
//! The parser is small and hand-written (no external crate): it reads only what is needed, i.e. `# ...` lines
//! (HELP, TYPE and comments) are skipped and every other non-blank line must be `name{labels} value [timestamp]`.
//! Label values may use the escapes `\\`, `\"` and `\n`; values accept `NaN`, `+Inf`, `-Inf` and ordinary floats.
//! Every line is checked, not only the lines of the requested metric, so a corrupt exposition is reported rather than
//! half read. The parser never panics, and its errors carry only a short excerpt of the offending line (for the debug
//! log: a source's errors in status quote no byte of the answer). [`CounterReader`] parses an answer as it arrives.

use std::collections::BTreeMap;

use jiff::Timestamp;

/// Maximum number of characters of an offending line quoted in a [`ParseError`].
const EXCERPT_CHARS: usize = 40;

/// Why a line of the exposition could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// The line does not start with a valid metric name.
    MetricName,
    /// A label name is missing or invalid.
    LabelName,
    /// A label is not followed by `=`.
    MissingEquals,
    /// A label value does not start with `"`.
    MissingQuote,
    /// A label value uses an escape other than `\\`, `\"` or `\n`.
    InvalidEscape,
    /// A label value or the label set is not closed before the end of the line.
    Unterminated,
    /// Labels are not separated by `,` or closed by `}`.
    LabelSeparator,
    /// The same label name appears twice in one sample.
    DuplicateLabel,
    /// The sample has no value.
    MissingValue,
    /// The sample value is not a number.
    InvalidValue,
    /// The timestamp is not an integer number of milliseconds.
    InvalidTimestamp,
    /// Something follows the timestamp.
    TrailingText,
}

impl ParseErrorKind {
    fn describe(self) -> &'static str {
        match self {
            Self::MetricName => "invalid metric name",
            Self::LabelName => "invalid label name",
            Self::MissingEquals => "expected '=' after label name",
            Self::MissingQuote => "expected '\"' to open label value",
            Self::InvalidEscape => "invalid escape in label value",
            Self::Unterminated => "unterminated label set",
            Self::LabelSeparator => "expected ',' or '}' after label value",
            Self::DuplicateLabel => "duplicate label name",
            Self::MissingValue => "missing sample value",
            Self::InvalidValue => "invalid sample value",
            Self::InvalidTimestamp => "invalid timestamp",
            Self::TrailingText => "unexpected text after sample",
        }
    }
}

impl std::fmt::Display for ParseErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// A line of the exposition that is not valid text format.
///
/// The message holds the 1-based line number, the reason and at most a short, debug-escaped excerpt of the line, so a
/// huge or hostile line never floods the logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metrics line {line}: {kind} (near {excerpt:?})")]
pub struct ParseError {
    /// 1-based number of the offending line.
    pub line: usize,
    /// What is wrong with it.
    pub kind: ParseErrorKind,
    /// The first characters of the line (at most 40), with `...` appended when cut.
    pub excerpt: String,
}

impl ParseError {
    fn new(line: usize, text: &str, kind: ParseErrorKind) -> Self {
        let mut excerpt: String = text.chars().take(EXCERPT_CHARS).collect();
        if excerpt.len() < text.len() {
            excerpt.push_str("...");
        }
        Self { line, kind, excerpt }
    }
}

/// One parsed sample line.
#[derive(Debug, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Sums the samples of counter `metric` in `text`, grouped by the value of label `key_label`.
///
/// `metric` is matched exactly: pass the full exposed name, e.g. `gateway_requests_total`. Samples of the metric that
/// lack `key_label` (or have it empty, which Prometheus treats as absent) are ignored, as are samples whose value is
/// not a finite, non-negative number (a counter cannot be NaN, infinite or negative). Samples of the same key with
/// other differing labels (say `code`) are added together.
///
/// # Errors
///
/// Returns [`ParseError`] for the first line, of any metric, that is not valid text format.
pub fn counters_by_key(text: &str, metric: &str, key_label: &str) -> Result<BTreeMap<String, f64>, ParseError> {
    let mut sums = BTreeMap::new();
    for (index, raw) in text.split('\n').enumerate() {
        if let Some(sample) = sample_of_line(raw).map_err(|(line, kind)| ParseError::new(index + 1, line, kind))? {
            add_sample(&mut sums, sample, metric, key_label);
        }
    }
    Ok(sums)
}

/// The sample of one line (without its `\n`), `None` for a blank or `#` line, or the trimmed line and what is wrong.
fn sample_of_line(raw: &str) -> Result<Option<Sample>, (&str, ParseErrorKind)> {
    let line = raw.strip_suffix('\r').unwrap_or(raw).trim_start_matches([' ', '\t']);
    if line.trim_end_matches([' ', '\t']).is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    parse_sample(line).map(Some).map_err(|kind| (line, kind))
}

/// Adds `sample` to `sums` if it is a usable sample of `metric` with a non-empty `key_label`; returns whether it did.
fn add_sample(sums: &mut BTreeMap<String, f64>, sample: Sample, metric: &str, key_label: &str) -> bool {
    if sample.name != metric || !sample.value.is_finite() || sample.value < 0.0 {
        return false;
    }
    let Some((_, key)) = sample.labels.into_iter().find(|(name, _)| name == key_label) else {
        return false;
    };
    if key.is_empty() {
        return false;
    }
    *sums.entry(key).or_insert(0.0) += sample.value;
    true
}

/// Why a streamed exposition was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamError {
    /// A line is not valid text format (its excerpt is for the debug log only).
    Parse(ParseError),
    /// Line `line` is not UTF-8.
    NotUtf8 { line: usize },
    /// More samples than the cap.
    TooManySeries,
    /// More distinct keys than the cap.
    TooManyKeys,
}

/// [`counters_by_key`] fed chunk by chunk as an answer arrives: complete lines are parsed at once, so only the
/// current partial line is kept, never the whole exposition.
///
/// It counts every sample line (of any metric) against a series cap shared with other readers of the same poll, and
/// refuses more than `max_keys` distinct keys.
pub struct CounterReader<'a> {
    metric: &'a str,
    key_label: &'a str,
    series: &'a std::sync::atomic::AtomicUsize,
    max_series: usize,
    max_keys: usize,
    /// The bytes after the last complete line.
    partial: Vec<u8>,
    /// Lines read so far.
    lines: usize,
    sums: BTreeMap<String, f64>,
}

impl<'a> CounterReader<'a> {
    /// A reader of counter `metric` by `key_label`; `series` counts the samples of every reader of the poll.
    pub fn new(
        metric: &'a str,
        key_label: &'a str,
        series: &'a std::sync::atomic::AtomicUsize,
        max_series: usize,
        max_keys: usize,
    ) -> Self {
        Self { metric, key_label, series, max_series, max_keys, partial: Vec::new(), lines: 0, sums: BTreeMap::new() }
    }

    /// Parses the complete lines `chunk` ends (with what was left of the previous chunk).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), StreamError> {
        let Some(last_newline) = chunk.iter().rposition(|&b| b == b'\n') else {
            self.partial.extend_from_slice(chunk);
            return Ok(());
        };
        let (complete, rest) = chunk.split_at(last_newline + 1);
        let mut lines = complete[..complete.len() - 1].split(|&b| b == b'\n');
        if !self.partial.is_empty() {
            // The first line of this chunk ends the line the previous chunks began.
            let mut first = std::mem::take(&mut self.partial);
            first.extend_from_slice(lines.next().unwrap_or_default());
            self.line(&first)?;
        }
        for line in lines {
            self.line(line)?;
        }
        self.partial.extend_from_slice(rest);
        Ok(())
    }

    /// Bytes of the partial line kept.
    pub fn retained(&self) -> usize {
        self.partial.capacity()
    }

    /// Bytes of the partial line kept once `chunk` is fed.
    pub fn retained_after(&self, chunk: &[u8]) -> usize {
        match chunk.iter().rposition(|&b| b == b'\n') {
            Some(last_newline) => chunk.len() - last_newline - 1,
            None => self.partial.len() + chunk.len(),
        }
    }

    /// Parses the last line (if it has no `\n`) and returns the counters by key.
    pub fn finish(mut self) -> Result<BTreeMap<String, f64>, StreamError> {
        if !self.partial.is_empty() {
            let last = std::mem::take(&mut self.partial);
            self.line(&last)?;
        }
        Ok(self.sums)
    }

    fn line(&mut self, bytes: &[u8]) -> Result<(), StreamError> {
        self.lines += 1;
        let number = self.lines;
        let text = std::str::from_utf8(bytes).map_err(|_| StreamError::NotUtf8 { line: number })?;
        let Some(sample) =
            sample_of_line(text).map_err(|(line, kind)| StreamError::Parse(ParseError::new(number, line, kind)))?
        else {
            return Ok(());
        };
        let read = self.series.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if read > self.max_series {
            return Err(StreamError::TooManySeries);
        }
        if add_sample(&mut self.sums, sample, self.metric, self.key_label) && self.sums.len() > self.max_keys {
            return Err(StreamError::TooManyKeys);
        }
        Ok(())
    }
}

/// Adds every counter of `other` to the same key of `into` (e.g. to sum the replicas of a gateway).
pub fn merge(into: &mut BTreeMap<String, f64>, other: &BTreeMap<String, f64>) {
    for (key, value) in other {
        *into.entry(key.clone()).or_insert(0.0) += value;
    }
}

/// Parses one non-blank, non-comment line (leading whitespace already removed).
fn parse_sample(line: &str) -> Result<Sample, ParseErrorKind> {
    let name_len = line
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())))
        .map_or(line.len(), |(i, _)| i);
    if name_len == 0 {
        return Err(ParseErrorKind::MetricName);
    }
    let name = line[..name_len].to_owned();
    let mut rest = &line[name_len..];

    let mut labels: Vec<(String, String)> = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = parse_labels(after_brace, &mut labels)?;
    }

    // At least one blank must separate the name or labels from the value.
    if !rest.starts_with([' ', '\t']) {
        return Err(if rest.is_empty() { ParseErrorKind::MissingValue } else { ParseErrorKind::MetricName });
    }
    let mut fields = rest.split([' ', '\t']).filter(|field| !field.is_empty());
    let value = fields.next().ok_or(ParseErrorKind::MissingValue)?;
    let value = parse_value(value).ok_or(ParseErrorKind::InvalidValue)?;
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<i64>().map_err(|_| ParseErrorKind::InvalidTimestamp)?;
    }
    if fields.next().is_some() {
        return Err(ParseErrorKind::TrailingText);
    }
    Ok(Sample { name, labels, value })
}

/// Parses the labels after `{` up to and including `}`; returns the text after `}`.
fn parse_labels<'a>(mut rest: &'a str, labels: &mut Vec<(String, String)>) -> Result<&'a str, ParseErrorKind> {
    loop {
        rest = rest.trim_start_matches([' ', '\t']);
        if let Some(after) = rest.strip_prefix('}') {
            return Ok(after);
        }
        if rest.is_empty() {
            return Err(ParseErrorKind::Unterminated);
        }
        let name_len = rest
            .char_indices()
            .find(|&(i, c)| !(c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit())))
            .map_or(rest.len(), |(i, _)| i);
        if name_len == 0 {
            return Err(ParseErrorKind::LabelName);
        }
        let label = &rest[..name_len];
        rest = rest[name_len..].trim_start_matches([' ', '\t']);
        rest = rest.strip_prefix('=').ok_or(ParseErrorKind::MissingEquals)?.trim_start_matches([' ', '\t']);
        rest = rest.strip_prefix('"').ok_or(ParseErrorKind::MissingQuote)?;

        let mut value = String::new();
        let mut chars = rest.char_indices();
        let closing = loop {
            match chars.next() {
                None => return Err(ParseErrorKind::Unterminated),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    Some(_) => return Err(ParseErrorKind::InvalidEscape),
                    None => return Err(ParseErrorKind::Unterminated),
                },
                Some((_, c)) => value.push(c),
            }
        };
        // `closing` indexes the ASCII '"', so `closing + 1` is a char boundary within `rest`.
        rest = rest.get(closing + 1..).unwrap_or_default();

        if labels.iter().any(|(existing, _)| existing == label) {
            return Err(ParseErrorKind::DuplicateLabel);
        }
        labels.push((label.to_owned(), value));

        rest = rest.trim_start_matches([' ', '\t']);
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err(if rest.is_empty() { ParseErrorKind::Unterminated } else { ParseErrorKind::LabelSeparator });
        }
    }
}

/// Parses a sample value: a float, `NaN`, `+Inf` or `-Inf` (case-insensitive, as Go's `ParseFloat`).
fn parse_value(text: &str) -> Option<f64> {
    // Rust's parser also accepts "infinity" and "inf", like Go's; it rejects "0x..", "_" and empty strings.
    text.parse::<f64>().ok()
}

/// Turns successive polls of per-key counters into requests per second per key.
///
/// It remembers only the previous poll. Choices, mirroring Prometheus `rate()` where it has one:
/// - a counter lower than at the previous poll was reset, and its increase is its new value;
/// - a key seen for the first time has an unknown increase (it may have counted for long before it was first
///   scraped), so it is reported only from the next poll on, never guessed;
/// - a key absent from the new poll is dropped from the result and from the remembered state.
#[derive(Debug, Clone, Default)]
pub struct RateTracker {
    previous: Option<(Timestamp, BTreeMap<String, f64>)>,
}

impl RateTracker {
    /// A tracker that has not seen any poll yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the counters polled at `now` and returns requests per second per key since the previous poll.
    ///
    /// Returns `None` on the first poll and when `now` is not after the previous poll (a repeated or backwards clock);
    /// in every case the new counters become the baseline for the next poll. Non-finite counters are skipped.
    pub fn observe(&mut self, now: Timestamp, counters: BTreeMap<String, f64>) -> Option<BTreeMap<String, f64>> {
        let previous = self.previous.replace((now, counters));
        let (then, old) = previous?;
        let (_, new) = self.previous.as_ref()?;
        let elapsed = now.duration_since(then).as_secs_f64();
        if elapsed <= 0.0 || !elapsed.is_finite() {
            return None;
        }
        let rates = new
            .iter()
            .filter_map(|(key, &value)| {
                let &before = old.get(key)?;
                if !value.is_finite() || !before.is_finite() {
                    return None;
                }
                let increase = if value < before { value } else { value - before };
                Some((key.clone(), increase / elapsed))
            })
            .collect();
        Some(rates)
    }
}

#[cfg(test)]
#[path = "textformat_tests/mod.rs"]
mod tests;
