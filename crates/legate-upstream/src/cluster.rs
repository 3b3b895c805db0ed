//! `envoy.config.cluster.v3.Cluster` -> [`ClusterConfig`].

use std::net::SocketAddr;
use std::time::Duration;

use legate_api::pb::envoy::config::cluster::v3::{Cluster, circuit_breakers::Thresholds, cluster};
use legate_api::pb::envoy::config::core::v3::{
    HttpProtocolOptions as CommonHttpOptions, RoutingPriority,
};
use legate_api::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use legate_api::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use legate_core::address::{pipe, socket_addr};
use legate_core::config_source::FileSource;
use legate_core::proto::{duration_or, u32_or};
use legate_core::{Compiled, ConfigError, Errors};
use prost::Message;

/// The key under which Envoy reads upstream HTTP options from `typed_extension_protocol_options`.
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest,
    Random,
    /// `RING_HASH` with its `ring_hash_lb_config`.
    RingHash(crate::hashing::RingHashConfig),
    /// `MAGLEV` with its `maglev_lb_config`.
    Maglev(crate::hashing::MaglevConfig),
}

/// Which protocol the cluster speaks to its hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    Http2,
    /// The protocol the downstream request arrived with.
    UseDownstream,
}

/// Envoy's circuit-breaker thresholds for one routing priority (`circuit_breaker.proto`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CircuitBreakerLimits {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    /// Publish `remaining_*` gauges.
    pub track_remaining: bool,
}

impl Default for CircuitBreakerLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            track_remaining: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// For a unix domain socket endpoint, the unspecified address with port 0 (`pipe` says
    /// where it is).
    pub address: SocketAddr,
    /// `address.pipe`: the path of a unix domain socket ('@' first: abstract namespace).
    pub pipe: Option<std::sync::Arc<str>>,
    /// `load_balancing_weight`, default 1.
    pub weight: u32,
}

/// A locality's `region`, `zone` and `sub_zone`.
pub type LocalityName = std::sync::Arc<(String, String, String)>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalityEndpoints {
    /// `region/zone/sub_zone`, for stats and `/clusters`; shared with the hosts.
    pub locality: Option<LocalityName>,
    pub weight: Option<u32>,
    pub endpoints: Vec<Endpoint>,
}

/// A cluster as Legate runs it.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub name: String,
    pub connect_timeout: Duration,
    pub lb_policy: LbPolicy,
    /// Endpoints by priority (index = priority), each a list of localities.
    pub priorities: Vec<Vec<LocalityEndpoints>>,
    pub default_limits: CircuitBreakerLimits,
    pub high_limits: CircuitBreakerLimits,
    pub per_connection_buffer_limit_bytes: u32,
    pub protocol: UpstreamProtocol,
    pub max_requests_per_connection: Option<u32>,
    /// Upstream connection idle timeout; Envoy's default is one hour.
    pub idle_timeout: Option<Duration>,
    /// `max_connection_duration`: an upstream connection is retired this long after opening.
    pub max_connection_duration: Option<Duration>,
    pub max_headers_count: u32,
    /// `max_response_headers_kb`: the largest response head a host may send (unset: 80 KiB for
    /// HTTP/1.1, Envoy's default; the HTTP/2 codec's own limit otherwise).
    pub max_response_headers_kb: Option<u32>,
    /// HTTP/2 settings for upstream connections (windows, HPACK table size).
    pub http2: Http2Settings,
    /// `transport_socket` `envoy.transport_sockets.tls`: TLS to the hosts (also inside
    /// `envoy.transport_sockets.upstream_proxy_protocol`).
    pub tls: Option<std::sync::Arc<crate::tls::UpstreamTls>>,
    /// `transport_socket` `envoy.transport_sockets.upstream_proxy_protocol`: the PROXY header
    /// each connection starts with.
    pub proxy_protocol: Option<Box<crate::proxy_protocol::UpstreamProxyProtocol>>,
    /// `type: EDS`: the endpoints come from this source (none until it sends them). Boxed, as
    /// what only some clusters have: a cluster's size counts ten thousand times in large
    /// configurations.
    pub eds: Option<Box<EdsConfig>>,
    /// `type: ORIGINAL_DST`: a host per destination the requests name.
    pub original_dst: Option<Box<crate::original_dst::OriginalDstConfig>>,
}

