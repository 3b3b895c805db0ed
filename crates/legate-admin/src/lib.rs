//! The admin server: Envoy's admin endpoints (`docs/root/operations/admin.rst`), matching
//! Envoy 1.40's paths, parameters, bodies, content types and status codes.
//!
//! The binary builds an [`AdminState`] and runs [`serve`] on the admin listener (on the
//! control runtime, never a worker):
//!
//! ```ignore
//! let state = Arc::new(AdminState {
//!     store, clusters, runtime,                  // the live objects the endpoints read
//!     listeners: vec![ListenerInfo { name, address }],   // bound addresses
//!     server_info: ServerInfo { version, hot_restart_version, started, command_line_options, node },
//!     config_dump: ConfigDumpSource { bootstrap, listeners, clusters, loaded_at },
//!     control: Arc::new(MyControl),              // impl AdminControl: quit, drain, logs...
//!     access_logs,                               // admin.access_log / access_log_path
//! });
//! let task = tokio::spawn(legate_admin::serve(AdminListener::Tcp(tcp_listener), state));
//! ```
//!
//! Modules: [`config`] (the `Admin` bootstrap section compiled), [`state`] (what the binary
//! hands over), [`server`] (HTTP, routing, methods, headers), `endpoints` (the handler table
//! and the handlers), [`clusters`], [`listeners`], [`server_info`], [`config_dump`] (the
//! renderings), [`json`] (Envoy's pretty JSON and proto rendering), [`query`].
//!
//! Served: `/`, `/help`, `/certs`, `/clusters`, `/config_dump`, `/drain_listeners`,
//! `/healthcheck/fail`, `/healthcheck/ok`, `/hot_restart_version`, `/init_dump`,
//! `/listeners`, `/logging`, `/memory`, `/quitquitquit`, `/ready`, `/reopen_logs`,
//! `/reset_counters`, `/runtime`, `/runtime_modify`, `/server_info`, `/stats`,
//! `/stats/prometheus`. Not served (404 like any unknown path): the profilers, heap dumps,
//! `/contention`, `/stats/recentlookups*`, `/memory/tcmalloc`, `/tap`. The `server.*` stats
//! belong to the binary.

pub mod clusters;
pub mod config;
pub mod config_dump;
mod endpoints;
pub mod json;
pub mod listeners;
pub mod query;
pub mod server;
pub mod server_info;
pub mod state;

pub use config::{AdminAddress, AdminConfig};
pub use server::{AdminListener, serve};
pub use state::{
    AdminControl, AdminState, ConfigDumpSource, DrainOptions, DynamicListener, DynamicResource,
    ListenerInfo, LogLevel, ServerInfo, ServerState,
};

/// Envoy's `/help` text (also the body of a 404), for the binary's `--help`-style uses.
pub fn help_text() -> String {
    endpoints::help_text()
}
