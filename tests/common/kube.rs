//! Small kubectl-based readers shared by the lifecycle tests.

use std::time::{Duration, Instant};

use serde_json::Value;

/// `kubectl get WHAT -n NS -o json`, or None if it does not exist.
pub fn get_json(ns: &str, what: &str) -> Option<Value> {
    let out = super::kubectl(&["get", what, "-n", ns, "-o", "json"]);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).expect("json"))
}

/// Polls `f` every 200 ms until it returns Some, or panics after `secs` with `what`.
pub async fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {secs}s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A data entry of a Secret, decoded.
pub fn decode(secret: &Value, key: &str) -> Option<String> {
    use base64::Engine;
    let b64 = secret["data"][key].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64");
    Some(String::from_utf8(bytes).expect("utf8"))
}

/// The keyId of a key: the first 12 hex characters of its SHA-256.
pub fn key_id(key: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes()).iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// Status and reason of the Ready condition.
pub fn ready_reason(ak: &Value) -> Option<(String, String)> {
    let c = ak["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")?;
    Some((c["status"].as_str()?.to_string(), c["reason"].as_str()?.to_string()))
}

/// A manifest of one of Keyward's kinds (`ApiKey`, `RateLimitPolicy`) with the given (indented) spec lines.
pub fn manifest(kind: &str, name: &str, spec: &str) -> String {
    let spec = if spec.is_empty() { "  {}" } else { spec };
    format!("apiVersion: keyward.dev/v1alpha1\nkind: {kind}\nmetadata:\n  name: {name}\nspec:\n{spec}\n")
}

/// An ApiKey manifest with the given (indented) spec lines.
pub fn apikey(name: &str, spec: &str) -> String {
    manifest("ApiKey", name, spec)
}

/// The ApiKey when it is Ready (`KeyIssued`), its Secret holds a current key, and Secret and status name the same
/// key: a key that is issued and settled.
pub fn issued(ns: &str, name: &str) -> Option<Value> {
    let ak = get_json(ns, &format!("apikey/{name}"))?;
    if ready_reason(&ak) != Some(("True".into(), "KeyIssued".into())) {
        return None;
    }
    let secret_name = ak["spec"]["secretName"].as_str().unwrap_or(name).to_string();
    let secret = get_json(ns, &format!("secret/{secret_name}"))?;
    let in_secret = key_id(&decode(&secret, "api-key")?);
    (ak["status"]["keyId"].as_str() == Some(in_secret.as_str())).then_some(ak)
}

/// `status.rotationCount` of an ApiKey object (0 when absent).
pub fn rotation_count(ak: &Value) -> i64 {
    ak["status"]["rotationCount"].as_i64().unwrap_or(0)
}

/// `kubectl apply --server-side` of a manifest into a namespace.
pub fn apply(ns: &str, yaml: &str) {
    let out = super::kubectl_stdin(&["apply", "--server-side", "-n", ns, "-f", "-"], yaml);
    assert!(out.status.success(), "apply failed: {}\n{yaml}", String::from_utf8_lossy(&out.stderr));
}

/// The condition `type_` of an object's status: (status, reason, message).
pub fn condition(obj: &Value, type_: &str) -> Option<(String, String, String)> {
    let c = obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)?;
    Some((c["status"].as_str()?.into(), c["reason"].as_str()?.into(), c["message"].as_str().unwrap_or("").into()))
}

/// Whether the condition `type_` has the status `status` ("True", "False").
pub fn is(obj: &Value, type_: &str, status: &str) -> bool {
    condition(obj, type_).is_some_and(|(s, ..)| s == status)
}

/// Reasons and messages of the events on `kind/name`, in order.
pub fn events(ns: &str, kind: &str, name: &str) -> Vec<(String, String)> {
    let sel = format!("involvedObject.kind={kind},involvedObject.name={name}");
    let out = super::kubectl_ok(&["get", "events", "-n", ns, "--field-selector", &sel, "-o", "json"]);
    let v: Value = serde_json::from_str(&out).expect("events json");
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (e["reason"].as_str().unwrap_or("").to_string(), e["message"].as_str().unwrap_or("").to_string()))
        .collect()
}

/// Whether an event with `reason` was published on `kind/name`.
pub fn has_event(ns: &str, kind: &str, name: &str, reason: &str) -> bool {
    events(ns, kind, name).iter().any(|(r, _)| r == reason)
}
