//! Moving bytes between two TCP connections, each direction on its own, with TCP half-close:
//! when one side finishes sending (FIN), the other side's write half is shut down and the
//! opposite direction goes on until it finishes too (Envoy's tcp_proxy enables half-close on
//! both connections). A reset or a write error on either side ends both directions.
//!
//! A direction holds a read buffer only while bytes are flowing: it is taken when the socket
//! becomes readable and given back once the socket is drained, so an idle proxied connection
//! costs no buffer memory.

use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use legate_core::stats::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The read size: large enough for throughput, released when idle.
const CHUNK: usize = 64 * 1024;

/// Counters a direction adds its bytes to as they pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct ByteCounters<'a> {
    pub counters: [Option<&'a Counter>; 2],
    /// The connection's own running total, for whoever reads it while the exchange runs
    /// (tcp_proxy's periodic access log).
    pub total: Option<&'a AtomicU64>,
}

impl ByteCounters<'_> {
    fn add(&self, n: u64) {
        for c in self.counters.iter().flatten() {
            c.add(n);
        }
        if let Some(t) = self.total {
            t.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// What ends an exchange besides its two sides finishing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    /// Nothing moved in either direction for this long (`None`: no idle timeout).
    pub idle: Option<Duration>,
    /// The exchange ends at this instant, whatever is moving (tcp_proxy's
    /// `max_downstream_connection_duration`).
    pub deadline: Option<Instant>,
}

impl Limits {
    /// When the timer must next wake, after the last byte moved at `last_activity`.
    fn next_wake(&self, last_activity: Instant) -> Option<Instant> {
        let idle_due = self.idle.map(|idle| last_activity + idle);
        match (idle_due, self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether a limit is reached at `now`, and which.
    fn reached(&self, last_activity: Instant, now: Instant) -> Option<End> {
        if self.deadline.is_some_and(|d| now >= d) {
            Some(End::MaxDuration)
        } else if self.idle.is_some_and(|idle| now >= last_activity + idle) {
            Some(End::IdleTimeout)
        } else {
            None
        }
    }
}

/// Which side ended the exchange first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

/// How an exchange ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Both sides finished sending.
    Closed,
    /// No byte moved for the idle timeout.
    IdleTimeout,
    /// [`Limits::deadline`] passed.
    MaxDuration,
    /// A read or write failed (a reset, usually).
    Error,
}

#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    pub end: End,
    /// Bytes read from A (and written to B), and from B.
    pub a_to_b: u64,
    pub b_to_a: u64,
    /// The side that finished (or failed) first, if any did.
    pub first_to_close: Option<Side>,
}

/// Shuts down the write half of a socket (sends FIN); `&self` suffices.
pub fn shutdown_write(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).shutdown(Shutdown::Write);
}

