//! Linux capabilities, for tests that prove which ones the agent needs: a
//! process started with exactly a pod's set (the DaemonSet's
//! `capabilities.add`, read from `deploy/daemonset.yaml` so the test and the
//! deployment cannot drift apart), applied as a container runtime applies
//! it, or one test thread running with a smaller effective set.
//!
//! Linux keeps capabilities per thread: `capset(2)` on pid 0 changes only
//! the calling thread, so a test can narrow its own thread without touching
//! the other tests the harness runs beside it.

use std::{fmt, io, os::unix::process::CommandExt, process::Command};

use anyhow::{Context, Result, bail};

/// The memlock limit a container gets: systemd's default for services
/// since v253, which containerd and its containers inherit.
const RUNTIME_MEMLOCK: libc::rlim_t = 8 << 20;
/// Kernel numbering (`include/uapi/linux/capability.h`), by the names
/// Kubernetes uses (without `CAP_`).
const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// A set of capabilities, one bit per kernel number.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CapabilitySet(u64);

impl CapabilitySet {
    /// The set named by Kubernetes names (`NET_ADMIN`, `BPF`, ...).
    pub fn named(names: &[&str]) -> Result<Self> {
        names.iter().try_fold(Self(0), |set, name| {
            let number = NAMES
                .iter()
                .position(|known| known == name)
                .with_context(|| format!("unknown capability {name}"))?;
            Ok(Self(set.0 | 1 << number))
        })
    }

    /// What `deploy/daemonset.yaml` adds for the agent's container (it
    /// drops every other). The file is compiled in: the VMs have no tree.
    pub fn daemonset() -> Result<Self> {
        const DAEMONSET: &str = include_str!("../../deploy/daemonset.yaml");
        let daemonset: serde_yaml::Value = serde_yaml::from_str(DAEMONSET)?;
        let added = &daemonset["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]
            ["add"];
        let Some(added) = added.as_sequence() else {
            bail!("deploy/daemonset.yaml: no capabilities.add list");
        };
        let names: Vec<&str> = added.iter().filter_map(serde_yaml::Value::as_str).collect();
        Self::named(&names)
    }

    /// What this process holds (its permitted set): no child can be given
    /// more.
    pub fn held() -> Result<Self> {
        let status = std::fs::read_to_string("/proc/self/status")?;
        let hex = status
            .lines()
            .find_map(|line| line.strip_prefix("CapPrm:"))
            .context("/proc/self/status has no CapPrm line")?;
        Ok(Self(u64::from_str_radix(hex.trim(), 16)?))
    }

    /// The names of this set's capabilities that `other` lacks.
    pub fn missing_from(self, other: Self) -> Vec<&'static str> {
        NAMES
            .iter()
            .enumerate()
            .filter(|&(number, _)| self.0 & !other.0 & 1 << number != 0)
            .map(|(_, name)| *name)
            .collect()
    }

    /// This set less `names`.
    pub fn without(self, names: &[&str]) -> Result<Self> {
        Ok(Self(self.0 & !Self::named(names)?.0))
    }

    pub fn contains(self, name: &str) -> bool {
        Self::named(&[name]).is_ok_and(|one| self.0 & one.0 == one.0)
    }

