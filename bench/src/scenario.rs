//! One scale of the benchmark: the same catalog served by each mode in
//! turn (direct, Switchyard, iptables, nftables), each measured the same
//! way, each leaving the node bare for the next.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Result, bail};
use switchyard_tests::kube_proxy_rules::rule_set::{self, RuleSet};

use crate::{
    agent_run::{self, RunningAgent},
    catalog::{Catalog, KubeProxyService, Placement, TARGET_PORT},
    hook_cost::{self, RunStats},
    load_result::{LoadResult, monotonic_ns},
    progress::Progress,
    results::{CrrSample, Mode, ModeResult, NodePortResult, Scale},
    rig::{NODE_CLIENT_SIDE, Rig},
    traffic::{self, Origin, Test, Watch},
};

/// How long one endpoint change may take before the run calls it lost.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Quiet time between changes, so each is measured on its own and not
/// coalesced with the previous one by the agent's minimum sync interval.
const CHANGE_SPACING: Duration = Duration::from_millis(150);

pub struct Options {
    pub agent: PathBuf,
    pub run: Duration,
    pub runs: usize,
    pub changes: usize,
    pub seed: u64,
    pub ready_timeout: Duration,
    pub modes: Vec<Mode>,
    /// Where each agent start writes its log (kept with the report).
    pub logs: PathBuf,
}

impl Options {
    /// A fresh log file per agent start: readiness is read from its lines.
    pub(crate) fn agent_log(&self, what: &str) -> PathBuf {
        let path = self.logs.join(format!("agent-{what}.log"));
        let _ = std::fs::remove_file(&path);
        path
    }
}

/// What to measure at this scale besides connection rates.
#[derive(Clone, Copy)]
pub struct Extras {
    pub established: bool,
    pub changes: bool,
}

pub fn measure(
    rig: &Rig,
    options: &Options,
    services: usize,
    extras: Extras,
    progress: &mut Progress,
) -> Result<Scale> {
    let catalog = Catalog::new(services, &rig.pod_ips(), options.seed);
    let mut modes = Vec::new();
    for mode in options.modes.iter().copied() {
        progress.step(&format!("N={services} {}", mode.label()));
        let result = match mode {
            Mode::Direct => direct(rig, options, extras, progress)?,
            Mode::Switchyard => switchyard(rig, options, &catalog, extras, progress)?,
            Mode::Iptables => {
                netfilter_mode(rig, options, &catalog, extras, RuleSet::Iptables, progress)?
            }
            Mode::Nftables => {
                netfilter_mode(rig, options, &catalog, extras, RuleSet::Nftables, progress)?
            }
            Mode::SwitchyardXdp | Mode::BareXdp => {
                anyhow::bail!("{} is measured in NodePort forwarding only", mode.label())
            }
        };
        modes.push(result);
    }
    Ok(Scale { services, modes })
}

fn direct(
    rig: &Rig,
    options: &Options,
    extras: Extras,
    progress: &mut Progress,
) -> Result<ModeResult> {
    let mut result = ModeResult::new(Mode::Direct);
    let target = SocketAddrV4::new(rig.pods[0].ip, TARGET_PORT);
    for run in 0..options.runs {
        progress.detail(&format!("connections, run {}/{}", run + 1, options.runs));
        result.crr.push(CrrSample {
            placement: None,
            result: traffic::run(
                rig,
                Test::ConnectRequestClose,
                target,
                options.run,
                Origin::Pod,
            )?,
        });
    }
    if extras.established {
        established(rig, options, target, &mut result, progress)?;
    }
    Ok(result)
}

fn switchyard(
    rig: &Rig,
    options: &Options,
    catalog: &Catalog,
    extras: Extras,
    progress: &mut Progress,
) -> Result<ModeResult> {
    let mut result = ModeResult::new(Mode::Switchyard);
    progress.detail("starting the agent");
    let (running, cold) = RunningAgent::start(
        rig,
        &options.agent,
        &catalog.services,
        &[],
        options.agent_log(&catalog.services.len().to_string()),
        options.ready_timeout,
    )?;
    result.program_all_s = Some(cold.as_secs_f64());
    switchyard_rates(rig, options, catalog, &mut result, progress)?;
    if extras.established {
        let target = catalog.probe(Placement::Last).frontend();
        established(rig, options, target, &mut result, progress)?;
    }
    if extras.changes {
        result.change_ms = endpoint_changes(rig, options, catalog, progress, |endpoints| {
            running.set_endpoints(catalog.probe(Placement::Last), endpoints);
            Ok(None)
        })?;
    }
    result.peak_rss_mib = Some(running.peak_rss_mib()?);
    running.stop()?;
    Ok(result)
}

