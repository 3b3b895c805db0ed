//! The admin renderings of the store: `/stats` (text), `/stats?format=json` and
//! `/stats/prometheus`, byte for byte as Envoy 1.40 prints them (see the tests, whose expected
//! outputs were taken from the real binary).
//!
//! * **Text and JSON** (`source/server/admin/stats_request.cc`, `stats_render.cc`): text
//!   readouts first, then counters and gauges merged, then histograms, each part sorted by name.
//!   Text: `name: 7`, `name: "text"`, and for histograms
//!   `name: P0(interval,cumulative) P25(..) ...` or `name: No recorded values`; quantiles print
//!   as the shortest decimal that reads back the same, `nan` when there are none. JSON: one
//!   `{"name":..,"value":..}` per stat, then (if any histogram is shown) one
//!   `{"histograms":{"supported_quantiles":[..],"computed_quantiles":[..]}}` with
//!   `{"cumulative":..,"interval":..}` pairs, `null` for NaN.
//! * **Prometheus** (`prometheus_stats.cc`): counters, gauges, text readouts (only with
//!   `text_readouts`, as gauges of value 0 with a `text_value` label) and histograms, in that
//!   order; within each, one `# TYPE` group per tag-extracted name, groups and the series in them
//!   sorted token by token on `.` (Envoy's `SymbolTable::lessThan`). Metric names are
//!   `envoy_` + the tag-extracted name with every character outside `[a-zA-Z0-9_]` made `_`;
//!   label values escape `\`, `"` and newline. Histograms print cumulative `_bucket` lines at
//!   Envoy's default bounds, `+Inf`, `_sum` (`%.32g`) and `_count`; a series without tags still
//!   prints `{}`.
//!
//! The query parameters all three take are [`StatsParams`]: `filter` (an RE2 regex that may
//! match anywhere in the full name), `usedonly`, `type` (text and JSON) and `text_readouts`
//! (Prometheus).

use std::cmp::Ordering;
use std::fmt::Write as _;

use regex::Regex;

use super::histogram::{DEFAULT_BUCKETS, Histogram, QUANTILE_PERCENTS};
use super::store::Store;
use super::tags::{Tag, re2_to_rust};

/// Which stats `/stats` shows (the `type` query parameter).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StatsType {
    #[default]
    All,
    Counters,
    Gauges,
    Histograms,
    TextReadouts,
}

impl StatsType {
    /// Reads Envoy's spelling of the `type` parameter.
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "All" => StatsType::All,
            "Counters" => StatsType::Counters,
            "Gauges" => StatsType::Gauges,
            "Histograms" => StatsType::Histograms,
            "TextReadouts" => StatsType::TextReadouts,
            _ => return None,
        })
    }
}

/// The query parameters of the stats endpoints.
#[derive(Clone, Debug, Default)]
pub struct StatsParams {
    filter: Option<Regex>,
    used_only: bool,
    text_readouts: bool,
    stats_type: StatsType,
}

impl StatsParams {
    /// Everything, as a bare `/stats` shows.
    pub fn new() -> Self {
        StatsParams::default()
    }

    /// `filter=<regex>`: only stats whose full name the RE2 regex matches somewhere in.
    pub fn with_filter(mut self, pattern: &str) -> Result<Self, String> {
        let regex = Regex::new(&re2_to_rust(pattern)).map_err(|e| {
            format!(
                "Invalid re2 regex: {}",
                e.to_string().lines().last().unwrap_or("")
            )
        })?;
        self.filter = Some(regex);
        Ok(self)
    }

    /// `usedonly`: only stats that were written at least once.
    pub fn with_used_only(mut self, used_only: bool) -> Self {
        self.used_only = used_only;
        self
    }

    /// `text_readouts`: include text readouts in the Prometheus output.
    pub fn with_text_readouts(mut self, text_readouts: bool) -> Self {
        self.text_readouts = text_readouts;
        self
    }

