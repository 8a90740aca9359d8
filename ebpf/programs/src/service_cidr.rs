//! kube-proxy's `cluster-ips-check`, for connections to no frontend: one to
//! an allocated ClusterIP on a port or protocol its Service does not serve
//! is refused, one to an address of the service CIDRs that no Service
//! holds is dropped. Without it both would be sent on towards the node's
//! default route and leave the cluster, to wait out a timeout there.

use aya_ebpf::maps::lpm_trie::Key;
use switchyard_abi::Addr;

use crate::maps::{CLUSTER_IPS, SERVICE_CIDRS};

pub enum AddressUse {
    /// Not a service address: none of ours to judge.
    Other,
    /// An allocated ClusterIP (kube-proxy REJECTs).
    ClusterIp,
    /// Inside a service CIDR, held by no Service (kube-proxy DROPs).
    Unallocated,
}

/// What `addr` is, for a connection that matched no frontend. Its own
/// frame: the LPM key stays off the callers' stacks, which the per-packet
/// path's verifier budget needs.
#[inline(never)]
pub fn address_use(addr: &Addr) -> AddressUse {
    // SAFETY: map values are plain integers, valid for this run.
    if unsafe { CLUSTER_IPS.get(addr) }.is_some() {
        return AddressUse::ClusterIp;
    }
    if SERVICE_CIDRS.get(Key::new(128, *addr)).is_some() {
        return AddressUse::Unallocated;
    }
    AddressUse::Other
}
