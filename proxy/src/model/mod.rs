//! The service model: what Switchyard serves, independent of both the
//! Kubernetes objects it came from and the map layout it goes to.

pub mod address;
pub mod balancing;
pub mod counter_policy;
pub mod detect_local;
#[cfg(test)]
pub mod fixtures;
pub mod name;

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use switchyard_abi::{
    Addr, BACKEND_LOCAL, Backend, PROTO_SCTP, PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, SCOPE_INTERNAL,
    ServiceKey,
};

use crate::model::{address::Cidr, name::NamespacedName};

/// Transport protocols Kubernetes Services may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The IANA number the kernel hooks see in `bpf_sock_addr.protocol`.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => PROTO_TCP,
            Self::Udp => PROTO_UDP,
            Self::Sctp => PROTO_SCTP,
        }
    }

    pub const fn from_number(number: u8) -> Option<Self> {
        match number {
            PROTO_TCP => Some(Self::Tcp),
            PROTO_UDP => Some(Self::Udp),
            PROTO_SCTP => Some(Self::Sctp),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol {text:?}, expected TCP, UDP or SCTP")]
pub struct UnknownProtocol {
    pub text: String,
}

impl FromStr for Protocol {
    type Err = UnknownProtocol;

    /// Case-sensitive like the API server's validation: "tcp" is not a
    /// protocol Kubernetes would ever hand us.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "TCP" => Ok(Self::Tcp),
            "UDP" => Ok(Self::Udp),
            "SCTP" => Ok(Self::Sctp),
            _ => Err(UnknownProtocol {
                text: text.to_owned(),
            }),
        }
    }
}

/// A map entry that does not describe anything the model can express; only
/// seen when something other than this agent wrote the maps.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("map entry has unknown protocol number {number}")]
pub struct UnknownProtocolNumber {
    pub number: u8,
}

/// Which traffic a frontend entry serves (see `switchyard_abi::SCOPE_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Connections started on this node, through the socket hooks.
    #[default]
    Internal,
    /// Packets from outside, through the per-packet path.
    External,
}

impl Scope {
    pub const fn number(self) -> u8 {
        match self {
            Self::Internal => SCOPE_INTERNAL,
            Self::External => SCOPE_EXTERNAL,
        }
    }
}

/// An address clients connect to: a VIP, port and protocol, and whether
/// the entry is for traffic from this node or from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub scope: Scope,
}

/// An address connections are sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// Runs on this node: packets from outside reach it without SNAT.
    pub local: bool,
}

fn fmt_socket(
    ip: IpAddr,
    port: u16,
    protocol: Protocol,
    f: &mut fmt::Formatter<'_>,
) -> fmt::Result {
    write!(f, "{}/{protocol}", SocketAddr::new(ip, port))
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_socket(self.ip, self.port, self.protocol, f)?;
        if self.scope == Scope::External {
            f.write_str(" (external)")?;
        }
        Ok(())
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_socket(self.ip, self.port, self.protocol, f)
    }
}

impl Frontend {
    /// The frontend's slot-0 key.
    pub fn key(&self) -> ServiceKey {
        ServiceKey::scoped(
            Addr::from(self.ip),
            self.port.to_be(),
            self.protocol.number(),
            self.scope.number(),
            0,
        )
    }
}

impl From<&Frontend> for ServiceKey {
    fn from(frontend: &Frontend) -> Self {
        frontend.key()
    }
}

impl TryFrom<&ServiceKey> for Frontend {
    type Error = UnknownProtocolNumber;

    /// Ignores the slot: every slot of a frontend names the same frontend.
    fn try_from(key: &ServiceKey) -> Result<Self, Self::Error> {
        let protocol =
            Protocol::from_number(key.proto).ok_or(UnknownProtocolNumber { number: key.proto })?;
        Ok(Self {
            ip: IpAddr::from(key.addr),
            port: u16::from_be(key.port),
            protocol,
            scope: if key.scope == SCOPE_EXTERNAL {
                Scope::External
            } else {
                Scope::Internal
            },
        })
    }
}

