//! The differential harness: runs each case through Envoy and Legate and compares what a client,
//! the upstream, the access log and the stats saw.
//!
//! Per case, one echo upstream ([`e2e::Upstream`]), one Envoy and one Legate are started on the
//! same bootstrap ([`bootstrap`]: one listener `ingress` and the admin on port 0, clusters
//! `backend` and `other` (the echo upstream, HTTP/1.1), `backend_h2` (the echo upstream, h2c) and
//! `dead` (a port nothing listens on), and an `envoy.access_loggers.file` access log in Envoy's
//! default format). Both run with `--concurrency 1`. The requests of a case are sent one at a time,
//! each first to Envoy then to Legate, so that what the upstream received is attributed to one
//! request of one proxy.
//!
//! What is compared, after normalization:
//!
//! * **status**, or the absence of a response (the connection closed without one);
//! * **response headers**, names lowercased, compared per name as the list of values in the order
//!   received; `date` and `x-envoy-upstream-service-time` values are masked (presence counts),
//!   and so is any UUID (generated `x-request-id`s);
//! * **body**; when it is the upstream's JSON echo of the request, it is replaced by a marker,
//!   and so are its `content-length` and `%BYTES_SENT%` (the echo is compared as the upstream's
//!   view, below, and would otherwise report each difference there four times);
//! * **the upstream's view**: how many requests reached it, and for each the method, path, HTTP
//!   version and request headers (per name, as above; UUIDs masked; `x-forwarded-for` values
//!   joined into one list, entries trimmed, order kept — the order is what trusted hops depend
//!   on, the whitespace after a comma is not);
//! * **the access-log line** in the default format, field by field; `START_TIME`, `DURATION`
//!   and `RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)` are masked (a `-` stays a `-`), and so are UUIDs.
//!   Lines are paired with requests by their unique `user-agent` (`compat/<case>/<n>`), the rest
//!   in order;
//! * **stats**: after all requests of a case, once both proxies report no active downstream
//!   connection, the `/stats?usedonly` names with a non-zero value in the families
//!   `http.ingress_http.*`, `listener.127.0.0.1_0.*` and `cluster.<name>.upstream_rq*`, with their
//!   values. Values of byte counters (`*bytes*`) are not compared (they depend on the length of
//!   the masked values), nor are histograms at all (Envoy only merges them at its stats flush, so
//!   whether one is listed depends on timing).
//!
//! Any value containing the proxy's own listener port has it replaced by `{port}` (the ports
//! differ between the two proxies). Each difference gets an *aspect* (`status`, `response header
//! location`, `upstream header via`, `log %RESPONSE_FLAGS%`, `stat http.ingress_http.no_route`,
//! ...); a difference is allowed only when `compat/differences.rs` lists its case and aspect,
//! and every entry there must still be observed (a fixed difference must be removed from it).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::cases::{Case, Proto, Req};
use crate::differences::Documented;
use crate::e2e;

/// How many cases run at once (each has its own upstream, Envoy and Legate).
const PARALLEL: usize = 3;
const STAT_PREFIX: &str = "http.ingress_http.";
const LISTENER_PREFIX: &str = "listener.127.0.0.1_0.";

/// The bootstrap both proxies run for a case.
pub fn bootstrap(case: &Case, upstream: SocketAddr, dead: SocketAddr) -> String {
    let cluster = |name: &str, addr: SocketAddr, extra: &str| {
        format!(
            r#"  - name: {name}
    connect_timeout: 1s
    type: STATIC
{extra}    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: {ip}, port_value: {port}}}
"#,
            ip = addr.ip(),
            port = addr.port()
        )
    };
    let h2 = r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
"#;
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
  - name: ingress
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "{{dir}}/access.log"
{hcm}          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            name: local_route
{route_config}            virtual_hosts:
{vhosts}  clusters:
{backend}{other}{backend_h2}{dead}"#,
        hcm = indent(&case.hcm, 10),
        route_config = indent(&case.route_config, 12),
        vhosts = indent(&case.vhosts, 12),
        backend = cluster("backend", upstream, ""),
        other = cluster("other", upstream, ""),
        backend_h2 = cluster("backend_h2", upstream, h2),
        dead = cluster("dead", dead, ""),
    )
}

fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    let mut out = String::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        out.push_str(&pad);
        out.push_str(line);
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The two proxies.

/// A running Envoy.
pub struct Envoy {
    child: Child,
    listener: SocketAddr,
    admin: SocketAddr,
    dir: PathBuf,
}

fn next_base_id() -> u32 {
    // Away from the ids `tests/common` hands out (below ~110k), distinct per process and start.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    500_000 + std::process::id() % 20_000 * 100 + NEXT.fetch_add(1, Ordering::Relaxed) % 100
}

impl Envoy {
    pub fn start(bin: &Path, yaml: &str) -> Result<Envoy, String> {
        let dir = e2e::temp_dir("envoy");
        let config = dir.join("config.yaml");
        std::fs::write(&config, yaml.replace("{dir}", dir.to_str().unwrap())).unwrap();
        let admin_path = dir.join("admin.txt");
        let out = std::fs::File::create(dir.join("envoy.out")).unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&config)
            // Envoy writes the first access-log line at once and the rest every 10 s by
            // default; a short interval keeps the run short (it changes no output).
            .args(["--file-flush-interval-msec", "50"])
            .args(["--concurrency", "1", "-l", "warning", "--base-id"])
            .arg(next_base_id().to_string())
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut envoy = Envoy {
            child,
            listener: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                return Err(format!("envoy exited ({status}):\n{}", envoy.output()));
            }
            if Instant::now() > deadline {
                return Err(format!("envoy did not start in time:\n{}", envoy.output()));
            }
            if let Some(admin) = std::fs::read_to_string(&admin_path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                envoy.admin = admin;
                if e2e::http_get(admin, "/ready", &[]).status == 200
                    && let Some(addr) = listener_address(admin)
                {
                    envoy.listener = addr;
                    return Ok(envoy);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.out")).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The bound address of listener `ingress`, from the admin's `/listeners?format=json`.
fn listener_address(admin: SocketAddr) -> Option<SocketAddr> {
    let r = e2e::http_get(admin, "/listeners?format=json", &[]);
    let json: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    let status = json["listener_statuses"]
        .as_array()?
        .iter()
        .find(|l| l["name"] == "ingress")?;
    let sa = &status["local_address"]["socket_address"];
    let port = sa["port_value"].as_u64()?;
    (port != 0).then(|| format!("{}:{port}", sa["address"].as_str()?).parse().ok())?
}

/// One side of the comparison, whichever proxy it is.
struct Side {
    listener: SocketAddr,
    admin: SocketAddr,
    log_path: PathBuf,
}

// ---------------------------------------------------------------------------------------------
// Observations.

/// What one request produced on one proxy, normalized.
#[derive(Debug, Default)]
struct Observed {
    /// `None`: the connection ended without a response (the error says how).
    status: Option<u16>,
    error: String,
    headers: BTreeMap<String, Vec<String>>,
    body: String,
    upstream: Vec<UpstreamView>,
    log: Option<BTreeMap<&'static str, String>>,
}

#[derive(Debug, PartialEq)]
struct UpstreamView {
    method: String,
    path: String,
    version: String,
    headers: BTreeMap<String, Vec<String>>,
}

/// A raw response: status, headers in order, body.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Sends one request; `Err` when no response came back.
fn send(addr: SocketAddr, req: &Req, ua: &str) -> Result<Response, String> {
    match &req.proto {
        Proto::H1 => {
            let mut text = format!("{} {} HTTP/1.1\r\n", req.method, req.path);
            if let Some(host) = &req.authority {
                text.push_str(&format!("host: {host}\r\n"));
            }
            text.push_str(&format!("user-agent: {ua}\r\n"));
            for (k, v) in &req.headers {
                text.push_str(&format!("{k}: {v}\r\n"));
            }
            if !req.keep_alive {
                text.push_str("connection: close\r\n");
            }
            if !req.body.is_empty() || req.method == "POST" {
                text.push_str(&format!("content-length: {}\r\n", req.body.len()));
            }
            text.push_str("\r\n");
            text.push_str(&req.body);
            raw_send(addr, text.as_bytes(), req.method == "HEAD")
        }
        Proto::Raw(raw) => raw_send(addr, raw.replace("{ua}", ua).as_bytes(), false),
        Proto::H2c => h2c_send(addr, req, ua),
    }
}

fn raw_send(addr: SocketAddr, bytes: &[u8], head: bool) -> Result<Response, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = stream.write_all(bytes);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if response_complete(&buf, head) {
            break;
        }
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if buf.is_empty() => return Err(format!("read: {e}")),
            Err(_) => break,
        }
    }
    if buf.is_empty() {
        return Err("connection closed without a response".into());
    }
    let r = e2e::parse_response(&buf).ok_or_else(|| {
        format!(
            "not an HTTP response: {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(200)])
        )
    })?;
    Ok(Response {
        status: r.status,
        headers: r.headers,
        body: r.body.into_bytes(),
    })
}

