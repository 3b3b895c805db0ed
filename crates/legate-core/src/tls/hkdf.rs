//! TLS 1.3's key schedule on HMAC keys prepared once.
//!
//! TLS 1.3 derives every secret with HKDF (RFC 8446 §7.1): a full handshake makes about twenty
//! HKDF-Expand calls. The aws-lc-rs provider runs each through AWS-LC's `HKDF` / `HKDF_expand`,
//! which key an HMAC afresh every time — two extra SHA-256 blocks for the padded key — and,
//! for secrets held before their extraction, redo the extraction on every expansion. Under
//! callgrind these were a quarter of a full TLS 1.3 handshake's instructions (290k of 1.16M),
//! as much as the X25519 key agreement.
//!
//! Here the suites' HKDF is rustls's [`HkdfUsingHmac`] (RFC 5869 written over an HMAC) on an
//! HMAC whose keys are AWS-LC HMAC contexts keyed once: each expansion copies the prepared
//! context and hashes only its own input. The primitives (SHA-2, HMAC) and the AEADs are
//! AWS-LC's as before; only the composition moves from AWS-LC's FIPS module to rustls, which
//! ships it for providers without an HKDF of their own. Legate claims no FIPS mode.

use std::sync::{Mutex, OnceLock};

use aws_lc_rs::hmac as lc;
use rustls::crypto::hash::HashAlgorithm;
use rustls::crypto::hmac::{Hmac, Key, Tag};
use rustls::crypto::tls13::{Hkdf, HkdfUsingHmac};
use rustls::{CipherSuiteCommon, SupportedCipherSuite, Tls13CipherSuite};

/// `suite` with its HKDF on prepared HMAC keys (TLS 1.3 suites with SHA-256 or SHA-384; any
/// other suite is returned as it is).
pub(super) fn with_prepared_hmac(suite: SupportedCipherSuite) -> SupportedCipherSuite {
    let SupportedCipherSuite::Tls13(s) = suite else {
        return suite;
    };
    let Some(hkdf) = hkdf_for(s.common.hash_provider.algorithm()) else {
        return suite;
    };
    // The suites are `&'static` in rustls: each is made once per process.
    static SUITES: OnceLock<Mutex<Vec<&'static Tls13CipherSuite>>> = OnceLock::new();
    let suites = SUITES.get_or_init(Default::default);
    let mut made = suites.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(found) = made.iter().find(|m| m.common.suite == s.common.suite) {
        return SupportedCipherSuite::Tls13(found);
    }
    let ours: &'static Tls13CipherSuite = Box::leak(Box::new(Tls13CipherSuite {
        common: CipherSuiteCommon {
            suite: s.common.suite,
            hash_provider: s.common.hash_provider,
            confidentiality_limit: s.common.confidentiality_limit,
        },
        hkdf_provider: hkdf,
        aead_alg: s.aead_alg,
        quic: s.quic,
    }));
    made.push(ours);
    SupportedCipherSuite::Tls13(ours)
}

fn hkdf_for(hash: HashAlgorithm) -> Option<&'static dyn Hkdf> {
    static HMAC_SHA256: AwsLcHmac = AwsLcHmac(&lc::HMAC_SHA256);
    static HMAC_SHA384: AwsLcHmac = AwsLcHmac(&lc::HMAC_SHA384);
    static HKDF_SHA256: HkdfUsingHmac<'static> = HkdfUsingHmac(&HMAC_SHA256);
    static HKDF_SHA384: HkdfUsingHmac<'static> = HkdfUsingHmac(&HMAC_SHA384);
    match hash {
        HashAlgorithm::SHA256 => Some(&HKDF_SHA256),
        HashAlgorithm::SHA384 => Some(&HKDF_SHA384),
        _ => None,
    }
}

