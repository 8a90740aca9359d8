//! kube-proxy's packet-flow tables (`runPacketFlowTests` in
//! `pkg/proxy/nftables/proxier_test.go`) run against the real datapath on
//! the two-node lab (see `support::flow_table`): each row names a client, a
//! destination and a protocol, and expects the set of endpoints that answer
//! together with whether each saw the client's own address or a node's
//! (kube-proxy's "masq"), or a refusal (REJECT) or a timeout (DROP). kube-proxy
//! hands `runPacketFlowTests` packets; here every row is a real connection.
//!
//! Where Switchyard deliberately differs from kube-proxy the row encodes
//! Switchyard's behaviour with a `divergence:` comment; `docs/design.md`
//! argues each. Needs root; run with --test-threads=1.

mod support;

use serde_json::json;
use support::flow_table::{
    A1, A2, A3, A4, B1, B2, B3, BLOCKED, Cond, Endpoints, Ep, HOST, HOST2, Lab, NODE1, NODE2,
    NOT_SERVING, OUT, OWN, POD, POD2, READY, Row, TERMINATING, dropped, ip, np, np6, pod, rejected,
    served, tcp, udp,
};
use switchyard_tests::{ServiceManifest, ServicePort, ServiceType, TrafficPolicy, kernel::Feature};

/// Service `name` with ClusterIPs 10.96.0.`x` and fd00:96::`x` and one port,
/// TCP 80 -> 8080 (`http`), with NodePort 300`x` unless a ClusterIP Service.
fn service(name: &str, x: u8, ty: ServiceType) -> ServiceManifest {
    let port = ServicePort::tcp("http", 80, 8080);
    let port = match ty {
        ServiceType::ClusterIP => port,
        _ => port.node_port(30_000 + u16::from(x)),
    };
    ServiceManifest::new(name, support::two_nodes::NS)
        .cluster_ip(format!("10.96.0.{x}"))
        .cluster_ip(format!("fd00:96::{x}"))
        .type_(ty)
        .port(port)
}

/// [`service`] as a LoadBalancer with ingress 203.0.113.`x` and externalIP
/// 198.51.100.`x`.
fn load_balancer(name: &str, x: u8) -> ServiceManifest {
    service(name, x, ServiceType::LoadBalancer)
        .load_balancer_ingress(format!("203.0.113.{x}"))
        .external_ip(format!("198.51.100.{x}"))
}

/// [`load_balancer`] with a second port, UDP 53 (`dns`), NodePort 301`x`.
fn with_udp(name: &str, x: u8) -> ServiceManifest {
    load_balancer(name, x).port(ServicePort::udp("dns", 53, 53).node_port(30_100 + u16::from(x)))
}

fn ready(endpoints: &[Ep]) -> Endpoints {
    endpoints.iter().map(|&ep| (ep, READY)).collect()
}

/// kube-proxy's `svc1` and `svc2` of TestClusterIPGeneral: one endpoint on
/// node-1 behind 10.96.0.41; two (one per node) behind 10.96.0.42 on TCP 80,
/// TCP 443 -> 8443, UDP 53 and TCP 53 -> 5353 (SCTP is not served).
fn cluster_ip_general() -> [(ServiceManifest, Endpoints); 2] {
    let svc2 = service("svc2", 42, ServiceType::ClusterIP)
        .port(ServicePort::tcp("https", 443, 8443))
        .port(ServicePort::udp("dns-udp", 53, 53))
        .port(ServicePort::tcp("dns-tcp", 53, 5353));
    [
        (service("svc1", 41, ServiceType::ClusterIP), ready(&[A1])),
        (svc2, ready(&[A1, B1])),
    ]
}

