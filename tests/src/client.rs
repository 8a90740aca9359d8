//! `Prober`: `netprobe` runs inside a namespace and, optionally, a cgroup,
//! with their JSON output parsed. Running inside an agent's cgroup is what
//! puts the probes under its socket hooks. `Client`, the client namespace and
//! cgroup of the one-node topology, probes through it.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{
    cgroup::Cgroup,
    netns::NetNs,
    probe::{self, Attempt, Datagram, HttpResult, Summary},
    process::{self, Spawned},
};

/// Per-attempt socket timeout the helpers pass to netprobe.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Client {
    pub netns: NetNs,
    /// The cgroup the agent attaches to (`--cgroup`).
    pub cgroup: Cgroup,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

impl Client {
    pub fn new(netns: NetNs, cgroup: Cgroup, ipv4: Ipv4Addr, ipv6: Ipv6Addr) -> Self {
        Self {
            netns,
            cgroup,
            ipv4,
            ipv6,
        }
    }

    /// Probes from the client netns, inside the client cgroup.
    pub fn prober(&self) -> Prober<'_> {
        Prober::new(&self.netns, Some(&self.cgroup))
    }

    /// See [`Prober::netprobe`].
    pub fn netprobe(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        self.prober().netprobe(args, timeout)
    }

    /// See [`Prober::tcp`].
    pub fn tcp(&self, to: SocketAddr, count: u32) -> Result<Vec<Attempt>> {
        self.prober().tcp(to, count)
    }

    /// See [`Prober::udp`].
    pub fn udp(&self, to: SocketAddr, count: u32, connected: bool) -> Result<Vec<Attempt>> {
        self.prober().udp(to, count, connected)
    }

    /// See [`Prober::burst`].
    pub fn burst(&self, to: SocketAddr, count: u32) -> Result<Summary> {
        self.prober().burst(to, count)
    }

    /// See [`Prober::hold`].
    pub fn hold(&self, to: SocketAddr, duration: Duration, interval: Duration) -> Result<Summary> {
        self.prober().hold(to, duration, interval)
    }

    /// See [`Prober::spawn_hold`].
    pub fn spawn_hold(
        &self,
        to: SocketAddr,
        duration: Duration,
        interval: Duration,
        out: PathBuf,
    ) -> Result<PendingSummary> {
        self.prober().spawn_hold(to, duration, interval, out)
    }
}

/// Where a probe runs: a namespace and, when the probe must pass an agent's
/// socket hooks, the cgroup they are attached to. Without a cgroup the probe
/// stays in the test's own cgroup, which no agent ever hooks (an outside
/// client, or a check that bypasses the agent).
#[derive(Clone, Copy, Debug)]
pub struct Prober<'a> {
    pub netns: &'a NetNs,
    pub cgroup: Option<&'a Cgroup>,
    /// Runs the probes as this user instead of root.
    user: Option<u32>,
}

impl<'a> Prober<'a> {
    pub fn new(netns: &'a NetNs, cgroup: Option<&'a Cgroup>) -> Self {
        Self {
            netns,
            cgroup,
            user: None,
        }
    }

    /// The same probes run as `uid` without capabilities, as a pod's
    /// process of another user (the agent needs `SYS_PTRACE` to enter its
    /// network namespace).
    pub fn as_user(self, uid: u32) -> Self {
        Self {
            user: Some(uid),
            ..self
        }
    }

    /// `netprobe ARGS...` in the namespace (and cgroup), killed after
    /// `timeout`. The exit status is left to the caller.
    pub fn netprobe(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        let mut cmd = Command::new(probe::binary()?);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        process::finish_bounded(self.spawn(&mut cmd)?, timeout)
    }

    /// Spawns `cmd` in the namespace and cgroup, as the probes' user.
    fn spawn(&self, cmd: &mut Command) -> Result<Spawned> {
        process::prepare(cmd, self.netns, self.cgroup)?;
        if let Some(uid) = self.user {
            process::run_as(cmd, uid);
        }
        Spawned::start(cmd)
    }

    /// `netprobe tcp`: one attempt per connection.
    pub fn tcp(&self, to: SocketAddr, count: u32) -> Result<Vec<Attempt>> {
        self.attempts(&["tcp", "--to", &to.to_string()], count)
    }

    /// `netprobe udp`, with `sendto()` or, if `connected`, `connect()`+`send()`.
    pub fn udp(&self, to: SocketAddr, count: u32, connected: bool) -> Result<Vec<Attempt>> {
        self.udp_from(to, count, connected, 0)
    }