/// What Legate applies of `Http2ProtocolOptions` to upstream connections, with Envoy's
/// defaults: 256 MiB windows, a 4 KiB HPACK table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Http2Settings {
    pub initial_stream_window_size: u32,
    pub initial_connection_window_size: u32,
    pub hpack_table_size: u32,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Http2Settings::from_options(&Default::default())
    }
}

impl Http2Settings {
    fn from_options(o: &legate_api::pb::envoy::config::core::v3::Http2ProtocolOptions) -> Self {
        Http2Settings {
            initial_stream_window_size: u32_or(o.initial_stream_window_size.as_ref(), 256 << 20),
            initial_connection_window_size: u32_or(
                o.initial_connection_window_size.as_ref(),
                256 << 20,
            ),
            hpack_table_size: u32_or(o.hpack_table_size.as_ref(), 4096),
        }
    }
}

/// Where an EDS cluster's endpoints come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdsConfig {
    /// `eds_cluster_config.service_name`, or the cluster's name: the `cluster_name` of the
    /// `ClusterLoadAssignment` to take.
    pub service_name: String,
    pub source: FileSource,
}

impl ClusterConfig {
    /// The name in stats (`cluster.<stat_name>.*`): `alt_stat_name` is not supported, so the
    /// cluster's name.
    pub fn stat_name(&self) -> &str {
        &self.name
    }

