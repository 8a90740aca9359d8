//! Tests of the multi-node topology alone (no agent): pods reach pods on
//! other nodes by their own addresses without NAT, the outside client reaches
//! node addresses but not pods until a router would send it there, the
//! manifests describe the nodes, and every guard cleans up. They need root;
//! run them with --test-threads=1.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener},
    path::PathBuf,
    time::{Duration, Instant},
};

use serde::Deserialize;
use serde_json::Value;
use switchyard_tests::{
    AgentConfig, Attempt, EndpointPort, MultiNodeCluster, MultiNodeSpec, Protocol, netns,
};

fn cluster(pods_per_node: &[usize]) -> MultiNodeCluster {
    MultiNodeCluster::up(&MultiNodeSpec::new(pods_per_node)).expect("topology comes up")
}

/// Every attempt answered by `pod`, which saw the client as `client`.
fn assert_answered(attempts: &[Attempt], pod: &str, client: IpAddr) {
    for a in attempts {
        assert!(a.ok, "attempt failed: {a:?}");
        assert_eq!(a.name.as_deref(), Some(pod));
        let seen: SocketAddr = a.peer_seen_by_server.as_ref().unwrap().parse().unwrap();
        assert_eq!(
            seen.ip(),
            client,
            "the server sees the client's own address"
        );
    }
}

#[test]
fn pod_reaches_a_pod_on_another_node_by_pod_ip_without_nat() {
    let c = cluster(&[1, 1]);
    let (from, to) = (&c.nodes[0].pods[0], &c.nodes[1].pods[0]);
    let client = c.nodes[0].pod_client(0);
    for (addr, own) in [
        (to.addr_v4(8080), IpAddr::V4(from.ipv4)),
        (to.addr_v6(8080), IpAddr::V6(from.ipv6)),
    ] {
        assert_answered(&client.tcp(addr, 2).unwrap(), &to.name, own);
        assert_answered(&client.udp(addr, 1, false).unwrap(), &to.name, own);
    }
    // And back the other way.
    let back = c.nodes[1].pod_client(0).tcp(from.addr_v6(8080), 1).unwrap();
    assert_answered(&back, &from.name, IpAddr::V6(to.ipv6));
}

#[test]
fn host_reaches_local_and_remote_pods() {
    let c = cluster(&[1, 1]);
    let node = &c.nodes[0];
    let host = node.host_client();
    assert_eq!(host.cgroup.unwrap().path(), node.cgroup.path());
    let local = &node.pods[0];
    let attempts = host.tcp(local.addr_v4(8080), 1).unwrap();
    assert_answered(&attempts, &local.name, IpAddr::V4(node.bridge_v4));
    // Towards another node's pods the node speaks from its LAN address.
    let remote = &c.nodes[1].pods[0];
    let attempts = host.tcp(remote.addr_v4(8080), 1).unwrap();
    assert_answered(&attempts, &remote.name, IpAddr::V4(node.ipv4));
    let attempts = host.tcp(remote.addr_v6(8080), 1).unwrap();
    assert_answered(&attempts, &remote.name, IpAddr::V6(node.ipv6));
}

#[test]
fn outside_reaches_node_addresses_but_not_pods() {
    let c = cluster(&[1, 1]);
    for node in &c.nodes {
        // Refused (a RST from the node), not a timeout: the node is there.
        for to in [node.addr_v4(7), node.addr_v6(7)] {
            let attempts = c.outside.tcp(to, 1).unwrap();
            assert_eq!(
                attempts[0].error.as_deref(),
                Some("refused"),
                "{to}: {attempts:?}"
            );
        }
    }
    let pod = &c.nodes[0].pods[0];
    for to in [pod.addr_v4(8080), pod.addr_v6(8080)] {
        let attempts = c.outside.tcp(to, 1).unwrap();
        let error = attempts[0].error.as_deref();
        assert!(
            matches!(error, Some("unreachable" | "timeout")),
            "{to} must be unreachable from outside: {attempts:?}"
        );
    }
}

#[test]
fn route_via_sends_a_range_through_a_node() {
    let c = cluster(&[1, 1]);
    let (first, second) = (&c.nodes[0], &c.nodes[1]);
    c.outside.route_via("203.0.113.0/24", first).unwrap();
    c.outside.route_via("fd00:203::/64", first).unwrap();
    let v4 = c.outside.netns.ip(&["route", "show"]).unwrap();
    assert!(v4.contains("203.0.113.0/24 via 192.168.77.11"), "{v4}");
    let v6 = c.outside.netns.ip(&["-6", "route", "show"]).unwrap();
    assert!(v6.contains("fd00:203::/64 via fd00:77::11"), "{v6}");
    // A route to a pod CIDR makes the node forward to its pod: the path
    // works end to end and the pod sees the outside's own address.
    let [pods_v4, pods_v6] = second.pod_cidrs();
    c.outside.route_via(&pods_v4, second).unwrap();
    c.outside.route_via(&pods_v6, second).unwrap();
    let pod = &second.pods[0];
    let attempts = c.outside.tcp(pod.addr_v4(8080), 1).unwrap();
    assert_answered(&attempts, &pod.name, IpAddr::V4(c.outside.ipv4));
    let attempts = c.outside.udp(pod.addr_v6(8080), 1, true).unwrap();
    assert_answered(&attempts, &pod.name, IpAddr::V6(c.outside.ipv6));
}

