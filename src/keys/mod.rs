//! Key material: generation, encoding, checksum and fingerprint of API keys. Pure: no cluster, no I/O beyond the
//! injected [`RandomSource`].
//!
//! A key is `<prefix><encoded random bytes><checksum>` (the GitHub token scheme): the random bytes are encoded as
//! base62 (`0-9A-Za-z`, fixed length per byte count), base64url without padding, or lower-case hex, and the checksum
//! is the CRC32 (IEEE) of the UTF-8 bytes of everything before it, as exactly six base62 characters. The checksum lets
//! secret scanners and [`verify_checksum`] reject typos and random strings without knowing the prefix or the key.
//!
//! Key material lives in [`KeyMaterial`], which has no `Display`, redacts itself in `Debug` and is zeroized on drop;
//! [`KeyMaterial::expose`] is the one way to read it as text, so every use can be found with a search. Errors
//! ([`KeyError`]) never carry key material. [`key_id`] gives a short public fingerprint for status and logs.

mod base62;

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::api::apikey::{KeyEncoding, KeyFormat};

/// Random bytes drawn when the format does not say.
pub const DEFAULT_ENTROPY_BYTES: usize = 32;
/// Smallest number of random bytes allowed (as in the CRD schema).
pub const MIN_ENTROPY_BYTES: usize = 16;
/// Largest number of random bytes allowed (as in the CRD schema).
pub const MAX_ENTROPY_BYTES: usize = 128;
/// Longest prefix allowed (as in the CRD schema).
pub const MAX_PREFIX_LEN: usize = 16;
/// Length of the base62 CRC32 checksum at the end of every key.
pub const CHECKSUM_LEN: usize = base62::U32_LEN;
/// Length of a [`key_id`].
pub const KEY_ID_LEN: usize = 12;

/// Why key material could not be generated, read or verified. No variant holds key material: a key's characters are
/// never part of an error, only lengths, positions and the spec's own values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key format in the spec is unusable (e.g. stored before a schema change).
    #[error("invalid key format: {0}")]
    InvalidSpec(String),
    /// The random source could not produce bytes.
    #[error("random source failed: {0}")]
    RandomSourceFailed(String),
    /// Key material read back (e.g. from a Secret) is unusable.
    #[error("invalid key material: {0}")]
    InvalidKeyMaterial(&'static str),
    /// The key does not start with the format's prefix.
    #[error("key does not start with the prefix {expected:?}")]
    PrefixMismatch {
        /// The prefix from the format.
        expected: String,
    },
    /// The key has the wrong number of characters for the format.
    #[error("key is {actual} characters long, expected {expected}")]
    LengthMismatch {
        /// Length the format implies: prefix, encoded bytes and checksum.
        expected: usize,
        /// Length of the key.
        actual: usize,
    },
    /// A character after the prefix is outside the encoding's alphabet (or, in the checksum, outside base62).
    #[error("key has a character outside the {} alphabet at position {position}", encoding_name(.encoding))]
    InvalidCharacter {
        /// Alphabet expected at that position.
        encoding: KeyEncoding,
        /// 0-based character index in the whole key.
        position: usize,
    },
    /// The encoded part has the right length and alphabet but is not what encoding the format's number of bytes gives
    /// (a base62 value too large, or base64url with non-zero trailing bits).
    #[error("key body is not a canonical {} encoding of {bytes} bytes", encoding_name(.encoding))]
    NonCanonicalEncoding {
        /// The format's encoding.
        encoding: KeyEncoding,
        /// The format's number of random bytes.
        bytes: usize,
    },
    /// The last six characters are not the base62 CRC32 of the rest.
    #[error("key checksum does not match")]
    ChecksumMismatch,
}

impl KeyError {
    /// Machine-readable reason in PascalCase, for status conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            KeyError::InvalidSpec(_) => "InvalidSpec",
            KeyError::RandomSourceFailed(_) => "RandomSourceFailed",
            KeyError::InvalidKeyMaterial(_) => "InvalidKeyMaterial",
            KeyError::PrefixMismatch { .. } => "PrefixMismatch",
            KeyError::LengthMismatch { .. } => "LengthMismatch",
            KeyError::InvalidCharacter { .. } => "InvalidCharacter",
            KeyError::NonCanonicalEncoding { .. } => "NonCanonicalEncoding",
            KeyError::ChecksumMismatch => "ChecksumMismatch",
        }
    }
}

/// The name of an encoding as written in the spec.
pub fn encoding_name(encoding: &KeyEncoding) -> &'static str {
    match encoding {
        KeyEncoding::Base62 => "base62",
        KeyEncoding::Base64Url => "base64url",
        KeyEncoding::Hex => "hex",
    }
}

/// Where random bytes come from: [`OsRandom`] in production, a deterministic source in tests.
pub trait RandomSource {
    /// Fills all of `buf` with random bytes.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), KeyError>;
}

