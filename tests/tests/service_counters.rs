//! Per-Service and per-backend counters as an operator reads them on
//! `/metrics`: connections through the socket hooks and the per-packet
//! path, each backend's share, packets, bytes and live flows from outside,
//! refusals by reason, and the overflow series that bounds them.

mod support;

use std::time::Duration;

use support::{two_nodes, *};
use switchyard_tests::{Agent, AgentConfig, Cluster, ClusterSpec, Pod, ServiceType};

const CONNECTIONS: &str = "switchyard_service_connections_total";
const BACKEND_CONNECTIONS: &str = "switchyard_backend_connections_total";

fn web(path: &'static str) -> [(&'static str, &'static str); 4] {
    [
        ("namespace", NAMESPACE),
        ("service", "web"),
        ("port", "http"),
        ("path", path),
    ]
}

fn scrape(netns: &switchyard_tests::NetNs) -> String {
    get(netns, 10249, "/metrics").1
}

#[test]
fn a_service_counts_its_connections_and_each_backend_its_share() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(2)).unwrap();
    let pods: Vec<&Pod> = cluster.pods.iter().collect();
    write_web(&cluster, pods.iter().copied());
    write_empty(&cluster, "10.96.0.20");
    let agent = Agent::start(AgentConfig::for_cluster(&cluster), &cluster.node.netns).unwrap();
    let before = scrape(&cluster.node.netns);
    assert_eq!(
        series(&before, CONNECTIONS, &web("socket")),
        Some(0.0),
        "every counted Service port has its series from the start: {before}"
    );

    assert_eq!(
        answered(&cluster.client.tcp(vip4(80), 10).unwrap()),
        names(&pods)
    );
    let refused = cluster
        .client
        .tcp("10.96.0.20:80".parse().unwrap(), 3)
        .unwrap();
    assert!(refused.iter().all(|attempt| !attempt.ok));

    let metrics = scrape(&cluster.node.netns);
    assert_eq!(
        series(&metrics, CONNECTIONS, &web("socket")),
        Some(10.0),
        "{metrics}"
    );
    assert_eq!(series(&metrics, CONNECTIONS, &web("packet")), Some(0.0));
    let mut shares = 0;
    for pod in &pods {
        let backend = pod.addr_v4(8080).to_string();
        let mut labels = web("socket").to_vec();
        labels.push(("backend", &backend));
        let share = series(&metrics, BACKEND_CONNECTIONS, &labels).unwrap();
        assert!(share >= 1.0, "{backend} got none of ten: {metrics}");
        // Counts: whole numbers, exact in an f64.
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a count"
        )]
        let share = share as u64;
        shares += share;
    }
    assert_eq!(shares, 10, "the backends' shares add up to the Service's");
    let drops = series(
        &metrics,
        "switchyard_service_drops_total",
        &[
            ("service", "empty"),
            ("verdict", "rejected"),
            ("reason", "no_endpoints"),
        ],
    );
    assert_eq!(drops, Some(3.0), "{metrics}");
    // Names, not only addresses: `switchyard services` shows the same.
    let services = agent.services().unwrap();
    let web_frontend = services
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["ip"] == VIP4 && f["port"] == 80)
        .unwrap();
    assert_eq!(web_frontend["service"], "default/web:http");
    assert_eq!(web_frontend["counters"]["socket_connections"], 10);
    // What an operator reads (the README's example comes from here).
    for line in metrics
        .lines()
        .filter(|line| line.contains("service=\"web\""))
    {
        println!("{line}");
    }
}

#[test]
fn unselected_and_capped_services_sum_in_the_overflow_series() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(2)).unwrap();
    let pods: Vec<&Pod> = cluster.pods.iter().collect();
    write_web(&cluster, pods.iter().copied());
    let config = AgentConfig::for_cluster(&cluster).arg("--service-counters-for=kube-system");
    let _agent = Agent::start(config, &cluster.node.netns).unwrap();
    answered(&cluster.client.tcp(vip4(80), 4).unwrap());
    let metrics = scrape(&cluster.node.netns);
    assert_eq!(series(&metrics, CONNECTIONS, &[("service", "web")]), None);
    assert_eq!(
        series(
            &metrics,
            CONNECTIONS,
            &[("service", "_other"), ("path", "socket")]
        ),
        Some(4.0),
        "{metrics}"
    );
}

