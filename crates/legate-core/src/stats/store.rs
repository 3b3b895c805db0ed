//! The registry of stats and the handles the data path holds.
//!
//! [`Store`] maps full stat names to stats, one table per type as in Envoy (a counter and a
//! gauge may share a name). Registration takes a lock and happens when configuration is
//! compiled, never per request. What it returns is a handle — [`Counter`], [`Gauge`],
//! [`Histogram`], [`TextReadout`] — a reference to atomics: copying one is free, and
//! `inc`/`add`/`set`/`record` are relaxed atomic operations that never see the table.
//! Asking twice for the same name returns handles to the same stat.
//!
//! Names are not stored whole. A stat keeps its scope's prefix (`cluster.foo.`, one string
//! shared by every stat of the scope) and the rest of its name (`upstream_rq_total`, interned:
//! one string for every cluster's), and the tables hash the two as one name, so
//! `cluster.foo.upstream_rq_total` is found whichever way it is split. At 10,000 clusters of
//! ~50 stats each this is most of what the names cost (Envoy uses a symbol table for the
//! same reason).
//!
//! Counters and gauges registered by name are [`Single`]s: a cell with the value and the name
//! beside it. Those one thing always has (a cluster's ~30) are better registered together as
//! a [`Block`], whose names are a static list (see [`super::block`]); the store finds and lists
//! both kinds alike.
//!
//! Every stat remembers whether it was ever written ("used", Envoy's `Metric::used()`), which
//! `usedonly` and the statsd sink read. Stats are never removed: a handle stays valid for the
//! life of the process. So a handle is a plain `&'static` reference to a stat allocated once
//! and never freed: copying one counts no reference, and a stat carries no counts (16 bytes
//! of each of ~500,000 stats at 10,000 clusters).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use once_cell::race::OnceBox;

use hashbrown::HashTable;

use super::block::{Block, BlockSchema};
use super::histogram::{Histogram, Unit};
use super::tags::{Tag, TagProducer};

/// A string shared behind one pointer (an `Arc<str>` is two): a stat holds two, and at
/// 10,000 clusters there are half a million stats.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SharedStr(Arc<Box<str>>);

impl SharedStr {
    fn new(s: impl Into<Box<str>>) -> Self {
        SharedStr(Arc::new(s.into()))
    }
}

impl std::ops::Deref for SharedStr {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

/// Hashes and compares as the `str` it holds (as `Borrow` requires).
impl std::borrow::Borrow<str> for SharedStr {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// A stat's full name: its scope's prefix followed by the rest, both shared (see the module
/// docs).
#[derive(Clone)]
pub(crate) struct StatName {
    prefix: SharedStr,
    rest: SharedStr,
}

impl StatName {
    /// Whether `prefix` + `rest` spell this name (however the two split it).
    fn is(&self, prefix: &str, rest: &str) -> bool {
        if self.prefix.len() == prefix.len() && self.prefix.as_ptr() == prefix.as_ptr() {
            return *self.rest == *rest;
        }
        self.prefix.len() + self.rest.len() == prefix.len() + rest.len()
            && self
                .prefix
                .bytes()
                .chain(self.rest.bytes())
                .eq(prefix.bytes().chain(rest.bytes()))
    }
}

impl std::fmt::Display for StatName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.prefix)?;
        f.write_str(&self.rest)
    }
}

/// FNV-1a over the bytes of `prefix` then `rest` (the same for every split of one name),
/// folded to 32 bits. Names come from the configuration, not from clients, so an unkeyed hash
/// is fine here.
///
/// Each stat keeps its name's hash (in what was padding): growing a table rehashes every stat,
/// and hashing the name again there — two pointers away, byte by byte — was a fifth of the
/// time to load 10,000 clusters.
pub(crate) fn name_hash(prefix: &str, rest: &str) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in prefix.as_bytes().iter().chain(rest.as_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h ^ (h >> 32)) as u32
}

