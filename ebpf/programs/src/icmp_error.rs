//! ICMP errors about translated connections, translated back as netfilter
//! does for its NAT (`nf_nat_icmp_reply_translation`): the quoted packet
//! becomes the one its receiver sent, and the error goes to that receiver.
//! Path-MTU discovery through NodePorts and LoadBalancer IPs depends on it:
//! a "fragmentation needed" or "packet too big" about a NATed packet is
//! addressed to this node, and means nothing to it.
//!
//! - About a packet towards a backend (the quote is what this node sent:
//!   source NATed to the node, or the client's, destination the backend):
//!   the quote is restored to client -> frontend, the error goes to the
//!   client, and comes from the frontend when the backend itself sent it.
//! - About a reply towards the client (the quote is frontend -> client):
//!   the quote is restored to backend -> node (or client), the error goes
//!   to the backend, and comes from the node when the client sent it.
//!
//! The error is cut to the quote's IP header and 8 bytes (all RFC 792
//! promises, and all a receiver matches its socket by) and rebuilt in the
//! per-CPU scratch buffer with fresh checksums: quoted headers change in
//! both addresses and ports, which incremental updates would need a dozen
//! helper calls for.

use aya_ebpf::{
    helpers::{bpf_skb_change_tail, bpf_skb_load_bytes},
    programs::TcContext,
};
use switchyard_abi::{
    Addr, COUNTER_ICMP_TRANSLATED, FLOW_FORWARD, FLOW_REPLY, Flow, FlowKey, PROTO_TCP, PROTO_UDP,
};

use crate::{
    maps::{CONNTRACK, count},
    packet::{self, ETH_HLEN},
    reject::{add_words, fold, scratch},
    route,
};

const IPPROTO_ICMP: u8 = 1;
/// IPv4 "more fragments" and fragment offset: a fragment of an error is
/// not one we can rebuild.
const FRAGMENT_BITS: u16 = packet::IPV4_OFFSET_MASK | packet::IPV4_MORE_FRAGMENTS;
const IPPROTO_ICMPV6: u8 = 58;
/// Ethernet, IP, ICMP header, quoted IP header, quoted ports (8 bytes).
const V4_LEN: usize = ETH_HLEN + 20 + 8 + 20 + 8;
const V6_LEN: usize = ETH_HLEN + 40 + 8 + 40 + 8;

/// Where the fields of a cut error sit in the scratch buffer, for the
/// family its length says. Every offset is a constant per instantiation,
/// so the verifier sees fixed accesses into the buffer.
struct Layout {
    v6: bool,
    /// An IP header without options, outer and quoted alike.
    ip_len: usize,
    /// Where the source address sits in an IP header; the destination
    /// follows it.
    addr_at: usize,
    addr_len: usize,
}

impl Layout {
    const fn of<const LEN: usize>() -> Self {
        if LEN == V6_LEN {
            Self {
                v6: true,
                ip_len: 40,
                addr_at: 8,
                addr_len: 16,
            }
        } else {
            Self {
                v6: false,
                ip_len: 20,
                addr_at: 12,
                addr_len: 4,
            }
        }
    }

    /// The ICMP header.
    const fn icmp(&self) -> usize {
        ETH_HLEN + self.ip_len
    }

    /// The quoted IP header.
    const fn inner(&self) -> usize {
        self.icmp() + 8
    }

    /// The quoted TCP/UDP ports.
    const fn ports(&self) -> usize {
        self.inner() + self.ip_len
    }

    /// The source address of the IP header at `header`.
    const fn src(&self, header: usize) -> usize {
        header + self.addr_at
    }

    /// The destination address of the IP header at `header`.
    const fn dst(&self, header: usize) -> usize {
        header + self.addr_at + self.addr_len
    }
}

/// The verdict for an ICMP error about a translated connection; `None`
/// for anything else, which goes on untouched. Errors about a connection
/// that kept its client are translated where its packets are: towards the
/// backend at ingress, before netfilter (which then finds the quote
/// RELATED to the connection it saw start), towards the client at egress,
/// after it. Those about NATed connections never cross netfilter: they are
/// translated at ingress and sent on by route.
#[expect(
    clippy::inline_always,
    reason = "a frame of its own would count against the 512-byte stack of the call chain"
)]
#[inline(always)]
pub fn translated(ctx: &TcContext, at_ingress: bool) -> Option<i32> {
    match u16::from_be(ctx.load::<u16>(12).ok()?) {
        0x0800 => translate::<V4_LEN>(ctx, at_ingress),
        0x86dd => translate::<V6_LEN>(ctx, at_ingress),
        _ => None,
    }
}