    /// `type=`: only one kind of stat in the text and JSON outputs.
    pub fn with_type(mut self, stats_type: StatsType) -> Self {
        self.stats_type = stats_type;
        self
    }

    fn shows(&self, name: &str, used: bool) -> bool {
        (!self.used_only || used) && self.filter.as_ref().is_none_or(|r| r.is_match(name))
    }

    fn shows_type(&self, stats_type: StatsType) -> bool {
        self.stats_type == StatsType::All || self.stats_type == stats_type
    }
}

/// A counter's or gauge's value, or a text readout's.
enum Value {
    Number(u64),
    Text(String),
}

/// The stats `/stats` and `/stats?format=json` show, in their order.
struct Selection {
    scalars: Vec<(String, Value)>,
    histograms: Vec<(String, Histogram)>,
}

impl Store {
    fn select(&self, params: &StatsParams) -> Selection {
        let mut text: Vec<(String, Value)> = Vec::new();
        if params.shows_type(StatsType::TextReadouts) {
            for t in self.text_readouts() {
                let name = t.name();
                if params.shows(&name, t.used()) {
                    text.push((name, Value::Text(t.value())));
                }
            }
        }
        text.sort_by(|a, b| a.0.cmp(&b.0));

        let mut numbers: Vec<(String, Value)> = Vec::new();
        if params.shows_type(StatsType::Counters) {
            for c in self.counters() {
                let name = c.name();
                if params.shows(&name, c.used()) {
                    numbers.push((name, Value::Number(c.value())));
                }
            }
        }
        if params.shows_type(StatsType::Gauges) {
            for g in self.gauges() {
                let name = g.name();
                if params.shows(&name, g.used()) {
                    numbers.push((name, Value::Number(g.value())));
                }
            }
        }
        numbers.sort_by(|a, b| a.0.cmp(&b.0));

        let mut histograms = Vec::new();
        if params.shows_type(StatsType::Histograms) {
            histograms = self
                .histograms()
                .into_iter()
                .map(|h| (h.name(), h))
                .filter(|(name, h)| params.shows(name, h.used()))
                .collect();
            histograms.sort_by(|a, b| a.0.cmp(&b.0));
        }

        text.extend(numbers);
        Selection {
            scalars: text,
            histograms,
        }
    }

    /// `GET /stats`.
    pub fn render_text(&self, params: &StatsParams) -> String {
        let selection = self.select(params);
        let mut out = String::new();
        for (name, value) in &selection.scalars {
            match value {
                Value::Number(n) => {
                    let _ = writeln!(out, "{name}: {n}");
                }
                Value::Text(t) => {
                    let _ = writeln!(out, "{name}: \"{t}\"");
                }
            }
        }
        for (name, h) in &selection.histograms {
            out.push_str(name);
            if !h.used() {
                out.push_str(": No recorded values\n");
                continue;
            }
            out.push(':');
            let interval = h.interval_statistics();
            let cumulative = h.cumulative_statistics();
            let pairs = interval.quantiles().iter().zip(cumulative.quantiles());
            for (percent, (i, c)) in QUANTILE_PERCENTS.iter().zip(pairs) {
                let _ = write!(out, " P{percent}({},{})", fmt_double(*i), fmt_double(*c));
            }
            out.push('\n');
        }
        out
    }

