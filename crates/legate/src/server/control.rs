//! The configuration in force, and every way it changes while the process runs: the
//! bootstrap's static resources (at start-up and on SIGHUP) and the file-based xDS
//! subscriptions (LDS, CDS, RDS, EDS). Each change is checked and built whole before it is put
//! in force by snapshot swaps (`ClusterManager`, `ListenerManager`, RDS subscriptions); a bad
//! one is rejected, counted and logged, and changes nothing.
//!
//! Runs on the control thread. Envoy's order holds: clusters (and their endpoints) are in
//! force before the listeners that use them start, and a new listener's RDS tables are loaded
//! before it accepts.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use legate_admin::{ConfigDumpSource, DynamicResource};
use legate_api::pb::envoy::config::cluster::v3::Cluster as ClusterProto;
use legate_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use legate_api::pb::envoy::config::listener::v3::Listener;
use legate_api::pb::envoy::config::route::v3::RouteConfiguration;
use legate_api::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use legate_api::pb::envoy::service::discovery::v3::DiscoveryResponse;
use legate_core::config_source::{FileSource, SubscriptionKind, SubscriptionStats};
use legate_core::proto::bool_or;
use legate_core::tls::sds::{self, Subscription};
use legate_http::conn_manager::ProxyContext;
use legate_http::rds::{Accepted, RdsSubscription};
use legate_http::route::RouteTable;
use legate_net::listener::ListenerConfig;
use legate_upstream::cluster::{EdsConfig, LocalityEndpoints, compile_endpoints};
use legate_upstream::{ClusterConfig, ClusterUpdate};
use legate_xds::FileWatcher;
use prost::Message;
use tokio::sync::mpsc;

use super::listener_manager::{ListenerManager, ListenerSpec, Origin, Update};
use crate::config::{Config, DynamicSources, NetworkFilter, Resource, compile_listener};

const LISTENER: &str = "envoy.config.listener.v3.Listener";
const CLUSTER: &str = "envoy.config.cluster.v3.Cluster";
const ROUTE_CONFIGURATION: &str = "envoy.config.route.v3.RouteConfiguration";
const CLUSTER_LOAD_ASSIGNMENT: &str = "envoy.config.endpoint.v3.ClusterLoadAssignment";
const SECRET: &str = "envoy.extensions.transport_sockets.tls.v3.Secret";

/// What a file change is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Watched {
    Lds,
    Cds,
    Rds(FileSource),
    Eds(FileSource),
    Sds(FileSource),
}

/// Re-reads the bootstrap (SIGHUP).
pub type Reload = Box<dyn Fn() -> Result<Config, String>>;

/// An EDS cluster's subscription.
struct Eds {
    config: EdsConfig,
    stats: SubscriptionStats,
}

pub struct Control {
    context: Arc<ProxyContext>,
    pub listeners: ListenerManager,
    dump: Arc<Mutex<ConfigDumpSource>>,
    watcher: Option<FileWatcher<Watched>>,
    sources: DynamicSources,
    lds: SubscriptionStats,
    cds: SubscriptionStats,
    /// The resources of the clusters in force, by origin: equal bytes mean unchanged.
    static_clusters: HashMap<String, Vec<u8>>,
    dynamic_clusters: HashMap<String, DynamicResource>,
    eds: HashMap<String, Eds>,
    reload: Option<Reload>,
}

impl Control {
    pub fn new(
        context: Arc<ProxyContext>,
        listeners: ListenerManager,
        dump: Arc<Mutex<ConfigDumpSource>>,
        watcher: Option<(FileWatcher<Watched>, DynamicSources)>,
        reload: Option<Reload>,
    ) -> Control {
        let store = &context.store;
        let (watcher, sources) = match watcher {
            Some((w, s)) => (Some(w), s),
            None => (None, DynamicSources::default()),
        };
        Control {
            lds: SubscriptionStats::new(
                &store.scope("listener_manager.lds."),
                SubscriptionKind::Lds,
            ),
            cds: SubscriptionStats::new(
                &store.scope("cluster_manager.cds."),
                SubscriptionKind::Cds,
            ),
            context,
            listeners,
            dump,
            watcher,
            sources,
            static_clusters: HashMap::new(),
            dynamic_clusters: HashMap::new(),
            eds: HashMap::new(),
            reload,
        }
    }

