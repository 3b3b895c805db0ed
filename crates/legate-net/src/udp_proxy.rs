//! `envoy.filters.udp_listener.udp_proxy`: the UDP proxy of a UDP listener
//! (`socket_address.protocol: UDP`) — its compiled configuration, its stats with Envoy's names,
//! and the datagram relay. Which host serves a session is asked of an [`UdpUpstreams`] that
//! the binary provides (this crate does not know clusters).
//!
//! # Session lifecycle (Envoy's `UdpProxyFilter::ActiveSession`)
//!
//! * A datagram from a downstream source address (IP and port) that has no session opens one:
//!   the route's cluster is looked up (none: `downstream_sess_no_route`, the datagram is
//!   dropped), its load balancer picks a host (none: `cluster.<c>.upstream_cx_none_healthy`,
//!   dropped; with `hash_policies`, a RING_HASH or MAGLEV cluster picks it by the client's IP
//!   or a fixed key, as Envoy does), and a new UDP socket, bound to an ephemeral port and
//!   connected to that host, becomes the session's upstream (`downstream_sess_total`,
//!   `downstream_sess_active`). So the upstream sees one source port per downstream client.
//! * Datagrams from that client go out on the session's socket; datagrams the host sends back
//!   go to the client from the listener's socket. Both directions are counted
//!   (`udp.<prefix>.downstream_sess_{rx,tx}_{bytes,datagrams}`,
//!   `cluster.<c>.udp.sess_{rx,tx}_datagrams`, `cluster.<c>.upstream_cx_{rx,tx}_bytes_total`)
//!   and both reset the session's idle timer.
//! * A session with no datagram either way for `idle_timeout` (60 s unless set) ends
//!   (`idle_timeout`): its socket closes, and the client's next datagram opens a new session,
//!   perhaps on another host. A socket error does not end a session (Envoy counts it:
//!   `*_rx_errors`, `*_tx_errors`).
//! * When the listener stops (removed, replaced, `/drain_listeners`, shutdown) its sessions
//!   end at once: UDP has no connection to drain.
//! * A session that ends writes one line to each `access_log`: its addresses (client,
//!   listener, host, the session socket), `%BYTES_RECEIVED%` from the client and
//!   `%BYTES_SENT%` to it, its `%START_TIME%` and `%DURATION%`; Envoy 1.40 leaves
//!   `%UPSTREAM_CLUSTER%` unset (`-`) and `%CONNECTION_ID%` 0 in these lines, and so does Legate.
//!
//! Datagrams larger than the receive limit are dropped, not truncated: on the listener socket
//! `udp_listener_config.downstream_socket_config.max_rx_datagram_size` (1500 unless set;
//! `listener.<prefix>.udp.downstream_rx_datagram_dropped`), on session sockets
//! `upstream_socket_config.max_rx_datagram_size` when `prefer_gro` is false
//! (`cluster.<c>.udp.sess_rx_datagrams_dropped`). With `prefer_gro` (the default upstream, as
//! in Envoy) a session reads into Envoy's 64 KiB GRO buffer, so any datagram fits.
//!
//! Workers: each worker has its own `SO_REUSEPORT` socket of a UDP listener (as Envoy binds
//! UDP listeners per worker), and its own sessions; the kernel hashes a client's address and
//! port to one socket, so a client's datagrams reach the worker that holds its session.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use legate_api::pb::envoy::config::accesslog::v3::AccessLog;
use legate_api::pb::envoy::config::core::v3::UdpSocketConfig;
use legate_api::pb::envoy::config::listener::v3::{Listener, listener_filter};
use legate_api::pb::envoy::extensions::filters::udp::udp_proxy::v3::udp_proxy_config::hash_policy::PolicySpecifier;
use legate_api::pb::envoy::extensions::filters::udp::udp_proxy::v3::{
    Route, UdpProxyConfig as UdpProxyProto, udp_proxy_config::RouteSpecifier,
};
use legate_api::pb::xds::r#type::matcher::v3::matcher::on_match;
use legate_core::access_log::AccessLogger;
use legate_core::proto::{bool_or, duration_or};
use legate_core::runtime::Runtime;
use legate_core::stats::{Counter, Gauge, ImportMode, Scope};
use legate_core::stream_info::{Protocol, StreamInfo};
use legate_core::{Compiled, ConfigError, Errors};
use prost::Message;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;