    /// [`Self::udp`] from a fixed source port (0: any).
    pub fn udp_from(
        &self,
        to: SocketAddr,
        count: u32,
        connected: bool,
        source_port: u16,
    ) -> Result<Vec<Attempt>> {
        let to = to.to_string();
        let port = source_port.to_string();
        let mut args = vec!["udp", "--to", &to, "--source-port", &port];
        if connected {
            args.push("--connected");
        }
        self.attempts(&args, count)
    }

    /// [`Self::udp`] with requests and replies padded to `size` bytes:
    /// above the MTU each goes as IP fragments.
    pub fn udp_sized(&self, to: SocketAddr, count: u32, size: usize) -> Result<Vec<Attempt>> {
        let to = to.to_string();
        let size = size.to_string();
        self.attempts(&["udp", "--to", &to, "--size", &size], count)
    }

    fn attempts(&self, args: &[&str], count: u32) -> Result<Vec<Attempt>> {
        let count_arg = count.to_string();
        let timeout_ms = ATTEMPT_TIMEOUT.as_millis().to_string();
        let mut full = args.to_vec();
        full.extend(["--count", &count_arg, "--timeout-ms", &timeout_ms]);
        // Each attempt may wait on connect and on read.
        let output = self.netprobe(&full, ATTEMPT_TIMEOUT * 2 * count + SLACK)?;
        let attempts: Vec<Attempt> = parse(&output)?;
        if attempts.len() != count as usize {
            bail!(
                "netprobe printed {} of {count} attempts: {}",
                attempts.len(),
                stderr(&output)
            );
        }
        Ok(attempts)
    }

    /// `netprobe burst`: `count` connections folded into one summary.
    pub fn burst(&self, to: SocketAddr, count: u32) -> Result<Summary> {
        self.parallel_burst(to, count, 1)
    }

    /// [`Self::burst`] with `parallel` connections in flight at once.
    pub fn parallel_burst(&self, to: SocketAddr, count: u32, parallel: u32) -> Result<Summary> {
        let output = self.netprobe(
            &[
                "burst",
                "--to",
                &to.to_string(),
                "--count",
                &count.to_string(),
                "--parallel",
                &parallel.to_string(),
            ],
            ATTEMPT_TIMEOUT * 2 * count.div_ceil(parallel.max(1)) + SLACK,
        )?;
        single(parse(&output)?, &output)
    }

    /// `netprobe hold`: one connection used every `interval` for `duration`.
    pub fn hold(&self, to: SocketAddr, duration: Duration, interval: Duration) -> Result<Summary> {
        let args = hold_args(to, duration, interval);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = self.netprobe(&args, duration * 2 + SLACK)?;
        single(parse(&output)?, &output)
    }

    /// Starts `netprobe hold` in the background, e.g. to restart the agent
    /// while a connection is open; collect it with [`PendingSummary::wait`].
    pub fn spawn_hold(
        &self,
        to: SocketAddr,
        duration: Duration,
        interval: Duration,
        out: PathBuf,
    ) -> Result<PendingSummary> {
        let args = hold_args(to, duration, interval);
        Background::spawn(self, &args, out, duration * 2 + SLACK).map(PendingSummary)
    }

    /// Starts a background probe that runs until `stop_file` exists (at
    /// most `longest`): `netprobe hold` on one connection, or `netprobe
    /// churn` opening a new TCP or UDP connection every `interval`.
    pub fn spawn_until(
        &self,
        probe: Paced,
        to: SocketAddr,
        interval: Duration,
        until: (&std::path::Path, Duration),
        out: PathBuf,
    ) -> Result<PendingSummary> {
        let (stop_file, longest) = until;
        let mut args = match probe {
            Paced::Hold => hold_args(to, longest, interval),
            Paced::Churn { udp } => {
                let mut args = hold_args(to, longest, interval);
                args[0] = "churn".into();
                if udp {
                    args.push("--udp".into());
                }
                args
            }
        };
        args.extend(["--stop-file".into(), stop_file.display().to_string()]);
        Background::spawn(self, &args, out, longest * 2 + SLACK).map(PendingSummary)
    }

    /// Starts `netprobe udp-hold` in the background: one UDP socket to
    /// `to` (connect()ed, or sendto() each time), a datagram every
    /// `interval` for `duration`.
    pub fn spawn_udp_hold(
        &self,
        to: SocketAddr,
        connected: bool,
        duration: Duration,
        interval: Duration,
        out: PathBuf,
    ) -> Result<PendingDatagrams> {
        let mut args = vec![
            "udp-hold".into(),
            "--to".into(),
            to.to_string(),
            "--duration-ms".into(),
            duration.as_millis().to_string(),
            "--interval-ms".into(),
            interval.as_millis().to_string(),
        ];
        if connected {
            args.push("--connected".into());
        }
        Background::spawn(self, &args, out, duration * 2 + SLACK).map(PendingDatagrams)
    }

