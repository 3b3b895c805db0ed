//! A worker: one thread with its own single-threaded runtime, accepting on its own socket of
//! every listener and serving those connections to the end. Workers share nothing on the
//! request path but atomics (stats, host load), as Envoy's workers do.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use legate_core::io::Transport;
use legate_core::lifecycle::{self, Phase};
use legate_core::stats::{Counter, Gauge, Histogram, ImportMode, Store, Unit};
use legate_http::conn_manager::Downstream;
use legate_net::filter_chain::ConnectionFacts;
use legate_net::listener::ListenerConfig;
use legate_net::listener_filter::{Detected, ListenerFilterStats};
use tokio::sync::{mpsc, watch};

use legate_core::tls::SslStats;
use legate_net::tls::HandshakeError;

use legate_net::rbac::{Connection as RbacConnection, NetworkRbac};

use super::l4::{ChainFilter, Conn};
use crate::config::NetworkFilter;

/// `listener.<stat_prefix>.*` stats.
#[derive(Debug)]
pub struct ListenerStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub downstream_cx_destroy: Counter,
    pub downstream_cx_length_ms: Histogram,
    pub no_filter_chain_match: Counter,
    pub downstream_cx_transport_socket_connect_timeout: Counter,
    /// `listener.<prefix>.worker_<n>.downstream_cx_{total,active}`, by worker index.
    per_worker: Vec<(Counter, Gauge)>,
}

impl ListenerStats {
    pub fn new(store: &std::sync::Arc<Store>, stat_prefix: &str, workers: usize) -> Self {
        let scope = store.scope(&format!("listener.{stat_prefix}."));
        let per_worker = (0..workers)
            .map(|w| {
                let s = scope.scope(&format!("worker_{w}."));
                (
                    s.counter("downstream_cx_total"),
                    s.gauge("downstream_cx_active", ImportMode::Accumulate),
                )
            })
            .collect();
        for name in [
            "downstream_cx_overflow",
            "downstream_cx_overload_reject",
            "downstream_global_cx_overflow",
            "downstream_pre_cx_timeout",
            "downstream_listener_filter_remote_close",
            "downstream_listener_filter_error",
            "extension_config_missing",
            "network_extension_config_missing",
        ] {
            scope.counter(name);
        }
        scope.gauge("downstream_pre_cx_active", ImportMode::Accumulate);
        ListenerStats {
            downstream_cx_total: scope.counter("downstream_cx_total"),
            downstream_cx_active: scope.gauge("downstream_cx_active", ImportMode::Accumulate),
            downstream_cx_destroy: scope.counter("downstream_cx_destroy"),
            downstream_cx_length_ms: scope.histogram("downstream_cx_length_ms", Unit::Milliseconds),
            no_filter_chain_match: scope.counter("no_filter_chain_match"),
            downstream_cx_transport_socket_connect_timeout: scope
                .counter("downstream_cx_transport_socket_connect_timeout"),
            per_worker,
        }
    }
}

/// The life of one version of a listener on every worker: accepting, then (replaced,
/// removed or shutting down) not accepting and draining its connections, then closing what is
/// left when the drain time is over.
#[derive(Debug, Default)]
pub struct ListenerInstance {
    stop: watch::Sender<bool>,
    /// Drain, then close: what the connections are told.
    phase: watch::Sender<Phase>,
    /// Connections accepted by this version and still open.
    open: AtomicUsize,
}

impl ListenerInstance {
    /// Stops accepting; with `drain`, open connections close gracefully too (HTTP/1.1 with
    /// `connection: close` on their next response, HTTP/2 with GOAWAY).
    pub fn stop(&self, drain: bool) {
        self.stop.send_replace(true);
        if drain {
            lifecycle::advance(&self.phase, Phase::Draining);
        }
    }

