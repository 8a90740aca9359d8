//! SVG line charts: connection rate against the number of Services, one
//! line per mode, the probed Service last; the agent's memory against the
//! catalog size. Hand-written SVG: no plotting dependency, and the files
//! render on GitHub and in any browser.

use std::fmt::Write;

use crate::{
    catalog::Placement,
    results::{BenchReport, FootprintSource, ForwardingSample, ForwardingTest, Mode},
};

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 160.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

fn color(mode: Mode) -> &'static str {
    match mode {
        Mode::Direct => "#555555",
        Mode::Switchyard => "#1f77b4",
        Mode::Iptables => "#d62728",
        Mode::Nftables => "#ff7f0e",
        Mode::SwitchyardXdp => "#2ca02c",
        Mode::BareXdp => "#9467bd",
    }
}

/// One line of a chart: its legend, colour and a value per x position
/// (none where it was not measured).
struct Series {
    label: String,
    color: &'static str,
    values: Vec<Option<f64>>,
    dashed: bool,
}

/// A line chart over evenly spaced x positions.
struct Chart<'a> {
    title: &'a str,
    x_title: &'a str,
    x_labels: Vec<String>,
    series: Vec<Series>,
}

/// New connections per second through the probed ClusterIP against the
/// number of Services, a line per mode.
pub fn svg(report: &BenchReport) -> String {
    let scales = &report.scales;
    let series = Mode::ALL
        .iter()
        .map(|mode| Series {
            label: mode.label().to_owned(),
            color: color(*mode),
            values: scales
                .iter()
                .map(|s| s.mode(*mode).and_then(|m| m.crr_rate(Placement::Last)))
                .collect(),
            dashed: false,
        })
        .collect();
    Chart {
        title: "New connections per second through a ClusterIP vs number of Services",
        x_title: "Services (4 endpoints each), probed Service last",
        // Services grow by orders of magnitude: equal spacing per measured
        // N reads better than a linear axis that crushes 0 and 1k together.
        x_labels: scales
            .iter()
            .map(|scale| thousands(count(scale.services)))
            .collect(),
        series,
    }
    .render()
}

/// NodePort forwarding per node core by mode, the UDP flood and the TCP
/// stream each a line (millions of packets per second of the node's core).
pub fn forwarding_svg(report: &BenchReport) -> String {
    let modes = [
        Mode::Direct,
        Mode::Switchyard,
        Mode::Iptables,
        Mode::SwitchyardXdp,
        Mode::BareXdp,
    ];
    let line = |test: ForwardingTest, label: &str, color: &'static str| Series {
        label: label.to_owned(),
        color,
        values: modes
            .iter()
            .map(|&mode| {
                report
                    .node_port_forwarding
                    .iter()
                    .find(|r| r.test == test && r.mode == mode)
                    .map(|r| r.median(ForwardingSample::packets_per_core_s) / 1e6)
            })
            .collect(),
        dashed: test == ForwardingTest::Tcp,
    };
    Chart {
        title: "NodePort forwarding: millions of packets per second of the node's core",
        x_title: "mode (one flow to a backend on another node)",
        x_labels: modes.iter().map(|mode| mode.label().to_owned()).collect(),
        series: vec![
            line(ForwardingTest::Udp, "UDP flood", "#1f77b4"),
            line(ForwardingTest::Tcp, "TCP stream", "#d62728"),
        ],
    }
    .render()
}

/// The agent's peak RSS against the catalog size, from each source, with
/// the issue's budget of 2 KiB per Service beside it.
pub fn memory_svg(report: &BenchReport) -> String {
    let mut sizes: Vec<(usize, usize)> = report
        .footprint
        .iter()
        .map(|row| (row.services, row.endpoints))
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    let measured = |source: FootprintSource, relist: bool| -> Vec<Option<f64>> {
        sizes
            .iter()
            .map(|&(services, endpoints)| {
                let row = report.footprint.iter().find(|row| {
                    row.source == source && row.services == services && row.endpoints == endpoints
                })?;
                if relist {
                    row.relist_peak_rss_mib
                } else {
                    Some(row.peak_rss_mib)
                }
            })
            .collect()
    };
    let series = vec![
        Series {
            label: "API".into(),
            color: "#1f77b4",
            values: measured(FootprintSource::Api, false),
            dashed: false,
        },
        Series {
            label: "API, relist".into(),
            color: "#1f77b4",
            values: measured(FootprintSource::Api, true),
            dashed: true,
        },
        Series {
            label: "manifests".into(),
            color: "#2ca02c",
            values: measured(FootprintSource::Manifests, false),
            dashed: false,
        },
        Series {
            label: "target".into(),
            color: "#d62728",
            values: sizes
                .iter()
                .map(|&(services, _)| Some(count(services) * 2.0 / 1024.0))
                .collect(),
            dashed: true,
        },
    ];
    Chart {
        title: "The agent's peak RSS (MiB) vs catalog size",
        x_title: "Services × endpoints each",
        x_labels: sizes
            .iter()
            .map(|&(services, endpoints)| format!("{}×{endpoints}", thousands(count(services))))
            .collect(),
        series,
    }
    .render()
}

