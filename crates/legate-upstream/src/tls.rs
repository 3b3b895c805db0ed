//! Upstream TLS: a cluster's `transport_socket` `envoy.transport_sockets.tls` with an
//! `UpstreamTlsContext`, compiled into rustls client configurations, and the handshake on a
//! new upstream connection ([`UpstreamStream`] is what the pools and tcp_proxy then use).
//!
//! As in Envoy, the server's certificate chain is verified only when `validation_context`
//! gives a `trusted_ca` (without one any certificate is accepted, unless pinned by
//! `verify_certificate_hash` / `verify_certificate_spki`), and its names only against the SAN
//! matchers (not against `sni`). The client certificate (at most one, as Envoy's client
//! contexts) and the validation context may come from SDS files
//! ([`legate_core::tls::sds`]); a new validation secret builds the configurations again.
//! `sni` is sent as given. Without
//! `alpn_protocols`, HTTP connections offer their protocol (`h2` or `http/1.1`) as Envoy's
//! pools do, and tcp_proxy connections offer none.

use std::io;
use std::sync::Arc;

use legate_api::pb::envoy::config::core::v3::{TransportSocket, UpstreamHttpProtocolOptions};
use legate_api::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use legate_core::io::Transport;
use legate_core::tls::key_log::KeyLog;
use legate_core::tls::sds::{CertificateSecret, Validated};
use legate_core::tls::{self, Side, Validation};
use legate_core::{Compiled, ConfigError, Errors};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

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
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnectionName {
    /// The SNI to send instead of `sni`.
    sni: Option<ServerName<'static>>,
    /// The name the certificate must carry.
    san: Option<ServerName<'static>>,
    /// The downstream connection's source and destination, which the PROXY header of an
    /// `upstream_proxy_protocol` cluster names: such connections serve that downstream
    /// connection only, as in Envoy.
    pub(crate) proxy: Option<Box<legate_core::proxy_protocol::ProxyProtocolData>>,
}

/// A compiled `UpstreamTlsContext`.
pub struct UpstreamTls {
    auto_name: Option<AutoName>,
    /// `common_tls_context.key_log`.
    key_log: Option<KeyLog>,
    /// The rustls configurations, built again when an SDS validation secret changes.
    configs: Arc<Validated<Configs>>,
    /// `sni`; without one, no SNI is sent (rustls needs a name: the host's IP, not sent).
    server_name: ServerName<'static>,
    /// Listed by the admin `/certs` while this context lives.
    _certificates: Arc<legate_core::x509::ContextCertificates>,
}

/// A context's rustls configurations, built from its validation settings.
struct Configs {
    /// The verification settings, for connections whose names come from requests.
    validation: Validation,
    roots_verifier: Option<Arc<WebPkiServerVerifier>>,
    /// For raw TCP connections (tcp_proxy).
    config: Arc<ClientConfig>,
    /// For HTTP/1.1 connections (`http/1.1` offered when `alpn_protocols` is empty).
    h1_config: Arc<ClientConfig>,
    /// For HTTP/2 connections (`h2` offered when `alpn_protocols` is empty).
    h2_config: Arc<ClientConfig>,
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
        let mut cert = ClientCert::None;
        for (i, c) in common.tls_certificates.iter().enumerate() {
            if let Some(k) = errors.take(
                &format!("common_tls_context.tls_certificates[{i}]"),
                tls::certified_key(c, &params.provider),
            ) {
                cert = ClientCert::Inline(k);
            }
        }
        for (i, c) in common.tls_certificate_sds_secret_configs.iter().enumerate() {
            match CertificateSecret::subscribe(c, &params.provider) {
                Ok(s) => cert = ClientCert::Sds(s),
                Err(e) => errors.0.push(e.within(&format!(
                    "common_tls_context.tls_certificate_sds_secret_configs[{i}]"
                ))),
            }
        }
        if common.tls_certificates.len() + common.tls_certificate_sds_secret_configs.len() > 1 {
            errors.push(
                "common_tls_context",
                "Multiple TLS certificates are not supported for client contexts",
            );
        }
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
        let key_log = common
            .key_log
            .as_ref()
            .and_then(|k| errors.take("common_tls_context.key_log", KeyLog::compile(k)));
        let secret_certificate = match &cert {
            ClientCert::Sds(s) => {
                let s = s.clone();
                vec![Box::new(move || s.key()) as legate_core::x509::SecretCertificate]
            }
            _ => Vec::new(),
        };
        let settings = Settings {
            params,
            cert: Arc::new(cert),
            sends_sni: server_name.is_some(),
            max_session_keys: ctx.max_session_keys.as_ref().map(|v| v.value),
            alpn: common
                .alpn_protocols
                .iter()
                .map(|p| p.as_bytes().to_vec())
                .collect(),
        };
        let configs = errors.take("", Validated::compile(&common, move |v| settings.build(v)));
        let Some(configs) = configs.filter(|_| errors.0.is_empty()) else {
            return Err(errors.0);
        };
        let certificates = legate_core::x509::ContextCertificates::register(
            &common,
            secret_certificate,
            configs.ca_secret(),
        );
        Ok(UpstreamTls {
            auto_name: None,
            key_log,
            configs,
            server_name: server_name.unwrap_or(ServerName::IpAddress(
                std::net::Ipv4Addr::UNSPECIFIED.into(),
            )),
            _certificates: certificates,
        })
    }

    /// The cluster's `ssl.*` stats, where certificate failures that `ACCEPT_UNTRUSTED` lets
    /// through are counted.
    pub fn attach_stats(&self, stats: &legate_core::tls::SslStats) {
        self.configs.attach_stats(stats);
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
                    proxy: None,
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
        stream: Transport,
        protocol: Option<crate::pool::Protocol>,
        name: Option<&ConnectionName>,
    ) -> io::Result<ClientTlsStream> {
        let Some(configs) = self.configs.current() else {
            return Err(io::Error::other(
                "the validation context's SDS secret has not arrived",
            ));
        };
        let config = match protocol {
            None => &configs.config,
            Some(crate::pool::Protocol::Http1) => &configs.h1_config,
            Some(crate::pool::Protocol::Http2) => &configs.h2_config,
        };
        let key_log = self.key_log.as_ref().and_then(|k| {
            let tcp = stream.tcp();
            k.for_connection(
                tcp.and_then(|t| t.local_addr().ok()),
                tcp.and_then(|t| t.peer_addr().ok()),
            )
        });
        let Some(name) = name.filter(|n| n.sni.is_some() || n.san.is_some()) else {
            let config = match key_log {
                Some(log) => {
                    let mut logged = ClientConfig::clone(config);
                    logged.key_log = log;
                    Arc::new(logged)
                }
                None => config.clone(),
            };
            return handshake(stream, config, self.server_name.clone()).await;
        };
        // A configuration for this connection: its SNI, and the name its verifier checks.
        let mut named = ClientConfig::clone(config);
        if let Some(log) = key_log {
            named.key_log = log;
        }
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
                inner: configs.roots_verifier.clone(),
                validation: configs.validation.clone(),
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

/// The client certificate offered when the server asks for one (Envoy's client contexts
/// take at most one), if the server's signature schemes allow it.
#[derive(Debug)]
enum ClientCert {
    None,
    Inline(Arc<CertifiedKey>),
    /// The certificate the SDS secret holds when the server asks.
    Sds(Arc<CertificateSecret>),
}

impl ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let key = match self {
            ClientCert::None => None,
            ClientCert::Inline(k) => Some(k.clone()),
            ClientCert::Sds(s) => s.key(),
        };
        key.filter(|k| k.key.choose_scheme(sigschemes).is_some())
    }

    fn has_certs(&self) -> bool {
        !matches!(self, ClientCert::None)
    }
}

