//! The leak scan's tools: every key value the operator wrote (collected by polling the Secrets), a scanner for any
//! 12-character piece of them in every encoding a key could take on its way out (the key itself, base64 in both
//! alphabets with and without padding at each of the three alignments inside a larger blob, hex in both cases, and
//! JSON or debug byte lists such as `[107, 119, ...]`), the self-check that plants each form and must find it, and
//! the key ids the operator's events announce (to prove a collection complete).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use serde_json::Value;

use super::kube::{decode, eventually, get_json, key_id};

/// The unit of a leak: this many consecutive characters of a key.
pub const PIECE: usize = 12;

/// Every key value seen so far, from polling the Secrets' `api-key` and `previous-api-key`.
pub type Seen = Arc<Mutex<BTreeSet<String>>>;

/// Adds the keys held by `secrets` (current and previous entries) to `seen`.
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

/// Adds every key currently in the namespace's Secrets (read with kubectl) to `seen`.
pub fn keys_in(ns: &str, seen: &mut BTreeSet<String>) {
    let list = get_json(ns, "secrets").expect("secrets");
    for s in list["items"].as_array().into_iter().flatten() {
        for k in ["api-key", "previous-api-key"] {
            if let Some(v) = decode(s, k) {
                seen.insert(v);
            }
        }
    }
}

/// Polls the namespace's Secrets every 100 ms until `stop` is set; returns the number of polls.
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

/// The encodings the scanner knows; each is planted by the self-check.
const FORMS: [&str; 10] = [
    "raw",
    "base64",
    "base64 unpadded",
    "base64url",
    "base64url unpadded",
    "base64 in a blob",
    "base64url in a blob",
    "hex",
    "HEX",
    "byte list",
];

/// Finds pieces of known keys in any text, and reports only their fingerprints.
pub struct Scanner {
    /// Every piece of every encoded form of every key, with the fingerprint of its key.
    owners: HashMap<Vec<u8>, String>,
    /// The lengths of the pieces in `owners`.
    lengths: BTreeSet<usize>,
}

/// The stable part of the base64 of `key` placed `align` bytes into a larger blob: the groups of four characters
/// that depend on key bytes only (the first and last groups also hold bytes of whatever surrounds the key).
fn embedded_base64(key: &[u8], align: usize, engine: &impl Engine) -> Vec<u8> {
    let mut blob = vec![0xA5u8; align];
    blob.extend_from_slice(key);
    let text = engine.encode(&blob).into_bytes();
    let first = if align == 0 { 0 } else { 4 };
    let last = (blob.len() / 3) * 4;
    if last <= first { Vec::new() } else { text[first..last].to_vec() }
}

/// Each encoded form of `key` with the length of a piece in that form (the length that holds 12 key characters,
/// give or take one base64 group).
fn forms(key: &str) -> Vec<(Vec<u8>, usize)> {
    let k = key.as_bytes();
    let mut out = vec![(k.to_vec(), PIECE)];
    // 12 bytes are 16 base64 characters; a window of 16 characters anywhere holds at least 11 key bytes.
    for full in [STANDARD.encode(k), STANDARD_NO_PAD.encode(k), URL_SAFE.encode(k), URL_SAFE_NO_PAD.encode(k)] {
        out.push((full.into_bytes(), 16));
    }
    for align in 0..3 {
        out.push((embedded_base64(k, align, &STANDARD), 16));
        out.push((embedded_base64(k, align, &URL_SAFE), 16));
    }
    let hex: String = k.iter().map(|b| format!("{b:02x}")).collect();
    out.push((hex.to_ascii_uppercase().into_bytes(), 2 * PIECE));
    out.push((hex.into_bytes(), 2 * PIECE));
    out
}

impl Scanner {
    /// A scanner for `keys`.
    pub fn new(keys: &BTreeSet<String>) -> Scanner {
        let mut owners = HashMap::new();
        let mut lengths = BTreeSet::new();
        for key in keys {
            let id = key_id(key);
            for (form, len) in forms(key) {
                lengths.insert(len);
                for w in form.windows(len) {
                    owners.entry(w.to_vec()).or_insert_with(|| id.clone());
                }
            }
        }
        Scanner { owners, lengths }
    }

