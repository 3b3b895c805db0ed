//! The router, the terminal HTTP filter: route action -> cluster -> load balancer -> host ->
//! the worker's connection pool; the route timeout (15 s by default, overridden by
//! `x-envoy-upstream-rq-timeout-ms`), circuit breakers, upgrades, and Envoy's local replies and
//! response flags for every way an upstream can fail.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, Uri, Version, header};

use http_body::{Frame, SizeHint};
use legate_core::stream_info::{Protocol as DownstreamProtocol, ResponseFlags, StreamInfo};
use legate_upstream::body::{self, Body, BoxError};
use legate_upstream::breaker::{Limit, ResourceGuard};
use legate_upstream::host::ActiveRequest;
use legate_upstream::pool::{self, Protocol, ResponseBody, UpstreamError};
use legate_upstream::{Cluster, UpstreamProtocol};

use crate::conn_manager::{HttpConnectionManager, Outcome, RequestBodyState};
use crate::hash_policy::HashInput;
use crate::headers::{
    X_ENVOY_EXPECTED_RQ_TIMEOUT_MS, X_ENVOY_INTERNAL, X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS,
    X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS, X_ENVOY_UPSTREAM_SERVICE_TIME,
};
use crate::local_reply::LocalReply;
use crate::rewrite::AuthorityRewrite;
use crate::route::Forward;
use crate::route_match::{RouteRequest, Selected};

/// What the connection manager hands the router for one request.
pub(crate) struct Forwarding<'a> {
    pub selected: &'a Selected<'a>,
    pub forward: &'a Forward,
    pub cluster: &'a str,
    pub body_state: &'a RequestBodyState,
    /// The downstream connection: its worker, its addresses (a restored local address for an
    /// ORIGINAL_DST cluster, both for an upstream PROXY header).
    pub connection: &'a crate::conn_manager::Downstream,
    /// The `Upgrade` type the client asked for (lowercase), if any.
    pub upgrade: Option<String>,
    pub downstream_upgrade: Option<crate::h1::OnUpgrade>,
}

/// The details of the local reply refusing an upgrade the route does not allow (403).
pub(crate) const UPGRADE_FAILED: &str = "upgrade_failed";

/// The upgrade a request asks for: `Upgrade: <type>` with `Connection: upgrade`.
pub(crate) fn requested_upgrade<B>(req: &Request<B>) -> Option<String> {
    if req.version() == Version::HTTP_2 {
        return None;
    }
    let connection_upgrade = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !connection_upgrade {
        return None;
    }
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase)
}

/// The hop-by-hop headers, never forwarded (RFC 9110 §7.6.1) — but `te: trailers` survives, as
/// gRPC needs it. `proxy-authenticate` stays last: the others are [`connection_specific`].
static HOP_BY_HOP: [header::HeaderName; 7] = [
    header::CONNECTION,
    header::HeaderName::from_static("keep-alive"),
    header::HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
    header::PROXY_AUTHENTICATE,
];

/// How many of [`HOP_BY_HOP`], from the first, HTTP/2 forbids outright (RFC 9113 §8.2.2): all
/// but `proxy-authenticate`.
const CONNECTION_SPECIFIC: usize = HOP_BY_HOP.len() - 1;

/// The hop-by-hop headers HTTP/2 forbids outright (RFC 9113 §8.2.2): all of [`HOP_BY_HOP`]
/// but `proxy-authenticate`.
pub(crate) fn connection_specific() -> &'static [header::HeaderName] {
    &HOP_BY_HOP[..CONNECTION_SPECIFIC]
}

/// Whether `name` is one of [`connection_specific`].
pub(crate) fn is_connection_specific(name: &header::HeaderName) -> bool {
    hop_by_hop_index(name).is_some_and(|i| i < CONNECTION_SPECIFIC)
}

