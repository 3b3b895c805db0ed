//! `%START_TIME(FORMAT)%`, `%EMIT_TIME(FORMAT)%` and their `_LOCAL` forms.
//!
//! Without a format Envoy prints UTC with milliseconds: `2016-04-15T20:17:00.310Z`
//! (`AccessLogDateTimeFormatter`); the `_LOCAL` forms print the machine's time zone and its
//! offset instead: `2016-04-16T01:47:00.310+0530`. With one, it is a strftime string (in UTC) with Envoy's
//! extensions (`DateFormatter`): `%s` (seconds since the epoch) and `%f` / `%1f`..`%9f`
//! (fractional seconds, nine digits by default, truncated not rounded). The rest is handed to
//! chrono's strftime, checked when the format is compiled so that formatting cannot fail later.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, Local, TimeZone, Utc};

/// A compiled `START_TIME` format.
#[derive(Clone, Debug)]
pub(crate) struct TimeFormat {
    /// Empty for Envoy's default format.
    pieces: Vec<TimePiece>,
    /// In the machine's time zone (`_LOCAL`), not UTC.
    local: bool,
}

#[derive(Clone, Debug)]
enum TimePiece {
    Strftime(Vec<Item<'static>>),
    /// `%f` (9) and `%1f`..`%9f`.
    Fraction(usize),
    /// `%s`.
    EpochSeconds,
}

impl TimeFormat {
    pub(crate) fn parse(format: &str) -> Result<TimeFormat, String> {
        // Envoy refuses a newline specifier (`%n`, `%En`, `%-n`...): the value may be used in a
        // header.
        if contains_newline_specifier(format) {
            return Err("Invalid header configuration. Format string contains newline.".to_owned());
        }
        let mut pieces = Vec::new();
        let mut pending = String::new();
        let mut chars = format.char_indices().peekable();
        while let Some((_, c)) = chars.next() {
            if c != '%' {
                pending.push(c);
                continue;
            }
            let own = match chars.peek().map(|&(_, n)| n) {
                Some('f') => {
                    chars.next();
                    Some(TimePiece::Fraction(9))
                }
                Some('s') => {
                    chars.next();
                    Some(TimePiece::EpochSeconds)
                }
                Some(d @ '1'..='9') => {
                    let mut ahead = chars.clone();
                    ahead.next();
                    if ahead.peek().map(|&(_, n)| n) == Some('f') {
                        chars.next();
                        chars.next();
                        Some(TimePiece::Fraction(d as usize - '0' as usize))
                    } else {
                        None
                    }
                }
                Some('%') => {
                    // An escaped percent stays for strftime to print.
                    chars.next();
                    pending.push_str("%%");
                    continue;
                }
                _ => None,
            };
            match own {
                Some(piece) => {
                    flush_strftime(&mut pending, &mut pieces, format)?;
                    pieces.push(piece);
                }
                None => pending.push('%'),
            }
        }
        flush_strftime(&mut pending, &mut pieces, format)?;
        Ok(TimeFormat {
            pieces,
            local: false,
        })
    }

    /// The same format in the machine's time zone.
    pub(crate) fn local(self) -> TimeFormat {
        TimeFormat {
            local: true,
            ..self
        }
    }

    pub(crate) fn format(&self, time: SystemTime) -> String {
        if self.local {
            self.render(DateTime::<Local>::from(time), time, local_default_items())
        } else {
            self.render(DateTime::<Utc>::from(time), time, default_items())
        }
    }

