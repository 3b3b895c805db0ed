//! Upstream TLS: a cluster's `transport_socket` `envoy.transport_sockets.tls` with an
//! `UpstreamTlsContext`, compiled into rustls client configurations, and the handshake on a
//! new upstream connection ([`UpstreamStream`] is what the pools and tcp_proxy then use).
//!
//! As in Envoy, the server's certificate chain is verified only when `validation_context`
//! gives a `trusted_ca` (without one any certificate is accepted, unless pinned by
//! `verify_certificate_hash` / `verify_certificate_spki`), and its names only against the SAN
//! matchers (not against `sni`). `sni` is sent as given. Without
//! `alpn_protocols`, HTTP connections offer their protocol (`h2` or `http/1.1`) as Envoy's
//! pools do, and tcp_proxy connections offer none.

use std::io;
use std::sync::Arc;

use legate_api::pb::envoy::config::core::v3::{TransportSocket, UpstreamHttpProtocolOptions};
use legate_api::pb::envoy::extensions::transport_sockets::tls::v3::{
    UpstreamTlsContext, common_tls_context::ValidationContextType,
};
use legate_core::tls::{self, Side, Validation};
use legate_core::{Compiled, ConfigError, Errors};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

/// `upstream_http_protocol_options`: the name a connection is made for, taken from each
/// request (Envoy's router sets it from the request's host, or `override_auto_sni_header`).
#[derive(Clone, Debug)]
struct AutoName {
    /// `auto_sni`: sent as the SNI (not for an IP address).
    sni: bool,
    /// `auto_san_validation`: the host's certificate must carry it (as well as what the SAN
    /// matchers ask for).
    san_validation: bool,
    /// `override_auto_sni_header`, when not empty.
    header: Option<http::HeaderName>,
}

/// The name a connection is made for, from a request (see [`UpstreamTls::name_for`]).
/// Connections made for different names are pooled apart, as Envoy hashes its pools by the
/// transport socket options these set.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionName {
    /// The SNI to send instead of `sni`.
    sni: Option<ServerName<'static>>,
    /// The name the certificate must carry.
    san: Option<ServerName<'static>>,
}

/// A compiled `UpstreamTlsContext`.
pub struct UpstreamTls {
    auto_name: Option<AutoName>,
    /// The verification settings, for connections whose names come from requests.
    validation: Validation,
    roots_verifier: Option<Arc<WebPkiServerVerifier>>,
    /// For raw TCP connections (tcp_proxy).
    config: Arc<ClientConfig>,
    /// For HTTP/1.1 connections (`http/1.1` offered when `alpn_protocols` is empty).
    h1_config: Arc<ClientConfig>,
    /// For HTTP/2 connections (`h2` offered when `alpn_protocols` is empty).
    h2_config: Arc<ClientConfig>,
    /// `sni`; without one, no SNI is sent (rustls needs a name: the host's IP, not sent).
    server_name: ServerName<'static>,
    /// Listed by the admin `/certs` while this context lives.
    _certificates: Arc<legate_core::x509::ContextCertificates>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// Compiles a cluster's `transport_socket` (paths relative to it).
    pub fn compile_transport_socket(ts: &TransportSocket) -> Compiled<UpstreamTls> {
        tls::transport_socket_context(
            ts,
            "an",
            "UpstreamTlsContext",
            |ty| format!("{ty} is not supported by Legate as a cluster transport socket"),
            UpstreamTls::compile,
        )
    }

