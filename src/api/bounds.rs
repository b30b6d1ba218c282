//! Upper bounds on every duration and time in both CRDs, and the patterns of every field that ends up in an API
//! path. One place holds each bound, used twice: in the schema (so `kubectl apply` refuses the value with the
//! field named) and in the operator's own checks (so an object stored before the schema had the bound gets
//! `Ready=False`, never a panic in time arithmetic).
//!
//! Why a duration's schema is a *bounded* pattern and not only a CEL rule: CEL's `duration()` fails on anything
//! beyond Go's `time.Duration` (about 290 years, 2,562,047h), and a rule that fails to evaluate gives an unhelpful
//! error. [`SCHEMA_DURATION_PATTERN`] allows at most 6 integer digits per number and [`DURATION_MAX_LENGTH`]
//! characters in all, so the largest value the pattern admits is `999999h999999h99999h` (about 2,100,000h), which
//! `duration()` always parses; the CEL rule then compares it with the field's maximum.

use std::time::Duration;

use kube::core::{Message, Rule};

/// The schema pattern of a duration field: the syntax of [`super::duration::DURATION_PATTERN`] with at most 6
/// integer digits per number (`720h`, `90s`, `1h30m`; a month is `720h`, not `2592000s`).
pub const SCHEMA_DURATION_PATTERN: &str = r"^([0-9]{1,6}(\.[0-9]+)?(ms|s|m|h))+$";

/// The longest duration string the schema accepts (see the module docs for why this keeps `duration()` safe).
pub const DURATION_MAX_LENGTH: u64 = 20;

/// `rotation.interval` and `rotation.gracePeriod`: one year. Keys that live longer than a year without rotating
/// are what Keyward exists to prevent, and a grace period longer than the interval keeps a leaked key valid.
pub const MAX_ROTATION_INTERVAL: Duration = Duration::from_secs(8760 * 3600);
/// See [`MAX_ROTATION_INTERVAL`].
pub const MAX_GRACE_PERIOD: Duration = MAX_ROTATION_INTERVAL;
/// `rotation.jitter`: a day spreads any herd; more would make a schedule meaningless.
pub const MAX_JITTER: Duration = Duration::from_secs(24 * 3600);
/// `usage.interval`: a day. Usage older than that says nothing about a key being near its limit now.
pub const MAX_USAGE_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// `limit.period`, `temporaryOverrides[].period`, `scaling.capacityPerReplica.period`: a year, the longest
/// quota period anyone writes.
pub const MAX_RATE_PERIOD: Duration = Duration::from_secs(8760 * 3600);
/// `scaling.scaleUp/scaleDown.stabilizationWindow`: one hour, the HorizontalPodAutoscaler's own maximum
/// (`stabilizationWindowSeconds` ≤ 3600); it also bounds the recommendations a policy remembers.
pub const MAX_STABILIZATION_WINDOW: Duration = Duration::from_secs(3600);

/// Earliest time accepted in `expiresAt` and `temporaryOverrides[].until` (RFC 3339).
pub const MIN_TIME: &str = "1970-01-01T00:00:00Z";
/// Latest time (exclusive) accepted in `expiresAt` and `temporaryOverrides[].until`: far enough for any real
/// key, far from the end of the time types (year 9999).
pub const MAX_TIME: &str = "3000-01-01T00:00:00Z";

/// A DNS-1123 subdomain (the names of Secrets, Deployments, custom resources): at most 253 characters.
pub const DNS_SUBDOMAIN_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A Kubernetes kind: a PascalCase identifier.
pub const KIND_PATTERN: &str = r"^[A-Z][A-Za-z0-9]*$";
/// An `apiVersion`: `group/version` (group a DNS-1123 subdomain) or `version` (a DNS-1123 label).
pub const API_VERSION_PATTERN: &str =
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// An http(s) URL with no user info in its authority (`user:pass@`, `user@`): credentials belong in Secrets.
pub const CREDENTIAL_FREE_URL_PATTERN: &str = r"^https?://[^/?#@\s]+([/?#]\S*)?$";

/// Most entries in `secretTemplate.labels` and `secretTemplate.annotations`.
pub const MAX_TEMPLATE_ENTRIES: u64 = 64;
/// Longest key of a label or annotation: a 253-character prefix, `/` and a 63-character name.
pub const MAX_META_KEY_LENGTH: usize = 317;
/// Longest label value (Kubernetes' own limit).
pub const MAX_LABEL_VALUE_LENGTH: usize = 63;
/// Longest annotation value Keyward copies: gateway selectors and hints, not documents.
pub const MAX_ANNOTATION_VALUE_LENGTH: usize = 4096;

/// A duration as the CEL literal `duration('…')` and the text shown in messages, in whole hours when it is.
pub fn display(d: Duration) -> String {
    let secs = d.as_secs();
    if secs.is_multiple_of(3600) { format!("{}h", secs / 3600) } else { format!("{secs}s") }
}

