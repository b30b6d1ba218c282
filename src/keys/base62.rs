//! Base62 (`0-9A-Za-z`) for key bodies and checksums.
//!
//! Byte strings are read as one big-endian unsigned integer. The output length depends only on the number of bytes
//! (the length needed for the largest value, `256^n - 1`), so leading zero bytes survive as leading `'0'` digits.
//! Buffers that hold digits or a copy of the input are zeroized, since the input is key material.

use zeroize::Zeroizing;

/// The digits, in value order.
pub(super) const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Length of a base62-encoded `u32`: 62^6 = 56_800_235_584 > 2^32, and 62^5 < 2^32.
pub(super) const U32_LEN: usize = 6;

/// Value of one base62 digit, `None` for any other byte.
pub(super) fn digit_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'Z' => Some(b - b'A' + 10),
        b'a'..=b'z' => Some(b - b'a' + 36),
        _ => None,
    }
}

/// Base62 digits of `bytes` without padding, least significant first (empty for zero).
fn digits_lsb_first(bytes: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut num = Zeroizing::new(bytes.to_vec());
    // 256^n < 62^(1.35 n), so 4/3 n + 1 digits plus a little slack never reallocates (a reallocation would leave an
    // un-zeroized copy behind).
    let mut digits = Zeroizing::new(Vec::with_capacity(bytes.len() * 3 / 2 + 2));
    let mut start = 0;
    while start < num.len() {
        if num[start] == 0 {
            start += 1;
            continue;
        }
        // Long division of num[start..] by 62, in place.
        let mut rem: u32 = 0;
        for b in num[start..].iter_mut() {
            let acc = (rem << 8) | u32::from(*b);
            // rem < 62, so acc < 62 * 256 and acc / 62 < 256: the cast is exact.
            *b = (acc / 62) as u8;
            rem = acc % 62;
        }
        digits.push(ALPHABET[rem as usize]);
    }
    digits
}

/// Number of base62 characters used for `n` bytes: the digits of `256^n - 1`, which equals `ceil(8n / log2 62)`.
pub(super) fn encoded_len(n: usize) -> usize {
    digits_lsb_first(&vec![0xff; n]).len()
}

/// Appends the base62 encoding of `bytes`, left-padded with `'0'` to [`encoded_len`] characters.
pub(super) fn encode_into(bytes: &[u8], out: &mut String) {
    let digits = digits_lsb_first(bytes);
    for _ in digits.len()..encoded_len(bytes.len()) {
        out.push('0');
    }
    for &d in digits.iter().rev() {
        out.push(char::from(d));
    }
}

/// Whether `s` is base62 for a value below `256^n`, i.e. what [`encode_into`] can produce for `n` bytes (the length
/// is checked by the caller).
pub(super) fn fits_in_bytes(s: &str, n: usize) -> bool {
    let mut num = Zeroizing::new(vec![0u8; n]);
    for b in s.bytes() {
        let Some(d) = digit_value(b) else {
            return false;
        };
        // num = num * 62 + d, from the least significant byte up.
        let mut carry = u32::from(d);
        for byte in num.iter_mut().rev() {
            let acc = u32::from(*byte) * 62 + carry;
            // Truncation to the low byte is the point: the rest moves on as carry.
            *byte = (acc & 0xff) as u8;
            carry = acc >> 8;
        }
        if carry != 0 {
            return false;
        }
    }
    true
}

/// A `u32` as exactly [`U32_LEN`] base62 characters, left-padded with `'0'`.
pub(super) fn encode_u32(mut v: u32) -> [u8; U32_LEN] {
    let mut out = [b'0'; U32_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(v % 62) as usize];
        v /= 62;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference decoder for tests: the value of a base62 string as a u128.
    fn value(s: &str) -> u128 {
        s.bytes().fold(0u128, |acc, b| acc * 62 + u128::from(digit_value(b).expect("base62 digit")))
    }

    fn encode(bytes: &[u8]) -> String {
        let mut s = String::new();
        encode_into(bytes, &mut s);
        s
    }

    #[test]
    fn alphabet_is_digits_then_upper_then_lower() {
        let expected: Vec<u8> = (b'0'..=b'9').chain(b'A'..=b'Z').chain(b'a'..=b'z').collect();
        assert_eq!(ALPHABET.as_slice(), expected.as_slice());
        for (i, &c) in ALPHABET.iter().enumerate() {
            assert_eq!(digit_value(c), Some(i as u8));
        }
        assert_eq!(digit_value(b'-'), None);
        assert_eq!(digit_value(b'_'), None);
    }

    #[test]
    fn encoded_len_matches_formula() {
        assert_eq!(encoded_len(0), 0);
        assert_eq!(encoded_len(1), 2);
        assert_eq!(encoded_len(16), 22);
        assert_eq!(encoded_len(32), 43);
        assert_eq!(encoded_len(64), 86);
        assert_eq!(encoded_len(128), 172);
        let log2_62 = 62f64.log2();
        for n in 1..=200usize {
            assert_eq!(encoded_len(n), ((n * 8) as f64 / log2_62).ceil() as usize, "n = {n}");
        }
    }

    #[test]
    fn encodes_big_endian_values() {
        assert_eq!(encode(&[0]), "00");
        assert_eq!(encode(&[61]), "0z");
        assert_eq!(encode(&[62]), "10");
        assert_eq!(encode(&[255]), "47");
        assert_eq!(encode(&[1, 0]), "048"); // 256 = 4 * 62 + 8, and 2 bytes take 3 digits
        for v in [0u64, 1, 61, 62, 3843, 3844, 1 << 40, u64::MAX] {
            let s = encode(&v.to_be_bytes());
            assert_eq!(s.len(), 11);
            assert_eq!(value(&s), u128::from(v), "{v}");
        }
    }

    #[test]
    fn leading_zero_bytes_keep_the_length() {
        assert_eq!(encode(&[0; 32]), "0".repeat(43));
        let mut one = [0u8; 32];
        one[31] = 1;
        assert_eq!(encode(&one), format!("{}1", "0".repeat(42)));
        let mut high = [0u8; 32];
        high[0] = 0x80;
        assert_eq!(encode(&high).len(), 43);
    }

    #[test]
    fn fits_in_bytes_accepts_encodings_and_rejects_overflow() {
        for n in [1usize, 2, 16, 32] {
            assert!(fits_in_bytes(&encode(&vec![0xff; n]), n));
            assert!(fits_in_bytes(&encode(&vec![0; n]), n));
            assert!(!fits_in_bytes(&"z".repeat(encoded_len(n)), n), "n = {n}");
        }
        assert!(fits_in_bytes("47", 1));
        assert!(!fits_in_bytes("48", 1));
        assert!(!fits_in_bytes("4-", 1));
    }

    #[test]
    fn encodes_u32_padded_to_six() {
        assert_eq!(&encode_u32(0), b"000000");
        assert_eq!(&encode_u32(61), b"00000z");
        assert_eq!(&encode_u32(62), b"000010");
        assert_eq!(&encode_u32(u32::MAX), b"4gfFC3");
        assert_eq!(&encode_u32(0xCBF4_3926), b"3jZRME");
        assert_eq!(value("4gfFC3"), u128::from(u32::MAX));
    }
}
