//! Unit tests for key material. Expected keys were computed outside Rust (Python: `zlib.crc32`, `int.from_bytes`,
//! `base64.urlsafe_b64encode`) so that they do not depend on this module's own encoders.

use std::marker::PhantomData;

use super::*;

/// Deterministic source: 0, 1, 2, … (wrapping), continuing across calls.
struct Counter(u8);

impl RandomSource for Counter {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), KeyError> {
        for b in buf {
            *b = self.0;
            self.0 = self.0.wrapping_add(1);
        }
        Ok(())
    }
}

/// Deterministic source: every byte the same.
struct Constant(u8);

impl RandomSource for Constant {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), KeyError> {
        buf.fill(self.0);
        Ok(())
    }
}

/// A source that always fails.
struct Broken;

impl RandomSource for Broken {
    fn fill(&mut self, _buf: &mut [u8]) -> Result<(), KeyError> {
        Err(KeyError::RandomSourceFailed("entropy pool unavailable".to_string()))
    }
}

/// A source that must not be used.
struct Untouchable;

impl RandomSource for Untouchable {
    fn fill(&mut self, _buf: &mut [u8]) -> Result<(), KeyError> {
        panic!("the random source was used although the format is invalid");
    }
}

fn format(prefix: Option<&str>, entropy_bytes: Option<i32>, encoding: Option<KeyEncoding>) -> KeyFormat {
    KeyFormat { prefix: prefix.map(str::to_string), entropy_bytes, encoding }
}

const ENCODINGS: [KeyEncoding; 3] = [KeyEncoding::Base62, KeyEncoding::Base64Url, KeyEncoding::Hex];

fn counter_key(f: &KeyFormat) -> String {
    generate(f, &mut Counter(0)).expect("generate").expose().to_string()
}

/// A key with its checksum recomputed, to reach the checks that come before the checksum in `verify_format`.
fn with_checksum(text: &str) -> String {
    let sum = checksum(text);
    format!("{text}{}", std::str::from_utf8(&sum).expect("ascii"))
}

#[test]
fn hex_key_is_stable() {
    let key = counter_key(&format(Some("kw_test_"), None, Some(KeyEncoding::Hex)));
    assert_eq!(key, "kw_test_000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2I1Aqn");
    let key = counter_key(&format(None, Some(16), Some(KeyEncoding::Hex)));
    assert_eq!(key, "000102030405060708090a0b0c0d0e0f2MvoGB");
}

#[test]
fn base62_key_is_stable() {
    let key = counter_key(&format(Some("kw_test_"), Some(32), Some(KeyEncoding::Base62)));
    assert_eq!(key, "kw_test_003aUlTJC7tjlCTQj2uNU3MFagCXG9LRKRcwGkBIDlf18Bk99");
    // base62 is the default encoding.
    assert_eq!(counter_key(&format(Some("kw_test_"), None, None)), key);
}

#[test]
fn base64url_key_is_stable() {
    let key = counter_key(&format(Some("kw_test_"), None, Some(KeyEncoding::Base64Url)));
    assert_eq!(key, "kw_test_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh82TWpsX");
}

#[test]
fn default_format_is_unprefixed_base62_of_32_bytes() {
    let key = counter_key(&KeyFormat::default());
    assert_eq!(key, "003aUlTJC7tjlCTQj2uNU3MFagCXG9LRKRcwGkBIDlf1Yo7hP");
}

#[test]
fn prefix_is_preserved() {
    for encoding in ENCODINGS {
        for prefix in ["kw_live_", "A", "x_1234567890abcd"] {
            let f = format(Some(prefix), None, Some(encoding));
            let key = counter_key(&f);
            assert!(key.starts_with(prefix), "{key} / {prefix}");
            let unprefixed = counter_key(&format(None, None, Some(encoding)));
            // Same random bytes, so the encoded part is the same; only the checksum changes with the prefix.
            assert_eq!(key[prefix.len()..key.len() - CHECKSUM_LEN], unprefixed[..unprefixed.len() - CHECKSUM_LEN]);
            assert_eq!(verify_format(&key, &f), Ok(()));
        }
    }
}

