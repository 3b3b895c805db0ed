//! The registry of stats and the handles the data path holds.
//!
//! [`Store`] maps full stat names to stats, one map per type as in Envoy (a counter and a gauge
//! may share a name). Registration takes a lock and runs tag extraction once; it happens when
//! configuration is compiled, never per request. What it returns is a handle — [`Counter`],
//! [`Gauge`], [`Histogram`], [`TextReadout`] — an `Arc` of atomics: cloning is cheap, and
//! `inc`/`add`/`set`/`record` are relaxed atomic operations that never see the map.
//! Asking twice for the same name returns handles to the same stat.
//!
//! Every stat remembers whether it was ever written ("used", Envoy's `Metric::used()`), which
//! `usedonly` and the statsd sink read. Stats are never removed: a handle stays valid for the
//! life of the process.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use super::histogram::{Histogram, Unit};
use super::tags::{Tag, TagProducer};

/// A stat's name and what tag extraction makes of it (computed on first use).
pub(crate) struct StatMeta {
    pub(crate) name: Box<str>,
    /// Tags are extracted the first time an output needs them (Prometheus, tagged statsd):
    /// at 10,000 clusters, extracting them for every stat up front was a fifth of the time
    /// to apply them and much of their memory.
    producer: Arc<TagProducer>,
    tagged: OnceLock<(String, Vec<Tag>)>,
}

impl std::fmt::Debug for StatMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatMeta")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl StatMeta {
    fn new(name: &str, producer: &Arc<TagProducer>) -> Self {
        StatMeta {
            name: name.into(),
            producer: producer.clone(),
            tagged: OnceLock::new(),
        }
    }

    fn tagged(&self) -> &(String, Vec<Tag>) {
        self.tagged
            .get_or_init(|| self.producer.produce_tags(&self.name))
    }

    pub(crate) fn tag_extracted_name(&self) -> &str {
        &self.tagged().0
    }

    pub(crate) fn tags(&self) -> &[Tag] {
        &self.tagged().1
    }

    #[cfg(test)]
    pub(crate) fn untagged(name: &str) -> Self {
        StatMeta {
            name: name.into(),
            producer: Arc::default(),
            tagged: OnceLock::from((name.to_string(), Vec::new())),
        }
    }
}

/// What a gauge does when stats are imported across a hot restart (`Gauge::ImportMode`).
/// Legate has no hot restart; the mode is kept so stat definitions read like Envoy's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ImportMode {
    NeverImport,
    Accumulate,
    /// Gauges whose mode is decided later (Envoy uses it for gauges created before config).
    Uninitialized,
}

/// Sets a "used" flag without writing the shared cache line once it is set.
#[inline]
fn mark_used(flag: &AtomicBool) {
    if !flag.load(Ordering::Relaxed) {
        flag.store(true, Ordering::Relaxed);
    }
}

pub(crate) struct CounterInner {
    pub(crate) meta: StatMeta,
    value: AtomicU64,
    /// The value the statsd sink last reported, to send deltas (Envoy's `latch()`).
    latched: AtomicU64,
    used: AtomicBool,
}

/// A monotonically increasing count (`Stats::Counter`).
#[derive(Clone)]
pub struct Counter(pub(crate) Arc<CounterInner>);

