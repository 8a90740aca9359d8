//! The per-packet path: connections from outside to NodePorts, LoadBalancer
//! IPs and externalIPs, translated on the node's devices with a conntrack of
//! our own (see `switchyard_abi::flow`).
//!
//! Ingress: a known flow is translated as recorded (forward, or a reply to
//! a NATed source); an unknown one addressed to an external-scope frontend
//! gets a backend, two conntrack entries and its first translation.
//! Egress: replies from local backends get the frontend back as source.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use switchyard_abi::{
    Addr, BACKEND_LOCAL, Backend, COUNTER_BACKEND_REPLACED, COUNTER_DROP_CONNTRACK,
    COUNTER_DROP_FRAGMENT, COUNTER_DROP_NO_LOCAL, COUNTER_DROP_SNAT_PORTS,
    COUNTER_DROP_SOURCE_RANGE, COUNTER_REJECT_NO_ENDPOINTS, COUNTER_REPLY_TRANSLATED,
    COUNTER_TRANSLATED, COUNTER_TRANSLATED_NEW, FLOW_FORWARD, FLOW_REPLY, FRONTEND_DROP_NO_LOCAL,
    FRONTEND_SNAT_REMOTE, FRONTEND_SOURCE_RANGES, Flow, FlowKey, NODE_SNAT_IPV4, NODE_SNAT_IPV6,
    PROTO_UDP, SCOPE_EXTERNAL, SNAT_PORT_ATTEMPTS, SNAT_PORT_MAX, SNAT_PORT_MIN,
    SOURCE_RANGE_FRONTEND_BITS, ServiceKey, SourceRange, client_of_addr,
};

