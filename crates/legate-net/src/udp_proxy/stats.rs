//! The UDP proxy's stats with Envoy's names: `udp.<stat_prefix>.*` and
//! `cluster.<name>.udp.*`.

use legate_core::stats::{Counter, Gauge, ImportMode, Scope};

/// `udp.<stat_prefix>.*` (udp_proxy_filter.rst), registered as Envoy registers them.
#[derive(Debug)]
pub struct UdpProxyStats {
    pub downstream_sess_total: Counter,
    pub downstream_sess_active: Gauge,
    pub downstream_sess_no_route: Counter,
    pub downstream_sess_rx_bytes: Counter,
    pub downstream_sess_rx_datagrams: Counter,
    pub downstream_sess_rx_errors: Counter,
    pub downstream_sess_tx_bytes: Counter,
    pub downstream_sess_tx_datagrams: Counter,
    pub downstream_sess_tx_errors: Counter,
    pub idle_timeout: Counter,
}

impl UdpProxyStats {
    pub fn new(root: &Scope, stat_prefix: &str) -> Self {
        let s = root.scope(&format!("udp.{stat_prefix}."));
        s.counter("session_filter_config_missing");
        let c = |n: &str| s.counter(n);
        UdpProxyStats {
            downstream_sess_total: c("downstream_sess_total"),
            downstream_sess_active: s.gauge("downstream_sess_active", ImportMode::Accumulate),
            downstream_sess_no_route: c("downstream_sess_no_route"),
            downstream_sess_rx_bytes: c("downstream_sess_rx_bytes"),
            downstream_sess_rx_datagrams: c("downstream_sess_rx_datagrams"),
            downstream_sess_rx_errors: c("downstream_sess_rx_errors"),
            downstream_sess_tx_bytes: c("downstream_sess_tx_bytes"),
            downstream_sess_tx_datagrams: c("downstream_sess_tx_datagrams"),
            downstream_sess_tx_errors: c("downstream_sess_tx_errors"),
            idle_timeout: c("idle_timeout"),
        }
    }
}

/// What a UDP session counts in its cluster's scope: `cluster.<name>.udp.*` and the byte
/// totals Envoy shares with TCP (`upstream_cx_{rx,tx}_bytes_total`). Envoy counts no
/// `upstream_cx_total` for UDP sessions.
#[derive(Debug)]
pub struct UdpClusterStats {
    pub sess_rx_datagrams: Counter,
    pub sess_rx_datagrams_dropped: Counter,
    pub sess_rx_errors: Counter,
    pub sess_tx_datagrams: Counter,
    pub sess_tx_errors: Counter,
    pub upstream_cx_rx_bytes_total: Counter,
    pub upstream_cx_tx_bytes_total: Counter,
}

impl UdpClusterStats {
    /// `cluster`: the cluster's scope (`cluster.<name>.`). Envoy registers these once a
    /// udp_proxy uses the cluster.
    pub fn new(cluster: &Scope) -> Self {
        let s = cluster.scope("udp.");
        for name in [
            "sess_tunnel_buffer_overflow",
            "sess_tunnel_failure",
            "sess_tunnel_success",
        ] {
            s.counter(name);
        }
        UdpClusterStats {
            sess_rx_datagrams: s.counter("sess_rx_datagrams"),
            sess_rx_datagrams_dropped: s.counter("sess_rx_datagrams_dropped"),
            sess_rx_errors: s.counter("sess_rx_errors"),
            sess_tx_datagrams: s.counter("sess_tx_datagrams"),
            sess_tx_errors: s.counter("sess_tx_errors"),
            upstream_cx_rx_bytes_total: cluster.counter("upstream_cx_rx_bytes_total"),
            upstream_cx_tx_bytes_total: cluster.counter("upstream_cx_tx_bytes_total"),
        }
    }
}
