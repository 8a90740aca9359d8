//! Ethernet frames for the packet tests: built with correct checksums (or a
//! deliberately broken one), and parsed back with every checksum verified,
//! so a test states what goes in and what must come out, as katran's
//! table-driven tests do.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Context, Result, bail, ensure};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const RST: u8 = 0x04;
pub const FIN: u8 = 0x01;

pub type Mac = [u8; 6];

#[derive(Clone, Debug)]
pub struct Frame {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: u8,
    pub tcp_flags: u8,
    pub seq: u32,
    pub payload: Vec<u8>,
    /// Adds one to the TCP/UDP checksum after computing it.
    pub corrupt_checksum: bool,
    /// IPv4 TTL or IPv6 hop limit.
    pub hop_limit: u8,
}

impl Frame {
    pub fn new(proto: u8, src: SocketAddr, dst: SocketAddr) -> Self {
        Self {
            src_mac: [2, 0, 0, 0, 0, 0x02],
            dst_mac: [2, 0, 0, 0, 0, 0x11],
            src,
            dst,
            proto,
            tcp_flags: if proto == TCP { SYN } else { 0 },
            seq: 1000,
            payload: b"hello".to_vec(),
            corrupt_checksum: false,
            hop_limit: 64,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        ip_frame(
            (self.src_mac, self.dst_mac),
            (self.src.ip(), self.dst.ip()),
            self.proto,
            self.hop_limit,
            None,
            &self.segment(),
        )
    }

    /// This frame's datagram as two IP fragments with identification
    /// `id`: the first carries the first `first_len` bytes of the TCP or
    /// UDP segment (header included; a multiple of 8), the second the
    /// rest.
    pub fn fragments(&self, first_len: usize, id: u32) -> [Vec<u8>; 2] {
        assert!(
            first_len.is_multiple_of(8),
            "fragment offsets count 8-byte units"
        );
        let segment = self.segment();
        assert!(
            first_len < segment.len(),
            "two fragments need a longer payload"
        );
        let (head, tail) = segment.split_at(first_len);
        let piece = |offset: usize, more: bool, bytes: &[u8]| {
            ip_frame(
                (self.src_mac, self.dst_mac),
                (self.src.ip(), self.dst.ip()),
                self.proto,
                self.hop_limit,
                Some(Piece { id, offset, more }),
                bytes,
            )
        };
        [piece(0, true, head), piece(first_len, false, tail)]
    }

    /// The TCP or UDP header and payload, checksummed.
    fn segment(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        l4.extend_from_slice(&self.src.port().to_be_bytes());
        l4.extend_from_slice(&self.dst.port().to_be_bytes());
        if self.proto == TCP {
            l4.extend_from_slice(&self.seq.to_be_bytes());
            l4.extend_from_slice(&0u32.to_be_bytes());
            l4.extend_from_slice(&[5 << 4, self.tcp_flags, 0xff, 0xff, 0, 0, 0, 0]);
        } else {
            l4.extend_from_slice(&length(8 + self.payload.len()).to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
        }
        l4.extend_from_slice(&self.payload);
        let checksum_at = if self.proto == TCP { 16 } else { 6 };
        let mut checksum = transport_checksum(self.src.ip(), self.dst.ip(), self.proto, &l4);
        if self.proto == UDP && checksum == 0 {
            // RFC 768: a computed zero is sent as all ones (zero means
            // none over IPv4 and is invalid over IPv6).
            checksum = 0xffff;
        }
        if self.corrupt_checksum {
            checksum = checksum.wrapping_add(1);
        }
        l4[checksum_at..checksum_at + 2].copy_from_slice(&checksum.to_be_bytes());
        l4
    }
}

/// Where one fragment sits in its datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// IPv4's identification (16 bits) or the IPv6 fragment header's.
    pub id: u32,
    /// Bytes from the start of the datagram's payload.
    pub offset: usize,
    /// "More fragments" follow.
    pub more: bool,
}

/// The fragment header of an IPv6 packet.
const NEXTHDR_FRAGMENT: u8 = 44;

/// An ICMP or ICMPv6 error from `src` to `dst` quoting `quoted` (an IP
/// header and what follows it), with `info` in the header's second word
/// (the next-hop MTU of "fragmentation needed", the MTU of "packet too
/// big"), checksummed.
pub fn icmp_error(
    macs: (Mac, Mac),
    (src, dst): (IpAddr, IpAddr),
    (kind, code): (u8, u8),
    info: u32,
    quoted: &[u8],
) -> Vec<u8> {
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend_from_slice(&info.to_be_bytes());
    icmp.extend_from_slice(quoted);
    let (proto, pseudo) = if src.is_ipv6() {
        (58, pseudo_sum(src, dst, 58, icmp.len()))
    } else {
        (1, 0)
    };
    let checksum = fold(sum(pseudo, &icmp));
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    ip_frame(macs, (src, dst), proto, 64, None, &icmp)
}

/// Ethernet and IP headers around `payload`: a whole datagram (IPv4 with
/// "don't fragment"), or one `piece` of one (IPv6 with a fragment header).
fn ip_frame(
    (src_mac, dst_mac): (Mac, Mac),
    (src, dst): (IpAddr, IpAddr),
    proto: u8,
    hop_limit: u8,
    piece: Option<Piece>,
    payload: &[u8],
) -> Vec<u8> {
    let offset_units =
        |piece: Piece| u16::try_from(piece.offset / 8).expect("a test datagram fits in 64 KiB");
    let mut frame = Vec::new();
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&src_mac);
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            frame.extend_from_slice(&0x0800u16.to_be_bytes());
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&length(20 + payload.len()).to_be_bytes());
            let (id, flags) = match piece {
                None => (1, 0x4000),
                Some(piece) => (
                    u16::try_from(piece.id).expect("IPv4 identifications have 16 bits"),
                    offset_units(piece) | if piece.more { 0x2000 } else { 0 },
                ),
            };
            ip.extend_from_slice(&id.to_be_bytes());
            ip.extend_from_slice(&flags.to_be_bytes());
            ip.extend_from_slice(&[hop_limit, proto, 0, 0]);
            ip.extend_from_slice(&src.octets());
            ip.extend_from_slice(&dst.octets());
            let checksum = fold(sum(0, &ip));
            ip[10..12].copy_from_slice(&checksum.to_be_bytes());
            frame.extend_from_slice(&ip);
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            frame.extend_from_slice(&0x86ddu16.to_be_bytes());
            let header = piece.map(|piece| {
                let mut header = vec![proto, 0];
                let offset_flags = offset_units(piece) << 3 | u16::from(piece.more);
                header.extend_from_slice(&offset_flags.to_be_bytes());
                header.extend_from_slice(&piece.id.to_be_bytes());
                header
            });
            let header = header.unwrap_or_default();
            let next = if piece.is_some() {
                NEXTHDR_FRAGMENT
            } else {
                proto
            };
            frame.extend_from_slice(&[0x60, 0, 0, 0]);
            frame.extend_from_slice(&length(header.len() + payload.len()).to_be_bytes());
            frame.extend_from_slice(&[next, hop_limit]);
            frame.extend_from_slice(&src.octets());
            frame.extend_from_slice(&dst.octets());
            frame.extend_from_slice(&header);
        }
        _ => panic!("mixed address families"),
    }
    frame.extend_from_slice(payload);
    frame
}

