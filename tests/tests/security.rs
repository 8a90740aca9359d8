//! Bad input and hostile neighbours: no Service takes another's address,
//! one agent writes a node's pins, pins of another layout are refused,
//! bad flags stop the agent before it touches anything, and one broken
//! YAML document costs only itself.

mod support;

use std::time::Duration;

use support::*;
use switchyard_tests::{
    Agent, AgentConfig, Cluster, ClusterSpec, Pod, ServiceManifest, ServicePort,
};

const EXIT: Duration = Duration::from_secs(20);

/// Writes `<name>.yaml`: `service` (named `name`) and its slices over `pods`.
fn write_service<'a>(
    cluster: &Cluster,
    name: &str,
    service: &ServiceManifest,
    pods: impl IntoIterator<Item = &'a Pod> + Clone,
) {
    let [v4, v6] = cluster.endpoint_slices(name, NAMESPACE, &http_port(), pods);
    cluster
        .manifests()
        .write(
            &format!("{name}.yaml"),
            &[service.to_value(), v4.to_value(), v6.to_value()],
        )
        .unwrap();
}

/// `thief` (its own ClusterIP 10.96.5.1, and `web`'s ClusterIP as an
/// externalIP on the same port) sorts before `web`: the order that made
/// the externalIP win before claims had ranks.
fn write_thief<'a>(cluster: &Cluster, pods: impl IntoIterator<Item = &'a Pod> + Clone) {
    let thief = ServiceManifest::new("a-thief", NAMESPACE)
        .cluster_ip("10.96.5.1")
        .external_ip(VIP4)
        .port(ServicePort::tcp("http", 80, 8080));
    write_service(cluster, "a-thief", &thief, pods);
}

#[test]
fn an_external_ip_never_takes_another_services_cluster_ip() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(3)).unwrap();
    let pods: Vec<&Pod> = cluster.pods.iter().collect();
    write_web(&cluster, pods[1..].iter().copied());
    write_thief(&cluster, pods[..1].iter().copied());
    let agent = Agent::start(AgentConfig::for_cluster(&cluster), &cluster.node.netns).unwrap();

    assert_eq!(
        answered(&cluster.client.tcp(vip4(80), 30).unwrap()),
        names(&pods[1..]),
        "web's ClusterIP reaches web's pods only"
    );
    // The thief keeps what is its own.
    let own: std::net::SocketAddr = "10.96.5.1:80".parse().unwrap();
    assert_eq!(
        answered(&cluster.client.tcp(own, 10).unwrap()),
        names(&pods[..1])
    );
    let log = agent.log();
    assert!(
        log.lines()
            .any(|line| line.contains("Service default/a-thief")
                && line.contains("externalIPs[0]")
                && line.contains("already served by default/web:http")),
        "the claimant is told, naming both: {log}"
    );
    let metrics = get(&cluster.node.netns, 10249, "/metrics").1;
    assert!(
        metric(&metrics, "switchyard_input_errors{reason=\"conflict\"}").is_some_and(|n| n > 0.0),
        "{metrics}"
    );
}

#[test]
fn external_ips_outside_the_allowed_ranges_are_not_served() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(2)).unwrap();
    let pods: Vec<&Pod> = cluster.pods.iter().collect();
    write_web(&cluster, pods[..1].iter().copied());
    let exposed = ServiceManifest::new("exposed", NAMESPACE)
        .cluster_ip("10.96.5.2")
        .external_ip("198.51.100.20")
        .external_ip("198.51.100.30")
        .port(ServicePort::tcp("http", 80, 8080));
    write_service(&cluster, "exposed", &exposed, pods[1..].iter().copied());
    let config = AgentConfig::for_cluster(&cluster).arg("--external-ip-ranges=198.51.100.20/32");
    let agent = Agent::start(config, &cluster.node.netns).unwrap();
    assert!(programmed_backends(&agent, "198.51.100.20", 80, "TCP").is_some());
    assert!(programmed_backends(&agent, "198.51.100.30", 80, "TCP").is_none());
    let log = agent.log();
    assert!(
        log.lines()
            .any(|line| line.contains("Service default/exposed")
                && line.contains("198.51.100.30 is outside --external-ip-ranges")),
        "{log}"
    );
}

