//! Switchyard as the bench runs it: the real agent in the node namespace,
//! watching a list/watch API server (the harness's stand-in for a
//! kube-apiserver) that holds the catalog, its hooks on the client cgroup.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use switchyard_tests::{
    AddressType, Agent, AgentConfig, Endpoint, EndpointPort, EndpointSliceManifest, FakeApiServer,
    NodeManifest, Protocol, ServiceManifest, ServicePort, ServiceType,
};

use crate::{
    catalog::{KubeProxyService, NAMESPACE, SERVICE_PORT, TARGET_PORT},
    rig::{REMOTE_POD, Rig},
};

pub(crate) const NODE_NAME: &str = "bench-node";
/// node-2's: its pods are other-node endpoints to the agent, as they are
/// on the wire, so NodePort traffic to them is translated to the node's
/// address and sent on by the per-packet path (kube-proxy's masquerade).
const REMOTE_NODE_NAME: &str = "bench-node-2";

/// The node a pod of the rig runs on, by its node's pod range.
fn node_of(pod: Ipv4Addr) -> &'static str {
    if pod.octets()[..3] == REMOTE_POD.octets()[..3] {
        REMOTE_NODE_NAME
    } else {
        NODE_NAME
    }
}
const POLL: Duration = Duration::from_millis(5);

pub struct RunningAgent<'a> {
    pub agent: Agent<'a>,
    pub api: FakeApiServer,
}

impl<'a> RunningAgent<'a> {
    /// Serves `services` from a fresh API server, starts the agent with
    /// `args` besides the rig's and returns once it has programmed all of
    /// them, with the time that took from the process start (the
    /// cold-start figure).
    pub fn start(
        rig: &'a Rig,
        agent_bin: &Path,
        services: &[KubeProxyService],
        args: &[String],
        log: PathBuf,
        ready_timeout: Duration,
    ) -> Result<(Self, Duration)> {
        let api = FakeApiServer::start_in(&rig.node)?;
        api.apply(NodeManifest::new(NODE_NAME).to_value());
        for service in services {
            api.apply(service_object(service));
            api.apply(slice_object(service, &service.endpoints));
        }
        let kubeconfig = rig.scratch.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig)?;
        let config = args.iter().fold(
            AgentConfig {
                kubeconfig: Some(kubeconfig),
                ..config(rig, agent_bin, log)
            },
            |config, arg| config.arg(arg.clone()),
        );
        let started = Instant::now();
        let mut agent = Agent::spawn(config, &rig.node)?;
        if let Err(error) = wait_programmed(&mut agent, services.len(), ready_timeout) {
            abandon(agent);
            return Err(error);
        }
        let took = started.elapsed();
        Ok((Self { agent, api }, took))
    }

    /// Replaces `service`'s endpoints, as the EndpointSlice controller would.
    pub fn set_endpoints(&self, service: &KubeProxyService, endpoints: &[Ipv4Addr]) {
        self.api.apply(slice_object(service, endpoints));
    }

    /// Peak resident memory of the agent so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> Result<f64> {
        peak_rss_mib(&self.agent)
    }

    /// Stops the agent and removes its hooks and pins, so the next mode
    /// runs on a bare node.
    pub fn stop(mut self) -> Result<()> {
        stop_and_clean(self.agent)?;
        self.api.stop();
        Ok(())
    }
}

/// `--devices DEVICES`: where the per-packet path goes.
pub fn devices(devices: &str) -> Vec<String> {
    vec!["--devices".into(), devices.into()]
}

/// The agent on the rig's node, its hooks on the rig's cgroup, reading
/// the scratch folder (an empty one: the API or a caller's folder serves).
pub(crate) fn config(rig: &Rig, agent_bin: &Path, log: PathBuf) -> AgentConfig {
    AgentConfig {
        bin: agent_bin.to_owned(),
        manifests: rig.scratch.path().to_owned(),
        kubeconfig: None,
        cgroup: rig.cgroup.path().to_owned(),
        bpffs: rig.bpffs.join("switchyard"),
        node_name: NODE_NAME.into(),
        // The bench's node has no metrics consumer; fixed ports could
        // clash with another run's agent in another namespace anyway.
        extra_args: vec![
            "--metrics-bind-address".into(),
            "127.0.0.1:0".into(),
            "--healthz-bind-address".into(),
            "127.0.0.1:0".into(),
        ],
        log,
        capabilities: None,
    }
}

/// Peak resident memory of `agent` so far (VmHWM), in MiB.
pub(crate) fn peak_rss_mib(agent: &Agent<'_>) -> Result<f64> {
    let pid = agent.pid().context("agent not running")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmHWM in /proc/PID/status")?;
    Ok(kib / 1024.0)
}

/// After a failed start: the agent stopped if it still runs, and its hooks
/// and pins removed as far as they can be, so the next run starts bare.
pub(crate) fn abandon(mut agent: Agent<'_>) {
    let _not_running = agent.stop();
    if let Err(error) = agent.cleanup() {
        eprintln!("cleanup after a failed start: {error:#}");
    }
}

/// Stops `agent` and removes its hooks and pins, leaving the node bare.
pub(crate) fn stop_and_clean(mut agent: Agent<'_>) -> Result<()> {
    agent.stop()?;
    let output = agent.cleanup()?;
    if !output.status.success() {
        bail!(
            "switchyard cleanup failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Polls the agent's log for a "programmed" line covering `expected`
/// frontends.
pub(crate) fn wait_programmed(
    agent: &mut Agent<'_>,
    expected: usize,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if programmed_frontends(&agent.log()) >= expected {
            return Ok(());
        }
        if !agent.is_running() {
            bail!("agent exited before programming:\n{}", agent.log());
        }
        if Instant::now() > deadline {
            bail!("agent did not program {expected} frontends within {timeout:?}");
        }
        std::thread::sleep(POLL);
    }
}

/// The most frontends any "programmed" log line reports.
fn programmed_frontends(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("programmed"))
        .filter_map(|l| {
            let rest = l.split("frontends=").nth(1)?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

pub(crate) fn service_object(service: &KubeProxyService) -> serde_json::Value {
    let port = match service.protocol {
        Protocol::Udp => ServicePort::udp("http", SERVICE_PORT, TARGET_PORT),
        _ => ServicePort::tcp("http", SERVICE_PORT, TARGET_PORT),
    };
    let manifest = ServiceManifest::new(&service.name, NAMESPACE).cluster_ip(service.cluster_ip);
    match service.node_port {
        Some(node_port) => manifest
            .type_(ServiceType::NodePort)
            .port(port.node_port(node_port)),
        None => manifest.port(port),
    }
    .to_value()
}

pub(crate) fn slice_object(
    service: &KubeProxyService,
    endpoints: &[Ipv4Addr],
) -> serde_json::Value {
    let mut slice = EndpointSliceManifest::new(
        &format!("{}-v4", service.name),
        NAMESPACE,
        &service.name,
        AddressType::IPv4,
    )
    .port(EndpointPort::new("http", service.protocol, TARGET_PORT));
    for ip in endpoints {
        slice = slice.endpoint(Endpoint::ready(ip).node(node_of(*ip)));
    }
    slice.to_value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_largest_programmed_count() {
        let log = "x INFO programmed frontends=2 backends=8 applied=10\n\
                   x INFO programmed frontends=10002 backends=40008 applied=5\n\
                   x WARN something else frontends=99999\n";
        assert_eq!(programmed_frontends(log), 10_002);
        assert_eq!(programmed_frontends(""), 0);
    }
}
