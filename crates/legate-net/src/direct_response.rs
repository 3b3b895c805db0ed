//! `envoy.filters.network.direct_response`: writes a fixed response to every new connection,
//! then closes it after the write (Envoy's `close(FlushWrite)`). The response is read from its
//! `DataSource` at configuration time, as Envoy reads it.

use legate_api::pb::envoy::config::core::v3::data_source::Specifier;
use legate_api::pb::envoy::extensions::filters::network::direct_response::v3::Config;
use legate_core::{Compiled, ConfigError};

/// The bytes to send; empty when `response` is unset (the connection is just closed).
pub fn compile(c: &Config) -> Compiled<Vec<u8>> {
    let err = |path: &str, m: String| Err(vec![ConfigError::new(path, m)]);
    let Some(source) = &c.response else {
        return Ok(Vec::new());
    };
    if source.watched_directory.is_some() {
        return err(
            "response.watched_directory",
            "watched directories are not supported by Legate".into(),
        );
    }
    match &source.specifier {
        Some(Specifier::InlineString(s)) => Ok(s.clone().into_bytes()),
        Some(Specifier::InlineBytes(b)) => Ok(b.clone()),
        Some(Specifier::Filename(path)) => std::fs::read(path).map_err(|e| {
            vec![ConfigError::new(
                "response.filename",
                format!("unable to read file: {path}: {e}"),
            )]
        }),
        Some(Specifier::EnvironmentVariable(name)) => match std::env::var(name) {
            Ok(v) => Ok(v.into_bytes()),
            Err(_) => err(
                "response.environment_variable",
                format!("Environment variable doesn't exist: {name}"),
            ),
        },
        None => Ok(Vec::new()),
    }
}
