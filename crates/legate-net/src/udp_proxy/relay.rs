//! The datagram relay of a UDP listener's worker: sessions per client, their upstream
//! sockets, idle timers and access log lines (the lifecycle is in the module docs of
//! [`super`]).

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use legate_core::access_log::AccessLogger;
use legate_core::runtime::Runtime;
use legate_core::stats::Counter;
use legate_core::stream_info::{AccessLogType, Protocol, StreamInfo};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;

use super::pktinfo;
use super::{UdpClusterStats, UdpHashPolicy, UdpListenerConfig, UdpProxyStats, UdpReceive};

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
    /// Whether `host` is still one of its cluster's hosts: false once EDS removed it or the
    /// cluster went away, and then the session ends (Envoy erases a removed host's sessions).
    pub current: Box<dyn Fn() -> bool + Send + Sync>,
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
    /// See [`SessionUpstream::current`].
    current: Box<dyn Fn() -> bool + Send + Sync>,
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
        // Bound to a wildcard address: learn each datagram's destination, to answer from it.
        let wildcard = local.is_some_and(|l| l.ip().is_unspecified())
            && match pktinfo::enable(socket.as_raw_fd(), local.is_some_and(|l| l.is_ipv6())) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(
                        "udp_proxy {}: replies leave from the kernel's choice of address: {e}",
                        self.config.proxy.stat_prefix
                    );
                    false
                }
            };
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
                r = receive(&socket, &mut buffer, wildcard) => r,
            };
            let (len, peer, destination) = match received {
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
            // A session whose host has left its cluster ends here, and the datagram opens a
            // new one (Envoy ends it when the host is removed; Legate notices at the client's
            // next datagram or the session's next idle check).
            if sessions.get(&peer).is_some_and(|s| !(s.current)())
                && let Some(gone) = sessions.remove(&peer)
            {
                self.close(gone);
            }
            let session = match sessions.entry(peer) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(v) => {
                    let Some(session) =
                        self.open(peer, local, destination, &sender, start, next_id)
                    else {
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
    /// `destination`: the address the client sent to, on a wildcard listener (replies leave
    /// from it).
    #[allow(clippy::too_many_arguments)]
    fn open(
        &self,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        destination: Option<IpAddr>,
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
            current,
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
            // On a wildcard listener, the address the client sent to (as Envoy shows it).
            info.downstream_local_address = match destination {
                Some(ip) => local.map(|l| SocketAddr::new(ip, l.port())),
                None => local,
            };
            info.upstream_host = Some(host);
            info.upstream_local_address = sender.local_addr().ok();
            Box::new(info)
        });
        let relay = tokio::spawn(relay_upstream(
            upstream,
            sender.clone(),
            Reply {
                socket: downstream.clone(),
                to: peer,
                from: destination,
            },
            self.config.proxy.upstream,
            cluster.clone(),
            StatsHandle {
                tx_bytes: self.stats.downstream_sess_tx_bytes,
                tx_datagrams: self.stats.downstream_sess_tx_datagrams,
                tx_errors: self.stats.downstream_sess_tx_errors,
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
            current,
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
            if !(session.current)() {
                if let Some(gone) = sessions.remove(&peer) {
                    self.close(gone);
                }
                continue;
            }
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
            info.access_log_type = AccessLogType::UdpSessionEnd;
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

/// Where a session's replies go: to its client, from the listener's socket — and, on a
/// wildcard listener, from the address the client sent to.
struct Reply {
    socket: Arc<std::net::UdpSocket>,
    to: SocketAddr,
    from: Option<IpAddr>,
}

impl Reply {
    fn send(&self, data: &[u8]) -> io::Result<usize> {
        match self.from {
            Some(from) => pktinfo::send_from(self.socket.as_raw_fd(), data, self.to, from),
            None => self.socket.send_to(data, self.to),
        }
    }
}

/// The next datagram on the listener's socket: its length, its sender, and on a wildcard
/// listener (`pktinfo` enabled) the address it was sent to.
async fn receive(
    socket: &UdpSocket,
    buffer: &mut [u8],
    with_destination: bool,
) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    if with_destination {
        socket
            .async_io(Interest::READABLE, || {
                pktinfo::recv(socket.as_raw_fd(), buffer)
            })
            .await
    } else {
        let (len, peer) = socket.recv_from(buffer).await?;
        Ok((len, peer, None))
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
    reply: Reply,
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
                    match reply.send(&buffer[..len]) {
                        Ok(_) => {
                            stats.tx_datagrams.inc();
                            stats.tx_bytes.add(len as u64);
                            tx_bytes.fetch_add(len as u64, Ordering::Relaxed);
                        }
                        Err(e) => {
                            stats.tx_errors.inc();
                            tracing::debug!(
                                "udp_proxy session {}: send to the client: {e}",
                                reply.to
                            );
                        }
                    }
                    Ok(())
                })
            })
            .await;
        if let Err(e) = received {
            cluster.sess_rx_errors.inc();
            tracing::debug!("udp_proxy session {}: upstream receive: {e}", reply.to);
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
