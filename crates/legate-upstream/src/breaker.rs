//! Circuit breakers: a cluster-wide count of connections, pending requests, requests and
//! retries, shared by all workers, refused beyond Envoy's thresholds (`circuit_breaker.proto`;
//! 1024/1024/1024/3 by default). An open breaker shows in
//! `cluster.<name>.circuit_breakers.<default|high>.{cx_open,rq_pending_open,rq_open,rq_retry_open}`
//! (`cx_pool_open` too, always 0: `max_connection_pools` is not supported), and with
//! `track_remaining` what is left in `remaining_{cx,pending,rq,retries}`, as in Envoy.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use legate_core::stats::{Gauge, Scope};

use crate::cluster::CircuitBreakerLimits;

legate_core::stat_block! {
    /// `circuit_breakers.<priority>.*`: 1 while the breaker is open.
    pub struct BreakerStats {
        counters: [],
        gauges: [
            cx_open: Accumulate,
            cx_pool_open: Accumulate,
            rq_pending_open: Accumulate,
            rq_open: Accumulate,
            rq_retry_open: Accumulate,
        ],
    }
}

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

#[derive(Debug)]
pub struct Resource {
    max: u64,
    current: AtomicU64,
    open: Gauge,
    remaining: Option<Gauge>,
}

impl Resource {
    fn new(max: u32, open: Gauge, remaining: Option<Gauge>) -> Self {
        let r = Resource {
            max: max as u64,
            current: AtomicU64::new(0),
            open,
            remaining,
        };
        if let Some(remaining) = r.remaining {
            remaining.set(r.max);
        }
        r
    }

    /// Takes one unit if the limit allows; the guard gives it back.
    pub fn try_acquire(self: &Arc<Self>) -> Option<ResourceGuard> {
        let mut current = self.current.load(Ordering::Relaxed);
        loop {
            if current >= self.max {
                return None;
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
        Some(ResourceGuard(self.clone()))
    }

    pub fn current(&self) -> u64 {
        self.current.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    fn update_gauges(&self, now: u64) {
        self.open.set(u64::from(now >= self.max));
        if let Some(remaining) = self.remaining {
            remaining.set(self.max.saturating_sub(now));
        }
    }
}

/// One unit of a resource, released on drop.
#[derive(Debug)]
pub struct ResourceGuard(Arc<Resource>);

impl Drop for ResourceGuard {
    fn drop(&mut self) {
        let before = self.0.current.fetch_sub(1, Ordering::Relaxed);
        self.0.update_gauges(before.saturating_sub(1));
    }
}

/// The breakers of one routing priority.
#[derive(Debug)]
pub struct Breakers {
    pub connections: Arc<Resource>,
    pub pending_requests: Arc<Resource>,
    pub requests: Arc<Resource>,
    pub retries: Arc<Resource>,
}

impl Breakers {
    /// `scope` is the cluster's; the priority is `default` or `high`.
    pub fn new(limits: &CircuitBreakerLimits, scope: &Scope, priority: &str) -> Self {
        let s = scope.scope(&format!("circuit_breakers.{priority}."));
        let open = BreakerStats::new(&s);
        let remaining = limits.track_remaining.then(|| RemainingStats::new(&s));
        Breakers {
            connections: Arc::new(Resource::new(
                limits.max_connections,
                open.cx_open(),
                remaining.map(|r| r.remaining_cx()),
            )),
            pending_requests: Arc::new(Resource::new(
                limits.max_pending_requests,
                open.rq_pending_open(),
                remaining.map(|r| r.remaining_pending()),
            )),
            requests: Arc::new(Resource::new(
                limits.max_requests,
                open.rq_open(),
                remaining.map(|r| r.remaining_rq()),
            )),
            retries: Arc::new(Resource::new(
                limits.max_retries,
                open.rq_retry_open(),
                remaining.map(|r| r.remaining_retries()),
            )),
        }
    }
}
