//! `envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager` ->
//! [`HcmConfig`], with Envoy's defaults for every timeout and limit.

use std::sync::Arc;
use std::time::Duration;

use legate_api::pb::envoy::config::accesslog::v3::AccessLog;
use legate_api::pb::envoy::config::core::v3::http_protocol_options::HeadersWithUnderscoresAction;
use legate_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager,
    http_connection_manager::{self as hcm, CodecType, RouteSpecifier},
    http_filter as hcm_filter,
};
use legate_core::proto::{bool_or, duration, u32_or};
use legate_core::{Compiled, ConfigError, Errors};

use legate_api::pb::envoy::extensions::filters::http::router::v3::Router;
use prost::Message;

use crate::filters::{self, HttpFilterKind};
use crate::rds::RdsConfig;
use crate::route::RouteTable;

/// Envoy's default `max_request_headers_kb`.
pub const DEFAULT_MAX_REQUEST_HEADERS_KB: u32 = 60;
/// Envoy's default `stream_idle_timeout`.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Envoy's default `drain_timeout`.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Envoy's default `delayed_close_timeout`.
pub const DEFAULT_DELAYED_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct HcmConfig {
    pub stat_prefix: String,
    pub codec: CodecType,
    pub routes: RouteSource,
    pub http_filters: Vec<HttpFilterKind>,
    /// The router's `suppress_envoy_headers`: no `x-envoy-upstream-service-time` on
    /// responses, no `x-envoy-expected-rq-timeout-ms` on upstream requests.
    pub suppress_envoy_headers: bool,
    pub server_name: String,
    pub server_header_transformation: hcm::ServerHeaderTransformation,
    pub use_remote_address: bool,
    pub xff_num_trusted_hops: u32,
    pub skip_xff_append: bool,
    pub via: String,
    pub generate_request_id: bool,
    pub preserve_external_request_id: bool,
    pub always_set_request_id_in_response: bool,
    pub normalize_path: bool,
    pub merge_slashes: bool,
    pub path_with_escaped_slashes_action: hcm::PathWithEscapedSlashesAction,
    pub strip_matching_host_port: bool,
    pub strip_any_host_port: bool,
    /// `upgrade_configs`: (upgrade type, enabled).
    pub upgrades: Vec<(String, bool)>,
    pub max_request_headers_kb: u32,
    pub max_headers_count: u32,
    pub headers_with_underscores_action: HeadersWithUnderscoresAction,
    /// `None` where Envoy disables the timeout (unset with no default, or zero).
    pub request_headers_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
    pub stream_idle_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub max_connection_duration: Option<Duration>,
    pub max_requests_per_connection: Option<u32>,
    pub drain_timeout: Duration,
    pub delayed_close_timeout: Duration,
    pub access_log: Vec<AccessLog>,
    pub local_reply: crate::local_reply::LocalReplyRules,
    /// `internal_address_config.cidr_ranges`: (network, prefix length).
    pub internal_cidrs: Vec<(std::net::IpAddr, u32)>,
    pub internal_unix_sockets: bool,
    pub http2: legate_api::pb::envoy::config::core::v3::Http2ProtocolOptions,
    /// `forward_client_cert_details` (x-forwarded-client-cert).
    pub forward_client_cert: hcm::ForwardClientCertDetails,
    /// `set_current_client_cert_details`.
    pub client_cert_details: ClientCertDetails,
}

/// `set_current_client_cert_details`: what an `APPEND_FORWARD` / `SANITIZE_SET` element
/// carries besides `By` and `Hash`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientCertDetails {
    pub subject: bool,
    pub cert: bool,
    pub chain: bool,
    pub dns: bool,
    pub uri: bool,
}

/// Where a connection manager's routes come from.
#[derive(Debug)]
pub enum RouteSource {
    /// `route_config`, compiled with the connection manager.
    Static(Arc<RouteTable>),
    /// `rds`: a named table from a config source, which may change while traffic flows.
    Rds(RdsConfig),
}

impl RouteSource {
    /// The table compiled with the connection manager, if it has one.
    pub fn static_table(&self) -> Option<&RouteTable> {
        match self {
            RouteSource::Static(t) => Some(t),
            RouteSource::Rds(_) => None,
        }
    }
}

