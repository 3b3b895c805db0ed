//! A TLS connection: rustls's `ServerConnection` or `ClientConnection` over a TCP or unix
//! domain socket ([`Transport`]), as an `AsyncRead`/`AsyncWrite` ([`TlsStream`]).
//! tokio-rustls's streams did this job; this one does less work and writes less, as Envoy
//! (BoringSSL) does:
//!
//! * **Session tickets ride with the response.** A TLS 1.3 server makes its tickets when the
//!   client's Finished arrives, after its own flight; tokio-rustls flushed them on their own at
//!   the end of the handshake (one `write(2)`, and on loopback the client's receive work too).
//!   [`TlsStream::accept`] leaves them queued: they leave with the first bytes the proxy sends.
//!   What a TLS 1.2 server has queued then is its Finished, and what a client has queued is its
//!   own Finished: both are waited for by the peer, so they are flushed.
//! * **The reader's buffer is not zeroed.** `Read::read` wants an initialized buffer, so
//!   tokio-rustls zeroed the caller's unfilled space on every read (for the HTTP codecs, 16 KiB
//!   or more); plaintext is copied straight out of rustls's chunks instead.
//! * **No `shutdown(2)` towards a peer that has closed.** Once the peer has sent close_notify
//!   (or its FIN), shutting the write side down sends close_notify as TLS wants but no FIN of
//!   its own: the socket is about to be closed, and the call failed with ENOTCONN whenever the
//!   peer had gone already.
//!
//! Reads and writes follow tokio-rustls's rules otherwise: plaintext is delivered before more
//! TLS is read; a TCP EOF without close_notify reads as `UnexpectedEof`; a TLS error reads as
//! `InvalidData` wrapping the `rustls::Error` (after a last attempt to send its alert); a
//! write is taken into rustls's buffer (vectored writes as one record) and sent as far as the
//! socket allows.

use std::future::poll_fn;
use std::io::{self, BufRead, IoSlice, Read, Write};
use std::ops::DerefMut;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rustls::{ClientConnection, ConnectionCommon, ProtocolVersion, ServerConnection, SideData};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Transport;

/// A TLS connection, handshake done: `C` is rustls's `ServerConnection` (from
/// [`TlsStream::accept`]) or `ClientConnection` (from [`TlsStream::connect`]).
pub struct TlsStream<C> {
    socket: Transport,
    conn: C,
    /// The peer's side is closed: close_notify or a TCP EOF came.
    peer_closed: bool,
    close_notify_sent: bool,
}

impl TlsStream<ServerConnection> {
    /// Completes the handshake `conn` started (after the ClientHello). In TLS 1.3 the session
    /// tickets stay queued for the first write.
    pub async fn accept(socket: Transport, conn: ServerConnection) -> io::Result<Self> {
        Self::handshake(socket, conn, true).await
    }
}

impl TlsStream<ClientConnection> {
    /// The client's handshake, from its ClientHello.
    pub async fn connect(socket: Transport, conn: ClientConnection) -> io::Result<Self> {
        Self::handshake(socket, conn, false).await
    }
}