fn netfilter_mode(
    rig: &Rig,
    options: &Options,
    catalog: &Catalog,
    extras: Extras,
    rules: RuleSet,
    progress: &mut Progress,
) -> Result<ModeResult> {
    let mode = match rules {
        RuleSet::Iptables => Mode::Iptables,
        RuleSet::Nftables => Mode::Nftables,
    };
    let mut result = ModeResult::new(mode);
    progress.detail("loading the rule set");
    let scratch = rig.scratch.path();
    let measured = (|| -> Result<()> {
        result.program_all_s = Some(
            rules
                .load(&rig.node, &catalog.services, scratch)?
                .as_secs_f64(),
        );
        connection_rates(rig, options, catalog, &mut result, progress)?;
        if extras.established {
            let target = catalog.probe(Placement::Last).frontend();
            established(rig, options, target, &mut result, progress)?;
        }
        if extras.changes {
            let probe = catalog.probe(Placement::Last);
            let mut current = probe.clone();
            let mut applied = Vec::new();
            result.change_ms = endpoint_changes(rig, options, catalog, progress, |endpoints| {
                let next = KubeProxyService {
                    endpoints: endpoints.to_vec(),
                    ..probe.clone()
                };
                let took = rules.change(&rig.node, &catalog.services, &current, &next, scratch)?;
                current = next;
                applied.push(took.as_secs_f64() * 1e3);
                Ok(Some(took))
            })?;
            result.change_apply_ms = applied;
        }
        Ok(())
    })();
    rule_set::clear(&rig.node)?;
    // A baseline that cannot keep up (a load past its timeout) is a result,
    // not a reason to stop the whole run.
    if let Err(error) = measured {
        result.failure = Some(format!("{error:#}"));
    }
    Ok(result)
}

fn connection_rates(
    rig: &Rig,
    options: &Options,
    catalog: &Catalog,
    result: &mut ModeResult,
    progress: &mut Progress,
) -> Result<()> {
    for placement in Placement::ALL {
        let target = catalog.probe(placement).frontend();
        for run in 0..options.runs {
            progress.detail(&format!(
                "connections, probe {}, run {}/{}",
                placement.label(),
                run + 1,
                options.runs
            ));
            let sample = service_sample(rig, options, target, result.mode)?;
            result.crr.push(CrrSample {
                placement: Some(placement),
                result: sample,
            });
        }
    }
    Ok(())
}

/// Switchyard's connection rates, each round beside a direct run on the
/// same node (a direct connect passes the hook untouched), so its ratio to
/// direct does not depend on how the machine drifted between phases. The
/// hook's kernel time is summed over each kind of run on its own.
fn switchyard_rates(
    rig: &Rig,
    options: &Options,
    catalog: &Catalog,
    result: &mut ModeResult,
    progress: &mut Progress,
) -> Result<()> {
    let pins = rig.bpffs.join("switchyard");
    let _stats = hook_cost::enable()?;
    let pod = SocketAddrV4::new(rig.pods[0].ip, TARGET_PORT);
    let mut to_service = RunStats::default();
    let mut to_pod = RunStats::default();
    for run in 0..options.runs {
        progress.detail(&format!("connections, round {}/{}", run + 1, options.runs));
        let before = hook_cost::read(&pins, "connect4")?;
        let direct = traffic::run(
            rig,
            Test::ConnectRequestClose,
            pod,
            options.run,
            Origin::Pod,
        )?;
        let after = hook_cost::read(&pins, "connect4")?;
        to_pod.add(&after.since(&before));
        result.paired_direct.push(direct);
        for placement in Placement::ALL {
            let before = hook_cost::read(&pins, "connect4")?;
            let target = catalog.probe(placement).frontend();
            let sample = service_sample(rig, options, target, result.mode)?;
            to_service.add(&hook_cost::read(&pins, "connect4")?.since(&before));
            result.crr.push(CrrSample {
                placement: Some(placement),
                result: sample,
            });
        }
    }
    result.hook_ns = to_service.ns_per_run();
    result.hook_passthrough_ns = to_pod.ns_per_run();
    Ok(())
}

/// One connection-rate run through a Service, which must reach every pod.
fn service_sample(
    rig: &Rig,
    options: &Options,
    target: SocketAddrV4,
    mode: Mode,
) -> Result<LoadResult> {
    let sample = traffic::run(
        rig,
        Test::ConnectRequestClose,
        target,
        options.run,
        Origin::Pod,
    )?;
    if sample.backends.len() < rig.pods.len() && sample.operations >= 1_000 {
        bail!(
            "{} via {target} reached only {:?}: the service is not balanced",
            mode.label(),
            sample.backends
        );
    }
    Ok(sample)
}