    /// `GET /stats?format=json`.
    pub fn render_json(&self, params: &StatsParams) -> String {
        let selection = self.select(params);
        let mut entries: Vec<String> = Vec::with_capacity(selection.scalars.len() + 1);
        for (name, value) in &selection.scalars {
            let value = match value {
                Value::Number(n) => n.to_string(),
                Value::Text(t) => json_string(t),
            };
            entries.push(format!(
                "{{\"name\":{},\"value\":{value}}}",
                json_string(name)
            ));
        }
        if !selection.histograms.is_empty() {
            let mut out = String::from("{\"histograms\":{\"supported_quantiles\":[");
            out.push_str(&QUANTILE_PERCENTS.join(","));
            out.push_str("],\"computed_quantiles\":[");
            for (n, (name, h)) in selection.histograms.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{{\"name\":{},\"values\":[", json_string(name));
                let interval = h.interval_statistics();
                let cumulative = h.cumulative_statistics();
                let pairs = interval.quantiles().iter().zip(cumulative.quantiles());
                for (k, (i, c)) in pairs.enumerate() {
                    if k > 0 {
                        out.push(',');
                    }
                    let _ = write!(
                        out,
                        "{{\"cumulative\":{},\"interval\":{}}}",
                        json_number(*c),
                        json_number(*i)
                    );
                }
                out.push_str("]}");
            }
            out.push_str("]}}");
            entries.push(out);
        }
        format!("{{\"stats\":[{}]}}", entries.join(","))
    }

    /// `GET /stats/prometheus`.
    pub fn render_prometheus(&self, params: &StatsParams) -> String {
        let mut out = String::new();
        let producer = self.tag_producer();

        let counters = self.counters();
        let rows = counters
            .iter()
            .map(|c| (c, c.name()))
            .filter(|(c, name)| params.shows(name, c.used()))
            .map(|(c, name)| {
                (
                    c.tag_extracted_name(producer),
                    name,
                    c.tags(producer),
                    c.value(),
                )
            });
        render_numeric_groups(&mut out, "counter", rows.collect());

        let gauges = self.gauges();
        let rows = gauges
            .iter()
            .map(|g| (g, g.name()))
            .filter(|(g, name)| params.shows(name, g.used()))
            .map(|(g, name)| {
                (
                    g.tag_extracted_name(producer),
                    name,
                    g.tags(producer),
                    g.value(),
                )
            });
        render_numeric_groups(&mut out, "gauge", rows.collect());

        if params.text_readouts {
            let readouts = self.text_readouts();
            let mut rows: Vec<_> = readouts
                .iter()
                .map(|t| (t.name(), t))
                .filter(|(name, t)| params.shows(name, t.used()))
                .collect();
            rows.sort_by(|(a_name, a), (b_name, b)| {
                token_cmp(
                    a.tag_extracted_name(producer),
                    b.tag_extracted_name(producer),
                )
                .then_with(|| token_cmp(a_name, b_name))
            });
            let mut current = None;
            for (_, t) in rows {
                let metric = prometheus_metric_name(t.tag_extracted_name(producer));
                type_line(&mut out, &mut current, &metric, "gauge");
                let mut labels = prometheus_labels(t.tags(producer));
                if !labels.is_empty() {
                    labels.push(',');
                }
                let _ = writeln!(
                    out,
                    "{metric}{{{labels}text_value=\"{}\"}} 0",
                    escape_label_value(&t.value())
                );
            }
        }

        let mut histograms: Vec<_> = self
            .histograms()
            .into_iter()
            .map(|h| (h.name(), h))
            .filter(|(name, h)| params.shows(name, h.used()))
            .collect();
        histograms.sort_by(|(a_name, a), (b_name, b)| {
            token_cmp(
                a.tag_extracted_name(producer),
                b.tag_extracted_name(producer),
            )
            .then_with(|| token_cmp(a_name, b_name))
        });
        let mut current = None;
        for (_, h) in &histograms {
            let metric = prometheus_metric_name(h.tag_extracted_name(producer));
            type_line(&mut out, &mut current, &metric, "histogram");
            let labels = prometheus_labels(h.tags(producer));
            let bucket_labels = if labels.is_empty() {
                String::new()
            } else {
                format!("{labels},")
            };
            let stats = h.cumulative_statistics();
            for (bound, count) in DEFAULT_BUCKETS.iter().zip(stats.buckets()) {
                let _ = writeln!(
                    out,
                    "{metric}_bucket{{{bucket_labels}le=\"{}\"}} {count}",
                    fmt_g32(*bound)
                );
            }
            let count = stats.sample_count();
            let _ = writeln!(out, "{metric}_bucket{{{bucket_labels}le=\"+Inf\"}} {count}");
            let _ = writeln!(
                out,
                "{metric}_sum{{{labels}}} {}",
                fmt_g32(stats.sample_sum())
            );
            let _ = writeln!(out, "{metric}_count{{{labels}}} {count}");
        }
        out
    }
}

