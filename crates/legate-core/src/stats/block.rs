//! Blocks: the counters and gauges one thing always has, registered together (Envoy's stat
//! structs, such as `ALL_CLUSTER_TRAFFIC_STATS`).
//!
//! A block's names are fixed when Legate is compiled ([`BlockSchema`], declared with
//! [`stat_block!`](crate::stat_block)) and its values sit in one array per type, so a stat in
//! a block costs its value (16 bytes): no name of its own, no entry in the store's tables, no
//! allocation. The store keeps one entry per block, under its prefix; a stat in a block is
//! still found by its full name (`Store::counter("cluster.foo.upstream_rq_total")` returns the
//! block's counter), listed by every output, and extracted into tags like any other.
//!
//! A stat registered alone is ~60 bytes with its table entry: for a cluster's ~40 stats, blocks
//! were most of what took a configured cluster from 7.1 to 3.5 KiB (BENCHMARKS.md).

use once_cell::race::OnceBox;

use super::store::{
    Counter, CounterCell, Gauge, GaugeCell, ImportMode, SharedStr, Tagged, table_hash,
};
use super::tags::TagProducer;

/// The names of a block's stats, in the order of its values.
#[derive(Debug)]
pub struct BlockSchema {
    pub counters: &'static [&'static str],
    pub gauges: &'static [(&'static str, ImportMode)],
}

impl BlockSchema {
    /// The name of the `index`th stat: counters first, then gauges.
    fn rest(&self, index: usize) -> &'static str {
        match index.checked_sub(self.counters.len()) {
            None => self.counters[index],
            Some(g) => self.gauges[g].0,
        }
    }

    fn len(&self) -> usize {
        self.counters.len() + self.gauges.len()
    }
}

/// The stats of one [`BlockSchema`] under one prefix. Like every stat, never freed: a block is
/// `&'static`.
pub struct Block {
    pub(crate) prefix: SharedStr,
    pub(crate) schema: &'static BlockSchema,
    counters: Box<[CounterCell]>,
    gauges: Box<[GaugeCell]>,
    /// The tag-extracted name and tags of each stat (counters, then gauges), extracted the
    /// first time an output needs them.
    tagged: OnceBox<Box<[Tagged]>>,
    /// `store::name_hash` of the prefix: the store's table of blocks is keyed by prefix.
    pub(crate) hash: u32,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("prefix", &&*self.prefix)
            .finish_non_exhaustive()
    }
}

impl Block {
    /// `hash` is `store::name_hash` of the prefix, which the store computed to look the block up.
    pub(crate) fn leak(
        prefix: SharedStr,
        hash: u32,
        schema: &'static BlockSchema,
    ) -> &'static Block {
        Box::leak(Box::new(Block {
            hash,
            prefix,
            schema,
            counters: schema.counters.iter().map(|_| CounterCell::new()).collect(),
            gauges: schema
                .gauges
                .iter()
                .map(|(_, mode)| GaugeCell::new(*mode))
                .collect(),
            tagged: OnceBox::new(),
        }))
    }

    /// The `index`th counter of the schema.
    #[inline]
    pub fn counter(&'static self, index: usize) -> Counter {
        Counter(&self.counters[index])
    }

    /// The `index`th gauge of the schema.
    #[inline]
    pub fn gauge(&'static self, index: usize) -> Gauge {
        Gauge(&self.gauges[index])
    }

    /// The counter whose name is the prefix followed by `rest`, if the schema has one.
    pub(crate) fn counter_named(&'static self, rest: &str) -> Option<Counter> {
        let index = self.schema.counters.iter().position(|n| *n == rest)?;
        Some(self.counter(index))
    }

    /// The gauge whose name is the prefix followed by `rest`, if the schema has one.
    pub(crate) fn gauge_named(&'static self, rest: &str) -> Option<Gauge> {
        let index = self.schema.gauges.iter().position(|(n, _)| *n == rest)?;
        Some(self.gauge(index))
    }

    /// The counters with their indices among the block's stats (for [`Block::name`]).
    pub(crate) fn counters(&'static self) -> impl Iterator<Item = (usize, &'static CounterCell)> {
        self.counters.iter().enumerate()
    }

    /// The gauges with their indices among the block's stats (after the counters).
    pub(crate) fn gauges(&'static self) -> impl Iterator<Item = (usize, &'static GaugeCell)> {
        let first = self.counters.len();
        self.gauges
            .iter()
            .enumerate()
            .map(move |(i, g)| (first + i, g))
    }

    /// The full name of the `index`th stat (counters, then gauges).
    pub(crate) fn name(&self, index: usize) -> String {
        format!("{}{}", &*self.prefix, self.schema.rest(index))
    }

    pub(crate) fn tagged(&self, index: usize, producer: &TagProducer) -> &Tagged {
        &self.tagged.get_or_init(|| {
            (0..self.schema.len())
                .map(|i| producer.produce_tags(&self.name(i)))
                .collect::<Box<[_]>>()
                .into()
        })[index]
    }

    pub(crate) fn table_hash(&self) -> u64 {
        table_hash(self.hash)
    }
}

