//! This node's devices and addresses, read over rtnetlink and followed as
//! they change: which devices carry the per-packet programs, which
//! addresses NodePorts answer on, and which address NATed connections
//! leave from.

use std::net::IpAddr;

use futures::{StreamExt, TryStreamExt};
use rtnetlink::{
    MulticastGroup, RouteMessageBuilder, new_connection, new_multicast_connection,
    packet_route::{
        address::AddressAttribute,
        link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo},
        route::RouteAttribute,
    },
};
use tokio::sync::mpsc;

use crate::model::address::Cidr;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("rtnetlink socket: {source}")]
    Socket { source: std::io::Error },
    #[error("rtnetlink {what} dump: {source}")]
    Dump {
        what: &'static str,
        source: rtnetlink::Error,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub index: u32,
    pub up: bool,
    pub loopback: bool,
    /// Usable unicast addresses (no IPv6 link-local).
    pub addresses: Vec<IpAddr>,
    /// A default route leaves through it.
    pub default_route: bool,
    pub kind: DeviceKind,
}

/// What kind of link a device is, where it matters (see
/// `xdp_attach::auto_skips`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceKind {
    Veth,
    #[default]
    Other,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkSnapshot {
    pub devices: Vec<Device>,
}

/// `--devices`: named, or (empty) the devices a default route uses, as
/// Cilium's and Calico's auto-detection pick the node's uplinks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSelection {
    Named(Vec<String>),
    Auto,
}

impl DeviceSelection {
    pub fn from_flag(names: &[String]) -> Self {
        if names.is_empty() {
            Self::Auto
        } else {
            Self::Named(names.to_vec())
        }
    }
}

/// `--nodeport-addresses`: kube-proxy's semantics. Empty means every
/// address of the node (as its iptables mode); `primary` the addresses of
/// the per-packet devices; otherwise the node's addresses inside the CIDRs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodePortAddresses {
    All,
    Primary,
    Within(Vec<Cidr>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--nodeport-addresses: {text:?} is neither a CIDR nor \"primary\"")]
pub struct BadNodePortAddress {
    pub text: String,
}

impl NodePortAddresses {
    pub fn from_flag(values: &[String]) -> Result<Self, BadNodePortAddress> {
        match values {
            [] => Ok(Self::All),
            [one] if one == "primary" => Ok(Self::Primary),
            cidrs => cidrs
                .iter()
                .map(|text| {
                    text.parse()
                        .map_err(|_| BadNodePortAddress { text: text.clone() })
                })
                .collect::<Result<_, _>>()
                .map(Self::Within),
        }
    }
}

