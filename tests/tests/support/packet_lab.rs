//! The packet tests' lab: the tc programs loaded into a namespace built
//! for their route lookups, with maps filled by the agent's own pipeline
//! (manifests -> desired state -> plan -> pinned maps), and frames run
//! through them with `BPF_PROG_TEST_RUN`:
//!
//! ```text
//!   eth0 192.168.77.11 fd00:77::11   client .2 / ::2 and node-2 .12 / ::12
//!                                    (static neighbours); pods of node-2
//!                                    10.244.2.0/24 fd00:244:2::/64 via node-2
//!   br0  10.244.1.1    fd00:244:1::1 local pod 10.244.1.10 (static neighbour)
//! ```

use std::{ffi::CString, fmt::Write as _, net::SocketAddr};

use anyhow::{Context, Result, ensure};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, TestRunResult};
use switchyard::{
    convert::{desired::desired_state, topology::NodeContext},
    datapath::{
        MapWriter,
        flow_table::FlowTable,
        loader::{self, MapSizes},
        pinned::PinnedMaps,
        xdp_attach::XDP_PROGRAM,
    },
    model::DesiredState,
    node::nat_ports::nat_ports,
    plan::{datapath_state::DatapathState, plan},
};
use switchyard_abi::{NODE_CLUSTER_IP_FROM_OUTSIDE, NodeConfig, TC_NEXT, TC_REDIRECT, TC_SHOT};
use switchyard_tests::{
    BpfFs, NetNs,
    packet::{self, Frame, Seen},
};

/// The lab cluster's pod CIDRs: a client from inside them is not NATed.
pub const CLUSTER_CIDR_V4: &str = "10.244.0.0/16";
pub const CLUSTER_CIDR_V6: &str = "fd00:244::/48";

// BPF_PROG_TEST_RUN reports the program's return value as a u32.
pub const REDIRECT: u32 = TC_REDIRECT.cast_unsigned();
pub const SHOT: u32 = TC_SHOT.cast_unsigned();
pub const NEXT: u32 = TC_NEXT.cast_unsigned();

pub const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x02];
pub const NODE2_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x12];
pub const POD_MAC: [u8; 6] = [2, 0, 0, 0, 1, 0x10];
/// Where frames are addressed as they arrive: what a packet left to the
/// stack still carries.
pub const LAB_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x11];

/// A port of the lab's NAT ports (Linux's default ephemeral range left
/// out, as the agent leaves it out).
pub fn is_nat_port(port: u16) -> bool {
    nat_ports(None, 32_768..=60_999).iter().any(|range| {
        (u32::from(range.first)..u32::from(range.first) + u32::from(range.count))
            .contains(&u32::from(port))
    })
}

const SERVICES: &str = r"
- metadata: {name: np-cluster}
  spec: {type: NodePort, clusterIPs: [10.96.0.10, 'fd00:96::10'], ports: [{port: 80, nodePort: 30080}]}
- metadata: {name: np-local}
  spec: {type: NodePort, externalTrafficPolicy: Local, clusterIPs: [10.96.0.11, 'fd00:96::11'],
         ports: [{port: 53, nodePort: 30081, protocol: UDP}]}
- metadata: {name: lb}
  spec: {type: LoadBalancer, clusterIPs: [10.96.0.12, 'fd00:96::12'], ports: [{port: 80, nodePort: 30082}],
         loadBalancerSourceRanges: [10.0.0.0/8, 'fd00:77::/64']}
  status: {loadBalancer: {ingress: [{ip: 203.0.113.10}, {ip: 'fd00:203::10'}]}}
- metadata: {name: empty}
  spec: {type: NodePort, clusterIPs: [10.96.0.13, 'fd00:96::13'],
         ports: [{name: t, port: 80, nodePort: 30083}, {name: u, port: 53, nodePort: 30083, protocol: UDP}]}
";

pub fn slices() -> String {
    let mut yaml = String::new();
    for (service, port_yaml) in [
        ("np-cluster", "[{port: 8080}]"),
        ("np-local", "[{port: 5353, protocol: UDP}]"),
        ("lb", "[{port: 8080}]"),
    ] {
        for (family, local, remote) in [
            ("IPv4", "10.244.1.10", "10.244.2.10"),
            ("IPv6", "'fd00:244:1::10'", "'fd00:244:2::10'"),
        ] {
            // np-cluster and lb only have the remote endpoint (SNAT path).
            let local_endpoint = if service == "np-local" {
                format!("{{addresses: [{local}], nodeName: node-1}}, ")
            } else {
                String::new()
            };
            let _ = write!(
                yaml,
                "- metadata: {{name: {service}-{family}, labels: {{kubernetes.io/service-name: {service}}}}}\n  \
                 addressType: {family}\n  ports: {port_yaml}\n  \
                 endpoints: [{local_endpoint}{{addresses: [{remote}], nodeName: node-2}}]\n"
            );
        }
    }
    yaml
}