    /// `netprobe udp-connect-churn`: `count` UDP sockets connect()ed to `to`
    /// and closed.
    pub fn udp_connect_churn(
        &self,
        to: SocketAddr,
        count: u32,
        timeout: Duration,
    ) -> Result<Summary> {
        let output = self.netprobe(
            &[
                "udp-connect-churn",
                "--to",
                &to.to_string(),
                "--count",
                &count.to_string(),
            ],
            timeout,
        )?;
        single(parse(&output)?, &output)
    }

    /// `netprobe http-get`: one HTTP/1.1 `GET path` to `to`; the status and
    /// body, or an error naming what failed ("refused", "timeout"...).
    pub fn http_get(&self, to: SocketAddr, path: &str) -> Result<(u16, String)> {
        let timeout_ms = ATTEMPT_TIMEOUT.as_millis().to_string();
        let output = self.netprobe(
            &[
                "http-get",
                "--to",
                &to.to_string(),
                "--path",
                path,
                "--timeout-ms",
                &timeout_ms,
            ],
            ATTEMPT_TIMEOUT * 2 + SLACK,
        )?;
        let mut items: Vec<HttpResult> = parse(&output)?;
        let (Some(result), true) = (items.pop(), items.is_empty()) else {
            bail!("expected one http-get line: {}", stderr(&output));
        };
        match (result.ok, result.status) {
            (true, Some(status)) => Ok((status, result.body.unwrap_or_default())),
            _ => bail!(
                "GET http://{to}{path} failed: {}",
                result.error.as_deref().unwrap_or("unknown")
            ),
        }
    }
}

/// What [`Prober::spawn_until`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paced {
    /// One connection used at every interval.
    Hold,
    /// A new connection at every interval.
    Churn { udp: bool },
}

/// Extra time for process start and teardown on a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(10);

fn hold_args(to: SocketAddr, duration: Duration, interval: Duration) -> Vec<String> {
    vec![
        "hold".into(),
        "--to".into(),
        to.to_string(),
        "--duration-ms".into(),
        duration.as_millis().to_string(),
        "--interval-ms".into(),
        interval.as_millis().to_string(),
    ]
}

/// A background netprobe writing JSON lines to a file.
struct Background {
    spawned: Spawned,
    out: PathBuf,
    timeout: Duration,
}

impl Background {
    fn spawn(
        prober: &Prober<'_>,
        args: &[String],
        out: PathBuf,
        timeout: Duration,
    ) -> Result<Self> {
        let mut cmd = Command::new(probe::binary()?);
        cmd.args(args);
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&out)?)
            .stderr(Stdio::inherit());
        let spawned = prober.spawn(&mut cmd)?;
        Ok(Self {
            spawned,
            out,
            timeout,
        })
    }

    /// Waits (bounded) for the probe and parses what it printed.
    fn lines<T: serde::de::DeserializeOwned>(mut self) -> Result<Vec<T>> {
        if self.spawned.wait_timeout(self.timeout)?.is_none() {
            bail!(
                "`{}` did not finish within {:?}",
                self.spawned.label(),
                self.timeout
            );
        }
        let text = std::fs::read(&self.out)
            .with_context(|| format!("cannot read {}", self.out.display()))?;
        probe::parse_lines(&text)
    }
}

/// A background `netprobe hold`.
pub struct PendingSummary(Background);

impl PendingSummary {
    /// Waits (bounded) for the probe and returns its summary.
    pub fn wait(self) -> Result<Summary> {
        let mut summaries: Vec<Summary> = self.0.lines()?;
        summaries.pop().context("netprobe hold printed no summary")
    }
}

/// A background `netprobe udp-hold`.
pub struct PendingDatagrams(Background);

impl PendingDatagrams {
    /// Waits (bounded) for the probe and returns every datagram it sent.
    pub fn wait(self) -> Result<Vec<Datagram>> {
        self.0.lines()
    }
}

fn parse<T: serde::de::DeserializeOwned>(output: &Output) -> Result<Vec<T>> {
    probe::parse_lines(&output.stdout).with_context(|| stderr(output))
}

fn single(mut items: Vec<Summary>, output: &Output) -> Result<Summary> {
    match (items.pop(), items.is_empty()) {
        (Some(s), true) => Ok(s),
        _ => bail!("expected one summary line: {}", stderr(output)),
    }
}

fn stderr(output: &Output) -> String {
    format!(
        "netprobe {}; stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    )
}
