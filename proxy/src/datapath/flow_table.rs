//! The per-packet path's pinned maps as the agent uses them: conntrack
//! (read, garbage-collected, flushed), this node's NAT addresses, and the
//! kernel's counters.

use std::{collections::BTreeMap, net::IpAddr, os::fd::AsFd, path::Path};

use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key};
use switchyard_abi::{
    Addr, CLUSTER_CIDRS_MAP, CONNTRACK_MAP, COUNTERS_LEN, COUNTERS_MAP, Flow, FlowKey,
    FlowTimeouts, LOCAL_DEVICES_MAP, NODE_CONFIG_MAP, NODE_MAP, NODE_SNAT_IPV4, NODE_SNAT_IPV6,
    NodeConfig,
};
use tracing::warn;

use super::{DatapathError, batch, pinned::open_pinned};
use crate::{
    model::address::Cidr,
    node::conntrack::{Connection, connections},
};

/// IPv4 addresses sit in the last 32 bits of an [`Addr`] (v4-mapped).
const IPV4_MAPPED_PREFIX_BITS: u8 = 96;

pub struct FlowTable {
    conntrack: HashMap<MapData, FlowKey, Flow>,
    /// The conntrack map again, for batched reads (aya's typed view does
    /// not lend its fd).
    conntrack_batches: MapData,
    node: Array<MapData, Addr>,
    node_config: Array<MapData, NodeConfig>,
    cluster_cidrs: LpmTrie<MapData, Addr, u8>,
    local_devices: HashMap<MapData, u32, u8>,
    counters: PerCpuArray<MapData, u64>,
}

/// What one garbage collection found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Collection {
    /// Entries in the map before collecting.
    pub entries: usize,
    /// Entries removed.
    pub removed: usize,
    /// NAT ports held by live connections, per node address.
    pub nat_ports_in_use: BTreeMap<IpAddr, usize>,
    /// Live connections by (Service port, pair) counter entries.
    pub flows: BTreeMap<(u32, u32), usize>,
}

