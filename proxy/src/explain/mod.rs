//! `switchyard explain`: the datapath's decision for one connection,
//! replayed step by step against the live maps, as the kernel programs make
//! it (`ebpf/programs/src/sock.rs` for traffic that starts on this node,
//! `nat.rs` for packets from outside). The replay reads through
//! [`Lookups`], so the same steps run against the pinned maps and, in the
//! tests, against a table.

mod packet_path;
mod render;
mod socket_path;
#[cfg(test)]
mod tests;

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
};

use serde::Serialize;
use switchyard_abi::{
    Addr, AffinityKey, AffinityValue, BACKEND_LOCAL, Backend, FRONTEND_CLUSTER_IP,
    FRONTEND_DROP_NO_LOCAL, FRONTEND_SNAT_REMOTE, FRONTEND_SOURCE_RANGES, Flow, FlowKey, MaglevKey,
    NodeConfig, SCOPE_EXTERNAL, ServiceKey, ServiceValue,
};

use crate::model::{Protocol, ServicePortName};

/// Point lookups in the maps the kernel programs read.
pub trait Lookups {
    fn service(&self, key: &ServiceKey) -> Option<ServiceValue>;
    fn backend(&self, id: u32) -> Option<Backend>;
    fn name(&self, frontend: &ServiceKey) -> Option<ServicePortName>;
    fn is_cluster_ip(&self, addr: &Addr) -> bool;
    fn in_service_cidr(&self, addr: &Addr) -> bool;
    fn in_cluster_cidr(&self, addr: &Addr) -> bool;
    fn source_range_allows(&self, frontend: &ServiceKey, src: &Addr) -> bool;
    fn affinity(&self, key: &AffinityKey) -> Option<AffinityValue>;
    /// The slot a Maglev bucket names.
    fn maglev(&self, key: &MaglevKey) -> Option<u32>;
    fn flow(&self, key: &FlowKey) -> Option<Flow>;
    /// The netns cookie of the hooked namespace that sends from `src`.
    fn namespace_of(&self, src: &Addr) -> Option<u64>;
    /// `src` is one of this node's addresses or an endpoint on this node.
    fn on_this_node(&self, src: &Addr) -> bool;
    fn node_config(&self) -> Option<NodeConfig>;
    /// The node address NATed connections of this family leave from.
    fn snat_address(&self, v6: bool) -> Option<Addr>;
    /// `bpf_ktime_get_ns()`'s clock now.
    fn now_ns(&self) -> u64;
    /// Whether the socket hooks set the errno a refused or dropped call
    /// reads (`bpf_set_retval`, Linux 5.18); without it a refused connect()
    /// is sent to port 0 on loopback and a drop reads EPERM.
    fn socket_errno(&self) -> bool;
}

/// Where the connection starts, which decides the path that judges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Origin {
    /// A pod on this node or the host: the socket hooks (connect/sendmsg).
    Node,
    /// Another machine: the per-packet path on the node's devices.
    Outside,
}

/// One connection to explain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    pub protocol: Protocol,
    pub src: IpAddr,
    /// The client's port, when known: an existing connection is then
    /// found in conntrack.
    pub src_port: Option<u16>,
    pub dst: SocketAddr,
    /// `None`: a pod or the host when a hooked namespace sends from `src`
    /// or `src` is this node's or one of its endpoints', else outside.
    pub origin: Option<Origin>,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// "socket" or "packet".
    pub path: &'static str,
    pub steps: Vec<Step>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frontend: Option<FrontendFacts>,
    pub verdict: Verdict,
}

/// One check the datapath makes, and what the maps say.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    pub check: &'static str,
    pub found: String,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct FrontendFacts {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// "internal" or "external".
    pub scope: &'static str,
    pub flags: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity_timeout: Option<u32>,
    /// Buckets of its Maglev table, when it picks by Maglev.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maglev_table_size: Option<u32>,
    /// The Service port's counter entry (0 none, 1 the overflow entry).
    pub counter: u32,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub slot: u16,
    pub backend_id: u32,
    /// `None` when the slot names an id the backend map lacks.
    pub address: Option<SocketAddr>,
    pub local: bool,
    /// Per-packet path: the source would be NATed to this node.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub snat: bool,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Not the datapath's to translate: left as it is.
    Passed {
        why: String,
    },
    Refused {
        how: String,
        why: String,
    },
    Dropped {
        how: String,
        why: String,
    },
    Translated {
        /// Every backend a new connection may go to, each equally likely
        /// unless `chosen` says otherwise.
        candidates: Vec<Candidate>,
        /// Where this connection goes for sure (an affinity record, or a
        /// connection conntrack already knows), and why.
        #[serde(skip_serializing_if = "Option::is_none")]
        chosen: Option<Chosen>,
    },
}

#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct Chosen {
    pub address: SocketAddr,
    pub because: String,
    /// The address and port the source becomes, when NATed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snat: Option<SocketAddr>,
}

/// Replays the datapath's decision for `query` against `maps`.
pub fn explain(maps: &impl Lookups, query: &Query) -> Explanation {
    let origin = query.origin.unwrap_or_else(|| {
        let src = Addr::from(query.src);
        if maps.namespace_of(&src).is_some() || maps.on_this_node(&src) {
            Origin::Node
        } else {
            Origin::Outside
        }
    });
    match origin {
        Origin::Node => socket_path::explain(maps, query),
        Origin::Outside => packet_path::explain(maps, query),
    }
}

