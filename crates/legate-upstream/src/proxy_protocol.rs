//! The upstream PROXY protocol: a cluster's `transport_socket`
//! `envoy.transport_sockets.upstream_proxy_protocol` (`ProxyProtocolUpstreamTransport`), which
//! writes a PROXY protocol header (version 1 or 2, with `added_tlvs` in version 2) at the start
//! of each upstream connection, before the wrapped transport socket (plain, or TLS) begins.
//!
//! The header names the downstream connection: the client's address as the listener saw it
//! (after a PROXY listener filter, the one it restored) and the address it reached, as
//! Envoy's tcp_proxy and router set it; HTTP connections are then pooled per downstream
//! connection ([`crate::tls::ConnectionName`]). A connection made for no downstream one names
//! its own local and remote addresses.

use legate_core::proxy_protocol::{PassThrough, Tlv, tlv_entries};
use std::net::{IpAddr, SocketAddr};

use legate_api::pb::envoy::config::core::v3::{
    TransportSocket, proxy_protocol_config, transport_socket,
};
use legate_api::pb::envoy::extensions::transport_sockets::proxy_protocol::v3::ProxyProtocolUpstreamTransport;
use legate_core::{Compiled, ConfigError, Errors};
use prost::Message;

use crate::tls::UpstreamTls;

pub const TRANSPORT_SOCKET: &str = "envoy.transport_sockets.upstream_proxy_protocol";
const TRANSPORT_SOCKET_TYPE: &str =
    "envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport";
const RAW_BUFFER: &str = "envoy.transport_sockets.raw_buffer";
const RAW_BUFFER_TYPE: &str = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";
/// The most a version 2 header's TLVs may take: its length field is 16 bits, of which an IPv6
/// address block takes 36.
const MAX_TLV_BYTES: usize = u16::MAX as usize - 36;

/// The version 2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// `ProxyProtocolConfig` for upstream connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamProxyProtocol {
    /// 1 or 2.
    pub version: u8,
    /// `pass_through_tlvs`: which of the downstream's TLVs go on (none without it).
    pub pass_through: Option<PassThrough>,
    /// `added_tlvs` (version 2 only), in order.
    pub added_tlvs: Vec<(u8, Vec<u8>)>,
}

/// A cluster's `transport_socket`: the PROXY header to write, and TLS after it.
pub struct Transport {
    pub proxy_protocol: Option<UpstreamProxyProtocol>,
    pub tls: Option<UpstreamTls>,
}

/// Compiles a cluster's `transport_socket` (paths relative to it): TLS, or the PROXY protocol
/// around TLS or plain text.
pub fn compile_transport_socket(ts: &TransportSocket) -> Compiled<Transport> {
    if is(ts, RAW_BUFFER, RAW_BUFFER_TYPE) {
        return Ok(Transport {
            proxy_protocol: None,
            tls: None,
        });
    }
    if !is(ts, TRANSPORT_SOCKET, TRANSPORT_SOCKET_TYPE) {
        return Ok(Transport {
            proxy_protocol: None,
            tls: Some(UpstreamTls::compile_transport_socket(ts)?),
        });
    }
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &ts.config_type else {
        return Err(vec![ConfigError::new(
            "typed_config",
            "a ProxyProtocolUpstreamTransport is required",
        )]);
    };
    let config = ProxyProtocolUpstreamTransport::decode(any.value.as_slice()).map_err(|e| {
        vec![ConfigError::new(
            "typed_config",
            format!("unable to decode ProxyProtocolUpstreamTransport: {e}"),
        )]
    })?;
    let mut errors = Errors::default();
    let proxy_protocol = errors.take("typed_config.config", compile(&config));
    let tls = match &config.transport_socket {
        Some(inner) if is(inner, RAW_BUFFER, RAW_BUFFER_TYPE) => None,
        Some(inner) => errors.take(
            "typed_config.transport_socket",
            UpstreamTls::compile_transport_socket(inner),
        ),
        None => None,
    };
    errors.finish(|| Transport {
        proxy_protocol,
        tls,
    })
}

/// Whether a transport socket is the extension `name`, by its `typed_config`'s type or,
/// without one, by its name.
fn is(ts: &TransportSocket, name: &str, message: &str) -> bool {
    match &ts.config_type {
        Some(transport_socket::ConfigType::TypedConfig(any)) => {
            legate_api::any::type_name(&any.type_url) == message
        }
        _ => ts.name == name,
    }
}

fn compile(config: &ProxyProtocolUpstreamTransport) -> Compiled<UpstreamProxyProtocol> {
    let p = config.config.clone().unwrap_or_default();
    let version = match proxy_protocol_config::Version::try_from(p.version) {
        Ok(proxy_protocol_config::Version::V2) => 2,
        _ => 1,
    };
    let mut errors = Errors::default();
    let added_tlvs = errors
        .take("", tlv_entries(&p.added_tlvs, "added_tlvs"))
        .unwrap_or_default();
    let tlv_bytes: usize = added_tlvs.iter().map(|(_, v)| 3 + v.len()).sum();
    if tlv_bytes > MAX_TLV_BYTES {
        errors.push(
            "added_tlvs",
            format!("the TLVs take {tlv_bytes} bytes, more than a header holds ({MAX_TLV_BYTES})"),
        );
    }
    let pass_through = p
        .pass_through_tlvs
        .as_ref()
        .and_then(|pt| errors.take("pass_through_tlvs", PassThrough::compile(pt)));
    errors.finish(|| UpstreamProxyProtocol {
        version,
        pass_through,
        added_tlvs,
    })
}

