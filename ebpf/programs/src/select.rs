//! Backend selection over the slot layout: slot 0 says how many backends a
//! frontend has (and its affinity timeout), a slot in 1..=count names one.
//! A Maglev frontend's table names the slot for a flow's hash bucket.

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use switchyard_abi::{AffinityKey, AffinityValue, Backend, MaglevKey, ServiceKey, ServiceValue};

use crate::maps::{AFFINITY, BACKENDS, MAGLEV, SERVICES};

const NANOS_PER_SECOND: u64 = 1_000_000_000;

pub enum Selection {
    /// Not a frontend we serve: leave the socket call alone.
    NotAService,
    /// A frontend with no usable backend: its flags (whether to drop or
    /// refuse the caller) and its Service port's counter entry.
    NoBackends(u16, u32),
    Backend(Chosen),
}

/// A backend picked for a new connection.
#[derive(Clone, Copy)]
pub struct Chosen {
    pub backend: Backend,
    pub id: u32,
    /// The frontend's slot that named it.
    pub slot: u16,
    /// The frontend's `FRONTEND_*` flags.
    pub flags: u16,
    /// The Service port's and the (Service port, backend) pair's counter
    /// entries.
    pub service_counter: u32,
    pub backend_counter: u32,
}

/// `client` identifies the caller for session affinity: its netns cookie,
/// or for a packet [`switchyard_abi::client_of_addr`]. `flow` is a packet's
/// Maglev hash ([`switchyard_abi::flow_hash`]): only external-scope
/// frontends have tables, which the socket path never looks up, so it
/// passes 0. (Not an `Option`: a `None` leaves the register of its value
/// unwritten, and the verifier refuses the callee's read of it.)
// Its own frame: the per-packet path's call chain would otherwise pass the
// verifier's 512-byte stack limit.
#[inline(never)]
pub fn select(frontend: &ServiceKey, client: u64, flow: u32) -> Selection {
    // SAFETY: map values are plain integers; the pointer is valid for the
    // duration of this program run.
    let Some(front) = (unsafe { SERVICES.get(frontend) }).copied() else {
        return Selection::NotAService;
    };
    if front.count == 0 {
        return Selection::NoBackends(front.flags, front.counter);
    }
    if front.maglev_table_size() != 0 {
        // Maglev: the same bucket, so the same backend, on every node; its
        // hash stands in for affinity records (see `flow_hash`).
        return backend_in_slot(frontend, maglev_slot(frontend, &front, flow), &front);
    }
    if front.affinity_timeout == 0 {
        return backend_in_slot(frontend, random_slot(&front), &front);
    }
    let key = AffinityKey::new(client, frontend);
    // SAFETY: a helper with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let timeout = u64::from(front.affinity_timeout) * NANOS_PER_SECOND;
    let slot = match unsafe { AFFINITY.get(key) }.copied() {
        Some(kept)
            if now.saturating_sub(kept.last_used_ns) < timeout
                && kept.slot >= 1
                && kept.slot <= front.count
                && slot_names(frontend, kept.slot, kept.backend_id) =>
        {
            kept.slot
        }
        _ => random_slot(&front),
    };
    let selection = backend_in_slot(frontend, slot, &front);
    if let Selection::Backend(..) = selection
        && let Some(entry) = unsafe { SERVICES.get(frontend.with_slot(slot)) }
    {
        // Refreshed on every connection, as kube-proxy's `recent` match is.
        let record = AffinityValue {
            last_used_ns: now,
            backend_id: entry.backend_id,
            slot,
            pad: 0,
        };
        let _ignored_when_full = AFFINITY.insert(key, record, 0);
    }
    selection
}

/// The slot a Maglev frontend's table gives `hash`'s bucket; a random one
/// while the agent is still writing the table (a bucket missing, or naming
/// a slot past the count during an update).
fn maglev_slot(frontend: &ServiceKey, front: &ServiceValue, hash: u32) -> u16 {
    let bucket = hash % front.maglev_table_size();
    // SAFETY: map values are plain integers, valid for this run.
    match unsafe { MAGLEV.get(&MaglevKey::new(frontend, bucket)) } {
        Some(&slot) if slot >= 1 && slot <= u32::from(front.count) => slot as u16,
        _ => random_slot(front),
    }
}

fn random_slot(front: &ServiceValue) -> u16 {
    // SAFETY: a helper with no arguments.
    let pick = unsafe { bpf_get_prandom_u32() } % u32::from(front.count);
    // `pick < count <= u16::MAX`, so the slot fits.
    pick as u16 + 1
}

/// The backend `slot` of `frontend` names, if it still names `backend_id`:
/// the check that a remembered choice (affinity, a socket's earlier
/// datagrams) is still one of the frontend's backends.
pub fn still_chosen(frontend: &ServiceKey, slot: u16, backend_id: u32) -> Option<Backend> {
    // SAFETY: as in `select`.
    let count = unsafe { SERVICES.get(frontend) }?.count;
    if slot < 1 || slot > count || !slot_names(frontend, slot, backend_id) {
        return None;
    }
    unsafe { BACKENDS.get(backend_id) }.copied()
}

fn slot_names(frontend: &ServiceKey, slot: u16, backend_id: u32) -> bool {
    // SAFETY: as in `select`.
    unsafe { SERVICES.get(frontend.with_slot(slot)) }
        .is_some_and(|entry| entry.backend_id == backend_id)
}

fn backend_in_slot(frontend: &ServiceKey, slot: u16, front: &ServiceValue) -> Selection {
    // The agent writes slots before raising the count, so a missing slot
    // means the maps were edited by hand: fail open rather than refuse.
    let Some(entry) = (unsafe { SERVICES.get(frontend.with_slot(slot)) }) else {
        return Selection::NotAService;
    };
    match unsafe { BACKENDS.get(entry.backend_id) } {
        Some(backend) => Selection::Backend(Chosen {
            backend: *backend,
            id: entry.backend_id,
            slot,
            flags: front.flags,
            service_counter: front.counter,
            backend_counter: entry.counter,
        }),
        None => Selection::NotAService,
    }
}