pub const UDP_PROXY: &str = "envoy.filters.udp_listener.udp_proxy";
const UDP_PROXY_TYPE: &str = "envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig";
const ROUTE_TYPE: &str = "envoy.extensions.filters.udp.udp_proxy.v3.Route";

/// Envoy's default `idle_timeout` of a session.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Envoy's default `max_rx_datagram_size`.
pub const DEFAULT_MAX_RX_DATAGRAM_SIZE: usize = 1500;
/// The buffer Envoy reads into with GRO: a datagram of any size fits.
const GRO_BUFFER: usize = 64 * 1024;

/// How a UDP socket receives (`envoy.config.core.v3.UdpSocketConfig`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpReceive {
    pub max_rx_datagram_size: usize,
    /// `prefer_gro`: read into a 64 KiB buffer; no datagram is too large.
    pub gro: bool,
}

impl UdpReceive {
    /// `gro_default`: Envoy's default of `prefer_gro` where the config is used (false for
    /// listener sockets, true for udp_proxy's upstream sockets).
    fn compile(c: Option<&UdpSocketConfig>, gro_default: bool) -> Self {
        let max = c
            .and_then(|c| c.max_rx_datagram_size.as_ref())
            .map_or(DEFAULT_MAX_RX_DATAGRAM_SIZE as u64, |v| v.value);
        UdpReceive {
            // The largest UDP payload is under 64 KiB: a larger limit changes nothing.
            max_rx_datagram_size: max.min(GRO_BUFFER as u64) as usize,
            gro: bool_or(c.and_then(|c| c.prefer_gro.as_ref()), gro_default),
        }
    }

    /// The read buffer: one byte over the limit, so that a larger datagram shows (a read
    /// that fills it) and is dropped rather than passed on truncated.
    fn buffer_len(&self) -> usize {
        if self.gro {
            GRO_BUFFER
        } else {
            self.max_rx_datagram_size + 1
        }
    }

    fn too_large(&self, len: usize) -> bool {
        !self.gro && len > self.max_rx_datagram_size
    }
}

/// The compiled `UdpProxyConfig`. The fields Legate does not implement are refused by the
/// support table before this runs.
#[derive(Clone, Debug)]
pub struct UdpProxyConfig {
    pub stat_prefix: String,
    /// The cluster of every session: `cluster`, or the route of the matcher's `on_no_match`.
    pub cluster: String,
    pub idle_timeout: Duration,
    pub upstream: UdpReceive,
    /// `access_log`: one line per session, when it ends.
    pub access_log: Vec<AccessLog>,
    /// `hash_policies` (at most one): the key a RING_HASH or MAGLEV cluster picks a new
    /// session's host by.
    pub hash_policy: Option<UdpHashPolicy>,
}

/// `UdpProxyConfig.HashPolicy`: Envoy hashes (xxHash64) the client's IP as text, or a fixed
/// key, so that all of one client's (or all) sessions go to one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UdpHashPolicy {
    SourceIp,
    Key(String),
}

