//! HTTP: the connection manager's compiled configuration ([`hcm::HcmConfig`]), route tables
//! ([`route::RouteTable`]) with Envoy's virtual-host precedence, route selection per request
//! ([`route_match`]), path/host rewrites and redirect locations ([`rewrite`]), header mutations
//! ([`header_mutation`]), and the HTTP filter registry. The codecs and the router build on these.

pub mod conn_manager;
pub mod filters;
pub mod h1;
pub mod hash_policy;
pub mod hcm;
pub mod header_mutation;
pub mod headers;
pub mod local_reply;
pub mod path;
pub mod rds;
pub mod rewrite;
pub mod route;
pub mod route_match;
pub mod router;
pub mod stats;
pub mod substitution;
pub mod tunnel;
