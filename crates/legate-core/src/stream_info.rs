//! What is known about one HTTP stream (or TCP connection) as it is proxied: the record that
//! access logs, `%VARIABLE%` header substitutions and stats read. Envoy calls this
//! `StreamInfo`; the fields follow its accessors so that the format operators map one to one.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;

/// The HTTP protocol of the downstream (or upstream) side, as `%PROTOCOL%` prints it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    Http10,
    #[default]
    Http11,
    Http2,
    /// No HTTP: a connection proxied at L4 (tcp_proxy); `%PROTOCOL%` prints `-`.
    Tcp,
}

impl Protocol {
    /// Envoy's spelling: `HTTP/1.0`, `HTTP/1.1`, `HTTP/2`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http10 => "HTTP/1.0",
            Protocol::Http11 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
            Protocol::Tcp => "-",
        }
    }
}

/// Envoy's response flags (`%RESPONSE_FLAGS%`), a bit each, in Envoy's printing order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponseFlags(pub u32);

/// (bit, short name, long name) in the order Envoy prints them (`CoreResponseFlag`).
pub const RESPONSE_FLAGS: &[(u32, &str, &str)] = &[
    (1 << 0, "LH", "FailedLocalHealthCheck"),
    (1 << 1, "UH", "NoHealthyUpstream"),
    (1 << 2, "UT", "UpstreamRequestTimeout"),
    (1 << 3, "LR", "LocalReset"),
    (1 << 4, "UR", "UpstreamRemoteReset"),
    (1 << 5, "UF", "UpstreamConnectionFailure"),
    (1 << 6, "UC", "UpstreamConnectionTermination"),
    (1 << 7, "UO", "UpstreamOverflow"),
    (1 << 8, "NR", "NoRouteFound"),
    (1 << 9, "DI", "DelayInjected"),
    (1 << 10, "FI", "FaultInjected"),
    (1 << 11, "RL", "RateLimited"),
    (1 << 12, "UAEX", "UnauthorizedExternalService"),
    (1 << 13, "RLSE", "RateLimitServiceError"),
    (1 << 14, "DC", "DownstreamConnectionTermination"),
    (1 << 15, "URX", "UpstreamRetryLimitExceeded"),
    (1 << 16, "SI", "StreamIdleTimeout"),
    (1 << 17, "IH", "InvalidEnvoyRequestHeaders"),
    (1 << 18, "DPE", "DownstreamProtocolError"),
    (1 << 19, "UMSDR", "UpstreamMaxStreamDurationReached"),
    (1 << 20, "RFCF", "ResponseFromCacheFilter"),
    (1 << 21, "NFCF", "NoFilterConfigFound"),
    (1 << 22, "DT", "DurationTimeout"),
    (1 << 23, "UPE", "UpstreamProtocolError"),
    (1 << 24, "NC", "NoClusterFound"),
    (1 << 25, "OM", "OverloadManager"),
    (1 << 26, "DF", "DnsResolutionFailed"),
    (1 << 27, "DO", "DropOverLoad"),
    (1 << 28, "DR", "DownstreamRemoteReset"),
];

impl ResponseFlags {
    pub const FAILED_LOCAL_HEALTH_CHECK: u32 = 1 << 0;
    pub const NO_HEALTHY_UPSTREAM: u32 = 1 << 1;
    pub const UPSTREAM_REQUEST_TIMEOUT: u32 = 1 << 2;
    pub const LOCAL_RESET: u32 = 1 << 3;
    pub const UPSTREAM_REMOTE_RESET: u32 = 1 << 4;
    pub const UPSTREAM_CONNECTION_FAILURE: u32 = 1 << 5;
    pub const UPSTREAM_CONNECTION_TERMINATION: u32 = 1 << 6;
    pub const UPSTREAM_OVERFLOW: u32 = 1 << 7;
    pub const NO_ROUTE_FOUND: u32 = 1 << 8;
    pub const DOWNSTREAM_CONNECTION_TERMINATION: u32 = 1 << 14;
    pub const UPSTREAM_RETRY_LIMIT_EXCEEDED: u32 = 1 << 15;
    pub const STREAM_IDLE_TIMEOUT: u32 = 1 << 16;
    pub const INVALID_ENVOY_REQUEST_HEADERS: u32 = 1 << 17;
    pub const DOWNSTREAM_PROTOCOL_ERROR: u32 = 1 << 18;
    pub const DURATION_TIMEOUT: u32 = 1 << 22;
    pub const UPSTREAM_PROTOCOL_ERROR: u32 = 1 << 23;
    pub const NO_CLUSTER_FOUND: u32 = 1 << 24;
    pub const DOWNSTREAM_REMOTE_RESET: u32 = 1 << 28;