impl<C, D> TlsStream<C>
where
    C: DerefMut<Target = ConnectionCommon<D>> + Unpin,
    D: SideData,
{
    /// Drives the handshake, writing each flight as it comes; with `leave_tls13_tail`, what a
    /// TLS 1.3 connection has queued when its handshake completes stays queued.
    async fn handshake(
        mut socket: Transport,
        mut conn: C,
        leave_tls13_tail: bool,
    ) -> io::Result<Self> {
        poll_fn(|cx| {
            let mut io = Io {
                socket: &mut socket,
                cx: &mut *cx,
            };
            loop {
                let done = !conn.is_handshaking();
                let leave = leave_tls13_tail
                    && done
                    && conn.protocol_version() == Some(ProtocolVersion::TLSv1_3);
                if !leave {
                    ready!(write_queued(&mut *conn, &mut io))?;
                }
                if done {
                    return Poll::Ready(Ok(()));
                }
                match conn.read_tls(&mut io) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                    Ok(_) => {
                        if let Err(e) = conn.process_new_packets() {
                            // The alert is a courtesy: the handshake failed either way.
                            let _ = write_queued(&mut *conn, &mut io);
                            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
        })
        .await?;
        Ok(TlsStream {
            socket,
            conn,
            peer_closed: false,
            close_notify_sent: false,
        })
    }

    /// The TLS state: what was negotiated, the peer's certificates, the SNI.
    pub fn connection(&self) -> &C {
        &self.conn
    }

    /// Waits until the peer has sent something past the handshake, or closed: plaintext
    /// rustls already holds, else the socket's next bytes (a TLS error counts too: the next
    /// read reports it).
    pub async fn peer_sent(&mut self) -> io::Result<()> {
        match self.conn.process_new_packets() {
            Ok(state) if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() => Ok(()),
            Ok(_) => self.socket.peer_sent().await,
            Err(_) => Ok(()),
        }
    }

    /// Sends what rustls has queued, as far as the socket takes it.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut io = Io {
            socket: &mut self.socket,
            cx,
        };
        write_queued(&mut *self.conn, &mut io)
    }
}

/// Writes the TLS records `conn` has queued until none are left (`Ready`) or the socket is full
/// (`Pending`, the task woken when it has room).
fn write_queued<D: SideData>(
    conn: &mut ConnectionCommon<D>,
    io: &mut Io<'_, '_>,
) -> Poll<io::Result<()>> {
    while conn.wants_write() {
        match conn.write_tls(io) {
            Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    Poll::Ready(Ok(()))
}

/// The socket as `Read`/`Write` for rustls, within a poll: `WouldBlock` when it is not ready,
/// with the task registered to be woken when it is.
struct Io<'a, 'b> {
    socket: &'a mut Transport,
    cx: &'a mut Context<'b>,
}

impl Read for Io<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut *self.socket).poll_read(self.cx, &mut buf) {
            Poll::Ready(Ok(())) => Ok(buf.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for Io<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match Pin::new(&mut *self.socket).poll_write_vectored(self.cx, bufs) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<C, D> AsyncRead for TlsStream<C>
where
    C: DerefMut<Target = ConnectionCommon<D>> + Unpin,
    D: SideData,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            // Plaintext is copied from rustls's chunks into the caller's buffer as it is,
            // without zeroing the buffer first (`Read::read` would need it initialized).
            let mut reader = this.conn.reader();
            let mut delivered = false;
            loop {
                match reader.fill_buf() {
                    Ok([]) => {
                        // The peer's close_notify, once all its data is read.
                        this.peer_closed |= !delivered;
                        return Poll::Ready(Ok(()));
                    }
                    Ok(chunk) => {
                        let n = chunk.len().min(buf.remaining());
                        buf.put_slice(&chunk[..n]);
                        reader.consume(n);
                        delivered = true;
                        if buf.remaining() == 0 {
                            return Poll::Ready(Ok(()));
                        }
                    }
                    Err(_) if delivered => return Poll::Ready(Ok(())),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        this.peer_closed |= e.kind() == io::ErrorKind::UnexpectedEof;
                        return Poll::Ready(Err(e));
                    }
                }
            }
            let mut io = Io {
                socket: &mut this.socket,
                cx: &mut *cx,
            };
            match this.conn.read_tls(&mut io) {
                // rustls now knows of the EOF: the reader reports it.
                Ok(0) => this.peer_closed = true,
                Ok(_) => {
                    if let Err(e) = this.conn.process_new_packets() {
                        let _ = write_queued(&mut *this.conn, &mut io);
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<C, D> AsyncWrite for TlsStream<C>
where
    C: DerefMut<Target = ConnectionCommon<D>> + Unpin,
    D: SideData,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let wanted: usize = bufs.iter().map(|b| b.len()).sum();
        loop {
            // rustls takes what fits under its buffer limit (one record per call).
            let taken = this.conn.writer().write_vectored(bufs)?;
            let sent = this.poll_send(cx);
            if let Poll::Ready(Err(e)) = sent {
                return Poll::Ready(Err(e));
            }
            if taken > 0 || wanted == 0 {
                return Poll::Ready(Ok(taken));
            }
            // The buffer was full: wait for the socket to drain it.
            ready!(sent)?;
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.conn.writer().flush()?;
        this.poll_send(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_notify_sent {
            this.conn.send_close_notify();
            this.close_notify_sent = true;
        }
        ready!(this.poll_send(cx))?;
        if this.peer_closed {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.socket).poll_shutdown(cx)
    }
}

impl<C> super::OverTransport for TlsStream<C> {
    fn transport(&self) -> &Transport {
        &self.socket
    }
}
