//! Reading configuration bytes into a proto message, as Envoy does: YAML and JSON through the
//! proto3 JSON mapping, binary protobuf, and text protobuf, chosen by the file's extension.
//!
//! YAML and JSON are deserialized straight into the message with the proto3 JSON mapping (a
//! YAML document means what its JSON rendering means, as in Envoy, which converts YAML to
//! JSON first). Unknown fields are errors, and every error carries the path of the field it
//! concerns.

use std::cell::RefCell;
use std::path::Path;

use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use serde::Deserialize;

use crate::check::Support;
use crate::stream::{RootSeed, Split, StreamSpec, Streamed};

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
    /// The format Envoy infers from a file name: `.pb`, `.pb_text`, `.yaml`/`.yml` in any case,
    /// and JSON for every other name (as `MessageUtil::loadFromFile` does).
    pub fn from_path(path: &Path) -> Format {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        match extension.as_str() {
            "yaml" | "yml" => Format::Yaml,
            "pb" => Format::Proto,
            "pb_text" => Format::ProtoText,
            _ => Format::Json,
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
    parse_streaming(desc, format, bytes, &[], None).map(|parsed| parsed.message)
}

/// Parses `bytes` as a `desc` message, skipping fields the message does not have (Envoy reads
/// dynamic resources so, counting them in `server.dynamic_unknown_fields`).
pub fn parse_ignoring_unknown_fields(
    desc: &MessageDescriptor,
    format: Format,
    bytes: &[u8],
) -> Result<DynamicMessage, ConfigError> {
    /// Turns leniency off again however the parse ends (a panic included).
    struct Lenient;
    impl Drop for Lenient {
        fn drop(&mut self) {
            LENIENT.with(|l| l.set(false));
        }
    }
    LENIENT.with(|l| l.set(true));
    let _lenient = Lenient;
    parse(desc, format, bytes)
}

/// A parsed message, with the elements of its streamed fields kept apart, encoded.
pub struct Parsed {
    pub message: DynamicMessage,
    pub streamed: Vec<Streamed>,
    /// Problems already found in streamed elements.
    pub errors: Vec<ConfigError>,
}

/// Parses `bytes` as a `desc` message; from YAML and JSON, the repeated fields that `spec`
/// names are streamed (see [`crate::stream`]), and checked against `support` as they are read
/// when it is given. Binary and text protos are read whole.
pub fn parse_streaming(
    desc: &MessageDescriptor,
    format: Format,
    bytes: &[u8],
    spec: StreamSpec,
    support: Option<&'static Support>,
) -> Result<Parsed, ConfigError> {
    let whole = |message| Parsed {
        message,
        streamed: Vec::new(),
        errors: Vec::new(),
    };
    match format {
        Format::Yaml => {
            let text = std::str::from_utf8(bytes)
                .map_err(|e| ConfigError::new("", format!("invalid UTF-8 in YAML: {e}")))?;
            // Envoy refuses a document with no content (empty, or only comments).
            if text
                .lines()
                .all(|l| matches!(l.trim(), "" | "---" | "...") || l.trim_start().starts_with('#'))
            {
                return Err(ConfigError::new(
                    "",
                    "unable to convert YAML as JSON: the document is empty",
                ));
            }
            with_target("YAML", desc, spec, support, |seed| {
                serde_saphyr::from_str_with_options::<Seeded>(first_document(text), yaml_options())
                    .map_err(|e| seed.error("YAML", yaml_error(&e)))
            })
        }
        Format::Json => with_target("JSON", desc, spec, support, |seed| {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let msg = Seeded::deserialize(&mut de).map_err(|e| {
                if e.is_syntax() || e.is_eof() {
                    ConfigError::new("", format!("unable to parse JSON: {e}"))
                } else {
                    seed.error("JSON", e.to_string())
                }
            })?;
            de.end()
                .map_err(|e| ConfigError::new("", format!("unable to parse JSON: {e}")))?;
            Ok(msg)
        }),
        Format::Proto => DynamicMessage::decode(desc.clone(), bytes)
            .map(whole)
            .map_err(|e| ConfigError::new("", format!("unable to parse binary proto: {e}"))),
        Format::ProtoText => {
            let text = std::str::from_utf8(bytes)
                .map_err(|e| ConfigError::new("", format!("invalid UTF-8 in text proto: {e}")))?;
            check_text_depth(text)?;
            DynamicMessage::parse_text_format(desc.clone(), text)
                .map(whole)
                .map_err(|e| ConfigError::new("", format!("unable to parse text proto: {e}")))
        }
    }
}

fn yaml_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    let mut budget = options.budget.clone().unwrap_or_default();
    budget.max_depth = MAX_DEPTH;
    // A bootstrap with tens of thousands of clusters is legitimate; the byte size of the input
    // already bounds these counts.
    budget.max_events = usize::MAX;
    budget.max_nodes = usize::MAX;
    budget.max_total_scalar_bytes = usize::MAX;
    options.budget = Some(budget);
    // yaml-cpp, which Envoy uses, keeps the last of duplicate keys.
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::LastWins;
    options
}

