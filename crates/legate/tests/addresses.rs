//! End-to-end tests of where connections go by address: the `original_dst` listener filter,
//! `use_original_dst` hand-off between listeners, filter-chain matching on the restored
//! destination, and `ORIGINAL_DST` clusters (by the restored destination, and by
//! `x-envoy-original-dst-host` or another header, with `upstream_port_override` and the
//! `cleanup_interval` sweep). Every expectation is Envoy 1.40's: run with
//! `LEGATE_E2E_PROXY=envoy` to check them against Envoy itself.
//!
//! The redirect tests need a network namespace and nftables: each runs on a thread of its own
//! that calls `unshare(CLONE_NEWNET)` (the test runs as root), brings `lo` up, starts the
//! upstreams and the proxy there (children and threads inherit the namespace) and installs an
//! nftables `redirect` rule for connections from 127.0.0.3. Without root or `nft` they are
//! skipped with a message, unless `LEGATE_REQUIRE_NFT=1` (scripts/test.sh sets it after
//! installing nftables) makes that a failure.

mod e2e;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use e2e::{Legate, http_get, start_proxy};

/// A TCP upstream that writes `tag` on every connection, then echoes until the client ends.
struct TcpUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl TcpUpstream {
    fn start(ip: &str, tag: &'static [u8]) -> TcpUpstream {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
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
                    let _ = conn.shutdown(Shutdown::Write);
                });
            }
        });
        TcpUpstream { addr, connections }
    }
}

/// Connects from `source` to `to`, sends `data`, half-closes and reads until the peer closes.
fn exchange_from(source: Ipv4Addr, to: SocketAddr, data: &[u8]) -> Vec<u8> {
    exchange(source, to, data, true)
}

/// Connects from `source` to `to`, sends `data`, half-closes if `half_close`, and reads until
/// the peer closes.
fn exchange(source: Ipv4Addr, to: SocketAddr, data: &[u8], half_close: bool) -> Vec<u8> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::new(source.into(), 0).into())
        .unwrap();
    socket
        .connect_timeout(&to.into(), Duration::from_secs(5))
        .unwrap();
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(data).unwrap();
    if half_close {
        s.shutdown(Shutdown::Write).unwrap();
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// Runs `test` on a thread in a new network namespace with `lo` up, or returns `false` when
/// namespaces or nftables are not available here (and `LEGATE_REQUIRE_NFT` is not set).
fn in_network_namespace(test: impl FnOnce() + Send + 'static) -> bool {
    let have_nft = Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !have_nft || !root {
        let why = format!("needs root (is {root}) and nft (found {have_nft})");
        if std::env::var("LEGATE_REQUIRE_NFT").is_ok_and(|v| v == "1") {
            panic!("{why}: scripts/test.sh installs nftables");
        }
        eprintln!("skipped: {why}");
        return false;
    }
    let handle = std::thread::spawn(move || {
        // SAFETY: unshare only changes this thread's namespaces.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
        loopback_up();
        test();
    });
    if let Err(panic) = handle.join() {
        std::panic::resume_unwind(panic);
    }
    true
}

/// `ip link set lo up`, by ioctl (iproute2 may be missing).
fn loopback_up() {
    // SAFETY: a plain socket, ifreq zeroed and named, the ioctls' documented arguments.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        assert_eq!(libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req), 0);
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(libc::ioctl(fd, libc::SIOCSIFFLAGS, &mut req), 0);
        libc::close(fd);
    }
}

/// Redirects connections from 127.0.0.3 to each of `ports` to `to` (nftables `redirect` in
/// the nat output hook: the kernel keeps the original destination for `SO_ORIGINAL_DST`).
fn redirect(ports: &[u16], to: u16) {
    let mut rules = String::from(
        "table ip legate_test {\n chain out {\n  type nat hook output priority -100; policy accept;\n",
    );
    for p in ports {
        rules.push_str(&format!(
            "  ip saddr 127.0.0.3 tcp dport {p} redirect to :{to}\n"
        ));
    }
    rules.push_str(" }\n}\n");
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft -f: {rules}");
}

const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

/// An `ORIGINAL_DST` cluster YAML fragment.
fn original_dst_cluster(name: &str, extra: &str) -> String {
    format!(
        r#"  - name: {name}
    connect_timeout: 1s
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
{extra}
"#
    )
}

