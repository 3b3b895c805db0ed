//! Envoy's substitution format strings: the `%COMMAND%` engine behind access logs, local reply
//! bodies (`body_format`) and `%VARIABLE%` header values.
//!
//! A format string is compiled once ([`Formatter::parse`]) into literal pieces and operators
//! and then evaluated per stream against a [`StreamInfo`]. The grammar is Envoy 1.40's
//! (`SubstitutionFormatParser::parse`): `%%` is a literal `%`; anything else after a `%` must be
//! `%COMMAND%`, `%COMMAND(ARGUMENT)%` or `%COMMAND(ARGUMENT):LENGTH%` with COMMAND in
//! `[A-Z0-9_]+`. An operator Legate does not implement is refused when the format is compiled,
//! never printed as text. [`JsonFormatter`] (`json_format`) and [`FormatString`] (the whole
//! `envoy.config.core.v3.SubstitutionFormatString`) build on the same operators.

pub(crate) mod json;
mod operator;
mod time;

use std::sync::OnceLock;

use legate_api::pb::envoy::config::core::v3::{
    DataSource, SubstitutionFormatString, data_source, substitution_format_string,
};
use regex::Regex;

pub use json::JsonFormatter;
use operator::Operator;

use crate::stream_info::StreamInfo;
use crate::{Compiled, ConfigError};

/// Envoy's default access-log format (`SubstitutionFormatUtils::DEFAULT_FORMAT`).
pub const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// What an unset operator prints in a text format (`DefaultUnspecifiedValueString`).
pub const UNSET: &str = "-";

/// One piece of a compiled format string.
#[derive(Clone, Debug)]
enum Piece {
    Literal(String),
    Operator(Operator),
}

/// A compiled text format string.
#[derive(Clone, Debug)]
pub struct Formatter {
    pieces: Vec<Piece>,
    /// `-`, or empty with `omit_empty_values`.
    unset: &'static str,
}

/// Envoy's command syntax, anchored at a `%`: command, optional `(argument)` (the shortest
/// that lets the rest match, no newline), optional `:length`, closing `%`.
fn command_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        // A constant pattern: compiling it cannot fail on any input.
        Regex::new(r"^%([A-Z0-9_]+)(?:\((.*?)\))?(?::([0-9]+))?%")
            .unwrap_or_else(|_| unreachable!("constant regex"))
    })
}

impl Formatter {
    /// Compiles `format`; unset values print `-`.
    pub fn parse(format: &str) -> Result<Formatter, String> {
        Self::parse_with(format, false)
    }

    /// Compiles `format`; with `omit_empty_values` unset values print nothing
    /// (`SubstitutionFormatString.omit_empty_values`).
    pub fn parse_with(format: &str, omit_empty_values: bool) -> Result<Formatter, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut pos = 0;
        while pos < format.len() {
            let rest = &format[pos..];
            let Some(offset) = rest.find('%') else {
                literal.push_str(rest);
                break;
            };
            literal.push_str(&rest[..offset]);
            pos += offset;
            let rest = &format[pos..];
            if rest.starts_with("%%") {
                literal.push('%');
                pos += 2;
                continue;
            }
            let Some(caps) = command_regex().captures(rest) else {
                return Err(invalid_command(format, pos));
            };
            let command = caps.get(1).map_or("", |m| m.as_str());
            let argument = caps.get(2).map_or("", |m| m.as_str());
            let max_length = match caps.get(3) {
                // An unparsable (overflowing) length fails the whole match in Envoy too.
                Some(m) => Some(
                    m.as_str()
                        .parse::<usize>()
                        .map_err(|_| invalid_command(format, pos))?,
                ),
                None => None,
            };
            let op = match operator::parse(command, argument, max_length)? {
                Some(op) => op,
                None if operator::ENVOY_ONLY_OPERATORS.contains(&command) => {
                    return Err(format!(
                        "%{command}% is an Envoy command operator that Legate does not support yet"
                    ));
                }
                None => return Err(format!("Not supported field in StreamInfo: {command}")),
            };
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Operator(op));
            pos += caps.get(0).map_or(rest.len(), |m| m.end());
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(Formatter {
            pieces,
            unset: if omit_empty_values { "" } else { UNSET },
        })
    }

    /// Envoy's default access-log format ([`DEFAULT_FORMAT`]).
    pub fn envoy_default() -> Formatter {
        static DEFAULT: OnceLock<Formatter> = OnceLock::new();
        DEFAULT
            .get_or_init(|| {
                Formatter::parse(DEFAULT_FORMAT)
                    .unwrap_or_else(|e| unreachable!("the default format compiles: {e}"))
            })
            .clone()
    }

    /// The formatted line; unset values print `-` (or nothing with `omit_empty_values`).
    pub fn format(&self, info: &StreamInfo) -> String {
        self.format_with(info, self.unset)
    }

    /// The formatted value with `unset` for unset operators. Header values
    /// (`request_headers_to_add` and friends) use `""`, as Envoy's header formatter does.
    pub fn format_with(&self, info: &StreamInfo, unset: &str) -> String {
        let mut out = String::with_capacity(256);
        self.append(info, unset, &mut out);
        out
    }

    /// Appends the formatted value to `out`.
    pub fn append(&self, info: &StreamInfo, unset: &str, out: &mut String) {
        for piece in &self.pieces {
            match piece {
                Piece::Literal(s) => out.push_str(s),
                Piece::Operator(op) => match op.evaluate(info) {
                    Some(value) => value.push_text(out),
                    None => out.push_str(unset),
                },
            }
        }
    }

    /// The text when the format has no operator (a plain header value): callers can skip
    /// formatting per stream.
    pub fn as_literal(&self) -> Option<&str> {
        match self.pieces.as_slice() {
            [] => Some(""),
            [Piece::Literal(s)] => Some(s),
            _ => None,
        }
    }

    /// The single operator's typed value, when the format is exactly one operator: JSON
    /// formats keep its type (number, string, null) as Envoy does.
    fn single_operator(&self) -> Option<&Operator> {
        match self.pieces.as_slice() {
            [Piece::Operator(op)] => Some(op),
            _ => None,
        }
    }
}

