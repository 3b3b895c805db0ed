//! Hash-based load balancing end to end: RING_HASH and MAGLEV clusters, route `hash_policy`
//! (header, cookie, query parameter, source IP, `terminal`, several policies combined) and the
//! tcp_proxy's `hash_policy: source_ip`.
//!
//! The point of these tests is that a hash key reaches the same host as in Envoy 1.40: the
//! differential tests run Legate and Envoy on the same configuration and compare the key ->
//! upstream mappings entry by entry. They need Envoy (`LEGATE_E2E_ENVOY`, or the one in the
//! workspace's `.venv`); without it the comparison is skipped with a note, unless
//! `LEGATE_REQUIRE_ENVOY=1`, which makes a missing Envoy a failure. The other tests run against
//! the proxy under test (Legate, or Envoy with `LEGATE_E2E_PROXY=envoy`).

mod e2e;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use e2e::{
    Legate, cluster_hosts, envoy_available, front_proxy, http_get, parse_response, start_proxy,
};
use legate_upstream::hashing::{hex64, xxhash64};

/// An HTTP/1.1 upstream that answers every request with its own name as the body.
struct Tagged {
    addr: SocketAddr,
}

impl Tagged {
    fn start(name: &str) -> Tagged {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let name = name.to_owned();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let name = name.clone();
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // Requests here are GETs without a body: a head ends each one.
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let reply = format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{name}",
                                name.len()
                            );
                            if conn.write_all(reply.as_bytes()).is_err() {
                                return;
                            }
                        }
                        match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        Tagged { addr }
    }
}

/// A TCP upstream that writes its name and closes.
fn tagged_tcp(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(name.as_bytes());
        }
    });
    addr
}

