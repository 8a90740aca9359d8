//! When to sync, as kube-proxy's bounded-frequency runner decides: a change
//! asks for a sync, which runs at once unless the last one was less than
//! `min_interval` ago (then it waits for that); bursts of changes coalesce
//! into one sync; with no change at all a sync still runs every
//! `max_interval`, so drift in the kernel maps is repaired.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct SyncRunner {
    min_interval: Duration,
    max_interval: Duration,
    last_run: Option<Instant>,
    requested: bool,
}

impl SyncRunner {
    pub fn new(min_interval: Duration, max_interval: Duration) -> Self {
        Self {
            min_interval,
            max_interval: max_interval.max(min_interval),
            last_run: None,
            // The first sync is always wanted.
            requested: true,
        }
    }

    /// A change arrived; the next sync should see it.
    pub fn request(&mut self) {
        self.requested = true;
    }

    pub fn is_requested(&self) -> bool {
        self.requested
    }

    /// When the next sync is due.
    pub fn next_run(&self, now: Instant) -> Instant {
        match (self.last_run, self.requested) {
            (None, _) => now,
            (Some(last), true) => (last + self.min_interval).max(now),
            (Some(last), false) => last + self.max_interval,
        }
    }

    /// A sync ran (started) at `at`.
    pub fn ran(&mut self, at: Instant) {
        self.last_run = Some(at);
        self.requested = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(30);

    #[test]
    fn first_sync_is_immediate() {
        let now = Instant::now();
        assert_eq!(SyncRunner::new(MIN, MAX).next_run(now), now);
    }

    #[test]
    fn schedule_table() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        // (last run, requested since, now, expected next run) in ms
        let cases: &[(u64, bool, u64, u64)] = &[
            (0, true, 500, 500),        // long enough ago: now
            (0, true, 40, 100),         // too soon: at last + min
            (0, false, 40, 30_000),     // nothing asked: the periodic resync
            (0, false, 31_000, 30_000), // overdue periodic: already due
        ];
        for &(last, requested, now, expected) in cases {
            let mut runner = SyncRunner::new(MIN, MAX);
            runner.ran(at(last));
            if requested {
                runner.request();
            }
            assert_eq!(
                runner.next_run(at(now)),
                at(expected),
                "{last} {requested} {now}"
            );
        }
    }

    #[test]
    fn requests_coalesce_into_one_run() {
        let start = Instant::now();
        let mut runner = SyncRunner::new(MIN, MAX);
        runner.ran(start);
        for _ in 0..100 {
            runner.request();
        }
        let due = runner.next_run(start + Duration::from_millis(10));
        assert_eq!(due, start + MIN);
        runner.ran(due);
        assert!(!runner.is_requested());
        assert_eq!(runner.next_run(due), due + MAX);
    }

    #[test]
    fn max_is_never_below_min() {
        let start = Instant::now();
        let mut runner = SyncRunner::new(Duration::from_secs(2), Duration::from_secs(1));
        runner.ran(start);
        assert_eq!(runner.next_run(start), start + Duration::from_secs(2));
    }
}
