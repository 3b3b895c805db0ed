//! The command line, with Envoy's flags, names and defaults (`envoy --help`), so that scripts
//! and container specs written for Envoy run Legate unchanged.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Load the configuration and serve traffic.
    Serve,
    /// Load and check the configuration, print the result, and exit (no sockets are opened).
    Validate,
    /// Load the configuration and initialise everything, then exit.
    #[value(name = "init_only")]
    InitOnly,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DrainStrategy {
    /// Encourage clients to close gradually over the drain period.
    Gradual,
    /// Close connections as soon as the drain starts.
    Immediate,
}

#[derive(Clone, Debug, Parser)]
#[command(
    name = "legate",
    about = "Legate: an Envoy-compatible proxy. Reads Envoy's v3 bootstrap (YAML, JSON, .pb, .pb_text).",
    long_about = "Legate: an Envoy-compatible proxy. Reads Envoy's v3 bootstrap (YAML, JSON, .pb, \
                  .pb_text) with Envoy's command-line flags.\n\nWith neither -c nor --config-yaml, \
                  Legate runs an embedded default configuration: a listener on 127.0.0.1:10000 and \
                  the admin server on 127.0.0.1:9901.",
    disable_version_flag = true
)]
pub struct Options {
    /// Path to the bootstrap configuration (.yaml, .yml, .json, .pb or .pb_text).
    #[arg(short = 'c', long = "config-path", value_name = "PATH")]
    pub config_path: Option<PathBuf>,

    /// YAML merged over the file given with -c (protobuf merge: repeated fields append).
    #[arg(long = "config-yaml", value_name = "YAML")]
    pub config_yaml: Option<String>,

    /// What to do with the configuration.
    #[arg(long, value_enum, default_value = "serve")]
    pub mode: Mode,

    /// Number of worker threads (default: the number of CPUs).
    #[arg(long, value_name = "N")]
    pub concurrency: Option<u32>,

    /// Log level: trace, debug, info, warning (or warn), error, critical, off.
    #[arg(
        short = 'l',
        long = "log-level",
        default_value = "info",
        value_name = "LEVEL"
    )]
    pub log_level: String,

    /// Per-component levels, e.g. `upstream:debug,config:trace`.
    #[arg(long = "component-log-level", value_name = "COMPONENT:LEVEL,...")]
    pub component_log_level: Option<String>,

    /// Log line format, with Envoy's (spdlog) flags: %Y %m %d %T %e %H %M %S %l %n %v %t %%.
    #[arg(
        long = "log-format",
        default_value = "[%Y-%m-%d %T.%e][%t][%l][%n] %v",
        value_name = "FORMAT"
    )]
    pub log_format: String,

    /// Write Legate's own logs to this file instead of stderr.
    #[arg(long = "log-path", value_name = "PATH")]
    pub log_path: Option<PathBuf>,

    /// How long listeners drain on shutdown or replacement, in seconds.
    #[arg(long = "drain-time-s", default_value_t = 600, value_name = "SECONDS")]
    pub drain_time_s: u64,

    /// How long a parent process lives after a hot restart, in seconds.
    #[arg(
        long = "parent-shutdown-time-s",
        default_value_t = 900,
        value_name = "SECONDS"
    )]
    pub parent_shutdown_time_s: u64,

    /// How connections are drained.
    #[arg(long = "drain-strategy", value_enum, default_value = "gradual")]
    pub drain_strategy: DrainStrategy,

    /// The cluster this proxy belongs to (overrides node.cluster).
    #[arg(long = "service-cluster", value_name = "NAME")]
    pub service_cluster: Option<String>,

    /// The identity of this proxy (overrides node.id).
    #[arg(long = "service-node", value_name = "NAME")]
    pub service_node: Option<String>,

    /// The zone this proxy runs in (overrides node.locality.zone).
    #[arg(long = "service-zone", value_name = "ZONE")]
    pub service_zone: Option<String>,

    /// Base ID for shared resources, so several instances can run on one host.
    #[arg(long = "base-id", default_value_t = 0, value_name = "ID")]
    pub base_id: u32,

    /// Hot-restart epoch.
    #[arg(long = "restart-epoch", default_value_t = 0, value_name = "N")]
    pub restart_epoch: u32,

    /// Print SUPPORTED.md: every configuration field and extension Legate implements.
    #[arg(long = "print-supported")]
    pub print_supported: bool,

    /// Print the version and exit.
    #[arg(long)]
    pub version: bool,
}
