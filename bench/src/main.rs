//! The bench runner: builds the rig, measures every scale, writes the
//! Markdown report, the raw samples as JSON and the plot.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::Parser;
use switchyard_bench::{
    churn, counter_cost,
    footprint::{self, FootprintScale},
    forwarding, plot,
    progress::Progress,
    report,
    results::{BenchReport, Mode},
    rig::Rig,
    scenario::{self, Extras, Options},
};

/// A figure measured on its own (`--only`).
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Only {
    /// What the per-Service counters cost the connect hook and the tc path.
    CounterCost,
    /// NodePort forwarding per node core: direct, tc, XDP, iptables, and a
    /// bare XDP redirect.
    Forwarding,
}

#[derive(Parser)]
#[command(about = "Switchyard vs kube-proxy-shaped iptables/nftables vs direct, in namespaces")]
struct Cli {
    /// The agent binary (a release build).
    #[arg(long, required_unless_present = "render")]
    agent: Option<PathBuf>,
    /// The load generator binary.
    #[arg(long, required_unless_present = "render")]
    loadgen: Option<PathBuf>,
    /// Measure nothing: write the report and plot again from a bench.json.
    #[arg(long, value_name = "JSON")]
    render: Option<PathBuf>,
    /// Where the report, the JSON samples and the plot go.
    #[arg(long)]
    out: PathBuf,
    /// Also 30k and 50k Services, and endpoint changes at 50k.
    #[arg(long)]
    full: bool,
    /// Length of one measured run.
    #[arg(long, default_value = "2000")]
    run_ms: u64,
    /// Runs per figure (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Timed endpoint changes per mode.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// Measure these numbers of Services instead (comma-separated).
    #[arg(long, value_delimiter = ',')]
    services: Vec<usize>,
    /// Measure only these modes (direct, switchyard, iptables, nftables);
    /// ratios to a mode left out are not reported.
    #[arg(long, value_delimiter = ',', value_parser = parse_mode)]
    modes: Vec<Mode>,
    /// Skip the NodePort comparisons.
    #[arg(long)]
    no_node_port: bool,
    /// Length of one NodePort churn run, in seconds (default 60, and 300
    /// with --full).
    #[arg(long)]
    churn_seconds: Option<u64>,
    /// NodePort churn runs per mode (default --runs, and 1 with --full,
    /// whose runs are five minutes long).
    #[arg(long)]
    churn_runs: Option<usize>,
    /// The agent's footprint at these catalog sizes, SERVICESxENDPOINTS
    /// (default 10000x4, and with --full 50000x4 and 100000x10 too).
    #[arg(long, value_delimiter = ',', value_parser = parse_footprint)]
    footprint: Vec<FootprintScale>,
    /// Measure only the agent's footprint: no traffic, no baselines.
    #[arg(long)]
    footprint_only: bool,
    /// Measure only this figure.
    #[arg(long, value_enum)]
    only: Option<Only>,
    /// Fixes the probed Service's random position.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    std::fs::create_dir_all(&cli.out)?;
    if let Some(json) = &cli.render {
        let text = std::fs::read_to_string(json).with_context(|| format!("{}", json.display()))?;
        let report: BenchReport = serde_json::from_str(&text)?;
        println!("{}", write_outputs(&cli.out, &report)?);
        return Ok(());
    }
    let (Some(agent), Some(loadgen)) = (cli.agent.clone(), cli.loadgen.clone()) else {
        unreachable!("clap requires both unless --render");
    };
    let footprints = footprints(&cli);
    let scales = &connection_scales(&cli);
    // Endpoint changes at the scales the issue names, whenever measured.
    let change_scales: &[usize] = &[10_000, 50_000];
    let options = Options {
        agent,
        run: Duration::from_millis(cli.run_ms),
        runs: cli.runs,
        changes: cli.changes,
        seed: cli.seed,
        ready_timeout: Duration::from_mins(2),
        modes: if cli.modes.is_empty() {
            Mode::ALL.to_vec()
        } else {
            cli.modes.clone()
        },
        logs: cli.out.clone(),
    };
    let rig = Rig::up(&loadgen).context("building the bench topology")?;
    let churn_s = cli.churn_seconds.unwrap_or(if cli.full { 300 } else { 60 });
    let churn_runs = cli
        .churn_runs
        .unwrap_or(if cli.full { 1 } else { options.runs });
    let node_port_steps = if cli.no_node_port || cli.footprint_only {
        0
    } else {
        3 + 2 * options.runs + 2 * churn_runs
    };
    let counter_steps = if cli.footprint_only {
        0
    } else {
        2 * options.runs
    };
    let mut progress = Progress::new(
        scales.len() * options.modes.len() + node_port_steps + counter_steps + 2 * footprints.len(),
    );
    let mut report = empty_report(&cli, churn_s);
    if cli.only == Some(Only::CounterCost) {
        return counter_cost_only(&rig, &options, report, &cli.out);
    }
    if cli.only == Some(Only::Forwarding) {
        let mut progress = Progress::new(2 * options.runs);
        report.node_port_forwarding =
            forwarding::node_port_forwarding(&rig, &options, &mut progress)?;
        progress.finish();
        println!("{}", write_outputs(&cli.out, &report)?);
        return Ok(());
    }
    for (i, services) in scales.iter().enumerate() {
        let extras = Extras {
            established: i == 0 || i + 1 == scales.len(),
            changes: change_scales.contains(services),
        };
        let scale = scenario::measure(&rig, &options, *services, extras, &mut progress)?;
        report.scales.push(scale);
        // Written after every scale: a run cut short still leaves its data.
        write_outputs(&cli.out, &report)?;
    }
    measure_footprints(
        &rig,
        &options,
        &footprints,
        &mut report,
        &mut progress,
        &cli.out,
    )?;
    if !cli.footprint_only {
        report.counter_cost = Some(counter_cost::measure(&rig, &options, &mut progress)?);
        write_outputs(&cli.out, &report)?;
    }
    if !cli.no_node_port && !cli.footprint_only {
        report.node_port = scenario::node_port(&rig, &options, &mut progress)?;
        write_outputs(&cli.out, &report)?;
        report.node_port_forwarding =
            forwarding::node_port_forwarding(&rig, &options, &mut progress)?;
        write_outputs(&cli.out, &report)?;
        report.node_port_churn = churn::node_port_churn(
            &rig,
            &options,
            (Duration::from_secs(churn_s), churn_runs),
            &mut progress,
        )?;
    }
    progress.finish();
    let markdown = write_outputs(&cli.out, &report)?;
    println!("{markdown}");
    println!(
        "Wrote {0}/bench.md, {0}/bench.json, {0}/connection-rate.svg and {0}/memory.svg",
        cli.out.display()
    );
    Ok(())
}