impl UdpProxyConfig {
    pub fn compile(p: &UdpProxyProto) -> Compiled<Self> {
        let mut errors = Errors::default();
        #[allow(deprecated)]
        let cluster = match &p.route_specifier {
            Some(RouteSpecifier::Cluster(c)) => c.clone(),
            Some(RouteSpecifier::Matcher(m)) => {
                let action = m
                    .on_no_match
                    .as_ref()
                    .and_then(|o| o.on_match.as_ref())
                    .and_then(|o| match o {
                        on_match::OnMatch::Action(a) => Some(a),
                        on_match::OnMatch::Matcher(_) => None,
                    });
                match action.and_then(|a| a.typed_config.as_ref()) {
                    Some(any) if legate_api::any::type_name(&any.type_url) == ROUTE_TYPE => {
                        match Route::decode(any.value.as_slice()) {
                            Ok(r) => r.cluster,
                            Err(e) => {
                                errors.push(
                                    "matcher.on_no_match.action.typed_config",
                                    format!("unable to decode Route: {e}"),
                                );
                                String::new()
                            }
                        }
                    }
                    Some(any) => {
                        errors.push(
                            "matcher.on_no_match.action.typed_config",
                            format!(
                                "the action of a udp_proxy matcher must be a {ROUTE_TYPE}, not '{}'",
                                any.type_url
                            ),
                        );
                        String::new()
                    }
                    None => {
                        errors.push(
                            "matcher",
                            "Legate supports a udp_proxy matcher with on_no_match.action (a Route) only",
                        );
                        String::new()
                    }
                }
            }
            None => {
                errors.push("cluster", "a cluster or a matcher is required");
                String::new()
            }
        };
        for (i, log) in p.access_log.iter().enumerate() {
            errors.take(&format!("access_log[{i}]"), AccessLogger::check(log));
        }
        // `validate.rules` allow one policy and require its specifier.
        let hash_policy = p
            .hash_policies
            .first()
            .and_then(|h| h.policy_specifier.as_ref())
            .map(|h| match h {
                PolicySpecifier::SourceIp(_) => UdpHashPolicy::SourceIp,
                PolicySpecifier::Key(k) => UdpHashPolicy::Key(k.clone()),
            });
        errors.finish(|| UdpProxyConfig {
            hash_policy,
            access_log: p.access_log.clone(),
            stat_prefix: p.stat_prefix.clone(),
            cluster,
            idle_timeout: duration_or(p.idle_timeout.as_ref(), DEFAULT_IDLE_TIMEOUT),
            upstream: UdpReceive::compile(p.upstream_socket_config.as_ref(), true),
        })
    }
}

/// What a UDP listener runs: its proxy and how its socket receives.
#[derive(Clone, Debug)]
pub struct UdpListenerConfig {
    pub proxy: Arc<UdpProxyConfig>,
    pub downstream: UdpReceive,
}

