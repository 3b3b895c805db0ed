//! Prints time and memory after each phase of loading a bootstrap (for profiling).
use std::time::Instant;
fn rss() -> String {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .filter(|l| l.starts_with("VmRSS") || l.starts_with("VmHWM"))
        .collect::<Vec<_>>()
        .join(" ")
}
fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: phases BOOTSTRAP.yaml");
    if std::env::args().nth(2).is_some() {
        return to_json(&path);
    }
    let t = Instant::now();
    let pool = legate_api::descriptors::pool();
    let desc = pool
        .get_message_by_name("envoy.config.bootstrap.v3.Bootstrap")
        .unwrap();
    println!("pool     {:?} {}", t.elapsed(), rss());
    let bytes = std::fs::read(&path).unwrap();
    let format = legate_api::Format::from_path(std::path::Path::new(&path));
    let mut m = legate_api::load::parse(&desc, format, &bytes).unwrap();
    println!("parse    {:?} {}", t.elapsed(), rss());
    legate_api::any::expand_typed_structs(&mut m, "").unwrap();
    println!("expand   {:?} {}", t.elapsed(), rss());
    let support = legate_api::check::Support::new(Vec::new(), &[]);
    let errors = legate_api::check::check(&m, &support);
    println!(
        "check    {:?} {} ({} errors)",
        t.elapsed(),
        rss(),
        errors.len()
    );
    let bytes = prost::Message::encode_to_vec(&m);
    drop(m);
    let b: legate_api::pb::envoy::config::bootstrap::v3::Bootstrap =
        prost::Message::decode(bytes.as_slice()).unwrap();
    println!("typed    {:?} {}", t.elapsed(), rss());
    drop(b);
}
#[allow(dead_code)]
fn to_json(path: &str) {
    let v = legate_api::load::yaml_to_json(&std::fs::read(path).unwrap()).unwrap();
    std::fs::write(format!("{path}.json"), serde_json::to_vec(&v).unwrap()).unwrap();
}
