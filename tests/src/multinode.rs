//! A cluster of several nodes on one LAN, in network namespaces:
//!
//! ```text
//!   lan netns: bridge lan0 (no addresses: just the switch)
//!     ├─ vn<k> ── node-k netns: eth0 192.168.77.(10+k) fd00:77::(10+k)
//!     │             br0 10.244.k.1 fd00:244:k::1, forwarding on
//!     │             ├─ vp<i> ── pod netns: eth0 10.244.k.(10+i) fd00:244:k::(10+i)
//!     │             │                      netprobe serve --name node-k-pod-i
//!     │             └─ 10.244.j.0/24 via 192.168.77.(10+j), v6 alike (the CNI's job)
//!     └─ vo0  ── outside netns: eth0 192.168.77.2 fd00:77::2
//!                (no route to pods; in no agent's cgroup)
//! ```
//!
//! The last group of every IPv6 address is written with the same digits as
//! the IPv4 address's last octet (fd00:244:1::10 goes with 10.244.1.10), so
//! the two read alike in logs.
//!
//! Each node has its own cgroup (where its pods' and host's client probes run
//! and its agent hooks its sockets), its own bpffs, and its agent's netns is
//! the node netns. All nodes' agents read one shared manifests folder, which
//! also holds a `Node` object per node (`nodes.yaml`). All addresses live only
//! inside these namespaces, so no probe can reach a real network.

mod outside;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Context, Result, ensure};
pub use outside::Outside;

use crate::{
    bpffs::BpfFs,
    cgroup::Cgroup,
    client::Prober,
    manifest::{EndpointPort, EndpointSliceManifest, ManifestDir, NodeManifest},
    netns::NetNs,
    scratch::Scratch,
    topology::Pod,
    wiring::{self, Gateway, Placement, PodAddress},
    xdp_peer::{self, XdpPass},
};

/// At most this many nodes (node IPs stay below .255 and fit one /24).
const MAX_NODES: usize = 100;
/// At most this many pods per node (pod IPs fit the node's /24).
const MAX_PODS: usize = 200;

/// What to build; see [`MultiNodeSpec::new`].
#[derive(Clone, Debug)]
pub struct MultiNodeSpec {
    pub nodes: Vec<NodeSpec>,
    pub tcp_ports: Vec<u16>,
    pub udp_ports: Vec<u16>,
}

#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    pub pods: Vec<String>,
    /// The `topology.kubernetes.io/zone` label of the node's `Node` object.
    pub zone: Option<String>,
}

impl MultiNodeSpec {
    /// Nodes `node-1`, `node-2`... with `pods_per_node[k-1]` pods each,
    /// named `node-k-pod-0`...; every pod serves TCP 8080 and UDP 8080.
    pub fn new(pods_per_node: &[usize]) -> Self {
        let nodes = pods_per_node
            .iter()
            .enumerate()
            .map(|(index, &count)| {
                let name = format!("node-{}", index + 1);
                NodeSpec {
                    pods: (0..count).map(|i| format!("{name}-pod-{i}")).collect(),
                    name,
                    zone: None,
                }
            })
            .collect();
        Self {
            nodes,
            tcp_ports: vec![8080],
            udp_ports: vec![8080],
        }
    }

    /// Puts node `index` (0-based) into `zone`.
    pub fn zone(mut self, index: usize, zone: &str) -> Self {
        self.nodes[index].zone = Some(zone.into());
        self
    }
}

/// One node. Field order is teardown order: the pods (servers, then their
/// namespaces), the cgroup (killing any probe still in it), the bpffs, and
/// last the node namespace the pods' veths hang off.
pub struct ClusterNode {
    pub name: String,
    pub zone: Option<String>,
    /// Its `eth0` address on the LAN (the InternalIP of its `Node`).
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// `br0`: the pods' default gateway.
    pub bridge_v4: Ipv4Addr,
    pub bridge_v6: Ipv6Addr,
    pub pods: Vec<Pod>,
    /// Pods' and host's client probes run here, and the node's agent hooks
    /// its sockets here (`--cgroup`).
    pub cgroup: Cgroup,
    /// Where the node's agent pins (mount point; the agent uses a dir below).
    pub bpffs: BpfFs,
    pub netns: NetNs,
    /// k: 1 for node-1.
    number: u8,
}

