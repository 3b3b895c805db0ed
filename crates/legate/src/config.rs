//! The whole configuration, compiled: the bootstrap's listeners (with their network filters),
//! clusters, admin, stats sinks and runtime layers, with the checks that span pieces (a route
//! naming a cluster that does not exist, duplicate names). This is the snapshot the proxy runs.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use legate_admin::AdminConfig;
use legate_api::bootstrap::LoadedBootstrap;
use legate_api::pb::envoy::config::bootstrap::v3::runtime_layer;
use legate_api::pb::envoy::config::core::v3::{ConfigSource, Node, address, socket_address};
use legate_api::pb::envoy::config::listener::v3::Listener;
use legate_api::pb::envoy::config::listener::v3::{Filter, filter};
use legate_api::pb::envoy::config::metrics::v3::{StatsdSink, stats_sink, statsd_sink};
use legate_api::pb::envoy::extensions::filters::network::direct_response::v3::Config as DirectResponseConfig;
use legate_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use legate_api::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbacProto;
use legate_api::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use legate_core::config_source::FileSource;
use legate_core::proto::{bool_or, duration_or};
use legate_core::{Compiled, ConfigError, Errors};
use legate_http::hcm::HcmConfig;
use legate_http::tunnel::TunnelConfig;
use legate_net::listener::{ListenerConfig, check_unique};
use legate_net::rbac::NetworkRbacConfig;
use legate_net::tcp_proxy::TcpProxyConfig;
use legate_upstream::ClusterConfig;
use legate_upstream::cluster::check_unique_names;
use prost::Message;

/// Service identity given on the command line; it overrides the bootstrap's `node`, as in Envoy.
#[derive(Clone, Debug, Default)]
pub struct NodeOverrides {
    pub service_node: Option<String>,
    pub service_cluster: Option<String>,
    pub service_zone: Option<String>,
}

/// A network filter Legate runs. Each is terminal (the last of its chain), as in Envoy.
#[derive(Debug)]
pub enum NetworkFilter {
    HttpConnectionManager(Arc<HcmConfig>),
    /// tcp_proxy, and its `tunneling_config` if set.
    TcpProxy(Arc<TcpProxyConfig>, Option<Arc<TunnelConfig>>),
    Echo,
    /// `envoy.filters.network.direct_response`: the bytes to write before closing.
    DirectResponse(Arc<[u8]>),
    /// `envoy.filters.network.sni_cluster`: the tcp_proxy after it connects to the cluster
    /// named by the connection's SNI. Not terminal.
    SniCluster,
    /// `envoy.filters.network.rbac`: allows or denies the connection. Not terminal.
    Rbac(Arc<NetworkRbacConfig>),
}

/// Where a statsd sink's datagrams go: a UDP address, or a unix datagram socket (`pipe`).
#[derive(Debug)]
pub enum StatsdAddress {
    Udp(SocketAddr),
    Pipe(legate_core::address::Pipe),
}

#[derive(Debug)]
pub struct StatsdSinkConfig {
    pub address: StatsdAddress,
    pub prefix: String,
}

#[derive(Debug)]
pub enum RuntimeLayer {
    Static {
        name: String,
        values: legate_api::pb::google::protobuf::Struct,
    },
    Admin {
        name: String,
    },
}

/// A compiled resource with the proto it came from, encoded: equal bytes mean an unchanged
/// resource, and `/config_dump` shows them.
#[derive(Debug)]
pub struct Resource<T> {
    pub bytes: Vec<u8>,
    pub config: T,
}

/// `dynamic_resources`: where LDS and CDS come from (files only, yet).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DynamicSources {
    pub lds: Option<FileSource>,
    pub cds: Option<FileSource>,
}

#[derive(Debug)]
pub struct Config {
    pub node: Node,
    pub listeners: Vec<Resource<ListenerConfig<NetworkFilter>>>,
    pub clusters: Vec<Resource<ClusterConfig>>,
    pub dynamic: DynamicSources,
    pub admin: Option<AdminConfig>,
    pub stats_sinks: Vec<StatsdSinkConfig>,
    pub stats_flush_interval: Duration,
    pub runtime_layers: Vec<RuntimeLayer>,
}

