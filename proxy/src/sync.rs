//! One level-triggered pass: desired state in, map operations out, applied
//! in plan order against a mirror of what the maps hold.
//!
//! Operations go to the writer in chunks (which it may write as batched
//! updates), recorded in the mirror as they are admitted. An operation that
//! fails (a full map, say) is reported, the mirror is read back from the
//! maps (it had run ahead of them), and what depended on the failed write
//! is held back, so the kernel never sees a slot naming a missing backend
//! or a count covering a missing slot. The next pass retries what is
//! missing, because it plans from the mirror, which holds what succeeded.

use std::collections::{BTreeSet, VecDeque};

use tracing::{debug, error};

use crate::{
    datapath::{DatapathError, MapReader, MapWriter, Stopped},
    model::{DesiredState, Frontend},
    plan::{
        datapath_state::DatapathState,
        drift::Drift,
        map_op::MapOp,
        plan, plan_frontends,
        stale_backends::{Departures, StaleBackend},
    },
};

/// Operations handed to the writer at once: enough for batched updates to
/// pay off, few enough that a failure re-plans little.
const CHUNK: usize = 16_384;

pub struct Syncer<W> {
    writer: W,
    programmed: DatapathState,
}

#[derive(Debug, Default)]
pub struct SyncReport {
    pub applied: usize,
    pub held_back: usize,
    pub failed: Vec<(MapOp, DatapathError)>,
    /// Backends the socket hooks' frontends lost for good in this pass.
    pub stale: Vec<StaleBackend>,
}

impl<W: MapWriter + MapReader> Syncer<W> {
    /// Starts from what the maps already hold (a previous agent's work), so
    /// the first pass changes only what differs.
    pub fn adopt(writer: W) -> Result<Self, DatapathError> {
        let programmed = writer.read_state()?;
        Ok(Self { writer, programmed })
    }

    pub fn programmed(&self) -> &DatapathState {
        &self.programmed
    }

    #[cfg(test)]
    pub(crate) fn writer(&self) -> &W {
        &self.writer
    }

    pub fn sync(&mut self, desired: &DesiredState) -> SyncReport {
        let ops = plan(&self.programmed, desired);
        self.apply(ops, desired)
    }

    /// A pass over just `scope`, for when only those frontends may have
    /// changed and the previous pass completed.
    pub fn sync_frontends(
        &mut self,
        desired: &DesiredState,
        scope: &BTreeSet<Frontend>,
    ) -> SyncReport {
        let ops = plan_frontends(&self.programmed, desired, scope);
        self.apply(ops, desired)
    }

    fn apply(&mut self, ops: Vec<MapOp>, desired: &DesiredState) -> SyncReport {
        let mut report = SyncReport::default();
        let mut departures = Departures::default();
        let mut queue = VecDeque::from(ops);
        let mut chunk = Vec::with_capacity(CHUNK.min(queue.len()));
        // Maps a write failed on take no more writes this pass: one full
        // map costs one failure, not one per remaining entry.
        let mut failed_maps: Vec<&'static str> = Vec::new();
        while !queue.is_empty() {
            chunk.clear();
            while chunk.len() < CHUNK
                && let Some(op) = queue.pop_front()
            {
                if op.is_put() && failed_maps.contains(&op.map()) {
                    report.held_back += 1;
                    continue;
                }
                if !self.programmed.admits(&op) {
                    debug!(?op, "held back: depends on an operation that failed");
                    report.held_back += 1;
                    continue;
                }
                departures.note(&self.programmed, &op);
                self.programmed.apply(&op);
                chunk.push(op);
            }
            let Err(Stopped { applied, error }) = self.writer.apply_all(&chunk) else {
                report.applied += chunk.len();
                continue;
            };
            report.applied += applied;
            let mut rest = chunk.drain(applied..);
            let Some(failed) = rest.next() else {
                continue;
            };
            error!(%error, op = ?failed, "map operation failed");
            failed_maps.push(failed.map());
            report.failed.push((failed, error));
            // What was not tried goes back in front, to be admitted again
            // against the maps as they are.
            for op in rest.rev() {
                queue.push_front(op);
            }
            // Departures noted for writes that did not happen are dropped
            // by `stale`: the maps read back still have those backends.
            if let Err(error) = self.reread() {
                error!(%error, "reading the maps back after a failed write");
                report.held_back += queue.len();
                break;
            }
        }
        report.stale = departures.stale(&self.programmed, desired);
        report
    }

