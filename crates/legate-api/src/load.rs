//! Reading configuration bytes into a proto message, as Envoy does: YAML and JSON through the
//! proto3 JSON mapping, binary protobuf, and text protobuf, chosen by the file's extension.
//!
//! YAML is first read into a JSON value (Envoy does the same, so a YAML document means what its
//! JSON rendering means), then deserialized against the message descriptor. Unknown fields are
//! errors, and every error carries the path of the field it concerns.

use std::path::Path;

use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor};

use crate::error::ConfigError;

/// The encodings Envoy accepts for a bootstrap or an xDS resource file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
    /// Binary protobuf (`.pb`).
    Proto,
    /// Protobuf text format (`.pb_text`).
    ProtoText,
}

impl Format {
    /// The format Envoy infers from a file name; `None` for an extension it does not know.
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            "pb" => Some(Format::Proto),
            "pb_text" => Some(Format::ProtoText),
            _ => None,
        }
    }
}

/// Nesting deeper than this is refused before it can exhaust the stack. Real Envoy configs
/// stay far below it (a deeply nested RBAC policy reaches about 40).
pub const MAX_DEPTH: usize = 100;

/// Parses `bytes` as a `desc` message.
pub fn parse(
    desc: &MessageDescriptor,
    format: Format,
    bytes: &[u8],
) -> Result<DynamicMessage, ConfigError> {
    match format {
        Format::Yaml => {
            let value = yaml_to_json(bytes)?;
            from_json_value(desc, value)
        }
        Format::Json => {
            let text = std::str::from_utf8(bytes)
                .map_err(|e| ConfigError::new("", format!("invalid UTF-8 in JSON: {e}")))?;
            let value: serde_json::Value = serde_json::from_str(text)
                .map_err(|e| ConfigError::new("", format!("unable to parse JSON: {e}")))?;
            from_json_value(desc, value)
        }
        Format::Proto => DynamicMessage::decode(desc.clone(), bytes)
            .map_err(|e| ConfigError::new("", format!("unable to parse binary proto: {e}"))),
        Format::ProtoText => {
            let text = std::str::from_utf8(bytes)
                .map_err(|e| ConfigError::new("", format!("invalid UTF-8 in text proto: {e}")))?;
            check_text_depth(text)?;
            DynamicMessage::parse_text_format(desc.clone(), text)
                .map_err(|e| ConfigError::new("", format!("unable to parse text proto: {e}")))
        }
    }
}

/// Reads YAML into a JSON value, refusing what a config cannot be: several documents, aliases
/// that expand without bound, nesting beyond [`MAX_DEPTH`].
pub fn yaml_to_json(bytes: &[u8]) -> Result<serde_json::Value, ConfigError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ConfigError::new("", format!("invalid UTF-8 in YAML: {e}")))?;
    let mut options = serde_saphyr::Options::default();
    let mut budget = options.budget.clone().unwrap_or_default();
    budget.max_depth = MAX_DEPTH;
    // A bootstrap with tens of thousands of clusters is legitimate; the byte size of the input
    // already bounds these counts.
    budget.max_events = usize::MAX;
    budget.max_nodes = usize::MAX;
    budget.max_total_scalar_bytes = usize::MAX;
    options.budget = Some(budget);
    let value: serde_json::Value =
        serde_saphyr::from_str_with_options(text, options).map_err(|e| {
            ConfigError::new(
                "",
                format!("unable to parse YAML: {}", first_line(&e.to_string())),
            )
        })?;
    // An empty document is an empty message, as in Envoy.
    Ok(if value.is_null() {
        serde_json::Value::Object(Default::default())
    } else {
        value
    })
}

/// Deserializes a JSON value with the proto3 JSON mapping, keeping the path of any error.
pub fn from_json_value(
    desc: &MessageDescriptor,
    value: serde_json::Value,
) -> Result<DynamicMessage, ConfigError> {
    if json_depth_exceeds(&value, MAX_DEPTH) {
        return Err(ConfigError::new(
            "",
            format!("nesting deeper than {MAX_DEPTH} levels"),
        ));
    }
    let mut track = serde_path_to_error::Track::new();
    let deserializer = serde_path_to_error::Deserializer::new(value, &mut track);
    DynamicMessage::deserialize(desc.clone(), deserializer).map_err(|e| {
        let path = track.path().to_string();
        ConfigError::new(
            if path == "." { String::new() } else { path },
            e.to_string(),
        )
    })
}

/// Merges `overlay` into `base` with protobuf `MergeFrom` semantics: set scalars replace,
/// messages merge field by field, repeated fields append. This is how Envoy applies
/// `--config-yaml` over the file given with `-c`.
pub fn merge(base: &mut DynamicMessage, overlay: &DynamicMessage) -> Result<(), ConfigError> {
    base.merge(overlay.encode_to_vec().as_slice())
        .map_err(|e| ConfigError::new("", format!("unable to merge configurations: {e}")))
}

fn json_depth_exceeds(value: &serde_json::Value, limit: usize) -> bool {
    // Iterative, so that the check itself cannot overflow the stack.
    let mut stack = vec![(value, 0usize)];
    while let Some((value, depth)) = stack.pop() {
        if depth > limit {
            return true;
        }
        match value {
            serde_json::Value::Array(items) => stack.extend(items.iter().map(|v| (v, depth + 1))),
            serde_json::Value::Object(map) => stack.extend(map.values().map(|v| (v, depth + 1))),
            _ => {}
        }
    }
    false
}

/// The text-format parser recurses per nested message: bound the nesting before calling it.
fn check_text_depth(text: &str) -> Result<(), ConfigError> {
    let (mut depth, mut max) = (0usize, 0usize);
    let mut in_string: Option<char> = None;
    let mut escaped = false;
    for c in text.chars() {
        if let Some(quote) = in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                _ if c == quote => in_string = None,
                _ => {}
            }
            continue;
        }
        match c {
            '"' | '\'' => in_string = Some(c),
            '{' | '<' | '[' => {
                depth += 1;
                max = max.max(depth);
            }
            '}' | '>' | ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if max > MAX_DEPTH {
        return Err(ConfigError::new(
            "",
            format!("nesting deeper than {MAX_DEPTH} levels"),
        ));
    }
    Ok(())
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}
