//! kube-proxy's HTTP endpoints, served by the agent inside its node's
//! namespace: `/healthz` and `/livez` on 10256, `/metrics` and
//! `/proxyMode` on 127.0.0.1:10249.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;
use switchyard_tests::{
    Agent, AgentConfig, Cluster, ClusterSpec, ServiceManifest, ServicePort,
    kernel::{self, Feature},
};

fn node(tainted: bool) -> serde_json::Value {
    let mut node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}});
    if tainted {
        node["spec"] =
            json!({"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}]});
    }
    node
}

#[test]
fn health_metrics_and_proxy_mode_answer_as_kube_proxy() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(2)).unwrap();
    write_web(&cluster, &cluster.pods);
    let bad = ServiceManifest::new("bad", NAMESPACE)
        .cluster_ip("10.96.9.1")
        .port(ServicePort::tcp("http", 0, 8080));
    cluster
        .manifests()
        .write("other.yaml", &[node(false), bad.to_value()])
        .unwrap();
    let agent = Agent::start(AgentConfig::for_cluster(&cluster), &cluster.node.netns).unwrap();
    let netns = &cluster.node.netns;

    let (status, body) = get(netns, 10256, "/healthz");
    assert_eq!(status, 200, "{body}");
    let healthz: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        healthz["lastUpdated"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{body}"
    );
    assert_eq!(healthz["nodeEligible"], true);
    assert_eq!(get(netns, 10256, "/livez").0, 200);
    assert_eq!(get(netns, 10249, "/proxyMode"), (200, "ebpf".to_owned()));

    // aya's refused-BTF dump is many lines at warn; the agent says it in
    // one line at info, or not at all where the kernel takes the BTF.
    let log = agent.log();
    assert!(
        !log.contains("couldn't be loaded"),
        "BTF dump in the log:\n{log}"
    );
    assert!(
        log.matches("refused the object's BTF").count() <= 1,
        "{log}"
    );

    let (status, metrics) = get(netns, 10249, "/metrics");
    assert_eq!(status, 200);
    for line in [
        "switchyard_frontends_programmed 2",
        "switchyard_backends_programmed 4",
        "switchyard_input_errors{reason=\"invalid_port\"} 1",
        "kubeproxy_sync_proxy_rules_duration_seconds_count",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
        // Required: the agent would not be serving without it.
        "switchyard_kernel_feature{feature=\"cgroup_sock_addr\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line:?}:\n{metrics}");
    }
    // Each gauge says what the agent's own probe found (5.18 and later
    // have bpf_set_retval, 5.11 memory-cgroup accounting).
    for feature in [
        Feature::BpfSetRetval,
        Feature::MemcgAccounting,
        Feature::NetnsCookie,
    ] {
        let line = format!(
            "switchyard_kernel_feature{{feature=\"{}\"}} {}",
            feature.name(),
            u8::from(kernel::has(feature))
        );
        assert!(metrics.contains(&line), "missing {line:?}:\n{metrics}");
    }
    // tcx or not, the gauge says which path the packet hooks took, and
    // `switchyard services` shows the same probe.
    let tcx = metrics
        .lines()
        .find_map(|l| l.strip_prefix("switchyard_kernel_feature{feature=\"tcx\"} "))
        .unwrap_or_else(|| panic!("no tcx gauge:\n{metrics}"))
        .to_owned();
    let report = agent.services_report().unwrap();
    let features = report["kernel"]["features"].as_array().unwrap();
    let shown = features
        .iter()
        .find(|f| f["feature"] == "tcx")
        .expect("tcx in services");
    let available = if tcx == "1" { "available" } else { "missing" };
    assert_eq!(shown["availability"], available, "{report:#}");
    assert!(
        features
            .iter()
            .any(|f| f["feature"] == "sock_destroy" && f["availability"] == "not_probed"),
        "{report:#}"
    );
    assert!(agent.services_table().unwrap().contains("KERNEL FEATURES"));

    // The autoscaler marks the node for removal: load balancers must stop
    // sending here (healthz fails) but the agent stays alive (livez passes).
    cluster
        .manifests()
        .write("other.yaml", &[node(true), bad.to_value()])
        .unwrap();
    time_until(Duration::from_secs(5), || {
        get(netns, 10256, "/healthz").0 == 503
    });
    assert_eq!(get(netns, 10256, "/livez").0, 200);
    drop(agent);
}

/// An HTTP answer on `port` of the node, or None when nothing answers.
fn try_get(netns: &switchyard_tests::NetNs, port: u16) -> Option<String> {
    use std::io::{Read, Write};
    netns
        .within(move || {
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n")
                .ok()?;
            let mut response = String::new();
            stream.read_to_string(&mut response).ok()?;
            Some(response)
        })
        .ok()
        .flatten()
}

/// A health check node port another process holds (kube-proxy, during a
/// takeover) is tried again at every sync period, also while nothing else
/// changes, and served once it is free.
#[test]
fn a_health_check_port_in_use_is_served_once_it_is_free() {
    use switchyard_tests::{ServiceType, TrafficPolicy};
    const PORT: u16 = 32_102;
    let cluster = Cluster::up(&ClusterSpec::with_pods(2)).unwrap();
    let netns = &cluster.node.netns;
    let held = netns
        .within(|| std::net::TcpListener::bind(("0.0.0.0", PORT)).unwrap())
        .unwrap();
    let local = ServiceManifest::new("local", NAMESPACE)
        .cluster_ip("10.96.9.2")
        .port(ServicePort::tcp("http", 80, 8080).node_port(30_102))
        .type_(ServiceType::LoadBalancer)
        .external_traffic_policy(TrafficPolicy::Local)
        .health_check_node_port(PORT);
    let [v4, _] = cluster.endpoint_slices("local", NAMESPACE, &http_port(), &cluster.pods);
    cluster
        .manifests()
        .write("local.yaml", &[local.to_value(), v4.to_value()])
        .unwrap();
    let config = AgentConfig::for_cluster(&cluster).arg("--sync-period=1s");
    let _agent = Agent::start(config, netns).unwrap();
    time_until(Duration::from_secs(10), || {
        let metrics = get(netns, 10249, "/metrics").1;
        metric(&metrics, "switchyard_health_check_server_failures_total").is_some_and(|n| n >= 1.0)
    });
    drop(held);
    time_until(Duration::from_secs(10), || {
        try_get(netns, PORT).is_some_and(|answer| answer.contains("localEndpoints"))
    });
}