/// The operating system's CSPRNG (`getrandom`).
#[derive(Debug, Clone, Copy, Default)]
pub struct OsRandom;

impl RandomSource for OsRandom {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), KeyError> {
        getrandom::fill(buf).map_err(|e| KeyError::RandomSourceFailed(e.to_string()))
    }
}

/// A [`KeyFormat`] with its defaults applied and its values checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedFormat<'a> {
    /// Prefix, `""` by default: letters, digits and `_`, at most [`MAX_PREFIX_LEN`] characters.
    pub prefix: &'a str,
    /// Number of random bytes, [`DEFAULT_ENTROPY_BYTES`] by default, within
    /// [`MIN_ENTROPY_BYTES`]..=[`MAX_ENTROPY_BYTES`].
    pub entropy_bytes: usize,
    /// Encoding of the random bytes, base62 by default.
    pub encoding: KeyEncoding,
}

impl<'a> ResolvedFormat<'a> {
    /// Applies the defaults and checks the values the CRD schema allows; values stored before a schema change may
    /// be outside it, and give [`KeyError::InvalidSpec`].
    pub fn resolve(format: &'a KeyFormat) -> Result<Self, KeyError> {
        let prefix = format.prefix.as_deref().unwrap_or("");
        if prefix.len() > MAX_PREFIX_LEN {
            return Err(KeyError::InvalidSpec(format!(
                "prefix is {} characters long, at most {MAX_PREFIX_LEN} are allowed",
                prefix.chars().count()
            )));
        }
        if !prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(KeyError::InvalidSpec("prefix may hold only letters, digits and `_`".to_string()));
        }
        let entropy_bytes = match format.entropy_bytes {
            None => DEFAULT_ENTROPY_BYTES,
            Some(n) => match usize::try_from(n) {
                Ok(n) if (MIN_ENTROPY_BYTES..=MAX_ENTROPY_BYTES).contains(&n) => n,
                _ => {
                    return Err(KeyError::InvalidSpec(format!(
                        "entropyBytes is {n}, must be between {MIN_ENTROPY_BYTES} and {MAX_ENTROPY_BYTES}"
                    )));
                }
            },
        };
        Ok(ResolvedFormat { prefix, entropy_bytes, encoding: format.encoding.unwrap_or_default() })
    }

    /// Number of characters of the encoded random bytes.
    pub fn body_len(&self) -> usize {
        let n = self.entropy_bytes;
        match self.encoding {
            KeyEncoding::Base62 => base62::encoded_len(n),
            // Unpadded base64: 4 characters per 3 bytes, rounded up.
            KeyEncoding::Base64Url => (4 * n).div_ceil(3),
            KeyEncoding::Hex => 2 * n,
        }
    }

    /// Number of characters of a whole key: prefix, encoded random bytes and checksum.
    pub fn key_len(&self) -> usize {
        self.prefix.len() + self.body_len() + CHECKSUM_LEN
    }
}

/// A key: secret text that is never displayed, redacted in `Debug` and zeroized on drop.
pub struct KeyMaterial(Zeroizing<String>);

impl KeyMaterial {
    /// The key as text. Named so that every place that reads the secret is easy to find and audit.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    /// The key's UTF-8 bytes, e.g. to store in a Secret.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Key material read back from a Secret. It must be non-empty UTF-8; it is not checked against a format (see
    /// [`verify_format`]), since the format may have changed since the key was issued. Rejected bytes are zeroized and
    /// never appear in the error.
    pub fn from_secret_bytes(bytes: Vec<u8>) -> Result<Self, KeyError> {
        if bytes.is_empty() {
            return Err(KeyError::InvalidKeyMaterial("key material is empty"));
        }
        match String::from_utf8(bytes) {
            Ok(s) => Ok(KeyMaterial(Zeroizing::new(s))),
            Err(e) => {
                e.into_bytes().zeroize();
                Err(KeyError::InvalidKeyMaterial("key material is not valid UTF-8"))
            }
        }
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyMaterial(<redacted>)")
    }
}

// The inner `Zeroizing` wipes the string on drop.
impl ZeroizeOnDrop for KeyMaterial {}

