//! The listener manager: the set of listeners in force, changed by whole updates (the
//! bootstrap's static listeners at start-up and on SIGHUP, LDS) with Envoy's semantics:
//!
//! * an unchanged listener (the same proto, byte for byte) keeps its sockets and connections;
//! * a new or changed listener is built (filter chains, access logs, sockets) before anything
//!   changes; a changed listener on the same address takes over the old one's sockets (the
//!   same kernel sockets, so no connection waiting in the backlog is lost), and the old
//!   version stops accepting and drains its connections for `--drain-time-s`;
//! * a removed listener closes its sockets and drains;
//! * an update that cannot be built (a bad filter, an address that cannot be bound) changes
//!   nothing.
//!
//! It runs on the control thread; workers get their part through their command channels.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use legate_admin::{ConfigDumpSource, DynamicListener, DynamicResource, ListenerInfo};
use legate_api::pb::envoy::config::listener::v3::Listener;
use legate_core::stats::{Counter, Gauge, ImportMode, Scope, Store};
use legate_http::conn_manager::ProxyContext;
use legate_net::listener::ListenerConfig;
use legate_net::listener_filter::ListenerFilterStats;
use tokio::sync::mpsc;

use super::l4::ChainFilter;
use super::listener::{self, ListenSocket};
use legate_core::access_log::AccessLogger;
use legate_net::rbac::NetworkRbac;
use legate_net::udp_proxy::{UdpListenerConfig, UdpProxy, UdpProxyStats};

use super::udp::ClusterUpstreams;

use super::worker::{ListenerInstance, ListenerStats, ServingListener, WorkerCommand};
use crate::config::NetworkFilter;

/// Where a listener comes from: each source replaces only its own listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The bootstrap's `static_resources` (at start-up, and again on SIGHUP).
    Static,
    /// LDS.
    Dynamic,
}

/// One listener of an update.
pub struct ListenerSpec {
    /// The `Listener` proto, encoded: equal bytes mean an unchanged listener.
    pub resource: Vec<u8>,
    pub config: ListenerConfig<NetworkFilter>,
}

/// A listener as `/config_dump` and `/listeners` show it.
#[derive(Clone, Debug)]
pub struct ListenerView {
    pub name: String,
    pub address: SocketAddr,
    /// A unix domain socket listener's path (`address` is then not bound).
    pub pipe: Option<String>,
    pub origin: Origin,
    pub resource: Vec<u8>,
    pub version_info: String,
    pub last_updated: SystemTime,
    pub draining: bool,
}

impl ListenerView {
    /// The address as Envoy prints it: a pipe's path, or `ip:port`.
    pub fn shown(&self) -> String {
        self.pipe
            .clone()
            .unwrap_or_else(|| self.address.to_string())
    }
}

struct Active {
    view: ListenerView,
    /// The configured address (port 0 stays 0): a change of it means new sockets.
    configured: SocketAddr,
    ipv4_compat: bool,
    /// The configured unix domain socket (`pipe`), if any: a change of it means new sockets.
    pipe: Option<legate_core::address::Pipe>,
    /// One socket per worker; each worker accepts on a duplicate of its own.
    sockets: Vec<ListenSocket>,
    /// The duplicates the workers take when the listener starts.
    handoff: Vec<ListenSocket>,
    /// A UDP listener's sockets (one per worker) and their duplicates for the workers, in
    /// place of `sockets` and `handoff`.
    udp_sockets: Vec<std::net::UdpSocket>,
    udp_handoff: Vec<std::net::UdpSocket>,
    /// A UDP listener's proxy.
    udp: Option<Arc<UdpProxy>>,
    instance: Arc<ListenerInstance>,
    serving: Arc<ServingListener>,
}

struct Draining {
    view: ListenerView,
    instance: Arc<ListenerInstance>,
    deadline: Instant,
}

/// An update of one origin's listeners.
pub struct Update {
    pub origin: Origin,
    pub specs: Vec<ListenerSpec>,
    pub version_info: String,
    /// Listeners whose new version could not be compiled: they stay as they are (those that
    /// fail to build are added to it).
    pub keep: HashSet<String>,
    /// Any failure rejects the whole update.
    pub atomic: bool,
}

