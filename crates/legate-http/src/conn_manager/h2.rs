//! Serving a downstream HTTP/2 connection with the `h2` codec, its streams polled in the
//! connection's own task: each request goes to the connection manager as it is accepted, and
//! its response goes back with the stream's flow control. (hyper's server spawned a task per
//! stream and wrapped the codec's types in its own; a stream here costs one allocation.)
//!
//! What the codec leaves to its user, done here as Envoy does it: `100 Continue` for a request
//! that expects it (`proxy_100_continue` is off), `date` on responses without one, no
//! connection-specific header in a response, a response body's DATA paced by the stream's send
//! window (at most `MAX_SEND_BUFFER` buffered), a stream the client resets cancelled with its
//! request, and a response body that fails reset with INTERNAL_ERROR.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use h2::server::{Connection, SendResponse};
use h2::{Reason, RecvStream, SendStream};
use http::header::{self, HeaderMap};
use http::{Request, Response, StatusCode};
use http_body::{Body as _, Frame, SizeHint};
use legate_upstream::body::{Body, BoxError};
use tokio::io::{AsyncRead, AsyncWrite};

use super::HttpConnectionManager;
use super::codec::Streams;
use super::h2_guard::{H2Guard, H2Stats};
use super::stream::{DownstreamBody, RequestBodyState};
use crate::h1;

/// Envoy's flood protection against rapid reset (CVE-2023-44487): a client resetting streams
/// faster than the server accepts them is cut off.
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 100;
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
/// Response bytes buffered per stream beyond what its send window lets out.
const MAX_SEND_BUFFER: usize = 400 * 1024;
/// The largest last chunk of a response body queued before room is claimed for it (most
/// bodies, read with their head, are one such chunk).
const MAX_LAST_CHUNK_UNCLAIMED: usize = 64 * 1024;

impl HttpConnectionManager {
    /// The codec's settings from the connection manager's `http2_protocol_options` and limits.
    fn h2_builder(&self) -> h2::server::Builder {
        let o = &self.config.http2;
        let mut builder = h2::server::Builder::new();
        builder
            .max_header_list_size(super::codec::header_bytes(self) as u32)
            .max_concurrent_streams(
                o.max_concurrent_streams
                    .as_ref()
                    .map_or(2_147_483_647, |v| v.value),
            )
            .initial_window_size(
                o.initial_stream_window_size
                    .as_ref()
                    .map_or(256 << 20, |v| v.value),
            )
            .initial_connection_window_size(
                o.initial_connection_window_size
                    .as_ref()
                    .map_or(256 << 20, |v| v.value),
            )
            .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
            .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
            .max_send_buffer_size(MAX_SEND_BUFFER);
        builder
    }

    /// Serves an HTTP/2 connection until it ends; a shutdown sends GOAWAY and lets the streams
    /// in flight finish.
    pub(super) async fn serve_h2<T>(
        &self,
        io: T,
        streams: Streams,
        shutdown: &h1::Shutdown,
    ) -> Result<(), BoxError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let stats = *self
            .h2_stats
            .get_or_init(|| H2Stats::new(&self.context.store.scope("")));
        let io = H2Guard::new(io, self.h2_limits, stats);
        let handshake = self.h2_builder().handshake::<_, Bytes>(io);
        let mut conn = tokio::select! {
            conn = handshake => conn?,
            // Nothing was served: nothing to finish.
            () = shutdown.requested() => return Ok(()),
        };
        let mut active = FuturesUnordered::new();
        let mut resets = Vec::new();
        let mut closing = false;
        poll_fn(|cx| {
            if !closing && shutdown.poll_requested(cx).is_ready() {
                conn.graceful_shutdown();
                closing = true;
            }
            poll_connection(
                &mut conn,
                &mut active,
                &mut resets,
                cx,
                // Each stream's future built in its box: `FuturesUnordered` would otherwise
                // copy all of it (kilobytes) on its way into the set, three times.
                |request, respond| {
                    legate_core::future::boxed(|| serve_stream(&streams, request, respond))
                },
            )
        })
        .await
    }
}

/// Drives the connection and its streams: the streams first, so that what they send goes out
/// when the codec is polled after them; every stream the codec accepts starts at once. The
/// streams to reset are reset once the codec has written what it could.
fn poll_connection<T, F>(
    conn: &mut Connection<T, Bytes>,
    active: &mut FuturesUnordered<F>,
    resets: &mut Vec<Reset>,
    cx: &mut Context<'_>,
    mut start: impl FnMut(Request<RecvStream>, SendResponse<Bytes>) -> F,
) -> Poll<Result<(), BoxError>>
where
    T: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = Option<Reset>>,
{
    loop {
        while let Poll::Ready(Some(ended)) = active.poll_next_unpin(cx) {
            resets.extend(ended);
        }
        match conn.poll_accept(cx) {
            Poll::Ready(Some(Ok((request, respond)))) => active.push(start(request, respond)),
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.into())),
            // The connection is over: GOAWAY both ways and no stream left, or the client
            // went away.
            Poll::Ready(None) => return Poll::Ready(Ok(())),
            Poll::Pending => {
                // Each reset wakes the connection, which writes it.
                for (mut send, reason) in resets.drain(..) {
                    send.send_reset(reason);
                }
                return Poll::Pending;
            }
        }
    }
}

