//! What a peer's certificate must be besides a chain to a trusted CA, from a
//! `CertificateValidationContext`, checked as Envoy's `DefaultCertValidator` checks it:
//!
//! * **subject alternative names** — `match_typed_subject_alt_names` (a type — DNS, URI,
//!   EMAIL, IP_ADDRESS, or OTHER_NAME with its `oid` — and a `StringMatcher`; an `exact`
//!   DNS matcher follows DNS rules: case-insensitive, a certificate's `*.example.com` covers
//!   one label) or, when there are none, the deprecated `match_subject_alt_names` (each
//!   matcher tried on the DNS, URI, EMAIL and IP_ADDRESS names). One matcher matching one name suffices; none:
//!   `ssl.fail_verify_san`.
//! * **pins** — `verify_certificate_hash` (the SHA-256 of the certificate's DER, hex, with or
//!   without colons) and `verify_certificate_spki` (the SHA-256 of its SubjectPublicKeyInfo,
//!   base64). Any pin of either list matching suffices; none: `ssl.fail_verify_cert_hash`.
//!   Pins work without `trusted_ca`: the certificate is then checked against them alone.
//!
//! Only the end-entity certificate is looked at. A context with any of these checks requires
//! the peer to present a certificate (`ssl.fail_verify_no_cert`), with or without
//! `require_client_certificate`, as Envoy's verify mode does.

use base64::Engine;
use legate_api::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, SubjectAltNameMatcher, subject_alt_name_matcher::SanType,
};
use legate_api::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use prost::Message;
use rustls::CertificateError;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::matcher::CompiledStringMatcher;
use crate::x509::{SubjectAltName, subject_alt_names};
use crate::{Compiled, Errors};

/// The checks of one validation context, compiled.
#[derive(Debug, Clone, Default)]
pub struct PeerChecks {
    san_matchers: Vec<SanMatcher>,
    cert_hashes: Vec<[u8; 32]>,
    spki_hashes: Vec<[u8; 32]>,
    /// The configuration these came from, encoded: what a TLS session's context id hashes so
    /// that a session is only resumed where the same checks would have passed.
    identity: Vec<u8>,
}

#[derive(Debug, Clone)]
struct SanMatcher {
    kind: SanKind,
    pattern: SanPattern,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SanKind {
    Dns,
    Uri,
    Email,
    IpAddress,
    /// The dotted object identifier the otherName must have.
    OtherName(String),
}

#[derive(Debug, Clone)]
enum SanPattern {
    /// An `exact` DNS matcher: DNS rules, wildcards in the certificate's name.
    DnsExact(String),
    Matcher(CompiledStringMatcher),
}

impl PeerChecks {
    /// Compiles the SAN matchers and pins of `v`; `has_trusted_ca` tells whether a chain is
    /// verified too (SAN matchers without one are refused, as Envoy refuses them).
    #[allow(deprecated)] // `match_subject_alt_names` is deprecated but still accepted by Envoy 1.40.
    pub fn compile(v: &CertificateValidationContext, has_trusted_ca: bool) -> Compiled<PeerChecks> {
        let mut errors = Errors::default();
        let mut checks = PeerChecks::default();
        for (i, m) in v.match_typed_subject_alt_names.iter().enumerate() {
            if let Some(m) = errors.take(
                &format!("match_typed_subject_alt_names[{i}]"),
                SanMatcher::compile(m),
            ) {
                checks.san_matchers.push(m);
            }
        }
        // Envoy 1.40 reads the deprecated list only when the typed one is empty.
        let deprecated = if v.match_typed_subject_alt_names.is_empty() {
            v.match_subject_alt_names.as_slice()
        } else {
            &[]
        };
        for (i, m) in deprecated.iter().enumerate() {
            let path = format!("match_subject_alt_names[{i}]");
            for kind in [
                SanKind::Dns,
                SanKind::Uri,
                SanKind::Email,
                SanKind::IpAddress,
            ] {
                if let Some(pattern) = errors.take(&path, SanPattern::compile(&kind, m)) {
                    checks.san_matchers.push(SanMatcher { kind, pattern });
                }
            }
        }
        if !checks.san_matchers.is_empty() && !has_trusted_ca {
            let field = if v.match_typed_subject_alt_names.is_empty() {
                "match_subject_alt_names"
            } else {
                "match_typed_subject_alt_names"
            };
            errors.push(
                field,
                "SAN-based verification of peer certificates without trusted CA is insecure and \
                 not allowed",
            );
        }
        for (i, pin) in v.verify_certificate_hash.iter().enumerate() {
            // Envoy drops the colons of the 95-character `AB:CD:...` form only.
            let hex = if pin.len() == 95 {
                pin.replace(':', "")
            } else {
                pin.clone()
            };
            match decode_hex(&hex).and_then(|b| <[u8; 32]>::try_from(b).ok()) {
                Some(hash) => checks.cert_hashes.push(hash),
                None => errors.push(
                    &format!("verify_certificate_hash[{i}]"),
                    format!("Invalid hex-encoded SHA-256 {hex}"),
                ),
            }
        }
        for (i, pin) in v.verify_certificate_spki.iter().enumerate() {
            let decoded = base64::engine::general_purpose::STANDARD.decode(pin).ok();
            match decoded.and_then(|b| <[u8; 32]>::try_from(b).ok()) {
                Some(hash) => checks.spki_hashes.push(hash),
                None => errors.push(
                    &format!("verify_certificate_spki[{i}]"),
                    format!("Invalid base64-encoded SHA-256 {pin}"),
                ),
            }
        }
        if !checks.is_empty() {
            let listed = CertificateValidationContext {
                match_typed_subject_alt_names: v.match_typed_subject_alt_names.clone(),
                match_subject_alt_names: v.match_subject_alt_names.clone(),
                verify_certificate_hash: v.verify_certificate_hash.clone(),
                verify_certificate_spki: v.verify_certificate_spki.clone(),
                ..Default::default()
            };
            checks.identity = listed.encode_to_vec();
        }
        errors.finish(|| checks)
    }