/// An update built and checked, not yet in force.
pub struct Prepared {
    origin: Origin,
    names: HashSet<String>,
    keep: HashSet<String>,
    /// New and changed listeners, each with the index of the version it replaces.
    built: Vec<(Option<usize>, Active)>,
    errors: Vec<String>,
}

/// What an update did.
#[derive(Debug, Default)]
pub struct Applied {
    pub added: Vec<String>,
    pub modified: Vec<String>,
    pub removed: Vec<String>,
    /// The listeners that could not be built (a non-atomic update applies the others).
    pub errors: Vec<String>,
}

impl Applied {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.modified.is_empty() && self.removed.is_empty()
    }
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |names: &[String]| {
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        };
        write!(
            f,
            "added: {}; modified: {}; removed: {}",
            list(&self.added),
            list(&self.modified),
            list(&self.removed)
        )
    }
}

struct ManagerStats {
    listener_added: Counter,
    listener_modified: Counter,
    listener_in_place_updated: Counter,
    listener_removed: Counter,
    listener_stopped: Counter,
    listener_create_success: Counter,
    listener_create_failure: Counter,
    total_listeners_active: Gauge,
    total_listeners_warming: Gauge,
    total_listeners_draining: Gauge,
}

impl ManagerStats {
    fn new(store: &Arc<Store>) -> Self {
        let s = store.scope("listener_manager.");
        s.gauge("total_filter_chains_draining", ImportMode::NeverImport);
        s.gauge("workers_started", ImportMode::NeverImport).set(1);
        let g = |n: &str| s.gauge(n, ImportMode::NeverImport);
        ManagerStats {
            listener_added: s.counter("listener_added"),
            listener_modified: s.counter("listener_modified"),
            listener_in_place_updated: s.counter("listener_in_place_updated"),
            listener_removed: s.counter("listener_removed"),
            listener_stopped: s.counter("listener_stopped"),
            listener_create_success: s.counter("listener_create_success"),
            listener_create_failure: s.counter("listener_create_failure"),
            total_listeners_active: g("total_listeners_active"),
            total_listeners_warming: g("total_listeners_warming"),
            total_listeners_draining: g("total_listeners_draining"),
        }
    }
}

pub struct ListenerManager {
    workers: Vec<mpsc::UnboundedSender<WorkerCommand>>,
    context: Arc<ProxyContext>,
    store: Arc<Store>,
    drain_time: Duration,
    active: Vec<Active>,
    draining: Vec<Draining>,
    stats: ManagerStats,
    /// What the admin server shows (`/listeners`, `/config_dump`), refreshed after every
    /// change.
    admin_listeners: Arc<Mutex<Vec<ListenerInfo>>>,
    dump: Arc<Mutex<ConfigDumpSource>>,
    /// `drain_all` ran.
    stopped: bool,
}

impl ListenerManager {
    pub fn new(
        workers: Vec<mpsc::UnboundedSender<WorkerCommand>>,
        context: Arc<ProxyContext>,
        drain_time: Duration,
        dump: Arc<Mutex<ConfigDumpSource>>,
    ) -> Self {
        let store = context.store.clone();
        ListenerManager {
            workers,
            stats: ManagerStats::new(&store),
            store,
            context,
            drain_time,
            active: Vec::new(),
            draining: Vec::new(),
            admin_listeners: Arc::default(),
            dump,
            stopped: false,
        }
    }

    /// The listeners in force, as `/listeners` shows them.
    pub fn admin_listeners(&self) -> Arc<Mutex<Vec<ListenerInfo>>> {
        self.admin_listeners.clone()
    }

