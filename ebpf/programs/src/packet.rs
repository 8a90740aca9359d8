//! Reading and rewriting one packet's headers at a tc or XDP hook (see
//! `frame`), and sending it on by route. Every access goes through the
//! load/store helpers, which bound-check each read and write themselves,
//! so no direct packet pointer needs proving safe to the verifier.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_csum_diff,
};
use switchyard_abi::{Addr, FlowKey, FragmentKey, FragmentPorts, PROTO_TCP, PROTO_UDP};

use crate::{fragment, frame::Frame, route::Kind};

/// "Not mine, carry on" (see the ABI's `TC_NEXT`).
pub const NEXT: i32 = switchyard_abi::TC_NEXT;

pub const ETH_HLEN: usize = 14;

// Field offsets from the start of their header (RFC 791, 8200, 9293, 768).
/// IPv4: identification; flags and fragment offset.
const IPV4_ID: usize = 4;
const IPV4_FRAG_OFF: usize = 6;
/// IPv4: time to live, and the protocol beside it in one 16-bit word.
const IPV4_TTL: usize = 8;
/// IPv4: protocol.
const IPV4_PROTOCOL: usize = 9;
/// IPv4: header checksum.
const IPV4_CHECKSUM: usize = 10;
/// IPv4: source and destination addresses.
const IPV4_SADDR: usize = 12;
const IPV4_DADDR: usize = 16;
/// IPv6: next header, and the hop limit after it.
const IPV6_NEXTHDR: usize = 6;
const IPV6_HOP_LIMIT: usize = 7;
/// IPv6: source and destination addresses.
const IPV6_SADDR: usize = 8;
const IPV6_DADDR: usize = 24;
/// TCP and UDP: source and destination ports.
const L4_SPORT: usize = 0;
const L4_DPORT: usize = 2;
/// TCP: the flags byte; its checksum.
const TCP_FLAGS: usize = 13;
const TCP_CHECKSUM: usize = 16;
/// UDP: its checksum.
const UDP_CHECKSUM: usize = 6;
/// IPv6 fragment header: fragment offset and flags; identification.
const FRAG_HDR_OFF: usize = 2;
const FRAG_HDR_ID: usize = 4;
/// The fragment offset (in 8-byte units) and "more fragments" of IPv4's
/// flags word, and of the IPv6 fragment header's (offset above 3 bits of
/// flags).
pub const IPV4_OFFSET_MASK: u16 = 0x1fff;
pub const IPV4_MORE_FRAGMENTS: u16 = 0x2000;
const IPV6_MORE_FRAGMENTS: u16 = 0x0001;

// The size half of the csum_replace helpers' flags: how wide the replaced
// field is (BPF_F_HDR_FIELD_MASK).
const CSUM_FIELD_2: u64 = 2;
const CSUM_FIELD_4: u64 = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPV6_HLEN: usize = 40;
const NEXTHDR_FRAGMENT: u8 = 44;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A TCP or UDP packet's addressing, as read from its headers.
///
/// `#[repr(C)]` with its padding as a field that is always written: a move
/// of the whole struct copies it in 8-byte words, and the 6.1 verifier
/// refuses a read of stack bytes nothing wrote ("invalid read from stack";
/// later kernels allow it).
#[repr(C)]
pub struct Packet {
    /// Offset of the TCP or UDP header.
    pub l4: usize,
    pub src: Addr,
    pub dst: Addr,
    /// Network byte order, as read.
    pub sport: u16,
    pub dport: u16,
    pub v6: bool,
    pub proto: u8,
    pub tcp_flags: u8,
    /// A fragment after a datagram's first: it has no TCP or UDP header,
    /// its ports are the first fragment's (see `fragment`), and only its
    /// addresses are rewritten.
    pub later_fragment: bool,
    /// IPv4 with options: the reject builders only handle plain headers.
    pub ip_options: bool,
    /// IPv4 TTL or IPv6 hop limit.
    pub hop_limit: u8,
    pad: [u8; 6],
}

const _: () = assert!(size_of::<Packet>() == 56, "no padding but `pad`");

impl Packet {
    /// A packet's IP-level facts, everything else zero (every byte written:
    /// see the type's docs).
    #[expect(
        clippy::inline_always,
        reason = "inlined, its fields go straight into the caller's packet; a call would build a \
                  second 56-byte one in a frame of its own"
    )]
    #[inline(always)]
    fn addressed(v6: bool, l4: usize, proto: u8, src: Addr, dst: Addr) -> Self {
        Self {
            l4,
            src,
            dst,
            sport: 0,
            dport: 0,
            v6,
            proto,
            tcp_flags: 0,
            later_fragment: false,
            ip_options: false,
            hop_limit: 0,
            pad: [0; 6],
        }
    }

    pub fn kind(&self) -> Kind {
        Kind {
            v6: self.v6,
            proto: self.proto,
        }
    }

    pub fn key(&self) -> FlowKey {
        FlowKey::new(self.src, self.dst, self.sport, self.dport, self.proto)
    }

    pub fn has_tcp_flag(&self, flag: u8) -> bool {
        self.proto == PROTO_TCP && self.tcp_flags & flag != 0
    }

    /// A TCP SYN without ACK: the only packet that opens a connection.
    pub fn is_bare_syn(&self) -> bool {
        self.proto == PROTO_TCP && self.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN
    }

    fn checksum_offset(&self) -> usize {
        if self.proto == PROTO_TCP {
            self.l4 + TCP_CHECKSUM
        } else {
            self.l4 + UDP_CHECKSUM
        }
    }

    /// UDP over IPv4 may carry no checksum (0), which must stay 0; a
    /// computed 0 is sent as 0xffff.
    fn l4_flags(&self) -> u64 {
        if self.proto == PROTO_UDP {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        }
    }
}

