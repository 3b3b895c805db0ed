//! Listener filters (`Listener.listener_filters`): what runs on an accepted socket before its
//! filter chain is chosen. The inspectors ([`tls_inspector`](crate::tls_inspector),
//! [`http_inspector`](crate::http_inspector)) peek, so the bytes stay for the chain. All of
//! them together are bounded by `listener_filters_timeout` (15 s unless set; 0 disables it):
//! on expiry the socket is closed and `listener.<addr>.downstream_pre_cx_timeout` counted,
//! unless `continue_on_listener_filters_timeout` lets the connection go on with what was
//! detected so far. A peer that closes before the filters are done is counted in
//! `downstream_listener_filter_remote_close`.
//!
//! Peeking without spinning: a peek leaves the bytes in the socket, so the socket stays
//! readable and waiting for "readable" again would return at once. Each peek that finds too
//! few bytes therefore clears tokio's readiness (`try_io` with `WouldBlock`), and the next wait
//! returns only when more bytes (or the peer's FIN) arrive.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use legate_api::pb::envoy::config::listener::v3::{Listener, ListenerFilter, listener_filter};
use legate_api::pb::envoy::extensions::filters::listener::proxy_protocol::v3::ProxyProtocol;
use legate_api::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use legate_core::proto::{duration_or, u32_or};
use legate_core::proxy_protocol::PassThrough;
use legate_core::stats::{Counter, Gauge, ImportMode, Scope};
use legate_core::{Compiled, ConfigError, Errors};
use prost::Message;
use tokio::io::{Interest, Ready};
use tokio::net::{TcpStream, UnixStream};

use crate::http_inspector::{self, HttpInspectorStats};
use crate::proxy_protocol::{self, ProxyProtocolConfig, ProxyProtocolStats, TlvRule};
use crate::tls_inspector::{
    self, DEFAULT_MAX_CLIENT_HELLO_SIZE, TlsInspectorConfig, TlsInspectorStats,
};

pub const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
pub const HTTP_INSPECTOR: &str = "envoy.filters.listener.http_inspector";
pub const PROXY_PROTOCOL: &str = "envoy.filters.listener.proxy_protocol";
pub const ORIGINAL_DST: &str = "envoy.filters.listener.original_dst";
const ORIGINAL_DST_TYPE: &str = "envoy.extensions.filters.listener.original_dst.v3.OriginalDst";
const PROXY_PROTOCOL_TYPE: &str =
    "envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol";
const TLS_INSPECTOR_TYPE: &str = "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
const HTTP_INSPECTOR_TYPE: &str =
    "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector";

/// Envoy's default `listener_filters_timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone, Debug)]
pub enum ListenerFilterKind {
    TlsInspector(TlsInspectorConfig),
    HttpInspector,
    ProxyProtocol(ProxyProtocolConfig),
    /// `envoy.filters.listener.original_dst`: the destination before an iptables/nftables
    /// REDIRECT or DNAT becomes the connection's local address.
    OriginalDst,
}

/// A listener's filters, in order, with their timeout.
#[derive(Clone, Debug, Default)]
pub struct ListenerFilters {
    pub filters: Vec<ListenerFilterKind>,
    /// `None`: no timeout (`listener_filters_timeout: 0s`).
    pub timeout: Option<Duration>,
    pub continue_on_timeout: bool,
}

