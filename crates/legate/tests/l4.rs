//! End-to-end tests of the L4 path: listener filters (tls_inspector, http_inspector),
//! filter-chain matching, and the tcp_proxy, echo and direct_response network filters, with
//! the real binary on loopback; and a differential check of chain selection against Envoy.

mod e2e;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use e2e::dynamic::free_port;
use e2e::{Legate, ScratchDir, cluster, temp_dir};

/// A TCP upstream. `tag` is written first on every connection; then, in `stream` mode, every
/// byte is echoed as it arrives and the write side is shut once the client finishes; otherwise
/// (`after_eof`) the bytes are collected until the client finishes and sent back then.
struct TcpUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl TcpUpstream {
    fn start(tag: &'static [u8], stream: bool) -> TcpUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let _ = conn.write_all(tag);
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut kept = Vec::new();
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) if stream => {
                                if conn.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                            Ok(n) => kept.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = conn.write_all(&kept);
                    let _ = conn.shutdown(Shutdown::Write);
                    // Stay until the proxy closes its side.
                    let _ = conn.read(&mut buf);
                });
            }
        });
        TcpUpstream { addr, connections }
    }
}

/// Sends `data`, half-closes, and reads until the peer closes (or `timeout`).
fn exchange(addr: SocketAddr, data: &[u8], timeout: Duration) -> Vec<u8> {
    exchange_from(None, addr, data, timeout)
}

fn exchange_from(
    source: Option<&str>,
    addr: SocketAddr,
    data: &[u8],
    timeout: Duration,
) -> Vec<u8> {
    let mut s = connect_from(source, addr);
    s.set_read_timeout(Some(timeout)).unwrap();
    if !data.is_empty() {
        let _ = s.write_all(data);
    }
    let _ = s.shutdown(Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// Connects from a chosen loopback source address (127.0.0.2 and so on).
fn connect_from(source: Option<&str>, addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if let Some(src) = source {
        let src: SocketAddr = format!("{src}:0").parse().unwrap();
        socket.bind(&src.into()).unwrap();
    }
    socket.connect(&addr.into()).unwrap();
    socket.into()
}

/// A ClientHello as rustls writes it.
fn client_hello(sni: &str, alpn: &[&str]) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

const TLS_INSPECTOR: &str = r#"    - name: envoy.filters.listener.tls_inspector
      typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector }
"#;
const HTTP_INSPECTOR: &str = r#"    - name: envoy.filters.listener.http_inspector
      typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector }
"#;

/// A listener fragment: `extra` goes under the listener (listener_filters and the like),
/// `chains` are filter chain items.
fn listener(name: &str, port: u16, extra: &str, chains: &str) -> String {
    format!(
        "  - name: {name}\n    stat_prefix: {name}\n    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}\n{extra}    filter_chains:\n{chains}"
    )
}

/// A filter chain item; `matcher` is a flow-style FilterChainMatch or empty; `filters` is a
/// `      filters:` block.
fn chain(matcher: &str, filters: &str) -> String {
    if matcher.is_empty() {
        format!("    - {}", filters.trim_start())
    } else {
        format!("    - filter_chain_match: {matcher}\n{filters}")
    }
}

fn direct(text: &str) -> String {
    format!(
        "      filters:\n      - name: envoy.filters.network.direct_response\n        typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.network.direct_response.v3.Config, response: {{inline_string: \"{text}\"}}}}\n"
    )
}

fn tcp_proxy(prefix: &str, cluster: &str, extra: &str) -> String {
    format!(
        "      filters:\n      - name: envoy.filters.network.tcp_proxy\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          stat_prefix: {prefix}\n          cluster: {cluster}\n{extra}"
    )
}

fn bootstrap(listeners: &[String], clusters: &str) -> String {
    let clusters = if clusters.is_empty() {
        String::new()
    } else {
        format!("  clusters:\n{clusters}")
    };
    format!(
        "admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}\nstatic_resources:\n  listeners:\n{}{clusters}",
        listeners.concat()
    )
}

/// Waits until `cond` holds (stats are updated when a connection ends, just after the bytes).
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn tcp_proxy_half_close_stats_and_access_log() {
    let upstream = TcpUpstream::start(b"", false);
    let scratch = ScratchDir::new("l4-log");
    let log = scratch.join("tcp.log");
    let access_log = format!(
        "          access_log:\n          - name: envoy.access_loggers.file\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: {}\n              log_format: {{text_format_source: {{inline_string: \"%UPSTREAM_CLUSTER% %BYTES_RECEIVED% %BYTES_SENT% %PROTOCOL% %RESPONSE_FLAGS% %REQUESTED_SERVER_NAME%\\n\"}}}}\n",
        log.display()
    );
    let config = bootstrap(
        &[listener(
            "tcp",
            0,
            "",
            &chain("", &tcp_proxy("tp", "backend", &access_log)),
        )],
        &cluster("backend", upstream.addr, ""),
    );
    let legate = Legate::start(&config);
    let addr = legate.addr("tcp");
    // The upstream answers only after our FIN reached it: the proxy must pass the half-close
    // on and keep the other direction open.
    let reply = exchange(
        addr,
        b"ping over a half-closed connection",
        Duration::from_secs(5),
    );
    assert_eq!(reply, b"ping over a half-closed connection");
    eventually("tcp stats", || {
        legate.stat("tcp.tp.downstream_cx_total") == Some(1)
            && legate.stat("tcp.tp.downstream_cx_rx_bytes_total") == Some(34)
            && legate.stat("tcp.tp.downstream_cx_tx_bytes_total") == Some(34)
    });
    assert_eq!(legate.stat("cluster.backend.upstream_cx_total"), Some(1));
    assert_eq!(
        legate.stat("cluster.backend.upstream_cx_tx_bytes_total"),
        Some(34)
    );
    assert_eq!(
        legate.stat("cluster.backend.upstream_cx_rx_bytes_total"),
        Some(34)
    );
    eventually("the connection to close", || {
        legate.stat("cluster.backend.upstream_cx_destroy") == Some(1)
            && legate.stat("cluster.backend.upstream_cx_active") == Some(0)
    });
    assert_eq!(legate.stat("tcp.tp.downstream_cx_no_route"), Some(0));
    assert_eq!(legate.stat("tcp.tp.idle_timeout"), Some(0));
    eventually("the access log line", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains('\n'))
    });
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "backend 34 34 - - -\n"
    );

    // The client closes first while the upstream would go on: both directions end.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"x").unwrap();
    drop(s);
    eventually("the second connection to close", || {
        legate.stat("cluster.backend.upstream_cx_destroy") == Some(2)
    });
}

