//! The enforcement decision, pure: from the render, what the API server holds under the policy's name and the
//! policy's status, the one write (apply, or nothing), the `Enforced` and `EnforcementConflict` conditions,
//! `status.enforcedLimit` and the events.

use serde_json::Value;

use super::Btp;
use super::render::{self, GatewayLimit, Refused, Rendered};
use crate::api::ratelimit::RateLimitPolicyStatus;
use crate::ratelimit::condition::{ENFORCED, ENFORCEMENT_CONFLICT};
use crate::ratelimit::key_usage;
use crate::ratelimit::limits::Effective;
use crate::ratelimit::plan::Note;
use crate::runtime::conditions::Desired;
use crate::runtime::events::EventType;

/// Reasons of `Enforced`.
pub mod reason {
    pub const ENFORCED: &str = "Enforced";
    pub const LIMIT_ROUNDED: &str = "LimitRounded";
    pub const CLIENT_ID_COLLISION: &str = "ClientIdCollision";
    pub const TOO_MANY_KEYS: &str = "TooManyKeys";
    pub const GATEWAY_CRD_MISSING: &str = "GatewayCrdMissing";
    pub const GATEWAY_API_UNAVAILABLE: &str = "GatewayApiUnavailable";
    pub const ENFORCEMENT_CONFLICT: &str = "EnforcementConflict";
    pub const INVALID_LIMIT: &str = "InvalidLimit";
    pub const READ_FAILED: &str = "ReadFailed";
    pub const APPLY_FAILED: &str = "ApplyFailed";
    pub const REJECTED: &str = "Rejected";
    pub const DELETING: &str = "GatewayObjectDeleting";
}

/// What the API server holds under the policy's name.
#[derive(Clone, Debug)]
pub enum Seen {
    /// Nothing.
    Missing,
    /// A BackendTrafficPolicy this policy controls.
    Ours(Box<Btp>),
    /// One that something else owns (or nobody).
    Foreign { owner: Option<String> },
}

/// Whether the gateway's API can be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Crd {
    Present,
    /// The BackendTrafficPolicy CRD is not installed.
    Missing,
    /// Discovery failed; why.
    Unknown(String),
}

/// The write of one reconcile.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    Nothing,
    Apply(Value),
}

/// What one reconcile does for `enforce`.
#[derive(Clone, Debug)]
pub struct Decision {
    pub write: Write,
    pub conditions: Vec<Desired>,
    /// `status.enforcedLimit`: the limit the gateway holds per key, `None` when Keyward cannot vouch for one.
    pub enforced_limit: Option<String>,
    /// Published once the write (if any) succeeded.
    pub events: Vec<Note>,
}

/// Everything the decision depends on.
pub struct Inputs<'a> {
    pub name: &'a str,
    pub header: &'a str,
    pub effective: &'a Effective,
    pub limit: &'a GatewayLimit,
    pub render: &'a Result<Rendered, Refused>,
    pub crd: &'a Crd,
    pub seen: &'a Result<Seen, String>,
    pub current: &'a RateLimitPolicyStatus,
}

fn unchecked() -> Desired {
    Desired::unknown(ENFORCEMENT_CONFLICT, "NotChecked", "the gateway object could not be looked at")
}

fn not_enforced(reason: &'static str, message: String, conflict: Desired) -> Decision {
    Decision {
        write: Write::Nothing,
        conditions: vec![Desired::new(ENFORCED, false, reason, message), conflict],
        enforced_limit: None,
        events: Vec::new(),
    }
}

/// The limit in force has no gateway equivalent (a period that does not parse): nothing is rendered.
pub fn invalid_limit(message: String) -> Decision {
    not_enforced(reason::INVALID_LIMIT, message, unchecked())
}

/// Decides the write, the conditions, the limit shown and the events.
pub fn decide(i: &Inputs<'_>) -> Decision {
    let limit = i.limit;
    match i.crd {
        Crd::Present => {}
        Crd::Missing => {
            let m = "the BackendTrafficPolicy CRD (gateway.envoyproxy.io/v1alpha1) is not installed: install Envoy \
                     Gateway; Keyward looks again every 30s";
            return not_enforced(reason::GATEWAY_CRD_MISSING, m.into(), unchecked());
        }
        Crd::Unknown(e) => {
            let m = format!("cannot tell whether Envoy Gateway's API is installed: {e}");
            return not_enforced(reason::GATEWAY_API_UNAVAILABLE, m, unchecked());
        }
    }
    let seen = match i.seen {
        Ok(s) => s,
        Err(e) => {
            let m = format!("cannot read BackendTrafficPolicy {}: {e}", i.name);
            return not_enforced(reason::READ_FAILED, m, unchecked());
        }
    };
    let no_conflict = Desired::new(ENFORCEMENT_CONFLICT, false, "NoConflict", "Keyward owns the gateway object");
    let rendered = match (seen, i.render) {
        (Seen::Foreign { owner }, _) => return conflict(i, owner.as_deref()),
        (_, Err(Refused::TooManyKeys { keys, rules, max })) => {
            let m = format!(
                "{keys} keys need {rules} rules, more than the {max} a BackendTrafficPolicy of this type holds; \
                 BackendTrafficPolicy {} was left as it is",
                i.name
            );
            return not_enforced(reason::TOO_MANY_KEYS, m, no_conflict);
        }
        (Seen::Ours(btp), _) if btp.metadata.deletion_timestamp.is_some() => {
            let m = format!("BackendTrafficPolicy {} is being deleted; it is rendered again once it is gone", i.name);
            return not_enforced(reason::DELETING, m, no_conflict);
        }
        (_, Ok(r)) => r,
    };
    let write = match seen {
        Seen::Ours(btp) if up_to_date(btp, &rendered.object) => Write::Nothing,
        _ => Write::Apply(rendered.object.clone()),
    };
    let enforced = enforced_condition(i, limit, rendered);
    let display = limit.display();
    let mut events = Vec::new();
    if i.current.enforced_limit.as_deref() != Some(display.as_str()) {
        events.push(Note { type_: EventType::Normal, reason: "Enforced", note: limit_note(i, limit) });
    }
    Decision { write, conditions: vec![enforced, no_conflict], enforced_limit: Some(display), events }
}

