//! The network filters at run time: `ChainFilter` is what a matched filter chain runs on its
//! connection — the HTTP connection manager, tcp_proxy ([`super::tcp_proxy`]), `echo` or
//! `direct_response`.

use std::sync::Arc;
use std::time::Duration;

use legate_core::lifecycle::Phase;
use legate_http::conn_manager::{Downstream, HttpConnectionManager, ProxyContext};
use legate_net::pump::{self, ByteCounters};
use legate_net::tls::ServerTlsStream;
use tokio::sync::watch;

use super::tcp_proxy::TcpProxy;
use crate::config::NetworkFilter;

/// What a filter chain runs: its terminal network filter.
pub enum ChainFilter {
    Http(Arc<HttpConnectionManager>),
    TcpProxy(Arc<TcpProxy>),
    Echo,
    DirectResponse(Arc<[u8]>),
    /// A chain without filters: Envoy closes its connections.
    Close,
}

impl ChainFilter {
    /// Builds the running filter of a compiled chain.
    /// `listener_stat_prefix` names the listener's stats (`listener.<prefix>.http.*`).
    pub fn new(
        filters: &[NetworkFilter],
        context: &Arc<ProxyContext>,
        listener_stat_prefix: &str,
    ) -> Result<Self, String> {
        Ok(match filters.last() {
            None => ChainFilter::Close,
            Some(NetworkFilter::HttpConnectionManager(c)) => ChainFilter::Http(Arc::new(
                HttpConnectionManager::new(c.clone(), context.clone(), listener_stat_prefix)
                    .map_err(|errors| {
                        errors
                            .iter()
                            .map(|e| e.to_string())
                            .collect::<Vec<_>>()
                            .join("\n")
                    })?,
            )),
            Some(NetworkFilter::TcpProxy(c, tunnel)) => {
                let cluster_from_sni = filters
                    .iter()
                    .any(|f| matches!(f, NetworkFilter::SniCluster));
                ChainFilter::TcpProxy(Arc::new(TcpProxy::new(
                    c.clone(),
                    tunnel.clone(),
                    context.clone(),
                    cluster_from_sni,
                )?))
            }
            // Checked at compile time: a chain cannot end with these.
            Some(NetworkFilter::SniCluster | NetworkFilter::Rbac(_)) => ChainFilter::Close,
            Some(NetworkFilter::Echo) => ChainFilter::Echo,
            Some(NetworkFilter::DirectResponse(bytes)) => {
                ChainFilter::DirectResponse(bytes.clone())
            }
        })
    }

    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ChainFilter::Http(_) => "http",
            ChainFilter::TcpProxy(_) => "tcp_proxy",
            ChainFilter::Echo => "echo",
            ChainFilter::DirectResponse(_) => "direct_response",
            ChainFilter::Close => "no filters",
        }
    }

    /// Serves a connection to its end. `downstream` is boxed: every `async fn` layer keeps its
    /// arguments for its whole life, and the connection's task holds them all.
    pub async fn serve(
        &self,
        conn: Conn,
        downstream: Box<Downstream>,
        server_name: &str,
        phase: watch::Receiver<Phase>,
    ) {
        // The connection manager's future is boxed: held inline, it would size every
        // connection's task for HTTP, tcp_proxy ones too (14 KiB per idle connection).
        match (self, conn) {
            (ChainFilter::Http(hcm), Conn::Plain(s)) => {
                Box::pin(hcm.clone().serve(s, downstream, phase)).await
            }
            (ChainFilter::Http(hcm), Conn::Tls(s)) => {
                Box::pin(hcm.clone().serve(s, downstream, phase)).await
            }
            (ChainFilter::Http(hcm), Conn::Unix(s)) => {
                Box::pin(hcm.clone().serve(s, downstream, phase)).await
            }
            (ChainFilter::TcpProxy(p), conn) => p.serve(conn, downstream, server_name).await,
            (ChainFilter::Echo, Conn::Plain(s)) => {
                let _ = pump::echo(&s, ByteCounters::default()).await;
            }
            (ChainFilter::Echo, Conn::Tls(s)) => {
                let _ = pump::echo_io(s, ByteCounters::default()).await;
            }
            (ChainFilter::Echo, Conn::Unix(s)) => {
                let _ = pump::echo_io(s, ByteCounters::default()).await;
            }
            (ChainFilter::DirectResponse(bytes), Conn::Plain(s)) => {
                let _ = pump::write_all(&s, bytes).await;
                pump::shutdown_write(&s);
                pump::drain(&s, Duration::from_secs(1)).await;
            }
            (ChainFilter::DirectResponse(bytes), Conn::Tls(s)) => {
                pump::respond_io(s, bytes, Duration::from_secs(1)).await;
            }
            (ChainFilter::DirectResponse(bytes), Conn::Unix(s)) => {
                pump::respond_io(s, bytes, Duration::from_secs(1)).await;
            }
            (ChainFilter::Close, _) => {}
        }
    }
}

/// A downstream connection once its transport socket is set up: plain TCP, TLS terminated on
/// it, or a unix domain socket (a `pipe` listener).
pub type Conn = legate_core::io::MaybeTls<ServerTlsStream>;