/// Whether the packet is an ICMP error worth looking into: destination
/// unreachable (fragmentation needed among them), time exceeded, parameter
/// problem, and for IPv6 packet too big; no IPv4 options, no fragments.
fn is_error(ctx: &TcContext, v6: bool) -> Option<bool> {
    if v6 {
        let kind = ctx.load::<u8>(ETH_HLEN + 40).ok()?;
        return Some(
            ctx.load::<u8>(ETH_HLEN + 6).ok()? == IPPROTO_ICMPV6 && (1..=4).contains(&kind),
        );
    }
    let fragment = u16::from_be(ctx.load::<u16>(ETH_HLEN + 6).ok()?);
    let kind = ctx.load::<u8>(ETH_HLEN + 20).ok()?;
    Some(
        ctx.load::<u8>(ETH_HLEN).ok()? == 0x45
            && fragment & FRAGMENT_BITS == 0
            && ctx.load::<u8>(ETH_HLEN + 9).ok()? == IPPROTO_ICMP
            && matches!(kind, 3 | 11 | 12),
    )
}

#[inline(never)]
fn translate<const LEN: usize>(ctx: &TcContext, at_ingress: bool) -> Option<i32> {
    // A constant per instantiation, so every offset below is one too and
    // the verifier sees fixed accesses into the buffer.
    let v6 = LEN == V6_LEN;
    if !is_error(ctx, v6)? || (ctx.len() as usize) < LEN {
        return None;
    }
    let buf = scratch::<LEN>()?;
    // SAFETY: `buf` has exactly LEN bytes; the helper bounds the read.
    if unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            0,
            buf.as_mut_ptr().cast(),
            LEN as u32,
        )
    } != 0
    {
        return None;
    }
    let flow = connection(ctx, buf)?;
    let towards_client_through_stack = flow.kind == FLOW_REPLY && flow.snat == 0;
    if towards_client_through_stack == at_ingress || !rewrite(buf, flow) {
        return None;
    }
    let snat = flow.snat != 0;
    finish(buf);
    // SAFETY: the context is this run's skb; the helper takes integers.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, LEN as u32, 0) } != 0
        || ctx.store(0, buf, 0).is_err()
    {
        return Some(switchyard_abi::TC_SHOT);
    }
    count(COUNTER_ICMP_TRANSLATED);
    if !snat {
        return Some(packet::NEXT);
    }
    Some(send_by_route(ctx, buf))
}

/// Writes the error's new addressing and the quote's (see the module
/// docs), and takes one off the hop limit of an error sent on by route;
/// false when it is not ours to send (its hop limit is spent).
#[inline(never)]
fn rewrite<const LEN: usize>(buf: &mut [u8; LEN], flow: &Flow) -> bool {
    let at = Layout::of::<LEN>();
    let v6 = at.v6;
    let ports = at.ports();
    let (outer_src_at, outer_dst_at) = (at.src(ETH_HLEN), at.dst(ETH_HLEN));
    let (inner_src_at, inner_dst_at) = (at.src(at.inner()), at.dst(at.inner()));
    let from_receiver = same_addr(buf, outer_src_at, inner_dst_at, v6);
    let snat = flow.snat != 0;
    if flow.kind == FLOW_REPLY {
        // The quote went towards the backend: make it client -> frontend,
        // addressed to the client (already so unless NATed).
        if from_receiver {
            write_addr(buf, outer_src_at, &flow.addr, v6);
        }
        if snat {
            write_addr(buf, outer_dst_at, &flow.snat_addr, v6);
            write_addr(buf, inner_src_at, &flow.snat_addr, v6);
            buf[ports..ports + 2].copy_from_slice(&flow.snat_port.to_ne_bytes());
        }
        write_addr(buf, inner_dst_at, &flow.addr, v6);
        buf[ports + 2..ports + 4].copy_from_slice(&flow.port.to_ne_bytes());
    } else if flow.kind == FLOW_FORWARD {
        // The quote went towards the client: make it what the backend
        // sent, addressed to the backend.
        if from_receiver && snat {
            write_addr(buf, outer_src_at, &flow.snat_addr, v6);
        }
        write_addr(buf, outer_dst_at, &flow.addr, v6);
        write_addr(buf, inner_src_at, &flow.addr, v6);
        buf[ports..ports + 2].copy_from_slice(&flow.port.to_ne_bytes());
        if snat {
            write_addr(buf, inner_dst_at, &flow.snat_addr, v6);
            buf[ports + 2..ports + 4].copy_from_slice(&flow.snat_port.to_ne_bytes());
        }
    } else {
        return false;
    }
    let hop_limit_at = if v6 { ETH_HLEN + 7 } else { ETH_HLEN + 8 };
    if snat {
        if buf[hop_limit_at] <= 1 {
            return false;
        }
        buf[hop_limit_at] -= 1;
    }
    true
}

