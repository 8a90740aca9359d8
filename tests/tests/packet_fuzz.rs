//! Randomized packets through the tc programs (`BPF_PROG_TEST_RUN` in the
//! packet lab), checking what must hold whatever arrives:
//!
//! - a packet addressed to no frontend, and no reply of a connection the
//!   programs translated, leaves byte for byte as it came (dropping it is
//!   allowed: unallocated Service addresses are dropped);
//! - a packet they change had a valid checksum only if what leaves has one;
//! - every connection they translate gets its replies back with the
//!   frontend as source: no backend's address leaves towards the client;
//! - the verdict is one of the four the programs return.
//!
//! Frames are built around the lab's frontends and clients (so most reach
//! deep into the programs) and one in five has bytes flipped or is cut
//! short. `cargo xtask test` runs a bounded number (`SY_PACKET_FUZZ`, 4,000
//! by default), `cargo xtask fuzz` many more; `SY_FUZZ_SEED` repeats a run.

mod support;

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use anyhow::{Context, Result, ensure};
use support::packet_lab::{Datapath, NEXT, NODE2_MAC, REDIRECT, SHOT, in_lab};
use switchyard_tests::{
    packet::{self, ACK, FIN, Frame, RST, SYN, TCP, UDP},
    rng::Rng,
};

/// `TC_ACT_OK`: the programs' fourth verdict.
const OK: u32 = 0;
const DEFAULT_FRAMES: usize = 4_000;
/// The shortest Ethernet frame on a wire (without its checksum).
const MIN_FRAME: usize = 60;

/// Where frames come from: the lab's client, an allowed LoadBalancer
/// source, an address from nowhere, node-2, the local and a remote pod.
const SOURCES: [&str; 12] = [
    "192.168.77.2",
    "10.1.1.1",
    "198.51.100.7",
    "192.168.77.12",
    "10.244.1.10",
    "10.244.2.10",
    "fd00:77::2",
    "fd00:77::12",
    "2001:db8::7",
    "fd00:244:1::10",
    "fd00:244:2::10",
    "fd00:77::11",
];

/// Destinations that are no frontend, or not on every port.
const OTHERS: [&str; 10] = [
    "192.168.77.11",
    "10.96.0.99",
    "10.96.0.10",
    "10.244.1.10",
    "10.244.2.10",
    "203.0.113.10",
    "fd00:77::11",
    "fd00:96::99",
    "fd00:244:2::10",
    "fd00:203::10",
];

/// A (source, destination, protocol) as the programs see one direction.
type Tuple = (SocketAddr, SocketAddr, u8);

struct Fuzz<'a> {
    datapath: &'a Datapath,
    rng: Rng,
    frontends: BTreeSet<(IpAddr, u16, u8)>,
    /// Replies the programs may translate: the backend side of every
    /// connection they translated.
    replies: BTreeSet<Tuple>,
    translated: usize,
}