#[test]
fn cluster_ips_node_ports_and_services_without_endpoints() {
    let lab = Lab::up(&[2, 2]);
    let [svc1, svc2] = cluster_ip_general();
    lab.write(&[
        // TestNoEndpointsReject: a LoadBalancer with no endpoint at all.
        (with_udp("empty", 40), Vec::new()),
        svc1,
        svc2,
        // TestNodePorts: one endpoint per node.
        (service("np", 43, ServiceType::NodePort), ready(&[A1, B1])),
    ]);
    // TestNodePorts' nodePortAddresses: each node gets a secondary address;
    // node-1 serves NodePorts on every address in the LAN's CIDRs, node-2
    // on its own primary addresses only (kube-proxy's fake proxier's /32).
    let secondaries = ["192.168.77.111/24", "192.168.77.112/24"];
    for (node, address) in lab.cluster.nodes.iter().zip(secondaries) {
        node.netns
            .ip(&["addr", "add", address, "dev", "eth0"])
            .unwrap();
    }
    let _agents = lab.agents_per_node(&[
        &["--nodeport-addresses=192.168.77.0/24,fd00:77::/64"],
        &["--nodeport-addresses=192.168.77.12/32,fd00:77::12/128"],
    ]);
    lab.run(&general_rows());
}

#[rustfmt::skip]
fn general_rows() -> Vec<Row> {
    vec![
        // TestNoEndpointsReject
        tcp("pod to cluster IP with no endpoints", POD, ip("10.96.0.40:80"), rejected()),
        tcp("pod to IPv6 cluster IP with no endpoints", POD, ip("[fd00:96::40]:80"), rejected()),
        tcp("external to external IP with no endpoints", OUT, ip("198.51.100.40:80"), rejected()),
        tcp("pod to NodePort with no endpoints", POD, np(0, 30040), rejected()),
        tcp("external to NodePort with no endpoints", OUT, np(0, 30040), rejected()),
        tcp("external to IPv6 NodePort with no endpoints", OUT, np6(0, 30040), rejected()),
        udp("external to UDP NodePort with no endpoints", OUT, np(0, 30140), rejected()),
        tcp("pod to LoadBalancer IP with no endpoints", POD, ip("203.0.113.40:80"), rejected()),
        tcp("external to LoadBalancer IP with no endpoints", OUT, ip("203.0.113.40:80"), rejected()),
        // TestClusterIPGeneral
        tcp("simple clusterIP", POD, ip("10.96.0.41:80"), served(&[(A1, OWN)])),
        tcp("simple IPv6 clusterIP", POD, ip("[fd00:96::41]:80"), served(&[(A1, OWN)])),
        // divergence: kube-proxy masquerades hairpin so the reply comes back
        // through its NAT; the socket hook connects the pod straight to its
        // own address, which needs no NAT, so the pod sees itself.
        tcp("hairpin to cluster IP", pod(A1), ip("10.96.0.41:80"), served(&[(A1, OWN)])),
        tcp("clusterIP with multiple endpoints", POD, ip("10.96.0.42:80"), served(&[(A1, OWN), (B1, OWN)])),
        tcp("clusterIP with TargetPort", POD, ip("10.96.0.42:443"), served(&[(A1, OWN), (B1, OWN)])),
        tcp("clusterIP with TCP and UDP on same port (TCP)", POD, ip("10.96.0.42:53"), served(&[(A1, OWN), (B1, OWN)])),
        udp("clusterIP with TCP and UDP on same port (UDP)", POD, ip("10.96.0.42:53"), served(&[(A1, OWN), (B1, OWN)])),
        udp("IPv6 clusterIP over UDP", POD, ip("[fd00:96::42]:53"), served(&[(A1, OWN), (B1, OWN)])),
        tcp("pod on another node to clusterIP", POD2, ip("10.96.0.42:80"), served(&[(A1, OWN), (B1, OWN)])),
        tcp("node to clusterIP", HOST, ip("10.96.0.42:80"), served(&[(A1, NODE1), (B1, NODE1)])),
        // divergence: a ClusterIP reached from outside keeps the client's
        // address towards an endpoint on the node it arrived at (its answer
        // passes that node anyway); kube-proxy masquerades both.
        tcp("external to clusterIP", OUT, ip("10.96.0.42:80"), served(&[(A1, OWN), (B1, NODE1)])),
        // TestNodePorts
        tcp("pod to cluster IP", POD, ip("10.96.0.43:80"), served(&[(A1, OWN), (B1, OWN)])),
        // divergence: eTP Cluster NATs the source only towards an endpoint
        // on another node (whose answer must come back through this one);
        // a local endpoint keeps the client's address. kube-proxy
        // masquerades every external connection under eTP Cluster.
        tcp("external to nodePort", OUT, np(0, 30043), served(&[(A1, OWN), (B1, NODE1)])),
        tcp("external to IPv6 nodePort", OUT, np6(0, 30043), served(&[(A1, OWN), (B1, NODE1)])),
        tcp("external to nodePort on the other node", OUT, np(1, 30043), served(&[(A1, NODE2), (B1, OWN)])),
        tcp("external to nodePort on secondary IP", OUT, ip("192.168.77.111:30043"), served(&[(A1, OWN), (B1, NODE1)])),
        // No NodePort on that address: nothing listens, the node refuses.
        tcp("secondary nodeIP ignores NodePorts", OUT, ip("192.168.77.112:30043"), rejected()),
        tcp("node to nodePort", HOST, np(0, 30043), served(&[(A1, NODE1), (B1, NODE1)])),
        tcp("node to IPv6 nodePort", HOST, np6(0, 30043), served(&[(A1, NODE1), (B1, NODE1)])),
        // divergence: the same split as "external to nodePort": node-2's
        // hooks leave node-1's address alone, so node-1's tc path serves it.
        tcp("pod on another node to nodePort", POD2, np(0, 30043), served(&[(A1, OWN), (B1, NODE1)])),
    ]
}

