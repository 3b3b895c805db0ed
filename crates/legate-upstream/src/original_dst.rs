//! The hosts of an `ORIGINAL_DST` cluster (Envoy's `OriginalDstCluster`): none are configured;
//! a request or connection names its own, and a host is made for each destination on first use.
//!
//! The destination is, in Envoy's order: the `original_dst_lb_config.http_header_name` header
//! (`x-envoy-original-dst-host` by default) when `use_http_header` is set, a request carries it
//! and its first value is an `IP:port`; else the downstream connection's local address when a
//! listener filter restored it (`original_dst`, `proxy_protocol`). `upstream_port_override`
//! replaces the port of either. A header value that is not an `IP:port` counts
//! `original_dst_host_invalid` and falls back to the connection. Without a destination the
//! cluster has no host for the request (`no healthy upstream`).
//!
//! Every `cleanup_interval` (5 s unless set) the hosts not chosen since the last sweep and
//! without an open connection are removed, as in Envoy (with its default
//! `original_dst_rely_on_idle_timeout`).
//!
//! Reads take the address map from an `ArcSwap` (no lock); only a new destination takes the
//! writer's lock, to add its host.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use legate_core::stats::Counter;

use crate::host::Host;

/// Envoy's `x-envoy-original-dst-host`.
pub const DEFAULT_HEADER: &str = "x-envoy-original-dst-host";
/// Envoy's default `cleanup_interval`.
pub const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(5);

/// `type: ORIGINAL_DST` with its `original_dst_lb_config` and `cleanup_interval`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginalDstConfig {
    /// The header that names the destination (`use_http_header`), lower-cased.
    pub http_header: Option<http::HeaderName>,
    pub port_override: Option<u16>,
    pub cleanup_interval: Duration,
}

/// What a load-balancing decision knows of its request: what `ORIGINAL_DST` clusters choose
/// by. Other clusters ignore it.
#[derive(Clone, Copy, Debug, Default)]
pub struct LbContext<'a> {
    /// The downstream connection's local address, when a listener filter restored it.
    pub restored_local: Option<SocketAddr>,
    /// The request's headers (HTTP only).
    pub headers: Option<&'a http::HeaderMap>,
}

#[derive(Debug)]
struct Entry {
    host: Arc<Host>,
    /// Chosen since the last sweep.
    used: AtomicBool,
}

/// The hosts made so far, by destination.
#[derive(Debug)]
pub struct OriginalDstHosts {
    pub config: OriginalDstConfig,
    by_address: ArcSwap<HashMap<SocketAddr, Arc<Entry>>>,
    /// Held while the map is replaced (a new host, a sweep).
    write: Mutex<()>,
    host_invalid: Counter,
}

impl OriginalDstHosts {
    pub fn new(config: OriginalDstConfig, host_invalid: Counter) -> Self {
        OriginalDstHosts {
            config,
            by_address: ArcSwap::from_pointee(HashMap::new()),
            write: Mutex::new(()),
            host_invalid,
        }
    }

    /// The destination of a request, or `None`.
    pub fn destination(&self, ctx: &LbContext<'_>) -> Option<SocketAddr> {
        let from_header = match (&self.config.http_header, ctx.headers) {
            (Some(name), Some(headers)) => headers.get(name).and_then(|v| {
                // Only the first value counts: the header is untrusted (Envoy's API note).
                let parsed = v.to_str().ok().and_then(|s| s.parse::<SocketAddr>().ok());
                if parsed.is_none() {
                    tracing::debug!("original_dst: invalid override header value {v:?}");
                    self.host_invalid.inc();
                }
                parsed
            }),
            _ => None,
        };
        let mut dst = from_header.or(ctx.restored_local)?;
        if let Some(port) = self.config.port_override {
            dst.set_port(port);
        }
        Some(dst)
    }

