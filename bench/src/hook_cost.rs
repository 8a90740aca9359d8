//! Kernel time of the agent's hooks per run, from the kernel's own
//! BPF run-time statistics (BPF_ENABLE_STATS: on only while the returned
//! guard lives, and only for this measurement).

use std::{os::fd::OwnedFd, path::Path};

use anyhow::{Context, Result};
use aya::programs::{
    links::{FdLink, PinnedLink},
    loaded_programs,
};

/// Statistics collection, on while this lives.
pub struct StatsGuard {
    _fd: OwnedFd,
}

pub fn enable() -> Result<StatsGuard> {
    let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("BPF_ENABLE_STATS (needs kernel 5.8 and root)")?;
    Ok(StatsGuard { _fd: fd })
}

/// Cumulative run time and run count of one program.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct RunStats {
    pub run_time_ns: u64,
    pub runs: u64,
}

impl RunStats {
    /// What ran between `earlier` and `self`.
    pub fn since(&self, earlier: &RunStats) -> RunStats {
        RunStats {
            run_time_ns: self.run_time_ns.saturating_sub(earlier.run_time_ns),
            runs: self.runs.saturating_sub(earlier.runs),
        }
    }

    pub fn add(&mut self, other: &RunStats) {
        self.run_time_ns += other.run_time_ns;
        self.runs += other.runs;
    }

    /// Mean nanoseconds per run.
    #[expect(
        clippy::cast_precision_loss,
        reason = "a mean for the report; exact below 2^53 ns"
    )]
    pub fn ns_per_run(&self) -> Option<f64> {
        (self.runs > 0).then(|| self.run_time_ns as f64 / self.runs as f64)
    }
}

/// Reads the statistics of the program behind the newest pinned link named
/// `program` under `<pins>/links/<generation>/`.
pub fn read(pins: &Path, program: &str) -> Result<RunStats> {
    let link_path = newest_link(pins, program)?;
    let link: FdLink = PinnedLink::from_pin(&link_path)
        .with_context(|| format!("open pinned link {}", link_path.display()))?
        .into();
    let id = link.info().context("link info")?.program_id();
    for info in loaded_programs() {
        let info = info.context("listing loaded programs")?;
        if info.id() == id {
            return Ok(stats_of(&info));
        }
    }
    anyhow::bail!("program {id} behind {} is not loaded", link_path.display())
}

/// The statistics of every per-packet program (behind a link named
/// `program@device`) of the newest generation under `<pins>/links/`, added
/// up, each program once however many devices it is attached to: the
/// kernel time the agent's per-packet hooks took.
pub fn read_packet_programs(pins: &Path) -> Result<RunStats> {
    let links = pins.join("links");
    let generation = std::fs::read_dir(&links)
        .with_context(|| format!("read {}", links.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .max()
        .with_context(|| format!("no generation under {}", links.display()))?;
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(&generation)? {
        let path = entry?.path();
        if !path.to_string_lossy().contains('@') {
            continue;
        }
        let link: FdLink = PinnedLink::from_pin(&path)
            .with_context(|| format!("open pinned link {}", path.display()))?
            .into();
        ids.push(link.info().context("link info")?.program_id());
    }
    ids.sort_unstable();
    ids.dedup();
    let mut total = RunStats::default();
    for info in loaded_programs() {
        let info = info.context("listing loaded programs")?;
        if ids.binary_search(&info.id()).is_ok() {
            total.add(&stats_of(&info));
        }
    }
    Ok(total)
}

fn stats_of(info: &aya::programs::ProgramInfo) -> RunStats {
    RunStats {
        // The kernel counts in u64 nanoseconds.
        run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
        runs: info.run_count(),
    }
}

fn newest_link(pins: &Path, program: &str) -> Result<std::path::PathBuf> {
    let links = pins.join("links");
    let mut generations: Vec<_> = std::fs::read_dir(&links)
        .with_context(|| format!("read {}", links.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(program).exists())
        .collect();
    generations.sort();
    generations
        .pop()
        .map(|dir| dir.join(program))
        .with_context(|| format!("no pinned {program} link under {}", links.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_add_up_to_a_mean() {
        let mut total = RunStats::default();
        assert_eq!(total.ns_per_run(), None);
        let a = RunStats {
            run_time_ns: 1_000,
            runs: 10,
        };
        let b = RunStats {
            run_time_ns: 4_000,
            runs: 20,
        };
        total.add(&b.since(&a));
        total.add(&RunStats {
            run_time_ns: 500,
            runs: 5,
        });
        assert_eq!(total.ns_per_run(), Some(3_500.0 / 15.0));
        assert_eq!(a.since(&b).runs, 0);
    }
}