    /// The first half of making `update.origin`'s listeners those of `update.specs`: builds
    /// every new and changed listener (filter chains, sockets) and changes nothing. Between
    /// this and [`ListenerManager::commit`] the caller puts in force what the new listeners
    /// need (their clusters, RDS tables, certificates). A listener that cannot be built fails
    /// the whole update when it is `atomic` (SIGHUP); otherwise (LDS, as Envoy) it keeps its
    /// current version, the others apply, and its error is reported.
    pub fn prepare(&mut self, update: Update) -> Result<Prepared, String> {
        if self.stopped {
            return Err(
                "the listeners are stopped (/drain_listeners or shutdown): no listener can be added or changed"
                    .into(),
            );
        }
        let Update {
            origin,
            specs,
            version_info,
            mut keep,
            atomic,
        } = update;
        let mut errors = Vec::new();
        let mut fail = |keep: &mut HashSet<String>, name: &str, error: String| {
            keep.insert(name.to_owned());
            errors.push(error);
        };
        let names: HashSet<String> = specs.iter().map(|s| s.config.name.clone()).collect();
        // Build every new and changed listener; keep the unchanged ones as they are.
        let mut built: Vec<(Option<usize>, Active)> = Vec::new();
        for spec in specs {
            let name = spec.config.name.clone();
            if let Some(other) = self
                .active
                .iter()
                .find(|a| a.view.name == name && a.view.origin != origin)
            {
                let kind = match other.view.origin {
                    Origin::Static => "static",
                    Origin::Dynamic => "dynamic",
                };
                fail(
                    &mut keep,
                    &name,
                    format!("listener '{name}' already exists as a {kind} listener"),
                );
                continue;
            }
            let current = self
                .active
                .iter()
                .position(|a| a.view.name == name && a.view.origin == origin);
            if let Some(i) = current
                && self.active[i].view.resource == spec.resource
            {
                continue;
            }
            match self.build(origin, spec, current, &version_info) {
                Ok(b) => built.push((current, b)),
                Err(e) => {
                    self.stats.listener_create_failure.inc();
                    fail(&mut keep, &name, e);
                }
            }
        }
        // Addresses must not collide with a listener that stays (Envoy refuses two listeners
        // on one address).
        let stays = |i: usize, a: &Active, built: &[(Option<usize>, Active)]| {
            let replaced = built.iter().any(|(c, _)| *c == Some(i));
            let removed = a.view.origin == origin
                && !names.contains(&a.view.name)
                && !keep.contains(&a.view.name);
            !replaced && !removed
        };
        let mut clashes = Vec::new();
        for (k, (_, b)) in built.iter().enumerate() {
            if b.configured.port() == 0 {
                continue;
            }
            // Against the listeners that stay, and the update's own earlier ones.
            let clash = self
                .active
                .iter()
                .enumerate()
                .find(|(i, a)| {
                    stays(*i, a, &built)
                        && a.configured == b.configured
                        && a.udp.is_some() == b.udp.is_some()
                        && a.view.name != b.view.name
                })
                .map(|(_, a)| a.view.name.clone())
                .or_else(|| {
                    built[..k]
                        .iter()
                        .find(|(_, earlier)| {
                            earlier.configured == b.configured
                                && earlier.udp.is_some() == b.udp.is_some()
                        })
                        .map(|(_, earlier)| earlier.view.name.clone())
                });
            if let Some(other) = clash {
                clashes.push((
                    k,
                    format!(
                        "error adding listener '{}': listener '{other}' has duplicate address '{}' as existing listener",
                        b.view.name, b.configured
                    ),
                ));
            }
        }
        for (k, error) in clashes.into_iter().rev() {
            let (_, b) = built.remove(k);
            fail(&mut keep, &b.view.name, error);
        }
        if atomic && !errors.is_empty() {
            return Err(errors.join("\n"));
        }
        Ok(Prepared {
            origin,
            names,
            keep,
            built,
            errors,
        })
    }

    /// Starts the listeners `prepare` built, and drains those they replace or that the
    /// update removed.
    pub fn commit(&mut self, prepared: Prepared) -> Applied {
        let Prepared {
            origin,
            names,
            keep,
            built,
            errors,
        } = prepared;
        let mut applied = Applied::default();
        let now = Instant::now();
        let mut removed_indexes: Vec<usize> = self
            .active
            .iter()
            .enumerate()
            .filter(|(_, a)| {
                a.view.origin == origin
                    && !names.contains(&a.view.name)
                    && !keep.contains(&a.view.name)
            })
            .map(|(i, _)| i)
            .collect();
        for (current, mut new) in built {
            match current {
                Some(i) => {
                    self.stats.listener_modified.inc();
                    if only_filter_chains_differ(&self.active[i].view.resource, &new.view.resource)
                    {
                        // Envoy updates such a listener in place, and the listener keeps the
                        // version it had.
                        self.stats.listener_in_place_updated.inc();
                        new.view.version_info = self.active[i].view.version_info.clone();
                    }
                    self.start(&mut new);
                    let old = std::mem::replace(&mut self.active[i], new);
                    applied.modified.push(old.view.name.clone());
                    self.retire(old, now);
                }
                None => {
                    self.start(&mut new);
                    applied.added.push(new.view.name.clone());
                    self.stats.listener_added.inc();
                    self.active.push(new);
                }
            }
        }
        removed_indexes.sort_unstable();
        for i in removed_indexes.into_iter().rev() {
            let old = self.active.remove(i);
            applied.removed.push(old.view.name.clone());
            self.stats.listener_removed.inc();
            self.retire(old, now);
        }
        self.publish();
        applied.errors = errors;
        applied
    }

