//! The per-packet path under what production sends it, on the two-node lab
//! (see `support::two_nodes`): short connections by the thousand through
//! one node to a backend on the other, netfilter's conntrack judging the
//! node's forwarding next door, datagrams in fragments, and ClusterIPs
//! routed to a node from outside. Needs root; run with --test-threads=1.

mod support;

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use support::{
    metric,
    two_nodes::{
        agents, cluster, eventually, peers, plain_cluster_ip, serve_node_port, service,
        write_service,
    },
};
use switchyard_tests::{NetNs, Prober, ServiceType};

/// The node's admin listener in the lab (the agent's default).
const METRICS_PORT: u16 = 10249;

/// Connections in flight at once, as a client's connection pool would keep.
const IN_FLIGHT: u32 = 8;

#[test]
fn short_connections_through_one_node_to_a_remote_backend_never_run_out_of_nat_ports() {
    let c = cluster();
    let agents = agents(&c, &[]);
    let target = serve_node_port(
        &c,
        &service("churn", ServiceType::NodePort, 30090, 20),
        30090,
        &[(1, 0)],
    );
    // Past the 4,536 ports a claim once had per node address and backend:
    // each closed connection must give its port back.
    let summary = c
        .outside
        .prober()
        .parallel_burst(target, 6_000, IN_FLIGHT)
        .unwrap();
    assert_eq!(summary.failures, 0, "{summary:?}");
    let metrics = support::get(&c.nodes[0].netns, METRICS_PORT, "/metrics").1;
    assert_eq!(
        metric(
            &metrics,
            "switchyard_packets_total{reason=\"snat_ports_exhausted\",verdict=\"dropped\"}"
        ),
        Some(0.0),
        "{metrics}"
    );
    drop(agents);
}

#[test]
fn a_narrow_nat_port_range_is_reused_as_connections_close() {
    let c = cluster();
    let agents = agents(
        &c,
        &[
            "--nat-port-range=62000-62063",
            "--conntrack-gc-interval=500ms",
        ],
    );
    let target = serve_node_port(
        &c,
        &service("narrow", ServiceType::NodePort, 30091, 21),
        30091,
        &[(1, 0)],
    );
    // 64 ports, 1,000 connections: only ports of closed connections, taken
    // over as netfilter reopens a TIME_WAIT tuple, can carry them.
    let summary = c
        .outside
        .prober()
        .parallel_burst(target, 1_000, IN_FLIGHT)
        .unwrap();
    assert_eq!(summary.failures, 0, "{summary:?}");
    let flows = agents[0].conntrack().unwrap();
    for flow in flows.as_array().unwrap() {
        let snat = flow["snat"].as_str().unwrap_or_default();
        let port: u16 = snat.rsplit(':').next().unwrap().parse().unwrap();
        assert!((62_000..=62_063).contains(&port), "{flow}");
    }
    let in_use_metric = format!(
        "switchyard_nat_ports_in_use{{address=\"{}\"}}",
        c.nodes[0].ipv4
    );
    // A collection made while connections came and went may catch one
    // half of a connection before a take-over and the other after: read
    // one made once the traffic stopped (collections every 500 ms).
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    let mut metrics = String::new();
    eventually("a collection counts the ports in use", || {
        metrics = support::get(&c.nodes[0].netns, METRICS_PORT, "/metrics").1;
        metric(&metrics, &in_use_metric).is_some()
    });
    let in_use = metric(&metrics, &in_use_metric);
    assert!(in_use.is_some_and(|n| n <= 64.0), "{metrics}");
    assert_eq!(
        metric(&metrics, "switchyard_nat_ports"),
        Some(64.0),
        "{metrics}"
    );
}

/// Past the lab links' 1500-byte MTU: the client's kernel sends each
/// request in fragments, and each pod answers with as many.
const LARGE_DATAGRAM: usize = 4_000;