use crate::{
    maps::{BACKENDS, CONNTRACK, NODE, SERVICES, SOURCE_RANGES, count},
    packet::{self, End, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    reject::reject,
    select::{Selection, select},
};

const SHOT: i32 = switchyard_abi::TC_SHOT;
/// `last_seen_ns` is refreshed at most this often, so a busy flow does not
/// write its shared entry on every packet.
const TOUCH_INTERVAL_NS: u64 = 1_000_000_000;

/// Each stage is its own function, called from here one after another:
/// the verifier adds up the stack frames along a call chain (512 bytes at
/// most), and inlined into one frame they would not fit.
pub fn ingress(ctx: &TcContext) -> i32 {
    let Some(packet) = packet::parse(ctx) else {
        return packet::NEXT;
    };
    if let Some(verdict) = tracked(ctx, &packet) {
        return verdict;
    }
    match choose(&packet) {
        Choice::Verdict(verdict) => verdict,
        Choice::Refuse => {
            count(COUNTER_REJECT_NO_ENDPOINTS);
            reject(ctx, &packet)
        }
        Choice::Backend { backend, id, snat } => {
            let nat = if snat {
                let Some(nat) = claim_snat_port(&packet, &backend) else {
                    count(COUNTER_DROP_SNAT_PORTS);
                    return SHOT;
                };
                Some(nat)
            } else {
                if !record_reply(&packet, &backend) {
                    count(COUNTER_DROP_CONNTRACK);
                    return SHOT;
                }
                None
            };
            start(ctx, &packet, &backend, id, nat)
        }
    }
}

/// A packet of a connection conntrack knows, translated as recorded.
#[inline(never)]
fn tracked(ctx: &TcContext, packet: &Packet) -> Option<i32> {
    let entry = CONNTRACK.get_ptr_mut(packet.key())?;
    // SAFETY: the pointer is valid for this run; the copy is ours.
    let flow = unsafe { *entry };
    if flow.kind == FLOW_REPLY {
        touch(entry, packet);
        return Some(reply(ctx, packet, &flow, true));
    }
    if flow.kind == FLOW_FORWARD && still_valid(packet, &flow) {
        touch(entry, packet);
        count(COUNTER_TRANSLATED);
        return Some(forward(ctx, packet, &flow));
    }
    None
}

pub fn egress(ctx: &TcContext) -> i32 {
    let Some(packet) = packet::parse(ctx) else {
        return packet::NEXT;
    };
    let Some(entry) = CONNTRACK.get_ptr_mut(packet.key()) else {
        return packet::NEXT;
    };
    // SAFETY: as in `ingress`.
    let flow = unsafe { *entry };
    if flow.kind != FLOW_REPLY {
        return packet::NEXT;
    }
    touch(entry, &packet);
    reply(ctx, &packet, &flow, false)
}

/// Whether a forward entry still describes this packet's connection. A SYN
/// after FIN or RST is a new connection reusing the client's port. A UDP
/// flow whose backend went away moves to a live one at once: UDP has no
/// handshake to fail, so a stale entry would blackhole it until it expired.
/// TCP keeps its backend, which lets established connections to a
/// terminating endpoint finish.
fn still_valid(packet: &Packet, flow: &Flow) -> bool {
    if packet.has_tcp_flag(TCP_SYN) && !packet.has_tcp_flag(TCP_ACK) {
        return flow.closing == 0;
    }
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
    /// The frontend has no endpoints.
    Refuse,
    Backend {
        backend: Backend,
        id: u32,
        /// NAT the source to this node.
        snat: bool,
    },
}

/// What a packet starting a connection gets: not ours, dropped, refused,
/// or a backend.
#[inline(never)]
fn choose(packet: &Packet) -> Choice {
    let frontend = ServiceKey::scoped(packet.dst, packet.dport, packet.proto, SCOPE_EXTERNAL, 0);
    // SAFETY: as in `still_valid`.
    let Some(settings) = (unsafe { SERVICES.get(frontend) }).copied() else {
        return Choice::Verdict(packet::NEXT);
    };
    if packet.first_fragment {
        // The later fragments carry no ports to translate by.
        count(COUNTER_DROP_FRAGMENT);
        return Choice::Verdict(SHOT);
    }
    if settings.flags & FRONTEND_SOURCE_RANGES != 0 && !source_allowed(&frontend, &packet.src) {
        count(COUNTER_DROP_SOURCE_RANGE);
        return Choice::Verdict(SHOT);
    }
    match select(&frontend, client_of_addr(&packet.src)) {
        Selection::NotAService => Choice::Verdict(packet::NEXT),
        Selection::NoBackends if settings.flags & FRONTEND_DROP_NO_LOCAL != 0 => {
            count(COUNTER_DROP_NO_LOCAL);
            Choice::Verdict(SHOT)
        }
        Selection::NoBackends => Choice::Refuse,
        // The agent never pairs families; this guards hand-edited maps.
        Selection::Backend(backend, _) if backend.addr.is_v4() == packet.v6 => {
            Choice::Verdict(packet::NEXT)
        }
        Selection::Backend(backend, id) => Choice::Backend {
            backend,
            id,
            snat: settings.flags & FRONTEND_SNAT_REMOTE != 0 && backend.flags & BACKEND_LOCAL == 0,
        },
    }
}

/// Records a new connection to `backend` and sends its first packet there;
/// its reply entry is already made (`record_reply`, or `claim_snat_port`
/// with `nat`: this node's address and port, and the source is NATed).
#[inline(never)]
fn start(
    ctx: &TcContext,
    packet: &Packet,
    backend: &Backend,
    id: u32,
    nat: Option<(Addr, u16)>,
) -> i32 {
    let key = packet.key();
    // SAFETY: a helper with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut flow = Flow {
        last_seen_ns: now,
        addr: backend.addr,
        port: backend.port,
        backend_id: id,
        kind: FLOW_FORWARD,
        ..Flow::default()
    };
    if let Some((addr, port)) = nat {
        flow.snat = 1;
        flow.snat_addr = addr;
        flow.snat_port = port;
    }
    if CONNTRACK.insert(key, flow, 0).is_err() {
        count(COUNTER_DROP_CONNTRACK);
        return SHOT;
    }
    count(COUNTER_TRANSLATED_NEW);
    forward(ctx, packet, &flow)
}

/// The reply entry of a connection to `backend` that is not NATed (a NATed
/// one's is made by `claim_snat_port`). Called from `ingress`, not from
/// `start`, because the verifier adds up the frames along a call chain (512
/// bytes at most): below `start` this came to 544 bytes, which the 6.1
/// verifier refused (6.12 and 6.18 accepted the same object).
#[inline(never)]
fn record_reply(packet: &Packet, backend: &Backend) -> bool {
    // SAFETY: a helper with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let forward = Flow {
        addr: backend.addr,
        port: backend.port,
        kind: FLOW_FORWARD,
        ..Flow::default()
    };
    let answer = Flow {
        last_seen_ns: now,
        addr: packet.dst,
        port: packet.dport,
        kind: FLOW_REPLY,
        ..Flow::default()
    };
    CONNTRACK
        .insert(forward.partner(&packet.key()), answer, 0)
        .is_ok()
}