/// Whether `buf` holds a whole response (by its framing), so the reader need not wait for the
/// peer to close.
fn response_complete(buf: &[u8], head: bool) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head_text = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status: u16 = head_text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if head || status == 101 || status == 204 || status == 304 {
        return true;
    }
    let body = &buf[end + 4..];
    for line in head_text.lines().skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            match k.trim() {
                "content-length" => {
                    return v.trim().parse::<usize>().is_ok_and(|n| body.len() >= n);
                }
                "transfer-encoding" if v.contains("chunked") => {
                    return body.starts_with(b"0\r\n\r\n") || body.ends_with(b"\r\n0\r\n\r\n");
                }
                _ => {}
            }
        }
    }
    false
}

fn h2c_send(addr: SocketAddr, req: &Req, ua: &str) -> Result<Response, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        let authority = req.authority.as_deref().unwrap_or("example.com");
        let mut builder = http::Request::builder()
            .method(req.method.as_str())
            .uri(format!("http://{authority}{}", req.path))
            .header("user-agent", ua);
        for (k, v) in &req.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let request = builder
            .body(Full::new(Bytes::from(req.body.clone())))
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| format!("h2: {e}"))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec())
            .map_err(|e| format!("h2 body: {e}"))?;
        Ok(Response {
            status,
            headers,
            body,
        })
    })
}

