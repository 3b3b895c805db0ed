//! Connection pools: one per (worker, host), so workers share no connection and take no
//! contended lock. HTTP/1.1 keeps idle keep-alive connections and hands each to one request at
//! a time; HTTP/2 multiplexes every request of the worker over one connection per host.
//!
//! A pooled HTTP/1.1 connection goes back to the pool only when its response body has been
//! read to the end (an unfinished response leaves it unusable). A request that could not be
//! written at all because a reused keep-alive connection had just been closed by the host is
//! sent again on a fresh connection: this is the keep-alive race behind Envoy's intermittent
//! "503 UC" (Envoy issues #6190, #9747, #14981); Legate does not surface it.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use legate_core::io::counting::CountingIo;
use tokio::net::TcpStream;

use crate::body::Body;
use crate::breaker::{Limit, ResourceGuard};
use crate::host::Host;
use crate::manager::Cluster;
use crate::tls::ConnectionName;
pub use crate::tls::UpstreamStream;

/// The protocol a request is sent upstream with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// Why a request got no response headers from upstream. Each maps to an Envoy response flag
/// and reset reason.
#[derive(Debug)]
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

    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`.
    pub fn transport_failure_reason(&self) -> Option<&str> {
        match self {
            UpstreamError::ConnectFailure(r) => Some(r),
            UpstreamError::ConnectTimeout => Some("connect timeout"),
            _ => None,
        }
    }
}

struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
    uses: u32,
}

/// The connections of one worker to one host.
#[derive(Default)]
pub struct HostPool {
    idle: Mutex<Vec<Idle>>,
    h2: Mutex<Option<http2::SendRequest<Body>>>,
    /// The pools of connections made for names taken from requests (`auto_sni`,
    /// `auto_san_validation`), one per name.
    named: Mutex<HashMap<ConnectionName, Arc<HostPool>>>,
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
        idle.retain(|i| {
            !i.sender.is_closed() && idle_timeout.is_none_or(|t| i.since.elapsed() < t)
        });
        idle.is_empty() && lock(&self.h2).as_ref().is_none_or(|s| s.is_closed())
    }
}

/// A host's pool, or one of its per-name pools.
enum PoolRef<'a> {
    Own(&'a HostPool),
    Named(Arc<HostPool>),
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
pub async fn send(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    worker: usize,
    protocol: Protocol,
    req: Request<Body>,
) -> Result<Response<ResponseBody>, UpstreamError> {
    let name = match cluster.config.tls.as_ref().map(|t| t.name_for(&req)) {
        None | Some(Ok(None)) => None,
        Some(Ok(Some(name))) => Some(name),
        // What Envoy's check of the certificate against an unusable host ends in.
        Some(Err(())) => {
            return Err(UpstreamError::ConnectFailure(
                legate_core::tls::failure_reason(&rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName,
                )),
            ));
        }
    };
    match protocol {
        Protocol::Http1 => send_http1(cluster, host, worker, req, name).await,
        Protocol::Http2 => send_http2(cluster, host, worker, req, name).await,
    }
}

async fn send_http1(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    worker: usize,
    mut req: Request<Body>,
    name: Option<ConnectionName>,
) -> Result<Response<ResponseBody>, UpstreamError> {
    let pool = cluster
        .pool(worker, host)
        .for_name(name.as_ref(), cluster.config.idle_timeout);
    loop {
        let (mut sender, uses, reused) = match checkout(&pool, cluster.config.idle_timeout) {
            Some((sender, uses)) => (sender, uses, true),
            None => {
                // Envoy counts a request that waits for a new connection as pending.
                cluster.stats.traffic.upstream_rq_pending_total().inc();
                (connect_http1(cluster, host, name.as_ref()).await?, 0, false)
            }
        };
        if sender.ready().await.is_err() {
            if reused {
                continue;
            }
            return Err(UpstreamError::ConnectionTermination(
                "connection closed before the request was sent".into(),
            ));
        }
        match sender.try_send_request(req).await {
            Ok(response) => {
                let uses = uses + 1;
                let reusable = cluster
                    .config
                    .max_requests_per_connection
                    .is_none_or(|max| uses < max);
                let release = reusable.then(|| Release {
                    sender,
                    uses,
                    cluster: cluster.clone(),
                    host: host.clone(),
                    worker,
                    name: name.clone(),
                });
                return Ok(response.map(|inner| ResponseBody { inner, release }));
            }
            Err(mut e) => match e.take_message() {
                // Not written at all: the reused connection had just closed. Try a fresh one.
                Some(unsent) if reused => req = unsent,
                _ => return Err(classify(&e.into_error())),
            },
        }
    }
}

fn checkout(
    pool: &HostPool,
    idle_timeout: Option<Duration>,
) -> Option<(http1::SendRequest<Body>, u32)> {
    let mut idle = lock(&pool.idle);
    while let Some(entry) = idle.pop() {
        let expired = idle_timeout.is_some_and(|t| entry.since.elapsed() >= t);
        if entry.sender.is_closed() || expired {
            continue; // dropping the sender closes the connection
        }
        return Some((entry.sender, entry.uses));
    }
    None
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
    let existing = lock(&pool.h2).as_ref().filter(|s| !s.is_closed()).cloned();
    let mut sender = match existing {
        Some(s) => s,
        None => {
            cluster.stats.traffic.upstream_rq_pending_total().inc();
            let s = connect_http2(cluster, host, name.as_ref()).await?;
            *lock(&pool.h2) = Some(s.clone());
            s
        }
    };
    sender.ready().await.map_err(|e| classify(&e))?;
    let response = sender.send_request(req).await.map_err(|e| classify(&e))?;
    Ok(response.map(|inner| ResponseBody {
        inner,
        release: None,
    }))
}

/// Opens a connection within the cluster's connection limit and `connect_timeout`, counting
/// `upstream_cx_*`: TCP, then the TLS handshake if the cluster has a TLS transport socket
/// (`protocol` picks what ALPN offers: `None` for raw TCP). As in Envoy, `connect_timeout`
/// covers both, and a failed handshake is a connect failure (`UF`) whose transport failure
/// reason is the TLS error. The caller accounts for the connection's end
/// (`upstream_cx_active`, `upstream_cx_destroy`, the host's `active_connections`); tcp_proxy
/// uses it directly.
pub async fn connect(
    cluster: &Cluster,
    host: &Host,
    protocol: Option<Protocol>,
) -> Result<(UpstreamStream, ResourceGuard), UpstreamError> {
    connect_named(cluster, host, protocol, None).await
}

/// [`connect`], made for `name` (`auto_sni`, `auto_san_validation`).
async fn connect_named(
    cluster: &Cluster,
    host: &Host,
    protocol: Option<Protocol>,
    name: Option<&ConnectionName>,
) -> Result<(UpstreamStream, ResourceGuard), UpstreamError> {
    let stats = &cluster.stats;
    let Some(guard) = cluster.breakers.try_acquire(Limit::Connections) else {
        cluster.stats.traffic.upstream_cx_overflow().inc();
        return Err(UpstreamError::Overflow);
    };
    stats.traffic.upstream_cx_total().inc();
    host.cx_total
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let result = tokio::time::timeout(cluster.config.connect_timeout, async {
        if let Some(path) = &host.pipe {
            // A unix domain socket host (plain only: a static cluster with TLS and a pipe
            // endpoint is refused; one from EDS fails here).
            if cluster.config.tls.is_some() {
                return Err("TLS to a unix domain socket is not supported".to_owned());
            }
            let unix = connect_unix(path)
                .await
                .map_err(|e| format!("delayed connect error: {}", os_reason(&e)))?;
            return Ok(UpstreamStream::Unix(unix));
        }
        let tcp = TcpStream::connect(host.address)
            .await
            .map_err(|e| format!("delayed connect error: {}", os_reason(&e)))?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &cluster.config.tls else {
            return Ok(UpstreamStream::Plain(tcp));
        };
        match tls.connect(tcp, protocol, name).await {
            Ok(s) => {
                if let Some(ssl) = &cluster.ssl {
                    ssl.handshake_done(s.get_ref().1);
                }
                Ok(UpstreamStream::Tls(Box::new(s)))
            }
            Err(e) => {
                if let Some(ssl) = &cluster.ssl {
                    ssl.handshake_failed(&e);
                }
                Err(match legate_core::tls::tls_error(&e) {
                    Some(t) => legate_core::tls::failure_reason(t),
                    None => format!("TLS_error:|{}:TLS_error_end", os_reason(&e)),
                })
            }
        }
    })
    .await;
    let failed = |host: &Host| {
        stats.traffic.upstream_cx_connect_fail().inc();
        host.cx_connect_fail
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    };
    match result {
        Err(_) => {
            failed(host);
            stats.traffic.upstream_cx_connect_timeout().inc();
            Err(UpstreamError::ConnectTimeout)
        }
        Ok(Err(reason)) => {
            failed(host);
            Err(UpstreamError::ConnectFailure(reason))
        }
        Ok(Ok(stream)) => {
            stats
                .upstream_cx_connect_ms
                .record(started.elapsed().as_millis() as u64);
            stats.traffic.upstream_cx_active().inc();
            host.active_connections
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok((stream, guard))
        }
    }
}

/// Connects to a unix domain socket: a path, or ('@' first) a name in the abstract namespace.
async fn connect_unix(path: &str) -> std::io::Result<tokio::net::UnixStream> {
    let pipe = legate_core::address::Pipe {
        path: path.to_owned(),
        mode: 0,
    };
    let addr = pipe.socket_addr()?;
    // Tokio connects by path only: an abstract name is connected on a blocking-free std
    // socket (a local connect completes at once or fails) and handed over.
    let std = std::os::unix::net::UnixStream::connect_addr(&addr)?;
    std.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(std)
}

/// An I/O error as the OS names it, without Rust's "(os error N)" suffix.
fn os_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// Runs a connection to its end, then accounts for it. The task holds the stats it updates
/// and only a weak reference to the host: the host's pool holds the connection's sender, so a
/// strong one would keep both alive forever once the cluster is replaced or the host removed
/// (dropping the pool is what closes its idle connections).
fn drive<F>(cluster: &Arc<Cluster>, host: &Arc<Host>, guard: ResourceGuard, conn: F)
where
    F: std::future::Future + Send + 'static,
{
    let active = cluster.stats.traffic.upstream_cx_active();
    let destroy = cluster.stats.traffic.upstream_cx_destroy();
    let length = cluster.stats.upstream_cx_length_ms;
    let host = Arc::downgrade(host);
    let opened = Instant::now();
    tokio::spawn(async move {
        let _ = conn.await;
        drop(guard);
        active.dec();
        destroy.inc();
        length.record(opened.elapsed().as_millis() as u64);
        if let Some(host) = host.upgrade() {
            host.active_connections
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
}

async fn connect_http1(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    name: Option<&ConnectionName>,
) -> Result<http1::SendRequest<Body>, UpstreamError> {
    let (stream, guard) = connect_named(cluster, host, Some(Protocol::Http1), name).await?;
    let (sender, conn) = http1::Builder::new()
        .max_headers(cluster.config.max_headers_count as usize)
        .handshake(TokioIo::new(counted(cluster, stream)))
        .await
        .map_err(|e| UpstreamError::ConnectionTermination(e.to_string()))?;
    cluster.stats.traffic.upstream_cx_http1_total().inc();
    drive(cluster, host, guard, conn.with_upgrades());
    Ok(sender)
}

async fn connect_http2(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    name: Option<&ConnectionName>,
) -> Result<http2::SendRequest<Body>, UpstreamError> {
    let (stream, guard) = connect_named(cluster, host, Some(Protocol::Http2), name).await?;
    let o = &cluster.config.http2;
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(o.initial_stream_window_size)
        .initial_connection_window_size(o.initial_connection_window_size)
        .header_table_size(o.hpack_table_size)
        .handshake(TokioIo::new(counted(cluster, stream)))
        .await
        .map_err(|e| UpstreamError::ConnectionTermination(e.to_string()))?;
    cluster.stats.traffic.upstream_cx_http2_total().inc();
    drive(cluster, host, guard, conn);
    Ok(sender)
}

/// An HTTP connection's stream, counting the cluster's `upstream_cx_{rx,tx}_bytes_total`.
fn counted(cluster: &Cluster, stream: UpstreamStream) -> CountingIo<UpstreamStream> {
    let t = cluster.stats.traffic;
    CountingIo::new(
        stream,
        t.upstream_cx_rx_bytes_total(),
        t.upstream_cx_tx_bytes_total(),
    )
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
    sender: http1::SendRequest<Body>,
    uses: u32,
    cluster: Arc<Cluster>,
    host: Arc<Host>,
    worker: usize,
    name: Option<ConnectionName>,
}

/// An upstream response body. Reading it to the end returns its HTTP/1.1 connection to the
/// pool.
pub struct ResponseBody {
    inner: Incoming,
    release: Option<Release>,
}

impl ResponseBody {
    fn finish(&mut self) {
        if let Some(r) = self.release.take() {
            let pool = r
                .cluster
                .pool(r.worker, &r.host)
                .for_name(r.name.as_ref(), r.cluster.config.idle_timeout);
            lock(&pool.idle).push(Idle {
                sender: r.sender,
                since: Instant::now(),
                uses: r.uses,
            });
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Err(_))) => self.release = None,
            _ => {
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
