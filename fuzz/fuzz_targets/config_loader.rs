//! Feeds arbitrary bytes through the whole configuration path: parse (the first byte picks
//! YAML, JSON, binary or text proto), expand TypedStructs, check validate.rules and support,
//! decode, compile. Any panic, overflow or hang is a bug: bad input must become an error.

#![no_main]

use legate::config::{Config, NodeOverrides};
use legate_api::bootstrap::{BOOTSTRAP, finish};
use legate_api::descriptors::pool;
use legate_api::load::{Format, parse_streaming};
use legate_api::stream::BOOTSTRAP_STREAM;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else { return };
    let format = match selector % 4 {
        0 => Format::Yaml,
        1 => Format::Json,
        2 => Format::Proto,
        _ => Format::ProtoText,
    };
    let desc = pool().get_message_by_name(BOOTSTRAP).expect("Bootstrap descriptor");
    let Ok(parsed) = parse_streaming(&desc, format, bytes, BOOTSTRAP_STREAM, Some(legate::supported::support())) else { return };
    let Ok(bootstrap) = finish(parsed, legate::supported::support()) else { return };
    let _ = Config::compile(&bootstrap, &NodeOverrides::default());
});
