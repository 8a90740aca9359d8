//! Everything one bench run measured, as raw samples (written out as JSON)
//! and the summaries the report prints.

use serde::{Deserialize, Serialize};

use crate::{
    catalog::Placement,
    hook_cost::RunStats,
    load_result::{LoadResult, median, percentile},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Straight to the pod IP: the floor.
    Direct,
    Switchyard,
    Iptables,
    Nftables,
    /// Switchyard with `--xdp native` (NodePort forwarding only).
    SwitchyardXdp,
    /// A bare XDP redirect on the same devices: the ceiling.
    BareXdp,
}

impl Mode {
    pub const ALL: [Mode; 4] = [
        Mode::Direct,
        Mode::Switchyard,
        Mode::Iptables,
        Mode::Nftables,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Switchyard => "Switchyard",
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
            Mode::SwitchyardXdp => "Switchyard (XDP)",
            Mode::BareXdp => "bare XDP redirect",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CrrSample {
    /// None for direct, which has no Service to place.
    pub placement: Option<Placement>,
    pub result: LoadResult,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModeResult {
    pub mode: Mode,
    pub crr: Vec<CrrSample>,
    /// Direct runs interleaved with this mode's own (Switchyard's).
    pub paired_direct: Vec<LoadResult>,
    pub rr: Option<LoadResult>,
    pub stream: Option<LoadResult>,
    /// Switchyard: process start to all Services programmed; baselines:
    /// the restore of the whole rule set.
    pub program_all_s: Option<f64>,
    /// One endpoint change until new connections reach the new backend.
    pub change_ms: Vec<f64>,
    /// Baselines: how long the restore tool itself took for each change.
    pub change_apply_ms: Vec<f64>,
    pub peak_rss_mib: Option<f64>,
    /// Switchyard: kernel ns per connect4 run (BPF run-time statistics).
    pub hook_ns: Option<f64>,
    /// The same for connections to a non-Service address.
    pub hook_passthrough_ns: Option<f64>,
    /// Why this mode has no (or partial) figures at this scale.
    pub failure: Option<String>,
}

impl ModeResult {
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            crr: Vec::new(),
            paired_direct: Vec::new(),
            rr: None,
            stream: None,
            program_all_s: None,
            change_ms: Vec::new(),
            change_apply_ms: Vec::new(),
            peak_rss_mib: None,
            hook_ns: None,
            hook_passthrough_ns: None,
            failure: None,
        }
    }

    /// Median connection rate at `placement` (direct ignores placement).
    pub fn crr_rate(&self, placement: Placement) -> Option<f64> {
        let rates: Vec<f64> = self
            .crr
            .iter()
            .filter(|s| s.placement.is_none() || s.placement == Some(placement))
            .map(|s| s.result.rate())
            .collect();
        (!rates.is_empty()).then(|| median(&rates))
    }

    pub fn crr_errors(&self) -> u64 {
        self.crr.iter().map(|s| s.result.errors).sum()
    }

    pub fn change_percentile(&self, q: f64) -> Option<f64> {
        let mut sorted = self.change_ms.clone();
        sorted.sort_by(f64::total_cmp);
        (!sorted.is_empty()).then(|| percentile(&sorted, q))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Scale {
    /// Services besides the two probed ones.
    pub services: usize,
    pub modes: Vec<ModeResult>,
}

impl Scale {
    pub fn mode(&self, mode: Mode) -> Option<&ModeResult> {
        self.modes.iter().find(|m| m.mode == mode)
    }

    /// `mode`'s connection rate over `base`'s, at `placement`; over direct,
    /// the direct runs interleaved with `mode`'s where there are any.
    pub fn ratio(&self, mode: Mode, base: Mode, placement: Placement) -> Option<f64> {
        let top = self.mode(mode)?.crr_rate(placement)?;
        let bottom = match base {
            Mode::Direct => self.direct_rate_beside(mode)?,
            _ => self.mode(base)?.crr_rate(placement)?,
        };
        (bottom > 0.0).then(|| top / bottom)
    }

    /// The direct connection rate to compare `mode` with.
    pub fn direct_rate_beside(&self, mode: Mode) -> Option<f64> {
        let paired: Vec<f64> = self
            .mode(mode)?
            .paired_direct
            .iter()
            .map(LoadResult::rate)
            .collect();
        if paired.is_empty() {
            self.mode(Mode::Direct)?.crr_rate(Placement::Last)
        } else {
            Some(median(&paired))
        }
    }

    /// Microseconds a connection costs `mode` beyond a direct one, from the
    /// two rates: 1/rate(mode) - 1/rate(direct).
    pub fn extra_us_per_connection(&self, mode: Mode, placement: Placement) -> Option<f64> {
        let rate = self.mode(mode)?.crr_rate(placement)?;
        let direct = self.direct_rate_beside(mode)?;
        (rate > 0.0 && direct > 0.0).then(|| 1e6 / rate - 1e6 / direct)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodePortResult {
    pub mode: Mode,
    pub samples: Vec<LoadResult>,
}

/// The two NodePort forwarding loads (see `forwarding`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardingTest {
    /// Small datagrams from the client: the forward path.
    Udp,
    /// A bulk stream from the backend: the reply path.
    Tcp,
}

impl ForwardingTest {
    pub fn label(self) -> &'static str {
        match self {
            ForwardingTest::Udp => "UDP flood",
            ForwardingTest::Tcp => "TCP stream",
        }
    }
}

/// One forwarding run: what the node sent on, and its core's busy time.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ForwardingSample {
    /// Packets and bytes out of the node's device the data leaves by.
    pub packets: u64,
    pub bytes: u64,
    /// Busy seconds of the core the node's packet work was steered to.
    pub node_cpu_s: f64,
    pub elapsed_s: f64,
    /// Datagrams sent (UDP) or reads made (TCP) by the client.
    pub sent: u64,
    /// Kernel time and runs of the agent's per-packet programs over the
    /// run (BPF run-time statistics); none where no agent ran.
    #[serde(default)]
    pub programs: Option<RunStats>,
    /// The agent's packet counters over the run, by
    /// `switchyard_abi::COUNTER_*`; none where no agent ran.
    #[serde(default)]
    pub counters: Option<Vec<u64>>,
}

#[expect(
    clippy::cast_precision_loss,
    reason = "counts over seconds, as rates for the report"
)]
impl ForwardingSample {
    pub fn packets_per_core_s(&self) -> f64 {
        if self.node_cpu_s > 0.0 {
            self.packets as f64 / self.node_cpu_s
        } else {
            0.0
        }
    }

