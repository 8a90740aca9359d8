//! Socket-level translation: a VIP becomes a backend once, at connect() or
//! sendmsg(), and the backend becomes the VIP again in recvmsg() and
//! getpeername(), keyed by socket cookie.
//!
//! Context fields are read and written with volatile word accesses: the
//! verifier only accepts 4-byte accesses to `user_ip6[i]`, and LLVM would
//! otherwise merge neighbouring words into one 8-byte load, which the
//! verifier rejects with "invalid bpf_context access".

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    EbpfContext,
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use switchyard_abi::{Addr, Backend, ServiceKey, SockRevNatKey, SockRevNatValue};

use crate::{
    maps::SOCK_REVNAT,
    select::{Selection, select},
};

/// Let the socket call proceed.
const PROCEED: i32 = 1;
/// Fail the socket call (with the errno set by `bpf_set_retval`).
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;

pub fn forward4(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands us a valid context for this run.
    let (vip, port, proto) = unsafe {
        (
            Addr::from_v4_word(read_volatile(addr_of!((*sa).user_ip4))),
            read_volatile(addr_of!((*sa).user_port)) as u16,
            read_volatile(addr_of!((*sa).protocol)) as u8,
        )
    };
    match select(&ServiceKey::new(vip, port, proto, 0), client(ctx)) {
        Selection::NotAService => PROCEED,
        Selection::NoBackends => refuse(),
        // An IPv4 socket cannot reach an IPv6 backend; the agent never
        // programs one, so this only guards against hand-edited maps.
        Selection::Backend(backend, _) if !backend.addr.is_v4() => PROCEED,
        Selection::Backend(backend, _) => {
            remember(ctx, &backend, vip, port);
            // SAFETY: as above; user_ip4 and user_port are writable here.
            unsafe {
                write_volatile(addr_of_mut!((*sa).user_ip4), backend.addr.v4_word());
                write_volatile(addr_of_mut!((*sa).user_port), u32::from(backend.port));
            }
            PROCEED
        }
    }
}

pub fn forward6(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands us a valid context for this run.
    let (vip, port, proto) = unsafe {
        (
            read_ip6(sa),
            read_volatile(addr_of!((*sa).user_port)) as u16,
            read_volatile(addr_of!((*sa).protocol)) as u8,
        )
    };
    match select(&ServiceKey::new(vip, port, proto, 0), client(ctx)) {
        Selection::NotAService => PROCEED,
        Selection::NoBackends => refuse(),
        Selection::Backend(backend, _) => {
            remember(ctx, &backend, vip, port);
            // SAFETY: as above. An IPv4 backend is written IPv4-mapped,
            // which a dual-stack IPv6 socket reaches over IPv4.
            unsafe {
                write_ip6(sa, &backend.addr);
                write_volatile(addr_of_mut!((*sa).user_port), u32::from(backend.port));
            }
            PROCEED
        }
    }
}

pub fn reverse4(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands us a valid context for this run.
    let (peer, port) = unsafe {
        (
            Addr::from_v4_word(read_volatile(addr_of!((*sa).user_ip4))),
            read_volatile(addr_of!((*sa).user_port)) as u16,
        )
    };
    if let Some(vip) = recall(ctx, peer, port)
        && vip.addr.is_v4()
    {
        // SAFETY: user_ip4 and user_port are writable in recvmsg4/getpeername4.
        unsafe {
            write_volatile(addr_of_mut!((*sa).user_ip4), vip.addr.v4_word());
            write_volatile(addr_of_mut!((*sa).user_port), u32::from(vip.port));
        }
    }
    PROCEED
}

pub fn reverse6(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands us a valid context for this run.
    let (peer, port) = unsafe {
        (
            read_ip6(sa),
            read_volatile(addr_of!((*sa).user_port)) as u16,
        )
    };
    if let Some(vip) = recall(ctx, peer, port) {
        // SAFETY: user_ip6 and user_port are writable in recvmsg6/getpeername6.
        unsafe {
            write_ip6(sa, &vip.addr);
            write_volatile(addr_of_mut!((*sa).user_port), u32::from(vip.port));
        }
    }
    PROCEED
}

/// The caller's identity for session affinity: its network namespace.
fn client(ctx: &SockAddrContext) -> u64 {
    // SAFETY: the context pointer is valid for this run.
    unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }
}

/// kube-proxy REJECTs traffic to a service without endpoints; the closest
/// socket-level equivalent is failing connect()/sendmsg() with ECONNREFUSED.
fn refuse() -> i32 {
    // SAFETY: a helper taking an errno. Kernels before 5.18 lack it and
    // reject the program at load; there a 0 return gives EPERM instead.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REJECT
}

/// Record the translation so replies and getpeername() show the VIP. A full
/// LRU map evicts an idle socket's entry; losing it never drops traffic.
fn remember(ctx: &SockAddrContext, backend: &Backend, vip: Addr, port: u16) {
    // SAFETY: the context pointer is valid for this run.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockRevNatKey::new(cookie, backend.addr, backend.port);
    let _ignored_when_full = SOCK_REVNAT.insert(key, SockRevNatValue::new(vip, port), 0);
}

fn recall(ctx: &SockAddrContext, peer: Addr, port: u16) -> Option<SockRevNatValue> {
    // SAFETY: the context pointer is valid for this run; map values are
    // plain integers copied out before the program returns.
    unsafe {
        let cookie = bpf_get_socket_cookie(ctx.as_ptr());
        SOCK_REVNAT
            .get(SockRevNatKey::new(cookie, peer, port))
            .copied()
    }
}

/// # Safety
/// `sa` must be the context pointer of the running program.
unsafe fn read_ip6(sa: *mut bpf_sock_addr) -> Addr {
    // SAFETY: in-bounds word reads of the context.
    unsafe {
        Addr {
            words: [
                read_volatile(addr_of!((*sa).user_ip6[0])),
                read_volatile(addr_of!((*sa).user_ip6[1])),
                read_volatile(addr_of!((*sa).user_ip6[2])),
                read_volatile(addr_of!((*sa).user_ip6[3])),
            ],
        }
    }
}

/// # Safety
/// `sa` must be the context pointer of a program allowed to write `user_ip6`.
unsafe fn write_ip6(sa: *mut bpf_sock_addr, addr: &Addr) {
    // SAFETY: in-bounds word writes of the context.
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip6[0]), addr.words[0]);
        write_volatile(addr_of_mut!((*sa).user_ip6[1]), addr.words[1]);
        write_volatile(addr_of_mut!((*sa).user_ip6[2]), addr.words[2]);
        write_volatile(addr_of_mut!((*sa).user_ip6[3]), addr.words[3]);
    }
}
