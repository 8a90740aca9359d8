//! Socket-level translation: a VIP becomes a backend once, at connect() or
//! sendmsg(), and the backend becomes the VIP again in recvmsg() and
//! getpeername(), from the socket's own state (`sock_state`).
//!
//! Context fields are read and written with volatile word accesses: the
//! verifier only accepts 4-byte accesses to `user_ip6[i]`, and LLVM would
//! otherwise merge neighbouring words into one 8-byte load, which the
//! verifier rejects with "invalid bpf_context access".

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    EbpfContext,
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use switchyard_abi::{
    Addr, BACKEND_SOCKET_CONNECTIONS, Backend, FRONTEND_DROP_NO_LOCAL, FRONTEND_SOURCE_RANGES,
    SERVICE_DROPPED_NO_LOCAL, SERVICE_DROPPED_SOURCE_RANGE, SERVICE_REFUSED_NO_ENDPOINTS,
    SERVICE_SOCKET_CONNECTIONS, ServiceKey,
};

use crate::{
    maps::NETNS_SOURCES,
    select::{Selection, select},
    service_cidr::{AddressUse, address_use},
    sock_state, source_range, stats,
};

/// Let the socket call proceed.
const PROCEED: i32 = 1;
/// Fail the socket call: with the errno set by `bpf_set_retval`, else
/// EPERM.
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;
const ETIMEDOUT: i32 = 110;
/// 127.0.0.1 and ::1 as the context holds them (network order words).
const LOOPBACK_V4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
const LOOPBACK_V6: Addr = Addr {
    words: [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])],
};

/// How a forward hook fails a socket call. The kernel checks the helpers a
/// program calls at load, so each forward hook is built twice and the
/// loader attaches the one the kernel can load (see `main.rs`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Errors {
    /// Linux 5.18+: `bpf_set_retval` names the errno kube-proxy's rule
    /// would end in.
    SetRetval,
    /// Older kernels, where a hook can only fail a call with EPERM: a
    /// refused connect() is sent to port 0 on loopback instead, where the
    /// kernel itself refuses it (ECONNREFUSED for TCP; for connected UDP
    /// the ICMP error fails the next call, as kube-proxy's REJECT does);
    /// an unconnected send and a drop fail with EPERM.
    Eperm,
}

/// Which socket call a forward hook runs in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// connect(): a new connection picks its backend afresh.
    Connect,
    /// sendmsg() with an address (unconnected UDP): the socket's earlier
    /// choice for the same frontend holds while its backend is still there,
    /// as kube-proxy's conntrack keeps one 5-tuple on one backend.
    Send,
}

enum Route {
    Proceed,
    /// No endpoints, or a ClusterIP's port nobody serves: kube-proxy
    /// REJECTs.
    Refuse,
    /// `internalTrafficPolicy: Local` with endpoints elsewhere only, or an
    /// unallocated address of the service CIDRs: kube-proxy drops. A socket call cannot lose its packets, so it fails
    /// the way a dropped connection ends: ETIMEDOUT (at once), never the
    /// refusal that means "no endpoints anywhere".
    Drop,
    To(Backend),
}

// Inlined into each program, so `errors` is a constant there and the
// `Eperm` build holds no call to a helper its kernel lacks.
#[expect(
    clippy::inline_always,
    reason = "inlined so `errors` is a constant and the Eperm build holds no call to bpf_set_retval"
)]
#[inline(always)]
pub fn forward4(ctx: &SockAddrContext, call: Call, errors: Errors) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands us a valid context for this run.
    let (vip, port, proto) = unsafe {
        (
            Addr::from_v4_word(read_volatile(addr_of!((*sa).user_ip4))),
            read_volatile(addr_of!((*sa).user_port)) as u16,
            read_volatile(addr_of!((*sa).protocol)) as u8,
        )
    };
    match route(ctx, &ServiceKey::new(vip, port, proto, 0), call) {
        Route::Proceed => PROCEED,
        Route::Refuse if errors == Errors::Eperm && call == Call::Connect => {
            // SAFETY: as below.
            unsafe {
                write_volatile(addr_of_mut!((*sa).user_ip4), LOOPBACK_V4);
                write_volatile(addr_of_mut!((*sa).user_port), 0);
            }
            PROCEED
        }
        Route::Refuse => fail(errors, ECONNREFUSED),
        Route::Drop => fail(errors, ETIMEDOUT),
        // An IPv4 socket cannot reach an IPv6 backend; the agent never
        // programs one, so this only guards against hand-edited maps.
        Route::To(backend) if !backend.addr.is_v4() => PROCEED,
        Route::To(backend) => {
            // SAFETY: as above; user_ip4 and user_port are writable here.
            unsafe {
                write_volatile(addr_of_mut!((*sa).user_ip4), backend.addr.v4_word());
                write_volatile(addr_of_mut!((*sa).user_port), u32::from(backend.port));
            }
            PROCEED
        }
    }
}