impl ListenerFilters {
    pub fn compile(l: &Listener) -> Compiled<Self> {
        let mut errors = Errors::default();
        let mut filters = Vec::with_capacity(l.listener_filters.len());
        for (i, f) in l.listener_filters.iter().enumerate() {
            if let Some(f) = errors.take(&format!("listener_filters[{i}]"), compile_filter(f)) {
                filters.push(f);
            }
        }
        let timeout = duration_or(l.listener_filters_timeout.as_ref(), DEFAULT_TIMEOUT);
        errors.finish(|| ListenerFilters {
            filters,
            timeout: (!timeout.is_zero()).then_some(timeout),
            continue_on_timeout: l.continue_on_listener_filters_timeout,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// The peek buffer the filters need.
    fn peek_limit(&self) -> usize {
        self.filters
            .iter()
            .map(|f| match f {
                ListenerFilterKind::TlsInspector(c) => c.peek_limit(),
                ListenerFilterKind::HttpInspector => http_inspector::MAX_INSPECT_SIZE,
                ListenerFilterKind::ProxyProtocol(_) => proxy_protocol::PEEK_LIMIT,
                ListenerFilterKind::OriginalDst => 0,
            })
            .max()
            .unwrap_or(0)
    }
}

fn compile_filter(f: &ListenerFilter) -> Compiled<ListenerFilterKind> {
    let err = |path: &str, m: String| Err(vec![ConfigError::new(path, m)]);
    let any = match &f.config_type {
        Some(listener_filter::ConfigType::TypedConfig(any)) => any,
        Some(listener_filter::ConfigType::ConfigDiscovery(_)) => {
            return err(
                "config_discovery",
                "listener filter config discovery is not supported by Legate".into(),
            );
        }
        // Envoy still finds a few listener filters by name alone.
        None if f.name == TLS_INSPECTOR => {
            return Ok(ListenerFilterKind::TlsInspector(Default::default()));
        }
        None if f.name == HTTP_INSPECTOR => return Ok(ListenerFilterKind::HttpInspector),
        None if f.name == PROXY_PROTOCOL => {
            return Ok(ListenerFilterKind::ProxyProtocol(Default::default()));
        }
        None if f.name == ORIGINAL_DST => return Ok(ListenerFilterKind::OriginalDst),
        None => {
            return err(
                "",
                format!(
                    "Didn't find a registered implementation for name: '{}'",
                    f.name
                ),
            );
        }
    };
    match legate_api::any::type_name(&any.type_url) {
        TLS_INSPECTOR_TYPE => {
            let c = TlsInspector::decode(any.value.as_slice()).map_err(|e| {
                vec![ConfigError::new(
                    "typed_config",
                    format!("unable to decode TlsInspector: {e}"),
                )]
            })?;
            Ok(ListenerFilterKind::TlsInspector(TlsInspectorConfig {
                ja3: c.enable_ja3_fingerprinting.is_some_and(|v| v.value),
                ja4: c.enable_ja4_fingerprinting.is_some_and(|v| v.value),
                max_client_hello_size: u32_or(
                    c.max_client_hello_size.as_ref(),
                    DEFAULT_MAX_CLIENT_HELLO_SIZE as u32,
                ) as usize,
                close_on_parse_error: c.close_connection_on_client_hello_parsing_errors,
            }))
        }
        HTTP_INSPECTOR_TYPE => Ok(ListenerFilterKind::HttpInspector),
        // `OriginalDst` has no field this version of the API can set.
        ORIGINAL_DST_TYPE => Ok(ListenerFilterKind::OriginalDst),
        PROXY_PROTOCOL_TYPE => {
            let c = ProxyProtocol::decode(any.value.as_slice()).map_err(|e| {
                vec![ConfigError::new(
                    "typed_config",
                    format!("unable to decode ProxyProtocol: {e}"),
                )]
            })?;
            let pass_through = match &c.pass_through_tlvs {
                Some(p) => Some(
                    PassThrough::compile(p)
                        .map_err(|e| legate_core::within(e, "typed_config.pass_through_tlvs"))?,
                ),
                None => None,
            };
            Ok(ListenerFilterKind::ProxyProtocol(ProxyProtocolConfig {
                allow_without: c.allow_requests_without_proxy_protocol,
                pass_through,
                // Version enum: V1 = 0, V2 = 1.
                disallowed: c
                    .disallowed_versions
                    .iter()
                    .map(|v| (*v + 1) as u8)
                    .collect(),
                stat_prefix: c.stat_prefix,
                rules: c
                    .rules
                    .iter()
                    .map(|rule| {
                        let on_present = rule.on_tlv_present.clone().unwrap_or_default();
                        TlvRule {
                            // Below 256 (checked with the proto's rules); Envoy keeps the low
                            // byte.
                            tlv_type: (rule.tlv_type & 0xff) as u8,
                            namespace: if on_present.metadata_namespace.is_empty() {
                                proxy_protocol::METADATA_NAMESPACE.to_owned()
                            } else {
                                on_present.metadata_namespace
                            },
                            key: on_present.key,
                        }
                    })
                    .collect(),
            }))
        }
        other => err(
            "typed_config",
            format!(
                "Didn't find a registered implementation for '{}' with type URL: '{other}'",
                f.name
            ),
        ),
    }
}

/// What the listener filters found out about a connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Detected {
    /// The original source and destination a PROXY header gave.
    pub proxied: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
    /// The local address as a listener filter restored it (Envoy's `restoreLocalAddress`):
    /// `original_dst`'s `SO_ORIGINAL_DST`, or a PROXY header's destination, the last filter to
    /// set it winning. Filter-chain matching, `use_original_dst` and ORIGINAL_DST clusters use
    /// it.
    pub restored_local: Option<std::net::SocketAddr>,
    /// SNI, lower-cased; empty if none.
    pub server_name: String,
    /// `tls` when the tls_inspector found a ClientHello; `None` is `raw_buffer`.
    pub tls: bool,
    pub application_protocols: Vec<String>,
    /// The ClientHello's JA3/JA4 fingerprints, when the tls_inspector is asked for them.
    pub fingerprints: Option<std::sync::Arc<legate_core::stream_info::TlsFingerprints>>,
    /// The dynamic metadata the filters set (the proxy_protocol filter's TLV rules).
    pub metadata: Option<std::sync::Arc<legate_core::metadata::DynamicMetadata>>,
    /// The TLVs of the PROXY header that its `pass_through_tlvs` keeps for the upstream.
    pub proxy_tlvs: Vec<legate_core::proxy_protocol::Tlv>,
}

impl Detected {
    pub fn transport_protocol(&self) -> &'static str {
        if self.tls { "tls" } else { "raw_buffer" }
    }
}

/// The stats the filters of one listener update.
#[derive(Debug)]
pub struct ListenerFilterStats {
    pub pre_cx_timeout: Counter,
    pub pre_cx_active: Gauge,
    pub remote_close: Counter,
    pub filter_error: Counter,
    tls: Option<TlsInspectorStats>,
    http: Option<HttpInspectorStats>,
    proxy: Option<ProxyProtocolStats>,
}

impl ListenerFilterStats {
    /// `root`: the store's root scope (inspector stats); `listener`: `listener.<addr>.`.
    pub fn new(root: &Scope, listener: &Scope, filters: &ListenerFilters) -> Self {
        ListenerFilterStats {
            pre_cx_timeout: listener.counter("downstream_pre_cx_timeout"),
            pre_cx_active: listener.gauge("downstream_pre_cx_active", ImportMode::Accumulate),
            remote_close: listener.counter("downstream_listener_filter_remote_close"),
            filter_error: listener.counter("downstream_listener_filter_error"),
            tls: filters
                .filters
                .iter()
                .any(|f| matches!(f, ListenerFilterKind::TlsInspector(_)))
                .then(|| TlsInspectorStats::new(root)),
            http: filters
                .filters
                .iter()
                .any(|f| matches!(f, ListenerFilterKind::HttpInspector))
                .then(|| HttpInspectorStats::new(root)),
            proxy: filters.filters.iter().find_map(|f| match f {
                ListenerFilterKind::ProxyProtocol(c) => Some(ProxyProtocolStats::new(root, c)),
                _ => None,
            }),
        }
    }
}

/// Why the filters closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Timeout,
    RemoteClose,
    FilterError,
}

