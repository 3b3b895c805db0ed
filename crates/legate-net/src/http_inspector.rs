//! `envoy.filters.listener.http_inspector`: is a plaintext connection HTTP, and which
//! version. It peeks at the first bytes: the HTTP/2 connection preface gives `h2c`, an
//! HTTP/1.x request line gives `http/1.1` or `http/1.0`, as application protocols for filter
//! chain matching. Envoy skips it on connections a previous filter found to be TLS.

use legate_core::stats::{Counter, Scope};

/// Envoy inspects at most this many bytes (`MAX_INSPECT_SIZE`).
pub const MAX_INSPECT_SIZE: usize = 8192;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpVersion {
    Http10,
    Http11,
    Http2,
}

impl HttpVersion {
    /// The application protocol name Envoy sets.
    pub fn alpn(self) -> &'static str {
        match self {
            HttpVersion::Http10 => "http/1.0",
            HttpVersion::Http11 => "http/1.1",
            HttpVersion::Http2 => "h2c",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detection {
    NeedMore,
    NotHttp,
    Http(HttpVersion),
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Inspects the first bytes of a connection.
pub fn inspect(data: &[u8]) -> Detection {
    let n = data.len().min(H2_PREFACE.len());
    if data[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Detection::Http(HttpVersion::Http2)
        } else {
            Detection::NeedMore
        };
    }
    // `METHOD SP request-target SP HTTP/1.x CRLF`, judged as soon as a byte rules it out.
    let data = &data[..data.len().min(MAX_INSPECT_SIZE)];
    let Some(sp) = data.iter().position(|&b| b == b' ') else {
        return if data.iter().all(|&b| is_token(b)) && data.len() < MAX_INSPECT_SIZE {
            Detection::NeedMore
        } else {
            Detection::NotHttp
        };
    };
    if sp == 0 || !data[..sp].iter().all(|&b| is_token(b)) {
        return Detection::NotHttp;
    }
    let rest = &data[sp + 1..];
    let Some(eol) = rest.iter().position(|&b| b == b'\n') else {
        return if rest
            .iter()
            .any(|&b| b.is_ascii_control() && b != b'\r' && b != b'\t')
            || data.len() >= MAX_INSPECT_SIZE
        {
            Detection::NotHttp
        } else {
            Detection::NeedMore
        };
    };
    let line = rest[..eol].strip_suffix(b"\r").unwrap_or(&rest[..eol]);
    match line.iter().rposition(|&b| b == b' ') {
        Some(i) if i > 0 => match &line[i + 1..] {
            b"HTTP/1.1" => Detection::Http(HttpVersion::Http11),
            b"HTTP/1.0" => Detection::Http(HttpVersion::Http10),
            _ => Detection::NotHttp,
        },
        _ => Detection::NotHttp,
    }
}

/// `http_inspector.*` stats.
#[derive(Debug)]
pub struct HttpInspectorStats {
    pub read_error: Counter,
    pub http10_found: Counter,
    pub http11_found: Counter,
    pub http2_found: Counter,
    pub http_not_found: Counter,
}

impl HttpInspectorStats {
    pub fn new(root: &Scope) -> Self {
        let c = |n: &str| root.counter(&format!("http_inspector.{n}"));
        HttpInspectorStats {
            read_error: c("read_error"),
            http10_found: c("http10_found"),
            http11_found: c("http11_found"),
            http2_found: c("http2_found"),
            http_not_found: c("http_not_found"),
        }
    }

    pub fn count(&self, d: Detection) {
        match d {
            Detection::Http(HttpVersion::Http10) => self.http10_found.inc(),
            Detection::Http(HttpVersion::Http11) => self.http11_found.inc(),
            Detection::Http(HttpVersion::Http2) => self.http2_found.inc(),
            Detection::NotHttp | Detection::NeedMore => self.http_not_found.inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_versions_and_garbage() {
        use Detection::*;
        use HttpVersion::*;
        let cases: &[(&[u8], Detection)] = &[
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Http(Http11)),
            (b"POST /a?b HTTP/1.0\r\n", Http(Http10)),
            (b"GET / HTTP/1.1\n", Http(Http11)),
            (H2_PREFACE, Http(Http2)),
            (b"PRI * HTTP/2.0\r\n", NeedMore),
            (b"PR", NeedMore),
            (b"GET", NeedMore),
            (b"GET / HTT", NeedMore),
            (b"", NeedMore),
            (b"GET / HTTP/2.0\r\n", NotHttp),
            (b"hello\n", NotHttp),
            (b"\x16\x03\x01\x02\x00", NotHttp),
            (b" GET / HTTP/1.1\r\n", NotHttp),
            (b"GET /\x00 HTTP/1.1", NotHttp),
            (b"GET /\r\n", NotHttp),
        ];
        for (input, want) in cases {
            assert_eq!(
                inspect(input),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        assert_eq!(inspect(&vec![b'A'; MAX_INSPECT_SIZE]), NotHttp);
        let mut long = b"GET /".to_vec();
        long.resize(MAX_INSPECT_SIZE + 10, b'a');
        assert_eq!(inspect(&long), NotHttp);
    }
}
