//! `Agent`: the `switchyard` binary running in a node's namespace, with its
//! hooks on a test cgroup and its pins on a test bpffs. Its output goes to a
//! log file that is printed when the test fails.

use std::{
    fs::OpenOptions,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::{
    capability::CapabilitySet,
    multinode::MultiNodeCluster,
    netns::NetNs,
    patience,
    process::{self, Spawned},
    topology::Cluster,
};

/// The agent has this long to program the maps after a start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// A SIGINTed agent has this long to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// A `services`/`cleanup` run has this long.
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);
/// What the agent prints once its first sync has been written to the maps.
const READY_MARK: &str = "programmed";

/// `$SWITCHYARD_BIN`, else `<workspace>/target/debug/switchyard`.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SWITCHYARD_BIN") {
        return path.into();
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent");
    workspace.join("target/debug/switchyard")
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub bin: PathBuf,
    pub manifests: PathBuf,
    /// When set, the agent watches this API server instead of `manifests`.
    pub kubeconfig: Option<PathBuf>,
    pub cgroup: PathBuf,
    /// The pin dir, below a test's bpffs mount.
    pub bpffs: PathBuf,
    pub node_name: String,
    pub extra_args: Vec<String>,
    /// stdout and stderr of every start, appended.
    pub log: PathBuf,
    /// When set, the agent runs with exactly these capabilities, as in a
    /// pod; otherwise with the test's own.
    pub capabilities: Option<CapabilitySet>,
}

impl AgentConfig {
    /// The standard wiring for a [`Cluster`]: its manifests folder, the
    /// client cgroup, `<node bpffs>/switchyard`, the node's name.
    pub fn for_cluster(cluster: &Cluster) -> Self {
        Self {
            bin: binary(),
            manifests: cluster.manifests().path().to_owned(),
            kubeconfig: None,
            cgroup: cluster.client.cgroup.path().to_owned(),
            bpffs: cluster.node.bpffs.join("switchyard"),
            node_name: cluster.node.name.clone(),
            extra_args: Vec::new(),
            log: cluster.scratch.join("agent.log"),
            capabilities: None,
        }
    }

    /// The wiring for node `node_index` (0-based) of a [`MultiNodeCluster`]:
    /// the manifests folder all nodes share, the node's cgroup,
    /// `<node bpffs>/switchyard`, the node's name, a log of its own, and
    /// `--devices eth0` (its LAN interface) for the per-packet path, at XDP
    /// too where the kernel has it (`--xdp native`: the cluster's LAN side
    /// takes XDP frames, see `xdp_peer`). Panics if there is no such node.
    pub fn for_node(cluster: &MultiNodeCluster, node_index: usize) -> Self {
        let node = &cluster.nodes[node_index];
        Self {
            bin: binary(),
            manifests: cluster.manifests().path().to_owned(),
            kubeconfig: None,
            cgroup: node.cgroup.path().to_owned(),
            bpffs: node.bpffs.join("switchyard"),
            node_name: node.name.clone(),
            extra_args: vec![
                "--devices".into(),
                "eth0".into(),
                "--xdp".into(),
                if crate::kernel::lacks(crate::kernel::Feature::XdpDeviceMap) {
                    "auto".into()
                } else {
                    "native".into()
                },
            ],
            log: cluster.scratch.join(format!("{}-agent.log", node.name)),
            capabilities: None,
        }
    }

    /// Watch the API server behind `kubeconfig` (a [`crate::FakeApiServer`]).
    pub fn with_kubeconfig(mut self, kubeconfig: PathBuf) -> Self {
        self.kubeconfig = Some(kubeconfig);
        self
    }

    /// Runs the agent with exactly `capabilities`.
    pub fn confined_to(mut self, capabilities: CapabilitySet) -> Self {
        self.capabilities = Some(capabilities);
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Sets `--flag=value` in place of any earlier `--flag=...` (for the
    /// next start, as a changed DaemonSet would).
    pub fn set_flag(&mut self, flag: &str, value: impl std::fmt::Display) {
        let prefix = format!("{flag}=");
        self.extra_args.retain(|arg| !arg.starts_with(&prefix));
        self.extra_args.push(format!("{prefix}{value}"));
    }
}

pub struct Agent<'a> {
    config: AgentConfig,
    netns: &'a NetNs,
    process: Option<Spawned>,
    /// Log length at the latest start: readiness is judged on what follows.
    log_offset: usize,
}

impl<'a> Agent<'a> {
    /// Starts the agent in `netns` and waits until it is ready.
    pub fn start(config: AgentConfig, netns: &'a NetNs) -> Result<Self> {
        let mut agent = Self::spawn(config, netns)?;
        agent.wait_ready(patience::scaled(READY_TIMEOUT))?;
        Ok(agent)
    }

