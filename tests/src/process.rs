//! `Spawned`: a child process killed and reaped on drop, started inside a
//! test's network namespace and, optionally, inside a test's cgroup.

use std::{
    io::Read,
    os::{fd::AsRawFd, unix::process::CommandExt},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    cgroup::{self, Cgroup},
    command,
    netns::NetNs,
};

/// How long drop waits for a SIGKILLed child to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(10);

#[derive(Debug)]
pub struct Spawned {
    child: Child,
    label: String,
}

impl Spawned {
    /// Spawns `cmd` so that the child enters `netns` and then joins `cgroup`
    /// before exec: the program never runs a single instruction outside them,
    /// so even its first connect() goes through the cgroup's hooks.
    pub fn spawn(cmd: &mut Command, netns: &NetNs, cgroup: Option<&Cgroup>) -> Result<Self> {
        prepare(cmd, netns, cgroup)?;
        Self::start(cmd)
    }

    /// Spawns a command [`prepare`]d already (with more hooks after it).
    pub fn start(cmd: &mut Command) -> Result<Self> {
        let label = command::describe(cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot spawn `{label}`"))?;
        Ok(Self { child, label })
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("a pid fits pid_t")
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The child handle, e.g. to take its piped stdout.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Sends `sig` (e.g. `libc::SIGINT`) unless the child was already reaped.
    pub fn signal(&mut self, sig: i32) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        // SAFETY: plain syscall; the pid is still ours as it is not reaped.
        if unsafe { libc::kill(self.pid(), sig) } != 0 {
            bail!(
                "kill({}, {sig}): {}",
                self.pid(),
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// The exit status if the child has ended.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Waits at most `timeout` for the child to end.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGKILL and reap (bounded).
    pub fn kill(&mut self) -> Result<Option<ExitStatus>> {
        self.signal(libc::SIGKILL)?;
        self.wait_timeout(REAP_TIMEOUT)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        match self.kill() {
            Ok(Some(_)) => {}
            Ok(None) => eprintln!("warning: `{}` did not die", self.label),
            Err(e) => eprintln!("warning: killing `{}`: {e:#}", self.label),
        }
    }
}

/// Adds the pre-exec steps: die with the parent, enter the namespace, join
/// the cgroup (in that order, so the namespace switch is not charged to a
/// cgroup that may have hooks).
pub fn prepare(cmd: &mut Command, netns: &NetNs, cgroup: Option<&Cgroup>) -> Result<()> {
    // SAFETY: prctl is async-signal-safe. If the test process is SIGKILLed
    // its children must not outlive it. (The signal fires when the spawning
    // *thread* exits; tests keep their guards on the thread that made them.)
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    netns.enter(cmd)?;
    if let Some(cgroup) = cgroup {
        let procs = cgroup.open_procs()?;
        // SAFETY: the hook only write(2)s to an fd opened before fork.
        unsafe {
            cmd.pre_exec(move || cgroup::join(procs.as_raw_fd()));
        }
    }
    Ok(())
}

/// Runs `cmd` in `netns` (and `cgroup`) to completion within `timeout`,
/// capturing stdout and stderr. Does not look at the exit status.
pub fn run_bounded(
    cmd: &mut Command,
    netns: &NetNs,
    cgroup: Option<&Cgroup>,
    timeout: Duration,
) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    finish_bounded(Spawned::spawn(cmd, netns, cgroup)?, timeout)
}

/// Makes a [`prepare`]d command run as `uid` (group `uid`, no
/// supplementary groups), as a pod's process of another user does: the
/// switch comes after entering the namespace and cgroup, which need root,
/// and drops every capability.
pub fn run_as(cmd: &mut Command, uid: u32) {
    // SAFETY: setgroups/setgid/setuid are async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Waits (bounded) for a child spawned with piped stdout and stderr and
/// collects both. Does not look at the exit status.
pub fn finish_bounded(mut spawned: Spawned, timeout: Duration) -> Result<Output> {
    // Readers on threads, or a child filling one pipe while we wait on the
    // other would deadlock.
    let mut out = spawned.child.stdout.take().context("stdout")?;
    let mut err = spawned.child.stderr.take().context("stderr")?;
    let out_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let Some(status) = spawned.wait_timeout(timeout)? else {
        spawned.kill()?;
        bail!("`{}` did not finish within {timeout:?}", spawned.label);
    };
    Ok(Output {
        status,
        stdout: out_thread.join().unwrap_or_default(),
        stderr: err_thread.join().unwrap_or_default(),
    })
}
