//! xDS resource files: a `DiscoveryResponse` (YAML, JSON, binary or text proto, by the file's
//! extension, as Envoy reads `path_config_source` files), checked like a bootstrap, with its
//! resources kept as typed `Any`s for the subscription that asked for them to decode.

use std::path::Path;

use prost::Message;
use prost_reflect::MessageDescriptor;

use crate::bootstrap::read_file;
use crate::check::{Support, check};
use crate::descriptors::pool;
use crate::error::ConfigError;
use crate::pb::envoy::service::discovery::v3::DiscoveryResponse;

pub const DISCOVERY_RESPONSE: &str = "envoy.service.discovery.v3.DiscoveryResponse";

fn descriptor() -> MessageDescriptor {
    pool()
        .get_message_by_name(DISCOVERY_RESPONSE)
        .expect("DiscoveryResponse is in the pool")
}

/// Reads and checks the `DiscoveryResponse` at `path`; every resource must be of
/// `resource_type` (a full message name such as `envoy.config.cluster.v3.Cluster`).
pub fn load_file(
    path: &Path,
    resource_type: &str,
    support: &'static Support,
) -> Result<DiscoveryResponse, Vec<ConfigError>> {
    let parsed = read_file(path, &descriptor(), &[], Some(support)).map_err(|e| vec![e])?;
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
