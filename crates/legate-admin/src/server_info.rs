//! `/server_info`: `envoy.admin.v3.ServerInfo`, printed as Envoy prints it — with
//! `always_print_primitive_fields`, so empty strings, zeros, `false` and `[]` all appear.
//! The message is not in Legate's descriptor pool, so its fields (and those of
//! `CommandLineOptions`) are written here in the order Envoy 1.40 prints them; the node is in
//! the pool and goes through prost-reflect.

use legate_api::descriptors::pool;
use legate_api::pb::envoy::admin::v3::{CommandLineOptions, command_line_options};
use legate_api::pb::google::protobuf::Duration;
use prost::Message;
use prost_reflect::DynamicMessage;

use crate::json::{self, Json};
use crate::state::AdminState;

pub fn render(state: &AdminState) -> String {
    let info = &state.server_info;
    let uptime = format!("{}s", info.started.elapsed().as_secs());
    let node = pool()
        .get_message_by_name("envoy.config.core.v3.Node")
        .and_then(|desc| DynamicMessage::decode(desc, info.node.encode_to_vec().as_slice()).ok())
        .map_or_else(|| Json::object().build(), |n| json::proto(&n, true));
    Json::object()
        .field("version", Json::str(&info.version))
        .field("state", Json::str(state.server_state().as_str()))
        .field("uptime_current_epoch", Json::str(&uptime))
        .field("uptime_all_epochs", Json::str(&uptime))
        .field("hot_restart_version", Json::str(&info.hot_restart_version))
        .field(
            "command_line_options",
            command_line_options(&info.command_line_options),
        )
        .field("node", node)
        .field("hot_restart_initializing", Json::Bool(false))
        .build()
        .to_pretty()
}

/// A `google.protobuf.Duration` in proto3 JSON: `10s`, `0.500s`.
pub fn duration(d: Option<&Duration>) -> Json {
    let d = d.copied().unwrap_or_default();
    let text = match d.nanos {
        0 => format!("{}s", d.seconds),
        n if n % 1_000_000 == 0 => format!("{}.{:03}s", d.seconds, n / 1_000_000),
        n if n % 1_000 == 0 => format!("{}.{:06}s", d.seconds, n / 1_000),
        n => format!("{}.{n:09}s", d.seconds),
    };
    Json::String(text)
}

fn strings(items: &[String]) -> Json {
    Json::Array(items.iter().map(Json::str).collect())
}

fn command_line_options(o: &CommandLineOptions) -> Json {
    let ip_version = command_line_options::IpVersion::try_from(o.local_address_ip_version)
        .map_or("v4", |v| v.as_str_name());
    let mode = command_line_options::Mode::try_from(o.mode).map_or("Serve", |m| m.as_str_name());
    let drain_strategy = command_line_options::DrainStrategy::try_from(o.drain_strategy)
        .map_or("Gradual", |d| d.as_str_name());
    Json::object()
        .field("base_id", Json::int64(o.base_id))
        .field("concurrency", Json::num(o.concurrency))
        .field("config_path", Json::str(&o.config_path))
        .field("config_yaml", Json::str(&o.config_yaml))
        .field(
            "allow_unknown_static_fields",
            Json::Bool(o.allow_unknown_static_fields),
        )
        .field("admin_address_path", Json::str(&o.admin_address_path))
        .field("local_address_ip_version", Json::str(ip_version))
        .field("log_level", Json::str(&o.log_level))
        .field("component_log_level", Json::str(&o.component_log_level))
        .field("log_format", Json::str(&o.log_format))
        .field("log_path", Json::str(&o.log_path))
        .field("service_cluster", Json::str(&o.service_cluster))
        .field("service_node", Json::str(&o.service_node))
        .field("service_zone", Json::str(&o.service_zone))
        .field(
            "file_flush_interval",
            duration(o.file_flush_interval.as_ref()),
        )
        .field("drain_time", duration(o.drain_time.as_ref()))
        .field(
            "parent_shutdown_time",
            duration(o.parent_shutdown_time.as_ref()),
        )
        .field("mode", Json::str(mode))
        .field("disable_hot_restart", Json::Bool(o.disable_hot_restart))
        .field("enable_mutex_tracing", Json::Bool(o.enable_mutex_tracing))
        .field("restart_epoch", Json::num(o.restart_epoch))
        .field("cpuset_threads", Json::Bool(o.cpuset_threads))
        .field(
            "reject_unknown_dynamic_fields",
            Json::Bool(o.reject_unknown_dynamic_fields),
        )
        .field("log_format_escaped", Json::Bool(o.log_format_escaped))
        .field("disabled_extensions", strings(&o.disabled_extensions))
        .field(
            "ignore_unknown_dynamic_fields",
            Json::Bool(o.ignore_unknown_dynamic_fields),
        )
        .field("use_dynamic_base_id", Json::Bool(o.use_dynamic_base_id))
        .field("base_id_path", Json::str(&o.base_id_path))
        .field("drain_strategy", Json::str(drain_strategy))
        .field(
            "enable_fine_grain_logging",
            Json::Bool(o.enable_fine_grain_logging),
        )
        .field("socket_path", Json::str(&o.socket_path))
        .field("socket_mode", Json::num(o.socket_mode))
        .field("enable_core_dump", Json::Bool(o.enable_core_dump))
        .field("stats_tag", strings(&o.stats_tag))
        .field(
            "skip_hot_restart_on_no_parent",
            Json::Bool(o.skip_hot_restart_on_no_parent),
        )
        .field(
            "skip_hot_restart_parent_stats",
            Json::Bool(o.skip_hot_restart_parent_stats),
        )
        .field("skip_deprecated_logs", Json::Bool(o.skip_deprecated_logs))
        .field("file_flush_min_size", Json::num(o.file_flush_min_size))
        .field(
            "log_stacktrace_single_entry",
            Json::Bool(o.log_stacktrace_single_entry),
        )
        .build()
}
