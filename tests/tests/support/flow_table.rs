//! Packet-flow rows in the style of kube-proxy's `runPacketFlowTests`, run
//! as real connections on the two-node lab: a client (a pod on node-1 or
//! node-2, a node's own processes, the outside client, or a second outside
//! client, 192.168.77.130, that source ranges leave out), a destination, TCP
//! or connected UDP, and what must happen: the set of endpoints that answer,
//! each with what it saw as the client's address, or a refusal, or a drop.
//!
//! The outside clients route the service range, the LoadBalancer ranges
//! (203.0.113.0/24, fd00:113::/64) and the externalIP range
//! (198.51.100.0/24) via node-1, as a router in front of the cluster would;
//! the nodes' default gateway is the outside client.
//! Every pod serves TCP 8080, 8443 and 5353 and UDP 8080 and 53; pod 0 of
//! each node is the client pod, endpoints are pods 1 and up.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use switchyard_tests::{
    AddressType, Agent, AgentConfig, Attempt, Endpoint, EndpointPort, EndpointSliceManifest,
    MultiNodeCluster, MultiNodeSpec, NetNs, Prober, ServiceManifest, TargetPort,
    kernel::{self, Feature},
    patience, wiring, xdp_peer,
};

use super::two_nodes::{NS, agents};

/// A pod: (node index, pod index), both 0-based.
pub type Ep = (usize, usize);
pub const A1: Ep = (0, 1);
pub const A2: Ep = (0, 2);
pub const A3: Ep = (0, 3);
pub const A4: Ep = (0, 4);
pub const B1: Ep = (1, 1);
pub const B2: Ep = (1, 2);
pub const B3: Ep = (1, 3);

/// An endpoint's (ready, serving, terminating).
pub type Cond = (bool, bool, bool);
/// A Service's endpoints and their conditions.
pub type Endpoints = Vec<(Ep, Cond)>;
pub const READY: Cond = (true, true, false);
pub const TERMINATING: Cond = (false, true, true);
pub const NOT_SERVING: Cond = (false, false, true);

/// What an endpoint saw as its client's address: the client's own, or one
/// of node k's (kube-proxy's masquerade; a host process's own address is a
/// node's too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Saw {
    Own,
    Node(usize),
}
pub const OWN: Saw = Saw::Own;
pub const NODE1: Saw = Saw::Node(0);
pub const NODE2: Saw = Saw::Node(1);

#[derive(Clone, Copy, Debug)]
pub enum Client {
    Pod(Ep),
    Host(usize),
    Outside,
    /// The outside client outside every source range.
    Blocked,
}
pub const POD: Client = Client::Pod((0, 0));
pub const POD2: Client = Client::Pod((1, 0));
pub const HOST: Client = Client::Host(0);
pub const HOST2: Client = Client::Host(1);
pub const OUT: Client = Client::Outside;
pub const BLOCKED: Client = Client::Blocked;

pub fn pod(ep: Ep) -> Client {
    Client::Pod(ep)
}

#[derive(Clone, Copy, Debug)]
pub enum To {
    Addr(&'static str),
    /// A NodePort on node k's IPv4 or IPv6 address.
    NodePort(usize, u16, bool),
}

pub fn ip(addr: &'static str) -> To {
    To::Addr(addr)
}

pub fn np(node: usize, port: u16) -> To {
    To::NodePort(node, port, false)
}

pub fn np6(node: usize, port: u16) -> To {
    To::NodePort(node, port, true)
}

#[derive(Clone, Copy, Debug)]
pub enum Want {
    Served(&'static [(Ep, Saw)]),
    /// kube-proxy's REJECT: refused (a RST, ECONNREFUSED, or an ICMP
    /// unreachable read as such).
    Rejected,
    /// kube-proxy's DROP: the attempt times out.
    Dropped,
}

pub fn served(endpoints: &'static [(Ep, Saw)]) -> Want {
    Want::Served(endpoints)
}

pub fn rejected() -> Want {
    Want::Rejected
}

pub fn dropped() -> Want {
    Want::Dropped
}

#[derive(Clone, Debug)]
pub struct Row {
    pub name: &'static str,
    pub from: Client,
    pub to: To,
    pub udp: bool,
    pub want: Want,
    /// What to expect instead on a kernel without the feature: its
    /// fallback, checked and reported (`kernel::lacks`).
    pub fallback: Option<(Feature, Want)>,
}

impl Row {
    /// On a kernel that lacks `feature`, expect `want` instead.
    pub fn without(mut self, feature: Feature, want: Want) -> Self {
        self.fallback = Some((feature, want));
        self
    }

