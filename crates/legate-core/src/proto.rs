//! Small readers for protobuf well-known types as Envoy interprets them.

use std::time::Duration;

use legate_api::pb::google::protobuf as wkt;

/// A proto `Duration` as a std `Duration`; negative values (refused by validation) become zero.
pub fn duration(d: &wkt::Duration) -> Duration {
    if d.seconds < 0 || d.nanos < 0 {
        return Duration::ZERO;
    }
    Duration::new(d.seconds as u64, d.nanos as u32)
}

/// An optional duration with Envoy's default when unset. Envoy reads a zero duration as
/// "disabled" for most timeouts; callers decide, this only converts.
pub fn duration_or(d: Option<&wkt::Duration>, default: Duration) -> Duration {
    d.map_or(default, duration)
}

pub fn u32_or(v: Option<&wkt::UInt32Value>, default: u32) -> u32 {
    v.map_or(default, |v| v.value)
}

pub fn bool_or(v: Option<&wkt::BoolValue>, default: bool) -> bool {
    v.map_or(default, |v| v.value)
}
