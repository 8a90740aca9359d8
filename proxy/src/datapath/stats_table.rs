//! The per-Service-port and per-pair counters as the kernel holds them,
//! each entry summed over the CPUs (see `switchyard_abi::stats`).

use std::path::Path;

use aya::maps::{MapData, PerCpuArray};
use switchyard_abi::{
    BACKEND_COUNTS, BACKEND_STATS_MAP, BackendCounts, SERVICE_COUNTS, SERVICE_STATS_MAP,
    ServiceCounts,
};

use super::{DatapathError, pinned::open_pinned};

pub struct StatsTable {
    services: PerCpuArray<MapData, ServiceCounts>,
    backends: PerCpuArray<MapData, BackendCounts>,
}

impl StatsTable {
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        Ok(Self {
            services: open_pinned(pin_dir, SERVICE_STATS_MAP)?,
            backends: open_pinned(pin_dir, BACKEND_STATS_MAP)?,
        })
    }

    /// A Service port entry's counts, every CPU's added up.
    pub fn service(&self, index: u32) -> Result<[u64; SERVICE_COUNTS], DatapathError> {
        let per_cpu = self
            .services
            .get(&index, 0)
            .map_err(|source| DatapathError::map(SERVICE_STATS_MAP, source))?;
        Ok(sum(per_cpu.iter().map(|counts| &counts.counts)))
    }

    /// A (Service port, backend) entry's counts, every CPU's added up.
    pub fn backend(&self, index: u32) -> Result<[u64; BACKEND_COUNTS], DatapathError> {
        let per_cpu = self
            .backends
            .get(&index, 0)
            .map_err(|source| DatapathError::map(BACKEND_STATS_MAP, source))?;
        Ok(sum(per_cpu.iter().map(|counts| &counts.counts)))
    }
}

fn sum<'a, const N: usize>(copies: impl Iterator<Item = &'a [u64; N]>) -> [u64; N] {
    let mut total = [0u64; N];
    for copy in copies {
        for (total, count) in total.iter_mut().zip(copy) {
            *total = total.wrapping_add(*count);
        }
    }
    total
}
