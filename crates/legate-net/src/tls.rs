//! Downstream TLS: a filter chain's `transport_socket` `envoy.transport_sockets.tls` with a
//! `DownstreamTlsContext`, compiled into rustls server configurations, and the handshake that
//! turns an accepted TCP connection into a TLS stream.
//!
//! * Several `tls_certificates` per context: the one served (and its OCSP staple) is chosen per
//!   handshake by [`cert_select`](crate::cert_select), before rustls sees the hello.
//! * Session resumption: tickets ([`session_ticket`](crate::session_ticket)) and a session
//!   cache, as `session_ticket_keys` (or `session_ticket_keys_sds_secret_config`) and the
//!   `disable_*_session_resumption` fields say.
//! * Revocation: `crl` (and CRLs in `trusted_ca`) for client certificates.
//! * ALPN: the server picks from `alpn_protocols`. A client that offers none of them gets no
//!   ALPN (BoringSSL's behaviour), not rustls's `no_application_protocol` alert: such hellos
//!   are served with a second configuration without ALPN.
//! * Client certificates: `validation_context.trusted_ca` asks for one and verifies it if
//!   given; `require_client_certificate` refuses a handshake without one, and so do SAN
//!   matchers and certificate pins ([`legate_core::tls::peer`]), which pins do without a CA.
//! * Validation settings from SDS (`validation_context_sds_secret_config`,
//!   `combined_validation_context`): the configurations are built again when the secret
//!   changes ([`Validated`]), with fresh session caches and ticket contexts, as Envoy builds a
//!   new context: a session from the old CA is not resumed under the new one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use legate_api::pb::envoy::config::core::v3::TransportSocket;
use legate_api::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, TlsCertificate,
    downstream_tls_context::{OcspStaplePolicy, SessionTicketKeysType},
};
use legate_core::io::Transport;
use legate_core::ocsp::{self, OcspResponse};
use legate_core::tls::key_log::KeyLog;
use legate_core::tls::sds::{CertificateSecret, TicketKeysSecret, Validated};
use legate_core::tls::{self, ServedCert, Side, SslStats, Validation};
use legate_core::x509::TlsInfo;

use crate::cert_select::{CertSelector, Chosen, StapleAction};
use crate::session_ticket::{self, SdsTicketKeys, TicketKeys};
use crate::tls_inspector::{self, DEFAULT_MAX_CLIENT_HELLO_SIZE, Inspection};
use legate_core::{Compiled, ConfigError, Errors, within};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    Accepted, Acceptor, NoServerSessionStorage, ProducesTickets, ServerSessionMemoryCache,
    WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{DistinguishedName, ServerConfig};

/// A client's TLS connection, handshake done.
pub type ServerTlsStream = legate_core::io::tls::TlsStream<rustls::ServerConnection>;

pub const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";
const UPSTREAM_TLS_CONTEXT: &str = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

/// A compiled `DownstreamTlsContext`.
pub struct DownstreamTls {
    uses_sds: bool,
    /// `common_tls_context.key_log`.
    key_log: Option<KeyLog>,
    selector: CertSelector,
    /// The rustls configurations, built again when an SDS validation secret changes.
    configs: Arc<Validated<Configs>>,
    /// Listed by the admin `/certs` while this context lives.
    _certificates: Arc<legate_core::x509::ContextCertificates>,
}

/// A context's rustls configurations, built from its validation settings.
struct Configs {
    config: Arc<ServerConfig>,
    /// `config` without ALPN, for hellos that offer none of `alpn_protocols`.
    without_alpn: Arc<ServerConfig>,
}

/// What a context's configurations are built from, besides its validation settings.
struct Settings {
    resumption: Resumption,
    /// `prefer_client_ciphers`.
    prefer_client_ciphers: bool,
    params: tls::Params,
    /// `require_client_certificate`.
    require: bool,
    /// The certificates served (or the names of their SDS secrets), for the session-id context.
    served: Vec<Vec<u8>>,
    alpn: Vec<Vec<u8>>,
}