/// A frame as the program left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: u8,
    pub tcp_flags: u8,
    pub seq: u32,
    pub ack: u32,
    /// Whether the TCP/UDP/ICMP checksum verifies.
    pub checksum_ok: bool,
    /// ICMP / ICMPv6 type and code, and the quoted packet's addresses.
    pub icmp: Option<(u8, u8, SocketAddr, SocketAddr)>,
    pub len: usize,
    /// IPv4 TTL or IPv6 hop limit.
    pub hop_limit: u8,
}

pub fn parse(frame: &[u8]) -> Result<Seen> {
    ensure!(frame.len() >= 14, "frame of {} bytes", frame.len());
    let mac = |at: usize| -> Mac { frame[at..at + 6].try_into().unwrap_or_default() };
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let (src, dst, proto, l4, hop_limit) = match ethertype {
        0x0800 => {
            let ip = &frame[14..];
            ensure!(
                ip.len() >= 20 && fold(sum(0, &ip[..20])) == 0,
                "bad IPv4 header checksum"
            );
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            ensure!(
                (20..=ip.len()).contains(&total),
                "IPv4 total length {total} for {} bytes",
                ip.len()
            );
            let src = IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]));
            let dst = IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
            (src, dst, ip[9], &ip[20..total], ip[8])
        }
        0x86dd => {
            let ip = &frame[14..];
            ensure!(ip.len() >= 40, "short IPv6 header");
            let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            let src = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24])?));
            let dst = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40])?));
            ensure!(40 + payload <= ip.len(), "IPv6 payload beyond frame");
            (src, dst, ip[6], &ip[40..40 + payload], ip[7])
        }
        other => bail!("ethertype {other:#06x}"),
    };
    let port = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
    let word = |at: usize| u32::from_be_bytes([l4[at], l4[at + 1], l4[at + 2], l4[at + 3]]);
    let mut seen = Seen {
        src_mac: mac(6),
        dst_mac: mac(0),
        src: SocketAddr::new(src, 0),
        dst: SocketAddr::new(dst, 0),
        proto,
        tcp_flags: 0,
        seq: 0,
        ack: 0,
        checksum_ok: false,
        icmp: None,
        len: frame.len(),
        hop_limit,
    };
    match proto {
        TCP | UDP => {
            let header = if proto == TCP { 20 } else { 8 };
            ensure!(
                l4.len() >= header,
                "{} bytes of a protocol {proto} header",
                l4.len()
            );
            seen.src.set_port(port(0));
            seen.dst.set_port(port(2));
            if proto == TCP {
                seen.seq = word(4);
                seen.ack = word(8);
                seen.tcp_flags = l4[13];
            }
            seen.checksum_ok = transport_checksum(src, dst, proto, l4) == 0;
        }
        1 | 58 => {
            let pseudo = if proto == 58 {
                pseudo_sum(src, dst, 58, l4.len())
            } else {
                0
            };
            seen.checksum_ok = fold(sum(pseudo, l4)) == 0;
            let (quoted_src, quoted_dst) = quoted(proto, l4)?;
            seen.icmp = Some((l4[0], l4[1], quoted_src, quoted_dst));
        }
        other => bail!("protocol {other}"),
    }
    Ok(seen)
}

