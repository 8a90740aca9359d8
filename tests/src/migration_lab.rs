//! A node moving between kube-proxy and Switchyard, in namespaces:
//!
//! ```text
//!   node netns (ip_forward=1; kube-proxy's rules and/or the agent)
//!     br0 10.244.0.1/24 ── vp<i> ── pod netns <i>: 10.244.0.(10+i), netprobe serve
//!     vcl 10.250.0.1/30 ────────── client netns:  10.250.0.2 (a pod of this
//!                                    node, in the hooked cgroup)
//!     vout 172.31.0.1/30 ───────── outside netns: 172.31.0.2 (NodePorts)
//! ```
//!
//! The client is routed, not bridged, to the pods, so netfilter's DNAT
//! sees its replies come back through the node (on a bridge it would need
//! br_netfilter, a host-wide module setting). The Services exist twice, in
//! the shape kube-proxy writes them (`kube_proxy_rules`) and as manifests
//! for the agent: `web`, TCP, and `dns`, UDP, each a ClusterIP with a
//! NodePort, over every pod.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::Result;

use crate::{
    AddressType, AgentConfig, BpfFs, Cgroup, Endpoint, EndpointPort, EndpointSliceManifest,
    ManifestDir, NetNs, Prober, Protocol, Scratch, ServiceManifest, ServicePort, ServiceType,
    kube_proxy_rules::{
        CLUSTER_CIDR, KubeProxyService, NAMESPACE, SERVICE_PORT, TARGET_PORT, nftables,
        rule_set::RuleSet,
    },
    topology::Pod,
    wiring::{self, Gateway, PodAddress},
};

pub const PODS: usize = 3;
const BRIDGE_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
const BRIDGE_V6: &str = "fd00:244::1";
const NODE_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
pub const NODE_OUTSIDE_SIDE: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 1);
pub const OUTSIDE: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 2);
/// The device the agent's per-packet path goes on.
pub const OUTSIDE_DEVICE: &str = "vout";

/// One Service of the lab, in both shapes.
#[derive(Clone, Copy, Debug)]
pub struct LabService {
    pub name: &'static str,
    pub protocol: Protocol,
    pub cluster_ip: Ipv4Addr,
    pub node_port: u16,
}

pub const WEB: LabService = LabService {
    name: "web",
    protocol: Protocol::Tcp,
    cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
    node_port: 30080,
};
pub const DNS: LabService = LabService {
    name: "dns",
    protocol: Protocol::Udp,
    cluster_ip: Ipv4Addr::new(10, 96, 0, 11),
    node_port: 30081,
};
pub const SERVICES: [LabService; 2] = [WEB, DNS];

impl LabService {
    pub fn cluster_ip_addr(self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.cluster_ip), SERVICE_PORT)
    }

    /// The NodePort on the node's address facing outside.
    pub fn node_port_addr(self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(NODE_OUTSIDE_SIDE), self.node_port)
    }
}

/// Field order is teardown order.
pub struct MigrationLab {
    pub pods: Vec<Pod>,
    pub client: NetNs,
    pub client_cgroup: Cgroup,
    pub outside: NetNs,
    pub node: NetNs,
    pub bpffs: BpfFs,
    pub manifests: ManifestDir,
    pub scratch: Scratch,
}

impl MigrationLab {
    pub fn up() -> Result<Self> {
        let scratch = Scratch::new("migration")?;
        let manifests = ManifestDir::new(scratch.join("manifests"))?;
        let node = NetNs::new("mnode")?;
        node.sysctl("net/ipv4/ip_forward", "1")?;
        let bridge_v6: Ipv6Addr = BRIDGE_V6.parse()?;
        wiring::bridge(&node, "br0", Some((BRIDGE_V4, bridge_v6)))?;
        let client = NetNs::new("mclient")?;
        link(&node, "vcl", &client, NODE_CLIENT_SIDE, CLIENT)?;
        let outside = NetNs::new("moutside")?;
        link(&node, OUTSIDE_DEVICE, &outside, NODE_OUTSIDE_SIDE, OUTSIDE)?;
        let gateway = Gateway {
            netns: &node,
            bridge: "br0",
            v4: BRIDGE_V4,
            v6: bridge_v6,
        };
        let mut pods = Vec::new();
        for i in 0..PODS {
            let host = 10 + u8::try_from(i).expect("a handful of pods");
            let name = format!("pod-{i}");
            pods.push(gateway.start_pod(
                &format!("vp{i}"),
                PodAddress {
                    name: &name,
                    ipv4: Ipv4Addr::new(10, 244, 0, host),
                    ipv6: format!("fd00:244::{host:x}").parse()?,
                },
                &[TARGET_PORT],
                &[TARGET_PORT],
                &scratch,
            )?);
        }
        wiring::wait_ready(&mut pods, &scratch)?;
        let lab = Self {
            pods,
            client,
            client_cgroup: Cgroup::new("mclient")?,
            outside,
            node,
            bpffs: BpfFs::new()?,
            manifests,
            scratch,
        };
        lab.write_manifests()?;
        Ok(lab)
    }