/// The upstream that answered a GET of `path` with `headers`.
fn answered(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> String {
    let r = http_get(addr, path, headers);
    assert_eq!(r.status, 200, "{path} {headers:?}: {r:?}");
    r.body
}

/// The five upstreams of the differential test, with unequal weights, and a priority-1 host
/// that must never answer while priority 0 is healthy.
const WEIGHTS: [u32; 5] = [1, 2, 3, 1, 5];

struct Hosts {
    _upstreams: Vec<Tagged>,
    /// (address, weight, priority)
    endpoints: Vec<(SocketAddr, u32, u32)>,
}

fn hosts() -> Hosts {
    let mut upstreams = Vec::new();
    let mut endpoints = Vec::new();
    for (i, w) in WEIGHTS.iter().enumerate() {
        let u = Tagged::start(&format!("u{i}"));
        endpoints.push((u.addr, *w, 0));
        upstreams.push(u);
    }
    let backup = Tagged::start("backup");
    endpoints.push((backup.addr, 1, 1));
    upstreams.push(backup);
    Hosts {
        _upstreams: upstreams,
        endpoints,
    }
}

const ROUTES: &str = r#"              - match: {prefix: "/ring"}
                route: {cluster: ring, hash_policy: [{header: {header_name: x-key}}]}
              - match: {prefix: "/murmur"}
                route: {cluster: murmur, hash_policy: [{header: {header_name: x-key}}]}
              - match: {prefix: "/maglev-small"}
                route: {cluster: maglev_small, hash_policy: [{header: {header_name: x-key}}]}
              - match: {prefix: "/maglev"}
                route: {cluster: maglev, hash_policy: [{header: {header_name: x-key}}]}
              - match: {prefix: "/combo"}
                route:
                  cluster: ring
                  hash_policy:
                  - header: {header_name: x-key}
                  - query_parameter: {name: q}
                  - cookie: {name: c}
                  - header: {header_name: x-key}
                  - connection_properties: {source_ip: true}
              - match: {prefix: "/terminal"}
                route:
                  cluster: maglev
                  hash_policy:
                  - {header: {header_name: x-absent}, terminal: true}
                  - {header: {header_name: x-key}, terminal: true}
                  - header: {header_name: x-ignored}
              - match: {prefix: "/authority"}
                route: {cluster: ring, hash_policy: [{header: {header_name: ":authority"}}]}
              - match: {prefix: "/rewrite"}
                route:
                  cluster: maglev
                  hash_policy:
                  - header:
                      header_name: x-key
                      regex_rewrite: {pattern: {regex: "^key-([0-9]+)-.*$"}, substitution: "\\1"}
"#;

fn clusters(endpoints: &[(SocketAddr, u32, u32)]) -> String {
    [
        cluster_hosts("ring", endpoints, "    lb_policy: RING_HASH"),
        cluster_hosts(
            "murmur",
            endpoints,
            "    lb_policy: RING_HASH\n    ring_hash_lb_config: {minimum_ring_size: 64, maximum_ring_size: 4096, hash_function: MURMUR_HASH_2}",
        ),
        cluster_hosts("maglev", endpoints, "    lb_policy: MAGLEV"),
        cluster_hosts(
            "maglev_small",
            endpoints,
            "    lb_policy: MAGLEV\n    maglev_lb_config: {table_size: 251}",
        ),
    ]
    .concat()
}

type Mapping = BTreeMap<String, String>;

/// Every route's key -> upstream mapping through the proxy at `addr`; each key is asked
/// twice and must reach the same upstream both times.
fn mappings(addr: SocketAddr) -> Vec<(&'static str, Mapping)> {
    let mut out = Vec::new();
    for route in ["/ring", "/murmur", "/maglev", "/maglev-small"] {
        let mut m = Mapping::new();
        for i in 0..200 {
            let key = format!("key-{i}");
            let first = answered(addr, route, &[("x-key", &key)]);
            let again = answered(addr, route, &[("x-key", &key)]);
            assert_eq!(first, again, "{route}: key {key} moved");
            assert_ne!(first, "backup", "{route}: the priority-1 host answered");
            m.insert(key, first);
        }
        out.push((route, m));
    }
    let mut combo = Mapping::new();
    let mut terminal = Mapping::new();
    let mut authority = Mapping::new();
    let mut rewrite = Mapping::new();
    let mut multi = Mapping::new();
    for i in 0..40 {
        let key = format!("key-{i}");
        let path = format!("/combo?a=1&q=v{}&q=other", i % 7);
        let cookie = format!("x=1; c=\"cv{}\"", i % 5);
        combo.insert(
            key.clone(),
            answered(addr, &path, &[("x-key", &key), ("cookie", &cookie)]),
        );
        terminal.insert(
            key.clone(),
            answered(addr, "/terminal", &[("x-key", &key), ("x-ignored", "zzz")]),
        );
        let host = format!("host-{i}.example.com");
        authority.insert(
            key.clone(),
            answered(addr, "/authority", &[("host", &host)]),
        );
        let suffixed = format!("key-{}-{}", i % 10, i);
        rewrite.insert(
            key.clone(),
            answered(addr, "/rewrite", &[("x-key", &suffixed)]),
        );
        // Two values of the hashed header: Envoy sorts them before hashing them together.
        multi.insert(
            key.clone(),
            answered(
                addr,
                "/ring",
                &[("x-key", &format!("b{i}")), ("x-key", "a")],
            ),
        );
    }
    // The rewrite keeps only the digit: keys with the same digit share an upstream.
    for i in 10..40 {
        assert_eq!(
            rewrite[&format!("key-{i}")],
            rewrite[&format!("key-{}", i % 10)]
        );
    }
    out.push(("/combo", combo));
    out.push(("/terminal", terminal));
    out.push(("/authority", authority));
    out.push(("/rewrite", rewrite));
    out.push(("multi-valued header", multi));
    out
}

/// RING_HASH (xxHash and MurmurHash2, default and small rings) and MAGLEV (default and small
/// tables) over hosts of unequal weights: a key always reaches the same host, the priority-1
/// host never, heavier hosts take more keys, and, the point of it all, every key reaches the
/// same upstream as through Envoy 1.40 with the same configuration (including the terminal,
/// multi-policy, cookie, query-parameter, authority, regex-rewrite and multi-value cases).
#[test]
fn ring_hash_and_maglev_pick_the_same_hosts_as_envoy() {
    let hosts = hosts();
    let yaml = front_proxy(ROUTES, &clusters(&hosts.endpoints), "");
    let legate = Legate::start(&yaml);
    let ours = mappings(legate.addr("ingress"));
    for (route, m) in &ours[..4] {
        let count = |u: &str| m.values().filter(|v| *v == u).count();
        // u4 (weight 5) against u0 and u3 (weight 1): 83 expected keys against 17.
        assert!(
            count("u4") > count("u0") && count("u4") > count("u3"),
            "{route}: weights not followed: {m:?}"
        );
    }
    if !envoy_available() {
        return;
    }
    let envoy = Legate::start_envoy(&yaml);
    // The sizes of the rings and tables, as Envoy reports them.
    for stat in [
        "cluster.ring.ring_hash_lb.size",
        "cluster.ring.ring_hash_lb.min_hashes_per_host",
        "cluster.ring.ring_hash_lb.max_hashes_per_host",
        "cluster.murmur.ring_hash_lb.size",
        "cluster.murmur.ring_hash_lb.min_hashes_per_host",
        "cluster.murmur.ring_hash_lb.max_hashes_per_host",
        "cluster.maglev.maglev_lb.min_entries_per_host",
        "cluster.maglev.maglev_lb.max_entries_per_host",
        "cluster.maglev_small.maglev_lb.min_entries_per_host",
        "cluster.maglev_small.maglev_lb.max_entries_per_host",
    ] {
        assert_eq!(legate.stat(stat), envoy.stat(stat), "{stat}");
        assert!(legate.stat(stat).is_some(), "{stat}");
    }
    let theirs = mappings(envoy.addr("ingress"));
    for ((route, a), (_, b)) in ours.iter().zip(&theirs) {
        let differ: Vec<_> = a
            .iter()
            .filter(|(k, v)| b.get(*k) != Some(v))
            .map(|(k, v)| format!("{k}: legate {v}, envoy {:?}", b.get(k)))
            .collect();
        assert!(
            differ.is_empty(),
            "{route}: {} of {} keys differ from Envoy: {differ:?}",
            differ.len(),
            a.len()
        );
    }
}

/// One request on a connection whose addresses we know: (client address, response).
fn request_from_known_port(
    addr: SocketAddr,
    path: &str,
    cookie: Option<&str>,
) -> (SocketAddr, e2e::RawResponse) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let local = s.local_addr().unwrap();
    let cookie = cookie.map_or(String::new(), |c| format!("cookie: {c}\r\n"));
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{cookie}\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    (local, parse_response(&raw).expect("a response"))
}

