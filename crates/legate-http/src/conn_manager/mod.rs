//! The HTTP connection manager at run time: serves one downstream connection with the codec
//! its config asks for (HTTP/1.1, HTTP/2, or either, detected from the h2c preface), and for
//! each request runs Envoy's request pipeline: header sanitising (`x-forwarded-*`,
//! `x-request-id`, `x-envoy-*`), route selection, then a direct response, a redirect or the
//! router; on the way back, response headers, stats and access logs.
//!
//! The pieces: `codec` serves a connection (codec choice, connection timers, drain);
//! this module runs a stream (`handle`, then `route` to a direct response, a redirect or the
//! router); `request` prepares the request headers; `stream` accounts for a stream when its
//! body ends. The state machine is described in LIFECYCLE.md, one directory up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use http::{HeaderValue, Request, Response, Version, header};
use http_body::Body as _;
use legate_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::ServerHeaderTransformation;
use legate_core::access_log::AccessLogger;
use legate_core::runtime::Runtime;
use legate_core::stats::Store;
use legate_core::stream_info::{Protocol, ResponseFlags, StreamInfo};
use legate_core::{Compiled, Errors};
use legate_upstream::ClusterManager;
use legate_upstream::body::{self, Body};

mod codec;
mod h2;
mod h2_guard;
mod request;
mod stream;
mod xfcc;

use request::{append_via, forwarded_proto};
pub(crate) use stream::RequestBodyState;
use stream::{CountingBody, DownstreamBody, Ended, StreamBody, StreamEnd};

use crate::hcm::{HcmConfig, RouteSource};
use crate::local_reply::LocalReply;
use crate::rds::{RdsRegistry, RdsSubscription};
use crate::route::RouteTable;
use crate::route_match::{ClusterName, RouteRequest, SelectedAction};
use crate::stats::HcmStats;

/// What every connection manager shares: the clusters, the runtime, the stats store and the
/// RDS subscriptions (each of which changes by snapshot swap).
#[derive(Debug)]
pub struct ProxyContext {
    pub clusters: Arc<ClusterManager>,
    pub runtime: Arc<Runtime>,
    pub store: Arc<Store>,
    pub rds: Arc<RdsRegistry>,
}

/// The route table a connection manager serves with: its own, or an RDS subscription's.
#[derive(Clone, Debug)]
pub enum Routes {
    Static(Arc<RouteTable>),
    Rds(Arc<RdsSubscription>),
}

impl Routes {
    /// The table for a request starting now; `None` while an RDS table has not arrived. A
    /// static table is borrowed (no reference count shared between workers to touch).
    pub fn table(&self) -> Option<TableRef<'_>> {
        match self {
            Routes::Static(t) => Some(TableRef::Static(t)),
            Routes::Rds(s) => s.table().map(TableRef::Swapped),
        }
    }
}

/// A request's route table.
pub enum TableRef<'a> {
    Static(&'a RouteTable),
    Swapped(Arc<RouteTable>),
}

impl std::ops::Deref for TableRef<'_> {
    type Target = RouteTable;

    fn deref(&self) -> &RouteTable {
        match self {
            TableRef::Static(t) => t,
            TableRef::Swapped(t) => t,
        }
    }
}

