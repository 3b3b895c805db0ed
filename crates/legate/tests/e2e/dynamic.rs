//! Harness for live reconfiguration: a proxy (Legate, or Envoy with `LEGATE_E2E_PROXY=envoy`)
//! started on a bootstrap whose resources come from files (`path_config_source`), files
//! replaced atomically (written beside, then renamed over the watched path: Envoy reacts to
//! moves only), and the stats / admin output that report what was applied.
//!
//! Resources are built as `serde_json::Value`s and written as block-style YAML (see [`yaml`]),
//! so the files look like the ones people write by hand (Envoy's `dynamic-config-fs` example).
//! The placeholder `{dir}` in any file is replaced by the run's directory.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{
    Legate, RawResponse, collect_output, envoy_binary, http_get, parse_response, raw_exchange,
    target_is_envoy, temp_dir,
};

/// A proxy running on file-based dynamic resources.
pub struct DynProxy {
    pub proxy: Legate,
    /// Where the bootstrap and the resource files live.
    pub dir: PathBuf,
    seq: AtomicU64,
}

/// A port free right now on 127.0.0.1 (bound and released), for listeners that must keep
/// their address when they are replaced. Taken below the kernel's ephemeral range (32768 and
/// up by default), where every client socket of every test gets its local port: a port from
/// `bind(0)` could be taken by a connection before the proxy binds it. Each test process walks
/// its own sequence of candidates.
pub fn free_port() -> u16 {
    const FIRST: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) as u32;
        let port = (FIRST + (start + n * 97) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl DynProxy {
    /// Writes `files` (name, content) and `bootstrap` (as `bootstrap.yaml`) into a fresh
    /// directory, starts the proxy with `--drain-time-s drain_time_s --concurrency 2` and waits
    /// until its admin endpoint answers. Listeners are not waited for: see
    /// [`DynProxy::wait_listening`].
    pub fn start(bootstrap: &str, files: &[(&str, String)], drain_time_s: u32) -> DynProxy {
        Self::start_args(bootstrap, files, drain_time_s, &[])
    }

    pub fn start_args(
        bootstrap: &str,
        files: &[(&str, String)],
        drain_time_s: u32,
        extra_args: &[&str],
    ) -> DynProxy {
        let dir = temp_dir("dyn");
        let d = dir.to_str().unwrap().to_owned();
        for (name, content) in files {
            std::fs::write(dir.join(name), content.replace("{dir}", &d)).unwrap();
        }
        let config = dir.join("bootstrap.yaml");
        std::fs::write(&config, bootstrap.replace("{dir}", &d)).unwrap();
        let admin_path = dir.join("admin_address");
        let drain = drain_time_s.to_string();
        let mut cmd = if target_is_envoy() {
            let mut cmd = Command::new(envoy_binary());
            cmd.args(["--disable-hot-restart", "--file-flush-interval-msec", "100"])
                .arg("--admin-address-path")
                .arg(&admin_path);
            cmd
        } else {
            Command::new(env!("CARGO_BIN_EXE_legate"))
        };
        cmd.arg("-c")
            .arg(&config)
            .args(["--concurrency", "2", "-l", "info", "--drain-time-s", &drain])
            .args(extra_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().expect("start the proxy");
        let log = collect_output(&mut child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut admin: Option<SocketAddr> = None;
        loop {
            if admin.is_none() {
                admin = if target_is_envoy() {
                    std::fs::read_to_string(&admin_path)
                        .ok()
                        .and_then(|a| a.trim().parse().ok())
                } else {
                    log.lock().unwrap().iter().find_map(|l| {
                        l.split("admin address: ")
                            .nth(1)
                            .and_then(|a| a.trim().parse().ok())
                    })
                };
            }
            if let Some(a) = admin {
                let raw = raw_exchange(
                    a,
                    b"GET /server_info HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
                    Duration::from_secs(2),
                );
                if parse_response(&raw).is_some_and(|r| r.status == 200) {
                    break;
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                // Give the log readers a moment to collect the last lines.
                std::thread::sleep(Duration::from_millis(200));
                let _ = std::fs::remove_dir_all(&dir);
                panic!(
                    "the proxy exited ({status}); its output:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the proxy's admin did not answer in time; its output:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        DynProxy {
            proxy: Legate {
                child,
                listeners: HashMap::new(),
                admin,
                log,
                dir: dir.clone(),
            },
            dir,
            seq: AtomicU64::new(0),
        }
    }

    pub fn admin(&self) -> SocketAddr {
        self.proxy.admin.unwrap()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Replaces `name` atomically: the content (with `{dir}` filled in) is written to a
    /// temporary file in the same directory, which is then renamed over `name`.
    pub fn write(&self, name: &str, content: &str) {
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        let tmp = self.dir.join(format!(".{name}.tmp{n}"));
        let content = content.replace("{dir}", self.dir.to_str().unwrap());
        let mut f = std::fs::File::create(&tmp).unwrap();
        f.write_all(content.as_bytes()).unwrap();
        f.sync_all().unwrap();
        drop(f);
        std::fs::rename(&tmp, self.dir.join(name)).unwrap();
    }

    pub fn admin_get(&self, path: &str) -> RawResponse {
        http_get(self.admin(), path, &[])
    }

    /// Every stat whose name contains `filter` (a regex for the proxy; keep to `[a-z0-9_.]`),
    /// counters, gauges and text readouts, as the `/stats` text shows them (text readouts keep
    /// their quotes).
    pub fn stats_matching(&self, filter: &str) -> Vec<(String, String)> {
        let text = self.admin_get(&format!("/stats?filter={filter}")).body;
        text.lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(n, v)| (n.to_owned(), v.trim().to_owned()))
            .collect()
    }

    /// A counter or gauge.
    pub fn stat(&self, name: &str) -> Option<u64> {
        self.stats_matching(name)
            .into_iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.parse().ok())
    }

    /// A text readout (such as `listener_manager.lds.version_text`), unquoted.
    pub fn text_stat(&self, name: &str) -> Option<String> {
        self.stats_matching(name)
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.trim_matches('"').to_owned())
    }

    /// A counter or gauge that must exist.
    pub fn must_stat(&self, name: &str) -> u64 {
        self.stat(name).unwrap_or_else(|| {
            panic!(
                "no stat {name}; related stats: {:?}",
                self.stats_matching(name.rsplit_once('.').map_or(name, |(p, _)| p))
            )
        })
    }

    /// Polls `name` until `pred` holds; panics after `timeout` with the last value.
    pub fn wait_stat(&self, name: &str, timeout: Duration, pred: impl Fn(u64) -> bool) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.stat(name);
            if let Some(v) = v
                && pred(v)
            {
                return v;
            }
            if Instant::now() >= deadline {
                panic!(
                    "stat {name} = {v:?} did not reach the expected value within {timeout:?}; \
                     proxy output (tail):\n{}",
                    self.output_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Polls until stat `name` is at least `min`.
    pub fn wait_at_least(&self, name: &str, min: u64) -> u64 {
        self.wait_stat(name, Duration::from_secs(10), |v| v >= min)
    }

    /// Writes `name` and waits until counter `stat` has grown by one (the update was
    /// processed: `update_success`, `update_rejected`, `update_failure`...). Returns the new
    /// value.
    pub fn apply(&self, name: &str, content: &str, stat: &str) -> u64 {
        let before = self.stat(stat).unwrap_or(0);
        self.write(name, content);
        self.wait_at_least(stat, before + 1)
    }

    /// `/config_dump` (with `?include_eds` when `eds`) as JSON.
    pub fn config_dump(&self, eds: bool) -> Value {
        let path = if eds {
            "/config_dump?include_eds"
        } else {
            "/config_dump"
        };
        let r = self.admin_get(path);
        assert_eq!(r.status, 200, "config_dump: {r:?}");
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("config_dump is not JSON: {e}"))
    }

    /// The `/config_dump` section whose `@type` is `envoy.admin.v3.<kind>` (e.g.
    /// `ListenersConfigDump`).
    pub fn dump_section(&self, kind: &str, eds: bool) -> Value {
        let dump = self.config_dump(eds);
        dump["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["@type"].as_str().and_then(|t| t.rsplit('.').next()) == Some(kind))
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} in /config_dump: {dump}"))
    }

    /// Waits until something accepts connections on `port`.
    pub fn wait_listening(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(local(port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nothing listens on port {port}; proxy output (tail):\n{}",
                self.output_tail(40)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until connections to `port` are refused.
    pub fn wait_refused(&self, port: u16, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match TcpStream::connect(local(port)) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return true,
                _ if Instant::now() >= deadline => return false,
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    pub fn output(&self) -> String {
        self.proxy.output()
    }

    pub fn output_tail(&self, n: usize) -> String {
        let log = self.proxy.log.lock().unwrap();
        log[log.len().saturating_sub(n)..].join("\n")
    }

    /// Lines logged so far (to look only at what comes after a point).
    pub fn log_len(&self) -> usize {
        self.proxy.log.lock().unwrap().len()
    }

    pub fn log_since(&self, from: usize) -> String {
        self.proxy.log.lock().unwrap()[from..].join("\n")
    }

    pub fn rss_kb(&self) -> u64 {
        self.proxy.rss_kb()
    }

    pub fn pid(&self) -> i32 {
        self.proxy.pid()
    }
}

// ---- YAML ----------------------------------------------------------------------------------

/// `value` as block-style YAML (strings double-quoted, JSON escapes being YAML's).
pub fn yaml(value: &Value) -> String {
    let mut out = String::new();
    emit(value, 0, &mut out);
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => serde_json::to_string(s).unwrap(),
        Value::Array(a) if a.is_empty() => "[]".into(),
        Value::Object(o) if o.is_empty() => "{}".into(),
        other => other.to_string(),
    }
}

fn is_block(v: &Value) -> bool {
    matches!(v, Value::Array(a) if !a.is_empty()) || matches!(v, Value::Object(o) if !o.is_empty())
}

/// Writes `v` at `indent`, assuming the cursor is at the start of a fresh line.
fn emit(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(o) if !o.is_empty() => {
            for (k, item) in o {
                let key = serde_json::to_string(k).unwrap();
                if is_block(item) {
                    out.push_str(&format!("{pad}{key}:\n"));
                    let inner = if item.is_array() { indent } else { indent + 2 };
                    emit(item, inner, out);
                } else {
                    out.push_str(&format!("{pad}{key}: {}\n", scalar(item)));
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for item in a {
                if is_block(item) {
                    // "- " then the item's first line on the same line, the rest indented.
                    let mut inner = String::new();
                    emit(item, indent + 2, &mut inner);
                    out.push_str(&format!("{pad}- {}", &inner[indent + 2..]));
                } else {
                    out.push_str(&format!("{pad}- {}\n", scalar(item)));
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

// ---- Resources -----------------------------------------------------------------------------

pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ROUTE_CONFIGURATION: &str =
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CLUSTER_LOAD_ASSIGNMENT: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

/// A `DiscoveryResponse` file: `version_info` and the resources, each given its `@type`.
pub fn discovery(version: &str, type_url: &str, resources: &[Value]) -> String {
    let resources: Vec<Value> = resources
        .iter()
        .map(|r| {
            let mut m = serde_json::Map::new();
            m.insert("@type".into(), json!(type_url));
            for (k, v) in r.as_object().expect("a resource is an object") {
                m.insert(k.clone(), v.clone());
            }
            Value::Object(m)
        })
        .collect();
    yaml(&json!({"version_info": version, "resources": resources}))
}

/// A `path_config_source` for a file in the run's directory.
pub fn file_source(name: &str) -> Value {
    json!({"resource_api_version": "V3", "path_config_source": {"path": format!("{{dir}}/{name}")}})
}

/// A bootstrap with LDS from `lds.yaml` and CDS from `cds.yaml` and an admin on port 0.
pub fn dynamic_bootstrap() -> String {
    yaml(&json!({
        "node": {"id": "legate-dyn-test", "cluster": "legate-dyn-test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "lds_config": file_source("lds.yaml"),
            "cds_config": file_source("cds.yaml"),
        },
    }))
}

/// A static bootstrap (for SIGHUP reload) with an admin on port 0.
pub fn static_bootstrap(listeners: &[Value], clusters: &[Value]) -> String {
    yaml(&json!({
        "node": {"id": "legate-dyn-test", "cluster": "legate-dyn-test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }))
}

/// The HCM's route source: RDS from a file, or an inline table.
pub enum Routes {
    Rds {
        name: &'static str,
        file: &'static str,
    },
    Inline(Value),
}

/// An HTTP listener (HCM + router) on 127.0.0.1:`port`. `listener_extra` and `hcm_extra`
/// fields are merged into the listener and the HCM.
pub fn http_listener(
    name: &str,
    port: u16,
    stat_prefix: &str,
    routes: Routes,
    listener_extra: Value,
    hcm_extra: Value,
) -> Value {
    let mut hcm = json!({
        "@type": HCM,
        "stat_prefix": stat_prefix,
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    });
    match routes {
        Routes::Rds { name, file } => {
            hcm["rds"] = json!({"route_config_name": name, "config_source": file_source(file)});
        }
        Routes::Inline(rc) => hcm["route_config"] = rc,
    }
    merge(&mut hcm, hcm_extra);
    let mut listener = json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": hcm,
        }]}],
    });
    merge(&mut listener, listener_extra);
    listener
}

/// A tcp_proxy listener to `cluster`.
pub fn tcp_listener(name: &str, port: u16, cluster: &str) -> Value {
    json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {"@type": TCP_PROXY, "stat_prefix": name, "cluster": cluster},
        }]}],
    })
}

/// Adds `extra`'s fields to `target` (both objects; `null` adds nothing).
pub fn merge(target: &mut Value, extra: Value) {
    if let Value::Object(extra) = extra {
        let t = target.as_object_mut().unwrap();
        for (k, v) in extra {
            t.insert(k, v);
        }
    }
}

/// A route table `name` with one virtual host (`*`) and `routes` in order.
pub fn route_config(name: &str, routes: Vec<Value>) -> Value {
    json!({
        "name": name,
        "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
    })
}

/// A prefix route to `cluster` adding the response headers `headers`.
pub fn route_to(prefix: &str, cluster: &str, headers: &[(&str, &str)]) -> Value {
    let mut r = json!({"match": {"prefix": prefix}, "route": {"cluster": cluster}});
    if !headers.is_empty() {
        r["response_headers_to_add"] = headers
            .iter()
            .map(|(k, v)| json!({"header": {"key": k, "value": v}}))
            .collect();
    }
    r
}

/// A prefix route answered by the proxy itself.
pub fn direct(prefix: &str, status: u16, body: &str) -> Value {
    json!({"match": {"prefix": prefix},
           "direct_response": {"status": status, "body": {"inline_string": body}}})
}

fn lb_endpoints(addrs: &[SocketAddr]) -> Value {
    let eps: Vec<Value> = addrs
        .iter()
        .map(|a| {
            json!({"endpoint": {"address": {"socket_address": {
                "address": a.ip().to_string(), "port_value": a.port()}}}})
        })
        .collect();
    json!([{"lb_endpoints": eps}])
}

/// A STATIC round-robin cluster.
pub fn static_cluster(name: &str, addrs: &[SocketAddr]) -> Value {
    json!({
        "name": name,
        "connect_timeout": "1s",
        "type": "STATIC",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"cluster_name": name, "endpoints": lb_endpoints(addrs)},
    })
}

/// An EDS cluster whose assignment comes from `file`.
pub fn eds_cluster(name: &str, file: &str) -> Value {
    json!({
        "name": name,
        "connect_timeout": "1s",
        "type": "EDS",
        "lb_policy": "ROUND_ROBIN",
        "eds_cluster_config": {"eds_config": file_source(file)},
    })
}

/// A `ClusterLoadAssignment`.
pub fn assignment(cluster: &str, addrs: &[SocketAddr]) -> Value {
    json!({"cluster_name": cluster, "endpoints": lb_endpoints(addrs)})
}

pub fn lds(version: &str, listeners: &[Value]) -> String {
    discovery(version, LISTENER, listeners)
}

pub fn cds(version: &str, clusters: &[Value]) -> String {
    discovery(version, CLUSTER, clusters)
}

pub fn rds(version: &str, configs: &[Value]) -> String {
    discovery(version, ROUTE_CONFIGURATION, configs)
}

pub fn eds(version: &str, assignments: &[Value]) -> String {
    discovery(version, CLUSTER_LOAD_ASSIGNMENT, assignments)
}

// ---- A keep-alive HTTP/1.1 client that tells failures apart --------------------------------

/// How one request on a [`KeepAlive`] connection ended.
#[derive(Debug)]
pub enum Outcome {
    /// A complete response; `close` when it carried `connection: close` (the connection is
    /// then dropped and the next request opens a new one).
    Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        close: bool,
    },
    /// The connection could not be opened.
    ConnectError(String),
    /// The request went out on a connection that had already carried a response, and the
    /// connection ended (closed or reset) before a single response byte came back: the
    /// keep-alive race (the proxy closed an idle connection while the request was in flight).
    KeepAliveRace(String),
    /// Any other failure: an error or close after part of a response, or before any byte on a
    /// fresh connection, or a timeout.
    Failed(String),
}

/// A blocking HTTP/1.1 client over one keep-alive connection at a time.
pub struct KeepAlive {
    addr: SocketAddr,
    conn: Option<TcpStream>,
    /// Responses already read on `conn`.
    used: usize,
    pub connections_opened: usize,
    pub timeout: Duration,
}

impl KeepAlive {
    pub fn new(addr: SocketAddr) -> KeepAlive {
        KeepAlive {
            addr,
            conn: None,
            used: 0,
            connections_opened: 0,
            timeout: Duration::from_secs(10),
        }
    }

    /// Whether the open connection (if any) is closed by the peer within `within`, without
    /// sending anything on it. `None` when no connection is open.
    pub fn closed_within(&mut self, within: Duration) -> Option<bool> {
        let stream = self.conn.as_mut()?;
        stream.set_read_timeout(Some(within)).unwrap();
        let mut byte = [0u8; 1];
        let closed = match stream.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        };
        stream.set_read_timeout(Some(self.timeout)).unwrap();
        if closed {
            self.conn = None;
        }
        Some(closed)
    }

    /// Sends `GET path` (with `headers`) and reads the response.
    pub fn get(&mut self, path: &str, extra_headers: &[(&str, &str)]) -> Outcome {
        if self.conn.is_none() {
            match TcpStream::connect(self.addr) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    s.set_read_timeout(Some(self.timeout)).unwrap();
                    self.conn = Some(s);
                    self.used = 0;
                    self.connections_opened += 1;
                }
                Err(e) => return Outcome::ConnectError(e.to_string()),
            }
        }
        let mut req = format!("GET {path} HTTP/1.1\r\nhost: example.com\r\n");
        for (k, v) in extra_headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let reused = self.used > 0;
        let stream = self.conn.as_mut().unwrap();
        let write = stream.write_all(req.as_bytes());
        let result = read_one(stream);
        match (write, result) {
            (_, Ok((status, headers, body))) => {
                let close = headers
                    .iter()
                    .any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"));
                if close {
                    self.conn = None;
                } else {
                    self.used += 1;
                }
                Outcome::Response {
                    status,
                    headers,
                    body,
                    close,
                }
            }
            (w, Err((got, e))) => {
                self.conn = None;
                let why = match w {
                    Err(we) => format!("write: {we}; read: {e}"),
                    Ok(()) => e,
                };
                if got == 0 && reused {
                    Outcome::KeepAliveRace(why)
                } else {
                    Outcome::Failed(format!("{why} (after {got} response bytes)"))
                }
            }
        }
    }
}

/// Reads one response (content-length, chunked or to-close framing) byte-exactly; on failure,
/// how many bytes had arrived and why.
#[allow(clippy::type_complexity)]
fn read_one(
    stream: &mut TcpStream,
) -> Result<(u16, Vec<(String, String)>, Vec<u8>), (usize, String)> {
    let mut buf: Vec<u8> = Vec::new();
    let mut got = 0usize;
    let mut fill = |buf: &mut Vec<u8>, got: &mut usize| -> Result<(), (usize, String)> {
        let mut chunk = [0u8; 16384];
        match stream.read(&mut chunk) {
            Ok(0) => Err((*got, "connection closed".into())),
            Ok(n) => {
                *got += n;
                buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) => Err((*got, e.to_string())),
        }
    };
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        fill(&mut buf, &mut got)?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut rest: Vec<u8> = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or((got, format!("bad status line in {head:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let body = if let Some(len) = find("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| (got, "bad content-length".to_string()))?;
        while rest.len() < len {
            fill(&mut rest, &mut got)?;
        }
        rest.truncate(len);
        rest
    } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut body = Vec::new();
        let mut pos = 0usize;
        loop {
            let line_end = loop {
                if let Some(i) = rest[pos..].windows(2).position(|w| w == b"\r\n") {
                    break pos + i;
                }
                fill(&mut rest, &mut got)?;
            };
            let size_text = String::from_utf8_lossy(&rest[pos..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                .map_err(|_| (got, format!("bad chunk size {size_text:?}")))?;
            pos = line_end + 2;
            if size == 0 {
                // Trailers (none expected) end with an empty line.
                loop {
                    if let Some(i) = rest[pos..].windows(2).position(|w| w == b"\r\n") {
                        let empty = i == 0;
                        pos += i + 2;
                        if empty {
                            break;
                        }
                        continue;
                    }
                    fill(&mut rest, &mut got)?;
                }
                break;
            }
            while rest.len() < pos + size + 2 {
                fill(&mut rest, &mut got)?;
            }
            body.extend_from_slice(&rest[pos..pos + size]);
            pos += size + 2;
        }
        body
    } else if status == 204 || status == 304 {
        Vec::new()
    } else {
        loop {
            match fill(&mut rest, &mut got) {
                Ok(()) => {}
                Err((_, e)) if e == "connection closed" => break,
                Err(e) => return Err(e),
            }
        }
        rest
    };
    Ok((status, headers, body))
}

/// The value of `name` in `headers` (lower-case names).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Whether `path` reached `upstream` (the echo records every request it saw).
pub fn saw(upstream: &super::Upstream, path: &str) -> bool {
    upstream
        .requests
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.path == path)
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads `path` (relative to the run's directory) — used to keep what was last written.
pub fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}
