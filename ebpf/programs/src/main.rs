//! Entry points only. Each hook is a thin wrapper around the logic in
//! [`sock`], and every one of them fails open: when a lookup fails the socket
//! call proceeds untouched, because a broken proxy must never break traffic
//! that is not addressed to a service.
#![no_std]
#![no_main]
#![expect(
    clippy::needless_pass_by_value,
    reason = "aya's entry-point macros fix each hook's signature: the context comes by value"
)]
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys and values go to aya's `impl Borrow` lookups by reference: by value each \
              call copies 40 to 56 bytes into the frame, and the per-packet call chain then \
              passes the verifier's 512-byte stack limit"
)]
#![expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    reason = "the kernel hands 16- and 8-bit fields in u32 context words and bounds helper \
              results, and checksum folding truncates on purpose; a checked conversion adds \
              branches the verifier must then follow"
)]

mod fragment;
mod frame;
mod icmp_error;
mod maps;
mod nat;
mod packet;
mod progress;
mod reject;
mod route;
mod select;
mod service_cidr;
mod snat;
mod sock;
mod sock_state;
mod source_range;
mod stats;

use aya_ebpf::{
    macros::{cgroup_sock, cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, SockContext, TcContext, XdpContext},
};
use sock::Errors;

// Each forward hook twice: as it is, and `_compat` for kernels before 5.18
// (no `bpf_set_retval`), which the loader attaches there instead.

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    sock::forward4(&ctx, sock::Call::Connect, Errors::SetRetval)
}

#[cgroup_sock_addr(connect4)]
pub fn connect4_compat(ctx: SockAddrContext) -> i32 {
    sock::forward4(&ctx, sock::Call::Connect, Errors::Eperm)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    sock::forward6(&ctx, sock::Call::Connect, Errors::SetRetval)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6_compat(ctx: SockAddrContext) -> i32 {
    sock::forward6(&ctx, sock::Call::Connect, Errors::Eperm)
}

/// Unconnected UDP: each datagram addressed to a VIP is translated, to the
/// socket's earlier backend for that VIP while it lasts.
#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::forward4(&ctx, sock::Call::Send, Errors::SetRetval)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4_compat(ctx: SockAddrContext) -> i32 {
    sock::forward4(&ctx, sock::Call::Send, Errors::Eperm)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    sock::forward6(&ctx, sock::Call::Send, Errors::SetRetval)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6_compat(ctx: SockAddrContext) -> i32 {
    sock::forward6(&ctx, sock::Call::Send, Errors::Eperm)
}

/// Replies from a backend appear to come from the VIP.
#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse4(&ctx)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    sock::reverse6(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    sock::reverse4(&ctx)
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    sock::reverse6(&ctx)
}

/// A socket closes: what the hooks kept for it outside its own storage goes.
#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    sock_state::forget(&ctx);
    1
}

/// Packets arriving on a node device: NodePort, LoadBalancer IP and
/// externalIP connections from outside, and replies to NATed sources.
#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    nat::ingress(&ctx)
}

/// The same path as `tc_ingress`, one implementation (see `frame`), at the
/// driver before the stack builds an skb, on devices whose driver has
/// native XDP; what it cannot finish it passes on to `tc_ingress`.
#[xdp]
pub fn xdp_ingress(ctx: XdpContext) -> u32 {
    nat::ingress(&ctx) as u32
}

/// Packets leaving a node device: replies of local backends.
#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    nat::egress(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL-compatible so every helper the kernel offers is usable.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