#[test]
fn load_balancers_and_external_traffic_policies() {
    let lab = Lab::up(&[2, 2]);
    // TestLoadBalancer: two LoadBalancer IPs (and one IPv6) restricted to
    // the LAN's first half, which holds the nodes and the outside client
    // but not the blocked one; the endpoint runs on node-2.
    let lb = service("lb", 50, ServiceType::LoadBalancer)
        .load_balancer_ingress("203.0.113.50")
        .load_balancer_ingress("203.0.113.150")
        .load_balancer_ingress("fd00:113::50")
        .load_balancer_source_range("192.168.77.0/25")
        .load_balancer_source_range("fd00:77::/121");
    let local = with_udp("local", 51).external_traffic_policy(TrafficPolicy::Local);
    let elsewhere =
        load_balancer("local-elsewhere", 52).external_traffic_policy(TrafficPolicy::Local);
    let itp = |name, x| load_balancer(name, x).spec_field("internalTrafficPolicy", json!("Local"));
    lab.write(&[
        (lb, ready(&[B1])),
        (local, ready(&[A1, B1])),
        (elsewhere, ready(&[B1])),
        (with_udp("cluster", 53), ready(&[A1, B1])),
        (itp("itp", 54), ready(&[A1, B1])),
        (itp("itp-elsewhere", 55), ready(&[B1])),
    ]);
    let _agents = lab.agents(&[]);
    lab.run(&load_balancer_rows());
}

