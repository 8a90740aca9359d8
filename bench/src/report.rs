//! The Markdown report: one table per question, ratios beside the raw
//! figures, and the targets with a plain verdict each.

use std::fmt::Write;

use crate::{
    catalog::Placement,
    load_result::LoadResult,
    results::{BenchReport, ForwardingSample, ForwardingTest, Mode, NodePortResult, Scale},
};

/// A figure this run measured, and how the report writes it.
pub(crate) type Measured = Option<(f64, String)>;

/// One row of the targets table: what is asked, what was measured, and
/// whether that meets it.
pub(crate) struct Target {
    pub(crate) asks: String,
    pub(crate) measured: Measured,
    pub(crate) met: fn(f64) -> bool,
}

/// Targets from the issue, checked against what this run measured.
const RATE_FLOOR: f64 = 0.95;
const RATE_FLATNESS: f64 = 0.03;
/// At most 300 ns per connect to a Service, at every N (with per-socket
/// state in socket storage instead of a node-wide LRU insert).
const HOOK_NS: f64 = 300.0;
const CHANGE_P99_MS: f64 = 10.0;
const TARGET_SCALE: usize = 50_000;
/// Sustained NodePort churn: at least iptables' rate.
const CHURN_RATIO: f64 = 1.0;
/// NodePort packets per node core: at least 1.5 × iptables'.
const FORWARDING_RATIO: f64 = 1.5;
/// The target for the per-packet path at XDP.
const XDP_RATIO: f64 = 3.0;
/// How close to a bare XDP redirect the lookups may leave it.
const XDP_OF_BARE: f64 = 0.5;

pub fn markdown(report: &BenchReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Kernel {}, {} CPUs, {}. Each connection-rate figure is the median of {} runs of {} ms; client on CPU 0, servers on CPU 1. `N` counts Services of 4 endpoints besides the two probed ones.\n",
        report.kernel, report.cpus, report.tools, report.runs, report.run_ms
    );
    connection_rates(&mut out, report);
    established(&mut out, report);
    per_connect_cost(&mut out, report);
    control_plane(&mut out, report);
    node_port(&mut out, report);
    node_port_forwarding(&mut out, report);
    node_port_churn(&mut out, report);
    crate::footprint_report::section(&mut out, report);
    crate::counter_cost::section(&mut out, report.counter_cost.as_ref());
    targets(&mut out, report);
    out
}

fn fmt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "–".into(), |v| format!("{v:.decimals$}"))
}

fn rate(scale: &Scale, mode: Mode, placement: Placement) -> String {
    fmt(scale.mode(mode).and_then(|m| m.crr_rate(placement)), 0)
}

fn connection_rates(out: &mut String, report: &BenchReport) {
    out.push_str(
        "### New connections per second through a ClusterIP (connect, request, close)\n\n",
    );
    out.push_str("Switchyard ÷ direct compares with direct runs interleaved with Switchyard's on the same node (a direct connect passes the hook untouched), so drift of the machine between phases does not enter it.\n\n");
    out.push_str("| N | direct | direct beside Switchyard | Switchyard last / random | iptables last / random | nftables last / random | Switchyard ÷ direct | Switchyard ÷ iptables | iptables ÷ direct | nftables ÷ direct |\n");
    out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let last = Placement::Last;
    for scale in &report.scales {
        let pair = |mode| {
            format!(
                "{} / {}",
                rate(scale, mode, last),
                rate(scale, mode, Placement::Random)
            )
        };
        let beside = scale
            .mode(Mode::Switchyard)
            .filter(|m| !m.paired_direct.is_empty())
            .and_then(|_| scale.direct_rate_beside(Mode::Switchyard));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            scale.services,
            rate(scale, Mode::Direct, last),
            fmt(beside, 0),
            pair(Mode::Switchyard),
            pair(Mode::Iptables),
            pair(Mode::Nftables),
            fmt(scale.ratio(Mode::Switchyard, Mode::Direct, last), 3),
            fmt(scale.ratio(Mode::Switchyard, Mode::Iptables, last), 2),
            fmt(scale.ratio(Mode::Iptables, Mode::Direct, last), 3),
            fmt(scale.ratio(Mode::Nftables, Mode::Direct, last), 3),
        );
    }
    let errors: Vec<String> = report
        .scales
        .iter()
        .flat_map(|s| s.modes.iter().map(move |m| (s.services, m)))
        .filter(|(_, m)| m.crr_errors() > 0)
        .map(|(n, m)| format!("{} at N={n}: {}", m.mode.label(), m.crr_errors()))
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(out, "\nFailed connections: {}.", errors.join("; "));
    }
    for scale in &report.scales {
        for mode in &scale.modes {
            if let Some(failure) = &mode.failure {
                let first_line = failure.lines().next().unwrap_or_default();
                let _ = writeln!(
                    out,
                    "\n{} at N={} stopped: {first_line}",
                    mode.mode.label(),
                    scale.services
                );
            }
        }
    }
    out.push('\n');
}