    /// Builds a listener: its filter chains, and its sockets (the current version's, when the
    /// address is the same).
    fn build(
        &self,
        origin: Origin,
        spec: ListenerSpec,
        current: Option<usize>,
        version_info: &str,
    ) -> Result<Active, String> {
        let l = spec.config;
        let mut chains = Vec::with_capacity(l.filter_chains.len());
        let mut rbac = Vec::with_capacity(l.filter_chains.len());
        let root = self.store.scope("");
        for chain in &l.filter_chains {
            chains.push(
                ChainFilter::new(&chain.filters, &self.context, &l.stat_prefix)
                    .map_err(|e| format!("listener '{}': {e}", l.name))?,
            );
            rbac.push(
                chain
                    .filters
                    .iter()
                    .filter_map(|f| match f {
                        NetworkFilter::Rbac(c) => Some(NetworkRbac::new(c.clone(), &root)),
                        _ => None,
                    })
                    .collect(),
            );
        }
        let workers = self.workers.len();
        let same_address = current.map(|i| &self.active[i]).filter(|a| {
            a.configured == l.address
                && a.pipe == l.pipe
                && a.ipv4_compat == l.ipv4_compat
                && a.udp.is_some() == l.udp.is_some()
        });
        let share_error =
            |e: std::io::Error| format!("listener '{}': cannot share its socket: {e}", l.name);
        let (udp_sockets, udp_address) = match (&l.udp, same_address) {
            (None, _) => (Vec::new(), None),
            (Some(_), Some(a)) => (
                a.udp_sockets
                    .iter()
                    .map(|s| s.try_clone())
                    .collect::<std::io::Result<Vec<_>>>()
                    .map_err(share_error)?,
                Some(a.view.address),
            ),
            (Some(_), None) => {
                let (sockets, bound) = listener::bind_udp(l.address, l.ipv4_compat, workers)
                    .map_err(|e| {
                        format!("cannot bind '{}' for listener '{}': {e}", l.address, l.name)
                    })?;
                (sockets, Some(bound))
            }
        };
        let udp_handoff = udp_sockets
            .iter()
            .map(|s| s.try_clone())
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(share_error)?;
        let (sockets, address) = match (udp_address, same_address) {
            (Some(bound), _) => (Vec::new(), bound),
            (None, Some(a)) => {
                let sockets = a
                    .sockets
                    .iter()
                    .map(|s| s.try_clone())
                    .collect::<std::io::Result<Vec<_>>>()
                    .map_err(|e| format!("listener '{}': cannot share its socket: {e}", l.name))?;
                (sockets, a.view.address)
            }
            (None, None) => match &l.pipe {
                Some(pipe) => (
                    listener::bind_pipe(pipe, workers)
                        .map_err(|e| {
                            format!("cannot bind '{}' for listener '{}': {e}", pipe.path, l.name)
                        })?
                        .into_iter()
                        .map(ListenSocket::Unix)
                        .collect(),
                    l.address,
                ),
                None => {
                    let (sockets, bound) = listener::bind(l.address, l.ipv4_compat, workers)
                        .map_err(|e| {
                            format!("cannot bind '{}' for listener '{}': {e}", l.address, l.name)
                        })?;
                    (sockets.into_iter().map(ListenSocket::Tcp).collect(), bound)
                }
            },
        };
        // Each worker accepts on a duplicate of its socket, made here so that a failure (out
        // of descriptors) fails the build rather than leave a socket no worker accepts on.
        let handoff = sockets
            .iter()
            .map(|s| s.try_clone())
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| format!("listener '{}': cannot share its socket: {e}", l.name))?;
        let listener_scope = self.store.scope(&format!("listener.{}.", l.stat_prefix));
        let root_scope = self.store.scope("");
        let serving = Arc::new(ServingListener {
            stats: ListenerStats::new(&self.store, &l.stat_prefix, workers),
            filter_stats: ListenerFilterStats::new(
                &root_scope,
                &listener_scope,
                &l.listener_filters,
            ),
            chains,
            rbac,
            ssl: l.filter_chains.iter().any(|c| c.tls.is_some()).then(|| {
                let ssl = legate_core::tls::SslStats::new(&listener_scope);
                for tls in l.filter_chains.iter().filter_map(|c| c.tls.as_ref()) {
                    tls.attach_stats(&ssl);
                }
                ssl
            }),
            config: l,
        });
        let config = &serving.config;
        let udp = match &config.udp {
            Some(u) => Some(self.udp_proxy(u, &config.name, &root_scope, &listener_scope)?),
            None => None,
        };
        Ok(Active {
            udp,
            udp_sockets,
            udp_handoff,
            view: ListenerView {
                name: config.name.clone(),
                address,
                pipe: config.pipe.as_ref().map(|p| p.path.clone()),
                origin,
                resource: spec.resource,
                version_info: version_info.to_owned(),
                last_updated: SystemTime::now(),
                draining: false,
            },
            configured: config.address,
            pipe: config.pipe.clone(),
            ipv4_compat: config.ipv4_compat,
            sockets,
            handoff,
            instance: Arc::default(),
            serving,
        })
    }

    /// The UDP proxy of a UDP listener, with its access logs opened.
    fn udp_proxy(
        &self,
        u: &UdpListenerConfig,
        name: &str,
        root: &Scope,
        listener_scope: &Scope,
    ) -> Result<Arc<UdpProxy>, String> {
        let mut access_logs = Vec::with_capacity(u.proxy.access_log.len());
        for (i, log) in u.proxy.access_log.iter().enumerate() {
            access_logs.push(AccessLogger::compile(log).map_err(|errors| {
                errors
                    .iter()
                    .map(|e| format!("listener '{name}': udp_proxy access_log[{i}]: {e}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })?);
        }
        let upstreams = ClusterUpstreams(self.context.clone());
        upstreams.register(&u.proxy.cluster);
        Ok(Arc::new(UdpProxy {
            config: u.clone(),
            stats: UdpProxyStats::new(root, &u.proxy.stat_prefix),
            datagrams_dropped: listener_scope.counter("udp.downstream_rx_datagram_dropped"),
            upstreams: Arc::new(upstreams),
            access_logs,
            runtime: self.context.runtime.clone(),
        }))
    }

    /// Hands a built listener to every worker.
    fn start(&self, listener: &mut Active) {
        let kinds: Vec<&str> = listener
            .serving
            .chains
            .iter()
            .map(ChainFilter::kind)
            .collect();
        if listener.udp.is_some() {
            tracing::info!(
                "listener '{}' listening on {} (UDP: udp_proxy)",
                listener.view.name,
                listener.view.address
            );
        } else {
            tracing::info!(
                "listener '{}' listening on {} ({} filter chain(s): {})",
                listener.view.name,
                listener.view.shown(),
                kinds.len(),
                kinds.join(", ")
            );
        }
        if let Some(proxy) = &listener.udp {
            for (worker, socket) in self
                .workers
                .iter()
                .zip(std::mem::take(&mut listener.udp_handoff))
            {
                let _ = worker.send(WorkerCommand::ListenUdp {
                    socket,
                    proxy: proxy.clone(),
                    instance: listener.instance.clone(),
                });
            }
        }
        for (worker, socket) in self
            .workers
            .iter()
            .zip(std::mem::take(&mut listener.handoff))
        {
            let _ = worker.send(WorkerCommand::Listen {
                socket,
                serving: listener.serving.clone(),
                instance: listener.instance.clone(),
            });
        }
        self.stats
            .listener_create_success
            .add(self.workers.len() as u64);
    }

    /// Stops a replaced or removed listener and lets its connections drain.
    fn retire(&mut self, old: Active, now: Instant) {
        old.instance.stop(true);
        let mut view = old.view;
        view.draining = true;
        tracing::info!(
            "listener '{}' on {}: draining {} connection(s) for up to {}s",
            view.name,
            view.shown(),
            old.instance.open_connections(),
            self.drain_time.as_secs()
        );
        self.draining.push(Draining {
            view,
            instance: old.instance,
            deadline: now
                .checked_add(self.drain_time)
                .unwrap_or(now + Duration::from_secs(365 * 24 * 3600)),
        });
        // `old.sockets` close here; a replacement on the same address holds duplicates.
    }

    /// Whether a replaced or removed listener is still draining (then [`Self::tick`] has work).
    pub fn draining(&self) -> bool {
        !self.draining.is_empty()
    }

    /// Ends the drains that are over: every connection closed, or the drain time passed
    /// (then the connections left are closed). Called periodically while [`Self::draining`].
    pub fn tick(&mut self) {
        let now = Instant::now();
        let before = self.draining.len();
        self.draining.retain(|d| {
            let open = d.instance.open_connections();
            if open == 0 {
                return false;
            }
            if now >= d.deadline {
                tracing::info!(
                    "listener '{}': drain time over, closing {open} connection(s)",
                    d.view.name
                );
                d.instance.close();
                return false;
            }
            true
        });
        if self.draining.len() != before {
            self.publish();
        }
    }

    /// Stops every listener (shutdown, `/drain_listeners`): their sockets close, so new
    /// clients are refused at once, as in Envoy; with `graceful` open connections drain too.
    /// No listener starts after this.
    pub fn drain_all(&mut self, graceful: bool) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        for a in &mut self.active {
            a.instance.stop(graceful);
            a.sockets.clear();
            a.udp_sockets.clear();
            self.stats.listener_stopped.inc();
        }
    }

    fn publish(&self) {
        self.stats
            .total_listeners_active
            .set(self.active.len() as u64);
        self.stats.total_listeners_warming.set(0);
        self.stats
            .total_listeners_draining
            .set(self.draining.len() as u64);
        *lock(&self.admin_listeners) = self
            .active
            .iter()
            .map(|a| ListenerInfo {
                name: a.view.name.clone(),
                address: a.view.address,
                pipe: a.view.pipe.clone(),
            })
            .collect();
        let resource = |v: &ListenerView| DynamicResource {
            name: v.name.clone(),
            version_info: v.version_info.clone(),
            last_updated: v.last_updated,
            bytes: v.resource.clone(),
        };
        let mut dynamic: Vec<DynamicListener> = Vec::new();
        for a in self
            .active
            .iter()
            .filter(|a| a.view.origin == Origin::Dynamic)
        {
            dynamic.push(DynamicListener {
                name: a.view.name.clone(),
                active: Some(resource(&a.view)),
                draining: None,
            });
        }
        for d in self
            .draining
            .iter()
            .filter(|d| d.view.origin == Origin::Dynamic)
        {
            match dynamic.iter_mut().find(|l| l.name == d.view.name) {
                Some(l) => l.draining = Some(resource(&d.view)),
                None => dynamic.push(DynamicListener {
                    name: d.view.name.clone(),
                    active: None,
                    draining: Some(resource(&d.view)),
                }),
            }
        }
        let mut dump = lock(&self.dump);
        dump.dynamic_listeners = dynamic;
        dump.listeners = self
            .active
            .iter()
            .filter(|a| a.view.origin == Origin::Static)
            .map(|a| a.view.resource.clone())
            .collect();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether two encoded listeners differ only in their filter chains (Envoy's in-place update).
fn only_filter_chains_differ(old: &[u8], new: &[u8]) -> bool {
    use prost::Message;
    let strip = |bytes: &[u8]| {
        Listener::decode(bytes).ok().map(|mut l| {
            l.filter_chains.clear();
            l.default_filter_chain = None;
            l.encode_to_vec()
        })
    };
    matches!((strip(old), strip(new)), (Some(a), Some(b)) if a == b)
}
