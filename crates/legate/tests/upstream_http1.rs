//! End-to-end tests of the HTTP/1.1 upstream codec against hosts that answer with scripted
//! bytes: how a request is framed on the wire, responses delimited every way (length, chunked
//! with trailers, the connection's end), informational responses, early answers to an upload,
//! and hostile or broken responses (malformed heads, heads over the limit, bodies cut short,
//! bytes nobody asked for on an idle connection). Every expectation is Envoy 1.40's: run with
//! `LEGATE_E2E_PROXY=envoy` to check them against Envoy itself.

mod e2e;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use e2e::*;

/// What a scripted host does with a request: the bytes it answers, and whether it closes the
/// connection after them.
type Script = dyn Fn(&str) -> (Vec<u8>, bool) + Send + Sync;

/// A host answering every request as its script says, recording the request heads it got
/// and counting its connections. It reads a request's body (`content-length` or chunked)
/// before answering, unless the script's request path starts with `/early`.
struct Scripted {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
}

impl Scripted {
    fn start(script: impl Fn(&str) -> (Vec<u8>, bool) + Send + Sync + 'static) -> Scripted {
        let heads = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (h, c) = (heads.clone(), connections.clone());
        let addr = thread_per_connection("127.0.0.1", move |conn| {
            c.fetch_add(1, Ordering::SeqCst);
            serve(conn, &h, &script);
        });
        Scripted {
            addr,
            heads,
            connections,
        }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

fn serve(mut conn: TcpStream, heads: &Mutex<Vec<String>>, script: &Script) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    loop {
        let Some(end) = read_until(&mut conn, &mut buf, b"\r\n\r\n") else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        heads.lock().unwrap().push(head.clone());
        let lower = head.to_ascii_lowercase();
        if !head.split(' ').nth(1).unwrap_or("").starts_with("/early") {
            if let Some(n) = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
            {
                while buf.len() < n {
                    if !fill(&mut conn, &mut buf) {
                        return;
                    }
                }
                buf.drain(..n);
            } else if lower.contains("transfer-encoding: chunked") {
                let Some(end) = read_until(&mut conn, &mut buf, b"0\r\n\r\n") else {
                    return;
                };
                buf.drain(..end);
            }
        }
        let (reply, close) = script(&head);
        if conn.write_all(&reply).is_err() {
            return;
        }
        if close {
            let _ = conn.shutdown(Shutdown::Write);
            std::thread::sleep(Duration::from_millis(100));
            return;
        }
    }
}

/// Reads until `buf` holds `marker`; the index after it.
fn read_until(conn: &mut TcpStream, buf: &mut Vec<u8>, marker: &[u8]) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(marker.len()).position(|w| w == marker) {
            return Some(i + marker.len());
        }
        if !fill(conn, buf) {
            return None;
        }
    }
}