    // Envoy still honours the deprecated cluster-level protocol fields, and so do we.
    #[allow(deprecated)]
    pub fn compile(c: &Cluster) -> Compiled<Self> {
        let mut errors = Errors::default();
        let mut eds = None;
        let mut original_dst = None;
        const EDS: i32 = cluster::DiscoveryType::Eds as i32;
        const ORIGINAL_DST: i32 = cluster::DiscoveryType::OriginalDst as i32;
        match c.cluster_discovery_type {
            None | Some(cluster::ClusterDiscoveryType::Type(0)) => {} // STATIC
            Some(cluster::ClusterDiscoveryType::Type(ORIGINAL_DST)) => {
                original_dst = errors.take("", original_dst_config(c)).map(Box::new);
            }
            Some(cluster::ClusterDiscoveryType::Type(EDS)) => match &c.eds_cluster_config {
                Some(e) => {
                    let source = e
                        .eds_config
                        .as_ref()
                        .map(FileSource::subscribe)
                        .unwrap_or_else(|| {
                            Err(legate_core::ConfigError::new("", "eds_config is required"))
                        });
                    match source {
                        Ok(source) => {
                            eds = Some(Box::new(EdsConfig {
                                service_name: if e.service_name.is_empty() {
                                    c.name.clone()
                                } else {
                                    e.service_name.clone()
                                },
                                source,
                            }))
                        }
                        Err(err) => errors.0.push(err.within("eds_cluster_config.eds_config")),
                    }
                }
                None => errors.push(
                    "eds_cluster_config",
                    "an EDS cluster requires eds_cluster_config",
                ),
            },
            Some(cluster::ClusterDiscoveryType::Type(t)) => {
                let name = cluster::DiscoveryType::try_from(t)
                    .map_or("unknown".into(), |t| t.as_str_name().to_owned());
                errors.push(
                    "type",
                    format!(
                        "cluster type {name} is not supported by Legate yet (STATIC and EDS are)"
                    ),
                );
            }
            Some(cluster::ClusterDiscoveryType::ClusterType(_)) => {
                errors.push(
                    "cluster_type",
                    "custom cluster types are not supported by Legate",
                );
            }
        }
        let lb_policy = match cluster::LbPolicy::try_from(c.lb_policy) {
            // ORIGINAL_DST clusters choose their host themselves (checked above).
            _ if original_dst.is_some() => LbPolicy::RoundRobin,
            Ok(cluster::LbPolicy::ClusterProvided) => {
                errors.push(
                    "lb_policy",
                    format!(
                        "cluster manager: cluster provided LB specified but cluster '{}' did not provide one. Check cluster documentation.",
                        c.name
                    ),
                );
                LbPolicy::RoundRobin
            }
            Ok(cluster::LbPolicy::RoundRobin) => LbPolicy::RoundRobin,
            Ok(cluster::LbPolicy::LeastRequest) => LbPolicy::LeastRequest,
            Ok(cluster::LbPolicy::Random) => LbPolicy::Random,
            Ok(cluster::LbPolicy::RingHash) => LbPolicy::RingHash(ring_hash_config(c, &mut errors)),
            Ok(cluster::LbPolicy::Maglev) => LbPolicy::Maglev(maglev_config(c, &mut errors)),
            Ok(other) => {
                errors.push(
                    "lb_policy",
                    format!("{} is not supported by Legate yet", other.as_str_name()),
                );
                LbPolicy::RoundRobin
            }
            Err(_) => {
                errors.push("lb_policy", "unknown load balancing policy");
                LbPolicy::RoundRobin
            }
        };
        // Endpoint addresses are literal IPs only in STATIC clusters; check them only there.
        let priorities = match &c.load_assignment {
            Some(la) if errors.0.is_empty() => errors
                .take("load_assignment", compile_endpoints(la))
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let (default_limits, high_limits) = circuit_breakers(c);

        // Upstream HTTP options: the typed extension wins over the deprecated cluster fields.
        let mut http2 = c
            .http2_protocol_options
            .as_ref()
            .map_or_else(Http2Settings::default, Http2Settings::from_options);
        let mut protocol = if c.http2_protocol_options.is_some() {
            UpstreamProtocol::Http2
        } else {
            UpstreamProtocol::Http1
        };
        let mut common = c.common_http_protocol_options;
        let mut upstream_http = c.upstream_http_protocol_options.clone();
        let mut max_requests = c.max_requests_per_connection.as_ref().map(|v| v.value);
        for (key, any) in &c.typed_extension_protocol_options {
            let path = format!("typed_extension_protocol_options[\"{key}\"]");
            if key != HTTP_PROTOCOL_OPTIONS && !any.type_url.ends_with(HTTP_PROTOCOL_OPTIONS) {
                errors.push(
                    &path,
                    format!("protocol options for '{key}' are not supported by Legate"),
                );
                continue;
            }
            let Ok(options) = HttpProtocolOptions::decode(any.value.as_slice()) else {
                errors.push(&path, "unable to decode HttpProtocolOptions");
                continue;
            };
            protocol = match &options.upstream_protocol_options {
                Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(e)) => {
                    match &e.protocol_config {
                        Some(http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(o)) => {
                            http2 = Http2Settings::from_options(o);
                            UpstreamProtocol::Http2
                        }
                        _ => UpstreamProtocol::Http1,
                    }
                }
                Some(http_protocol_options::UpstreamProtocolOptions::UseDownstreamProtocolConfig(_)) => UpstreamProtocol::UseDownstream,
                _ => {
                    errors.push(&path, "upstream_protocol_options is required");
                    protocol
                }
            };
            if options.common_http_protocol_options.is_some() {
                common = options.common_http_protocol_options;
            }
            if options.upstream_http_protocol_options.is_some() {
                upstream_http = options.upstream_http_protocol_options.clone();
            }
        }
        let common = common.unwrap_or_default();
        max_requests = common
            .max_requests_per_connection
            .as_ref()
            .map(|v| v.value)
            .or(max_requests);
        let idle_timeout = idle_timeout(&common);
        let max_connection_duration = Some(duration_or(
            common.max_connection_duration.as_ref(),
            Duration::ZERO,
        ))
        .filter(|d| !d.is_zero());

        let transport = c.transport_socket.as_ref().and_then(|ts| {
            errors.take(
                "transport_socket",
                crate::proxy_protocol::compile_transport_socket(ts),
            )
        });
        let (proxy_protocol, tls) = match transport {
            Some(t) => (
                t.proxy_protocol.map(Box::new),
                t.tls
                    .map(|t| std::sync::Arc::new(t.with_auto_name(upstream_http.as_ref()))),
            ),
            None => (None, None),
        };
        if eds.is_some() && c.load_assignment.is_some() {
            errors.push(
                "load_assignment",
                "an EDS cluster takes its endpoints from eds_cluster_config, not load_assignment",
            );
        }
        errors.finish(|| ClusterConfig {
            tls,
            proxy_protocol,
            eds,
            original_dst,
            name: c.name.clone(),
            connect_timeout: duration_or(c.connect_timeout.as_ref(), Duration::from_secs(5)),
            lb_policy,
            priorities,
            default_limits,
            high_limits,
            per_connection_buffer_limit_bytes: u32_or(
                c.per_connection_buffer_limit_bytes.as_ref(),
                1024 * 1024,
            ),
            protocol,
            max_requests_per_connection: max_requests.filter(|&n| n > 0),
            idle_timeout,
            max_connection_duration,
            max_headers_count: u32_or(common.max_headers_count.as_ref(), 100),
            max_response_headers_kb: common.max_response_headers_kb.as_ref().map(|v| v.value),
            http2,
        })
    }

