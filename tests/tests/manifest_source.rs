//! The manifests folder as a service source: what is programmed, what is
//! left alone, how fast changes land, and how bad input is handled.

mod support;

use std::{collections::BTreeSet, time::Duration};

use support::*;
use switchyard_tests::{
    Agent, AgentConfig, Cluster, ClusterSpec, EndpointPort, Protocol, ServiceManifest, ServicePort,
    patience,
};

fn pod_addrs(pods: &[&switchyard_tests::Pod], port: u16) -> BTreeSet<String> {
    pods.iter()
        .map(|pod| pod.addr_v4(port).to_string())
        .collect()
}

#[test]
fn endpoint_changes_reach_the_datapath_within_a_second() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(4)).unwrap();
    let all: Vec<_> = cluster.pods.iter().collect();
    write_web(&cluster, all.iter().copied());
    let agent = Agent::start(AgentConfig::for_cluster(&cluster), &cluster.node.netns).unwrap();
    assert_eq!(
        answered(&cluster.client.tcp(vip4(80), 40).unwrap()),
        names(&all)
    );

    let two = &all[..2];
    write_web(&cluster, two.iter().copied());
    let removed_in = time_until(Duration::from_secs(5), || {
        programmed_backends(&agent, VIP4, 80, "TCP") == Some(pod_addrs(two, 8080))
    });
    assert!(
        removed_in < patience::scaled(Duration::from_secs(1)),
        "removal took {removed_in:?}"
    );
    assert_eq!(
        answered(&cluster.client.tcp(vip4(80), 30).unwrap()),
        names(two)
    );

    write_web(&cluster, all.iter().copied());
    let added_in = time_until(Duration::from_secs(5), || {
        programmed_backends(&agent, VIP4, 80, "TCP") == Some(pod_addrs(&all, 8080))
    });
    assert!(
        added_in < patience::scaled(Duration::from_secs(1)),
        "addition took {added_in:?}"
    );
    assert_eq!(
        answered(&cluster.client.tcp(vip4(80), 40).unwrap()),
        names(&all)
    );
}

#[test]
fn services_output_matches_the_manifests() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(3)).unwrap();
    write_web(&cluster, &cluster.pods);
    let dns = ServiceManifest::new("dns", "kube-system")
        .cluster_ip("10.96.0.53")
        .port(ServicePort::udp("dns", 53, 8080))
        .port(ServicePort::tcp("dns-tcp", 53, 9090));
    let [slice, _] = cluster.endpoint_slices(
        "dns",
        "kube-system",
        &EndpointPort::new("dns", Protocol::Udp, 8080),
        &cluster.pods[..1],
    );
    let slice = slice.port(EndpointPort::new("dns-tcp", Protocol::Tcp, 9090));
    cluster
        .manifests()
        .write("dns.yaml", &[dns.to_value(), slice.to_value()])
        .unwrap();
    let agent = Agent::start(AgentConfig::for_cluster(&cluster), &cluster.node.netns).unwrap();

    let services = agent.services().unwrap();
    let frontends: BTreeSet<String> = services
        .as_array()
        .unwrap()
        .iter()
        .map(|f| format!("{} {} {}", f["ip"], f["port"], f["protocol"]))
        .collect();
    let expected: BTreeSet<String> = [
        "\"10.96.0.10\" 80 \"TCP\"",
        "\"fd00:96::10\" 80 \"TCP\"",
        "\"10.96.0.53\" 53 \"UDP\"",
        "\"10.96.0.53\" 53 \"TCP\"",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(frontends, expected);

    let all: Vec<_> = cluster.pods.iter().collect();
    assert_eq!(
        programmed_backends(&agent, VIP4, 80, "TCP").unwrap(),
        pod_addrs(&all, 8080)
    );
    let v6: BTreeSet<String> = cluster
        .pods
        .iter()
        .map(|pod| pod.addr_v6(8080).to_string())
        .collect();
    assert_eq!(programmed_backends(&agent, VIP6, 80, "TCP").unwrap(), v6);
    let first = [&cluster.pods[0]];
    assert_eq!(
        programmed_backends(&agent, "10.96.0.53", 53, "UDP").unwrap(),
        pod_addrs(&first, 8080)
    );
    assert_eq!(
        programmed_backends(&agent, "10.96.0.53", 53, "TCP").unwrap(),
        pod_addrs(&first, 9090)
    );
}

