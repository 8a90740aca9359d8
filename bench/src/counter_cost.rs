//! What the per-Service counters cost the hot paths: the kernel's own
//! run-time statistics of the connect4 hook (connections to a ClusterIP
//! from a pod) and of tc_ingress (a UDP flood to a NodePort from outside,
//! established-flow packets), each with the counters on and with
//! `--service-counters=false`, interleaved run by run so the machine's
//! drift falls on both alike.

use std::{fmt::Write as _, net::SocketAddrV4};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use switchyard_tests::Protocol;

use crate::{
    agent_run::{self, RunningAgent},
    catalog::{Catalog, Placement},
    hook_cost::{self, RunStats},
    progress::Progress,
    report::{Measured, Target},
    rig::{NODE_CLIENT_SIDE, PACKET_DEVICES, REMOTE_POD, Rig},
    scenario::Options,
    traffic::{self, Origin, Test},
};

/// Its own NodePort, clear of the other figures'.
const NODE_PORT: u16 = 30094;
/// The device a NodePort packet from the client arrives by.
const CLIENT_DEVICE: &str = "vcl";
/// What the issue allows the counters to add to either hook.
pub const COST_NS: f64 = 30.0;

/// Mean kernel nanoseconds per run of each hook, with counters on and off.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CounterCost {
    pub connect_on: RunStats,
    pub connect_off: RunStats,
    pub packet_on: RunStats,
    pub packet_off: RunStats,
}

impl CounterCost {
    pub fn connect_added_ns(&self) -> Option<f64> {
        Some(self.connect_on.ns_per_run()? - self.connect_off.ns_per_run()?)
    }

    pub fn packet_added_ns(&self) -> Option<f64> {
        Some(self.packet_on.ns_per_run()? - self.packet_off.ns_per_run()?)
    }
}

pub fn measure(rig: &Rig, options: &Options, progress: &mut Progress) -> Result<CounterCost> {
    let pods: Vec<_> = rig.pods.iter().map(|pod| pod.ip).collect();
    let cluster_ips = Catalog::new(100, &pods, options.seed);
    let service = cluster_ips.probe(Placement::Last).frontend();
    let node_port = Catalog::new(0, &[REMOTE_POD], options.seed)
        .with_node_port(NODE_PORT)
        .with_protocol(Protocol::Udp);
    let node_port_target = SocketAddrV4::new(NODE_CLIENT_SIDE, NODE_PORT);
    let _stats = hook_cost::enable()?;
    let mut cost = CounterCost::default();
    for run in 0..options.runs {
        for counters in [true, false] {
            progress.step(&format!(
                "counter cost, counters {}, run {}/{}",
                if counters { "on" } else { "off" },
                run + 1,
                options.runs
            ));
            let args = if counters {
                Vec::new()
            } else {
                vec!["--service-counters=false".to_owned()]
            };
            let connect = timed(rig, options, &cluster_ips, &args, "connect4", || {
                traffic::run(
                    rig,
                    Test::ConnectRequestClose,
                    service,
                    options.run,
                    Origin::Pod,
                )
            })?;
            let packet_program = format!("tc_ingress@{CLIENT_DEVICE}");
            let mut node_port_args = args.clone();
            node_port_args.extend(agent_run::devices(PACKET_DEVICES));
            let packet = timed(
                rig,
                options,
                &node_port,
                &node_port_args,
                &packet_program,
                || {
                    traffic::run(
                        rig,
                        Test::UdpFlood,
                        node_port_target,
                        options.run,
                        Origin::Outside,
                    )
                },
            )?;
            let (connect_total, packet_total) = if counters {
                (&mut cost.connect_on, &mut cost.packet_on)
            } else {
                (&mut cost.connect_off, &mut cost.packet_off)
            };
            connect_total.add(&connect);
            packet_total.add(&packet);
        }
    }
    Ok(cost)
}

/// Starts the agent on `catalog`, runs `load`, and returns what `program`
/// ran meanwhile.
fn timed<T>(
    rig: &Rig,
    options: &Options,
    catalog: &Catalog,
    args: &[String],
    program: &str,
    load: impl FnOnce() -> Result<T>,
) -> Result<RunStats> {
    let (running, _) = RunningAgent::start(
        rig,
        &options.agent,
        &catalog.services,
        args,
        options.agent_log("counter-cost"),
        options.ready_timeout,
    )?;
    let pins = rig.bpffs.join("switchyard");
    let before = hook_cost::read(&pins, program)?;
    let loaded = load();
    let after = hook_cost::read(&pins, program);
    running.stop()?;
    loaded?;
    Ok(after?.since(&before))
}

pub(crate) fn section(out: &mut String, cost: Option<&CounterCost>) {
    let Some(cost) = cost else { return };
    out.push_str("### What the per-Service counters cost\n\n");
    out.push_str("Kernel time per run of each hook (BPF run-time statistics), counters on and off (`--service-counters=false`), interleaved.\n\n");
    out.push_str("| hook | counters on (ns) | off (ns) | added (ns) |\n|---|---:|---:|---:|\n");
    let fmt = |v: Option<f64>| v.map_or_else(|| "–".to_owned(), |v| format!("{v:.1}"));
    for (hook, on, off, added) in [
        (
            "connect4 (a connect to a ClusterIP)",
            &cost.connect_on,
            &cost.connect_off,
            cost.connect_added_ns(),
        ),
        (
            "tc_ingress (a NodePort packet of an established UDP flow)",
            &cost.packet_on,
            &cost.packet_off,
            cost.packet_added_ns(),
        ),
    ] {
        let _infallible = writeln!(
            out,
            "| {hook} | {} | {} | {} |",
            fmt(on.ns_per_run()),
            fmt(off.ns_per_run()),
            fmt(added)
        );
    }
    out.push('\n');
}

pub(crate) fn targets(cost: Option<&CounterCost>) -> Vec<Target> {
    let added = |value: Option<f64>, what: &str| -> Measured {
        value.map(|ns| (ns, format!("{ns:+.1} ns {what}")))
    };
    vec![
        Target {
            asks: "per-Service counters add at most 30 ns to the connect hook".into(),
            measured: added(cost.and_then(CounterCost::connect_added_ns), "per connect"),
            met: |ns| ns <= COST_NS,
        },
        Target {
            asks: "per-Service counters add at most 30 ns to the tc path".into(),
            measured: added(cost.and_then(CounterCost::packet_added_ns), "per packet"),
            met: |ns| ns <= COST_NS,
        },
    ]
}