fn established(out: &mut String, report: &BenchReport) {
    out.push_str("### Established connections: 64-byte round trips and bulk throughput\n\n");
    out.push_str(
        "| N | mode | round trips/s | p50 µs | p99 µs | ÷ direct | stream Gbit/s | ÷ direct |\n",
    );
    out.push_str("|---:|---|---:|---:|---:|---:|---:|---:|\n");
    for scale in &report.scales {
        let direct = scale.mode(Mode::Direct);
        let direct_rr = direct.and_then(|d| d.rr.as_ref()).map(LoadResult::rate);
        let direct_stream = direct
            .and_then(|d| d.stream.as_ref())
            .map(LoadResult::gbit_per_s);
        for mode in &scale.modes {
            let Some(rr) = &mode.rr else { continue };
            let stream = mode.stream.as_ref().map(LoadResult::gbit_per_s);
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.1} | {:.1} | {} | {} | {} |",
                scale.services,
                mode.mode.label(),
                rr.rate(),
                rr.p50_us,
                rr.p99_us,
                fmt(direct_rr.map(|d| rr.rate() / d), 3),
                fmt(stream, 2),
                fmt(stream.zip(direct_stream).map(|(s, d)| s / d), 3),
            );
        }
    }
    out.push('\n');
}

fn per_connect_cost(out: &mut String, report: &BenchReport) {
    out.push_str("### Kernel cost per connection\n\n");
    out.push_str("Switchyard's connect4 hook is timed by the kernel (BPF run-time statistics). The netfilter modes' rule walk has no such counter here, so their cost is derived from the rates: 1/rate(mode) − 1/rate(direct), probed Service last; the same derivation is shown for Switchyard.\n\n");
    out.push_str("| N | Switchyard connect4 ns/run, to a Service | same, to a pod IP | Switchyard extra µs/conn | iptables extra µs/conn | nftables extra µs/conn |\n");
    out.push_str("|---:|---:|---:|---:|---:|---:|\n");
    for scale in &report.scales {
        let extra = |mode| fmt(scale.extra_us_per_connection(mode, Placement::Last), 1);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            scale.services,
            fmt(scale.mode(Mode::Switchyard).and_then(|m| m.hook_ns), 0),
            fmt(
                scale
                    .mode(Mode::Switchyard)
                    .and_then(|m| m.hook_passthrough_ns),
                0,
            ),
            extra(Mode::Switchyard),
            extra(Mode::Iptables),
            extra(Mode::Nftables),
        );
    }
    out.push('\n');
}

