//! The per-packet path's life in the agent: the node's devices followed and
//! given the programs as they appear, the NodePort addresses and NAT
//! source addresses kept current, and conntrack collected.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
};

use switchyard_abi::{
    CONNTRACK_MAP, COUNTER_DROP_SNAT_PORTS, FlowTimeouts, NODE_CLUSTER_IP_FROM_OUTSIDE,
    NODE_LOCAL_BY_DEVICE, NODE_MASQUERADE_ALL, NodeConfig,
};
use tracing::{info, warn};

use crate::{
    datapath::{
        DatapathError,
        flow_table::{FlowTable, monotonic_now_ns},
        loader::Programs,
    },
    model::{address::Cidr, detect_local::DetectLocal},
    node::{
        nat_ports::{NatPortRange, ephemeral_ports, nat_ports},
        node_network::{
            self, BadNodePortAddress, DeviceSelection, NetworkError, NetworkSnapshot,
            NodePortAddresses,
        },
    },
    serve::metrics::Metrics,
};

#[derive(Debug, thiserror::Error)]
pub enum PacketPathError {
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    NodePortAddresses(#[from] BadNodePortAddress),
}

/// What the operator chose for the per-packet path, already parsed: the
/// agent builds it from the flags, so this layer never sees the command line.
pub struct PacketPathConfig {
    pub devices: DeviceSelection,
    pub node_port_addresses: NodePortAddresses,
    pub timeouts: FlowTimeouts,
    /// `--nat-port-range`; `None` takes every port the node's own sockets
    /// cannot use (see `nat_ports`).
    pub nat_port_range: Option<NatPortRange>,
    /// `--detect-local-mode` with its CIDRs or device.
    pub detect_local: DetectLocal,
    /// `--masquerade-all`.
    pub masquerade_all: bool,
    /// `--cluster-ip-from-outside`.
    pub cluster_ip_from_outside: bool,
    /// Entries the conntrack map has (sized by the conntrack flags).
    pub conntrack_capacity: usize,
}

pub struct PacketPath {
    flows: FlowTable,
    /// Packets dropped for want of a NAT port, at the latest collection:
    /// exhaustion is logged once per rise, not once per packet.
    exhausted: u64,
    selection: DeviceSelection,
    wanted_node_ports: NodePortAddresses,
    timeouts: FlowTimeouts,
    conntrack_capacity: usize,
    network: NetworkSnapshot,
    node_port_addresses: Vec<IpAddr>,
    /// What detect-local's source trie holds.
    local_cidrs: Vec<Cidr>,
    detect_local: DetectLocal,
}

impl PacketPath {
    pub fn new(
        config: PacketPathConfig,
        pin_dir: &Path,
        metrics: &Metrics,
    ) -> Result<Self, PacketPathError> {
        let mut flows = FlowTable::open(pin_dir)?;
        let node_config = NodeConfig {
            nat_ports: nat_ports(config.nat_port_range, ephemeral_ports()),
            flags: [
                (config.cluster_ip_from_outside, NODE_CLUSTER_IP_FROM_OUTSIDE),
                (config.masquerade_all, NODE_MASQUERADE_ALL),
                (config.detect_local.by_device(), NODE_LOCAL_BY_DEVICE),
            ]
            .into_iter()
            .filter(|(on, _)| *on)
            .fold(0, |flags, (_, flag)| flags | flag),
        };
        flows.set_node_config(node_config)?;
        // The node's pod CIDRs come with its Node (`set_local_cidrs`).
        let local_cidrs = config.detect_local.local_cidrs(&[]);
        flows.set_cluster_cidrs(&local_cidrs)?;
        let ranges: Vec<String> = node_config
            .nat_ports
            .iter()
            .filter(|range| range.count > 0)
            .map(|range| {
                format!(
                    "{}-{}",
                    range.first,
                    u32::from(range.first) + u32::from(range.count) - 1
                )
            })
            .collect();
        info!(
            nat_ports = ?ranges,
            local_cidrs = ?local_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            detect_local = ?config.detect_local,
            masquerade_all = config.masquerade_all,
            cluster_ip_from_outside = config.cluster_ip_from_outside,
            "per-packet path"
        );
        metrics.set_nat_port_capacity(node_config.nat_port_count());
        Ok(Self {
            flows,
            exhausted: 0,
            selection: config.devices,
            wanted_node_ports: config.node_port_addresses,
            timeouts: config.timeouts,
            conntrack_capacity: config.conntrack_capacity,
            network: NetworkSnapshot::default(),
            node_port_addresses: Vec::new(),
            local_cidrs,
            detect_local: config.detect_local,
        })
    }

    /// Follows detect-local's source prefixes when they come from the
    /// Node (`NodeCIDR`): written when they differ from what is set.
    pub fn set_local_cidrs(&mut self, node_pod_cidrs: &[String]) -> Result<(), PacketPathError> {
        let wanted = self.detect_local.local_cidrs(node_pod_cidrs);
        if wanted != self.local_cidrs {
            self.flows.set_cluster_cidrs(&wanted)?;
            info!(local_cidrs = ?wanted.iter().map(ToString::to_string).collect::<Vec<_>>(), "detect-local");
            self.local_cidrs = wanted;
        }
        Ok(())
    }