    /// The host for `dst`, made (and `added` called with every host) if it is new.
    pub fn host(
        &self,
        dst: SocketAddr,
        workers: usize,
        added: impl FnOnce(Vec<Arc<Host>>),
    ) -> Arc<Host> {
        if let Some(e) = self.by_address.load().get(&dst) {
            e.used.store(true, Ordering::Relaxed);
            return e.host.clone();
        }
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.by_address.load_full();
        if let Some(e) = current.get(&dst) {
            e.used.store(true, Ordering::Relaxed);
            return e.host.clone();
        }
        let host = Arc::new(Host::new(dst, 1, 0, None, workers));
        let mut map = HashMap::clone(&current);
        map.insert(
            dst,
            Arc::new(Entry {
                host: host.clone(),
                used: AtomicBool::new(true),
            }),
        );
        let hosts = map.values().map(|e| e.host.clone()).collect();
        self.by_address.store(Arc::new(map));
        added(hosts);
        host
    }

    /// Removes the hosts neither chosen since the last sweep nor holding a connection; calls
    /// `changed` with the hosts left when some went.
    pub fn sweep(&self, changed: impl FnOnce(Vec<Arc<Host>>)) {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.by_address.load_full();
        let mut kept = HashMap::with_capacity(current.len());
        for (addr, e) in current.iter() {
            let used = e.used.swap(false, Ordering::Relaxed);
            if used || e.host.active_connections.load(Ordering::Relaxed) > 0 {
                kept.insert(*addr, e.clone());
            } else {
                tracing::debug!("original_dst: removing stale host {addr}");
            }
        }
        if kept.len() != current.len() {
            let hosts = kept.values().map(|e| e.host.clone()).collect();
            self.by_address.store(Arc::new(kept));
            changed(hosts);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use legate_core::stats::Store;

    fn hosts(
        header: Option<&'static str>,
        port_override: Option<u16>,
    ) -> (OriginalDstHosts, Counter) {
        let store = Store::new();
        let invalid = store.counter("original_dst_host_invalid");
        let config = OriginalDstConfig {
            http_header: header.map(http::HeaderName::from_static),
            port_override,
            cleanup_interval: DEFAULT_CLEANUP_INTERVAL,
        };
        (OriginalDstHosts::new(config, invalid), invalid)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_header_wins_over_the_connection_and_an_invalid_one_falls_back() {
        let (od, invalid) = hosts(Some(DEFAULT_HEADER), None);
        let local: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let h = headers(&[
            (DEFAULT_HEADER, "[::1]:8443"),
            (DEFAULT_HEADER, "1.2.3.4:1"),
        ]);
        let ctx = LbContext {
            restored_local: Some(local),
            headers: Some(&h),
        };
        // Only the first value counts.
        assert_eq!(od.destination(&ctx), "[::1]:8443".parse().ok());
        let h = headers(&[(DEFAULT_HEADER, "a.b.c.d")]);
        let ctx = LbContext {
            restored_local: Some(local),
            headers: Some(&h),
        };
        assert_eq!(od.destination(&ctx), Some(local));
        assert_eq!(invalid.value(), 1);
        // Neither a header nor a restored address: no destination.
        let ctx = LbContext {
            restored_local: None,
            headers: Some(&h),
        };
        assert_eq!(od.destination(&ctx), None);
    }

    #[test]
    fn the_header_is_ignored_without_use_http_header_and_the_port_is_overridden() {
        let (od, _) = hosts(None, Some(9000));
        let h = headers(&[(DEFAULT_HEADER, "1.2.3.4:1")]);
        let ctx = LbContext {
            restored_local: Some("10.0.0.1:80".parse().unwrap()),
            headers: Some(&h),
        };
        assert_eq!(od.destination(&ctx), "10.0.0.1:9000".parse().ok());
    }

    #[test]
    fn hosts_are_made_once_and_swept_when_unused() {
        let (od, _) = hosts(None, None);
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let mut added = 0;
        let h1 = od.host(a, 1, |_| added += 1);
        let h2 = od.host(a, 1, |_| added += 1);
        assert!(std::sync::Arc::ptr_eq(&h1, &h2));
        assert_eq!(added, 1);
        // Chosen since the last sweep: kept, then removed by the next.
        let mut left = None;
        od.sweep(|hosts| left = Some(hosts.len()));
        assert_eq!(left, None);
        // An open connection keeps it.
        h1.active_connections.store(1, Ordering::Relaxed);
        od.sweep(|hosts| left = Some(hosts.len()));
        assert_eq!(left, None);
        h1.active_connections.store(0, Ordering::Relaxed);
        od.sweep(|hosts| left = Some(hosts.len()));
        assert_eq!(left, Some(0));
    }
}
