//! What the binary hands the admin server ([`AdminState`]): the live objects the endpoints
//! read (stats store, clusters, runtime), facts fixed at start-up (listeners, server info, the
//! configuration to dump), and [`AdminControl`], through which the mutating endpoints act on
//! the process.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use legate_api::pb::envoy::admin::v3::CommandLineOptions;
use legate_api::pb::envoy::config::bootstrap::v3::Bootstrap;
use legate_api::pb::envoy::config::core::v3::Node;
use legate_core::runtime::Runtime;
use legate_core::stats::Store;
use legate_upstream::ClusterManager;

/// Everything the admin endpoints need. Shared by every admin connection.
pub struct AdminState {
    pub store: Arc<Store>,
    pub clusters: Arc<ClusterManager>,
    pub runtime: Arc<Runtime>,
    /// The listeners in force, in configuration order, with the address they are bound to
    /// (port 0 already resolved), for `/listeners`; the listener manager keeps it current.
    pub listeners: Arc<Mutex<Vec<ListenerInfo>>>,
    pub server_info: ServerInfo,
    /// Kept current by whoever changes the configuration.
    pub config_dump: Arc<Mutex<ConfigDumpSource>>,
    pub control: Arc<dyn AdminControl>,
    /// `admin.access_log` and `admin.access_log_path`: every admin request is logged.
    pub access_logs: Vec<legate_core::access_log::AccessLogger>,
}

/// One listener as `/listeners` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerInfo {
    pub name: String,
    pub address: SocketAddr,
    /// A unix domain socket listener's path, shown in place of `address`.
    pub pipe: Option<String>,
}

/// The facts of `/server_info` that do not change while the process runs.
#[derive(Clone, Debug)]
pub struct ServerInfo {
    /// Envoy prints `<sha>/<version>/<status>/<build type>/<ssl>`; Legate's binary chooses its
    /// own string.
    pub version: String,
    /// `/hot_restart_version`; Legate has no hot restart, but tools read the field.
    pub hot_restart_version: String,
    /// When the process started: `uptime_current_epoch` and `uptime_all_epochs` count from it
    /// (the same, as there is only one epoch).
    pub started: Instant,
    pub command_line_options: CommandLineOptions,
    /// The node as the server reports it to management servers (with `user_agent_name`,
    /// `user_agent_build_version`, `extensions` filled in); also shown in the bootstrap dump.
    pub node: Node,
}

/// The configuration `/config_dump` shows: the bootstrap as loaded, and its static listeners
/// and clusters still encoded (as `legate_api::bootstrap::LoadedBootstrap` keeps them), decoded
/// only when asked for.
#[derive(Clone, Debug, Default)]
pub struct ConfigDumpSource {
    /// The bootstrap without its static listeners and clusters.
    pub bootstrap: Bootstrap,
    /// Encoded `envoy.config.listener.v3.Listener`s.
    pub listeners: Vec<Vec<u8>>,
    /// Encoded `envoy.config.cluster.v3.Cluster`s.
    pub clusters: Vec<Vec<u8>>,
    /// `last_updated` of every static resource: when the configuration was loaded.
    pub loaded_at: Option<SystemTime>,
    /// LDS: the `version_info` last accepted, and the listeners (a name may have an active
    /// version and draining ones).
    pub lds_version: String,
    pub dynamic_listeners: Vec<DynamicListener>,
    /// CDS.
    pub cds_version: String,
    pub dynamic_clusters: Vec<DynamicResource>,
    /// RDS route tables in force.
    pub dynamic_routes: Vec<DynamicResource>,
}

/// A resource received from a dynamic source.
#[derive(Clone, Debug)]
pub struct DynamicResource {
    pub name: String,
    pub version_info: String,
    pub last_updated: SystemTime,
    /// The resource's proto, encoded.
    pub bytes: Vec<u8>,
}

/// A listener received from LDS: the version serving, and versions still draining.
#[derive(Clone, Debug)]
pub struct DynamicListener {
    pub name: String,
    pub active: Option<DynamicResource>,
    pub draining: Option<DynamicResource>,
}

/// Where the server is in its life (`envoy.admin.v3.ServerInfo.State`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    Live,
    Draining,
    PreInitializing,
    Initializing,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Live => "LIVE",
            ServerState::Draining => "DRAINING",
            ServerState::PreInitializing => "PRE_INITIALIZING",
            ServerState::Initializing => "INITIALIZING",
        }
    }
}

/// Envoy's log levels, with its spelling (`/logging?level=warning`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warning,
    Error,
    Critical,
    Off,
}

impl LogLevel {
    pub const ALL: [LogLevel; 7] = [
        LogLevel::Trace,
        LogLevel::Debug,
        LogLevel::Info,
        LogLevel::Warning,
        LogLevel::Error,
        LogLevel::Critical,
        LogLevel::Off,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warning => "warning",
            LogLevel::Error => "error",
            LogLevel::Critical => "critical",
            LogLevel::Off => "off",
        }
    }

    /// Only Envoy's names: `warn` is not one (Envoy answers "unknown logger level").
    pub fn parse(name: &str) -> Option<LogLevel> {
        LogLevel::ALL.into_iter().find(|l| l.as_str() == name)
    }
}

/// `/drain_listeners` parameters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainOptions {
    /// `graceful`: a drain period (`--drain-time-s`) before the listeners stop.
    pub graceful: bool,
    /// `inboundonly`: only listeners whose `traffic_direction` is `INBOUND`.
    pub inbound_only: bool,
    /// `skip_exit`: drain connections but keep the listeners open.
    pub skip_exit: bool,
}

/// How the mutating endpoints act on the process. Implemented by the binary; every method is
/// called from the admin task and must not block for long.
pub trait AdminControl: Send + Sync {
    /// `POST /quitquitquit`: start an orderly shutdown. The `OK` reply is sent first.
    fn quit(&self);

    /// `POST /drain_listeners`.
    fn drain_listeners(&self, options: DrainOptions);

    /// `POST /healthcheck/fail` (true) and `/healthcheck/ok` (false). The HTTP `health_check`
    /// filter answers 503 while it is failed, and `/ready` says `DRAINING`.
    fn set_health_check_failed(&self, failed: bool);

    fn health_check_failed(&self) -> bool;

    /// The init state: `PreInitializing`, `Initializing` or `Live` (`Draining` is derived
    /// here from [`AdminControl::health_check_failed`]).
    fn init_state(&self) -> ServerState {
        ServerState::Live
    }

    /// `POST /reopen_logs`: reopen access-log files (after rotation).
    fn reopen_logs(&self);

    /// Every logger with its level, in the order `/logging` lists them (Envoy's logger names:
    /// `admin`, `config`, `connection`, ...).
    fn loggers(&self) -> Vec<(String, LogLevel)>;

    /// Sets one logger's level (`None`: every logger). Called only with names that
    /// [`AdminControl::loggers`] listed.
    fn set_log_level(&self, logger: Option<&str>, level: LogLevel);
}

impl AdminState {
    /// `LIVE`, `DRAINING` (health checks failed), or the init state.
    pub fn server_state(&self) -> ServerState {
        if self.control.health_check_failed() {
            ServerState::Draining
        } else {
            self.control.init_state()
        }
    }
}
