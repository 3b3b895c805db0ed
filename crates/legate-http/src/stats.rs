//! `http.<stat_prefix>.*` stats of a connection manager and its router, with Envoy's names
//! (`http_conn_man/stats.rst`, `router_filter.rst`). Resolved once per connection manager.

use legate_core::stats::{Counter, Gauge, Histogram, ImportMode, Scope, Store, Unit};

#[derive(Debug)]
pub struct HcmStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub downstream_cx_http1_total: Counter,
    pub downstream_cx_http2_total: Counter,
    pub downstream_cx_http1_active: Gauge,
    pub downstream_cx_http2_active: Gauge,
    pub downstream_cx_ssl_total: Counter,
    pub downstream_cx_ssl_active: Gauge,
    pub downstream_cx_destroy: Counter,
    pub downstream_cx_destroy_local: Counter,
    pub downstream_cx_destroy_remote: Counter,
    pub downstream_cx_destroy_active_rq: Counter,
    pub downstream_cx_length_ms: Histogram,
    pub downstream_cx_max_duration_reached: Counter,
    pub downstream_cx_max_requests_reached: Counter,
    pub downstream_cx_drain_close: Counter,
    pub downstream_cx_protocol_error: Counter,
    pub downstream_cx_rx_bytes_total: Counter,
    pub downstream_cx_tx_bytes_total: Counter,
    pub downstream_cx_upgrades_total: Counter,
    pub downstream_cx_upgrades_active: Gauge,
    pub downstream_rq_total: Counter,
    pub downstream_rq_http1_total: Counter,
    pub downstream_rq_http2_total: Counter,
    pub downstream_rq_active: Gauge,
    pub downstream_rq_completed: Counter,
    pub downstream_rq_time: Histogram,
    pub downstream_rq_timeout: Counter,
    pub downstream_rq_header_timeout: Counter,
    pub downstream_rq_failed_path_normalization: Counter,
    pub downstream_rq_rx_reset: Counter,
    pub downstream_rq_tx_reset: Counter,
    pub downstream_rq_response_before_rq_complete: Counter,
    pub downstream_rq_non_relative_path: Counter,
    pub downstream_rq_ws_on_non_ws_route: Counter,
    pub downstream_rq_idle_timeout: Counter,
    pub downstream_cx_idle_timeout: Counter,
    pub downstream_cx_delayed_close_timeout: Counter,
    pub dropped_headers_with_underscores: Counter,
    pub requests_rejected_with_underscores_in_headers: Counter,
    classes: [Counter; 5],
    /// `listener.<listener>.http.<prefix>.downstream_rq_<class>` and `_completed`.
    listener_classes: [Counter; 5],
    listener_completed: Counter,
    // Router stats live under the same prefix.
    pub no_route: Counter,
    pub no_cluster: Counter,
    pub rq_total: Counter,
    pub rq_redirect: Counter,
    pub rq_direct_response: Counter,
    pub rq_reset_after_downstream_response_started: Counter,
}

