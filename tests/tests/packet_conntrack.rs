//! The per-packet path's conntrack on single packets, in the packet lab
//! (see `support::packet_lab`): netfilter's TCP states step by step, what
//! opens a connection and what does not, ports coming back as connections
//! close, the two halves of a connection kept together, the hop limit, and
//! ICMP errors about translated connections.

mod support;

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::{Result, ensure};
use support::packet_lab::{
    CLIENT_MAC, Datapath, LAB_MAC, NEXT, NODE2_MAC, REDIRECT, SHOT, addr, in_lab,
};
use switchyard::node::conntrack::Connection;
use switchyard_abi::{
    COUNTER_DROP_CONNTRACK, COUNTER_DROP_SNAT_PORTS, COUNTER_HALF_LOST, COUNTER_HALF_REBUILT,
    COUNTER_ICMP_TRANSLATED, COUNTER_PASS_NOT_SYN, COUNTER_SNAT_PORT_REUSED, ConnState,
    NODE_CLUSTER_IP_FROM_OUTSIDE, NODE_DRAIN, NodeConfig, PortRange,
};
use switchyard_tests::packet::{self, ACK, FIN, Frame, RST, SYN, Seen, TCP, UDP};

/// The NodePort of `np-cluster`, whose only endpoint is on node-2: every
/// connection is NATed to the node.
const NODE_PORT: &str = "192.168.77.11:30080";

/// Longer than the programs' touch interval: the next packet checks the
/// connection's other half.
const PAST_TOUCH_INTERVAL: Duration = Duration::from_millis(1_100);

/// One TCP connection as the lab sees it: the client's frames in, the
/// backend's frames back, both through `tc_ingress`.
struct Conn {
    client: SocketAddr,
    /// The client's first packet as it left for the backend.
    forwarded: Seen,
}

impl Conn {
    fn open(datapath: &Datapath, client: &str) -> Result<Self> {
        let client = addr(client);
        let (verdict, out) = datapath.run("tc_ingress", &tcp(client, addr(NODE_PORT), SYN))?;
        ensure!(verdict == REDIRECT, "SYN verdict {verdict}");
        Ok(Self {
            client,
            forwarded: packet::parse(&out)?,
        })
    }

    fn client_sends(&self, datapath: &Datapath, flags: u8) -> Result<(u32, Vec<u8>)> {
        datapath.run("tc_ingress", &tcp(self.client, addr(NODE_PORT), flags))
    }

    fn backend_sends(&self, datapath: &Datapath, flags: u8) -> Result<(u32, Vec<u8>)> {
        let mut frame = tcp(self.forwarded.dst, self.forwarded.src, flags);
        frame.src_mac = NODE2_MAC;
        datapath.run("tc_ingress", &frame)
    }
}

fn tcp(src: SocketAddr, dst: SocketAddr, flags: u8) -> Frame {
    Frame {
        tcp_flags: flags,
        payload: Vec::new(),
        ..Frame::new(TCP, src, dst)
    }
}

fn only_connection(datapath: &Datapath) -> Result<Connection> {
    let connections = datapath.flows.connections();
    ensure!(connections.len() == 1, "{connections:?}");
    Ok(connections[0].clone())
}

fn counter(datapath: &Datapath, index: u32) -> Result<u64> {
    Ok(datapath.flows.counters()?[index as usize])
}

/// NAT ports narrowed to `count` ports from 62000.
fn narrow_nat_ports(datapath: &mut Datapath, count: u16) -> Result<()> {
    datapath.flows.set_node_config(NodeConfig {
        nat_ports: [
            PortRange {
                first: 62_000,
                count,
            },
            PortRange::default(),
        ],
        flags: NODE_CLUSTER_IP_FROM_OUTSIDE,
    })?;
    Ok(())
}

/// Closes `conn` as TCP does: FIN, ACK, FIN, ACK.
fn close(datapath: &Datapath, conn: &Conn) -> Result<()> {
    conn.client_sends(datapath, FIN | ACK)?;
    conn.backend_sends(datapath, ACK)?;
    conn.backend_sends(datapath, FIN | ACK)?;
    conn.client_sends(datapath, ACK)?;
    Ok(())
}