/// Where a header is in [`HOP_BY_HOP`], if it is hop-by-hop.
fn hop_by_hop_index(name: &header::HeaderName) -> Option<usize> {
    // By length first: most names are not compared at all.
    let name = name.as_str();
    let index = match name.len() {
        10 if name == "connection" => 0,
        10 if name == "keep-alive" => 1,
        16 if name == "proxy-connection" => 2,
        17 if name == "transfer-encoding" => 3,
        7 if name == "upgrade" => 4,
        2 if name == "te" => 5,
        18 if name == "proxy-authenticate" => 6,
        _ => return None,
    };
    Some(index)
}

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names present, then only those are removed: most messages carry none
    // or one (`connection: keep-alive`), and a removal hashes its name whether it is there or
    // not.
    let present = headers
        .keys()
        .filter_map(hop_by_hop_index)
        .fold(0u8, |set, i| set | 1 << i);
    if present == 0 {
        return;
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) == 0 {
            continue;
        }
        if keep_upgrade && (name == header::CONNECTION || name == header::UPGRADE) {
            continue;
        }
        if name == header::TE {
            let trailers = headers
                .get_all(header::TE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
            headers.remove(header::TE);
            if trailers {
                headers.insert(header::TE, HeaderValue::from_static("trailers"));
            }
            continue;
        }
        headers.remove(name);
    }
}

/// HTTP/2 sends each cookie as its own header; HTTP/1.1 wants one `cookie` header, joined with
/// `; ` (RFC 9113 §8.2.3), as Envoy joins them when bridging.
fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().count() < 2 {
        return;
    }
    let joined: Vec<&str> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if let Ok(v) = HeaderValue::from_str(&joined.join("; ")) {
        headers.insert(header::COOKIE, v);
    }
}

/// Envoy's local reply for a failure before response headers:
/// `upstream connect error or disconnect/reset before headers. reset reason: <reason>`.
fn reset_reply(e: &UpstreamError) -> LocalReply {
    // Envoy 1.40 names the reset reason only; the transport failure reason goes to
    // `%UPSTREAM_TRANSPORT_FAILURE_REASON%`.
    let body = format!(
        "upstream connect error or disconnect/reset before headers. reset reason: {}",
        e.reset_reason()
    );
    let (status, flag, details) = match e {
        UpstreamError::ConnectFailure(_) | UpstreamError::ConnectTimeout => (
            503,
            ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
            "upstream_reset_before_response_started{remote_connection_failure}",
        ),
        UpstreamError::Overflow => (
            503,
            ResponseFlags::UPSTREAM_OVERFLOW,
            "upstream_reset_before_response_started{overflow}",
        ),
        UpstreamError::ConnectionTermination(_) => (
            503,
            ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
            "upstream_reset_before_response_started{connection_termination}",
        ),
        UpstreamError::RemoteReset(_) => (
            503,
            ResponseFlags::UPSTREAM_REMOTE_RESET,
            "upstream_reset_before_response_started{remote_reset}",
        ),
        UpstreamError::ProtocolError(_) => (
            502,
            ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
            "upstream_reset_before_response_started{protocol_error}",
        ),
    };
    let reply = LocalReply::new(status, body, details, flag);
    if matches!(e, UpstreamError::Overflow) {
        // Envoy marks circuit-breaker rejections so that clients can back off.
        reply.with_header("x-envoy-overloaded", "true")
    } else {
        reply
    }
}

/// The route timeout: `x-envoy-upstream-rq-timeout-ms` when given (and then removed), else the
/// route's; zero disables it.
fn route_timeout(forward: &Forward, headers: &mut HeaderMap) -> Option<Duration> {
    let millis = |v: Option<HeaderValue>| {
        v.and_then(|v| v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()))
            .map(Duration::from_millis)
    };
    if !crate::headers::any_envoy_header(headers) {
        return (!forward.timeout.is_zero()).then_some(forward.timeout);
    }
    let mut timeout =
        millis(headers.remove(X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS)).unwrap_or(forward.timeout);
    // Legate makes one attempt (retries are not implemented yet), so a per-try timeout bounds
    // the request when it is the shorter.
    if let Some(per_try) = millis(headers.remove(X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS))
        && !per_try.is_zero()
        && (timeout.is_zero() || per_try < timeout)
    {
        timeout = per_try;
    }
    (!timeout.is_zero()).then_some(timeout)
}

