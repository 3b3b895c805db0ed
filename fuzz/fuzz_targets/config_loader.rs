//! Feeds arbitrary bytes through the whole configuration path: parse (the first byte picks
//! YAML, JSON, binary or text proto), expand TypedStructs, check validate.rules and support,
//! decode, compile. Any panic, overflow or hang is a bug: bad input must become an error.

#![no_main]

use std::sync::OnceLock;

use legate::config::{Config, NodeOverrides};
use legate_api::bootstrap::{BOOTSTRAP, finish};
use legate_api::check::Support;
use legate_api::descriptors::pool;
use legate_api::load::{Format, parse};
use libfuzzer_sys::fuzz_target;

fn support() -> &'static Support {
    static SUPPORT: OnceLock<Support> = OnceLock::new();
    SUPPORT.get_or_init(legate::supported::support)
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else { return };
    let format = match selector % 4 {
        0 => Format::Yaml,
        1 => Format::Json,
        2 => Format::Proto,
        _ => Format::ProtoText,
    };
    let desc = pool().get_message_by_name(BOOTSTRAP).expect("Bootstrap descriptor");
    let Ok(msg) = parse(&desc, format, bytes) else { return };
    let Ok(bootstrap) = finish(msg, support()) else { return };
    let _ = Config::compile(&bootstrap, &NodeOverrides::default());
});
