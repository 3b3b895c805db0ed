//! Profiling aid: loads a bootstrap phase by phase and prints the elapsed time, current RSS and
//! peak RSS after each. `cargo run --release --example load_phases -- FILE`
use std::time::Instant;

use legate::config::{Config, NodeOverrides};
use legate_api::bootstrap::BOOTSTRAP;
use prost::Message;

fn memory() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_owned())
            .unwrap_or_default()
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
    let mut msg =
        legate_api::load::parse(&desc, legate_api::Format::from_path(path.as_ref()), &bytes)
            .unwrap();
    drop(bytes);
    phase("parse");
    legate_api::any::expand_typed_structs(&mut msg, "").unwrap();
    phase("expand");
    let errors = legate_api::check::check(&msg, &support);
    assert!(errors.is_empty(), "{errors:?}");
    phase("check");
    let encoded = msg.encode_to_vec();
    drop(msg);
    let bootstrap =
        legate_api::pb::envoy::config::bootstrap::v3::Bootstrap::decode(encoded.as_slice())
            .unwrap();
    drop(encoded);
    phase("typed");
    let config = Config::compile(&bootstrap, &NodeOverrides::default()).unwrap();
    phase("compile");
    drop(bootstrap);
    phase("drop");
    drop(config);
}
