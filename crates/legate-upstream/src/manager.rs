//! The live clusters: each [`Cluster`] joins its compiled configuration with its hosts, load
//! balancer, stats, circuit breakers and per-worker connection pools; the [`ClusterManager`]
//! finds them by name and keeps `cluster_manager.*` stats.

use std::collections::HashMap;
use std::sync::Arc;

use legate_core::stats::{Counter, Gauge, ImportMode, Store};

use crate::breaker::Breakers;
use crate::cluster::ClusterConfig;
use crate::host::Host;
use crate::lb::LoadBalancer;
use crate::pool::HostPool;
use crate::stats::ClusterStats;

#[derive(Debug)]
pub struct Cluster {
    pub name: Arc<str>,
    pub config: ClusterConfig,
    pub hosts: Vec<Arc<Host>>,
    pub lb: LoadBalancer,
    pub stats: ClusterStats,
    /// `cluster.<name>.ssl.*`, for clusters with TLS.
    pub ssl: Option<legate_core::tls::SslStats>,
    /// Circuit breakers of the `DEFAULT` routing priority (the one routes use unless they set
    /// `priority: HIGH`, which Legate does not support yet).
    pub breakers: Breakers,
    pub high_breakers: Breakers,
    /// Connection pools, `[worker][host index]`: each worker uses only its own row.
    pools: Vec<Vec<HostPool>>,
}

impl Cluster {
    pub fn new(config: ClusterConfig, store: &Arc<Store>, workers: usize) -> Self {
        let scope = store.scope(&format!("cluster.{}.", config.stat_name));
        let mut hosts = Vec::new();
        for (priority, localities) in config.priorities.iter().enumerate() {
            for locality in localities {
                for e in &locality.endpoints {
                    hosts.push(Arc::new(Host::new(
                        hosts.len(),
                        e.address,
                        e.weight,
                        priority as u32,
                        locality.locality.clone(),
                    )));
                }
            }
        }
        let stats = ClusterStats::new(scope.clone());
        stats.membership_total.set(hosts.len() as u64);
        stats.membership_healthy.set(hosts.len() as u64);
        stats
            .max_host_weight
            .set(hosts.iter().map(|h| h.weight as u64).max().unwrap_or(0));
        stats.membership_change.inc();
        let pools = (0..workers.max(1))
            .map(|_| hosts.iter().map(|_| HostPool::default()).collect())
            .collect();
        Cluster {
            name: config.name.as_str().into(),
            lb: LoadBalancer::new(config.lb_policy, &hosts),
            breakers: Breakers::new(&config.default_limits, &scope, "default"),
            high_breakers: Breakers::new(&config.high_limits, &scope, "high"),
            ssl: config
                .tls
                .as_ref()
                .map(|_| legate_core::tls::SslStats::new(&scope)),
            stats,
            hosts,
            pools,
            config,
        }
    }

    /// The connection pool of `host` for worker `worker`.
    pub fn pool(&self, worker: usize, host: &Host) -> &HostPool {
        let row = &self.pools[worker.min(self.pools.len() - 1)];
        &row[host.index]
    }
}

#[derive(Debug)]
pub struct ClusterManager {
    clusters: Vec<Arc<Cluster>>,
    by_name: HashMap<Arc<str>, usize>,
    pub cluster_added: Counter,
    pub active_clusters: Gauge,
}

impl ClusterManager {
    pub fn new(configs: Vec<ClusterConfig>, store: &Arc<Store>, workers: usize) -> Self {
        let scope = store.scope("cluster_manager.");
        let cluster_added = scope.counter("cluster_added");
        let active_clusters = scope.gauge("active_clusters", ImportMode::NeverImport);
        // Registered so that the stat set matches Envoy's, though static clusters never change.
        for name in [
            "cluster_modified",
            "cluster_removed",
            "cluster_updated",
            "update_merge_cancelled",
            "update_out_of_merge_window",
        ] {
            scope.counter(name);
        }
        scope.gauge("warming_clusters", ImportMode::NeverImport);
        let clusters: Vec<Arc<Cluster>> = configs
            .into_iter()
            .map(|c| Arc::new(Cluster::new(c, store, workers)))
            .collect();
        cluster_added.add(clusters.len() as u64);
        active_clusters.set(clusters.len() as u64);
        let by_name = clusters
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        ClusterManager {
            clusters,
            by_name,
            cluster_added,
            active_clusters,
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.by_name.get(name).map(|&i| &self.clusters[i])
    }

    /// All clusters, in configuration order.
    pub fn clusters(&self) -> &[Arc<Cluster>] {
        &self.clusters
    }
}