impl Config {
    /// Compiles a loaded bootstrap. Static clusters and listeners are decoded and compiled one
    /// at a time (see [`LoadedBootstrap`]).
    pub fn compile(loaded: &LoadedBootstrap, overrides: &NodeOverrides) -> Compiled<Config> {
        let b = &loaded.bootstrap;
        let mut errors = Errors::default();

        let mut clusters = Vec::with_capacity(loaded.clusters.len());
        let mut names = Vec::with_capacity(loaded.clusters.len());
        for (i, cluster) in loaded.clusters().enumerate() {
            let path = format!("static_resources.clusters[{i}]");
            let cluster = match cluster {
                Ok(c) => c,
                Err(e) => {
                    errors.push(&path, format!("unable to decode: {e}"));
                    continue;
                }
            };
            names.push(cluster.name.clone());
            if let Some(c) = errors.take(&path, ClusterConfig::compile(&cluster)) {
                clusters.push(Resource {
                    bytes: loaded.clusters[i].clone(),
                    config: c,
                });
            }
        }
        if let Err(e) = check_unique_names(names.iter().map(String::as_str)) {
            errors.0.push(e.within("static_resources.clusters"));
        }
        let cluster_names: HashSet<&str> = names.iter().map(String::as_str).collect();

        let mut listeners = Vec::with_capacity(loaded.listeners.len());
        for (i, listener) in loaded.listeners().enumerate() {
            let path = format!("static_resources.listeners[{i}]");
            let listener = match listener {
                Ok(l) => l,
                Err(e) => {
                    errors.push(&path, format!("unable to decode: {e}"));
                    continue;
                }
            };
            if let Some(l) = errors.take(&path, compile_listener(&listener, &cluster_names)) {
                listeners.push((i, l));
            }
        }
        let dynamic = b
            .dynamic_resources
            .as_ref()
            .map(|d| {
                let mut source = |name: &str, s: &Option<ConfigSource>| {
                    let s = s.as_ref()?;
                    errors.take(
                        &format!("dynamic_resources.{name}"),
                        FileSource::from_proto(s).map_err(|e| vec![e]),
                    )
                };
                DynamicSources {
                    lds: source("lds_config", &d.lds_config),
                    cds: source("cds_config", &d.cds_config),
                }
            })
            .unwrap_or_default();
        let (duplicates, ignored) = check_unique(&listeners);
        errors.0.extend(duplicates);
        listeners.retain(|(i, l)| {
            let keep = !ignored.contains(i);
            if !keep {
                tracing::warn!(
                    "static_resources.listeners[{i}]: a listener named '{}' already exists; this one is ignored, as Envoy does",
                    l.name
                );
            }
            keep
        });

        let admin = b
            .admin
            .as_ref()
            .and_then(|a| errors.take("admin", AdminConfig::compile(a)));
        let mut stats_sinks = Vec::new();
        for (i, sink) in b.stats_sinks.iter().enumerate() {
            let path = format!("stats_sinks[{i}]");
            match &sink.config_type {
                Some(stats_sink::ConfigType::TypedConfig(any)) => {
                    match StatsdSink::decode(any.value.as_slice()) {
                        Ok(s) => {
                            if let Some(s) =
                                errors.take(&format!("{path}.typed_config"), statsd_sink(&s))
                            {
                                stats_sinks.push(s);
                            }
                        }
                        Err(e) => errors.push(&path, format!("unable to decode StatsdSink: {e}")),
                    }
                }
                None => errors.push(
                    &path,
                    format!(
                        "Didn't find a registered implementation for name: '{}'",
                        sink.name
                    ),
                ),
            }
        }
        let runtime_layers = b.layered_runtime.as_ref().map_or_else(Vec::new, |lr| {
            errors
                .take("layered_runtime", runtime_layers(&lr.layers))
                .unwrap_or_default()
        });

        let mut node = b.node.clone().unwrap_or_default();
        if let Some(id) = &overrides.service_node {
            node.id = id.clone();
        }
        if let Some(cluster) = &overrides.service_cluster {
            node.cluster = cluster.clone();
        }
        if let Some(zone) = &overrides.service_zone {
            node.locality.get_or_insert_with(Default::default).zone = zone.clone();
        }
        // Envoy refuses any xDS subscription, file-based ones too, without a node identity.
        if node.id.is_empty() || node.cluster.is_empty() {
            // In the order Envoy creates the subscriptions: static clusters (EDS), CDS,
            // static listeners (RDS, SDS), LDS.
            let subscription = if clusters.iter().any(|c| c.config.eds.is_some()) {
                Some("type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment")
            } else if dynamic.cds.is_some() {
                Some("type.googleapis.com/envoy.config.cluster.v3.Cluster")
            } else if listeners.iter().any(|(_, l)| uses_rds(l)) {
                Some("type.googleapis.com/envoy.config.route.v3.RouteConfiguration")
            } else if listeners.iter().any(|(_, l)| uses_sds(l)) {
                Some("TlsCertificateSdsApi")
            } else if dynamic.lds.is_some() {
                Some("type.googleapis.com/envoy.config.listener.v3.Listener")
            } else {
                None
            };
            if let Some(what) = subscription {
                errors.push(
                    "",
                    format!(
                        "{what}: node 'id' and 'cluster' are required. Set it either in 'node' config or via --service-node and --service-cluster options."
                    ),
                );
            }
        }

        errors.finish(|| Config {
            node,
            listeners: listeners
                .into_iter()
                .map(|(i, config)| Resource {
                    bytes: loaded.listeners[i].clone(),
                    config,
                })
                .collect(),
            clusters,
            dynamic,
            admin,
            stats_sinks,
            stats_flush_interval: duration_or(
                b.stats_flush_interval.as_ref(),
                Duration::from_secs(5),
            ),
            runtime_layers,
        })
    }
}

