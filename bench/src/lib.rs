//! `cargo xtask bench`: Switchyard against kube-proxy-shaped iptables and
//! nftables rule sets and against direct connections, in network namespaces
//! on one machine, reported as ratios measured in one run.
//!
//! The same safety rules as the integration tests hold: all traffic stays
//! inside namespaces the bench creates, the socket hooks go on a cgroup it
//! creates, every load loop is bounded in time and count, and guards remove
//! everything when it ends or fails.

pub mod agent_run;
pub mod catalog;
pub mod churn;
pub mod counter_cost;
pub mod footprint;
pub mod footprint_report;
pub mod forwarding;
pub mod hook_cost;
pub mod load_result;
pub mod packet_counters;
pub mod plot;
pub mod progress;
pub mod report;
pub mod results;
pub mod rig;
#[cfg(test)]
mod rule_shapes;
pub mod scenario;
pub mod traffic;
pub mod xdp_forwarding;