/// What a context's configurations are built from, besides its validation settings.
struct Settings {
    params: tls::Params,
    cert: Arc<ClientCert>,
    /// `sni` is set.
    sends_sni: bool,
    max_session_keys: Option<u32>,
    alpn: Vec<Vec<u8>>,
}

impl Settings {
    /// The configurations for `validation` (as Envoy, none: any certificate is accepted).
    fn build(&self, validation: Option<Validation>) -> Compiled<Configs> {
        let mut validation = validation.unwrap_or_default();
        // Envoy 1.40 does not limit an upstream's chain by `max_verify_depth` (probed).
        validation.max_depth = None;
        let provider = &self.params.provider;
        let roots_verifier = match &validation.roots {
            Some(roots) => {
                let mut builder =
                    WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone());
                if !validation.crls.is_empty() {
                    builder = builder
                        .with_crls(validation.crls.iter().cloned())
                        .enforce_revocation_expiration();
                    if validation.only_leaf_crl {
                        builder = builder.only_check_end_entity_revocation();
                    }
                }
                Some(builder.build().map_err(|e| {
                    vec![ConfigError::new(
                        "common_tls_context.validation_context.trusted_ca",
                        format!("Failed to load trusted CA certificates: {e}"),
                    )]
                })?)
            }
            None => None,
        };
        let verifier: Arc<dyn ServerCertVerifier> = Arc::new(Verifier {
            inner: roots_verifier.clone(),
            validation: validation.clone(),
            san_override: None,
            provider: provider.clone(),
        });
        let builder = self
            .params
            .with_versions(ClientConfig::builder_with_provider(provider.clone()))?;
        let mut config = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(self.cert.clone());
        // Envoy sends SNI only when `sni` is set.
        config.enable_sni = self.sends_sni;
        config.resumption = resumption(self.max_session_keys);
        config.alpn_protocols = self.alpn.clone();
        let mut h1_config = config.clone();
        let mut h2_config = config.clone();
        if config.alpn_protocols.is_empty() {
            h1_config.alpn_protocols = vec![b"http/1.1".to_vec()];
            h2_config.alpn_protocols = vec![b"h2".to_vec()];
        }
        Ok(Configs {
            validation,
            roots_verifier,
            config: Arc::new(config),
            h1_config: Arc::new(h1_config),
            h2_config: Arc::new(h2_config),
        })
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
    stream: Transport,
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
) -> io::Result<ClientTlsStream> {
    let conn = rustls::ClientConnection::new(config, server_name)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    ClientTlsStream::connect(stream, conn).await
}
