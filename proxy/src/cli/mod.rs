//! The command line, a contract: the DaemonSet in `deploy/` (whose arguments
//! `proxy/tests/deploy.rs` parses with this parser) and other tools script
//! against these names, so they only ever grow.

pub mod balancing_args;
pub mod checked_flags;
pub mod counter_args;
pub mod counts_view;
pub mod explain_args;
pub mod kube_proxy_config;
pub mod masquerade_args;
pub mod services_view;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::node::nat_ports::NatPortRange;

/// A quarter of the default service map: room for a Service of 5,000
/// endpoints on two ports exposed on several node addresses, and never
/// more than a quarter of the node's Services.
pub const SERVICE_ENTRY_BUDGET: u32 = switchyard_abi::SERVICES_MAX_ENTRIES / 4;

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Kubernetes service proxy in eBPF"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the datapath and keep it in step with the service sources.
    Run(Box<RunArgs>),
    /// Show what the kernel maps hold, per frontend.
    Services(ServicesArgs),
    /// Detach the programs and remove every pin.
    Cleanup(CleanupArgs),
    /// Remove kube-proxy's iptables chains, nftables tables and IPVS state
    /// from this node's network namespace, as `kube-proxy --cleanup` does.
    /// Connections netfilter already translated keep flowing.
    CleanupKubeProxy,
    /// List the per-packet path's tracked connections and count them.
    Conntrack(ServicesArgs),
    /// Replay the datapath's decision for one connection against the live
    /// maps, step by step.
    Explain(explain_args::ExplainArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Folder of Kubernetes YAML (Services, EndpointSlices, Nodes) to serve
    /// instead of a cluster; re-read when it changes.
    #[arg(long, value_name = "DIR", conflicts_with = "kubeconfig")]
    pub manifests: Option<PathBuf>,
    /// Kubeconfig for the API server (default: in-cluster config).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (default: $NODE_NAME, then the hostname), as its
    /// Node object and EndpointSlices' nodeName spell it.
    #[arg(long, env = "NODE_NAME", visible_alias = "hostname-override")]
    pub node_name: Option<String>,
    /// cgroup v2 directory the socket hooks attach to.
    #[arg(long, value_name = "PATH", default_value = "/sys/fs/cgroup")]
    pub cgroup: PathBuf,
    /// Also destroy TCP connections (not only connected UDP sockets) whose
    /// backend left its Service. Off, as kube-proxy leaves TCP flows be.
    #[arg(long)]
    pub destroy_tcp_to_removed_backends: bool,
    #[command(flatten)]
    pub pins: PinArgs,
    /// Devices for the per-packet path (default: auto).
    #[arg(long, value_name = "IF", value_delimiter = ',')]
    pub devices: Vec<String>,
    /// The per-packet path at XDP too, before the stack allocates anything:
    /// `auto` on every device whose driver has native XDP (tc alone
    /// elsewhere), `native` on every device or the agent stops naming the
    /// one without, `off` tc alone. tc stays on every device for what XDP
    /// leaves to it (refusals, ICMP errors, fragments, other next hops).
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = clap::value_parser!(crate::datapath::xdp_attach::XdpMode))]
    pub xdp: crate::datapath::xdp_attach::XdpMode,
    /// Node addresses NodePorts answer on (kube-proxy semantics).
    #[arg(long, value_name = "CIDR", value_delimiter = ',')]
    pub nodeport_addresses: Vec<String>,
    /// The only externalIPs served: CIDRs or addresses, or `none`. Unset,
    /// every externalIP is served as kube-proxy serves them, except one of
    /// the node's own addresses (which would take that port from the node
    /// itself) unless listed here. Clusters that do not restrict who may
    /// set `spec.externalIPs` (CVE-2020-8554) should set it.
    #[arg(long, value_name = "CIDR|none", value_delimiter = ',')]
    pub external_ip_ranges: Vec<String>,
    /// Pod CIDRs of the cluster: packets from outside to a ClusterIP are
    /// masqueraded unless their source is in one (kube-proxy's
    /// detect-local ClusterCIDR mode).
    #[arg(long, value_name = "CIDR", value_delimiter = ',')]
    pub cluster_cidr: Vec<String>,
    /// The Service CIDRs the API server allocates ClusterIPs from: a
    /// connection to an address in them that no Service holds is dropped,
    /// as kube-proxy drops traffic to unallocated ClusterIPs, rather than
    /// sent on to the node's default route.
    #[arg(long, value_name = "CIDR", value_delimiter = ',')]
    pub service_cluster_ip_range: Vec<String>,
    /// Serve packets that reach this node from outside addressed to a
    /// ClusterIP (routers and BGP speakers announce the service range), as
    /// kube-proxy does.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub cluster_ip_from_outside: bool,
    /// Source ports connections NATed to this node take, FIRST-LAST
    /// (default: every port from 1024 outside the node's
    /// ip_local_port_range and the NodePort range).
    #[arg(long, value_name = "FIRST-LAST")]
    pub nat_port_range: Option<NatPortRange>,
    /// Entries of the service map: a frontend (Service IP and port, per
    /// scope) takes one, and one more per endpoint. Used when the map is
    /// created; a pinned map keeps its size until `switchyard cleanup`.
    #[arg(long, value_name = "N", default_value_t = switchyard_abi::SERVICES_MAX_ENTRIES, value_parser = clap::value_parser!(u32).range(1..))]
    pub service_map_entries: u32,
    /// Entries of the backend map: one per distinct endpoint address, port
    /// and protocol. Created and kept as the service map is.
    #[arg(long, value_name = "N", default_value_t = switchyard_abi::BACKENDS_MAX_ENTRIES, value_parser = clap::value_parser!(u32).range(1..))]
    pub backend_map_entries: u32,
    /// Service map entries one Service may take at most (its ports x
    /// frontends x (1 + endpoints)), so that one Service cannot fill the
    /// node's maps; a Service over it is left out whole and named.
    #[arg(long, value_name = "N", default_value_t = SERVICE_ENTRY_BUDGET, value_parser = clap::value_parser!(u32).range(1..))]
    pub service_entry_budget: u32,
    #[command(flatten)]
    pub serving: ServingArgs,
    #[command(flatten)]
    pub takeover: TakeoverArgs,
    /// Longest time between two checks for changes (kube-proxy's
    /// syncPeriod); a pass runs only when something changed since the last
    /// complete one.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub sync_period: Duration,
    /// Shortest time between two syncs (kube-proxy's minSyncPeriod); bursts
    /// of changes within it are applied together.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub min_sync_period: Duration,
    /// KubeProxyConfiguration YAML; the fields that apply are used.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub masquerade: masquerade_args::MasqueradeArgs,
    #[command(flatten)]
    pub conntrack: ConntrackArgs,
    #[command(flatten)]
    pub counters: counter_args::CounterArgs,
    #[command(flatten)]
    pub balancing: balancing_args::BalancingArgs,
}

