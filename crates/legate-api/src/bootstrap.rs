//! The bootstrap as Envoy reads it: `-c PATH` (format by extension), then `--config-yaml`
//! merged over it with protobuf merge semantics, `TypedStruct`s expanded, every field checked,
//! and the result decoded into `envoy.config.bootstrap.v3.Bootstrap`.

use std::path::Path;

use prost::Message;
use prost_reflect::MessageDescriptor;

use crate::check::{Support, check};
use crate::descriptors::pool;
use crate::error::ConfigError;
use crate::load::{Format, Parsed, merge, parse, parse_streaming};
use crate::pb::envoy::config::bootstrap::v3::Bootstrap;
use crate::pb::envoy::config::cluster::v3::Cluster;
use crate::pb::envoy::config::listener::v3::Listener;
use crate::stream::{BOOTSTRAP_STREAM, StreamSpec};

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
pub fn read_file(
    path: &Path,
    desc: &MessageDescriptor,
    spec: StreamSpec,
    support: Option<&'static Support>,
) -> Result<Parsed, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| {
        ConfigError::new(
            "",
            format!("unable to read '{}': {}", path.display(), io_reason(&e)),
        )
    })?;
    parse_streaming(desc, Format::from_path(path), &bytes, spec, support)
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
    support: &'static Support,
) -> Result<LoadedBootstrap, Vec<ConfigError>> {
    let desc = descriptor();
    // With an overlay, checks apply to the merged whole: parse both whole and merge.
    let spec = if overlay_yaml.is_some() {
        &[][..]
    } else {
        BOOTSTRAP_STREAM
    };
    let mut parsed = match source {
        BootstrapSource::File(path) => read_file(path, &desc, spec, Some(support)),
        BootstrapSource::Yaml(text) => {
            parse_streaming(&desc, Format::Yaml, text.as_bytes(), spec, Some(support))
        }
    }
    .map_err(|e| vec![e])?;
    if let Some(yaml) = overlay_yaml {
        let overlay = parse(&desc, Format::Yaml, yaml.as_bytes())
            .map_err(|e| vec![e.within("--config-yaml")])?;
        merge(&mut parsed.message, &overlay).map_err(|e| vec![e])?;
    }
    finish(parsed, support)
}

/// A checked bootstrap. Static listeners and clusters are kept encoded, for whoever compiles
/// them to decode one at a time: at 10,000 clusters, the typed form of all of them at once
/// would be most of the memory of loading.
#[derive(Debug, Default)]
pub struct LoadedBootstrap {
    /// Everything else; its `static_resources` has no listeners or clusters.
    pub bootstrap: Bootstrap,
    pub listeners: Vec<Vec<u8>>,
    pub clusters: Vec<Vec<u8>>,
}

impl LoadedBootstrap {
    /// The static listeners, decoded one by one.
    pub fn listeners(&self) -> impl Iterator<Item = Result<Listener, prost::DecodeError>> + '_ {
        self.listeners
            .iter()
            .map(|b| Listener::decode(b.as_slice()))
    }

    /// The static clusters, decoded one by one.
    pub fn clusters(&self) -> impl Iterator<Item = Result<Cluster, prost::DecodeError>> + '_ {
        self.clusters.iter().map(|b| Cluster::decode(b.as_slice()))
    }
}

/// Expands, checks and decodes a parsed bootstrap.
pub fn finish(parsed: Parsed, support: &Support) -> Result<LoadedBootstrap, Vec<ConfigError>> {
    let Parsed {
        mut message,
        streamed,
        mut errors,
    } = parsed;
    match crate::any::expand_typed_structs(&mut message, "") {
        Ok(_) => errors.extend(check(&message, support)),
        Err(e) => errors.push(e),
    }
    let mut loaded = LoadedBootstrap::default();
    // Streamed elements were checked as they were read.
    for element in streamed {
        match element.desc.full_name() {
            LISTENER => loaded.listeners.push(element.bytes),
            _ => loaded.clusters.push(element.bytes),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let bytes = message.encode_to_vec();
    drop(message);
    loaded.bootstrap = Bootstrap::decode(bytes.as_slice()).map_err(|e| {
        vec![ConfigError::new(
            "",
            format!("unable to decode the bootstrap: {e}"),
        )]
    })?;
    // From a binary or text proto, or with an overlay, nothing was streamed.
    if let Some(statics) = &mut loaded.bootstrap.static_resources {
        let listeners = std::mem::take(&mut statics.listeners)
            .into_iter()
            .map(|l| l.encode_to_vec());
        loaded.listeners.splice(0..0, listeners);
        let clusters = std::mem::take(&mut statics.clusters)
            .into_iter()
            .map(|c| c.encode_to_vec());
        loaded.clusters.splice(0..0, clusters);
    }
    Ok(loaded)
}

const LISTENER: &str = "envoy.config.listener.v3.Listener";
