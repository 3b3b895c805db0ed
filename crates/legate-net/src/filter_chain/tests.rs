use super::*;
use legate_api::pb::google::protobuf::UInt32Value;

fn cidr(s: &str) -> CidrRange {
    let (a, l) = s.split_once('/').unwrap();
    CidrRange {
        address_prefix: a.into(),
        prefix_len: Some(UInt32Value {
            value: l.parse().unwrap(),
        }),
    }
}

/// A connection: local `dst`, remote `src` (direct peer the same unless `direct` is set).
struct Conn {
    dst: &'static str,
    src: &'static str,
    direct: Option<&'static str>,
    sni: &'static str,
    transport: &'static str,
    alpn: Vec<String>,
}

fn conn(dst: &'static str, src: &'static str) -> Conn {
    Conn {
        dst,
        src,
        direct: None,
        sni: "",
        transport: "raw_buffer",
        alpn: Vec::new(),
    }
}

impl Conn {
    fn sni(mut self, s: &'static str) -> Self {
        self.sni = s;
        self.transport = "tls";
        self
    }
    fn alpn(mut self, a: &[&str]) -> Self {
        self.alpn = a.iter().map(|s| s.to_string()).collect();
        self
    }
    fn direct(mut self, d: &'static str) -> Self {
        self.direct = Some(d);
        self
    }
    fn find(&self, index: &FilterChainIndex) -> Option<usize> {
        index.find(&ConnectionFacts {
            local: Some(self.dst.parse().unwrap()),
            remote: Some(self.src.parse().unwrap()),
            direct_remote: Some(self.direct.unwrap_or(self.src).parse().unwrap()),
            server_name: self.sni,
            transport_protocol: self.transport,
            application_protocols: &self.alpn,
        })
    }
}

fn build(matches: &[FilterChainMatch]) -> Result<FilterChainIndex, IndexError> {
    let names: Vec<String> = (0..matches.len()).map(|i| format!("c{i}")).collect();
    FilterChainIndex::build(
        names
            .iter()
            .zip(matches)
            .map(|(n, m)| (n.as_str(), Some(m))),
    )
}

fn m() -> FilterChainMatch {
    FilterChainMatch::default()
}

#[test]
fn empty_match_takes_everything() {
    let index = build(&[m()]).unwrap();
    assert_eq!(conn("127.0.0.1:80", "10.0.0.1:5000").find(&index), Some(0));
    assert_eq!(
        conn("[::1]:80", "[::2]:5000").sni("x.com").find(&index),
        Some(0)
    );
}

#[test]
fn server_names_most_specific_first() {
    let names = |n: &[&str]| FilterChainMatch {
        server_names: n.iter().map(|s| s.to_string()).collect(),
        ..m()
    };
    let index = build(&[
        names(&["www.example.com"]),
        names(&["*.example.com"]),
        names(&["*.com"]),
        m(),
        names(&["Upper.Example.ORG"]),
    ])
    .unwrap();
    let c = |sni| {
        conn("127.0.0.1:443", "127.0.0.1:5000")
            .sni(sni)
            .find(&index)
    };
    assert_eq!(c("www.example.com"), Some(0));
    assert_eq!(c("api.example.com"), Some(1));
    assert_eq!(c("a.b.example.com"), Some(1));
    assert_eq!(c("example.com"), Some(2));
    assert_eq!(c("foo.com"), Some(2));
    assert_eq!(c("example.org"), Some(3));
    assert_eq!(c("com"), Some(3));
    assert_eq!(c(""), Some(3));
    assert_eq!(c("upper.example.org"), Some(4));
    // A wildcard never matches the bare suffix, nor a name ending with a dot.
    assert_eq!(c(".com"), Some(3));
    assert_eq!(c("www."), Some(3));
}

#[test]
fn narrowing_does_not_backtrack() {
    // The port-443 chain is the most specific for port 443; its SNI criterion then fails, and
    // Envoy does not fall back to the catch-all chain: no match.
    let index = build(&[
        FilterChainMatch {
            destination_port: Some(UInt32Value { value: 443 }),
            server_names: vec!["a.com".into()],
            ..m()
        },
        m(),
    ])
    .unwrap();
    assert_eq!(
        conn("127.0.0.1:443", "1.2.3.4:1").sni("a.com").find(&index),
        Some(0)
    );
    assert_eq!(
        conn("127.0.0.1:443", "1.2.3.4:1").sni("b.com").find(&index),
        None
    );
    assert_eq!(
        conn("127.0.0.1:80", "1.2.3.4:1").sni("b.com").find(&index),
        Some(1)
    );
}

