//! `sessionAffinity: ClientIP` in the socket path: one client keeps its
//! backend until the timeout, and affinity switches on and off live.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;
use switchyard_tests::{Agent, AgentConfig, Cluster, ClusterSpec};

/// kube-proxy's e2e calls affinity held after 15 answers from one backend.
const HOLD: u32 = 15;

fn with_affinity(cluster: &Cluster, timeout: Option<u32>) {
    let mut service = web_service();
    if let Some(seconds) = timeout {
        service = service
            .spec_field("sessionAffinity", json!("ClientIP"))
            .spec_field(
                "sessionAffinityConfig",
                json!({"clientIP": {"timeoutSeconds": seconds}}),
            );
    }
    let [v4, v6] = cluster.endpoint_slices("web", NAMESPACE, &http_port(), &cluster.pods);
    cluster
        .manifests()
        .write(
            "web.yaml",
            &[service.to_value(), v4.to_value(), v6.to_value()],
        )
        .unwrap();
}

fn answers(cluster: &Cluster, count: u32) -> std::collections::BTreeSet<String> {
    answered(&cluster.client.tcp(vip4(80), count).unwrap())
}

#[test]
fn affinity_holds_and_can_be_switched_off_and_on() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(4)).unwrap();
    with_affinity(&cluster, Some(10_800));
    let agent = Agent::start(AgentConfig::for_cluster(&cluster), &cluster.node.netns).unwrap();
    assert_eq!(answers(&cluster, HOLD).len(), 1, "affinity must hold");
    assert_eq!(
        answered(&cluster.client.tcp(vip6(80), HOLD).unwrap()).len(),
        1
    );

    with_affinity(&cluster, None);
    time_until(Duration::from_secs(5), || {
        agent.services().unwrap()[0]
            .get("affinity_timeout")
            .is_none()
    });
    assert_eq!(
        answers(&cluster, 40).len(),
        4,
        "without affinity, all backends"
    );

    with_affinity(&cluster, Some(10_800));
    time_until(Duration::from_secs(5), || {
        agent.services().unwrap()[0]
            .get("affinity_timeout")
            .is_some()
    });
    assert_eq!(answers(&cluster, HOLD).len(), 1, "affinity must hold again");
}

#[test]
fn affinity_expires_after_its_timeout() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(4)).unwrap();
    with_affinity(&cluster, Some(1));
    let _agent = Agent::start(AgentConfig::for_cluster(&cluster), &cluster.node.netns).unwrap();
    let first = answers(&cluster, 5);
    assert_eq!(first.len(), 1, "held within the timeout");

    // After each expiry the next connection picks afresh (3/4 chance of a
    // different backend); ten expiries all picking the same one is ~1e-6.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut moved = false;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(1_200));
        if answers(&cluster, 1) != first {
            moved = true;
            break;
        }
        assert!(Instant::now() < deadline);
    }
    assert!(moved, "a new backend must appear once affinity times out");
}