/// A cookie policy with a `ttl`: a request without the cookie gets `Set-Cookie` with Envoy's
/// value (the hex xxHash64 of the connection's remote and local addresses), `Max-Age`, `Path`,
/// the attributes and `HttpOnly`, and is balanced on that value, so that sending the cookie
/// back reaches the same host; a zero `ttl` makes a session cookie; a round-robin cluster
/// never evaluates the policy (no cookie), as in Envoy.
#[test]
fn cookie_policy_generates_the_cookie_envoy_does() {
    let hosts = hosts();
    let routes = r#"              - match: {prefix: "/sticky-rr"}
                route:
                  cluster: rr
                  hash_policy: [{cookie: {name: sticky, ttl: 60s, path: /}}]
              - match: {prefix: "/sticky"}
                route:
                  cluster: ring
                  hash_policy:
                  - cookie:
                      name: sticky
                      ttl: 60s
                      path: /
                      attributes: [{name: SameSite, value: Lax}, {name: Secure}]
              - match: {prefix: "/session"}
                route:
                  cluster: maglev
                  hash_policy: [{cookie: {name: s, ttl: 0s}}]
"#;
    let clusters = [
        cluster_hosts("ring", &hosts.endpoints, "    lb_policy: RING_HASH"),
        cluster_hosts("maglev", &hosts.endpoints, "    lb_policy: MAGLEV"),
        cluster_hosts("rr", &hosts.endpoints, ""),
    ]
    .concat();
    let proxy = start_proxy(&front_proxy(routes, &clusters, ""));
    let addr = proxy.addr("ingress");
    for _ in 0..5 {
        let (client, r) = request_from_known_port(addr, "/sticky", None);
        assert_eq!(r.status, 200);
        let value = hex64(xxhash64(format!("{client}{addr}").as_bytes()));
        assert_eq!(
            r.header("set-cookie"),
            Some(
                format!("sticky=\"{value}\"; Max-Age=60; Path=/; SameSite=Lax; Secure; HttpOnly")
                    .as_str()
            )
        );
        let cookie = format!("sticky={value}");
        let (_, again) = request_from_known_port(addr, "/sticky", Some(&cookie));
        assert_eq!(again.body, r.body, "the cookie leads back to its host");
        assert_eq!(again.header("set-cookie"), None);
    }
    let (client, r) = request_from_known_port(addr, "/session", None);
    let value = hex64(xxhash64(format!("{client}{addr}").as_bytes()));
    assert_eq!(
        r.header("set-cookie"),
        Some(format!("s=\"{value}\"; HttpOnly").as_str())
    );
    let (_, r) = request_from_known_port(addr, "/sticky-rr", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("set-cookie"), None);
}

