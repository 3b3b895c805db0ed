//! The parts of Envoy's TLS configuration both directions share (`CommonTlsContext`,
//! tls.proto), compiled for rustls: certificate chains and keys (`TlsCertificate`), trusted
//! CAs and subject-alt-name matchers (`CertificateValidationContext`), `TlsParameters`
//! (protocol versions, cipher suites, ECDH curves) as a rustls crypto provider, and the names
//! Envoy's `ssl.*` stats use for what a handshake negotiated.
//!
//! The crypto provider is aws-lc-rs, the only one in the tree (DESIGN.md §5); every context is
//! built with an explicit provider, and [`install_default_provider`] is called at start-up.

use std::sync::Arc;

use legate_api::pb::envoy::config::core::v3::{DataSource, data_source};
use legate_api::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, TlsCertificate, TlsParameters, certificate_validation_context,
    tls_parameters::TlsProtocol,
};
use rustls::crypto::{CryptoProvider, SupportedKxGroup, aws_lc_rs};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{CipherSuite, NamedGroup, ProtocolVersion, RootCertStore, SupportedProtocolVersion};

mod hkdf;
pub mod key_log;
pub mod peer;
pub mod sds;
mod served;

pub use peer::PeerChecks;
pub use served::{ServedCert, names_of};

use crate::stats::{Counter, Scope};
use crate::{Compiled, ConfigError, Errors, within};

/// Installs aws-lc-rs as the process's default rustls provider. Legate builds every context with
/// an explicit provider; this only makes a stray `ClientConfig::builder()` use the same one.
pub fn install_default_provider() {
    let _ = provider().install_default();
}

/// aws-lc-rs, with Legate's choices of suites and groups made per context (see [`params`]),
/// and TLS 1.3's HKDF on HMAC keys prepared once ([`hkdf`]).
/// Its random bytes come from AWS-LC's per-thread DRBG: ~11 `getrandom(2)` calls over 1,000
/// TLS 1.3 handshakes, where ring's source made ~2.5 a handshake.
fn provider() -> CryptoProvider {
    let mut provider = aws_lc_rs::default_provider();
    provider.cipher_suites = provider
        .cipher_suites
        .into_iter()
        .map(hkdf::with_prepared_hmac)
        .collect();
    provider
}

/// Which end of the connection a context is for: Envoy's defaults differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Server,
    Client,
}

/// `TlsParameters`, compiled: the provider (cipher suites and key-exchange groups filtered)
/// and the protocol versions to enable.
#[derive(Debug, Clone)]
pub struct Params {
    pub provider: Arc<CryptoProvider>,
    pub versions: Vec<&'static SupportedProtocolVersion>,
}

impl Params {
    /// The protocol versions as rustls takes them for a configuration's builder.
    pub fn with_versions<S: rustls::ConfigSide>(
        &self,
        builder: rustls::ConfigBuilder<S, rustls::WantsVersions>,
    ) -> Compiled<rustls::ConfigBuilder<S, rustls::WantsVerifier>> {
        builder.with_protocol_versions(&self.versions).map_err(|e| {
            vec![ConfigError::new(
                "common_tls_context.tls_params",
                format!("inconsistent TLS parameters: {e}"),
            )]
        })
    }
}

/// BoringSSL cipher names (as Envoy takes them) that rustls implements, with rustls's suite,
/// in the order of Envoy's default `cipher_suites` (its preference when none are given).
const CIPHERS: &[(&str, CipherSuite)] = &[
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
];

/// BoringSSL's TLS 1.3 preference (AES-128 first).
const TLS13_ORDER: &[CipherSuite] = &[
    CipherSuite::TLS13_AES_128_GCM_SHA256,
    CipherSuite::TLS13_AES_256_GCM_SHA384,
    CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
];