    pub fn set(&mut self, flag: u32) {
        self.0 |= flag;
    }

    pub fn has(self, flag: u32) -> bool {
        self.0 & flag != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The short names, comma-separated, as `%RESPONSE_FLAGS%` prints them; `-` when none.
    pub fn short_string(self) -> String {
        if self.is_empty() {
            return "-".to_owned();
        }
        let names: Vec<&str> = RESPONSE_FLAGS
            .iter()
            .filter(|(bit, _, _)| self.0 & bit != 0)
            .map(|(_, short, _)| *short)
            .collect();
        names.join(",")
    }

    /// The long names, as `%RESPONSE_FLAGS_LONG%` prints them; `-` when none.
    pub fn long_string(self) -> String {
        if self.is_empty() {
            return "-".to_owned();
        }
        let names: Vec<&str> = RESPONSE_FLAGS
            .iter()
            .filter(|(bit, _, _)| self.0 & bit != 0)
            .map(|(_, _, long)| *long)
            .collect();
        names.join(",")
    }
}

/// The request line of a stream: the pseudo-headers Envoy exposes as `:method`, `:path`,
/// `:authority` and `:scheme`.
#[derive(Clone, Debug, Default)]
pub struct RequestLine {
    /// Borrowed for the standard methods (no allocation per request).
    pub method: Cow<'static, str>,
    /// Path and query, as received (after the connection manager's normalisation).
    pub path: String,
    pub authority: String,
    pub scheme: Cow<'static, str>,
}

impl RequestLine {
    /// A method's name, borrowed for the standard methods.
    pub fn method_name(method: &http::Method) -> Cow<'static, str> {
        use http::Method;
        let name = match *method {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::HEAD => "HEAD",
            Method::PUT => "PUT",
            Method::DELETE => "DELETE",
            Method::OPTIONS => "OPTIONS",
            Method::PATCH => "PATCH",
            Method::CONNECT => "CONNECT",
            Method::TRACE => "TRACE",
            _ => return Cow::Owned(method.as_str().to_owned()),
        };
        Cow::Borrowed(name)
    }
}

/// Which moment of a stream or connection an access log entry records
/// (`envoy.data.accesslog.v3.AccessLogType`, printed by `%ACCESS_LOG_TYPE%`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccessLogType {
    #[default]
    NotSet,
    /// tcp_proxy took the connection (`flush_access_log_on_start`).
    TcpConnectionStart,
    /// tcp_proxy connected to the upstream (`flush_access_log_on_connected`).
    TcpUpstreamConnected,
    /// tcp_proxy's `access_log_flush_interval` passed.
    TcpPeriodic,
    TcpConnectionEnd,
    /// The HTTP connection manager's stream ended.
    DownstreamEnd,
    /// The UDP proxy's session ended.
    UdpSessionEnd,
}

impl AccessLogType {
    /// Envoy's name of the value.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessLogType::NotSet => "NotSet",
            AccessLogType::TcpConnectionStart => "TcpConnectionStart",
            AccessLogType::TcpUpstreamConnected => "TcpUpstreamConnected",
            AccessLogType::TcpPeriodic => "TcpPeriodic",
            AccessLogType::TcpConnectionEnd => "TcpConnectionEnd",
            AccessLogType::DownstreamEnd => "DownstreamEnd",
            AccessLogType::UdpSessionEnd => "UdpSessionEnd",
        }
    }
}