    /// The addresses NodePorts are served on now.
    pub fn node_port_addresses(&self) -> &[IpAddr] {
        &self.node_port_addresses
    }

    /// Every address of the node's devices, loopback included.
    pub fn node_addresses(&self) -> Vec<IpAddr> {
        self.network.addresses()
    }

    /// Re-reads the node's devices and addresses, attaches the programs to
    /// devices that are new, and updates the NAT source addresses. Returns
    /// whether the node's addresses changed (the frontends on them must
    /// follow).
    /// A device that cannot be attached is logged and retried next time;
    /// the others are served.
    pub async fn refresh(
        &mut self,
        programs: &mut Programs,
        metrics: &Metrics,
    ) -> Result<bool, PacketPathError> {
        let network = node_network::read().await?;
        let addresses = network.node_port_addresses(&self.wanted_node_ports, &self.selection);
        let selected = network.packet_devices(&self.selection, &addresses);
        if let DeviceSelection::Named(names) = &self.selection {
            for name in names {
                if !network.devices.iter().any(|device| &device.name == name) {
                    warn!(device = %name, "--devices names a device this node does not have (yet)");
                }
            }
        }
        let mut attached: Vec<&str> = Vec::new();
        // A kernel without the tc programs' helpers: nothing goes on devices
        // and the devices gauge says so (the probe logged why at load).
        let attachable = if programs.packet_path() {
            selected.as_slice()
        } else {
            &[]
        };
        // XDP goes on the uplinks only (`--devices`, else the default
        // route's): a device that is here only for a NodePort address (a
        // pod bridge) sees no traffic from outside worth the fast path.
        let uplinks: BTreeSet<u32> = network
            .selected(&self.selection)
            .iter()
            .map(|device| device.index)
            .collect();
        for device in attachable {
            match programs.attach_device(device, uplinks.contains(&device.index)) {
                Ok(()) => attached.push(&device.name),
                // `--xdp native` on a device without it: the agent stops at
                // start; later, each refresh says so.
                Err(error @ DatapathError::NoNativeXdp { .. }) => return Err(error.into()),
                Err(error) => warn!(device = %device.name, %error, "packet hooks not attached"),
            }
        }
        let present: BTreeSet<u32> = network.devices.iter().map(|d| d.index).collect();
        let names: BTreeSet<String> = network.devices.iter().map(|d| d.name.clone()).collect();
        programs.forget_devices_except(&present, &names);
        if self.detect_local.by_device() {
            let local: Vec<u32> = network
                .devices
                .iter()
                .filter(|device| self.detect_local.is_local_device(&device.name))
                .map(|device| device.index)
                .collect();
            self.flows.set_local_devices(&local)?;
        }
        let (ipv4, ipv6) = network.snat_addresses(&self.selection);
        self.flows.set_snat_addresses(ipv4, ipv6)?;
        let changed = addresses != self.node_port_addresses
            || network.addresses() != self.network.addresses();
        if changed || network != self.network {
            info!(
                devices = ?selected.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
                node_port_addresses = ?addresses,
                snat_ipv4 = ?ipv4,
                snat_ipv6 = ?ipv6,
                "node network"
            );
        }
        let hooks: Vec<(&str, &str)> = attached
            .iter()
            .map(|device| (*device, "tc"))
            .chain(
                programs
                    .xdp_devices()
                    .iter()
                    .map(|device| (device.as_str(), "xdp")),
            )
            .collect();
        metrics.set_network(&hooks, addresses.len());
        self.node_port_addresses = addresses;
        self.network = network;
        Ok(changed)
    }

    /// Removes expired connections and publishes conntrack and packet
    /// counters.
    pub fn collect(&mut self, metrics: &Metrics) {
        let collection = self
            .flows
            .collect_garbage(monotonic_now_ns(), &self.timeouts);
        let live = collection.entries - collection.removed;
        metrics.observe_conntrack(live, collection.removed);
        metrics.set_map_usage(CONNTRACK_MAP, live, self.conntrack_capacity);
        metrics.set_nat_ports_in_use(&collection.nat_ports_in_use);
        metrics.service_counters.set_flows(collection.flows);
        match self.flows.counters() {
            Ok(totals) => {
                metrics.set_packet_counters(&totals);
                self.note_exhaustion(
                    totals[COUNTER_DROP_SNAT_PORTS as usize],
                    &collection.nat_ports_in_use,
                );
            }
            Err(error) => warn!(%error, "reading the datapath counters"),
        }
    }

    /// Logs once each time connections were refused for want of a NAT
    /// port since the previous collection; the counter has every one.
    fn note_exhaustion(&mut self, dropped: u64, in_use: &BTreeMap<IpAddr, usize>) {
        if dropped > self.exhausted {
            warn!(
                dropped = dropped - self.exhausted,
                nat_ports_in_use = ?in_use,
                "new connections were dropped: no free NAT port for their backend \
                 (see switchyard_nat_ports_in_use; --nat-port-range widens the range)"
            );
        }
        self.exhausted = dropped;
    }
}
