//! End-to-end tests of HTTP features through the real binary: streaming both ways with slow
//! peers, `Expect: 100-continue`, pipelining, keep-alive reuse, trailers, HEAD, the
//! connection manager's connection and stream timeouts, the route timeout header, load
//! balancing, circuit breakers, the statsd sink, JSON access logs and their reopening, and the
//! admin endpoints. Every expectation is Envoy 1.40's: run with `LEGATE_E2E_PROXY=envoy` to
//! check them against Envoy itself.

mod e2e;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e::*;

fn route(m: &str, action: &str) -> String {
    format!("              - match: {m}\n                {action}\n")
}

/// Everything to cluster `backend`, with `route_extra` in the route action.
fn catch_all(route_extra: &str) -> String {
    route(
        "{prefix: \"/\"}",
        &format!("route: {{cluster: backend{route_extra}}}"),
    )
}

fn setup(route_extra: &str, cluster_extra: &str, hcm_extra: &str) -> (Upstream, Legate) {
    let upstream = Upstream::start();
    let proxy = start_proxy(&front_proxy(
        &catch_all(route_extra),
        &cluster("backend", upstream.addr, cluster_extra),
        hcm_extra,
    ));
    (upstream, proxy)
}

fn access_log_hcm(format: &str) -> String {
    format!(
        r#"          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "{{dir}}/access.log"
{format}
"#
    )
}

/// Waits until the access log at `path` has at least `n` lines (Envoy flushes every second).
fn access_log_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= n || Instant::now() >= deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ------------------------------------------------------------------------------------------
// Streaming
// ------------------------------------------------------------------------------------------

