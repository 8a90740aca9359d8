//! kube-proxy's endpoint choice beyond readiness: internalTrafficPolicy
//! Local and topology hints, read from the node's own Node object.

mod support;

use serde_json::json;
use support::*;
use switchyard_tests::{
    AddressType, Agent, AgentConfig, Cluster, ClusterSpec, Endpoint, EndpointSliceManifest, kernel,
};

/// pod-0 and pod-1 run on this node (node-a), pod-2 and pod-3 elsewhere.
fn slice(
    cluster: &Cluster,
    endpoint: impl Fn(usize, Endpoint) -> Endpoint,
) -> EndpointSliceManifest {
    let mut slice =
        EndpointSliceManifest::new("web-v4", NAMESPACE, "web", AddressType::IPv4).port(http_port());
    for (i, pod) in cluster.pods.iter().enumerate() {
        let node = if i < 2 { "node-a" } else { "node-b" };
        slice = slice.endpoint(endpoint(i, Endpoint::ready(pod.ipv4).node(node)));
    }
    slice
}

#[test]
fn internal_traffic_policy_local_uses_only_this_nodes_endpoints() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(4)).unwrap();
    let service = web_service().spec_field("internalTrafficPolicy", json!("Local"));
    let slice = slice(&cluster, |_, endpoint| endpoint);
    cluster
        .manifests()
        .write("web.yaml", &[service.to_value(), slice.to_value()])
        .unwrap();
    let _agent = Agent::start(AgentConfig::for_cluster(&cluster), &cluster.node.netns).unwrap();
    let local = [&cluster.pods[0], &cluster.pods[1]];
    assert_eq!(
        answered(&cluster.client.tcp(vip4(80), 30).unwrap()),
        names(&local)
    );

    // With endpoints elsewhere but none here, kube-proxy drops: the client
    // sees its connection time out (at once: a socket hook cannot lose a
    // SYN; EPERM before 5.18), never a refusal that reads as "no such
    // service".
    let remote_only = EndpointSliceManifest::new("web-v4", NAMESPACE, "web", AddressType::IPv4)
        .port(http_port())
        .endpoint(Endpoint::ready(cluster.pods[2].ipv4).node("node-b"));
    cluster
        .manifests()
        .write("web.yaml", &[service.to_value(), remote_only.to_value()])
        .unwrap();
    let dropped = kernel::socket_drop();
    time_until(std::time::Duration::from_secs(5), || {
        let attempts = cluster.client.tcp(vip4(80), 1).unwrap();
        attempts[0].error.as_deref() == Some(dropped)
    });
    // No endpoints anywhere: refused, as kube-proxy's REJECT.
    let none =
        EndpointSliceManifest::new("web-v4", NAMESPACE, "web", AddressType::IPv4).port(http_port());
    cluster
        .manifests()
        .write("web.yaml", &[service.to_value(), none.to_value()])
        .unwrap();
    time_until(std::time::Duration::from_secs(5), || {
        let attempts = cluster.client.tcp(vip4(80), 1).unwrap();
        attempts[0].error.as_deref() == Some("refused")
    });
}

#[test]
fn zone_hints_keep_traffic_in_the_nodes_zone() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(4)).unwrap();
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "zone-1"}},
    });
    let hinted = slice(&cluster, |i, endpoint| {
        endpoint.zone_hint(if i % 2 == 0 { "zone-1" } else { "zone-2" })
    });
    cluster
        .manifests()
        .write(
            "web.yaml",
            &[node, web_service().to_value(), hinted.to_value()],
        )
        .unwrap();
    let _agent = Agent::start(AgentConfig::for_cluster(&cluster), &cluster.node.netns).unwrap();
    let same_zone = [&cluster.pods[0], &cluster.pods[2]];
    assert_eq!(
        answered(&cluster.client.tcp(vip4(80), 30).unwrap()),
        names(&same_zone)
    );
}
