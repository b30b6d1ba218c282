//! Rollout restarts of the workloads that consume a key: after a rotation each listed Deployment, StatefulSet or
//! DaemonSet gets the pod-template annotation `keyward.dev/restartedAt` set to the rotation time. The value is the
//! Secret's `rotated-at`, so the restart is idempotent (a crash before it is healed by the next reconcile) and a
//! burst of rotations within [`DEBOUNCE`] collapses into one restart of the latest key.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::api::{Api, Patch, PatchParams};

use crate::api::apikey::{RolloutKind, RolloutTarget};

/// Pod-template annotation Keyward sets.
pub const RESTARTED_AT: &str = "keyward.dev/restartedAt";

/// Quiet time after a rotation before consumers are restarted.
pub const DEBOUNCE: Duration = Duration::from_secs(10);

/// What to do about one target, pure.
#[derive(Debug, PartialEq, Eq)]
pub enum RestartPlan {
    /// Already restarted for this rotation (or the first key, which needs no restart).
    UpToDate,
    /// Restart now.
    Restart,
    /// Wait until this moment, in case another rotation follows.
    WaitUntil(Timestamp),
}

/// Decides whether a target needs a restart for the key issued at `rotated_at`.
pub fn plan(current: Option<&str>, rotated_at: Timestamp, rotation_count: i64, now: Timestamp) -> RestartPlan {
    let wanted = rotated_at.to_string();
    if current == Some(wanted.as_str()) || (current.is_none() && rotation_count == 0) {
        return RestartPlan::UpToDate;
    }
    let ready_at = rotated_at.checked_add(SignedDuration::from_secs(DEBOUNCE.as_secs() as i64)).unwrap_or(rotated_at);
    if now >= ready_at { RestartPlan::Restart } else { RestartPlan::WaitUntil(ready_at) }
}

/// The pod-template annotation of a target, or `Ok(None)` when the target does not exist (`Err` for other
/// failures); `Some(None)` inside means it exists without the annotation.
pub async fn current(
    client: &kube::Client,
    ns: &str,
    t: &RolloutTarget,
) -> Result<Option<Option<String>>, kube::Error> {
    fn annotation(tpl: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>) -> Option<String> {
        tpl.and_then(|m| m.annotations.as_ref()).and_then(|a| a.get(RESTARTED_AT).cloned())
    }
    Ok(match t.kind {
        RolloutKind::Deployment => Api::<Deployment>::namespaced(client.clone(), ns)
            .get_opt(&t.name)
            .await?
            .map(|d| annotation(d.spec.as_ref().and_then(|s| s.template.metadata.as_ref()))),
        RolloutKind::StatefulSet => Api::<StatefulSet>::namespaced(client.clone(), ns)
            .get_opt(&t.name)
            .await?
            .map(|d| annotation(d.spec.as_ref().and_then(|s| s.template.metadata.as_ref()))),
        RolloutKind::DaemonSet => Api::<DaemonSet>::namespaced(client.clone(), ns)
            .get_opt(&t.name)
            .await?
            .map(|d| annotation(d.spec.as_ref().and_then(|s| s.template.metadata.as_ref()))),
    })
}

/// Sets the annotation with a merge patch (the same write `kubectl rollout restart` makes).
pub async fn restart(client: &kube::Client, ns: &str, t: &RolloutTarget, value: &str) -> Result<(), kube::Error> {
    let patch = serde_json::json!({
        "spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: value}}}}
    });
    let pp = PatchParams { field_manager: Some(super::MANAGER.into()), ..Default::default() };
    let p = Patch::Merge(&patch);
    match t.kind {
        RolloutKind::Deployment => {
            Api::<Deployment>::namespaced(client.clone(), ns).patch(&t.name, &pp, &p).await?;
        }
        RolloutKind::StatefulSet => {
            Api::<StatefulSet>::namespaced(client.clone(), ns).patch(&t.name, &pp, &p).await?;
        }
        RolloutKind::DaemonSet => {
            Api::<DaemonSet>::namespaced(client.clone(), ns).patch(&t.name, &pp, &p).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("ts")
    }

    #[test]
    fn debounced_and_idempotent() {
        let at = ts("2026-01-01T00:00:00Z");
        assert_eq!(plan(None, at, 0, at), RestartPlan::UpToDate, "the first key needs no restart");
        assert_eq!(plan(Some(&at.to_string()), at, 3, ts("2026-01-01T01:00:00Z")), RestartPlan::UpToDate);
        assert_eq!(plan(Some("2025-12-01T00:00:00Z"), at, 3, at), RestartPlan::WaitUntil(ts("2026-01-01T00:00:10Z")));
        assert_eq!(plan(None, at, 1, ts("2026-01-01T00:00:09Z")), RestartPlan::WaitUntil(ts("2026-01-01T00:00:10Z")));
        assert_eq!(plan(None, at, 1, ts("2026-01-01T00:00:10Z")), RestartPlan::Restart);
    }
}
