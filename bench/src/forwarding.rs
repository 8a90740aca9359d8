//! NodePort forwarding per node core: one flow from outside through the
//! node to a backend on another node, as a UDP flood of small datagrams
//! (the forward path) and as a TCP stream from the backend (the reply path,
//! its ACKs the forward one). Switchyard's tc path against kube-proxy's
//! iptables DNAT and MASQUERADE on netfilter's conntrack, and against
//! direct routing to the pod, runs interleaved.
//!
//! "Per core" is measured, not assumed: receive packet steering (RPS) puts
//! all of the node's packet work on one core (`NODE_CPU`) and everything
//! else (client, node-2, the pod) on the other, so the node's cost per
//! packet is that core's busy time over the packets the node sent on. A
//! mode that does less per packet forwards more per second of that core,
//! whether or not the client can saturate it.

use std::{
    net::SocketAddrV4,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use switchyard_tests::{
    NetNs, Protocol,
    kube_proxy_rules::rule_set::{self, RuleSet},
};

use crate::{
    agent_run::{self, RunningAgent},
    catalog::{Catalog, TARGET_PORT},
    hook_cost, packet_counters,
    progress::Progress,
    results::{ForwardingResult, ForwardingSample, ForwardingTest, Mode},
    rig::{CLIENT_CPU, NODE_CLIENT_SIDE, PACKET_DEVICES, REMOTE_POD, Rig, SERVER_CPU},
    scenario::Options,
    traffic::{self, Origin, Test},
    xdp_forwarding::{self, XdpRig},
};

/// NodePorts of their own, so no other figure's state is in the way.
const UDP_NODE_PORT: u16 = 30092;
const TCP_NODE_PORT: u16 = 30093;
/// The core the node's packet work is steered to.
const NODE_CPU: usize = SERVER_CPU;
/// The node's devices, towards the client and towards node-2.
const NODE_TO_CLIENT: &str = "vcl";
const NODE_TO_NODE2: &str = "vn2";

/// Every mode `options.runs` times per test, interleaved.
pub fn node_port_forwarding(
    rig: &Rig,
    options: &Options,
    progress: &mut Progress,
) -> Result<Vec<ForwardingResult>> {
    let _steering = Steering::on(rig)?;
    // What the agent's programs cost per packet, beside what the node's
    // core spent (two clock reads per program run while on: tens of ns
    // against microseconds per packet).
    let _stats = hook_cost::enable()?;
    // The backend's server moves off the node's core for the duration.
    rig.remote_pod.pin_server(CLIENT_CPU)?;
    let measured = measure_all(rig, options, progress);
    rig.remote_pod.pin_server(SERVER_CPU)?;
    measured
}

fn measure_all(
    rig: &Rig,
    options: &Options,
    progress: &mut Progress,
) -> Result<Vec<ForwardingResult>> {
    let mut results = Vec::new();
    for test in [ForwardingTest::Udp, ForwardingTest::Tcp] {
        let (protocol, node_port, load) = match test {
            ForwardingTest::Udp => (Protocol::Udp, UDP_NODE_PORT, Test::UdpFlood),
            ForwardingTest::Tcp => (Protocol::Tcp, TCP_NODE_PORT, Test::Stream),
        };
        let catalog = Catalog::new(0, &[REMOTE_POD], options.seed)
            .with_node_port(node_port)
            .with_protocol(protocol);
        let node_port = SocketAddrV4::new(NODE_CLIENT_SIDE, node_port);
        let direct = SocketAddrV4::new(REMOTE_POD, TARGET_PORT);
        let mut samples: [Vec<ForwardingSample>; 5] = Default::default();
        for run in 0..options.runs {
            progress.step(&format!(
                "NodePort forwarding, {}, run {}/{}",
                test.label(),
                run + 1,
                options.runs
            ));
            progress.detail("direct");
            samples[0].push(measure(rig, options, load, direct, None)?);
            progress.detail("Switchyard");
            let (running, _) = RunningAgent::start(
                rig,
                &options.agent,
                &catalog.services,
                &agent_run::devices(PACKET_DEVICES),
                options.agent_log("node-port-forwarding"),
                options.ready_timeout,
            )?;
            let measured = measure(rig, options, load, node_port, Some(&agent_pins(rig)));
            running.stop()?;
            samples[1].push(measured?);
            progress.detail("iptables");
            RuleSet::Iptables.load(&rig.node, &catalog.services, rig.scratch.path())?;
            let measured = measure(rig, options, load, node_port, None);
            rule_set::clear(&rig.node)?;
            samples[2].push(measured?);
            progress.detail("Switchyard (XDP)");
            samples[3].push(measure_xdp(rig, options, &catalog, load, node_port)?);
            if matches!(load, Test::UdpFlood) {
                // One way only: the bare redirect translates nothing, so
                // no reply could find its way back.
                progress.detail("bare XDP redirect");
                let _rig_for_xdp = XdpRig::prepare(rig)?;
                let _bare = xdp_forwarding::attach_bare(rig)?;
                XdpRig::pin_receive_work(rig, false)?;
                // node-2 drops what arrives (not its address): what the node
                // sent on is what counts.
                samples[4].push(measure(rig, options, load, node_port, None)?);
            }
        }
        let [direct, switchyard, iptables, xdp, bare] = samples;
        for (mode, samples) in [
            (Mode::Direct, direct),
            (Mode::Switchyard, switchyard),
            (Mode::Iptables, iptables),
            (Mode::SwitchyardXdp, xdp),
            (Mode::BareXdp, bare),
        ] {
            if samples.is_empty() {
                continue;
            }
            results.push(ForwardingResult {
                test,
                mode,
                samples,
            });
        }
    }
    Ok(results)
}

/// Switchyard at XDP: the rig prepared (see `xdp_forwarding`), the agent
/// started with `--xdp native`, the receive work pinned once XDP is on.
fn measure_xdp(
    rig: &Rig,
    options: &Options,
    catalog: &Catalog,
    load: Test,
    target: SocketAddrV4,
) -> Result<ForwardingSample> {
    let _rig_for_xdp = XdpRig::prepare(rig)?;
    let mut args = agent_run::devices(PACKET_DEVICES);
    args.extend(["--xdp".to_owned(), "native".to_owned()]);
    let (running, _) = RunningAgent::start(
        rig,
        &options.agent,
        &catalog.services,
        &args,
        options.agent_log("node-port-forwarding-xdp"),
        options.ready_timeout,
    )?;
    let measured = XdpRig::pin_receive_work(rig, true)
        .and_then(|()| measure(rig, options, load, target, Some(&agent_pins(rig))));
    running.stop()?;
    measured
}

/// Where the running agent pins its links.
fn agent_pins(rig: &Rig) -> PathBuf {
    rig.bpffs.join("switchyard")
}

/// One run: what the node sent on out of the device the data leaves by,
/// what its core spent doing it, and with an agent's `pins`, what its
/// programs ran for.
fn measure(
    rig: &Rig,
    options: &Options,
    load: Test,
    target: SocketAddrV4,
    pins: Option<&Path>,
) -> Result<ForwardingSample> {
    let programs_before = pins.map(hook_cost::read_packet_programs).transpose()?;
    let counters_before = pins.map(packet_counters::read).transpose()?;
    let device = match load {
        Test::Stream => NODE_TO_CLIENT,
        _ => NODE_TO_NODE2,
    };
    let before = (tx_counters(&rig.node, device)?, busy_seconds(NODE_CPU)?);
    let result = traffic::run(rig, load, target, options.run, Origin::Outside)?;
    let after = (tx_counters(&rig.node, device)?, busy_seconds(NODE_CPU)?);
    let (programs, counters) = match (pins, programs_before, counters_before) {
        (Some(pins), Some(programs), Some(counters)) => (
            Some(hook_cost::read_packet_programs(pins)?.since(&programs)),
            Some(packet_counters::since(
                &packet_counters::read(pins)?,
                &counters,
            )),
        ),
        _ => (None, None),
    };
    Ok(ForwardingSample {
        packets: after.0.0 - before.0.0,
        bytes: after.0.1 - before.0.1,
        node_cpu_s: after.1 - before.1,
        elapsed_s: result.elapsed_s,
        sent: result.operations,
        programs,
        counters,
    })
}

/// Packets and bytes `device` in `netns` has sent.
fn tx_counters(netns: &NetNs, device: &str) -> Result<(u64, u64)> {
    let json = netns.ip(&["-s", "-j", "link", "show", "dev", device])?;
    let links: serde_json::Value = serde_json::from_str(&json)?;
    let tx = &links[0]["stats64"]["tx"];
    let field = |name: &str| {
        tx[name]
            .as_u64()
            .with_context(|| format!("no tx {name} for {device} in {json}"))
    };
    Ok((field("packets")?, field("bytes")?))
}

/// Seconds `cpu` has spent not idle since boot (/proc/stat: user, nice,
/// system, irq, softirq and steal).
fn busy_seconds(cpu: usize) -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let label = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|line| line.split_whitespace().next() == Some(label.as_str()))
        .with_context(|| format!("no {label} in /proc/stat"))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum();
    // SAFETY: sysconf only reads a constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    #[expect(
        clippy::cast_precision_loss,
        reason = "clock ticks since boot, far below 2^52"
    )]
    Ok(busy as f64 / per_second as f64)
}

