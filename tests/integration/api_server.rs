//! The API against the real kube-apiserver: the CRDs install and are Established, the examples apply and read
//! back unchanged, invalid manifests are rejected with the field named, and `kubectl explain` shows the docs.

use crate::common::{control_plane_with_crds, kubectl, kubectl_ok, kubectl_stdin, namespace};
use serde::Deserialize;

#[tokio::test]
async fn crds_are_established_with_names_and_columns() {
    let _cp = control_plane_with_crds().await;
    for crd in ["apikeys.keyward.dev", "ratelimitpolicies.keyward.dev"] {
        let status =
            kubectl_ok(&["get", "crd", crd, "-o", "jsonpath={.status.conditions[?(@.type==\"Established\")].status}"]);
        assert_eq!(status, "True", "{crd} not Established");
    }
    let ns = namespace("crds_established");
    // Short names and the category resolve through discovery, as a user would type them.
    for resource in ["ak", "rlp", "keyward", "apikeys.keyward.dev"] {
        kubectl_ok(&["get", resource, "-n", &ns]);
    }
    let applied = kubectl_stdin(
        &["apply", "--server-side", "-n", &ns, "-f", "-"],
        "apiVersion: keyward.dev/v1alpha1\nkind: ApiKey\nmetadata: {name: columns}\nspec: {}\n",
    );
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    let table = kubectl_ok(&["get", "apikeys", "-n", &ns]);
    let header = table.lines().next().unwrap_or_default();
    for column in ["NAME", "READY", "REASON", "KEY ID", "NEXT ROTATION", "UTILIZATION", "AGE"] {
        assert!(header.contains(column), "ApiKey column {column} missing from {header:?}");
    }
    let table = kubectl_ok(&["get", "ratelimitpolicies", "-n", &ns]);
    // With no objects kubectl prints no header; the columns are checked on the CRD itself.
    assert!(table.is_empty() || table.contains("NAME"));
    let columns = kubectl_ok(&[
        "get",
        "crd",
        "ratelimitpolicies.keyward.dev",
        "-o",
        "jsonpath={.spec.versions[0].additionalPrinterColumns[*].name}",
    ]);
    assert_eq!(columns, "Ready Limit Usage Target Replicas Age");
}