/// The six-character base62 CRC32 checksum of `text`.
fn checksum(text: &str) -> [u8; CHECKSUM_LEN] {
    base62::encode_u32(crc32fast::hash(text.as_bytes()))
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Appends `bytes` encoded as `encoding`, without intermediate buffers that outlive this call un-zeroized.
fn encode_body(encoding: KeyEncoding, bytes: &[u8], out: &mut String) {
    match encoding {
        KeyEncoding::Base62 => base62::encode_into(bytes, out),
        KeyEncoding::Base64Url => {
            // `encode_string` would go through an internal stack buffer that is not wiped; encode into a zeroized
            // buffer of the exact size instead (4 characters per 3 bytes, rounded up, plus slack).
            let mut buf = Zeroizing::new(vec![0u8; (4 * bytes.len()).div_ceil(3) + 4]);
            let written = URL_SAFE_NO_PAD
                .encode_slice(bytes, &mut buf[..])
                // The only error is an output buffer too small, and unpadded base64 of n bytes is ceil(4n / 3) bytes,
                // less than the buffer above.
                .expect("base64 buffer sized for the output");
            // Base64 output is ASCII: each byte is one char.
            for &b in &buf[..written] {
                out.push(char::from(b));
            }
        }
        KeyEncoding::Hex => {
            for &b in bytes {
                out.push(char::from(HEX_DIGITS[usize::from(b >> 4)]));
                out.push(char::from(HEX_DIGITS[usize::from(b & 0x0f)]));
            }
        }
    }
}

/// Generates a key for `format` from `rng`: `<prefix><encoded random bytes><checksum>`.
///
/// The format is checked before any random bytes are drawn.
pub fn generate(format: &KeyFormat, rng: &mut dyn RandomSource) -> Result<KeyMaterial, KeyError> {
    let spec = ResolvedFormat::resolve(format)?;
    let mut raw = Zeroizing::new(vec![0u8; spec.entropy_bytes]);
    rng.fill(&mut raw)?;
    // Allocated at its final size so that no reallocation leaves a copy behind.
    let mut key = Zeroizing::new(String::with_capacity(spec.key_len()));
    key.push_str(spec.prefix);
    encode_body(spec.encoding, &raw, &mut key);
    for b in checksum(&key) {
        key.push(char::from(b));
    }
    debug_assert_eq!(key.len(), spec.key_len());
    Ok(KeyMaterial(key))
}

/// Short public fingerprint of a key: the first [`KEY_ID_LEN`] lower-case hex characters of the SHA-256 of its bytes.
/// Safe to show in status, events and logs.
pub fn key_id(key: &KeyMaterial) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut id = String::with_capacity(KEY_ID_LEN);
    for &b in digest.iter().take(KEY_ID_LEN / 2) {
        id.push(char::from(HEX_DIGITS[usize::from(b >> 4)]));
        id.push(char::from(HEX_DIGITS[usize::from(b & 0x0f)]));
    }
    id
}

/// Whether the last [`CHECKSUM_LEN`] characters of `key` are the base62 CRC32 of everything before them (which must
/// not be empty). Needs neither the prefix nor the format.
pub fn verify_checksum(key: &str) -> bool {
    let Some(split) = key.len().checked_sub(CHECKSUM_LEN) else {
        return false;
    };
    if split == 0 || !key.is_char_boundary(split) {
        return false;
    }
    let (text, sum) = key.split_at(split);
    sum.as_bytes() == checksum(text)
}

/// Whether a character is in an encoding's alphabet.
fn in_alphabet(encoding: KeyEncoding, c: char) -> bool {
    match encoding {
        KeyEncoding::Base62 => c.is_ascii_alphanumeric(),
        KeyEncoding::Base64Url => c.is_ascii_alphanumeric() || c == '-' || c == '_',
        KeyEncoding::Hex => matches!(c, '0'..='9' | 'a'..='f'),
    }
}

/// Checks that `key` is a key `format` could have produced: the prefix, the length, the alphabet of the encoded part
/// and of the checksum, a canonical encoding of the format's number of bytes, and the checksum, in that order.
pub fn verify_format(key: &str, format: &KeyFormat) -> Result<(), KeyError> {
    let spec = ResolvedFormat::resolve(format)?;
    let Some(rest) = key.strip_prefix(spec.prefix) else {
        return Err(KeyError::PrefixMismatch { expected: spec.prefix.to_string() });
    };
    let actual = key.chars().count();
    if actual != spec.key_len() {
        return Err(KeyError::LengthMismatch { expected: spec.key_len(), actual });
    }
    let body_len = spec.body_len();
    for (i, c) in rest.chars().enumerate() {
        let encoding = if i < body_len { spec.encoding } else { KeyEncoding::Base62 };
        if !in_alphabet(encoding, c) {
            return Err(KeyError::InvalidCharacter { encoding, position: spec.prefix.len() + i });
        }
    }
    // Everything after the prefix is ASCII now, so byte and character positions agree.
    let body = &rest[..body_len];
    let canonical = match spec.encoding {
        KeyEncoding::Base62 => base62::fits_in_bytes(body, spec.entropy_bytes),
        KeyEncoding::Base64Url => {
            let mut buf = Zeroizing::new(vec![0u8; spec.entropy_bytes + 3]);
            matches!(URL_SAFE_NO_PAD.decode_slice(body, &mut buf[..]), Ok(n) if n == spec.entropy_bytes)
        }
        KeyEncoding::Hex => true,
    };
    if !canonical {
        return Err(KeyError::NonCanonicalEncoding { encoding: spec.encoding, bytes: spec.entropy_bytes });
    }
    if !verify_checksum(key) {
        return Err(KeyError::ChecksumMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