impl UdpListenerConfig {
    /// The UDP half of a listener on a UDP address: `udp_listener_config` and exactly one
    /// `udp_proxy` listener filter. Filter chains are for QUIC, which Legate does not serve.
    pub fn compile(l: &Listener) -> Compiled<Self> {
        let mut errors = Errors::default();
        if !l.filter_chains.is_empty() {
            errors.push(
                "filter_chains",
                "filter chains on a UDP listener (QUIC) are not supported by Legate",
            );
        }
        if l.default_filter_chain.is_some() {
            errors.push(
                "default_filter_chain",
                "filter chains on a UDP listener (QUIC) are not supported by Legate",
            );
        }
        let mut proxy = None;
        for (i, f) in l.listener_filters.iter().enumerate() {
            let path = format!("listener_filters[{i}]");
            let any = match &f.config_type {
                Some(listener_filter::ConfigType::TypedConfig(any)) => any,
                Some(listener_filter::ConfigType::ConfigDiscovery(_)) => {
                    errors.push(
                        &format!("{path}.config_discovery"),
                        "listener filter config discovery is not supported by Legate",
                    );
                    continue;
                }
                None => {
                    errors.push(
                        &path,
                        format!(
                            "Didn't find a registered implementation for name: '{}'",
                            f.name
                        ),
                    );
                    continue;
                }
            };
            if legate_api::any::type_name(&any.type_url) != UDP_PROXY_TYPE {
                errors.push(
                    &format!("{path}.typed_config"),
                    format!(
                        "a UDP listener runs {UDP_PROXY} only in Legate, not '{}'",
                        any.type_url
                    ),
                );
                continue;
            }
            if proxy.is_some() {
                errors.push(
                    &path,
                    "Legate runs one udp_proxy listener filter per UDP listener",
                );
                continue;
            }
            match UdpProxyProto::decode(any.value.as_slice()) {
                Ok(p) => {
                    proxy =
                        errors.take(&format!("{path}.typed_config"), UdpProxyConfig::compile(&p))
                }
                Err(e) => errors.push(
                    &format!("{path}.typed_config"),
                    format!("unable to decode UdpProxyConfig: {e}"),
                ),
            }
        }
        if l.listener_filters.is_empty() {
            errors.push(
                "listener_filters",
                format!("a UDP listener needs the {UDP_PROXY} listener filter in Legate"),
            );
        }
        let downstream = UdpReceive::compile(
            l.udp_listener_config
                .as_ref()
                .and_then(|u| u.downstream_socket_config.as_ref()),
            false,
        );
        errors.finish(|| UdpListenerConfig {
            proxy: Arc::new(proxy.unwrap_or_else(|| UdpProxyConfig {
                stat_prefix: String::new(),
                cluster: String::new(),
                idle_timeout: DEFAULT_IDLE_TIMEOUT,
                upstream: UdpReceive::compile(None, true),
                access_log: Vec::new(),
                hash_policy: None,
            })),
            downstream,
        })
    }
}

/// `udp.<stat_prefix>.*` (udp_proxy_filter.rst), registered as Envoy registers them.
#[derive(Debug)]
pub struct UdpProxyStats {
    pub downstream_sess_total: Counter,
    pub downstream_sess_active: Gauge,
    pub downstream_sess_no_route: Counter,
    pub downstream_sess_rx_bytes: Counter,
    pub downstream_sess_rx_datagrams: Counter,
    pub downstream_sess_rx_errors: Counter,
    pub downstream_sess_tx_bytes: Counter,
    pub downstream_sess_tx_datagrams: Counter,
    pub downstream_sess_tx_errors: Counter,
    pub idle_timeout: Counter,
}

impl UdpProxyStats {
    pub fn new(root: &Scope, stat_prefix: &str) -> Self {
        let s = root.scope(&format!("udp.{stat_prefix}."));
        s.counter("session_filter_config_missing");
        let c = |n: &str| s.counter(n);
        UdpProxyStats {
            downstream_sess_total: c("downstream_sess_total"),
            downstream_sess_active: s.gauge("downstream_sess_active", ImportMode::Accumulate),
            downstream_sess_no_route: c("downstream_sess_no_route"),
            downstream_sess_rx_bytes: c("downstream_sess_rx_bytes"),
            downstream_sess_rx_datagrams: c("downstream_sess_rx_datagrams"),
            downstream_sess_rx_errors: c("downstream_sess_rx_errors"),
            downstream_sess_tx_bytes: c("downstream_sess_tx_bytes"),
            downstream_sess_tx_datagrams: c("downstream_sess_tx_datagrams"),
            downstream_sess_tx_errors: c("downstream_sess_tx_errors"),
            idle_timeout: c("idle_timeout"),
        }
    }
}

/// What a UDP session counts in its cluster's scope: `cluster.<name>.udp.*` and the byte
/// totals Envoy shares with TCP (`upstream_cx_{rx,tx}_bytes_total`). Envoy counts no
/// `upstream_cx_total` for UDP sessions.
#[derive(Debug)]
pub struct UdpClusterStats {
    pub sess_rx_datagrams: Counter,
    pub sess_rx_datagrams_dropped: Counter,
    pub sess_rx_errors: Counter,
    pub sess_tx_datagrams: Counter,
    pub sess_tx_errors: Counter,
    pub upstream_cx_rx_bytes_total: Counter,
    pub upstream_cx_tx_bytes_total: Counter,
}