/// RPS masks that put the node's receive work on `NODE_CPU` and the rest
/// of the rig's on `CLIENT_CPU`; undone on drop.
struct Steering<'a> {
    devices: Vec<(&'a NetNs, &'static str)>,
}

impl<'a> Steering<'a> {
    fn on(rig: &'a Rig) -> Result<Self> {
        let steering = Self {
            devices: vec![
                (&rig.node, NODE_TO_CLIENT),
                (&rig.node, NODE_TO_NODE2),
                (&rig.client, "eth0"),
                (&rig.node2, "eth0"),
            ],
        };
        for (index, (netns, device)) in steering.devices.iter().enumerate() {
            let cpu = if index < 2 { NODE_CPU } else { CLIENT_CPU };
            set_rps(netns, device, 1 << cpu)?;
        }
        Ok(steering)
    }
}

impl Drop for Steering<'_> {
    fn drop(&mut self) {
        for (netns, device) in &self.devices {
            // Best effort: the namespaces go with the rig anyway.
            let _ = set_rps(netns, device, 0);
        }
    }
}

/// Writes `device`'s RPS mask. sysfs shows the namespace it was mounted in,
/// so the write goes through `ip netns exec`, which mounts the namespace's
/// own.
fn set_rps(netns: &NetNs, device: &str, mask: u32) -> Result<()> {
    let script = format!("echo {mask:x} > /sys/class/net/{device}/queues/rx-0/rps_cpus");
    switchyard_tests::command::ip(&["netns", "exec", netns.name(), "sh", "-c", &script])
        .with_context(|| format!("RPS on {device} in {}", netns.name()))?;
    Ok(())
}
