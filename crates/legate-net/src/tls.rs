//! Downstream TLS: a filter chain's `transport_socket` `envoy.transport_sockets.tls` with a
//! `DownstreamTlsContext`, compiled into rustls server configurations, and the handshake that
//! turns an accepted TCP connection into a TLS stream.
//!
//! * Several `tls_certificates` per context: the one served is chosen per handshake from the
//!   client's signature schemes (an ECDSA certificate when the client can verify one, else the
//!   first usable), and among those a certificate whose names match the SNI, as Envoy selects.
//! * ALPN: the server picks from `alpn_protocols`. A client that offers none of them gets no
//!   ALPN (BoringSSL's behaviour), not rustls's `no_application_protocol` alert: such hellos
//!   are served with a second configuration without ALPN.
//! * Client certificates: `validation_context.trusted_ca` asks for one and verifies it if
//!   given; `require_client_certificate` refuses a handshake without one.

use std::sync::Arc;
use std::time::Duration;

use legate_api::pb::envoy::config::core::v3::TransportSocket;
use legate_api::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, common_tls_context::ValidationContextType,
};
use legate_core::tls::{self, Side, SslStats, Validation};
use legate_core::x509::TlsInfo;

use crate::sds::CertificateSecret;
use legate_core::{Compiled, ConfigError, Errors};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DistinguishedName, ServerConfig, SignatureAlgorithm};
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;
pub use tokio_rustls::server::TlsStream;

pub const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";
const UPSTREAM_TLS_CONTEXT: &str = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

/// A compiled `DownstreamTlsContext`.
pub struct DownstreamTls {
    uses_sds: bool,
    config: Arc<ServerConfig>,
    /// `config` without ALPN, for hellos that offer none of `alpn_protocols`.
    without_alpn: Arc<ServerConfig>,
}

impl std::fmt::Debug for DownstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownstreamTls")
            .field("alpn_protocols", &self.config.alpn_protocols)
            .finish_non_exhaustive()
    }
}

/// Why a handshake did not complete.
#[derive(Debug)]
pub enum HandshakeError {
    /// `transport_socket_connect_timeout` passed.
    Timeout,
    Failed(std::io::Error),
}

impl DownstreamTls {
    /// Compiles a filter chain's `transport_socket` (paths relative to it).
    pub fn compile_transport_socket(ts: &TransportSocket) -> Compiled<DownstreamTls> {
        tls::transport_socket_context(
            ts,
            "a",
            "DownstreamTlsContext",
            |ty| {
                match ty {
                UPSTREAM_TLS_CONTEXT => "a listener's TLS transport socket takes a DownstreamTlsContext, not an UpstreamTlsContext".into(),
                other => format!("{other} is not supported by Legate"),
            }
            },
            DownstreamTls::compile,
        )
    }

    pub fn compile(ctx: &DownstreamTlsContext) -> Compiled<DownstreamTls> {
        let mut errors = Errors::default();
        let common = ctx.common_tls_context.clone().unwrap_or_default();
        let params = errors.take(
            "common_tls_context.tls_params",
            tls::params(common.tls_params.as_ref(), Side::Server),
        );
        let Some(params) = params else {
            return Err(errors.0);
        };
        let mut keys = Vec::new();
        for (i, c) in common.tls_certificates.iter().enumerate() {
            if let Some(k) = errors.take(
                &format!("common_tls_context.tls_certificates[{i}]"),
                tls::certified_key(c, &params.provider),
            ) {
                keys.push(k);
            }
        }
        let mut secrets = Vec::new();
        for (i, c) in common.tls_certificate_sds_secret_configs.iter().enumerate() {
            match CertificateSecret::subscribe(c, &params.provider) {
                Ok(s) => secrets.push(s),
                Err(e) => errors.0.push(e.within(&format!(
                    "common_tls_context.tls_certificate_sds_secret_configs[{i}]"
                ))),
            }
        }
        if common.tls_certificates.is_empty()
            && common.tls_certificate_sds_secret_configs.is_empty()
        {
            errors.push(
                "common_tls_context.tls_certificates",
                "No TLS certificates found for server context",
            );
        }
        let validation = match &common.validation_context_type {
            None => None,
            Some(ValidationContextType::ValidationContext(v)) => errors.take(
                "common_tls_context.validation_context",
                Validation::compile(v),
            ),
            Some(_) => {
                errors.push(
                    "common_tls_context",
                    "only an inline validation_context is supported by Legate",
                );
                None
            }
        };
        let require = ctx
            .require_client_certificate
            .as_ref()
            .is_some_and(|v| v.value);
        let roots = validation.as_ref().and_then(|v| v.roots.clone());
        if require && roots.is_none() {
            errors.push(
                "require_client_certificate",
                "requiring a client certificate needs common_tls_context.validation_context.trusted_ca in Legate",
            );
        }
        if !errors.0.is_empty() {
            return Err(errors.0);
        }
        let builder = match ServerConfig::builder_with_provider(params.provider.clone())
            .with_protocol_versions(&params.versions)
        {
            Ok(b) => b,
            Err(e) => {
                return Err(vec![ConfigError::new(
                    "common_tls_context.tls_params",
                    format!("inconsistent TLS parameters: {e}"),
                )]);
            }
        };
        let builder = match (roots, validation) {
            (Some(roots), Some(validation)) => {
                let mut v =
                    WebPkiClientVerifier::builder_with_provider(roots, params.provider.clone());
                if !require {
                    v = v.allow_unauthenticated();
                }
                match v.build() {
                    Ok(inner) => builder
                        .with_client_cert_verifier(Arc::new(ClientVerifier { inner, validation })),
                    Err(e) => {
                        return Err(vec![ConfigError::new(
                            "common_tls_context.validation_context.trusted_ca",
                            format!("Failed to load trusted CA certificates: {e}"),
                        )]);
                    }
                }
            }
            _ => builder.with_no_client_auth(),
        };
        let uses_sds = !secrets.is_empty();
        let mut config = builder.with_cert_resolver(Arc::new(CertSelector { keys, secrets }));
        // BoringSSL's default, and Envoy's unless `prefer_client_ciphers`: the server's order.
        config.ignore_client_order = true;
        config.alpn_protocols = common
            .alpn_protocols
            .iter()
            .map(|p| p.as_bytes().to_vec())
            .collect();
        let mut without_alpn = config.clone();
        without_alpn.alpn_protocols.clear();
        Ok(DownstreamTls {
            uses_sds,
            config: Arc::new(config),
            without_alpn: Arc::new(without_alpn),
        })
    }

