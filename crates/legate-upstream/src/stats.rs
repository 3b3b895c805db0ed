//! `cluster.<name>.*` stats with Envoy's names (cluster_stats.rst). Handles are resolved once
//! per cluster; per-response-code counters and the internal/external split are created on
//! first use, without a map lookup.

use std::sync::OnceLock;

use legate_core::stats::{Counter, Gauge, Histogram, ImportMode, Scope, Unit};

#[derive(Debug)]
pub struct ClusterStats {
    pub scope: Scope,
    pub upstream_cx_total: Counter,
    pub upstream_cx_active: Gauge,
    pub upstream_cx_http1_total: Counter,
    pub upstream_cx_http2_total: Counter,
    pub upstream_cx_connect_fail: Counter,
    pub upstream_cx_connect_timeout: Counter,
    pub upstream_cx_destroy: Counter,
    pub upstream_cx_destroy_local: Counter,
    pub upstream_cx_destroy_remote: Counter,
    pub upstream_cx_connect_ms: Histogram,
    pub upstream_cx_length_ms: Histogram,
    pub upstream_rq_total: Counter,
    pub upstream_rq_active: Gauge,
    pub upstream_rq_pending_total: Counter,
    pub upstream_rq_pending_overflow: Counter,
    /// A `max_requests` circuit-breaker overflow (Envoy 1.40's name for it).
    pub upstream_rq_active_overflow: Counter,
    pub upstream_rq_timeout: Counter,
    pub upstream_rq_rx_reset: Counter,
    pub upstream_rq_tx_reset: Counter,
    pub membership_total: Gauge,
    pub membership_healthy: Gauge,
    pub membership_degraded: Gauge,
    pub membership_excluded: Gauge,
    pub membership_change: Counter,
    pub lb_healthy_panic: Counter,
    pub max_host_weight: Gauge,
    /// `upstream_rq_<code>`, `_<class>`, `_completed`, `_time`.
    totals: ResponseStats,
    /// The same under `internal.` and `external.`, created on first use.
    internal: OnceLock<ResponseStats>,
    external: OnceLock<ResponseStats>,
}

impl ClusterStats {
    pub fn new(scope: Scope) -> Self {
        let c = |n: &str| scope.counter(n);
        let g = |n: &str| scope.gauge(n, ImportMode::Accumulate);
        let h = |n: &str| scope.histogram(n, Unit::Milliseconds);
        ClusterStats {
            upstream_cx_total: c("upstream_cx_total"),
            upstream_cx_active: g("upstream_cx_active"),
            upstream_cx_http1_total: c("upstream_cx_http1_total"),
            upstream_cx_http2_total: c("upstream_cx_http2_total"),
            upstream_cx_connect_fail: c("upstream_cx_connect_fail"),
            upstream_cx_connect_timeout: c("upstream_cx_connect_timeout"),
            upstream_cx_destroy: c("upstream_cx_destroy"),
            upstream_cx_destroy_local: c("upstream_cx_destroy_local"),
            upstream_cx_destroy_remote: c("upstream_cx_destroy_remote"),
            upstream_cx_connect_ms: h("upstream_cx_connect_ms"),
            upstream_cx_length_ms: h("upstream_cx_length_ms"),
            upstream_rq_total: c("upstream_rq_total"),
            upstream_rq_active: g("upstream_rq_active"),
            upstream_rq_pending_total: c("upstream_rq_pending_total"),
            upstream_rq_pending_overflow: c("upstream_rq_pending_overflow"),
            upstream_rq_active_overflow: c("upstream_rq_active_overflow"),
            upstream_rq_timeout: c("upstream_rq_timeout"),
            upstream_rq_rx_reset: c("upstream_rq_rx_reset"),
            upstream_rq_tx_reset: c("upstream_rq_tx_reset"),
            membership_total: scope.gauge("membership_total", ImportMode::NeverImport),
            membership_healthy: scope.gauge("membership_healthy", ImportMode::NeverImport),
            membership_degraded: scope.gauge("membership_degraded", ImportMode::NeverImport),
            membership_excluded: scope.gauge("membership_excluded", ImportMode::NeverImport),
            membership_change: c("membership_change"),
            lb_healthy_panic: c("lb_healthy_panic"),
            max_host_weight: scope.gauge("max_host_weight", ImportMode::NeverImport),
            totals: ResponseStats::new(scope.clone()),
            internal: OnceLock::new(),
            external: OnceLock::new(),
            scope,
        }
    }

    /// Counts a final response: `upstream_rq_<code>`, `upstream_rq_<class>`,
    /// `upstream_rq_completed` and `upstream_rq_time`, and the same under `internal.` or
    /// `external.` by the request's origin (`x-envoy-internal`), as Envoy splits them.
    pub fn response(&self, status: u16, time_ms: u64, internal: bool) {
        self.totals.count(status, time_ms);
        let origin = if internal {
            &self.internal
        } else {
            &self.external
        };
        origin
            .get_or_init(|| {
                let scope = self
                    .scope
                    .scope(if internal { "internal." } else { "external." });
                ResponseStats::new(scope)
            })
            .count(status, time_ms);
    }
}

/// Response counters of one scope: per code (created on first use), per class, completed,
/// and the time histogram.
#[derive(Debug)]
struct ResponseStats {
    scope: Scope,
    classes: [Counter; 5],
    codes: OnceLock<Box<[OnceLock<Counter>]>>,
    completed: Counter,
    time: Histogram,
}

impl ResponseStats {
    fn new(scope: Scope) -> Self {
        let c = |n: &str| scope.counter(n);
        ResponseStats {
            classes: [
                c("upstream_rq_1xx"),
                c("upstream_rq_2xx"),
                c("upstream_rq_3xx"),
                c("upstream_rq_4xx"),
                c("upstream_rq_5xx"),
            ],
            codes: OnceLock::new(),
            completed: c("upstream_rq_completed"),
            time: scope.histogram("upstream_rq_time", Unit::Milliseconds),
            scope,
        }
    }

    fn count(&self, status: u16, time_ms: u64) {
        if (100..600).contains(&status) {
            self.classes[(status / 100 - 1) as usize].inc();
            let codes = self
                .codes
                .get_or_init(|| (100..600).map(|_| OnceLock::new()).collect());
            codes[(status - 100) as usize]
                .get_or_init(|| self.scope.counter(&format!("upstream_rq_{status}")))
                .inc();
        }
        self.completed.inc();
        self.time.record(time_ms);
    }
}
