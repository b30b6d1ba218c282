//! The seal: a keyed MAC (HMAC-SHA-256) over everything the Secret says about its key — the bookkeeping in its
//! annotations and the key material in its data — with a key only the operator holds. The public fingerprint
//! (`keyward.dev/key-id`, `status.keyId`) can be recomputed by anyone who can write the Secret, so a consistent edit
//! of a key and its fingerprint, or of a timestamp, went unnoticed; the seal cannot be recomputed without the
//! operator's key. Pure; the key is loaded by the operator (`operator::seal`).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::book::Book;
use crate::keys::KeyMaterial;

/// Annotation that carries the seal.
pub const SEAL: &str = "keyward.dev/seal";

/// Length of a seal key in bytes.
pub const KEY_BYTES: usize = 32;

/// The operator's seal keys: the current one seals, the previous one (during a key rotation) is still accepted.
#[derive(Clone)]
pub struct Sealer {
    current: Zeroizing<Vec<u8>>,
    previous: Option<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

/// What a seal says about a Secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Sealed by the current key: nothing was changed behind Keyward's back.
    Valid,
    /// Sealed by the previous key: unchanged, and worth sealing again with the current key.
    ValidUnderPrevious,
    /// No seal at all (written before seals existed, or stripped).
    Missing,
    /// A seal that matches neither key: the Secret was edited.
    Invalid,
}

/// What a seal covers.
pub struct Sealed<'a> {
    /// The ApiKey's uid and the Secret's name: a Secret copied to another key or name does not carry its seal along.
    pub uid: &'a str,
    pub secret: &'a str,
    pub book: &'a Book,
    pub current: Option<&'a KeyMaterial>,
    pub previous: Option<&'a KeyMaterial>,
}

impl Sealer {
    /// Seal keys from their bytes; each must be at least [`KEY_BYTES`] long.
    pub fn new(current: Vec<u8>, previous: Option<Vec<u8>>) -> Option<Self> {
        let ok = |k: &Vec<u8>| k.len() >= KEY_BYTES;
        if !ok(&current) || previous.as_ref().is_some_and(|p| !ok(p)) {
            return None;
        }
        Some(Sealer { current: Zeroizing::new(current), previous: previous.map(Zeroizing::new) })
    }

    /// A random key that lives as long as this process (tests, and a context not given the operator's key).
    pub fn ephemeral() -> Self {
        let mut key = vec![0u8; KEY_BYTES];
        // NB: getrandom fails only where the OS has no random source, where key generation fails the same way.
        let _ = getrandom::fill(&mut key);
        Sealer { current: Zeroizing::new(key), previous: None }
    }

    /// The seal of `s` under the current key (base64url, no padding).
    pub fn seal(&self, s: &Sealed<'_>) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac(&self.current, s))
    }

    /// Checks `seal` (the annotation's value, if any) against `s`.
    pub fn verify(&self, s: &Sealed<'_>, seal: Option<&str>) -> Verdict {
        use base64::Engine;
        let Some(seal) = seal else { return Verdict::Missing };
        let Ok(given) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(seal) else { return Verdict::Invalid };
        let matches = |key: &[u8]| {
            let mut m = keyed(key);
            feed(&mut m, s);
            m.verify_slice(&given).is_ok()
        };
        if matches(&self.current) {
            Verdict::Valid
        } else if self.previous.as_deref().is_some_and(|p| matches(p)) {
            Verdict::ValidUnderPrevious
        } else {
            Verdict::Invalid
        }
    }
}

fn keyed(key: &[u8]) -> Hmac<Sha256> {
    // NB: HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
}

fn mac(key: &[u8], s: &Sealed<'_>) -> Vec<u8> {
    let mut m = keyed(key);
    feed(&mut m, s);
    m.finalize().into_bytes().to_vec()
}

