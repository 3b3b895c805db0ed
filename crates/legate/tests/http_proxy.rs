//! End-to-end tests of the HTTP data path: the real binary between real clients and a real
//! upstream, for routing, the router's local replies and flags, protocol bridging, header
//! handling, access logs, stats and the drain on SIGTERM.

mod e2e;

use std::time::Duration;

use e2e::*;

fn route(m: &str, action: &str) -> String {
    format!("              - match: {m}\n                {action}\n")
}

/// A front proxy routing every request to the cluster `backend` at `upstream`, with
/// `cluster_extra` in the cluster and `hcm_extra` in the connection manager.
fn all_to_backend(upstream: std::net::SocketAddr, cluster_extra: &str, hcm_extra: &str) -> String {
    front_proxy(
        &route("{prefix: \"/\"}", "route: {cluster: backend}"),
        &cluster("backend", upstream, cluster_extra),
        hcm_extra,
    )
}

#[test]
fn proxies_to_an_http1_upstream_with_envoys_request_headers() {
    let upstream = Upstream::start();
    let config = all_to_backend(upstream.addr, "", "");
    let legate = Legate::start(&config);
    let r = http_get(
        legate.addr("ingress"),
        "/hello?x=1",
        &[("user-agent", "e2e")],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("server"), Some("envoy"));
    assert!(r.header("x-envoy-upstream-service-time").is_some());
    let seen = upstream.last();
    assert_eq!(seen.path, "/hello?x=1");
    assert_eq!(seen.header("host"), Some("example.com"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-envoy-expected-rq-timeout-ms"), Some("15000"));
    assert_eq!(seen.header("user-agent"), Some("e2e"));
    assert_eq!(seen.header("x-request-id").map(str::len), Some(36));
    assert_eq!(
        seen.header("connection"),
        None,
        "hop-by-hop headers are not forwarded"
    );
    assert_eq!(legate.stat("cluster.backend.upstream_rq_200"), Some(1));
    assert_eq!(legate.stat("http.ingress_http.downstream_rq_2xx"), Some(1));
    assert_eq!(legate.stat("cluster.backend.upstream_cx_total"), Some(1));
}

#[test]
fn hop_by_hop_headers_stop_at_the_proxy_both_ways() {
    // An upstream answering with every hop-by-hop header beside two end-to-end ones; it keeps
    // what it was sent.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = seen.clone();
    let upstream = thread_per_connection("127.0.0.1", move |mut conn| {
        use std::io::Write;
        let mut head = Vec::new();
        while read_through_head(&mut conn, &mut head) {
            kept.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&head).to_lowercase());
            head.clear();
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\
                  keep-alive: timeout=5\r\nproxy-connection: keep-alive\r\nupgrade: h2c\r\n\
                  te: trailers\r\nx-end-to-end: yes\r\ncache-control: no-store\r\n\r\nok",
            );
        }
    });
    let config = all_to_backend(upstream, "", "");
    let proxy = start_proxy(&config);
    let mut c = RawConn::connect(proxy.addr("ingress"));
    let request = "GET /hop HTTP/1.1\r\nhost: x\r\nconnection: keep-alive\r\n\
                   keep-alive: timeout=5\r\nproxy-connection: keep-alive\r\n\
                   te: trailers, deflate\r\nx-end-to-end: yes\r\n\r\n";
    c.send(request.as_bytes()).unwrap();
    let r = c.read_response(false).expect("a response").response;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "ok");
    for name in ["keep-alive", "proxy-connection", "upgrade"] {
        assert_eq!(r.header(name), None, "{name} reached the client: {r:?}");
    }
    // As on requests, `te: trailers` passes.
    assert_eq!(r.header("te"), Some("trailers"));
    assert_eq!(r.header("x-end-to-end"), Some("yes"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let heads = seen.lock().unwrap().clone();
    let head = heads.last().expect("the upstream got the request");
    for name in ["connection", "keep-alive", "proxy-connection"] {
        assert!(
            !head.contains(&format!("\r\n{name}:")),
            "{name} reached the upstream: {head}"
        );
    }
    // `te` survives as `trailers` alone.
    assert!(head.contains("\r\nte: trailers\r\n"), "{head}");
    assert!(head.contains("\r\nx-end-to-end: yes\r\n"), "{head}");
}

#[test]
fn bridges_http1_and_http2_in_all_four_combinations() {
    let upstream = Upstream::start();
    let clusters = format!(
        "{}{}\n",
        cluster("h1", upstream.addr, ""),
        cluster("h2", upstream.addr, H2_UPSTREAM)
    );
    let routes = route("{prefix: \"/one\"}", "route: {cluster: h1}")
        + &route("{prefix: \"/two\"}", "route: {cluster: h2}");
    let legate = Legate::start(&front_proxy(&routes, &clusters, ""));
    let addr = legate.addr("ingress");
    for (client, name) in [(Client::h1(), "h1"), (Client::h2c(), "h2c")] {
        for (path, upstream_version) in [("/one", "HTTP/1.1"), ("/two", "HTTP/2.0")] {
            let body = bytes::Bytes::from(vec![b'a'; 100_000]);
            let r = client.request(addr, "POST", path, &[], body);
            assert_eq!(r.status, 200, "{name} -> {path}");
            let seen = upstream.last();
            assert_eq!(seen.version, upstream_version, "{name} -> {path}");
            assert_eq!(seen.body_len, 100_000, "{name} -> {path}");
            assert_eq!(seen.method, "POST");
        }
    }
    assert_eq!(
        legate.stat("http.ingress_http.downstream_cx_http2_total"),
        Some(2)
    );
}

#[test]
fn local_replies_carry_envoys_status_body_and_flags() {
    let upstream = Upstream::start();
    // A port nothing listens on: bind one, then free it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let clusters = format!(
        "{}{}",
        cluster("backend", upstream.addr, ""),
        cluster("dead", dead, "")
    );
    let routes = route("{prefix: \"/dead\"}", "route: {cluster: dead}")
        + &route(
            "{prefix: \"/slow/\"}",
            "route: {cluster: backend, timeout: 0.2s, prefix_rewrite: \"/\"}",
        )
        + &route(
            "{prefix: \"/direct\"}",
            "direct_response: {status: 418, body: {inline_string: teapot}}",
        )
        + &route(
            "{prefix: \"/moved\"}",
            "redirect: {host_redirect: new.example.com, response_code: FOUND}",
        )
        + &route("{path: \"/ok\"}", "route: {cluster: backend}");
    let hcm = r#"          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "{dir}/access.log"
              log_format:
                text_format_source:
                  inline_string: "%RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:PATH)% %UPSTREAM_CLUSTER%\n""#;
    let legate = Legate::start(&front_proxy(&routes, &clusters, hcm));
    let addr = legate.addr("ingress");

    let r = http_get(addr, "/nowhere", &[("host", "other")]);
    // No route in the only virtual host: the catch-all domain matched, but no route did.
    assert_eq!(r.status, 404);
    assert_eq!(r.body, "");

    let r = http_get(addr, "/dead", &[]);
    assert_eq!(r.status, 503);
    assert!(
        r.body
            == "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure",
        "{}",
        r.body
    );
    assert_eq!(r.header("content-type"), Some("text/plain"));

    let r = http_get(addr, "/slow/delay/2000", &[]);
    assert_eq!(r.status, 504);
    assert_eq!(r.body, "upstream request timeout");

    let r = http_get(addr, "/direct", &[]);
    assert_eq!((r.status, r.body.as_str()), (418, "teapot"));

    let r = http_get(addr, "/moved/x?y=1", &[]);
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some("http://new.example.com/moved/x?y=1")
    );

    assert_eq!(legate.stat("http.ingress_http.no_route"), Some(1));
    // As in Envoy, a redirect counts as a direct response.
    assert_eq!(legate.stat("http.ingress_http.rq_direct_response"), Some(2));
    assert_eq!(
        legate.stat("cluster.dead.upstream_cx_connect_fail"),
        Some(1)
    );
    assert_eq!(legate.stat("cluster.backend.upstream_rq_timeout"), Some(1));

    // Access-log lines are written within a second (Envoy's flush interval).
    let log_path = legate.dir.join("access.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut log = String::new();
    while std::time::Instant::now() < deadline {
        log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.lines().count() >= 5 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.contains(&"404 NR /nowhere -"), "{log}");
    assert!(lines.contains(&"503 UF /dead dead"), "{log}");
    // As in Envoy, `%REQ(:PATH)%` is the path sent upstream (after `prefix_rewrite`).
    assert!(lines.contains(&"504 UT /delay/2000 backend"), "{log}");
    assert!(lines.contains(&"418 - /direct -"), "{log}");
}

