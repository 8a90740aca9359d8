//! The kernel's socket diagnostics over netlink (`NETLINK_SOCK_DIAG`), as
//! `ss -K` uses them: dump the connected sockets of one family and protocol
//! in the caller's network namespace, each with its value in one
//! socket-storage map, and destroy one by its identity (SOCK_DESTROY, which
//! needs a kernel built with `CONFIG_INET_DIAG_DESTROY`).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, BorrowedFd},
};

use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};
use switchyard_abi::SockState;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_sockid`: ports, addresses, interface, cookie.
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, id.
const REQ_LEN: usize = 8 + SOCKID_LEN;
/// `struct inet_diag_msg`: family, state, timer, retrans, id, then five u32.
const MSG_LEN: usize = 4 + SOCKID_LEN + 20;
const INET_DIAG_REQ_SK_BPF_STORAGES: u16 = 2;
const SK_DIAG_BPF_STORAGE_REQ_MAP_FD: u16 = 1;
const INET_DIAG_SK_BPF_STORAGES: u16 = 20;
const SK_DIAG_BPF_STORAGE: u16 = 1;
const SK_DIAG_BPF_STORAGE_MAP_VALUE: u16 = 3;
/// TCP_ESTABLISHED, which is also where a connect()ed UDP socket is.
const ESTABLISHED: u32 = 1;
const LISTEN: u32 = 10;

/// Which sockets a dump lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// connect()ed UDP sockets.
    ConnectedUdp,
    /// TCP sockets in any state but LISTEN.
    TcpConnections,
}

impl Wanted {
    fn protocol(self) -> u8 {
        match self {
            Self::ConnectedUdp => 17,
            Self::TcpConnections => 6,
        }
    }

    fn states(self) -> u32 {
        match self {
            Self::ConnectedUdp => 1 << ESTABLISHED,
            Self::TcpConnections => !(1 << LISTEN),
        }
    }
}

/// One socket of a dump.
#[derive(Clone, Debug)]
pub struct DiagSocket {
    pub family: u8,
    /// The kernel's identity of the socket, handed back to destroy it.
    id: [u8; SOCKID_LEN],
    pub peer: SocketAddr,
    /// The socket's cookie, as `bpf_get_socket_cookie` returns it.
    pub cookie: u64,
    /// Its value in the map the dump asked for, if it has one (TCP only:
    /// the kernel reports socket storage for connection-oriented sockets).
    pub state: Option<SockState>,
}

/// A sock_diag socket, in the network namespace it was opened in.
pub struct SockDiag {
    socket: Socket,
    seq: u32,
}

impl SockDiag {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        Ok(Self { socket, seq: 0 })
    }

    /// Every socket `wanted` names in `family` (`AF_INET`, `AF_INET6`),
    /// with its value in the socket-storage map `storage`.
    pub fn dump(
        &mut self,
        family: u8,
        wanted: Wanted,
        storage: BorrowedFd<'_>,
    ) -> io::Result<Vec<DiagSocket>> {
        let fd = u32::try_from(storage.as_raw_fd()).map_err(io::Error::other)?;
        let inner = attribute(SK_DIAG_BPF_STORAGE_REQ_MAP_FD, &fd.to_ne_bytes());
        let attrs = attribute(INET_DIAG_REQ_SK_BPF_STORAGES | NLA_F_NESTED, &inner);
        let mut body = request(family, wanted, &[0; SOCKID_LEN]).to_vec();
        body.extend_from_slice(&attrs);
        self.send(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, &body)?;
        let mut sockets = Vec::new();
        loop {
            let mut buf = Vec::with_capacity(64 * 1024);
            self.socket.recv(&mut buf, 0)?;
            if buf.is_empty() {
                return Ok(sockets);
            }
            for (kind, payload) in messages(&buf) {
                match kind {
                    NLMSG_DONE => return Ok(sockets),
                    NLMSG_ERROR => {
                        return Err(error_of(payload)
                            .unwrap_or_else(|| io::Error::other("a dump ended in error 0")));
                    }
                    SOCK_DIAG_BY_FAMILY => sockets.extend(parse_socket(payload)),
                    _ => {}
                }
            }
        }
    }

    /// Destroys `socket` (its owner's next call fails with ECONNABORTED).
    pub fn destroy(&mut self, socket: &DiagSocket, wanted: Wanted) -> io::Result<()> {
        let body = request(socket.family, wanted, &socket.id);
        self.send(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, &body)?;
        let mut buf = Vec::with_capacity(4096);
        self.socket.recv(&mut buf, 0)?;
        for (kind, payload) in messages(&buf) {
            if kind == NLMSG_ERROR {
                return match error_of(payload) {
                    None => Ok(()),
                    Some(error) => Err(error),
                };
            }
        }
        Err(io::Error::other("no acknowledgement to SOCK_DESTROY"))
    }

    fn send(&mut self, kind: u16, flags: u16, body: &[u8]) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let len = u32::try_from(NLMSG_HDRLEN + body.len()).map_err(io::Error::other)?;
        let mut message = Vec::with_capacity(NLMSG_HDRLEN + body.len());
        message.extend_from_slice(&len.to_ne_bytes());
        message.extend_from_slice(&kind.to_ne_bytes());
        message.extend_from_slice(&flags.to_ne_bytes());
        message.extend_from_slice(&self.seq.to_ne_bytes());
        message.extend_from_slice(&0u32.to_ne_bytes());
        message.extend_from_slice(body);
        self.socket.send(&message, 0).map(|_| ())
    }
}

fn request(family: u8, wanted: Wanted, id: &[u8; SOCKID_LEN]) -> [u8; REQ_LEN] {
    let mut req = [0u8; REQ_LEN];
    req[0] = family;
    req[1] = wanted.protocol();
    req[4..8].copy_from_slice(&wanted.states().to_ne_bytes());
    req[8..].copy_from_slice(id);
    req
}

/// One netlink attribute, padded to 4 bytes.
fn attribute(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(4 + payload.len()).expect("small attributes");
    let mut attr = Vec::with_capacity(payload.len() + 8);
    attr.extend_from_slice(&len.to_ne_bytes());
    attr.extend_from_slice(&kind.to_ne_bytes());
    attr.extend_from_slice(payload);
    attr.resize(attr.len().next_multiple_of(4), 0);
    attr
}

/// The (type, payload) of each message in one netlink datagram.
fn messages(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let len = u32_at(buf, at) as usize;
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            break;
        }
        out.push((u16_at(buf, at + 4), &buf[at + NLMSG_HDRLEN..at + len]));
        at += len.next_multiple_of(4);
    }
    out
}

/// The attributes (type without flags, payload) in `buf`.
fn attributes(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= buf.len() {
        let len = usize::from(u16_at(buf, at));
        if len < 4 || at + len > buf.len() {
            break;
        }
        out.push((u16_at(buf, at + 2) & !NLA_F_NESTED, &buf[at + 4..at + len]));
        at += len.next_multiple_of(4);
    }
    out
}

fn error_of(payload: &[u8]) -> Option<io::Error> {
    let code = i32::from_ne_bytes(payload.get(..4)?.try_into().ok()?);
    (code != 0).then(|| io::Error::from_raw_os_error(-code))
}

fn parse_socket(payload: &[u8]) -> Option<DiagSocket> {
    let msg = payload.get(..MSG_LEN)?;
    let family = msg[0];
    let id: [u8; SOCKID_LEN] = msg[4..4 + SOCKID_LEN].try_into().ok()?;
    let dport = u16::from_be_bytes([id[2], id[3]]);
    let dst = &id[20..36];
    let ip = if i32::from(family) == libc::AF_INET {
        IpAddr::V4(Ipv4Addr::new(dst[0], dst[1], dst[2], dst[3]))
    } else {
        let octets: [u8; 16] = dst.try_into().ok()?;
        IpAddr::V6(Ipv6Addr::from(octets)).to_canonical()
    };
    let state = attributes(&payload[MSG_LEN..])
        .into_iter()
        .filter(|(kind, _)| *kind == INET_DIAG_SK_BPF_STORAGES)
        .flat_map(|(_, storages)| attributes(storages))
        .filter(|(kind, _)| *kind == SK_DIAG_BPF_STORAGE)
        .flat_map(|(_, storage)| attributes(storage))
        .find(|(kind, _)| *kind == SK_DIAG_BPF_STORAGE_MAP_VALUE)
        .and_then(|(_, value)| SockState::from_bytes(value));
    let cookie = u64::from(u32_at(&id, 40)) | (u64::from(u32_at(&id, 44)) << 32);
    Some(DiagSocket {
        family,
        id,
        cookie,
        peer: SocketAddr::new(ip, dport),
        state,
    })
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([buf[at], buf[at + 1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_attributes_split_at_their_aligned_lengths() {
        let first = attribute(7, &[1, 2, 3]);
        let second = attribute(9 | NLA_F_NESTED, &[4; 8]);
        assert_eq!(first.len(), 8, "padded to 4 bytes");
        let both = [first, second].concat();
        let parsed = attributes(&both);
        assert_eq!(parsed, [(7, &[1, 2, 3, 0][..3]), (9, &[4; 8][..])]);
    }

    #[test]
    fn a_dumped_ipv4_socket_names_its_peer() {
        let mut payload = vec![0u8; MSG_LEN];
        payload[0] = u8::try_from(libc::AF_INET).unwrap();
        payload[4 + 2..4 + 4].copy_from_slice(&8080u16.to_be_bytes());
        payload[4 + 20..4 + 24].copy_from_slice(&[10, 244, 1, 11]);
        let socket = parse_socket(&payload).unwrap();
        assert_eq!(socket.peer, "10.244.1.11:8080".parse().unwrap());
        assert!(socket.state.is_none());
    }
}
