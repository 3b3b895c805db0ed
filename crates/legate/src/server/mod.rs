//! Serving: turns a compiled [`Config`] into running objects (stats store, runtime, clusters,
//! listeners bound on every worker, the admin server), then runs the process lifecycle:
//!
//! * SIGTERM / SIGINT / `POST /quitquitquit`: stop accepting, close connections gracefully
//!   (HTTP/1.1 after the response in flight, HTTP/2 with GOAWAY), wait for in-flight requests
//!   up to `--drain-time-s`, exit 0. (Envoy exits at once on SIGTERM; its users script a drain
//!   by hand — Legate drains.)
//! * SIGUSR1 / `POST /reopen_logs`: reopen access-log files.
//!
//! The main thread runs the control side (admin, signals, stats flush) on its own runtime, so
//! that a slow admin request never stalls a worker.

pub mod control;
pub mod l4;
pub mod listener;
pub mod listener_manager;
pub mod tcp_proxy;
pub mod udp;
pub mod worker;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use legate_core::runtime::{Layer, Runtime};
use legate_core::stats::{ImportMode, Store};
use legate_http::conn_manager::ProxyContext;
use legate_upstream::ClusterManager;
use tokio::sync::{mpsc, watch};

use crate::config::{Config, RuntimeLayer};
use control::{Control, Reload};
use listener_manager::ListenerManager;
use worker::WorkerShared;

/// How the process was asked to run.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub concurrency: usize,
    pub drain_time: Duration,
    /// For `/server_info` and `/config_dump`.
    pub info: legate_admin::ServerInfo,
}

/// The lifecycle state the admin server and signals change.
pub struct Lifecycle {
    shutdown: watch::Sender<bool>,
    /// Asks the control loop to stop the listeners (`/drain_listeners`): `true` drains their
    /// connections too.
    drain_listeners: mpsc::UnboundedSender<bool>,
    health_check_failed: AtomicBool,
    draining: AtomicBool,
}

impl legate_admin::AdminControl for Lifecycle {
    fn quit(&self) {
        let _ = self.shutdown.send(true);
    }

    fn drain_listeners(&self, options: legate_admin::DrainOptions) {
        // As Envoy's `/drain_listeners`: the listeners stop accepting; connections already
        // open go on being served unless `graceful` drains them too. Readiness is unchanged
        // (only `/healthcheck/fail` turns `/ready` to DRAINING).
        let _ = self.drain_listeners.send(options.graceful);
    }

    fn set_health_check_failed(&self, failed: bool) {
        self.health_check_failed.store(failed, Ordering::Relaxed);
    }

    fn health_check_failed(&self) -> bool {
        self.health_check_failed.load(Ordering::Relaxed)
    }

    fn reopen_logs(&self) {
        legate_core::access_log::reopen_all();
    }

    fn init_state(&self) -> legate_admin::ServerState {
        if self.draining.load(Ordering::Relaxed) {
            legate_admin::ServerState::Draining
        } else {
            legate_admin::ServerState::Live
        }
    }

    fn loggers(&self) -> Vec<(String, legate_admin::LogLevel)> {
        crate::logging::loggers()
            .into_iter()
            .map(|(name, level)| {
                let level =
                    legate_admin::LogLevel::parse(&level).unwrap_or(legate_admin::LogLevel::Info);
                (name, level)
            })
            .collect()
    }

    fn set_log_level(&self, logger: Option<&str>, level: legate_admin::LogLevel) {
        if let Err(e) = crate::logging::set_level(logger, level.as_str()) {
            tracing::warn!("cannot change the log level: {e}");
        }
    }
}