/// A stream whose response failed mid-body, to reset once the connection has written what
/// the stream queued before (a reset discards the frames still queued: the client would not
/// get the head and the bytes that came, as it does from Envoy).
type Reset = (SendStream<Bytes>, Reason);

/// One stream: the request to the connection manager, its response back; cancelled (the
/// request dropped) when the client resets the stream first.
async fn serve_stream(
    streams: &Streams,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) -> Option<Reset> {
    if expects_continue(request.headers(), !request.body().is_end_stream()) {
        // `proxy_100_continue` off: the proxy itself invites the body, at once (the router
        // removes the expectation).
        let mut interim = Response::new(());
        *interim.status_mut() = StatusCode::CONTINUE;
        if respond.send_informational(interim).is_ok() {
            // Envoy counts the `100` as a response: `downstream_rq_1xx` and `_completed`.
            streams.hcm.stats.response(100);
        }
    }
    let length = legate_core::http1::content_length(request.headers())
        .ok()
        .flatten();
    let request = request.map(|recv| DownstreamBody::H2(RequestBody::new(recv, length)));
    let received = Arc::new(RequestBodyState::default());
    let handled = streams
        .hcm
        .handle(request, None, &streams.state, received.clone());
    let mut handled = std::pin::pin!(handled);
    let response = poll_fn(|cx| {
        if let Poll::Ready(response) = handled.as_mut().poll(cx) {
            return Poll::Ready(Some(response));
        }
        respond.poll_reset(cx).map(|_| None)
    })
    .await;
    let Some(response) = response else {
        // Dropping the request is accounting it as reset by the client.
        received.reset.store(true, Ordering::Relaxed);
        return None;
    };
    let (mut head, body) = response.into_parts();
    strip_connection_specific(&mut head.headers);
    if !crate::headers::has(&head.headers, &header::DATE) {
        head.headers
            .insert(header::DATE, crate::headers::date_value());
    }
    if body.is_end_stream() {
        let _ = respond.send_response(Response::from_parts(head, ()), true);
        return None;
    }
    if let Some(length) = body.size_hint().exact()
        && !crate::headers::has(&head.headers, &header::CONTENT_LENGTH)
    {
        head.headers
            .insert(header::CONTENT_LENGTH, crate::headers::decimal(length));
    }
    let send = respond
        .send_response(Response::from_parts(head, ()), false)
        .ok()?;
    let mut pipe = Pipe {
        body,
        send,
        held: None,
    };
    match poll_fn(|cx| pipe.poll(cx)).await {
        PipeEnd::Done | PipeEnd::Gone => None,
        PipeEnd::ClientReset => {
            received.reset.store(true, Ordering::Relaxed);
            None
        }
        PipeEnd::Failed(reason) => Some((pipe.send, reason)),
    }
}

/// Whether a request with a body to come says `expect: 100-continue`.
fn expects_continue(headers: &HeaderMap, body_follows: bool) -> bool {
    body_follows
        && crate::headers::has(headers, &header::EXPECT)
        && crate::headers::expects_continue(headers)
}

/// Removes what RFC 9113 §8.2.2 forbids in an HTTP/2 message (the codec would refuse the
/// response): `connection` and the headers it names, `keep-alive`, `proxy-connection`,
/// `transfer-encoding`, `upgrade`, and `te`.
fn strip_connection_specific(headers: &mut HeaderMap) {
    // One pass over the names present: responses from the router carry none.
    if !headers.keys().any(crate::router::is_connection_specific) {
        return;
    }
    if let Some(connection) = headers.remove(header::CONNECTION)
        && let Ok(named) = connection.to_str()
    {
        for name in named.split(',') {
            headers.remove(name.trim());
        }
    }
    for name in crate::router::connection_specific() {
        headers.remove(name);
    }
}

/// How a response body's way out ended.
enum PipeEnd {
    /// Sent whole.
    Done,
    /// The client reset the stream.
    ClientReset,
    /// The stream is gone with its connection.
    Gone,
    /// The body failed: the stream is to be reset with this reason.
    Failed(Reason),
}

/// A response body on its way out: each DATA frame once the stream has room for it.
struct Pipe {
    body: Body,
    send: SendStream<Bytes>,
    /// A chunk waiting for the stream's send window, and whether it ends the body.
    held: Option<(Bytes, bool)>,
}

