//! `%VARIABLE%` substitution in header values (`request_headers_to_add` and friends), with the
//! same operators as access logs (Envoy 1.40 uses one substitution formatter for both). An
//! operator that yields nothing expands to the empty string, as Envoy does in headers.

use legate_core::format::Formatter;
use legate_core::stream_info::StreamInfo;

/// Expands `value` for `info`; a value that does not parse is used as it is (configs are
/// checked when they load, so this is only a safety net).
pub fn expand(value: &str, info: &StreamInfo) -> String {
    if !value.contains('%') {
        return value.to_owned();
    }
    match Formatter::parse(value) {
        Ok(f) => f.format_with(info, ""),
        Err(_) => value.to_owned(),
    }
}
