//! Route tables that change while traffic flows.
//!
//! A connection manager's routes are either its own `route_config` (fixed for the life of the
//! listener) or an RDS subscription: a named table from a config source, shared by every
//! connection manager that names the same table at the same source, and replaced by a swap
//! when the source sends a new version. A request takes the table in force when it starts.
//!
//! The [`RdsRegistry`] hands out subscriptions; whoever feeds them (the file watcher, later
//! the gRPC xDS client) asks it which exist. A subscription lives as long as a connection
//! manager holds it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use legate_api::pb::envoy::config::core::v3::ConfigSource;
use legate_core::ConfigError;
use legate_core::config_source::FileSource;
use legate_core::config_source::{SubscriptionKind, SubscriptionStats};
use legate_core::stats::Scope;

use crate::route::RouteTable;

/// Where an `rds` block takes its table from. Only file sources exist yet.
pub type RdsSource = FileSource;

/// Reads an `rds.config_source` (its file must exist, as in Envoy).
pub fn file_source(source: &ConfigSource) -> Result<RdsSource, ConfigError> {
    FileSource::subscribe(source)
}

/// An HCM's `rds` block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RdsConfig {
    pub route_config_name: String,
    pub source: RdsSource,
}

/// What `/config_dump` shows of an accepted route table.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub version_info: String,
    pub last_updated: SystemTime,
    /// The `RouteConfiguration` as received, encoded.
    pub resource: Vec<u8>,
}

/// One named route table from one source.
#[derive(Debug)]
pub struct RdsSubscription {
    pub config: RdsConfig,
    pub stats: SubscriptionStats,
    table: ArcSwapOption<RouteTable>,
    accepted: Mutex<Option<Accepted>>,
}

impl RdsSubscription {
    /// The table in force, or `None` before the source has sent one.
    pub fn table(&self) -> Option<Arc<RouteTable>> {
        self.table.load_full()
    }

    /// Puts `table` in force for requests that start from now on.
    pub fn install(&self, table: RouteTable, accepted: Accepted) {
        self.stats.accepted(&accepted.version_info);
        self.table.store(Some(Arc::new(table)));
        *self.accepted.lock().unwrap_or_else(|p| p.into_inner()) = Some(accepted);
    }

    pub fn accepted(&self) -> Option<Accepted> {
        self.accepted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The RDS subscriptions alive, by source and table name.
#[derive(Debug, Default)]
pub struct RdsRegistry {
    subscriptions: Mutex<HashMap<Key, Weak<RdsSubscription>>>,
}

/// A subscription's identity: its source and table name.
type Key = (RdsSource, String);

impl RdsRegistry {
    /// The subscription for `config`, shared with every other connection manager that names
    /// the same table at the same source; a new one counts its stats under
    /// `<hcm_scope>rds.<name>.` and has no table until it is fed.
    pub fn subscribe(&self, config: &RdsConfig, hcm_scope: &Scope) -> Arc<RdsSubscription> {
        let key = (config.source.clone(), config.route_config_name.clone());
        let mut subs = self.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sub) = subs.get(&key).and_then(Weak::upgrade) {
            return sub;
        }
        let scope = hcm_scope.scope(&format!("rds.{}.", config.route_config_name));
        let sub = Arc::new(RdsSubscription {
            config: config.clone(),
            stats: SubscriptionStats::new(&scope, SubscriptionKind::Rds),
            table: ArcSwapOption::empty(),
            accepted: Mutex::new(None),
        });
        subs.insert(key, Arc::downgrade(&sub));
        sub
    }

    /// Every live subscription (dropping the records of dead ones).
    pub fn live(&self) -> Vec<Arc<RdsSubscription>> {
        let mut subs = self.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|_, w| w.strong_count() > 0);
        subs.values().filter_map(Weak::upgrade).collect()
    }
}
