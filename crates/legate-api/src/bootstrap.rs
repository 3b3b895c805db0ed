//! The bootstrap as Envoy reads it: `-c PATH` (format by extension), then `--config-yaml`
//! merged over it with protobuf merge semantics, `TypedStruct`s expanded, every field checked,
//! and the result decoded into `envoy.config.bootstrap.v3.Bootstrap`.

use std::path::Path;

use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor};

use crate::check::{Support, check};
use crate::descriptors::pool;
use crate::error::ConfigError;
use crate::load::{Format, merge, parse};
use crate::pb::envoy::config::bootstrap::v3::Bootstrap;

pub const BOOTSTRAP: &str = "envoy.config.bootstrap.v3.Bootstrap";

/// Where the bootstrap comes from.
pub enum BootstrapSource<'a> {
    /// A file; its format follows its extension.
    File(&'a Path),
    /// YAML text (Legate's embedded default, or `--config-yaml` alone).
    Yaml(&'a str),
}

fn descriptor() -> MessageDescriptor {
    pool()
        .get_message_by_name(BOOTSTRAP)
        .expect("Bootstrap is in the pool")
}

/// Reads a file as Envoy's `-c`: the format follows the extension (JSON when it is none of
/// Envoy's), and an unreadable file or bytes that do not parse are errors.
pub fn read_file(path: &Path, desc: &MessageDescriptor) -> Result<DynamicMessage, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| {
        ConfigError::new(
            "",
            format!("unable to read '{}': {}", path.display(), io_reason(&e)),
        )
    })?;
    parse(desc, Format::from_path(path), &bytes)
}

/// An I/O error as a sentence, without the OS error number.
fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        std::io::ErrorKind::IsADirectory => "it is a directory".into(),
        _ => e.to_string(),
    }
}

/// Loads and checks a bootstrap. Errors are all the problems found, each with its field path.
pub fn load(
    source: BootstrapSource<'_>,
    overlay_yaml: Option<&str>,
    support: &Support,
) -> Result<Bootstrap, Vec<ConfigError>> {
    let desc = descriptor();
    let mut msg = match source {
        BootstrapSource::File(path) => read_file(path, &desc),
        BootstrapSource::Yaml(text) => parse(&desc, Format::Yaml, text.as_bytes()),
    }
    .map_err(|e| vec![e])?;
    if let Some(yaml) = overlay_yaml {
        let overlay = parse(&desc, Format::Yaml, yaml.as_bytes())
            .map_err(|e| vec![e.within("--config-yaml")])?;
        merge(&mut msg, &overlay).map_err(|e| vec![e])?;
    }
    finish(msg, support)
}

/// Expands, checks and decodes a bootstrap already parsed into a dynamic message.
pub fn finish(mut msg: DynamicMessage, support: &Support) -> Result<Bootstrap, Vec<ConfigError>> {
    crate::any::expand_typed_structs(&mut msg, "").map_err(|e| vec![e])?;
    let errors = check(&msg, support);
    if !errors.is_empty() {
        return Err(errors);
    }
    // Encode and drop the dynamic form before decoding the typed one: at 10,000 clusters the
    // two together would double the peak memory of loading.
    let bytes = msg.encode_to_vec();
    drop(msg);
    Bootstrap::decode(bytes.as_slice()).map_err(|e| {
        vec![ConfigError::new(
            "",
            format!("unable to decode the bootstrap: {e}"),
        )]
    })
}
