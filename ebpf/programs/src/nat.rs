//! The per-packet path: connections from outside to NodePorts, LoadBalancer
//! IPs and externalIPs, translated on the node's devices with a conntrack of
//! our own (see `switchyard_abi::flow`), at tc or XDP (see `frame`).
//!
//! Ingress: a known flow is translated as recorded (forward, or a reply to
//! a NATed source); an unknown one addressed to an external-scope frontend
//! gets a backend, two conntrack entries and its first translation.
//! Egress: replies from local backends get the frontend back as source.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns, maps::lpm_trie::Key};
use switchyard_abi::{
    Addr, BACKEND_LOCAL, BACKEND_PACKET_CONNECTIONS, Backend, COUNTER_BACKEND_REPLACED,
    COUNTER_DROP_CONNTRACK, COUNTER_DROP_FRAGMENT, COUNTER_DROP_NO_LOCAL, COUNTER_DROP_SNAT_PORTS,
    COUNTER_DROP_SOURCE_RANGE, COUNTER_DROP_UNALLOCATED, COUNTER_NONE, COUNTER_PASS_NOT_SYN,
    COUNTER_REJECT_CLUSTER_IP_PORT, COUNTER_REJECT_NO_ENDPOINTS, COUNTER_REPLY_TRANSLATED,
    COUNTER_TRANSLATED, COUNTER_TRANSLATED_NEW, FLOW_FORWARD, FLOW_REPLY, FRONTEND_CLUSTER_IP,
    FRONTEND_DROP_NO_LOCAL, FRONTEND_SNAT_REMOTE, FRONTEND_SOURCE_RANGES, Flow, FlowKey,
    NODE_CLUSTER_IP_FROM_OUTSIDE, NODE_DRAIN, NODE_LOCAL_BY_DEVICE, NODE_MASQUERADE_ALL, PROTO_UDP,
    SCOPE_EXTERNAL, SCOPE_INTERNAL, SERVICE_DROPPED_CONNTRACK, SERVICE_DROPPED_NO_LOCAL,
    SERVICE_DROPPED_SNAT_PORTS, SERVICE_DROPPED_SOURCE_RANGE, SERVICE_PACKET_CONNECTIONS,
    SERVICE_REFUSED_NO_ENDPOINTS, ServiceKey, ServiceValue, client_of_addr, flow_hash,
};

use crate::{
    frame::Frame,
    maps::{BACKENDS, CLUSTER_CIDRS, CONNTRACK, LOCAL_DEVICES, NODE_CONFIG, SERVICES, count},
    packet::{self, End, Packet},
    progress, route,
    select::{Chosen, Selection, select},
    service_cidr::{AddressUse, address_use},
    snat::claim_snat_port,
    source_range, stats,
};

/// Each stage is its own function, called from here one after another:
/// the verifier adds up the stack frames along a call chain (512 bytes at
/// most), and inlined into one frame they would not fit.
pub fn ingress<C: Frame>(ctx: &C) -> i32 {
    let Some(packet) = packet::parse(ctx) else {
        return ctx.not_transport(true);
    };
    if let Some(verdict) = tracked(ctx, &packet) {
        return verdict;
    }
    match choose(ctx, &packet) {
        Choice::Verdict(verdict) => verdict,
        // XDP builds no refusal: tc, seeing the packet next, refuses it
        // and counts it once.
        Choice::Refuse(..) if !C::FINISHES => C::NEXT,
        Choice::Refuse(reason, counter) => {
            count(reason);
            stats::service(counter, SERVICE_REFUSED_NO_ENDPOINTS, 1);
            ctx.refuse(&packet)
        }
        Choice::Backend { chosen, snat } => open(ctx, &packet, &chosen, snat),
    }
}

/// A new connection to the chosen backend: its reply entry (claiming a NAT
/// port when `snat`), then its forward entry and first packet. Its own
/// frame, so `ingress`'s stays small for the chains below it.
#[inline(never)]
fn open<C: Frame>(ctx: &C, packet: &Packet, chosen: &Chosen, snat: bool) -> i32 {
    let counters = [chosen.service_counter, chosen.backend_counter];
    let nat = if snat {
        let Some(nat) = claim_snat_port(packet, &chosen.backend, counters) else {
            count(COUNTER_DROP_SNAT_PORTS);
            stats::service(chosen.service_counter, SERVICE_DROPPED_SNAT_PORTS, 1);
            return C::SHOT;
        };
        Some(nat)
    } else {
        if !record_reply(packet, &chosen.backend, counters) {
            count(COUNTER_DROP_CONNTRACK);
            stats::service(chosen.service_counter, SERVICE_DROPPED_CONNTRACK, 1);
            return C::SHOT;
        }
        None
    };
    match start(packet, chosen, nat) {
        Some(flow) => forward(ctx, packet, flow),
        None => C::SHOT,
    }
}