/// TLS 1.2 suites BoringSSL (and so Envoy) knows but rustls does not implement (CBC modes,
/// RSA key exchange, PSK, 3DES). A list naming them is accepted as long as it names one suite
/// Legate has; these are not offered.
const LEGACY_CIPHERS: &[&str] = &[
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA",
    "AES256-SHA",
    "DES-CBC3-SHA",
    "ECDHE-PSK-AES128-CBC-SHA",
    "ECDHE-PSK-AES256-CBC-SHA",
    "ECDHE-PSK-CHACHA20-POLY1305",
    "PSK-AES128-CBC-SHA",
    "PSK-AES256-CBC-SHA",
];

/// The OpenSSL/BoringSSL name of a suite, as Envoy's `ssl.ciphers.<cipher>` stats use it.
pub fn cipher_name(suite: CipherSuite) -> &'static str {
    match suite {
        CipherSuite::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        CipherSuite::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        other => CIPHERS
            .iter()
            .find(|(_, s)| *s == other)
            .map_or("unknown_ssl_cipher", |(n, _)| n),
    }
}

/// `ssl.versions.<version>`.
pub fn version_name(v: ProtocolVersion) -> &'static str {
    match v {
        ProtocolVersion::TLSv1_2 => "TLSv1.2",
        ProtocolVersion::TLSv1_3 => "TLSv1.3",
        _ => "unknown_ssl_version",
    }
}

/// `ssl.curves.<curve>`.
pub fn curve_name(g: NamedGroup) -> &'static str {
    match g {
        NamedGroup::X25519 => "X25519",
        NamedGroup::secp256r1 => "P-256",
        NamedGroup::secp384r1 => "P-384",
        _ => "unknown_ssl_curve",
    }
}

fn curve(name: &str) -> Option<&'static dyn SupportedKxGroup> {
    Some(match name {
        "X25519" => aws_lc_rs::kx_group::X25519,
        "P-256" => aws_lc_rs::kx_group::SECP256R1,
        "P-384" => aws_lc_rs::kx_group::SECP384R1,
        _ => return None,
    })
}

fn protocol(value: i32) -> Option<TlsProtocol> {
    TlsProtocol::try_from(value).ok()
}

