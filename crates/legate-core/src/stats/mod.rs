//! The stats store: counters, gauges, histograms and text readouts named exactly as Envoy names
//! them, and the ways Envoy shows them.
//!
//! * [`store`] — the registry ([`Store`], [`Scope`]) and the handles the data path holds
//!   ([`Counter`], [`Gauge`], [`Histogram`], [`TextReadout`]): references to atomics, so
//!   recording is lock-free and never looks a name up.
//! * [`block`] — the stats one thing always has, registered as one [`Block`] with
//!   [`stat_block!`](crate::stat_block): 16 bytes a stat instead of ~60.
//! * [`histogram`] — [`Histogram`]: lock-free recording into circllhist's log-linear bins, and
//!   the quantiles, Prometheus buckets and sums Envoy derives from them.
//! * [`tags`] — Envoy's tag extraction ([`TagProducer`]): `cluster.foo.upstream_rq_200` ->
//!   `cluster.upstream_rq` + `envoy.response_code`, `envoy.cluster_name`.
//! * [`render`] — `/stats`, `/stats?format=json` and `/stats/prometheus` ([`StatsParams`]).
//! * [`statsd`] — the lines of a statsd sink flush.
//!
//! Deliberate differences from Envoy, all in what a reader sees between two stats flushes:
//! Envoy merges per-thread histograms only at each flush (`stats_flush_interval`, 5 s), so its
//! admin pages show nothing new until then; Legate's *cumulative* histogram values are live, and
//! its *interval* values are those of the last interval closed by [`Store::flush_interval`].
//! Histograms in the `Percent` unit are stored and printed like any other (Envoy scales them).
//! Statsd histograms are sent per flush, not per sample (see [`statsd`]).

pub mod block;
pub mod histogram;
pub mod render;
pub mod statsd;
pub mod store;
pub mod tags;

pub use block::{Block, BlockSchema};
pub use histogram::{
    BinCounts, DEFAULT_BUCKETS, Histogram, HistogramStatistics, SUPPORTED_QUANTILES, Unit,
};
pub use render::{StatsParams, StatsType};
pub use store::{
    Counter, CounterCell, Gauge, GaugeCell, ImportMode, Listed, Scope, Store, TextReadout,
};
pub use tags::{Tag, TagProducer, TagSpecifier};

/// Makes a stat-name component from something that may hold `:` — an address, a URL, a
/// cluster name — as Envoy's `Stats::Utility::sanitizeStatsName` does: one leading and one
/// trailing `.` dropped, `://`, `:/` and `:` become `_`, NUL becomes `_`.
/// `sanitize("127.0.0.1:8080")` is `127.0.0.1_8080`, as in `listener.127.0.0.1_8080.*`.
pub fn sanitize(name: &str) -> String {
    let name = name.strip_suffix('.').unwrap_or(name);
    let name = name.strip_prefix('.').unwrap_or(name);
    name.replace("://", "_")
        .replace(":/", "_")
        .replace([':', '\0'], "_")
}

#[cfg(test)]
mod tests {
    use super::sanitize;

    #[test]
    fn sanitize_like_envoy() {
        assert_eq!(sanitize("a.b.c."), "a.b.c");
        assert_eq!(sanitize(".a.b.c"), "a.b.c");
        assert_eq!(sanitize("a::b"), "a__b");
        assert_eq!(sanitize("a.\0"), "a._");
        assert_eq!(sanitize("a://b"), "a_b");
        assert_eq!(sanitize("a:/b"), "a_b");
        assert_eq!(sanitize("0.0.0.0:10000"), "0.0.0.0_10000");
        assert_eq!(sanitize("[::1]:80"), "[__1]_80");
    }
}