#[test]
fn services_for_another_proxy_headless_and_external_name_are_not_programmed() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(1)).unwrap();
    let pod = &cluster.pods[0];
    let port = http_port();
    let mut documents = Vec::new();
    let variants = [
        (
            "other-proxy",
            "10.96.1.1",
            Some(("service.kubernetes.io/service-proxy-name", "other")),
        ),
        (
            "headless-label",
            "10.96.1.2",
            Some(("service.kubernetes.io/headless", "")),
        ),
        ("plain", "10.96.1.3", None),
    ];
    for (name, ip, label) in variants {
        let mut service = ServiceManifest::new(name, NAMESPACE)
            .cluster_ip(ip)
            .port(ServicePort::tcp("http", 80, 8080));
        if let Some((key, value)) = label {
            service = service.label(key, value);
        }
        let [slice, _] = cluster.endpoint_slices(name, NAMESPACE, &port, [pod]);
        documents.extend([service.to_value(), slice.to_value()]);
    }
    let headless = ServiceManifest::new("headless", NAMESPACE)
        .cluster_ip("None")
        .port(ServicePort::tcp("http", 80, 8080));
    let external = ServiceManifest::new("external", NAMESPACE)
        .service_type("ExternalName")
        .spec_field("externalName", "example.invalid".into())
        .port(ServicePort::tcp("http", 80, 8080));
    documents.extend([headless.to_value(), external.to_value()]);
    cluster.manifests().write("all.yaml", &documents).unwrap();
    let agent = Agent::start(AgentConfig::for_cluster(&cluster), &cluster.node.netns).unwrap();

    let services = agent.services().unwrap();
    let ips: Vec<&str> = services
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["ip"].as_str().unwrap())
        .collect();
    assert_eq!(ips, ["10.96.1.3"]);
    assert_eq!(
        answered(
            &cluster
                .client
                .tcp("10.96.1.3:80".parse().unwrap(), 3)
                .unwrap()
        ),
        names(&[pod])
    );
    for vip in ["10.96.1.1:80", "10.96.1.2:80"] {
        for attempt in cluster.client.tcp(vip.parse().unwrap(), 1).unwrap() {
            assert!(!attempt.ok, "{vip} must not be proxied: {attempt:?}");
        }
    }
}

#[test]
fn bad_manifests_are_reported_and_everything_else_is_served() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(2)).unwrap();
    write_web(&cluster, &cluster.pods);
    let bad_port = ServiceManifest::new("zero-port", NAMESPACE)
        .cluster_ip("10.96.2.1")
        .port(ServicePort::tcp("http", 0, 8080))
        .port(ServicePort::tcp("ok", 81, 8080));
    let bad_ip = ServiceManifest::new("bad-ip", NAMESPACE)
        .cluster_ip("10.96.2.300")
        .port(ServicePort::tcp("http", 80, 8080));
    cluster
        .manifests()
        .write("bad.yaml", &[bad_port.to_value(), bad_ip.to_value()])
        .unwrap();
    std::fs::write(
        cluster.manifests().path().join("broken.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: broken\nspec: [\n",
    )
    .unwrap();
    let agent = Agent::start(AgentConfig::for_cluster(&cluster), &cluster.node.netns).unwrap();

    let pods: Vec<_> = cluster.pods.iter().collect();
    assert_eq!(
        answered(&cluster.client.tcp(vip4(80), 20).unwrap()),
        names(&pods)
    );
    assert!(programmed_backends(&agent, "10.96.2.1", 81, "TCP").is_some());
    assert!(programmed_backends(&agent, "10.96.2.1", 0, "TCP").is_none());

    let log = agent.log();
    let lines: Vec<&str> = log.lines().collect();
    let mentions = |needles: &[&str]| {
        lines
            .iter()
            .any(|line| needles.iter().all(|needle| line.contains(needle)))
    };
    assert!(mentions(&["bad.yaml", "zero-port", "port"]), "{log}");
    assert!(
        mentions(&["bad.yaml", "bad-ip", "clusterIP", "10.96.2.300"]),
        "{log}"
    );
    assert!(mentions(&["broken.yaml"]), "{log}");
}

/// An agent with nothing to do does nothing: the sync period's re-read of
/// the folder is skipped while no manifest changed (at 50k Services that
/// re-read and recompute was 8 s of CPU every period), and a change, even
/// one the file-system events missed, is still read at the next period.
#[test]
fn an_idle_agent_neither_re_reads_nor_recomputes() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(2)).unwrap();
    let all: Vec<_> = cluster.pods.iter().collect();
    write_web(&cluster, all.iter().copied());
    let config = AgentConfig::for_cluster(&cluster).arg("--sync-period=1s");
    let agent = Agent::start(config, &cluster.node.netns).unwrap();
    let full_passes = || {
        agent
            .log()
            .lines()
            .filter(|line| line.contains("pass=\"full\""))
            .count()
    };
    let before = full_passes();
    std::thread::sleep(patience::scaled(Duration::from_millis(3_500)));
    assert_eq!(full_passes(), before, "{}", agent.log());

    // The same content written again is a change of the file: read again.
    write_web(&cluster, all.iter().copied());
    time_until(Duration::from_secs(5), || full_passes() > before);
}