impl UdpClusterStats {
    /// `cluster`: the cluster's scope (`cluster.<name>.`). Envoy registers these once a
    /// udp_proxy uses the cluster.
    pub fn new(cluster: &Scope) -> Self {
        let s = cluster.scope("udp.");
        for name in [
            "sess_tunnel_buffer_overflow",
            "sess_tunnel_failure",
            "sess_tunnel_success",
        ] {
            s.counter(name);
        }
        UdpClusterStats {
            sess_rx_datagrams: s.counter("sess_rx_datagrams"),
            sess_rx_datagrams_dropped: s.counter("sess_rx_datagrams_dropped"),
            sess_rx_errors: s.counter("sess_rx_errors"),
            sess_tx_datagrams: s.counter("sess_tx_datagrams"),
            sess_tx_errors: s.counter("sess_tx_errors"),
            upstream_cx_rx_bytes_total: cluster.counter("upstream_cx_rx_bytes_total"),
            upstream_cx_tx_bytes_total: cluster.counter("upstream_cx_tx_bytes_total"),
        }
    }
}

/// Why a datagram found no upstream.
#[derive(Debug, PartialEq, Eq)]
pub enum NoUpstream {
    /// The route's cluster does not exist (`downstream_sess_no_route`).
    NoCluster,
    /// The cluster has no host to pick (the implementation counts
    /// `upstream_cx_none_healthy`).
    NoHost,
    /// The cluster's `max_connections` are taken (the implementation counts
    /// `upstream_cx_overflow`).
    Overflow,
}

/// The upstream of a new session.
pub struct SessionUpstream {
    pub host: SocketAddr,
    pub stats: Arc<UdpClusterStats>,
    /// The session's hold on one of the cluster's connections (`max_connections`), as Envoy
    /// counts a UDP session; released when the session ends.
    pub slot: Box<dyn Send + Sync>,
}

/// The clusters, as the UDP proxy needs them.
pub trait UdpUpstreams: Send + Sync + 'static {
    /// The host of a new session from `downstream`, on `cluster`, with the cluster's stats;
    /// `hash` is the proxy's hash policy, which a hashing load balancer uses.
    fn session_host(
        &self,
        cluster: &str,
        downstream: SocketAddr,
        hash: Option<&UdpHashPolicy>,
    ) -> Result<SessionUpstream, NoUpstream>;
}

/// A UDP listener's proxy as its workers run it.
pub struct UdpProxy {
    pub config: UdpListenerConfig,
    pub stats: UdpProxyStats,
    /// `listener.<prefix>.udp.downstream_rx_datagram_dropped`.
    pub datagrams_dropped: Counter,
    pub upstreams: Arc<dyn UdpUpstreams>,
    /// `access_log`, compiled, and the runtime their filters read.
    pub access_logs: Vec<AccessLogger>,
    pub runtime: Arc<Runtime>,
}

struct Session {
    id: u64,
    /// The session's upstream socket, to send on (the relay task receives on it).
    /// The session's socket, also read by its relay (a plain handle: see `connect`).
    sender: Arc<std::net::UdpSocket>,
    cluster: Arc<UdpClusterStats>,
    /// The last datagram either way, in nanoseconds after the loop's start.
    last_active: Arc<AtomicU64>,
    relay: tokio::task::JoinHandle<()>,
    /// For the access log: what is known of the session from its start (only with logs).
    info: Option<Box<StreamInfo>>,
    /// Bytes from the client, and (counted by the relay) to it.
    rx_bytes: u64,
    tx_bytes: Arc<AtomicU64>,
    /// The cluster connection it holds (released with the session).
    _slot: Box<dyn Send + Sync>,
}

impl Drop for Session {
    /// A session dropped without `close` (its proxy's task ending some other way) still stops
    /// its relay, which would otherwise keep the upstream socket open.
    fn drop(&mut self) {
        self.relay.abort();
    }
}