/// Polls a stat until it equals `want` (or 10 s pass); returns the last value.
fn wait_stat(proxy: &Legate, name: &str, want: u64) -> Option<u64> {
    proxy.wait_stat(name, Duration::from_secs(10), |v| v == want)
}

/// A connection from 127.0.0.3 to 127.0.0.2:X, redirected by nftables to the proxy's
/// `original_dst` listener, reaches the upstream at 127.0.0.2:X through an ORIGINAL_DST
/// cluster; a chain matched on the restored destination port serves it, another port falls to
/// the default chain. The cluster's host is created on first use and swept after
/// `cleanup_interval` once its connection is gone.
#[test]
fn original_dst_redirect_reaches_the_original_destination() {
    in_network_namespace(|| {
        let upstream = TcpUpstream::start("127.0.0.2", b"A:");
        let x = upstream.addr.port();
        let config = format!(
            r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
  - name: redirect
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst
    filter_chains:
    - filter_chain_match: {{destination_port: {x}}}
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": {TCP_PROXY}
          stat_prefix: to_original
          cluster: original
    default_filter_chain:
      filters:
      - name: envoy.filters.network.direct_response
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.direct_response.v3.Config
          response: {{inline_string: "other port"}}
  clusters:
{cluster}"#,
            cluster = original_dst_cluster("original", "    cleanup_interval: 1s")
        );
        let proxy = start_proxy(&config);
        let listener = proxy.addr("redirect");
        let other = TcpListener::bind("127.0.0.2:0").unwrap();
        let z = other.local_addr().unwrap().port();
        redirect(&[x, z], listener.port());

        let to = SocketAddr::from(([127, 0, 0, 2], x));
        let got = exchange_from(Ipv4Addr::new(127, 0, 0, 3), to, b"hello");
        assert_eq!(got, b"A:hello", "{}", proxy.output());
        assert_eq!(upstream.connections.load(Ordering::SeqCst), 1);
        assert_eq!(proxy.stat("cluster.original.upstream_cx_total"), Some(1));

        // Another original port: the default chain, by the restored destination.
        let got = exchange_from(
            Ipv4Addr::new(127, 0, 0, 3),
            SocketAddr::from(([127, 0, 0, 2], z)),
            b"x",
        );
        assert_eq!(got, b"other port");

        // The host made for 127.0.0.2:X goes once unused for a cleanup interval.
        assert_eq!(
            wait_stat(&proxy, "cluster.original.membership_total", 0),
            Some(0)
        );
        assert_eq!(proxy.stat("cluster.original.membership_change"), Some(2));
        drop(other);
    });
}

/// `use_original_dst`: a redirected connection goes to the listener bound to its original
/// destination (which counts it), and the receiving listener serves destinations no listener
/// has (here through its ORIGINAL_DST cluster).
#[test]
fn use_original_dst_hands_off_to_the_listener_of_the_destination() {
    in_network_namespace(|| {
        let direct = TcpUpstream::start("127.0.0.2", b"A:");
        let behind_virtual = TcpUpstream::start("127.0.0.1", b"B:");
        let config = format!(
            r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
  - name: redirect
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    stat_prefix: redirect
    use_original_dst: true
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": {TCP_PROXY}
          stat_prefix: passthrough
          cluster: original
  - name: virtual
    address: {{socket_address: {{address: 127.0.0.2, port_value: 0}}}}
    stat_prefix: virtual
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": {TCP_PROXY}
          stat_prefix: virtual
          cluster: b
  clusters:
{original}{b}"#,
            original = original_dst_cluster("original", ""),
            b = e2e::cluster("b", behind_virtual.addr, ""),
        );
        let proxy = start_proxy(&config);
        let listener = proxy.addr("redirect");
        let virtual_addr = proxy.addr("virtual");
        redirect(&[virtual_addr.port(), direct.addr.port()], listener.port());
        let from = Ipv4Addr::new(127, 0, 0, 3);

        let got = exchange_from(from, virtual_addr, b"one");
        assert_eq!(got, b"B:one", "{}", proxy.output());
        let (virtual_stat, redirect_stat) = (
            "listener.virtual.downstream_cx_total",
            "listener.redirect.downstream_cx_total",
        );
        assert_eq!(proxy.stat(virtual_stat), Some(1));
        assert_eq!(proxy.stat(redirect_stat), Some(0));

        // No listener on 127.0.0.2:<direct>: the receiving listener serves it.
        let got = exchange_from(from, direct.addr, b"two");
        assert_eq!(got, b"A:two", "{}", proxy.output());
        assert_eq!(proxy.stat(redirect_stat), Some(1));
        assert_eq!(behind_virtual.connections.load(Ordering::SeqCst), 1);
        assert_eq!(direct.connections.load(Ordering::SeqCst), 1);
    });
}

