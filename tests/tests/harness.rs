//! Tests of the harness alone (no agent): the topology comes up, pods answer
//! by their own addresses over TCP and UDP on both families, commands land in
//! the right namespace and cgroup, and every guard cleans up after itself.
//! They need root; `cargo xtask test` runs them with --test-threads=1.

use std::{net::SocketAddr, path::PathBuf, process::Command, time::Duration};

use switchyard_tests::{Cgroup, Cluster, ClusterSpec, NetNs, cgroup, netns, process};

fn cluster() -> Cluster {
    Cluster::up(&ClusterSpec::with_pods(2)).expect("topology comes up")
}

fn assert_all_from(attempts: &[switchyard_tests::Attempt], pod: &str, to: SocketAddr) {
    for a in attempts {
        assert!(a.ok, "attempt to {to} failed: {a:?}");
        assert_eq!(a.name.as_deref(), Some(pod));
    }
}

#[test]
fn client_reaches_pod_directly_over_tcp_v4_and_v6() {
    let c = cluster();
    let pod = &c.pods[0];
    for (to, client_ip) in [
        (pod.addr_v4(8080), c.client.ipv4.to_string()),
        (pod.addr_v6(8080), c.client.ipv6.to_string()),
        (pod.addr_v4(9090), c.client.ipv4.to_string()),
    ] {
        let attempts = c.client.tcp(to, 3).unwrap();
        assert_eq!(attempts.len(), 3);
        assert_all_from(&attempts, "pod-0", to);
        for a in &attempts {
            assert_eq!(a.getpeername.as_deref(), Some(to.to_string().as_str()));
            let seen: SocketAddr = a.peer_seen_by_server.as_ref().unwrap().parse().unwrap();
            assert_eq!(
                seen.ip().to_string(),
                client_ip,
                "server sees the client address"
            );
        }
    }
    let other = c.client.tcp(c.pods[1].addr_v6(9090), 1).unwrap();
    assert_all_from(&other, "pod-1", c.pods[1].addr_v6(9090));
}

#[test]
fn client_reaches_pod_directly_over_udp() {
    let c = cluster();
    let pod = &c.pods[0];
    for to in [pod.addr_v4(8080), pod.addr_v6(8080)] {
        for connected in [false, true] {
            let attempts = c.client.udp(to, 2, connected).unwrap();
            assert_all_from(&attempts, "pod-0", to);
            for a in &attempts {
                assert_eq!(a.reply_from.as_deref(), Some(to.to_string().as_str()));
                assert_eq!(a.getpeername.is_some(), connected);
            }
        }
    }
}

#[test]
fn summaries_count_per_backend() {
    let c = cluster();
    let to = c.pods[1].addr_v4(8080);
    let burst = c.client.burst(to, 5).unwrap();
    assert!(burst.ok, "{burst:?}");
    assert_eq!(burst.per_backend.get("pod-1"), Some(&5));
    let hold = c
        .client
        .hold(to, Duration::from_millis(300), Duration::from_millis(100))
        .unwrap();
    assert!(hold.ok && hold.requests >= 3, "{hold:?}");
    assert_eq!(hold.names, ["pod-1"]);
    let out = c.scratch.join("hold.json");
    let pending = c
        .client
        .spawn_hold(
            to,
            Duration::from_millis(200),
            Duration::from_millis(50),
            out,
        )
        .unwrap();
    let summary = pending.wait().unwrap();
    assert!(summary.ok, "{summary:?}");
}

#[test]
fn service_address_is_unreachable_without_an_agent() {
    let c = cluster();
    let attempts = c.client.tcp("10.96.0.10:80".parse().unwrap(), 1).unwrap();
    assert!(!attempts[0].ok, "{attempts:?}");
    let closed = c.client.tcp(c.pods[0].addr_v4(7), 1).unwrap();
    assert_eq!(closed[0].error.as_deref(), Some("refused"));
}

#[test]
fn commands_run_inside_the_namespace_and_cgroup() {
    let ns = NetNs::new("probe").unwrap();
    let cg = Cgroup::new("probe").unwrap();
    let links = ns.exec("ip", &["-o", "link"]).unwrap();
    assert_eq!(links.lines().count(), 1, "only lo: {links}");
    let dad = ns
        .within(|| std::fs::read_to_string("/proc/sys/net/ipv6/conf/default/accept_dad"))
        .unwrap()
        .unwrap();
    assert_eq!(dad.trim(), "0");
    let out = process::run_bounded(
        Command::new("cat").arg("/proc/self/cgroup"),
        &ns,
        Some(&cg),
        Duration::from_secs(5),
    )
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let name = cg
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(text.contains(&format!("0::/{name}")), "{text}");
}

#[test]
fn guards_leave_nothing_behind() {
    let c = cluster();
    let names: Vec<String> = [&c.node.netns, &c.client.netns]
        .into_iter()
        .chain(c.pods.iter().map(|p| &p.netns))
        .map(|n| n.name().to_owned())
        .collect();
    assert!(names.iter().all(|n| n.starts_with("sy-")));
    let cgroup_dir = c.client.cgroup.path().to_owned();
    let bpffs_dir = c.node.bpffs.path().to_owned();
    let scratch_dir = c.scratch.path().to_owned();
    // A stray process in the cgroup must not keep it alive: the guard kills it.
    let mut sleeper = Command::new("sleep");
    sleeper.arg("600");
    let stray = process::prepare(&mut sleeper, &c.client.netns, Some(&c.client.cgroup))
        .and_then(|()| Ok(sleeper.spawn()?))
        .unwrap();
    assert_eq!(
        c.client.cgroup.pids().unwrap(),
        [i32::try_from(stray.id()).unwrap()]
    );
    assert!(mounted(&bpffs_dir));
    drop(c);
    let left = netns::list().unwrap();
    for name in &names {
        assert!(!left.contains(name), "netns {name} left behind");
    }
    assert!(!cgroup_dir.exists(), "{} left behind", cgroup_dir.display());
    assert!(!mounted(&bpffs_dir), "bpffs still mounted");
    assert!(!bpffs_dir.exists() && !scratch_dir.exists());
    let mut stray = stray;
    let _ = stray.wait(); // reap: it was SIGKILLed by the cgroup guard
}

#[test]
fn cgroup2_mount_is_found() {
    let root = cgroup::cgroup2_mount().unwrap();
    if let Some(root) = root {
        assert!(PathBuf::from(&root).join("cgroup.procs").exists());
    }
}

fn mounted(path: &std::path::Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = path.to_string_lossy();
    info.lines()
        .any(|l| l.split_whitespace().nth(4) == Some(path.as_ref()))
}