/// Sends the request to a host of the route's cluster and returns its response, or the local
/// reply for the way it failed. (A function returning an async block rather than an `async
/// fn`: the block uses `f` and `parts` where it captured them, where an `async fn` would hold a
/// second copy of its arguments in its future.)
pub(crate) fn forward<'a>(
    hcm: &'a HttpConnectionManager,
    f: Forwarding<'a>,
    mut parts: http::request::Parts,
    request_body: Body,
    info: &'a mut StreamInfo,
) -> impl Future<Output = Outcome> + 'a {
    async move {
        let stats = &hcm.stats;
        let Some(cluster) = hcm.context.clusters.get(f.cluster) else {
            stats.no_cluster.inc();
            return LocalReply::new(
                f.forward.cluster_not_found_status,
                "",
                "cluster_not_found",
                ResponseFlags::NO_CLUSTER_FOUND,
            )
            .into();
        };
        info.upstream_cluster = Some(cluster.name.clone());

        // Upgrades: the route's `upgrade_configs` override the connection manager's.
        if let Some(kind) = &f.upgrade {
            let enabled = f
                .forward
                .upgrades
                .iter()
                .find(|(t, _)| t == kind)
                .or_else(|| hcm.config.upgrades.iter().find(|(t, _)| t == kind))
                .is_some_and(|(_, on)| *on);
            if !enabled {
                stats.downstream_rq_ws_on_non_ws_route.inc();
                return LocalReply::new(403, "", UPGRADE_FAILED, 0).closing().into();
            }
            // Other requests were counted by the connection manager.
            stats.rq_total.inc();
        }

        let timeout = route_timeout(f.forward, &mut parts.headers);
        // The route's `hash_policy`, evaluated (as Envoy's `computeHashKey`) only when the
        // cluster balances on a hash; the key takes the place of the random number in the host
        // choice. A generated cookie goes out with the upstream's response.
        let mut set_cookies = Vec::new();
        let hash = match &f.forward.hash_policy {
            Some(policy) if cluster.uses_hash() => policy.generate(
                &HashInput {
                    headers: &parts.headers,
                    method: parts.method.as_str(),
                    path: &info.request.path,
                    authority: &info.request.authority,
                    scheme: &info.request.scheme,
                    remote: info.downstream_remote_address,
                    connection: info
                        .downstream_direct_remote_address
                        .zip(info.downstream_local_address),
                },
                &mut set_cookies,
            ),
            _ => None,
        };
        let pick = hash.unwrap_or_else(|| fastrand::u64(..));
        let lb_context = legate_upstream::original_dst::LbContext {
            restored_local: f.connection.local_restored.then_some(f.connection.local),
            headers: Some(&parts.headers),
        };
        let Some(host) = cluster.choose_host_for(pick, &lb_context) else {
            cluster.stats.traffic.upstream_cx_none_healthy().inc();
            return LocalReply::new(
                503,
                "no healthy upstream",
                "no_healthy_upstream",
                ResponseFlags::NO_HEALTHY_UPSTREAM,
            )
            .into();
        };
        if host.pipe.is_some() {
            info.upstream_pipe = host.pipe.clone();
        } else {
            info.upstream_host = Some(host.address);
        }
        let Some(rq_guard) = cluster.breakers.try_acquire(Limit::Requests) else {
            cluster.stats.traffic.upstream_rq_active_overflow().inc();
            return reset_reply(&UpstreamError::Overflow).into();
        };

        // Envoy splits the cluster's response stats by the request's origin.
        let internal = parts
            .headers
            .get(X_ENVOY_INTERNAL)
            .is_some_and(|v| v.as_bytes() == b"true");
        // The request as the upstream sees it: rewrites, then header mutations.
        let rewritten = rewrite_request(f.forward, &mut parts, info);
        apply_request_mutations(f.selected, &mut parts.headers, info);
        if hcm.logs_request_headers() {
            // Envoy's access log sees the request as the router changed it.
            info.request_headers = parts.headers.clone();
            if let Some(path) = &rewritten.path {
                info.request.path.clone_from(path);
            }
            if let Some(authority) = &rewritten.authority {
                info.request.authority.clone_from(authority);
            }
        }
        strip_hop_by_hop(&mut parts.headers, f.upgrade.is_some());
        // `proxy_100_continue` is off (Envoy's default): the `100 Continue` comes from the proxy
        // (both codecs send it as the request arrives) and the expectation stops here.
        if crate::headers::expects_continue(&parts.headers) {
            parts.headers.remove(header::EXPECT);
        }
        if let Some(timeout) = timeout.filter(|_| !hcm.config.suppress_envoy_headers) {
            parts.headers.insert(
                X_ENVOY_EXPECTED_RQ_TIMEOUT_MS,
                crate::headers::decimal(timeout.as_millis() as u64),
            );
        }
        let protocol = match cluster.config.protocol {
            UpstreamProtocol::Http2 => Protocol::Http2,
            UpstreamProtocol::Http1 => Protocol::Http1,
            UpstreamProtocol::UseDownstream if info.protocol == DownstreamProtocol::Http2 => {
                Protocol::Http2
            }
            UpstreamProtocol::UseDownstream => Protocol::Http1,
        };
        let path = rewritten.path.as_deref().unwrap_or(&info.request.path);
        let authority = rewritten
            .authority
            .as_deref()
            .unwrap_or(&info.request.authority);
        match protocol {
            Protocol::Http1 => {
                if info.protocol == DownstreamProtocol::Http2 {
                    join_cookies(&mut parts.headers);
                }
                parts.version = Version::HTTP_11;
                // An HTTP/1.1 request in origin form whose path is unchanged keeps its target and
                // its `host`; anything else is made anew.
                let same_target = parts.uri.scheme().is_none()
                    && parts.uri.path_and_query().map(|p| p.as_str()) == Some(path);
                if !same_target {
                    parts.uri = path.parse().unwrap_or_else(|_| Uri::from_static("/"));
                }
                // Exactly one `host`, the authority (a repeated `host` goes out as one).
                let mut hosts = parts.headers.get_all(header::HOST).iter();
                let same_host = hosts
                    .next()
                    .is_some_and(|h| h.as_bytes() == authority.as_bytes())
                    && hosts.next().is_none();
                if !same_host && let Ok(v) = HeaderValue::from_str(authority) {
                    parts.headers.insert(header::HOST, v);
                }
            }
            Protocol::Http2 => {
                parts.version = Version::HTTP_2;
                parts.uri = format!("http://{authority}{path}")
                    .parse()
                    .unwrap_or_else(|_| Uri::from_static("/"));
                parts.headers.remove(header::HOST);
            }
        }
        let upstream_request = Request::from_parts(parts, request_body);

        let cstats = &cluster.stats;
        cstats.traffic.upstream_rq_active().inc();
        let active = ActiveRequest::new(host.clone());
        info.attempt_count = 1;
        // One reading of the clock for the attempt's start, its timeouts and the stream's
        // timing.
        let started = Instant::now();
        let deadline = timeout.map(|t| started + t);
        info.first_upstream_tx_byte = Some(started.saturating_duration_since(info.start));
        // The downstream connection's addresses (not `x-forwarded-for`'s) and the TLVs its
        // PROXY header passed on, for a cluster whose connections start with a PROXY header.
        let connection = f.connection;
        let downstream = cluster.config.proxy_protocol.as_ref().and_then(|_| {
            connection
                .proxy_protocol_data(&[], legate_core::proxy_protocol::MergePolicy::default())
                .map(Box::new)
        });
        // Waiting for response headers: the route timeout, and the stream idle timeout (the
        // route's `idle_timeout`, else the connection manager's `stream_idle_timeout`).
        let idle = f
            .forward
            .idle_timeout
            .or(hcm.config.stream_idle_timeout)
            .filter(|t| !t.is_zero());
        // One timer for whichever of the two comes first.
        let idle_at = idle.map(|t| started + t);
        let (first, idle_first) = match (deadline, idle_at) {
            (Some(route), Some(idle)) if idle < route => (Some(idle), true),
            (Some(route), _) => (Some(route), false),
            (None, idle) => (idle, idle.is_some()),
        };
        // Both pinned where they are (the send's future is large: moving it costs a copy). The
        // response is looked at first, so one that came as the timer fired is taken.
        let result = {
            let mut sent = std::pin::pin!(pool::send(
                &cluster,
                &host,
                f.connection.worker as usize,
                protocol,
                upstream_request,
                downstream,
            ));
            let mut timer = std::pin::pin!(first.map(|at| tokio::time::sleep_until(at.into())));
            std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = sent.as_mut().poll(cx) {
                    return Poll::Ready(Some(r));
                }
                match timer.as_mut().as_pin_mut() {
                    Some(timer) => timer.poll(cx).map(|()| None),
                    None => Poll::Pending,
                }
            })
            .await
        };
        let result = match result {
            Some(r) => r,
            None if idle_first => {
                cstats.traffic.upstream_rq_active().dec();
                stats.downstream_rq_idle_timeout.inc();
                // Envoy's `onIdleTimeout`: 504 once the client has sent its whole request (the
                // upstream is the one stalling), 408 while the request is still incomplete.
                let complete = f
                    .body_state
                    .complete
                    .load(std::sync::atomic::Ordering::Relaxed);
                let status = if complete { 504 } else { 408 };
                return LocalReply::new(
                    status,
                    "stream timeout",
                    "stream_idle_timeout",
                    ResponseFlags::STREAM_IDLE_TIMEOUT,
                )
                .into();
            }
            None => {
                cstats.traffic.upstream_rq_active().dec();
                cstats.traffic.upstream_rq_timeout().inc();
                host.rq_timeout
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                cstats.response(504, started.elapsed().as_millis() as u64, internal);
                return LocalReply::new(
                    504,
                    "upstream request timeout",
                    "upstream_response_timeout",
                    ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
                )
                .into();
            }
        };
        // `%UPSTREAM_PROTOCOL%`: the request reached a connection (Envoy's upstream info has the
        // protocol from then on): a response came, or the connection ended or reset under it.
        if !matches!(
            result,
            Err(UpstreamError::ConnectFailure(_)
                | UpstreamError::ConnectTimeout
                | UpstreamError::Overflow)
        ) {
            info.upstream_protocol = Some(match protocol {
                Protocol::Http1 => DownstreamProtocol::Http11,
                Protocol::Http2 => DownstreamProtocol::Http2,
            });
        }
        let mut response = match result {
            Ok(r) => {
                info.upstream_local_address = r.body().local_address();
                r
            }
            Err(_)
                if f.body_state
                    .malformed
                    .load(std::sync::atomic::Ordering::Relaxed) =>
            {
                // The upstream request failed because the client's body was malformed: Envoy's
                // codec answers such a request with 400 and closes the connection.
                cstats.traffic.upstream_rq_active().dec();
                cstats.traffic.upstream_rq_tx_reset().inc();
                return LocalReply::new(
                    400,
                    "Bad Request",
                    "codec_error",
                    ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
                )
                .into();
            }
            Err(e) => {
                cstats.traffic.upstream_rq_active().dec();
                if !matches!(
                    e,
                    UpstreamError::ConnectFailure(_)
                        | UpstreamError::ConnectTimeout
                        | UpstreamError::Overflow
                ) {
                    cstats.traffic.upstream_rq_rx_reset().inc();
                }
                host.rq_error
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some(why) = e.transport_failure_reason() {
                    info.upstream_transport_failure_reason = Some(why.to_owned());
                }
                let reply = reset_reply(&e);
                if reply.status >= 500 {
                    cstats.response(reply.status, started.elapsed().as_millis() as u64, internal);
                }
                return reply.into();
            }
        };
        let now = Instant::now();
        let service_ms = now.saturating_duration_since(started).as_millis() as u64;
        info.first_upstream_rx_byte = Some(now.saturating_duration_since(info.start));
        let status = response.status().as_u16();
        cstats.response(status, service_ms, internal);
        if status < 500 {
            host.rq_success
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        } else {
            host.rq_error
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        info.response_code_details = Some("via_upstream".into());

        let switching = status == 101;
        strip_hop_by_hop(response.headers_mut(), switching);
        // Envoy leaves it off a 101 (Switching Protocols), and off a response that came before
        // the request had ended (it measures from the request's end).
        if !switching
            && f.body_state
                .complete
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            response.headers_mut().insert(
                X_ENVOY_UPSTREAM_SERVICE_TIME,
                crate::headers::decimal(service_ms),
            );
        }
        // `%RESPONSE_CODE%` and `%RESP(...)%` in response header mutations see the upstream's
        // response.
        info.response_code = Some(status);
        if f.selected
            .response_mutations()
            .any(|m| m.add.iter().any(|a| a.formatter.is_some()))
        {
            info.response_headers = Some(response.headers().clone());
        }
        apply_response_mutations(f.selected, response.headers_mut(), info);
        for cookie in set_cookies {
            response.headers_mut().append(header::SET_COOKIE, cookie);
        }

        if switching {
            if let Some(downstream) = f.downstream_upgrade {
                let upstream = response.body_mut().upgrade();
                stats.downstream_cx_upgrades_total.inc();
                stats.downstream_cx_upgrades_active.inc();
                let upgrades_active = stats.downstream_cx_upgrades_active;
                let cluster = cluster.clone();
                tokio::spawn(async move {
                    tunnel(downstream, upstream, active, rq_guard, cluster).await;
                    upgrades_active.dec();
                });
            }
            return Outcome::Response(response.map(|_| body::empty()));
        }
        let (mut parts, upstream_body) = response.into_parts();
        // The downstream codec writes its own version: an HTTP/1.0 upstream's response goes to an
        // HTTP/1.1 client as HTTP/1.1, as Envoy sends it.
        parts.version = Version::HTTP_11;
        let tracked = UpstreamBody {
            inner: upstream_body,
            deadline,
            idle,
            timer: None,
            streaming: false,
            idle_timeouts: stats.downstream_rq_idle_timeout,
            _guards: Some((active, rq_guard)),
            cluster,
        };
        Outcome::Response(Response::from_parts(parts, body::boxed(tracked)))
    }
}