    /// Reads the maps back and compares them with the mirror. When they
    /// differ, the mirror becomes what the maps hold, so the next pass
    /// repairs every drifted entry (see `plan::drift`).
    pub fn check_drift(&mut self) -> Result<Drift, DatapathError> {
        let drift = self.writer.drift_against(&self.programmed)?;
        if !drift.is_empty() {
            self.programmed = self.writer.read_state()?;
        }
        Ok(drift)
    }

    /// The mirror ran ahead of the maps: read them back.
    fn reread(&mut self) -> Result<(), DatapathError> {
        self.programmed = self.writer.read_state()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{datapath::fake::FakeMaps, model::fixtures};

    /// `[(vip, backend octets)]` on port 80.
    fn desired(spec: &[(&str, &[u8])]) -> DesiredState {
        let spec: Vec<(&str, u16, &[u8])> = spec
            .iter()
            .map(|&(vip, octets)| (vip, 80, octets))
            .collect();
        fixtures::desired(&spec)
    }

    #[test]
    fn drift_is_found_and_the_next_pass_repairs_it() {
        let mut syncer = Syncer::adopt(FakeMaps::default()).unwrap();
        let want = desired(&[("10.96.0.10", &[1, 2])]);
        syncer.sync(&want);
        assert!(syncer.check_drift().unwrap().is_empty());
        // Behind the agent's back: a backend's port rewritten.
        let backend = syncer.writer.state.backends.values_mut().next().unwrap();
        backend.port = backend.port.wrapping_add(1);
        let drift = syncer.check_drift().unwrap();
        assert_eq!(
            drift.maps().collect::<Vec<_>>(),
            [(switchyard_abi::BACKENDS_MAP, 1)]
        );
        let repair = syncer.sync(&want);
        // The right backend under a new id, a counter entry for the pair
        // zeroed, the slot moved to it, the stray entry removed:
        // make-before-break, as any change.
        assert_eq!(repair.applied, 4);
        assert!(syncer.check_drift().unwrap().is_empty());
        assert_eq!(syncer.programmed(), &syncer.writer().state);
    }

    #[test]
    fn converges_and_then_does_nothing() {
        let mut syncer = Syncer::adopt(FakeMaps::default()).unwrap();
        let want = desired(&[("10.96.0.10", &[1, 2]), ("10.96.0.11", &[2])]);
        let first = syncer.sync(&want);
        assert!(first.failed.is_empty() && first.held_back == 0);
        assert_eq!(first.applied, syncer.writer().applied.len());
        assert_eq!(syncer.programmed(), &syncer.writer().state);
        let second = syncer.sync(&want);
        assert_eq!((second.applied, second.held_back), (0, 0));
    }

    #[test]
    fn adopts_what_the_maps_already_hold() {
        let want = desired(&[("10.96.0.10", &[1, 2, 3])]);
        let mut first = Syncer::adopt(FakeMaps::default()).unwrap();
        first.sync(&want);
        let maps = FakeMaps {
            state: first.programmed().clone(),
            ..FakeMaps::default()
        };
        let mut restarted = Syncer::adopt(maps).unwrap();
        assert_eq!(restarted.sync(&want).applied, 0);
    }

    #[test]
    fn a_full_map_holds_back_only_what_depends_on_the_failed_write() {
        let maps = FakeMaps {
            backend_capacity: Some(2),
            ..FakeMaps::default()
        };
        let mut syncer = Syncer::adopt(maps).unwrap();
        let want = desired(&[("10.96.0.10", &[1, 2]), ("10.96.0.11", &[3])]);
        let report = syncer.sync(&want);

        assert_eq!(report.failed.len(), 1);
        assert_eq!(report.failed[0].1.reason(), "map_full");
        assert!(report.held_back >= 2, "{report:?}");
        let state = &syncer.writer().state;
        assert!(state.dangling().is_empty(), "{:?}", state.dangling());
        let served: Vec<_> = state.active_frontends().map(|(key, _)| *key).collect();
        let first = want.frontends.keys().next().unwrap().key();
        assert_eq!(served, [first], "the service that fits is served");

        // Room appears (a resize, or another service going away): the next
        // pass finishes the job from the mirror.
        syncer.writer.backend_capacity = None;
        let retry = syncer.sync(&want);
        assert!(retry.failed.is_empty() && retry.held_back == 0);
        assert_eq!(syncer.programmed().active_frontends().count(), 2);
        assert!(syncer.programmed().dangling().is_empty());
    }
}
