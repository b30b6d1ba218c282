//! The leak scan's tools: every key value the operator wrote (collected by polling the Secrets), a scanner for any
//! 12-character piece of them, and the key ids the operator's events announce (to prove the collection complete).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use serde_json::Value;

use crate::common::kube::{eventually, get_json, key_id};

/// Every key value seen so far, from polling the Secrets' `api-key` and `previous-api-key`.
pub type Seen = Arc<Mutex<BTreeSet<String>>>;

pub fn record(seen: &Seen, secrets: &[Secret]) {
    let mut seen = seen.lock().expect("seen");
    for s in secrets {
        for k in ["api-key", "previous-api-key"] {
            if let Some(v) = s.data.as_ref().and_then(|d| d.get(k))
                && let Ok(text) = String::from_utf8(v.0.clone())
            {
                seen.insert(text);
            }
        }
    }
}

/// Polls the namespace's Secrets every 100 ms until `stop` is set.
pub fn poll_keys(
    client: kube::Client,
    ns: &str,
    seen: Seen,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    let api: Api<Secret> = Api::namespaced(client, ns);
    tokio::spawn(async move {
        let mut polls = 0u64;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            if let Ok(list) = api.list(&ListParams::default()).await {
                record(&seen, &list.items);
                polls += 1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        polls
    })
}

/// Every 12-byte piece of every key, and of every key's base64 (a Secret's data as the API shows it), each with the
/// fingerprint of its key: what a report may show.
pub struct Scanner {
    owners: HashMap<[u8; PIECE], String>,
}

pub const PIECE: usize = 12;

impl Scanner {
    pub fn new(keys: &BTreeSet<String>) -> Scanner {
        use base64::Engine;
        let mut owners = HashMap::new();
        for key in keys {
            let b64 = base64::engine::general_purpose::STANDARD.encode(key);
            for form in [key.as_bytes(), b64.as_bytes()] {
                for w in form.windows(PIECE) {
                    let piece: [u8; PIECE] = w.try_into().expect("12 bytes");
                    owners.entry(piece).or_insert_with(|| key_id(key));
                }
            }
        }
        Scanner { owners }
    }

    /// The fingerprints of the keys a piece of which occurs in `haystack`, without the pieces themselves.
    pub fn hits(&self, haystack: &[u8]) -> BTreeSet<String> {
        haystack
            .windows(PIECE)
            .filter_map(|w| {
                let piece: [u8; PIECE] = w.try_into().ok()?;
                self.owners.get(&piece).cloned()
            })
            .collect()
    }
}

/// 12-hex-character key ids named in the notes of the events that announce a new key.
pub fn announced_key_ids(events_json: &str) -> BTreeSet<String> {
    let v: Value = serde_json::from_str(events_json).expect("events json");
    let mut ids = BTreeSet::new();
    for e in v["items"].as_array().into_iter().flatten() {
        let reason = e["reason"].as_str().unwrap_or("");
        if !["Issued", "Rotated", "KeyRegenerated", "KeyTampered"].contains(&reason) {
            continue;
        }
        let note = e["message"].as_str().or(e["note"].as_str()).unwrap_or("");
        // "issued key <id> ...", "rotated to key <id>...", "a NEW key <id>", "replaced by key <id>": the first id.
        let words: Vec<&str> = note.split(|c: char| !c.is_ascii_alphanumeric()).collect();
        if let Some(id) =
            words.windows(2).find(|w| w[0] == "key" && w[1].len() == 12 && w[1].chars().all(|c| c.is_ascii_hexdigit()))
        {
            ids.insert(id[1].to_string());
        }
    }
    ids
}

/// Waits until the poller has seen the key the ApiKey's status names, before the test replaces or removes it.
pub async fn settle(seen: &Seen, ns: &str, name: &str) {
    eventually(30, &format!("the current key of {name} collected"), || {
        let id = get_json(ns, &format!("apikey/{name}"))?["status"]["keyId"].as_str()?.to_string();
        seen.lock().expect("seen").iter().any(|k| key_id(k) == id).then_some(())
    })
    .await;
}
