//! The tc programs on single packets, through `BPF_PROG_TEST_RUN`: an input
//! frame, the verdict and the exact frame that must come out, checksums
//! verified. The maps are filled by the agent's own pipeline (manifests ->
//! desired state -> plan -> pinned maps), and the program's route lookups
//! run in a namespace built for them:
//!
//! ```text
//!   eth0 192.168.77.11 fd00:77::11   client .2 / ::2 and node-2 .12 / ::12
//!                                    (static neighbours); pods of node-2
//!                                    10.244.2.0/24 fd00:244:2::/64 via node-2
//!   br0  10.244.1.1    fd00:244:1::1 local pod 10.244.1.10 (static neighbour)
//! ```

use std::{
    ffi::CString,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
};

use anyhow::{Context, Result, ensure};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use switchyard::{
    convert::{desired::desired_state, topology::NodeContext},
    datapath::{MapWriter, flow_table::FlowTable, loader, pinned::PinnedMaps},
    plan::{datapath_state::DatapathState, plan},
};
use switchyard_abi::{SNAT_PORT_MAX, SNAT_PORT_MIN, TC_NEXT, TC_REDIRECT, TC_SHOT};
use switchyard_tests::{
    BpfFs, NetNs,
    packet::{self, ACK, Frame, RST, SYN, Seen, TCP, UDP},
};

// BPF_PROG_TEST_RUN reports the program's return value as a u32.
const REDIRECT: u32 = TC_REDIRECT.cast_unsigned();
const SHOT: u32 = TC_SHOT.cast_unsigned();
const NEXT: u32 = TC_NEXT.cast_unsigned();

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x02];
const NODE2_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x12];
const POD_MAC: [u8; 6] = [2, 0, 0, 0, 1, 0x10];

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