/// An accepted socket the listener filters can inspect: a TCP connection, or one to a unix
/// domain socket (`pipe`) listener.
pub trait Inspected: AsFd + Sync {
    fn ready(&self, interest: Interest) -> impl Future<Output = io::Result<Ready>> + Send;
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R>;
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// The destination before NAT, for `original_dst`: none on a unix domain socket.
    fn original_destination(&self) -> Option<std::net::SocketAddr>;
}

/// Implements [`Inspected`] for a tokio socket type by its own methods; `$original` gives the
/// destination before NAT.
macro_rules! inspected {
    ($socket:ty, $original:expr) => {
        impl Inspected for $socket {
            fn ready(&self, interest: Interest) -> impl Future<Output = io::Result<Ready>> + Send {
                <$socket>::ready(self, interest)
            }

            fn try_io<R>(
                &self,
                interest: Interest,
                f: impl FnOnce() -> io::Result<R>,
            ) -> io::Result<R> {
                <$socket>::try_io(self, interest, f)
            }

            fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
                <$socket>::readable(self)
            }

            fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
                <$socket>::try_read(self, buf)
            }

            fn original_destination(&self) -> Option<std::net::SocketAddr> {
                $original(self)
            }
        }
    };
}

inspected!(TcpStream, original_destination);
// A unix domain socket has no IP destination: Envoy's `original_dst` leaves it alone.
inspected!(UnixStream, |_: &UnixStream| None);