#[test]
fn route_rewrites_and_header_mutations_reach_the_upstream() {
    let upstream = Upstream::start();
    let routes = r#"              - match: {prefix: "/api/"}
                route: {cluster: backend, prefix_rewrite: "/v2/", host_rewrite_literal: internal.example}
                request_headers_to_add:
                - header: {key: x-route, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}
                response_headers_to_add:
                - header: {key: x-served-by, value: legate}
                response_headers_to_remove: [x-upstream]
"#;
    let legate = Legate::start(&front_proxy(
        routes,
        &cluster("backend", upstream.addr, ""),
        "",
    ));
    let r = http_get(legate.addr("ingress"), "/api/items?q=1", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-served-by"), Some("legate"));
    assert_eq!(r.header("x-upstream"), None);
    let seen = upstream.last();
    assert_eq!(seen.path, "/v2/items?q=1");
    assert_eq!(seen.header("x-envoy-original-path"), Some("/api/items?q=1"));
    assert_eq!(seen.header("host"), Some("internal.example"));
    assert_eq!(seen.header("x-route"), Some("127.0.0.1"));
}

#[test]
fn websocket_upgrades_tunnel_bytes_both_ways() {
    use std::io::{Read, Write};
    let upstream = Upstream::start();
    let hcm = "          upgrade_configs:\n          - upgrade_type: websocket\n";
    let legate = Legate::start(&all_to_backend(upstream.addr, "", hcm));
    let mut s = std::net::TcpStream::connect(legate.addr("ingress")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
    )
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"ping through the tunnel").unwrap();
    let mut got = Vec::new();
    while got.len() < 23 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(&got, b"ping through the tunnel");
}

