//! The tc programs on single packets, through `BPF_PROG_TEST_RUN` in the
//! packet lab (see `support::packet_lab`): an input frame, the verdict and
//! the exact frame that must come out, checksums verified.

mod support;

use std::net::{IpAddr, SocketAddr};

use anyhow::Result;
use support::packet_lab::{
    CLIENT_MAC, Datapath, LAB_MAC, NEXT, NODE2_MAC, REDIRECT, SHOT, Want, addr, check, ifindex,
    in_lab, ingress_programs, is_einval, is_nat_port, verdict_at,
};
use switchyard::datapath::xdp_attach::XDP_PROGRAM;
use switchyard_abi::{
    ConnState, NODE_CLUSTER_IP_FROM_OUTSIDE, NODE_LOCAL_BY_DEVICE, NODE_MASQUERADE_ALL,
};
use switchyard_tests::{
    kernel,
    packet::{self, ACK, Frame, RST, SYN, TCP, UDP},
};

#[test]
fn tc_programs_translate_reject_and_drop_by_the_table() -> Result<()> {
    for program in ingress_programs() {
        in_lab(|datapath| translate_and_drop(datapath, program))?;
    }
    Ok(())
}

fn translate_and_drop(datapath: &mut Datapath, program: &str) -> Result<()> {
    if program == XDP_PROGRAM && !datapath.xdp_runs_on_a_device()? {
        return Ok(());
    }
    {
        let frame = |proto, src: &str, dst: &str| Frame::new(proto, addr(src), addr(dst));

        // Stateless rows: (name, frame, verdict, source, destination, next hop).
        let rows: Vec<(&str, Frame, Want)> = vec![
            (
                "UDP NodePort, Local policy: local pod, client kept",
                frame(UDP, "192.168.77.2:40001", "192.168.77.11:30081"),
                Want {
                    verdict: NEXT,
                    src: "192.168.77.2:40001",
                    dst: "10.244.1.10:5353",
                    dst_mac: LAB_MAC,
                },
            ),
            (
                "UDP NodePort over IPv6, Local policy",
                frame(UDP, "[fd00:77::2]:40001", "[fd00:77::11]:30081"),
                Want {
                    verdict: NEXT,
                    src: "[fd00:77::2]:40001",
                    dst: "[fd00:244:1::10]:5353",
                    dst_mac: LAB_MAC,
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
                    verdict: NEXT,
                    src: "192.168.77.2:40003",
                    dst: "10.244.1.10:5353",
                    dst_mac: LAB_MAC,
                },
            ),
            (
                "not a frontend: untouched",
                frame(TCP, "192.168.77.2:40004", "192.168.77.11:22"),
                Want {
                    verdict: NEXT,
                    src: "192.168.77.2:40004",
                    dst: "192.168.77.11:22",
                    dst_mac: LAB_MAC,
                },
            ),
        ];
        check_rows(datapath, program, &rows);

        let dropped: Vec<(&str, Frame)> = vec![(
            "source outside loadBalancerSourceRanges",
            frame(TCP, "192.168.77.2:40006", "203.0.113.10:80"),
        )];
        for (name, frame) in &dropped {
            let verdict = datapath.run(program, frame)?.0;
            assert_eq!(verdict, verdict_at(program, SHOT), "{name} ({program})");
        }
        Ok(())
    }
}

/// Runs each row through `program` and checks what comes out.
fn check_rows(datapath: &Datapath, program: &str, rows: &[(&str, Frame, Want)]) {
    for (name, frame, want) in rows {
        let seen = check(datapath, program, name, frame, want);
        if want.src.ends_with(":0") {
            // A NATed source port comes from the NAT ports.
            let port = seen.src.port();
            assert!(is_nat_port(port), "{name}: SNAT port {port}");
            let mut expected = addr(want.src);
            expected.set_port(port);
            assert_eq!(seen.src, expected);
        }
    }
}

