//! Profiling aid: loads a bootstrap phase by phase and prints the elapsed time, current RSS and
//! peak RSS after each. `cargo run --release --example load_phases -- FILE`
use std::time::Instant;

use legate::config::{Config, NodeOverrides};
use legate_api::bootstrap::{BOOTSTRAP, finish};
use legate_api::load::parse_streaming;
use legate_api::stream::BOOTSTRAP_STREAM;

fn memory() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap_or("");
        line.split_whitespace().nth(1).unwrap_or("?").to_owned()
    };
    format!(
        "rss {:>7} kB  peak {:>7} kB",
        field("VmRSS:"),
        field("VmHWM:")
    )
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: load_phases BOOTSTRAP");
    let start = Instant::now();
    let phase = |name: &str| {
        println!(
            "{name:<8} {:>8.1} ms  {}",
            start.elapsed().as_secs_f64() * 1e3,
            memory()
        )
    };
    let support = legate::supported::support();
    let desc = legate_api::descriptors::pool()
        .get_message_by_name(BOOTSTRAP)
        .unwrap();
    phase("pool");
    let bytes = std::fs::read(&path).unwrap();
    let parsed = parse_streaming(
        &desc,
        legate_api::Format::from_path(path.as_ref()),
        &bytes,
        BOOTSTRAP_STREAM,
        Some(support),
    )
    .unwrap();
    drop(bytes);
    phase("parse");
    let bootstrap = finish(parsed, support).unwrap();
    phase("checked");
    let config = Config::compile(&bootstrap, &NodeOverrides::default()).unwrap();
    phase("compile");
    drop(bootstrap);
    phase("drop");
    drop(config);
}
