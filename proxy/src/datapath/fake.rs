//! An in-memory datapath with the real one's failure modes, for testing the
//! sync loop without a kernel.

use switchyard_abi::BACKENDS_MAP;

use super::{DatapathError, MapReader, MapWriter};
use crate::plan::{datapath_state::DatapathState, map_op::MapOp};

#[derive(Default)]
pub struct FakeMaps {
    pub state: DatapathState,
    /// Backends the fake backend map holds at most, like a kernel map's
    /// `max_entries`; `None` is unbounded.
    pub backend_capacity: Option<usize>,
    pub applied: Vec<MapOp>,
}

impl MapWriter for FakeMaps {
    fn apply(&mut self, op: &MapOp) -> Result<(), DatapathError> {
        if let (MapOp::PutBackend { id, .. }, Some(capacity)) = (op, self.backend_capacity)
            && !self.state.backends.contains_key(id)
            && self.state.backends.len() >= capacity
        {
            let full = std::io::Error::from_raw_os_error(libc::E2BIG);
            return Err(DatapathError::map(
                BACKENDS_MAP,
                aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_update_elem",
                    io_error: full,
                }),
            ));
        }
        self.state.apply(op);
        self.applied.push(op.clone());
        Ok(())
    }
}

impl MapReader for FakeMaps {
    fn read_state(&self) -> Result<DatapathState, DatapathError> {
        // Derived afresh, as reading real maps derives it.
        Ok(self.state.clone().reindexed())
    }
}