/// Reserves a source port on this node for a connection to `backend` by
/// inserting its reply entry, which only succeeds for a port no other
/// connection to that backend holds.
#[inline(never)]
fn claim_snat_port(packet: &Packet, backend: &Backend) -> Option<(Addr, u16)> {
    let family = if packet.v6 {
        NODE_SNAT_IPV6
    } else {
        NODE_SNAT_IPV4
    };
    let addr = *NODE.get(family)?;
    if addr == Addr::default() {
        return None;
    }
    let span = u32::from(SNAT_PORT_MAX - SNAT_PORT_MIN) + 1;
    // SAFETY: helpers with no arguments.
    let (start, now) = unsafe { (bpf_get_prandom_u32(), bpf_ktime_get_ns()) };
    let answer = Flow {
        last_seen_ns: now,
        addr: packet.dst,
        port: packet.dport,
        snat_addr: packet.src,
        snat_port: packet.sport,
        kind: FLOW_REPLY,
        snat: 1,
        ..Flow::default()
    };
    for attempt in 0..SNAT_PORT_ATTEMPTS {
        // `% span` keeps the offset within u16.
        let port = (SNAT_PORT_MIN + (start.wrapping_add(attempt) % span) as u16).to_be();
        let key = FlowKey::new(backend.addr, addr, backend.port, port, packet.proto);
        if CONNTRACK
            .insert(key, answer, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            return Some((addr, port));
        }
    }
    None
}

fn source_allowed(frontend: &ServiceKey, src: &Addr) -> bool {
    let range = SourceRange {
        addr: frontend.addr,
        port: frontend.port,
        proto: frontend.proto,
        pad: 0,
        src: *src,
    };
    SOURCE_RANGES
        .get(Key::new(SOURCE_RANGE_FRONTEND_BITS + 128, range))
        .is_some()
}

/// Client -> backend, with the source NATed when the entry says so.
fn forward(ctx: &TcContext, packet: &Packet, flow: &Flow) -> i32 {
    if packet::rewrite(ctx, packet, End::Destination, &flow.addr, flow.port).is_none() {
        return SHOT;
    }
    let src = if flow.snat != 0 {
        if packet::rewrite(ctx, packet, End::Source, &flow.snat_addr, flow.snat_port).is_none() {
            return SHOT;
        }
        flow.snat_addr
    } else {
        packet.src
    };
    packet::redirect_by_route(ctx, packet.v6, packet.proto, &src, &flow.addr)
}

/// Backend -> client, from the frontend. At ingress (a reply to a NATed
/// source) it is routed on; at egress it is already leaving.
fn reply(ctx: &TcContext, packet: &Packet, flow: &Flow, at_ingress: bool) -> i32 {
    if packet::rewrite(ctx, packet, End::Source, &flow.addr, flow.port).is_none() {
        return SHOT;
    }
    let dst = if flow.snat != 0 {
        if packet::rewrite(
            ctx,
            packet,
            End::Destination,
            &flow.snat_addr,
            flow.snat_port,
        )
        .is_none()
        {
            return SHOT;
        }
        flow.snat_addr
    } else {
        packet.dst
    };
    count(COUNTER_REPLY_TRANSLATED);
    if at_ingress {
        packet::redirect_by_route(ctx, packet.v6, packet.proto, &flow.addr, &dst)
    } else {
        packet::NEXT
    }
}

/// Records that the flow is alive, and closing once a FIN or RST passes.
/// Plain stores of whole fields: racing CPUs write the same values.
fn touch(entry: *mut Flow, packet: &Packet) {
    // SAFETY: a helper with no arguments; `entry` is valid for this run.
    unsafe {
        let now = bpf_ktime_get_ns();
        if now.wrapping_sub((*entry).last_seen_ns) > TOUCH_INTERVAL_NS {
            (*entry).last_seen_ns = now;
        }
        if (*entry).seen == 0 {
            (*entry).seen = 1;
        }
        if (*entry).closing == 0 && packet.has_tcp_flag(TCP_FIN | TCP_RST) {
            (*entry).closing = 1;
        }
    }
}
