//! A message head on the wire: where it ends, its lines, and its header fields.

use bytes::Bytes;
use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

use super::{Malformed, scan};

/// Where the head in `buf` ends (the index after its blank line), scanning from `from` (bytes
/// before it were searched by an earlier call). Leading blank lines are not a head's end.
pub fn find_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = leading_blank_lines(buf);
    // A blank line: `\n\n` or `\n\r\n` (bare LF line endings are accepted, as by Envoy).
    scan::Positions::new(buf, from.max(start), b'\n')
        .find(|&lf| {
            lf > start
                && (buf[lf - 1] == b'\n'
                    || (buf[lf - 1] == b'\r' && lf >= start + 2 && buf[lf - 2] == b'\n'))
        })
        .map(|lf| lf + 1)
}

/// Where the search may resume after `len` bytes were searched without finding an end: the
/// last three bytes may start a blank line.
pub fn resume_at(len: usize) -> usize {
    len.saturating_sub(3)
}

/// The number of empty lines a peer may send before a message (RFC 9112 §2.2).
pub fn leading_blank_lines(buf: &[u8]) -> usize {
    buf.iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count()
}

/// The lines of a head as `(start, end)` ranges without their line ending.
pub struct Lines<'a> {
    bytes: &'a [u8],
    at: usize,
    ends: scan::Positions<'a>,
}

impl<'a> Lines<'a> {
    /// The lines of `bytes` from `at` on.
    pub fn new(bytes: &'a [u8], at: usize) -> Self {
        Lines {
            bytes,
            at,
            ends: scan::Positions::new(bytes, at, b'\n'),
        }
    }
}

impl Iterator for Lines<'_> {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        let lf = self.ends.next()?;
        let start = self.at;
        self.at = lf + 1;
        let end = if lf > start && self.bytes[lf - 1] == b'\r' {
            lf - 1
        } else {
            lf
        };
        Some((start, end))
    }
}

/// The headers the codecs read for a message's framing and its connection, noted in
/// [`Fields`] while a head is parsed (or in one pass over a map), so that a head without them
/// is not searched for them: each lookup in a `HeaderMap` hashes its name, present or not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen(u8);

impl Seen {
    pub const CONNECTION: Seen = Seen(1);
    pub const CONTENT_LENGTH: Seen = Seen(1 << 1);
    pub const TRANSFER_ENCODING: Seen = Seen(1 << 2);
    pub const UPGRADE: Seen = Seen(1 << 3);
    pub const EXPECT: Seen = Seen(1 << 4);
    pub const DATE: Seen = Seen(1 << 5);

    /// The flag of `name`, when it is one of the headers [`Seen`] tracks.
    fn flag(name: &HeaderName) -> Option<Seen> {
        // By length first: most names are not compared at all.
        let name = name.as_str();
        Some(match name.len() {
            10 if name == "connection" => Seen::CONNECTION,
            14 if name == "content-length" => Seen::CONTENT_LENGTH,
            17 if name == "transfer-encoding" => Seen::TRANSFER_ENCODING,
            7 if name == "upgrade" => Seen::UPGRADE,
            6 if name == "expect" => Seen::EXPECT,
            4 if name == "date" => Seen::DATE,
            _ => return None,
        })
    }

    pub fn has(self, flag: Seen) -> bool {
        self.0 & flag.0 != 0
    }
}

/// A parsed head's framing and connection headers, read as its fields are parsed: the
/// `connection` tokens the codecs act on and the `content-length`, so that the head need not be
/// searched for them afterwards (a lookup in a `HeaderMap` hashes the name).
#[derive(Clone, Copy, Debug, Default)]
pub struct Fields {
    pub seen: Seen,
    /// The [`Connection`] tokens listed.
    connection: u8,
    /// The `content-length` so far: repeated values must agree.
    length: Option<u64>,
    bad_length: bool,
    /// The length came as a list (`3, 3`) or in more than one header.
    listed_length: bool,
}

/// A `connection` token the codecs act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connection {
    Close = 1,
    KeepAlive = 1 << 1,
    Upgrade = 1 << 2,
}

impl Fields {
    /// The fields of a head already in a map (one pass over it).
    pub fn of(headers: &HeaderMap) -> Fields {
        let mut fields = Fields::default();
        for (name, value) in headers {
            fields.note(name, value);
        }
        fields
    }

