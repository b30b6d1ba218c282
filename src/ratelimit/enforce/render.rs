//! What the gateway is told, pure: the limit in Envoy Gateway's units, each member key's client ids, and the
//! `BackendTrafficPolicy` that limits each key by the client id Envoy Gateway's API-key authentication forwards
//! (never by the key), plus the ⊆ comparison that tells whether a stored object already holds the render.
//!
//! Envoy Gateway v1.9 (`api/v1alpha1/ratelimit_types.go`): units Second, Minute, Hour, Day, Week, Month (30 days)
//! and Year (365 days); at most 256 global and 16 local rules; a header match value of at most 1024 characters.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::super::limits::{CalendarUnit, Effective};
use crate::api::ApiKey;
use crate::api::ratelimit::{Enforce, EnforceTargetKind, EnforceType};
use crate::apikey::layout::Layout;

/// API version and kind of the object Keyward renders.
pub const API_VERSION: &str = "gateway.envoyproxy.io/v1alpha1";
pub const KIND: &str = "BackendTrafficPolicy";
/// Most rules a `rateLimit.global` holds (the CRD's `maxItems`).
pub const MAX_GLOBAL_RULES: usize = 256;
/// Most rules a `rateLimit.local` holds (the CRD's `maxItems`).
pub const MAX_LOCAL_RULES: usize = 16;
/// Longest header match value the CRD accepts.
const MAX_HEADER_VALUE: usize = 1024;

/// Envoy Gateway's rate-limit units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    /// Envoy's month: 30 days (fixed windows for Global, the token bucket's interval for Local).
    Month,
    /// 365 days.
    Year,
}

impl Unit {
    /// The unit's length as Envoy counts it.
    pub fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3600,
            Unit::Day => 86_400,
            Unit::Week => 7 * 86_400,
            Unit::Month => 30 * 86_400,
            Unit::Year => 365 * 86_400,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Second => "Second",
            Unit::Minute => "Minute",
            Unit::Hour => "Hour",
            Unit::Day => "Day",
            Unit::Week => "Week",
            Unit::Month => "Month",
            Unit::Year => "Year",
        }
    }
}

/// The units a rolling period maps to: fixed lengths in Envoy and in Keyward alike (Month is left to calendar
/// limits: Envoy's is 30 days, a reader's is a calendar month).
const ROLLING_UNITS: [Unit; 6] = [Unit::Second, Unit::Minute, Unit::Hour, Unit::Day, Unit::Week, Unit::Year];

/// The limit as the gateway enforces it per key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayLimit {
    pub requests: u32,
    pub unit: Unit,
    /// Why it is not exactly the policy's limit (a message with both figures), when it is not.
    pub rounded: Option<String>,
}

impl GatewayLimit {
    /// `<requests>/<unit>`, as in `status.enforcedLimit`.
    pub fn display(&self) -> String {
        format!("{}/{}", self.requests, self.unit.as_str())
    }
}

/// The limit in force in the gateway's units. Calendar limits count in their clock unit, requests as written;
/// a rolling period that equals a unit uses it; else the first unit, in the order "the longest not longer than
/// the period, shorter ones, then the first longer one", where the requests stay a whole number at the same rate;
/// else the first in that order with at least one request, rounded (`rounded` says so). `Err` for a period that
/// does not parse.
pub fn gateway_limit(e: &Effective) -> Result<GatewayLimit, String> {
    if let Some(c) = e.calendar {
        let unit = match c {
            CalendarUnit::Hour => Unit::Hour,
            CalendarUnit::Day => Unit::Day,
            CalendarUnit::Month => Unit::Month,
        };
        return Ok(clamped(e, u128::try_from(e.requests).unwrap_or(0), unit, None));
    }
    let period = crate::api::common::GoDuration::from(e.period.as_str())
        .parse()
        .ok()
        .filter(|p| !p.is_zero())
        .ok_or_else(|| format!("the period {:?} is not a duration above 0", e.period))?;
    let requests = u128::try_from(e.requests.max(1)).unwrap_or(1);
    let p = period.as_nanos();
    let unit_ns = |u: Unit| u128::from(u.seconds()) * 1_000_000_000;
    // In order of preference: the longest unit not longer than the period first (a window no longer than the
    // period never lets more than the period's requests through in one burst), down to the second, then the
    // first unit longer than the period. Never a unit further out: it would allow bursts of its whole count.
    let mut order: Vec<Unit> = ROLLING_UNITS.iter().copied().filter(|u| unit_ns(*u) <= p).rev().collect();
    order.extend(ROLLING_UNITS.iter().copied().find(|u| unit_ns(*u) > p));
    let exact = |u: &Unit| {
        let scaled = requests * unit_ns(*u);
        scaled % p == 0 && scaled / p >= 1 && scaled / p <= u128::from(u32::MAX)
    };
    if let Some(u) = order.iter().find(|u| exact(u)) {
        return Ok(clamped(e, requests * unit_ns(*u) / p, *u, None));
    }
    // NB: never empty: the last unit is at least as long as the period (or it is the year, as long as the
    // longest period), so its count is at least one request.
    let unit = order.iter().copied().find(|u| requests * unit_ns(*u) >= p).unwrap_or(Unit::Year);
    let count = ((requests * unit_ns(unit)) as f64 / p as f64).round().max(1.0);
    let note = rounding_note(e, period, count, unit);
    Ok(clamped(e, count as u128, unit, Some(note)))
}