/// Compiles `tls_params` (paths are relative to it). Envoy's defaults: TLS 1.2 to 1.3 for
/// servers, TLS 1.2 only for clients; curves X25519 and P-256; every cipher suite.
pub fn params(p: Option<&TlsParameters>, side: Side) -> Compiled<Params> {
    let default = TlsParameters::default();
    let p = p.unwrap_or(&default);
    let mut errors = Errors::default();
    let rank = |v: TlsProtocol| match v {
        TlsProtocol::TlsAuto => None,
        TlsProtocol::TlSv10 => Some(10),
        TlsProtocol::TlSv11 => Some(11),
        TlsProtocol::TlSv12 => Some(12),
        TlsProtocol::TlSv13 => Some(13),
    };
    let min = protocol(p.tls_minimum_protocol_version)
        .and_then(rank)
        .unwrap_or(12);
    let max = protocol(p.tls_maximum_protocol_version)
        .and_then(rank)
        .unwrap_or(match side {
            Side::Server => 13,
            Side::Client => 12.max(min),
        });
    let mut versions = Vec::new();
    if min > max {
        errors.push(
            "tls_minimum_protocol_version",
            "the minimum TLS protocol version is above the maximum",
        );
    } else {
        // rustls implements TLS 1.2 and 1.3 only: a minimum of 1.0 or 1.1 means 1.2.
        if min <= 12 && max >= 12 {
            versions.push(&rustls::version::TLS12);
        }
        if max >= 13 {
            versions.push(&rustls::version::TLS13);
        }
        if versions.is_empty() {
            errors.push(
                "tls_maximum_protocol_version",
                "TLS 1.0 and 1.1 are not supported by Legate (TLS 1.2 and 1.3 are)",
            );
        }
    }

    let mut provider = provider();
    // Envoy's order when `cipher_suites` is not set (servers choose by their own order).
    provider.cipher_suites.sort_by_key(|s| {
        let suite = s.suite();
        TLS13_ORDER
            .iter()
            .position(|t| *t == suite)
            .or_else(|| {
                CIPHERS
                    .iter()
                    .position(|(_, c)| *c == suite)
                    .map(|i| i + TLS13_ORDER.len())
            })
            .unwrap_or(usize::MAX)
    });
    if !p.cipher_suites.is_empty() {
        let mut wanted = Vec::new();
        for (i, entry) in p.cipher_suites.iter().enumerate() {
            // BoringSSL's equal-preference groups: `[A|B]`.
            let inner = entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .unwrap_or(entry);
            for name in inner.split('|').map(str::trim) {
                if let Some((_, suite)) = CIPHERS.iter().find(|(n, _)| *n == name) {
                    wanted.push(*suite);
                } else if !LEGACY_CIPHERS.contains(&name) {
                    errors.push(
                        &format!("cipher_suites[{i}]"),
                        format!("Failed to initialize cipher suites {entry}: '{name}' is not a cipher suite Legate supports"),
                    );
                }
            }
        }
        let tls12 = |s: &rustls::SupportedCipherSuite| s.version() == &rustls::version::TLS12;
        if wanted.is_empty() && errors.0.is_empty() && versions.contains(&&rustls::version::TLS12) {
            if versions.len() == 1 {
                errors.push(
                    "cipher_suites",
                    "none of these cipher suites is implemented by Legate (ECDHE with AES-GCM or ChaCha20-Poly1305 are)",
                );
            }
            versions.retain(|v| *v != &rustls::version::TLS12);
        }
        // TLS 1.3 suites are not configurable in Envoy either: keep them all.
        provider
            .cipher_suites
            .retain(|s| !tls12(s) || wanted.contains(&s.suite()));
        // A stable sort: TLS 1.3 suites first in their order, then the list's order.
        provider.cipher_suites.sort_by_key(|s| {
            if tls12(s) {
                1 + wanted.iter().position(|w| *w == s.suite()).unwrap_or(0)
            } else {
                0
            }
        });
    }
    let curves: Vec<&str> = if p.ecdh_curves.is_empty() {
        vec!["X25519", "P-256"]
    } else {
        p.ecdh_curves
            .iter()
            .flat_map(|c| c.split(':'))
            .map(str::trim)
            .collect()
    };
    let mut groups = Vec::new();
    for name in curves {
        match curve(name) {
            Some(g) => groups.push(g),
            None => errors.push(
                "ecdh_curves",
                format!("Failed to initialize ECDH curves {name}: not a curve Legate supports (X25519, P-256, P-384 are)"),
            ),
        }
    }
    provider.kx_groups = groups;
    errors.finish(|| Params {
        provider: Arc::new(provider),
        versions,
    })
}

/// The bytes of a `DataSource` and a name for it in errors (the file name, or `<inline>`).
pub fn read_data_source(source: &DataSource) -> Compiled<(Vec<u8>, String)> {
    let err = |path: &str, message: String| Err(vec![ConfigError::new(path, message)]);
    if source.watched_directory.is_some() {
        return err(
            "watched_directory",
            "watched directories are not supported by Legate".into(),
        );
    }
    match &source.specifier {
        Some(data_source::Specifier::Filename(path)) => match std::fs::read(path) {
            Ok(b) => Ok((b, path.clone())),
            Err(e) => err("filename", format!("unable to read file: {path}: {e}")),
        },
        Some(data_source::Specifier::InlineBytes(b)) => Ok((b.clone(), "<inline>".into())),
        Some(data_source::Specifier::InlineString(s)) => {
            Ok((s.as_bytes().to_vec(), "<inline>".into()))
        }
        Some(data_source::Specifier::EnvironmentVariable(name)) => match std::env::var(name) {
            Ok(s) => Ok((s.into_bytes(), "<inline>".into())),
            Err(_) => err(
                "environment_variable",
                format!("Environment variable doesn't exist: {name}"),
            ),
        },
        None => err("", "a data source is required".into()),
    }
}

/// The certificates of a PEM data source (`path` names the field for errors).
pub fn certificates(source: &DataSource, path: &str) -> Compiled<Vec<CertificateDer<'static>>> {
    let (bytes, name) = read_data_source(source).map_err(|e| within(e, path))?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
    match certs {
        Ok(c) if !c.is_empty() => Ok(c),
        _ => Err(vec![ConfigError::new(
            path,
            format!("Failed to load certificate chain from {name}"),
        )]),
    }
}