    /// What this row expects on the running kernel.
    fn want(&self) -> Want {
        match self.fallback {
            Some((feature, want)) if kernel::lacks(feature) => want,
            _ => self.want,
        }
    }
}

pub fn tcp(name: &'static str, from: Client, to: To, want: Want) -> Row {
    Row {
        name,
        from,
        to,
        udp: false,
        want,
        fallback: None,
    }
}

pub fn udp(name: &'static str, from: Client, to: To, want: Want) -> Row {
    Row {
        udp: true,
        ..tcp(name, from, to, want)
    }
}

const BLOCKED_V4: &str = "192.168.77.130";
const BLOCKED_V6: &str = "fd00:77::130";
/// Routed via node-1 from both outside clients.
const ROUTED: [&str; 5] = [
    "10.96.0.0/16",
    "fd00:96::/64",
    "203.0.113.0/24",
    "fd00:113::/64",
    "198.51.100.0/24",
];
/// Attempts per netprobe run, and runs at most, to see every endpoint.
const BATCH: u32 = 8;
const BATCHES: u32 = 6;
/// How long a row may take to hold after the manifests changed (both
/// agents must have applied them).
const SETTLE: Duration = Duration::from_secs(5);

/// Field order is teardown order: the blocked client, then the cluster.
pub struct Lab {
    blocked: NetNs,
    pub cluster: MultiNodeCluster,
}

impl Lab {
    /// Nodes with `pods_per_node` pods each, the blocked client, and the
    /// routes of both outside clients.
    pub fn up(pods_per_node: &[usize]) -> Self {
        let mut spec = MultiNodeSpec::new(pods_per_node);
        spec.tcp_ports = vec![8080, 8443, 5353];
        spec.udp_ports = vec![8080, 53];
        let cluster = MultiNodeCluster::up(&spec).expect("topology comes up");
        let blocked = NetNs::new("blocked").unwrap();
        for key in ["all", "default"] {
            blocked
                .sysctl(&format!("net/ipv4/conf/{key}/rp_filter"), "0")
                .unwrap();
        }
        wiring::veth(&cluster.lan, "vo1", &blocked).unwrap();
        cluster
            .lan
            .ip(&["link", "set", "vo1", "master", "lan0", "up"])
            .unwrap();
        blocked
            .ip(&["addr", "add", &format!("{BLOCKED_V4}/24"), "dev", "eth0"])
            .unwrap();
        let v6 = format!("{BLOCKED_V6}/64");
        blocked
            .ip(&["addr", "add", &v6, "dev", "eth0", "nodad"])
            .unwrap();
        blocked.ip(&["link", "set", "eth0", "up"]).unwrap();
        if xdp_peer::in_use() {
            xdp_peer::full_checksums(&blocked, "eth0").unwrap();
        }
        // Nodes have a default gateway, as real ones do: a host process's
        // unbound socket takes its source address from that route.
        for node in &cluster.nodes {
            for (family, gateway) in [
                ("-4", cluster.outside.ipv4.to_string()),
                ("-6", cluster.outside.ipv6.to_string()),
            ] {
                node.netns
                    .ip(&[family, "route", "add", "default", "via", &gateway])
                    .unwrap();
            }
        }
        let node1 = &cluster.nodes[0];
        for cidr in ROUTED {
            cluster.outside.route_via(cidr, node1).unwrap();
            let (family, via) = if cidr.contains(':') {
                ("-6", node1.ipv6.to_string())
            } else {
                ("-4", node1.ipv4.to_string())
            };
            blocked
                .ip(&[family, "route", "add", cidr, "via", &via])
                .unwrap();
        }
        Self { blocked, cluster }
    }