fn fill(conn: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match conn.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn proxy_to(host: &Scripted) -> Legate {
    proxy_with(host, "")
}

fn proxy_with(host: &Scripted, hcm_extra: &str) -> Legate {
    start_proxy_one_worker(&front_proxy(
        "              - match: {prefix: \"/\"}\n                route: {cluster: backend}\n",
        &cluster("backend", host.addr, ""),
        hcm_extra,
    ))
}

/// Logs each stream's response code, flags and protocol to `access.log`.
const ACCESS_LOG: &str = r#"          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "{dir}/access.log"
              log_format: {text_format_source: {inline_string: "%RESPONSE_CODE% %RESPONSE_FLAGS% %PROTOCOL%\n"}}
"#;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// The head of the request the host got last, lowercased.
fn last_head(host: &Scripted) -> String {
    host.heads()
        .last()
        .cloned()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

#[test]
fn requests_are_framed_as_envoy_frames_them() {
    let host = Scripted::start(|_| (OK.to_vec(), false));
    let proxy = proxy_to(&host);
    let addr = proxy.addr("ingress");
    // No body: no framing header for GET and DELETE, `content-length: 0` for POST.
    for (method, expect_length) in [("GET", false), ("DELETE", false), ("POST", true)] {
        let request = format!("{method} / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        assert_eq!(raw_request(addr, request.as_bytes()).status, 200);
        let head = last_head(&host);
        assert!(!head.contains("transfer-encoding"), "{method}: {head}");
        assert_eq!(
            head.contains("content-length: 0"),
            expect_length,
            "{method}: {head}"
        );
    }
    // A body of known length keeps it; one of unknown length (h2 without content-length) is
    // chunked.
    let request =
        "PUT / HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhello";
    assert_eq!(raw_request(addr, request.as_bytes()).status, 200);
    assert!(last_head(&host).contains("content-length: 5"));
    let status = h2_post_without_length(addr, Bytes::from_static(b"hello"));
    assert_eq!(status, 200);
    let head = last_head(&host);
    assert!(
        head.contains("transfer-encoding: chunked") && !head.contains("content-length"),
        "{head}"
    );
}

/// A POST over h2c whose body comes after its headers, with no `content-length`.
fn h2_post_without_length(addr: SocketAddr, body: Bytes) -> u16 {
    runtime().block_on(async move {
        let mut sender = h2_connect(addr).await;
        let request = http::Request::post("http://x/").body(()).unwrap();
        let (response, mut stream) = sender.send_request(request, false).unwrap();
        stream.send_data(body, true).unwrap();
        response.await.unwrap().status().as_u16()
    })
}

#[test]
fn responses_delimited_every_way_reach_the_client_whole() {
    let host = Scripted::start(|head| {
        match head.split(' ').nth(1).unwrap_or("") {
        "/chunked" => (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nx-trailer: t\r\n\r\n".to_vec(),
            false,
        ),
        "/close" => (b"HTTP/1.1 200 OK\r\n\r\nhello, until the end".to_vec(), true),
        "/http10" => (b"HTTP/1.0 200 OK\r\ncontent-length: 4\r\n\r\n1.0!".to_vec(), false),
        _ => (OK.to_vec(), false),
    }
    });
    let proxy = proxy_to(&host);
    let addr = proxy.addr("ingress");
    for (path, body) in [
        ("/chunked", "hello world"),
        ("/close", "hello, until the end"),
        ("/http10", "1.0!"),
        ("/", "ok"),
    ] {
        let response = http_get(addr, path, &[]);
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(response.body, body, "{path}");
    }
    // Keep-alive: the chunked and length-delimited responses left their connection reusable;
    // the one delimited by the close and the HTTP/1.0 one did not.
    let mut conn = RawConn::connect(addr);
    for path in ["/chunked", "/", "/chunked", "/"] {
        conn.send(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .unwrap();
        assert_eq!(conn.read_response(false).unwrap().response.status, 200);
    }
    assert_eq!(
        host.connections(),
        3,
        "1 for /close, 1 for /http10, 1 reused"
    );
}

#[test]
fn informational_responses_before_the_final_one_are_not_passed_on() {
    let host = Scripted::start(|_| {
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                .to_vec(),
            false,
        )
    });
    let proxy = proxy_to(&host);
    let raw = raw_exchange(
        proxy.addr("ingress"),
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nok"), "{text}");
}

#[test]
fn malformed_response_heads_are_upstream_protocol_errors() {
    // The host keeps its connections open: one it closed right after a good response could be
    // taken for the next request before its close arrives (the race
    // `bytes_after_a_response_retire_its_connection` waits out), a 503 instead of the 502 under
    // test. A refused head ends its connection on the proxy's side.
    let host = Scripted::start(|head| {
        let reply: Vec<u8> = match head.split(' ').nth(1).unwrap_or("") {
            "/status" => b"HTTP/1.1 2x0 OK\r\ncontent-length: 0\r\n\r\n".to_vec(),
            "/version" => b"HTTP/3.0 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec(),
            "/both" => {
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                    .to_vec()
            }
            "/name" => b"HTTP/1.1 200 OK\r\nbad name: x\r\ncontent-length: 0\r\n\r\n".to_vec(),
            "/nul" => b"HTTP/1.1 200 OK\r\nx: a\0b\r\ncontent-length: 0\r\n\r\n".to_vec(),
            // Envoy's limit is 80 KiB: 81 lines of 1 KB are within it, 82 are not.
            p @ ("/large" | "/huge") => {
                let lines = if p == "/large" { 81 } else { 82 };
                let mut r = b"HTTP/1.1 200 OK\r\n".to_vec();
                for i in 0..lines {
                    r.extend_from_slice(format!("x-{i}: {}\r\n", "v".repeat(1000)).as_bytes());
                }
                r.extend_from_slice(b"content-length: 0\r\n\r\n");
                r
            }
            _ => OK.to_vec(),
        };
        (reply, false)
    });
    let proxy = proxy_to(&host);
    let addr = proxy.addr("ingress");
    let paths = [
        "/status", "/version", "/both", "/name", "/nul", "/large", "/huge",
    ];
    let seen: Vec<(&str, u16, bool)> = paths
        .into_iter()
        .map(|path| {
            let response = http_get(addr, path, &[]);
            let protocol_error = response.body.ends_with("reset reason: protocol error");
            (path, response.status, protocol_error)
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("/status", 502, true),
            // A version Envoy's parser takes, as it takes any `HTTP/x.y`.
            ("/version", 200, false),
            ("/both", 502, true),
            ("/name", 502, true),
            ("/nul", 502, true),
            ("/large", 200, false),
            ("/huge", 502, true),
        ]
    );
    assert_eq!(http_get(addr, "/", &[]).status, 200);
}

#[test]
fn max_response_headers_kb_bounds_a_response_head() {
    // `/n` answers with n header lines of about 1 KB each, on a connection the host keeps
    // open (see `malformed_response_heads_are_upstream_protocol_errors`).
    let host = Scripted::start(|head| {
        let lines: usize = head
            .split(' ')
            .nth(1)
            .and_then(|p| p.trim_start_matches('/').parse().ok())
            .unwrap_or(0);
        let mut reply = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..lines {
            reply.extend_from_slice(format!("x-{i}: {}\r\n", "v".repeat(1000)).as_bytes());
        }
        reply.extend_from_slice(b"content-length: 2\r\n\r\nok");
        (reply, false)
    });
    // A proxy to `addr` speaking `protocol` (`http_protocol_options` or `http2_protocol_options`)
    // with response heads up to 4 KiB.
    let proxy_with_4_kib = |addr, protocol: &str| {
        let options = format!(
            r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        common_http_protocol_options: {{max_response_headers_kb: 4}}
        explicit_http_config: {{{protocol}: {{}}}}"#
        );
        start_proxy_one_worker(&front_proxy(
            "              - match: {prefix: \"/\"}\n                route: {cluster: backend}\n",
            &cluster("backend", addr, &options),
            "",
        ))
    };
    let proxy = proxy_with_4_kib(host.addr, "http_protocol_options");
    let addr = proxy.addr("ingress");
    // 3 lines fit in 4 KiB, 5 do not.
    assert_eq!(http_get(addr, "/3", &[]).status, 200);
    let refused = http_get(addr, "/5", &[]);
    assert_eq!(refused.status, 502, "{refused:?}");
    assert!(
        refused.body.ends_with("reset reason: protocol error"),
        "{refused:?}"
    );
    assert_eq!(http_get(addr, "/0", &[]).status, 200);

    // The same bound on an HTTP/2 upstream's response headers.
    let upstream = Upstream::start();
    let proxy = proxy_with_4_kib(upstream.addr, "http2_protocol_options");
    let addr = proxy.addr("ingress");
    assert_eq!(http_get(addr, "/headers/2", &[]).status, 200);
    let refused = http_get(addr, "/headers/6", &[]);
    assert!(refused.status >= 500, "{refused:?}");
    assert_eq!(http_get(addr, "/headers/0", &[]).status, 200);
}

#[test]
fn a_response_body_cut_short_is_not_completed_downstream() {
    let host = Scripted::start(|_| {
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b".to_vec(),
            true,
        )
    });
    let proxy = proxy_with(&host, ACCESS_LOG);
    let mut conn = RawConn::connect(proxy.addr("ingress"));
    conn.set_timeout(Duration::from_secs(5));
    conn.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let head = conn.read_head().expect("the response head is sent");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("100"));
    // The client sees the connection end before the 100 bytes it was promised.
    assert!(conn.read_body(head, false).is_none());
    // Over HTTP/2, the stream is reset after the head and the bytes that came.
    let (status, body, ended) = h2_get_to_the_end(proxy.addr("ingress"));
    assert_eq!(status, 200);
    assert_eq!(body, b"only ten b");
    assert_eq!(ended, Err(Some(h2::Reason::INTERNAL_ERROR)));
    // Each stream is counted as reset by the proxy, and (as Envoy counts every reset) as a
    // reset received.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while proxy.stat("http.ingress_http.downstream_rq_active") != Some(0)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    for stat in ["downstream_rq_tx_reset", "downstream_rq_rx_reset"] {
        let name = format!("http.ingress_http.{stat}");
        assert_eq!(proxy.stat(&name), Some(2), "{name}");
    }
    // Logged with the upstream's cause, not as a downstream disconnect: Envoy's codec takes a
    // body cut short by the end of the connection for a protocol error.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut log = String::new();
    while log.lines().count() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        log = std::fs::read_to_string(proxy.dir.join("access.log")).unwrap_or_default();
    }
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        ["200 UPE HTTP/1.1", "200 UPE HTTP/2"]
    );
}