/// A `TlsCertificate`: its chain and private key, checked to belong together. RSA, ECDSA
/// (P-256, P-384) and Ed25519 keys in PKCS#8, PKCS#1 or SEC1 PEM.
pub fn certified_key(c: &TlsCertificate, provider: &CryptoProvider) -> Compiled<Arc<CertifiedKey>> {
    let mut errors = Errors::default();
    let chain = match &c.certificate_chain {
        Some(s) => errors.take("", certificates(s, "certificate_chain")),
        None => {
            errors.push("certificate_chain", "a certificate chain is required");
            None
        }
    };
    let key = match &c.private_key {
        Some(s) => match read_data_source(s) {
            Ok((bytes, name)) => match PrivateKeyDer::from_pem_slice(&bytes) {
                Ok(k) => Some((k, name)),
                Err(_) => {
                    errors.push(
                        "private_key",
                        format!("Failed to load private key from {name}"),
                    );
                    None
                }
            },
            Err(e) => {
                errors.0.extend(within(e, "private_key"));
                None
            }
        },
        None => {
            errors.push("private_key", "a private key is required");
            None
        }
    };
    let (Some(chain), Some((key, name))) = (chain, key) else {
        return Err(errors.0);
    };
    match CertifiedKey::from_der(chain, key, provider) {
        Ok(k) => errors.finish(|| Arc::new(k)),
        Err(e) => {
            errors.push(
                "private_key",
                format!("Failed to load private key from {name}, Cause: {e}"),
            );
            Err(errors.0)
        }
    }
}

/// `CertificateValidationContext`, compiled: the trusted CAs, the certificate revocation
/// lists, and what else the peer's certificate must be ([`peer`]: SAN matchers, pins).
#[derive(Debug, Clone, Default)]
pub struct Validation {
    pub roots: Option<Arc<RootCertStore>>,
    /// From `crl` and from CRL blocks in the `trusted_ca` PEM (Envoy loads both). As
    /// BoringSSL's `X509_V_FLAG_CRL_CHECK_ALL`, which Envoy sets once any CRL is loaded: every
    /// certificate of the chain needs its issuer's CRL (unknown status fails), and an expired
    /// CRL fails verification.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// `only_verify_leaf_cert_crl`: only the end-entity certificate is checked (`CRL_CHECK`).
    pub only_leaf_crl: bool,
    /// SAN matchers and certificate pins.
    pub peer: PeerChecks,
    /// `allow_expired_certificate`: a chain that fails only on validity periods passes.
    pub allow_expired: bool,
    /// `trust_chain_verification: ACCEPT_UNTRUSTED`: every failure is counted and let through.
    pub accept_untrusted: bool,
    /// `max_verify_depth`, with the subjects of the trusted CAs to measure chains by
    /// ([`chain_depth`]). Envoy 1.40 applies it to client certificates only (probed: an
    /// upstream's chain longer than the depth is accepted), so upstream contexts clear it.
    pub max_depth: Option<(u32, Arc<Vec<Vec<u8>>>)>,
    /// The stats of the listener or cluster using these settings, where failures let through
    /// are counted (set once that listener or cluster exists).
    stats: Arc<std::sync::OnceLock<SslStats>>,
}