pub fn lab() -> Result<NetNs> {
    let ns = NetNs::new("pkt")?;
    for args in [
        "link add eth0 type veth peer name peer0",
        "link add br0 type veth peer name br0peer",
        "link set eth0 up",
        "link set peer0 up",
        "link set br0 up",
        "link set br0peer up",
        "addr add 192.168.77.11/24 dev eth0",
        "addr add fd00:77::11/64 dev eth0 nodad",
        "addr add 10.244.1.1/24 dev br0",
        "addr add fd00:244:1::1/64 dev br0 nodad",
        "route add 10.244.2.0/24 via 192.168.77.12",
        "-6 route add fd00:244:2::/64 via fd00:77::12",
        "neigh add 192.168.77.12 lladdr 02:00:00:00:00:12 dev eth0 nud permanent",
        "neigh add 192.168.77.2 lladdr 02:00:00:00:00:02 dev eth0 nud permanent",
        "-6 neigh add fd00:77::12 lladdr 02:00:00:00:00:12 dev eth0 nud permanent",
        "-6 neigh add fd00:77::2 lladdr 02:00:00:00:00:02 dev eth0 nud permanent",
        "neigh add 10.244.1.10 lladdr 02:00:00:00:01:10 dev br0 nud permanent",
        "-6 neigh add fd00:244:1::10 lladdr 02:00:00:00:01:10 dev br0 nud permanent",
    ] {
        ns.ip(&args.split_whitespace().collect::<Vec<_>>())?;
    }
    // A node forwards (Kubernetes requires it); the programs' route
    // lookups answer "forwarding disabled" otherwise.
    ns.sysctl("net/ipv4/ip_forward", "1")?;
    ns.sysctl("net/ipv6/conf/all/forwarding", "1")?;
    Ok(ns)
}

/// Runs `test` inside a fresh lab namespace against freshly loaded programs.
pub fn in_lab(test: impl FnOnce(&mut Datapath) -> Result<()> + Send) -> Result<()> {
    let ns = lab()?;
    let bpffs = BpfFs::new()?;
    let pin_dir = bpffs.join("switchyard");
    ns.within(|| test(&mut Datapath::new(&pin_dir)?))?
}

/// The loaded programs with maps filled as the agent of node-1 would.
pub struct Datapath {
    pub programs: loader::Programs,
    /// What the maps were filled from.
    pub desired: DesiredState,
    pub flows: FlowTable,
    pub eth0: u32,
}

impl Datapath {
    pub fn new(pin_dir: &std::path::Path) -> Result<Self> {
        let programs = loader::load(pin_dir, MapSizes::default())?;
        let services: Vec<k8s_openapi::api::core::v1::Service> = serde_yaml::from_str(SERVICES)?;
        let slices: Vec<k8s_openapi::api::discovery::v1::EndpointSlice> =
            serde_yaml::from_str(&slices())?;
        let node = NodeContext {
            name: "node-1".into(),
            zone: None,
            node_port_addresses: vec!["192.168.77.11".parse()?, "fd00:77::11".parse()?],
            service_cidrs: vec!["10.96.0.0/16".parse()?, "fd00:96::/112".parse()?],
            ..NodeContext::default()
        };
        let (desired, errors) = desired_state(&services, &slices, &node);
        ensure!(errors.is_empty(), "input errors: {errors:?}");
        let mut maps = PinnedMaps::open(pin_dir)?;
        for op in plan(&DatapathState::default(), &desired) {
            maps.apply(&op)?;
        }
        let mut flows = FlowTable::open(pin_dir)?;
        flows.set_snat_addresses(Some("192.168.77.11".parse()?), Some("fd00:77::11".parse()?))?;
        flows.set_node_config(NodeConfig {
            nat_ports: nat_ports(None, 32_768..=60_999),
            flags: NODE_CLUSTER_IP_FROM_OUTSIDE,
        })?;
        flows.set_cluster_cidrs(&[CLUSTER_CIDR_V4.parse()?, CLUSTER_CIDR_V6.parse()?])?;
        Ok(Self {
            programs,
            desired,
            flows,
            eth0: ifindex("eth0")?,
        })
    }

    /// Runs `program` on `frame` as if it arrived on (or left) eth0.
    pub fn run(&self, program: &str, frame: &Frame) -> Result<(u32, Vec<u8>)> {
        self.run_bytes(program, &frame.bytes())
    }

    /// [`Self::run`] on raw frame bytes.
    pub fn run_bytes(&self, program: &str, input: &[u8]) -> Result<(u32, Vec<u8>)> {
        self.run_arriving_on(program, input, 0)
    }

    /// [`Self::run_bytes`] with the frame received on device `ingress`
    /// (`skb->skb_iif`, what detect-local by device reads; 0: none).
    pub fn run_arriving_on(
        &self,
        program: &str,
        input: &[u8],
        ingress: u32,
    ) -> Result<(u32, Vec<u8>)> {
        if program == XDP_PROGRAM {
            return self.run_xdp(input, if ingress == 0 { self.eth0 } else { ingress });
        }
        let program: &SchedClassifier = self
            .programs
            .packet_program(program)
            .context("program missing")?;
        // `struct __sk_buff`, zero but for `ingress_ifindex` (offset 36) and
        // `ifindex` (offset 40).
        let mut context = [0u8; 192];
        context[36..40].copy_from_slice(&ingress.to_ne_bytes());
        context[40..44].copy_from_slice(&self.eth0.to_ne_bytes());
        test_run(program, input, &context)
    }
}

