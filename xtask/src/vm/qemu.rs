//! One boot under QEMU: the kernel and initramfs, the serial console read
//! line by line into a [`Run`] and a log file, and QEMU killed on timeout,
//! on any error and when the xtask itself dies.

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::results::{Run, SUITE};

pub struct Boot<'a> {
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
    pub log: &'a Path,
    pub timeout: Duration,
    pub memory_mib: u32,
    pub cpus: u32,
}

/// Kills QEMU when dropped (timeout, error, panic).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boots and reads the console into `run` until QEMU exits or the timeout.
pub fn boot(spec: &Boot<'_>, run: &mut Run) -> Result<()> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-nodefaults", "-no-reboot", "-display", "none"])
        .args(["-serial", "stdio"])
        // /dev/kvm is there but nested KVM hangs on these machines; TCG
        // works everywhere.
        .args(["-accel", "tcg", "-cpu", "max"])
        .args(["-m", &spec.memory_mib.to_string()])
        .args(["-smp", &spec.cpus.to_string()])
        .arg("-kernel")
        .arg(spec.vmlinuz)
        .arg("-initrd")
        .arg(spec.initramfs)
        .args([
            "-append",
            // panic=-1 with -no-reboot: a kernel panic ends QEMU at once.
            "console=ttyS0 rdinit=/init panic=-1 loglevel=4 random.trust_cpu=on",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: prctl(2) is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            // QEMU goes when the xtask goes, also on SIGKILL.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = Guard(
        cmd.spawn()
            .context("cannot start qemu-system-x86_64 (cargo xtask setup installs it)")?,
    );
    let stdout = child.0.stdout.take().context("qemu stdout")?;
    let (lines, receive) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if lines
                        .send(String::from_utf8_lossy(&buf).into_owned())
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    let mut log = File::create(spec.log).with_context(|| format!("{}", spec.log.display()))?;
    let deadline = Instant::now() + spec.timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match receive.recv_timeout(left) {
            Ok(line) => {
                log.write_all(line.as_bytes())?;
                if line.contains(SUITE) || line.starts_with("test ") {
                    print!("  [{}] {line}", run.kernel);
                }
                run.line(&line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                run.error = Some(format!("timed out after {:?}", spec.timeout));
                break;
            }
        }
    }
    drop(child);
    Ok(())
}