    /// Notes a field of the head.
    pub fn note(&mut self, name: &HeaderName, value: &HeaderValue) {
        let Some(flag) = Seen::flag(name) else {
            return;
        };
        self.seen.0 |= flag.0;
        if flag == Seen::CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                for listed in [
                    Connection::Close,
                    Connection::KeepAlive,
                    Connection::Upgrade,
                ] {
                    if token.eq_ignore_ascii_case(listed.token()) {
                        self.connection |= listed as u8;
                    }
                }
            }
        } else if flag == Seen::CONTENT_LENGTH {
            self.listed_length |= self.length.is_some() || value.as_bytes().contains(&b',');
            if add_length(value, &mut self.length).is_err() {
                self.bad_length = true;
            }
        }
    }

    /// Whether a `connection` header lists `token` (in any case).
    pub fn connection(&self, token: Connection) -> bool {
        self.connection & token as u8 != 0
    }

    /// The head's `content-length`, as [`content_length`] reads it from a map.
    pub fn content_length(&self) -> Result<Option<u64>, Malformed> {
        if self.bad_length {
            return Err(Malformed);
        }
        Ok(self.length)
    }

    /// Whether the `content-length` came as a list of (equal) values, or in several headers:
    /// what goes out again is the single value.
    pub fn listed_length(&self) -> bool {
        self.listed_length
    }
}

impl Connection {
    fn token(self) -> &'static [u8] {
        match self {
            Connection::Close => b"close",
            Connection::KeepAlive => b"keep-alive",
            Connection::Upgrade => b"upgrade",
        }
    }
}

/// `name: value` — the name a token with no whitespace before the colon, the value trimmed
/// of surrounding whitespace and free of control characters (NUL, bare CR) other than HTAB.
/// The value shares `bytes`.
pub fn header_field(
    bytes: &Bytes,
    start: usize,
    end: usize,
) -> Result<(HeaderName, HeaderValue), Malformed> {
    let line = &bytes[start..end];
    // A line starting with whitespace continues the previous value (obsolete line folding),
    // which Envoy refuses. (Searched in the rest of the head, whole blocks at a time; a colon
    // past the line's end is not its.)
    let colon = scan::find(&bytes[start..], b':')
        .filter(|&colon| colon < line.len())
        .ok_or(Malformed)?;
    let name = &line[..colon];
    let mut from = start + colon + 1;
    let mut to = end;
    while from < to && matches!(bytes[from], b' ' | b'\t') {
        from += 1;
    }
    while to > from && matches!(bytes[to - 1], b' ' | b'\t') {
        to -= 1;
    }
    // A name is a token only (no whitespace before the colon); a value has no control
    // characters other than HTAB (NUL, a bare CR).
    let name = super::names::parse(name).map_err(|_| Malformed)?;
    if !scan::is_field_value(&bytes[from..to]) {
        return Err(Malformed);
    }
    // SAFETY: the bytes are those `HeaderValue::from_maybe_shared` takes (`is_field_value`
    // has the same rule; debug builds check again here). Its doc asks for UTF-8, but its own
    // safe constructors take obs-text too, and `to_str` checks before it reads a `str`.
    let value = unsafe { HeaderValue::from_maybe_shared_unchecked(bytes.slice(from..to)) };
    Ok((name, value))
}

/// The `content-length` of a head (`None`: it has none). Repeated values, in one header or
/// several, must agree.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Malformed> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        add_length(value, &mut length)?;
    }
    Ok(length)
}

/// Adds one `content-length` value (a list of lengths) to the `length` of those before it:
/// each must be digits and agree with the others.
fn add_length(value: &HeaderValue, length: &mut Option<u64>) -> Result<(), Malformed> {
    for item in value.as_bytes().split(|&b| b == b',') {
        let item = item.trim_ascii();
        if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
            return Err(Malformed);
        }
        let n: u64 = std::str::from_utf8(item)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(Malformed)?;
        if length.is_some_and(|l| l != n) {
            return Err(Malformed);
        }
        *length = Some(n);
    }
    Ok(())
}

