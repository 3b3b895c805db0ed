//! Micro-benchmarks of the pieces every proxied request goes through: route matching over
//! 1,000 routes, request header rewriting, the access-log formatter, and stats recording.
//!
//!     cargo bench -p legate-http --bench hot_paths                # all, ~1 minute
//!     cargo bench -p legate-http --bench hot_paths -- route       # one group
//!
//! Criterion reports the time per operation with its spread; results and the commands that
//! produced them are kept in BENCHMARKS.md. These measure CPU in isolation: the side-by-side
//! proxy comparisons are bench/http_bench.py and friends.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use legate_core::format::Formatter;
use legate_core::runtime::Snapshot;
use legate_core::stats::{ImportMode, Store, Unit};
use legate_core::stream_info::{RequestLine, StreamInfo};
use legate_http::route::RouteTable;
use legate_http::route_match::RouteRequest;

/// A route table from a `RouteConfiguration` in YAML, read as the proxy reads it.
fn table_from_yaml(yaml: &str) -> RouteTable {
    RouteTable::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}"))
}

/// Headers a browser-ish client sends.
fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) bench/1.0"),
        ("accept", "text/html,application/xhtml+xml,*/*;q=0.8"),
        ("accept-language", "en-US,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br"),
        ("cookie", "session=0123456789abcdef; theme=dark"),
        ("x-request-id", "7d2b1f5e-4c1a-4f3e-9b8d-2a6c5e4f3a21"),
        ("x-forwarded-for", "203.0.113.7"),
        ("x-tenant", "acme"),
        ("content-type", "application/json"),
        ("x-remove-me", "1"),
    ] {
        h.append(k, HeaderValue::from_static(v));
    }
    h
}

/// `routes` in one virtual host after a second, unrelated one, then a catch-all.
fn big_table(routes: impl Iterator<Item = String>) -> RouteTable {
    let mut yaml = String::from(
        "name: big\nvirtual_hosts:\n- name: other\n  domains: [other.example.com]\n  routes:\n  - match: {prefix: /}\n    route: {cluster: other}\n- name: all\n  domains: [\"*\"]\n  routes:\n",
    );
    for (i, matcher) in routes.enumerate() {
        yaml.push_str(&format!(
            "  - match: {matcher}\n    route: {{cluster: c{i}}}\n"
        ));
    }
    yaml.push_str("  - match: {prefix: /}\n    route: {cluster: fallback}\n");
    table_from_yaml(&yaml)
}

/// The `match` of route `i` of one kind.
type RouteOfKind = fn(usize) -> String;

fn prefix_route(i: usize) -> String {
    format!("{{prefix: /svc{i}/}}")
}
fn path_route(i: usize) -> String {
    format!("{{path: /svc{i}/exact}}")
}
fn header_route(i: usize) -> String {
    format!("{{prefix: /svc{i}/, headers: [{{name: x-tenant, string_match: {{exact: acme}}}}]}}")
}
fn regex_route(i: usize) -> String {
    format!("{{safe_regex: {{regex: \"/svc{i}/v[0-9]+/.*\"}}}}")
}

/// 1,000 routes in one virtual host, as a large sidecar has them: prefixes, exact paths,
/// prefixes with a header matcher and regexes in turn, then a catch-all. The request matches
/// the first route, the 500th, the last, or only the catch-all. Then 1,000 routes of one kind
/// each, the request matching the last, to show what each kind costs.
fn route_matching(c: &mut Criterion) {
    let kinds: [(&str, RouteOfKind); 4] = [
        ("prefix", prefix_route),
        ("path", path_route),
        ("prefix_and_header", header_route),
        ("regex", regex_route),
    ];
    let mixed = big_table((0..1000).map(|i| kinds[i % 4].1(i)));
    let headers = request_headers();
    let runtime = Snapshot::default();
    let mut group = c.benchmark_group("route");
    let run = |group: &mut criterion::BenchmarkGroup<'_, _>,
               case: &str,
               table: &RouteTable,
               path: &str| {
        group.bench_with_input(BenchmarkId::from_parameter(case), path, |b, path| {
            b.iter(|| {
                let req =
                    RouteRequest::new("GET", black_box(path), "www.example.com", "http", &headers);
                let selected = table.route(&req, &runtime, 42).expect("a route");
                black_box(selected.route as *const _);
            })
        });
    };
    for (case, path) in [
        ("mixed_first_of_1000", "/svc0/index.html"),
        ("mixed_500th_of_1000", "/svc498/items?page=2"),
        ("mixed_last_of_1000", "/svc999/v2/items"),
        ("mixed_catch_all_after_1000", "/static/app.js"),
    ] {
        run(&mut group, case, &mixed, path);
    }
    for (kind, route) in kinds {
        let table = big_table((0..1000).map(route));
        let path = match kind {
            "path" => "/svc999/exact",
            "regex" => "/svc999/v2/items",
            _ => "/svc999/items",
        };
        run(&mut group, &format!("{kind}_last_of_1000"), &table, path);
    }
    group.finish();
}

