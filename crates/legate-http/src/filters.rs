//! The HTTP filters Legate implements, by Envoy's type URL and well-known name. This is the one
//! place that maps an `http_filters` entry to code.

use legate_api::pb::google::protobuf::Any;

/// A known HTTP filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpFilterKind {
    Router,
}

struct Registered {
    kind: HttpFilterKind,
    name: &'static str,
    type_name: &'static str,
    terminal: bool,
}

const REGISTRY: &[Registered] = &[Registered {
    kind: HttpFilterKind::Router,
    name: "envoy.filters.http.router",
    type_name: "envoy.extensions.filters.http.router.v3.Router",
    terminal: true,
}];

/// Finds a filter by its `typed_config` type, or by name when there is no `typed_config`
/// (Envoy accepts `- name: envoy.filters.http.router` alone).
pub fn lookup(name: &str, typed_config: Option<&Any>) -> Result<(HttpFilterKind, bool), String> {
    let found = match typed_config {
        Some(any) => {
            let type_name = legate_api::any::type_name(&any.type_url);
            REGISTRY.iter().find(|r| r.type_name == type_name).ok_or_else(|| {
                format!("Didn't find a registered implementation for '{name}' with type URL: '{type_name}'")
            })?
        }
        None => REGISTRY
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| format!("Didn't find a registered implementation for name: '{name}'"))?,
    };
    Ok((found.kind, found.terminal))
}