/// Whether a `name` header lists `token` (case-insensitive): `connection: close` and the like.
/// (On the value's bytes: a value with obs-text elsewhere still lists its ASCII tokens.)
pub fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The comma-separated tokens of every `name` header, trimmed.
pub fn tokens(headers: &HeaderMap, name: HeaderName) -> Vec<&str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_end_with_either_line_ending_and_resumes() {
        assert_eq!(
            find_end(b"GET / HTTP/1.1\r\nhost: x\r\n\r\nbody", 0),
            Some(27)
        );
        assert_eq!(find_end(b"GET / HTTP/1.1\nhost: x\n\n", 0), Some(24));
        assert_eq!(find_end(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n", 0), Some(22));
        assert_eq!(find_end(b"GET / HTTP/1.1\r\nhost: x\r\n", 0), None);
        let whole = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
        for cut in 1..whole.len() {
            let resume = resume_at(cut);
            assert_eq!(find_end(whole, resume), Some(whole.len()), "cut at {cut}");
        }
    }

    #[test]
    fn fields_read_while_parsing_agree_with_the_map() {
        let heads: &[&[(&str, &str)]] = &[
            &[],
            &[("content-length", "3"), ("x-a", "b")],
            &[("content-length", "3, 3"), ("Content-Length", "3")],
            &[("content-length", "3"), ("content-length", "4")],
            &[("content-length", "-1")],
            &[("content-length", "")],
            &[("connection", "Keep-Alive")],
            &[("connection", " close ,upgrade"), ("upgrade", "websocket")],
            &[("connection", "closed, keep-alivex")],
            &[("connection", "te"), ("Connection", "CLOSE"), ("date", "x")],
            &[("connection", "é, close"), ("transfer-encoding", "chunked")],
        ];
        for head in heads {
            let mut map = HeaderMap::new();
            let mut fields = Fields::default();
            for (name, value) in *head {
                let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
                let value = HeaderValue::from_bytes(value.as_bytes()).unwrap();
                fields.note(&name, &value);
                map.append(name, value);
            }
            let seen = Seen(map.keys().filter_map(Seen::flag).fold(0, |s, f| s | f.0));
            assert_eq!(fields.seen, seen, "{head:?}");
            let of_map = Fields::of(&map);
            assert_eq!(of_map.seen, seen, "{head:?}");
            assert_eq!(of_map.content_length(), fields.content_length(), "{head:?}");
            assert_eq!(of_map.connection, fields.connection, "{head:?}");
            assert_eq!(fields.content_length(), content_length(&map), "{head:?}");
            let lengths = map.get_all(header::CONTENT_LENGTH).iter().count();
            let listed = map
                .get_all(header::CONTENT_LENGTH)
                .iter()
                .any(|v| v.as_bytes().contains(&b','));
            assert_eq!(fields.listed_length(), lengths > 1 || listed, "{head:?}");
            for (token, spelled) in [
                (Connection::Close, "close"),
                (Connection::KeepAlive, "keep-alive"),
                (Connection::Upgrade, "upgrade"),
            ] {
                assert_eq!(
                    fields.connection(token),
                    has_token(&map, header::CONNECTION, spelled),
                    "{head:?} {spelled}"
                );
            }
        }
    }

    #[test]
    fn a_field_is_read_within_its_line() {
        let head = Bytes::from_static(b"x-a b\r\nx-c: d\r\nx-e:\tf g \r\n\r\n");
        let lines: Vec<_> = Lines::new(&head, 0).collect();
        assert_eq!(lines, [(0, 5), (7, 13), (15, 24), (26, 26)]);
        // The next line's colon is not the first line's.
        assert_eq!(header_field(&head, 0, 5), Err(Malformed));
        let (name, value) = header_field(&head, 7, 13).unwrap();
        assert_eq!((name.as_str(), value.as_bytes()), ("x-c", &b"d"[..]));
        let (name, value) = header_field(&head, 15, 24).unwrap();
        assert_eq!((name.as_str(), value.as_bytes()), ("x-e", &b"f g"[..]));
    }

    #[test]
    fn content_lengths_must_agree() {
        let mut headers = HeaderMap::new();
        assert_eq!(content_length(&headers), Ok(None));
        headers.append(header::CONTENT_LENGTH, HeaderValue::from_static("3, 3"));
        assert_eq!(content_length(&headers), Ok(Some(3)));
        headers.append(header::CONTENT_LENGTH, HeaderValue::from_static("4"));
        assert_eq!(content_length(&headers), Err(Malformed));
        for bad in ["-1", "", "1 2", "0x5", "99999999999999999999"] {
            let mut headers = HeaderMap::new();
            headers.append(header::CONTENT_LENGTH, HeaderValue::from_static(bad));
            assert_eq!(content_length(&headers), Err(Malformed), "{bad:?}");
        }
    }
}