/// A name's hash as the tables take it: spread over 64 bits, since a table's buckets come from
/// the low bits and its tags from the top seven.
pub(crate) fn table_hash(hash: u32) -> u64 {
    u64::from(hash).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// A name's tag-extracted form and its tags.
pub(crate) type Tagged = (String, Vec<Tag>);

/// A stat's name and what tag extraction makes of it (computed on first use).
pub(crate) struct StatMeta {
    pub(crate) name: StatName,
    /// Tags are extracted the first time an output needs them (Prometheus, tagged statsd),
    /// with the store's producer: at 10,000 clusters, extracting them for every stat up front
    /// was a fifth of the time to apply them and much of their memory. (One pointer: a
    /// `OnceLock` would take two words.)
    tagged: OnceBox<Tagged>,
}

impl std::fmt::Debug for StatMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatMeta")
            .field("name", &self.name.to_string())
            .finish_non_exhaustive()
    }
}

impl StatMeta {
    fn new(name: StatName) -> Self {
        StatMeta {
            name,
            tagged: OnceBox::new(),
        }
    }

    fn tagged(&self, producer: &TagProducer) -> &Tagged {
        self.tagged
            .get_or_init(|| Box::new(producer.produce_tags(&self.name.to_string())))
    }

    pub(crate) fn tag_extracted_name(&self, producer: &TagProducer) -> &str {
        &self.tagged(producer).0
    }

    pub(crate) fn tags(&self, producer: &TagProducer) -> &[Tag] {
        &self.tagged(producer).1
    }

