//! Connection pools: one per (worker, host), so workers share no connection and take no
//! contended lock. HTTP/1.1 keeps idle keep-alive connections and hands each to one request at
//! a time; HTTP/2 multiplexes every request of the worker over one connection per host (the
//! requests that arrive while it is being opened wait for it).
//!
//! A pooled HTTP/1.1 connection (Legate's own codec, [`crate::http1`]) goes back to the pool
//! only when its response body has been read to the end (an unfinished response leaves it
//! unusable); an idle one the host closes is closed at once, so a request is not handed a
//! connection whose close has already arrived. A request that could not be written at all
//! because a reused connection had just been closed is sent again on another: this narrows
//! the keep-alive race behind Envoy's intermittent "503 UC" (Envoy issues #6190, #9747,
//! #14981) to a close that crosses a request already written, which still ends in 503 UC.
//!
//! A request that finds no idle connection waits for one as Envoy's pending request does
//! ([`pending`]), within the cluster's `max_pending_requests`. A connection's limits in time
//! (`idle_timeout`, `max_connection_duration`) are kept by a timer task of its own
//! ([`lifetime`]).

mod connect;
mod lifetime;
mod pending;

use legate_core::proxy_protocol::ProxyProtocolData;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Either, Shared};
use http::{Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2;

use crate::body::{Body, BoxError};
use crate::host::Host;
pub use crate::http1::Upgraded;
use crate::http1::{self, Outgoing, Unsent};
use crate::manager::Cluster;
use crate::tls::ConnectionName;
pub use crate::tls::UpstreamStream;
pub use connect::connect;
use connect::{connect_http1, connect_http2};
use lifetime::PoolHandle;
use pending::{Pending, Signal, Slot};

/// The protocol a request is sent upstream with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// Why a request got no response headers from upstream, or not the rest of its body. Each
/// maps to an Envoy response flag and reset reason.
#[derive(Clone, Debug)]
pub enum UpstreamError {
    /// `UF`: the TCP connection could not be made; the transport failure reason.
    ConnectFailure(String),
    /// `UF` too, after `connect_timeout`.
    ConnectTimeout,
    /// `UO`: a circuit breaker is open.
    Overflow,
    /// `UC`: the connection closed before the response headers.
    ConnectionTermination(String),
    /// `UR`: the host reset the stream.
    RemoteReset(String),
    /// `UPE`: the host's response was not valid HTTP.
    ProtocolError(String),
}

impl UpstreamError {
    /// Envoy's reset reason wording, as it appears in local reply bodies.
    pub fn reset_reason(&self) -> &'static str {
        match self {
            UpstreamError::ConnectFailure(_) | UpstreamError::ConnectTimeout => {
                "remote connection failure"
            }
            UpstreamError::Overflow => "overflow",
            UpstreamError::ConnectionTermination(_) => "connection termination",
            UpstreamError::RemoteReset(_) => "remote reset",
            UpstreamError::ProtocolError(_) => "protocol error",
        }
    }

    /// What happened, beside the reset reason.
    fn detail(&self) -> &str {
        match self {
            UpstreamError::ConnectFailure(d)
            | UpstreamError::ConnectionTermination(d)
            | UpstreamError::RemoteReset(d)
            | UpstreamError::ProtocolError(d) => d,
            UpstreamError::ConnectTimeout | UpstreamError::Overflow => "",
        }
    }

    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`.
    pub fn transport_failure_reason(&self) -> Option<&str> {
        match self {
            UpstreamError::ConnectFailure(r) => Some(r),
            UpstreamError::ConnectTimeout => Some("connect timeout"),
            _ => None,
        }
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.detail() {
            "" => f.write_str(self.reset_reason()),
            detail => write!(f, "{}: {detail}", self.reset_reason()),
        }
    }
}

impl std::error::Error for UpstreamError {}

/// One of a pool's HTTP/1.1 connections, in the pool or out of it with a request.
struct H1 {
    conn: Box<http1::Connection>,
    meta: Meta,
}

/// What the pool knows of an HTTP/1.1 connection.
struct Meta {
    /// Requests sent on it so far.
    uses: u32,
    /// Its number, by which its task finds it in the pool (see [`lifetime`]).
    id: u64,
    /// `max_connection_duration` after its opening: not used for another request then.
    retire_at: Option<Instant>,
    /// Its own address, none on a unix domain socket.
    local: Option<SocketAddr>,
}

impl Meta {
    fn retired(&self, now: Instant) -> bool {
        self.retire_at.is_some_and(|at| at <= now)
    }
}

struct Idle {
    conn: H1,
    since: Instant,
}

/// The connections of one worker to one host.
#[derive(Default)]
pub struct HostPool {
    idle: Mutex<Vec<Idle>>,
    h2: Mutex<H2>,
    /// The pools of connections made for names taken from requests (`auto_sni`,
    /// `auto_san_validation`), one per name.
    named: Mutex<HashMap<ConnectionName, Arc<HostPool>>>,
    /// Made by the first request that found no idle connection.
    signal: OnceLock<Arc<Signal>>,
}

impl HostPool {
    /// The pool for connections made for `name` (`None`: this one). Making a pool for a new
    /// name first drops the per-name pools left without connections or users (idle
    /// connections past the cluster's `idle_timeout` closed), so that requests naming ever new
    /// hosts do not grow the map.
    fn for_name(
        &self,
        name: Option<&ConnectionName>,
        idle_timeout: Option<Duration>,
    ) -> PoolRef<'_> {
        let Some(name) = name else {
            return PoolRef::Own(self);
        };
        let mut named = lock(&self.named);
        if let Some(pool) = named.get(name) {
            return PoolRef::Named(pool.clone());
        }
        named.retain(|_, p| Arc::strong_count(p) > 1 || !p.is_unused(idle_timeout));
        let pool = Arc::new(HostPool::default());
        named.insert(name.clone(), pool.clone());
        PoolRef::Named(pool)
    }

    fn is_unused(&self, idle_timeout: Option<Duration>) -> bool {
        let mut idle = lock(&self.idle);
        idle.retain(|i| idle_timeout.is_none_or(|t| i.since.elapsed() < t));
        idle.is_empty()
            && match &*lock(&self.h2) {
                H2::None => true,
                H2::Opening(_) => false,
                H2::Open(open) => open.sender.is_closed(),
            }
    }

    fn signal(&self) -> &Arc<Signal> {
        self.signal.get_or_init(Arc::default)
    }

    /// Takes the most recently used idle connection that is still open, within the cluster's
    /// `idle_timeout` and not retired (the others are dropped, which closes them; one past
    /// its idle timeout whose timer has not fired yet counts as timed out). The host's close
    /// of one is normally seen at once (see [`HostPool::recheck_idle`]); this looks again.
    fn checkout(&self, cluster: &Cluster) -> Option<H1> {
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        while let Some(entry) = idle.pop() {
            let timed_out = cluster
                .config
                .idle_timeout
                .is_some_and(|t| now.duration_since(entry.since) >= t);
            if timed_out {
                cluster.stats.traffic.upstream_cx_idle_timeout().inc();
            }
            let mut conn = entry.conn;
            if timed_out
                || conn.meta.retired(now)
                || !conn.conn.usable(Some(std::task::Waker::noop()))
            {
                continue; // dropping it closes it
            }
            return Some(conn);
        }
        None
    }

    /// Puts a connection whose response has ended back (unless it is retired: then it is
    /// dropped, which closes it), waking a request waiting for one.
    fn check_in(&self, mut conn: H1) {
        let now = Instant::now();
        if conn.meta.retired(now) {
            return;
        }
        // Watched under the lock: a close seen by the watch task at once finds it in the pool.
        let mut idle = lock(&self.idle);
        if !conn.conn.usable(None) {
            drop(idle);
            return;
        }
        idle.push(Idle { conn, since: now });
        drop(idle);
        if let Some(signal) = self.signal.get() {
            signal.wake();
        }
    }

    /// Idle connection `id` may have been closed by its host (its watch was woken): closes it
    /// if so, else watches it again.
    fn recheck_idle(&self, id: u64) {
        let mut idle = lock(&self.idle);
        let Some(at) = idle.iter().position(|i| i.conn.meta.id == id) else {
            return;
        };
        if !idle[at].conn.conn.usable(None) {
            let closed = idle.remove(at);
            drop(idle);
            drop(closed);
        }
    }

    /// Since when connection `id` is idle: in the pool (HTTP/1.1), or open without a stream
    /// (HTTP/2). `None`: it is busy, or not in the pool.
    fn idle_since(&self, id: u64) -> Option<Instant> {
        let idle = lock(&self.idle)
            .iter()
            .find(|i| i.conn.meta.id == id)
            .map(|i| i.since);
        idle.or_else(|| match &*lock(&self.h2) {
            H2::Open(open) if open.streams.id == id => open.streams.idle_since(),
            _ => None,
        })
    }

    /// Whether connection `id` is in the pool: idle (HTTP/1.1), or its HTTP/2 connection.
    fn holds(&self, id: u64) -> bool {
        lock(&self.idle).iter().any(|i| i.conn.meta.id == id)
            || matches!(&*lock(&self.h2), H2::Open(open) if open.streams.id == id)
    }

    /// Closes connection `id` if it is idle (see [`HostPool::idle_since`]).
    fn close_idle(&self, id: u64) -> bool {
        let mut idle = lock(&self.idle);
        let before = idle.len();
        idle.retain(|i| i.conn.meta.id != id);
        if before != idle.len() {
            return true;
        }
        drop(idle);
        let mut h2 = lock(&self.h2);
        let unused = matches!(&*h2, H2::Open(open) if open.streams.id == id && open.streams.idle_since().is_some());
        if unused {
            // Dropping the pool's sender closes the connection: no stream holds another.
            *h2 = H2::None;
        }
        unused
    }

    /// Connection `id` has reached `max_connection_duration`: closed if idle, and no longer
    /// handed to new requests (an HTTP/1.1 one is not checked back in, see [`H1::retired`]; an
    /// HTTP/2 one leaves the pool and closes when its streams end).
    fn retire(&self, id: u64) {
        self.close_idle(id);
        let mut h2 = lock(&self.h2);
        if matches!(&*h2, H2::Open(open) if open.streams.id == id) {
            *h2 = H2::None;
        }
    }
}

/// A pool's HTTP/2 connection: none, being opened (the requests arriving meanwhile wait for
/// it, as Envoy's pending requests on a connecting client), or open.
#[derive(Default)]
enum H2 {
    #[default]
    None,
    Opening(Opening),
    Open(H2Open),
}

/// An open HTTP/2 connection of a pool.
#[derive(Clone)]
struct H2Open {
    sender: http2::SendRequest<Body>,
    streams: Arc<Streams>,
}

impl H2Open {
    /// The sender for one more stream, counted until the guard is dropped.
    fn stream(&self) -> (http2::SendRequest<Body>, StreamGuard) {
        self.streams.open.fetch_add(1, Ordering::Relaxed);
        (self.sender.clone(), StreamGuard(self.streams.clone()))
    }
}

/// The streams of an HTTP/2 connection: how many are open, and since when none is (its
/// `idle_timeout` runs then, as Envoy's does).
#[derive(Debug)]
struct Streams {
    /// The connection's number (see [`lifetime`]).
    id: u64,
    opened: Instant,
    open: AtomicU32,
    /// Milliseconds after `opened` when the last stream ended.
    idle_since_ms: AtomicU64,
    /// The connection's own address, none on a unix domain socket.
    local: Option<SocketAddr>,
}

impl Streams {
    fn new(id: u64, local: Option<SocketAddr>) -> Self {
        Streams {
            id,
            opened: Instant::now(),
            open: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(0),
            local,
        }
    }

    /// Since when the connection has had no stream (`None`: it has one).
    fn idle_since(&self) -> Option<Instant> {
        (self.open.load(Ordering::Relaxed) == 0).then(|| {
            self.opened + Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed))
        })
    }
}

/// A stream of an HTTP/2 connection, counted for as long as it lives (a response body holds
/// it until it is read or dropped).
struct StreamGuard(Arc<Streams>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let streams = &self.0;
        streams.idle_since_ms.store(
            streams.opened.elapsed().as_millis() as u64,
            Ordering::Relaxed,
        );
        streams.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The opening of an HTTP/2 connection, awaited by every request waiting for it (any of them
/// drives it).
type Opening = Shared<BoxFuture<'static, Result<H2Open, UpstreamError>>>;

/// A host's pool, or one of its per-name pools.
enum PoolRef<'a> {
    Own(&'a HostPool),
    Named(Arc<HostPool>),
}

impl PoolRef<'_> {
    /// How the task of a connection of this pool (worker `worker`'s of `host`, or a per-name
    /// one) finds it.
    fn handle(&self, host: &Arc<Host>, worker: usize) -> PoolHandle {
        match self {
            PoolRef::Own(_) => PoolHandle::Own(Arc::downgrade(host), worker),
            PoolRef::Named(pool) => PoolHandle::Named(Arc::downgrade(pool)),
        }
    }
}

impl std::ops::Deref for PoolRef<'_> {
    type Target = HostPool;

    fn deref(&self) -> &HostPool {
        match self {
            PoolRef::Own(p) => p,
            PoolRef::Named(p) => p,
        }
    }
}

impl std::fmt::Debug for HostPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostPool")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sends `req` to `host` over worker `worker`'s pool. `req`'s URI must be origin-form for
/// HTTP/1.1 and absolute for HTTP/2 (the `:scheme` and `:authority`).
///
/// `downstream`: the downstream connection's PROXY protocol state (addresses and TLVs), for
/// clusters whose connections start with a PROXY header naming them
/// (`upstream_proxy_protocol`).
pub fn send<'a>(
    cluster: &'a Arc<Cluster>,
    host: &'a Arc<Host>,
    worker: usize,
    protocol: Protocol,
    req: Request<Body>,
    downstream: Option<Box<ProxyProtocolData>>,
) -> impl Future<Output = Result<Response<ResponseBody>, UpstreamError>> + 'a {
    // The connection's name is worked out before the future: `downstream` is not kept in it.
    let name = match cluster.config.tls.as_ref().map(|t| t.name_for(&req)) {
        None | Some(Ok(None)) => Ok(None),
        Some(Ok(Some(name))) => Ok(Some(name)),
        // What Envoy's check of the certificate against an unusable host ends in.
        Some(Err(())) => Err(UpstreamError::ConnectFailure(
            legate_core::tls::failure_reason(&rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            )),
        )),
    }
    .map(|name| match downstream {
        Some(downstream) if cluster.config.proxy_protocol.is_some() => {
            for_downstream(name, downstream)
        }
        _ => name,
    });
    // The protocol's own future, not one awaiting it: an async block around it would hold a
    // second copy of the request and move the whole future into its own state.
    match (protocol, name) {
        (_, Err(e)) => Either::Left(std::future::ready(Err(e))),
        (Protocol::Http1, Ok(name)) => {
            Either::Right(Either::Left(send_http1(cluster, host, worker, req, name)))
        }
        // Boxed: HTTP/2's future is twice HTTP/1.1's, which every request would carry.
        (Protocol::Http2, Ok(name)) => Either::Right(Either::Right(Box::pin(send_http2(
            cluster, host, worker, req, name,
        )))),
    }
}

/// The name of a connection to an `upstream_proxy_protocol` cluster: for one downstream
/// connection only. (Out of line: most clusters have no PROXY header.)
#[cold]
#[inline(never)]
fn for_downstream(
    name: Option<ConnectionName>,
    downstream: Box<ProxyProtocolData>,
) -> Option<ConnectionName> {
    let mut name = name.unwrap_or_default();
    name.proxy = Some(downstream);
    Some(name)
}

async fn send_http1(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    worker: usize,
    req: Request<Body>,
    name: Option<ConnectionName>,
) -> Result<Response<ResponseBody>, UpstreamError> {
    let pool = cluster
        .pool(worker, host)
        .for_name(name.as_ref(), cluster.config.idle_timeout);
    let mut request = Outgoing::new(req);
    let mut attached = false;
    loop {
        let (H1 { conn, mut meta }, reused) = match pool.checkout(cluster) {
            Some(conn) => (conn, true),
            None => {
                // The cold path (it may open a connection) is boxed, in a statement of its own:
                // inline, or as a temporary of the awaiting statement (rust-lang/rust#69663),
                // it would make every request's future as large as a TLS handshake's.
                let handle = pool.handle(host, worker);
                let waiting = Box::pin(wait_for_http1(cluster, host, &pool, handle, name.as_ref()));
                waiting.await?
            }
        };
        if !attached {
            attached = true;
            count_attached(cluster, host);
        }
        let (response, exchange) = match conn.exchange(request).response().await {
            Ok(sent) => sent,
            // Not written at all: the reused connection had just closed. Try another.
            Err((_, Some(Unsent(unsent)))) if reused => {
                request = unsent;
                continue;
            }
            Err((e, _)) => return Err(http1_error(e)),
        };
        meta.uses += 1;
        let local = meta.local;
        let reusable = cluster
            .config
            .max_requests_per_connection
            .is_none_or(|max| meta.uses < max);
        if !reusable {
            // Closed once this response is read.
            cluster.stats.traffic.upstream_cx_max_requests().inc();
        }
        let release = reusable.then(|| Release {
            meta,
            cluster: cluster.clone(),
            host: host.clone(),
            worker,
            named: match &pool {
                PoolRef::Own(_) => None,
                PoolRef::Named(p) => Some(p.clone()),
            },
        });
        let mut body = ResponseBody {
            inner: Inner::H1 {
                exchange: Some(exchange),
                release,
            },
            local,
        };
        if response.status() != http::StatusCode::SWITCHING_PROTOCOLS && body.is_end_stream() {
            // No body (HEAD, 204, 304, `content-length: 0`): the connection is free now.
            body.finish();
        }
        return Ok(response.map(|()| body));
    }
}

/// Sorts an HTTP/1.1 exchange's failure into Envoy's reset reasons.
fn http1_error(e: http1::Error) -> UpstreamError {
    match e {
        http1::Error::Protocol(details) => UpstreamError::ProtocolError(details.into()),
        e => UpstreamError::ConnectionTermination(e.to_string()),
    }
}

/// A request's stream is on a connection: Envoy counts it then (a request that never got a
/// connection is not in `upstream_rq_total`).
fn count_attached(cluster: &Cluster, host: &Host) {
    cluster.stats.traffic.upstream_rq_total().inc();
    host.rq_total.fetch_add(1, Ordering::Relaxed);
}

/// No idle connection: the request is pending until it has one — an idle connection that
/// came back (reused: `true`), or a new one (see [`pending`]) in the pool `handle` finds.
async fn wait_for_http1(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    pool: &HostPool,
    handle: PoolHandle,
    name: Option<&ConnectionName>,
) -> Result<(H1, bool), UpstreamError> {
    enum Found {
        Idle(H1),
        Slot(Slot),
    }
    let pending = Pending::new(cluster, host)?;
    let signal = pool.signal();
    let found = signal
        .wait_for(|| {
            if let Some(conn) = pool.checkout(cluster) {
                return Some(Found::Idle(conn));
            }
            if let Some(slot) = Slot::for_http1(cluster, signal) {
                return Some(Found::Slot(slot));
            }
            // Envoy counts each time it could not open a connection for waiting requests.
            cluster.stats.traffic.upstream_cx_overflow().inc();
            None
        })
        .await;
    match found {
        Found::Idle(conn) => {
            pending.attached();
            signal.wake();
            Ok((conn, true))
        }
        Found::Slot(slot) => match connect_http1(cluster, host, name, slot, handle).await {
            Ok(conn) => {
                pending.attached();
                Ok((conn, false))
            }
            Err(e) => {
                pending.failed();
                Err(e)
            }
        },
    }
}

async fn send_http2(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    worker: usize,
    req: Request<Body>,
    name: Option<ConnectionName>,
) -> Result<Response<ResponseBody>, UpstreamError> {
    let pool = cluster
        .pool(worker, host)
        .for_name(name.as_ref(), cluster.config.idle_timeout);
    let open = match &*lock(&pool.h2) {
        H2::Open(open) if !open.sender.is_closed() => Some(open.stream()),
        _ => None,
    };
    let (mut sender, stream) = match open {
        Some(open) => open,
        None => {
            // Boxed as for HTTP/1.1 (see `send_http1`).
            let handle = pool.handle(host, worker);
            let waiting = Box::pin(wait_for_http2(cluster, host, &pool, handle, name));
            waiting.await?
        }
    };
    sender.ready().await.map_err(|e| classify(&e))?;
    count_attached(cluster, host);
    let response = sender.send_request(req).await.map_err(|e| classify(&e))?;
    let local = stream.0.local;
    Ok(response.map(|body| ResponseBody {
        inner: Inner::H2 {
            body,
            stream: Some(stream),
        },
        local,
    }))
}

/// No open HTTP/2 connection: the request is pending until the pool's connection, opened by
/// the first request that found none, is open — or fails, failing every request waiting for it
/// (Envoy's `upstream_rq_pending_failure_eject`).
async fn wait_for_http2(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    pool: &HostPool,
    handle: PoolHandle,
    name: Option<ConnectionName>,
) -> Result<(http2::SendRequest<Body>, StreamGuard), UpstreamError> {
    let pending = Pending::new(cluster, host)?;
    let opening = {
        let mut h2 = lock(&pool.h2);
        match &*h2 {
            H2::Open(open) if !open.sender.is_closed() => {
                let stream = open.stream();
                drop(h2);
                pending.attached();
                return Ok(stream);
            }
            H2::Opening(opening) => opening.clone(),
            _ => {
                let (cluster, host) = (cluster.clone(), host.clone());
                let opening = async move {
                    let slot = Slot::for_http2(&cluster);
                    let (sender, id, local) =
                        connect_http2(&cluster, &host, name.as_ref(), slot, handle).await?;
                    Ok(H2Open {
                        sender,
                        streams: Arc::new(Streams::new(id, local)),
                    })
                }
                .boxed()
                .shared();
                *h2 = H2::Opening(opening.clone());
                opening
            }
        }
    };
    let result = opening.clone().await;
    {
        // The first of its waiters to see the outcome records it (unless the pool has moved
        // on to another connection meanwhile).
        let mut h2 = lock(&pool.h2);
        if matches!(&*h2, H2::Opening(o) if o.ptr_eq(&opening)) {
            *h2 = match &result {
                Ok(open) => H2::Open(open.clone()),
                Err(_) => H2::None,
            };
        }
    }
    match result {
        Ok(open) => {
            pending.attached();
            Ok(open.stream())
        }
        Err(e) => {
            pending.failed();
            Err(e)
        }
    }
}

/// Sorts a hyper client error into Envoy's reset reasons.
pub fn classify(e: &hyper::Error) -> UpstreamError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2e) = s.downcast_ref::<h2::Error>()
            && h2e.is_remote()
        {
            return UpstreamError::RemoteReset(h2e.to_string());
        }
        source = s.source();
    }
    if e.is_parse() || e.is_parse_status() {
        UpstreamError::ProtocolError(e.to_string())
    } else {
        UpstreamError::ConnectionTermination(e.to_string())
    }
}

/// A pooled HTTP/1.1 connection waiting for its response body to end.
struct Release {
    meta: Meta,
    cluster: Arc<Cluster>,
    host: Arc<Host>,
    worker: usize,
    /// The per-name pool it came from, held so that the pool (which its watch task finds
    /// by a weak reference) outlives the response.
    named: Option<Arc<HostPool>>,
}

/// An upstream response body. Reading it to the end returns its HTTP/1.1 connection to the
/// pool, or ends its HTTP/2 stream's count.
pub struct ResponseBody {
    inner: Inner,
    /// The address of the connection it came on (`%UPSTREAM_LOCAL_ADDRESS%`).
    local: Option<SocketAddr>,
}

// The HTTP/1.1 variant is the common one (and the body is boxed on its way downstream).
#[allow(clippy::large_enum_variant)]
enum Inner {
    H1 {
        /// `None` once the response has ended (or failed).
        exchange: Option<http1::Exchange>,
        /// Where the connection goes back to (`None`: it is not reused).
        release: Option<Release>,
    },
    H2 {
        body: Incoming,
        /// The stream, counted open until the body ends or is dropped.
        stream: Option<StreamGuard>,
    },
}

impl ResponseBody {
    /// The upstream connection's own address, none on a unix domain socket.
    pub fn local_address(&self) -> Option<SocketAddr> {
        self.local
    }

    /// The response has ended: an HTTP/1.1 connection goes back to its pool if it can carry
    /// another request, an HTTP/2 stream stops counting.
    fn finish(&mut self) {
        match &mut self.inner {
            Inner::H1 { exchange, release } => {
                let conn = exchange.take().and_then(http1::Exchange::finish);
                if let (Some(conn), Some(r)) = (conn, release.take()) {
                    let conn = H1 { conn, meta: r.meta };
                    match &r.named {
                        Some(pool) => pool.check_in(conn),
                        None => r.cluster.pool(r.worker, &r.host).check_in(conn),
                    }
                }
            }
            Inner::H2 { stream, .. } => *stream = None,
        }
    }

    /// The connection of a `101 Switching Protocols` response (HTTP/1.1 only).
    pub fn upgrade(&mut self) -> Option<Upgraded> {
        match &mut self.inner {
            Inner::H1 { exchange, .. } => exchange.take().map(http1::Exchange::upgrade),
            Inner::H2 { .. } => None,
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // A body nobody read whose end has come (one with no bytes): its connection is free.
        if let Inner::H1 {
            exchange: Some(exchange),
            ..
        } = &self.inner
            && exchange.is_end_stream()
        {
            self.finish();
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.inner {
            Inner::H1 { exchange, .. } => {
                let Some(ex) = exchange.as_mut() else {
                    return Poll::Ready(None);
                };
                match ex.poll_data(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(None) => {
                        self.finish();
                        Poll::Ready(None)
                    }
                    Poll::Ready(Some(Ok(data))) => {
                        if ex.is_end_stream() {
                            self.finish();
                        }
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    Poll::Ready(Some(Err(e))) => {
                        *exchange = None;
                        Poll::Ready(Some(Err(http1_error(e).into())))
                    }
                }
            }
            Inner::H2 { body, stream } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => *stream = None,
                    Poll::Ready(Some(Err(_))) => *stream = None,
                    _ if body.is_end_stream() => *stream = None,
                    _ => {}
                }
                polled.map(|frame| frame.map(|r| r.map_err(|e| classify(&e).into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::H1 { exchange, .. } => exchange.as_ref().is_none_or(|e| e.is_end_stream()),
            Inner::H2 { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::H1 { exchange, .. } => exchange
                .as_ref()
                .map_or_else(|| SizeHint::with_exact(0), |e| e.size_hint()),
            Inner::H2 { body, .. } => body.size_hint(),
        }
    }
}
