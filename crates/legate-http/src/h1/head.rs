//! A request head: finding its end in the read buffer, then parsing the request line and the
//! header fields with the checks Envoy's codec makes — token characters, request-target
//! forms, supported versions, header count and size limits, and the body's framing
//! (`content-length` or `transfer-encoding: chunked`, never guessed).

use bytes::{Bytes, BytesMut};
use http::header;
use http::{HeaderMap, Method, Uri, Version};

use legate_core::http1::{
    Connection, Fields, Framing, Lines, Seen, header_field, leading_blank_lines, tokens,
};

use super::CodecError;

/// The connection's limits: a head's (`max_request_headers_kb`, `max_headers_count`), and
/// the wait when closing.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// `request_headers_timeout`, from a request's first byte.
    pub header_timeout: Option<std::time::Duration>,
    /// How long a connection the proxy closes waits for the client to close
    /// (`delayed_close_timeout`; zero closes at once).
    pub delayed_close: std::time::Duration,
    /// Counts a close whose wait ran out (`downstream_cx_delayed_close_timeout`).
    pub delayed_close_timeouts: Option<legate_core::stats::Counter>,
}

/// A parsed request head.
#[derive(Debug)]
pub(super) struct Head {
    pub parts: http::request::Parts,
    pub framing: Framing,
    /// The client will keep the connection open after this exchange (HTTP/1.1 without
    /// `connection: close`, or HTTP/1.0 with `connection: keep-alive`).
    pub keep_alive: bool,
    /// `expect: 100-continue` on an HTTP/1.1 request with a body.
    pub expect_continue: bool,
    /// The connection may turn into a tunnel after the response: `connection: upgrade` with
    /// an `upgrade` header, or CONNECT.
    pub upgrade: bool,
}

/// Parses the head occupying `buf[..end]` and removes it from `buf`.
pub(super) fn parse(buf: &mut BytesMut, end: usize, limits: &Limits) -> Result<Head, CodecError> {
    let bytes = buf.split_to(end).freeze();
    let skip = leading_blank_lines(&bytes);
    let mut lines = Lines::new(&bytes, skip);
    // Over the limit is 431 whatever the head holds (checked first: a request line too long
    // for a URI would otherwise be a 400).
    if end - skip > limits.max_header_bytes {
        return Err(CodecError::HEADERS_TOO_LARGE);
    }
    let request_line = lines.next().ok_or(CodecError::BAD_REQUEST)?;
    let (method, uri, version, fragment) = request_line_parts(&bytes, request_line)?;

    let mut headers = HeaderMap::with_capacity(16);
    let mut fields = Fields::default();
    let mut count = 0;
    for (start, stop) in lines.by_ref() {
        if start == stop {
            break;
        }
        count += 1;
        if count > limits.max_headers {
            return Err(CodecError::HEADERS_TOO_LARGE);
        }
        let (name, value) =
            header_field(&bytes, start, stop).map_err(|_| CodecError::BAD_REQUEST)?;
        fields.note(&name, &value);
        headers.append(name, value);
    }

    let framing = framing(&headers, &fields)?;
    let keep_alive = match version {
        Version::HTTP_11 => !fields.connection(Connection::Close),
        _ => fields.connection(Connection::KeepAlive),
    };
    let upgrade = method == Method::CONNECT
        || (fields.seen.has(Seen::UPGRADE) && fields.connection(Connection::Upgrade));
    let expect_continue = version == Version::HTTP_11
        && framing != Framing::Empty
        && fields.seen.has(Seen::EXPECT)
        && crate::headers::expects_continue(&headers);

    let mut request = http::Request::new(());
    if let Some(fragment) = fragment {
        request.extensions_mut().insert(fragment);
    }
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    let (parts, ()) = request.into_parts();
    Ok(Head {
        parts,
        framing,
        keep_alive,
        expect_continue,
        upgrade,
    })
}