#[test]
fn a_websocket_tunnel_counts_which_side_closed_its_upstream_connection() {
    use std::io::{Read, Write};
    // `/bye` answers 101, sends `bye` and closes; anything else answers 101 and echoes until
    // the proxy closes.
    let upstream = thread_per_connection("127.0.0.1", |mut conn| {
        let mut head = Vec::new();
        if !read_through_head(&mut conn, &mut head) {
            return;
        }
        let switching = b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n\
                          upgrade: websocket\r\n\r\n";
        let _ = conn.write_all(switching);
        if head.starts_with(b"GET /bye ") {
            let _ = conn.write_all(b"bye");
            return;
        }
        let mut buf = [0u8; 1024];
        while let Ok(n @ 1..) = conn.read(&mut buf) {
            let _ = conn.write_all(&buf[..n]);
        }
    });
    let hcm = "          upgrade_configs:\n          - upgrade_type: websocket\n";
    let proxy = start_proxy(&all_to_backend(upstream, "", hcm));
    let upgrade = |path: &str| {
        let mut c = RawConn::connect(proxy.addr("ingress"));
        let request = format!(
            "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
        );
        c.send(request.as_bytes()).unwrap();
        let head = c.read_head().expect("a response");
        assert_eq!(head.status, 101, "{head:?}");
        c
    };
    let stat = |name: &str, want: u64| {
        proxy.wait_stat(
            &format!("cluster.backend.{name}"),
            Duration::from_secs(5),
            |v| v >= want,
        )
    };

    // The upstream closes: a remote close.
    let mut c = upgrade("/bye");
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "the tunnel stayed open"
    );
    assert_eq!(stat("upstream_cx_destroy_remote", 1), Some(1));
    assert_eq!(
        proxy.stat("cluster.backend.upstream_cx_destroy_local"),
        Some(0)
    );

    // The client closes: the proxy closes the upstream connection, a local close.
    let mut c = upgrade("/echo");
    c.send(b"ping").unwrap();
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 4];
    c.stream.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    drop(c);
    assert_eq!(stat("upstream_cx_destroy_local", 1), Some(1));
    assert_eq!(
        proxy.stat("cluster.backend.upstream_cx_destroy_remote"),
        Some(1)
    );
}

