//! TCP tunneled over HTTP (tcp_proxy's `tunneling_config`): a request to the host opens the
//! tunnel — `CONNECT` over HTTP/1.1 (any 2xx answer) or HTTP/2 (a 200), whose stream or
//! connection then carries the client's bytes both ways; or a `POST`, whose request body
//! carries the client's bytes and whose response body the host's. [`Tunnel`] is the open
//! tunnel as a byte stream, for tcp_proxy's exchange.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::{Method, Request, Response};
use http_body::{Body as _, Frame};
use hyper_util::rt::TokioIo;
use legate_core::proxy_protocol::ProxyProtocolData;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use crate::body::{self, Body};
use crate::host::Host;
use crate::pool::{self, Protocol, ResponseBody, UpstreamError};
use crate::{Cluster, http1};

/// Client bytes queued towards a `POST` tunnel's request body before the writer waits.
const POST_QUEUE: usize = 4;

/// Why a tunnel did not open.
#[derive(Debug)]
pub enum TunnelError {
    /// No connection or stream to the host (the pool's reason).
    Upstream(UpstreamError),
    /// The host answered, but not with what opens a tunnel.
    Refused(u16),
}

/// Opens a tunnel to `host` with `request` (its head: `CONNECT` with the authority as its URI,
/// or `POST` with the path), over `protocol`.
pub async fn open(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    worker: usize,
    protocol: Protocol,
    request: Request<()>,
    proxy: Option<ProxyProtocolData>,
) -> Result<Tunnel, TunnelError> {
    let post = request.method() == Method::POST;
    let (parts, ()) = request.into_parts();
    let (sender, request_body) = if post {
        let (tx, rx) = mpsc::channel::<Bytes>(POST_QUEUE);
        (Some(PollSender::new(tx)), channel_body(rx))
    } else {
        (None, body::empty())
    };
    let request = Request::from_parts(parts, request_body);
    let mut response = pool::send(
        cluster,
        host,
        worker,
        protocol,
        request,
        proxy.map(Box::new),
    )
    .await
    .map_err(TunnelError::Upstream)?;
    let status = response.status();
    let opened = match protocol {
        Protocol::Http1 => status.is_success(),
        Protocol::Http2 => status == http::StatusCode::OK,
    };
    if !opened {
        return Err(TunnelError::Refused(status.as_u16()));
    }
    let inner = match (sender, protocol) {
        (Some(tx), _) => Inner::Post {
            tx: Some(tx),
            response: response.into_body(),
            pending: Bytes::new(),
        },
        (None, Protocol::Http1) => match response.body_mut().upgrade() {
            Some(connection) => Inner::Http1(connection),
            None => return Err(TunnelError::Refused(status.as_u16())),
        },
        (None, Protocol::Http2) => upgraded_stream(response).await?,
    };
    Ok(Tunnel(inner))
}

/// The HTTP/2 stream a `CONNECT`'s 200 turned into a byte stream.
async fn upgraded_stream(mut response: Response<ResponseBody>) -> Result<Inner, TunnelError> {
    let upgrade = hyper::upgrade::on(&mut response);
    match upgrade.await {
        Ok(stream) => Ok(Inner::Http2 {
            stream: TokioIo::new(stream),
            _place: response.into_body(),
        }),
        Err(e) => Err(TunnelError::Upstream(UpstreamError::ConnectionTermination(
            e.to_string(),
        ))),
    }
}

/// A request body fed from a channel: it ends when the sender is dropped.
fn channel_body(rx: mpsc::Receiver<Bytes>) -> Body {
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|data| (Ok::<_, body::BoxError>(Frame::data(data)), rx))
    });
    body::boxed(http_body_util::StreamBody::new(frames))
}

/// An open tunnel: what is written goes to the host, what is read comes from it; shutting
/// the write side down ends the request (a `CONNECT`'s stream or connection half-closes, a
/// `POST`'s body ends).
pub struct Tunnel(Inner);

enum Inner {
    /// `CONNECT` over HTTP/1.1: the connection itself.
    Http1(http1::Upgraded),
    /// `CONNECT` over HTTP/2: the stream; the response holds its place in the pool.
    Http2 {
        stream: TokioIo<hyper::upgrade::Upgraded>,
        _place: ResponseBody,
    },
    /// `POST`: the request body out (until shut down), the response body in.
    Post {
        tx: Option<PollSender<Bytes>>,
        response: ResponseBody,
        /// A response frame's bytes not read yet.
        pending: Bytes,
    },
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match &self.0 {
            Inner::Http1(_) => "Tunnel(CONNECT over HTTP/1.1)",
            Inner::Http2 { .. } => "Tunnel(CONNECT over HTTP/2)",
            Inner::Post { .. } => "Tunnel(POST)",
        })
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the tunnel's request has ended")
}

impl AsyncRead for Tunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Http1(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Http2 { stream, .. } => Pin::new(stream).poll_read(cx, buf),
            Inner::Post {
                response, pending, ..
            } => {
                while pending.is_empty() {
                    match ready!(Pin::new(&mut *response).poll_frame(cx)) {
                        Some(Ok(frame)) => {
                            if let Ok(data) = frame.into_data() {
                                *pending = data;
                            }
                        }
                        Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                        // The response has ended: the host has finished sending.
                        None => return Poll::Ready(Ok(())),
                    }
                }
                let n = pending.len().min(buf.remaining());
                buf.put_slice(&pending[..n]);
                pending.advance(n);
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().0 {
            Inner::Http1(s) => Pin::new(s).poll_write(cx, data),
            Inner::Http2 { stream, .. } => Pin::new(stream).poll_write(cx, data),
            Inner::Post { tx, .. } => {
                let Some(tx) = tx else {
                    return Poll::Ready(Err(closed()));
                };
                if ready!(tx.poll_reserve(cx)).is_err() {
                    return Poll::Ready(Err(closed()));
                }
                match tx.send_item(Bytes::copy_from_slice(data)) {
                    Ok(()) => Poll::Ready(Ok(data.len())),
                    Err(_) => Poll::Ready(Err(closed())),
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Http1(s) => Pin::new(s).poll_flush(cx),
            Inner::Http2 { stream, .. } => Pin::new(stream).poll_flush(cx),
            Inner::Post { .. } => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Http1(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Http2 { stream, .. } => Pin::new(stream).poll_shutdown(cx),
            Inner::Post { tx, .. } => {
                // The request body ends with its sender.
                *tx = None;
                Poll::Ready(Ok(()))
            }
        }
    }
}