/// Request header rewriting at three levels (route configuration, virtual host, route): literal
/// adds, an overwrite, a value taken from a request header, removals.
fn header_rewriting(c: &mut Criterion) {
    let table = table_from_yaml(
        r#"
name: rw
request_headers_to_add:
- {header: {key: x-envoy-bench, value: global}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}
virtual_hosts:
- name: all
  domains: ["*"]
  request_headers_to_add:
  - {header: {key: x-vhost, value: all}}
  - {header: {key: x-client, value: "%REQ(user-agent)%"}}
  request_headers_to_remove: [x-remove-me]
  routes:
  - match: {prefix: /}
    route: {cluster: app}
    request_headers_to_add:
    - {header: {key: x-tenant, value: rewritten}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}
    - {header: {key: x-route, value: root}}
    - {header: {key: x-absent, value: "1"}, append_action: ADD_IF_ABSENT}
    request_headers_to_remove: [cookie]
"#,
    );
    let incoming = request_headers();
    let runtime = Snapshot::default();
    let req = RouteRequest::new("GET", "/api", "www.example.com", "http", &incoming);
    let selected = table.route(&req, &runtime, 1).expect("a route");
    let mut info = StreamInfo::new(1);
    info.request_headers = incoming.clone();
    c.bench_function("headers/rewrite_3_levels", |b| {
        b.iter_batched_ref(
            || incoming.clone(),
            |headers| {
                selected.apply_request_mutations(headers, &|add| {
                    legate_http::substitution::expand(add, &info)
                })
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

/// A finished request's record, as the router leaves it.
fn finished_stream() -> StreamInfo {
    let mut info = StreamInfo::new(7);
    let peer: SocketAddr = "203.0.113.7:51234".parse().unwrap();
    info.downstream_remote_address = Some(peer);
    info.downstream_direct_remote_address = Some(peer);
    info.downstream_local_address = Some("10.0.0.2:443".parse().unwrap());
    info.request = RequestLine {
        method: "GET".into(),
        path: "/api/v1/items?page=2".into(),
        authority: "www.example.com".into(),
        scheme: "https".into(),
    };
    info.request_headers = request_headers();
    info.response_code = Some(200);
    info.response_code_details = Some("via_upstream".into());
    info.bytes_received = 0;
    info.bytes_sent = 5120;
    info.upstream_cluster = Some(Arc::from("app"));
    info.upstream_host = Some("10.0.1.5:8080".parse().unwrap());
    info.first_upstream_tx_byte = Some(Duration::from_micros(180));
    info.first_upstream_rx_byte = Some(Duration::from_micros(1900));
    info.last_downstream_tx_byte = Some(Duration::from_micros(2300));
    info.duration = Some(Duration::from_micros(2350));
    info
}

/// Envoy's default access-log line, and a JSON-ish custom one.
fn access_log_format(c: &mut Criterion) {
    let info = finished_stream();
    let default = Formatter::envoy_default();
    let custom = Formatter::parse(
        r#"{"start":"%START_TIME(%s.%3f)%","method":"%REQ(:METHOD)%","path":"%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%","code":%RESPONSE_CODE%,"flags":"%RESPONSE_FLAGS%","dur":%DURATION%,"up":"%UPSTREAM_HOST%","ua":"%REQ(USER-AGENT)%"}"#,
    )
    .expect("the format compiles");
    let mut group = c.benchmark_group("access_log");
    for (name, format) in [("envoy_default", &default), ("custom_8_operators", &custom)] {
        group.bench_function(name, |b| {
            let mut out = String::with_capacity(512);
            b.iter(|| {
                out.clear();
                format.append(black_box(&info), "-", &mut out);
                black_box(out.len());
            })
        });
    }
    group.finish();
}

/// What the data path does to stats per request: counters, a gauge up and down, a histogram
/// sample (all relaxed atomics on handles resolved at configuration time).
fn stats_recording(c: &mut Criterion) {
    let store = Arc::new(Store::new());
    let scope = store.scope("cluster.app");
    let counter = scope.counter("upstream_rq_total");
    let gauge = scope.gauge("upstream_rq_active", ImportMode::Accumulate);
    let histogram = scope.histogram("upstream_rq_time", Unit::Milliseconds);
    let mut group = c.benchmark_group("stats");
    group.bench_function("counter_inc", |b| b.iter(|| black_box(&counter).inc()));
    group.bench_function("gauge_inc_dec", |b| {
        b.iter(|| {
            let g = black_box(&gauge);
            g.inc();
            g.dec();
        })
    });
    let mut sample = 0u64;
    group.bench_function("histogram_record", |b| {
        b.iter(|| {
            sample = (sample + 37) % 5000;
            black_box(&histogram).record(sample);
        })
    });
    group.bench_function("register_existing_by_name", |b| {
        b.iter(|| black_box(scope.counter(black_box("upstream_rq_total"))))
    });
    group.finish();
}

criterion_group!(
    hot_paths,
    route_matching,
    header_rewriting,
    access_log_format,
    stats_recording
);
criterion_main!(hot_paths);