    /// Closes the connections still open.
    pub fn close(&self) {
        lifecycle::advance(&self.phase, Phase::Closing);
    }

    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// What the control thread asks a worker to do.
pub enum WorkerCommand {
    /// Accept on `socket` (this worker's own) for `instance` until it stops.
    Listen {
        socket: super::listener::ListenSocket,
        serving: Arc<ServingListener>,
        instance: Arc<ListenerInstance>,
    },
    /// Serve the UDP proxy on `socket` (this worker's own) for `instance` until it stops.
    ListenUdp {
        socket: std::net::UdpSocket,
        proxy: Arc<legate_net::udp_proxy::UdpProxy>,
        instance: Arc<ListenerInstance>,
    },
}

/// What every worker shares of a listener: its compiled config (chain matching, listener
/// filters), the running filter of each chain, and its stats.
pub struct ServingListener {
    pub config: ListenerConfig<NetworkFilter>,
    /// One per `config.filter_chains`.
    pub chains: Vec<ChainFilter>,
    /// The RBAC filters of each chain, which a connection must pass first.
    pub rbac: Vec<Vec<NetworkRbac>>,
    pub stats: ListenerStats,
    pub filter_stats: ListenerFilterStats,
    /// `listener.<prefix>.ssl.*`, when a chain terminates TLS.
    pub ssl: Option<SslStats>,
}

impl ServingListener {
    /// The chain of every connection (and its name, if any) when no listener filter runs and
    /// one chain takes all: the accept path then goes straight to it, as before filter chains
    /// existed.
    fn fast_chain(&self) -> Option<(&ChainFilter, Option<&Arc<str>>)> {
        if self.config.listener_filters.is_empty() {
            self.config
                .only_chain
                .filter(|&i| self.config.filter_chains[i].tls.is_none() && self.rbac[i].is_empty())
                .map(|i| {
                    let name = &self.config.filter_chains[i].name;
                    (&self.chains[i], (!name.is_empty()).then_some(name))
                })
        } else {
            None
        }
    }
}

/// What all workers share: connection ids and the count of open connections (for the
/// shutdown drain).
pub struct WorkerShared {
    pub next_connection_id: AtomicU64,
    pub open_connections: AtomicUsize,
    pub total_connections: Counter,
}

/// Starts worker `index` on its own thread; it serves the listeners `commands` give it, and
/// ends when the channel closes and its connections are gone.
pub fn spawn(
    index: usize,
    commands: mpsc::UnboundedReceiver<WorkerCommand>,
    shared: Arc<WorkerShared>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("wrk:worker_{index}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("worker {index}: cannot start its runtime: {e}");
                    return;
                }
            };
            WORKER_INDEX.set(index);
            runtime.block_on(run(index, commands, shared));
        })
}

async fn run(
    index: usize,
    mut commands: mpsc::UnboundedReceiver<WorkerCommand>,
    shared: Arc<WorkerShared>,
) {
    tokio::spawn(keep_the_timer_awake());
    while let Some(command) = commands.recv().await {
        match command {
            WorkerCommand::Listen {
                socket,
                serving,
                instance,
            } => match Acceptor::from_std(socket) {
                Ok(listener) => {
                    tokio::spawn(accept_loop(
                        index,
                        listener,
                        serving,
                        instance,
                        shared.clone(),
                    ));
                }
                Err(e) => tracing::error!("worker {index}: cannot use a listener socket: {e}"),
            },
            WorkerCommand::ListenUdp {
                socket,
                proxy,
                instance,
            } => {
                // The sessions end with the listener: nothing to drain, so `instance.open`
                // stays 0.
                tokio::spawn(proxy.serve(socket, instance.stop.subscribe()));
            }
        }
    }
    // The control side is gone: stay until this worker's connections are gone.
    while shared.open_connections.load(Ordering::Relaxed) > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Keeps the runtime's next timer wake-up at most [`TIMER_HORIZON`] away.
///
/// tokio's time driver writes to its runtime's eventfd whenever a timer is set to fire before
/// the driver's next planned wake-up — also on the runtime's own thread, which is not parked —
/// and the next `epoll_wait` then returns at once for it. With nothing else due soon, every
/// request's timers (its route timeout, 15 s by default, among them) were the earliest: about
/// one eventfd write per request at a light load (`strace -c` at 1,000 requests/s: 4,075 for
/// 4,000). With a timer always due within a second, timeouts of a second or more are later
/// than the next wake-up and set without one (51 writes).
async fn keep_the_timer_awake() {
    let mut tick = tokio::time::interval(TIMER_HORIZON);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

const TIMER_HORIZON: Duration = Duration::from_secs(1);

/// A listener socket on a worker's runtime: TCP, or a unix domain socket (`pipe`).
enum Acceptor {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Acceptor {
    fn from_std(socket: super::listener::ListenSocket) -> std::io::Result<Self> {
        Ok(match socket {
            super::listener::ListenSocket::Tcp(s) => {
                Acceptor::Tcp(tokio::net::TcpListener::from_std(s)?)
            }
            super::listener::ListenSocket::Unix(s) => {
                Acceptor::Unix(tokio::net::UnixListener::from_std(s)?)
            }
        })
    }

    fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Acceptor::Tcp(l) => l.local_addr().ok(),
            Acceptor::Unix(_) => None,
        }
    }

    /// The next connection and its peer. A unix domain socket's peer has no IP address: it
    /// gets the unspecified one, and the connection's `pipe` says what it is.
    async fn accept(&self) -> std::io::Result<(Conn, std::net::SocketAddr)> {
        match self {
            Acceptor::Tcp(l) => l.accept().await.map(|(s, peer)| (Conn::Plain(s), peer)),
            Acceptor::Unix(l) => l.accept().await.map(|(s, _)| {
                (
                    Conn::Unix(s),
                    std::net::SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0),
                )
            }),
        }
    }
}

