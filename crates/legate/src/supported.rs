//! What Legate implements of Envoy's configuration: the one list of accepted fields and
//! extensions. A field that is set in a configuration but missing here is refused with its
//! path, so a configuration that loads behaves as it would in Envoy. SUPPORTED.md is generated
//! from this table (`legate --print-supported`), and a test keeps the two in step.

use legate_api::check::Support;

const CORE: &str = "envoy.config.core.v3";
const ROUTE: &str = "envoy.config.route.v3";
const HCM: &str = "envoy.extensions.filters.network.http_connection_manager.v3";
const TLS: &str = "envoy.extensions.transport_sockets.tls.v3";

/// (message, fields Legate reads). Messages absent from the list accept no fields.
pub fn messages() -> Vec<(String, &'static [&'static str])> {
    let list: &[(&str, &str, &[&str])] = &[
        // Bootstrap
        (
            "envoy.config.bootstrap.v3",
            "Bootstrap",
            &[
                "node",
                "static_resources",
                "dynamic_resources",
                "admin",
                "stats_sinks",
                "stats_flush_interval",
                "layered_runtime",
            ],
        ),
        (
            "envoy.config.bootstrap.v3",
            "Bootstrap.StaticResources",
            &["listeners", "clusters"],
        ),
        (HCM, "Rds", &["config_source", "route_config_name"]),
        (
            "envoy.config.cluster.v3",
            "Cluster.EdsClusterConfig",
            &["eds_config", "service_name"],
        ),
        (
            "envoy.config.bootstrap.v3",
            "Bootstrap.DynamicResources",
            &["lds_config", "cds_config"],
        ),
        (
            CORE,
            "ConfigSource",
            &[
                "path",
                "path_config_source",
                "resource_api_version",
                "initial_fetch_timeout",
            ],
        ),
        (CORE, "PathConfigSource", &["path", "watched_directory"]),
        (CORE, "WatchedDirectory", &["path"]),
        (
            "envoy.service.discovery.v3",
            "DiscoveryResponse",
            &["version_info", "resources", "type_url", "nonce"],
        ),
        (
            "envoy.config.bootstrap.v3",
            "Admin",
            &["address", "access_log", "access_log_path"],
        ),
        ("envoy.config.bootstrap.v3", "LayeredRuntime", &["layers"]),
        (
            "envoy.config.bootstrap.v3",
            "RuntimeLayer",
            &["name", "static_layer", "admin_layer"],
        ),
        (CORE, "Node", &["id", "cluster", "metadata", "locality"]),
        (CORE, "Locality", &["region", "zone", "sub_zone"]),
        (CORE, "Address", &["socket_address", "pipe"]),
        (CORE, "Pipe", &["path", "mode"]),
        (
            CORE,
            "SocketAddress",
            &["protocol", "address", "port_value", "ipv4_compat"],
        ),
        // Listeners
        (
            "envoy.config.listener.v3",
            "Listener",
            &[
                "name",
                "address",
                "filter_chains",
                "per_connection_buffer_limit_bytes",
                "stat_prefix",
                "default_filter_chain",
                "listener_filters",
                "listener_filters_timeout",
                "continue_on_listener_filters_timeout",
                "udp_listener_config",
                "use_original_dst",
            ],
        ),
        (
            "envoy.config.listener.v3",
            "FilterChain",
            &[
                "filters",
                "name",
                "filter_chain_match",
                "transport_socket",
                "transport_socket_connect_timeout",
            ],
        ),
        (
            "envoy.config.listener.v3",
            "FilterChainMatch",
            &[
                "destination_port",
                "prefix_ranges",
                "server_names",
                "transport_protocol",
                "application_protocols",
                "direct_source_prefix_ranges",
                "source_type",
                "source_prefix_ranges",
                "source_ports",
            ],
        ),
        (
            "envoy.config.listener.v3",
            "ListenerFilter",
            &["name", "typed_config"],
        ),
        (
            "envoy.extensions.filters.listener.tls_inspector.v3",
            "TlsInspector",
            &[
                "enable_ja3_fingerprinting",
                "enable_ja4_fingerprinting",
                "initial_read_buffer_size",
                "max_client_hello_size",
                "close_connection_on_client_hello_parsing_errors",
            ],
        ),
        (
            "envoy.extensions.filters.listener.http_inspector.v3",
            "HttpInspector",
            &[],
        ),
        (
            "envoy.extensions.filters.listener.proxy_protocol.v3",
            "ProxyProtocol",
            &[
                "allow_requests_without_proxy_protocol",
                "disallowed_versions",
                "stat_prefix",
                "pass_through_tlvs",
                "rules",
            ],
        ),
        (
            "envoy.extensions.filters.listener.proxy_protocol.v3",
            "ProxyProtocol.Rule",
            &["tlv_type", "on_tlv_present"],
        ),
        (
            "envoy.extensions.filters.listener.proxy_protocol.v3",
            "ProxyProtocol.KeyValuePair",
            &["metadata_namespace", "key"],
        ),
        // UDP listeners and the UDP proxy
        (
            "envoy.config.listener.v3",
            "UdpListenerConfig",
            &["downstream_socket_config"],
        ),
        (
            CORE,
            "UdpSocketConfig",
            &["max_rx_datagram_size", "prefer_gro"],
        ),
        (
            "envoy.extensions.filters.udp.udp_proxy.v3",
            "UdpProxyConfig",
            &[
                "stat_prefix",
                "cluster",
                "matcher",
                "idle_timeout",
                "upstream_socket_config",
                "access_log",
                "hash_policies",
            ],
        ),
        (
            "envoy.extensions.filters.udp.udp_proxy.v3",
            "UdpProxyConfig.HashPolicy",
            &["source_ip", "key"],
        ),
        (
            "envoy.extensions.filters.udp.udp_proxy.v3",
            "Route",
            &["cluster"],
        ),
        ("xds.type.matcher.v3", "Matcher", &["on_no_match"]),
        ("xds.type.matcher.v3", "Matcher.OnMatch", &["action"]),
        (
            "xds.core.v3",
            "TypedExtensionConfig",
            &["name", "typed_config"],
        ),
        // L4 network filters
        (
            "envoy.extensions.filters.network.tcp_proxy.v3",
            "TcpProxy",
            &[
                "stat_prefix",
                "cluster",
                "weighted_clusters",
                "idle_timeout",
                "max_connect_attempts",
                "access_log",
                "hash_policy",
                "max_downstream_connection_duration",
                "max_downstream_connection_duration_jitter_percentage",
                "access_log_flush_interval",
                "flush_access_log_on_connected",
                "access_log_options",
                "proxy_protocol_tlvs",
                "proxy_protocol_tlv_merge_policy",
                "upstream_connect_mode",
                "max_early_data_bytes",
                "backoff_options",
                "downstream_idle_timeout",
                "upstream_idle_timeout",
                "tunneling_config",
            ],
        ),
        (
            "envoy.extensions.filters.network.tcp_proxy.v3",
            "TcpProxy.TunnelingConfig",
            &["hostname", "use_post", "headers_to_add", "post_path"],
        ),
        (CORE, "BackoffStrategy", &["base_interval", "max_interval"]),
        (
            "envoy.extensions.filters.network.tcp_proxy.v3",
            "TcpProxy.TcpAccessLogOptions",
            &[
                "access_log_flush_interval",
                "flush_access_log_on_connected",
                "flush_access_log_on_start",
            ],
        ),
        ("envoy.type.v3", "Percent", &["value"]),
        ("envoy.type.v3", "HashPolicy", &["source_ip"]),
        ("envoy.type.v3", "HashPolicy.SourceIp", &[]),
        (
            "envoy.extensions.filters.network.tcp_proxy.v3",
            "TcpProxy.WeightedCluster",
            &["clusters"],
        ),
        (
            "envoy.extensions.filters.network.tcp_proxy.v3",
            "TcpProxy.WeightedCluster.ClusterWeight",
            &["name", "weight"],
        ),
        ("envoy.extensions.filters.network.echo.v3", "Echo", &[]),
        (
            "envoy.extensions.filters.listener.original_dst.v3",
            "OriginalDst",
            &[],
        ),
        (
            "envoy.extensions.filters.network.sni_cluster.v3",
            "SniCluster",
            &[],
        ),
        (
            "envoy.extensions.filters.network.rbac.v3",
            "RBAC",
            &[
                "stat_prefix",
                "rules",
                "shadow_rules",
                "shadow_rules_stat_prefix",
                "enforcement_type",
            ],
        ),
        ("envoy.config.rbac.v3", "RBAC", &["action", "policies"]),
        (
            "envoy.config.rbac.v3",
            "Policy",
            &["permissions", "principals"],
        ),
        (
            "envoy.config.rbac.v3",
            "Permission",
            &[
                "and_rules",
                "or_rules",
                "any",
                "destination_ip",
                "destination_port",
                "destination_port_range",
                "not_rule",
                "requested_server_name",
                "metadata",
            ],
        ),
        ("envoy.config.rbac.v3", "Permission.Set", &["rules"]),
        (
            "envoy.config.rbac.v3",
            "Principal",
            &[
                "and_ids",
                "or_ids",
                "any",
                "source_ip",
                "direct_remote_ip",
                "remote_ip",
                "not_id",
                "metadata",
            ],
        ),
        ("envoy.config.rbac.v3", "Principal.Set", &["ids"]),
        (
            "envoy.type.matcher.v3",
            "MetadataMatcher",
            &["filter", "path", "value", "invert"],
        ),
        (
            "envoy.type.matcher.v3",
            "MetadataMatcher.PathSegment",
            &["key"],
        ),
        (
            "envoy.type.matcher.v3",
            "ValueMatcher",
            &[
                "null_match",
                "string_match",
                "bool_match",
                "present_match",
                "or_match",
            ],
        ),
        ("envoy.type.matcher.v3", "ValueMatcher.NullMatch", &[]),
        ("envoy.type.matcher.v3", "OrMatcher", &["value_matchers"]),
        ("envoy.type.v3", "Int32Range", &["start", "end"]),
        (
            "envoy.extensions.filters.network.direct_response.v3",
            "Config",
            &["response"],
        ),
        (
            "envoy.config.listener.v3",
            "Filter",
            &["name", "typed_config"],
        ),
        // HTTP connection manager
        (
            HCM,
            "HttpConnectionManager",
            &[
                "codec_type",
                "stat_prefix",
                "route_config",
                "rds",
                "http_filters",
                "http_protocol_options",
                "http2_protocol_options",
                "server_name",
                "server_header_transformation",
                "access_log",
                "use_remote_address",
                "xff_num_trusted_hops",
                "skip_xff_append",
                "via",
                "generate_request_id",
                "preserve_external_request_id",
                "always_set_request_id_in_response",
                "upgrade_configs",
                "stream_idle_timeout",
                "request_timeout",
                "request_headers_timeout",
                "drain_timeout",
                "delayed_close_timeout",
                "max_request_headers_kb",
                "common_http_protocol_options",
                "normalize_path",
                "merge_slashes",
                "path_with_escaped_slashes_action",
                "strip_matching_host_port",
                "strip_any_host_port",
                "local_reply_config",
                "internal_address_config",
                "forward_client_cert_details",
                "set_current_client_cert_details",
            ],
        ),
        (
            HCM,
            "HttpConnectionManager.SetCurrentClientCertDetails",
            &["subject", "cert", "chain", "dns", "uri"],
        ),
        (
            HCM,
            "HttpConnectionManager.UpgradeConfig",
            &["upgrade_type", "enabled"],
        ),
        (
            HCM,
            "HttpConnectionManager.InternalAddressConfig",
            &["unix_sockets", "cidr_ranges"],
        ),
        (HCM, "HttpFilter", &["name", "typed_config"]),
        (HCM, "LocalReplyConfig", &["mappers", "body_format"]),
        (
            HCM,
            "ResponseMapper",
            &[
                "filter",
                "status_code",
                "body",
                "body_format_override",
                "headers_to_add",
            ],
        ),
        (CORE, "CidrRange", &["address_prefix", "prefix_len"]),
        (
            CORE,
            "HttpProtocolOptions",
            &[
                "idle_timeout",
                "max_headers_count",
                "max_response_headers_kb",
                "max_connection_duration",
                "headers_with_underscores_action",
                "max_requests_per_connection",
            ],
        ),
        (CORE, "Http1ProtocolOptions", &[]),
        (
            CORE,
            "Http2ProtocolOptions",
            &[
                "hpack_table_size",
                "max_concurrent_streams",
                "initial_stream_window_size",
                "initial_connection_window_size",
                "max_outbound_frames",
                "max_outbound_control_frames",
                "max_consecutive_inbound_frames_with_empty_payload",
                "max_inbound_priority_frames_per_stream",
                "max_inbound_window_update_frames_per_data_frame_sent",
            ],
        ),
        (
            "envoy.extensions.filters.http.router.v3",
            "Router",
            &["suppress_envoy_headers"],
        ),
        // Routes
        (
            ROUTE,
            "RouteConfiguration",
            &[
                "name",
                "virtual_hosts",
                "internal_only_headers",
                "request_headers_to_add",
                "request_headers_to_remove",
                "response_headers_to_add",
                "response_headers_to_remove",
                "validate_clusters",
                "most_specific_header_mutations_wins",
                "max_direct_response_body_size_bytes",
                "ignore_port_in_host_matching",
            ],
        ),
        (
            ROUTE,
            "VirtualHost",
            &[
                "name",
                "domains",
                "routes",
                "request_headers_to_add",
                "request_headers_to_remove",
                "response_headers_to_add",
                "response_headers_to_remove",
            ],
        ),
        (
            ROUTE,
            "Route",
            &[
                "name",
                "match",
                "route",
                "redirect",
                "direct_response",
                "request_headers_to_add",
                "request_headers_to_remove",
                "response_headers_to_add",
                "response_headers_to_remove",
            ],
        ),
        (
            ROUTE,
            "RouteMatch",
            &[
                "prefix",
                "path",
                "safe_regex",
                "path_separated_prefix",
                "case_sensitive",
                "headers",
                "query_parameters",
                "grpc",
                "runtime_fraction",
            ],
        ),
        (ROUTE, "RouteMatch.GrpcRouteMatchOptions", &[]),
        (
            ROUTE,
            "HeaderMatcher",
            &[
                "name",
                "exact_match",
                "safe_regex_match",
                "range_match",
                "present_match",
                "prefix_match",
                "suffix_match",
                "contains_match",
                "string_match",
                "invert_match",
                "treat_missing_header_as_empty",
            ],
        ),
        (
            ROUTE,
            "QueryParameterMatcher",
            &["name", "string_match", "present_match"],
        ),
        (
            ROUTE,
            "RouteAction",
            &[
                "cluster",
                "cluster_header",
                "weighted_clusters",
                "prefix_rewrite",
                "regex_rewrite",
                "host_rewrite_literal",
                "auto_host_rewrite",
                "host_rewrite_header",
                "timeout",
                "idle_timeout",
                "upgrade_configs",
                "cluster_not_found_response_code",
                "hash_policy",
            ],
        ),
        (
            ROUTE,
            "RouteAction.HashPolicy",
            &[
                "header",
                "cookie",
                "connection_properties",
                "query_parameter",
                "terminal",
            ],
        ),
        (
            ROUTE,
            "RouteAction.HashPolicy.Header",
            &["header_name", "regex_rewrite"],
        ),
        (
            ROUTE,
            "RouteAction.HashPolicy.Cookie",
            &["name", "ttl", "path", "attributes"],
        ),
        (
            ROUTE,
            "RouteAction.HashPolicy.CookieAttribute",
            &["name", "value"],
        ),
        (
            ROUTE,
            "RouteAction.HashPolicy.ConnectionProperties",
            &["source_ip"],
        ),
        (ROUTE, "RouteAction.HashPolicy.QueryParameter", &["name"]),
        (
            ROUTE,
            "RouteAction.UpgradeConfig",
            &["upgrade_type", "enabled"],
        ),
        (ROUTE, "WeightedCluster", &["clusters"]),
        (
            ROUTE,
            "WeightedCluster.ClusterWeight",
            &[
                "name",
                "weight",
                "request_headers_to_add",
                "request_headers_to_remove",
                "response_headers_to_add",
                "response_headers_to_remove",
            ],
        ),
        (
            ROUTE,
            "RedirectAction",
            &[
                "host_redirect",
                "path_redirect",
                "response_code",
                "https_redirect",
                "prefix_rewrite",
                "strip_query",
                "scheme_redirect",
                "port_redirect",
                "regex_rewrite",
            ],
        ),
        (ROUTE, "DirectResponseAction", &["status", "body"]),
        (
            "envoy.type.matcher.v3",
            "StringMatcher",
            &[
                "exact",
                "prefix",
                "suffix",
                "safe_regex",
                "contains",
                "ignore_case",
            ],
        ),
        (
            "envoy.type.matcher.v3",
            "RegexMatcher",
            &["regex", "google_re2"],
        ),
        ("envoy.type.matcher.v3", "RegexMatcher.GoogleRE2", &[]),
        (
            "envoy.type.matcher.v3",
            "RegexMatchAndSubstitute",
            &["pattern", "substitution"],
        ),
        ("envoy.type.v3", "Int64Range", &["start", "end"]),
        (
            "envoy.type.v3",
            "FractionalPercent",
            &["numerator", "denominator"],
        ),
        (
            CORE,
            "RuntimeFractionalPercent",
            &["default_value", "runtime_key"],
        ),
        (CORE, "RuntimeUInt32", &["default_value", "runtime_key"]),
        (
            CORE,
            "DataSource",
            &[
                "filename",
                "inline_bytes",
                "inline_string",
                "environment_variable",
            ],
        ),
        (
            CORE,
            "HeaderValueOption",
            &["header", "append", "append_action", "keep_empty_value"],
        ),
        (CORE, "HeaderValue", &["key", "value", "raw_value"]),
        (
            CORE,
            "SubstitutionFormatString",
            &[
                "text_format",
                "text_format_source",
                "json_format",
                "omit_empty_values",
                "content_type",
            ],
        ),
        // Clusters
        (
            "envoy.config.cluster.v3",
            "Cluster",
            &[
                "name",
                "type",
                "connect_timeout",
                "lb_policy",
                "load_assignment",
                "eds_cluster_config",
                "per_connection_buffer_limit_bytes",
                "max_requests_per_connection",
                "circuit_breakers",
                "typed_extension_protocol_options",
                "http_protocol_options",
                "http2_protocol_options",
                "common_http_protocol_options",
                "upstream_http_protocol_options",
                "transport_socket",
                "ring_hash_lb_config",
                "maglev_lb_config",
                "common_lb_config",
                "original_dst_lb_config",
                "cleanup_interval",
            ],
        ),
        (
            "envoy.config.cluster.v3",
            "Cluster.OriginalDstLbConfig",
            &[
                "use_http_header",
                "http_header_name",
                "upstream_port_override",
            ],
        ),
        (
            "envoy.config.cluster.v3",
            "Cluster.RingHashLbConfig",
            &["minimum_ring_size", "maximum_ring_size", "hash_function"],
        ),
        (
            "envoy.config.cluster.v3",
            "Cluster.MaglevLbConfig",
            &["table_size"],
        ),
        // Only so that use_hostname_for_hashing (hosts have no hostname in Legate) and
        // hash_balance_factor (bounded loads) are refused with their own path.
        (
            "envoy.config.cluster.v3",
            "Cluster.CommonLbConfig",
            &["consistent_hashing_lb_config"],
        ),
        (
            "envoy.config.cluster.v3",
            "Cluster.CommonLbConfig.ConsistentHashingLbConfig",
            &[],
        ),
        (
            "envoy.config.cluster.v3",
            "CircuitBreakers",
            &["thresholds"],
        ),
        (
            "envoy.config.cluster.v3",
            "CircuitBreakers.Thresholds",
            &[
                "priority",
                "max_connections",
                "max_pending_requests",
                "max_requests",
                "max_retries",
                "track_remaining",
            ],
        ),
        (
            "envoy.config.endpoint.v3",
            "ClusterLoadAssignment",
            &["cluster_name", "endpoints"],
        ),
        (
            "envoy.config.endpoint.v3",
            "LocalityLbEndpoints",
            &[
                "locality",
                "lb_endpoints",
                "load_balancing_weight",
                "priority",
            ],
        ),
        (
            "envoy.config.endpoint.v3",
            "LbEndpoint",
            &["endpoint", "load_balancing_weight"],
        ),
        ("envoy.config.endpoint.v3", "Endpoint", &["address"]),
        (
            "envoy.extensions.upstreams.http.v3",
            "HttpProtocolOptions",
            &[
                "common_http_protocol_options",
                "upstream_http_protocol_options",
                "explicit_http_config",
                "use_downstream_protocol_config",
            ],
        ),
        (
            CORE,
            "UpstreamHttpProtocolOptions",
            &[
                "auto_sni",
                "auto_san_validation",
                "override_auto_sni_header",
            ],
        ),
        (
            "envoy.extensions.upstreams.http.v3",
            "HttpProtocolOptions.ExplicitHttpConfig",
            &["http_protocol_options", "http2_protocol_options"],
        ),
        (
            "envoy.extensions.upstreams.http.v3",
            "HttpProtocolOptions.UseDownstreamHttpConfig",
            &["http_protocol_options", "http2_protocol_options"],
        ),
        // Access logs
        (
            "envoy.config.accesslog.v3",
            "AccessLog",
            &["name", "filter", "typed_config"],
        ),
        (
            "envoy.config.accesslog.v3",
            "AccessLogFilter",
            &[
                "status_code_filter",
                "duration_filter",
                "not_health_check_filter",
                "runtime_filter",
                "and_filter",
                "or_filter",
                "header_filter",
                "response_flag_filter",
                "traceable_filter",
            ],
        ),
        ("envoy.config.accesslog.v3", "HeaderFilter", &["header"]),
        (
            "envoy.config.accesslog.v3",
            "ResponseFlagFilter",
            &["flags"],
        ),
        ("envoy.config.accesslog.v3", "TraceableFilter", &[]),
        (
            "envoy.config.accesslog.v3",
            "StatusCodeFilter",
            &["comparison"],
        ),
        (
            "envoy.config.accesslog.v3",
            "DurationFilter",
            &["comparison"],
        ),
        (
            "envoy.config.accesslog.v3",
            "ComparisonFilter",
            &["op", "value"],
        ),
        ("envoy.config.accesslog.v3", "NotHealthCheckFilter", &[]),
        (
            "envoy.config.accesslog.v3",
            "RuntimeFilter",
            &[
                "runtime_key",
                "percent_sampled",
                "use_independent_randomness",
            ],
        ),
        ("envoy.config.accesslog.v3", "AndFilter", &["filters"]),
        ("envoy.config.accesslog.v3", "OrFilter", &["filters"]),
        (
            "envoy.extensions.access_loggers.file.v3",
            "FileAccessLog",
            &[
                "path",
                "log_format",
                "format",
                "json_format",
                "typed_json_format",
            ],
        ),
        (
            "envoy.extensions.access_loggers.stream.v3",
            "StdoutAccessLog",
            &["log_format"],
        ),
        (
            "envoy.extensions.access_loggers.stream.v3",
            "StderrAccessLog",
            &["log_format"],
        ),
        // Transport sockets: TLS, the upstream PROXY protocol (around TLS or raw_buffer)
        (CORE, "TransportSocket", &["name", "typed_config"]),
        (
            "envoy.extensions.transport_sockets.proxy_protocol.v3",
            "ProxyProtocolUpstreamTransport",
            &["config", "transport_socket"],
        ),
        (
            CORE,
            "ProxyProtocolConfig",
            &["version", "added_tlvs", "pass_through_tlvs"],
        ),
        (
            CORE,
            "ProxyProtocolPassThroughTLVs",
            &["match_type", "tlv_type"],
        ),
        (CORE, "TlvEntry", &["type", "value"]),
        (
            "envoy.extensions.transport_sockets.raw_buffer.v3",
            "RawBuffer",
            &[],
        ),
        (
            TLS,
            "DownstreamTlsContext",
            &[
                "common_tls_context",
                "require_client_certificate",
                "require_sni",
                "session_ticket_keys",
                "session_ticket_keys_sds_secret_config",
                "disable_stateless_session_resumption",
                "disable_stateful_session_resumption",
                "session_timeout",
                "prefer_client_ciphers",
                "ocsp_staple_policy",
                "full_scan_certs_on_sni_mismatch",
            ],
        ),
        (TLS, "TlsSessionTicketKeys", &["keys"]),
        (
            TLS,
            "UpstreamTlsContext",
            &[
                "common_tls_context",
                "sni",
                "max_session_keys",
                "enforce_rsa_key_usage",
            ],
        ),
        (
            TLS,
            "CommonTlsContext",
            &[
                "tls_params",
                "tls_certificates",
                "tls_certificate_sds_secret_configs",
                "alpn_protocols",
                "validation_context",
                "validation_context_sds_secret_config",
                "combined_validation_context",
                "key_log",
            ],
        ),
        (
            TLS,
            "TlsKeyLog",
            &["path", "local_address_range", "remote_address_range"],
        ),
        (
            TLS,
            "CommonTlsContext.CombinedCertificateValidationContext",
            &[
                "default_validation_context",
                "validation_context_sds_secret_config",
            ],
        ),
        (
            TLS,
            "TlsCertificate",
            &["certificate_chain", "private_key", "ocsp_staple"],
        ),
        (TLS, "SdsSecretConfig", &["name", "sds_config"]),
        (
            TLS,
            "Secret",
            &[
                "name",
                "tls_certificate",
                "validation_context",
                "session_ticket_keys",
            ],
        ),
        (
            TLS,
            "TlsParameters",
            &[
                "tls_minimum_protocol_version",
                "tls_maximum_protocol_version",
                "cipher_suites",
                "ecdh_curves",
            ],
        ),
        (
            TLS,
            "CertificateValidationContext",
            &[
                "trusted_ca",
                "match_typed_subject_alt_names",
                "match_subject_alt_names",
                "verify_certificate_hash",
                "verify_certificate_spki",
                "allow_expired_certificate",
                "trust_chain_verification",
                "crl",
                "only_verify_leaf_cert_crl",
                "max_verify_depth",
            ],
        ),
        (
            TLS,
            "SubjectAltNameMatcher",
            &["san_type", "matcher", "oid"],
        ),
        // Stats
        (
            "envoy.config.metrics.v3",
            "StatsSink",
            &["name", "typed_config"],
        ),
        (
            "envoy.config.metrics.v3",
            "StatsdSink",
            &["address", "prefix"],
        ),
    ];
    list.iter()
        .map(|(package, message, fields)| (format!("{package}.{message}"), *fields))
        .collect()
}

