//! The admin HTTP server: accepts connections (HTTP/1.1 and HTTP/2, as Envoy's admin
//! listener does), routes each request to its endpoint, enforces POST on the mutating ones,
//! and adds Envoy's admin response headers.
//!
//! Routing follows Envoy 1.40: the path must match exactly (the query string is separate); an
//! unknown path is 404 with the help text; a mutating endpoint answers any method other than
//! POST with 405 `Method GET not allowed, POST required.`; the other endpoints answer every
//! method. HEAD gets the GET headers without a body (hyper drops it).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, X_CONTENT_TYPE_OPTIONS};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, UnixListener};

use crate::endpoints::{self, Reply};
use crate::query::Query;
use crate::state::AdminState;

/// The largest form body accepted (runtime overrides are small).
const MAX_FORM_BODY: usize = 64 * 1024;

/// The admin server's socket: TCP, or a unix domain socket (`pipe`, whose path stands for
/// the peer's and the local address in the access log, as in Envoy).
pub enum AdminListener {
    Tcp(TcpListener),
    Unix(UnixListener, Arc<str>),
}

/// Serves the admin endpoints on `listener` until the task running this future is aborted
/// (which drops the listener). Each connection runs in its own task.
pub async fn serve(listener: AdminListener, state: Arc<AdminState>) {
    loop {
        let accepted = match &listener {
            AdminListener::Tcp(l) => l.accept().await.map(|(stream, peer)| {
                let local = stream.local_addr().ok();
                let state = Arc::clone(&state);
                tokio::spawn(serve_connection(stream, Peer::Tcp(peer, local), state));
            }),
            AdminListener::Unix(l, path) => l.accept().await.map(|(stream, _)| {
                let state = Arc::clone(&state);
                tokio::spawn(serve_connection(stream, Peer::Pipe(path.clone()), state));
            }),
        };
        if let Err(e) = accepted {
            // Out of file descriptors and the like: wait rather than spin.
            tracing::warn!("admin: accept failed: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Who an admin connection is, for the access log.
#[derive(Clone)]
enum Peer {
    /// The peer's address and the local one.
    Tcp(SocketAddr, Option<SocketAddr>),
    /// The listener's path.
    Pipe(Arc<str>),
}

/// Serves one admin connection (HTTP/1.1 or HTTP/2), logging each request when the admin
/// server has access logs.
async fn serve_connection<S>(stream: S, peer: Peer, state: Arc<AdminState>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let state = Arc::clone(&state);
        let peer = peer.clone();
        async move {
            if state.access_logs.is_empty() {
                return Ok::<_, Infallible>(handle(state, req).await);
            }
            let mut info = legate_core::stream_info::StreamInfo::new(0);
            match peer {
                Peer::Tcp(remote, local) => {
                    info.downstream_remote_address = Some(remote);
                    info.downstream_direct_remote_address = Some(remote);
                    info.downstream_local_address = local;
                }
                Peer::Pipe(path) => info.downstream_pipe = Some(path),
            }
            info.request.method = legate_core::stream_info::RequestLine::method_name(req.method());
            info.request.path = req
                .uri()
                .path_and_query()
                .map_or_else(String::new, |p| p.as_str().to_owned());
            info.request_headers = req.headers().clone();
            let response = handle(Arc::clone(&state), req).await;
            info.response_code = Some(response.status().as_u16());
            info.response_headers = Some(response.headers().clone());
            info.bytes_sent = hyper::body::Body::size_hint(response.body())
                .exact()
                .unwrap_or(0);
            info.duration = Some(info.start.elapsed());
            let runtime = state.runtime.snapshot();
            for log in &state.access_logs {
                log.log(&info, &runtime);
            }
            Ok(response)
        }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!("admin: connection error: {e}");
    }
}

/// Answers one request.
pub async fn handle(state: Arc<AdminState>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let Some(endpoint) = endpoints::find(parts.uri.path()) else {
        return response(endpoints::not_found());
    };
    if endpoint.post && parts.method != Method::POST {
        return response(endpoints::method_not_allowed(&parts.method));
    }
    let mut query = Query::parse(parts.uri.query());
    let is_form = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if parts.method == Method::POST && is_form {
        match Limited::new(body, MAX_FORM_BODY).collect().await {
            Ok(collected) => query.extend_form(&String::from_utf8_lossy(&collected.to_bytes())),
            Err(_) => {
                return response(Reply::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    endpoints::TEXT,
                    "request body too large\n",
                ));
            }
        }
    }
    // Rendering a large configuration or stats set takes a while: keep it off the async
    // threads, which also serve the other admin connections.
    let handler = endpoint.handler;
    let reply = tokio::task::spawn_blocking(move || handler(&state, &query))
        .await
        .unwrap_or_else(|_| {
            Reply::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                endpoints::TEXT,
                "admin handler failed\n",
            )
        });
    response(reply)
}

/// The reply with Envoy's admin headers: `cache-control: no-cache, max-age=0` and
/// `x-content-type-options: nosniff` on every response.
fn response(reply: Reply) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() = reply.status;
    let headers = response.headers_mut();
    if let Some(content_type) = reply.content_type {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("no-cache, max-age=0"),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}
