//! One single-entry map operation, the unit a plan is made of and the
//! datapath applies, and the source-range key it may carry. Both the plan
//! and the mirror of the maps use these, so they sit below both.

use std::net::IpAddr;

use switchyard_abi::{
    Addr, BACKEND_STATS_MAP, BACKENDS_MAP, Backend, CLUSTER_IPS_MAP, MAGLEV_MAP, MaglevKey,
    SERVICE_CIDRS_MAP, SERVICE_NAMES_MAP, SERVICE_STATS_MAP, SERVICES_MAP,
    SOURCE_RANGE_FRONTEND_BITS, SOURCE_RANGES_MAP, ServiceKey, SourceRange,
};

use crate::model::{ServicePortName, address::Cidr};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    PutBackend {
        id: u32,
        backend: Backend,
    },
    /// `key.slot >= 1`; `counter` is the (Service port, backend) pair's
    /// entry of the backend counters.
    PutSlot {
        key: ServiceKey,
        backend_id: u32,
        counter: u32,
    },
    /// `key.slot == 0`; `counter` is the Service port's entry of the
    /// service counters.
    PutFrontend {
        key: ServiceKey,
        count: u16,
        flags: u16,
        affinity_timeout: u32,
        counter: u32,
        /// Buckets of its Maglev table; 0 picks at random.
        maglev_table_size: u32,
    },
    /// One bucket of a Maglev frontend's table: the slot it names.
    PutMaglevBucket {
        key: MaglevKey,
        slot: u16,
    },
    DeleteMaglevBucket {
        key: MaglevKey,
    },
    /// The Service port a frontend (slot-0 key) serves, for the CLI. Boxed:
    /// a plan at 50k Services holds hundreds of thousands of operations,
    /// and an inline name would double every one of them.
    PutName {
        key: ServiceKey,
        name: Box<ServicePortName>,
    },
    DeleteName {
        key: ServiceKey,
    },
    /// A counter entry handed to a new owner starts from zero.
    ResetCounter {
        counter: Counter,
    },
    PutSourceRange {
        range: RangeKey,
    },
    DeleteSourceRange {
        range: RangeKey,
    },
    PutServiceAddress {
        address: ServiceAddress,
    },
    DeleteServiceAddress {
        address: ServiceAddress,
    },
    DeleteSlot {
        key: ServiceKey,
    },
    /// `key.slot == 0`.
    DeleteFrontend {
        key: ServiceKey,
    },
    DeleteBackend {
        id: u32,
    },
}

impl MapOp {
    /// The pinned map this operation writes.
    pub fn map(&self) -> &'static str {
        match self {
            Self::PutBackend { .. } | Self::DeleteBackend { .. } => BACKENDS_MAP,
            Self::PutSlot { .. }
            | Self::PutFrontend { .. }
            | Self::DeleteSlot { .. }
            | Self::DeleteFrontend { .. } => SERVICES_MAP,
            Self::PutSourceRange { .. } | Self::DeleteSourceRange { .. } => SOURCE_RANGES_MAP,
            Self::PutName { .. } | Self::DeleteName { .. } => SERVICE_NAMES_MAP,
            Self::PutMaglevBucket { .. } | Self::DeleteMaglevBucket { .. } => MAGLEV_MAP,
            Self::ResetCounter {
                counter: Counter::Service(_),
            } => SERVICE_STATS_MAP,
            Self::ResetCounter {
                counter: Counter::Backend(_),
            } => BACKEND_STATS_MAP,
            Self::PutServiceAddress { address } | Self::DeleteServiceAddress { address } => {
                match address {
                    ServiceAddress::ClusterIp(_) => CLUSTER_IPS_MAP,
                    ServiceAddress::Cidr(_) => SERVICE_CIDRS_MAP,
                }
            }
        }
    }

    /// Whether it adds or replaces an entry (rather than removing one).
    pub fn is_put(&self) -> bool {
        matches!(
            self,
            Self::PutBackend { .. }
                | Self::PutSlot { .. }
                | Self::PutFrontend { .. }
                | Self::PutSourceRange { .. }
                | Self::PutServiceAddress { .. }
                | Self::PutName { .. }
                | Self::PutMaglevBucket { .. }
                | Self::ResetCounter { .. }
        )
    }
}

/// One counter entry: of a Service port, or of a (Service port, backend)
/// pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Counter {
    Service(u32),
    Backend(u32),
}

/// An entry of kube-proxy's `cluster-ips-check`: an allocated ClusterIP
/// (connections to its unserved ports are refused) or a service CIDR
/// (connections to its unallocated addresses are dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceAddress {
    ClusterIp(IpAddr),
    Cidr(Cidr),
}

/// One key of the source-range LPM trie: a frontend and a source prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RangeKey {
    pub prefix_len: u32,
    pub range: SourceRange,
}

impl RangeKey {
    pub fn new(frontend: &ServiceKey, cidr: &Cidr) -> Self {
        // IPv4 prefixes sit behind the 96 bits of the mapped-address prefix.
        let family_bits = if cidr.network.is_ipv4() { 96 } else { 0 };
        Self {
            prefix_len: SOURCE_RANGE_FRONTEND_BITS + family_bits + u32::from(cidr.prefix_len),
            range: SourceRange {
                addr: frontend.addr,
                port: frontend.port,
                proto: frontend.proto,
                pad: 0,
                src: Addr::from(cidr.network),
            },
        }
    }

    /// The frontend this range belongs to, as a slot-0 key without scope.
    pub fn frontend_key(&self) -> ServiceKey {
        ServiceKey::new(self.range.addr, self.range.port, self.range.proto, 0)
    }

    /// The source prefix this key admits.
    pub fn source(&self) -> Cidr {
        let ip = IpAddr::from(self.range.src);
        let family_bits = if ip.is_ipv4() { 96 } else { 0 };
        let bits = self
            .prefix_len
            .saturating_sub(SOURCE_RANGE_FRONTEND_BITS + family_bits);
        Cidr {
            network: ip,
            prefix_len: u8::try_from(bits).unwrap_or(u8::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_operation_stays_small() {
        // Plans at 50k Services hold ~400k of these at once.
        assert!(std::mem::size_of::<super::MapOp>() <= 48);
    }
}
