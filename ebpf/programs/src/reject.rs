//! Refusing a connection to a frontend without endpoints the way a host
//! without a listener would: a TCP RST, or an ICMP port unreachable for
//! UDP, built in place of the packet and sent back out of the device it
//! came in on. A silent drop would leave clients waiting out timeouts.

use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    helpers::{bpf_ktime_get_ns, bpf_redirect, bpf_skb_change_tail, bpf_skb_load_bytes},
    programs::TcContext,
};
use switchyard_abi::{
    COUNTER_DROP_REFUSAL_RATE, COUNTER_DROP_UNREJECTABLE, PROTO_TCP, REFUSAL_BURST,
    REFUSALS_PER_SECOND,
};

use crate::{
    maps::{REFUSAL_BUDGET, REJECT_SCRATCH, REJECT_SCRATCH_LEN, count},
    packet::{ETH_HLEN, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const TTL: u8 = 64;

const RST4_LEN: usize = ETH_HLEN + 20 + 20;
const RST6_LEN: usize = ETH_HLEN + 40 + 20;
/// An ICMP error quotes the offending IP header and 8 bytes after it.
const ICMP4_LEN: usize = ETH_HLEN + 20 + 8 + 28;
const ICMP6_LEN: usize = ETH_HLEN + 40 + 8 + 48;

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// Replaces the packet with its refusal and sends that back; one that
/// cannot be answered (IPv4 options) is dropped, and so is one past the
/// node's refusal budget. Only a bare TCP SYN or a UDP datagram gets here
/// (`nat::choose`), so a RST is never answered.
#[inline(never)]
pub fn reject(ctx: &TcContext, packet: &Packet) -> i32 {
    if !within_budget() {
        count(COUNTER_DROP_REFUSAL_RATE);
        return TC_ACT_SHOT;
    }
    let built = match (packet.proto, packet.v6) {
        (PROTO_TCP, false) => tcp_reset::<RST4_LEN>(ctx, packet),
        (PROTO_TCP, true) => tcp_reset::<RST6_LEN>(ctx, packet),
        (_, false) => port_unreachable::<ICMP4_LEN>(ctx, packet),
        (_, true) => port_unreachable::<ICMP6_LEN>(ctx, packet),
    };
    if built.is_none() {
        count(COUNTER_DROP_UNREJECTABLE);
        return TC_ACT_SHOT;
    }
    // SAFETY: the context is this run's skb; the helper takes integers.
    unsafe { bpf_redirect((*ctx.skb.skb).ifindex, 0) as i32 }
}

/// A token bucket for the whole node, as the kernel limits its own ICMP
/// errors (`icmp_msgs_per_sec`, `icmp_msgs_burst`): a flood of SYNs to a
/// Service without endpoints must not turn this node into a reflector.
/// CPUs update it without a lock; a race at worst lets a refusal more
/// through, which a budget can afford.
fn within_budget() -> bool {
    let Some(budget) = REFUSAL_BUDGET.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: a helper with no arguments; `budget` is valid for this run.
    unsafe {
        let now = bpf_ktime_get_ns();
        // A second refills any burst; capped so the product stays in u64
        // (a wider multiply is a library call BPF does not have).
        let elapsed = now
            .wrapping_sub((*budget).refilled_ns)
            .min(NANOS_PER_SECOND);
        let earned = elapsed * REFUSALS_PER_SECOND / NANOS_PER_SECOND;
        if earned > 0 {
            (*budget).tokens = ((*budget).tokens + earned).min(REFUSAL_BURST);
            (*budget).refilled_ns = now;
        }
        if (*budget).tokens == 0 {
            return false;
        }
        (*budget).tokens -= 1;
    }
    true
}

/// RFC 9293 3.10.7.1: answer an ACK with its acknowledgment number as our
/// sequence; anything else with an ACK of everything it occupied.
#[inline(never)]
fn tcp_reset<const LEN: usize>(ctx: &TcContext, packet: &Packet) -> Option<()> {
    if packet.ip_options {
        return None;
    }
    let seq = u32::from_be(ctx.load::<u32>(packet.l4 + 4).ok()?);
    let ack = u32::from_be(ctx.load::<u32>(packet.l4 + 8).ok()?);
    let header_len = u32::from(ctx.load::<u8>(packet.l4 + 12).ok()? >> 4) * 4;
    let ip_payload = if packet.v6 {
        u32::from(u16::from_be(ctx.load::<u16>(ETH_HLEN + 4).ok()?))
    } else {
        u32::from(u16::from_be(ctx.load::<u16>(ETH_HLEN + 2).ok()?)).saturating_sub(20)
    };
    let data = ip_payload.saturating_sub(header_len);
    let (our_seq, our_ack, flags) = if packet.tcp_flags & TCP_ACK != 0 {
        (ack, 0, TCP_RST)
    } else {
        let occupied = data
            + u32::from(packet.tcp_flags & TCP_SYN != 0)
            + u32::from(packet.tcp_flags & TCP_FIN != 0);
        (0, seq.wrapping_add(occupied), TCP_RST | TCP_ACK)
    };

    let out = scratch::<LEN>()?;
    let l4 = LEN - 20;
    ip_header(ctx, packet, out, PROTO_TCP, 20)?;
    out[l4..l4 + 2].copy_from_slice(&packet.dport.to_ne_bytes());
    out[l4 + 2..l4 + 4].copy_from_slice(&packet.sport.to_ne_bytes());
    out[l4 + 4..l4 + 8].copy_from_slice(&our_seq.to_be_bytes());
    out[l4 + 8..l4 + 12].copy_from_slice(&our_ack.to_be_bytes());
    out[l4 + 12] = 5 << 4;
    out[l4 + 13] = flags;
    let sum = pseudo_header_sum(out, packet.v6, PROTO_TCP, 20);
    let checksum = fold(add_words(sum, &out[l4..]));
    out[l4 + 16..l4 + 18].copy_from_slice(&checksum.to_be_bytes());
    replace_packet(ctx, out)
}

#[inline(never)]
fn port_unreachable<const LEN: usize>(ctx: &TcContext, packet: &Packet) -> Option<()> {
    if packet.ip_options {
        return None;
    }
    // A constant per instantiation: the verifier wants a fixed, non-zero
    // length for the load below.
    let quoted_len: usize = if LEN == ICMP6_LEN { 48 } else { 28 };
    let out = scratch::<LEN>()?;
    let icmp = LEN - quoted_len - 8;
    // The quote first: `ip_header` reads the original addresses from the
    // parsed packet, but the quote must come from the bytes themselves.
    let quote = out[icmp + 8..].as_mut_ptr();
    // SAFETY: `quote` has exactly `quoted_len` bytes of the buffer left.
    let loaded = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            ETH_HLEN as u32,
            quote.cast(),
            quoted_len as u32,
        )
    };
    if loaded != 0 {
        return None;
    }
    let (proto, kind, code) = if packet.v6 {
        (IPPROTO_ICMPV6, 1, 4)
    } else {
        (IPPROTO_ICMP, 3, 3)
    };
    ip_header(ctx, packet, out, proto, (8 + quoted_len) as u16)?;
    out[icmp] = kind;
    out[icmp + 1] = code;
    let sum = if packet.v6 {
        pseudo_header_sum(out, true, proto, (8 + quoted_len) as u16)
    } else {
        0
    };
    let checksum = fold(add_words(sum, &out[icmp..]));
    out[icmp + 2..icmp + 4].copy_from_slice(&checksum.to_be_bytes());
    replace_packet(ctx, out)
}

