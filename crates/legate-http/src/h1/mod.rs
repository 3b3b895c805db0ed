//! Legate's HTTP/1.1 server codec: one downstream connection's requests read, handed to the
//! connection manager and answered, in order, on a keep-alive connection.
//!
//! It does what Envoy's codec does where that matters to a client: its answers to malformed
//! heads (400, 431, 426, 501, with Envoy's local reply), `request_headers_timeout` counted
//! from a request's first byte and answered with 408, chunk extensions skipped whatever
//! their length, bare LF line endings accepted, `100 Continue` sent at once, and a response
//! always delimited (`content-length`, chunked, or the connection's end when it must close).
//! An idle connection holds no buffers: read and write buffers live only while a request does.
//!
//! The pieces: `head` parses a request head, `body` hands a request body over (the wire
//! pieces shared with the upstream client are in `legate_core::http1`),
//! `encode` writes a response head and frames its body, `conn` runs the connection, and
//! `upgrade` hands the socket over when a response switches protocols (WebSocket, CONNECT).

mod body;
mod conn;
mod encode;
mod head;
mod upgrade;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use http::{Request, Response};
use legate_upstream::body::Body;

pub use body::{BodyError, RequestBody};
pub use conn::{Error, serve};
pub use head::{Limits, TargetWithFragment};
pub use upgrade::{OnUpgrade, Rewind, Upgraded};

/// A request the codec refuses before the connection manager sees it: the status, Envoy's
/// response-code details and the body of its local reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodecError {
    pub status: u16,
    pub details: &'static str,
    pub body: &'static str,
}

impl CodecError {
    pub const BAD_REQUEST: CodecError = CodecError {
        status: 400,
        details: "http1.codec_error",
        body: "Bad Request",
    };
    pub const HEADERS_TOO_LARGE: CodecError = CodecError {
        status: 431,
        details: "http1.headers_too_large",
        body: "Request Header Fields Too Large",
    };
    pub const UPGRADE_REQUIRED: CodecError = CodecError {
        status: 426,
        details: "low_version",
        body: "Upgrade Required",
    };
    pub const CONTENT_LENGTH_AND_CHUNKED: CodecError = CodecError {
        status: 400,
        details: "http1.content_length_and_chunked_not_allowed",
        body: "Bad Request",
    };
    pub const NOT_IMPLEMENTED: CodecError = CodecError {
        status: 501,
        details: "http1.invalid_transfer_encoding",
        body: "Not Implemented",
    };
    pub const HEADER_TIMEOUT: CodecError = CodecError {
        status: 408,
        details: "request_header_timeout",
        body: "request header timeout",
    };
}

/// What serves the requests of a connection.
pub trait Service: Send + 'static {
    /// Answers one request. `upgrade` is given for a request that may switch protocols: it
    /// resolves to the connection once a `101` (or a CONNECT's `2xx`) has been sent.
    fn call(
        &self,
        request: Request<RequestBody>,
        upgrade: Option<OnUpgrade>,
    ) -> impl Future<Output = Response<Body>> + Send;

    /// The local reply to a request the codec refused; the connection closes after it.
    fn codec_error(&self, error: CodecError) -> Response<Body>;

    /// The codec sent `100 Continue` to a request that expects it.
    fn continued(&self);
}

/// Asks a connection to close: at once if it is between requests, else after the response
/// in progress (which then says `connection: close`).
#[derive(Debug, Default)]
pub struct Shutdown {
    requested: AtomicBool,
    waker: AtomicWaker,
}

impl Shutdown {
    pub fn request(&self) {
        self.requested.store(true, Ordering::Release);
        self.waker.wake();
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// Ready once [`Shutdown::request`] has been called.
    pub fn poll_requested(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_requested() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.is_requested() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Resolves once a shutdown has been requested.
    pub async fn requested(&self) {
        std::future::poll_fn(|cx| self.poll_requested(cx)).await
    }
}
