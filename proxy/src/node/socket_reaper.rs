//! Connected sockets that follow their Service: when a backend leaves a
//! Service for good, the connected UDP sockets the socket hooks sent to it
//! are destroyed, so the owner's next call fails (ECONNABORTED) and its
//! reconnect picks a live backend. kube-proxy flushes the conntrack entries
//! of such flows for the same reason; TCP sockets only with
//! `--destroy-tcp-to-removed-backends`, as kube-proxy leaves TCP flows be.
//!
//! Sockets live in the network namespaces of the processes the hooks are
//! attached over, so each namespace of a process in the agent's cgroup
//! (and below it) is visited on a thread of its own, which enters it,
//! lists the sockets with their `SockState` through sock_diag, and destroys
//! those whose state says they went to a stale (frontend, backend) pair and
//! whose peer is still that backend. Unconnected sockets are never touched.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::SocketAddr,
    os::fd::AsFd,
    path::PathBuf,
    sync::Arc,
};

use aya::maps::{HashMap, Map, MapData};
use nix::sched::{CloneFlags, setns};
use switchyard_abi::{SOCK_STATE_MAP, SockPeer, UDP_PEERS_MAP};
use tracing::{debug, warn};

use crate::{
    model::Protocol,
    node::{
        hooked_namespaces::{Denied, namespaces},
        sock_diag::{DiagSocket, SockDiag, Wanted},
    },
    plan::stale_backends::StaleBackend,
    serve::metrics::Metrics,
};

#[derive(Clone)]
pub struct SocketReaper {
    cgroup: PathBuf,
    pin_dir: PathBuf,
    tcp: bool,
    metrics: Arc<Metrics>,
}

/// What one visit of the namespaces did, by protocol and result.
type Tally = BTreeMap<(&'static str, String), u64>;

impl SocketReaper {
    pub fn new(cgroup: PathBuf, pin_dir: PathBuf, tcp: bool, metrics: Arc<Metrics>) -> Self {
        Self {
            cgroup,
            pin_dir,
            tcp,
            metrics,
        }
    }

    /// Destroys the sockets of `stale` in the background: a visit takes a
    /// few milliseconds per namespace, which the sync loop need not wait on.
    pub fn reap(&self, stale: Vec<StaleBackend>) {
        let stale: Vec<StaleBackend> = stale
            .into_iter()
            .filter(|s| s.protocol == Protocol::Udp || (self.tcp && s.protocol == Protocol::Tcp))
            .collect();
        if stale.is_empty() {
            return;
        }
        let reaper = self.clone();
        tokio::task::spawn_blocking(move || {
            let tally = reaper.visit(&stale);
            for ((protocol, result), count) in &tally {
                reaper.metrics.count_sockets(protocol, result, *count);
            }
            debug!(?tally, stale = stale.len(), "sockets of removed backends");
        });
    }

    fn visit(&self, stale: &[StaleBackend]) -> Tally {
        let mut tally = Tally::new();
        let maps = MapData::from_pin(self.pin_dir.join(SOCK_STATE_MAP)).and_then(|storage| {
            let peers = MapData::from_pin(self.pin_dir.join(UDP_PEERS_MAP))?;
            Ok((
                storage,
                HashMap::<MapData, u64, SockPeer>::try_from(Map::HashMap(peers))?,
            ))
        });
        let (storage, udp_peers) = match maps {
            Ok(maps) => maps,
            Err(error) => {
                warn!(%error, "cannot open the socket maps: sockets of removed backends stay");
                *tally.entry(("any", "no_map".into())).or_default() += 1;
                return tally;
            }
        };
        let known = Known {
            storage: &storage,
            udp_peers: &udp_peers,
        };
        let wanted: BTreeSet<Protocol> = stale.iter().map(|s| s.protocol).collect();
        let hooked = namespaces(&self.cgroup);
        if hooked.denied > 0 {
            *tally.entry(("any", "namespace_denied".into())).or_default() += hooked.denied;
        }
        for namespace in hooked.handles {
            let result = std::thread::scope(|scope| {
                scope
                    .spawn(|| {
                        // Only this thread enters the namespace; it ends here.
                        setns(namespace.as_fd(), CloneFlags::CLONE_NEWNET)?;
                        let mut diag = SockDiag::open()?;
                        let mut tally = Tally::new();
                        for protocol in &wanted {
                            reap_in(&mut diag, *protocol, stale, &known, &mut tally);
                        }
                        Ok::<_, io::Error>(tally)
                    })
                    .join()
            });
            match result {
                Ok(Ok(found)) => {
                    for (key, count) in found {
                        *tally.entry(key).or_default() += count;
                    }
                }
                Ok(Err(error)) if Denied::is_denial(&error) => {
                    Denied::Enter.report(&error);
                    *tally.entry(("any", "namespace_denied".into())).or_default() += 1;
                }
                Ok(Err(error)) => {
                    debug!(%error, "cannot list a namespace's sockets");
                    *tally.entry(("any", "namespace_error".into())).or_default() += 1;
                }
                Err(_) => {
                    *tally.entry(("any", "namespace_error".into())).or_default() += 1;
                }
            }
        }
        tally
    }
}

/// Where the hooks' record of each socket is: connected UDP sockets in a
/// table by cookie, TCP sockets in their storage (which sock_diag reports).
struct Known<'a> {
    storage: &'a MapData,
    udp_peers: &'a HashMap<MapData, u64, SockPeer>,
}

