//! Circuit breakers: a cluster-wide count of connections, pending requests, requests and
//! retries, shared by all workers, refused beyond Envoy's thresholds (`circuit_breaker.proto`;
//! 1024/1024/1024/3 by default). An open breaker shows in
//! `cluster.<name>.circuit_breakers.<default|high>.{cx_open,rq_pending_open,rq_open,rq_retry_open}`
//! (gauges of the cluster's stat block, with `cx_pool_open`, always 0: `max_connection_pools` is
//! not supported), and with `track_remaining` what is left in
//! `remaining_{cx,pending,rq,retries}`, as in Envoy.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use legate_core::stats::{Gauge, Scope};

use crate::cluster::CircuitBreakerLimits;

legate_core::stat_block! {
    /// `circuit_breakers.<priority>.remaining_*`, only with `track_remaining` (as in Envoy).
    pub struct RemainingStats {
        counters: [],
        gauges: [
            remaining_cx: Accumulate,
            remaining_pending: Accumulate,
            remaining_rq: Accumulate,
            remaining_retries: Accumulate,
        ],
    }
}

/// What a breaker limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Connections,
    PendingRequests,
    Requests,
    Retries,
}

/// One limit: how much is in use, and its gauges.
#[derive(Debug)]
pub struct Resource {
    max: u32,
    current: AtomicU32,
    open: Gauge,
    remaining: Option<Gauge>,
}

impl Resource {
    fn new(max: u32, open: Gauge, remaining: Option<Gauge>) -> Self {
        if let Some(remaining) = remaining {
            remaining.set(u64::from(max));
        }
        Resource {
            max,
            current: AtomicU32::new(0),
            open,
            remaining,
        }
    }

    pub fn current(&self) -> u64 {
        u64::from(self.current.load(Ordering::Relaxed))
    }

    pub fn max(&self) -> u64 {
        u64::from(self.max)
    }

    /// Takes one unit if the limit allows.
    fn try_take(&self) -> bool {
        let mut current = self.current.load(Ordering::Relaxed);
        loop {
            if current >= self.max {
                return false;
            }
            match self.current.compare_exchange_weak(
                current,
                current + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(seen) => current = seen,
            }
        }
        self.update_gauges(current + 1);
        true
    }

    /// Takes one unit whatever the limit (the count may pass it).
    fn take(&self) {
        let before = self.current.fetch_add(1, Ordering::Relaxed);
        self.update_gauges(before + 1);
    }

    fn give_back(&self) {
        let before = self.current.fetch_sub(1, Ordering::Relaxed);
        self.update_gauges(before.saturating_sub(1));
    }

    fn update_gauges(&self, now: u32) {
        self.open.set(u64::from(now >= self.max));
        if let Some(remaining) = self.remaining {
            remaining.set(u64::from(self.max.saturating_sub(now)));
        }
    }
}

/// The breakers of one routing priority: the four limits, in one allocation shared with the
/// guards of what they count (a cluster replaced while its connections live keeps counting
/// them).
#[derive(Debug)]
pub struct Breakers(Arc<[Resource; 4]>);

impl Breakers {
    /// `open` are the priority's `cx_open`, `rq_pending_open`, `rq_open` and `rq_retry_open`;
    /// `scope` is the cluster's, under which the priority's `remaining_*` gauges are made when
    /// the limits ask for them (`priority` is `default` or `high`).
    pub fn new(
        limits: &CircuitBreakerLimits,
        open: [Gauge; 4],
        scope: &Scope,
        priority: &str,
    ) -> Self {
        let remaining = limits
            .track_remaining
            .then(|| RemainingStats::new(&scope.scope(&format!("circuit_breakers.{priority}."))));
        let [cx, pending, rq, retries] = open;
        Breakers(Arc::new([
            Resource::new(
                limits.max_connections,
                cx,
                remaining.map(|r| r.remaining_cx()),
            ),
            Resource::new(
                limits.max_pending_requests,
                pending,
                remaining.map(|r| r.remaining_pending()),
            ),
            Resource::new(limits.max_requests, rq, remaining.map(|r| r.remaining_rq())),
            Resource::new(
                limits.max_retries,
                retries,
                remaining.map(|r| r.remaining_retries()),
            ),
        ]))
    }

    /// Takes one unit of `limit` if it allows; the guard gives it back.
    pub fn try_acquire(&self, limit: Limit) -> Option<ResourceGuard> {
        self.0[limit as usize].try_take().then(|| ResourceGuard {
            breakers: Arc::clone(&self.0),
            limit,
        })
    }

    /// Takes one unit of `limit` even past it: Envoy opens a connection for a pool that has
    /// none whatever `max_connections` says.
    pub fn acquire_over_limit(&self, limit: Limit) -> ResourceGuard {
        self.0[limit as usize].take();
        ResourceGuard {
            breakers: Arc::clone(&self.0),
            limit,
        }
    }
}

/// One unit of a limit, given back on drop.
#[derive(Debug)]
pub struct ResourceGuard {
    breakers: Arc<[Resource; 4]>,
    limit: Limit,
}

impl Drop for ResourceGuard {
    fn drop(&mut self) {
        self.breakers[self.limit as usize].give_back();
    }
}