/// AWS-LC's HMAC for rustls: a key is an HMAC context keyed once.
struct AwsLcHmac(&'static lc::Algorithm);

impl Hmac for AwsLcHmac {
    fn with_key(&self, key: &[u8]) -> Box<dyn Key> {
        Box::new(PreparedKey(lc::Key::new(*self.0, key)))
    }

    fn hash_output_len(&self) -> usize {
        self.0.digest_algorithm().output_len()
    }
}

struct PreparedKey(lc::Key);

impl Key for PreparedKey {
    fn sign_concat(&self, first: &[u8], middle: &[&[u8]], last: &[u8]) -> Tag {
        // A copy of the keyed context: the key's padded blocks are not hashed again.
        let mut ctx = lc::Context::with_key(&self.0);
        ctx.update(first);
        for part in middle {
            ctx.update(part);
        }
        ctx.update(last);
        Tag::new(ctx.sign().as_ref())
    }

    fn tag_len(&self) -> usize {
        self.0.algorithm().digest_algorithm().output_len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::aws_lc_rs::cipher_suite;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn hkdf_of(suite: SupportedCipherSuite) -> &'static dyn Hkdf {
        match with_prepared_hmac(suite) {
            SupportedCipherSuite::Tls13(s) => s.hkdf_provider,
            _ => panic!("not a TLS 1.3 suite"),
        }
    }

    /// RFC 5869's test case 1 (SHA-256, salt and info given) and test case 3 (no salt, no
    /// info).
    #[test]
    fn hkdf_sha256_gives_rfc_5869_outputs() {
        let hkdf = hkdf_of(cipher_suite::TLS13_AES_128_GCM_SHA256);
        let ikm = hex("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b");
        let salt = hex("000102030405060708090a0b0c");
        let info = hex("f0f1f2f3f4f5f6f7f8f9");
        let mut okm = [0u8; 42];
        hkdf.extract_from_secret(Some(&salt), &ikm)
            .expand_slice(&[&info[..5], &info[5..]], &mut okm)
            .unwrap();
        assert_eq!(
            okm.to_vec(),
            hex(
                "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
            )
        );
        let mut okm = [0u8; 42];
        hkdf.extract_from_secret(None, &ikm)
            .expand_slice(&[], &mut okm)
            .unwrap();
        assert_eq!(
            okm.to_vec(),
            hex(
                "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
            )
        );
    }

    /// The prepared-key HKDF agrees with the one it replaces, for both hashes and every way
    /// rustls calls it.
    #[test]
    fn agrees_with_the_providers_own_hkdf() {
        for suite in [
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ] {
            let SupportedCipherSuite::Tls13(theirs) = suite else {
                unreachable!()
            };
            let (theirs, ours) = (theirs.hkdf_provider, hkdf_of(suite));
            let secret = [7u8; 48];
            let salt = [3u8; 32];
            let info: &[&[u8]] = &[b"tls13 ", b"c hs traffic", &[0x20], &[9; 32]];
            let mut a = [0u8; 100];
            let mut b = [0u8; 100];
            theirs
                .extract_from_secret(Some(&salt), &secret)
                .expand_slice(info, &mut a)
                .unwrap();
            ours.extract_from_secret(Some(&salt), &secret)
                .expand_slice(info, &mut b)
                .unwrap();
            assert_eq!(a, b);
            let a = theirs.extract_from_zero_ikm(None).expand_block(info);
            let b = ours.extract_from_zero_ikm(None).expand_block(info);
            assert_eq!(a.as_ref(), b.as_ref());
            let okm = theirs.extract_from_zero_ikm(Some(&salt)).expand_block(&[]);
            let a = theirs.expander_for_okm(&okm).expand_block(info);
            let b = ours.expander_for_okm(&okm).expand_block(info);
            assert_eq!(a.as_ref(), b.as_ref());
            assert_eq!(
                theirs.hmac_sign(&okm, b"finished").as_ref(),
                ours.hmac_sign(&okm, b"finished").as_ref()
            );
        }
    }

    #[test]
    fn each_suite_is_made_once() {
        let a = with_prepared_hmac(cipher_suite::TLS13_AES_128_GCM_SHA256);
        let b = with_prepared_hmac(cipher_suite::TLS13_AES_128_GCM_SHA256);
        let (SupportedCipherSuite::Tls13(a), SupportedCipherSuite::Tls13(b)) = (a, b) else {
            unreachable!()
        };
        assert!(std::ptr::eq(a, b));
    }
}