    /// Makes `cmd`'s process start with exactly this set, as a container
    /// runtime does for a pod running as root: every other capability
    /// leaves the bounding set (so exec cannot grant it back), no new
    /// privileges, and the permitted, effective and inheritable sets are
    /// narrowed to this one. Its memlock limit is the one systemd gives
    /// services (and containerd its containers) since v253, 8 MiB, whatever
    /// the test process had. Register after any `pre_exec` that needs more
    /// (entering a network namespace needs `SYS_ADMIN`).
    pub fn confine(self, cmd: &mut Command) {
        // Never above this process's own hard limit, which only
        // CAP_SYS_RESOURCE could raise.
        let mut own = libc::rlimit {
            rlim_cur: RUNTIME_MEMLOCK,
            rlim_max: RUNTIME_MEMLOCK,
        };
        // SAFETY: getrlimit(2) writes one rlimit, which `own` is.
        let ceiling = if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &raw mut own) } == 0 {
            own.rlim_max.min(RUNTIME_MEMLOCK)
        } else {
            RUNTIME_MEMLOCK
        };
        // SAFETY: the hook only makes prctl(2), setrlimit(2) and capset(2)
        // calls, all async-signal-safe, on the child between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let memlock = libc::rlimit {
                    rlim_cur: ceiling,
                    rlim_max: ceiling,
                };
                if libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const memlock) != 0 {
                    return Err(io::Error::last_os_error());
                }
                for number in 0..64 {
                    if self.0 & 1 << number == 0
                        && libc::prctl(libc::PR_CAPBSET_DROP, number, 0, 0, 0) != 0
                    {
                        let error = io::Error::last_os_error();
                        // Numbers past the kernel's last capability.
                        if error.raw_os_error() != Some(libc::EINVAL) {
                            return Err(error);
                        }
                    }
                }
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                set_thread(self.0, self.0, self.0)
            });
        }
    }

    /// Runs `work` on this thread with only this set effective (never more
    /// than the thread had), then restores the thread's effective set.
    pub fn effective_during<T>(self, work: impl FnOnce() -> T) -> Result<T> {
        let (effective, permitted, inheritable) = thread()?;
        set_thread(self.0 & permitted, permitted, inheritable)
            .context("narrowing this thread's effective capabilities")?;
        let result = work();
        set_thread(effective, permitted, inheritable)
            .context("restoring this thread's effective capabilities")?;
        Ok(result)
    }
}

impl fmt::Debug for CapabilitySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = NAMES
            .iter()
            .enumerate()
            .filter(|(number, _)| self.0 & 1 << number != 0)
            .map(|(_, name)| *name);
        f.debug_set().entries(names).finish()
    }
}

/// The kernel's `struct __user_cap_header_struct`.
#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

/// The kernel's `struct __user_cap_data_struct`, one per 32 bits.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The calling thread's (effective, permitted, inheritable) sets.
fn thread() -> io::Result<(u64, u64, u64)> {
    let mut header = Header {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: header and two data words are what version 3 reads and writes.
    if unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let join = |low: u32, high: u32| u64::from(high) << 32 | u64::from(low);
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
        join(data[0].inheritable, data[1].inheritable),
    ))
}

/// Sets the calling thread's sets (async-signal-safe: one syscall).
fn set_thread(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
    let mut header = Header {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    #[expect(
        clippy::cast_possible_truncation,
        reason = "splitting into 32-bit words"
    )]
    let split = |set: u64, word: u32| (set >> (32 * word)) as u32;
    let data = [0, 1].map(|word| Data {
        effective: split(effective, word),
        permitted: split(permitted, word),
        inheritable: split(inheritable, word),
    });
    // SAFETY: header and two data words are what version 3 reads.
    if unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_the_kernels_numbers() {
        let set = CapabilitySet::named(&["NET_ADMIN", "SYS_ADMIN", "BPF"]).unwrap();
        assert_eq!(set.0, 1 << 12 | 1 << 21 | 1 << 39);
        assert!(set.contains("BPF") && !set.contains("PERFMON"));
        assert_eq!(format!("{set:?}"), r#"{"NET_ADMIN", "SYS_ADMIN", "BPF"}"#);
        assert!(CapabilitySet::named(&["CAP_BPF"]).is_err());
    }

    #[test]
    fn the_daemonset_drops_what_it_does_not_add() {
        let set = CapabilitySet::daemonset().unwrap();
        assert!(set.contains("BPF") && set.contains("NET_ADMIN"), "{set:?}");
        assert!(!set.contains("DAC_OVERRIDE"), "{set:?}");
    }
}
