//! Reading the JSON of a Prometheus `/api/v1/query` answer without building a document tree: serde visitors walk the
//! answer once and keep only the per-key sums, counting series and keys against the caps as they go.
//!
//! The body itself is buffered up to the response cap under the shared budget (`serde_json` reads from a slice or
//! a blocking reader, not from an async stream); what the parse adds is bounded by the key cap. Errors are fixed
//! texts: a Prometheus error message, a result type or a sample value is never quoted (the error message is logged
//! at debug level).

use std::cell::{Cell, RefCell};
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{Limits, Rates, SourceError};

/// Why the walk stopped early, beyond what serde reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    TooManySeries,
    TooManyKeys,
    NotANumber,
}

/// What the walk accumulates.
struct Walk<'a> {
    key_label: &'a str,
    limits: Limits,
    rates: RefCell<Rates>,
    series: Cell<usize>,
    /// An element of `result` that is not a series object (fine for a scalar or string result, not for a vector).
    odd_element: Cell<bool>,
    stop: Cell<Option<Stop>>,
}

impl Walk<'_> {
    fn stop<E: serde::de::Error>(&self, why: Stop) -> E {
        self.stop.set(Some(why));
        E::custom("stopped")
    }
}

#[derive(Default)]
struct Envelope {
    status: Option<String>,
    error_type: Option<String>,
    error: Option<String>,
    data: Option<Option<Option<String>>>,
}

/// Rates by key from the body of a `/api/v1/query` answer, with the default [`Limits`].
///
/// Pure: errors carry no URL yet (the caller fills it in) and quote nothing of the body. An empty vector is an empty
/// map: whether that means "no traffic" or "wrong query" is the caller's decision.
pub fn parse_query_response(body: &[u8], key_label: &str) -> Result<Rates, SourceError> {
    parse_query_response_limited(body, key_label, Limits::default())
}

/// [`parse_query_response`] with the caps of `limits` on series and keys.
pub fn parse_query_response_limited(body: &[u8], key_label: &str, limits: Limits) -> Result<Rates, SourceError> {
    let invalid = |detail: String| SourceError::InvalidResponse { url: String::new(), detail };
    let walk = Walk {
        key_label,
        limits,
        rates: RefCell::default(),
        series: Cell::new(0),
        odd_element: Cell::new(false),
        stop: Cell::new(None),
    };
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let parsed = EnvelopeSeed(&walk).deserialize(&mut deserializer).and_then(|envelope| {
        deserializer.end()?;
        Ok(envelope)
    });
    let envelope = match (parsed, walk.stop.get()) {
        (_, Some(Stop::TooManySeries)) => {
            return Err(SourceError::TooManySeries { url: String::new(), limit: limits.max_series });
        }
        (_, Some(Stop::TooManyKeys)) => {
            return Err(SourceError::TooManyKeys { url: String::new(), limit: limits.max_keys });
        }
        (_, Some(Stop::NotANumber)) => return Err(invalid("a sample value is not a number".to_owned())),
        (Err(err), None) => return Err(invalid(describe_json_error(&err))),
        (Ok(envelope), None) => envelope,
    };
    match envelope.status.as_deref() {
        Some("success") => {}
        Some("error") => {
            if let Some(message) = &envelope.error {
                tracing::debug!(message = %super::http::truncate(message, 500), "Prometheus rejected the query");
            }
            return Err(SourceError::Query {
                url: String::new(),
                status: 200,
                error_type: known_error_type(envelope.error_type.as_deref()),
            });
        }
        _ => return Err(invalid("the answer's status is neither success nor error".to_owned())),
    }
    let Some(Some(result_type)) = envelope.data else {
        return Err(invalid("a successful answer without data".to_owned()));
    };
    match result_type.as_deref() {
        Some("vector") => {}
        Some(other) => return Err(SourceError::NotAVector { url: String::new(), result_type: known_type(other) }),
        None => return Err(invalid("the data has no resultType".to_owned())),
    }
    if walk.odd_element.get() {
        return Err(invalid("the vector is not shaped like a Prometheus API answer".to_owned()));
    }
    let mut rates = walk.rates.into_inner();
    // Summing finite values can still overflow to infinity; such a rate means nothing.
    rates.retain(|_, rate| rate.is_finite());
    Ok(rates)
}

/// The Prometheus API's error types; anything else is `unknown`.
fn known_error_type(text: Option<&str>) -> &'static str {
    const KNOWN: &[&str] =
        &["bad_data", "execution", "timeout", "canceled", "internal", "unavailable", "not_found", "not_acceptable"];
    text.and_then(|t| KNOWN.iter().find(|k| **k == t)).copied().unwrap_or("unknown")
}

