//! Where a translated packet goes next: the route to its new destination,
//! looked up before the packet is rewritten so a hook that cannot take that
//! route (XDP: no neighbour entry yet, or out of another device) leaves the
//! packet untouched for tc. Sent straight out of the route's device with the
//! neighbour's address: the stack's forwarding would refuse a packet whose
//! source is now one of this node's own addresses.

use core::mem::{size_of, zeroed};

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, bpf_redir_neigh,
        xdp_action,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
};
use switchyard_abi::{
    Addr, COUNTER_PASS_NO_ROUTE, COUNTER_XDP_DEVICE, COUNTER_XDP_NO_NEIGHBOUR, COUNTER_XDP_SENT,
    COUNTER_XDP_STACK_ROUTE,
};

use crate::{
    frame::Frame,
    maps::{ROUTE_SCRATCH, XDP_DEVICES, count},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// The route's answer, `#[repr(C)]` with every byte written (the 6.1
/// verifier's rule on reading stack bytes, see `packet::Packet`).
#[repr(C)]
pub struct Route {
    /// Out of this device.
    pub ifindex: u32,
    /// `NoNeighbour`: the next hop, for the kernel to resolve.
    pub next_hop: Addr,
    /// `Neighbour`: the next hop's and the device's MAC addresses.
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub kind: RouteKind,
    pub v6: bool,
    pad: [u8; 6],
}

const _: () = assert!(size_of::<Route>() == 40, "no padding but `pad`");

#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Neighbour = 0,
    NoNeighbour = 1,
    /// No route, or one the stack must take (local, blackhole...).
    Stack = 2,
}

/// A packet's family and transport protocol, in one argument (by
/// reference: by value its two fields are two): a BPF call passes five at
/// most, and the route comes back through a pointer of its own.
#[derive(Clone, Copy)]
pub struct Kind {
    pub v6: bool,
    pub proto: u8,
}

/// The FIB's route from `src` to `dst` for a packet arriving by the
/// frame's device, in this CPU's scratch slot (valid until the next lookup
/// on this CPU, so for the rest of this program run).
#[inline(never)]
pub fn lookup<C: Frame>(
    ctx: &C,
    kind: &Kind,
    src: &Addr,
    dst: &Addr,
) -> Option<&'static mut Route> {
    let Kind { v6, proto } = *kind;
    // SAFETY: plain C structs of integers and unions of integers.
    let mut params: bpf_fib_lookup = unsafe { zeroed() };
    params.family = if v6 { AF_INET6 } else { AF_INET };
    params.l4_protocol = proto;
    params.ifindex = ctx.device();
    if v6 {
        params.__bindgen_anon_3.ipv6_src = src.words;
        params.__bindgen_anon_4.ipv6_dst = dst.words;
    } else {
        params.__bindgen_anon_3.ipv4_src = src.v4_word();
        params.__bindgen_anon_4.ipv4_dst = dst.v4_word();
    }
    // SAFETY: `params` is a live, correctly sized lookup struct.
    let result = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &raw mut params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    let kind = match result as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => RouteKind::Neighbour,
        BPF_FIB_LKUP_RET_NO_NEIGH => RouteKind::NoNeighbour,
        _ => RouteKind::Stack,
    };
    // SAFETY: the lookup left the next hop in `*_dst`.
    let next_hop = unsafe {
        if v6 {
            Addr {
                words: params.__bindgen_anon_4.ipv6_dst,
            }
        } else {
            Addr::from_v4_word(params.__bindgen_anon_4.ipv4_dst)
        }
    };
    let slot = ROUTE_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot, valid for the run and used by nothing else
    // while it lasts (a program runs to its end on one CPU).
    let route = unsafe { &mut *slot };
    *route = Route {
        ifindex: params.ifindex,
        next_hop,
        dmac: params.dmac,
        smac: params.smac,
        kind,
        v6,
        pad: [0; 6],
    };
    Some(route)
}

impl Route {
    /// Whether the hook can send by this route. XDP sends out of the device
    /// it arrived by (`XDP_TX`) or into a device of `XDP_DEVICES`: only
    /// there does a driver take XDP frames, and a frame it refused would
    /// be lost. What XDP leaves for tc is counted by why.
    pub fn usable_by<C: Frame>(&self, ctx: &C) -> bool {
        if C::FINISHES {
            return true;
        }
        let left_for_tc = match self.kind {
            RouteKind::Neighbour
                if self.ifindex == ctx.device()
                    || XDP_DEVICES.get_ifindex(self.ifindex).is_some() =>
            {
                return true;
            }
            RouteKind::Neighbour => COUNTER_XDP_DEVICE,
            RouteKind::NoNeighbour => COUNTER_XDP_NO_NEIGHBOUR,
            RouteKind::Stack => COUNTER_XDP_STACK_ROUTE,
        };
        count(left_for_tc);
        false
    }
}

/// Sends the rewritten packet by `route` (one [`Route::usable_by`] the
/// hook); with no route, up the stack as it is.
#[inline(never)]
pub fn send<C: Frame>(ctx: &C, route: &Route) -> i32 {
    match route.kind {
        RouteKind::Neighbour => {
            if ctx.store(0, &route.dmac).is_none() || ctx.store(6, &route.smac).is_none() {
                return C::NEXT;
            }
            if !C::FINISHES {
                count(COUNTER_XDP_SENT);
                if route.ifindex == ctx.device() {
                    return xdp_action::XDP_TX as i32;
                }
                let sent = XDP_DEVICES.redirect(route.ifindex, u64::from(xdp_action::XDP_DROP));
                return match sent {
                    Ok(action) | Err(action) => action as i32,
                };
            }
            // SAFETY: a helper taking integers.
            unsafe { bpf_redirect(route.ifindex, 0) as i32 }
        }
        // Never at XDP (see `Route::usable_by`), whose programs may not call
        // the helper at all: the constant drops the branch from its build.
        RouteKind::NoNeighbour if C::FINISHES => {
            // SAFETY: plain C struct of integers and a union of integers.
            let mut next_hop: bpf_redir_neigh = unsafe { zeroed() };
            next_hop.nh_family = u32::from(if route.v6 { AF_INET6 } else { AF_INET });
            // SAFETY: writing union fields of plain integers.
            unsafe {
                if route.v6 {
                    next_hop.__bindgen_anon_1.ipv6_nh = route.next_hop.words;
                } else {
                    next_hop.__bindgen_anon_1.ipv4_nh = route.next_hop.v4_word();
                }
                bpf_redirect_neigh(
                    route.ifindex,
                    &raw mut next_hop,
                    size_of::<bpf_redir_neigh>() as i32,
                    0,
                ) as i32
            }
        }
        RouteKind::NoNeighbour | RouteKind::Stack => {
            if C::FINISHES {
                count(COUNTER_PASS_NO_ROUTE);
            }
            C::NEXT
        }
    }
}

/// [`lookup`] and [`send`] at once, for tc, which can take every route.
pub fn redirect_by_route<C: Frame>(ctx: &C, v6: bool, proto: u8, src: &Addr, dst: &Addr) -> i32 {
    match lookup(ctx, &Kind { v6, proto }, src, dst) {
        Some(route) => send(ctx, route),
        None => C::NEXT,
    }
}
