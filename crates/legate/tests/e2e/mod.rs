//! The end-to-end harness: a real upstream server (HTTP/1.1 and h2c) that echoes what it
//! received, the real `legate` binary started on a YAML config with ephemeral ports, and real
//! HTTP clients.

#![allow(dead_code)]

pub mod dynamic;
mod extra;
#[allow(unused_imports)]
pub use extra::*;

#[path = "../common/scratch.rs"]
mod scratch;
#[allow(unused_imports)]
pub use scratch::{ScratchDir, temp_dir};

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// An upstream test server. Paths:
/// * `/status/N` answers N; `/delay/MS` waits MS ms first; `/bytes/N` streams N bytes;
/// * `/chunks/N/MS[/FIRST]` streams N chunks `chunk-<i>\n`, MS ms apart (headers at once, the
///   first chunk after FIRST ms, at once by default);
/// * `/headers/N` answers with N headers `x-<i>` of 1,000 bytes each;
/// * `/echo-stream` streams the request body back frame by frame as it arrives;
/// * `/trailers` answers `trailers` with the response trailer `x-upstream-trailer: done`;
/// * anything else answers 200 with a JSON echo of the request (method, path, headers, body
///   length, protocol version).
pub struct Upstream {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Echo>>>,
    /// TCP connections accepted so far.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    /// Requests being answered now, and the most at once.
    pub in_flight: Arc<InFlight>,
    _runtime: tokio::runtime::Runtime,
}

#[derive(Clone, Debug)]
pub struct Echo {
    pub method: String,
    pub path: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    /// The request's trailers (HTTP/2, or HTTP/1.1 chunked).
    pub trailers: Vec<(String, String)>,
}

impl Echo {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Upstream {
    pub fn start() -> Upstream {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<Echo>>> = Arc::default();
        let seen = requests.clone();
        let connections: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let accepted = connections.clone();
        let in_flight: Arc<InFlight> = Arc::default();
        let flight = in_flight.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let seen = seen.clone();
                let flight = flight.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let seen = seen.clone();
                        let flight = flight.clone();
                        async move {
                            let _counted = flight.enter();
                            respond(req, seen).await
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            requests,
            connections,
            in_flight,
            _runtime: runtime,
        }
    }

    pub fn last(&self) -> Echo {
        self.requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw no request")
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A count of requests in progress and its peak.
#[derive(Debug, Default)]
pub struct InFlight {
    now: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
}

impl InFlight {
    fn enter(self: &Arc<Self>) -> InFlightGuard {
        let now = self.now.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        self.peak
            .fetch_max(now, std::sync::atomic::Ordering::SeqCst);
        InFlightGuard(self.clone())
    }

    pub fn peak(&self) -> usize {
        self.peak.load(std::sync::atomic::Ordering::SeqCst)
    }
}

struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn respond(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Echo>>>,
) -> Result<Response<TestBody>, Infallible> {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let version = format!("{:?}", req.version());
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let upgrade = req.headers().contains_key("upgrade");
    if path == "/echo-stream" {
        return Ok(echo_stream(req));
    }
    let mut req = req;
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (body, trailers) = match req.into_body().collect().await {
        Ok(collected) => {
            let trailers: Vec<(String, String)> = collected
                .trailers()
                .map(|t| {
                    t.iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            (collected.to_bytes(), trailers)
        }
        Err(_) => (Bytes::new(), Vec::new()),
    };
    let echo = Echo {
        method,
        path: path.clone(),
        version,
        headers,
        body_len: body.len(),
        trailers,
    };
    seen.lock().unwrap().push(echo.clone());
    if let Some(on_upgrade) = on_upgrade {
        // Echo every byte back once upgraded.
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        return Ok(Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Full::new(Bytes::new()).boxed())
            .unwrap());
    }
    let mut parts = path.trim_start_matches('/').splitn(3, '/');
    match (parts.next(), parts.next()) {
        (Some("status"), Some(code)) => {
            let code: u16 = code.parse().unwrap_or(500);
            return Ok(Response::builder()
                .status(code)
                .body(Full::new(Bytes::from("status")).boxed())
                .unwrap());
        }
        (Some("headers"), Some(n)) => {
            let mut response = Response::builder();
            for i in 0..n.parse().unwrap_or(0) {
                response = response.header(format!("x-{i}"), "v".repeat(1000));
            }
            return Ok(response.body(Full::new(Bytes::from("ok")).boxed()).unwrap());
        }
        (Some("delay"), Some(ms)) => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        }
        (Some("trailers"), None) => {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-upstream-trailer", http::HeaderValue::from_static("done"));
            let frames = vec![
                Ok::<_, Infallible>(Frame::data(Bytes::from("trailers"))),
                Ok(Frame::trailers(trailers)),
            ];
            return Ok(Response::builder()
                .body(StreamBody::new(futures_util::stream::iter(frames)).boxed())
                .unwrap());
        }
        (Some("chunks"), Some(n)) => {
            let n: usize = n.parse().unwrap_or(0);
            let mut delays = parts.next().unwrap_or("").split('/');
            let mut delay = || delays.next().and_then(|ms| ms.parse().ok()).unwrap_or(0u64);
            let (ms, first) = (delay(), delay());
            let stream = futures_util::stream::unfold(0usize, move |i| async move {
                if i >= n {
                    return None;
                }
                let wait = if i > 0 { ms } else { first };
                if wait > 0 {
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                let frame = Frame::data(Bytes::from(format!("chunk-{i}\n")));
                Some((Ok::<_, Infallible>(frame), i + 1))
            });
            return Ok(Response::builder()
                .body(StreamBody::new(stream).boxed())
                .unwrap());
        }
        (Some("bytes"), Some(n)) => {
            let total: u64 = n.parse().unwrap_or(0);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures_stream(total, chunk);
            return Ok(Response::builder()
                .header("content-length", total.to_string())
                .body(StreamBody::new(stream).boxed())
                .unwrap());
        }
        _ => {}
    }
    let json = serde_json::json!({
        "method": echo.method,
        "path": echo.path,
        "body_len": echo.body_len,
        "headers": echo.headers.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
    });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .header("x-upstream", "echo")
        .body(Full::new(Bytes::from(json.to_string())).boxed())
        .unwrap())
}

/// `/echo-stream`: every request body frame is sent back as soon as it arrives.
fn echo_stream(req: Request<Incoming>) -> Response<TestBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let mut body = req.into_body();
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data()
                && tx.send(data).await.is_err()
            {
                break;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let data = rx.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(data)), rx))
    });
    Response::builder()
        .header("x-upstream", "echo-stream")
        .body(StreamBody::new(stream).boxed())
        .unwrap()
}

