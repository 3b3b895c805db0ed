//! Histograms: lock-free recording and the statistics Envoy derives from them.
//!
//! Envoy records histogram samples into circllhist, a log-linear histogram whose bins keep two
//! significant decimal digits (`[34, 35)`, `[250, 260)`, `[1.0, 1.1)`, ...), and derives
//! everything it prints from those bins: quantiles, the Prometheus buckets, even `_sum`. Legate
//! keeps the same bins, so its numbers are Envoy's numbers, not an approximation of them:
//!
//! * **Bins.** A sample `v >= 1` falls in the bin of its two leading digits; `0` has a bin of its
//!   own. Samples are integers (Envoy records `uint64_t`), so values below 10 land on `v.0`.
//!   Bins are atomics grouped by decade; a decade's 90 bins are allocated the first time a sample
//!   falls in it, so a histogram costs a few hundred bytes, not the 14 KiB of all 20 decades.
//!   Recording is one `fetch_add` (plus one allocation per decade, ever): no lock, no map.
//! * **Quantiles** (`P0 .. P100`). The `n` samples of a bin are taken as evenly spread inside
//!   it, at `lower + width * i / (n + 1)`; quantile `q` of `N` samples is the sample of rank
//!   `max(1, ceil(q * N))`. This reproduces Envoy 1.40's output digit for digit (checked
//!   against the real binary: one sample of 34 gives `34.5`, six samples of 1 give
//!   `1.0142857142857142 ... 1.0857142857142856`).
//! * **Prometheus buckets** count the samples of every bin whose lower edge is `<= le`, which is
//!   exact for integer samples below 100 and, like Envoy, counts 255 under `le="250"`.
//! * **Sum** is circllhist's approximation: each bin counts at the harmonic mean of its edges
//!   (`2·l·u / (l + u)`), so a single sample of 34 sums to `34.492753623188406...` as in Envoy.
//!
//! Envoy shows each histogram twice: *cumulative* (every sample) and *interval* (the samples of
//! the last completed stats-flush interval). [`Histogram::flush_interval`] closes an interval; it
//! runs on the flush timer, never on the request path.

use std::sync::atomic::{AtomicU64, Ordering};

use super::tags::TagProducer;
use std::sync::{Mutex, OnceLock, PoisonError};

use super::store::StatMeta;
use super::tags::Tag;

/// Envoy's default Prometheus bucket bounds (`HistogramSettingsImpl::defaultBuckets`).
pub const DEFAULT_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// The quantiles Envoy reports (`HistogramStatisticsImpl::supportedQuantiles`).
pub const SUPPORTED_QUANTILES: [f64; 10] =
    [0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0];

/// The quantiles as percentages, spelled as Envoy prints them (`P99.5`, `"supported_quantiles"`).
pub const QUANTILE_PERCENTS: [&str; 10] = [
    "0", "25", "50", "75", "90", "95", "99", "99.5", "99.9", "100",
];

/// What a histogram's samples measure (`Stats::Histogram::Unit`). Only informative here: Legate
/// stores and prints every unit the same way (see the module docs of `stats` for `Percent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unit {
    Unspecified,
    Bytes,
    Microseconds,
    Milliseconds,
    Percent,
}

/// Decades a `u64` can span: `1..10`, `10..100`, ..., `10^19..u64::MAX`.
const DECADES: usize = 20;
/// Bins per decade: the leading two digits `10..=99`.
const LEADS: usize = 90;

/// Dense bin number, ascending with the value: 0 is the zero bin, then decade by decade.
type BinIndex = u16;

fn bin_index(value: u64) -> BinIndex {
    if value == 0 {
        return 0;
    }
    let decade = value.ilog10();
    let lead = if decade == 0 {
        value * 10
    } else {
        value / 10u64.pow(decade - 1)
    };
    // lead is in 10..=99 by construction; decade <= 19.
    (1 + decade as usize * LEADS + (lead as usize - 10)) as BinIndex
}

/// The lower edge and the width of a bin, as circllhist computes them.
fn bin_bounds(index: BinIndex) -> (f64, f64) {
    if index == 0 {
        return (0.0, 0.0);
    }
    let i = index as usize - 1;
    let decade = (i / LEADS) as i32;
    let lead = (i % LEADS + 10) as f64;
    let width = 10f64.powi(decade - 1);
    (lead * width, width)
}