    /// Whether there is nothing to check (then a peer need not present a certificate).
    pub fn is_empty(&self) -> bool {
        self.san_matchers.is_empty() && self.cert_hashes.is_empty() && self.spki_hashes.is_empty()
    }

    /// See [`PeerChecks::identity`].
    pub fn identity(&self) -> &[u8] {
        &self.identity
    }

    /// Checks the peer's end-entity certificate: the SAN matchers first, then the pins, as
    /// Envoy does. A SAN mismatch is `NotValidForName` (`ssl.fail_verify_san`), a pin
    /// mismatch `ApplicationVerificationFailure` (`ssl.fail_verify_cert_hash`).
    pub fn check(&self, end_entity: &[u8]) -> Result<(), CertificateError> {
        if self.is_empty() {
            return Ok(());
        }
        let Ok((_, cert)) = X509Certificate::from_der(end_entity) else {
            return Err(CertificateError::BadEncoding);
        };
        if !self.san_matchers.is_empty() {
            let names = subject_alt_names(&cert);
            if !self
                .san_matchers
                .iter()
                .any(|m| names.iter().any(|n| m.matches(n)))
            {
                return Err(CertificateError::NotValidForName);
            }
        }
        if !self.cert_hashes.is_empty() || !self.spki_hashes.is_empty() {
            let cert_hash = sha256(end_entity);
            let spki_hash = sha256(cert.public_key().raw);
            if !self.cert_hashes.contains(&cert_hash) && !self.spki_hashes.contains(&spki_hash) {
                return Err(CertificateError::ApplicationVerificationFailure);
            }
        }
        Ok(())
    }
}

impl SanMatcher {
    fn compile(m: &SubjectAltNameMatcher) -> Compiled<SanMatcher> {
        let kind = match SanType::try_from(m.san_type) {
            Ok(SanType::Dns) => SanKind::Dns,
            Ok(SanType::Uri) => SanKind::Uri,
            Ok(SanType::Email) => SanKind::Email,
            Ok(SanType::IpAddress) => SanKind::IpAddress,
            Ok(SanType::OtherName) => match dotted_oid(&m.oid) {
                Some(oid) => SanKind::OtherName(oid),
                None => {
                    return Err(vec![crate::ConfigError::new(
                        "oid",
                        format!(
                            "Failed to create string SAN matcher of type {}: '{}' is not a \
                             dotted object identifier",
                            m.san_type, m.oid
                        ),
                    )]);
                }
            },
            Ok(SanType::Unspecified) | Err(_) => {
                return Err(vec![crate::ConfigError::new(
                    "san_type",
                    "value must be a defined SAN type other than SAN_TYPE_UNSPECIFIED",
                )]);
            }
        };
        let Some(matcher) = &m.matcher else {
            return Err(vec![crate::ConfigError::new(
                "matcher",
                "value is required",
            )]);
        };
        let pattern = SanPattern::compile(&kind, matcher).map_err(|e| {
            e.into_iter()
                .map(|e| e.within("matcher"))
                .collect::<Vec<_>>()
        })?;
        Ok(SanMatcher { kind, pattern })
    }

