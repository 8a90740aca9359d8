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

use anyhow::{Result, ensure};

pub use crate::client::{Client, PendingSummary};
use crate::{
    bpffs::BpfFs,
    cgroup::Cgroup,
    manifest::{EndpointPort, EndpointSliceManifest, ManifestDir},
    netns::NetNs,
    process::Spawned,
    scratch::Scratch,
    wiring::{self, Gateway, Placement, PodAddress},
};

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

impl Node {
    /// `br0`, the pods' (and the client's) default gateway.
    pub(crate) fn gateway(&self) -> Gateway<'_> {
        Gateway {
            netns: &self.netns,
            bridge: "br0",
            v4: self.bridge_v4,
            v6: self.bridge_v6,
        }
    }
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
        wiring::bridge(&node.netns, "br0", Some((node.bridge_v4, node.bridge_v6)))?;

        let client_ns = NetNs::new("client")?;
        let (client_v4, client_v6) = (Ipv4Addr::new(10, 244, 0, 2), "fd00:244::2".parse()?);
        node.gateway()
            .attach(&client_ns, "vc0", client_v4, client_v6)?;
        let client = Client::new(client_ns, Cgroup::new("client")?, client_v4, client_v6);

        let mut pods = Vec::new();
        for (i, name) in spec.pods.iter().enumerate() {
            let host = 10 + u8::try_from(i).expect("a node's pods fit its /24");
            let address = PodAddress {
                name,
                ipv4: Ipv4Addr::new(10, 244, 0, host),
                ipv6: format!("fd00:244::{host:x}").parse()?,
            };
            pods.push(node.gateway().start_pod(
                &format!("vp{i}"),
                address,
                &spec.tcp_ports,
                &spec.udp_ports,
                &scratch,
            )?);
        }
        let mut cluster = Self {
            pods,
            client,
            node,
            scratch,
            manifests,
        };
        wiring::wait_ready(&mut cluster.pods, &cluster.scratch)?;
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
        let on_node = pods.into_iter().map(|pod| {
            let at = Placement {
                node: &self.node.name,
                zone: None,
            };
            (at, pod)
        });
        wiring::endpoint_slices(service, namespace, port, on_node)
    }
}
