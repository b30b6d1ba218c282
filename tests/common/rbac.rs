//! The RBAC the operator needs, as the chart must grant it: the rules of each API use, the grants of a rendered
//! (Cluster)Role exploded for an exact comparison, and `kubectl auth can-i` as the chart's ServiceAccount.

use std::collections::BTreeSet;

use serde_norway::Value;

use super::identity::{Identity, strings};

/// One RBAC rule: (apiGroups, resources, verbs, resourceNames).
pub type Rule = (&'static [&'static str], &'static [&'static str], &'static [&'static str], &'static [&'static str]);

/// The namespaced rules, one per API use in src/apikey, src/ratelimit and src/operator. The chart must grant exactly
/// these (as a ClusterRole in cluster scope, as a Role in each watched namespace otherwise).
pub const NAMESPACED_RULES: [Rule; 11] = [
    (&["keyward.dev"], &["apikeys"], &["get", "list", "watch"], &[]),
    (&["keyward.dev"], &["ratelimitpolicies"], &["list", "watch"], &[]),
    (&["keyward.dev"], &["apikeys/status", "ratelimitpolicies/status"], &["patch"], &[]),
    // `delete` only to revoke (an immutable Secret, another Secret of a revoked key); the chart's admission guard
    // limits every Secret write of the operator to Keyward's own Secrets.
    (&[""], &["secrets"], &["get", "list", "watch", "create", "update", "delete"], &[]),
    (&[""], &["configmaps"], &["get"], &[]),
    (&["discovery.k8s.io"], &["endpointslices"], &["list", "watch"], &[]),
    (&["apps"], &["deployments", "statefulsets", "daemonsets"], &["get", "patch"], &[]),
    (&["apps"], &["deployments/scale", "statefulsets/scale"], &["get", "patch"], &[]),
    (&["autoscaling"], &["horizontalpodautoscalers"], &["list"], &[]),
    (&["events.k8s.io"], &["events"], &["create"], &[]),
    // `spec.enforce` (src/ratelimit/enforce): the watch of Keyward's BackendTrafficPolicies, the read by name, the
    // server-side apply (`create` when it creates the object), the delete when enforce is removed.
    (
        &["gateway.envoyproxy.io"],
        &["backendtrafficpolicies"],
        &["get", "list", "watch", "create", "patch", "delete"],
        &[],
    ),
];

/// The one cluster-scoped read: the start-up check of the two CRDs, by name (`get` only: it reads each by name).
pub const CRD_RULES: [Rule; 3] = [
    (
        &["apiextensions.k8s.io"],
        &["customresourcedefinitions"],
        &["get"],
        &["apikeys.keyward.dev", "ratelimitpolicies.keyward.dev"],
    ),
    // `--metrics-auth` (on in the chart): TokenReview, then SubjectAccessReview (src/operator/metrics_auth.rs).
    (&["authentication.k8s.io"], &["tokenreviews"], &["create"], &[]),
    (&["authorization.k8s.io"], &["subjectaccessreviews"], &["create"], &[]),
];

/// Leader election, in the Lease's namespace: create (not limitable by name), the rest on the one Lease only.
pub const LEASE_RULES: [Rule; 2] = [
    (&["coordination.k8s.io"], &["leases"], &["create"], &[]),
    (&["coordination.k8s.io"], &["leases"], &["get", "list", "watch", "patch"], &["keyward-leader"]),
];

/// The seal key Secret, in the release namespace: create (not limitable by name), get of that one Secret.
pub const SEAL_RULES: [Rule; 2] =
    [(&[""], &["secrets"], &["create"], &[]), (&[""], &["secrets"], &["get"], &["keyward-seal"])];

/// A rule exploded into single grants: (group, resource, verb, name or "").
pub type Grant = (String, String, String, String);

pub fn expand(rules: &[Rule]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for (groups, resources, verbs, names) in rules {
        for g in *groups {
            for r in *resources {
                for v in *verbs {
                    if names.is_empty() {
                        out.insert((g.to_string(), r.to_string(), v.to_string(), String::new()));
                    }
                    for n in *names {
                        out.insert((g.to_string(), r.to_string(), v.to_string(), n.to_string()));
                    }
                }
            }
        }
    }
    out
}

/// The grants of a rendered (Cluster)Role; also checks no rule uses a wildcard or a non-resource URL.
pub fn grants(role: &Value) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_sequence().expect("rules") {
        assert!(rule.get("nonResourceURLs").is_none(), "unexpected nonResourceURLs in {rule:?}");
        let (groups, resources, verbs, names) = (
            strings(&rule["apiGroups"]),
            strings(&rule["resources"]),
            strings(&rule["verbs"]),
            strings(&rule["resourceNames"]),
        );
        for s in groups.iter().chain(&resources).chain(&verbs).chain(&names) {
            assert!(!s.contains('*'), "wildcard {s:?} in {rule:?}");
        }
        for g in &groups {
            for r in &resources {
                for v in &verbs {
                    if names.is_empty() {
                        out.insert((g.clone(), r.clone(), v.clone(), String::new()));
                    }
                    for n in &names {
                        out.insert((g.clone(), r.clone(), v.clone(), n.clone()));
                    }
                }
            }
        }
    }
    out
}

/// Asserts the grants are exactly `want`, naming the extra and the missing ones.
pub fn assert_grants(got: &BTreeSet<Grant>, want: &BTreeSet<Grant>, what: &str) {
    let extra: Vec<&Grant> = got.difference(want).collect();
    let missing: Vec<&Grant> = want.difference(got).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{what}: granted but not used: {extra:?}; used but not granted: {missing:?}"
    );
}

/// `kubectl auth can-i ARGS --as IDENTITY`.
pub fn can_i(id: &Identity, args: &[&str]) -> bool {
    let user = id.user();
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--as", &user]);
    let out = super::kubectl(&all);
    let answer = String::from_utf8_lossy(&out.stdout);
    match answer.split_whitespace().next() {
        Some("yes") => true,
        Some("no") => false,
        _ => panic!("kubectl {}: {answer}{}", all.join(" "), String::from_utf8_lossy(&out.stderr)),
    }
}

/// Checks every (expected answer, can-i arguments) and reports all the wrong answers at once.
pub fn check_can_i(id: &Identity, cases: &[(bool, Vec<&str>)]) {
    let wrong: Vec<String> = cases
        .iter()
        .filter(|(want, args)| can_i(id, args) != *want)
        .map(|(want, args)| format!("can-i {} should be {}", args.join(" "), if *want { "yes" } else { "no" }))
        .collect();
    assert!(wrong.is_empty(), "RBAC of {}:\n{}", id.user(), wrong.join("\n"));
}
