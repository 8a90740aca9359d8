use std::{collections::BTreeSet, path::Path};

use clap::Parser;

use super::*;
use crate::cli::{Cli, Command};

struct Given(BTreeSet<&'static str>);

impl ExplicitFlags for Given {
    fn is_explicit(&self, id: &str) -> bool {
        self.0.contains(id)
    }
}

fn run_args(extra: &[&str]) -> RunArgs {
    let args = ["switchyard", "run"]
        .into_iter()
        .chain(extra.iter().copied());
    match Cli::try_parse_from(args).unwrap().command {
        Command::Run(run) => *run,
        _ => unreachable!(),
    }
}

/// The shape of a real kube-proxy ConfigMap's config.conf.
const CONFIG: &str = "
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
bindAddress: 0.0.0.0
clientConnection:
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 5
clusterCIDR: ' 10.244.0.0/16, fd00:10:244::/56'
healthzBindAddress: 0.0.0.0:10256
metricsBindAddress: 0.0.0.0:10249
mode: iptables
nodePortAddresses: [10.0.0.0/8]
iptables:
  masqueradeAll: false
  minSyncPeriod: 1s
  syncPeriod: 30s
conntrack:
  maxPerCore: 32768
";

#[test]
fn applies_the_fields_that_mean_something_here() {
    let config = KubeProxyConfiguration::parse(Path::new("c"), CONFIG).unwrap();
    let mut args = run_args(&[]);
    config
        .apply_to(Path::new("c"), &mut args, &Given(BTreeSet::new()))
        .unwrap();
    assert_eq!(
        args.serving.metrics_bind_address,
        "0.0.0.0:10249".parse().unwrap()
    );
    assert_eq!(
        args.serving.healthz_bind_address,
        "0.0.0.0:10256".parse().unwrap()
    );
    assert_eq!(args.cluster_cidr, ["10.244.0.0/16", "fd00:10:244::/56"]);
    assert_eq!(args.nodeport_addresses, ["10.0.0.0/8"]);
    assert_eq!(args.min_sync_period, Duration::from_secs(1));
    assert_eq!(args.sync_period, Duration::from_secs(30));
    assert_eq!(
        args.kubeconfig.as_deref(),
        Some(Path::new("/var/lib/kube-proxy/kubeconfig.conf"))
    );
}

#[test]
fn command_line_flags_win_over_the_file() {
    let config = KubeProxyConfiguration::parse(Path::new("c"), CONFIG).unwrap();
    let mut args = run_args(&["--metrics-bind-address", "127.0.0.1:9999"]);
    let given = Given(["metrics_bind_address"].into_iter().collect());
    config.apply_to(Path::new("c"), &mut args, &given).unwrap();
    assert_eq!(
        args.serving.metrics_bind_address,
        "127.0.0.1:9999".parse().unwrap()
    );
    assert_eq!(
        args.serving.healthz_bind_address,
        "0.0.0.0:10256".parse().unwrap()
    );
}

#[test]
fn bad_values_name_the_file_and_field() {
    let cases = [
        ("kind: Deployment", "kind"),
        ("metricsBindAddress: nowhere", "metricsBindAddress"),
        ("syncPeriod: soon", "syncPeriod"),
    ];
    for (text, field) in cases {
        let path = Path::new("/etc/kube-proxy/config.conf");
        let result = KubeProxyConfiguration::parse(path, text)
            .and_then(|config| config.apply_to(path, &mut run_args(&[]), &Given(BTreeSet::new())));
        let line = result.unwrap_err().to_string();
        assert!(
            line.contains("config.conf") && line.contains(field),
            "{line}"
        );
    }
}

/// What a real file does to `run`'s flags, and what is said about it.
struct FileCase {
    file: &'static str,
    text: &'static str,
    check: fn(&RunArgs),
    ignored: &'static [&'static str],
}