/// A packet of a connection conntrack knows, translated as recorded.
/// `None`: no connection, or a new one reusing a finished one's tuple.
#[inline(never)]
fn tracked<C: Frame>(ctx: &C, packet: &Packet) -> Option<i32> {
    let key = packet.key();
    let entry = CONNTRACK.get_ptr_mut(&key)?;
    // SAFETY: the pointer is valid for this run; the copy is ours.
    let flow = unsafe { *entry };
    if flow.kind == FLOW_REPLY {
        if flow.snat == 0 {
            // A connection that kept its client goes through the stack both
            // ways (see `forward`): its reply is translated at egress.
            return Some(C::NEXT);
        }
        if !progress::record(entry, &flow, &key, packet) {
            return Some(C::NEXT);
        }
        return Some(reply(ctx, packet, &flow, true));
    }
    if flow.kind != FLOW_FORWARD {
        return None;
    }
    if packet.is_bare_syn() && (flow.fin != 0 || flow.rst != 0) {
        forget_reply(&flow, &key);
        return None;
    }
    if !still_valid(packet, &flow) {
        return None;
    }
    if !progress::record(entry, &flow, &key, packet) {
        return if packet.is_bare_syn() {
            None
        } else {
            Some(C::NEXT)
        };
    }
    count(COUNTER_TRANSLATED);
    Some(forward(ctx, packet, &flow))
}

/// The client closed and reuses its port: a new connection, which gives
/// back the old one's reply entry (and NAT port) at once. Its own frame:
/// the partner key would otherwise sit in `tracked`'s, which the 6.1
/// verifier adds to `progress::record`'s below it.
#[inline(never)]
fn forget_reply(flow: &Flow, key: &FlowKey) {
    let _ = CONNTRACK.remove(&flow.partner(key));
}

pub fn egress<C: Frame>(ctx: &C) -> i32 {
    let Some(packet) = packet::parse(ctx) else {
        return ctx.not_transport(false);
    };
    let Some(entry) = CONNTRACK.get_ptr_mut(packet.key()) else {
        return C::NEXT;
    };
    // SAFETY: as in `ingress`.
    let flow = unsafe { *entry };
    if flow.kind != FLOW_REPLY || !progress::record(entry, &flow, &packet.key(), &packet) {
        return C::NEXT;
    }
    reply(ctx, &packet, &flow, false)
}

/// Whether a forward entry still describes this packet's connection. A UDP
/// flow whose backend went away moves to a live one at once: UDP has no
/// handshake to fail, so a stale entry would blackhole it until it expired.
/// TCP keeps its backend, which lets established connections to a
/// terminating endpoint finish.
fn still_valid(packet: &Packet, flow: &Flow) -> bool {
    if packet.proto != PROTO_UDP {
        return true;
    }
    // SAFETY: map values are plain integers, valid for this run.
    let alive = unsafe { BACKENDS.get(flow.backend_id) }
        .is_some_and(|backend| backend.addr == flow.addr && backend.port == flow.port);
    if !alive {
        count(COUNTER_BACKEND_REPLACED);
    }
    alive
}

enum Choice {
    Verdict(i32),
    /// Refused, counted under this `COUNTER_*`: the frontend has no
    /// endpoints (and counts it in this Service port entry), or a
    /// ClusterIP's port is served by no Service.
    Refuse(u32, u32),
    Backend {
        chosen: Chosen,
        /// NAT the source to this node.
        snat: bool,
    },
}