    /// Puts the bootstrap in force: static clusters (with their EDS endpoints), CDS, static
    /// listeners, LDS. A static listener that cannot start is fatal, as in Envoy.
    pub fn start(&mut self, config: Config) -> Result<(), String> {
        // As Envoy, the LDS and CDS files must exist when their subscriptions start.
        for (field, source) in [
            ("lds_config", &self.sources.lds),
            ("cds_config", &self.sources.cds),
        ] {
            if let Some(Err(e)) = source.as_ref().map(FileSource::check_exists) {
                return Err(format!("dynamic_resources.{field}: {}", e.message));
            }
        }
        let (_, _, stale) = self.apply_static_clusters(config.clusters);
        debug_assert!(stale.is_empty(), "no static cluster exists before start-up");
        if self.sources.cds.is_some() {
            self.watch(Watched::Cds);
            self.load_cds();
        }
        let prepared = self.listeners.prepare(static_update(config.listeners))?;
        self.warm();
        self.listeners.commit(prepared);
        if self.sources.lds.is_some() {
            self.watch(Watched::Lds);
            self.load_lds();
        }
        Ok(())
    }

    /// A watched file changed.
    /// Whether some xDS file is watched (and will be read again when it changes).
    pub fn watches_files(&self) -> bool {
        self.watcher.as_ref().is_some_and(|w| w.is_watching())
    }

    pub fn changed(&mut self, what: Watched) {
        match what {
            Watched::Lds => self.load_lds(),
            Watched::Cds => self.load_cds(),
            Watched::Rds(source) => {
                let subs = self
                    .context
                    .rds
                    .live()
                    .into_iter()
                    .filter(|s| s.config.source == source)
                    .collect();
                self.load_rds(&source, subs);
            }
            Watched::Sds(source) => {
                let secrets = sds::live()
                    .into_iter()
                    .filter(|s| *s.source() == source)
                    .collect();
                self.load_secrets(&source, secrets);
            }
            Watched::Eds(source) => {
                let clusters: Vec<String> = self
                    .eds
                    .iter()
                    .filter(|(_, e)| e.config.source == source)
                    .map(|(name, _)| name.clone())
                    .collect();
                self.load_eds(&source, &clusters);
            }
        }
    }

