//! A worker: one thread with its own single-threaded runtime, accepting on its own socket of
//! every listener and serving those connections to the end. Workers share nothing on the
//! request path but atomics (stats, host load), as Envoy's workers do.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use legate_core::stats::{Counter, Gauge, Histogram, ImportMode, Store, Unit};
use legate_http::conn_manager::{Downstream, HttpConnectionManager};
use tokio::sync::watch;

/// `listener.<stat_prefix>.*` stats.
#[derive(Debug)]
pub struct ListenerStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub downstream_cx_destroy: Counter,
    pub downstream_cx_length_ms: Histogram,
}

impl ListenerStats {
    pub fn new(store: &std::sync::Arc<Store>, stat_prefix: &str) -> Self {
        let scope = store.scope(&format!("listener.{stat_prefix}."));
        for name in [
            "downstream_cx_overflow",
            "downstream_cx_overload_reject",
            "downstream_global_cx_overflow",
            "downstream_pre_cx_timeout",
            "downstream_listener_filter_remote_close",
            "downstream_listener_filter_error",
            "no_filter_chain_match",
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
        }
    }
}

/// One listener as the workers run it.
pub struct RunningListener {
    pub name: String,
    pub address: std::net::SocketAddr,
    /// One socket per worker.
    pub sockets: Vec<std::net::TcpListener>,
    pub hcm: Arc<HttpConnectionManager>,
    pub stats: Arc<ListenerStats>,
}

/// What all workers share: connection ids, the count of open connections (for draining),
/// and the signals to stop accepting and to drain open connections.
pub struct WorkerShared {
    pub next_connection_id: AtomicU64,
    pub open_connections: AtomicUsize,
    pub total_connections: Counter,
    pub stop_accepting: watch::Receiver<bool>,
    pub drain: watch::Receiver<bool>,
}

/// Starts worker `index` on its own thread.
pub fn spawn(
    index: usize,
    listeners: Vec<(
        std::net::TcpListener,
        Arc<HttpConnectionManager>,
        Arc<ListenerStats>,
    )>,
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
            runtime.block_on(run(index, listeners, shared));
        })
}

async fn run(
    index: usize,
    listeners: Vec<(
        std::net::TcpListener,
        Arc<HttpConnectionManager>,
        Arc<ListenerStats>,
    )>,
    shared: Arc<WorkerShared>,
) {
    let mut accepting = Vec::new();
    for (socket, hcm, stats) in listeners {
        match tokio::net::TcpListener::from_std(socket) {
            Ok(listener) => accepting.push(tokio::spawn(accept_loop(
                index,
                listener,
                hcm,
                stats,
                shared.clone(),
            ))),
            Err(e) => tracing::error!("worker {index}: cannot use a listener socket: {e}"),
        }
    }
    for task in accepting {
        let _ = task.await;
    }
    // Accepting stopped: stay until this worker's connections are gone.
    while shared.open_connections.load(Ordering::Relaxed) > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn accept_loop(
    worker: usize,
    listener: tokio::net::TcpListener,
    hcm: Arc<HttpConnectionManager>,
    stats: Arc<ListenerStats>,
    shared: Arc<WorkerShared>,
) {
    let mut stop = shared.stop_accepting.clone();
    let local = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => {
                if *stop.borrow() { break; }
                continue;
            }
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
        shared.total_connections.inc();
        stats.downstream_cx_total.inc();
        stats.downstream_cx_active.inc();
        let downstream = Downstream {
            id,
            peer,
            local: stream.local_addr().ok().or(local).unwrap_or(peer),
            worker,
        };
        let hcm = hcm.clone();
        let stats = stats.clone();
        let shared = shared.clone();
        let drain = shared.drain.clone();
        tokio::spawn(async move {
            let opened = Instant::now();
            hcm.serve(stream, downstream, drain).await;
            stats.downstream_cx_active.dec();
            stats.downstream_cx_destroy.inc();
            stats
                .downstream_cx_length_ms
                .record(opened.elapsed().as_millis() as u64);
            shared.open_connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}