    /// Starts the agent without waiting (for tests of failing starts).
    pub fn spawn(config: AgentConfig, netns: &'a NetNs) -> Result<Self> {
        let mut agent = Self {
            config,
            netns,
            process: None,
            log_offset: 0,
        };
        agent.launch()?;
        Ok(agent)
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// The wiring the next start uses.
    pub fn config_mut(&mut self) -> &mut AgentConfig {
        &mut self.config
    }

    fn launch(&mut self) -> Result<()> {
        let c = &self.config;
        if !c.bin.is_file() {
            bail!(
                "agent binary {} missing (build it, or set SWITCHYARD_BIN)",
                c.bin.display()
            );
        }
        let log = OpenOptions::new().create(true).append(true).open(&c.log)?;
        self.log_offset = usize::try_from(log.metadata()?.len()).context("agent log too long")?;
        let mut cmd = Command::new(&c.bin);
        cmd.arg("run");
        match &c.kubeconfig {
            Some(kubeconfig) => cmd.arg("--kubeconfig").arg(kubeconfig),
            None => cmd.arg("--manifests").arg(&c.manifests),
        };
        cmd.arg("--cgroup")
            .arg(&c.cgroup)
            .arg("--bpffs")
            .arg(&c.bpffs)
            .arg("--node-name")
            .arg(&c.node_name)
            .args(&c.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        process::prepare(&mut cmd, self.netns, None)?;
        if let Some(capabilities) = c.capabilities {
            capabilities.confine(&mut cmd);
        }
        self.process = Some(Spawned::start(&mut cmd)?);
        Ok(())
    }

    /// Polls until the agent has printed "programmed" since its latest start
    /// and `switchyard services` reads its pins.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .process
                .as_mut()
                .context("agent not running")?
                .try_wait()?
            {
                bail!("agent exited ({status}) before ready:\n{}", self.log());
            }
            let fresh = self.log().get(self.log_offset..).unwrap_or("").to_owned();
            if fresh.contains(READY_MARK) && self.services().is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("agent not ready within {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `switchyard services --bpffs PIN -o json`, parsed: the frontends.
    pub fn services(&self) -> Result<serde_json::Value> {
        let mut report = self.services_report()?;
        Ok(report["frontends"].take())
    }

    /// `switchyard services --bpffs PIN -o json`, parsed: the frontends and
    /// the kernel's features.
    pub fn services_report(&self) -> Result<serde_json::Value> {
        let output = self.tool(&["services", "--bpffs", &self.pins(), "-o", "json"])?;
        let report: serde_json::Value = serde_json::from_slice(&output.stdout)
            .context("switchyard services printed bad JSON")?;
        ensure!(
            report["frontends"].is_array(),
            "switchyard services JSON has no frontends list"
        );
        Ok(report)
    }

    /// `switchyard explain ARGS... --bpffs PIN -o json`, parsed.
    pub fn explain(&self, args: &[&str]) -> Result<serde_json::Value> {
        let pins = self.pins();
        let mut all = vec!["explain"];
        all.extend_from_slice(args);
        all.extend(["--bpffs", &pins, "-o", "json"]);
        let output = self.tool(&all)?;
        serde_json::from_slice(&output.stdout).context("switchyard explain printed bad JSON")
    }

    /// `switchyard explain ARGS... --bpffs PIN`: the words.
    pub fn explain_text(&self, args: &[&str]) -> Result<String> {
        let pins = self.pins();
        let mut all = vec!["explain"];
        all.extend_from_slice(args);
        all.extend(["--bpffs", &pins]);
        let output = self.tool(&all)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `switchyard conntrack --bpffs PIN -o json`: the tracked connections.
    pub fn conntrack(&self) -> Result<serde_json::Value> {
        let output = self.tool(&["conntrack", "--bpffs", &self.pins(), "-o", "json"])?;
        serde_json::from_slice(&output.stdout).context("switchyard conntrack printed bad JSON")
    }

    /// `switchyard services --bpffs PIN`: the table a person reads.
    pub fn services_table(&self) -> Result<String> {
        let output = self.tool(&["services", "--bpffs", &self.pins()])?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `switchyard cleanup --bpffs PIN --cgroup CG --drain-timeout 0s`:
    /// everything removed at once.
    pub fn cleanup(&self) -> Result<Output> {
        self.cleanup_draining(Duration::ZERO, &[])
    }

    /// `switchyard cleanup` draining the per-packet path's connections for
    /// at most `longest`, with `extra` flags (the conntrack timeouts).
    pub fn cleanup_draining(&self, longest: Duration, extra: &[&str]) -> Result<Output> {
        let cgroup = self.config.cgroup.to_string_lossy().into_owned();
        let drain = format!("{}ms", longest.as_millis());
        let mut args = vec![
            "cleanup",
            "--bpffs",
            self.config.bpffs.to_str().unwrap_or_default(),
            "--cgroup",
            &cgroup,
            "--drain-timeout",
            &drain,
        ];
        args.extend_from_slice(extra);
        self.tool_within(&args, longest + TOOL_TIMEOUT)
    }

    fn pins(&self) -> String {
        self.config.bpffs.to_string_lossy().into_owned()
    }

    /// Runs a `switchyard` subcommand (bounded); fails on a non-zero exit.
    fn tool(&self, args: &[&str]) -> Result<Output> {
        self.tool_within(args, TOOL_TIMEOUT)
    }

    fn tool_within(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        let mut cmd = Command::new(&self.config.bin);
        cmd.args(args);
        let output = process::run_bounded(&mut cmd, self.netns, None, timeout)?;
        if !output.status.success() {
            bail!(
                "switchyard {} failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(output)
    }

    /// SIGKILL: no chance to clean up, as in a crash or an OOM kill.
    pub fn kill_hard(&mut self) -> Result<()> {
        if let Some(mut p) = self.process.take() {
            p.kill()?;
        }
        Ok(())
    }

    /// SIGINT, then a bounded wait for a clean exit.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let mut p = self.process.take().context("agent not running")?;
        p.signal(libc::SIGINT)?;
        match p.wait_timeout(STOP_TIMEOUT)? {
            Some(status) => Ok(status),
            None => bail!("agent ignored SIGINT for {STOP_TIMEOUT:?}:\n{}", self.log()),
        }
    }

    /// Waits (bounded) for an agent that should stop on its own, as one
    /// refusing to start does.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let mut p = self.process.take().context("agent not running")?;
        match p.wait_timeout(patience::scaled(timeout))? {
            Some(status) => Ok(status),
            None => bail!("agent still running after {timeout:?}:\n{}", self.log()),
        }
    }

    /// Starts again after `stop` or `kill_hard`, and waits until ready.
    pub fn start_again(&mut self) -> Result<()> {
        if self.process.is_some() {
            bail!("agent still running");
        }
        self.launch()?;
        self.wait_ready(patience::scaled(READY_TIMEOUT))
    }

    /// Starts again without waiting for a first sync (which an agent
    /// cut off from its API server never reaches).
    pub fn relaunch(&mut self) -> Result<()> {
        if self.process.is_some() {
            bail!("agent still running");
        }
        self.launch()
    }

    /// `stop` (SIGINT) then `start_again`, as an upgrade would.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start_again()
    }

    pub fn is_running(&mut self) -> bool {
        match self.process.as_mut() {
            Some(p) => matches!(p.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The running agent's process id.
    pub fn pid(&self) -> Option<i32> {
        self.process.as_ref().map(Spawned::pid)
    }

    /// Everything the agent printed so far, all starts included.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.config.log).unwrap_or_default()
    }
}

impl Drop for Agent<'_> {
    fn drop(&mut self) {
        // Killed before the guards of its cgroup, bpffs and namespace go
        // (they outlive `'a`).
        drop(self.process.take());
        if std::thread::panicking() {
            eprintln!(
                "----- agent log ({}) -----\n{}----- end of agent log -----",
                self.config.log.display(),
                self.log()
            );
        }
    }
}
