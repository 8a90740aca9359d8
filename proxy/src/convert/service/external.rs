//! What a Service exposes beyond its cluster IPs: NodePorts on this node's
//! addresses, externalIPs and LoadBalancer ingress IPs. Each becomes two
//! frontends: an external-scope one for packets from outside, balanced by
//! `externalTrafficPolicy`, and an internal-scope one for connections
//! started on this node, which reach every endpoint (kube-proxy sends such
//! traffic through the Service's cluster-wide chain whatever the policy).

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use switchyard_abi::{FRONTEND_SNAT_REMOTE, FRONTEND_SOURCE_RANGES};
use tracing::debug;

use super::{ServiceFrontend, traffic_policy};
use crate::{
    convert::{
        claim::AddressOrigin,
        input_error::{InputError, ObjectRef, Reason},
        topology::TrafficPolicy,
    },
    model::{
        Scope,
        address::{Cidr, parse_ip_sloppy},
    },
};

/// `status.loadBalancer.ingress[].ipMode` asking that traffic really go
/// through the load balancer: kube-proxy then leaves the IP alone (KEP-1860).
const IP_MODE_PROXY: &str = "Proxy";

/// One address every port of the Service is exposed on.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ExposedAddress {
    ip: IpAddr,
    field: String,
    /// An externalIP or a LoadBalancer ingress IP (where source ranges
    /// apply).
    origin: AddressOrigin,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Exposure {
    addresses: Vec<ExposedAddress>,
    /// The Service has NodePorts (type NodePort or LoadBalancer).
    node_ports: bool,
    /// The families of its cluster IPs: a node address is served only in
    /// them.
    ipv4: bool,
    ipv6: bool,
    policy: TrafficPolicy,
    /// `Some` when `loadBalancerSourceRanges` restricts the LB IPs.
    source_ranges: Option<Vec<Cidr>>,
}

impl Exposure {
    /// `cluster_ips` are the Service's families: kube-proxy serves an
    /// external address only through the proxier of its family, which
    /// handles the Service only if it has a cluster IP of that family.
    pub(super) fn read(
        object: &ObjectRef,
        service: &Service,
        cluster_ips: &[IpAddr],
        errors: &mut Vec<InputError>,
    ) -> Self {
        let served = |ip: &IpAddr| cluster_ips.iter().any(|c| c.is_ipv4() == ip.is_ipv4());
        let spec = service.spec.as_ref();
        let kind = spec.and_then(|s| s.type_.as_deref()).unwrap_or("ClusterIP");
        let mut addresses = Vec::new();
        let external_ips = spec
            .and_then(|s| s.external_ips.as_deref())
            .unwrap_or_default();
        for (index, text) in external_ips.iter().enumerate() {
            let field = format!("spec.externalIPs[{index}]");
            if let Some(ip) = parse_address(object, &field, text, errors).filter(served) {
                addresses.push(ExposedAddress {
                    ip,
                    field,
                    origin: AddressOrigin::ExternalIp,
                });
            }
        }
        if kind == "LoadBalancer" {
            let ingress = service
                .status
                .as_ref()
                .and_then(|status| status.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_deref())
                .unwrap_or_default();
            for (index, entry) in ingress.iter().enumerate() {
                let Some(text) = entry.ip.as_deref() else {
                    continue;
                };
                if entry.ip_mode.as_deref() == Some(IP_MODE_PROXY) {
                    debug!(service = %object, ip = text, "ipMode Proxy: left to the load balancer");
                    continue;
                }
                let field = format!("status.loadBalancer.ingress[{index}].ip");
                if let Some(ip) = parse_address(object, &field, text, errors).filter(served) {
                    addresses.push(ExposedAddress {
                        ip,
                        field,
                        origin: AddressOrigin::LoadBalancer,
                    });
                }
            }
        }
        let policy = traffic_policy(
            object,
            "spec.externalTrafficPolicy",
            spec.and_then(|s| s.external_traffic_policy.as_deref()),
            errors,
        );
        Self {
            addresses,
            node_ports: matches!(kind, "NodePort" | "LoadBalancer"),
            ipv4: cluster_ips.iter().any(IpAddr::is_ipv4),
            ipv6: cluster_ips.iter().any(IpAddr::is_ipv6),
            policy,
            source_ranges: source_ranges(object, service, errors),
        }
    }