/// Replaces every UUID (8-4-4-4-12 hex digits) with `<uuid>`.
fn mask_uuids(s: &str) -> String {
    let b = s.as_bytes();
    let shape = |i: usize| -> bool {
        if i + 36 > b.len() {
            return false;
        }
        (0..36).all(|k| match k {
            8 | 13 | 18 | 23 => b[i + k] == b'-',
            _ => b[i + k].is_ascii_hexdigit(),
        })
    };
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if shape(i) {
            out.push_str("<uuid>");
            i += 36;
        } else {
            let c = s[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

struct Normalizer {
    /// The proxy's listener port.
    port: String,
}

impl Normalizer {
    fn value(&self, v: &str) -> String {
        if v == self.port {
            return "{port}".to_owned();
        }
        mask_uuids(&v.replace(&format!(":{}", self.port), ":{port}"))
    }

    fn headers<'a>(
        &self,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> BTreeMap<String, Vec<String>> {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in headers {
            let k = k.to_ascii_lowercase();
            let v = match k.as_str() {
                "date" => "<date>".to_owned(),
                "x-envoy-upstream-service-time" => "<ms>".to_owned(),
                _ => self.value(v),
            };
            map.entry(k).or_default().push(v);
        }
        if let Some(xff) = map.get_mut("x-forwarded-for") {
            let joined: Vec<String> = xff
                .iter()
                .flat_map(|v| v.split(','))
                .map(|e| e.trim().to_owned())
                .collect();
            *xff = vec![joined.join(",")];
        }
        map
    }

    fn body(&self, body: &[u8]) -> String {
        let text = String::from_utf8_lossy(body);
        if is_echo(&text) {
            return ECHO.to_owned();
        }
        self.value(&text)
    }

    fn upstream(&self, e: &e2e::Echo) -> UpstreamView {
        UpstreamView {
            method: e.method.clone(),
            path: self.value(&e.path),
            version: e.version.clone(),
            headers: self.headers(e.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
        }
    }

    /// One access-log line in Envoy's default format, field by field.
    fn log_line(&self, line: &str) -> BTreeMap<&'static str, String> {
        const FIELDS: [&str; 12] = [
            "\"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\"",
            "%RESPONSE_CODE%",
            "%RESPONSE_FLAGS%",
            "%BYTES_RECEIVED%",
            "%BYTES_SENT%",
            "%DURATION%",
            "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
            "%REQ(X-FORWARDED-FOR)%",
            "%REQ(USER-AGENT)%",
            "%REQ(X-REQUEST-ID)%",
            "%REQ(:AUTHORITY)%",
            "%UPSTREAM_HOST%",
        ];
        let mut map = BTreeMap::new();
        let parsed = line
            .strip_prefix('[')
            .and_then(|rest| rest.split_once("] "))
            .and_then(|(_, rest)| split_log_fields(rest))
            .filter(|f| f.len() == FIELDS.len());
        let Some(fields) = parsed else {
            map.insert("line", self.value(line));
            return map;
        };
        for (name, value) in FIELDS.iter().zip(fields) {
            let masked = match *name {
                "%DURATION%" | "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%"
                    if value.chars().all(|c| c.is_ascii_digit()) && !value.is_empty() =>
                {
                    "<ms>".to_owned()
                }
                "%REQ(X-FORWARDED-FOR)%" => value
                    .split(',')
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join(","),
                _ => self.value(&value),
            };
            map.insert(*name, masked);
        }
        map
    }
}

/// What stands for the body (and its length) of a response that is the upstream's JSON echo of
/// the request: that echo is compared field by field as the upstream's view, so comparing the
/// body too would report every difference there three more times (body, `content-length`,
/// `%BYTES_SENT%`).
const ECHO: &str = "<the upstream's echo of the request>";

fn is_echo(text: &str) -> bool {
    matches!(
        serde_json::from_str(text),
        Ok(serde_json::Value::Object(echo)) if echo.contains_key("headers") && echo.contains_key("method")
    )
}

/// Splits the part of a default-format line after `[START_TIME] ` into its fields: quoted
/// strings (quotes kept for the first, which holds three operators) and bare tokens.
fn split_log_fields(rest: &str) -> Option<Vec<String>> {
    let mut fields = Vec::new();
    let mut s = rest.trim_end();
    let mut first = true;
    while !s.is_empty() {
        if let Some(inner) = s.strip_prefix('"') {
            // A quoted field ends at a quote followed by a space or the end of the line.
            let mut end = None;
            for (i, _) in inner.match_indices('"') {
                let after = &inner[i + 1..];
                if after.is_empty() || after.starts_with(' ') {
                    end = Some(i);
                    break;
                }
            }
            let end = end?;
            let value = &inner[..end];
            fields.push(if first {
                format!("\"{value}\"")
            } else {
                value.to_owned()
            });
            s = inner[end + 1..].trim_start();
        } else {
            let (token, after) = s.split_once(' ').unwrap_or((s, ""));
            fields.push(token.to_owned());
            s = after.trim_start();
        }
        first = false;
    }
    Some(fields)
}

// ---------------------------------------------------------------------------------------------
// Running a case.

/// One difference between the proxies.
#[derive(Debug, Clone)]
pub struct Difference {
    pub case: &'static str,
    /// The request's index in the case; `None` for per-case aspects (startup, stats).
    pub request: Option<usize>,
    pub aspect: String,
    pub envoy: String,
    pub legate: String,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.request {
            Some(i) => write!(f, "{}[{i}] {}", self.case, self.aspect)?,
            None => write!(f, "{} {}", self.case, self.aspect)?,
        }
        write!(
            f,
            "\n      envoy:  {}\n      legate: {}",
            self.envoy, self.legate
        )
    }
}

/// The outcome of a whole run.
pub struct Report {
    pub ok: bool,
    /// The pass/fail matrix and every difference.
    pub text: String,
    /// Only what fails the test.
    pub failures: String,
}

struct CaseResult {
    name: &'static str,
    requests: usize,
    differences: Vec<Difference>,
    /// A harness problem (Envoy refused the config, ...): the case is broken, not Legate.
    broken: Option<String>,
}

/// Runs `cases` and judges their differences against `documented`. `complete`: every case of
/// the suite is in `cases` (only then can an entry for all cases be found stale).
pub fn run(envoy: &Path, cases: &[Case], documented: Vec<Documented>, complete: bool) -> Report {
    let started = Instant::now();
    let results: Mutex<Vec<CaseResult>> = Mutex::default();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL.min(cases.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(case) = cases.get(i) else { break };
                    let result = run_case(envoy, case);
                    results.lock().unwrap().push(result);
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    let order: Vec<&str> = cases.iter().map(|c| c.name).collect();
    results.sort_by_key(|r| order.iter().position(|n| *n == r.name));

    // Short ids for the matrix: I1.. for intentional entries, K1.. for known ones.
    let mut counters = (0, 0);
    let ids: Vec<String> = documented
        .iter()
        .map(|k| {
            if k.intentional {
                counters.0 += 1;
                format!("I{}", counters.0)
            } else {
                counters.1 += 1;
                format!("K{}", counters.1)
            }
        })
        .collect();
    // Per entry: how many differences it covered, in which cases.
    let mut seen: Vec<(usize, Vec<&str>)> = vec![(0, Vec::new()); documented.len()];
    let verbose = std::env::var_os("COMPAT_VERBOSE").is_some();
    let mut text = String::from("\ncompat: Envoy vs Legate (entries: compat/differences.rs)\n\n");
    let mut details = String::new();
    let mut failures = String::new();
    let mut total = (0, 0, 0);
    for r in &results {
        let mut undocumented = Vec::new();
        let mut entries: Vec<usize> = Vec::new();
        for d in &r.differences {
            let covering: Vec<usize> = (0..documented.len())
                .filter(|&j| documented[j].covers(d))
                .collect();
            if covering.is_empty() {
                undocumented.push(d);
            }
            // Every entry covering it counts as seen, so overlapping entries stay "used".
            for &j in &covering {
                seen[j].0 += 1;
                if !seen[j].1.contains(&r.name) {
                    seen[j].1.push(r.name);
                }
                if !entries.contains(&covering[0]) {
                    entries.push(covering[0]);
                }
            }
            if verbose || covering.is_empty() {
                let why = covering
                    .first()
                    .map_or("UNDOCUMENTED".to_owned(), |&j| ids[j].clone());
                details.push_str(&format!("  - [{why}] {d}\n"));
            }
        }
        entries.sort_unstable();
        let listed: Vec<&str> = entries.iter().map(|&j| ids[j].as_str()).collect();
        let verdict = if let Some(why) = &r.broken {
            total.2 += 1;
            failures.push_str(&format!("case {} is broken: {why}\n", r.name));
            "BROKEN (see the failure)".to_owned()
        } else if !undocumented.is_empty() {
            total.2 += 1;
            for d in &undocumented {
                failures.push_str(&format!("undocumented difference: {d}\n"));
            }
            format!(
                "FAIL: {} undocumented; documented {}",
                undocumented.len(),
                listed.join(" ")
            )
        } else if !entries.is_empty() {
            total.1 += 1;
            format!("pass, documented {}", listed.join(" "))
        } else {
            total.0 += 1;
            "PASS (identical)".to_owned()
        };
        text.push_str(&format!(
            "  {:<36} {:>2} rq  {verdict}\n",
            r.name, r.requests
        ));
    }
    text.push_str(&format!(
        "\n  {} cases: {} identical, {} with documented differences only, {} failing ({:.1}s)\n",
        results.len(),
        total.0,
        total.1,
        total.2,
        started.elapsed().as_secs_f64()
    ));
    text.push_str("\nDocumented differences seen (id, differences, cases):\n");
    for (j, k) in documented.iter().enumerate() {
        let (count, in_cases) = &seen[j];
        if *count == 0 {
            continue;
        }
        let cases_text = if in_cases.len() > 3 {
            format!("{} cases", in_cases.len())
        } else {
            in_cases.join(", ")
        };
        text.push_str(&format!(
            "  {:>3} {:>4}  [{cases_text}] {}\n",
            ids[j],
            count,
            k.label()
        ));
    }
    if !details.is_empty() {
        text.push_str(if verbose {
            "\nAll differences:\n"
        } else {
            "\nUndocumented differences:\n"
        });
        text.push_str(&details);
    }
    // A documented difference that no longer shows up must leave the list (only judged when
    // its cases ran: `COMPAT_ONLY` runs a subset).
    let ran: Vec<&str> = results.iter().map(|r| r.name).collect();
    for (k, (count, _)) in documented.iter().zip(&seen) {
        let judged = if k.case.contains('*') {
            complete
        } else {
            k.case.split('|').any(|c| ran.contains(&c))
        };
        if *count == 0 && !k.optional && judged {
            failures.push_str(&format!(
                "documented difference not observed any more (fixed? remove it from compat/differences.rs): {}\n",
                k.label()
            ));
        }
    }
    Report {
        ok: failures.is_empty(),
        text,
        failures,
    }
}

fn run_case(envoy_bin: &Path, case: &Case) -> CaseResult {
    let mut result = CaseResult {
        name: case.name,
        requests: case.requests.len(),
        differences: Vec::new(),
        broken: None,
    };
    let upstream = e2e::Upstream::start();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let yaml = bootstrap(case, upstream.addr, dead);
    let envoy = match Envoy::start(envoy_bin, &yaml) {
        Ok(e) => e,
        Err(e) => {
            result.broken = Some(format!("Envoy refused the configuration: {e}\n{yaml}"));
            return result;
        }
    };
    let legate = match e2e::Legate::try_start_args(&yaml, &["--concurrency", "1", "-l", "info"]) {
        Ok(l) => l,
        Err(e) => {
            result.differences.push(Difference {
                case: case.name,
                request: None,
                aspect: "startup".into(),
                envoy: "serves the configuration".into(),
                legate: e.lines().rev().take(3).collect::<Vec<_>>().join(" | "),
            });
            return result;
        }
    };
    let sides = [
        Side {
            listener: envoy.listener,
            admin: envoy.admin,
            log_path: envoy.dir.join("access.log"),
        },
        Side {
            listener: legate.addr("ingress"),
            admin: legate.admin.expect("legate's admin address"),
            log_path: legate.dir.join("access.log"),
        },
    ];
    let normalizers = sides.each_ref().map(|s| Normalizer {
        port: s.listener.port().to_string(),
    });

    let mut observed: [Vec<Observed>; 2] = [Vec::new(), Vec::new()];
    let uas: Vec<String> = (0..case.requests.len())
        .map(|i| format!("compat/{}/{i}", case.name))
        .collect();
    for (i, req) in case.requests.iter().enumerate() {
        for (s, side) in sides.iter().enumerate() {
            let before = upstream.count();
            let req = with_port(req, side.listener.port());
            let response = send(side.listener, &req, &uas[i]);
            // Requests the upstream saw while this one ran are this one's.
            std::thread::sleep(Duration::from_millis(5));
            let seen: Vec<e2e::Echo> = upstream.requests.lock().unwrap()[before..].to_vec();
            let n = &normalizers[s];
            let mut o = Observed {
                upstream: seen.iter().map(|e| n.upstream(e)).collect(),
                ..Observed::default()
            };
            match response {
                Ok(r) => {
                    o.status = Some(r.status);
                    o.headers = n.headers(r.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                    o.body = n.body(&r.body);
                    if o.body == ECHO
                        && let Some(len) = o.headers.get_mut("content-length")
                    {
                        *len = vec![ECHO.to_owned()];
                    }
                }
                Err(e) => o.error = e,
            }
            observed[s].push(o);
        }
    }

    // Let both proxies finish their streams and connections, then read logs and stats.
    let settle = Instant::now() + Duration::from_secs(3);
    let mut stats: [BTreeMap<String, String>; 2] = Default::default();
    let mut logs: [Vec<String>; 2] = Default::default();
    for (s, side) in sides.iter().enumerate() {
        loop {
            stats[s] = read_stats(side.admin);
            logs[s] = std::fs::read_to_string(&side.log_path)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect();
            let idle = !stats[s].contains_key(&format!("{STAT_PREFIX}downstream_cx_active"))
                && !stats[s].contains_key(&format!("{STAT_PREFIX}downstream_rq_active"));
            if (idle && logs[s].len() >= case.requests.len()) || Instant::now() > settle {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for s in 0..2 {
        let lines = assign_log_lines(&logs[s], &uas);
        for (o, line) in observed[s].iter_mut().zip(lines) {
            o.log = line.map(|l| normalizers[s].log_line(&l));
            if o.body == ECHO
                && let Some(sent) = o.log.as_mut().and_then(|l| l.get_mut("%BYTES_SENT%"))
            {
                *sent = ECHO.to_owned();
            }
        }
    }

    if std::env::var_os("COMPAT_DUMP").is_some() {
        let mut dump = format!("==== {} ====\n{yaml}\n", case.name);
        for (i, req) in case.requests.iter().enumerate() {
            dump.push_str(&format!("-- [{i}] {req:?}\n"));
            dump.push_str(&format!("   envoy:  {:?}\n", observed[0][i]));
            dump.push_str(&format!("   legate: {:?}\n", observed[1][i]));
        }
        dump.push_str(&format!(
            "   envoy stats:  {:?}\n   legate stats: {:?}\n",
            stats[0], stats[1]
        ));
        eprintln!("{dump}");
    }

    let [envoy_obs, legate_obs] = observed;
    for (i, (e, l)) in envoy_obs.iter().zip(&legate_obs).enumerate() {
        compare(case.name, i, e, l, &mut result.differences);
    }
    compare_stats(case.name, &stats[0], &stats[1], &mut result.differences);
    drop(legate);
    drop(envoy);
    result
}

/// The request with `{port}` replaced by the proxy's listener port.
fn with_port(req: &Req, port: u16) -> Req {
    let port = port.to_string();
    let mut req = req.clone();
    req.authority = req.authority.map(|a| a.replace("{port}", &port));
    for (_, v) in &mut req.headers {
        *v = v.replace("{port}", &port);
    }
    req
}

/// The access-log line of each request: the one carrying its user-agent, else the remaining
/// lines in order.
fn assign_log_lines(lines: &[String], uas: &[String]) -> Vec<Option<String>> {
    let mut taken = vec![false; lines.len()];
    let mut out: Vec<Option<String>> = uas
        .iter()
        .map(|ua| {
            let needle = format!("\"{ua}\"");
            let j = lines
                .iter()
                .enumerate()
                .position(|(j, l)| !taken[j] && l.contains(&needle))?;
            taken[j] = true;
            Some(lines[j].clone())
        })
        .collect();
    let mut rest = lines
        .iter()
        .enumerate()
        .filter(|(j, _)| !taken[*j])
        .map(|(_, l)| l.clone());
    for slot in out.iter_mut().filter(|s| s.is_none()) {
        *slot = rest.next();
    }
    out
}

/// Non-zero stats of the compared families; histograms left out (see the module doc).
fn read_stats(admin: SocketAddr) -> BTreeMap<String, String> {
    let text = e2e::http_get(admin, "/stats?usedonly", &[]).body;
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(n, _)| {
            n.starts_with(STAT_PREFIX)
                || n.starts_with(LISTENER_PREFIX)
                || (n.starts_with("cluster.") && n.contains(".upstream_rq"))
        })
        .filter(|(_, v)| {
            let v = v.trim();
            v != "0" && !v.contains("P0(") && !v.contains("No recorded values")
        })
        .map(|(n, v)| (n.to_owned(), v.trim().to_owned()))
        .collect()
}

fn compare(case: &'static str, i: usize, e: &Observed, l: &Observed, out: &mut Vec<Difference>) {
    let mut diff = |aspect: String, envoy: String, legate: String| {
        if envoy != legate {
            out.push(Difference {
                case,
                request: Some(i),
                aspect,
                envoy,
                legate,
            });
        }
    };
    let show_status = |o: &Observed| match o.status {
        Some(s) => s.to_string(),
        None => format!("no response ({})", o.error),
    };
    // Whether there was a response at all, not how the connection failed.
    let status = |o: &Observed| o.status.map_or("no response".to_owned(), |s| s.to_string());
    if status(e) != status(l) {
        diff("status".into(), show_status(e), show_status(l));
    }
    let names: std::collections::BTreeSet<&String> =
        e.headers.keys().chain(l.headers.keys()).collect();
    for name in names {
        diff(
            format!("response header {name}"),
            show_values(e.headers.get(name)),
            show_values(l.headers.get(name)),
        );
    }
    diff(
        "body".into(),
        format!("{:?}", e.body),
        format!("{:?}", l.body),
    );

    if e.upstream.len() != l.upstream.len() {
        diff(
            "upstream requests".into(),
            e.upstream.len().to_string(),
            l.upstream.len().to_string(),
        );
    }
    for (ue, ul) in e.upstream.iter().zip(&l.upstream) {
        diff(
            "upstream method".into(),
            ue.method.clone(),
            ul.method.clone(),
        );
        diff("upstream path".into(), ue.path.clone(), ul.path.clone());
        diff(
            "upstream version".into(),
            ue.version.clone(),
            ul.version.clone(),
        );
        let names: std::collections::BTreeSet<&String> =
            ue.headers.keys().chain(ul.headers.keys()).collect();
        for name in names {
            diff(
                format!("upstream header {name}"),
                show_values(ue.headers.get(name)),
                show_values(ul.headers.get(name)),
            );
        }
    }

    match (&e.log, &l.log) {
        (Some(le), Some(ll)) => {
            let fields: std::collections::BTreeSet<&&str> = le.keys().chain(ll.keys()).collect();
            for f in fields {
                let show = |m: &BTreeMap<&str, String>| {
                    m.get(*f)
                        .map_or("(not parsed)".to_owned(), |v| format!("{v:?}"))
                };
                diff(format!("log {f}"), show(le), show(ll));
            }
        }
        (le, ll) => {
            let show = |m: &Option<BTreeMap<&str, String>>| {
                m.as_ref()
                    .map_or("no line".to_owned(), |m| format!("{m:?}"))
            };
            diff("log line".into(), show(le), show(ll));
        }
    }
}

fn show_values(v: Option<&Vec<String>>) -> String {
    match v {
        None => "(absent)".to_owned(),
        Some(v) => format!("{v:?}"),
    }
}

fn compare_stats(
    case: &'static str,
    e: &BTreeMap<String, String>,
    l: &BTreeMap<String, String>,
    out: &mut Vec<Difference>,
) {
    let names: std::collections::BTreeSet<&String> = e.keys().chain(l.keys()).collect();
    for name in names {
        let (ve, vl) = (e.get(name), l.get(name));
        let differs = match (ve, vl) {
            (Some(a), Some(b)) => a != b && !name.contains("bytes"),
            (None, None) => false,
            _ => true,
        };
        if differs {
            out.push(Difference {
                case,
                request: None,
                aspect: format!("stat {name}"),
                envoy: ve.cloned().unwrap_or_else(|| "(not touched)".into()),
                legate: vl.cloned().unwrap_or_else(|| "(not touched)".into()),
            });
        }
    }
}