#[expect(
    clippy::inline_always,
    reason = "inlined so `errors` is a constant and the Eperm build holds no call to bpf_set_retval"
)]
#[inline(always)]
pub fn forward6(ctx: &SockAddrContext, call: Call, errors: Errors) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands us a valid context for this run.
    let (vip, port, proto) = unsafe {
        (
            read_ip6(sa),
            read_volatile(addr_of!((*sa).user_port)) as u16,
            read_volatile(addr_of!((*sa).protocol)) as u8,
        )
    };
    match route(ctx, &ServiceKey::new(vip, port, proto, 0), call) {
        Route::Proceed => PROCEED,
        Route::Refuse if errors == Errors::Eperm && call == Call::Connect => {
            // An IPv4 Service from a dual-stack socket: IPv4 loopback.
            let loopback = if vip.is_v4() {
                Addr::from_v4_word(LOOPBACK_V4)
            } else {
                LOOPBACK_V6
            };
            // SAFETY: as below.
            unsafe {
                write_ip6(sa, &loopback);
                write_volatile(addr_of_mut!((*sa).user_port), 0);
            }
            PROCEED
        }
        Route::Refuse => fail(errors, ECONNREFUSED),
        Route::Drop => fail(errors, ETIMEDOUT),
        Route::To(backend) => {
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

/// Where the socket call to `vip:port` goes, remembered in the socket's
/// state for the reverse hooks (and the next datagram).
fn route(ctx: &SockAddrContext, frontend: &ServiceKey, call: Call) -> Route {
    if call == Call::Send
        && let Some(backend) = sock_state::sticky(ctx, frontend)
    {
        return Route::To(backend);
    }
    match select(frontend, client(ctx), 0) {
        Selection::NotAService => match address_use(&frontend.addr) {
            AddressUse::Other => Route::Proceed,
            AddressUse::ClusterIp => Route::Refuse,
            AddressUse::Unallocated => Route::Drop,
        },
        Selection::NoBackends(flags, counter) if flags & FRONTEND_DROP_NO_LOCAL != 0 => {
            stats::service(counter, SERVICE_DROPPED_NO_LOCAL, 1);
            Route::Drop
        }
        Selection::NoBackends(flags, counter) => match admission(ctx, frontend, flags) {
            Admission::Allowed => {
                stats::service(counter, SERVICE_REFUSED_NO_ENDPOINTS, 1);
                Route::Refuse
            }
            Admission::Denied => {
                stats::service(counter, SERVICE_DROPPED_SOURCE_RANGE, 1);
                Route::Drop
            }
            Admission::Unknown => Route::Proceed,
        },
        Selection::Backend(chosen) => match admission(ctx, frontend, chosen.flags) {
            Admission::Allowed => {
                stats::service(chosen.service_counter, SERVICE_SOCKET_CONNECTIONS, 1);
                stats::backend(chosen.backend_counter, BACKEND_SOCKET_CONNECTIONS, 1);
                let selected = sock_state::Selected {
                    backend: chosen.backend,
                    id: chosen.id,
                    slot: chosen.slot,
                };
                sock_state::remember(ctx, call, frontend, &selected);
                Route::To(chosen.backend)
            }
            // kube-proxy's firewall chain drops a source outside the
            // ranges before any DNAT.
            Admission::Denied => {
                stats::service(chosen.service_counter, SERVICE_DROPPED_SOURCE_RANGE, 1);
                Route::Drop
            }
            // The socket's namespace is not known (yet): left untranslated
            // for the load balancer itself to judge, never let past the
            // ranges here.
            Admission::Unknown => Route::Proceed,
        },
    }
}

/// Whether `loadBalancerSourceRanges` let this socket use `frontend`.
enum Admission {
    Allowed,
    Denied,
    Unknown,
}

/// The ranges are checked against the address the socket's namespace
/// sends from (`SY_NETNS_SRC_V1`, which the agent keeps): at connect()
/// an unbound socket has no source yet, and a pod is one namespace.
fn admission(ctx: &SockAddrContext, frontend: &ServiceKey, flags: u16) -> Admission {
    if flags & FRONTEND_SOURCE_RANGES == 0 {
        return Admission::Allowed;
    }
    // SAFETY: map values are plain integers, valid for this run.
    let Some(sources) = (unsafe { NETNS_SOURCES.get(&client(ctx)) }) else {
        return Admission::Unknown;
    };
    let src = if frontend.addr.is_v4() {
        sources.v4
    } else {
        sources.v6
    };
    if src == Addr::default() {
        Admission::Unknown
    } else if source_range::allows(frontend, &src) {
        Admission::Allowed
    } else {
        Admission::Denied
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
    if let Some((vip, vip_port)) = sock_state::frontend_of(ctx, &peer, port)
        && vip.is_v4()
    {
        // SAFETY: user_ip4 and user_port are writable in recvmsg4/getpeername4.
        unsafe {
            write_volatile(addr_of_mut!((*sa).user_ip4), vip.v4_word());
            write_volatile(addr_of_mut!((*sa).user_port), u32::from(vip_port));
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
    if let Some((vip, vip_port)) = sock_state::frontend_of(ctx, &peer, port) {
        // SAFETY: user_ip6 and user_port are writable in recvmsg6/getpeername6.
        unsafe {
            write_ip6(sa, &vip);
            write_volatile(addr_of_mut!((*sa).user_port), u32::from(vip_port));
        }
    }
    PROCEED
}

/// The caller's identity for session affinity: its network namespace.
fn client(ctx: &SockAddrContext) -> u64 {
    // SAFETY: the context pointer is valid for this run.
    unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }
}

/// Fails the socket call with `errno` (kube-proxy REJECTs traffic to a
/// Service without endpoints: ECONNREFUSED is the socket-level equivalent),
/// or with EPERM where the kernel has no `bpf_set_retval`.
#[expect(
    clippy::inline_always,
    reason = "inlined so the Eperm build holds no call to bpf_set_retval"
)]
#[inline(always)]
fn fail(errors: Errors, errno: i32) -> i32 {
    if errors == Errors::SetRetval {
        // SAFETY: a helper taking an errno. Kernels before 5.18 lack it and
        // refuse a program calling it at load: the `Eperm` build is loaded
        // there, in which this call is compiled out.
        unsafe { bpf_set_retval(-errno) };
    }
    REJECT
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