/// Counts per bin at one moment: sparse, sorted by bin (hence by value).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BinCounts(Vec<(BinIndex, u64)>);

impl BinCounts {
    /// Number of samples.
    pub fn sample_count(&self) -> u64 {
        self.0.iter().map(|(_, c)| c).sum()
    }

    /// The samples in `self` that are not in `older` (an earlier snapshot of the same bins).
    fn since(&self, older: &BinCounts) -> BinCounts {
        let mut out = Vec::with_capacity(self.0.len());
        let mut old = older.0.iter().peekable();
        for &(bin, count) in &self.0 {
            while old.next_if(|(b, _)| *b < bin).is_some() {}
            let before = old.next_if(|(b, _)| *b == bin).map_or(0, |(_, c)| *c);
            let delta = count.saturating_sub(before);
            if delta > 0 {
                out.push((bin, delta));
            }
        }
        BinCounts(out)
    }

    /// One representative integer value per non-empty bin with its count, for sinks that want
    /// samples (statsd): the bin's lower edge plus half its width, truncated.
    pub fn representative_samples(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().map(|&(bin, count)| {
            let (lower, width) = bin_bounds(bin);
            ((lower + width / 2.0) as u64, count)
        })
    }
}

/// Quantiles, Prometheus buckets, count and sum of one set of samples (Envoy's
/// `HistogramStatistics`).
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramStatistics {
    quantiles: [f64; 10],
    buckets: [u64; 19],
    count: u64,
    sum: f64,
}

impl HistogramStatistics {
    pub fn from_bins(bins: &BinCounts) -> Self {
        let count = bins.sample_count();
        let mut quantiles = [f64::NAN; 10];
        if count > 0 {
            for (out, q) in quantiles.iter_mut().zip(SUPPORTED_QUANTILES) {
                let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
                *out = value_at_rank(bins, rank);
            }
        }
        let mut buckets = [0u64; 19];
        for (out, bound) in buckets.iter_mut().zip(DEFAULT_BUCKETS) {
            *out = bins
                .0
                .iter()
                .take_while(|(bin, _)| bin_bounds(*bin).0 <= bound)
                .map(|(_, c)| c)
                .sum();
        }
        let sum = bins
            .0
            .iter()
            .map(|&(bin, c)| {
                let (lower, width) = bin_bounds(bin);
                let upper = lower + width;
                let midpoint = if lower == 0.0 {
                    0.0
                } else {
                    2.0 * lower * upper / (lower + upper)
                };
                midpoint * c as f64
            })
            .sum();
        HistogramStatistics {
            quantiles,
            buckets,
            count,
            sum,
        }
    }

    /// Values at [`SUPPORTED_QUANTILES`]; NaN when there are no samples.
    pub fn quantiles(&self) -> &[f64; 10] {
        &self.quantiles
    }

    /// Cumulative counts at [`DEFAULT_BUCKETS`].
    pub fn buckets(&self) -> &[u64; 19] {
        &self.buckets
    }

    pub fn sample_count(&self) -> u64 {
        self.count
    }

    /// circllhist's approximate sum (see the module docs).
    pub fn sample_sum(&self) -> f64 {
        self.sum
    }
}

fn value_at_rank(bins: &BinCounts, rank: u64) -> f64 {
    let mut before = 0u64;
    for &(bin, count) in &bins.0 {
        if rank <= before + count {
            let (lower, width) = bin_bounds(bin);
            return lower + width * (rank - before) as f64 / (count + 1) as f64;
        }
        before += count;
    }
    f64::NAN
}

/// The atomic bins samples are recorded into.
struct AtomicBins {
    zero: AtomicU64,
    decades: [OnceLock<Box<[AtomicU64; LEADS]>>; DECADES],
}