/// Envoy reads only the first document of a YAML stream: cut at the second document marker.
fn first_document(text: &str) -> &str {
    let mut seen_content = false;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_end();
        let marker = trimmed == "---" || trimmed.starts_with("--- ") || trimmed == "...";
        if marker && (seen_content || trimmed == "...") {
            return &text[..offset];
        }
        if !marker && !trimmed.trim_start().is_empty() && !trimmed.trim_start().starts_with('#') {
            seen_content = true;
        }
        offset += line.len();
    }
    text
}

/// A YAML error as one line, without the parser's internals: `what (line L, column C)`.
fn yaml_error(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    let line = first_line(&text);
    let line = line.strip_prefix("error: ").unwrap_or(line);
    // "line 14 column 23: message" -> "message (line 14, column 23)"
    let (location, message) = match line.split_once(": ") {
        Some((loc, msg)) if loc.starts_with("line ") => {
            (Some(loc.replacen(" column", ", column", 1)), msg)
        }
        _ => (None, line),
    };
    let message = if message.contains("budget breached") {
        format!("nesting deeper than {MAX_DEPTH} levels, or a document too large")
    } else {
        message.to_owned()
    };
    match location {
        Some(location) => format!("{message} ({location})"),
        None => message,
    }
}

/// Reads YAML into a JSON value (for callers that need the document itself, not a message).
pub fn yaml_to_json(bytes: &[u8]) -> Result<serde_json::Value, ConfigError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ConfigError::new("", format!("invalid UTF-8 in YAML: {e}")))?;
    serde_saphyr::from_str_with_options(first_document(text), yaml_options())
        .map_err(|e| ConfigError::new("", format!("unable to parse YAML: {}", yaml_error(&e))))
}

// The YAML and JSON parsers take a `Deserialize` type, not a seed; the message descriptor to
// deserialize into (and what to stream) reaches `Seeded` through this thread-local, set only
// around one parse.
thread_local! {
    static TARGET: RefCell<Option<Target>> = const { RefCell::new(None) };
    /// Unknown fields are skipped rather than refused ([`parse_ignoring_unknown_fields`]).
    static LENIENT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static ERROR_PATH: RefCell<String> = const { RefCell::new(String::new()) };
}

#[derive(Clone)]
struct Target {
    desc: MessageDescriptor,
    spec: StreamSpec,
    support: Option<&'static Support>,
}

/// A message deserialized straight from the input (no intermediate document), tracking the
/// path of the field being read so that an error can name it.
enum Seeded {
    Whole(DynamicMessage),
    /// The root's other fields as a document, and the streamed elements.
    Split(Split),
}

