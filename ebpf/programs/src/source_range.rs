//! `loadBalancerSourceRanges`: whether a source may use a frontend, for
//! packets from outside (`nat`) and the node's own sockets (`sock`) alike,
//! as kube-proxy's firewall chain sees every source.

use aya_ebpf::maps::lpm_trie::Key;
use switchyard_abi::{Addr, SOURCE_RANGE_FRONTEND_BITS, ServiceKey, SourceRange};

use crate::maps::SOURCE_RANGES;

pub fn allows(frontend: &ServiceKey, src: &Addr) -> bool {
    let range = SourceRange {
        addr: frontend.addr,
        port: frontend.port,
        proto: frontend.proto,
        pad: 0,
        src: *src,
    };
    SOURCE_RANGES
        .get(Key::new(SOURCE_RANGE_FRONTEND_BITS + 128, range))
        .is_some()
}