    pub fn compile(ctx: &UpstreamTlsContext) -> Compiled<UpstreamTls> {
        let mut errors = Errors::default();
        let common = ctx.common_tls_context.clone().unwrap_or_default();
        let Some(params) = errors.take(
            "common_tls_context.tls_params",
            tls::params(common.tls_params.as_ref(), Side::Client),
        ) else {
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
        let validation = match &common.validation_context_type {
            None => Validation::default(),
            Some(ValidationContextType::ValidationContext(v)) => errors
                .take(
                    "common_tls_context.validation_context",
                    Validation::compile(v),
                )
                .unwrap_or_default(),
            Some(_) => {
                errors.push(
                    "common_tls_context",
                    "only an inline validation_context is supported by Legate",
                );
                Validation::default()
            }
        };
        let server_name = if ctx.sni.is_empty() {
            None
        } else {
            match ServerName::try_from(ctx.sni.clone()) {
                Ok(n) => Some(n),
                Err(_) => {
                    errors.push("sni", format!("invalid SNI: {}", ctx.sni));
                    None
                }
            }
        };
        if !errors.0.is_empty() {
            return Err(errors.0);
        }
        let roots_verifier = match &validation.roots {
            Some(roots) => {
                let mut builder = WebPkiServerVerifier::builder_with_provider(
                    roots.clone(),
                    params.provider.clone(),
                );
                if !validation.crls.is_empty() {
                    builder = builder
                        .with_crls(validation.crls.iter().cloned())
                        .enforce_revocation_expiration();
                    if validation.only_leaf_crl {
                        builder = builder.only_check_end_entity_revocation();
                    }
                }
                match builder.build() {
                    Ok(inner) => Some(inner),
                    Err(e) => {
                        return Err(vec![ConfigError::new(
                            "common_tls_context.validation_context.trusted_ca",
                            format!("Failed to load trusted CA certificates: {e}"),
                        )]);
                    }
                }
            }
            None => None,
        };
        let verifier: Arc<dyn ServerCertVerifier> = Arc::new(Verifier {
            inner: roots_verifier.clone(),
            validation: validation.clone(),
            san_override: None,
            provider: params.provider.clone(),
        });
        let builder = match ClientConfig::builder_with_provider(params.provider.clone())
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
        let mut config = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(ClientCerts { keys }));
        // Envoy sends SNI only when `sni` is set.
        config.enable_sni = server_name.is_some();
        config.resumption = resumption(ctx.max_session_keys.as_ref().map(|v| v.value));
        config.alpn_protocols = common
            .alpn_protocols
            .iter()
            .map(|p| p.as_bytes().to_vec())
            .collect();
        let mut h1_config = config.clone();
        let mut h2_config = config.clone();
        if config.alpn_protocols.is_empty() {
            h1_config.alpn_protocols = vec![b"http/1.1".to_vec()];
            h2_config.alpn_protocols = vec![b"h2".to_vec()];
        }
        Ok(UpstreamTls {
            auto_name: None,
            validation,
            roots_verifier,
            config: Arc::new(config),
            h1_config: Arc::new(h1_config),
            h2_config: Arc::new(h2_config),
            server_name: server_name.unwrap_or(ServerName::IpAddress(
                std::net::Ipv4Addr::UNSPECIFIED.into(),
            )),
            _certificates: legate_core::x509::ContextCertificates::register(&common, Vec::new()),
        })
    }

    /// The cluster's `ssl.*` stats, where certificate failures that `ACCEPT_UNTRUSTED` lets
    /// through are counted.
    pub fn attach_stats(&self, stats: &legate_core::tls::SslStats) {
        self.validation.attach_stats(stats);
    }

    /// Takes a cluster's `upstream_http_protocol_options` (`auto_sni`, `auto_san_validation`,
    /// `override_auto_sni_header`).
    pub fn with_auto_name(mut self, options: Option<&UpstreamHttpProtocolOptions>) -> UpstreamTls {
        self.auto_name = options
            .filter(|o| o.auto_sni || o.auto_san_validation)
            .map(|o| AutoName {
                sni: o.auto_sni,
                san_validation: o.auto_san_validation,
                header: (!o.override_auto_sni_header.is_empty())
                    .then(|| {
                        http::HeaderName::from_bytes(
                            o.override_auto_sni_header.to_ascii_lowercase().as_bytes(),
                        )
                        .ok()
                    })
                    .flatten(),
            });
        self
    }

    /// The name a request's connection is made for, if the cluster takes it from requests:
    /// the host of `override_auto_sni_header` (when the request has it, not empty), else of
    /// the request's authority, without its port. An IP address is not sent as SNI but is
    /// what the certificate must carry under `auto_san_validation`, as in Envoy.
    ///
    /// `Err` when `auto_san_validation` is on but the request names no usable host: Envoy
    /// would check the certificate against that host and fail, so the request must not fall
    /// back to a connection checked against nothing.
    pub fn name_for<B>(&self, req: &http::Request<B>) -> Result<Option<ConnectionName>, ()> {
        let Some(auto) = self.auto_name.as_ref() else {
            return Ok(None);
        };
        match request_host(auto, req) {
            Some(name) => {
                let is_ip = matches!(name, ServerName::IpAddress(_));
                Ok(Some(ConnectionName {
                    sni: (auto.sni && !is_ip).then(|| name.clone()),
                    san: auto.san_validation.then_some(name),
                }))
            }
            None if auto.san_validation => Err(()),
            None => Ok(None),
        }
    }

