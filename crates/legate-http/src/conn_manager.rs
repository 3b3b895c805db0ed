//! The HTTP connection manager at run time: serves one downstream connection with the codec
//! its config asks for (HTTP/1.1, HTTP/2, or either, detected from the h2c preface), and for
//! each request runs Envoy's request pipeline: header sanitising (`x-forwarded-*`,
//! `x-request-id`, `x-envoy-*`), route selection, then a direct response, a redirect or the
//! router; on the way back, response headers, stats and access logs.
//!
//! Lifecycle of a stream (see LIFECYCLE.md beside this file): request headers in ->
//! [`HttpConnectionManager::handle`] -> response headers out, body streamed through
//! [`StreamBody`] -> when the body ends (or the client goes away) the stream is accounted for
//! once: `downstream_rq_*` stats, `downstream_rq_time`, access logs.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Version, header};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use legate_api::pb::envoy::config::core::v3::http_protocol_options::HeadersWithUnderscoresAction;
use legate_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, PathWithEscapedSlashesAction, ServerHeaderTransformation,
};
use legate_core::access_log::AccessLogger;
use legate_core::runtime::Runtime;
use legate_core::stats::Store;
use legate_core::stream_info::{Protocol, ResponseFlags, StreamInfo};
use legate_core::{Compiled, Errors};
use legate_upstream::ClusterManager;
use legate_upstream::body::{self, Body, BoxError};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::hcm::HcmConfig;
use crate::local_reply::LocalReply;
use crate::route_match::{ClusterName, RouteRequest, SelectedAction};
use crate::stats::HcmStats;

/// What every connection manager of a configuration snapshot shares.
#[derive(Debug)]
pub struct ProxyContext {
    pub clusters: Arc<ClusterManager>,
    pub runtime: Arc<Runtime>,
    pub store: Arc<Store>,
}

/// One downstream connection.
#[derive(Clone, Debug)]
pub struct Downstream {
    pub id: u64,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The worker serving it, which picks the worker's upstream connection pools.
    pub worker: usize,
}

/// A compiled `http_connection_manager` filter with its stats and access logs.
#[derive(Debug)]
pub struct HttpConnectionManager {
    pub config: Arc<HcmConfig>,
    pub stats: HcmStats,
    pub access_logs: Vec<AccessLogger>,
    pub context: Arc<ProxyContext>,
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
}

impl HttpConnectionManager {
    /// Builds the run-time connection manager; opening access-log files can fail.
    pub fn new(config: Arc<HcmConfig>, context: Arc<ProxyContext>) -> Compiled<Self> {
        let mut errors = Errors::default();
        let mut access_logs = Vec::with_capacity(config.access_log.len());
        for (i, log) in config.access_log.iter().enumerate() {
            if let Some(l) = errors.take(&format!("access_log[{i}]"), AccessLogger::compile(log)) {
                access_logs.push(l);
            }
        }
        let stats = HcmStats::new(&context.store, &config.stat_prefix);
        errors.finish(|| HttpConnectionManager {
            config,
            stats,
            access_logs,
            context,
        })
    }

