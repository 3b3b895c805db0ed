//! HTTP: the connection manager's compiled configuration ([`hcm::HcmConfig`]), route tables
//! ([`route::RouteTable`]) with Envoy's virtual-host precedence, and the HTTP filter registry.
//! The codecs and the router build on these.

pub mod filters;
pub mod hcm;
pub mod route;