/// Counters or gauges: (tag-extracted name, name, tags, value).
fn render_numeric_groups(out: &mut String, kind: &str, mut rows: Vec<(&str, String, &[Tag], u64)>) {
    rows.sort_by(|a, b| token_cmp(a.0, b.0).then_with(|| token_cmp(&a.1, &b.1)));
    let mut current = None;
    for (extracted, _, tags, value) in rows {
        let metric = prometheus_metric_name(extracted);
        type_line(out, &mut current, &metric, kind);
        let _ = writeln!(out, "{metric}{{{}}} {value}", prometheus_labels(tags));
    }
}

/// Writes `# TYPE` when a new group starts.
fn type_line(out: &mut String, current: &mut Option<String>, metric: &str, kind: &str) {
    if current.as_deref() != Some(metric) {
        let _ = writeln!(out, "# TYPE {metric} {kind}");
        *current = Some(metric.to_string());
    }
}

/// Envoy's order of stat names: token by token on `.`, each token bytewise.
fn token_cmp(a: &str, b: &str) -> Ordering {
    a.split('.').cmp(b.split('.'))
}

/// `[^a-zA-Z0-9_]` -> `_` (Envoy's `PrometheusStatsFormatter::sanitizeName`).
fn sanitize_prometheus_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `envoy_` + the sanitized tag-extracted name.
pub fn prometheus_metric_name(tag_extracted_name: &str) -> String {
    format!("envoy_{}", sanitize_prometheus_name(tag_extracted_name))
}

fn escape_label_value(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('\n', r"\n")
        .replace('"', "\\\"")
}

/// `name="value",...` (without braces).
fn prometheus_labels(tags: &[Tag]) -> String {
    let labels: Vec<String> = tags
        .iter()
        .map(|t| {
            format!(
                "{}=\"{}\"",
                sanitize_prometheus_name(&t.name),
                escape_label_value(&t.value)
            )
        })
        .collect();
    labels.join(",")
}

/// A double as fmt's `{}` prints it: the shortest decimal that reads back the same, `nan`,
/// `inf`, and exponent notation outside `[1e-4, 1e16)`.
pub fn fmt_double(value: f64) -> String {
    if value.is_nan() {
        return "nan".to_string();
    }
    if value.is_infinite() {
        return if value > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    let magnitude = value.abs();
    if value == 0.0 || (1e-4..1e16).contains(&magnitude) {
        return value.to_string();
    }
    // "1e16" -> "1e+16", "1.5e-7" -> "1.5e-07", as printf does.
    let formatted = format!("{value:e}");
    match formatted.split_once('e') {
        Some((mantissa, exponent)) => {
            let (sign, digits) = match exponent.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exponent),
            };
            format!("{mantissa}e{sign}{digits:0>2}")
        }
        None => formatted,
    }
}

/// A double as printf's `%.32g`, as Envoy prints Prometheus bounds and sums.
pub fn fmt_g32(value: f64) -> String {
    const PRECISION: i32 = 32;
    if !value.is_finite() {
        return fmt_double(value);
    }
    if value == 0.0 {
        return "0".to_string();
    }
    let scientific = format!("{:.*e}", (PRECISION - 1) as usize, value);
    let exponent: i32 = scientific
        .split_once('e')
        .and_then(|(_, e)| e.parse().ok())
        .unwrap_or(0);
    if !(-4..PRECISION).contains(&exponent) {
        let (mantissa, _) = scientific.split_once('e').unwrap_or((&scientific, ""));
        let mantissa = trim_fraction_zeros(mantissa);
        let sign = if exponent < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exponent.abs());
    }
    let decimals = (PRECISION - 1 - exponent).max(0) as usize;
    trim_fraction_zeros(&format!("{value:.decimals$}")).to_string()
}

