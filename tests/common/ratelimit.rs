//! What the rate-limit tests share: the simulated gateway (its metric, started on a free port), RateLimitPolicy
//! manifests, and the workloads a policy scales (or a key's rotation restarts), with the HorizontalPodAutoscaler that
//! can claim one.

use keyward::devenv::traffic::TrafficSim;

/// The request counter the simulated gateway exports, labelled by `api_key`.
pub const METRIC: &str = "gateway_requests_total";

/// A simulated gateway on 127.0.0.1 (free port) exporting [`METRIC`] by `api_key`; the test sets its traffic.
pub async fn gateway_sim() -> TrafficSim {
    TrafficSim::start("127.0.0.1:0", METRIC, "api_key").await.expect("traffic simulator")
}

/// A RateLimitPolicy manifest with the given (indented) spec lines.
pub fn policy(name: &str, spec: &str) -> String {
    super::kube::manifest("RateLimitPolicy", name, spec)
}

/// A Deployment, StatefulSet or DaemonSet manifest (`replicas` None for a DaemonSet) of one container. No pod runs:
/// the test control plane has no nodes; what counts is the workload object and its scale subresource.
pub fn workload(kind: &str, name: &str, replicas: Option<i32>) -> String {
    let replicas = replicas.map(|r| format!("  replicas: {r}\n")).unwrap_or_default();
    let service = if kind == "StatefulSet" { format!("  serviceName: {name}\n") } else { String::new() };
    format!(
        "apiVersion: apps/v1\nkind: {kind}\nmetadata:\n  name: {name}\nspec:\n{replicas}{service}  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n      containers:\n      - name: c\n        image: registry.invalid/{name}:1\n"
    )
}

/// A HorizontalPodAutoscaler named `deployment` on that Deployment (2 to 4 replicas by CPU): a scaling conflict for
/// a RateLimitPolicy that targets it.
pub fn hpa(deployment: &str) -> String {
    format!(
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: {deployment}\nspec:\n  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: {deployment}}}\n  minReplicas: 2\n  maxReplicas: 4\n  metrics:\n  - type: Resource\n    resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 50}}}}\n"
    )
}

/// `spec.replicas` of a workload (`deployment/NAME`, `statefulset/NAME`), or None if it does not exist.
pub fn replicas(ns: &str, what: &str) -> Option<i64> {
    super::kube::get_json(ns, what)?["spec"]["replicas"].as_i64()
}
