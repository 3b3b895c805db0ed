//! The PROXY protocol (HAProxy's, versions 1 and 2): the header a load balancer in front of
//! Legate puts before a connection's bytes to say whom the connection really comes from. The
//! `envoy.filters.listener.proxy_protocol` listener filter reads it, removes it from the stream
//! and restores the addresses it carries; `proxy_proto.[<stat_prefix>.]*` counts what it saw.
//!
//! A version 2 header may carry TLVs (type-length-value extensions: the client's ALPN or SNI, a
//! cloud load balancer's endpoint id). They are checked as Envoy checks them (one that runs
//! past the header is an error), and those a `rules` entry names become the connection's
//! dynamic metadata (`%DYNAMIC_METADATA(envoy.filters.listener.proxy_protocol:KEY)%`).
//!
//! Parsing is by hand (a few dozen bytes of fixed layout). The filter peeks no more than the
//! [`PEEK_LIMIT`] bytes that hold either version's addresses, learns a version 2 header's whole
//! length from its fixed part, and reads the TLVs when it removes the header.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use legate_core::metadata::{DynamicMetadata, sanitize_utf8};
use legate_core::proxy_protocol::{PassThrough, Tlv};
use legate_core::stats::{Counter, Scope};

/// Version 2's signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Version 1's longest line, `\r\n` included (the specification's bound).
const V1_MAX: usize = 107;
/// Enough for a version 1 line, and for a version 2 header's fixed part and IPv6 addresses.
pub const PEEK_LIMIT: usize = V1_MAX;

/// What the first bytes of a connection say.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// Too few bytes to tell.
    NeedMore,
    /// No PROXY header.
    NotProxy,
    /// A header that breaks the protocol, of this version.
    Malformed(u8),
    Header(Header),
}

/// A PROXY header.
#[derive(Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    /// Its length in the stream, to remove.
    pub length: usize,
    /// The original source and destination; `None` for `UNKNOWN` (v1) and `LOCAL` (v2): the
    /// connection's own addresses stay.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
    /// Where the TLVs start in the header (they run to `length`); `length` when it has none to
    /// read (version 1, and `LOCAL`, whose TLVs Envoy ignores).
    pub tlv_start: usize,
}

/// Reads a PROXY header from the start of `data`.
pub fn parse(data: &[u8]) -> Parse {
    if data.starts_with(b"PROXY ") || (data.len() < 6 && b"PROXY ".starts_with(data)) {
        return parse_v1(data);
    }
    let n = data.len().min(V2_SIGNATURE.len());
    if data[..n] == V2_SIGNATURE[..n] {
        return parse_v2(data);
    }
    Parse::NotProxy
}

fn parse_v1(data: &[u8]) -> Parse {
    let Some(end) = data.windows(2).position(|w| w == b"\r\n") else {
        return if data.len() >= V1_MAX {
            Parse::Malformed(1)
        } else {
            Parse::NeedMore
        };
    };
    if end + 2 > V1_MAX {
        return Parse::Malformed(1);
    }
    let Ok(line) = std::str::from_utf8(&data[..end]) else {
        return Parse::Malformed(1);
    };
    let fields: Vec<&str> = line.split(' ').collect();
    let length = end + 2;
    let addresses = match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => None,
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let v4 = *family == "TCP4";
            let ip = |s: &str| -> Option<IpAddr> {
                match v4 {
                    true => s.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
                    false => s.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
                }
            };
            let port = |s: &str| -> Option<u16> {
                // Decimal without leading zeros, as the specification writes ports.
                (!s.is_empty() && (s == "0" || !s.starts_with('0')) && s.len() <= 5)
                    .then(|| s.parse().ok())
                    .flatten()
            };
            match (ip(src), ip(dst), port(sport), port(dport)) {
                (Some(s), Some(d), Some(sp), Some(dp)) => {
                    Some((SocketAddr::new(s, sp), SocketAddr::new(d, dp)))
                }
                _ => return Parse::Malformed(1),
            }
        }
        _ => return Parse::Malformed(1),
    };
    if addresses.is_some_and(|(source, destination)| !unicast(source) || !unicast(destination)) {
        return Parse::Malformed(1);
    }
    Parse::Header(Header {
        version: 1,
        length,
        addresses,
        tlv_start: length,
    })
}