impl NetworkSnapshot {
    /// Every address of every device, loopback included, sorted.
    pub fn addresses(&self) -> Vec<IpAddr> {
        let mut all: Vec<IpAddr> = self
            .devices
            .iter()
            .flat_map(|device| device.addresses.iter().copied())
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The devices to attach to, in index order. Named devices that do not
    /// exist (yet) are skipped until they appear.
    pub fn selected(&self, selection: &DeviceSelection) -> Vec<&Device> {
        self.devices
            .iter()
            .filter(|device| match selection {
                DeviceSelection::Named(names) => names.contains(&device.name),
                DeviceSelection::Auto => device.default_route && !device.loopback,
            })
            .collect()
    }

    /// The devices the per-packet programs go on: the selected ones, and
    /// every other device carrying one of `node_port_addresses` (a NodePort
    /// claimed on an address must answer whichever device its packets come
    /// in by), in index order.
    pub fn packet_devices(
        &self,
        selection: &DeviceSelection,
        node_port_addresses: &[IpAddr],
    ) -> Vec<&Device> {
        let selected = self.selected(selection);
        self.devices
            .iter()
            .filter(|device| {
                selected.iter().any(|s| s.index == device.index)
                    || (!device.loopback
                        && device
                            .addresses
                            .iter()
                            .any(|ip| node_port_addresses.contains(ip)))
            })
            .collect()
    }

    /// Loopback addresses are NodePort addresses only when
    /// `--nodeport-addresses` names them (as in kube-proxy's iptables
    /// mode); they are then served to the node's own processes through the
    /// socket hooks, never through `route_localnet`.
    pub fn node_port_addresses(
        &self,
        wanted: &NodePortAddresses,
        selection: &DeviceSelection,
    ) -> Vec<IpAddr> {
        let candidates: Vec<IpAddr> = match wanted {
            NodePortAddresses::Primary => self
                .selected(selection)
                .iter()
                .flat_map(|device| device.addresses.iter().copied())
                .collect(),
            NodePortAddresses::All => self
                .devices
                .iter()
                .filter(|device| !device.loopback)
                .flat_map(|device| device.addresses.iter().copied())
                .filter(|ip| !ip.is_loopback())
                .collect(),
            NodePortAddresses::Within(cidrs) => self
                .devices
                .iter()
                .flat_map(|device| device.addresses.iter().copied())
                .filter(|ip| cidrs.iter().any(|cidr| cidr.contains(*ip)))
                .collect(),
        };
        let mut addresses = candidates;
        addresses.sort();
        addresses.dedup();
        addresses
    }

    /// The address of each family NATed connections leave from: the first
    /// of that family on the first selected device that has one.
    pub fn snat_addresses(&self, selection: &DeviceSelection) -> (Option<IpAddr>, Option<IpAddr>) {
        let addresses: Vec<IpAddr> = self
            .selected(selection)
            .iter()
            .flat_map(|device| device.addresses.iter().copied())
            .collect();
        (
            addresses.iter().copied().find(IpAddr::is_ipv4),
            addresses.iter().copied().find(IpAddr::is_ipv6),
        )
    }
}

/// Reads devices, addresses and default routes.
pub async fn read() -> Result<NetworkSnapshot, NetworkError> {
    let (connection, handle, _) =
        new_connection().map_err(|source| NetworkError::Socket { source })?;
    let task = tokio::spawn(connection);
    let dump = |what| move |source| NetworkError::Dump { what, source };

    let mut devices = Vec::new();
    let mut links = handle.link().get().execute();
    while let Some(link) = links.try_next().await.map_err(dump("link"))? {
        let name = link
            .attributes
            .iter()
            .find_map(|attribute| match attribute {
                LinkAttribute::IfName(name) => Some(name.clone()),
                _ => None,
            });
        devices.push(Device {
            name: name.unwrap_or_default(),
            index: link.header.index,
            up: link.header.flags.contains(LinkFlags::Up),
            loopback: link.header.flags.contains(LinkFlags::Loopback),
            addresses: Vec::new(),
            default_route: false,
            kind: if link.attributes.iter().any(|attribute| {
                matches!(attribute, LinkAttribute::LinkInfo(infos)
                    if infos.iter().any(|info| matches!(info, LinkInfo::Kind(InfoKind::Veth))))
            }) {
                DeviceKind::Veth
            } else {
                DeviceKind::Other
            },
        });
    }
    let mut addresses = handle.address().get().execute();
    while let Some(message) = addresses.try_next().await.map_err(dump("address"))? {
        let ip = message
            .attributes
            .iter()
            .find_map(|attribute| match attribute {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
        let ip = ip.or_else(|| {
            message
                .attributes
                .iter()
                .find_map(|attribute| match attribute {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
        });
        let usable = |ip: &IpAddr| match ip {
            IpAddr::V6(v6) => !v6.is_unicast_link_local() && !v6.is_multicast(),
            IpAddr::V4(v4) => !v4.is_multicast(),
        };
        if let Some(ip) = ip.filter(usable)
            && let Some(device) = devices.iter_mut().find(|d| d.index == message.header.index)
        {
            device.addresses.push(ip);
        }
    }
    for route in [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ] {
        let mut routes = handle.route().get(route).execute();
        while let Some(message) = routes.try_next().await.map_err(dump("route"))? {
            if message.header.destination_prefix_length != 0 {
                continue;
            }
            for attribute in &message.attributes {
                if let RouteAttribute::Oif(index) = attribute
                    && let Some(device) = devices.iter_mut().find(|d| d.index == *index)
                {
                    device.default_route = true;
                }
            }
        }
    }
    task.abort();
    devices.sort_by_key(|device| device.index);
    Ok(NetworkSnapshot { devices })
}

/// A notification per batch of link, address or route changes; the
/// receiver re-reads the whole picture (level-triggered, like the sync).
pub fn watch() -> Result<mpsc::Receiver<()>, NetworkError> {
    let (connection, _handle, mut messages) = new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
    ])
    .map_err(|source| NetworkError::Socket { source })?;
    let (notify, changes) = mpsc::channel(1);
    tokio::spawn(connection);
    tokio::spawn(async move {
        while messages.next().await.is_some() {
            // A full channel already holds a pending notification.
            if let Err(mpsc::error::TrySendError::Closed(())) = notify.try_send(()) {
                break;
            }
        }
    });
    Ok(changes)
}

#[cfg(test)]
mod tests;
