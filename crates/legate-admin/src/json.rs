//! JSON as Envoy's admin prints it: protobuf's JSON printer with pretty printing, which indents
//! by one space, keeps fields in proto order, prints 64-bit integers as strings and integral
//! doubles without a fraction (`5`, not `5.0`).
//!
//! Two pieces: [`Json`], an ordered tree for the admin messages that are not in Legate's
//! descriptor pool (`envoy.admin.v3.*`: ServerInfo, ClusterStatuses, ConfigDump wrappers...),
//! written by hand in proto field order; and [`proto`], which renders a config message of the
//! pool (Bootstrap, Cluster, Listener, Node...) through prost-reflect with Envoy's options
//! (proto field names, not camelCase) and embeds it in a tree.

use std::fmt::Write as _;
use std::io;

use prost_reflect::{DynamicMessage, ReflectMessage, SerializeOptions};

/// An ordered JSON value.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    /// A number, already formatted.
    Number(String),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
    /// A value already rendered in Envoy's pretty style at depth zero (a proto message).
    Raw(String),
}

impl Json {
    pub fn str(value: impl Into<String>) -> Json {
        Json::String(value.into())
    }

    pub fn num(value: impl std::fmt::Display) -> Json {
        Json::Number(value.to_string())
    }

    /// A 64-bit integer: proto3 JSON prints these as strings.
    pub fn int64(value: impl std::fmt::Display) -> Json {
        Json::String(value.to_string())
    }

    pub fn object() -> ObjectBuilder {
        ObjectBuilder(Vec::new())
    }

    /// Pretty-printed with Envoy's one-space indent, followed by a newline as Envoy's admin
    /// responses are.
    pub fn to_pretty(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0);
        out.push('\n');
        out
    }

    fn write(&self, out: &mut String, depth: usize) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Number(n) => out.push_str(n),
            Json::String(s) => out.push_str(&quote(s)),
            Json::Raw(text) => {
                // Re-indent: JSON strings never hold a raw newline, so every newline in the
                // text is a line break of the pretty printer.
                let indent = format!("\n{}", " ".repeat(depth));
                out.push_str(&text.replace('\n', &indent));
            }
            Json::Array(items) if items.is_empty() => out.push_str("[]"),
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    newline(out, depth + 1);
                    item.write(out, depth + 1);
                }
                newline(out, depth);
                out.push(']');
            }
            Json::Object(fields) if fields.is_empty() => out.push_str("{}"),
            Json::Object(fields) => {
                out.push('{');
                for (i, (key, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    newline(out, depth + 1);
                    let _ = write!(out, "{}: ", quote(key));
                    value.write(out, depth + 1);
                }
                newline(out, depth);
                out.push('}');
            }
        }
    }
}

fn newline(out: &mut String, depth: usize) {
    out.push('\n');
    out.extend(std::iter::repeat_n(' ', depth));
}

/// A JSON string literal, escaped as protobuf's printer escapes it (see
/// [`protobuf_escapes`]).
pub fn quote(value: &str) -> String {
    let json = serde_json::to_string(value).unwrap_or_else(|_| "\"\"".to_owned());
    // serde_json leaves these characters as they are, so none is part of an escape sequence.
    if json.contains(['<', '>', '\u{7f}', '\u{2028}', '\u{2029}']) {
        let mut out = Vec::with_capacity(json.len() + 12);
        let _ = protobuf_escapes(&mut out, &json);
        String::from_utf8(out).unwrap_or(json)
    } else {
        json
    }
}

/// protobuf's JSON printer escapes `<`, `>`, DEL, U+2028 and U+2029 besides what JSON
/// requires: Envoy's `/certs` shows an inline certificate's path as `\u003cinline\u003e`.
fn protobuf_escapes<W: ?Sized + io::Write>(w: &mut W, fragment: &str) -> io::Result<()> {
    let mut start = 0;
    for (i, c) in fragment.char_indices() {
        let escaped = match c {
            '<' => "\\u003c",
            '>' => "\\u003e",
            '\u{7f}' => "\\u007f",
            '\u{2028}' => "\\u2028",
            '\u{2029}' => "\\u2029",
            _ => continue,
        };
        w.write_all(&fragment.as_bytes()[start..i])?;
        w.write_all(escaped.as_bytes())?;
        start = i + c.len_utf8();
    }
    w.write_all(&fragment.as_bytes()[start..])
}