impl<'de> Deserialize<'de> for Seeded {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{DeserializeSeed, Error};
        let Target {
            desc,
            spec,
            support,
        } = TARGET
            .with(|t| t.borrow().clone())
            .ok_or_else(|| D::Error::custom("no target message set"))?;
        let mut track = serde_path_to_error::Track::new();
        let tracked = serde_path_to_error::Deserializer::new(deserializer, &mut track);
        // Streamed elements are checked as they are read, so streaming needs the support table.
        let result = match support {
            Some(support) if !spec.is_empty() => RootSeed {
                desc: &desc,
                spec,
                support,
            }
            .deserialize(tracked)
            .map(Seeded::Split),
            _ if LENIENT.with(|l| l.get()) => DynamicMessage::deserialize_with_options(
                desc,
                tracked,
                &prost_reflect::DeserializeOptions::new().deny_unknown_fields(false),
            )
            .map(Seeded::Whole),
            _ => DynamicMessage::deserialize(desc, tracked).map(Seeded::Whole),
        };
        result.map_err(|e| {
            ERROR_PATH.with(|p| *p.borrow_mut() = track.path().to_string());
            e
        })
    }
}

/// The path of the last deserialization error, for [`with_target`]'s callback.
struct SeedErrors;

impl SeedErrors {
    /// The error of a parse of `format`; one with no field path is a syntax error, and says so.
    fn error(&self, format: &str, message: String) -> ConfigError {
        let path = ERROR_PATH.with(|p| std::mem::take(&mut *p.borrow_mut()));
        if path.is_empty() || path == "." {
            ConfigError::new(
                "",
                format!(
                    "unable to parse {format}: {}",
                    rewrite_unknown_type(message)
                ),
            )
        } else {
            ConfigError::new(path, rewrite_unknown_type(message))
        }
    }
}

fn with_target(
    format: &str,
    desc: &MessageDescriptor,
    spec: StreamSpec,
    support: Option<&'static Support>,
    parse: impl FnOnce(&SeedErrors) -> Result<Seeded, ConfigError>,
) -> Result<Parsed, ConfigError> {
    TARGET.with(|t| {
        *t.borrow_mut() = Some(Target {
            desc: desc.clone(),
            spec,
            support,
        })
    });
    ERROR_PATH.with(|p| p.borrow_mut().clear());
    let result = parse(&SeedErrors);
    TARGET.with(|t| *t.borrow_mut() = None);
    match result? {
        Seeded::Whole(message) => Ok(Parsed {
            message,
            streamed: Vec::new(),
            errors: Vec::new(),
        }),
        Seeded::Split(Split {
            rest,
            streamed,
            errors,
        }) => {
            // The root's other fields were collected as a document: report their errors as
            // a whole parse would have.
            let message = from_json_value(desc, serde_json::Value::Object(rest)).map_err(|e| {
                if e.path.is_empty() {
                    ConfigError::new(
                        "",
                        format!(
                            "unable to parse {format}: {}",
                            rewrite_unknown_type(e.message)
                        ),
                    )
                } else {
                    ConfigError::new(e.path, rewrite_unknown_type(e.message))
                }
            })?;
            Ok(Parsed {
                message,
                streamed,
                errors,
            })
        }
    }
}

/// prost-reflect reports an `@type` outside the pool as "message 'X' not found": say whether
/// Envoy has it (and Legate does not implement it) or it does not exist.
fn rewrite_unknown_type(message: String) -> String {
    let Some(start) = message.find("message '") else {
        return message;
    };
    let rest = &message[start + 9..];
    let Some(end) = rest.find("' not found") else {
        return message;
    };
    let explained = crate::any::unknown_type(&rest[..end]);
    format!("{}{explained}{}", &message[..start], &rest[end + 11..])
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_yaml_document_counts() {
        assert_eq!(first_document("a: 1\n---\nb: 2\n"), "a: 1\n");
        assert_eq!(first_document("---\na: 1\n...\nb\n"), "---\na: 1\n");
        assert_eq!(first_document("# c\n---\na: 1\n"), "# c\n---\na: 1\n");
    }

    #[test]
    fn format_follows_envoys_extension_rules() {
        assert_eq!(Format::from_path(Path::new("a.YAML")), Format::Yaml);
        assert_eq!(Format::from_path(Path::new("a.pb_text")), Format::ProtoText);
        assert_eq!(Format::from_path(Path::new("a.txt")), Format::Json);
        assert_eq!(Format::from_path(Path::new("noext")), Format::Json);
    }
}
