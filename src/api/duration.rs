//! Durations as written in manifests: a sequence of `<number><unit>` with units `ms`, `s`, `m`, `h`
//! (`90s`, `15m`, `24h`, `1h30m`, `0s`), the subset of Go's `time.ParseDuration` that Kubernetes users know.
//! The CRD schema enforces [`DURATION_PATTERN`]; [`parse`] is the operator's own check of the same syntax.

use std::time::Duration;

/// The schema pattern every duration field carries.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// Why a duration string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("invalid duration {0:?}: expected a sequence of <number><unit> with units ms, s, m, h (e.g. 1h30m)")]
    Syntax(String),
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// Parses a duration such as `1h30m` or `1.5s`.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    if input.is_empty() {
        return Err(DurationError::Empty);
    }
    let syntax = || DurationError::Syntax(input.to_string());
    let overflow = || DurationError::Overflow(input.to_string());
    let bytes = input.as_bytes();
    let mut i = 0;
    // `None` once the total no longer fits; parsing goes on so that a syntax error anywhere is reported as such.
    let mut total_nanos: Option<u128> = Some(0);
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(syntax());
        }
        let whole: Option<u128> = input[start..i].parse().ok();
        let (mut frac, mut frac_scale) = (0u128, 1u128);
        if i < bytes.len() && bytes[i] == b'.' {
            i += 1;
            let fstart = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                // Up to 24 digits are kept (12 are not enough: the 13th digit of an hour is worth 0.36 ns). Digits
                // after the 24th are worth less than 3.6e-12 ns in all, so dropping them changes the truncated
                // nanoseconds only when the digits before fall within that of a whole nanosecond. frac < 10^24 and
                // unit_nanos <= 3.6e12, so `frac * unit_nanos` below stays far inside u128.
                if frac_scale < 1_000_000_000_000_000_000_000_000 {
                    frac = frac * 10 + u128::from(bytes[i] - b'0');
                    frac_scale *= 10;
                }
                i += 1;
            }
            if i == fstart {
                return Err(syntax());
            }
        }
        let unit_nanos: u128 = if input[i..].starts_with("ms") {
            i += 2;
            1_000_000
        } else {
            let n = match bytes.get(i) {
                Some(b's') => 1_000_000_000,
                Some(b'm') => 60 * 1_000_000_000,
                Some(b'h') => 3_600 * 1_000_000_000,
                _ => return Err(syntax()),
            };
            i += 1;
            n
        };
        let part =
            whole.and_then(|w| w.checked_mul(unit_nanos)).and_then(|w| w.checked_add(frac * unit_nanos / frac_scale));
        total_nanos = total_nanos.zip(part).and_then(|(total, part)| total.checked_add(part));
    }
    let total_nanos = total_nanos.ok_or_else(overflow)?;
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| overflow())?;
    // The remainder of a division by 1e9 always fits in u32.
    let nanos = (total_nanos % 1_000_000_000) as u32;
    Ok(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1_500)));
        assert_eq!(parse("1m1ms"), Ok(Duration::from_millis(60_001)));
    }

    #[test]
    fn refuses_what_the_schema_refuses() {
        for bad in ["", "5", "h", "1d", "1 h", "-1s", "1.s", ".5s", "1hh", "1H", "1s ", "1us"] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn pattern_and_parser_agree() {
        // The schema pattern is a regular expression the API server enforces; the parser must accept exactly
        // the same language. Check a spread of inputs against a hand-translation of the pattern.
        fn matches_pattern(s: &str) -> bool {
            let mut rest = s;
            if rest.is_empty() {
                return false;
            }
            while !rest.is_empty() {
                let d = rest.bytes().take_while(u8::is_ascii_digit).count();
                if d == 0 {
                    return false;
                }
                rest = &rest[d..];
                if let Some(r) = rest.strip_prefix('.') {
                    let f = r.bytes().take_while(u8::is_ascii_digit).count();
                    if f == 0 {
                        return false;
                    }
                    rest = &r[f..];
                }
                rest = if let Some(r) = rest.strip_prefix("ms") {
                    r
                } else if let Some(r) = rest.strip_prefix(['s', 'm', 'h']) {
                    r
                } else {
                    return false;
                };
            }
            true
        }
        for s in ["1h", "1h30m", "0.5ms", "10ms5s", "1.", "m", "1x", "12", "1m2", "3h4m5s6ms"] {
            assert_eq!(parse(s).is_ok(), matches_pattern(s), "{s:?}");
        }
    }

    #[test]
    fn fraction_digits_past_the_twelfth_count() {
        // Found by tests/fuzz.rs: 1e-13 h is 0.36 ns, so the 13th digit of an hour fraction is worth whole nanoseconds.
        assert_eq!(parse("0.0000000000009h"), Ok(Duration::from_nanos(3)));
        assert_eq!(parse("0.0000000000003h"), Ok(Duration::from_nanos(1)));
        assert_eq!(parse("0.00000000000000000000001h"), Ok(Duration::ZERO));
        assert_eq!(parse("1.000000000000000000000001h"), Ok(Duration::from_secs(3_600)));
        assert_eq!(parse("0.000000000016666666666667m"), Ok(Duration::from_nanos(1)));
        assert_eq!(parse("0.000000000016666666666666m"), Ok(Duration::ZERO));
    }

    #[test]
    fn huge_values_overflow_instead_of_wrapping() {
        assert!(matches!(parse("99999999999999999999999999999h"), Err(DurationError::Overflow(_))));
        assert!(matches!(parse("1h18446744073709551616s"), Err(DurationError::Overflow(_))));
        assert!(matches!(parse(&"9".repeat(50)), Err(DurationError::Syntax(_))));
        // Found by tests/fuzz.rs: a syntax error after a part too large is a syntax error, not "too large".
        let bad = [
            "7s23034369477715353127068190876h0",
            "99999999999999999999999999999999999999999h1x",
            "1h9999999999999999999999999999999999999999h-",
        ];
        for bad in bad {
            assert!(matches!(parse(bad), Err(DurationError::Syntax(_))), "{bad:?}");
        }
    }
}
