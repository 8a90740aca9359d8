//! Every map the programs use, declared once. Names and sizes come from
//! `switchyard-abi`; the `#[map]` attribute needs a literal name, so the
//! agent checks at load time that each ABI name exists in this object.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use switchyard_abi::{
    AFFINITY_MAX_ENTRIES, Addr, AffinityKey, AffinityValue, BACKENDS_MAX_ENTRIES, Backend,
    CLUSTER_CIDRS_MAX_ENTRIES, CONNTRACK_MAX_ENTRIES, COUNTERS_LEN, FRAGMENTS_MAX_ENTRIES, Flow,
    FlowKey, FragmentKey, FragmentPorts, NODE_ENTRIES, NodeConfig, SERVICES_MAX_ENTRIES,
    SOCK_REVNAT_MAX_ENTRIES, SOURCE_RANGES_MAX_ENTRIES, ServiceKey, ServiceValue, SockRevNatKey,
    SockRevNatValue, SourceRange,
};

#[map(name = "SY_SERVICES_V1")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::pinned(SERVICES_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "SY_BACKENDS_V1")]
pub static BACKENDS: HashMap<u32, Backend> =
    HashMap::pinned(BACKENDS_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "SY_SOCK_RNAT_V1")]
pub static SOCK_REVNAT: LruHashMap<SockRevNatKey, SockRevNatValue> =
    LruHashMap::pinned(SOCK_REVNAT_MAX_ENTRIES, 0);

#[map(name = "SY_AFFINITY_V1")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(AFFINITY_MAX_ENTRIES, 0);

#[map(name = "SY_CT_V1")]
pub static CONNTRACK: LruHashMap<FlowKey, Flow> = LruHashMap::pinned(CONNTRACK_MAX_ENTRIES, 0);

#[map(name = "SY_FRAGMENTS_V1")]
pub static FRAGMENTS: LruHashMap<FragmentKey, FragmentPorts> =
    LruHashMap::pinned(FRAGMENTS_MAX_ENTRIES, 0);

#[map(name = "SY_NODE_V1")]
pub static NODE: Array<Addr> = Array::pinned(NODE_ENTRIES, 0);

#[map(name = "SY_NODE_CFG_V1")]
pub static NODE_CONFIG: Array<NodeConfig> = Array::pinned(1, 0);

#[map(name = "SY_CLUSTER_CIDRS_V1")]
pub static CLUSTER_CIDRS: LpmTrie<Addr, u8> =
    LpmTrie::pinned(CLUSTER_CIDRS_MAX_ENTRIES, BPF_F_NO_PREALLOC);

// The kernel requires LPM tries to be created without preallocation.
#[map(name = "SY_SRC_RANGES_V1")]
pub static SOURCE_RANGES: LpmTrie<SourceRange, u8> =
    LpmTrie::pinned(SOURCE_RANGES_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "SY_COUNTERS_V1")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTERS_LEN, 0);

pub const REJECT_SCRATCH_LEN: usize = 128;

/// Where refusals are built (see `reject`); private to the object, unpinned.
#[map]
pub static REJECT_SCRATCH: PerCpuArray<[u8; REJECT_SCRATCH_LEN]> =
    PerCpuArray::with_max_entries(1, 0);

/// The node's budget for refusals (see `reject`); private, so a restarted
/// agent starts with a full one.
#[derive(Clone, Copy)]
pub struct RefusalBudget {
    pub refilled_ns: u64,
    pub tokens: u64,
}

#[map]
pub static REFUSAL_BUDGET: Array<RefusalBudget> = Array::with_max_entries(1, 0);

/// Adds one to a per-CPU counter: no other CPU writes this slot, so a
/// plain increment is exact.
pub fn count(index: u32) {
    if let Some(counter) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: the pointer is this CPU's slot, valid for this run.
        unsafe { *counter += 1 };
    }
}
