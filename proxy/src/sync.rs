//! One level-triggered pass: desired state in, map operations out, applied
//! in plan order against a mirror of what the maps hold.
//!
//! An operation that fails (a full map, say) is reported and its dependents
//! are held back, so the kernel never sees a slot naming a missing backend or
//! a count covering a missing slot. The next pass retries what is missing,
//! because it plans from the mirror, which only records what succeeded.

use tracing::{debug, error};

use crate::{
    datapath::{DatapathError, MapReader, MapWriter},
    datapath_state::DatapathState,
    model::DesiredState,
    plan::{MapOp, plan},
};

pub struct Syncer<W> {
    writer: W,
    programmed: DatapathState,
}

#[derive(Debug, Default)]
pub struct SyncReport {
    pub applied: usize,
    pub held_back: usize,
    pub failed: Vec<(MapOp, DatapathError)>,
}

impl<W: MapWriter + MapReader> Syncer<W> {
    /// Starts from what the maps already hold (a previous agent's work), so
    /// the first pass changes only what differs.
    pub fn adopt(writer: W) -> Result<Self, DatapathError> {
        let programmed = writer.read_state()?;
        Ok(Self { writer, programmed })
    }
}

impl<W: MapWriter> Syncer<W> {
    pub fn programmed(&self) -> &DatapathState {
        &self.programmed
    }

    pub fn writer(&self) -> &W {
        &self.writer
    }

    pub fn sync(&mut self, desired: &DesiredState) -> SyncReport {
        let mut report = SyncReport::default();
        for op in plan(&self.programmed, desired) {
            if !self.programmed.admits(&op) {
                debug!(?op, "held back: depends on an operation that failed");
                report.held_back += 1;
                continue;
            }
            match self.writer.apply(&op) {
                Ok(()) => {
                    self.programmed.apply(&op);
                    report.applied += 1;
                }
                Err(err) => {
                    error!(error = %err, ?op, "map operation failed");
                    report.failed.push((op, err));
                }
            }
        }
        report
    }
}
