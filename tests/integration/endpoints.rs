//! `usage.scrape.service`: the gateway's metrics endpoints follow its Service's EndpointSlices (hand-made: the test
//! control plane runs no kubelet), each endpoint a stand-in pod in a network namespace of its own. Two endpoints,
//! then three, then one removed, and a counter reset on another: the summed rate stays right, the new endpoint
//! counts from its second poll, a removed one is not a reset, and the gateway's replicas follow the total.

use std::time::Duration;

use keyward::devenv::traffic::TrafficSim;

use crate::common::kube::{apikey, apply, eventually, get_json, is};
use crate::common::netns::PodNet;
use crate::common::ratelimit::{METRIC, policy, replicas, workload};
use crate::common::{control_plane_with_crds, namespace, operator};

/// A stand-in gateway pod: its namespace and the exporter it serves on port 9100.
struct Pod {
    net: PodNet,
    sim: TrafficSim,
}

fn pod() -> Pod {
    let net = PodNet::create();
    let sim = TrafficSim::serve_std(net.listen(9100), METRIC, "api_key").expect("exporter");
    Pod { net, sim }
}

/// The Service `gw`'s one EndpointSlice, listing `pods` as ready endpoints of port `metrics` (9100).
fn endpoints(ns: &str, pods: &[&Pod]) {
    let list: Vec<String> =
        pods.iter().map(|p| format!("- {{addresses: [\"{}\"], conditions: {{ready: true}}}}", p.net.addr)).collect();
    let yaml = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: gw-1\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: gw}}\naddressType: IPv4\nports: [{{name: metrics, port: 9100, protocol: TCP}}]\nendpoints:{}\n",
        if list.is_empty() { " []".to_string() } else { format!("\n{}", list.join("\n")) }
    );
    apply(ns, &yaml);
}

/// The policy's observed usage, once it is within `range`.
async fn usage_in(ns: &str, range: std::ops::RangeInclusive<f64>, what: &str) -> f64 {
    let p = eventually(60, what, || {
        get_json(ns, "ratelimitpolicy/tier")
            .filter(|p| p["status"]["observedUsage"].as_f64().is_some_and(|u| range.contains(&u)))
    })
    .await;
    p["status"]["observedUsage"].as_f64().expect("observedUsage")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_endpoints_are_followed_as_the_gateway_scales() {
    control_plane_with_crds().await;
    let ns = namespace("usage_endpoints");
    let _op = operator::scoped(&ns);
    let (a, b, c) = (pod(), pod(), pod());
    for p in [&a, &b, &c] {
        p.sim.set_rate("k", 2.0);
    }
    apply(&ns, "apiVersion: v1\nkind: Service\nmetadata: {name: gw}\nspec: {ports: [{name: metrics, port: 9100}]}\n");
    endpoints(&ns, &[&a, &b]);
    apply(&ns, &workload("Deployment", "gateway", Some(1)));
    apply(
        &ns,
        &policy(
            "tier",
            &format!(
                "  limit: {{requests: 6000, period: 1m}}\n  usage:\n    interval: 1s\n    scrape: {{service: {{name: gw, port: metrics}}, metric: {METRIC}}}\n  scaling:\n    targetRef: {{apiVersion: apps/v1, kind: Deployment, name: gateway}}\n    maxReplicas: 10\n    capacityPerReplica: {{requests: 1, period: 1s}}\n    targetUtilization: 100\n    scaleDown: {{stabilizationWindow: 0s}}"
            ),
        ),
    );
    apply(&ns, &apikey("k", "  rateLimitPolicyRef: {name: tier}"));
    // Two endpoints at 2 req/s each.
    usage_in(&ns, 3.5..=4.5, "4 req/s from two endpoints").await;
    eventually(60, "4 replicas", || (replicas(&ns, "deployment/gateway") == Some(4)).then_some(())).await;
    // Scale-out: a third endpoint, read from its second poll on; the sum never jumps past the traffic.
    endpoints(&ns, &[&a, &b, &c]);
    usage_in(&ns, 5.5..=6.5, "6 req/s from three endpoints").await;
    eventually(60, "6 replicas", || (replicas(&ns, "deployment/gateway") == Some(6)).then_some(())).await;
    // One endpoint goes away (not a counter reset), another restarts its counters: 4 req/s again.
    endpoints(&ns, &[&b, &c]);
    b.sim.reset_counter("k");
    let after = usage_in(&ns, 3.5..=4.5, "4 req/s after a removal and a reset").await;
    assert!(after > 0.0);
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let u = get_json(&ns, "ratelimitpolicy/tier").expect("policy")["status"]["observedUsage"].as_f64();
        assert!(u.is_some_and(|u| (3.0..=5.0).contains(&u)), "no spike or drop: {u:?}");
    }
    eventually(60, "4 replicas again", || (replicas(&ns, "deployment/gateway") == Some(4)).then_some(())).await;
    // No ready endpoint at all: a clear condition, the replicas held.
    endpoints(&ns, &[]);
    eventually(60, "no endpoints", || {
        get_json(&ns, "ratelimitpolicy/tier").filter(|p| is(p, "UsageAvailable", "False"))
    })
    .await;
    let p = get_json(&ns, "ratelimitpolicy/tier").expect("policy");
    let (_, reason, message) = crate::common::kube::condition(&p, "UsageAvailable").expect("condition");
    assert_eq!(reason, "NoReadyEndpoints", "{message}");
    assert_eq!(replicas(&ns, "deployment/gateway"), Some(4), "missing data never scales down");
}