impl Counter {
    fn new(meta: StatMeta) -> Self {
        Counter(Arc::new(CounterInner {
            meta,
            value: AtomicU64::new(0),
            latched: AtomicU64::new(0),
            used: AtomicBool::new(false),
        }))
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    #[inline]
    pub fn add(&self, amount: u64) {
        self.0.value.fetch_add(amount, Ordering::Relaxed);
        mark_used(&self.0.used);
    }

    pub fn value(&self) -> u64 {
        self.0.value.load(Ordering::Relaxed)
    }

    pub fn used(&self) -> bool {
        self.0.used.load(Ordering::Relaxed)
    }

    pub fn name(&self) -> &str {
        &self.0.meta.name
    }

    pub fn tag_extracted_name(&self) -> &str {
        self.0.meta.tag_extracted_name()
    }

    pub fn tags(&self) -> &[Tag] {
        self.0.meta.tags()
    }

    /// Zero, as `POST /reset_counters` does (`Counter::reset`); the stat stays "used".
    pub fn reset(&self) {
        self.0.value.store(0, Ordering::Relaxed);
        self.0.latched.store(0, Ordering::Relaxed);
    }

    /// The increase since the previous call (Envoy's `latch()`, used by sinks).
    pub(crate) fn latch(&self) -> u64 {
        let now = self.value();
        let before = self.0.latched.swap(now, Ordering::Relaxed);
        now.saturating_sub(before)
    }
}

pub(crate) struct GaugeInner {
    pub(crate) meta: StatMeta,
    value: AtomicU64,
    import_mode: ImportMode,
    used: AtomicBool,
}

/// A value that goes up and down (`Stats::Gauge`).
#[derive(Clone)]
pub struct Gauge(pub(crate) Arc<GaugeInner>);

impl Gauge {
    fn new(meta: StatMeta, import_mode: ImportMode) -> Self {
        Gauge(Arc::new(GaugeInner {
            meta,
            value: AtomicU64::new(0),
            import_mode,
            used: AtomicBool::new(false),
        }))
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    #[inline]
    pub fn dec(&self) {
        self.sub(1);
    }

    #[inline]
    pub fn add(&self, amount: u64) {
        self.0.value.fetch_add(amount, Ordering::Relaxed);
        mark_used(&self.0.used);
    }

    /// Subtracts `amount`. Like Envoy (which asserts), going below zero is a caller bug; the
    /// value wraps rather than paying for a compare-and-swap loop on the hot path.
    #[inline]
    pub fn sub(&self, amount: u64) {
        self.0.value.fetch_sub(amount, Ordering::Relaxed);
        mark_used(&self.0.used);
    }

    #[inline]
    pub fn set(&self, value: u64) {
        self.0.value.store(value, Ordering::Relaxed);
        mark_used(&self.0.used);
    }

    pub fn value(&self) -> u64 {
        self.0.value.load(Ordering::Relaxed)
    }

    pub fn used(&self) -> bool {
        self.0.used.load(Ordering::Relaxed)
    }

    pub fn import_mode(&self) -> ImportMode {
        self.0.import_mode
    }

    pub fn name(&self) -> &str {
        &self.0.meta.name
    }

    pub fn tag_extracted_name(&self) -> &str {
        self.0.meta.tag_extracted_name()
    }

    pub fn tags(&self) -> &[Tag] {
        self.0.meta.tags()
    }
}

pub(crate) struct TextReadoutInner {
    pub(crate) meta: StatMeta,
    value: RwLock<String>,
    used: AtomicBool,
}

/// A string stat, such as an xDS `version_text` (`Stats::TextReadout`). Set from the control
/// side only, so a lock is fine here.
#[derive(Clone)]
pub struct TextReadout(pub(crate) Arc<TextReadoutInner>);

impl TextReadout {
    fn new(meta: StatMeta) -> Self {
        TextReadout(Arc::new(TextReadoutInner {
            meta,
            value: RwLock::new(String::new()),
            used: AtomicBool::new(false),
        }))
    }

    pub fn set(&self, value: impl Into<String>) {
        *self.0.value.write().unwrap_or_else(PoisonError::into_inner) = value.into();
        mark_used(&self.0.used);
    }

    pub fn value(&self) -> String {
        self.0
            .value
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn used(&self) -> bool {
        self.0.used.load(Ordering::Relaxed)
    }

    pub fn name(&self) -> &str {
        &self.0.meta.name
    }

    pub fn tag_extracted_name(&self) -> &str {
        self.0.meta.tag_extracted_name()
    }

    pub fn tags(&self) -> &[Tag] {
        self.0.meta.tags()
    }
}

macro_rules! debug_by_name {
    ($($ty:ident),*) => {$(
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty)).field("name", &self.name()).finish()
            }
        }
    )*};
}
debug_by_name!(Counter, Gauge, TextReadout);

/// One map of stats of one type. Names come from the configuration, not from clients, so a
/// fast non-keyed hash is safe here (SipHash was an eighth of the time to register 10,000
/// clusters' stats).
struct Registry<T>(RwLock<HashMap<String, T, rustc_hash::FxBuildHasher>>);

impl<T: Clone> Registry<T> {
    fn new() -> Self {
        Registry(RwLock::new(HashMap::default()))
    }