/// Envoy refuses a header whose addresses are not unicast ones (any, multicast, broadcast).
fn unicast(addr: SocketAddr) -> bool {
    match addr.ip() {
        IpAddr::V4(ip) => !ip.is_unspecified() && !ip.is_multicast() && !ip.is_broadcast(),
        IpAddr::V6(ip) => !ip.is_unspecified() && !ip.is_multicast(),
    }
}

fn parse_v2(data: &[u8]) -> Parse {
    if data.len() < 16 {
        return Parse::NeedMore;
    }
    let version_command = data[12];
    if version_command >> 4 != 2 {
        return Parse::Malformed(2);
    }
    let family = data[13];
    let declared = u16::from_be_bytes([data[14], data[15]]) as usize;
    let length = 16 + declared;
    match version_command & 0x0f {
        // `LOCAL` (the proxy's own connection, a health check): no addresses to read, whatever
        // the family says, and TLVs ignored, as in Envoy.
        0 => {
            return Parse::Header(Header {
                version: 2,
                length,
                addresses: None,
                tlv_start: length,
            });
        }
        1 => {}
        _ => return Parse::Malformed(2),
    }
    // `PROXY` needs TCP or UDP over IPv4 or IPv6: Envoy refuses an unspecified family and
    // AF_UNIX.
    let need = match family {
        0x11 | 0x12 => 12,
        0x21 | 0x22 => 36,
        _ => return Parse::Malformed(2),
    };
    if declared < need {
        return Parse::Malformed(2);
    }
    if data.len() < 16 + need {
        return Parse::NeedMore;
    }
    let a = &data[16..16 + need];
    let addresses = if need == 12 {
        let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(a[o], a[o + 1], a[o + 2], a[o + 3]));
        let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
        (
            SocketAddr::new(ip(0), port(8)),
            SocketAddr::new(ip(4), port(10)),
        )
    } else {
        let ip = |o: usize| {
            let mut b = [0u8; 16];
            b.copy_from_slice(&a[o..o + 16]);
            IpAddr::V6(Ipv6Addr::from(b))
        };
        let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
        (
            SocketAddr::new(ip(0), port(32)),
            SocketAddr::new(ip(16), port(34)),
        )
    };
    if !unicast(addresses.0) || !unicast(addresses.1) {
        return Parse::Malformed(2);
    }
    Parse::Header(Header {
        version: 2,
        length,
        addresses: Some(addresses),
        tlv_start: 16 + need,
    })
}

/// The TLVs of a version 2 header (`type`, then the value's length in two bytes, then the
/// value), in order; `None` when one runs past the end, which Envoy refuses.
pub fn tlvs(mut extensions: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut found = Vec::new();
    while let [kind, high, low, rest @ ..] = extensions {
        let length = usize::from(u16::from_be_bytes([*high, *low]));
        if rest.len() < length {
            return None;
        }
        let (value, after) = rest.split_at(length);
        found.push((*kind, value));
        extensions = after;
    }
    // One or two bytes left: a TLV cut short.
    extensions.is_empty().then_some(found)
}

/// The filter's configuration.
#[derive(Clone, Debug, Default)]
pub struct ProxyProtocolConfig {
    /// `allow_requests_without_proxy_protocol`.
    pub allow_without: bool,
    /// `disallowed_versions`: 1 and/or 2.
    pub disallowed: Vec<u8>,
    pub stat_prefix: String,
    /// `rules`: the TLVs that become dynamic metadata.
    pub rules: Vec<TlvRule>,
    /// `pass_through_tlvs`: the TLVs kept for the upstream's PROXY header (none without it).
    pub pass_through: Option<PassThrough>,
}

/// The namespace of the metadata a rule without `metadata_namespace` sets.
pub const METADATA_NAMESPACE: &str = "envoy.filters.listener.proxy_protocol";

/// A `rules` entry: a TLV of this type sets `key` in `namespace`, its value as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlvRule {
    pub tlv_type: u8,
    pub namespace: String,
    pub key: String,
}

