//! `/config_dump`: Envoy's `envoy.admin.v3.ConfigDump` of the running configuration —
//! the bootstrap, then the clusters, listeners, scoped routes, routes and secrets dumps, in
//! Envoy's order — and its parameters (`source/server/admin/config_dump_handler.cc`):
//!
//! * `resource=<repeated field>` (`static_clusters`, `dynamic_listeners`, ...): only the
//!   elements of that field, each with the element type's `@type`; `{}` when there are none,
//!   404 `<resource> not found in config dump` for a field no dump has.
//! * `mask=<FieldMask>`: only the named fields, applied to each dump (or to each element with
//!   `resource`). A mask no dump can use is a 400, as in Envoy.
//! * `name_regex=<RE2>`: only resources whose whole name matches.
//!
//! The `envoy.admin.v3` wrappers are not in Legate's descriptor pool, so they are modelled
//! here ([`Dump`]); the configuration messages inside them are in the pool and are rendered by
//! prost-reflect. Static routes are the `route_config`s inlined in the listeners' HTTP
//! connection managers, as Envoy reports them.

use std::time::{SystemTime, UNIX_EPOCH};

use http::StatusCode;
use legate_api::descriptors::pool;
use legate_api::pb::envoy::config::bootstrap::v3::Bootstrap;
use legate_api::pb::envoy::config::core::v3::Node;
use legate_api::pb::envoy::config::listener::v3::{Filter, Listener, filter};
use legate_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use prost::Message;
use prost_reflect::{DynamicMessage, Kind, MessageDescriptor, ReflectMessage, Value};
use regex::Regex;

use crate::json::{self, Json};
use crate::state::{ConfigDumpSource, DynamicResource};

const TYPE_PREFIX: &str = "type.googleapis.com/";
const HCM: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// The query parameters of `/config_dump`.
#[derive(Debug, Default)]
pub struct DumpParams {
    pub resource: Option<String>,
    /// FieldMask paths, split on `.`.
    pub mask: Option<Vec<Vec<String>>>,
    pub name_regex: Option<Regex>,
    /// `include_eds`: the EDS assignments too.
    pub include_eds: bool,
}

impl DumpParams {
    /// Reads the parameters; an invalid `name_regex` is a 400 with Envoy's message.
    pub fn parse(query: &crate::query::Query) -> Result<DumpParams, String> {
        let name_regex = match query.get("name_regex").filter(|r| !r.is_empty()) {
            Some(r) => Some(
                Regex::new(&format!(
                    "^(?:{})$",
                    legate_core::stats::tags::re2_to_rust(r)
                ))
                .map_err(|e| {
                    format!(
                        "INVALID_ARGUMENT: Error while parsing name_regex from {r}: {}",
                        e.to_string().lines().last().unwrap_or("").trim()
                    )
                })?,
            ),
            None => None,
        };
        let mask = query.get("mask").filter(|m| !m.is_empty()).map(|m| {
            m.split(',')
                .map(|p| p.split('.').map(str::to_owned).collect())
                .collect()
        });
        Ok(DumpParams {
            resource: query
                .get("resource")
                .filter(|r| !r.is_empty())
                .map(str::to_owned),
            mask,
            name_regex,
            include_eds: query.get("include_eds").is_some(),
        })
    }
}

/// One value inside a dump wrapper.
enum Part {
    /// A message of the pool, printed inline (`bootstrap`).
    Message(DynamicMessage),
    /// A message of the pool packed in an `Any` (`cluster`, `listener`, `route_config`).
    Any(DynamicMessage),
    Timestamp(SystemTime),
    /// A string field (`version_info`).
    Str(String),
    /// A wrapper message in a field (`active_state`).
    Object(Box<Dump>),
    List(Vec<Dump>),
}

