//! A one-node cluster in network namespaces:
//!
//! ```text
//!   node netns: br0 10.244.0.1/24 fd00:244::1/64
//!     ├─ vp<i> ── pod netns <i>: eth0 10.244.0.(10+i) fd00:244::(10+i)
//!     │                          netprobe serve --name <pod name>
//!     └─ vc0  ── client netns:   eth0 10.244.0.2 fd00:244::2
//!                                (probes run in the client cgroup)
//! ```
//!
//! The agent runs in the node netns with its hooks on the client cgroup and
//! its pins on the node's bpffs. All addresses live only inside these
//! namespaces, so no probe can reach a real network.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::bpffs::BpfFs;
use crate::cgroup::Cgroup;
use crate::manifest::{AddressType, Endpoint, EndpointPort, EndpointSliceManifest, ManifestDir};
use crate::netns::NetNs;
use crate::probe;
use crate::process::Spawned;
use crate::scratch::Scratch;

pub use crate::client::{Client, PendingSummary};

const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// What to build. `Default`: node `node-a`, pods `pod-0` and `pod-1`, TCP on
/// 8080 and 9090, UDP on 8080.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub node_name: String,
    pub pods: Vec<String>,
    pub tcp_ports: Vec<u16>,
    pub udp_ports: Vec<u16>,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        Self::with_pods(2)
    }
}

impl ClusterSpec {
    /// `count` pods named `pod-0`...
    pub fn with_pods(count: usize) -> Self {
        Self {
            node_name: "node-a".into(),
            pods: (0..count).map(|i| format!("pod-{i}")).collect(),
            tcp_ports: vec![8080, 9090],
            udp_ports: vec![8080],
        }
    }
}

pub struct Node {
    pub name: String,
    pub netns: NetNs,
    /// Where the agent pins (mount point; the agent uses a dir below it).
    pub bpffs: BpfFs,
    pub bridge_v4: Ipv4Addr,
    pub bridge_v6: Ipv6Addr,
}

pub struct Pod {
    pub name: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    // Before `netns`: the server is killed before its namespace goes.
    pub server: Spawned,
    pub netns: NetNs,
}

impl Pod {
    pub fn addr_v4(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ipv4), port)
    }

    pub fn addr_v6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.ipv6), port)
    }
}

/// Field order is teardown order: servers and pod namespaces, the client and
/// its cgroup, the node (bridge, bpffs), then the scratch dir with the logs.
pub struct Cluster {
    pub pods: Vec<Pod>,
    pub client: Client,
    pub node: Node,
    pub scratch: Scratch,
    manifests: ManifestDir,
}