    /// The fingerprints of the keys a piece of which occurs in `haystack` (in any known encoding), without the pieces.
    pub fn hits(&self, haystack: &[u8]) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        for &len in &self.lengths {
            found.extend(haystack.windows(len).filter_map(|w| self.owners.get(w).cloned()));
        }
        // Byte lists (`[107,119,95,...]`, `[107, 119, ...]`): each run of numbers below 256 read back as bytes.
        for run in byte_runs(haystack) {
            found.extend(run.windows(PIECE).filter_map(|w| self.owners.get(w).cloned()));
        }
        found
    }

    /// Plants every form of a 12-character piece of `key` in surrounding text and panics unless each is found; also
    /// checks that 11 characters are not a hit. Run it in every test that relies on the scanner.
    pub fn self_check(&self, key: &str) {
        assert!(key.len() >= 3 * PIECE, "the self-check needs a key of at least {} characters", 3 * PIECE);
        let piece = &key.as_bytes()[PIECE..2 * PIECE + 2];
        let mut missed = Vec::new();
        for (name, planted) in planted_forms(piece) {
            let text = [b"level=debug msg=\"".as_slice(), &planted, b"\" done"].concat();
            if self.hits(&text).is_empty() {
                missed.push(name);
            }
        }
        assert!(missed.is_empty(), "the leak scanner misses a planted piece of a key encoded as: {missed:?}");
        let planted: BTreeSet<&str> = planted_forms(piece).iter().map(|(n, _)| *n).collect();
        assert_eq!(planted, FORMS.into_iter().collect(), "the self-check plants every known form");
        let near_miss = format!("{}#{}", &key[..PIECE - 1], &key[PIECE..2 * PIECE - 1]);
        assert!(self.hits(near_miss.as_bytes()).is_empty(), "11 characters are not a hit");
        assert!(self.hits(b"nothing to see here, 0123456789abcdef [1, 2, 3]").is_empty(), "clean text is a hit");
    }
}

/// Every form the scanner must recognise, for a piece of a key: named as in [`FORMS`].
fn planted_forms(piece: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let mut out = vec![("raw", piece.to_vec())];
    out.push(("base64", STANDARD.encode(piece).into_bytes()));
    out.push(("base64 unpadded", STANDARD_NO_PAD.encode(piece).into_bytes()));
    out.push(("base64url", URL_SAFE.encode(piece).into_bytes()));
    out.push(("base64url unpadded", URL_SAFE_NO_PAD.encode(piece).into_bytes()));
    for align in 0..3 {
        // The piece inside a larger binary blob, `align` bytes after a 3-byte boundary.
        let blob = [&b"\xff\xfe\xfd\xfc\xfb\xfa"[..3 + align], piece, b"\x00\x01\x02\x03"].concat();
        out.push(("base64 in a blob", STANDARD.encode(&blob).into_bytes()));
        out.push(("base64url in a blob", URL_SAFE_NO_PAD.encode(&blob).into_bytes()));
    }
    let hex: String = piece.iter().map(|b| format!("{b:02x}")).collect();
    out.push(("HEX", hex.to_ascii_uppercase().into_bytes()));
    out.push(("hex", hex.into_bytes()));
    let numbers: Vec<String> = piece.iter().map(u8::to_string).collect();
    out.push(("byte list", format!("[{}]", numbers.join(",")).into_bytes()));
    out.push(("byte list", format!("{:?}", piece).into_bytes()));
    out
}

/// Runs of decimal numbers below 256 separated by commas and spaces (a JSON array or a debug print of bytes), read
/// back as bytes; runs shorter than a piece are dropped.
fn byte_runs(h: &[u8]) -> Vec<Vec<u8>> {
    fn flush(run: &mut Vec<u8>, runs: &mut Vec<Vec<u8>>) {
        if run.len() >= PIECE {
            runs.push(std::mem::take(run));
        }
        run.clear();
    }
    let skip_spaces = |mut j: usize| {
        while j < h.len() && h[j] == b' ' {
            j += 1;
        }
        j
    };
    let (mut runs, mut run) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < h.len() {
        if !h[i].is_ascii_digit() {
            flush(&mut run, &mut runs);
            i += 1;
            continue;
        }
        let start = i;
        while i < h.len() && h[i].is_ascii_digit() {
            i += 1;
        }
        match std::str::from_utf8(&h[start..i]).ok().and_then(|s| s.parse::<u8>().ok()) {
            Some(n) => run.push(n),
            None => {
                flush(&mut run, &mut runs);
                continue;
            }
        }
        // The separator: one comma with optional spaces around it; anything else ends the run.
        let j = skip_spaces(i);
        if j < h.len() && h[j] == b',' {
            i = skip_spaces(j + 1);
        } else {
            flush(&mut run, &mut runs);
            i = j;
        }
    }
    flush(&mut run, &mut runs);
    runs
}

/// Scans each named source and returns one line per source with hits (fingerprints only, never key material).
pub fn scan(scanner: &Scanner, sources: &[(&str, Vec<u8>)]) -> Vec<String> {
    let mut report = Vec::new();
    for (source, text) in sources {
        let hits = scanner.hits(text);
        eprintln!("leak scan: {source}: {} bytes, {} keys hit", text.len(), hits.len());
        if !hits.is_empty() {
            report.push(format!("{source}: pieces of {} key(s) found (key ids {:?})", hits.len(), hits));
        }
    }
    report
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
