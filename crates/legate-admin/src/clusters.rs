//! `/clusters`: Envoy's text rendering of every cluster, its circuit-breaker thresholds and
//! per-host counters (`source/server/admin/clusters_handler.cc`), and `?format=json`
//! (`envoy.admin.v3.Clusters`). `?filter=` keeps the clusters whose name the RE2 regex matches
//! anywhere.
//!
//! Per host, Envoy prints its counters and gauges merged and sorted by name, then `hostname`,
//! `health_flags`, `weight`, locality, `canary`, `priority` and the outlier detector's success
//! rates (`-1`: not computed; Legate has no outlier detection yet).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use legate_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use legate_upstream::Cluster;
use legate_upstream::cluster::CircuitBreakerLimits;
use legate_upstream::host::Host;
use regex::Regex;

use crate::json::Json;

/// A host's stats as `/clusters` names them: `(name, value, is_gauge)`, sorted by name.
fn host_stats(host: &Host) -> [(&'static str, u64, bool); 9] {
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    [
        ("cx_active", load(&host.active_connections), true),
        ("cx_connect_fail", load(&host.cx_connect_fail), false),
        ("cx_total", load(&host.cx_total), false),
        ("rq_active", load(&host.active_requests), true),
        ("rq_error", load(&host.rq_error), false),
        ("rq_pending_active", load(&host.pending_requests), true),
        ("rq_success", load(&host.rq_success), false),
        ("rq_timeout", load(&host.rq_timeout), false),
        ("rq_total", load(&host.rq_total), false),
    ]
}

/// Envoy's `health_flags` text: `healthy`, or the reasons a host is not (`/failed_active_hc`
/// is the only one Legate's hosts can have today).
fn health_flags(host: &Host) -> &'static str {
    if host.healthy() {
        "healthy"
    } else {
        "/failed_active_hc"
    }
}

fn locality(host: &Host) -> (&str, &str, &str) {
    match &host.locality {
        Some(l) => (&l.0, &l.1, &l.2),
        None => ("", "", ""),
    }
}

/// Whether `/clusters?filter=` keeps a cluster.
fn shown(cluster: &Cluster, filter: Option<&Regex>) -> bool {
    filter.is_none_or(|r| r.is_match(&cluster.name))
}

/// `GET /clusters`.
pub fn render_text(clusters: &[std::sync::Arc<Cluster>], filter: Option<&Regex>) -> String {
    let mut out = String::new();
    for cluster in clusters.iter().filter(|c| shown(c, filter)) {
        let name = &cluster.name;
        let _ = writeln!(
            out,
            "{name}::observability_name::{}",
            cluster.config.stat_name()
        );
        for (priority, limits) in [
            ("default_priority", &cluster.config.default_limits),
            ("high_priority", &cluster.config.high_limits),
        ] {
            for (field, value) in limit_fields(limits) {
                let _ = writeln!(out, "{name}::{priority}::{field}::{value}");
            }
        }
        let _ = writeln!(out, "{name}::added_via_api::{}", cluster.added_via_api);
        for host in &cluster.membership().hosts {
            let address = host.shown();
            for (stat, value, _) in host_stats(host) {
                let _ = writeln!(out, "{name}::{address}::{stat}::{value}");
            }
            let (region, zone, sub_zone) = locality(host);
            let _ = writeln!(out, "{name}::{address}::hostname::");
            let _ = writeln!(
                out,
                "{name}::{address}::health_flags::{}",
                health_flags(host)
            );
            let _ = writeln!(out, "{name}::{address}::weight::{}", host.weight);
            let _ = writeln!(out, "{name}::{address}::region::{region}");
            let _ = writeln!(out, "{name}::{address}::zone::{zone}");
            let _ = writeln!(out, "{name}::{address}::sub_zone::{sub_zone}");
            let _ = writeln!(out, "{name}::{address}::canary::false");
            let _ = writeln!(out, "{name}::{address}::priority::{}", host.priority);
            let _ = writeln!(out, "{name}::{address}::success_rate::-1");
            let _ = writeln!(out, "{name}::{address}::local_origin_success_rate::-1");
        }
    }
    out
}