fn control_plane(out: &mut String, report: &BenchReport) {
    out.push_str("### Control plane\n\n");
    out.push_str("Programming everything: Switchyard from process start to all Services in the maps (watching the API server stand-in); the baselines' `iptables-nft-restore` and `nft -f` of the whole rule set. One EndpointSlice change: from the change (API write, or the restore started) until new connections reach the new backend, p50 / p99.\n\n");
    out.push_str("| N | Switchyard all (s) | iptables all (s) | nftables all (s) | Switchyard change p50 / p99 ms | iptables change p50 / p99 ms | nftables change p50 / p99 ms | Switchyard peak RSS MiB |\n");
    out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for scale in &report.scales {
        let all = |mode| fmt(scale.mode(mode).and_then(|m| m.program_all_s), 2);
        let change = |mode| {
            scale.mode(mode).map_or_else(
                || "–".into(),
                |m| {
                    format!(
                        "{} / {}",
                        fmt(m.change_percentile(0.5), 1),
                        fmt(m.change_percentile(0.99), 1)
                    )
                },
            )
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            scale.services,
            all(Mode::Switchyard),
            all(Mode::Iptables),
            all(Mode::Nftables),
            change(Mode::Switchyard),
            change(Mode::Iptables),
            change(Mode::Nftables),
            fmt(scale.mode(Mode::Switchyard).and_then(|m| m.peak_rss_mib), 1),
        );
    }
    out.push('\n');
}

fn node_port(out: &mut String, report: &BenchReport) {
    if report.node_port.is_empty() {
        return;
    }
    out.push_str(
        "### NodePort from outside the node (per-packet path), new connections per second\n\n",
    );
    out.push_str("| mode | connections/s | p50 µs | p99 µs |\n|---|---:|---:|---:|\n");
    for result in &report.node_port {
        let rates: Vec<f64> = result.samples.iter().map(LoadResult::rate).collect();
        let first = result.samples.first();
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} | {} |",
            result.mode.label(),
            crate::load_result::median(&rates),
            fmt(first.map(|s| s.p50_us), 1),
            fmt(first.map(|s| s.p99_us), 1),
        );
    }
    out.push('\n');
}

fn node_port_forwarding(out: &mut String, report: &BenchReport) {
    if report.node_port_forwarding.is_empty() {
        return;
    }
    out.push_str(
        "### NodePort forwarding per node core, one flow to a backend on another node\n\n\
         The node's packet work is steered (RPS) to one core and the rest of the rig to the \
         other; per core is what the node sent on over that core's busy time.\n\n",
    );
    out.push_str(
        "| load | mode | packets/s per node core | Gbit/s per node core | packets/s | node core busy | agent's programs, ns per packet | translations sent on by XDP |\n\
         |---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for result in &report.node_port_forwarding {
        let busy = result.median(|s| {
            if s.elapsed_s > 0.0 {
                s.node_cpu_s / s.elapsed_s
            } else {
                0.0
            }
        });
        let known = |value: f64, text: String| {
            if value.is_finite() {
                text
            } else {
                "–".to_owned()
            }
        };
        let program_ns = result.median(ForwardingSample::program_ns_per_packet);
        let program_ns = known(program_ns, format!("{program_ns:.0}"));
        let at_xdp = result.median(ForwardingSample::sent_at_xdp);
        let at_xdp = if result.mode == Mode::SwitchyardXdp {
            known(at_xdp, format!("{:.0}%", at_xdp * 100.0))
        } else {
            "–".to_owned()
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.2} | {:.0} | {:.0}% | {program_ns} | {at_xdp} |",
            result.test.label(),
            result.mode.label(),
            result.median(ForwardingSample::packets_per_core_s),
            result.median(ForwardingSample::gbit_per_core_s),
            result.median(ForwardingSample::packets_per_s),
            busy * 100.0,
        );
    }
    out.push('\n');
}

/// Switchyard's packets per node core over `base`'s, for `test`.
fn forwarding_ratio(report: &BenchReport, test: ForwardingTest, base: Mode) -> Option<f64> {
    mode_ratio(report, test, Mode::Switchyard, base)
}

/// `mode`'s packets per node core over `base`'s, for `test`.
fn mode_ratio(report: &BenchReport, test: ForwardingTest, mode: Mode, base: Mode) -> Option<f64> {
    let of = |mode| {
        report
            .node_port_forwarding
            .iter()
            .find(|r| r.test == test && r.mode == mode)
            .map(|r| r.median(ForwardingSample::packets_per_core_s))
    };
    let base = of(base)?;
    (base > 0.0).then(|| of(mode).map(|s| s / base))?
}

