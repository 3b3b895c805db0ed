//! Which certificate a downstream handshake gets, and whether its OCSP response is stapled:
//! Envoy's default certificate selector (`DefaultTlsCertificateSelector::findTlsContext`) and
//! its OCSP staple policy (`ocspStapleAction`).
//!
//! * With an SNI, the certificates whose names match it are considered first; among them an
//!   ECDSA certificate is taken if the client can verify ECDSA, else the first RSA one. If no
//!   certificate's names match, the context's first certificate is served, unless
//!   `full_scan_certs_on_sni_mismatch` asks for the scan below.
//! * Without an SNI, every certificate is scanned the same way; the first one is the fallback.
//! * A certificate whose staple policy says `Fail` is passed over; if the one finally chosen
//!   fails, the handshake is refused (`ssl.ocsp_staple_failed`).
//! * OCSP (when the client sent `status_request`): `LENIENT_STAPLING` staples a current
//!   response and omits an expired or absent one; `STRICT_STAPLING` fails on an expired one;
//!   `MUST_STAPLE` (or a certificate with the must-staple extension) fails without a current
//!   one.

use std::sync::Arc;
use std::time::SystemTime;

use legate_api::pb::envoy::extensions::transport_sockets::tls::v3::downstream_tls_context::OcspStaplePolicy;
use legate_core::ocsp::OcspResponse;
use rustls::pki_types::ServerName;
use rustls::server::ClientHello;
use rustls::sign::CertifiedKey;
use rustls::{SignatureAlgorithm, SignatureScheme};

use crate::sds::CertificateSecret;

/// One certificate a context can serve.
#[derive(Debug, Clone)]
pub struct ServedCert {
    pub key: Arc<CertifiedKey>,
    /// `key` with its `ocsp_staple`, and the parsed response.
    pub stapled: Option<(Arc<CertifiedKey>, Arc<OcspResponse>)>,
    /// The certificate carries the TLS feature extension with `status_request`.
    pub must_staple: bool,
}

impl ServedCert {
    pub fn plain(key: Arc<CertifiedKey>) -> ServedCert {
        ServedCert {
            key,
            stapled: None,
            must_staple: false,
        }
    }

    fn is_ecdsa(&self) -> bool {
        self.key.key.algorithm() == SignatureAlgorithm::ECDSA
    }

    fn matches(&self, sni: &ServerName<'_>) -> bool {
        self.key
            .end_entity_cert()
            .ok()
            .and_then(|c| rustls::server::ParsedCertificate::try_from(c).ok())
            .is_some_and(|c| rustls::client::verify_server_name(&c, sni).is_ok())
    }
}

/// What happens to the OCSP response of the chosen certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StapleAction {
    Staple,
    /// Counted as `ocsp_staple_omitted`.
    NoStaple,
    /// The handshake is refused (`ocsp_staple_failed`).
    Fail,
    /// The client did not ask for a staple.
    ClientNotCapable,
}

/// The outcome for one handshake.
#[derive(Debug)]
pub struct Selection {
    /// What to serve (with the staple when `action` is `Staple`); `None` when it fails.
    pub key: Option<Arc<CertifiedKey>>,
    pub action: StapleAction,
}

/// A context's certificates (inline ones, or those its SDS secrets hold now) and its policy.
#[derive(Debug)]
pub struct CertSelector {
    pub certs: Vec<ServedCert>,
    pub secrets: Vec<Arc<CertificateSecret>>,
    pub policy: OcspStaplePolicy,
    pub full_scan_on_sni_mismatch: bool,
}

impl CertSelector {
    pub fn select(
        &self,
        hello: &ClientHello<'_>,
        ocsp_requested: bool,
        now: SystemTime,
    ) -> Selection {
        let from_secrets: Vec<ServedCert>;
        let certs = if self.secrets.is_empty() {
            &self.certs
        } else {
            from_secrets = self
                .secrets
                .iter()
                .filter_map(|s| s.key())
                .map(ServedCert::plain)
                .collect();
            &from_secrets
        };
        let Some(first) = certs.first() else {
            return Selection {
                key: None,
                action: StapleAction::ClientNotCapable,
            };
        };
        let schemes = hello.signature_schemes();
        let ecdsa_capable = schemes.iter().any(|s| {
            matches!(
                s,
                SignatureScheme::ECDSA_NISTP256_SHA256
                    | SignatureScheme::ECDSA_NISTP384_SHA384
                    | SignatureScheme::ECDSA_NISTP521_SHA512
            )
        });
        let client = Client {
            schemes,
            ecdsa_capable,
            ocsp_requested,
            now,
        };
        let sni = hello
            .server_name()
            .and_then(|n| ServerName::try_from(n.to_owned()).ok());
        let chosen = match &sni {
            Some(name) => match self.pick(certs.iter().filter(|c| c.matches(name)), &client) {
                Some(c) => c,
                None if self.full_scan_on_sni_mismatch => {
                    self.pick(certs.iter(), &client).unwrap_or(first)
                }
                None => first,
            },
            None => self.pick(certs.iter(), &client).unwrap_or(first),
        };
        let action = self.action(chosen, &client);
        let key = match (action, &chosen.stapled) {
            (StapleAction::Fail, _) => None,
            (StapleAction::Staple, Some((stapled, _))) => Some(stapled.clone()),
            _ => Some(chosen.key.clone()),
        };
        Selection { key, action }
    }

    /// Envoy's `selected`: an ECDSA certificate the client can use wins at once; without ECDSA
    /// support the first RSA one wins; an RSA one is the fallback of an ECDSA client.
    fn pick<'a>(
        &self,
        candidates: impl Iterator<Item = &'a ServedCert>,
        client: &Client<'_>,
    ) -> Option<&'a ServedCert> {
        let mut fallback = None;
        for c in candidates {
            if self.action(c, client) == StapleAction::Fail {
                continue;
            }
            if c.is_ecdsa() {
                if client.ecdsa_capable && c.key.key.choose_scheme(client.schemes).is_some() {
                    return Some(c);
                }
            } else if !client.ecdsa_capable {
                return Some(c);
            } else if fallback.is_none() {
                fallback = Some(c);
            }
        }
        fallback
    }

    fn action(&self, c: &ServedCert, client: &Client<'_>) -> StapleAction {
        if !client.ocsp_requested {
            return StapleAction::ClientNotCapable;
        }
        let policy = if c.must_staple {
            OcspStaplePolicy::MustStaple
        } else {
            self.policy
        };
        let response = c.stapled.as_ref().map(|(_, r)| r);
        let current = response.is_some_and(|r| !r.is_expired(client.now));
        match policy {
            OcspStaplePolicy::LenientStapling if current => StapleAction::Staple,
            OcspStaplePolicy::LenientStapling => StapleAction::NoStaple,
            OcspStaplePolicy::StrictStapling if current => StapleAction::Staple,
            OcspStaplePolicy::StrictStapling if response.is_some() => StapleAction::Fail,
            OcspStaplePolicy::StrictStapling => StapleAction::NoStaple,
            OcspStaplePolicy::MustStaple if current => StapleAction::Staple,
            OcspStaplePolicy::MustStaple => StapleAction::Fail,
        }
    }
}

/// What the selection looks at in a hello.
struct Client<'h> {
    schemes: &'h [SignatureScheme],
    ecdsa_capable: bool,
    ocsp_requested: bool,
    now: SystemTime,
}

/// The resolver rustls calls: the certificate already chosen for this handshake.
#[derive(Debug)]
pub struct Chosen(pub Option<Arc<CertifiedKey>>);

impl rustls::server::ResolvesServerCert for Chosen {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.clone()
    }
}
