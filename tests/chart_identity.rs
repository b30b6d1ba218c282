//! The operator run as the Helm chart runs it: the real `keyward run` binary with the container arguments of the
//! chart's Deployment (from `helm template`), authenticated as the chart's ServiceAccount (a TokenRequest token) and
//! authorized only by the chart's RBAC, installed for real into the test control plane. An admin then drives the
//! ApiKey and RateLimitPolicy lifecycles through every API verb the controllers use, and leader election takes the
//! chart's Lease. A denied request anywhere (the operator's log at debug level, a status, an event) fails the test
//! at once with the denial: proof that the RBAC is sufficient, in the namespaced and in the cluster mode. (That it
//! is minimal is `tests/integration/helm.rs`, with `kubectl auth can-i`.)
//!
//! The two modes run one after the other (one lock), each with its own release and namespaces, and each stops its
//! operator at the end: a cluster-scoped operator watches every namespace, so running both at once would let it do
//! the namespaced operator's work and prove nothing about the namespaced RBAC.
//!
//! Its own binary, so its own control plane: the cluster-mode operator watches every namespace, as the chart runs
//! it, and would act on the objects of every other test sharing its API server.

mod common;

use std::time::{Duration, Instant};

use common::identity::{self, Identity, kind};
use common::kube::{apikey, apply, condition, decode, eventually, get_json, has_event, is, key_id, ready_reason};
use common::operator::{Operator, start_with_env};
use common::ratelimit::{METRIC, gateway_sim, hpa, policy, replicas, workload};
use common::{control_plane_with_crds, http, kubectl, kubectl_ok, namespace};
use serde_json::Value;

use common::operator::LOG;
/// The chart's default `leaderElection.leaseName`.
const LEASE: &str = "keyward-leader";

/// One mode at a time (see the module docs).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaced_chart_rbac_runs_the_apikey_and_ratelimit_lifecycles() {
    let _serial = SERIAL.lock().await;
    control_plane_with_crds().await;
    let release_ns = namespace("chart_ns_release");
    let ns = namespace("chart_ns_watched");
    let outside = namespace("chart_ns_outside");
    let watch = format!("watchNamespaces={{{ns}}}");
    lifecycle("kw-chart-ns", &release_ns, &ns, Some(&outside), &["--set", "rbac.scope=namespaced", "--set", &watch])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_chart_rbac_runs_the_apikey_and_ratelimit_lifecycles() {
    let _serial = SERIAL.lock().await;
    control_plane_with_crds().await;
    let release_ns = namespace("chart_cluster_release");
    let ns = namespace("chart_cluster_workloads");
    lifecycle("kw-chart-cluster", &release_ns, &ns, None, &[]).await;
}

// ---------------------------------------------------------------------------------------------------------------

/// The operator as the chart runs it; killed when dropped (also when a test fails), so the next mode starts alone.
struct ChartOperator {
    op: std::cell::RefCell<Operator>,
    /// The namespaces whose objects' statuses and events are scanned for denials.
    namespaces: Vec<String>,
    last_scan: std::cell::Cell<Option<Instant>>,
}

impl Drop for ChartOperator {
    fn drop(&mut self) {
        self.op.get_mut().kill();
    }
}

/// Lines that show a denied request: "forbidden" in any case, or a 403 status code (`code: 403`, `status=403`, …;
/// not a resource version or a key id that happens to contain 403).
fn denials(text: &str) -> Vec<String> {
    let code_403 = |l: &str| {
        l.match_indices("403").any(|(i, _)| {
            let after = l[i + 3..].chars().next().is_none_or(|c| !c.is_ascii_alphanumeric());
            let before: String = l[..i].chars().rev().take(12).collect::<String>().to_ascii_lowercase();
            let before_ok = l[..i].chars().next_back().is_none_or(|c| !c.is_ascii_alphanumeric());
            after && before_ok && (before.contains("edoc") || before.contains("sutats"))
        })
    };
    text.lines()
        .filter(|l| l.to_ascii_lowercase().contains("forbidden") || code_403(l))
        .map(|l| l.chars().take(400).collect())
        .collect()
}

