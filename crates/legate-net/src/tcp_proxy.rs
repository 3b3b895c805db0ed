//! `envoy.filters.network.tcp_proxy`: the compiled configuration and the `tcp.<stat_prefix>.*`
//! stats. Running it needs clusters, so the binary joins this with the cluster manager; the
//! byte moving is [`crate::pump::exchange`].

use std::time::Duration;

use legate_api::pb::envoy::config::accesslog::v3::AccessLog;
use legate_api::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy::ClusterSpecifier,
};
use legate_api::pb::envoy::r#type::v3::hash_policy;
use legate_core::access_log::AccessLogger;
use legate_core::proto::{duration_or, u32_or};
use legate_core::stats::{Counter, Gauge, ImportMode, Scope};
use legate_core::{Compiled, Errors};

/// Envoy's default `idle_timeout` (1 hour).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterChoice {
    One(String),
    /// (cluster, weight), weights summed in `total`.
    Weighted {
        clusters: Vec<(String, u32)>,
        total: u64,
    },
}

impl ClusterChoice {
    /// The cluster for a connection; `random` picks among weighted clusters.
    pub fn pick(&self, random: u64) -> &str {
        match self {
            ClusterChoice::One(c) => c,
            ClusterChoice::Weighted { clusters, total } => {
                let mut point = random % (*total).max(1);
                for (name, weight) in clusters {
                    if point < *weight as u64 {
                        return name;
                    }
                    point -= *weight as u64;
                }
                clusters.last().map_or("", |(n, _)| n.as_str())
            }
        }
    }

    pub fn names(&self) -> Vec<&str> {
        match self {
            ClusterChoice::One(c) => vec![c.as_str()],
            ClusterChoice::Weighted { clusters, .. } => {
                clusters.iter().map(|(c, _)| c.as_str()).collect()
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct TcpProxyConfig {
    pub stat_prefix: String,
    pub cluster: ClusterChoice,
    /// `None`: disabled (`idle_timeout: 0s`).
    pub idle_timeout: Option<Duration>,
    pub max_connect_attempts: u32,
    pub access_log: Vec<AccessLog>,
    /// `hash_policy` `source_ip`: RING_HASH and MAGLEV clusters balance on the xxHash64 of the
    /// downstream IP (Envoy's `Network::HashPolicyImpl`; `filter_state` is refused by the
    /// support table).
    pub hash_source_ip: bool,
}

impl TcpProxyConfig {
    /// Compiles the filter's config; the fields Legate does not implement are refused by the
    /// support table before this runs.
    pub fn compile(p: &TcpProxy) -> Compiled<Self> {
        let mut errors = Errors::default();
        let cluster = match &p.cluster_specifier {
            Some(ClusterSpecifier::Cluster(c)) => ClusterChoice::One(c.clone()),
            Some(ClusterSpecifier::WeightedClusters(w)) => {
                let clusters: Vec<(String, u32)> = w
                    .clusters
                    .iter()
                    .map(|c| (c.name.clone(), c.weight))
                    .collect();
                let total = clusters.iter().map(|(_, w)| *w as u64).sum();
                ClusterChoice::Weighted { clusters, total }
            }
            None => {
                errors.push("cluster", "a cluster or weighted_clusters is required");
                ClusterChoice::One(String::new())
            }
        };
        for (i, log) in p.access_log.iter().enumerate() {
            errors.take(&format!("access_log[{i}]"), AccessLogger::check(log));
        }
        // The proto allows one policy (`max_items: 1`).
        if p.hash_policy.len() > 1 {
            errors.push("hash_policy", "value must contain no more than 1 item(s)");
        }
        let mut hash_source_ip = false;
        for (i, h) in p.hash_policy.iter().enumerate() {
            match &h.policy_specifier {
                Some(hash_policy::PolicySpecifier::SourceIp(_)) => hash_source_ip = true,
                Some(hash_policy::PolicySpecifier::FilterState(_)) => errors.push(
                    &format!("hash_policy[{i}].filter_state"),
                    "filter_state hash policies are not supported by Legate",
                ),
                None => errors.push(
                    &format!("hash_policy[{i}].policy_specifier"),
                    "value is required",
                ),
            }
        }
        let idle = duration_or(p.idle_timeout.as_ref(), DEFAULT_IDLE_TIMEOUT);
        errors.finish(|| TcpProxyConfig {
            hash_source_ip,
            stat_prefix: p.stat_prefix.clone(),
            cluster,
            idle_timeout: (!idle.is_zero()).then_some(idle),
            max_connect_attempts: u32_or(p.max_connect_attempts.as_ref(), 1).max(1),
            access_log: p.access_log.clone(),
        })
    }
}

/// `tcp.<stat_prefix>.*` (tcp_proxy_filter.rst), all registered as Envoy registers them.
#[derive(Debug)]
pub struct TcpProxyStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_no_route: Counter,
    pub downstream_cx_tx_bytes_total: Counter,
    pub downstream_cx_rx_bytes_total: Counter,
    pub downstream_cx_tx_bytes_buffered: Gauge,
    pub downstream_cx_rx_bytes_buffered: Gauge,
    pub downstream_flow_control_paused_reading_total: Counter,
    pub downstream_flow_control_resumed_reading_total: Counter,
    pub idle_timeout: Counter,
    pub max_downstream_connection_duration: Counter,
    pub upstream_flush_total: Counter,
    pub upstream_flush_active: Gauge,
}

impl TcpProxyStats {
    pub fn new(root: &Scope, stat_prefix: &str) -> Self {
        let s = root.scope(&format!("tcp.{stat_prefix}"));
        for name in [
            "downstream_cx_drain_close",
            "downstream_cx_overload_close",
            "early_data_received_count_total",
            "route_delayed_total",
        ] {
            s.counter(name);
        }
        let c = |n: &str| s.counter(n);
        let g = |n: &str| s.gauge(n, ImportMode::Accumulate);
        TcpProxyStats {
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_no_route: c("downstream_cx_no_route"),
            downstream_cx_tx_bytes_total: c("downstream_cx_tx_bytes_total"),
            downstream_cx_rx_bytes_total: c("downstream_cx_rx_bytes_total"),
            downstream_cx_tx_bytes_buffered: g("downstream_cx_tx_bytes_buffered"),
            downstream_cx_rx_bytes_buffered: g("downstream_cx_rx_bytes_buffered"),
            downstream_flow_control_paused_reading_total: c(
                "downstream_flow_control_paused_reading_total",
            ),
            downstream_flow_control_resumed_reading_total: c(
                "downstream_flow_control_resumed_reading_total",
            ),
            idle_timeout: c("idle_timeout"),
            max_downstream_connection_duration: c("max_downstream_connection_duration"),
            upstream_flush_total: c("upstream_flush_total"),
            upstream_flush_active: g("upstream_flush_active"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_pick_follows_weights() {
        let c = ClusterChoice::Weighted {
            clusters: vec![("a".into(), 1), ("b".into(), 3)],
            total: 4,
        };
        let picks: Vec<&str> = (0..8).map(|r| c.pick(r)).collect();
        assert_eq!(picks, ["a", "b", "b", "b", "a", "b", "b", "b"]);
        assert_eq!(ClusterChoice::One("x".into()).pick(99), "x");
    }
}