/// Builds a [`Json::Object`] field by field, in order.
#[derive(Debug, Default)]
pub struct ObjectBuilder(Vec<(String, Json)>);

impl ObjectBuilder {
    pub fn field(mut self, key: &str, value: Json) -> Self {
        self.0.push((key.to_owned(), value));
        self
    }

    /// Adds the field only when `value` is not a proto3 default (protobuf's JSON printer omits
    /// those unless asked to print primitive fields).
    pub fn field_if(self, present: bool, key: &str, value: Json) -> Self {
        if present {
            self.field(key, value)
        } else {
            self
        }
    }

    pub fn build(self) -> Json {
        Json::Object(self.0)
    }
}

/// Renders a message of the descriptor pool as Envoy does, as a [`Json::Raw`].
/// `always_print_primitive_fields` is Envoy's flag of the same name (`/server_info` sets it,
/// `/config_dump` does not).
pub fn proto(message: &DynamicMessage, always_print_primitive_fields: bool) -> Json {
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(!always_print_primitive_fields);
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, EnvoyFormatter::default());
    match message.serialize_with_options(&mut ser, &options) {
        Ok(()) => Json::Raw(String::from_utf8(buf).unwrap_or_default()),
        // Only an `Any` naming a type outside the pool can fail; the loader rejects those, so
        // this is a bug, shown rather than hidden.
        Err(e) => Json::object()
            .field(
                "error",
                Json::str(format!(
                    "unable to render {}: {e}",
                    message.descriptor().full_name()
                )),
            )
            .build(),
    }
}

/// serde_json's pretty printer with a one-space indent, and doubles as protobuf prints them.
struct EnvoyFormatter {
    inner: serde_json::ser::PrettyFormatter<'static>,
}

impl Default for EnvoyFormatter {
    fn default() -> Self {
        EnvoyFormatter {
            inner: serde_json::ser::PrettyFormatter::with_indent(b" "),
        }
    }
}

impl serde_json::ser::Formatter for EnvoyFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        protobuf_escapes(w, fragment)
    }

    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        writer.write_all(format_double(value).as_bytes())
    }

    fn write_f32<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        writer.write_all(format_double(f64::from(value)).as_bytes())
    }

    fn begin_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.inner.begin_array(w)
    }

    fn end_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.inner.end_array(w)
    }

    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.inner.begin_array_value(w, first)
    }

    fn end_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.inner.end_array_value(w)
    }

    fn begin_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.inner.begin_object(w)
    }

    fn end_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.inner.end_object(w)
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.inner.begin_object_key(w, first)
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.inner.begin_object_value(w)
    }

    fn end_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.inner.end_object_value(w)
    }
}

/// A double as protobuf's JSON printer writes it: the shortest form that reads back the same,
/// with no `.0` on integral values (`5`, `0.5`, `1e+21`).
pub fn format_double(value: f64) -> String {
    if value.is_finite() && value.fract() == 0.0 && value.abs() < 1e21 {
        format!("{value:.0}")
    } else if value.is_finite() && (value.abs() >= 1e21 || (value != 0.0 && value.abs() < 1e-6)) {
        let s = format!("{value:e}");
        match s.split_once('e') {
            Some((m, e)) if !e.starts_with('-') => format!("{m}e+{e}"),
            _ => s,
        }
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_printing_matches_envoy() {
        let json = Json::object()
            .field("a", Json::num(1))
            .field("b", Json::Array(vec![Json::str("x"), Json::Object(vec![])]))
            .field("c", Json::Array(vec![]))
            .field("d", Json::Raw("{\n \"k\": \"v\"\n}".into()))
            .build();
        assert_eq!(
            json.to_pretty(),
            "{\n \"a\": 1,\n \"b\": [\n  \"x\",\n  {}\n ],\n \"c\": [],\n \"d\": {\n  \"k\": \"v\"\n }\n}\n"
        );
    }

    #[test]
    fn strings_are_escaped_as_protobuf_does() {
        assert_eq!(
            quote("<inline>&'\u{7f}\u{2028}\u{e9}\"\n"),
            "\"\\u003cinline\\u003e&'\\u007f\\u2028\u{e9}\\\"\\n\""
        );
    }

    #[test]
    fn doubles() {
        assert_eq!(format_double(5.0), "5");
        assert_eq!(format_double(0.5), "0.5");
        assert_eq!(format_double(-1.0), "-1");
        assert_eq!(format_double(1e21), "1e+21");
    }
}