impl ClusterNode {
    /// A client in pod `index`'s namespace and the node's cgroup, so its
    /// connections go through the node agent's socket hooks, as a pod's
    /// would. Panics if there is no such pod.
    pub fn pod_client(&self, index: usize) -> Prober<'_> {
        Prober::new(&self.pods[index].netns, Some(&self.cgroup))
    }

    /// A client in the node namespace and cgroup: a process on the host.
    pub fn host_client(&self) -> Prober<'_> {
        Prober::new(&self.netns, Some(&self.cgroup))
    }

    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// `ipv4:port`, e.g. a NodePort on this node.
    pub fn addr_v4(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ipv4), port)
    }

    pub fn addr_v6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.ipv6), port)
    }

    /// The node's pod CIDRs: `10.244.k.0/24` and `fd00:244:k::/64`.
    pub fn pod_cidrs(&self) -> [String; 2] {
        pod_cidrs(self.number)
    }

    /// The `Node` object the agent reads for this node.
    pub fn manifest(&self) -> NodeManifest {
        let [v4, v6] = self.pod_cidrs();
        let node = NodeManifest::new(&self.name)
            .internal_ip(self.ipv4)
            .internal_ip(self.ipv6)
            .pod_cidr(&v4)
            .pod_cidr(&v6);
        match &self.zone {
            Some(zone) => node.zone(zone),
            None => node,
        }
    }

    fn gateway(&self) -> Gateway<'_> {
        Gateway {
            netns: &self.netns,
            bridge: "br0",
            v4: self.bridge_v4,
            v6: self.bridge_v6,
        }
    }
}

/// Field order is teardown order: the nodes (each with its pods), the
/// outside client, the LAN switch, then the scratch dir with the logs and
/// manifests.
pub struct MultiNodeCluster {
    pub nodes: Vec<ClusterNode>,
    /// XDP_PASS on each node's LAN-side veth, so the nodes can run XDP
    /// (see `xdp_peer`); empty where the kernel cannot.
    _xdp_peers: Vec<XdpPass>,
    pub outside: Outside,
    /// Holds `lan0`, the switch every node's and the outside's `eth0` is on.
    pub lan: NetNs,
    pub scratch: Scratch,
    manifests: ManifestDir,
}

impl MultiNodeCluster {
    /// Builds the topology, writes `nodes.yaml`, and waits until every pod's
    /// server listens.
    pub fn up(spec: &MultiNodeSpec) -> Result<Self> {
        ensure!(
            (1..=MAX_NODES).contains(&spec.nodes.len()),
            "1 to {MAX_NODES} nodes"
        );
        let scratch = Scratch::new("multinode")?;
        let manifests = ManifestDir::new(scratch.join("manifests"))?;
        let lan = NetNs::new("lan")?;
        wiring::bridge(&lan, "lan0", None)?;
        let outside = Outside::new(&lan)?;
        let mut nodes = Vec::new();
        let mut xdp_peers = Vec::new();
        for (index, node_spec) in spec.nodes.iter().enumerate() {
            let number = u8::try_from(index + 1)?;
            let node = node_up(&lan, node_spec, number, spec, &scratch)
                .with_context(|| format!("bringing up {}", node_spec.name))?;
            if xdp_peer::in_use() {
                xdp_peers.push(xdp_peer::attach(&lan, &format!("vn{number}"))?);
                // Frames reach a node's eth0 as off a wire (see
                // `xdp_peer::full_checksums`): from other nodes, their pods,
                // and the outside client.
                xdp_peer::full_checksums(&node.netns, "eth0")?;
                for pod in &node.pods {
                    xdp_peer::full_checksums(&pod.netns, "eth0")?;
                }
            }
            nodes.push(node);
        }
        if !xdp_peers.is_empty() {
            xdp_peer::full_checksums(&outside.netns, "eth0")?;
        }
        // The CNI's part: every node routes every other node's pod CIDRs to
        // that node over the LAN.
        for node in &nodes {
            for peer in nodes.iter().filter(|n| n.number != node.number) {
                let [v4, v6] = peer.pod_cidrs();
                node.netns
                    .ip(&["route", "add", &v4, "via", &peer.ipv4.to_string()])?;
                node.netns
                    .ip(&["-6", "route", "add", &v6, "via", &peer.ipv6.to_string()])?;
            }
        }
        let mut cluster = Self {
            nodes,
            _xdp_peers: xdp_peers,
            outside,
            lan,
            scratch,
            manifests,
        };
        let node_docs: Vec<_> = cluster
            .nodes
            .iter()
            .map(|n| n.manifest().to_value())
            .collect();
        cluster.manifests.write("nodes.yaml", &node_docs)?;
        let pods = cluster.nodes.iter_mut().flat_map(|n| n.pods.iter_mut());
        wiring::wait_ready(pods, &cluster.scratch)?;
        Ok(cluster)
    }