    /// SIGHUP: re-reads the bootstrap and applies the difference in its static resources.
    pub fn reload(&mut self) {
        let Some(reload) = &self.reload else {
            tracing::warn!(
                "caught SIGHUP: the configuration came from the command line, not a file; nothing to reload"
            );
            return;
        };
        let config = match reload() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(
                    "caught SIGHUP: the new configuration is rejected, the running one stays:\n{e}"
                );
                return;
            }
        };
        if config.dynamic != self.sources {
            tracing::warn!(
                "caught SIGHUP: changes to dynamic_resources take effect at the next restart"
            );
        }
        // The clusters change only once every listener is built: a listener that cannot
        // start rejects the whole reload.
        let prepared = match self.listeners.prepare(static_update(config.listeners)) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(
                    "caught SIGHUP: the new configuration is rejected, the running one stays: {e}"
                );
                return;
            }
        };
        // Make before break: the clusters the new listeners route to are in force before
        // they start, and those only the old ones used go once they are replaced (a request
        // in between would find its route's cluster gone: 503, `cluster_not_found`).
        let (added, modified, stale) = self.apply_static_clusters(config.clusters);
        self.warm();
        let applied = self.listeners.commit(prepared);
        let removed = if stale.is_empty() {
            0
        } else {
            let (_, _, removed) = self.update_clusters(Vec::new(), stale, false);
            self.refresh_cluster_dump();
            removed
        };
        tracing::info!(
            "caught SIGHUP: configuration reloaded (listeners {applied}; clusters added: {added}, modified: {modified}, removed: {removed})"
        );
    }

    /// Ends listener drains that are over.
    pub fn tick(&mut self) {
        self.listeners.tick();
    }

    /// Whether [`Self::tick`] has work: a listener is draining.
    pub fn draining(&self) -> bool {
        self.listeners.draining()
    }

    /// Puts the bootstrap's new and changed clusters in force; returns how many were added
    /// and modified, and the static clusters it no longer has, for the caller to remove
    /// (after the listeners that route to them are replaced). A name CDS held becomes static.
    fn apply_static_clusters(
        &mut self,
        clusters: Vec<Resource<ClusterConfig>>,
    ) -> (usize, usize, Vec<String>) {
        let names: HashSet<String> = clusters.iter().map(|c| c.config.name.clone()).collect();
        let remove: Vec<String> = self
            .static_clusters
            .keys()
            .filter(|n| !names.contains(*n))
            .cloned()
            .collect();
        let mut upsert = Vec::new();
        let mut records = HashMap::new();
        for Resource { bytes, config } in clusters {
            let unchanged = self.static_clusters.get(&config.name) == Some(&bytes);
            records.insert(config.name.clone(), bytes);
            self.dynamic_clusters.remove(&config.name);
            if !unchanged {
                upsert.push(config);
            }
        }
        let (added, modified, _) = self.update_clusters(upsert, Vec::new(), false);
        self.static_clusters = records;
        self.refresh_cluster_dump();
        (added, modified, remove)
    }

    /// Replaces and removes clusters in one swap, EDS clusters with their endpoints read
    /// first (each EDS file once).
    fn update_clusters(
        &mut self,
        mut upsert: Vec<ClusterConfig>,
        remove: Vec<String>,
        via_api: bool,
    ) -> (usize, usize, usize) {
        let mut files = EdsFiles::new(&self.context);
        let mut fetched = Vec::new();
        for config in &mut upsert {
            // A replaced cluster's EDS subscription ends with it (a new one starts below).
            self.eds.remove(&config.name);
            if let Some(eds) = &config.eds {
                let outcome = files.fetch(eds);
                match &outcome {
                    Ok((_, priorities)) => config.priorities = priorities.clone(),
                    Err((_, e)) => tracing::warn!(
                        "eds: no endpoints for cluster '{}' from '{}' yet: {e}",
                        config.name,
                        eds.source.path
                    ),
                }
                fetched.push((config.name.clone(), eds.clone(), outcome));
            }
        }
        for name in &remove {
            self.eds.remove(name);
        }
        let summary = self.context.clusters.update(ClusterUpdate {
            upsert,
            remove,
            via_api,
        });
        for (cluster, config, outcome) in fetched {
            let stats = SubscriptionStats::new(
                &self.context.store.scope(&format!("cluster.{cluster}.")),
                SubscriptionKind::Eds,
            );
            stats.update_attempt.inc();
            match outcome {
                Ok((version, _)) => stats.accepted(&version),
                Err((unreadable, _)) if unreadable => stats.update_failure.inc(),
                Err(_) => stats.update_rejected.inc(),
            }
            self.watch(Watched::Eds(config.source.clone()));
            self.eds.insert(
                cluster,
                Eds {
                    config: *config,
                    stats,
                },
            );
        }
        (summary.added, summary.modified, summary.removed)
    }

    fn watch(&mut self, what: Watched) {
        let source = match &what {
            Watched::Lds => self.sources.lds.clone(),
            Watched::Cds => self.sources.cds.clone(),
            Watched::Rds(s) | Watched::Eds(s) | Watched::Sds(s) => Some(s.clone()),
        };
        if let (Some(watcher), Some(source)) = (&self.watcher, source) {
            watch_source(watcher, &source, what);
        }
    }

    fn load_lds(&mut self) {
        let Some(source) = self.sources.lds.clone() else {
            return;
        };
        self.lds.update_attempt.inc();
        let response = match read(&self.context, &source, LISTENER) {
            Ok(r) => r,
            Err(failed) => return failed.count("lds", &source, &self.lds),
        };
        let clusters = self.context.clusters.clusters();
        let names: HashSet<&str> = clusters.as_slice().iter().map(|c| &*c.name).collect();
        let mut specs = Vec::with_capacity(response.resources.len());
        let mut seen = HashSet::new();
        let mut keep = HashSet::new();
        let mut errors = Vec::new();
        for (i, any) in response.resources.iter().enumerate() {
            let listener = match Listener::decode(any.value.as_slice()) {
                Ok(l) => l,
                Err(e) => {
                    errors.push(format!("resources[{i}]: unable to decode: {e}"));
                    continue;
                }
            };
            if !seen.insert(listener.name.clone()) {
                // Envoy refuses the whole update for a duplicate name.
                self.lds.update_rejected.inc();
                tracing::warn!(
                    "lds: update from '{}' rejected, the listeners in force stay: duplicate listener {} found",
                    source.path,
                    listener.name
                );
                return;
            }
            match compile_listener(&listener, &names) {
                Ok(config) => specs.push(ListenerSpec {
                    resource: any.value.clone(),
                    config,
                }),
                Err(e) => {
                    keep.insert(listener.name.clone());
                    errors.push(join(
                        e.into_iter().map(|e| e.within(&format!("resources[{i}]"))),
                    ));
                }
            }
        }
        drop(clusters);
        let update = Update {
            origin: Origin::Dynamic,
            specs,
            version_info: response.version_info.clone(),
            keep,
            atomic: false,
        };
        let version = response.version_info;
        match self.listeners.prepare(update) {
            Ok(prepared) => {
                self.warm();
                let applied = self.listeners.commit(prepared);
                // A removed listener's route tables leave the dump with it.
                self.refresh_route_dump();
                errors.extend(applied.errors.iter().cloned());
                if !applied.is_empty() {
                    tracing::info!("lds: version '{version}' applied ({applied})");
                }
            }
            Err(e) => errors.push(e),
        }
        if errors.is_empty() {
            self.lds.accepted(&version);
            lock(&self.dump).lds_version = version;
        } else {
            // As Envoy: the listeners that could be built are in force, and the update counts
            // as rejected (its version is not taken).
            self.lds.update_rejected.inc();
            tracing::warn!(
                "lds: update '{version}' from '{}' rejected (listeners that failed keep their current version):\n{}",
                source.path,
                errors.join("\n")
            );
        }
    }

    fn load_cds(&mut self) {
        let Some(source) = self.sources.cds.clone() else {
            return;
        };
        self.cds.update_attempt.inc();
        let response = match read(&self.context, &source, CLUSTER) {
            Ok(r) => r,
            Err(failed) => return failed.count("cds", &source, &self.cds),
        };
        match self.apply_cds(&response) {
            Ok(()) => {
                self.cds.accepted(&response.version_info);
                lock(&self.dump).cds_version = response.version_info.clone();
            }
            Err(e) => {
                self.cds.update_rejected.inc();
                tracing::warn!(
                    "cds: update '{}' from '{}' rejected (clusters that failed keep their current version):\n{e}",
                    response.version_info,
                    source.path
                );
            }
        }
        self.refresh_cluster_dump();
    }

    /// Applies a CDS response. A cluster that cannot be compiled keeps its current version
    /// (if any) and the others apply, as in Envoy; the errors are returned.
    fn apply_cds(&mut self, response: &DiscoveryResponse) -> Result<(), String> {
        let mut upsert = Vec::new();
        let mut names = HashSet::new();
        let mut records = HashMap::new();
        let mut errors = Vec::new();
        for (i, any) in response.resources.iter().enumerate() {
            let path = format!("resources[{i}]");
            let cluster = match ClusterProto::decode(any.value.as_slice()) {
                Ok(c) => c,
                Err(e) => {
                    errors.push(format!("{path}: unable to decode: {e}"));
                    continue;
                }
            };
            if !names.insert(cluster.name.clone()) {
                return Err(format!("duplicate cluster {} found", cluster.name));
            }
            if self.static_clusters.contains_key(&cluster.name) {
                // As Envoy: skipped, the update goes on.
                tracing::warn!(
                    "cds: {path}: cluster '{}' is a static cluster and cannot be changed by CDS; skipped",
                    cluster.name
                );
                continue;
            }
            let current = self.dynamic_clusters.get(&cluster.name);
            if let Some(current) = current
                && current.bytes == any.value
            {
                records.insert(cluster.name.clone(), current.clone());
                continue;
            }
            match ClusterConfig::compile(&cluster) {
                Ok(config) => {
                    records.insert(
                        cluster.name.clone(),
                        DynamicResource {
                            name: cluster.name.clone(),
                            version_info: response.version_info.clone(),
                            last_updated: SystemTime::now(),
                            bytes: any.value.clone(),
                        },
                    );
                    upsert.push(config);
                }
                Err(e) => {
                    if let Some(current) = current {
                        records.insert(cluster.name.clone(), current.clone());
                    }
                    errors.push(join(e.into_iter().map(|e| e.within(&path))));
                }
            }
        }
        let remove: Vec<String> = self
            .dynamic_clusters
            .keys()
            .filter(|name| !records.contains_key(*name))
            .cloned()
            .collect();
        // The SDS secrets of the new clusters' TLS contexts, before they are in force (Envoy
        // warms a cluster until its secrets arrive).
        self.feed_secrets();
        let (added, modified, removed) = self.update_clusters(upsert, remove, true);
        self.dynamic_clusters = records;
        if added + modified + removed > 0 {
            tracing::info!(
                "cds: version '{}' applied (clusters added: {added}, modified: {modified}, removed: {removed})",
                response.version_info
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("\n"))
        }
    }

    fn load_eds(&mut self, source: &FileSource, clusters: &[String]) {
        let mut files = EdsFiles::new(&self.context);
        for name in clusters {
            let Some(eds) = self.eds.get(name) else {
                continue;
            };
            let Some(cluster) = self.context.clusters.get(name) else {
                continue;
            };
            eds.stats.update_attempt.inc();
            match files.fetch(&eds.config) {
                Ok((version, priorities)) => {
                    cluster.set_endpoints(&priorities);
                    eds.stats.accepted(&version);
                }
                Err((unreadable, e)) => {
                    if unreadable {
                        eds.stats.update_failure.inc();
                    } else {
                        eds.stats.update_rejected.inc();
                    }
                    tracing::warn!(
                        "eds: update of cluster '{name}' from '{}' not taken, its endpoints stay: {e}",
                        source.path
                    );
                }
            }
        }
    }

    /// Puts in force what listeners about to start need and nobody has fed yet: their RDS
    /// tables and SDS secrets (their clusters are in force already, their secrets too).
    fn warm(&mut self) {
        self.feed_rds(unfed_subscriptions(&self.context));
        self.feed_secrets();
    }

    /// Loads the SDS secrets that have nothing in force yet, and watches their files.
    fn feed_secrets(&mut self) {
        let mut by_source: HashMap<FileSource, Vec<Arc<dyn Subscription>>> = HashMap::new();
        for s in sds::live().into_iter().filter(|s| !s.installed()) {
            by_source.entry(s.source().clone()).or_default().push(s);
        }
        for (source, secrets) in by_source {
            self.watch(Watched::Sds(source.clone()));
            self.load_secrets(&source, secrets);
        }
    }

    /// Reads `source` and installs each of `secrets`.
    fn load_secrets(&mut self, source: &FileSource, secrets: Vec<Arc<dyn Subscription>>) {
        let response = read(&self.context, source, SECRET);
        for secret in secrets {
            let stats = SubscriptionStats::new(
                &self.context.store.scope(&format!("sds.{}.", secret.name())),
                SubscriptionKind::Lds,
            );
            stats.update_attempt.inc();
            let response = match &response {
                Ok(r) => r,
                Err(failed) => {
                    failed.count(&format!("sds (secret '{}')", secret.name()), source, &stats);
                    continue;
                }
            };
            // As Envoy, a secrets file holds the one secret it is read for.
            let installed = match &response.resources[..] {
                [] => Err(format!(
                    "Missing SDS resources for {} in onConfigUpdate()",
                    secret.name()
                )),
                [any] => Secret::decode(any.value.as_slice())
                    .map_err(|e| format!("unable to decode the secret: {e}"))
                    .and_then(|s| {
                        if s.name == secret.name() {
                            secret.install(s)
                        } else {
                            Err(format!(
                                "Unexpected SDS secret (expecting {}): {}",
                                secret.name(),
                                s.name
                            ))
                        }
                    }),
                more => Err(format!("Unexpected SDS secrets length: {}", more.len())),
            };
            match installed {
                Ok(()) => {
                    stats.accepted(&response.version_info);
                    // A certificate file replaced by rename reloads the secret too.
                    for file in secret.files() {
                        if let Some(watcher) = &self.watcher
                            && let Err(e) = watcher.watch_file(&file, Watched::Sds(source.clone()))
                        {
                            tracing::error!("cannot watch '{}' for changes: {e}", file.display());
                        }
                    }
                }
                Err(e) => {
                    stats.update_rejected.inc();
                    tracing::warn!(
                        "sds: secret '{}' from '{}' rejected{}: {e}",
                        secret.name(),
                        source.path,
                        if secret.installed() {
                            ", the version in force stays"
                        } else {
                            ""
                        }
                    );
                }
            }
        }
    }

    /// Loads the tables of RDS subscriptions that have none yet (new listeners'), and
    /// watches their sources.
    fn feed_rds(&mut self, subs: Vec<Arc<RdsSubscription>>) {
        let mut by_source: HashMap<FileSource, Vec<Arc<RdsSubscription>>> = HashMap::new();
        for s in subs {
            by_source
                .entry(s.config.source.clone())
                .or_default()
                .push(s);
        }
        for (source, subs) in by_source {
            self.watch(Watched::Rds(source.clone()));
            self.load_rds(&source, subs);
        }
    }

    fn load_rds(&mut self, source: &FileSource, subs: Vec<Arc<RdsSubscription>>) {
        if subs.is_empty() {
            return;
        }
        let response = read(&self.context, source, ROUTE_CONFIGURATION);
        for sub in subs {
            sub.stats.update_attempt.inc();
            let name = &sub.config.route_config_name;
            let response = match &response {
                Ok(r) => r,
                Err(failed) => {
                    failed.count(
                        &format!("rds (route configuration '{name}')"),
                        source,
                        &sub.stats,
                    );
                    continue;
                }
            };
            let table = Ok(response).and_then(|r| {
                // Decoded once: the one named `name` is kept.
                let (i, any, rc) = r
                    .resources
                    .iter()
                    .enumerate()
                    .find_map(|(i, any)| {
                        RouteConfiguration::decode(any.value.as_slice())
                            .ok()
                            .filter(|rc| &rc.name == name)
                            .map(|rc| (i, any, rc))
                    })
                    .ok_or_else(|| format!("no route configuration named '{name}'"))?;
                let table = RouteTable::compile(&rc).map_err(|errors| {
                    join(
                        errors
                            .into_iter()
                            .map(|e| e.within(&format!("resources[{i}]"))),
                    )
                })?;
                // RDS tables are checked against the clusters only when they ask for it.
                if bool_or(rc.validate_clusters.as_ref(), false) {
                    let unknown: Vec<String> = table
                        .referenced_clusters()
                        .into_iter()
                        .filter(|(_, c)| self.context.clusters.get(c).is_none())
                        .map(|(path, c)| {
                            format!("resources[{i}].{path}: route: unknown cluster '{c}'")
                        })
                        .collect();
                    if !unknown.is_empty() {
                        return Err(unknown.join("\n"));
                    }
                }
                Ok((table, any.value.clone(), r.version_info.clone()))
            });
            match table {
                Ok((table, bytes, version_info)) => {
                    if sub.accepted().is_some_and(|a| a.resource == bytes) {
                        // Unchanged: counted as a success, nothing swapped.
                        sub.stats.update_success.inc();
                        continue;
                    }
                    sub.install(
                        table,
                        Accepted {
                            version_info,
                            last_updated: SystemTime::now(),
                            resource: bytes,
                        },
                    );
                }
                Err(e) => {
                    sub.stats.update_rejected.inc();
                    tracing::warn!(
                        "rds: update of route configuration '{name}' from '{}' rejected{}: {e}",
                        source.path,
                        if sub.table().is_some() {
                            ", the table in force stays"
                        } else {
                            ""
                        }
                    );
                }
            }
        }
        self.refresh_route_dump();
    }

    fn refresh_cluster_dump(&self) {
        let mut dump = lock(&self.dump);
        let mut clusters: Vec<DynamicResource> = self.dynamic_clusters.values().cloned().collect();
        clusters.sort_by(|a, b| a.name.cmp(&b.name));
        dump.dynamic_clusters = clusters;
        let statics = self.context.clusters.clusters();
        dump.clusters = statics
            .as_slice()
            .iter()
            .filter_map(|c| self.static_clusters.get(&*c.name).cloned())
            .collect();
    }

    fn refresh_route_dump(&self) {
        let mut routes: Vec<DynamicResource> = self
            .context
            .rds
            .live()
            .iter()
            .filter_map(|s| {
                let a = s.accepted()?;
                Some(DynamicResource {
                    name: s.config.route_config_name.clone(),
                    version_info: a.version_info,
                    last_updated: a.last_updated,
                    bytes: a.resource,
                })
            })
            .collect();
        routes.sort_by(|a, b| a.name.cmp(&b.name));
        routes.dedup_by(|a, b| a.name == b.name && a.bytes == b.bytes);
        lock(&self.dump).dynamic_routes = routes;
    }
}

