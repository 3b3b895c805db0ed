//! The HTTP filters Legate implements, by Envoy's type URL. This is the one place that maps an
//! `http_filters` entry to code.

use legate_api::pb::google::protobuf::Any;

/// A known HTTP filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpFilterKind {
    Router,
}

struct Registered {
    kind: HttpFilterKind,
    /// The well-known name, as Envoy's docs give it (for documentation and logs).
    #[allow(dead_code)]
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

/// Finds a filter by the type of its `typed_config`; returns it and whether it is terminal.
pub fn lookup(name: &str, typed_config: Option<&Any>) -> Result<(HttpFilterKind, bool), String> {
    let any = legate_core::extension::typed_config(name, typed_config)?;
    let type_name = legate_api::any::type_name(&any.type_url);
    let found = REGISTRY
        .iter()
        .find(|r| r.type_name == type_name)
        .ok_or_else(|| {
            format!(
                "Didn't find a registered implementation for '{name}' with type URL: '{type_name}'"
            )
        })?;
    Ok((found.kind, found.terminal))
}
