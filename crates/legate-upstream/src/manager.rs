//! The live clusters: each [`Cluster`] joins its compiled configuration with its hosts, load
//! balancer, stats and circuit breakers; the [`ClusterManager`] finds them by name and keeps
//! `cluster_manager.*` stats.
//!
//! Both change while traffic flows, by snapshot swap: the manager publishes an immutable
//! [`ClusterSet`] and a request takes the cluster it needs from the set in force when it
//! starts, so a replaced or removed cluster finishes the requests it has (on its old hosts)
//! and is freed with the last of them. A cluster's membership (hosts and load balancer) is a
//! snapshot of its own, replaced by endpoint updates (EDS); a host that stays keeps its
//! connection pools.

use std::sync::Arc;

use arc_swap::ArcSwap;
use legate_core::stats::{Counter, Gauge, ImportMode, Store};

use crate::breaker::Breakers;
use crate::cluster::{ClusterConfig, LocalityEndpoints};
use crate::host::Host;
use crate::lb::LoadBalancer;
use crate::original_dst::{LbContext, OriginalDstHosts};
use crate::pool::HostPool;
use crate::stats::ClusterStats;

/// A cluster's hosts and the load balancer over them, replaced as a whole.
#[derive(Debug)]
pub struct Membership {
    pub hosts: Vec<Arc<Host>>,
    pub lb: LoadBalancer,
}

#[derive(Debug)]
pub struct Cluster {
    pub name: Arc<str>,
    pub config: ClusterConfig,
    pub stats: ClusterStats,
    /// `cluster.<name>.ssl.*`, for clusters with TLS (boxed: most clusters have none).
    pub ssl: Option<Box<legate_core::tls::SslStats>>,
    /// Circuit breakers of the `DEFAULT` routing priority (the one routes use unless they set
    /// `priority: HIGH`, which Legate does not support yet).
    pub breakers: Breakers,
    pub high_breakers: Breakers,
    /// Added by CDS (`/clusters` shows `added_via_api`).
    pub added_via_api: bool,
    membership: ArcSwap<Membership>,
    workers: usize,
    /// `type: ORIGINAL_DST`: the hosts made for the destinations seen.
    original_dst: Option<Box<OriginalDstHosts>>,
}

impl Cluster {
    pub fn new(config: ClusterConfig, store: &Arc<Store>, workers: usize) -> Self {
        Cluster::replacing(config, None, store, workers)
    }

    /// A cluster that replaces `previous`: when their connections are compatible, hosts that
    /// stay keep their pools (a change of, say, `connect_timeout` or the load-balancing policy
    /// does not reopen every upstream connection).
    fn replacing(
        config: ClusterConfig,
        previous: Option<&Cluster>,
        store: &Arc<Store>,
        workers: usize,
    ) -> Self {
        let scope = store.scope(&format!("cluster.{}.", config.stat_name()));
        let stats = ClusterStats::new(scope.clone());
        let kept = previous
            .filter(|p| p.config.connections_compatible(&config))
            .map(|p| p.membership());
        let kept_hosts = kept.as_ref().map_or(&[][..], |m| &m.hosts[..]);
        let membership = build_membership(&config, &config.priorities, kept_hosts, workers);
        // Envoy's ORIGINAL_DST cluster starts without a host set: its first membership change
        // is its first host.
        count_membership(&stats, &membership, config.original_dst.is_none());
        let t = stats.traffic;
        let host_invalid = t.original_dst_host_invalid();
        Cluster {
            name: config.name.as_str().into(),
            breakers: Breakers::new(
                &config.default_limits,
                [
                    t.cb_default_cx_open(),
                    t.cb_default_rq_pending_open(),
                    t.cb_default_rq_open(),
                    t.cb_default_rq_retry_open(),
                ],
                &scope,
                "default",
            ),
            high_breakers: Breakers::new(
                &config.high_limits,
                [
                    t.cb_high_cx_open(),
                    t.cb_high_rq_pending_open(),
                    t.cb_high_rq_open(),
                    t.cb_high_rq_retry_open(),
                ],
                &scope,
                "high",
            ),
            ssl: config.tls.as_ref().map(|tls| {
                let ssl = legate_core::tls::SslStats::new(&scope);
                tls.attach_stats(&ssl);
                Box::new(ssl)
            }),
            stats,
            added_via_api: false,
            membership: ArcSwap::from_pointee(membership),
            workers,
            original_dst: config
                .original_dst
                .as_deref()
                .map(|c| Box::new(OriginalDstHosts::new(c.clone(), host_invalid))),
            config,
        }
    }

    /// The hosts in force now.
    pub fn membership(&self) -> Arc<Membership> {
        self.membership.load_full()
    }

    /// The host for the next request (`random`: a fresh random number, or for RING_HASH and
    /// MAGLEV the request's hash key when it has one), or `None` when the cluster has no host.
    pub fn choose_host(&self, random: u64) -> Option<Arc<Host>> {
        self.membership.load().lb.choose(random).cloned()
    }

