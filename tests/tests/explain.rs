//! `switchyard explain` against a running agent's maps: for each kind of
//! connection, what it says the datapath does is what the datapath does.

mod support;

use std::collections::BTreeSet;

use support::*;
use switchyard_tests::{Agent, AgentConfig, Cluster, ClusterSpec, Pod, kernel};

#[test]
fn explain_says_what_the_datapath_does() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(2)).unwrap();
    let pods: Vec<&Pod> = cluster.pods.iter().collect();
    write_web(&cluster, pods.iter().copied());
    write_empty(&cluster, "10.96.0.20");
    let config = AgentConfig::for_cluster(&cluster).arg("--service-cluster-ip-range=10.96.0.0/16");
    let agent = Agent::start(config, &cluster.node.netns).unwrap();
    let client = cluster.client.ipv4.to_string();
    let explain = |dst: &str| {
        agent
            .explain(&["tcp", &client, dst, "--from", "node"])
            .unwrap()
    };

    // Translated, to one of the pods: and the connections reach them all.
    let web = explain("10.96.0.10:80");
    assert_eq!(web["path"], "socket");
    assert_eq!(web["verdict"]["verdict"], "translated", "{web:#}");
    assert_eq!(web["frontend"]["service"], "default/web:http");
    let candidates: BTreeSet<String> = web["verdict"]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["address"].as_str().unwrap().to_owned())
        .collect();
    let pod_addresses: BTreeSet<String> = pods
        .iter()
        .map(|pod| pod.addr_v4(8080).to_string())
        .collect();
    assert_eq!(candidates, pod_addresses);
    assert_eq!(
        answered(&cluster.client.tcp(vip4(80), 8).unwrap()),
        names(&pods)
    );

    // Refused, unserved, unallocated, not ours: each as connect() meets it.
    for (dst, verdict, connects) in [
        ("10.96.0.20:80", "refused", false),
        ("10.96.0.10:81", "refused", false),
        ("10.96.9.9:80", "dropped", false),
    ] {
        let explained = explain(dst);
        assert_eq!(
            explained["verdict"]["verdict"], verdict,
            "{dst}: {explained:#}"
        );
        let attempts = cluster.client.tcp(dst.parse().unwrap(), 1).unwrap();
        assert_eq!(
            attempts.iter().all(|a| a.ok),
            connects,
            "{dst}: {attempts:?}"
        );
        // ECONNREFUSED reads "refused", ETIMEDOUT "timeout" (EPERM
        // "eperm" before 5.18, as explain says there).
        let error = attempts[0].error.clone().unwrap_or_default();
        let want = if verdict == "refused" {
            "refused"
        } else {
            kernel::socket_drop()
        };
        assert_eq!(error, want, "{dst}");
    }
    let pod = pods[0].addr_v4(8080).to_string();
    assert_eq!(explain(&pod)["verdict"]["verdict"], "passed");

    let words = agent
        .explain_text(&["tcp", &client, "10.96.0.10:80", "--from", "node"])
        .unwrap();
    assert!(words.contains("1. path: from this node"), "{words}");
    assert!(
        words.contains("=> translated to one of 2 backend(s):"),
        "{words}"
    );
    println!("{words}");
}