fn limit_fields(limits: &CircuitBreakerLimits) -> [(&'static str, u32); 4] {
    [
        ("max_connections", limits.max_connections),
        ("max_pending_requests", limits.max_pending_requests),
        ("max_requests", limits.max_requests),
        ("max_retries", limits.max_retries),
    ]
}

/// A host's `envoy.config.core.v3.Address`: its socket address, or its `pipe`.
fn host_address_json(host: &legate_upstream::host::Host) -> Json {
    match &host.pipe {
        Some(path) => Json::object()
            .field(
                "pipe",
                Json::object().field("path", Json::str(&**path)).build(),
            )
            .build(),
        None => address_json(host.address),
    }
}

/// An `envoy.config.core.v3.Address` with a socket address.
pub fn address_json(address: SocketAddr) -> Json {
    Json::object()
        .field(
            "socket_address",
            Json::object()
                .field("address", Json::str(address.ip().to_string()))
                .field_if(address.port() != 0, "port_value", Json::num(address.port()))
                .build(),
        )
        .build()
}

/// `GET /clusters?format=json`: `envoy.admin.v3.Clusters`, printed without default fields.
pub fn render_json(clusters: &[std::sync::Arc<Cluster>], filter: Option<&Regex>) -> String {
    let statuses: Vec<Json> = clusters
        .iter()
        .filter(|c| shown(c, filter))
        .map(|c| cluster_json(c))
        .collect();
    Json::object()
        .field_if(
            !statuses.is_empty(),
            "cluster_statuses",
            Json::Array(statuses),
        )
        .build()
        .to_pretty()
}

fn cluster_json(cluster: &Cluster) -> Json {
    let hosts: Vec<Json> = cluster
        .membership()
        .hosts
        .iter()
        .map(|h| host_json(h))
        .collect();
    let thresholds = |limits: &CircuitBreakerLimits, high: bool| {
        let mut t = Json::object().field_if(high, "priority", Json::str("HIGH"));
        for (field, value) in limit_fields(limits) {
            t = t.field(field, Json::num(value));
        }
        t.build()
    };
    Json::object()
        .field("name", Json::str(&*cluster.name))
        .field_if(!hosts.is_empty(), "host_statuses", Json::Array(hosts))
        .field(
            "circuit_breakers",
            Json::object()
                .field(
                    "thresholds",
                    Json::Array(vec![
                        thresholds(&cluster.config.default_limits, false),
                        thresholds(&cluster.config.high_limits, true),
                    ]),
                )
                .build(),
        )
        .field_if(cluster.added_via_api, "added_via_api", Json::Bool(true))
        .field("observability_name", Json::str(cluster.config.stat_name()))
        .build()
}

fn host_json(host: &Host) -> Json {
    // `SimpleMetric { type, value, name }`: counters (type 0, the default) first, then gauges,
    // each sorted by name; zero values are defaults and are not printed.
    let stats = host_stats(host);
    let metrics: Vec<Json> = stats
        .iter()
        .filter(|s| !s.2)
        .chain(stats.iter().filter(|s| s.2))
        .map(|&(name, value, gauge)| {
            Json::object()
                .field_if(gauge, "type", Json::str("GAUGE"))
                .field_if(value != 0, "value", Json::int64(value))
                .field("name", Json::str(name))
                .build()
        })
        .collect();
    let (region, zone, sub_zone) = locality(host);
    let health = Json::object()
        .field_if(
            !host.healthy(),
            "failed_active_health_check",
            Json::Bool(true),
        )
        .field("eds_health_status", Json::str("HEALTHY"))
        .build();
    Json::object()
        .field("address", host_address_json(host))
        .field("stats", Json::Array(metrics))
        .field("health_status", health)
        .field("weight", Json::num(host.weight))
        .field(
            "locality",
            Json::object()
                .field_if(!region.is_empty(), "region", Json::str(region))
                .field_if(!zone.is_empty(), "zone", Json::str(zone))
                .field_if(!sub_zone.is_empty(), "sub_zone", Json::str(sub_zone))
                .build(),
        )
        .field_if(host.priority != 0, "priority", Json::num(host.priority))
        .build()
}

/// A cluster's hosts as the `ClusterLoadAssignment` `/config_dump?include_eds` shows.
pub fn load_assignment(cluster: &Cluster) -> ClusterLoadAssignment {
    use legate_api::pb::envoy::config::core::v3::{
        Address, HealthStatus, Locality, SocketAddress, address, socket_address,
    };
    use legate_api::pb::envoy::config::endpoint::v3::{
        Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
    };
    let mut groups: Vec<LocalityLbEndpoints> = Vec::new();
    for host in &cluster.membership().hosts {
        let locality = host.locality.as_ref().map(|l| Locality {
            region: l.0.clone(),
            zone: l.1.clone(),
            sub_zone: l.2.clone(),
        });
        let endpoint = LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(match &host.pipe {
                        Some(path) => {
                            address::Address::Pipe(legate_api::pb::envoy::config::core::v3::Pipe {
                                path: path.to_string(),
                                mode: 0,
                            })
                        }
                        None => address::Address::SocketAddress(SocketAddress {
                            address: host.address.ip().to_string(),
                            port_specifier: Some(socket_address::PortSpecifier::PortValue(
                                host.address.port() as u32,
                            )),
                            ..Default::default()
                        }),
                    }),
                }),
                ..Default::default()
            })),
            health_status: HealthStatus::Healthy as i32,
            load_balancing_weight: Some(legate_api::pb::google::protobuf::UInt32Value {
                value: host.weight,
            }),
            ..Default::default()
        };
        match groups
            .iter_mut()
            .find(|g| g.priority == host.priority && g.locality == locality)
        {
            Some(g) => g.lb_endpoints.push(endpoint),
            None => groups.push(LocalityLbEndpoints {
                locality,
                priority: host.priority,
                lb_endpoints: vec![endpoint],
                ..Default::default()
            }),
        }
    }
    ClusterLoadAssignment {
        cluster_name: cluster.name.to_string(),
        endpoints: groups,
        ..Default::default()
    }
}
