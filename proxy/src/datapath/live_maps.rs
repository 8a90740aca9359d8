//! Point lookups in the pinned maps, for `switchyard explain`: the same
//! entries the kernel programs read, looked up the way they look them up.

use std::path::Path;

use aya::maps::{Array, HashMap, LpmTrie, MapData, lpm_trie::Key};
use switchyard_abi::{
    AFFINITY_MAP, Addr, AffinityKey, AffinityValue, BACKEND_LOCAL, BACKENDS_MAP, Backend,
    CLUSTER_CIDRS_MAP, CLUSTER_IPS_MAP, CONNTRACK_MAP, Flow, FlowKey, MAGLEV_MAP, MaglevKey,
    NETNS_SOURCES_MAP, NODE_CONFIG_MAP, NODE_MAP, NODE_SNAT_IPV4, NODE_SNAT_IPV6, NetnsSource,
    NodeConfig, SERVICE_CIDRS_MAP, SERVICE_NAMES_MAP, SERVICES_MAP, SOURCE_RANGE_FRONTEND_BITS,
    SOURCE_RANGES_MAP, ServiceKey, ServiceName, ServiceValue, SourceRange,
};

use super::{
    DatapathError, feature_probe,
    flow_table::monotonic_now_ns,
    kernel_features::Feature,
    pinned::{open_pinned, port_name},
};
use crate::{explain::Lookups, model::ServicePortName};

pub struct LiveMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
    names: HashMap<MapData, ServiceKey, ServiceName>,
    cluster_ips: HashMap<MapData, Addr, u8>,
    service_cidrs: LpmTrie<MapData, Addr, u8>,
    cluster_cidrs: LpmTrie<MapData, Addr, u8>,
    source_ranges: LpmTrie<MapData, SourceRange, u8>,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    maglev: HashMap<MapData, MaglevKey, u32>,
    conntrack: HashMap<MapData, FlowKey, Flow>,
    namespaces: HashMap<MapData, u64, NetnsSource>,
    node: Array<MapData, Addr>,
    node_config: Array<MapData, NodeConfig>,
}

impl LiveMaps {
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        Ok(Self {
            services: open_pinned(pin_dir, SERVICES_MAP)?,
            backends: open_pinned(pin_dir, BACKENDS_MAP)?,
            names: open_pinned(pin_dir, SERVICE_NAMES_MAP)?,
            cluster_ips: open_pinned(pin_dir, CLUSTER_IPS_MAP)?,
            service_cidrs: open_pinned(pin_dir, SERVICE_CIDRS_MAP)?,
            cluster_cidrs: open_pinned(pin_dir, CLUSTER_CIDRS_MAP)?,
            source_ranges: open_pinned(pin_dir, SOURCE_RANGES_MAP)?,
            affinity: open_pinned(pin_dir, AFFINITY_MAP)?,
            maglev: open_pinned(pin_dir, MAGLEV_MAP)?,
            conntrack: open_pinned(pin_dir, CONNTRACK_MAP)?,
            namespaces: open_pinned(pin_dir, NETNS_SOURCES_MAP)?,
            node: open_pinned(pin_dir, NODE_MAP)?,
            node_config: open_pinned(pin_dir, NODE_CONFIG_MAP)?,
        })
    }
}

/// A longest-prefix lookup of a whole address.
fn in_trie(trie: &LpmTrie<MapData, Addr, u8>, addr: &Addr) -> bool {
    trie.get(&Key::new(128, *addr), 0).is_ok()
}

impl Lookups for LiveMaps {
    fn service(&self, key: &ServiceKey) -> Option<ServiceValue> {
        self.services.get(key, 0).ok()
    }

    fn backend(&self, id: u32) -> Option<Backend> {
        self.backends.get(&id, 0).ok()
    }

    fn maglev(&self, key: &MaglevKey) -> Option<u32> {
        self.maglev.get(key, 0).ok()
    }

    fn name(&self, frontend: &ServiceKey) -> Option<ServicePortName> {
        self.names
            .get(frontend, 0)
            .ok()
            .map(|name| port_name(&name))
    }

    fn is_cluster_ip(&self, addr: &Addr) -> bool {
        self.cluster_ips.get(addr, 0).is_ok()
    }

    fn in_service_cidr(&self, addr: &Addr) -> bool {
        in_trie(&self.service_cidrs, addr)
    }

    fn in_cluster_cidr(&self, addr: &Addr) -> bool {
        in_trie(&self.cluster_cidrs, addr)
    }

    fn source_range_allows(&self, frontend: &ServiceKey, src: &Addr) -> bool {
        let range = SourceRange {
            addr: frontend.addr,
            port: frontend.port,
            proto: frontend.proto,
            pad: 0,
            src: *src,
        };
        self.source_ranges
            .get(&Key::new(SOURCE_RANGE_FRONTEND_BITS + 128, range), 0)
            .is_ok()
    }

    fn affinity(&self, key: &AffinityKey) -> Option<AffinityValue> {
        self.affinity.get(key, 0).ok()
    }

    fn flow(&self, key: &FlowKey) -> Option<Flow> {
        self.conntrack.get(key, 0).ok()
    }

    fn namespace_of(&self, src: &Addr) -> Option<u64> {
        self.namespaces
            .iter()
            .filter_map(Result::ok)
            .find(|(_, sources)| sources.v4 == *src || sources.v6 == *src)
            .map(|(cookie, _)| cookie)
    }

    fn on_this_node(&self, src: &Addr) -> bool {
        [false, true]
            .into_iter()
            .any(|v6| self.snat_address(v6) == Some(*src))
            || self
                .backends
                .iter()
                .filter_map(Result::ok)
                .any(|(_, backend)| backend.flags & BACKEND_LOCAL != 0 && backend.addr == *src)
    }

    fn node_config(&self) -> Option<NodeConfig> {
        self.node_config.get(&0, 0).ok()
    }

    fn snat_address(&self, v6: bool) -> Option<Addr> {
        let index = if v6 { NODE_SNAT_IPV6 } else { NODE_SNAT_IPV4 };
        self.node
            .get(&index, 0)
            .ok()
            .filter(|addr| *addr != Addr::default())
    }

    fn now_ns(&self) -> u64 {
        monotonic_now_ns()
    }

    fn socket_errno(&self) -> bool {
        feature_probe::kernel_features().available(Feature::BpfSetRetval)
    }
}