/// The denial detector itself: a real 403 is found, numbers that merely contain 403 are not.
#[test]
fn denials_are_recognized() {
    let real = r#"DEBUG keyward::apikey: reconcile failed error=cannot write Secret t/a: ApiError: secrets "a" is forbidden: User "system:serviceaccount:r:kw" cannot create resource "secrets" (ErrorResponse { status: "Failure", reason: "Forbidden", code: 403 })"#;
    assert_eq!(denials(real).len(), 1);
    assert_eq!(denials("status: 403\ncode=403\nHTTP status code 403").len(), 3);
    assert!(denials("\"resourceVersion\": \"403\",\nkeyId=a403bc key-id 1403 at 12:04:03.403Z").is_empty());
}

/// The human-readable parts of a list of ApiKeys, RateLimitPolicies and Events: condition reasons and messages,
/// event reasons and messages, one a line.
fn messages(list: &Value) -> String {
    let mut out = Vec::new();
    for item in list["items"].as_array().into_iter().flatten() {
        let name =
            format!("{} {}", item["kind"].as_str().unwrap_or("?"), item["metadata"]["name"].as_str().unwrap_or("?"));
        for c in item["status"]["conditions"].as_array().into_iter().flatten() {
            out.push(format!("{name}: condition {} {}: {}", c["type"], c["reason"], c["message"]));
        }
        if item["kind"] == "Event" {
            out.push(format!("{name}: event {}: {}", item["reason"], item["message"]));
        }
    }
    out.join("\n")
}

impl ChartOperator {
    /// Panics if the operator exited, or with the denials seen so far: in the operator's log always; in the statuses
    /// and events of the test's namespaces at most once a second (always with `thorough`): that takes kubectl calls.
    fn assert_not_denied(&self, thorough: bool) {
        let exited = self.op.borrow_mut().child.try_wait().expect("try_wait");
        if let Some(status) = exited {
            // Its error (anyhow's `Error: …`, without a backtrace), else the end of the log.
            let text = self.op.borrow().log_text();
            let lines: Vec<&str> = text.lines().collect();
            let shown = match lines.iter().position(|l| l.starts_with("Error: ")) {
                Some(at) => lines[at..].iter().take(3).copied().collect::<Vec<_>>(),
                None => lines[lines.len().saturating_sub(15)..].to_vec(),
            };
            panic!("the operator exited ({status}):\n{}", shown.join("\n"));
        }
        let log = denials(&self.op.borrow().log_text());
        assert!(
            log.is_empty(),
            "the chart's RBAC denied the operator {} time(s); the first (log {}):\n{}",
            log.len(),
            self.op.borrow().log.display(),
            log.iter().take(3).cloned().collect::<Vec<_>>().join("\n")
        );
        if !thorough && self.last_scan.get().is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        self.last_scan.set(Some(Instant::now()));
        for ns in &self.namespaces {
            let out = kubectl(&["get", "apikeys,ratelimitpolicies,events", "-n", ns, "-o", "json"]);
            assert!(out.status.success(), "kubectl get -n {ns}: {}", String::from_utf8_lossy(&out.stderr));
            let list: Value = serde_json::from_slice(&out.stdout).expect("json");
            let found = denials(&messages(&list));
            assert!(
                found.is_empty(),
                "the chart's RBAC denied the operator: {} condition(s)/event(s) in {ns} say so; the first:\n{}",
                found.len(),
                found.iter().take(3).cloned().collect::<Vec<_>>().join("\n")
            );
        }
    }

