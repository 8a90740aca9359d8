//! `run`'s flags checked together, before anything is loaded, attached or
//! bound: a bad value costs one line naming the flag, never a panic or a
//! half-started agent. Values from `--config` pass through here too.

use std::time::Duration;

use crate::{
    cli::RunArgs,
    convert::claim::parse_external_ip_ranges,
    model::{
        address::{BadCidr, Cidr},
        counter_policy::{BadCounterSelector, CounterPolicy},
    },
    node::node_network::{BadNodePortAddress, NodePortAddresses},
};

/// The longest any duration flag may be: beyond it timers and deadlines
/// computed from it (a sync period doubled for `/healthz`) would overflow,
/// and nobody means a period of more than a year.
pub const LONGEST_DURATION: Duration = Duration::from_hours(365 * 24);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    #[error("--{flag}: {} {reason}", humantime::format_duration(*value))]
    Duration {
        flag: &'static str,
        value: Duration,
        reason: &'static str,
    },
    #[error("--{flag}: {source}")]
    Cidr { flag: &'static str, source: BadCidr },
    #[error(transparent)]
    NodePortAddress(#[from] BadNodePortAddress),
    #[error("--service-counters-for: {source}")]
    CounterSelector { source: BadCounterSelector },
}

/// What the flags say, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedFlags {
    pub service_cidrs: Vec<Cidr>,
    pub cluster_cidrs: Vec<Cidr>,
    /// `--external-ip-ranges`: `None` serves every externalIP.
    pub external_ip_ranges: Option<Vec<Cidr>>,
    pub node_port_addresses: NodePortAddresses,
    /// `--service-counters*`.
    pub counters: CounterPolicy,
}

impl CheckedFlags {
    pub fn check(args: &RunArgs) -> Result<Self, FlagError> {
        let conntrack = &args.conntrack;
        let durations = [
            ("sync-period", args.sync_period, true),
            ("min-sync-period", args.min_sync_period, false),
            ("conntrack-gc-interval", conntrack.gc_interval, true),
            (
                "conntrack-tcp-timeout-established",
                conntrack.tcp_established,
                false,
            ),
            (
                "conntrack-tcp-timeout-close-wait",
                conntrack.tcp_close_wait,
                false,
            ),
            ("conntrack-udp-timeout", conntrack.udp, false),
            ("conntrack-udp-timeout-stream", conntrack.udp_stream, false),
        ];
        for (flag, value, positive) in durations {
            let reason = if positive && value.is_zero() {
                "must be more than zero"
            } else if value > LONGEST_DURATION {
                "is longer than a year"
            } else {
                continue;
            };
            return Err(FlagError::Duration {
                flag,
                value,
                reason,
            });
        }
        // kube-proxy's own validation: bursts are batched within the
        // shorter period, so it cannot exceed the longer one.
        if args.min_sync_period > args.sync_period {
            return Err(FlagError::Duration {
                flag: "min-sync-period",
                value: args.min_sync_period,
                reason: "is longer than --sync-period",
            });
        }
        let cidrs = |flag, texts: &[String]| {
            texts
                .iter()
                .map(|text| text.trim().parse())
                .collect::<Result<Vec<Cidr>, _>>()
                .map_err(|source| FlagError::Cidr { flag, source })
        };
        Ok(Self {
            service_cidrs: cidrs("service-cluster-ip-range", &args.service_cluster_ip_range)?,
            cluster_cidrs: cidrs("cluster-cidr", &args.cluster_cidr)?,
            external_ip_ranges: parse_external_ip_ranges(&args.external_ip_ranges).map_err(
                |source| FlagError::Cidr {
                    flag: "external-ip-ranges",
                    source,
                },
            )?,
            node_port_addresses: NodePortAddresses::from_flag(&args.nodeport_addresses)?,
            counters: args
                .counters
                .policy()
                .map_err(|source| FlagError::CounterSelector { source })?,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn check(flags: &[&str]) -> Result<CheckedFlags, String> {
        let mut command_line = vec!["switchyard", "run"];
        command_line.extend_from_slice(flags);
        let Command::Run(args) = Cli::try_parse_from(command_line)
            .map_err(|e| e.to_string())?
            .command
        else {
            unreachable!("parsed run");
        };
        CheckedFlags::check(&args).map_err(|e| e.to_string())
    }

    #[test]
    fn every_bad_value_is_one_line_naming_its_flag() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--conntrack-gc-interval", "0s"],
                "--conntrack-gc-interval: 0s must be more than zero",
            ),
            (
                &["--sync-period", "0s"],
                "--sync-period: 0s must be more than zero",
            ),
            (
                &["--sync-period", "200years"],
                "--sync-period: 200years is longer than a year",
            ),
            (
                &["--min-sync-period", "1m", "--sync-period", "30s"],
                "--min-sync-period: 1m is longer than --sync-period",
            ),
            (
                &["--nodeport-addresses", "10.0.0.0/8,primry"],
                "--nodeport-addresses: \"primry\" is neither a CIDR nor \"primary\"",
            ),
            (
                &["--external-ip-ranges", "198.51.100.0/33"],
                "--external-ip-ranges: not a CIDR: \"198.51.100.0/33\" (expected ADDRESS/PREFIX-LENGTH)",
            ),
            (
                &["--cluster-cidr", "10.244.0.0"],
                "--cluster-cidr: not a CIDR: \"10.244.0.0\" (expected ADDRESS/PREFIX-LENGTH)",
            ),
        ];
        for (flags, want) in cases {
            let error = check(flags).expect_err(want);
            assert_eq!(error, *want);
            assert!(!error.contains('\n'), "{error}");
        }
    }

    #[test]
    fn good_values_are_parsed() {
        let checked = check(&[
            "--external-ip-ranges",
            "none",
            "--nodeport-addresses",
            "primary",
            "--service-cluster-ip-range",
            "10.96.0.0/12",
        ])
        .unwrap();
        assert_eq!(checked.external_ip_ranges, Some(Vec::new()));
        assert_eq!(checked.node_port_addresses, NodePortAddresses::Primary);
        assert_eq!(checked.service_cidrs.len(), 1);
        assert!(check(&[]).unwrap().external_ip_ranges.is_none());
    }
}