fn rounding_note(e: &Effective, period: Duration, count: f64, unit: Unit) -> String {
    let want = e.requests as f64 / period.as_secs_f64();
    let got = count / unit.seconds() as f64;
    format!(
        "{}/{} has no exact equivalent in Envoy Gateway's units; the gateway enforces {count}/{} ({want:.4} vs \
         {got:.4} requests per second)",
        e.requests,
        e.period,
        unit.as_str()
    )
}

/// `requests` per `unit`, at most what the CRD accepts (`u32::MAX`), saying so when it is cut.
fn clamped(e: &Effective, requests: u128, unit: Unit, rounded: Option<String>) -> GatewayLimit {
    match u32::try_from(requests) {
        Ok(r) if r >= 1 => GatewayLimit { requests: r, unit, rounded },
        _ => {
            let r = if requests == 0 { 1 } else { u32::MAX };
            let note = format!(
                "{}/{} is beyond what Envoy Gateway accepts; the gateway enforces {r}/{}",
                e.requests,
                e.period,
                unit.as_str()
            );
            GatewayLimit { requests: r, unit, rounded: Some(note) }
        }
    }
}

/// A member key as the gateway knows it: its name and the client ids of its Secret's key entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// `current`, then `previous` unless the previous key lives in its own Secret (where Envoy Gateway would see
    /// it under the same client id as the current one).
    pub client_ids: Vec<String>,
}

/// The client ids of `key` (see [`crate::apikey::layout`]); `None` when its Secret's shape does not resolve (the
/// ApiKey controller reports that on the key; it has no Secret to authenticate with).
pub fn member(key: &ApiKey) -> Option<Member> {
    let name = kube::ResourceExt::name_any(key);
    let secret = crate::apikey::secret::secret_name(&key.spec, &name).to_string();
    let layout = Layout::resolve(&key.spec, &name, &secret).ok()?;
    let mut client_ids = vec![layout.entries.current.clone()];
    if !layout.entries.own {
        client_ids.push(layout.entries.previous);
    }
    Some(Member { name, client_ids })
}

/// What the policy is and owns.
pub struct Owner<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub uid: &'a str,
}

/// A render: the object, and the keys it leaves out.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    /// The whole object to apply.
    pub object: Value,
    /// Keys rendered.
    pub keys: usize,
    /// Keys left out because one of their client ids is also another member's, sorted.
    pub collisions: Vec<String>,
}

/// Why nothing can be rendered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// More rules than the CRD holds for this type.
    TooManyKeys { keys: usize, rules: usize, max: usize },
}

