//! A response head: the status line and the header fields with the checks Envoy's codec
//! makes (token names, values free of control characters, no line folding, the cluster's
//! header count), and the body's framing. Any `HTTP/x.y` version is taken, as by Envoy's
//! parser: HTTP/1.0 as itself, the others as HTTP/1.1.

use bytes::BytesMut;
use http::header::{self, HeaderMap};
use http::{Response, StatusCode, Version};
use legate_core::http1::{
    Connection, Fields, Framing, Lines, Seen, header_field, leading_blank_lines, tokens,
};

/// A parsed response head.
pub(super) struct Head {
    pub response: Response<()>,
    pub framing: Framing,
    /// The host keeps the connection open after this response (HTTP/1.1 without
    /// `connection: close`, HTTP/1.0 with `connection: keep-alive`).
    pub keep_alive: bool,
}

/// Why a response head is refused: Envoy's codec error.
pub(super) type Refusal = &'static str;

/// Parses the head occupying `buf[..end]` and removes it from `buf`. `head_request`: the
/// response has no body whatever it says.
pub(super) fn parse(
    buf: &mut BytesMut,
    end: usize,
    max_headers: usize,
    head_request: bool,
) -> Result<Head, Refusal> {
    let bytes = buf.split_to(end).freeze();
    let mut lines = Lines::new(&bytes, leading_blank_lines(&bytes));
    let (start, stop) = lines.next().ok_or("http1.codec_error")?;
    let (version, status) = status_line(&bytes[start..stop])?;
    let mut headers = HeaderMap::with_capacity(12);
    let mut fields = Fields::default();
    for (start, stop) in lines.by_ref() {
        if start == stop {
            break;
        }
        if headers.len() >= max_headers {
            return Err("http1.too_many_headers");
        }
        let (name, value) = header_field(&bytes, start, stop).map_err(|_| "http1.codec_error")?;
        fields.note(&name, &value);
        headers.append(name, value);
    }
    let framing = framing(&headers, &fields, status, head_request)?;
    let keep_alive = match version {
        Version::HTTP_11 => !fields.connection(Connection::Close),
        _ => fields.connection(Connection::KeepAlive),
    };
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(Head {
        response,
        framing,
        keep_alive,
    })
}

/// `HTTP-version SP status-code [SP reason-phrase]`.
fn status_line(line: &[u8]) -> Result<(Version, StatusCode), Refusal> {
    let version = match line.get(..9) {
        Some(b"HTTP/1.0 ") => Version::HTTP_10,
        Some([b'H', b'T', b'T', b'P', b'/', major, b'.', minor, b' '])
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            Version::HTTP_11
        }
        _ => return Err("http1.codec_error"),
    };
    let code = line.get(9..12).ok_or("http1.codec_error")?;
    if line.len() > 12 && line[12] != b' ' {
        return Err("http1.codec_error");
    }
    let status = StatusCode::from_bytes(code).map_err(|_| "http1.codec_error")?;
    Ok((version, status))
}

/// The body's framing: none for a HEAD request's response, 1xx, 204 and 304; else chunked,
/// `content-length`, or up to the connection's end. Both at once are refused, as by Envoy
/// without `allow_chunked_length`, and so is a coding other than chunked last.
fn framing(
    headers: &HeaderMap,
    fields: &Fields,
    status: StatusCode,
    head_request: bool,
) -> Result<Framing, Refusal> {
    let seen = fields.seen;
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    let codings = if seen.has(Seen::TRANSFER_ENCODING) {
        tokens(headers, header::TRANSFER_ENCODING)
    } else {
        Vec::new()
    };
    if let Some(last) = codings.last() {
        if seen.has(Seen::CONTENT_LENGTH) {
            return Err("http1.content_length_and_chunked_not_allowed");
        }
        if !last.eq_ignore_ascii_case("chunked") || codings.len() > 1 {
            return Err("http1.invalid_transfer_encoding");
        }
        return Ok(Framing::Chunked);
    }
    if !seen.has(Seen::CONTENT_LENGTH) {
        return Ok(Framing::UntilClose);
    }
    Ok(
        match fields
            .content_length()
            .map_err(|_| "http1.content_length_not_allowed")?
        {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8], head_request: bool) -> Result<Head, Refusal> {
        let mut buf = BytesMut::from(raw);
        let end = legate_core::http1::find_end(&buf, 0).expect("a complete head");
        parse(&mut buf, end, 4, head_request)
    }

    #[test]
    fn parses_status_headers_and_framing() {
        let h = head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a:  b \r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(h.response.status(), 200);
        assert_eq!(h.response.headers()["x-a"], "b");
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive);
        let h = head(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true).unwrap();
        assert_eq!(h.framing, Framing::Empty);
        let h = head(b"HTTP/1.0 404\r\n\r\n", false).unwrap();
        assert_eq!(h.framing, Framing::UntilClose);
        assert!(!h.keep_alive);
        let h = head(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!h.keep_alive);
        let h = head(
            b"HTTP/1.1 204 No Content\r\ncontent-length: 7\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(h.framing, Framing::Empty);
    }

    #[test]
    fn refuses_what_envoy_refuses() {
        for raw in [
            &b"HTTP/2 200 OK\r\n\r\n"[..],
            b"HTTP/1.x 200 OK\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 200OK\r\n\r\n",
            b"ICY 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx a: b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx: a\r\n folded\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\ne: 5\r\n\r\n",
        ] {
            assert!(
                head(raw, false).is_err(),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}
