//! Opening upstream connections: TCP or a unix domain socket, then TLS when the cluster has a
//! transport socket, within `connect_timeout`, counting `upstream_cx_*`; and accounting for an
//! HTTP connection's end, counting which side closed it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use legate_core::io::Transport;
use legate_core::io::counting::CountingIo;
use legate_core::proxy_protocol::ProxyProtocolData;
use tokio::net::TcpStream;

use super::lifetime::{IdleWatch, Lifetime, PoolHandle, next_id};
use super::pending::{Pending, Slot};
use super::{H1, Meta, Protocol, UpstreamError};
use crate::body::Body;
use crate::breaker::{Limit, ResourceGuard};
use crate::host::Host;
use crate::manager::Cluster;
use crate::tls::{ConnectionName, UpstreamStream};

/// Opens tcp_proxy's upstream connection: within the cluster's connection limit (over it: fails
/// with `Overflow`, counting `upstream_cx_overflow`, as Envoy's tcp_proxy checks before asking
/// its pool), pending while it connects (within `max_pending_requests`, as in Envoy's TCP
/// pool). The caller accounts for the connection's end (`upstream_cx_active`,
/// `upstream_cx_destroy`, the host's `active_connections`).
///
/// `downstream`: the downstream connection's PROXY protocol state (its addresses and TLVs),
/// which a PROXY header (`upstream_proxy_protocol`) names.
pub async fn connect(
    cluster: &Cluster,
    host: &Host,
    protocol: Option<Protocol>,
    downstream: Option<&ProxyProtocolData>,
) -> Result<(UpstreamStream, ResourceGuard), UpstreamError> {
    let Some(guard) = cluster.breakers.try_acquire(Limit::Connections) else {
        cluster.stats.traffic.upstream_cx_overflow().inc();
        return Err(UpstreamError::Overflow);
    };
    let pending = Pending::new(cluster, host)?;
    match open(cluster, host, protocol, None, downstream).await {
        Ok(stream) => {
            pending.attached();
            Ok((stream, guard))
        }
        Err(e) => {
            pending.failed();
            Err(e)
        }
    }
}

