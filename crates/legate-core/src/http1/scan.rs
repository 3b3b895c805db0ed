//! Byte searches and checks over a head's short lines, eight bytes at a time.
//!
//! A head's lines are tens of bytes long; `memchr`'s vector search spends more on setting up
//! and aligning than a line takes to read word by word. Past the first [`SHORT`] bytes (a long
//! cookie, a huge head) the search goes back to `memchr`.

/// How far a search reads word by word before it hands the rest to `memchr`.
const SHORT: usize = 64;

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const LOW7: u64 = u64::from_ne_bytes([0x7f; 8]);
const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);

/// The high bit of every byte of `word` that is zero, and no other bit. (No carry crosses a
/// byte: `(b & 0x7f) + 0x7f` is at most `0xfe`.)
fn zero_bytes(word: u64) -> u64 {
    !(((word & LOW7) + LOW7) | word | LOW7)
}

/// Bytes `at..at + 8` of `bytes` as a little-endian word (its first byte the lowest).
fn word_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Where the first `byte` in `hay` is.
pub fn find(hay: &[u8], byte: u8) -> Option<usize> {
    let splat = ONES * u64::from(byte);
    let short = hay.len().min(SHORT);
    let mut at = 0;
    while at + 8 <= short {
        let found = zero_bytes(word_at(hay, at) ^ splat);
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    if hay.len() > SHORT {
        return memchr::memchr(byte, &hay[at..]).map(|i| at + i);
    }
    hay[at..].iter().position(|&b| b == byte).map(|i| at + i)
}

/// Whether `b` may be in a field value: HTAB, visible ASCII, space, and bytes from 0x80 on
/// (obs-text); not the other controls (NUL, a bare CR or LF) nor DEL. What `HeaderValue`
/// takes.
fn is_value_byte(b: u8) -> bool {
    (b >= 0x20 && b != 0x7f) || b == b'\t'
}

/// Whether every byte of `bytes` may be in a field value (see [`is_value_byte`]). A word
/// without a control byte or DEL is taken whole; one with either (an HTAB, say) byte by byte.
pub fn is_field_value(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        // A byte under 0x20 borrows into its high bit, unless that bit was set already (0x80
        // on are values); a borrow that runs on means a lower byte was under 0x20 anyway.
        let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
        let del = zero_bytes(word ^ (ONES * 0x7f));
        if control | del != 0 && !chunk.iter().all(|&b| is_value_byte(b)) {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| is_value_byte(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_byte_anywhere_in_short_and_long_haystacks() {
        for len in [0, 1, 7, 8, 9, 15, 16, 63, 64, 65, 100, 300] {
            let mut hay = vec![b'a'; len];
            assert_eq!(find(&hay, b':'), None, "len {len}");
            for at in 0..len {
                hay[at] = b':';
                assert_eq!(find(&hay, b':'), Some(at), "len {len} at {at}");
                // A second one later does not change the answer.
                if at + 1 < len {
                    hay[len - 1] = b':';
                    assert_eq!(find(&hay, b':'), Some(at), "len {len} at {at}, twice");
                    hay[len - 1] = b'a';
                }
                hay[at] = b'a';
            }
        }
        // Bytes that differ from the needle in the high bit alone are not it.
        let hay = [b':' | 0x80, 0x80, 0xff, 0, b':', b'a', b'a', b'a', b'a'];
        assert_eq!(find(&hay, b':'), Some(4));
        assert_eq!(find(&hay, 0), Some(3));
        assert_eq!(find(b"abc\n", b'\n'), Some(3));
    }

    #[test]
    fn field_values_take_what_header_value_takes() {
        // Every byte, at every place of a word and after it, agrees with `HeaderValue`.
        for len in [1, 7, 8, 9, 16, 17] {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut value = vec![b'v'; len];
                    value[at] = b;
                    assert_eq!(
                        is_field_value(&value),
                        http::HeaderValue::from_bytes(&value).is_ok(),
                        "byte {b:#04x} at {at} of {len}"
                    );
                }
            }
        }
        assert!(is_field_value(b""));
        assert!(is_field_value(b"Sat, 28 Nov 2026 03:35:00 GMT"));
        assert!(is_field_value(b"a\tb\xff\x80 c"));
        assert!(!is_field_value(b"a value with a bare\rCR"));
        assert!(!is_field_value(b"\x7fdel first in its word"));
    }
}