impl Validation {
    pub fn compile(v: &CertificateValidationContext) -> Compiled<Validation> {
        let mut errors = Errors::default();
        let mut crls = Vec::new();
        // The subjects of the trusted CAs, as the certificates they issue name them, for
        // `max_verify_depth`.
        let mut anchors = Vec::new();
        let roots = match &v.trusted_ca {
            Some(ca) => errors
                .take("", certificates(ca, "trusted_ca"))
                .map(|certs| {
                    if v.max_verify_depth.is_some() {
                        anchors = certs
                            .iter()
                            .filter_map(|c| {
                                let (_, cert) =
                                    x509_parser::parse_x509_certificate(c.as_ref()).ok()?;
                                Some(cert.subject().as_raw().to_vec())
                            })
                            .collect();
                    }
                    if let Ok((pem, _)) = read_data_source(ca) {
                        crls.extend(
                            CertificateRevocationListDer::pem_slice_iter(&pem)
                                .filter_map(Result::ok),
                        );
                    }
                    let mut store = RootCertStore::empty();
                    let (_, bad) = store.add_parsable_certificates(certs);
                    if bad > 0 || store.is_empty() {
                        errors.push("trusted_ca", "Failed to load trusted CA certificates");
                    }
                    Arc::new(store)
                }),
            None => None,
        };
        if let Some(crl) = &v.crl {
            match read_data_source(crl) {
                Ok((pem, name)) => {
                    let loaded: Result<Vec<_>, _> =
                        CertificateRevocationListDer::pem_slice_iter(&pem).collect();
                    match loaded {
                        Ok(loaded) if !loaded.is_empty() => crls.extend(loaded),
                        _ => errors.push("crl", format!("Failed to load CRL from {name}")),
                    }
                }
                Err(e) => errors.0.extend(within(e, "crl")),
            }
            if roots.is_none() {
                errors.push("crl", "a CRL without trusted_ca is not supported by Legate");
            }
        }
        let peer = errors
            .take("", PeerChecks::compile(v, roots.is_some()))
            .unwrap_or_default();
        let max_depth = v
            .max_verify_depth
            .as_ref()
            .map(|d| (d.value, Arc::new(anchors)));
        if v.allow_expired_certificate && roots.is_none() {
            errors.push(
                "allow_expired_certificate",
                "Certificate validity period is always ignored without trusted CA",
            );
        }
        errors.finish(|| Validation {
            roots,
            crls,
            only_leaf_crl: v.only_verify_leaf_cert_crl,
            peer,
            allow_expired: v.allow_expired_certificate,
            accept_untrusted: v.trust_chain_verification
                == certificate_validation_context::TrustChainVerification::AcceptUntrusted as i32,
            max_depth,
            stats: Arc::default(),
        })
    }

    /// Envoy's verification of a peer's certificate (`DefaultCertValidator`): the chain, by
    /// `chain` at a given time (`None` without `trusted_ca`) — again at a time all the
    /// presented certificates are valid if it failed on validity periods only and
    /// `allow_expired_certificate` is set — then `name` if given (an upstream's
    /// `auto_san_validation`), then the SAN matchers and pins. Under `ACCEPT_UNTRUSTED` a
    /// failure is counted and the certificate accepted (a chain that fails is not checked
    /// further, as in Envoy).
    pub fn verify_peer(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        chain: Option<impl Fn(UnixTime) -> Result<(), rustls::Error>>,
        name: Option<&rustls::pki_types::ServerName<'_>>,
    ) -> Result<(), rustls::Error> {
        if let Some(chain) = &chain {
            let mut verified = chain(now);
            if self.allow_expired
                && verified.as_ref().is_err_and(is_validity_error)
                && let Some(t) = common_validity(end_entity, intermediates)
            {
                verified = chain(t);
            }
            if let Err(e) = verified {
                return self.let_through(e);
            }
            if let Some((max, anchors)) = &self.max_depth {
                // Envoy 1.40 passes a chain a trusted CA signed at a depth of 0, as at 1 (probed).
                let limit = (*max).max(1);
                if chain_depth(end_entity, intermediates, anchors).is_none_or(|d| d > limit) {
                    // BoringSSL's X509_V_ERR_CERT_CHAIN_TOO_LONG; the peer gets `unknown_ca`.
                    return self.let_through(rustls::Error::InvalidCertificate(
                        rustls::CertificateError::UnknownIssuer,
                    ));
                }
            }
        }
        if let Some(name) = name {
            let carries_name = rustls::server::ParsedCertificate::try_from(end_entity)
                .is_ok_and(|c| rustls::client::verify_server_name(&c, name).is_ok());
            if !carries_name {
                return self.let_through(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName,
                ));
            }
        }
        match self.peer.check(end_entity) {
            Err(e) => self.let_through(rustls::Error::InvalidCertificate(e)),
            Ok(()) => Ok(()),
        }
    }

    /// `Err(e)`, unless `ACCEPT_UNTRUSTED` lets it through (counted).
    fn let_through(&self, e: rustls::Error) -> Result<(), rustls::Error> {
        if !self.accept_untrusted {
            return Err(e);
        }
        if let Some(stats) = self.stats.get() {
            stats.verify_failed(&e);
        }
        Ok(())
    }
}

