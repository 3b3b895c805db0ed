//! One HTTP/1.1 connection, request after request: read a head, hand the request to the
//! service while its body streams in, write the response as its body arrives, then either
//! wait for the next request or close.
//!
//! Everything happens in the connection's one task. While the service works, the connection
//! keeps reading: the request body as fast as its reader takes it, and after the body a
//! watch for the client closing (which abandons the request, as Envoy resets it) that also
//! keeps pipelined bytes for later.

use std::future::{Future, poll_fn};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode, header};
use http_body::Body as _;
use legate_upstream::body::{Body, BoxError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use legate_core::http1::{self, Decoder};
use legate_core::io::read_size::ReadSize;
use legate_core::io::write_queue::WriteQueue;

use super::body::{BodyError, BodySender, RequestBody, Room};
use super::encode::{self, Exchange, Framing};
use super::head::{self, Head, Limits};
use super::upgrade::{OnUpgrade, Upgraded};
use super::{CodecError, Service, Shutdown};

/// The most response bytes gathered before writing.
const WRITE_BATCH: usize = 64 * 1024;

/// Why a connection ended other than cleanly.
#[derive(Debug)]
pub enum Error {
    Io(io::Error),
    /// A request the codec refused (and answered).
    Codec(CodecError),
    /// The client closed the connection while its request was in flight.
    ClientClosed,
    /// The response body failed mid-way; the connection is cut so the client sees it.
    Response(BoxError),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(e) => write!(f, "i/o: {e}"),
            Error::Codec(e) => write!(f, "refused request: {} {}", e.status, e.details),
            Error::ClientClosed => f.write_str("client closed the connection mid-request"),
            Error::Response(e) => write!(f, "response body failed: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

/// Serves `io` until the client closes it, a response says `connection: close`, or
/// `shutdown` is requested. `read_ahead` holds bytes already read from it.
///
/// Not an `async fn`: the connection is built before the future, which then holds it once
/// (an `async fn` keeps its arguments for its whole life, next to what it builds from them).
pub fn serve<'a, T, S>(
    io: T,
    service: S,
    limits: Limits,
    shutdown: &'a Shutdown,
    read_ahead: BytesMut,
) -> impl Future<Output = Result<(), Error>> + 'a
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service + 'a,
{
    let conn = Conn {
        io,
        read: read_ahead,
        read_size: ReadSize::default(),
        out: WriteQueue::default(),
        searched: 0,
        limits,
    };
    conn.run(service, shutdown)
}

struct Conn<T> {
    io: T,
    /// Bytes read and not yet consumed; empty (and unallocated) between requests.
    read: BytesMut,
    read_size: ReadSize,
    out: WriteQueue,
    /// How far `read` has been searched for the end of a head.
    searched: usize,
    limits: Limits,
}

/// What follows an exchange.
enum Next {
    Request,
    Close(Closing),
    Upgraded(oneshot::Sender<Upgraded>),
}

/// What happened while waiting for a head.
enum Wait {
    Read(io::Result<usize>),
    TimedOut,
    Shutdown,
}

/// The request side of an exchange: the body still arriving, or what became of it.
struct Incoming {
    decoder: Decoder,
    sender: Option<BodySender>,
    /// The body's reader dropped it before its end: what is left of it is never read.
    abandoned: bool,
    broken: bool,
}

impl Incoming {
    /// The whole request has been read.
    fn complete(&self) -> bool {
        self.decoder.is_done() && !self.abandoned && !self.broken
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Conn<T> {
    /// Request after request (see [`serve`]). The future holds the connection in place: an
    /// `async fn` would keep its `self` argument and a moved copy of it.
    fn run<'a, S: Service>(
        mut self,
        service: S,
        shutdown: &'a Shutdown,
    ) -> impl Future<Output = Result<(), Error>> + 'a {
        async move {
            loop {
                let head = self.read_head(shutdown).await;
                // Everything after the wait (the service's future included) is one allocation
                // per request: an idle connection's future holds the wait only. In a statement
                // of its own: a temporary of the awaiting statement would keep its room in the
                // connection's future too (rust-lang/rust#69663).
                let answer = legate_core::future::boxed(|| self.answer(head, &service, shutdown));
                match answer.await? {
                    Next::Request => {}
                    Next::Close(_) => return Ok(()),
                    Next::Upgraded(tx) => {
                        let _ = tx.send(Upgraded::new(Box::new(self.io), self.read.freeze()));
                        return Ok(());
                    }
                }
            }
        }
    }

    /// The next request head, or `None` when the client closed between requests (or a
    /// shutdown came while none was in progress).
    async fn read_head(&mut self, shutdown: &Shutdown) -> Result<Option<Head>, Error> {
        // The header timer starts at a request's first byte, not when the connection idles.
        let mut deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            if !self.read.is_empty() {
                if let Some(end) = http1::find_end(&self.read, self.searched) {
                    self.searched = 0;
                    return head::parse(&mut self.read, end, &self.limits)
                        .map(Some)
                        .map_err(Error::Codec);
                }
                self.searched = http1::resume_at(self.read.len());
                if self.read.len() > self.limits.max_header_bytes + 2 {
                    return Err(Error::Codec(CodecError::HEADERS_TOO_LARGE));
                }
                if deadline.is_none()
                    && let Some(t) = self.limits.header_timeout
                {
                    deadline = Some(Box::pin(tokio::time::sleep(t)));
                }
            }
            let idle = self.read.is_empty();
            if idle {
                // Between requests nothing is kept allocated.
                self.read = BytesMut::new();
                self.read_size = ReadSize::default();
                self.out = WriteQueue::default();
            }
            let wait = poll_fn(|cx| {
                if idle && shutdown.poll_requested(cx).is_ready() {
                    return Poll::Ready(Wait::Shutdown);
                }
                if let Some(d) = deadline.as_mut()
                    && d.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Wait::TimedOut);
                }
                self.poll_read(cx).map(Wait::Read)
            })
            .await;
            match wait {
                Wait::Shutdown => return Ok(None),
                Wait::TimedOut => return Err(Error::Codec(CodecError::HEADER_TIMEOUT)),
                // Closed between requests, or in the middle of a head (no answer, as Envoy).
                Wait::Read(Ok(0)) => return Ok(None),
                Wait::Read(Ok(_)) => {}
                Wait::Read(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Whatever the wait for a head ended in: a request to answer, a refusal, or the end.
    async fn answer<S: Service>(
        &mut self,
        head: Result<Option<Head>, Error>,
        service: &S,
        shutdown: &Shutdown,
    ) -> Result<Next, Error> {
        let next = match head {
            Ok(Some(head)) => self.exchange(head, service, shutdown).await?,
            Ok(None) => Next::Close(Closing::AfterResponse),
            Err(Error::Codec(refused)) => {
                self.refuse(service.codec_error(refused)).await?;
                return Err(Error::Codec(refused));
            }
            Err(e) => return Err(e),
        };
        if let Next::Close(why) = next {
            self.close(why).await?;
        }
        Ok(next)
    }

    /// One request and its response.
    async fn exchange<S: Service>(
        &mut self,
        head: Head,
        service: &S,
        shutdown: &Shutdown,
    ) -> Result<Next, Error> {
        let Head {
            parts,
            framing,
            keep_alive,
            expect_continue,
            upgrade,
        } = head;
        let head_request = parts.method == Method::HEAD;
        let connect = parts.method == Method::CONNECT;
        let (body, sender) = match framing {
            http1::Framing::Empty => (RequestBody::empty(), None),
            _ => {
                let (body, sender) = RequestBody::channel(framing);
                (body, Some(sender))
            }
        };
        let mut incoming = Incoming {
            decoder: Decoder::new(framing, self.limits.max_header_bytes),
            sender,
            abandoned: false,
            broken: false,
        };
        let (upgrade_tx, upgrade_rx) = if upgrade {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(OnUpgrade(rx)))
        } else {
            (None, None)
        };
        if expect_continue {
            // `proxy_100_continue` off: the proxy itself invites the body, at once.
            self.out.put(b"HTTP/1.1 100 Continue\r\n\r\n");
            service.continued();
        }
        let call = service.call(Request::from_parts(parts, body), upgrade_rx);
        let mut call = std::pin::pin!(call);

        let response = poll_fn(|cx| {
            if !self.out.is_empty() {
                let _ = self.poll_flush(cx)?;
            }
            self.poll_incoming(cx, &mut incoming)?;
            call.as_mut().poll(cx).map(Ok::<_, Error>)
        })
        .await?;
        drop(call);

        let (mut parts, mut body) = response.into_parts();
        // A switch needs someone waiting for the connection (the router, for an upgrade it
        // allowed).
        let switching = upgrade_tx.as_ref().is_some_and(|tx| !tx.is_closed())
            && (parts.status == StatusCode::SWITCHING_PROTOCOLS
                || (connect && parts.status.is_success()));
        // A response that starts before its request has ended (an upstream answering an upload
        // early, a local reply) ends the connection: the rest of the request is not waited
        // for, and the client is told so in the head, as Envoy's `connection: close` tells it
        // (a keep-alive client would otherwise send its next request into a closing
        // connection).
        let close = !switching
            && (!keep_alive
                || shutdown.is_requested()
                || !incoming.complete()
                || http1::has_token(&parts.headers, header::CONNECTION, "close"));
        let exchange = Exchange {
            head_request,
            close,
        };
        let framing = if switching {
            encode::head(
                self.out.buf_mut(),
                &mut parts,
                &Default::default(),
                Exchange {
                    head_request: true,
                    close: false,
                },
            );
            Framing::None
        } else {
            encode::head(self.out.buf_mut(), &mut parts, &body.size_hint(), exchange)
        };

        let mut sending = Sending::new(framing);
        // A whole request's connection was watched in this same poll, just before the response
        // came, and nothing has touched the connection since: the first round need not watch.
        let mut watched = incoming.sender.is_none();
        let turn = std::pin::pin!(tokio::task::yield_now());
        let mut turn = (!switching && !sending.done)
            .then_some(turn as Pin<&mut (dyn Future<Output = ()> + Send)>);
        poll_fn(|cx| {
            if !switching && !std::mem::take(&mut watched) {
                self.poll_incoming(cx, &mut incoming)?;
            }
            self.poll_send(cx, &mut body, &mut sending, &mut turn)
        })
        .await?;
        drop(body);

        if switching {
            return Ok(match upgrade_tx {
                Some(tx) => Next::Upgraded(tx),
                None => Next::Close(Closing::AfterResponse),
            });
        }
        if close || !incoming.complete() || shutdown.is_requested() {
            // The client said this was its last request and nothing of a next one has come.
            let client_done = !keep_alive && incoming.complete() && self.read.is_empty();
            return Ok(Next::Close(if client_done {
                Closing::ClientDone
            } else {
                Closing::AfterResponse
            }));
        }
        Ok(Next::Request)
    }

    /// Moves the request side along: the body into its slot while the slot is free, then a
    /// watch for the client closing. Errors only when the client is gone.
    fn poll_incoming(
        &mut self,
        cx: &mut Context<'_>,
        incoming: &mut Incoming,
    ) -> Result<(), Error> {
        loop {
            if let Some(sender) = &incoming.sender {
                match sender.poll_room(cx) {
                    Poll::Pending => return Ok(()),
                    Poll::Ready(Room::Gone) => {
                        incoming.sender = None;
                        incoming.abandoned = !incoming.decoder.is_done();
                        return Ok(());
                    }
                    Poll::Ready(Room::Free) => {}
                }
                match incoming.decoder.decode(&mut self.read) {
                    Ok(Some(data)) => sender.send(Ok(data)),
                    Ok(None) if incoming.decoder.is_done() => {
                        sender.finish();
                        incoming.sender = None;
                    }
                    Ok(None) => match self.poll_read_body(cx) {
                        Poll::Pending => return Ok(()),
                        Poll::Ready(Ok(0)) => {
                            sender.send(Err(BodyError::Incomplete));
                            incoming.sender = None;
                            return Err(Error::ClientClosed);
                        }
                        Poll::Ready(Ok(_)) => {}
                        Poll::Ready(Err(e)) => return Err(e.into()),
                    },
                    Err(http1::Malformed) => {
                        sender.send(Err(BodyError::Malformed));
                        incoming.sender = None;
                        incoming.broken = true;
                        return Ok(());
                    }
                }
                continue;
            }
            if incoming.abandoned || incoming.broken {
                return Ok(());
            }
            // The request is whole: watch for the client closing, keeping what it pipelines
            // (up to one head's worth; then the socket is left alone until its turn).
            if self.read.len() > self.limits.max_header_bytes {
                return Ok(());
            }
            match self.poll_read(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(Ok(0)) => return Err(Error::ClientClosed),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Sends the response body as its frames come; ready when all of it is written.
    ///
    /// `turn`, when given, is spent the first time the body has nothing ready: the head then
    /// waits one turn of the scheduler (which looks for I/O before it comes back) instead of
    /// leaving alone. Upstreams often write a head and its body apart (nginx: the head, then
    /// the file); when the body follows within that turn, both leave in one write and one TCP
    /// segment, rather than a head the client must wake for, read and acknowledge by itself.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        body: &mut Body,
        sending: &mut Sending,
        turn: &mut Option<Pin<&mut (dyn Future<Output = ()> + Send)>>,
    ) -> Poll<Result<(), Error>> {
        loop {
            if sending.done {
                return self.poll_flush(cx).map_err(Error::Io);
            }
            if self.out.len() >= WRITE_BATCH {
                ready!(self.poll_flush(cx))?;
            }
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers are not sent on HTTP/1 (Envoy's default without
                    // `enable_trailers`).
                    if let Ok(data) = frame.into_data() {
                        sending.put(&mut self.out, data)?;
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    // What came before the failure is flushed as far as the socket takes it at
                    // once (Envoy sends it): the client sees the response cut short by the
                    // framing it was promised.
                    let _ = self.poll_flush(cx);
                    return Poll::Ready(Err(Error::Response(e)));
                }
                Poll::Ready(None) => sending.end(&mut self.out)?,
                Poll::Pending => {
                    if let Some(wait) = turn {
                        if wait.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        *turn = None;
                    }
                    ready!(self.poll_flush(cx))?;
                    return Poll::Pending;
                }
            }
        }
    }

    /// Answers a refused request and closes.
    async fn refuse(&mut self, response: Response<Body>) -> Result<(), Error> {
        let (mut parts, mut body) = response.into_parts();
        let framing = encode::head(
            self.out.buf_mut(),
            &mut parts,
            &body.size_hint(),
            Exchange {
                head_request: false,
                close: true,
            },
        );
        let mut sending = Sending::new(framing);
        poll_fn(|cx| self.poll_send(cx, &mut body, &mut sending, &mut None)).await?;
        self.close(Closing::AfterRefusal).await
    }

    /// Flushes and closes the write side, then — unless the client itself ended the
    /// connection — waits (up to `delayed_close_timeout`) for the client to close, discarding
    /// what it still sends: a socket closed with unread bytes resets the connection, and the
    /// client could lose the response. A wait that runs out after a refusal counts
    /// `downstream_cx_delayed_close_timeout`, as Envoy's does.
    async fn close(&mut self, why: Closing) -> Result<(), Error> {
        poll_fn(|cx| self.poll_flush(cx)).await?;
        poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx)).await?;
        if why == Closing::ClientDone {
            return Ok(());
        }
        let delayed_close = self.limits.delayed_close;
        let drain = async {
            loop {
                self.read.clear();
                match poll_fn(|cx| self.poll_read(cx)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        if !delayed_close.is_zero()
            && tokio::time::timeout(delayed_close, drain).await.is_err()
            && why == Closing::AfterRefusal
            && let Some(timeouts) = self.limits.delayed_close_timeouts
        {
            timeouts.inc();
        }
        Ok(())
    }

    /// Reads more into `read`. Between requests (when `read` holds no buffer) the read goes
    /// through the stack, so that an idle connection holds no buffer.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() == 0 {
            let mut stack = [MaybeUninit::<u8>::uninit(); 4096];
            let mut buf = ReadBuf::uninit(&mut stack);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
            self.read.extend_from_slice(buf.filled());
            return Poll::Ready(Ok(buf.filled().len()));
        }
        self.poll_read_body(cx)
    }

    /// Reads more of a request body into `read`, in reads of [`ReadSize`]: never through the
    /// stack, even when the body before took all of `read`'s buffer (4 KiB reads, each copied
    /// once more, were all a fast upload got).
    fn poll_read_body(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.read_size
            .poll_read(Pin::new(&mut self.io), cx, &mut self.read)
    }

    /// Writes everything queued, then flushes the socket.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.out.poll_write(Pin::new(&mut self.io), cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }
}

/// Why the proxy closes a connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Closing {
    /// The client asked to close (`connection: close`, or HTTP/1.0 without keep-alive) and
    /// sent nothing after its request: closed at once, as Envoy closes it.
    ClientDone,
    /// A response said `connection: close` (or the connection drains).
    AfterResponse,
    /// A request was refused (a codec error).
    AfterRefusal,
}

/// The response body's framing as it is sent.
struct Sending {
    framing: Framing,
    /// Bytes still due for a `content-length` body.
    left: u64,
    done: bool,
}

impl Sending {
    fn new(framing: Framing) -> Sending {
        Sending {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            done: framing == Framing::None,
        }
    }

    fn put(&mut self, out: &mut WriteQueue, data: Bytes) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        match self.framing {
            Framing::None => {}
            Framing::Length(_) => {
                if data.len() as u64 > self.left {
                    return Err(Error::Response(
                        "response body longer than its content-length".into(),
                    ));
                }
                self.left -= data.len() as u64;
                out.put_data(data);
            }
            Framing::Chunked => {
                encode::chunk_size(out.buf_mut(), data.len());
                out.put_data(data);
                out.put(encode::CHUNK_END);
            }
        }
        Ok(())
    }

    fn end(&mut self, out: &mut WriteQueue) -> Result<(), Error> {
        self.done = true;
        match self.framing {
            Framing::Chunked => out.put(encode::LAST_CHUNK),
            Framing::Length(_) if self.left > 0 => {
                return Err(Error::Response(
                    "response body shorter than its content-length".into(),
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use http_body_util::StreamBody;
    use tokio::sync::{Notify, mpsc};

    use super::*;

    /// A client that sends one request, then neither sends nor closes; every write to it is
    /// kept as it was made.
    struct Client {
        request: &'static [u8],
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
        /// Each told of every write.
        watchers: [Arc<Notify>; 2],
    }

    impl AsyncRead for Client {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.request.is_empty() {
                return Poll::Pending;
            }
            buf.put_slice(self.request);
            self.request = b"";
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Client {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes.lock().unwrap().push(data.to_vec());
            for watcher in &self.watchers {
                watcher.notify_one();
            }
            Poll::Ready(Ok(data.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Answers the one request with the body it holds.
    struct Answer {
        body: Mutex<Option<Body>>,
    }

    impl Service for Answer {
        fn call(
            &self,
            _: Request<RequestBody>,
            _: Option<OnUpgrade>,
        ) -> impl Future<Output = Response<Body>> + Send {
            let body = self.body.lock().unwrap().take().expect("one request");
            async move { Response::new(body) }
        }

        fn codec_error(&self, error: CodecError) -> Response<Body> {
            panic!("refused: {error:?}")
        }

        fn continued(&self) {}
    }

    /// Serves one request whose response body's chunk is sent by `send` (given the channel and
    /// the client's write signal); returns each write the client saw, once the body's last
    /// chunk is among them.
    async fn writes_of<F>(send: impl FnOnce(mpsc::Sender<Bytes>, Arc<Notify>) -> F) -> Vec<Vec<u8>>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<Bytes>(1);
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            let data = rx.recv().await?;
            Some((Ok::<_, BoxError>(http_body::Frame::data(data)), rx))
        });
        let writes = Arc::new(Mutex::new(Vec::new()));
        let written = Arc::new(Notify::new());
        let sender_sees = Arc::new(Notify::new());
        let client = Client {
            request: b"GET / HTTP/1.1\r\nhost: example\r\n\r\n",
            writes: writes.clone(),
            watchers: [written.clone(), sender_sees.clone()],
        };
        let service = Answer {
            body: Mutex::new(Some(legate_upstream::body::boxed(StreamBody::new(frames)))),
        };
        let limits = Limits {
            max_header_bytes: 60 * 1024,
            max_headers: 100,
            header_timeout: None,
            delayed_close: Duration::ZERO,
            delayed_close_timeouts: None,
        };
        tokio::spawn(send(tx, sender_sees));
        let shutdown = Shutdown::default();
        let serving = serve(client, service, limits, &shutdown, BytesMut::new());
        let done = async {
            loop {
                written.notified().await;
                if writes.lock().unwrap().concat().ends_with(b"0\r\n\r\n") {
                    return;
                }
            }
        };
        tokio::select! {
            ended = serving => panic!("the connection ended first: {ended:?}"),
            () = done => {}
        }
        Arc::try_unwrap(writes).unwrap().into_inner().unwrap()
    }

    #[tokio::test]
    async fn a_body_that_follows_its_head_at_once_leaves_with_it() {
        let writes = tokio::time::timeout(
            Duration::from_secs(5),
            writes_of(|tx, _| async move {
                tx.send(Bytes::from_static(b"hello")).await.unwrap();
            }),
        )
        .await
        .expect("the response was written");
        assert_eq!(writes.len(), 1, "{writes:?}");
        let response = String::from_utf8(writes[0].clone()).unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(
            response.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            "{response}"
        );
    }

    #[tokio::test]
    async fn a_head_whose_body_is_late_is_not_held_for_it() {
        let writes = tokio::time::timeout(
            Duration::from_secs(5),
            // The body is sent only once something has been written: a head held until its
            // body came would never be.
            writes_of(|tx, written| async move {
                written.notified().await;
                tx.send(Bytes::from_static(b"hello")).await.unwrap();
            }),
        )
        .await
        .expect("the head was written before its body came");
        let head = String::from_utf8(writes[0].clone()).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        assert_eq!(writes[1..].concat(), b"5\r\nhello\r\n0\r\n\r\n");
    }
}