/// `None` for anything but TCP and UDP over IPv4 or IPv6 without extension
/// headers (other than a fragment header), and for later fragments whose
/// first was not seen: such packets pass untouched. A first fragment's
/// ports are kept for the fragments after it.
// Its own frame: each header read takes a stack slot, which would
// otherwise sit in the caller's frame at the top of every call chain.
#[inline(never)]
pub fn parse<C: Frame>(ctx: &C) -> Option<Packet> {
    let ethertype = u16::from_be(ctx.load::<u16>(12)?);
    match ethertype {
        ETH_P_IP => parse_v4(ctx),
        ETH_P_IPV6 => parse_v6(ctx),
        _ => None,
    }
}

fn parse_v4<C: Frame>(ctx: &C) -> Option<Packet> {
    let version_ihl = ctx.load::<u8>(ETH_HLEN)?;
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || header_len < 20 {
        return None;
    }
    let fragment = u16::from_be(ctx.load::<u16>(ETH_HLEN + IPV4_FRAG_OFF)?);
    let proto = ctx.load::<u8>(ETH_HLEN + IPV4_PROTOCOL)?;
    let src = Addr::from_v4_word(ctx.load::<u32>(ETH_HLEN + IPV4_SADDR)?);
    let dst = Addr::from_v4_word(ctx.load::<u32>(ETH_HLEN + IPV4_DADDR)?);
    let hop_limit = ctx.load::<u8>(ETH_HLEN + IPV4_TTL)?;
    let l4 = ETH_HLEN + header_len;
    let whole = fragment & (IPV4_OFFSET_MASK | IPV4_MORE_FRAGMENTS) == 0;
    if !whole && !C::FINISHES {
        // Fragments are tc's alone (see `frame`): a datagram's pieces are
        // then matched up in one place.
        return None;
    }
    let packet = if whole {
        transport(ctx, false, l4, proto, src, dst)?
    } else {
        let id = u32::from(ctx.load::<u16>(ETH_HLEN + IPV4_ID)?);
        if fragment & IPV4_OFFSET_MASK != 0 {
            later_fragment(false, l4, proto, src, dst, id)?
        } else {
            let first = transport(ctx, false, l4, proto, src, dst)?;
            fragment::remember_first(&first, id);
            first
        }
    };
    Some(Packet {
        ip_options: header_len != 20,
        hop_limit,
        ..packet
    })
}

fn parse_v6<C: Frame>(ctx: &C) -> Option<Packet> {
    let next = ctx.load::<u8>(ETH_HLEN + IPV6_NEXTHDR)?;
    let hop_limit = ctx.load::<u8>(ETH_HLEN + IPV6_HOP_LIMIT)?;
    let src = Addr {
        words: ctx.load::<[u32; 4]>(ETH_HLEN + IPV6_SADDR)?,
    };
    let dst = Addr {
        words: ctx.load::<[u32; 4]>(ETH_HLEN + IPV6_DADDR)?,
    };
    let l4 = ETH_HLEN + IPV6_HLEN;
    if next == NEXTHDR_FRAGMENT && !C::FINISHES {
        return None;
    }
    let packet = if next == NEXTHDR_FRAGMENT {
        let header = l4;
        let offset_flags = u16::from_be(ctx.load::<u16>(header + FRAG_HDR_OFF)?);
        let id = ctx.load::<u32>(header + FRAG_HDR_ID)?;
        let proto = ctx.load::<u8>(header)?;
        if offset_flags >> 3 != 0 {
            later_fragment(true, header + 8, proto, src, dst, id)?
        } else {
            let first = transport(ctx, true, header + 8, proto, src, dst)?;
            if offset_flags & IPV6_MORE_FRAGMENTS != 0 {
                fragment::remember_first(&first, id);
            }
            first
        }
    } else {
        transport(ctx, true, l4, next, src, dst)?
    };
    Some(Packet {
        hop_limit,
        ..packet
    })
}

