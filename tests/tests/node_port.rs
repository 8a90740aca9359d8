//! Traffic from outside the cluster through the per-packet path, on two
//! nodes joined by a LAN, each with its own agent (see `multinode`):
//! NodePorts under both traffic policies, LoadBalancer IPs with source
//! ranges, externalIPs, refusals, UDP flows following their backend,
//! conntrack, health check node ports, hairpin. Needs root; run with
//! --test-threads=1.

mod support;

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use support::two_nodes::{NS, agents, cluster, eventually, peers, service, write_service};
use switchyard_tests::{
    AddressType, Endpoint, EndpointPort, EndpointSliceManifest, Protocol, ServiceType,
    TrafficPolicy,
    kernel::{self, Feature},
};

#[test]
fn node_port_cluster_policy_reaches_local_and_remote_pods_through_the_same_node() {
    let c = cluster();
    let _agents = agents(&c, &[]);
    write_service(
        &c,
        &service("web", ServiceType::NodePort, 30080, 10),
        &[(0, 0), (1, 0)],
    );
    let (node1, node2) = (&c.nodes[0], &c.nodes[1]);
    let (pod1, pod2) = (&node1.pods[0].name, &node2.pods[0].name);
    for (target, outside, node_ip) in [
        (
            node1.addr_v4(30080),
            IpAddr::V4(c.outside.ipv4),
            IpAddr::V4(node1.ipv4),
        ),
        (
            node1.addr_v6(30080),
            IpAddr::V6(c.outside.ipv6),
            IpAddr::V6(node1.ipv6),
        ),
    ] {
        eventually("NodePort answers", || {
            c.outside.tcp(target, 1).unwrap().iter().all(|a| a.ok)
        });
        let seen = peers(&c.outside.tcp(target, 16).unwrap());
        // The local pod sees the client; the remote one the node, whose
        // NAT brings its answer back the way the request came.
        let want = BTreeSet::from([(pod1.clone(), outside), (pod2.clone(), node_ip)]);
        assert_eq!(seen, want, "{target}");
        let udp = peers(&c.outside.udp(target, 12, true).unwrap());
        assert!(
            udp.is_subset(&want) && !udp.is_empty(),
            "{target} UDP: {udp:?}"
        );
    }
}

#[test]
fn local_policy_keeps_the_client_ip_and_health_checks_tell_nodes_apart() {
    let c = cluster();
    let _agents = agents(&c, &[]);
    let lb = service("local", ServiceType::LoadBalancer, 30081, 11)
        .external_traffic_policy(TrafficPolicy::Local)
        .health_check_node_port(32100);
    write_service(&c, &lb, &[(1, 0)]);
    let (node1, node2) = (&c.nodes[0], &c.nodes[1]);
    eventually(
        "Local NodePort answers on the node with the endpoint",
        || {
            c.outside
                .tcp(node2.addr_v4(30081), 1)
                .unwrap()
                .iter()
                .all(|a| a.ok)
        },
    );
    let seen = peers(&c.outside.tcp(node2.addr_v4(30081), 4).unwrap());
    let want = BTreeSet::from([(node2.pods[0].name.clone(), IpAddr::V4(c.outside.ipv4))]);
    assert_eq!(seen, want, "client IP preserved");
    let from_v6 = peers(&c.outside.tcp(node2.addr_v6(30081), 2).unwrap());
    assert!(
        from_v6
            .iter()
            .all(|(_, ip)| *ip == IpAddr::V6(c.outside.ipv6))
    );
    // No local endpoint: dropped, so a load balancer's retry goes elsewhere.
    let attempt = &c.outside.tcp(node1.addr_v4(30081), 1).unwrap()[0];
    assert_eq!(attempt.error.as_deref(), Some("timeout"), "{attempt:?}");

    let (status, body) = c.outside.http_get(node2.addr_v4(32100)).unwrap();
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["localEndpoints"], 1);
    assert_eq!(json["service"]["name"], "local");
    let (status, body) = c.outside.http_get(node1.addr_v4(32100)).unwrap();
    assert_eq!(status, 503, "{body}");
}