impl HcmStats {
    pub fn new(
        store: &std::sync::Arc<Store>,
        stat_prefix: &str,
        listener_stat_prefix: &str,
    ) -> Self {
        let scope: Scope = store.scope(&format!("http.{stat_prefix}."));
        let per_listener = store.scope(&format!(
            "listener.{listener_stat_prefix}.http.{stat_prefix}."
        ));
        let c = |n: &str| scope.counter(n);
        let g = |n: &str| scope.gauge(n, ImportMode::Accumulate);
        let h = |n: &str| scope.histogram(n, Unit::Milliseconds);
        // Registered so that the stat set matches Envoy's; Legate never raises them yet.
        for name in [
            "downstream_cx_destroy_local_active_rq",
            "downstream_cx_destroy_remote_active_rq",
            "downstream_cx_http1_total",
            "downstream_cx_http3_total",
            "downstream_cx_overload_disable_keepalive",
            "downstream_rq_http3_total",
            "downstream_rq_too_large",
            "downstream_rq_overload_close",
            "downstream_rq_max_duration_reached",
            "rs_too_large",
        ] {
            scope.counter(name);
        }
        HcmStats {
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_active: g("downstream_cx_active"),
            downstream_cx_http1_total: c("downstream_cx_http1_total"),
            downstream_cx_http2_total: c("downstream_cx_http2_total"),
            downstream_cx_http1_active: g("downstream_cx_http1_active"),
            downstream_cx_http2_active: g("downstream_cx_http2_active"),
            downstream_cx_ssl_total: c("downstream_cx_ssl_total"),
            downstream_cx_ssl_active: g("downstream_cx_ssl_active"),
            downstream_cx_destroy: c("downstream_cx_destroy"),
            downstream_cx_destroy_local: c("downstream_cx_destroy_local"),
            downstream_cx_destroy_remote: c("downstream_cx_destroy_remote"),
            downstream_cx_destroy_active_rq: c("downstream_cx_destroy_active_rq"),
            downstream_cx_length_ms: h("downstream_cx_length_ms"),
            downstream_cx_max_duration_reached: c("downstream_cx_max_duration_reached"),
            downstream_cx_max_requests_reached: c("downstream_cx_max_requests_reached"),
            downstream_cx_drain_close: c("downstream_cx_drain_close"),
            downstream_cx_protocol_error: c("downstream_cx_protocol_error"),
            downstream_cx_rx_bytes_total: c("downstream_cx_rx_bytes_total"),
            downstream_cx_tx_bytes_total: c("downstream_cx_tx_bytes_total"),
            downstream_cx_upgrades_total: c("downstream_cx_upgrades_total"),
            downstream_cx_upgrades_active: g("downstream_cx_upgrades_active"),
            downstream_rq_total: c("downstream_rq_total"),
            downstream_rq_http1_total: c("downstream_rq_http1_total"),
            downstream_rq_http2_total: c("downstream_rq_http2_total"),
            downstream_rq_active: g("downstream_rq_active"),
            downstream_rq_completed: c("downstream_rq_completed"),
            downstream_rq_time: h("downstream_rq_time"),
            downstream_rq_timeout: c("downstream_rq_timeout"),
            downstream_rq_header_timeout: c("downstream_rq_header_timeout"),
            downstream_rq_failed_path_normalization: c("downstream_rq_failed_path_normalization"),
            downstream_rq_rx_reset: c("downstream_rq_rx_reset"),
            downstream_rq_tx_reset: c("downstream_rq_tx_reset"),
            downstream_rq_response_before_rq_complete: c(
                "downstream_rq_response_before_rq_complete",
            ),
            downstream_rq_non_relative_path: c("downstream_rq_non_relative_path"),
            downstream_rq_ws_on_non_ws_route: c("downstream_rq_ws_on_non_ws_route"),
            downstream_rq_idle_timeout: c("downstream_rq_idle_timeout"),
            downstream_cx_idle_timeout: c("downstream_cx_idle_timeout"),
            downstream_cx_delayed_close_timeout: c("downstream_cx_delayed_close_timeout"),
            dropped_headers_with_underscores: c("dropped_headers_with_underscores"),
            requests_rejected_with_underscores_in_headers: c(
                "requests_rejected_with_underscores_in_headers",
            ),
            classes: [
                c("downstream_rq_1xx"),
                c("downstream_rq_2xx"),
                c("downstream_rq_3xx"),
                c("downstream_rq_4xx"),
                c("downstream_rq_5xx"),
            ],
            listener_classes: [
                per_listener.counter("downstream_rq_1xx"),
                per_listener.counter("downstream_rq_2xx"),
                per_listener.counter("downstream_rq_3xx"),
                per_listener.counter("downstream_rq_4xx"),
                per_listener.counter("downstream_rq_5xx"),
            ],
            listener_completed: per_listener.counter("downstream_rq_completed"),
            no_route: c("no_route"),
            no_cluster: c("no_cluster"),
            rq_total: c("rq_total"),
            rq_redirect: c("rq_redirect"),
            rq_direct_response: c("rq_direct_response"),
            rq_reset_after_downstream_response_started: c(
                "rq_reset_after_downstream_response_started",
            ),
        }
    }

    /// Counts a completed response by its class, for the connection manager and its listener.
    pub fn response(&self, status: u16) {
        if (100..600).contains(&status) {
            let class = (status / 100 - 1) as usize;
            self.classes[class].inc();
            self.listener_classes[class].inc();
        }
        self.downstream_rq_completed.inc();
        self.listener_completed.inc();
    }
}
