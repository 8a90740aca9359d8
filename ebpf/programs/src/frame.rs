//! The one thing the per-packet path needs of its hook: a frame to read and
//! write, its devices, and how it hands a packet on. tc (`TcContext`, an
//! skb) and XDP (`XdpContext`, the driver's buffer, before any skb exists)
//! both provide it, so `nat` is one implementation run at either hook.
//!
//! XDP is the fast path and only that: what it cannot finish (a refusal to
//! build, an ICMP error, a fragment, a next hop without a neighbour entry
//! or out of another device) it passes on untouched, and the tc program on
//! the same device does it, from the same maps.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_MARK_MANGLED_0, xdp_action},
    programs::{TcContext, XdpContext},
};

use crate::{icmp_error, packet::Packet, reject};

/// `BPF_F_HDR_FIELD_MASK`: the low bits of a checksum helper's flags give
/// the replaced field's size (0: `to` is already a checksum difference).
const FIELD_SIZE_MASK: u64 = 0xf;

pub trait Frame: EbpfContext {
    /// "Not mine, carry on": tc's next action, XDP's pass to the stack.
    const NEXT: i32;
    const SHOT: i32;
    /// tc: the hook finishes whatever it starts (refusals, ICMP errors,
    /// fragments, any route). XDP leaves those to tc (see the module docs),
    /// and counts no pass, which tc then counts.
    const FINISHES: bool;

    /// `size_of::<T>()` bytes at `offset`.
    fn load<T>(&self, offset: usize) -> Option<T>;
    fn store<T>(&self, offset: usize, value: &T) -> Option<()>;
    /// Replaces `from` by `to` (2 or 4 bytes, as `flags` says) in the IP
    /// header checksum at `offset`.
    fn l3_csum_replace(&self, offset: usize, from: u64, to: u64, flags: u64) -> Option<()>;
    /// The same in a TCP or UDP checksum; with a size of 0, `to` is a
    /// checksum difference (`bpf_csum_diff`) to add.
    fn l4_csum_replace(&self, offset: usize, from: u64, to: u64, flags: u64) -> Option<()>;
    /// Bytes in the frame.
    fn frame_len(&self) -> u32;
    /// The device the frame arrived by (tc egress: leaves by).
    fn device(&self) -> u32;
    /// The device a frame arrived by, for detect-local.
    fn arrived_by(&self) -> u32;
    /// A refusal of `packet` (TCP RST or ICMP unreachable), where the hook
    /// can build one.
    fn refuse(&self, packet: &Packet) -> i32;
    /// A packet that parsed as no TCP or UDP: an ICMP error about a
    /// translated connection is translated too.
    fn not_transport(&self, at_ingress: bool) -> i32;
}

impl Frame for TcContext {
    const NEXT: i32 = switchyard_abi::TC_NEXT;
    const SHOT: i32 = switchyard_abi::TC_SHOT;
    const FINISHES: bool = true;

    fn load<T>(&self, offset: usize) -> Option<T> {
        TcContext::load(self, offset).ok()
    }

    fn store<T>(&self, offset: usize, value: &T) -> Option<()> {
        TcContext::store(self, offset, value, 0).ok()
    }

    fn l3_csum_replace(&self, offset: usize, from: u64, to: u64, flags: u64) -> Option<()> {
        TcContext::l3_csum_replace(self, offset, from, to, flags).ok()
    }

    fn l4_csum_replace(&self, offset: usize, from: u64, to: u64, flags: u64) -> Option<()> {
        TcContext::l4_csum_replace(self, offset, from, to, flags).ok()
    }

    fn frame_len(&self) -> u32 {
        self.len()
    }

    fn device(&self) -> u32 {
        // SAFETY: the context's skb is valid for the whole program.
        unsafe { (*self.skb.skb).ifindex }
    }

    fn arrived_by(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.skb.skb).ingress_ifindex }
    }

    fn refuse(&self, packet: &Packet) -> i32 {
        reject::reject(self, packet)
    }

    fn not_transport(&self, at_ingress: bool) -> i32 {
        icmp_error::translated(self, at_ingress).unwrap_or(Self::NEXT)
    }
}

impl Frame for XdpContext {
    const NEXT: i32 = xdp_action::XDP_PASS as i32;
    const SHOT: i32 = xdp_action::XDP_DROP as i32;
    const FINISHES: bool = false;

