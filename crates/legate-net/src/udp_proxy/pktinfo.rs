//! Datagrams on a UDP socket bound to a wildcard address (`0.0.0.0`, `::`): receiving each with
//! the local address it was sent to, and answering from that address (`IP_PKTINFO`,
//! `IPV6_PKTINFO`), as Envoy does. Without it a reply leaves from whatever source the kernel
//! picks for the client's route, which a client that sent to another of the host's addresses
//! (and `connect`ed its socket there) drops.
//!
//! The socket calls are `recvmsg`/`sendmsg` with control messages, which the standard library
//! and tokio do not offer; the `unsafe` here is confined to filling and reading those C structs.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::RawFd;

/// Asks the kernel to report each datagram's destination address on `fd`.
pub fn enable(fd: RawFd, ipv6: bool) -> io::Result<()> {
    let (level, name) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    let one: libc::c_int = 1;
    // SAFETY: `one` outlives the call and its size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Control-message space for one `in6_pktinfo` (the larger of the two), 8-byte aligned.
type Control = [u64; 8];

/// Receives one datagram into `buf`: the bytes received, the sender, and the local address it
/// was sent to (when [`enable`] was called on the socket). Non-blocking if the socket is.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control: Control = [0; 8];
    // SAFETY: all-zero is a valid `sockaddr_storage` and `msghdr`.
    let mut source: libc::sockaddr_storage = unsafe { zeroed() };
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut source as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<Control>() as _;
    // SAFETY: every pointer in `msg` points to a live buffer of the length given beside it.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let sender =
        socket_addr(&source).ok_or_else(|| io::Error::other("a datagram from a non-IP address"))?;
    let mut local = None;
    // SAFETY: the CMSG_* walk stays within `msg_control`/`msg_controllen` as the kernel set
    // them, and each payload is read unaligned with the type its level and type announce.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let (level, kind) = ((*cmsg).cmsg_level, (*cmsg).cmsg_type);
            if level == libc::IPPROTO_IP && kind == libc::IP_PKTINFO {
                let info: libc::in_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                local = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    info.ipi_addr.s_addr,
                ))));
            } else if level == libc::IPPROTO_IPV6 && kind == libc::IPV6_PKTINFO {
                let info: libc::in6_pktinfo =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                local = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, sender, local))
}

/// The IPv4 or IPv6 address a `recvmsg` wrote.
fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    let at = storage as *const libc::sockaddr_storage;
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a `sockaddr_in`.
            let a: libc::sockaddr_in = unsafe { std::ptr::read(at.cast()) };
            Some(SocketAddr::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)).into(),
                u16::from_be(a.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a `sockaddr_in6`.
            let a: libc::sockaddr_in6 = unsafe { std::ptr::read(at.cast()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Sends `data` to `to` from the local address `from`. Non-blocking if the socket is.
pub fn send_from(fd: RawFd, data: &[u8], to: SocketAddr, from: IpAddr) -> io::Result<usize> {
    let to = socket2::SockAddr::from(to);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut control: Control = [0; 8];
    // SAFETY: all-zero is a valid `msghdr`.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = to.as_ptr() as *mut libc::c_void;
    msg.msg_namelen = to.len();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: the one control message written fits `control` (CMSG_SPACE of the larger
    // payload is 40 bytes of its 64), and `msg` points only to live buffers.
    unsafe {
        let (level, kind, payload) = match from {
            IpAddr::V4(_) => (
                libc::IPPROTO_IP,
                libc::IP_PKTINFO,
                size_of::<libc::in_pktinfo>(),
            ),
            IpAddr::V6(_) => (
                libc::IPPROTO_IPV6,
                libc::IPV6_PKTINFO,
                size_of::<libc::in6_pktinfo>(),
            ),
        };
        msg.msg_controllen = libc::CMSG_SPACE(payload as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = kind;
        (*cmsg).cmsg_len = libc::CMSG_LEN(payload as u32) as _;
        match from {
            IpAddr::V4(ip) => std::ptr::write_unaligned(
                libc::CMSG_DATA(cmsg).cast(),
                libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(ip).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                },
            ),
            IpAddr::V6(ip) => std::ptr::write_unaligned(
                libc::CMSG_DATA(cmsg).cast(),
                libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: ip.octets(),
                    },
                    ipi6_ifindex: 0,
                },
            ),
        }
    }
    // SAFETY: as above.
    let n = unsafe { libc::sendmsg(fd, &msg, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn a_wildcard_socket_learns_the_destination_and_answers_from_it() {
        let server = UdpSocket::bind("0.0.0.0:0").unwrap();
        let port = server.local_addr().unwrap().port();
        enable(server.as_raw_fd(), false).unwrap();
        // The client sends to 127.0.0.2 and accepts only what comes from there.
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(("127.0.0.2", port)).unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        client.send(b"ping").unwrap();
        let mut buf = [0u8; 64];
        let (n, from, local) = recv(server.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(from, client.local_addr().unwrap());
        assert_eq!(local, Some("127.0.0.2".parse().unwrap()));
        send_from(server.as_raw_fd(), b"pong", from, local.unwrap()).unwrap();
        let n = client.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"pong");
    }
}