    fn matches(&self, name: &SubjectAltName) -> bool {
        let value = match (&self.kind, name) {
            (SanKind::Dns, SubjectAltName::Dns(v))
            | (SanKind::Uri, SubjectAltName::Uri(v))
            | (SanKind::Email, SubjectAltName::Email(v))
            | (SanKind::IpAddress, SubjectAltName::IpAddress(v)) => v,
            (SanKind::OtherName(want), SubjectAltName::OtherName { oid, value }) if want == oid => {
                value
            }
            _ => return false,
        };
        match &self.pattern {
            SanPattern::DnsExact(name) => dns_name_match(name, value),
            SanPattern::Matcher(m) => m.matches(value),
        }
    }
}

impl SanPattern {
    fn compile(kind: &SanKind, m: &StringMatcher) -> Compiled<SanPattern> {
        match (&kind, &m.match_pattern) {
            (SanKind::Dns, Some(MatchPattern::Exact(name))) => {
                Ok(SanPattern::DnsExact(name.clone()))
            }
            _ => CompiledStringMatcher::compile(m).map(SanPattern::Matcher),
        }
    }
}

/// Envoy's `dnsNameMatch(name, pattern)`: `pattern` is the certificate's name. Equal ignoring
/// ASCII case, or `pattern`'s first label holds the one wildcard (`*`, `*.`, `b*`, `*z`, not
/// an A-label `xn--`) and the rest of both names are equal.
fn dns_name_match(name: &str, pattern: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let pattern = pattern.to_ascii_lowercase();
    if name == pattern {
        return true;
    }
    let (Some((pattern_label, pattern_rest)), Some((name_label, name_rest))) =
        (pattern.split_once('.'), name.split_once('.'))
    else {
        return false;
    };
    pattern_label.contains('*')
        && !pattern_rest.contains('*')
        && !pattern_label.starts_with("xn--")
        && name_rest == pattern_rest
        && label_wildcard_match(name_label, pattern_label)
}

/// Envoy's `labelWildcardMatch`: `*` matches any label; `b*z` a label starting with `b` and
/// ending with `z`; two wildcards never match.
fn label_wildcard_match(label: &str, pattern: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.split_once('*') {
        Some((prefix, suffix)) if !suffix.contains('*') => {
            pattern.len() <= label.len() + 1 && label.starts_with(prefix) && label.ends_with(suffix)
        }
        _ => false,
    }
}

/// `1.3.6.1.4.1.311.20.2.3`, each arc a number (at least two arcs).
fn dotted_oid(oid: &str) -> Option<String> {
    let arcs: Vec<u64> = oid
        .split('.')
        .map(|a| {
            (!a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()))
                .then(|| a.parse().ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    (arcs.len() >= 2 && arcs[0] <= 2).then(|| {
        arcs.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(".")
    })
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_match_as_envoys_dns_name_match() {
        for (name, pattern, expected) in [
            ("a.example.com", "a.example.com", true),
            ("A.Example.COM", "a.example.com", true),
            ("a.example.com", "*.example.com", true),
            ("a.b.example.com", "*.example.com", false),
            ("example.com", "*.example.com", false),
            ("foo.example.com", "f*.example.com", true),
            ("foo.example.com", "*o.example.com", true),
            ("foo.example.com", "b*.example.com", false),
            ("foo.example.com", "f*o*.example.com", false),
            ("xn--a.example.com", "xn--*.example.com", false),
            ("a.example.com", "a.*.com", false),
            ("localhost", "*", false),
        ] {
            assert_eq!(
                dns_name_match(name, pattern),
                expected,
                "{name} ~ {pattern}"
            );
        }
    }

    #[test]
    fn pins_and_oids_are_read_as_envoy_reads_them() {
        assert_eq!(
            dotted_oid("1.3.6.1.4.1.311.20.2.3").as_deref(),
            Some("1.3.6.1.4.1.311.20.2.3")
        );
        assert_eq!(dotted_oid("1.03"), Some("1.3".into()));
        for bad in ["", "1", "msUPN", "1..2", "3.1", "1.2."] {
            assert_eq!(dotted_oid(bad), None, "{bad}");
        }
        let colons = "81:23:7E:CB:D7:B1:F1:79:DB:CD:48:A9:03:42:87:86:F9:43:D0:1D:10:66:A4:5D:C3:EF:1E:8F:E6:4C:44:B4";
        let v = CertificateValidationContext {
            verify_certificate_hash: vec![
                colons.into(),
                colons.replace(':', "").to_lowercase(),
                "abc".into(),
            ],
            verify_certificate_spki: vec![
                "nLFs39yncnUsARuikZYu6BAeMrjOH6mF8Xs0BWMYc3w=".into(),
                "AAAA".into(),
            ],
            ..Default::default()
        };
        let errors = PeerChecks::compile(&v, false).unwrap_err();
        let shown: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert!(
            shown[0].contains("verify_certificate_hash[2]")
                && shown[0].contains("Invalid hex-encoded SHA-256 abc"),
            "{shown:?}"
        );
        assert!(
            shown[1].contains("verify_certificate_spki[1]")
                && shown[1].contains("Invalid base64-encoded SHA-256 AAAA"),
            "{shown:?}"
        );
    }
}