#[rustfmt::skip]
fn load_balancer_rows() -> Vec<Row> {
    vec![
        // TestLoadBalancer
        tcp("pod to cluster IP", POD, ip("10.96.0.50:80"), served(&[(B1, OWN)])),
        tcp("external to nodePort", OUT, np(0, 30050), served(&[(B1, NODE1)])),
        tcp("nodePort bypasses LoadBalancerSourceRanges", BLOCKED, np(0, 30050), served(&[(B1, NODE1)])),
        tcp("accepted external to LB1", OUT, ip("203.0.113.50:80"), served(&[(B1, NODE1)])),
        tcp("accepted external to LB2", OUT, ip("203.0.113.150:80"), served(&[(B1, NODE1)])),
        tcp("accepted external to IPv6 LB", OUT, ip("[fd00:113::50]:80"), served(&[(B1, NODE1)])),
        tcp("blocked external to LB1", BLOCKED, ip("203.0.113.50:80"), dropped()),
        tcp("blocked external to LB2", BLOCKED, ip("203.0.113.150:80"), dropped()),
        tcp("blocked external to IPv6 LB", BLOCKED, ip("[fd00:113::50]:80"), dropped()),
        // TestExternalTrafficPolicyLocal
        tcp("pod to cluster IP hits both endpoints, unmasqueraded", POD, ip("10.96.0.51:80"), served(&[(A1, OWN), (B1, OWN)])),
        tcp("pod to external IP hits both endpoints, unmasqueraded", POD, ip("198.51.100.51:80"), served(&[(A1, OWN), (B1, OWN)])),
        tcp("external to external IP hits only local endpoint, unmasqueraded", OUT, ip("198.51.100.51:80"), served(&[(A1, OWN)])),
        tcp("pod to LB IP hits both endpoints, unmasqueraded", POD, ip("203.0.113.51:80"), served(&[(A1, OWN), (B1, OWN)])),
        tcp("external to LB IP hits only local endpoint, unmasqueraded", OUT, ip("203.0.113.51:80"), served(&[(A1, OWN)])),
        tcp("pod to NodePort hits both endpoints, unmasqueraded", POD, np(0, 30051), served(&[(A1, OWN), (B1, OWN)])),
        tcp("external to NodePort hits only local endpoint, unmasqueraded", OUT, np(0, 30051), served(&[(A1, OWN)])),
        udp("external to UDP NodePort hits only local endpoint", OUT, np6(1, 30151), served(&[(B1, OWN)])),
        tcp("external to NodePort, no local endpoints", OUT, np(0, 30052), dropped()),
        tcp("external to LB IP, no local endpoints", OUT, ip("203.0.113.52:80"), dropped()),
        tcp("external to the other node's NodePort, its local endpoint", OUT, np(1, 30052), served(&[(B1, OWN)])),
        tcp("pod to NodePort, no local endpoints", POD, np(0, 30052), served(&[(B1, OWN)])),
        // TestExternalTrafficPolicyCluster
        tcp("pod to cluster IP hits both endpoints, unmasqueraded", POD, ip("10.96.0.53:80"), served(&[(A1, OWN), (B1, OWN)])),
        // divergence: a pod's connection to an external address is balanced
        // by its node's socket hook at connect(), so it reaches the
        // endpoint directly with its own address; kube-proxy masquerades
        // it (as if it had gone out to the load balancer and back).
        tcp("pod to external IP hits both endpoints", POD, ip("198.51.100.53:80"), served(&[(A1, OWN), (B1, OWN)])),
        tcp("pod to LB IP hits both endpoints", POD, ip("203.0.113.53:80"), served(&[(A1, OWN), (B1, OWN)])),
        tcp("pod to NodePort hits both endpoints", POD, np(0, 30053), served(&[(A1, OWN), (B1, OWN)])),
        // divergence: eTP Cluster masquerades towards the remote endpoint
        // only (see TestNodePorts' "external to nodePort").
        tcp("external to external IP hits both endpoints", OUT, ip("198.51.100.53:80"), served(&[(A1, OWN), (B1, NODE1)])),
        tcp("external to LB IP hits both endpoints", OUT, ip("203.0.113.53:80"), served(&[(A1, OWN), (B1, NODE1)])),
        tcp("external to NodePort hits both endpoints", OUT, np(0, 30053), served(&[(A1, OWN), (B1, NODE1)])),
        udp("external to UDP NodePort hits both endpoints", OUT, np(0, 30153), served(&[(A1, OWN), (B1, NODE1)])),
        // TestInternalExternalMasquerade (the "base" case): kube-proxy
        // masquerades node traffic, and a host process speaks from a node
        // address of its own.
        tcp("node to ClusterIP", HOST, ip("10.96.0.53:80"), served(&[(A1, NODE1), (B1, NODE1)])),
        tcp("node to NodePort", HOST, np(0, 30053), served(&[(A1, NODE1), (B1, NODE1)])),
        tcp("node to LB", HOST, ip("203.0.113.53:80"), served(&[(A1, NODE1), (B1, NODE1)])),
        tcp("node to NodePort with eTP:Local", HOST, np(0, 30051), served(&[(A1, NODE1), (B1, NODE1)])),
        tcp("node to LB with eTP:Local", HOST, ip("203.0.113.51:80"), served(&[(A1, NODE1), (B1, NODE1)])),
        tcp("other node to LB with eTP:Local", HOST2, ip("203.0.113.51:80"), served(&[(A1, NODE2), (B1, NODE2)])),
        // divergence: a ClusterIP from outside keeps the client towards a
        // local endpoint (see TestClusterIPGeneral's "external to clusterIP").
        tcp("external to ClusterIP", OUT, ip("10.96.0.53:80"), served(&[(A1, OWN), (B1, NODE1)])),
        tcp("external to ClusterIP with eTP:Local", OUT, ip("10.96.0.51:80"), served(&[(A1, OWN), (B1, NODE1)])),
        tcp("pod to ClusterIP with iTP:Local", POD, ip("10.96.0.54:80"), served(&[(A1, OWN)])),
        tcp("node to ClusterIP with iTP:Local", HOST, ip("10.96.0.54:80"), served(&[(A1, NODE1)])),
        // divergence: kube-proxy masquerades pod traffic to NodePorts and LB
        // IPs; the socket hook keeps the pod's address (see above).
        tcp("pod to NodePort with iTP:Local", POD, np(0, 30054), served(&[(A1, OWN), (B1, OWN)])),
        tcp("pod to LB with iTP:Local", POD, ip("203.0.113.54:80"), served(&[(A1, OWN), (B1, OWN)])),
        tcp("node to NodePort with iTP:Local", HOST, np(0, 30054), served(&[(A1, NODE1), (B1, NODE1)])),
        tcp("node to LB with iTP:Local", HOST, ip("203.0.113.54:80"), served(&[(A1, NODE1), (B1, NODE1)])),
        // divergence: a local endpoint keeps an outside client's address.
        tcp("external to ClusterIP with iTP:Local", OUT, ip("10.96.0.54:80"), served(&[(A1, OWN)])),
        tcp("external to NodePort with iTP:Local", OUT, np(0, 30054), served(&[(A1, OWN), (B1, NODE1)])),
        tcp("external to LB with iTP:Local", OUT, ip("203.0.113.54:80"), served(&[(A1, OWN), (B1, NODE1)])),
        // TestInternalTrafficPolicy: endpoints elsewhere but none here.
        tcp("pod to ClusterIP with iTP:Local, no local endpoints", POD, ip("10.96.0.55:80"), dropped()),
    ]
}