/// kube-proxy's health check counts Ready local endpoints only: a node
/// whose local pods are all terminating answers 503, so the load balancer
/// drains it, while those pods still serve what reaches them (the
/// Serving-and-Terminating fallback).
#[test]
fn health_checks_count_only_ready_local_endpoints() {
    let c = cluster();
    let _agents = agents(&c, &[]);
    let lb = service("drain", ServiceType::LoadBalancer, 30086, 16)
        .external_traffic_policy(TrafficPolicy::Local)
        .health_check_node_port(32101);
    write_service(&c, &lb, &[(1, 0)]);
    let node2 = &c.nodes[1];
    let check = node2.addr_v4(32101);
    eventually("the health check counts the ready pod", || {
        c.outside
            .http_get(check)
            .is_ok_and(|(status, _)| status == 200)
    });
    let pod = &node2.pods[0];
    let terminating = EndpointSliceManifest::new("drain-tcp-v4", NS, "drain", AddressType::IPv4)
        .port(EndpointPort::new("tcp", Protocol::Tcp, 8080))
        .endpoint(
            Endpoint::ready(pod.ipv4)
                .node(&node2.name)
                .conditions(false, true, true),
        );
    c.manifests()
        .write("drain.yaml", &[lb.to_value(), terminating.to_value()])
        .unwrap();
    eventually("the health check drains the node", || {
        c.outside
            .http_get(check)
            .is_ok_and(|(status, _)| status == 503)
    });
    let (_, body) = c.outside.http_get(check).unwrap();
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["localEndpoints"], 0, "{body}");
    let served = c.outside.tcp(node2.addr_v4(30086), 3).unwrap();
    assert!(
        served
            .iter()
            .all(|a| a.ok && a.name.as_deref() == Some(pod.name.as_str())),
        "the terminating pod still serves: {served:?}"
    );
}

#[test]
fn load_balancer_ips_honour_source_ranges_and_external_ips_do_not() {
    let c = cluster();
    let _agents = agents(&c, &[]);
    let node1 = &c.nodes[0];
    c.outside.route_via("203.0.113.0/24", node1).unwrap();
    c.outside.route_via("198.51.100.0/24", node1).unwrap();
    let lb = |range: &str| {
        service("lb", ServiceType::LoadBalancer, 30082, 12)
            .load_balancer_ingress("203.0.113.10")
            .load_balancer_source_range(range)
            .external_ip("198.51.100.10")
    };
    let pods = [(0, 0), (1, 0)];
    write_service(&c, &lb("192.168.77.0/24"), &pods);
    let lb_ip: SocketAddr = "203.0.113.10:80".parse().unwrap();
    let external_ip: SocketAddr = "198.51.100.10:80".parse().unwrap();
    eventually("LoadBalancer IP answers an allowed source", || {
        c.outside.tcp(lb_ip, 1).unwrap().iter().all(|a| a.ok)
    });
    assert!(!peers(&c.outside.tcp(lb_ip, 6).unwrap()).is_empty());
    assert!(c.outside.tcp(external_ip, 4).unwrap().iter().all(|a| a.ok));

    write_service(&c, &lb("10.0.0.0/8"), &pods);
    eventually("a source outside the ranges is dropped", || {
        c.outside.tcp(lb_ip, 1).unwrap()[0].error.as_deref() == Some("timeout")
    });
    // Source ranges bind LoadBalancer IPs only, as in kube-proxy.
    assert!(c.outside.tcp(external_ip, 2).unwrap().iter().all(|a| a.ok));
}

/// kube-proxy's firewall chain sees every source: the ranges bind the
/// node's own pods and processes reaching the LoadBalancer IP too (through
/// the socket hooks, against the address each one's namespace sends from).
#[test]
fn source_ranges_bind_the_nodes_own_pods_and_processes() {
    let c = cluster();
    let _agents = agents(&c, &[]);
    let node1 = &c.nodes[0];
    // The node's route towards the outside, which its processes' unbound
    // sockets take their source from.
    node1
        .netns
        .ip(&[
            "route",
            "add",
            "default",
            "via",
            &c.outside.ipv4.to_string(),
        ])
        .unwrap();
    let lb = |range: &str| {
        service("lb-own", ServiceType::LoadBalancer, 30089, 19)
            .load_balancer_ingress("203.0.113.19")
            .load_balancer_source_range(range)
    };
    let lb_ip: SocketAddr = "203.0.113.19:80".parse().unwrap();
    let outcome = |prober: switchyard_tests::Prober<'_>| {
        let attempt = prober.tcp(lb_ip, 1).unwrap().remove(0);
        if attempt.ok {
            "ok".to_owned()
        } else {
            attempt.error.unwrap_or_default()
        }
    };
    let [pod_cidr_v4, _] = node1.pod_cidrs();
    write_service(&c, &lb(&pod_cidr_v4), &[(1, 0)]);
    eventually("a pod in the ranges reaches the LoadBalancer IP", || {
        outcome(node1.pod_client(0)) == "ok"
    });
    // Dropped by the hooks (EPERM before 5.18), or before 5.14 left
    // untranslated to routing (below).
    let dropped = if kernel::has(Feature::NetnsCookie) {
        kernel::socket_drop()
    } else {
        "timeout"
    };
    assert_eq!(
        outcome(node1.host_client()),
        dropped,
        "the node's address is outside the ranges"
    );

    write_service(&c, &lb("192.168.77.0/24"), &[(1, 0)]);
    if kernel::lacks(Feature::NetnsCookie) {
        // Before 5.14 no namespace's cookie can be read (SO_NETNS_COOKIE):
        // the node's own sockets go untranslated, by routing (here to the
        // outside, which does not answer), as the kernel table says. Pods
        // are still judged, by the per-packet path.
        eventually("the pod is outside the ranges now", || {
            outcome(node1.pod_client(0)) == "timeout"
        });
        assert_eq!(outcome(node1.host_client()), "timeout", "untranslated");
        return;
    }
    eventually("the node, now in the ranges, reaches it", || {
        outcome(node1.host_client()) == "ok"
    });
    assert_eq!(
        outcome(node1.pod_client(0)),
        dropped,
        "the pod is outside the ranges now"
    );
}

