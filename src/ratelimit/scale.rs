//! The scale target: resolved through discovery, read and written through its scale subresource, and checked for a
//! HorizontalPodAutoscaler that already scales it.

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;

use crate::api::ratelimit::ScaleTargetRef;

/// Why the target cannot be scaled.
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    #[error("scaling.targetRef: the API server does not serve kind {kind} in {api_version}: {detail}")]
    UnknownKind { api_version: String, kind: String, detail: String },
    #[error("scaling.targetRef: {kind} ({api_version}) has no scale subresource, so it cannot be scaled")]
    NoScaleSubresource { api_version: String, kind: String },
    #[error(
        "scaling.targetRef: {kind} ({api_version}) is cluster-scoped; the target must be in the policy's namespace"
    )]
    ClusterScoped { api_version: String, kind: String },
    #[error("scaling.targetRef: {kind} {ns}/{name} does not exist")]
    NotFound { kind: String, ns: String, name: String },
    #[error("{op} the scale of {kind} {ns}/{name}: {}", crate::runtime::describe(source))]
    Api { op: &'static str, kind: String, ns: String, name: String, source: kube::Error },
}

impl ScaleError {
    /// PascalCase reason for the `ScalingActive` condition.
    pub fn reason(&self) -> &'static str {
        match self {
            ScaleError::UnknownKind { .. }
            | ScaleError::NoScaleSubresource { .. }
            | ScaleError::ClusterScoped { .. } => "InvalidTarget",
            ScaleError::NotFound { .. } => "TargetNotFound",
            ScaleError::Api { .. } => "ScaleFailed",
        }
    }

    /// Whether the cached discovery result may be stale (the kind might appear later, e.g. a CRD installed after).
    pub fn invalidates_discovery(&self) -> bool {
        matches!(self, ScaleError::UnknownKind { .. } | ScaleError::NotFound { .. })
    }
}

/// Splits `apps/v1` into (`apps`, `v1`) and `v1` into (``, `v1`).
pub fn group_version(api_version: &str) -> (&str, &str) {
    api_version.split_once('/').unwrap_or(("", api_version))
}

/// Finds the resource behind `target` and checks it has a namespaced scale subresource.
pub async fn resolve(client: &kube::Client, target: &ScaleTargetRef) -> Result<ApiResource, ScaleError> {
    let (group, version) = group_version(&target.api_version);
    let gvk = GroupVersionKind::gvk(group, version, &target.kind);
    let (ar, caps) = kube::discovery::pinned_kind(client, &gvk).await.map_err(|e| ScaleError::UnknownKind {
        api_version: target.api_version.clone(),
        kind: target.kind.clone(),
        detail: e.to_string(),
    })?;
    if !caps.subresources.iter().any(|(sub, _)| sub.plural == "scale" || sub.plural.ends_with("/scale")) {
        return Err(ScaleError::NoScaleSubresource {
            api_version: target.api_version.clone(),
            kind: target.kind.clone(),
        });
    }
    if caps.scope != Scope::Namespaced {
        return Err(ScaleError::ClusterScoped { api_version: target.api_version.clone(), kind: target.kind.clone() });
    }
    Ok(ar)
}

/// The target's desired replicas (`spec.replicas` of its scale; a missing value counts as 0).
pub async fn read(client: &kube::Client, ar: &ApiResource, ns: &str, name: &str) -> Result<i32, ScaleError> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
    match api.get_scale(name).await {
        Ok(scale) => Ok(scale.spec.and_then(|s| s.replicas).unwrap_or(0)),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            Err(ScaleError::NotFound { kind: ar.kind.clone(), ns: ns.to_string(), name: name.to_string() })
        }
        Err(source) => {
            Err(ScaleError::Api { op: "read", kind: ar.kind.clone(), ns: ns.into(), name: name.into(), source })
        }
    }
}

/// Sets the target's replicas through its scale subresource.
pub async fn write(
    client: &kube::Client,
    ar: &ApiResource,
    ns: &str,
    name: &str,
    replicas: i32,
) -> Result<(), ScaleError> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
    let patch = serde_json::json!({ "spec": { "replicas": replicas } });
    let pp = PatchParams { field_manager: Some(super::MANAGER.into()), ..Default::default() };
    crate::runtime::within_timeout(api.patch_scale(name, &pp, &Patch::Merge(&patch))).await.map(|_| ()).map_err(
        |source| ScaleError::Api { op: "write", kind: ar.kind.clone(), ns: ns.into(), name: name.into(), source },
    )
}

/// The name of a HorizontalPodAutoscaler in `ns` that targets the same object, if any.
pub async fn competing_hpa(
    client: &kube::Client,
    ns: &str,
    target: &ScaleTargetRef,
) -> Result<Option<String>, kube::Error> {
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    let list = api.list(&ListParams::default()).await?;
    Ok(list.items.into_iter().find(|h| targets(h, target)).and_then(|h| h.metadata.name))
}