    /// Serves one connection until it closes, or until `drain` turns true (then it closes
    /// gracefully: HTTP/1.1 after the response in flight, HTTP/2 with GOAWAY).
    pub async fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        downstream: Downstream,
        mut drain: watch::Receiver<bool>,
    ) {
        let _ = stream.set_nodelay(true);
        let stats = &self.stats;
        stats.downstream_cx_total.inc();
        stats.downstream_cx_active.inc();
        let opened = Instant::now();
        let state = Arc::new(ConnectionState {
            downstream,
            opened,
            requests: AtomicU32::new(0),
            active_streams: AtomicU32::new(0),
            last_active_ms: AtomicU64::new(0),
            codec: AtomicU32::new(0),
        });
        let builder = self.builder();
        let hcm = self.clone();
        let conn_state = state.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let hcm = hcm.clone();
            let state = conn_state.clone();
            async move { Ok::<_, Infallible>(hcm.handle(req, &state).await) }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        tokio::pin!(conn);
        let max_duration = self.config.max_connection_duration;
        let deadline = async {
            match max_duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let idle_timeout = self.config.idle_timeout;
        let mut idle_check =
            tokio::time::interval(idle_timeout.map_or(Duration::from_secs(3600), |t| {
                (t / 4).max(Duration::from_millis(10))
            }));
        idle_check.tick().await;
        let mut closing = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!("downstream connection {}: {e}", state.downstream.id);
                    }
                    break;
                }
                _ = idle_check.tick(), if idle_timeout.is_some() && !closing => {
                    let idle_since = Duration::from_millis(state.last_active_ms.load(Ordering::Relaxed));
                    let idle = opened.elapsed().saturating_sub(idle_since);
                    if state.active_streams.load(Ordering::Relaxed) == 0
                        && idle_timeout.is_some_and(|t| idle >= t)
                    {
                        stats.downstream_cx_idle_timeout.inc();
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
                _ = &mut deadline, if !closing => {
                    stats.downstream_cx_max_duration_reached.inc();
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                changed = drain.changed(), if !closing => {
                    if changed.is_err() || *drain.borrow() {
                        stats.downstream_cx_drain_close.inc();
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        }
        match state.codec.load(Ordering::Relaxed) {
            1 => stats.downstream_cx_http1_active.dec(),
            2 => stats.downstream_cx_http2_active.dec(),
            _ => {}
        }
        stats.downstream_cx_active.dec();
        stats.downstream_cx_destroy.inc();
        stats
            .downstream_cx_length_ms
            .record(opened.elapsed().as_millis() as u64);
    }

    /// The codec, configured from `codec_type`, `http_protocol_options`,
    /// `http2_protocol_options` and the header limits.
    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let c = &self.config;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        let header_bytes = (c.max_request_headers_kb as usize) * 1024;
        {
            let mut h1 = builder.http1();
            h1.timer(TokioTimer::new())
                .keep_alive(true)
                .max_headers(c.max_headers_count as usize)
                .max_buf_size(header_bytes.max(8192))
                .header_read_timeout(c.request_headers_timeout);
        }
        {
            let h2o = &c.http2;
            let mut h2 = builder.http2();
            h2.timer(TokioTimer::new())
                .max_header_list_size(header_bytes as u32)
                .max_concurrent_streams(
                    h2o.max_concurrent_streams
                        .as_ref()
                        .map_or(2_147_483_647, |v| v.value),
                )
                .initial_stream_window_size(
                    h2o.initial_stream_window_size
                        .as_ref()
                        .map_or(256 * 1024 * 1024, |v| v.value),
                )
                .initial_connection_window_size(
                    h2o.initial_connection_window_size
                        .as_ref()
                        .map_or(256 * 1024 * 1024, |v| v.value),
                )
                // Envoy's flood protection: a client resetting streams faster than it opens
                // them is cut off (CVE-2023-44487, "rapid reset").
                .max_pending_accept_reset_streams(Some(100))
                .max_local_error_reset_streams(Some(1024));
        }
        match c.codec {
            CodecType::Http1 => builder.http1_only(),
            CodecType::Http2 => builder.http2_only(),
            _ => builder,
        }
    }

    /// One request: Envoy's decode path, then the response's encode path.
    async fn handle(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
        conn: &Arc<ConnectionState>,
    ) -> Response<Body> {
        let stats = &self.stats;
        conn.active_streams.fetch_add(1, Ordering::Relaxed);
        let config = &self.config;
        let mut info = StreamInfo::new(conn.downstream.id);
        info.downstream_local_address = Some(conn.downstream.local);
        info.downstream_direct_remote_address = Some(conn.downstream.peer);
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
            if codec == 2 {
                stats.downstream_cx_http2_total.inc();
                stats.downstream_cx_http2_active.inc();
            } else {
                stats.downstream_cx_http1_total.inc();
                stats.downstream_cx_http1_active.inc();
            }
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
        let downstream_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let received = Arc::new(RequestBodyState::default());
        received
            .complete
            .store(body.is_end_stream(), Ordering::Relaxed);
        let request_body = body::boxed(CountingBody {
            inner: body,
            count: received.clone(),
        });

        let outcome = match self.prepare(&mut parts, &mut info, conn) {
            Err(reply) => Outcome::Local(reply),
            Ok(()) => {
                let routed = self.route(
                    parts,
                    request_body,
                    &received,
                    &mut info,
                    conn,
                    upgrade,
                    downstream_upgrade,
                );
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
        let mut response = match outcome {
            Outcome::Local(reply) => {
                info.response_flags.set(reply.flag);
                info.response_code_details = Some(reply.details.to_owned());
                self.local_reply(reply, &info)
            }
            Outcome::Response(r) => r,
        };
        let protocol_error = info
            .response_flags
            .has(ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR);
        self.finish_response_headers(&mut response, &info, last_request || protocol_error);
        if last_request {
            stats.downstream_cx_max_requests_reached.inc();
        }
        let status = response.status().as_u16();
        info.response_code = Some(status);
        if !self.access_logs.is_empty() {
            info.response_headers = Some(response.headers().clone());
        }
        let (parts, body) = response.into_parts();
        let tracked = StreamBody {
            inner: body,
            end: Some(Box::new(StreamEnd {
                info,
                hcm: self.clone(),
                received,
                conn: conn.clone(),
            })),
            sent: 0,
            complete: false,
        };
        Response::from_parts(parts, body::boxed(tracked))
    }

    /// Checks and sanitises the request headers as Envoy's connection manager does. Fills
    /// the request line of `info`.
    fn prepare(
        &self,
        parts: &mut http::request::Parts,
        info: &mut StreamInfo,
        conn: &ConnectionState,
    ) -> Result<(), LocalReply> {
        let config = &self.config;
        if parts.version != Version::HTTP_2
            && parts.headers.contains_key(header::TRANSFER_ENCODING)
            && parts.headers.contains_key(header::CONTENT_LENGTH)
        {
            // Request smuggling: Envoy refuses both framings at once unless
            // `allow_chunked_length` (not supported by Legate yet).
            return Err(LocalReply::new(
                400,
                "",
                "http1.content_length_and_chunked_not_allowed",
                ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
            ));
        }
        if parts.version == Version::HTTP_10 {
            // Envoy refuses HTTP/1.0 unless `accept_http_10` (not supported by Legate yet): a
            // codec-level protocol error, so 426 "Upgrade Required", flag DPE, connection closed.
            return Err(LocalReply::new(
                426,
                "Upgrade Required",
                "low_version",
                ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
            ));
        }
        let authority = match parts.uri.authority() {
            Some(a) => a.as_str().to_owned(),
            None => match parts.headers.get(header::HOST).map(|h| h.to_str()) {
                Some(Ok(h)) => h.to_owned(),
                Some(Err(_)) => {
                    return Err(LocalReply::new(
                        400,
                        "Bad Request",
                        "http1.invalid_characters",
                        ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
                    ));
                }
                None => return Err(LocalReply::new(400, "", "missing_host_header", 0)),
            },
        };
        let mut path = match parts.uri.path_and_query() {
            Some(p) => p.as_str().to_owned(),
            None => "/".to_owned(),
        };
        if parts.uri.scheme().is_some() && parts.version != Version::HTTP_2 {
            // An absolute-form request line: Envoy routes on its path alone.
            self.stats.downstream_rq_non_relative_path.inc();
        }
        if !path.starts_with('/') && parts.method != http::Method::OPTIONS {
            return Err(LocalReply::new(404, "", "absolute_path_rejected", 0));
        }
        if config.normalize_path || config.merge_slashes {
            path = crate::path::normalize(&path, config.normalize_path, config.merge_slashes);
        }
        match config.path_with_escaped_slashes_action {
            PathWithEscapedSlashesAction::RejectRequest
                if crate::path::has_escaped_slashes(&path) =>
            {
                return Err(LocalReply::new(400, "", "path_normalization_failed", 0));
            }
            PathWithEscapedSlashesAction::UnescapeAndRedirect
                if crate::path::has_escaped_slashes(&path) =>
            {
                let mut reply = LocalReply::new(307, "", "path_normalization_redirect", 0);
                reply.location = Some(crate::path::unescape_slashes(&path));
                return Err(reply);
            }
            PathWithEscapedSlashesAction::UnescapeAndForward => {
                path = crate::path::unescape_slashes(&path)
            }
            _ => {}
        }
        match config.headers_with_underscores_action {
            HeadersWithUnderscoresAction::Allow => {}
            action => {
                let underscored: Vec<HeaderName> = parts
                    .headers
                    .keys()
                    .filter(|k| k.as_str().contains('_'))
                    .cloned()
                    .collect();
                if !underscored.is_empty() && action == HeadersWithUnderscoresAction::RejectRequest
                {
                    self.stats
                        .requests_rejected_with_underscores_in_headers
                        .inc();
                    return Err(LocalReply::new(
                        400,
                        "",
                        "unexpected_underscore",
                        ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
                    ));
                }
                for name in underscored {
                    self.stats.dropped_headers_with_underscores.inc();
                    parts.headers.remove(name);
                }
            }
        }
        let host = if config.strip_any_host_port {
            strip_port(&authority).to_owned()
        } else if config.strip_matching_host_port
            && port_of(&authority) == Some(conn.downstream.local.port())
        {
            strip_port(&authority).to_owned()
        } else {
            authority
        };

        // The downstream address: the connection's peer on the edge, else from x-forwarded-for.
        let peer_ip = conn.downstream.peer.ip();
        let remote = if config.use_remote_address {
            conn.downstream.peer
        } else {
            xff_address(&parts.headers, config.xff_num_trusted_hops)
                .map(|ip| SocketAddr::new(ip, 0))
                .unwrap_or(conn.downstream.peer)
        };
        info.downstream_remote_address = Some(remote);
        let internal = self.is_internal(remote.ip());
        if config.use_remote_address {
            if !config.skip_xff_append {
                append_xff(&mut parts.headers, peer_ip);
            }
            if !internal {
                // Edge requests may not steer Envoy: drop their x-envoy-* headers.
                let envoy_headers: Vec<HeaderName> = parts
                    .headers
                    .keys()
                    .filter(|k| k.as_str().starts_with("x-envoy-"))
                    .cloned()
                    .collect();
                for name in envoy_headers {
                    parts.headers.remove(name);
                }
            } else {
                parts
                    .headers
                    .insert("x-envoy-internal", HeaderValue::from_static("true"));
            }
            parts
                .headers
                .insert("x-forwarded-proto", HeaderValue::from_static("http"));
        } else if !parts.headers.contains_key("x-forwarded-proto") {
            parts
                .headers
                .insert("x-forwarded-proto", HeaderValue::from_static("http"));
        }
        if !config.use_remote_address && !internal {
            // Envoy's `cleanInternalHeaders`: a request not known to be internal may not steer
            // the router (timeouts, retries), whether or not Envoy is the edge.
            for name in ENVOY_CONTROL_HEADERS {
                parts.headers.remove(*name);
            }
        }
        let regenerate =
            config.use_remote_address && !internal && !config.preserve_external_request_id;
        if config.generate_request_id && (regenerate || !parts.headers.contains_key("x-request-id"))
        {
            parts.headers.insert("x-request-id", uuid_v4());
        }
        if !internal {
            for name in &config.route_table.internal_only_headers {
                parts.headers.remove(name);
            }
        }
        if !config.via.is_empty() {
            append_via(&mut parts.headers, &config.via);
        }

        info.request.method = parts.method.as_str().to_owned();
        info.request.path = path;
        info.request.authority = host;
        info.request.scheme = "http".to_owned();
        if self.logs_request_headers() {
            info.request_headers = parts.headers.clone();
        }
        Ok(())
    }

    /// Whether streams keep a copy of their request headers (for access logs).
    pub(crate) fn logs_request_headers(&self) -> bool {
        !self.access_logs.is_empty()
    }

    /// Envoy's internal-request check: the address is in `internal_address_config` ranges.
    fn is_internal(&self, ip: IpAddr) -> bool {
        self.config
            .internal_cidrs
            .iter()
            .any(|&(net, len)| crate::path::in_cidr(ip, net, len))
    }

    async fn route(
        &self,
        parts: http::request::Parts,
        body: Body,
        body_state: &RequestBodyState,
        info: &mut StreamInfo,
        conn: &ConnectionState,
        upgrade: Option<String>,
        downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
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
            "http",
            &parts.headers,
        );
        // The runtime snapshot is a short-lived guard: taken for matching, dropped before any
        // await.
        let selected = {
            let runtime = self.context.runtime.snapshot();
            self.config
                .route_table
                .route(&request, &runtime, fastrand::u64(..))
        };
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
                let location = crate::rewrite::direct_response_location(status, &request, scheme);
                let mut response = Response::new(body::full(Bytes::copy_from_slice(body)));
                *response.status_mut() =
                    http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
                let headers = response.headers_mut();
                if !body.is_empty() {
                    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                }
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                if let Some(v) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
                    headers.insert(header::LOCATION, v);
                }
                info.response_code_details = Some("direct_response".into());
                crate::router::apply_response_mutations(&selected, response.headers_mut(), info);
                Outcome::Response(response)
            }
            SelectedAction::Redirect(redirect) => {
                self.stats.rq_redirect.inc();
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
                    worker: conn.downstream.worker,
                    upgrade,
                    downstream_upgrade,
                };
                crate::router::forward(self, forwarding, parts, body, info).await
            }
        }
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
            && let Some(id) = info.request_headers.get("x-request-id").cloned()
        {
            headers.insert("x-request-id", id);
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

/// The accounting done once when a stream ends.
struct StreamEnd {
    info: StreamInfo,
    hcm: Arc<HttpConnectionManager>,
    received: Arc<RequestBodyState>,
    conn: Arc<ConnectionState>,
}

impl StreamEnd {
    fn finish(mut self: Box<Self>, sent: u64, complete: bool) {
        let info = &mut self.info;
        let elapsed = info.start.elapsed();
        info.duration = Some(elapsed);
        info.last_downstream_tx_byte = Some(elapsed);
        info.bytes_sent = sent;
        info.bytes_received = self.received.bytes.load(Ordering::Relaxed);
        if !complete {
            info.response_flags
                .set(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
        }
        let conn = &self.conn;
        conn.last_active_ms
            .store(conn.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
        conn.active_streams.fetch_sub(1, Ordering::Relaxed);
        let stats = &self.hcm.stats;
        stats.downstream_rq_active.dec();
        if let Some(code) = info.response_code {
            stats.response(code);
        }
        stats.downstream_rq_completed.inc();
        stats.downstream_rq_time.record(elapsed.as_millis() as u64);
        if !self.hcm.access_logs.is_empty() {
            let runtime = self.hcm.context.runtime.snapshot();
            for log in &self.hcm.access_logs {
                log.log(info, &runtime);
            }
        }
    }
}

/// The response body sent downstream: counts bytes and accounts for the stream when it ends
/// or is dropped.
struct StreamBody {
    inner: Body,
    end: Option<Box<StreamEnd>>,
    sent: u64,
    complete: bool,
}

impl http_body::Body for StreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                }
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(end) = self.end.as_mut()
                {
                    end.info.response_trailers = Some(trailers.clone());
                }
            }
            Poll::Ready(None) => self.complete = true,
            _ => {}
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

impl Drop for StreamBody {
    fn drop(&mut self) {
        if let Some(end) = self.end.take() {
            let complete = self.complete || self.inner.is_end_stream();
            end.finish(self.sent, complete);
        }
    }
}

/// What the connection manager learns of a request body as it streams upstream.
#[derive(Debug, Default)]
pub(crate) struct RequestBodyState {
    pub bytes: AtomicU64,
    /// The client sent a malformed body (a bad chunk size, a short body): a downstream
    /// protocol error, not an upstream failure.
    pub malformed: std::sync::atomic::AtomicBool,
    /// The whole body has been read.
    pub complete: std::sync::atomic::AtomicBool,
}

/// A request body that counts the bytes it passes.
struct CountingBody {
    inner: Incoming,
    count: Arc<RequestBodyState>,
}

impl http_body::Body for CountingBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.count
                        .bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(Some(Err(_))) => self.count.malformed.store(true, Ordering::Relaxed),
            Poll::Ready(None) => self.count.complete.store(true, Ordering::Relaxed),
            Poll::Pending => {}
        }
        if self.inner.is_end_stream() {
            self.count.complete.store(true, Ordering::Relaxed);
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

/// The `x-envoy-*` request headers Envoy removes from requests that are not internal
/// (`ConnectionManagerUtility::cleanInternalHeaders`), and the client's own
/// `x-envoy-internal`.
const ENVOY_CONTROL_HEADERS: &[&str] = &[
    "x-envoy-internal",
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace",
    "x-envoy-ip-tags",
    "x-envoy-original-url",
    "x-envoy-hedge-on-per-try-timeout",
];

/// The scheme the client used, as Envoy trusts it: `x-forwarded-proto` (set or validated by
/// [`HttpConnectionManager::prepare`]), `http` otherwise.
fn forwarded_proto(headers: &HeaderMap) -> &str {
    match headers.get("x-forwarded-proto").map(|v| v.as_bytes()) {
        Some(b"https") => "https",
        _ => "http",
    }
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.rfind(':') {
        Some(i) if authority[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &authority[..i],
        _ => authority,
    }
}

fn port_of(authority: &str) -> Option<u16> {
    let host = strip_port(authority);
    authority.get(host.len() + 1..).and_then(|p| p.parse().ok())
}

/// The address `xff_num_trusted_hops` from the right of `x-forwarded-for` (Envoy's
/// `getLastAddressFromXFF`), when the header has that many.
fn xff_address(headers: &HeaderMap, trusted_hops: u32) -> Option<IpAddr> {
    let mut entries: Vec<&str> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let text = value.to_str().ok()?;
        entries.extend(text.split(',').map(str::trim).filter(|s| !s.is_empty()));
    }
    let index = entries.len().checked_sub(1 + trusted_hops as usize)?;
    entries[index].parse().ok()
}

fn append_xff(headers: &mut HeaderMap, ip: IpAddr) {
    append_header(
        headers,
        HeaderName::from_static("x-forwarded-for"),
        &ip.to_string(),
    );
}

/// Appends to a header as Envoy does: a comma-separated list in one header.
fn append_header(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    let joined = match headers.get(&name).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.is_empty() => format!("{existing},{value}"),
        _ => value.to_owned(),
    };
    if let Ok(v) = HeaderValue::from_str(&joined) {
        headers.insert(name, v);
    }
}