/// One downstream connection.
#[derive(Clone, Debug)]
pub struct Downstream {
    pub id: u64,
    /// The client: the socket's peer, or the source a PROXY header restored.
    pub peer: SocketAddr,
    /// The socket's peer (the proxy in front, with the PROXY protocol).
    pub direct_peer: SocketAddr,
    pub local: SocketAddr,
    /// `local` was restored by a listener filter (`original_dst`, `proxy_protocol`): Envoy's
    /// `localAddressRestored`, which ORIGINAL_DST clusters and `use_original_dst` go by.
    pub local_restored: bool,
    /// The socket's own local address when `local` was restored
    /// (`%DOWNSTREAM_DIRECT_LOCAL_ADDRESS%`).
    pub direct_local: Option<SocketAddr>,
    /// The name of the filter chain serving the connection, if it has one.
    pub filter_chain_name: Option<Arc<str>>,
    /// The worker serving it, which picks the worker's upstream connection pools.
    pub worker: u32,
    /// TLS was terminated on this connection (`x-forwarded-proto` and `:scheme` are `https`).
    pub tls: bool,
    /// The SNI the client sent, if any (`%REQUESTED_SERVER_NAME%`).
    pub requested_server_name: Option<Arc<str>>,
    /// What the TLS handshake established (`%DOWNSTREAM_PEER_*%`, x-forwarded-client-cert).
    pub tls_info: Option<Arc<legate_core::x509::TlsInfo>>,
    /// The ClientHello's JA3/JA4 fingerprints, if the tls_inspector computed them.
    pub tls_fingerprints: Option<Arc<legate_core::stream_info::TlsFingerprints>>,
    /// The connection's dynamic metadata (the proxy_protocol filter's TLVs): for tcp_proxy's
    /// access logs; HTTP streams start without it, as in Envoy.
    pub dynamic_metadata: Option<Arc<legate_core::metadata::DynamicMetadata>>,
    /// The listener's path, for a connection to a unix domain socket (`pipe`) listener: then
    /// `peer`, `direct_peer` and `local` hold no real address (there is no IP), and Envoy
    /// shows the path for all three — unless a PROXY header gave `peer` and `local`.
    pub pipe: Option<Arc<str>>,
    /// A PROXY header gave `peer` (the socket's peer is the proxy in front).
    pub proxied: bool,
    /// The TLVs of that header the listener filter's `pass_through_tlvs` kept, if any (behind
    /// a pointer: most connections have none, and this struct is in every connection's
    /// memory).
    pub proxy_tlvs: Option<Arc<Vec<legate_core::proxy_protocol::Tlv>>>,
}

impl Downstream {
    /// The client's address, if it has one: not on a pipe, unless a PROXY header gave it.
    pub fn remote_address(&self) -> Option<SocketAddr> {
        (self.pipe.is_none() || self.proxied).then_some(self.peer)
    }

    /// The connection's direct peer, if it has an address: not on a pipe.
    pub fn direct_remote_address(&self) -> Option<SocketAddr> {
        self.pipe.is_none().then_some(self.direct_peer)
    }

    /// The address the client connected to, if it has one: not on a pipe, unless a PROXY
    /// header gave it.
    pub fn local_address(&self) -> Option<SocketAddr> {
        (self.pipe.is_none() || self.local_restored).then_some(self.local)
    }

    /// What a PROXY header sent upstream names (Envoy's PROXY protocol state): the
    /// connection's addresses (those a PROXY header restored, if one came in) and the TLVs
    /// the listener filter kept of it, merged with `configured` by `policy` (tcp_proxy's
    /// `proxy_protocol_tlvs`). `None` without addresses (a pipe, unless a header gave them).
    pub fn proxy_protocol_data(
        &self,
        configured: &[legate_core::proxy_protocol::Tlv],
        policy: legate_core::proxy_protocol::MergePolicy,
    ) -> Option<legate_core::proxy_protocol::ProxyProtocolData> {
        let (source, destination) = self.remote_address().zip(self.local_address())?;
        let tlvs = if self.proxied {
            policy.merge(
                self.proxy_tlvs.as_deref().map_or(&[], Vec::as_slice),
                configured,
            )
        } else {
            configured.to_vec()
        };
        Some(legate_core::proxy_protocol::ProxyProtocolData {
            source,
            destination,
            tlvs,
        })
    }

    /// The scheme the client used on this connection.
    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }
}

/// A compiled `http_connection_manager` filter with its stats and access logs.
#[derive(Debug)]
pub struct HttpConnectionManager {
    pub config: Arc<HcmConfig>,
    pub routes: Routes,
    pub stats: HcmStats,
    pub access_logs: Vec<AccessLogger>,
    pub context: Arc<ProxyContext>,
    /// What Envoy enforces on HTTP/2 connections beyond the `h2` codec: the flood limits, and
    /// the `http2.*` counters, made by the first HTTP/2 connection (as Envoy makes its codec
    /// stats).
    h2_limits: h2_guard::H2Limits,
    h2_stats: std::sync::OnceLock<h2_guard::H2Stats>,
}

