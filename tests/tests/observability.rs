//! What the agent tells about itself and the datapath: drift (map entries
//! changed behind its back) found by reading the maps back every sync
//! period, counted, said once, and repaired; kube-proxy's metrics as
//! kube-proxy exports them, network programming latency measured from the
//! EndpointSlice controller's trigger time.

mod support;

use std::time::Duration;

use aya::maps::{HashMap, Map, MapData};
use support::*;
use switchyard_abi::{BACKENDS_MAP, Backend};
use switchyard_tests::{Agent, AgentConfig, Cluster, ClusterSpec, FakeApiServer, Pod};

/// Every backend in the pinned map pointed at port 1, where nothing
/// listens: what a stray `bpftool map update` does.
fn break_backends(cluster: &Cluster) -> usize {
    let pin = cluster.node.bpffs.join("switchyard").join(BACKENDS_MAP);
    let map = MapData::from_pin(&pin).unwrap();
    let mut backends: HashMap<MapData, u32, Backend> =
        HashMap::try_from(Map::HashMap(map)).unwrap();
    let entries: Vec<(u32, Backend)> = backends.iter().map(Result::unwrap).collect();
    for (id, mut backend) in entries.iter().copied() {
        backend.port = 1u16.to_be();
        backends.insert(id, backend, 0).unwrap();
    }
    entries.len()
}

#[test]
fn map_entries_changed_behind_the_agents_back_are_found_and_repaired() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(2)).unwrap();
    let pods: Vec<&Pod> = cluster.pods.iter().collect();
    write_web(&cluster, pods.iter().copied());
    let config = AgentConfig::for_cluster(&cluster).arg("--sync-period=1s");
    let agent = Agent::start(config, &cluster.node.netns).unwrap();
    assert_eq!(
        answered(&cluster.client.tcp(vip4(80), 10).unwrap()),
        names(&pods)
    );
    let serving = || [VIP4, VIP6].map(|vip| programmed_backends(&agent, vip, 80, "TCP"));
    let before = serving();

    let broken = break_backends(&cluster);
    assert!(broken >= 4, "two pods over IPv4 and IPv6: {broken}");
    let drifted = format!("switchyard_datapath_drift_entries_total{{map=\"{BACKENDS_MAP}\"}}");
    time_until(Duration::from_secs(10), || {
        let metrics = get(&cluster.node.netns, 10249, "/metrics").1;
        metric(&metrics, &drifted).is_some_and(|n| n >= 4.0) && serving() == before
    });
    assert_eq!(
        answered(&cluster.client.tcp(vip4(80), 10).unwrap()),
        names(&pods),
        "served again"
    );
    // Repaired at once and found clean at the next read-back.
    std::thread::sleep(Duration::from_secs(2));
    let metrics = get(&cluster.node.netns, 10249, "/metrics").1;
    assert_eq!(
        metric(
            &metrics,
            &format!("switchyard_datapath_drift_entries{{map=\"{BACKENDS_MAP}\"}}")
        ),
        Some(0.0),
        "{metrics}"
    );
    let log = agent.log();
    assert_eq!(
        log.matches("changed behind the agent's back").count(),
        1,
        "said once: {log}"
    );
}

/// kube-proxy measures network programming latency from the EndpointSlice
/// controller's `endpoints.kubernetes.io/last-change-trigger-time` to the
/// pass that programmed the slice, by the slice's family; its health
/// endpoints count their answers by code; process metrics are there.
#[test]
fn kube_proxys_metrics_as_kube_proxy_exports_them() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(2)).unwrap();
    let server = FakeApiServer::start_in(&cluster.node.netns).unwrap();
    let kubeconfig = cluster.scratch.join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    // Triggered five seconds ago, as a controller that was slow to write
    // the slice would have it.
    let triggered =
        humantime::format_rfc3339(std::time::SystemTime::now() - Duration::from_secs(5))
            .to_string();
    server.apply(web_service().to_value());
    let config = AgentConfig::for_cluster(&cluster).with_kubeconfig(kubeconfig);
    let agent = Agent::start(config, &cluster.node.netns).unwrap();
    let [v4, v6] = cluster.endpoint_slices("web", NAMESPACE, &http_port(), &cluster.pods);
    for slice in [v4.to_value(), v6.to_value()] {
        let mut slice = slice;
        slice["metadata"]["annotations"] = serde_json::json!({
            "endpoints.kubernetes.io/last-change-trigger-time": triggered,
        });
        server.apply(slice);
    }
    let want = cluster
        .pods
        .iter()
        .map(|p| p.addr_v4(8080).to_string())
        .collect();
    time_until(Duration::from_secs(10), || {
        programmed_backends(&agent, VIP4, 80, "TCP").as_ref() == Some(&want)
            && programmed_backends(&agent, VIP6, 80, "TCP").is_some_and(|b| b.len() == 2)
    });
    assert_eq!(get(&cluster.node.netns, 10256, "/healthz").0, 200);
    assert_eq!(get(&cluster.node.netns, 10256, "/livez").0, 200);

    let scrape = || get(&cluster.node.netns, 10249, "/metrics").1;
    let observed = |metrics: &str, family: &str| {
        metric(
            metrics,
            &format!(
                "kubeproxy_network_programming_duration_seconds_count{{ip_family=\"{family}\"}}"
            ),
        )
    };
    time_until(Duration::from_secs(5), || {
        let metrics = scrape();
        observed(&metrics, "IPv4").is_some() && observed(&metrics, "IPv6").is_some()
    });
    let metrics = scrape();
    for family in ["IPv4", "IPv6"] {
        let count = format!(
            "kubeproxy_network_programming_duration_seconds_count{{ip_family=\"{family}\"}}"
        );
        let sum =
            format!("kubeproxy_network_programming_duration_seconds_sum{{ip_family=\"{family}\"}}");
        assert_eq!(metric(&metrics, &count), Some(1.0), "{metrics}");
        assert!(
            metric(&metrics, &sum).is_some_and(|seconds| (5.0..60.0).contains(&seconds)),
            "{metrics}"
        );
        // Under 5 s: nothing; from 5 s on, the one slice of this family.
        assert!(metrics.contains(&format!(
            "kubeproxy_network_programming_duration_seconds_bucket{{ip_family=\"{family}\",le=\"4\"}} 0"
        )));
    }
    for line in [
        "kubeproxy_proxy_healthz_total{code=\"200\"}",
        "kubeproxy_proxy_livez_total{code=\"200\"}",
        "kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}",
        "kubeproxy_sync_proxy_rules_endpoint_changes_pending 0",
        "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv6\",traffic_policy=\"internal\"} 0",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    drop(agent);
}