/// Opens a connection (a slot within the connection limit already taken) for `name`
/// (`auto_sni`, `auto_san_validation`): TCP, then the TLS handshake if the cluster has a TLS
/// transport socket (`protocol` picks what ALPN offers: `None` for raw TCP). As in Envoy,
/// `connect_timeout` covers both, and a failed handshake is a connect failure (`UF`) whose
/// transport failure reason is the TLS error. With `upstream_proxy_protocol`, the PROXY header
/// goes first, naming `downstream` or else the connection's own addresses. Counts `upstream_cx_total`, `_connect_fail`,
/// `_connect_timeout`, `_connect_ms` and, once open, `upstream_cx_active`.
async fn open(
    cluster: &Cluster,
    host: &Host,
    protocol: Option<Protocol>,
    name: Option<&ConnectionName>,
    downstream: Option<&ProxyProtocolData>,
) -> Result<UpstreamStream, UpstreamError> {
    let stats = &cluster.stats;
    stats.traffic.upstream_cx_total().inc();
    host.cx_total
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let result = tokio::time::timeout(cluster.config.connect_timeout, async {
        let socket = match &host.pipe {
            Some(path) => Transport::Unix(
                connect_unix(path)
                    .await
                    .map_err(|e| format!("delayed connect error: {}", os_reason(&e)))?,
            ),
            None => {
                let tcp = TcpStream::connect(host.address)
                    .await
                    .map_err(|e| format!("delayed connect error: {}", os_reason(&e)))?;
                let _ = tcp.set_nodelay(true);
                Transport::Tcp(tcp)
            }
        };
        if let Some(proxy) = &cluster.config.proxy_protocol {
            write_proxy_header(&socket, proxy, downstream)
                .await
                .map_err(|e| format!("delayed connect error: {}", os_reason(&e)))?;
        }
        let Some(tls) = &cluster.config.tls else {
            return Ok(match socket {
                Transport::Tcp(tcp) => UpstreamStream::Plain(tcp),
                Transport::Unix(unix) => UpstreamStream::Unix(unix),
            });
        };
        match tls.connect(socket, protocol, name).await {
            Ok(s) => {
                if let Some(ssl) = &cluster.ssl {
                    ssl.handshake_done(s.connection());
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
            Ok(stream)
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

/// What accounts for the end of an HTTP connection, started now under its limits in time
/// (its timer, see [`Lifetime`]): called with whether the upstream closed it
/// (`upstream_cx_destroy_remote`) rather than Legate (`_local`). The upstream closed it when
/// it failed (a reset, a response cut short) or ended while its pool still held it (an idle
/// connection, the open HTTP/2 one: nothing on Legate's side let it go); Legate did when its
/// pool had let it go (idle timeout, `max_requests_per_connection`, `connection: close`, the
/// cluster gone). Nothing is counted per request.
///
/// It holds the stats it updates and only a weak reference to the host: the host's pools
/// hold the connection, so a strong one would keep them alive forever once the host is
/// removed (dropping a pool is what closes its idle connections).
fn end_of(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    slot: Slot,
    lifetime: Lifetime,
) -> impl FnOnce(bool) + Send + 'static {
    let traffic = cluster.stats.traffic;
    let length = cluster.stats.upstream_cx_length_ms;
    let host = Arc::downgrade(host);
    let opened = Instant::now();
    let timer = lifetime.start(traffic);
    move |by_upstream: bool| {
        if let Some(timer) = timer {
            timer.abort();
        }
        drop(slot);
        traffic.upstream_cx_active().dec();
        traffic.upstream_cx_destroy().inc();
        if by_upstream {
            traffic.upstream_cx_destroy_remote().inc();
        } else {
            traffic.upstream_cx_destroy_local().inc();
        }
        length.record(opened.elapsed().as_millis() as u64);
        if let Some(host) = host.upgrade() {
            host.active_connections
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Runs an HTTP/2 connection to its end on a task of its own, then accounts for it (see
/// [`end_of`]: the upstream closed it if it failed or its pool still held it).
fn drive<F, T, E>(cluster: &Arc<Cluster>, host: &Arc<Host>, slot: Slot, lifetime: Lifetime, conn: F)
where
    F: std::future::Future<Output = Result<T, E>> + Send + 'static,
{
    let (id, pool) = (lifetime.id, lifetime.pool.clone());
    let end = end_of(cluster, host, slot, lifetime);
    tokio::spawn(async move {
        let failed = conn.await.is_err();
        end(failed || pool.holds(id));
    });
}

/// The limits in time of a connection of `cluster` opening now in the pool `pool` finds.
fn lifetime(cluster: &Cluster, pool: PoolHandle) -> Lifetime {
    Lifetime {
        id: next_id(),
        pool,
        idle_timeout: cluster.config.idle_timeout,
        idle_watch: None,
        retire_at: cluster
            .config
            .max_connection_duration
            .map(|d| Instant::now() + d),
    }
}

/// Opens an HTTP/1.1 connection in `slot`, for the pool `pool` finds.
pub(super) async fn connect_http1(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    name: Option<&ConnectionName>,
    slot: Slot,
    pool: PoolHandle,
) -> Result<H1, UpstreamError> {
    let stream = open(
        cluster,
        host,
        Some(Protocol::Http1),
        name,
        name.and_then(|n| n.proxy.as_deref()),
    )
    .await?;
    cluster.stats.traffic.upstream_cx_http1_total().inc();
    let mut lifetime = lifetime(cluster, pool);
    let watch = Arc::new(IdleWatch::default());
    lifetime.idle_watch = Some(watch.clone());
    let meta = Meta {
        uses: 0,
        id: lifetime.id,
        retire_at: lifetime.retire_at,
        local: local_address(&stream),
    };
    let end = end_of(cluster, host, slot, lifetime);
    let conn = crate::http1::Connection::new(
        counted(cluster, stream),
        (
            cluster.config.max_headers_count as usize,
            cluster.config.max_http1_response_head(),
        ),
        std::task::Waker::from(watch),
        Box::new(end),
    );
    Ok(H1 { conn, meta })
}

/// Opens an HTTP/2 connection in `slot`, for the pool `pool` finds: its sender and number.
pub(super) async fn connect_http2(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    name: Option<&ConnectionName>,
    slot: Slot,
    pool: PoolHandle,
) -> Result<(http2::SendRequest<Body>, u64, Option<SocketAddr>), UpstreamError> {
    let stream = open(
        cluster,
        host,
        Some(Protocol::Http2),
        name,
        name.and_then(|n| n.proxy.as_deref()),
    )
    .await?;
    let o = &cluster.config.http2;
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(o.initial_stream_window_size)
        .initial_connection_window_size(o.initial_connection_window_size)
        .header_table_size(o.hpack_table_size);
    if let Some(kb) = cluster.config.max_response_headers_kb {
        builder.max_header_list_size(kb.saturating_mul(1024));
    }
    let local = local_address(&stream);
    let handshake = builder
        .handshake(TokioIo::new(counted(cluster, stream)))
        .await;
    let lifetime = lifetime(cluster, pool);
    let (sender, conn) = match handshake {
        Ok(handshake) => handshake,
        Err(e) => {
            // The connection was counted open: it ends here.
            end_of(cluster, host, slot, lifetime)(true);
            return Err(UpstreamError::ConnectionTermination(e.to_string()));
        }
    };
    cluster.stats.traffic.upstream_cx_http2_total().inc();
    let id = lifetime.id;
    drive(cluster, host, slot, lifetime, conn);
    Ok((sender, id, local))
}

/// A new connection's own address (`%UPSTREAM_LOCAL_ADDRESS%`), asked of the kernel once; none
/// for a unix domain socket.
fn local_address(stream: &UpstreamStream) -> Option<SocketAddr> {
    stream.tcp().and_then(|tcp| tcp.local_addr().ok())
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

/// Writes the PROXY header a new connection starts with (it fits the socket's buffer): the
/// downstream connection's addresses, else the connection's own; a unix domain socket with no
/// downstream addresses (the downstream came over a pipe too) gets a header without any
/// (`LOCAL` in version 2, `UNKNOWN` in version 1).
async fn write_proxy_header(
    socket: &Transport,
    proxy: &crate::proxy_protocol::UpstreamProxyProtocol,
    downstream: Option<&ProxyProtocolData>,
) -> std::io::Result<()> {
    let header = match (downstream, socket.tcp()) {
        (Some(d), _) => proxy.header(d.source, d.destination, &d.tlvs),
        (None, Some(tcp)) => proxy.header(tcp.local_addr()?, tcp.peer_addr()?, &[]),
        (None, None) => proxy.header_without_addresses(),
    };
    let mut written = 0;
    while written < header.len() {
        socket.writable().await?;
        match socket.try_write(&header[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
