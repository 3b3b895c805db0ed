//! End-to-end tests of unix domain socket (`pipe`) addresses: listeners serving the HTTP
//! connection manager and tcp_proxy on a socket file, and cluster endpoints (HTTP/1.1, HTTP/2
//! and tcp_proxy) on a socket file or in the abstract namespace. Every expectation is Envoy
//! 1.40's (run with `LEGATE_E2E_PROXY=envoy` to check them against Envoy itself): the
//! listener's path stands for every downstream address in access logs, `x-forwarded-for` gets
//! nothing appended, `mode` is applied to the socket file, a stale file at the path is
//! replaced, and stats and `/listeners` name the listener by its path.

mod e2e;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e::{
    Legate, ScratchDir, Upstream, http_get, parse_response, start_proxy, target_is_envoy, temp_dir,
};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const FILE_LOG: &str = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";

/// A socket path in a fresh directory of its own (short: `sun_path` holds 108 bytes), removed
/// with what the test wrote in it when the directory is dropped.
fn socket_path(tag: &str) -> (ScratchDir, String) {
    let dir = ScratchDir::new(tag);
    let path = socket_in(&dir, "s.sock");
    (dir, path)
}

/// The path of socket file `name` in `dir`, as a config names it.
fn socket_in(dir: &ScratchDir, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_owned()
}

/// Sends one HTTP/1.1 request over the unix socket at `path` and reads the response to its
/// end (`connection: close`).
fn unix_get(path: &str, target: &str, headers: &[(&str, &str)]) -> e2e::RawResponse {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!("GET {target} HTTP/1.1\r\nhost: pipe.test\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw).unwrap_or_else(|| panic!("no response: {raw:?}"))
}

/// Waits until the file at `path` has `lines` lines; returns them.
fn wait_lines(path: &Path, lines: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let got: Vec<String> = text.lines().map(str::to_owned).collect();
        if got.len() >= lines || Instant::now() >= deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn admin_get(proxy: &Legate, target: &str) -> String {
    http_get(proxy.admin.unwrap(), target, &[]).body
}

/// An HTTP/1.1 and HTTP/2 (prior knowledge) upstream on a unix domain socket: it answers
/// every request with 200 and `<version> <path>` and counts them.
struct UnixHttpUpstream {
    requests: Arc<AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

impl UnixHttpUpstream {
    /// `path`: a file path, or '@' and a name in the abstract namespace.
    fn start(path: &str) -> UnixHttpUpstream {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let std_listener = match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
                std::os::unix::net::UnixListener::bind_addr(&addr).unwrap()
            }
            None => std::os::unix::net::UnixListener::bind(path).unwrap(),
        };
        std_listener.set_nonblocking(true).unwrap();
        let listener = {
            let _guard = runtime.enter();
            tokio::net::UnixListener::from_std(std_listener).unwrap()
        };
        let requests: Arc<AtomicUsize> = Arc::default();
        let seen = requests.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        seen.fetch_add(1, Ordering::SeqCst);
                        let body = format!("{:?} {}", req.version(), req.uri().path());
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from(body),
                            )))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        UnixHttpUpstream {
            requests,
            _runtime: runtime,
        }
    }
}

/// A stream upstream that writes `tag`, then echoes until the client ends.
fn echo_conn(mut conn: impl Read + Write, tag: &'static [u8]) {
    let _ = conn.write_all(tag);
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

fn tcp_echo(tag: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                echo_conn(&conn, tag);
                let _ = conn.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

fn unix_echo(path: &str, tag: &'static [u8]) {
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                echo_conn(&conn, tag);
                let _ = conn.shutdown(Shutdown::Write);
            });
        }
    });
}

/// Writes `data` over the unix socket at `path`, ends the write side, reads to the end.
fn unix_exchange(path: &str, data: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(data).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn static_cluster(name: &str, address: &str, extra: &str) -> String {
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
            address: {address}
"#
    )
}

