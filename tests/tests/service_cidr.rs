//! kube-proxy's `cluster-ips-check`: a connection to an allocated ClusterIP
//! on a port its Service does not serve is refused, and one to an address
//! of the service CIDRs (`--service-cluster-ip-range`, or the cluster's
//! ServiceCIDR objects) that no Service holds is dropped, never sent on towards the node's default route. From
//! a pod and a host process (socket path) and from outside (per-packet
//! path), on the two-node lab. Needs root; run with --test-threads=1.

mod support;

use std::net::SocketAddr;

use serde_json::json;
use support::{
    metric,
    two_nodes::{agents, cluster, eventually, plain_cluster_ip, write_service},
};
use switchyard_tests::{Attempt, Prober, kernel};

/// The node's admin listener in the lab (the agent's default).
const METRICS_PORT: u16 = 10249;

const SERVICE_CIDRS: &str = "--service-cluster-ip-range=10.96.0.0/16,fd00:96::/112";

/// How one attempt ended: "ok", or the prober's error word.
fn outcome(attempts: &[Attempt]) -> String {
    let attempt = &attempts[0];
    if attempt.ok {
        "ok".to_owned()
    } else {
        attempt.error.clone().unwrap_or_default()
    }
}

/// Where a row's connection starts.
#[derive(Clone, Copy, Debug)]
enum From {
    /// A pod on node-1 (socket path).
    Pod,
    /// A process of node-1 itself (socket path).
    Host,
    /// The outside client, routed to node-1 (per-packet path).
    Outside,
}

/// (from, to, over UDP, expected: "ok", "refused" or "timeout").
const ROWS: [(From, &str, bool, &str); 13] = [
    (From::Pod, "10.96.0.30:80", false, "ok"),
    (From::Pod, "10.96.0.30:81", false, "refused"),
    (From::Pod, "[fd00:96::30]:81", false, "refused"),
    (From::Pod, "10.96.0.30:81", true, "refused"),
    (From::Pod, "10.96.0.99:80", false, "timeout"),
    (From::Pod, "[fd00:96::99]:80", false, "timeout"),
    (From::Host, "10.96.0.30:81", false, "refused"),
    (From::Host, "10.96.0.99:80", false, "timeout"),
    (From::Outside, "10.96.0.30:80", false, "ok"),
    (From::Outside, "10.96.0.30:81", false, "refused"),
    (From::Outside, "[fd00:96::30]:81", false, "refused"),
    (From::Outside, "10.96.0.99:80", false, "timeout"),
    (From::Outside, "[fd00:96::99]:80", false, "timeout"),
];

