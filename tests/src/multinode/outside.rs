//! `Outside`: a client on the cluster's LAN that is not part of the cluster.
//! Its probes run in no agent's cgroup, so only the per-packet path on the
//! nodes' devices ever sees its traffic, as with a real external client.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::Result;

use super::{ClusterNode, lan_v4, lan_v6};
use crate::{
    client::Prober,
    netns::NetNs,
    probe::{Attempt, Summary},
    wiring,
};

pub struct Outside {
    pub netns: NetNs,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

impl Outside {
    /// A namespace plugged into `lan0` with 192.168.77.2 and fd00:77::2 and
    /// only the LAN's connected routes: pod CIDRs stay unreachable.
    pub(super) fn new(lan: &NetNs) -> Result<Self> {
        let outside = Self {
            netns: NetNs::new("outside")?,
            ipv4: lan_v4(2),
            ipv6: lan_v6(2)?,
        };
        for key in [
            "net/ipv4/conf/all/rp_filter",
            "net/ipv4/conf/default/rp_filter",
        ] {
            outside.netns.sysctl(key, "0")?;
        }
        wiring::plug(
            lan,
            "lan0",
            "vo0",
            &outside.netns,
            outside.ipv4,
            outside.ipv6,
        )?;
        Ok(outside)
    }

    /// Probes from the outside namespace, in no test cgroup at all.
    pub fn prober(&self) -> Prober<'_> {
        Prober::new(&self.netns, None)
    }

    /// Routes `cidr` (IPv4 or IPv6) via `node`'s LAN address, as a router in
    /// front of the cluster would route a LoadBalancer or external IP range.
    pub fn route_via(&self, cidr: &str, node: &ClusterNode) -> Result<()> {
        if cidr.contains(':') {
            let via = node.ipv6.to_string();
            self.netns.ip(&["-6", "route", "add", cidr, "via", &via])?;
        } else {
            let via = node.ipv4.to_string();
            self.netns.ip(&["route", "add", cidr, "via", &via])?;
        }
        Ok(())
    }

    /// See [`Prober::tcp`].
    pub fn tcp(&self, to: SocketAddr, count: u32) -> Result<Vec<Attempt>> {
        self.prober().tcp(to, count)
    }

    /// See [`Prober::udp`].
    pub fn udp(&self, to: SocketAddr, count: u32, connected: bool) -> Result<Vec<Attempt>> {
        self.prober().udp(to, count, connected)
    }

    /// See [`Prober::burst`].
    pub fn burst(&self, to: SocketAddr, count: u32) -> Result<Summary> {
        self.prober().burst(to, count)
    }

    /// `GET /` on `addr`: status and body (e.g. a healthCheckNodePort).
    pub fn http_get(&self, addr: SocketAddr) -> Result<(u16, String)> {
        self.prober().http_get(addr, "/")
    }

    /// `GET path` on `addr`, e.g. `/healthz` on a node's port 10256.
    pub fn http_get_path(&self, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
        self.prober().http_get(addr, path)
    }
}