impl UpstreamProxyProtocol {
    /// The header for a connection from `source` to `destination` (the families made one:
    /// IPv4 addresses are written IPv4-mapped when the other address is IPv6). Version 2
    /// carries `added_tlvs` first, then those of `passed` (the downstream's) that
    /// `pass_through_tlvs` lets on and `added_tlvs` do not replace, as Envoy writes them.
    pub fn header(&self, source: SocketAddr, destination: SocketAddr, passed: &[Tlv]) -> Vec<u8> {
        let (source, destination) = same_family(source, destination);
        match self.version {
            1 => {
                let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
                format!(
                    "PROXY {family} {} {} {} {}\r\n",
                    source.ip(),
                    destination.ip(),
                    source.port(),
                    destination.port()
                )
                .into_bytes()
            }
            _ => {
                let mut body = Vec::with_capacity(36);
                let family = match (source.ip(), destination.ip()) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => {
                        body.extend_from_slice(&s.octets());
                        body.extend_from_slice(&d.octets());
                        0x11
                    }
                    (s, d) => {
                        body.extend_from_slice(&v6(s).octets());
                        body.extend_from_slice(&v6(d).octets());
                        0x21
                    }
                };
                body.extend_from_slice(&source.port().to_be_bytes());
                body.extend_from_slice(&destination.port().to_be_bytes());
                let passed = passed.iter().filter(|(kind, _)| {
                    self.pass_through.as_ref().is_some_and(|p| p.keeps(*kind))
                        && !self.added_tlvs.iter().any(|(k, _)| k == kind)
                });
                for (kind, value) in self.added_tlvs.iter().chain(passed) {
                    // The header's length is 16 bits: a passed TLV that would not fit is left
                    // out (`added_tlvs` fit, checked with the configuration).
                    if body.len() + 3 + value.len() > usize::from(u16::MAX) {
                        continue;
                    }
                    body.push(*kind);
                    body.extend_from_slice(&(value.len() as u16).to_be_bytes());
                    body.extend_from_slice(value);
                }
                let mut header = Vec::with_capacity(16 + body.len());
                header.extend_from_slice(&V2_SIGNATURE);
                // Version 2, command PROXY.
                header.push(0x21);
                header.push(family);
                header.extend_from_slice(&(body.len() as u16).to_be_bytes());
                header.extend_from_slice(&body);
                header
            }
        }
    }

    /// The header for a connection whose addresses are unknown (between unix domain
    /// sockets): version 1's `UNKNOWN`, version 2's `LOCAL` command (which a receiver takes
    /// as a connection of the proxy's own), without TLVs.
    pub fn header_without_addresses(&self) -> Vec<u8> {
        match self.version {
            1 => b"PROXY UNKNOWN\r\n".to_vec(),
            _ => {
                let mut header = V2_SIGNATURE.to_vec();
                // Version 2, command LOCAL; family and protocol unspecified; no address block.
                header.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
                header
            }
        }
    }
}

fn v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn same_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    if source.is_ipv4() == destination.is_ipv4() {
        return (source, destination);
    }
    let mapped = |a: SocketAddr| SocketAddr::new(IpAddr::V6(v6(a.ip())), a.port());
    (mapped(source), mapped(destination))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_of_both_versions() {
        let (s, d): (SocketAddr, SocketAddr) = (
            "10.0.0.1:5000".parse().unwrap(),
            "10.0.0.2:443".parse().unwrap(),
        );
        let v1 = UpstreamProxyProtocol {
            version: 1,
            pass_through: None,
            added_tlvs: Vec::new(),
        };
        assert_eq!(
            v1.header(s, d, &[]),
            b"PROXY TCP4 10.0.0.1 10.0.0.2 5000 443\r\n"
        );
        let v2 = UpstreamProxyProtocol {
            version: 2,
            pass_through: None,
            added_tlvs: vec![(0xe0, b"ab".to_vec())],
        };
        let mut expected = V2_SIGNATURE.to_vec();
        expected.extend_from_slice(&[0x21, 0x11, 0, 17, 10, 0, 0, 1, 10, 0, 0, 2]);
        expected.extend_from_slice(&[0x13, 0x88, 0x01, 0xbb, 0xe0, 0, 2, b'a', b'b']);
        assert_eq!(v2.header(s, d, &[(0xe1, b"no".to_vec())]), expected);
        let d6: SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(
            v1.header(s, d6, &[]),
            b"PROXY TCP6 ::ffff:10.0.0.1 ::1 5000 80\r\n"
        );
        assert_eq!(v1.header_without_addresses(), b"PROXY UNKNOWN\r\n");
        // Passed TLVs that would overflow the header's 16-bit length are left out.
        let all = UpstreamProxyProtocol {
            version: 2,
            pass_through: Some(PassThrough::All),
            added_tlvs: Vec::new(),
        };
        let big = vec![
            (1, vec![0u8; 40_000]),
            (2, vec![0u8; 40_000]),
            (3, b"c".to_vec()),
        ];
        let header = all.header(s, d, &big);
        assert_eq!(header.len(), 16 + 12 + 3 + 40_000 + 4);
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0, 0, 0]);
        assert_eq!(v2.header_without_addresses(), local);
    }
}