    #[cfg(test)]
    pub(crate) fn untagged(name: &str) -> Self {
        StatMeta {
            name: StatName {
                prefix: SharedStr::new(""),
                rest: SharedStr::new(name),
            },
            tagged: OnceBox::with_value(Box::new((name.to_string(), Vec::new()))),
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

/// The top bit of [`CounterCell::latched`]: the counter was written at least once.
const COUNTER_USED: u64 = 1 << 63;

/// A counter's value: what a [`Counter`] points at, alone (a stat registered by name) or in a
/// [`Block`](super::block::Block).
pub struct CounterCell {
    value: AtomicU64,
    /// The value the statsd sink last reported, to send deltas (Envoy's `latch()`), and in its
    /// top bit whether the counter was ever written: a counter is 16 bytes.
    latched: AtomicU64,
}

impl CounterCell {
    pub(crate) const fn new() -> Self {
        CounterCell {
            value: AtomicU64::new(0),
            latched: AtomicU64::new(0),
        }
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    #[inline]
    pub fn add(&self, amount: u64) {
        self.value.fetch_add(amount, Ordering::Relaxed);
        if self.latched.load(Ordering::Relaxed) & COUNTER_USED == 0 {
            self.latched.fetch_or(COUNTER_USED, Ordering::Relaxed);
        }
    }

    pub fn value(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }

    pub fn used(&self) -> bool {
        self.latched.load(Ordering::Relaxed) & COUNTER_USED != 0
    }

    /// Zero, as `POST /reset_counters` does (`Counter::reset`); the stat stays "used".
    pub fn reset(&self) {
        self.value.store(0, Ordering::Relaxed);
        self.latched.fetch_and(COUNTER_USED, Ordering::Relaxed);
    }

    /// The increase since the previous call (Envoy's `latch()`, used by sinks).
    pub(crate) fn latch(&self) -> u64 {
        let now = self.value();
        let before = self
            .latched
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
                Some((l & COUNTER_USED) | now)
            })
            .unwrap_or_else(|l| l);
        now.saturating_sub(before & !COUNTER_USED)
    }
}

/// A monotonically increasing count (`Stats::Counter`): a handle to its [`CounterCell`], whose
/// methods it has.
#[derive(Clone, Copy)]
pub struct Counter(pub(crate) &'static CounterCell);

impl std::ops::Deref for Counter {
    type Target = CounterCell;

    #[inline]
    fn deref(&self) -> &CounterCell {
        self.0
    }
}

/// A gauge's value: what a [`Gauge`] points at, alone or in a [`Block`](super::block::Block).
pub struct GaugeCell {
    value: AtomicU64,
    used: AtomicBool,
    import_mode: ImportMode,
}

impl GaugeCell {
    pub(crate) const fn new(import_mode: ImportMode) -> Self {
        GaugeCell {
            value: AtomicU64::new(0),
            used: AtomicBool::new(false),
            import_mode,
        }
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
        self.value.fetch_add(amount, Ordering::Relaxed);
        mark_used(&self.used);
    }

    /// Subtracts `amount`. Like Envoy (which asserts), going below zero is a caller bug; the
    /// value wraps rather than paying for a compare-and-swap loop on the hot path.
    #[inline]
    pub fn sub(&self, amount: u64) {
        self.value.fetch_sub(amount, Ordering::Relaxed);
        mark_used(&self.used);
    }

    #[inline]
    pub fn set(&self, value: u64) {
        self.value.store(value, Ordering::Relaxed);
        mark_used(&self.used);
    }

    pub fn value(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }

    pub fn used(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }

    pub fn import_mode(&self) -> ImportMode {
        self.import_mode
    }
}

/// A value that goes up and down (`Stats::Gauge`): a handle to its [`GaugeCell`], whose
/// methods it has.
#[derive(Clone, Copy)]
pub struct Gauge(pub(crate) &'static GaugeCell);

impl std::ops::Deref for Gauge {
    type Target = GaugeCell;

    #[inline]
    fn deref(&self) -> &GaugeCell {
        self.0
    }
}

/// A counter or gauge registered by name, on its own: its cell, its name and the name's
/// [`name_hash`].
pub(crate) struct Single<C> {
    cell: C,
    meta: StatMeta,
    hash: u32,
}

impl<C> Single<C> {
    fn leak(cell: C, meta: StatMeta, hash: u32) -> &'static Self {
        Box::leak(Box::new(Single { cell, meta, hash }))
    }
}

pub(crate) struct TextReadoutInner {
    pub(crate) meta: StatMeta,
    value: RwLock<String>,
    used: AtomicBool,
    /// [`name_hash`] of the name.
    hash: u32,
}

/// A string stat, such as an xDS `version_text` (`Stats::TextReadout`). Set from the control
/// side only, so a lock is fine here.
#[derive(Clone, Copy)]
pub struct TextReadout(pub(crate) &'static TextReadoutInner);

impl TextReadout {
    fn new(meta: StatMeta, hash: u32) -> Self {
        TextReadout(Box::leak(Box::new(TextReadoutInner {
            meta,
            value: RwLock::new(String::new()),
            used: AtomicBool::new(false),
            hash,
        })))
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

    pub fn name(&self) -> String {
        self.0.meta.name.to_string()
    }

    /// The name without its tag values (`cluster.upstream_rq_total`), as `producer` (the
    /// store's, [`Store::tag_producer`]) extracts them.
    pub fn tag_extracted_name(&self, producer: &TagProducer) -> &str {
        self.0.meta.tag_extracted_name(producer)
    }

    /// The tags `producer` (the store's) extracts from the name.
    pub fn tags(&self, producer: &TagProducer) -> &[Tag] {
        self.0.meta.tags(producer)
    }
}

/// Where a listed stat's name is.
#[derive(Clone, Copy)]
enum NameOf {
    Single(&'static StatMeta),
    /// The `index`th stat of a block (counters, then gauges).
    InBlock(&'static Block, usize),
}

/// A counter or gauge as the outputs list it: its cell (whose methods it has) and its name.
pub struct Listed<C: 'static> {
    cell: &'static C,
    name: NameOf,
}

impl<C> std::ops::Deref for Listed<C> {
    type Target = C;

    fn deref(&self) -> &C {
        self.cell
    }
}

impl<C> Listed<C> {
    fn single(cell: &'static C, meta: &'static StatMeta) -> Self {
        Listed {
            cell,
            name: NameOf::Single(meta),
        }
    }

    fn in_block(cell: &'static C, block: &'static Block, index: usize) -> Self {
        Listed {
            cell,
            name: NameOf::InBlock(block, index),
        }
    }

    pub fn name(&self) -> String {
        match self.name {
            NameOf::Single(meta) => meta.name.to_string(),
            NameOf::InBlock(block, index) => block.name(index),
        }
    }

    /// The name without its tag values (`cluster.upstream_rq_total`), as `producer` (the
    /// store's, [`Store::tag_producer`]) extracts them.
    pub fn tag_extracted_name(&self, producer: &TagProducer) -> &'static str {
        match self.name {
            NameOf::Single(meta) => meta.tag_extracted_name(producer),
            NameOf::InBlock(block, index) => &block.tagged(index, producer).0,
        }
    }

    /// The tags `producer` (the store's) extracts from the name.
    pub fn tags(&self, producer: &TagProducer) -> &'static [Tag] {
        match self.name {
            NameOf::Single(meta) => meta.tags(producer),
            NameOf::InBlock(block, index) => &block.tagged(index, producer).1,
        }
    }
}

impl std::fmt::Debug for TextReadout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextReadout")
            .field("name", &self.name())
            .finish()
    }
}

/// A handle does not know its name (a block's stats keep none): it shows its value.
impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Counter").field(&self.value()).finish()
    }
}