#[test]
fn tcp_moves_through_netfilters_states_from_handshake_to_time_wait() -> Result<()> {
    in_lab(|datapath| {
        let conn = Conn::open(datapath, "192.168.77.2:41000")?;
        // (who sends, flags, the state after it)
        let steps: [(bool, u8, ConnState); 7] = [
            (false, SYN | ACK, ConnState::SynRecv),
            (true, ACK, ConnState::Established),
            (true, FIN | ACK, ConnState::FinWait),
            (false, ACK, ConnState::CloseWait),
            (false, FIN | ACK, ConnState::LastAck),
            (true, ACK, ConnState::TimeWait),
            (true, ACK, ConnState::TimeWait),
        ];
        assert_eq!(only_connection(datapath)?.state(), ConnState::SynSent);
        for (from_client, flags, state) in steps {
            let (verdict, _) = if from_client {
                conn.client_sends(datapath, flags)?
            } else {
                conn.backend_sends(datapath, flags)?
            };
            assert_eq!(verdict, REDIRECT, "{flags:#04x} is translated");
            assert_eq!(
                only_connection(datapath)?.state(),
                state,
                "after {flags:#04x}"
            );
        }
        let reset = Conn::open(datapath, "192.168.77.2:41001")?;
        reset.backend_sends(datapath, SYN | ACK)?;
        reset.backend_sends(datapath, RST)?;
        let states: Vec<ConnState> = datapath
            .flows
            .connections()
            .iter()
            .map(Connection::state)
            .collect();
        assert!(states.contains(&ConnState::Close), "{states:?}");
        Ok(())
    })
}

/// `switchyard cleanup` hands the node back: while it drains, what the
/// per-packet path tracks stays translated both ways, and every packet that
/// would open a connection (to a frontend or an unserved ClusterIP port)
/// goes on untouched to the stack, where kube-proxy serves it.
#[test]
fn draining_keeps_tracked_connections_and_leaves_new_ones_to_the_stack() -> Result<()> {
    in_lab(|datapath| {
        let conn = Conn::open(datapath, "192.168.77.2:41100")?;
        datapath.flows.add_node_flags(NODE_DRAIN)?;
        assert_eq!(
            conn.backend_sends(datapath, SYN | ACK)?.0,
            REDIRECT,
            "reply"
        );
        assert_eq!(conn.client_sends(datapath, ACK)?.0, REDIRECT, "client");
        for (proto, src, dst) in [
            (TCP, "192.168.77.2:41101", NODE_PORT),
            (UDP, "192.168.77.2:41101", "192.168.77.11:30081"),
            (TCP, "192.168.77.2:41102", "10.96.0.10:80"),
            (TCP, "192.168.77.2:41103", "10.96.0.10:81"),
            (UDP, "[fd00:77::2]:41104", "[fd00:77::11]:30083"),
        ] {
            let frame = Frame {
                payload: Vec::new(),
                ..Frame::new(proto, addr(src), addr(dst))
            };
            let (verdict, out) = datapath.run("tc_ingress", &frame)?;
            assert_eq!((verdict, out), (NEXT, frame.bytes()), "{src} -> {dst}");
        }
        assert_eq!(datapath.flows.connections().len(), 1, "only the first");
        Ok(())
    })
}

#[test]
fn only_a_syn_opens_a_connection() -> Result<()> {
    in_lab(|datapath| {
        for flags in [ACK, FIN | ACK, SYN | ACK, RST] {
            let frame = tcp(addr("192.168.77.2:41010"), addr(NODE_PORT), flags);
            let (verdict, out) = datapath.run("tc_ingress", &frame)?;
            assert_eq!(
                (verdict, out),
                (NEXT, frame.bytes()),
                "{flags:#04x} goes on untouched"
            );
        }
        assert!(datapath.flows.connections().is_empty());
        assert_eq!(counter(datapath, COUNTER_PASS_NOT_SYN)?, 4);
        Ok(())
    })
}

#[test]
fn a_client_reusing_a_closed_port_gets_a_new_connection_and_frees_the_old_nat_port() -> Result<()> {
    in_lab(|datapath| {
        let first = Conn::open(datapath, "192.168.77.2:41020")?;
        first.backend_sends(datapath, SYN | ACK)?;
        first.client_sends(datapath, ACK)?;
        close(datapath, &first)?;
        let second = Conn::open(datapath, "192.168.77.2:41020")?;
        let connection = only_connection(datapath)?;
        assert_eq!(connection.state(), ConnState::SynSent, "a new connection");
        assert_eq!(
            connection.nat_port().map(|(_, port)| u16::from_be(port)),
            Some(second.forwarded.src.port())
        );
        Ok(())
    })
}

#[test]
fn a_finished_connections_nat_port_is_taken_over_when_none_is_free() -> Result<()> {
    in_lab(|datapath| {
        narrow_nat_ports(datapath, 1)?;
        let first = Conn::open(datapath, "192.168.77.2:41030")?;
        assert_eq!(first.forwarded.src.port(), 62_000);
        first.backend_sends(datapath, SYN | ACK)?;
        first.client_sends(datapath, ACK)?;
        // The only port is held by a live connection: refused, counted.
        let syn = tcp(addr("192.168.77.2:41031"), addr(NODE_PORT), SYN);
        assert_eq!(datapath.run("tc_ingress", &syn)?.0, SHOT);
        assert_eq!(counter(datapath, COUNTER_DROP_SNAT_PORTS)?, 1);

        close(datapath, &first)?;
        let second = Conn::open(datapath, "192.168.77.2:41031")?;
        assert_eq!(second.forwarded.src.port(), 62_000, "the port came back");
        assert_eq!(counter(datapath, COUNTER_SNAT_PORT_REUSED)?, 1);
        let connection = only_connection(datapath)?;
        assert_eq!(
            connection.forward.map(|(key, _)| key.sport),
            Some(41_031u16.to_be()),
            "the finished connection is gone whole"
        );
        Ok(())
    })
}

