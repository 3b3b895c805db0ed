//! Legate, the proxy as a whole: the compiled configuration snapshot ([`config::Config`]) and
//! the table of what Legate implements ([`supported`]). The `legate` binary (main.rs) adds the
//! command line, logging and the process lifecycle.

pub mod alloc;
pub mod config;
pub mod image;
pub mod logging;
pub mod server;
pub mod supported;
