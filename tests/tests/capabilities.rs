//! The capabilities the agent needs, shown by running it with exactly a
//! pod's set: the DaemonSet's (read from `deploy/daemonset.yaml`), that set
//! without `SYS_PTRACE`, and without `SYS_ADMIN` too. Each run shows what a
//! capability buys; the verifier test shows what `PERFMON` buys, and on a
//! kernel before 5.11 an agent without `SYS_RESOURCE` shows what that buys.

mod support;

use std::{net::SocketAddr, time::Duration};

use support::{programmed_backends, two_nodes::*};
use switchyard_tests::{
    Agent, AgentConfig, CapabilitySet, Datagram, MultiNodeCluster, MultiNodeSpec, ServiceType,
    kernel::{self, Feature},
    patience,
};

/// Before 5.11 BPF maps are charged to RLIMIT_MEMLOCK: without
/// `SYS_RESOURCE` the agent cannot lift a runtime's limit, and stops at
/// once with one line naming the capability (not on whichever map came
/// first).
fn memlock_needs_sys_resource(c: &MultiNodeCluster, daemonset: CapabilitySet) {
    let config =
        AgentConfig::for_node(c, 3).confined_to(daemonset.without(&["SYS_RESOURCE"]).unwrap());
    let Err(error) = Agent::start(config, &c.nodes[3].netns) else {
        panic!("an agent without SYS_RESOURCE started on a kernel that charges memlock");
    };
    let error = format!("{error:#}");
    assert!(
        error.contains("RLIMIT_MEMLOCK") && error.contains("CAP_SYS_RESOURCE"),
        "{error}"
    );
}

/// A test can grant only what it holds: a sandbox without `SYS_RESOURCE`
/// runs the set without it, which 5.11 and later do not need, and says so.
fn grantable(daemonset: CapabilitySet) -> CapabilitySet {
    let lacking = daemonset.missing_from(CapabilitySet::held().unwrap());
    for capability in &lacking {
        kernel::report_missing(&format!("CAP_{capability}_in_the_test_process"));
    }
    assert!(
        lacking.is_empty() || lacking == ["SYS_RESOURCE"] && kernel::has(Feature::MemcgAccounting),
        "the test process lacks {lacking:?}, which this kernel needs"
    );
    daemonset.without(&lacking).unwrap()
}

/// `nobody`: pods that run as another user than the agent.
const POD_USER: u32 = 65534;
const INTERVAL: Duration = Duration::from_millis(100);