#[test]
fn upgrades_not_configured_are_refused_with_403() {
    let upstream = Upstream::start();
    let legate = Legate::start(&all_to_backend(upstream.addr, "", ""));
    let r = http_get(
        legate.addr("ingress"),
        "/ws",
        &[("connection", "upgrade"), ("upgrade", "websocket")],
    );
    assert_eq!(r.status, 403);
    assert_eq!(upstream.count(), 0);
}

#[test]
fn streams_a_large_body_without_buffering_it() {
    let upstream = Upstream::start();
    let legate = Legate::start(&front_proxy(
        &route("{prefix: \"/\"}", "route: {cluster: backend, timeout: 0s}"),
        &cluster("backend", upstream.addr, ""),
        "",
    ));
    // 1 GiB through the proxy; its resident memory must stay far below that.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(legate.addr("ingress")).unwrap();
    s.write_all(b"GET /bytes/1073741824 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0usize;
    let mut peak_rss = 0u64;
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
        if total % (64 << 20) < n {
            peak_rss = peak_rss.max(rss_kb(legate.pid()));
        }
    }
    assert!(total > 1_073_741_824, "read {total} bytes");
    assert!(
        peak_rss < 100 * 1024,
        "legate's RSS reached {peak_rss} kB while streaming"
    );
}

#[test]
fn streams_a_large_body_to_an_h2c_client_without_buffering_it() {
    let upstream = Upstream::start();
    let legate = Legate::start(&front_proxy(
        &route("{prefix: \"/\"}", "route: {cluster: backend, timeout: 0s}"),
        &cluster("backend", upstream.addr, ""),
        "",
    ));
    let (addr, pid) = (legate.addr("ingress"), legate.pid());
    // 64 MiB over one stream, paced by the client's window: the proxy holds at most its send
    // buffer of it.
    let before = rss_kb(pid);
    let (total, peak_rss) = runtime().block_on(async move {
        let mut sender = h2_connect(addr).await;
        let request = http::Request::get("http://x/bytes/67108864")
            .body(())
            .unwrap();
        let (response, _) = sender.send_request(request, true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let (mut total, mut peak_rss) = (0usize, 0u64);
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            total += chunk.len();
            if total % (8 << 20) < chunk.len() {
                peak_rss = peak_rss.max(rss_kb(pid));
            }
        }
        (total, peak_rss)
    });
    assert_eq!(total, 64 << 20);
    assert!(
        peak_rss < before + 16 * 1024,
        "legate's RSS grew from {before} kB to {peak_rss} kB while streaming"
    );
}