impl ProxyProtocolConfig {
    /// The TLVs of a header that `pass_through_tlvs` keeps for the upstream, in order.
    pub fn passed_on(&self, tlvs: &[(u8, &[u8])]) -> Vec<Tlv> {
        let Some(pass) = &self.pass_through else {
            return Vec::new();
        };
        tlvs.iter()
            .filter(|(kind, _)| pass.keeps(*kind))
            .map(|(kind, value)| (*kind, value.to_vec()))
            .collect()
    }

    /// The dynamic metadata the rules make of a header's TLVs; `None` when they make none.
    /// Of two TLVs of one type the first counts, as in Envoy. A value that is not UTF-8 has
    /// each stray byte replaced by `!`, as Envoy's metadata strings do.
    pub fn metadata(&self, tlvs: &[(u8, &[u8])]) -> Option<DynamicMetadata> {
        let mut metadata = DynamicMetadata::default();
        for (kind, value) in tlvs {
            // A later rule for the same type replaces an earlier one, as in Envoy's map.
            if let Some(rule) = self.rules.iter().rev().find(|r| r.tlv_type == *kind) {
                metadata.insert_first(&rule.namespace, &rule.key, sanitize_utf8(value));
            }
        }
        (!metadata.is_empty()).then_some(metadata)
    }
}

/// `proxy_proto.[<stat_prefix>.]*`.
#[derive(Debug)]
pub struct ProxyProtocolStats {
    pub not_found_allowed: Counter,
    pub not_found_disallowed: Counter,
    /// `versions.v1.*`, `versions.v2.*`: (found, disallowed, error).
    pub versions: [(Counter, Counter, Counter); 2],
    /// The root `downstream_cx_proxy_proto_error` Envoy still keeps: a header that is
    /// malformed or missing (where one is required).
    pub errors: Counter,
}

impl ProxyProtocolStats {
    pub fn new(root: &Scope, config: &ProxyProtocolConfig) -> Self {
        let scope = if config.stat_prefix.is_empty() {
            root.scope("proxy_proto.")
        } else {
            root.scope(&format!("proxy_proto.{}.", config.stat_prefix))
        };
        let version = |v: &str| {
            let s = scope.scope(&format!("versions.{v}."));
            (
                s.counter("found"),
                s.counter("disallowed"),
                s.counter("error"),
            )
        };
        ProxyProtocolStats {
            not_found_allowed: scope.counter("not_found_allowed"),
            not_found_disallowed: scope.counter("not_found_disallowed"),
            versions: [version("v1"), version("v2")],
            errors: root.counter("downstream_cx_proxy_proto_error"),
        }
    }

    /// A malformed header of version `v`.
    pub fn error(&self, v: u8) {
        self.version(v).2.inc();
        self.errors.inc();
    }