/// The path and authority a route's rewrites give the upstream (`None`: the request's own).
struct Rewritten {
    path: Option<String>,
    authority: Option<String>,
}

/// Applies the route's path and host rewrites, and records the originals in
/// `x-envoy-original-path` / `x-envoy-original-host` as Envoy does.
fn rewrite_request(
    forward: &Forward,
    parts: &mut http::request::Parts,
    info: &StreamInfo,
) -> Rewritten {
    let original_path = info.request.path.as_str();
    let original_authority = info.request.authority.as_str();
    let (path, authority) = {
        let request = RouteRequest::new(
            parts.method.as_str(),
            original_path,
            original_authority,
            "http",
            &parts.headers,
        );
        let rewrite = crate::rewrite::upstream_rewrite(forward, &request);
        let authority = match rewrite.authority {
            // `auto_host_rewrite` uses the host's hostname, which STATIC hosts do not have.
            AuthorityRewrite::Keep | AuthorityRewrite::UpstreamHostname => None,
            AuthorityRewrite::Set(h) => Some(h.to_owned()),
        };
        (rewrite.path, authority)
    };
    if path.is_some()
        && let Ok(v) = HeaderValue::from_str(original_path)
    {
        parts
            .headers
            .insert(crate::rewrite::X_ENVOY_ORIGINAL_PATH, v);
    }
    if authority.is_some()
        && !original_authority.is_empty()
        && let Ok(v) = HeaderValue::from_str(original_authority)
    {
        parts
            .headers
            .insert(crate::rewrite::X_ENVOY_ORIGINAL_HOST, v);
    }
    Rewritten { path, authority }
}

