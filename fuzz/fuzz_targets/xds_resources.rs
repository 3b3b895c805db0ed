//! Feeds arbitrary bytes through the xDS file path: a `DiscoveryResponse` (the first byte picks
//! the format and the resource type) is parsed, checked, and each resource compiled as the
//! control thread would (listeners, clusters, route tables, endpoint assignments). Any panic,
//! overflow or hang is a bug: a bad file must become an error.

#![no_main]

use std::collections::HashSet;

use legate_api::load::Format;
use legate_api::pb::envoy::config::cluster::v3::Cluster;
use legate_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use legate_api::pb::envoy::config::listener::v3::Listener;
use legate_api::pb::envoy::config::route::v3::RouteConfiguration;
use libfuzzer_sys::fuzz_target;
use prost::Message;

const TYPES: [&str; 4] = [
    "envoy.config.listener.v3.Listener",
    "envoy.config.cluster.v3.Cluster",
    "envoy.config.route.v3.RouteConfiguration",
    "envoy.config.endpoint.v3.ClusterLoadAssignment",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else { return };
    let format = match selector % 4 {
        0 => Format::Yaml,
        1 => Format::Json,
        2 => Format::Proto,
        _ => Format::ProtoText,
    };
    let resource_type = TYPES[(selector as usize / 4) % 4];
    let support = legate::supported::support();
    let Ok(loaded) = legate_api::resources::load_bytes(bytes, format, resource_type, support)
    else {
        return;
    };
    let clusters = HashSet::from(["a", "b"]);
    for any in &loaded.response.resources {
        let value = any.value.as_slice();
        match resource_type {
            t if t == TYPES[0] => {
                if let Ok(l) = Listener::decode(value) {
                    let _ = legate::config::compile_listener(&l, &clusters);
                }
            }
            t if t == TYPES[1] => {
                if let Ok(c) = Cluster::decode(value) {
                    let _ = legate_upstream::ClusterConfig::compile(&c);
                }
            }
            t if t == TYPES[2] => {
                if let Ok(r) = RouteConfiguration::decode(value) {
                    let _ = legate_http::route::RouteTable::compile(&r);
                }
            }
            _ => {
                if let Ok(la) = ClusterLoadAssignment::decode(value) {
                    let _ = legate_upstream::cluster::compile_endpoints(&la);
                }
            }
        }
    }
});
