//! The per-packet path over time, on the two-node lab (see
//! `support::two_nodes`): session affinity for outside clients, an agent
//! restart under NodePort traffic (tcx links on kernels that have them,
//! clsact filters before 6.6), and the conntrack map grown by a restart. Needs root; run with
//! --test-threads=1.

mod support;

use std::time::Duration;

use serde_json::json;
use support::two_nodes::{
    agents, cluster, eventually, peers, serve_node_port, service, write_service,
};
use switchyard_abi::{CONNTRACK_MAP, CONNTRACK_MAX_ENTRIES};
use switchyard_tests::ServiceType;

/// kube-proxy's e2e calls affinity held after 15 answers from one backend.
const HOLD: u32 = 15;

#[test]
fn client_ip_affinity_holds_for_outside_clients_of_a_node_port() {
    let c = cluster();
    let _agents = agents(&c, &[]);
    let sticky = service("sticky", ServiceType::NodePort, 30095, 27)
        .spec_field("sessionAffinity", json!("ClientIP"))
        .spec_field(
            "sessionAffinityConfig",
            json!({"clientIP": {"timeoutSeconds": 600}}),
        );
    let target = serve_node_port(&c, &sticky, 30095, &[(0, 0), (1, 0)]);
    let seen = peers(&c.outside.tcp(target, HOLD).unwrap());
    assert_eq!(seen.len(), 1, "one backend for one client: {seen:?}");

    // Without affinity the same client spreads over both backends.
    write_service(
        &c,
        &service("sticky", ServiceType::NodePort, 30095, 27),
        &[(0, 0), (1, 0)],
    );
    eventually("connections spread once affinity is off", || {
        peers(&c.outside.tcp(target, 16).unwrap()).len() == 2
    });
}

#[test]
fn an_agent_restart_under_node_port_traffic_loses_no_connection() {
    let c = cluster();
    let mut agents = agents(&c, &[]);
    let target = serve_node_port(
        &c,
        &service("steady", ServiceType::NodePort, 30096, 28),
        30096,
        &[(0, 0), (1, 0)],
    );
    let hold = c
        .outside
        .prober()
        .spawn_hold(
            target,
            Duration::from_secs(4),
            Duration::from_millis(50),
            c.scratch.join("hold.json"),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // New connections keep coming while the agent is killed, absent and
    // back: the pinned maps and attached programs carry them.
    let burst = std::thread::scope(|scope| {
        let load = scope.spawn(|| c.outside.prober().parallel_burst(target, 400, 4).unwrap());
        std::thread::sleep(Duration::from_millis(200));
        agents[0].kill_hard().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        agents[0].start_again().unwrap();
        load.join().unwrap()
    });
    assert_eq!(burst.failures, 0, "{burst:?}");
    assert_eq!(burst.per_backend.len(), 2, "{burst:?}");
    let open_connection = hold.wait().unwrap();
    assert!(
        open_connection.ok && open_connection.failures == 0,
        "{open_connection:?}"
    );
}

#[test]
fn growing_the_conntrack_map_under_node_port_traffic_loses_no_connection() {
    let c = cluster();
    let mut agents = agents(&c, &["--conntrack-max-per-core=0", "--conntrack-min=1024"]);
    let conntrack_size = |agent: &switchyard_tests::Agent<'_>| {
        aya::maps::MapInfo::from_pin(agent.config().bpffs.join(CONNTRACK_MAP))
            .unwrap()
            .max_entries()
    };
    // maxPerCore 0 keeps the built-in size, as kube-proxy leaves the
    // kernel's limit alone.
    assert_eq!(conntrack_size(&agents[0]), CONNTRACK_MAX_ENTRIES);
    let target = serve_node_port(
        &c,
        &service("growing", ServiceType::NodePort, 30097, 29),
        30097,
        &[(0, 0), (1, 0)],
    );
    let hold = c
        .outside
        .prober()
        .spawn_hold(
            target,
            Duration::from_secs(4),
            Duration::from_millis(50),
            c.scratch.join("hold.json"),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // kube-proxy's sizing: max(maxPerCore x CPUs, min); a min this large
    // decides on any machine the tests run on.
    let config = agents[0].config_mut();
    config.set_flag("--conntrack-max-per-core", 1);
    config.set_flag("--conntrack-min", 300_000);
    // The open connection's entry and those of new ones made while the old
    // programs still run must all reach the new map.
    let burst = std::thread::scope(|scope| {
        let load = scope.spawn(|| c.outside.prober().parallel_burst(target, 400, 4).unwrap());
        std::thread::sleep(Duration::from_millis(200));
        agents[0].restart().unwrap();
        load.join().unwrap()
    });
    assert_eq!(burst.failures, 0, "{burst:?}");
    assert_eq!(burst.per_backend.len(), 2, "{burst:?}");
    assert_eq!(conntrack_size(&agents[0]), 300_000);
    let log = agents[0].log();
    assert!(log.contains("pinned map resized"), "{log}");
    assert!(
        log.contains("the old instance of the resized map is gone"),
        "{log}"
    );
    let open_connection = hold.wait().unwrap();
    assert!(
        open_connection.ok && open_connection.failures == 0,
        "{open_connection:?}"
    );
}