/// Everything recorded about one stream.
#[derive(Clone, Debug)]
pub struct StreamInfo {
    /// Wall-clock start, for `%START_TIME%`.
    pub start_time: SystemTime,
    /// Monotonic start, for durations.
    pub start: Instant,
    pub protocol: Protocol,
    /// What the access log entry being written records (`%ACCESS_LOG_TYPE%`).
    pub access_log_type: AccessLogType,
    /// The downstream peer as Envoy sees it after `x-forwarded-for` processing.
    pub downstream_remote_address: Option<SocketAddr>,
    /// The downstream peer of the TCP connection.
    pub downstream_direct_remote_address: Option<SocketAddr>,
    pub downstream_local_address: Option<SocketAddr>,
    /// The socket's own local address, when a listener filter restored another one
    /// (`original_dst`, `proxy_protocol`): `%DOWNSTREAM_DIRECT_LOCAL_ADDRESS%`; `None` means the
    /// same as `downstream_local_address`.
    pub downstream_direct_local_address: Option<SocketAddr>,
    /// The name of the filter chain that serves the connection (`%FILTER_CHAIN_NAME%`).
    pub filter_chain_name: Option<Arc<str>>,
    /// The listener's path when the connection came over a unix domain socket (`pipe`): Envoy
    /// gives such a connection the listener's address as both its local and remote address,
    /// and the three downstream addresses above stay unset (unless `x-forwarded-for` gave the
    /// remote one).
    pub downstream_pipe: Option<Arc<str>>,
    /// Envoy's connection id (`%CONNECTION_ID%`).
    pub connection_id: u64,
    /// The request as received (before route rewrites), headers without pseudo-headers.
    pub request: RequestLine,
    pub request_headers: HeaderMap,
    pub request_trailers: Option<HeaderMap>,
    pub response_code: Option<u16>,
    /// `%RESPONSE_CODE_DETAILS%`: `via_upstream`, `route_not_found`, ...
    pub response_code_details: Option<String>,
    pub response_headers: Option<HeaderMap>,
    pub response_trailers: Option<HeaderMap>,
    pub response_flags: ResponseFlags,
    /// Body bytes received from downstream.
    pub bytes_received: u64,
    /// Body bytes sent to downstream.
    pub bytes_sent: u64,
    pub route_name: Option<Arc<str>>,
    pub upstream_cluster: Option<Arc<str>>,
    /// The protocol of the upstream request, once it reached a connection
    /// (`%UPSTREAM_PROTOCOL%`).
    pub upstream_protocol: Option<Protocol>,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_local_address: Option<SocketAddr>,
    /// The upstream host's path when it is a unix domain socket (`upstream_host` then unset):
    /// `%UPSTREAM_HOST%` prints it; `%UPSTREAM_LOCAL_ADDRESS%` stays `-`, as in Envoy.
    pub upstream_pipe: Option<Arc<str>>,
    pub upstream_transport_failure_reason: Option<String>,
    /// Offsets from `start`, for `%REQUEST_DURATION%`, `%RESPONSE_DURATION%`,
    /// `%RESPONSE_TX_DURATION%` and `%DURATION%`.
    pub last_downstream_rx_byte: Option<Duration>,
    pub first_upstream_tx_byte: Option<Duration>,
    pub last_upstream_tx_byte: Option<Duration>,
    pub first_upstream_rx_byte: Option<Duration>,
    pub last_upstream_rx_byte: Option<Duration>,
    pub first_downstream_tx_byte: Option<Duration>,
    pub last_downstream_tx_byte: Option<Duration>,
    /// Set when the stream ended: `%DURATION%`.
    pub duration: Option<Duration>,
    /// The request was an HCM health check (`not_health_check` access-log filter).
    pub health_check: bool,
    /// Upstream attempts made (`%UPSTREAM_REQUEST_ATTEMPT_COUNT%`).
    pub attempt_count: u32,
    /// The body of the local reply being sent, if any (`%LOCAL_REPLY_BODY%`).
    pub local_reply_body: Option<String>,
    /// The SNI of the downstream connection (`%REQUESTED_SERVER_NAME%`).
    pub requested_server_name: Option<Arc<str>>,
    /// The downstream connection's TLS facts, when TLS was terminated on it
    /// (`%DOWNSTREAM_PEER_*%`, `%DOWNSTREAM_TLS_*%`).
    pub downstream_tls: Option<Arc<crate::x509::TlsInfo>>,
    /// The ClientHello's fingerprints, when the tls_inspector computed them.
    pub tls_fingerprints: Option<Arc<TlsFingerprints>>,
    /// The connection's dynamic metadata (`%DYNAMIC_METADATA%`), when a filter set some.
    pub dynamic_metadata: Option<Arc<crate::metadata::DynamicMetadata>>,
}

