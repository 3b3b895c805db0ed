//! Which certificate a downstream handshake gets, and whether its OCSP response is stapled:
//! Envoy's default certificate selector (`DefaultTlsCertificateSelector::findTlsContext`) and
//! its OCSP staple policy (`ocspStapleAction`).
//!
//! * A certificate's names are its DNS subject alternative names (its subject CN if it has no
//!   SAN extension); `*.example.com` serves one label under `example.com`.
//! * With an SNI, the certificates named exactly so are considered first, then those with the
//!   wildcard of the SNI's parent domain — only the first certificate of each key type for a
//!   name counts. Among them an ECDSA certificate is taken if the client can verify ECDSA,
//!   else an RSA one (also the fallback of an ECDSA client): an exact RSA name thus beats an
//!   ECDSA wildcard. If no name matches, the context's first certificate is served, unless
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
use rustls::SignatureScheme;
use rustls::server::ClientHello;
use rustls::sign::CertifiedKey;

use legate_core::tls::ServedCert;
use legate_core::tls::sds::CertificateSecret;

/// The wildcard pattern an SNI falls under: `.example.com` for `www.example.com` (Envoy looks
/// from the second character for the dot, and wants something after it).
fn parent_wildcard(sni: &str) -> Option<&str> {
    let dot = sni.get(1..)?.find('.')? + 1;
    (dot < sni.len() - 1).then(|| &sni[dot..])
}

/// The certificates Envoy's map holds for `pattern`: the first of each key type, in order.
fn named<'a>(certs: &[&'a ServedCert], pattern: &str) -> impl Iterator<Item = &'a ServedCert> {
    let (mut ecdsa, mut other) = (None, None);
    for &c in certs.iter().filter(|c| c.serves(pattern)) {
        let slot = if c.is_ecdsa() { &mut ecdsa } else { &mut other };
        slot.get_or_insert(c);
    }
    ecdsa.into_iter().chain(other)
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
        let from_secrets: Vec<Arc<ServedCert>> =
            self.secrets.iter().filter_map(|s| s.served()).collect();
        let certs: Vec<&ServedCert> = if self.secrets.is_empty() {
            self.certs.iter().collect()
        } else {
            from_secrets.iter().map(|s| &**s).collect()
        };
        let certs = &certs[..];
        let Some(&first) = certs.first() else {
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
        let chosen = match hello.server_name().filter(|n| !n.is_empty()) {
            Some(sni) => {
                let by_name = |pattern: &str| self.pick(named(certs, pattern), &client);
                match by_name(sni).or_else(|| parent_wildcard(sni).and_then(by_name)) {
                    Some(c) => c,
                    None if self.full_scan_on_sni_mismatch => {
                        self.pick(certs.iter().copied(), &client).unwrap_or(first)
                    }
                    None => first,
                }
            }
            None => self.pick(certs.iter().copied(), &client).unwrap_or(first),
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

#[cfg(test)]
mod tests {
    use super::parent_wildcard;

    #[test]
    fn parent_wildcards_as_envoy_takes_them() {
        assert_eq!(parent_wildcard("www.example.com"), Some(".example.com"));
        assert_eq!(parent_wildcard("a.b.example.com"), Some(".b.example.com"));
        assert_eq!(parent_wildcard("example.com"), Some(".com"));
        assert_eq!(parent_wildcard(".example.com"), Some(".com"));
        assert_eq!(parent_wildcard("localhost"), None);
        assert_eq!(parent_wildcard("trailing."), None);
        assert_eq!(parent_wildcard(""), None);
    }
}