/// The source and destination of the packet an ICMP (`proto` 1) or
/// ICMPv6 (58) error `l4` quotes.
fn quoted(proto: u8, l4: &[u8]) -> Result<(SocketAddr, SocketAddr)> {
    let quoted_ip = if proto == 1 { 20 } else { 40 };
    ensure!(l4.len() >= 8 + quoted_ip + 4, "short ICMP error");
    let quoted = &l4[8..];
    let (src, dst, ports) = if proto == 1 {
        let ihl = usize::from(quoted[0] & 0x0f) * 4;
        let v4 = |at: usize| {
            IpAddr::V4(Ipv4Addr::new(
                quoted[at],
                quoted[at + 1],
                quoted[at + 2],
                quoted[at + 3],
            ))
        };
        (v4(12), v4(16), quoted.get(ihl..).unwrap_or_default())
    } else {
        (
            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&quoted[8..24])?)),
            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&quoted[24..40])?)),
            &quoted[40..],
        )
    };
    ensure!(ports.len() >= 4, "ICMP error quoting no ports");
    let port = |at: usize| u16::from_be_bytes([ports[at], ports[at + 1]]);
    Ok((SocketAddr::new(src, port(0)), SocketAddr::new(dst, port(2))))
}

/// One fragment as the program left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenPiece {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub hop_limit: u8,
    pub piece: Piece,
    pub payload: Vec<u8>,
}

/// Reads one fragment (IPv4 header checksum verified).
pub fn parse_piece(frame: &[u8]) -> Result<SeenPiece> {
    ensure!(frame.len() >= 14, "frame of {} bytes", frame.len());
    let mac = |at: usize| -> Mac { frame[at..at + 6].try_into().unwrap_or_default() };
    let ip = &frame[14..];
    let (src, dst, proto, hop_limit, piece, payload) =
        match u16::from_be_bytes([frame[12], frame[13]]) {
            0x0800 => {
                ensure!(
                    ip.len() >= 20 && fold(sum(0, &ip[..20])) == 0,
                    "bad IPv4 header checksum"
                );
                let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
                ensure!(
                    (20..=ip.len()).contains(&total),
                    "IPv4 total length {total} for {} bytes",
                    ip.len()
                );
                let flags = u16::from_be_bytes([ip[6], ip[7]]);
                let piece = Piece {
                    id: u32::from(u16::from_be_bytes([ip[4], ip[5]])),
                    offset: usize::from(flags & 0x1fff) * 8,
                    more: flags & 0x2000 != 0,
                };
                let src = IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]));
                let dst = IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
                (src, dst, ip[9], ip[8], piece, &ip[20..total])
            }
            0x86dd => {
                ensure!(
                    ip.len() >= 48 && ip[6] == NEXTHDR_FRAGMENT,
                    "no IPv6 fragment header"
                );
                let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
                ensure!(40 + payload <= ip.len(), "IPv6 payload beyond frame");
                let offset_flags = u16::from_be_bytes([ip[42], ip[43]]);
                let piece = Piece {
                    id: u32::from_be_bytes([ip[44], ip[45], ip[46], ip[47]]),
                    offset: usize::from(offset_flags >> 3) * 8,
                    more: offset_flags & 1 != 0,
                };
                let src = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24])?));
                let dst = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40])?));
                (src, dst, ip[40], ip[7], piece, &ip[48..40 + payload])
            }
            other => bail!("ethertype {other:#06x}"),
        };
    Ok(SeenPiece {
        src_mac: mac(6),
        dst_mac: mac(0),
        src,
        dst,
        proto,
        hop_limit,
        piece,
        payload: payload.to_vec(),
    })
}

