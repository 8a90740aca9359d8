//! Per-Service-port and per-backend counters (`switchyard_abi::stats`):
//! one add to this CPU's copy of an entry the frontend names. Entry
//! `COUNTER_NONE` counts nothing, so a node with counters off pays a
//! branch.

use switchyard_abi::{
    BACKEND_BYTES, BACKEND_PACKETS, COUNTER_NONE, Flow, SERVICE_BYTES, SERVICE_PACKETS,
};

use crate::maps::{BACKEND_STATS, SERVICE_STATS};

/// Adds `amount` to count `what` of the Service port's entry `counter`.
#[inline]
pub fn service(counter: u32, what: usize, amount: u64) {
    if counter == COUNTER_NONE {
        return;
    }
    let Some(entry) = SERVICE_STATS.get_ptr_mut(counter) else {
        return;
    };
    // SAFETY: this CPU's copy, valid for this run; no other CPU writes it.
    let counts = unsafe { &mut (*entry).counts };
    if let Some(count) = counts.get_mut(what) {
        *count += amount;
    }
}

/// Adds `amount` to count `what` of the pair's entry `counter`.
#[inline]
pub fn backend(counter: u32, what: usize, amount: u64) {
    if counter == COUNTER_NONE {
        return;
    }
    let Some(entry) = BACKEND_STATS.get_ptr_mut(counter) else {
        return;
    };
    // SAFETY: as in `service`.
    let counts = unsafe { &mut (*entry).counts };
    if let Some(count) = counts.get_mut(what) {
        *count += amount;
    }
}

/// One translated packet of `len` bytes of `flow`'s connection.
#[inline]
pub fn packet(flow: &Flow, len: u32) {
    service(flow.service_counter, SERVICE_PACKETS, 1);
    service(flow.service_counter, SERVICE_BYTES, u64::from(len));
    backend(flow.backend_counter, BACKEND_PACKETS, 1);
    backend(flow.backend_counter, BACKEND_BYTES, u64::from(len));
}