impl Fuzz<'_> {
    fn frame(&mut self) -> Frame {
        let frontends: Vec<_> = self.frontends.iter().copied().collect();
        let (dst, proto) = if self.rng.chance(60) {
            let (ip, port, proto) = *self.rng.pick(&frontends);
            (SocketAddr::new(ip, port), proto)
        } else {
            let ip: IpAddr = self.rng.pick(&OTHERS).parse().unwrap();
            let any = self.rng.port();
            let port = *self.rng.pick(&[any, 80, 8080, 30080, 30081, 5353]);
            (SocketAddr::new(ip, port), *self.rng.pick(&[TCP, UDP]))
        };
        let family: Vec<IpAddr> = SOURCES
            .iter()
            .map(|text| text.parse().unwrap())
            .filter(|ip: &IpAddr| ip.is_ipv4() == dst.is_ipv4())
            .collect();
        let src = SocketAddr::new(*self.rng.pick(&family), self.rng.port());
        let mut frame = Frame::new(proto, src, dst);
        if proto == TCP && self.rng.chance(30) {
            let any = self.rng.byte();
            frame.tcp_flags = *self.rng.pick(&[ACK, SYN | ACK, RST, FIN | ACK, any]);
        }
        let len = self.rng.below(48);
        frame.payload = self.rng.bytes(len);
        frame.corrupt_checksum = self.rng.chance(5);
        if self.rng.chance(10) {
            frame.hop_limit = self.rng.byte();
        }
        frame
    }

    /// Flips a few bytes past the MACs or cuts the frame short.
    fn damage(&mut self, bytes: &mut Vec<u8>) {
        if self.rng.chance(30) {
            let keep = 14 + self.rng.below(bytes.len() - 14);
            bytes.truncate(keep);
        } else {
            for _ in 0..=self.rng.below(3) {
                let at = 12 + self.rng.below(bytes.len() - 12);
                bytes[at] ^= 1 << self.rng.below(8);
            }
        }
    }

    /// Whether the programs may change `input`: a TCP/UDP datagram to a
    /// frontend or a reply of theirs, or what this check cannot judge by
    /// addresses and ports alone (an ICMP error, whose quoted connection
    /// the programs look up; a fragment, which its first one decides; IPv4
    /// options). Whatever is not IP, or too short to carry ports, may not
    /// change.
    fn may_change(&self, input: &[u8]) -> bool {
        match addressing(input) {
            None => false,
            Some(Addressing::Unjudged) => true,
            Some(Addressing::Judged((src, dst, proto))) => {
                self.frontends.contains(&(dst.ip(), dst.port(), proto))
                    || self.replies.contains(&(src, dst, proto))
            }
        }
    }

    /// Whether `output` refuses `input`, sent to a port no Service serves
    /// on an address of the service CIDRs, back to its source: kube-proxy
    /// rejects those ("cluster-ips-check"), which translates nothing.
    fn refuses_unserved_port(&self, input: &[u8], output: &[u8]) -> bool {
        let Some(Addressing::Judged((src, dst, _))) = addressing(input) else {
            return false;
        };
        let Ok(out) = packet::parse(output) else {
            return false;
        };
        let refusal = out.icmp.is_some() || (out.proto == TCP && out.tcp_flags & RST != 0);
        refusal
            && (out.src.ip(), out.dst.ip()) == (dst.ip(), src.ip())
            && self
                .datapath
                .desired
                .service_cidrs
                .iter()
                .any(|cidr| cidr.contains(dst.ip()))
    }

    /// Runs `input` through `program` and checks the invariants; returns
    /// the verdict and what left.
    fn run(&mut self, program: &str, input: &[u8]) -> Result<(u32, Vec<u8>)> {
        let (verdict, output) = match self.datapath.run_bytes(program, input) {
            Ok(result) => result,
            // The kernel's test runner refuses some short frames (EINVAL)
            // before any program runs; on a wire they are padded to 60.
            Err(_) if input.len() < MIN_FRAME => return Ok((SHOT, Vec::new())),
            Err(error) => return Err(error.context(format!("{program} on {input:02x?}"))),
        };
        ensure!(
            [OK, NEXT, SHOT, REDIRECT].contains(&verdict),
            "{program}: verdict {verdict} for {input:02x?}"
        );
        if output == input {
            ensure!(
                verdict != REDIRECT,
                "{program}: redirected unchanged {input:02x?}"
            );
            return Ok((verdict, output));
        }
        ensure!(
            self.may_change(input) || self.refuses_unserved_port(input, &output),
            "{program} changed a packet addressed to no frontend:\n in  {input:02x?}\n out {output:02x?}"
        );
        let seen = packet::parse(input).ok();
        if seen.as_ref().is_some_and(|s| s.checksum_ok) && verdict != SHOT {
            let out = packet::parse(&output)
                .with_context(|| format!("{program}: output of {seen:?} unreadable"))?;
            ensure!(
                out.checksum_ok,
                "{program}: a valid checksum went bad: {seen:?} -> {out:?}\n in  {input:02x?}\n out {output:02x?}"
            );
        }
        Ok((verdict, output))
    }

    /// One round: a frame (sometimes damaged) through ingress; when the
    /// programs translate it, the backend's answer must come back as the
    /// frontend's.
    fn round(&mut self) -> Result<()> {
        let frame = self.frame();
        let mut input = frame.bytes();
        let damaged = self.rng.chance(20);
        if damaged {
            self.damage(&mut input);
        }
        let (verdict, output) = self.run("tc_ingress", &input)?;
        if damaged || output == input || ![NEXT, REDIRECT].contains(&verdict) {
            return Ok(());
        }
        let Ok(out) = packet::parse(&output) else {
            return Ok(());
        };
        if out.icmp.is_some()
            || out.proto != frame.proto
            || out.dst == frame.dst
            || out.dst == frame.src
        {
            // Refused (an RST or ICMP error back), or not translated.
            return Ok(());
        }
        self.translated += 1;
        self.replies.insert((out.dst, out.src, out.proto));
        // A NATed connection's answer comes back to this node's address
        // and is translated as it arrives; one that kept its client is
        // translated as it leaves towards the client, which it does here
        // when the backend or the client is local (otherwise backend and
        // client talk directly, past this node).
        let snat = out.src != frame.src;
        if !snat && !local_pod(out.dst.ip()) && !on_this_node(frame.src.ip()) {
            return Ok(());
        }
        let mut answer = Frame::new(frame.proto, out.dst, out.src);
        answer.tcp_flags = if frame.tcp_flags == SYN {
            SYN | ACK
        } else {
            ACK
        };
        if !local_pod(out.dst.ip()) {
            answer.src_mac = NODE2_MAC;
        }
        let program = if snat { "tc_ingress" } else { "tc_egress" };
        let (_, back) = self.run(program, &answer.bytes())?;
        let back = packet::parse(&back)?;
        ensure!(
            (back.src, back.dst) == (frame.dst, frame.src),
            "{program}: the answer to {} -> {} (sent on as {} -> {}) left as {} -> {}",
            frame.src,
            frame.dst,
            out.src,
            out.dst,
            back.src,
            back.dst
        );
        ensure!(back.checksum_ok, "{program}: answer checksum {back:?}");
        Ok(())
    }
}