#[test]
fn lengths_follow_encoding_and_entropy() {
    let log2_62 = 62f64.log2();
    for n in [16usize, 17, 18, 31, 32, 33, 64, 100, 127, 128] {
        for encoding in ENCODINGS {
            let body = match encoding {
                KeyEncoding::Base62 => ((n * 8) as f64 / log2_62).ceil() as usize,
                KeyEncoding::Base64Url => (n * 8).div_ceil(6),
                KeyEncoding::Hex => n * 2,
            };
            let f = format(Some("kw_"), Some(n as i32), Some(encoding));
            let key = counter_key(&f);
            assert_eq!(key.len(), 3 + body + CHECKSUM_LEN, "{n} bytes {encoding:?}");
            assert_eq!(ResolvedFormat::resolve(&f).expect("valid").key_len(), key.len());
            assert_eq!(verify_format(&key, &f), Ok(()), "{n} bytes {encoding:?}");
        }
    }
    assert_eq!(counter_key(&format(None, Some(32), Some(KeyEncoding::Base62))).len(), 43 + 6);
    assert_eq!(counter_key(&format(None, Some(32), Some(KeyEncoding::Base64Url))).len(), 43 + 6);
    assert_eq!(counter_key(&format(None, Some(32), Some(KeyEncoding::Hex))).len(), 64 + 6);
}

#[test]
fn base62_keeps_leading_zero_bytes() {
    let key = generate(&KeyFormat::default(), &mut Constant(0)).expect("generate");
    assert_eq!(key.expose(), format!("{}2CZclj", "0".repeat(43)));
    // Same length whatever the bytes.
    for byte in [0u8, 1, 0x7f, 0xff] {
        let key = generate(&KeyFormat::default(), &mut Constant(byte)).expect("generate");
        assert_eq!(key.expose().len(), 49, "byte {byte}");
        assert_eq!(verify_format(key.expose(), &KeyFormat::default()), Ok(()));
    }
}

#[test]
fn checksum_verifies_known_values() {
    // 0xCBF43926 is the CRC32 (IEEE) check value of "123456789".
    assert!(verify_checksum("1234567893jZRME"));
    assert!(!verify_checksum("1234567893jZRMF"));
    assert!(verify_checksum(&format!("{}2CZclj", "0".repeat(43))));
    // Nothing before the checksum, too short, or not splittable on a character boundary.
    assert!(!verify_checksum("000000"));
    assert!(!verify_checksum(""));
    assert!(!verify_checksum("00000"));
    assert!(!verify_checksum("abcdé12345"));
}

#[test]
fn checksum_fails_when_any_single_character_changes() {
    for encoding in ENCODINGS {
        let key = counter_key(&format(Some("kw_live_"), None, Some(encoding)));
        assert!(verify_checksum(&key), "{key}");
        let chars: Vec<char> = key.chars().collect();
        for i in 0..chars.len() {
            for replacement in ['0', 'a', 'Z', '_', '-', 'é'] {
                if chars[i] == replacement {
                    continue;
                }
                let mut changed = chars.clone();
                changed[i] = replacement;
                let changed: String = changed.into_iter().collect();
                assert!(!verify_checksum(&changed), "{changed} (position {i}) still verifies");
            }
        }
    }
}

#[test]
fn os_random_keys_differ_and_verify() {
    let f = format(Some("kw_"), None, None);
    let a = generate(&f, &mut OsRandom).expect("generate");
    let b = generate(&f, &mut OsRandom).expect("generate");
    assert_ne!(a.expose(), b.expose());
    assert_ne!(key_id(&a), key_id(&b));
    assert_eq!(verify_format(a.expose(), &f), Ok(()));
    assert_eq!(verify_format(b.expose(), &f), Ok(()));
}