#[test]
fn http_get_reads_status_and_body_and_reports_refusal() {
    let c = cluster(&[0]);
    let node = &c.nodes[0];
    let err = c.outside.http_get(node.addr_v4(10256)).unwrap_err();
    assert!(format!("{err:#}").contains("refused"), "{err:#}");
    // A socket keeps the namespace it was made in: bind on the node, serve
    // from a test thread.
    let addr = node.addr_v6(10256);
    let listener = node
        .netns
        .within(|| TcpListener::bind(addr))
        .unwrap()
        .unwrap();
    let server = std::thread::spawn(move || serve_one(&listener));
    let (status, body) = c.outside.http_get_path(addr, "/healthz").unwrap();
    assert_eq!((status, body.as_str()), (503, "not yet"));
    let request = server.join().unwrap();
    assert!(
        request.starts_with("GET /healthz HTTP/1.1\r\n"),
        "{request}"
    );
}

/// Answers one request with a chunked 503, within a bounded wait; returns
/// the request head.
fn serve_one(listener: &TcpListener) -> String {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no request came");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    stream
        .write_all(b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nnot\r\n4\r\n yet\r\n0\r\n\r\n")
        .unwrap();
    String::from_utf8(head).unwrap()
}

#[test]
fn manifests_describe_nodes_and_endpoints_and_agents_are_wired_per_node() {
    let spec = MultiNodeSpec::new(&[1, 2]).zone(0, "zone-a");
    let c = MultiNodeCluster::up(&spec).unwrap();
    let text = std::fs::read_to_string(c.manifests().path().join("nodes.yaml")).unwrap();
    let nodes: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes[0]["metadata"]["name"], "node-1");
    assert_eq!(
        nodes[0]["metadata"]["labels"]["topology.kubernetes.io/zone"],
        "zone-a"
    );
    assert!(
        nodes[1]["metadata"]["labels"]
            .get("topology.kubernetes.io/zone")
            .is_none()
    );
    assert_eq!(
        nodes[1]["status"]["addresses"][0]["address"],
        "192.168.77.12"
    );
    assert_eq!(nodes[1]["status"]["addresses"][1]["address"], "fd00:77::12");

    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    let port = EndpointPort::new("http", Protocol::Tcp, 8080);
    let [v4, v6] = c.endpoint_slices(
        "web",
        "default",
        &port,
        &[(n1, &n1.pods[0]), (n2, &n2.pods[1])],
    );
    let (v4, v6) = (v4.to_value(), v6.to_value());
    assert_eq!(v4["endpoints"][0]["addresses"][0], "10.244.1.10");
    assert_eq!(v4["endpoints"][0]["nodeName"], "node-1");
    assert_eq!(v4["endpoints"][0]["zone"], "zone-a");
    assert_eq!(v4["endpoints"][1]["addresses"][0], "10.244.2.11");
    assert_eq!(v6["endpoints"][1]["addresses"][0], "fd00:244:2::11");
    assert_eq!(v6["endpoints"][1]["nodeName"], "node-2");
    assert!(v6["endpoints"][1].get("zone").is_none());

    let agent = AgentConfig::for_node(&c, 1);
    assert_eq!(agent.node_name, "node-2");
    assert_eq!(agent.manifests, c.manifests().path());
    assert_eq!(agent.cgroup, n2.cgroup.path());
    assert_eq!(agent.bpffs, n2.bpffs.join("switchyard"));
    // XDP too where the kernel has it (the LAN side takes XDP frames).
    let xdp = if switchyard_tests::xdp_peer::in_use() {
        "native"
    } else {
        "auto"
    };
    assert_eq!(agent.extra_args, ["--devices", "eth0", "--xdp", xdp]);
    assert_ne!(agent.log, AgentConfig::for_node(&c, 0).log);
}

#[test]
fn dropping_the_cluster_leaves_nothing_behind() {
    let c = cluster(&[2, 1]);
    let mut names = vec![c.lan.name().to_owned(), c.outside.netns.name().to_owned()];
    let mut dirs: Vec<PathBuf> = vec![c.scratch.path().to_owned()];
    for node in &c.nodes {
        names.push(node.netns.name().to_owned());
        names.extend(node.pods.iter().map(|p| p.netns.name().to_owned()));
        dirs.push(node.cgroup.path().to_owned());
        dirs.push(node.bpffs.path().to_owned());
    }
    assert_eq!(names.len(), 2 + 2 + 3);
    let listed = netns::list().unwrap();
    for name in &names {
        assert!(listed.contains(name), "netns {name} exists while up");
    }
    // A probe still running in a node's cgroup must not keep it alive.
    let _hold = c.nodes[0]
        .pod_client(0)
        .spawn_hold(
            c.nodes[1].pods[0].addr_v4(8080),
            Duration::from_secs(30),
            Duration::from_millis(100),
            c.scratch.join("hold.json"),
        )
        .unwrap();
    drop(c);
    let left = netns::list().unwrap();
    for name in &names {
        assert!(!left.contains(name), "netns {name} left behind");
    }
    for dir in &dirs {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[test]
fn a_failed_bring_up_leaves_nothing_behind() {
    // Node 2 is refused after the LAN, the outside and node 1 exist.
    let err = MultiNodeCluster::up(&MultiNodeSpec::new(&[1, 201]))
        .err()
        .expect("201 pods do not fit a node's /24");
    assert!(format!("{err:#}").contains("node-2"), "{err:#}");
    let ours = format!("-{}-", std::process::id());
    let left: Vec<String> = netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with("sy-") && n.contains(&ours))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
