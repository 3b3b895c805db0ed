//! The JA3 and JA4 fingerprints of a ClientHello (`enable_ja3_fingerprinting`,
//! `enable_ja4_fingerprinting`), computed as Envoy's tls_inspector computes them, quirks
//! included: JA3 leaves GREASE values out of the cipher suites and extensions but not out of
//! the supported groups; JA4 follows FoxIO's definition (version from `supported_versions`,
//! sorted cipher and extension lists hashed with SHA-256 and cut to 12 hex digits, SNI and
//! ALPN left out of the extension hash, signature algorithms appended in their order).

use aws_lc_rs::digest::{SHA256, digest};
use legate_core::x509::hex;

const EXT_SERVER_NAME: u16 = 0;
const EXT_SUPPORTED_GROUPS: u16 = 10;
const EXT_EC_POINT_FORMATS: u16 = 11;
const EXT_SIGNATURE_ALGORITHMS: u16 = 13;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
/// JA4's hash parts: 12 hex digits.
const JA4_HASH_LEN: usize = 12;

/// RFC 8701's GREASE values: `0x?a?a` with both bytes equal.
fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && (v >> 8) == (v & 0xff)
}

/// What the fingerprints read from a ClientHello body.
pub(super) struct HelloFields<'a> {
    legacy_version: u16,
    ciphers: Vec<u16>,
    /// Extension types with their data, in the client's order.
    extensions: Vec<(u16, &'a [u8])>,
}

impl<'a> HelloFields<'a> {
    pub(super) fn parse(body: &'a [u8]) -> Option<HelloFields<'a>> {
        let mut r = super::Reader(body);
        let legacy_version = r.u16()?;
        r.take(32)?; // random
        r.vec8()?; // session id
        let suites = r.vec16()?;
        let ciphers = suites
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        r.vec8()?; // compression methods
        let mut extensions = Vec::new();
        if !r.0.is_empty() {
            let mut list = super::Reader(r.vec16()?);
            while !list.0.is_empty() {
                let kind = list.u16()?;
                extensions.push((kind, list.vec16()?));
            }
        }
        Some(HelloFields {
            legacy_version,
            ciphers,
            extensions,
        })
    }

    fn extension(&self, kind: u16) -> Option<&'a [u8]> {
        self.extensions
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, d)| *d)
    }

    /// `md5(version,ciphers,extensions,groups,point_formats)`, each list dash-joined decimals.
    pub(super) fn ja3(&self) -> String {
        let join = |values: &mut dyn Iterator<Item = u32>| {
            values.map(|v| v.to_string()).collect::<Vec<_>>().join("-")
        };
        let ciphers = join(
            &mut self
                .ciphers
                .iter()
                .filter(|c| !is_grease(**c))
                .map(|c| *c as u32),
        );
        let extensions = join(
            &mut self
                .extensions
                .iter()
                .filter(|(k, _)| !is_grease(*k))
                .map(|(k, _)| *k as u32),
        );
        // After the list's length, every group as Envoy writes it (GREASE ones too).
        let groups = self
            .extension(EXT_SUPPORTED_GROUPS)
            .map_or(String::new(), |d| {
                join(
                    &mut d
                        .get(2..)
                        .unwrap_or_default()
                        .chunks_exact(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32),
                )
            });
        let formats = self
            .extension(EXT_EC_POINT_FORMATS)
            .map_or(String::new(), |d| {
                join(&mut d.get(1..).unwrap_or_default().iter().map(|f| *f as u32))
            });
        let text = format!(
            "{},{ciphers},{extensions},{groups},{formats}",
            self.legacy_version
        );
        hex(&md5(text.as_bytes()))
    }

    /// `t<version><d|i><ciphers><extensions><alpn>_<cipher hash>_<extension hash>`.
    pub(super) fn ja4(&self) -> String {
        // The highest of `supported_versions` (a malformed list gives "00"); without any,
        // the hello's own version.
        let version = match self.extension(EXT_SUPPORTED_VERSIONS) {
            Some(d) => match d
                .split_first()
                .and_then(|(&len, list)| list.get(..len as usize))
            {
                Some(list) => list
                    .chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .filter(|v| !is_grease(*v))
                    .max()
                    .unwrap_or(self.legacy_version),
                None => 0,
            },
            None => self.legacy_version,
        };
        let version = match version {
            0x0304 => "13",
            0x0303 => "12",
            0x0302 => "11",
            0x0301 => "10",
            _ => "00",
        };
        let sni = if self.extension(EXT_SERVER_NAME).is_some() {
            "d"
        } else {
            "i"
        };
        let mut ciphers: Vec<u16> = self
            .ciphers
            .iter()
            .copied()
            .filter(|c| !is_grease(*c))
            .collect();
        let extension_count = self
            .extensions
            .iter()
            .filter(|(k, _)| !is_grease(*k))
            .count();
        let two_digits = |n: usize| format!("{:02}", n.min(99));
        let cipher_count = two_digits(ciphers.len());
        ciphers.sort_unstable();
        let mut extensions: Vec<u16> = self
            .extensions
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| !is_grease(*k) && *k != EXT_SERVER_NAME && *k != EXT_ALPN)
            .collect();
        extensions.sort_unstable();
        let signature_algorithms: Vec<u16> = self
            .extension(EXT_SIGNATURE_ALGORITHMS)
            .filter(|_| extensions.contains(&EXT_SIGNATURE_ALGORITHMS))
            .map(|d| {
                d.get(2..)
                    .unwrap_or_default()
                    .chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect()
            })
            .unwrap_or_default();
        let hex_list = |values: &[u16]| {
            values
                .iter()
                .map(|v| format!("{v:04x}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let truncated_sha256 = |text: &str| {
            let mut h = hex(digest(&SHA256, text.as_bytes()).as_ref());
            h.truncate(JA4_HASH_LEN);
            h
        };
        let cipher_hash = if ciphers.is_empty() {
            "0".repeat(JA4_HASH_LEN)
        } else {
            truncated_sha256(&hex_list(&ciphers))
        };
        let extension_hash = if extensions.is_empty() {
            "0".repeat(JA4_HASH_LEN)
        } else if signature_algorithms.is_empty() {
            truncated_sha256(&hex_list(&extensions))
        } else {
            truncated_sha256(&format!(
                "{}_{}",
                hex_list(&extensions),
                hex_list(&signature_algorithms)
            ))
        };
        format!(
            "t{version}{sni}{cipher_count}{}{}_{cipher_hash}_{extension_hash}",
            two_digits(extension_count),
            self.alpn_chars()
        )
    }

    /// The first and last characters of the first ALPN protocol ("00" without one; their hex
    /// when either is not alphanumeric).
    fn alpn_chars(&self) -> String {
        let first = self.extension(EXT_ALPN).and_then(|d| {
            let list = d.get(2..)?;
            let (&len, rest) = list.split_first()?;
            rest.get(..len as usize)
        });
        match first {
            Some(p) if !p.is_empty() => {
                let (a, z) = (p[0], p[p.len() - 1]);
                if a.is_ascii_alphanumeric() && z.is_ascii_alphanumeric() {
                    format!("{}{}", a as char, z as char)
                } else {
                    format!("{a:02x}{z:02x}")
                }
            }
            _ => "00".into(),
        }
    }
}