    /// The `--manifests` folder all nodes' agents share.
    pub fn manifests(&self) -> &ManifestDir {
        &self.manifests
    }

    pub fn node(&self, name: &str) -> Option<&ClusterNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The IPv4 and IPv6 EndpointSlices (`<service>-v4`, `<service>-v6`) of
    /// `service` with the given pods as ready endpoints, each with its node's
    /// name (and zone, if it has one).
    pub fn endpoint_slices(
        &self,
        service: &str,
        namespace: &str,
        port: &EndpointPort,
        pods: &[(&ClusterNode, &Pod)],
    ) -> [EndpointSliceManifest; 2] {
        let placed = pods.iter().map(|(node, pod)| {
            let at = Placement {
                node: &node.name,
                zone: node.zone.as_deref(),
            };
            (at, *pod)
        });
        wiring::endpoint_slices(service, namespace, port, placed)
    }
}

/// Node `number` (k): its namespace on the LAN, `br0`, and its pods.
fn node_up(
    lan: &NetNs,
    spec: &NodeSpec,
    number: u8,
    cluster: &MultiNodeSpec,
    scratch: &Scratch,
) -> Result<ClusterNode> {
    ensure!(
        spec.pods.len() <= MAX_PODS,
        "at most {MAX_PODS} pods per node"
    );
    let netns = NetNs::new("node")?;
    // Before any interface exists, so `default` covers them all. rp_filter
    // off: a node forwards traffic whose source is routed via another node.
    for (key, value) in [
        ("net/ipv4/ip_forward", "1"),
        ("net/ipv6/conf/all/forwarding", "1"),
        ("net/ipv4/conf/all/rp_filter", "0"),
        ("net/ipv4/conf/default/rp_filter", "0"),
    ] {
        netns.sysctl(key, value)?;
    }
    let mut node = ClusterNode {
        name: spec.name.clone(),
        zone: spec.zone.clone(),
        ipv4: lan_v4(10 + number),
        ipv6: lan_v6(10 + number)?,
        bridge_v4: Ipv4Addr::new(10, 244, number, 1),
        bridge_v6: format!("fd00:244:{number}::1").parse()?,
        pods: Vec::new(),
        cgroup: Cgroup::new("node")?,
        bpffs: BpfFs::new()?,
        netns,
        number,
    };
    let host_if = format!("vn{number}");
    wiring::plug(lan, "lan0", &host_if, &node.netns, node.ipv4, node.ipv6)?;
    wiring::bridge(&node.netns, "br0", Some((node.bridge_v4, node.bridge_v6)))?;
    for (i, name) in spec.pods.iter().enumerate() {
        let host = 10 + u8::try_from(i).expect("a node's pods fit its /24");
        let address = PodAddress {
            name,
            ipv4: Ipv4Addr::new(10, 244, number, host),
            ipv6: format!("fd00:244:{number}::{host}").parse()?,
        };
        let pod = node.gateway().start_pod(
            &format!("vp{i}"),
            address,
            &cluster.tcp_ports,
            &cluster.udp_ports,
            scratch,
        )?;
        node.pods.push(pod);
    }
    Ok(node)
}

/// `192.168.77.<host>`, an address on the LAN.
fn lan_v4(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 77, host)
}

/// `fd00:77::<host>`, the same digits as [`lan_v4`]'s last octet.
fn lan_v6(host: u8) -> Result<Ipv6Addr> {
    Ok(format!("fd00:77::{host}").parse()?)
}

fn pod_cidrs(number: u8) -> [String; 2] {
    [
        format!("10.244.{number}.0/24"),
        format!("fd00:244:{number}::/64"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_names_nodes_and_pods() {
        let spec = MultiNodeSpec::new(&[2, 1]).zone(1, "zone-b");
        let names: Vec<_> = spec.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["node-1", "node-2"]);
        assert_eq!(spec.nodes[0].pods, ["node-1-pod-0", "node-1-pod-1"]);
        assert_eq!(spec.nodes[1].pods, ["node-2-pod-0"]);
        assert_eq!(spec.nodes[1].zone.as_deref(), Some("zone-b"));
        assert_eq!(
            (spec.tcp_ports.as_slice(), spec.udp_ports.as_slice()),
            (&[8080][..], &[8080][..])
        );
    }

    #[test]
    fn addresses_read_alike_in_both_families() {
        assert_eq!(lan_v4(11).to_string(), "192.168.77.11");
        assert_eq!(lan_v6(11).unwrap().to_string(), "fd00:77::11");
        assert_eq!(pod_cidrs(2), ["10.244.2.0/24", "fd00:244:2::/64"]);
    }
}
