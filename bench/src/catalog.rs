//! The synthetic cluster every mode serves: N Services of four endpoints
//! each, and two probed Services among them, one last in order (the worst
//! case for a linear rule walk) and one at a random position (the average
//! case). Only the probed ones point at real pods; the rest point at
//! addresses nobody answers, as they only have to exist.

use std::net::Ipv4Addr;

use switchyard_tests::Protocol;
pub use switchyard_tests::kube_proxy_rules::{
    KubeProxyService, NAMESPACE, SERVICE_PORT, TARGET_PORT,
};

pub const ENDPOINTS_PER_SERVICE: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    Last,
    Random,
}

impl Placement {
    pub const ALL: [Placement; 2] = [Placement::Last, Placement::Random];

    pub fn label(self) -> &'static str {
        match self {
            Placement::Last => "last",
            Placement::Random => "random",
        }
    }
}

pub struct Catalog {
    pub services: Vec<KubeProxyService>,
    last: usize,
    random: usize,
}

impl Catalog {
    /// `dummies` Services plus the two probed ones, whose endpoints are
    /// `pods`. `seed` fixes the random position so a run can be repeated.
    pub fn new(dummies: usize, pods: &[Ipv4Addr], seed: u64) -> Self {
        let total = dummies + 2;
        // The random probe goes anywhere but the end, where the other is.
        let random =
            usize::try_from(splitmix(seed) % (total as u64 - 1)).expect("below `total`, a usize");
        let last = total - 1;
        let services = (0..total)
            .map(|index| {
                let probed = index == last || index == random;
                KubeProxyService {
                    name: if probed {
                        format!("probe-{}", if index == last { "last" } else { "random" })
                    } else {
                        format!("svc-{index}")
                    },
                    cluster_ip: cluster_ip(index),
                    endpoints: if probed {
                        pods.to_vec()
                    } else {
                        dummy_endpoints(index)
                    },
                    node_port: None,
                    protocol: Protocol::Tcp,
                }
            })
            .collect();
        Self {
            services,
            last,
            random,
        }
    }

    pub fn probe(&self, placement: Placement) -> &KubeProxyService {
        match placement {
            Placement::Last => &self.services[self.last],
            Placement::Random => &self.services[self.random],
        }
    }

    /// Makes the last probe a NodePort Service on `port` too.
    pub fn with_node_port(mut self, port: u16) -> Self {
        self.services[self.last].node_port = Some(port);
        self
    }

    /// Makes the last probe's port `protocol` (TCP unless told).
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        self.services[self.last].protocol = protocol;
        self
    }

    /// Index of the probed Service in rule order.
    pub fn position(&self, placement: Placement) -> usize {
        match placement {
            Placement::Last => self.last,
            Placement::Random => self.random,
        }
    }
}

/// 10.96.0.0/12, skipping .0 of the range.
fn cluster_ip(index: usize) -> Ipv4Addr {
    let index = u32::try_from(index).expect("a Service index fits an IPv4 address");
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + index)
}

/// Four addresses per dummy Service in 10.128.0.0/10: routable nowhere in
/// the rig, and never connected to.
fn dummy_endpoints(index: usize) -> Vec<Ipv4Addr> {
    let offset = u32::try_from(index * ENDPOINTS_PER_SERVICE)
        .expect("a dummy endpoint index fits an IPv4 address");
    let base = u32::from(Ipv4Addr::new(10, 128, 0, 0)) + offset;
    (base..)
        .take(ENDPOINTS_PER_SERVICE)
        .map(Ipv4Addr::from)
        .collect()
}

/// A fixed, well-mixed number from a seed (SplitMix64).
fn splitmix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A catalog over the four pods the rig runs, for the rule generators'
/// tests.
#[cfg(test)]
pub fn test_catalog(dummies: usize) -> Catalog {
    let pods: Vec<_> = (10..14).map(|h| Ipv4Addr::new(10, 244, 0, h)).collect();
    Catalog::new(dummies, &pods, 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> Vec<Ipv4Addr> {
        (10..14).map(|h| Ipv4Addr::new(10, 244, 0, h)).collect()
    }

    #[test]
    fn probes_sit_last_and_inside() {
        for dummies in [0, 1, 1_000, 50_000] {
            let catalog = Catalog::new(dummies, &pods(), 7);
            assert_eq!(catalog.services.len(), dummies + 2);
            assert_eq!(catalog.position(Placement::Last), dummies + 1);
            assert!(catalog.position(Placement::Random) < dummies + 1);
            for placement in Placement::ALL {
                assert_eq!(catalog.probe(placement).endpoints, pods());
            }
        }
    }

    #[test]
    fn addresses_are_distinct() {
        let catalog = Catalog::new(50_000, &pods(), 1);
        let mut ips: Vec<_> = catalog.services.iter().map(|s| s.cluster_ip).collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), catalog.services.len());
        assert_eq!(catalog.services[0].cluster_ip, Ipv4Addr::new(10, 96, 0, 1));
        let dummy = &catalog.services[1];
        assert_eq!(dummy.endpoints.len(), ENDPOINTS_PER_SERVICE);
        assert!(dummy.endpoints.iter().all(|ip| ip.octets()[1] >= 128));
    }

    #[test]
    fn same_seed_same_position() {
        let a = Catalog::new(10_000, &pods(), 42).position(Placement::Random);
        let b = Catalog::new(10_000, &pods(), 42).position(Placement::Random);
        assert_eq!(a, b);
    }
}