/// `idle_timeout`: a connection that moves a byte every 200 ms outlives a 600 ms idle timeout
/// (bytes in either direction count as activity), then closes once it goes quiet, counted in
/// `tcp.<prefix>.idle_timeout`. Runs against Envoy too (`LEGATE_E2E_PROXY=envoy`).
#[test]
fn tcp_proxy_idle_timeout_spares_busy_connections() {
    let upstream = TcpUpstream::start(b"", true);
    let config = bootstrap(
        &[listener(
            "tcp",
            0,
            "",
            &chain(
                "",
                &tcp_proxy("idle", "backend", "          idle_timeout: 0.6s\n"),
            ),
        )],
        &cluster("backend", upstream.addr, ""),
    );
    let proxy = e2e::start_proxy(&config);
    let mut s = TcpStream::connect(proxy.addr("tcp")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    for i in 0..8u8 {
        s.write_all(&[b'a' + i]).unwrap();
        let mut echoed = [0u8; 1];
        s.read_exact(&mut echoed).unwrap();
        assert_eq!(echoed[0], b'a' + i);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(started.elapsed() > Duration::from_millis(1600));
    assert_eq!(proxy.stat("tcp.idle.idle_timeout"), Some(0));
    // Quiet now: closed by the proxy within the timeout (and some slack), not before.
    let quiet = Instant::now();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let waited = quiet.elapsed();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    eventually("the idle timeout to be counted", || {
        proxy.stat("tcp.idle.idle_timeout") == Some(1)
    });
}

#[test]
fn tcp_proxy_streams_100_mb_both_ways() {
    let upstream = TcpUpstream::start(b"", true);
    let config = bootstrap(
        &[listener(
            "tcp",
            0,
            "",
            &chain("", &tcp_proxy("big", "backend", "")),
        )],
        &cluster("backend", upstream.addr, ""),
    );
    let legate = Legate::start(&config);
    let mut s = TcpStream::connect(legate.addr("tcp")).unwrap();
    let mut writer = s.try_clone().unwrap();
    const TOTAL: usize = 100 * 1024 * 1024;
    let started = Instant::now();
    let send = std::thread::spawn(move || {
        let block: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
        for _ in 0..TOTAL / block.len() {
            writer.write_all(&block).unwrap();
        }
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0usize;
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        for (i, b) in buf[..n].iter().enumerate() {
            assert_eq!(
                *b,
                ((got + i) % (1024 * 1024) % 251) as u8,
                "byte {}",
                got + i
            );
        }
        got += n;
    }
    send.join().unwrap();
    assert_eq!(got, TOTAL);
    eprintln!(
        "100 MB each way through tcp_proxy in {:?}",
        started.elapsed()
    );
    eventually("byte counters", || {
        legate.stat("tcp.big.downstream_cx_rx_bytes_total") == Some(TOTAL as u64)
            && legate.stat("tcp.big.downstream_cx_tx_bytes_total") == Some(TOTAL as u64)
    });
}

#[test]
fn tcp_proxy_connect_failure_unknown_cluster_and_weighted_clusters() {
    // A port nothing listens on.
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let a = TcpUpstream::start(b"A", true);
    let b = TcpUpstream::start(b"B", true);
    let weighted = "          weighted_clusters:\n            clusters: [{name: a, weight: 1}, {name: b, weight: 1}]\n";
    let weighted_chain = format!(
        "      filters:\n      - name: envoy.filters.network.tcp_proxy\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          stat_prefix: w\n{weighted}"
    );
    let config = bootstrap(
        &[
            listener(
                "dead",
                0,
                "",
                &chain(
                    "",
                    &tcp_proxy("dead", "dead", "          max_connect_attempts: 2\n"),
                ),
            ),
            listener(
                "nocluster",
                0,
                "",
                &chain("", &tcp_proxy("nc", "missing", "")),
            ),
            listener("weighted", 0, "", &chain("", &weighted_chain)),
        ],
        &format!(
            "{}{}{}",
            cluster("dead", dead, ""),
            cluster("a", a.addr, ""),
            cluster("b", b.addr, "")
        ),
    );
    let legate = Legate::start(&config);
    assert_eq!(
        exchange(legate.addr("dead"), b"x", Duration::from_secs(5)),
        b""
    );
    eventually("connect failures", || {
        legate.stat("cluster.dead.upstream_cx_connect_fail") == Some(2)
            && legate.stat("cluster.dead.upstream_cx_connect_attempts_exceeded") == Some(1)
    });
    assert_eq!(
        exchange(legate.addr("nocluster"), b"x", Duration::from_secs(5)),
        b""
    );
    eventually("no route", || {
        legate.stat("tcp.nc.downstream_cx_no_route") == Some(1)
    });
    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        let r = exchange(legate.addr("weighted"), b"!", Duration::from_secs(5));
        seen.insert(r);
    }
    assert!(
        seen.contains(&b"A!"[..]) && seen.contains(&b"B!"[..]),
        "{seen:?}"
    );
    assert_eq!(
        a.connections.load(Ordering::SeqCst) + b.connections.load(Ordering::SeqCst),
        40
    );
}

#[test]
fn tcp_proxy_refuses_connections_past_its_clusters_limits_as_envoy_does() {
    // Envoy's tcp_proxy checks `max_connections` itself before asking its pool (no waiting),
    // and the pool counts the connection as pending while it connects.
    let upstream = TcpUpstream::start(b"", true);
    let config = bootstrap(
        &[
            listener("one", 0, "", &chain("", &tcp_proxy("one", "one", ""))),
            listener("none", 0, "", &chain("", &tcp_proxy("none", "none", ""))),
        ],
        &format!(
            "{}{}",
            cluster(
                "one",
                upstream.addr,
                "    circuit_breakers: {thresholds: [{max_connections: 1}]}\n"
            ),
            cluster(
                "none",
                upstream.addr,
                "    circuit_breakers: {thresholds: [{max_pending_requests: 0}]}\n"
            ),
        ),
    );
    let legate = Legate::start(&config);
    let mut held = TcpStream::connect(legate.addr("one")).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    held.write_all(b"held").unwrap();
    let mut echoed = [0u8; 4];
    held.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"held");
    assert_eq!(
        exchange(legate.addr("one"), b"x", Duration::from_secs(5)),
        b""
    );
    assert_eq!(legate.stat("cluster.one.upstream_cx_overflow"), Some(1));
    assert_eq!(legate.stat("cluster.one.upstream_cx_total"), Some(1));
    assert_eq!(
        legate.stat("cluster.one.upstream_rq_pending_total"),
        Some(1)
    );
    assert_eq!(
        exchange(legate.addr("none"), b"x", Duration::from_secs(5)),
        b""
    );
    assert_eq!(
        legate.stat("cluster.none.upstream_rq_pending_overflow"),
        Some(1)
    );
    assert_eq!(legate.stat("cluster.none.upstream_cx_total"), Some(0));
    drop(held);
    // The slot is free again once the held connection is gone.
    eventually("the held connection's end", || {
        legate.stat("cluster.one.upstream_cx_active") == Some(0)
    });
    assert_eq!(
        exchange(legate.addr("one"), b"again", Duration::from_secs(5)),
        b"again"
    );
}

#[test]
fn sni_selects_tls_passthrough_upstream_on_one_port() {
    let a = TcpUpstream::start(b"A", true);
    let b = TcpUpstream::start(b"B", true);
    let chains = [
        chain(
            "{server_names: [a.example.com]}",
            &tcp_proxy("to_a", "a", ""),
        ),
        chain(
            "{server_names: [\"*.b.example.com\"], transport_protocol: tls}",
            &tcp_proxy("to_b", "b", ""),
        ),
    ]
    .concat();
    let config = bootstrap(
        &[listener(
            "tls",
            0,
            &format!("    listener_filters:\n{TLS_INSPECTOR}"),
            &chains,
        )],
        &format!("{}{}", cluster("a", a.addr, ""), cluster("b", b.addr, "")),
    );
    let legate = Legate::start(&config);
    let addr = legate.addr("tls");
    for (sni, tag) in [
        ("a.example.com", b'A'),
        ("A.Example.COM", b'A'),
        ("x.b.example.com", b'B'),
        ("deep.x.b.example.com", b'B'),
    ] {
        let hello = client_hello(sni, &["h2"]);
        let reply = exchange(addr, &hello, Duration::from_secs(5));
        assert_eq!(reply.first(), Some(&tag), "{sni}");
        // The hello went through untouched (passthrough).
        assert_eq!(&reply[1..], &hello[..], "{sni}");
    }
    // No chain for this name: closed, counted, and not a downstream connection.
    let reply = exchange(
        addr,
        &client_hello("c.example.com", &[]),
        Duration::from_secs(5),
    );
    assert!(reply.is_empty());
    let stat = |s: &str| legate.stat(&format!("listener.tls.{s}"));
    eventually("no_filter_chain_match", || {
        stat("no_filter_chain_match") == Some(1) && stat("downstream_cx_destroy") == Some(4)
    });
    assert_eq!(stat("downstream_cx_total"), Some(4));
    assert_eq!(legate.stat("tls_inspector.tls_found"), Some(5));
    assert_eq!(legate.stat("tls_inspector.sni_found"), Some(5));
    assert_eq!(legate.stat("tls_inspector.alpn_found"), Some(4));
    assert_eq!(legate.stat("tls_inspector.alpn_not_found"), Some(1));
}

#[test]
fn destination_port_and_source_matching() {
    let port = free_port();
    let chains = [
        chain(
            &format!("{{destination_port: {port}, source_prefix_ranges: [{{address_prefix: 127.0.0.2, prefix_len: 32}}]}}"),
            &direct("port+src2"),
        ),
        chain(&format!("{{destination_port: {port}}}"), &direct("port")),
        chain("{destination_port: 1}", &direct("never")),
    ]
    .concat();
    let sources = [
        chain("{source_type: EXTERNAL}", &direct("external")),
        chain(
            "{source_prefix_ranges: [{address_prefix: 127.0.0.3, prefix_len: 32}]}",
            &direct("src3"),
        ),
        chain(
            "{direct_source_prefix_ranges: [{address_prefix: 127.0.0.4, prefix_len: 30}], source_ports: [1]}",
            &direct("direct4-port1"),
        ),
        chain(
            "{direct_source_prefix_ranges: [{address_prefix: 127.0.0.4, prefix_len: 30}]}",
            &direct("direct4"),
        ),
    ]
    .concat();
    let config = bootstrap(
        &[
            listener("ports", port, "", &chains),
            listener("sources", 0, "", &sources),
        ],
        "",
    );
    let legate = Legate::start(&config);
    let t = Duration::from_secs(5);
    let at = legate.addr("ports");
    assert_eq!(at.port(), port);
    assert_eq!(exchange_from(Some("127.0.0.2"), at, b"", t), b"port+src2");
    assert_eq!(exchange_from(Some("127.0.0.1"), at, b"", t), b"port");
    let s = legate.addr("sources");
    // Only 127.0.0.1 (or the listener's own address) is SAME_IP_OR_LOOPBACK, as in Envoy:
    // 127.0.0.3 is EXTERNAL, and the EXTERNAL chain is more specific than the ANY ones.
    assert_eq!(exchange_from(Some("127.0.0.3"), s, b"", t), b"external");
    assert_eq!(exchange_from(Some("127.0.0.5"), s, b"", t), b"direct4");
    // Nothing for 127.0.0.1: closed and counted.
    assert_eq!(exchange_from(Some("127.0.0.1"), s, b"", t), b"");
    let stat = |s: &str| legate.stat(&format!("listener.sources.{s}"));
    eventually("no_filter_chain_match", || {
        stat("no_filter_chain_match") == Some(1)
    });
    assert_eq!(stat("downstream_cx_total"), Some(2));
}

#[test]
fn hostile_hellos_do_not_hang_the_listener() {
    let chains = [
        chain("{transport_protocol: tls}", &direct("tls")),
        chain("{transport_protocol: raw_buffer}", &direct("raw")),
    ]
    .concat();
    let extra =
        format!("    listener_filters:\n{TLS_INSPECTOR}    listener_filters_timeout: 0.5s\n");
    let extra_continue = format!("{extra}    continue_on_listener_filters_timeout: true\n");
    let config = bootstrap(
        &[
            listener("strict", 0, &extra, &chains),
            listener("lenient", 0, &extra_continue, &chains),
        ],
        "",
    );
    let legate = Legate::start(&config);
    let strict = legate.addr("strict");
    let t = Duration::from_secs(5);
    // Garbage is not TLS.
    assert_eq!(exchange(strict, b"hello there\r\n", t), b"raw");
    assert_eq!(exchange(strict, &[0u8; 64], t), b"raw");
    // A record header claiming 16 MB: not a TLS record.
    assert_eq!(
        exchange(strict, b"\x16\x03\x01\xff\xff\x01\xff\xff\xff", t),
        b"raw"
    );
    // A real hello is TLS.
    assert_eq!(exchange(strict, &client_hello("x.example", &[]), t), b"tls");

    // A truncated hello held open: the listener times it out, and meanwhile serves others.
    let hello = client_hello("slow.example", &["h2"]);
    let mut slow = TcpStream::connect(strict).unwrap();
    slow.write_all(&hello[..hello.len() / 2]).unwrap();
    let started = Instant::now();
    assert_eq!(exchange(strict, b"meanwhile", t), b"raw");
    slow.set_read_timeout(Some(t)).unwrap();
    let mut out = Vec::new();
    let _ = slow.read_to_end(&mut out);
    assert!(out.is_empty());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let stat = |l: &str, s: &str| legate.stat(&format!("listener.{l}.{s}"));
    assert_eq!(stat("strict", "downstream_pre_cx_timeout"), Some(1));
    // A truncated hello whose sender leaves: remote close, counted.
    assert_eq!(exchange(strict, &hello[..30], t), b"");
    eventually("remote close", || {
        stat("strict", "downstream_listener_filter_remote_close") == Some(1)
    });
    // A hello announcing more than 16 KiB: closed at once.
    assert_eq!(
        exchange(strict, b"\x16\x03\x01\x40\x00\x01\x00\x4e\x20", t),
        b""
    );
    assert_eq!(legate.stat("tls_inspector.client_hello_too_large"), Some(1));

    // With continue_on_listener_filters_timeout the connection goes on as raw_buffer.
    let lenient = legate.addr("lenient");
    let mut slow = TcpStream::connect(lenient).unwrap();
    slow.write_all(&hello[..20]).unwrap();
    slow.set_read_timeout(Some(t)).unwrap();
    let mut out = [0u8; 3];
    slow.read_exact(&mut out).unwrap();
    assert_eq!(&out, b"raw");
    assert_eq!(stat("lenient", "downstream_pre_cx_timeout"), Some(1));
}

#[test]
fn http_inspector_and_echo() {
    let chains = [
        chain("{application_protocols: [h2c]}", &direct("h2c")),
        chain("{application_protocols: [http/1.1, http/1.0]}", &direct("h1")),
        chain(
            "",
            "      filters:\n      - name: envoy.filters.network.echo\n        typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo}\n",
        ),
    ]
    .concat();
    let config = bootstrap(
        &[listener(
            "http",
            0,
            &format!("    listener_filters:\n{TLS_INSPECTOR}{HTTP_INSPECTOR}"),
            &chains,
        )],
        "",
    );
    let legate = Legate::start(&config);
    let addr = legate.addr("http");
    let t = Duration::from_secs(5);
    assert_eq!(
        exchange(addr, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", t),
        b"h1"
    );
    assert_eq!(exchange(addr, b"GET / HTTP/1.0\r\n\r\n", t), b"h1");
    assert_eq!(
        exchange(addr, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", t),
        b"h2c"
    );
    assert_eq!(exchange(addr, b"echo me\n", t), b"echo me\n");
    // TLS: the http_inspector stands aside; ALPN from the hello decides.
    let hello = client_hello("x.example", &["http/1.1"]);
    assert_eq!(exchange(addr, &hello, t), b"h1");
    let hello = client_hello("x.example", &["x-other"]);
    assert_eq!(exchange(addr, &hello, t), hello);
    assert_eq!(legate.stat("http_inspector.http11_found"), Some(1));
    assert_eq!(legate.stat("http_inspector.http10_found"), Some(1));
    assert_eq!(legate.stat("http_inspector.http2_found"), Some(1));
    assert_eq!(legate.stat("http_inspector.http_not_found"), Some(1));
}

/// The same listener config in Envoy 1.40 and in Legate, and a matrix of connections (SNI,
/// ALPN, source address, plaintext): each must reach the same chain (or none) in both.
#[test]
fn chain_selection_matches_envoy() {
    let Some(envoy) = envoy_binary() else {
        eprintln!("Envoy not found: the differential half is skipped");
        return;
    };
    // Each chain proxies to its own upstream, which names itself first: the reply tells the
    // chain. (direct_response would not do: Envoy closes with the peeked hello unread, and the
    // reset can discard its response before the client reads it.)
    let matchers = [
        ("exact", "{server_names: [www.example.com]}".to_owned()),
        ("wild", "{server_names: [\"*.example.com\"]}".to_owned()),
        ("wild-h2", "{server_names: [\"*.example.com\"], application_protocols: [h2], transport_protocol: tls}".to_owned()),
        ("tld", "{server_names: [\"*.com\"]}".to_owned()),
        ("tls-alpn", "{transport_protocol: tls, application_protocols: [h2, http/1.1]}".to_owned()),
        ("tls-src2", "{transport_protocol: tls, source_prefix_ranges: [{address_prefix: 127.0.0.2, prefix_len: 32}]}".to_owned()),
        ("raw-local-port1", "{transport_protocol: raw_buffer, source_type: SAME_IP_OR_LOOPBACK, source_ports: [1]}".to_owned()),
        ("raw-24", "{transport_protocol: raw_buffer, source_prefix_ranges: [{address_prefix: 127.0.0.0, prefix_len: 24}]}".to_owned()),
        ("raw-8", "{transport_protocol: raw_buffer, source_prefix_ranges: [{address_prefix: 127.0.0.0, prefix_len: 8}]}".to_owned()),
    ];
    let mut upstreams = Vec::new();
    let mut chains = String::new();
    let mut clusters = String::new();
    for (tag, matcher) in &matchers {
        let tag: &'static str = tag;
        let upstream = TcpUpstream::start(
            Box::leak(format!("{tag}|").into_bytes().into_boxed_slice()),
            true,
        );
        chains.push_str(&chain(matcher, &tcp_proxy(tag, tag, "")));
        clusters.push_str(&cluster(tag, upstream.addr, ""));
        upstreams.push(upstream);
    }
    let envoy_port = free_port();
    let body = |port: u16| {
        listener(
            "diff",
            port,
            &format!("    listener_filters:\n{TLS_INSPECTOR}    listener_filters_timeout: 1s\n"),
            &chains,
        )
    };
    let envoy_config = bootstrap(&[body(envoy_port)], &clusters);
    let legate = Legate::start(&bootstrap(&[body(0)], &clusters));
    let _envoy = EnvoyProcess::start(&envoy, &envoy_config, envoy_port);
    let cases: Vec<(&str, Option<&str>, Vec<&str>)> = vec![
        ("127.0.0.1", Some("www.example.com"), vec![]),
        ("127.0.0.1", Some("WWW.EXAMPLE.COM"), vec!["h2"]),
        ("127.0.0.1", Some("api.example.com"), vec![]),
        ("127.0.0.1", Some("api.example.com"), vec!["h2"]),
        ("127.0.0.1", Some("api.example.com"), vec!["http/1.1", "h2"]),
        ("127.0.0.1", Some("a.b.example.com"), vec!["h2"]),
        ("127.0.0.1", Some("example.com"), vec![]),
        ("127.0.0.1", Some("foo.org"), vec!["h2"]),
        ("127.0.0.1", Some("foo.org"), vec!["spdy/3"]),
        ("127.0.0.2", Some("foo.org"), vec![]),
        ("127.0.0.2", Some("foo.org"), vec!["h2"]),
        ("127.0.0.3", Some("foo.org"), vec![]),
        ("127.0.0.1", None, vec![]),
        ("127.0.1.1", None, vec![]),
        ("127.0.0.9", None, vec![]),
        ("127.0.0.1", Some("foo.org"), vec![]),
    ];
    let mut differences = Vec::new();
    for (source, sni, alpn) in &cases {
        let data = match sni {
            Some(s) => client_hello(s, alpn),
            None => b"plain text\n".to_vec(),
        };
        let ours = tagged_reply(source, legate.addr("diff"), &data);
        let theirs = tagged_reply(
            source,
            format!("127.0.0.1:{envoy_port}").parse().unwrap(),
            &data,
        );
        let show = |v: &[u8]| match v.iter().position(|&b| b == b'|') {
            Some(i) => String::from_utf8_lossy(&v[..i]).into_owned(),
            None if v.is_empty() => "(closed)".to_owned(),
            None => format!("{} bytes", v.len()),
        };
        eprintln!(
            "{source} {sni:?} {alpn:?}: legate {} envoy {}",
            show(&ours),
            show(&theirs)
        );
        if show(&ours) != show(&theirs) {
            differences.push(format!(
                "{source} {sni:?} {alpn:?}: legate {}, envoy {}",
                show(&ours),
                show(&theirs)
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

/// Sends `data` (without closing: Envoy's tcp_proxy drops a connection whose client finishes
/// before the upstream connection is up) and reads until the upstream's `tag|`, or the end.
fn tagged_reply(source: &str, addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut s = connect_from(Some(source), addr);
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = s.write_all(data);
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while !out.contains(&b'|') {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

fn envoy_binary() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("ENVOY")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/envoy")
        });
    if path.exists() {
        Some(path)
    } else if std::env::var("LEGATE_REQUIRE_ENVOY").is_ok_and(|v| v == "1") {
        panic!("Envoy is required (LEGATE_REQUIRE_ENVOY=1) but {path:?} does not exist");
    } else {
        None
    }
}

/// Envoy on loopback with a unique base id, killed on drop.
struct EnvoyProcess {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl EnvoyProcess {
    fn start(binary: &std::path::Path, yaml: &str, port: u16) -> EnvoyProcess {
        let dir = temp_dir("envoy");
        let config = dir.join("envoy.yaml");
        // Envoy needs a real admin port; 0 is fine for it.
        std::fs::write(&config, yaml).unwrap();
        let base_id = 40_000 + (std::process::id() % 20_000);
        let child = std::process::Command::new(binary)
            .arg("-c")
            .arg(&config)
            .args([
                "--base-id",
                &base_id.to_string(),
                "--concurrency",
                "1",
                "-l",
                "error",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start envoy");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "Envoy did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        EnvoyProcess { child, dir }
    }
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A listener with the `proxy_protocol` listener filter in front of an HTTP connection
/// manager whose direct response echoes the addresses it sees.
fn proxy_protocol_bootstrap() -> String {
    let hcm = |prefix: &str| {
        format!(
            r#"      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {prefix}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                direct_response: {{status: 200, body: {{inline_string: "ok"}}}}
                response_headers_to_add:
                - header: {{key: x-remote, value: "%DOWNSTREAM_REMOTE_ADDRESS%"}}
                - header: {{key: x-direct, value: "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%"}}
                - header: {{key: x-local, value: "%DOWNSTREAM_LOCAL_ADDRESS%"}}
                - header: {{key: x-direct-local, value: "%DOWNSTREAM_DIRECT_LOCAL_ADDRESS%"}}
                - header: {{key: x-chain, value: "%FILTER_CHAIN_NAME%"}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
        )
    };
    let listener = |name: &str, config: &str| {
        format!(
            "  - name: {name}\n    stat_prefix: {name}\n    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}\n    listener_filters_timeout: 1s\n    listener_filters:\n    - name: envoy.filters.listener.proxy_protocol\n      typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol{config}}}\n    filter_chains:\n    - name: pp-chain\n      filters:\n{}",
            hcm(name)
        )
    };
    format!(
        "admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}\nstatic_resources:\n  listeners:\n{}{}",
        listener("strict", ""),
        listener(
            "optional",
            ", allow_requests_without_proxy_protocol: true, stat_prefix: optional"
        )
    )
}

/// A PROXY version 2 header for a TCP over IPv4 connection, with `extra` bytes of TLVs (or a
/// lie: `declared` overrides the length field).
fn proxy_v2(src: [u8; 4], dst: [u8; 4], ports: (u16, u16), declared: Option<u16>) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11]);
    h.extend_from_slice(&declared.unwrap_or(12 + 4).to_be_bytes());
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(&ports.0.to_be_bytes());
    h.extend_from_slice(&ports.1.to_be_bytes());
    h.extend_from_slice(&[0x04, 0x00, 0x01, 0xAA]); // a NOOP TLV, skipped
    h
}

/// What a request sent after `prefix` gets: (status, x-remote, x-local), or None if the
/// connection was closed without a response.
fn through_proxy_header(addr: SocketAddr, prefix: &[u8]) -> Option<(u16, String, String, String)> {
    let request = [
        prefix,
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    ]
    .concat();
    let raw = e2e::raw_exchange(addr, &request, Duration::from_secs(3));
    let r = e2e::parse_response(&raw)?;
    let h = |n: &str| r.header(n).unwrap_or("").to_owned();
    Some((r.status, h("x-remote"), h("x-direct"), h("x-local")))
}

/// The PROXY protocol listener filter, checked against Envoy: versions 1 and 2 restore the
/// client's addresses (the direct peer stays the proxy's), a missing header closes the
/// connection unless allowed, a malformed one closes it, and one that claims more bytes than
/// it sends runs into `listener_filters_timeout`.
#[test]
fn proxy_protocol_restores_addresses_like_envoy() {
    let proxy = e2e::start_proxy(&proxy_protocol_bootstrap());
    let strict = proxy.addr("strict");
    let optional = proxy.addr("optional");

    let (status, remote, direct, local) =
        through_proxy_header(strict, b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n")
            .expect("a response after a v1 header");
    assert_eq!(status, 200);
    assert_eq!(remote, "192.0.2.1:56324");
    assert!(direct.starts_with("127.0.0.1:"), "{direct}");
    assert_eq!(local, "198.51.100.2:443");

    let v2 = proxy_v2([203, 0, 113, 7], [198, 51, 100, 9], (40000, 8443), None);
    let (status, remote, _, local) =
        through_proxy_header(strict, &v2).expect("a response after a v2 header");
    assert_eq!(status, 200);
    assert_eq!(remote, "203.0.113.7:40000");
    assert_eq!(local, "198.51.100.9:8443");
    // The socket's own local address stays readable, and the chain's name.
    let request = [
        &v2[..],
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    ]
    .concat();
    let raw = e2e::raw_exchange(strict, &request, Duration::from_secs(3));
    let r = e2e::parse_response(&raw).expect("a response");
    assert_eq!(
        r.header("x-direct-local"),
        Some(strict.to_string().as_str())
    );
    assert_eq!(r.header("x-chain"), Some("pp-chain"));

    // No header: closed on the strict listener, served on the one that allows it.
    assert_eq!(through_proxy_header(strict, b""), None);
    let (status, remote, _, _) = through_proxy_header(optional, b"").expect("served");
    assert_eq!(status, 200);
    assert!(remote.starts_with("127.0.0.1:"), "{remote}");
    // Malformed: a port out of range.
    assert_eq!(
        through_proxy_header(strict, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n"),
        None
    );
    // A header that claims 60,000 bytes and sends 16: the filters' 1 s timeout closes it.
    let lying = proxy_v2([1, 2, 3, 4], [5, 6, 7, 8], (1, 2), Some(60000));
    let started = Instant::now();
    assert_eq!(through_proxy_header(strict, &lying), None);
    assert!(started.elapsed() < Duration::from_secs(3));

    eventually("the proxy_proto stats", || {
        proxy.stat("proxy_proto.versions.v1.found") == Some(1)
            && proxy.stat("proxy_proto.versions.v2.found") == Some(2)
            && proxy.stat("proxy_proto.not_found_disallowed") == Some(1)
            && proxy.stat("proxy_proto.versions.v1.error") == Some(1)
            && proxy.stat("downstream_cx_proxy_proto_error") == Some(2)
            && proxy.stat("proxy_proto.optional.not_found_allowed") == Some(1)
            && proxy.stat("listener.strict.downstream_pre_cx_timeout") == Some(1)
    });
    proxy_still_serves(optional);
}

/// A documentation address (RFC 5737) as a PROXY header's source.
const TEST_NET: [u8; 4] = [192, 0, 2, 1];

/// A PROXY version 2 header: `command` 1 is `PROXY`, 0 `LOCAL`; `family` 0x11 is TCP over
/// IPv4; `body` holds the addresses and TLVs.
fn v2_header(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x20 | command, family]);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(body);
    h
}

/// The addresses of a TCP over IPv4 header, from `source`:`port` to 198.51.100.2:443, then
/// these TLVs.
fn v2_body(source: [u8; 4], port: u16, tlvs: &[(u8, &[u8])]) -> Vec<u8> {
    let mut body = source.to_vec();
    body.extend_from_slice(&[198, 51, 100, 2]);
    body.extend_from_slice(&port.to_be_bytes());
    body.extend_from_slice(&443u16.to_be_bytes());
    for (kind, value) in tlvs {
        body.push(*kind);
        body.extend_from_slice(&(value.len() as u16).to_be_bytes());
        body.extend_from_slice(value);
    }
    body
}

/// The TLVs of PROXY version 2 headers as dynamic metadata, checked against Envoy 1.40 (the
/// test passes against it with `LEGATE_E2E_PROXY=envoy`): `rules` name the TLVs to keep and
/// under which namespace and key; tcp_proxy's access log prints them with
/// `%DYNAMIC_METADATA%` (bytes that are not UTF-8 as `!`, the first of two TLVs of one type);
/// a TLV that runs past its header, an unspecified address family or a source that is not
/// unicast closes the connection as a version 2 error; a `LOCAL` header's TLVs are not read.
#[test]
fn proxy_protocol_tlvs_become_dynamic_metadata_like_envoy() {
    let upstream = TcpUpstream::start(b"", true);
    let scratch = ScratchDir::new("l4-tlv");
    let log = scratch.join("tlv.log");
    let ns = "envoy.filters.listener.proxy_protocol";
    let access_log = format!(
        "          access_log:\n          - name: envoy.access_loggers.file\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: {}\n              log_format: {{text_format_source: {{inline_string: \"%DOWNSTREAM_REMOTE_PORT% [%DYNAMIC_METADATA({ns}:vpce)%] [%DYNAMIC_METADATA(my.ns:alpn)%] [%DYNAMIC_METADATA({ns})%] [%DYNAMIC_METADATA({ns}:vpce):3%]\\n\"}}}}\n",
        log.display()
    );
    let filters = r#"    listener_filters_timeout: 2s
    listener_filters:
    - name: envoy.filters.listener.proxy_protocol
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol
        rules:
        - {tlv_type: 0xEA, on_tlv_present: {key: vpce}}
        - {tlv_type: 0x02, on_tlv_present: {key: authority}}
        - {tlv_type: 0x01, on_tlv_present: {key: alpn, metadata_namespace: my.ns}}
"#;
    let config = bootstrap(
        &[listener(
            "tlv",
            0,
            filters,
            &chain("", &tcp_proxy("tlv", "backend", &access_log)),
        )],
        &cluster("backend", upstream.addr, ""),
    );
    let proxy = e2e::start_proxy(&config);
    let addr = proxy.addr("tlv");
    let served = |header: Vec<u8>| served_after(addr, &header);
    // Served, one access log line each (by the source port the header gives).
    let tlvs: [&[(u8, &[u8])]; 5] = [
        &[
            (0xEA, b"vpce-123"),
            (0x01, b"h2"),
            (0x05, b"other"),
            (0x02, b"example.com"),
        ],
        &[(0xEA, b"\xff\xfe\"q\x01z")],
        &[(0xEA, b"one"), (0xEA, b"two")],
        &[],
        &[(0xEA, b"")],
    ];
    for (i, tlvs) in tlvs.iter().enumerate() {
        assert!(
            served(v2_header(
                1,
                0x11,
                &v2_body(TEST_NET, 1001 + i as u16, tlvs)
            )),
            "case {i}"
        );
    }
    // `LOCAL`: its TLVs (one cut short here) are not read; the connection keeps its address.
    assert!(served(v2_header(
        0,
        0x11,
        &[&v2_body(TEST_NET, 1, &[])[..], &[0xEA, 0, 9, b'a']].concat()
    )));
    // Closed: a TLV cut short, one whose value runs past the end, an unspecified family, a
    // source that is not unicast.
    let body = v2_body(TEST_NET, 2001, &[(0xEA, b"ok")]);
    let mut any_source = v2_body(TEST_NET, 2002, &[]);
    any_source[..4].copy_from_slice(&[0, 0, 0, 0]);
    for header in [
        v2_header(1, 0x11, &[&body[..], &[0x05]].concat()),
        v2_header(1, 0x11, &[&body[..], &[0x05, 0x00, 0x09, b'x']].concat()),
        v2_header(1, 0x00, &[]),
        v2_header(1, 0x11, &any_source),
    ] {
        assert!(!served(header));
    }
    eventually("six access log lines", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.lines().count() == 6)
    });
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    let local = lines.pop().unwrap();
    assert!(local.ends_with(" [-] [-] [-] [-]"), "{local}");
    assert_eq!(
        lines,
        [
            r#"1001 [vpce-123] [h2] [{"authority":"example.com","vpce":"vpce-123"}] [vpc]"#,
            "1002 [!!\"q\u{1}z] [-] [{\"vpce\":\"!!\\\"q\\u0001z\"}] [!!\"]",
            r#"1003 [one] [-] [{"vpce":"one"}] [one]"#,
            "1004 [-] [-] [-] [-]",
            r#"1005 [] [-] [{"vpce":""}] []"#,
        ]
    );
    eventually("the proxy_proto stats", || {
        proxy.stat("proxy_proto.versions.v2.found") == Some(6)
            && proxy.stat("proxy_proto.versions.v2.error") == Some(4)
    });
}

/// Serves `header` then `ping` on a new connection; whether `ping` came back (the echo
/// upstream behind tcp_proxy). No half-close before the echo: Envoy closes a connection whose
/// FIN comes while its listener filters run (a known difference).
fn served_after(addr: SocketAddr, header: &[u8]) -> bool {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(&[header, b"ping"].concat());
    let mut echoed = [0u8; 4];
    s.read_exact(&mut echoed).is_ok() && &echoed == b"ping"
}

/// The network RBAC filter on a PROXY header's TLVs, checked against Envoy 1.40 (passes with
/// `LEGATE_E2E_PROXY=envoy`): a `metadata` principal allows the endpoint ids it matches, and
/// the shadow rules' verdict and policy go into the connection's dynamic metadata under
/// `envoy.filters.network.rbac`, their keys prefixed with `shadow_rules_stat_prefix`.
#[test]
fn network_rbac_matches_tlv_metadata_and_records_shadow_verdicts_like_envoy() {
    let upstream = TcpUpstream::start(b"", true);
    let scratch = ScratchDir::new("l4-rbac-md");
    let log = scratch.join("rbac.log");
    let rbac = r#"      filters:
      - name: envoy.filters.network.rbac
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: r.
          shadow_rules_stat_prefix: sh_
          rules:
            action: ALLOW
            policies:
              vpce-allowed:
                permissions: [{any: true}]
                principals:
                - metadata:
                    filter: envoy.filters.listener.proxy_protocol
                    path: [{key: vpce}]
                    value: {string_match: {prefix: vpce-1}}
          shadow_rules:
            action: DENY
            policies:
              shadow-pol:
                permissions: [{any: true}]
                principals: [{remote_ip: {address_prefix: 192.0.2.0, prefix_len: 24}}]
"#;
    let access_log = format!(
        "          access_log:\n          - name: envoy.access_loggers.file\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: {}\n              log_format: {{text_format_source: {{inline_string: \"%DOWNSTREAM_REMOTE_PORT% %DYNAMIC_METADATA(envoy.filters.network.rbac)%\\n\"}}}}\n",
        log.display()
    );
    let tcp = tcp_proxy("t", "backend", &access_log).replacen("      filters:\n", "", 1);
    let filters = r#"    listener_filters:
    - name: envoy.filters.listener.proxy_protocol
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol
        rules: [{tlv_type: 0xEA, on_tlv_present: {key: vpce}}]
"#;
    let config = bootstrap(
        &[listener(
            "rbac",
            0,
            filters,
            &chain("", &format!("{rbac}{tcp}")),
        )],
        &cluster("backend", upstream.addr, ""),
    );
    let proxy = e2e::start_proxy(&config);
    let addr = proxy.addr("rbac");
    let header =
        |source, port, tlvs: &[(u8, &[u8])]| v2_header(1, 0x11, &v2_body(source, port, tlvs));
    assert!(served_after(
        addr,
        &header(TEST_NET, 1, &[(0xEA, b"vpce-123")])
    ));
    assert!(served_after(
        addr,
        &header([10, 0, 0, 1], 2, &[(0xEA, b"vpce-123")])
    ));
    assert!(!served_after(
        addr,
        &header([10, 0, 0, 1], 3, &[(0xEA, b"vpce-999")])
    ));
    assert!(!served_after(addr, &header([10, 0, 0, 1], 4, &[])));
    eventually("the RBAC stats", || {
        proxy.stat("r.rbac.allowed") == Some(2)
            && proxy.stat("r.rbac.denied") == Some(2)
            && proxy.stat("r.rbac.sh_.shadow_allowed") == Some(3)
            && proxy.stat("r.rbac.sh_.shadow_denied") == Some(1)
    });
    // The served connections' lines (Envoy also logs the denied ones: its tcp_proxy has
    // connected by the time RBAC decides).
    eventually("two access log lines", || {
        std::fs::read_to_string(&log).is_ok_and(|l| {
            l.lines()
                .filter(|l| l.len() > 2 && !l.starts_with("3 ") && !l.starts_with("4 "))
                .count()
                == 2
        })
    });
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("1 ") || l.starts_with("2 "))
        .collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            r#"1 {"sh_shadow_effective_policy_id":"shadow-pol","sh_shadow_engine_result":"denied"}"#,
            r#"2 {"sh_shadow_engine_result":"allowed"}"#,
        ]
    );
}

fn proxy_still_serves(addr: SocketAddr) {
    assert_eq!(through_proxy_header(addr, b"").map(|r| r.0), Some(200));
}

/// `sni_cluster` before `tcp_proxy`: the connection goes to the cluster its SNI names, to the
/// tcp_proxy's own cluster without SNI, and nowhere (closed, `downstream_cx_no_route`) when no
/// cluster has that name. Checked against Envoy too.
#[test]
fn sni_cluster_routes_by_server_name_like_envoy() {
    let a = TcpUpstream::start(b"A", true);
    let b = TcpUpstream::start(b"B", true);
    let fallback = TcpUpstream::start(b"F", true);
    let filters = format!(
        "      filters:\n      - name: envoy.filters.network.sni_cluster\n        typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.network.sni_cluster.v3.SniCluster}}\n{}",
        tcp_proxy("sni", "fallback", "").replacen("      filters:\n", "", 1)
    );
    let config = bootstrap(
        &[listener(
            "sni",
            0,
            &format!("    listener_filters:\n{TLS_INSPECTOR}"),
            &chain("", &filters),
        )],
        &format!(
            "{}{}{}",
            cluster("a.example.com", a.addr, ""),
            cluster("b.example.com", b.addr, ""),
            cluster("fallback", fallback.addr, "")
        ),
    );
    let proxy = e2e::start_proxy(&config);
    let addr = proxy.addr("sni");
    // The client keeps its side open (Envoy closes a connection whose peer half-closes while
    // the listener filters run) and reads the upstream's tag and echo.
    let talk = |data: &[u8]| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(data).unwrap();
        let mut out = vec![0u8; data.len() + 1];
        let mut got = 0;
        while got < out.len() {
            match s.read(&mut out[got..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        out.truncate(got);
        out
    };
    for (sni, tag) in [("a.example.com", b'A'), ("b.example.com", b'B')] {
        let hello = client_hello(sni, &[]);
        let reply = talk(&hello);
        assert_eq!(reply.first(), Some(&tag), "{sni}");
        assert_eq!(&reply[1..], &hello[..], "{sni}");
    }
    let reply = talk(b"no tls here, a plain stream");
    assert_eq!(
        reply.first(),
        Some(&b'F'),
        "no SNI: the tcp_proxy's cluster"
    );
    let reply = talk(&client_hello("c.example.com", &[]));
    assert!(reply.is_empty(), "no cluster named c.example.com");
    eventually("tcp.sni.downstream_cx_no_route", || {
        proxy.stat("tcp.sni.downstream_cx_no_route") == Some(1)
    });
}

/// `sni_cluster` alone cannot end a chain, as in Envoy.
#[test]
fn sni_cluster_must_not_end_a_chain() {
    let config = bootstrap(
        &[listener(
            "sni",
            0,
            "",
            &chain(
                "",
                "      filters:\n      - name: envoy.filters.network.sni_cluster\n        typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.network.sni_cluster.v3.SniCluster}\n",
            ),
        )],
        "",
    );
    let Err(err) = Legate::try_start_args(&config, &[]) else {
        panic!("a chain ending with sni_cluster was accepted");
    };
    assert!(
        err.contains("non-terminal filter named envoy.filters.network.sni_cluster"),
        "{err}"
    );
}

/// The network RBAC filter, checked against Envoy: an ALLOW policy on the remote IP lets
/// 127.0.0.2 through and closes 127.0.0.1's connection; a DENY policy on the SNI (found by
/// tls_inspector) refuses one name and lets the others through; the decisions are counted in
/// `<stat_prefix>rbac.*`, and shadow rules only count.
#[test]
fn network_rbac_allows_and_denies_like_envoy() {
    let tls_up = TcpUpstream::start(b"T", true);
    let rbac = |prefix: &str, rules: &str| {
        format!(
            "      - name: envoy.filters.network.rbac\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC\n          stat_prefix: {prefix}\n{rules}"
        )
    };
    let by_ip = rbac(
        "by_ip.",
        "          rules:\n            action: ALLOW\n            policies:\n              two:\n                permissions: [{any: true}]\n                principals: [{remote_ip: {address_prefix: 127.0.0.2, prefix_len: 32}}]\n          shadow_rules:\n            action: DENY\n            policies:\n              all:\n                permissions: [{destination_port_range: {start: 1, end: 65535}}]\n                principals: [{any: true}]\n",
    );
    let by_sni = rbac(
        "by_sni.",
        "          rules:\n            action: DENY\n            policies:\n              blocked:\n                permissions: [{requested_server_name: {exact: blocked.example.com}}]\n                principals: [{any: true}]\n",
    );
    let echo = "      - name: envoy.filters.network.echo\n        typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo}\n";
    let config = bootstrap(
        &[
            listener("ip", 0, "", &format!("    - filters:\n{by_ip}{echo}")),
            listener(
                "sni",
                0,
                &format!("    listener_filters:\n{TLS_INSPECTOR}"),
                &format!(
                    "    - filters:\n{by_sni}{}",
                    tcp_proxy("sni", "tls_up", "").replacen("      filters:\n", "", 1)
                ),
            ),
        ],
        &cluster("tls_up", tls_up.addr, ""),
    );
    let proxy = e2e::start_proxy(&config);
    // The client keeps its side open until it has its answer (or the proxy closes).
    let talk = |source: &str, addr: SocketAddr, data: &[u8], expect: usize| {
        let mut s = connect_from(Some(source), addr);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(data).unwrap();
        let mut out = vec![0u8; expect];
        let mut got = 0;
        while got < expect {
            match s.read(&mut out[got..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        out.truncate(got);
        out
    };
    let ip = proxy.addr("ip");
    assert_eq!(talk("127.0.0.2", ip, b"hello", 5), b"hello");
    assert_eq!(talk("127.0.0.1", ip, b"hello", 5), b"");
    let sni = proxy.addr("sni");
    let hello = client_hello("fine.example.com", &[]);
    assert_eq!(talk("127.0.0.1", sni, &hello, 1), b"T");
    let hello = client_hello("blocked.example.com", &[]);
    assert_eq!(talk("127.0.0.1", sni, &hello, 1), b"");
    eventually("the rbac stats", || {
        proxy.stat("by_ip.rbac.allowed") == Some(1)
            && proxy.stat("by_ip.rbac.denied") == Some(1)
            && proxy.stat("by_ip.rbac.shadow_denied") == Some(2)
            && proxy.stat("by_sni.rbac.allowed") == Some(1)
            && proxy.stat("by_sni.rbac.denied") == Some(1)
    });
}

/// A ClientHello written by hand with GREASE values (RFC 8701) among its cipher suites,
/// extensions, supported groups and versions, as browsers send them.
fn grease_hello() -> Vec<u8> {
    let ext = |kind: u16, data: &[u8]| {
        let mut e = kind.to_be_bytes().to_vec();
        e.extend_from_slice(&(data.len() as u16).to_be_bytes());
        e.extend_from_slice(data);
        e
    };
    let list16 = |items: &[u16]| {
        let mut d = ((items.len() * 2) as u16).to_be_bytes().to_vec();
        for i in items {
            d.extend_from_slice(&i.to_be_bytes());
        }
        d
    };
    let mut extensions = Vec::new();
    extensions.extend(ext(0x1a1a, &[]));
    let name = b"grease.example.com";
    let mut sni = ((name.len() + 3) as u16).to_be_bytes().to_vec();
    sni.push(0);
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    extensions.extend(ext(0x0000, &sni));
    extensions.extend(ext(0x000a, &list16(&[0x2a2a, 0x001d, 0x0017])));
    extensions.extend(ext(0x000b, &[1, 0]));
    extensions.extend(ext(0x000d, &list16(&[0x0403, 0x0804, 0x0401])));
    extensions.extend(ext(0x0010, &[0, 3, 2, b'h', b'2']));
    extensions.extend(ext(0x002b, &[6, 0x3a, 0x3a, 0x03, 0x04, 0x03, 0x03]));
    extensions.extend(ext(0x4a4a, &[0]));
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0); // session id
    body.extend(list16(&[0x0a0a, 0x1301, 0x1302, 0xc02b, 0xc02f]));
    body.extend_from_slice(&[1, 0]); // compression: null
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend(extensions);
    let mut handshake = vec![1];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

#[test]
fn tls_inspector_fingerprints_client_hellos_like_envoy() {
    let upstream = TcpUpstream::start(b"", false);
    let scratch = ScratchDir::new("l4-ja");
    let log = scratch.join("ja.log");
    let access_log = format!(
        "          access_log:\n          - name: envoy.access_loggers.file\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: {}\n              log_format: {{text_format_source: {{inline_string: \"%REQUESTED_SERVER_NAME% %TLS_JA3_FINGERPRINT% %TLS_JA4_FINGERPRINT%\\n\"}}}}\n",
        log.display()
    );
    let inspector = r#"    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector
        enable_ja3_fingerprinting: true
        enable_ja4_fingerprinting: true
"#;
    let config = bootstrap(
        &[listener(
            "ja",
            0,
            inspector,
            &chain("", &tcp_proxy("ja", "backend", &access_log)),
        )],
        &cluster("backend", upstream.addr, ""),
    );
    let legate = Legate::start(&config);
    let addr = legate.addr("ja");
    for hello in [
        client_hello("rustls.example.com", &["h2", "http/1.1"]),
        client_hello("plain.example.com", &[]),
        grease_hello(),
    ] {
        exchange(addr, &hello, Duration::from_secs(5));
    }
    eventually("three access log lines", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.lines().count() == 3)
    });
    let lines = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<&str> = lines.lines().collect();
    lines.sort();
    // The values Envoy 1.40 computes for these hellos (the test passes against it too).
    // rustls shuffles its extensions, so only the hand-written hello has a fixed JA3; JA4
    // sorts them and is fixed for all three.
    let fields: Vec<Vec<&str>> = lines.iter().map(|l| l.split(' ').collect()).collect();
    assert_eq!(
        lines[0],
        "grease.example.com b50ca99b99895127b987ebef0ae4f04a t13d0406h2_e00fd9ffaebd_0d385148b956"
    );
    assert_eq!(fields[1][0], "plain.example.com");
    assert_eq!(fields[1][2], "t13d101000_61a7ad8aa9b6_0d308c48d2a3");
    assert_eq!(fields[2][0], "rustls.example.com");
    assert_eq!(fields[2][2], "t13d1011h2_61a7ad8aa9b6_0d308c48d2a3");
    for f in &fields[1..] {
        assert!(
            f[1].len() == 32
                && f[1]
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "JA3 {}",
            f[1]
        );
    }
}

/// A cluster whose connections start with a PROXY header (`upstream_proxy_protocol`, version
/// `version`, `extra` under its `config`) around plain TCP.
fn proxy_protocol_cluster(name: &str, addr: SocketAddr, version: &str, extra: &str) -> String {
    cluster(
        name,
        addr,
        &format!(
            "    transport_socket:\n      name: envoy.transport_sockets.upstream_proxy_protocol\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport\n        config: {{version: {version}{extra}}}\n        transport_socket:\n          name: envoy.transport_sockets.raw_buffer\n          typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer}}\n"
        ),
    )
}

/// An HTTP upstream answering each request with the first line its connection began with.
fn first_line_upstream() -> SocketAddr {
    e2e::thread_per_connection("127.0.0.1", |mut conn| {
        let mut seen = Vec::new();
        if !e2e::read_through_head(&mut conn, &mut seen) {
            return;
        }
        let line = seen
            .split(|&b| b == b'\n')
            .next()
            .unwrap_or_default()
            .to_vec();
        let _ = write!(
            conn,
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            line.len()
        );
        let _ = conn.write_all(&line);
    })
}

/// `upstream_proxy_protocol`: tcp_proxy's upstream connections start with a PROXY header naming
/// the downstream connection (the addresses a PROXY listener filter restored, if it ran), in
/// version 1, and in version 2 with `added_tlvs`; an HTTP cluster's connections too (pooled
/// per downstream connection). The exact bytes, side by side with Envoy.
#[test]
fn upstream_proxy_protocol_headers_as_envoy_writes_them() {
    let upstream = TcpUpstream::start(b"", false);
    let web = first_line_upstream();
    let pp_filter = "    listener_filters:\n    - name: envoy.filters.listener.proxy_protocol\n      typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol}\n";
    let hcm = "      filters:\n      - name: envoy.filters.network.http_connection_manager\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n          stat_prefix: web\n          route_config: {virtual_hosts: [{name: all, domains: [\"*\"], routes: [{match: {prefix: \"/\"}, route: {cluster: web}}]}]}\n          http_filters: [{name: envoy.filters.http.router, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]\n";
    let listeners = [
        listener("v1", 0, "", &chain("", &tcp_proxy("v1", "pp_v1", ""))),
        listener("v2", 0, "", &chain("", &tcp_proxy("v2", "pp_v2", ""))),
        listener(
            "restored",
            0,
            pp_filter,
            &chain("", &tcp_proxy("restored", "pp_v1", "")),
        ),
        listener("http", 0, "", &chain("", hcm)),
    ];
    let clusters = [
        proxy_protocol_cluster("pp_v1", upstream.addr, "V1", ""),
        // "legate" in base64, as YAML gives bytes.
        proxy_protocol_cluster(
            "pp_v2",
            upstream.addr,
            "V2",
            ", added_tlvs: [{type: 224, value: bGVnYXRl}]",
        ),
        proxy_protocol_cluster("web", web, "V1", ""),
    ]
    .concat();
    let proxy = e2e::start_proxy(&bootstrap(&listeners, &clusters));
    // What the upstream received (it echoes it all once the client is done), and the client's
    // own address.
    let send = |listener: &str, data: &[u8]| {
        let addr = proxy.addr(listener);
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let client = conn.local_addr().unwrap();
        conn.write_all(data).unwrap();
        // Envoy closes a connection whose FIN comes while its listener filters run.
        std::thread::sleep(Duration::from_millis(100));
        conn.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        let _ = conn.read_to_end(&mut got);
        (got, client, addr)
    };
    let (got, client, addr) = send("v1", b"hello");
    let expected = format!(
        "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\nhello",
        client.port(),
        addr.port()
    );
    assert_eq!(String::from_utf8_lossy(&got), expected);

    let (got, client, addr) = send("v2", b"hello");
    let mut expected = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x15".to_vec();
    expected.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
    expected.extend_from_slice(&client.port().to_be_bytes());
    expected.extend_from_slice(&addr.port().to_be_bytes());
    expected.extend_from_slice(b"\xe0\x00\x06legatehello");
    assert_eq!(got, expected);

    let (got, _, _) = send(
        "restored",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nhello",
    );
    assert_eq!(
        String::from_utf8_lossy(&got),
        "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nhello"
    );

    // The connection's addresses, not those `x-forwarded-for` claims.
    let r = e2e::http_get(
        proxy.addr("http"),
        "/",
        &[("x-forwarded-for", "203.0.113.9")],
    );
    assert_eq!(r.status, 200);
    let fields: Vec<&str> = r.body.trim_end().split(' ').collect();
    assert_eq!(
        &fields[..4],
        ["PROXY", "TCP4", "127.0.0.1", "127.0.0.1"],
        "{}",
        r.body
    );
    let listener_port = proxy.addr("http").port().to_string();
    assert_eq!(
        fields[5], listener_port,
        "the downstream connection's destination"
    );
}

/// `max_downstream_connection_duration` closes a connection that is still busy, counted in
/// `tcp.<prefix>.max_downstream_connection_duration` and flagged `DT`; `access_log_options`
/// writes an entry when tcp_proxy takes the connection, one once the upstream is connected and
/// one per `access_log_flush_interval` with the bytes so far, before the last one
/// (`%ACCESS_LOG_TYPE%` tells them apart). Runs against Envoy too (`LEGATE_E2E_PROXY=envoy`).
#[test]
fn tcp_proxy_max_connection_duration_and_periodic_access_log() {
    let upstream = TcpUpstream::start(b"", true);
    let scratch = ScratchDir::new("l4-duration");
    let log = scratch.join("tcp.log");
    let extra = format!(
        "          max_downstream_connection_duration: 0.8s
          max_downstream_connection_duration_jitter_percentage: {{value: 25}}
          access_log_options:
            access_log_flush_interval: 0.25s
            flush_access_log_on_connected: true
            flush_access_log_on_start: true
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {}
              log_format: {{text_format_source: {{inline_string: \"%ACCESS_LOG_TYPE% %BYTES_RECEIVED% %BYTES_SENT% %RESPONSE_FLAGS%\\n\"}}}}
",
        log.display()
    );
    let config = bootstrap(
        &[listener(
            "tcp",
            0,
            "",
            &chain("", &tcp_proxy("capped", "backend", &extra)),
        )],
        &cluster("backend", upstream.addr, ""),
    );
    let proxy = e2e::start_proxy(&config);
    let mut s = TcpStream::connect(proxy.addr("tcp")).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let started = Instant::now();
    // Busy all along: a byte out and its echo back every 50 ms, until the proxy closes.
    let mut sent = 0u64;
    let mut echoed = 0u64;
    let closed_after = loop {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the connection outlived its maximum duration"
        );
        if s.write_all(b"x").is_ok() {
            sent += 1;
        }
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => break started.elapsed(),
            Ok(n) => echoed += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break started.elapsed(),
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        closed_after >= Duration::from_millis(750) && closed_after < Duration::from_millis(2500),
        "closed after {closed_after:?} (0.8 s, up to 25% more)"
    );
    assert!(echoed > 5 && echoed <= sent, "{echoed} of {sent}");
    eventually("the maximum duration to be counted", || {
        proxy.stat("tcp.capped.max_downstream_connection_duration") == Some(1)
    });
    assert_eq!(proxy.stat("tcp.capped.idle_timeout"), Some(0));
    // Envoy writes access log files from a flush thread: wait for the last entry.
    let deadline = Instant::now() + Duration::from_secs(15);
    let entries = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("TcpConnectionEnd") || Instant::now() > deadline {
            break text.lines().map(str::to_owned).collect::<Vec<_>>();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let fields: Vec<Vec<&str>> = entries.iter().map(|l| l.split(' ').collect()).collect();
    let first: Vec<&str> = fields.iter().take(2).map(|f| f[0]).collect();
    assert_eq!(
        first,
        ["TcpConnectionStart", "TcpUpstreamConnected"],
        "{entries:#?}"
    );
    let last = fields.last().unwrap();
    assert_eq!(last[0], "TcpConnectionEnd", "{entries:#?}");
    assert_eq!(last[3], "DT", "{entries:#?}");
    let (received, bytes_sent): (u64, u64) = (last[1].parse().unwrap(), last[2].parse().unwrap());
    assert!(received >= echoed && bytes_sent >= echoed, "{entries:#?}");
    let periodic: Vec<&Vec<&str>> = fields.iter().filter(|f| f[0] == "TcpPeriodic").collect();
    assert!(
        (2..=4).contains(&periodic.len()),
        "one entry per 0.25 s of a ~0.8 s connection: {entries:#?}"
    );
    let mut before = 0u64;
    for f in periodic {
        let n: u64 = f[1].parse().unwrap();
        assert!(n >= before && n <= received, "{entries:#?}");
        before = n;
        assert_eq!(f[3], "-", "{entries:#?}");
    }
}

/// A PROXY header's TLVs: (type, value).
type Tlvs = Vec<(u8, Vec<u8>)>;

/// The TLVs of a PROXY header, split from the bytes after a version 2 header of TCP over IPv4
/// (12 address bytes): the address bytes, the TLVs and what follows the header; `None` if
/// `got` does not start with one.
fn upstream_tlvs(got: &[u8]) -> Option<(Vec<u8>, Tlvs, Vec<u8>)> {
    let rest = got.strip_prefix(b"\r\n\r\n\0\r\nQUIT\n\x21\x11".as_slice())?;
    let length = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
    let (body, after) = rest[2..].split_at(length);
    let (addresses, mut tlvs) = body.split_at(12);
    let mut found = Vec::new();
    while let [kind, high, low, more @ ..] = tlvs {
        let n = usize::from(u16::from_be_bytes([*high, *low]));
        found.push((*kind, more[..n].to_vec()));
        tlvs = &more[n..];
    }
    Some((addresses.to_vec(), found, after.to_vec()))
}

/// PROXY protocol TLVs passed through to the upstream, side by side with Envoy 1.40: the
/// listener filter keeps the TLVs its `pass_through_tlvs` names (none without it), the
/// cluster's `pass_through_tlvs` picks among them (none without it), `added_tlvs` come first
/// and replace a passed TLV of the same type; tcp_proxy's `proxy_protocol_tlvs` add TLVs when
/// no PROXY header came in (`ADD_IF_ABSENT`), or merge with the received ones by its merge
/// policy (replacing those of their types, ahead of the rest; or appended).
#[test]
fn proxy_protocol_tlvs_pass_through_to_the_upstream_like_envoy() {
    let upstream = TcpUpstream::start(b"", false);
    let pp_filter = |pass: &str| {
        format!(
            "    listener_filters:\n    - name: envoy.filters.listener.proxy_protocol\n      typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol{pass}}}\n"
        )
    };
    let include = |types: &str| format!("{{match_type: INCLUDE, tlv_type: [{types}]}}");
    let tcp_tlvs = |policy: &str| {
        format!("          proxy_protocol_tlvs: [{{type: 240, value: dGNw}}]\n{policy}")
    };
    let listeners = [
        // The listener keeps 0xE1 and 0xE2; the cluster passes all, and adds its own 0xE2.
        listener(
            "keep_some",
            0,
            &pp_filter(&format!(", pass_through_tlvs: {}", include("225, 226"))),
            &chain("", &tcp_proxy("a", "pass_all", "")),
        ),
        // The listener keeps all; the cluster passes 0xE3 only.
        listener(
            "keep_all",
            0,
            &pp_filter(", pass_through_tlvs: {}"),
            &chain("", &tcp_proxy("b", "pass_e3", "")),
        ),
        // The listener keeps none: nothing to pass.
        listener(
            "keep_none",
            0,
            &pp_filter(""),
            &chain("", &tcp_proxy("c", "pass_all", "")),
        ),
        // No PROXY header came in: tcp_proxy's TLVs, with the connection's addresses.
        listener(
            "from_tcp_proxy",
            0,
            "",
            &chain("", &tcp_proxy("d", "pass_all", &tcp_tlvs(""))),
        ),
        // A PROXY header came in: tcp_proxy's TLVs are ignored (ADD_IF_ABSENT)...
        listener(
            "absent_only",
            0,
            &pp_filter(", pass_through_tlvs: {}"),
            &chain("", &tcp_proxy("e", "pass_all", &tcp_tlvs(""))),
        ),
        // ... or they replace those of the same type...
        listener(
            "overwritten",
            0,
            &pp_filter(", pass_through_tlvs: {}"),
            &chain(
                "",
                &tcp_proxy(
                    "g",
                    "pass_all",
                    "          proxy_protocol_tlvs: [{type: 240, value: dGNw}, {type: 225, value: dGNw}]\n          proxy_protocol_tlv_merge_policy: OVERWRITE_BY_TYPE_IF_EXISTS_OR_ADD\n",
                ),
            ),
        ),
        // ... or are appended.
        listener(
            "appended",
            0,
            &pp_filter(", pass_through_tlvs: {}"),
            &chain(
                "",
                &tcp_proxy(
                    "f",
                    "pass_all",
                    &tcp_tlvs(
                        "          proxy_protocol_tlv_merge_policy: APPEND_IF_EXISTS_OR_ADD\n",
                    ),
                ),
            ),
        ),
    ];
    let clusters = [
        // "override" in base64.
        proxy_protocol_cluster(
            "pass_all",
            upstream.addr,
            "V2",
            ", pass_through_tlvs: {}, added_tlvs: [{type: 226, value: b3ZlcnJpZGU=}]",
        ),
        proxy_protocol_cluster(
            "pass_e3",
            upstream.addr,
            "V2",
            &format!(", pass_through_tlvs: {}", include("227")),
        ),
    ]
    .concat();
    let proxy = e2e::start_proxy(&bootstrap(&listeners, &clusters));
    let incoming = v2_header(
        1,
        0x11,
        &v2_body(
            TEST_NET,
            56324,
            &[(0xE1, b"one"), (0xE3, b"three"), (0xE2, b"two")],
        ),
    );
    let send = |listener: &str, header: &[u8]| {
        let mut conn = TcpStream::connect(proxy.addr(listener)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let client = conn.local_addr().unwrap();
        conn.write_all(header).unwrap();
        conn.write_all(b"hello").unwrap();
        // Envoy closes a connection whose FIN comes while its listener filters run.
        std::thread::sleep(Duration::from_millis(100));
        conn.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        let _ = conn.read_to_end(&mut got);
        let (addresses, tlvs, after) = upstream_tlvs(&got)
            .unwrap_or_else(|| panic!("{listener}: no version 2 header in {got:?}"));
        assert_eq!(after, b"hello", "{listener}");
        (addresses, tlvs, client)
    };
    let tlv = |kind: u8, value: &[u8]| (kind, value.to_vec());
    let received_addresses = v2_body(TEST_NET, 56324, &[]);
    // Envoy writes the cluster's `added_tlvs` first, then the passed ones in their order.
    let added = || tlv(0xE2, b"override");
    for (listener, expected) in [
        ("keep_some", vec![added(), tlv(0xE1, b"one")]),
        ("keep_all", vec![tlv(0xE3, b"three")]),
        ("keep_none", vec![added()]),
        (
            "absent_only",
            vec![added(), tlv(0xE1, b"one"), tlv(0xE3, b"three")],
        ),
        (
            "appended",
            vec![
                added(),
                tlv(0xE1, b"one"),
                tlv(0xE3, b"three"),
                tlv(0xF0, b"tcp"),
            ],
        ),
        (
            "overwritten",
            vec![
                added(),
                tlv(0xF0, b"tcp"),
                tlv(0xE1, b"tcp"),
                tlv(0xE3, b"three"),
            ],
        ),
    ] {
        let (addresses, tlvs, _) = send(listener, &incoming);
        assert_eq!(addresses, received_addresses, "{listener}");
        assert_eq!(tlvs, expected, "{listener}");
    }
    let (addresses, tlvs, client) = send("from_tcp_proxy", b"");
    let mut own = vec![127, 0, 0, 1, 127, 0, 0, 1];
    own.extend_from_slice(&client.port().to_be_bytes());
    own.extend_from_slice(&proxy.addr("from_tcp_proxy").port().to_be_bytes());
    assert_eq!(addresses, own);
    assert_eq!(tlvs, vec![added(), tlv(0xF0, b"tcp")]);
}

/// `upstream_connect_mode: ON_DOWNSTREAM_DATA`: no upstream connection for a client that sends
/// nothing (a server-first upstream's greeting waits), one as soon as it sends; with
/// `IMMEDIATE` the greeting comes first. `backoff_options` spaces the connect attempts to a
/// closed port, all counted. Runs against Envoy too (`LEGATE_E2E_PROXY=envoy`).
#[test]
fn tcp_proxy_connects_on_downstream_data_and_backs_off_between_attempts() {
    let upstream = TcpUpstream::start(b"hello from the server\n", true);
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let lazy = "          upstream_connect_mode: ON_DOWNSTREAM_DATA\n          max_early_data_bytes: 1024\n";
    let backoff = "          max_connect_attempts: 4\n          backoff_options: {base_interval: 0.1s, max_interval: 0.2s}\n";
    let config = bootstrap(
        &[
            listener(
                "lazy",
                0,
                "",
                &chain("", &tcp_proxy("lazy", "lazy_backend", lazy)),
            ),
            listener(
                "eager",
                0,
                "",
                &chain("", &tcp_proxy("eager", "eager_backend", "")),
            ),
            listener(
                "retry",
                0,
                "",
                &chain("", &tcp_proxy("retry", "closed", backoff)),
            ),
        ],
        &[
            cluster("lazy_backend", upstream.addr, ""),
            cluster("eager_backend", upstream.addr, ""),
            cluster("closed", closed, ""),
        ]
        .concat(),
    );
    let proxy = e2e::start_proxy(&config);

    let mut eager = TcpStream::connect(proxy.addr("eager")).unwrap();
    eager
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut greeting = [0u8; 22];
    eager.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"hello from the server\n");

    let mut lazy = TcpStream::connect(proxy.addr("lazy")).unwrap();
    lazy.set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    let mut buf = [0u8; 64];
    let silent = lazy.read(&mut buf);
    assert!(
        matches!(&silent, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "nothing before the client speaks: {silent:?}"
    );
    assert_eq!(
        proxy.stat("cluster.lazy_backend.upstream_cx_total"),
        Some(0)
    );
    lazy.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    lazy.write_all(b"ping").unwrap();
    let mut got = Vec::new();
    while got.len() < 26 {
        let n = lazy.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"hello from the server\nping");
    assert_eq!(
        proxy.stat("cluster.lazy_backend.upstream_cx_total"),
        Some(1)
    );

    // Four attempts, with waits below 0.1, 0.2 and 0.2 s between them.
    let started = Instant::now();
    let mut refused = TcpStream::connect(proxy.addr("retry")).unwrap();
    refused
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = refused.read_to_end(&mut rest);
    let took = started.elapsed();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    eventually("four failed attempts", || {
        proxy.stat("cluster.closed.upstream_cx_connect_fail") == Some(4)
    });
    assert_eq!(
        proxy.stat("cluster.closed.upstream_cx_connect_attempts_exceeded"),
        Some(1)
    );
}

/// What a tunnel server saw of a request that opens a tunnel.
#[derive(Clone, Debug)]
struct TunnelHead {
    method: String,
    uri: String,
    version: http::Version,
    headers: Vec<(String, String)>,
}

/// An HTTP/1.1 and HTTP/2 server of tunnels: a `CONNECT` is answered 200 (403 for a
/// `deny.example.com` authority) and its bytes echoed; a `POST` is answered 200 with its
/// request body streamed back as the response body.
struct TunnelServer {
    addr: SocketAddr,
    heads: Arc<std::sync::Mutex<Vec<TunnelHead>>>,
    _runtime: tokio::runtime::Runtime,
}

impl TunnelServer {
    fn start() -> TunnelServer {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let heads: Arc<std::sync::Mutex<Vec<TunnelHead>>> = Arc::default();
        let seen = heads.clone();
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |mut req: hyper::Request<hyper::body::Incoming>| {
                            seen.lock().unwrap().push(TunnelHead {
                                method: req.method().to_string(),
                                uri: req.uri().to_string(),
                                version: req.version(),
                                headers: req
                                    .headers()
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.to_string(), v.to_str().unwrap_or("").to_owned())
                                    })
                                    .collect(),
                            });
                            async move {
                                use http_body_util::BodyExt;
                                type Reply = hyper::Response<
                                    http_body_util::combinators::BoxBody<
                                        bytes::Bytes,
                                        hyper::Error,
                                    >,
                                >;
                                let empty = || {
                                    http_body_util::Empty::new()
                                        .map_err(|never| match never {})
                                        .boxed()
                                };
                                if req.method() == http::Method::POST {
                                    return Ok::<Reply, hyper::Error>(hyper::Response::new(
                                        req.into_body().boxed(),
                                    ));
                                }
                                if req.uri().host() == Some("deny.example.com") {
                                    let mut r = hyper::Response::new(empty());
                                    *r.status_mut() = http::StatusCode::FORBIDDEN;
                                    return Ok(r);
                                }
                                let upgrade = hyper::upgrade::on(&mut req);
                                tokio::spawn(async move {
                                    let Ok(upgraded) = upgrade.await else { return };
                                    let mut io = TokioIo::new(upgraded);
                                    let mut buf = vec![0u8; 4096];
                                    loop {
                                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                                        match io.read(&mut buf).await {
                                            Ok(0) | Err(_) => {
                                                let _ = io.shutdown().await;
                                                return;
                                            }
                                            Ok(n) => {
                                                if io.write_all(&buf[..n]).await.is_err() {
                                                    return;
                                                }
                                            }
                                        }
                                    }
                                });
                                Ok(hyper::Response::new(empty()))
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TunnelServer {
            addr,
            heads,
            _runtime: runtime,
        }
    }
}

/// `tunneling_config`: tcp_proxy carries the client's bytes over `CONNECT` (HTTP/1.1 and
/// HTTP/2) or `POST` (`use_post`, `post_path`) to an HTTP upstream, with the formatted
/// `hostname` and `headers_to_add`; the bytes come back both ways and a half-close ends the
/// tunnel cleanly. A refused tunnel (403) closes the client's connection, flagged `UF,URX` as
/// in Envoy. Runs against Envoy too (`LEGATE_E2E_PROXY=envoy`).
#[test]
fn tcp_proxy_tunnels_over_http_connect_and_post_like_envoy() {
    let server = TunnelServer::start();
    let scratch = ScratchDir::new("l4-tunnel");
    let log = scratch.join("tunnel.log");
    let tunnel = |extra: &str, hostname: &str| {
        format!(
            "          tunneling_config:\n            hostname: \"{hostname}\"\n            headers_to_add:\n            - header: {{key: x-tunnel, value: \"from %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%\"}}\n{extra}"
        )
    };
    let post = "            use_post: true\n            post_path: /tunnel\n";
    let mine = "example.com:%DOWNSTREAM_LOCAL_PORT%";
    let access_log = format!(
        "          access_log:\n          - name: envoy.access_loggers.file\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: {}\n              log_format: {{text_format_source: {{inline_string: \"%RESPONSE_FLAGS%\\n\"}}}}\n",
        log.display()
    );
    let listeners = [
        listener(
            "h1_connect",
            0,
            "",
            &chain("", &tcp_proxy("a", "h1", &tunnel("", mine))),
        ),
        listener(
            "h1_post",
            0,
            "",
            &chain("", &tcp_proxy("b", "h1", &tunnel(post, mine))),
        ),
        listener(
            "h2_connect",
            0,
            "",
            &chain("", &tcp_proxy("c", "h2", &tunnel("", mine))),
        ),
        listener(
            "h2_post",
            0,
            "",
            &chain("", &tcp_proxy("d", "h2", &tunnel(post, mine))),
        ),
        listener(
            "refused",
            0,
            "",
            &chain(
                "",
                &tcp_proxy(
                    "e",
                    "h1_refused",
                    &(tunnel("", "deny.example.com:443") + &access_log),
                ),
            ),
        ),
    ];
    let clusters = [
        cluster("h1", server.addr, ""),
        cluster("h1_refused", server.addr, ""),
        cluster("h2", server.addr, e2e::H2_UPSTREAM),
    ]
    .concat();
    let proxy = e2e::start_proxy(&bootstrap(&listeners, &clusters));
    for (name, method, version) in [
        ("h1_connect", "CONNECT", http::Version::HTTP_11),
        ("h1_post", "POST", http::Version::HTTP_11),
        ("h2_connect", "CONNECT", http::Version::HTTP_2),
        ("h2_post", "POST", http::Version::HTTP_2),
    ] {
        let addr = proxy.addr(name);
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut echoed = [0u8; 5];
        for word in [b"hello", b"world"] {
            s.write_all(word).unwrap();
            s.read_exact(&mut echoed)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&echoed, word, "{name}");
        }
        s.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let ended = s.read_to_end(&mut rest);
        assert!(
            ended.is_ok() && rest.is_empty(),
            "{name}: {ended:?} {rest:?}"
        );
        let head = server.heads.lock().unwrap().last().cloned().unwrap();
        let authority = format!("example.com:{}", addr.port());
        assert_eq!(head.method, method, "{name}: {head:?}");
        assert_eq!(head.version, version, "{name}: {head:?}");
        let header = |n: &str| {
            head.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            header("x-tunnel"),
            Some("from 127.0.0.1"),
            "{name}: {head:?}"
        );
        match (method, version) {
            ("CONNECT", http::Version::HTTP_11) => {
                assert_eq!(head.uri, authority, "{name}");
                assert_eq!(header("host"), Some(authority.as_str()), "{name}");
            }
            ("CONNECT", _) => assert_eq!(head.uri, authority, "{name}"),
            ("POST", http::Version::HTTP_11) => {
                assert_eq!(head.uri, "/tunnel", "{name}");
                assert_eq!(header("host"), Some(authority.as_str()), "{name}");
                assert_eq!(header("transfer-encoding"), Some("chunked"), "{name}");
            }
            _ => assert_eq!(head.uri, format!("http://{authority}/tunnel"), "{name}"),
        }
    }

    let mut s = TcpStream::connect(proxy.addr("refused")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");
    eventually("the refused tunnel counted", || {
        proxy.stat("cluster.h1_refused.upstream_cx_connect_attempts_exceeded") == Some(1)
    });
    eventually("the refused tunnel logged", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l == "UF,URX\n")
    });
}