fn tcp_address(addr: SocketAddr) -> String {
    format!(
        "{{socket_address: {{address: {}, port_value: {}}}}}",
        addr.ip(),
        addr.port()
    )
}

fn pipe_address(path: &str) -> String {
    format!("{{pipe: {{path: \"{path}\"}}}}")
}

const ADDRESS_LOG: &str = "R=%DOWNSTREAM_REMOTE_ADDRESS% L=%DOWNSTREAM_LOCAL_ADDRESS% D=%DOWNSTREAM_DIRECT_REMOTE_ADDRESS% RN=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% P=[%DOWNSTREAM_LOCAL_PORT%] U=%UPSTREAM_HOST% UL=%UPSTREAM_LOCAL_ADDRESS%";

/// A config with the listener `ingress` at `address` (with `listener_extra`, e.g. its
/// listener filters) serving HTTP with `use_remote_address`, logging each request in `format`
/// to `log`, routing all to `upstream`.
fn http_on_a_pipe(
    address: &str,
    listener_extra: &str,
    log: &Path,
    format: &str,
    upstream: SocketAddr,
) -> String {
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
  - name: ingress
    address: {address}
{listener_extra}    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM}
          stat_prefix: ingress_http
          use_remote_address: true
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": {FILE_LOG}
              path: {log}
              log_format: {{text_format: "{format}\n"}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            virtual_hosts:
            - name: local
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: web}}
  clusters:
{cluster}"#,
        log = log.display(),
        cluster = static_cluster("web", &tcp_address(upstream), ""),
    )
}

/// HTTP over a pipe listener: a stale regular file at the path is replaced, `mode` is
/// applied, the access log shows the path for every downstream address, `x-forwarded-for`
/// passes through unchanged with `use_remote_address: true` (nothing appended, no
/// `x-envoy-internal`), stats and `/listeners` name the listener by its path.
#[test]
fn http_over_a_pipe_listener() {
    let upstream = Upstream::start();
    let (dir, path) = socket_path("pipe-http");
    std::fs::write(&path, b"stale").unwrap();
    let log = dir.join("access.log");
    let yaml = http_on_a_pipe(
        &format!("{{pipe: {{path: \"{path}\", mode: 384}}}}"),
        "",
        &log,
        &format!("{ADDRESS_LOG} XFF=%REQ(X-FORWARDED-FOR)%"),
        upstream.addr,
    );
    let proxy = start_proxy(&yaml);

    // The stale file was replaced by the socket, with the mode asked for (384 = 0600).
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket(), "{meta:?}");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let r = unix_get(&path, "/a", &[("x-forwarded-for", "192.0.2.7")]);
    assert_eq!(r.status, 200, "{r:?}");
    let seen = upstream.last();
    assert_eq!(seen.header("x-forwarded-for"), Some("192.0.2.7"));
    assert_eq!(seen.header("x-envoy-internal"), None);
    assert_eq!(seen.header("x-envoy-external-address"), None);

    let r = unix_get(&path, "/b", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    let seen = upstream.last();
    assert_eq!(seen.path, "/b");
    assert_eq!(seen.header("x-forwarded-for"), None);
    assert_eq!(seen.header("x-envoy-internal"), None);

    let mut requests = 2;
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--unix-socket",
            ])
            .arg(&path)
            .arg("http://pipe.test/c")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
        assert_eq!(upstream.last().path, "/c");
        requests += 1;
    }

    let up = upstream.addr;
    let lines = wait_lines(&log, requests);
    assert_eq!(lines.len(), requests, "{lines:?}");
    let addresses = format!("R={path} L={path} D={path} RN={path} P=[] U={up} UL=");
    assert!(lines[0].starts_with(&addresses), "{}", lines[0]);
    assert!(lines[0].ends_with(" XFF=192.0.2.7"), "{}", lines[0]);
    assert!(lines[1].starts_with(&addresses), "{}", lines[1]);
    assert!(lines[1].ends_with(" XFF=-"), "{}", lines[1]);

    // Stats are named by the path verbatim (the listener has no stat_prefix).
    assert_eq!(
        proxy.wait_stat(
            &format!("listener.{path}.downstream_cx_total"),
            Duration::from_secs(5),
            |v| v == requests as u64
        ),
        Some(requests as u64)
    );
    assert!(
        admin_get(&proxy, "/listeners").contains(&format!("ingress::{path}\n")),
        "{}",
        admin_get(&proxy, "/listeners")
    );
    let json: serde_json::Value =
        serde_json::from_str(&admin_get(&proxy, "/listeners?format=json")).unwrap();
    assert_eq!(
        json["listener_statuses"][0]["local_address"]["pipe"]["path"],
        serde_json::Value::String(path.clone())
    );
}