/// kube-proxy's HTTP endpoints.
#[derive(Debug, Args)]
pub struct ServingArgs {
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:10249")]
    pub metrics_bind_address: SocketAddr,
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:10256")]
    pub healthz_bind_address: SocketAddr,
    /// Exit when the metrics or health check address cannot be bound
    /// (kube-proxy's bindAddressHardFail); otherwise it is logged and
    /// retried while the proxy serves.
    #[arg(long)]
    pub bind_address_hard_fail: bool,
}

/// Moving a node from kube-proxy (see the migration guide in `docs/`).
#[derive(Debug, Args)]
pub struct TakeoverArgs {
    /// Serve only the Services labelled
    /// `service.kubernetes.io/service-proxy-name: NAME`, leaving the rest to
    /// the proxy that serves unlabelled ones (kube-proxy): the way to move
    /// a cluster over Service by Service. Unset, Switchyard serves what
    /// kube-proxy serves: the Services without the label.
    #[arg(long, value_name = "NAME")]
    pub service_proxy_name: Option<String>,
    /// Once this agent's datapath serves every Service, remove kube-proxy's
    /// iptables chains, nftables tables and IPVS state from the node, as
    /// `kube-proxy --cleanup` would (see `switchyard cleanup-kube-proxy`).
    #[arg(long)]
    pub cleanup_kube_proxy: bool,
}