fn http_config(clusters: &str) -> String {
    e2e::front_proxy(
        r#"              - match: {prefix: "/port"}
                route: {cluster: by_port}
              - match: {prefix: "/"}
                route: {cluster: by_header}"#,
        clusters,
        "",
    )
}

/// ORIGINAL_DST clusters behind an HTTP route: `use_http_header` takes the destination from
/// `x-envoy-original-dst-host` (or `http_header_name`), `upstream_port_override` replaces its
/// port; without a header or a restored destination there is no host (503, `no healthy
/// upstream`), and a value that is not an `IP:port` counts `original_dst_host_invalid`.
#[test]
fn original_dst_cluster_takes_the_destination_from_a_header() {
    let upstream = e2e::Upstream::start();
    let clusters = format!(
        "{}{}",
        original_dst_cluster(
            "by_header",
            "    original_dst_lb_config: {use_http_header: true}"
        ),
        original_dst_cluster(
            "by_port",
            &format!(
                "    original_dst_lb_config: {{use_http_header: true, http_header_name: X-Dst, upstream_port_override: {}}}",
                upstream.addr.port()
            )
        ),
    );
    let proxy = start_proxy(&http_config(&clusters));
    let ingress = proxy.addr("ingress");
    let dst = upstream.addr.to_string();

    let r = http_get(ingress, "/a", &[("x-envoy-original-dst-host", &dst)]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(upstream.last().path, "/a");
    assert_eq!(proxy.stat("cluster.by_header.membership_total"), Some(1));

    let r = http_get(ingress, "/b", &[]);
    assert_eq!(r.status, 503);
    assert_eq!(r.body, "no healthy upstream");

    let r = http_get(ingress, "/c", &[("x-envoy-original-dst-host", "a.b.c.d")]);
    assert_eq!(r.status, 503);
    assert_eq!(
        proxy.stat("cluster.by_header.original_dst_host_invalid"),
        Some(1)
    );

    // The port comes from upstream_port_override, whatever the header says.
    let r = http_get(ingress, "/port", &[("x-dst", "127.0.0.1:1")]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(upstream.last().path, "/port");
    assert_eq!(upstream.count(), 2);
    // The default header is not this cluster's.
    let r = http_get(ingress, "/port", &[("x-envoy-original-dst-host", &dst)]);
    assert_eq!(r.status, 503);
}

/// An HTTP/1.1 upstream that answers every request with `200` and `tag` as the body, and
/// closes the connection.
fn http_upstream(ip: &str, tag: &'static str) -> SocketAddr {
    e2e::thread_per_connection(ip, move |mut conn| {
        if !e2e::read_through_head(&mut conn, &mut Vec::new()) {
            return;
        }
        let _ = conn.write_all(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{tag}",
                tag.len()
            )
            .as_bytes(),
        );
    })
}

/// An HTTP route to an ORIGINAL_DST cluster forwards a redirected request to its original
/// destination (the connection's restored local address; no header involved).
#[test]
fn original_dst_http_route_reaches_the_original_destination() {
    in_network_namespace(|| {
        let upstream = http_upstream("127.0.0.2", "original");
        let config = format!(
            r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
  - name: ingress
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: original}}
  clusters:
{cluster}"#,
            cluster = original_dst_cluster("original", "")
        );
        let proxy = start_proxy(&config);
        redirect(&[upstream.port()], proxy.addr("ingress").port());
        let got = exchange(
            Ipv4Addr::new(127, 0, 0, 3),
            upstream,
            b"GET /x HTTP/1.1\r\nhost: example\r\nconnection: close\r\n\r\n",
            false,
        );
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 200"),
            "{text}\n{}",
            proxy.output()
        );
        assert!(text.ends_with("original"), "{text}");
        assert_eq!(proxy.stat("cluster.original.upstream_rq_200"), Some(1));
    });
}