#[test]
fn large_udp_datagrams_reach_pods_on_both_nodes_in_fragments_and_come_back_whole() {
    let c = cluster();
    // Counters are published at each collection.
    let agents = agents(&c, &["--conntrack-gc-interval=500ms"]);
    let node_port = 30095;
    serve_node_port(
        &c,
        &service("frag", ServiceType::NodePort, node_port, 25),
        node_port,
        &[(0, 0), (1, 0)],
    );
    for target in [c.nodes[0].addr_v4(node_port), c.nodes[0].addr_v6(node_port)] {
        let attempts = c
            .outside
            .prober()
            .udp_sized(target, 24, LARGE_DATAGRAM)
            .unwrap();
        let pods: BTreeSet<_> = peers(&attempts).into_iter().map(|(pod, _)| pod).collect();
        assert_eq!(
            pods.len(),
            2,
            "{target}: the local pod and the remote one: {pods:?}"
        );
    }
    eventually("later fragments are counted as followed", || {
        let metrics = support::get(&c.nodes[0].netns, METRICS_PORT, "/metrics").1;
        metric(
            &metrics,
            "switchyard_packets_total{reason=\"fragment\",verdict=\"translated\"}",
        )
        .is_some_and(|n| n > 0.0)
    });
    drop(agents);
}

/// kube-proxy's own KUBE-FORWARD rule, and a host firewall's INPUT twin,
/// in nftables form: whatever netfilter's conntrack calls INVALID dies.
fn drop_conntrack_invalid(netns: &NetNs) {
    nft(
        netns,
        [
            "add table inet firewall",
            "add chain inet firewall forward { type filter hook forward priority 0; }",
            "add chain inet firewall input { type filter hook input priority 0; }",
            "add rule inet firewall forward ct state invalid drop",
            "add rule inet firewall input ct state invalid drop",
        ],
    );
}

/// Runs each of `commands` as one `nft` invocation inside `netns`.
fn nft(netns: &NetNs, commands: impl IntoIterator<Item = impl AsRef<str>>) {
    for command in commands {
        let args: Vec<&str> = command.as_ref().split_whitespace().collect();
        netns.exec("nft", &args).unwrap();
    }
}

/// kube-proxy's NodePort DNAT, as its rules stay loaded while a node moves
/// to Switchyard, pointed at an address nobody answers: a packet that
/// reached it instead of the per-packet path would time out.
fn stale_kube_proxy_node_port(netns: &NetNs, node_port: u16) {
    for (family, target) in [("ip", "10.244.9.9:8080"), ("ip6", "[fd00:244:9::9]:8080")] {
        nft(
            netns,
            [
                format!("add table {family} kube-proxy"),
                format!(
                    "add chain {family} kube-proxy nat-prerouting {{ type nat hook prerouting priority -100; }}"
                ),
                format!(
                    "add rule {family} kube-proxy nat-prerouting tcp dport {node_port} dnat to {target}"
                ),
            ],
        );
    }
}

#[test]
fn node_ports_work_beside_netfilter_dropping_conntrack_invalid_packets() {
    let c = cluster();
    for node in &c.nodes {
        drop_conntrack_invalid(&node.netns);
        stale_kube_proxy_node_port(&node.netns, 30092);
    }
    let _agents = agents(&c, &[]);
    write_service(
        &c,
        &service("guarded", ServiceType::NodePort, 30092, 22),
        &[(0, 0), (1, 0)],
    );
    let node1 = &c.nodes[0];
    for target in [node1.addr_v4(30092), node1.addr_v6(30092)] {
        eventually("NodePort answers", || {
            c.outside.tcp(target, 1).unwrap().iter().all(|a| a.ok)
        });
        let attempts = c.outside.tcp(target, 30).unwrap();
        let failed = attempts.iter().filter(|a| !a.ok).count();
        assert_eq!(failed, 0, "{target}: {attempts:?}");
        let seen: BTreeSet<String> = peers(&attempts).into_iter().map(|(n, _)| n).collect();
        assert_eq!(seen.len(), 2, "{target}: both nodes' pods answer: {seen:?}");
    }
}

#[test]
fn node_ports_answer_on_every_device_that_carries_a_node_port_address() {
    let c = cluster();
    let _agents = agents(&c, &[]);
    write_service(
        &c,
        &service("gateway", ServiceType::NodePort, 30093, 26),
        &[(1, 0)],
    );
    // A pod outside the agent's cgroup (no socket hooks) reaches the
    // NodePort on its gateway's address: the packet comes in on br0, not
    // on the --devices uplink.
    let node1 = &c.nodes[0];
    let pod = &node1.pods[0];
    let unhooked = Prober::new(&pod.netns, None);
    let target = SocketAddr::new(IpAddr::V4("10.244.1.1".parse().unwrap()), 30093);
    eventually("the NodePort answers on the pod gateway's address", || {
        unhooked.tcp(target, 1).unwrap()[0].ok
    });
    let attempts = unhooked.tcp(target, 6).unwrap();
    assert_eq!(
        peers(&attempts),
        BTreeSet::from([(c.nodes[1].pods[0].name.clone(), IpAddr::V4(node1.ipv4))]),
        "NATed to the node, answered from the other node's pod"
    );
}

