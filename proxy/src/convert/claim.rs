//! Who may serve an address and port when more than one Service asks for
//! it, and which externalIPs are honoured at all.
//!
//! Kubernetes checks that cluster IPs and NodePorts are unique (the API
//! server allocates them), but not externalIPs nor LoadBalancer ingress
//! IPs: anyone who may create a Service may write any address there
//! (CVE-2020-8554). kube-proxy installs both, and whichever rule comes
//! first wins; so a Service in any namespace could take DNS from kube-dns
//! by naming its ClusterIP as an externalIP. Here an allocated address is
//! always served for its own Service, a declared one only where it takes
//! nothing from anyone, and an externalIP only where the operator allows it.

use std::net::IpAddr;

use crate::model::address::Cidr;

/// Where a frontend's address comes from, which decides who keeps it when
/// two Services claim the same address, port and protocol: every allocated
/// claim is served before any declared one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddressOrigin {
    /// The API server allocated it to this Service and to no other: a
    /// cluster IP, a NodePort on the node's addresses.
    #[default]
    Allocated,
    /// `spec.externalIPs`: anyone who may write the Service chose it.
    ExternalIp,
    /// `status.loadBalancer.ingress`: a load-balancer controller chose it.
    LoadBalancer,
}

impl AddressOrigin {
    /// Written into the Service or its status, which nothing checks for
    /// uniqueness: served only where no allocated claim wants it.
    pub const fn declared(self) -> bool {
        !matches!(self, Self::Allocated)
    }
}

/// `--external-ip-ranges` and the node's own addresses: which
/// `spec.externalIPs` are served.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExternalIpPolicy {
    /// `None` honours every externalIP (kube-proxy's behaviour); `Some`
    /// only those inside one of the ranges, and none when it is empty.
    pub allowed: Option<Vec<Cidr>>,
    /// Every address of the node's devices, loopback included.
    pub node_addresses: Vec<IpAddr>,
}

impl ExternalIpPolicy {
    /// Why `ip` may not be served as an externalIP, if it may not.
    ///
    /// An externalIP on one of the node's own addresses would take that
    /// port from the node itself (its SSH, its kubelet) on every node, so
    /// it is refused unless a range the operator listed names it.
    pub fn refusal(&self, ip: IpAddr) -> Option<String> {
        let listed = self
            .allowed
            .as_ref()
            .map(|ranges| ranges.iter().any(|range| range.contains(ip)));
        match listed {
            Some(false) if self.allowed.as_ref().is_some_and(Vec::is_empty) => {
                Some("externalIPs are not served here (--external-ip-ranges=none)".to_owned())
            }
            Some(false) => Some(format!("{ip} is outside --external-ip-ranges")),
            None if self.node_addresses.contains(&ip) => Some(format!(
                "{ip} is this node's own address; list it in --external-ip-ranges to serve it"
            )),
            Some(true) | None => None,
        }
    }
}

/// Parses `--external-ip-ranges`: `none`, or CIDRs (a bare address is a
/// host route).
pub fn parse_external_ip_ranges(
    texts: &[String],
) -> Result<Option<Vec<Cidr>>, crate::model::address::BadCidr> {
    match texts {
        [] => Ok(None),
        [none] if none.trim().eq_ignore_ascii_case("none") => Ok(Some(Vec::new())),
        texts => texts
            .iter()
            .map(|text| {
                let text = text.trim();
                match text.parse::<IpAddr>() {
                    Ok(ip) => Ok(Cidr::host(ip)),
                    Err(_) => text.parse(),
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_ips_follow_the_ranges_and_spare_the_node() {
        let node: Vec<IpAddr> = vec!["192.168.1.5".parse().unwrap(), "127.0.0.1".parse().unwrap()];
        let policy = |ranges: &[&str]| ExternalIpPolicy {
            allowed: parse_external_ip_ranges(
                &ranges.iter().map(|r| (*r).to_owned()).collect::<Vec<_>>(),
            )
            .unwrap(),
            node_addresses: node.clone(),
        };
        let cases: &[(&[&str], &str, bool)] = &[
            (&[], "198.51.100.1", true),
            (&[], "192.168.1.5", false),
            (&[], "127.0.0.1", false),
            (&["none"], "198.51.100.1", false),
            (&["198.51.100.0/24"], "198.51.100.1", true),
            (&["198.51.100.0/24"], "203.0.113.1", false),
            (&["198.51.100.0/24"], "192.168.1.5", false),
            (&["192.168.1.5"], "192.168.1.5", true),
        ];
        for (ranges, ip, served) in cases {
            let refusal = policy(ranges).refusal(ip.parse().unwrap());
            assert_eq!(refusal.is_none(), *served, "{ranges:?} {ip}: {refusal:?}");
        }
        assert!(parse_external_ip_ranges(&["10.0.0.0/33".to_owned()]).is_err());
    }
}