#[test]
fn unserved_cluster_ip_ports_are_refused_and_unallocated_service_ips_dropped() {
    let c = cluster();
    let _agents = agents(&c, &[SERVICE_CIDRS, "--conntrack-gc-interval=1s"]);
    let node = &c.nodes[0];
    c.outside.route_via("10.96.0.0/16", node).unwrap();
    c.outside.route_via("fd00:96::/64", node).unwrap();
    write_service(&c, &plain_cluster_ip("dns", 30), &[(1, 0)]);
    eventually("the ClusterIP answers", || {
        node.pod_client(0)
            .tcp("10.96.0.30:80".parse().unwrap(), 1)
            .unwrap()[0]
            .ok
    });
    let mut failures = Vec::new();
    for (from, to, udp, expected) in ROWS {
        let prober: Prober<'_> = match from {
            From::Pod => node.pod_client(0),
            From::Host => node.host_client(),
            From::Outside => c.outside.prober(),
        };
        let target: SocketAddr = to.parse().unwrap();
        let attempts = if udp {
            prober.udp(target, 1, true).unwrap()
        } else {
            prober.tcp(target, 1).unwrap()
        };
        // A drop by the socket hooks reads EPERM before 5.18.
        let expected = match (expected, from) {
            ("timeout", From::Pod | From::Host) => kernel::socket_drop(),
            _ => expected,
        };
        let got = outcome(&attempts);
        if got != expected {
            failures.push(format!(
                "{from:?} -> {to} (udp: {udp}): {got}, expected {expected}: {attempts:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // The outside packets to unallocated addresses were dropped by the
    // node, not routed on: counted (the counters are read at each
    // conntrack collection).
    for (verdict, reason) in [
        ("dropped", "unallocated_service_ip"),
        ("rejected", "cluster_ip_port"),
    ] {
        let name = format!("switchyard_packets_total{{reason=\"{reason}\",verdict=\"{verdict}\"}}");
        eventually(&name, || {
            let metrics = support::get(&node.netns, METRICS_PORT, "/metrics").1;
            metric(&metrics, &name).is_some_and(|n| n > 0.0)
        });
    }
}

#[test]
fn without_service_cidrs_an_unallocated_address_is_left_to_routing() {
    let c = cluster();
    let _agents = agents(&c, &[]);
    let node = &c.nodes[0];
    write_service(&c, &plain_cluster_ip("dns", 31), &[(1, 0)]);
    eventually("the ClusterIP answers", || {
        node.pod_client(0)
            .tcp("10.96.0.31:80".parse().unwrap(), 1)
            .unwrap()[0]
            .ok
    });
    // The lab's nodes have no route to the service range: the kernel says
    // so at once, which is not the hooks' drop.
    let attempts = node
        .pod_client(0)
        .tcp("10.96.0.99:80".parse().unwrap(), 1)
        .unwrap();
    assert_ne!(outcome(&attempts), "timeout", "{attempts:?}");
    // An allocated ClusterIP's unserved port is refused either way, as
    // kube-proxy rejects it without knowing the service CIDRs.
    let attempts = node
        .pod_client(0)
        .tcp("10.96.0.31:81".parse().unwrap(), 1)
        .unwrap();
    assert_eq!(outcome(&attempts), "refused", "{attempts:?}");
}

/// Kubernetes 1.33's ServiceCIDR objects give the ranges without the flag,
/// and are followed: a range removed stops dropping, a bad one is named.
#[test]
fn service_cidr_objects_are_learned_and_followed() {
    let c = cluster();
    let _agents = agents(&c, &[]);
    let node = &c.nodes[0];
    write_service(&c, &plain_cluster_ip("dns", 32), &[(1, 0)]);
    let service_cidr = |cidrs: &[&str]| {
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "ServiceCIDR",
            "metadata": {"name": "kubernetes"},
            "spec": {"cidrs": cidrs},
        })
    };
    let unallocated = || {
        let attempts = node
            .pod_client(0)
            .tcp("10.96.0.99:80".parse().unwrap(), 1)
            .unwrap();
        outcome(&attempts)
    };
    let manifests = c.manifests();
    manifests
        .write(
            "service-cidr.yaml",
            &[service_cidr(&["10.96.0.0/16", "fd00:96::/112"])],
        )
        .unwrap();
    let dropped = kernel::socket_drop();
    eventually("the unallocated address is dropped", || {
        unallocated() == dropped
    });
    let attempts = node
        .pod_client(0)
        .tcp("[fd00:96::99]:80".parse().unwrap(), 1)
        .unwrap();
    assert_eq!(outcome(&attempts), dropped, "{attempts:?}");
    manifests.remove("service-cidr.yaml").unwrap();
    eventually("the address is left to routing again", || {
        unallocated() != dropped
    });
    manifests
        .write("service-cidr.yaml", &[service_cidr(&["10.96.0.0/33"])])
        .unwrap();
    eventually("the bad range is named", || {
        let metrics = support::get(&node.netns, METRICS_PORT, "/metrics").1;
        metric(&metrics, "switchyard_input_errors{reason=\"invalid_ip\"}").is_some_and(|n| n > 0.0)
    });
}