impl std::fmt::Debug for Gauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Gauge").field(&self.value()).finish()
    }
}

/// A registered stat of any type: what the tables need to find it by name.
trait Named: Clone {
    fn stat_name(&self) -> &StatName;
    /// [`name_hash`] of the name, kept by the stat.
    fn stat_hash(&self) -> u32;
}

impl<C> Named for &'static Single<C> {
    fn stat_name(&self) -> &StatName {
        &self.meta.name
    }

    fn stat_hash(&self) -> u32 {
        self.hash
    }
}

macro_rules! named {
    ($($ty:ident),*) => {$(
        impl Named for $ty {
            fn stat_name(&self) -> &StatName {
                &self.0.meta.name
            }

            fn stat_hash(&self) -> u32 {
                self.0.hash
            }
        }
    )*};
}
named!(TextReadout, Histogram);

/// The stats of one type registered by name. An entry is one pointer: the stat's name is read
/// through it.
struct Registry<T>(RwLock<HashTable<T>>);

impl<T: Named> Registry<T> {
    fn new() -> Self {
        Registry(RwLock::new(HashTable::new()))
    }

    /// The stat named `prefix` + `rest`, if there is one.
    fn find(&self, prefix: &str, rest: &str) -> Option<T> {
        let hash = table_hash(name_hash(prefix, rest));
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .find(hash, |t| t.stat_name().is(prefix, rest))
            .cloned()
    }

    /// The stat named `prefix` + `rest`, made by `make` (given its name, with `rest` interned
    /// in `names`, and the name's hash) the first time.
    fn get_or_insert(
        &self,
        prefix: &SharedStr,
        rest: &str,
        names: &Interner,
        make: impl FnOnce(StatName, u32) -> T,
    ) -> T {
        if let Some(stat) = self.find(prefix, rest) {
            return stat;
        }
        let name_hash = name_hash(prefix, rest);
        let hash = table_hash(name_hash);
        let mut table = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(stat) = table.find(hash, |t| t.stat_name().is(prefix, rest)) {
            return stat.clone();
        }
        let name = StatName {
            prefix: prefix.clone(),
            rest: names.intern(rest),
        };
        let stat = make(name, name_hash);
        table.insert_unique(hash, stat.clone(), |t| table_hash(t.stat_hash()));
        stat
    }

