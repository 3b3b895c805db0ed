//! What Envoy exposes of an X.509 certificate, in Envoy's spelling: the subject and issuer as
//! BoringSSL's `X509_NAME_print_ex(.., XN_FLAG_RFC2253)` prints them, the serial number as
//! `BN_bn2hex` does (lower-case hex, no leading zero bytes), SHA-256 and SHA-1 fingerprints
//! of the DER (lower-case hex), the subject alternative names by type (as Envoy's
//! `Utility::getSubjectAltNames` / `generalNameAsString` render them), the validity period and
//! the PEM form, URL-encoded as `Http::Utility::PercentEncoding::urlEncode` does.
//!
//! These feed the `%DOWNSTREAM_PEER_*%` operators, `x-forwarded-client-cert` and `/certs`.
//! Parsing is `x509-parser`'s; names are rendered in [`names`] (no crate prints them
//! byte-for-byte as BoringSSL does); [`registry`] keeps the live contexts' certificates for
//! `/certs`.

mod names;
mod registry;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rustls::sign::CertifiedKey;
use x509_parser::der_parser::asn1_rs::{Any, Tag};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use names::rfc2253;
pub use registry::{CertificateFile, ContextCertificates, SecretCa, SecretCertificate};

/// One subject alternative name of a certificate, rendered as Envoy's `generalNameAsString`
/// renders it (the form its SAN matchers and `%DOWNSTREAM_PEER_*_SAN%` see).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubjectAltName {
    Dns(String),
    Uri(String),
    Email(String),
    /// `127.0.0.1`, `::1`; an address of another length is an empty string, as Envoy.
    IpAddress(String),
    /// `oid` dotted (`1.3.6.1.4.1.311.20.2.3`).
    OtherName {
        oid: String,
        value: String,
    },
}

/// The subject alternative names of a parsed certificate, in their order; other kinds
/// (directory names, registered IDs, ...) are left out, as Envoy's matchers never see them.
pub fn subject_alt_names(cert: &X509Certificate<'_>) -> Vec<SubjectAltName> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| {
            Some(match name {
                GeneralName::DNSName(s) => SubjectAltName::Dns((*s).to_owned()),
                GeneralName::URI(s) => SubjectAltName::Uri((*s).to_owned()),
                GeneralName::RFC822Name(s) => SubjectAltName::Email((*s).to_owned()),
                GeneralName::IPAddress(bytes) => SubjectAltName::IpAddress(ip_string(bytes)),
                GeneralName::OtherName(oid, value) => SubjectAltName::OtherName {
                    oid: oid.to_id_string(),
                    value: othername_string(value),
                },
                _ => return None,
            })
        })
        .collect()
}

/// The details of one certificate, computed once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    /// RFC 2253, most significant RDN last (`CN=client,O=Legate,C=US`).
    pub subject: String,
    pub issuer: String,
    /// `BN_bn2hex` of the serial number, lower case (`0a1b...`, `-01` if negative).
    pub serial: String,
    pub sha256: String,
    pub sha1: String,
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    /// `127.0.0.1`, `::1`; an address of another length is an empty string, as Envoy.
    pub ip_sans: Vec<String>,
    pub email_sans: Vec<String>,
    /// otherName values rendered by type as Envoy's `generalNameAsString` does.
    pub othername_sans: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// `-----BEGIN CERTIFICATE-----` ... as `PEM_write_bio_X509` writes it (64-column lines).
    pub pem: String,
}

impl CertificateInfo {
    /// The details of a DER certificate; `None` if it does not parse.
    pub fn parse(der: &[u8]) -> Option<CertificateInfo> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let mut info = CertificateInfo {
            uri_sans: Vec::new(),
            dns_sans: Vec::new(),
            ip_sans: Vec::new(),
            email_sans: Vec::new(),
            othername_sans: Vec::new(),
            subject: rfc2253(cert.subject()),
            issuer: rfc2253(cert.issuer()),
            serial: bn2hex(cert.raw_serial()),
            sha256: hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref()),
            sha1: hex(
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, der)
                    .as_ref(),
            ),
            not_before: system_time(cert.validity().not_before.timestamp()),
            not_after: system_time(cert.validity().not_after.timestamp()),
            pem: pem(der),
        };
        for name in subject_alt_names(&cert) {
            match name {
                SubjectAltName::Dns(s) => info.dns_sans.push(s),
                SubjectAltName::Uri(s) => info.uri_sans.push(s),
                SubjectAltName::Email(s) => info.email_sans.push(s),
                SubjectAltName::IpAddress(s) => info.ip_sans.push(s),
                SubjectAltName::OtherName { value, .. } => info.othername_sans.push(value),
            }
        }
        Some(info)
    }

    /// The PEM, percent-encoded for `%DOWNSTREAM_PEER_CERT%` and `x-forwarded-client-cert`.
    pub fn url_encoded_pem(&self) -> String {
        url_encode(&self.pem)
    }

    /// Whole days from `now` to the end of validity, as Envoy's `getDaysUntilExpiration`
    /// (`ASN1_TIME_diff`); `None` once expired (Envoy then reports 0 in `/certs`).
    pub fn days_until_expiration(&self, now: SystemTime) -> Option<u64> {
        let left = self.not_after.duration_since(now).ok()?;
        Some(left.as_secs() / 86_400)
    }
}

