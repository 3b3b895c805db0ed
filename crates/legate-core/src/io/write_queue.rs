//! Bytes waiting to be written to a connection by an HTTP/1.1 codec: small pieces (heads,
//! chunk sizes, short bodies) copied together into one buffer, large body chunks queued as
//! they came, and all of it written with vectored writes — a large body is not copied in
//! user space on its way through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;

/// Body chunks up to this size are copied (a copy costs less than a slice more in a write);
/// larger ones are queued.
const COPY_LIMIT: usize = 8 * 1024;

/// The most slices given to one vectored write.
const SLICES: usize = 16;

/// See the module's doc. Written in the order the bytes were put.
#[derive(Default)]
pub struct WriteQueue {
    /// Small pieces, after everything in `queued`.
    scratch: BytesMut,
    queued: Vec<Bytes>,
    /// Bytes of `queued[0]` already written.
    written: usize,
}

impl WriteQueue {
    pub fn is_empty(&self) -> bool {
        self.scratch.is_empty() && self.queued.is_empty()
    }

    /// The bytes still to write.
    pub fn len(&self) -> usize {
        self.scratch.len() + self.queued.iter().map(Bytes::len).sum::<usize>() - self.written
    }

    /// Copies `bytes` in.
    pub fn put(&mut self, bytes: &[u8]) {
        self.scratch.extend_from_slice(bytes);
    }

    /// The buffer small pieces are copied into, for an encoder to write into in place.
    pub fn buf_mut(&mut self) -> &mut BytesMut {
        &mut self.scratch
    }

    /// Puts a body chunk: copied when small, queued as it is when not.
    pub fn put_data(&mut self, data: Bytes) {
        if data.len() <= COPY_LIMIT {
            self.scratch.extend_from_slice(&data);
        } else {
            if !self.scratch.is_empty() {
                self.queued.push(self.scratch.split().freeze());
            }
            self.queued.push(data);
        }
    }

    /// The bytes still to write, in order.
    pub fn chunks(&self) -> impl Iterator<Item = &[u8]> {
        let queued = self.queued.iter().enumerate();
        queued
            .map(|(i, b)| &b[if i == 0 { self.written } else { 0 }..])
            .chain(std::iter::once(&self.scratch[..]))
            .filter(|b| !b.is_empty())
    }

    /// Writes everything; ready when all of it is written. What the socket took before a
    /// `Pending` or an error is gone from the queue.
    pub fn poll_write<W: AsyncWrite + ?Sized>(
        &mut self,
        mut io: Pin<&mut W>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.queued.is_empty() && !self.scratch.is_empty() {
            self.queued.push(self.scratch.split().freeze());
        }
        if self.queued.is_empty() {
            while !self.scratch.is_empty() {
                let n = ready!(io.as_mut().poll_write(cx, &self.scratch))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.scratch.advance(n);
            }
            return Poll::Ready(Ok(()));
        }
        while !self.queued.is_empty() {
            let mut slices = [io::IoSlice::new(&[]); SLICES];
            let count = self.queued.len().min(SLICES);
            for (i, b) in self.queued[..count].iter().enumerate() {
                let from = if i == 0 { self.written } else { 0 };
                slices[i] = io::IoSlice::new(&b[from..]);
            }
            let mut n = ready!(io.as_mut().poll_write_vectored(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            while n > 0 {
                let first = self.queued[0].len() - self.written;
                if n >= first {
                    n -= first;
                    self.written = 0;
                    self.queued.remove(0);
                } else {
                    self.written += n;
                    n = 0;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    /// A socket that takes at most `at_once` bytes a call, every other call `Pending`.
    struct Trickle {
        wire: Vec<u8>,
        at_once: usize,
        busy: bool,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.busy = !self.busy;
            if self.busy {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let mut left = self.at_once;
            for b in bufs {
                let n = b.len().min(left);
                self.wire.extend_from_slice(&b[..n]);
                left -= n;
            }
            Poll::Ready(Ok(self.at_once - left))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn what_is_put_leaves_in_order_through_short_writes() {
        let big = Bytes::from(vec![b'b'; 3 * COPY_LIMIT]);
        let mut queue = WriteQueue::default();
        queue.put(b"head;");
        queue.put_data(Bytes::from_static(b"small;"));
        queue.put_data(big.clone());
        queue.put(b";tail");
        let mut expected = b"head;small;".to_vec();
        expected.extend_from_slice(&big);
        expected.extend_from_slice(b";tail");
        assert_eq!(queue.len(), expected.len());
        assert_eq!(queue.chunks().collect::<Vec<_>>().concat(), expected);

        let mut socket = Trickle {
            wire: Vec::new(),
            at_once: 1000,
            busy: false,
        };
        poll_fn(|cx| queue.poll_write(Pin::new(&mut socket), cx))
            .await
            .unwrap();
        assert_eq!(socket.wire, expected);
        assert!(queue.is_empty());
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn a_large_chunk_is_queued_not_copied() {
        let big = Bytes::from(vec![b'b'; COPY_LIMIT + 1]);
        let mut queue = WriteQueue::default();
        queue.put(b"head");
        queue.put_data(big.clone());
        let chunks: Vec<&[u8]> = queue.chunks().collect();
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0], b"head");
        assert_eq!(chunks[1].as_ptr(), big.as_ptr(), "the very bytes put");
    }
}