    /// One agent per node, each with `extra` arguments.
    pub fn agents(&self, extra: &[&str]) -> Vec<Agent<'_>> {
        agents(&self.cluster, extra)
    }

    /// One agent per node, node k's with `per_node[k]` extra arguments.
    pub fn agents_per_node(&self, per_node: &[&[&str]]) -> Vec<Agent<'_>> {
        per_node
            .iter()
            .enumerate()
            .map(|(k, extra)| {
                let config = extra
                    .iter()
                    .fold(AgentConfig::for_node(&self.cluster, k), |c, a| c.arg(*a));
                Agent::start(config, &self.cluster.nodes[k].netns).expect("agent starts")
            })
            .collect()
    }

    /// Writes `flows.yaml` at once (so an agent never applies half of a
    /// change): each Service and one EndpointSlice per family with every
    /// port of the Service (named as its port, on its target port) and the
    /// given endpoints.
    pub fn write(&self, services: &[(ServiceManifest, Endpoints)]) {
        let mut documents = Vec::new();
        for (service, endpoints) in services {
            documents.push(service.to_value());
            for address_type in [AddressType::IPv4, AddressType::IPv6] {
                documents.push(self.slice(service, address_type, endpoints).to_value());
            }
        }
        self.cluster
            .manifests()
            .write("flows.yaml", &documents)
            .unwrap();
    }

    fn slice(
        &self,
        service: &ServiceManifest,
        address_type: AddressType,
        endpoints: &[(Ep, Cond)],
    ) -> EndpointSliceManifest {
        let family = if address_type == AddressType::IPv4 {
            "v4"
        } else {
            "v6"
        };
        let name = format!("{}-{family}", service.name);
        let mut slice = EndpointSliceManifest::new(&name, NS, &service.name, address_type);
        for port in &service.ports {
            let target = match port.target_port {
                Some(TargetPort::Number(n)) => n,
                _ => port.port,
            };
            let name = port.name.as_deref().unwrap_or_default();
            slice = slice.port(EndpointPort::new(name, port.protocol, target));
        }
        for &((node, index), (ready, serving, terminating)) in endpoints {
            let node = &self.cluster.nodes[node];
            let pod = &node.pods[index];
            let address = if address_type == AddressType::IPv4 {
                IpAddr::V4(pod.ipv4)
            } else {
                IpAddr::V6(pod.ipv6)
            };
            let endpoint =
                Endpoint::ready(address)
                    .node(&node.name)
                    .conditions(ready, serving, terminating);
            slice = slice.endpoint(endpoint);
        }
        slice
    }