#[test]
fn cluster_ips_from_outside_are_served_by_the_table() -> Result<()> {
    for program in ingress_programs() {
        in_lab(|datapath| cluster_ips_from_outside(datapath, program))?;
    }
    Ok(())
}

fn cluster_ips_from_outside(datapath: &mut Datapath, program: &str) -> Result<()> {
    if program == XDP_PROGRAM && !datapath.xdp_runs_on_a_device()? {
        return Ok(());
    }
    {
        let frame = |proto, src: &str, dst: &str| Frame::new(proto, addr(src), addr(dst));
        let rows: Vec<(&str, Frame, Want)> = vec![
            (
                "a ClusterIP from outside the cluster: NATed to a remote backend",
                frame(TCP, "192.168.77.2:40005", "10.96.0.10:80"),
                Want {
                    verdict: REDIRECT,
                    src: "192.168.77.11:0",
                    dst: "10.244.2.10:8080",
                    dst_mac: NODE2_MAC,
                },
            ),
            (
                "a ClusterIP from a cluster CIDR: the client is kept",
                frame(TCP, "10.244.3.5:40008", "10.96.0.10:80"),
                Want {
                    verdict: NEXT,
                    src: "10.244.3.5:40008",
                    dst: "10.244.2.10:8080",
                    dst_mac: LAB_MAC,
                },
            ),
            (
                "a ClusterIP over IPv6 from outside",
                frame(TCP, "[fd00:77::2]:40005", "[fd00:96::10]:80"),
                Want {
                    verdict: REDIRECT,
                    src: "[fd00:77::11]:0",
                    dst: "[fd00:244:2::10]:8080",
                    dst_mac: NODE2_MAC,
                },
            ),
        ];
        check_rows(datapath, program, &rows);
        // An address of the service CIDRs no Service holds: dropped, never
        // routed on (kube-proxy's "unallocated ClusterIPs" DROP).
        for dst in ["10.96.0.99:80", "[fd00:96::99]:80"] {
            let src = if dst.starts_with('[') {
                "[fd00:77::2]:40009"
            } else {
                "192.168.77.2:40009"
            };
            for proto in [TCP, UDP] {
                let (verdict, _) = datapath.run(program, &frame(proto, src, dst))?;
                assert_eq!(verdict, verdict_at(program, SHOT), "{dst} over {proto}");
            }
        }
        Ok(())
    }
}

