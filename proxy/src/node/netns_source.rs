//! The source address of each network namespace the socket hooks serve,
//! for `loadBalancerSourceRanges` on the socket path: at connect() an
//! unbound socket has no source yet (the kernel picks it after the hook),
//! so the hooks check the ranges against the address its namespace sends
//! from, by netns cookie (`SY_NETNS_SRC_V1`).
//!
//! A namespace's source is what its routing picks towards the outside: a
//! UDP socket connected to a documentation address (RFC 5737 / 3849),
//! which sends nothing, reports it; a namespace without such a route has
//! none, and its sockets are left untranslated for the load balancer
//! itself to judge. Namespaces are found as the socket reaper finds them (the
//! processes of the hooked cgroup, and the agent's own, which is the
//! node's); one is entered only the first time it is seen, and its entry
//! goes when no process of the cgroup is left in it.

use std::{
    collections::BTreeMap,
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::{
        fd::{AsFd, AsRawFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
};

use aya::maps::{HashMap, MapData};
use nix::sched::{CloneFlags, setns};
use switchyard_abi::{Addr, NETNS_SOURCES_MAP, NetnsSource};
use tracing::debug;

use crate::{
    datapath::{DatapathError, feature_probe, kernel_features::Feature, pinned::open_pinned},
    node::hooked_namespaces::{self, Denied},
};

/// Where unbound sockets of a namespace are asked to go, to learn their
/// source: documentation prefixes, never routed anywhere real, and a UDP
/// connect sends nothing.
const PROBE_V4: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 9);
const PROBE_V6: SocketAddr = SocketAddr::new(
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    9,
);

pub struct NetnsSources {
    cgroup: PathBuf,
    map: HashMap<MapData, u64, NetnsSource>,
    /// Namespaces written, by (device, inode) of their nsfs file, with
    /// their cookie.
    known: BTreeMap<(u64, u64), u64>,
}

impl NetnsSources {
    pub fn open(cgroup: &Path, pin_dir: &Path) -> Result<Self, DatapathError> {
        Ok(Self {
            cgroup: cgroup.to_path_buf(),
            map: open_pinned(pin_dir, NETNS_SOURCES_MAP)?,
            known: BTreeMap::new(),
        })
    }

    /// Writes the namespaces that appeared and forgets those that went.
    /// Returns how many namespaces are known.
    pub fn refresh(&mut self) -> usize {
        // Before 5.14 no namespace's cookie can be read: the hooks leave
        // every socket untranslated there (the kernel table says so once).
        if !feature_probe::kernel_features().available(Feature::NetnsCookie) {
            return 0;
        }
        let mut handles = hooked_namespaces::namespaces(&self.cgroup).handles;
        if let Ok(own) = File::open("/proc/self/ns/net") {
            handles.push(own);
        }
        let mut present = BTreeMap::new();
        for handle in handles {
            let Ok(meta) = handle.metadata() else {
                continue;
            };
            let id = (meta.dev(), meta.ino());
            if present.contains_key(&id) {
                continue;
            }
            if let Some(&cookie) = self.known.get(&id) {
                present.insert(id, cookie);
                continue;
            }
            match learn(&handle) {
                Ok((cookie, source)) => {
                    if let Err(error) = self.map.insert(cookie, source, 0) {
                        debug!(%error, "cannot record a namespace's source");
                        continue;
                    }
                    present.insert(id, cookie);
                }
                Err(error) if Denied::is_denial(&error) => Denied::Enter.report(&error),
                Err(error) => debug!(%error, "cannot learn a namespace's source"),
            }
        }
        for (id, cookie) in &self.known {
            if !present.contains_key(id) {
                let _gone_already = self.map.remove(cookie);
            }
        }
        self.known = present;
        self.known.len()
    }
}

/// The cookie and source of the namespace `handle` names, from a thread
/// that enters it (and ends there).
fn learn(handle: &File) -> io::Result<(u64, NetnsSource)> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(handle.as_fd(), CloneFlags::CLONE_NEWNET)?;
                let socket = UdpSocket::bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0))?;
                let cookie = netns_cookie(&socket)?;
                let source = NetnsSource {
                    v4: source_towards(PROBE_V4).unwrap_or_default(),
                    v6: source_towards(PROBE_V6).unwrap_or_default(),
                };
                Ok((cookie, source))
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    })
}

/// The address this namespace's routing picks to reach `probe`.
fn source_towards(probe: SocketAddr) -> Option<Addr> {
    let any = match probe {
        SocketAddr::V4(_) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
        SocketAddr::V6(_) => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0),
    };
    let socket = UdpSocket::bind(any).ok()?;
    socket.connect(probe).ok()?;
    let local = socket.local_addr().ok()?.ip();
    (!local.is_unspecified()).then(|| Addr::from(local))
}

/// `SO_NETNS_COOKIE` (Linux 5.14): the id `bpf_get_netns_cookie` returns.
pub fn netns_cookie(socket: &UdpSocket) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = libc::socklen_t::try_from(size_of::<u64>()).unwrap_or(8);
    // SAFETY: the fd is open for the call; the kernel writes at most `len`
    // bytes into `cookie`, which is that large.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(io::Error::last_os_error())
    }
}
