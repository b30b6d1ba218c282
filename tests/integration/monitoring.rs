//! The monitoring that ships with the chart (docs/monitoring.md). The alerts (`files/monitoring/rules.yaml`,
//! rendered by helm as a PrometheusRule) pass `promtool check rules`, and `promtool test rules` runs the unit tests in
//! `tests/monitoring/alerts_test.yaml`, which fire and resolve each alert on synthetic series. The dashboard ships
//! in a ConfigMap labelled for the Grafana sidecar. Then, against a real Prometheus scraping a running
//! `keyward run`, every dashboard query and every alert expression parses, and each that should have data has it.
//! Prometheus and promtool are built from their Go module (`tests/prometheus`) and cached, like helm.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;

use crate::common::identity::{only, parse_documents, template};
use crate::common::kube::{apikey, apply};
use crate::common::operator;
use crate::common::prometheus::{Prometheus, Sample, promtool};
use crate::common::ratelimit::{gateway_sim, hpa, policy, workload};
use crate::common::{control_plane_with_crds, kubectl_ok, namespace};

/// The release the tests render: its fullname is "keyward", so the rules select `job="keyward"`.
const RELEASE: &str = "keyward";

/// Every alert the chart ships: those the issue lists, and a key regenerated or expiring soon, a gateway near its
/// capacity or below the replicas Keyward wants.
const ALERTS: [&str; 13] = [
    "KeywardOperatorDown",
    "KeywardNoLeader",
    "KeywardReconcileErrors",
    "KeywardApiKeyRotationOverdue",
    "KeywardApiKeyRegenerated",
    "KeywardApiKeyNotReady",
    "KeywardApiKeyExpiresSoon",
    "KeywardApiKeyNearLimit",
    "KeywardApiKeyExhausted",
    "KeywardUsageSourceDown",
    "KeywardGatewayNearCapacity",
    "KeywardGatewayNotScaled",
    "KeywardScalingConflict",
];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The PrometheusRule's `spec` (a Prometheus rules file) as the chart renders it with `args`.
fn rendered_rules(release: &str, args: &[&str]) -> Value {
    let mut all = vec!["--set", "monitoring.rules.enabled=true"];
    all.extend_from_slice(args);
    let objects = template(release, "keyward-system", &all);
    serde_json::to_value(only(&objects, "PrometheusRule")).expect("PrometheusRule as JSON")["spec"].clone()
}

/// (alert name, expression) of every rule.
fn alert_exprs(rules: &Value) -> Vec<(String, String)> {
    let groups = rules["groups"].as_array().expect("groups");
    groups
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").iter())
        .map(|r| (r["alert"].as_str().expect("alert").to_string(), r["expr"].as_str().expect("expr").to_string()))
        .collect()
}

