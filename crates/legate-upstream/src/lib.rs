//! Upstream clusters. Today: the compiled model of a cluster (`ClusterConfig`) read from
//! `envoy.config.cluster.v3.Cluster` with Envoy's defaults and checks. Discovery, load
//! balancers, connection pools and health checking build on it.

pub mod cluster;

pub use cluster::{ClusterConfig, LbPolicy, UpstreamProtocol};