/// Copies bytes both ways between an upgraded client and upstream (WebSocket and friends)
/// until either side ends its stream: then the other side's is ended too and the tunnel
/// closes, as Envoy closes an upgraded stream (no half-closed tunnel waits on a client).
async fn tunnel(
    downstream: crate::h1::OnUpgrade,
    upstream: Option<pool::Upgraded>,
    _active: ActiveRequest,
    _guard: ResourceGuard,
    cluster: Arc<Cluster>,
) {
    let (Some(down), Some(up)) = (downstream.upgraded().await, upstream) else {
        cluster.stats.traffic.upstream_rq_active().dec();
        return;
    };
    use tokio::io::AsyncWriteExt as _;
    let (mut down_read, mut down_write) = tokio::io::split(down);
    let (mut up_read, mut up_write) = tokio::io::split(up);
    tokio::select! {
        _ = tokio::io::copy(&mut down_read, &mut up_write) => {
            // The client ended first: the proxy closes the upstream connection.
            let _ = up_write.shutdown().await;
        }
        _ = tokio::io::copy(&mut up_read, &mut down_write) => {
            let _ = down_write.shutdown().await;
        }
    }
    cluster.stats.traffic.upstream_rq_active().dec();
}

/// Request header mutations of the selected route (weighted cluster, route, virtual host,
/// route configuration, in Envoy's order), with `%VARIABLE%`s expanded for this stream.
pub(crate) fn apply_request_mutations(
    selected: &Selected<'_>,
    headers: &mut HeaderMap,
    info: &StreamInfo,
) {
    selected.apply_request_mutations(headers, &|add| crate::substitution::expand(add, info));
}

