//! The agent on the Kubernetes API: kube-rs reflectors against the test API
//! server (real list/watch over HTTP), kube-proxy's selectors, and what
//! happens when the API server misbehaves or goes away.

mod support;

use std::{collections::BTreeSet, time::Duration};

use serde_json::Value;
use support::*;
use switchyard_tests::{
    Agent, AgentConfig, Cluster, ClusterSpec, FakeApiServer, Pod, ServiceManifest, ServicePort,
    kernel, patience,
};

const CONVERGE: Duration = Duration::from_secs(10);
const SHOP_VIP: &str = "10.96.0.20";

struct Api {
    server: FakeApiServer,
    kubeconfig: std::path::PathBuf,
}

fn api(cluster: &Cluster) -> Api {
    let server = FakeApiServer::start_in(&cluster.node.netns).unwrap();
    let kubeconfig = cluster.scratch.join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    Api { server, kubeconfig }
}

fn publish_web<'a>(api: &Api, cluster: &Cluster, pods: impl IntoIterator<Item = &'a Pod> + Clone) {
    let [v4, v6] = cluster.endpoint_slices("web", NAMESPACE, &http_port(), pods);
    for object in [web_service().to_value(), v4.to_value(), v6.to_value()] {
        api.server.apply(object);
    }
}

fn start<'a>(cluster: &'a Cluster, api: &Api) -> Agent<'a> {
    let config = AgentConfig::for_cluster(cluster).with_kubeconfig(api.kubeconfig.clone());
    Agent::start(config, &cluster.node.netns).unwrap()
}

fn serves(agent: &Agent, pods: &[&Pod]) -> bool {
    let want = pods.iter().map(|p| p.addr_v4(8080).to_string()).collect();
    programmed_backends(agent, VIP4, 80, "TCP") == Some(want)
}

#[test]
fn services_and_slices_from_the_api_are_balanced_and_followed() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(4)).unwrap();
    let api = api(&cluster);
    publish_web(&api, &cluster, &cluster.pods);
    let other_proxy = web_service()
        .label("service.kubernetes.io/service-proxy-name", "other")
        .to_value();
    let mut other_proxy = other_proxy;
    other_proxy["metadata"]["name"] = "other".into();
    other_proxy["spec"]["clusterIP"] = "10.96.5.5".into();
    other_proxy["spec"]["clusterIPs"] = serde_json::json!(["10.96.5.5"]);
    api.server.apply(other_proxy);
    let agent = start(&cluster, &api);

    let all: Vec<&Pod> = cluster.pods.iter().collect();
    assert_eq!(
        answered(&cluster.client.tcp(vip4(80), 40).unwrap()),
        names(&all)
    );
    assert!(programmed_backends(&agent, "10.96.5.5", 80, "TCP").is_none());

    // Endpoint removed through a watch event: applied within a second.
    publish_web(&api, &cluster, all[..2].iter().copied());
    let took = time_until(CONVERGE, || serves(&agent, &all[..2]));
    assert!(
        took < patience::scaled(Duration::from_secs(1)),
        "took {took:?}"
    );
    assert_eq!(
        answered(&cluster.client.tcp(vip4(80), 20).unwrap()),
        names(&all[..2])
    );

    // The Service deleted: its frontends go.
    api.server.delete("Service", NAMESPACE, "web");
    time_until(CONVERGE, || {
        programmed_backends(&agent, VIP4, 80, "TCP").is_none()
    });
}

