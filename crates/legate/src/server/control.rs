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
use legate_http::conn_manager::ProxyContext;
use legate_http::rds::{Accepted, RdsSubscription};
use legate_http::route::RouteTable;
use legate_net::listener::ListenerConfig;
use legate_net::sds::{CertificateSecret, tls_certificate};
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
    /// Sources already watched.
    watching: HashSet<FileSourceKey>,
    reload: Option<Reload>,
}

/// A watched file: what watches it (0 LDS/CDS/RDS, 1 EDS, 2 a certificate file, 3 SDS) and
/// the source.
type FileSourceKey = (u8, FileSource);

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
            watching: HashSet::new(),
            reload,
        }
    }

    /// Puts the bootstrap in force: static clusters (with their EDS endpoints), CDS, static
    /// listeners, LDS. A static listener that cannot start is fatal, as in Envoy.
    pub fn start(&mut self, config: Config) -> Result<(), String> {
        self.apply_static_clusters(config.clusters);
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
                let secrets = CertificateSecret::live()
                    .into_iter()
                    .filter(|s| s.source == source)
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
        let (added, modified, removed) = self.apply_static_clusters(config.clusters);
        self.warm();
        let applied = self.listeners.commit(prepared);
        tracing::info!(
            "caught SIGHUP: configuration reloaded (listeners {applied}; clusters added: {added}, modified: {modified}, removed: {removed})"
        );
    }

    /// Ends listener drains that are over.
    pub fn tick(&mut self) {
        self.listeners.tick();
    }

    /// Puts the bootstrap's clusters in force; returns how many were added, modified and
    /// removed.
    fn apply_static_clusters(
        &mut self,
        clusters: Vec<Resource<ClusterConfig>>,
    ) -> (usize, usize, usize) {
        let summary = apply_static_clusters(
            &self.context,
            &mut self.static_clusters,
            &mut self.eds,
            &mut self.watching,
            self.watcher.as_ref(),
            clusters,
        );
        self.refresh_cluster_dump();
        summary
    }

    fn watch(&mut self, what: Watched) {
        let source = match &what {
            Watched::Lds => self.sources.lds.clone(),
            Watched::Cds => self.sources.cds.clone(),
            Watched::Rds(s) | Watched::Eds(s) | Watched::Sds(s) => Some(s.clone()),
        };
        if let (Some(watcher), Some(source)) = (&self.watcher, source) {
            watch_source(watcher, &mut self.watching, &source, what);
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
                errors.push(format!(
                    "{path}: cluster '{}' is a static cluster and cannot be changed by CDS",
                    cluster.name
                ));
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
                Ok(mut config) => {
                    if let Some(eds) = &config.eds {
                        config.priorities = initial_endpoints(&self.context, eds);
                    }
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
        for name in &remove {
            self.eds.remove(name);
        }
        let eds_clusters: Vec<(String, EdsConfig)> = upsert
            .iter()
            .filter_map(|c| Some((c.name.clone(), c.eds.clone()?)))
            .collect();
        let summary = self.context.clusters.update(ClusterUpdate {
            upsert,
            remove,
            via_api: true,
        });
        for (name, eds) in eds_clusters {
            self.subscribe_eds(name, eds);
        }
        self.dynamic_clusters = records;
        if summary.added + summary.modified + summary.removed > 0 {
            tracing::info!(
                "cds: version '{}' applied (clusters added: {}, modified: {}, removed: {})",
                response.version_info,
                summary.added,
                summary.modified,
                summary.removed
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("\n"))
        }
    }

    fn subscribe_eds(&mut self, cluster: String, config: EdsConfig) {
        subscribe_eds(
            &self.context,
            &mut self.eds,
            &mut self.watching,
            self.watcher.as_ref(),
            cluster,
            config,
        );
    }

    fn load_eds(&mut self, source: &FileSource, clusters: &[String]) {
        let response = read(&self.context, source, CLUSTER_LOAD_ASSIGNMENT);
        for name in clusters {
            let Some(eds) = self.eds.get(name) else {
                continue;
            };
            let Some(cluster) = self.context.clusters.get(name) else {
                continue;
            };
            eds.stats.update_attempt.inc();
            let response = match &response {
                Ok(r) => r,
                Err(failed) => {
                    failed.count(&format!("eds (cluster '{name}')"), source, &eds.stats);
                    continue;
                }
            };
            match assignment(response, &eds.config.service_name) {
                Ok((version, priorities)) => {
                    cluster.set_endpoints(&priorities);
                    eds.stats.accepted(&version);
                }
                Err(e) => {
                    eds.stats.update_rejected.inc();
                    tracing::warn!(
                        "eds: update of cluster '{name}' from '{}' rejected, its endpoints stay: {e}",
                        source.path
                    );
                }
            }
        }
    }

    /// Puts in force what listeners about to start need and nobody has fed yet: their RDS
    /// tables and SDS certificates (their clusters are in force already).
    fn warm(&mut self) {
        self.feed_rds(unfed_subscriptions(&self.context));
        self.feed_secrets();
    }

    /// Loads the certificates of SDS secrets that have none yet, and watches their files.
    fn feed_secrets(&mut self) {
        let mut by_source: HashMap<FileSource, Vec<Arc<CertificateSecret>>> = HashMap::new();
        for s in CertificateSecret::live()
            .into_iter()
            .filter(|s| s.key().is_none())
        {
            by_source.entry(s.source.clone()).or_default().push(s);
        }
        for (source, secrets) in by_source {
            self.watch(Watched::Sds(source.clone()));
            self.load_secrets(&source, secrets);
        }
    }

    /// Reads `source` and installs the certificate of each of `secrets`.
    fn load_secrets(&mut self, source: &FileSource, secrets: Vec<Arc<CertificateSecret>>) {
        let response = read(&self.context, source, SECRET);
        for secret in secrets {
            let stats = SubscriptionStats::new(
                &self.context.store.scope(&format!("sds.{}.", secret.name)),
                SubscriptionKind::Lds,
            );
            stats.update_attempt.inc();
            let response = match &response {
                Ok(r) => r,
                Err(failed) => {
                    failed.count(&format!("sds (secret '{}')", secret.name), source, &stats);
                    continue;
                }
            };
            let certificate = response
                .resources
                .iter()
                .filter_map(|any| Secret::decode(any.value.as_slice()).ok())
                .find(|s| s.name == secret.name)
                .ok_or_else(|| format!("no secret named '{}'", secret.name))
                .and_then(|s| {
                    tls_certificate(s)
                        .ok_or_else(|| format!("secret '{}' is not a tls_certificate", secret.name))
                })
                .and_then(|c| secret.install(&c));
            match certificate {
                Ok(()) => {
                    stats.accepted(&response.version_info);
                    // A certificate file replaced by rename reloads the secret too.
                    for file in secret.files() {
                        if let Some(watcher) = &self.watcher
                            && self.watching.insert((
                                2,
                                FileSource {
                                    path: file.display().to_string(),
                                    watched_directory: None,
                                },
                            ))
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
                        secret.name,
                        source.path,
                        if secret.key().is_some() {
                            ", the certificate in force stays"
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
                let (i, any) = r
                    .resources
                    .iter()
                    .enumerate()
                    .find(|(_, any)| {
                        RouteConfiguration::decode(any.value.as_slice())
                            .is_ok_and(|rc| &rc.name == name)
                    })
                    .ok_or_else(|| format!("no route configuration named '{name}'"))?;
                let rc = RouteConfiguration::decode(any.value.as_slice())
                    .map_err(|e| format!("resources[{i}]: unable to decode: {e}"))?;
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

/// Applies the bootstrap's clusters: new and changed ones in, missing ones out (static only).
fn apply_static_clusters(
    context: &ProxyContext,
    current: &mut HashMap<String, Vec<u8>>,
    eds: &mut HashMap<String, Eds>,
    watching: &mut HashSet<FileSourceKey>,
    watcher: Option<&FileWatcher<Watched>>,
    clusters: Vec<Resource<ClusterConfig>>,
) -> (usize, usize, usize) {
    let names: HashSet<String> = clusters.iter().map(|c| c.config.name.clone()).collect();
    let remove: Vec<String> = current
        .keys()
        .filter(|n| !names.contains(*n))
        .cloned()
        .collect();
    let mut upsert = Vec::new();
    let mut records = HashMap::new();
    for Resource { bytes, mut config } in clusters {
        let unchanged = current.get(&config.name) == Some(&bytes);
        records.insert(config.name.clone(), bytes);
        if unchanged {
            continue;
        }
        if let Some(e) = &config.eds {
            config.priorities = initial_endpoints(context, e);
        }
        upsert.push(config);
    }
    for name in &remove {
        eds.remove(name);
    }
    let eds_clusters: Vec<(String, EdsConfig)> = upsert
        .iter()
        .filter_map(|c| Some((c.name.clone(), c.eds.clone()?)))
        .collect();
    let summary = context.clusters.update(ClusterUpdate {
        upsert,
        remove,
        via_api: false,
    });
    for (name, config) in eds_clusters {
        subscribe_eds(context, eds, watching, watcher, name, config);
    }
    *current = records;
    (summary.added, summary.modified, summary.removed)
}

/// Records an EDS cluster's subscription (its stats count the first fetch, made when the
/// cluster was built) and watches its source.
fn subscribe_eds(
    context: &ProxyContext,
    eds: &mut HashMap<String, Eds>,
    watching: &mut HashSet<FileSourceKey>,
    watcher: Option<&FileWatcher<Watched>>,
    cluster: String,
    config: EdsConfig,
) {
    let stats = SubscriptionStats::new(
        &context.store.scope(&format!("cluster.{cluster}.")),
        SubscriptionKind::Eds,
    );
    stats.update_attempt.inc();
    match read(context, &config.source, CLUSTER_LOAD_ASSIGNMENT) {
        Ok(r) => match assignment(&r, &config.service_name) {
            Ok((version, _)) => stats.accepted(&version),
            Err(_) => stats.update_rejected.inc(),
        },
        Err(Failed::Unreadable(_)) => stats.update_failure.inc(),
        Err(Failed::Invalid(_)) => stats.update_rejected.inc(),
    }
    if let Some(w) = watcher {
        watch_source(
            w,
            watching,
            &config.source,
            Watched::Eds(config.source.clone()),
        );
    }
    eds.insert(cluster, Eds { config, stats });
}

/// A new EDS cluster's endpoints, read before the cluster is put in force (Envoy warms an EDS
/// cluster until its first assignment).
fn initial_endpoints(context: &ProxyContext, eds: &EdsConfig) -> Vec<Vec<LocalityEndpoints>> {
    let read = read(context, &eds.source, CLUSTER_LOAD_ASSIGNMENT).map_err(|f| f.to_string());
    match read.and_then(|r| assignment(&r, &eds.service_name)) {
        Ok((_, priorities)) => priorities,
        Err(e) => {
            tracing::warn!(
                "eds: no endpoints for '{}' from '{}' yet: {e}",
                eds.service_name,
                eds.source.path
            );
            Vec::new()
        }
    }
}

/// The endpoints for `service_name` in an EDS response, with the response's version.
fn assignment(
    response: &DiscoveryResponse,
    service_name: &str,
) -> Result<(String, Vec<Vec<LocalityEndpoints>>), String> {
    for (i, any) in response.resources.iter().enumerate() {
        let la = ClusterLoadAssignment::decode(any.value.as_slice())
            .map_err(|e| format!("resources[{i}]: unable to decode: {e}"))?;
        if la.cluster_name == service_name {
            let priorities = compile_endpoints(&la).map_err(|errors| {
                join(
                    errors
                        .into_iter()
                        .map(|e| e.within(&format!("resources[{i}]"))),
                )
            })?;
            return Ok((response.version_info.clone(), priorities));
        }
    }
    Err(format!("no ClusterLoadAssignment for '{service_name}'"))
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

fn watch_source(
    watcher: &FileWatcher<Watched>,
    watching: &mut HashSet<FileSourceKey>,
    source: &FileSource,
    what: Watched,
) {
    let kind = match what {
        Watched::Eds(_) => 1,
        Watched::Sds(_) => 3,
        _ => 0,
    };
    let key = (kind, source.clone());
    if !watching.insert(key) {
        return;
    }
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