/// The BackendTrafficPolicy that limits each member to `limit` by its client ids in `enforce.clientIdHeader`.
/// Deterministic: the same inputs in any order render the same bytes.
pub fn render(
    owner: &Owner<'_>,
    enforce: &Enforce,
    limit: &GatewayLimit,
    members: &[Member],
) -> Result<Rendered, Refused> {
    let mut members: Vec<&Member> = members.iter().collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    members.dedup_by(|a, b| a.name == b.name);
    let mut claims: BTreeMap<&str, usize> = BTreeMap::new();
    for m in &members {
        let mut ids: Vec<&str> = m.client_ids.iter().map(String::as_str).collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            *claims.entry(id).or_default() += 1;
        }
    }
    let (kept, collided): (Vec<&Member>, Vec<&Member>) =
        members.into_iter().partition(|m| m.client_ids.iter().all(|id| claims.get(id.as_str()) == Some(&1)));
    let header = enforce.client_id_header.as_str();
    let rules: Vec<Value> = kept.iter().flat_map(|m| rules(header, m, limit)).collect();
    let type_ = enforce.type_.unwrap_or_default();
    let max = match type_ {
        EnforceType::Global => MAX_GLOBAL_RULES,
        EnforceType::Local => MAX_LOCAL_RULES,
    };
    if rules.len() > max {
        return Err(Refused::TooManyKeys { keys: kept.len(), rules: rules.len(), max });
    }
    let (type_name, field) = match type_ {
        EnforceType::Global => ("Global", "global"),
        EnforceType::Local => ("Local", "local"),
    };
    let kind = match enforce.target_ref.kind {
        EnforceTargetKind::HttpRoute => "HTTPRoute",
        EnforceTargetKind::Gateway => "Gateway",
    };
    let object = json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": owner.name,
            "namespace": owner.namespace,
            "labels": {crate::apikey::book::MANAGED_BY_LABEL: crate::apikey::book::MANAGED_BY},
            "ownerReferences": [{
                "apiVersion": "keyward.dev/v1alpha1",
                "kind": "RateLimitPolicy",
                "name": owner.name,
                "uid": owner.uid,
                "controller": true,
                "blockOwnerDeletion": false,
            }],
        },
        "spec": {
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": kind, "name": enforce.target_ref.name}],
            // NB: `type` is deprecated in Envoy Gateway 1.9 but still honoured, and required by older releases.
            "rateLimit": {"type": type_name, field: {"rules": rules}},
        },
    });
    Ok(Rendered { object, keys: kept.len(), collisions: collided.iter().map(|m| m.name.clone()).collect() })
}

/// The rules of one key: one rule matching all its client ids (one bucket for the current and the previous key)
/// when the regular expression fits the CRD, else one exact rule per client id.
fn rules(header: &str, m: &Member, limit: &GatewayLimit) -> Vec<Value> {
    let limit = json!({"requests": limit.requests, "unit": limit.unit.as_str()});
    let rule = |type_: &str, value: &str| {
        json!({
            "clientSelectors": [{"headers": [{"name": header, "type": type_, "value": value}]}],
            "limit": limit,
        })
    };
    let mut ids: Vec<&str> = m.client_ids.iter().map(String::as_str).collect();
    ids.dedup();
    if let [only] = ids.as_slice() {
        return vec![rule("Exact", only)];
    }
    match alternation(&ids) {
        Some(re) if re.len() <= MAX_HEADER_VALUE => vec![rule("RegularExpression", &re)],
        _ => ids.iter().map(|id| rule("Exact", id)).collect(),
    }
}

/// `^(?:a|b)$` for client ids made of Secret data key characters (`.` escaped); `None` for anything else.
fn alternation(ids: &[&str]) -> Option<String> {
    let safe = |id: &&str| id.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
    if !ids.iter().all(safe) {
        return None;
    }
    let escaped: Vec<String> = ids.iter().map(|id| id.replace('.', "\\.")).collect();
    Some(format!("^(?:{})$", escaped.join("|")))
}

/// Whether `observed` already holds everything in `want`: objects by key (extra keys in `observed`, such as
/// server defaults, are fine), arrays of the same length element by element, anything else equal.
pub fn contains(observed: &Value, want: &Value) -> bool {
    match (want, observed) {
        (Value::Object(w), Value::Object(o)) => w.iter().all(|(k, v)| o.get(k).is_some_and(|ov| contains(ov, v))),
        (Value::Array(w), Value::Array(o)) => w.len() == o.len() && w.iter().zip(o).all(|(w, o)| contains(o, w)),
        (w, o) => w == o,
    }
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
