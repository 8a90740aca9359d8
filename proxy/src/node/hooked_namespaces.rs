//! The network namespaces the socket hooks serve: those of the processes
//! in the hooked cgroup and below it.
//!
//! Reaching them takes two capabilities: `SYS_PTRACE` to open the
//! namespace of a process of another user or holding a capability the
//! agent lacks (a default container holds several), `SYS_ADMIN` to enter
//! one. An agent without them still balances every connection (that is
//! the hooks' work); what it loses is said once, in one line naming the
//! capability.

use std::{
    collections::BTreeSet,
    fs::File,
    io,
    os::unix::fs::MetadataExt,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

use tracing::warn;

/// The namespaces found, and how many processes' namespaces could not be
/// opened for lack of permission.
pub struct Hooked {
    /// One open handle per distinct network namespace.
    pub handles: Vec<File>,
    pub denied: u64,
}

/// What was out of reach, for the one line that says so.
#[derive(Clone, Copy)]
pub enum Denied {
    /// `/proc/PID/ns/net` of another user's process, or of one holding a
    /// capability the agent lacks.
    Open,
    /// `setns` into a namespace.
    Enter,
}

static OPEN_REPORTED: AtomicBool = AtomicBool::new(false);
static ENTER_REPORTED: AtomicBool = AtomicBool::new(false);

impl Denied {
    /// Logs, once per agent, what `self` costs and the capability that
    /// would allow it.
    pub fn report(self, error: &io::Error) {
        let (reported, capability) = match self {
            Self::Open => (&OPEN_REPORTED, "SYS_PTRACE"),
            Self::Enter => (&ENTER_REPORTED, "SYS_ADMIN"),
        };
        if !reported.swap(true, Ordering::Relaxed) {
            warn!(
                %error,
                capability,
                "cannot reach pods' network namespaces without this capability: sockets of \
                 removed backends stay connected and the socket path cannot check \
                 loadBalancerSourceRanges for them (every connection is still balanced)"
            );
        }
    }

    /// Whether `error` is a refusal for lack of permission.
    pub fn is_denial(error: &io::Error) -> bool {
        error.kind() == io::ErrorKind::PermissionDenied
    }
}

/// The network namespaces of the processes in `cgroup` and its
/// descendants. Processes that exit meanwhile are skipped.
pub fn namespaces(cgroup: &Path) -> Hooked {
    let mut seen = BTreeSet::new();
    let mut hooked = Hooked {
        handles: Vec::new(),
        denied: 0,
    };
    let mut dirs = vec![cgroup.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs
                .lines()
                .filter_map(|line| line.trim().parse::<u32>().ok())
            {
                let file = match File::open(format!("/proc/{pid}/ns/net")) {
                    Ok(file) => file,
                    Err(error) if Denied::is_denial(&error) => {
                        Denied::Open.report(&error);
                        hooked.denied += 1;
                        continue;
                    }
                    Err(_) => continue,
                };
                if let Ok(meta) = file.metadata()
                    && seen.insert((meta.dev(), meta.ino()))
                {
                    hooked.handles.push(file);
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            dirs.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    hooked
}
