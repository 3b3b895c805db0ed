//! Byte searches and checks over a head, sixteen bytes at a time.
//!
//! A head's lines are tens of bytes long. A search per line that sets a vector search up afresh
//! (as `memchr` does) spends more on that than on the line, and one that reads a word at a
//! time still costs a handful of instructions per eight bytes. [`Positions`] walks a head once,
//! a block of sixteen bytes at a time, and hands out every position of a byte from the block's
//! mask: a line's end costs a few instructions, whatever the line's length. On x86_64 a block
//! is one SSE2 comparison (SSE2 is part of x86_64); elsewhere two words compared eight bytes at
//! a time.

/// The bytes of one block.
const BLOCK: usize = 16;

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const LOW7: u64 = u64::from_ne_bytes([0x7f; 8]);
const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);

/// The positions of one byte in a haystack, in order.
pub struct Positions<'a> {
    hay: &'a [u8],
    byte: u8,
    /// Where the current block starts.
    block: usize,
    /// The current block's matches not handed out yet: bit `i` for `block + i`.
    mask: u32,
}

impl<'a> Positions<'a> {
    /// The positions of `byte` in `hay` from `from` on.
    pub fn new(hay: &'a [u8], from: usize, byte: u8) -> Self {
        let mask = if from < hay.len() {
            mask_at(hay, from, byte)
        } else {
            0
        };
        Positions {
            hay,
            byte,
            block: from,
            mask,
        }
    }
}

impl Iterator for Positions<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        while self.mask == 0 {
            self.block += BLOCK;
            if self.block >= self.hay.len() {
                return None;
            }
            self.mask = mask_at(self.hay, self.block, self.byte);
        }
        let at = self.block + self.mask.trailing_zeros() as usize;
        // The lowest bit off.
        self.mask &= self.mask - 1;
        Some(at)
    }
}

/// Where the first `byte` in `hay` is.
pub fn find(hay: &[u8], byte: u8) -> Option<usize> {
    Positions::new(hay, 0, byte).next()
}

/// The mask of `byte` in the block of `hay` starting at `at` (`at < hay.len()`), which may be
/// cut short by the haystack's end.
fn mask_at(hay: &[u8], at: usize, byte: u8) -> u32 {
    if let Some(block) = hay.get(at..at + BLOCK) {
        return block_mask(block.try_into().expect("a block"), byte);
    }
    if hay.len() >= BLOCK {
        // The last block overlaps the one before: the bytes seen already are shifted out.
        let from = hay.len() - BLOCK;
        return block_mask(hay[from..].try_into().expect("a block"), byte) >> (at - from);
    }
    // A haystack shorter than a block.
    hay[at..]
        .iter()
        .enumerate()
        .fold(0, |mask, (i, &b)| mask | (u32::from(b == byte) << i))
}

/// Bit `i` set when `block[i]` is `byte`.
#[cfg(target_arch = "x86_64")]
fn block_mask(block: &[u8; BLOCK], byte: u8) -> u32 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
    };
    // SAFETY: SSE2 is part of every x86_64 CPU; the load (unaligned) reads the sixteen bytes
    // `block` holds.
    unsafe {
        let bytes = _mm_loadu_si128(block.as_ptr().cast::<__m128i>());
        _mm_movemask_epi8(_mm_cmpeq_epi8(bytes, _mm_set1_epi8(byte as i8))) as u32
    }
}

/// Bit `i` set when `block[i]` is `byte`.
#[cfg(not(target_arch = "x86_64"))]
fn block_mask(block: &[u8; BLOCK], byte: u8) -> u32 {
    block_mask_by_words(block, byte)
}

/// Whether a block holds a byte that no field value may hold: a control other than HTAB
/// (checked again byte by byte), or DEL.
#[cfg(not(target_arch = "x86_64"))]
fn block_suspect(block: &[u8; BLOCK]) -> bool {
    block_suspect_by_words(block)
}

/// Bit `i` set when `block[i]` is `byte`, eight bytes at a time.
#[cfg(any(test, not(target_arch = "x86_64")))]
fn block_mask_by_words(block: &[u8; BLOCK], byte: u8) -> u32 {
    let splat = ONES * u64::from(byte);
    let (low, high) = words(block);
    u32::from(gather(zero_bytes(low ^ splat))) | u32::from(gather(zero_bytes(high ^ splat))) << 8
}

/// Whether a block holds a byte that no field value may hold: a control other than HTAB
/// (checked again byte by byte), or DEL.
#[cfg(target_arch = "x86_64")]
fn block_suspect(block: &[u8; BLOCK]) -> bool {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    // SAFETY: SSE2 is part of every x86_64 CPU; the load (unaligned) reads the sixteen bytes
    // `block` holds.
    unsafe {
        let bytes = _mm_loadu_si128(block.as_ptr().cast::<__m128i>());
        // Unsigned: a byte up to 0x1f is its own minimum with 0x1f.
        let control = _mm_cmpeq_epi8(_mm_min_epu8(bytes, _mm_set1_epi8(0x1f)), bytes);
        let del = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(0x7f));
        _mm_movemask_epi8(_mm_or_si128(control, del)) != 0
    }
}