/// `total` bytes in 64 KiB frames, produced lazily.
fn futures_stream(
    total: u64,
    chunk: Bytes,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    futures_util::stream::unfold(total, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = left.min(chunk.len() as u64);
            Some((Ok(Frame::data(chunk.slice(..n as usize))), left - n))
        }
    })
}

/// A running `legate`.
pub struct Legate {
    child: Child,
    pub listeners: HashMap<String, SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub log: Arc<Mutex<Vec<String>>>,
    pub dir: PathBuf,
}

impl Legate {
    /// Starts legate on `yaml` (listeners and admin should use port 0) and waits until every
    /// listener and the admin port are reported.
    pub fn start(yaml: &str) -> Legate {
        Self::start_with(yaml, &[])
    }

    pub fn start_with(yaml: &str, args: &[&str]) -> Legate {
        let mut all = vec!["--concurrency", "2", "-l", "info"];
        all.extend_from_slice(args);
        Self::try_start_args(yaml, &all).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts legate on `yaml` with exactly `args` (besides `-c`; they must keep the log level
    /// at `info` or lower, as the bound ports are read from the log). Fails, with legate's
    /// output, when the process exits (a refused config) or does not start within 20 s.
    pub fn try_start_args(yaml: &str, args: &[&str]) -> Result<Legate, String> {
        let dir = temp_dir("run");
        let config = dir.join("config.yaml");
        std::fs::write(&config, yaml.replace("{dir}", dir.to_str().unwrap())).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_legate"));
        cmd.arg("-c").arg(&config).args(args);
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().expect("start legate");
        let stderr = child.stderr.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let (tx, rx) = mpsc::channel();
        for reader in [Box::new(stderr) as Box<dyn Read + Send>, Box::new(stdout)] {
            let log = log.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(reader).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        drop(tx);
        // A UDP listener has no filter chain: tests give each one a `udp_listener_config`.
        let expected =
            yaml.matches("filter_chains:").count() + yaml.matches("udp_listener_config:").count();
        let wants_admin = yaml.contains("admin:");
        let mut listeners = HashMap::new();
        // Unix domain socket listeners, by name: tests know their paths.
        let mut pipes = std::collections::HashSet::new();
        let mut admin = None;
        let mut admin_seen = false;
        let deadline = Instant::now() + Duration::from_secs(20);
        let fail = |child: &mut Child, why: &str| {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&dir);
            Err(format!(
                "legate {why}; its output:\n{}",
                log.lock().unwrap().join("\n")
            ))
        };
        while listeners.len() + pipes.len() < expected || (wants_admin && !admin_seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return fail(&mut child, "did not start in time");
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Both output streams closed: the process is gone.
                    let _ = child.wait();
                    return fail(&mut child, "exited before it was ready");
                }
            };
            if let Some(rest) = line.split("listener '").nth(1)
                && let Some((name, tail)) = rest.split_once("' listening on ")
            {
                let addr = tail.split_whitespace().next().unwrap();
                if let Ok(addr) = addr.parse() {
                    listeners.insert(name.to_owned(), addr);
                } else {
                    pipes.insert(name.to_owned());
                }
            }
            // (A path for an admin server on a unix socket: tests know it.)
            if let Some(tail) = line.split("admin address: ").nth(1) {
                admin_seen = true;
                admin = tail.trim().parse().ok();
            }
        }
        Ok(Legate {
            child,
            listeners,
            admin,
            log,
            dir,
        })
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.listeners[listener]
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        send_signal(self.pid(), signal);
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn output(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// A stat's value from the admin `/stats` text.
    pub fn stat(&self, name: &str) -> Option<u64> {
        let text = http_get(self.admin.expect("no admin"), "/stats", &[]).body;
        text.lines().find_map(|l| {
            let (n, v) = l.split_once(": ")?;
            (n == name).then(|| v.trim().parse().ok()).flatten()
        })
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Sends `signal` to a process this test started.
pub fn send_signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc_kill(pid, signal);
    }
}

pub const SIGTERM: i32 = 15;
pub const SIGUSR1: i32 = 10;

impl Drop for Legate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A response read by the raw HTTP/1.1 client.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), read to the end.
pub fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> RawResponse {
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: example.com\r\nconnection: close\r\n");
    for (k, v) in headers {
        if k.eq_ignore_ascii_case("host") {
            req = req.replace("host: example.com\r\n", "");
        }
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw_request(addr, req.as_bytes())
}

pub fn http_post(addr: SocketAddr, path: &str) -> RawResponse {
    raw_request(
        addr,
        format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
        )
        .as_bytes(),
    )
}

/// Sends raw bytes and parses the (first) response until the connection closes.
pub fn raw_request(addr: SocketAddr, bytes: &[u8]) -> RawResponse {
    let raw = raw_exchange(addr, bytes, Duration::from_secs(10));
    parse_response(&raw)
        .unwrap_or_else(|| panic!("no HTTP response in {:?}", String::from_utf8_lossy(&raw)))
}

/// Sends raw bytes and returns everything read until the peer closes (or `timeout`).
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(timeout)).unwrap();
    let _ = stream.write_all(bytes);
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