/// What a packet starting a connection gets: not ours, dropped, refused,
/// or a backend.
#[inline(never)]
fn choose<C: Frame>(ctx: &C, packet: &Packet) -> Choice {
    let Some((frontend, settings)) = frontend_of(packet) else {
        return unserved::<C>(packet);
    };
    if packet.proto != PROTO_UDP && !packet.is_bare_syn() {
        // netfilter opens a TCP connection on a SYN only; anything else
        // without a connection goes on for the stack to judge.
        if C::FINISHES {
            count(COUNTER_PASS_NOT_SYN);
        }
        return Choice::Verdict(C::NEXT);
    }
    if node_flags() & NODE_DRAIN != 0 {
        // Handing back: new connections are the stack's (kube-proxy's);
        // read only for packets that would open one, not for every packet
        // no connection tracks.
        return Choice::Verdict(C::NEXT);
    }
    if packet.later_fragment {
        // Its datagram's first fragment opened no connection (dropped or
        // refused): the rest of it can reach no one.
        count(COUNTER_DROP_FRAGMENT);
        return Choice::Verdict(C::SHOT);
    }
    if settings.flags & FRONTEND_SOURCE_RANGES != 0 && !source_range::allows(&frontend, &packet.src)
    {
        count(COUNTER_DROP_SOURCE_RANGE);
        stats::service(settings.counter, SERVICE_DROPPED_SOURCE_RANGE, 1);
        return Choice::Verdict(C::SHOT);
    }
    let flow = if settings.maglev_table_size() == 0 {
        0
    } else {
        let client_only = settings.affinity_timeout != 0;
        flow_hash(
            &packet.src,
            packet.sport,
            packet.dport,
            packet.proto,
            client_only,
        )
    };
    match select(&frontend, client_of_addr(&packet.src), flow) {
        Selection::NotAService => Choice::Verdict(C::NEXT),
        Selection::NoBackends(_, counter) if settings.flags & FRONTEND_DROP_NO_LOCAL != 0 => {
            count(COUNTER_DROP_NO_LOCAL);
            stats::service(counter, SERVICE_DROPPED_NO_LOCAL, 1);
            Choice::Verdict(C::SHOT)
        }
        Selection::NoBackends(_, counter) => Choice::Refuse(COUNTER_REJECT_NO_ENDPOINTS, counter),
        // The agent never pairs families; this guards hand-edited maps.
        Selection::Backend(chosen) if chosen.backend.addr.is_v4() == packet.v6 => {
            Choice::Verdict(C::NEXT)
        }
        Selection::Backend(chosen) => {
            let remote = chosen.backend.flags & BACKEND_LOCAL == 0;
            let snat = remote
                && (settings.flags & FRONTEND_SNAT_REMOTE != 0
                    || settings.flags & FRONTEND_CLUSTER_IP != 0 && masquerades(ctx, &packet.src));
            Choice::Backend { chosen, snat }
        }
    }
}

/// A packet from outside to no frontend: kube-proxy's `cluster-ips-check`
/// (see `service_cidr`), where the node serves ClusterIPs to outside
/// clients at all; otherwise such packets are none of ours.
fn unserved<C: Frame>(packet: &Packet) -> Choice {
    let flags = node_flags();
    if flags & NODE_CLUSTER_IP_FROM_OUTSIDE == 0 || flags & NODE_DRAIN != 0 {
        return Choice::Verdict(C::NEXT);
    }
    match address_use(&packet.dst) {
        AddressUse::ClusterIp if packet.later_fragment => Choice::Verdict(C::SHOT),
        AddressUse::ClusterIp if packet.proto == PROTO_UDP || packet.is_bare_syn() => {
            Choice::Refuse(COUNTER_REJECT_CLUSTER_IP_PORT, COUNTER_NONE)
        }
        // Not ours; or, to a ClusterIP, not a connection's start: only those
        // are refused, as for frontends, the rest is the stack's to judge
        // (see `choose`).
        AddressUse::Other | AddressUse::ClusterIp => Choice::Verdict(C::NEXT),
        AddressUse::Unallocated => {
            count(COUNTER_DROP_UNALLOCATED);
            Choice::Verdict(C::SHOT)
        }
    }
}

fn cluster_ips_from_outside() -> bool {
    node_flags() & NODE_CLUSTER_IP_FROM_OUTSIDE != 0
}

/// The node's `NODE_*` switches (none before the agent wrote them).
fn node_flags() -> u32 {
    NODE_CONFIG.get(0).map_or(0, |config| config.flags)
}

