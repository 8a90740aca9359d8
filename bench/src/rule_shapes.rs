//! The rule generators (`switchyard_tests::kube_proxy_rules`) against
//! kube-proxy's own shapes, on the bench's catalog.

mod iptables;
mod nftables;