    /// Polls `f` like [`eventually`] (every 200 ms, at most `secs`), but fails at once when the operator exited or
    /// was denied something, and on timeout shows the end of the operator's log: a missing permission that the
    /// operator does not report (e.g. it is stuck creating its Lease) is then still visible.
    async fn until<T>(&self, secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            self.assert_not_denied(false);
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() >= deadline {
                let text = self.op.borrow().log_text();
                let tail: Vec<&str> = text.lines().rev().take(10).collect();
                let tail: Vec<String> = tail.into_iter().rev().map(|l| l.chars().take(300).collect()).collect();
                panic!(
                    "timed out after {secs}s waiting for {what}; the end of the operator's log:\n{}",
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The identity it put in the Lease's holderIdentity, from its log.
    fn lease_identity(&self) -> Option<String> {
        let text = self.op.borrow().log_text();
        let line = text.lines().find(|l| l.contains("standing by for the leader Lease"))?;
        let at = line.find("identity=")? + "identity=".len();
        Some(line[at..].split_whitespace().next()?.trim_matches('"').to_string())
    }
}

/// The `keyward run` arguments of the chart's Deployment, minus what the test harness sets itself: `run`,
/// `--http-addr` (127.0.0.1:0 here), `--log` (debug for Keyward, so that every API error is in the log) and
/// `--log-format` (text, which the harness reads). None of these changes what the operator asks of the API.
fn chart_args(release: &str, release_ns: &str, helm_args: &[&str]) -> Vec<String> {
    let objects = identity::template(release, release_ns, helm_args);
    let deploy = objects.iter().find(|o| kind(o) == "Deployment").expect("the chart renders a Deployment");
    let c = &deploy["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> = c["args"]
        .as_sequence()
        .expect("container args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_string())
        .collect();
    assert_eq!(args.first().map(String::as_str), Some("run"), "{args:?}");
    let kept: Vec<String> = args
        .into_iter()
        .skip(1)
        .filter(|a| !["--http-addr", "--log=", "--log-format"].iter().any(|p| a.starts_with(p)))
        .collect();
    for want in
        ["--leader-elect".to_string(), format!("--lease-namespace={release_ns}"), format!("--lease-name={LEASE}")]
    {
        assert!(kept.contains(&want), "{want} missing from the chart's args {kept:?}");
    }
    kept
}

/// Waits until the authorizer answers for the rules just installed (its caches follow RBAC objects within moments),
/// so that a denial seen later is the chart's and not a start-up race. One `kubectl auth can-i`, as the
/// ServiceAccount, per rendered rule (its first verb and resource); derived from what the chart renders, so a rule
/// the chart lacks does not stop this wait: the operator's run shows it, denied.
async fn rbac_in_effect(id: &Identity, objects: &[serde_norway::Value]) {
    // NB: `kubectl auth can-i` cannot name a resource of a group the server does not serve (it asks about a
    // resource of the core group instead): those rules (Envoy Gateway's, for `enforce`) are asked with a
    // SubjectAccessReview, which names the group.
    let served = kubectl_ok(&["api-versions"]);
    let served = |group: &str| group.is_empty() || served.lines().any(|l| l.starts_with(&format!("{group}/")));
    let mut reviews: Vec<String> = Vec::new();
    let mut checks: Vec<Vec<String>> = Vec::new();
    for role in objects.iter().filter(|o| matches!(kind(o), "Role" | "ClusterRole")) {
        for rule in role["rules"].as_sequence().into_iter().flatten() {
            let first = |field: &str| rule[field][0].as_str().map(str::to_string);
            let (Some(group), Some(resource), Some(verb)) = (first("apiGroups"), first("resources"), first("verbs"))
            else {
                continue;
            };
            let (resource, sub) = match resource.split_once('/') {
                Some((r, sub)) => (r.to_string(), Some(sub.to_string())),
                None => (resource, None),
            };
            let mut what = if group.is_empty() { resource } else { format!("{resource}.{group}") };
            if let Some(name) = first("resourceNames") {
                what = format!("{what}/{name}");
            }
            if !served(&group) {
                let attributes = serde_json::json!({
                    "group": group, "resource": what.split('.').next(), "verb": verb,
                    "namespace": role["metadata"]["namespace"].as_str(),
                });
                let sar = serde_json::json!({
                    "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                    "spec": {"user": id.user(), "resourceAttributes": attributes},
                });
                reviews.push(sar.to_string());
                continue;
            }
            let mut check = vec!["auth".to_string(), "can-i".to_string(), verb, what];
            check.extend(sub.map(|s| format!("--subresource={s}")));
            if let Some(ns) = role["metadata"]["namespace"].as_str() {
                check.extend(["-n".to_string(), ns.to_string()]);
            }
            checks.push(check);
        }
    }
    assert!(!checks.is_empty(), "the chart renders no RBAC rules");
    let allowed = |sar: &String| {
        let out = common::kubectl_stdin(&["create", "-f", "-", "-o", "json"], sar);
        serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| v["status"]["allowed"] == true)
    };
    eventually(20, "the chart's RBAC to be in effect for its ServiceAccount", || {
        let can_i = checks.iter().all(|c| {
            let args: Vec<&str> = c.iter().map(String::as_str).collect();
            String::from_utf8_lossy(&id.kubectl(&args).stdout).trim() == "yes"
        });
        (can_i && reviews.iter().all(allowed)).then_some(())
    })
    .await;
}

/// A RateLimitPolicy that scrapes `scrape_url` every second and scales as `scaling` (from [`scaling`]) says.
fn scaling_policy(name: &str, scrape_url: &str, limit: &str, scaling: &str) -> String {
    policy(
        name,
        &format!(
            "  limit: {limit}\n  usage:\n    interval: 1s\n    scrape: {{urls: [\"{scrape_url}\"], metric: {METRIC}}}\n  scaling:\n{scaling}"
        ),
    )
}

fn scaling(kind: &str, name: &str, max: i32, capacity_rps: i32, utilization: i32) -> String {
    format!(
        "    targetRef: {{apiVersion: apps/v1, kind: {kind}, name: {name}}}\n    minReplicas: 1\n    maxReplicas: {max}\n    capacityPerReplica: {{requests: {capacity_rps}, period: 1s}}\n    targetUtilization: {utilization}"
    )
}

fn restarted_at(ns: &str, what: &str) -> Option<String> {
    get_json(ns, what)?["spec"]["template"]["metadata"]["annotations"]["keyward.dev/restartedAt"]
        .as_str()
        .map(str::to_string)
}

/// Installs the chart's identity for `release` in `release_ns` (helm values `helm_args`), starts the operator as
/// the chart would, and drives both lifecycles in `ns`. With `outside`, an ApiKey there must be left alone.
async fn lifecycle(release: &str, release_ns: &str, ns: &str, outside: Option<&str>, helm_args: &[&str]) {
    let started = Instant::now();
    let id = identity::install(release, release_ns, helm_args);
    rbac_in_effect(&id, &identity::template(release, release_ns, helm_args)).await;
    let args = chart_args(release, release_ns, helm_args);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // What the chart's Deployment gives the container through the downward API.
    let pod_name = format!("{release}-keyward-0");
    let kubeconfig = id.kubeconfig.to_str().expect("utf-8 path");
    let env = [("KUBECONFIG", kubeconfig), ("POD_NAME", pod_name.as_str()), ("POD_NAMESPACE", release_ns)];
    let mut namespaces = vec![ns.to_string()];
    namespaces.extend(outside.map(str::to_string));
    let op = start_with_env(release, LOG, &args, &env);
    let op = ChartOperator { op: std::cell::RefCell::new(op), namespaces, last_scan: Default::default() };

    // Leader election: the chart's Lease in the release namespace, held by this process.
    let me = op.until(30, "the operator to log its Lease identity", || op.lease_identity()).await;
    assert!(me.starts_with(&pod_name), "the holder identity {me} is POD_NAME plus a suffix");
    op.until(30, "the chart's Lease to be held by the operator", || {
        let lease = get_json(release_ns, &format!("lease/{LEASE}"))?;
        (lease["spec"]["holderIdentity"] == me.as_str()).then_some(())
    })
    .await;

    // Everything at once; the waits below overlap.
    let gw = gateway_sim().await;
    let url = gw.url();
    let objects = [
        workload("Deployment", "web", Some(1)),
        workload("StatefulSet", "db", Some(1)),
        workload("DaemonSet", "agent", None),
        workload("Deployment", "gateway", Some(1)),
        workload("StatefulSet", "gateway-sts", Some(1)),
        workload("Deployment", "hpa-gw", Some(2)),
        hpa("hpa-gw"),
        // 250 req/s at 80% of 100 per replica: 4 replicas.
        scaling_policy("tier", &url, "{requests: 300, period: 1s}", &scaling("Deployment", "gateway", 10, 100, 80)),
        // 250 req/s at 100% of 100 per replica: 3 replicas.
        scaling_policy(
            "sts",
            &url,
            "{requests: 1000, period: 1s}",
            &scaling("StatefulSet", "gateway-sts", 6, 100, 100),
        ),
        scaling_policy("hpa", &url, "{requests: 1000, period: 1s}", &scaling("Deployment", "hpa-gw", 10, 100, 80)),
        apikey(
            "restart",
            "  secretName: restart-key\n  rotation: {gracePeriod: 1m}\n  secretTemplate:\n    labels: {gateway.example.com/api-key: \"true\"}\n  rolloutRestart:\n  - {kind: Deployment, name: web}\n  - {kind: StatefulSet, name: db}\n  - {kind: DaemonSet, name: agent}",
        ),
        // A wide window between the end of the grace period (2 s) and the next rotation (8 s).
        // 10 s: the chart's --min-rotation-interval (a shorter interval is refused).
        apikey("rotating", "  rotation: {interval: 10s, gracePeriod: 2s}"),
        apikey("sus", "  suspended: false"),
        apikey("usage", "  rateLimitPolicyRef: {name: tier}"),
    ];
    apply(ns, &objects.iter().map(|o| format!("---\n{o}")).collect::<String>());
    if let Some(outside) = outside {
        apply(outside, &apikey("outside", ""));
    }
    gw.set_rate("usage", 250.0);

    // Issue: every key Ready, into a Secret it owns, with the template's labels.
    let mut first = std::collections::BTreeMap::new();
    for name in ["restart", "rotating", "sus", "usage"] {
        let secret = if name == "restart" { "restart-key" } else { name };
        let key = op
            .until(30, &format!("ApiKey {name} Ready with its key"), || {
                let ak = get_json(ns, &format!("apikey/{name}"))?;
                (ready_reason(&ak)? == ("True".into(), "KeyIssued".into())).then_some(())?;
                decode(&get_json(ns, &format!("secret/{secret}"))?, "api-key")
            })
            .await;
        assert!(keyward::keys::verify_checksum(&key), "checksum of {name}'s key");
        first.insert(name, key_id(&key));
    }
    let s = get_json(ns, "secret/restart-key").expect("secret");
    assert_eq!(s["metadata"]["labels"]["gateway.example.com/api-key"], "true", "secretTemplate labels");
    assert_eq!(s["metadata"]["labels"]["app.kubernetes.io/managed-by"], "keyward");
    assert_eq!(s["metadata"]["ownerReferences"][0]["kind"], "ApiKey");
    assert_eq!(restarted_at(ns, "deployment/web"), None, "the first key needs no restart");

    // Manual rotation (annotation) and suspension, both running while the interval key rotates.
    kubectl_ok(&["annotate", "apikey/restart", "-n", ns, "keyward.dev/rotate=chart-1"]);
    kubectl_ok(&["patch", "apikey/sus", "-n", ns, "--type=merge", "-p", r#"{"spec":{"suspended":true}}"#]);

    // Rotation on the interval: the old key stays as the previous one for the grace period, then goes.
    let current = op
        .until(30, "a rotation of `rotating` with a previous key", || {
            let s = get_json(ns, "secret/rotating")?;
            let (cur, prev) = (decode(&s, "api-key")?, decode(&s, "previous-api-key")?);
            (key_id(&cur) != first["rotating"]).then_some((key_id(&cur), key_id(&prev)))
        })
        .await;
    assert_ne!(current.0, current.1);
    op.until(20, "the previous key of `rotating` to be removed after the grace period", || {
        let s = get_json(ns, "secret/rotating")?;
        decode(&s, "previous-api-key").is_none().then_some(())
    })
    .await;

    // Suspend revokes; resume issues a fresh key.
    op.until(30, "`sus` suspended with no key material", || {
        let ak = get_json(ns, "apikey/sus")?;
        let s = get_json(ns, "secret/sus")?;
        (decode(&s, "api-key").is_none() && ready_reason(&ak)? == ("False".into(), "Suspended".into())).then_some(())
    })
    .await;
    kubectl_ok(&["patch", "apikey/sus", "-n", ns, "--type=merge", "-p", r#"{"spec":{"suspended":false}}"#]);
    let fresh =
        op.until(30, "a fresh key after resuming `sus`", || decode(&get_json(ns, "secret/sus")?, "api-key")).await;
    assert_ne!(key_id(&fresh), first["sus"], "resuming must not bring back the revoked key");

    // The manual rotation, then the rollout restart of each kind of target (after 10 s without another rotation).
    let ak = op
        .until(30, "the requested rotation of `restart`", || {
            get_json(ns, "apikey/restart")
                .filter(|a| a["status"]["lastRotateRequest"] == "chart-1" && a["status"]["rotationCount"] == 1)
        })
        .await;
    let rotated: jiff::Timestamp =
        ak["status"]["lastRotationTime"].as_str().expect("lastRotationTime").parse().expect("timestamp");
    for target in ["deployment/web", "statefulset/db", "daemonset/agent"] {
        let stamped = op.until(30, &format!("{target} restarted"), || restarted_at(ns, target)).await;
        assert_eq!(stamped.parse::<jiff::Timestamp>().expect("timestamp"), rotated, "{target} restarted for the key");
    }

    // RateLimitPolicies: usage on the key's status, scaling through the scale subresource, the HPA conflict.
    let ak = op
        .until(30, "usage written to ApiKey `usage`", || {
            get_json(ns, "apikey/usage")
                .filter(|a| a["status"]["usage"]["requestsPerSecond"].as_f64().is_some_and(|r| r > 200.0))
        })
        .await;
    assert_eq!(ak["status"]["usage"]["limit"].as_f64(), Some(300.0), "{:?}", ak["status"]);
    op.until(30, "the gateway Deployment scaled to 4", || replicas(ns, "deployment/gateway").filter(|&r| r == 4)).await;
    op.until(30, "the gateway StatefulSet scaled to 3", || replicas(ns, "statefulset/gateway-sts").filter(|&r| r == 3))
        .await;
    let p = op
        .until(30, "policy `tier` status with 4 replicas", || {
            get_json(ns, "rlp/tier").filter(|p| p["status"]["currentReplicas"] == 4 && is(p, "ScalingActive", "True"))
        })
        .await;
    assert!(is(&p, "UsageAvailable", "True") && is(&p, "ScalingConflict", "False"), "{:?}", p["status"]);
    let p = op
        .until(30, "ScalingConflict on policy `hpa`", || {
            get_json(ns, "rlp/hpa").filter(|p| is(p, "ScalingConflict", "True"))
        })
        .await;
    assert_eq!(condition(&p, "ScalingConflict").map(|c| c.1).as_deref(), Some("HorizontalPodAutoscaler"));
    assert_eq!(replicas(ns, "deployment/hpa-gw"), Some(2), "no write while the HPA exists");

    // Events, published by the operator on each kind.
    for (kind, name, reason) in [
        ("ApiKey", "restart", "Issued"),
        ("ApiKey", "restart", "Rotated"),
        ("ApiKey", "restart", "RolloutRestarted"),
        ("ApiKey", "rotating", "Rotated"),
        ("ApiKey", "rotating", "PreviousKeyRemoved"),
        ("ApiKey", "sus", "Suspended"),
        ("RateLimitPolicy", "tier", "ScaledUp"),
        ("RateLimitPolicy", "sts", "ScaledUp"),
        ("RateLimitPolicy", "hpa", "ScalingConflict"),
    ] {
        op.until(20, &format!("a {reason} event on {kind} {name}"), || has_event(ns, kind, name, reason).then_some(()))
            .await;
    }

    // Namespaced: what is outside the watched namespaces is never touched (nor asked for: no denial either).
    if let Some(outside) = outside {
        let ak = get_json(outside, "apikey/outside").expect("apikey outside");
        assert!(ak["status"].is_null(), "an ApiKey outside the watched namespaces got a status: {:?}", ak["status"]);
        assert!(get_json(outside, "secret/outside").is_none(), "a Secret was issued outside the watched namespaces");
    }

    // Still leading, still alive, and never denied anything.
    let lease = get_json(release_ns, &format!("lease/{LEASE}")).expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], me.as_str(), "the Lease changed hands");
    op.assert_not_denied(true);
    let addr = eventually(10, "the operator's HTTP address", || op.op.borrow().http_addr()).await;
    // Alive, and ready (caches synced, leading): what the chart's liveness and readiness probes ask.
    for path in ["healthz", "readyz"] {
        http::wait_status(&format!("http://{addr}/{path}"), 200, 10, "at the end of the lifecycle").await;
    }
    // Stop it (the drop kills it), and leave nothing that would keep a later operator busy in these namespaces.
    drop(op);
    gw.stop();
    for ns in std::iter::once(ns).chain(outside) {
        kubectl_ok(&["delete", "apikeys,ratelimitpolicies", "--all", "-n", ns, "--wait=false"]);
    }
    eprintln!("{release}: the chart's RBAC ran both lifecycles in {:.1?}", started.elapsed());
}