const FILES: &[FileCase] = &[
    FileCase {
        file: "kubeadm.yaml",
        text: include_str!("../../../tests/fixtures/kube-proxy-config/kubeadm.yaml"),
        check: |args| {
            // Only what is not at kube-proxy's default changes a flag.
            let defaults = run_args(&[]);
            assert_eq!(args.cluster_cidr, ["10.244.0.0/16"]);
            assert_eq!(
                args.kubeconfig.as_deref(),
                Some(Path::new("/var/lib/kube-proxy/kubeconfig.conf"))
            );
            assert_eq!(args.sync_period, defaults.sync_period);
            assert_eq!(args.conntrack.udp, defaults.conntrack.udp);
            assert_eq!(args.conntrack.max_per_core, defaults.conntrack.max_per_core);
            assert_eq!(
                args.serving.healthz_bind_address,
                defaults.serving.healthz_bind_address
            );
            assert!(!args.masquerade.masquerade_all && !args.serving.bind_address_hard_fail);
            assert_eq!(
                args.masquerade.detect_local_mode,
                DetectLocalMode::ClusterCidr
            );
            assert_eq!(args.node_name, None);
        },
        // bindAddress 0.0.0.0 is kube-proxy's default too, but set.
        ignored: &["bindAddress"],
    },
    FileCase {
        file: "kind.yaml",
        text: include_str!("../../../tests/fixtures/kube-proxy-config/kind.yaml"),
        check: |args| {
            assert_eq!(args.conntrack.max_per_core, 0);
            assert_eq!(args.conntrack.tcp_established, Duration::from_hours(24));
            assert_eq!(args.min_sync_period, Duration::from_secs(1));
            assert_eq!(
                args.serving.metrics_bind_address,
                "0.0.0.0:10249".parse().unwrap()
            );
        },
        // A map of gates all false is kube-proxy's default.
        ignored: &[],
    },
    FileCase {
        file: "tuned-nftables.yaml",
        text: include_str!("../../../tests/fixtures/kube-proxy-config/tuned-nftables.yaml"),
        check: |args| {
            assert_eq!(args.node_name.as_deref(), Some("worker-7.example.com"));
            assert!(args.serving.bind_address_hard_fail);
            assert_eq!(
                args.serving.metrics_bind_address,
                "127.0.0.1:10249".parse().unwrap()
            );
            assert_eq!(args.cluster_cidr, ["10.244.0.0/16", "fd00:10:244::/56"]);
            assert_eq!(args.nodeport_addresses, ["primary"]);
            // The nftables section, as kube-proxy in nftables mode reads it.
            assert!(args.masquerade.masquerade_all);
            assert_eq!(args.sync_period, Duration::from_secs(45));
            assert_eq!(args.min_sync_period, Duration::from_secs(2));
            assert_eq!(
                args.masquerade.detect_local_mode,
                DetectLocalMode::InterfaceNamePrefix
            );
            assert_eq!(args.masquerade.pod_interface_name_prefix, "veth");
            let conntrack = &args.conntrack;
            assert_eq!((conntrack.max_per_core, conntrack.min), (65_536, 262_144));
            assert_eq!(conntrack.tcp_established, Duration::from_hours(12));
            assert_eq!(conntrack.tcp_close_wait, Duration::from_mins(30));
            assert_eq!(conntrack.udp, Duration::from_secs(15));
            assert_eq!(conntrack.udp_stream, Duration::from_mins(3));
            crate::cli::checked_flags::CheckedFlags::check(args).expect("the file's values check");
        },
        ignored: &[
            "clientConnection.qps",
            "clientConnection.burst",
            "nftables.masqueradeBit",
            "conntrack.tcpBeLiberal",
            "oomScoreAdj",
            "enableProfiling",
            "frobnicate",
        ],
    },
];

#[test]
fn real_files_set_their_flags_and_name_what_they_ignore() {
    for case in FILES {
        let path = Path::new(case.file);
        let config = KubeProxyConfiguration::parse(path, case.text).unwrap();
        let mut args = run_args(&[]);
        config
            .apply_to(path, &mut args, &Given(BTreeSet::new()))
            .unwrap();
        (case.check)(&args);
        let said = config.ignored();
        let named: Vec<&str> = said
            .iter()
            .map(|line| line.split(' ').next().unwrap())
            .collect();
        assert_eq!(named, case.ignored, "{}: {said:#?}", case.file);
        assert!(said.iter().all(|line| !line.contains('\n')));
    }
}

#[test]
fn every_field_is_listed_once_with_what_it_does() {
    let mut seen = BTreeSet::new();
    for (field, treatment) in FIELDS {
        assert!(seen.insert(*field), "{field} listed twice");
        if let Treatment::Ignored(reason) = treatment {
            assert!(!reason.is_empty(), "{field}");
        }
        if let Some((section, _)) = field.rsplit_once('.') {
            let parent = FIELDS.iter().find(|(name, _)| *name == section);
            assert_eq!(parent.map(|(_, t)| *t), Some(Treatment::Section), "{field}");
        }
    }
    // Each applied field names a flag `run` has.
    let help = {
        use clap::CommandFactory;
        let mut command = Cli::command();
        command
            .find_subcommand_mut("run")
            .unwrap()
            .render_long_help()
            .to_string()
    };
    for (field, treatment) in FIELDS {
        if let Treatment::Applied(flag) = treatment
            && flag.starts_with("--")
        {
            assert!(help.contains(flag), "{field}: {flag} is not a run flag");
        }
    }
}

#[test]
fn bad_detect_local_mode_names_the_field() {
    let path = Path::new("/etc/kube-proxy/config.conf");
    let config = KubeProxyConfiguration::parse(path, "detectLocalMode: PodCIDR").unwrap();
    let error = config
        .apply_to(path, &mut run_args(&[]), &Given(BTreeSet::new()))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("config.conf: detectLocalMode: unknown mode \"PodCIDR\""),
        "{error}"
    );
}