/// What the steps have found so far.
struct Trail {
    steps: Vec<Step>,
    frontend: Option<FrontendFacts>,
}

impl Trail {
    fn new() -> Self {
        Self {
            steps: Vec::new(),
            frontend: None,
        }
    }

    fn step(&mut self, check: &'static str, found: impl Into<String>) {
        self.steps.push(Step {
            check,
            found: found.into(),
        });
    }

    fn finish(self, path: &'static str, verdict: Verdict) -> Explanation {
        Explanation {
            path,
            steps: self.steps,
            frontend: self.frontend,
            verdict,
        }
    }

    /// Notes a frontend found at `key` and says what it is.
    fn frontend(&mut self, maps: &impl Lookups, key: &ServiceKey, value: &ServiceValue) {
        let service = maps.name(key).map(|name| name.to_string());
        let facts = FrontendFacts {
            service: service.clone(),
            scope: if key.scope == SCOPE_EXTERNAL {
                "external"
            } else {
                "internal"
            },
            flags: flag_names(value.flags),
            affinity_timeout: (value.affinity_timeout > 0).then_some(value.affinity_timeout),
            maglev_table_size: (value.maglev_table_size() > 0).then_some(value.maglev_table_size()),
            counter: value.counter,
        };
        let mut found = format!(
            "{} ({} scope), {} backend(s)",
            service.as_deref().unwrap_or("a frontend without a name"),
            facts.scope,
            value.count
        );
        if !facts.flags.is_empty() {
            let _infallible = write!(found, ", {}", facts.flags.join(", "));
        }
        if let Some(timeout) = facts.affinity_timeout {
            let _infallible = write!(found, ", session affinity {timeout}s");
        }
        if let Some(size) = facts.maglev_table_size {
            let _infallible = write!(found, ", Maglev over {size} buckets");
        }
        self.step("frontend", found);
        self.frontend = Some(facts);
    }
}

fn flag_names(flags: u16) -> Vec<&'static str> {
    [
        (FRONTEND_SOURCE_RANGES, "loadBalancerSourceRanges"),
        (FRONTEND_SNAT_REMOTE, "externalTrafficPolicy Cluster"),
        (FRONTEND_DROP_NO_LOCAL, "no local endpoints (Local policy)"),
        (FRONTEND_CLUSTER_IP, "ClusterIP"),
    ]
    .into_iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, name)| name)
    .collect()
}

/// The frontend's backends in slots 1..=count, as the kernel picks among
/// them; `snat` says, per backend, whether the source would be NATed.
fn candidates(
    maps: &impl Lookups,
    key: &ServiceKey,
    count: u16,
    snat: impl Fn(&Backend) -> bool,
) -> Vec<Candidate> {
    (1..=count)
        .map(|slot| {
            let backend_id = maps
                .service(&key.with_slot(slot))
                .map_or(0, |v| v.backend_id);
            let backend = maps.backend(backend_id);
            Candidate {
                slot,
                backend_id,
                address: backend.map(|b| address(&b)),
                local: backend.is_some_and(|b| b.flags & BACKEND_LOCAL != 0),
                snat: backend.as_ref().is_some_and(&snat),
            }
        })
        .collect()
}

fn address(backend: &Backend) -> SocketAddr {
    SocketAddr::new(IpAddr::from(backend.addr), u16::from_be(backend.port))
}

/// The backend an affinity record still holds for `client` at `frontend`,
/// as `select` checks it: fresh, its slot within the count, and the slot
/// still naming the same backend.
fn affinity(
    maps: &impl Lookups,
    client: u64,
    key: &ServiceKey,
    value: &ServiceValue,
) -> Option<(AffinityValue, Backend)> {
    if value.affinity_timeout == 0 {
        return None;
    }
    let record = maps.affinity(&AffinityKey::new(client, key))?;
    let timeout = u64::from(value.affinity_timeout) * 1_000_000_000;
    let fresh = maps.now_ns().saturating_sub(record.last_used_ns) < timeout;
    let in_count = record.slot >= 1 && record.slot <= value.count;
    let names = maps
        .service(&key.with_slot(record.slot))
        .is_some_and(|slot| slot.backend_id == record.backend_id);
    if !(fresh && in_count && names) {
        return None;
    }
    Some((record, maps.backend(record.backend_id)?))
}

/// How a client meets each verdict on one path.
struct Outcomes {
    refused: &'static str,
    dropped: &'static str,
    passed: &'static str,
}

/// No frontend at the address and port: kube-proxy's cluster-ips-check
/// refuses an allocated ClusterIP's unserved port and drops an address of
/// the service CIDRs no Service holds; anything else is not ours.
fn unserved(maps: &impl Lookups, addr: &Addr, trail: &mut Trail, outcomes: &Outcomes) -> Verdict {
    if maps.is_cluster_ip(addr) {
        trail.step(
            "frontend",
            "none on this port: the address is an allocated ClusterIP",
        );
        Verdict::Refused {
            how: outcomes.refused.into(),
            why: "no Service serves this port or protocol of the ClusterIP".into(),
        }
    } else if maps.in_service_cidr(addr) {
        trail.step(
            "frontend",
            "none: the address is in a service CIDR but no Service holds it",
        );
        Verdict::Dropped {
            how: outcomes.dropped.into(),
            why: "an unallocated service address".into(),
        }
    } else {
        trail.step("frontend", "none: not a Service address");
        Verdict::Passed {
            why: outcomes.passed.into(),
        }
    }
}

pub use render::text;