pub(crate) fn apply_response_mutations(
    selected: &Selected<'_>,
    headers: &mut HeaderMap,
    info: &StreamInfo,
) {
    selected.apply_response_mutations(headers, &|add| crate::substitution::expand(add, info));
}

/// The upstream response body on its way downstream: holds the request's host and breaker
/// accounting until the body ends, and enforces the rest of the route timeout and the stream
/// idle timeout.
struct UpstreamBody {
    inner: ResponseBody,
    /// When the route timeout ends the response.
    deadline: Option<Instant>,
    /// The stream idle timeout: the longest wait for the next frame.
    idle: Option<Duration>,
    /// One timer for whichever of the two comes first, armed only once the body has to wait
    /// (a body already received costs no timer) and restarted by every frame after that.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A data frame has gone through.
    streaming: bool,
    /// The connection manager's `downstream_rq_idle_timeout`, counted as Envoy counts a stream
    /// idle past its timeout after the response began.
    idle_timeouts: legate_core::stats::Counter,
    _guards: Option<(ActiveRequest, ResourceGuard)>,
    cluster: Arc<Cluster>,
}

/// Why a response body was broken off after its head went downstream: the response flag the
/// stream is logged with (UT, SI, or the upstream's UC, UR, UPE).
#[derive(Debug)]
pub(crate) struct BodyCut {
    pub flag: u32,
    cause: BoxError,
}

