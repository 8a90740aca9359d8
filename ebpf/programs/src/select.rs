//! Backend selection over the slot layout: slot 0 says how many backends a
//! frontend has, a random slot in 1..=count names one.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use switchyard_abi::{Backend, ServiceKey};

use crate::maps::{BACKENDS, SERVICES};

pub enum Selection {
    /// Not a frontend we serve: leave the socket call alone.
    NotAService,
    /// A frontend with no usable backend: the caller must be refused.
    NoBackends,
    Backend(Backend),
}

pub fn select(frontend: &ServiceKey) -> Selection {
    // SAFETY: map values are plain integers; the pointer is valid for the
    // duration of this program run.
    let Some(front) = (unsafe { SERVICES.get(frontend) }) else {
        return Selection::NotAService;
    };
    let count = u32::from(front.count);
    if count == 0 {
        return Selection::NoBackends;
    }
    // SAFETY: a helper with no arguments.
    let pick = unsafe { bpf_get_prandom_u32() } % count;
    // `pick < count <= u16::MAX`, so the slot fits.
    let slot = frontend.with_slot(pick as u16 + 1);
    // The agent writes slots before raising the count, so a missing slot
    // means the maps were edited by hand: fail open rather than refuse.
    let Some(entry) = (unsafe { SERVICES.get(slot) }) else {
        return Selection::NotAService;
    };
    match unsafe { BACKENDS.get(entry.backend_id) } {
        Some(backend) => Selection::Backend(*backend),
        None => Selection::NotAService,
    }
}
