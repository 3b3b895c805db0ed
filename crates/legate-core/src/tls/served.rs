//! One certificate a server context can serve: its key, its OCSP staple and the names it
//! serves, read once when it is loaded (inline, or from an SDS secret).

use std::sync::Arc;

use rustls::SignatureAlgorithm;
use rustls::sign::CertifiedKey;

use crate::ocsp::OcspResponse;

/// One certificate a context can serve.
#[derive(Debug, Clone)]
pub struct ServedCert {
    pub key: Arc<CertifiedKey>,
    /// `key` with its `ocsp_staple`, and the parsed response.
    pub stapled: Option<(Arc<CertifiedKey>, Arc<OcspResponse>)>,
    /// The certificate carries the TLS feature extension with `status_request`.
    pub must_staple: bool,
    /// The names it serves ([`crate::x509::server_name_patterns`]), read once.
    pub names: Vec<String>,
}

impl ServedCert {
    /// A certificate without an OCSP staple.
    pub fn plain(key: Arc<CertifiedKey>) -> ServedCert {
        ServedCert {
            names: names_of(&key),
            key,
            stapled: None,
            must_staple: false,
        }
    }

    pub fn is_ecdsa(&self) -> bool {
        self.key.key.algorithm() == SignatureAlgorithm::ECDSA
    }

    /// Whether `pattern` (a name, or a wildcard as `.example.com`) is one of its names.
    pub fn serves(&self, pattern: &str) -> bool {
        self.names.iter().any(|n| n == pattern)
    }
}

/// The SNI patterns of a certificate's leaf.
pub fn names_of(key: &CertifiedKey) -> Vec<String> {
    key.end_entity_cert()
        .map(|c| crate::x509::server_name_patterns(c.as_ref()))
        .unwrap_or_default()
}