/// One phase of the terminating-endpoints tables: the endpoints of the
/// eTP Cluster Service (`term-cluster`, 10.96.0.60) and of the eTP Local one
/// (`term-local`, 10.96.0.61), and the rows that must then hold.
struct Phase {
    name: &'static str,
    cluster: &'static [(Ep, Cond)],
    local: &'static [(Ep, Cond)],
    rows: Vec<Row>,
}

#[test]
fn terminating_endpoints_serve_only_when_no_ready_one_is_left() {
    // Four endpoint pods on node-1, three on node-2.
    let lab = Lab::up(&[5, 4]);
    let cluster = load_balancer("term-cluster", 60);
    let local = load_balancer("term-local", 61).external_traffic_policy(TrafficPolicy::Local);
    let phases = terminating_phases();
    let write = |phase: &Phase| {
        lab.write(&[
            (cluster.clone(), phase.cluster.to_vec()),
            (local.clone(), phase.local.to_vec()),
        ]);
    };
    write(&phases[0]);
    let _agents = lab.agents(&[]);
    for phase in &phases {
        write(phase);
        println!("phase: {}", phase.name);
        lab.run(&phase.rows);
    }
}

/// TestTerminatingEndpointsTrafficPolicyCluster and ...Local, phase by
/// phase, kube-proxy's endpoint .1 to .5 mapped onto the lab's pods.
#[rustfmt::skip]
fn terminating_phases() -> Vec<Phase> {
    const T: Cond = TERMINATING;
    const N: Cond = NOT_SERVING;
    const R: Cond = READY;
    vec![
        Phase {
            name: "ready endpoints exist",
            cluster: &[(A1, R), (A2, R), (B1, T), (B2, N), (B3, R)],
            local: &[(A1, R), (A2, R), (A3, T), (A4, N), (B1, R)],
            rows: vec![
                tcp("pod to eTP:Cluster clusterIP", POD, ip("10.96.0.60:80"), served(&[(A1, OWN), (A2, OWN), (B3, OWN)])),
                // divergence: local endpoints keep the client under eTP Cluster.
                tcp("external to eTP:Cluster LB", OUT, ip("203.0.113.60:80"), served(&[(A1, OWN), (A2, OWN), (B3, NODE1)])),
                tcp("pod to eTP:Local clusterIP", POD, ip("10.96.0.61:80"), served(&[(A1, OWN), (A2, OWN), (B1, OWN)])),
                tcp("external to eTP:Local LB", OUT, ip("203.0.113.61:80"), served(&[(A1, OWN), (A2, OWN)])),
            ],
        },
        // Each phase's first row tells it from the one before, so it holds
        // only once node-1's agent has applied the phase.
        Phase { name: "endpoints deleted", cluster: &[], local: &[], rows: no_usable_endpoints() },
        Phase {
            name: "only terminating endpoints exist",
            cluster: &[(A2, T), (A3, T), (B2, N), (B3, T)],
            local: &[(A2, T), (A3, T), (A4, N), (B1, R)],
            rows: vec![
                tcp("pod to eTP:Cluster clusterIP", POD, ip("10.96.0.60:80"), served(&[(A2, OWN), (A3, OWN), (B3, OWN)])),
                tcp("external to eTP:Cluster LB", OUT, ip("203.0.113.60:80"), served(&[(A2, OWN), (A3, OWN), (B3, NODE1)])),
                tcp("pod to eTP:Local clusterIP", POD, ip("10.96.0.61:80"), served(&[(B1, OWN)])),
                tcp("external to eTP:Local LB", OUT, ip("203.0.113.61:80"), served(&[(A2, OWN), (A3, OWN)])),
            ],
        },
        Phase {
            name: "terminating endpoints on remote node",
            cluster: &[(B3, T)],
            local: &[(B1, T)],
            rows: vec![
                tcp("pod to eTP:Cluster clusterIP", POD, ip("10.96.0.60:80"), served(&[(B3, OWN)])),
                tcp("external to eTP:Cluster LB", OUT, ip("203.0.113.60:80"), served(&[(B3, NODE1)])),
                tcp("pod to eTP:Local clusterIP", POD, ip("10.96.0.61:80"), served(&[(B1, OWN)])),
                tcp("external to eTP:Local LB, no locally-usable endpoints", OUT, ip("203.0.113.61:80"), dropped()),
            ],
        },
        Phase {
            name: "no usable endpoints on any node",
            cluster: &[(A1, N), (B3, N)],
            local: &[(A1, N), (B1, N)],
            rows: no_usable_endpoints(),
        },
    ]
}