/// The tcp_proxy's upstream for a connection from `source` (a loopback address).
fn tcp_upstream_from(addr: SocketAddr, source: &str) -> String {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let bind: SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&bind.into()).unwrap();
    socket
        .connect_timeout(&addr.into(), Duration::from_secs(5))
        .unwrap();
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn tcp_hash_config(endpoints: &[(SocketAddr, u32, u32)], policy: &str) -> String {
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
  - name: tcp
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: hashed
          hash_policy: [{{source_ip: {{}}}}]
  clusters:
{}"#,
        cluster_hosts("hashed", endpoints, &format!("    lb_policy: {policy}"))
    )
}

fn tcp_mapping(addr: SocketAddr) -> Mapping {
    let mut m = Mapping::new();
    for i in 2..42 {
        let source = format!("127.0.0.{i}");
        let first = tcp_upstream_from(addr, &source);
        let again = tcp_upstream_from(addr, &source);
        assert_eq!(first, again, "{source} moved");
        assert!(
            first.starts_with('t'),
            "{source}: no upstream answered ({first:?})"
        );
        m.insert(source, first);
    }
    m
}

/// tcp_proxy `hash_policy: source_ip`: each downstream IP always reaches the same host of a
/// RING_HASH or MAGLEV cluster, the same one as through Envoy.
#[test]
fn tcp_proxy_source_ip_hash_matches_envoy() {
    let names = ["t0", "t1", "t2", "t3"];
    let endpoints: Vec<(SocketAddr, u32, u32)> = names
        .iter()
        .zip([1, 2, 3, 4])
        .map(|(n, w)| (tagged_tcp(n), w, 0))
        .collect();
    for policy in ["RING_HASH", "MAGLEV"] {
        let yaml = tcp_hash_config(&endpoints, policy);
        let legate = Legate::start(&yaml);
        let ours = tcp_mapping(legate.addr("tcp"));
        let distinct: std::collections::BTreeSet<_> = ours.values().collect();
        assert!(distinct.len() >= 3, "{policy}: {ours:?}");
        if !envoy_available() {
            continue;
        }
        let envoy = Legate::start_envoy(&yaml);
        let theirs = tcp_mapping(envoy.addr("tcp"));
        assert_eq!(ours, theirs, "{policy}: Legate left, Envoy right");
    }
}