    /// Whether some certificate comes from an SDS secret.
    pub fn uses_sds(&self) -> bool {
        self.uses_sds
    }

    /// The TLS handshake on an accepted connection, counted in `stats`, within `timeout`
    /// (`transport_socket_connect_timeout`) if set.
    pub async fn accept(
        &self,
        stream: TcpStream,
        stats: &SslStats,
        timeout: Option<Duration>,
    ) -> Result<(TlsStream<TcpStream>, TlsInfo), HandshakeError> {
        let mut local = None;
        let handshake = async {
            let start =
                LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
            // The certificate this hello gets, for `%DOWNSTREAM_LOCAL_*%` and `By=` in
            // x-forwarded-client-cert: rustls does not say which one it served.
            local = self.config.cert_resolver.resolve(start.client_hello());
            let hello = start.client_hello();
            let ours = &self.config.alpn_protocols;
            let offered_ours = match hello.alpn() {
                Some(mut offered) => {
                    ours.is_empty() || offered.any(|p| ours.iter().any(|o| o == p))
                }
                None => true,
            };
            let config = if offered_ours {
                self.config.clone()
            } else {
                self.without_alpn.clone()
            };
            start.into_stream(config).await
        };
        let result = match timeout {
            Some(t) => match tokio::time::timeout(t, handshake).await {
                Ok(r) => r,
                Err(_) => return Err(HandshakeError::Timeout),
            },
            None => handshake.await,
        };
        match result {
            Ok(s) => {
                let conn = s.get_ref().1;
                stats.handshake_done(conn);
                let info = TlsInfo::new(
                    conn.protocol_version().map_or("", tls::version_name),
                    conn.negotiated_cipher_suite()
                        .map_or("", |c| tls::cipher_name(c.suite())),
                    conn.peer_certificates()
                        .map(|chain| chain.iter().map(|c| c.to_vec()).collect())
                        .unwrap_or_default(),
                    local,
                );
                Ok((s, info))
            }
            Err(e) => {
                stats.handshake_failed(&e);
                Err(HandshakeError::Failed(e))
            }
        }
    }
}

/// Picks the certificate of a handshake among a context's `tls_certificates` and the
/// certificates its SDS secrets hold now.
#[derive(Debug)]
struct CertSelector {
    keys: Vec<Arc<CertifiedKey>>,
    secrets: Vec<Arc<CertificateSecret>>,
}

impl ResolvesServerCert for CertSelector {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if self.secrets.is_empty()
            && let [only] = self.keys.as_slice()
        {
            return Some(only.clone());
        }
        let current: Vec<Arc<CertifiedKey>> = self.secrets.iter().filter_map(|s| s.key()).collect();
        let schemes = hello.signature_schemes();
        let usable: Vec<&Arc<CertifiedKey>> = self
            .keys
            .iter()
            .chain(current.iter())
            .filter(|k| k.key.choose_scheme(schemes).is_some())
            .collect();
        // Envoy: a certificate whose names match the SNI first, then ECDSA over RSA when the
        // client supports it, then the first one.
        let sni = hello
            .server_name()
            .and_then(|n| ServerName::try_from(n.to_owned()).ok());
        let named = |k: &&&Arc<CertifiedKey>| {
            sni.as_ref().is_some_and(|n| {
                k.end_entity_cert()
                    .ok()
                    .and_then(|c| rustls::server::ParsedCertificate::try_from(c).ok())
                    .is_some_and(|c| rustls::client::verify_server_name(&c, n).is_ok())
            })
        };
        let ecdsa = |k: &&&Arc<CertifiedKey>| k.key.algorithm() == SignatureAlgorithm::ECDSA;
        let candidates: Vec<&Arc<CertifiedKey>> = if usable.iter().any(|k| named(&k)) {
            usable.iter().filter(named).copied().collect()
        } else {
            usable
        };
        candidates
            .iter()
            .find(ecdsa)
            .or(candidates.first())
            .map(|k| (*k).clone())
    }
}

/// The client-certificate check: the chain against `trusted_ca`, then the SAN matchers.
#[derive(Debug)]
struct ClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    validation: Validation,
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if !self.validation.matches_names(end_entity) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