/// The frontend a packet from outside is addressed to: an external-scope
/// one (NodePort, LoadBalancer IP, externalIP), else a ClusterIP when the
/// node serves those to outside clients.
fn frontend_of(packet: &Packet) -> Option<(ServiceKey, ServiceValue)> {
    let external = ServiceKey::scoped(packet.dst, packet.dport, packet.proto, SCOPE_EXTERNAL, 0);
    // SAFETY: map values are plain integers, valid for this run.
    if let Some(settings) = unsafe { SERVICES.get(&external) } {
        return Some((external, *settings));
    }
    if !cluster_ips_from_outside() {
        return None;
    }
    let internal = ServiceKey::scoped(packet.dst, packet.dport, packet.proto, SCOPE_INTERNAL, 0);
    // SAFETY: as above.
    let settings = *unsafe { SERVICES.get(&internal) }?;
    (settings.flags & FRONTEND_CLUSTER_IP != 0).then_some((internal, settings))
}

/// Whether a packet from outside to a ClusterIP is masqueraded, as
/// kube-proxy decides it: always with `masqueradeAll`, else unless
/// detect-local finds it local, by the device it came in on or by its
/// source (in the cluster's or this node's pod CIDRs).
fn masquerades<C: Frame>(ctx: &C, src: &Addr) -> bool {
    let flags = node_flags();
    if flags & NODE_MASQUERADE_ALL != 0 {
        return true;
    }
    if flags & NODE_LOCAL_BY_DEVICE != 0 {
        // SAFETY: map values are plain integers.
        return unsafe { LOCAL_DEVICES.get(&ctx.arrived_by()) }.is_none();
    }
    CLUSTER_CIDRS.get(Key::new(128, *src)).is_none()
}

/// Records a new connection to `backend`, whose reply entry is already
/// made (`record_reply`, or `claim_snat_port` with `nat`: this node's
/// address and port, and the source is NATed), and returns its entry.
/// The first packet is sent from the caller, with the entry read in place:
/// below this frame, which holds the new entry, `forward` and `rewrite`
/// passed the verifier's 512 bytes along the call chain.
#[inline(never)]
fn start(packet: &Packet, chosen: &Chosen, nat: Option<(Addr, u16)>) -> Option<&'static Flow> {
    let key = packet.key();
    // SAFETY: a helper with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut flow = Flow {
        last_seen_ns: now,
        addr: chosen.backend.addr,
        port: chosen.backend.port,
        backend_id: chosen.id,
        kind: FLOW_FORWARD,
        service_counter: chosen.service_counter,
        backend_counter: chosen.backend_counter,
        ..Flow::default()
    };
    if let Some((addr, port)) = nat {
        flow.snat = 1;
        flow.snat_addr = addr;
        flow.snat_port = port;
    }
    let entry = CONNTRACK
        .insert(&key, &flow, 0)
        .ok()
        .and_then(|()| CONNTRACK.get_ptr(&key));
    let Some(entry) = entry else {
        count(COUNTER_DROP_CONNTRACK);
        stats::service(chosen.service_counter, SERVICE_DROPPED_CONNTRACK, 1);
        return None;
    };
    count(COUNTER_TRANSLATED_NEW);
    stats::service(chosen.service_counter, SERVICE_PACKET_CONNECTIONS, 1);
    stats::backend(chosen.backend_counter, BACKEND_PACKET_CONNECTIONS, 1);
    // SAFETY: a map value, valid for the rest of this run.
    Some(unsafe { &*entry })
}

/// The reply entry of a connection to `backend` that is not NATed (a NATed
/// one's is made by `claim_snat_port`). Called from `ingress`, not from
/// `start`, because the verifier adds up the frames along a call chain (512
/// bytes at most): below `start` this came to 544 bytes, which the 6.1
/// verifier refused (6.12 and 6.18 accepted the same object).
#[inline(never)]
fn record_reply(packet: &Packet, backend: &Backend, counters: [u32; 2]) -> bool {
    // SAFETY: a helper with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let forward = Flow {
        addr: backend.addr,
        port: backend.port,
        kind: FLOW_FORWARD,
        ..Flow::default()
    };
    let key = packet.key();
    let reply_key = forward.partner(&key);
    let reply = Flow::reply_of(&key, false, now, counters);
    if CONNTRACK
        .insert(&reply_key, &reply, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        return true;
    }
    // The reply tuple is taken: the same client address and port reached
    // this backend through another frontend. Replacing a live connection's
    // entry would send its replies from the wrong frontend, so the new
    // connection is refused (netfilter drops such a clash too); an entry
    // of this very connection, or of one that finished, is replaced.
    if taken(&reply_key, &key) {
        return false;
    }
    CONNTRACK.insert(&reply_key, &reply, 0).is_ok()
}

