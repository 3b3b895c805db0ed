//! Serving one downstream connection: the codec `codec_type` asks for (HTTP/1.1 only —
//! Legate's own codec, HTTP/2 only — the `h2` crate's, see [`super::h2`], or AUTO, which reads
//! the first bytes for the h2c preface), configured from the connection manager's limits, and
//! the connection-level timers (`idle_timeout`, `max_connection_duration`) and drain.

use std::future::{Future, poll_fn};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::{Request, Response};
use legate_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::CodecType;
use legate_core::io::counting::CountingIo;
use legate_core::lifecycle::Phase;
use legate_upstream::body::{Body, BoxError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use super::stream::{DownstreamBody, RequestBodyState};
use super::{ConnectionState, Downstream, HttpConnectionManager};
use crate::h1::{self, Rewind};

pub(super) fn header_bytes(hcm: &HttpConnectionManager) -> usize {
    hcm.config.max_request_headers_kb as usize * 1024
}

impl HttpConnectionManager {
    /// Serves one connection until it closes. When its listener's `phase` turns to draining
    /// it closes gracefully (HTTP/1.1 after the response in flight, HTTP/2 with GOAWAY); to
    /// closing, at once.
    ///
    /// The connection is counted and its state built when this is called; the future holds
    /// only what lives across its waits (an `async fn` would keep every argument for the
    /// connection's whole life, beside what it made of them).
    pub fn serve(
        self: Arc<Self>,
        stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
        downstream: Box<Downstream>,
        mut phase: watch::Receiver<Phase>,
    ) -> impl Future<Output = ()> {
        let stats = &self.stats;
        stats.downstream_cx_total.inc();
        stats.downstream_cx_active.inc();
        if downstream.tls {
            stats.downstream_cx_ssl_total.inc();
            stats.downstream_cx_ssl_active.inc();
        }
        let state = Arc::new(ConnectionState {
            downstream: *downstream,
            opened: Instant::now(),
            requests: AtomicU32::new(0),
            active_streams: AtomicU32::new(0),
            last_active_ms: AtomicU64::new(0),
            codec: AtomicU32::new(0),
            close: h1::Shutdown::default(),
            shutdown: h1::Shutdown::default(),
            drain_close: Default::default(),
        });
        let io = CountingIo::new(
            stream,
            stats.downstream_cx_rx_bytes_total,
            stats.downstream_cx_tx_bytes_total,
        );
        let fixed = match self.config.codec {
            CodecType::Http1 => 1,
            CodecType::Http2 => 2,
            _ => 0,
        };
        if fixed != 0 {
            state.codec.store(fixed, Ordering::Relaxed);
            self.count_codec(fixed);
        }
        async move {
            let shutdown = &state.shutdown;
            let streams = Streams {
                hcm: self.clone(),
                state: state.clone(),
            };
            let conn = async {
                match self.config.codec {
                    CodecType::Http1 => self.serve_h1(io, streams, shutdown, BytesMut::new()).await,
                    // Boxed (as below): an HTTP/2 connection is large, and every HTTP/1
                    // connection's task would be sized for it.
                    CodecType::Http2 => {
                        Box::pin(self.serve_h2(Rewind::new(io, Bytes::new()), streams, shutdown))
                            .await
                    }
                    _ => {
                        // AUTO: the h2c preface says HTTP/2, anything else is HTTP/1.1.
                        let mut io = io;
                        let (read, h2) = sniff_preface(&mut io).await?;
                        let codec = if h2 { 2 } else { 1 };
                        if state.codec.swap(codec, Ordering::Relaxed) == 0 {
                            self.count_codec(codec);
                        }
                        if h2 {
                            Box::pin(self.serve_h2(
                                Rewind::new(io, read.freeze()),
                                streams,
                                shutdown,
                            ))
                            .await
                        } else {
                            self.serve_h1(io, streams, shutdown, read).await
                        }
                    }
                }
            };
            tokio::pin!(conn);
            self.drive(conn, &state, &mut phase).await;
            let stats = &self.stats;
            match state.codec.load(Ordering::Relaxed) {
                1 => stats.downstream_cx_http1_active.dec(),
                2 => stats.downstream_cx_http2_active.dec(),
                _ => {}
            }
            if state.active_streams.load(Ordering::Relaxed) > 0 {
                stats.downstream_cx_destroy_active_rq.inc();
            }
            stats.downstream_cx_active.dec();
            if state.downstream.tls {
                stats.downstream_cx_ssl_active.dec();
            }
            stats.downstream_cx_destroy.inc();
            stats
                .downstream_cx_length_ms
                .record(state.opened.elapsed().as_millis() as u64);
        }
    }

    /// HTTP/1.1, with Legate's codec. Not an `async fn`, so that the connection's future holds
    /// `io` once (see [`h1::serve`]).
    fn serve_h1<'a, T>(
        &self,
        io: T,
        streams: Streams,
        shutdown: &'a h1::Shutdown,
        read: BytesMut,
    ) -> impl Future<Output = Result<(), BoxError>> + 'a
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let c = &self.config;
        let limits = h1::Limits {
            max_header_bytes: header_bytes(self),
            max_headers: c.max_headers_count as usize,
            header_timeout: c.request_headers_timeout,
            delayed_close: c.delayed_close_timeout,
            delayed_close_timeouts: Some(self.stats.downstream_cx_delayed_close_timeout),
        };
        // `map`, not an `async` block: awaiting the codec's future from a block would move it
        // into a second slot of the block.
        h1::serve(io, streams, limits, shutdown, read).map(|ended| match ended {
            Err(e @ h1::Error::Codec(_)) => Err(e.into()),
            // A client that went away, or a response cut short: not the client's protocol
            // error.
            Err(e) => {
                tracing::debug!("downstream connection: {e}");
                Ok(())
            }
            Ok(()) => Ok(()),
        })
    }

    /// Runs a connection to its end, closing it gracefully (`state.shutdown`) when it has been
    /// idle for `idle_timeout`, lived `max_connection_duration`, or the listener drains; at
    /// once when the listener closes.
    ///
    /// It lives as long as the connection, so it keeps little: not an `async fn` (which would
    /// hold its arguments twice), and its waits polled in place rather than stored futures.
    fn drive<'a, F>(
        &'a self,
        mut conn: Pin<&'a mut F>,
        state: &'a ConnectionState,
        phase: &'a mut watch::Receiver<Phase>,
    ) -> impl Future<Output = ()> + 'a
    where
        F: Future<Output = Result<(), BoxError>>,
    {
        async move {
            let shutdown = &state.shutdown;
            // Timers that are rarely set live on the heap, and only when set: an idle
            // connection's task stays small.
            let mut deadline = self
                .config
                .max_connection_duration
                .map(|d| Box::pin(tokio::time::sleep(d)));
            // The idle timeout is checked every quarter of its length; it counts from the end
            // of the connection's last stream.
            let idle_period = || {
                self.config
                    .idle_timeout
                    .map_or(Duration::from_secs(3600), |t| {
                        (t / 4).max(Duration::from_millis(10))
                    })
            };
            let mut idle_check = Box::pin(tokio::time::sleep(idle_period()));
            let mut closing = false;
            // An HTTP/1 connection of a draining listener closes after its next response, or
            // when it is found idle `drain_timeout` after the drain began.
            let mut idle_drain: Option<Pin<Box<tokio::time::Sleep>>> = None;
            let mut draining = false;
            let mut watching = true;
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        match result {
                            // Closed by us (a graceful close we started) or by the client.
                            Ok(()) if closing => self.stats.downstream_cx_destroy_local.inc(),
                            Ok(()) => self.stats.downstream_cx_destroy_remote.inc(),
                            Err(e) => {
                                self.stats.downstream_cx_protocol_error.inc();
                                tracing::debug!("downstream connection {}: {e}", state.downstream.id);
                            }
                        }
                        break;
                    }
                    () = idle_check.as_mut(), if self.config.idle_timeout.is_some() && !closing => {
                        idle_check.as_mut().reset(tokio::time::Instant::now() + idle_period());
                        let idle_since = Duration::from_millis(state.last_active_ms.load(Ordering::Relaxed));
                        let idle = state.opened.elapsed().saturating_sub(idle_since);
                        if state.active_streams.load(Ordering::Relaxed) == 0
                            && self.config.idle_timeout.is_some_and(|t| idle >= t)
                        {
                            self.stats.downstream_cx_idle_timeout.inc();
                            shutdown.request();
                            closing = true;
                        }
                    }
                    () = poll_fn(|cx| state.close.poll_requested(cx)), if !closing => {
                        shutdown.request();
                        closing = true;
                    }
                    () = fired(&mut deadline), if !closing => {
                        self.stats.downstream_cx_max_duration_reached.inc();
                        shutdown.request();
                        closing = true;
                    }
                    changed = phase.changed(), if watching => {
                        let now = match changed {
                            Ok(()) => *phase.borrow_and_update(),
                            // The listener is gone: drain.
                            Err(_) => {
                                watching = false;
                                Phase::Draining
                            }
                        };
                        if now == Phase::Closing {
                            // The drain time is over: the connection closes with what is in
                            // flight.
                            self.stats.downstream_cx_destroy_local.inc();
                            break;
                        }
                        if now == Phase::Draining && !closing && !draining {
                            self.stats.downstream_cx_drain_close.inc();
                            if state.codec.load(Ordering::Relaxed) == 2 {
                                // HTTP/2: GOAWAY, then the streams in flight finish.
                                shutdown.request();
                                closing = true;
                            } else {
                                state.drain_close.store(true, Ordering::Relaxed);
                                draining = true;
                                idle_drain = Some(Box::pin(tokio::time::sleep(self.config.drain_timeout)));
                            }
                        }
                    }
                    () = fired(&mut idle_drain), if draining && !closing => {
                        if state.active_streams.load(Ordering::Relaxed) == 0 {
                            shutdown.request();
                            closing = true;
                        } else {
                            idle_drain = Some(Box::pin(tokio::time::sleep(Duration::from_millis(100))));
                        }
                    }
                }
            }
        }
    }
}

