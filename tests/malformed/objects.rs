//! The malformed objects of the test, and the CRD swaps that let the API server store them: Keyward's CRDs
//! with a loose `spec` schema (the state of a cluster before a schema tightening), then the real ones again.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::common::kube::{apikey, eventually};
use crate::common::kubectl_stdin;
use crate::common::operator;

/// `keyward crd`, as the CRD objects.
fn real_crds() -> Vec<Value> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyward")).arg("crd").output().expect("keyward crd");
    assert!(out.status.success(), "keyward crd: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf8");
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("CRD yaml"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Applies Keyward's CRDs with every `spec` schema replaced by "any object": the state of a cluster before a schema
/// tightening. Waits until the API server stores what the real schema refuses.
pub async fn loosen_crds(ns: &str) {
    for mut crd in real_crds() {
        for v in crd["spec"]["versions"].as_array_mut().expect("versions") {
            let schema = &mut v["schema"]["openAPIV3Schema"];
            schema["properties"]["spec"] = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
            // The rules on the whole object (secretName immutable) read spec fields a loose schema has no more.
            if let Some(root) = schema.as_object_mut() {
                root.remove("x-kubernetes-validations");
            }
        }
        let out = kubectl_stdin(&["apply", "--server-side", "--force-conflicts", "-f", "-"], &crd.to_string());
        assert!(out.status.success(), "loosen CRD: {}", String::from_utf8_lossy(&out.stderr));
    }
    let probe = apikey("probe-loose", "  rotation: {interval: soon}");
    eventually(30, "the loose schema in force", || {
        kubectl_stdin(&["create", "--dry-run=server", "-n", ns, "-f", "-"], &probe).status.success().then_some(())
    })
    .await;
}

/// `keyward crd | kubectl apply --server-side --force-conflicts -f -`; waits until the real schema is in force.
pub async fn restore_crds(ns: &str) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyward")).arg("crd").output().expect("keyward crd");
    let yaml = String::from_utf8(out.stdout).expect("utf8");
    let out = kubectl_stdin(&["apply", "--server-side", "--force-conflicts", "-f", "-"], &yaml);
    assert!(out.status.success(), "restore CRDs: {}", String::from_utf8_lossy(&out.stderr));
    let probe = apikey("probe-strict", "  rotation: {interval: soon}");
    eventually(30, "the real schema in force", || {
        (!kubectl_stdin(&["create", "--dry-run=server", "-n", ns, "-f", "-"], &probe).status.success()).then_some(())
    })
    .await;
}

/// `kubectl create` of a manifest (no server-side apply: the loose schema has no field structure to merge by).
pub fn create(ns: &str, yaml: &str) {
    let out = kubectl_stdin(&["create", "-n", ns, "-f", "-"], yaml);
    assert!(out.status.success(), "create failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// What the test stores with the schema loosened, and what the operator must say about each.
pub struct Bad {
    pub kind: &'static str,
    pub name: &'static str,
    pub spec: &'static str,
    /// The field the InvalidSpec message names; None when the object does not even deserialize into Keyward's
    /// types (then: a warning in the log, nothing else blocked).
    pub field: Option<&'static str>,
}

pub const BAD: &[Bad] = &[
    Bad {
        kind: "ApiKey",
        name: "bad-interval",
        spec: "  rotation: {interval: soon}",
        field: Some("rotation.interval"),
    },
    Bad { kind: "ApiKey", name: "bad-zero", spec: "  rotation: {interval: 0s}", field: Some("rotation.interval") },
    Bad {
        kind: "ApiKey",
        name: "bad-cron",
        spec: "  rotation: {schedule: \"61 * * * *\"}",
        field: Some("rotation.schedule"),
    },
    Bad {
        kind: "ApiKey",
        name: "bad-grace",
        spec: "  rotation: {interval: 1h, gracePeriod: 2 days}",
        field: Some("rotation.gracePeriod"),
    },
    Bad {
        kind: "ApiKey",
        name: "bad-zone",
        spec: "  rotation: {schedule: \"0 3 * * *\", timeZone: Mars/Olympus_Mons}",
        field: Some("rotation.timeZone"),
    },
    Bad {
        kind: "ApiKey",
        name: "bad-entropy",
        spec: "  format: {entropyBytes: 4}",
        field: Some("format.entropyBytes"),
    },
    Bad { kind: "ApiKey", name: "bad-type", spec: "  rotation: weekly", field: None },
    Bad { kind: "ApiKey", name: "bad-enum", spec: "  format: {encoding: base32}", field: None },
    Bad { kind: "ApiKey", name: "bad-bool", spec: "  suspended: \"yes please\"", field: None },
    Bad {
        kind: "RateLimitPolicy",
        name: "bad-period",
        spec: "  limit: {requests: 10, period: 0s}",
        field: Some("limit.period"),
    },
    Bad {
        kind: "RateLimitPolicy",
        name: "bad-poll",
        spec: "  limit: {requests: 10, period: 1m}\n  usage: {interval: soon}",
        field: Some("usage.interval"),
    },
    Bad { kind: "RateLimitPolicy", name: "bad-limit", spec: "  limit: lots", field: None },
];

pub fn short(kind: &str) -> &'static str {
    if kind == "ApiKey" { "apikey" } else { "rlp" }
}

/// A WARN line of the operator's log that names `name`.
pub fn warned_about(op: &operator::Operator, name: &str) -> bool {
    op.log_text().lines().any(|l| l.contains("WARN") && l.contains(name))
}