#[test]
fn key_id_is_sha256_prefix() {
    let abc = KeyMaterial::from_secret_bytes(b"abc".to_vec()).expect("utf-8");
    assert_eq!(key_id(&abc), "ba7816bf8f01");
    let key = generate(&KeyFormat::default(), &mut Counter(7)).expect("generate");
    let id = key_id(&key);
    assert_eq!(id.len(), KEY_ID_LEN);
    assert!(id.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')), "{id}");
    // Depends on the key.
    let other = generate(&KeyFormat::default(), &mut Counter(8)).expect("generate");
    assert_ne!(key_id(&other), id);
}

#[test]
fn debug_redacts_the_key() {
    let key = generate(&KeyFormat::default(), &mut Counter(0)).expect("generate");
    let debug = format!("{key:?}");
    assert_eq!(debug, "KeyMaterial(<redacted>)");
    assert!(!debug.contains(key.expose()));
    let pretty = format!("{key:#?}");
    assert!(!pretty.contains(&key.expose()[..10]), "{pretty}");
}

/// Whether `T` implements `Display`, decided at compile time (an inherent associated item wins over a trait's when
/// its bounds hold).
trait DisplayFallback {
    const IS_DISPLAY: bool = false;
}
struct Probe<T: ?Sized>(PhantomData<T>);
impl<T: ?Sized> DisplayFallback for Probe<T> {}
impl<T: ?Sized + fmt::Display> Probe<T> {
    const IS_DISPLAY: bool = true;
}

#[test]
fn key_material_has_no_display() {
    // The probe itself works:
    // Checked at compile time: adding `Display` to `KeyMaterial` breaks the build of the tests.
    const { assert!(Probe::<String>::IS_DISPLAY) };
    const { assert!(!Probe::<Vec<u8>>::IS_DISPLAY) };
    const { assert!(!Probe::<KeyMaterial>::IS_DISPLAY) };
}

#[test]
fn errors_never_contain_the_key() {
    let f = format(Some("kw_"), None, None);
    let key = counter_key(&f);
    let body = &key[3..key.len() - CHECKSUM_LEN];
    let sum = &key[key.len() - CHECKSUM_LEN..];
    let mut bad_char = key.clone();
    bad_char.replace_range(10..11, "-");
    let mut bad_sum = key.clone();
    bad_sum.replace_range(key.len() - 1.., if key.ends_with('0') { "1" } else { "0" });
    let cases = [
        format!("xx_{}", &key[3..]),
        format!("{key}0"),
        bad_char,
        with_checksum(&format!("kw_{}", "z".repeat(43))),
        bad_sum,
    ];
    let mut reasons = Vec::new();
    for case in &cases {
        let err = verify_format(case, &f).expect_err(case);
        reasons.push(err.reason());
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains(body), "{text}");
            assert!(!text.contains(&body[..8]), "{text}");
            assert!(!text.contains(sum), "{text}");
        }
    }
    assert_eq!(
        reasons,
        ["PrefixMismatch", "LengthMismatch", "InvalidCharacter", "NonCanonicalEncoding", "ChecksumMismatch"]
    );

    let err = KeyMaterial::from_secret_bytes(b"topsecretvalue\xff".to_vec()).expect_err("not utf-8");
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains("topsecret"), "{text}");
        assert!(!text.contains("255") && !text.contains("ff"), "{text}");
    }
}

#[test]
fn reasons_are_pascal_case_names() {
    let all = [
        (KeyError::InvalidSpec("x".into()), "InvalidSpec"),
        (KeyError::RandomSourceFailed("x".into()), "RandomSourceFailed"),
        (KeyError::InvalidKeyMaterial("x"), "InvalidKeyMaterial"),
        (KeyError::PrefixMismatch { expected: "kw_".into() }, "PrefixMismatch"),
        (KeyError::LengthMismatch { expected: 1, actual: 2 }, "LengthMismatch"),
        (KeyError::InvalidCharacter { encoding: KeyEncoding::Hex, position: 3 }, "InvalidCharacter"),
        (KeyError::NonCanonicalEncoding { encoding: KeyEncoding::Base62, bytes: 32 }, "NonCanonicalEncoding"),
        (KeyError::ChecksumMismatch, "ChecksumMismatch"),
    ];
    for (err, reason) in all {
        assert_eq!(err.reason(), reason);
        assert!(
            reason.starts_with(|c: char| c.is_ascii_uppercase()) && reason.chars().all(|c| c.is_ascii_alphabetic())
        );
    }
    let err = KeyError::InvalidCharacter { encoding: KeyEncoding::Base64Url, position: 3 };
    assert_eq!(err.to_string(), "key has a character outside the base64url alphabet at position 3");
}