/// Resolves when `timer` (if any) fires; polled in place, it stores nothing.
fn fired(timer: &mut Option<Pin<Box<tokio::time::Sleep>>>) -> impl Future<Output = ()> + '_ {
    poll_fn(move |cx| match timer {
        Some(t) => t.as_mut().poll(cx),
        None => Poll::Pending,
    })
}

/// The connection manager's side of a connection: each request to `handle`, each request
/// the codec refused to a local reply.
#[derive(Clone)]
pub(super) struct Streams {
    pub(super) hcm: Arc<HttpConnectionManager>,
    pub(super) state: Arc<ConnectionState>,
}

impl h1::Service for Streams {
    fn call(
        &self,
        request: Request<h1::RequestBody>,
        upgrade: Option<h1::OnUpgrade>,
    ) -> impl Future<Output = Response<Body>> + Send {
        let streams = self.clone();
        async move {
            let request = request.map(DownstreamBody::H1);
            let received = Arc::new(RequestBodyState::default());
            streams
                .hcm
                .handle(request, upgrade, &streams.state, received)
                .await
        }
    }

    fn codec_error(&self, error: h1::CodecError) -> Response<Body> {
        self.hcm.codec_reply(error, &self.state)
    }

    fn continued(&self) {
        // Envoy counts the `100` as a response: `downstream_rq_1xx` and `_completed`.
        self.hcm.stats.response(100);
    }
}

/// The h2c connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the first bytes tell the preface (HTTP/2) from anything else; returns them.
/// Each read takes what the socket has, up to 4 KiB (a whole request line and headers, most
/// of the time: the codec does not read again for them), through the stack, so that the
/// connection's future does not carry the buffer, and keeps it in a buffer of its size.
async fn sniff_preface<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<(BytesMut, bool)> {
    let mut read = BytesMut::new();
    loop {
        if read.len() >= PREFACE.len() || !PREFACE.starts_with(&read) {
            let h2 = read.starts_with(PREFACE);
            return Ok((read, h2));
        }
        let n = poll_fn(|cx| {
            let mut stack = [MaybeUninit::<u8>::uninit(); 4096];
            let mut buf = ReadBuf::uninit(&mut stack);
            ready!(Pin::new(&mut *io).poll_read(cx, &mut buf))?;
            read.extend_from_slice(buf.filled());
            Poll::Ready(Ok::<_, io::Error>(buf.filled().len()))
        })
        .await?;
        if n == 0 {
            return Ok((read, false));
        }
    }
}