    fn get_or_insert(&self, name: &str, make: impl FnOnce() -> T) -> T {
        if let Some(stat) = self
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            return stat.clone();
        }
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_string())
            .or_insert_with(make)
            .clone()
    }

    fn all(&self) -> Vec<T> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}

/// The process-wide stats store (Envoy's `ThreadLocalStoreImpl`, without the thread-local
/// caches: the handles are the cache).
pub struct Store {
    tag_producer: Arc<TagProducer>,
    counters: Registry<Counter>,
    gauges: Registry<Gauge>,
    histograms: Registry<Histogram>,
    text_readouts: Registry<TextReadout>,
}

impl Default for Store {
    fn default() -> Self {
        Store::with_tag_producer(TagProducer::default())
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// A store with Envoy's default tag extractors.
    pub fn new() -> Self {
        Store::default()
    }

    /// A store with the tag extraction of `stats_config` (see [`TagProducer::new`]).
    pub fn with_tag_producer(tag_producer: TagProducer) -> Self {
        Store {
            tag_producer: Arc::new(tag_producer),
            counters: Registry::new(),
            gauges: Registry::new(),
            histograms: Registry::new(),
            text_readouts: Registry::new(),
        }
    }

    pub fn tag_producer(&self) -> &TagProducer {
        &self.tag_producer
    }

    /// The counter named `name`, created at zero the first time.
    pub fn counter(&self, name: &str) -> Counter {
        self.counters.get_or_insert(name, || {
            Counter::new(StatMeta::new(name, &self.tag_producer))
        })
    }

    /// The gauge named `name`; `import_mode` is used only when it is created.
    pub fn gauge(&self, name: &str, import_mode: ImportMode) -> Gauge {
        self.gauges.get_or_insert(name, || {
            Gauge::new(StatMeta::new(name, &self.tag_producer), import_mode)
        })
    }

    /// The histogram named `name`; `unit` is used only when it is created.
    pub fn histogram(&self, name: &str, unit: Unit) -> Histogram {
        self.histograms.get_or_insert(name, || {
            Histogram::new(StatMeta::new(name, &self.tag_producer), unit)
        })
    }

    /// The text readout named `name`, created empty the first time.
    pub fn text_readout(&self, name: &str) -> TextReadout {
        self.text_readouts.get_or_insert(name, || {
            TextReadout::new(StatMeta::new(name, &self.tag_producer))
        })
    }

    /// A scope that prefixes every name it registers (`Scope::createScope`).
    pub fn scope(self: &Arc<Self>, prefix: &str) -> Scope {
        Scope {
            store: Arc::clone(self),
            prefix: scope_prefix("", prefix),
        }
    }

    /// Every counter, in no particular order.
    pub fn counters(&self) -> Vec<Counter> {
        self.counters.all()
    }

    pub fn gauges(&self) -> Vec<Gauge> {
        self.gauges.all()
    }

    pub fn histograms(&self) -> Vec<Histogram> {
        self.histograms.all()
    }

    pub fn text_readouts(&self) -> Vec<TextReadout> {
        self.text_readouts.all()
    }

    /// `POST /reset_counters`: every counter back to zero. Envoy leaves gauges, histograms and
    /// the "used" flags alone (checked against Envoy 1.40).
    pub fn reset_counters(&self) {
        self.counters.all().iter().for_each(Counter::reset);
    }

    /// Closes the current histogram interval of every histogram. The stats flush timer calls
    /// this (Envoy merges histograms every `stats_flush_interval`, 5 s by default), then the
    /// sinks.
    pub fn flush_interval(&self) {
        self.histograms
            .all()
            .iter()
            .for_each(Histogram::flush_interval);
    }
}

/// `parent` + `prefix`, ending with a dot unless empty. Envoy's scopes join with `.`; accepting
/// `"cluster.foo."` and `"cluster.foo"` alike keeps callers simple.
fn scope_prefix(parent: &str, prefix: &str) -> String {
    let prefix = prefix.trim_end_matches('.');
    if prefix.is_empty() {
        parent.to_string()
    } else {
        format!("{parent}{prefix}.")
    }
}

/// A view of the store that prefixes names: `store.scope("cluster.foo")` registers
/// `counter("upstream_rq_total")` as `cluster.foo.upstream_rq_total`.
#[derive(Clone, Debug)]
pub struct Scope {
    store: Arc<Store>,
    prefix: String,
}

impl Scope {
    /// The prefix, with its trailing dot (empty for the root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// A nested scope: `scope("cluster.foo").scope("health_check")`.
    pub fn scope(&self, prefix: &str) -> Scope {
        Scope {
            store: Arc::clone(&self.store),
            prefix: scope_prefix(&self.prefix, prefix),
        }
    }