    /// The TLS handshake on a new upstream connection for `protocol` (`None`: raw TCP), made
    /// for `name` if the cluster takes names from requests.
    pub async fn connect(
        &self,
        stream: TcpStream,
        protocol: Option<crate::pool::Protocol>,
        name: Option<&ConnectionName>,
    ) -> io::Result<ClientTlsStream> {
        let config = match protocol {
            None => &self.config,
            Some(crate::pool::Protocol::Http1) => &self.h1_config,
            Some(crate::pool::Protocol::Http2) => &self.h2_config,
        };
        let Some(name) = name else {
            return handshake(stream, config.clone(), self.server_name.clone()).await;
        };
        // A configuration for this connection: its SNI, and the name its verifier checks.
        let mut named = ClientConfig::clone(config);
        if name.san.is_some() {
            // rustls keys its session cache by the name connected to, which is not the name
            // checked when only `auto_san_validation` is on, and it does not verify the
            // certificate again on resumption: each such connection makes a full handshake.
            named.resumption = rustls::client::Resumption::disabled();
        }
        let provider = named.crypto_provider().clone();
        named
            .dangerous()
            .set_certificate_verifier(Arc::new(Verifier {
                inner: self.roots_verifier.clone(),
                validation: self.validation.clone(),
                san_override: name.san.clone(),
                provider,
            }));
        let server_name = match &name.sni {
            Some(sni) => {
                named.enable_sni = true;
                sni.clone()
            }
            None => self.server_name.clone(),
        };
        handshake(stream, Arc::new(named), server_name).await
    }
}

/// `max_session_keys` (Envoy's default 1): 0 turns resumption off; otherwise rustls keeps
/// the sessions of that many server names (and a few TLS 1.3 tickets for each), where
/// BoringSSL keeps that many sessions for the context.
fn resumption(max_session_keys: Option<u32>) -> rustls::client::Resumption {
    match max_session_keys.unwrap_or(1) {
        0 => rustls::client::Resumption::disabled(),
        n => rustls::client::Resumption::in_memory_sessions(n as usize),
    }
}

/// The client certificate offered when the server asks for one: the first of
/// `tls_certificates` the server's signature schemes allow.
#[derive(Debug)]
struct ClientCerts {
    keys: Vec<Arc<CertifiedKey>>,
}

impl ResolvesClientCert for ClientCerts {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.keys
            .iter()
            .find(|k| k.key.choose_scheme(sigschemes).is_some())
            .cloned()
    }

    fn has_certs(&self) -> bool {
        !self.keys.is_empty()
    }
}

/// Envoy's upstream certificate check: the chain against `trusted_ca` if given (a name
/// mismatch with the SNI is not an error), then `auto_san_validation`'s name, then the SAN
/// matchers and pins (Envoy's `verifyCertificate` checks the override list and the matchers).
#[derive(Debug)]
struct Verifier {
    inner: Option<Arc<WebPkiServerVerifier>>,
    validation: Validation,
    /// `auto_san_validation`'s name, checked before the SAN matchers.
    san_override: Option<ServerName<'static>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::CertificateError as C;
        let chain = self.inner.as_ref().map(|inner| {
            move |now| match inner.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                // webpki checks the chain before the name: a name error means the chain is good.
                Ok(_)
                | Err(rustls::Error::InvalidCertificate(
                    C::NotValidForName | C::NotValidForNameContext { .. },
                )) => Ok(()),
                Err(e) => Err(e),
            }
        });
        self.validation.verify_peer(
            end_entity,
            intermediates,
            now,
            chain,
            self.san_override.as_ref(),
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The host a request names for its connection: `override_auto_sni_header` when present and
/// not empty, else its authority; without the port.
fn request_host<B>(auto: &AutoName, req: &http::Request<B>) -> Option<ServerName<'static>> {
    let overridden = auto
        .header
        .as_ref()
        .and_then(|h| req.headers().get(h))
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    let authority = overridden.or_else(|| {
        req.uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| req.headers().get(http::header::HOST)?.to_str().ok())
    })?;
    ServerName::try_from(host_of(authority).to_owned()).ok()
}

/// The host part of an authority: without its port, an IPv6 address without brackets.
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// An upstream connection: plain TCP or TLS over it.
pub type UpstreamStream = legate_core::io::MaybeTls<ClientTlsStream>;

/// An upstream TLS connection, handshake done.
pub type ClientTlsStream = legate_core::io::tls::TlsStream<rustls::ClientConnection>;

/// The client's handshake on a new connection.
async fn handshake(
    stream: TcpStream,
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
) -> io::Result<ClientTlsStream> {
    let conn = rustls::ClientConnection::new(config, server_name)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    ClientTlsStream::connect(stream, conn).await
}
