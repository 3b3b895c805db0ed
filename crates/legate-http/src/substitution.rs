//! `%VARIABLE%` substitution in header values (`request_headers_to_add` and friends), with the
//! same operators as access logs (Envoy 1.40 uses one substitution formatter for both). The
//! formats are compiled when the route table loads; an operator that yields nothing expands to
//! the empty string, as Envoy does in headers.

use legate_core::format::Formatter;
use legate_core::stream_info::StreamInfo;

use crate::route::HeaderAdd;

/// The value of `add` for this stream.
pub fn expand(add: &HeaderAdd, info: &StreamInfo) -> String {
    match &add.formatter {
        Some(f) => f.format_with(info, ""),
        None => add.value.clone(),
    }
}

/// Expands a value given as text (local-reply headers, compiled less often than routes).
pub fn expand_text(value: &str, info: &StreamInfo) -> String {
    if !value.contains('%') {
        return value.to_owned();
    }
    match Formatter::parse(value) {
        Ok(f) => f.format_with(info, ""),
        Err(_) => value.to_owned(),
    }
}
