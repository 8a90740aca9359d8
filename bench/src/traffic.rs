//! Running `loadgen` clients in the client namespace and cgroup, bounded in
//! time, and reading their JSON results.

use std::{
    io::Read,
    net::SocketAddrV4,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use switchyard_tests::{Spawned, process::run_bounded};

use crate::{
    load_result::LoadResult,
    rig::{CLIENT_CPU, Rig},
};

/// What a run may take beyond its own duration before it is killed.
const GRACE: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
pub enum Test {
    /// Connect, one request, close with a reset (no TIME_WAIT left).
    ConnectRequestClose,
    /// Connect, one request, close with a FIN, as clients do: every
    /// connection leaves a TIME_WAIT behind.
    ConnectRequestFin,
    /// 64-byte round trips on one connection.
    RequestResponse,
    /// Bulk bytes from the server.
    Stream,
    /// Small UDP datagrams to the server, back to back.
    UdpFlood,
}

impl Test {
    fn subcommand(self) -> &'static str {
        match self {
            Test::ConnectRequestClose | Test::ConnectRequestFin => "crr",
            Test::RequestResponse => "rr",
            Test::Stream => "stream",
            Test::UdpFlood => "flood",
        }
    }
}

/// Whether the client runs in the cgroup the agent's socket hooks are on.
/// Service clients always do (in the other modes nothing is attached
/// there); the NodePort client plays an outside host and never does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Pod,
    Outside,
}

pub fn run(
    rig: &Rig,
    test: Test,
    target: SocketAddrV4,
    duration: Duration,
    origin: Origin,
) -> Result<LoadResult> {
    let mut cmd = Command::new(&rig.loadgen);
    cmd.args([test.subcommand(), "--target", &target.to_string()])
        .args(["--duration-ms", &duration.as_millis().to_string()])
        .args(["--cpu", &CLIENT_CPU.to_string()])
        .args(["--max-ops", &max_operations(duration).to_string()]);
    if matches!(test, Test::ConnectRequestFin) {
        cmd.arg("--graceful");
    }
    let cgroup = (origin == Origin::Pod).then_some(&rig.cgroup);
    let output = run_bounded(&mut cmd, &rig.client, cgroup, duration + GRACE)?;
    parse(&output.stdout, &output.stderr, output.status.success())
}

/// The operation cap of a run: loadgen's 2 million, or 100,000 a second
/// for long runs, so that a five-minute churn runs its five minutes (at
/// 10,000 connections a second the 2 million ended it after 200 s).
fn max_operations(duration: Duration) -> u64 {
    (duration.as_secs() * 100_000).max(2_000_000)
}

fn parse(stdout: &[u8], stderr: &[u8], success: bool) -> Result<LoadResult> {
    if !success {
        bail!("loadgen failed: {}", String::from_utf8_lossy(stderr).trim());
    }
    serde_json::from_slice(stdout)
        .with_context(|| format!("loadgen printed {:?}", String::from_utf8_lossy(stdout)))
}

/// A `loadgen watch` probing `target` until `expect` answers; started before
/// the change it is to see.
pub struct Watch {
    process: Spawned,
}

impl Watch {
    pub fn start(rig: &Rig, target: SocketAddrV4, expect: &str, timeout: Duration) -> Result<Self> {
        let mut cmd = Command::new(&rig.loadgen);
        cmd.args(["watch", "--target", &target.to_string(), "--expect", expect])
            .args(["--timeout-ms", &timeout.as_millis().to_string()])
            .args(["--cpu", &CLIENT_CPU.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let process = Spawned::spawn(&mut cmd, &rig.client, Some(&rig.cgroup))?;
        Ok(Self { process })
    }

    /// Waits for the watch to end and returns what it saw.
    pub fn finish(mut self, timeout: Duration) -> Result<LoadResult> {
        let status = self
            .process
            .wait_timeout(timeout)?
            .context("loadgen watch did not end")?;
        let child = self.process.child_mut();
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        if let Some(out) = child.stdout.as_mut() {
            out.read_to_end(&mut stdout)?;
        }
        if let Some(err) = child.stderr.as_mut() {
            err.read_to_end(&mut stderr)?;
        }
        parse(&stdout, &stderr, status.success())
    }
}