impl Lifecycle {
    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// Builds everything and serves until shutdown. `reload` re-reads the bootstrap on SIGHUP
/// (`None` when it came from the command line).
pub fn run(
    mut config: Config,
    dump: legate_admin::ConfigDumpSource,
    options: ServeOptions,
    reload: Option<Reload>,
) -> Result<(), String> {
    let workers = options.concurrency.max(1);
    let store = Arc::new(Store::new());
    let runtime = Arc::new(Runtime::new(runtime_layers(&config.runtime_layers)));
    let clusters = Arc::new(ClusterManager::new(Vec::new(), &store, workers));
    let context = Arc::new(ProxyContext {
        clusters: clusters.clone(),
        runtime: runtime.clone(),
        store: store.clone(),
        rds: Arc::default(),
    });

    let control_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the control runtime: {e}"))?;
    let server = store.scope("server.");
    let shared = Arc::new(WorkerShared {
        next_connection_id: AtomicU64::new(0),
        open_connections: AtomicUsize::new(0),
        total_connections: server.counter("total_connections"),
    });
    let mut senders = Vec::with_capacity(workers);
    let mut threads = Vec::with_capacity(workers);
    for index in 0..workers {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        threads.push(
            worker::spawn(index, rx, shared.clone())
                .map_err(|e| format!("cannot start worker {index}: {e}"))?,
        );
    }

    // Clusters, then listeners, each bound on every worker before serving anything: a bind
    // failure of a static listener is fatal, as in Envoy ("cannot bind ...").
    let dump = Arc::new(Mutex::new(dump));
    let listener_manager =
        ListenerManager::new(senders, context.clone(), options.drain_time, dump.clone());
    let admin_listeners = listener_manager.admin_listeners();
    // xDS files (LDS, CDS, and the RDS and EDS sources any resource names) are watched.
    let (watcher, mut changes) = match legate_xds::FileWatcher::start() {
        Ok((w, rx)) => (Some(w), Some(rx)),
        Err(e) => {
            tracing::error!("cannot watch configuration files: {e}");
            (None, None)
        }
    };
    let sources = std::mem::take(&mut config.dynamic);
    let mut control = Control::new(
        context.clone(),
        listener_manager,
        dump.clone(),
        watcher.map(|w| (w, sources)),
        reload,
    );
    let admin_config = config.admin.take();
    let sinks = std::mem::take(&mut config.stats_sinks);
    let flush_interval = config.stats_flush_interval;
    control_runtime.block_on(async { control.start(config) })?;
    if !control.watches_files() {
        shed_startup_memory();
    }

    let admin_listener = match admin_config.as_ref().and_then(|a| a.address.as_ref()) {
        Some(legate_admin::AdminAddress::Tcp(addr)) => {
            let socket = control_runtime
                .block_on(tokio::net::TcpListener::bind(addr))
                .map_err(|e| format!("cannot bind the admin address {addr}: {e}"))?;
            let bound = socket.local_addr().map_err(|e| e.to_string())?;
            tracing::info!("admin address: {bound}");
            Some(legate_admin::AdminListener::Tcp(socket))
        }
        Some(legate_admin::AdminAddress::Pipe(pipe)) => {
            let cannot =
                |e: std::io::Error| format!("cannot bind the admin address {}: {e}", pipe.path);
            let socket = listener::bind_pipe(pipe, 1)
                .map_err(cannot)?
                .pop()
                .expect("one socket was asked for");
            let _runtime = control_runtime.enter();
            let socket = tokio::net::UnixListener::from_std(socket).map_err(cannot)?;
            tracing::info!("admin address: {}", pipe.path);
            Some(legate_admin::AdminListener::Unix(
                socket,
                pipe.path.as_str().into(),
            ))
        }
        None => None,
    };

    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    let (drain_tx, mut drain_requests) = mpsc::unbounded_channel();
    let lifecycle = Arc::new(Lifecycle {
        shutdown: shutdown_tx,
        drain_listeners: drain_tx,
        health_check_failed: AtomicBool::new(false),
        draining: AtomicBool::new(false),
    });

    let started = Instant::now();
    let server_stats = ServerStats::new(&store, workers);
    let admin_access_logs = admin_access_logs(admin_config.as_ref())?;
    let admin_state = Arc::new(legate_admin::AdminState {
        store: store.clone(),
        clusters: clusters.clone(),
        runtime: runtime.clone(),
        listeners: admin_listeners,
        server_info: options.info.clone(),
        config_dump: dump,
        control: lifecycle.clone(),
        access_logs: admin_access_logs,
    });
    let drain_time = options.drain_time;
    control_runtime.block_on(async move {
        if let Some(socket) = admin_listener {
            tokio::spawn(legate_admin::serve(socket, admin_state));
        }
        tokio::spawn(flush_stats(store.clone(), sinks, flush_interval));
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        // Polled only while a listener drains: an idle proxy's control thread then wakes once
        // a second (`tick`), not ten times.
        let mut drain_tick = tokio::time::interval(Duration::from_millis(100));
        drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let signals = Signals::new();
        let mut signals = match signals {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot install signal handlers: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = tick.tick() => server_stats.update(started, &lifecycle),
                _ = drain_tick.tick(), if control.draining() => control.tick(),
                Some(what) = next_change(&mut changes) => control.changed(what),
                Some(graceful) = drain_requests.recv() => control.listeners.drain_all(graceful),
                signal = signals.next() => match signal {
                    Signal::Terminate(name) => {
                        tracing::info!("caught {name}: draining listeners for up to {}s, then exiting", drain_time.as_secs());
                        break;
                    }
                    Signal::ReopenLogs => {
                        tracing::info!("caught SIGUSR1: reopening access logs");
                        legate_core::access_log::reopen_all();
                    }
                    Signal::Hangup => {
                        tracing::info!("caught SIGHUP: reloading the configuration");
                        control.reload();
                        if !control.watches_files() {
                            shed_startup_memory();
                        }
                    }
                },
                changed = shutdown_rx.changed() => {
                    if changed.is_err() || *shutdown_rx.borrow() {
                        tracing::info!("shutdown requested through the admin interface");
                        // Let the admin connection write its `OK` before this runtime stops.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        break;
                    }
                }
            }
        }
        lifecycle.draining.store(true, Ordering::Relaxed);
        control.listeners.drain_all(true);
        server_stats.update(started, &lifecycle);
        let deadline = Instant::now() + drain_time;
        while shared.open_connections.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = shared.open_connections.load(Ordering::Relaxed);
        if left > 0 {
            tracing::warn!("drain time over with {left} connection(s) still open; closing them");
        } else {
            tracing::info!("all connections drained; exiting");
        }
    });
    // Workers end once their connections are gone; after the drain time they are abandoned.
    for t in threads {
        if t.is_finished() {
            let _ = t.join();
        }
    }
    Ok(())
}

