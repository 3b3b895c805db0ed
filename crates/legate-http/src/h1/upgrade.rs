//! A connection handed over after a response switched protocols: the bytes the codec had
//! already read, then the socket itself.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

/// A socket of any kind (TCP, unix, TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The downstream connection of an upgraded request, once the codec lets go of it.
#[derive(Debug)]
pub struct OnUpgrade(pub(super) oneshot::Receiver<Upgraded>);

impl OnUpgrade {
    /// The connection, or `None` if the response did not switch protocols (or the client
    /// went away first).
    pub async fn upgraded(self) -> Option<Upgraded> {
        self.0.await.ok()
    }
}

/// An upgraded connection.
pub type Upgraded = Rewind<Box<dyn Io>>;

/// A socket some of whose bytes were read already: those first, then the socket's.
pub struct Rewind<T> {
    io: T,
    read_ahead: Bytes,
}

impl<T> std::fmt::Debug for Rewind<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewind")
            .field("read_ahead", &self.read_ahead.len())
            .finish_non_exhaustive()
    }
}

impl<T> Rewind<T> {
    pub fn new(io: T, read_ahead: Bytes) -> Rewind<T> {
        Rewind { io, read_ahead }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read_ahead.is_empty() {
            let n = self.read_ahead.len().min(buf.remaining());
            buf.put_slice(&self.read_ahead[..n]);
            self.read_ahead.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
