//! This node: its devices and addresses, the per-packet path that follows
//! them, and the per-packet path's connections.

pub mod conntrack;
pub mod nat_ports;
pub mod node_network;
pub mod packet_path;
pub mod sock_diag;
pub mod socket_reaper;