#[rustfmt::skip]
fn no_usable_endpoints() -> Vec<Row> {
    vec![
        tcp("pod to eTP:Cluster clusterIP", POD, ip("10.96.0.60:80"), rejected()),
        tcp("external to eTP:Cluster LB", OUT, ip("203.0.113.60:80"), rejected()),
        tcp("pod to eTP:Local clusterIP", POD, ip("10.96.0.61:80"), rejected()),
        tcp("external to eTP:Local LB", OUT, ip("203.0.113.61:80"), rejected()),
    ]
}

/// kube-proxy's `cluster-ips-check` rows of TestClusterIPGeneral, from pods,
/// host processes and outside.
#[test]
fn cluster_ips_check_refuses_unserved_ports_and_drops_unallocated_addresses() {
    let lab = Lab::up(&[2, 2]);
    lab.write(&cluster_ip_general());
    let _agents = lab.agents(&["--service-cluster-ip-range=10.96.0.0/16,fd00:96::/112"]);
    lab.run(&cluster_ips_check_rows());
}

#[rustfmt::skip]
fn cluster_ips_check_rows() -> Vec<Row> {
    vec![
        tcp("simple clusterIP", POD, ip("10.96.0.41:80"), served(&[(A1, OWN)])),
        udp("TCP-only port does not match UDP traffic", POD, ip("10.96.0.42:80"), rejected()),
        udp("TCP-only port does not match UDP traffic (IPv6)", POD, ip("[fd00:96::42]:80"), rejected()),
        tcp("svc1 does not accept svc2's ports", POD, ip("10.96.0.41:443"), rejected()),
        tcp("packet to unallocated cluster ip", POD, ip("10.96.0.50:80"), dropped()),
        tcp("packet to unallocated IPv6 cluster ip", POD, ip("[fd00:96::50]:80"), dropped()),
        tcp("node to svc1 on svc2's port", HOST, ip("10.96.0.41:443"), rejected()),
        tcp("node to unallocated cluster ip", HOST, ip("10.96.0.50:80"), dropped()),
        tcp("external to svc1 on svc2's port", OUT, ip("10.96.0.41:443"), rejected()),
        udp("external UDP to a TCP-only port", OUT, ip("10.96.0.42:80"), rejected()),
        tcp("external to unallocated cluster ip", OUT, ip("10.96.0.50:80"), dropped()),
        tcp("external to unallocated IPv6 cluster ip", OUT, ip("[fd00:96::50]:80"), dropped()),
    ]
}