    fn all(&self) -> Vec<T> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}

/// The strings that end stat names, one copy each (`upstream_rq_total` for every cluster).
#[derive(Default)]
struct Interner(Mutex<HashSet<SharedStr, rustc_hash::FxBuildHasher>>);

impl Interner {
    fn intern(&self, s: &str) -> SharedStr {
        let mut set = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = set.get(s) {
            return known.clone();
        }
        let s = SharedStr::new(s);
        set.insert(s.clone());
        s
    }
}

/// The process-wide stats store (Envoy's `ThreadLocalStoreImpl`, without the thread-local
/// caches: the handles are the cache).
pub struct Store {
    tag_producer: Arc<TagProducer>,
    /// The prefix of names registered on the store itself (empty).
    root: SharedStr,
    names: Interner,
    counters: Registry<&'static Single<CounterCell>>,
    gauges: Registry<&'static Single<GaugeCell>>,
    histograms: Registry<Histogram>,
    text_readouts: Registry<TextReadout>,
    /// The blocks, by prefix (several schemas may share one).
    blocks: RwLock<HashTable<&'static Block>>,
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
            root: SharedStr::new(""),
            names: Interner::default(),
            counters: Registry::new(),
            gauges: Registry::new(),
            histograms: Registry::new(),
            text_readouts: Registry::new(),
            blocks: RwLock::new(HashTable::new()),
        }
    }

    pub fn tag_producer(&self) -> &TagProducer {
        &self.tag_producer
    }

    /// The counter named `name`, created at zero the first time.
    pub fn counter(&self, name: &str) -> Counter {
        self.counter_in(&self.root, name)
    }

    /// The gauge named `name`; `import_mode` is used only when it is created.
    pub fn gauge(&self, name: &str, import_mode: ImportMode) -> Gauge {
        self.gauge_in(&self.root, name, import_mode)
    }

    /// The histogram named `name`; `unit` is used only when it is created.
    pub fn histogram(&self, name: &str, unit: Unit) -> Histogram {
        self.histogram_in(&self.root, name, unit)
    }

    /// The text readout named `name`, created empty the first time.
    pub fn text_readout(&self, name: &str) -> TextReadout {
        self.text_readout_in(&self.root, name)
    }

    /// A counter or gauge is found among the stats registered alone, then in the blocks, and
    /// is registered alone if neither has it. (A block made after a stat of its schema was
    /// registered alone would make the name twice: blocks come first, see [`Store::block_in`].)
    fn counter_in(&self, prefix: &SharedStr, rest: &str) -> Counter {
        if let Some(single) = self.counters.find(prefix, rest) {
            return Counter(&single.cell);
        }
        if let Some(counter) = self.in_blocks(prefix, rest, |b, rest| b.counter_named(rest)) {
            return counter;
        }
        let single = self
            .counters
            .get_or_insert(prefix, rest, &self.names, |name, hash| {
                Single::leak(CounterCell::new(), StatMeta::new(name), hash)
            });
        Counter(&single.cell)
    }

    fn gauge_in(&self, prefix: &SharedStr, rest: &str, import_mode: ImportMode) -> Gauge {
        if let Some(single) = self.gauges.find(prefix, rest) {
            return Gauge(&single.cell);
        }
        if let Some(gauge) = self.in_blocks(prefix, rest, |b, rest| b.gauge_named(rest)) {
            return gauge;
        }
        let single = self
            .gauges
            .get_or_insert(prefix, rest, &self.names, |name, hash| {
                Single::leak(GaugeCell::new(import_mode), StatMeta::new(name), hash)
            });
        Gauge(&single.cell)
    }

    /// Looks `prefix` + `rest` up in the blocks: each dot of the name may end a block's prefix.
    fn in_blocks<T>(
        &self,
        prefix: &str,
        rest: &str,
        find: impl Fn(&'static Block, &str) -> Option<T>,
    ) -> Option<T> {
        let blocks = self.blocks.read().unwrap_or_else(PoisonError::into_inner);
        if blocks.is_empty() {
            return None;
        }
        let name = format!("{prefix}{rest}");
        for (dot, _) in name.match_indices('.') {
            let (block_prefix, block_rest) = name.split_at(dot + 1);
            let hash = table_hash(name_hash(block_prefix, ""));
            let found = blocks
                .iter_hash(hash)
                .filter(|b| *b.prefix == *block_prefix)
                .find_map(|b| find(b, block_rest));
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// The block of `schema` under `prefix`, made the first time.
    fn block_in(&self, prefix: &SharedStr, schema: &'static BlockSchema) -> &'static Block {
        let prefix_hash = name_hash(prefix, "");
        let hash = table_hash(prefix_hash);
        let same = |b: &&'static Block| *b.prefix == **prefix && std::ptr::eq(b.schema, schema);
        let blocks = self.blocks.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(block) = blocks.find(hash, same) {
            return block;
        }
        drop(blocks);
        let mut blocks = self.blocks.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(block) = blocks.find(hash, same) {
            return block;
        }
        let block = Block::leak(prefix.clone(), prefix_hash, schema);
        debug_assert!(
            schema
                .counters
                .iter()
                .all(|n| self.counters.find(prefix, n).is_none())
                && schema
                    .gauges
                    .iter()
                    .all(|(n, _)| self.gauges.find(prefix, n).is_none()),
            "a stat of the block {}* was registered alone before the block",
            &**prefix
        );
        blocks.insert_unique(hash, block, |b| b.table_hash());
        block
    }

    fn histogram_in(&self, prefix: &SharedStr, rest: &str, unit: Unit) -> Histogram {
        self.histograms
            .get_or_insert(prefix, rest, &self.names, |name, hash| {
                Histogram::new(StatMeta::new(name), unit, hash)
            })
    }

    fn text_readout_in(&self, prefix: &SharedStr, rest: &str) -> TextReadout {
        self.text_readouts
            .get_or_insert(prefix, rest, &self.names, |name, hash| {
                TextReadout::new(StatMeta::new(name), hash)
            })
    }

    /// A scope that prefixes every name it registers (`Scope::createScope`).
    pub fn scope(self: &Arc<Self>, prefix: &str) -> Scope {
        Scope {
            store: Arc::clone(self),
            prefix: SharedStr::new(scope_prefix("", prefix)),
        }
    }

    fn all_blocks(&self) -> Vec<&'static Block> {
        let blocks = self.blocks.read().unwrap_or_else(PoisonError::into_inner);
        blocks.iter().copied().collect()
    }

    /// The stats of one type registered alone (`singles`), then those of every block (`cells`
    /// picks them out of one), with their names.
    fn listed<C, I>(
        &self,
        singles: &Registry<&'static Single<C>>,
        cells: impl Fn(&'static Block) -> I,
    ) -> Vec<Listed<C>>
    where
        I: Iterator<Item = (usize, &'static C)>,
    {
        let mut all: Vec<_> = singles
            .all()
            .into_iter()
            .map(|s| Listed::single(&s.cell, &s.meta))
            .collect();
        for block in self.all_blocks() {
            all.extend(cells(block).map(|(i, c)| Listed::in_block(c, block, i)));
        }
        all
    }

    /// Every counter with its name, in no particular order.
    pub fn counters(&self) -> Vec<Listed<CounterCell>> {
        self.listed(&self.counters, Block::counters)
    }

    /// Every gauge with its name, in no particular order.
    pub fn gauges(&self) -> Vec<Listed<GaugeCell>> {
        self.listed(&self.gauges, Block::gauges)
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
        self.counters().iter().for_each(|c| c.reset());
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
    /// Shared by the names of every stat registered through this scope.
    prefix: SharedStr,
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
            prefix: SharedStr::new(scope_prefix(&self.prefix, prefix)),
        }
    }

    /// The block of `schema` under this scope's prefix (see [`stat_block!`](crate::stat_block)).
    pub fn block(&self, schema: &'static BlockSchema) -> &'static Block {
        self.store.block_in(&self.prefix, schema)
    }

    pub fn counter(&self, name: &str) -> Counter {
        self.store.counter_in(&self.prefix, name)
    }

    pub fn gauge(&self, name: &str, import_mode: ImportMode) -> Gauge {
        self.store.gauge_in(&self.prefix, name, import_mode)
    }

    pub fn histogram(&self, name: &str, unit: Unit) -> Histogram {
        self.store.histogram_in(&self.prefix, name, unit)
    }

    pub fn text_readout(&self, name: &str) -> TextReadout {
        self.store.text_readout_in(&self.prefix, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At 10,000 clusters there are ~400,000 counters and gauges in blocks and ~100,000 alone:
    /// a field added to one must fit in its padding or be worth megabytes.
    #[test]
    fn stats_keep_their_size() {
        assert_eq!(std::mem::size_of::<CounterCell>(), 16);
        assert_eq!(std::mem::size_of::<GaugeCell>(), 16);
        assert_eq!(std::mem::size_of::<Single<CounterCell>>(), 48);
        assert_eq!(std::mem::size_of::<Single<GaugeCell>>(), 48);
    }

    /// The names of the counters, sorted.
    fn counter_names(store: &Store) -> Vec<String> {
        let mut names: Vec<String> = store.counters().iter().map(|c| c.name()).collect();
        names.sort();
        names
    }

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
        hc.counter("attempt");
        store.scope("").counter("x");
        cluster.counter("upstream_rq_200");
        assert_eq!(
            counter_names(&store),
            [
                "cluster.foo.health_check.attempt",
                "cluster.foo.upstream_rq_200",
                "cluster.foo.upstream_rq_total",
                "x"
            ]
        );
        let counters = store.counters();
        let code = counters
            .iter()
            .find(|c| c.name() == "cluster.foo.upstream_rq_200")
            .unwrap();
        assert_eq!(
            code.tags(store.tag_producer()),
            [
                Tag::new("envoy.response_code", "200"),
                Tag::new("envoy.cluster_name", "foo")
            ]
        );
    }

    #[test]
    fn a_name_is_one_stat_however_it_is_split() {
        let store = Arc::new(Store::new());
        let a = store
            .scope("cluster.foo")
            .counter("circuit_breakers.high.rq_open");
        let b = store
            .scope("cluster.foo.circuit_breakers")
            .scope("high")
            .counter("rq_open");
        let c = store.counter("cluster.foo.circuit_breakers.high.rq_open");
        a.inc();
        b.inc();
        c.inc();
        assert_eq!(a.value(), 3);
        assert_eq!(store.counters().len(), 1);
        assert_eq!(
            counter_names(&store),
            ["cluster.foo.circuit_breakers.high.rq_open"]
        );
        // Names that differ only around the split stay two stats.
        store.scope("cluster.fo").counter("o.x").inc();
        store.scope("cluster.foo").counter("x").inc();
        assert_eq!(store.counter("cluster.fo.o.x").value(), 1);
        assert_eq!(store.counter("cluster.foo.x").value(), 1);
        assert_eq!(store.counters().len(), 3);
        // Many names: the table grows (rehashes by name) and finds them all again.
        let scope = store.scope("many");
        for i in 0..2000 {
            scope.gauge(&format!("g{i}"), ImportMode::Accumulate).set(i);
        }
        for i in (0..2000).step_by(7) {
            assert_eq!(
                store
                    .gauge(&format!("many.g{i}"), ImportMode::Accumulate)
                    .value(),
                i
            );
        }
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