/// The depth of a verified chain as `max_verify_depth` counts it: the certificates above the
/// end entity up to and including the trust anchor (1 when a trusted CA issued it), along the
/// shortest path of issuer and subject names through the presented `intermediates` to a
/// subject in `anchors` (raw DER names). BoringSSL measures the path it built; the chain was
/// verified already, so the shortest one by names is taken. `None` if no path is found.
fn chain_depth(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    anchors: &[Vec<u8>],
) -> Option<u32> {
    let names = |der: &CertificateDer<'_>| {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        Some((
            cert.subject().as_raw().to_vec(),
            cert.issuer().as_raw().to_vec(),
        ))
    };
    let chain: Vec<(Vec<u8>, Vec<u8>)> = intermediates.iter().filter_map(names).collect();
    let mut issuers = vec![names(end_entity)?.1];
    let mut used = vec![false; chain.len()];
    for depth in 1..=chain.len() as u32 + 1 {
        if issuers.iter().any(|i| anchors.contains(i)) {
            return Some(depth);
        }
        let mut next = Vec::new();
        for (i, (subject, issuer)) in chain.iter().enumerate() {
            if !used[i] && issuers.contains(subject) {
                used[i] = true;
                next.push(issuer.clone());
            }
        }
        if next.is_empty() {
            return None;
        }
        issuers = next;
    }
    None
}

/// Whether a chain failed on a validity period (what `allow_expired_certificate` forgives).
fn is_validity_error(e: &rustls::Error) -> bool {
    use rustls::CertificateError as C;
    matches!(
        e,
        rustls::Error::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. }
        )
    )
}

/// A time at which every presented certificate is within its validity period (the latest
/// start), if there is one.
fn common_validity(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Option<UnixTime> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (mut start, mut end) = (i64::MIN, i64::MAX);
    for der in std::iter::once(end_entity).chain(intermediates) {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        start = start.max(cert.validity().not_before.timestamp());
        end = end.min(cert.validity().not_after.timestamp());
    }
    let secs = u64::try_from(start).ok()?;
    (start <= end).then(|| UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs)))
}

/// Envoy's wording of a failed handshake (`%UPSTREAM_TRANSPORT_FAILURE_REASON%`, logs):
/// BoringSSL's packed error code and reason between `TLS_error:|` and `:TLS_error_end`.
pub fn failure_reason(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, Error as E};
    let (code, reason) = match e {
        E::InvalidCertificate(_) | E::NoCertificatesPresented => {
            (268435581, "CERTIFICATE_VERIFY_FAILED")
        }
        E::AlertReceived(A::HandshakeFailure) => (268436496, "SSLV3_ALERT_HANDSHAKE_FAILURE"),
        E::AlertReceived(A::UnknownCA) => (268436504, "TLSV1_ALERT_UNKNOWN_CA"),
        E::AlertReceived(A::BadCertificate) => (268436474, "SSLV3_ALERT_BAD_CERTIFICATE"),
        E::AlertReceived(A::CertificateRequired) => (268436564, "TLSV1_CERTIFICATE_REQUIRED"),
        E::AlertReceived(A::ProtocolVersion) => (268436526, "TLSV1_ALERT_PROTOCOL_VERSION"),
        E::PeerIncompatible(_) => (268435696, "NO_SHARED_CIPHER"),
        _ => return format!("TLS_error:|{e}:TLS_error_end"),
    };
    format!("TLS_error:|{code}:SSL routines:OPENSSL_internal:{reason}:TLS_error_end")
}

/// A `ciphers.*`, `versions.*` or `curves.*` counter: its family, its name, the counter.
type NegotiatedCounter = (&'static str, &'static str, Counter);