/// The XDP targets' rows: at least 3 × iptables per node core, and the
/// share of a bare XDP redirect's rate it keeps (UDP: the bare redirect
/// carries no replies).
fn xdp_targets(report: &BenchReport) -> Vec<Target> {
    let mut targets: Vec<Target> = [ForwardingTest::Udp, ForwardingTest::Tcp]
        .into_iter()
        .map(|test| Target {
            asks: format!(
                "NodePort {} packets per node core at XDP ≥ 3 × iptables",
                test.label()
            ),
            measured: mode_ratio(report, test, Mode::SwitchyardXdp, Mode::Iptables)
                .map(|r| (r, format!("{r:.2} × iptables"))),
            met: |ratio| ratio >= XDP_RATIO,
        })
        .collect();
    targets.push(Target {
        asks: "NodePort UDP flood at XDP ≥ 0.5 × a bare XDP redirect on the same devices".into(),
        measured: mode_ratio(
            report,
            ForwardingTest::Udp,
            Mode::SwitchyardXdp,
            Mode::BareXdp,
        )
        .map(|r| (r, format!("{r:.2} × bare XDP redirect"))),
        met: |ratio| ratio >= XDP_OF_BARE,
    });
    targets
}

/// The churn targets' rows: the rate against iptables', and no failure.
fn churn_targets(report: &BenchReport) -> [Target; 2] {
    let churn = churn_figures(report);
    [
        Target {
            asks: "sustained NodePort churn to a remote backend ≥ 1.0 × iptables' rate".into(),
            measured: churn.map(|(ratio, _)| (ratio, format!("{ratio:.2} × iptables"))),
            met: |ratio| ratio >= CHURN_RATIO,
        },
        Target {
            asks: "no failed connection in that churn".into(),
            measured: churn.map(|(_, failed)| {
                #[expect(clippy::cast_precision_loss, reason = "a count compared with zero")]
                let value = failed as f64;
                (value, format!("{failed} failed"))
            }),
            met: |failed| failed == 0.0,
        },
    ]
}

/// The forwarding targets' rows: what each asks, and the ratio measured.
fn forwarding_targets(report: &BenchReport) -> Vec<Target> {
    [ForwardingTest::Udp, ForwardingTest::Tcp]
        .into_iter()
        .map(|test| {
            let direct = forwarding_ratio(report, test, Mode::Direct);
            let measured = forwarding_ratio(report, test, Mode::Iptables).map(|r| {
                let beside = direct.map_or(String::new(), |d| format!("; {d:.2} × direct"));
                (r, format!("{r:.2} × iptables{beside}"))
            });
            Target {
                asks: format!(
                    "NodePort {} packets per node core ≥ 1.5 × iptables",
                    test.label()
                ),
                measured,
                met: |ratio| ratio >= FORWARDING_RATIO,
            }
        })
        .collect()
}

fn node_port_churn(out: &mut String, report: &BenchReport) {
    if report.node_port_churn.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "### Sustained NodePort churn to a backend on another node ({} s per run)\n",
        report.churn_s
    );
    out.push_str("| mode | connections/s | connections | failed |\n|---|---:|---:|---:|\n");
    for result in &report.node_port_churn {
        let rates: Vec<f64> = result.samples.iter().map(LoadResult::rate).collect();
        let total: u64 = result.samples.iter().map(|s| s.operations).sum();
        let failed: u64 = result.samples.iter().map(|s| s.errors).sum();
        let _ = writeln!(
            out,
            "| {} | {:.0} | {total} | {failed} |",
            result.mode.label(),
            crate::load_result::median(&rates),
        );
    }
    out.push('\n');
}