#[test]
fn destination_ip_longest_prefix_wins() {
    let dst = |r: &[&str]| FilterChainMatch {
        prefix_ranges: r.iter().map(|s| cidr(s)).collect(),
        ..m()
    };
    let index = build(&[
        dst(&["10.0.0.0/8"]),
        dst(&["10.1.0.0/16", "192.168.0.0/16"]),
        dst(&["10.1.2.3/32"]),
        dst(&["::/0"]),
    ])
    .unwrap();
    let c = |d| conn(d, "1.1.1.1:1").find(&index);
    assert_eq!(c("10.9.9.9:1"), Some(0));
    assert_eq!(c("10.1.9.9:1"), Some(1));
    assert_eq!(c("192.168.1.1:1"), Some(1));
    assert_eq!(c("10.1.2.3:1"), Some(2));
    assert_eq!(c("11.0.0.1:1"), None);
    assert_eq!(c("[2001:db8::1]:1"), Some(3));
}

#[test]
fn transport_and_alpn() {
    let index = build(&[
        FilterChainMatch {
            transport_protocol: "tls".into(),
            application_protocols: vec!["h2".into()],
            ..m()
        },
        FilterChainMatch {
            transport_protocol: "tls".into(),
            ..m()
        },
        FilterChainMatch {
            application_protocols: vec!["http/1.1".into(), "h2c".into()],
            ..m()
        },
        FilterChainMatch {
            transport_protocol: "raw_buffer".into(),
            ..m()
        },
    ])
    .unwrap();
    let base = || conn("127.0.0.1:1", "127.0.0.1:2");
    assert_eq!(
        base().sni("x").alpn(&["h2", "http/1.1"]).find(&index),
        Some(0)
    );
    // The client's order decides: the first offered protocol that some chain names wins.
    assert_eq!(
        base().sni("x").alpn(&["http/1.1", "h2"]).find(&index),
        Some(0)
    );
    assert_eq!(base().sni("x").alpn(&["http/1.1"]).find(&index), Some(1));
    assert_eq!(base().sni("x").find(&index), Some(1));
    // raw_buffer: the exact transport beats the chains without one, so ALPN-only chain 2 is
    // never reached for raw_buffer connections.
    assert_eq!(base().alpn(&["h2c"]).find(&index), Some(3));
    assert_eq!(base().find(&index), Some(3));
}

#[test]
fn alpn_chain_reached_without_transport_chain() {
    let index = build(&[
        FilterChainMatch {
            application_protocols: vec!["http/1.1".into(), "h2c".into()],
            ..m()
        },
        m(),
    ])
    .unwrap();
    let base = || conn("127.0.0.1:1", "127.0.0.1:2");
    assert_eq!(base().alpn(&["h2c"]).find(&index), Some(0));
    assert_eq!(base().alpn(&["http/1.0"]).find(&index), Some(1));
    assert_eq!(base().find(&index), Some(1));
}

#[test]
fn sources_direct_type_ip_port() {
    let index = build(&[
        FilterChainMatch {
            direct_source_prefix_ranges: vec![cidr("10.0.0.0/8")],
            ..m()
        },
        FilterChainMatch {
            source_type: ConnectionSourceType::SameIpOrLoopback as i32,
            ..m()
        },
        FilterChainMatch {
            source_type: ConnectionSourceType::External as i32,
            source_prefix_ranges: vec![cidr("192.168.0.0/16")],
            ..m()
        },
        FilterChainMatch {
            source_type: ConnectionSourceType::External as i32,
            source_prefix_ranges: vec![cidr("192.168.1.0/24")],
            source_ports: vec![7, 8],
            ..m()
        },
        FilterChainMatch {
            source_type: ConnectionSourceType::External as i32,
            source_prefix_ranges: vec![cidr("192.168.1.0/24")],
            ..m()
        },
        FilterChainMatch {
            source_ports: vec![9],
            ..m()
        },
    ])
    .unwrap();
    let c = |dst, src| conn(dst, src).find(&index);
    assert_eq!(
        conn("1.1.1.1:1", "192.168.9.9:7")
            .direct("10.1.1.1:3")
            .find(&index),
        Some(0)
    );
    assert_eq!(c("1.1.1.1:1", "127.0.0.1:7"), Some(1));
    // Same IP as the destination: local.
    assert_eq!(c("172.16.0.1:1", "172.16.0.1:7"), Some(1));
    // Only the canonical loopback address is loopback: 127.0.0.2 is external.
    assert_eq!(c("1.1.1.1:1", "127.0.0.2:7"), None);
    assert_eq!(c("1.1.1.1:1", "192.168.9.9:7"), Some(2));
    assert_eq!(c("1.1.1.1:1", "192.168.1.9:7"), Some(3));
    assert_eq!(c("1.1.1.1:1", "192.168.1.9:6"), Some(4));
    // EXTERNAL chains exist, so ANY (chain 5) is not considered for an external source, and
    // 8.8.8.8 is in none of their ranges.
    assert_eq!(c("1.1.1.1:1", "8.8.8.8:9"), None);
}

