//! One walk over a loaded configuration that reports, with field paths:
//! * every violated `validate.rules` constraint (see [`crate::pgv`]);
//! * every field that is set but that Legate does not implement, per a [`Support`] table;
//! * every `Any` whose type is unknown or not implemented.
//!
//! `Any` payloads are unpacked and walked like inline fields, so a filter's config is checked
//! at `...http_filters[1].typed_config.<field>`.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, ReflectMessage, Value};

use crate::any::{ANY, map_key, unpack};
use crate::error::ConfigError;
use crate::pgv::RuleCache;

/// The largest duration protobuf allows (10,000 years), as Envoy checks it.
const MAX_DURATION_SECONDS: i64 = 315_576_000_000;

/// What Legate implements: for each message type, the fields it reads; and the message types
/// it accepts inside an `Any` (extensions). A set field missing from the table is refused.
pub struct Support {
    fields: HashMap<String, HashSet<&'static str>>,
    extensions: HashMap<&'static str, &'static str>,
}

impl Support {
    /// `messages`: (message full name, implemented fields); `extensions`: (extension name as
    /// Envoy's docs give it, message full name of its config).
    pub fn new(
        messages: Vec<(String, &[&'static str])>,
        extensions: &[(&'static str, &'static str)],
    ) -> Self {
        let fields = messages
            .into_iter()
            .map(|(m, fs)| (m, fs.iter().copied().collect()))
            .collect();
        let extensions = extensions.iter().map(|(name, ty)| (*ty, *name)).collect();
        Self { fields, extensions }
    }

    pub fn supports_field(&self, message: &str, field: &str) -> bool {
        self.fields.get(message).is_some_and(|f| f.contains(field))
    }

    pub fn supports_extension(&self, type_name: &str) -> bool {
        self.extensions.contains_key(type_name)
    }
}

/// Checks `msg` and everything below it; returns every problem found.
pub fn check(msg: &DynamicMessage, support: &Support) -> Vec<ConfigError> {
    check_with(msg, support, &mut RuleCache::default())
}

/// As [`check`], with the validation rules compiled by earlier checks of the same load: the
/// elements of a long list (10,000 clusters) compile each message type's rules once.
pub fn check_with(
    msg: &DynamicMessage,
    support: &Support,
    rules: &mut RuleCache,
) -> Vec<ConfigError> {
    let mut walker = Walker {
        support,
        rules,
        path: String::new(),
        errors: Vec::new(),
    };
    walker.message(msg);
    walker.errors
}

struct Walker<'a> {
    support: &'a Support,
    rules: &'a mut RuleCache,
    /// Where the walk is: `.name` for each field, `[i]` for each item, appended on the way
    /// down and cut on the way up (no allocation per field).
    path: String,
    errors: Vec<ConfigError>,
}

impl Walker<'_> {
    fn error(&mut self, suffix: &str, message: impl Into<String>) {
        let path = format!("{}{suffix}", self.path);
        let path = match path.strip_prefix('.') {
            Some(rest) => rest.to_owned(),
            None => path,
        };
        self.errors.push(ConfigError::new(path, message));
    }

    fn message(&mut self, msg: &DynamicMessage) {
        let desc = msg.descriptor();
        let name = desc.full_name();
        if name == ANY {
            return self.any(msg);
        }
        if name == "google.protobuf.Duration" {
            return self.duration(msg);
        }
        if name.starts_with("google.protobuf.") {
            return; // Well-known leaf types: wrappers, Struct.
        }
        let rules = self.rules.get(&desc);
        if !rules.disabled {
            for oneof in &rules.required_oneofs {
                if !oneof.fields().any(|f| msg.has_field(&f)) {
                    self.error(&format!(".{}", oneof.name()), "value is required");
                }
            }
        }
        // Rules first, on every field that has one: proto3 scalars are checked even when
        // unset, as PGV does (an empty required name fails `min_len: 1`); unset oneof members
        // are not.
        let mut failed = Vec::new();
        if !rules.disabled {
            for (field, rule) in &rules.fields {
                let is_set = msg.has_field(field);
                if !is_set && field.containing_oneof().is_some() {
                    continue;
                }
                // An unset singular message can only break `required`: do not build its default.
                let problem = if is_set
                    || field.is_list()
                    || field.is_map()
                    || !matches!(field.kind(), Kind::Message(_))
                {
                    rule.check(field, &msg.get_field(field), is_set)
                } else {
                    rule.check_missing()
                };
                if let Some((suffix, problem)) = problem {
                    self.error(&format!(".{}{suffix}", field.name()), problem);
                    failed.push(field.number());
                }
            }
        }
        // Then what is set: is it implemented, and what is below it.
        for (field, value) in msg.fields() {
            if failed.contains(&field.number()) {
                continue;
            }
            if !self.support.supports_field(name, field.name()) {
                self.error(
                    &format!(".{}", field.name()),
                    format!("{} is not supported by Legate", describe(&field)),
                );
                continue;
            }
            let depth = self.path.len();
            self.path.push('.');
            self.path.push_str(field.name());
            self.value(&field, value);
            self.path.truncate(depth);
        }
    }

    fn value(&mut self, field: &FieldDescriptor, value: &Value) {
        if !matches!(field.kind(), Kind::Message(_)) {
            return;
        }
        match value {
            Value::Message(inner) => self.message(inner),
            Value::List(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Value::Message(inner) = item {
                        let depth = self.path.len();
                        let _ = write!(self.path, "[{i}]");
                        self.message(inner);
                        self.path.truncate(depth);
                    }
                }
            }
            Value::Map(entries) => {
                for (key, item) in entries {
                    if let Value::Message(inner) = item {
                        let depth = self.path.len();
                        let _ = write!(self.path, "[{}]", map_key(key));
                        self.message(inner);
                        self.path.truncate(depth);
                    }
                }
            }
            _ => {}
        }
    }

    /// Envoy refuses every negative or out-of-range duration, whatever the field's own rules.
    fn duration(&mut self, msg: &DynamicMessage) {
        let seconds = msg
            .get_field_by_name("seconds")
            .and_then(|v| v.as_i64())
            .unwrap_or(0);
        let nanos = msg
            .get_field_by_name("nanos")
            .and_then(|v| v.as_i32())
            .unwrap_or(0);
        if seconds < 0 || nanos < 0 {
            self.error("", format!("Invalid duration: Expected positive duration: seconds: {seconds} nanos: {nanos}"));
        } else if seconds > MAX_DURATION_SECONDS || nanos >= 1_000_000_000 {
            self.error(
                "",
                format!(
                    "Invalid duration: Duration out-of-range: seconds: {seconds} nanos: {nanos}"
                ),
            );
        }
    }

    fn any(&mut self, any: &DynamicMessage) {
        match unpack(any) {
            Err(e) => self.error("", e.message),
            Ok(inner) => {
                let type_name = inner.descriptor().full_name().to_owned();
                if !self.support.supports_extension(&type_name) {
                    self.error("", format!("{type_name} is not supported by Legate"));
                } else {
                    self.message(&inner);
                }
            }
        }
    }
}

/// `the field 'per_connection_buffer_limit_bytes'`, or for a oneof member, naming the oneof.
fn describe(field: &FieldDescriptor) -> String {
    match field.containing_oneof().filter(|o| !o.is_synthetic()) {
        Some(oneof) => format!("'{}' (of '{}')", field.name(), oneof.name()),
        None => format!("'{}'", field.name()),
    }
}
