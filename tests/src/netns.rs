//! `NetNs`: a named network namespace (`ip netns add`) removed on drop, and
//! the ways to put work inside it: a command (setns before exec) or a closure
//! (on a thread of its own that enters the namespace and then ends, so the
//! test's own threads never change namespace).

use std::{
    fs::File,
    io,
    os::{
        fd::{AsRawFd, RawFd},
        unix::process::CommandExt,
    },
    path::PathBuf,
    process::Command,
};

use anyhow::{Context, Result, anyhow};

use crate::{command, name};

#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `sy-<kind>-<pid>-<n>` with `lo` up and IPv6 duplicate address
    /// detection off, so addresses added later are usable at once instead of
    /// staying "tentative" for a second or two.
    pub fn new(kind: &str) -> Result<Self> {
        let ns = Self {
            name: name::unique(kind),
        };
        command::ip(&["netns", "add", &ns.name])?;
        // From here on the guard exists, so a failure below still deletes it.
        ns.ip(&["link", "set", "lo", "up"])?;
        for scope in ["all", "default"] {
            ns.sysctl(&format!("net/ipv6/conf/{scope}/accept_dad"), "0")?;
        }
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount `ip netns` keeps the namespace alive with.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n NAME ARGS...`; returns stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        command::ip(&full)
    }

    /// Runs `program ARGS...` inside the namespace to completion; fails on a
    /// non-zero exit, returns stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut cmd = self.command(program)?;
        cmd.args(args);
        command::run(&mut cmd)
    }

    /// A `Command` whose child enters this namespace before it execs.
    pub fn command(&self, program: &str) -> Result<Command> {
        let mut cmd = Command::new(program);
        self.enter(&mut cmd)?;
        Ok(cmd)
    }

    /// Makes the child of `cmd` enter this namespace before it execs.
    pub fn enter<'a>(&self, cmd: &'a mut Command) -> Result<&'a mut Command> {
        let file = self.open()?;
        // SAFETY: the hook only calls setns(2), which is async-signal-safe;
        // the file is opened before fork and moved into the hook so the fd
        // stays valid in the child (O_CLOEXEC closes it at exec).
        unsafe {
            cmd.pre_exec(move || setns(file.as_raw_fd()));
        }
        Ok(cmd)
    }

    /// Runs `f` on a fresh thread that has entered this namespace. The thread
    /// ends afterwards, so no other thread of the test changes namespace. It
    /// carries the caller's name (libtest names a test's thread after it),
    /// which reports from inside it need.
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let file = self.open()?;
        let mut thread = std::thread::Builder::new();
        if let Some(name) = std::thread::current().name() {
            thread = thread.name(name.to_owned());
        }
        std::thread::scope(|s| {
            let handle = thread
                .spawn_scoped(s, move || -> Result<T> {
                    setns(file.as_raw_fd()).context("setns")?;
                    Ok(f())
                })
                .context("spawning a thread")?;
            match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Writes a sysctl of this namespace (`key` as a path under
    /// /proc/sys, e.g. `net/ipv6/conf/all/accept_dad`). /proc/sys/net shows
    /// the namespace of the thread that opens it, hence [`Self::within`].
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = PathBuf::from("/proc/sys").join(key);
        self.within(|| std::fs::write(&path, value))?
            .with_context(|| format!("sysctl {key}={value} in {}", self.name))
    }

    /// Opens the namespace file for setns(2).
    pub fn open(&self) -> Result<File> {
        File::open(self.path()).with_context(|| format!("cannot open netns {}", self.name))
    }
}

/// Moves the calling thread into the network namespace behind `fd`.
pub fn setns(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd; no memory is passed.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace also destroys every veth and bridge in it
        // (and the peer ends elsewhere).
        if let Err(e) = command::ip(&["netns", "del", &self.name]) {
            eprintln!("warning: {e:#}");
        }
    }
}

/// Names listed by `ip netns list` (first word of each line).
pub fn list() -> Result<Vec<String>> {
    let out = command::ip(&["netns", "list"]).map_err(|e| anyhow!("{e:#}"))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}
