//! Table-driven: maps made by the agent's own plan, a query, and the
//! verdict the kernel programs would reach.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use switchyard_abi::{
    Addr, AffinityKey, AffinityValue, Backend, FLOW_FORWARD, FRONTEND_CLUSTER_IP,
    FRONTEND_DROP_NO_LOCAL, FRONTEND_SOURCE_RANGES, Flow, FlowKey, NODE_CLUSTER_IP_FROM_OUTSIDE,
    NODE_LOCAL_BY_DEVICE, NODE_MASQUERADE_ALL, NodeConfig, SCOPE_EXTERNAL, ServiceKey,
    ServiceValue,
};

use super::*;
use crate::{
    model::{Protocol, Scope, ServicePortName, address::Cidr, fixtures},
    plan::{datapath_state::DatapathState, plan},
};

const POD: &str = "10.244.0.50";
const OUTSIDE: &str = "192.0.2.7";
const NODE: &str = "192.168.1.5";
const NAMESPACE: u64 = 4242;

/// What the maps hold: the plan's state plus the node's tables.
struct Table {
    state: DatapathState,
    service_cidrs: Vec<Cidr>,
    cluster_cidrs: Vec<Cidr>,
    ranges: Vec<(ServiceKey, Cidr)>,
    affinity: HashMap<AffinityKey, AffinityValue>,
    flows: HashMap<FlowKey, Flow>,
    node_flags: u32,
    socket_errno: bool,
}

impl Lookups for Table {
    fn service(&self, key: &ServiceKey) -> Option<ServiceValue> {
        let frontend = self.state.frontends.get(&key.with_slot(0))?;
        if key.slot == 0 {
            let count = frontend.count?;
            let value = ServiceValue::frontend(
                count,
                frontend.flags,
                frontend.affinity_timeout,
                frontend.counter,
            )
            .with_maglev(frontend.maglev_table_size);
            return Some(value);
        }
        let slot = frontend.slots.get(&key.slot)?;
        Some(ServiceValue::slot(slot.backend_id, slot.counter))
    }
    fn backend(&self, id: u32) -> Option<Backend> {
        self.state.backends.get(&id).copied()
    }
    fn maglev(&self, key: &switchyard_abi::MaglevKey) -> Option<u32> {
        let frontend = self.state.frontends.get(&key.frontend.with_slot(0))?;
        let slot = frontend.maglev_bucket(key.bucket);
        (slot != 0).then_some(u32::from(slot))
    }
    fn name(&self, frontend: &ServiceKey) -> Option<ServicePortName> {
        self.state.frontends.get(frontend)?.name.as_deref().cloned()
    }
    fn is_cluster_ip(&self, addr: &Addr) -> bool {
        self.state.frontends.keys().any(|key| key.addr == *addr)
    }
    fn in_service_cidr(&self, addr: &Addr) -> bool {
        self.service_cidrs
            .iter()
            .any(|c| c.contains(IpAddr::from(*addr)))
    }
    fn in_cluster_cidr(&self, addr: &Addr) -> bool {
        self.cluster_cidrs
            .iter()
            .any(|c| c.contains(IpAddr::from(*addr)))
    }
    fn source_range_allows(&self, frontend: &ServiceKey, src: &Addr) -> bool {
        self.ranges.iter().any(|(key, cidr)| {
            key.addr == frontend.addr
                && key.port == frontend.port
                && cidr.contains(IpAddr::from(*src))
        })
    }
    fn affinity(&self, key: &AffinityKey) -> Option<AffinityValue> {
        self.affinity.get(key).copied()
    }
    fn flow(&self, key: &FlowKey) -> Option<Flow> {
        self.flows.get(key).copied()
    }
    fn namespace_of(&self, src: &Addr) -> Option<u64> {
        (*src == Addr::from(POD.parse::<IpAddr>().unwrap())).then_some(NAMESPACE)
    }
    fn on_this_node(&self, src: &Addr) -> bool {
        *src == Addr::from(NODE.parse::<IpAddr>().unwrap())
    }
    fn node_config(&self) -> Option<NodeConfig> {
        Some(NodeConfig {
            flags: self.node_flags,
            ..NodeConfig::default()
        })
    }
    fn snat_address(&self, _v6: bool) -> Option<Addr> {
        Some(Addr::from(NODE.parse::<IpAddr>().unwrap()))
    }
    fn now_ns(&self) -> u64 {
        1_000_000_000_000
    }

    fn socket_errno(&self) -> bool {
        self.socket_errno
    }
}

