//! The lines a statsd sink sends at each flush (Envoy's
//! `source/extensions/stat_sinks/common/statsd`).
//!
//! As in Envoy: only stats that were ever written are sent, every flush, even when unchanged —
//! counters as the increase since the previous flush (`prefix.name:delta|c`, `0` included),
//! gauges as their value (`|g`); text readouts are not sent; the prefix defaults to `envoy`.
//! With `use_tags` (DogStatsD) the name is the tag-extracted one and the tags follow as
//! `|#name:value,...`.
//!
//! **Deliberate difference — histograms.** Envoy sends every sample the moment it is recorded
//! (`name:value|ms`). Legate's hot path only increments a bin, so each flush sends the samples
//! of the interval that just closed, one line per non-empty bin: the bin's representative value
//! (exact below 100) with a statsd sample rate standing for its count, `name:253|ms|@0.5` for
//! two samples. Statsd servers scale counts by `1/rate`, so counts and distributions survive
//! while a flush sends a bounded number of lines. Every unit is sent as `|ms`.

use std::fmt::Write as _;

use super::histogram::Histogram;
use super::store::Store;
use super::tags::Tag;

fn tag_suffix(tags: &[Tag], use_tags: bool) -> String {
    if !use_tags || tags.is_empty() {
        return String::new();
    }
    let joined: Vec<String> = tags
        .iter()
        .map(|t| format!("{}:{}", t.name, t.value))
        .collect();
    format!("|#{}", joined.join(","))
}

impl Store {
    /// The statsd lines of one flush, plain names (`use_tag` unset). Call
    /// [`Store::flush_interval`] first so histograms report the interval that just closed.
    pub fn statsd_lines(&self, prefix: &str) -> Vec<String> {
        self.statsd_lines_with(prefix, false)
    }

    /// The statsd lines of one flush; `use_tags` sends tag-extracted names and DogStatsD tags.
    pub fn statsd_lines_with(&self, prefix: &str, use_tags: bool) -> Vec<String> {
        let prefix = if prefix.is_empty() { "envoy" } else { prefix };
        self.statsd_lines_unprefixed(use_tags)
            .into_iter()
            .map(|line| format!("{prefix}.{line}"))
            .collect()
    }

    /// The statsd lines of one flush without a prefix (`cluster.foo.upstream_rq_200:3|c`), for
    /// sinks with different prefixes. Taking them latches the counters' deltas: every sink of
    /// a flush must be given the same lines.
    pub fn statsd_lines_unprefixed(&self, use_tags: bool) -> Vec<String> {
        let producer = self.tag_producer();
        let name = |full: &'_ str, extracted: &'_ str| -> String {
            if use_tags { extracted } else { full }.to_string()
        };
        let mut lines = Vec::new();

        let mut counters = self.counters();
        counters.sort_by_cached_key(|c| c.name());
        for c in counters.iter().filter(|c| c.used()) {
            lines.push(format!(
                "{}:{}|c{}",
                name(&c.name(), c.tag_extracted_name(producer)),
                c.latch(),
                tag_suffix(c.tags(producer), use_tags)
            ));
        }

        let mut gauges = self.gauges();
        gauges.sort_by_cached_key(|g| g.name());
        for g in gauges.iter().filter(|g| g.used()) {
            lines.push(format!(
                "{}:{}|g{}",
                name(&g.name(), g.tag_extracted_name(producer)),
                g.value(),
                tag_suffix(g.tags(producer), use_tags)
            ));
        }

        let mut histograms = self.histograms();
        histograms.sort_by_cached_key(Histogram::name);
        for h in &histograms {
            let metric = name(&h.name(), h.tag_extracted_name(producer));
            let tags = tag_suffix(h.tags(producer), use_tags);
            for (value, count) in h.interval_bins().representative_samples() {
                let mut line = format!("{metric}:{value}|ms");
                if count > 1 {
                    let _ = write!(line, "|@{}", 1.0 / count as f64);
                }
                line.push_str(&tags);
                lines.push(line);
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use crate::stats::{ImportMode, Store, Unit};

    #[test]
    fn counters_send_deltas_and_unused_stats_nothing() {
        let store = Store::new();
        store.counter("cluster.foo.upstream_rq_200").add(3);
        store.counter("never");
        store.gauge("g", ImportMode::Accumulate).set(7);
        store.gauge("unset", ImportMode::Accumulate);
        store.text_readout("t").set("x");
        assert_eq!(
            store.statsd_lines(""),
            ["envoy.cluster.foo.upstream_rq_200:3|c", "envoy.g:7|g"]
        );
        // Used counters are sent every flush, even without a change.
        store.counter("cluster.foo.upstream_rq_200").inc();
        assert_eq!(
            store.statsd_lines("p"),
            ["p.cluster.foo.upstream_rq_200:1|c", "p.g:7|g"]
        );
        assert_eq!(
            store.statsd_lines("p"),
            ["p.cluster.foo.upstream_rq_200:0|c", "p.g:7|g"]
        );
    }

    #[test]
    fn tags_in_dogstatsd_form() {
        let store = Store::new();
        store.counter("cluster.foo.upstream_rq_200").inc();
        assert_eq!(
            store.statsd_lines_with("envoy", true),
            ["envoy.cluster.upstream_rq:1|c|#envoy.response_code:200,envoy.cluster_name:foo"]
        );
    }

    #[test]
    fn histograms_send_the_closed_interval() {
        let store = Store::new();
        let h = store.histogram("cluster.foo.upstream_rq_time", Unit::Milliseconds);
        h.record(5);
        h.record(253);
        h.record(256);
        store.flush_interval();
        assert_eq!(
            store.statsd_lines(""),
            [
                "envoy.cluster.foo.upstream_rq_time:5|ms",
                "envoy.cluster.foo.upstream_rq_time:255|ms|@0.5"
            ]
        );
        store.flush_interval();
        assert!(store.statsd_lines("").is_empty());
    }
}