impl Chart<'_> {
    fn render(&self) -> String {
        let top = self
            .series
            .iter()
            .flat_map(|series| series.values.iter().flatten())
            .copied()
            .fold(0.0, f64::max);
        let y_max = nice_ceiling(top.max(1.0));
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let columns = count(self.x_labels.len().max(1));
        let x = |i: usize| LEFT + plot_w * (count(i) + 0.5) / columns;
        let y = |v: f64| TOP + plot_h * (1.0 - v / y_max);

        let mut out = String::new();
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            out,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
            WIDTH / 2.0,
            self.title
        );
        for step in 0..=4 {
            let value = y_max * f64::from(step) / 4.0;
            let _ = writeln!(
                out,
                r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#dddddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                WIDTH - RIGHT,
                LEFT - 8.0,
                y(value) + 4.0,
                thousands(value),
                y = y(value)
            );
        }
        for (i, label) in self.x_labels.iter().enumerate() {
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{label}</text>"#,
                x(i),
                HEIGHT - BOTTOM + 20.0,
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            LEFT + plot_w / 2.0,
            HEIGHT - 15.0,
            self.x_title
        );
        for (row, series) in self.series.iter().enumerate() {
            let points: Vec<String> = series
                .values
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.map(|v| format!("{:.1},{:.1}", x(i), y(v))))
                .collect();
            let c = series.color;
            let dash = if series.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let _ = writeln!(
                out,
                r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2.5"{dash}/>"#,
                points.join(" ")
            );
            for point in &points {
                let (px, py) = point.split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(out, r#"<circle cx="{px}" cy="{py}" r="3.5" fill="{c}"/>"#);
            }
            let ly = TOP + 20.0 + count(row) * 22.0;
            let lx = WIDTH - RIGHT + 20.0;
            let _ = writeln!(
                out,
                r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{c}" stroke-width="2.5"{dash}/><text x="{}" y="{}">{}</text>"#,
                lx + 24.0,
                lx + 30.0,
                ly + 4.0,
                series.label
            );
        }
        out.push_str("</svg>\n");
        out
    }
}

/// A count the chart places or labels (a Service count, a column, a row).
#[expect(
    clippy::cast_precision_loss,
    reason = "chart counts are far below 2^52"
)]
fn count(n: usize) -> f64 {
    n as f64
}

/// 1, 2 or 5 times a power of ten, at or above `value`.
fn nice_ceiling(value: f64) -> f64 {
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|v| *v >= value)
        .unwrap_or(10.0 * magnitude)
}

fn thousands(value: f64) -> String {
    if value >= 1_000.0 {
        format!("{}k", (value / 1_000.0 * 10.0).round() / 10.0)
    } else {
        // Small axes (millions of packets) keep their quarter steps.
        format!("{}", (value * 100.0).round() / 100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[expect(
        clippy::float_cmp,
        reason = "nice_ceiling returns 1, 2, 5 or 10 times a power of ten, exactly"
    )]
    fn axis_values() {
        assert_eq!(nice_ceiling(17_300.0), 20_000.0);
        assert_eq!(nice_ceiling(20_000.0), 20_000.0);
        assert_eq!(nice_ceiling(31_400.0), 50_000.0);
        assert_eq!(thousands(50_000.0), "50k");
        assert_eq!(thousands(2_500.0), "2.5k");
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(1.25), "1.25");
        assert_eq!(thousands(250.0), "250");
    }

    #[test]
    fn empty_report_is_still_a_document() {
        let report = BenchReport {
            kernel: "k".into(),
            cpus: 2,
            tools: String::new(),
            full: false,
            run_ms: 1,
            runs: 1,
            scales: Vec::new(),
            node_port: Vec::new(),
            node_port_churn: Vec::new(),
            churn_s: 0,
            node_port_forwarding: Vec::new(),
            footprint: Vec::new(),
            footprint_failures: Vec::new(),
            counter_cost: None,
        };
        for svg in [svg(&report), memory_svg(&report)] {
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        }
    }
}