#[test]
fn connections_from_outside_count_packets_bytes_and_flows() {
    let c = two_nodes::cluster();
    let agents = two_nodes::agents(&c, &["--conntrack-gc-interval=1s"]);
    let target = two_nodes::serve_node_port(
        &c,
        &two_nodes::service("web", ServiceType::NodePort, 30080, 10),
        30080,
        &[(0, 0), (1, 0)],
    );
    let attempts = c.outside.tcp(target, 8).unwrap();
    assert!(attempts.iter().all(|attempt| attempt.ok));
    let node = &c.nodes[0].netns;
    let labels = [("service", "web"), ("port", "tcp")];
    let mut metrics = String::new();
    time_until(Duration::from_secs(10), || {
        metrics = scrape(node);
        series(&metrics, "switchyard_service_flows", &labels).is_some_and(|flows| flows >= 1.0)
    });
    // The one probe of `serve_node_port`, then eight.
    let connections = series(
        &metrics,
        CONNECTIONS,
        &[labels[0], labels[1], ("path", "packet")],
    );
    assert_eq!(connections, Some(9.0), "{metrics}");
    let backends = series(
        &metrics,
        BACKEND_CONNECTIONS,
        &[labels[0], ("path", "packet")],
    );
    assert_eq!(backends, Some(9.0), "{metrics}");
    let packets = series(&metrics, "switchyard_service_packets_total", &labels).unwrap();
    let bytes = series(&metrics, "switchyard_service_bytes_total", &labels).unwrap();
    // A handshake, a request, an answer and a close each way at least.
    assert!(packets >= 9.0 * 6.0, "{packets} packets: {metrics}");
    assert!(
        bytes >= packets * 40.0,
        "{bytes} bytes for {packets} packets"
    );

    // `explain` replays the per-packet path: one local and one remote
    // backend, the remote one's connections NATed to the node.
    let outside = c.outside.ipv4.to_string();
    let explained = agents[0]
        .explain(&["tcp", &outside, &target.to_string()])
        .unwrap();
    assert_eq!(explained["path"], "packet", "{explained:#}");
    let candidates = explained["verdict"]["candidates"].as_array().unwrap();
    let natted: Vec<bool> = candidates
        .iter()
        .map(|c| c["snat"].as_bool().unwrap_or(false))
        .collect();
    assert_eq!(natted.len(), 2);
    assert_eq!(natted.iter().filter(|n| **n).count(), 1, "{explained:#}");
    let words = agents[0]
        .explain_text(&["tcp", &outside, &target.to_string()])
        .unwrap();
    println!("{words}");
}

/// kube-proxy's `no_local_endpoints` gauge by the policy that has none: an
/// `externalTrafficPolicy: Local` Service whose only endpoint is on the
/// other node counts under "external" on this one, not under "internal".
#[test]
fn a_local_policy_without_local_endpoints_is_counted_under_its_own_policy() {
    let c = two_nodes::cluster();
    let _agents = two_nodes::agents(&c, &[]);
    let service = two_nodes::service("web", ServiceType::NodePort, 30081, 11)
        .external_traffic_policy(switchyard_tests::TrafficPolicy::Local);
    two_nodes::write_service(&c, &service, &[(1, 0)]);
    let gauge = |policy: &str| {
        format!(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{{ip_family=\"IPv4\",traffic_policy=\"{policy}\"}}"
        )
    };
    let node = &c.nodes[0].netns;
    let mut metrics = String::new();
    time_until(Duration::from_secs(10), || {
        metrics = scrape(node);
        metric(&metrics, &gauge("external")).is_some_and(|n| n >= 1.0)
    });
    // Two ports (TCP and UDP), each a Service port of its own.
    assert_eq!(metric(&metrics, &gauge("external")), Some(2.0), "{metrics}");
    assert_eq!(metric(&metrics, &gauge("internal")), Some(0.0), "{metrics}");
}