    pub fn gbit_per_core_s(&self) -> f64 {
        if self.node_cpu_s > 0.0 {
            self.bytes as f64 * 8.0 / self.node_cpu_s / 1e9
        } else {
            0.0
        }
    }

    /// Nanoseconds the agent's per-packet programs ran per packet sent on, NaN where
    /// no agent ran (a median of NaNs is NaN: the report leaves it out).
    pub fn program_ns_per_packet(&self) -> f64 {
        match self.programs {
            Some(stats) if self.packets > 0 => stats.run_time_ns as f64 / self.packets as f64,
            _ => f64::NAN,
        }
    }

    /// The share of the packets translated that the XDP program sent on
    /// itself, tc never seeing them (NaN where no agent ran).
    pub fn sent_at_xdp(&self) -> f64 {
        use switchyard_abi::{
            COUNTER_REPLY_TRANSLATED, COUNTER_TRANSLATED, COUNTER_TRANSLATED_NEW, COUNTER_XDP_SENT,
        };
        let Some(counters) = &self.counters else {
            return f64::NAN;
        };
        let at = |index: u32| counters.get(index as usize).copied().unwrap_or(0);
        let translated =
            at(COUNTER_TRANSLATED_NEW) + at(COUNTER_TRANSLATED) + at(COUNTER_REPLY_TRANSLATED);
        if translated == 0 {
            return f64::NAN;
        }
        at(COUNTER_XDP_SENT) as f64 / translated as f64
    }