/// `web` on 10.96.0.10:80 (2 backends, a ClusterIP), `empty` on
/// 10.96.0.11:80, `local` on 10.96.0.12:80 (none here, Local), `lb` on
/// 203.0.113.1:80 (external, one backend, source ranges).
fn table() -> Table {
    let mut want = fixtures::desired(&[
        ("10.96.0.10", 80, &[1, 2]),
        ("10.96.0.11", 80, &[]),
        ("10.96.0.12", 80, &[]),
    ]);
    for (frontend, desired) in &mut want.frontends {
        desired.flags = match frontend.ip.to_string().as_str() {
            "10.96.0.10" => FRONTEND_CLUSTER_IP,
            "10.96.0.12" => FRONTEND_DROP_NO_LOCAL,
            _ => 0,
        };
    }
    let mut lb = fixtures::frontend("203.0.113.1", 80);
    lb.scope = Scope::External;
    let mut lb_want = want.frontends.values().next().unwrap().clone();
    lb_want.flags = FRONTEND_SOURCE_RANGES;
    lb_want.backends.truncate(1);
    want.frontends.insert(lb, lb_want);
    let mut state = DatapathState::default();
    for op in plan(&DatapathState::default(), &want) {
        state.apply(&op);
    }
    Table {
        state,
        service_cidrs: vec!["10.96.0.0/16".parse().unwrap()],
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ranges: vec![(lb.key(), "198.51.100.0/24".parse().unwrap())],
        affinity: HashMap::new(),
        flows: HashMap::new(),
        node_flags: NODE_CLUSTER_IP_FROM_OUTSIDE,
        socket_errno: true,
    }
}

fn query(src: &str, dst: &str) -> Query {
    let (src, src_port) = match src.parse::<SocketAddr>() {
        Ok(addr) => (addr.ip(), Some(addr.port())),
        Err(_) => (src.parse().unwrap(), None),
    };
    Query {
        protocol: Protocol::Tcp,
        src,
        src_port,
        dst: dst.parse().unwrap(),
        origin: None,
    }
}

/// The verdict's kind, with the candidates' count or the chosen address.
fn summary(explanation: &Explanation) -> String {
    let kind = match &explanation.verdict {
        Verdict::Passed { .. } => "passed".to_owned(),
        Verdict::Refused { how, .. } => format!("refused: {how}"),
        Verdict::Dropped { how, .. } => format!("dropped: {how}"),
        Verdict::Translated {
            chosen: Some(chosen),
            ..
        } => format!("to {}", chosen.address),
        Verdict::Translated { candidates, .. } => {
            let natted = candidates.iter().filter(|c| c.snat).count();
            format!("one of {} ({natted} NATed)", candidates.len())
        }
    };
    format!("{} {kind}", explanation.path)
}

#[test]
fn verdict_table() {
    let rows: &[(&str, &str, &str, &str)] = &[
        (
            "a pod to a ClusterIP",
            POD,
            "10.96.0.10:80",
            "socket one of 2 (0 NATed)",
        ),
        (
            "outside to a ClusterIP, NATed off-cluster",
            OUTSIDE,
            "10.96.0.10:80",
            "packet one of 2 (2 NATed)",
        ),
        (
            "a pod to a Service without endpoints",
            POD,
            "10.96.0.11:80",
            "socket refused: connect() fails with ECONNREFUSED",
        ),
        (
            "a pod to Local with no endpoint here",
            POD,
            "10.96.0.12:80",
            "socket dropped: connect() fails with ETIMEDOUT at once",
        ),
        (
            "a ClusterIP's unserved port",
            POD,
            "10.96.0.10:81",
            "socket refused: connect() fails with ECONNREFUSED",
        ),
        (
            "an unallocated service address",
            POD,
            "10.96.9.9:80",
            "socket dropped: connect() fails with ETIMEDOUT at once",
        ),
        ("no Service address", POD, "10.1.2.3:80", "socket passed"),
        (
            "outside the source ranges",
            OUTSIDE,
            "203.0.113.1:80",
            "packet dropped: the packet is dropped",
        ),
        (
            "inside the source ranges",
            "198.51.100.9",
            "203.0.113.1:80",
            "packet one of 1 (0 NATed)",
        ),
        (
            "outside to an unserved ClusterIP port",
            OUTSIDE,
            "10.96.0.10:81",
            "packet refused: a TCP RST or ICMP port unreachable from the frontend's address",
        ),
    ];
    let maps = table();
    for (name, src, dst, want) in rows {
        let got = explain(&maps, &query(src, dst));
        assert_eq!(summary(&got), *want, "{name}: {}", text(&got));
    }
}

