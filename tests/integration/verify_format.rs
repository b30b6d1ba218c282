//! `keyward verify-format` on real keys: a key read from the Secret the operator wrote passes (with and without
//! `--prefix`), a corrupted, truncated or wrongly prefixed one fails with a non-zero exit, and the command never
//! echoes the key.

use crate::common::kube::{apikey, apply, decode, eventually, get_json, issued};
use crate::common::leak::Scanner;
use crate::common::{control_plane_with_crds, keyward, namespace, operator};

/// Runs `keyward verify-format ARGS` with `key` on standard input; (success, everything it printed).
fn verify(key: &str, args: &[&str]) -> (bool, Vec<u8>) {
    let mut all = vec!["verify-format"];
    all.extend_from_slice(args);
    let out = keyward(&all, &format!("{key}\n"));
    (out.status.success(), [out.stdout, out.stderr].concat())
}

/// `key` with the character at `at` replaced by another of the same alphabet.
fn corrupt(key: &str, at: usize) -> String {
    let mut chars: Vec<char> = key.chars().collect();
    chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

#[tokio::test]
async fn verify_format_accepts_an_issued_key_and_refuses_a_corrupted_one() {
    control_plane_with_crds().await;
    let ns = namespace("verify_format");
    let _op = operator::scoped(&ns);
    apply(&ns, &apikey("live", "  format: {prefix: kw_live_}"));
    apply(&ns, &apikey("url", "  format: {encoding: base64url, entropyBytes: 48}"));
    apply(&ns, &apikey("hex", "  format: {prefix: kw_hex_, encoding: hex}"));
    let mut output = Vec::new();
    let mut keys = std::collections::BTreeSet::new();
    for (name, prefix) in [("live", "kw_live_"), ("url", ""), ("hex", "kw_hex_")] {
        eventually(60, &format!("{name} issued"), || issued(&ns, name)).await;
        let key = decode(&get_json(&ns, &format!("secret/{name}")).expect("secret"), "api-key").expect("key");
        keys.insert(key.clone());
        let (ok, out) = verify(&key, &[]);
        assert!(ok, "{name}: the issued key fails verify-format: {}", String::from_utf8_lossy(&out));
        output.extend(out);
        if !prefix.is_empty() {
            let (ok, out) = verify(&key, &["--prefix", prefix]);
            assert!(ok, "{name}: the issued key fails --prefix {prefix}: {}", String::from_utf8_lossy(&out));
            output.extend(out);
            let (ok, out) = verify(&key, &["--prefix", "kw_test_"]);
            assert!(!ok, "{name}: accepted with the wrong prefix");
            output.extend(out);
        }
        // One character changed, in the body and in the checksum; and the key cut short.
        for at in [prefix.len() + 3, key.len() - 2] {
            let (ok, out) = verify(&corrupt(&key, at), &[]);
            assert!(!ok, "{name}: a key with character {at} changed passes verify-format");
            output.extend(out);
        }
        let (ok, out) = verify(&key[..key.len() - 1], &[]);
        assert!(!ok, "{name}: a truncated key passes verify-format");
        output.extend(out);
    }
    // What it printed holds no piece of any key it was given.
    let scanner = Scanner::new(&keys);
    let hits = scanner.hits(&output);
    assert!(hits.is_empty(), "verify-format echoed pieces of keys {hits:?}");
}