async fn accept_loop(
    worker: usize,
    listener: Acceptor,
    serving: Arc<ServingListener>,
    instance: Arc<ListenerInstance>,
    shared: Arc<WorkerShared>,
) {
    let mut stop = instance.stop.subscribe();
    let phase = instance.phase.subscribe();
    let local = listener.local_addr();
    // A connection to a listener bound to one address has that address as its own (Legate
    // has no transparent listeners), so it needs no getsockname(2); one to a wildcard
    // listener asks the kernel which address it came to, as Envoy does.
    let fixed_local = local.filter(|a| !a.ip().is_unspecified());
    let pipe: Option<Arc<str>> = serving
        .config
        .pipe
        .as_ref()
        .map(|p| Arc::from(p.path.as_str()));
    if let Some(address) = local {
        LISTENING.with_borrow_mut(|l| {
            l.push(Listening {
                address,
                serving: serving.clone(),
                instance: instance.clone(),
            })
        });
    }
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("worker {worker}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let id = shared.next_connection_id.fetch_add(1, Ordering::Relaxed);
        shared.open_connections.fetch_add(1, Ordering::Relaxed);
        instance.open.fetch_add(1, Ordering::Relaxed);
        let downstream = Downstream {
            id,
            peer,
            direct_peer: peer,
            local: fixed_local
                .or_else(|| stream.tcp().and_then(|s| s.local_addr().ok()))
                .or(local)
                .unwrap_or(peer),
            local_restored: false,
            direct_local: None,
            filter_chain_name: None,
            worker: worker as u32,
            tls: false,
            requested_server_name: None,
            tls_info: None,
            tls_fingerprints: None,
            dynamic_metadata: None,
            pipe: pipe.clone(),
            proxied: false,
            proxy_tlvs: None,
        };
        let serving = serving.clone();
        let shared = shared.clone();
        let instance = instance.clone();
        let phase = phase.clone();
        if let Some((ChainFilter::Http(hcm), name)) = serving.fast_chain() {
            // The plain HTTP listener: no inspection, no matching.
            established(&serving.stats, &shared);
            let mut downstream = downstream;
            downstream.filter_chain_name = name.cloned();
            // The task captures the connection's future built here, not its parts: an `async`
            // block keeps what it captures for its whole life. The connection manager closes
            // the connection itself when the listener closes.
            let mut serve = hcm.clone().serve(stream, Box::new(downstream), phase);
            tokio::spawn(async move {
                let opened = Instant::now();
                // SAFETY: `serve` lives in this task's future, which the runtime keeps pinned,
                // and is never moved again (the name is shadowed). `pin!` would move it into a
                // second copy of its whole size.
                let serve = unsafe { std::pin::Pin::new_unchecked(&mut serve) };
                serve.await;
                closed(&serving.stats, opened);
                shared.open_connections.fetch_sub(1, Ordering::Relaxed);
                instance.open.fetch_sub(1, Ordering::Relaxed);
            });
        } else {
            // Boxed before the task captures it: an `async` block keeps what it captures.
            let downstream = Box::new(downstream);
            tokio::spawn(async move {
                serve_matched(
                    stream, downstream, &serving, &shared, &instance, phase, true,
                )
                .await;
                shared.open_connections.fetch_sub(1, Ordering::Relaxed);
                instance.open.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }
    LISTENING.with_borrow_mut(|l| l.retain(|l| !Arc::ptr_eq(&l.instance, &instance)));
}

/// Runs `serving` until it ends or the listener instance closes its connections (for the
/// filters that do not watch the listener's phase themselves; the connection manager does,
/// and is polled first so that it closes with its accounting). The caller pins the future
/// where it lives: taken by value, it would be held twice in the connection's task (as the
/// argument, and moved into `select!`), doubling the memory of every connection.
async fn until_closed<F: std::future::Future<Output = ()>>(
    instance: &ListenerInstance,
    serving: std::pin::Pin<&mut F>,
) {
    let mut phase = instance.phase.subscribe();
    tokio::select! {
        biased;
        _ = serving => {}
        _ = phase.wait_for(|p| *p == Phase::Closing) => {}
    }
}

thread_local! {
    /// This worker thread's index, for the per-worker listener stats.
    static WORKER_INDEX: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// The listeners this worker accepts on now, by bound address: where `use_original_dst`
    /// hands connections.
    static LISTENING: std::cell::RefCell<Vec<Listening>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A listener a worker accepts on.
struct Listening {
    address: std::net::SocketAddr,
    serving: Arc<ServingListener>,
    instance: Arc<ListenerInstance>,
}

/// The listener `use_original_dst` hands a connection restored to `destination` to (Envoy's
/// `getBalancedHandlerByAddress`): the one bound to exactly that address, else the one bound
/// to the wildcard address of its family on its port. Stopped listeners are not candidates.
fn listener_for(
    destination: std::net::SocketAddr,
) -> Option<(Arc<ServingListener>, Arc<ListenerInstance>)> {
    let wildcard = std::net::SocketAddr::new(
        if destination.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        },
        destination.port(),
    );
    LISTENING.with_borrow(|listening| {
        let live = |want: std::net::SocketAddr| {
            listening
                .iter()
                .find(|l| l.address == want && !*l.instance.stop.borrow())
        };
        live(destination)
            .or_else(|| live(wildcard))
            .map(|l| (l.serving.clone(), l.instance.clone()))
    })
}

/// Counts a connection that got its filter chain. Envoy counts `downstream_cx_total` only
/// then: connections closed by listener filters or without a matching chain are not counted.
fn established(stats: &ListenerStats, shared: &WorkerShared) {
    shared.total_connections.inc();
    stats.downstream_cx_total.inc();
    stats.downstream_cx_active.inc();
    if let Some((total, active)) = stats.per_worker.get(WORKER_INDEX.get()) {
        total.inc();
        active.inc();
    }
}

fn closed(stats: &ListenerStats, opened: Instant) {
    stats.downstream_cx_active.dec();
    if let Some((_, active)) = stats.per_worker.get(WORKER_INDEX.get()) {
        active.dec();
    }
    stats.downstream_cx_destroy.inc();
    stats
        .downstream_cx_length_ms
        .record(opened.elapsed().as_millis() as u64);
}

/// Runs the listener filters, matches a filter chain and serves the connection with it.
/// `hand_off`: `use_original_dst` may give the connection to another listener (not once it
/// has been handed, as in Envoy).
async fn serve_matched(
    stream: Conn,
    mut downstream: Box<Downstream>,
    serving: &ServingListener,
    shared: &Arc<WorkerShared>,
    instance: &ListenerInstance,
    phase: watch::Receiver<Phase>,
    hand_off: bool,
) {
    // What the matching needed is gone by the time the chain serves: the connection's task
    // keeps only what lives across that last await, for the connection's whole life.
    let (chain, conn, server_name, opened) =
        match prepare(stream, &mut downstream, serving, shared, hand_off).await {
            Prepared::Serve {
                chain,
                conn,
                server_name,
                opened,
            } => (chain, conn, server_name, opened),
            Prepared::Ended(Some(opened)) => {
                closed(&serving.stats, opened);
                return;
            }
            Prepared::Ended(None) => return,
            Prepared::HandOff(stream, target, target_instance) => {
                let phase = target_instance.phase.subscribe();
                target_instance.open.fetch_add(1, Ordering::Relaxed);
                Box::pin(serve_matched(
                    stream,
                    downstream,
                    &target,
                    shared,
                    &target_instance,
                    phase,
                    false,
                ))
                .await;
                target_instance.open.fetch_sub(1, Ordering::Relaxed);
                return;
            }
        };
    let serve = std::pin::pin!(serving.chains[chain].serve(conn, downstream, &server_name, phase));
    until_closed(instance, serve).await;
    closed(&serving.stats, opened);
}

/// What [`prepare`] made of a new connection.
enum Prepared {
    /// Serve it with filter chain `chain`; the connection was counted as established at
    /// `opened`.
    Serve {
        chain: usize,
        conn: Conn,
        /// The SNI: the tls_inspector's, or the terminated handshake's (empty if none).
        server_name: String,
        opened: Instant,
    },
    /// `use_original_dst`: the listener of the original destination serves it.
    HandOff(Conn, Arc<ServingListener>, Arc<ListenerInstance>),
    /// Closed: before a chain was chosen (`None`), or after (the time it was established).
    Ended(Option<Instant>),
}

/// The listener filters, the `use_original_dst` hand-off, filter chain matching, the TLS
/// handshake and network RBAC: everything before a connection's chain serves it.
async fn prepare(
    stream: Conn,
    downstream: &mut Downstream,
    serving: &ServingListener,
    shared: &Arc<WorkerShared>,
    hand_off: bool,
) -> Prepared {
    let config = &serving.config;
    let filters = &config.listener_filters;
    let detected = if filters.is_empty() {
        Detected::default()
    } else {
        // Boxed, as the handshake below: a connection's task keeps only what lives for the
        // whole connection.
        let ran = match &stream {
            Conn::Plain(tcp) => Box::pin(filters.run(tcp, &serving.filter_stats)).await,
            Conn::Unix(unix) => Box::pin(filters.run(unix, &serving.filter_stats)).await,
            // TLS is terminated after the filters.
            Conn::Tls(_) => Ok(Detected::default()),
        };
        match ran {
            Ok(d) => d,
            Err(why) => {
                tracing::debug!(
                    "connection {} from {}: closed by the listener filters ({why:?})",
                    downstream.id,
                    downstream.peer
                );
                return Prepared::Ended(None);
            }
        }
    };
    // A PROXY header gives the connection its original addresses; the direct peer (the
    // proxy in front) stays for `direct_source_prefix_ranges` and the logs.
    if let Some((source, _)) = detected.proxied {
        downstream.peer = source;
        downstream.proxied = true;
        if !detected.proxy_tlvs.is_empty() {
            downstream.proxy_tlvs = Some(Arc::new(detected.proxy_tlvs.clone()));
        }
    }
    downstream.tls_fingerprints = detected.fingerprints.clone();
    downstream.dynamic_metadata = detected.metadata.clone();
    if let Some(local) = detected.restored_local {
        downstream.direct_local = Some(downstream.local);
        downstream.local = local;
        downstream.local_restored = true;
    }
    // `use_original_dst`: a restored connection goes to the listener of its original
    // destination when there is one (which runs its own listener filters and chain
    // matching); otherwise this listener serves it.
    if hand_off && config.use_original_dst && downstream.local_restored {
        if let Some((target, target_instance)) = listener_for(downstream.local) {
            tracing::debug!(
                "connection {} to {}: handed to listener '{}'",
                downstream.id,
                downstream.local,
                target.config.name
            );
            return Prepared::HandOff(stream, target, target_instance);
        }
    }
    let facts = ConnectionFacts {
        local: downstream.local_address(),
        remote: downstream.remote_address(),
        direct_remote: downstream.direct_remote_address(),
        server_name: &detected.server_name,
        transport_protocol: detected.transport_protocol(),
        application_protocols: &detected.application_protocols,
    };
    let Some(chain) = config.select(&facts) else {
        serving.stats.no_filter_chain_match.inc();
        tracing::debug!(
            "connection {} from {}: no filter chain matches (server name '{}', transport {}, application protocols {:?})",
            downstream.id,
            downstream.peer,
            detected.server_name,
            detected.transport_protocol(),
            detected.application_protocols
        );
        return Prepared::Ended(None);
    };
    established(&serving.stats, shared);
    let opened = Instant::now();
    let fc = &config.filter_chains[chain];
    if !fc.name.is_empty() {
        downstream.filter_chain_name = Some(fc.name.clone());
    }
    let conn = match (&fc.tls, &serving.ssl) {
        (Some(tls), Some(ssl)) => {
            let socket = match stream {
                Conn::Plain(tcp) => Transport::Tcp(tcp),
                Conn::Unix(unix) => Transport::Unix(unix),
                // Nothing terminates TLS before the chain is chosen.
                Conn::Tls(_) => return Prepared::Ended(Some(opened)),
            };
            let addresses = (downstream.local_address(), downstream.remote_address());
            let handshake = tls.accept(socket, addresses, ssl, fc.transport_socket_connect_timeout);
            match Box::pin(handshake).await {
                Ok((s, tls_info)) => {
                    downstream.tls = true;
                    downstream.tls_info = Some(Arc::new(tls_info));
                    downstream.requested_server_name = s.connection().server_name().map(Arc::from);
                    Conn::Tls(Box::new(s))
                }
                Err(HandshakeError::Timeout) => {
                    serving
                        .stats
                        .downstream_cx_transport_socket_connect_timeout
                        .inc();
                    return Prepared::Ended(Some(opened));
                }
                Err(HandshakeError::Failed(e)) => {
                    tracing::debug!(
                        "connection {} from {}: TLS handshake failed: {e}",
                        downstream.id,
                        downstream.peer
                    );
                    return Prepared::Ended(Some(opened));
                }
            }
        }
        _ => stream,
    };
    // The SNI: the tls_inspector's, or the terminated handshake's.
    let server_name = match &downstream.requested_server_name {
        Some(sni) if detected.server_name.is_empty() => sni.to_string(),
        _ => detected.server_name,
    };
    let denied = rbac_denies(&serving.rbac[chain], downstream, &server_name);
    if denied {
        tracing::debug!(
            "connection {} from {}: denied by RBAC",
            downstream.id,
            downstream.peer
        );
        return Prepared::Ended(Some(opened));
    }
    Prepared::Serve {
        chain,
        conn,
        server_name,
        opened,
    }
}

/// Runs a chain's network RBAC filters on a connection, in order until one denies (as Envoy's
/// filters run); whether one did. The shadow rules' verdicts go into the connection's dynamic
/// metadata, for the access logs.
fn rbac_denies(filters: &[NetworkRbac], downstream: &mut Downstream, server_name: &str) -> bool {
    let connection = RbacConnection {
        remote: downstream.remote_address(),
        direct_remote: downstream.direct_remote_address(),
        local: downstream.local_address(),
        server_name,
        metadata: downstream.dynamic_metadata.as_deref(),
    };
    let mut verdicts = Vec::new();
    for filter in filters {
        let verdict = filter.check(&connection);
        let allowed = verdict.allowed;
        verdicts.push(verdict);
        if !allowed {
            break;
        }
    }
    if verdicts.iter().any(|v| v.has_metadata()) {
        let metadata = Arc::make_mut(downstream.dynamic_metadata.get_or_insert_default());
        for (filter, verdict) in filters.iter().zip(&verdicts) {
            filter.record(verdict, metadata);
        }
    }
    verdicts.last().is_some_and(|v| !v.allowed)
}
