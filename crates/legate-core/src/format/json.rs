//! `json_format`: a `google.protobuf.Struct` whose string values are format strings, printed
//! as one JSON object and a newline per record.
//!
//! Envoy 1.40 (`JsonFormatterImpl`) behaviour matched here:
//! * keys are sorted (byte order) at every level, whatever the configured order;
//! * a string without `%` is a literal; numbers, booleans and nulls are copied;
//! * a string that is exactly one operator keeps the operator's type: a number for
//!   `%RESPONSE_CODE%`, `%BYTES_*%`, the durations and ports, `null` when unset, a string
//!   otherwise;
//! * a string mixing text and operators is a string, unset operators printing `-` (or nothing
//!   with `omit_empty_values`);
//! * with `omit_empty_values`, keys whose value is `null` are left out, and a nested object left
//!   empty that way is left out too; the root object is always printed.

use legate_api::pb::google::protobuf::{ListValue, Struct, Value as ProtoValue, value::Kind};

use super::operator::Value;
use super::{Formatter, UNSET};
use crate::stream_info::StreamInfo;
use crate::{Compiled, ConfigError};

/// A compiled `json_format`.
#[derive(Clone, Debug)]
pub struct JsonFormatter {
    root: Vec<(String, Node)>,
    omit_empty_values: bool,
}

#[derive(Clone, Debug)]
enum Node {
    Object(Vec<(String, Node)>),
    List(Vec<Node>),
    /// Already-rendered JSON (a literal string, number or boolean).
    Literal(String),
    Null,
    Template(Formatter),
}

impl JsonFormatter {
    pub fn compile(format: &Struct, omit_empty_values: bool) -> Compiled<JsonFormatter> {
        let mut errors = Vec::new();
        let root = compile_object(format, "", omit_empty_values, &mut errors);
        if errors.is_empty() {
            Ok(JsonFormatter {
                root,
                omit_empty_values,
            })
        } else {
            Err(errors)
        }
    }

    /// One JSON object and a newline.
    pub fn format(&self, info: &StreamInfo) -> String {
        let mut out = String::with_capacity(512);
        self.write_object(&self.root, info, &mut out, true);
        out.push('\n');
        out
    }

    /// Writes an object; returns false (and writes nothing) when `omit_empty_values` left a
    /// non-root object empty.
    fn write_object(
        &self,
        fields: &[(String, Node)],
        info: &StreamInfo,
        out: &mut String,
        root: bool,
    ) -> bool {
        let start = out.len();
        out.push('{');
        let mut written = 0;
        for (key, node) in fields {
            let mark = out.len();
            if written > 0 {
                out.push(',');
            }
            push_json_string(out, key);
            out.push(':');
            if self.write_node(node, info, out) {
                written += 1;
            } else {
                out.truncate(mark);
            }
        }
        if self.omit_empty_values && written == 0 && !fields.is_empty() && !root {
            out.truncate(start);
            return false;
        }
        out.push('}');
        true
    }

    /// Writes a value; returns false (having written nothing useful) when it is omitted.
    fn write_node(&self, node: &Node, info: &StreamInfo, out: &mut String) -> bool {
        match node {
            Node::Object(fields) => self.write_object(fields, info, out, false),
            Node::List(items) => {
                out.push('[');
                let mut written = 0;
                for item in items {
                    let mark = out.len();
                    if written > 0 {
                        out.push(',');
                    }
                    if self.write_node(item, info, out) {
                        written += 1;
                    } else {
                        out.truncate(mark);
                    }
                }
                out.push(']');
                true
            }
            Node::Literal(json) => {
                out.push_str(json);
                true
            }
            Node::Null => {
                if self.omit_empty_values {
                    return false;
                }
                out.push_str("null");
                true
            }
            Node::Template(formatter) => {
                if let Some(op) = formatter.single_operator() {
                    match op.evaluate(info) {
                        Some(Value::Str(s)) => push_json_string(out, &s),
                        Some(Value::Int(n)) => {
                            use std::fmt::Write;
                            let _ = write!(out, "{n}");
                        }
                        Some(Value::Object { json, .. }) => out.push_str(&json),
                        None if self.omit_empty_values => return false,
                        None => out.push_str("null"),
                    }
                    return true;
                }
                let unset = if self.omit_empty_values { "" } else { UNSET };
                let text = formatter.format_with(info, unset);
                push_json_string(out, &text);
                true
            }
        }
    }
}

fn compile_object(
    fields: &Struct,
    path: &str,
    omit_empty_values: bool,
    errors: &mut Vec<ConfigError>,
) -> Vec<(String, Node)> {
    let mut sorted: Vec<(&String, &ProtoValue)> = fields.fields.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    sorted
        .into_iter()
        .map(|(key, value)| {
            let path = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            (
                key.clone(),
                compile_value(value, &path, omit_empty_values, errors),
            )
        })
        .collect()
}

fn compile_list(
    list: &ListValue,
    path: &str,
    omit_empty_values: bool,
    errors: &mut Vec<ConfigError>,
) -> Vec<Node> {
    list.values
        .iter()
        .enumerate()
        .map(|(i, v)| compile_value(v, &format!("{path}[{i}]"), omit_empty_values, errors))
        .collect()
}

fn compile_value(
    value: &ProtoValue,
    path: &str,
    omit_empty_values: bool,
    errors: &mut Vec<ConfigError>,
) -> Node {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Node::Null,
        Some(Kind::NumberValue(n)) => Node::Literal(json_number(*n)),
        Some(Kind::BoolValue(b)) => Node::Literal(b.to_string()),
        Some(Kind::StringValue(s)) if !s.contains('%') => {
            let mut json = String::with_capacity(s.len() + 2);
            push_json_string(&mut json, s);
            Node::Literal(json)
        }
        Some(Kind::StringValue(s)) => match Formatter::parse_with(s, omit_empty_values) {
            Ok(f) => Node::Template(f),
            Err(e) => {
                errors.push(ConfigError::new(path, e));
                Node::Null
            }
        },
        Some(Kind::StructValue(s)) => {
            Node::Object(compile_object(s, path, omit_empty_values, errors))
        }
        Some(Kind::ListValue(l)) => Node::List(compile_list(l, path, omit_empty_values, errors)),
    }
}

/// A configured number as Envoy prints it (`fmt::to_string(double)`): integers without a
/// fraction, NaN as `null`.
fn json_number(n: f64) -> String {
    if n.is_nan() || n.is_infinite() {
        "null".to_owned()
    } else if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

/// Appends `s` as a JSON string (Envoy's `Json::sanitize`: quotes, backslashes and control
/// characters escaped; other characters, including non-ASCII, as they are).
pub(crate) fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                use std::fmt::Write;
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
