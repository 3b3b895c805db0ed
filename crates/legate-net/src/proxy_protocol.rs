//! The PROXY protocol (HAProxy's, versions 1 and 2): the header a load balancer in front of
//! Legate puts before a connection's bytes to say whom the connection really comes from. The
//! `envoy.filters.listener.proxy_protocol` listener filter reads it, removes it from the stream
//! and restores the addresses it carries; `proxy_proto.[<stat_prefix>.]*` counts what it saw.
//!
//! Parsing is by hand (a few dozen bytes of fixed layout); it looks at no more than the
//! [`PEEK_LIMIT`] bytes that hold either version's addresses, and learns a version 2 header's
//! whole length from its fixed part, so TLVs (skipped) cost nothing to peek.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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
    /// The original source and destination; `None` for `UNKNOWN` (v1) and `LOCAL` or
    /// unspecified families (v2): the connection's own addresses stay.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
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
    Parse::Header(Header {
        version: 1,
        length,
        addresses,
    })
}

fn parse_v2(data: &[u8]) -> Parse {
    if data.len() < 16 {
        return Parse::NeedMore;
    }
    let version_command = data[12];
    if version_command >> 4 != 2 {
        return Parse::Malformed(2);
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        _ => return Parse::Malformed(2),
    };
    let family = data[13];
    let declared = u16::from_be_bytes([data[14], data[15]]) as usize;
    let length = 16 + declared;
    let need = match family {
        0x11 | 0x12 => 12,                         // TCP or UDP over IPv4
        0x21 | 0x22 => 36,                         // over IPv6
        0x00 => 0,                                 // unspecified
        0x31 | 0x32 => return Parse::Malformed(2), // AF_UNIX: not supported, as in Envoy
        _ => return Parse::Malformed(2),
    };
    if declared < need {
        return Parse::Malformed(2);
    }
    if local || need == 0 {
        return Parse::Header(Header {
            version: 2,
            length,
            addresses: None,
        });
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
    Parse::Header(Header {
        version: 2,
        length,
        addresses: Some(addresses),
    })
}

/// The filter's configuration.
#[derive(Clone, Debug, Default)]
pub struct ProxyProtocolConfig {
    /// `allow_requests_without_proxy_protocol`.
    pub allow_without: bool,
    /// `disallowed_versions`: 1 and/or 2.
    pub disallowed: Vec<u8>,
    pub stat_prefix: String,
}

/// `proxy_proto.[<stat_prefix>.]*`.
#[derive(Debug)]
pub struct ProxyProtocolStats {
    pub not_found_allowed: Counter,
    pub not_found_disallowed: Counter,
    /// `versions.v1.*`, `versions.v2.*`: (found, disallowed, error).
    pub versions: [(Counter, Counter, Counter); 2],
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
        }
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
                addresses: None
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
        let local = v2(0, 0x00, &[]);
        assert_eq!(
            parse(&local),
            Parse::Header(Header {
                version: 2,
                length: 16,
                addresses: None
            })
        );
        // An address block shorter than its family needs, a bad version, AF_UNIX.
        assert_eq!(parse(&v2(1, 0x11, &[1, 2, 3])), Parse::Malformed(2));
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
}