#[test]
fn no_endpoints_is_refused_at_once() {
    let c = cluster();
    let _agents = agents(&c, &[]);
    write_service(&c, &service("empty", ServiceType::NodePort, 30083, 13), &[]);
    let node1 = &c.nodes[0];
    for target in [node1.addr_v4(30083), node1.addr_v6(30083)] {
        eventually("refused", || {
            c.outside.tcp(target, 1).unwrap()[0].error.as_deref() == Some("refused")
        });
        let udp = &c.outside.udp(target, 1, true).unwrap()[0];
        assert_eq!(udp.error.as_deref(), Some("refused"), "{target}: {udp:?}");
    }
}

#[test]
fn a_udp_flow_follows_its_service_to_a_new_backend_and_conntrack_expires() {
    let c = cluster();
    let agents = agents(
        &c,
        &[
            "--conntrack-udp-timeout=2s",
            "--conntrack-udp-timeout-stream=2s",
            "--conntrack-gc-interval=500ms",
        ],
    );
    let (node1, node2) = (&c.nodes[0], &c.nodes[1]);
    let udp = service("dns", ServiceType::NodePort, 30084, 14);
    write_service(&c, &udp, &[(0, 0)]);
    let target = node1.addr_v4(30084);
    let prober = c.outside.prober();
    let ask = || prober.udp_from(target, 1, false, 45_000).unwrap().remove(0);
    eventually("UDP NodePort answers", || ask().ok);
    assert_eq!(ask().name.as_deref(), Some(node1.pods[0].name.as_str()));

    let flows = agents[0].conntrack().unwrap();
    let flows = flows.as_array().unwrap();
    assert_eq!(flows.len(), 1, "{flows:?}");
    assert_eq!(flows[0]["client"], "192.168.77.2:45000");
    assert_eq!(flows[0]["protocol"], "UDP");

    // The backend goes; the same client port reaches the new one at once,
    // with no wait for the old flow to time out.
    write_service(&c, &udp, &[(1, 0)]);
    eventually("the flow moved to the new backend", || {
        ask().name.as_deref() == Some(node2.pods[0].name.as_str())
    });
    eventually("idle flows are collected", || {
        agents[0]
            .conntrack()
            .unwrap()
            .as_array()
            .unwrap()
            .is_empty()
    });
}

#[test]
fn pods_and_node_processes_reach_node_ports_including_their_own() {
    let c = cluster();
    let _agents = agents(&c, &[]);
    write_service(
        &c,
        &service("self", ServiceType::NodePort, 30085, 15),
        &[(0, 0)],
    );
    let node1 = &c.nodes[0];
    let pod = &node1.pods[0].name;
    eventually(
        "hairpin: the pod reaches itself through its NodePort",
        || node1.pod_client(0).tcp(node1.addr_v4(30085), 1).unwrap()[0].ok,
    );
    let hairpin = node1.pod_client(0).tcp(node1.addr_v4(30085), 3).unwrap();
    assert!(
        hairpin
            .iter()
            .all(|a| a.name.as_deref() == Some(pod.as_str()))
    );
    let host = node1.host_client().tcp(node1.addr_v6(30085), 3).unwrap();
    assert!(
        host.iter()
            .all(|a| a.ok && a.name.as_deref() == Some(pod.as_str())),
        "{host:?}"
    );
}