impl From<&Endpoint> for Backend {
    fn from(endpoint: &Endpoint) -> Self {
        Backend::with_flags(
            Addr::from(endpoint.ip),
            endpoint.port.to_be(),
            endpoint.protocol.number(),
            if endpoint.local { BACKEND_LOCAL } else { 0 },
        )
    }
}

impl TryFrom<&Backend> for Endpoint {
    type Error = UnknownProtocolNumber;

    fn try_from(backend: &Backend) -> Result<Self, Self::Error> {
        let protocol = Protocol::from_number(backend.proto).ok_or(UnknownProtocolNumber {
            number: backend.proto,
        })?;
        Ok(Self {
            ip: IpAddr::from(backend.addr),
            port: u16::from_be(backend.port),
            protocol,
            local: backend.flags & BACKEND_LOCAL != 0,
        })
    }
}

/// kube-proxy's name for one port of one Service, used in logs and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    /// The port's `name`; empty for a Service's single unnamed port.
    pub port: String,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port.is_empty() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// Everything the datapath should serve, computed afresh from the sources on
/// every sync.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub frontends: BTreeMap<Frontend, DesiredFrontend>,
    /// Service ports with a Local traffic policy and no endpoint on this
    /// node, by the scope the policy governs (internal:
    /// `internalTrafficPolicy`, external: `externalTrafficPolicy`);
    /// kube-proxy's `no_local_endpoints` metric counts them.
    pub no_local: std::collections::BTreeSet<(ServicePortName, Scope)>,
    /// Health check node ports to serve, by port.
    pub health_checks: BTreeMap<u16, HealthCheck>,
    /// Frontends and health check ports more than one Service claimed: a
    /// change to any of their claimants needs a full pass to pick the
    /// winner again.
    pub contested: std::collections::BTreeSet<Frontend>,
    pub contested_ports: std::collections::BTreeSet<u16>,
    /// The frontends each Service (namespace, name) holds, so a change to
    /// one Service finds its entries without a walk over all of them.
    pub owners: BTreeMap<NamespacedName, std::collections::BTreeSet<Frontend>>,
    /// The service CIDRs: addresses in them that no Service holds are
    /// dropped (kube-proxy's "unallocated ClusterIPs").
    pub service_cidrs: std::collections::BTreeSet<Cidr>,
    /// Which Service ports the kernel counts on their own.
    pub counters: counter_policy::CounterPolicy,
}

impl DesiredState {
    /// Service ports with a Local policy for `scope` and no endpoint here,
    /// by the families of their frontends of that scope: kube-proxy's
    /// `no_local_endpoints` gauge, which each family's proxier counts.
    pub fn no_local_by_family(&self, scope: Scope) -> BTreeMap<address::IpFamily, usize> {
        let mut counted = std::collections::BTreeSet::new();
        let services: std::collections::BTreeSet<&ServicePortName> = self
            .no_local
            .iter()
            .filter(|(_, policy_scope)| *policy_scope == scope)
            .map(|(service, _)| service)
            .collect();
        if !services.is_empty() {
            for (frontend, desired) in &self.frontends {
                if frontend.scope == scope && services.contains(&desired.service) {
                    counted.insert((address::IpFamily::of(frontend.ip), &desired.service));
                }
            }
        }
        let mut by_family: BTreeMap<_, usize> = address::IpFamily::BOTH
            .into_iter()
            .map(|family| (family, 0))
            .collect();
        for (family, _) in counted {
            *by_family.entry(family).or_default() += 1;
        }
        by_family
    }
}