fn invalid_command(format: &str, pos: usize) -> String {
    format!("Incorrect configuration: {format}. Couldn't find valid command at position {pos}")
}

/// The two kinds of substitution format.
#[derive(Clone, Debug)]
pub enum SubstitutionFormat {
    Text(Formatter),
    Json(JsonFormatter),
}

impl SubstitutionFormat {
    /// One formatted record: the text as configured, or one JSON object and a newline.
    pub fn format(&self, info: &StreamInfo) -> String {
        match self {
            SubstitutionFormat::Text(f) => f.format(info),
            SubstitutionFormat::Json(f) => f.format(info),
        }
    }
}

/// A compiled `envoy.config.core.v3.SubstitutionFormatString`.
#[derive(Clone, Debug)]
pub struct FormatString {
    pub format: SubstitutionFormat,
    /// `content_type`, or `text/plain` / `application/json` by kind.
    pub content_type: String,
}

impl FormatString {
    /// Compiles the message; errors name the field (`text_format_source.inline_string`, ...).
    pub fn compile(proto: &SubstitutionFormatString) -> Compiled<FormatString> {
        #[allow(deprecated)] // `text_format` is deprecated but still accepted by Envoy 1.40.
        let SubstitutionFormatString {
            omit_empty_values,
            content_type,
            formatters,
            json_format_options: _, // `sort_properties` has no effect: keys are always sorted.
            format,
        } = proto;
        let err = |path: &str, message: String| Err(vec![ConfigError::new(path, message)]);
        if !formatters.is_empty() {
            return err(
                "formatters[0]",
                format!(
                    "formatter extensions ({}) are not supported by Legate",
                    formatters[0].name
                ),
            );
        }
        #[allow(deprecated)]
        let format = match format {
            Some(substitution_format_string::Format::TextFormat(text)) => {
                match Formatter::parse_with(text, *omit_empty_values) {
                    Ok(f) => SubstitutionFormat::Text(f),
                    Err(e) => return err("text_format", e),
                }
            }
            Some(substitution_format_string::Format::TextFormatSource(source)) => {
                let (field, text) = read_data_source(source).map_err(|e| {
                    e.into_iter()
                        .map(|e| e.within("text_format_source"))
                        .collect::<Vec<_>>()
                })?;
                match Formatter::parse_with(&text, *omit_empty_values) {
                    Ok(f) => SubstitutionFormat::Text(f),
                    Err(e) => return err(&format!("text_format_source.{field}"), e),
                }
            }
            Some(substitution_format_string::Format::JsonFormat(json)) => SubstitutionFormat::Json(
                JsonFormatter::compile(json, *omit_empty_values).map_err(|e| {
                    e.into_iter()
                        .map(|e| e.within("json_format"))
                        .collect::<Vec<_>>()
                })?,
            ),
            None => {
                return err(
                    "",
                    "one of text_format, text_format_source or json_format is required".to_owned(),
                );
            }
        };
        let content_type = if !content_type.is_empty() {
            content_type.clone()
        } else if matches!(format, SubstitutionFormat::Json(_)) {
            "application/json".to_owned()
        } else {
            "text/plain".to_owned()
        };
        Ok(FormatString {
            format,
            content_type,
        })
    }

    pub fn format(&self, info: &StreamInfo) -> String {
        self.format.format(info)
    }
}

/// The text of a `DataSource` (read now, as Envoy reads it at configuration time) and the
/// field it came from.
fn read_data_source(source: &DataSource) -> Compiled<(&'static str, String)> {
    let err = |path: &str, message: String| Err(vec![ConfigError::new(path, message)]);
    if source.watched_directory.is_some() {
        return err(
            "watched_directory",
            "watched directories are not supported by Legate".to_owned(),
        );
    }
    match &source.specifier {
        Some(data_source::Specifier::InlineString(s)) => Ok(("inline_string", s.clone())),
        Some(data_source::Specifier::InlineBytes(b)) => match String::from_utf8(b.clone()) {
            Ok(s) => Ok(("inline_bytes", s)),
            Err(_) => err("inline_bytes", "the format is not valid UTF-8".to_owned()),
        },
        Some(data_source::Specifier::Filename(path)) => match std::fs::read_to_string(path) {
            Ok(s) => Ok(("filename", s)),
            Err(e) => err("filename", format!("unable to read file: {path}: {e}")),
        },
        Some(data_source::Specifier::EnvironmentVariable(name)) => match std::env::var(name) {
            Ok(s) => Ok(("environment_variable", s)),
            Err(_) => err(
                "environment_variable",
                format!("Environment variable doesn't exist: {name}"),
            ),
        },
        None => err("", "a data source is required".to_owned()),
    }
}

#[cfg(test)]
pub(crate) mod tests;
