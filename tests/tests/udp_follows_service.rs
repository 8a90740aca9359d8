//! UDP that follows its Service: a socket that keeps talking to a Service
//! moves off a backend the Service no longer has, as kube-proxy's conntrack
//! flush moves a UDP flow (upstream e2e "should be able to preserve UDP
//! traffic when server pod cycles for a ClusterIP/NodePort service"), and
//! the per-socket state behind the socket path lives as long as its socket.

mod support;

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use support::{programmed_backends, two_nodes::*};
use switchyard_tests::{
    Datagram, MultiNodeCluster, MultiNodeSpec, Prober, ServiceManifest, ServiceType, patience,
};

/// How long after the agent programs a removal a socket may still reach
/// the removed backend.
const FAILOVER: Duration = Duration::from_secs(1);
const INTERVAL: Duration = Duration::from_millis(100);

/// How long the probes run before the change is written.
fn lead() -> Duration {
    patience::scaled(Duration::from_secs(1))
}

/// A hold long enough for the lead, the agent's pass, the failover bound
/// and a second of datagrams after it, on a slow machine too.
fn hold_duration() -> Duration {
    lead() + patience::scaled(Duration::from_secs(2) + FAILOVER) + Duration::from_secs(1)
}

/// Requests a hold of [`hold_duration`] makes when nothing breaks it.
fn full_hold() -> u64 {
    u64::try_from(hold_duration().as_millis() / INTERVAL.as_millis()).unwrap()
}

/// Node 0 runs the client pod (pod 0) and backends 1..; node 1 one more.
fn lab(pods_on_first_node: usize) -> MultiNodeCluster {
    MultiNodeCluster::up(&MultiNodeSpec::new(&[pods_on_first_node, 1])).expect("topology")
}

fn unix_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// When a change was written, and when node 0's agent had programmed it
/// (Unix ms; the second is late by up to the polling interval).
struct Moved {
    written: u64,
    programmed: u64,
}

/// Writes `service` over `pods` and waits until node 0's agent programs
/// exactly them on the Service's IPv4 ClusterIP, port 80 over `protocol`.
fn move_to(
    c: &MultiNodeCluster,
    agent: &switchyard_tests::Agent<'_>,
    service: &ServiceManifest,
    index: u8,
    protocol: &str,
    pods: &[(usize, usize)],
) -> Moved {
    let written = unix_ms();
    write_service(c, service, pods);
    let want: std::collections::BTreeSet<String> = pods
        .iter()
        .map(|&(node, pod)| c.nodes[node].pods[pod].addr_v4(8080).to_string())
        .collect();
    let vip = format!("10.96.0.{index}");
    eventually("the agent programs the new endpoints", || {
        programmed_backends(agent, &vip, 80, protocol).as_ref() == Some(&want)
    });
    Moved {
        written,
        programmed: unix_ms(),
    }
}

fn pod_name(c: &MultiNodeCluster, (node, pod): (usize, usize)) -> String {
    c.nodes[node].pods[pod].name.clone()
}

/// Every datagram sent later than `after_ms` was answered by `name`, with
/// the Service's address as its source (and peer, when connected).
fn all_answered_by(datagrams: &[Datagram], after_ms: u64, name: &str, what: &str) {
    let late: Vec<_> = datagrams
        .iter()
        .filter(|d| d.sent_unix_ms > after_ms)
        .collect();
    assert!(
        late.len() >= 5,
        "{what}: too few datagrams after the change: {datagrams:#?}"
    );
    for datagram in late {
        assert!(
            datagram.attempt.ok && datagram.attempt.name.as_deref() == Some(name),
            "{what}: sent {} ms after the deadline, expected {name}: {datagram:?}",
            datagram.sent_unix_ms.saturating_sub(after_ms)
        );
    }
}