/// (extension name, config message): what may stand in a `typed_config`.
pub const EXTENSIONS: &[(&str, &str)] = &[
    // The resources of xDS files (`DiscoveryResponse.resources`).
    ("LDS resource", "envoy.config.listener.v3.Listener"),
    ("CDS resource", "envoy.config.cluster.v3.Cluster"),
    ("RDS resource", "envoy.config.route.v3.RouteConfiguration"),
    (
        "EDS resource",
        "envoy.config.endpoint.v3.ClusterLoadAssignment",
    ),
    (
        "SDS resource",
        "envoy.extensions.transport_sockets.tls.v3.Secret",
    ),
    (
        "envoy.filters.network.http_connection_manager",
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    ),
    (
        "envoy.filters.network.tcp_proxy",
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
    ),
    (
        "envoy.filters.network.echo",
        "envoy.extensions.filters.network.echo.v3.Echo",
    ),
    (
        "envoy.filters.network.sni_cluster",
        "envoy.extensions.filters.network.sni_cluster.v3.SniCluster",
    ),
    (
        "envoy.filters.network.rbac",
        "envoy.extensions.filters.network.rbac.v3.RBAC",
    ),
    (
        "envoy.filters.network.direct_response",
        "envoy.extensions.filters.network.direct_response.v3.Config",
    ),
    (
        "envoy.filters.listener.tls_inspector",
        "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
    ),
    (
        "envoy.filters.listener.http_inspector",
        "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
    ),
    (
        "envoy.filters.listener.proxy_protocol",
        "envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol",
    ),
    (
        "envoy.filters.listener.original_dst",
        "envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
    ),
    (
        "envoy.filters.udp_listener.udp_proxy",
        "envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig",
    ),
    (
        "udp_proxy route action",
        "envoy.extensions.filters.udp.udp_proxy.v3.Route",
    ),
    (
        "envoy.filters.http.router",
        "envoy.extensions.filters.http.router.v3.Router",
    ),
    (
        "envoy.transport_sockets.tls",
        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
    ),
    (
        "envoy.transport_sockets.tls",
        "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
    ),
    (
        "envoy.transport_sockets.upstream_proxy_protocol",
        "envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport",
    ),
    (
        "envoy.transport_sockets.raw_buffer",
        "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer",
    ),
    (
        "envoy.access_loggers.file",
        "envoy.extensions.access_loggers.file.v3.FileAccessLog",
    ),
    (
        "envoy.access_loggers.stdout",
        "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
    ),
    (
        "envoy.access_loggers.stderr",
        "envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
    ),
    (
        "envoy.stat_sinks.statsd",
        "envoy.config.metrics.v3.StatsdSink",
    ),
    (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    ),
];