/// Whether every leaf of `want` is present and equal in `got` (the server may add defaults and metadata).
fn contains(got: &serde_json::Value, want: &serde_json::Value, path: &str) -> Result<(), String> {
    use serde_json::Value;
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            for (k, wv) in w {
                let gv = g.get(k).ok_or_else(|| format!("{path}.{k} missing after read-back"))?;
                contains(gv, wv, &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        (Value::Array(g), Value::Array(w)) if g.len() == w.len() => {
            for (i, (gv, wv)) in g.iter().zip(w).enumerate() {
                contains(gv, wv, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        (Value::Number(g), Value::Number(w)) if g.as_f64() == w.as_f64() => Ok(()),
        _ if got == want => Ok(()),
        _ => Err(format!("{path}: applied {want}, read back {got}")),
    }
}

#[tokio::test]
async fn examples_apply_server_side_and_read_back_unchanged() {
    let cp = control_plane_with_crds().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        // NB: examples/ also holds the Rust traffic simulator.
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut checked = 0;
    for file in files {
        let out = cp
            .run_kubectl([std::ffi::OsStr::new("apply"), "--server-side".as_ref(), "-f".as_ref(), file.as_os_str()])
            .expect("kubectl");
        assert!(out.status.success(), "{}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
        let text = std::fs::read_to_string(&file).expect("read");
        for doc in serde_norway::Deserializer::from_str(&text) {
            let want = serde_json::Value::deserialize(doc).expect("yaml");
            let kind = want["kind"].as_str().expect("kind");
            let name = want["metadata"]["name"].as_str().expect("name");
            let mut args = vec!["get", kind, name, "-o", "json"];
            if let Some(ns) = want["metadata"]["namespace"].as_str() {
                args.extend(["-n", ns]);
            }
            let got: serde_json::Value = serde_json::from_str(&kubectl_ok(&args)).expect("json");
            if let Err(e) = contains(&got, &want, "") {
                panic!("{}: {kind}/{name}: {e}", file.display());
            }
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} example objects checked");
}

/// One invalid manifest: what it breaks and the text the rejection must contain (the field path).
struct Invalid {
    kind: &'static str,
    spec: &'static str,
    field: &'static str,
}

const APIKEY_INVALID: &[Invalid] = &[
    Invalid { kind: "ApiKey", spec: "format: {entropyBytes: 8}", field: "spec.format.entropyBytes" },
    Invalid { kind: "ApiKey", spec: "format: {entropyBytes: 200}", field: "spec.format.entropyBytes" },
    Invalid { kind: "ApiKey", spec: "format: {encoding: base32}", field: "spec.format.encoding" },
    Invalid { kind: "ApiKey", spec: "format: {prefix: kw-live-}", field: "spec.format.prefix" },
    Invalid { kind: "ApiKey", spec: "format: {prefix: abcdefghijklmnopq}", field: "spec.format.prefix" },
    Invalid { kind: "ApiKey", spec: "rotation: {interval: 1d}", field: "spec.rotation.interval" },
    Invalid {
        kind: "ApiKey",
        spec: "rotation: {interval: 1h, gracePeriod: forever}",
        field: "spec.rotation.gracePeriod",
    },
    Invalid { kind: "ApiKey", spec: "rotation: {interval: 1h, jitter: '5 m'}", field: "spec.rotation.jitter" },
    Invalid {
        kind: "ApiKey",
        spec: "rotation: {interval: 1h, schedule: '0 3 * * 1'}",
        field: "rotation: set at most one of rotation.interval and rotation.schedule",
    },
    Invalid {
        kind: "ApiKey",
        spec: "rotation: {interval: 1h, timeZone: Europe/Berlin}",
        field: "rotation.timeZone is only allowed together with rotation.schedule",
    },
    Invalid { kind: "ApiKey", spec: "rotation: {schedule: '0 3 * *'}", field: "spec.rotation.schedule" },
    Invalid { kind: "ApiKey", spec: "rotation: {schedule: '0 0 3 * * 1'}", field: "spec.rotation.schedule" },
    Invalid {
        kind: "ApiKey",
        spec: "rotation: {schedule: '0 3 * * 1', timeZone: 'Europe Berlin'}",
        field: "spec.rotation.timeZone",
    },
    Invalid { kind: "ApiKey", spec: "rolloutRestart: [{kind: Job, name: x}]", field: "spec.rolloutRestart[0].kind" },
    Invalid { kind: "ApiKey", spec: "rolloutRestart: [{kind: Deployment}]", field: "spec.rolloutRestart[0].name" },
    Invalid { kind: "ApiKey", spec: "secretName: Bad_Name", field: "spec.secretName" },
    Invalid { kind: "ApiKey", spec: "expiresAt: tomorrow", field: "spec.expiresAt" },
    Invalid { kind: "ApiKey", spec: "suspended: maybe", field: "spec.suspended" },
    Invalid { kind: "ApiKey", spec: "rateLimitPolicyRef: {}", field: "spec.rateLimitPolicyRef.name" },
];

const POLICY_INVALID: &[Invalid] = &[
    Invalid { kind: "RateLimitPolicy", spec: "{}", field: "spec.limit" },
    Invalid { kind: "RateLimitPolicy", spec: "limit: {requests: 0, period: 1m}", field: "spec.limit.requests" },
    Invalid { kind: "RateLimitPolicy", spec: "limit: {requests: 10, period: 1 minute}", field: "spec.limit.period" },
    Invalid {
        kind: "RateLimitPolicy",
        spec: "limit: {requests: 10, period: 1m}\n  nearLimitRatio: 0",
        field: "spec.nearLimitRatio",
    },
    Invalid {
        kind: "RateLimitPolicy",
        spec: "limit: {requests: 10, period: 1m}\n  nearLimitRatio: 1.5",
        field: "spec.nearLimitRatio",
    },
    Invalid {
        kind: "RateLimitPolicy",
        spec: "limit: {requests: 10, period: 1m}\n  temporaryOverrides: [{requests: 20, period: 1m, until: '2030-01-01T00:00:00Z'}]",
        field: "spec.temporaryOverrides[0].reason",
    },
    Invalid {
        kind: "RateLimitPolicy",
        spec: "limit: {requests: 10, period: 1m}\n  usage: {prometheus: {address: 'http://p:9090', query: up}, scrape: {urls: ['http://g/metrics'], metric: m}}",
        field: "usage: set at most one of usage.prometheus and usage.scrape",
    },
    Invalid {
        kind: "RateLimitPolicy",
        spec: "limit: {requests: 10, period: 1m}\n  usage: {scrape: {urls: [], metric: m}}",
        field: "spec.usage.scrape.urls",
    },
    Invalid {
        kind: "RateLimitPolicy",
        spec: "limit: {requests: 10, period: 1m}\n  usage: {prometheus: {address: 'prometheus:9090', query: up}}",
        field: "spec.usage.prometheus.address",
    },
    Invalid {
        kind: "RateLimitPolicy",
        spec: "limit: {requests: 10, period: 1m}\n  usage: {keyLabel: 'api-key', interval: 15s}",
        field: "spec.usage.keyLabel",
    },
    Invalid {
        kind: "RateLimitPolicy",
        spec: "limit: {requests: 10, period: 1m}\n  scaling: {targetRef: {apiVersion: apps/v1, kind: Deployment, name: gw}, minReplicas: 5, maxReplicas: 2, capacityPerReplica: {requests: 100, period: 1s}}",
        field: "scaling.minReplicas must be less than or equal to scaling.maxReplicas",
    },
    Invalid {
        kind: "RateLimitPolicy",
        spec: "limit: {requests: 10, period: 1m}\n  scaling: {targetRef: {apiVersion: apps/v1, kind: Deployment, name: gw}, maxReplicas: -1, capacityPerReplica: {requests: 100, period: 1s}}",
        field: "spec.scaling.maxReplicas",
    },
    Invalid {
        kind: "RateLimitPolicy",
        spec: "limit: {requests: 10, period: 1m}\n  scaling: {targetRef: {apiVersion: apps/v1, kind: Deployment, name: gw}, maxReplicas: 3, targetUtilization: 0, capacityPerReplica: {requests: 100, period: 1s}}",
        field: "spec.scaling.targetUtilization",
    },
    Invalid {
        kind: "RateLimitPolicy",
        spec: "limit: {requests: 10, period: 1m}\n  scaling: {targetRef: {apiVersion: apps/v1, kind: Deployment, name: gw}, maxReplicas: 3, targetUtilization: 101, capacityPerReplica: {requests: 100, period: 1s}}",
        field: "spec.scaling.targetUtilization",
    },
    Invalid {
        kind: "RateLimitPolicy",
        spec: "limit: {requests: 10, period: 1m}\n  scaling: {targetRef: {apiVersion: apps/v1, kind: Deployment, name: gw}, maxReplicas: 3, capacityPerReplica: {requests: 100, period: 1s}, scaleDown: {stabilizationWindow: 5min}}",
        field: "spec.scaling.scaleDown.stabilizationWindow",
    },
    Invalid {
        kind: "RateLimitPolicy",
        spec: "limit: {requests: 10, period: 1m}\n  scaling: {targetRef: {apiVersion: apps/v1, kind: Deployment}, maxReplicas: 3, capacityPerReplica: {requests: 100, period: 1s}}",
        field: "spec.scaling.targetRef.name",
    },
];

/// A manifest whose spec is `spec`, indented as the first line of the spec block.
fn manifest(kind: &str, name: &str, spec: &str) -> String {
    crate::common::kube::manifest(kind, name, &format!("  {spec}"))
}

#[tokio::test]
async fn invalid_manifests_are_rejected_naming_the_field() {
    let _cp = control_plane_with_crds().await;
    let ns = namespace("invalid_manifests");
    let cases: Vec<&Invalid> = APIKEY_INVALID.iter().chain(POLICY_INVALID).collect();
    assert!(cases.len() >= 30, "the suite has {} cases", cases.len());
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let name = format!("bad-{i}");
        let out =
            kubectl_stdin(&["apply", "--server-side", "-n", &ns, "-f", "-"], &manifest(case.kind, &name, case.spec));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            failures.push(format!("case {i} ({}) was accepted", case.spec));
        } else if !stderr.contains(case.field) {
            failures.push(format!("case {i} ({}) rejected without naming {:?}: {stderr}", case.spec, case.field));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Nothing of the rejected manifests was stored.
    let left = kubectl_ok(&["get", "apikeys,ratelimitpolicies", "-n", &ns, "-o", "name"]);
    assert!(left.trim().is_empty(), "rejected objects were stored: {left}");
}

#[tokio::test]
async fn boundary_values_are_accepted() {
    // The rules reject what is wrong and nothing more: the edges of each range pass.
    let _cp = control_plane_with_crds().await;
    let ns = namespace("boundary_values");
    let cases = [
        ("ApiKey", "format: {entropyBytes: 16, prefix: '', encoding: hex}"),
        ("ApiKey", "format: {entropyBytes: 128, prefix: abcdefghijklmnop, encoding: base64url}"),
        ("ApiKey", "rotation: {interval: 1h30m, gracePeriod: 0s, jitter: 250ms}"),
        ("ApiKey", "rotation: {schedule: '*/5 * * * *', timeZone: America/Argentina/Buenos_Aires}"),
        ("ApiKey", "expiresAt: '2030-01-01T00:00:00Z'\n  suspended: true"),
        ("RateLimitPolicy", "limit: {requests: 1, period: 1s}\n  nearLimitRatio: 1"),
        (
            "RateLimitPolicy",
            "limit: {requests: 1, period: 1s}\n  scaling: {targetRef: {apiVersion: apps/v1, kind: StatefulSet, name: gw}, minReplicas: 0, maxReplicas: 0, targetUtilization: 100, capacityPerReplica: {requests: 1, period: 1s}}",
        ),
    ];
    for (i, (kind, spec)) in cases.iter().enumerate() {
        let out = kubectl_stdin(
            &["apply", "--server-side", "-n", &ns, "-f", "-"],
            &manifest(kind, &format!("edge-{i}"), spec),
        );
        assert!(out.status.success(), "{spec}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[tokio::test]
async fn kubectl_explain_shows_field_docs() {
    let _cp = control_plane_with_crds().await;
    // NB: explain reads the published OpenAPI, which lags CRD establishment by a moment.
    let mut last = String::new();
    for _ in 0..50 {
        let out = kubectl(&["explain", "apikey.spec.rotation"]);
        last = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        if out.status.success() && last.contains("schedule") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    for needle in [
        "FIELD: rotation",
        "interval",
        "schedule",
        "timeZone",
        "gracePeriod",
        "jitter",
        "Rotate on this 5-field cron schedule",
    ] {
        assert!(last.contains(needle), "explain apikey.spec.rotation lacks {needle:?}:\n{last}");
    }
    let policy = kubectl_ok(&["explain", "ratelimitpolicy.spec.scaling.capacityPerReplica"]);
    assert!(policy.contains("The traffic one gateway replica serves"), "{policy}");
}

/// The tenant-safety bounds (issue #11): every duration and time bounded from above, every name that becomes part
/// of an API path a Kubernetes name, no credentials in URLs, maps and lists capped. Built at run time: some cases
/// are long. Each is `(kind, spec, text the rejection must contain)`.
fn tenant_invalid() -> Vec<(&'static str, String, &'static str)> {
    let key = |spec: &str, field: &'static str| ("ApiKey", spec.to_string(), field);
    let policy = |spec: &str, field: &'static str| {
        ("RateLimitPolicy", format!("limit: {{requests: 10, period: 1m}}\n  {spec}"), field)
    };
    let scaling = |target: &str, extra: &str, field: &'static str| {
        policy(
            &format!(
                "scaling: {{targetRef: {target}, maxReplicas: 3, capacityPerReplica: {{requests: 100, period: 1s}}{extra}}}"
            ),
            field,
        )
    };
    let gw = "{apiVersion: apps/v1, kind: Deployment, name: gw}";
    let labels = |n: usize, value_len: usize| {
        (0..n).map(|i| format!("l{i}: '{}'", "v".repeat(value_len))).collect::<Vec<_>>().join(", ")
    };
    vec![
        // Durations: the case, a value past Go's range, just over each maximum, zero where it must be > 0.
        key("rotation: {interval: 100000000h}", "spec.rotation.interval"),
        key("rotation: {interval: 9999999h}", "spec.rotation.interval"),
        key(
            "rotation: {interval: 999999h999999h99999h}",
            "rotation.interval must be greater than 0s and at most 8760h",
        ),
        key("rotation: {interval: 999999h999999h999999h}", "spec.rotation.interval"),
        key("rotation: {interval: 8761h}", "rotation.interval must be greater than 0s and at most 8760h"),
        key("rotation: {interval: 8760h1ms}", "spec.rotation.interval"),
        key("rotation: {interval: 0s}", "rotation.interval must be greater than 0s"),
        key("rotation: {interval: 1h, gracePeriod: 8761h}", "rotation.gracePeriod must be at most 8760h"),
        // A rotation never cuts a grace short, so a grace as long as the interval would make every rotation wait.
        key("rotation: {interval: 1h, gracePeriod: 1h}", "rotation.gracePeriod must be shorter than rotation.interval"),
        key(
            "rotation: {interval: 1h, gracePeriod: 60m}",
            "rotation.gracePeriod must be shorter than rotation.interval",
        ),
        key(
            "rotation: {interval: 10m, gracePeriod: 24h}",
            "rotation.gracePeriod must be shorter than rotation.interval",
        ),
        key("rotation: {interval: 1h, jitter: 24h1s}", "rotation.jitter must be at most 24h"),
        key("rotation: {interval: 1h, jitter: 100000000h}", "spec.rotation.jitter"),
        // Times.
        key("expiresAt: '3000-01-01T00:00:00Z'", "expiresAt must be at or after"),
        key("expiresAt: '9999-12-31T23:59:59Z'", "spec.expiresAt"),
        key("expiresAt: '1969-12-31T23:59:59Z'", "spec.expiresAt"),
        // Names that become API paths.
        key("secretName: ../x", "spec.secretName"),
        key("secretName: a/b", "spec.secretName"),
        key("secretName: '%2e'", "spec.secretName"),
        key("secretName: a..b", "spec.secretName"),
        key("secretName: Secret", "spec.secretName"),
        key(&format!("secretName: {}", "a".repeat(254)), "spec.secretName"),
        key("rateLimitPolicyRef: {name: ../x}", "spec.rateLimitPolicyRef.name"),
        key("rateLimitPolicyRef: {name: 'a/b'}", "spec.rateLimitPolicyRef.name"),
        key("rateLimitPolicyRef: {name: '%2e%2e'}", "spec.rateLimitPolicyRef.name"),
        key("rolloutRestart: [{kind: Deployment, name: ../x}]", "spec.rolloutRestart[0].name"),
        key("rolloutRestart: [{kind: Deployment, name: 'a/b'}]", "spec.rolloutRestart[0].name"),
        key("rolloutRestart: [{kind: Deployment, name: Web}]", "spec.rolloutRestart[0].name"),
        key(
            &format!("rolloutRestart: [{{kind: Deployment, name: {}}}]", "a".repeat(254)),
            "spec.rolloutRestart[0].name",
        ),
        // Maps and lists.
        key(&format!("secretTemplate: {{labels: {{{}}}}}", labels(65, 1)), "spec.secretTemplate.labels"),
        key(&format!("secretTemplate: {{labels: {{{}}}}}", labels(1, 64)), "secretTemplate.labels: keys must be"),
        key(
            &format!("secretTemplate: {{annotations: {{a: '{}'}}}}", "x".repeat(4097)),
            "spec.secretTemplate.annotations",
        ),
        key(
            &format!("secretTemplate: {{annotations: {{'{}': x}}}}", "k".repeat(318)),
            "spec.secretTemplate.annotations",
        ),
        key(
            &format!("rolloutRestart: [{}]", vec!["{kind: Deployment, name: w}"; 33].join(", ")),
            "spec.rolloutRestart",
        ),
        policy("usage: {interval: 100000000h}", "spec.usage.interval"),
        policy("usage: {interval: 24h1s}", "usage.interval must be greater than 0s and at most 24h"),
        policy("usage: {interval: 0s}", "usage.interval must be greater than 0s"),
        ("RateLimitPolicy", "limit: {requests: 10, period: 8761h}".into(), "spec.limit.period"),
        ("RateLimitPolicy", "limit: {requests: 10, period: 0s}".into(), "spec.limit.period"),
        policy(
            "temporaryOverrides: [{requests: 20, period: 8761h, until: '2030-01-01T00:00:00Z', reason: r}]",
            "temporaryOverrides[].period must be",
        ),
        policy(
            "temporaryOverrides: [{requests: 20, period: 1m, until: '3000-01-01T00:00:00Z', reason: r}]",
            "temporaryOverrides[].until must be",
        ),
        policy(
            &format!(
                "temporaryOverrides: [{}]",
                vec!["{requests: 20, period: 1m, until: '2030-01-01T00:00:00Z', reason: r}"; 17].join(", ")
            ),
            "spec.temporaryOverrides",
        ),
        scaling(gw, ", scaleDown: {stabilizationWindow: 3601s}", "stabilizationWindow must be at most 1h"),
        scaling(gw, ", scaleUp: {stabilizationWindow: 2h}", "spec.scaling.scaleUp.stabilizationWindow"),
        policy(
            "scaling: {targetRef: {apiVersion: apps/v1, kind: Deployment, name: gw}, maxReplicas: 3, capacityPerReplica: {requests: 100, period: 0s}}",
            "spec.scaling.capacityPerReplica.period",
        ),
        scaling("{apiVersion: apps/v1, kind: Deployment, name: ../x}", "", "spec.scaling.targetRef.name"),
        scaling("{apiVersion: apps/v1, kind: Deployment, name: 'a/b'}", "", "spec.scaling.targetRef.name"),
        scaling("{apiVersion: apps/v1, kind: Deployment, name: '%2e'}", "", "spec.scaling.targetRef.name"),
        scaling("{apiVersion: apps/v1, kind: Deployment, name: Gw}", "", "spec.scaling.targetRef.name"),
        scaling(
            &format!("{{apiVersion: apps/v1, kind: Deployment, name: {}}}", "g".repeat(254)),
            "",
            "spec.scaling.targetRef.name",
        ),
        scaling("{apiVersion: apps/v1, kind: deployment, name: gw}", "", "spec.scaling.targetRef.kind"),
        scaling("{apiVersion: apps/v1, kind: 'Deploy/ments', name: gw}", "", "spec.scaling.targetRef.kind"),
        scaling("{apiVersion: apps/v1, kind: '..', name: gw}", "", "spec.scaling.targetRef.kind"),
        scaling("{apiVersion: '../v1', kind: Deployment, name: gw}", "", "spec.scaling.targetRef.apiVersion"),
        scaling("{apiVersion: apps/v1/x, kind: Deployment, name: gw}", "", "spec.scaling.targetRef.apiVersion"),
        scaling("{apiVersion: Apps/v1, kind: Deployment, name: gw}", "", "spec.scaling.targetRef.apiVersion"),
        scaling("{apiVersion: 'apps/%2e', kind: Deployment, name: gw}", "", "spec.scaling.targetRef.apiVersion"),
        // Credentials in URLs, and schemes other than http(s).
        policy(
            "usage: {prometheus: {address: 'http://user:pass@prom:9090', query: up}}",
            "usage.prometheus.address must be an http",
        ),
        policy("usage: {prometheus: {address: 'https://user@prom:9090', query: up}}", "spec.usage.prometheus.address"),
        policy("usage: {prometheus: {address: 'ftp://prom:9090', query: up}}", "spec.usage.prometheus.address"),
        // Authenticated Prometheus: one credential kind, no smuggled Authorization, TLS only over https.
        policy(
            "usage: {prometheus: {address: 'https://p', query: up, auth: {}}}",
            "usage.prometheus.auth: set exactly one of bearerToken and basic",
        ),
        policy(
            "usage: {prometheus: {address: 'https://p', query: up, auth: {bearerToken: {name: t, key: k}, basic: {username: {name: u, key: k}, password: {name: p, key: k}}}}}",
            "usage.prometheus.auth: set exactly one of bearerToken and basic",
        ),
        policy(
            "usage: {prometheus: {address: 'https://p', query: up, headers: [{name: Authorization, value: 'Bearer x'}]}}",
            "usage.prometheus.headers[].name: Authorization, Host, Cookie and hop-by-hop headers cannot be set",
        ),
        policy(
            "usage: {prometheus: {address: 'https://p', query: up, headers: [{name: 'X-A', value: \"a\\r\\nInjected: 1\"}]}}",
            "spec.usage.prometheus.headers[0].value",
        ),
        policy(
            "usage: {prometheus: {address: 'http://p', query: up, tls: {insecureSkipVerify: true}}}",
            "usage.prometheus.tls needs an https:// usage.prometheus.address",
        ),
        policy(
            "usage: {prometheus: {address: 'https://p', query: up, tls: {ca: {}}}}",
            "usage.prometheus.tls.ca: set exactly one of configMapKeyRef and secretKeyRef",
        ),
        policy(
            "usage: {prometheus: {address: 'https://p', query: up, auth: {bearerToken: {name: '../x', key: k}}}}",
            "spec.usage.prometheus.auth.bearerToken.name",
        ),
        policy(
            "usage: {scrape: {urls: ['http://gw/metrics', 'http://u:p@gw/metrics'], metric: m}}",
            "usage.scrape.urls[] must each be",
        ),
        policy("usage: {scrape: {urls: ['file:///etc/passwd'], metric: m}}", "spec.usage.scrape.urls"),
        policy(
            "usage: {scrape: {urls: ['http://gw/metrics'], service: {name: gw, port: metrics}, metric: m}}",
            "usage.scrape: set exactly one of usage.scrape.urls and usage.scrape.service",
        ),
        policy(
            "usage: {scrape: {metric: m}}",
            "usage.scrape: set exactly one of usage.scrape.urls and usage.scrape.service",
        ),
        policy("usage: {scrape: {service: {name: ../gw, port: metrics}, metric: m}}", "spec.usage.scrape.service.name"),
        policy("usage: {scrape: {service: {name: gw, port: 'a b'}, metric: m}}", "spec.usage.scrape.service.port"),
        policy(
            &format!("usage: {{scrape: {{urls: [{}], metric: m}}}}", vec!["'http://gw/metrics'"; 65].join(", ")),
            "spec.usage.scrape.urls",
        ),
    ]
}

#[tokio::test]
async fn tenant_bounds_are_rejected_naming_the_field() {
    let _cp = control_plane_with_crds().await;
    let ns = namespace("tenant_bounds");
    let cases = tenant_invalid();
    let mut failures = Vec::new();
    for (i, (kind, spec, field)) in cases.iter().enumerate() {
        let out =
            kubectl_stdin(&["apply", "--server-side", "-n", &ns, "-f", "-"], &manifest(kind, &format!("b-{i}"), spec));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            failures.push(format!("case {i} ({spec:.120}) was accepted"));
        } else if !stderr.contains(field) {
            failures.push(format!("case {i} ({spec:.120}) rejected without naming {field:?}: {stderr:.600}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases:\n{}", failures.len(), cases.len(), failures.join("\n"));
    let left = kubectl_ok(&["get", "apikeys,ratelimitpolicies", "-n", &ns, "-o", "name"]);
    assert!(left.trim().is_empty(), "rejected objects were stored: {left}");
}

#[tokio::test]
async fn tenant_bounds_edges_are_accepted() {
    let _cp = control_plane_with_crds().await;
    let ns = namespace("tenant_edges");
    let full_labels = (0..64).map(|i| format!("l{i}: '{}'", "v".repeat(63))).collect::<Vec<_>>().join(", ");
    let scaling = |target: &str, extra: &str| {
        format!(
            "limit: {{requests: 1, period: 8760h}}\n  scaling: {{targetRef: {target}, maxReplicas: 3, capacityPerReplica: {{requests: 1, period: 1ms}}{extra}}}"
        )
    };
    let cases: Vec<(&str, String)> = vec![
        ("ApiKey", "rotation: {interval: 8760h, gracePeriod: 8759h59m59.999s, jitter: 24h}".into()),
        ("ApiKey", "rotation: {interval: 1h, gracePeriod: 59m59.999s}".into()),
        ("ApiKey", "rotation: {schedule: '* * * * *', gracePeriod: 8760h}".into()),
        ("ApiKey", "rotation: {interval: 999999ms, gracePeriod: 0s, jitter: 0s}".into()),
        ("ApiKey", "rotation: {interval: 8759h59m59.999s}".into()),
        ("ApiKey", "expiresAt: '2999-12-31T23:59:59Z'".into()),
        ("ApiKey", "expiresAt: '1970-01-01T00:00:00Z'\n  suspended: true".into()),
        ("ApiKey", format!("secretName: {}", ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(61)].join("."))),
        ("ApiKey", "secretName: web.api-key-1\n  rateLimitPolicyRef: {name: gold.tier-1}".into()),
        ("ApiKey", "rolloutRestart: [{kind: StatefulSet, name: web-0.db}]".into()),
        ("ApiKey", format!("secretTemplate: {{labels: {{{full_labels}}}}}")),
        (
            "ApiKey",
            format!("secretTemplate: {{annotations: {{'{}/{}': '{}'}}}}", "p".repeat(253), "n".repeat(63), "x".repeat(4096)),
        ),
        ("RateLimitPolicy", "limit: {requests: 1, period: 8760h}\n  usage: {interval: 24h}".into()),
        ("RateLimitPolicy", "limit: {requests: 1, period: 1ms}\n  usage: {interval: 1ms}".into()),
        (
            "RateLimitPolicy",
            "limit: {requests: 1, period: 1s}\n  temporaryOverrides: [{requests: 2, period: 8760h, until: '2999-12-31T23:59:59Z', reason: r}, {requests: 2, period: 1s, until: '1970-01-01T00:00:00Z', reason: old}]".into(),
        ),
        ("RateLimitPolicy", scaling("{apiVersion: apps/v1, kind: Deployment, name: gw}", ", scaleUp: {stabilizationWindow: 1h}, scaleDown: {stabilizationWindow: 0s}")),
        ("RateLimitPolicy", scaling("{apiVersion: v1, kind: ReplicationController, name: gw.v2}", "")),
        ("RateLimitPolicy", scaling("{apiVersion: gateway.example.com/v1beta1, kind: MyGateway2, name: gw}", "")),
        (
            "RateLimitPolicy",
            "limit: {requests: 1, period: 1s}\n  usage: {prometheus: {address: 'https://prom.monitoring.svc:9090/prefix/@x?q=a@b', query: up}}".into(),
        ),
        (
            "RateLimitPolicy",
            "limit: {requests: 1, period: 1s}\n  usage: {scrape: {urls: ['http://10.0.0.1:9090/metrics', 'https://[::1]:8443/m#f'], metric: m}}".into(),
        ),
    ];
    let mut failures = Vec::new();
    for (i, (kind, spec)) in cases.iter().enumerate() {
        let out =
            kubectl_stdin(&["apply", "--server-side", "-n", &ns, "-f", "-"], &manifest(kind, &format!("e-{i}"), spec));
        if !out.status.success() {
            failures.push(format!("case {i} ({spec:.160}): {}", String::from_utf8_lossy(&out.stderr)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Issue #14's rules: calendar windows (`1h`, `24h`, `1mo`; `1mo` and `timeZone` only under Calendar; overrides in
/// the limit's windows) and `enforce` (kinds, names, header names), rejected naming the field; their edges accepted.
#[tokio::test]
async fn quota_windows_and_enforce_are_checked_by_the_api_server() {
    let _cp = control_plane_with_crds().await;
    let ns = namespace("quota_enforce");
    let over = |period: &str| format!("[{{requests: 5, period: {period}, until: '2999-01-01T00:00:00Z', reason: r}}]");
    let invalid: Vec<(String, &str)> = vec![
        ("limit: {requests: 10, period: 1mo}".into(), "limit.period 1mo (a calendar month) needs limit.window: Calendar"),
        ("limit: {requests: 10, period: 2h, window: Calendar}".into(), "limit.period must be 1h, 24h or 1mo"),
        ("limit: {requests: 10, period: 1440m, window: Calendar}".into(), "limit.period must be 1h, 24h or 1mo"),
        ("limit: {requests: 10, period: 24h, timeZone: UTC}".into(), "limit.timeZone applies to limit.window: Calendar only"),
        ("limit: {requests: 10, period: 24h, window: Daily}".into(), "spec.limit.window"),
        ("limit: {requests: 10, period: 24h, window: Calendar, timeZone: '../etc/passwd'}".into(), "spec.limit.timeZone"),
        ("limit: {requests: 10, period: 2mo, window: Calendar}".into(), "spec.limit.period"),
        (format!("limit: {{requests: 10, period: 24h, window: Calendar}}\n  temporaryOverrides: {}", over("1h")), "temporaryOverrides[].period"),
        (format!("limit: {{requests: 10, period: 1m}}\n  temporaryOverrides: {}", over("1mo")), "temporaryOverrides[].period"),
        ("limit: {requests: 10, period: 1m}\n  enforce: {targetRef: {kind: Service, name: web}, clientIdHeader: x-client-id}".into(), "spec.enforce.targetRef.kind"),
        ("limit: {requests: 10, period: 1m}\n  enforce: {targetRef: {kind: HTTPRoute, name: Web_Route}, clientIdHeader: x-client-id}".into(), "spec.enforce.targetRef.name"),
        ("limit: {requests: 10, period: 1m}\n  enforce: {targetRef: {kind: HTTPRoute, name: web}, clientIdHeader: 'x client'}".into(), "spec.enforce.clientIdHeader"),
        ("limit: {requests: 10, period: 1m}\n  enforce: {targetRef: {kind: HTTPRoute, name: web}}".into(), "clientIdHeader"),
        ("limit: {requests: 10, period: 1m}\n  enforce: {targetRef: {kind: HTTPRoute, name: web}, clientIdHeader: x-id, type: Cluster}".into(), "spec.enforce.type"),
        ("limit: {requests: 10, period: 1m}\n  enforce: {gateway: Kong, targetRef: {kind: HTTPRoute, name: web}, clientIdHeader: x-id}".into(), "spec.enforce.gateway"),
    ];
    let mut failures = Vec::new();
    for (i, (spec, field)) in invalid.iter().enumerate() {
        let out = kubectl_stdin(
            &["apply", "--server-side", "-n", &ns, "-f", "-"],
            &manifest("RateLimitPolicy", &format!("q-{i}"), spec),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            failures.push(format!("case {i} ({spec}) was accepted"));
        } else if !stderr.contains(field) {
            failures.push(format!("case {i} ({spec}) rejected without naming {field:?}: {stderr:.600}"));
        }
    }
    let valid: Vec<String> = vec![
        "limit: {requests: 10000, period: 24h, window: Calendar, timeZone: Europe/Berlin}".into(),
        "limit: {requests: 1, period: 1mo, window: Calendar}".into(),
        "limit: {requests: 60, period: 1h, window: Calendar, timeZone: America/Argentina/Buenos_Aires}".into(),
        "limit: {requests: 60, period: 1h, window: Rolling}".into(),
        format!("limit: {{requests: 10, period: 1mo, window: Calendar}}\n  temporaryOverrides: {}", over("1mo")),
        "limit: {requests: 10, period: 1m}\n  enforce: {targetRef: {kind: HTTPRoute, name: web.v1}, clientIdHeader: x-client-id}".into(),
        "limit: {requests: 10, period: 24h, window: Calendar}\n  enforce: {gateway: EnvoyGateway, targetRef: {kind: Gateway, name: eg}, clientIdHeader: X-Client-ID, type: Local}".into(),
    ];
    for (i, spec) in valid.iter().enumerate() {
        let out = kubectl_stdin(
            &["apply", "--server-side", "-n", &ns, "-f", "-"],
            &manifest("RateLimitPolicy", &format!("ok-{i}"), spec),
        );
        if !out.status.success() {
            failures.push(format!("valid case {i} ({spec}): {}", String::from_utf8_lossy(&out.stderr)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
