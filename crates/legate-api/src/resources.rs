//! xDS resource files: a `DiscoveryResponse` (YAML, JSON, binary or text proto, by the file's
//! extension, as Envoy reads `path_config_source` files), checked like a bootstrap, with its
//! resources kept as typed `Any`s for the subscription that asked for them to decode.

use std::path::Path;

use prost::Message;
use prost_reflect::MessageDescriptor;

use crate::check::{Support, check};
use crate::descriptors::pool;
use crate::error::ConfigError;
use crate::load::{Format, parse_streaming};
use crate::pb::envoy::service::discovery::v3::DiscoveryResponse;

pub const DISCOVERY_RESPONSE: &str = "envoy.service.discovery.v3.DiscoveryResponse";

fn descriptor() -> MessageDescriptor {
    pool()
        .get_message_by_name(DISCOVERY_RESPONSE)
        .expect("DiscoveryResponse is in the pool")
}

/// Why a resource file was not taken, in the two ways Envoy counts: `update_failure` for a
/// file that cannot be read or parsed, `update_rejected` for one that parses into resources
/// that are not valid.
#[derive(Debug)]
pub enum LoadError {
    Unreadable(ConfigError),
    Invalid(Vec<ConfigError>),
}

/// A resource file as read.
#[derive(Debug)]
pub struct Loaded {
    pub response: DiscoveryResponse,
    /// Fields the resources have that Envoy's API does not: skipped, as Envoy skips them in
    /// dynamic resources (with a warning, and `server.dynamic_unknown_fields`). The first
    /// one found, with its path.
    pub unknown_field: Option<ConfigError>,
}

/// Reads and checks the `DiscoveryResponse` at `path`; every resource must be of
/// `resource_type` (a full message name such as `envoy.config.cluster.v3.Cluster`).
pub fn load_file(
    path: &Path,
    resource_type: &str,
    support: &'static Support,
) -> Result<Loaded, LoadError> {
    let bytes = std::fs::read(path).map_err(|e| {
        LoadError::Unreadable(ConfigError::new(
            "",
            format!("unable to read '{}': {e}", path.display()),
        ))
    })?;
    load_bytes(&bytes, Format::from_path(path), resource_type, support)
}

/// [`load_file`] on bytes already read.
pub fn load_bytes(
    bytes: &[u8],
    format: Format,
    resource_type: &str,
    support: &'static Support,
) -> Result<Loaded, LoadError> {
    let desc = descriptor();
    let (parsed, unknown_field) = match parse_streaming(&desc, format, bytes, &[], Some(support)) {
        Ok(parsed) => (parsed, None),
        Err(e) if is_unknown_field(&e) => {
            let message = crate::load::parse_ignoring_unknown_fields(&desc, format, bytes)
                .map_err(LoadError::Unreadable)?;
            let parsed = crate::load::Parsed {
                message,
                streamed: Vec::new(),
                errors: Vec::new(),
            };
            (parsed, Some(e))
        }
        Err(e) => return Err(LoadError::Unreadable(e)),
    };
    let response = load_parsed(parsed, resource_type, support).map_err(LoadError::Invalid)?;
    Ok(Loaded {
        response,
        unknown_field,
    })
}

fn load_parsed(
    parsed: crate::load::Parsed,
    resource_type: &str,
    support: &'static Support,
) -> Result<DiscoveryResponse, Vec<ConfigError>> {
    let mut message = parsed.message;
    let mut errors = parsed.errors;
    match crate::any::expand_typed_structs(&mut message, "") {
        Ok(_) => errors.extend(check(&message, support)),
        Err(e) => errors.push(e),
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let response = DiscoveryResponse::decode(message.encode_to_vec().as_slice()).map_err(|e| {
        vec![ConfigError::new(
            "",
            format!("unable to decode the DiscoveryResponse: {e}"),
        )]
    })?;
    let wrong: Vec<ConfigError> = response
        .resources
        .iter()
        .enumerate()
        .filter(|(_, r)| crate::any::type_name(&r.type_url) != resource_type)
        .map(|(i, r)| {
            ConfigError::new(
                format!("resources[{i}]"),
                format!(
                    "type URL {} embedded in an individual Any does not match the message-wide type URL type.googleapis.com/{resource_type} in DiscoveryResponse",
                    r.type_url
                ),
            )
        })
        .collect();
    if !wrong.is_empty() {
        return Err(wrong);
    }
    Ok(response)
}

fn is_unknown_field(e: &ConfigError) -> bool {
    e.message.starts_with("unrecognized field name") || e.message.starts_with("unknown field")
}