fn slices() -> String {
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

fn lab() -> Result<NetNs> {
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
fn in_lab(test: impl FnOnce(&mut Datapath) -> Result<()> + Send) -> Result<()> {
    let ns = lab()?;
    let bpffs = BpfFs::new()?;
    let pin_dir = bpffs.join("switchyard");
    ns.within(|| test(&mut Datapath::new(&pin_dir)?))?
}

/// The loaded programs with maps filled as the agent of node-1 would.
struct Datapath {
    programs: loader::Programs,
    flows: FlowTable,
    eth0: u32,
}

impl Datapath {
    fn new(pin_dir: &std::path::Path) -> Result<Self> {
        let programs = loader::load(pin_dir)?;
        let services: Vec<k8s_openapi::api::core::v1::Service> = serde_yaml::from_str(SERVICES)?;
        let slices: Vec<k8s_openapi::api::discovery::v1::EndpointSlice> =
            serde_yaml::from_str(&slices())?;
        let node = NodeContext {
            name: "node-1".into(),
            zone: None,
            node_port_addresses: vec!["192.168.77.11".parse()?, "fd00:77::11".parse()?],
        };
        let (desired, errors) = desired_state(&services, &slices, &node);
        ensure!(errors.is_empty(), "input errors: {errors:?}");
        let mut maps = PinnedMaps::open(pin_dir)?;
        for op in plan(&DatapathState::default(), &desired) {
            maps.apply(&op)?;
        }
        let mut flows = FlowTable::open(pin_dir)?;
        flows.set_snat_addresses(Some("192.168.77.11".parse()?), Some("fd00:77::11".parse()?))?;
        let name = CString::new("eth0")?;
        // SAFETY: a valid C string; the call only reads it.
        let eth0 = unsafe { libc::if_nametoindex(name.as_ptr()) };
        ensure!(eth0 != 0, "eth0 has no index");
        Ok(Self {
            programs,
            flows,
            eth0,
        })
    }

    /// Runs `program` on `frame` as if it arrived on (or left) eth0.
    fn run(&self, program: &str, frame: &Frame) -> Result<(u32, Vec<u8>)> {
        let program: &SchedClassifier = self
            .programs
            .packet_program(program)
            .context("program missing")?;
        let input = frame.bytes();
        let mut output = vec![0u8; 512];
        // `struct __sk_buff`, zero but for `ifindex` (offset 40).
        let mut context = [0u8; 192];
        context[40..44].copy_from_slice(&self.eth0.to_ne_bytes());
        let result = program.test_run(TestRunOptions {
            data_in: Some(&input),
            data_out: Some(&mut output),
            ctx_in: Some(&context),
            ..TestRunOptions::default()
        })?;
        output.truncate(result.data_size_out as usize);
        Ok((result.return_value, output))
    }
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// What a translated frame must look like.
struct Want {
    verdict: u32,
    src: &'static str,
    dst: &'static str,
    dst_mac: [u8; 6],
}

fn check(datapath: &Datapath, program: &str, name: &str, frame: &Frame, want: &Want) -> Seen {
    let (verdict, out) = datapath.run(program, frame).unwrap();
    assert_eq!(verdict, want.verdict, "{name}: verdict");
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

#[test]
fn tc_programs_translate_reject_and_drop_by_the_table() -> Result<()> {
    in_lab(|datapath| {
        let frame = |proto, src: &str, dst: &str| Frame::new(proto, addr(src), addr(dst));

        // Stateless rows: (name, frame, verdict, source, destination, next hop).
        let rows: Vec<(&str, Frame, Want)> = vec![
            (
                "UDP NodePort, Local policy: local pod, client kept",
                frame(UDP, "192.168.77.2:40001", "192.168.77.11:30081"),
                Want {
                    verdict: REDIRECT,
                    src: "192.168.77.2:40001",
                    dst: "10.244.1.10:5353",
                    dst_mac: POD_MAC,
                },
            ),
            (
                "UDP NodePort over IPv6, Local policy",
                frame(UDP, "[fd00:77::2]:40001", "[fd00:77::11]:30081"),
                Want {
                    verdict: REDIRECT,
                    src: "[fd00:77::2]:40001",
                    dst: "[fd00:244:1::10]:5353",
                    dst_mac: POD_MAC,
                },
            ),
            (
                "LoadBalancer IP from an allowed source range",
                frame(TCP, "10.1.1.1:40002", "203.0.113.10:80"),
                Want {
                    verdict: REDIRECT,
                    src: "192.168.77.11:0",
                    dst: "10.244.2.10:8080",
                    dst_mac: NODE2_MAC,
                },
            ),
            (
                "a bad checksum stays bad",
                Frame {
                    corrupt_checksum: true,
                    ..frame(UDP, "192.168.77.2:40003", "192.168.77.11:30081")
                },
                Want {
                    verdict: REDIRECT,
                    src: "192.168.77.2:40003",
                    dst: "10.244.1.10:5353",
                    dst_mac: POD_MAC,
                },
            ),
            (
                "not a frontend: untouched",
                frame(TCP, "192.168.77.2:40004", "192.168.77.11:22"),
                Want {
                    verdict: NEXT,
                    src: "192.168.77.2:40004",
                    dst: "192.168.77.11:22",
                    dst_mac: [2, 0, 0, 0, 0, 0x11],
                },
            ),
            (
                "a ClusterIP is not served from outside",
                frame(TCP, "192.168.77.2:40005", "10.96.0.10:80"),
                Want {
                    verdict: NEXT,
                    src: "192.168.77.2:40005",
                    dst: "10.96.0.10:80",
                    dst_mac: [2, 0, 0, 0, 0, 0x11],
                },
            ),
        ];
        for (name, frame, want) in &rows {
            let seen = check(datapath, "tc_ingress", name, frame, want);
            if want.src.ends_with(":0") {
                // A NATed source port comes from the SNAT range.
                let port = seen.src.port();
                assert!(
                    (SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&port),
                    "{name}: SNAT port {port}"
                );
                let mut expected = addr(want.src);
                expected.set_port(port);
                assert_eq!(seen.src, expected);
            }
        }

        let dropped: Vec<(&str, Frame)> = vec![
            (
                "source outside loadBalancerSourceRanges",
                frame(TCP, "192.168.77.2:40006", "203.0.113.10:80"),
            ),
            (
                "first fragment of a datagram to a frontend",
                Frame {
                    more_fragments: true,
                    ..frame(UDP, "192.168.77.2:40007", "192.168.77.11:30081")
                },
            ),
        ];
        for (name, frame) in &dropped {
            assert_eq!(datapath.run("tc_ingress", frame)?.0, SHOT, "{name}");
        }
        Ok(())
    })
}

#[test]
fn no_endpoints_answers_with_rst_or_port_unreachable() -> Result<()> {
    in_lab(|datapath| {
        for (src, dst) in [
            ("192.168.77.2:40010", "192.168.77.11:30083"),
            ("[fd00:77::2]:40010", "[fd00:77::11]:30083"),
        ] {
            let syn = Frame {
                payload: Vec::new(),
                ..Frame::new(TCP, addr(src), addr(dst))
            };
            let (verdict, out) = datapath.run("tc_ingress", &syn)?;
            assert_eq!(verdict, REDIRECT, "RST goes back out: {dst}");
            let rst = packet::parse(&out)?;
            assert_eq!((rst.src, rst.dst), (syn.dst, syn.src), "{dst}");
            assert_eq!(rst.tcp_flags, RST | ACK);
            assert_eq!(rst.ack, syn.seq + 1, "acknowledges the SYN");
            assert_eq!(rst.dst_mac, CLIENT_MAC);
            assert!(rst.checksum_ok, "RST checksum {dst}");

            let datagram = Frame::new(UDP, addr(src), addr(dst));
            let (verdict, out) = datapath.run("tc_ingress", &datagram)?;
            assert_eq!(verdict, REDIRECT);
            let icmp = packet::parse(&out)?;
            assert_eq!(
                (icmp.src.ip(), icmp.dst.ip()),
                (datagram.dst.ip(), datagram.src.ip())
            );
            let (kind, code) = if datagram.src.is_ipv4() {
                (3, 3)
            } else {
                (1, 4)
            };
            assert_eq!(
                icmp.icmp,
                Some((kind, code, datagram.src, datagram.dst)),
                "{dst}"
            );
            assert!(icmp.checksum_ok, "ICMP checksum {dst}");
        }
        let mut stray_rst =
            Frame::new(TCP, addr("192.168.77.2:40011"), addr("192.168.77.11:30083"));
        stray_rst.tcp_flags = RST;
        assert_eq!(
            datapath.run("tc_ingress", &stray_rst)?.0,
            SHOT,
            "never answer a RST"
        );
        Ok(())
    })
}

#[test]
fn snat_connection_round_trip_and_conntrack() -> Result<()> {
    in_lab(|datapath| {
        for (client, node, backend) in [
            (
                "192.168.77.2:40020",
                "192.168.77.11:30080",
                "10.244.2.10:8080",
            ),
            (
                "[fd00:77::2]:40020",
                "[fd00:77::11]:30080",
                "[fd00:244:2::10]:8080",
            ),
            (
                "[fd00:77::2]:40021",
                "[fd00:203::10]:80",
                "[fd00:244:2::10]:8080",
            ),
        ] {
            let syn = Frame::new(TCP, addr(client), addr(node));
            let (verdict, out) = datapath.run("tc_ingress", &syn)?;
            assert_eq!(verdict, REDIRECT);
            let forwarded = packet::parse(&out)?;
            assert_eq!(forwarded.dst, addr(backend));
            assert_eq!(forwarded.dst_mac, NODE2_MAC);
            assert!(forwarded.checksum_ok);
            let node_ip: IpAddr = if forwarded.dst.is_ipv4() {
                "192.168.77.11".parse()?
            } else {
                "fd00:77::11".parse()?
            };
            assert_eq!(forwarded.src.ip(), node_ip, "source NATed to the node");

            // The next packet of the connection takes the same way.
            let mut ack = syn.clone();
            ack.tcp_flags = ACK;
            let again = packet::parse(&datapath.run("tc_ingress", &ack)?.1)?;
            assert_eq!((again.src, again.dst), (forwarded.src, forwarded.dst));

            // The backend's answer comes back to the node and leaves for
            // the client, from the frontend.
            let mut answer = Frame::new(TCP, forwarded.dst, forwarded.src);
            answer.tcp_flags = SYN | ACK;
            answer.src_mac = NODE2_MAC;
            let (verdict, out) = datapath.run("tc_ingress", &answer)?;
            assert_eq!(verdict, REDIRECT);
            let back = packet::parse(&out)?;
            assert_eq!((back.src, back.dst), (addr(node), addr(client)));
            assert_eq!(back.dst_mac, CLIENT_MAC);
            assert!(back.checksum_ok);
        }
        let connections = datapath.flows.connections();
        assert_eq!(connections.len(), 3);
        assert!(
            connections
                .iter()
                .all(|c| c.forward.is_some() && c.reply.is_some())
        );
        assert!(
            connections
                .iter()
                .all(switchyard::node::conntrack::Connection::answered),
            "replies were seen"
        );
        // Collected at once when idle past a zero timeout... and not before.
        let timeouts = switchyard_abi::FlowTimeouts::default();
        let now = switchyard::datapath::flow_table::monotonic_now_ns();
        assert_eq!(datapath.flows.collect_garbage(now, &timeouts).removed, 0);
        let later = now + 2 * 86_400 * 1_000_000_000;
        assert_eq!(datapath.flows.collect_garbage(later, &timeouts).removed, 6);
        Ok(())
    })
}

#[test]
fn local_backend_replies_get_the_frontend_back_at_egress() -> Result<()> {
    in_lab(|datapath| {
        let request = Frame::new(UDP, addr("192.168.77.2:40030"), addr("192.168.77.11:30081"));
        assert_eq!(datapath.run("tc_ingress", &request)?.0, REDIRECT);
        let answer = Frame::new(UDP, addr("10.244.1.10:5353"), addr("192.168.77.2:40030"));
        let (verdict, out) = datapath.run("tc_egress", &answer)?;
        assert_eq!(verdict, NEXT, "egress rewrites and lets the packet go on");
        let seen = packet::parse(&out)?;
        assert_eq!((seen.src, seen.dst), (request.dst, request.src));
        assert!(seen.checksum_ok);
        let unrelated = Frame::new(UDP, addr("10.244.1.10:5353"), addr("192.168.77.2:49999"));
        let (verdict, out) = datapath.run("tc_egress", &unrelated)?;
        assert_eq!((verdict, out), (NEXT, unrelated.bytes()));
        Ok(())
    })
}