/// Per-connection state shared by its streams.
struct ConnectionState {
    downstream: Downstream,
    opened: Instant,
    requests: AtomicU32,
    /// Streams in flight, and when the last one ended (ms since `opened`): the idle timeout
    /// runs only while no stream is open.
    active_streams: AtomicU32,
    last_active_ms: AtomicU64,
    /// 1 for HTTP/1, 2 for HTTP/2, once the first request tells.
    codec: AtomicU32,
    /// Asks the connection to close gracefully (HTTP/2 GOAWAY after
    /// `max_requests_per_connection`; HTTP/1.1 uses `connection: close` instead).
    close: crate::h1::Shutdown,
    /// Tells the codec to close gracefully (set by the connection's driver: timers, drain,
    /// `close`); here rather than in the connection's task, which an idle connection keeps.
    shutdown: crate::h1::Shutdown,
    /// The listener is draining: HTTP/1 responses carry `connection: close` from now on.
    drain_close: std::sync::atomic::AtomicBool,
}

impl ConnectionState {
    /// A new stream's info: what the connection tells of it.
    fn stream_info(&self) -> StreamInfo {
        let downstream = &self.downstream;
        let mut info = StreamInfo::new(downstream.id);
        info.downstream_local_address = downstream.local_address();
        if downstream.pipe.is_none() {
            info.downstream_direct_local_address = downstream.direct_local;
            info.downstream_direct_remote_address = Some(downstream.direct_peer);
        }
        info.filter_chain_name = downstream.filter_chain_name.clone();
        info.downstream_pipe = downstream.pipe.clone();
        info.requested_server_name = downstream.requested_server_name.clone();
        info.downstream_tls = downstream.tls_info.clone();
        info.tls_fingerprints = downstream.tls_fingerprints.clone();
        info
    }
}

impl HttpConnectionManager {
    /// Builds the run-time connection manager; opening access-log files can fail.
    /// `listener_stat_prefix` names the per-listener copy of the status counters
    /// (`listener.<prefix>.http.<stat_prefix>.downstream_rq_<class>`).
    pub fn new(
        config: Arc<HcmConfig>,
        context: Arc<ProxyContext>,
        listener_stat_prefix: &str,
    ) -> Compiled<Self> {
        let mut errors = Errors::default();
        let mut access_logs = Vec::with_capacity(config.access_log.len());
        for (i, log) in config.access_log.iter().enumerate() {
            if let Some(l) = errors.take(&format!("access_log[{i}]"), AccessLogger::compile(log)) {
                access_logs.push(l);
            }
        }
        let stats = HcmStats::new(&context.store, &config.stat_prefix, listener_stat_prefix);
        let routes = match &config.routes {
            RouteSource::Static(table) => Routes::Static(table.clone()),
            RouteSource::Rds(rds) => {
                let scope = context
                    .store
                    .scope(&format!("http.{}.", config.stat_prefix));
                Routes::Rds(context.rds.subscribe(rds, &scope))
            }
        };
        errors.finish(|| HttpConnectionManager {
            h2_limits: h2_guard::H2Limits::new(&config.http2),
            h2_stats: Default::default(),
            config,
            routes,
            stats,
            access_logs,
            context,
        })
    }

    /// Counts a connection as HTTP/1 (1) or HTTP/2 (2): at once for a fixed `codec_type`, at
    /// the first request for AUTO (Envoy counts when its codec is created).
    fn count_codec(&self, codec: u32) {
        let stats = &self.stats;
        if codec == 2 {
            stats.downstream_cx_http2_total.inc();
            stats.downstream_cx_http2_active.inc();
        } else {
            stats.downstream_cx_http1_total.inc();
            stats.downstream_cx_http1_active.inc();
        }
    }