impl BodyCut {
    fn error(flag: u32, cause: impl Into<BoxError>) -> BoxError {
        Box::new(BodyCut {
            flag,
            cause: cause.into(),
        })
    }

    /// An upstream failure, by its reset reason.
    fn upstream(e: BoxError) -> BoxError {
        let flag = match e.downcast_ref::<UpstreamError>() {
            Some(UpstreamError::RemoteReset(_)) => ResponseFlags::UPSTREAM_REMOTE_RESET,
            Some(UpstreamError::ProtocolError(_)) => ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
            _ => ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
        };
        BodyCut::error(flag, e)
    }
}

impl std::fmt::Display for BodyCut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.cause.fmt(f)
    }
}

impl std::error::Error for BodyCut {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.cause)
    }
}

impl UpstreamBody {
    /// The route timeout (when its deadline has passed) or the idle timeout ended the body.
    fn expired(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.timer = None;
        self.idle = None;
        let cut = if self.deadline.take().is_some_and(|d| d <= Instant::now()) {
            self.cluster.stats.traffic.upstream_rq_timeout().inc();
            BodyCut::error(
                ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
                "upstream request timeout",
            )
        } else {
            self.idle_timeouts.inc();
            BodyCut::error(ResponseFlags::STREAM_IDLE_TIMEOUT, "stream idle timeout")
        };
        Poll::Ready(Some(Err(cut)))
    }

    /// When the timer must fire if no frame comes before.
    fn next_expiry(&self) -> Option<Instant> {
        let idle = self.idle.map(|t| Instant::now() + t);
        match (self.deadline, idle) {
            (Some(d), Some(i)) => Some(d.min(i)),
            (d, i) => d.or(i),
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map(|frame| frame.map(|r| r.map_err(BodyCut::upstream)));
        if let Poll::Ready(frame) = &polled {
            // The first frame (all of a small body) and the end pass without a look at the
            // clock; a body that keeps streaming is held to the deadline frame by frame from
            // its second data frame, since it may never wait.
            let data = matches!(frame, Some(Ok(f)) if f.is_data());
            if data
                && std::mem::replace(&mut self.streaming, true)
                && self.deadline.is_some_and(|d| d <= Instant::now())
            {
                return self.expired();
            }
            // Any frame restarts the idle timeout of a body that has waited (the route's
            // deadline stays where it is).
            if self.idle.is_some()
                && self.timer.is_some()
                && let Some(at) = self.next_expiry()
                && let Some(timer) = self.timer.as_mut()
            {
                timer.as_mut().reset(at.into());
            }
            return polled;
        }
        if self.timer.is_none() {
            let Some(at) = self.next_expiry() else {
                return Poll::Pending;
            };
            self.timer = Some(Box::pin(tokio::time::sleep_until(at.into())));
        }
        let timer = self.timer.as_mut().expect("armed above");
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.expired()
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        self.cluster.stats.traffic.upstream_rq_active().dec();
    }
}