/// Declares a block of stats: a handle type (one pointer, `Copy`) with a method per stat, and
/// its [`BlockSchema`]. A stat's name is its method's, or the string after `=` (a name may go
/// below the block's prefix: `cb_default_cx_open = "circuit_breakers.default.cx_open"`).
///
/// ```
/// use std::sync::Arc;
/// use legate_core::stats::Store;
///
/// legate_core::stat_block! {
///     /// `demo.*`
///     pub struct DemoStats {
///         counters: [requests, errors, pool_overflow = "pool.overflow"],
///         gauges: [active: Accumulate],
///     }
/// }
///
/// let store = Arc::new(Store::new());
/// let stats = DemoStats::new(&store.scope("demo"));
/// stats.requests().inc();
/// stats.pool_overflow().inc();
/// stats.active().set(3);
/// assert_eq!(store.counter("demo.requests").value(), 1);
/// assert_eq!(store.counter("demo.pool.overflow").value(), 1);
/// assert_eq!(DemoStats::new(&store.scope("demo")).active().value(), 3);
/// ```
#[macro_export]
macro_rules! stat_block {
    (
        $(#[$attr:meta])*
        $vis:vis struct $name:ident {
            counters: [$($counter:ident $(= $counter_name:literal)?),* $(,)?],
            gauges: [$($gauge:ident $(= $gauge_name:literal)?: $mode:ident),* $(,)?] $(,)?
        }
    ) => {
        $(#[$attr])*
        #[derive(Clone, Copy, Debug)]
        $vis struct $name(&'static $crate::stats::Block);

        const _: () = {
            #[allow(non_camel_case_types, dead_code)]
            enum Counters { $($counter),* }
            #[allow(non_camel_case_types, dead_code)]
            enum Gauges { $($gauge),* }

            static SCHEMA: $crate::stats::BlockSchema = $crate::stats::BlockSchema {
                counters: &[$($crate::__stat_name!($counter $(, $counter_name)?)),*],
                gauges: &[$(
                    (
                        $crate::__stat_name!($gauge $(, $gauge_name)?),
                        $crate::stats::ImportMode::$mode,
                    )
                ),*],
            };

            #[allow(dead_code)]
            impl $name {
                /// The block under `scope`'s prefix, created the first time.
                pub fn new(scope: &$crate::stats::Scope) -> Self {
                    $name(scope.block(&SCHEMA))
                }

                $(
                    #[inline]
                    pub fn $counter(&self) -> $crate::stats::Counter {
                        self.0.counter(Counters::$counter as usize)
                    }
                )*
                $(
                    #[inline]
                    pub fn $gauge(&self) -> $crate::stats::Gauge {
                        self.0.gauge(Gauges::$gauge as usize)
                    }
                )*
            }
        };
    };
}

/// A stat's name in [`stat_block!`]: the string given, or the method's name.
#[doc(hidden)]
#[macro_export]
macro_rules! __stat_name {
    ($ident:ident) => {
        stringify!($ident)
    };
    ($ident:ident, $name:literal) => {
        $name
    };
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::stats::{ImportMode, StatsParams, Store};

    crate::stat_block! {
        struct Demo {
            counters: [rq_total, rq_error],
            gauges: [cx_active: Accumulate, members: NeverImport],
        }
    }

    #[test]
    fn a_block_is_found_by_its_names() {
        let store = Arc::new(Store::new());
        let scope = store.scope("cluster.foo");
        let demo = Demo::new(&scope);
        demo.rq_total().add(2);
        demo.members().set(5);
        // The same block again, and its stats by full name, however the name is split.
        assert_eq!(
            Demo::new(&store.scope("cluster.foo.")).rq_total().value(),
            2
        );
        assert_eq!(store.counter("cluster.foo.rq_total").value(), 2);
        assert_eq!(scope.counter("rq_total").value(), 2);
        scope.counter("rq_error").inc();
        assert_eq!(demo.rq_error().value(), 1);
        let members = store.gauge("cluster.foo.members", ImportMode::Accumulate);
        assert_eq!(members.value(), 5);
        assert_eq!(members.import_mode(), ImportMode::NeverImport);
        // Other prefixes are other blocks; names outside the schema are stats of their own.
        assert_eq!(Demo::new(&store.scope("cluster.bar")).rq_total().value(), 0);
        scope.counter("other").inc();
        assert_eq!(store.counters().len(), 5);
        assert_eq!(store.gauges().len(), 4);
    }

    #[test]
    fn a_block_is_listed_like_single_stats() {
        let store = Arc::new(Store::new());
        let demo = Demo::new(&store.scope("cluster.foo"));
        demo.rq_total().inc();
        demo.cx_active().set(1);
        store.counter("cluster.foo.single").inc();
        assert_eq!(
            store.render_text(&StatsParams::new().with_used_only(true)),
            "cluster.foo.cx_active: 1\ncluster.foo.rq_total: 1\ncluster.foo.single: 1\n"
        );
        let prometheus = store.render_prometheus(&StatsParams::new());
        assert!(
            prometheus.contains("envoy_cluster_rq_total{envoy_cluster_name=\"foo\"} 1\n"),
            "{prometheus}"
        );
        assert!(
            prometheus.contains("envoy_cluster_members{envoy_cluster_name=\"foo\"} 0\n"),
            "{prometheus}"
        );
        assert_eq!(
            store.statsd_lines(""),
            [
                "envoy.cluster.foo.rq_total:1|c",
                "envoy.cluster.foo.single:1|c",
                "envoy.cluster.foo.cx_active:1|g"
            ]
        );
        store.reset_counters();
        assert_eq!(demo.rq_total().value(), 0);
        assert!(demo.rq_total().used());
    }
}
