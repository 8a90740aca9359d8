//! Every map the programs use, declared once. Names and sizes come from
//! `switchyard-abi`; the `#[map]` attribute needs a literal name, so the
//! agent checks at load time that each ABI name exists in this object.

use core::{cell::UnsafeCell, ptr::null_mut};

use aya_ebpf::{
    bindings::{
        BPF_F_NO_PREALLOC, BPF_SK_STORAGE_GET_F_CREATE, bpf_map_def,
        bpf_map_type::BPF_MAP_TYPE_SK_STORAGE,
    },
    helpers::bpf_sk_storage_get,
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    programs::SockAddrContext,
};
use switchyard_abi::{
    AFFINITY_MAX_ENTRIES, Addr, AffinityKey, AffinityValue, BACKEND_STATS_SERIES,
    BACKENDS_MAX_ENTRIES, Backend, BackendCounts, CLUSTER_CIDRS_MAX_ENTRIES,
    CLUSTER_IPS_MAX_ENTRIES, CONNTRACK_MAX_ENTRIES, COUNTER_FIRST_OWN, COUNTERS_LEN,
    FRAGMENTS_MAX_ENTRIES, Flow, FlowKey, FragmentKey, FragmentPorts, LOCAL_DEVICES_MAX_ENTRIES,
    MAGLEV_MAX_ENTRIES, MaglevKey, NETNS_SOURCES_MAX_ENTRIES, NODE_ENTRIES, NetnsSource,
    NodeConfig, SERVICE_CIDRS_MAX_ENTRIES, SERVICE_STATS_SERIES, SERVICES_MAX_ENTRIES,
    SOURCE_RANGES_MAX_ENTRIES, ServiceCounts, ServiceKey, ServiceName, ServiceValue, SockPeer,
    SockState, SourceRange, UDP_PEERS_MAX_ENTRIES, XDP_DEVICES_MAX_ENTRIES,
};

#[map(name = "SY_SERVICES_V2")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::pinned(SERVICES_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "SY_BACKENDS_V1")]
pub static BACKENDS: HashMap<u32, Backend> =
    HashMap::pinned(BACKENDS_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Socket-local storage. aya-ebpf has no legacy definition of this map
/// type, and the kernel creates one only with BTF for its key and value,
/// which it refuses in this object's (Rust enums come out as unions with a
/// discriminant member). So the agent creates and pins the map itself with
/// a BTF of its own before loading (`datapath::sock_storage`), and this
/// definition, pinned by name, only names it.
#[map(name = "SY_SOCK_STATE_V1")]
pub static SOCK_STATE: SockStorageDef = SockStorageDef::new();

#[repr(transparent)]
pub struct SockStorageDef(UnsafeCell<bpf_map_def>);

// SAFETY: the definition is only read, by the loader; programs pass its
// address to helpers.
unsafe impl Sync for SockStorageDef {}

impl SockStorageDef {
    const fn new() -> Self {
        Self(UnsafeCell::new(bpf_map_def {
            type_: BPF_MAP_TYPE_SK_STORAGE,
            key_size: size_of::<u32>() as u32,
            value_size: size_of::<SockState>() as u32,
            max_entries: 0,
            map_flags: BPF_F_NO_PREALLOC,
            id: 0,
            // libbpf's and aya's LIBBPF_PIN_BY_NAME.
            pinning: 1,
        }))
    }

    /// This socket's state, created zeroed if `create` and it has none.
    pub fn get(&self, ctx: &SockAddrContext, create: bool) -> Option<*mut SockState> {
        let flags = if create {
            u64::from(BPF_SK_STORAGE_GET_F_CREATE)
        } else {
            0
        };
        // SAFETY: the context is valid for this run and `sk` is its socket;
        // the helper returns null or a pointer to this socket's value.
        let state = unsafe {
            let sk = (*ctx.sock_addr).__bindgen_anon_1.sk;
            bpf_sk_storage_get(self.0.get().cast(), sk.cast(), null_mut(), flags)
        };
        (!state.is_null()).then_some(state.cast())
    }
}

#[map(name = "SY_UDP_PEERS_V1")]
pub static UDP_PEERS: HashMap<u64, SockPeer> = HashMap::pinned(UDP_PEERS_MAX_ENTRIES, 0);

#[map(name = "SY_AFFINITY_V1")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(AFFINITY_MAX_ENTRIES, 0);

/// Maglev frontends' lookup tables: bucket -> the frontend's slot.
#[map(name = "SY_MAGLEV_V1")]
pub static MAGLEV: HashMap<MaglevKey, u32> = HashMap::pinned(MAGLEV_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "SY_CT_V2")]
pub static CONNTRACK: LruHashMap<FlowKey, Flow> = LruHashMap::pinned(CONNTRACK_MAX_ENTRIES, 0);