/// Runs promtool with `args` in `dir`; (success, stdout and stderr).
fn run_promtool(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(promtool()).args(args).current_dir(dir).output().expect("run promtool");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A temporary directory holding the rendered rules as rules.yaml (JSON is YAML) and the unit tests `tests`.
fn rules_dir(rules: &Value, tests: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("rules-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    std::fs::write(dir.path().join("rules.yaml"), serde_json::to_string_pretty(rules).expect("rules"))
        .expect("write rules.yaml");
    std::fs::write(dir.path().join("alerts_test.yaml"), tests).expect("write alerts_test.yaml");
    dir
}

/// "20m", "80h", "90s" in seconds.
fn seconds(d: &str) -> u64 {
    let (n, unit) = d.split_at(d.find(|c: char| !c.is_ascii_digit()).expect("a unit"));
    let n: u64 = n.parse().expect("a number");
    n * match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        other => panic!("unit {other}"),
    }
}

/// For each alert of the unit tests: the times it is expected firing, and not.
fn unit_test_evaluations(tests: &str) -> BTreeMap<String, (Vec<u64>, Vec<u64>)> {
    let doc = serde_json::to_value(&parse_documents(tests)[0]).expect("unit tests as JSON");
    let mut seen: BTreeMap<String, (Vec<u64>, Vec<u64>)> = BTreeMap::new();
    for case in doc["tests"].as_array().expect("tests") {
        for eval in case["alert_rule_test"].as_array().expect("alert_rule_test") {
            let entry = seen.entry(eval["alertname"].as_str().expect("alertname").to_string()).or_default();
            let at = seconds(eval["eval_time"].as_str().expect("eval_time"));
            let firing = eval["exp_alerts"].as_array().is_some_and(|a| !a.is_empty());
            if firing { entry.0.push(at) } else { entry.1.push(at) }
        }
    }
    seen
}

#[test]
fn the_alerts_pass_promtool_check_and_unit_tests_that_fire_and_resolve_each() {
    let rules = rendered_rules(RELEASE, &[]);
    let alerts = alert_exprs(&rules);
    let names: BTreeSet<&str> = alerts.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(names, ALERTS.into_iter().collect(), "the alerts the chart ships");
    for (alert, expr) in &alerts {
        assert!(expr.contains(r#"job="keyward""#), "{alert} selects the operator's job: {expr}");
    }
    let tests = std::fs::read_to_string(repo("tests/monitoring/alerts_test.yaml")).expect("alerts_test.yaml");
    let dir = rules_dir(&rules, &tests);

    let (ok, out) = run_promtool(dir.path(), &["check", "rules", "rules.yaml"]);
    assert!(ok && out.contains(&format!("SUCCESS: {} rules found", ALERTS.len())), "promtool check rules:\n{out}");
    let (ok, out) = run_promtool(dir.path(), &["test", "rules", "alerts_test.yaml"]);
    assert!(ok, "promtool test rules:\n{out}");
    eprintln!("promtool check rules and test rules: {}", out.trim().replace('\n', " "));

    // Every alert is seen firing, then resolved (or quiet before it fires and after).
    let evaluations = unit_test_evaluations(&tests);
    for alert in ALERTS {
        let (firing, quiet) = evaluations.get(alert).unwrap_or_else(|| panic!("no unit test of {alert}"));
        let first = firing.iter().min().unwrap_or_else(|| panic!("{alert} never fires in the unit tests"));
        assert!(quiet.iter().any(|t| t > first), "{alert} is never seen resolved after firing");
    }

    // The unit tests compare what fires, labels and annotations included: a wrong expectation fails them.
    let broken = tests.replacen("exp_labels: {severity: critical}", "exp_labels: {severity: page}", 1);
    assert_ne!(broken, tests);
    let dir = rules_dir(&rules, &broken);
    let (ok, out) = run_promtool(dir.path(), &["test", "rules", "alerts_test.yaml"]);
    assert!(!ok && out.contains("FAILED"), "a wrong expectation passed:\n{out}");
}

#[test]
fn the_rules_follow_the_release_name_and_the_selector_value() {
    // Another release: the job a ServiceMonitor gives its Service is the fullname.
    for (_, expr) in alert_exprs(&rendered_rules("kw", &[])) {
        assert!(expr.contains(r#"job="kw-keyward""#) && !expr.contains(r#"job="keyward""#), "{expr}");
    }
    let set = r#"monitoring.rules.selector=service="keyward-metrics""#;
    for (_, expr) in alert_exprs(&rendered_rules("kw", &["--set-string", set])) {
        assert!(expr.contains(r#"service="keyward-metrics""#) && !expr.contains("job="), "{expr}");
    }
    let objects = template(
        "kw",
        "keyward-system",
        &[
            "--set",
            "monitoring.rules.enabled=true,monitoring.rules.namespace=monitoring,monitoring.rules.labels.release=prom",
        ],
    );
    let rule = serde_json::to_value(only(&objects, "PrometheusRule")).expect("json");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["namespace"], "monitoring");
    assert_eq!(rule["metadata"]["labels"]["release"], "prom");
    assert_eq!(rule["metadata"]["labels"]["app.kubernetes.io/name"], "keyward");
    // Off by default.
    let objects = template("kw", "keyward-system", &[]);
    let kinds: Vec<Value> = objects.iter().map(|o| serde_json::to_value(o).expect("json")["kind"].clone()).collect();
    assert!(!kinds.iter().any(|k| k == "PrometheusRule"), "{kinds:?}");
}

/// The dashboard as the repository holds it.
fn dashboard() -> (String, Value) {
    let text = std::fs::read_to_string(repo("charts/keyward/files/monitoring/dashboard.json")).expect("dashboard.json");
    let json = serde_json::from_str(&text).expect("dashboard.json is JSON");
    (text, json)
}

/// Every query of the dashboard: (panel title and refId, PromQL), row panels' children included.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &[Value], out: &mut Vec<(String, String)>) {
        for p in panels {
            for t in p["targets"].as_array().into_iter().flatten() {
                let what = format!("{} ({})", p["title"].as_str().unwrap_or("?"), t["refId"].as_str().unwrap_or("?"));
                out.push((what, t["expr"].as_str().expect("a target with expr").to_string()));
            }
            walk(p["panels"].as_array().map(Vec::as_slice).unwrap_or_default(), out);
        }
    }
    let mut out = Vec::new();
    walk(dashboard["panels"].as_array().expect("panels"), &mut out);
    out
}

#[test]
fn the_dashboard_ships_in_a_configmap_for_the_grafana_sidecar() {
    let (text, json) = dashboard();
    assert_eq!(json["uid"], "keyward");
    let titles: BTreeSet<&str> =
        json["panels"].as_array().expect("panels").iter().filter_map(|p| p["title"].as_str()).collect();
    for wanted in [
        "Keys by state",
        "Rotations",
        "Time to next rotation",
        "Utilization per key",
        "Utilization per policy",
        "Desired vs current replicas",
        "Usage source errors",
        "Reconcile latency",
    ] {
        assert!(titles.contains(wanted), "no panel {wanted:?} in {titles:?}");
    }
    assert!(dashboard_queries(&json).len() >= 15);

    let objects = template(RELEASE, "keyward-system", &["--set", "monitoring.dashboard.enabled=true"]);
    let cm = objects
        .iter()
        .map(|o| serde_json::to_value(o).expect("json"))
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "keyward-dashboard")
        .expect("the dashboard ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(cm["metadata"]["namespace"], "keyward-system");
    assert_eq!(cm["data"]["keyward.json"].as_str().map(str::trim_end), Some(text.trim_end()), "the file as it is");
    let objects = template(RELEASE, "keyward-system", &[]);
    assert!(!objects.iter().any(|o| serde_json::to_value(o).expect("json")["kind"] == "ConfigMap"));
}

/// A dashboard query as Grafana would send it for job "keyward", the keys of namespace `ns`, and a 1-minute rate
/// interval.
fn as_grafana_sends(expr: &str, ns: &str) -> String {
    expr.replace("$__rate_interval", "1m").replace("$job", "keyward").replace("$namespace", ns)
}

/// The selector inside a `label_values(SELECTOR, LABEL)` variable query, and the label.
fn label_values(query: &str) -> (String, String) {
    let inner = query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')).expect("label_values(…)");
    let (selector, label) = inner.rsplit_once(',').expect("selector, label");
    (selector.trim().to_string(), label.trim().to_string())
}

/// Queries that may rightly return nothing here, and why; every other one must return data.
const MAY_BE_EMPTY: [(&str, &str); 6] = [
    ("Reconciles (B)", "reconcile errors: no reconcile fails in this test"),
    ("KeywardOperatorDown", "the operator is up: absent(up == 1) is empty"),
    ("KeywardNoLeader", "the operator leads: sum(keyward_leader) is 1"),
    ("KeywardReconcileErrors", "no reconcile fails in this test"),
    ("KeywardApiKeyRotationOverdue", "rotations are 30 days away: none is overdue"),
    ("KeywardGatewayNotScaled", "Keyward's scale writes land at once on the test control plane"),
];

/// What the alert expressions that should have data must name (namespace is the test's).
const ALERTS_NAME: [(&str, &str, &str); 7] = [
    ("KeywardApiKeyNotReady", "orphan", "its rateLimitPolicyRef names no policy (PolicyNotFound)"),
    ("KeywardApiKeyExpiresSoon", "checkout", "expiresAt is 2 days away"),
    ("KeywardApiKeyNearLimit", "checkout", "90 req/s of 100"),
    ("KeywardApiKeyExhausted", "burst", "150 req/s of 100"),
    ("KeywardUsageSourceDown", "down", "its scrape URL refuses connections"),
    ("KeywardScalingConflict", "contested", "an HPA targets its Deployment"),
    ("KeywardGatewayNearCapacity", "contested", "240 req/s on 2 replicas of 10 req/s each"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_and_alert_expression_runs_against_a_live_operator() {
    control_plane_with_crds().await;
    let ns = namespace("monitoring_live");
    let op = operator::scoped(&ns);
    let gw = gateway_sim().await;
    let operator_target = op.wait_http_addr().await.replace("0.0.0.0", "127.0.0.1");
    let prom = Prometheus::start_jobs(&[("keyward", &[operator_target]), ("gateway", &[gw.addr().to_string()])], None);
    // Scraped once before anything rotates: the rotation counters are seen at 0, so their first increase shows.
    prom.wait_for_async(r#"up{job="keyward"} == 1"#, Duration::from_secs(60), |r| !r.is_empty()).await;
    setup_objects(&ns, &gw.url());
    gw.set_rate("checkout", 90.0);
    gw.set_rate("burst", 150.0);

    let (_, json) = dashboard();
    let mut checks: Vec<(String, String)> =
        dashboard_queries(&json).into_iter().map(|(what, expr)| (what, as_grafana_sends(&expr, &ns))).collect();
    for v in json["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = v["query"]["query"].as_str() {
            let (selector, label) = label_values(q);
            checks.push((format!("variable {} ({label})", v["name"]), as_grafana_sends(&selector, &ns)));
        }
    }
    checks.extend(alert_exprs(&rendered_rules(RELEASE, &[])));

    for (what, expr) in &checks {
        prom.try_query(expr).unwrap_or_else(|e| panic!("{what}: {expr:?} does not run: {e}"));
        if let Some((_, why)) = MAY_BE_EMPTY.iter().find(|(w, _)| w == what) {
            eprintln!("{what}: parses; may be empty ({why})");
            continue;
        }
        let result = prom.wait_for_async(expr, Duration::from_secs(180), |r| !r.is_empty()).await;
        eprintln!("{what}: {} series", result.len());
        if let Some((_, name, why)) = ALERTS_NAME.iter().find(|(a, ..)| a == what) {
            let named = |r: &[Sample]| {
                r.iter()
                    .any(|(l, _)| l.get("name").map(String::as_str) == Some(name) && l.get("namespace") == Some(&ns))
            };
            prom.wait_for_async(expr, Duration::from_secs(120), named).await;
            eprintln!("{what} names {ns}/{name}: {why}");
        }
    }
    // A healthy, leading operator trips neither of these.
    for alert in ["KeywardOperatorDown", "KeywardNoLeader", "KeywardApiKeyRotationOverdue"] {
        let (_, expr) = checks.iter().find(|(w, _)| w == alert).expect("alert");
        assert_eq!(prom.query(expr), Vec::<Sample>::new(), "{alert} fires on a healthy operator: {expr}");
    }
    // Key material never reaches a metric: no value of any Secret in the namespace is in the operator's series.
    let metrics = op.metrics().await;
    let secrets: Value = serde_json::from_str(&kubectl_ok(&["get", "secrets", "-n", &ns, "-o", "json"])).expect("json");
    let values: Vec<String> = secrets["items"]
        .as_array()
        .expect("items")
        .iter()
        .flat_map(|s| s["data"].as_object().cloned().unwrap_or_default().into_values())
        .filter_map(|v| BASE64.decode(v.as_str()?).ok())
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .filter(|v| v.len() >= 16)
        .collect();
    assert!(!values.is_empty(), "the keys' Secrets hold keys");
    assert!(values.iter().all(|v| !metrics.contains(v.as_str())), "a Secret value is in /metrics");
    // A key that leaves its policy loses its usage series with the policy's label; its own series stay.
    kubectl_ok(&[
        "patch",
        "apikey",
        "burst",
        "-n",
        &ns,
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/rateLimitPolicyRef"}]"#,
    ]);
    let usage = format!(r#"keyward_apikey_exhausted{{namespace="{ns}",name="burst""#);
    let mut last = String::new();
    for _ in 0..120 {
        last = op.metrics().await;
        if !last.contains(&usage) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(!last.contains(&usage), "burst's usage series outlived its policy:\n{last}");
    assert!(last.contains(&format!(r#"keyward_apikey_ready{{namespace="{ns}",name="burst""#)), "{last}");
    op.assert_no_panic();
}

/// Keys and policies that give every dashboard panel and most alerts something to show.
fn setup_objects(ns: &str, gateway_url: &str) {
    let scrape = format!(
        "  usage:\n    interval: 1s\n    scrape: {{urls: [\"{gateway_url}\"], metric: gateway_requests_total}}"
    );
    apply(ns, &workload("Deployment", "gateway", Some(1)));
    apply(
        ns,
        &policy(
            "gw",
            &format!(
                "  limit: {{requests: 100, period: 1s}}\n{scrape}\n  scaling:\n    targetRef: {{apiVersion: apps/v1, kind: Deployment, name: gateway}}\n    minReplicas: 1\n    maxReplicas: 10\n    capacityPerReplica: {{requests: 100, period: 1s}}"
            ),
        ),
    );
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(48);
    let expires = jiff::Timestamp::from_second(expires.as_second()).expect("expiresAt");
    apply(
        ns,
        &apikey(
            "checkout",
            &format!("  rateLimitPolicyRef: {{name: gw}}\n  rotation: {{interval: 720h}}\n  expiresAt: \"{expires}\""),
        ),
    );
    apply(ns, &apikey("burst", "  rateLimitPolicyRef: {name: gw}"));
    apply(ns, &apikey("orphan", "  rateLimitPolicyRef: {name: missing}"));
    apply(
        ns,
        &policy(
            "down",
            "  limit: {requests: 100, period: 1s}\n  usage:\n    interval: 1s\n    scrape: {urls: [\"http://127.0.0.1:1/metrics\"], metric: gateway_requests_total}",
        ),
    );
    apply(ns, &workload("Deployment", "contested", Some(2)));
    apply(ns, &hpa("contested"));
    apply(
        ns,
        &policy(
            "contested",
            &format!(
                "  limit: {{requests: 100, period: 1s}}\n{scrape}\n  scaling:\n    targetRef: {{apiVersion: apps/v1, kind: Deployment, name: contested}}\n    maxReplicas: 10\n    capacityPerReplica: {{requests: 10, period: 1s}}"
            ),
        ),
    );
    // A manual rotation, so that the rotations panel has a series, and a deleted Secret, which Keyward regenerates.
    kubectl_ok(&["wait", "--for=condition=Ready", "apikey/checkout", "apikey/burst", "-n", ns, "--timeout=60s"]);
    kubectl_ok(&["annotate", "apikey/checkout", "-n", ns, "keyward.dev/rotate=monitoring"]);
    kubectl_ok(&["delete", "secret", "burst", "-n", ns]);
}
