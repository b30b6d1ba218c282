//! Every manifest in examples/ is valid for the Rust types: each Keyward object deserializes and serializes back
//! without losing a field (an unknown or misspelt field would be dropped and fail the comparison).

use std::path::Path;

use keyward::api::{ApiKey, RateLimitPolicy};
use serde::Deserialize;

fn documents() -> Vec<(String, serde_json::Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut docs = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir).expect("examples/").map(|e| e.expect("entry").path()).collect();
    files.sort();
    // NB: examples/ also holds Rust examples (the traffic simulator); kubectl, too, reads only manifests.
    for path in files.into_iter().filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml")) {
        let text = std::fs::read_to_string(&path).expect("read example");
        for doc in serde_norway::Deserializer::from_str(&text) {
            let value = serde_json::Value::deserialize(doc).expect("valid YAML");
            docs.push((path.display().to_string(), value));
        }
    }
    docs
}

fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(file: &str, value: &serde_json::Value) {
    let typed: T = serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
    let back = serde_json::to_value(&typed).expect("serialize");
    assert_eq!(&back, value, "{file}: a field did not survive the Rust types");
}

#[test]
fn examples_match_the_rust_types() {
    let (mut keys, mut policies) = (0, 0);
    for (file, doc) in documents() {
        match doc["kind"].as_str() {
            Some("ApiKey") => {
                round_trip::<ApiKey>(&file, &doc);
                keys += 1;
            }
            Some("RateLimitPolicy") => {
                round_trip::<RateLimitPolicy>(&file, &doc);
                policies += 1;
            }
            _ => {}
        }
    }
    assert!(keys >= 1 && policies >= 1, "examples/ needs at least one of each kind ({keys}, {policies})");
}
