//! `envoy.config.core.v3.ConfigSource` as Legate reads it: the file form of xDS (a path whose
//! file holds a `DiscoveryResponse`, replaced by rename). The gRPC forms come with the xDS
//! client.

use std::time::SystemTime;

use legate_api::ConfigError;
use legate_api::pb::envoy::config::core::v3::{ConfigSource, config_source};

use crate::stats::{Counter, Gauge, ImportMode, Scope, TextReadout};

/// A file source: `path_config_source` (or the deprecated `path`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileSource {
    pub path: String,
    /// `watched_directory.path`: any move into this directory triggers a re-read of `path`
    /// (for Kubernetes ConfigMaps, whose files change by a symlink swap).
    pub watched_directory: Option<String>,
}

impl FileSource {
    /// Reads a `ConfigSource`; anything but a file source is refused with its field's path.
    #[allow(deprecated)]
    pub fn from_proto(source: &ConfigSource) -> Result<FileSource, ConfigError> {
        use config_source::ConfigSourceSpecifier as S;
        match &source.config_source_specifier {
            Some(S::Path(path)) => Ok(FileSource {
                path: path.clone(),
                watched_directory: None,
            }),
            Some(S::PathConfigSource(p)) => Ok(FileSource {
                path: p.path.clone(),
                watched_directory: p.watched_directory.as_ref().map(|w| w.path.clone()),
            }),
            Some(S::ApiConfigSource(_)) => Err(ConfigError::new(
                "api_config_source",
                "gRPC/REST config sources are not supported by Legate yet (path_config_source is)",
            )),
            Some(S::Ads(_)) => Err(ConfigError::new(
                "ads",
                "ADS is not supported by Legate yet (path_config_source is)",
            )),
            Some(S::Self_(_)) => Err(ConfigError::new(
                "self",
                "self config sources are not supported by Legate yet (path_config_source is)",
            )),
            None => Err(ConfigError::new(
                "",
                "a config source is required (path_config_source)",
            )),
        }
    }
}

impl FileSource {
    /// [`Self::from_proto`] for a subscription that starts now: as Envoy, the file must
    /// exist (it may change, or go and come back, afterwards).
    pub fn subscribe(source: &ConfigSource) -> Result<FileSource, ConfigError> {
        let file = FileSource::from_proto(source)?;
        file.check_exists()?;
        Ok(file)
    }

    /// Envoy's check of a file source when its subscription starts.
    pub fn check_exists(&self) -> Result<(), ConfigError> {
        if std::path::Path::new(&self.path).exists() {
            return Ok(());
        }
        Err(ConfigError::new(
            "",
            format!(
                "paths must refer to an existing path in the system: '{}' does not exist",
                self.path
            ),
        ))
    }
}

/// Which xDS subscription a set of stats belongs to: each has Envoy's own set of names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscriptionKind {
    Lds,
    Cds,
    Rds,
    Eds,
}

/// A subscription's stats, with Envoy's names: `listener_manager.lds.*`, `cluster_manager.cds.*`,
/// `http.<stat_prefix>.rds.<route_config_name>.*`, and `cluster.<name>.*` for EDS.
#[derive(Debug)]
pub struct SubscriptionStats {
    pub update_attempt: Counter,
    pub update_success: Counter,
    pub update_rejected: Counter,
    /// The source could not be read or parsed.
    pub update_failure: Counter,
    pub update_time: Gauge,
    pub version: Gauge,
    pub version_text: TextReadout,
    /// CDS and RDS: a change put in force.
    config_reload: Option<(Counter, Gauge)>,
}

impl SubscriptionStats {
    pub fn new(scope: &Scope, kind: SubscriptionKind) -> Self {
        use SubscriptionKind::*;
        scope.counter("init_fetch_timeout");
        scope.histogram("update_duration", crate::stats::Unit::Milliseconds);
        if matches!(kind, Rds | Eds) {
            scope.counter("update_empty");
        }
        if kind == Eds {
            for name in [
                "update_no_rebuild",
                "assignment_stale",
                "assignment_timeout_received",
                "assignment_use_cached",
            ] {
                scope.counter(name);
            }
        }
        SubscriptionStats {
            update_attempt: scope.counter("update_attempt"),
            update_success: scope.counter("update_success"),
            update_rejected: scope.counter("update_rejected"),
            update_failure: scope.counter("update_failure"),
            update_time: scope.gauge("update_time", ImportMode::NeverImport),
            version: scope.gauge("version", ImportMode::NeverImport),
            version_text: scope.text_readout("version_text"),
            config_reload: matches!(kind, Cds | Rds).then(|| {
                (
                    scope.counter("config_reload"),
                    scope.gauge("config_reload_time_ms", ImportMode::NeverImport),
                )
            }),
        }
    }

    /// Counts an accepted update: `version` is Envoy's hash of `version_info` (xxHash64),
    /// `version_text` the text itself, `update_time` the time in milliseconds since the epoch.
    pub fn accepted(&self, version_info: &str) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.update_success.inc();
        self.version.set(version_hash(version_info));
        self.version_text.set(version_info);
        self.update_time.set(now);
        if let Some((reload, time)) = &self.config_reload {
            reload.inc();
            time.set(now);
        }
    }
}

/// Envoy's `version` stat: xxHash64 of `version_info`, seed 0.
pub fn version_hash(version_info: &str) -> u64 {
    xxhash_rust::xxh64::xxh64(version_info.as_bytes(), 0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_hash_is_envoys() {
        // Envoy 1.40's `version` stat for version_info "1" and "2".
        assert_eq!(super::version_hash("1"), 13237225503670494420);
        assert_eq!(super::version_hash("2"), 6927017134761466251);
    }
}
