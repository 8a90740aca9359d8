//! The CPUs this process may run on, as kube-proxy counts them (Go's
//! `runtime.NumCPU`: the scheduler affinity mask, not a cgroup quota), for
//! sizing conntrack per core.

/// CPUs in this process's affinity mask; 1 if it cannot be read.
pub fn allowed_cpus() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
                .and_then(count_list)
        })
        .unwrap_or(1)
}

/// CPUs in a kernel CPU list such as `0-3,8,10-11`.
fn count_list(cpus: &str) -> Option<usize> {
    let mut total = 0usize;
    for range in cpus.trim().split(',').filter(|range| !range.is_empty()) {
        let (low, high) = range.split_once('-').unwrap_or((range, range));
        let (low, high) = (low.parse::<usize>().ok()?, high.parse::<usize>().ok()?);
        total += high.checked_sub(low)? + 1;
    }
    (total > 0).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_ranges_and_single_cpus() {
        assert_eq!(count_list("0-3,8,10-11\n"), Some(7));
        assert_eq!(count_list("0"), Some(1));
        assert_eq!(count_list(""), None);
        assert_eq!(count_list("3-1"), None);
    }

    #[test]
    fn this_process_may_run_somewhere() {
        assert!(allowed_cpus() >= 1);
    }
}