#[test]
fn a_second_agent_on_the_same_pins_exits_naming_the_first() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(1)).unwrap();
    write_web(&cluster, &cluster.pods);
    let first = Agent::start(AgentConfig::for_cluster(&cluster), &cluster.node.netns).unwrap();
    let before = first.services().unwrap();

    let mut config = AgentConfig::for_cluster(&cluster);
    config.log = cluster.scratch.join("second-agent.log");
    // Nothing to bind twice: the pins are what they would share.
    let config = config
        .arg("--metrics-bind-address=127.0.0.1:0")
        .arg("--healthz-bind-address=127.0.0.1:0");
    let mut second = Agent::spawn(config, &cluster.node.netns).unwrap();
    let status = second.wait_exit(EXIT).unwrap();
    assert!(!status.success());
    let pid = first.pid().unwrap();
    let log = second.log();
    assert!(
        log.contains(&format!("another switchyard (pid {pid}) already writes")),
        "{log}"
    );
    assert_eq!(first.services().unwrap(), before, "the first is untouched");
    assert!(!cluster.client.tcp(vip4(80), 5).unwrap().is_empty());
    assert_eq!(answered(&cluster.client.tcp(vip4(80), 5).unwrap()).len(), 1);
}

#[test]
fn a_pinned_map_of_another_layout_is_refused_and_older_versions_are_removed() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(1)).unwrap();
    write_web(&cluster, &cluster.pods);
    let config = AgentConfig::for_cluster(&cluster);
    let pins = config.bpffs.clone();
    std::fs::create_dir_all(&pins).unwrap();
    // A backend map as another build might have made it: 4-byte values.
    let wrong = pin_hash_map(&pins.join(switchyard_abi::BACKENDS_MAP), 4, 4);
    let mut agent = Agent::spawn(config, &cluster.node.netns).unwrap();
    let status = agent.wait_exit(EXIT).unwrap();
    assert!(!status.success());
    let log = agent.log();
    let line = log
        .lines()
        .find(|line| line.contains("SY_BACKENDS_V1"))
        .unwrap_or_else(|| panic!("no line names the map: {log}"));
    assert!(
        line.contains("has value size 4, this build's has"),
        "{line}"
    );
    assert!(!log.contains("panicked"), "{log}");
    drop(wrong);
    std::fs::remove_file(pins.join(switchyard_abi::BACKENDS_MAP)).unwrap();

    // An older layout's map is left by an older build: removed once the
    // programs that used it are retired, and by cleanup in any case.
    let older = pins.join("SY_SERVICES_V0");
    let _older = pin_hash_map(&older, 8, 8);
    agent.start_again().unwrap();
    time_until(Duration::from_secs(10), || !older.exists());
    agent.stop().unwrap();
    let _again = pin_hash_map(&older, 8, 8);
    assert!(agent.cleanup().unwrap().status.success());
    assert!(!pins.exists(), "cleanup removes every version");
}

/// Creates a hash map and pins it at `path`; the pin keeps it.
fn pin_hash_map(path: &std::path::Path, key_size: u32, value_size: u32) -> aya::maps::MapData {
    const BPF_MAP_TYPE_HASH: u32 = 1;
    let definition = aya_obj::Map::new_from_params(BPF_MAP_TYPE_HASH, key_size, value_size, 16, 0);
    let map = aya::maps::MapData::create(definition, "sy_test_pin", None).unwrap();
    map.pin(path).unwrap();
    map
}

