//! The per-packet path's own maps: connection tracking, this node's
//! addresses and timeouts, `loadBalancerSourceRanges`, and counters.
//!
//! A translated connection has two conntrack entries, each keyed by a packet
//! exactly as it appears on the wire, so either direction is one lookup:
//! the forward entry (client -> frontend) names the backend, the reply entry
//! (backend -> client, or backend -> this node when the source was NATed)
//! names the frontend and client to restore.

use crate::Addr;

pub const CONNTRACK_MAP: &str = "SY_CT_V1";
pub const NODE_MAP: &str = "SY_NODE_V1";
pub const SOURCE_RANGES_MAP: &str = "SY_SRC_RANGES_V1";
pub const COUNTERS_MAP: &str = "SY_COUNTERS_V1";

/// Two entries per connection. LRU: under pressure the least recently used
/// flow is forgotten (and counted), never the map refusing new ones.
pub const CONNTRACK_MAX_ENTRIES: u32 = 262_144;
pub const SOURCE_RANGES_MAX_ENTRIES: u32 = 16_384;

/// Source ports this node NATs connections to: above Linux's default
/// ephemeral range (32768-60999), so a reply is never mistaken for one to
/// a socket of the node's own, and clear of NodePorts (30000-32767).
pub const SNAT_PORT_MIN: u16 = 61_000;
pub const SNAT_PORT_MAX: u16 = 65_535;
/// Free ports tried per new connection before it is dropped.
pub const SNAT_PORT_ATTEMPTS: u32 = 8;

/// One direction of one connection, as its packets carry it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}

impl FlowKey {
    pub const fn new(src: Addr, dst: Addr, sport_be: u16, dport_be: u16, proto: u8) -> Self {
        Self {
            src,
            dst,
            sport: sport_be,
            dport: dport_be,
            proto,
            pad: [0; 3],
        }
    }
}

/// [`Flow::kind`] of a client's packets towards a frontend.
pub const FLOW_FORWARD: u8 = 1;
/// [`Flow::kind`] of a backend's packets back towards the client.
pub const FLOW_REPLY: u8 = 2;

/// What to do with the packets of one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flow {
    /// `bpf_ktime_get_ns()` of the latest packet.
    pub last_seen_ns: u64,
    /// Forward: the backend (new destination). Reply: the frontend (new
    /// source).
    pub addr: Addr,
    /// Forward: this node's address the source becomes. Reply: the client
    /// (new destination). Meaningful only when `snat` is set.
    pub snat_addr: Addr,
    /// Network byte order; pairs with `addr`.
    pub port: u16,
    /// Network byte order; pairs with `snat_addr`.
    pub snat_port: u16,
    /// Forward: the backend's id when chosen, to notice it went away.
    pub backend_id: u32,
    /// [`FLOW_FORWARD`] or [`FLOW_REPLY`].
    pub kind: u8,
    /// 1 when the source was NATed to this node.
    pub snat: u8,
    /// 1 once a FIN or RST went this way. Written with a plain store, not a
    /// read-modify-write: each flag has a byte of its own.
    pub closing: u8,
    /// 1 once a packet used this entry after it was made; on the reply
    /// entry it means the backend answered.
    pub seen: u8,
    pub pad: [u8; 4],
}

impl Flow {
    /// The key of the other direction's entry of the same connection, given
    /// this entry's own key.
    pub const fn partner(&self, key: &FlowKey) -> FlowKey {
        match (self.kind, self.snat != 0) {
            (FLOW_FORWARD, true) => FlowKey::new(
                self.addr,
                self.snat_addr,
                self.port,
                self.snat_port,
                key.proto,
            ),
            (FLOW_FORWARD, false) => {
                FlowKey::new(self.addr, key.src, self.port, key.sport, key.proto)
            }
            (_, true) => FlowKey::new(
                self.snat_addr,
                self.addr,
                self.snat_port,
                self.port,
                key.proto,
            ),
            (_, false) => FlowKey::new(key.dst, self.addr, key.dport, self.port, key.proto),
        }
    }
}

