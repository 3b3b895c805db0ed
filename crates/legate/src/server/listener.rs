//! Binding listener sockets: one socket per worker on the same address with `SO_REUSEPORT`,
//! so that the kernel spreads connections over workers and no worker waits on another (Envoy's
//! default `enable_reuse_port`). A listener on port 0 is bound once to learn its port, and the
//! other workers bind that port. UDP listeners are bound the same way, one socket per worker.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Envoy's default listen backlog (`tcp_backlog_size`).
const BACKLOG: i32 = 1024;

/// One socket of a listener: `SO_REUSEPORT` so that every worker binds its own on the same
/// address (for UDP the kernel hashes a client's address and port to one of them, so each
/// client stays on the worker that holds its session), IPv6-only for `::` unless
/// `ipv4_compat`, as in Envoy; TCP sockets listen, with `TCP_NODELAY`, which Envoy sets on
/// every connection it accepts: an accepted socket inherits it from its listener (Linux does;
/// a test holds it), so the accept path makes no `setsockopt` per connection.
fn bind_one(address: SocketAddr, ipv4_compat: bool, udp: bool) -> io::Result<Socket> {
    let (kind, protocol) = if udp {
        (Type::DGRAM, Protocol::UDP)
    } else {
        (Type::STREAM, Protocol::TCP)
    };
    let socket = Socket::new(Domain::for_address(address), kind, Some(protocol))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(!ipv4_compat)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    if !udp {
        socket.set_tcp_nodelay(true)?;
        socket.listen(BACKLOG)?;
    }
    Ok(socket)
}

/// Binds `workers` sockets to `address`; returns them and the address actually bound (with
/// port 0 resolved by the first).
fn bind_all(
    address: SocketAddr,
    ipv4_compat: bool,
    workers: usize,
    udp: bool,
) -> io::Result<(Vec<Socket>, SocketAddr)> {
    let first = bind_one(address, ipv4_compat, udp)?;
    let bound = first
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("an IP listener bound a non-IP address"))?;
    let mut sockets = vec![first];
    for _ in 1..workers {
        sockets.push(bind_one(bound, ipv4_compat, udp)?);
    }
    Ok((sockets, bound))
}

/// Binds a TCP listener's `workers` sockets.
pub fn bind(
    address: SocketAddr,
    ipv4_compat: bool,
    workers: usize,
) -> io::Result<(Vec<std::net::TcpListener>, SocketAddr)> {
    let (sockets, bound) = bind_all(address, ipv4_compat, workers, false)?;
    Ok((sockets.into_iter().map(Into::into).collect(), bound))
}

/// [`bind`] for a UDP listener.
pub fn bind_udp(
    address: SocketAddr,
    ipv4_compat: bool,
    workers: usize,
) -> io::Result<(Vec<std::net::UdpSocket>, SocketAddr)> {
    let (sockets, bound) = bind_all(address, ipv4_compat, workers, true)?;
    Ok((sockets.into_iter().map(Into::into).collect(), bound))
}

/// A stream listener's socket: TCP, or a unix domain socket (`pipe`).
pub enum ListenSocket {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

impl ListenSocket {
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            ListenSocket::Tcp(s) => ListenSocket::Tcp(s.try_clone()?),
            ListenSocket::Unix(s) => ListenSocket::Unix(s.try_clone()?),
        })
    }
}

/// Binds a unix domain socket listener: one socket, which every worker accepts on (a
/// duplicate each; `SO_REUSEPORT` does not spread unix sockets). As Envoy does, whatever is
/// at the path (a stale socket, a regular file) is replaced, `mode` is applied to the socket
/// file, and the file is left behind when the listener closes.
pub fn bind_pipe(
    pipe: &legate_core::address::Pipe,
    workers: usize,
) -> io::Result<Vec<std::os::unix::net::UnixListener>> {
    if !pipe.is_abstract() {
        match std::fs::remove_file(&pipe.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    let first = std::os::unix::net::UnixListener::bind_addr(&pipe.socket_addr()?)?;
    if pipe.mode != 0 && !pipe.is_abstract() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pipe.path, std::fs::Permissions::from_mode(pipe.mode))?;
    }
    first.set_nonblocking(true)?;
    let mut sockets = Vec::with_capacity(workers.max(1));
    for _ in 1..workers {
        sockets.push(first.try_clone()?);
    }
    sockets.insert(0, first);
    Ok(sockets)
}

#[cfg(test)]
mod tests {
    use super::bind;

    /// The accept path relies on it: a connection accepted on a listener has `TCP_NODELAY`
    /// without a `setsockopt` of its own.
    #[test]
    fn accepted_connections_inherit_tcp_nodelay() {
        let (listeners, addr) = bind("127.0.0.1:0".parse().unwrap(), false, 1).unwrap();
        listeners[0].set_nonblocking(false).unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        let (accepted, _) = listeners[0].accept().unwrap();
        assert!(accepted.nodelay().unwrap());
        drop(client);
    }
}
