//! Request preparation, as Envoy's `ConnectionManagerUtility::mutateRequestHeaders` and the
//! HTTP/1 codec checks do it: protocol and Host checks, path normalisation, header-name and
//! size limits, `x-forwarded-for` and the downstream address, internal requests and their
//! `x-envoy-*` headers, `x-forwarded-proto`, `x-request-id`, `via`.

use crate::route::RouteTable;
use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderName, HeaderValue, Version, header};
use legate_api::pb::envoy::config::core::v3::http_protocol_options::HeadersWithUnderscoresAction;
use legate_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::PathWithEscapedSlashesAction;
use legate_core::stream_info::{RequestLine, ResponseFlags, StreamInfo};

use super::{ConnectionState, HttpConnectionManager};
use crate::h1::TargetWithFragment;
use crate::headers::{
    ENVOY_CONTROL_HEADERS, X_ENVOY_EXTERNAL_ADDRESS, X_ENVOY_INTERNAL, X_ENVOY_ORIGINAL_PATH,
    X_FORWARDED_FOR, X_FORWARDED_PROTO, X_REQUEST_ID,
};
use crate::local_reply::LocalReply;

/// A local reply for a request the codec refuses, as Envoy's codecs send it: the status text
/// as the body, flag `DPE`, the connection closed.
fn codec_error(status: u16, details: &'static str) -> LocalReply {
    let text = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Bad Request");
    LocalReply::new(
        status,
        text,
        details,
        ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
    )
}

/// The methods Envoy's HTTP/1 parser accepts (the http-parser set).
fn is_known_http1_method(method: &str) -> bool {
    const METHODS: &[&str] = &[
        "GET",
        "HEAD",
        "POST",
        "PUT",
        "DELETE",
        "CONNECT",
        "OPTIONS",
        "TRACE",
        "PATCH",
        "COPY",
        "LOCK",
        "MKCOL",
        "MOVE",
        "PROPFIND",
        "PROPPATCH",
        "SEARCH",
        "UNLOCK",
        "BIND",
        "REBIND",
        "UNBIND",
        "ACL",
        "REPORT",
        "MKACTIVITY",
        "CHECKOUT",
        "MERGE",
        "M-SEARCH",
        "NOTIFY",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "PURGE",
        "MKCALENDAR",
        "LINK",
        "UNLINK",
        "SOURCE",
    ];
    METHODS.contains(&method)
}

impl HttpConnectionManager {
    /// Checks and sanitises the request headers as Envoy's connection manager does. Fills
    /// the request line of `info` (also for a refused request, so that its access-log line
    /// names the method, path and headers as Envoy's does).
    pub(super) fn prepare(
        &self,
        parts: &mut http::request::Parts,
        info: &mut StreamInfo,
        conn: &ConnectionState,
        table: Option<&RouteTable>,
    ) -> Result<(), LocalReply> {
        let prepared = self.check_and_mutate(parts, info, conn, table);
        // A request the codec refuses outright (426 for HTTP/1.0) is logged without its
        // headers, as Envoy's codec never parsed them.
        if prepared.as_ref().is_err_and(|r| r.details != "low_version") {
            info.request.method = RequestLine::method_name(&parts.method);
            info.request.path = match parts.extensions.get::<TargetWithFragment>() {
                Some(target) => String::from_utf8_lossy(&target.0).into_owned(),
                None => parts
                    .uri
                    .path_and_query()
                    .map_or_else(String::new, |p| p.as_str().to_owned()),
            };
            if let Some(host) = parts.uri.authority().map(|a| a.as_str()).or_else(|| {
                parts
                    .headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
            }) {
                info.request.authority = host.to_owned();
            }
            if self.logs_request_headers() {
                info.request_headers = parts.headers.clone();
            }
        }
        prepared
    }