#[test]
fn an_evicted_half_is_rebuilt_while_its_port_is_free_and_forgotten_once_taken() -> Result<()> {
    in_lab(|datapath| {
        narrow_nat_ports(datapath, 1)?;
        let conn = Conn::open(datapath, "192.168.77.2:41040")?;
        conn.backend_sends(datapath, SYN | ACK)?;
        let reply_keys: Vec<_> = only_connection(datapath)?
            .reply
            .iter()
            .map(|(k, _)| *k)
            .collect();
        // As an LRU eviction would: the reply half goes.
        assert_eq!(datapath.flows.remove(reply_keys.clone()), 1);
        std::thread::sleep(PAST_TOUCH_INTERVAL);
        assert_eq!(conn.client_sends(datapath, ACK)?.0, REDIRECT);
        assert_eq!(counter(datapath, COUNTER_HALF_REBUILT)?, 1);
        let rebuilt = only_connection(datapath)?;
        assert!(rebuilt.forward.is_some() && rebuilt.reply.is_some());

        // Evicted again, and its port given to another client meanwhile:
        // the survivor must not be translated onto that connection.
        datapath.flows.remove(reply_keys);
        let other = Conn::open(datapath, "192.168.77.2:41041")?;
        assert_eq!(other.forwarded.src.port(), 62_000);
        std::thread::sleep(PAST_TOUCH_INTERVAL);
        let stray = conn.client_sends(datapath, ACK)?;
        assert_eq!(stray.0, NEXT, "left to the stack");
        assert_eq!(counter(datapath, COUNTER_HALF_LOST)?, 1);
        let left = only_connection(datapath)?;
        assert_eq!(
            left.forward.map(|(key, _)| key.sport),
            Some(41_041u16.to_be())
        );
        Ok(())
    })
}

#[test]
fn forwarding_takes_one_off_the_hop_limit_and_leaves_expiring_packets_to_the_stack() -> Result<()> {
    in_lab(|datapath| {
        for (client, frontend) in [
            ("192.168.77.2:41050", NODE_PORT),
            ("[fd00:77::2]:41050", "[fd00:77::11]:30080"),
        ] {
            let syn = tcp(addr(client), addr(frontend), SYN);
            let (verdict, out) = datapath.run("tc_ingress", &syn)?;
            assert_eq!(verdict, REDIRECT);
            let forwarded = packet::parse(&out)?;
            assert_eq!(forwarded.hop_limit, 63, "{client}");
            // The IPv4 header checksum was checked by `parse`.

            let last_hop = Frame {
                hop_limit: 1,
                ..tcp(addr(client), addr(frontend), ACK)
            };
            let (verdict, out) = datapath.run("tc_ingress", &last_hop)?;
            assert_eq!(
                (verdict, out),
                (NEXT, last_hop.bytes()),
                "the stack sends time exceeded"
            );
        }
        Ok(())
    })
}

