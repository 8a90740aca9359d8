//! Before Linux 5.11 the kernel charges every BPF map and program to the
//! loader's `RLIMIT_MEMLOCK` (64 KiB by default, 8 MiB under recent
//! systemd), not to its memory cgroup: the agent's maps need hundreds of
//! MiB. On such a kernel the agent lifts the limit before it loads
//! anything, which takes `CAP_SYS_RESOURCE` unless the runtime gave an
//! unlimited one already; without either it stops with one line saying so
//! rather than failing on whichever map happens to come first.

use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit};
use tracing::info;

use super::DatapathError;

/// Makes `RLIMIT_MEMLOCK` unlimited, or says why it cannot.
pub fn lift(release: &str) -> Result<(), DatapathError> {
    match setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY) {
        Ok(()) => {
            info!(
                kernel = release,
                "RLIMIT_MEMLOCK lifted: this kernel charges BPF maps to it"
            );
            Ok(())
        }
        Err(errno) => match getrlimit(Resource::RLIMIT_MEMLOCK) {
            Ok((soft, _)) if soft == RLIM_INFINITY => Ok(()),
            limit => Err(DatapathError::Memlock {
                release: release.to_owned(),
                limit_kib: limit.map_or(0, |(soft, _)| soft / 1024),
                errno,
            }),
        },
    }
}
