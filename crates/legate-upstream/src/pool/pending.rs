//! Requests waiting for a connection, as Envoy's pools keep them: a request that finds no idle
//! connection is *pending* (`upstream_rq_pending_total`, `upstream_rq_pending_active`) until it
//! has one, within the cluster's `max_pending_requests` (beyond it: `upstream_rq_pending_overflow`,
//! 503 `UO`). It opens a connection if `max_connections` allows, or if its pool has none at all
//! (Envoy's rule: a pool with requests waiting always has a connection to serve them, so the
//! limit may be passed, counting `upstream_cx_overflow`); otherwise it waits for a connection
//! to come back to the pool, or for one to close and free a slot. Given up (the client left,
//! the route timeout fired), it counts `upstream_rq_cancelled`; failed with its connection, it
//! counts `upstream_rq_pending_failure_eject`. An HTTP/2 request is pending only while its
//! pool's one connection is being opened (`H2::Opening` in the pool).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::Notify;

use crate::breaker::{Limit, ResourceGuard};
use crate::host::Host;
use crate::manager::Cluster;
use crate::pool::UpstreamError;
use crate::stats::ClusterTraffic;

/// A request waiting for a connection; counted as pending (by the cluster and the host) for
/// as long as it lives.
pub(super) struct Pending<'a> {
    traffic: ClusterTraffic,
    host: &'a Host,
    _slot: ResourceGuard,
    outcome: Outcome,
}

enum Outcome {
    Cancelled,
    Attached,
    Failed,
}

impl<'a> Pending<'a> {
    /// A request pending for `host`, if `max_pending_requests` allows one more.
    pub(super) fn new(cluster: &Cluster, host: &'a Host) -> Result<Self, UpstreamError> {
        let traffic = cluster.stats.traffic;
        let Some(slot) = cluster.breakers.try_acquire(Limit::PendingRequests) else {
            traffic.upstream_rq_pending_overflow().inc();
            return Err(UpstreamError::Overflow);
        };
        traffic.upstream_rq_pending_total().inc();
        traffic.upstream_rq_pending_active().inc();
        host.pending_requests.fetch_add(1, Ordering::Relaxed);
        Ok(Pending {
            traffic,
            host,
            _slot: slot,
            outcome: Outcome::Cancelled,
        })
    }

    /// The request has its connection.
    pub(super) fn attached(mut self) {
        self.outcome = Outcome::Attached;
    }

    /// The connection opened for the request failed.
    pub(super) fn failed(mut self) {
        self.outcome = Outcome::Failed;
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.traffic.upstream_rq_pending_active().dec();
        self.host.pending_requests.fetch_sub(1, Ordering::Relaxed);
        match self.outcome {
            Outcome::Cancelled => self.traffic.upstream_rq_cancelled().inc(),
            Outcome::Failed => self.traffic.upstream_rq_pending_failure_eject().inc(),
            Outcome::Attached => {}
        }
    }
}

/// What a pool's waiting requests listen to; made by the first request that found no idle
/// connection.
#[derive(Debug, Default)]
pub(super) struct Signal {
    /// The pool's HTTP/1.1 connections, open or opening.
    connections: AtomicU32,
    /// Requests waiting for a connection to come back or to close.
    waiting: AtomicU32,
    changed: Notify,
}

impl Signal {
    /// Wakes a waiting request, if there is one, to look again: a connection came back to
    /// the pool or closed, or a waiting request took one while others still wait (Envoy then
    /// tries to open connections for them again).
    pub(super) fn wake(&self) {
        // SeqCst pairs with `waiting`'s: either the waiter, counted, then looks and finds what
        // this change made, or this sees it counted and wakes it.
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.changed.notify_one();
        }
    }

    /// Waits for [`Signal::wake`]; `look` is called once listening and counted as waiting, and
    /// ends the wait with what it returns. (Listening before looking: a change made after the
    /// look wakes this waiter.)
    pub(super) async fn wait_for<T>(&self, mut look: impl FnMut() -> Option<T>) -> T {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let _counted = Waiting::new(self);
            if let Some(found) = look() {
                return found;
            }
            changed.await;
        }
    }
}

/// A request counted among a pool's waiting ones until dropped.
struct Waiting<'a>(&'a Signal);

impl<'a> Waiting<'a> {
    fn new(signal: &'a Signal) -> Self {
        signal.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(signal)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection's place within the cluster's `max_connections`, given back when the
/// connection ends. One of an HTTP/1.1 pool's connections also counts in the pool's
/// [`Signal`], and its end wakes a waiting request.
#[derive(Debug)]
pub(super) struct Slot {
    _breaker: ResourceGuard,
    pool: Option<Arc<Signal>>,
}

impl Slot {
    /// A slot for an HTTP/1.1 connection of the pool that `signal` belongs to: within the
    /// limit, or past it when the pool has no connection at all. `None`: the request waits.
    pub(super) fn for_http1(cluster: &Cluster, signal: &Arc<Signal>) -> Option<Slot> {
        let breaker = match cluster.breakers.try_acquire(Limit::Connections) {
            Some(breaker) => breaker,
            None if signal.connections.load(Ordering::SeqCst) == 0 => over_limit(cluster),
            None => return None,
        };
        signal.connections.fetch_add(1, Ordering::SeqCst);
        Some(Slot {
            _breaker: breaker,
            pool: Some(signal.clone()),
        })
    }

    /// A slot for a pool's HTTP/2 connection: it is opened only when the pool has none, so
    /// always granted (past the limit, counting `upstream_cx_overflow`).
    pub(super) fn for_http2(cluster: &Cluster) -> Slot {
        Slot {
            _breaker: cluster
                .breakers
                .try_acquire(Limit::Connections)
                .unwrap_or_else(|| over_limit(cluster)),
            pool: None,
        }
    }
}

fn over_limit(cluster: &Cluster) -> ResourceGuard {
    cluster.stats.traffic.upstream_cx_overflow().inc();
    cluster.breakers.acquire_over_limit(Limit::Connections)
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(signal) = &self.pool {
            signal.connections.fetch_sub(1, Ordering::SeqCst);
            signal.wake();
        }
    }
}