impl Cluster {
    pub fn up(spec: &ClusterSpec) -> Result<Self> {
        ensure!(spec.pods.len() <= 200, "at most 200 pods fit the /24");
        let scratch = Scratch::new("cluster")?;
        let manifests = ManifestDir::new(scratch.join("manifests"))?;
        let node = Node {
            name: spec.node_name.clone(),
            netns: NetNs::new("node")?,
            bpffs: BpfFs::new()?,
            bridge_v4: Ipv4Addr::new(10, 244, 0, 1),
            bridge_v6: "fd00:244::1".parse()?,
        };
        let ns = &node.netns;
        ns.ip(&["link", "add", "br0", "type", "bridge"])?;
        ns.ip(&["addr", "add", "10.244.0.1/24", "dev", "br0"])?;
        ns.ip(&["addr", "add", "fd00:244::1/64", "dev", "br0", "nodad"])?;
        ns.ip(&["link", "set", "br0", "up"])?;

        let client_ns = NetNs::new("client")?;
        let (client_v4, client_v6) = (Ipv4Addr::new(10, 244, 0, 2), "fd00:244::2".parse()?);
        attach(&node, &client_ns, "vc0", client_v4, client_v6)?;
        let client = Client::new(client_ns, Cgroup::new("client")?, client_v4, client_v6);

        let netprobe = probe::binary()?;
        let mut pods = Vec::new();
        for (i, name) in spec.pods.iter().enumerate() {
            let host = 10 + i as u8;
            let ipv4 = Ipv4Addr::new(10, 244, 0, host);
            let ipv6: Ipv6Addr = format!("fd00:244::{host:x}").parse()?;
            let netns = NetNs::new("pod")?;
            attach(&node, &netns, &format!("vp{i}"), ipv4, ipv6)?;
            let log = scratch.join(format!("{name}.log"));
            let mut cmd = Command::new(&netprobe);
            cmd.args(["serve", "--name", name]);
            for port in &spec.tcp_ports {
                for ip in [IpAddr::V4(ipv4), IpAddr::V6(ipv6)] {
                    cmd.args(["--tcp", &SocketAddr::new(ip, *port).to_string()]);
                }
            }
            for port in &spec.udp_ports {
                for ip in [IpAddr::V4(ipv4), IpAddr::V6(ipv6)] {
                    cmd.args(["--udp", &SocketAddr::new(ip, *port).to_string()]);
                }
            }
            let out = std::fs::File::create(&log)?;
            cmd.stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out);
            let server = Spawned::spawn(&mut cmd, &netns, None)?;
            pods.push(Pod {
                name: name.clone(),
                ipv4,
                ipv6,
                server,
                netns,
            });
        }
        let mut cluster = Self {
            pods,
            client,
            node,
            scratch,
            manifests,
        };
        cluster.wait_servers_ready()?;
        Ok(cluster)
    }

    /// The agent's `--manifests` folder.
    pub fn manifests(&self) -> &ManifestDir {
        &self.manifests
    }

    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// The IPv4 and IPv6 EndpointSlices (`<service>-v4`, `<service>-v6`) of
    /// `service` with the given pods as ready endpoints on this node.
    pub fn endpoint_slices<'a>(
        &self,
        service: &str,
        namespace: &str,
        port: &EndpointPort,
        pods: impl IntoIterator<Item = &'a Pod>,
    ) -> [EndpointSliceManifest; 2] {
        let mut v4 = EndpointSliceManifest::new(
            &format!("{service}-v4"),
            namespace,
            service,
            AddressType::IPv4,
        )
        .port(port.clone());
        let mut v6 = EndpointSliceManifest::new(
            &format!("{service}-v6"),
            namespace,
            service,
            AddressType::IPv6,
        )
        .port(port.clone());
        for pod in pods {
            v4 = v4.endpoint(Endpoint::ready(pod.ipv4).node(&self.node.name));
            v6 = v6.endpoint(Endpoint::ready(pod.ipv6).node(&self.node.name));
        }
        [v4, v6]
    }

    /// Polls each server's log for its "ready" line (printed once all its
    /// sockets are bound).
    fn wait_servers_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        for pod in &mut self.pods {
            let log = self.scratch.join(format!("{}.log", pod.name));
            loop {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains("\"ready\":true") {
                    break;
                }
                if let Some(status) = pod.server.try_wait()? {
                    bail!("server of {} exited ({status}): {text}", pod.name);
                }
                if Instant::now() >= deadline {
                    bail!(
                        "server of {} not ready within {READY_TIMEOUT:?}: {text}",
                        pod.name
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}

/// Puts `ns` on the node's bridge through a veth (`host_if` on the node side,
/// `eth0` inside), with both addresses and default routes via the bridge.
fn attach(node: &Node, ns: &NetNs, host_if: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> Result<()> {
    let n = &node.netns;
    n.ip(&[
        "link",
        "add",
        host_if,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ])
    .with_context(|| format!("veth {host_if} for {}", ns.name()))?;
    n.ip(&["link", "set", host_if, "master", "br0", "up"])?;
    ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
    ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        &node.bridge_v4.to_string(),
    ])?;
    ns.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        &node.bridge_v6.to_string(),
    ])?;
    Ok(())
}
