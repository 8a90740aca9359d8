//! Unique names for kernel objects. Tests of several processes may run on the
//! same machine at once, so every name carries the pid and a per-process
//! counter, and starts with `sy-` so a leak is easy to attribute.

use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The prefix every object created by the harness carries.
pub const PREFIX: &str = "sy-";

/// `sy-<kind>-<pid>-<n>`, unique within this machine while this process lives.
pub fn unique(kind: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}{kind}-{}-{n}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed_and_distinct() {
        let a = unique("ns");
        let b = unique("ns");
        assert!(a.starts_with("sy-ns-"));
        assert_ne!(a, b);
        assert!(a.contains(&std::process::id().to_string()));
    }
}
