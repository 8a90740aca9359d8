//! Map names, sizes and entry layouts.
//!
//! The service map follows Cilium's `lb4_key`/`lb4_service` shape: one hash
//! map holds, per frontend, slot 0 with the backend count and slots 1..=N
//! each naming a backend id; a second map resolves ids to addresses. Picking
//! a backend is two lookups and no loop, and the agent can change a service
//! slot by slot without a window where the frontend points at nothing.

use crate::Addr;

/// Pinned map names. The `_V1` suffix is the layout version: a changed layout
/// gets a new name, because the kernel refuses to reuse a pinned map whose
/// key or value size differs, and an agent upgrade must not trip on that.
pub const SERVICES_MAP: &str = "SY_SERVICES_V2";
pub const BACKENDS_MAP: &str = "SY_BACKENDS_V1";
pub const SOCK_STATE_MAP: &str = "SY_SOCK_STATE_V1";
pub const UDP_PEERS_MAP: &str = "SY_UDP_PEERS_V1";
pub const AFFINITY_MAP: &str = "SY_AFFINITY_V1";
/// Every allocated ClusterIP ([`Addr`] -> 1), kube-proxy's `cluster-ips`
/// set: a connection to one on a port or protocol no Service serves is
/// refused. A hash map: looked up on every socket call that is no frontend.
pub const CLUSTER_IPS_MAP: &str = "SY_CLUSTER_IPS_V1";
/// The service CIDRs, an LPM trie of [`Addr`] -> 1 (IPv4 prefixes count
/// the 96 bits of the mapped-address prefix too): a connection to an
/// address in them that is no ClusterIP is dropped, as kube-proxy drops
/// traffic to unallocated ClusterIPs, never sent on to the default route.
pub const SERVICE_CIDRS_MAP: &str = "SY_SERVICE_CIDRS_V1";
/// The source address of each network namespace the socket hooks serve,
/// by netns cookie ([`NetnsSource`]): what `loadBalancerSourceRanges` are
/// checked against for a socket that connects unbound, whose own source
/// the kernel picks only after the connect hook.
pub const NETNS_SOURCES_MAP: &str = "SY_NETNS_SRC_V1";

/// Capacity of the service map: frontends times (1 + backends per frontend),
/// sized for 50k Services of 4 endpoints with room for more frontends per
/// Service (dual stack, NodePorts). Both maps allocate entries as they are
/// used, so a small cluster pays for what it has, not for this ceiling.
/// A pinned map keeps the capacity it was created with: a new one takes
/// effect after `switchyard cleanup`.
pub const SERVICES_MAX_ENTRIES: u32 = 524_288;
pub const BACKENDS_MAX_ENTRIES: u32 = 262_144;
/// Two addresses (IPv4 and IPv6) for each of 50k Services, with room.
pub const CLUSTER_IPS_MAX_ENTRIES: u32 = 131_072;
pub const SERVICE_CIDRS_MAX_ENTRIES: u32 = 64;
/// Pods (and the host) on one node, with room.
pub const NETNS_SOURCES_MAX_ENTRIES: u32 = 16_384;
/// Services one socket's state remembers at once (see [`SockState`]).
pub const SOCK_PEERS: usize = 4;
/// connect()ed UDP sockets to a Service, by socket cookie: how the agent
/// finds the ones to destroy when their backend leaves (sock_diag reports
/// no socket storage for UDP sockets). Each entry goes when its socket
/// closes (the `sock_release` hook), so the map holds live sockets only; a
/// full map leaves a new socket out of it (it then keeps a removed
/// backend), never another's entry.
pub const UDP_PEERS_MAX_ENTRIES: u32 = 65_536;

/// Session-affinity records, one per client and frontend. LRU: a client
/// idle long enough to be evicted would have timed out anyway.
pub const AFFINITY_MAX_ENTRIES: u32 = 131_072;

/// IANA protocol numbers, as in `bpf_sock_addr.protocol`.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// One slot of one frontend (VIP, port, protocol).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub addr: Addr,
    /// Network byte order, as in `bpf_sock_addr.user_port`.
    pub port: u16,
    /// 0 is the frontend itself; 1..=count are its backends.
    pub slot: u16,
    pub proto: u8,
    /// [`SCOPE_INTERNAL`] or [`SCOPE_EXTERNAL`].
    pub scope: u8,
    pub pad: [u8; 2],
}

/// What the socket hooks look up: traffic that starts on this node. For a
/// NodePort, LoadBalancer IP or externalIP it reaches every endpoint, as
/// kube-proxy sends node-local traffic to external addresses through the
/// cluster-wide chain whatever `externalTrafficPolicy` says.
pub const SCOPE_INTERNAL: u8 = 0;
/// What the per-packet path looks up: traffic that arrived from outside,
/// balanced by `externalTrafficPolicy`. Cilium splits its service map the
/// same way (`SCOPE_EXT` / `SCOPE_INT`).
pub const SCOPE_EXTERNAL: u8 = 1;