    /// Whether connections made for `self` can serve `other` as they are: no TLS on either
    /// side, the same PROXY header, the same protocol and codec settings. A cluster replaced by one it shares this
    /// with keeps its hosts' connection pools.
    pub fn connections_compatible(&self, other: &ClusterConfig) -> bool {
        self.tls.is_none()
            && other.tls.is_none()
            && self.proxy_protocol == other.proxy_protocol
            && self.protocol == other.protocol
            && self.http2 == other.http2
            && self.max_headers_count == other.max_headers_count
            && self.max_response_headers_kb == other.max_response_headers_kb
            && self.max_requests_per_connection == other.max_requests_per_connection
            && self.idle_timeout == other.idle_timeout
            && self.max_connection_duration == other.max_connection_duration
    }

    /// The largest HTTP/1.1 response head, in bytes.
    pub fn max_http1_response_head(&self) -> usize {
        self.max_response_headers_kb
            .map_or(80 * 1024, |kb| kb as usize * 1024)
    }

    /// All endpoints of every priority and locality.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.priorities
            .iter()
            .flatten()
            .flat_map(|l| l.endpoints.iter())
    }
}

/// `type: ORIGINAL_DST`: its `original_dst_lb_config` and `cleanup_interval`, with Envoy's
/// checks (and messages).
fn original_dst_config(c: &Cluster) -> Compiled<crate::original_dst::OriginalDstConfig> {
    use crate::original_dst::{DEFAULT_CLEANUP_INTERVAL, DEFAULT_HEADER, OriginalDstConfig};
    let mut errors = Errors::default();
    if c.lb_policy != cluster::LbPolicy::ClusterProvided as i32 {
        let policy = cluster::LbPolicy::try_from(c.lb_policy)
            .map_or("unknown".into(), |p| p.as_str_name().to_owned());
        errors.push(
            "lb_policy",
            format!(
                "cluster: LB policy {policy} is not valid for Cluster type ORIGINAL_DST. Only 'CLUSTER_PROVIDED' is allowed with cluster type 'ORIGINAL_DST'"
            ),
        );
    }
    if c.load_assignment.is_some() {
        errors.push(
            "load_assignment",
            "ORIGINAL_DST clusters must have no load assignment configured",
        );
    }
    let lb = match &c.lb_config {
        Some(cluster::LbConfig::OriginalDstLbConfig(lb)) => lb.clone(),
        _ => Default::default(),
    };
    if !lb.use_http_header && !lb.http_header_name.is_empty() {
        errors.push(
            "original_dst_lb_config.http_header_name",
            format!(
                "ORIGINAL_DST cluster: invalid config http_header_name={} and use_http_header is false. Set use_http_header to true if http_header_name is desired.",
                lb.http_header_name
            ),
        );
    }
    let http_header = if !lb.use_http_header {
        None
    } else if lb.http_header_name.is_empty() {
        Some(http::HeaderName::from_static(DEFAULT_HEADER))
    } else {
        match http::HeaderName::from_bytes(lb.http_header_name.to_ascii_lowercase().as_bytes()) {
            Ok(name) => Some(name),
            Err(_) => {
                // `:authority` and the other pseudo-headers are not names the header map
                // holds: refused rather than never matched.
                errors.push(
                    "original_dst_lb_config.http_header_name",
                    format!(
                        "'{}' is not a header name Legate can read",
                        lb.http_header_name
                    ),
                );
                None
            }
        }
    };
    let port_override = match lb.upstream_port_override.map(|v| v.value) {
        Some(p) if p > 65535 => {
            errors.push(
                "original_dst_lb_config.upstream_port_override",
                format!("invalid port {p}"),
            );
            None
        }
        p => p.map(|p| p as u16),
    };
    errors.finish(|| OriginalDstConfig {
        http_header,
        port_override,
        cleanup_interval: duration_or(c.cleanup_interval.as_ref(), DEFAULT_CLEANUP_INTERVAL),
    })
}

