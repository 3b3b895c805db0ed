//! How much an HTTP/1.1 codec reads at once. A message body whose sender is ahead of the proxy
//! arrives faster than 16 KiB reads take it (a 1 MiB response took 66 `recv` calls and as many
//! allocations); a read that fills all the room it was given says more is waiting, so the next
//! one gets twice the room, up to 64 KiB, and the first read that brings less than 16 KiB goes
//! back to 16 KiB. 64 KiB is where the gain ends and the cost begins: it took 1 MiB bodies
//! from 66 reads to 17 and most of the way to what 256 KiB reads gave (within the noise of
//! this machine), while 256 KiB reads held 0.5-0.9 MiB more per busy connection (a chunk
//! waiting for the client and the next read's buffer).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::AsyncRead;

/// The room of an ordinary read, and of every first read.
pub const MIN: usize = 16 * 1024;
/// The most room a read is given.
pub const MAX: usize = 64 * 1024;

/// A connection's current read size (see the module's doc).
#[derive(Clone, Copy, Debug)]
pub struct ReadSize {
    size: usize,
    /// Reads were given more than [`MIN`] since [`ReadSize::take_grown`] was last asked.
    grown: bool,
}

impl Default for ReadSize {
    fn default() -> Self {
        ReadSize {
            size: MIN,
            grown: false,
        }
    }
}

impl ReadSize {
    /// Reads from `io` into `buf`'s spare room, first making room for the current size when
    /// less than a quarter of it is left, and adapts the size to what came.
    pub fn poll_read<R: AsyncRead + ?Sized>(
        &mut self,
        io: Pin<&mut R>,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        if buf.capacity() - buf.len() < self.size / 4 {
            buf.reserve(self.size);
        }
        let room = buf.capacity() - buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(io, cx, buf))?;
        if n == room {
            self.size = (self.size * 2).min(MAX);
            self.grown |= self.size > MIN;
        } else if n < MIN {
            self.size = MIN;
        }
        Poll::Ready(Ok(n))
    }

    /// Whether reads have been given more than [`MIN`] since this was last asked: the buffer
    /// read into may then hold, or share with the chunks split off it, an allocation of up to
    /// [`MAX`] bytes, which a connection going idle should let go of. Starts over at [`MIN`].
    pub fn take_grown(&mut self) -> bool {
        let grown = self.grown;
        *self = ReadSize::default();
        grown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::AsyncWriteExt;

    /// Reads once, splitting off what came (as a codec hands body chunks on). A read that
    /// finds nothing fails the test rather than waiting for bytes that will not come.
    async fn read_once(size: &mut ReadSize, io: &mut tokio::io::DuplexStream) -> usize {
        let mut buf = BytesMut::new();
        let read = poll_fn(|cx| size.poll_read(Pin::new(&mut *io), cx, &mut buf));
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), read)
            .await
            .expect("a read found nothing to read")
            .unwrap();
        assert_eq!(n, buf.len());
        n
    }

    #[tokio::test]
    async fn reads_grow_while_they_fill_their_room_and_start_over_when_they_do_not() {
        let (mut peer, mut io) = tokio::io::duplex(4 * MAX);
        peer.write_all(&vec![7; 3 * MAX]).await.unwrap();
        let mut size = ReadSize::default();
        let mut sizes = Vec::new();
        for _ in 0..5 {
            sizes.push(read_once(&mut size, &mut io).await);
        }
        // 16 + 32 + 64 + 64 = 176 KiB; 16 KiB were left for the fifth read.
        assert_eq!(sizes, [MIN, 2 * MIN, MAX, MAX, 3 * MAX - 176 * 1024]);
        assert!(size.take_grown());
        assert!(!size.take_grown(), "asking again starts over");

        peer.write_all(&vec![7; 4 * MIN]).await.unwrap();
        assert_eq!(read_once(&mut size, &mut io).await, MIN, "started over");
        assert_eq!(read_once(&mut size, &mut io).await, 2 * MIN);
        assert_eq!(read_once(&mut size, &mut io).await, MIN);
        peer.write_all(b"short").await.unwrap();
        assert_eq!(read_once(&mut size, &mut io).await, 5);
        peer.write_all(&vec![7; 2 * MIN]).await.unwrap();
        assert_eq!(
            read_once(&mut size, &mut io).await,
            MIN,
            "a short read starts over"
        );
        assert!(size.take_grown(), "the read given 64 KiB");
    }
}
