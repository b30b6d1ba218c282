//! Types both resources share: durations, request rates and standard conditions.

use std::borrow::Cow;

use kube::KubeSchema;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use super::bounds::{self, DURATION_MAX_LENGTH, SCHEMA_DURATION_PATTERN};
use super::duration::{self, DurationError};

/// A duration such as `90s`, `15m`, `24h` or `1h30m` (units `ms`, `s`, `m`, `h`; at most 6 digits per number and
/// 20 characters; each field adds its own maximum, see [`super::bounds`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(transparent)]
pub struct GoDuration(pub String);

impl GoDuration {
    /// The duration this string denotes; the schema has already refused anything [`duration::parse`] refuses,
    /// but objects stored before a schema change may still hold one, so callers treat an error as a bad spec.
    pub fn parse(&self) -> Result<std::time::Duration, DurationError> {
        duration::parse(&self.0)
    }
}

impl From<&str> for GoDuration {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl JsonSchema for GoDuration {
    fn schema_name() -> Cow<'static, str> {
        "GoDuration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": SCHEMA_DURATION_PATTERN,
            "maxLength": DURATION_MAX_LENGTH,
        })
    }
}

/// A number of requests per period, e.g. 1000 per `1m`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestRate {
    /// Requests allowed (or served) in each period; at least 1.
    #[schemars(range(min = 1))]
    pub requests: i64,
    /// The period the requests are counted over, as a duration such as `1s`, `1m` or `1h`: above 0s, at most
    /// 8760h (a year, the longest quota period anyone writes).
    #[x_kube(validation = bounds::duration_positive_at_most("period", bounds::MAX_RATE_PERIOD, "a rate is counted over at most a year"))]
    pub period: GoDuration,
}

impl RequestRate {
    /// Requests per second, or `None` when the period is zero or unparseable.
    pub fn per_second(&self) -> Option<f64> {
        let secs = self.period.parse().ok()?.as_secs_f64();
        (secs > 0.0).then(|| self.requests as f64 / secs)
    }
}

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_rate_per_second() {
        let r = RequestRate { requests: 1200, period: "1m".into() };
        assert_eq!(r.per_second(), Some(20.0));
        let zero = RequestRate { requests: 5, period: "0s".into() };
        assert_eq!(zero.per_second(), None);
    }
}