#[test]
fn a_slow_upstreams_chunks_reach_an_http1_client_as_they_are_sent() {
    let (_upstream, proxy) = setup("", "", "");
    let mut c = RawConn::connect(proxy.addr("ingress"));
    let started = Instant::now();
    c.send(b"GET /chunks/4/300 HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let head = c.read_head().expect("response head");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    // Each chunk arrives on its own, about 300 ms after the previous one.
    let mut arrivals = Vec::new();
    let mut got = c.take_leftover();
    if !got.is_empty() {
        arrivals.push(started.elapsed());
    }
    while !String::from_utf8_lossy(&got).contains("chunk-3") {
        let mut buf = [0u8; 1024];
        let n = c.stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
        arrivals.push(started.elapsed());
    }
    assert!(
        arrivals[0] < Duration::from_millis(250),
        "the first chunk was held back: {arrivals:?}"
    );
    assert!(
        arrivals.len() >= 4,
        "chunks were buffered together: {arrivals:?}"
    );
    assert!(*arrivals.last().unwrap() >= Duration::from_millis(850));
    let text = String::from_utf8_lossy(&got);
    for i in 0..4 {
        assert!(text.contains(&format!("chunk-{i}\n")), "{text}");
    }
}

#[test]
fn a_slow_upstreams_chunks_reach_an_h2_client_as_they_are_sent() {
    let (_upstream, proxy) = setup("", "", "");
    let addr = proxy.addr("ingress");
    runtime().block_on(async move {
        let mut sender = h2_connect(addr).await;
        let started = Instant::now();
        let req = http::Request::get("http://example.com/chunks/4/300")
            .body(())
            .unwrap();
        let (response, _) = sender.send_request(req, true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let mut arrivals = Vec::new();
        while let Some(data) = body.data().await {
            let data = data.unwrap();
            let _ = body.flow_control().release_capacity(data.len());
            // The end of the stream may come as an empty DATA frame.
            if !data.is_empty() {
                arrivals.push((started.elapsed(), data));
            }
        }
        assert_eq!(arrivals.len(), 4, "{arrivals:?}");
        assert!(arrivals[0].0 < Duration::from_millis(250), "{arrivals:?}");
        assert!(arrivals[3].0 >= Duration::from_millis(850), "{arrivals:?}");
        assert_eq!(&arrivals[2].1[..], b"chunk-2\n");
    });
}

#[test]
fn request_and_response_bodies_stream_both_ways_at_once_over_http1() {
    let (_upstream, proxy) = setup("", "", "");
    let mut c = RawConn::connect(proxy.addr("ingress"));
    c.send(b"POST /echo-stream HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        .unwrap();
    c.send(b"6\r\nping-0\r\n").unwrap();
    // The response starts while the request body is still open.
    let head = c
        .read_head()
        .expect("response head before the request ended");
    assert_eq!(head.status, 200);
    let mut echoed = c.take_leftover();
    for i in 0..5 {
        if i > 0 {
            c.send(format!("6\r\nping-{i}\r\n").as_bytes()).unwrap();
        }
        // Read until this round's bytes come back (chunk framing included).
        let want = format!("ping-{i}");
        let deadline = Instant::now() + Duration::from_secs(3);
        while !String::from_utf8_lossy(&echoed).contains(&want) {
            assert!(Instant::now() < deadline, "{want} did not come back");
            let mut buf = [0u8; 256];
            let n = c.stream.read(&mut buf).unwrap();
            assert!(n > 0);
            echoed.extend_from_slice(&buf[..n]);
        }
    }
    c.send(b"0\r\n\r\n").unwrap();
}

#[test]
fn request_and_response_bodies_stream_both_ways_at_once_over_h2() {
    let (_upstream, proxy) = setup("", "", "");
    let addr = proxy.addr("ingress");
    runtime().block_on(async move {
        let mut sender = h2_connect(addr).await;
        let req = http::Request::post("http://example.com/echo-stream")
            .body(())
            .unwrap();
        let (response, mut stream) = sender.send_request(req, false).unwrap();
        stream.send_data(Bytes::from("ping-0"), false).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(3), response)
            .await
            .expect("response headers before the request ended")
            .unwrap();
        let mut body = response.into_body();
        for i in 0..5 {
            if i > 0 {
                stream
                    .send_data(Bytes::from(format!("ping-{i}")), false)
                    .unwrap();
            }
            let data = tokio::time::timeout(Duration::from_secs(3), body.data())
                .await
                .unwrap_or_else(|_| panic!("ping-{i} did not come back"))
                .unwrap()
                .unwrap();
            let _ = body.flow_control().release_capacity(data.len());
            assert_eq!(&data[..], format!("ping-{i}").as_bytes());
        }
        stream.send_data(Bytes::new(), true).unwrap();
    });
}

#[test]
fn a_slow_reading_client_gets_a_large_response_whole() {
    let (_upstream, mut proxy) = setup("", "", "");
    let mut s = TcpStream::connect(proxy.addr("ingress")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /bytes/8388608 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    // Small reads with pauses: the proxy has to hold back, not buffer 8 MiB or give up.
    let mut total = 0usize;
    let mut buf = vec![0u8; 4096];
    let mut reads = 0;
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
        reads += 1;
        if reads == 10 || reads == 200 {
            std::thread::sleep(Duration::from_millis(700));
        }
    }
    assert!(total > 8_388_608, "read {total} bytes");
    assert!(proxy.rss_kb() < 100 * 1024);
    proxy.assert_still_serving("ingress");
}

/// An upstream that reads a request body slowly (4 KiB every millisecond, with a pause),
/// then answers with the number of body bytes it read.
fn slow_reading_upstream() -> SocketAddr {
    thread_per_connection("127.0.0.1", |mut s| {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut read = 0;
        let mut buf = vec![0u8; 4096];
        let mut rounds = 0;
        while read < length {
            let n = s.read(&mut buf[..(length - read).min(4096)]).unwrap_or(0);
            if n == 0 {
                break;
            }
            read += n;
            rounds += 1;
            std::thread::sleep(Duration::from_millis(if rounds == 50 { 500 } else { 1 }));
        }
        let body = read.to_string();
        let _ = s.write_all(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    })
}

#[test]
fn a_large_request_body_reaches_a_slow_reading_upstream_whole() {
    let upstream = slow_reading_upstream();
    let proxy = start_proxy(&front_proxy(
        &catch_all(""),
        &cluster("backend", upstream, ""),
        "",
    ));
    let size = 2 << 20;
    let r = Client::h1().request(
        proxy.addr("ingress"),
        "POST",
        "/upload",
        &[],
        Bytes::from(vec![b'u'; size]),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, size.to_string().as_bytes());
}

// ------------------------------------------------------------------------------------------
// HTTP/1.1 connection behaviour
// ------------------------------------------------------------------------------------------

#[test]
fn expect_100_continue_gets_100_then_the_response() {
    let (upstream, proxy) = setup("", "", "");
    let mut c = RawConn::connect(proxy.addr("ingress"));
    c.send(
        b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    // No body yet: the proxy must invite it.
    c.set_timeout(Duration::from_secs(3));
    let interim = c.read_head().expect("100 Continue");
    assert_eq!(interim.status, 100);
    c.send(b"hello").unwrap();
    let r = c.read_response(false).expect("the final response");
    assert_eq!(r.response.status, 200);
    let seen = upstream.last();
    assert_eq!(seen.body_len, 5);
    // Envoy answers `100-continue` itself and does not forward the expectation; it counts the
    // `100` as a response.
    assert_eq!(seen.header("expect"), None);
    assert_stat_reaches(&proxy, "http.ingress_http.downstream_rq_1xx", 1);
    assert_stat_reaches(&proxy, "http.ingress_http.downstream_rq_completed", 2);
}

#[test]
fn pipelined_requests_with_bodies_are_answered_in_order() {
    let (upstream, proxy) = setup("", "", "");
    let mut c = RawConn::connect(proxy.addr("ingress"));
    let mut all = Vec::new();
    for i in 0..20 {
        let body = "b".repeat(i * 10);
        all.extend_from_slice(
            format!(
                "POST /p{i} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        if i % 5 == 0 {
            all.extend_from_slice(
                format!("GET /delay/50?n={i} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes(),
            );
        }
    }
    c.send(&all).unwrap();
    for i in 0..20 {
        let r = c.read_response(false).unwrap();
        let json = r.response.json();
        assert_eq!(json["path"], format!("/p{i}"));
        assert_eq!(json["body_len"], i * 10);
        if i % 5 == 0 {
            let r = c.read_response(false).unwrap();
            assert_eq!(r.response.json()["path"], format!("/delay/50?n={i}"));
        }
    }
    assert_eq!(upstream.count(), 24);
}

#[test]
fn keep_alive_reuses_one_upstream_connection_for_sequential_requests() {
    let (upstream, proxy) = setup("", "", "");
    // One client connection: one worker, one upstream connection for all 20 requests.
    let mut c = RawConn::connect(proxy.addr("ingress"));
    for i in 0..20 {
        c.send(format!("GET /seq{i} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .unwrap();
        let r = c.read_response(false).unwrap();
        assert_eq!(r.response.status, 200);
        assert_eq!(r.response.header("connection"), None);
    }
    assert_eq!(upstream.count(), 20);
    assert_eq!(upstream.connection_count(), 1);
    // Twenty more, each on a new client connection: at most one upstream connection per
    // worker (two) in all.
    for i in 0..20 {
        assert_eq!(
            http_get(proxy.addr("ingress"), &format!("/new{i}"), &[]).status,
            200
        );
    }
    assert!(
        upstream.connection_count() <= 2,
        "{} upstream connections",
        upstream.connection_count()
    );
}

#[test]
fn head_requests_get_headers_only_and_keep_the_connection_usable() {
    let (upstream, proxy) = setup("", "", "");
    let mut c = RawConn::connect(proxy.addr("ingress"));
    c.send(b"HEAD /bytes/1000 HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let r = c.read_response(true).unwrap();
    assert_eq!(r.response.status, 200);
    assert_eq!(r.response.header("content-length"), Some("1000"));
    assert_eq!(upstream.last().method, "HEAD");
    // The next response on the same connection starts right where the HEAD one ended.
    c.send(b"GET /after-head HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let r = c.read_response(false).unwrap();
    assert_eq!(r.response.status, 200);
    assert_eq!(r.response.json()["path"], "/after-head");
    assert!(c.leftover().is_empty());
    // Over HTTP/2 too.
    let r = Client::h2c().request(
        proxy.addr("ingress"),
        "HEAD",
        "/bytes/1000",
        &[],
        Bytes::new(),
    );
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(
        r.headers.get("content-length").map(|v| v.to_str().unwrap()),
        Some("1000")
    );
}

#[test]
fn a_chunked_http1_request_body_reaches_an_h2_upstream() {
    let (upstream, proxy) = setup("", H2_UPSTREAM, "");
    let mut c = RawConn::connect(proxy.addr("ingress"));
    c.send(b"POST /chunked HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        .unwrap();
    for piece in ["hello ", "chunked ", "world"] {
        c.send(format!("{:x}\r\n{piece}\r\n", piece.len()).as_bytes())
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    c.send(b"0\r\n\r\n").unwrap();
    let r = c.read_response(false).unwrap();
    assert_eq!(r.response.status, 200);
    let seen = upstream.last();
    assert_eq!(seen.version, "HTTP/2.0");
    assert_eq!(seen.body_len, 19);
    assert_eq!(seen.header("transfer-encoding"), None);
}

// ------------------------------------------------------------------------------------------
// Trailers
// ------------------------------------------------------------------------------------------

#[test]
fn h2_request_and_response_trailers_pass_through_to_an_h2_upstream() {
    let (upstream, proxy) = setup("", H2_UPSTREAM, "");
    let addr = proxy.addr("ingress");
    runtime().block_on(async move {
        let mut sender = h2_connect(addr).await;
        let req = http::Request::post("http://example.com/trailers")
            .body(())
            .unwrap();
        let (response, mut stream) = sender.send_request(req, false).unwrap();
        stream.send_data(Bytes::from("body"), false).unwrap();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-request-trailer", "sent".parse().unwrap());
        stream.send_trailers(trailers).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let mut data = Vec::new();
        while let Some(d) = body.data().await {
            let d = d.unwrap();
            let _ = body.flow_control().release_capacity(d.len());
            data.extend_from_slice(&d);
        }
        assert_eq!(data, b"trailers");
        let trailers = body.trailers().await.unwrap().expect("response trailers");
        assert_eq!(trailers["x-upstream-trailer"], "done");
    });
    let seen = upstream.last();
    assert_eq!(seen.body_len, 4);
    assert_eq!(
        seen.trailers,
        vec![("x-request-trailer".to_owned(), "sent".to_owned())]
    );
}

#[test]
fn h2_trailers_pass_through_an_http1_upstream_hop_as_envoy_passes_them() {
    // Envoy's HTTP/1 codec drops trailers unless `enable_trailers` is set (it is not here):
    // the request trailers do not reach an HTTP/1.1 upstream, and the response still ends.
    let (upstream, proxy) = setup("", "", "");
    let addr = proxy.addr("ingress");
    runtime().block_on(async move {
        let mut sender = h2_connect(addr).await;
        let req = http::Request::post("http://example.com/trailers")
            .body(())
            .unwrap();
        let (response, mut stream) = sender.send_request(req, false).unwrap();
        stream.send_data(Bytes::from("body"), false).unwrap();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-request-trailer", "sent".parse().unwrap());
        stream.send_trailers(trailers).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        while let Some(d) = body.data().await {
            let d = d.unwrap();
            let _ = body.flow_control().release_capacity(d.len());
        }
        let trailers = body.trailers().await.unwrap();
        assert!(
            trailers
                .as_ref()
                .is_none_or(|t| !t.contains_key("x-upstream-trailer")),
            "{trailers:?}"
        );
    });
    let seen = upstream.last();
    assert_eq!(seen.body_len, 4);
    assert_eq!(seen.trailers, vec![]);
}

#[test]
fn http1_chunked_trailers_are_dropped_as_in_envoy_without_enable_trailers() {
    let (upstream, proxy) = setup("", H2_UPSTREAM, "");
    let mut c = RawConn::connect(proxy.addr("ingress"));
    c.send(
        b"POST /trailers HTTP/1.1\r\nhost: x\r\nte: trailers\r\ntransfer-encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\nx-request-trailer: sent\r\n\r\n",
    )
    .unwrap();
    let r = c.read_response(false).unwrap();
    assert_eq!(r.response.status, 200);
    assert_eq!(r.body, b"trailers");
    assert!(r.trailers.is_empty(), "{:?}", r.trailers);
    let seen = upstream.last();
    assert_eq!(seen.body_len, 4);
    assert_eq!(seen.trailers, vec![]);
}

// ------------------------------------------------------------------------------------------
// Connection manager limits and timeouts
// ------------------------------------------------------------------------------------------

#[test]
fn max_requests_per_connection_closes_after_n() {
    let hcm = "          common_http_protocol_options: {max_requests_per_connection: 3}\n";
    let (_upstream, proxy) = setup("", "", hcm);
    let mut c = RawConn::connect(proxy.addr("ingress"));
    for i in 1..=3 {
        c.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let r = c.read_response(false).expect("a response");
        assert_eq!(r.response.status, 200);
        let close = r.response.header("connection") == Some("close");
        assert_eq!(close, i == 3, "request {i}: {:?}", r.response.headers);
    }
    assert!(
        c.closed_within(Duration::from_secs(3)),
        "still open after 3 requests"
    );
    assert_eq!(
        proxy.wait_stat(
            "http.ingress_http.downstream_cx_max_requests_reached",
            Duration::from_secs(2),
            |v| v >= 1
        ),
        Some(1)
    );
}

#[test]
fn max_requests_per_connection_closes_an_h2_connection_after_n_streams() {
    let hcm = "          common_http_protocol_options: {max_requests_per_connection: 3}\n          drain_timeout: 0.2s\n";
    let (_upstream, proxy) = setup("", "", hcm);
    let addr = proxy.addr("ingress");
    runtime().block_on(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = h2::client::handshake(stream).await.unwrap();
        let conn = tokio::spawn(conn);
        let mut sender = sender.ready().await.unwrap();
        for _ in 0..3 {
            let req = http::Request::get("http://example.com/").body(()).unwrap();
            let (response, _) = sender.send_request(req, true).unwrap();
            assert_eq!(response.await.unwrap().status(), 200);
            sender = match sender.ready().await {
                Ok(s) => s,
                Err(_) => break,
            };
        }
        tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("the h2 connection was not closed after 3 streams")
            .unwrap()
            .ok();
    });
}

#[test]
fn max_connection_duration_closes_an_idle_connection() {
    // Envoy closes after its drain sequence (`drain_timeout`) and delayed close: keep those
    // short.
    let hcm = "          common_http_protocol_options: {max_connection_duration: 1s}\n          drain_timeout: 0.2s\n";
    let (_upstream, proxy) = setup("", "", hcm);
    let mut c = RawConn::connect(proxy.addr("ingress"));
    let started = Instant::now();
    c.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    assert_eq!(c.read_response(false).unwrap().response.status, 200);
    assert!(c.closed_within(Duration::from_secs(4)), "still open");
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_millis(3500),
        "closed after {after:?}"
    );
    assert_eq!(
        proxy.wait_stat(
            "http.ingress_http.downstream_cx_max_duration_reached",
            Duration::from_secs(2),
            |v| v >= 1
        ),
        Some(1)
    );
}

#[test]
fn max_connection_duration_lets_the_request_in_flight_finish() {
    let hcm = "          common_http_protocol_options: {max_connection_duration: 0.5s}\n          drain_timeout: 0.2s\n";
    let (_upstream, proxy) = setup("", "", hcm);
    let mut c = RawConn::connect(proxy.addr("ingress"));
    c.send(b"GET /delay/1200 HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let r = c
        .read_response(false)
        .expect("the request in flight is answered");
    assert_eq!(r.response.status, 200);
    assert_eq!(r.response.header("connection"), Some("close"));
    assert!(c.closed_within(Duration::from_secs(2)));
}

#[test]
fn idle_timeout_closes_an_idle_connection_but_not_a_busy_one() {
    let hcm = "          common_http_protocol_options: {idle_timeout: 1s}\n          drain_timeout: 0.2s\n";
    let (_upstream, proxy) = setup("", "", hcm);
    // A request longer than the idle timeout is not cut.
    let mut c = RawConn::connect(proxy.addr("ingress"));
    c.send(b"GET /delay/1500 HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    assert_eq!(c.read_response(false).unwrap().response.status, 200);
    // Then, idle, the connection is closed after about a second.
    let idle_since = Instant::now();
    assert!(
        c.closed_within(Duration::from_secs(4)),
        "the idle connection was kept"
    );
    let after = idle_since.elapsed();
    assert!(
        after >= Duration::from_millis(800) && after < Duration::from_millis(3500),
        "closed after {after:?} idle"
    );
    assert_eq!(
        proxy.wait_stat(
            "http.ingress_http.downstream_cx_idle_timeout",
            Duration::from_secs(2),
            |v| v >= 1
        ),
        Some(1)
    );
}

#[test]
fn stream_idle_timeout_answers_504_when_the_upstream_stalls_on_a_complete_request() {
    let hcm = "          stream_idle_timeout: 0.5s\n";
    let (_upstream, proxy) = setup("", "", hcm);
    let started = Instant::now();
    let r = http_get(proxy.addr("ingress"), "/delay/3000", &[]);
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(r.body, "stream timeout");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(2500),
        "answered after {took:?}"
    );
    assert_eq!(
        proxy.stat("http.ingress_http.downstream_rq_idle_timeout"),
        Some(1)
    );
}

#[test]
fn stream_idle_timeout_answers_408_when_the_client_stalls_its_body() {
    let hcm = "          stream_idle_timeout: 0.5s\n";
    let (upstream, proxy) = setup("", "", hcm);
    let mut c = RawConn::connect(proxy.addr("ingress"));
    let started = Instant::now();
    c.send(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nhello")
        .unwrap();
    let r = c.read_response(false).expect("a local reply");
    let took = started.elapsed();
    assert_eq!(r.response.status, 408, "{r:?}");
    assert_eq!(r.response.body, "stream timeout");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(2500),
        "answered after {took:?}"
    );
    assert!(c.closed_within(Duration::from_secs(3)));
    let complete = upstream
        .requests
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.body_len == 10);
    assert!(!complete, "the upstream got a complete request");
    assert_eq!(
        proxy.stat("http.ingress_http.downstream_rq_idle_timeout"),
        Some(1)
    );
}

/// Sends `GET path` and reads the response head (200) and what follows; returns how long until
/// the body was cut (`None`: it was not, the response ended properly).
fn cut_body_after(proxy: &Legate, path: &str) -> Option<Duration> {
    let mut c = RawConn::connect(proxy.addr("ingress"));
    let started = Instant::now();
    c.send(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .unwrap();
    let head = c.read_head().expect("the response head");
    assert_eq!(head.status, 200, "{head:?}");
    match c.read_body(head, false) {
        Some(_) => None,
        None => Some(started.elapsed()),
    }
}

/// Asserts that the body of `GET path` is cut about 0.5 s after the request.
fn assert_cut_after_half_a_second(proxy: &Legate, path: &str) {
    let took = cut_body_after(proxy, path).unwrap_or_else(|| panic!("{path}: not cut"));
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(2500),
        "{path}: cut after {took:?}"
    );
}

/// Asserts that the stat `name` reaches `n` (within 2 s).
fn assert_stat_reaches(proxy: &Legate, name: &str, n: u64) {
    let seen = proxy.wait_stat(name, Duration::from_secs(2), |v| v >= n);
    assert_eq!(seen, Some(n), "{name}");
}

#[test]
fn the_route_timeout_cuts_a_response_body_that_outlasts_it() {
    let (_upstream, proxy) = setup(", timeout: 0.5s", "", "");
    let timeouts = "cluster.backend.upstream_rq_timeout";
    // 30 chunks 100 ms apart: never idle for long, but 3 s in all against a 0.5 s route timeout.
    assert_cut_after_half_a_second(&proxy, "/chunks/30/100");
    assert_stat_reaches(&proxy, timeouts, 1);
    // A body that stalls: its second chunk would come after 3 s.
    assert_cut_after_half_a_second(&proxy, "/chunks/2/3000");
    assert_stat_reaches(&proxy, timeouts, 2);
    // A body within the timeout is whole.
    assert_eq!(cut_body_after(&proxy, "/chunks/3/50"), None);
}

#[test]
fn the_stream_idle_timeout_cuts_a_response_body_that_stalls() {
    // The second chunk comes after 3 s; the stream may be idle for 0.5 s.
    let (_upstream, proxy) = setup("", "", "          stream_idle_timeout: 0.5s\n");
    assert_cut_after_half_a_second(&proxy, "/chunks/2/3000");
    assert_stat_reaches(&proxy, "http.ingress_http.downstream_rq_idle_timeout", 1);
    // Every frame restarts the timeout, the first one too: a body whose first chunk comes
    // after 0.3 s, the next two 0.3 s apart, is whole.
    assert_eq!(cut_body_after(&proxy, "/chunks/3/300/300"), None);
    // Chunks 200 ms apart keep the stream alive past 0.5 s in all.
    assert_eq!(cut_body_after(&proxy, "/chunks/6/200"), None);
}

#[test]
fn a_response_body_cut_by_a_timeout_is_logged_with_its_cause_and_counted_as_reset() {
    const FORMAT: &str = "              log_format: {text_format_source: {inline_string: \"%RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:PATH)%\\n\"}}";
    let logged = access_log_hcm(FORMAT);
    // The route timeout: UT.
    let (_upstream, proxy) = setup(", timeout: 0.5s", "", &logged);
    assert!(cut_body_after(&proxy, "/chunks/30/100").is_some());
    assert_eq!(
        access_log_lines(&proxy.dir.join("access.log"), 1),
        ["200 UT /chunks/30/100"]
    );
    assert_reset_by_the_proxy(&proxy);
    drop(proxy);
    // The stream idle timeout: SI.
    let (_upstream, proxy) = setup(
        "",
        "",
        &format!("{logged}          stream_idle_timeout: 0.5s\n"),
    );
    assert!(cut_body_after(&proxy, "/chunks/2/3000").is_some());
    assert_eq!(
        access_log_lines(&proxy.dir.join("access.log"), 1),
        ["200 SI /chunks/2/3000"]
    );
    assert_reset_by_the_proxy(&proxy);
}

#[test]
fn the_upstream_connections_own_address_is_logged_for_http1_and_http2_upstreams() {
    const FORMAT: &str = "              log_format: {text_format_source: {inline_string: \"%UPSTREAM_LOCAL_ADDRESS% %UPSTREAM_HOST%\\n\"}}";
    let logged = access_log_hcm(FORMAT);
    for cluster_extra in ["", H2_UPSTREAM] {
        let (upstream, proxy) = setup("", cluster_extra, &logged);
        assert_eq!(http_get(proxy.addr("ingress"), "/", &[]).status, 200);
        let lines = access_log_lines(&proxy.dir.join("access.log"), 1);
        let (local, host) = lines[0].split_once(' ').unwrap();
        assert_eq!(host, upstream.addr.to_string());
        let local: SocketAddr = local.parse().unwrap_or_else(|_| panic!("{lines:?}"));
        assert!(local.ip().is_loopback() && local.port() != 0, "{lines:?}");
    }
}

/// One stream was reset by the proxy: Envoy counts it in `downstream_rq_tx_reset`, and (as it
/// counts every reset) in `downstream_rq_rx_reset`.
fn assert_reset_by_the_proxy(proxy: &Legate) {
    for stat in ["downstream_rq_tx_reset", "downstream_rq_rx_reset"] {
        assert_stat_reaches(proxy, &format!("http.ingress_http.{stat}"), 1);
    }
}

/// Requests from 127.0.0.1 are internal (trusted): only then does Envoy honour
/// `x-envoy-*` control headers.
const TRUSTED_LOOPBACK: &str = "          use_remote_address: true
          internal_address_config: {cidr_ranges: [{address_prefix: 127.0.0.1, prefix_len: 32}]}
";

#[test]
fn the_upstream_rq_timeout_header_overrides_the_route_timeout() {
    let (_upstream, proxy) = setup(", timeout: 5s", "", TRUSTED_LOOPBACK);
    let addr = proxy.addr("ingress");
    // Shorter than the route's: 504 after the header's 200 ms.
    let started = Instant::now();
    let r = http_get(
        addr,
        "/delay/2000",
        &[("x-envoy-upstream-rq-timeout-ms", "200")],
    );
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(r.body, "upstream request timeout");
    assert!(started.elapsed() < Duration::from_millis(1500));
    // The upstream is told the timeout it has, and not the header.
    let r = http_get(addr, "/", &[("x-envoy-upstream-rq-timeout-ms", "1234")]);
    assert_eq!(
        r.json()["headers"]["x-envoy-expected-rq-timeout-ms"],
        "1234"
    );
    assert!(
        r.json()["headers"]
            .get("x-envoy-upstream-rq-timeout-ms")
            .is_none()
    );
    // Longer than the route's.
    let (_upstream2, proxy2) = setup(", timeout: 0.2s", "", TRUSTED_LOOPBACK);
    let r = http_get(
        proxy2.addr("ingress"),
        "/delay/600",
        &[("x-envoy-upstream-rq-timeout-ms", "3000")],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let r = http_get(proxy2.addr("ingress"), "/delay/600", &[]);
    assert_eq!(r.status, 504, "{r:?}");
}

#[test]
fn the_upstream_rq_timeout_header_from_an_untrusted_client_is_ignored() {
    let (upstream, proxy) = setup(", timeout: 0.5s", "", "");
    let addr = proxy.addr("ingress");
    let r = http_get(
        addr,
        "/delay/1000",
        &[("x-envoy-upstream-rq-timeout-ms", "3000")],
    );
    assert_eq!(r.status, 504, "{r:?}");
    let r = http_get(
        addr,
        "/",
        &[
            ("x-envoy-upstream-rq-timeout-ms", "100"),
            ("x-envoy-max-retries", "5"),
            ("x-envoy-retry-on", "5xx"),
            ("x-envoy-expected-rq-timeout-ms", "1"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let seen = upstream.last();
    assert_eq!(seen.header("x-envoy-expected-rq-timeout-ms"), Some("500"));
    assert_eq!(seen.header("x-envoy-max-retries"), None);
    assert_eq!(seen.header("x-envoy-retry-on"), None);
}

// ------------------------------------------------------------------------------------------
// Load balancing
// ------------------------------------------------------------------------------------------

/// Three upstreams behind one cluster with `lb_policy` and the given (weight, priority) per
/// host; `n` sequential requests on one client connection; the count each host saw.
fn distribute(lb_policy: &str, hosts: &[(u32, u32)], n: usize) -> Vec<usize> {
    let upstreams: Vec<Upstream> = hosts.iter().map(|_| Upstream::start()).collect();
    let spec: Vec<(SocketAddr, u32, u32)> = upstreams
        .iter()
        .zip(hosts)
        .map(|(u, &(w, p))| (u.addr, w, p))
        .collect();
    let proxy = start_proxy(&front_proxy(
        &catch_all(""),
        &cluster_hosts("backend", &spec, &format!("    lb_policy: {lb_policy}")),
        "",
    ));
    let mut c = RawConn::connect(proxy.addr("ingress"));
    for _ in 0..n {
        c.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        assert_eq!(c.read_response(false).unwrap().response.status, 200);
    }
    upstreams.iter().map(Upstream::count).collect()
}

#[test]
fn round_robin_takes_hosts_in_turn() {
    let counts = distribute("ROUND_ROBIN", &[(1, 0), (1, 0), (1, 0)], 30);
    assert_eq!(counts, [10, 10, 10]);
}

#[test]
fn random_spreads_over_every_host() {
    let counts = distribute("RANDOM", &[(1, 0), (1, 0), (1, 0)], 300);
    assert!(
        counts.iter().all(|&c| (50..=150).contains(&c)),
        "{counts:?}"
    );
}

#[test]
fn least_request_spreads_over_every_host() {
    let counts = distribute("LEAST_REQUEST", &[(1, 0), (1, 0), (1, 0)], 300);
    assert!(
        counts.iter().all(|&c| (50..=150).contains(&c)),
        "{counts:?}"
    );
}

#[test]
fn weighted_round_robin_follows_load_balancing_weight() {
    let counts = distribute("ROUND_ROBIN", &[(1, 0), (2, 0), (3, 0)], 60);
    for (got, want) in counts.iter().zip([10, 20, 30]) {
        assert!(got.abs_diff(want) <= 2, "{counts:?}");
    }
}

#[test]
fn random_ignores_load_balancing_weight_as_in_envoy() {
    let counts = distribute("RANDOM", &[(1, 0), (1, 0), (8, 0)], 300);
    assert!(
        counts.iter().all(|&c| (50..=150).contains(&c)),
        "{counts:?}"
    );
}

#[test]
fn weighted_least_request_favours_heavy_hosts() {
    // Sequential requests: every host is idle, so the pick is by weight alone.
    let counts = distribute("LEAST_REQUEST", &[(1, 0), (1, 0), (8, 0)], 200);
    assert!(counts[2] >= 120, "{counts:?}");
}

#[test]
fn priority_1_takes_nothing_while_priority_0_hosts_are_up() {
    let counts = distribute("ROUND_ROBIN", &[(1, 0), (1, 0), (1, 1)], 40);
    assert_eq!(counts, [20, 20, 0]);
    let counts = distribute("LEAST_REQUEST", &[(1, 0), (1, 1), (1, 1)], 20);
    assert_eq!(counts, [20, 0, 0]);
}

// ------------------------------------------------------------------------------------------
// Circuit breakers
// ------------------------------------------------------------------------------------------

#[test]
fn max_requests_1_overflows_concurrent_requests_with_503_uo() {
    let breaker = "    circuit_breakers: {thresholds: [{max_requests: 1}]}";
    let hcm = access_log_hcm(
        r#"              log_format: {text_format_source: {inline_string: "%RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:PATH)%\n"}}"#,
    );
    let (upstream, proxy) = setup("", breaker, &hcm);
    let addr = proxy.addr("ingress");
    let first = std::thread::spawn(move || http_get(addr, "/delay/1000", &[]));
    // Wait until the first request holds the only slot.
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.count() == 0 && upstream.in_flight.peak() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let others: Vec<_> = (0..4)
        .map(|i| std::thread::spawn(move || http_get(addr, &format!("/other{i}"), &[])))
        .collect();
    for o in others {
        let r = o.join().unwrap();
        assert_eq!(r.status, 503, "{r:?}");
        assert_eq!(
            r.body,
            "upstream connect error or disconnect/reset before headers. reset reason: overflow"
        );
    }
    assert_eq!(first.join().unwrap().status, 200);
    // Envoy 1.40 counts a `max_requests` overflow as `upstream_rq_active_overflow`.
    assert_eq!(
        proxy.stat("cluster.backend.upstream_rq_active_overflow"),
        Some(4)
    );
    assert_eq!(
        proxy.stat("cluster.backend.upstream_rq_pending_overflow"),
        Some(0)
    );
    let lines = access_log_lines(&proxy.dir.join("access.log"), 5);
    let overflowed = lines
        .iter()
        .filter(|l| l.starts_with("503 UO /other"))
        .count();
    assert_eq!(overflowed, 4, "{lines:?}");
    assert!(lines.contains(&"200 - /delay/1000".to_owned()), "{lines:?}");
    // Once the slot is free, requests go through again.
    assert_eq!(http_get(addr, "/", &[]).status, 200);
}

#[test]
fn a_circuit_breaker_overflow_is_marked_x_envoy_overloaded() {
    let breaker = "    circuit_breakers: {thresholds: [{max_requests: 1}]}";
    let (upstream, proxy) = setup("", breaker, "");
    let addr = proxy.addr("ingress");
    let first = std::thread::spawn(move || http_get(addr, "/delay/1000", &[]));
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.in_flight.peak() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = http_get(addr, "/other", &[]);
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("x-envoy-overloaded"), Some("true"), "{r:?}");
    assert_eq!(first.join().unwrap().status, 200);
}

/// A proxy with one worker in front of a fresh upstream, the cluster's breakers set to
/// `thresholds`.
fn one_worker_behind(thresholds: &str) -> (Upstream, Legate) {
    let upstream = Upstream::start();
    let breakers = format!("    circuit_breakers: {{thresholds: [{thresholds}]}}");
    let proxy = start_proxy_one_worker(&front_proxy(
        &catch_all(""),
        &cluster("backend", upstream.addr, &breakers),
        "",
    ));
    (upstream, proxy)
}

#[test]
fn max_pending_requests_0_overflows_a_request_that_finds_no_idle_connection() {
    let (upstream, proxy) = one_worker_behind("{max_pending_requests: 0}");
    let r = http_get(proxy.addr("ingress"), "/", &[]);
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(
        r.body,
        "upstream connect error or disconnect/reset before headers. reset reason: overflow"
    );
    assert_eq!(r.header("x-envoy-overloaded"), Some("true"), "{r:?}");
    assert_eq!(upstream.count(), 0);
    let stat = |n: &str| proxy.stat(&format!("cluster.backend.{n}"));
    assert_eq!(stat("upstream_rq_pending_overflow"), Some(1));
    assert_eq!(stat("upstream_rq_pending_total"), Some(0));
    assert_eq!(stat("upstream_rq_total"), Some(0));
    assert_eq!(stat("upstream_cx_total"), Some(0));
}

#[test]
fn max_connections_0_still_opens_one_connection_for_the_waiting_requests() {
    // Envoy's rule: a pool with requests waiting always has a connection to serve them.
    let (upstream, proxy) = one_worker_behind("{max_connections: 0}");
    let addr = proxy.addr("ingress");
    let clients: Vec<_> = (0..3)
        .map(|i| {
            std::thread::sleep(Duration::from_millis(50 * i));
            std::thread::spawn(move || http_get(addr, "/delay/300", &[]).status)
        })
        .collect();
    let statuses: Vec<u16> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert_eq!(statuses, [200, 200, 200]);
    assert_eq!(
        upstream.in_flight.peak(),
        1,
        "one connection, one request at a time"
    );
    let stat = |n: &str| proxy.stat(&format!("cluster.backend.{n}"));
    assert_eq!(stat("upstream_cx_total"), Some(1));
    assert_eq!(stat("upstream_rq_pending_total"), Some(3));
    // As Envoy 1.40 counts them: the connection opened past the limit, one for each request
    // that had to wait, one when the first waiter took the connection while another waited.
    assert_eq!(stat("upstream_cx_overflow"), Some(4));
    assert_eq!(stat("circuit_breakers.default.cx_open"), Some(1));
}

#[test]
fn a_pending_request_its_client_gives_up_is_cancelled_and_never_sent() {
    let (upstream, proxy) = one_worker_behind("{max_connections: 1}");
    let addr = proxy.addr("ingress");
    let first = std::thread::spawn(move || http_get(addr, "/delay/800", &[]));
    std::thread::sleep(Duration::from_millis(200));
    let mut quitter = TcpStream::connect(addr).unwrap();
    quitter
        .write_all(b"GET /never HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let stat = |n: &str| proxy.stat(&format!("cluster.backend.{n}"));
    assert_eq!(stat("upstream_rq_pending_active"), Some(1));
    drop(quitter);
    assert_eq!(first.join().unwrap().status, 200);
    assert_eq!(stat("upstream_rq_cancelled"), Some(1));
    assert_eq!(stat("upstream_rq_pending_active"), Some(0));
    assert_eq!(stat("upstream_rq_total"), Some(1));
    // The connection is free again: the next request is sent on it, not queued.
    assert_eq!(http_get(addr, "/", &[]).status, 200);
    let paths: Vec<String> = upstream
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.path.clone())
        .collect();
    assert_eq!(paths, ["/delay/800", "/"]);
    assert_eq!(stat("upstream_cx_total"), Some(1));
}

#[test]
fn a_failed_connect_fails_its_pending_request_not_a_sent_one() {
    let dead = SocketAddr::from(([127, 0, 0, 1], e2e::dynamic::free_port()));
    let proxy = start_proxy_one_worker(&front_proxy(
        &catch_all(""),
        &cluster("backend", dead, ""),
        "",
    ));
    let r = http_get(proxy.addr("ingress"), "/", &[]);
    assert_eq!(r.status, 503, "{r:?}");
    let stat = |n: &str| proxy.stat(&format!("cluster.backend.{n}"));
    assert_eq!(stat("upstream_cx_connect_fail"), Some(1));
    assert_eq!(stat("upstream_rq_pending_total"), Some(1));
    assert_eq!(stat("upstream_rq_pending_failure_eject"), Some(1));
    // Envoy counts a request in `upstream_rq_total` once it is on a connection.
    assert_eq!(stat("upstream_rq_total"), Some(0));
}

/// A proxy with one worker whose cluster speaks HTTP/1.1 to its upstream and sets `options`
/// in its HTTP protocol options.
fn one_worker_with_upstream_options(options: &str) -> (Upstream, Legate) {
    one_worker_with_upstream("http_protocol_options", options)
}

/// [`one_worker_with_upstream_options`], the upstream protocol's options named `protocol`.
fn one_worker_with_upstream(protocol: &str, options: &str) -> (Upstream, Legate) {
    let upstream = Upstream::start();
    let cluster_options = format!(
        r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        common_http_protocol_options: {{{options}}}
        explicit_http_config: {{{protocol}: {{}}}}"#
    );
    let proxy = start_proxy_one_worker(&front_proxy(
        &catch_all(""),
        &cluster("backend", upstream.addr, &cluster_options),
        "",
    ));
    (upstream, proxy)
}

/// The TCP connections `upstream` has accepted so far.
fn accepted(upstream: &Upstream) -> usize {
    upstream
        .connections
        .load(std::sync::atomic::Ordering::SeqCst)
}

/// Whether the cluster `backend` has closed `n` upstream connections within 3 s.
fn closed_upstream_connections(proxy: &Legate, n: u64) -> bool {
    let name = "cluster.backend.upstream_cx_destroy";
    proxy.wait_stat(name, Duration::from_secs(3), |v| v == n) == Some(n)
}

#[test]
fn an_upstream_connection_idle_past_idle_timeout_is_closed() {
    let (upstream, proxy) = one_worker_with_upstream_options("idle_timeout: 0.5s");
    let addr = proxy.addr("ingress");
    assert_eq!(http_get(addr, "/", &[]).status, 200);
    let stat = |n: &str| proxy.stat(&format!("cluster.backend.{n}"));
    assert_eq!(stat("upstream_cx_active"), Some(1));
    assert!(
        closed_upstream_connections(&proxy, 1),
        "the idle connection was not closed"
    );
    assert_eq!(stat("upstream_cx_idle_timeout"), Some(1));
    assert_eq!(stat("upstream_cx_active"), Some(0));
    // Closed by the proxy.
    assert_eq!(stat("upstream_cx_destroy_local"), Some(1));
    assert_eq!(stat("upstream_cx_destroy_remote"), Some(0));
    // The next request opens a new connection.
    assert_eq!(http_get(addr, "/", &[]).status, 200);
    assert_eq!(accepted(&upstream), 2);
}

#[test]
fn an_h2_upstream_connection_without_a_stream_past_idle_timeout_is_closed() {
    let (upstream, proxy) =
        one_worker_with_upstream("http2_protocol_options", "idle_timeout: 0.5s");
    let addr = proxy.addr("ingress");
    // A stream open for longer than the timeout keeps its connection open.
    assert_eq!(http_get(addr, "/delay/800", &[]).status, 200);
    let stat = |n: &str| proxy.stat(&format!("cluster.backend.{n}"));
    assert_eq!(stat("upstream_cx_idle_timeout"), Some(0));
    assert!(
        closed_upstream_connections(&proxy, 1),
        "the connection without a stream was not closed"
    );
    assert_eq!(stat("upstream_cx_idle_timeout"), Some(1));
    assert_eq!(stat("upstream_cx_destroy_local"), Some(1));
    assert_eq!(http_get(addr, "/", &[]).status, 200);
    assert_eq!(accepted(&upstream), 2);
}

/// An upstream that answers each request on a connection and closes the connection 200 ms
/// later, as a server's keep-alive timeout does; a request for `/close` gets
/// `connection: close` and the connection closed at once.
fn closing_upstream() -> SocketAddr {
    thread_per_connection("127.0.0.1", |mut conn| {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match conn.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        if head.starts_with(b"GET /close ") {
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok");
            return;
        }
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        std::thread::sleep(Duration::from_millis(200));
    })
}

/// Which side closed an upstream connection, as Envoy counts it: the upstream closing an idle
/// connection is `upstream_cx_destroy_remote`; the proxy closing one (after a response with
/// `connection: close` here, its idle timeout in the tests above) `upstream_cx_destroy_local`.
#[test]
fn an_upstream_closing_its_idle_connection_counts_as_a_remote_close() {
    let upstream = closing_upstream();
    let proxy = start_proxy_one_worker(&front_proxy(
        &catch_all(""),
        &cluster("backend", upstream, ""),
        "",
    ));
    assert_eq!(http_get(proxy.addr("ingress"), "/", &[]).status, 200);
    assert!(
        closed_upstream_connections(&proxy, 1),
        "the upstream's close was not seen"
    );
    let stat = |n: &str| proxy.stat(&format!("cluster.backend.{n}"));
    assert_eq!(stat("upstream_cx_destroy_remote"), Some(1));
    assert_eq!(stat("upstream_cx_destroy_local"), Some(0));
    // A response with `connection: close`: the proxy closes the connection itself.
    assert_eq!(http_get(proxy.addr("ingress"), "/close", &[]).status, 200);
    assert!(closed_upstream_connections(&proxy, 2));
    assert_eq!(stat("upstream_cx_destroy_local"), Some(1));
    assert_eq!(stat("upstream_cx_destroy_remote"), Some(1));
}

#[test]
fn max_connection_duration_retires_upstream_connections_idle_or_busy() {
    // As Envoy 1.40 does: at the deadline an idle connection is closed at once; a busy one
    // serves its request to the end, then closes; both count `upstream_cx_max_duration_reached`
    // at the deadline.
    let (upstream, proxy) = one_worker_with_upstream_options("max_connection_duration: 1s");
    let addr = proxy.addr("ingress");
    let stat = |n: &str| proxy.stat(&format!("cluster.backend.{n}"));
    assert_eq!(http_get(addr, "/", &[]).status, 200);
    assert!(
        closed_upstream_connections(&proxy, 1),
        "the idle connection was not closed"
    );
    assert_eq!(stat("upstream_cx_max_duration_reached"), Some(1));
    let busy = std::thread::spawn(move || http_get(addr, "/delay/1600", &[]).status);
    let reached = proxy.wait_stat(
        "cluster.backend.upstream_cx_max_duration_reached",
        Duration::from_secs(3),
        |v| v == 2,
    );
    assert_eq!(reached, Some(2));
    assert_eq!(
        stat("upstream_cx_active"),
        Some(1),
        "closed under its request"
    );
    assert_eq!(busy.join().unwrap(), 200);
    assert!(
        closed_upstream_connections(&proxy, 2),
        "the retired connection was not closed after its request"
    );
    assert_eq!(http_get(addr, "/", &[]).status, 200);
    assert_eq!(accepted(&upstream), 3);
}

#[test]
fn an_upstream_connection_at_max_requests_per_connection_is_closed() {
    let (upstream, proxy) = one_worker_with_upstream_options("max_requests_per_connection: 2");
    let addr = proxy.addr("ingress");
    for _ in 0..4 {
        assert_eq!(http_get(addr, "/", &[]).status, 200);
    }
    assert_eq!(accepted(&upstream), 2);
    assert_eq!(
        proxy.stat("cluster.backend.upstream_cx_max_requests"),
        Some(2)
    );
}

/// Sends `GET path` on each of `n` connections to `addr` at once; the response statuses.
fn burst(addr: SocketAddr, n: usize, path: &str) -> Vec<u16> {
    let clients: Vec<_> = (0..n).map(|_| RawConn::connect(addr)).collect();
    let start = std::sync::Arc::new(std::sync::Barrier::new(n));
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
    let threads: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let (start, request) = (start.clone(), request.clone());
            std::thread::spawn(move || {
                start.wait();
                c.send(request.as_bytes()).unwrap();
                c.read_response(false).unwrap().response.status
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn a_burst_of_requests_shares_the_one_h2_connection_being_opened() {
    // Envoy opens one connection for an HTTP/2 pool and queues the requests that arrive while
    // it connects as pending on it.
    let upstream = Upstream::start();
    let proxy = start_proxy_one_worker(&front_proxy(
        &catch_all(""),
        &cluster("backend", upstream.addr, H2_UPSTREAM),
        "",
    ));
    assert_eq!(burst(proxy.addr("ingress"), 20, "/delay/200"), [200; 20]);
    assert_eq!(accepted(&upstream), 1);
    assert_eq!(proxy.stat("cluster.backend.upstream_cx_total"), Some(1));
    assert_eq!(proxy.stat("cluster.backend.upstream_rq_total"), Some(20));
    assert_eq!(
        proxy.stat("cluster.backend.upstream_rq_pending_active"),
        Some(0)
    );
}

#[test]
fn the_h2_connection_failing_to_open_fails_every_request_waiting_for_it() {
    // A listener whose accept queue is full and never drained: connects to it hang.
    let silent = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    silent
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    silent.listen(0).unwrap();
    let silent_addr = silent.local_addr().unwrap().as_socket().unwrap();
    let _filling: Vec<_> = (0..4)
        .filter_map(|_| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
            s.set_nonblocking(true).ok()?;
            let _ = s.connect(&silent_addr.into());
            Some(s)
        })
        .collect();
    let proxy = start_proxy_one_worker(&front_proxy(
        &catch_all(""),
        &cluster("backend", silent_addr, H2_UPSTREAM),
        "",
    ));
    assert_eq!(burst(proxy.addr("ingress"), 10, "/"), [503; 10]);
    let stat = |n: &str| proxy.stat(&format!("cluster.backend.{n}"));
    assert_eq!(stat("upstream_cx_connect_timeout"), Some(1));
    assert_eq!(stat("upstream_rq_pending_failure_eject"), Some(10));
    assert_eq!(stat("upstream_rq_total"), Some(0));
}

// ------------------------------------------------------------------------------------------
// Stats sinks and access logs
// ------------------------------------------------------------------------------------------

/// Statsd sinks on a unix datagram socket (`pipe`) and on an IPv6 address: each gets the
/// flush's lines, the same counter deltas (the second sink used to get zeros). Over the unix socket Legate packs lines into datagrams of up to 8 KiB: the
/// socket's queue holds 10 datagrams (`net.unix.max_dgram_qlen`), and Envoy, which sends one
/// line a datagram, loses most of a flush there — that part runs against Legate only.
#[test]
fn statsd_sinks_on_a_unix_socket_and_on_ipv6() {
    let dir = ScratchDir::new("statsd-pipe");
    let path = dir.join("statsd.sock");
    let unix = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    let udp6 = std::net::UdpSocket::bind("[::1]:0").unwrap();
    let port6 = udp6.local_addr().unwrap().port();
    // Each sink's lines, read as they come (a receiver that waits would drop some).
    let collect = |recv: Box<dyn Fn(&mut [u8]) -> std::io::Result<usize> + Send>| {
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(n) = recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    sink.lock().unwrap().extend(text.lines().map(str::to_owned));
                }
            }
        });
        lines
    };
    unix.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    udp6.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let from_unix = collect(Box::new(move |buf| unix.recv(buf)));
    let from_udp6 = collect(Box::new(move |buf| udp6.recv(buf)));
    let upstream = Upstream::start();
    let sink = |address: String| {
        format!(
            "- name: envoy.stat_sinks.statsd\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.config.metrics.v3.StatsdSink\n    address: {address}\n"
        )
    };
    let mut sinks = sink(format!(
        "{{socket_address: {{address: \"::1\", port_value: {port6}}}}}"
    ));
    if !target_is_envoy() {
        sinks += &sink(format!("{{pipe: {{path: \"{}\"}}}}", path.display()));
    }
    let config = front_proxy(&catch_all(""), &cluster("backend", upstream.addr, ""), "")
        + &format!("stats_flush_interval: 1s\nstats_sinks:\n{sinks}");
    let proxy = start_proxy(&config);
    for _ in 0..3 {
        assert_eq!(http_get(proxy.addr("ingress"), "/", &[]).status, 200);
    }
    let wanted = "envoy.cluster.backend.upstream_rq_total:3|c";
    let mut receivers = vec![("IPv6", from_udp6)];
    if !target_is_envoy() {
        receivers.push(("unix", from_unix));
    }
    for (name, lines) in receivers {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !lines.lock().unwrap().iter().any(|l| l == wanted) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let lines = lines.lock().unwrap();
        assert!(lines.iter().any(|l| l == wanted), "{name}: {lines:?}");
    }
}

#[test]
fn the_statsd_sink_receives_counters_after_each_flush() {
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let upstream = Upstream::start();
    let config = front_proxy(&catch_all(""), &cluster("backend", upstream.addr, ""), "")
        + &format!(
            r#"stats_flush_interval: 1s
stats_sinks:
- name: envoy.stat_sinks.statsd
  typed_config:
    "@type": type.googleapis.com/envoy.config.metrics.v3.StatsdSink
    address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}
"#,
            sink.local_addr().unwrap().port()
        );
    let proxy = start_proxy(&config);
    for _ in 0..3 {
        assert_eq!(http_get(proxy.addr("ingress"), "/", &[]).status, 200);
    }
    // Collect until the counter shows up, then the rest of that flush.
    let wanted = "envoy.cluster.backend.upstream_rq_total:3|c";
    let mut lines: Vec<String> = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut deadline = Instant::now() + Duration::from_secs(5);
    let mut seen_at = None;
    while Instant::now() < deadline {
        if let Ok(n) = sink.recv(&mut buf) {
            lines.extend(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_owned),
            );
        }
        if seen_at.is_none() && lines.iter().any(|l| l == wanted) {
            seen_at = Some(Instant::now());
            deadline = Instant::now() + Duration::from_millis(400);
        }
    }
    assert!(seen_at.is_some(), "{lines:?}");
    // Gauges are sent as gauges.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("envoy.cluster.backend.membership_total:1|g")),
        "{lines:?}"
    );
    // Counters are deltas: the next flush reports no new requests.
    let mut later = Vec::new();
    let deadline = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < deadline {
        if let Ok(n) = sink.recv(&mut buf) {
            later.extend(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_owned),
            );
        }
    }
    assert!(
        !later
            .iter()
            .any(|l| l.starts_with("envoy.cluster.backend.upstream_rq_total:3")),
        "{later:?}"
    );
}

#[test]
fn json_access_logs_write_one_typed_object_per_request() {
    let hcm = access_log_hcm(
        r#"              log_format:
                json_format:
                  code: "%RESPONSE_CODE%"
                  flags: "%RESPONSE_FLAGS%"
                  method: "%REQ(:METHOD)%"
                  path: "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"
                  bytes_sent: "%BYTES_SENT%"
                  cluster: "%UPSTREAM_CLUSTER%"
                  missing: "%REQ(X-NOT-THERE)%"
                  fixed: "literal"
                  nested: {proto: "%PROTOCOL%"}
                  kind: "%ACCESS_LOG_TYPE%""#,
    );
    let (_upstream, proxy) = setup("", "", &hcm);
    let addr = proxy.addr("ingress");
    assert_eq!(http_get(addr, "/logged?x=1", &[]).status, 200);
    assert_eq!(http_get(addr, "/status/503", &[]).status, 503);
    let lines = access_log_lines(&proxy.dir.join("access.log"), 2);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["code"], 200);
    assert_eq!(first["flags"], "-");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/logged?x=1");
    assert!(first["bytes_sent"].as_u64().unwrap() > 0, "{first}");
    assert_eq!(first["cluster"], "backend");
    assert_eq!(first["missing"], serde_json::Value::Null);
    assert_eq!(first["fixed"], "literal");
    assert_eq!(first["nested"]["proto"], "HTTP/1.1");
    assert_eq!(first["kind"], "DownstreamEnd");
    let second: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(second["code"], 503);
}

#[test]
fn sigusr1_reopens_the_access_log_after_it_is_renamed() {
    let hcm = access_log_hcm(
        r#"              log_format: {text_format_source: {inline_string: "%REQ(:PATH)%\n"}}"#,
    );
    let (_upstream, proxy) = setup("", "", &hcm);
    let addr = proxy.addr("ingress");
    let log = proxy.dir.join("access.log");
    let rotated = proxy.dir.join("access.log.1");
    assert_eq!(http_get(addr, "/before", &[]).status, 200);
    assert_eq!(access_log_lines(&log, 1), ["/before"]);
    std::fs::rename(&log, &rotated).unwrap();
    // Until reopened, lines go to the renamed file (Legate) or stay buffered (Envoy).
    assert_eq!(http_get(addr, "/renamed", &[]).status, 200);
    std::thread::sleep(Duration::from_millis(300));
    proxy.signal(SIGUSR1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(http_get(addr, "/after", &[]).status, 200);
    // After the reopen, new lines go to a new file at the configured path.
    let new = access_log_lines(&log, 1);
    assert!(new.contains(&"/after".to_owned()), "{new:?}");
    let old = access_log_lines(&rotated, 1);
    assert_eq!(old[0], "/before");
    assert!(!old.contains(&"/after".to_owned()), "{old:?}");
    let renamed_lines = new.iter().chain(&old).filter(|l| *l == "/renamed").count();
    assert_eq!(renamed_lines, 1, "{old:?} {new:?}");
}

// ------------------------------------------------------------------------------------------
// Admin
// ------------------------------------------------------------------------------------------

#[test]
fn admin_quitquitquit_exits() {
    let (_upstream, mut proxy) = setup("", "", "");
    let admin = proxy.admin.unwrap();
    let r = http_post(admin, "/quitquitquit");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.trim(), "OK");
    assert_eq!(
        proxy.wait(Duration::from_secs(10)),
        Some(0),
        "{}",
        proxy.output()
    );
}

#[test]
fn admin_drain_listeners_stops_new_connections() {
    let (_upstream, mut proxy) = setup("", "", "");
    let addr = proxy.addr("ingress");
    let admin = proxy.admin.unwrap();
    assert_eq!(http_get(addr, "/", &[]).status, 200);
    // A keep-alive connection open before the drain.
    let mut c = RawConn::connect(addr);
    c.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    assert_eq!(c.read_response(false).unwrap().response.status, 200);
    let r = http_post(admin, "/drain_listeners");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.trim(), "OK");
    std::thread::sleep(Duration::from_millis(500));
    // New connections are refused, or closed unanswered.
    let fresh = match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        Err(_) => None,
        Ok(mut s) => {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            Some(String::from_utf8_lossy(&out).into_owned())
        }
    };
    assert!(
        fresh.as_deref().is_none_or(|s| s.is_empty()),
        "a new connection was served after drain_listeners: {fresh:?}"
    );
    // The process keeps running, and the admin still answers: draining listeners does not
    // fail the readiness check (only /healthcheck/fail does).
    assert!(proxy.is_running());
    let ready = http_get(admin, "/ready", &[]);
    assert_eq!((ready.status, ready.body.trim()), (200, "LIVE"));
    // Without `?graceful`, connections already open go on being served.
    c.send(b"GET /existing HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let existing = c.read_response(false).map(|r| r.response.status);
    assert_eq!(existing, Some(200));
}

#[test]
fn admin_healthcheck_fail_makes_ready_say_draining() {
    let (_upstream, proxy) = setup("", "", "");
    let admin = proxy.admin.unwrap();
    let r = http_get(admin, "/ready", &[]);
    assert_eq!((r.status, r.body.trim()), (200, "LIVE"));
    assert_eq!(http_post(admin, "/healthcheck/fail").status, 200);
    let r = http_get(admin, "/ready", &[]);
    assert_eq!((r.status, r.body.trim()), (503, "DRAINING"));
    // The listeners still serve.
    assert_eq!(http_get(proxy.addr("ingress"), "/", &[]).status, 200);
    assert_eq!(http_post(admin, "/healthcheck/ok").status, 200);
    let r = http_get(admin, "/ready", &[]);
    assert_eq!((r.status, r.body.trim()), (200, "LIVE"));
}

#[test]
fn admin_reset_counters_zeroes_counters() {
    let (_upstream, proxy) = setup("", "", "");
    let admin = proxy.admin.unwrap();
    for _ in 0..3 {
        assert_eq!(http_get(proxy.addr("ingress"), "/", &[]).status, 200);
    }
    assert_eq!(proxy.stat("cluster.backend.upstream_rq_total"), Some(3));
    let r = http_post(admin, "/reset_counters");
    assert_eq!(r.status, 200);
    assert_eq!(proxy.stat("cluster.backend.upstream_rq_total"), Some(0));
    assert_eq!(http_get(proxy.addr("ingress"), "/", &[]).status, 200);
    assert_eq!(proxy.stat("cluster.backend.upstream_rq_total"), Some(1));
}

#[test]
fn admin_config_dump_lists_the_static_listener_and_cluster() {
    let (_upstream, proxy) = setup("", "", "");
    let r = http_get(proxy.admin.unwrap(), "/config_dump", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let json = r.json();
    let configs = json["configs"].as_array().expect("configs");
    let of_type = |t: &str| {
        configs
            .iter()
            .find(|c| c["@type"].as_str().is_some_and(|s| s.ends_with(t)))
            .unwrap_or_else(|| panic!("no {t} in the dump"))
    };
    let listeners = of_type("ListenersConfigDump");
    assert_eq!(
        listeners["static_listeners"][0]["listener"]["name"],
        "ingress"
    );
    let clusters = of_type("ClustersConfigDump");
    let names: Vec<&str> = clusters["static_clusters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["cluster"]["name"].as_str())
        .collect();
    assert_eq!(names, ["backend"]);
    of_type("BootstrapConfigDump");
    of_type("RoutesConfigDump");
}

#[test]
fn admin_clusters_shows_hosts_with_their_request_counts() {
    let (upstream, proxy) = setup("", "", "");
    for _ in 0..2 {
        assert_eq!(http_get(proxy.addr("ingress"), "/", &[]).status, 200);
    }
    let r = http_get(proxy.admin.unwrap(), "/clusters", &[]);
    assert_eq!(r.status, 200);
    let host = format!("backend::{}", upstream.addr);
    assert!(
        r.body.lines().any(|l| l == format!("{host}::rq_total::2")),
        "{}",
        r.body
    );
    assert!(
        r.body
            .lines()
            .any(|l| l == format!("{host}::health_flags::healthy")),
        "{}",
        r.body
    );
    let r = http_get(proxy.admin.unwrap(), "/clusters?format=json", &[]);
    let json = r.json();
    let status = &json["cluster_statuses"][0];
    assert_eq!(status["name"], "backend");
    let stats = status["host_statuses"][0]["stats"].as_array().unwrap();
    let rq_total = stats.iter().find(|s| s["name"] == "rq_total").unwrap();
    assert_eq!(rq_total["value"], "2");
}

#[test]
fn admin_prometheus_stats_carry_cluster_tags() {
    let (_upstream, proxy) = setup("", "", "");
    for _ in 0..2 {
        assert_eq!(http_get(proxy.addr("ingress"), "/", &[]).status, 200);
    }
    let r = http_get(proxy.admin.unwrap(), "/stats/prometheus", &[]);
    assert_eq!(r.status, 200);
    assert!(
        r.body
            .lines()
            .any(|l| l == "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"backend\"} 2"),
        "{}",
        r.body
    );
    assert!(
        r.body
            .lines()
            .any(|l| l == "# TYPE envoy_cluster_upstream_rq_total counter"),
        "{}",
        r.body
    );
    assert!(
        r.body.lines().any(|l| l.starts_with(
            "envoy_http_downstream_rq_xx{envoy_response_code_class=\"2\",envoy_http_conn_manager_prefix=\"ingress_http\"} "
        )),
        "{}",
        r.body
    );
}

/// A client whose request says `connection: close` is closed as soon as it has the response,
/// even if it keeps its side open (Envoy does not wait `delayed_close_timeout` for it).
#[test]
fn a_client_that_asked_to_close_is_closed_at_once() {
    let (_upstream, proxy) = setup("", "", "          delayed_close_timeout: 30s\n");
    let addr = proxy.addr("ingress");
    let mut client = TcpStream::connect(addr).unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut seen = Vec::new();
    let _ = client.read_to_end(&mut seen);
    assert!(seen.starts_with(b"HTTP/1.1 200"), "{seen:?}");
    // The client still holds its socket; the proxy's side is gone.
    let active = proxy.wait_stat(
        "http.ingress_http.downstream_cx_active",
        Duration::from_secs(2),
        |v| v == 0,
    );
    assert_eq!(active, Some(0));
    drop(client);
}

/// `delayed_close_timeout`: a connection the proxy closes after refusing a malformed request
/// waits that long for the client to close; a client that does not is closed then, counting
/// `downstream_cx_delayed_close_timeout`, as in Envoy. After a response to a request with
/// `connection: close` the connection is closed at once and nothing is counted; a client that
/// closes in time is not counted either.
#[test]
fn a_client_that_does_not_close_after_a_refusal_counts_a_delayed_close_timeout() {
    let (_upstream, proxy) = setup("", "", "          delayed_close_timeout: 0.3s\n");
    let addr = proxy.addr("ingress");
    let stat = || proxy.stat("http.ingress_http.downstream_cx_delayed_close_timeout");
    let mut clients = Vec::new();
    // The client closes as soon as it has the response: no timeout.
    let r = http_get(addr, "/", &[("connection", "close")]);
    assert_eq!(r.status, 200);
    for (i, request) in [
        &b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: nope\r\n\r\n",
    ]
    .iter()
    .enumerate()
    {
        let mut client = TcpStream::connect(addr).unwrap();
        client.write_all(request).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let mut seen = Vec::new();
        let _ = client.read_to_end(&mut seen);
        assert!(seen.starts_with(b"HTTP/1.1 "), "{i}: {seen:?}");
        // The client keeps its side open: the proxy's wait runs out.
        // Only the refusal (the second request) counts.
        let counted = proxy.wait_stat(
            "http.ingress_http.downstream_cx_delayed_close_timeout",
            Duration::from_secs(2),
            |v| v == i as u64,
        );
        assert_eq!(counted, Some(i as u64), "{i}");
        clients.push(client);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(stat(), Some(1));
}