/// `ring_hash_lb_config`, with Envoy's defaults and its checks (the proto's 8M bounds, and
/// `RingHashLoadBalancer`'s minimum-over-maximum error).
fn ring_hash_config(c: &Cluster, errors: &mut Errors) -> crate::hashing::RingHashConfig {
    use crate::hashing::{HashFunction, RING_SIZE_LIMIT, RingHashConfig};
    use legate_api::pb::envoy::config::cluster::v3::cluster::ring_hash_lb_config;
    let mut config = RingHashConfig::default();
    let Some(cluster::LbConfig::RingHashLbConfig(r)) = &c.lb_config else {
        return config;
    };
    if let Some(v) = &r.minimum_ring_size {
        config.minimum_ring_size = v.value;
        if v.value > RING_SIZE_LIMIT {
            errors.push(
                "ring_hash_lb_config.minimum_ring_size",
                format!("value must be less than or equal to {RING_SIZE_LIMIT}"),
            );
        }
    }
    if let Some(v) = &r.maximum_ring_size {
        config.maximum_ring_size = v.value;
        if v.value > RING_SIZE_LIMIT {
            errors.push(
                "ring_hash_lb_config.maximum_ring_size",
                format!("value must be less than or equal to {RING_SIZE_LIMIT}"),
            );
        }
    }
    config.hash_function = match ring_hash_lb_config::HashFunction::try_from(r.hash_function) {
        Ok(ring_hash_lb_config::HashFunction::XxHash) => HashFunction::XxHash,
        Ok(ring_hash_lb_config::HashFunction::MurmurHash2) => HashFunction::MurmurHash2,
        Err(_) => {
            errors.push(
                "ring_hash_lb_config.hash_function",
                "value must be one of the defined enum values",
            );
            HashFunction::XxHash
        }
    };
    if config.minimum_ring_size > config.maximum_ring_size {
        errors.push(
            "ring_hash_lb_config",
            format!(
                "ring hash: minimum_ring_size ({}) > maximum_ring_size ({})",
                config.minimum_ring_size, config.maximum_ring_size
            ),
        );
    }
    config
}

/// `maglev_lb_config`: Envoy requires a prime `table_size` (at most 5000011 by the proto).
fn maglev_config(c: &Cluster, errors: &mut Errors) -> crate::hashing::MaglevConfig {
    use crate::hashing::{MAGLEV_TABLE_SIZE_LIMIT, MaglevConfig, is_prime};
    let mut config = MaglevConfig::default();
    if let Some(cluster::LbConfig::MaglevLbConfig(m)) = &c.lb_config
        && let Some(size) = &m.table_size
    {
        config.table_size = size.value;
        if size.value > MAGLEV_TABLE_SIZE_LIMIT {
            errors.push(
                "maglev_lb_config.table_size",
                format!("value must be less than or equal to {MAGLEV_TABLE_SIZE_LIMIT}"),
            );
        } else if !is_prime(size.value) {
            errors.push(
                "maglev_lb_config.table_size",
                "The table size of maglev must be prime number",
            );
        }
    }
    config
}

/// Envoy's upstream idle timeout: one hour unless set; zero disables it.
fn idle_timeout(common: &CommonHttpOptions) -> Option<Duration> {
    let t = duration_or(common.idle_timeout.as_ref(), Duration::from_secs(3600));
    (!t.is_zero()).then_some(t)
}