/// The JA3 and JA4 fingerprints of a connection's ClientHello (`%TLS_JA3_FINGERPRINT%`,
/// `%TLS_JA4_FINGERPRINT%`), those the tls_inspector was asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFingerprints {
    pub ja3: Option<String>,
    pub ja4: Option<String>,
}

impl StreamInfo {
    pub fn new(connection_id: u64) -> Self {
        Self {
            start_time: SystemTime::now(),
            start: Instant::now(),
            protocol: Protocol::default(),
            access_log_type: AccessLogType::NotSet,
            downstream_remote_address: None,
            downstream_direct_remote_address: None,
            downstream_local_address: None,
            downstream_direct_local_address: None,
            filter_chain_name: None,
            downstream_pipe: None,
            connection_id,
            request: RequestLine::default(),
            request_headers: HeaderMap::new(),
            request_trailers: None,
            response_code: None,
            response_code_details: None,
            response_headers: None,
            response_trailers: None,
            response_flags: ResponseFlags::default(),
            bytes_received: 0,
            bytes_sent: 0,
            route_name: None,
            upstream_cluster: None,
            upstream_protocol: None,
            upstream_host: None,
            upstream_local_address: None,
            upstream_pipe: None,
            upstream_transport_failure_reason: None,
            last_downstream_rx_byte: None,
            first_upstream_tx_byte: None,
            last_upstream_tx_byte: None,
            first_upstream_rx_byte: None,
            last_upstream_rx_byte: None,
            first_downstream_tx_byte: None,
            last_downstream_tx_byte: None,
            duration: None,
            health_check: false,
            attempt_count: 0,
            local_reply_body: None,
            requested_server_name: None,
            downstream_tls: None,
            tls_fingerprints: None,
            dynamic_metadata: None,
        }
    }

    /// The time since the stream started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// A request header by name, with Envoy's pseudo-headers (`:path`, `:method`,
    /// `:authority`, `:scheme`) as `%REQ()%` reads them. A header given several times is
    /// read as its first value.
    pub fn request_header(&self, name: &str) -> Option<&str> {
        match name {
            ":method" => non_empty(&self.request.method),
            ":path" => non_empty(&self.request.path),
            ":authority" | "host" => {
                non_empty(&self.request.authority).or_else(|| header(&self.request_headers, name))
            }
            ":scheme" => non_empty(&self.request.scheme),
            _ => header(&self.request_headers, name),
        }
    }

    /// A response header by name; `:status` is the response code.
    pub fn response_header(&self, name: &str) -> Option<&str> {
        self.response_headers.as_ref().and_then(|h| header(h, name))
    }

    pub fn response_trailer(&self, name: &str) -> Option<&str> {
        self.response_trailers
            .as_ref()
            .and_then(|h| header(h, name))
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_print_in_envoys_order() {
        let mut f = ResponseFlags::default();
        assert_eq!(f.short_string(), "-");
        f.set(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
        f.set(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
        assert_eq!(f.short_string(), "UF,URX");
        assert_eq!(
            f.long_string(),
            "UpstreamConnectionFailure,UpstreamRetryLimitExceeded"
        );
    }
}
