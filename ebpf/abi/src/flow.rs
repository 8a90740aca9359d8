//! The per-packet path's own maps: connection tracking, this node's
//! addresses and timeouts, `loadBalancerSourceRanges`, and counters.
//!
//! A translated connection has two conntrack entries, each keyed by a packet
//! exactly as it appears on the wire, so either direction is one lookup:
//! the forward entry (client -> frontend) names the backend, the reply entry
//! (backend -> client, or backend -> this node when the source was NATed)
//! names the frontend and client to restore.

use crate::Addr;

pub const CONNTRACK_MAP: &str = "SY_CT_V2";
pub const NODE_MAP: &str = "SY_NODE_V1";
pub const SOURCE_RANGES_MAP: &str = "SY_SRC_RANGES_V1";
pub const COUNTERS_MAP: &str = "SY_COUNTERS_V1";

/// Two entries per connection. LRU: under pressure the least recently used
/// flow is forgotten (and counted), never the map refusing new ones.
pub const CONNTRACK_MAX_ENTRIES: u32 = 262_144;
pub const SOURCE_RANGES_MAX_ENTRIES: u32 = 16_384;

/// The node's settings for the per-packet path, the one entry of an array
/// map the agent writes at start: where NAT source ports come from, and
/// which packets from outside it serves.
pub const NODE_CONFIG_MAP: &str = "SY_NODE_CFG_V1";
/// The sources kube-proxy's detect-local treats as local (the cluster's
/// pod CIDRs, `--cluster-cidr`, or this node's `spec.podCIDRs`), an LPM trie
/// of [`Addr`] (IPv4 prefixes count the 96 bits of the mapped-address
/// prefix too). Read unless [`NODE_LOCAL_BY_DEVICE`] is set.
pub const CLUSTER_CIDRS_MAP: &str = "SY_CLUSTER_CIDRS_V1";
pub const CLUSTER_CIDRS_MAX_ENTRIES: u32 = 64;
/// The devices whose packets detect-local treats as local (kube-proxy's
/// `BridgeInterface` and `InterfaceNamePrefix` modes): ifindex `u32` -> `u8`.
/// Read when [`NODE_LOCAL_BY_DEVICE`] is set.
pub const LOCAL_DEVICES_MAP: &str = "SY_LOCAL_DEVS_V1";
pub const LOCAL_DEVICES_MAX_ENTRIES: u32 = 256;
/// The devices XDP may send a frame into (a device map, ifindex ->
/// ifindex): those the XDP program is on, whose drivers take XDP frames.
/// XDP sends a frame out of the device it came by (`XDP_TX`) or into one
/// of these; any other next hop is tc's.
pub const XDP_DEVICES_MAP: &str = "SY_XDP_DEVS_V1";
pub const XDP_DEVICES_MAX_ENTRIES: u32 = 256;

/// Consecutive ports `first..first + count`, host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub first: u16,
    pub count: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeConfig {
    /// Source ports connections NATed to this node may take: the agent
    /// keeps them clear of the node's own ephemeral ports
    /// (`ip_local_port_range`) and of NodePorts, so a reply is never
    /// mistaken for one to a socket of the node's own. Two ranges, because
    /// those two carve 1024-65535 into a low and a high part; the second
    /// may be empty.
    pub nat_ports: [PortRange; 2],
    /// `NODE_*` switches.
    pub flags: u32,
}

/// [`NodeConfig::flags`]: packets from outside to a ClusterIP are served
/// as kube-proxy serves them (DNAT to any endpoint, masqueraded unless the
/// source is in a cluster CIDR).
pub const NODE_CLUSTER_IP_FROM_OUTSIDE: u32 = 1;
/// [`NodeConfig::flags`]: kube-proxy's `masqueradeAll`: a packet from
/// outside to a ClusterIP is masqueraded whatever its source.
pub const NODE_MASQUERADE_ALL: u32 = 1 << 1;
/// [`NodeConfig::flags`]: detect-local judges a packet by the device it came
/// in on ([`LOCAL_DEVICES_MAP`]), not by its source address.
pub const NODE_LOCAL_BY_DEVICE: u32 = 1 << 2;
/// [`NodeConfig::flags`]: the proxy is handing the node back (`switchyard
/// cleanup`): connections it tracks are still translated until they end,
/// and every new one is left to the stack (kube-proxy's rules, started
/// again before).
pub const NODE_DRAIN: u32 = 1 << 3;