fn circuit_breakers(c: &Cluster) -> (CircuitBreakerLimits, CircuitBreakerLimits) {
    let mut limits = (
        CircuitBreakerLimits::default(),
        CircuitBreakerLimits::default(),
    );
    for t in c
        .circuit_breakers
        .iter()
        .flat_map(|cb| cb.thresholds.iter())
    {
        let target = if t.priority == RoutingPriority::High as i32 {
            &mut limits.1
        } else {
            &mut limits.0
        };
        *target = thresholds(t);
    }
    limits
}

fn thresholds(t: &Thresholds) -> CircuitBreakerLimits {
    let d = CircuitBreakerLimits::default();
    CircuitBreakerLimits {
        max_connections: u32_or(t.max_connections.as_ref(), d.max_connections),
        max_pending_requests: u32_or(t.max_pending_requests.as_ref(), d.max_pending_requests),
        max_requests: u32_or(t.max_requests.as_ref(), d.max_requests),
        max_retries: u32_or(t.max_retries.as_ref(), d.max_retries),
        track_remaining: t.track_remaining,
    }
}

/// Compiles the endpoints of a `ClusterLoadAssignment` (a cluster's `load_assignment`, or an
/// EDS resource).
pub fn compile_endpoints(la: &ClusterLoadAssignment) -> Compiled<Vec<Vec<LocalityEndpoints>>> {
    let mut errors = Errors::default();
    let mut priorities: Vec<Vec<LocalityEndpoints>> = Vec::new();
    for (i, locality) in la.endpoints.iter().enumerate() {
        let path = format!("endpoints[{i}]");
        let mut endpoints = Vec::with_capacity(locality.lb_endpoints.len());
        for (j, lb) in locality.lb_endpoints.iter().enumerate() {
            let path = format!("{path}.lb_endpoints[{j}]");
            let endpoint = match &lb.host_identifier {
                Some(lb_endpoint::HostIdentifier::Endpoint(e)) => e,
                Some(lb_endpoint::HostIdentifier::EndpointName(_)) => {
                    errors.push(
                        &format!("{path}.endpoint_name"),
                        "named endpoints are not supported by Legate",
                    );
                    continue;
                }
                None => {
                    errors.push(&path, "an endpoint is required");
                    continue;
                }
            };
            let Some(address) = &endpoint.address else {
                errors.push(
                    &format!("{path}.endpoint.address"),
                    "an address is required",
                );
                continue;
            };
            let path = format!("{path}.endpoint.address");
            let endpoint = match pipe(address) {
                Some(p) => errors.take(&path, p).map(|p| {
                    (
                        SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0),
                        Some(std::sync::Arc::from(p.path)),
                    )
                }),
                None => errors.take(&path, socket_addr(address)).map(|a| (a, None)),
            };
            if let Some((address, pipe)) = endpoint {
                endpoints.push(Endpoint {
                    address,
                    pipe,
                    weight: u32_or(lb.load_balancing_weight.as_ref(), 1),
                });
            }
        }
        let priority = locality.priority as usize;
        if priorities.len() <= priority {
            priorities.resize_with(priority + 1, Vec::new);
        }
        priorities[priority].push(LocalityEndpoints {
            locality: locality.locality.as_ref().map(|l| {
                std::sync::Arc::new((l.region.clone(), l.zone.clone(), l.sub_zone.clone()))
            }),
            weight: locality.load_balancing_weight.as_ref().map(|w| w.value),
            endpoints,
        });
    }
    // Kept as long as the cluster: no room for localities that will not come.
    for localities in &mut priorities {
        localities.shrink_to_fit();
    }
    errors.finish(|| priorities)
}

/// Fails if two clusters share a name, as Envoy's cluster manager does.
pub fn check_unique_names<'a>(names: impl Iterator<Item = &'a str>) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    for (index, name) in names.enumerate() {
        if !seen.insert(name) {
            return Err(ConfigError::new(
                format!("[{index}].name"),
                format!("cluster manager: duplicate cluster '{name}'"),
            ));
        }
    }
    Ok(())
}