/// Copies the bytes waiting on `socket` into `buf` without taking them (`recv` with
/// `MSG_PEEK`, which any stream socket supports); never blocks.
fn peek(socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the length of the call, and
    // `socket` is an open descriptor borrowed for it.
    let n = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

pub(crate) enum PeekEnd {
    /// The peer closed (FIN) with these many bytes unread.
    Closed,
    /// The buffer filled up without a decision.
    Full,
    Io(io::Error),
}

/// Peeks until `decide` gives a verdict on the bytes so far.
pub(crate) async fn peek_until<T>(
    stream: &impl Inspected,
    buf: &mut [u8],
    mut decide: impl FnMut(&[u8]) -> Option<T>,
) -> Result<T, PeekEnd> {
    loop {
        let ready = stream
            .ready(Interest::READABLE)
            .await
            .map_err(PeekEnd::Io)?;
        let closed = ready.is_read_closed();
        let mut end = None;
        let r = stream.try_io(Interest::READABLE, || {
            let n = peek(stream.as_fd(), buf)?;
            if let Some(v) = decide(&buf[..n]) {
                return Ok(v);
            }
            if closed || n == 0 {
                end = Some(PeekEnd::Closed);
            } else if n == buf.len() {
                end = Some(PeekEnd::Full);
            }
            Err(io::ErrorKind::WouldBlock.into())
        });
        match r {
            Ok(v) => return Ok(v),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Some(end) = end {
                    return Err(end);
                }
            }
            Err(e) => return Err(PeekEnd::Io(e)),
        }
    }
}

impl ListenerFilters {
    /// Runs the filters on an accepted connection.
    pub async fn run(
        &self,
        stream: &impl Inspected,
        stats: &ListenerFilterStats,
    ) -> Result<Detected, Rejection> {
        stats.pre_cx_active.inc();
        let mut detected = Detected::default();
        let result = match self.timeout {
            Some(t) => tokio::time::timeout(t, self.inspect(stream, stats, &mut detected))
                .await
                .unwrap_or(Err(Rejection::Timeout)),
            None => self.inspect(stream, stats, &mut detected).await,
        };
        stats.pre_cx_active.dec();
        match result {
            Ok(()) => Ok(detected),
            Err(Rejection::Timeout) => {
                stats.pre_cx_timeout.inc();
                if self.continue_on_timeout {
                    Ok(detected)
                } else {
                    Err(Rejection::Timeout)
                }
            }
            Err(Rejection::RemoteClose) => {
                stats.remote_close.inc();
                Err(Rejection::RemoteClose)
            }
            Err(Rejection::FilterError) => {
                stats.filter_error.inc();
                Err(Rejection::FilterError)
            }
        }
    }