/// EDS files read for one change: each file once, its assignments indexed by cluster name.
struct EdsFiles<'a> {
    context: &'a ProxyContext,
    read: HashMap<FileSource, Result<Arc<Assignments>, (bool, String)>>,
}

/// The assignments of one EDS file.
struct Assignments {
    version_info: String,
    by_name: HashMap<String, (usize, ClusterLoadAssignment)>,
}

/// Why an EDS fetch gave no endpoints: (the file could not be read or parsed, why).
type FetchError = (bool, String);

impl<'a> EdsFiles<'a> {
    fn new(context: &'a ProxyContext) -> Self {
        EdsFiles {
            context,
            read: HashMap::new(),
        }
    }

    /// The endpoints `eds` names, with the file's version.
    fn fetch(
        &mut self,
        eds: &EdsConfig,
    ) -> Result<(String, Vec<Vec<LocalityEndpoints>>), FetchError> {
        let context = self.context;
        let file = self
            .read
            .entry(eds.source.clone())
            .or_insert_with(|| {
                let response = read(context, &eds.source, CLUSTER_LOAD_ASSIGNMENT)
                    .map_err(|f| (matches!(f, Failed::Unreadable(_)), f.to_string()))?;
                let mut by_name = HashMap::new();
                for (i, any) in response.resources.iter().enumerate() {
                    let la = ClusterLoadAssignment::decode(any.value.as_slice())
                        .map_err(|e| (false, format!("resources[{i}]: unable to decode: {e}")))?;
                    by_name.entry(la.cluster_name.clone()).or_insert((i, la));
                }
                Ok(Arc::new(Assignments {
                    version_info: response.version_info,
                    by_name,
                }))
            })
            .clone()?;
        let (i, la) = file.by_name.get(&eds.service_name).ok_or_else(|| {
            (
                false,
                format!("no ClusterLoadAssignment for '{}'", eds.service_name),
            )
        })?;
        let priorities = compile_endpoints(la).map_err(|errors| {
            (
                false,
                join(
                    errors
                        .into_iter()
                        .map(|e| e.within(&format!("resources[{i}]"))),
                ),
            )
        })?;
        Ok((file.version_info.clone(), priorities))
    }
}