/// The IP header and 8 bytes after it of `frame`: what an ICMP error
/// about it quotes.
fn quote(frame: &[u8]) -> Vec<u8> {
    let ip_len = if frame[12..14] == [0x86, 0xdd] {
        40
    } else {
        20
    };
    frame[14..14 + ip_len + 8].to_vec()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn icmp_errors_about_a_natted_request_reach_the_client_with_its_own_packet_quoted() -> Result<()> {
    in_lab(|datapath| {
        let client = addr("192.168.77.2:41060");
        let syn = tcp(client, addr(NODE_PORT), SYN);
        let (_, sent) = datapath.run("tc_ingress", &syn)?;
        let forwarded = packet::parse(&sent)?;
        // (who complains, type and code, whose address the client sees)
        for (from, kind_code, seen_from) in [
            ("192.168.77.12", (3, 4), "192.168.77.12"),
            ("10.244.2.10", (3, 3), "192.168.77.11"),
            ("192.168.77.12", (11, 0), "192.168.77.12"),
        ] {
            let error = packet::icmp_error(
                (NODE2_MAC, LAB_MAC),
                (ip(from), forwarded.src.ip()),
                kind_code,
                1400,
                &quote(&sent),
            );
            let (verdict, out) = datapath.run_bytes("tc_ingress", &error)?;
            assert_eq!(verdict, REDIRECT, "{from} {kind_code:?}");
            let seen = packet::parse(&out)?;
            assert_eq!((seen.src.ip(), seen.dst.ip()), (ip(seen_from), client.ip()));
            assert_eq!(seen.dst_mac, CLIENT_MAC);
            assert_eq!(
                seen.icmp,
                Some((kind_code.0, kind_code.1, client, addr(NODE_PORT))),
                "the client's own packet is quoted"
            );
            assert!(seen.checksum_ok, "ICMP checksum");
            assert_eq!(
                out[14 + 20 + 4..14 + 20 + 8],
                1400u32.to_be_bytes(),
                "MTU kept"
            );
            assert_eq!(seen.hop_limit, 63);
        }
        assert_eq!(counter(datapath, COUNTER_ICMP_TRANSLATED)?, 3);
        Ok(())
    })
}

#[test]
fn packet_too_big_about_a_reply_reaches_the_backend_over_ipv6() -> Result<()> {
    in_lab(|datapath| {
        let client = addr("[fd00:77::2]:41061");
        let frontend = addr("[fd00:77::11]:30080");
        let (_, sent) = datapath.run("tc_ingress", &tcp(client, frontend, SYN))?;
        let forwarded = packet::parse(&sent)?;
        let mut answer = tcp(forwarded.dst, forwarded.src, SYN | ACK);
        answer.src_mac = NODE2_MAC;
        let (_, reply) = datapath.run("tc_ingress", &answer)?;
        assert_eq!(packet::parse(&reply)?.src, frontend);
        // The client's path is narrower: the client itself says so.
        let error = packet::icmp_error(
            (CLIENT_MAC, LAB_MAC),
            (client.ip(), frontend.ip()),
            (2, 0),
            1280,
            &quote(&reply),
        );
        let (verdict, out) = datapath.run_bytes("tc_ingress", &error)?;
        assert_eq!(verdict, REDIRECT);
        let seen = packet::parse(&out)?;
        assert_eq!(
            (seen.src.ip(), seen.dst.ip()),
            (forwarded.src.ip(), forwarded.dst.ip()),
            "from the node, as the backend knows its client"
        );
        assert_eq!(seen.dst_mac, NODE2_MAC);
        assert_eq!(
            seen.icmp,
            Some((2, 0, forwarded.dst, forwarded.src)),
            "the backend's own packet is quoted"
        );
        assert!(seen.checksum_ok, "ICMPv6 checksum over the new addresses");

        let stranger = packet::icmp_error(
            (CLIENT_MAC, LAB_MAC),
            (client.ip(), frontend.ip()),
            (2, 0),
            1280,
            &quote(&tcp(frontend, addr("[fd00:77::2]:49999"), ACK).bytes()),
        );
        assert_eq!(
            datapath.run_bytes("tc_ingress", &stranger)?,
            (NEXT, stranger.clone()),
            "an error about no connection of ours goes on untouched"
        );
        Ok(())
    })
}

/// Two frontends of one local backend, reached from the same client
/// address and port without NAT (`np-local`'s ClusterIP from outside, when
/// it picks the local pod, and its Local NodePort): both would have the
/// same reply tuple. The first keeps it; the second is dropped
/// (`conntrack_insert`) rather than taking the first's replies, which
/// would then leave from the wrong frontend. Found by `packet_fuzz`.
#[test]
fn a_connection_never_takes_another_ones_reply_tuple() -> Result<()> {
    in_lab(|datapath| {
        let local = addr("10.244.1.10:5353");
        let cluster_ip = addr("10.96.0.11:53");
        // The ClusterIP picks either endpoint; find a client port it sent
        // to the local one (one in two, so 64 ports make it certain).
        let client = (40_100..40_164)
            .map(|port| SocketAddr::new("192.168.77.2".parse().unwrap(), port))
            .find(|client| {
                let (_, out) = datapath
                    .run("tc_ingress", &Frame::new(UDP, *client, cluster_ip))
                    .unwrap();
                packet::parse(&out).is_ok_and(|seen| seen.dst == local && seen.src == *client)
            })
            .expect("the ClusterIP picks the local pod for some client port");
        let dropped = counter(datapath, COUNTER_DROP_CONNTRACK)?;
        let node_port = Frame::new(UDP, client, addr("192.168.77.11:30081"));
        assert_eq!(datapath.run("tc_ingress", &node_port)?.0, SHOT);
        assert_eq!(counter(datapath, COUNTER_DROP_CONNTRACK)?, dropped + 1);
        let answer = Frame::new(UDP, local, client);
        let (_, out) = datapath.run("tc_egress", &answer)?;
        let seen = packet::parse(&out)?;
        ensure!(
            (seen.src, seen.dst) == (cluster_ip, client),
            "the first connection keeps its replies: {seen:?}"
        );
        Ok(())
    })
}
