//! `Cgroup`: a cgroup v2 directory created for one test, the only place the
//! agent may attach socket hooks. On drop every process still in it is killed
//! and the directory removed.

use std::{
    fs::{File, OpenOptions},
    io,
    os::{fd::RawFd, unix::ffi::OsStrExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{
    mount::{mount, umount},
    name,
    scratch::Scratch,
};

/// How long drop waits for killed processes to leave before giving up.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    /// Set when no cgroup2 was mounted and we mounted one ourselves.
    own_mount: Option<Scratch>,
}

impl Cgroup {
    /// Creates `sy-<kind>-<pid>-<n>` directly under the cgroup2 mount.
    pub fn new(kind: &str) -> Result<Self> {
        let (root, own_mount) = if let Some(root) = cgroup2_mount()? {
            (root, None)
        } else {
            let dir = Scratch::new("cgroup2")?;
            mount("cgroup2", dir.path(), "cgroup2")?;
            (dir.path().to_owned(), Some(dir))
        };
        let path = root.join(name::unique(kind));
        if let Err(e) = std::fs::create_dir(&path) {
            if let Some(dir) = &own_mount {
                let _ = umount(dir.path());
            }
            return Err(e).with_context(|| format!("cannot create cgroup {}", path.display()));
        }
        Ok(Self { path, own_mount })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `cgroup.procs` for writing, so a child can join with write("0")
    /// between fork and exec (see `process`).
    pub fn open_procs(&self) -> Result<File> {
        OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.procs"))
            .with_context(|| format!("cannot open {}/cgroup.procs", self.path.display()))
    }

    /// Pids currently in the cgroup.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let text = std::fs::read_to_string(self.path.join("cgroup.procs"))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    fn kill_all(&self) {
        let kill_file = self.path.join("cgroup.kill");
        if kill_file.exists() && std::fs::write(&kill_file, "1").is_ok() {
            return;
        }
        // Kernels before 5.14 lack cgroup.kill.
        for pid in self.pids().unwrap_or_default() {
            // SAFETY: plain syscall.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Joins the cgroup behind `procs_fd` from a freshly forked child: async-
/// signal-safe (one write of a static buffer).
pub fn join(procs_fd: RawFd) -> io::Result<()> {
    // SAFETY: writes one byte from a static buffer to a valid fd.
    if unsafe { libc::write(procs_fd, b"0".as_ptr().cast(), 1) } != 1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        self.kill_all();
        // rmdir fails with EBUSY until every task has left; killed processes
        // need a moment, and zombies must be reaped by their parents.
        loop {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if Instant::now() >= deadline => {
                    eprintln!("warning: cannot remove cgroup {}: {e}", self.path.display());
                    break;
                }
                Err(_) => {
                    self.kill_all();
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        if let Some(dir) = &self.own_mount
            && let Err(e) = umount(dir.path())
        {
            eprintln!("warning: {e:#}");
        }
    }
}

/// The mount point of the cgroup2 hierarchy, from /proc/self/mountinfo.
pub fn cgroup2_mount() -> Result<Option<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info.lines().find_map(|line| {
        // Fields: id parent major:minor root mountpoint opts [optional...] - fstype ...
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(unescape))?
    }))
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> PathBuf {
    let mut out = Vec::new();
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(r"/a\040b"), PathBuf::from("/a b"));
        assert_eq!(unescape("/sys/fs/cgroup"), PathBuf::from("/sys/fs/cgroup"));
        assert_eq!(unescape(r"/x\"), PathBuf::from(r"/x\"));
    }
}