/// Whether a listener's routes come from RDS.
fn uses_rds(l: &ListenerConfig<NetworkFilter>) -> bool {
    l.filter_chains.iter().flat_map(|c| &c.filters).any(|f| {
        matches!(f, NetworkFilter::HttpConnectionManager(h) if h.routes.static_table().is_none())
    })
}

/// Whether some of a listener's TLS settings come from SDS.
fn uses_sds(l: &ListenerConfig<NetworkFilter>) -> bool {
    l.filter_chains
        .iter()
        .any(|c| c.tls.as_ref().is_some_and(|t| t.uses_sds()))
}

/// Compiles a listener (static, or from LDS). `clusters`: the names of the clusters that exist,
/// for the routes of a `route_config` to be checked against.
pub fn compile_listener(
    listener: &Listener,
    clusters: &HashSet<&str>,
) -> Compiled<ListenerConfig<NetworkFilter>> {
    ListenerConfig::compile(listener, |f| network_filter(f, clusters))
        .and_then(check_terminal_filters(listener))
}

const HCM_NAME: &str = "envoy.filters.network.http_connection_manager";
const HCM_TYPE: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY_TYPE: &str = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const ECHO_TYPE: &str = "envoy.extensions.filters.network.echo.v3.Echo";
const DIRECT_RESPONSE_TYPE: &str = "envoy.extensions.filters.network.direct_response.v3.Config";
const SNI_CLUSTER_TYPE: &str = "envoy.extensions.filters.network.sni_cluster.v3.SniCluster";
const SNI_CLUSTER_NAME: &str = "envoy.filters.network.sni_cluster";
const RBAC_TYPE: &str = "envoy.extensions.filters.network.rbac.v3.RBAC";

/// The extension name Envoy reports for a network filter's config type.
fn network_filter_extension(type_name: &str) -> Option<&'static str> {
    Some(match type_name {
        HCM_TYPE => HCM_NAME,
        TCP_PROXY_TYPE => "envoy.filters.network.tcp_proxy",
        ECHO_TYPE => "envoy.filters.network.echo",
        DIRECT_RESPONSE_TYPE => "envoy.filters.network.direct_response",
        _ => return None,
    })
}