/// kube-proxy's masquerade decision for a ClusterIP reached from outside,
/// with a backend on another node: `--masquerade-all` NATs every source,
/// detect-local by device NATs what does not arrive on a pod's device,
/// and by CIDR what does not come from the cluster's pod CIDRs.
#[test]
fn masquerade_all_and_detect_local_decide_the_source_by_the_table() -> Result<()> {
    in_lab(|datapath| {
        let (eth0, br0) = (ifindex("eth0")?, ifindex("br0")?);
        let outside = "192.168.77.2";
        let pod_elsewhere = "10.244.3.5";
        // (name, node switches, pod devices, source, device it came in on, NATed)
        let rows = [
            ("by CIDR: outside client", 0, &[][..], outside, eth0, true),
            ("by CIDR: pod address", 0, &[], pod_elsewhere, eth0, false),
            (
                "masquerade-all: outside client",
                NODE_MASQUERADE_ALL,
                &[],
                outside,
                eth0,
                true,
            ),
            (
                "masquerade-all: pod address",
                NODE_MASQUERADE_ALL,
                &[],
                pod_elsewhere,
                eth0,
                true,
            ),
            (
                "by device: pod address on the uplink",
                NODE_LOCAL_BY_DEVICE,
                &[br0],
                pod_elsewhere,
                eth0,
                true,
            ),
            (
                "by device: any address from a pod device",
                NODE_LOCAL_BY_DEVICE,
                &[br0],
                outside,
                br0,
                false,
            ),
            (
                "by device, none listed",
                NODE_LOCAL_BY_DEVICE,
                &[],
                pod_elsewhere,
                br0,
                true,
            ),
            (
                "masquerade-all wins over a pod device",
                NODE_MASQUERADE_ALL | NODE_LOCAL_BY_DEVICE,
                &[br0],
                outside,
                br0,
                true,
            ),
        ];
        let mut config = datapath.flows.node_config()?;
        for (port, (name, flags, pod_devices, src, arrives_on, natted)) in (41_000..).zip(rows) {
            config.flags = NODE_CLUSTER_IP_FROM_OUTSIDE | flags;
            datapath.flows.set_node_config(config)?;
            datapath.flows.set_local_devices(pod_devices)?;
            let syn = Frame::new(
                TCP,
                SocketAddr::new(src.parse()?, port),
                addr("10.96.0.10:80"),
            );
            let (verdict, out) =
                match datapath.run_arriving_on("tc_ingress", &syn.bytes(), arrives_on) {
                    // Before 5.11 BPF_PROG_TEST_RUN takes no ingress_ifindex in
                    // the context: only rows that do not turn on the device
                    // can run there.
                    Err(error) if is_einval(&error) => {
                        kernel::report_missing("bpf_prog_test_run_ingress_ifindex");
                        if flags & NODE_LOCAL_BY_DEVICE != 0 {
                            continue;
                        }
                        datapath.run_bytes("tc_ingress", &syn.bytes())?
                    }
                    result => result?,
                };
            let seen = packet::parse(&out)?;
            assert_eq!(seen.dst, addr("10.244.2.10:8080"), "{name}: backend");
            assert!(seen.checksum_ok, "{name}: checksum");
            if natted {
                assert_eq!(verdict, REDIRECT, "{name}: verdict");
                assert_eq!(seen.src.ip(), "192.168.77.11".parse::<IpAddr>()?, "{name}");
                assert!(
                    is_nat_port(seen.src.port()),
                    "{name}: port {}",
                    seen.src.port()
                );
            } else {
                // The client kept: left to the stack to route on.
                assert_eq!((verdict, seen.src), (NEXT, syn.src), "{name}");
            }
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
            // A ClusterIP's port no Service serves: kube-proxy's
            // `cluster-ips-check` REJECT.
            ("192.168.77.2:40012", "10.96.0.10:81"),
            ("[fd00:77::2]:40012", "[fd00:96::10]:81"),
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
            NEXT,
            "never answer a RST: it opens nothing and is the stack's to judge"
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
                .all(|c| c.state() == ConnState::Established),
            "handshakes were seen: {connections:?}"
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
        assert_eq!(
            datapath.run("tc_ingress", &request)?.0,
            NEXT,
            "a local backend is reached through the stack"
        );
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

#[test]
fn refusals_are_rate_limited_per_node_as_the_kernel_limits_icmp() -> Result<()> {
    in_lab(|datapath| {
        const SENT: u16 = 1_000;
        let started = std::time::Instant::now();
        let mut refused = 0u64;
        for port in 0..SENT {
            let syn = Frame {
                payload: Vec::new(),
                ..Frame::new(
                    TCP,
                    SocketAddr::new("192.168.77.2".parse()?, 42_000 + port),
                    addr("192.168.77.11:30083"),
                )
            };
            match datapath.run("tc_ingress", &syn)?.0 {
                REDIRECT => refused += 1,
                SHOT => {}
                other => anyhow::bail!("verdict {other}"),
            }
        }
        // The burst, plus what the elapsed time earned at 1000 a second.
        let earned = u64::try_from(started.elapsed().as_millis())? + 1;
        let burst = switchyard_abi::REFUSAL_BURST;
        assert!(
            (burst..=burst + earned).contains(&refused),
            "{refused} refusals in {earned} ms"
        );
        let limited =
            datapath.flows.counters()?[switchyard_abi::COUNTER_DROP_REFUSAL_RATE as usize];
        assert_eq!(limited + refused, u64::from(SENT));
        assert!(limited > 0, "a flood of {SENT} in {earned} ms was limited");
        Ok(())
    })
}