/// The PROXY protocol on a pipe listener (a load balancer in front speaking to the proxy over
/// a socket file): the header gives the connection its addresses for the access log and
/// `x-forwarded-for` (the direct peer stays the path); a connection without one is closed
/// and counted.
#[test]
fn proxy_protocol_on_a_pipe_listener() {
    let upstream = Upstream::start();
    let (dir, path) = socket_path("pipe-pp");
    let log = dir.join("access.log");
    let proxy_protocol = r#"    listener_filters:
    - name: envoy.filters.listener.proxy_protocol
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol
"#;
    let yaml = http_on_a_pipe(
        &pipe_address(&path),
        proxy_protocol,
        &log,
        ADDRESS_LOG,
        upstream.addr,
    );
    let proxy = start_proxy(&yaml);
    let exchange = |bytes: &[u8]| {
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(bytes).unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        raw
    };
    let request = b"GET /pp HTTP/1.1\r\nhost: pipe.test\r\nconnection: close\r\n\r\n";
    let mut v1 = b"PROXY TCP4 192.0.2.10 192.0.2.20 5555 80\r\n".to_vec();
    v1.extend_from_slice(request);
    let raw = exchange(&v1);
    let r = parse_response(&raw).unwrap_or_else(|| panic!("no response: {raw:?}"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        upstream.last().header("x-forwarded-for"),
        Some("192.0.2.10")
    );
    // No header: closed without a response.
    assert_eq!(exchange(request), b"");
    let lines = wait_lines(&log, 1);
    let up = upstream.addr;
    let addresses = format!(
        "R=192.0.2.10:5555 L=192.0.2.20:80 D={path} RN=192.0.2.10 P=[80] U={up} UL=127.0.0.1:"
    );
    assert!(lines[0].starts_with(&addresses), "{lines:?}");
    for (stat, value) in [
        ("proxy_proto.versions.v1.found", 1),
        ("proxy_proto.not_found_disallowed", 1),
        ("downstream_cx_proxy_proto_error", 1),
    ] {
        assert_eq!(
            proxy.wait_stat(stat, Duration::from_secs(5), |v| v == value),
            Some(value),
            "{stat}"
        );
    }
}

/// tcp_proxy on pipe listeners, to a TCP upstream and to an upstream on a socket file: the
/// bytes go through both ways; the access log shows the listener's path downstream, the
/// upstream's path for `%UPSTREAM_HOST%` and `-` for `%UPSTREAM_LOCAL_ADDRESS%`; `/clusters`
/// names the pipe host by its path.
#[test]
fn tcp_proxy_over_pipes() {
    let tcp_up = tcp_echo(b"tcp:");
    let (dir, to_tcp) = socket_path("pipe-l4");
    let to_pipe = socket_in(&dir, "p.sock");
    let up_path = socket_in(&dir, "up.sock");
    unix_echo(&up_path, b"unix:");
    let log = dir.join("tcp.log");
    let listener = |name: &str, path: &str, cluster: &str| {
        format!(
            r#"  - name: {name}
    address: {{pipe: {{path: "{path}"}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": {TCP_PROXY}
          stat_prefix: {name}
          cluster: {cluster}
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": {FILE_LOG}
              path: {log}
              log_format: {{text_format: "{name} {ADDRESS_LOG}\n"}}
"#,
            log = log.display()
        )
    };
    let yaml = format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
{a}{b}  clusters:
{c1}{c2}"#,
        a = listener("to_tcp", &to_tcp, "tcp_up"),
        b = listener("to_pipe", &to_pipe, "pipe_up"),
        c1 = static_cluster("tcp_up", &tcp_address(tcp_up), ""),
        c2 = static_cluster("pipe_up", &pipe_address(&up_path), ""),
    );
    let proxy = start_proxy(&yaml);
    assert_eq!(unix_exchange(&to_tcp, b"hello"), b"tcp:hello");
    let lines = wait_lines(&log, 1);
    // The upstream connection's local address is an ephemeral loopback port.
    let first = format!(
        "to_tcp R={to_tcp} L={to_tcp} D={to_tcp} RN={to_tcp} P=[] U={tcp_up} UL=127.0.0.1:"
    );
    assert!(
        lines.first().is_some_and(|l| l.starts_with(&first)),
        "{lines:?}"
    );
    assert_eq!(unix_exchange(&to_pipe, b"world"), b"unix:world");
    let lines = wait_lines(&log, 2);
    assert_eq!(
        lines.get(1).map(String::as_str),
        Some(
            format!(
                "to_pipe R={to_pipe} L={to_pipe} D={to_pipe} RN={to_pipe} P=[] U={up_path} UL=-"
            )
            .as_str()
        ),
        "{lines:?}"
    );
    let clusters = admin_get(&proxy, "/clusters");
    assert!(
        clusters.contains(&format!("pipe_up::{up_path}::cx_total::1\n")),
        "{clusters}"
    );
    assert_eq!(
        proxy.stat(&format!("listener.{to_pipe}.downstream_cx_total")),
        Some(1)
    );
}

/// A PROXY header to an endpoint on a unix socket names the downstream connection, as Envoy
/// writes it: tcp_proxy from a TCP listener to a pipe endpoint (version 1). From a pipe
/// listener to a pipe endpoint there are no addresses to name: Legate sends version 2's
/// `LOCAL` header (Envoy 1.40 crashes on that config; that part runs against Legate only).
#[test]
fn proxy_protocol_to_a_pipe_endpoint() {
    let (dir, pipe_in) = socket_path("pipe-pp");
    let up_path = socket_in(&dir, "up.sock");
    unix_echo(&up_path, b"");
    let proxy_protocol = |version: &str| {
        format!(
            r#"    transport_socket:
      name: envoy.transport_sockets.upstream_proxy_protocol
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport
        config: {{version: {version}}}
        transport_socket: {{name: envoy.transport_sockets.raw_buffer, typed_config: {{"@type": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer}}}}"#
        )
    };
    let listener = |name: &str, address: &str, cluster: &str| {
        format!(
            r#"  - name: {name}
    address: {address}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": {TCP_PROXY}
          stat_prefix: {name}
          cluster: {cluster}
"#
        )
    };
    let (mut listeners, mut clusters) = (
        listener(
            "tcp_in",
            "{socket_address: {address: 127.0.0.1, port_value: 0}}",
            "v1",
        ),
        static_cluster("v1", &pipe_address(&up_path), &proxy_protocol("V1")),
    );
    if !target_is_envoy() {
        listeners += &listener("pipe_in", &pipe_address(&pipe_in), "v2");
        clusters += &static_cluster("v2", &pipe_address(&up_path), &proxy_protocol("V2"));
    }
    let proxy = start_proxy(&format!(
        "admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}\nstatic_resources:\n  listeners:\n{listeners}  clusters:\n{clusters}"
    ));
    let tcp_in = proxy.listeners["tcp_in"];
    let mut s = std::net::TcpStream::connect(tcp_in).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let client = s.local_addr().unwrap();
    s.write_all(b"hello").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut echoed = Vec::new();
    let _ = s.read_to_end(&mut echoed);
    let header = format!(
        "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
        client.port(),
        tcp_in.port()
    );
    assert_eq!(String::from_utf8_lossy(&echoed), format!("{header}hello"));
    if !target_is_envoy() {
        let mut local = b"\r\n\r\n\0\r\nQUIT\n\x20\0\0\0".to_vec();
        local.extend_from_slice(b"world");
        assert_eq!(unix_exchange(&pipe_in, b"world"), local);
    }
}

/// The network RBAC filter on a pipe listener: a connection over a unix socket has no IP or
/// port, so no rule on them matches — an IP principal denies it, a port permission under `not`
/// allows it — as in Envoy.
#[test]
fn network_rbac_on_a_pipe_listener() {
    let (dir, by_ip) = socket_path("pipe-rbac");
    let not_port = socket_in(&dir, "p.sock");
    let listener = |name: &str, path: &str, policy: &str| {
        format!(
            r#"  - name: {name}
    address: {{pipe: {{path: "{path}"}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.rbac
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: {name}.
          rules:
            action: ALLOW
            policies:
              p: {policy}
      - name: envoy.filters.network.echo
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo}}
"#
        )
    };
    let yaml = format!(
        "admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}\nstatic_resources:\n  listeners:\n{}{}",
        listener(
            "by_ip",
            &by_ip,
            "{permissions: [{any: true}], principals: [{remote_ip: {address_prefix: 0.0.0.0, prefix_len: 0}}]}"
        ),
        listener(
            "not_port",
            &not_port,
            "{permissions: [{not_rule: {destination_port: 80}}], principals: [{any: true}]}"
        ),
    );
    let proxy = start_proxy(&yaml);
    // Without a half-close: Envoy's echo may close on the client's FIN before it has echoed.
    let echoed = |path: &str, data: &[u8]| {
        let mut s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // A denied connection may be closed before the write.
        let _ = s.write_all(data);
        let mut got = vec![0u8; data.len()];
        let mut n = 0;
        while n < got.len() {
            match s.read(&mut got[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        got.truncate(n);
        got
    };
    assert_eq!(echoed(&by_ip, b"denied?"), b"");
    assert_eq!(echoed(&not_port, b"allowed"), b"allowed");
    for (name, want) in [
        ("by_ip.rbac.denied", 1),
        ("by_ip.rbac.allowed", 0),
        ("not_port.rbac.allowed", 1),
        ("not_port.rbac.denied", 0),
    ] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while proxy.stat(name) != Some(want) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(proxy.stat(name), Some(want), "{name}");
    }
}

/// Filter chain matching on a pipe listener, as Envoy does it: a connection over a unix
/// socket has no port or IP address, so only chains that leave those criteria unset match,
/// and it counts as `SAME_IP_OR_LOOPBACK`. A PROXY header gives it the addresses it names,
/// matched as on TCP. (Envoy 1.40 answers those erratically on a pipe listener — resets, or
/// closes without the chain's reply, where the same chains on TCP answer — so the PROXY cases
/// run against Legate only.)
#[test]
fn filter_chains_match_on_a_pipe_listener() {
    let (dir, plain) = socket_path("pipe-fcm");
    let proxied = socket_in(&dir, "p.sock");
    let chain = |m: &str, reply: &str| {
        format!(
            r#"    - filter_chain_match: {m}
      filters:
      - name: envoy.filters.network.direct_response
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.direct_response.v3.Config
          response: {{inline_string: {reply}}}
"#
        )
    };
    let chains = [
        chain("{destination_port: 80}", "port"),
        chain(
            "{prefix_ranges: [{address_prefix: 127.0.0.0, prefix_len: 8}]}",
            "destination",
        ),
        chain(
            "{source_prefix_ranges: [{address_prefix: 10.0.0.0, prefix_len: 8}]}",
            "source",
        ),
        chain("{source_type: EXTERNAL}", "external"),
        chain("{source_type: SAME_IP_OR_LOOPBACK}", "local"),
    ]
    .concat();
    let yaml = format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
  - name: plain
    address: {{pipe: {{path: "{plain}"}}}}
    filter_chains:
{chains}  - name: proxied
    address: {{pipe: {{path: "{proxied}"}}}}
    listener_filters:
    - name: envoy.filters.listener.proxy_protocol
      typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol}}
    filter_chains:
{chains}"#
    );
    let _proxy = start_proxy(&yaml);
    assert_eq!(unix_exchange(&plain, b""), b"local");
    if !target_is_envoy() {
        // From 192.0.2.9 to 127.0.0.1:80, by the PROXY header: the destination port first.
        let header = b"PROXY TCP4 192.0.2.9 127.0.0.1 5000 80\r\n";
        assert_eq!(unix_exchange(&proxied, header), b"port");
        // From 10.1.2.3 to 192.0.2.1:443: the source type comes before the source ranges.
        let header = b"PROXY TCP4 10.1.2.3 192.0.2.1 5000 443\r\n";
        assert_eq!(unix_exchange(&proxied, header), b"external");
        // From 192.0.2.9 to 127.0.0.1:443: the destination range.
        let header = b"PROXY TCP4 192.0.2.9 127.0.0.1 5000 443\r\n";
        assert_eq!(unix_exchange(&proxied, header), b"destination");
    }
}

/// The admin server on a unix socket, as Envoy serves it: the endpoints answer over the socket
/// file, whose `mode` is applied, and the admin access log shows the path for the peer. (Runs
/// against Legate only: the harness finds Envoy's listeners through a TCP admin address.)
#[test]
fn admin_on_a_pipe() {
    if target_is_envoy() {
        return;
    }
    let (dir, path) = socket_path("pipe-admin");
    let log = dir.join("admin.log");
    let proxy = Legate::start(&format!(
        r#"admin:
  address: {{pipe: {{path: "{path}", mode: 384}}}}
  access_log:
  - name: envoy.access_loggers.file
    typed_config:
      "@type": {FILE_LOG}
      path: {log}
      log_format: {{text_format: "%REQ(:PATH)% %RESPONSE_CODE% R=%DOWNSTREAM_REMOTE_ADDRESS% L=%DOWNSTREAM_LOCAL_ADDRESS%\n"}}
static_resources:
  listeners:
  - name: echo
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.echo
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo}}
"#,
        log = log.display()
    ));
    assert!(proxy.admin.is_none());
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let r = unix_get(&path, "/ready", &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "LIVE\n"), "{r:?}");
    let r = unix_get(&path, "/listeners", &[]);
    assert!(r.body.contains("echo::127.0.0.1:"), "{r:?}");
    let lines = wait_lines(&log, 2);
    assert_eq!(
        lines,
        [
            format!("/ready 200 R={path} L={path}"),
            format!("/listeners 200 R={path} L={path}")
        ]
    );
}