/// Writes all of `data`; `&self` suffices.
pub async fn write_all(dst: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        dst.writable().await?;
        match dst.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One direction of a plain exchange: reads `src` and writes to `dst` until `src` finishes,
/// then shuts down `dst`'s writing. A poll-driven state machine rather than an `async fn`: an
/// idle connection's task holds this state for the life of the connection, and the compiler's
/// layout of the equivalent `async` code (two directions, `try_join!`, `select!`) was four
/// times its size.
#[derive(Default)]
struct Direction {
    /// Taken when bytes are there to read and released once the socket runs dry, so that an
    /// idle connection holds no buffer; filled without being zeroed first (`try_read_buf`
    /// reads into the spare capacity).
    buf: Option<Vec<u8>>,
    /// `buf[written..]` is read but not yet written to `dst`.
    written: usize,
    /// Bytes moved (written to `dst`).
    total: u64,
    done: bool,
}

impl Direction {
    /// Moves bytes until `src` finishes (`Ready(Ok)`), a read or write fails, or neither
    /// socket is ready (`Pending`, with wakers registered). `moved` is called with every
    /// chunk written.
    fn poll_move(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        dst: &TcpStream,
        mut moved: impl FnMut(u64),
    ) -> Poll<io::Result<()>> {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if let Some(pending) = self.buf.as_ref().filter(|b| self.written < b.len()) {
                ready!(dst.poll_write_ready(cx))?;
                match dst.try_write(&pending[self.written..]) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => {
                        self.written += n;
                        self.total += n as u64;
                        moved(n as u64);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
                continue;
            }
            ready!(src.poll_read_ready(cx))?;
            let b = self.buf.get_or_insert_with(|| Vec::with_capacity(CHUNK));
            b.clear();
            self.written = 0;
            match src.try_read_buf(b) {
                Ok(0) => {
                    shutdown_write(dst);
                    self.done = true;
                    self.buf = None;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.buf = None,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Proxies between `a` and `b` until both directions finish, one fails, or a limit is
/// reached.
pub async fn exchange(
    a: &TcpStream,
    b: &TcpStream,
    limits: Limits,
    from_a: ByteCounters<'_>,
    from_b: ByteCounters<'_>,
) -> Outcome {
    let mut ways = [Direction::default(), Direction::default()];
    let mut first_to_close = None;
    let mut last_activity = Instant::now();
    // Armed only with a limit; when it fires early (bytes moved since it was set) it is set
    // again from the last activity, so moving bytes costs no timer update.
    let first_wake = limits.next_wake(last_activity);
    let mut timer = std::pin::pin!(tokio::time::sleep_until(
        first_wake.unwrap_or(last_activity).into()
    ));
    let end = std::future::poll_fn(|cx| {
        for (i, way) in ways.iter_mut().enumerate() {
            if way.done {
                continue;
            }
            let (src, dst, counters) = if i == 0 {
                (a, b, from_a)
            } else {
                (b, a, from_b)
            };
            let r = way.poll_move(cx, src, dst, |n| {
                counters.add(n);
                last_activity = Instant::now();
            });
            if let Poll::Ready(r) = r {
                first_to_close.get_or_insert(if i == 0 { Side::A } else { Side::B });
                if r.is_err() {
                    return Poll::Ready(End::Error);
                }
            }
        }
        if ways.iter().all(|w| w.done) {
            return Poll::Ready(End::Closed);
        }
        if let Some(mut wake) = first_wake {
            while timer.as_mut().poll(cx).is_ready() {
                if let Some(end) = limits.reached(last_activity, Instant::now()) {
                    return Poll::Ready(end);
                }
                wake = limits.next_wake(last_activity).unwrap_or(wake);
                timer.as_mut().reset(wake.into());
            }
        }
        Poll::Pending
    })
    .await;
    Outcome {
        end,
        a_to_b: ways[0].total,
        b_to_a: ways[1].total,
        first_to_close,
    }
}

/// The time of the last byte moved, for the idle timeout of [`exchange_io`].
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Waits until a limit is reached (forever without one), and says which.
    async fn limit(&self, limits: Limits) -> End {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            if let Some(end) = limits.reached(last, Instant::now()) {
                return end;
            }
            match limits.next_wake(last) {
                Some(wake) => tokio::time::sleep_until(wake.into()).await,
                None => std::future::pending().await,
            }
        }
    }
}

/// Runs the two directions of an [`exchange_io`] to their end (or a limit) and reports
/// how it ended. The directions are pinned where the caller made them: moved in, each would be
/// held again by every combinator here, for the whole life of the connection.
async fn both_ways<F, B>(
    forward: Pin<&mut F>,
    backward: Pin<&mut B>,
    limits: Limits,
    activity: &Activity,
    a_to_b: &AtomicU64,
    b_to_a: &AtomicU64,
) -> Outcome
where
    F: Future<Output = io::Result<()>>,
    B: Future<Output = io::Result<()>>,
{
    // 0: none yet, 1: A, 2: B.
    let first = AtomicU8::new(0);
    let mark = |side: u8| {
        let _ = first.compare_exchange(0, side, Ordering::Relaxed, Ordering::Relaxed);
    };
    let forward = async {
        let r = forward.await;
        mark(1);
        r
    };
    let backward = async {
        let r = backward.await;
        mark(2);
        r
    };
    let both = async { tokio::try_join!(forward, backward).map(|_| ()) };
    let end = if limits.idle.is_some() || limits.deadline.is_some() {
        tokio::select! {
            r = both => if r.is_ok() { End::Closed } else { End::Error },
            end = activity.limit(limits) => end,
        }
    } else {
        match both.await {
            Ok(()) => End::Closed,
            Err(_) => End::Error,
        }
    };
    Outcome {
        end,
        a_to_b: a_to_b.load(Ordering::Relaxed),
        b_to_a: b_to_a.load(Ordering::Relaxed),
        first_to_close: match first.load(Ordering::Relaxed) {
            1 => Some(Side::A),
            2 => Some(Side::B),
            _ => None,
        },
    }
}

/// `envoy.filters.network.echo`: writes back what it reads until the peer finishes.
pub async fn echo(s: &TcpStream, received: ByteCounters<'_>) -> io::Result<u64> {
    let mut way = Direction::default();
    std::future::poll_fn(|cx| way.poll_move(cx, s, s, |n| received.add(n))).await?;
    Ok(way.total)
}

/// Reads and drops what the peer still sends after we finished, for up to `linger`, so that
/// closing with unread bytes does not reset the connection before the peer has read our
/// reply.
pub async fn drain(s: &TcpStream, linger: Duration) {
    let _ = tokio::time::timeout(linger, async {
        // On the heap: inline, 4 KiB would size the future (and every connection's task that
        // may run it) for this short epilogue.
        let mut buf = vec![0u8; 4096];
        loop {
            if s.readable().await.is_err() {
                return;
            }
            match s.try_read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    })
    .await;
}

/// [`exchange`] for any pair of byte streams (TLS on either side): the same half-close, idle
/// timeout and accounting, through `AsyncRead`/`AsyncWrite` instead of the sockets' readiness.
/// A direction that finishes shuts down the other side's writing (for TLS, a `close_notify`
/// and then the TCP FIN).
pub async fn exchange_io<A, B>(
    a: A,
    b: B,
    limits: Limits,
    from_a: ByteCounters<'_>,
    from_b: ByteCounters<'_>,
) -> Outcome
where
    A: AsyncRead + AsyncWrite,
    B: AsyncRead + AsyncWrite,
{
    let activity = Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let (a_read, a_write) = tokio::io::split(a);
    let (b_read, b_write) = tokio::io::split(b);
    let (a_to_b, b_to_a) = (AtomicU64::new(0), AtomicU64::new(0));
    let forward = std::pin::pin!(one_way_io(a_read, b_write, from_a, &a_to_b, &activity));
    let backward = std::pin::pin!(one_way_io(b_read, a_write, from_b, &b_to_a, &activity));
    both_ways(forward, backward, limits, &activity, &a_to_b, &b_to_a).await
}

async fn one_way_io<R, W>(
    mut src: R,
    mut dst: W,
    counters: ByteCounters<'_>,
    total: &AtomicU64,
    activity: &Activity,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK / 4];
    loop {
        let n = src.read(&mut buf).await?;
        if n == 0 {
            let _ = dst.shutdown().await;
            return Ok(());
        }
        activity.touch();
        dst.write_all(&buf[..n]).await?;
        dst.flush().await?;
        total.fetch_add(n as u64, Ordering::Relaxed);
        counters.add(n as u64);
        activity.touch();
    }
}

/// [`echo`] for any byte stream.
pub async fn echo_io<S: AsyncRead + AsyncWrite>(
    s: S,
    received: ByteCounters<'_>,
) -> io::Result<u64> {
    let activity = Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let total = AtomicU64::new(0);
    let (r, w) = tokio::io::split(s);
    one_way_io(r, w, received, &total, &activity).await?;
    Ok(total.load(Ordering::Relaxed))
}

/// `direct_response` for any byte stream: write, finish, read what the peer still sends for up
/// to `linger`.
pub async fn respond_io<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    data: &[u8],
    linger: Duration,
) {
    if s.write_all(data).await.is_err() || s.shutdown().await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(linger, async {
        let mut buf = vec![0u8; 4096]; // on the heap, as in `drain`
        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}