    /// Whether the load balancer uses a request's hash key (RING_HASH, MAGLEV): only then is
    /// a `hash_policy` evaluated, as in Envoy (where a cookie policy's `Set-Cookie` follows).
    pub fn uses_hash(&self) -> bool {
        matches!(
            self.config.lb_policy,
            crate::LbPolicy::RingHash(_) | crate::LbPolicy::Maglev(_)
        )
    }

    /// The host for a request or connection: [`Cluster::choose_host`], except in
    /// `ORIGINAL_DST` clusters, where `ctx` names it (and `None` when it does not).
    pub fn choose_host_for(&self, random: u64, ctx: &LbContext<'_>) -> Option<Arc<Host>> {
        let Some(od) = &self.original_dst else {
            return self.choose_host(random);
        };
        let Some(dst) = od.destination(ctx) else {
            tracing::debug!(
                "original_dst_load_balancer: no downstream connection or no original_dst (cluster '{}')",
                self.name
            );
            return None;
        };
        Some(od.host(dst, self.workers, |hosts| self.set_hosts(hosts)))
    }

    /// `ORIGINAL_DST`: removes the hosts unused since the last sweep (every
    /// `cleanup_interval`).
    pub fn sweep_original_dst(&self) {
        if let Some(od) = &self.original_dst {
            od.sweep(|hosts| self.set_hosts(hosts));
        }
    }

    /// The sweep interval of an `ORIGINAL_DST` cluster.
    pub fn original_dst_cleanup_interval(&self) -> Option<std::time::Duration> {
        self.original_dst
            .as_ref()
            .map(|od| od.config.cleanup_interval)
    }

    fn set_hosts(&self, hosts: Vec<Arc<Host>>) {
        let membership = Membership {
            lb: LoadBalancer::new(self.config.lb_policy, &hosts),
            hosts,
        };
        count_membership(&self.stats, &membership, true);
        self.membership.store(Arc::new(membership));
    }

    /// Replaces the hosts (an endpoint update). Hosts that stay, with the same weight,
    /// priority and locality, are kept with their connections and counters; requests in
    /// flight to removed hosts finish on them.
    pub fn set_endpoints(&self, priorities: &[Vec<LocalityEndpoints>]) {
        let old = self.membership.load_full();
        let membership = build_membership(&self.config, priorities, &old.hosts, self.workers);
        count_membership(&self.stats, &membership, true);
        self.membership.store(Arc::new(membership));
    }

    /// The connection pool of `host` for worker `worker`.
    pub fn pool<'h>(&self, worker: usize, host: &'h Host) -> &'h HostPool {
        host.pool(worker)
    }
}

fn build_membership(
    config: &ClusterConfig,
    priorities: &[Vec<LocalityEndpoints>],
    previous: &[Arc<Host>],
    workers: usize,
) -> Membership {
    let mut hosts = Vec::new();
    for (priority, localities) in priorities.iter().enumerate() {
        for locality in localities {
            for e in &locality.endpoints {
                let priority = priority as u32;
                let kept = previous.iter().find(|h| {
                    h.is(e.address, e.weight, priority, &locality.locality) && h.pipe == e.pipe
                });
                hosts.push(match kept {
                    Some(h) => h.clone(),
                    None => Arc::new(
                        Host::new(
                            e.address,
                            e.weight,
                            priority,
                            locality.locality.clone(),
                            workers,
                        )
                        .with_pipe(e.pipe.clone()),
                    ),
                });
            }
        }
    }
    Membership {
        lb: LoadBalancer::new(config.lb_policy, &hosts),
        hosts,
    }
}

/// Sets the membership gauges; `changed` counts a `membership_change`.
fn count_membership(stats: &ClusterStats, membership: &Membership, changed: bool) {
    let hosts = &membership.hosts;
    count_hash_tables(stats, membership);
    stats.traffic.membership_total().set(hosts.len() as u64);
    stats.traffic.membership_healthy().set(hosts.len() as u64);
    stats
        .traffic
        .max_host_weight()
        .set(hosts.iter().map(|h| h.weight as u64).max().unwrap_or(0));
    if changed {
        stats.traffic.membership_change().inc();
    }
}

/// `ring_hash_lb.*` and `maglev_lb.*`: the sizes of the rings or tables just built, as Envoy
/// reports them (it leaves the gauges as they were when there are no hosts to build from).
fn count_hash_tables(stats: &ClusterStats, membership: &Membership) {
    let names: &[&str] = match membership.lb.policy() {
        crate::LbPolicy::RingHash(_) => &[
            "ring_hash_lb.size",
            "ring_hash_lb.min_hashes_per_host",
            "ring_hash_lb.max_hashes_per_host",
        ],
        crate::LbPolicy::Maglev(_) => &[
            "",
            "maglev_lb.min_entries_per_host",
            "maglev_lb.max_entries_per_host",
        ],
        _ => return,
    };
    let table = membership.lb.table_stats();
    let values = table.map(|t| [t.size, t.min_per_host, t.max_per_host]);
    for (i, name) in names.iter().enumerate().filter(|(_, n)| !n.is_empty()) {
        let gauge = stats.scope.gauge(name, ImportMode::Accumulate);
        if let Some(v) = values {
            gauge.set(v[i]);
        }
    }
}