#[test]
fn entropy_out_of_range_is_rejected() {
    for n in [i32::MIN, -1, 0, 1, 15, 129, 256, i32::MAX] {
        let f = format(None, Some(n), None);
        let err = generate(&f, &mut Untouchable).expect_err("out of range");
        assert_eq!(err.reason(), "InvalidSpec", "{n}");
        assert!(err.to_string().contains(&n.to_string()), "{err}");
        assert!(err.to_string().contains("between 16 and 128"), "{err}");
        assert_eq!(verify_format("anything", &f).map_err(|e| e.reason()), Err("InvalidSpec"));
    }
    for n in [16, 128] {
        assert!(generate(&format(None, Some(n), None), &mut Counter(0)).is_ok(), "{n}");
    }
}

#[test]
fn invalid_prefix_is_rejected() {
    for prefix in ["kw-live", "kw live", "x_123456789012345", "ключ_", "kw_live_\n"] {
        let f = format(Some(prefix), None, None);
        let err = generate(&f, &mut Untouchable).expect_err(prefix);
        assert_eq!(err.reason(), "InvalidSpec", "{prefix:?}");
    }
    // 16 characters is the limit.
    assert!(generate(&format(Some("x_1234567890abcd"), None, None), &mut Counter(0)).is_ok());
}

#[test]
fn random_source_failure_propagates() {
    let err = generate(&KeyFormat::default(), &mut Broken).expect_err("broken source");
    assert_eq!(err.reason(), "RandomSourceFailed");
    assert_eq!(err.to_string(), "random source failed: entropy pool unavailable");
}

#[test]
fn verify_format_rejects_wrong_prefix() {
    let f = format(Some("kw_live_"), None, None);
    let key = counter_key(&f);
    assert_eq!(verify_format(&key, &f), Ok(()));
    let test_format = format(Some("kw_test_"), None, None);
    assert_eq!(verify_format(&key, &test_format), Err(KeyError::PrefixMismatch { expected: "kw_test_".into() }));
    // An unprefixed format does not accept a prefixed key: the length gives it away.
    assert_eq!(verify_format(&key, &KeyFormat::default()).map_err(|e| e.reason()), Err("LengthMismatch"));
    // A prefixed format does not accept an unprefixed key.
    let bare = counter_key(&KeyFormat::default());
    assert_eq!(verify_format(&bare, &f).map_err(|e| e.reason()), Err("PrefixMismatch"));
}

#[test]
fn verify_format_rejects_wrong_charset() {
    // base62 does not allow '-' or '_'; base64url does not allow '+' or '/'; hex is lower-case only.
    let cases = [
        (KeyEncoding::Base62, '-'),
        (KeyEncoding::Base62, '_'),
        (KeyEncoding::Base64Url, '+'),
        (KeyEncoding::Base64Url, '/'),
        (KeyEncoding::Hex, 'A'),
        (KeyEncoding::Hex, 'g'),
    ];
    for (encoding, c) in cases {
        let f = format(Some("kw_"), None, Some(encoding));
        let key = counter_key(&f);
        let mut bad: Vec<char> = key.chars().collect();
        bad[5] = c;
        let bad = with_checksum(&bad[..bad.len() - CHECKSUM_LEN].iter().collect::<String>());
        assert!(verify_checksum(&bad));
        assert_eq!(verify_format(&bad, &f), Err(KeyError::InvalidCharacter { encoding, position: 5 }), "{bad}");
    }
    // The checksum is base62 whatever the encoding.
    let f = format(None, None, Some(KeyEncoding::Base64Url));
    let key = counter_key(&f);
    let bad = format!("{}-", &key[..key.len() - 1]);
    let position = key.len() - 1;
    assert_eq!(verify_format(&bad, &f), Err(KeyError::InvalidCharacter { encoding: KeyEncoding::Base62, position }));
    // Non-ASCII of the right character count.
    let bad = format!("é{}", &key[1..]);
    assert_eq!(
        verify_format(&bad, &f),
        Err(KeyError::InvalidCharacter { encoding: KeyEncoding::Base64Url, position: 0 })
    );
}