fn established(
    rig: &Rig,
    options: &Options,
    target: SocketAddrV4,
    result: &mut ModeResult,
    progress: &mut Progress,
) -> Result<()> {
    progress.detail("round trips");
    result.rr = Some(traffic::run(
        rig,
        Test::RequestResponse,
        target,
        options.run,
        Origin::Pod,
    )?);
    progress.detail("bulk stream");
    result.stream = Some(traffic::run(
        rig,
        Test::Stream,
        target,
        options.run,
        Origin::Pod,
    )?);
    Ok(())
}

/// Moves the last probe's endpoints between two single pods, `changes`
/// times, timing each move until new connections reach the new pod.
/// `apply` makes the change the mode's way; the probe starts just before.
fn endpoint_changes(
    rig: &Rig,
    options: &Options,
    catalog: &Catalog,
    progress: &mut Progress,
    mut apply: impl FnMut(&[Ipv4Addr]) -> Result<Option<Duration>>,
) -> Result<Vec<f64>> {
    let target = catalog.probe(Placement::Last).frontend();
    let singles = [&rig.pods[1], &rig.pods[2]];
    // Unmeasured: from four endpoints to the first single one, so every
    // measured change starts from a backend the probe can tell apart.
    let watch = Watch::start(rig, target, &singles[0].name, CHANGE_TIMEOUT)?;
    apply(&[singles[0].ip])?;
    settle(watch, &singles[0].name)?;
    let mut latencies = Vec::new();
    for change in 0..options.changes {
        progress.detail(&format!(
            "endpoint change {}/{}",
            change + 1,
            options.changes
        ));
        std::thread::sleep(CHANGE_SPACING);
        let pod = singles[(change + 1) % 2];
        let watch = Watch::start(rig, target, &pod.name, CHANGE_TIMEOUT)?;
        // Let the probe run first, so its own start is not in the figure.
        std::thread::sleep(Duration::from_millis(30));
        let changed_at = monotonic_ns();
        apply(&[pod.ip])?;
        let seen_at = settle(watch, &pod.name)?;
        #[expect(
            clippy::cast_precision_loss,
            reason = "nanoseconds as milliseconds for the report"
        )]
        latencies.push(seen_at.saturating_sub(changed_at) as f64 / 1e6);
    }
    // Back to all four, for whatever runs next on this catalog.
    apply(&catalog.probe(Placement::Last).endpoints)?;
    std::thread::sleep(CHANGE_SPACING);
    Ok(latencies)
}

fn settle(watch: Watch, expect: &str) -> Result<u64> {
    let seen = watch.finish(CHANGE_TIMEOUT + Duration::from_secs(5))?;
    if seen.seen_at_ns == 0 {
        bail!("new connections never reached {expect} within {CHANGE_TIMEOUT:?}");
    }
    Ok(seen.seen_at_ns)
}

/// The NodePort every NodePort test uses.
const NODE_PORT: u16 = 30080;

/// New connections from outside the node to a NodePort: Switchyard's
/// per-packet path on the node's device against iptables' DNAT, with
/// direct connections to a pod from the same client as the floor.
pub fn node_port(
    rig: &Rig,
    options: &Options,
    progress: &mut Progress,
) -> Result<Vec<NodePortResult>> {
    let catalog = Catalog::new(0, &rig.pod_ips(), options.seed).with_node_port(NODE_PORT);
    let node_port = SocketAddrV4::new(NODE_CLIENT_SIDE, NODE_PORT);
    let runs = |target, progress: &mut Progress| -> Result<Vec<_>> {
        (0..options.runs)
            .map(|run| {
                progress.detail(&format!(
                    "NodePort connections, run {}/{}",
                    run + 1,
                    options.runs
                ));
                traffic::run(
                    rig,
                    Test::ConnectRequestClose,
                    target,
                    options.run,
                    Origin::Outside,
                )
            })
            .collect()
    };
    progress.step("NodePort direct");
    let direct = runs(SocketAddrV4::new(rig.pods[0].ip, TARGET_PORT), progress)?;
    progress.step("NodePort Switchyard");
    let (running, _) = RunningAgent::start(
        rig,
        &options.agent,
        &catalog.services,
        &agent_run::devices("vcl"),
        options.agent_log("node-port"),
        options.ready_timeout,
    )?;
    let switchyard = runs(node_port, progress);
    running.stop()?;
    progress.step("NodePort iptables");
    RuleSet::Iptables.load(&rig.node, &catalog.services, rig.scratch.path())?;
    let iptables = runs(node_port, progress);
    rule_set::clear(&rig.node)?;
    Ok(vec![
        NodePortResult {
            mode: Mode::Direct,
            samples: direct,
        },
        NodePortResult {
            mode: Mode::Switchyard,
            samples: switchyard?,
        },
        NodePortResult {
            mode: Mode::Iptables,
            samples: iptables?,
        },
    ])
}