#[test]
fn bad_flags_stop_the_agent_before_it_touches_anything() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(1)).unwrap();
    write_web(&cluster, &cluster.pods);
    let cases: &[(&str, &str)] = &[
        (
            "--conntrack-gc-interval=0s",
            "--conntrack-gc-interval: 0s must be more than zero",
        ),
        (
            "--sync-period=1000years",
            "--sync-period: 1000years is longer than a year",
        ),
        (
            "--nodeport-addresses=10.0.0.0/8,primry",
            "--nodeport-addresses: \"primry\" is neither a CIDR nor \"primary\"",
        ),
        (
            "--service-counters-for=shop,Shop/Cart",
            "--service-counters-for: \"Shop/Cart\" is not *, a namespace or namespace/name",
        ),
    ];
    for (index, (flag, want)) in cases.iter().enumerate() {
        let mut config = AgentConfig::for_cluster(&cluster).arg(*flag);
        config.log = cluster.scratch.join(format!("bad-flag-{index}.log"));
        let pins = config.bpffs.clone();
        let mut agent = Agent::spawn(config, &cluster.node.netns).unwrap();
        let status = agent.wait_exit(EXIT).unwrap();
        assert!(!status.success(), "{flag}");
        let log = agent.log();
        let errors: Vec<&str> = log
            .lines()
            .filter(|line| line.starts_with("switchyard:"))
            .collect();
        assert_eq!(errors, [format!("switchyard: {want}")], "{flag}: {log}");
        assert!(!log.contains("panicked"), "{flag}: {log}");
        assert!(!pins.exists(), "{flag}: nothing pinned");
    }
}

#[test]
fn a_yaml_syntax_error_costs_only_its_own_document() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(2)).unwrap();
    let pods: Vec<&Pod> = cluster.pods.iter().collect();
    let [v4, v6] = cluster.endpoint_slices("web", NAMESPACE, &http_port(), pods.iter().copied());
    let mut text = String::new();
    for document in [web_service().to_value(), v4.to_value()] {
        text.push_str("---\n");
        text.push_str(&serde_yaml::to_string(&document).unwrap());
    }
    text.push_str("---\napiVersion: v1\nkind: Service\nmetadata: {name: broken\n");
    text.push_str("---\n");
    text.push_str(&serde_yaml::to_string(&v6.to_value()).unwrap());
    std::fs::write(cluster.manifests().path().join("web.yaml"), text).unwrap();
    let agent = Agent::start(AgentConfig::for_cluster(&cluster), &cluster.node.netns).unwrap();

    assert_eq!(
        answered(&cluster.client.tcp(vip4(80), 20).unwrap()),
        names(&pods)
    );
    assert_eq!(
        answered(&cluster.client.tcp(vip6(80), 20).unwrap()),
        names(&pods),
        "the slice after the broken document is read too"
    );
    let log = agent.log();
    assert!(
        log.lines()
            .any(|line| line.contains("web.yaml: document 3") && line.contains("at line")),
        "{log}"
    );
}

#[test]
fn one_service_cannot_take_more_than_its_budget_of_the_maps() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(3)).unwrap();
    let pods: Vec<&Pod> = cluster.pods.iter().collect();
    // web: two frontends (IPv4, IPv6) of one endpoint each, 4 entries.
    write_web(&cluster, pods[..1].iter().copied());
    let big = ServiceManifest::new("big", NAMESPACE)
        .cluster_ip("10.96.5.3")
        .cluster_ip("fd00:96::5:3")
        .port(ServicePort::tcp("http", 80, 8080));
    write_service(&cluster, "big", &big, pods.iter().copied());
    let config = AgentConfig::for_cluster(&cluster).arg("--service-entry-budget=4");
    let agent = Agent::start(config, &cluster.node.netns).unwrap();
    assert_eq!(
        answered(&cluster.client.tcp(vip4(80), 10).unwrap()),
        names(&pods[..1])
    );
    assert!(programmed_backends(&agent, "10.96.5.3", 80, "TCP").is_none());
    let log = agent.log();
    assert!(
        log.lines().any(|line| line.contains("Service default/big")
            && line.contains("needs 8 service map entries")
            && line.contains("--service-entry-budget")),
        "{log}"
    );
    let metrics = get(&cluster.node.netns, 10249, "/metrics").1;
    assert_eq!(
        metric(&metrics, "switchyard_input_errors{reason=\"over_budget\"}"),
        Some(1.0)
    );
}