impl ServiceKey {
    pub const fn new(addr: Addr, port_be: u16, proto: u8, slot: u16) -> Self {
        Self::scoped(addr, port_be, proto, SCOPE_INTERNAL, slot)
    }

    pub const fn scoped(addr: Addr, port_be: u16, proto: u8, scope: u8, slot: u16) -> Self {
        Self {
            addr,
            port: port_be,
            slot,
            proto,
            scope,
            pad: [0; 2],
        }
    }

    /// The same frontend at another slot.
    pub const fn with_slot(&self, slot: u16) -> Self {
        Self::scoped(self.addr, self.port, self.proto, self.scope, slot)
    }
}

/// Slot-0 flag: only sources in the frontend's `loadBalancerSourceRanges`
/// (the source-range map) may use it; the rest are dropped.
pub const FRONTEND_SOURCE_RANGES: u16 = 1;
/// Slot-0 flag (external scope): `externalTrafficPolicy: Cluster`, so a
/// connection sent to a backend on another node has its source NATed to
/// this node, which keeps the reply coming back through here.
pub const FRONTEND_SNAT_REMOTE: u16 = 2;
/// Slot-0 flag (external scope): `externalTrafficPolicy: Local` with
/// endpoints on other nodes only. Packets are dropped, not refused, as
/// kube-proxy does, so a load balancer's retry finds a node that has one.
pub const FRONTEND_DROP_NO_LOCAL: u16 = 4;
/// Slot-0 flag (internal scope): a ClusterIP. The per-packet path serves
/// it to packets from outside the node when the node config allows
/// (`NODE_CLUSTER_IP_FROM_OUTSIDE`), NATing a remote backend's source
/// unless the client is in a cluster CIDR, as kube-proxy's ClusterIP rules
/// masquerade off-cluster sources.
pub const FRONTEND_CLUSTER_IP: u16 = 8;

/// Slot 0 carries `count` and the frontend's settings (and in
/// `backend_id` its Maglev table size, 0 for random choice: see
/// [`crate::maglev`]); slots 1..=count carry `backend_id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    pub backend_id: u32,
    /// Backends in slots 1..=count; 0 means the service refuses connections.
    pub count: u16,
    pub flags: u16,
    /// `sessionAffinity: ClientIP` timeout in seconds; 0 is no affinity.
    pub affinity_timeout: u32,
    /// Slot 0: the Service port's entry of the service counters; a slot:
    /// the (Service port, backend) pair's entry of the backend counters
    /// (see `stats`; [`crate::COUNTER_NONE`] counts nothing).
    pub counter: u32,
}

impl ServiceValue {
    pub const fn frontend(count: u16, flags: u16, affinity_timeout: u32, counter: u32) -> Self {
        Self {
            backend_id: 0,
            count,
            flags,
            affinity_timeout,
            counter,
        }
    }

    /// A slot-0 value whose frontend picks by Maglev over a table of
    /// `size` buckets (0: random choice).
    pub const fn with_maglev(self, size: u32) -> Self {
        Self {
            backend_id: size,
            ..self
        }
    }

    /// Slot 0: the Maglev table size, 0 when the frontend picks at random.
    pub const fn maglev_table_size(&self) -> u32 {
        self.backend_id
    }

    pub const fn slot(backend_id: u32, counter: u32) -> Self {
        Self {
            backend_id,
            count: 0,
            flags: 0,
            affinity_timeout: 0,
            counter,
        }
    }
}

/// A client of a frontend. In the socket path the client is its network
/// namespace (the socket's netns cookie): at connect() time a socket has no
/// source address yet, and a pod is exactly one network namespace. In the
/// per-packet path it is the source address folded by [`client_of_addr`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub client: u64,
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub pad: [u8; 5],
}

impl AffinityKey {
    pub const fn new(client: u64, frontend: &ServiceKey) -> Self {
        Self {
            client,
            addr: frontend.addr,
            port: frontend.port,
            proto: frontend.proto,
            pad: [0; 5],
        }
    }
}

/// A packet client's identity for [`AffinityKey`]: its address folded to 64
/// bits with the top bit set. Netns cookies count up from 1 and never reach
/// the top bit, so the two kinds of client cannot meet; two IPv6 clients
/// that fold alike share an affinity record, which only means they are sent
/// to the same backend.
pub const fn client_of_addr(addr: &Addr) -> u64 {
    let high = ((addr.words[0] as u64) << 32) | addr.words[1] as u64;
    let low = ((addr.words[2] as u64) << 32) | addr.words[3] as u64;
    (high ^ low) | (1 << 63)
}