#[test]
fn source_type_falls_back_to_any_when_no_specific_chain() {
    let index = build(&[
        FilterChainMatch {
            source_type: ConnectionSourceType::SameIpOrLoopback as i32,
            ..m()
        },
        FilterChainMatch {
            source_ports: vec![9],
            ..m()
        },
    ])
    .unwrap();
    assert_eq!(conn("1.1.1.1:1", "8.8.8.8:9").find(&index), Some(1));
    assert_eq!(conn("1.1.1.1:1", "8.8.8.8:10").find(&index), None);
    assert_eq!(conn("1.1.1.1:1", "127.0.0.1:10").find(&index), Some(0));
}

#[test]
fn rejects_like_envoy() {
    let dup = build(&[
        FilterChainMatch {
            server_names: vec!["a.com".into()],
            destination_port: Some(UInt32Value { value: 80 }),
            source_ports: vec![1, 2],
            ..m()
        },
        FilterChainMatch {
            server_names: vec!["a.com".into()],
            destination_port: Some(UInt32Value { value: 80 }),
            source_ports: vec![1, 2],
            ..m()
        },
    ])
    .unwrap_err();
    assert_eq!(
        dup.0,
        r#"filter chain 'c1' has the same matching rules defined as 'c0'. duplicate matcher is: {"source_ports":[1,2],"destination_port":80,"server_names":["a.com"]}"#
    );
    // `source_type: ANY` and `transport_protocol: ''` are the defaults: equal matches.
    let dup = build(&[
        FilterChainMatch {
            source_type: 0,
            ..m()
        },
        m(),
    ])
    .unwrap_err();
    assert!(dup.0.ends_with("duplicate matcher is: {}"), "{}", dup.0);
    let overlap = "multiple filter chains with overlapping matching rules are defined";
    let names = |n: &[&str]| FilterChainMatch {
        server_names: n.iter().map(|s| s.to_string()).collect(),
        ..m()
    };
    assert_eq!(
        build(&[names(&["a.com", "b.com"]), names(&["B.com"])])
            .unwrap_err()
            .0,
        overlap
    );
    assert_eq!(
        build(&[
            FilterChainMatch {
                prefix_ranges: vec![cidr("10.0.0.1/8")],
                ..m()
            },
            FilterChainMatch {
                prefix_ranges: vec![cidr("10.0.0.0/8")],
                ..m()
            },
        ])
        .unwrap_err()
        .0,
        overlap
    );
    assert_eq!(
        build(&[FilterChainMatch {
            source_ports: vec![1, 1],
            ..m()
        }])
        .unwrap_err()
        .0,
        overlap
    );
    for bad in ["*w.example.com", "*", "www.*.com"] {
        assert_eq!(
            build(&[names(&[bad])]).unwrap_err().0,
            "partial wildcards are not supported in \"server_names\""
        );
    }
    assert!(
        build(&[FilterChainMatch {
            address_suffix: "x".into(),
            ..m()
        }])
        .unwrap_err()
        .0
        .contains("contains unimplemented fields")
    );
    // Different criteria do not overlap; a prefix length past the width is clamped.
    build(&[
        names(&["*.a.com"]),
        names(&["x.a.com"]),
        FilterChainMatch {
            prefix_ranges: vec![cidr("::/0"), cidr("1.2.3.4/40")],
            ..m()
        },
    ])
    .unwrap();
    assert!(
        build(&[FilterChainMatch {
            prefix_ranges: vec![CidrRange {
                address_prefix: "foo".into(),
                prefix_len: None
            }],
            ..m()
        }])
        .unwrap_err()
        .0
        .contains("malformed IP address: foo")
    );
}

#[test]
fn cidr_contains() {
    let c = Cidr::new("10.1.2.3".parse().unwrap(), 8);
    assert_eq!(c.to_string(), "10.0.0.0/8");
    assert!(c.contains("10.255.0.1".parse().unwrap()));
    assert!(!c.contains("11.0.0.1".parse().unwrap()));
    assert!(!c.contains("::a01:203".parse().unwrap()));
    assert!(Cidr::ANY_V4.contains("1.2.3.4".parse().unwrap()));
    assert!(Cidr::ANY_V6.contains("::1".parse().unwrap()));
    let v6 = Cidr::new("2001:db8::".parse().unwrap(), 32);
    assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
    assert!(!v6.contains("2001:db9::1".parse().unwrap()));
    assert!(Cidr::new("1.2.3.4".parse().unwrap(), 32).contains("1.2.3.4".parse().unwrap()));
}