/// Whether `hpa` scales `target`: same kind and name, and the same API group when the HPA names one.
pub fn targets(hpa: &HorizontalPodAutoscaler, target: &ScaleTargetRef) -> bool {
    let Some(r) = hpa.spec.as_ref().map(|s| &s.scale_target_ref) else { return false };
    let same_group = match r.api_version.as_deref() {
        Some(v) => group_version(v).0 == group_version(&target.api_version).0,
        None => true,
    };
    r.kind == target.kind && r.name == target.name && same_group
}

/// The name of another RateLimitPolicy of the same namespace that scales the same target and wins over `policy`:
/// the oldest one (then the first by name) keeps scaling, every later one holds. Deleted ones do not count.
pub fn competing_policy(
    policies: &[std::sync::Arc<crate::api::ratelimit::RateLimitPolicy>],
    policy: &crate::api::ratelimit::RateLimitPolicy,
) -> Option<String> {
    use kube::ResourceExt;
    let mine = policy.spec.scaling.as_ref().map(|s| &s.target_ref)?;
    let rank = |p: &crate::api::ratelimit::RateLimitPolicy| {
        (p.metadata.creation_timestamp.as_ref().map(|t| t.0), p.name_any())
    };
    policies
        .iter()
        .filter(|p| p.namespace() == policy.namespace() && p.name_any() != policy.name_any())
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.spec.scaling.as_ref().is_some_and(|s| same_target(&s.target_ref, mine)))
        .filter(|p| rank(p) < rank(policy))
        .min_by_key(|p| rank(p))
        .map(|p| p.name_any())
}

/// Whether two target references name the same object: same kind and name, same API group.
fn same_target(a: &ScaleTargetRef, b: &ScaleTargetRef) -> bool {
    a.kind == b.kind && a.name == b.name && group_version(&a.api_version).0 == group_version(&b.api_version).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::autoscaling::v2::{CrossVersionObjectReference, HorizontalPodAutoscalerSpec};

    fn hpa(api_version: Option<&str>, kind: &str, name: &str) -> HorizontalPodAutoscaler {
        HorizontalPodAutoscaler {
            spec: Some(HorizontalPodAutoscalerSpec {
                scale_target_ref: CrossVersionObjectReference {
                    api_version: api_version.map(str::to_string),
                    kind: kind.into(),
                    name: name.into(),
                },
                max_replicas: 3,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn target(api_version: &str, kind: &str, name: &str) -> ScaleTargetRef {
        ScaleTargetRef { api_version: api_version.into(), kind: kind.into(), name: name.into() }
    }

    fn policy(name: &str, created: i64, t: ScaleTargetRef) -> std::sync::Arc<crate::api::ratelimit::RateLimitPolicy> {
        let mut p: crate::api::ratelimit::RateLimitPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "keyward.dev/v1alpha1", "kind": "RateLimitPolicy",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"limit": {"requests": 10, "period": "1m"},
                     "scaling": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
                                 "maxReplicas": 3, "capacityPerReplica": {"requests": 10, "period": "1s"}}}
        }))
        .expect("policy");
        p.spec.scaling.as_mut().expect("scaling").target_ref = t;
        p.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::from_second(1_800_000_000 + created).expect("t"),
        ));
        std::sync::Arc::new(p)
    }

    #[test]
    fn the_oldest_policy_on_a_target_keeps_it_and_later_ones_hold() {
        let gw = target("apps/v1", "Deployment", "gw");
        let (a, b, c) = (policy("a", 0, gw.clone()), policy("b", 5, gw.clone()), policy("c", 9, gw.clone()));
        let other = policy("d", -5, target("apps/v1", "Deployment", "other"));
        let all = vec![a.clone(), b.clone(), c.clone(), other];
        assert_eq!(competing_policy(&all, &a), None, "the oldest scales");
        assert_eq!(competing_policy(&all, &b).as_deref(), Some("a"));
        assert_eq!(competing_policy(&all, &c).as_deref(), Some("a"));
        let same_age = policy("aa", 0, gw.clone());
        assert_eq!(competing_policy(&[a.clone(), same_age.clone()], &same_age).as_deref(), Some("a"), "then by name");
        let other_group = policy("e", 9, target("example.com/v1", "Deployment", "gw"));
        assert_eq!(competing_policy(&all, &other_group), None, "another API group is another object");
    }

    #[test]
    fn group_and_version_are_split() {
        assert_eq!(group_version("apps/v1"), ("apps", "v1"));
        assert_eq!(group_version("v1"), ("", "v1"));
    }

    #[test]
    fn an_hpa_on_the_same_object_is_found() {
        let t = target("apps/v1", "Deployment", "gw");
        assert!(targets(&hpa(Some("apps/v1"), "Deployment", "gw"), &t));
        assert!(targets(&hpa(Some("apps/v1beta2"), "Deployment", "gw"), &t), "another version of the group");
        assert!(targets(&hpa(None, "Deployment", "gw"), &t));
        assert!(!targets(&hpa(Some("apps/v1"), "Deployment", "other"), &t));
        assert!(!targets(&hpa(Some("apps/v1"), "StatefulSet", "gw"), &t));
        assert!(!targets(&hpa(Some("example.com/v1"), "Deployment", "gw"), &t));
        assert!(!targets(&HorizontalPodAutoscaler::default(), &t));
    }
}
