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
    helpers::{bpf_xdp_load_bytes, bpf_xdp_store_bytes},
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

    // Reads and writes in frames of their own: inlined, each call's buffer
    // took a slot of its own in the caller's frame, and those callers sit
    // on the deepest call chain (the verifier's 512 bytes along it).
    #[inline(never)]
    fn load<T>(&self, offset: usize) -> Option<T> {
        let mut value = core::mem::MaybeUninit::<T>::uninit();
        // SAFETY: the helper writes `size_of::<T>()` bytes into `value`, or
        // fails and writes nothing we read.
        let result = unsafe {
            bpf_xdp_load_bytes(
                self.ctx.cast(),
                offset as u32,
                value.as_mut_ptr().cast(),
                size_of::<T>() as u32,
            )
        };
        // SAFETY: filled when the helper returned 0.
        (result == 0).then(|| unsafe { value.assume_init() })
    }

    #[inline(never)]
    fn store<T>(&self, offset: usize, value: &T) -> Option<()> {
        // SAFETY: the helper reads `size_of::<T>()` bytes of `value`.
        let result = unsafe {
            bpf_xdp_store_bytes(
                self.ctx.cast(),
                offset as u32,
                core::ptr::from_ref(value).cast_mut().cast(),
                size_of::<T>() as u32,
            )
        };
        (result == 0).then_some(())
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

/// Rewrites the checksum at `offset` in place (see [`csum_replace`]; the
/// field size in `flags`' low bits); with `BPF_F_MARK_MANGLED_0` in
/// `flags`, an IPv4 UDP datagram sent without a checksum keeps none and
/// a computed 0 is sent as 0xffff. Its own frame, reading and writing with
/// the helpers directly: on the deepest call chain (the verifier's 512
/// bytes along it), one frame below `rewrite` is all there is room for.
#[inline(never)]
fn update_checksum(ctx: &XdpContext, offset: usize, from: u64, to: u64, flags: u64) -> Option<()> {
    let udp_zero = flags & u64::from(BPF_F_MARK_MANGLED_0) != 0;
    let mut sum: u16 = 0;
    // SAFETY: the helper writes two bytes into `sum`, or fails.
    let read =
        unsafe { bpf_xdp_load_bytes(ctx.ctx.cast(), offset as u32, (&raw mut sum).cast(), 2) };
    if read != 0 {
        return None;
    }
    if udp_zero && sum == 0 {
        return Some(());
    }
    let mut new = csum_replace(sum, from, to, flags & FIELD_SIZE_MASK);
    if udp_zero && new == 0 {
        new = 0xffff;
    }
    // SAFETY: the helper reads two bytes of `new`.
    let written =
        unsafe { bpf_xdp_store_bytes(ctx.ctx.cast(), offset as u32, (&raw mut new).cast(), 2) };
    (written == 0).then_some(())
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