impl Default for AtomicBins {
    fn default() -> Self {
        AtomicBins {
            zero: AtomicU64::new(0),
            decades: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

impl AtomicBins {
    fn record(&self, value: u64) {
        let index = bin_index(value) as usize;
        if index == 0 {
            self.zero.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let (decade, lead) = ((index - 1) / LEADS, (index - 1) % LEADS);
        let bins =
            self.decades[decade].get_or_init(|| Box::new([const { AtomicU64::new(0) }; LEADS]));
        bins[lead].fetch_add(1, Ordering::Relaxed);
    }

    fn used(&self) -> bool {
        self.zero.load(Ordering::Relaxed) > 0 || self.decades.iter().any(|d| d.get().is_some())
    }

    fn snapshot(&self) -> BinCounts {
        let mut out = Vec::new();
        let zero = self.zero.load(Ordering::Relaxed);
        if zero > 0 {
            out.push((0, zero));
        }
        for (decade, bins) in self.decades.iter().enumerate() {
            let Some(bins) = bins.get() else { continue };
            for (lead, bin) in bins.iter().enumerate() {
                let count = bin.load(Ordering::Relaxed);
                if count > 0 {
                    out.push(((1 + decade * LEADS + lead) as BinIndex, count));
                }
            }
        }
        BinCounts(out)
    }
}

/// What the last [`Histogram::flush_interval`] saw.
#[derive(Default)]
struct IntervalState {
    /// All samples as of the last flush, to subtract at the next one.
    flushed: BinCounts,
    /// The samples of the last completed interval.
    interval: BinCounts,
}

pub(crate) struct HistogramInner {
    pub(crate) meta: StatMeta,
    unit: Unit,
    /// The name's hash (see `store::name_hash`).
    pub(crate) hash: u32,
    /// Allocated by the first sample: most histograms (10,000 clusters have 20,000) never see
    /// one.
    bins: OnceLock<Box<Recorded>>,
}

/// A histogram's samples, and its intervals (which stay empty until there is a sample).
#[derive(Default)]
struct Recorded {
    bins: AtomicBins,
    /// Touched by the flush timer and by renderers, never by `record`.
    interval: Mutex<IntervalState>,
}

/// A handle to a registered histogram; clones share the same samples.
#[derive(Clone, Copy)]
pub struct Histogram(pub(crate) &'static HistogramInner);

impl Histogram {
    pub(crate) fn new(meta: StatMeta, unit: Unit, hash: u32) -> Self {
        Histogram(Box::leak(Box::new(HistogramInner {
            meta,
            unit,
            hash,
            bins: OnceLock::new(),
        })))
    }

    /// Records one sample (`Histogram::recordValue`). Lock-free.
    #[inline]
    pub fn record(&self, value: u64) {
        self.0.bins.get_or_init(Box::default).bins.record(value);
    }

    pub fn name(&self) -> String {
        self.0.meta.name.to_string()
    }

    fn snapshot(&self) -> BinCounts {
        self.0
            .bins
            .get()
            .map_or_else(|| BinCounts(Vec::new()), |r| r.bins.snapshot())
    }

    /// The name without its tag values, as `producer` (the store's) extracts them.
    pub fn tag_extracted_name(&self, producer: &TagProducer) -> &str {
        self.0.meta.tag_extracted_name(producer)
    }

    /// The tags `producer` (the store's) extracts from the name.
    pub fn tags(&self, producer: &TagProducer) -> &[Tag] {
        self.0.meta.tags(producer)
    }

    pub fn unit(&self) -> Unit {
        self.0.unit
    }

    /// Whether any sample was ever recorded.
    pub fn used(&self) -> bool {
        self.0.bins.get().is_some_and(|r| r.bins.used())
    }

    /// Every sample recorded so far (live; see the `stats` module docs).
    pub fn cumulative_bins(&self) -> BinCounts {
        self.snapshot()
    }

    /// The samples of the last completed flush interval.
    pub fn interval_bins(&self) -> BinCounts {
        self.0.bins.get().map_or_else(
            || BinCounts(Vec::new()),
            |r| {
                r.interval
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .interval
                    .clone()
            },
        )
    }

    pub fn cumulative_statistics(&self) -> HistogramStatistics {
        HistogramStatistics::from_bins(&self.cumulative_bins())
    }

    pub fn interval_statistics(&self) -> HistogramStatistics {
        HistogramStatistics::from_bins(&self.interval_bins())
    }

    /// Closes the current interval: what was recorded since the previous call becomes the
    /// interval that renderers and sinks report.
    pub fn flush_interval(&self) {
        let Some(recorded) = self.0.bins.get() else {
            return;
        };
        let now = recorded.bins.snapshot();
        let mut state = recorded
            .interval
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        state.interval = now.since(&state.flushed);
        state.flushed = now;
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("name", &self.name())
            .field("unit", &self.unit())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(samples: &[u64]) -> Histogram {
        let h = Histogram::new(StatMeta::untagged("h"), Unit::Milliseconds, 0);
        for &s in samples {
            h.record(s);
        }
        h
    }

    #[test]
    fn bins_keep_two_significant_digits() {
        assert_eq!(bin_bounds(bin_index(0)), (0.0, 0.0));
        assert_eq!(bin_bounds(bin_index(1)), (1.0, 0.1));
        assert_eq!(bin_bounds(bin_index(9)), (9.0, 0.1));
        assert_eq!(bin_bounds(bin_index(34)), (34.0, 1.0));
        assert_eq!(bin_bounds(bin_index(255)), (250.0, 10.0));
        assert_eq!(bin_bounds(bin_index(3_600_000)), (3_600_000.0, 100_000.0));
        assert_eq!(bin_bounds(bin_index(u64::MAX)), (1.8e19, 1e18));
        assert!(bin_index(99) < bin_index(100));
    }

    // The expected values below are what Envoy 1.40 prints for the same samples.
    #[test]
    fn quantiles_match_envoy() {
        let s = histogram(&[34]).cumulative_statistics();
        assert!(s.quantiles().iter().all(|&q| q == 34.5));
        assert!((s.sample_sum() - 2.0 * 34.0 * 35.0 / 69.0).abs() < 1e-12);

        let s = histogram(&[1; 6]).cumulative_statistics();
        let q = s.quantiles();
        assert_eq!(q[0].to_string(), "1.0142857142857142");
        assert_eq!(q[1].to_string(), "1.0285714285714285");
        assert_eq!(q[2].to_string(), "1.042857142857143");
        assert_eq!(q[3].to_string(), "1.0714285714285714");
        assert_eq!(q[4].to_string(), "1.0857142857142856");
        assert_eq!(q[9].to_string(), "1.0857142857142856");

        let s = histogram(&[1, 2, 2, 4, 4, 5, 253, 256, 263]).cumulative_statistics();
        let q: Vec<String> = s.quantiles().iter().map(|v| v.to_string()).collect();
        assert_eq!(
            q,
            [
                "1.05",
                "2.066666666666667",
                "4.066666666666666",
                "253.33333333333334",
                "265",
                "265",
                "265",
                "265",
                "265",
                "265"
            ]
        );
        assert_eq!(s.sample_count(), 9);
        assert_eq!(s.buckets()[..8], [0, 1, 6, 6, 6, 6, 6, 8]);
        assert_eq!(s.buckets()[18], 9);
    }

    #[test]
    fn zero_samples_sit_in_their_own_bin() {
        let s = histogram(&[0, 0, 0]).cumulative_statistics();
        assert!(s.quantiles().iter().all(|&q| q == 0.0));
        assert_eq!(s.buckets()[0], 3);
        assert_eq!(s.sample_sum(), 0.0);
    }

    #[test]
    fn empty_statistics_are_nan() {
        let h = histogram(&[]);
        assert!(!h.used());
        let s = h.cumulative_statistics();
        assert!(s.quantiles().iter().all(|q| q.is_nan()));
        assert_eq!(s.sample_count(), 0);
    }

    #[test]
    fn interval_rotates_on_flush() {
        let h = histogram(&[5, 5]);
        assert_eq!(h.interval_statistics().sample_count(), 0);
        h.flush_interval();
        assert_eq!(h.interval_statistics().sample_count(), 2);
        h.record(7);
        h.record(5);
        assert_eq!(h.interval_statistics().sample_count(), 2);
        h.flush_interval();
        let interval = h.interval_bins();
        assert_eq!(interval.sample_count(), 2);
        assert_eq!(
            interval.representative_samples().collect::<Vec<_>>(),
            [(5, 1), (7, 1)]
        );
        h.flush_interval();
        assert_eq!(h.interval_statistics().sample_count(), 0);
        assert_eq!(h.cumulative_statistics().sample_count(), 4);
    }

    #[test]
    fn recording_from_many_threads_loses_nothing() {
        let h = histogram(&[]);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let h = h;
                s.spawn(move || {
                    for i in 0..10_000u64 {
                        h.record(i * (t + 1));
                    }
                });
            }
        });
        assert_eq!(h.cumulative_statistics().sample_count(), 40_000);
    }
}