impl NodeConfig {
    /// How many NAT ports there are in all.
    pub const fn nat_port_count(&self) -> u32 {
        self.nat_ports[0].count as u32 + self.nat_ports[1].count as u32
    }

    /// The `index`th NAT port (`index < nat_port_count()`), host order.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "an offset within one range is below its u16 count"
    )]
    pub const fn nat_port(&self, index: u32) -> u16 {
        let low = self.nat_ports[0].count as u32;
        if index < low {
            self.nat_ports[0].first.wrapping_add(index as u16)
        } else {
            self.nat_ports[1].first.wrapping_add((index - low) as u16)
        }
    }
}

/// Ports probed per new connection before it is dropped (see `NatPorts`):
/// each probe takes a free port or one whose connection is over.
pub const SNAT_PORT_ATTEMPTS: u32 = 32;

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
    // TCP's progress, one byte per fact so that racing CPUs only ever store
    // whole bytes of the same value, never read-modify-write a shared word.
    // `flow_state` turns both entries' facts into netfilter's state.
    /// 1 once a FIN went this way.
    pub fin: u8,
    /// 1 once a packet used this entry after it was made (forward: a packet
    /// other than a bare SYN); on the reply entry it means the backend
    /// answered.
    pub seen: u8,
    /// 1 once an RST went this way.
    pub rst: u8,
    /// 1 once a FIN went the other way: the other direction's packet
    /// writes it here, so this direction knows to acknowledge it.
    pub peer_fin: u8,
    /// 1 once an ACK went this way after `peer_fin`: the other side's FIN
    /// is acknowledged.
    pub peer_fin_acked: u8,
    pub pad: u8,
    /// The connection's Service port and (Service port, backend) counter
    /// entries, on both of its entries: its packets and bytes are counted
    /// there (see `stats`).
    pub service_counter: u32,
    pub backend_counter: u32,
}

impl Flow {
    /// The reply entry of a new connection whose forward packets carry
    /// `forward` (client -> frontend): it restores the frontend as source,
    /// and the client as destination when the client was NATed to this
    /// node (`snat`).
    pub fn reply_of(forward: &FlowKey, snat: bool, now_ns: u64, counters: [u32; 2]) -> Self {
        let mut reply = Self {
            last_seen_ns: now_ns,
            addr: forward.dst,
            port: forward.dport,
            kind: FLOW_REPLY,
            service_counter: counters[0],
            backend_counter: counters[1],
            ..Self::default()
        };
        if snat {
            reply.snat = 1;
            reply.snat_addr = forward.src;
            reply.snat_port = forward.sport;
        }
        reply
    }