/// [`block_suspect`], eight bytes at a time.
#[cfg(any(test, not(target_arch = "x86_64")))]
fn block_suspect_by_words(block: &[u8; BLOCK]) -> bool {
    let (low, high) = words(block);
    word_suspect(low) || word_suspect(high)
}

/// A block's two words, its first byte the lowest of the first.
#[cfg(any(test, not(target_arch = "x86_64")))]
fn words(block: &[u8; BLOCK]) -> (u64, u64) {
    let (low, high) = block.split_at(8);
    (
        u64::from_le_bytes(low.try_into().expect("8 bytes")),
        u64::from_le_bytes(high.try_into().expect("8 bytes")),
    )
}

/// The high bits of a word's bytes (as [`zero_bytes`] leaves them) as one byte: byte `i`'s
/// as bit `i`. The multiplication moves each into place without carries.
#[cfg(any(test, not(target_arch = "x86_64")))]
fn gather(highs: u64) -> u8 {
    ((highs >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u8
}

/// The high bit of every byte of `word` that is zero, and no other bit. (No carry crosses a
/// byte: `(b & 0x7f) + 0x7f` is at most `0xfe`.)
fn zero_bytes(word: u64) -> u64 {
    !(((word & LOW7) + LOW7) | word | LOW7)
}

/// Whether a word holds a control byte or DEL (see [`block_suspect`]).
fn word_suspect(word: u64) -> bool {
    // A byte under 0x20 borrows into its high bit, unless that bit was set already (0x80 on are
    // values); a borrow that runs on means a lower byte was under 0x20 anyway.
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    let del = zero_bytes(word ^ (ONES * 0x7f));
    control | del != 0
}

/// Whether `b` may be in a field value: HTAB, visible ASCII, space, and bytes from 0x80 on
/// (obs-text); not the other controls (NUL, a bare CR or LF) nor DEL. What `HeaderValue`
/// takes.
fn is_value_byte(b: u8) -> bool {
    (b >= 0x20 && b != 0x7f) || b == b'\t'
}

/// Whether every byte of `bytes` may be in a field value (see [`is_value_byte`]). A block or a
/// word without a control byte or DEL is taken whole; one with either (an HTAB, say) byte by
/// byte.
pub fn is_field_value(bytes: &[u8]) -> bool {
    let mut blocks = bytes.chunks_exact(BLOCK);
    for block in &mut blocks {
        if block_suspect(block.try_into().expect("a block"))
            && !block.iter().all(|&b| is_value_byte(b))
        {
            return false;
        }
    }
    let mut words = blocks.remainder().chunks_exact(8);
    for word in &mut words {
        if word_suspect(u64::from_le_bytes(word.try_into().expect("8 bytes")))
            && !word.iter().all(|&b| is_value_byte(b))
        {
            return false;
        }
    }
    words.remainder().iter().all(|&b| is_value_byte(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_byte_anywhere_in_short_and_long_haystacks() {
        for len in [0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 300] {
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
        for len in [1, 7, 8, 9, 15, 16, 17, 24, 25, 33] {
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

    #[test]
    fn positions_are_every_match_from_any_start() {
        // Needles spread over blocks, at their edges, in a block's last bytes and in a
        // haystack shorter than a block.
        let mut rng = fastrand::Rng::with_seed(7);
        for len in [0, 1, 5, 15, 16, 17, 31, 32, 33, 47, 100, 257] {
            for _ in 0..50 {
                let hay: Vec<u8> = (0..len)
                    .map(|_| if rng.u8(..4) == 0 { b'\n' } else { rng.u8(..) })
                    .collect();
                for from in 0..=len {
                    let expected: Vec<usize> = (from..len).filter(|&i| hay[i] == b'\n').collect();
                    let found: Vec<usize> = Positions::new(&hay, from, b'\n').collect();
                    assert_eq!(found, expected, "{hay:?} from {from}");
                }
            }
        }
        assert_eq!(Positions::new(b"ab", 5, b'a').next(), None);
    }

    #[test]
    fn blocks_agree_with_their_word_by_word_reading() {
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..20_000 {
            let block: [u8; BLOCK] = std::array::from_fn(|_| match rng.u8(..4) {
                0 => b'\t',
                1 => rng.u8(..0x20),
                2 => 0x7f,
                _ => rng.u8(0x20..),
            });
            let byte = block[rng.usize(..BLOCK)] ^ rng.u8(..2);
            assert_eq!(
                block_mask(&block, byte),
                block_mask_by_words(&block, byte),
                "{block:?}"
            );
            let expected = (0..BLOCK).fold(0, |m, i| m | (u32::from(block[i] == byte) << i));
            assert_eq!(block_mask(&block, byte), expected, "{block:?} {byte}");
            assert_eq!(
                block_suspect(&block),
                block_suspect_by_words(&block),
                "{block:?}"
            );
            let suspect = block.iter().any(|&b| b < 0x20 || b == 0x7f);
            assert_eq!(block_suspect(&block), suspect, "{block:?}");
        }
    }
}