/// Whether the reply entry at `reply_key` belongs to a live connection
/// other than the one `key` opens: one whose forward entry exists, pairs
/// with it, and saw no FIN or RST either way. Entries are read in place
/// (the 6.1 verifier's 512 bytes of stack along the call chain).
#[inline(never)]
fn taken(reply_key: &FlowKey, key: &FlowKey) -> bool {
    let Some(reply) = CONNTRACK.get_ptr(reply_key) else {
        return false;
    };
    // SAFETY: valid for this run; read in place, never kept.
    let reply = unsafe { &*reply };
    let owner = reply.partner(reply_key);
    if reply.kind != FLOW_REPLY || owner == *key || reply.fin != 0 || reply.rst != 0 {
        return false;
    }
    let Some(forward) = CONNTRACK.get_ptr(&owner) else {
        return false;
    };
    // SAFETY: as above.
    let forward = unsafe { &*forward };
    reply.pairs_with(reply_key, forward, &owner) && forward.fin == 0 && forward.rst == 0
}

/// Client -> backend. A connection NATed to this node is sent straight out
/// by route: the stack's forwarding would refuse a packet whose source is
/// now one of the node's own addresses, and its reply comes back to this
/// hook the same way. One that keeps the client's address (a local
/// backend, or a client in a cluster CIDR) goes on through the stack, so
/// netfilter's conntrack sees it start and the backend's answers are no
/// INVALID packets to a node that drops those (see docs/design.md).
#[inline(never)]
fn forward<C: Frame>(ctx: &C, packet: &Packet, flow: &Flow) -> i32 {
    if flow.snat == 0 {
        stats::packet(flow, ctx.frame_len());
        if packet::rewrite(ctx, packet, End::Destination, &flow.addr, flow.port).is_none() {
            return C::SHOT;
        }
        return C::NEXT;
    }
    if packet.hop_limit <= 1 {
        // The stack drops it and tells the client, as a router does.
        return C::NEXT;
    }
    let Some(route) = route::lookup(ctx, &packet.kind(), &flow.snat_addr, &flow.addr) else {
        return C::NEXT;
    };
    if !route.usable_by(ctx) {
        // Untouched, for tc (see `frame`).
        return C::NEXT;
    }
    stats::packet(flow, ctx.frame_len());
    if packet::rewrite(ctx, packet, End::Destination, &flow.addr, flow.port).is_none()
        || packet::rewrite(ctx, packet, End::Source, &flow.snat_addr, flow.snat_port).is_none()
        || packet::decrement_hop_limit(ctx, packet).is_none()
    {
        return C::SHOT;
    }
    route::send(ctx, route)
}

/// Backend -> client, from the frontend. At ingress (a reply to a NATed
/// source) it is routed on; at egress it is already leaving.
#[inline(never)]
fn reply<C: Frame>(ctx: &C, packet: &Packet, flow: &Flow, at_ingress: bool) -> i32 {
    let dst = if flow.snat != 0 {
        flow.snat_addr
    } else {
        packet.dst
    };
    let route = if at_ingress {
        if packet.hop_limit <= 1 {
            return C::SHOT;
        }
        let Some(route) = route::lookup(ctx, &packet.kind(), &flow.addr, &dst) else {
            return C::NEXT;
        };
        if !route.usable_by(ctx) {
            return C::NEXT;
        }
        Some(route)
    } else {
        None
    };
    stats::packet(flow, ctx.frame_len());
    if packet::rewrite(ctx, packet, End::Source, &flow.addr, flow.port).is_none() {
        return C::SHOT;
    }
    if flow.snat != 0
        && packet::rewrite(
            ctx,
            packet,
            End::Destination,
            &flow.snat_addr,
            flow.snat_port,
        )
        .is_none()
    {
        return C::SHOT;
    }
    count(COUNTER_REPLY_TRANSLATED);
    let Some(route) = route else {
        return C::NEXT;
    };
    if packet::decrement_hop_limit(ctx, packet).is_none() {
        return C::SHOT;
    }
    route::send(ctx, route)
}