/// The result types of the Prometheus API; anything else is described, not quoted.
fn known_type(text: &str) -> &'static str {
    match text {
        "scalar" => "scalar",
        "string" => "string",
        "matrix" => "matrix",
        _ => "result of an unknown type",
    }
}

/// What is wrong with the JSON, without serde's message: that would quote values from the body.
fn describe_json_error(err: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let problem = match err.classify() {
        Category::Io | Category::Syntax => "is not JSON",
        Category::Eof => "is cut short",
        Category::Data => "is not shaped like a Prometheus API answer",
    };
    if err.line() == 0 {
        format!("the answer {problem}")
    } else {
        format!("the answer {problem} (line {}, column {})", err.line(), err.column())
    }
}

/// The top-level object: `status`, `data`, `errorType`, `error`.
struct EnvelopeSeed<'w, 'a>(&'w Walk<'a>);

impl<'de> DeserializeSeed<'de> for EnvelopeSeed<'_, '_> {
    type Value = Envelope;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Envelope, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EnvelopeSeed<'_, '_> {
    type Value = Envelope;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Prometheus API answer")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
        let mut envelope = Envelope::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "status" => envelope.status = Some(map.next_value()?),
                "errorType" => envelope.error_type = map.next_value()?,
                "error" => envelope.error = map.next_value()?,
                "data" => envelope.data = Some(map.next_value_seed(DataSeed(self.0))?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(envelope)
    }
}

/// `data`: null, or `{resultType, result}`; yields `Some(resultType)` for an object.
struct DataSeed<'w, 'a>(&'w Walk<'a>);

impl<'de> DeserializeSeed<'de> for DataSeed<'_, '_> {
    type Value = Option<Option<String>>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for DataSeed<'_, '_> {
    type Value = Option<Option<String>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the data of an answer")
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(DataFields(self.0)).map(Some)
    }
}

struct DataFields<'w, 'a>(&'w Walk<'a>);

impl<'de> Visitor<'de> for DataFields<'_, '_> {
    type Value = Option<String>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with resultType and result")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<String>, A::Error> {
        let mut result_type = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "resultType" => result_type = Some(map.next_value()?),
                "result" => map.next_value_seed(ResultSeed(self.0))?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(result_type)
    }
}

/// `result`: an array; its elements are walked one at a time.
struct ResultSeed<'w, 'a>(&'w Walk<'a>);

impl<'de> DeserializeSeed<'de> for ResultSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ResultSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(ElementSeed(self.0))?.is_some() {}
        Ok(())
    }
}

/// One element of `result`: a series object, or (for scalar and string results) anything else, skipped.
struct ElementSeed<'w, 'a>(&'w Walk<'a>);

impl<'de> DeserializeSeed<'de> for ElementSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl ElementSeed<'_, '_> {
    fn odd<E>(&self) -> Result<(), E> {
        self.0.odd_element.set(true);
        Ok(())
    }
}

impl<'de> Visitor<'de> for ElementSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a series")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        self.odd()
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        self.odd()
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        self.odd()
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        self.odd()
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        self.odd()
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.odd()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.odd()
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let walk = self.0;
        walk.series.set(walk.series.get() + 1);
        if walk.series.get() > walk.limits.max_series {
            return Err(walk.stop(Stop::TooManySeries));
        }
        let (mut key, mut value) = (None, None);
        while let Some(field) = map.next_key::<String>()? {
            match field.as_str() {
                "metric" => key = map.next_value_seed(LabelSeed(walk.key_label))?,
                "value" => value = Some(map.next_value::<(IgnoredAny, String)>()?.1),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        // Series without the key label, and native histograms (no `value`), are skipped.
        let (Some(key), Some(text)) = (key.filter(|k: &String| !k.is_empty()), value) else { return Ok(()) };
        // Prometheus writes values as Go does: "12.5", "1e+06", "NaN", "+Inf"; Rust's parser reads them all.
        let value: f64 = text.parse().map_err(|_| walk.stop(Stop::NotANumber))?;
        if value.is_finite() && value >= 0.0 {
            let mut rates = walk.rates.borrow_mut();
            *rates.entry(key).or_insert(0.0) += value;
            if rates.len() > walk.limits.max_keys {
                return Err(walk.stop(Stop::TooManyKeys));
            }
        }
        Ok(())
    }
}

/// `metric`: the labels of a series; yields the value of the key label, the others are skipped.
struct LabelSeed<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for LabelSeed<'_> {
    type Value = Option<String>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<String>, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for LabelSeed<'_> {
    type Value = Option<String>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("labels")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<String>, A::Error> {
        let mut found = None;
        while let Some(label) = map.next_key::<String>()? {
            if label == self.0 {
                found = Some(map.next_value::<String>()?);
            } else {
                map.next_value::<String>()?;
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
#[path = "promjson_tests/mod.rs"]
mod tests;
