//! The UDP proxy's view of the clusters: the host of a new session, picked by the cluster's
//! load balancer, and the cluster's `udp.*` stats (the proxy itself is
//! [`legate_net::udp_proxy`]).

use std::net::SocketAddr;
use std::sync::Arc;

use legate_http::conn_manager::ProxyContext;
use legate_net::udp_proxy::{
    NoUpstream, SessionUpstream, UdpClusterStats, UdpHashPolicy, UdpUpstreams,
};
use legate_upstream::breaker::Limit;
use legate_upstream::hashing::xxhash64;
use legate_upstream::original_dst::LbContext;

/// The clusters of the proxy context, as the UDP proxy asks for them.
pub struct ClusterUpstreams(pub Arc<ProxyContext>);

impl ClusterUpstreams {
    /// Registers `cluster.<name>.udp.*` for a cluster a UDP proxy routes to, as Envoy has
    /// them from the filter's creation.
    pub fn register(&self, cluster: &str) {
        if let Some(c) = self.0.clusters.get(cluster) {
            UdpClusterStats::new(&c.stats.scope);
        }
    }
}

impl UdpUpstreams for ClusterUpstreams {
    fn session_host(
        &self,
        cluster: &str,
        downstream: SocketAddr,
        hash: Option<&UdpHashPolicy>,
    ) -> Result<SessionUpstream, NoUpstream> {
        // The cluster in force when the session opens (CDS may add or replace it later).
        let Some(c) = self.0.clusters.get(cluster) else {
            return Err(NoUpstream::NoCluster);
        };
        // Envoy computes the key only for a balancer that hashes: the client's IP as text, or
        // the fixed key, through xxHash64 (udp_proxy's `HashPolicyImpl`).
        let key = hash.filter(|_| c.uses_hash()).map(|h| match h {
            UdpHashPolicy::SourceIp => xxhash64(downstream.ip().to_string().as_bytes()),
            UdpHashPolicy::Key(k) => xxhash64(k.as_bytes()),
        });
        // No original destination is restored for UDP: an ORIGINAL_DST cluster finds no host.
        let context = LbContext {
            restored_local: None,
            headers: None,
        };
        let Some(host) = c.choose_host_for(key.unwrap_or_else(|| fastrand::u64(..)), &context)
        else {
            c.stats.traffic.upstream_cx_none_healthy().inc();
            return Err(NoUpstream::NoHost);
        };
        // A unix domain socket host cannot take datagrams from the UDP proxy.
        if host.pipe.is_some() {
            c.stats.traffic.upstream_cx_none_healthy().inc();
            return Err(NoUpstream::NoHost);
        }
        // A session holds one of the cluster's connections, as in Envoy (`max_connections`).
        let Some(slot) = c.breakers.try_acquire(Limit::Connections) else {
            c.stats.traffic.upstream_cx_overflow().inc();
            return Err(NoUpstream::Overflow);
        };
        // The host stays alive while its cluster's membership holds it: EDS removing it, or
        // the cluster's removal, drops it (a CDS update that keeps the address keeps it).
        let member = Arc::downgrade(&host);
        // Looked up once per session, not per datagram.
        Ok(SessionUpstream {
            host: host.address,
            stats: Arc::new(UdpClusterStats::new(&c.stats.scope)),
            slot: Box::new(slot),
            current: Box::new(move || member.strong_count() > 0),
        })
    }
}