fn reap_in(
    diag: &mut SockDiag,
    protocol: Protocol,
    stale: &[StaleBackend],
    known: &Known<'_>,
    tally: &mut Tally,
) {
    let (wanted, name) = match protocol {
        Protocol::Udp => (Wanted::ConnectedUdp, "UDP"),
        Protocol::Tcp => (Wanted::TcpConnections, "TCP"),
        Protocol::Sctp => return,
    };
    for family in [libc::AF_INET, libc::AF_INET6] {
        let family = u8::try_from(family).expect("address families fit u8");
        let sockets = match diag.dump(family, wanted, known.storage.fd().as_fd()) {
            Ok(sockets) => sockets,
            Err(error) => {
                warn!(%error, protocol = name, "sock_diag dump failed");
                *tally.entry((name, "dump_error".into())).or_default() += 1;
                continue;
            }
        };
        for socket in sockets
            .iter()
            .filter(|s| sent_to_stale(s, protocol, stale, known))
        {
            let result = match diag.destroy(socket, wanted) {
                Ok(()) => "destroyed".to_owned(),
                // The kernel lacks CONFIG_INET_DIAG_DESTROY.
                Err(error) if error.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    warn!(
                        protocol = name,
                        "the kernel cannot destroy sockets (CONFIG_INET_DIAG_DESTROY)"
                    );
                    "unsupported".to_owned()
                }
                // Closed meanwhile.
                Err(error) if error.raw_os_error() == Some(libc::ENOENT) => "gone".to_owned(),
                Err(error) => {
                    warn!(%error, peer = %socket.peer, "destroying a socket failed");
                    "error".to_owned()
                }
            };
            *tally.entry((name, result)).or_default() += 1;
        }
    }
}

/// The socket is still connected to a stale backend, and went there for the
/// frontend that lost it (not for another Service that keeps it, nor
/// straight to the pod's address).
fn sent_to_stale(
    socket: &DiagSocket,
    protocol: Protocol,
    stale: &[StaleBackend],
    known: &Known<'_>,
) -> bool {
    let peers: Vec<SockPeer> = match protocol {
        Protocol::Udp => known
            .udp_peers
            .get(&socket.cookie, 0)
            .ok()
            .into_iter()
            .collect(),
        _ => socket
            .state
            .map(|state| state.peers.to_vec())
            .unwrap_or_default(),
    };
    stale.iter().any(|s| {
        s.protocol == protocol
            && s.backend == socket.peer
            && remembers(&peers, s.frontend, s.backend)
    })
}

fn remembers(peers: &[SockPeer], frontend: SocketAddr, backend: SocketAddr) -> bool {
    peers.iter().any(|peer| {
        peer.backend_id != 0
            && socket_addr(peer.frontend, peer.frontend_port) == frontend
            && socket_addr(peer.backend, peer.backend_port) == backend
    })
}

fn socket_addr(addr: switchyard_abi::Addr, port_be: u16) -> SocketAddr {
    SocketAddr::new(std::net::IpAddr::from(addr), u16::from_be(port_be))
}
