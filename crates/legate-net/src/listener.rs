//! `envoy.config.listener.v3.Listener` -> [`ListenerConfig`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use legate_api::pb::envoy::config::listener::v3::{Filter, FilterChainMatch, Listener};
use legate_core::address::{Pipe, listener_socket_addr, pipe, stat_name};
use legate_core::proto::{duration_or, u32_or};
use legate_core::{Compiled, ConfigError, Errors};

use crate::filter_chain::{ConnectionFacts, FilterChainIndex};
use crate::listener_filter::ListenerFilters;
use crate::tls::DownstreamTls;
use crate::udp_proxy::{self, UdpListenerConfig};
use legate_api::pb::envoy::config::listener::v3::listener_filter::ConfigType;

/// Envoy's default `per_connection_buffer_limit_bytes` (1 MiB).
pub const DEFAULT_BUFFER_LIMIT: u32 = 1024 * 1024;

#[derive(Debug)]
pub struct ListenerConfig<F> {
    pub name: String,
    /// The TCP/UDP address; for a `pipe` listener, the unspecified address with port 0, which
    /// nothing binds (`pipe` says where it listens).
    pub address: SocketAddr,
    /// `address.pipe`: a listener on a unix domain socket.
    pub pipe: Option<Pipe>,
    /// `stat_prefix`, or the address in Envoy's stat form (`127.0.0.1_10000`; a pipe's path
    /// verbatim).
    pub stat_prefix: String,
    /// `filter_chains`, then `default_filter_chain` if set.
    pub filter_chains: Vec<FilterChain<F>>,
    /// The index of `default_filter_chain` in `filter_chains`.
    pub default_filter_chain: Option<usize>,
    pub chain_index: FilterChainIndex,
    /// The chain every connection gets whatever its addresses and detected protocols (one
    /// chain without a match): the accept path then skips matching.
    pub only_chain: Option<usize>,
    pub listener_filters: ListenerFilters,
    pub per_connection_buffer_limit_bytes: u32,
    /// `socket_address.ipv4_compat`: an IPv6 listener also accepts IPv4 (mapped) clients.
    pub ipv4_compat: bool,
    /// A UDP listener (`socket_address.protocol: UDP`): its UDP proxy. It has no filter
    /// chains.
    pub udp: Option<UdpListenerConfig>,
    /// `use_original_dst`: a connection whose local address a listener filter restored is
    /// handed to the listener bound to that address, if there is one.
    pub use_original_dst: bool,
}

impl<F> ListenerConfig<F> {
    /// The chain that serves a connection: the best match, else `default_filter_chain`.
    pub fn select(&self, facts: &ConnectionFacts<'_>) -> Option<usize> {
        self.only_chain
            .or_else(|| self.chain_index.find(facts))
            .or(self.default_filter_chain)
    }
}

#[derive(Debug)]
pub struct FilterChain<F> {
    /// `name` (`%FILTER_CHAIN_NAME%`), shared with the connections it serves.
    pub name: std::sync::Arc<str>,
    pub filters: Vec<F>,
    /// `transport_socket` (`envoy.transport_sockets.tls`): TLS terminated on this chain.
    pub tls: Option<Arc<DownstreamTls>>,
    /// `transport_socket_connect_timeout`: the time a TLS handshake may take.
    pub transport_socket_connect_timeout: Option<Duration>,
}