fn trim_fraction_zeros(number: &str) -> &str {
    if number.contains('.') {
        number.trim_end_matches('0').trim_end_matches('.')
    } else {
        number
    }
}

fn json_number(value: f64) -> String {
    if value.is_finite() {
        fmt_double(value)
    } else {
        "null".to_string()
    }
}

/// A JSON string literal (Envoy's `Json::sanitize`), with the access-log formatter's escaper.
fn json_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    crate::format::json::push_json_string(&mut out, value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{ImportMode, Unit};

    /// A small store shaped like Envoy's after six requests through cluster `foo` (the same
    /// samples as the Envoy 1.40 run the expected outputs come from).
    fn sample_store() -> Store {
        let store = Store::new();
        store.counter("cluster.foo.upstream_rq_200").add(5);
        store.counter("cluster.foo.upstream_rq_404").add(1);
        store.counter("cluster.foo.upstream_rq_total").add(6);
        store.counter("cluster.foo.upstream_cx_connect_fail");
        store
            .gauge("cluster.foo.membership_healthy", ImportMode::NeverImport)
            .set(1);
        store
            .gauge("server.concurrency", ImportMode::NeverImport)
            .set(1);
        store.text_readout("cluster_manager.cds.version_text");
        let rq_time = store.histogram("cluster.foo.upstream_rq_time", Unit::Milliseconds);
        for v in [1, 2, 2, 4, 4, 5] {
            rq_time.record(v);
        }
        store.histogram("listener.admin.downstream_cx_length_ms", Unit::Milliseconds);
        store
            .histogram("server.initialization_time_ms", Unit::Milliseconds)
            .record(34);
        store
    }

    #[test]
    fn text_output() {
        let store = sample_store();
        let expected = "\
cluster_manager.cds.version_text: \"\"
cluster.foo.membership_healthy: 1
cluster.foo.upstream_cx_connect_fail: 0
cluster.foo.upstream_rq_200: 5
cluster.foo.upstream_rq_404: 1
cluster.foo.upstream_rq_total: 6
server.concurrency: 1
cluster.foo.upstream_rq_time: P0(nan,1.05) P25(nan,2.033333333333333) P50(nan,2.066666666666667) P75(nan,4.066666666666666) P90(nan,5.05) P95(nan,5.05) P99(nan,5.05) P99.5(nan,5.05) P99.9(nan,5.05) P100(nan,5.05)
listener.admin.downstream_cx_length_ms: No recorded values
server.initialization_time_ms: P0(nan,34.5) P25(nan,34.5) P50(nan,34.5) P75(nan,34.5) P90(nan,34.5) P95(nan,34.5) P99(nan,34.5) P99.5(nan,34.5) P99.9(nan,34.5) P100(nan,34.5)
";
        assert_eq!(store.render_text(&StatsParams::new()), expected);

        store.flush_interval();
        let text = store.render_text(&StatsParams::new().with_filter("init").unwrap());
        assert_eq!(
            text,
            "server.initialization_time_ms: P0(34.5,34.5) P25(34.5,34.5) P50(34.5,34.5) \
             P75(34.5,34.5) P90(34.5,34.5) P95(34.5,34.5) P99(34.5,34.5) P99.5(34.5,34.5) \
             P99.9(34.5,34.5) P100(34.5,34.5)\n"
        );
    }

    #[test]
    fn filters_and_used_only() {
        let store = sample_store();
        let used = StatsParams::new()
            .with_used_only(true)
            .with_filter("^cluster\\.foo\\.upstream_")
            .unwrap();
        assert_eq!(
            store.render_text(&used),
            "cluster.foo.upstream_rq_200: 5\ncluster.foo.upstream_rq_404: 1\n\
             cluster.foo.upstream_rq_total: 6\ncluster.foo.upstream_rq_time: P0(nan,1.05) \
             P25(nan,2.033333333333333) P50(nan,2.066666666666667) P75(nan,4.066666666666666) \
             P90(nan,5.05) P95(nan,5.05) P99(nan,5.05) P99.5(nan,5.05) P99.9(nan,5.05) \
             P100(nan,5.05)\n"
        );
        let nothing = StatsParams::new().with_filter("nomatch").unwrap();
        assert_eq!(store.render_text(&nothing), "");
        assert_eq!(store.render_json(&nothing), "{\"stats\":[]}");
        assert_eq!(store.render_prometheus(&nothing), "");
        assert!(StatsParams::new().with_filter("(").is_err());

        let gauges = StatsParams::new().with_type(StatsType::Gauges);
        assert_eq!(
            store.render_text(&gauges),
            "cluster.foo.membership_healthy: 1\nserver.concurrency: 1\n"
        );
    }

    #[test]
    fn json_output() {
        let store = sample_store();
        let params = StatsParams::new()
            .with_filter("version_text|rq_404|admin|init")
            .unwrap();
        let nulls = ["{\"cumulative\":null,\"interval\":null}"; 10].join(",");
        let init = ["{\"cumulative\":34.5,\"interval\":null}"; 10].join(",");
        let expected = format!(
            "{{\"stats\":[{{\"name\":\"cluster_manager.cds.version_text\",\"value\":\"\"}},\
             {{\"name\":\"cluster.foo.upstream_rq_404\",\"value\":1}},\
             {{\"histograms\":{{\"supported_quantiles\":[0,25,50,75,90,95,99,99.5,99.9,100],\
             \"computed_quantiles\":[\
             {{\"name\":\"listener.admin.downstream_cx_length_ms\",\"values\":[{nulls}]}},\
             {{\"name\":\"server.initialization_time_ms\",\"values\":[{init}]}}]}}}}]}}"
        );
        assert_eq!(store.render_json(&params), expected);
        assert_eq!(json_string("a\"b\\c\u{1}"), "\"a\\\"b\\\\c\\u0001\"");
    }

    #[test]
    fn prometheus_output() {
        let store = sample_store();
        let params = StatsParams::new()
            .with_filter("upstream_rq_[0-9]|membership|concurrency|init|version")
            .unwrap()
            .with_text_readouts(true);
        let expected = "\
# TYPE envoy_cluster_upstream_rq counter
envoy_cluster_upstream_rq{envoy_response_code=\"200\",envoy_cluster_name=\"foo\"} 5
envoy_cluster_upstream_rq{envoy_response_code=\"404\",envoy_cluster_name=\"foo\"} 1
# TYPE envoy_cluster_membership_healthy gauge
envoy_cluster_membership_healthy{envoy_cluster_name=\"foo\"} 1
# TYPE envoy_server_concurrency gauge
envoy_server_concurrency{} 1
# TYPE envoy_cluster_manager_cds_version_text gauge
envoy_cluster_manager_cds_version_text{text_value=\"\"} 0
# TYPE envoy_server_initialization_time_ms histogram
envoy_server_initialization_time_ms_bucket{le=\"0.5\"} 0
envoy_server_initialization_time_ms_bucket{le=\"1\"} 0
envoy_server_initialization_time_ms_bucket{le=\"5\"} 0
envoy_server_initialization_time_ms_bucket{le=\"10\"} 0
envoy_server_initialization_time_ms_bucket{le=\"25\"} 0
envoy_server_initialization_time_ms_bucket{le=\"50\"} 1
envoy_server_initialization_time_ms_bucket{le=\"100\"} 1
envoy_server_initialization_time_ms_bucket{le=\"250\"} 1
envoy_server_initialization_time_ms_bucket{le=\"500\"} 1
envoy_server_initialization_time_ms_bucket{le=\"1000\"} 1
envoy_server_initialization_time_ms_bucket{le=\"2500\"} 1
envoy_server_initialization_time_ms_bucket{le=\"5000\"} 1
envoy_server_initialization_time_ms_bucket{le=\"10000\"} 1
envoy_server_initialization_time_ms_bucket{le=\"30000\"} 1
envoy_server_initialization_time_ms_bucket{le=\"60000\"} 1
envoy_server_initialization_time_ms_bucket{le=\"300000\"} 1
envoy_server_initialization_time_ms_bucket{le=\"600000\"} 1
envoy_server_initialization_time_ms_bucket{le=\"1800000\"} 1
envoy_server_initialization_time_ms_bucket{le=\"3600000\"} 1
envoy_server_initialization_time_ms_bucket{le=\"+Inf\"} 1
envoy_server_initialization_time_ms_sum{} 34.492753623188406209010281600058
envoy_server_initialization_time_ms_count{} 1
";
        assert_eq!(store.render_prometheus(&params), expected);

        // Text readouts only on request.
        let without = StatsParams::new().with_filter("version").unwrap();
        assert_eq!(store.render_prometheus(&without), "");
    }

    #[test]
    fn prometheus_histogram_with_tags() {
        let store = sample_store();
        let params = StatsParams::new().with_filter("rq_time").unwrap();
        let out = store.render_prometheus(&params);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "# TYPE envoy_cluster_upstream_rq_time histogram");
        assert_eq!(
            lines[1],
            "envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"foo\",le=\"0.5\"} 0"
        );
        assert_eq!(
            lines[3],
            "envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"foo\",le=\"5\"} 6"
        );
        assert_eq!(
            lines[21],
            "envoy_cluster_upstream_rq_time_sum{envoy_cluster_name=\"foo\"} 18.29345040582261816553000244312"
        );
        assert_eq!(
            lines[22],
            "envoy_cluster_upstream_rq_time_count{envoy_cluster_name=\"foo\"} 6"
        );
    }

    #[test]
    fn prometheus_names_and_labels_are_sanitized() {
        let store = Store::new();
        store.counter("cluster.a\"b\\c.bind_errors");
        store.counter("cluster.c_d.bind_errors");
        store.counter("my-app.requests");
        assert_eq!(
            store.render_prometheus(&StatsParams::new()),
            "# TYPE envoy_cluster_bind_errors counter\n\
             envoy_cluster_bind_errors{envoy_cluster_name=\"a\\\"b\\\\c\"} 0\n\
             envoy_cluster_bind_errors{envoy_cluster_name=\"c_d\"} 0\n\
             # TYPE envoy_my_app_requests counter\n\
             envoy_my_app_requests{} 0\n"
        );
    }

    #[test]
    fn names_sort_token_by_token() {
        // Bytewise, "a-b.c" < "a.c"; Envoy compares the tokens "a-b" and "a".
        assert_eq!(token_cmp("a.c", "a-b.c"), Ordering::Less);
        assert_eq!(token_cmp("a.b", "a.b.c"), Ordering::Less);
    }

    #[test]
    fn number_formats() {
        assert_eq!(fmt_double(f64::NAN), "nan");
        assert_eq!(fmt_double(0.0), "0");
        assert_eq!(fmt_double(34.5), "34.5");
        assert_eq!(fmt_double(1e16), "1e+16");
        assert_eq!(fmt_g32(0.5), "0.5");
        assert_eq!(fmt_g32(3600000.0), "3600000");
        assert_eq!(fmt_g32(0.0), "0");
        assert_eq!(fmt_g32(0.1), "0.10000000000000000555111512312578");
        // printf("%.32g") prints the binary value's digits.
        assert_eq!(fmt_g32(1e40), "1.0000000000000000303786028427004e+40");
        assert_eq!(fmt_g32(1.5e-7), "1.4999999999999999321221677388294e-07");
    }
}
