//! A two-node lab shared by the per-packet path's scenario files: nodes on
//! one LAN with an agent each, an outside client, and dual-stack Services
//! over TCP and UDP written as manifests.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use switchyard_tests::{
    Agent, AgentConfig, Attempt, EndpointPort, MultiNodeCluster, MultiNodeSpec, Protocol,
    ServiceManifest, ServicePort, ServiceType, patience,
};

pub const NS: &str = "default";

pub fn cluster() -> MultiNodeCluster {
    MultiNodeCluster::up(&MultiNodeSpec::new(&[1, 1])).expect("topology comes up")
}

pub fn agents<'a>(cluster: &'a MultiNodeCluster, extra: &[&str]) -> Vec<Agent<'a>> {
    (0..cluster.nodes.len())
        .map(|index| {
            let config = extra
                .iter()
                .fold(AgentConfig::for_node(cluster, index), |config, arg| {
                    config.arg(*arg)
                });
            Agent::start(config, &cluster.nodes[index].netns).expect("agent starts")
        })
        .collect()
}

/// A dual-stack Service `name` (TCP and UDP on port 80 -> 8080) with
/// slices over the given pods, as `name.yaml`.
pub fn write_service(
    cluster: &MultiNodeCluster,
    service: &ServiceManifest,
    pods: &[(usize, usize)],
) {
    let name = service.name.clone();
    let members: Vec<_> = pods
        .iter()
        .map(|&(node, pod)| (&cluster.nodes[node], &cluster.nodes[node].pods[pod]))
        .collect();
    let mut documents = vec![service.to_value()];
    for port in [
        EndpointPort::new("tcp", Protocol::Tcp, 8080),
        EndpointPort::new("udp", Protocol::Udp, 8080),
    ] {
        let [v4, v6] = cluster.endpoint_slices(
            &format!("{name}-{}", port.name.clone().unwrap_or_default()),
            NS,
            &port,
            &members,
        );
        documents.push(v4.label("kubernetes.io/service-name", &name).to_value());
        documents.push(v6.label("kubernetes.io/service-name", &name).to_value());
    }
    cluster
        .manifests()
        .write(&format!("{name}.yaml"), &documents)
        .unwrap();
}

pub fn service(name: &str, ty: ServiceType, node_port: u16, index: u8) -> ServiceManifest {
    cluster_ip_service(name, index)
        .type_(ty)
        .port(ServicePort::tcp("tcp", 80, 8080).node_port(node_port))
        .port(ServicePort::udp("udp", 80, 8080).node_port(node_port))
}

/// A ClusterIP Service `name` on 10.96.0.`index` and fd00:96::`index`,
/// without ports until [`service`] or the caller adds them.
pub fn cluster_ip_service(name: &str, index: u8) -> ServiceManifest {
    ServiceManifest::new(name, NS)
        .cluster_ip(format!("10.96.0.{index}"))
        .cluster_ip(format!("fd00:96::{index}"))
}

/// [`cluster_ip_service`] with TCP and UDP port 80 -> 8080.
pub fn plain_cluster_ip(name: &str, index: u8) -> ServiceManifest {
    cluster_ip_service(name, index)
        .port(ServicePort::tcp("tcp", 80, 8080))
        .port(ServicePort::udp("udp", 80, 8080))
}

pub fn peers(attempts: &[Attempt]) -> BTreeSet<(String, IpAddr)> {
    attempts
        .iter()
        .map(|attempt| {
            assert!(attempt.ok, "attempt failed: {attempt:?}");
            let peer: SocketAddr = attempt
                .peer_seen_by_server
                .as_ref()
                .unwrap()
                .parse()
                .unwrap();
            (attempt.name.clone().unwrap(), peer.ip())
        })
        .collect()
}

/// Polls `probe` until it holds, for at most ten (scaled) seconds.
pub fn eventually(what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + patience::scaled(Duration::from_secs(10));
    while std::time::Instant::now() < deadline {
        if probe() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("never happened: {what}");
}

/// Writes `service` over `pods` and waits until the outside client gets an
/// answer from its NodePort `node_port` on node-1's IPv4 address, which it
/// returns.
pub fn serve_node_port(
    cluster: &MultiNodeCluster,
    service: &ServiceManifest,
    node_port: u16,
    pods: &[(usize, usize)],
) -> SocketAddr {
    write_service(cluster, service, pods);
    let target = cluster.nodes[0].addr_v4(node_port);
    eventually("NodePort answers", || {
        cluster.outside.tcp(target, 1).unwrap().iter().all(|a| a.ok)
    });
    target
}