    fn check_and_mutate(
        &self,
        parts: &mut http::request::Parts,
        info: &mut StreamInfo,
        conn: &ConnectionState,
        table: Option<&RouteTable>,
    ) -> Result<(), LocalReply> {
        let config = &self.config;
        if parts.version != Version::HTTP_2 && !is_known_http1_method(parts.method.as_str()) {
            // Envoy's HTTP/1 codec knows a fixed set of methods and refuses the rest.
            return Err(codec_error(400, "http1.codec_error"));
        }
        let header_bytes: usize = parts
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len())
            .sum();
        if header_bytes > config.max_request_headers_kb as usize * 1024 {
            return Err(codec_error(431, "http1.headers_too_large"));
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
        if parts.extensions.get::<TargetWithFragment>().is_some() {
            // A fragment is never sent (RFC 9112 §3.2): Envoy's path normalization refuses it.
            self.stats.downstream_rq_failed_path_normalization.inc();
            return Err(LocalReply::new(400, "", "path_normalization_failed", 0));
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
                self.stats.downstream_rq_failed_path_normalization.inc();
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
        // The downstream address (Envoy's `mutateRequestHeaders`): on the edge, the peer — or,
        // with `xff_num_trusted_hops` N, the N-th address from the right of the incoming
        // `x-forwarded-for`; behind a proxy, the address N+1 from the right.
        // On a unix domain socket (`pipe`) the peer has no IP address (`None`) unless a PROXY
        // header gave one: Envoy appends nothing to `x-forwarded-for` for it, and an address
        // without IP is neither internal nor an external address to report.
        let peer = conn.downstream.remote_address();
        let hops = config.xff_num_trusted_hops;
        let from_xff =
            |skip: u32| xff_address(&parts.headers, skip).map(|ip| SocketAddr::new(ip, 0));
        let remote = if config.use_remote_address {
            if hops > 0 {
                from_xff(hops - 1).or(peer)
            } else {
                peer
            }
        } else {
            from_xff(hops).or(peer)
        };
        info.downstream_remote_address = remote;
        if config.use_remote_address
            && !config.skip_xff_append
            && let Some(peer) = peer
        {
            append_xff(&mut parts.headers, peer.ip());
        }
        // Internal: one hop only (a single `x-forwarded-for` address) from an internal address.
        let internal = remote.is_some_and(|remote| self.is_internal(remote.ip()))
            && xff_count(&parts.headers) == 1;
        if internal {
            parts
                .headers
                .insert(X_ENVOY_INTERNAL, HeaderValue::from_static("true"));
        } else {
            // Envoy's `cleanInternalHeaders`: a request not known to be internal may not steer
            // the router (timeouts, retries).
            let envoy_headers = crate::headers::any_envoy_header(&parts.headers);
            if envoy_headers {
                for name in ENVOY_CONTROL_HEADERS.iter() {
                    parts.headers.remove(name);
                }
            }
            if config.use_remote_address {
                // On the edge, a client may not claim an original path either.
                if envoy_headers {
                    parts.headers.remove(X_ENVOY_ORIGINAL_PATH);
                }
                if let Some(remote) = remote
                    && let Ok(v) = HeaderValue::from_str(&remote.ip().to_string())
                {
                    parts.headers.insert(X_ENVOY_EXTERNAL_ADDRESS, v);
                }
            }
        }
        let scheme = HeaderValue::from_static(conn.downstream.scheme());
        if config.use_remote_address || !crate::headers::has(&parts.headers, &X_FORWARDED_PROTO) {
            parts.headers.insert(X_FORWARDED_PROTO, scheme);
        }
        let regenerate =
            config.use_remote_address && !internal && !config.preserve_external_request_id;
        if config.generate_request_id
            && (regenerate || !crate::headers::has(&parts.headers, &X_REQUEST_ID))
        {
            parts.headers.insert(X_REQUEST_ID, uuid_v4());
        }
        if !internal && let Some(table) = table {
            for name in &table.internal_only_headers {
                parts.headers.remove(name);
            }
        }
        if !config.via.is_empty() {
            append_via(&mut parts.headers, &config.via);
        }
        super::xfcc::mutate(
            &mut parts.headers,
            conn.downstream.tls_info.as_deref(),
            config.forward_client_cert,
            &config.client_cert_details,
        );

        info.request.method = RequestLine::method_name(&parts.method);
        info.request.path = path;
        info.request.authority = host;
        info.request.scheme = conn.downstream.scheme().into();
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
}

/// The scheme the client used, as Envoy trusts it: `x-forwarded-proto` (set or validated by
/// [`HttpConnectionManager::prepare`]), `http` otherwise.
pub(super) fn forwarded_proto(headers: &HeaderMap) -> &str {
    match headers.get(X_FORWARDED_PROTO).map(|v| v.as_bytes()) {
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

/// How many addresses `x-forwarded-for` holds.
fn xff_count(headers: &HeaderMap) -> usize {
    headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter(|s| !s.trim().is_empty())
        .count()
}

/// The address `xff_num_trusted_hops` from the right of `x-forwarded-for` (Envoy's
/// `getLastAddressFromXFF`), when the header has that many.
fn xff_address(headers: &HeaderMap, trusted_hops: u32) -> Option<IpAddr> {
    let mut entries: Vec<&str> = Vec::new();
    for value in headers.get_all(X_FORWARDED_FOR) {
        let text = value.to_str().ok()?;
        entries.extend(text.split(',').map(str::trim).filter(|s| !s.is_empty()));
    }
    let index = entries.len().checked_sub(1 + trusted_hops as usize)?;
    entries[index].parse().ok()
}

fn append_xff(headers: &mut HeaderMap, ip: IpAddr) {
    append_header(headers, X_FORWARDED_FOR, &ip.to_string());
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
pub(super) fn append_via(headers: &mut HeaderMap, via: &str) {
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
    HeaderValue::from_bytes(&legate_core::uuid::v4())
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
