//! The agent's per-packet counters (`switchyard_packets_total`), read from
//! its pinned per-CPU map so a run's own share is a difference of two reads
//! rather than a scrape that lags by a collection interval.

use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{MapData, PerCpuArray};
use switchyard_abi::{COUNTERS_LEN, COUNTERS_MAP};

/// Each counter summed over CPUs, by `switchyard_abi::COUNTER_*`.
pub fn read(pins: &Path) -> Result<Vec<u64>> {
    let path = pins.join(COUNTERS_MAP);
    let data =
        MapData::from_pin(&path).with_context(|| format!("open pinned {}", path.display()))?;
    let counters: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))?;
    (0..COUNTERS_LEN)
        .map(|index| Ok(counters.get(&index, 0)?.iter().sum()))
        .collect()
}

/// What was counted between `before` and `after`.
pub fn since(after: &[u64], before: &[u64]) -> Vec<u64> {
    after
        .iter()
        .zip(before)
        .map(|(after, before)| after.saturating_sub(*before))
        .collect()
}
