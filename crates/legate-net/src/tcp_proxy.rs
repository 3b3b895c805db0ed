//! `envoy.filters.network.tcp_proxy`: the compiled configuration and the `tcp.<stat_prefix>.*`
//! stats. Running it needs clusters, so the binary joins this with the cluster manager; the
//! byte moving is [`crate::pump::exchange`].

use std::time::Duration;

use legate_api::pb::envoy::config::accesslog::v3::AccessLog;
use legate_api::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    ProxyProtocolTlvMergePolicy, TcpProxy, UpstreamConnectMode, tcp_proxy::ClusterSpecifier,
};
use legate_api::pb::envoy::r#type::v3::hash_policy;
use legate_core::access_log::AccessLogger;
use legate_core::proto::{duration, duration_or, u32_or};
use legate_core::proxy_protocol::{MergePolicy, Tlv, tlv_entries};
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
    /// `max_downstream_connection_duration`: the connection is closed this long after the
    /// filter took it, plus a random share of up to `max_duration_jitter_percent` of it.
    pub max_duration: Option<Duration>,
    pub max_duration_jitter_percent: f64,
    /// `access_log_options.flush_access_log_on_start`: an entry when tcp_proxy takes the
    /// connection.
    pub flush_access_log_on_start: bool,
    /// `access_log_options.flush_access_log_on_connected` (or the deprecated field of that
    /// name): an entry once the upstream is connected.
    pub flush_access_log_on_connected: bool,
    /// `access_log_options.access_log_flush_interval` (or the deprecated field): an entry
    /// every interval while the connection lasts.
    pub access_log_flush_interval: Option<Duration>,
    /// `proxy_protocol_tlvs`, merged by `proxy_protocol_tlv_merge_policy` into what an
    /// `upstream_proxy_protocol` cluster's header carries.
    pub proxy_protocol_tlvs: Vec<Tlv>,
    pub tlv_merge_policy: MergePolicy,
    /// `upstream_connect_mode: ON_DOWNSTREAM_DATA`: the upstream connection waits for the
    /// client's first bytes. (`ON_DOWNSTREAM_TLS_HANDSHAKE` is what Legate always does: a TLS
    /// chain's handshake is over before tcp_proxy runs.)
    pub connect_on_data: bool,
    /// `backoff_options`: the wait before each further connect attempt.
    pub backoff: Option<Backoff>,
}

/// Envoy's jittered exponential backoff (`BackoffStrategy`): before each retry, a random
/// wait below the current interval, which starts at `base` and doubles up to `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The waits before the retries, in order; `random` gives numbers in [0, 1).
    pub fn waits(self, mut random: impl FnMut() -> f64) -> impl Iterator<Item = Duration> {
        let mut interval = self.base;
        std::iter::from_fn(move || {
            let wait = interval.mul_f64(random()).min(self.max);
            interval = if interval > self.max / 2 {
                self.max
            } else {
                interval * 2
            };
            Some(wait)
        })
    }
}