/// TestLoadBalancer's rows for clients on the nodes: a pod is outside the
/// source ranges, a node inside them.
#[test]
fn load_balancer_source_ranges_apply_to_pods_and_nodes() {
    let lab = Lab::up(&[2, 2]);
    let lb = service("lb", 50, ServiceType::LoadBalancer)
        .load_balancer_ingress("203.0.113.50")
        .load_balancer_ingress("203.0.113.150")
        .load_balancer_source_range("192.168.77.0/25");
    lab.write(&[(lb, ready(&[B1]))]);
    let _agents = lab.agents(&[]);
    lab.run(&source_range_rows());
}

#[rustfmt::skip]
fn source_range_rows() -> Vec<Row> {
    vec![
        tcp("pod to cluster IP", POD, ip("10.96.0.50:80"), served(&[(B1, OWN)])),
        tcp("pod to nodePort", POD, np(0, 30050), served(&[(B1, OWN)])),
        tcp("pod to LB1 (blocked by LoadBalancerSourceRanges)", POD, ip("203.0.113.50:80"), dropped()),
        tcp("pod to LB2 (blocked by LoadBalancerSourceRanges)", POD, ip("203.0.113.150:80"), dropped()),
        tcp("pod on another node to LB1 (blocked)", POD2, ip("203.0.113.50:80"), dropped()),
        tcp("node to LB1 (allowed by LoadBalancerSourceRanges)", HOST, ip("203.0.113.50:80"), served(&[(B1, NODE1)]))
            // Before 5.14 the node's own sockets go untranslated, by routing.
            .without(Feature::NetnsCookie, dropped()),
        tcp("node to LB2 (allowed by LoadBalancerSourceRanges)", HOST, ip("203.0.113.150:80"), served(&[(B1, NODE1)]))
            // Before 5.14 the node's own sockets go untranslated, by routing.
            .without(Feature::NetnsCookie, dropped()),
        tcp("other node to LB1 (allowed)", HOST2, ip("203.0.113.50:80"), served(&[(B1, NODE2)]))
            // Before 5.14 the node's own sockets go untranslated, by routing.
            .without(Feature::NetnsCookie, dropped()),
    ]
}