    /// Checks every row, each retried for a few (scaled) seconds so that
    /// both agents can catch up with the manifests; fails with every row
    /// that never held.
    pub fn run(&self, rows: &[Row]) {
        let settle = patience::scaled(SETTLE);
        let mut failures = Vec::new();
        for row in rows {
            let start = Instant::now();
            let outcome = loop {
                match self.check(row) {
                    Err(_) if start.elapsed() < settle => {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    outcome => break outcome,
                }
            };
            if let Err(e) = outcome {
                failures.push(format!(
                    "{} [{:?} -> {} {}]: {e}",
                    row.name,
                    row.from,
                    self.target(row.to),
                    if row.udp { "UDP" } else { "TCP" }
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} rows failed:\n{}",
            failures.len(),
            rows.len(),
            failures.join("\n")
        );
    }

    fn check(&self, row: &Row) -> Result<(), String> {
        let errors = match row.want() {
            Want::Rejected => vec!["refused"],
            // Before 5.18 a drop by the socket hooks reads EPERM; one by the
            // per-packet path (behind an untranslated socket) still times
            // out, and the table does not say which path drops.
            Want::Dropped if !matches!(row.from, Client::Outside) => {
                vec!["timeout", kernel::socket_drop()]
            }
            Want::Dropped => vec!["timeout"],
            Want::Served(endpoints) => return self.check_served(row, endpoints),
        };
        let attempt = &self.probe(row, 1)?[0];
        if attempt
            .error
            .as_deref()
            .is_some_and(|e| errors.contains(&e))
        {
            Ok(())
        } else {
            Err(format!("want {}, got {attempt:?}", errors.join(" or ")))
        }
    }

    /// Attempts in batches until every expected (endpoint, address) pair
    /// answered; any other answer, or a failed attempt, fails the row.
    fn check_served(&self, row: &Row, endpoints: &[(Ep, Saw)]) -> Result<(), String> {
        let want: BTreeSet<(String, Saw)> = endpoints
            .iter()
            .map(|&((node, index), saw)| (self.cluster.nodes[node].pods[index].name.clone(), saw))
            .collect();
        let mut seen = BTreeSet::new();
        for _ in 0..BATCHES {
            for attempt in self.probe(row, BATCH)? {
                seen.insert(self.answer(row.from, &attempt)?);
            }
            if !seen.is_subset(&want) {
                return Err(format!("want {want:?}, saw {seen:?}"));
            }
            if seen == want {
                return Ok(());
            }
        }
        Err(format!(
            "want {want:?}, saw only {seen:?} in {} attempts",
            BATCH * BATCHES
        ))
    }

    fn probe(&self, row: &Row, count: u32) -> Result<Vec<Attempt>, String> {
        let prober = self.prober(row.from);
        let to = self.target(row.to);
        let attempts = if row.udp {
            prober.udp(to, count, true)
        } else {
            prober.tcp(to, count)
        };
        attempts.map_err(|e| format!("{e:#}"))
    }

    /// The endpoint that answered and whose address it saw.
    fn answer(&self, from: Client, attempt: &Attempt) -> Result<(String, Saw), String> {
        let (true, Some(name), Some(peer)) = (
            attempt.ok,
            attempt.name.clone(),
            attempt.peer_seen_by_server.as_deref(),
        ) else {
            return Err(format!("attempt failed: {attempt:?}"));
        };
        let peer: SocketAddr = peer.parse().map_err(|e| format!("{peer}: {e}"))?;
        let node = self.cluster.nodes.iter().position(|node| {
            let addrs: [IpAddr; 4] = [
                node.ipv4.into(),
                node.ipv6.into(),
                node.bridge_v4.into(),
                node.bridge_v6.into(),
            ];
            addrs.contains(&peer.ip())
        });
        match node {
            Some(k) => Ok((name, Saw::Node(k))),
            None if self.own(from).contains(&peer.ip()) => Ok((name, Saw::Own)),
            None => Err(format!("{name} saw {peer}, neither a node nor the client")),
        }
    }

    fn own(&self, from: Client) -> Vec<IpAddr> {
        let c = &self.cluster;
        match from {
            Client::Pod((node, index)) => {
                let pod = &c.nodes[node].pods[index];
                vec![pod.ipv4.into(), pod.ipv6.into()]
            }
            Client::Host(_) => Vec::new(),
            Client::Outside => vec![c.outside.ipv4.into(), c.outside.ipv6.into()],
            Client::Blocked => vec![BLOCKED_V4.parse().unwrap(), BLOCKED_V6.parse().unwrap()],
        }
    }

    fn prober(&self, from: Client) -> Prober<'_> {
        let c = &self.cluster;
        match from {
            Client::Pod((node, index)) => c.nodes[node].pod_client(index),
            Client::Host(node) => c.nodes[node].host_client(),
            Client::Outside => c.outside.prober(),
            Client::Blocked => Prober::new(&self.blocked, None),
        }
    }

    fn target(&self, to: To) -> SocketAddr {
        match to {
            To::Addr(addr) => addr.parse().unwrap(),
            To::NodePort(node, port, false) => self.cluster.nodes[node].addr_v4(port),
            To::NodePort(node, port, true) => self.cluster.nodes[node].addr_v6(port),
        }
    }
}