/// Keys of the node map, an array of [`Addr`]: the addresses NATed
/// connections leave from, zero when the node has none of that family. One
/// entry per family rather than a struct of both: the verifier then sees a
/// bounds-checked lookup instead of an offset computed from a flag.
pub const NODE_SNAT_IPV4: u32 = 0;
pub const NODE_SNAT_IPV6: u32 = 1;
pub const NODE_ENTRIES: u32 = 2;

/// Idle times after which the agent forgets a connection, in seconds
/// (kube-proxy's `--conntrack-*` flags). The kernel side keeps no clocks of
/// its own: an entry lives until collected, or evicted under pressure.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowTimeouts {
    /// TCP before the backend answered.
    pub tcp_syn: u32,
    pub tcp_established: u32,
    /// TCP after a FIN or RST.
    pub tcp_closing: u32,
    /// UDP before the backend answered.
    pub udp: u32,
    /// UDP once answered.
    pub udp_stream: u32,
    pub pad: u32,
}

impl Default for FlowTimeouts {
    /// kube-proxy's and the kernel's defaults: TCP established 24 h,
    /// close-wait 1 h, UDP 30 s and 120 s once a stream.
    fn default() -> Self {
        Self {
            tcp_syn: 60,
            tcp_established: 86_400,
            tcp_closing: 3_600,
            udp: 30,
            udp_stream: 120,
            pad: 0,
        }
    }
}

impl FlowTimeouts {
    /// The idle limit of a connection in seconds, from what its two entries
    /// have seen.
    pub const fn for_flow(&self, proto: u8, answered: bool, closing: bool) -> u32 {
        match (proto, answered, closing) {
            (crate::PROTO_TCP, _, true) => self.tcp_closing,
            (crate::PROTO_TCP, true, false) => self.tcp_established,
            (crate::PROTO_TCP, false, false) => self.tcp_syn,
            (_, true, _) => self.udp_stream,
            _ => self.udp,
        }
    }
}

/// The data of a `loadBalancerSourceRanges` LPM key: a frontend, then the
/// source prefix. The prefix length counts [`SOURCE_RANGE_FRONTEND_BITS`]
/// plus the source prefix's bits (IPv4 prefixes also the 96 bits of the
/// mapped-address prefix).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRange {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub pad: u8,
    pub src: Addr,
}

pub const SOURCE_RANGE_FRONTEND_BITS: u32 = 160;

/// Indexes of the per-CPU counter array, and their metric labels.
pub const COUNTER_TRANSLATED_NEW: u32 = 0;
pub const COUNTER_TRANSLATED: u32 = 1;
pub const COUNTER_REPLY_TRANSLATED: u32 = 2;
pub const COUNTER_REJECT_NO_ENDPOINTS: u32 = 3;
pub const COUNTER_DROP_SOURCE_RANGE: u32 = 4;
pub const COUNTER_DROP_FRAGMENT: u32 = 5;
pub const COUNTER_DROP_SNAT_PORTS: u32 = 6;
pub const COUNTER_DROP_CONNTRACK: u32 = 7;
pub const COUNTER_DROP_UNREJECTABLE: u32 = 8;
pub const COUNTER_PASS_NO_ROUTE: u32 = 9;
pub const COUNTER_BACKEND_REPLACED: u32 = 10;
pub const COUNTER_DROP_NO_LOCAL: u32 = 11;
pub const COUNTERS_LEN: u32 = 12;

/// `(metric, reason)` per counter index.
pub const COUNTER_LABELS: [(&str, &str); COUNTERS_LEN as usize] = [
    ("translated", "new_connection"),
    ("translated", "established"),
    ("translated", "reply"),
    ("rejected", "no_endpoints"),
    ("dropped", "source_range"),
    ("dropped", "fragment"),
    ("dropped", "snat_ports_exhausted"),
    ("dropped", "conntrack_insert"),
    ("dropped", "cannot_reject"),
    ("passed", "no_route"),
    ("translated", "backend_replaced"),
    ("dropped", "no_local_endpoints"),
];

const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<Flow>() == 56);
const _: () = assert!(core::mem::size_of::<FlowTimeouts>() == 24);
const _: () = assert!(core::mem::size_of::<SourceRange>() == 36);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: as in `maps`: #[repr(C)], integers only, explicit padding.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::Flow {}
    unsafe impl aya::Pod for super::SourceRange {}
}