impl TcpProxyConfig {
    /// When a connection the filter took at `start` must be closed, if ever: the maximum
    /// duration plus its jitter (`random` in [0, 1)).
    pub fn deadline(&self, start: std::time::Instant, random: f64) -> Option<std::time::Instant> {
        let max = self.max_duration?;
        Some(start + max + max.mul_f64(self.max_duration_jitter_percent / 100.0 * random))
    }

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
        // Envoy's rules: the options message or the deprecated fields, not both.
        #[allow(deprecated)]
        let (flush_access_log_on_connected, flush_interval) = match &p.access_log_options {
            Some(options) => {
                if p.flush_access_log_on_connected {
                    errors.push(
                        "access_log_options",
                        "Only one of flush_access_log_on_connected or access_log_options can be specified.",
                    );
                }
                if p.access_log_flush_interval.is_some() {
                    errors.push(
                        "access_log_options",
                        "Only one of access_log_flush_interval or access_log_options can be specified.",
                    );
                }
                (
                    options.flush_access_log_on_connected,
                    options.access_log_flush_interval.as_ref(),
                )
            }
            None => (
                p.flush_access_log_on_connected,
                p.access_log_flush_interval.as_ref(),
            ),
        };
        let proxy_protocol_tlvs = errors
            .take(
                "",
                tlv_entries(&p.proxy_protocol_tlvs, "proxy_protocol_tlvs"),
            )
            .unwrap_or_default();
        let tlv_merge_policy =
            match ProxyProtocolTlvMergePolicy::try_from(p.proxy_protocol_tlv_merge_policy) {
                Ok(ProxyProtocolTlvMergePolicy::OverwriteByTypeIfExistsOrAdd) => {
                    MergePolicy::OverwriteByType
                }
                Ok(ProxyProtocolTlvMergePolicy::AppendIfExistsOrAdd) => MergePolicy::Append,
                _ => MergePolicy::AddIfAbsent,
            };
        let connect_on_data = matches!(
            UpstreamConnectMode::try_from(p.upstream_connect_mode),
            Ok(UpstreamConnectMode::OnDownstreamData)
        );
        if p.upstream_connect_mode != UpstreamConnectMode::Immediate as i32
            && p.max_early_data_bytes.is_none()
        {
            errors.push(
                "max_early_data_bytes",
                "max_early_data_bytes must be set when upstream_connect_mode is not IMMEDIATE",
            );
        }
        let backoff = p.backoff_options.as_ref().map(|b| {
            let base = b.base_interval.as_ref().map(duration).unwrap_or_default();
            let max = b.max_interval.as_ref().map_or(base * 10, duration);
            if max < base {
                errors.push(
                    "backoff_options",
                    "max_backoff_interval must be greater or equal to base_backoff_interval",
                );
            }
            Backoff { base, max }
        });
        let flush_access_log_on_start = p
            .access_log_options
            .as_ref()
            .is_some_and(|o| o.flush_access_log_on_start);
        errors.finish(|| TcpProxyConfig {
            flush_access_log_on_start,
            connect_on_data,
            backoff,
            proxy_protocol_tlvs,
            tlv_merge_policy,
            max_duration: p.max_downstream_connection_duration.as_ref().map(duration),
            max_duration_jitter_percent: p
                .max_downstream_connection_duration_jitter_percentage
                .as_ref()
                .map_or(0.0, |j| j.value),
            flush_access_log_on_connected,
            access_log_flush_interval: flush_interval.map(duration),
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

    fn config(yaml_fields: impl FnOnce(&mut TcpProxy)) -> Compiled<TcpProxyConfig> {
        let mut p = TcpProxy {
            stat_prefix: "t".into(),
            cluster_specifier: Some(ClusterSpecifier::Cluster("c".into())),
            ..Default::default()
        };
        yaml_fields(&mut p);
        TcpProxyConfig::compile(&p)
    }

    #[test]
    #[allow(deprecated)]
    fn access_log_options_or_the_deprecated_fields_not_both() {
        use legate_api::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::TcpAccessLogOptions;
        use legate_api::pb::google::protobuf::Duration as ProtoDuration;
        let second = ProtoDuration {
            seconds: 1,
            nanos: 0,
        };
        let c = config(|p| {
            p.access_log_options = Some(TcpAccessLogOptions {
                access_log_flush_interval: Some(second),
                flush_access_log_on_connected: true,
                ..Default::default()
            })
        })
        .unwrap();
        assert_eq!(c.access_log_flush_interval, Some(Duration::from_secs(1)));
        assert!(c.flush_access_log_on_connected);
        let c = config(|p| {
            p.access_log_flush_interval = Some(second);
            p.flush_access_log_on_connected = true;
        })
        .unwrap();
        assert_eq!(c.access_log_flush_interval, Some(Duration::from_secs(1)));
        assert!(c.flush_access_log_on_connected);
        let errors = config(|p| {
            p.access_log_options = Some(TcpAccessLogOptions::default());
            p.flush_access_log_on_connected = true;
            p.access_log_flush_interval = Some(second);
        })
        .unwrap_err();
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            text,
            [
                "access_log_options: Only one of flush_access_log_on_connected or access_log_options can be specified.",
                "access_log_options: Only one of access_log_flush_interval or access_log_options can be specified.",
            ]
        );
    }

    #[test]
    fn backoff_waits_below_an_interval_that_doubles_up_to_the_max() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(500),
        };
        let almost_one = || 0.999_999;
        let waits: Vec<u128> = b.waits(almost_one).take(5).map(|d| d.as_millis()).collect();
        assert_eq!(waits, [99, 199, 399, 499, 499]);
        let half: Vec<u128> = b.waits(|| 0.5).take(4).map(|d| d.as_millis()).collect();
        assert_eq!(half, [50, 100, 200, 250]);
        let errors = config(|p| {
            p.backoff_options = Some(legate_api::pb::envoy::config::core::v3::BackoffStrategy {
                base_interval: Some(legate_api::pb::google::protobuf::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                max_interval: Some(legate_api::pb::google::protobuf::Duration {
                    seconds: 0,
                    nanos: 500_000_000,
                }),
            });
            p.upstream_connect_mode = UpstreamConnectMode::OnDownstreamData as i32;
        })
        .unwrap_err();
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            text,
            [
                "max_early_data_bytes: max_early_data_bytes must be set when upstream_connect_mode is not IMMEDIATE",
                "backoff_options: max_backoff_interval must be greater or equal to base_backoff_interval",
            ]
        );
    }

    #[test]
    fn the_deadline_adds_up_to_the_jitter() {
        let start = std::time::Instant::now();
        let c = config(|p| {
            p.max_downstream_connection_duration =
                Some(legate_api::pb::google::protobuf::Duration {
                    seconds: 10,
                    nanos: 0,
                });
            p.max_downstream_connection_duration_jitter_percentage =
                Some(legate_api::pb::envoy::r#type::v3::Percent { value: 50.0 });
        })
        .unwrap();
        assert_eq!(
            c.deadline(start, 0.0),
            Some(start + Duration::from_secs(10))
        );
        assert_eq!(
            c.deadline(start, 0.5),
            Some(start + Duration::from_millis(12_500))
        );
        assert_eq!(config(|_| {}).unwrap().deadline(start, 0.5), None);
    }
}
