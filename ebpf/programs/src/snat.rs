//! NAT source ports for connections sent to a backend on another node. A
//! port is held by the reply entry keyed (backend -> this node's address,
//! port): inserting that entry with `BPF_NOEXIST` is the claim, so two
//! CPUs can never take one port for the same backend. A port whose
//! connection is over (TIME_WAIT or CLOSE, or whose forward half is gone)
//! is taken over when no free one turns up, as netfilter lets a new SYN
//! reopen a TIME_WAIT tuple: closed connections never starve new ones.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
};
use switchyard_abi::{
    Addr, Backend, COUNTER_SNAT_PORT_REUSED, ConnState, Flow, FlowKey, NODE_SNAT_IPV4,
    NODE_SNAT_IPV6, SNAT_PORT_ATTEMPTS,
};

use crate::{
    maps::{CONNTRACK, NODE, NODE_CONFIG, count},
    packet::Packet,
};

const _: () = assert!(
    SNAT_PORT_ATTEMPTS == 32,
    "`claim_snat_port` makes one probe per attempt"
);

/// Reserves a source port on this node for a connection to `backend` by
/// inserting its reply entry. Random ports are probed; the first free one
/// wins, else the first whose connection is over is taken over.
#[inline(never)]
pub fn claim_snat_port(
    packet: &Packet,
    backend: &Backend,
    counters: [u32; 2],
) -> Option<(Addr, u16)> {
    let family = if packet.v6 {
        NODE_SNAT_IPV6
    } else {
        NODE_SNAT_IPV4
    };
    let addr = *NODE.get(family)?;
    let config = NODE_CONFIG.get(0)?;
    let total = config.nat_port_count();
    if addr == Addr::default() || total == 0 {
        return None;
    }
    // SAFETY: a helper with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let answer = Flow::reply_of(&packet.key(), true, now, counters);
    // Network byte order; 0 is no port (never a NAT port).
    let mut spent: u16 = 0;
    let mut key = FlowKey::new(backend.addr, addr, backend.port, 0, packet.proto);
    let mut probe = || {
        // SAFETY: a helper with no arguments.
        let index = unsafe { bpf_get_prandom_u32() } % total;
        let port = config.nat_port(index).to_be();
        key.dport = port;
        if CONNTRACK
            .insert(&key, &answer, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            return Some(port);
        }
        if spent == 0 && is_spent(&key) {
            spent = port;
        }
        None
    };
    // Unrolled by hand, not a loop: LLVM rotates such a loop so that it is
    // entered in the middle and closed by a plain fall-through, which the
    // 6.1 verifier refuses ("back-edge from insn ..."; later kernels take
    // it). `tests/tests/verifier.rs` checks the object for such edges on
    // whatever kernel it runs.
    macro_rules! probes {
        ($($attempt:literal)*) => {
            $(
                let _ = $attempt;
                if let Some(port) = probe() {
                    return Some((addr, port));
                }
            )*
        };
    }
    probes!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31);
    if spent == 0 {
        return None;
    }
    let key = FlowKey::new(backend.addr, addr, backend.port, spent, packet.proto);
    release(&key);
    // Another CPU may take the port between the two calls: then this
    // connection is refused, never given a port twice.
    CONNTRACK
        .insert(&key, &answer, u64::from(BPF_NOEXIST))
        .ok()?;
    count(COUNTER_SNAT_PORT_REUSED);
    Some((addr, spent))
}

/// Whether the connection holding the reply entry at `key` is over: closed
/// both ways or reset, or its forward half is gone or belongs to a newer
/// connection of the client (so nothing can be translated onto this port).
#[inline(never)]
fn is_spent(key: &FlowKey) -> bool {
    // Read in place, not copied: two 56-byte copies in this frame took the
    // chain below `claim_snat_port` past 6.1's 512 bytes.
    // SAFETY: map values are plain integers, valid for this run.
    let Some(reply) = (unsafe { CONNTRACK.get(key) }) else {
        return true;
    };
    let partner_key = reply.partner(key);
    // SAFETY: as above.
    let forward = (unsafe { CONNTRACK.get(&partner_key) })
        .filter(|forward| reply.pairs_with(key, forward, &partner_key));
    match forward {
        None => true,
        Some(forward) => ConnState::of(key.proto, Some(forward), Some(reply)).is_over(),
    }
}

/// Forgets the spent connection holding `key`: its forward entry too when
/// that still points at this port.
#[inline(never)]
fn release(key: &FlowKey) {
    // SAFETY: as in `is_spent`.
    if let Some(reply) = (unsafe { CONNTRACK.get(key) }).copied() {
        let partner_key = reply.partner(key);
        // SAFETY: as above.
        let points_here = (unsafe { CONNTRACK.get(&partner_key) })
            .is_some_and(|forward| reply.pairs_with(key, forward, &partner_key));
        if points_here {
            let _ = CONNTRACK.remove(&partner_key);
        }
    }
    let _ = CONNTRACK.remove(key);
}