#[test]
fn verify_format_rejects_wrong_length_and_checksum() {
    let f = format(Some("kw_"), None, None);
    let key = counter_key(&f);
    let longer = with_checksum(&format!("{}0", &key[..key.len() - CHECKSUM_LEN]));
    assert!(verify_checksum(&longer));
    assert_eq!(verify_format(&longer, &f), Err(KeyError::LengthMismatch { expected: 52, actual: 53 }));
    let of_16_bytes = counter_key(&format(Some("kw_"), Some(16), None));
    assert_eq!(verify_format(&of_16_bytes, &f).map_err(|e| e.reason()), Err("LengthMismatch"));
    assert_eq!(verify_format("kw_", &f).map_err(|e| e.reason()), Err("LengthMismatch"));

    let mut bad_sum = key.clone();
    bad_sum.replace_range(key.len() - 1.., if key.ends_with('0') { "1" } else { "0" });
    assert_eq!(verify_format(&bad_sum, &f), Err(KeyError::ChecksumMismatch));
}

#[test]
fn verify_format_rejects_non_canonical_bodies() {
    // base62: 43 characters can hold more than 32 bytes.
    let f = format(None, None, None);
    let too_big = with_checksum(&"z".repeat(43));
    assert_eq!(
        verify_format(&too_big, &f),
        Err(KeyError::NonCanonicalEncoding { encoding: KeyEncoding::Base62, bytes: 32 })
    );
    // The largest 32-byte value is fine.
    let largest = generate(&f, &mut Constant(0xff)).expect("generate");
    assert_eq!(verify_format(largest.expose(), &f), Ok(()));

    // base64url: 43 characters carry 258 bits, the last 2 must be zero. '8' is 60 (…00), '9' is 61 (…01).
    let f = format(None, None, Some(KeyEncoding::Base64Url));
    let key = counter_key(&f);
    let body = &key[..key.len() - CHECKSUM_LEN];
    assert!(body.ends_with('8'), "{body}");
    let trailing_bits = with_checksum(&format!("{}9", &body[..body.len() - 1]));
    assert_eq!(
        verify_format(&trailing_bits, &f),
        Err(KeyError::NonCanonicalEncoding { encoding: KeyEncoding::Base64Url, bytes: 32 })
    );
}

#[test]
fn secret_bytes_round_trip() {
    let f = format(Some("kw_"), None, Some(KeyEncoding::Hex));
    let key = generate(&f, &mut Counter(3)).expect("generate");
    let back = KeyMaterial::from_secret_bytes(key.as_bytes().to_vec()).expect("utf-8");
    assert_eq!(back.expose(), key.expose());
    assert_eq!(back.as_bytes(), key.expose().as_bytes());
    assert_eq!(key_id(&back), key_id(&key));
    assert_eq!(verify_format(back.expose(), &f), Ok(()));

    assert_eq!(
        KeyMaterial::from_secret_bytes(vec![0xc3, 0x28]).map(|_| ()),
        Err(KeyError::InvalidKeyMaterial("key material is not valid UTF-8"))
    );
    assert_eq!(
        KeyMaterial::from_secret_bytes(Vec::new()).map(|_| ()).map_err(|e| e.reason()),
        Err("InvalidKeyMaterial")
    );
}
