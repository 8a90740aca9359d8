//! What one `loadgen` client run reports on stdout, as JSON: the runner and
//! the load generator share this type so neither parses the other's text.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The outcome of one bounded client run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LoadResult {
    /// Completed operations: connections for `crr`, round trips for `rr`.
    pub operations: u64,
    /// Operations that failed (refused, reset, timed out).
    pub errors: u64,
    pub elapsed_s: f64,
    /// Bytes received (`stream` only).
    pub bytes: u64,
    /// Per-operation latency percentiles in microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
    /// Which backend answered, by the name it sent (`crr` only).
    pub backends: BTreeMap<String, u64>,
    /// CLOCK_MONOTONIC nanoseconds when `watch` first saw the expected
    /// backend; 0 if it never did.
    pub seen_at_ns: u64,
}

impl LoadResult {
    #[expect(
        clippy::cast_precision_loss,
        reason = "a count over seconds, as a rate for the report"
    )]
    pub fn rate(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.operations as f64 / self.elapsed_s
        } else {
            0.0
        }
    }

    #[expect(
        clippy::cast_precision_loss,
        reason = "a byte count over seconds, as a rate for the report"
    )]
    pub fn gbit_per_s(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.bytes as f64 * 8.0 / self.elapsed_s / 1e9
        } else {
            0.0
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the one clock the runner and the load
/// generator (another process, in another namespace) both read.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    let sec = u64::try_from(ts.tv_sec).expect("CLOCK_MONOTONIC is never negative");
    let nsec = u64::try_from(ts.tv_nsec).expect("tv_nsec is within 0..1e9");
    sec * 1_000_000_000 + nsec
}

/// Percentile `q` (0..=1) of sorted samples, nearest rank; 0 when empty.
#[expect(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "a rank from a fraction of the sample count; the cast saturates and is clamped"
)]
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of unsorted values; 0 when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[expect(
        clippy::float_cmp,
        reason = "samples are small integers, picked not computed"
    )]
    fn percentiles_by_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&samples, 0.5), 50.0);
        assert_eq!(percentile(&samples, 0.99), 99.0);
        assert_eq!(percentile(&samples, 1.0), 100.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }

    #[test]
    #[expect(
        clippy::float_cmp,
        reason = "the rates divide exactly representable numbers"
    )]
    fn rates_guard_against_zero_time() {
        let none = LoadResult::default();
        assert_eq!(none.rate(), 0.0);
        let some = LoadResult {
            operations: 500,
            bytes: 125_000_000,
            elapsed_s: 0.5,
            ..LoadResult::default()
        };
        assert_eq!(some.rate(), 1000.0);
        assert_eq!(some.gbit_per_s(), 2.0);
    }
}
