//! A response on the wire: the status line and headers (with `date`, and `connection: close`
//! when the connection ends after it), and the framing its body is sent in.

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderValue};
use http::{StatusCode, response};
use http_body::SizeHint;
pub(super) use legate_core::http1::{CHUNK_END, LAST_CHUNK, chunk_size};
use legate_core::http1::{Connection, Fields, Seen};

/// How a response body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body is sent (HEAD, 1xx, 204, 304), whatever the headers say.
    None,
    /// `content-length` bytes, then the response is over.
    Length(u64),
    Chunked,
}

/// What the request asked of the response.
#[derive(Clone, Copy, Debug)]
pub(super) struct Exchange {
    pub head_request: bool,
    /// The connection closes after this response: the head says `connection: close`.
    pub close: bool,
}

/// Writes the response head into `out`; returns how the body must be framed.
pub(super) fn head(
    out: &mut BytesMut,
    parts: &mut response::Parts,
    hint: &SizeHint,
    exchange: Exchange,
) -> Framing {
    let status = parts.status;
    let headers = &mut parts.headers;
    // One pass over the fields for the headers looked at below.
    let fields = Fields::of(headers);
    let seen = fields.seen;
    if status.is_informational() || status == StatusCode::NO_CONTENT {
        // Never a body, and no length either (RFC 9110 §8.6).
        if seen.has(Seen::CONTENT_LENGTH) {
            headers.remove(header::CONTENT_LENGTH);
        }
        if seen.has(Seen::TRANSFER_ENCODING) {
            headers.remove(header::TRANSFER_ENCODING);
        }
    }
    let framing = if exchange.head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::None
    } else if seen.has(Seen::TRANSFER_ENCODING) {
        // Any coding the upstream applied is passed on, chunked last: the body is re-chunked.
        if seen.has(Seen::CONTENT_LENGTH) {
            headers.remove(header::CONTENT_LENGTH);
        }
        Framing::Chunked
    } else if let Ok(Some(length)) = fields.content_length() {
        if fields.listed_length() {
            // `3, 3` (equal values, as the upstream codec allows) goes on as `3`.
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
        Framing::Length(length)
    } else if let Some(length) = hint.exact() {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        Framing::Length(length)
    } else {
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        Framing::Chunked
    };
    if exchange.close && !fields.connection(Connection::Close) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }

    out.reserve(128 + headers.len() * 32);
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.put_slice(b"\r\n");
    if !seen.has(Seen::DATE) {
        out.put_slice(b"date: ");
        crate::headers::with_date(|date| out.put_slice(date.as_bytes()));
        out.put_slice(b"\r\n");
    }
    legate_core::http1::put_fields(out, headers);
    framing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(
        status: u16,
        headers: &[(&str, &str)],
        hint: SizeHint,
        exchange: Exchange,
    ) -> (String, Framing) {
        let mut builder = http::Response::builder().status(status);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let (mut parts, ()) = builder.body(()).unwrap().into_parts();
        let mut out = BytesMut::new();
        let framing = head(&mut out, &mut parts, &hint, exchange);
        (String::from_utf8(out.to_vec()).unwrap(), framing)
    }

    const KEEP: Exchange = Exchange {
        head_request: false,
        close: false,
    };

    #[test]
    fn frames_bodies_as_their_length_allows() {
        let (text, framing) = encode(200, &[("x-a", "b")], SizeHint::with_exact(5), KEEP);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\ndate: "), "{text}");
        assert!(
            text.ends_with("x-a: b\r\ncontent-length: 5\r\n\r\n"),
            "{text}"
        );
        assert_eq!(framing, Framing::Length(5));
        let (text, framing) = encode(200, &[], SizeHint::new(), KEEP);
        assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
        assert_eq!(framing, Framing::Chunked);
        let (text, framing) = encode(200, &[("content-length", "7")], SizeHint::new(), KEEP);
        assert!(text.contains("content-length: 7\r\n"), "{text}");
        assert_eq!(framing, Framing::Length(7));
        // Equal values in a list or in two headers go out as one value.
        for listed in [
            &[("content-length", "7, 7")][..],
            &[("content-length", "7"); 2],
        ] {
            let (text, framing) = encode(200, listed, SizeHint::new(), KEEP);
            assert_eq!(text.matches("content-length").count(), 1, "{text}");
            assert!(text.contains("content-length: 7\r\n"), "{text}");
            assert_eq!(framing, Framing::Length(7));
        }
        let (_, framing) = encode(304, &[("content-length", "7")], SizeHint::new(), KEEP);
        assert_eq!(framing, Framing::None);
        let head_request = Exchange {
            head_request: true,
            close: true,
        };
        let (text, framing) = encode(
            299,
            &[("content-length", "7")],
            SizeHint::new(),
            head_request,
        );
        assert!(text.starts_with("HTTP/1.1 299 Unknown\r\n"), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
        assert_eq!(framing, Framing::None);
    }

    #[test]
    fn sizes_chunks_in_hex() {
        let mut out = BytesMut::new();
        chunk_size(&mut out, 255);
        assert_eq!(&out[..], b"ff\r\n");
    }
}
