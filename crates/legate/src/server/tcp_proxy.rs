//! tcp_proxy at run time: the cluster and host for a connection, the connect attempts (or a
//! tunnel over HTTP, `tunneling_config`), the byte exchange within its limits, and its stats
//! and access log entries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use legate_core::access_log::AccessLogger;
use legate_core::proxy_protocol::ProxyProtocolData;
use legate_core::stats::{Counter, Scope};
use legate_core::stream_info::{AccessLogType, Protocol, StreamInfo};
use legate_http::conn_manager::{Downstream, ProxyContext};
use legate_http::tunnel::TunnelConfig;
use legate_net::pump::{self, ByteCounters, End, Limits, Side};
use legate_net::tcp_proxy::{TcpProxyConfig, TcpProxyStats};
use legate_upstream::Cluster;
use legate_upstream::pool::{UpstreamError, UpstreamStream};
use legate_upstream::tunnel::{Tunnel, TunnelError};

use super::l4::Conn;

/// A running tcp_proxy filter.
pub struct TcpProxy {
    config: Arc<TcpProxyConfig>,
    /// `tunneling_config`: the bytes go over an HTTP request to the host.
    tunnel: Option<Arc<TunnelConfig>>,
    /// The cluster is the connection's SNI when it has one (`sni_cluster`).
    cluster_from_sni: bool,
    stats: TcpProxyStats,
    access_logs: Vec<AccessLogger>,
    context: Arc<ProxyContext>,
}

/// Cluster stats tcp_proxy updates beyond those the connection pool counts.
struct ClusterL4Stats {
    rx_bytes: Counter,
    tx_bytes: Counter,
    none_healthy: Counter,
    attempts_exceeded: Counter,
}

impl ClusterL4Stats {
    fn of(cluster: &Cluster) -> Self {
        let s: &Scope = &cluster.stats.scope;
        ClusterL4Stats {
            rx_bytes: cluster.stats.traffic.upstream_cx_rx_bytes_total(),
            tx_bytes: cluster.stats.traffic.upstream_cx_tx_bytes_total(),
            none_healthy: cluster.stats.traffic.upstream_cx_none_healthy(),
            attempts_exceeded: s.counter("upstream_cx_connect_attempts_exceeded"),
        }
    }
}

