//! Fragments of translated datagrams. Only a datagram's first fragment
//! carries the TCP or UDP header, so the later ones have no ports to find
//! their connection by. The first fragment's ports are kept here under the
//! datagram's identity (addresses, protocol and IP identification, which
//! every fragment of it repeats), and each later fragment is translated as
//! the connection those ports name, addresses only. Cilium keeps its
//! `ipv4_frag_datagrams` map the same way.

use crate::Addr;

pub const FRAGMENTS_MAP: &str = "SY_FRAGMENTS_V1";
/// Datagrams in flight in pieces at once. LRU: a datagram whose fragments
/// straggle for longer than newer ones take to fill this loses its later
/// fragments, as the kernel's own reassembly gives up on old ones
/// (`ipfrag_time`, 30 s).
pub const FRAGMENTS_MAX_ENTRIES: u32 = 8_192;

/// One datagram, as each of its fragments carries it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    pub src: Addr,
    pub dst: Addr,
    /// IPv4's 16-bit identification, or the IPv6 fragment header's 32-bit
    /// one, as read (network byte order).
    pub id: u32,
    /// The IP protocol, widened to a word so the key has no padding: three
    /// bytes of it were zeroed by a `memset` call the verifier refused.
    pub proto: u32,
}

impl FragmentKey {
    pub const fn new(src: Addr, dst: Addr, id: u32, proto: u8) -> Self {
        Self {
            src,
            dst,
            id,
            proto: proto as u32,
        }
    }
}

/// The ports of a datagram's first fragment, network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragmentPorts {
    pub sport: u16,
    pub dport: u16,
}

const _: () = assert!(core::mem::size_of::<FragmentKey>() == 40);
const _: () = assert!(core::mem::size_of::<FragmentPorts>() == 4);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], integers only, explicit padding.
    unsafe impl aya::Pod for super::FragmentKey {}
    unsafe impl aya::Pod for super::FragmentPorts {}
}
