//! ClusterIP traffic from a process in the agent's cgroup is balanced at
//! connect()/sendmsg() time over the service's ready endpoints.

mod support;

use std::collections::BTreeSet;

use support::*;
use switchyard_tests::{
    AddressType, Agent, AgentConfig, Cluster, ClusterSpec, Endpoint, EndpointPort,
    EndpointSliceManifest, Protocol, ServiceManifest, ServicePort, TargetPort, kernel,
};

/// 40 connections over 4 backends miss one with probability 4*(3/4)^40,
/// about 4e-5: small enough that a miss means a bug.
const SPREAD: u32 = 40;

fn four_pod_web() -> Cluster {
    let cluster = Cluster::up(&ClusterSpec::with_pods(4)).unwrap();
    write_web(&cluster, &cluster.pods);
    cluster
}

/// Both cluster IPs of the dual-stack `web`: each balances over the
/// endpoints of its own family, shows the VIP to getpeername(), and keeps
/// the client's address (no SNAT on this path).
#[test]
fn tcp_to_each_cluster_ip_reaches_every_ready_endpoint() {
    let cluster = four_pod_web();
    let _agent = Agent::start(AgentConfig::for_cluster(&cluster), &cluster.node.netns).unwrap();
    let pods: Vec<_> = cluster.pods.iter().collect();
    for (vip, client) in [(vip4(80), "10.244.0.2:"), (vip6(80), "[fd00:244::2]:")] {
        let attempts = cluster.client.tcp(vip, SPREAD).unwrap();
        assert_eq!(answered(&attempts), names(&pods), "{vip}");
        for attempt in &attempts {
            assert_eq!(
                attempt.getpeername.as_deref(),
                Some(vip.to_string().as_str())
            );
            let seen = attempt.peer_seen_by_server.as_deref().unwrap();
            assert!(seen.starts_with(client), "no SNAT expected: {seen}");
        }
    }
}

#[test]
fn udp_replies_appear_to_come_from_the_vip() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(4)).unwrap();
    let service = ServiceManifest::new("dns", NAMESPACE)
        .cluster_ip(VIP4)
        .cluster_ip(VIP6)
        .port(ServicePort::udp("dns", 53, 8080));
    let port = EndpointPort::new("dns", Protocol::Udp, 8080);
    let [v4, v6] = cluster.endpoint_slices("dns", NAMESPACE, &port, &cluster.pods);
    cluster
        .manifests()
        .write(
            "dns.yaml",
            &[service.to_value(), v4.to_value(), v6.to_value()],
        )
        .unwrap();
    let _agent = Agent::start(AgentConfig::for_cluster(&cluster), &cluster.node.netns).unwrap();
    let pods: Vec<_> = cluster.pods.iter().collect();
    for vip in [vip4(53), vip6(53)] {
        for connected in [false, true] {
            let attempts = cluster.client.udp(vip, SPREAD, connected).unwrap();
            assert_eq!(
                answered(&attempts),
                names(&pods),
                "{vip} connected={connected}"
            );
            for attempt in &attempts {
                assert_eq!(
                    attempt.reply_from.as_deref(),
                    Some(vip.to_string().as_str())
                );
                if connected {
                    assert_eq!(
                        attempt.getpeername.as_deref(),
                        Some(vip.to_string().as_str())
                    );
                }
            }
        }
    }
}

