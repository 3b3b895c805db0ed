//! A request on the wire: the request line and headers, then its body in the framing Envoy's
//! codec picks — `content-length` when the request has one, nothing for a request that ends
//! with its headers (with `content-length: 0` unless its method takes no body), else chunked.
//! The body is taken from the downstream as it comes and gathered into as few writes as it
//! allows (its large chunks queued, not copied); its trailers are dropped (HTTP/1.1 upstreams
//! get none from Envoy unless `enable_trailers`, which Legate does not take).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes};
use http::header::{self, HeaderValue};
use http::{Method, Request};
use http_body::Body as _;
use legate_core::http1::{CHUNK_END, LAST_CHUNK, chunk_size, put_fields};
use legate_core::io::write_queue::WriteQueue;

use crate::body::{Body, BoxError};

/// Body bytes gathered before they are written (more waits for the next write).
const GATHER_LIMIT: usize = 64 * 1024;

/// A request on its way out: the bytes encoded and not yet written, and the body still to
/// come. Nothing in it belongs to a connection: a request none of whose bytes were written can
/// go out on another one.
pub(crate) struct Outgoing {
    pub(super) out: WriteQueue,
    body: Option<Body>,
    framing: Framing,
    pub(super) head_request: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// Nothing after the head.
    None,
    /// This many body bytes still to send.
    Length(u64),
    Chunked,
}

impl Outgoing {
    /// Encodes `request`'s head; its URI must be origin-form (`/path?query`), or for `CONNECT`
    /// authority-form (`host:port`).
    pub(crate) fn new(request: Request<Body>) -> Outgoing {
        let (mut parts, body) = request.into_parts();
        let headers = &mut parts.headers;
        let ended = body.is_end_stream();
        let framing = match legate_core::http1::content_length(headers) {
            Ok(Some(n)) => Framing::Length(n),
            _ if ended => {
                if !bodiless(&parts.method) && !headers.contains_key(header::CONTENT_LENGTH) {
                    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                }
                Framing::None
            }
            _ => {
                headers.remove(header::CONTENT_LENGTH);
                headers.insert(
                    header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                );
                Framing::Chunked
            }
        };
        let authority = (parts.method == Method::CONNECT)
            .then(|| parts.uri.authority())
            .flatten();
        let target = match authority {
            Some(authority) => authority.as_str(),
            None => parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        };
        let mut out = WriteQueue::default();
        let head = out.buf_mut();
        head.reserve(256 + headers.len() * 48);
        head.put_slice(parts.method.as_str().as_bytes());
        head.put_u8(b' ');
        head.put_slice(target.as_bytes());
        head.put_slice(b" HTTP/1.1\r\n");
        put_fields(head, headers);
        Outgoing {
            out,
            // (A body announced but already ended is polled once more: its end is the error.)
            body: (framing != Framing::None && !(ended && framing == Framing::Length(0)))
                .then_some(body),
            framing,
            head_request: parts.method == Method::HEAD,
        }
    }

    /// Whether the whole request has been encoded (what is left is in `out`).
    pub(super) fn body_done(&self) -> bool {
        self.body.is_none()
    }

    /// Takes what the body has ready into `out`, up to [`GATHER_LIMIT`]. `Err`: the body
    /// failed (the downstream's request broke off).
    pub(super) fn gather(&mut self, cx: &mut Context<'_>) -> Result<(), BoxError> {
        while let Some(body) = self.body.as_mut()
            && self.out.len() < GATHER_LIMIT
        {
            match Pin::new(body).poll_frame(cx) {
                Poll::Pending => break,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.put(data);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    self.body = None;
                    return Err(e);
                }
                Poll::Ready(None) => {
                    self.body = None;
                    match self.framing {
                        Framing::Chunked => self.out.put(LAST_CHUNK),
                        // The host would wait for the rest, and take the next request for it.
                        Framing::Length(left) if left > 0 => {
                            return Err("request body shorter than its content-length".into());
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }

    fn put(&mut self, mut data: Bytes) {
        if data.is_empty() {
            return;
        }
        match &mut self.framing {
            Framing::None => {}
            Framing::Length(left) => {
                // Never past the length announced (the downstream codec checked it).
                let n = (data.len() as u64).min(*left) as usize;
                *left -= n as u64;
                data.truncate(n);
                self.out.put_data(data);
            }
            Framing::Chunked => {
                chunk_size(self.out.buf_mut(), data.len());
                self.out.put_data(data);
                self.out.put(CHUNK_END);
            }
        }
    }
}

/// Methods whose requests carry no body, to which Envoy adds no `content-length: 0`.
fn bodiless(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::DELETE | Method::TRACE | Method::CONNECT
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(request: Request<Body>) -> String {
        written(&Outgoing::new(request))
    }

    fn written(outgoing: &Outgoing) -> String {
        String::from_utf8(outgoing.out.chunks().collect::<Vec<_>>().concat()).unwrap()
    }

    #[test]
    fn frames_as_envoy() {
        let get = Request::get("/a?b")
            .header("host", "x")
            .body(crate::body::empty());
        assert_eq!(
            encoded(get.unwrap()),
            "GET /a?b HTTP/1.1\r\nhost: x\r\n\r\n"
        );
        let post = Request::post("/").body(crate::body::empty()).unwrap();
        assert_eq!(
            encoded(post),
            "POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
        );
        let sized = Request::post("/")
            .header("content-length", "2")
            .body(crate::body::full("hi"))
            .unwrap();
        assert_eq!(
            encoded(sized),
            "POST / HTTP/1.1\r\ncontent-length: 2\r\n\r\n"
        );
        let streamed = Request::put("/").body(crate::body::full("hi")).unwrap();
        let mut outgoing = Outgoing::new(streamed);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        outgoing.gather(&mut cx).unwrap();
        assert!(outgoing.body_done());
        assert_eq!(
            written(&outgoing),
            "PUT / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
        );
    }

    #[test]
    fn a_body_shorter_than_its_length_fails_the_request() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for body in [crate::body::full("hi"), crate::body::empty()] {
            let short = Request::post("/")
                .header("content-length", "5")
                .body(body)
                .unwrap();
            let mut outgoing = Outgoing::new(short);
            assert!(outgoing.gather(&mut cx).is_err());
        }
    }
}