/// `method SP request-target SP HTTP-version`, single spaces, nothing else.
fn request_line_parts(
    bytes: &Bytes,
    (start, end): (usize, usize),
) -> Result<(Method, Uri, Version, Option<TargetWithFragment>), CodecError> {
    let line = &bytes[start..end];
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(CodecError::BAD_REQUEST);
    };
    // `Method` takes tokens only (RFC 9110 `tchar`), and no empty one.
    let method = Method::from_bytes(method).map_err(|_| CodecError::BAD_REQUEST)?;
    let target_start = start + method.as_str().len() + 1;
    let target = bytes.slice(target_start..target_start + target.len());
    let fragment = memchr::memchr(b'#', &target).map(|_| TargetWithFragment(target.clone()));
    // The target before the version: an h2c preface (`PRI * HTTP/2.0`) is a bad request.
    let uri = request_target(&method, target)?;
    let version = match version {
        b"HTTP/1.1" => Version::HTTP_11,
        b"HTTP/1.0" => Version::HTTP_10,
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            // A version Envoy's codec does not speak: 426, as for HTTP/1.0.
            return Err(CodecError::UPGRADE_REQUIRED);
        }
        _ => return Err(CodecError::BAD_REQUEST),
    };
    Ok((method, uri, version, fragment))
}

/// The request target as sent, on a request whose target had a `#fragment` (an extension of
/// the request: the parsed URI has no fragment).
#[derive(Clone, Debug)]
pub struct TargetWithFragment(pub Bytes);

/// The request target in the form its method allows: origin-form (`/path?query`),
/// absolute-form (`http://host/path`), authority-form (`host:port`, CONNECT only) or
/// asterisk-form (`*`, OPTIONS only). Only visible ASCII. A `#fragment` (which the URI drops)
/// is left for the connection manager to refuse, as Envoy's does: see [`TargetWithFragment`].
fn request_target(method: &Method, target: Bytes) -> Result<Uri, CodecError> {
    if target.is_empty() || !target.iter().all(|&b| (0x21..0x7f).contains(&b)) {
        return Err(CodecError::BAD_REQUEST);
    }
    let connect = method == Method::CONNECT;
    let form_allowed = match target[0] {
        b'/' => !connect,
        b'*' => target.len() == 1 && method == Method::OPTIONS,
        _ if connect => true,
        _ => memchr::memmem::find(&target, b"://").is_some(),
    };
    if !form_allowed {
        return Err(CodecError::BAD_REQUEST);
    }
    let uri = Uri::from_maybe_shared(target).map_err(|_| CodecError::BAD_REQUEST)?;
    let shape_ok = if connect {
        uri.authority().is_some() && uri.scheme().is_none() && uri.path_and_query().is_none()
    } else {
        uri.authority().is_none() == uri.scheme().is_none()
    };
    if !shape_ok {
        return Err(CodecError::BAD_REQUEST);
    }
    Ok(uri)
}