/// Every network filter Legate runs is terminal, and Envoy requires a terminal filter to be
/// the last of its chain.
fn check_terminal_filters<F>(
    l: &legate_api::pb::envoy::config::listener::v3::Listener,
) -> impl FnOnce(ListenerConfig<F>) -> Compiled<ListenerConfig<F>> + '_ {
    move |compiled| {
        for chain in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
            if let Some(last) = chain.filters.last()
                && let Some(filter::ConfigType::TypedConfig(any)) = &last.config_type
                && let Some(kind) = match legate_api::any::type_name(&any.type_url) {
                    SNI_CLUSTER_TYPE => Some(SNI_CLUSTER_NAME),
                    RBAC_TYPE => Some("envoy.filters.network.rbac"),
                    _ => None,
                }
            {
                return Err(vec![ConfigError::new(
                    "filter_chains",
                    format!(
                        "Error: non-terminal filter named {} of type {kind} is the last filter in a network filter chain.",
                        last.name
                    ),
                )]);
            }
            let n = chain.filters.len();
            for f in chain.filters.iter().take(n.saturating_sub(1)) {
                if let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type
                    && let Some(ext) =
                        network_filter_extension(legate_api::any::type_name(&any.type_url))
                {
                    return Err(vec![ConfigError::new(
                        "filter_chains",
                        format!(
                            "Error: terminal filter named {} of type {ext} must be the last filter in a network filter chain.",
                            f.name
                        ),
                    )]);
                }
            }
        }
        Ok(compiled)
    }
}

/// Compiles one network filter of a listener's chain.
fn network_filter(f: &Filter, clusters: &HashSet<&str>) -> Compiled<NetworkFilter> {
    let any = match &f.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => any,
        Some(filter::ConfigType::ConfigDiscovery(_)) => {
            return Err(vec![ConfigError::new(
                "config_discovery",
                "filter config discovery is not supported by Legate",
            )]);
        }
        None if f.name == HCM_NAME => {
            return Err(vec![ConfigError::new(
                "typed_config",
                format!("{HCM_NAME} requires a typed_config"),
            )]);
        }
        None => {
            return Err(vec![ConfigError::new(
                "",
                format!(
                    "Didn't find a registered implementation for name: '{}'",
                    f.name
                ),
            )]);
        }
    };
    let within = |e: Vec<ConfigError>| {
        e.into_iter()
            .map(|e| e.within("typed_config"))
            .collect::<Vec<_>>()
    };
    let decode_error = |what: &str, e: prost::DecodeError| {
        vec![ConfigError::new(
            "typed_config",
            format!("unable to decode {what}: {e}"),
        )]
    };
    match legate_api::any::type_name(&any.type_url) {
        HCM_TYPE => {}
        // tcp_proxy's clusters are looked up per connection: an unknown one is counted in
        // `downstream_cx_no_route`, not refused (Envoy accepts it too, for CDS to add later).
        TCP_PROXY_TYPE => {
            let p =
                TcpProxy::decode(any.value.as_slice()).map_err(|e| decode_error("TcpProxy", e))?;
            let mut errors = legate_core::Errors::default();
            let config = errors.take("", TcpProxyConfig::compile(&p));
            let tunnel = match &p.tunneling_config {
                Some(t) => errors
                    .take("tunneling_config", TunnelConfig::compile(t))
                    .map(Arc::new),
                None => None,
            };
            let config = errors.finish(|| config).map_err(within)?;
            return Ok(NetworkFilter::TcpProxy(
                Arc::new(config.expect("compiled when there are no errors")),
                tunnel,
            ));
        }
        ECHO_TYPE => return Ok(NetworkFilter::Echo),
        SNI_CLUSTER_TYPE => return Ok(NetworkFilter::SniCluster),
        RBAC_TYPE => {
            let r = NetworkRbacProto::decode(any.value.as_slice())
                .map_err(|e| decode_error("RBAC", e))?;
            let config = NetworkRbacConfig::compile(&r).map_err(within)?;
            return Ok(NetworkFilter::Rbac(Arc::new(config)));
        }
        DIRECT_RESPONSE_TYPE => {
            let c = DirectResponseConfig::decode(any.value.as_slice())
                .map_err(|e| decode_error("direct_response Config", e))?;
            let bytes = legate_net::direct_response::compile(&c).map_err(within)?;
            return Ok(NetworkFilter::DirectResponse(bytes.into()));
        }
        _ => {
            return Err(vec![ConfigError::new(
                "typed_config",
                format!(
                    "Didn't find a registered network filter implementation for '{}' with type URL '{}'",
                    f.name, any.type_url
                ),
            )]);
        }
    }
    let hcm = HttpConnectionManager::decode(any.value.as_slice()).map_err(|e| {
        vec![ConfigError::new(
            "typed_config",
            format!("unable to decode HttpConnectionManager: {e}"),
        )]
    })?;
    let config = HcmConfig::compile(&hcm).map_err(|e| {
        e.into_iter()
            .map(|e| e.within("typed_config"))
            .collect::<Vec<_>>()
    })?;
    // Envoy checks that every cluster a static route table names exists, unless the table
    // sets `validate_clusters: false`.
    let validate = match &hcm.route_specifier {
        Some(RouteSpecifier::RouteConfig(rc)) => bool_or(rc.validate_clusters.as_ref(), true),
        _ => false,
    };
    if validate && let Some(table) = config.routes.static_table() {
        let unknown: Vec<ConfigError> = table
            .referenced_clusters()
            .into_iter()
            .filter(|(_, c)| !clusters.contains(c))
            .map(|(path, c)| {
                ConfigError::new(
                    format!("typed_config.route_config.{path}"),
                    format!("route: unknown cluster '{c}'"),
                )
            })
            .collect();
        if !unknown.is_empty() {
            return Err(unknown);
        }
    }
    Ok(NetworkFilter::HttpConnectionManager(Arc::new(config)))
}