/// What a completed downstream TLS handshake tells about the connection: Envoy's
/// `Ssl::ConnectionInfo`. Taken once when the handshake completes; the certificate details are
/// parsed the first time something (a format operator, `x-forwarded-client-cert`) asks, and
/// kept for the connection's other requests, as Envoy caches them.
#[derive(Debug, Default)]
pub struct TlsInfo {
    /// `TLSv1.2`, `TLSv1.3` (`SSL_get_version`).
    pub version: &'static str,
    /// The BoringSSL name of the suite (`ECDHE-RSA-AES128-GCM-SHA256`, `TLS_AES_128_GCM_SHA256`).
    pub cipher: &'static str,
    /// The client's chain as sent, leaf first (empty without a client certificate).
    peer_chain: Vec<Vec<u8>>,
    /// The certificate this side presented (shared with the context, not copied).
    local: Option<Arc<CertifiedKey>>,
    peer_details: OnceLock<Vec<Option<CertificateInfo>>>,
    local_details: OnceLock<Option<CertificateInfo>>,
}

impl TlsInfo {
    pub fn new(
        version: &'static str,
        cipher: &'static str,
        peer_chain: Vec<Vec<u8>>,
        local: Option<Arc<CertifiedKey>>,
    ) -> TlsInfo {
        TlsInfo {
            version,
            cipher,
            peer_chain,
            local,
            ..TlsInfo::default()
        }
    }

    /// The peer sent a certificate (`peerCertificatePresented`): the connection is mutual TLS.
    pub fn peer_certificate_presented(&self) -> bool {
        !self.peer_chain.is_empty()
    }

    fn peer_details(&self) -> &[Option<CertificateInfo>] {
        self.peer_details.get_or_init(|| {
            self.peer_chain
                .iter()
                .map(|der| CertificateInfo::parse(der))
                .collect()
        })
    }

    /// The client's leaf certificate, parsed.
    pub fn peer(&self) -> Option<&CertificateInfo> {
        self.peer_details().first()?.as_ref()
    }

    /// Every certificate of the client's chain that parses, leaf first
    /// (`SSL_get_peer_full_cert_chain`).
    pub fn peer_chain(&self) -> impl Iterator<Item = &CertificateInfo> {
        self.peer_details().iter().flatten()
    }

    /// The certificate this side presented, parsed.
    pub fn local(&self) -> Option<&CertificateInfo> {
        self.local_details
            .get_or_init(|| {
                let key = self.local.as_ref()?;
                CertificateInfo::parse(key.end_entity_cert().ok()?)
            })
            .as_ref()
    }
}

fn system_time(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// Lower-case hex, as Envoy's `Hex::encode`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

/// A DER INTEGER's content (two's complement, big-endian) as its sign and magnitude.
fn sign_and_magnitude(content: &[u8]) -> (bool, Vec<u8>) {
    let negative = content.first().is_some_and(|b| b & 0x80 != 0);
    if !negative {
        return (false, content.to_vec());
    }
    // Invert and add one.
    let mut m: Vec<u8> = content.iter().map(|b| !b).collect();
    for b in m.iter_mut().rev() {
        let (v, carry) = b.overflowing_add(1);
        *b = v;
        if !carry {
            break;
        }
    }
    (true, m)
}

/// BoringSSL's `BN_bn2hex` of a DER INTEGER's content: lower case, leading zero bytes
/// dropped, `0` for zero, `-` and the magnitude when negative.
fn bn2hex(content: &[u8]) -> String {
    let (negative, magnitude) = sign_and_magnitude(content);
    let start = magnitude
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(magnitude.len());
    let digits = hex(&magnitude[start..]);
    match (negative, digits.is_empty()) {
        (_, true) => "0".to_owned(),
        (true, false) => format!("-{digits}"),
        (false, false) => digits,
    }
}

/// An IP SAN as Envoy prints it: `inet_ntop` of a 4- or 16-byte address, empty otherwise.
fn ip_string(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string(),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(bytes);
            std::net::Ipv6Addr::from(a).to_string()
        }
        _ => String::new(),
    }
}

