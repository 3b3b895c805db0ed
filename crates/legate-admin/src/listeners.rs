//! `/listeners`: `name::address` per listener, or `envoy.admin.v3.Listeners` with
//! `?format=json`. Addresses are the bound ones: a listener configured on port 0 shows the
//! port the kernel chose.

use crate::clusters::address_json;
use crate::json::Json;
use crate::state::ListenerInfo;

pub fn render_text(listeners: &[ListenerInfo]) -> String {
    listeners
        .iter()
        .map(|l| match &l.pipe {
            Some(path) => format!("{}::{path}\n", l.name),
            None => format!("{}::{}\n", l.name, l.address),
        })
        .collect()
}

pub fn render_json(listeners: &[ListenerInfo]) -> String {
    let statuses: Vec<Json> = listeners
        .iter()
        .map(|l| {
            Json::object()
                .field("name", Json::str(&l.name))
                .field(
                    "local_address",
                    match &l.pipe {
                        // Envoy's `envoy.config.core.v3.Address` with its `pipe` set.
                        Some(path) => Json::object()
                            .field(
                                "pipe",
                                Json::object().field("path", Json::str(path)).build(),
                            )
                            .build(),
                        None => address_json(l.address),
                    },
                )
                .build()
        })
        .collect();
    Json::object()
        .field_if(
            !statuses.is_empty(),
            "listener_statuses",
            Json::Array(statuses),
        )
        .build()
        .to_pretty()
}
