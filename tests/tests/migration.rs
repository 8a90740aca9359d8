//! Moving a node from kube-proxy to Switchyard and back, with traffic the
//! whole time (see `migration_lab`): kube-proxy's rules in its exact shape,
//! iptables or nftables; TCP connections established through them and
//! through Switchyard kept open across every step; a steady stream of new
//! TCP and UDP connections to ClusterIPs from a pod and to NodePorts from
//! outside during each step. Every step must fail none of them and reset
//! none. Needs root; run with --test-threads=1.

mod support;

use std::{
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use support::{get, series};
use switchyard_tests::{
    Agent, AgentConfig, PendingSummary, Prober, Summary,
    client::Paced,
    kube_proxy_rules::rule_set::RuleSet,
    migration_lab::{DNS, MigrationLab, OUTSIDE, OUTSIDE_DEVICE, SERVICES, WEB},
};

/// A new connection of each kind every this long.
const CHURN_INTERVAL: Duration = Duration::from_millis(50);
/// An established connection is used every this long.
const HOLD_INTERVAL: Duration = Duration::from_millis(100);
/// The longest any probe may run (they are stopped by file long before).
const LONGEST: Duration = Duration::from_mins(5);
/// Traffic before and after each step's action.
const SETTLE: Duration = Duration::from_secs(2);
/// The conntrack timeouts the hand-back judges UDP flows by: short, so the
/// drain ends once the stream of UDP clients has moved to kube-proxy.
const SHORT_UDP: [&str; 2] = [
    "--conntrack-udp-timeout=2s",
    "--conntrack-udp-timeout-stream=2s",
];

/// Probes started together and stopped by one file.
struct Traffic {
    stop: PathBuf,
    probes: Vec<(String, PendingSummary)>,
}

impl Traffic {
    fn start(
        lab: &MigrationLab,
        name: &str,
        wanted: &[(&str, Prober<'_>, Paced, std::net::SocketAddr)],
    ) -> Self {
        let stop = lab.scratch.join(format!("stop-{name}"));
        let probes = wanted
            .iter()
            .map(|(label, prober, probe, to)| {
                let interval = if *probe == Paced::Hold {
                    HOLD_INTERVAL
                } else {
                    CHURN_INTERVAL
                };
                let out = lab.scratch.join(format!("{name}-{label}.json"));
                let pending = prober
                    .spawn_until(*probe, *to, interval, (&stop, LONGEST), out)
                    .unwrap();
                ((*label).to_owned(), pending)
            })
            .collect();
        Self { stop, probes }
    }

    /// Stops every probe and asserts none failed (a reset counts as one).
    fn stop_and_check(self, step: &str) -> Vec<(String, Summary)> {
        std::fs::write(&self.stop, b"stop").unwrap();
        let summaries: Vec<(String, Summary)> = self
            .probes
            .into_iter()
            .map(|(label, pending)| (label, pending.wait().unwrap()))
            .collect();
        for (label, summary) in &summaries {
            assert!(
                summary.failures == 0 && summary.requests > 0,
                "{step}: {label}: {} of {} failed: {:?}",
                summary.failures,
                summary.requests,
                summary.errors
            );
        }
        summaries
    }
}

/// New TCP and UDP connections to both Services' ClusterIPs from the pod
/// and NodePorts from outside, for the length of `action` and a little on
/// either side of it.
fn step<T>(lab: &MigrationLab, name: &str, action: impl FnOnce() -> T) -> T {
    let mut wanted = Vec::new();
    for service in SERVICES {
        let udp = service.protocol == switchyard_tests::Protocol::Udp;
        wanted.push((
            if udp {
                "udp-cluster-ip"
            } else {
                "tcp-cluster-ip"
            },
            lab.from_pod(),
            Paced::Churn { udp },
            service.cluster_ip_addr(),
        ));
        wanted.push((
            if udp {
                "udp-node-port"
            } else {
                "tcp-node-port"
            },
            lab.from_outside(),
            Paced::Churn { udp },
            service.node_port_addr(),
        ));
    }
    let traffic = Traffic::start(lab, name, &wanted);
    thread::sleep(SETTLE);
    let out = action();
    thread::sleep(SETTLE);
    let summaries = traffic.stop_and_check(name);
    eprintln!("{name}: {summaries:?}");
    out
}

/// TCP connections kept open from here to the end: from the pod to the
/// ClusterIP, and from outside to the NodePort.
fn established(lab: &MigrationLab, name: &str, cluster_ip: bool, node_port: bool) -> Traffic {
    let mut held = Vec::new();
    if cluster_ip {
        held.push((
            "held-cluster-ip",
            lab.from_pod(),
            Paced::Hold,
            WEB.cluster_ip_addr(),
        ));
    }
    if node_port {
        held.push((
            "held-node-port",
            lab.from_outside(),
            Paced::Hold,
            WEB.node_port_addr(),
        ));
    }
    Traffic::start(lab, name, &held)
}

fn metrics(lab: &MigrationLab) -> String {
    get(&lab.node, 10249, "/metrics").1
}

/// New connections took Switchyard's paths: the socket hooks for the pod,
/// the per-packet path from outside.
fn assert_switchyard_serves(lab: &MigrationLab) {
    let exposition = metrics(lab);
    for path in ["socket", "packet"] {
        let connections = series(
            &exposition,
            "switchyard_service_connections_total",
            &[("service", WEB.name), ("path", path)],
        );
        assert!(connections.unwrap_or(0.0) > 0.0, "{path}: {connections:?}");
    }
}

fn assert_kube_proxy_rules(lab: &MigrationLab, present: bool) {
    let ruleset = lab.netfilter_ruleset().unwrap();
    let found = ruleset.contains("KUBE-SERVICES") || ruleset.contains("table ip kube-proxy");
    assert_eq!(found, present, "{ruleset}");
}

/// Nothing of Switchyard's is left: no pins, no program on the device.
fn assert_switchyard_gone(lab: &MigrationLab, agent: &Agent<'_>) {
    assert!(!agent.config().bpffs.exists(), "pins left behind");
    let filters = lab
        .node
        .exec("tc", &["filter", "show", "dev", OUTSIDE_DEVICE, "ingress"])
        .unwrap_or_default();
    assert!(!filters.contains("bpf"), "{filters}");
}

/// How kube-proxy's rules are removed.
#[derive(Clone, Copy, Debug)]
enum Takeover {
    /// The agent restarted with `--cleanup-kube-proxy`, as a changed
    /// DaemonSet would roll it: the restart itself must drop nothing either.
    Restart,
    /// `switchyard cleanup-kube-proxy` run on the node.
    ByHand,
}

fn take_over(lab: &MigrationLab, agent: &mut Agent<'_>, mode: RuleSet, how: Takeover) {
    match how {
        Takeover::Restart => {
            agent
                .config_mut()
                .extra_args
                .push("--cleanup-kube-proxy".into());
            agent.restart().unwrap();
            let kind = match mode {
                RuleSet::Iptables => "iptables_chains",
                RuleSet::Nftables => "nftables_tables",
            };
            support::time_until(Duration::from_secs(30), || {
                series(
                    &metrics(lab),
                    "switchyard_kube_proxy_rules_removed",
                    &[("kind", kind)],
                )
                .is_some_and(|removed| removed > 0.0)
            });
        }
        Takeover::ByHand => {
            let bin = agent.config().bin.clone();
            let removed = lab
                .node
                .exec(bin.to_str().unwrap(), &["cleanup-kube-proxy"])
                .unwrap();
            let wanted = match mode {
                RuleSet::Iptables => "iptables chains, 0 nftables tables",
                RuleSet::Nftables => "removed 0 iptables chains, 1 nftables tables",
            };
            assert!(removed.contains(wanted), "{removed}");
        }
    }
}

/// The whole journey on one node, the agent started as `configure` says.
/// `started` checks the running agent before anything else happens.
fn migrate(
    mode: RuleSet,
    how: Takeover,
    configure: impl FnOnce(&MigrationLab) -> AgentConfig,
    started: impl FnOnce(&MigrationLab, &Agent<'_>),
) {
    let lab = MigrationLab::up().unwrap();
    lab.load_kube_proxy(mode).unwrap();
    for service in SERVICES {
        let answered = if service.protocol == switchyard_tests::Protocol::Udp {
            lab.from_outside()
                .udp(service.node_port_addr(), 1, false)
                .unwrap()
        } else {
            lab.from_outside().tcp(service.node_port_addr(), 1).unwrap()
        };
        assert!(
            answered.iter().all(|a| a.ok),
            "{}: {answered:?}",
            service.name
        );
    }
    let through_kube_proxy = established(&lab, "through-kube-proxy", true, true);

    let config = configure(&lab);
    let mut agent = step(&lab, "side-by-side", || {
        Agent::start(config, &lab.node).unwrap()
    });
    assert_switchyard_serves(&lab);
    started(&lab, &agent);
    let through_switchyard = established(&lab, "through-switchyard", true, true);

    step(&lab, "takeover", || take_over(&lab, &mut agent, mode, how));
    assert_kube_proxy_rules(&lab, false);

    // Handing back: kube-proxy serves again, the agent stops, and `cleanup`
    // drains what Switchyard carries while new connections go to
    // kube-proxy; the connections held open end during the drain.
    step(&lab, "hand-back", || {
        lab.load_kube_proxy(mode).unwrap();
        agent.stop().unwrap();
        thread::scope(|scope| {
            let cleanup = scope.spawn(|| agent.cleanup_draining(LONGEST, &SHORT_UDP));
            thread::sleep(SETTLE * 2);
            through_kube_proxy.stop_and_check("held through kube-proxy");
            through_switchyard.stop_and_check("held through switchyard");
            let output = cleanup.join().unwrap().unwrap();
            let said = String::from_utf8_lossy(&output.stderr);
            assert!(!said.contains("still live"), "{said}");
        });
    });
    assert_switchyard_gone(&lab, &agent);
    assert_kube_proxy_rules(&lab, true);
    // kube-proxy alone again.
    step(&lab, "kube-proxy again", || ());
    let _ = DNS;
}

#[test]
fn an_iptables_node_is_taken_over_by_the_agent_and_handed_back() {
    migrate(
        RuleSet::Iptables,
        Takeover::Restart,
        MigrationLab::agent_config,
        |_, _| (),
    );
}

#[test]
fn an_nftables_node_is_taken_over_by_hand_and_handed_back() {
    migrate(
        RuleSet::Nftables,
        Takeover::ByHand,
        MigrationLab::agent_config,
        |_, _| (),
    );
}

/// A KubeProxyConfiguration as operators have it, with what it must show
/// once the agent runs from it.
struct ConfigCase {
    file: &'static str,
    how: Takeover,
    /// A field the agent must name as ignored at start (`None`: it names none).
    ignored: Option<&'static str>,
    /// What `switchyard explain` must say about masquerading a ClusterIP's
    /// client from outside: the file's rule reached the kernel.
    masquerade: &'static str,
}

const CONFIG_CASES: [ConfigCase; 3] = [
    ConfigCase {
        file: "kubeadm.yaml",
        how: Takeover::Restart,
        ignored: Some("bindAddress is ignored"),
        masquerade: "detect-local by CIDR: the client is outside the cluster's pod CIDRs",
    },
    ConfigCase {
        file: "kind.yaml",
        how: Takeover::ByHand,
        ignored: None,
        masquerade: "detect-local by CIDR: the client is outside the cluster's pod CIDRs",
    },
    ConfigCase {
        file: "tuned-nftables.yaml",
        how: Takeover::Restart,
        ignored: Some("clientConnection.qps is ignored"),
        masquerade: "masquerade-all: every client is NATed",
    },
];

/// The same journey with the agent started from kube-proxy's own
/// configuration files (the ones the config unit tests read), the rule
/// set in the mode each file names: the file works unchanged, and what it
/// says reaches the node.
#[test]
fn nodes_configured_by_kube_proxy_files_are_taken_over_and_handed_back() {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../proxy/tests/fixtures/kube-proxy-config");
    for case in CONFIG_CASES {
        let file = dir.join(case.file);
        let text = std::fs::read_to_string(&file).unwrap();
        let document: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        // kube-proxy on Linux runs iptables when the file names no mode.
        let mode = match document["mode"].as_str().unwrap_or_default() {
            "" | "iptables" => RuleSet::Iptables,
            "nftables" => RuleSet::Nftables,
            other => panic!("{}: mode {other} has no rule set in the lab", case.file),
        };
        eprintln!("{}: {mode:?}, {:?}", case.file, case.how);
        migrate(
            mode,
            case.how,
            |lab| lab.agent_config_from_file(&file),
            |lab, agent| {
                let log = agent.log();
                match case.ignored {
                    Some(line) => assert!(log.contains(line), "{}: {log}", case.file),
                    None => assert!(!log.contains("is ignored"), "{}: {log}", case.file),
                }
                let bin = agent.config().bin.to_str().unwrap().to_owned();
                let pins = agent.config().bpffs.to_str().unwrap().to_owned();
                let client = OUTSIDE.to_string();
                let cluster_ip = WEB.cluster_ip_addr().to_string();
                let explained = lab
                    .node
                    .exec(
                        &bin,
                        &[
                            "explain",
                            "tcp",
                            &client,
                            &cluster_ip,
                            "--from",
                            "outside",
                            "--bpffs",
                            &pins,
                        ],
                    )
                    .unwrap();
                assert!(
                    explained.contains(case.masquerade),
                    "{}: {explained}",
                    case.file
                );
            },
        );
    }
}