/// `Enforced` once the object is current: `True` (`LimitRounded` when the units forced a rounding), `False` with
/// `ClientIdCollision` when keys had to be left out.
fn enforced_condition(i: &Inputs<'_>, limit: &GatewayLimit, r: &Rendered) -> Desired {
    let what = format!("BackendTrafficPolicy {} limits each member key by its client id in {}", i.name, i.header);
    let rounded = limit.rounded.as_deref().map(|n| format!("; {n}")).unwrap_or_default();
    if !r.collisions.is_empty() {
        let m = format!(
            "{what}, except keys whose client id (their Secret's data entry) is also another member's, which the \
             gateway cannot tell apart: {}; give them gateway: EnvoyGateway or distinct secretTemplate.keys{rounded}",
            r.collisions.join(", ")
        );
        return Desired::new(ENFORCED, false, reason::CLIENT_ID_COLLISION, m);
    }
    match &limit.rounded {
        Some(_) => Desired::new(ENFORCED, true, reason::LIMIT_ROUNDED, format!("{what}{rounded}")),
        None => Desired::new(ENFORCED, true, reason::ENFORCED, what),
    }
}

/// The event when the gateway's limit changes: the limit and where it comes from.
fn limit_note(i: &Inputs<'_>, limit: &GatewayLimit) -> String {
    let source = match &i.effective.active {
        Some(a) => format!("temporaryOverrides[{}] until {}: {}", a.index, a.until, a.reason),
        None => "spec.limit".to_string(),
    };
    format!("gateway limit is now {} per key ({source})", limit.display())
}

/// A BackendTrafficPolicy of the policy's name that Keyward does not own: never written.
fn conflict(i: &Inputs<'_>, owner: Option<&str>) -> Decision {
    let by = owner.map(|o| format!(" (controlled by {o})")).unwrap_or_default();
    let m = format!(
        "BackendTrafficPolicy {}{by} exists and is not owned by this RateLimitPolicy; Keyward never overwrites it: \
         delete it or rename the policy",
        i.name
    );
    let mut events = Vec::new();
    if !key_usage::is_true(&i.current.conditions, ENFORCEMENT_CONFLICT) {
        events.push(Note { type_: EventType::Warning, reason: "EnforcementConflict", note: m.clone() });
    }
    Decision {
        write: Write::Nothing,
        conditions: vec![
            Desired::new(ENFORCED, false, reason::ENFORCEMENT_CONFLICT, m.clone()),
            Desired::new(ENFORCEMENT_CONFLICT, true, "NotOwned", m),
        ],
        enforced_limit: None,
        events,
    }
}

/// Whether the stored object holds the render: the spec (⊆, see [`render::contains`]), Keyward's label and this
/// policy's controller reference. Server defaults are not a difference; a hand edit of a rendered field is.
pub fn up_to_date(observed: &Btp, want: &Value) -> bool {
    let labels = serde_json::to_value(&observed.metadata.labels).unwrap_or_default();
    let owners = serde_json::to_value(observed.metadata.owner_references.clone().unwrap_or_default());
    let owner_held = want["metadata"]["ownerReferences"].as_array().is_some_and(|w| {
        w.iter().all(|w| {
            owners.as_ref().ok().and_then(Value::as_array).is_some_and(|o| o.iter().any(|o| render::contains(o, w)))
        })
    });
    render::contains(&observed.spec, &want["spec"])
        && render::contains(&labels, &want["metadata"]["labels"])
        && owner_held
}

/// The decision after its write failed: `Enforced=False` with why, the limit shown kept as it was, no events.
pub fn failed(mut d: Decision, reason: &'static str, message: String, current: &RateLimitPolicyStatus) -> Decision {
    d.conditions.retain(|c| c.type_ != ENFORCED);
    d.conditions.insert(0, Desired::new(ENFORCED, false, reason, message));
    d.enforced_limit = current.enforced_limit.clone();
    d.events.clear();
    d
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