    pub fn version(&self, v: u8) -> &(Counter, Counter, Counter) {
        &self.versions[usize::from(v.clamp(1, 2) - 1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(version: u8, length: usize, src: &str, dst: &str) -> Parse {
        Parse::Header(Header {
            version,
            length,
            addresses: Some((src.parse().unwrap(), dst.parse().unwrap())),
            tlv_start: if version == 1 { length } else { 16 + 12 },
        })
    }

    #[test]
    fn version_1() {
        let line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /";
        assert_eq!(
            parse(line),
            header(1, 45, "192.0.2.1:56324", "198.51.100.2:443")
        );
        let v6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n";
        assert_eq!(
            parse(v6),
            header(1, v6.len(), "[2001:db8::1]:1", "[2001:db8::2]:2")
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parse::Header(Header {
                version: 1,
                length: 15,
                addresses: None,
                tlv_start: 15,
            })
        );
        assert_eq!(parse(b"PRO"), Parse::NeedMore);
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Parse::NeedMore);
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 ::1 ::2 1 2\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            // Not unicast: Envoy refuses these (any, multicast, broadcast).
            b"PROXY TCP4 0.0.0.0 1.2.3.4 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 224.0.0.1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 255.255.255.255 1 2\r\n",
            b"PROXY TCP6 ::1 ff02::1 1 2\r\n",
        ] {
            assert_eq!(
                parse(bad),
                Parse::Malformed(1),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // No CRLF within the specification's 107 bytes.
        let long = [b"PROXY ".as_slice(), &[b'x'; 120]].concat();
        assert_eq!(parse(&long), Parse::Malformed(1));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parse::NotProxy);
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    #[test]
    fn version_2() {
        let mut body = vec![192, 0, 2, 1, 198, 51, 100, 2];
        body.extend_from_slice(&56324u16.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        body.extend_from_slice(&[0x04, 0x00, 0x01, 0xAA]); // a TLV, skipped
        let h = v2(1, 0x11, &body);
        assert_eq!(
            parse(&h),
            header(2, h.len(), "192.0.2.1:56324", "198.51.100.2:443")
        );
        assert_eq!(parse(&h[..20]), Parse::NeedMore);
        assert_eq!(parse(&h[..10]), Parse::NeedMore);
        // `LOCAL`: addresses and TLVs ignored, whatever the family (AF_UNIX here).
        let local = v2(0, 0x31, &[0xEA, 0, 9, b'a']);
        assert_eq!(
            parse(&local),
            Parse::Header(Header {
                version: 2,
                length: 20,
                addresses: None,
                tlv_start: 20,
            })
        );
        // An address block shorter than its family needs, a bad version, AF_UNIX, an
        // unspecified family, a source that is not unicast.
        assert_eq!(parse(&v2(1, 0x11, &[1, 2, 3])), Parse::Malformed(2));
        assert_eq!(parse(&v2(1, 0x00, &[])), Parse::Malformed(2));
        let mut any_source = body.clone();
        any_source[..4].copy_from_slice(&[0, 0, 0, 0]);
        assert_eq!(parse(&v2(1, 0x11, &any_source)), Parse::Malformed(2));
        let mut bad_version = v2(1, 0x11, &body);
        bad_version[12] = 0x31;
        assert_eq!(parse(&bad_version), Parse::Malformed(2));
        assert_eq!(parse(&v2(1, 0x31, &[0; 216])), Parse::Malformed(2));
        // A header that says it is longer than what follows: its addresses are read, and the
        // rest is waited for by whoever removes it.
        let mut lying = v2(1, 0x11, &body[..12]);
        lying[14..16].copy_from_slice(&60000u16.to_be_bytes());
        let Parse::Header(h) = parse(&lying) else {
            panic!()
        };
        assert_eq!(h.length, 16 + 60000);
    }

    #[test]
    fn tlvs_are_checked_as_envoy_checks_them() {
        let ok = [0xEA, 0, 2, b'v', b'1', 0x05, 0, 0, 0xEA, 0, 1, b'2'];
        assert_eq!(
            tlvs(&ok),
            Some(vec![
                (0xEA, &b"v1"[..]),
                (0x05, &b""[..]),
                (0xEA, &b"2"[..])
            ])
        );
        assert_eq!(tlvs(&[]), Some(vec![]));
        // A value past the end, one or two bytes of a TLV left over.
        assert_eq!(tlvs(&[0xEA, 0, 3, b'a', b'b']), None);
        assert_eq!(tlvs(&[0xEA, 0, 0, 0x05]), None);
        assert_eq!(tlvs(&[0xEA, 0, 0, 0x05, 0]), None);
    }

    #[test]
    fn rules_make_metadata_of_the_first_tlv_of_a_type() {
        let rule = |tlv_type, namespace: &str, key: &str| TlvRule {
            tlv_type,
            namespace: namespace.into(),
            key: key.into(),
        };
        let config = ProxyProtocolConfig {
            rules: vec![
                rule(0xEA, METADATA_NAMESPACE, "old"),
                rule(0xEA, METADATA_NAMESPACE, "vpce"),
                rule(0x01, "my.ns", "alpn"),
            ],
            ..Default::default()
        };
        let metadata = config
            .metadata(&[
                (0xEA, b"one"),
                (0x02, b"x"),
                (0xEA, b"two"),
                (0x01, b"h2\xff"),
            ])
            .unwrap();
        let get = |ns: &str, key: &str| match metadata.lookup(ns, &[key.to_owned()]) {
            Some(legate_core::metadata::Lookup::String(s)) => Some(s.to_owned()),
            _ => None,
        };
        assert_eq!(get(METADATA_NAMESPACE, "vpce").as_deref(), Some("one"));
        assert_eq!(get(METADATA_NAMESPACE, "old"), None);
        assert_eq!(get("my.ns", "alpn").as_deref(), Some("h2!"));
        assert_eq!(config.metadata(&[(0x02, b"x")]), None);
    }
}