/// Watch events name the Services they touch, and a pass rewrites just
/// those: an EndpointSlice that moves to another Service (its label changed)
/// changes both, a deleted Service goes, and the untouched one stays as it
/// was, all without a full pass.
#[test]
fn changes_to_a_few_services_are_applied_alone_and_exactly() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(4)).unwrap();
    let api = api(&cluster);
    let all: Vec<&Pod> = cluster.pods.iter().collect();
    publish_web(&api, &cluster, all[..2].iter().copied());
    let shop = ServiceManifest::new("shop", NAMESPACE)
        .cluster_ip(SHOP_VIP)
        .port(ServicePort::tcp("http", 80, 8080));
    api.server.apply(shop.to_value());
    let [shop_v4, _] =
        cluster.endpoint_slices("shop", NAMESPACE, &http_port(), all[2..].iter().copied());
    api.server.apply(shop_v4.to_value());
    let agent = start(&cluster, &api);
    let backends = |vip| programmed_backends(&agent, vip, 80, "TCP");
    let addrs = |pods: &[&Pod]| pods.iter().map(|p| p.addr_v4(8080).to_string()).collect();
    assert_eq!(backends(SHOP_VIP), Some(addrs(&all[2..])));

    // The shop slice relabelled to web: web gains its pods, shop has none.
    let mut moved = shop_v4.to_value();
    moved["metadata"]["labels"]["kubernetes.io/service-name"] = "web".into();
    api.server.apply(moved);
    let took = time_until(CONVERGE, || {
        backends(VIP4) == Some(addrs(&all)) && backends(SHOP_VIP) == Some(BTreeSet::new())
    });
    assert!(
        took < patience::scaled(Duration::from_secs(1)),
        "took {took:?}"
    );
    assert_eq!(
        answered(&cluster.client.tcp(vip4(80), 40).unwrap()),
        names(&all)
    );

    api.server.delete("Service", NAMESPACE, "shop");
    time_until(CONVERGE, || backends(SHOP_VIP).is_none());
    assert_eq!(backends(VIP4), Some(addrs(&all)));
    let log = agent.log();
    assert!(
        log.contains("pass=\"changed\""),
        "no pass over changed Services:\n{log}"
    );

    // Every event counted as kube-proxy counts them: two Services listed
    // and one deleted; three slices listed and one relabelled.
    let (_, metrics) = get(&cluster.node.netns, 10249, "/metrics");
    let count = |name| metric(&metrics, name).unwrap_or_else(|| panic!("no {name}:\n{metrics}"));
    assert!(
        count("kubeproxy_sync_proxy_rules_service_changes_total") >= 3.0,
        "{metrics}"
    );
    assert!(
        count("kubeproxy_sync_proxy_rules_endpoint_changes_total") >= 4.0,
        "{metrics}"
    );
}

#[test]
fn a_410_gone_forces_a_relist_that_converges() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(3)).unwrap();
    let api = api(&cluster);
    publish_web(&api, &cluster, &cluster.pods);
    let agent = start(&cluster, &api);
    let lists_before = api.server.lists();

    // Changes land while the watches are cut and history is compacted: the
    // reconnecting watches get 410 and must list again to see them.
    api.server.drop_watches();
    let one: Vec<&Pod> = cluster.pods.iter().take(1).collect();
    publish_web(&api, &cluster, one.iter().copied());
    api.server.compact();
    time_until(CONVERGE, || serves(&agent, &one));
    assert!(
        api.server.lists() > lists_before,
        "a relist must have happened"
    );
    assert_eq!(
        answered(&cluster.client.tcp(vip4(80), 10).unwrap()),
        names(&one)
    );
}

#[test]
fn api_server_loss_keeps_serving_and_reconnecting_converges() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(3)).unwrap();
    let mut api = api(&cluster);
    publish_web(&api, &cluster, &cluster.pods);
    let agent = start(&cluster, &api);
    let all: Vec<&Pod> = cluster.pods.iter().collect();

    api.server.stop();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        answered(&cluster.client.tcp(vip4(80), 30).unwrap()),
        names(&all)
    );

    let two = &all[1..];
    publish_web(&api, &cluster, two.iter().copied());
    api.server.restart().unwrap();
    time_until(Duration::from_secs(30), || serves(&agent, two));
    assert_eq!(
        answered(&cluster.client.tcp(vip4(80), 20).unwrap()),
        names(two)
    );
}

