//! End-to-end tests of UDP listeners and the UDP proxy (`envoy.filters.udp_listener.udp_proxy`)
//! with real UDP echo upstreams on loopback: datagrams both ways, one session (and one
//! upstream source port) per client, the idle timeout, datagram size limits, and the stat
//! values after a fixed exchange. They run against Envoy 1.40 too (`LEGATE_E2E_PROXY=envoy`),
//! except where a test's comment says it is Legate-only.

mod e2e;

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::{Legate, start_proxy, target_is_envoy};

/// A UDP upstream that sends every datagram back to its sender and remembers the senders.
struct UdpEcho {
    addr: SocketAddr,
    sources: Arc<Mutex<Vec<SocketAddr>>>,
}

/// A UDP upstream that answers every datagram with its `tag` (to tell which host a session
/// reached).
fn tagged_echo(tag: &'static [u8]) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 2048];
        while let Ok((_, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(tag, from);
        }
    });
    addr
}

impl UdpEcho {
    fn start() -> UdpEcho {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let sources: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
        let seen = sources.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                seen.lock().unwrap().push(from);
                let _ = socket.send_to(&buf[..n], from);
            }
        });
        UdpEcho { addr, sources }
    }

    /// The distinct source addresses (one per proxy session) seen so far.
    fn distinct_sources(&self) -> BTreeSet<SocketAddr> {
        self.sources.lock().unwrap().iter().copied().collect()
    }
}

fn client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

/// Sends `data` to `to` and waits for the answer (`None`: none within the timeout).
fn round_trip(s: &UdpSocket, to: SocketAddr, data: &[u8]) -> Option<Vec<u8>> {
    s.send_to(data, to).unwrap();
    let mut buf = vec![0u8; 65536];
    match s.recv_from(&mut buf) {
        Ok((n, _)) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

/// The `on_no_match` route form of Envoy's examples.
fn matcher_route(cluster: &str) -> String {
    format!(
        r#"        matcher:
          on_no_match:
            action:
              name: route
              typed_config:
                '@type': type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route
                cluster: {cluster}
"#
    )
}

/// A bootstrap with one UDP listener `udp_in` whose proxy has `proxy` (route and options,
/// indented for the UdpProxyConfig) and listener options `udp_listener_config`.
fn bootstrap(udp_listener_config: &str, proxy: &str, clusters: &str) -> String {
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
  - name: udp_in
    address:
      socket_address: {{protocol: UDP, address: 127.0.0.1, port_value: 0}}
    udp_listener_config: {udp_listener_config}
    listener_filters:
    - name: envoy.filters.udp_listener.udp_proxy
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig
        stat_prefix: svc
{proxy}  clusters:
{clusters}"#
    )
}

fn cluster(name: &str, addr: SocketAddr) -> String {
    e2e::cluster(name, addr, "")
}

/// Polls a stat until it has `want` (or 5 s pass); returns the last value.
fn settle(proxy: &Legate, name: &str, want: u64) -> Option<u64> {
    proxy.wait_stat(name, Duration::from_secs(5), |v| v == want)
}

/// How many of `pid`'s descriptors are UDP sockets. (Counting every descriptor raced with
/// the proxy's own short-lived ones: the admin connection a stats poll just closed, the
/// `/proc/self/statm` it reads each second.)
fn udp_descriptors(pid: i32) -> usize {
    let udp = std::fs::read_to_string("/proc/net/udp").unwrap()
        + &std::fs::read_to_string("/proc/net/udp6").unwrap_or_default();
    // Each socket's line: `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...`.
    let inodes: BTreeSet<&str> = udp
        .lines()
        .filter_map(|line| line.split_whitespace().nth(9))
        .collect();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| {
            let target = target.to_string_lossy();
            target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                .is_some_and(|inode| inodes.contains(inode))
        })
        .count()
}