/// A positive duration, or `None` for an unset or zero one (Envoy's "disabled").
fn enabled(
    d: Option<&legate_api::pb::google::protobuf::Duration>,
    default: Option<Duration>,
) -> Option<Duration> {
    d.map(duration).or(default).filter(|d| !d.is_zero())
}

impl HcmConfig {
    /// Compiles an HCM: `route_config` or `rds` (from a file source).
    pub fn compile(h: &HttpConnectionManager) -> Compiled<HcmConfig> {
        let mut errors = Errors::default();
        let routes = match &h.route_specifier {
            Some(RouteSpecifier::RouteConfig(rc)) => errors
                .take("route_config", RouteTable::compile(rc))
                .map(|t| RouteSource::Static(Arc::new(t))),
            Some(RouteSpecifier::Rds(rds)) => {
                let source = rds
                    .config_source
                    .as_ref()
                    .map(crate::rds::file_source)
                    .unwrap_or_else(|| Err(ConfigError::new("", "config_source is required")));
                match source {
                    Ok(source) => Some(RouteSource::Rds(RdsConfig {
                        route_config_name: rds.route_config_name.clone(),
                        source,
                    })),
                    Err(e) => {
                        errors.0.push(e.within("rds.config_source"));
                        None
                    }
                }
            }
            _ => {
                errors.push(
                    "route_specifier",
                    "route_config or rds is required (scoped_routes is not supported by Legate)",
                );
                None
            }
        };
        let mut http_filters = Vec::with_capacity(h.http_filters.len());
        let mut suppress_envoy_headers = false;
        let last = h.http_filters.len().saturating_sub(1);
        for (i, f) in h.http_filters.iter().enumerate() {
            let path = format!("http_filters[{i}]");
            let type_name = f.config_type.as_ref().map(|c| match c {
                hcm_filter::ConfigType::TypedConfig(any) => Some(any),
                hcm_filter::ConfigType::ConfigDiscovery(_) => None,
            });
            let typed_config = match type_name {
                Some(Some(any)) => Some(any),
                Some(None) => {
                    errors.push(
                        &format!("{path}.config_discovery"),
                        "filter config discovery is not supported by Legate",
                    );
                    continue;
                }
                None => None,
            };
            match filters::lookup(&f.name, typed_config) {
                Err(e) => errors.push(&path, e),
                Ok((kind, terminal)) => {
                    if kind == HttpFilterKind::Router
                        && let Some(any) = typed_config
                    {
                        match Router::decode(any.value.as_slice()) {
                            Ok(r) => suppress_envoy_headers = r.suppress_envoy_headers,
                            Err(e) => errors.push(
                                &format!("{path}.typed_config"),
                                format!("unable to decode Router: {e}"),
                            ),
                        }
                    }
                    if terminal && i != last {
                        errors.push(&path, format!(
                            "Error: terminal filter named {} of type {} must be the last filter in a http filter chain.",
                            f.name, f.name
                        ));
                    } else if !terminal && i == last {
                        errors.push(&path, format!(
                            "Error: non-terminal filter named {} of type {} is the last filter in a http filter chain.",
                            f.name, f.name
                        ));
                    }
                    http_filters.push(kind);
                }
            }
        }
        legate_core::extension::check_access_logs(&h.access_log, &mut errors);
        let common = h.common_http_protocol_options.unwrap_or_default();
        if common.max_response_headers_kb.is_some() {
            // Envoy's own check: the option is an upstream one.
            errors.push(
                "common_http_protocol_options.max_response_headers_kb",
                "max_response_headers_kb cannot be set on http_connection_manager.",
            );
        }
        let internal = h.internal_address_config.clone().unwrap_or_default();
        let mut internal_cidrs = Vec::new();
        for (i, c) in internal.cidr_ranges.iter().enumerate() {
            match c.address_prefix.parse() {
                Ok(ip) => internal_cidrs.push((ip, c.prefix_len.as_ref().map_or(0, |p| p.value))),
                Err(_) => errors.push(
                    &format!("internal_address_config.cidr_ranges[{i}].address_prefix"),
                    format!("malformed IP address: {}", c.address_prefix),
                ),
            }
        }
        let local_reply = match &h.local_reply_config {
            Some(c) => errors
                .take(
                    "local_reply_config",
                    crate::local_reply::LocalReplyRules::compile(c),
                )
                .unwrap_or_default(),
            None => Default::default(),
        };
        let codec = CodecType::try_from(h.codec_type).unwrap_or(CodecType::Auto);
        if codec == CodecType::Http3 {
            errors.push("codec_type", "HTTP3 is not supported by Legate yet");
        }
        let Some(routes) = routes else {
            return Err(errors.0);
        };
        errors.finish(|| HcmConfig {
            stat_prefix: h.stat_prefix.clone(),
            codec,
            routes,
            http_filters,
            suppress_envoy_headers,
            server_name: if h.server_name.is_empty() {
                "envoy".into()
            } else {
                h.server_name.clone()
            },
            server_header_transformation: hcm::ServerHeaderTransformation::try_from(
                h.server_header_transformation,
            )
            .unwrap_or(hcm::ServerHeaderTransformation::Overwrite),
            forward_client_cert: hcm::ForwardClientCertDetails::try_from(
                h.forward_client_cert_details,
            )
            .unwrap_or(hcm::ForwardClientCertDetails::Sanitize),
            client_cert_details: h
                .set_current_client_cert_details
                .as_ref()
                .map(|d| ClientCertDetails {
                    subject: bool_or(d.subject.as_ref(), false),
                    cert: d.cert,
                    chain: d.chain,
                    dns: d.dns,
                    uri: d.uri,
                })
                .unwrap_or_default(),
            use_remote_address: bool_or(h.use_remote_address.as_ref(), false),
            xff_num_trusted_hops: h.xff_num_trusted_hops,
            skip_xff_append: h.skip_xff_append,
            via: h.via.clone(),
            generate_request_id: bool_or(h.generate_request_id.as_ref(), true),
            preserve_external_request_id: h.preserve_external_request_id,
            always_set_request_id_in_response: h.always_set_request_id_in_response,
            normalize_path: bool_or(h.normalize_path.as_ref(), false),
            merge_slashes: h.merge_slashes,
            path_with_escaped_slashes_action: hcm::PathWithEscapedSlashesAction::try_from(
                h.path_with_escaped_slashes_action,
            )
            .unwrap_or(hcm::PathWithEscapedSlashesAction::ImplementationSpecificDefault),
            strip_matching_host_port: h.strip_matching_host_port,
            strip_any_host_port: matches!(
                h.strip_port_mode,
                Some(hcm::StripPortMode::StripAnyHostPort(true))
            ),
            upgrades: h
                .upgrade_configs
                .iter()
                .map(|u| {
                    (
                        u.upgrade_type.to_ascii_lowercase(),
                        bool_or(u.enabled.as_ref(), true),
                    )
                })
                .collect(),
            max_request_headers_kb: u32_or(
                h.max_request_headers_kb.as_ref(),
                DEFAULT_MAX_REQUEST_HEADERS_KB,
            ),
            max_headers_count: u32_or(common.max_headers_count.as_ref(), 100),
            headers_with_underscores_action: HeadersWithUnderscoresAction::try_from(
                common.headers_with_underscores_action,
            )
            .unwrap_or(HeadersWithUnderscoresAction::Allow),
            request_headers_timeout: enabled(h.request_headers_timeout.as_ref(), None),
            request_timeout: enabled(h.request_timeout.as_ref(), None),
            stream_idle_timeout: enabled(
                h.stream_idle_timeout.as_ref(),
                Some(DEFAULT_STREAM_IDLE_TIMEOUT),
            ),
            // Envoy's downstream idle timeout defaults to one hour.
            idle_timeout: enabled(
                common.idle_timeout.as_ref(),
                Some(Duration::from_secs(3600)),
            ),
            max_connection_duration: enabled(common.max_connection_duration.as_ref(), None),
            max_requests_per_connection: common
                .max_requests_per_connection
                .as_ref()
                .map(|v| v.value)
                .filter(|&n| n > 0),
            drain_timeout: h
                .drain_timeout
                .as_ref()
                .map_or(DEFAULT_DRAIN_TIMEOUT, duration),
            delayed_close_timeout: h
                .delayed_close_timeout
                .as_ref()
                .map_or(DEFAULT_DELAYED_CLOSE_TIMEOUT, duration),
            access_log: h.access_log.clone(),
            local_reply,
            internal_cidrs,
            internal_unix_sockets: internal.unix_sockets,
            http2: h.http2_protocol_options.clone().unwrap_or_default(),
        })
    }
}
