//! The datapath outlives the agent: stopping or killing it leaves traffic
//! flowing, a new agent adopts the pinned state, and cleanup removes it all.

mod support;

use std::time::Duration;

use support::*;
use switchyard_tests::{Agent, AgentConfig, Cluster, ClusterSpec};

fn started(cluster: &Cluster) -> Agent<'_> {
    write_web(cluster, &cluster.pods);
    Agent::start(AgentConfig::for_cluster(cluster), &cluster.node.netns).unwrap()
}

#[test]
fn killed_agent_restarts_without_breaking_open_or_new_connections() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(4)).unwrap();
    let mut agent = started(&cluster);
    let pods: Vec<_> = cluster.pods.iter().collect();
    let hold = cluster
        .client
        .spawn_hold(
            vip4(80),
            Duration::from_secs(4),
            Duration::from_millis(50),
            cluster.scratch.join("hold.json"),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));

    // New connections keep coming the whole time the agent is killed,
    // absent and restarting: not one may fail.
    let steady = std::thread::scope(|scope| {
        let load = scope.spawn(|| cluster.client.burst(vip4(80), 400).unwrap());
        std::thread::sleep(Duration::from_millis(200));
        agent.kill_hard().unwrap();
        // Nothing runs in userspace now; the pinned datapath still balances.
        assert_eq!(
            answered(&cluster.client.tcp(vip4(80), 40).unwrap()),
            names(&pods)
        );
        agent.start_again().unwrap();
        load.join().unwrap()
    });
    assert!(steady.ok && steady.failures == 0, "{steady:?}");
    assert_eq!(steady.per_backend.len(), pods.len(), "{steady:?}");
    assert_eq!(
        answered(&cluster.client.tcp(vip4(80), 40).unwrap()),
        names(&pods)
    );

    let summary = hold.wait().unwrap();
    assert!(summary.ok, "the open connection broke: {summary:?}");
    assert!(summary.requests >= 20, "{summary:?}");
    assert_eq!(summary.names.len(), 1, "one connection, one backend");
}

#[test]
fn stopped_agent_leaves_the_datapath_serving_and_a_new_one_adopts_it() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(3)).unwrap();
    let mut agent = started(&cluster);
    let before = agent.services().unwrap();
    let status = agent.stop().unwrap();
    assert!(status.success(), "{status}");

    let pods: Vec<_> = cluster.pods.iter().collect();
    assert_eq!(
        answered(&cluster.client.tcp(vip4(80), 30).unwrap()),
        names(&pods)
    );

    // Changed while the agent was away: the new agent must converge on it.
    write_web(&cluster, &cluster.pods[..1]);
    agent.start_again().unwrap();
    assert_ne!(agent.services().unwrap(), before);
    assert_eq!(
        answered(&cluster.client.tcp(vip4(80), 10).unwrap()),
        names(&pods[..1])
    );
    let log = agent.log();
    assert!(log.contains("adopted pinned state"), "{log}");
}

#[test]
fn cleanup_detaches_and_unpins_everything() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(1)).unwrap();
    let mut agent = started(&cluster);
    agent.stop().unwrap();
    let output = agent.cleanup().unwrap();
    assert!(output.status.success());
    assert!(agent.services().is_err(), "maps must be gone");
    let pin_dir = &agent.config().bpffs;
    assert!(!pin_dir.exists(), "{} still exists", pin_dir.display());
    for attempt in cluster.client.tcp(vip4(80), 1).unwrap() {
        assert!(!attempt.ok, "VIP must no longer be translated: {attempt:?}");
    }
    // Idempotent: a second cleanup finds nothing and succeeds.
    assert!(agent.cleanup().unwrap().status.success());
}