/// The table in the form the checker uses, built once.
pub fn support() -> &'static Support {
    static SUPPORT: std::sync::OnceLock<Support> = std::sync::OnceLock::new();
    SUPPORT.get_or_init(|| Support::new(messages(), EXTENSIONS))
}

/// SUPPORTED.md: the table above as a document.
pub fn markdown() -> String {
    let mut out = String::from(
        "# What Legate supports of Envoy's configuration\n\n\
         Generated by `legate --print-supported` from `crates/legate/src/supported.rs`; do not edit by hand.\n\n\
         A field that is set in a configuration but is not listed here is refused with its full path\n\
         (`... : 'field' is not supported by Legate`), so a configuration that loads behaves as it would in\n\
         Envoy. Every `validate.rules` constraint of Envoy's protos is enforced on all fields.\n\n\
         ## Extensions (`typed_config` types)\n\n| name | config type |\n|---|---|\n",
    );
    for (name, ty) in EXTENSIONS {
        out.push_str(&format!("| `{name}` | `{ty}` |\n"));
    }
    out.push_str("\n## Fields\n\n| message | fields |\n|---|---|\n");
    for (message, fields) in messages() {
        let fields = if fields.is_empty() {
            "(no fields)".to_owned()
        } else {
            fields
                .iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!("| `{message}` | {fields} |\n"));
    }
    out.push_str(NOTES);
    out
}

