//! The vocabulary every other Legate crate shares: configuration errors with field paths
//! ([`ConfigError`]), socket addresses and durations read from Envoy's protos, and string
//! matchers with Envoy's semantics (RE2-style full-match regexes).

pub mod access_log;
pub mod address;
pub mod config_source;
pub mod extension;
pub mod format;
pub mod future;
pub mod http1;
pub mod io;
pub mod lifecycle;
pub mod matcher;
pub mod metadata;
pub mod ocsp;
pub mod proto;
pub mod proxy_protocol;
pub mod runtime;
pub mod stats;
pub mod stream_info;
pub mod tls;
pub mod uuid;
pub mod x509;

pub use legate_api::ConfigError;

/// The result of compiling one piece of configuration: every problem found, not just the first.
pub type Compiled<T> = Result<T, Vec<ConfigError>>;

/// The errors of a part, seen from its parent: `path` is prepended to each (for
/// `.map_err(|e| within(e, "field"))`).
pub fn within(errors: Vec<ConfigError>, path: &str) -> Vec<ConfigError> {
    errors.into_iter().map(|e| e.within(path)).collect()
}

/// Collects the errors of compiling the parts of a whole, each placed under its own path.
#[derive(Default)]
pub struct Errors(pub Vec<ConfigError>);

impl Errors {
    pub fn push(&mut self, path: &str, message: impl Into<String>) {
        self.0.push(ConfigError::new(path, message));
    }

    /// Takes the value of a compiled part, keeping its errors (placed under `path`).
    pub fn take<T>(&mut self, path: &str, part: Compiled<T>) -> Option<T> {
        match part {
            Ok(v) => Some(v),
            Err(errors) => {
                self.0.extend(errors.into_iter().map(|e| e.within(path)));
                None
            }
        }
    }

    /// `Ok(value)` if nothing went wrong.
    pub fn finish<T>(self, value: impl FnOnce() -> T) -> Compiled<T> {
        if self.0.is_empty() {
            Ok(value())
        } else {
            Err(self.0)
        }
    }
}