/// An otherName's value (`[0] EXPLICIT` and the value's DER) as Envoy renders it: strings
/// and times as their bytes, BMP and Universal strings converted to UTF-8, booleans as
/// `true`/`false`, integers in decimal, object identifiers dotted, SETs and SEQUENCEs as their
/// encoding; other types (and NULL) as an empty string.
fn othername_string(explicit: &[u8]) -> String {
    let Ok((_, outer)) = Any::from_der(explicit) else {
        return String::new();
    };
    let Ok((_, value)) = Any::from_der(outer.data) else {
        return String::new();
    };
    let data = value.data;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    match value.tag() {
        Tag::Boolean => {
            if data.first().is_some_and(|&b| b != 0) {
                "true".to_owned()
            } else {
                "false".to_owned()
            }
        }
        Tag::Integer | Tag::Enumerated => bn2dec(data),
        Tag::Oid => x509_parser::der_parser::oid::Oid::new(data.into()).to_id_string(),
        // The bit string's bits, without the unused-bits count.
        Tag::BitString => text(data.get(1..).unwrap_or_default()),
        Tag::OctetString
        | Tag::PrintableString
        | Tag::T61String
        | Tag::Ia5String
        | Tag::GeneralString
        | Tag::UtcTime
        | Tag::GeneralizedTime
        | Tag::VisibleString
        | Tag::Utf8String => text(data),
        Tag::BmpString => data
            .chunks(2)
            .filter(|c| c.len() == 2)
            .filter_map(|c| char::from_u32(u32::from(c[0]) << 8 | u32::from(c[1])))
            .collect(),
        Tag::UniversalString => data
            .chunks(4)
            .filter(|c| c.len() == 4)
            .filter_map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        // The whole encoding, as BoringSSL keeps a SET or SEQUENCE.
        Tag::Set | Tag::Sequence => text(outer.data),
        _ => String::new(),
    }
}