/// Bodies larger than the client's stream window, on many streams at once: each arrives whole
/// as the client opens its window (the last chunk of a body is queued before room is claimed
/// for it, and must still go out only as the window allows).
#[test]
fn bodies_beyond_the_clients_stream_window_arrive_whole() {
    let upstream = Upstream::start();
    let legate = Legate::start(&all_to_backend(upstream.addr, "", ""));
    let addr = legate.addr("ingress");
    let lengths = runtime().block_on(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = h2::client::Builder::new()
            .initial_window_size(1024)
            .handshake::<_, bytes::Bytes>(stream)
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut sender = sender.ready().await.unwrap();
        let mut responses = Vec::new();
        for i in 0..10 {
            let request = http::Request::get(format!("http://x/bytes/{}", 30_000 + i))
                .body(())
                .unwrap();
            responses.push(sender.send_request(request, true).unwrap().0);
            sender = sender.ready().await.unwrap();
        }
        let mut lengths = Vec::new();
        for response in responses {
            let mut body = response.await.unwrap().into_body();
            let mut total = 0;
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                // The client gives the window back slowly, a frame at a time.
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                let _ = body.flow_control().release_capacity(chunk.len());
                assert!(chunk.len() <= 1024, "a frame of {} bytes", chunk.len());
                total += chunk.len();
            }
            lengths.push(total);
        }
        lengths
    });
    let want: Vec<usize> = (0..10).map(|i| 30_000 + i).collect();
    assert_eq!(lengths, want);
}

/// The names of the stats under `prefix` that `proxy` shows, with their values.
fn stats_under(proxy: &Legate, prefix: &str) -> std::collections::BTreeMap<String, String> {
    let text = http_get(proxy.admin.expect("no admin"), "/stats", &[]).body;
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(name, value)| (name[prefix.len()..].to_string(), value.to_string()))
        .collect()
}

/// A cluster's stats are Envoy 1.40's: after a request, every stat Legate shows under
/// `cluster.<name>.` Envoy shows too (Legate counts fewer), with the same values for the
/// gauges and counters both have (bytes: both counted); `remaining_*` only where
/// `track_remaining` asks for them.
#[test]
fn cluster_stats_are_named_and_counted_as_in_envoy() {
    if !envoy_available() {
        return;
    }
    let upstream = Upstream::start();
    let breakers = "    circuit_breakers:\n      thresholds:\n      - priority: HIGH\n        \
                    track_remaining: true\n        max_requests: 7\n";
    let config = all_to_backend(upstream.addr, breakers, "");
    let run = |proxy: Legate| {
        let r = http_get(proxy.addr("ingress"), "/", &[]);
        assert_eq!(r.status, 200, "{r:?}");
        // The upstream connection's end is counted when the pool closes it, not here.
        stats_under(&proxy, "cluster.backend.")
    };
    let ours = run(Legate::start(&config));
    let theirs = run(Legate::start_envoy(&config));
    let extra: Vec<_> = ours.keys().filter(|n| !theirs.contains_key(*n)).collect();
    assert!(extra.is_empty(), "stats Envoy does not have: {extra:?}");
    for name in [
        "circuit_breakers.default.cx_open",
        "circuit_breakers.default.cx_pool_open",
        "circuit_breakers.high.remaining_rq",
        "circuit_breakers.high.remaining_cx",
        "upstream_rq_2xx",
        "upstream_rq_200",
        "upstream_rq_completed",
        "upstream_cx_none_healthy",
        "upstream_cx_overflow",
        "external.upstream_rq_2xx",
        "membership_total",
    ] {
        assert_eq!(ours.get(name), theirs.get(name), "{name}");
        assert!(ours.contains_key(name), "{name}");
    }
    // Byte counts differ with the headers each adds; both count the request and response.
    for name in ["upstream_cx_rx_bytes_total", "upstream_cx_tx_bytes_total"] {
        for (proxy, stats) in [("Legate", &ours), ("Envoy", &theirs)] {
            let bytes: u64 = stats.get(name).and_then(|v| v.parse().ok()).unwrap_or(0);
            assert!(bytes > 100, "{proxy} {name}: {bytes}");
        }
    }
    assert!(!ours.contains_key("circuit_breakers.default.remaining_rq"));
    assert_eq!(ours["circuit_breakers.high.remaining_rq"], "7");
}

