//! Fragments on single packets in the packet lab (see
//! `support::packet_lab`): a translated datagram's later fragments follow
//! its first, both ways, IPv4 and IPv6, with the TCP/UDP checksum the first
//! fragment carries still right for the rewritten addresses; fragments
//! whose first was never seen, or opened nothing, are passed or dropped
//! and counted, never translated on their own.

mod support;

use anyhow::{Result, ensure};
use support::packet_lab::{
    CLIENT_MAC, Datapath, NEXT, NODE2_MAC, REDIRECT, SHOT, addr, in_lab, is_nat_port,
};
use switchyard_abi::{
    COUNTER_DROP_FRAGMENT, COUNTER_FRAGMENT_FOLLOWED, COUNTER_PASS_FRAGMENT_UNKNOWN,
    COUNTER_REJECT_NO_ENDPOINTS,
};
use switchyard_tests::packet::{self, ACK, Frame, SYN, Seen, TCP, UDP};

/// Bytes of the TCP or UDP segment in a first fragment (header included).
const FIRST_LEN: usize = 64;

/// A datagram long enough to come in two fragments.
fn datagram(proto: u8, src: &str, dst: &str) -> Frame {
    Frame {
        payload: (0..200).collect(),
        ..Frame::new(proto, addr(src), addr(dst))
    }
}

/// Runs `frame`'s two fragments (identification `id`) through `program`,
/// first to last: their verdicts, and the datagram they leave as.
fn run_fragments(
    datapath: &Datapath,
    program: &str,
    frame: &Frame,
    id: u32,
) -> Result<([u32; 2], Seen)> {
    let [first, later] = frame.fragments(FIRST_LEN, id);
    let (first_verdict, first_out) = datapath.run_bytes(program, &first)?;
    let (later_verdict, later_out) = datapath.run_bytes(program, &later)?;
    let seen = packet::reassemble(&[first_out, later_out])?;
    ensure!(
        seen.checksum_ok,
        "{program}: checksum of the reassembled datagram"
    );
    Ok(([first_verdict, later_verdict], seen))
}

fn counter(datapath: &Datapath, index: u32) -> Result<u64> {
    Ok(datapath.flows.counters()?[index as usize])
}

#[test]
fn later_fragments_follow_the_first_to_a_local_pod_and_back() -> Result<()> {
    in_lab(|datapath| {
        for (client, node_port, pod) in [
            (
                "192.168.77.2:40001",
                "192.168.77.11:30081",
                "10.244.1.10:5353",
            ),
            (
                "[fd00:77::2]:40001",
                "[fd00:77::11]:30081",
                "[fd00:244:1::10]:5353",
            ),
        ] {
            let request = datagram(UDP, client, node_port);
            let (verdicts, seen) = run_fragments(datapath, "tc_ingress", &request, 0x4242)?;
            assert_eq!(verdicts, [NEXT, NEXT], "{client}: on through the stack");
            assert_eq!((seen.src, seen.dst), (addr(client), addr(pod)), "{client}");

            let answer = datagram(UDP, pod, client);
            let (verdicts, seen) = run_fragments(datapath, "tc_egress", &answer, 0x4343)?;
            assert_eq!(verdicts, [NEXT, NEXT], "{client}: answer");
            assert_eq!(
                (seen.src, seen.dst),
                (addr(node_port), addr(client)),
                "{client}: the answer comes from the NodePort"
            );
        }
        assert_eq!(counter(datapath, COUNTER_FRAGMENT_FOLLOWED)?, 4);
        Ok(())
    })
}

#[test]
fn fragments_of_a_nated_connection_are_routed_together_both_ways() -> Result<()> {
    in_lab(|datapath| {
        for (client, node_port, node, backend) in [
            (
                "192.168.77.2:40002",
                "192.168.77.11:30080",
                "192.168.77.11",
                "10.244.2.10:8080",
            ),
            (
                "[fd00:77::2]:40002",
                "[fd00:77::11]:30080",
                "fd00:77::11",
                "[fd00:244:2::10]:8080",
            ),
        ] {
            // A SYN carrying data, as TCP Fast Open sends, split in two.
            let syn = datagram(TCP, client, node_port);
            let [first, later] = syn.fragments(FIRST_LEN, 0x5151);
            let (first_verdict, first_out) = datapath.run_bytes("tc_ingress", &first)?;
            let (later_verdict, later_out) = datapath.run_bytes("tc_ingress", &later)?;
            assert_eq!(
                [first_verdict, later_verdict],
                [REDIRECT, REDIRECT],
                "{client}"
            );
            for out in [&first_out, &later_out] {
                assert_eq!(
                    packet::parse_piece(out)?.dst_mac,
                    NODE2_MAC,
                    "{client}: next hop"
                );
            }
            let forwarded = packet::reassemble(&[first_out, later_out])?;
            assert!(forwarded.checksum_ok, "{client}");
            assert_eq!(forwarded.dst, addr(backend), "{client}");
            assert_eq!(
                forwarded.src.ip(),
                node.parse::<std::net::IpAddr>()?,
                "{client}"
            );
            assert!(
                is_nat_port(forwarded.src.port()),
                "{client}: {}",
                forwarded.src
            );

            let answer = Frame {
                tcp_flags: SYN | ACK,
                src_mac: NODE2_MAC,
                ..datagram(TCP, &forwarded.dst.to_string(), &forwarded.src.to_string())
            };
            let (verdicts, seen) = run_fragments(datapath, "tc_ingress", &answer, 0x5252)?;
            assert_eq!(verdicts, [REDIRECT, REDIRECT], "{client}: answer");
            assert_eq!(
                (seen.src, seen.dst),
                (addr(node_port), addr(client)),
                "{client}"
            );
            assert_eq!(seen.dst_mac, CLIENT_MAC, "{client}: answer's next hop");
        }
        assert_eq!(counter(datapath, COUNTER_FRAGMENT_FOLLOWED)?, 4);
        Ok(())
    })
}

#[test]
fn fragments_without_their_first_or_a_connection_are_counted_not_translated() -> Result<()> {
    in_lab(|datapath| {
        // The first fragment never came: the later one goes on as it is.
        let lost = datagram(UDP, "192.168.77.2:40003", "192.168.77.11:30081");
        let [_, later] = lost.fragments(FIRST_LEN, 0x6161);
        assert_eq!(
            datapath.run_bytes("tc_ingress", &later)?,
            (NEXT, later.clone())
        );
        assert_eq!(counter(datapath, COUNTER_PASS_FRAGMENT_UNKNOWN)?, 1);

        // The first fragment is refused (no endpoints): the rest is dropped,
        // not refused again (the kernel answers only first fragments).
        let refused = datagram(UDP, "192.168.77.2:40004", "192.168.77.11:30083");
        let [first, later] = refused.fragments(FIRST_LEN, 0x6262);
        datapath.run_bytes("tc_ingress", &first)?;
        assert_eq!(datapath.run_bytes("tc_ingress", &later)?.0, SHOT);
        assert_eq!(counter(datapath, COUNTER_REJECT_NO_ENDPOINTS)?, 1);
        assert_eq!(counter(datapath, COUNTER_DROP_FRAGMENT)?, 1);

        // A fragmented datagram to no frontend is none of ours.
        let other = datagram(UDP, "192.168.77.2:40005", "192.168.77.11:9999");
        for piece in other.fragments(FIRST_LEN, 0x6363) {
            assert_eq!(
                datapath.run_bytes("tc_ingress", &piece)?,
                (NEXT, piece.clone())
            );
        }
        Ok(())
    })
}