#[test]
fn connected_udp_moves_to_a_live_backend_within_a_second_of_its_removal() {
    let c = lab(2);
    let agents = agents(&c, &[]);
    let node = &c.nodes[0];
    let service = service("dns", ServiceType::NodePort, 30090, 20);
    let (first, second) = ((0, 1), (1, 0));
    let cases: [(&str, Prober<'_>, SocketAddr); 4] = [
        (
            "pod -> ClusterIP v4",
            node.pod_client(0),
            "10.96.0.20:80".parse().unwrap(),
        ),
        (
            "host -> ClusterIP v6",
            node.host_client(),
            "[fd00:96::20]:80".parse().unwrap(),
        ),
        (
            "pod -> NodePort v6",
            node.pod_client(0),
            node.addr_v6(30090),
        ),
        (
            "host -> NodePort v4",
            node.host_client(),
            node.addr_v4(30090),
        ),
    ];
    for (what, prober, to) in cases {
        move_to(&c, &agents[0], &service, 20, "UDP", &[first]);
        let out = c.scratch.join("udp-hold.json");
        let hold = prober
            .spawn_udp_hold(to, true, hold_duration(), INTERVAL, out)
            .unwrap();
        std::thread::sleep(lead());
        let moved = move_to(&c, &agents[0], &service, 20, "UDP", &[second]);
        let datagrams = hold.wait().unwrap();
        let before: Vec<_> = datagrams
            .iter()
            .filter(|d| d.sent_unix_ms < moved.written)
            .collect();
        assert!(
            before
                .iter()
                .any(|d| d.attempt.name.as_deref() == Some(&pod_name(&c, first))),
            "{what}: the first backend answered before the change: {datagrams:#?}"
        );
        let deadline =
            moved.programmed + u64::try_from(patience::scaled(FAILOVER).as_millis()).unwrap();
        all_answered_by(&datagrams, deadline, &pod_name(&c, second), what);
    }
}

#[test]
fn unconnected_udp_sticks_to_one_backend_and_moves_when_it_leaves() {
    let c = lab(4);
    let agents = agents(&c, &[]);
    let service =
        cluster_ip_service("sticky", 21).port(switchyard_tests::ServicePort::udp("udp", 80, 8080));
    let backends = [(0, 1), (0, 2), (0, 3), (1, 0)];
    move_to(&c, &agents[0], &service, 21, "UDP", &backends);
    let to: SocketAddr = "10.96.0.21:80".parse().unwrap();
    let hold = c.nodes[0]
        .pod_client(0)
        .spawn_udp_hold(
            to,
            false,
            hold_duration(),
            INTERVAL,
            c.scratch.join("u.json"),
        )
        .unwrap();
    std::thread::sleep(lead() + Duration::from_millis(500));
    // Whichever backend the socket stuck to leaves.
    let datagrams_so_far = std::fs::read_to_string(c.scratch.join("u.json")).unwrap();
    let stuck = backends
        .iter()
        .copied()
        .find(|&b| datagrams_so_far.contains(&format!("\"name\":\"{}\"", pod_name(&c, b))))
        .expect("some backend answered");
    let rest: Vec<_> = backends.iter().copied().filter(|&b| b != stuck).collect();
    let moved = move_to(&c, &agents[0], &service, 21, "UDP", &rest);
    let datagrams = hold.wait().unwrap();
    let before: Vec<_> = datagrams
        .iter()
        .filter(|d| d.sent_unix_ms < moved.written)
        .collect();
    assert!(before.len() >= 5, "{datagrams:#?}");
    for datagram in &before {
        assert_eq!(
            datagram.attempt.name.as_deref(),
            Some(pod_name(&c, stuck).as_str()),
            "one socket's datagrams stick to one backend: {datagram:?} in {:?}",
            before
                .iter()
                .map(|d| (d.sent_unix_ms, d.attempt.name.clone()))
                .collect::<Vec<_>>()
        );
    }
    let deadline =
        moved.programmed + u64::try_from(patience::scaled(FAILOVER).as_millis()).unwrap();
    let after: Vec<_> = datagrams
        .iter()
        .filter(|d| d.sent_unix_ms > deadline)
        .collect();
    let new_home = after
        .first()
        .and_then(|d| d.attempt.name.clone())
        .expect("answers after the change");
    assert_ne!(new_home, pod_name(&c, stuck));
    all_answered_by(&datagrams, deadline, &new_home, "after the move");
}

/// More connects than the node-wide table of socket translations this
/// replaced (131,072 entries) had room for.
const CHURN: u32 = 150_000;

#[test]
fn another_pods_connect_churn_leaves_a_long_lived_socket_its_service_address() {
    let c = lab(2);
    let _agents = agents(&c, &[]);
    let service =
        cluster_ip_service("churn", 22).port(switchyard_tests::ServicePort::udp("udp", 80, 8080));
    write_service(&c, &service, &[(0, 1), (1, 0)]);
    let to: SocketAddr = "10.96.0.22:80".parse().unwrap();
    let node = &c.nodes[0];
    eventually("the Service answers", || {
        node.pod_client(0).udp(to, 1, true).is_ok_and(|a| a[0].ok)
    });
    // Two datagrams per socket, far apart: one before the churn, one after.
    let gap = patience::scaled(Duration::from_secs(8));
    let holds: Vec<_> = [true, false]
        .into_iter()
        .map(|connected| {
            let out = c.scratch.join(format!("hold-{connected}.json"));
            let hold = node
                .host_client()
                .spawn_udp_hold(to, connected, gap, gap, out)
                .unwrap();
            (connected, hold)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let started = std::time::Instant::now();
    let churn = node
        .pod_client(0)
        .udp_connect_churn(to, CHURN, gap * 4)
        .unwrap();
    assert!(churn.ok, "{churn:?}");
    assert!(
        started.elapsed() + Duration::from_secs(1) < gap,
        "the churn took {:?}, longer than the gap it must fit in",
        started.elapsed()
    );
    for (connected, hold) in holds {
        let datagrams = hold.wait().unwrap();
        assert_eq!(datagrams.len(), 2, "{datagrams:#?}");
        for datagram in &datagrams {
            assert!(
                datagram.attempt.ok,
                "connected={connected}: the reply still comes from the Service: {datagram:?}"
            );
        }
    }
}

/// A TCP connection held to a ClusterIP while its backend leaves the
/// Service; returns its summary.
fn tcp_hold_across_removal(extra_flags: &[&str]) -> switchyard_tests::Summary {
    let c = lab(2);
    let agents = agents(&c, extra_flags);
    let service =
        cluster_ip_service("web", 23).port(switchyard_tests::ServicePort::tcp("tcp", 80, 8080));
    move_to(&c, &agents[0], &service, 23, "TCP", &[(0, 1)]);
    let hold = c.nodes[0]
        .pod_client(0)
        .spawn_hold(
            "10.96.0.23:80".parse().unwrap(),
            hold_duration(),
            INTERVAL,
            c.scratch.join("tcp-hold.json"),
        )
        .unwrap();
    std::thread::sleep(lead());
    move_to(&c, &agents[0], &service, 23, "TCP", &[(1, 0)]);
    hold.wait().unwrap()
}

#[test]
fn tcp_connections_to_a_removed_backend_are_left_alone_by_default() {
    // kube-proxy leaves TCP flows to a removed endpoint be: the pod may
    // still be finishing its work.
    let summary = tcp_hold_across_removal(&[]);
    assert!(
        summary.ok && summary.requests + 2 >= full_hold(),
        "{summary:?}"
    );
}

#[test]
fn tcp_connections_to_a_removed_backend_are_destroyed_when_asked() {
    let summary = tcp_hold_across_removal(&["--destroy-tcp-to-removed-backends"]);
    assert!(
        !summary.ok,
        "the held connection was destroyed: {summary:?}"
    );
    assert_eq!(summary.failures, 1, "{summary:?}");
    // Broken well before the hold's end: at the change, not by timing out.
    assert!(summary.requests + 10 <= full_hold(), "{summary:?}");
}