    // Direct packet access: no helper call and no copy through a stack
    // buffer per field, and no helper newer than the XDP hook itself
    // (`bpf_xdp_load_bytes` is 5.18). Headers are in the first buffer of a
    // frame; a field past it (a multi-buffer frame's fragments) is `None`,
    // and the frame goes on to tc.
    #[expect(
        clippy::inline_always,
        reason = "the verifier must see the bounds check and the access in one function"
    )]
    #[inline(always)]
    fn load<T>(&self, offset: usize) -> Option<T> {
        let field = packet_field::<T>(self, offset)?;
        // SAFETY: `packet_field` checked the whole field lies in the frame;
        // packet fields are not aligned.
        Some(unsafe { core::ptr::read_unaligned(field) })
    }

    #[expect(
        clippy::inline_always,
        reason = "the verifier must see the bounds check and the access in one function"
    )]
    #[inline(always)]
    fn store<T>(&self, offset: usize, value: &T) -> Option<()> {
        let field = packet_field::<T>(self, offset)?;
        // SAFETY: as in `load`; XDP frames are writable.
        unsafe { core::ptr::write_unaligned(field, core::ptr::read(value)) };
        Some(())
    }

    fn l3_csum_replace(&self, offset: usize, from: u64, to: u64, flags: u64) -> Option<()> {
        update_checksum(self, offset, from, to, flags & FIELD_SIZE_MASK)
    }

    fn l4_csum_replace(&self, offset: usize, from: u64, to: u64, flags: u64) -> Option<()> {
        let kept = FIELD_SIZE_MASK | u64::from(BPF_F_MARK_MANGLED_0);
        update_checksum(self, offset, from, to, flags & kept)
    }

    fn frame_len(&self) -> u32 {
        (self.data_end() - self.data()) as u32
    }

    fn device(&self) -> u32 {
        self.ingress_ifindex() as u32
    }

    fn arrived_by(&self) -> u32 {
        self.ingress_ifindex() as u32
    }

    fn refuse(&self, _packet: &Packet) -> i32 {
        Self::NEXT
    }

    fn not_transport(&self, _at_ingress: bool) -> i32 {
        Self::NEXT
    }
}

/// The furthest a header field the per-packet path touches can start:
/// Ethernet, IPv6 with a fragment header, then TCP's checksum. The bound
/// lets the verifier prove `data + offset` stays a packet pointer.
const MAX_FIELD_OFFSET: usize = 255;

/// A pointer to `size_of::<T>()` bytes at `offset` in the frame, when all
/// of them are in its first buffer.
#[expect(
    clippy::inline_always,
    reason = "the verifier must see the bounds check and the access in one function"
)]
#[inline(always)]
fn packet_field<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    if offset > MAX_FIELD_OFFSET {
        return None;
    }
    let md = ctx.ctx;
    // Volatile, so the compiler reads the bounds here rather than passing
    // them down from the program's start as 32-bit arguments: widening a
    // packet pointer is pointer arithmetic the verifier refuses.
    // SAFETY: `md` is the program's context, valid for the whole run.
    let (data, end) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*md).data) as usize,
            core::ptr::read_volatile(&raw const (*md).data_end) as usize,
        )
    };
    let field = data + offset;
    (field + size_of::<T>() <= end).then_some(field as *mut T)
}

/// Rewrites the checksum at `offset` in place (see [`csum_replace`]; the
/// field size in `flags`' low bits); with `BPF_F_MARK_MANGLED_0` in
/// `flags`, an IPv4 UDP datagram sent without a checksum keeps none and
/// a computed 0 is sent as 0xffff.
#[inline(never)]
fn update_checksum(ctx: &XdpContext, offset: usize, from: u64, to: u64, flags: u64) -> Option<()> {
    let udp_zero = flags & u64::from(BPF_F_MARK_MANGLED_0) != 0;
    let field = packet_field::<u16>(ctx, offset)?;
    // SAFETY: `packet_field` checked both bytes lie in the frame.
    let sum = unsafe { core::ptr::read_unaligned(field) };
    if udp_zero && sum == 0 {
        return Some(());
    }
    let mut new = csum_replace(sum, from, to, flags & FIELD_SIZE_MASK);
    if udp_zero && new == 0 {
        new = 0xffff;
    }
    // SAFETY: as above; XDP frames are writable.
    unsafe { core::ptr::write_unaligned(field, new) };
    Some(())
}

/// RFC 1624's incremental update, `HC' = ~(~HC + ~m + m')`, on checksum
/// words as they sit in the packet (one's complement sums do not depend on
/// byte order). `size` 2 or 4: `from` and `to` are that field's old and new
/// bytes read natively; 0: `to` is a 32-bit checksum difference to add.
pub fn csum_replace(sum: u16, from: u64, to: u64, size: u64) -> u16 {
    let mut total = u64::from(!sum);
    match size {
        2 => total += u64::from(!(from as u16)) + (to & 0xffff),
        4 => {
            total += u64::from(!(from as u16)) + u64::from(!((from >> 16) as u16));
            total += (to & 0xffff) + ((to >> 16) & 0xffff);
        }
        _ => total += to & 0xffff_ffff,
    }
    // At most 34 bits: three folds always reach 16.
    total = (total & 0xffff) + (total >> 16);
    total = (total & 0xffff) + (total >> 16);
    total = (total & 0xffff) + (total >> 16);
    !(total as u16)
}