/// HTTP clusters whose endpoint is a unix socket: HTTP/1.1 to a socket file, HTTP/2 to a
/// name in the abstract namespace, from a TCP listener; `%UPSTREAM_HOST%` is the path and
/// `%UPSTREAM_LOCAL_ADDRESS%` is `-`.
#[test]
fn http_clusters_on_pipes() {
    let (dir, h1_path) = socket_path("pipe-up");
    let h1 = UnixHttpUpstream::start(&h1_path);
    let h2_name = format!("@legate-e2e-{}-{}", std::process::id(), fastrand_tag());
    let h2 = UnixHttpUpstream::start(&h2_name);
    let log = dir.join("http.log");
    let yaml = format!(
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
          "@type": {HCM}
          stat_prefix: ingress_http
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": {FILE_LOG}
              path: {log}
              log_format: {{text_format: "%REQ(:PATH)% U=%UPSTREAM_HOST% UL=%UPSTREAM_LOCAL_ADDRESS%\n"}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            virtual_hosts:
            - name: local
              domains: ["*"]
              routes:
              - match: {{prefix: "/h1"}}
                route: {{cluster: h1}}
              - match: {{prefix: "/h2"}}
                route: {{cluster: h2}}
  clusters:
{c1}{c2}"#,
        log = log.display(),
        c1 = static_cluster("h1", &pipe_address(&h1_path), ""),
        c2 = static_cluster("h2", &pipe_address(&h2_name), e2e::H2_UPSTREAM),
    );
    let proxy = start_proxy(&yaml);
    let at = proxy.addr("ingress");
    let r = http_get(at, "/h1", &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "HTTP/1.1 /h1"), "{r:?}");
    let r = http_get(at, "/h2", &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "HTTP/2.0 /h2"), "{r:?}");
    for upstream in [&h1, &h2] {
        assert_eq!(upstream.requests.load(Ordering::SeqCst), 1);
    }
    assert_eq!(
        wait_lines(&log, 2),
        [
            format!("/h1 U={h1_path} UL=-"),
            format!("/h2 U={h2_name} UL=-")
        ]
    );
    let clusters = admin_get(&proxy, "/clusters");
    assert!(
        clusters.contains(&format!("h1::{h1_path}::rq_total::1\n")),
        "{clusters}"
    );
    assert!(
        clusters.contains(&format!("h2::{h2_name}::rq_total::1\n")),
        "{clusters}"
    );
}