    /// Whether `other`, found at `other_key`, is the other half of this
    /// entry's connection (this one at `key`): the other direction, and
    /// pointing back here rather than at a newer connection on the same
    /// tuple.
    pub fn pairs_with(&self, key: &FlowKey, other: &Flow, other_key: &FlowKey) -> bool {
        other.kind != self.kind && other.partner(other_key) == *key
    }

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
/// A later fragment addressed to a frontend whose datagram opened no
/// connection (its first fragment was dropped or refused).
pub const COUNTER_DROP_FRAGMENT: u32 = 5;
pub const COUNTER_DROP_SNAT_PORTS: u32 = 6;
pub const COUNTER_DROP_CONNTRACK: u32 = 7;
pub const COUNTER_DROP_UNREJECTABLE: u32 = 8;
pub const COUNTER_PASS_NO_ROUTE: u32 = 9;
pub const COUNTER_BACKEND_REPLACED: u32 = 10;
pub const COUNTER_DROP_NO_LOCAL: u32 = 11;
/// A packet of no known connection that could not open one (not a SYN):
/// left to the stack, as netfilter would judge it.
pub const COUNTER_PASS_NOT_SYN: u32 = 12;
/// A closed connection's NAT port given to a new connection.
pub const COUNTER_SNAT_PORT_REUSED: u32 = 13;
/// A connection's entry found without its other half (evicted): rebuilt
/// when its NAT port was still free, forgotten when it was not.
pub const COUNTER_HALF_REBUILT: u32 = 14;
pub const COUNTER_HALF_LOST: u32 = 15;
/// A refusal (RST or ICMP unreachable) not sent: past the node's budget.
pub const COUNTER_DROP_REFUSAL_RATE: u32 = 16;
/// An ICMP error about a translated connection, translated back.
pub const COUNTER_ICMP_TRANSLATED: u32 = 17;
/// A later fragment of a datagram whose first fragment was seen: it
/// follows the first (see `fragment`).
pub const COUNTER_FRAGMENT_FOLLOWED: u32 = 18;
/// A later fragment of a datagram whose first fragment was not seen (lost,
/// overtaken, or evicted): left to the stack untouched.
pub const COUNTER_PASS_FRAGMENT_UNKNOWN: u32 = 19;
/// A new connection to an allocated ClusterIP on a port it does not serve
/// (kube-proxy's `cluster-ips-check` REJECT).
pub const COUNTER_REJECT_CLUSTER_IP_PORT: u32 = 20;
/// A packet to an address of the service CIDRs that no Service holds.
pub const COUNTER_DROP_UNALLOCATED: u32 = 21;
/// A packet translated and sent on by the XDP program (`XDP_TX` or into a
/// device of the XDP device map): tc never saw it.
pub const COUNTER_XDP_SENT: u32 = 22;
/// Left untouched by XDP for tc, which sends it: the next hop has no
/// neighbour entry yet (only tc can have the kernel resolve one).
pub const COUNTER_XDP_NO_NEIGHBOUR: u32 = 23;
/// Left for tc: the route leaves by a device that takes no XDP frames (not
/// the arrival device, not in the XDP device map).
pub const COUNTER_XDP_DEVICE: u32 = 24;
/// Left for tc: no route, or one only the stack takes (local, blackhole).
pub const COUNTER_XDP_STACK_ROUTE: u32 = 25;
pub const COUNTERS_LEN: u32 = 26;

/// Refusals the node sends per second at most, after a burst: the kernel's
/// own defaults for ICMP errors (`net.ipv4.icmp_msgs_per_sec`,
/// `icmp_msgs_burst`).
pub const REFUSALS_PER_SECOND: u64 = 1_000;
pub const REFUSAL_BURST: u64 = 50;

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
    ("passed", "not_syn"),
    ("translated", "nat_port_reused"),
    ("translated", "half_rebuilt"),
    ("passed", "half_lost"),
    ("dropped", "refusal_rate_limited"),
    ("translated", "icmp_error"),
    ("translated", "fragment"),
    ("passed", "fragment_unknown"),
    ("rejected", "cluster_ip_port"),
    ("dropped", "unallocated_service_ip"),
    ("xdp", "sent"),
    ("xdp", "left_to_tc_no_neighbour"),
    ("xdp", "left_to_tc_device_without_xdp"),
    ("xdp", "left_to_tc_stack_route"),
];

const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<Flow>() == 64);
const _: () = assert!(core::mem::size_of::<SourceRange>() == 36);
const _: () = assert!(core::mem::size_of::<NodeConfig>() == 12);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: as in `maps`: #[repr(C)], integers only, explicit padding.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::Flow {}
    unsafe impl aya::Pod for super::SourceRange {}
    unsafe impl aya::Pod for super::NodeConfig {}
}