impl std::fmt::Debug for DownstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownstreamTls")
            .field("uses_sds", &self.uses_sds)
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
        let policy = OcspStaplePolicy::try_from(ctx.ocsp_staple_policy)
            .unwrap_or(OcspStaplePolicy::LenientStapling);
        let mut certs = Vec::new();
        for (i, c) in common.tls_certificates.iter().enumerate() {
            let path = format!("common_tls_context.tls_certificates[{i}]");
            if let Some(key) = errors.take(&path, tls::certified_key(c, &params.provider)) {
                match served_cert(key, c, policy) {
                    Ok(served) => certs.push(served),
                    Err(e) => errors.0.push(e.within(&path)),
                }
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
        let key_log = common
            .key_log
            .as_ref()
            .and_then(|k| errors.take("common_tls_context.key_log", KeyLog::compile(k)));
        let require = ctx
            .require_client_certificate
            .as_ref()
            .is_some_and(|v| v.value);
        if !common.tls_certificate_sds_secret_configs.is_empty()
            && policy == OcspStaplePolicy::MustStaple
        {
            errors.push(
                "ocsp_staple_policy",
                "MUST_STAPLE with certificates from SDS is not supported by Legate",
            );
        }
        if !common.tls_certificates.is_empty()
            && !common.tls_certificate_sds_secret_configs.is_empty()
        {
            errors.push(
                "common_tls_context",
                "SDS and non-SDS TLS certificates may not be mixed in server contexts",
            );
        }
        // What the context serves goes into its session-id context (with what it accepts).
        let served: Vec<Vec<u8>> = certs
            .iter()
            .flat_map(|c| c.key.cert.iter().map(|c| c.to_vec()))
            .chain(secrets.iter().map(|s| s.id.name.as_bytes().to_vec()))
            .collect();
        let alpn: Vec<Vec<u8>> = common
            .alpn_protocols
            .iter()
            .map(|p| p.as_bytes().to_vec())
            .collect();
        // What does not depend on the validation settings is compiled once, here: its errors
        // are the configuration's even while an SDS validation secret has not arrived.
        let resumption = errors.take("", Resumption::compile(ctx));
        errors.take(
            "",
            params.with_versions(ServerConfig::builder_with_provider(params.provider.clone())),
        );
        let Some(resumption) = resumption.filter(|_| errors.0.is_empty()) else {
            return Err(errors.0);
        };
        let settings = Settings {
            resumption,
            prefer_client_ciphers: ctx.prefer_client_ciphers,
            params,
            require,
            served,
            alpn,
        };
        let tickets_from_sds = matches!(settings.resumption.tickets, Tickets::Sds(_));
        let configs = errors.take("", Validated::compile(&common, move |v| settings.build(v)));
        let Some(configs) = configs.filter(|_| errors.0.is_empty()) else {
            return Err(errors.0);
        };
        let uses_sds = !secrets.is_empty() || tickets_from_sds || configs.from_sds();
        let sds_certificates = secrets
            .iter()
            .map(|s| {
                let s = s.clone();
                Box::new(move || s.key()) as legate_core::x509::SecretCertificate
            })
            .collect();
        let selector = CertSelector {
            certs,
            secrets,
            policy,
            full_scan_on_sni_mismatch: ctx.full_scan_certs_on_sni_mismatch.is_some_and(|v| v.value),
        };
        let certificates = legate_core::x509::ContextCertificates::register(
            &common,
            sds_certificates,
            configs.ca_secret(),
        );
        Ok(DownstreamTls {
            uses_sds,
            key_log,
            selector,
            configs,
            _certificates: certificates,
        })
    }

    /// Whether some certificate, the validation context or the ticket keys come from SDS.
    pub fn uses_sds(&self) -> bool {
        self.uses_sds
    }

    /// The listener's `ssl.*` stats, where client-certificate failures that
    /// `ACCEPT_UNTRUSTED` lets through are counted.
    pub fn attach_stats(&self, stats: &SslStats) {
        self.configs.attach_stats(stats);
    }

    /// The TLS handshake on an accepted connection, counted in `stats`, within `timeout`
    /// (`transport_socket_connect_timeout`) if set. `addresses` (local, remote; `None` on a
    /// unix domain socket) decide whether the key log applies.
    pub async fn accept(
        &self,
        mut stream: Transport,
        addresses: (Option<SocketAddr>, Option<SocketAddr>),
        stats: &SslStats,
        timeout: Option<Duration>,
    ) -> Result<(ServerTlsStream, TlsInfo), HandshakeError> {
        let mut local = None;
        let handshake = async {
            let (accepted, ocsp_requested) = read_client_hello(&mut stream).await?;
            let hello = accepted.client_hello();
            let selection = self
                .selector
                .select(&hello, ocsp_requested, SystemTime::now());
            count_staple(stats, ocsp_requested, selection.action);
            // The certificate served, also for `%DOWNSTREAM_LOCAL_*%` and `By=` in
            // x-forwarded-client-cert.
            local = selection.key.clone();
            let Some(configs) = self.configs.current() else {
                return Err(std::io::Error::other(
                    "the validation context's SDS secret has not arrived",
                ));
            };
            let ours = &configs.config.alpn_protocols;
            let offered_ours = match hello.alpn() {
                Some(mut offered) => {
                    ours.is_empty() || offered.any(|p| ours.iter().any(|o| o == p))
                }
                None => true,
            };
            let base = if offered_ours {
                &configs.config
            } else {
                &configs.without_alpn
            };
            let mut config = ServerConfig::clone(base);
            config.cert_resolver = Arc::new(Chosen(selection.key));
            if let Some(log) = self
                .key_log
                .as_ref()
                .and_then(|k| k.for_connection(addresses.0, addresses.1))
            {
                config.key_log = log;
            }
            match accepted.into_connection(Arc::new(config)) {
                Ok(conn) => ServerTlsStream::accept(stream, conn).await,
                Err((error, alert)) => {
                    send_alert(&mut stream, alert).await;
                    Err(std::io::Error::new(std::io::ErrorKind::InvalidData, error))
                }
            }
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
                let conn = s.connection();
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

impl Settings {
    /// The configurations for `validation` (client certificates, session contexts).
    fn build(&self, validation: Option<Validation>) -> Compiled<Configs> {
        let roots = validation.as_ref().and_then(|v| v.roots.clone());
        // What decides which clients this context accepts goes into its session-id context,
        // as Envoy hashes its validation settings into it: a ticket is only resumed by a
        // context that would have accepted the same client.
        let mut accepts: Vec<Vec<u8>> = vec![vec![u8::from(self.require)]];
        if let Some(v) = &validation {
            for ta in v.roots.iter().flat_map(|r| r.roots.iter()) {
                accepts.push(ta.subject.to_vec());
                accepts.push(ta.subject_public_key_info.to_vec());
                accepts.extend(ta.name_constraints.as_ref().map(|n| n.to_vec()));
            }
            accepts.push(v.peer.identity().to_vec());
            accepts.extend(v.crls.iter().map(|c| c.to_vec()));
            accepts.push(vec![
                u8::from(v.only_leaf_crl),
                u8::from(v.allow_expired),
                u8::from(v.accept_untrusted),
            ]);
            accepts.extend(v.max_depth.as_ref().map(|(d, _)| d.to_be_bytes().to_vec()));
        }
        // SAN matchers and pins make a certificate mandatory, as in Envoy; pins work without
        // `trusted_ca` (the certificate is then checked against them alone).
        let checks_peer = validation.as_ref().is_some_and(|v| !v.peer.is_empty());
        if self.require && roots.is_none() && !checks_peer {
            return Err(vec![ConfigError::new(
                "require_client_certificate",
                "requiring a client certificate needs common_tls_context.validation_context.trusted_ca in Legate",
            )]);
        }
        let provider = &self.params.provider;
        let builder = self
            .params
            .with_versions(ServerConfig::builder_with_provider(provider.clone()))?;
        // Envoy asks for a certificate whenever there is something to check it against, and
        // insists on one when required, or when SAN matchers or pins must pass (not under
        // ACCEPT_UNTRUSTED, which lets every failure through).
        let accept_untrusted = validation.as_ref().is_some_and(|v| v.accept_untrusted);
        let mandatory = self.require || (checks_peer && !accept_untrusted);
        let builder = match (roots, validation) {
            (Some(roots), Some(validation)) => {
                let mut v = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
                if !mandatory {
                    v = v.allow_unauthenticated();
                }
                if !validation.crls.is_empty() {
                    v = v
                        .with_crls(validation.crls.iter().cloned())
                        .enforce_revocation_expiration();
                    if validation.only_leaf_crl {
                        v = v.only_check_end_entity_revocation();
                    }
                }
                let inner = v.build().map_err(|e| {
                    vec![ConfigError::new(
                        "common_tls_context.validation_context.trusted_ca",
                        format!("Failed to load trusted CA certificates: {e}"),
                    )]
                })?;
                builder.with_client_cert_verifier(Arc::new(ClientVerifier {
                    chain: Some(inner),
                    validation,
                    mandatory,
                    provider: provider.clone(),
                }))
            }
            (None, Some(validation)) if checks_peer => {
                builder.with_client_cert_verifier(Arc::new(ClientVerifier {
                    chain: None,
                    validation,
                    mandatory,
                    provider: provider.clone(),
                }))
            }
            _ => builder.with_no_client_auth(),
        };
        let context = session_ticket::context_id(
            self.served
                .iter()
                .chain(accepts.iter())
                .map(|a| a.as_slice()),
        );
        // The certificate is chosen before rustls sees the hello (`accept`); each handshake's
        // configuration then carries it.
        let mut config = builder.with_cert_resolver(Arc::new(Chosen(None)));
        self.resumption.apply(&mut config, context)?;
        // BoringSSL's default, and Envoy's unless `prefer_client_ciphers`: the server's order.
        config.ignore_client_order = !self.prefer_client_ciphers;
        config.alpn_protocols = self.alpn.clone();
        let mut without_alpn = config.clone();
        without_alpn.alpn_protocols.clear();
        Ok(Configs {
            config: Arc::new(config),
            without_alpn: Arc::new(without_alpn),
        })
    }
}

/// Session resumption as a `DownstreamTlsContext` configures it, compiled once (its key files
/// read, its SDS secret subscribed); each build of the context's configurations makes its own
/// ticketer and session cache from it ([`Self::apply`]). Envoy (BoringSSL) resumes both ways
/// by default: stateless, with tickets sealed under `session_ticket_keys` or a random key of
/// the context's own; stateful (TLS 1.2 session ids), from a per-context cache.
struct Resumption {
    tickets: Tickets,
    /// The tickets' lifetime (`session_timeout`).
    lifetime: u32,
    /// `disable_stateful_session_resumption`.
    stateful: bool,
}

/// Where a context's ticket keys come from.
enum Tickets {
    /// `disable_stateless_session_resumption`: no tickets (TLS 1.3 sessions are not resumed,
    /// as BoringSSL resumes TLS 1.3 only from tickets).
    Disabled,
    /// A random key made with each build of the context, as BoringSSL makes one per context.
    Random,
    /// `session_ticket_keys`, read.
    Keys(Vec<Vec<u8>>),
    /// `session_ticket_keys_sds_secret_config`.
    Sds(Arc<TicketKeysSecret>),
}

/// BoringSSL's default session lifetime (`SSL_DEFAULT_SESSION_TIMEOUT`), Envoy's without
/// `session_timeout`.
const DEFAULT_SESSION_TIMEOUT_SECS: u32 = 7200;
/// BoringSSL's number of TLS 1.3 tickets per handshake.
const TLS13_TICKETS: usize = 2;
/// BoringSSL's default session cache size (`SSL_SESSION_CACHE_MAX_SIZE_DEFAULT`).
const SESSION_CACHE_SIZE: usize = 20 * 1024;

impl Resumption {
    fn compile(ctx: &DownstreamTlsContext) -> Compiled<Resumption> {
        let lifetime = match &ctx.session_timeout {
            None => DEFAULT_SESSION_TIMEOUT_SECS,
            // rustls refuses tickets living longer than TLS 1.3's 7 days.
            Some(d) => d.seconds.clamp(0, 7 * 24 * 3600) as u32,
        };
        let tickets = match &ctx.session_ticket_keys_type {
            Some(SessionTicketKeysType::DisableStatelessSessionResumption(true)) => {
                Tickets::Disabled
            }
            Some(SessionTicketKeysType::SessionTicketKeys(k)) => {
                let mut data = Vec::new();
                for (i, source) in k.keys.iter().enumerate() {
                    let path = format!("session_ticket_keys.keys[{i}]");
                    let (bytes, _) = tls::read_data_source(source).map_err(|e| within(e, &path))?;
                    data.push(bytes);
                }
                // Checked now (the lengths), made per build.
                TicketKeys::from_key_data(data.iter().map(|d| &d[..]), [0; 32], lifetime)
                    .map_err(|e| vec![ConfigError::new("session_ticket_keys", e)])?;
                Tickets::Keys(data)
            }
            Some(SessionTicketKeysType::SessionTicketKeysSdsSecretConfig(c)) => Tickets::Sds(
                TicketKeysSecret::subscribe(c)
                    .map_err(|e| vec![e.within("session_ticket_keys_sds_secret_config")])?,
            ),
            _ => Tickets::Random,
        };
        Ok(Resumption {
            tickets,
            lifetime,
            stateful: !ctx.disable_stateful_session_resumption,
        })
    }

    /// Gives `config` a session cache and a ticketer of its own, for the session-id context
    /// `context`.
    fn apply(&self, config: &mut ServerConfig, context: [u8; 32]) -> Compiled<()> {
        config.session_storage = if self.stateful {
            ServerSessionMemoryCache::new(SESSION_CACHE_SIZE)
        } else {
            Arc::new(NoServerSessionStorage {})
        };
        let failed = |e: String| vec![ConfigError::new("session_ticket_keys", e)];
        let ticketer: Arc<dyn ProducesTickets> = match &self.tickets {
            Tickets::Disabled => {
                config.send_tls13_tickets = 0;
                return Ok(());
            }
            Tickets::Random => {
                Arc::new(TicketKeys::random(context, self.lifetime).map_err(failed)?)
            }
            Tickets::Keys(data) => Arc::new(
                TicketKeys::from_key_data(data.iter().map(|d| &d[..]), context, self.lifetime)
                    .map_err(failed)?,
            ),
            Tickets::Sds(secret) => {
                Arc::new(SdsTicketKeys::new(secret.clone(), context, self.lifetime))
            }
        };
        config.ticketer = ticketer;
        config.send_tls13_tickets = TLS13_TICKETS;
        Ok(())
    }
}

/// A `TlsCertificate` with its `ocsp_staple`, checked as Envoy checks it.
fn served_cert(
    key: Arc<CertifiedKey>,
    c: &TlsCertificate,
    policy: OcspStaplePolicy,
) -> Result<ServedCert, ConfigError> {
    let leaf = key.cert.first().map(|c| c.as_ref()).unwrap_or_default();
    let must_staple = ocsp::is_must_staple(leaf);
    let Some(source) = &c.ocsp_staple else {
        if must_staple {
            return Err(ConfigError::new(
                "ocsp_staple",
                "OCSP response is required for must-staple certificate",
            ));
        }
        if policy == OcspStaplePolicy::MustStaple {
            return Err(ConfigError::new(
                "ocsp_staple",
                "Required OCSP response is missing from TLS context",
            ));
        }
        return Ok(ServedCert::plain(key));
    };
    let (der, _) = tls::read_data_source(source).map_err(|errors| {
        let first = errors.into_iter().next();
        first.map_or_else(
            || ConfigError::new("ocsp_staple", "unreadable"),
            |e| e.within("ocsp_staple"),
        )
    })?;
    let response = OcspResponse::parse(&der).map_err(|e| ConfigError::new("ocsp_staple", e))?;
    if !response.matches(leaf) {
        return Err(ConfigError::new(
            "ocsp_staple",
            "OCSP response does not match its TLS certificate",
        ));
    }
    let mut stapled = CertifiedKey::clone(&key);
    stapled.ocsp = Some(der);
    Ok(ServedCert {
        names: tls::names_of(&key),
        key,
        stapled: Some((Arc::new(stapled), Arc::new(response))),
        must_staple,
    })
}

/// Reads the connection's ClientHello into rustls's acceptor, as tokio-rustls's
/// `LazyConfigAcceptor` does, and tells whether it carries `status_request`: rustls does not
/// say whether the client asked for an OCSP staple, so the bytes rustls reads are kept (a
/// hello is ~0.5 KB) and parsed for it too. (Peeking at the hello first cost three system
/// calls and a zeroed 16 KB buffer per handshake.)
async fn read_client_hello(stream: &mut Transport) -> std::io::Result<(Accepted, bool)> {
    use std::io::{Error, ErrorKind};
    let mut acceptor = Acceptor::default();
    let mut seen = Vec::new();
    loop {
        stream.readable().await?;
        let mut tee = Tee {
            stream: &*stream,
            seen: &mut seen,
        };
        match acceptor.read_tls(&mut tee) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let status_request = matches!(
                    tls_inspector::inspect(&seen, DEFAULT_MAX_CLIENT_HELLO_SIZE),
                    Inspection::Tls(hello) if hello.status_request
                );
                return Ok((accepted, status_request));
            }
            Ok(None) => {}
            Err((error, alert)) => {
                send_alert(stream, alert).await;
                return Err(Error::new(ErrorKind::InvalidData, error));
            }
        }
    }
}

/// Sends the alert of a handshake that failed before it had a connection. The alert is a
/// courtesy: the handshake failed whether or not it is sent.
async fn send_alert(stream: &mut Transport, mut alert: rustls::server::AcceptedAlert) {
    let mut bytes = Vec::new();
    if alert.write_all(&mut bytes).is_ok() {
        let _ = tokio::io::AsyncWriteExt::write_all(stream, &bytes).await;
    }
}

/// A reader of the socket that keeps a copy of what it reads.
struct Tee<'a> {
    stream: &'a Transport,
    seen: &'a mut Vec<u8>,
}

impl std::io::Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.stream.try_read(buf)?;
        self.seen.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// Envoy's `ssl.ocsp_staple_*` counts for one handshake.
fn count_staple(stats: &SslStats, requested: bool, action: StapleAction) {
    if requested {
        stats.ocsp_staple_requests.inc();
    }
    match action {
        StapleAction::Staple => stats.ocsp_staple_responses.inc(),
        StapleAction::NoStaple => stats.ocsp_staple_omitted.inc(),
        StapleAction::Fail => stats.ocsp_staple_failed.inc(),
        StapleAction::ClientNotCapable => {}
    }
}

/// The client-certificate check: the chain against `trusted_ca` (when there is one), then
/// the SAN matchers and pins.
#[derive(Debug)]
struct ClientVerifier {
    chain: Option<Arc<dyn ClientCertVerifier>>,
    validation: Validation,
    /// A handshake without a certificate fails.
    mandatory: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.as_ref().map_or(&[], |c| c.root_hint_subjects())
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let chain = self.chain.as_ref().map(|c| {
            move |now| {
                c.verify_client_cert(end_entity, intermediates, now)
                    .map(|_| ())
            }
        });
        self.validation
            .verify_peer(end_entity, intermediates, now, chain, None)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