#[map(name = "SY_FRAGMENTS_V1")]
pub static FRAGMENTS: LruHashMap<FragmentKey, FragmentPorts> =
    LruHashMap::pinned(FRAGMENTS_MAX_ENTRIES, 0);

#[map(name = "SY_NODE_V1")]
pub static NODE: Array<Addr> = Array::pinned(NODE_ENTRIES, 0);

#[map(name = "SY_NODE_CFG_V1")]
pub static NODE_CONFIG: Array<NodeConfig> = Array::pinned(1, 0);

#[map(name = "SY_CLUSTER_IPS_V1")]
pub static CLUSTER_IPS: HashMap<Addr, u8> =
    HashMap::pinned(CLUSTER_IPS_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "SY_NETNS_SRC_V1")]
pub static NETNS_SOURCES: HashMap<u64, NetnsSource> =
    HashMap::pinned(NETNS_SOURCES_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "SY_SERVICE_CIDRS_V1")]
pub static SERVICE_CIDRS: LpmTrie<Addr, u8> =
    LpmTrie::pinned(SERVICE_CIDRS_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "SY_CLUSTER_CIDRS_V1")]
pub static CLUSTER_CIDRS: LpmTrie<Addr, u8> =
    LpmTrie::pinned(CLUSTER_CIDRS_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "SY_LOCAL_DEVS_V1")]
pub static LOCAL_DEVICES: HashMap<u32, u8> = HashMap::pinned(LOCAL_DEVICES_MAX_ENTRIES, 0);

#[map(name = "SY_XDP_DEVS_V1")]
pub static XDP_DEVICES: DevMapHash = DevMapHash::pinned(XDP_DEVICES_MAX_ENTRIES, 0);

// The kernel requires LPM tries to be created without preallocation.
#[map(name = "SY_SRC_RANGES_V1")]
pub static SOURCE_RANGES: LpmTrie<SourceRange, u8> =
    LpmTrie::pinned(SOURCE_RANGES_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "SY_COUNTERS_V1")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTERS_LEN, 0);

// Fixed sizes: per-CPU arrays are allocated whole, and flags only lower
// the caps the agent hands entries out within.
#[map(name = "SY_SVC_STATS_V1")]
pub static SERVICE_STATS: PerCpuArray<ServiceCounts> =
    PerCpuArray::pinned(SERVICE_STATS_SERIES + COUNTER_FIRST_OWN, 0);

#[map(name = "SY_BE_STATS_V1")]
pub static BACKEND_STATS: PerCpuArray<BackendCounts> =
    PerCpuArray::pinned(BACKEND_STATS_SERIES + COUNTER_FIRST_OWN, 0);

/// Written by the agent, read by the CLI; no program reads it.
#[map(name = "SY_SVC_NAMES_V1")]
pub static SERVICE_NAMES: HashMap<ServiceKey, ServiceName> =
    HashMap::pinned(SERVICES_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// The route of the packet in hand (see `route`): in a frame of its own it
/// would sit on the deepest call chain; private to the object, unpinned.
#[map]
pub static ROUTE_SCRATCH: PerCpuArray<crate::route::Route> = PerCpuArray::with_max_entries(1, 0);

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