/// The body's framing from `transfer-encoding` and `content-length`; both at once are
/// refused (request smuggling), as by Envoy without `allow_chunked_length`.
fn framing(headers: &HeaderMap, fields: &Fields) -> Result<Framing, CodecError> {
    let seen = fields.seen;
    if !seen.has(Seen::TRANSFER_ENCODING) && !seen.has(Seen::CONTENT_LENGTH) {
        return Ok(Framing::Empty);
    }
    let codings = if seen.has(Seen::TRANSFER_ENCODING) {
        tokens(headers, header::TRANSFER_ENCODING)
    } else {
        Vec::new()
    };
    if let Some(last) = codings.last() {
        if seen.has(Seen::CONTENT_LENGTH) {
            return Err(CodecError::CONTENT_LENGTH_AND_CHUNKED);
        }
        // Only `chunked` delimits a request body; it must come last (RFC 9112 §6.3).
        if !last.eq_ignore_ascii_case("chunked") {
            return Err(CodecError::NOT_IMPLEMENTED);
        }
        if codings.len() > 1 {
            return Err(CodecError::NOT_IMPLEMENTED);
        }
        return Ok(Framing::Chunked);
    }
    let length = fields
        .content_length()
        .map_err(|_| CodecError::BAD_REQUEST)?;
    Ok(match length {
        None | Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_header_bytes: 1024,
        max_headers: 4,
        header_timeout: None,
        delayed_close: std::time::Duration::ZERO,
        delayed_close_timeouts: None,
    };

    fn head(raw: &[u8]) -> Result<Head, CodecError> {
        let mut buf = BytesMut::from(raw);
        let end = legate_core::http1::find_end(&buf, 0).expect("a complete head");
        let head = parse(&mut buf, end, &LIMITS);
        if head.is_ok() {
            assert_eq!(&buf[..], b"rest", "the head is removed, the rest stays");
        }
        head
    }

    #[test]
    fn parses_a_request_and_its_framing() {
        let h =
            head(b"POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nX-A:  v \r\n\r\nrest")
                .unwrap();
        assert_eq!(h.parts.method, Method::POST);
        assert_eq!(h.parts.uri, "/a?b=1");
        assert_eq!(h.parts.headers["x-a"], "v");
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive && !h.upgrade && !h.expect_continue);
        let h = head(b"GET / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nexpect: 100-continue\r\nconnection: close\r\n\r\nrest").unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!h.keep_alive && h.expect_continue);
        let h = head(
            b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\nrest",
        )
        .unwrap();
        assert!(h.upgrade);
        let h = head(b"CONNECT example.com:443 HTTP/1.1\r\nhost: x\r\n\r\nrest").unwrap();
        assert!(h.upgrade);
        assert_eq!(h.parts.uri.authority().unwrap(), "example.com:443");
        let h = head(b"GET http://other/p HTTP/1.1\r\nhost: x\r\ncontent-length: 3, 3\r\n\r\nrest")
            .unwrap();
        assert_eq!(h.parts.uri.host(), Some("other"));
        assert_eq!(h.framing, Framing::Length(3));
        let h = head(b"GET /q?x=1#frag HTTP/1.1\r\nhost: x\r\n\r\nrest").unwrap();
        assert_eq!(
            h.parts.extensions.get::<TargetWithFragment>().unwrap().0,
            "/q?x=1#frag"
        );
    }

    #[test]
    fn refuses_what_envoy_refuses() {
        for (raw, status) in [
            (&b"GET  HTTP/1.1\r\n\r\nrest"[..], 400),
            (b"GET / HTTP/1.1 x\r\n\r\nrest", 400),
            (b"G@T / HTTP/1.1\r\n\r\nrest", 400),
            (b"GET / FTP/1.1\r\n\r\nrest", 400),
            (b"GET / HTTP/2.0\r\n\r\nrest", 426),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nrest", 400),
            (b"GET * HTTP/1.1\r\n\r\nrest", 400),
            (b"GET foo HTTP/1.1\r\n\r\nrest", 400),
            ("GET /\u{e9} HTTP/1.1\r\n\r\nrest".as_bytes(), 400),
            (b"GET / HTTP/1.1\r\nx-a: a\x00b\r\n\r\nrest", 400),
            (b"GET / HTTP/1.1\r\nx-a : b\r\n\r\nrest", 400),
            (b"GET / HTTP/1.1\r\nx-a: b\r\n folded\r\n\r\nrest", 400),
            (
                b"GET / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nrest",
                400,
            ),
            (b"GET / HTTP/1.1\r\ncontent-length: -1\r\n\r\nrest", 400),
            (
                b"GET / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\nrest",
                501,
            ),
            (
                b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\ne: 5\r\n\r\nrest",
                431,
            ),
        ] {
            let status_seen = head(raw).map(|_| 200).unwrap_or_else(|e| e.status);
            assert_eq!(status_seen, status, "{:?}", String::from_utf8_lossy(raw));
        }
        let big = format!("GET /{} HTTP/1.1\r\n\r\nrest", "a".repeat(2000));
        assert_eq!(head(big.as_bytes()).unwrap_err().status, 431);
        // Too long for a URI too: still 431, the limit is checked first.
        let huge = format!("GET /{} HTTP/1.1\r\n\r\nrest", "a".repeat(70_000));
        assert_eq!(head(huge.as_bytes()).unwrap_err().status, 431);
        assert!(head(b"OPTIONS * HTTP/1.1\r\nhost: x\r\n\r\nrest").is_ok());
    }
}