/// A statsd sink. Statsd speaks UDP whatever the address's `protocol` says, or datagrams over
/// a unix socket (`pipe`), as in Envoy.
fn statsd_sink(s: &StatsdSink) -> Compiled<StatsdSinkConfig> {
    let err = |path: &str, msg: String| Err(vec![ConfigError::new(path, msg)]);
    let Some(statsd_sink::StatsdSpecifier::Address(addr)) = &s.statsd_specifier else {
        return err(
            "",
            "an address is required (tcp_cluster_name is not supported by Legate)".into(),
        );
    };
    let prefix = if s.prefix.is_empty() {
        "envoy".into()
    } else {
        s.prefix.clone()
    };
    if let Some(pipe) = legate_core::address::pipe(addr) {
        return Ok(StatsdSinkConfig {
            address: StatsdAddress::Pipe(pipe.map_err(|e| legate_core::within(e, "address"))?),
            prefix,
        });
    }
    let Some(address::Address::SocketAddress(sa)) = &addr.address else {
        return err("address", "a socket address is required".into());
    };
    let Ok(ip) = sa.address.parse() else {
        return err(
            "address.socket_address.address",
            format!("malformed IP address: {}", sa.address),
        );
    };
    let port = match sa.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => p as u16,
        _ => {
            return err(
                "address.socket_address.port_value",
                "a port is required".into(),
            );
        }
    };
    Ok(StatsdSinkConfig {
        address: StatsdAddress::Udp(SocketAddr::new(ip, port)),
        prefix,
    })
}

fn runtime_layers(
    layers: &[legate_api::pb::envoy::config::bootstrap::v3::RuntimeLayer],
) -> Compiled<Vec<RuntimeLayer>> {
    let mut errors = Errors::default();
    let mut names = HashSet::new();
    let mut out = Vec::new();
    let mut admin_layers = 0;
    for (i, layer) in layers.iter().enumerate() {
        let path = format!("layers[{i}]");
        if !names.insert(layer.name.as_str()) {
            errors.push(
                &format!("{path}.name"),
                format!("Duplicate layer name: {}", layer.name),
            );
        }
        match &layer.layer_specifier {
            Some(runtime_layer::LayerSpecifier::StaticLayer(values)) => {
                out.push(RuntimeLayer::Static {
                    name: layer.name.clone(),
                    values: values.clone(),
                })
            }
            Some(runtime_layer::LayerSpecifier::AdminLayer(_)) => {
                admin_layers += 1;
                if admin_layers > 1 {
                    errors.push(&path, "Too many admin layers specified in LayeredRuntime, at most one may be specified");
                }
                out.push(RuntimeLayer::Admin {
                    name: layer.name.clone(),
                })
            }
            _ => errors.push(
                &path,
                "only static_layer and admin_layer are supported by Legate yet",
            ),
        }
    }
    errors.finish(|| out)
}