fn local_pod(ip: IpAddr) -> bool {
    is_one_of(ip, &["10.244.1.10", "fd00:244:1::10"])
}

/// The node's own addresses and its local pod's.
fn on_this_node(ip: IpAddr) -> bool {
    local_pod(ip)
        || is_one_of(
            ip,
            &[
                "192.168.77.11",
                "fd00:77::11",
                "10.244.1.1",
                "fd00:244:1::1",
            ],
        )
}

fn is_one_of(ip: IpAddr, addresses: &[&str]) -> bool {
    addresses
        .iter()
        .any(|text| text.parse::<IpAddr>().is_ok_and(|address| address == ip))
}

/// What a frame's headers say about where it goes.
enum Addressing {
    Judged(Tuple),
    Unjudged,
}

/// The frame's tuple as its headers give it, read as the programs read
/// them (whatever the lengths and checksums say); `None` for what is not
/// IPv4 or IPv6 or is too short to carry ports.
fn addressing(frame: &[u8]) -> Option<Addressing> {
    let ip = frame.get(14..)?;
    let (src, dst, proto, l4): (IpAddr, IpAddr, u8, &[u8]) = match frame.get(12..14)? {
        [0x08, 0x00] => {
            let header = ip.get(..20)?;
            let fragment = u16::from_be_bytes([header[6], header[7]]) & 0x3fff != 0;
            if header[0] != 0x45 || fragment {
                return Some(Addressing::Unjudged);
            }
            let v4 = |at: usize| IpAddr::from(<[u8; 4]>::try_from(&header[at..at + 4]).unwrap());
            (v4(12), v4(16), header[9], &ip[20..])
        }
        [0x86, 0xdd] => {
            let header = ip.get(..40)?;
            let v6 = |at: usize| IpAddr::from(<[u8; 16]>::try_from(&header[at..at + 16]).unwrap());
            (v6(8), v6(24), header[6], &ip[40..])
        }
        _ => return None,
    };
    if !matches!(proto, TCP | UDP) {
        return Some(Addressing::Unjudged);
    }
    let ports = l4.get(..4)?;
    let port = |at: usize| u16::from_be_bytes([ports[at], ports[at + 1]]);
    Some(Addressing::Judged((
        SocketAddr::new(src, port(0)),
        SocketAddr::new(dst, port(2)),
        proto,
    )))
}

#[test]
fn random_packets_keep_the_programs_invariants() -> Result<()> {
    let frames = std::env::var("SY_PACKET_FUZZ")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(DEFAULT_FRAMES);
    in_lab(|datapath| {
        let frontends = datapath
            .desired
            .frontends
            .keys()
            .map(|f| (f.ip, f.port, f.protocol.number()))
            .collect();
        let mut fuzz = Fuzz {
            datapath,
            rng: Rng::from_env(),
            frontends,
            replies: BTreeSet::new(),
            translated: 0,
        };
        for round in 0..frames {
            fuzz.round().with_context(|| format!("round {round}"))?;
        }
        // The frames reached the translation code, not only the parser.
        ensure!(
            fuzz.translated > frames / 10,
            "only {} of {frames} frames were translated",
            fuzz.translated
        );
        eprintln!("{frames} frames, {} translated", fuzz.translated);
        Ok(())
    })
}
