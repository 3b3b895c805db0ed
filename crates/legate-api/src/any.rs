//! `google.protobuf.Any` handling: unpacking an `Any` against the pool, and replacing the
//! `TypedStruct` wrappers (`udpa.type.v1` and `xds.type.v3`) with the typed message they
//! describe, so that everything after loading sees only real types.

use prost::Message;
use prost_reflect::{DynamicMessage, MapKey, MessageDescriptor, ReflectMessage, Value};

use crate::descriptors::{TYPED_STRUCT_TYPES, pool};
use crate::error::{ConfigError, join_path};
use crate::load::from_json_value;

pub const ANY: &str = "google.protobuf.Any";

/// The message name in a type URL (`type.googleapis.com/envoy.X` -> `envoy.X`).
pub fn type_name(type_url: &str) -> &str {
    type_url.rsplit_once('/').map_or(type_url, |(_, name)| name)
}

/// The `type_url` and `value` of an `Any` held as a dynamic message.
pub fn any_parts(any: &DynamicMessage) -> (String, Vec<u8>) {
    let type_url = any
        .get_field_by_name("type_url")
        .and_then(|v| v.as_str().map(str::to_owned));
    let value = any
        .get_field_by_name("value")
        .and_then(|v| v.as_bytes().map(|b| b.to_vec()));
    (type_url.unwrap_or_default(), value.unwrap_or_default())
}

/// Decodes the payload of an `Any` into a dynamic message of the type its URL names.
pub fn unpack(any: &DynamicMessage) -> Result<DynamicMessage, ConfigError> {
    let (type_url, value) = any_parts(any);
    let desc = message_type(&type_url)?;
    DynamicMessage::decode(desc, value.as_slice())
        .map_err(|e| ConfigError::new("", format!("unable to decode {type_url}: {e}")))
}

/// Looks up the message a type URL names.
pub fn message_type(type_url: &str) -> Result<MessageDescriptor, ConfigError> {
    let name = type_name(type_url);
    if name.is_empty() {
        return Err(ConfigError::new("", "type_url is empty"));
    }
    pool()
        .get_message_by_name(name)
        .ok_or_else(|| ConfigError::new("", unknown_type(name)))
}

/// Why a type named in an `Any` cannot be read: Envoy has it but Legate does not implement
/// it, or it does not exist.
pub fn unknown_type(name: &str) -> String {
    if crate::descriptors::is_envoy_message(name) {
        format!("{name} is not supported by Legate")
    } else {
        format!("unknown type '{name}' (no such message in Envoy's v3 API)")
    }
}

fn pack(msg: &DynamicMessage) -> DynamicMessage {
    let desc = pool().get_message_by_name(ANY).expect("Any is in the pool");
    let mut any = DynamicMessage::new(desc);
    any.set_field_by_name(
        "type_url",
        Value::String(format!(
            "type.googleapis.com/{}",
            msg.descriptor().full_name()
        )),
    );
    any.set_field_by_name("value", Value::Bytes(msg.encode_to_vec().into()));
    any
}

/// Replaces every `TypedStruct` inside `msg` (at any depth, including inside other `Any`s) with
/// the typed message it describes. Returns whether anything changed.
pub fn expand_typed_structs(msg: &mut DynamicMessage, path: &str) -> Result<bool, ConfigError> {
    if msg.descriptor().full_name() == ANY {
        return expand_any(msg, path);
    }
    let mut changed = false;
    for (field, value) in msg.fields_mut() {
        if !matches!(field.kind(), prost_reflect::Kind::Message(_)) {
            continue;
        }
        let path = join_path(path, field.name());
        match value {
            Value::Message(inner) => changed |= expand_typed_structs(inner, &path)?,
            Value::List(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    if let Value::Message(inner) = item {
                        changed |= expand_typed_structs(inner, &format!("{path}[{i}]"))?;
                    }
                }
            }
            Value::Map(entries) => {
                for (key, item) in entries.iter_mut() {
                    if let Value::Message(inner) = item {
                        changed |=
                            expand_typed_structs(inner, &format!("{path}[{}]", map_key(key)))?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(changed)
}

fn expand_any(any: &mut DynamicMessage, path: &str) -> Result<bool, ConfigError> {
    let (type_url, value) = any_parts(any);
    // A TypedStruct, at any depth, carries its own type URL in the payload: without the name
    // in the bytes there is nothing to expand, and no need to decode (a route table of 10,000
    // routes is a large Any).
    if type_url.is_empty()
        || (!type_url.ends_with("TypedStruct") && !contains(&value, b"TypedStruct"))
    {
        return Ok(false);
    }
    let mut inner = unpack(any).map_err(|e| e.within(path))?;
    let mut changed = false;
    if TYPED_STRUCT_TYPES.contains(&inner.descriptor().full_name()) {
        inner = typed_struct_to_message(&inner).map_err(|e| e.within(path))?;
        changed = true;
    }
    changed |= expand_typed_structs(&mut inner, path)?;
    if changed {
        *any = pack(&inner);
    }
    Ok(changed)
}

fn typed_struct_to_message(typed_struct: &DynamicMessage) -> Result<DynamicMessage, ConfigError> {
    let type_url = typed_struct
        .get_field_by_name("type_url")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let desc = message_type(&type_url).map_err(|e| e.within("type_url"))?;
    let json = match typed_struct.get_field_by_name("value") {
        Some(value) if typed_struct.has_field_by_name("value") => {
            serde_json::to_value(value.as_message())
                .map_err(|e| ConfigError::new("value", e.to_string()))?
        }
        _ => serde_json::Value::Object(Default::default()),
    };
    from_json_value(&desc, json).map_err(|e| e.within("value"))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A map key as it appears in a path: strings quoted, numbers and booleans bare.
pub fn map_key(key: &MapKey) -> String {
    match key {
        MapKey::String(s) => format!("\"{s}\""),
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
    }
}