thread_local! {
    /// The receive buffer the sessions of one worker share: a session reads and forwards
    /// without waiting in between, so one buffer serves them all.
    static SESSION_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl UdpProxy {
    /// Serves one worker's socket of the listener until `stop` turns true; then its sessions
    /// end.
    pub async fn serve(
        self: Arc<Self>,
        socket: std::net::UdpSocket,
        mut stop: watch::Receiver<bool>,
    ) {
        // Datagrams go out on plain non-blocking sends (a full buffer drops the datagram, as
        // UDP would): tokio's `try_send` refuses until the reactor has seen the socket
        // writable, which a new session's socket has not.
        let (socket, sender) = match socket
            .try_clone()
            .and_then(|sender| Ok((UdpSocket::from_std(socket)?, Arc::new(sender))))
        {
            Ok(pair) => pair,
            Err(e) => {
                tracing::error!(
                    "udp_proxy {}: cannot use the listener socket: {e}",
                    self.config.proxy.stat_prefix
                );
                return;
            }
        };
        let start = Instant::now();
        let local = socket.local_addr().ok();
        let mut buffer = vec![0u8; self.config.downstream.buffer_len()];
        let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
        // (when to look at the session's idle time again, its address, its id): one entry per
        // session, moved later on activity when it comes due.
        let mut timers: BinaryHeap<Reverse<(Instant, SocketAddr, u64)>> = BinaryHeap::new();
        let mut next_id = 0u64;
        let idle = self.config.proxy.idle_timeout;
        loop {
            let next_timer = timers.peek().map(|Reverse((at, _, _))| *at);
            let received = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                _ = sleep_until(next_timer) => {
                    self.expire(&mut sessions, &mut timers, start);
                    continue;
                }
                r = socket.recv_from(&mut buffer) => r,
            };
            let (len, peer) = match received {
                Ok(r) => r,
                Err(e) => {
                    self.stats.downstream_sess_rx_errors.inc();
                    tracing::debug!(
                        "udp_proxy {}: receive failed: {e}",
                        self.config.proxy.stat_prefix
                    );
                    continue;
                }
            };
            if self.config.downstream.too_large(len) {
                self.datagrams_dropped.inc();
                continue;
            }
            let session = match sessions.entry(peer) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(v) => {
                    let Some(session) = self.open(peer, local, &sender, start, next_id) else {
                        continue;
                    };
                    next_id += 1;
                    timers.push(Reverse((Instant::now() + idle, peer, session.id)));
                    v.insert(session)
                }
            };
            session.rx_bytes += len as u64;
            session
                .last_active
                .store(nanos_since(start), Ordering::Relaxed);
            let datagram = &buffer[..len];
            self.stats.downstream_sess_rx_datagrams.inc();
            self.stats.downstream_sess_rx_bytes.add(len as u64);
            // Without waiting: a full socket buffer drops the datagram, as UDP would.
            match session.sender.send(datagram) {
                Ok(_) => {
                    session.cluster.sess_tx_datagrams.inc();
                    session.cluster.upstream_cx_tx_bytes_total.add(len as u64);
                }
                Err(e) => {
                    session.cluster.sess_tx_errors.inc();
                    tracing::debug!("udp_proxy session {} -> upstream: {e}", peer);
                }
            }
        }
        for (_, session) in sessions.drain() {
            self.close(session);
        }
    }

    /// Opens the session of a new client: its host and its connected upstream socket.
    fn open(
        &self,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        downstream: &Arc<std::net::UdpSocket>,
        start: Instant,
        id: u64,
    ) -> Option<Session> {
        let upstream = match self.upstreams.session_host(
            &self.config.proxy.cluster,
            peer,
            self.config.proxy.hash_policy.as_ref(),
        ) {
            Ok(u) => u,
            Err(NoUpstream::NoCluster) => {
                self.stats.downstream_sess_no_route.inc();
                return None;
            }
            Err(NoUpstream::NoHost) => return None,
            // Envoy makes the session, counts it, and drops it when no connection is free.
            Err(NoUpstream::Overflow) => {
                self.stats.downstream_sess_total.inc();
                return None;
            }
        };
        let SessionUpstream {
            host,
            stats: cluster,
            slot,
        } = upstream;
        let (upstream, sender) = match connect(host) {
            Ok(pair) => pair,
            Err(e) => {
                cluster.sess_tx_errors.inc();
                tracing::debug!("udp_proxy session {peer}: cannot open a socket to {host}: {e}");
                return None;
            }
        };
        self.stats.downstream_sess_total.inc();
        self.stats.downstream_sess_active.inc();
        let last_active = Arc::new(AtomicU64::new(nanos_since(start)));
        let tx_bytes = Arc::new(AtomicU64::new(0));
        // What Envoy's UDP session log shows: the addresses on both sides; no cluster
        // (`%UPSTREAM_CLUSTER%` is `-`) and connection id 0, as Envoy 1.40 prints them.
        let info = (!self.access_logs.is_empty()).then(|| {
            let mut info = StreamInfo::new(0);
            info.protocol = Protocol::Tcp;
            info.downstream_remote_address = Some(peer);
            info.downstream_direct_remote_address = Some(peer);
            info.downstream_local_address = local;
            info.upstream_host = Some(host);
            info.upstream_local_address = sender.local_addr().ok();
            Box::new(info)
        });
        let relay = tokio::spawn(relay_upstream(
            upstream,
            sender.clone(),
            downstream.clone(),
            peer,
            self.config.proxy.upstream,
            cluster.clone(),
            StatsHandle {
                tx_bytes: self.stats.downstream_sess_tx_bytes.clone(),
                tx_datagrams: self.stats.downstream_sess_tx_datagrams.clone(),
                tx_errors: self.stats.downstream_sess_tx_errors.clone(),
            },
            last_active.clone(),
            tx_bytes.clone(),
            start,
        ));
        Some(Session {
            id,
            sender,
            cluster,
            last_active,
            relay,
            info,
            rx_bytes: 0,
            tx_bytes,
            _slot: slot,
        })
    }

    /// Ends the sessions idle for `idle_timeout`; moves the timers of the others.
    fn expire(
        &self,
        sessions: &mut HashMap<SocketAddr, Session>,
        timers: &mut BinaryHeap<Reverse<(Instant, SocketAddr, u64)>>,
        start: Instant,
    ) {
        let now = Instant::now();
        let idle = self.config.proxy.idle_timeout;
        while let Some(Reverse((at, peer, id))) = timers.peek().copied() {
            if at > now {
                break;
            }
            timers.pop();
            let Some(session) = sessions.get(&peer).filter(|s| s.id == id) else {
                continue;
            };
            let last = start + Duration::from_nanos(session.last_active.load(Ordering::Relaxed));
            let due = last + idle;
            if due > now {
                timers.push(Reverse((due, peer, id)));
                continue;
            }
            if let Some(session) = sessions.remove(&peer) {
                self.stats.idle_timeout.inc();
                self.close(session);
            }
        }
    }

    fn close(&self, mut session: Session) {
        session.relay.abort();
        self.stats.downstream_sess_active.dec();
        if let Some(mut info) = session.info.take() {
            info.bytes_received = session.rx_bytes;
            info.bytes_sent = session.tx_bytes.load(Ordering::Relaxed);
            info.duration = Some(info.elapsed());
            let runtime = self.runtime.snapshot();
            for log in &self.access_logs {
                log.log(&info, &runtime);
            }
        }
    }
}