    /// Appends the frontends of one Service port, built from `base` (its
    /// cluster-IP frontend), with its NodePort on `node_port_addresses`.
    pub(super) fn frontends(
        &self,
        base: &ServiceFrontend,
        node_port: Option<u16>,
        node_port_addresses: &[IpAddr],
        out: &mut Vec<ServiceFrontend>,
    ) {
        for address in &self.addresses {
            let field = format!("{} ({})", base.field, address.field);
            self.pair(
                base,
                address.ip,
                base.frontend.port,
                field,
                address.origin,
                out,
            );
        }
        let served = |ip: &&IpAddr| if ip.is_ipv4() { self.ipv4 } else { self.ipv6 };
        if let Some(node_port) = node_port.filter(|_| self.node_ports) {
            for &ip in node_port_addresses.iter().filter(served) {
                let field = format!("{}.nodePort", base.field);
                self.pair(base, ip, node_port, field, AddressOrigin::Allocated, out);
            }
        }
    }

    fn pair(
        &self,
        base: &ServiceFrontend,
        ip: IpAddr,
        port: u16,
        field: String,
        origin: AddressOrigin,
        out: &mut Vec<ServiceFrontend>,
    ) {
        let mut internal = base.clone();
        internal.frontend.ip = ip;
        internal.frontend.port = port;
        internal.field = field;
        internal.origin = origin;
        internal.policy = TrafficPolicy::Cluster;
        // kube-proxy's firewall chain sees every source, so the ranges bind
        // the node's pods and processes (internal scope) as well.
        if let (AddressOrigin::LoadBalancer, Some(ranges)) = (origin, &self.source_ranges) {
            internal.flags |= FRONTEND_SOURCE_RANGES;
            internal.source_ranges = ranges
                .iter()
                .filter(|range| range.network.is_ipv4() == ip.is_ipv4())
                .copied()
                .collect();
        }
        let mut external = internal.clone();
        external.frontend.scope = Scope::External;
        external.policy = self.policy;
        if self.policy == TrafficPolicy::Cluster {
            external.flags |= FRONTEND_SNAT_REMOTE;
        }
        out.push(internal);
        // Packets to a loopback address never cross a device: only the
        // node's own processes reach it, through the socket hooks.
        if !ip.is_loopback() {
            out.push(external);
        }
    }
}

fn parse_address(
    object: &ObjectRef,
    field: &str,
    text: &str,
    errors: &mut Vec<InputError>,
) -> Option<IpAddr> {
    let ip = parse_ip_sloppy(text);
    if ip.is_none() {
        errors.push(InputError::field(
            object,
            field,
            Reason::InvalidIp,
            format!("not an IP address: {text:?}"),
        ));
    }
    ip
}

/// A bad range is reported and left out; the others still restrict. If
/// every range is bad the Service stays restricted (to nothing) rather
/// than open to all, which is what its author asked not to be.
fn source_ranges(
    object: &ObjectRef,
    service: &Service,
    errors: &mut Vec<InputError>,
) -> Option<Vec<Cidr>> {
    let texts = service
        .spec
        .as_ref()
        .and_then(|spec| spec.load_balancer_source_ranges.as_deref())
        .filter(|texts| !texts.is_empty())?;
    let mut ranges = Vec::new();
    for (index, text) in texts.iter().enumerate() {
        match text.parse::<Cidr>() {
            Ok(range) => ranges.push(range),
            Err(error) => errors.push(InputError::field(
                object,
                format!("spec.loadBalancerSourceRanges[{index}]"),
                Reason::InvalidIp,
                error.to_string(),
            )),
        }
    }
    Some(ranges)
}

/// The port of kube-proxy's per-Service health check server: set for
/// `externalTrafficPolicy: Local` Services that have one allocated.
pub fn health_check_node_port(service: &Service) -> Option<u16> {
    let spec = service.spec.as_ref()?;
    if spec.external_traffic_policy.as_deref() != Some("Local") {
        return None;
    }
    spec.health_check_node_port
        .and_then(|port| u16::try_from(port).ok())
        .filter(|&port| port != 0)
}