    /// The Services as kube-proxy's rule generators take them.
    pub fn kube_proxy_services(&self) -> Vec<KubeProxyService> {
        SERVICES
            .iter()
            .map(|service| KubeProxyService {
                name: service.name.to_owned(),
                cluster_ip: service.cluster_ip,
                endpoints: self.pods.iter().map(|pod| pod.ipv4).collect(),
                node_port: Some(service.node_port),
                protocol: service.protocol,
            })
            .collect()
    }

    /// Loads kube-proxy's whole rule set of `mode` into the node, as its
    /// first sync after a start would.
    pub fn load_kube_proxy(&self, mode: RuleSet) -> Result<()> {
        mode.load(&self.node, &self.kube_proxy_services(), self.scratch.path())?;
        if mode == RuleSet::Nftables {
            let element = nftables::node_port_ips(&[NODE_OUTSIDE_SIDE]);
            self.node.exec("nft", &[element.trim()])?;
        }
        Ok(())
    }

    fn write_manifests(&self) -> Result<()> {
        let mut documents = Vec::new();
        for service in SERVICES {
            let port = ServicePort::new("http", service.protocol, SERVICE_PORT, TARGET_PORT)
                .node_port(service.node_port);
            documents.push(
                ServiceManifest::new(service.name, NAMESPACE)
                    .type_(ServiceType::NodePort)
                    .cluster_ip(service.cluster_ip)
                    .port(port)
                    .to_value(),
            );
            let mut slice = EndpointSliceManifest::new(
                &format!("{}-v4", service.name),
                NAMESPACE,
                service.name,
                AddressType::IPv4,
            )
            .port(EndpointPort::new("http", service.protocol, TARGET_PORT));
            for pod in &self.pods {
                slice = slice.endpoint(Endpoint::ready(pod.ipv4).node("node-a"));
            }
            documents.push(slice.to_value());
        }
        self.manifests.write("services.yaml", &documents)?;
        Ok(())
    }

    /// The agent's wiring on this node: the manifests, the client's cgroup,
    /// the per-packet path on the device facing outside, kube-proxy's
    /// cluster CIDR.
    pub fn agent_config(&self) -> AgentConfig {
        AgentConfig {
            bin: crate::agent::binary(),
            manifests: self.manifests.path().to_owned(),
            kubeconfig: None,
            cgroup: self.client_cgroup.path().to_owned(),
            bpffs: self.bpffs.join("switchyard"),
            node_name: "node-a".into(),
            extra_args: vec![
                "--devices".into(),
                OUTSIDE_DEVICE.into(),
                "--cluster-cidr".into(),
                CLUSTER_CIDR.into(),
                "--metrics-bind-address".into(),
                "127.0.0.1:10249".into(),
                "--healthz-bind-address".into(),
                "127.0.0.1:10256".into(),
            ],
            log: self.scratch.join("agent.log"),
            capabilities: None,
        }
    }

    /// The agent's wiring from a KubeProxyConfiguration `file`: the file
    /// says the rest (cluster CIDR, bind addresses, detect-local...); only
    /// what no such file says is given, the lab's pins, cgroup, manifests
    /// and device.
    pub fn agent_config_from_file(&self, file: &std::path::Path) -> AgentConfig {
        AgentConfig {
            extra_args: vec![
                "--devices".into(),
                OUTSIDE_DEVICE.into(),
                "--config".into(),
                file.display().to_string(),
            ],
            ..self.agent_config()
        }
    }

    /// Probes from the client pod, through the hooked cgroup.
    pub fn from_pod(&self) -> Prober<'_> {
        Prober::new(&self.client, Some(&self.client_cgroup))
    }

    /// Probes from outside the cluster.
    pub fn from_outside(&self) -> Prober<'_> {
        Prober::new(&self.outside, None)
    }

    /// `nft list ruleset` in the node: what netfilter holds.
    pub fn netfilter_ruleset(&self) -> Result<String> {
        self.node.exec("nft", &["list", "ruleset"])
    }
}

/// A /30 veth link: `host_if` with `gateway` in `host`, `eth0` with `ip`
/// in `ns`, routed by default through the host side.
fn link(host: &NetNs, host_if: &str, ns: &NetNs, gateway: Ipv4Addr, ip: Ipv4Addr) -> Result<()> {
    wiring::veth(host, host_if, ns)?;
    host.ip(&["addr", "add", &format!("{gateway}/30"), "dev", host_if])?;
    host.ip(&["link", "set", host_if, "up"])?;
    ns.ip(&["addr", "add", &format!("{ip}/30"), "dev", "eth0"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.ip(&["link", "set", "lo", "up"])?;
    ns.ip(&["route", "add", "default", "via", &gateway.to_string()])?;
    Ok(())
}