#[test]
fn loopback_node_ports_serve_the_nodes_own_processes_when_named() {
    let c = cluster();
    let _agents = agents(
        &c,
        &["--nodeport-addresses=127.0.0.0/8,192.168.77.0/24,fd00:77::/64"],
    );
    write_service(
        &c,
        &service("loopback", ServiceType::NodePort, 30097, 29),
        &[(1, 0)],
    );
    let node1 = &c.nodes[0];
    let target: SocketAddr = "127.0.0.1:30097".parse().unwrap();
    eventually("a host process reaches the NodePort on 127.0.0.1", || {
        node1.host_client().tcp(target, 1).unwrap()[0].ok
    });
    let attempts = node1.host_client().tcp(target, 4).unwrap();
    assert!(attempts.iter().all(|a| a.ok), "{attempts:?}");
    // Through the socket hooks: the kernel is never asked to route
    // loopback addresses off the host.
    let route_localnet = node1
        .netns
        .exec("cat", &["/proc/sys/net/ipv4/conf/all/route_localnet"])
        .unwrap();
    assert_eq!(route_localnet.trim(), "0");
    assert!(
        c.outside
            .tcp(node1.addr_v4(30097), 2)
            .unwrap()
            .iter()
            .all(|a| a.ok)
    );
}

#[test]
fn cluster_ips_routed_to_a_node_from_outside_are_served_and_masqueraded() {
    let c = cluster();
    let _agents = agents(&c, &[]);
    let node1 = &c.nodes[0];
    c.outside.route_via("10.96.0.0/16", node1).unwrap();
    c.outside.route_via("fd00:96::/64", node1).unwrap();
    write_service(&c, &plain_cluster_ip("remote", 23), &[(1, 0)]);
    write_service(&c, &plain_cluster_ip("local", 24), &[(0, 0)]);
    let remote_pod = c.nodes[1].pods[0].name.clone();
    let local_pod = node1.pods[0].name.clone();
    for (vip, node_ip, client) in [
        (
            "10.96.0.23:80",
            IpAddr::V4(node1.ipv4),
            IpAddr::V4(c.outside.ipv4),
        ),
        (
            "[fd00:96::23]:80",
            IpAddr::V6(node1.ipv6),
            IpAddr::V6(c.outside.ipv6),
        ),
    ] {
        let vip = vip.parse().unwrap();
        eventually("the ClusterIP answers from outside", || {
            c.outside.tcp(vip, 1).unwrap()[0].ok
        });
        // The source is outside any cluster CIDR: masqueraded to the node,
        // whose NAT brings the answer back.
        assert_eq!(
            peers(&c.outside.tcp(vip, 6).unwrap()),
            BTreeSet::from([(remote_pod.clone(), node_ip)]),
            "{vip}"
        );
        let udp = c.outside.udp(vip, 4, true).unwrap();
        assert!(udp.iter().all(|a| a.ok), "{vip}: {udp:?}");
        // A local pod answers a packet the node delivered itself, so its
        // answer passes the node on the way back: the client stays visible.
        let mut local = vip;
        local.set_ip(match vip.ip() {
            IpAddr::V4(_) => "10.96.0.24".parse().unwrap(),
            IpAddr::V6(_) => "fd00:96::24".parse().unwrap(),
        });
        eventually("the local ClusterIP answers from outside", || {
            c.outside.tcp(local, 1).unwrap()[0].ok
        });
        assert_eq!(
            peers(&c.outside.tcp(local, 4).unwrap()),
            BTreeSet::from([(local_pod.clone(), client)]),
            "{local}"
        );
    }
}

#[test]
fn cluster_ips_from_outside_can_be_turned_off() {
    let c = cluster();
    let _agents = agents(&c, &["--cluster-ip-from-outside=false"]);
    let node1 = &c.nodes[0];
    c.outside.route_via("10.96.0.0/16", node1).unwrap();
    write_service(&c, &plain_cluster_ip("inside", 25), &[(1, 0)]);
    // The Service is programmed (its NodePort-less frontends are in the
    // table) and yet an outside packet is left to the node's routing.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let attempt = &c.outside.tcp("10.96.0.25:80".parse().unwrap(), 1).unwrap()[0];
    assert!(!attempt.ok, "{attempt:?}");
}
