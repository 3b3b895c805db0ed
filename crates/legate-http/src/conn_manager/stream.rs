//! The end of a stream: the response body on its way downstream (bytes counted, trailers
//! recorded), the request body on its way upstream (bytes counted, malformed or complete), and
//! the accounting done once when the stream ends — stats and access logs.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use legate_core::stream_info::{ResponseFlags, StreamInfo};
use legate_upstream::body::{Body, BoxError};

use super::{ConnectionState, HttpConnectionManager};

/// The accounting done once when a stream ends.
pub(super) struct StreamEnd {
    pub(super) info: StreamInfo,
    pub(super) hcm: Arc<HttpConnectionManager>,
    pub(super) received: Arc<RequestBodyState>,
    pub(super) conn: Arc<ConnectionState>,
    /// An upgrade's request, refused or tunnelled: Envoy has not marked it as received,
    /// however complete it was.
    pub(super) answered_early: bool,
}

/// How a stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ended {
    /// Its response was sent whole.
    Complete,
    /// The client went away or reset the stream first: flag DC, or DR for a reset.
    ByClient,
    /// The proxy reset it, its response broken off (the cause is among its flags).
    ByProxy,
}

impl StreamEnd {
    pub(super) fn finish(mut self: Box<Self>, sent: u64, ended: Ended) {
        let info = &mut self.info;
        info.access_log_type = legate_core::stream_info::AccessLogType::DownstreamEnd;
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(info.start);
        info.duration = Some(elapsed);
        info.last_downstream_tx_byte = Some(elapsed);
        info.bytes_sent = sent;
        info.bytes_received = self.received.bytes.load(Ordering::Relaxed);
        let stats = &self.hcm.stats;
        if ended != Ended::Complete {
            // Envoy counts every stream that ends without its response as reset, whoever
            // reset it: the client (RST_STREAM, a closed connection) or the proxy.
            stats.downstream_rq_rx_reset.inc();
        } else if self.answered_early || !self.received.complete.load(Ordering::Relaxed) {
            // Answered before the request ended (a local reply, an upstream that answers an
            // upload early): Envoy resets the stream, and counts that as a reset too.
            stats.downstream_rq_response_before_rq_complete.inc();
            stats.downstream_rq_rx_reset.inc();
        }
        if ended == Ended::ByClient {
            info.response_flags
                .set(if self.received.reset.load(Ordering::Relaxed) {
                    ResponseFlags::DOWNSTREAM_REMOTE_RESET
                } else {
                    ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION
                });
        }
        let conn = &self.conn;
        conn.last_active_ms.store(
            now.saturating_duration_since(conn.opened).as_millis() as u64,
            Ordering::Relaxed,
        );
        conn.active_streams.fetch_sub(1, Ordering::Relaxed);
        stats.downstream_rq_active.dec();
        // Only a stream that sent a response counts as completed (Envoy's `chargeStats`).
        if let Some(code) = info.response_code {
            stats.response(code);
        }
        stats.downstream_rq_time.record(elapsed.as_millis() as u64);
        if !self.hcm.access_logs.is_empty() {
            let runtime = self.hcm.context.runtime.snapshot();
            for log in &self.hcm.access_logs {
                log.log(info, &runtime);
            }
        }
    }
}

/// The response body sent downstream: counts bytes and accounts for the stream when it ends
/// or is dropped.
pub(super) struct StreamBody {
    pub(super) inner: Body,
    pub(super) end: Option<Box<StreamEnd>>,
    pub(super) sent: u64,
    pub(super) complete: bool,
}

impl http_body::Body for StreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                }
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(end) = self.end.as_mut()
                {
                    end.info.response_trailers = Some(trailers.clone());
                }
            }
            Poll::Ready(None) => self.complete = true,
            // The response cannot be finished: the codec resets the stream (HTTP/1.1: closes
            // the connection), which ends it here.
            Poll::Ready(Some(Err(e))) => {
                if let Some(mut end) = self.end.take() {
                    if let Some(cut) = e.downcast_ref::<crate::router::BodyCut>() {
                        end.info.response_flags.set(cut.flag);
                    }
                    end.hcm.stats.downstream_rq_tx_reset.inc();
                    end.finish(self.sent, Ended::ByProxy);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for StreamBody {
    fn drop(&mut self) {
        if let Some(end) = self.end.take() {
            let ended = if self.complete || self.inner.is_end_stream() {
                Ended::Complete
            } else {
                Ended::ByClient
            };
            end.finish(self.sent, ended);
        }
    }
}

/// What the connection manager learns of a request body as it streams upstream, and of the
/// stream from its codec.
#[derive(Debug, Default)]
pub(crate) struct RequestBodyState {
    /// The client reset the stream (HTTP/2 RST_STREAM): logged `DR` rather than `DC`.
    pub reset: std::sync::atomic::AtomicBool,
    pub bytes: AtomicU64,
    /// The client sent a malformed body (a bad chunk size, a short body): a downstream
    /// protocol error, not an upstream failure.
    pub malformed: std::sync::atomic::AtomicBool,
    /// The whole body has been read.
    pub complete: std::sync::atomic::AtomicBool,
}

/// A request body as a codec delivers it.
pub(crate) enum DownstreamBody {
    H1(crate::h1::RequestBody),
    H2(super::h2::RequestBody),
}

impl http_body::Body for DownstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            DownstreamBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            DownstreamBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            DownstreamBody::H1(b) => b.is_end_stream(),
            DownstreamBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            DownstreamBody::H1(b) => b.size_hint(),
            DownstreamBody::H2(b) => b.size_hint(),
        }
    }
}

/// A request body that counts the bytes it passes.
pub(super) struct CountingBody {
    pub(super) inner: DownstreamBody,
    pub(super) count: Arc<RequestBodyState>,
    /// HTTP/1 request trailers are dropped, as Envoy does without `enable_trailers`.
    pub(super) drop_trailers: bool,
}

impl http_body::Body for CountingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut polled = Pin::new(&mut self.inner).poll_frame(cx);
        if self.drop_trailers
            && let Poll::Ready(Some(Ok(frame))) = &polled
            && frame.is_trailers()
        {
            // Trailers end the body; without them the body just ends.
            polled = Poll::Ready(None);
        }
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.count
                        .bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(Some(Err(_))) => self.count.malformed.store(true, Ordering::Relaxed),
            Poll::Ready(None) => self.count.complete.store(true, Ordering::Relaxed),
            Poll::Pending => {}
        }
        if self.inner.is_end_stream() {
            self.count.complete.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