/// What kube-proxy's health check node port of one
/// `externalTrafficPolicy: Local` Service answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthCheck {
    pub namespace: String,
    pub name: String,
    /// Endpoints of the Service on this node.
    pub local_endpoints: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredFrontend {
    pub service: ServicePortName,
    /// Sorted and deduplicated; empty means connections are refused.
    pub backends: Vec<Endpoint>,
    /// Endpoints that still serve but take no new connections (terminating,
    /// or left out by topology or traffic policy): their existing flows and
    /// sockets are kept, as kube-proxy keeps their conntrack entries. Empty
    /// (no allocation) in the common case.
    pub draining: Vec<Endpoint>,
    /// `sessionAffinity: ClientIP` timeout in seconds; 0 is no affinity.
    pub affinity_timeout: u32,
    /// Buckets of the frontend's Maglev table; 0 picks at random.
    pub maglev_table_size: u32,
    /// `switchyard_abi::FRONTEND_*` bits.
    pub flags: u16,
    /// `loadBalancerSourceRanges`, when `flags` asks for them.
    pub source_ranges: Vec<Cidr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_local_endpoints_are_counted_by_the_policy_that_has_none() {
        let mut state = fixtures::desired(&[("10.96.0.10", 80, &[1])]);
        let service = state.frontends.values().next().unwrap().clone();
        let mut node_port = fixtures::frontend("192.168.1.5", 30080);
        node_port.scope = Scope::External;
        state.frontends.insert(node_port, service.clone());
        // externalTrafficPolicy Local with no endpoint here: the ClusterIP
        // is not counted under "internal".
        state.no_local.insert((service.service, Scope::External));
        let v4 = address::IpFamily::of(node_port.ip);
        assert_eq!(state.no_local_by_family(Scope::External)[&v4], 1);
        assert_eq!(state.no_local_by_family(Scope::Internal)[&v4], 0);
    }

    fn frontend(ip: &str, port: u16, protocol: Protocol) -> Frontend {
        Frontend {
            ip: ip.parse().unwrap(),
            port,
            protocol,
            scope: Scope::Internal,
        }
    }

    #[test]
    fn protocol_text_and_numbers_round_trip() {
        let cases = [
            ("TCP", Protocol::Tcp, 6),
            ("UDP", Protocol::Udp, 17),
            ("SCTP", Protocol::Sctp, 132),
        ];
        for (text, protocol, number) in cases {
            assert_eq!(text.parse::<Protocol>(), Ok(protocol));
            assert_eq!(protocol.to_string(), text);
            assert_eq!(protocol.number(), number);
            assert_eq!(Protocol::from_number(number), Some(protocol));
        }
        for bad in ["tcp", "", "ICMP"] {
            assert!(bad.parse::<Protocol>().is_err(), "{bad:?}");
        }
        assert_eq!(Protocol::from_number(1), None);
    }

    #[test]
    fn displays_like_socket_addresses() {
        let cases = [
            (
                frontend("10.96.0.10", 80, Protocol::Tcp),
                "10.96.0.10:80/TCP",
            ),
            (frontend("fd00::1", 80, Protocol::Udp), "[fd00::1]:80/UDP"),
            (frontend("10.0.0.1", 9, Protocol::Sctp), "10.0.0.1:9/SCTP"),
        ];
        for (frontend, text) in cases {
            assert_eq!(frontend.to_string(), text);
        }
    }

    #[test]
    fn service_port_name_omits_empty_port() {
        let mut name = ServicePortName {
            namespace: "ns".into(),
            name: "web".into(),
            port: String::new(),
        };
        assert_eq!(name.to_string(), "ns/web");
        name.port = "http".into();
        assert_eq!(name.to_string(), "ns/web:http");
    }

    #[test]
    fn frontend_key_is_slot_zero_in_network_order() {
        let fe = frontend("10.96.0.10", 0x1f90, Protocol::Tcp);
        let key = fe.key();
        assert_eq!(key.slot, 0);
        assert_eq!(key.port.to_ne_bytes(), [0x1f, 0x90]);
        assert_eq!(key.proto, PROTO_TCP);
        assert_eq!(Frontend::try_from(&key.with_slot(3)), Ok(fe));
    }

    #[test]
    fn endpoint_round_trips_through_backend() {
        for (ip, port, protocol) in [
            ("10.244.1.5", 8080, Protocol::Tcp),
            ("fd00:244::5", 53, Protocol::Udp),
        ] {
            let endpoint = Endpoint {
                ip: ip.parse().unwrap(),
                port,
                protocol,
                local: port == 53,
            };
            let backend = Backend::from(&endpoint);
            assert_eq!(backend.port.to_ne_bytes(), port.to_be_bytes());
            assert_eq!(Endpoint::try_from(&backend), Ok(endpoint));
        }
        let unknown = Backend::new(Addr::default(), 0, 99);
        assert_eq!(
            Endpoint::try_from(&unknown),
            Err(UnknownProtocolNumber { number: 99 })
        );
    }
}
