//! Socket addresses from `envoy.config.core.v3.Address`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use legate_api::pb::envoy::config::core::v3::{Address, CidrRange, address, socket_address};

use crate::Compiled;
use crate::ConfigError;

/// Envoy's stat-name form of an address: `127.0.0.1_10000`, `[::1]_443` (a `:` becomes `_`).
pub fn stat_name(addr: &SocketAddr) -> String {
    addr.to_string().replace(':', "_")
}

/// A unix domain socket address (`pipe`): a file path, or, when the path starts with '@', a
/// name in Linux's abstract namespace (Envoy's convention: the '@' stands for the leading NUL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pipe {
    /// As configured, '@' included: how Envoy prints the address (logs, stats, `/listeners`).
    pub path: String,
    /// `mode`: the permissions set on the socket file after binding (0: left to the umask).
    pub mode: u32,
}

impl Pipe {
    pub fn is_abstract(&self) -> bool {
        self.path.starts_with('@')
    }

    /// The socket address to bind or connect to.
    pub fn socket_addr(&self) -> std::io::Result<std::os::unix::net::SocketAddr> {
        match self.path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            }
            None => std::os::unix::net::SocketAddr::from_pathname(&self.path),
        }
    }
}

/// The unix domain socket of `address`, if it is a `pipe`; `None` for other kinds.
pub fn pipe(address: &Address) -> Option<Compiled<Pipe>> {
    let Some(address::Address::Pipe(p)) = &address.address else {
        return None;
    };
    let err = |path: &str, msg: &str| Some(Err(vec![ConfigError::new(path, msg)]));
    if p.path.is_empty() {
        return err("pipe.path", "value length must be at least 1 characters");
    }
    if p.mode > 0o777 {
        return err("pipe.mode", "value must be less than or equal to 511");
    }
    if p.path.starts_with('@') && p.mode != 0 {
        // Envoy's words: an abstract socket has no file to set the mode of.
        return err("pipe.mode", "Cannot set mode for Abstract AF_UNIX sockets");
    }
    Some(Ok(Pipe {
        path: p.path.clone(),
        mode: p.mode,
    }))
}

/// Reads a TCP socket address with a literal IP, as listeners and STATIC endpoints require.
/// Envoy refuses host names here (`malformed IP address`), named ports and resolvers.
pub fn socket_addr(address: &Address) -> Compiled<SocketAddr> {
    socket_addr_of(address, false).map(|(a, _)| a)
}

/// A listener's address: TCP, or UDP (`protocol: UDP`, served by the UDP proxy); the flag
/// says UDP.
pub fn listener_socket_addr(address: &Address) -> Compiled<(SocketAddr, bool)> {
    socket_addr_of(address, true)
}

fn socket_addr_of(address: &Address, udp_allowed: bool) -> Compiled<(SocketAddr, bool)> {
    let err = |path: &str, msg: String| Err(vec![ConfigError::new(path, msg)]);
    let Some(kind) = &address.address else {
        return err("", "an address is required".into());
    };
    let sa = match kind {
        address::Address::SocketAddress(sa) => sa,
        address::Address::Pipe(_) => {
            return err(
                "pipe",
                "unix domain socket addresses are not supported by Legate here".into(),
            );
        }
        address::Address::EnvoyInternalAddress(_) => {
            return err(
                "envoy_internal_address",
                "internal addresses are not supported by Legate".into(),
            );
        }
    };
    let udp = sa.protocol == socket_address::Protocol::Udp as i32;
    if sa.protocol != socket_address::Protocol::Tcp as i32 && !(udp && udp_allowed) {
        return err(
            "socket_address.protocol",
            "only TCP is supported by Legate here".into(),
        );
    }
    let port = match &sa.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => *p as u16,
        Some(socket_address::PortSpecifier::NamedPort(_)) => {
            return err(
                "socket_address.named_port",
                "named ports are not supported".into(),
            );
        }
        None => 0,
    };
    if !sa.resolver_name.is_empty() {
        return err(
            "socket_address.resolver_name",
            "custom resolvers are not supported by Legate".into(),
        );
    }
    let ip: IpAddr = match sa.address.parse() {
        Ok(ip) => ip,
        Err(_) => {
            return err(
                "socket_address.address",
                format!("malformed IP address: {}", sa.address),
            );
        }
    };
    Ok((SocketAddr::new(ip, port), udp))
}

/// An IP network (`CidrRange`), stored masked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    len: u8,
}

impl Cidr {
    pub const ANY_V4: Cidr = Cidr {
        network: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        len: 0,
    };
    pub const ANY_V6: Cidr = Cidr {
        network: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        len: 0,
    };

    /// A prefix length beyond the address width is clamped to it, as Envoy does.
    pub fn new(ip: IpAddr, len: u32) -> Cidr {
        let len = len.min(if ip.is_ipv4() { 32 } else { 128 }) as u8;
        Cidr {
            network: mask(ip, len),
            len,
        }
    }

    pub fn compile(range: &CidrRange) -> Result<Cidr, String> {
        let ip: IpAddr = range
            .address_prefix
            .parse()
            .map_err(|_| format!("malformed IP address: {}", range.address_prefix))?;
        Ok(Cidr::new(
            ip,
            range.prefix_len.as_ref().map_or(0, |v| v.value),
        ))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.network.is_ipv4() && mask(ip, self.len) == self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - len as u32).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - len as u32).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}
