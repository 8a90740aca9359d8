//! Backends a frontend lost in a pass: kube-proxy's stale endpoints, whose
//! UDP conntrack entries it flushes so the next datagram reaches a live
//! backend. Here it is the connected sockets the socket hooks sent to them
//! that must go (`node::socket_reaper`).
//!
//! An endpoint that still serves (terminating, or left out by topology) is
//! not stale: its sockets drain, as kube-proxy keeps its flows.

use std::net::SocketAddr;

use switchyard_abi::{Backend, SCOPE_INTERNAL, ServiceKey};

use crate::{
    model::{DesiredState, Frontend, Protocol},
    plan::{datapath_state::DatapathState, map_op::MapOp},
};

/// One frontend (as the socket hooks see it) and a backend it no longer has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StaleBackend {
    pub frontend: SocketAddr,
    pub backend: SocketAddr,
    pub protocol: Protocol,
}

/// The backends slots stopped naming during a pass, noted as it applies.
#[derive(Debug, Default)]
pub struct Departures {
    left: Vec<(ServiceKey, Backend)>,
}

impl Departures {
    /// Call before `op` is applied to `programmed`. Only the socket hooks'
    /// frontends count: the per-packet path moves a UDP flow off a gone
    /// backend by itself.
    pub fn note(&mut self, programmed: &DatapathState, op: &MapOp) {
        let (key, replacement) = match *op {
            MapOp::PutSlot {
                key, backend_id, ..
            } => (key, Some(backend_id)),
            MapOp::DeleteSlot { key } => (key, None),
            _ => return,
        };
        if key.scope != SCOPE_INTERNAL {
            return;
        }
        let Some(&id) = programmed
            .frontends
            .get(&key.with_slot(0))
            .and_then(|frontend| frontend.slots.get(&key.slot))
            .map(|slot| &slot.backend_id)
        else {
            return;
        };
        if replacement == Some(id) {
            return;
        }
        if let Some(backend) = programmed.backends.get(&id) {
            self.left.push((key.with_slot(0), *backend));
        }
    }

    /// After the pass: what left and is neither in another slot of its
    /// frontend now nor still serving there.
    pub fn stale(self, programmed: &DatapathState, desired: &DesiredState) -> Vec<StaleBackend> {
        let mut stale: Vec<StaleBackend> = self
            .left
            .into_iter()
            .filter(|(key, backend)| !still_has(programmed, key, backend))
            .filter(|(key, backend)| !drains(desired, key, backend))
            .filter_map(|(key, backend)| {
                Some(StaleBackend {
                    frontend: SocketAddr::new(key.addr.into(), u16::from_be(key.port)),
                    backend: SocketAddr::new(backend.addr.into(), u16::from_be(backend.port)),
                    protocol: Protocol::from_number(key.proto)?,
                })
            })
            .collect();
        stale.sort();
        stale.dedup();
        stale
    }
}

fn same(a: &Backend, b: &Backend) -> bool {
    a.addr == b.addr && a.port == b.port
}

fn still_has(programmed: &DatapathState, key: &ServiceKey, backend: &Backend) -> bool {
    programmed.frontends.get(key).is_some_and(|frontend| {
        frontend
            .active_slots()
            .flatten()
            .filter_map(|id| programmed.backends.get(&id))
            .any(|kept| same(kept, backend))
    })
}

fn drains(desired: &DesiredState, key: &ServiceKey, backend: &Backend) -> bool {
    let Ok(frontend) = Frontend::try_from(key) else {
        return false;
    };
    desired.frontends.get(&frontend).is_some_and(|want| {
        want.draining
            .iter()
            .any(|endpoint| same(&Backend::from(endpoint), backend))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::fixtures, plan::plan};

    fn pass(from: &DesiredState, to: &DesiredState) -> Vec<StaleBackend> {
        let mut programmed = DatapathState::default();
        for op in plan(&programmed, from) {
            programmed.apply(&op);
        }
        let mut departures = Departures::default();
        for op in plan(&programmed, to) {
            departures.note(&programmed, &op);
            programmed.apply(&op);
        }
        departures.stale(&programmed, to)
    }

    fn names(stale: &[StaleBackend]) -> Vec<(String, String)> {
        stale
            .iter()
            .map(|s| (s.frontend.to_string(), s.backend.to_string()))
            .collect()
    }

    #[test]
    fn a_removed_backend_is_stale_on_its_frontend_only() {
        let before = fixtures::desired(&[("10.96.0.10", 53, &[1, 2]), ("10.96.0.11", 53, &[1])]);
        let after = fixtures::desired(&[("10.96.0.10", 53, &[2]), ("10.96.0.11", 53, &[1])]);
        let stale = pass(&before, &after);
        assert_eq!(
            names(&stale),
            [("10.96.0.10:53".into(), "10.244.0.1:8080".into())]
        );
    }

    #[test]
    fn a_backend_that_moves_slot_or_still_serves_is_not_stale() {
        let before = fixtures::desired(&[("10.96.0.10", 53, &[1, 2, 3])]);
        // 1 leaves; 3 may move into its slot; 2 is terminating but serving.
        let mut after = fixtures::desired(&[("10.96.0.10", 53, &[3])]);
        let draining = fixtures::desired(&[("10.96.0.10", 53, &[2])]);
        let frontend = after.frontends.values_mut().next().unwrap();
        frontend.draining = draining.frontends.into_values().next().unwrap().backends;
        let stale = pass(&before, &after);
        assert_eq!(
            names(&stale),
            [("10.96.0.10:53".into(), "10.244.0.1:8080".into())]
        );
    }

    #[test]
    fn a_removed_service_leaves_every_backend_stale() {
        let before = fixtures::desired(&[("10.96.0.10", 53, &[1, 2])]);
        let stale = pass(&before, &DesiredState::default());
        assert_eq!(stale.len(), 2, "{stale:?}");
    }
}