/// `max_connections: 1`, `max_pending_requests: 2`, one worker, a request holding the only
/// connection and four more arriving: two wait for that connection (pending) and are served on
/// it in turn, two overflow with 503 `UO` — in both proxies, counted alike.
#[test]
fn requests_wait_for_a_connection_within_max_pending_requests_as_in_envoy() {
    if !envoy_available() {
        return;
    }
    let upstream = Upstream::start();
    let breakers =
        "    circuit_breakers: {thresholds: [{max_connections: 1, max_pending_requests: 2}]}\n";
    let config = all_to_backend(upstream.addr, breakers, "");
    let run = |proxy: Legate| {
        let addr = proxy.addr("ingress");
        let first = std::thread::spawn(move || http_get(addr, "/delay/800", &[]));
        std::thread::sleep(Duration::from_millis(300));
        let others: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(move || http_get(addr, "/delay/50", &[])))
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let waiting = proxy.stat("cluster.backend.upstream_rq_pending_active");
        let mut statuses: Vec<u16> = others
            .into_iter()
            .map(|o| o.join().unwrap().status)
            .collect();
        statuses.push(first.join().unwrap().status);
        statuses.sort();
        (statuses, waiting, stats_under(&proxy, "cluster.backend."))
    };
    let one_worker = ["--concurrency", "1", "-l", "info"];
    let ours = run(Legate::try_start_args(&config, &one_worker).unwrap());
    let theirs = run(Legate::start_envoy_with(&config, 1));
    assert_eq!(ours.0, [200, 200, 200, 503, 503]);
    assert_eq!(ours.0, theirs.0);
    assert_eq!(
        ours.1,
        Some(2),
        "pending while the first request holds the connection"
    );
    assert_eq!(ours.1, theirs.1);
    for name in [
        "upstream_rq_pending_total",
        "upstream_rq_pending_overflow",
        "upstream_rq_pending_active",
        "upstream_rq_cancelled",
        "upstream_rq_total",
        "upstream_cx_total",
        "upstream_cx_overflow",
        "circuit_breakers.default.rq_pending_open",
    ] {
        assert_eq!(ours.2.get(name), theirs.2.get(name), "{name}");
    }
    assert_eq!(ours.2["upstream_rq_pending_overflow"], "2");
    assert_eq!(ours.2["upstream_cx_total"], "1");
}

fn rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let upstream = Upstream::start();
    let mut legate = Legate::start_with(
        &all_to_backend(upstream.addr, "", ""),
        &["--drain-time-s", "10"],
    );
    let addr = legate.addr("ingress");
    let clients: Vec<_> = (0..50)
        .map(|_| std::thread::spawn(move || http_get(addr, "/delay/700", &[]).status))
        .collect();
    std::thread::sleep(Duration::from_millis(250));
    legate.signal(SIGTERM);
    let statuses: Vec<u16> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(
        legate.wait(Duration::from_secs(10)),
        Some(0),
        "{}",
        legate.output()
    );
}

#[test]
fn hostile_http1_input_gets_a_clean_error_and_the_proxy_keeps_serving() {
    let upstream = Upstream::start();
    let legate = Legate::start(&all_to_backend(upstream.addr, "", ""));
    let addr = legate.addr("ingress");
    // Content-Length with Transfer-Encoding: Envoy refuses it (400); Legate's codec follows
    // RFC 9112 §6.3 instead: the chunked framing alone counts (no smuggled bytes reach the
    // upstream) and the connection is closed after the response.
    let raw = raw_exchange(
        addr,
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(5),
    );
    let r = parse_response(&raw).expect("a response");
    assert!(
        r.status == 400 || r.header("connection") == Some("close"),
        "{r:?}"
    );
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(
        text.matches("HTTP/1.1 ").count(),
        1,
        "one response only: {text}"
    );
    let smuggled = upstream
        .requests
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.path == "/smuggled" || e.body_len > 0);
    assert!(!smuggled, "a smuggled request reached the upstream");
    let before = upstream.count();
    let smuggling: &[&[u8]] = &[
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: x\r\nx-folded: a\r\n b\r\n\r\n",
        b"G\x01T / HTTP/1.1\r\nhost: x\r\n\r\n",
        b"GET /\x7f HTTP/1.1\r\nhost: x\r\n\r\n",
    ];
    for bytes in smuggling {
        let raw = raw_exchange(addr, bytes, Duration::from_secs(5));
        let text = String::from_utf8_lossy(&raw);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 400"),
            "{:?} -> {text:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    // 100 KB of headers: 431.
    let big = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let raw = raw_exchange(addr, big.as_bytes(), Duration::from_secs(5));
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.starts_with("HTTP/1.1 431") || text.is_empty(),
        "{text:?}"
    );
    // 10,000 headers: refused.
    let mut many = String::from("GET / HTTP/1.1\r\nhost: x\r\n");
    for i in 0..10_000 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let raw = raw_exchange(addr, many.as_bytes(), Duration::from_secs(5));
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.starts_with("HTTP/1.1 431") || text.is_empty(),
        "{text:?}"
    );
    assert_eq!(
        upstream.count(),
        before,
        "nothing else hostile reached the upstream"
    );
    // Still serving.
    assert_eq!(http_get(addr, "/", &[]).status, 200);
}

