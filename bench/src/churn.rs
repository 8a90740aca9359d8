//! Sustained NodePort churn to a backend on another node: short
//! connections from outside through the node for minutes on end, each one
//! NATed to the node and closed with a FIN, as clients close. Every closed
//! connection leaves its NAT port in TIME_WAIT, so what this measures is
//! whether ports come back as fast as connections close: the rate, and the
//! connections that failed.
//! Switchyard's per-packet path against kube-proxy's iptables rules
//! (DNAT, then MASQUERADE on netfilter's conntrack), runs interleaved.

use std::{net::SocketAddrV4, time::Duration};

use anyhow::Result;
use switchyard_tests::kube_proxy_rules::rule_set::{self, RuleSet};

use crate::{
    agent_run::{self, RunningAgent},
    catalog::Catalog,
    load_result::LoadResult,
    progress::Progress,
    results::{Mode, NodePortResult},
    rig::{NODE_CLIENT_SIDE, PACKET_DEVICES, REMOTE_POD, Rig},
    scenario::Options,
    traffic::{self, Origin, Test},
};

/// A NodePort of its own, so no other test's state is in the way.
const CHURN_NODE_PORT: u16 = 30090;
const TIME_WAIT_SYSCTL: &str = "net/netfilter/nf_conntrack_tcp_timeout_time_wait";
/// The kernel's default.
const NETFILTER_TIME_WAIT_S: &str = "120";

/// Switchyard, then iptables, `runs` times each, every run `duration`
/// long.
pub fn node_port_churn(
    rig: &Rig,
    options: &Options,
    (duration, runs): (Duration, usize),
    progress: &mut Progress,
) -> Result<Vec<NodePortResult>> {
    let catalog = Catalog::new(0, &[REMOTE_POD], options.seed).with_node_port(CHURN_NODE_PORT);
    let target = SocketAddrV4::new(NODE_CLIENT_SIDE, CHURN_NODE_PORT);
    let mut switchyard = Vec::new();
    let mut iptables = Vec::new();
    for run in 0..runs {
        let label = |mode: &str| {
            format!(
                "NodePort churn to a remote pod, {mode}, run {}/{}",
                run + 1,
                runs
            )
        };
        progress.step(&label("Switchyard"));
        let (running, _) = RunningAgent::start(
            rig,
            &options.agent,
            &catalog.services,
            &agent_run::devices(PACKET_DEVICES),
            options.agent_log("node-port-churn"),
            options.ready_timeout,
        )?;
        let measured = measure(rig, target, duration);
        running.stop()?;
        switchyard.push(measured?);
        progress.step(&label("iptables"));
        // netfilter's own TIME_WAIT timeout, as on a kube-proxy node (the
        // rig shortens it for the other figures).
        rig.node.sysctl(TIME_WAIT_SYSCTL, NETFILTER_TIME_WAIT_S)?;
        RuleSet::Iptables.load(&rig.node, &catalog.services, rig.scratch.path())?;
        let measured = measure(rig, target, duration);
        rule_set::clear(&rig.node)?;
        rig.node
            .sysctl(TIME_WAIT_SYSCTL, crate::rig::SHORT_TIME_WAIT_S)?;
        iptables.push(measured?);
    }
    Ok(vec![
        NodePortResult {
            mode: Mode::Switchyard,
            samples: switchyard,
        },
        NodePortResult {
            mode: Mode::Iptables,
            samples: iptables,
        },
    ])
}

fn measure(rig: &Rig, target: SocketAddrV4, duration: Duration) -> Result<LoadResult> {
    traffic::run(
        rig,
        Test::ConnectRequestFin,
        target,
        duration,
        Origin::Outside,
    )
}