/// The RDS subscriptions that have no table yet.
fn unfed_subscriptions(context: &ProxyContext) -> Vec<Arc<RdsSubscription>> {
    context
        .rds
        .live()
        .into_iter()
        .filter(|s| s.accepted().is_none())
        .collect()
}

/// Watches `source` for `what` (the watcher ignores a registration it already has, and a
/// failed one is tried again the next time).
fn watch_source(watcher: &FileWatcher<Watched>, source: &FileSource, what: Watched) {
    let watched = match &source.watched_directory {
        Some(dir) => watcher.watch_directory(Path::new(dir), what),
        None => watcher.watch_file(Path::new(&source.path), what),
    };
    if let Err(e) = watched {
        tracing::error!("cannot watch '{}' for changes: {e}", source.path);
    }
}

/// A resource file not taken: Envoy counts `update_failure` for one that cannot be read or
/// parsed, `update_rejected` for one whose resources are invalid.
#[derive(Debug)]
enum Failed {
    Unreadable(String),
    Invalid(String),
}

impl Failed {
    fn count(&self, what: &str, source: &FileSource, stats: &SubscriptionStats) {
        match self {
            Failed::Unreadable(_) => stats.update_failure.inc(),
            Failed::Invalid(_) => stats.update_rejected.inc(),
        }
        tracing::warn!(
            "{what}: update from '{}' not taken, the configuration in force stays: {self}",
            source.path
        );
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Unreadable(e) | Failed::Invalid(e) => f.write_str(e),
        }
    }
}