/// The datagram `frames` (its fragments, in order) make up, as one whole
/// frame for [`parse`] to check; every fragment must carry the same
/// addresses, protocol and identification, and they must fit end to end.
pub fn reassemble(frames: &[Vec<u8>]) -> Result<Seen> {
    let pieces = frames
        .iter()
        .map(|frame| parse_piece(frame))
        .collect::<Result<Vec<_>>>()?;
    let first = pieces.first().context("no fragments")?;
    let mut payload = Vec::new();
    for (index, piece) in pieces.iter().enumerate() {
        ensure!(
            (piece.src, piece.dst, piece.proto, piece.piece.id)
                == (first.src, first.dst, first.proto, first.piece.id),
            "fragment {index} is of another datagram: {piece:?}"
        );
        ensure!(
            piece.piece.offset == payload.len(),
            "fragment {index} at {} after {} bytes",
            piece.piece.offset,
            payload.len()
        );
        ensure!(
            piece.piece.more == (index + 1 < pieces.len()),
            "fragment {index}: wrong \"more fragments\""
        );
        payload.extend_from_slice(&piece.payload);
    }
    parse(&ip_frame(
        (first.src_mac, first.dst_mac),
        (first.src, first.dst),
        first.proto,
        first.hop_limit,
        None,
        &payload,
    ))
}

/// A length field of a test packet, which must fit one.
fn length(len: usize) -> u16 {
    u16::try_from(len).expect("a test packet fits in 64 KiB")
}

/// The checksum field's value for `l4` (0 when `l4` already carries a
/// correct checksum).
pub fn transport_checksum(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> u16 {
    fold(sum(pseudo_sum(src, dst, proto, l4.len()), l4))
}

fn pseudo_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let octets = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    let mut pseudo = octets(src);
    pseudo.extend(octets(dst));
    let len = u32::try_from(len).expect("a segment's length fits u32");
    sum(u32::from(proto) + len, &pseudo)
}

fn sum(mut acc: u32, bytes: &[u8]) -> u32 {
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        acc += u32::from(word);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !u16::try_from(acc).expect("folded to 16 bits")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_parse_back_with_valid_checksums() {
        for (src, dst) in [
            ("192.168.77.2:40000", "192.168.77.11:30080"),
            ("[fd00:77::2]:40000", "[fd00:77::11]:30080"),
        ] {
            for proto in [TCP, UDP] {
                let frame = Frame::new(proto, src.parse().unwrap(), dst.parse().unwrap());
                let seen = parse(&frame.bytes()).unwrap();
                assert!(seen.checksum_ok, "{src} {proto}");
                assert_eq!(seen.src, frame.src);
                assert_eq!(seen.dst, frame.dst);
                let mut broken = frame.clone();
                broken.corrupt_checksum = true;
                assert!(!parse(&broken.bytes()).unwrap().checksum_ok);
            }
        }
    }

    #[test]
    fn fragments_reassemble_into_the_whole_datagram() {
        for (src, dst) in [
            ("192.168.77.2:40000", "192.168.77.11:30081"),
            ("[fd00:77::2]:40000", "[fd00:77::11]:30081"),
        ] {
            let mut frame = Frame::new(UDP, src.parse().unwrap(), dst.parse().unwrap());
            frame.payload = (0..100).collect();
            let pieces = frame.fragments(64, 0x1234);
            let first = parse_piece(&pieces[0]).unwrap();
            assert_eq!((first.piece.offset, first.piece.more), (0, true), "{src}");
            assert_eq!(parse_piece(&pieces[1]).unwrap().piece.offset, 64, "{src}");
            assert_eq!(reassemble(&pieces).unwrap(), parse(&frame.bytes()).unwrap());
            assert!(reassemble(&[pieces[1].clone(), pieces[0].clone()]).is_err());
        }
    }
}
