//! L4: listeners and what runs on their connections before (and instead of) HTTP: the
//! compiled model of a listener ([`listener::ListenerConfig`], generic over the network filter
//! it runs, so that the crates above plug their filters in without this crate knowing them),
//! filter-chain matching ([`filter_chain`]), the listener filters that inspect a new
//! connection ([`listener_filter`], [`tls_inspector`], [`http_inspector`], [`proxy_protocol`]),
//! and the L4 network
//! filters' configuration and byte moving ([`tcp_proxy`], [`pump`], [`direct_response`],
//! [`rbac`]), the UDP proxy of UDP listeners ([`udp_proxy`]), and
//! downstream TLS termination ([`tls`]): the certificate a handshake gets ([`cert_select`]),
//! certificates from SDS files ([`legate_core::tls::sds`]), session resumption ([`session_ticket`]).

pub mod cert_select;
pub mod direct_response;
pub mod filter_chain;
pub mod http_inspector;
pub mod listener;
pub mod listener_filter;
pub mod proxy_protocol;
pub mod pump;
pub mod rbac;
pub mod session_ticket;
pub mod tcp_proxy;
pub mod tls;
pub mod tls_inspector;
pub mod udp_proxy;