#[test]
fn a_restarted_agent_serves_the_pinned_state_until_the_api_answers_then_prunes() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(2)).unwrap();
    let mut api = api(&cluster);
    publish_web(&api, &cluster, &cluster.pods);
    let mut dns = web_service().to_value();
    dns["metadata"]["name"] = "gone-while-away".into();
    dns["spec"]["clusterIP"] = "10.96.7.7".into();
    dns["spec"]["clusterIPs"] = serde_json::json!(["10.96.7.7"]);
    api.server.apply(dns);
    let mut agent = start(&cluster, &api);
    assert!(programmed_backends(&agent, "10.96.7.7", 80, "TCP").is_some());
    agent.kill_hard().unwrap();

    // While the agent is down the API loses one Service; then the API
    // itself is unreachable when the agent comes back.
    api.server.delete("Service", NAMESPACE, "gone-while-away");
    api.server.stop();
    agent.relaunch().unwrap();
    time_until(CONVERGE, || {
        agent.log().matches("adopted pinned state").count() == 2
    });
    let all: Vec<&Pod> = cluster.pods.iter().collect();
    assert_eq!(
        answered(&cluster.client.tcp(vip4(80), 20).unwrap()),
        names(&all)
    );
    assert!(
        programmed_backends(&agent, "10.96.7.7", 80, "TCP").is_some(),
        "no pruning before the first full list"
    );

    api.server.restart().unwrap();
    time_until(Duration::from_secs(30), || {
        programmed_backends(&agent, "10.96.7.7", 80, "TCP").is_none()
    });
    assert_eq!(
        answered(&cluster.client.tcp(vip4(80), 20).unwrap()),
        names(&all)
    );
}

#[test]
fn the_nodes_own_labels_come_from_the_api() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(4)).unwrap();
    let api = api(&cluster);
    let node: Value = serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "zone-1"}},
    });
    api.server.apply(node);
    api.server.apply(web_service().to_value());
    let mut slice = switchyard_tests::EndpointSliceManifest::new(
        "web-v4",
        NAMESPACE,
        "web",
        switchyard_tests::AddressType::IPv4,
    )
    .port(http_port());
    for (i, pod) in cluster.pods.iter().enumerate() {
        let zone = if i == 0 { "zone-1" } else { "zone-2" };
        slice = slice.endpoint(switchyard_tests::Endpoint::ready(pod.ipv4).zone_hint(zone));
    }
    api.server.apply(slice.to_value());
    let agent = start(&cluster, &api);
    time_until(CONVERGE, || serves(&agent, &[&cluster.pods[0]]));
}

/// ServiceCIDR objects (networking.k8s.io/v1) are watched: an unallocated
/// address of one is dropped while it exists, and left to routing after it
/// is deleted.
#[test]
fn service_cidrs_from_the_api_drop_unallocated_addresses() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(1)).unwrap();
    let api = api(&cluster);
    publish_web(&api, &cluster, &cluster.pods);
    api.server.apply(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "ServiceCIDR",
        "metadata": {"name": "kubernetes"},
        "spec": {"cidrs": ["10.96.0.0/16"]},
    }));
    // Without the drop, the client's own routing refuses the address at
    // once, which tells it apart from the hooks' ETIMEDOUT (EPERM before
    // 5.18).
    cluster
        .client
        .netns
        .ip(&["route", "add", "unreachable", "10.96.0.0/16"])
        .unwrap();
    let _agent = start(&cluster, &api);
    let unallocated = || {
        let attempt = &cluster
            .client
            .tcp("10.96.0.99:80".parse().unwrap(), 1)
            .unwrap()[0];
        attempt.error.clone().unwrap_or_default()
    };
    let dropped = kernel::socket_drop();
    time_until(CONVERGE, || unallocated() == dropped);
    api.server.delete("ServiceCIDR", "", "kubernetes");
    time_until(CONVERGE, || unallocated() == "unreachable");
}

/// With nothing changing in the API, the sync period costs no pass: the
/// reflectors' stores are what the last pass read.
#[test]
fn an_idle_agent_on_the_api_does_not_recompute() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(2)).unwrap();
    let api = api(&cluster);
    publish_web(&api, &cluster, &cluster.pods);
    let config = AgentConfig::for_cluster(&cluster)
        .with_kubeconfig(api.kubeconfig.clone())
        .arg("--sync-period=1s");
    let agent = Agent::start(config, &cluster.node.netns).unwrap();
    time_until(CONVERGE, || {
        serves(&agent, &cluster.pods.iter().collect::<Vec<_>>())
    });
    let passes = || agent.log().matches("programmed pass=").count();
    let before = passes();
    std::thread::sleep(patience::scaled(Duration::from_millis(3_500)));
    assert_eq!(passes(), before, "{}", agent.log());
    // A change is still applied at once.
    publish_web(&api, &cluster, &cluster.pods[..1]);
    time_until(CONVERGE, || serves(&agent, &[&cluster.pods[0]]));
}