/// `BN_bn2dec` of a DER INTEGER's content (two's complement, big-endian).
fn bn2dec(content: &[u8]) -> String {
    let (negative, mut magnitude) = sign_and_magnitude(content);
    let mut digits = Vec::new();
    while magnitude.iter().any(|&b| b != 0) {
        let mut rem = 0u32;
        for b in magnitude.iter_mut() {
            let cur = rem * 256 + u32::from(*b);
            *b = (cur / 10) as u8;
            rem = cur % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    if digits.is_empty() {
        return "0".to_owned();
    }
    if negative {
        digits.push(b'-');
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

/// The PEM block `PEM_write_bio_X509` writes: 64 base64 characters a line, each line and the
/// footer ended by a newline.
pub fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        // Base64 output is ASCII.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Envoy's `PercentEncoding::urlEncode`: every byte but ALPHA, DIGIT, `*`, `-`, `.` and `_`
/// becomes `%XX` (upper-case hex); a space is `%20`.
pub fn url_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + value.len() / 8);
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'*' | b'-' | b'.' | b'_') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The names a server certificate answers an SNI for, as Envoy's certificate selector indexes
/// them (`populateServerNamesMap`): its DNS subject alternative names — or, for a certificate
/// without the subject-alternative-name extension, its subject's first common name — with a
/// wildcard `*.example.com` kept as `.example.com`. Empty if the DER does not parse.
pub fn server_name_patterns(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(s) => Some((*s).to_owned()),
                _ => None,
            })
            .collect(),
        _ => cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .filter(|cn| !cn.is_empty())
            .map(str::to_owned)
            .into_iter()
            .collect(),
    };
    names
        .into_iter()
        .map(|n| match n.strip_prefix('*') {
            Some(rest) if rest.starts_with('.') => rest.to_owned(),
            _ => n,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(params: rcgen::CertificateParams) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn server_name_patterns_are_envoys() {
        let with_cn = |sans: Vec<String>| {
            let mut p = rcgen::CertificateParams::new(sans).unwrap();
            p.distinguished_name
                .push(rcgen::DnType::CommonName, "cn.example.com");
            cert(p)
        };
        // DNS SANs, wildcards as `.domain`; other SAN types and the CN are not names.
        assert_eq!(
            server_name_patterns(&with_cn(vec![
                "*.a.example.com".into(),
                "b.example.com".into(),
                "127.0.0.1".into(),
            ])),
            [".a.example.com", "b.example.com"]
        );
        // A SAN extension without DNS names: no names (the CN is not looked at).
        assert!(server_name_patterns(&with_cn(vec!["10.0.0.1".into()])).is_empty());
        // No SAN extension: the CN.
        assert_eq!(server_name_patterns(&with_cn(vec![])), ["cn.example.com"]);
        assert!(server_name_patterns(b"not a certificate").is_empty());
    }

    #[test]
    fn names_sans_serial_and_fingerprints() {
        let mut p = rcgen::CertificateParams::new(vec!["client.example.com".into()]).unwrap();
        p.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://legate/client".try_into().unwrap(),
        ));
        p.subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        p.subject_alt_names
            .push(rcgen::SanType::IpAddress("::1".parse().unwrap()));
        p.subject_alt_names.push(rcgen::SanType::Rfc822Name(
            "ops@example.com".try_into().unwrap(),
        ));
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CountryName, "US");
        dn.push(rcgen::DnType::OrganizationName, "Lyft, Inc.");
        dn.push(rcgen::DnType::CommonName, " Test #Client ");
        p.distinguished_name = dn;
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x00, 0x0a, 0xbc]));
        let der = cert(p);
        let info = CertificateInfo::parse(&der).unwrap();
        assert_eq!(info.subject, r"CN=\ Test #Client\ ,O=Lyft\, Inc.,C=US");
        assert_eq!(info.issuer, info.subject);
        assert_eq!(info.serial, "0abc");
        assert_eq!(info.dns_sans, ["client.example.com"]);
        assert_eq!(info.uri_sans, ["spiffe://legate/client"]);
        assert_eq!(info.ip_sans, ["127.0.0.1", "::1"]);
        assert_eq!(info.email_sans, ["ops@example.com"]);
        assert_eq!(info.sha256.len(), 64);
        assert_eq!(info.sha1.len(), 40);
        assert!(info.pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(info.pem.ends_with("\n-----END CERTIFICATE-----\n"));
        assert!(info.pem.lines().skip(1).all(|l| l.len() <= 64));
        let encoded = info.url_encoded_pem();
        assert!(encoded.starts_with("-----BEGIN%20CERTIFICATE-----%0A"));
        assert!(!encoded.contains('+') && !encoded.contains('/') && !encoded.contains('='));
    }

    #[test]
    fn non_ascii_and_multivalued_names() {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, "caf\u{e9}");
        p.distinguished_name = dn;
        let info = CertificateInfo::parse(&cert(p)).unwrap();
        assert_eq!(info.subject, r"CN=caf\C3\A9");
        assert!(info.dns_sans.is_empty());
    }

    #[test]
    fn serials_as_bn2hex() {
        assert_eq!(bn2hex(&[0x00]), "0");
        assert_eq!(bn2hex(&[0x01, 0x02]), "0102");
        assert_eq!(bn2hex(&[0x00, 0x80]), "80");
        assert_eq!(bn2hex(&[0xff]), "-01");
        assert_eq!(bn2hex(&[0x80, 0x00]), "-8000");
    }

    #[test]
    fn othername_values_by_type() {
        let explicit = |inner: &[u8]| {
            let mut v = vec![0xa0, inner.len() as u8];
            v.extend_from_slice(inner);
            v
        };
        assert_eq!(othername_string(&explicit(&[0x0c, 2, b'h', b'i'])), "hi");
        assert_eq!(othername_string(&explicit(&[0x01, 1, 0xff])), "true");
        assert_eq!(othername_string(&explicit(&[0x02, 2, 0x01, 0x00])), "256");
        assert_eq!(othername_string(&explicit(&[0x02, 1, 0xff])), "-1");
        assert_eq!(
            othername_string(&explicit(&[0x06, 3, 0x2a, 0x03, 0x04])),
            "1.2.3.4"
        );
        assert_eq!(othername_string(&explicit(&[0x05, 0])), "");
        assert_eq!(othername_string(b"junk"), "");
        assert_eq!(bn2dec(&[0x00]), "0");
        assert_eq!(
            bn2dec(&[0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            "340282366920938463463374607431768211456"
        );
    }

    #[test]
    fn url_encoding_matches_envoy() {
        assert_eq!(
            url_encode("a+b/c=d e\n*-._~"),
            "a%2Bb%2Fc%3Dd%20e%0A*-._%7E"
        );
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(CertificateInfo::parse(b"not a certificate").is_none());
    }
}