#[test]
fn sigterm_with_a_thousand_requests_in_flight_loses_none() {
    let upstream = Upstream::start();
    let mut legate = Legate::start_with(
        &all_to_backend(upstream.addr, H2_UPSTREAM, ""),
        &["--drain-time-s", "20"],
    );
    let addr = legate.addr("ingress");
    let pid = legate.pid();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // 20 h2c connections x 50 streams = 1,000 requests in flight when SIGTERM arrives.
    let statuses = runtime.block_on(async move {
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (sender, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(stream),
            )
            .await
            .unwrap();
            tokio::spawn(conn);
            for _ in 0..50 {
                let mut sender = sender.clone();
                tasks.push(tokio::spawn(async move {
                    let req = http::Request::get("http://example.com/delay/1000")
                        .body(http_body_util::Empty::<bytes::Bytes>::new())
                        .unwrap();
                    match sender.send_request(req).await {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            use http_body_util::BodyExt;
                            match r.into_body().collect().await {
                                Ok(_) => status,
                                Err(_) => 0,
                            }
                        }
                        Err(_) => 0,
                    }
                }));
            }
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        send_signal(pid, SIGTERM);
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await.unwrap_or(0));
        }
        statuses
    });
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    assert_eq!(ok, 1000, "{} of 1000 requests failed", 1000 - ok);
    assert_eq!(
        legate.wait(Duration::from_secs(20)),
        Some(0),
        "{}",
        legate.output()
    );
}

#[test]
fn admin_access_log_path_records_admin_requests() {
    let upstream = Upstream::start();
    let config = all_to_backend(upstream.addr, "", "").replace(
        "admin:\n",
        "admin:\n  access_log_path: \"{dir}/admin.log\"\n",
    );
    let legate = Legate::start(&config);
    assert_eq!(http_get(legate.admin.unwrap(), "/ready", &[]).status, 200);
    let log_path = legate.dir.join("admin.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut log = String::new();
    while std::time::Instant::now() < deadline && !log.contains("/ready") {
        std::thread::sleep(Duration::from_millis(100));
        log = std::fs::read_to_string(&log_path).unwrap_or_default();
    }
    assert!(log.contains("\"GET /ready HTTP/1.1\" 200"), "{log:?}");
}

#[test]
fn ipv4_compat_lets_an_ipv6_listener_accept_ipv4_clients() {
    let upstream = Upstream::start();
    let config = all_to_backend(upstream.addr, "", "")
    .replacen(
        "    address: {socket_address: {address: 127.0.0.1, port_value: 0}}\n    filter_chains:",
        "    address: {socket_address: {address: \"::\", port_value: 0, ipv4_compat: true}}\n    filter_chains:",
        1,
    );
    let legate = Legate::start(&config);
    assert!(legate.addr("ingress").is_ipv6(), "the listener is on ::");
    let port = legate.addr("ingress").port();
    let v4: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(http_get(v4, "/", &[]).status, 200);
}