    async fn inspect(
        &self,
        stream: &impl Inspected,
        stats: &ListenerFilterStats,
        detected: &mut Detected,
    ) -> Result<(), Rejection> {
        let mut buf = vec![0u8; self.peek_limit()];
        for filter in &self.filters {
            match filter {
                ListenerFilterKind::TlsInspector(config) => {
                    let limit = config.peek_limit().min(buf.len());
                    let verdict =
                        peek_until(
                            stream,
                            &mut buf[..limit],
                            |data| match tls_inspector::inspect(data, config.max_client_hello_size)
                            {
                                tls_inspector::Inspection::NeedMore => None,
                                v => Some(v),
                            },
                        )
                        .await;
                    let Some(s) = &stats.tls else { continue };
                    match verdict {
                        Ok(tls_inspector::Inspection::Tls(hello)) => {
                            s.tls_found.inc();
                            s.bytes_processed.record(hello.bytes as u64);
                            if hello.server_name.is_empty() {
                                s.sni_not_found.inc();
                            } else {
                                s.sni_found.inc();
                            }
                            if hello.alpn.is_empty() {
                                s.alpn_not_found.inc();
                            } else {
                                s.alpn_found.inc();
                            }
                            if config.ja3 || config.ja4 {
                                let (ja3, ja4) = tls_inspector::fingerprints(
                                    &buf[..hello.bytes.min(limit)],
                                    config.ja3,
                                    config.ja4,
                                );
                                detected.fingerprints = Some(std::sync::Arc::new(
                                    legate_core::stream_info::TlsFingerprints { ja3, ja4 },
                                ));
                            }
                            detected.tls = true;
                            detected.server_name = hello.server_name;
                            detected.application_protocols = hello.alpn;
                        }
                        Ok(tls_inspector::Inspection::NotTls { malformed }) => {
                            s.tls_not_found.inc();
                            if malformed && config.close_on_parse_error {
                                return Err(Rejection::FilterError);
                            }
                        }
                        Ok(tls_inspector::Inspection::TooLarge) | Err(PeekEnd::Full) => {
                            s.client_hello_too_large.inc();
                            return Err(Rejection::FilterError);
                        }
                        Ok(tls_inspector::Inspection::NeedMore) | Err(PeekEnd::Closed) => {
                            return Err(Rejection::RemoteClose);
                        }
                        Err(PeekEnd::Io(e)) => {
                            tracing::debug!("tls_inspector: cannot peek: {e}");
                            return Err(Rejection::FilterError);
                        }
                    }
                }
                ListenerFilterKind::HttpInspector => {
                    // Envoy's http_inspector leaves connections found to be TLS alone.
                    if detected.tls {
                        continue;
                    }
                    let limit = http_inspector::MAX_INSPECT_SIZE.min(buf.len());
                    let verdict =
                        peek_until(
                            stream,
                            &mut buf[..limit],
                            |data| match http_inspector::inspect(data) {
                                http_inspector::Detection::NeedMore => None,
                                d => Some(d),
                            },
                        )
                        .await;
                    let Some(s) = &stats.http else { continue };
                    let detection = match verdict {
                        Ok(d) => d,
                        Err(PeekEnd::Full) => http_inspector::Detection::NotHttp,
                        Err(PeekEnd::Closed) => {
                            // Bytes that end before a request line could: not HTTP; nothing at all:
                            // the peer left.
                            let mut probe = [0u8; 1];
                            if peek(stream.as_fd(), &mut probe).unwrap_or(0) == 0 {
                                return Err(Rejection::RemoteClose);
                            }
                            http_inspector::Detection::NotHttp
                        }
                        Err(PeekEnd::Io(e)) => {
                            tracing::debug!("http_inspector: cannot peek: {e}");
                            s.read_error.inc();
                            return Err(Rejection::FilterError);
                        }
                    };
                    s.count(detection);
                    if let http_inspector::Detection::Http(v) = detection {
                        detected.application_protocols = vec![v.alpn().to_owned()];
                    }
                }
                ListenerFilterKind::OriginalDst => {
                    // Envoy leaves the local address as it is when the kernel has no original
                    // destination for the socket (no conntrack entry): not an error.
                    if let Some(original) = stream.original_destination() {
                        detected.restored_local = Some(original);
                    }
                }
                ListenerFilterKind::ProxyProtocol(config) => {
                    let Some(s) = &stats.proxy else { continue };
                    let limit = proxy_protocol::PEEK_LIMIT.min(buf.len());
                    let verdict =
                        peek_until(
                            stream,
                            &mut buf[..limit],
                            |data| match proxy_protocol::parse(data) {
                                proxy_protocol::Parse::NeedMore => None,
                                p => Some(p),
                            },
                        )
                        .await;
                    match verdict {
                        Ok(proxy_protocol::Parse::Header(header)) => {
                            let (found, disallowed, _) = s.version(header.version);
                            if config.disallowed.contains(&header.version) {
                                disallowed.inc();
                                return Err(Rejection::FilterError);
                            }
                            // The header is the proxy's, not the client's: remove it. It
                            // counts as found once it is all there and its TLVs are sound (as
                            // in Envoy).
                            let extensions =
                                take_header(stream, header.length, header.tlv_start).await?;
                            let Some(tlvs) = proxy_protocol::tlvs(&extensions) else {
                                s.error(header.version);
                                return Err(Rejection::FilterError);
                            };
                            detected.metadata = config.metadata(&tlvs).map(std::sync::Arc::new);
                            detected.proxy_tlvs = config.passed_on(&tlvs);
                            found.inc();
                            detected.proxied = header.addresses;
                            if let Some((_, destination)) = header.addresses {
                                detected.restored_local = Some(destination);
                            }
                        }
                        Ok(proxy_protocol::Parse::Malformed(version)) => {
                            s.error(version);
                            return Err(Rejection::FilterError);
                        }
                        Ok(proxy_protocol::Parse::NotProxy) | Err(PeekEnd::Full) => {
                            if config.allow_without {
                                s.not_found_allowed.inc();
                            } else {
                                s.not_found_disallowed.inc();
                                s.errors.inc();
                                return Err(Rejection::FilterError);
                            }
                        }
                        Ok(proxy_protocol::Parse::NeedMore) | Err(PeekEnd::Closed) => {
                            return Err(Rejection::RemoteClose);
                        }
                        Err(PeekEnd::Io(e)) => {
                            tracing::debug!("proxy_protocol: cannot peek: {e}");
                            return Err(Rejection::FilterError);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Reads and removes the first `length` bytes of the stream (a PROXY header), within the
/// filters' timeout, so a header that claims more than it sends ends in a timeout; returns
/// those from `keep_from` on (its TLVs), the rest dropped as it comes.
async fn take_header(
    stream: &impl Inspected,
    length: usize,
    keep_from: usize,
) -> Result<Vec<u8>, Rejection> {
    let mut kept = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut read = 0;
    while read < length {
        stream
            .readable()
            .await
            .map_err(|_| Rejection::FilterError)?;
        let want = (length - read).min(chunk.len());
        match stream.try_read(&mut chunk[..want]) {
            Ok(0) => return Err(Rejection::RemoteClose),
            Ok(n) => {
                let start = keep_from.saturating_sub(read).min(n);
                kept.extend_from_slice(&chunk[start..n]);
                read += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Err(Rejection::FilterError),
        }
    }
    Ok(kept)
}

/// The destination of `stream` before NAT: `SO_ORIGINAL_DST` for IPv4 sockets,
/// `IP6T_SO_ORIGINAL_DST` for IPv6 ones (Envoy's `getOriginalDst`), or `None` when the kernel
/// has none (the connection is not tracked, or not IP).
pub fn original_destination(stream: &TcpStream) -> Option<std::net::SocketAddr> {
    let socket = socket2::SockRef::from(stream);
    let local = stream.local_addr().ok()?;
    let original = if local.is_ipv4() {
        socket.original_dst_v4()
    } else {
        socket.original_dst_v6()
    };
    match original {
        Ok(addr) => addr.as_socket(),
        Err(e) => {
            tracing::trace!("original_dst: no original destination: {e}");
            None
        }
    }
}
