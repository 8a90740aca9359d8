//! What a packet of a known connection records on its entries: that the
//! flow is alive, and TCP's progress (FIN, RST, the ACK of the other side's
//! FIN) from which `switchyard_abi::ConnState` names the state. Every fact
//! is a byte of its own written with a plain store: racing CPUs write the
//! same value, so no update is lost.
//!
//! Once a second per direction the other half is checked too: both entries
//! of a connection must live and die together. A half the LRU evicted is
//! rebuilt while its key is free; when it is not (a NAT port given to a new
//! connection meanwhile), the survivor is forgotten rather than translated
//! onto someone else's connection.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns};
use switchyard_abi::{COUNTER_HALF_LOST, COUNTER_HALF_REBUILT, FLOW_FORWARD, Flow, FlowKey};

use crate::{
    maps::{CONNTRACK, count},
    packet::{Packet, TCP_ACK, TCP_FIN, TCP_RST},
};

/// `last_seen_ns` is refreshed (and the other half checked) at most this
/// often, so a busy flow does not write its shared entry on every packet.
const TOUCH_INTERVAL_NS: u64 = 1_000_000_000;

/// Records `packet` on its entry (`entry`, a copy of which is `flow`, at
/// `key`). Returns false when the connection's other half now belongs to
/// another connection: the entry is then gone and the packet is not ours.
#[inline(never)]
pub fn record(entry: *mut Flow, flow: &Flow, key: &FlowKey, packet: &Packet) -> bool {
    // SAFETY: a helper with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(flow.last_seen_ns) > TOUCH_INTERVAL_NS {
        if !paired(flow, key, now) {
            let _ = CONNTRACK.remove(key);
            count(COUNTER_HALF_LOST);
            return false;
        }
        // SAFETY: `entry` is valid for this run.
        unsafe { (*entry).last_seen_ns = now };
    }
    // SAFETY: `entry` is valid for this run; each store is one whole byte.
    unsafe {
        if flow.seen == 0 && !packet.is_bare_syn() {
            (*entry).seen = 1;
        }
        if flow.rst == 0 && packet.has_tcp_flag(TCP_RST) {
            (*entry).rst = 1;
        }
        if flow.peer_fin != 0 && flow.peer_fin_acked == 0 && packet.has_tcp_flag(TCP_ACK) {
            (*entry).peer_fin_acked = 1;
        }
    }
    if flow.fin == 0 && packet.has_tcp_flag(TCP_FIN) {
        // SAFETY: as above.
        unsafe { (*entry).fin = 1 };
        let partner_key = flow.partner(key);
        if let Some(partner) = CONNTRACK.get_ptr_mut(&partner_key) {
            // SAFETY: as above, for the other half's entry.
            unsafe { (*partner).peer_fin = 1 };
        }
    }
    true
}

/// Whether the other half of the connection is there and points back at
/// `key`; a missing one is rebuilt from this one when its key is free.
fn paired(flow: &Flow, key: &FlowKey, now: u64) -> bool {
    let partner_key = flow.partner(key);
    // SAFETY: map values are plain integers, valid for this run.
    if let Some(partner) = unsafe { CONNTRACK.get(&partner_key) } {
        return flow.pairs_with(key, partner, &partner_key);
    }
    let rebuilt = rebuilt_partner(flow, key, now);
    if CONNTRACK
        .insert(&partner_key, &rebuilt, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        count(COUNTER_HALF_REBUILT);
        return true;
    }
    false
}

/// The other half of the connection `flow` at `key` belongs to, as it was
/// made (see `nat::start` and `snat::claim_snat_port`), with this half's
/// TCP facts mirrored.
fn rebuilt_partner(flow: &Flow, key: &FlowKey, now: u64) -> Flow {
    let mut partner = if flow.kind == FLOW_FORWARD {
        Flow::reply_of(
            key,
            flow.snat != 0,
            now,
            [flow.service_counter, flow.backend_counter],
        )
    } else {
        // The forward entry sends the client to this backend, from this
        // node's address and port when NATed. Its backend id is unknown:
        // 0 names no backend, which a UDP flow takes as "pick anew".
        Flow {
            last_seen_ns: now,
            addr: key.src,
            port: key.sport,
            snat_addr: key.dst,
            snat_port: key.dport,
            kind: FLOW_FORWARD,
            snat: flow.snat,
            service_counter: flow.service_counter,
            backend_counter: flow.backend_counter,
            ..Flow::default()
        }
    };
    partner.seen = 1;
    partner.rst = flow.rst;
    partner.peer_fin = flow.fin;
    partner
}