/// The conntrack entry of the quoted packet's other direction, if the
/// quote is a plain TCP or UDP header of a connection we translated. Read
/// from the packet with the skb helpers, word by word: from the byte buffer
/// LLVM loads and spills every byte, a frame the call chain cannot afford.
#[inline(never)]
fn connection<const LEN: usize>(ctx: &TcContext, buf: &[u8; LEN]) -> Option<&'static Flow> {
    let at = Layout::of::<LEN>();
    let v6 = at.v6;
    let inner = at.inner();
    let ports = at.ports();
    let proto = if v6 { buf[inner + 6] } else { buf[inner + 9] };
    let plain = if v6 {
        buf[inner] >> 4 == 6
    } else {
        buf[inner] == 0x45
    };
    if !plain || (proto != PROTO_TCP && proto != PROTO_UDP) {
        return None;
    }
    let (src, dst) = if v6 {
        (
            Addr {
                words: ctx.load::<[u32; 4]>(at.src(inner)).ok()?,
            },
            Addr {
                words: ctx.load::<[u32; 4]>(at.dst(inner)).ok()?,
            },
        )
    } else {
        (
            Addr::from_v4_word(ctx.load::<u32>(at.src(inner)).ok()?),
            Addr::from_v4_word(ctx.load::<u32>(at.dst(inner)).ok()?),
        )
    };
    let sport = ctx.load::<u16>(ports).ok()?;
    let dport = ctx.load::<u16>(ports + 2).ok()?;
    // The quote's reverse is the key of the other direction's packets.
    let key = FlowKey::new(dst, src, dport, sport, proto);
    // SAFETY: map values are plain integers, valid for this run.
    unsafe { CONNTRACK.get(&key) }
}

/// Sends the rebuilt error by route to its new destination.
#[inline(never)]
fn send_by_route<const LEN: usize>(ctx: &TcContext, buf: &[u8; LEN]) -> i32 {
    let at = Layout::of::<LEN>();
    let v6 = at.v6;
    let src = read_addr(buf, at.src(ETH_HLEN), v6);
    let dst = read_addr(buf, at.dst(ETH_HLEN), v6);
    let proto = if v6 { IPPROTO_ICMPV6 } else { IPPROTO_ICMP };
    route::redirect_by_route(ctx, v6, proto, &src, &dst)
}

/// Whether the addresses at `a` and `b` are the same, word by word (a
/// slice comparison would need `memcmp`, which BPF does not have).
#[expect(
    clippy::inline_always,
    reason = "inlined, the offsets are constants and the bounds checks fold away"
)]
#[inline(always)]
fn same_addr(buf: &[u8], a: usize, b: usize, v6: bool) -> bool {
    let word = |at: usize| u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
    if v6 {
        word(a) == word(b)
            && word(a + 4) == word(b + 4)
            && word(a + 8) == word(b + 8)
            && word(a + 12) == word(b + 12)
    } else {
        word(a) == word(b)
    }
}

#[expect(
    clippy::inline_always,
    reason = "inlined, `at` is a constant and the bounds checks fold away"
)]
#[inline(always)]
fn read_addr(buf: &[u8], at: usize, v6: bool) -> Addr {
    let word = |i: usize| u32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    if v6 {
        Addr {
            words: [word(at), word(at + 4), word(at + 8), word(at + 12)],
        }
    } else {
        Addr::from_v4_word(word(at))
    }
}

#[expect(
    clippy::inline_always,
    reason = "inlined, `at` is a constant and the bounds checks fold away"
)]
#[inline(always)]
fn write_addr(buf: &mut [u8], at: usize, addr: &Addr, v6: bool) {
    if v6 {
        for (i, word) in addr.words.iter().enumerate() {
            buf[at + 4 * i..at + 4 * i + 4].copy_from_slice(&word.to_ne_bytes());
        }
    } else {
        buf[at..at + 4].copy_from_slice(&addr.v4_word().to_ne_bytes());
    }
}

/// Sets the cut error's lengths and recomputes its checksums: the outer
/// and quoted IPv4 headers', and the ICMP one (ICMPv6's over its
/// pseudo-header too). The quoted TCP/UDP checksum is left as it was: the
/// quote is cut short of the data it covers.
#[inline(never)]
fn finish<const LEN: usize>(buf: &mut [u8; LEN]) {
    let at = Layout::of::<LEN>();
    let v6 = at.v6;
    let icmp = at.icmp();
    let inner = at.inner();
    let icmp_len = (LEN - icmp) as u16;
    buf[icmp + 2] = 0;
    buf[icmp + 3] = 0;
    let icmp_sum = if v6 {
        buf[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&icmp_len.to_be_bytes());
        let pseudo = add_words(
            u32::from(IPPROTO_ICMPV6) + u32::from(icmp_len),
            &buf[ETH_HLEN + 8..ETH_HLEN + 40],
        );
        fold(add_words(pseudo, &buf[icmp..LEN]))
    } else {
        buf[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&((LEN - ETH_HLEN) as u16).to_be_bytes());
        for header in [ETH_HLEN, inner] {
            buf[header + 10] = 0;
            buf[header + 11] = 0;
            let sum = fold(add_words(0, &buf[header..header + 20]));
            buf[header + 10..header + 12].copy_from_slice(&sum.to_be_bytes());
        }
        fold(add_words(0, &buf[icmp..LEN]))
    };
    buf[icmp + 2..icmp + 4].copy_from_slice(&icmp_sum.to_be_bytes());
}
