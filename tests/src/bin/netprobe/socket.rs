//! Socket set-up std does not offer (IPV6_V6ONLY before bind, so an IPv4 and
//! an IPv6 wildcard listener on one port coexist) and the mapping of socket
//! errors to the short kinds tests assert on.

use std::{
    io,
    mem::size_of,
    net::{SocketAddr, TcpListener, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// A listening TCP socket; IPv6 ones are V6ONLY.
pub fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let fd = bound(addr, libc::SOCK_STREAM)?;
    // SAFETY: plain syscall on a valid fd we own.
    if unsafe { libc::listen(fd.as_raw_fd(), 128) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpListener::from(fd))
}

/// A bound UDP socket; IPv6 ones are V6ONLY.
pub fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    Ok(UdpSocket::from(bound(addr, libc::SOCK_DGRAM)?))
}

fn bound(addr: SocketAddr, kind: i32) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain syscall; the result is checked before use.
    let raw = unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // A restarted server must rebind at once, without TIME_WAIT in the way.
    set_flag(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR)?;
    if addr.is_ipv6() {
        set_flag(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)?;
    }
    let rc = match addr {
        SocketAddr::V4(a) => {
            let sa = libc::sockaddr_in {
                sin_family: sa_family(libc::AF_INET),
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: pointer and length describe `sa`, alive for the call.
            unsafe { libc::bind(raw, (&raw const sa).cast(), socklen::<libc::sockaddr_in>()) }
        }
        SocketAddr::V6(a) => {
            let sa = libc::sockaddr_in6 {
                sin6_family: sa_family(libc::AF_INET6),
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: pointer and length describe `sa`, alive for the call.
            unsafe { libc::bind(raw, (&raw const sa).cast(), socklen::<libc::sockaddr_in6>()) }
        }
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn set_flag(fd: &OwnedFd, level: i32, name: i32) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: pointer and length describe `one`, alive for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const one).cast(),
            socklen::<libc::c_int>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The size of `T` as the socket calls take it.
fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<T>()).expect("socket structures are a few bytes")
}

/// An address family as a `sockaddr` holds it.
fn sa_family(family: libc::c_int) -> libc::sa_family_t {
    libc::sa_family_t::try_from(family).expect("address families fit sa_family_t")
}

/// The short error kinds the JSON output uses.
pub fn classify(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => return "refused".into(),
        Some(libc::ETIMEDOUT | libc::EAGAIN | libc::EINPROGRESS) => return "timeout".into(),
        Some(libc::EPERM) => return "eperm".into(),
        Some(libc::EACCES) => return "eacces".into(),
        Some(libc::ENETUNREACH | libc::EHOSTUNREACH) => return "unreachable".into(),
        Some(libc::ECONNRESET) => return "reset".into(),
        _ => {}
    }
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timeout".into(),
        io::ErrorKind::UnexpectedEof => "closed".into(),
        _ => e.to_string(),
    }
}

/// Same address and port, ignoring IPv6 flow info and scope.
pub fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    a.ip() == b.ip() && a.port() == b.port()
}
