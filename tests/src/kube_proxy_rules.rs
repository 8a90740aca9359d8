//! kube-proxy's rule sets in its exact shape, for a set of Services: what
//! its iptables and nftables modes write (`iptables`, `nftables`), and
//! loading them into a namespace (`rule_set`). The bench measures against
//! them; the takeover tests start from them.

pub mod chain_name;
pub mod iptables;
pub mod nftables;
pub mod rule_set;

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::Protocol;

/// The cluster CIDR given to kube-proxy: it covers the pods and the
/// in-cluster clients, so their traffic is not masqueraded, as in a real
/// cluster.
pub const CLUSTER_CIDR: &str = "10.240.0.0/12";

/// Port every Service listens on and every endpoint serves.
pub const SERVICE_PORT: u16 = 80;
pub const TARGET_PORT: u16 = 8080;
pub const NAMESPACE: &str = "bench";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeProxyService {
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub endpoints: Vec<Ipv4Addr>,
    /// Set on the one Service the NodePort test reaches from outside.
    pub node_port: Option<u16>,
    /// Of its one port (every endpoint serves both).
    pub protocol: Protocol,
}

impl KubeProxyService {
    pub fn frontend(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.cluster_ip, SERVICE_PORT)
    }

    /// kube-proxy's service port name: `namespace/name:port-name`.
    pub fn port_name(&self) -> String {
        format!("{NAMESPACE}/{}:http", self.name)
    }
}