/// Feeds every covered field, each length-prefixed so that no two different Secrets give the same input.
fn feed(m: &mut Hmac<Sha256>, s: &Sealed<'_>) {
    let b = s.book;
    let ts = |t: Option<jiff::Timestamp>| t.map(|t| t.as_second().to_string()).unwrap_or_default();
    let (rotated_at, previous_expires_at, count) =
        (ts(b.rotated_at), ts(b.previous_expires_at), b.rotation_count.to_string());
    let fields: [&[u8]; 10] = [
        b"keyward-seal-v1",
        s.uid.as_bytes(),
        s.secret.as_bytes(),
        b.key_id.as_deref().unwrap_or_default().as_bytes(),
        rotated_at.as_bytes(),
        b.previous_key_id.as_deref().unwrap_or_default().as_bytes(),
        previous_expires_at.as_bytes(),
        count.as_bytes(),
        b.rotate_request.as_deref().unwrap_or_default().as_bytes(),
        b"material",
    ];
    for f in fields {
        m.update(&(f.len() as u64).to_be_bytes());
        m.update(f);
    }
    for k in [s.current, s.previous] {
        let bytes = k.map(KeyMaterial::as_bytes).unwrap_or_default();
        m.update(&(bytes.len() as u64).to_be_bytes());
        m.update(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{OsRandom, generate, key_id};

    fn book(key: &KeyMaterial) -> Book {
        Book {
            key_id: Some(key_id(key)),
            rotated_at: Some("2026-01-01T00:00:00Z".parse().expect("ts")),
            rotation_count: 2,
            ..Book::default()
        }
    }

    #[test]
    fn any_change_to_what_is_covered_breaks_the_seal() {
        let sealer = Sealer::ephemeral();
        let key = generate(&Default::default(), &mut OsRandom).expect("key");
        let other = generate(&Default::default(), &mut OsRandom).expect("key");
        let b = book(&key);
        let s = Sealed { uid: "u", secret: "s", book: &b, current: Some(&key), previous: None };
        let seal = sealer.seal(&s);
        assert_eq!(sealer.verify(&s, Some(&seal)), Verdict::Valid);
        assert_eq!(sealer.verify(&s, None), Verdict::Missing);
        assert_eq!(sealer.verify(&s, Some("not base64!")), Verdict::Invalid);
        // A consistent edit of key and fingerprint.
        let forged = Book { key_id: Some(key_id(&other)), ..b.clone() };
        let edit = Sealed { book: &forged, current: Some(&other), ..s };
        assert_eq!(sealer.verify(&edit, Some(&seal)), Verdict::Invalid);
        // A planted previous key, a later rotation time, another count, another Secret or ApiKey.
        let planted = Sealed { previous: Some(&other), ..s };
        assert_eq!(sealer.verify(&planted, Some(&seal)), Verdict::Invalid);
        let later = Book { rotated_at: Some("2099-01-01T00:00:00Z".parse().expect("ts")), ..b.clone() };
        assert_eq!(sealer.verify(&Sealed { book: &later, ..s }, Some(&seal)), Verdict::Invalid);
        let count = Book { rotation_count: 3, ..b.clone() };
        assert_eq!(sealer.verify(&Sealed { book: &count, ..s }, Some(&seal)), Verdict::Invalid);
        assert_eq!(sealer.verify(&Sealed { secret: "t", ..s }, Some(&seal)), Verdict::Invalid);
        assert_eq!(sealer.verify(&Sealed { uid: "v", ..s }, Some(&seal)), Verdict::Invalid);
        // Another operator key cannot verify it.
        assert_eq!(Sealer::ephemeral().verify(&s, Some(&seal)), Verdict::Invalid);
    }

    #[test]
    fn a_rotated_seal_key_still_accepts_the_old_seals() {
        let old = Sealer::new(vec![1; 32], None).expect("key");
        let new = Sealer::new(vec![2; 32], Some(vec![1; 32])).expect("keys");
        let key = generate(&Default::default(), &mut OsRandom).expect("key");
        let b = book(&key);
        let s = Sealed { uid: "u", secret: "s", book: &b, current: Some(&key), previous: None };
        assert_eq!(new.verify(&s, Some(&old.seal(&s))), Verdict::ValidUnderPrevious);
        assert_eq!(new.verify(&s, Some(&new.seal(&s))), Verdict::Valid);
        assert!(Sealer::new(vec![1; 16], None).is_none(), "short keys are refused");
        assert_eq!(format!("{old:?}"), "Sealer(<redacted>)");
    }
}
