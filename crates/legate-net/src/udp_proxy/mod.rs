//! `envoy.filters.udp_listener.udp_proxy`: the UDP proxy of a UDP listener
//! (`socket_address.protocol: UDP`) — its compiled configuration (here), its stats with
//! Envoy's names ([`stats`]), and the datagram relay ([`relay`]). Which host serves a session is asked of an [`UdpUpstreams`] that
//! the binary provides (this crate does not know clusters).
//!
//! # Session lifecycle (Envoy's `UdpProxyFilter::ActiveSession`)
//!
//! * A datagram from a downstream source address (IP and port) that has no session opens one:
//!   the route's cluster is looked up (none: `downstream_sess_no_route`, the datagram is
//!   dropped), its load balancer picks a host (none: `cluster.<c>.upstream_cx_none_healthy`,
//!   dropped; with `hash_policies`, a RING_HASH or MAGLEV cluster picks it by the client's IP
//!   or a fixed key, as Envoy does), and a new UDP socket, bound to an ephemeral port and
//!   connected to that host, becomes the session's upstream (`downstream_sess_total`,
//!   `downstream_sess_active`). So the upstream sees one source port per downstream client.
//! * Datagrams from that client go out on the session's socket; datagrams the host sends back
//!   go to the client from the listener's socket. Both directions are counted
//!   (`udp.<prefix>.downstream_sess_{rx,tx}_{bytes,datagrams}`,
//!   `cluster.<c>.udp.sess_{rx,tx}_datagrams`, `cluster.<c>.upstream_cx_{rx,tx}_bytes_total`)
//!   and both reset the session's idle timer.
//! * A session with no datagram either way for `idle_timeout` (60 s unless set) ends
//!   (`idle_timeout`): its socket closes, and the client's next datagram opens a new session,
//!   perhaps on another host. A socket error does not end a session (Envoy counts it:
//!   `*_rx_errors`, `*_tx_errors`).
//! * When the listener stops (removed, replaced, `/drain_listeners`, shutdown) its sessions
//!   end at once: UDP has no connection to drain.
//! * A session whose host leaves its cluster (EDS no longer lists it, or the cluster is
//!   removed) ends, and the client's next datagram opens a session on a current host. Envoy
//!   ends such sessions when the host is removed; Legate notices at the client's next datagram
//!   or the session's next idle check, whichever comes first.
//! * A session that ends writes one line to each `access_log`: its addresses (client,
//!   listener, host, the session socket), `%BYTES_RECEIVED%` from the client and
//!   `%BYTES_SENT%` to it, its `%START_TIME%` and `%DURATION%`; Envoy 1.40 leaves
//!   `%UPSTREAM_CLUSTER%` unset (`-`) and `%CONNECTION_ID%` 0 in these lines, and so does Legate.
//!
//! Datagrams larger than the receive limit are dropped, not truncated: on the listener socket
//! `udp_listener_config.downstream_socket_config.max_rx_datagram_size` (1500 unless set;
//! `listener.<prefix>.udp.downstream_rx_datagram_dropped`), on session sockets
//! `upstream_socket_config.max_rx_datagram_size` when `prefer_gro` is false
//! (`cluster.<c>.udp.sess_rx_datagrams_dropped`). With `prefer_gro` (the default upstream, as
//! in Envoy) a session reads into Envoy's 64 KiB GRO buffer, so any datagram fits.
//!
//! A listener bound to a wildcard address (`0.0.0.0`, `::`) learns each datagram's
//! destination (`IP_PKTINFO`, [`pktinfo`]) and its session answers from that address, as
//! Envoy does; `%DOWNSTREAM_LOCAL_ADDRESS%` shows it.
//!
//! Workers: each worker has its own `SO_REUSEPORT` socket of a UDP listener (as Envoy binds
//! UDP listeners per worker), and its own sessions; the kernel hashes a client's address and
//! port to one socket, so a client's datagrams reach the worker that holds its session.

mod pktinfo;
mod relay;
mod stats;

pub use relay::{NoUpstream, SessionUpstream, UdpProxy, UdpUpstreams};
pub use stats::{UdpClusterStats, UdpProxyStats};

use std::sync::Arc;
use std::time::Duration;

use legate_api::pb::envoy::config::accesslog::v3::AccessLog;
use legate_api::pb::envoy::config::core::v3::UdpSocketConfig;
use legate_api::pb::envoy::config::listener::v3::{Listener, listener_filter};
use legate_api::pb::envoy::extensions::filters::udp::udp_proxy::v3::udp_proxy_config::hash_policy::PolicySpecifier;
use legate_api::pb::envoy::extensions::filters::udp::udp_proxy::v3::{
    Route, UdpProxyConfig as UdpProxyProto, udp_proxy_config::RouteSpecifier,
};
use legate_api::pb::xds::r#type::matcher::v3::matcher::on_match;
use legate_core::access_log::AccessLogger;
use legate_core::proto::{bool_or, duration_or};
use legate_core::{Compiled, ConfigError, Errors};
use prost::Message;