/// A GET over h2c: the status, the body bytes that came, and how the body ended (`Ok` at its
/// end, the reset's reason otherwise).
fn h2_get_to_the_end(addr: SocketAddr) -> (u16, Vec<u8>, Result<(), Option<h2::Reason>>) {
    runtime().block_on(async move {
        let mut sender = h2_connect(addr).await;
        let request = http::Request::get("http://x/").body(()).unwrap();
        let (response, _) = sender.send_request(request, true).unwrap();
        let response = response.await.unwrap();
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut got = Vec::new();
        let ended = loop {
            match body.data().await {
                Some(Ok(chunk)) => got.extend_from_slice(&chunk),
                Some(Err(e)) => break Err(e.reason()),
                None => break Ok(()),
            }
        };
        (status, got, ended)
    })
}

#[test]
fn an_early_answer_to_an_upload_reaches_the_client() {
    // The host answers 413 as soon as it has the head and closes, never reading the 4 MB.
    let host = Scripted::start(|_| {
        (
            b"HTTP/1.1 413 Payload Too Large\r\nconnection: close\r\ncontent-length: 8\r\n\r\ntoo big!"
                .to_vec(),
            true,
        )
    });
    let proxy = proxy_to(&host);
    let mut stream = TcpStream::connect(proxy.addr("ingress")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let size = 4 << 20;
    let mut writer = stream.try_clone().unwrap();
    let upload = std::thread::spawn(move || {
        let head = format!("POST /early HTTP/1.1\r\nhost: x\r\ncontent-length: {size}\r\n\r\n");
        writer.write_all(head.as_bytes())?;
        writer.write_all(&vec![b'a'; size])
    });
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("too big!") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
    assert!(text.ends_with("too big!"), "{text}");
    drop(stream);
    let _ = upload.join();
}

#[test]
fn a_response_before_its_upload_ended_closes_the_connection_and_says_so() {
    // nginx's `return 200` answers as soon as it has the head and discards the body after, on a
    // connection it keeps alive. The client's connection ends with that response, as Envoy's
    // does: `connection: close` in the head (a keep-alive client would otherwise send its next
    // request into a connection about to close) and no `x-envoy-upstream-service-time`
    // (measured from the request's end, which has not come).
    let host = Scripted::start(|_| (OK.to_vec(), false));
    let proxy = proxy_to(&host);
    let size = 1 << 20;
    let upload = |path: &str, sent: usize| {
        let mut stream = TcpStream::connect(proxy.addr("ingress")).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let head = format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {size}\r\n\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&vec![b'a'; sent]).unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while !got.ends_with(b"ok") {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
        let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 200 "), "{text}");
        (stream, text)
    };

    let (mut stream, text) = upload("/early", 1000);
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    assert!(!text.contains("x-envoy-upstream-service-time"), "{text}");
    // The rest of the body is read and discarded, then the connection ends: nothing more is
    // answered on it.
    let _ = stream.write_all(&vec![b'a'; size - 1000]);
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));

    // The same upload read whole before the answer: the connection stays open, the time is
    // there.
    let (_stream, text) = upload("/read", size);
    assert!(!text.contains("connection: close"), "{text}");
    assert!(
        text.contains("\r\nx-envoy-upstream-service-time: "),
        "{text}"
    );
}

#[test]
fn bytes_after_a_response_retire_its_connection() {
    // Extra bytes after the response, and a host that closes an idle connection: neither is
    // used for the next request.
    let host = Scripted::start(|head| match head.split(' ').nth(1).unwrap_or("") {
        "/extra" => (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n".to_vec(),
            false,
        ),
        _ => (OK.to_vec(), true),
    });
    let proxy = proxy_to(&host);
    let addr = proxy.addr("ingress");
    assert_eq!(http_get(addr, "/extra", &[]).status, 200);
    assert_eq!(http_get(addr, "/closes", &[]).status, 200);
    let stat = |n: &str| proxy.stat(&format!("cluster.backend.{n}"));
    // The host's close of the idle connection is seen without another request.
    let closed = proxy.wait_stat(
        "cluster.backend.upstream_cx_destroy_remote",
        Duration::from_secs(5),
        |n| n >= 1,
    );
    assert!(closed.is_some_and(|n| n >= 1), "{closed:?}");
    assert_eq!(http_get(addr, "/closes", &[]).status, 200);
    assert_eq!(host.connections(), 3);
    assert_eq!(stat("upstream_rq_total"), Some(3));
}