/// Ethernet and IP headers of the answer: MACs and addresses swapped.
fn ip_header(
    ctx: &TcContext,
    packet: &Packet,
    out: &mut [u8],
    proto: u8,
    payload_len: u16,
) -> Option<()> {
    let macs = ctx.load::<[u8; 12]>(0).ok()?;
    out[0..6].copy_from_slice(&macs[6..12]);
    out[6..12].copy_from_slice(&macs[0..6]);
    let ip = ETH_HLEN;
    if packet.v6 {
        out[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        out[ip] = 0x60;
        out[ip + 4..ip + 6].copy_from_slice(&payload_len.to_be_bytes());
        out[ip + 6] = proto;
        out[ip + 7] = TTL;
        for (i, word) in packet.dst.words.iter().enumerate() {
            out[ip + 8 + 4 * i..ip + 12 + 4 * i].copy_from_slice(&word.to_ne_bytes());
        }
        for (i, word) in packet.src.words.iter().enumerate() {
            out[ip + 24 + 4 * i..ip + 28 + 4 * i].copy_from_slice(&word.to_ne_bytes());
        }
    } else {
        out[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        out[ip] = 0x45;
        out[ip + 2..ip + 4].copy_from_slice(&(20 + payload_len).to_be_bytes());
        // Don't fragment, as Linux sends its own RSTs and ICMP errors.
        out[ip + 6] = 0x40;
        out[ip + 8] = TTL;
        out[ip + 9] = proto;
        out[ip + 12..ip + 16].copy_from_slice(&packet.dst.v4_word().to_ne_bytes());
        out[ip + 16..ip + 20].copy_from_slice(&packet.src.v4_word().to_ne_bytes());
        let checksum = fold(add_words(0, &out[ip..ip + 20]));
        out[ip + 10..ip + 12].copy_from_slice(&checksum.to_be_bytes());
    }
    Some(())
}

/// The TCP/UDP/ICMPv6 pseudo-header sum of the addresses already written
/// into `out`.
fn pseudo_header_sum(out: &[u8], v6: bool, proto: u8, len: u16) -> u32 {
    let addresses = if v6 {
        &out[ETH_HLEN + 8..ETH_HLEN + 40]
    } else {
        &out[ETH_HLEN + 12..ETH_HLEN + 20]
    };
    add_words(u32::from(proto) + u32::from(len), addresses)
}

/// The answer is built in a per-CPU buffer: the largest (ICMPv6, 110 bytes)
/// on the stack, next to the lookup state, would pass the 512-byte limit.
pub fn scratch<const LEN: usize>() -> Option<&'static mut [u8; LEN]> {
    const { assert!(LEN <= REJECT_SCRATCH_LEN) };
    let buffer = REJECT_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot, valid for the run and used by nothing else
    // while it lasts; LEN fits (asserted above). Zeroed because a previous
    // answer's bytes are still there.
    let out = unsafe { &mut *buffer.cast::<[u8; LEN]>() };
    out.fill(0);
    Some(out)
}

fn replace_packet<const LEN: usize>(ctx: &TcContext, out: &[u8; LEN]) -> Option<()> {
    // SAFETY: the context is this run's skb; the helper takes integers.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, LEN as u32, 0) } != 0 {
        return None;
    }
    ctx.store(0, out, 0).ok()
}

/// One's-complement sum of big-endian 16-bit words (`bytes` has even length).
#[expect(
    clippy::inline_always,
    reason = "a BPF-to-BPF call here would put the loop behind a call the verifier walks per caller"
)]
#[inline(always)]
pub fn add_words(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}

pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
