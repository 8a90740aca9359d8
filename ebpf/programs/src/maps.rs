//! Every map the programs use, declared once. Names and sizes come from
//! `switchyard-abi`; the `#[map]` attribute needs a literal name, so the
//! agent checks at load time that each ABI name exists in this object.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap},
};
use switchyard_abi::{
    AFFINITY_MAX_ENTRIES, AffinityKey, AffinityValue, BACKENDS_MAX_ENTRIES, Backend,
    SERVICES_MAX_ENTRIES, SOCK_REVNAT_MAX_ENTRIES, ServiceKey, ServiceValue, SockRevNatKey,
    SockRevNatValue,
};

#[map(name = "SY_SERVICES_V1")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(SERVICES_MAX_ENTRIES, 0);

#[map(name = "SY_BACKENDS_V1")]
pub static BACKENDS: HashMap<u32, Backend> = HashMap::pinned(BACKENDS_MAX_ENTRIES, 0);

#[map(name = "SY_SOCK_RNAT_V1")]
pub static SOCK_REVNAT: LruHashMap<SockRevNatKey, SockRevNatValue> =
    LruHashMap::pinned(SOCK_REVNAT_MAX_ENTRIES, 0);

#[map(name = "SY_AFFINITY_V1")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(AFFINITY_MAX_ENTRIES, 0);