/// Envoy's `ssl.*` stats of one context (`listener.<prefix>.ssl.`, `cluster.<name>.ssl.`).
/// The per-handshake `ciphers.*`, `versions.*` and `curves.*` counters are created on first
/// use, as Envoy's are.
#[derive(Clone, Debug)]
pub struct SslStats {
    scope: Scope,
    /// The `ciphers.*`, `versions.*` and `curves.*` counters made so far (family, name): a
    /// handshake finds its three here rather than formatting and looking up their names.
    negotiated: Arc<std::sync::Mutex<Vec<NegotiatedCounter>>>,
    pub connection_error: Counter,
    pub handshake: Counter,
    pub session_reused: Counter,
    pub no_certificate: Counter,
    pub fail_verify_no_cert: Counter,
    pub fail_verify_error: Counter,
    pub fail_verify_san: Counter,
    pub fail_verify_cert_hash: Counter,
    pub ocsp_staple_requests: Counter,
    pub ocsp_staple_responses: Counter,
    pub ocsp_staple_omitted: Counter,
    pub ocsp_staple_failed: Counter,
}

impl SslStats {
    /// `parent` is the listener's or cluster's scope; the stats go under its `ssl.`.
    pub fn new(parent: &Scope) -> SslStats {
        let scope = parent.scope("ssl");
        scope.counter("was_key_usage_invalid");
        SslStats {
            connection_error: scope.counter("connection_error"),
            handshake: scope.counter("handshake"),
            session_reused: scope.counter("session_reused"),
            no_certificate: scope.counter("no_certificate"),
            fail_verify_no_cert: scope.counter("fail_verify_no_cert"),
            fail_verify_error: scope.counter("fail_verify_error"),
            fail_verify_san: scope.counter("fail_verify_san"),
            fail_verify_cert_hash: scope.counter("fail_verify_cert_hash"),
            ocsp_staple_requests: scope.counter("ocsp_staple_requests"),
            ocsp_staple_responses: scope.counter("ocsp_staple_responses"),
            ocsp_staple_omitted: scope.counter("ocsp_staple_omitted"),
            ocsp_staple_failed: scope.counter("ocsp_staple_failed"),
            negotiated: Arc::default(),
            scope,
        }
    }

    /// Counts a completed handshake (Envoy's `ContextImpl::logHandshake`).
    pub fn handshake_done(&self, conn: &rustls::CommonState) {
        self.handshake.inc();
        if conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            self.session_reused.inc();
        }
        let negotiated = [
            conn.negotiated_cipher_suite()
                .map(|s| ("ciphers", cipher_name(s.suite()))),
            conn.protocol_version()
                .map(|v| ("versions", version_name(v))),
            conn.negotiated_key_exchange_group()
                .map(|g| ("curves", curve_name(g.name()))),
        ];
        let mut made = self
            .negotiated
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (family, name) in negotiated.into_iter().flatten() {
            let counter = match made.iter().find(|(f, n, _)| *f == family && *n == name) {
                Some((_, _, c)) => *c,
                None => {
                    let c = self.scope.counter(&format!("{family}.{name}"));
                    made.push((family, name, c));
                    c
                }
            };
            counter.inc();
        }
        if conn.peer_certificates().is_none_or(|c| c.is_empty()) {
            self.no_certificate.inc();
        }
    }

    /// Counts a failed handshake. As Envoy (`SslSocket::drainErrorQueue`): a failed
    /// verification has its own counter and is not a `connection_error`; a peer that just
    /// closed (no TLS error) is neither.
    pub fn handshake_failed(&self, e: &std::io::Error) {
        if let Some(e) = tls_error(e) {
            self.verify_failed(e);
        }
    }

    /// Counts a TLS error: a failed verification in its own counter, anything else as a
    /// `connection_error`.
    pub fn verify_failed(&self, e: &rustls::Error) {
        use rustls::CertificateError as C;
        match e {
            rustls::Error::NoCertificatesPresented => self.fail_verify_no_cert.inc(),
            rustls::Error::InvalidCertificate(
                C::NotValidForName | C::NotValidForNameContext { .. },
            ) => self.fail_verify_san.inc(),
            rustls::Error::InvalidCertificate(C::ApplicationVerificationFailure) => {
                self.fail_verify_cert_hash.inc()
            }
            rustls::Error::InvalidCertificate(_) => self.fail_verify_error.inc(),
            _ => self.connection_error.inc(),
        }
    }
}