/// kube-proxy's conntrack flags, applied to Switchyard's own conntrack.
#[derive(Debug, Args)]
pub struct ConntrackArgs {
    /// Idle timeout of established TCP connections.
    #[arg(long = "conntrack-tcp-timeout-established", value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub tcp_established: Duration,
    /// Idle timeout of TCP connections in CLOSE_WAIT: one side's FIN is
    /// acknowledged and the other side has not closed. The other states
    /// keep netfilter's defaults (see the README).
    #[arg(long = "conntrack-tcp-timeout-close-wait", value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub tcp_close_wait: Duration,
    /// Idle timeout of UDP flows the backend has not answered.
    #[arg(long = "conntrack-udp-timeout", value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub udp: Duration,
    /// Idle timeout of answered UDP flows.
    #[arg(long = "conntrack-udp-timeout-stream", value_name = "DURATION", default_value = "120s", value_parser = humantime::parse_duration)]
    pub udp_stream: Duration,
    /// How often expired connections are collected.
    #[arg(long = "conntrack-gc-interval", value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub gc_interval: Duration,
    /// Connections tracked per CPU (kube-proxy's conntrack.maxPerCore): the
    /// per-packet path's conntrack map holds this times the CPUs the agent
    /// may run on, at least --conntrack-min; 0 keeps the built-in size.
    #[arg(
        long = "conntrack-max-per-core",
        value_name = "COUNT",
        default_value_t = 32_768
    )]
    pub max_per_core: u32,
    /// The least the conntrack map holds (kube-proxy's conntrack.min).
    #[arg(
        long = "conntrack-min",
        value_name = "COUNT",
        default_value_t = 131_072
    )]
    pub min: u32,
}

impl ConntrackArgs {
    /// The conntrack map's size on a node of `cpus` CPUs, as kube-proxy
    /// sizes `nf_conntrack_max`: max(maxPerCore x CPUs, min), or, with
    /// maxPerCore 0 (kube-proxy then leaves the kernel's limit alone), the
    /// map's built-in size.
    pub fn entries(&self, cpus: usize) -> usize {
        let count = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
        if self.max_per_core == 0 {
            return count(switchyard_abi::CONNTRACK_MAX_ENTRIES);
        }
        count(self.max_per_core)
            .saturating_mul(cpus)
            .max(count(self.min))
    }

    pub fn timeouts(&self) -> switchyard_abi::FlowTimeouts {
        let seconds = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX).max(1);
        switchyard_abi::FlowTimeouts {
            tcp_established: seconds(self.tcp_established),
            tcp_close_wait: seconds(self.tcp_close_wait),
            udp: seconds(self.udp),
            udp_stream: seconds(self.udp_stream),
            ..switchyard_abi::FlowTimeouts::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct PinArgs {
    /// Directory on a bpf filesystem where maps and links are pinned.
    #[arg(long, value_name = "PATH", default_value = "/sys/fs/bpf/switchyard")]
    pub bpffs: PathBuf,
}

#[derive(Debug, Args)]
pub struct ServicesArgs {
    #[command(flatten)]
    pub pins: PinArgs,
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    #[command(flatten)]
    pub pins: PinArgs,
    /// Accepted for symmetry with `run`; links are found through their pins.
    #[arg(long, value_name = "PATH", default_value = "/sys/fs/cgroup")]
    pub cgroup: PathBuf,
    /// How long connections on the per-packet path may take to end, while
    /// every new one goes to the stack (kube-proxy, started again before),
    /// before the programs go; 0s removes everything at once.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// The agent's conntrack timeouts, which say when a connection is over.
    #[command(flatten)]
    pub conntrack: ConntrackArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_run_flags() {
        let cli = Cli::try_parse_from([
            "switchyard",
            "run",
            "--manifests",
            "/etc/switchyard",
            "--node-name",
            "node-a",
            "--cgroup",
            "/sys/fs/cgroup/unified/test",
            "--bpffs",
            "/sys/fs/bpf/test",
            "--devices",
            "eth0,eth1",
            "--nodeport-addresses",
            "10.0.0.0/8",
            "--metrics-bind-address",
            "127.0.0.1:19249",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("expected run");
        };
        assert_eq!(run.devices, ["eth0", "eth1"]);
        assert_eq!(run.node_name.as_deref(), Some("node-a"));
        assert_eq!(run.serving.metrics_bind_address.port(), 19249);
        assert_eq!(run.serving.healthz_bind_address.port(), 10256);
    }

    #[test]
    fn services_takes_json_output() {
        let cli = Cli::try_parse_from(["switchyard", "services", "-o", "json"]).unwrap();
        let Command::Services(args) = cli.command else {
            panic!("expected services");
        };
        assert_eq!(args.output, OutputFormat::Json);
        assert_eq!(args.pins.bpffs, PathBuf::from("/sys/fs/bpf/switchyard"));
    }

    #[test]
    fn manifests_and_kubeconfig_exclude_each_other() {
        let parsed =
            Cli::try_parse_from(["switchyard", "run", "--manifests", "a", "--kubeconfig", "b"]);
        assert!(parsed.is_err());
    }
}