/// The clusters in force at one moment, by name and in configuration order.
#[derive(Debug, Default)]
pub struct ClusterSet {
    clusters: Vec<Arc<Cluster>>,
    /// Fx-hashed: a name is looked up on every request, and names come from configuration.
    by_name: rustc_hash::FxHashMap<Arc<str>, usize>,
}

impl ClusterSet {
    fn new(clusters: Vec<Arc<Cluster>>) -> Self {
        let by_name = clusters
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        ClusterSet { clusters, by_name }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.by_name.get(name).map(|&i| &self.clusters[i])
    }

    pub fn as_slice(&self) -> &[Arc<Cluster>] {
        &self.clusters
    }

    pub fn len(&self) -> usize {
        self.clusters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty()
    }
}

/// A change to the cluster set, applied in one swap.
#[derive(Debug, Default)]
pub struct ClusterUpdate {
    /// New clusters, and replacements of clusters with the same name.
    pub upsert: Vec<ClusterConfig>,
    pub remove: Vec<String>,
    /// The clusters come from CDS or a reload (`added_via_api`).
    pub via_api: bool,
}

/// What an update did, for the caller's log line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UpdateSummary {
    pub added: usize,
    pub modified: usize,
    pub removed: usize,
}

#[derive(Debug)]
pub struct ClusterManager {
    set: ArcSwap<ClusterSet>,
    store: Arc<Store>,
    workers: usize,
    pub cluster_added: Counter,
    pub cluster_modified: Counter,
    pub cluster_removed: Counter,
    pub active_clusters: Gauge,
}

impl ClusterManager {
    pub fn new(configs: Vec<ClusterConfig>, store: &Arc<Store>, workers: usize) -> Self {
        let scope = store.scope("cluster_manager.");
        for name in [
            "cluster_updated",
            "cluster_updated_via_merge",
            "update_merge_cancelled",
            "update_out_of_merge_window",
        ] {
            scope.counter(name);
        }
        scope.gauge("warming_clusters", ImportMode::NeverImport);
        let manager = ClusterManager {
            set: ArcSwap::from_pointee(ClusterSet::default()),
            store: store.clone(),
            workers,
            cluster_added: scope.counter("cluster_added"),
            cluster_modified: scope.counter("cluster_modified"),
            cluster_removed: scope.counter("cluster_removed"),
            active_clusters: scope.gauge("active_clusters", ImportMode::NeverImport),
        };
        manager.update(ClusterUpdate {
            upsert: configs,
            ..Default::default()
        });
        manager
    }

    /// The cluster named `name` in the set in force now.
    pub fn get(&self, name: &str) -> Option<Arc<Cluster>> {
        self.set.load().get(name).cloned()
    }

    /// The set in force now.
    pub fn clusters(&self) -> Arc<ClusterSet> {
        self.set.load_full()
    }

    /// Applies `update` in one swap: replaced clusters get fresh objects (new pools, the
    /// same stats), the others are kept as they are. Callers on one control thread only.
    pub fn update(&self, update: ClusterUpdate) -> UpdateSummary {
        let current = self.set.load_full();
        let mut clusters: Vec<Option<Arc<Cluster>>> =
            current.clusters.iter().cloned().map(Some).collect();
        let mut summary = UpdateSummary::default();
        let mut index = current.by_name.clone();
        for name in &update.remove {
            if let Some(i) = index.remove(name.as_str()) {
                clusters[i] = None;
                summary.removed += 1;
            }
        }
        for config in update.upsert {
            let previous = current.get(&config.name);
            let mut cluster =
                Cluster::replacing(config, previous.map(|c| &**c), &self.store, self.workers);
            cluster.added_via_api = update.via_api;
            let cluster = Arc::new(cluster);
            spawn_original_dst_sweep(&cluster);
            match index.get(&cluster.name) {
                Some(&i) => {
                    clusters[i] = Some(cluster);
                    summary.modified += 1;
                }
                None => {
                    index.insert(cluster.name.clone(), clusters.len());
                    clusters.push(Some(cluster));
                    summary.added += 1;
                }
            }
        }
        let set = ClusterSet::new(clusters.into_iter().flatten().collect());
        self.cluster_added.add(summary.added as u64);
        self.cluster_modified.add(summary.modified as u64);
        self.cluster_removed.add(summary.removed as u64);
        self.active_clusters.set(set.len() as u64);
        self.set.store(Arc::new(set));
        summary
    }
}

/// Sweeps an `ORIGINAL_DST` cluster's hosts every `cleanup_interval` on the control runtime,
/// for as long as the cluster lives.
fn spawn_original_dst_sweep(cluster: &Arc<Cluster>) {
    let Some(interval) = cluster.original_dst_cleanup_interval() else {
        return;
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(
            "cluster '{}': no runtime to sweep its original destination hosts",
            cluster.name
        );
        return;
    };
    let weak = Arc::downgrade(cluster);
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let Some(cluster) = weak.upgrade() else { break };
            cluster.sweep_original_dst();
        }
    });
}
