//! This node: its devices and addresses, the per-packet path that follows
//! them, and the per-packet path's connections.

pub mod conntrack;
pub mod cpu_set;
pub mod hooked_namespaces;
pub mod kube_proxy_leftovers;
pub mod nat_ports;
#[expect(
    unsafe_code,
    reason = "getsockopt(SO_NETNS_COOKIE), which neither std nor nix 0.31 names"
)]
pub mod netns_source;
pub mod node_network;
pub mod packet_path;
pub mod sock_diag;
pub mod socket_reaper;
