//! An upstream host: its address and weight, and the shared atomics that the load balancers,
//! `/clusters` and (later) health checking read and write from every worker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::cluster::LocalityName;
use crate::pool::HostPool;

/// One endpoint of a cluster, shared by all workers.
#[derive(Debug)]
pub struct Host {
    /// The unspecified address with port 0 for a unix domain socket host (see `pipe`).
    pub address: SocketAddr,
    /// The path of a unix domain socket host (`address.pipe`; '@' first: abstract namespace).
    pub pipe: Option<Arc<str>>,
    /// `load_balancing_weight` (1 by default).
    pub weight: u32,
    pub priority: u32,
    /// `region/zone/sub_zone`, for `/clusters`.
    pub locality: Option<LocalityName>,
    /// Requests in flight to this host, across workers: LEAST_REQUEST reads it.
    pub active_requests: AtomicU64,
    /// Requests of this host's pools waiting for a connection (`rq_pending_active`).
    pub pending_requests: AtomicU64,
    pub active_connections: AtomicU64,
    /// Counters shown by `/clusters` (Envoy's per-host stats).
    pub rq_total: AtomicU64,
    pub rq_success: AtomicU64,
    pub rq_error: AtomicU64,
    pub rq_timeout: AtomicU64,
    pub cx_total: AtomicU64,
    pub cx_connect_fail: AtomicU64,
    /// Cleared by active health checking or outlier ejection; no checker exists yet, so every
    /// host is healthy.
    healthy: AtomicBool,
    /// One connection pool per worker: each worker uses only its own. A host that survives an
    /// endpoint update keeps its pools, and so its open connections.
    pools: Box<[HostPool]>,
}

impl Host {
    pub fn new(
        address: SocketAddr,
        weight: u32,
        priority: u32,
        locality: Option<LocalityName>,
        workers: usize,
    ) -> Self {
        Host {
            address,
            pipe: None,
            weight: weight.max(1),
            priority,
            locality,
            active_requests: AtomicU64::new(0),
            pending_requests: AtomicU64::new(0),
            active_connections: AtomicU64::new(0),
            rq_total: AtomicU64::new(0),
            rq_success: AtomicU64::new(0),
            rq_error: AtomicU64::new(0),
            rq_timeout: AtomicU64::new(0),
            cx_total: AtomicU64::new(0),
            cx_connect_fail: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            pools: (0..workers.max(1)).map(|_| HostPool::default()).collect(),
        }
    }

    /// A host on a unix domain socket at `pipe` (a path).
    pub fn with_pipe(mut self, pipe: Option<Arc<str>>) -> Self {
        self.pipe = pipe;
        self
    }

    /// The address as Envoy prints it (`/clusters`, `%UPSTREAM_HOST%`, hash keys): the pipe's
    /// path, or `ip:port`.
    pub fn shown(&self) -> String {
        match &self.pipe {
            Some(path) => path.to_string(),
            None => self.address.to_string(),
        }
    }

    /// Worker `worker`'s connection pool to this host.
    pub fn pool(&self, worker: usize) -> &HostPool {
        &self.pools[worker.min(self.pools.len() - 1)]
    }

    /// Whether an endpoint of a new assignment is this host, unchanged.
    pub fn is(
        &self,
        address: SocketAddr,
        weight: u32,
        priority: u32,
        locality: &Option<LocalityName>,
    ) -> bool {
        self.address == address
            && self.weight == weight.max(1)
            && self.priority == priority
            && &self.locality == locality
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    pub fn active_requests(&self) -> u64 {
        self.active_requests.load(Ordering::Relaxed)
    }
}

/// Counts one request in flight to a host for as long as it lives.
#[derive(Debug)]
pub struct ActiveRequest(std::sync::Arc<Host>);

impl ActiveRequest {
    pub fn new(host: std::sync::Arc<Host>) -> Self {
        host.active_requests.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(host)
    }

    pub fn host(&self) -> &std::sync::Arc<Host> {
        &self.0
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active_requests.fetch_sub(1, Ordering::Relaxed);
    }
}
