//! A connection that is plain TCP, TLS or a unix domain socket, for code that handles all
//! (tcp_proxy, upstream pools): one `AsyncRead`/`AsyncWrite` that forwards to whichever it
//! holds, vectored writes included; and the socket under a TLS stream ([`Transport`]).
//! Beside it: byte counting, TLS plumbing, and the HTTP/1.1 codecs' adaptive read size and
//! write queue.

pub mod counting;
pub mod read_size;
pub mod tls;
pub mod write_queue;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// Plain TCP, a TLS stream (`T`, over either socket), or a unix domain socket (`pipe`
/// addresses). The TLS stream is boxed: it is large, and most connections are plain.
pub enum MaybeTls<T> {
    Plain(TcpStream),
    Tls(Box<T>),
    Unix(UnixStream),
}

/// A TLS stream that can give back its socket.
pub trait OverTransport {
    fn transport(&self) -> &Transport;
}

impl<T: OverTransport> MaybeTls<T> {
    /// The TCP socket underneath; none for a unix domain socket.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            MaybeTls::Plain(s) => Some(s),
            MaybeTls::Tls(s) => s.transport().tcp(),
            MaybeTls::Unix(_) => None,
        }
    }
}

/// The socket a TLS stream runs over: TCP, or a unix domain socket (`pipe` addresses).
pub enum Transport {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Transport {
    /// The TCP socket; none for a unix domain socket.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Transport::Tcp(s) => Some(s),
            Transport::Unix(_) => None,
        }
    }

    /// Waits until the socket may have bytes to read (see [`Transport::try_read`]).
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.readable().await,
            Transport::Unix(s) => s.readable().await,
        }
    }

    /// Waits until the peer has sent bytes (left unread) or closed.
    pub async fn peer_sent(&self) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => tcp_peer_sent(s).await,
            Transport::Unix(s) => unix_peer_sent(s).await,
        }
    }

    /// Waits until the socket may take bytes (see [`Transport::try_write`]).
    pub async fn writable(&self) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.writable().await,
            Transport::Unix(s) => s.writable().await,
        }
    }

    /// Writes what the socket takes without waiting: `WouldBlock` when it takes nothing.
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.try_write(buf),
            Transport::Unix(s) => s.try_write(buf),
        }
    }

    /// Reads what has arrived without waiting: `WouldBlock` when nothing has.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.try_read(buf),
            Transport::Unix(s) => s.try_read(buf),
        }
    }
}

/// Waits until the peer has sent bytes (left unread: peeked) or closed. Readiness alone is not
/// enough: it may be reported before anything arrived.
pub async fn tcp_peer_sent(s: &TcpStream) -> io::Result<()> {
    s.peek(&mut [0u8; 1]).await.map(|_| ())
}

/// [`tcp_peer_sent`] for a unix domain socket.
pub async fn unix_peer_sent(s: &UnixStream) -> io::Result<()> {
    loop {
        s.readable().await?;
        let mut byte = [std::mem::MaybeUninit::uninit()];
        match s.try_io(tokio::io::Interest::READABLE, || {
            socket2::SockRef::from(s).peek(&mut byte)
        }) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            result => return result.map(|_| ()),
        }
    }
}

/// `AsyncRead` and `AsyncWrite` for an enum of streams: each call goes to the stream the value
/// holds, vectored writes included.
macro_rules! forward_io {
    ($name:ident $(<$t:ident>)?: $($variant:ident),+) => {
        impl$(<$t: AsyncRead + AsyncWrite + Unpin>)? AsyncRead for $name$(<$t>)? {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($name::$variant(s) => Pin::new(s).poll_read(cx, buf),)+
                }
            }
        }

        impl$(<$t: AsyncRead + AsyncWrite + Unpin>)? AsyncWrite for $name$(<$t>)? {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $($name::$variant(s) => Pin::new(s).poll_write(cx, buf),)+
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($name::$variant(s) => Pin::new(s).poll_flush(cx),)+
                }
            }

            fn poll_shutdown(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($name::$variant(s) => Pin::new(s).poll_shutdown(cx),)+
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $($name::$variant(s) => Pin::new(s).poll_write_vectored(cx, bufs),)+
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    $($name::$variant(s) => s.is_write_vectored(),)+
                }
            }
        }
    };
}

forward_io!(MaybeTls<T>: Plain, Tls, Unix);
forward_io!(Transport: Tcp, Unix);