pub fn parse_response(raw: &[u8]) -> Option<RawResponse> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A hyper client for HTTP/1.1 or h2c prior knowledge, on its own runtime.
pub struct Client {
    runtime: tokio::runtime::Runtime,
    h2: bool,
}

pub struct ClientResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

impl Client {
    pub fn h1() -> Self {
        Self::new(false)
    }

    pub fn h2c() -> Self {
        Self::new(true)
    }

    fn new(h2: bool) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Client { runtime, h2 }
    }

    pub fn get(&self, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> ClientResponse {
        self.request(addr, "GET", path, headers, Bytes::new())
    }

    pub fn request(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> ClientResponse {
        let h2 = self.h2;
        self.runtime.block_on(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let io = TokioIo::new(stream);
            let mut builder = Request::builder().method(method);
            if h2 {
                builder = builder.uri(format!("http://example.com{path}"));
            } else {
                builder = builder.uri(path).header("host", "example.com");
            }
            for (k, v) in headers {
                builder = builder.header(*k, *v);
            }
            let req = builder.body(Full::new(body)).unwrap();
            let response = if h2 {
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .unwrap();
                tokio::spawn(conn);
                sender.send_request(req).await.unwrap()
            } else {
                let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
                tokio::spawn(conn);
                sender.send_request(req).await.unwrap()
            };
            let status = response.status().as_u16();
            let version = response.version();
            let headers = response.headers().clone();
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            ClientResponse {
                status,
                headers,
                body,
                version,
            }
        })
    }
}

/// A config with one HTTP listener (named `ingress`, port 0), an admin port, the given
/// virtual-host routes and clusters (YAML fragments indented as in a bootstrap).
pub fn front_proxy(routes: &str, clusters: &str, hcm_extra: &str) -> String {
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
{hcm_extra}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            name: local_route
            virtual_hosts:
            - name: local
              domains: ["*"]
              routes:
{routes}
  clusters:
{clusters}
"#
    )
}

/// A STATIC cluster YAML fragment.
pub fn cluster(name: &str, addr: SocketAddr, extra: &str) -> String {
    format!(
        r#"  - name: {name}
    connect_timeout: 1s
    type: STATIC
{extra}
    load_assignment:
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
}

/// An h2 upstream cluster option block.
pub const H2_UPSTREAM: &str = r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}"#;