/// A fragment after the first, with the ports its first fragment had.
#[expect(
    clippy::inline_always,
    reason = "a BPF call passes five arguments at most and this takes six: it must be inlined"
)]
#[inline(always)]
fn later_fragment(v6: bool, l4: usize, proto: u8, src: Addr, dst: Addr, id: u32) -> Option<Packet> {
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    let key = FragmentKey::new(src, dst, id, proto);
    let mut ports = FragmentPorts::default();
    if !fragment::ports_of_later(&key, &mut ports) {
        return None;
    }
    Some(Packet {
        sport: ports.sport,
        dport: ports.dport,
        later_fragment: true,
        ..Packet::addressed(v6, l4, proto, src, dst)
    })
}

#[expect(
    clippy::inline_always,
    reason = "a BPF call passes five arguments at most and this takes six: it must be inlined"
)]
#[inline(always)]
fn transport<C: Frame>(
    ctx: &C,
    v6: bool,
    l4: usize,
    proto: u8,
    src: Addr,
    dst: Addr,
) -> Option<Packet> {
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    let tcp_flags = if proto == PROTO_TCP {
        ctx.load::<u8>(l4 + TCP_FLAGS)?
    } else {
        0
    };
    Some(Packet {
        sport: ctx.load::<u16>(l4 + L4_SPORT)?,
        dport: ctx.load::<u16>(l4 + L4_DPORT)?,
        tcp_flags,
        ..Packet::addressed(v6, l4, proto, src, dst)
    })
}

/// Which end of the packet a rewrite changes.
#[derive(Clone, Copy)]
pub enum End {
    Source,
    Destination,
}

/// Rewrites one end's address and port, updating the IPv4 header checksum
/// and the TCP/UDP checksum incrementally: a packet that arrived with a bad
/// checksum leaves with one too, for the receiver to drop. A later fragment
/// has only addresses: the checksum covering them is in the first
/// fragment, which had the same rewrite.
pub fn rewrite<C: Frame>(ctx: &C, packet: &Packet, end: End, addr: &Addr, port: u16) -> Option<()> {
    let (old_addr, old_port, port_offset) = match end {
        End::Source => (&packet.src, packet.sport, packet.l4 + L4_SPORT),
        End::Destination => (&packet.dst, packet.dport, packet.l4 + L4_DPORT),
    };
    let checksum = packet.checksum_offset();
    let l4_flags = packet.l4_flags();
    if packet.v6 {
        let offset = match end {
            End::Source => ETH_HLEN + IPV6_SADDR,
            End::Destination => ETH_HLEN + IPV6_DADDR,
        };
        if !packet.later_fragment {
            let mut old = old_addr.words;
            let mut new = addr.words;
            // SAFETY: both buffers are 16-byte stack arrays.
            let diff = unsafe { bpf_csum_diff(old.as_mut_ptr(), 16, new.as_mut_ptr(), 16, 0) };
            if diff < 0 {
                return None;
            }
            ctx.l4_csum_replace(
                checksum,
                0,
                diff as u64,
                u64::from(BPF_F_PSEUDO_HDR) | l4_flags,
            )?;
        }
        ctx.store(offset, &addr.words)?;
    } else {
        let offset = match end {
            End::Source => ETH_HLEN + IPV4_SADDR,
            End::Destination => ETH_HLEN + IPV4_DADDR,
        };
        let (old, new) = (u64::from(old_addr.v4_word()), u64::from(addr.v4_word()));
        if !packet.later_fragment {
            ctx.l4_csum_replace(
                checksum,
                old,
                new,
                u64::from(BPF_F_PSEUDO_HDR) | l4_flags | CSUM_FIELD_4,
            )?;
        }
        ctx.l3_csum_replace(ETH_HLEN + IPV4_CHECKSUM, old, new, CSUM_FIELD_4)?;
        ctx.store(offset, &addr.v4_word())?;
    }
    if old_port != port && !packet.later_fragment {
        ctx.l4_csum_replace(
            checksum,
            u64::from(old_port),
            u64::from(port),
            l4_flags | CSUM_FIELD_2,
        )?;
        ctx.store(port_offset, &port)?;
    }
    Some(())
}

/// Takes one off the TTL or hop limit, as a router forwarding the packet
/// does (the caller has checked it is above 1). IPv4's header checksum
/// covers the TTL, in one 16-bit word with the protocol.
pub fn decrement_hop_limit<C: Frame>(ctx: &C, packet: &Packet) -> Option<()> {
    let hop_limit = packet.hop_limit - 1;
    if packet.v6 {
        return ctx.store(ETH_HLEN + IPV6_HOP_LIMIT, &hop_limit);
    }
    let old = u16::from_be_bytes([packet.hop_limit, packet.proto]).to_be();
    let new = u16::from_be_bytes([hop_limit, packet.proto]).to_be();
    ctx.l3_csum_replace(
        ETH_HLEN + IPV4_CHECKSUM,
        u64::from(old),
        u64::from(new),
        CSUM_FIELD_2,
    )?;
    ctx.store(ETH_HLEN + IPV4_TTL, &hop_limit)
}