    pub fn packets_per_s(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.packets as f64 / self.elapsed_s
        } else {
            0.0
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForwardingResult {
    pub test: ForwardingTest,
    pub mode: Mode,
    pub samples: Vec<ForwardingSample>,
}

impl ForwardingResult {
    /// The median of `figure` over the samples.
    pub fn median(&self, figure: fn(&ForwardingSample) -> f64) -> f64 {
        let values: Vec<f64> = self.samples.iter().map(figure).collect();
        crate::load_result::median(&values)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchReport {
    pub kernel: String,
    pub cpus: usize,
    pub tools: String,
    pub full: bool,
    pub run_ms: u64,
    pub runs: usize,
    pub scales: Vec<Scale>,
    pub node_port: Vec<NodePortResult>,
    /// Sustained NodePort churn to a remote backend (`churn`).
    #[serde(default)]
    pub node_port_churn: Vec<NodePortResult>,
    /// How long each churn run lasted, in seconds.
    #[serde(default)]
    pub churn_s: u64,
    /// NodePort forwarding per node core (`forwarding`).
    #[serde(default)]
    pub node_port_forwarding: Vec<ForwardingResult>,
    /// The agent's own cost at scale, with no traffic (`footprint`).
    #[serde(default)]
    pub footprint: Vec<Footprint>,
    /// Catalog sizes the agent could not be measured at, and why.
    #[serde(default)]
    pub footprint_failures: Vec<String>,
    /// What the per-Service counters cost the hooks.
    #[serde(default)]
    pub counter_cost: Option<crate::counter_cost::CounterCost>,
}

/// Where the agent read the catalog from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FootprintSource {
    Api,
    Manifests,
}

impl FootprintSource {
    pub fn label(self) -> &'static str {
        match self {
            Self::Api => "API",
            Self::Manifests => "manifests",
        }
    }
}

/// The agent alone at one catalog size (`footprint`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Footprint {
    pub source: FootprintSource,
    pub services: usize,
    /// Endpoints per Service.
    pub endpoints: usize,
    /// Process start to every Service programmed.
    pub cold_start_s: f64,
    /// VmHWM once everything is programmed.
    pub peak_rss_mib: f64,
    /// VmHWM after a relist forced by `410 Gone` (API only).
    pub relist_peak_rss_mib: Option<f64>,
    /// User and system CPU over whole sync periods with nothing changing.
    pub idle_cpu_s_per_min: f64,
    /// The slowest full pass in that window (one with nothing to change).
    pub idle_full_pass_ms: Option<f64>,
    /// How many full passes ran in that window.
    #[serde(default)]
    pub idle_full_passes: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "the tests' rates are whole, positive and small"
    )]
    fn crr(mode: Mode, placement: Option<Placement>, rates: &[f64]) -> ModeResult {
        let mut result = ModeResult::new(mode);
        for rate in rates {
            result.crr.push(CrrSample {
                placement,
                result: LoadResult {
                    operations: *rate as u64,
                    elapsed_s: 1.0,
                    ..LoadResult::default()
                },
            });
        }
        result
    }

    #[test]
    fn forwarding_figures_are_per_busy_second_of_the_node_core() {
        let sample = |packets, node_cpu_s| ForwardingSample {
            packets,
            bytes: packets * 100,
            node_cpu_s,
            elapsed_s: 2.0,
            sent: packets,
            programs: None,
            counters: None,
        };
        let result = ForwardingResult {
            test: ForwardingTest::Udp,
            mode: Mode::Switchyard,
            samples: vec![
                sample(1_000_000, 1.0),
                sample(1_000_000, 0.5),
                sample(900_000, 1.0),
            ],
        };
        // 0.9 M, 1 M and 2 M packets per busy second: the median is 1 M,
        // whatever the wall-clock rate.
        assert!((result.median(ForwardingSample::packets_per_core_s) - 1e6).abs() < 1e-6);
        assert!((result.median(ForwardingSample::packets_per_s) - 5e5).abs() < 1e-6);
        assert!((sample(1_000_000, 1.0).gbit_per_core_s() - 0.8).abs() < 1e-9);
        assert!(sample(1, 0.0).packets_per_core_s().abs() < f64::EPSILON);
        // Program time per packet only where an agent ran.
        assert!(sample(10, 1.0).program_ns_per_packet().is_nan());
        let measured = ForwardingSample {
            programs: Some(RunStats {
                run_time_ns: 5_000,
                runs: 20,
            }),
            ..sample(10, 1.0)
        };
        assert!((measured.program_ns_per_packet() - 500.0).abs() < 1e-9);
    }

    #[test]
    fn ratios_and_extra_cost_come_from_medians() {
        let scale = Scale {
            services: 0,
            modes: vec![
                crr(Mode::Direct, None, &[10_000.0, 9_000.0, 11_000.0]),
                crr(
                    Mode::Iptables,
                    Some(Placement::Last),
                    &[5_000.0, 4_000.0, 6_000.0],
                ),
            ],
        };
        let ratio = scale
            .ratio(Mode::Iptables, Mode::Direct, Placement::Last)
            .unwrap();
        assert!((ratio - 0.5).abs() < 1e-9);
        // 1/5000 s - 1/10000 s = 100 us.
        let extra = scale
            .extra_us_per_connection(Mode::Iptables, Placement::Last)
            .unwrap();
        assert!((extra - 100.0).abs() < 1e-9);
        assert_eq!(
            scale.ratio(Mode::Iptables, Mode::Direct, Placement::Random),
            None
        );
        assert_eq!(
            scale.ratio(Mode::Nftables, Mode::Direct, Placement::Last),
            None
        );
    }
}