fn empty_report(cli: &Cli, churn_s: u64) -> BenchReport {
    BenchReport {
        kernel: kernel(),
        cpus: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        tools: switchyard_tests::kube_proxy_rules::rule_set::versions(),
        full: cli.full,
        run_ms: cli.run_ms,
        runs: cli.runs,
        scales: Vec::new(),
        node_port: Vec::new(),
        node_port_churn: Vec::new(),
        churn_s,
        node_port_forwarding: Vec::new(),
        footprint: Vec::new(),
        footprint_failures: Vec::new(),
        counter_cost: None,
    }
}

fn counter_cost_only(
    rig: &Rig,
    options: &Options,
    mut report: BenchReport,
    out: &std::path::Path,
) -> Result<()> {
    let mut progress = Progress::new(2 * options.runs);
    report.counter_cost = Some(counter_cost::measure(rig, options, &mut progress)?);
    progress.finish();
    println!("{}", write_outputs(out, &report)?);
    Ok(())
}

fn write_outputs(out: &std::path::Path, report: &BenchReport) -> Result<String> {
    let markdown = report::markdown(report);
    std::fs::write(out.join("bench.md"), &markdown)?;
    std::fs::write(
        out.join("bench.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    std::fs::write(out.join("connection-rate.svg"), plot::svg(report))?;
    std::fs::write(out.join("memory.svg"), plot::memory_svg(report))?;
    if !report.node_port_forwarding.is_empty() {
        std::fs::write(out.join("forwarding.svg"), plot::forwarding_svg(report))?;
    }
    Ok(markdown)
}

fn parse_mode(name: &str) -> Result<Mode, String> {
    Mode::ALL
        .into_iter()
        .find(|mode| mode.label().eq_ignore_ascii_case(name))
        .ok_or_else(|| format!("unknown mode {name:?} (direct, switchyard, iptables, nftables)"))
}

/// The numbers of Services the connection rates are measured at.
fn connection_scales(cli: &Cli) -> Vec<usize> {
    if cli.footprint_only {
        Vec::new()
    } else if !cli.services.is_empty() {
        cli.services.clone()
    } else if cli.full {
        vec![0, 1_000, 10_000, 30_000, 50_000]
    } else {
        vec![0, 1_000, 10_000]
    }
}

fn measure_footprints(
    rig: &Rig,
    options: &Options,
    footprints: &[FootprintScale],
    report: &mut BenchReport,
    progress: &mut Progress,
    out: &std::path::Path,
) -> Result<()> {
    for scale in footprints {
        // A size the agent cannot serve is a result, not the bench's end.
        match footprint::measure(rig, options, *scale, progress) {
            Ok(rows) => report.footprint.extend(rows),
            Err(error) => report.footprint_failures.push(format!(
                "{} Services × {} endpoints: {error:#}",
                scale.services, scale.endpoints
            )),
        }
        write_outputs(out, report)?;
    }
    Ok(())
}

/// The footprint's catalog sizes: as asked, else 10k × 4, and with --full
/// the scale issue's 50k × 4 and 100k × 10 too.
fn footprints(cli: &Cli) -> Vec<FootprintScale> {
    if !cli.footprint.is_empty() {
        cli.footprint.clone()
    } else if cli.full {
        vec![scale(10_000, 4), scale(50_000, 4), scale(100_000, 10)]
    } else {
        vec![scale(10_000, 4)]
    }
}

fn scale(services: usize, endpoints: usize) -> FootprintScale {
    FootprintScale {
        services,
        endpoints,
    }
}

fn parse_footprint(text: &str) -> Result<FootprintScale, String> {
    let (services, endpoints) = text
        .split_once('x')
        .ok_or_else(|| format!("{text:?}: expected SERVICESxENDPOINTS, as 50000x4"))?;
    let number = |part: &str| {
        part.parse::<usize>()
            .map_err(|_| format!("{text:?}: {part:?} is not a count"))
    };
    Ok(scale(number(services)?, number(endpoints)?))
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_owned())
}