impl<F> ListenerConfig<F> {
    /// Compiles a listener; `filter` compiles one network filter of a chain.
    pub fn compile(l: &Listener, mut filter: impl FnMut(&Filter) -> Compiled<F>) -> Compiled<Self> {
        let mut errors = Errors::default();
        let pipe = l
            .address
            .as_ref()
            .and_then(pipe)
            .map(|p| errors.take("address", p));
        let (address, is_udp) = match &l.address {
            // A unix domain socket: no IP address (see `ListenerConfig::address`).
            Some(_) if pipe.is_some() => (
                Some(SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0)),
                false,
            ),
            Some(a) => errors
                .take("address", listener_socket_addr(a))
                .map_or((None, false), |(a, udp)| (Some(a), udp)),
            None => {
                errors.push("address", "error adding listener: address is necessary");
                (None, false)
            }
        };
        // A UDP listener runs the UDP proxy (a listener filter) and no filter chain.
        let udp = if is_udp {
            errors.take("", UdpListenerConfig::compile(l))
        } else {
            for (i, f) in l.listener_filters.iter().enumerate() {
                if let Some(ConfigType::TypedConfig(any)) = &f.config_type
                    && udp_proxy::is_udp_proxy_type(&any.type_url)
                {
                    let path = format!("listener_filters[{i}]");
                    errors.0.push(udp_proxy::on_tcp_listener_error(&path));
                }
            }
            None
        };
        let mut chains = Vec::new();
        if !is_udp && l.filter_chains.is_empty() && l.default_filter_chain.is_none() {
            errors.push(
                "filter_chains",
                format!(
                    "error adding listener '{}': no filter chains specified",
                    display(l, address)
                ),
            );
        }
        let chain_index = match FilterChainIndex::build(
            l.filter_chains
                .iter()
                .map(|c| (c.name.as_str(), c.filter_chain_match.as_ref())),
        ) {
            Ok(index) => index,
            Err(e) => {
                // Envoy names the listener by its address in these errors.
                errors.push(
                    "filter_chains",
                    format!(
                        "error adding listener '{}': {}",
                        address.map_or_else(|| display(l, address), |a| a.to_string()),
                        e.0
                    ),
                );
                FilterChainIndex::default()
            }
        };
        let only_chain = (l.filter_chains.len() == 1
            && l.filter_chains[0]
                .filter_chain_match
                .as_ref()
                .is_none_or(|m| *m == FilterChainMatch::default()))
        .then_some(0);
        let listener_filters = if is_udp {
            Some(ListenerFilters::default())
        } else {
            errors.take("", ListenerFilters::compile(l))
        };
        for (i, chain) in l
            .filter_chains
            .iter()
            .chain(l.default_filter_chain.iter())
            .enumerate()
        {
            let path = if i < l.filter_chains.len() {
                format!("filter_chains[{i}]")
            } else {
                "default_filter_chain".into()
            };
            let mut filters = Vec::with_capacity(chain.filters.len());
            for (j, f) in chain.filters.iter().enumerate() {
                if let Some(f) = errors.take(&format!("{path}.filters[{j}]"), filter(f)) {
                    filters.push(f);
                }
            }
            let tls = chain.transport_socket.as_ref().and_then(|ts| {
                errors.take(
                    &format!("{path}.transport_socket"),
                    DownstreamTls::compile_transport_socket(ts).map(Arc::new),
                )
            });
            chains.push(FilterChain {
                name: chain.name.as_str().into(),
                filters,
                tls,
                transport_socket_connect_timeout: chain
                    .transport_socket_connect_timeout
                    .as_ref()
                    .map(|d| duration_or(Some(d), Duration::ZERO))
                    .filter(|d| !d.is_zero()),
            });
        }
        let Some(address) = address else {
            return Err(errors.0);
        };
        let pipe = pipe.flatten();
        // Envoy names a pipe listener, and its stats, by the path as written.
        let shown = pipe
            .as_ref()
            .map_or_else(|| address.to_string(), |p| p.path.clone());
        let ipv4_compat = matches!(
            l.address.as_ref().and_then(|a| a.address.as_ref()),
            Some(legate_api::pb::envoy::config::core::v3::address::Address::SocketAddress(sa)) if sa.ipv4_compat
        );
        errors.finish(|| ListenerConfig {
            ipv4_compat,
            udp,
            use_original_dst: l.use_original_dst.is_some_and(|v| v.value),
            name: if l.name.is_empty() {
                shown
            } else {
                l.name.clone()
            },
            address,
            stat_prefix: if !l.stat_prefix.is_empty() {
                l.stat_prefix.clone()
            } else if let Some(p) = &pipe {
                p.path.clone()
            } else {
                stat_name(&address)
            },
            pipe,
            default_filter_chain: l
                .default_filter_chain
                .as_ref()
                .map(|_| l.filter_chains.len()),
            filter_chains: chains,
            chain_index,
            only_chain,
            listener_filters: listener_filters.unwrap_or_default(),
            per_connection_buffer_limit_bytes: u32_or(
                l.per_connection_buffer_limit_bytes.as_ref(),
                DEFAULT_BUFFER_LIMIT,
            ),
        })
    }
}

fn display(l: &Listener, address: Option<SocketAddr>) -> String {
    if !l.name.is_empty() {
        l.name.clone()
    } else {
        address.map_or_else(String::new, |a| a.to_string())
    }
}

/// Envoy refuses two listeners bound to one address (of one protocol: a TCP and a UDP
/// listener may share it). Of two static listeners with one name it
/// keeps the first and ignores the second, and so does Legate (with a warning): the index of
/// each ignored listener is returned.
pub fn check_unique<F>(listeners: &[(usize, ListenerConfig<F>)]) -> (Vec<ConfigError>, Vec<usize>) {
    let mut errors = Vec::new();
    let mut ignored = Vec::new();
    let (mut names, mut addresses, mut pipes) = (HashSet::new(), HashSet::new(), HashSet::new());
    for (i, l) in listeners {
        let path = format!("static_resources.listeners[{i}]");
        if !names.insert(l.name.as_str()) {
            ignored.push(*i);
            continue;
        }
        // Two listeners on one pipe path would not both listen: the second bind replaces the
        // first one's socket file. Envoy refuses it as a duplicate address.
        let duplicate = match &l.pipe {
            Some(pipe) => !pipes.insert(pipe.path.as_str()),
            None => l.address.port() != 0 && !addresses.insert((l.address, l.udp.is_some())),
        };
        if duplicate {
            let shown = l
                .pipe
                .as_ref()
                .map_or_else(|| l.address.to_string(), |p| p.path.clone());
            errors.push(ConfigError::new(
                &path,
                format!(
                    "error adding listener: '{}' has duplicate address '{shown}' as existing listener",
                    l.name
                ),
            ));
        }
    }
    (errors, ignored)
}