/// Every `switchyard_sockets_destroyed_total` sample with `result`, summed.
fn sockets(node: &switchyard_tests::ClusterNode, result: &str) -> f64 {
    let (_, exposition) = support::get(&node.netns, 10249, "/metrics");
    let label = format!("result=\"{result}\"");
    exposition
        .lines()
        .filter(|line| {
            line.starts_with("switchyard_sockets_destroyed_total{") && line.contains(&label)
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn answered_by<'a>(datagrams: &'a [Datagram], pod: &str) -> impl Iterator<Item = &'a Datagram> {
    datagrams
        .iter()
        .filter(move |d| d.attempt.ok && d.attempt.name.as_deref() == Some(pod))
}

/// What one node's agent runs with, and what that shows.
struct Node {
    capabilities: CapabilitySet,
    /// Another user's connected UDP socket leaves the removed backend.
    moves: bool,
    /// The capability its log says it lacks.
    lacks: Option<&'static str>,
}

/// The four nodes' sets, from the DaemonSet's. Node 3 keeps
/// `SYS_RESOURCE` only where the kernel charges BPF maps to the memlock
/// limit (before 5.11).
fn nodes(daemonset: CapabilitySet) -> [Node; 4] {
    let mut minimal = vec!["SYS_ADMIN", "SYS_PTRACE"];
    if kernel::has(Feature::MemcgAccounting) {
        minimal.push("SYS_RESOURCE");
    }
    [
        Node {
            capabilities: daemonset,
            moves: true,
            lacks: None,
        },
        Node {
            capabilities: daemonset.without(&["SYS_PTRACE"]).unwrap(),
            moves: false,
            lacks: Some("SYS_PTRACE"),
        },
        Node {
            capabilities: daemonset.without(&["SYS_ADMIN"]).unwrap(),
            moves: false,
            lacks: Some("SYS_ADMIN"),
        },
        Node {
            capabilities: daemonset.without(&minimal).unwrap(),
            moves: false,
            lacks: None,
        },
    ]
}

/// Nodes 0-2 each hold, from a pod running as another user (a root pod
/// with a capability the agent lacks is out of reach the same way), a
/// connected UDP socket to a Service whose backend moves from node 0 to
/// node 3. With
/// the DaemonSet's set (node 0) the agent destroys the socket and its next
/// datagrams reach the new backend. Without `SYS_PTRACE` (node 1) it
/// cannot open the pod's namespace, without `SYS_ADMIN` (node 2) it cannot
/// enter it: each says so once, naming the capability, counts
/// `namespace_denied`, and the socket stays on the old backend. With only
/// `BPF`, `NET_ADMIN` and `PERFMON` (node 3) ClusterIP connections are
/// balanced and the NodePort is served from outside.
#[test]
fn each_capability_of_the_daemonset_is_needed_and_enough() {
    let c = MultiNodeCluster::up(&MultiNodeSpec::new(&[2, 1, 1, 1])).expect("topology");
    let daemonset = CapabilitySet::daemonset().unwrap();
    assert_eq!(
        daemonset,
        CapabilitySet::named(&[
            "BPF",
            "NET_ADMIN",
            "PERFMON",
            "SYS_ADMIN",
            "SYS_PTRACE",
            "SYS_RESOURCE"
        ])
        .unwrap()
    );
    let daemonset = grantable(daemonset);
    if kernel::lacks(Feature::MemcgAccounting) {
        memlock_needs_sys_resource(&c, daemonset);
    }
    let nodes = nodes(daemonset);
    let agents: Vec<Agent<'_>> = nodes
        .iter()
        .enumerate()
        .map(|(index, node)| {
            let config = AgentConfig::for_node(&c, index).confined_to(node.capabilities);
            Agent::start(config, &c.nodes[index].netns).expect("agent starts confined")
        })
        .collect();
    let service = service("caps", ServiceType::NodePort, 30093, 33);
    let (old, new) = ((0, 1), (3, 0));
    let vip: SocketAddr = "10.96.0.33:80".parse().unwrap();
    let programmed = |pod: (usize, usize)| {
        let want = c.nodes[pod.0].pods[pod.1].addr_v4(8080).to_string();
        for agent in &agents {
            eventually("every agent programs the endpoints", || {
                programmed_backends(agent, "10.96.0.33", 80, "UDP")
                    .is_some_and(|backends| backends.len() == 1 && backends.contains(&want))
            });
        }
    };
    write_service(&c, &service, &[old]);
    programmed(old);

    let lead = patience::scaled(Duration::from_secs(1));
    let hold = lead + patience::scaled(Duration::from_secs(4));
    let holds: Vec<_> = (0..3)
        .map(|node| {
            let out = c.scratch.join(format!("hold-{node}.json"));
            c.nodes[node]
                .pod_client(0)
                .as_user(POD_USER)
                .spawn_udp_hold(vip, true, hold, INTERVAL, out)
                .unwrap()
        })
        .collect();
    std::thread::sleep(lead);
    write_service(&c, &service, &[new]);
    programmed(new);
    let name = |(node, pod): (usize, usize)| c.nodes[node].pods[pod].name.clone();
    for (index, hold) in holds.into_iter().enumerate() {
        let datagrams = hold.wait().unwrap();
        let (node, agent) = (&nodes[index], &agents[index]);
        let last = datagrams.last().and_then(|d| d.attempt.name.clone());
        let log = agent.log();
        if node.moves {
            assert!(sockets(&c.nodes[index], "destroyed") >= 1.0, "{log}");
            assert!(
                answered_by(&datagrams, &name(new)).count() >= 3,
                "{datagrams:#?}"
            );
            assert_eq!(last, Some(name(new)), "node {index}");
        } else {
            assert_eq!(
                answered_by(&datagrams, &name(new)).count(),
                0,
                "node {index} {:?}: {datagrams:#?}",
                node.capabilities
            );
            assert_eq!(last, Some(name(old)), "node {index}");
            assert!(sockets(&c.nodes[index], "namespace_denied") >= 1.0, "{log}");
        }
        if let Some(capability) = node.lacks {
            let line = format!("capability=\"{capability}\"");
            assert_eq!(log.matches(&line).count(), 1, "said once: {log}");
        }
    }

    // BPF, NET_ADMIN and PERFMON (and SYS_RESOURCE before 5.11): the hooks
    // and the per-packet path serve.
    let node = &c.nodes[3];
    let from_pod = node.pod_client(0).tcp(vip, 3).unwrap();
    assert_eq!(peers(&from_pod).len(), 1, "{from_pod:?}");
    let from_outside = c.outside.tcp(node.addr_v4(30093), 3).unwrap();
    assert!(
        from_outside
            .iter()
            .all(|a| a.ok && a.name == Some(name(new))),
        "{from_outside:?}\n{}",
        agents[3].log()
    );
}