#[test]
fn multi_port_service_with_named_target_ports_and_one_port_on_tcp_and_udp() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(2)).unwrap();
    let mut admin = ServicePort::tcp("admin", 81, 0);
    admin.target_port = Some(TargetPort::Name("admin-port".into()));
    let service = ServiceManifest::new("multi", NAMESPACE)
        .cluster_ip(VIP4)
        .port(ServicePort::tcp("http", 80, 8080))
        .port(admin)
        .port(ServicePort::udp("dns", 80, 8080));
    // The slice is where a named targetPort resolves: per service port name.
    let mut slice = EndpointSliceManifest::new("multi-a", NAMESPACE, "multi", AddressType::IPv4)
        .port(EndpointPort::new("http", Protocol::Tcp, 8080))
        .port(EndpointPort::new("admin", Protocol::Tcp, 9090))
        .port(EndpointPort::new("dns", Protocol::Udp, 8080));
    for pod in &cluster.pods {
        slice = slice.endpoint(Endpoint::ready(pod.ipv4).node("node-a"));
    }
    cluster
        .manifests()
        .write("multi.yaml", &[service.to_value(), slice.to_value()])
        .unwrap();
    let agent = Agent::start(AgentConfig::for_cluster(&cluster), &cluster.node.netns).unwrap();

    let pods: Vec<_> = cluster.pods.iter().collect();
    let all = names(&pods);
    assert_eq!(answered(&cluster.client.tcp(vip4(80), 20).unwrap()), all);
    assert_eq!(answered(&cluster.client.tcp(vip4(81), 20).unwrap()), all);
    assert_eq!(
        answered(&cluster.client.udp(vip4(80), 20, false).unwrap()),
        all
    );

    let admin_backends = programmed_backends(&agent, VIP4, 81, "TCP").unwrap();
    let expected: BTreeSet<String> = cluster
        .pods
        .iter()
        .map(|pod| pod.addr_v4(9090).to_string())
        .collect();
    assert_eq!(
        admin_backends, expected,
        "named targetPort resolved per slice"
    );
}

#[test]
fn a_service_without_ready_endpoints_refuses_connections() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(1)).unwrap();
    let unready = EndpointSliceManifest::new("web-v4", NAMESPACE, "web", AddressType::IPv4)
        .port(http_port())
        .endpoint(Endpoint::ready(cluster.pods[0].ipv4).conditions(false, false, false));
    let empty = ServiceManifest::new("empty", NAMESPACE)
        .cluster_ip("10.96.0.11")
        .port(ServicePort::udp("dns", 53, 8080));
    cluster
        .manifests()
        .write(
            "web.yaml",
            &[
                web_service().to_value(),
                unready.to_value(),
                empty.to_value(),
            ],
        )
        .unwrap();
    let _agent = Agent::start(AgentConfig::for_cluster(&cluster), &cluster.node.netns).unwrap();

    for to in [vip4(80), vip6(80)] {
        for attempt in cluster.client.tcp(to, 3).unwrap() {
            assert_eq!(
                attempt.error.as_deref(),
                Some("refused"),
                "{to}: {attempt:?}"
            );
        }
    }
    let udp_vip = "10.96.0.11:53".parse().unwrap();
    let refusal = kernel::unconnected_send_refusal();
    for attempt in cluster.client.udp(udp_vip, 2, false).unwrap() {
        assert_eq!(attempt.error.as_deref(), Some(refusal), "{attempt:?}");
    }
    // Connected, refused on every kernel (before 5.18 by its first read).
    for attempt in cluster.client.udp(udp_vip, 2, true).unwrap() {
        assert_eq!(attempt.error.as_deref(), Some("refused"), "{attempt:?}");
    }
}

#[test]
fn serving_terminating_endpoints_are_used_when_none_is_ready() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(2)).unwrap();
    let slice = EndpointSliceManifest::new("web-v4", NAMESPACE, "web", AddressType::IPv4)
        .port(http_port())
        .endpoint(Endpoint::ready(cluster.pods[0].ipv4).conditions(false, true, true))
        .endpoint(Endpoint::ready(cluster.pods[1].ipv4).conditions(false, false, true));
    cluster
        .manifests()
        .write("web.yaml", &[web_service().to_value(), slice.to_value()])
        .unwrap();
    let _agent = Agent::start(AgentConfig::for_cluster(&cluster), &cluster.node.netns).unwrap();
    let attempts = cluster.client.tcp(vip4(80), 10).unwrap();
    assert_eq!(answered(&attempts), names(&[&cluster.pods[0]]));
}