/// Where a field is accepted but Legate's behaviour is not Envoy's to the letter.
const NOTES: &str = "
## Accepted with a difference

| field | what Legate does |
|---|---|
| `Http2ProtocolOptions.max_outbound_control_frames`, `max_consecutive_inbound_frames_with_empty_payload`, `max_inbound_priority_frames_per_stream` | Applied to downstream connections as Envoy applies them, counted in `http2.outbound_control_flood`, `http2.inbound_empty_frames_flood`, `http2.inbound_priority_frames_flood`: PING and SETTINGS ACKs owed to a client that does not read past the limit close the connection (Legate reads ahead while the socket is full to count them, as Envoy's output queue would hold them). Upstream connections (a cluster's options) rely on h2's own limits. |
| `Http2ProtocolOptions.max_outbound_frames`, `max_inbound_window_update_frames_per_data_frame_sent` | Validated, not applied: the frames the first counts are inside the `h2` codec, bounded by flow control and back-pressure; the second Envoy 1.40 does not apply either (a connection sending 100,000 WINDOW_UPDATE frames before any request stays open). |
| `Http2ProtocolOptions.hpack_table_size` | Applied to upstream connections; downstream connections use the 4 KiB default. |
| `Listener.per_connection_buffer_limit_bytes`, `Cluster.per_connection_buffer_limit_bytes` | Validated, not applied as a byte count: bodies stream frame by frame with back-pressure, so a connection never buffers more than a read or two (16 KiB, growing to 64 KiB while a body arrives faster than it leaves). |
| `HttpConnectionManager.drain_timeout` | When a listener drains, HTTP/2 connections get GOAWAY at once (without Envoy's two-step GOAWAY); HTTP/1.1 connections get `connection: close` on their next response, and one still idle `drain_timeout` after the drain began is closed. |
| `HttpConnectionManager.delayed_close_timeout` | Applied to HTTP/1.1 connections the proxy closes (after `connection: close`, a refused request, a drain): the connection waits that long for the client to close, reading and discarding; a wait that runs out after a refused request counts `downstream_cx_delayed_close_timeout`, as in Envoy. A client that asked to close (its request's `connection: close`, or HTTP/1.0 without keep-alive) and sent nothing after that request is closed at once after the response, as Envoy closes it; when the proxy decides to close (the response's `connection: close`, a drain), Legate waits so that a client's pipelined bytes cannot turn the close into a reset, counting nothing. HTTP/2 connections close when the codec has sent GOAWAY. |
| `ConfigSource.initial_fetch_timeout` | Validated, not applied: a file source is read at once (it must exist when the configuration is loaded, as Envoy checks); a listener whose RDS file is invalid starts without a table (404 until a valid one arrives) rather than warming. |
| `PathConfigSource` (LDS, CDS, RDS, EDS files) | Files are watched for renames onto them (inotify), as Envoy does; writes in place are not seen. Beyond Envoy: SIGHUP re-reads the bootstrap and applies the difference in its static listeners and clusters (changes to `dynamic_resources`, `admin` and stats sinks need a restart). |
| `TlsInspector.initial_read_buffer_size` | Validated, not applied: Legate peeks up to the hello's size bound (`max_client_hello_size`) at once. |
| `Listener.listener_filters` and a half-close | Envoy closes a connection (`downstream_listener_filter_remote_close`) when the client's FIN arrives while the listener filters still run, even with all the bytes they need before it (a PROXY header, the data and FIN in one write); Legate decides on the bytes that came and serves the connection, so nothing the client sent is lost. |
| `TlsParameters.tls_minimum_protocol_version` | TLS 1.2 and 1.3 only (rustls): a minimum of `TLSv1_0` or `TLSv1_1` means TLS 1.2. |
| `TlsParameters.cipher_suites` | The ECDHE AES-GCM and ChaCha20-Poly1305 suites are offered; legacy names BoringSSL knows (CBC, RSA key exchange, PSK, 3DES) are accepted in a list but not offered; other names are refused. TLS 1.3 suites are always on, as in Envoy. |
| `TlsParameters.ecdh_curves` | `X25519`, `P-256` and `P-384`; other curves are refused. |
| `UpstreamTlsContext.max_session_keys` | 0 turns session resumption off, as in Envoy; N keeps the sessions of N server names (rustls's cache, with a few TLS 1.3 tickets for each) where BoringSSL keeps N sessions for the context. |
| `UpstreamTlsContext.enforce_rsa_key_usage` | Accepted and ignored, as Envoy 1.40 ignores it (the field is deprecated). |
| `CertificateValidationContext.allow_expired_certificate` | Requires `trusted_ca`, as in Envoy. A chain that fails only on a validity period is verified again at the latest start of the presented certificates' validity periods (BoringSSL ignores the expiry errors themselves): the chain passes when those periods overlap, and its CRLs are judged at that time too. |
| `SubjectAltNameMatcher.oid` | A dotted object identifier (`1.3.6.1.4.1.311.20.2.3`); BoringSSL's short and long names (`msUPN`) are refused. |
| `CommonTlsContext.validation_context_sds_secret_config`, `combined_validation_context` | The secret comes from a file source (`path_config_source`), re-read when it or the CA and CRL files it names are replaced. As Envoy builds a new context, each TLS context using the secret is built again from its `default_validation_context` merged with the secret's (protobuf merge: set fields replace, lists append), with fresh session caches and ticket contexts, so a session established under the old CA is not resumed; an update that one context cannot be built from (a draining listener's too) is rejected for all (`sds.<name>.update_rejected`). Until the secret arrives, handshakes fail (a cluster from CDS is put in force after its secrets are read; one whose secret file lacks the secret is put in force without it, where Envoy keeps it warming). |
| `UpstreamTlsContext` certificates | At most one (`tls_certificates` or `tls_certificate_sds_secret_configs`), as Envoy's client contexts; an SDS certificate is read from the secret in force when the server asks for one. |
| `CommonTlsContext.key_log` | Secrets in the NSS key log format (`CLIENT_RANDOM` for TLS 1.2; the handshake and traffic secrets, and `EXPORTER_SECRET`, for TLS 1.3, as rustls names them), appended to `path` for connections whose local and remote addresses are in the ranges (a unix domain socket matches only empty ranges); downstream, the addresses are the ones a PROXY header restored. The file is opened when the context is built and written as Envoy writes it, through the access-log writer of that path (flushed at the file flush interval, reopened on `SIGUSR1`, write failures counted as the access logs' are). |
| `DownstreamTlsContext.require_sni` | Accepted and ignored, as in Envoy 1.40, which does not implement it (the field is hidden as not implemented): a hello without a server name is served. |
| `DownstreamTlsContext.require_client_certificate` | Requires `validation_context.trusted_ca`, or certificate pins (`verify_certificate_hash`, `verify_certificate_spki`). |
| `DownstreamTlsContext.session_timeout` | The lifetime of tickets, at most 7 days (TLS 1.3's limit; longer values are cut to it). The stateful (session id) cache keeps up to 20,480 sessions without a time limit of its own. |
| `DownstreamTlsContext.session_ticket_keys_sds_secret_config` | The keys come from a file source, re-read when it is replaced (and, beyond Envoy 1.40, which does not, when a key file it names is replaced); each ticket is sealed and opened with the keys in force, so a rotation takes effect at once (Envoy builds a new context, which also empties its TLS 1.2 session-id cache; Legate keeps that cache). Until the secret arrives, no ticket is issued or accepted. |
| `DownstreamTlsContext.session_ticket_keys` | Keys are 80 bytes as in Envoy; the first seals new tickets (AES-256-GCM under the key's last 32 bytes) and all open them. Tickets are shared between Legate listeners and processes with the same keys, not with Envoy (its ticket format is BoringSSL's). |
| `envoy.transport_sockets.upstream_proxy_protocol` (clusters) | Each upstream connection starts with the PROXY header (version 1, or 2 with `added_tlvs`), before TLS if the wrapped transport socket is TLS. The header names the downstream connection (the client's address as restored by a PROXY listener filter, and the address it reached), as Envoy's tcp_proxy and router do; HTTP connections to such a cluster are pooled per downstream connection, as Envoy pools them by the header's addresses. Pipe endpoints get the same header, or one without addresses when there are none to name (see `Address.pipe`). TLVs, as Envoy writes them: `added_tlvs` first, then the downstream's TLVs that `pass_through_tlvs` lets on (none without it) and `added_tlvs` do not replace — those the proxy_protocol listener filter kept by its own `pass_through_tlvs` (none without it), merged with tcp_proxy's `proxy_protocol_tlvs` by `proxy_protocol_tlv_merge_policy` (with no PROXY header in, tcp_proxy's TLVs alone); a passed TLV that would overflow the header's 16-bit length is left out. Per-host TLVs are not available: an endpoint's `metadata`, where Envoy reads them, is refused. |
| `CertificateValidationContext.max_verify_depth` | As Envoy 1.40 applies it (probed side by side): to client certificates, counting the certificates above the client's up to and including the trust anchor (a depth of 0 passes what a depth of 1 passes); not to upstream certificates, whose chains Envoy 1.40 accepts at any depth. Legate measures the shortest path by issuer and subject names through the presented certificates, where BoringSSL measures the path it built. |
| `CertificateValidationContext.crl` | Requires `trusted_ca`. As Envoy (BoringSSL `CRL_CHECK_ALL`), once a CRL is loaded every certificate of the peer's chain needs its issuer's CRL, and an expired CRL fails verification; CRLs inside the `trusted_ca` file are used too. |
| `UdpSocketConfig.prefer_gro` | Legate reads one datagram at a time (no GRO); as with Envoy's GRO buffer, `prefer_gro: true` (the default of `UdpProxyConfig.upstream_socket_config`) reads datagrams of any size, so `max_rx_datagram_size` limits only sockets with `prefer_gro: false` (the default of `udp_listener_config.downstream_socket_config`). |
| UDP listeners | Legate serves them with one `envoy.filters.udp_listener.udp_proxy` listener filter and no filter chains (QUIC is not supported). |
| `ssl.sigalgs.*` stats | Not counted (rustls does not report the negotiated signature scheme). |
| `TcpProxy.max_downstream_connection_duration` | The connection is closed (both sides, pending bytes dropped, as Envoy's `NoFlush`) once the duration, plus a random share of up to `max_downstream_connection_duration_jitter_percentage` of it, has passed, even while bytes flow; counted in `tcp.<prefix>.max_downstream_connection_duration`, flagged `DT` in the access log. The time counts from when tcp_proxy takes the connection, after a TLS handshake on its chain; Envoy starts it when the filter chain is created, before the handshake. |
| `TcpProxy.upstream_connect_mode` | `ON_DOWNSTREAM_DATA`: the upstream connection is made once the client has sent something (or closed); the bytes wait in the socket (TLS: in rustls) until the exchange reads them, so `max_early_data_bytes`, required as in Envoy, bounds nothing more. `ON_DOWNSTREAM_TLS_HANDSHAKE` is what Legate always does: a chain's TLS handshake is over before tcp_proxy runs. |
| `TcpProxy.tunneling_config` | The client's bytes go over an HTTP request to the host, on the cluster's HTTP pool (HTTP/2 when the cluster is configured for it, else HTTP/1.1): `CONNECT` to the formatted `hostname` (authority-form on HTTP/1.1 with `host`, `:authority` on HTTP/2), or with `use_post` a `POST` to `post_path` (`/` by default) whose request and response bodies carry the bytes; `headers_to_add` with their values formatted. The tunnel opens on any 2xx over HTTP/1.1 and on a 200 over HTTP/2, as in Envoy; another answer fails the attempt (`UF`, and `URX` once `max_connect_attempts` are spent; `%UPSTREAM_TRANSPORT_FAILURE_REASON%` `tunnel_response:<status>`). A client's half-close ends the request (the `CONNECT` stream or connection half-closes, the `POST` body ends). `propagate_response_headers`, `propagate_response_trailers` and the request-id fields are refused. |
| `TcpProxy.backoff_options` | Before each further connect attempt, a random wait below an interval that starts at `base_interval` and doubles up to `max_interval` (10 times the base by default), as Envoy's jittered backoff. |
| `TcpProxy.downstream_idle_timeout`, `upstream_idle_timeout` | Accepted and ignored, as Envoy 1.40 does (hidden there as not implemented). |
| `TcpProxy.access_log_options` (and the deprecated `access_log_flush_interval`, `flush_access_log_on_connected`) | An entry of type `TcpConnectionStart` when tcp_proxy takes the connection (`flush_access_log_on_start`), of type `TcpUpstreamConnected` once the upstream is connected, and of type `TcpPeriodic` every interval with the bytes moved so far and the duration so far, before the last (`TcpConnectionEnd`); `%ACCESS_LOG_TYPE%` prints the type (`DownstreamEnd` for HTTP streams, `UdpSessionEnd` for UDP sessions, `NotSet` elsewhere, as in Envoy). The options message and the deprecated fields are refused together, with Envoy's messages. |
| `RBAC.enforcement_type` (network filter) | Both values accepted: the rules (addresses, SNI) cannot change during a connection, so Legate decides once, when the connection is set up (after the TLS handshake, if any); Envoy decides at the first byte, so a denied client that sends nothing is closed at once by Legate and only when it sends by Envoy. By then Envoy's tcp_proxy has connected upstream (and may have relayed the upstream's first bytes) and logs the connection; Legate opens no upstream connection for a denied client and writes no tcp_proxy access-log line for it. |
| `Address.pipe` (unix domain sockets) | Listeners serve the HTTP connection manager, tcp_proxy, echo and direct_response on a pipe, after its listener filters (a PROXY header gives the connection its addresses, as in Envoy; `original_dst` leaves a pipe's connections alone); TLS is terminated on a pipe listener as on TCP (its chain chosen by the SNI the tls_inspector read); the network RBAC filter runs on a pipe listener's connections, where no rule on an IP address or a port matches (none is there, unless a PROXY header gave it), as in Envoy; a pipe connection matches, as in Envoy, only the filter chains that leave the port and IP criteria unset (one listing `0.0.0.0/0` counts as unset), and as `SAME_IP_OR_LOOPBACK`; addresses a PROXY header gave are matched as on TCP. Cluster endpoints may be pipes for HTTP/1.1, HTTP/2 and tcp_proxy, in plain text or TLS (`UpstreamTlsContext`, with its SNI and validation as over TCP), with or without a PROXY header (the downstream connection's addresses, as Envoy writes them; with none to name — a pipe listener in front — version 2's `LOCAL` header or version 1's `UNKNOWN`, where Envoy 1.40 crashes); a UDP proxy finds no host on a pipe. `mode` is refused for an abstract ('@') path, as Envoy does. The admin server listens on a pipe as on TCP (`mode` applied; its access log shows the path for both addresses, as Envoy's does). A statsd sink sends its datagrams to a pipe (a unix datagram socket) as to a UDP address. |
";

#[cfg(test)]
mod tests {
    use super::*;
    use legate_api::descriptors::pool;

    #[test]
    fn every_listed_message_and_field_exists_in_envoys_api() {
        for (message, fields) in messages() {
            let desc = pool()
                .get_message_by_name(&message)
                .unwrap_or_else(|| panic!("no message {message}"));
            for f in fields {
                assert!(
                    desc.get_field_by_name(f).is_some(),
                    "{message} has no field {f}"
                );
            }
        }
        for (_, ty) in EXTENSIONS {
            assert!(pool().get_message_by_name(ty).is_some(), "no message {ty}");
        }
    }

    #[test]
    fn supported_md_is_up_to_date() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../SUPPORTED.md");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == markdown(),
            "SUPPORTED.md is stale: run `cargo run -- --print-supported > SUPPORTED.md`"
        );
    }
}
