//! `cluster.<name>.*` stats with Envoy's names (cluster_stats.rst). The counters and gauges
//! every cluster has are one block ([`ClusterTraffic`]); per-response-code counters, the
//! response classes, `upstream_rq_time` and the internal/external split are created on first
//! use, as Envoy creates them, without a map lookup.

use std::sync::OnceLock;

use legate_core::stats::{Counter, Histogram, Scope, Unit};

legate_core::stat_block! {
    /// The counters and gauges a cluster has from its creation (Envoy's
    /// `ALL_CLUSTER_TRAFFIC_STATS`, `ALL_CLUSTER_LB_STATS` and both priorities'
    /// `ALL_CLUSTER_CIRCUIT_BREAKERS_STATS`, as far as Legate counts them).
    pub struct ClusterTraffic {
        counters: [
            upstream_cx_total,
            upstream_cx_http1_total,
            upstream_cx_http2_total,
            upstream_cx_connect_fail,
            upstream_cx_connect_timeout,
            upstream_cx_destroy,
            upstream_cx_destroy_local,
            upstream_cx_destroy_remote,
            upstream_cx_none_healthy,
            upstream_cx_overflow,
            upstream_cx_idle_timeout,
            upstream_cx_max_duration_reached,
            upstream_cx_max_requests,
            upstream_cx_rx_bytes_total,
            upstream_cx_tx_bytes_total,
            upstream_rq_total,
            upstream_rq_completed,
            upstream_rq_pending_total,
            upstream_rq_pending_overflow,
            upstream_rq_pending_failure_eject,
            upstream_rq_cancelled,
            // A `max_requests` circuit-breaker overflow (Envoy 1.40's name for it).
            upstream_rq_active_overflow,
            upstream_rq_timeout,
            upstream_rq_rx_reset,
            upstream_rq_tx_reset,
            membership_change,
            lb_healthy_panic,
            original_dst_host_invalid,
        ],
        gauges: [
            upstream_cx_active: Accumulate,
            upstream_rq_active: Accumulate,
            upstream_rq_pending_active: Accumulate,
            membership_total: NeverImport,
            membership_healthy: NeverImport,
            membership_degraded: NeverImport,
            membership_excluded: NeverImport,
            max_host_weight: NeverImport,
            cb_default_cx_open = "circuit_breakers.default.cx_open": Accumulate,
            cb_default_cx_pool_open = "circuit_breakers.default.cx_pool_open": Accumulate,
            cb_default_rq_pending_open = "circuit_breakers.default.rq_pending_open": Accumulate,
            cb_default_rq_open = "circuit_breakers.default.rq_open": Accumulate,
            cb_default_rq_retry_open = "circuit_breakers.default.rq_retry_open": Accumulate,
            cb_high_cx_open = "circuit_breakers.high.cx_open": Accumulate,
            cb_high_cx_pool_open = "circuit_breakers.high.cx_pool_open": Accumulate,
            cb_high_rq_pending_open = "circuit_breakers.high.rq_pending_open": Accumulate,
            cb_high_rq_open = "circuit_breakers.high.rq_open": Accumulate,
            cb_high_rq_retry_open = "circuit_breakers.high.rq_retry_open": Accumulate,
        ],
    }
}

#[derive(Debug)]
pub struct ClusterStats {
    /// `cluster.<name>.`, for the stats created on first use.
    pub scope: Scope,
    pub traffic: ClusterTraffic,
    pub upstream_cx_connect_ms: Histogram,
    pub upstream_cx_length_ms: Histogram,
    /// `upstream_rq_<code>`, `_<class>`, `_completed`, `_time`.
    totals: ResponseStats,
    /// The same under `internal.` and `external.`, created on first use.
    internal: OnceLock<Box<ResponseStats>>,
    external: OnceLock<Box<ResponseStats>>,
}

impl ClusterStats {
    pub fn new(scope: Scope) -> Self {
        let traffic = ClusterTraffic::new(&scope);
        let h = |n: &str| scope.histogram(n, Unit::Milliseconds);
        ClusterStats {
            traffic,
            upstream_cx_connect_ms: h("upstream_cx_connect_ms"),
            upstream_cx_length_ms: h("upstream_cx_length_ms"),
            totals: ResponseStats::new(scope.clone(), traffic.upstream_rq_completed()),
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
                let completed = scope.counter("upstream_rq_completed");
                Box::new(ResponseStats::new(scope, completed))
            })
            .count(status, time_ms);
    }
}

/// Response stats of one scope: `upstream_rq_completed`, and from the first response on the
/// classes, the codes and the time histogram.
#[derive(Debug)]
struct ResponseStats {
    scope: Scope,
    completed: Counter,
    seen: OnceLock<Box<Responses>>,
}

/// What a scope counts once it has seen a response.
#[derive(Debug)]
struct Responses {
    /// `upstream_rq_1xx` .. `_5xx`, each created by its first response.
    classes: [OnceLock<Counter>; 5],
    /// `upstream_rq_<code>` for 100..=599, each created by its first response.
    codes: Box<[OnceLock<Counter>]>,
    time: Histogram,
}

impl ResponseStats {
    fn new(scope: Scope, completed: Counter) -> Self {
        ResponseStats {
            scope,
            completed,
            seen: OnceLock::new(),
        }
    }

    fn count(&self, status: u16, time_ms: u64) {
        let seen = self.seen.get_or_init(|| {
            Box::new(Responses {
                classes: Default::default(),
                codes: (100..600).map(|_| OnceLock::new()).collect(),
                time: self.scope.histogram("upstream_rq_time", Unit::Milliseconds),
            })
        });
        if (100..600).contains(&status) {
            let class = status / 100;
            seen.classes[usize::from(class - 1)]
                .get_or_init(|| self.scope.counter(&format!("upstream_rq_{class}xx")))
                .inc();
            seen.codes[usize::from(status - 100)]
                .get_or_init(|| self.scope.counter(&format!("upstream_rq_{status}")))
                .inc();
        }
        self.completed.inc();
        seen.time.record(time_ms);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use legate_core::stats::{StatsParams, Store};

    use super::ClusterStats;

    /// As Envoy 1.40: the classes, codes and `upstream_rq_time` appear with the first
    /// response, `upstream_rq_completed` is there from the start.
    #[test]
    fn response_stats_appear_with_the_first_response() {
        let store = Arc::new(Store::new());
        let stats = ClusterStats::new(store.scope("cluster.c"));
        let names = || {
            store
                .render_text(
                    &StatsParams::new()
                        .with_filter("upstream_rq_([0-9]|completed|time$)")
                        .unwrap(),
                )
                .lines()
                .map(|l| l.split(':').next().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(), ["cluster.c.upstream_rq_completed"]);
        stats.response(404, 3, false);
        assert_eq!(
            names(),
            [
                "cluster.c.external.upstream_rq_404",
                "cluster.c.external.upstream_rq_4xx",
                "cluster.c.external.upstream_rq_completed",
                "cluster.c.upstream_rq_404",
                "cluster.c.upstream_rq_4xx",
                "cluster.c.upstream_rq_completed",
                "cluster.c.external.upstream_rq_time",
                "cluster.c.upstream_rq_time"
            ]
        );
        assert_eq!(store.counter("cluster.c.upstream_rq_completed").value(), 1);
    }
}