/// Once the configuration is in force and no xDS file will be read again, the reflection data
/// that read it (~16 MB of descriptors) is released, the freed heap returned to the OS and the
/// executable's pages unmapped ([`crate::image`]): the idle process keeps what serving needs.
/// A reload or an admin dump decodes and maps them again.
fn shed_startup_memory() {
    legate_api::descriptors::release();
    crate::alloc::release_free_memory();
    match crate::image::release_startup_pages() {
        Ok(bytes) => tracing::debug!(
            "unmapped {} KiB of the executable's pages resident after loading",
            bytes / 1024
        ),
        Err(e) => tracing::debug!("cannot unmap the executable's startup pages: {e}"),
    }
}

/// The next file change, or never when nothing is watched.
async fn next_change(changes: &mut Option<control::Changes>) -> Option<control::Watched> {
    match changes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The admin server's access logs: `admin.access_log`, and the deprecated
/// `admin.access_log_path` (Envoy's default format).
fn admin_access_logs(
    admin: Option<&legate_admin::AdminConfig>,
) -> Result<Vec<legate_core::access_log::AccessLogger>, String> {
    let Some(admin) = admin else {
        return Ok(Vec::new());
    };
    let mut logs = Vec::new();
    for (i, log) in admin.access_log.iter().enumerate() {
        let logger = legate_core::access_log::AccessLogger::compile(log).map_err(|errors| {
            errors
                .iter()
                .map(|e| {
                    e.clone()
                        .within(&format!("admin.access_log[{i}]"))
                        .to_string()
                })
                .collect::<Vec<_>>()
                .join("\n")
        })?;
        logs.push(logger);
    }
    if let Some(path) = &admin.access_log_path {
        logs.push(
            legate_core::access_log::AccessLogger::default_format_file(path)
                .map_err(|e| format!("admin.access_log_path: {e}"))?,
        );
    }
    Ok(logs)
}

fn runtime_layers(layers: &[RuntimeLayer]) -> Vec<Layer> {
    layers
        .iter()
        .map(|l| match l {
            RuntimeLayer::Static { name, values } => Layer {
                name: name.clone(),
                values: legate_core::runtime::flatten_struct(values),
                is_admin: false,
            },
            RuntimeLayer::Admin { name } => Layer {
                name: name.clone(),
                values: Default::default(),
                is_admin: true,
            },
        })
        .collect()
}

/// `server.*` gauges, refreshed every second.
struct ServerStats {
    uptime: legate_core::stats::Gauge,
    live: legate_core::stats::Gauge,
    state: legate_core::stats::Gauge,
    memory_allocated: legate_core::stats::Gauge,
    memory_heap_size: legate_core::stats::Gauge,
    memory_physical_size: legate_core::stats::Gauge,
}

impl ServerStats {
    fn new(store: &Arc<Store>, workers: usize) -> Self {
        let s = store.scope("server.");
        let g = |n: &str| s.gauge(n, ImportMode::NeverImport);
        g("concurrency").set(workers as u64);
        g("version").set(0);
        g("hot_restart_epoch").set(0);
        g("hot_restart_generation").set(1);
        g("days_until_first_cert_expiring").set(u32::MAX as u64);
        g("seconds_until_first_ocsp_response_expiring");
        g("parent_connections");
        g("stats_recent_lookups");
        for c in [
            "debug_assertion_failures",
            "envoy_bug_failures",
            "envoy_notifications",
            "dynamic_unknown_fields",
            "static_unknown_fields",
            "wip_protos",
            "dropped_stat_flushes",
            "main_thread.watchdog_miss",
            "main_thread.watchdog_mega_miss",
            "worker_watchdog_miss",
            "worker_watchdog_mega_miss",
        ] {
            s.counter(c);
        }
        s.histogram(
            "initialization_time_ms",
            legate_core::stats::Unit::Milliseconds,
        );
        ServerStats {
            uptime: g("uptime"),
            live: g("live"),
            state: g("state"),
            memory_allocated: g("memory_allocated"),
            memory_heap_size: g("memory_heap_size"),
            memory_physical_size: g("memory_physical_size"),
        }
    }

    fn update(&self, started: Instant, lifecycle: &Lifecycle) {
        self.uptime.set(started.elapsed().as_secs());
        let draining = lifecycle.is_draining();
        // Envoy's server.state: 0 LIVE, 1 DRAINING.
        self.state.set(u64::from(draining));
        self.live.set(u64::from(!draining));
        let rss = resident_bytes();
        self.memory_allocated.set(rss);
        self.memory_heap_size.set(rss);
        self.memory_physical_size.set(rss);
    }
}

/// Resident memory from /proc (Linux); 0 elsewhere. Envoy reports tcmalloc's figures here.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Flushes stats to the statsd sinks every `stats_flush_interval`. Over UDP a datagram that
/// cannot be sent is dropped; a unix socket's receiver is waited for, within the interval.
async fn flush_stats(
    store: Arc<Store>,
    sinks: Vec<crate::config::StatsdSinkConfig>,
    interval: Duration,
) {
    let mut sockets: Vec<_> = sinks
        .iter()
        .filter_map(|sink| match SinkSocket::open(&sink.address) {
            Ok(socket) => Some((socket, sink.prefix.as_str())),
            Err(e) => {
                tracing::error!("statsd sink {:?}: cannot open a socket: {e}", sink.address);
                None
            }
        })
        .collect();
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    loop {
        tick.tick().await;
        store.flush_interval();
        if sockets.is_empty() {
            continue;
        }
        // Once for all the sinks: taking the lines takes the counters' deltas.
        let lines = store.statsd_lines_unprefixed(false);
        for (socket, prefix) in &mut sockets {
            let prefixed = lines.iter().map(|line| format!("{prefix}.{line}"));
            socket.send(prefixed, interval).await;
        }
    }
}

/// A statsd sink's socket.
enum SinkSocket {
    /// A UDP socket of the address's family, and the address.
    Udp(tokio::net::UdpSocket, SocketAddr),
    /// A unix datagram socket's address, and a socket connected to it once the receiver is
    /// there (connected, the socket waits while the receiver's queue is full).
    Unix(
        std::os::unix::net::SocketAddr,
        Option<tokio::net::UnixDatagram>,
    ),
}

impl SinkSocket {
    fn open(address: &crate::config::StatsdAddress) -> std::io::Result<SinkSocket> {
        Ok(match address {
            crate::config::StatsdAddress::Udp(to) => {
                let any: SocketAddr = if to.is_ipv4() {
                    (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let socket = std::net::UdpSocket::bind(any)?;
                socket.set_nonblocking(true)?;
                SinkSocket::Udp(tokio::net::UdpSocket::from_std(socket)?, *to)
            }
            crate::config::StatsdAddress::Pipe(pipe) => SinkSocket::Unix(pipe.socket_addr()?, None),
        })
    }

    /// Sends a flush's lines: over UDP one datagram each, as Envoy sends them; over a unix
    /// socket, whose receive queue holds few datagrams however small
    /// (`net.unix.max_dgram_qlen`, 10 by default), as many lines to a datagram as fit in
    /// 8 KiB (statsd takes lines separated by newlines), waiting for the receiver at most
    /// `within`.
    async fn send(&mut self, lines: impl Iterator<Item = String>, within: Duration) {
        const UNIX_DATAGRAM: usize = 8 * 1024;
        match self {
            SinkSocket::Udp(socket, to) => {
                for line in lines {
                    let _ = socket.send_to(line.as_bytes(), &*to).await;
                }
            }
            SinkSocket::Unix(to, connected) => {
                if connected.is_none() {
                    *connected = connect_datagram(to).ok();
                }
                let Some(socket) = connected else {
                    return;
                };
                let mut datagrams = vec![String::with_capacity(UNIX_DATAGRAM)];
                for line in lines {
                    let last = datagrams.last_mut().expect("never empty");
                    if !last.is_empty() && last.len() + 1 + line.len() > UNIX_DATAGRAM {
                        datagrams.push(line);
                    } else {
                        if !last.is_empty() {
                            last.push('\n');
                        }
                        last.push_str(&line);
                    }
                }
                let sent = tokio::time::timeout(within, async {
                    for datagram in datagrams.iter().filter(|d| !d.is_empty()) {
                        socket.send(datagram.as_bytes()).await?;
                    }
                    std::io::Result::Ok(())
                })
                .await;
                if let Ok(Err(_)) = sent {
                    // The receiver went away: connect again at the next flush.
                    *connected = None;
                }
            }
        }
    }
}

/// A unix datagram socket connected to `to`.
fn connect_datagram(
    to: &std::os::unix::net::SocketAddr,
) -> std::io::Result<tokio::net::UnixDatagram> {
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    socket.connect_addr(to)?;
    socket.set_nonblocking(true)?;
    tokio::net::UnixDatagram::from_std(socket)
}

enum Signal {
    Terminate(&'static str),
    ReopenLogs,
    Hangup,
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            usr1: signal(SignalKind::user_defined1())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Terminate("SIGTERM"),
            _ = self.int.recv() => Signal::Terminate("SIGINT"),
            _ = self.usr1.recv() => Signal::ReopenLogs,
            _ = self.hup.recv() => Signal::Hangup,
        }
    }
}