/// The TLS error inside an I/O error from a TLS stream or handshake, if it is one.
pub fn tls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cipher_lists_map_to_rustls_and_unknown_names_are_refused() {
        let p = TlsParameters {
            cipher_suites: vec![
                "[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]".into(),
                "ECDHE-RSA-AES256-GCM-SHA384".into(),
                "AES128-SHA".into(),
            ],
            ..Default::default()
        };
        let c = params(Some(&p), Side::Server).unwrap();
        let tls12: Vec<CipherSuite> = c
            .provider
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS12)
            .map(|s| s.suite())
            .collect();
        assert_eq!(
            tls12,
            vec![
                CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            ]
        );
        assert_eq!(c.versions.len(), 2);

        let bad = TlsParameters {
            cipher_suites: vec!["ECDHE-RSA-AES128-GCM-SHA256".into(), "NOPE".into()],
            ..Default::default()
        };
        let e = params(Some(&bad), Side::Server).unwrap_err();
        assert_eq!(e[0].path, "cipher_suites[1]");
    }

    #[test]
    fn versions_follow_envoys_defaults_per_side() {
        let server = params(None, Side::Server).unwrap();
        assert_eq!(server.versions.len(), 2);
        let client = params(None, Side::Client).unwrap();
        assert_eq!(client.versions, vec![&rustls::version::TLS12]);
        let only13 = TlsParameters {
            tls_minimum_protocol_version: TlsProtocol::TlSv13 as i32,
            ..Default::default()
        };
        let p = params(Some(&only13), Side::Server).unwrap();
        assert_eq!(p.versions, vec![&rustls::version::TLS13]);
        let old = TlsParameters {
            tls_maximum_protocol_version: TlsProtocol::TlSv11 as i32,
            ..Default::default()
        };
        assert!(params(Some(&old), Side::Server).is_err());
        let curves = TlsParameters {
            ecdh_curves: vec!["P-521".into()],
            ..Default::default()
        };
        assert_eq!(
            params(Some(&curves), Side::Server).unwrap_err()[0].path,
            "ecdh_curves"
        );
    }
}

/// The TLS context of an `envoy.transport_sockets.tls` transport socket: its `typed_config`
/// must be `context` (the message's short name, e.g. `UpstreamTlsContext`; `article` is "a" or
/// "an" for the messages); `wrong_type` says why another type is refused. The context is
/// compiled by `compile`, its errors placed under `typed_config`.
pub fn transport_socket_context<M: prost::Message + Default, T>(
    ts: &legate_api::pb::envoy::config::core::v3::TransportSocket,
    article: &str,
    context: &str,
    wrong_type: impl FnOnce(&str) -> String,
    compile: impl FnOnce(&M) -> Compiled<T>,
) -> Compiled<T> {
    use legate_api::pb::envoy::config::core::v3::transport_socket;
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &ts.config_type else {
        return Err(vec![ConfigError::new(
            "",
            format!(
                "transport socket '{}' needs a typed_config (Legate supports envoy.transport_sockets.tls with {article} {context})",
                ts.name
            ),
        )]);
    };
    let ty = legate_api::any::type_name(&any.type_url);
    if ty != format!("envoy.extensions.transport_sockets.tls.v3.{context}") {
        return Err(vec![ConfigError::new("typed_config", wrong_type(ty))]);
    }
    let message = M::decode(any.value.as_slice()).map_err(|e| {
        vec![ConfigError::new(
            "typed_config",
            format!("unable to decode {context}: {e}"),
        )]
    })?;
    compile(&message).map_err(|e| e.into_iter().map(|e| e.within("typed_config")).collect())
}