/// Appends to `via` as Envoy does: `, ` between entries (unlike `x-forwarded-for`).
fn append_via(headers: &mut HeaderMap, via: &str) {
    let joined = match headers.get(header::VIA).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.is_empty() => format!("{existing}, {via}"),
        _ => via.to_owned(),
    };
    if let Ok(v) = HeaderValue::from_str(&joined) {
        headers.insert(header::VIA, v);
    }
}

/// A random (version 4) UUID, as Envoy's `x-request-id`.
fn uuid_v4() -> HeaderValue {
    let hi = fastrand::u64(..);
    let lo = fastrand::u64(..);
    let hi = (hi & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
    let lo = (lo & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    let text = format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    );
    HeaderValue::from_str(&text)
        .unwrap_or_else(|_| HeaderValue::from_static("00000000-0000-4000-8000-000000000000"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xff_picks_the_trusted_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 2.2.2.2,3.3.3.3"),
        );
        assert_eq!(xff_address(&h, 0), Some("3.3.3.3".parse().unwrap()));
        assert_eq!(xff_address(&h, 1), Some("2.2.2.2".parse().unwrap()));
        assert_eq!(xff_address(&h, 3), None);
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("a.com:80"), "a.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(port_of("a.com:8080"), Some(8080));
        assert_eq!(port_of("a.com"), None);
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = uuid_v4();
        let s = id.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
    }
}