    fn full(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn counter(&self, name: &str) -> Counter {
        self.store.counter(&self.full(name))
    }

    pub fn gauge(&self, name: &str, import_mode: ImportMode) -> Gauge {
        self.store.gauge(&self.full(name), import_mode)
    }

    pub fn histogram(&self, name: &str, unit: Unit) -> Histogram {
        self.store.histogram(&self.full(name), unit)
    }

    pub fn text_readout(&self, name: &str) -> TextReadout {
        self.store.text_readout(&self.full(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_share_state() {
        let store = Store::new();
        let a = store.counter("c");
        let b = store.counter("c");
        a.inc();
        b.add(2);
        assert_eq!(store.counter("c").value(), 3);

        let g = store.gauge("g", ImportMode::Accumulate);
        g.set(10);
        store.gauge("g", ImportMode::NeverImport).dec();
        assert_eq!(g.value(), 9);
        assert_eq!(g.import_mode(), ImportMode::Accumulate);

        store.text_readout("t").set("v1");
        assert_eq!(store.text_readout("t").value(), "v1");

        let h = store.histogram("h", Unit::Milliseconds);
        store.histogram("h", Unit::Unspecified).record(5);
        assert!(h.used());
        assert_eq!(h.unit(), Unit::Milliseconds);

        // One map per type: a gauge may share a counter's name.
        assert_eq!(store.gauge("c", ImportMode::Accumulate).value(), 0);
        assert_eq!(store.counters().len(), 1);
    }

    #[test]
    fn scopes_prefix_names() {
        let store = Arc::new(Store::new());
        let cluster = store.scope("cluster.foo.");
        cluster.counter("upstream_rq_total").inc();
        assert_eq!(store.counter("cluster.foo.upstream_rq_total").value(), 1);

        let hc = store.scope("cluster.foo").scope("health_check");
        assert_eq!(hc.prefix(), "cluster.foo.health_check.");
        assert_eq!(
            hc.counter("attempt").name(),
            "cluster.foo.health_check.attempt"
        );
        assert_eq!(store.scope("").counter("x").name(), "x");
        assert_eq!(
            cluster.counter("upstream_rq_200").tags(),
            [
                Tag::new("envoy.response_code", "200"),
                Tag::new("envoy.cluster_name", "foo")
            ]
        );
    }

    #[test]
    fn used_flags() {
        let store = Store::new();
        let c = store.counter("c");
        let g = store.gauge("g", ImportMode::Accumulate);
        let t = store.text_readout("t");
        assert!(!c.used() && !g.used() && !t.used());
        c.add(0);
        g.inc();
        g.dec();
        t.set("");
        assert!(c.used() && g.used() && t.used());
    }

    #[test]
    fn reset_counters_keeps_used() {
        let store = Store::new();
        let c = store.counter("c");
        c.add(5);
        let g = store.gauge("g", ImportMode::Accumulate);
        g.set(3);
        store.reset_counters();
        assert_eq!(c.value(), 0);
        assert!(c.used());
        assert_eq!(g.value(), 3);
    }

    #[test]
    fn latch_reports_deltas() {
        let store = Store::new();
        let c = store.counter("c");
        c.add(4);
        assert_eq!(c.latch(), 4);
        assert_eq!(c.latch(), 0);
        c.inc();
        assert_eq!(c.latch(), 1);
    }

    #[test]
    fn store_is_shared_across_threads() {
        let store = Arc::new(Store::new());
        std::thread::scope(|s| {
            for _ in 0..4 {
                let store = Arc::clone(&store);
                s.spawn(move || {
                    let c = store.counter("shared");
                    for _ in 0..1000 {
                        c.inc();
                    }
                });
            }
        });
        assert_eq!(store.counter("shared").value(), 4000);
    }
}
