//! Which endpoints a frontend uses, as kube-proxy's `topology.go` decides:
//! readiness with the KEP-1669 terminating fallback, traffic policy Local,
//! and topology-aware routing from EndpointSlice hints.

use std::collections::BTreeSet;

use crate::model::{Endpoint, address::IpFamily};

/// The label kube-proxy reads the node's zone from.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// What the rules need to know about the node the agent runs on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeContext {
    pub name: String,
    /// `topology.kubernetes.io/zone`; without it zone hints are ignored.
    pub zone: Option<String>,
    /// The addresses NodePorts are served on (`--nodeport-addresses`
    /// applied to this node's addresses).
    pub node_port_addresses: Vec<std::net::IpAddr>,
    /// The service CIDRs (`--service-cluster-ip-range` and ServiceCIDR
    /// objects).
    pub service_cidrs: Vec<crate::model::address::Cidr>,
    /// Which `spec.externalIPs` are served.
    pub external_ips: crate::convert::claim::ExternalIpPolicy,
    /// Which Service ports get traffic counters of their own.
    pub counters: crate::model::counter_policy::CounterPolicy,
    /// How external frontends pick backends (`--lb-algorithm`).
    pub balancing: crate::model::balancing::Balancing,
}

impl NodeContext {
    /// This node's name, its zone when its Node object is known, the
    /// addresses its NodePorts answer on, the service CIDRs and which
    /// externalIPs it serves.
    pub fn new(
        name: &str,
        node: Option<&k8s_openapi::api::core::v1::Node>,
        node_port_addresses: &[std::net::IpAddr],
        service_cidrs: &[crate::model::address::Cidr],
        external_ips: crate::convert::claim::ExternalIpPolicy,
    ) -> Self {
        let zone = node.and_then(|node| node.metadata.labels.as_ref()?.get(ZONE_LABEL).cloned());
        Self {
            name: name.to_owned(),
            zone,
            node_port_addresses: node_port_addresses.to_vec(),
            service_cidrs: service_cidrs.to_vec(),
            external_ips,
            counters: crate::model::counter_policy::CounterPolicy::default(),
            balancing: crate::model::balancing::Balancing::default(),
        }
    }

    #[must_use]
    pub fn with_balancing(mut self, balancing: crate::model::balancing::Balancing) -> Self {
        self.balancing = balancing;
        self
    }

    #[must_use]
    pub fn with_counters(mut self, counters: crate::model::counter_policy::CounterPolicy) -> Self {
        self.counters = counters;
        self
    }

    /// The address families the node serves, by its NodePort addresses
    /// (none known: empty).
    pub fn families(&self) -> Vec<IpFamily> {
        let families: BTreeSet<IpFamily> = self
            .node_port_addresses
            .iter()
            .map(|ip| IpFamily::of(*ip))
            .collect();
        families.into_iter().collect()
    }
}

/// One endpoint of one Service port, with what the rules look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub endpoint: Endpoint,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node_name: Option<String>,
    pub zone_hints: BTreeSet<String>,
    pub node_hints: BTreeSet<String>,
}

impl Candidate {
    fn is_local(&self, node: &NodeContext) -> bool {
        self.node_name.as_deref() == Some(node.name.as_str())
    }
}

/// `internalTrafficPolicy` (and, for external frontends, the external one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TopologyMode {
    None,
    SameNode,
    SameZone,
}

/// The endpoints to balance over, sorted. Empty means the frontend refuses.
pub fn select_endpoints(
    candidates: &[Candidate],
    policy: TrafficPolicy,
    node: &NodeContext,
) -> Vec<Endpoint> {
    let mut chosen = match policy {
        TrafficPolicy::Cluster => {
            let mode = topology_mode(candidates, node);
            let topological = pick(candidates, node, |c| c.ready && available(c, mode, node));
            if topological.is_empty() {
                // The fallback ignores topology, as kube-proxy's does.
                pick(candidates, node, |c| c.serving && c.terminating)
            } else {
                topological
            }
        }
        TrafficPolicy::Local => {
            let ready = pick(candidates, node, |c| c.ready && c.is_local(node));
            if ready.is_empty() {
                pick(candidates, node, |c| {
                    c.serving && c.terminating && c.is_local(node)
                })
            } else {
                ready
            }
        }
    };
    chosen.sort();
    chosen
}

fn pick(
    candidates: &[Candidate],
    node: &NodeContext,
    keep: impl Fn(&Candidate) -> bool,
) -> Vec<Endpoint> {
    candidates
        .iter()
        .filter(|candidate| keep(candidate))
        .map(|candidate| Endpoint {
            local: candidate.is_local(node),
            ..candidate.endpoint
        })
        .collect()
}

fn available(candidate: &Candidate, mode: TopologyMode, node: &NodeContext) -> bool {
    match mode {
        TopologyMode::None => true,
        TopologyMode::SameNode => candidate.node_hints.contains(&node.name),
        TopologyMode::SameZone => node
            .zone
            .as_ref()
            .is_some_and(|zone| candidate.zone_hints.contains(zone)),
    }
}

/// Hints are used only when every ready endpoint carries them and at least
/// one targets this node (or its zone); otherwise routing falls back to all
/// endpoints, so a half-hinted slice never strands traffic. Same-node hints
/// win over zone hints.
fn topology_mode(candidates: &[Candidate], node: &NodeContext) -> TopologyMode {
    let ready: Vec<&Candidate> = candidates.iter().filter(|c| c.ready).collect();
    if ready.is_empty() {
        return TopologyMode::None;
    }
    let all_node_hinted = ready.iter().all(|c| !c.node_hints.is_empty());
    if all_node_hinted && ready.iter().any(|c| c.node_hints.contains(&node.name)) {
        return TopologyMode::SameNode;
    }
    let all_zone_hinted = ready.iter().all(|c| !c.zone_hints.is_empty());
    match &node.zone {
        Some(zone) if all_zone_hinted && ready.iter().any(|c| c.zone_hints.contains(zone)) => {
            TopologyMode::SameZone
        }
        _ => TopologyMode::None,
    }
}

#[cfg(test)]
mod tests;
