//! Later fragments follow their datagram's first (see the ABI's
//! `fragment`): the first fragment's ports are kept under the datagram's
//! identity, and a later fragment takes them to be looked up, and
//! translated, as the connection they name.

use switchyard_abi::{
    COUNTER_FRAGMENT_FOLLOWED, COUNTER_PASS_FRAGMENT_UNKNOWN, FragmentKey, FragmentPorts,
};

use crate::{
    maps::{FRAGMENTS, count},
    packet::Packet,
};

/// Keeps a first fragment's ports for the fragments after it. Every first
/// fragment of TCP or UDP is kept, ours or not: whether the datagram is a
/// connection of ours is known only later, and fragments are rare enough
/// that an LRU entry each costs nothing worth saving.
#[inline(never)]
pub fn remember_first(packet: &Packet, id: u32) {
    let key = FragmentKey::new(packet.src, packet.dst, id, packet.proto);
    let ports = FragmentPorts {
        sport: packet.sport,
        dport: packet.dport,
    };
    let _ = FRAGMENTS.insert(&key, &ports, 0);
}

/// Writes into `ports` the ports of the datagram a later fragment belongs
/// to; false when its first fragment was not seen here (lost, overtaken by
/// this one, or evicted), and the fragment goes on untouched. An out
/// parameter rather than an `Option`: LLVM folded the `Option`'s tag into
/// bit operations on the map pointer, which the verifier refuses.
#[inline(never)]
pub fn ports_of_later(key: &FragmentKey, ports: &mut FragmentPorts) -> bool {
    // SAFETY: map values are plain integers, valid for this run.
    if let Some(found) = unsafe { FRAGMENTS.get(key) } {
        ports.sport = found.sport;
        ports.dport = found.dport;
        count(COUNTER_FRAGMENT_FOLLOWED);
        return true;
    }
    count(COUNTER_PASS_FRAGMENT_UNKNOWN);
    false
}