impl Datapath {
    /// Whether BPF_PROG_TEST_RUN takes an `xdp_md` (5.15): before it, an
    /// XDP test run arrives on no device of the lab, so no route is
    /// usable and the tables' verdicts cannot be XDP's. The XDP program
    /// is still verified there, and the multi-node suites run it on the
    /// lab's devices.
    pub fn xdp_runs_on_a_device(&self) -> Result<bool> {
        // Ethernet with an ethertype no hook handles: passed, whatever.
        let mut frame = [0u8; 60];
        frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        match self.run_xdp(&frame, self.eth0) {
            Ok(_) => Ok(true),
            Err(error) if is_einval(&error) => {
                switchyard_tests::kernel::report_missing("bpf_prog_test_run_xdp_md");
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }

    /// `xdp_ingress` on `input` as the driver of device `ingress` hands it.
    fn run_xdp(&self, input: &[u8], ingress: u32) -> Result<(u32, Vec<u8>)> {
        let program = self
            .programs
            .xdp_program()
            .context("XDP program not loaded")?;
        // `struct xdp_md`: data 0, data_end the frame's length, data_meta
        // 0, ingress_ifindex, rx_queue_index 0, egress_ifindex 0.
        let mut context = [0u8; 24];
        let len = u32::try_from(input.len())?;
        context[4..8].copy_from_slice(&len.to_ne_bytes());
        context[12..16].copy_from_slice(&ingress.to_ne_bytes());
        test_run(program, input, &context)
    }
}

/// One BPF_PROG_TEST_RUN of `program` on `input` with `context`: its
/// verdict and the frame it leaves.
fn test_run<P>(program: &P, input: &[u8], context: &[u8]) -> Result<(u32, Vec<u8>)>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let mut output = vec![0u8; 512];
    let result = program.test_run(TestRunOptions {
        data_in: Some(input),
        data_out: Some(&mut output),
        ctx_in: Some(context),
        ..TestRunOptions::default()
    })?;
    output.truncate(result.data_size_out as usize);
    Ok((result.return_value, output))
}

/// XDP's verdicts (`enum xdp_action`).
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// What XDP gives where tc gives `verdict`: the same frame, sent back out
/// of the device it came in by (every route in the lab leaves by eth0, as
/// it came) or passed up; a refusal is left to tc, untouched.
pub fn at_xdp(verdict: u32) -> u32 {
    match verdict {
        REDIRECT => XDP_TX,
        SHOT => XDP_DROP,
        _ => XDP_PASS,
    }
}

/// The verdict `program` gives where tc's gives `verdict`.
pub fn verdict_at(program: &str, verdict: u32) -> u32 {
    if program == XDP_PROGRAM {
        at_xdp(verdict)
    } else {
        verdict
    }
}

/// The programs the tables run through on this kernel: tc's, and XDP's
/// where the kernel has it (reported otherwise).
pub fn ingress_programs() -> Vec<&'static str> {
    let mut programs = vec!["tc_ingress"];
    if !switchyard_tests::kernel::lacks(
        switchyard::datapath::kernel_features::Feature::XdpDeviceMap,
    ) {
        programs.push(XDP_PROGRAM);
    }
    programs
}

/// Whether `error` is, at any depth, the kernel's EINVAL.
pub fn is_einval(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EINVAL))
    })
}

/// The index of the lab's device `name`, from inside the lab.
pub fn ifindex(name: &str) -> Result<u32> {
    let name = CString::new(name)?;
    // SAFETY: a valid C string; the call only reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    ensure!(index != 0, "{name:?} has no index");
    Ok(index)
}

pub fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// What a translated frame must look like.
pub struct Want {
    pub verdict: u32,
    pub src: &'static str,
    pub dst: &'static str,
    pub dst_mac: [u8; 6],
}

pub fn check(datapath: &Datapath, program: &str, name: &str, frame: &Frame, want: &Want) -> Seen {
    let (verdict, out) = datapath.run(program, frame).unwrap();
    let expected = verdict_at(program, want.verdict);
    assert_eq!(verdict, expected, "{name} ({program}): verdict");
    let seen = packet::parse(&out).unwrap();
    let want_src = addr(want.src);
    if want_src.port() == 0 {
        // NATed: the port is checked by the caller.
        assert_eq!(seen.src.ip(), want_src.ip(), "{name}: source");
    } else {
        assert_eq!(seen.src, want_src, "{name}: source");
    }
    assert_eq!(seen.dst, addr(want.dst), "{name}: destination");
    assert_eq!(seen.dst_mac, want.dst_mac, "{name}: next hop");
    assert_eq!(
        seen.checksum_ok, !frame.corrupt_checksum,
        "{name}: checksum"
    );
    seen
}