fn fastrand_tag() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish() as u32
}

/// `--mode validate` of the proxy under test: its output when the config is refused, else "".
fn validate(yaml: &str) -> String {
    let dir = temp_dir("pipe-validate");
    let file = dir.join("config.yaml");
    std::fs::write(&file, yaml).unwrap();
    let binary = if target_is_envoy() {
        e2e::envoy_binary()
    } else {
        PathBuf::from(env!("CARGO_BIN_EXE_legate"))
    };
    let out = std::process::Command::new(binary)
        .args(["--mode", "validate", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    if out.status.success() {
        String::new()
    } else {
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
    }
}

/// A pipe with an empty path is refused, naming the field; a valid one validates. (Legate
/// also refuses `mode` on an abstract name, as Envoy does at bind time, and two listeners on
/// one path.)
#[test]
fn bad_pipe_configs_are_refused_with_their_path() {
    let config = |address: &str, chain_extra: &str, listener_extra: &str| {
        format!(
            r#"static_resources:
  listeners:
  - name: l
    address: {address}
{listener_extra}    filter_chains:
    - filters:
      - name: envoy.filters.network.echo
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo}}
{chain_extra}"#
        )
    };
    let out = validate(&config(
        "{pipe: {path: \"/tmp/legate-valid.sock\"}}",
        "",
        "",
    ));
    assert_eq!(out, "");
    // Listener filters run on a pipe listener's connections.
    let filters = r#"    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}
"#;
    let out = validate(&config("{pipe: {path: \"/tmp/x.sock\"}}", "", filters));
    assert_eq!(out, "");
    let out = validate(&config("{pipe: {path: \"\"}}", "", ""));
    if target_is_envoy() {
        assert!(out.contains("PipeValidationError.Path"), "{out}");
    } else {
        assert!(
            out.contains("static_resources.listeners[0].address.pipe.path"),
            "{out}"
        );
        let out = validate(&config("{pipe: {path: \"@abstract\", mode: 384}}", "", ""));
        assert!(
            out.contains("static_resources.listeners[0].address.pipe.mode"),
            "{out}"
        );
        // Two listeners on one path: the second bind would replace the first one's socket.
        let one = config("{pipe: {path: \"/tmp/legate-twice.sock\"}}", "", "");
        let second = one
            .split_once("  listeners:\n")
            .map(|(_, l)| l.replace("- name: l\n", "- name: l2\n"))
            .unwrap_or_default();
        let out = validate(&format!("{one}{second}"));
        assert!(
            out.contains("static_resources.listeners[1]")
                && out.contains("has duplicate address '/tmp/legate-twice.sock'"),
            "{out}"
        );
    }
}