impl Pipe {
    /// Sends the body to its end, or until it cannot.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<PipeEnd> {
        loop {
            // The client may reset the stream while its body waits for the upstream or for
            // room: the body is dropped (the upstream request with it).
            match self.send.poll_reset(cx) {
                Poll::Ready(Ok(_)) => return Poll::Ready(PipeEnd::ClientReset),
                Poll::Ready(Err(_)) => return Poll::Ready(PipeEnd::Gone),
                Poll::Pending => {}
            }
            if let Some((chunk, end)) = self.held.take() {
                // Wait for some of the window: the codec takes the chunk whole and sends it
                // as the window opens, holding at most MAX_SEND_BUFFER.
                while self.send.capacity() == 0 {
                    match self.send.poll_capacity(cx) {
                        Poll::Ready(Some(Ok(0))) => {}
                        Poll::Ready(Some(Ok(_))) => break,
                        Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(PipeEnd::Gone),
                        Poll::Pending => {
                            self.held = Some((chunk, end));
                            return Poll::Pending;
                        }
                    }
                }
                if let Some(ended) = self.send_data(chunk, end) {
                    return Poll::Ready(ended);
                }
                continue;
            }
            // The next frame before any room is claimed: room claimed speculatively on the
            // connection's window could starve another stream of it.
            let (chunk, end) = match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(chunk) => (chunk, self.body.is_end_stream()),
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => {
                            self.send.reserve_capacity(0);
                            return Poll::Ready(match self.send.send_trailers(trailers) {
                                Ok(()) => PipeEnd::Done,
                                Err(_) => PipeEnd::Gone,
                            });
                        }
                        Err(_) => continue,
                    },
                },
                // The upstream response failed mid-body: the client learns it from the reset.
                Some(Err(e)) => {
                    tracing::debug!("response body: {e}");
                    return Poll::Ready(PipeEnd::Failed(Reason::INTERNAL_ERROR));
                }
                None => (Bytes::new(), true),
            };
            if chunk.is_empty() || (end && chunk.len() <= MAX_LAST_CHUNK_UNCLAIMED) {
                // The end of the body is queued without claiming room first: the codec sends
                // it as the windows open, and the stream holds no more than it would have
                // held here waiting for them. (Any other chunk waits: the room it may claim
                // is what bounds what the codec buffers.)
                if let Some(ended) = self.send_data(chunk, end) {
                    return Poll::Ready(ended);
                }
            } else {
                self.send.reserve_capacity(1);
                self.held = Some((chunk, end));
            }
        }
    }

    /// Queues a chunk; how the body ended, if this ends it.
    fn send_data(&mut self, chunk: Bytes, end: bool) -> Option<PipeEnd> {
        match self.send.send_data(chunk, end) {
            Err(_) => Some(PipeEnd::Gone),
            Ok(()) if end => Some(PipeEnd::Done),
            Ok(()) => None,
        }
    }
}

/// A request body as the codec receives it: each DATA frame's bytes handed on and their room
/// in the flow-control windows given back at once, then the trailers.
pub(crate) struct RequestBody {
    recv: RecvStream,
    /// The `content-length` still to come, when the request declared one (the codec holds the
    /// client to it).
    remaining: Option<u64>,
    data_done: bool,
}

impl RequestBody {
    /// `length`: the request's `content-length`, if it declares one.
    fn new(recv: RecvStream, length: Option<u64>) -> RequestBody {
        RequestBody {
            remaining: length,
            data_done: recv.is_end_stream(),
            recv,
        }
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    let _ = self.recv.flow_control().release_capacity(chunk.len());
                    if let Some(remaining) = &mut self.remaining {
                        *remaining = remaining.saturating_sub(chunk.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                // RST_STREAM(NO_ERROR) ends the body early (RFC 9113 §8.1): not a failure.
                Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(trailers) => Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t)))),
            Err(e) if e.reason() == Some(Reason::NO_ERROR) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None if self.recv.is_end_stream() => SizeHint::with_exact(0),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn connection_specific_headers_are_stripped_with_those_connection_names() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("close, x-hop"));
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_connection_specific(&mut headers);
        let left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn a_plain_response_keeps_its_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.insert(header::SERVER, HeaderValue::from_static("nginx"));
        strip_connection_specific(&mut headers);
        assert_eq!(headers.len(), 2);
    }

    #[test]
    fn only_a_100_continue_expectation_is_answered() {
        let mut headers = HeaderMap::new();
        assert!(!expects_continue(&headers, true));
        headers.insert(header::EXPECT, HeaderValue::from_static("100-Continue"));
        assert!(expects_continue(&headers, true));
        // Nothing to invite.
        assert!(!expects_continue(&headers, false));
        headers.insert(header::EXPECT, HeaderValue::from_static("something-else"));
        assert!(!expects_continue(&headers, true));
    }
}