/// The downstream counters a session's relay updates.
struct StatsHandle {
    tx_bytes: Counter,
    tx_datagrams: Counter,
    tx_errors: Counter,
}

/// Relays what the session's host sends back to the client, until the session ends (the
/// task is aborted).
#[allow(clippy::too_many_arguments)]
async fn relay_upstream(
    upstream: UdpSocket,
    receiver: Arc<std::net::UdpSocket>,
    downstream: Arc<std::net::UdpSocket>,
    peer: SocketAddr,
    receive: UdpReceive,
    cluster: Arc<UdpClusterStats>,
    stats: StatsHandle,
    last_active: Arc<AtomicU64>,
    tx_bytes: Arc<AtomicU64>,
    start: Instant,
) {
    // Woken by a datagram or by an error: an ICMP error (port unreachable) on the connected
    // socket is reported by the next receive, which Envoy counts in `sess_rx_errors` (the
    // session stays). `tokio`'s own `try_recv` would not run on error readiness alone, so the
    // receive is a plain one on a duplicate of the socket; `async_io` waits again on
    // `WouldBlock`.
    let interest = Interest::READABLE | Interest::ERROR;
    loop {
        let received = upstream
            .async_io(interest, || {
                SESSION_BUFFER.with_borrow_mut(|buffer| {
                    if buffer.len() < receive.buffer_len() {
                        buffer.resize(receive.buffer_len(), 0);
                    }
                    let buffer = &mut buffer[..receive.buffer_len()];
                    let len = receiver.recv(buffer)?;
                    if receive.too_large(len) {
                        cluster.sess_rx_datagrams_dropped.inc();
                        return Ok(());
                    }
                    last_active.store(nanos_since(start), Ordering::Relaxed);
                    cluster.sess_rx_datagrams.inc();
                    cluster.upstream_cx_rx_bytes_total.add(len as u64);
                    match downstream.send_to(&buffer[..len], peer) {
                        Ok(_) => {
                            stats.tx_datagrams.inc();
                            stats.tx_bytes.add(len as u64);
                            tx_bytes.fetch_add(len as u64, Ordering::Relaxed);
                        }
                        Err(e) => {
                            stats.tx_errors.inc();
                            tracing::debug!("udp_proxy session {peer}: send to the client: {e}");
                        }
                    }
                    Ok(())
                })
            })
            .await;
        if let Err(e) = received {
            cluster.sess_rx_errors.inc();
            tracing::debug!("udp_proxy session {peer}: upstream receive: {e}");
        }
    }
}

