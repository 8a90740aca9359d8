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
    let id = program_behind(&link_path)?;
    let (stats, found) = stats_of_programs(&[id])?;
    anyhow::ensure!(
        found == 1,
        "program {id} behind {} is not loaded",
        link_path.display()
    );
    Ok(stats)
}

/// The statistics of every per-packet program (behind a link named
/// `program@device`) of the newest generation under `<pins>/links/`, added
/// up, each program once however many devices it is attached to: the
/// kernel time the agent's per-packet hooks took.
pub fn read_packet_programs(pins: &Path) -> Result<RunStats> {
    let generation = generations(pins)?
        .pop()
        .with_context(|| format!("no generation under {}", pins.join("links").display()))?;
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(&generation)? {
        let path = entry?.path();
        if path.to_string_lossy().contains('@') {
            ids.push(program_behind(&path)?);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(stats_of_programs(&ids)?.0)
}

/// The id of the program behind the pinned link at `path`.
fn program_behind(path: &Path) -> Result<u32> {
    let link: FdLink = PinnedLink::from_pin(path)
        .with_context(|| format!("open pinned link {}", path.display()))?
        .into();
    Ok(link.info().context("link info")?.program_id())
}

/// The loaded programs of `ids` (sorted) added up, and how many of them
/// were found loaded.
fn stats_of_programs(ids: &[u32]) -> Result<(RunStats, usize)> {
    let mut total = RunStats::default();
    let mut found = 0;
    for info in loaded_programs() {
        let info = info.context("listing loaded programs")?;
        if ids.binary_search(&info.id()).is_ok() {
            found += 1;
            total.add(&RunStats {
                // The kernel counts in u64 nanoseconds.
                run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                runs: info.run_count(),
            });
        }
    }
    Ok((total, found))
}

/// The link generations under `<pins>/links/`, oldest first.
fn generations(pins: &Path) -> Result<Vec<std::path::PathBuf>> {
    let links = pins.join("links");
    let mut generations: Vec<_> = std::fs::read_dir(&links)
        .with_context(|| format!("read {}", links.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    generations.sort();
    Ok(generations)
}

fn newest_link(pins: &Path, program: &str) -> Result<std::path::PathBuf> {
    generations(pins)?
        .into_iter()
        .rev()
        .map(|dir| dir.join(program))
        .find(|link| link.exists())
        .with_context(|| {
            format!(
                "no pinned {program} link under {}",
                pins.join("links").display()
            )
        })
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