pub const UDP_PROXY: &str = "envoy.filters.udp_listener.udp_proxy";
const UDP_PROXY_TYPE: &str = "envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig";
const ROUTE_TYPE: &str = "envoy.extensions.filters.udp.udp_proxy.v3.Route";

/// Envoy's default `idle_timeout` of a session.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Envoy's default `max_rx_datagram_size`.
pub const DEFAULT_MAX_RX_DATAGRAM_SIZE: usize = 1500;
/// The buffer Envoy reads into with GRO: a datagram of any size fits.
const GRO_BUFFER: usize = 64 * 1024;

/// How a UDP socket receives (`envoy.config.core.v3.UdpSocketConfig`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpReceive {
    pub max_rx_datagram_size: usize,
    /// `prefer_gro`: read into a 64 KiB buffer; no datagram is too large.
    pub gro: bool,
}

impl UdpReceive {
    /// `gro_default`: Envoy's default of `prefer_gro` where the config is used (false for
    /// listener sockets, true for udp_proxy's upstream sockets).
    fn compile(c: Option<&UdpSocketConfig>, gro_default: bool) -> Self {
        let max = c
            .and_then(|c| c.max_rx_datagram_size.as_ref())
            .map_or(DEFAULT_MAX_RX_DATAGRAM_SIZE as u64, |v| v.value);
        UdpReceive {
            // The largest UDP payload is under 64 KiB: a larger limit changes nothing.
            max_rx_datagram_size: max.min(GRO_BUFFER as u64) as usize,
            gro: bool_or(c.and_then(|c| c.prefer_gro.as_ref()), gro_default),
        }
    }

    /// The read buffer: one byte over the limit, so that a larger datagram shows (a read
    /// that fills it) and is dropped rather than passed on truncated.
    fn buffer_len(&self) -> usize {
        if self.gro {
            GRO_BUFFER
        } else {
            self.max_rx_datagram_size + 1
        }
    }

    fn too_large(&self, len: usize) -> bool {
        !self.gro && len > self.max_rx_datagram_size
    }
}

/// The compiled `UdpProxyConfig`. The fields Legate does not implement are refused by the
/// support table before this runs.
#[derive(Clone, Debug)]
pub struct UdpProxyConfig {
    pub stat_prefix: String,
    /// The cluster of every session: `cluster`, or the route of the matcher's `on_no_match`.
    pub cluster: String,
    pub idle_timeout: Duration,
    pub upstream: UdpReceive,
    /// `access_log`: one line per session, when it ends.
    pub access_log: Vec<AccessLog>,
    /// `hash_policies` (at most one): the key a RING_HASH or MAGLEV cluster picks a new
    /// session's host by.
    pub hash_policy: Option<UdpHashPolicy>,
}

/// `UdpProxyConfig.HashPolicy`: Envoy hashes (xxHash64) the client's IP as text, or a fixed
/// key, so that all of one client's (or all) sessions go to one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UdpHashPolicy {
    SourceIp,
    Key(String),
}

impl UdpProxyConfig {
    pub fn compile(p: &UdpProxyProto) -> Compiled<Self> {
        let mut errors = Errors::default();
        #[allow(deprecated)]
        let cluster = match &p.route_specifier {
            Some(RouteSpecifier::Cluster(c)) => c.clone(),
            Some(RouteSpecifier::Matcher(m)) => {
                let action = m
                    .on_no_match
                    .as_ref()
                    .and_then(|o| o.on_match.as_ref())
                    .and_then(|o| match o {
                        on_match::OnMatch::Action(a) => Some(a),
                        on_match::OnMatch::Matcher(_) => None,
                    });
                match action.and_then(|a| a.typed_config.as_ref()) {
                    Some(any) if legate_api::any::type_name(&any.type_url) == ROUTE_TYPE => {
                        match Route::decode(any.value.as_slice()) {
                            Ok(r) => r.cluster,
                            Err(e) => {
                                errors.push(
                                    "matcher.on_no_match.action.typed_config",
                                    format!("unable to decode Route: {e}"),
                                );
                                String::new()
                            }
                        }
                    }
                    Some(any) => {
                        errors.push(
                            "matcher.on_no_match.action.typed_config",
                            format!(
                                "the action of a udp_proxy matcher must be a {ROUTE_TYPE}, not '{}'",
                                any.type_url
                            ),
                        );
                        String::new()
                    }
                    None => {
                        errors.push(
                            "matcher",
                            "Legate supports a udp_proxy matcher with on_no_match.action (a Route) only",
                        );
                        String::new()
                    }
                }
            }
            None => {
                errors.push("cluster", "a cluster or a matcher is required");
                String::new()
            }
        };
        for (i, log) in p.access_log.iter().enumerate() {
            errors.take(&format!("access_log[{i}]"), AccessLogger::check(log));
        }
        // `validate.rules` allow one policy and require its specifier.
        let hash_policy = p
            .hash_policies
            .first()
            .and_then(|h| h.policy_specifier.as_ref())
            .map(|h| match h {
                PolicySpecifier::SourceIp(_) => UdpHashPolicy::SourceIp,
                PolicySpecifier::Key(k) => UdpHashPolicy::Key(k.clone()),
            });
        errors.finish(|| UdpProxyConfig {
            hash_policy,
            access_log: p.access_log.clone(),
            stat_prefix: p.stat_prefix.clone(),
            cluster,
            idle_timeout: duration_or(p.idle_timeout.as_ref(), DEFAULT_IDLE_TIMEOUT),
            upstream: UdpReceive::compile(p.upstream_socket_config.as_ref(), true),
        })
    }
}