/// Before Linux 5.18 (no `bpf_set_retval`) the socket hooks cannot set an
/// errno: explain says what a client reads there instead.
#[test]
fn without_set_retval_refusals_go_through_loopback_and_drops_read_eperm() {
    let maps = Table {
        socket_errno: false,
        ..table()
    };
    for (dst, want) in [
        (
            "10.96.0.11:80",
            "socket refused: connect() is sent to port 0 on loopback and fails with ECONNREFUSED (no bpf_set_retval before Linux 5.18)",
        ),
        (
            "10.96.0.12:80",
            "socket dropped: connect() fails with EPERM at once (no bpf_set_retval before Linux 5.18)",
        ),
        (
            "10.96.9.9:80",
            "socket dropped: connect() fails with EPERM at once (no bpf_set_retval before Linux 5.18)",
        ),
    ] {
        assert_eq!(summary(&explain(&maps, &query(POD, dst))), want, "{dst}");
    }
}

#[test]
fn a_node_that_serves_no_cluster_ip_from_outside_leaves_it_to_the_stack() {
    let maps = Table {
        node_flags: 0,
        ..table()
    };
    let got = explain(&maps, &query(OUTSIDE, "10.96.0.10:80"));
    assert_eq!(summary(&got), "packet passed");
}

#[test]
fn masquerade_all_and_detect_local_decide_who_is_natted() {
    // A client from another machine with a pod address, to a ClusterIP.
    let from_pods = "10.244.9.9";
    let rows = [
        (
            "by CIDR",
            0,
            from_pods,
            "(0 NATed)",
            "inside the cluster's pod CIDRs",
        ),
        (
            "by CIDR",
            0,
            OUTSIDE,
            "(2 NATed)",
            "outside the cluster's pod CIDRs",
        ),
        (
            "masquerade-all",
            NODE_MASQUERADE_ALL,
            from_pods,
            "(2 NATed)",
            "masquerade-all",
        ),
        (
            "by device",
            NODE_LOCAL_BY_DEVICE,
            from_pods,
            "(2 NATed)",
            "by device",
        ),
    ];
    for (name, flags, src, natted, why) in rows {
        let maps = Table {
            node_flags: NODE_CLUSTER_IP_FROM_OUTSIDE | flags,
            ..table()
        };
        let got = explain(&maps, &query(src, "10.96.0.10:80"));
        assert_eq!(
            summary(&got),
            format!("packet one of 2 {natted}"),
            "{name} {src}"
        );
        assert!(text(&got).contains(why), "{name} {src}: {}", text(&got));
    }
}

#[test]
fn an_affinity_record_and_an_established_connection_decide() {
    let mut maps = table();
    let key = ServiceKey::new(
        Addr::from("10.96.0.10".parse::<IpAddr>().unwrap()),
        80u16.to_be(),
        6,
        0,
    );
    let frontend = &maps.state.frontends[&key];
    let (slot, id) = frontend
        .slots
        .iter()
        .nth(1)
        .map(|(s, named)| (*s, named.backend_id))
        .unwrap();
    let backend = maps.state.backends[&id];
    maps.state.frontends.get_mut(&key).unwrap().affinity_timeout = 60;
    maps.affinity.insert(
        AffinityKey::new(NAMESPACE, &key),
        AffinityValue {
            last_used_ns: maps.now_ns() - 1_000_000_000,
            backend_id: id,
            slot,
            pad: 0,
        },
    );
    let got = explain(&maps, &query(POD, "10.96.0.10:80"));
    assert_eq!(summary(&got), format!("socket to {}", address(&backend)));
    assert!(text(&got).contains("session affinity"));

    let client: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    let flow_key = FlowKey::new(
        Addr::from(client.ip()),
        key.addr,
        40000u16.to_be(),
        80u16.to_be(),
        6,
    );
    maps.flows.insert(
        flow_key,
        Flow {
            addr: backend.addr,
            port: backend.port,
            backend_id: id,
            kind: FLOW_FORWARD,
            snat: 1,
            snat_addr: Addr::from(NODE.parse::<IpAddr>().unwrap()),
            snat_port: 61000u16.to_be(),
            ..Flow::default()
        },
    );
    let got = explain(&maps, &query("192.0.2.7:40000", "10.96.0.10:80"));
    assert_eq!(summary(&got), format!("packet to {}", address(&backend)));
    assert!(
        text(&got).contains("source NATed to 192.168.1.5:61000"),
        "{}",
        text(&got)
    );
    let scope = maps
        .state
        .frontends
        .keys()
        .find(|k| k.scope == SCOPE_EXTERNAL)
        .unwrap();
    assert_eq!(
        scope.addr,
        Addr::from("203.0.113.1".parse::<IpAddr>().unwrap())
    );
}