impl TcpProxy {
    /// `cluster_from_sni`: an `sni_cluster` filter runs before it.
    pub fn new(
        config: Arc<TcpProxyConfig>,
        tunnel: Option<Arc<TunnelConfig>>,
        context: Arc<ProxyContext>,
        cluster_from_sni: bool,
    ) -> Result<Self, String> {
        let mut access_logs = Vec::with_capacity(config.access_log.len());
        for (i, log) in config.access_log.iter().enumerate() {
            let l = AccessLogger::compile(log).map_err(|errors| {
                errors
                    .iter()
                    .map(|e| format!("access_log[{i}]: {e}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
            access_logs.push(l);
        }
        let root = context.store.scope("");
        // Register the byte counters of the clusters this proxy may use, as Envoy has them
        // from the start.
        for name in config.cluster.names() {
            if let Some(c) = context.clusters.get(name) {
                ClusterL4Stats::of(&c);
            }
        }
        Ok(TcpProxy {
            tunnel,
            cluster_from_sni,
            stats: TcpProxyStats::new(&root, &config.stat_prefix),
            config,
            access_logs,
            context,
        })
    }

    /// Proxies a connection (`conn` its record, `server_name` its SNI) to its end.
    pub(super) async fn serve(
        &self,
        mut downstream: Conn,
        conn: Box<Downstream>,
        server_name: &str,
    ) {
        self.stats.downstream_cx_total.inc();
        let deadline = self
            .config
            .deadline(std::time::Instant::now(), fastrand::f64());
        // On the heap, and dropped before the bytes flow when no access log needs it: a
        // connection's task holds what lives across the exchange for the connection's life.
        let mut info = Box::new(StreamInfo::new(conn.id));
        info.protocol = Protocol::Tcp;
        info.downstream_remote_address = conn.remote_address();
        info.downstream_local_address = conn.local_address();
        if conn.pipe.is_none() {
            info.downstream_direct_remote_address = Some(conn.direct_peer);
            info.downstream_direct_local_address = conn.direct_local;
        }
        info.downstream_pipe = conn.pipe.clone();
        if !server_name.is_empty() {
            info.requested_server_name = Some(server_name.into());
        }
        info.downstream_tls = conn.tls_info.clone();
        info.tls_fingerprints = conn.tls_fingerprints.clone();
        info.dynamic_metadata = conn.dynamic_metadata.clone();
        info.filter_chain_name = conn.filter_chain_name.clone();
        if self.config.flush_access_log_on_start {
            self.log(&mut info, AccessLogType::TcpConnectionStart);
        }
        let restored_local = conn.local_restored.then_some(conn.local);
        let worker = conn.worker as usize;
        // What a PROXY header to the upstream names, as Envoy's tcp_proxy sets it: the
        // addresses (after a PROXY listener filter, the ones it restored) and the TLVs.
        let proxy_data = conn.proxy_protocol_data(
            &self.config.proxy_protocol_tlvs,
            self.config.tlv_merge_policy,
        );
        drop(conn);
        let connect = Box::pin(async {
            if self.config.connect_on_data {
                peer_sent(&mut downstream).await;
            }
            self.connect(restored_local, worker, proxy_data.as_ref(), &mut info)
                .await
        });
        let connected = match deadline {
            Some(at) => tokio::time::timeout_at(at.into(), connect).await,
            None => Ok(connect.await),
        };
        let upstream = match connected {
            Ok(Some(upstream)) => upstream,
            Ok(None) => return self.log_end(info),
            Err(_) => {
                self.max_duration_reached(&mut info);
                return self.log_end(info);
            }
        };
        if self.config.flush_access_log_on_connected {
            self.log(&mut info, AccessLogType::TcpUpstreamConnected);
        }
        let limits = Limits {
            idle: self.config.idle_timeout,
            deadline,
        };
        if self.access_logs.is_empty() {
            drop(info);
            self.exchange(downstream, upstream, limits, None).await;
        } else {
            self.exchange(downstream, upstream, limits, Some(&mut info))
                .await;
            self.log_end(info);
        }
    }

    /// `max_downstream_connection_duration` passed: counted, and flagged for the access log.
    fn max_duration_reached(&self, info: &mut StreamInfo) {
        self.stats.max_downstream_connection_duration.inc();
        info.response_flags
            .set(legate_core::stream_info::ResponseFlags::DURATION_TIMEOUT);
    }

    /// Writes the connection's last access log entry (if it has access logs).
    fn log_end(&self, mut info: Box<StreamInfo>) {
        self.log(&mut info, AccessLogType::TcpConnectionEnd);
    }

    /// Writes an access log entry of type `kind`, with the duration so far.
    fn log(&self, info: &mut StreamInfo, kind: AccessLogType) {
        if self.access_logs.is_empty() {
            return;
        }
        info.access_log_type = kind;
        info.duration = Some(info.elapsed());
        let runtime = self.context.runtime.snapshot();
        for log in &self.access_logs {
            log.log(info, &runtime);
        }
    }

    /// Runs `pump` to its end, writing a `TcpPeriodic` access log entry `every` interval
    /// with the bytes moved so far (`moved`: from downstream, from upstream).
    async fn log_periodically(
        &self,
        pump: impl std::future::Future<Output = pump::Outcome>,
        every: Duration,
        info: &mut StreamInfo,
        moved: &[AtomicU64; 2],
    ) -> pump::Outcome {
        let mut pump = std::pin::pin!(pump);
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                outcome = &mut pump => return outcome,
                _ = ticks.tick() => {
                    info.bytes_received = moved[0].load(Ordering::Relaxed);
                    info.bytes_sent = moved[1].load(Ordering::Relaxed);
                    self.log(info, AccessLogType::TcpPeriodic);
                }
            }
        }
    }

    /// Picks the cluster and a host and connects, trying again (another host if the load
    /// balancer picks one) up to `max_connect_attempts` times. `None`: no connection (the
    /// reason is in `info`'s response flags).
    async fn connect(
        &self,
        restored_local: Option<std::net::SocketAddr>,
        worker: usize,
        proxy_data: Option<&ProxyProtocolData>,
        info: &mut StreamInfo,
    ) -> Option<Upstream> {
        use legate_core::stream_info::ResponseFlags as flags;
        let sni = info
            .requested_server_name
            .clone()
            .filter(|_| self.cluster_from_sni);
        let name = match &sni {
            Some(sni) => sni,
            None => self.config.cluster.pick(fastrand::u64(..)),
        };
        let Some(cluster) = self.context.clusters.get(name) else {
            self.stats.downstream_cx_no_route.inc();
            info.response_flags.set(flags::NO_CLUSTER_FOUND);
            return None;
        };
        info.upstream_cluster = Some(cluster.name.clone());
        let l4 = ClusterL4Stats::of(&cluster);
        // `hash_policy: source_ip`, for clusters that balance on a hash (Envoy computes the key
        // only for those): it takes the place of the random number in the host choice.
        let hash = (self.config.hash_source_ip && cluster.uses_hash())
            .then_some(info.downstream_remote_address)
            .flatten()
            .map(|a| legate_upstream::hashing::xxhash64(a.ip().to_string().as_bytes()));
        let pick = || hash.unwrap_or_else(|| fastrand::u64(..));
        // `backoff_options`: a wait before each further attempt.
        let mut waits = self.config.backoff.map(|b| b.waits(fastrand::f64));
        for attempt in 0..self.config.max_connect_attempts {
            if attempt > 0
                && let Some(wait) = waits.as_mut().and_then(Iterator::next)
            {
                tokio::time::sleep(wait).await;
            }
            let lb_context = legate_upstream::original_dst::LbContext {
                restored_local,
                headers: None,
            };
            let Some(host) = cluster.choose_host_for(pick(), &lb_context) else {
                l4.none_healthy.inc();
                info.response_flags.set(flags::NO_HEALTHY_UPSTREAM);
                return None;
            };
            if host.pipe.is_some() {
                info.upstream_pipe = host.pipe.clone();
            } else {
                info.upstream_host = Some(host.address);
            }
            info.attempt_count += 1;
            if let Some(tunnel) = &self.tunnel {
                match self
                    .open_tunnel(tunnel, &cluster, &host, worker, proxy_data, info)
                    .await
                {
                    Ok(tunnel) => {
                        return Some(Upstream {
                            link: Link::Tunnel(Box::new(tunnel)),
                            guard: None,
                            host,
                            cluster,
                            l4,
                        });
                    }
                    Err(true) => return None,
                    Err(false) => continue,
                }
            }
            match legate_upstream::pool::connect(&cluster, &host, None, proxy_data).await {
                Ok((stream, guard)) => {
                    info.upstream_local_address = stream.tcp().and_then(|t| t.local_addr().ok());
                    return Some(Upstream {
                        link: Link::Connection(stream),
                        guard: Some(guard),
                        host,
                        cluster,
                        l4,
                    });
                }
                Err(UpstreamError::Overflow) => {
                    info.response_flags.set(flags::UPSTREAM_OVERFLOW);
                    return None;
                }
                Err(e) => {
                    info.upstream_transport_failure_reason =
                        e.transport_failure_reason().map(str::to_owned);
                }
            }
        }
        l4.attempts_exceeded.inc();
        info.response_flags.set(flags::UPSTREAM_CONNECTION_FAILURE);
        info.response_flags
            .set(flags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
        None
    }

    /// Opens a tunnel to `host` (`tunneling_config`). `Err(true)`: give up (the cluster is
    /// full), `Err(false)`: this attempt failed (the reason is in `info`).
    async fn open_tunnel(
        &self,
        tunnel: &TunnelConfig,
        cluster: &Arc<Cluster>,
        host: &Arc<legate_upstream::host::Host>,
        worker: usize,
        proxy_data: Option<&ProxyProtocolData>,
        info: &mut StreamInfo,
    ) -> Result<Tunnel, bool> {
        use legate_core::stream_info::ResponseFlags as flags;
        // Over HTTP/2 when the cluster speaks it, else over HTTP/1.1, as Envoy picks.
        let protocol = match cluster.config.protocol {
            legate_upstream::UpstreamProtocol::Http2 => legate_upstream::pool::Protocol::Http2,
            _ => legate_upstream::pool::Protocol::Http1,
        };
        let Some(request) = tunnel.request(info, protocol, cluster.config.tls.is_some()) else {
            info.upstream_transport_failure_reason = Some("invalid tunnel hostname".into());
            return Err(false);
        };
        let opening = legate_upstream::tunnel::open(
            cluster,
            host,
            worker,
            protocol,
            request,
            proxy_data.cloned(),
        );
        match Box::pin(opening).await {
            Ok(t) => Ok(t),
            Err(TunnelError::Upstream(UpstreamError::Overflow)) => {
                info.response_flags.set(flags::UPSTREAM_OVERFLOW);
                Err(true)
            }
            Err(TunnelError::Upstream(e)) => {
                info.upstream_transport_failure_reason =
                    e.transport_failure_reason().map(str::to_owned);
                Err(false)
            }
            Err(TunnelError::Refused(status)) => {
                info.upstream_transport_failure_reason = Some(format!("tunnel_response:{status}"));
                Err(false)
            }
        }
    }

    /// Moves the bytes between the two connections until the exchange ends, then counts how
    /// it ended. `info`: the access log's record, when there is an access log.
    async fn exchange(
        &self,
        downstream: Conn,
        upstream: Upstream,
        limits: Limits,
        mut info: Option<&mut StreamInfo>,
    ) {
        let stats = &self.stats;
        let opened = std::time::Instant::now();
        let periodic = self
            .config
            .access_log_flush_interval
            .filter(|_| info.is_some());
        // The connection's own byte totals, read by the periodic access log entries.
        let moved = [AtomicU64::new(0), AtomicU64::new(0)];
        // A tunnel's connection counts its own bytes (the HTTP pool's).
        let own = matches!(upstream.link, Link::Connection(_));
        let from_downstream = ByteCounters {
            counters: [
                Some(&stats.downstream_cx_rx_bytes_total),
                own.then_some(&upstream.l4.tx_bytes),
            ],
            total: periodic.map(|_| &moved[0]),
        };
        let from_upstream = ByteCounters {
            counters: [
                Some(&stats.downstream_cx_tx_bytes_total),
                own.then_some(&upstream.l4.rx_bytes),
            ],
            total: periodic.map(|_| &moved[1]),
        };
        let pump = run_pump(
            downstream,
            upstream.link,
            limits,
            from_downstream,
            from_upstream,
        );
        let outcome = match (periodic, info.as_deref_mut()) {
            (Some(every), Some(info)) => {
                Box::pin(self.log_periodically(pump, every, info, &moved)).await
            }
            _ => pump.await,
        };
        match outcome.end {
            End::IdleTimeout => stats.idle_timeout.inc(),
            End::MaxDuration => {
                if let Some(info) = info.as_deref_mut() {
                    self.max_duration_reached(info);
                } else {
                    stats.max_downstream_connection_duration.inc();
                }
            }
            End::Closed | End::Error => {}
        }
        if let Some(info) = info {
            info.bytes_received = outcome.a_to_b;
            info.bytes_sent = outcome.b_to_a;
            if outcome.end == End::Error && outcome.first_to_close == Some(Side::B) {
                info.response_flags
                    .set(legate_core::stream_info::ResponseFlags::UPSTREAM_CONNECTION_TERMINATION);
            }
        }
        // The end of tcp_proxy's own connection (a tunnel's is the HTTP pool's to count).
        let Some(guard) = upstream.guard else { return };
        let cs = &upstream.cluster.stats;
        if outcome.first_to_close == Some(Side::B) {
            cs.traffic.upstream_cx_destroy_remote().inc();
        } else {
            cs.traffic.upstream_cx_destroy_local().inc();
        }
        cs.traffic.upstream_cx_active().dec();
        cs.traffic.upstream_cx_destroy().inc();
        cs.upstream_cx_length_ms
            .record(opened.elapsed().as_millis() as u64);
        upstream
            .host
            .active_connections
            .fetch_sub(1, Ordering::Relaxed);
        drop(guard);
    }
}

/// Waits until the client has sent something or closed (`upstream_connect_mode:
/// ON_DOWNSTREAM_DATA`); the bytes stay where they are, for the exchange to read.
async fn peer_sent(downstream: &mut Conn) {
    let _ = match downstream {
        Conn::Plain(s) => legate_core::io::tcp_peer_sent(s).await,
        Conn::Unix(s) => legate_core::io::unix_peer_sent(s).await,
        Conn::Tls(s) => s.peer_sent().await,
    };
}

/// Moves bytes between the connections until the exchange ends (both closed when it does).
async fn run_pump(
    downstream: Conn,
    upstream: Link,
    limits: Limits,
    from_downstream: ByteCounters<'_>,
    from_upstream: ByteCounters<'_>,
) -> pump::Outcome {
    if let (Conn::Plain(d), Link::Connection(UpstreamStream::Plain(u))) = (&downstream, &upstream) {
        // Plain on both sides: the readiness-driven pump, which holds no buffer while idle.
        pump::exchange(d, u, limits, from_downstream, from_upstream).await
    } else {
        // Boxed: TLS connections and tunnels are rarer and hold far more anyway; inline, this
        // would size every plain connection's task for them.
        Box::pin(run_io_pump(
            downstream,
            upstream,
            limits,
            from_downstream,
            from_upstream,
        ))
        .await
    }
}

/// [`run_pump`] through `AsyncRead`/`AsyncWrite` (TLS on either side, a unix socket, a
/// tunnel).
async fn run_io_pump(
    downstream: Conn,
    upstream: Link,
    limits: Limits,
    from_downstream: ByteCounters<'_>,
    from_upstream: ByteCounters<'_>,
) -> pump::Outcome {
    match upstream {
        Link::Connection(u) => {
            pump::exchange_io(downstream, u, limits, from_downstream, from_upstream).await
        }
        Link::Tunnel(t) => {
            pump::exchange_io(downstream, t, limits, from_downstream, from_upstream).await
        }
    }
}

/// How the bytes reach the host.
enum Link {
    /// A connection (TCP, or a unix socket) of tcp_proxy's own.
    Connection(UpstreamStream),
    /// A tunnel over an HTTP request (`tunneling_config`), on a connection of the cluster's
    /// HTTP pool, which counts that connection.
    Tunnel(Box<Tunnel>),
}

/// A connected upstream and what its exchange counts into.
struct Upstream {
    link: Link,
    /// tcp_proxy's own connection's place within the cluster's connection limit.
    guard: Option<legate_upstream::breaker::ResourceGuard>,
    host: Arc<legate_upstream::host::Host>,
    cluster: Arc<Cluster>,
    l4: ClusterL4Stats,
}
