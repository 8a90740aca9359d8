//! `run`'s flags checked together, before anything is loaded, attached or
//! bound: a bad value costs one line naming the flag, never a panic or a
//! half-started agent. Values from `--config` pass through here too.

use std::time::Duration;

use crate::{
    cli::{RunArgs, balancing_args::BadBalancing},
    convert::claim::parse_external_ip_ranges,
    model::{
        address::{BadCidr, Cidr},
        balancing::Balancing,
        counter_policy::{BadCounterSelector, CounterPolicy},
        detect_local::{BadDetectLocal, DetectLocal},
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
    #[error("--detect-local-mode: {source}")]
    DetectLocal { source: BadDetectLocal },
    #[error(transparent)]
    Balancing(#[from] BadBalancing),
    #[error("--service-proxy-name: {text:?} is not a label value: {reason}")]
    ServiceProxyName { text: String, reason: &'static str },
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
    /// `--detect-local-mode` and its device or CIDRs.
    pub detect_local: DetectLocal,
    /// `--lb-algorithm` and `--maglev-table-size`.
    pub balancing: Balancing,
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
        if let Some(name) = &args.takeover.service_proxy_name {
            check_label_value(name)?;
        }
        let cluster_cidrs = cidrs("cluster-cidr", &args.cluster_cidr)?;
        let masquerade = &args.masquerade;
        let detect_local = DetectLocal::new(
            masquerade.detect_local_mode,
            &cluster_cidrs,
            &masquerade.pod_bridge_interface,
            &masquerade.pod_interface_name_prefix,
        )
        .map_err(|source| FlagError::DetectLocal { source })?;
        Ok(Self {
            service_cidrs: cidrs("service-cluster-ip-range", &args.service_cluster_ip_range)?,
            cluster_cidrs,
            detect_local,
            balancing: args.balancing.balancing()?,
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

/// A Kubernetes label value: at most 63 characters, alphanumerics, `-`,
/// `_` and `.`, starting and ending with an alphanumeric. An empty name
/// would select the Services of no proxy at all.
fn check_label_value(text: &str) -> Result<(), FlagError> {
    let bad = |reason| {
        Err(FlagError::ServiceProxyName {
            text: text.to_owned(),
            reason,
        })
    };
    if text.is_empty() {
        return bad("empty");
    }
    if text.len() > 63 {
        return bad("longer than 63 characters");
    }
    let alphanumeric = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alphanumeric(text.chars().next()) || !alphanumeric(text.chars().last()) {
        return bad("must start and end with a letter or digit");
    }
    if !text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return bad("only letters, digits, '-', '_' and '.'");
    }
    Ok(())
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
                &["--detect-local-mode", "InterfaceNamePrefix"],
                "--detect-local-mode: mode InterfaceNamePrefix needs --pod-interface-name-prefix",
            ),
            (
                &["--service-proxy-name", "switch yard"],
                "--service-proxy-name: \"switch yard\" is not a label value: only letters, digits, '-', '_' and '.'",
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