/// Consistent hashing across a live membership change: an EDS update removes one host, the
/// ring or table is rebuilt, and that host's keys (all of them) move to the others while most
/// other keys stay where they were (with Maglev all of them in practice; with a ring about 88%:
/// the remaining hosts gain entries, which takes some keys from their neighbours, as in Envoy,
/// whose exact mapping the differential test above checks).
#[test]
fn removing_a_host_by_eds_moves_mostly_its_own_keys() {
    use e2e::dynamic::{
        CLUSTER_LOAD_ASSIGNMENT, DynProxy, Routes, assignment, discovery, eds_cluster, free_port,
        http_listener, local, static_bootstrap,
    };
    use serde_json::json;
    let hosts = hosts();
    let all: Vec<SocketAddr> = hosts.endpoints[..5].iter().map(|e| e.0).collect();
    let without: Vec<SocketAddr> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, a)| *a)
        .collect();
    for (policy, keep_percent) in [("RING_HASH", 75), ("MAGLEV", 95)] {
        let port = free_port();
        let route = json!({"match": {"prefix": "/"}, "route": {
            "cluster": "c", "hash_policy": [{"header": {"header_name": "x-key"}}]}});
        let listener = http_listener(
            "ingress",
            port,
            "ingress_http",
            Routes::Inline(e2e::dynamic::route_config("r", vec![route])),
            json!(null),
            json!(null),
        );
        let mut cluster = eds_cluster("c", "eds.yaml");
        cluster["lb_policy"] = json!(policy);
        let eds = |addrs: &[SocketAddr], version: &str| {
            discovery(version, CLUSTER_LOAD_ASSIGNMENT, &[assignment("c", addrs)])
        };
        let proxy = DynProxy::start(
            &static_bootstrap(&[listener], &[cluster]),
            &[("eds.yaml", eds(&all, "1"))],
            0,
        );
        proxy.wait_listening(port);
        let total = "cluster.c.membership_total";
        proxy.wait_stat(total, Duration::from_secs(10), |n| n == 5);
        let mapping = || {
            (0..300)
                .map(|i| {
                    let key = format!("k{i}");
                    (key.clone(), answered(local(port), "/", &[("x-key", &key)]))
                })
                .collect::<Mapping>()
        };
        let before = mapping();
        proxy.write("eds.yaml", &eds(&without, "2"));
        assert_eq!(
            proxy.wait_stat(total, Duration::from_secs(10), |n| n == 4),
            4
        );
        let after = mapping();
        let mut kept = 0;
        let mut others = 0;
        for (key, up) in &before {
            if up == "u2" {
                assert_ne!(after[key], "u2");
            } else {
                others += 1;
                kept += usize::from(&after[key] == up);
            }
        }
        assert!(
            kept * 100 >= others * keep_percent,
            "{policy}: only {kept} of {others} keys stayed"
        );
    }
}

/// Configurations Envoy refuses are refused, and the parts Legate does not implement are
/// named by their path.
#[test]
fn hashing_config_errors_name_the_field() {
    let hosts = hosts();
    let cases = [
        (
            "    lb_policy: MAGLEV\n    maglev_lb_config: {table_size: 65536}",
            "The table size of maglev must be prime number",
        ),
        (
            "    lb_policy: RING_HASH\n    ring_hash_lb_config: {minimum_ring_size: 2048, maximum_ring_size: 1024}",
            "minimum_ring_size (2048) > maximum_ring_size (1024)",
        ),
        (
            "    lb_policy: RING_HASH\n    common_lb_config: {consistent_hashing_lb_config: {hash_balance_factor: 150}}",
            "common_lb_config.consistent_hashing_lb_config.hash_balance_factor",
        ),
        (
            "    lb_policy: RING_HASH\n    common_lb_config: {consistent_hashing_lb_config: {use_hostname_for_hashing: true}}",
            "common_lb_config.consistent_hashing_lb_config.use_hostname_for_hashing",
        ),
    ];
    let route = r#"              - match: {prefix: "/"}
                route: {cluster: c}
"#;
    for (extra, message) in cases {
        let yaml = front_proxy(route, &cluster_hosts("c", &hosts.endpoints, extra), "");
        let err = match Legate::try_start_args(&yaml, &["-l", "info"]) {
            Ok(_) => panic!("accepted: {extra}"),
            Err(e) => e,
        };
        assert!(err.contains(message), "{extra}: {err}");
    }
    let route = r#"              - match: {prefix: "/"}
                route: {cluster: c, hash_policy: [{filter_state: {key: k}}]}
"#;
    let yaml = front_proxy(route, &cluster_hosts("c", &hosts.endpoints, ""), "");
    let err = Legate::try_start_args(&yaml, &["-l", "info"])
        .err()
        .expect("refused");
    assert!(err.contains("hash_policy[0].filter_state"), "{err}");
}