    /// One request: Envoy's decode path, then the response's encode path. (An async block, not
    /// an `async fn`: see [`crate::router::forward`].)
    fn handle<'a>(
        self: &'a Arc<Self>,
        req: Request<DownstreamBody>,
        on_upgrade: Option<crate::h1::OnUpgrade>,
        conn: &'a Arc<ConnectionState>,
        received: Arc<RequestBodyState>,
    ) -> impl Future<Output = Response<Body>> + Send + 'a {
        async move {
            let stats = &self.stats;
            conn.active_streams.fetch_add(1, Ordering::Relaxed);
            let config = &self.config;
            // Until the response exists, the stream's accounting is in `stream`: a client that
            // goes away drops it, and it is accounted as a downstream disconnect.
            let mut stream = InFlight(Some(Box::new(StreamEnd {
                info: conn.stream_info(),
                hcm: self.clone(),
                received: received.clone(),
                conn: conn.clone(),
                answered_early: false,
            })));
            let info = &mut stream.end().info;
            info.protocol = match req.version() {
                Version::HTTP_10 => Protocol::Http10,
                Version::HTTP_2 => Protocol::Http2,
                _ => Protocol::Http11,
            };
            let codec = if info.protocol == Protocol::Http2 {
                2
            } else {
                1
            };
            if conn.codec.swap(codec, Ordering::Relaxed) == 0 {
                self.count_codec(codec);
            }
            stats.downstream_rq_total.inc();
            if codec == 2 {
                stats.downstream_rq_http2_total.inc();
            } else {
                stats.downstream_rq_http1_total.inc();
            }
            stats.downstream_rq_active.inc();

            let served = conn.requests.fetch_add(1, Ordering::Relaxed) + 1;
            let last_request = config
                .max_requests_per_connection
                .is_some_and(|max| served >= max);

            let upgrade = crate::router::requested_upgrade(&req);
            let downstream_upgrade = on_upgrade.filter(|_| upgrade.is_some());
            let (mut parts, body) = req.into_parts();
            received
                .complete
                .store(body.is_end_stream(), Ordering::Relaxed);
            let request_body = body::boxed(CountingBody {
                inner: body,
                count: received.clone(),
                drop_trailers: info.protocol != Protocol::Http2,
            });

            // The route table in force when the request starts serves it to the end.
            let table = self.routes.table();
            let outcome = match self.prepare(&mut parts, info, conn, table.as_deref()) {
                Err(reply) => Outcome::Local(reply),
                Ok(()) => {
                    // Pinned where it is made: a future held in a variable and then awaited is
                    // copied whole into the awaiting future.
                    let routed = std::pin::pin!(self.route(
                        table.as_deref(),
                        parts,
                        request_body,
                        &received,
                        info,
                        conn,
                        upgrade,
                        downstream_upgrade,
                    ));
                    match self.config.request_timeout {
                        None => routed.await,
                        Some(timeout) => {
                            // `request_timeout`: the whole request must arrive in time; the timer
                            // is disarmed by the request's end or by the response's start.
                            let expired = async {
                                tokio::time::sleep(timeout).await;
                                if received.complete.load(Ordering::Relaxed) {
                                    std::future::pending::<()>().await;
                                }
                            };
                            tokio::select! {
                                outcome = routed => outcome,
                                _ = expired => {
                                    stats.downstream_rq_timeout.inc();
                                    Outcome::Local(LocalReply::new(408, "request timeout", "request_overall_timeout", 0))
                                }
                            }
                        }
                    }
                }
            };
            let mut close = false;
            // An upgrade, refused or made: Envoy never marks its request as received, and
            // counts it as answered before it ended.
            let mut upgrade_answered = false;
            let mut response = match outcome {
                Outcome::Local(reply) => {
                    upgrade_answered = reply.details == crate::router::UPGRADE_FAILED;
                    info.response_flags.set(reply.flag);
                    info.response_code_details = Some(reply.details.to_owned());
                    close = reply.close;
                    self.local_reply(reply, info)
                }
                Outcome::Response(r) => r,
            };
            let drain_close = conn.drain_close.load(Ordering::Relaxed);
            self.finish_response_headers(&mut response, info, last_request || close || drain_close);
            if last_request {
                stats.downstream_cx_max_requests_reached.inc();
                if info.protocol == Protocol::Http2 {
                    conn.close.request();
                }
            }
            let mut end = stream.0.take().expect("the stream is in flight");
            end.answered_early =
                upgrade_answered || response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
            self.track(response, end)
        }
    }

    /// The response of a stream on its way out: accounted for (stats, access logs) when its
    /// body ends.
    fn track(&self, response: Response<Body>, mut end: Box<StreamEnd>) -> Response<Body> {
        let info = &mut end.info;
        let status = response.status().as_u16();
        info.response_code = Some(status);
        if !self.access_logs.is_empty() {
            info.response_headers = Some(response.headers().clone());
        }
        let info_is_head = info.request.method == "HEAD";
        let (parts, body) = response.into_parts();
        let tracked = StreamBody {
            inner: body,
            end: Some(end),
            sent: 0,
            // A response to HEAD has no body for the codec to read: it is complete as sent.
            complete: info_is_head,
        };
        Response::from_parts(parts, body::boxed(tracked))
    }

    #[allow(clippy::too_many_arguments)]
    async fn route(
        &self,
        table: Option<&RouteTable>,
        parts: http::request::Parts,
        body: Body,
        body_state: &RequestBodyState,
        info: &mut StreamInfo,
        conn: &ConnectionState,
        upgrade: Option<String>,
        downstream_upgrade: Option<crate::h1::OnUpgrade>,
    ) -> Outcome {
        // Envoy's router counts every request it decodes (`rq_total`), whatever the route
        // does; an upgrade is counted by the router once the route allows it.
        if upgrade.is_none() {
            self.stats.rq_total.inc();
        }
        let request = RouteRequest::new(
            parts.method.as_str(),
            &info.request.path,
            &info.request.authority,
            conn.downstream.scheme(),
            &parts.headers,
        );
        // The runtime snapshot is a short-lived guard: taken for matching, dropped before any
        // await.
        let selected = table.and_then(|table| {
            let runtime = self.context.runtime.snapshot();
            table.route(&request, &runtime, fastrand::u64(..))
        });
        let Some(selected) = selected else {
            self.stats.no_route.inc();
            return Outcome::Local(LocalReply::new(
                404,
                "",
                "route_not_found",
                ResponseFlags::NO_ROUTE_FOUND,
            ));
        };
        info.route_name =
            (!selected.route.name.is_empty()).then(|| selected.route.name.as_str().into());
        let scheme = forwarded_proto(&parts.headers);
        match selected.action {
            SelectedAction::Direct { status, body } => {
                self.stats.rq_direct_response.inc();
                // A direct response is a local reply in Envoy: `local_reply_config` applies.
                let mut reply =
                    LocalReply::new(status, String::from_utf8_lossy(body), "direct_response", 0);
                reply.location = crate::rewrite::direct_response_location(status, &request, scheme);
                info.response_code_details = Some("direct_response".into());
                let mut response = self.local_reply(reply, info);
                crate::router::apply_response_mutations(&selected, response.headers_mut(), info);
                Outcome::Response(response)
            }
            SelectedAction::Redirect(redirect) => {
                // Envoy counts a redirect as a direct response (`rq_redirect` is for internal
                // redirects, which Legate does not implement).
                self.stats.rq_direct_response.inc();
                let location = crate::rewrite::redirect_location(redirect, &request, scheme);
                let mut response = Response::new(body::empty());
                *response.status_mut() = http::StatusCode::from_u16(redirect.status)
                    .unwrap_or(http::StatusCode::MOVED_PERMANENTLY);
                if let Ok(v) = HeaderValue::from_str(&location) {
                    response.headers_mut().insert(header::LOCATION, v);
                }
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
                info.response_code_details = Some("direct_response".into());
                crate::router::apply_response_mutations(&selected, response.headers_mut(), info);
                Outcome::Response(response)
            }
            SelectedAction::ClusterNotFound { status, .. } => {
                self.stats.no_cluster.inc();
                Outcome::Local(LocalReply::new(
                    status,
                    "",
                    "cluster_not_found",
                    ResponseFlags::NO_CLUSTER_FOUND,
                ))
            }
            SelectedAction::Forward {
                forward, cluster, ..
            } => {
                let cluster = match cluster {
                    ClusterName::Static(name) => std::borrow::Cow::Borrowed(name),
                    ClusterName::Header(_) => {
                        std::borrow::Cow::Owned(cluster.resolve(&parts.headers).into_owned())
                    }
                };
                let forwarding = crate::router::Forwarding {
                    selected: &selected,
                    forward,
                    cluster: &cluster,
                    body_state,
                    connection: &conn.downstream,
                    upgrade,
                    downstream_upgrade,
                };
                // Boxed: the router's future is large, and the stream's task should not carry it
                // inline through every state change. In a statement of its own: a temporary of
                // the statement that awaits keeps its room in this future too (rustc keeps it
                // alive across the await, rust-lang/rust#69663).
                let forward = legate_core::future::boxed(|| {
                    crate::router::forward(self, forwarding, parts, body, info)
                });
                forward.await
            }
        }
    }

    /// The local reply to a request the HTTP/1 codec refused (Envoy's codec errors and its
    /// request header timeout); the connection closes after it. Envoy counts and logs it as
    /// a request, with no request line (its codec never parsed one).
    fn codec_reply(
        self: &Arc<Self>,
        error: crate::h1::CodecError,
        conn: &Arc<ConnectionState>,
    ) -> Response<Body> {
        let stats = &self.stats;
        if error == crate::h1::CodecError::HEADER_TIMEOUT {
            stats.downstream_rq_header_timeout.inc();
        }
        conn.active_streams.fetch_add(1, Ordering::Relaxed);
        stats.downstream_rq_total.inc();
        stats.downstream_rq_http1_total.inc();
        stats.downstream_rq_active.inc();
        let mut info = conn.stream_info();
        info.protocol = Protocol::Http11;
        let reply = LocalReply::new(
            error.status,
            error.body,
            error.details,
            ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
        );
        info.response_flags.set(reply.flag);
        info.response_code_details = Some(reply.details.to_owned());
        let mut response = self.local_reply(reply, &info);
        self.finish_response_headers(&mut response, &info, true);
        let end = Box::new(StreamEnd {
            info,
            hcm: self.clone(),
            received: Arc::default(),
            conn: conn.clone(),
            answered_early: false,
        });
        self.track(response, end)
    }

    /// A local reply, through `local_reply_config` mappers when configured.
    fn local_reply(&self, reply: LocalReply, info: &StreamInfo) -> Response<Body> {
        let runtime = self.context.runtime.snapshot();
        self.config.local_reply.apply(reply, info, &runtime)
    }

    /// Response headers the connection manager owns: `server`, `x-request-id` echo,
    /// `connection: close` on the last request of a connection.
    fn finish_response_headers(
        &self,
        response: &mut Response<Body>,
        info: &StreamInfo,
        last_request: bool,
    ) {
        let config = &self.config;
        let headers = response.headers_mut();
        match config.server_header_transformation {
            ServerHeaderTransformation::Overwrite => {
                if let Ok(v) = HeaderValue::from_str(&config.server_name) {
                    headers.insert(header::SERVER, v);
                }
            }
            ServerHeaderTransformation::AppendIfAbsent => {
                if !headers.contains_key(header::SERVER)
                    && let Ok(v) = HeaderValue::from_str(&config.server_name)
                {
                    headers.insert(header::SERVER, v);
                }
            }
            ServerHeaderTransformation::PassThrough => {}
        }
        if config.always_set_request_id_in_response
            && let Some(id) = info
                .request_headers
                .get(crate::headers::X_REQUEST_ID)
                .cloned()
        {
            headers.insert(crate::headers::X_REQUEST_ID, id);
        }
        if !config.via.is_empty() {
            // Envoy appends `via` to responses too, local replies included.
            append_via(headers, &config.via);
        }
        if last_request && info.protocol != Protocol::Http2 {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
}

/// A stream whose response does not exist yet. Dropped with its accounting inside (the
/// client went away and the codec dropped the request), it ends as Envoy ends a stream the
/// downstream reset: no response code, flag DC, an access-log line.
struct InFlight(Option<Box<StreamEnd>>);

impl InFlight {
    fn end(&mut self) -> &mut StreamEnd {
        self.0.as_mut().expect("the stream is in flight")
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(end) = self.0.take() {
            end.finish(0, Ended::ByClient);
        }
    }
}

/// What the decode path produced.
pub(crate) enum Outcome {
    Local(LocalReply),
    Response(Response<Body>),
}

impl From<LocalReply> for Outcome {
    fn from(r: LocalReply) -> Self {
        Outcome::Local(r)
    }
}
#[cfg(test)]
#[test]
fn a_downstream_fits_the_allocators_224_byte_class() {
    // Every connection holds one (boxed); a field more moves it to the next class (256).
    assert!(
        std::mem::size_of::<Downstream>() <= 224,
        "{}",
        std::mem::size_of::<Downstream>()
    );
}