    fn render<Tz: TimeZone>(
        &self,
        at: DateTime<Tz>,
        time: SystemTime,
        default: &[Item<'static>],
    ) -> String
    where
        Tz::Offset: std::fmt::Display,
    {
        if self.pieces.is_empty() {
            return at.format_with_items(default.iter()).to_string();
        }
        let mut out = String::with_capacity(32);
        for piece in &self.pieces {
            match piece {
                TimePiece::Strftime(items) => {
                    // The items were checked at parse time, so writing cannot fail.
                    use std::fmt::Write;
                    let _ = write!(out, "{}", at.format_with_items(items.iter()));
                }
                TimePiece::Fraction(digits) => {
                    let nanos = format!("{:09}", at.timestamp_subsec_nanos() % 1_000_000_000);
                    out.push_str(&nanos[..*digits]);
                }
                TimePiece::EpochSeconds => {
                    let secs = match time.duration_since(UNIX_EPOCH) {
                        Ok(d) => d.as_secs() as i64,
                        Err(e) => -(e.duration().as_secs_f64().ceil() as i64),
                    };
                    out.push_str(&secs.to_string());
                }
            }
        }
        out
    }
}

/// Envoy's default, `%Y-%m-%dT%H:%M:%E3SZ`, parsed once rather than per line.
fn default_items() -> &'static [Item<'static>] {
    static ITEMS: OnceLock<Vec<Item<'static>>> = OnceLock::new();
    ITEMS.get_or_init(|| parse_items("%Y-%m-%dT%H:%M:%S%.3fZ"))
}

/// Envoy's default in local time, `%Y-%m-%dT%H:%M:%E3S%z`.
fn local_default_items() -> &'static [Item<'static>] {
    static ITEMS: OnceLock<Vec<Item<'static>>> = OnceLock::new();
    ITEMS.get_or_init(|| parse_items("%Y-%m-%dT%H:%M:%S%.3f%z"))
}

fn parse_items(format: &str) -> Vec<Item<'static>> {
    StrftimeItems::new(format)
        .parse_to_owned()
        .unwrap_or_default()
}

fn flush_strftime(
    pending: &mut String,
    pieces: &mut Vec<TimePiece>,
    whole: &str,
) -> Result<(), String> {
    if pending.is_empty() {
        return Ok(());
    }
    let items = StrftimeItems::new(pending).parse_to_owned().map_err(|_| {
        format!("START_TIME format '{whole}' has a specifier Legate does not support")
    })?;
    pieces.push(TimePiece::Strftime(items));
    pending.clear();
    Ok(())
}

/// Envoy's `%[-_0^#]*[1-9]*(E|O)?n` search.
fn contains_newline_specifier(format: &str) -> bool {
    let bytes = format.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b != b'%' {
            continue;
        }
        let mut j = i + 1;
        while j < bytes.len() && b"-_0^#".contains(&bytes[j]) {
            j += 1;
        }
        while j < bytes.len() && (b'1'..=b'9').contains(&bytes[j]) {
            j += 1;
        }
        if j < bytes.len() && (bytes[j] == b'E' || bytes[j] == b'O') {
            j += 1;
        }
        if j < bytes.len() && bytes[j] == b'n' {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn default_is_utc_with_milliseconds() {
        let t = TimeFormat::parse("").unwrap();
        // 2016-04-15T20:17:00.310Z, Envoy's documented example.
        assert_eq!(
            t.format(at(1_460_751_420, 310_999_999)),
            "2016-04-15T20:17:00.310Z"
        );
    }

    #[test]
    fn envoy_extensions_and_strftime() {
        let t = TimeFormat::parse("%Y/%m/%dT%H:%M:%S%z %s.%3f|%f|%1f|%9f|%%").unwrap();
        assert_eq!(
            t.format(at(1_527_590_590, 528_123_456)),
            "2018/05/29T10:43:10+0000 1527590590.528|528123456|5|528123456|%"
        );
    }

    #[test]
    fn newline_and_bad_specifiers_are_refused() {
        assert_eq!(
            TimeFormat::parse("%Y%n").unwrap_err(),
            "Invalid header configuration. Format string contains newline."
        );
        assert!(TimeFormat::parse("%-En").is_err());
        assert!(TimeFormat::parse("%Q").is_err());
    }
}