/// Switchyard's median churn rate over iptables', and Switchyard's failed
/// connections.
fn churn_figures(report: &BenchReport) -> Option<(f64, u64)> {
    let of = |mode| report.node_port_churn.iter().find(|r| r.mode == mode);
    let median = |result: &NodePortResult| {
        let rates: Vec<f64> = result.samples.iter().map(LoadResult::rate).collect();
        crate::load_result::median(&rates)
    };
    let (switchyard, iptables) = (of(Mode::Switchyard)?, of(Mode::Iptables)?);
    let failed = switchyard.samples.iter().map(|s| s.errors).sum();
    Some((median(switchyard) / median(iptables), failed))
}

/// One row per target: what was asked, what was measured, and whether it
/// was met. A target this run could not measure says so.
fn targets(out: &mut String, report: &BenchReport) {
    out.push_str("### Targets\n\n| target | measured | verdict |\n|---|---|---|\n");
    let mut row = |target: &str, measured: Option<(f64, String)>, ok: &dyn Fn(f64) -> bool| {
        let (measured, verdict) = match measured {
            Some((value, text)) => (text, if ok(value) { "met" } else { "**missed**" }),
            None => ("not measured in this run".into(), "–"),
        };
        let _ = writeln!(out, "| {target} | {measured} | {verdict} |");
    };
    let scales = &report.scales;
    let worst_ratio = scales
        .iter()
        .flat_map(|s| {
            Placement::ALL
                .into_iter()
                .filter_map(|p| s.ratio(Mode::Switchyard, Mode::Direct, p))
                .map(move |r| (r, s.services))
        })
        .min_by(|a, b| a.0.total_cmp(&b.0));
    row(
        "Switchyard ≥ 0.95 × direct connection rate at every N",
        worst_ratio.map(|(r, n)| (r, format!("lowest {r:.3} (N={n})"))),
        &|r| r >= RATE_FLOOR,
    );
    // On the ratio to the direct runs beside it: the machine's own drift
    // between scales is not Switchyard's.
    let rate_at = |s: &Scale| s.ratio(Mode::Switchyard, Mode::Direct, Placement::Last);
    let flat = scales
        .first()
        .zip(scales.last())
        .filter(|(a, b)| a.services != b.services)
        .and_then(|(a, b)| Some((rate_at(a)?, rate_at(b)?, b.services)))
        .map(|(a, b, n)| {
            (
                (b / a - 1.0).abs(),
                format!("{:+.1}% from N=0 to N={n}", (b / a - 1.0) * 100.0),
            )
        });
    row(
        "Switchyard connection rate (÷ direct) flat in N (within 3%)",
        flat,
        &|d| d <= RATE_FLATNESS,
    );
    let hook = scales
        .iter()
        .filter_map(|s| Some((s.mode(Mode::Switchyard)?.hook_ns?, s.services)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    row(
        "connect hook at most 300 ns per connect to a Service at every N",
        hook.map(|(ns, n)| (ns, format!("highest {ns:.0} ns (N={n})"))),
        &|ns| ns <= HOOK_NS,
    );
    let change = scales
        .iter()
        .filter_map(|s| {
            Some((
                s.mode(Mode::Switchyard)?.change_percentile(0.99)?,
                s.services,
            ))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0));
    row(
        "one endpoint change applied in under 10 ms at p99",
        change.map(|(ms, n)| (ms, format!("p99 {ms:.1} ms (N={n})"))),
        &|ms| ms < CHANGE_P99_MS,
    );
    let at_target = scales
        .iter()
        .find(|s| s.services >= TARGET_SCALE)
        .and_then(|s| s.mode(Mode::Switchyard));
    for target in forwarding_targets(report)
        .into_iter()
        .chain(xdp_targets(report))
        .chain(churn_targets(report))
        .chain(crate::footprint_report::targets(report))
        .chain(crate::counter_cost::targets(report.counter_cost.as_ref()))
    {
        row(&target.asks, target.measured, &target.met);
    }
    if at_target.is_none() {
        out.push_str("\nThe 50k targets need `cargo xtask bench --full`.\n");
    }
}