/// The CEL rule: the duration is at most `max`; `why` ends the message.
///
/// NB: a value that is not a duration at all is left to the schema pattern: `duration()` would fail at run time, and
/// an evaluation error is not ratcheted, so an object stored before the rule (under a looser schema) could then
/// never have its status written, not even the `InvalidSpec` that says what is wrong.
pub fn duration_at_most(field: &str, max: Duration, why: &str) -> Rule {
    let max = display(max);
    Rule::new(format!(
        "!self.matches('{}') || duration(self) <= duration('{max}')",
        cel_escape(SCHEMA_DURATION_PATTERN)
    ))
    .message(Message::Message(format!("{field} must be at most {max}: {why}")))
}

/// The CEL rule: the duration is greater than zero and at most `max`.
pub fn duration_positive_at_most(field: &str, max: Duration, why: &str) -> Rule {
    let max = display(max);
    Rule::new(format!(
        "!self.matches('{}') || (duration(self) > duration('0s') && duration(self) <= duration('{max}'))",
        cel_escape(SCHEMA_DURATION_PATTERN)
    ))
    .message(Message::Message(format!("{field} must be greater than 0s and at most {max}: {why}")))
}

/// The CEL rule on an object: its duration field `shorter` is less than its duration field `longer` when both are
/// set (`field_*` name them in the message, which ends with `why`). Values that are not durations are left to the
/// schema pattern, as in [`duration_at_most`].
pub fn shorter_than(shorter: (&str, &str), longer: (&str, &str), why: &str) -> Rule {
    let ((a, field_a), (b, field_b)) = (shorter, longer);
    let pattern = cel_escape(SCHEMA_DURATION_PATTERN);
    Rule::new(format!(
        "!has(self.{a}) || !has(self.{b}) || !self.{a}.matches('{pattern}') || !self.{b}.matches('{pattern}') || \
         duration(self.{a}) < duration(self.{b})"
    ))
    .message(Message::Message(format!("{field_a} must be shorter than {field_b}: {why}")))
}

/// The CEL rule: a time in [`MIN_TIME`, `MAX_TIME`).
pub fn time_in_range(field: &str) -> Rule {
    Rule::new(format!("self >= timestamp('{MIN_TIME}') && self < timestamp('{MAX_TIME}')"))
        .message(Message::Message(format!("{field} must be at or after {MIN_TIME} and before {MAX_TIME}")))
}

/// The CEL rule: an http or https URL without credentials in its authority.
pub fn credential_free_url(field: &str) -> Rule {
    Rule::new(format!("self.matches('{}')", cel_escape(CREDENTIAL_FREE_URL_PATTERN))).message(Message::Message(
        format!(
            "{field} must be an http:// or https:// URL without credentials (no user:pass@ or user@); \
             put credentials in a Secret"
        ),
    ))
}

/// The CEL rule on a list of URLs: each one as [`credential_free_url`].
pub fn credential_free_urls(field: &str) -> Rule {
    Rule::new(format!("self.all(u, u.matches('{}'))", cel_escape(CREDENTIAL_FREE_URL_PATTERN))).message(
        Message::Message(format!(
            "{field} must each be an http:// or https:// URL without credentials (no user:pass@ or user@); \
             put credentials in a Secret"
        )),
    )
}

/// The CEL rule on a string map: keys and values no longer than the given lengths.
pub fn map_lengths(field: &str, max_value: usize) -> Rule {
    Rule::new(format!("self.all(k, k.size() <= {MAX_META_KEY_LENGTH} && self[k].size() <= {max_value})")).message(
        Message::Message(format!(
            "{field}: keys must be at most {MAX_META_KEY_LENGTH} characters and values at most {max_value}"
        )),
    )
}

/// A regular expression as a single-quoted CEL string literal's content.
fn cel_escape(pattern: &str) -> String {
    pattern.replace('\\', "\\\\").replace('\'', "\\'")
}

/// Checks a parsed duration against its maximum, for objects stored before the schema had the bound.
pub fn check_at_most(field: &str, value: Duration, max: Duration) -> Result<(), String> {
    if value > max {
        Err(format!("{field}: must be at most {}, got {}", display(max), crate::minimums::show(value)))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_pattern_value_fits_go_durations() {
        // The largest value of DURATION_MAX_LENGTH characters with ≤ 6 digits per number, as reasoned in the docs.
        let worst = "999999h999999h99999h";
        assert_eq!(worst.len() as u64, DURATION_MAX_LENGTH);
        let parsed = crate::api::duration::parse(worst).expect("parses");
        // Go's time.Duration holds at most 2,562,047h.
        assert!(parsed < Duration::from_secs(2_562_047 * 3600), "{parsed:?}");
    }

    #[test]
    fn bounds_display_as_cel_durations() {
        assert_eq!(display(MAX_ROTATION_INTERVAL), "8760h");
        assert_eq!(display(MAX_STABILIZATION_WINDOW), "1h");
        assert_eq!(display(Duration::from_secs(90)), "90s");
    }

    #[test]
    fn check_at_most_names_the_field() {
        assert!(check_at_most("usage.interval", Duration::from_secs(86_400), MAX_USAGE_INTERVAL).is_ok());
        let e = check_at_most("usage.interval", Duration::from_secs(86_401), MAX_USAGE_INTERVAL).unwrap_err();
        assert_eq!(e, "usage.interval: must be at most 24h, got 86401s");
    }
}
