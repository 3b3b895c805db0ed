//! Legate's HTTP/1.1 client codec: one request at a time on a keep-alive connection to a host.
//!
//! No task runs the connection and no channel carries its messages: the request's own task
//! writes the request and reads the response head (an [`Exchange`]), and whoever reads the
//! response body reads it from the socket, writing what is left of the request body meanwhile
//! — so a host that answers before it has read the whole request is answered as Envoy's codec
//! does. Between requests the connection waits in its pool, registered to wake the
//! connection's watch task (see `pool::lifetime`, which otherwise only keeps its limits in
//! time) if the host closes it or sends anything: such a connection is closed at once, counted
//! as closed by the host. A response the codec refuses closes the connection from Legate's
//! side, as Envoy counts it.
//!
//! The pieces: `request` encodes a request and frames its body, `response` parses a response
//! head; the body decoding is `legate_core::http1`'s, shared with the downstream codec.

mod request;
mod response;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::Response;
use http_body::SizeHint;
use legate_core::http1::{Decoder, Framing, find_end, resume_at};
use legate_core::io::counting::CountingIo;
use legate_core::io::read_size::ReadSize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub(crate) use request::Outgoing;

use crate::body::BoxError;
use crate::tls::UpstreamStream;

/// What an HTTP/1.1 connection runs over: TCP, TLS or a unix domain socket, counting the
/// cluster's `upstream_cx_{rx,tx}_bytes_total`.
pub(crate) type Io = CountingIo<UpstreamStream>;

/// Called once when a connection is dropped, with whether the host had closed it (or failed
/// it) first: the pool's accounting of the connection's end.
pub(crate) type OnClose = Box<dyn FnOnce(bool) + Send>;

