//! `envoy.config.core.v3.ConfigSource` as Legate reads it: the file form of xDS (a path whose
//! file holds a `DiscoveryResponse`, replaced by rename). The gRPC forms come with the xDS
//! client.

use std::time::SystemTime;

use legate_api::ConfigError;
use legate_api::pb::envoy::config::core::v3::{ConfigSource, config_source};

use crate::stats::{Counter, Gauge, ImportMode, Scope};

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

/// A subscription's stats, with Envoy's names: `listener_manager.lds.*`, `cluster_manager.cds.*`,
/// `http.<stat_prefix>.rds.<route_config_name>.*`, and `cluster.<name>.*` for EDS.
#[derive(Debug)]
pub struct SubscriptionStats {
    pub update_attempt: Counter,
    pub update_success: Counter,
    pub update_rejected: Counter,
    pub update_failure: Counter,
    pub update_empty: Counter,
    pub update_time: Gauge,
    pub version: Gauge,
    pub config_reload: Counter,
}

impl SubscriptionStats {
    /// The subscription stats under `scope` (`lds.`, `cds.`, `rds.<name>.`, a cluster's scope
    /// for EDS).
    pub fn new(scope: &Scope) -> Self {
        scope.counter("init_fetch_timeout");
        scope.histogram("update_duration", crate::stats::Unit::Milliseconds);
        SubscriptionStats {
            update_attempt: scope.counter("update_attempt"),
            update_success: scope.counter("update_success"),
            update_rejected: scope.counter("update_rejected"),
            update_failure: scope.counter("update_failure"),
            update_empty: scope.counter("update_empty"),
            update_time: scope.gauge("update_time", ImportMode::NeverImport),
            version: scope.gauge("version", ImportMode::NeverImport),
            config_reload: scope.counter("config_reload"),
        }
    }

    /// Counts an accepted update: Envoy's `version` gauge is a hash of `version_info`, and
    /// `update_time` the time of the update in milliseconds since the epoch.
    pub fn accepted(&self, version_info: &str) {
        self.update_success.inc();
        self.config_reload.inc();
        self.version.set(version_hash(version_info));
        self.update_time.set(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        );
    }
}

/// A stable 64-bit hash of a `version_info` (FNV-1a; Envoy uses xxHash, and nobody reads the
/// value except to see that it changed).
pub fn version_hash(version_info: &str) -> u64 {
    version_info.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}