/// An `envoy.admin.v3` wrapper message: its full name and its fields in proto order.
struct Dump {
    type_name: &'static str,
    fields: Vec<(&'static str, Part)>,
}

/// The response: status, content type (None: Envoy sends none) and body.
pub type Response = (StatusCode, Option<&'static str>, String);

/// `GET /config_dump`.
/// `endpoints`: every cluster's assignment (and whether it came from CDS), for `include_eds`.
pub fn render(
    source: &ConfigDumpSource,
    node: &Node,
    params: &DumpParams,
    endpoints: Option<&[(bool, DynamicResource)]>,
) -> Response {
    let dumps = build(source, node, params.name_regex.as_ref(), endpoints);
    match &params.resource {
        Some(resource) => render_resource(dumps, resource, params.mask.as_deref()),
        None => render_all(dumps, params.mask.as_deref()),
    }
}

fn json_ok(body: Json) -> Response {
    (StatusCode::OK, Some("application/json"), body.to_pretty())
}

fn render_all(dumps: Vec<Dump>, mask: Option<&[Vec<String>]>) -> Response {
    let mut configs = Vec::new();
    match mask {
        None => configs.extend(dumps.iter().map(Dump::to_json)),
        Some(paths) => {
            // Envoy applies the mask to every dump it is valid for, and fails only when it is
            // valid for none.
            let mut any_valid = false;
            for mut dump in dumps {
                if paths.iter().all(|p| dump.validates(p)) {
                    any_valid = true;
                    dump.trim(paths);
                    if !dump.fields.is_empty() {
                        configs.push(dump.to_json());
                    }
                }
            }
            if !any_valid {
                let paths: Vec<String> = paths.iter().map(|p| p.join(".")).collect();
                return (
                    StatusCode::BAD_REQUEST,
                    Some("text/plain"),
                    format!(
                        "FieldMask {} could not be successfully applied to any configs.",
                        paths.join(",")
                    ),
                );
            }
        }
    }
    json_ok(configs_object(configs))
}

fn render_resource(dumps: Vec<Dump>, resource: &str, mask: Option<&[Vec<String>]>) -> Response {
    let elements = dumps.into_iter().find_map(|d| {
        d.fields.into_iter().find_map(|(name, part)| match part {
            Part::List(items) if name == resource => Some(items),
            _ => None,
        })
    });
    let Some(mut elements) = elements else {
        return (
            StatusCode::NOT_FOUND,
            Some("text/plain"),
            format!("{resource} not found in config dump"),
        );
    };
    if let Some(paths) = mask {
        if elements
            .iter()
            .any(|e| !paths.iter().all(|p| e.validates(p)))
        {
            let paths: Vec<String> = paths
                .iter()
                .map(|p| format!("paths: {}", json::quote(&p.join("."))))
                .collect();
            return (
                StatusCode::BAD_REQUEST,
                Some("text/plain"),
                format!(
                    "FieldMask {}\n could not be successfully used.",
                    paths.join("\n")
                ),
            );
        }
        elements.iter_mut().for_each(|e| e.trim(paths));
    }
    json_ok(configs_object(elements.iter().map(Dump::to_json).collect()))
}

/// `{"configs": [...]}`, or `{}` when there is nothing (the field is then a default).
fn configs_object(configs: Vec<Json>) -> Json {
    Json::object()
        .field_if(!configs.is_empty(), "configs", Json::Array(configs))
        .build()
}

impl Dump {
    /// The dump as a top-level element of `configs`: with its `@type`.
    fn to_json(&self) -> Json {
        self.fields_json(Json::object().field(
            "@type",
            Json::str(format!("{TYPE_PREFIX}{}", self.type_name)),
        ))
    }

    /// The dump as a field or list item of another: its type is the field's.
    fn to_inner_json(&self) -> Json {
        self.fields_json(Json::object())
    }

    fn fields_json(&self, mut object: crate::json::ObjectBuilder) -> Json {
        for (name, part) in &self.fields {
            object = match part {
                Part::Message(m) => object.field(name, json::proto(m, false)),
                Part::Any(m) => object.field(name, json::proto(&pack(m), false)),
                Part::Timestamp(t) => object.field(name, Json::str(timestamp(*t))),
                Part::Str(s) if s.is_empty() => object,
                Part::Str(s) => object.field(name, Json::str(s)),
                Part::List(items) if items.is_empty() => object,
                Part::Object(dump) => object.field(name, dump.to_inner_json()),
                Part::List(items) => object.field(
                    name,
                    Json::Array(items.iter().map(Dump::to_inner_json).collect()),
                ),
            };
        }
        object.build()
    }

    /// Whether a FieldMask path names a field of this dump (inside `Any`s too, as Envoy
    /// checks a mask against the packed type).
    fn validates(&self, path: &[String]) -> bool {
        let Some((first, rest)) = path.split_first() else {
            return false;
        };
        self.fields.iter().any(|(name, part)| {
            *name == first.as_str()
                && match part {
                    Part::Message(m) | Part::Any(m) => validates(&m.descriptor(), rest),
                    Part::Str(_) => rest.is_empty(),
                    Part::Object(dump) => rest.is_empty() || dump.validates(rest),
                    Part::Timestamp(_) => {
                        rest.is_empty()
                            || (rest.len() == 1 && ["seconds", "nanos"].contains(&rest[0].as_str()))
                    }
                    Part::List(items) => rest.is_empty() || items.iter().all(|i| i.validates(rest)),
                }
        })
    }

    /// Keeps only the fields the mask names.
    fn trim(&mut self, paths: &[Vec<String>]) {
        self.fields
            .retain(|(name, _)| paths.iter().any(|p| p.first().is_some_and(|f| f == name)));
        for (name, part) in &mut self.fields {
            let sub: Vec<Vec<String>> = paths
                .iter()
                .filter(|p| p.first().is_some_and(|f| f == name))
                .map(|p| p[1..].to_vec())
                .collect();
            // A path that ends here keeps the whole field.
            if sub.iter().any(Vec::is_empty) {
                continue;
            }
            match part {
                Part::Message(m) | Part::Any(m) => trim_message(m, &sub),
                Part::List(items) => items.iter_mut().for_each(|i| i.trim(&sub)),
                Part::Object(dump) => dump.trim(&sub),
                Part::Timestamp(_) | Part::Str(_) => {}
            }
        }
        self.fields
            .retain(|(_, part)| !matches!(part, Part::List(items) if items.is_empty()));
    }
}

fn validates(desc: &MessageDescriptor, path: &[String]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return true;
    };
    match desc.get_field_by_name(first) {
        None => false,
        Some(_) if rest.is_empty() => true,
        Some(field) => match field.kind() {
            Kind::Message(inner) => validates(&inner, rest),
            _ => false,
        },
    }
}

/// `FieldMaskUtil::TrimMessage`: clears every field no path names; repeated messages are
/// trimmed element by element.
fn trim_message(message: &mut DynamicMessage, paths: &[Vec<String>]) {
    let desc = message.descriptor();
    for field in desc.fields() {
        let sub: Vec<Vec<String>> = paths
            .iter()
            .filter(|p| p.first().is_some_and(|f| f == field.name()))
            .map(|p| p[1..].to_vec())
            .collect();
        if sub.is_empty() {
            message.clear_field(&field);
            continue;
        }
        if sub.iter().any(Vec::is_empty) || !message.has_field(&field) {
            continue;
        }
        match message.get_field_mut(&field) {
            Value::Message(inner) => trim_message(inner, &sub),
            Value::List(items) => {
                for item in items {
                    if let Value::Message(inner) = item {
                        trim_message(inner, &sub);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Packs a message in a `google.protobuf.Any`, which prost-reflect prints with its `@type`.
fn pack(message: &DynamicMessage) -> DynamicMessage {
    match pool().get_message_by_name("google.protobuf.Any") {
        Some(desc) => {
            let mut any = DynamicMessage::new(desc);
            any.set_field_by_name(
                "type_url",
                Value::String(format!("{TYPE_PREFIX}{}", message.descriptor().full_name())),
            );
            any.set_field_by_name("value", Value::Bytes(message.encode_to_vec().into()));
            any
        }
        None => message.clone(),
    }
}

/// A message of the pool from its prost form (same bytes, reflected).
fn reflect<M: Message>(message: &M, full_name: &str) -> Option<DynamicMessage> {
    let desc = pool().get_message_by_name(full_name)?;
    DynamicMessage::decode(desc, message.encode_to_vec().as_slice()).ok()
}

fn reflect_bytes(bytes: &[u8], full_name: &str) -> Option<DynamicMessage> {
    let desc = pool().get_message_by_name(full_name)?;
    DynamicMessage::decode(desc, bytes).ok()
}

/// The dumps Envoy prints for a static configuration, filtered by `name_regex`.
fn build(
    source: &ConfigDumpSource,
    node: &Node,
    name_regex: Option<&Regex>,
    endpoints: Option<&[(bool, DynamicResource)]>,
) -> Vec<Dump> {
    let loaded_at = source.loaded_at.unwrap_or(UNIX_EPOCH);
    let named = |name: &str| name_regex.is_none_or(|r| r.is_match(name));
    let listeners: Vec<Listener> = source
        .listeners
        .iter()
        .filter_map(|b| Listener::decode(b.as_slice()).ok())
        .collect();

    // The bootstrap as the server sees it: static resources back in place, and the node as
    // reported (Envoy fills in user agent and extensions).
    let mut bootstrap: Bootstrap = source.bootstrap.clone();
    bootstrap.node = Some(node.clone());
    let statics = bootstrap
        .static_resources
        .get_or_insert_with(Default::default);
    statics.listeners.extend(listeners.iter().cloned());
    statics.clusters.extend(
        source
            .clusters
            .iter()
            .filter_map(|b| prost::Message::decode(b.as_slice()).ok()),
    );
    let mut dumps = Vec::new();
    if let Some(b) = reflect(&bootstrap, "envoy.config.bootstrap.v3.Bootstrap") {
        dumps.push(Dump {
            type_name: "envoy.admin.v3.BootstrapConfigDump",
            fields: vec![
                ("bootstrap", Part::Message(b)),
                ("last_updated", Part::Timestamp(loaded_at)),
            ],
        });
    }
    drop(bootstrap);

    let element = |type_name, field, message, ts| Dump {
        type_name,
        fields: vec![
            (field, Part::Any(message)),
            ("last_updated", Part::Timestamp(ts)),
        ],
    };
    let clusters = source
        .clusters
        .iter()
        .filter_map(|b| reflect_bytes(b, "envoy.config.cluster.v3.Cluster"))
        .filter(|c| {
            named(
                c.get_field_by_name("name")
                    .as_ref()
                    .and_then(|v| v.as_str())
                    .unwrap_or(""),
            )
        })
        .map(|c| {
            element(
                "envoy.admin.v3.ClustersConfigDump.StaticCluster",
                "cluster",
                c,
                loaded_at,
            )
        })
        .collect();
    let dynamic = |list: &[DynamicResource], type_name, field, full_name| -> Vec<Dump> {
        list.iter()
            .filter(|r| named(&r.name))
            .filter_map(|r| Some((r, reflect_bytes(&r.bytes, full_name)?)))
            .map(|(r, message)| versioned(type_name, field, r, message))
            .collect()
    };
    dumps.push(Dump {
        type_name: "envoy.admin.v3.ClustersConfigDump",
        fields: vec![
            ("version_info", Part::Str(source.cds_version.clone())),
            ("static_clusters", Part::List(clusters)),
            (
                "dynamic_active_clusters",
                Part::List(dynamic(
                    &source.dynamic_clusters,
                    "envoy.admin.v3.ClustersConfigDump.DynamicCluster",
                    "cluster",
                    "envoy.config.cluster.v3.Cluster",
                )),
            ),
            ("dynamic_warming_clusters", Part::List(Vec::new())),
        ],
    });
    if let Some(endpoints) = endpoints {
        // The bootstrap's clusters' assignments are static, CDS clusters' dynamic.
        let assignments = |via_api: bool, type_name| {
            endpoints
                .iter()
                .filter(|(api, _)| *api == via_api)
                .filter(|(_, r)| named(&r.name))
                .filter_map(|(_, r)| {
                    let message =
                        reflect_bytes(&r.bytes, "envoy.config.endpoint.v3.ClusterLoadAssignment")?;
                    Some(Dump {
                        type_name,
                        fields: vec![("endpoint_config", Part::Any(message))],
                    })
                })
                .collect()
        };
        dumps.push(Dump {
            type_name: "envoy.admin.v3.EndpointsConfigDump",
            fields: vec![
                (
                    "static_endpoint_configs",
                    Part::List(assignments(
                        false,
                        "envoy.admin.v3.EndpointsConfigDump.StaticEndpointConfig",
                    )),
                ),
                (
                    "dynamic_endpoint_configs",
                    Part::List(assignments(
                        true,
                        "envoy.admin.v3.EndpointsConfigDump.DynamicEndpointConfig",
                    )),
                ),
            ],
        });
    }
    let static_listeners = listeners
        .iter()
        .filter(|l| named(&l.name))
        .filter_map(|l| reflect(l, "envoy.config.listener.v3.Listener"))
        .map(|l| {
            element(
                "envoy.admin.v3.ListenersConfigDump.StaticListener",
                "listener",
                l,
                loaded_at,
            )
        })
        .collect();
    let dynamic_listeners = source
        .dynamic_listeners
        .iter()
        .filter(|l| named(&l.name))
        .map(|l| {
            let state = |field, r: &Option<DynamicResource>| {
                let r = r.as_ref()?;
                let message = reflect_bytes(&r.bytes, "envoy.config.listener.v3.Listener")?;
                Some((
                    field,
                    Part::Object(Box::new(versioned(
                        "envoy.admin.v3.ListenersConfigDump.DynamicListenerState",
                        "listener",
                        r,
                        message,
                    ))),
                ))
            };
            let mut fields = vec![("name", Part::Str(l.name.clone()))];
            fields.extend(state("active_state", &l.active));
            fields.extend(state("draining_state", &l.draining));
            Dump {
                type_name: "envoy.admin.v3.ListenersConfigDump.DynamicListener",
                fields,
            }
        })
        .collect();
    dumps.push(Dump {
        type_name: "envoy.admin.v3.ListenersConfigDump",
        fields: vec![
            ("version_info", Part::Str(source.lds_version.clone())),
            ("static_listeners", Part::List(static_listeners)),
            ("dynamic_listeners", Part::List(dynamic_listeners)),
        ],
    });
    dumps.push(Dump {
        type_name: "envoy.admin.v3.ScopedRoutesConfigDump",
        fields: vec![
            ("inline_scoped_route_configs", Part::List(Vec::new())),
            ("dynamic_scoped_route_configs", Part::List(Vec::new())),
        ],
    });

    let routes = listeners
        .iter()
        .flat_map(|l| l.filter_chains.iter().chain(l.default_filter_chain.iter()))
        .flat_map(|chain| chain.filters.iter())
        .filter_map(inline_route_config)
        .filter(|r| {
            named(
                r.get_field_by_name("name")
                    .as_ref()
                    .and_then(|v| v.as_str())
                    .unwrap_or(""),
            )
        })
        .map(|r| {
            element(
                "envoy.admin.v3.RoutesConfigDump.StaticRouteConfig",
                "route_config",
                r,
                loaded_at,
            )
        })
        .collect();
    dumps.push(Dump {
        type_name: "envoy.admin.v3.RoutesConfigDump",
        fields: vec![
            ("static_route_configs", Part::List(routes)),
            (
                "dynamic_route_configs",
                Part::List(dynamic(
                    &source.dynamic_routes,
                    "envoy.admin.v3.RoutesConfigDump.DynamicRouteConfig",
                    "route_config",
                    "envoy.config.route.v3.RouteConfiguration",
                )),
            ),
        ],
    });
    dumps.push(Dump {
        type_name: "envoy.admin.v3.SecretsConfigDump",
        fields: vec![
            ("static_secrets", Part::List(Vec::new())),
            ("dynamic_active_secrets", Part::List(Vec::new())),
            ("dynamic_warming_secrets", Part::List(Vec::new())),
        ],
    });
    dumps
}

/// A resource from a dynamic source as Envoy dumps it: `version_info`, the resource,
/// `last_updated`.
fn versioned(
    type_name: &'static str,
    field: &'static str,
    r: &DynamicResource,
    message: DynamicMessage,
) -> Dump {
    Dump {
        type_name,
        fields: vec![
            ("version_info", Part::Str(r.version_info.clone())),
            (field, Part::Any(message)),
            ("last_updated", Part::Timestamp(r.last_updated)),
        ],
    }
}

/// The `route_config` inlined in an HTTP connection manager filter.
fn inline_route_config(filter: &Filter) -> Option<DynamicMessage> {
    let Some(filter::ConfigType::TypedConfig(any)) = &filter.config_type else {
        return None;
    };
    if any.type_url.strip_prefix(TYPE_PREFIX) != Some(HCM) {
        return None;
    }
    let hcm = HttpConnectionManager::decode(any.value.as_slice()).ok()?;
    match hcm.route_specifier? {
        RouteSpecifier::RouteConfig(rc) => reflect(&rc, "envoy.config.route.v3.RouteConfiguration"),
        _ => None,
    }
}

/// A `google.protobuf.Timestamp` as proto3 JSON prints it, at Envoy's millisecond precision:
/// `2026-11-25T22:25:12.002Z` (no fraction when the milliseconds are zero).
pub fn timestamp(t: SystemTime) -> String {
    let t: chrono::DateTime<chrono::Utc> = t.into();
    if t.timestamp_subsec_millis() == 0 {
        t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_645_512_002);
        assert_eq!(timestamp(t), "2026-11-25T22:25:12.002Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }
}