/// What a UDP listener runs: its proxy and how its socket receives.
#[derive(Clone, Debug)]
pub struct UdpListenerConfig {
    pub proxy: Arc<UdpProxyConfig>,
    pub downstream: UdpReceive,
}

impl UdpListenerConfig {
    /// The UDP half of a listener on a UDP address: `udp_listener_config` and exactly one
    /// `udp_proxy` listener filter. Filter chains are for QUIC, which Legate does not serve.
    pub fn compile(l: &Listener) -> Compiled<Self> {
        let mut errors = Errors::default();
        if !l.filter_chains.is_empty() {
            errors.push(
                "filter_chains",
                "filter chains on a UDP listener (QUIC) are not supported by Legate",
            );
        }
        if l.default_filter_chain.is_some() {
            errors.push(
                "default_filter_chain",
                "filter chains on a UDP listener (QUIC) are not supported by Legate",
            );
        }
        let mut proxy = None;
        for (i, f) in l.listener_filters.iter().enumerate() {
            let path = format!("listener_filters[{i}]");
            let any = match &f.config_type {
                Some(listener_filter::ConfigType::TypedConfig(any)) => any,
                Some(listener_filter::ConfigType::ConfigDiscovery(_)) => {
                    errors.push(
                        &format!("{path}.config_discovery"),
                        "listener filter config discovery is not supported by Legate",
                    );
                    continue;
                }
                None => {
                    errors.push(
                        &path,
                        format!(
                            "Didn't find a registered implementation for name: '{}'",
                            f.name
                        ),
                    );
                    continue;
                }
            };
            if legate_api::any::type_name(&any.type_url) != UDP_PROXY_TYPE {
                errors.push(
                    &format!("{path}.typed_config"),
                    format!(
                        "a UDP listener runs {UDP_PROXY} only in Legate, not '{}'",
                        any.type_url
                    ),
                );
                continue;
            }
            if proxy.is_some() {
                errors.push(
                    &path,
                    "Legate runs one udp_proxy listener filter per UDP listener",
                );
                continue;
            }
            match UdpProxyProto::decode(any.value.as_slice()) {
                Ok(p) => {
                    proxy =
                        errors.take(&format!("{path}.typed_config"), UdpProxyConfig::compile(&p))
                }
                Err(e) => errors.push(
                    &format!("{path}.typed_config"),
                    format!("unable to decode UdpProxyConfig: {e}"),
                ),
            }
        }
        if l.listener_filters.is_empty() {
            errors.push(
                "listener_filters",
                format!("a UDP listener needs the {UDP_PROXY} listener filter in Legate"),
            );
        }
        let downstream = UdpReceive::compile(
            l.udp_listener_config
                .as_ref()
                .and_then(|u| u.downstream_socket_config.as_ref()),
            false,
        );
        errors.finish(|| UdpListenerConfig {
            proxy: Arc::new(proxy.unwrap_or_else(|| UdpProxyConfig {
                stat_prefix: String::new(),
                cluster: String::new(),
                idle_timeout: DEFAULT_IDLE_TIMEOUT,
                upstream: UdpReceive::compile(None, true),
                access_log: Vec::new(),
                hash_policy: None,
            })),
            downstream,
        })
    }
}

/// Whether a compiled listener filter list holds the UDP proxy (a TCP listener must not).
pub fn is_udp_proxy_type(type_url: &str) -> bool {
    legate_api::any::type_name(type_url) == UDP_PROXY_TYPE
}

/// The error for a UDP proxy on a TCP listener.
pub fn on_tcp_listener_error(path: &str) -> ConfigError {
    ConfigError::new(
        path,
        format!("{UDP_PROXY} needs a UDP listener (address.socket_address.protocol: UDP)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_limits_follow_envoy_defaults() {
        let down = UdpReceive::compile(None, false);
        assert_eq!(down.max_rx_datagram_size, 1500);
        assert!(!down.gro);
        assert_eq!(down.buffer_len(), 1501);
        assert!(down.too_large(1501) && !down.too_large(1500));
        let up = UdpReceive::compile(None, true);
        assert!(up.gro && !up.too_large(65_000));
    }
}