/// A socket on an ephemeral port, connected to `host`: only `host`'s datagrams reach it.
/// Two handles on it: tokio's, for readiness, and a plain one the session sends on and its
/// relay receives on (a send must not wait for tokio to have seen the socket writable, and a
/// receive must also run on error readiness alone).
fn connect(host: SocketAddr) -> io::Result<(UdpSocket, Arc<std::net::UdpSocket>)> {
    let local: SocketAddr = if host.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(local)?;
    socket.connect(host)?;
    socket.set_nonblocking(true)?;
    let plain = Arc::new(socket.try_clone()?);
    Ok((UdpSocket::from_std(socket)?, plain))
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn nanos_since(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

/// Whether a compiled listener filter list holds the UDP proxy (a TCP listener must not).
pub fn is_udp_proxy_type(type_url: &str) -> bool {
    legate_api::any::type_name(type_url) == UDP_PROXY_TYPE
}

/// The error for a UDP proxy on a TCP listener.
pub fn on_tcp_listener_error(path: &str) -> ConfigError {
    ConfigError::new(
        path,
        format!("{UDP_PROXY} needs a UDP listener (address.socket_address.protocol: UDP)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_limits_follow_envoy_defaults() {
        let down = UdpReceive::compile(None, false);
        assert_eq!(down.max_rx_datagram_size, 1500);
        assert!(!down.gro);
        assert_eq!(down.buffer_len(), 1501);
        assert!(down.too_large(1501) && !down.too_large(1500));
        let up = UdpReceive::compile(None, true);
        assert!(up.gro && !up.too_large(65_000));
    }
}