/// The backend a client was last sent to, by slot and id: the kernel checks
/// that the slot still names that id, so a backend removed from the service
/// (or moved) ends the affinity without any userspace cleanup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    /// `bpf_ktime_get_ns()` of the last connection that used it.
    pub last_used_ns: u64,
    pub backend_id: u32,
    pub slot: u16,
    pub pad: u16,
}

/// A backend's address; keyed by backend id (`u32`, never 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    /// [`BACKEND_LOCAL`].
    pub flags: u8,
}

/// The backend runs on this node: the per-packet path never NATs the
/// source of a connection to it.
pub const BACKEND_LOCAL: u8 = 1;

impl Backend {
    pub const fn new(addr: Addr, port_be: u16, proto: u8) -> Self {
        Self::with_flags(addr, port_be, proto, 0)
    }

    pub const fn with_flags(addr: Addr, port_be: u16, proto: u8, flags: u8) -> Self {
        Self {
            addr,
            port: port_be,
            proto,
            flags,
        }
    }
}

/// One Service a socket talked to: the frontend it asked for and the
/// backend it was sent to. `backend_id` 0 marks an unused entry (ids start
/// at 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockPeer {
    pub backend: Addr,
    pub frontend: Addr,
    /// Network byte order.
    pub backend_port: u16,
    /// Network byte order.
    pub frontend_port: u16,
    pub backend_id: u32,
    /// The frontend's slot that named the backend: while it still does,
    /// the backend is still one of the Service's.
    pub slot: u16,
    pub pad: u16,
}

/// What the socket hooks keep per socket, in socket-local storage
/// (`BPF_MAP_TYPE_SK_STORAGE`): it lives exactly as long as its socket, so
/// one pod opening sockets can never evict another's. The reverse
/// translation of replies and getpeername() reads `peers`; an unconnected
/// UDP socket's next datagram to the same frontend goes to the same backend
/// while that backend lives; and the agent reads it through sock_diag to
/// find the connected sockets of a removed backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockState {
    pub peers: [SockPeer; SOCK_PEERS],
    /// Which entry a new frontend takes once all are used (round robin).
    pub next: u32,
    pub pad: u32,
}

impl SockState {
    /// The value as the kernel hands it out byte for byte (sock_diag's
    /// `SK_DIAG_BPF_STORAGE_MAP_VALUE`); `None` if the length differs.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != core::mem::size_of::<Self>() {
            return None;
        }
        let u32_at = |at: usize| {
            u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let u16_at = |at: usize| u16::from_ne_bytes([bytes[at], bytes[at + 1]]);
        let addr_at = |at: usize| Addr {
            words: [u32_at(at), u32_at(at + 4), u32_at(at + 8), u32_at(at + 12)],
        };
        let mut state = Self::default();
        let peer_size = core::mem::size_of::<SockPeer>();
        for (index, peer) in state.peers.iter_mut().enumerate() {
            let at = index * peer_size;
            *peer = SockPeer {
                backend: addr_at(at),
                frontend: addr_at(at + 16),
                backend_port: u16_at(at + 32),
                frontend_port: u16_at(at + 34),
                backend_id: u32_at(at + 36),
                slot: u16_at(at + 40),
                pad: u16_at(at + 42),
            };
        }
        let tail = SOCK_PEERS * peer_size;
        state.next = u32_at(tail);
        state.pad = u32_at(tail + 4);
        Some(state)
    }

    /// The entry for a reply from `backend:port`, if the socket was sent there.
    pub fn peer_for_backend(&self, backend: &Addr, port_be: u16) -> Option<&SockPeer> {
        self.peers.iter().find(|peer| {
            peer.backend_id != 0 && peer.backend == *backend && peer.backend_port == port_be
        })
    }
}

/// The addresses a network namespace's unbound sockets leave from, per
/// family: the source its routes pick towards the outside. The unspecified
/// address (all zero) where it has none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NetnsSource {
    pub v4: Addr,
    pub v6: Addr,
}

const _: () = assert!(core::mem::size_of::<Addr>() == 16);
const _: () = assert!(core::mem::size_of::<NetnsSource>() == 32);
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 24);
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 16);
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 32);
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 16);
const _: () = assert!(core::mem::size_of::<Backend>() == 20);
const _: () = assert!(core::mem::size_of::<SockPeer>() == 44);
const _: () = assert!(core::mem::size_of::<SockState>() == 184);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is #[repr(C)], made only of integers, with every
    // padding byte an explicit field, so any bit pattern is a valid value.
    unsafe impl aya::Pod for super::Addr {}
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::SockState {}
    unsafe impl aya::Pod for super::SockPeer {}
    unsafe impl aya::Pod for super::AffinityKey {}
    unsafe impl aya::Pod for super::AffinityValue {}
    unsafe impl aya::Pod for super::NetnsSource {}
}