#[test]
fn datagrams_round_trip_with_a_session_per_client_and_envoys_stats() {
    let echo = UdpEcho::start();
    let proxy = start_proxy(&bootstrap(
        "{}",
        &matcher_route("udp_up"),
        &cluster("udp_up", echo.addr),
    ));
    let to = proxy.addr("udp_in");
    let a = client();
    let b = client();
    assert_eq!(round_trip(&a, to, b"hello").as_deref(), Some(&b"hello"[..]));
    assert_eq!(
        round_trip(&a, to, b"world!").as_deref(),
        Some(&b"world!"[..])
    );
    assert_eq!(round_trip(&b, to, b"abc").as_deref(), Some(&b"abc"[..]));
    // One upstream socket per client: the upstream sees two source ports.
    assert_eq!(echo.distinct_sources().len(), 2, "{:?}", echo.sources);

    // The values Envoy 1.40 shows after this exchange (14 bytes each way, 3 datagrams, two
    // sessions still open); UDP sessions count no upstream connection.
    let expected: &[(&str, u64)] = &[
        ("udp.svc.downstream_sess_total", 2),
        ("udp.svc.downstream_sess_active", 2),
        ("udp.svc.downstream_sess_rx_bytes", 14),
        ("udp.svc.downstream_sess_rx_datagrams", 3),
        ("udp.svc.downstream_sess_tx_bytes", 14),
        ("udp.svc.downstream_sess_tx_datagrams", 3),
        ("udp.svc.downstream_sess_rx_errors", 0),
        ("udp.svc.downstream_sess_tx_errors", 0),
        ("udp.svc.downstream_sess_no_route", 0),
        ("udp.svc.idle_timeout", 0),
        ("cluster.udp_up.udp.sess_rx_datagrams", 3),
        ("cluster.udp_up.udp.sess_tx_datagrams", 3),
        ("cluster.udp_up.udp.sess_rx_errors", 0),
        ("cluster.udp_up.udp.sess_tx_errors", 0),
        ("cluster.udp_up.udp.sess_rx_datagrams_dropped", 0),
        ("cluster.udp_up.upstream_cx_tx_bytes_total", 14),
        ("cluster.udp_up.upstream_cx_rx_bytes_total", 14),
        ("cluster.udp_up.upstream_cx_total", 0),
        ("cluster.udp_up.upstream_cx_active", 0),
        ("cluster.udp_up.upstream_cx_none_healthy", 0),
        ("listener.127.0.0.1_0.udp.downstream_rx_datagram_dropped", 0),
        ("listener.127.0.0.1_0.downstream_cx_total", 0),
    ];
    let mut wrong = Vec::new();
    for (name, want) in expected {
        let got = settle(&proxy, name, *want);
        if got != Some(*want) {
            wrong.push(format!("{name}: {got:?}, expected {want}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // A session holds two descriptors in Legate (the socket to its host, and a plain handle
    // on it to send and receive on); Envoy holds one.
    if !e2e::target_is_envoy() {
        let fds = || udp_descriptors(proxy.pid());
        let before = fds();
        let clients: Vec<UdpSocket> = (0..10).map(|_| client()).collect();
        for c in &clients {
            assert_eq!(round_trip(c, to, b"fd").as_deref(), Some(&b"fd"[..]));
        }
        assert_eq!(fds() - before, 20, "descriptors for 10 more sessions");
    }

    // /listeners shows the UDP listener as a TCP one: name and bound address.
    let listeners = e2e::http_get(proxy.admin.unwrap(), "/listeners", &[]).body;
    assert_eq!(listeners.trim(), format!("udp_in::{to}"));
    // And /config_dump as configured.
    let dump = e2e::http_get(proxy.admin.unwrap(), "/config_dump", &[]).body;
    assert!(
        dump.contains(r#""protocol": "UDP""#) && dump.contains("UdpProxyConfig"),
        "{dump}"
    );
}

#[test]
fn an_idle_session_ends_and_the_next_datagram_opens_a_new_one() {
    let echo = UdpEcho::start();
    // The deprecated `cluster` form, with a short idle timeout.
    let proxy = start_proxy(&bootstrap(
        "{}",
        "        cluster: udp_up\n        idle_timeout: 1s\n",
        &cluster("udp_up", echo.addr),
    ));
    let to = proxy.addr("udp_in");
    let a = client();
    assert_eq!(round_trip(&a, to, b"one").as_deref(), Some(&b"one"[..]));
    assert_eq!(settle(&proxy, "udp.svc.downstream_sess_active", 1), Some(1));
    // Activity within the timeout keeps the session.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(round_trip(&a, to, b"two").as_deref(), Some(&b"two"[..]));
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(proxy.stat("udp.svc.idle_timeout"), Some(0));
    assert_eq!(echo.distinct_sources().len(), 1);
    // Then silence ends it.
    let started = Instant::now();
    assert_eq!(settle(&proxy, "udp.svc.idle_timeout", 1), Some(1));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(settle(&proxy, "udp.svc.downstream_sess_active", 0), Some(0));
    // The same client's next datagram opens a new session, on a new upstream socket.
    assert_eq!(round_trip(&a, to, b"three").as_deref(), Some(&b"three"[..]));
    assert_eq!(settle(&proxy, "udp.svc.downstream_sess_total", 2), Some(2));
    assert_eq!(settle(&proxy, "udp.svc.downstream_sess_active", 1), Some(1));
    assert_eq!(echo.distinct_sources().len(), 2);
}

#[test]
fn datagrams_up_to_max_rx_datagram_size_pass_and_larger_ones_are_dropped() {
    let echo = UdpEcho::start();
    // Downstream up to 9000 bytes; upstream (GRO off, so the limit applies) up to 4000.
    let proxy = start_proxy(&bootstrap(
        "{downstream_socket_config: {max_rx_datagram_size: 9000}}",
        &format!(
            "        upstream_socket_config: {{max_rx_datagram_size: 4000, prefer_gro: false}}\n{}",
            matcher_route("udp_up")
        ),
        &cluster("udp_up", echo.addr),
    ));
    let to = proxy.addr("udp_in");
    let a = client();
    let small = vec![b'x'; 4000];
    assert_eq!(round_trip(&a, to, &small).map(|d| d.len()), Some(4000));
    // 9000 bytes reach the upstream, but its 9000-byte answer is over the upstream limit.
    let b = client();
    b.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    assert_eq!(round_trip(&b, to, &vec![b'y'; 9000]), None);
    assert_eq!(
        settle(&proxy, "cluster.udp_up.udp.sess_rx_datagrams_dropped", 1),
        Some(1)
    );
    // 9001 bytes do not pass the listener: dropped before any session.
    let c = client();
    c.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    assert_eq!(round_trip(&c, to, &vec![b'z'; 9001]), None);
    assert_eq!(
        settle(
            &proxy,
            "listener.127.0.0.1_0.udp.downstream_rx_datagram_dropped",
            1
        ),
        Some(1)
    );
    assert_eq!(settle(&proxy, "udp.svc.downstream_sess_total", 2), Some(2));
    assert_eq!(
        settle(&proxy, "udp.svc.downstream_sess_rx_bytes", 13000),
        Some(13000)
    );
    assert_eq!(
        settle(&proxy, "cluster.udp_up.udp.sess_rx_datagrams", 1),
        Some(1)
    );
}

#[test]
fn the_default_upstream_reads_any_size_and_the_default_listener_limit_is_1500() {
    let echo = UdpEcho::start();
    // No limits set: the listener takes up to 1500 bytes; upstream sockets prefer GRO, so
    // an answer of any size comes back (Envoy's defaults).
    let proxy = start_proxy(&bootstrap(
        "{}",
        &matcher_route("udp_up"),
        &cluster("udp_up", echo.addr),
    ));
    let to = proxy.addr("udp_in");
    let a = client();
    assert_eq!(
        round_trip(&a, to, &[7u8; 1500]).map(|d| d.len()),
        Some(1500)
    );
    a.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    assert_eq!(round_trip(&a, to, &[7u8; 1501]), None);
    assert_eq!(
        settle(
            &proxy,
            "listener.127.0.0.1_0.udp.downstream_rx_datagram_dropped",
            1
        ),
        Some(1)
    );
}

#[test]
fn a_missing_cluster_counts_no_route_and_an_empty_one_none_healthy() {
    let echo = UdpEcho::start();
    let empty = r#"  - name: empty
    connect_timeout: 1s
    type: STATIC
    load_assignment:
      cluster_name: empty
      endpoints: []
"#;
    let config = format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
  - name: to_missing
    address:
      socket_address: {{protocol: UDP, address: 127.0.0.1, port_value: 0}}
    udp_listener_config: {{}}
    listener_filters:
    - name: envoy.filters.udp_listener.udp_proxy
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig
        stat_prefix: missing
{missing}  - name: to_empty
    address:
      socket_address: {{protocol: UDP, address: 127.0.0.1, port_value: 0}}
    udp_listener_config: {{}}
    listener_filters:
    - name: envoy.filters.udp_listener.udp_proxy
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig
        stat_prefix: empty
{empty_route}  clusters:
{up}{empty}"#,
        missing = matcher_route("nowhere"),
        empty_route = matcher_route("empty"),
        up = cluster("udp_up", echo.addr),
    );
    let proxy = start_proxy(&config);
    let a = client();
    a.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    for _ in 0..2 {
        assert_eq!(round_trip(&a, proxy.addr("to_missing"), b"x"), None);
        assert_eq!(round_trip(&a, proxy.addr("to_empty"), b"y"), None);
    }
    assert_eq!(
        settle(&proxy, "udp.missing.downstream_sess_no_route", 2),
        Some(2)
    );
    assert_eq!(
        settle(&proxy, "cluster.empty.upstream_cx_none_healthy", 2),
        Some(2)
    );
    for name in [
        "udp.missing.downstream_sess_total",
        "udp.missing.downstream_sess_rx_datagrams",
        "udp.empty.downstream_sess_total",
        "udp.empty.downstream_sess_rx_datagrams",
        "udp.empty.downstream_sess_no_route",
    ] {
        assert_eq!(proxy.stat(name), Some(0), "{name}");
    }
    assert!(echo.sources.lock().unwrap().is_empty());
}

/// Legate-only: what Legate does not implement of a UDP listener is refused with its path
/// (Envoy accepts these).
#[test]
fn unimplemented_udp_fields_are_refused_with_their_path() {
    let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let cases: &[(&str, &str, &str)] = &[
        (
            "{}",
            "        cluster: udp_up\n        use_original_src_ip: true\n",
            "static_resources.listeners[0].listener_filters[0].typed_config.use_original_src_ip",
        ),
        (
            "{}",
            "        cluster: udp_up\n        use_per_packet_load_balancing: true\n",
            "static_resources.listeners[0].listener_filters[0].typed_config.use_per_packet_load_balancing",
        ),
        (
            "{}",
            "        cluster: udp_up\n        proxy_access_log:\n        - name: envoy.access_loggers.stdout\n          typed_config: {'@type': type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog}\n",
            "static_resources.listeners[0].listener_filters[0].typed_config.proxy_access_log",
        ),
        (
            "{}",
            "        cluster: udp_up\n        session_filters: [{name: x}]\n",
            "static_resources.listeners[0].listener_filters[0].typed_config.session_filters",
        ),
        (
            "{quic_options: {}}",
            "        cluster: udp_up\n",
            "static_resources.listeners[0].udp_listener_config.quic_options",
        ),
        (
            "{}",
            "        matcher:\n          matcher_list:\n            matchers: []\n",
            "static_resources.listeners[0].listener_filters[0].typed_config.matcher.matcher_list",
        ),
    ];
    for (listener_config, proxy, path) in cases {
        let yaml = bootstrap(listener_config, proxy, &cluster("udp_up", up));
        let out = validate(&yaml);
        assert!(out.contains(path), "expected {path} in:\n{out}");
    }
    // Filter chains on a UDP listener (QUIC).
    let yaml = bootstrap("{}", "        cluster: udp_up\n", &cluster("udp_up", up)).replace(
        "    udp_listener_config: {}\n",
        "    udp_listener_config: {}\n    filter_chains: [{filters: []}]\n",
    );
    let out = validate(&yaml);
    assert!(
        out.contains("static_resources.listeners[0].filter_chains"),
        "{out}"
    );
    // The same config, fixed, is valid.
    let out = validate(&bootstrap(
        "{downstream_socket_config: {max_rx_datagram_size: 9000, prefer_gro: false}}",
        "        cluster: udp_up\n        idle_timeout: 5s\n        upstream_socket_config: {max_rx_datagram_size: 9000}\n",
        &cluster("udp_up", up),
    ));
    assert!(out.is_empty(), "{out}");
}

/// `legate --mode validate`: its output when the config is refused, else "".
fn validate(yaml: &str) -> String {
    let dir = e2e::temp_dir("udp-validate");
    let file = dir.join("config.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_legate"))
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

/// Legate-only (SIGHUP reload is Legate's): a UDP listener removed from the bootstrap closes
/// its socket and its sessions end; one added starts serving.
#[test]
fn a_removed_udp_listener_ends_its_sessions() {
    if target_is_envoy() {
        return;
    }
    let echo = UdpEcho::start();
    let config = bootstrap(
        "{}",
        &matcher_route("udp_up"),
        &cluster("udp_up", echo.addr),
    );
    let proxy = Legate::start(&config);
    let to = proxy.addr("udp_in");
    let a = client();
    assert_eq!(
        round_trip(&a, to, b"before").as_deref(),
        Some(&b"before"[..])
    );
    assert_eq!(settle(&proxy, "udp.svc.downstream_sess_active", 1), Some(1));
    // The same bootstrap without the listener.
    let without = format!(
        "admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}\nstatic_resources:\n  clusters:\n{}",
        cluster("udp_up", echo.addr)
    );
    std::fs::write(proxy.dir.join("config.yaml"), without).unwrap();
    proxy.signal(1);
    assert_eq!(
        settle(&proxy, "listener_manager.listener_removed", 1),
        Some(1)
    );
    assert_eq!(settle(&proxy, "udp.svc.downstream_sess_active", 0), Some(0));
    let listeners = e2e::http_get(proxy.admin.unwrap(), "/listeners", &[]).body;
    assert_eq!(listeners.trim(), "");
    // Nothing answers on the port any more.
    a.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    assert_eq!(round_trip(&a, to, b"after"), None);
    assert_eq!(proxy.stat("udp.svc.downstream_sess_total"), Some(1));
    // Put back (on a new port): it serves again.
    std::fs::write(proxy.dir.join("config.yaml"), &config).unwrap();
    proxy.signal(1);
    assert_eq!(
        settle(&proxy, "listener_manager.listener_added", 2),
        Some(2)
    );
}

#[test]
fn a_session_that_ends_writes_its_access_log_line() {
    let echo = UdpEcho::start();
    // A format of the fields a UDP session has, and Envoy's default format.
    let proxy = start_proxy(&bootstrap(
        "{}",
        &format!(
            r#"        idle_timeout: 1s
        access_log:
        - name: envoy.access_loggers.file
          typed_config:
            '@type': type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
            path: "{{dir}}/udp.log"
            log_format:
              text_format_source:
                inline_string: "%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %UPSTREAM_HOST% %UPSTREAM_LOCAL_ADDRESS% %UPSTREAM_CLUSTER% rx=%BYTES_RECEIVED% tx=%BYTES_SENT% flags=%RESPONSE_FLAGS% protocol=%PROTOCOL% id=%CONNECTION_ID% code=%RESPONSE_CODE% type=%ACCESS_LOG_TYPE%\n"
        - name: envoy.access_loggers.file
          typed_config:
            '@type': type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
            path: "{{dir}}/default.log"
{}"#,
            matcher_route("udp_up")
        ),
        &cluster("udp_up", echo.addr),
    ));
    let to = proxy.addr("udp_in");
    let a = client();
    assert_eq!(round_trip(&a, to, b"hello").as_deref(), Some(&b"hello"[..]));
    assert_eq!(
        round_trip(&a, to, b"world!").as_deref(),
        Some(&b"world!"[..])
    );
    // Nothing is logged before the session ends (idle after 1 s).
    assert_eq!(settle(&proxy, "udp.svc.idle_timeout", 1), Some(1));
    let read = |name: &str| {
        let path = proxy.dir.join(name);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.ends_with('\n') || Instant::now() >= deadline {
                return text;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let session_socket = *echo.distinct_sources().iter().next().unwrap();
    assert_eq!(
        read("udp.log"),
        format!(
            "{} {to} {} {session_socket} - rx=11 tx=11 flags=- protocol=- id=0 code=0 type=UdpSessionEnd\n",
            a.local_addr().unwrap(),
            echo.addr
        )
    );
    // `[start] "- - -" 0 - 11 11 <duration> - "-" "-" "-" "-" "<host>"`, the session lasting
    // its idle timeout.
    let line = read("default.log");
    let (_, rest) = line.split_once("] ").expect("a start time");
    let fields: Vec<&str> = rest.trim_end().split(' ').collect();
    assert_eq!(fields.len(), 14, "{line}");
    let duration: u64 = fields[7].parse().expect("a duration");
    assert!((900..2000).contains(&duration), "{line}");
    let host = format!("\"{}\"", echo.addr);
    let expected = [
        "\"-", "-", "-\"", "0", "-", "11", "11", fields[7], "-", "\"-\"", "\"-\"", "\"-\"",
        "\"-\"", &host,
    ];
    assert_eq!(fields, expected, "{line}");
}

/// Which host answers a session from each of 30 loopback source IPs.
fn host_by_source(to: SocketAddr) -> Vec<(String, String)> {
    (2..32)
        .map(|i| {
            let ip = format!("127.0.0.{i}");
            let s = UdpSocket::bind(format!("{ip}:0")).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let answer = round_trip(&s, to, b"which").unwrap_or_default();
            (ip, String::from_utf8_lossy(&answer).into_owned())
        })
        .collect()
}

/// `hash_policies`: `source_ip` sends each client IP to one host of a RING_HASH or MAGLEV
/// cluster, the same host as Envoy picks; a fixed `key` sends every session to one host. Runs
/// Legate and Envoy side by side.
#[test]
fn hash_policies_pick_the_hosts_envoy_picks() {
    let hosts: Vec<(SocketAddr, u32, u32)> = [&b"u0"[..], b"u1", b"u2", b"u3"]
        .into_iter()
        .zip([1, 2, 3, 4])
        .map(|(tag, weight)| (tagged_echo(tag), weight, 0))
        .collect();
    for (lb, policy) in [
        ("RING_HASH", "{source_ip: true}"),
        ("MAGLEV", "{source_ip: true}"),
        ("MAGLEV", "{key: fixed}"),
    ] {
        let yaml = bootstrap(
            "{}",
            &format!(
                "        hash_policies: [{policy}]\n{}",
                matcher_route("udp_up")
            ),
            &e2e::cluster_hosts("udp_up", &hosts, &format!("    lb_policy: {lb}")),
        );
        let legate = Legate::start(&yaml);
        let ours = host_by_source(legate.addr("udp_in"));
        drop(legate);
        let distinct: BTreeSet<&str> = ours.iter().map(|(_, h)| h.as_str()).collect();
        assert!(!distinct.contains(""), "{lb} {policy}: {ours:?}");
        if policy.contains("key") {
            assert_eq!(distinct.len(), 1, "{lb} {policy}: {ours:?}");
        } else {
            assert!(distinct.len() >= 3, "{lb} {policy}: {ours:?}");
        }
        if !e2e::envoy_binary().exists() {
            assert!(
                std::env::var("LEGATE_REQUIRE_ENVOY").as_deref() != Ok("1"),
                "Envoy is required (LEGATE_REQUIRE_ENVOY=1) but is not installed"
            );
            eprintln!("skipping the comparison with Envoy: not installed");
            continue;
        }
        let envoy = Legate::start_envoy(&yaml);
        let theirs = host_by_source(envoy.addr("udp_in"));
        assert_eq!(ours, theirs, "{lb} {policy}: Legate left, Envoy right");
    }
}

/// A host with nothing listening answers with ICMP port unreachable: the session stays and
/// the errors are counted as Envoy counts them.
#[test]
fn an_unreachable_host_counts_errors_and_keeps_the_session() {
    let closed = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = start_proxy(&bootstrap(
        "{}",
        &matcher_route("udp_up"),
        &cluster("udp_up", closed),
    ));
    let to = proxy.addr("udp_in");
    let a = client();
    a.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    for _ in 0..3 {
        assert_eq!(round_trip(&a, to, b"anyone?"), None);
    }
    // Envoy 1.40's values: every datagram goes out, each ICMP error is read as a receive
    // error, and the one session stays.
    let expected: &[(&str, u64)] = &[
        ("udp.svc.downstream_sess_total", 1),
        ("udp.svc.downstream_sess_active", 1),
        ("udp.svc.downstream_sess_rx_datagrams", 3),
        ("udp.svc.downstream_sess_tx_datagrams", 0),
        ("udp.svc.downstream_sess_tx_errors", 0),
        ("cluster.udp_up.udp.sess_tx_datagrams", 3),
        ("cluster.udp_up.udp.sess_tx_errors", 0),
        ("cluster.udp_up.udp.sess_rx_errors", 3),
    ];
    for (name, want) in expected {
        assert_eq!(settle(&proxy, name, *want), Some(*want), "{name}");
    }
}

/// Legate-only (SIGHUP reload is Legate's): a changed UDP listener takes over its sockets, so
/// it keeps its port; the old version's sessions end and the client's next datagram opens a
/// session on the new one.
#[test]
fn a_changed_udp_listener_keeps_its_port() {
    if target_is_envoy() {
        return;
    }
    let echo = UdpEcho::start();
    let config = |idle: &str| {
        bootstrap(
            "{}",
            &format!("        idle_timeout: {idle}\n{}", matcher_route("udp_up")),
            &cluster("udp_up", echo.addr),
        )
    };
    let proxy = Legate::start(&config("30s"));
    let to = proxy.addr("udp_in");
    let a = client();
    assert_eq!(round_trip(&a, to, b"v1").as_deref(), Some(&b"v1"[..]));
    assert_eq!(settle(&proxy, "udp.svc.downstream_sess_active", 1), Some(1));
    std::fs::write(proxy.dir.join("config.yaml"), config("20s")).unwrap();
    proxy.signal(1);
    assert_eq!(
        settle(&proxy, "listener_manager.listener_modified", 1),
        Some(1)
    );
    assert_eq!(settle(&proxy, "udp.svc.downstream_sess_active", 0), Some(0));
    assert_eq!(round_trip(&a, to, b"v2").as_deref(), Some(&b"v2"[..]));
    assert_eq!(settle(&proxy, "udp.svc.downstream_sess_total", 2), Some(2));
    assert_eq!(settle(&proxy, "udp.svc.downstream_sess_active", 1), Some(1));
}

#[test]
fn sessions_take_a_connection_slot_of_the_cluster() {
    let echo = UdpEcho::start();
    // One connection allowed: a second client's datagrams find no slot until the first
    // session ends.
    let limited = e2e::cluster(
        "udp_up",
        echo.addr,
        "    circuit_breakers: {thresholds: [{max_connections: 1}]}",
    );
    let proxy = start_proxy(&bootstrap(
        "{}",
        "        cluster: udp_up\n        idle_timeout: 1s\n",
        &limited,
    ));
    let to = proxy.addr("udp_in");
    let (a, b) = (client(), client());
    assert_eq!(round_trip(&a, to, b"one").as_deref(), Some(&b"one"[..]));
    // Refused while the first session holds the slot (the 2 s wait outlives that session).
    assert_eq!(round_trip(&b, to, b"two"), None);
    assert_eq!(
        settle(&proxy, "cluster.udp_up.upstream_cx_overflow", 1),
        Some(1)
    );
    // Envoy counts the session it could not open in downstream_sess_total.
    assert_eq!(settle(&proxy, "udp.svc.downstream_sess_total", 2), Some(2));
    assert_eq!(proxy.stat("udp.svc.downstream_sess_rx_datagrams"), Some(1));
    // The first session idled out and gave its slot back.
    assert_eq!(settle(&proxy, "udp.svc.downstream_sess_active", 0), Some(0));
    assert_eq!(round_trip(&b, to, b"three").as_deref(), Some(&b"three"[..]));
    assert_eq!(settle(&proxy, "udp.svc.downstream_sess_total", 3), Some(3));
    assert_eq!(proxy.stat("cluster.udp_up.upstream_cx_overflow"), Some(1));
}

/// EDS replacing a session's host ends the session: the client's next datagram opens a new
/// one on the new host (Envoy erases a removed host's sessions). Runs against Envoy too.
#[test]
fn a_session_ends_when_eds_removes_its_host() {
    let a = tagged_echo(b"A");
    let b = tagged_echo(b"B");
    let dir = e2e::ScratchDir::new("udp-eds");
    let eds = dir.join("eds.yaml");
    let assignment = |host: SocketAddr| {
        format!(
            "resources:\n- \"@type\": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment\n  cluster_name: udp_up\n  endpoints:\n  - lb_endpoints:\n    - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}\n",
            host.port()
        )
    };
    std::fs::write(&eds, assignment(a)).unwrap();
    let cluster = format!(
        "  - name: udp_up\n    type: EDS\n    eds_cluster_config:\n      eds_config: {{path_config_source: {{path: {}}}, resource_api_version: V3}}\n",
        eds.display()
    );
    // xDS needs the node's identity.
    let config = format!(
        "node: {{id: udp-test, cluster: udp-test}}\n{}",
        bootstrap("{}", &matcher_route("udp_up"), &cluster)
    );
    let proxy = start_proxy(&config);
    let to = proxy.addr("udp_in");
    let c = client();
    let answer = |c: &UdpSocket| {
        // The first datagrams may beat the endpoints' arrival: retry a few times.
        (0..20)
            .find_map(|_| round_trip(c, to, b"?").filter(|r| !r.is_empty()))
            .unwrap_or_default()
    };
    assert_eq!(answer(&c), b"A");
    assert_eq!(settle(&proxy, "udp.svc.downstream_sess_total", 1), Some(1));
    // Replace the file as a deployment would (a rename, which the watch sees).
    let staged = dir.join("eds.yaml.staged");
    std::fs::write(&staged, assignment(b)).unwrap();
    std::fs::rename(&staged, &eds).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut got = answer(&c);
    while got != b"B" && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        got = answer(&c);
    }
    assert_eq!(got, b"B", "the session moved to the new host");
    assert_eq!(settle(&proxy, "udp.svc.downstream_sess_total", 2), Some(2));
    assert_eq!(settle(&proxy, "udp.svc.downstream_sess_active", 1), Some(1));
}

/// A listener bound to the wildcard address answers from the address the client sent to: a
/// client that sent to 127.0.0.2 (and `connect`ed its socket there) gets the reply, which it
/// would drop coming from 127.0.0.1. Runs against Envoy too.
#[test]
fn a_wildcard_listener_replies_from_the_address_the_client_used() {
    let echo = UdpEcho::start();
    let config = bootstrap(
        "{}",
        &matcher_route("udp_up"),
        &cluster("udp_up", echo.addr),
    )
    .replace(
        "protocol: UDP, address: 127.0.0.1",
        "protocol: UDP, address: 0.0.0.0",
    );
    let proxy = start_proxy(&config);
    let port = proxy.addr("udp_in").port();
    for to in ["127.0.0.2", "127.0.0.3"] {
        let c = client();
        c.connect((to, port)).unwrap();
        c.send(b"from where?").unwrap();
        let mut buf = [0u8; 64];
        let n = c
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no reply via {to}: {e}"));
        assert_eq!(&buf[..n], b"from where?");
    }
}