/// An open connection: idle in its pool, or carrying one [`Exchange`].
pub(crate) struct Connection {
    io: Io,
    read: BytesMut,
    read_size: ReadSize,
    /// The host closed or broke the connection, or sent what it should not have.
    peer_closed: bool,
    /// Wakes the connection's watch task (registered while the connection is idle).
    watch: Waker,
    /// `max_headers_count` of the cluster.
    max_headers: usize,
    /// The most bytes of a response head, and of a trailer section: the cluster's
    /// `max_response_headers_kb` (Envoy 1.40 refuses a head over 80 KiB by default).
    max_head_bytes: usize,
    on_close: Option<OnClose>,
}

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) enum Error {
    /// The connection closed or failed before the response (or its body) was complete.
    Closed(String),
    /// The response was not valid HTTP/1.1: Envoy's codec error.
    Protocol(&'static str),
    /// The request body failed (the downstream's request broke off).
    Body(BoxError),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Closed(why) => write!(f, "upstream connection closed: {why}"),
            Error::Protocol(details) => write!(f, "upstream protocol error: {details}"),
            Error::Body(e) => write!(f, "request body: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl Connection {
    /// A new connection, boxed: it moves from its pool into each exchange and back, and a
    /// pointer moves for less than the connection's hundred and more bytes.
    pub(crate) fn new(
        io: Io,
        (max_headers, max_head_bytes): (usize, usize),
        watch: Waker,
        on_close: OnClose,
    ) -> Box<Self> {
        Box::new(Connection {
            io,
            read: BytesMut::new(),
            read_size: ReadSize::default(),
            peer_closed: false,
            watch,
            max_headers,
            max_head_bytes,
            on_close: Some(on_close),
        })
    }

    /// Whether the idle connection is still usable (the host has not closed it, nor sent
    /// anything), registering `waker` (`None`: the connection's watch task) to be woken when
    /// that changes. (Its read buffer is kept, not grown: what is left of it serves the next
    /// responses without an allocation, unless a large body made reads grow.)
    pub(crate) fn usable(&mut self, waker: Option<&Waker>) -> bool {
        if self.peer_closed || !self.read.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(waker.unwrap_or(&self.watch));
        let mut byte = [std::mem::MaybeUninit::uninit(); 1];
        match Pin::new(&mut self.io).poll_read(&mut cx, &mut ReadBuf::uninit(&mut byte)) {
            Poll::Pending => true,
            // End of stream, an error, or bytes no request asked for.
            Poll::Ready(_) => {
                self.peer_closed = true;
                false
            }
        }
    }

    /// Starts sending `request`.
    pub(crate) fn exchange(self: Box<Self>, request: Outgoing) -> Exchange {
        Exchange {
            conn: self,
            request,
            written: false,
            write_failed: false,
            searched: 0,
            decoder: Decoder::new(Framing::Empty, 0),
            keep_alive: false,
        }
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let result = ready!(
            self.read_size
                .poll_read(Pin::new(&mut self.io), cx, &mut self.read)
        );
        if !matches!(result, Ok(n) if n > 0) {
            self.peer_closed = true;
        }
        Poll::Ready(result)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(on_close) = self.on_close.take() {
            on_close(self.peer_closed);
        }
    }
}

/// One request and its response on a connection.
pub(crate) struct Exchange {
    conn: Box<Connection>,
    request: Outgoing,
    /// Some of the request has been written.
    written: bool,
    /// Writing failed: the rest of the request is dropped, the response may still come.
    write_failed: bool,
    /// How far the read buffer was searched for the head's end.
    searched: usize,
    decoder: Decoder,
    keep_alive: bool,
}

/// A request none of whose bytes reached the connection it was sent on (which had just been
/// closed by the host): it can go out on another.
pub(crate) struct Unsent(pub(crate) Outgoing);

impl Exchange {
    /// Writes the request (as far as its body allows) and reads the response head, skipping
    /// informational responses other than `101`. `Err` with the request when none of it
    /// could be written.
    pub(crate) async fn response(
        mut self,
    ) -> Result<(Response<()>, Exchange), (Error, Option<Unsent>)> {
        let head = std::future::poll_fn(|cx| {
            if let Err(e) = self.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            self.poll_head(cx)
        })
        .await;
        match head {
            Ok(response) => Ok((response, self)),
            Err(e) if !self.written && matches!(e, Error::Closed(_)) => {
                Err((e, Some(Unsent(self.request))))
            }
            Err(e) => Err((e, None)),
        }
    }

    /// Writes what the request has ready; a write failure is kept for later (the host may
    /// have answered and closed), a request body failure ends the exchange.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Result<(), Error> {
        if self.write_failed {
            return Ok(());
        }
        loop {
            self.request.gather(cx).map_err(Error::Body)?;
            if self.request.out.is_empty() {
                // Everything taken so far is written: flushed too, which only matters to TLS
                // (it may hold records back while the socket is full) — the host may be
                // waiting for them before the body goes on.
                if let Poll::Ready(Err(_)) = Pin::new(&mut self.conn.io).poll_flush(cx) {
                    self.write_failed = true;
                }
                return Ok(());
            }
            let before = self.request.out.len();
            let result = self.request.out.poll_write(Pin::new(&mut self.conn.io), cx);
            self.written |= self.request.out.len() < before;
            match result {
                Poll::Ready(Ok(())) => {}
                Poll::Pending => return Ok(()),
                Poll::Ready(Err(_)) => {
                    self.write_failed = true;
                    return Ok(());
                }
            }
        }
    }

    fn request_sent(&self) -> bool {
        !self.write_failed && self.request.out.is_empty() && self.request.body_done()
    }

    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<Response<()>, Error>> {
        loop {
            let conn = &mut self.conn;
            if let Some(end) = find_end(&conn.read, self.searched)
                && end <= conn.max_head_bytes
            {
                self.searched = 0;
                let head = response::parse(
                    &mut conn.read,
                    end,
                    conn.max_headers,
                    self.request.head_request,
                )
                .map_err(Error::Protocol)?;
                let status = head.response.status();
                let switching = status == http::StatusCode::SWITCHING_PROTOCOLS;
                if status.is_informational() && !switching {
                    // `100 Continue` and the like: Envoy's codec answers the client's
                    // expectation itself, and passes no other 1xx on by default.
                    continue;
                }
                self.decoder = Decoder::new(head.framing, conn.max_head_bytes);
                // After a `101` the connection is no longer HTTP.
                self.keep_alive = head.keep_alive && !switching;
                return Poll::Ready(Ok(head.response));
            }
            if conn.read.len() > conn.max_head_bytes {
                return Poll::Ready(Err(Error::Protocol("http1.headers_too_large")));
            }
            self.searched = resume_at(conn.read.len());
            match ready!(conn.poll_read(cx)) {
                Ok(0) => {
                    return Poll::Ready(Err(Error::Closed(
                        "connection closed before the response headers".into(),
                    )));
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(Error::Closed(e.to_string()))),
            }
        }
    }

    /// The next piece of the response body (`None`: it has ended), writing what is left of
    /// the request meanwhile.
    pub(crate) fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        if let Err(e) = self.poll_send(cx) {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            match self.decoder.decode(&mut self.conn.read) {
                Ok(Some(data)) => return Poll::Ready(Some(Ok(data))),
                Ok(None) if self.decoder.is_done() => return Poll::Ready(None),
                Ok(None) => {}
                Err(_) => return Poll::Ready(Some(Err(Error::Protocol("http1.codec_error")))),
            }
            match ready!(self.conn.poll_read(cx)) {
                Ok(0) if self.decoder.end_at_close() => return Poll::Ready(None),
                // A body cut short by the host's end of stream is a protocol error in Envoy's
                // codec (flag UPE), unlike a connection reset.
                Ok(0) => return Poll::Ready(Some(Err(Error::Protocol("premature EOF")))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(Error::Closed(e.to_string())))),
            }
        }
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        if self.decoder.is_done() {
            SizeHint::with_exact(0)
        } else {
            SizeHint::default()
        }
    }

    /// The connection, once the response body has ended, if it can carry another request:
    /// the whole request was written, both sides keep it open, and nothing more came.
    pub(crate) fn finish(self) -> Option<Box<Connection>> {
        let reusable = self.decoder.is_done()
            && self.keep_alive
            && self.request_sent()
            && !self.conn.peer_closed
            && self.conn.read.is_empty();
        let mut conn = reusable.then_some(self.conn)?;
        if conn.read_size.take_grown() {
            // A large body was read: its allocation is let go rather than kept idle.
            conn.read = BytesMut::new();
        }
        Some(conn)
    }

    /// The connection after a `101 Switching Protocols`: bytes both ways from now on, the
    /// host's first ones possibly read already.
    pub(crate) fn upgrade(self) -> Upgraded {
        Upgraded {
            conn: self.conn,
            shut_down: false,
        }
    }
}

/// An upstream connection that switched protocols (WebSocket and friends). Its close counts as
/// the host's (`upstream_cx_destroy_remote`) when the host ended its side first, as Legate's
/// otherwise (the client went away, and the proxy closed the tunnel).
pub struct Upgraded {
    conn: Box<Connection>,
    /// The proxy has ended its side (the client's side ended first).
    shut_down: bool,
}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Upgraded")
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let read = &mut self.conn.read;
        if !read.is_empty() {
            let n = read.len().min(buf.remaining());
            buf.put_slice(&read[..n]);
            read.advance(n);
            return Poll::Ready(Ok(()));
        }
        let (before, room) = (buf.filled().len(), buf.remaining() > 0);
        let result = ready!(Pin::new(&mut self.conn.io).poll_read(cx, buf));
        // Nothing read into room for something: the host's end of stream.
        let ended = result.is_err() || (room && buf.filled().len() == before);
        if ended && !self.shut_down {
            self.conn.peer_closed = true;
        }
        Poll::Ready(result)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.conn.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.conn.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shut_down = true;
        Pin::new(&mut self.conn.io).poll_shutdown(cx)
    }
}
