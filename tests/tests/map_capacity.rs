//! Map capacities by flag, decided before writing: a Service whose entries
//! do not fit is left out whole with one line naming it and a metric, the
//! Services that fit are served, and it comes in once room appears; maps
//! pinned at another size are resized by the next start without a failed
//! connection. Needs root; run with --test-threads=1.

mod support;

use std::time::Duration;

use support::*;
use switchyard_abi::{BACKENDS_MAP, SERVICES_MAP};
use switchyard_tests::{
    Agent, AgentConfig, Cluster, ClusterSpec, Pod, ServiceManifest, ServicePort,
};

const CONVERGE: Duration = Duration::from_secs(10);

/// Service `name` on 10.96.1.`x`:80 over `pods` (IPv4 only).
fn write_service<'a>(
    cluster: &Cluster,
    name: &str,
    x: u8,
    pods: impl IntoIterator<Item = &'a Pod> + Clone,
) {
    let service = ServiceManifest::new(name, NAMESPACE)
        .cluster_ip(format!("10.96.1.{x}"))
        .port(ServicePort::tcp("http", 80, 8080));
    let [v4, _] = cluster.endpoint_slices(name, NAMESPACE, &http_port(), pods);
    cluster
        .manifests()
        .write(
            &format!("{name}.yaml"),
            &[service.to_value(), v4.to_value()],
        )
        .unwrap();
}

fn served(agent: &Agent<'_>, x: u8) -> Option<usize> {
    programmed_backends(agent, &format!("10.96.1.{x}"), 80, "TCP").map(|b| b.len())
}

#[test]
fn a_service_that_does_not_fit_is_left_out_whole_and_named() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(4)).unwrap();
    let pods: Vec<&Pod> = cluster.pods.iter().collect();
    // a (pods 0 and 1) and b (pod 1) take two backends between them; c's
    // pods 2 and 3 would make four, and the backend map holds three.
    write_service(&cluster, "a", 1, pods[..2].iter().copied());
    write_service(&cluster, "b", 2, pods[1..2].iter().copied());
    write_service(&cluster, "c", 3, pods[2..].iter().copied());
    let config = AgentConfig::for_cluster(&cluster)
        .arg("--backend-map-entries=3")
        .arg("--sync-period=1s");
    let agent = Agent::start(config, &cluster.node.netns).unwrap();
    time_until(CONVERGE, || {
        served(&agent, 1) == Some(2) && served(&agent, 2) == Some(1)
    });
    assert_eq!(
        served(&agent, 3),
        None,
        "c does not fit and is not half-written"
    );
    let log = agent.log();
    let line = log
        .lines()
        .find(|line| line.contains("Service default/c"))
        .unwrap_or_else(|| panic!("no line names c:\n{log}"));
    assert!(line.contains("not programmed"), "{line}");
    assert!(
        !log.contains("map operation failed"),
        "nothing was tried: {log}"
    );
    let metrics = get(&cluster.node.netns, 10249, "/metrics").1;
    assert_eq!(
        metric(&metrics, "switchyard_input_errors{reason=\"no_room\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "switchyard_map_capacity{map=\"SY_BACKENDS_V1\"}"),
        Some(3.0)
    );
    // a goes: pod 0's room is c's now (b keeps pod 1).
    cluster.manifests().remove("a.yaml").unwrap();
    time_until(CONVERGE, || {
        served(&agent, 3) == Some(2) && served(&agent, 1).is_none()
    });
}

/// The sizes the pinned map `map` of `agent` has now.
fn pinned_size(agent: &Agent<'_>, map: &str) -> u32 {
    aya::maps::MapInfo::from_pin(agent.config().bpffs.join(map))
        .unwrap_or_else(|error| panic!("{map}: {error}"))
        .max_entries()
}

#[test]
fn growing_the_maps_under_traffic_keeps_every_connection() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(3)).unwrap();
    let pods: Vec<&Pod> = cluster.pods.iter().collect();
    write_web(&cluster, pods.iter().copied());
    let config = AgentConfig::for_cluster(&cluster)
        .arg("--service-map-entries=64")
        .arg("--backend-map-entries=16");
    let mut agent = Agent::start(config, &cluster.node.netns).unwrap();
    assert_eq!(pinned_size(&agent, SERVICES_MAP), 64);
    let hold = cluster
        .client
        .spawn_hold(
            vip4(80),
            Duration::from_secs(4),
            Duration::from_millis(50),
            cluster.scratch.join("hold.json"),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    // The DaemonSet changes its flags and rolls: the new agent finds maps
    // of the old size pinned, with connections going through them.
    let config = agent.config_mut();
    config.set_flag("--service-map-entries", 4096);
    config.set_flag("--backend-map-entries", 1024);
    let steady = std::thread::scope(|scope| {
        let load = scope.spawn(|| cluster.client.burst(vip4(80), 400).unwrap());
        std::thread::sleep(Duration::from_millis(200));
        agent.restart().unwrap();
        load.join().unwrap()
    });
    assert!(steady.ok && steady.failures == 0, "{steady:?}");
    assert_eq!(pinned_size(&agent, SERVICES_MAP), 4096);
    assert_eq!(pinned_size(&agent, BACKENDS_MAP), 1024);
    let log = agent.log();
    assert!(log.contains("pinned map resized"), "{log}");
    let set_aside = agent.config().bpffs.join("resizing");
    assert!(
        !set_aside.exists(),
        "old maps still pinned in {set_aside:?}"
    );
    let metrics = get(&cluster.node.netns, 10249, "/metrics").1;
    assert_eq!(
        metric(
            &metrics,
            &format!("switchyard_map_capacity{{map=\"{SERVICES_MAP}\"}}")
        ),
        Some(4096.0)
    );
    assert_eq!(
        answered(&cluster.client.tcp(vip4(80), 30).unwrap()),
        names(&pods)
    );
    let open_connection = hold.wait().unwrap();
    assert!(
        open_connection.ok,
        "the open connection broke: {open_connection:?}"
    );
    assert_eq!(open_connection.names.len(), 1, "{open_connection:?}");
}
