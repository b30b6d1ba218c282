//! Standard `metav1.Condition` bookkeeping shared by the controllers: a condition's `lastTransitionTime` changes
//! only when its status flips, so re-running a reconcile on the same world produces the same status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition as a controller wants it, before timestamps are settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    /// `True` or `False`; ignored when `unknown`.
    pub status: bool,
    /// Status `Unknown`: the controller cannot tell (e.g. its input has been unavailable too long).
    pub unknown: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Desired {
    /// A condition of `type_` with the given status, reason and message.
    pub fn new(type_: &'static str, status: bool, reason: &'static str, message: impl Into<String>) -> Self {
        Self { type_, status, unknown: false, reason, message: message.into() }
    }

    /// A condition of `type_` with status `Unknown`, and the reason and message that say why.
    pub fn unknown(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self { type_, status: false, unknown: true, reason, message: message.into() }
    }
}

/// Merges `desired` into `existing`: conditions of other types are kept, a condition whose status is unchanged
/// keeps its `lastTransitionTime`, and a new or flipped one gets `now`.
pub fn merge(
    existing: &[Condition],
    desired: &[Desired],
    generation: Option<i64>,
    now: jiff::Timestamp,
) -> Vec<Condition> {
    let mut out: Vec<Condition> =
        existing.iter().filter(|c| !desired.iter().any(|d| d.type_ == c.type_)).cloned().collect();
    for d in desired {
        let status = match (d.unknown, d.status) {
            (true, _) => "Unknown",
            (false, true) => "True",
            (false, false) => "False",
        };
        let last_transition_time = existing
            .iter()
            .find(|c| c.type_ == d.type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        out.push(Condition {
            type_: d.type_.to_string(),
            status: status.to_string(),
            reason: d.reason.to_string(),
            message: d.message.clone(),
            observed_generation: generation,
            last_transition_time,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn transition_time_changes_only_on_flip() {
        let t0 = ts("2026-01-01T00:00:00Z");
        let t1 = ts("2026-01-02T00:00:00Z");
        let first = merge(&[], &[Desired::new("Ready", true, "KeyIssued", "ok")], Some(1), t0);
        let same = merge(&first, &[Desired::new("Ready", true, "KeyIssued", "ok again")], Some(2), t1);
        assert_eq!(same[0].last_transition_time, Time(t0));
        assert_eq!(same[0].message, "ok again");
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = merge(&same, &[Desired::new("Ready", false, "Suspended", "off")], Some(2), t1);
        assert_eq!(flipped[0].last_transition_time, Time(t1));
        assert_eq!(flipped[0].status, "False");
    }

    #[test]
    fn other_conditions_are_kept() {
        let t0 = ts("2026-01-01T00:00:00Z");
        let both = merge(
            &[],
            &[Desired::new("Ready", true, "KeyIssued", ""), Desired::new("NearLimit", false, "BelowThreshold", "")],
            None,
            t0,
        );
        let ready_only = merge(&both, &[Desired::new("Ready", false, "Expired", "")], None, t0);
        assert_eq!(ready_only.len(), 2);
        assert!(ready_only.iter().any(|c| c.type_ == "NearLimit"));
    }
}
