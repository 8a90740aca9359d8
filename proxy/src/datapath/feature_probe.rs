//! Asks the running kernel for what [`Feature`] lists, with aya's probes
//! (each loads a two-instruction program or creates a one-entry map, then
//! drops it) and, for tcx, a read-only query of the loopback device's tcx
//! hook. Nothing is attached and nothing is left behind.

use std::sync::OnceLock;

use aya::{
    maps::MapType,
    programs::{ProgramType, SchedClassifier, TcAttachType},
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
};
use tracing::warn;

use crate::datapath::kernel_features::{Availability, Feature, FeatureStatus, KernelFeatures};

/// Probes once per process; later calls return the same answers.
pub fn kernel_features() -> &'static KernelFeatures {
    static FEATURES: OnceLock<KernelFeatures> = OnceLock::new();
    FEATURES.get_or_init(|| KernelFeatures::new(release(), probe))
}

fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |r| r.trim().to_owned())
}

fn probe(feature: Feature) -> Availability {
    let answer = match feature {
        Feature::CgroupSockAddr => is_program_supported(ProgramType::CgroupSockAddr),
        Feature::SchedCls => is_program_supported(ProgramType::SchedClassifier),
        Feature::BpfSetRetval => {
            is_helper_supported(ProgramType::CgroupSockAddr, BpfHelper::BPF_FUNC_set_retval)
        }
        Feature::FibLookup => {
            is_helper_supported(ProgramType::SchedClassifier, BpfHelper::BPF_FUNC_fib_lookup)
        }
        Feature::RedirectNeigh => is_helper_supported(
            ProgramType::SchedClassifier,
            BpfHelper::BPF_FUNC_redirect_neigh,
        ),
        Feature::LruHash => map(MapType::LruHash),
        Feature::LpmTrie => map(MapType::LpmTrie),
        Feature::PercpuArray => map(MapType::PerCpuArray),
        Feature::Tcx => tcx(),
        Feature::SockAddrStorage => is_helper_supported(
            ProgramType::CgroupSockAddr,
            BpfHelper::BPF_FUNC_sk_storage_get,
        ),
        Feature::NetnsCookie => Ok(netns_cookie()),
        // libbpf's test: this helper came in the same release (5.11) as
        // charging BPF memory to the memory cgroup, which cannot be asked
        // for directly.
        Feature::MemcgAccounting => is_helper_supported(
            ProgramType::SocketFilter,
            BpfHelper::BPF_FUNC_ktime_get_coarse_ns,
        ),
        // The XDP program reads and writes the frame directly and calls
        // nothing newer than its hook; the device map (5.4) and XDP links
        // (5.9) are what it needs, and no kernel has one without the other
        // that the agent runs on (5.10 at the least, for socket storage).
        Feature::XdpDeviceMap => map(MapType::DevMapHash),
        Feature::SockDestroy => return Availability::NotProbed,
    };
    match answer {
        Ok(true) => Availability::Available,
        Ok(false) => Availability::Missing,
        Err(error) => Availability::Unknown(error.to_string()),
    }
}

fn map(map_type: MapType) -> Result<bool, aya::programs::ProgramError> {
    is_map_supported(map_type).map_err(aya::programs::ProgramError::from)
}

/// `getsockopt(SO_NETNS_COOKIE)` on a fresh socket: ENOPROTOOPT before 5.14.
fn netns_cookie() -> bool {
    std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .and_then(|socket| crate::node::netns_source::netns_cookie(&socket))
        .is_ok()
}

/// A kernel without tcx rejects the tcx attach type in `BPF_PROG_QUERY`
/// (EINVAL); one with tcx lists the programs on `lo` (usually none).
fn tcx() -> Result<bool, aya::programs::ProgramError> {
    match SchedClassifier::query_tcx("lo", TcAttachType::Ingress) {
        Ok(_) => Ok(true),
        Err(aya::programs::ProgramError::SyscallError(error))
            if error.io_error.raw_os_error() == Some(libc::EINVAL) =>
        {
            Ok(false)
        }
        Err(error) => Err(error),
    }
}

/// One warning per feature the kernel lacks (the agent calls this once, at
/// load; `switchyard services` shows the table instead).
pub fn log_missing(features: &KernelFeatures) {
    for status in &features.features {
        let FeatureStatus {
            feature,
            availability,
            degraded,
            ..
        } = status;
        match availability {
            Availability::Missing => warn!(
                feature = feature.name(),
                since = feature.since(),
                used_for = feature.used_for(),
                without_it = degraded.as_deref().unwrap_or_default(),
                "kernel feature missing"
            ),
            Availability::Unknown(error) => warn!(
                feature = feature.name(),
                %error,
                "kernel feature probe failed; assuming it is there"
            ),
            Availability::Available | Availability::NotProbed => {}
        }
    }
}
