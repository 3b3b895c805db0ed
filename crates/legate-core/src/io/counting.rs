//! A connection's I/O counting the bytes that pass into two counters: the HTTP connection
//! manager's `downstream_cx_{rx,tx}_bytes_total` and an HTTP upstream connection's
//! `upstream_cx_{rx,tx}_bytes_total` (tcp_proxy and the UDP proxy count as they relay).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::stats::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `inner`, adding what each read returns to `rx` and what each write takes to `tx`.
pub struct CountingIo<S> {
    inner: S,
    rx: Counter,
    tx: Counter,
}

impl<S> CountingIo<S> {
    pub fn new(inner: S, rx: Counter, tx: Counter) -> Self {
        CountingIo { inner, rx, tx }
    }

    fn count_written(&self, result: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = result
            && *n > 0
        {
            self.tx.add(*n as u64);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CountingIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.rx.add(read as u64);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CountingIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.count_written(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.count_written(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