/// Reads and checks a `DiscoveryResponse` file. Fields Envoy's API does not have are skipped
/// with a warning and counted in `server.dynamic_unknown_fields`, as Envoy does.
fn read(
    context: &ProxyContext,
    source: &FileSource,
    resource_type: &str,
) -> Result<DiscoveryResponse, Failed> {
    use legate_api::resources::LoadError;
    let loaded = legate_api::resources::load_file(
        Path::new(&source.path),
        resource_type,
        crate::supported::support(),
    )
    .map_err(|e| match e {
        LoadError::Unreadable(e) => Failed::Unreadable(e.to_string()),
        LoadError::Invalid(errors) => Failed::Invalid(join(errors.into_iter())),
    })?;
    if let Some(unknown) = loaded.unknown_field {
        context
            .store
            .scope("server.")
            .counter("dynamic_unknown_fields")
            .inc();
        tracing::warn!(
            "'{}': {unknown} (ignored, as Envoy ignores unknown fields in dynamic resources)",
            source.path
        );
    }
    Ok(loaded.response)
}

/// A bootstrap's listeners, applied whole or not at all.
fn static_update(listeners: Vec<Resource<ListenerConfig<NetworkFilter>>>) -> Update {
    Update {
        origin: Origin::Static,
        specs: listeners
            .into_iter()
            .map(|l| ListenerSpec {
                resource: l.bytes,
                config: l.config,
            })
            .collect(),
        version_info: String::new(),
        keep: HashSet::new(),
        atomic: true,
    }
}

fn join(errors: impl Iterator<Item = legate_api::ConfigError>) -> String {
    errors.map(|e| e.to_string()).collect::<Vec<_>>().join("\n")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The channel end on which the watcher reports changes.
pub type Changes = mpsc::UnboundedReceiver<Watched>;