/// MD5 (RFC 1321), which JA3 is defined with. Not used for anything that needs a secure hash.
fn md5(message: &[u8]) -> [u8; 16] {
    // Per-round shift amounts and the sine-derived constants of RFC 1321 §3.4.
    const SHIFTS: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    let k: [u32; 64] =
        std::array::from_fn(|i| ((i as f64 + 1.0).sin().abs() * 4_294_967_296.0) as u32);
    let mut state: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    let mut padded = message.to_vec();
    padded.push(0x80);
    while padded.len() % 64 != 56 {
        padded.push(0);
    }
    padded.extend_from_slice(&((message.len() as u64).wrapping_mul(8)).to_le_bytes());
    for block in padded.chunks_exact(64) {
        let m: [u32; 16] = std::array::from_fn(|i| {
            u32::from_le_bytes([
                block[4 * i],
                block[4 * i + 1],
                block[4 * i + 2],
                block[4 * i + 3],
            ])
        });
        let [mut a, mut b, mut c, mut d] = state;
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let rotated = a
                .wrapping_add(f)
                .wrapping_add(k[i])
                .wrapping_add(m[g])
                .rotate_left(SHIFTS[i]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(rotated);
        }
        state = [
            state[0].wrapping_add(a),
            state[1].wrapping_add(b),
            state[2].wrapping_add(c),
            state[3].wrapping_add(d),
        ];
    }
    let mut out = [0u8; 16];
    for (i, word) in state.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&word.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_rfc_1321_test_suite() {
        for (input, expected) in [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("a", "0cc175b9c0f1b6a831c399e269772661"),
            ("abc", "900150983cd24fb0d6963f7d28e17f72"),
            ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            (
                "abcdefghijklmnopqrstuvwxyz",
                "c3fcd3d76192e4007dfb496cca67e13b",
            ),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ] {
            assert_eq!(hex(&md5(input.as_bytes())), expected, "{input:?}");
        }
    }

    #[test]
    fn grease_values_are_recognised() {
        assert!(is_grease(0x0a0a) && is_grease(0xfafa) && is_grease(0x3a3a));
        assert!(!is_grease(0x0a1a) && !is_grease(0x1301) && !is_grease(0x00ff));
    }
}
