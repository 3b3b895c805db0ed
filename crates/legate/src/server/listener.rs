//! Binding listener sockets: one socket per worker on the same address with `SO_REUSEPORT`,
//! so that the kernel spreads connections over workers and no worker waits on another (Envoy's
//! default `enable_reuse_port`). A listener on port 0 is bound once to learn its port, and the
//! other workers bind that port. UDP listeners are bound the same way, one socket per worker.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Envoy's default listen backlog (`tcp_backlog_size`).
const BACKLOG: i32 = 1024;

fn bind_one(address: SocketAddr, ipv4_compat: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if address.is_ipv6() {
        // `::` listens on IPv6 only unless `ipv4_compat`, as in Envoy.
        socket.set_only_v6(!ipv4_compat)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Binds `workers` sockets to `address`; returns them and the address actually bound (with
/// port 0 resolved).
pub fn bind(
    address: SocketAddr,
    ipv4_compat: bool,
    workers: usize,
) -> io::Result<(Vec<std::net::TcpListener>, SocketAddr)> {
    let first = bind_one(address, ipv4_compat)?;
    let bound = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..workers {
        sockets.push(bind_one(bound, ipv4_compat)?);
    }
    Ok((sockets, bound))
}

fn bind_udp_one(address: SocketAddr, ipv4_compat: bool) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    socket.set_reuse_address(true)?;
    // One socket per worker, as Envoy binds UDP listeners (`enable_reuse_port`): the kernel
    // hashes a client's address and port to one of them, so each client stays on one worker,
    // which holds its session.
    socket.set_reuse_port(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(!ipv4_compat)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    Ok(socket.into())
}

/// [`bind`] for a UDP listener.
pub fn bind_udp(
    address: SocketAddr,
    ipv4_compat: bool,
    workers: usize,
) -> io::Result<(Vec<std::net::UdpSocket>, SocketAddr)> {
    let first = bind_udp_one(address, ipv4_compat)?;
    let bound = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..workers {
        sockets.push(bind_udp_one(bound, ipv4_compat)?);
    }
    Ok((sockets, bound))
}