impl FlowTable {
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        Ok(Self {
            conntrack: open_pinned(pin_dir, CONNTRACK_MAP)?,
            conntrack_batches: MapData::from_pin(pin_dir.join(CONNTRACK_MAP))
                .map_err(|source| DatapathError::map(CONNTRACK_MAP, source))?,
            node: open_pinned(pin_dir, NODE_MAP)?,
            node_config: open_pinned(pin_dir, NODE_CONFIG_MAP)?,
            cluster_cidrs: open_pinned(pin_dir, CLUSTER_CIDRS_MAP)?,
            local_devices: open_pinned(pin_dir, LOCAL_DEVICES_MAP)?,
            counters: open_pinned(pin_dir, COUNTERS_MAP)?,
        })
    }

    /// Every entry; one deleted while we read is simply not seen. Read in
    /// batches of thousands (a million entries cost hundreds of syscalls,
    /// not two million), one at a time on kernels without batched lookups.
    pub fn entries(&self) -> Vec<(FlowKey, Flow)> {
        let mut entries = Vec::new();
        let read = batch::read_all_typed(
            self.conntrack_batches.fd().as_fd(),
            |keys: &[FlowKey], flows: &[Flow]| {
                entries.extend(keys.iter().copied().zip(flows.iter().copied()));
            },
        );
        match read {
            Ok(()) => entries,
            Err(stopped) if stopped.unsupported() => {
                self.conntrack.iter().filter_map(Result::ok).collect()
            }
            Err(stopped) => {
                warn!(error = %stopped.error, read = stopped.applied, "reading the conntrack map stopped early");
                entries
            }
        }
    }

    pub fn connections(&self) -> Vec<Connection> {
        connections(self.entries())
    }

    /// The addresses NATed connections leave from.
    pub fn set_snat_addresses(
        &mut self,
        ipv4: Option<IpAddr>,
        ipv6: Option<IpAddr>,
    ) -> Result<(), DatapathError> {
        for (index, ip) in [(NODE_SNAT_IPV4, ipv4), (NODE_SNAT_IPV6, ipv6)] {
            self.node
                .set(index, ip.map(Addr::from).unwrap_or_default(), 0)
                .map_err(|source| DatapathError::map(NODE_MAP, source))?;
        }
        Ok(())
    }

    /// Turns on `flags` among the switches the programs read, keeping the
    /// rest as the agent wrote them.
    pub fn add_node_flags(&mut self, flags: u32) -> Result<(), DatapathError> {
        let mut config = self.node_config()?;
        config.flags |= flags;
        self.set_node_config(config)
    }

    /// The NAT ports and switches the programs read now.
    pub fn node_config(&self) -> Result<NodeConfig, DatapathError> {
        self.node_config
            .get(&0, 0)
            .map_err(|source| DatapathError::map(NODE_CONFIG_MAP, source))
    }

    /// Connections neither over (closed, reset) nor idle past `timeouts`.
    pub fn live_connections(&self, timeouts: &FlowTimeouts) -> usize {
        let now = monotonic_now_ns();
        connections(self.entries())
            .iter()
            .filter(|connection| {
                !connection.state().is_over() && !connection.expired(now, timeouts)
            })
            .count()
    }

    /// The NAT ports and switches the programs read.
    pub fn set_node_config(&mut self, config: NodeConfig) -> Result<(), DatapathError> {
        self.node_config
            .set(0, config, 0)
            .map_err(|source| DatapathError::map(NODE_CONFIG_MAP, source))
    }

    /// Replaces the devices detect-local counts as local with `ifindexes`.
    pub fn set_local_devices(&mut self, ifindexes: &[u32]) -> Result<(), DatapathError> {
        let error = |source| DatapathError::map(LOCAL_DEVICES_MAP, source);
        let stale: Vec<u32> = self
            .local_devices
            .keys()
            .filter_map(Result::ok)
            .filter(|index| !ifindexes.contains(index))
            .collect();
        for index in &stale {
            self.local_devices.remove(index).map_err(error)?;
        }
        for index in ifindexes {
            self.local_devices.insert(index, 1, 0).map_err(error)?;
        }
        Ok(())
    }

    /// Replaces detect-local's source prefixes with `cidrs`.
    pub fn set_cluster_cidrs(&mut self, cidrs: &[Cidr]) -> Result<(), DatapathError> {
        let error = |source| DatapathError::map(CLUSTER_CIDRS_MAP, source);
        let wanted: Vec<Key<Addr>> = cidrs.iter().map(cidr_key).collect();
        let stale: Vec<Key<Addr>> = self
            .cluster_cidrs
            .keys()
            .filter_map(Result::ok)
            .filter(|key| {
                !wanted
                    .iter()
                    .any(|w| w.prefix_len() == key.prefix_len() && w.data() == key.data())
            })
            .collect();
        for key in &stale {
            self.cluster_cidrs.remove(key).map_err(error)?;
        }
        for key in &wanted {
            self.cluster_cidrs.insert(key, 1, 0).map_err(error)?;
        }
        Ok(())
    }

    /// Each counter summed over CPUs, by `switchyard_abi::COUNTER_*`.
    pub fn counters(&self) -> Result<[u64; COUNTERS_LEN as usize], DatapathError> {
        let mut totals = [0u64; COUNTERS_LEN as usize];
        for (index, total) in (0..COUNTERS_LEN).zip(totals.iter_mut()) {
            let per_cpu = self
                .counters
                .get(&index, 0)
                .map_err(|source| DatapathError::map(COUNTERS_MAP, source))?;
            *total = per_cpu.iter().sum();
        }
        Ok(totals)
    }

    /// Removes both entries of every connection idle past its timeout.
    pub fn collect_garbage(&mut self, now_ns: u64, timeouts: &FlowTimeouts) -> Collection {
        let entries = self.entries();
        let mut collection = Collection {
            entries: entries.len(),
            ..Collection::default()
        };
        for connection in connections(entries) {
            if connection.expired(now_ns, timeouts) {
                collection.removed += self.remove(connection.keys());
                continue;
            }
            *collection.flows.entry(connection.counters()).or_default() += 1;
            if let Some((addr, _)) = connection.nat_port() {
                *collection
                    .nat_ports_in_use
                    .entry(IpAddr::from(addr))
                    .or_default() += 1;
            }
        }
        collection
    }

    /// Removes entries by key; returns how many were there.
    pub fn remove(&mut self, keys: impl IntoIterator<Item = FlowKey>) -> usize {
        keys.into_iter()
            .filter(|key| self.conntrack.remove(key).is_ok())
            .count()
    }
}

/// The LPM key of a prefix in a trie of [`Addr`].
pub(crate) fn cidr_key(cidr: &Cidr) -> Key<Addr> {
    let bits = if cidr.network.is_ipv4() {
        IPV4_MAPPED_PREFIX_BITS + cidr.prefix_len
    } else {
        cidr.prefix_len
    };
    Key::new(u32::from(bits), Addr::from(cidr.network))
}

/// `bpf_ktime_get_ns()`'s clock, for comparing with `last_seen_ns`.
pub fn monotonic_now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |now| {
        u64::try_from(now.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(now.tv_nsec()).unwrap_or(0)
    })
}
