//! An upstream connection's limits in time, from the cluster's `common_http_protocol_options`
//! as Envoy applies them: `idle_timeout` (an hour unless set) closes a connection that has
//! been idle that long — an HTTP/1.1 one waiting in its pool, an HTTP/2 one without a stream
//! (`upstream_cx_idle_timeout`);
//! `max_connection_duration` retires a connection that has been open that long
//! (`upstream_cx_max_duration_reached`): closed at once if idle, otherwise taken out of its
//! pool and closed once its requests are done.
//!
//! Each connection has a timer task of its own, stopped when the connection ends: it wakes at
//! the next deadline and looks the connection up in its pool by number. An HTTP/1.1
//! connection's task also watches it while it is idle: the connection, checked in, registers
//! the task's [`IdleWatch`] with its socket, and the task closes it if the host closes it (or
//! sends anything). Nothing is done per request (the timer is not woken by the connection's
//! traffic).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::Wake;
use std::time::{Duration, Instant};

use super::HostPool;
use crate::host::Host;
use crate::stats::ClusterTraffic;

/// How a connection's task finds the pool that holds the connection without keeping it alive.
#[derive(Clone)]
pub(super) enum PoolHandle {
    /// Worker `.1`'s pool of a host.
    Own(Weak<Host>, usize),
    /// A per-name pool (`auto_sni`, `auto_san_validation`).
    Named(Weak<HostPool>),
}

impl PoolHandle {
    fn with<R>(&self, f: impl FnOnce(&HostPool) -> R) -> Option<R> {
        match self {
            PoolHandle::Own(host, worker) => host.upgrade().map(|h| f(h.pool(*worker))),
            PoolHandle::Named(pool) => pool.upgrade().map(|p| f(&p)),
        }
    }

    /// Whether the pool (if still there) holds connection `id`: idle, or as its HTTP/2 one.
    pub(super) fn holds(&self, id: u64) -> bool {
        self.with(|p| p.holds(id)).unwrap_or(false)
    }
}

/// A new connection's number, by which its task finds it in its pool.
pub(super) fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Wakes an HTTP/1.1 connection's task when its idle socket has something to say (it is
/// the waker the idle connection's socket holds).
#[derive(Default)]
pub(super) struct IdleWatch {
    woken: tokio::sync::Notify,
}

impl Wake for IdleWatch {
    fn wake(self: Arc<Self>) {
        self.woken.notify_one();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.notify_one();
    }
}

/// The limits in time of one connection, watched by its task.
pub(super) struct Lifetime {
    pub(super) id: u64,
    pub(super) pool: PoolHandle,
    /// Closes the connection after this long idle.
    pub(super) idle_timeout: Option<Duration>,
    /// An HTTP/1.1 connection's: woken when its host may have closed it while idle.
    pub(super) idle_watch: Option<Arc<IdleWatch>>,
    /// Retires the connection then (`max_connection_duration` from its opening).
    pub(super) retire_at: Option<Instant>,
}

impl Lifetime {
    /// Starts the connection's timer task, if it has a limit or an idle watch; abort it when
    /// the connection ends.
    pub(super) fn start(self, traffic: ClusterTraffic) -> Option<tokio::task::AbortHandle> {
        if self.idle_timeout.is_none() && self.retire_at.is_none() && self.idle_watch.is_none() {
            return None;
        }
        Some(tokio::spawn(self.watch(traffic)).abort_handle())
    }

    async fn watch(self, traffic: ClusterTraffic) {
        let mut retire_at = self.retire_at;
        let mut idle_check = self.idle_timeout.map(|t| Instant::now() + t);
        loop {
            let next = match (retire_at, idle_check) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (Some(a), None) | (None, Some(a)) => Some(a),
                (None, None) => None,
            };
            let deadline = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            match &self.idle_watch {
                Some(watch) => {
                    tokio::select! {
                        () = deadline => {}
                        () = watch.woken.notified() => {
                            self.pool.with(|p| p.recheck_idle(self.id));
                            continue;
                        }
                    }
                }
                None if next.is_none() => return,
                None => deadline.await,
            }
            let now = Instant::now();
            if retire_at.is_some_and(|at| at <= now) {
                retire_at = None;
                traffic.upstream_cx_max_duration_reached().inc();
                self.pool.with(|p| p.retire(self.id));
            }
            if let (Some(timeout), Some(at)) = (self.idle_timeout, idle_check)
                && at <= now
            {
                idle_check = self.check_idle(now, timeout, traffic);
            }
        }
    }

    /// Closes the connection if it has been idle for `timeout` (counting
    /// `upstream_cx_idle_timeout`); otherwise when to look again (`None`: never, the
    /// connection is closed or its pool gone).
    fn check_idle(
        &self,
        now: Instant,
        timeout: Duration,
        traffic: ClusterTraffic,
    ) -> Option<Instant> {
        match self.pool.with(|p| p.idle_since(self.id))? {
            // Busy: it can time out no sooner than a timeout from now.
            None => Some(now + timeout),
            Some(since) if now.duration_since(since) < timeout => Some(since + timeout),
            Some(_) => {
                if self.pool.with(|p| p.close_idle(self.id)) == Some(true) {
                    traffic.upstream_cx_idle_timeout().inc();
                }
                None
            }
        }
    }
}
